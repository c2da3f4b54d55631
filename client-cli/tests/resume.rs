//! `client-cli connect` rides out a signaling connection cut mid-session
//! (by a loopback proxy the test controls), on both client APIs: it
//! resumes, says so in its report, and its data channel keeps echoing.
//! And when the server no longer holds its session, it starts a new one.
//! Needs the fake-device binary beside client-cli (`cargo test
//! --workspace` builds both).

#![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use peer::signaling::ConnectOptions;
use support::cut::CuttingProxy;

const CLIENT: &str = env!("CARGO_BIN_EXE_client-cli");

struct Device(Child);

impl Drop for Device {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn fake_device() -> PathBuf {
    let path = PathBuf::from(CLIENT).with_file_name("fake-device");
    assert!(
        path.exists(),
        "{} is not built: run cargo test --workspace",
        path.display()
    );
    path
}

fn start_device(address: std::net::SocketAddr, id: &str) -> Device {
    Device(
        Command::new(fake_device())
            .args(["--server", &format!("ws://{address}"), "--device-id", id])
            .args(["--no-video"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < Duration::from_secs(15), "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The server runs in the test's runtime, which must go on while the test
/// waits on client-cli: hence more than one worker thread.
async fn cut_mid_session(api: &str) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(signaling_server::run(
        listener,
        signaling_server::ServerConfig::default(),
        std::future::pending(),
    ));
    let id = format!("cut-{api}");
    let _device = start_device(address, &id);
    let listed = Instant::now();
    while !String::from_utf8_lossy(
        &Command::new(CLIENT)
            .args(["--server", &format!("ws://{address}"), "devices"])
            .output()
            .unwrap()
            .stdout,
    )
    .contains(&id)
    {
        assert!(listed.elapsed() < Duration::from_secs(10), "never listed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let proxy = CuttingProxy::start(address).unwrap();
    let client = Command::new(CLIENT)
        .args(["--server", &format!("ws://{}", proxy.address)])
        .args(["connect", &id, "--api", api, "--json", "--video-wait", "0s"])
        .args(["--hold", "4s", "--timeout", "30s"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The handshake takes well under a second: cut while it holds.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cut = proxy.cut();
    let output = tokio::task::spawn_blocking(|| client.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)));
    // The websocket, and on the Go API the /infra_config request's
    // connection if it is still open.
    assert!(cut >= 1, "{report}");
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["resumes"].as_array().unwrap().len(), 1, "{report}");
    assert!(report["hold_echoes"].as_u64().unwrap() >= 3, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_client_resumes_a_cut_connection() {
    cut_mid_session("seed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_go_operator_client_resumes_a_cut_connection() {
    cut_mid_session("go").await;
}

/// The client's connection stays down while its device process is killed
/// and a new one registers under the same id: the client's held session
/// ends with the old device's, its resume is refused, and it starts a new
/// session (a new connection and a new peer) with the new device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_session_is_gone_starts_a_new_one() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(signaling_server::run(
        listener,
        signaling_server::ServerConfig::default(),
        std::future::pending(),
    ));
    let options = ConnectOptions {
        server: format!("ws://{address}"),
        token: None,
        ca_cert: None,
        insecure: false,
    };
    let away = async |role: &str| {
        let (_, body) = options.http_get("/metrics").await.unwrap();
        let series = format!(r#"signaling_sessions_away{{role="{role}"}}"#);
        support::prometheus::sample_or_zero(&body, &series)
    };
    let id = "gone";
    let mut first = start_device(address, id);
    until("the device is listed", async || {
        options.http_get("/devices").await.unwrap().1.contains(id)
    })
    .await;
    let proxy = CuttingProxy::start(address).unwrap();
    let client = Command::new(CLIENT)
        .args(["--server", &format!("ws://{}", proxy.address)])
        .args(["connect", id, "--json", "--video-wait", "0s"])
        .args(["--hold", "4s", "--timeout", "40s"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.set_down(true);
    until("the client's session is held", async || {
        away("client").await == 1.0
    })
    .await;
    // The device process dies (its session held too), and another takes
    // its id over: the old device's session ends, and with it the
    // client's.
    let _ = first.0.kill();
    until("the device's session is held", async || {
        away("device").await == 1.0
    })
    .await;
    let _second = start_device(address, id);
    until("the held sessions end", async || {
        away("device").await == 0.0 && away("client").await == 0.0
    })
    .await;
    proxy.set_down(false);
    let output = tokio::task::spawn_blocking(|| client.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)));
    assert_eq!(report["ok"], true, "{report}");
    let new_sessions = report["new_sessions"].as_array().unwrap();
    assert_eq!(new_sessions.len(), 1, "{report}");
    assert!(
        new_sessions[0]["why"]
            .as_str()
            .unwrap()
            .contains("Resume refused: the session ended while its connection was away"),
        "{report}"
    );
    assert!(report["resumes"].as_array().unwrap().is_empty(), "{report}");
    assert!(report["hold_echoes"].as_u64().unwrap() >= 3, "{report}");
}
