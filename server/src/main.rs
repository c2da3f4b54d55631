//! `signaling-server`: parses flags, sets up logging and signals, and runs
//! the library's server.

use anyhow::Context as _;
use clap::Parser;
use signaling_server::cli::{Cli, LogFormat};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("info,hyper=warn,tokio_tungstenite=warn,tungstenite=warn,rustls=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Resolves on SIGINT or SIGTERM, saying which in the log.
async fn shutdown_signal() {
    let signal = support::shutdown::signal().await;
    tracing::info!(%signal, "stop requested");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let listen = cli.listen_address();
    let (config, notes) = cli.into_config()?;
    let scheme = if config.tls.is_some() { "wss" } else { "ws" };
    if let Some(generated) = &notes.self_signed {
        tracing::warn!(
            cert = %generated.cert_path.display(),
            key = %generated.key_path.display(),
            sha256 = %generated.fingerprint,
            "serving a self-signed certificate, for development only"
        );
        println!(
            "self-signed certificate: {}\nSHA-256 fingerprint: {}",
            generated.cert_path.display(),
            generated.fingerprint
        );
    }
    for warning in &notes.warnings {
        tracing::warn!("{warning}");
    }
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let local = listener.local_addr()?;
    println!(
        "signaling server on {scheme}://{local} (devices: {scheme}://{local}/register_device, clients: {scheme}://{local}/connect_client)"
    );
    signaling_server::run(listener, config, shutdown_signal()).await?;
    Ok(())
}
