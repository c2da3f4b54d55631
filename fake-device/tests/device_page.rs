//! `--device-port`: the device serves a page of its own and registers its
//! port, and the server's `/devices/{id}/files/` shows that page, as it
//! shows a Cuttlefish device's files.

#![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use peer::signaling::ConnectOptions;
use signaling_server::ServerConfig;
use tokio::net::TcpListener;

struct Device(Child);

impl Drop for Device {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_devices_page_is_served_through_the_files_proxy() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(signaling_server::run(
        listener,
        ServerConfig::default(),
        std::future::pending(),
    ));
    let options = ConnectOptions {
        server: format!("ws://{address}"),
        token: None,
        ca_cert: None,
        insecure: false,
    };
    let _device = Device(
        Command::new(env!("CARGO_BIN_EXE_fake-device"))
            .args(["--server", &options.server, "--device-id", "cvd-page"])
            .args(["--displays", "2", "--device-port", "0", "--no-video"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    loop {
        let (_, body) = options.http_get("/devices").await.unwrap();
        if body.contains("cvd-page") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never registered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (status, page) = options.http_get("/devices/cvd-page/files/").await.unwrap();
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains(r#"<span id="device-id">cvd-page</span>"#),
        "{page}"
    );
    assert!(
        page.contains("<td>display_1</td><td>720×1280</td>"),
        "{page}"
    );
    assert!(page.contains("no video"), "{page}");

    let (status, info) = options
        .http_get("/devices/cvd-page/files/device_info.json")
        .await
        .unwrap();
    assert_eq!(status, 200);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["displays"].as_array().unwrap().len(), 2);
    assert!(info["hardware"].is_object());

    let (status, _) = options
        .http_get("/devices/cvd-page/files/nothing-here")
        .await
        .unwrap();
    assert_eq!(status, 404);
}
