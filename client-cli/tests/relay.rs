//! Through a real coturn (PROTOCOL.md, "TURN"): a signaling server handing
//! out TURN REST credentials, fake-device and client-cli both relay-only,
//! so every packet of the WebRTC session goes through the TURN server;
//! and the reports when the credentials are refused.
//!
//! Needs Debian's coturn (`cargo xtask test` installs it) and the
//! fake-device binary beside client-cli (`cargo test --workspace` builds
//! both).

#![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use signaling_server::ServerConfig;
use signaling_server::turn::{Secret, SecretSource, TurnConfig, credential};
use support::coturn::Coturn;
use tokio::net::TcpListener;

const SECRET: &str = "relay-test-secret";

/// A signaling server on a free loopback port whose configs carry
/// credentials for `turn_url` signed with `secret`; its ws:// URL.
async fn server(turn_url: &str, secret: &str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let config = ServerConfig {
        turn: Some(TurnConfig {
            urls: vec![turn_url.to_owned()],
            secret: SecretSource::Value(Secret::new(secret.as_bytes())),
            ttl: Duration::from_secs(600),
            grace: Duration::ZERO,
        }),
        ..ServerConfig::default()
    };
    tokio::spawn(signaling_server::run(
        listener,
        config,
        std::future::pending(),
    ));
    format!("ws://{address}")
}

fn binary(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_client-cli")).with_file_name(name);
    assert!(
        path.exists(),
        "{} is not built: run cargo test --workspace (or cargo build -p {name})",
        path.display()
    );
    path
}

/// A fake-device process, stopped when dropped.
struct Device(Child);

impl Drop for Device {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// fake-device registered as `id` with `flags`, once the server lists it.
async fn device(server: &str, id: &str, flags: &[&str]) -> Device {
    let device = Device(
        Command::new(binary("fake-device"))
            .args(["--server", server, "--device-id", id, "--displays", "1"])
            .args(flags)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    let http = server.replace("ws://", "http://");
    let options = peer::signaling::ConnectOptions {
        server: http,
        token: None,
        ca_cert: None,
        insecure: false,
    };
    loop {
        let (_, body) = options.http_get("/devices").await.unwrap();
        if body.contains(id) {
            return device;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{id} never registered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `client-cli connect --json` with `flags`: its exit status and report.
async fn connect(server: &str, id: &str, flags: &[&str]) -> (Output, Value) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_client-cli"));
    command
        .args([
            "--server",
            server,
            "connect",
            id,
            "--json",
            "--timeout",
            "20s",
        ])
        .args(flags)
        .env("RUST_LOG", "error")
        .kill_on_drop(true);
    let output = command.output().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report = stdout
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str::<Value>(line).ok())
        .unwrap_or_else(|| {
            panic!(
                "no JSON report; stdout {stdout}, stderr {}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    (output, report)
}

#[tokio::test]
async fn a_relay_only_handshake_carries_data_and_video_through_coturn() {
    let coturn = Coturn::start(&[SECRET]).unwrap();
    let server = server(&coturn.url(), SECRET).await;
    let _device = device(&server, "cvd-relay", &["--relay-only"]).await;
    for _ in 0..2 {
        let (output, report) = connect(
            &server,
            "cvd-relay",
            &["--relay-only", "--video-wait", "1s"],
        )
        .await;
        assert!(output.status.success(), "{report}");
        assert_eq!(report["ok"], true, "{report}");
        // Our end of the pair is coturn's relayed address: every packet
        // of ours went through it.
        let pair = &report["candidate_pair"];
        assert_eq!(pair["local"]["type"], "relay", "{report}");
        assert_eq!(pair["local"]["address"], "127.0.0.1", "{report}");
        assert_eq!(report["echo_rtt_ms"].as_array().unwrap().len(), 3);
        let frames = report["video_frames"].as_u64().unwrap_or(0);
        assert!(
            frames >= 10,
            "{frames} video frames through the relay: {report}"
        );
    }
    // coturn names each session's user: one per connection, each with
    // credentials of its own. The device relays under the client's, which
    // its request-offer carried (PROTOCOL.md, "The payload layer").
    let log = coturn.log();
    for user in [":cvd-relay/client-1>", ":cvd-relay/client-2>"] {
        let allocations = log
            .lines()
            .filter(|line| line.contains(user) && line.contains("ALLOCATE processed, success"))
            .count();
        assert!(
            allocations >= 2,
            "{allocations} allocations for {user}, not one per side:\n{log}"
        );
    }
}

#[tokio::test]
async fn a_server_with_another_secret_than_coturns_is_reported_as_turn_authentication() {
    let coturn = Coturn::start(&[SECRET]).unwrap();
    let server = server(&coturn.url(), "not-the-secret").await;
    let _device = device(&server, "cvd-wrong", &[]).await;
    let (output, report) = connect(&server, "cvd-wrong", &["--relay-only"]).await;
    assert!(!output.status.success(), "{report}");
    let error = report["error"].as_str().unwrap();
    assert!(
        error.contains("TURN authentication failed at turn:127.0.0.1:"),
        "{error}"
    );
    assert!(error.contains("401"), "{error}");
    assert!(error.contains("do not share the same secret"), "{error}");
    // A relay-only device that cannot relay says so to its client.
    let _relaying = device(&server, "cvd-wrong-relaying", &["--relay-only"]).await;
    let (output, report) = connect(&server, "cvd-wrong-relaying", &[]).await;
    assert!(!output.status.success(), "{report}");
    let error = report["error"].as_str().unwrap();
    assert!(error.starts_with("the device says: relay only"), "{error}");
    assert!(error.contains("TURN authentication failed"), "{error}");
}

#[tokio::test]
async fn credentials_past_their_expiry_are_reported_as_turn_authentication() {
    let coturn = Coturn::start(&[SECRET]).unwrap();
    let server = server(&coturn.url(), SECRET).await;
    let _device = device(&server, "cvd-expired", &[]).await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Signed right, but its expiry passed a minute ago; and, as a check of
    // the check, the same a minute ahead is relayed.
    let servers = |expiry: u64| {
        let username = format!("{expiry}:cvd-expired/by-hand");
        let credential = credential(SECRET.as_bytes(), &username);
        json!([{"urls": [coturn.url()], "username": username, "credential": credential}])
            .to_string()
    };
    let expired = servers(now - 60);
    let (output, report) = connect(
        &server,
        "cvd-expired",
        &["--relay-only", "--ice-servers", &expired],
    )
    .await;
    assert!(!output.status.success(), "{report}");
    let error = report["error"].as_str().unwrap();
    assert!(error.contains("TURN authentication failed"), "{error}");
    assert!(error.contains("its expiry passed"), "{error}");
    let valid = servers(now + 60);
    let (output, report) = connect(
        &server,
        "cvd-expired",
        &[
            "--relay-only",
            "--ice-servers",
            &valid,
            "--video-wait",
            "0s",
        ],
    )
    .await;
    assert!(output.status.success(), "{report}");
    assert_eq!(
        report["candidate_pair"]["local"]["type"], "relay",
        "{report}"
    );
}

#[tokio::test]
async fn relay_only_without_a_turn_server_says_so_at_once() {
    let server = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(signaling_server::run(
            listener,
            ServerConfig::default(),
            std::future::pending(),
        ));
        format!("ws://{address}")
    };
    let _device = device(&server, "cvd-no-turn", &[]).await;
    let (output, report) = connect(&server, "cvd-no-turn", &["--relay-only"]).await;
    assert!(!output.status.success(), "{report}");
    let error = report["error"].as_str().unwrap();
    assert!(error.contains("name no TURN server"), "{error}");
    assert!(error.contains("--turn-url"), "{error}");
}
