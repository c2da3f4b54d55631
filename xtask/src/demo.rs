//! `cargo xtask demo`: a server and a Cuttlefish-shaped fake device (two
//! displays drawn live, an audio stream, its own page) that stay up until
//! Ctrl-C, and the URLs of the built-in web client connected to the device
//! and of the device's page.

use std::time::Duration;

use anyhow::Result;

const DEVICE_ID: &str = "cvd-demo";

pub fn run(root: &std::path::Path) -> Result<()> {
    crate::e2e::build(root, false)?;
    let tools = crate::tools(root, "debug", "demo-logs")?;
    // The usual port when it is free, else any.
    let server = match tools.server("demo", &["--listen", "127.0.0.1:8443"]) {
        Ok(server) => server,
        Err(_) => tools.server("demo", &[])?,
    };
    let device = tools.fake_device_as(
        "demo",
        &server,
        DEVICE_ID,
        &["--displays", "2", "--device-port", "0"],
    )?;
    let page = server.url.replacen("ws://", "http://", 1);
    println!(
        "demo: a signaling server and the fake device {DEVICE_ID} (two displays, audio) are running"
    );
    println!("demo: open {page}/?deviceId={DEVICE_ID}");
    println!("demo: the device's own page: {page}/devices/{DEVICE_ID}/files/");
    println!(
        "demo: logs in {}; Ctrl-C stops everything",
        tools.log_dir.display()
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(support::shutdown::signal());
    println!("demo: stopping");
    // Dropping the processes stops them; give the device a moment first.
    drop(device);
    std::thread::sleep(Duration::from_millis(100));
    drop(server);
    Ok(())
}
