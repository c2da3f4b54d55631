//! client-cli's own errors and exit codes: JSON when asked for JSON, a
//! non-zero exit when the server ends a session, hints for a wrong URL.

#![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

use std::io::Write as _;
use std::process::{Command, Stdio};

const BINARY: &str = env!("CARGO_BIN_EXE_client-cli");

/// A signaling server on a free loopback port, for the rest of the test.
async fn start_server() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(signaling_server::run(
        listener,
        signaling_server::ServerConfig::default(),
        std::future::pending(),
    ));
    address
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn json_output_stays_json_when_the_server_is_not_there() {
    let server = format!("ws://127.0.0.1:{}", closed_port());
    let output = Command::new(BINARY)
        .args(["--server", &server, "devices", "--json"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)));
    assert!(
        report["error"]
            .as_str()
            .unwrap()
            .contains("connection refused"),
        "{report}"
    );

    let output = Command::new(BINARY)
        .args(["--server", &server, "connect", "cvd-1", "--json"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["ok"], false);
    assert!(
        report["error"]
            .as_str()
            .unwrap()
            .contains("connection refused")
    );
    // Every key is a JSON identifier: no spaces.
    fn keys_have_no_spaces(value: &serde_json::Value) {
        if let Some(object) = value.as_object() {
            for (key, inner) in object {
                assert!(!key.contains(' '), "{key:?}");
                keys_have_no_spaces(inner);
            }
        }
    }
    keys_have_no_spaces(&report);
}

#[test]
fn an_endpoint_url_given_as_the_server_gets_a_hint() {
    for args in [
        vec!["devices"],
        vec!["connect", "cvd-1"],
        vec!["raw", "client"],
    ] {
        let output = Command::new(BINARY)
            .args(["--server", "ws://127.0.0.1:8443/connect_client"])
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("names the endpoint /connect_client; give the server's base URL (ws://127.0.0.1:8443)"),
            "{args:?}: {stderr}"
        );
    }
}

/// `raw` exits 1 when the server ends the session (here 1008 for an
/// invalid device id), 0 after a normal close.
#[tokio::test]
async fn raw_exits_non_zero_when_the_server_ends_the_session() {
    let address = start_server().await;
    let server = format!("ws://{address}");
    let run = |input: &'static str| {
        let server = server.clone();
        tokio::task::spawn_blocking(move || {
            let mut child = Command::new(BINARY)
                .args(["--server", &server, "raw", "client"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
            child.wait_with_output().unwrap()
        })
    };
    let ended = run("{\"message_type\":\"connect\",\"device_id\":\"\"}\n")
        .await
        .unwrap();
    assert_eq!(ended.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&ended.stderr);
    assert!(stderr.contains("closed by the server: 1008"), "{stderr}");
    let normal = run("").await.unwrap();
    assert_eq!(
        normal.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&normal.stderr)
    );
}

/// Off a terminal (and with --json), a bench says its phases on stderr:
/// it is not silent through its warm-up.
#[tokio::test]
async fn a_bench_off_a_terminal_says_its_phases() {
    let address = start_server().await;
    let server = format!("ws://{address}");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(BINARY)
            .args(["--server", &server, "bench", "relay"])
            .args([
                "--devices",
                "1",
                "--duration",
                "500ms",
                "--warmup",
                "300ms",
                "--json",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("client-cli bench: warming up for 300ms")
            && stderr.contains("client-cli bench: measuring for 500ms"),
        "{stderr}"
    );
    serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap();
}
