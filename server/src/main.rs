//! `signaling-server`: parses flags, sets up logging and signals, and runs
//! the library's server.

use anyhow::Context as _;
use clap::Parser;
use signaling_server::cli::config_file::{self, SettingsError};
use signaling_server::cli::{Cli, LogFormat};
use std::io::Write as _;
use std::path::Path;

use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

/// Logs to stderr, and with `--log_file` appended to that file too (never
/// with colour codes in the file).
fn init_logging(format: LogFormat, log_file: Option<&Path>) -> anyhow::Result<()> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("info,hyper=warn,tokio_tungstenite=warn,tungstenite=warn,rustls=warn")
    });
    let file = log_file
        .map(|path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open --log_file {}", path.display()))
        })
        .transpose()?;
    let layer = |json: bool, writer: tracing_subscriber::fmt::writer::BoxMakeWriter, ansi: bool| {
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(ansi);
        if json {
            layer.json().boxed()
        } else {
            layer.boxed()
        }
    };
    let json = format == LogFormat::Json;
    let mut layers = vec![layer(
        json,
        tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr),
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
    )];
    if let Some(file) = file {
        layers.push(layer(
            json,
            tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::sync::Mutex::new(file)),
            false,
        ));
    }
    tracing_subscriber::registry()
        .with(filter)
        .with(layers)
        .init();
    Ok(())
}

/// `signaling-server token …`: prints a signed token.
fn mint_token(args: impl Iterator<Item = std::ffi::OsString>) -> anyhow::Result<()> {
    let cli = signaling_server::cli::TokenCli::parse_from(args);
    let token = cli.mint().map_err(anyhow::Error::msg)?;
    println!("{token}");
    Ok(())
}

/// An error and its causes on one line, each cause said once: an error
/// whose text already holds its cause's is not followed by it again.
fn one_line(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// `signaling-server man`: the manual page, in roff.
/// `signaling-server completions SHELL`: the shell's completion script.
fn generate(what: &str, shell: Option<std::ffi::OsString>) -> anyhow::Result<()> {
    let mut command = config_file::command();
    let mut stdout = std::io::stdout().lock();
    match what {
        "man" => clap_mangen::Man::new(command).render(&mut stdout)?,
        _ => {
            let shell = shell
                .and_then(|shell| shell.to_str()?.parse::<clap_complete::Shell>().ok())
                .context("write: signaling-server completions bash|zsh|fish|elvish|powershell")?;
            clap_complete::generate(shell, &mut command, "signaling-server", &mut stdout);
        }
    }
    stdout.flush()?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    let mut args = std::env::args_os();
    let first = std::env::args_os().nth(1);
    let said = |result: anyhow::Result<()>| match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            std::process::ExitCode::FAILURE
        }
    };
    if first.as_ref().is_some_and(|first| first == "token") {
        // "signaling-server token" as the program name, then its flags.
        let program = args.next().unwrap_or_default();
        args.next();
        let mut name = program;
        name.push(" token");
        return said(mint_token(std::iter::once(name).chain(args)));
    }
    if let Some(what) = first.as_ref().and_then(|first| first.to_str())
        && matches!(what, "man" | "completions")
    {
        return said(generate(what, std::env::args_os().nth(2)));
    }
    let cli = match config_file::parse(std::env::args_os()) {
        Ok(settings) if settings.cli.print_config => {
            print!("{}", settings.to_toml());
            return std::process::ExitCode::SUCCESS;
        }
        Ok(settings) => settings.cli,
        // clap's own: the help, the version, or a bad flag, with its usage.
        Err(SettingsError::Flags(e)) => e.exit(),
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let json = cli.log_format == LogFormat::Json;
    let result = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(run(cli)));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Said once: as a log line where logs are JSON (every line
            // is), else as a line for a person.
            if json && tracing::dispatcher::has_been_set() {
                tracing::error!(error = %one_line(&e), "cannot run");
            } else {
                eprintln!("error: {}", one_line(&e));
            }
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    init_logging(cli.log_format, cli.log_file.as_deref())?;
    let json_logs = cli.log_format == LogFormat::Json;
    let listen = cli.listen_address();
    let https = cli.https_listen()?;
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
    let device_socket = config.device_socket.as_ref().map(|s| s.path.clone());
    // Bound, and the stop signals caught, before the banner: once it is
    // printed, every door is open and SIGTERM stops it gracefully.
    let mut server = signaling_server::Server::bind(listener, config)?;
    let mut https_line = None;
    if let Some((address, tls)) = https {
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on {address} (--https_port)"))?;
        let local = listener.local_addr()?;
        https_line = Some(format!("also serving https://{local} and wss://{local}"));
        server = server.with_tls_listener(listener, tls);
    }
    server.log_configuration();
    let mut signals = support::shutdown::listen();
    // The banner comes last: scripts read up to it and may then close
    // stdout, so nothing is printed after it (and a closed stdout is not
    // an error).
    let mut stdout = std::io::stdout();
    let banner = format!(
        "signaling server on {scheme}://{local} (devices: {scheme}://{local}/register_device, clients: {scheme}://{local}/connect_client)"
    );
    if json_logs {
        // Every line JSON: one object with the same words and the URLs.
        let line = serde_json::json!({
            "message": banner,
            "url": format!("{scheme}://{local}"),
            "device_socket": device_socket.map(|path| path.display().to_string()),
            "https": https_line,
        });
        let _ = writeln!(stdout, "{line}");
    } else {
        if let Some(path) = device_socket {
            let _ = writeln!(stdout, "device socket at {}", path.display());
        }
        if let Some(line) = https_line {
            let _ = writeln!(stdout, "{line}");
        }
        let _ = writeln!(stdout, "{banner}");
    }
    // The first signal starts the drain (if any), a second one ends it.
    let (first, second) = tokio::sync::oneshot::channel::<()>();
    let stop = async move {
        let signal = signals.recv_next().await;
        tracing::info!(%signal, "stop requested");
        tokio::spawn(async move {
            let signal = signals.recv_next().await;
            tracing::info!(%signal, "second stop signal");
            let _ = first.send(());
        });
    };
    server
        .run_until(stop, async move {
            let _ = second.await;
        })
        .await?;
    Ok(())
}
