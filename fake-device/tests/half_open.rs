//! A device that vanishes without closing its socket: a fake-device process
//! stopped with SIGSTOP. Its kernel still holds the TCP connection, but
//! nothing answers the server's pings, so only the keepalive can find out.

#![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use peer::signaling::ConnectOptions;
use signaling_server::ServerConfig;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

const PING: Duration = Duration::from_millis(200);
const IDLE: Duration = Duration::from_secs(1);
const CLOSE: Duration = Duration::from_millis(300);

/// The fake device process; killed (and continued first, if stopped) when
/// the test ends.
struct Device(Child);

impl Device {
    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.0.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT".to_owned(), self.0.id().to_string()])
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn devices(options: &ConnectOptions) -> Vec<String> {
    let (status, body) = options.http_get("/devices").await.unwrap();
    assert_eq!(status, 200);
    serde_json::from_str(&body).unwrap()
}

/// Waits until `/devices` is `want`, at most `limit`; returns how long.
async fn until_devices(options: &ConnectOptions, want: &[&str], limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if devices(options).await == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "/devices is {:?}, not {want:?}, after {limit:?}",
            devices(options).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Registers `id` over a plain websocket; the server's first answer.
async fn try_register(
    address: &str,
    id: &str,
) -> (
    String,
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
) {
    let url = format!("ws://{address}/register_device");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let register = format!(r#"{{"message_type":"register","device_id":"{id}"}}"#);
    ws.send(Message::text(register)).await.unwrap();
    let answer = loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => break text.to_string(),
            Some(Ok(_)) => {}
            other => panic!("no answer to register: {other:?}"),
        }
    };
    (answer, ws)
}

/// The keepalive reaps a stopped device (idle timeout 1 s, close wait
/// 300 ms, pings every 200 ms); meanwhile its id is refused (D3); once
/// reaped, a new registration of the id succeeds; and the stopped
/// process, continued, finds its connection gone and re-registers.
#[tokio::test]
async fn a_stopped_device_is_reaped_and_its_id_can_be_taken_again() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let config = ServerConfig {
        ping_interval: PING,
        idle_timeout: IDLE,
        close_timeout: CLOSE,
        ..ServerConfig::default()
    };
    tokio::spawn(signaling_server::run(
        listener,
        config,
        std::future::pending(),
    ));
    let options = ConnectOptions {
        server: format!("ws://{address}"),
        token: None,
        ca_cert: None,
        insecure: false,
    };

    let device = Device(
        Command::new(env!("CARGO_BIN_EXE_fake-device"))
            .args(["--server", &options.server, "--device-id", "half-open"])
            .args(["--reconnect-min", "100ms", "--reconnect-max", "200ms"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    until_devices(&options, &["half-open"], Duration::from_secs(10)).await;

    device.signal("STOP");
    let stopped = Instant::now();
    // The server still believes the device alive: the id is taken.
    let (answer, _refused) = try_register(&address, "half-open").await;
    assert_eq!(answer, r#"{"error":"Device id already taken: half-open"}"#);

    // A device coming back under the same id retries, as Cuttlefish's do,
    // and gets it once the keepalive has reaped the silent holder.
    let taken_back = loop {
        let (answer, socket) = try_register(&address, "half-open").await;
        if answer.contains(r#""message_type":"config""#) {
            break (stopped.elapsed(), socket);
        }
        assert_eq!(answer, r#"{"error":"Device id already taken: half-open"}"#);
        assert!(
            stopped.elapsed() < Duration::from_secs(10),
            "the silent device was never reaped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // No earlier than the idle timeout, and not much later than the idle
    // timeout, one ping interval, the close wait and one retry.
    assert!(taken_back.0 >= IDLE, "reaped after {:?}", taken_back.0);
    assert!(
        taken_back.0 < IDLE + PING + CLOSE + Duration::from_secs(1),
        "reaped after {:?}",
        taken_back.0
    );
    // A clean close: a dropped connection would hold the session for a
    // resume.
    let mut socket = taken_back.1;
    socket.close(None).await.unwrap();
    until_devices(&options, &[], Duration::from_secs(5)).await;

    // The stopped process, continued, finds its connection closed and
    // registers again.
    device.signal("CONT");
    until_devices(&options, &["half-open"], Duration::from_secs(10)).await;
}
