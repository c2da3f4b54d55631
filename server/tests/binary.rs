//! The `signaling-server` binary: flags, refusals, signals.

#![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const BINARY: &str = env!("CARGO_BIN_EXE_signaling-server");

/// A server process that is killed if the test ends early.
struct Server {
    child: Child,
    address: String,
    /// `ws` or `wss`, from the banner.
    scheme: String,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Server {
    fn start(args: &[&str]) -> Self {
        Self::start_at("127.0.0.1:0", args)
    }

    fn start_at(listen: &str, args: &[&str]) -> Self {
        let mut all = vec!["--listen", listen];
        all.extend(args);
        Self::start_with(&all)
    }

    /// Starts the server with exactly `args`.
    fn start_with(args: &[&str]) -> Self {
        Self::start_logging(args, "warn")
    }

    /// Starts the server with exactly `args`, logging at `level`.
    fn start_logging(args: &[&str], level: &str) -> Self {
        let mut child = Command::new(BINARY)
            .args(args)
            .env("RUST_LOG", level)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the server");
        // Keep stderr drained, so the server never blocks on it, and
        // kept, for tests that read it.
        let stderr = child.stderr.take().expect("stderr");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let (scheme, address) = lines
            .find_map(|line| {
                let line = line.ok()?;
                let rest = line.strip_prefix("signaling server on ")?;
                let (scheme, rest) = rest.split_once("://")?;
                Some((
                    scheme.to_owned(),
                    rest.split_whitespace().next()?.to_owned(),
                ))
            })
            .expect("the server prints its address");
        Self {
            child,
            address,
            scheme,
            log,
        }
    }

    /// What the server wrote to stderr so far.
    fn stderr(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The first line of stderr holding `text`, once it is there (within
    /// five seconds).
    fn log_line(&self, text: &str) -> String {
        let started = Instant::now();
        loop {
            let log = self.stderr();
            if let Some(line) = log.lines().find(|line| line.contains(text)) {
                return line.to_owned();
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "no {text:?} in\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                started.elapsed() < limit,
                "the server did not exit in {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn sigterm_closes_sockets_with_1001_and_exits_0() {
    for signal in ["TERM", "INT"] {
        let mut server = Server::start(&["--shutdown-grace", "5s"]);
        let url = format!("ws://{}/register_device", server.address);
        let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        server.signal(signal);
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Close(frame))) => return frame,
                    Some(Ok(_)) => continue,
                    other => panic!("expected a close frame, got {other:?}"),
                }
            }
        })
        .await
        .expect("no close frame");
        let frame = closed.expect("a close code");
        assert_eq!(frame.code, CloseCode::Away);
        assert_eq!(frame.reason.as_str(), "Server shutting down");
        drop(ws);
        let status = server.wait_exit(Duration::from_secs(6));
        assert!(status.success(), "SIG{signal}: {status}");
    }
}

/// A start-up error is one line, said once, and the exit code is 1;
/// `--listen localhost:PORT` and SIGNALING_LISTEN with the reference's
/// port flag work as the help says.
#[test]
fn start_up_errors_are_said_once_and_listen_takes_what_the_help_says() {
    for json in [false, true] {
        let mut command = Command::new(BINARY);
        command.args([
            "--tls-cert",
            "/nonexistent/cert.pem",
            "--tls-key",
            "/nonexistent/key.pem",
        ]);
        if json {
            command.args(["--log-format", "json"]);
        }
        let output = command.output().unwrap();
        assert_eq!(output.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            stderr.matches("cannot read /nonexistent/cert.pem").count(),
            1,
            "{stderr}"
        );
        assert!(
            !stderr.contains("Caused by") && !stderr.contains("backtrace"),
            "{stderr}"
        );
        if json {
            for line in stderr.lines() {
                serde_json::from_str::<serde_json::Value>(line)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            }
        } else {
            assert!(stderr.starts_with("error: cannot read"), "{stderr}");
        }
    }
    let server = Server::start_with(&["--listen", "localhost:0"]);
    assert!(
        server.address.starts_with("127.0.0.1:"),
        "{}",
        server.address
    );
    drop(server);
    // The environment's address, the flag's port (help: "on this port of
    // the --listen address").
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(BINARY)
        .args(["--http_server_port", &port.to_string()])
        .env("SIGNALING_LISTEN", "127.0.0.1:1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.contains(&format!("ws://127.0.0.1:{port}")), "{line}");
}

/// Each connection's end is one line: how it ended (code, reason, who
/// closed), how long it lasted, and the messages and bytes each way; a
/// session the server ends for a limit is a warning, a normal close info.
#[tokio::test]
async fn each_connection_ends_with_one_line_that_says_how() {
    use futures_util::SinkExt;
    let server = Server::start_logging(
        &[
            "--listen",
            "127.0.0.1:0",
            "--rate-limit",
            "1",
            "--rate-burst",
            "3",
        ],
        "info",
    );
    let url = format!("ws://{}/register_device", server.address);
    // One closes normally after its register.
    let (mut calm, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    calm.send(Message::text(
        r#"{"message_type":"register","device_id":"calm"}"#,
    ))
    .await
    .unwrap();
    let _config = calm.next().await.unwrap().unwrap();
    calm.close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: CloseCode::Normal,
        reason: "done".into(),
    }))
    .await
    .unwrap();
    while let Some(Ok(_)) = calm.next().await {}
    // One goes past the rate limit.
    let (mut fast, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    for _ in 0..6 {
        fast.feed(Message::text(
            r#"{"message_type":"forward","client_id":9,"payload":1}"#,
        ))
        .await
        .unwrap();
    }
    fast.flush().await.unwrap();
    while let Some(Ok(_)) = fast.next().await {}
    let started = Instant::now();
    let lines = loop {
        let log = server.stderr();
        let lines: Vec<String> = log
            .lines()
            .filter(|line| line.contains("connection closed"))
            .map(str::to_owned)
            .collect();
        if lines.len() >= 2 || started.elapsed() > Duration::from_secs(5) {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(lines.len(), 2, "{lines:?}");
    let calm = lines
        .iter()
        .find(|l| l.contains("device_id=\"calm\""))
        .unwrap_or_else(|| panic!("{lines:#?}"));
    assert!(calm.contains("INFO"), "{calm}");
    assert_fields(
        calm,
        &[
            "role=\"device\"",
            "code=1000",
            "reason=\"done\"",
            "closed_by=\"peer\"",
            "duration_ms=",
            "messages_in=1",
            "messages_out=1",
            "bytes_in=46",
        ],
    );
    let fast = lines
        .iter()
        .find(|l| !l.contains("device_id=\"calm\""))
        .unwrap();
    assert!(fast.contains("WARN"), "{fast}");
    assert_fields(
        fast,
        &[
            "code=1008",
            "reason=\"Rate limit exceeded",
            "closed_by=\"server\"",
            "messages_in=",
        ],
    );
}

/// A device on the device socket and a client of the Go operator's
/// polling API end with the same line as a websocket, with their role and
/// transport on it.
#[tokio::test]
async fn socket_and_polling_connections_end_with_the_same_line() {
    use support::http::{Request, request};
    let dir = std::env::temp_dir().join(format!("signaling-ending-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("devices");
    let server = Server::start_logging(
        &[
            "--listen",
            "127.0.0.1:0",
            &format!("--device-socket={}", path.display()),
        ],
        "info",
    );
    let address = server.address.parse().unwrap();
    let (device, _config) = socket_device(&path, "cvd-line", &server).await;
    let mut buffer = vec![0u8; 4096];
    let connected = request(
        address,
        Request::post_json("/polled_connections", r#"{"device_id":"cvd-line"}"#),
    )
    .await
    .unwrap();
    let reply: serde_json::Value = serde_json::from_str(&connected.body).unwrap();
    let id = reply["connection_id"].as_str().unwrap().to_owned();
    let forwarded = request(
        address,
        Request::post_json(
            &format!("/polled_connections/{id}/:forward"),
            r#"{"payload":{"n":1}}"#,
        ),
    )
    .await
    .unwrap();
    assert_eq!(forwarded.status, 200, "{}", forwarded.body);
    device.recv(&mut buffer).await.unwrap();
    // The device leaves by closing its socket; the client reads the rest
    // and is dropped with it.
    device.shutdown(std::net::Shutdown::Both).unwrap();
    let lines = loop {
        let messages = support::http::get(address, &format!("/polled_connections/{id}/messages"))
            .await
            .unwrap();
        let log = server.stderr();
        let lines: Vec<String> = log
            .lines()
            .filter(|line| line.contains("connection closed"))
            .map(str::to_owned)
            .collect();
        if lines.len() >= 2 || messages.status == 404 {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let line = |transport: &str| {
        lines
            .iter()
            .find(|line| line.contains(&format!("transport=\"{transport}\"")))
            .unwrap_or_else(|| panic!("no {transport} line in {lines:#?}"))
            .clone()
    };
    let socket = line("socket");
    assert_fields(
        &socket,
        &[
            "INFO",
            "role=\"device\"",
            "closed_by=\"peer\"",
            "device_id=\"cvd-line\"",
            "messages_in=1",
            "messages_out=2",
            "duration_ms=",
        ],
    );
    // stderr is a pipe here, not a terminal: no colour codes.
    assert!(!server.stderr().contains('\u{1b}'), "{}", server.stderr());
    let polling = line("polling");
    assert_fields(
        &polling,
        &[
            "INFO",
            "role=\"client\"",
            "closed_by=\"server\"",
            "code=1001",
            "reason=\"Device disconnected\"",
            "peer=127.0.0.1:",
            "device_id=\"cvd-line\"",
            "client_id=1",
            "messages_in=1",
            "bytes_in=7",
            "messages_out=0",
        ],
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// A setting comes from its flag, else its environment variable, else the
/// `--config` file, else its default; `--print-config` says which, and a
/// server started with the file runs with what it says.
#[test]
fn settings_come_from_the_flag_then_the_environment_then_the_file() {
    let dir = std::env::temp_dir().join(format!("signaling-settings-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        "listen = \"127.0.0.1:0\"\nrate-limit = 10\nrate-burst = 30\nidle-timeout = \"2m\"\n\
         max-message-bytes = 4096\nstun-server = [\"stun:a.example:3478\"]\n",
    )
    .unwrap();
    let output = Command::new(BINARY)
        .arg("--config")
        .arg(&path)
        .args(["--rate-limit", "20", "--print-config"])
        .env("SIGNALING_RATE_LIMIT", "15")
        .env("SIGNALING_RATE_BURST", "40")
        .env("SIGNALING_ALLOW_INSECURE", "yes")
        .env(
            "SIGNALING_TURN_URL",
            "turn:t.example:3478,turns:t.example:5349",
        )
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let printed = String::from_utf8(output.stdout).unwrap();
    for line in [
        "rate-limit = 20  # flag",
        "rate-burst = 40  # SIGNALING_RATE_BURST",
        "allow-insecure = true  # SIGNALING_ALLOW_INSECURE",
        r#"turn-url = ["turn:t.example:3478", "turns:t.example:5349"]  # SIGNALING_TURN_URL"#,
        r#"idle-timeout = "2m"  # --config"#,
        r#"stun-server = ["stun:a.example:3478"]  # --config"#,
        r#"# ping-interval = "15s"  # default"#,
    ] {
        assert!(printed.contains(line), "{line} not in\n{printed}");
    }
    // A server started with the file runs with it.
    let server = Server::start_logging(&["--config", path.to_str().unwrap()], "info");
    let configuration = server.log_line("configuration");
    assert_fields(
        &configuration,
        &[
            "max_message_bytes=4096",
            "rate_limit=10",
            "idle_timeout=\"2m\"",
            "ice_servers=1",
        ],
    );
    drop(server);
    // A bad file stops the start, said once, naming the file and the key.
    std::fs::write(&path, "max-message-bytes = \"lots\"\n").unwrap();
    let output = Command::new(BINARY)
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let said = String::from_utf8(output.stderr).unwrap();
    assert_eq!(said.lines().count(), 1, "{said}");
    assert!(
        said.starts_with(&format!("error: --config {}: ", path.display()))
            && said.contains("max-message-bytes"),
        "{said}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// A refusal before the upgrade is one warning with the peer and why.
#[tokio::test]
async fn a_refusal_is_logged_with_the_peer_and_why() {
    let server = Server::start_logging(
        &["--listen", "127.0.0.1:0", "--client-token", "right"],
        "warn",
    );
    let url = format!("ws://{}/connect_client", server.address);
    assert!(tokio_tungstenite::connect_async(&url).await.is_err());
    let line = server.log_line("refused");
    assert_fields(
        &line,
        &[
            "WARN",
            "peer=127.0.0.1:",
            "path=\"/connect_client\"",
            "status=401",
            "why=\"Unauthorized: missing or invalid token\"",
        ],
    );
}

/// Under --log-format json every line is JSON, the banner on stdout too;
/// --help says where logs go and how RUST_LOG filters them.
#[test]
fn json_logs_are_json_on_every_line() {
    let mut child = Command::new(BINARY)
        .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut banner = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut banner)
        .unwrap();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let output = child.wait_with_output().unwrap();
    let banner: serde_json::Value = serde_json::from_str(&banner).unwrap();
    assert!(
        banner["url"]
            .as_str()
            .unwrap()
            .starts_with("ws://127.0.0.1:"),
        "{banner}"
    );
    assert!(
        banner["message"]
            .as_str()
            .unwrap()
            .starts_with("signaling server on ws://")
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.lines().count() >= 2, "{stderr}");
    for line in stderr.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
    let help = Command::new(BINARY).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("RUST_LOG filters them"), "{help}");
}

/// `--version` names the git commit, and so does /metrics.
#[test]
fn the_version_names_its_commit() {
    let output = Command::new(BINARY).arg("--version").output().unwrap();
    let version = String::from_utf8(output.stdout).unwrap();
    let commit = version
        .trim()
        .strip_prefix(concat!(
            "signaling-server ",
            env!("CARGO_PKG_VERSION"),
            " ("
        ))
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{version}"));
    assert!(
        commit == "unknown"
            || (commit.len() == 12 && commit.bytes().all(|b| b.is_ascii_hexdigit())),
        "{version}"
    );
    let server = Server::start(&[]);
    let metrics = http_get_blocking(&server.address, "/metrics").body;
    let line = format!(
        "signaling_build_info{{version=\"{}\",commit=\"{commit}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    assert!(metrics.contains(&line), "{metrics}");
}

/// A certificate made as a CA's is served, with a warning that says why
/// clients will refuse it and how to make one they take.
#[test]
fn a_ca_certificate_is_served_with_a_warning() {
    let dir = std::env::temp_dir().join(format!("signaling-ca-cert-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let server = Server::start(&[
        "--tls-cert",
        cert_path.to_str().unwrap(),
        "--tls-key",
        key_path.to_str().unwrap(),
    ]);
    std::thread::sleep(Duration::from_millis(200));
    let log = server.stderr();
    assert!(
        log.contains("is a CA certificate (basicConstraints CA:TRUE)")
            && log.contains("basicConstraints=critical,CA:FALSE"),
        "{log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGTERM with a drain period: /readyz turns 503 at once while the
/// server goes on; a second SIGTERM ends the drain, and the process exits 0.
#[test]
fn a_second_sigterm_cuts_the_drain_short() {
    let mut server =
        Server::start_logging(&["--listen", "127.0.0.1:0", "--drain-period", "1h"], "info");
    assert_eq!(http_get_blocking(&server.address, "/readyz").status, 200);
    server.signal("TERM");
    let started = Instant::now();
    while http_get_blocking(&server.address, "/readyz").status != 503 {
        assert!(started.elapsed() < Duration::from_secs(5), "no drain");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(http_get_blocking(&server.address, "/healthz").status, 200);
    assert!(server.child.try_wait().unwrap().is_none());
    server.signal("TERM");
    let status = server.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    let log = server.stderr();
    assert!(log.contains("draining"), "{log}");
    assert!(log.contains("drain cut short by a second signal"), "{log}");
}

#[test]
fn non_loopback_without_tls_is_refused() {
    let output = Command::new(BINARY)
        .args(["--listen", "0.0.0.0:0"])
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("refusing to serve plain ws:// on the non-loopback address 0.0.0.0:0"),
        "{stderr}"
    );
}

#[test]
fn insecure_flag_allows_non_loopback_and_self_signed_prints_a_fingerprint() {
    let dir = std::env::temp_dir().join(format!("signaling-bin-tls-{}", std::process::id()));
    let mut child = Command::new(BINARY)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--tls-self-signed",
            "--tls-self-signed-dir",
        ])
        .arg(&dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start");
    let stdout = child.stdout.take().unwrap();
    let lines: Vec<String> = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .take(3)
        .collect();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        lines[0].starts_with("self-signed certificate: "),
        "{lines:?}"
    );
    assert!(dir.join("cert.pem").exists() && dir.join("key.pem").exists());
    let fingerprint = lines[1]
        .strip_prefix("SHA-256 fingerprint: ")
        .expect("fingerprint");
    assert_eq!(fingerprint.len(), 32 * 3 - 1, "{fingerprint}");
    assert!(
        lines[2].starts_with("signaling server on wss://127.0.0.1:"),
        "{lines:?}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let _ = std::fs::remove_dir_all(dir);

    // --allow-insecure lets a non-loopback address through the check. The
    // test only talks to it over loopback.
    let server = Server::start_at("0.0.0.0:0", &["--allow-insecure"]);
    let port = server
        .address
        .strip_prefix("0.0.0.0:")
        .expect("wildcard address");
    let reply = http_get_blocking(&format!("127.0.0.1:{port}"), "/devices");
    assert!(reply.status == 200 && reply.body == "[]", "{reply:?}");
}

/// Graceful shutdown under load: SIGTERM while 1,000 device/client pairs
/// relay. Every one of the 2,000 sockets gets close 1001, the process
/// exits 0 within the grace period (10 s), and nothing panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_closes_1000_pairs_with_1001() {
    use futures_util::SinkExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    const PAIRS: usize = 1_000;
    let grace = Duration::from_secs(10);
    let mut server = Server::start(&["--shutdown-grace", "10s"]);
    let relayed = Arc::new(AtomicU64::new(0));
    let mut sockets = Vec::with_capacity(2 * PAIRS);
    for n in 0..PAIRS {
        let device_url = format!("ws://{}/register_device", server.address);
        let (mut device, _) = tokio_tungstenite::connect_async(&device_url).await.unwrap();
        device
            .send(Message::text(format!(
                r#"{{"message_type":"register","device_id":"pair-{n}"}}"#
            )))
            .await
            .unwrap();
        let config = device.next().await.unwrap().unwrap();
        assert!(config.to_text().unwrap().contains("config"), "{config}");
        let client_url = format!("ws://{}/connect_client", server.address);
        let (mut client, _) = tokio_tungstenite::connect_async(&client_url).await.unwrap();
        client
            .send(Message::text(format!(
                r#"{{"message_type":"connect","device_id":"pair-{n}"}}"#
            )))
            .await
            .unwrap();
        sockets.push((device, client));
    }
    // Each pair relays one message at a time, back and forth, until the
    // server closes; each socket reports the close it got.
    let mut tasks = Vec::with_capacity(2 * PAIRS);
    for (mut device, mut client) in sockets {
        let count = relayed.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(message)) = device.next().await {
                match message {
                    Message::Text(text) if text.contains("client_msg") => {
                        count.fetch_add(1, Ordering::Relaxed);
                        let back = r#"{"message_type":"forward","client_id":1,"payload":"pong"}"#;
                        let _ = device.send(Message::text(back)).await;
                    }
                    Message::Close(frame) => return frame,
                    _ => {}
                }
            }
            None
        }));
        let count = relayed.clone();
        tasks.push(tokio::spawn(async move {
            let ping = r#"{"message_type":"forward","payload":"ping"}"#;
            let _ = client.send(Message::text(ping)).await;
            while let Some(Ok(message)) = client.next().await {
                match message {
                    Message::Text(text) if text.contains("device_msg") => {
                        count.fetch_add(1, Ordering::Relaxed);
                        let _ = client.send(Message::text(ping)).await;
                    }
                    Message::Close(frame) => return frame,
                    _ => {}
                }
            }
            None
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = relayed.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        relayed.load(Ordering::Relaxed) > before,
        "the pairs are relaying when the signal comes"
    );

    let signalled = Instant::now();
    server.signal("TERM");
    let mut closes = 0;
    for task in tasks {
        let frame = tokio::time::timeout(grace, task)
            .await
            .expect("every socket is closed within the grace period")
            .unwrap()
            .expect("a close frame, not a dropped connection");
        assert_eq!(frame.code, CloseCode::Away, "{frame:?}");
        // A client whose device was closed first hears that instead.
        assert!(
            ["Server shutting down", "Device disconnected"].contains(&frame.reason.as_str()),
            "{frame:?}"
        );
        closes += 1;
    }
    assert_eq!(closes, 2 * PAIRS);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < grace,
            "the server did not exit within the grace period"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
    let stderr = server.stderr();
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `--max-http-connections N` reaches the server: with one connection
/// open and idle, the next is answered 503 without being read.
#[test]
fn max_http_connections_flag() {
    use std::io::{Read, Write};

    let server = Server::start(&["--max-http-connections", "1"]);
    let _held = std::net::TcpStream::connect(server.address.as_str()).unwrap();
    let mut next = std::net::TcpStream::connect(server.address.as_str()).unwrap();
    next.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = next.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let mut answer = String::new();
    let _ = next.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
}

/// `--rate-limit N --rate-burst B` reach the server (D17); `--rate-limit 0`
/// turns the limit off whatever the burst.
#[tokio::test]
async fn rate_limit_flags() {
    use futures_util::SinkExt;

    for (flags, answered, limited) in [
        (["--rate-limit", "1", "--rate-burst", "3"], 2, true),
        (["--rate-limit", "0", "--rate-burst", "3"], 10, false),
    ] {
        let server = Server::start(&flags);
        let url = format!("ws://{}/register_device", server.address);
        let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        // A registration, then ten forwards, in one write.
        ws.feed(Message::text(
            r#"{"message_type":"register","device_id":"fast"}"#,
        ))
        .await
        .unwrap();
        for _ in 0..10 {
            ws.feed(Message::text(
                r#"{"message_type":"forward","client_id":9,"payload":1}"#,
            ))
            .await
            .unwrap();
        }
        ws.flush().await.unwrap();
        let mut texts = Vec::new();
        let close = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(text))) => {
                        texts.push(text.to_string());
                        if !limited && texts.len() == 1 + answered {
                            return None;
                        }
                    }
                    Some(Ok(Message::Close(frame))) => return frame,
                    Some(Ok(_)) => continue,
                    other => panic!("{flags:?}: got {other:?}"),
                }
            }
        })
        .await
        .expect("the server answered");
        assert!(texts[0].contains(r#""message_type":"config""#), "{texts:?}");
        let unknown = texts.iter().filter(|t| t.contains("Unknown client: 9"));
        assert_eq!(unknown.count(), answered, "{flags:?}: {texts:?}");
        if limited {
            assert!(
                texts.last().unwrap().contains("Rate limit exceeded"),
                "{texts:?}"
            );
            assert_eq!(close.expect("a close frame").code, CloseCode::Policy);
        }
    }
}

#[test]
fn bad_flags_get_clear_errors() {
    for (args, want) in [
        (
            vec!["--idle-timeout", "1s", "--ping-interval", "2s"],
            "must be longer than --ping-interval",
        ),
        (vec!["--handshake-timeout", "soon"], "write e.g. 10s"),
        (
            vec!["--ice-servers", "/nonexistent/ice.json"],
            "cannot read --ice-servers",
        ),
        (vec!["--tls-cert", "/nonexistent.pem"], "--tls-key"),
        (
            vec!["--max-message-bytes", "10"],
            "10 is not in 64..=16777216",
        ),
        (vec!["--rate-burst", "0"], "--rate-burst"),
        (
            vec!["--max-http-connections", "0"],
            "--max-http-connections",
        ),
        (
            vec!["--allowed-origin", "app.example"],
            "--allowed-origin \"app.example\": write an origin",
        ),
        (
            vec!["--trusted-proxy", "proxy.example"],
            "--trusted-proxy \"proxy.example\": write an address or a network",
        ),
        (
            vec!["--device-socket", "/tmp/x", "--device-socket-mode", "99"],
            "not a file mode in octal",
        ),
        (
            vec!["--device-socket-mode", "700"],
            "need --device-socket PATH",
        ),
        (
            vec!["--device-socket", "/nonexistent/dir/operator"],
            "/nonexistent/dir/operator: cannot bind",
        ),
        (
            vec!["--webui_url=https://127.0.0.1:8071/"],
            "only http:// web UIs are proxied",
        ),
        (
            vec!["--webui_url=127.0.0.1:8071"],
            "give it as http://HOST[:PORT][/PATH]",
        ),
        (
            vec!["--webui_url=http://127.0.0.1:1/", "--assets-dir", "/tmp"],
            "cannot be used with",
        ),
        (vec!["--redis", "127.0.0.1:6379"], "--redis 127.0.0.1:6379:"),
        (
            vec!["--redis", "redis://127.0.0.1:1/", "--redis-lease", "100ms"],
            "--redis-lease 100ms must be from 300ms to 1h",
        ),
        (
            vec![
                "--redis",
                "redis://127.0.0.1:1/",
                "--redis-queue-bytes",
                "1000",
            ],
            "--redis-queue-bytes 1000 must be at least 65536",
        ),
        (vec!["--redis-lease", "2s"], "--redis <URL>"),
        (
            vec!["--turn-url", "turn:127.0.0.1:3478"],
            "--turn-url needs the secret it shares with the TURN server",
        ),
        (
            vec![
                "--turn-url",
                "stun:127.0.0.1:3478",
                "--turn-secret-file",
                "/x",
            ],
            "--turn-url stun:127.0.0.1:3478: not a turn: or turns: URL",
        ),
        (
            vec!["--turn-url", "turn:h:99999", "--turn-secret-file", "/x"],
            "the port must be a number from 1 to 65535",
        ),
        (
            vec![
                "--turn-url",
                "turn:h?transport=sctp",
                "--turn-secret-file",
                "/x",
            ],
            "?transport=udp or ?transport=tcp",
        ),
        (
            vec!["--turn-secret-file", "/x"],
            "a TURN secret without --turn-url",
        ),
        (
            vec![
                "--turn-url",
                "turn:h",
                "--turn-secret-file",
                "/x",
                "--turn-ttl",
                "10s",
            ],
            "--turn-ttl 10s must be from 1m to 7d",
        ),
        (
            vec![
                "--turn-url",
                "turn:h",
                "--turn-secret-file",
                "/nonexistent/secret",
            ],
            "cannot read the TURN secret file /nonexistent/secret",
        ),
        (vec!["--proxy-protocol"], "--trusted-proxy <CIDR>"),
        (vec!["--listen", "127.0.0.1"], "no port; write ADDR:PORT"),
        (
            vec!["--listen", "host.example:8443"],
            "names other than localhost are not looked up",
        ),
        (
            vec!["--drain-period", "2h"],
            "--drain-period 7200s must be at most 1h",
        ),
        (
            vec!["--sessions-outlive-tokens"],
            "--token-secret-file <FILE>",
        ),
        (
            vec!["--token-secret-file", "/nonexistent/secret"],
            "cannot read the token secret file /nonexistent/secret",
        ),
        (
            vec![
                "--token-secret-file",
                "/nonexistent/secret",
                "--token-secret-grace",
                "30d",
            ],
            "--token-secret-grace 2592000s must be at most 7d",
        ),
        (
            vec!["--client-token", "a", "--client-token-file", "/x"],
            "cannot be used with",
        ),
        (
            vec!["--device-token-file", "/nonexistent/token"],
            "cannot read the device token file /nonexistent/token",
        ),
    ] {
        let output = Command::new(BINARY).args(&args).output().expect("run");
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
}

/// The TURN entry of a `config` (the last of its `ice_servers`):
/// its username and credential.
fn turn_entry(config: &str) -> (String, String) {
    let value: serde_json::Value = serde_json::from_str(config).unwrap();
    let entry = value["ice_servers"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    (
        entry["username"].as_str().unwrap().to_owned(),
        entry["credential"].as_str().unwrap().to_owned(),
    )
}

/// The TURN secret is read again on SIGHUP: a file rewritten behind the
/// watcher's back (same size, same modification time) signs the next
/// `config` once the server is told.
#[test]
fn sighup_reads_the_turn_secret_again() {
    use signaling_server::turn::credential;
    let dir = std::env::temp_dir().join(format!("signaling-turn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("secret");
    std::fs::write(&path, "first-secret\n").unwrap();
    let server = Server::start(&[
        "--turn-url",
        "turn:127.0.0.1:3478?transport=udp",
        "--turn-secret-file",
        path.to_str().unwrap(),
    ]);
    let signed_with = |secret: &[u8]| {
        let (username, password) =
            turn_entry(&http_get_blocking(&server.address, "/infra_config").body);
        password == credential(secret, &username)
    };
    assert!(signed_with(b"first-secret"));
    rewrite_unseen(&path, "other-secret\n");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(signed_with(b"first-secret"), "the watcher saw no change");
    server.signal("HUP");
    let started = Instant::now();
    while !signed_with(b"other-secret") {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "SIGHUP read nothing"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ice_servers_file_and_stun_flags_fill_config() {
    let path = std::env::temp_dir().join(format!("signaling-ice-{}.json", std::process::id()));
    std::fs::write(
        &path,
        r#"[{"urls":"turn:127.0.0.1:3478","username":"u","credential":"c"}]"#,
    )
    .unwrap();
    let server = Server::start(&[
        "--stun-server",
        "stun:127.0.0.1:3478",
        "--ice-servers",
        path.to_str().unwrap(),
    ]);
    let body = http_get_blocking(&server.address, "/infra_config").body;
    assert_eq!(
        body,
        r#"{"message_type":"config","ice_servers":[{"urls":["stun:127.0.0.1:3478"]},{"urls":["turn:127.0.0.1:3478"],"username":"u","credential":"c"}]}"#,
        "{body}"
    );
    drop(server);
    // Entries a browser would refuse are refused at start.
    for (entry, want) in [
        (r#"{"urls":[]}"#, r#"entry 1: "urls" is empty"#),
        (
            r#"{"urls":"http://127.0.0.1/"}"#,
            r#"entry 1: "http://127.0.0.1/" is not a stun:, stuns:, turn: or turns: URL"#,
        ),
        (
            r#"{"urls":"turn:127.0.0.1:3478"}"#,
            r#"entry 1: turn:127.0.0.1:3478 needs a "username" and a "credential""#,
        ),
    ] {
        std::fs::write(&path, format!("[{entry}]")).unwrap();
        let output = Command::new(BINARY)
            .args(["--ice-servers", path.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1), "{entry}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(want), "{entry}: {stderr}");
    }
    let _ = std::fs::remove_file(path);
}

/// The ICE servers' file is read again on SIGHUP (here rewritten behind
/// the watcher's back), and when it changes; a file that no longer parses
/// keeps the entries in use, and the log says why.
#[test]
fn sighup_reads_the_ice_servers_file_again() {
    let path =
        std::env::temp_dir().join(format!("signaling-ice-reload-{}.json", std::process::id()));
    std::fs::write(&path, r#"[{"urls":"stun:127.0.0.1:1111"}]"#).unwrap();
    let server = Server::start(&[
        "--stun-server",
        "stun:127.0.0.1:3478",
        "--ice-servers",
        path.to_str().unwrap(),
    ]);
    let urls = || {
        let body = http_get_blocking(&server.address, "/infra_config").body;
        let value: serde_json::Value = serde_json::from_str(&body).unwrap();
        value["ice_servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|entry| entry["urls"][0].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let until = |want: &[&str], what: &str| {
        let started = Instant::now();
        while urls() != want {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{what}: {:?}",
                urls()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    assert_eq!(urls(), ["stun:127.0.0.1:3478", "stun:127.0.0.1:1111"]);
    rewrite_unseen(&path, r#"[{"urls":"stun:127.0.0.1:2222"}]"#);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        urls()[1],
        "stun:127.0.0.1:1111",
        "the watcher saw no change"
    );
    server.signal("HUP");
    until(
        &["stun:127.0.0.1:3478", "stun:127.0.0.1:2222"],
        "SIGHUP read nothing",
    );
    // A change is seen without a signal; a broken file keeps what there is.
    std::fs::write(
        &path,
        r#"[{"urls":"stun:127.0.0.1:3333"},{"urls":"stun:127.0.0.1:4444"}]"#,
    )
    .unwrap();
    until(
        &[
            "stun:127.0.0.1:3478",
            "stun:127.0.0.1:3333",
            "stun:127.0.0.1:4444",
        ],
        "the change was not seen",
    );
    std::fs::write(&path, "[{").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(urls().len(), 3);
    assert!(
        server
            .stderr()
            .contains("the ICE servers could not be read again"),
        "{}",
        server.stderr()
    );
    let _ = std::fs::remove_file(path);
}

/// Writes `text` into `path` keeping its size and modification time as
/// they were (the texts here are the same length), so that only a SIGHUP,
/// not the watcher, can tell the file changed.
fn rewrite_unseen(path: &std::path::Path, text: &str) {
    let modified = std::fs::metadata(path).unwrap().modified().unwrap();
    std::fs::write(path, text).unwrap();
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(modified)
        .unwrap();
}

/// `GET path` from `address` (`host:port`).
fn http_get_blocking(address: &str, path: &str) -> support::http::Response {
    try_http_get_blocking(address, path).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

fn try_http_get_blocking(
    address: &str,
    path: &str,
) -> Result<support::http::Response, support::http::Error> {
    let address = address.parse().expect("a numeric host:port");
    support::http::get_blocking(address, path)
}

// ---------------------------------------------------------------------------
// The reference server's flags, in its value forms (README: "Replacing the
// reference server"); one test each.
// ---------------------------------------------------------------------------

/// The Go operator's socket flag: the socket is made with its mode, a
/// device registers on it, and SIGTERM removes it.
#[test]
fn go_operator_socket_path() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let dir = std::env::temp_dir().join(format!("signaling-socket-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("operator");
    let control = dir.join("operator_control");
    let mut server = Server::start(&[
        &format!("--socket_path={}", path.display()),
        &format!("--control_socket_path={}", control.display()),
    ]);
    assert!(std::fs::metadata(&control).unwrap().file_type().is_socket());
    let meta =
        std::fs::metadata(&path).expect("the socket exists once the server says where it listens");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o770);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (_device, config) = socket_device(&path, "cvd-socket", &server).await;
        assert!(config.starts_with(r#"{"message_type":"config""#));
        let address = server.address.parse().unwrap();
        let devices = support::http::get(address, "/devices").await.unwrap();
        // --socket_path is a Go operator flag: descriptors, as there.
        assert_eq!(
            devices.body,
            r#"[{"device_id":"cvd-socket","group_name":"","adb_port":0}]"#
        );
    });
    server.signal("TERM");
    assert!(server.wait_exit(Duration::from_secs(10)).success());
    assert!(!path.exists(), "removed at exit");
    assert!(!control.exists(), "removed at exit");
    std::fs::remove_dir_all(dir).unwrap();
}

/// Asserts that a log line holds every one of `fields`.
fn assert_fields(line: &str, fields: &[&str]) {
    for field in fields {
        assert!(line.contains(field), "{field}: {line}");
    }
}

/// A device registered as `device_id` on the device socket at `path`, and
/// the first packet the server sent it.
async fn socket_device(
    path: &std::path::Path,
    device_id: &str,
    server: &Server,
) -> (tokio_seqpacket::UnixSeqpacket, String) {
    let device = tokio_seqpacket::UnixSeqpacket::connect(path).await.unwrap();
    let register = format!(r#"{{"message_type":"register","device_id":"{device_id}"}}"#);
    device.send(register.as_bytes()).await.unwrap();
    let mut buffer = vec![0u8; 4096];
    let n = match device.recv(&mut buffer).await {
        Ok(info) => info.bytes_read(),
        Err(e) => panic!("{e}: {}", server.stderr()),
    };
    (device, String::from_utf8(buffer[..n].to_vec()).unwrap())
}

/// `GET /devices{query}` while a device registered as `device_id` holds
/// its websocket.
fn devices_with(
    runtime: &tokio::runtime::Runtime,
    server: &Server,
    device_id: &str,
    query: &str,
) -> String {
    runtime.block_on(async {
        let url = format!("ws://{}/register_device", server.address);
        let (mut device, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        let register = format!(r#"{{"message_type":"register","device_id":"{device_id}"}}"#);
        device.send(Message::text(register)).await.unwrap();
        device.next().await.unwrap().unwrap();
        let address = server.address.parse().unwrap();
        let devices = support::http::get(address, &format!("/devices{query}"))
            .await
            .unwrap();
        devices.body
    })
}

/// The Go operator's flags in its spellings: --http_port and --listen_addr
/// make the address, --log_file gets the log (without colour codes), and
/// GET /devices answers descriptors unless --devices-list says otherwise.
#[test]
fn go_operator_flags() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("signaling-go-flags-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("operator.log");
    let server = Server::start_with(&[
        &format!("--http_port={port}"),
        "--listen_addr=127.0.0.1",
        &format!("--log_file={}", log.display()),
        // A start-up warning, so the log (at warn) has a line.
        "--poll-timeout=30s",
    ]);
    assert_eq!(server.address, format!("127.0.0.1:{port}"));
    assert_eq!(http_get_blocking(&server.address, "/devices").body, "[]");
    let written = std::fs::read_to_string(&log).unwrap();
    assert!(
        written.contains("--poll-timeout 30s is not longer than the 1m"),
        "{written}"
    );
    assert!(!written.contains('\u{1b}'), "no colour codes: {written:?}");
    drop(server);

    // The shape can be chosen either way.
    let server = Server::start_with(&[
        "--listen_addr=127.0.0.1",
        "--http_port=0",
        "--devices-list=ids",
    ]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    assert_eq!(
        devices_with(&runtime, &server, "listed", ""),
        r#"["listed"]"#
    );
    drop(server);
    let server = Server::start(&["--devices-list=descriptors"]);
    assert_eq!(
        devices_with(&runtime, &server, "described", ""),
        r#"[{"device_id":"described","group_name":"","adb_port":0}]"#
    );
    assert_eq!(
        devices_with(&runtime, &server, "grouped", "?groupId=g1"),
        "[]"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// The Go operator's --https_port with --tls_cert_dir (cert.pem, key.pem):
/// the same endpoints with TLS on a second port.
#[test]
fn go_operator_https_port() {
    let dir = std::env::temp_dir().join(format!("signaling-https-{}", std::process::id()));
    let generated = signaling_server::tls::self_signed(&dir, "127.0.0.1".parse().unwrap()).unwrap();
    assert_eq!(generated.cert_path, dir.join("cert.pem"));
    let https_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = Server::start_with(&[
        "--listen_addr=127.0.0.1",
        "--http_port=0",
        &format!("--https_port={https_port}"),
        &format!("--tls_cert_dir={}", dir.display()),
    ]);
    assert_eq!(server.scheme, "ws");
    assert_eq!(http_get_blocking(&server.address, "/healthz").body, "ok\n");
    // TLS there: plain HTTP is told so.
    let reply = http_get_blocking(&format!("127.0.0.1:{https_port}"), "/healthz");
    assert_eq!(reply.status, 400);
    assert!(reply.body.contains("this port serves TLS"), "{reply:?}");
    drop(server);
    // A folder without the certificate is an error at start.
    let output = Command::new(BINARY)
        .args(["--https_port=1", "--tls_cert_dir=/nonexistent"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/cert.pem"), "{stderr}");
    let _ = std::fs::remove_dir_all(dir);
}

/// A folder holding a certificate as the reference expects it:
/// server.crt and server.key.
fn certs_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("signaling-{name}-{}", std::process::id()));
    let generated = signaling_server::tls::self_signed(&dir, "127.0.0.1".parse().unwrap()).unwrap();
    std::fs::rename(&generated.cert_path, dir.join("server.crt")).unwrap();
    std::fs::rename(&generated.key_path, dir.join("server.key")).unwrap();
    dir
}

#[test]
fn reference_http_server_port() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = Server::start_with(&[&format!("--http_server_port={port}")]);
    assert_eq!(server.address, format!("127.0.0.1:{port}"));
    assert_eq!(http_get_blocking(&server.address, "/healthz").body, "ok\n");
    drop(server);
    // With --listen, the port is this flag's and the address --listen's.
    let server = Server::start_with(&[
        "--listen",
        "127.0.0.1:1",
        &format!("--http_server_port={port}"),
    ]);
    assert_eq!(server.address, format!("127.0.0.1:{port}"));
}

#[test]
fn reference_use_secure_http() {
    let output = Command::new(BINARY)
        .args(["--listen", "127.0.0.1:0", "--use_secure_http=true"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--use_secure_http=true needs a certificate"),
        "{stderr}"
    );

    let dir = certs_dir("secure-http");
    let certs = format!("--certs_dir={}", dir.display());
    let secure = Server::start(&["--use_secure_http=true", &certs]);
    assert_eq!(secure.scheme, "wss");
    // false serves plain, even beside the reference's --certs_dir; so does
    // gflags' negative form.
    for off in ["--use_secure_http=false", "--nouse_secure_http"] {
        let plain = Server::start(&[off, &certs]);
        assert_eq!(plain.scheme, "ws", "{off}");
        assert_eq!(http_get_blocking(&plain.address, "/healthz").body, "ok\n");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn reference_certs_dir() {
    let dir = certs_dir("certs-dir");
    let server = Server::start(&[&format!("--certs_dir={}", dir.display())]);
    assert_eq!(server.scheme, "wss");
    // Plain HTTP on the TLS port is told so.
    let reply = http_get_blocking(&server.address, "/healthz");
    assert_eq!(reply.status, 400);
    assert!(reply.body.contains("this port serves TLS"), "{reply:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn reference_assets_dir() {
    let dir = std::env::temp_dir().join(format!("signaling-assets-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("js")).unwrap();
    std::fs::write(dir.join("index.html"), "<h1>devices</h1>").unwrap();
    std::fs::write(dir.join("js").join("app.js"), "let x = 1;").unwrap();
    std::fs::write(dir.with_extension("secret"), "outside").unwrap();
    let server = Server::start(&[&format!("--assets_dir={}", dir.display())]);
    let index = http_get_blocking(&server.address, "/");
    assert_eq!(index.status, 200, "{index:?}");
    assert!(
        index.header("content-type") == Some("text/html; charset=utf-8"),
        "{index:?}"
    );
    assert!(index.body.ends_with("<h1>devices</h1>"), "{index:?}");
    let script = http_get_blocking(&server.address, "/js/app.js");
    assert!(
        script
            .header("content-type")
            .is_some_and(|value| value.starts_with("text/javascript")),
        "{script:?}"
    );
    assert!(script.body.ends_with("let x = 1;"), "{script:?}");
    let name = dir.with_extension("secret");
    let name = name.file_name().unwrap().to_str().unwrap();
    for outside in [format!("/../{name}"), format!("/js/%2e%2e/../{name}")] {
        let reply = http_get_blocking(&server.address, &outside);
        assert_eq!(reply.status, 404, "{outside}: {reply:?}");
    }
    let missing = http_get_blocking(&server.address, "/nothing.html");
    assert_eq!(missing.status, 404, "{missing:?}");
    // The server's own endpoints come first.
    assert_eq!(http_get_blocking(&server.address, "/devices").body, "[]");
    // A folder that is not there is refused at start.
    let output = Command::new(BINARY)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--assets-dir",
            "/nonexistent/assets",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("is not a directory"));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(dir.with_extension("secret"));
}

#[test]
fn reference_stun_server() {
    let server = Server::start(&[
        "--stun_server=127.0.0.1:3478",
        "--stun-server",
        "turn:127.0.0.1:3479",
    ]);
    let body = http_get_blocking(&server.address, "/infra_config").body;
    assert_eq!(
        body,
        r#"{"message_type":"config","ice_servers":[{"urls":["stun:127.0.0.1:3478"]},{"urls":["turn:127.0.0.1:3479"]}]}"#,
        "{body}"
    );
}

/// A TLS connector trusting only the certificate at `cert_path`, with no
/// session resumption (a resumed session shows no certificate).
fn trusting(cert_path: &std::path::Path) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(cert_path).unwrap();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

/// A wss device session to `address`, for a server whose certificate
/// `connector` trusts.
async fn wss_device(
    connector: &tokio_rustls::TlsConnector,
    address: &str,
    id: &str,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    String,
> {
    let tcp = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let port = address.rsplit(':').next().unwrap();
    let (mut ws, _) =
        tokio_tungstenite::client_async(format!("wss://localhost:{port}/register_device"), tls)
            .await
            .map_err(|e| e.to_string())?;
    ws.send(Message::text(format!(
        r#"{{"message_type":"register","device_id":"{id}"}}"#
    )))
    .await
    .map_err(|e| e.to_string())?;
    match ws.next().await {
        Some(Ok(Message::Text(text))) if text.contains("config") => Ok(ws),
        other => Err(format!("{other:?}")),
    }
}

/// SIGHUP reads the certificate and key again (PROTOCOL.md, "Reloading"):
/// new handshakes get the new one while the wss session opened before goes
/// on; a file that no longer reads keeps the one in use, and says so.
#[tokio::test]
async fn sighup_reads_the_certificate_again_while_wss_sessions_run() {
    let dir = std::env::temp_dir().join(format!("signaling-reload-{}", std::process::id()));
    let first =
        signaling_server::tls::self_signed(&dir.join("a"), "127.0.0.1".parse().unwrap()).unwrap();
    let second =
        signaling_server::tls::self_signed(&dir.join("b"), "127.0.0.1".parse().unwrap()).unwrap();
    let served = dir.join("served");
    std::fs::create_dir_all(&served).unwrap();
    let (cert, key) = (served.join("cert.pem"), served.join("key.pem"));
    std::fs::copy(&first.cert_path, &cert).unwrap();
    std::fs::copy(&first.key_path, &key).unwrap();
    let mut server = Server::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    assert_eq!(server.scheme, "wss");
    let (trusts_first, trusts_second) = (trusting(&first.cert_path), trusting(&second.cert_path));
    let mut running = wss_device(&trusts_first, &server.address, "before")
        .await
        .unwrap();
    assert!(
        wss_device(&trusts_second, &server.address, "early")
            .await
            .is_err()
    );

    std::fs::copy(&second.cert_path, &cert).unwrap();
    std::fs::copy(&second.key_path, &key).unwrap();
    server.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while wss_device(&trusts_second, &server.address, "after")
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served: {}",
            server.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        wss_device(&trusts_first, &server.address, "stale")
            .await
            .is_err()
    );
    // The session from before the reload is still served.
    running
        .send(Message::text(
            r#"{"message_type":"forward","client_id":1,"payload":1}"#,
        ))
        .await
        .unwrap();
    let reply = running.next().await.unwrap().unwrap();
    assert_eq!(reply.to_text().unwrap(), r#"{"error":"Unknown client: 1"}"#);

    // A broken file: the certificate in use stays, and the log says why.
    std::fs::write(&cert, "not a certificate").unwrap();
    server.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !server
        .stderr()
        .contains("the certificate could not be read again")
    {
        assert!(Instant::now() < deadline, "no warning: {}", server.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        wss_device(&trusts_second, &server.address, "kept")
            .await
            .is_ok()
    );
    assert!(server.child.try_wait().unwrap().is_none());
    let _ = std::fs::remove_dir_all(dir);
}

/// SIGHUP does not end a server that has nothing to read again.
#[test]
fn sighup_leaves_a_plain_server_up() {
    use std::io::{Read, Write};

    let mut server = Server::start_logging(&["--listen", "127.0.0.1:0"], "info");
    server.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !server.stderr().contains("SIGHUP: nothing to read again") {
        assert!(
            Instant::now() < deadline,
            "SIGHUP not handled: {:?}, {}",
            server.child.try_wait(),
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "SIGHUP ended the server"
    );
    let mut stream = std::net::TcpStream::connect(server.address.as_str()).unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// Behind a `--trusted-proxy`, the log names the client its request
/// names, not the proxy.
#[tokio::test]
async fn log_lines_name_the_client_behind_a_trusted_proxy() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let server = Server::start_logging(
        &["--listen", "127.0.0.1:0", "--trusted-proxy", "127.0.0.1"],
        "debug",
    );
    let mut request = format!("ws://{}/connect_client", server.address)
        .into_client_request()
        .unwrap();
    let headers = request.headers_mut();
    headers.insert("X-Forwarded-For", "203.0.113.9".parse().unwrap());
    headers.insert("Origin", "http://evil.example".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(request).await.is_err());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !server.stderr().contains(" refused ") {
        assert!(
            Instant::now() < deadline,
            "no refusal logged: {}",
            server.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let line = server
        .stderr()
        .lines()
        .find(|line| line.contains(" refused "))
        .unwrap()
        .to_owned();
    assert!(line.contains("peer=203.0.113.9:"), "{line}");
}

/// `signaling-server token` mints what the server takes; SIGHUP reads a
/// new secret (one rewritten behind the watcher's back: same size, same
/// modification time), after which the old secret's tokens are refused.
#[test]
fn the_token_subcommand_mints_tokens_and_sighup_reads_a_new_secret() {
    let dir = std::env::temp_dir().join(format!("signaling-tokens-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("secret");
    let secret_path = path.to_str().unwrap();
    std::fs::write(&path, "first-secret-of-thirty-two-bytes-or-more\n").unwrap();
    let mint = |args: &[&str]| {
        let output = Command::new(BINARY)
            .args(["token", "--token-secret-file", secret_path])
            .args(args)
            .output()
            .expect("run");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).trim().to_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (ok, client, _) = mint(&["--role", "client", "--device", "cvd-1", "--ttl", "1h"]);
    assert!(ok);
    assert_eq!(client.split('.').count(), 3, "{client}");
    let (ok, device, _) = mint(&["--role", "device", "--device", "cvd-*"]);
    assert!(ok);
    for (args, want) in [
        (
            vec!["--role", "client", "--device", "cvd-1", "--ttl", "10s"],
            "--ttl 10s must be from 1m to 365d",
        ),
        (
            vec!["--role", "client", "--device", "bad\nid"],
            "is not a device id",
        ),
        (vec!["--role", "client"], "--device <ID>"),
        (
            vec!["--role", "admin", "--device", "x"],
            "invalid value 'admin'",
        ),
    ] {
        let (ok, _, stderr) = mint(&args);
        assert!(!ok, "{args:?}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
    let short = dir.join("short");
    std::fs::write(&short, "short").unwrap();
    let output = Command::new(BINARY)
        .args(["token", "--token-secret-file", short.to_str().unwrap()])
        .args(["--role", "client", "--device", "x"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("holds 5 bytes; HS256 needs at least 32"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let server = Server::start(&["--token-secret-file", secret_path]);
    let status = |token: &str| {
        let address = server.address.parse().unwrap();
        let request = support::http::Request::get("/devices")
            .header("Authorization", &format!("Bearer {token}"));
        support::http::request_blocking(address, request)
            .unwrap()
            .status
    };
    assert_eq!(status(&client), 200);
    assert_eq!(status(&device), 401, "a device's token reads no listing");
    assert_eq!(http_get_blocking(&server.address, "/devices").status, 401);

    rewrite_unseen(&path, "other-secret-of-thirty-two-bytes-or-more\n");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(status(&client), 200, "the watcher saw no change");
    server.signal("HUP");
    let started = Instant::now();
    while status(&client) != 401 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "SIGHUP read nothing"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (_, rotated, _) = mint(&["--role", "client", "--device", "cvd-1"]);
    assert_eq!(status(&rotated), 200);
    let _ = std::fs::remove_dir_all(&dir);
}
