//! Test support: the real server on 127.0.0.1:0 and real websocket peers.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use signaling_server::ServerConfig;
use signaling_server::config::DeviceSocketConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for something that should happen promptly.
pub const PROMPT: Duration = Duration::from_secs(5);

/// Each row (a test function taking a `DeviceTransport`) as
/// `<row>::one_instance` and `<row>::other_instance` (the client on one
/// instance of a Redis, its device on another); `paused` rows run on a
/// paused clock, which a real Redis's deadlines cannot share, so on one
/// instance only. The test file imports `DeviceTransport`.
#[allow(unused_macros)] // Not every test file has rows.
macro_rules! on_both_topologies {
    ($($row:ident $(: $mode:ident)?),* $(,)?) => {
        $( on_both_topologies!(@row $($mode)? $row); )*
    };
    (@row $row:ident) => {
        mod $row {
            #[tokio::test]
            async fn one_instance() {
                super::$row(super::DeviceTransport::Websocket).await
            }
            #[tokio::test]
            async fn other_instance() {
                super::$row(super::DeviceTransport::OtherInstance).await
            }
        }
    };
    (@row paused $row:ident) => {
        mod $row {
            #[tokio::test(start_paused = true)]
            async fn one_instance() {
                super::$row(super::DeviceTransport::Websocket).await
            }
        }
    };
}

/// A running server; dropping it without `stop` aborts it.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The device socket, when the server has one.
    pub device_socket: Option<PathBuf>,
    /// A temporary folder made for the server (by `start_for`), removed
    /// with it.
    own_dir: Option<PathBuf>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), signaling_server::Error>>>,
    /// `DeviceTransport::OtherInstance`: the instance the clients use,
    /// and the Redis the two share.
    client_side: Option<Box<TestServer>>,
    redis: Option<Redis>,
    /// Its `--client-token`, which the helpers that wait for a listing
    /// present.
    client_token: Option<String>,
}

/// How a test's devices reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceTransport {
    /// The seed's `/register_device` websocket.
    Websocket,
    /// The device socket (`--device-socket`), as Cuttlefish's devices.
    Socket,
    /// The seed's websocket, on one instance, and every client on another
    /// instance of the same Redis (`--redis`).
    OtherInstance,
}

/// A fresh folder under the system's temporary one, for one test's files.
pub fn temp_dir(name: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("sig-{name}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a temporary folder");
    dir
}

impl TestServer {
    pub async fn start(config: ServerConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let device_socket = config.device_socket.as_ref().map(|s| s.path.clone());
        let client_token = config.client_token.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let bound = signaling_server::Server::bind(listener, config).expect("the server binds");
        let task = tokio::spawn(bound.run(async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            device_socket,
            own_dir: None,
            stop: Some(stop),
            task: Some(task),
            client_side: None,
            redis: None,
            client_token,
        }
    }

    /// A server whose devices (`device_peer`, `registered_device_peer`)
    /// come over `transport`; the device socket lives in a folder of its
    /// own.
    pub async fn start_for(transport: DeviceTransport, mut config: ServerConfig) -> Self {
        if transport == DeviceTransport::OtherInstance {
            return Self::start_pair(config).await;
        }
        let own_dir = (transport == DeviceTransport::Socket).then(|| temp_dir("device-socket"));
        if let Some(dir) = &own_dir {
            config.device_socket = Some(DeviceSocketConfig::at(dir.join("operator")));
        }
        let mut server = Self::start(config).await;
        server.own_dir = own_dir;
        server
    }

    /// A new device connection, on the device socket if the server has
    /// one, else on `/register_device`.
    pub async fn device_peer(&self) -> DevicePeer {
        match &self.device_socket {
            Some(path) => DevicePeer::Socket(SocketPeer::connect(path).await),
            None => DevicePeer::Websocket(self.device().await),
        }
    }

    /// [`Self::device_peer`] registered under `id` with `device_info`
    /// `{"name": id}`, its `config` already read.
    pub async fn registered_device_peer(&self, id: &str) -> DevicePeer {
        let mut device = self.device_peer().await;
        let register = serde_json::json!({
            "message_type": "register", "device_id": id, "device_info": {"name": id},
        });
        device.send(&register.to_string()).await;
        let config = device.recv_json().await;
        assert_eq!(config["message_type"], "config", "{config}");
        self.until_clients_see(id).await;
        device
    }

    /// Two instances of `config` on a Redis of their own: devices reach
    /// this one, clients the other.
    async fn start_pair(config: ServerConfig) -> Self {
        let redis = Redis::start().await;
        let member = || ServerConfig {
            redis: cluster_config(&redis, Duration::from_millis(1500)).redis,
            ..config.clone()
        };
        let mut devices = Self::start(member()).await;
        let clients = Self::start(member()).await;
        for server in [&devices, &clients] {
            eventually("the instance joined redis", || async {
                server.own_metric("signaling_cluster_redis_up").await == 1.0
            })
            .await;
        }
        devices.client_side = Some(Box::new(clients));
        devices.redis = Some(redis);
        devices
    }

    /// The instance clients use: another one in `OtherInstance`.
    fn clients(&self) -> &TestServer {
        self.client_side.as_deref().unwrap_or(self)
    }

    /// The address of the instance clients use (for HTTP: polling, the Go
    /// operator's API).
    pub fn clients_addr(&self) -> SocketAddr {
        self.clients().addr
    }

    /// A websocket URL on the instance clients use.
    pub fn clients_url(&self, path: &str) -> String {
        self.clients().url(path)
    }

    /// `GET path` on the instance clients use.
    pub async fn clients_get(&self, path: &str) -> HttpResponse {
        self.clients().get(path).await
    }

    /// Waits until the instance clients use lists `id` (at once on one
    /// instance; after the directory has carried it to another).
    pub async fn until_clients_see(&self, id: &str) {
        let clients = self.clients();
        if std::ptr::eq(clients, self) {
            return;
        }
        let quoted = format!("\"{id}\"");
        let bearer = clients
            .client_token
            .as_ref()
            .map(|token| format!("Bearer {token}"));
        let headers: Vec<(&str, &str)> = bearer
            .iter()
            .map(|value| ("Authorization", value.as_str()))
            .collect();
        eventually(&format!("{id} is listed where the clients are"), || async {
            http_get(clients.addr, "/devices", &headers)
                .await
                .body
                .contains(&quoted)
        })
        .await;
    }

    pub async fn with_defaults() -> Self {
        Self::start(test_config()).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// Shuts the server down and waits for `run` to return.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(clients) = self.client_side.take() {
            Box::pin(clients.stop()).await?;
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.take().context("already stopped")?;
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .context("server did not stop")???;
        Ok(())
    }

    pub async fn device(&self) -> Peer {
        Peer::connect(&self.url("/register_device")).await
    }

    pub async fn client(&self) -> Peer {
        Peer::connect(&self.clients().url("/connect_client")).await
    }

    /// A device registered under `id` with `device_info` `{"name": id}`,
    /// its `config` already read.
    pub async fn registered_device_with_info(&self, id: &str) -> Peer {
        let mut device = self.device().await;
        let register = serde_json::json!({
            "message_type": "register", "device_id": id, "device_info": {"name": id},
        });
        device.send(&register.to_string()).await;
        let config = device.recv_json().await;
        assert_eq!(config["message_type"], "config", "{config}");
        self.until_clients_see(id).await;
        device
    }

    /// A client connected to `id`, its `config` and `device_info` read.
    pub async fn connected_client(&self, id: &str) -> Peer {
        self.until_clients_see(id).await;
        let mut client = self.client().await;
        client.connect_to(id).await;
        client
    }

    pub async fn get(&self, path: &str) -> HttpResponse {
        http_get(self.addr, path, &[]).await
    }

    /// The value of one metric line (name with labels), 0 when absent;
    /// summed over both instances in `OtherInstance`.
    pub async fn metric(&self, series: &str) -> f64 {
        let mut value = self.own_metric(series).await;
        if let Some(clients) = &self.client_side {
            value += clients.own_metric(series).await;
        }
        value
    }

    /// The value on this instance alone.
    pub async fn own_metric(&self, series: &str) -> f64 {
        support::prometheus::sample_or_zero(&self.get("/metrics").await.body, series)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if let Some(dir) = &self.own_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The defaults, except: test peers held in a variable are not read while
/// the server stops, so they never answer its close frame, and waiting the
/// default 2 s for each would only slow the suite.
/// A session's first frame without the resume offer it carries as its
/// last field (PROTOCOL.md, "Resuming a session"), which must be there:
/// a 43-character token and the window.
pub fn without_offer(text: &str) -> String {
    let at = text
        .rfind(r#","resume":{"token":""#)
        .unwrap_or_else(|| panic!("no resume offer in {text}"));
    let offer: Value = serde_json::from_str(&text[at + 10..text.len() - 1])
        .unwrap_or_else(|e| panic!("the offer in {text}: {e}"));
    assert_eq!(offer["token"].as_str().map(str::len), Some(43), "{text}");
    assert!(offer["window_ms"].is_u64(), "{text}");
    format!("{}}}", &text[..at])
}

/// The same for a frame read as JSON: the object without its `resume`.
pub fn without_offer_json(mut value: Value) -> Value {
    let offer = value
        .as_object_mut()
        .and_then(|object| object.remove("resume"))
        .unwrap_or_else(|| panic!("no resume offer in {value}"));
    assert_eq!(offer["token"].as_str().map(str::len), Some(43), "{offer}");
    value
}

/// [`test_config`] with resume off: a connection that drops ends its
/// session at once, for the rows about departures themselves.
pub fn without_resume() -> ServerConfig {
    ServerConfig {
        resume_window: Duration::ZERO,
        ..test_config()
    }
}

pub fn test_config() -> ServerConfig {
    ServerConfig {
        close_timeout: Duration::from_millis(200),
        max_connections: 10_000,
        max_http_connections: 10_000,
        ..ServerConfig::default()
    }
}

/// A websocket peer: a device or a client.
pub struct Peer {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Peer {
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        Self { ws }
    }

    /// Connects with extra request headers; the error is the HTTP refusal.
    pub async fn try_connect_with(
        url: &str,
        headers: &[(&'static str, &str)],
    ) -> Result<Self, WsError> {
        let mut request = url.into_client_request()?;
        for (name, value) in headers {
            request
                .headers_mut()
                .insert(*name, HeaderValue::from_str(value).expect("header value"));
        }
        let (ws, _) = tokio_tungstenite::connect_async(request).await?;
        Ok(Self { ws })
    }

    /// Sends `connect` to `id` and reads its `config` and `device_info`.
    pub async fn connect_to(&mut self, id: &str) {
        let connect = serde_json::json!({"message_type": "connect", "device_id": id});
        self.send(&connect.to_string()).await;
        let config = self.recv_json().await;
        assert_eq!(config["message_type"], "config", "{config}");
        let info = self.recv_json().await;
        assert_eq!(info["message_type"], "device_info", "{info}");
    }

    pub async fn send(&mut self, text: &str) {
        self.ws
            .send(Message::text(text))
            .await
            .unwrap_or_else(|e| panic!("send {text}: {e}"));
    }

    pub async fn send_message(&mut self, message: Message) {
        self.ws.send(message).await.expect("send");
    }

    /// The next text frame; panics on anything else or after [`PROMPT`].
    pub async fn recv_text(&mut self) -> String {
        loop {
            let message = tokio::time::timeout(PROMPT, self.ws.next())
                .await
                .expect("timed out waiting for a frame")
                .expect("stream ended")
                .expect("websocket error");
            match message {
                Message::Text(text) => return text.to_string(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The next text frame, however long it takes (for driven-time tests,
    /// where [`PROMPT`] would pass in an instant); pings are skipped.
    pub async fn recv_text_whenever(&mut self) -> String {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(text))) => return text.to_string(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    pub async fn recv_json(&mut self) -> Value {
        let text = self.recv_text().await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }

    /// Expects `{"error": ...}` and returns the text.
    pub async fn recv_error(&mut self) -> String {
        let value = self.recv_json().await;
        assert_eq!(value.as_object().map(|o| o.len()), Some(1), "{value}");
        value["error"]
            .as_str()
            .unwrap_or_else(|| panic!("not an error: {value}"))
            .to_owned()
    }

    /// Expects the server's close frame next (after any pings) and returns
    /// its code and reason; then checks the stream ends.
    pub async fn recv_close(&mut self) -> (CloseCode, String) {
        loop {
            let message = tokio::time::timeout(PROMPT, self.ws.next())
                .await
                .expect("timed out waiting for close")
                .expect("stream ended without a close frame")
                .expect("websocket error");
            match message {
                Message::Close(Some(CloseFrame { code, reason })) => {
                    return (code, reason.to_string());
                }
                Message::Close(None) => panic!("close frame without a code"),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected close, got {other:?}"),
            }
        }
    }

    /// Checks nothing arrives within `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(other) => panic!("expected silence, got {other:?}"),
            }
        }
    }

    /// Closes normally and waits for the server's reply.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        while let Ok(Some(Ok(_))) = tokio::time::timeout(PROMPT, self.ws.next()).await {}
    }

    /// Sends a message and checks the reply is the one expected.
    pub async fn send_and_recv_error(&mut self, text: &str) -> String {
        self.send(text).await;
        self.recv_error().await
    }
}

/// A device on either transport, with the calls the device tests make.
#[allow(clippy::large_enum_variant)] // A few per test.
pub enum DevicePeer {
    Websocket(Peer),
    Socket(SocketPeer),
}

impl DevicePeer {
    pub async fn send(&mut self, text: &str) {
        match self {
            Self::Websocket(peer) => peer.send(text).await,
            Self::Socket(peer) => peer.send_bytes(text.as_bytes()).await,
        }
    }

    /// Sends every message at once: one websocket write, or packets back
    /// to back.
    pub async fn send_all(&mut self, texts: &[&str]) {
        match self {
            Self::Websocket(peer) => {
                for text in texts {
                    peer.ws.feed(Message::text(*text)).await.expect("feed");
                }
                peer.ws.flush().await.expect("flush");
            }
            Self::Socket(peer) => {
                for text in texts {
                    peer.send_bytes(text.as_bytes()).await;
                }
            }
        }
    }

    /// Sends bytes that are not UTF-8: as a websocket text frame, or a
    /// packet.
    pub async fn send_not_utf8(&mut self, bytes: &[u8]) {
        use tokio_tungstenite::tungstenite::protocol::frame::Frame;
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
        match self {
            Self::Websocket(peer) => {
                let frame = Frame::message(bytes.to_vec(), OpCode::Data(Data::Text), true);
                peer.send_message(Message::Frame(frame)).await;
            }
            Self::Socket(peer) => peer.send_bytes(bytes).await,
        }
    }

    pub async fn recv_text(&mut self) -> String {
        match self {
            Self::Websocket(peer) => peer.recv_text().await,
            Self::Socket(peer) => peer.recv_text().await,
        }
    }

    pub async fn recv_json(&mut self) -> Value {
        let text = self.recv_text().await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }

    /// Expects `{"error": ...}` and returns the text.
    pub async fn recv_error(&mut self) -> String {
        error_text(&self.recv_json().await)
    }

    pub async fn send_and_recv_error(&mut self, text: &str) -> String {
        self.send(text).await;
        self.recv_error().await
    }

    /// The server ended the session with `code` and `reason`: on a
    /// websocket, its close frame says both; the device socket has no close
    /// frames, so its stream ends, after an error packet with the reason
    /// for the endings a websocket says with a close code alone.
    pub async fn expect_end(&mut self, code: CloseCode, reason: &str) {
        match self {
            Self::Websocket(peer) => {
                assert_eq!(peer.recv_close().await, (code, reason.to_owned()));
            }
            Self::Socket(peer) => {
                // 1008 and 1001 endings come after their error frame, which
                // the test has read; the others a websocket says with its
                // close code alone, and the socket with a last packet.
                if !matches!(code, CloseCode::Policy | CloseCode::Away) {
                    let text = peer.recv_packet().await.expect("a last error packet");
                    let value: Value = serde_json::from_str(&text)
                        .unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
                    assert_eq!(error_text(&value), reason);
                }
                assert_eq!(peer.recv_packet().await, None, "the socket ends");
            }
        }
    }

    pub async fn expect_silence(&mut self, wait: Duration) {
        match self {
            Self::Websocket(peer) => peer.expect_silence(wait).await,
            Self::Socket(peer) => peer.expect_silence(wait).await,
        }
    }

    /// Leaves: a close handshake, or shutting the socket down.
    pub async fn close(self) {
        match self {
            Self::Websocket(peer) => peer.close().await,
            Self::Socket(peer) => peer.close().await,
        }
    }
}

fn error_text(value: &Value) -> String {
    assert_eq!(value.as_object().map(|o| o.len()), Some(1), "{value}");
    value["error"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error: {value}"))
        .to_owned()
}

/// A device on the device socket: one message per packet.
pub struct SocketPeer {
    pub socket: tokio_seqpacket::UnixSeqpacket,
}

impl SocketPeer {
    pub async fn connect(path: &Path) -> Self {
        let socket = tokio_seqpacket::UnixSeqpacket::connect(path)
            .await
            .unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
        Self { socket }
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        let sent = self
            .socket
            .send(bytes)
            .await
            .unwrap_or_else(|e| panic!("send {} bytes: {e}", bytes.len()));
        assert_eq!(sent, bytes.len(), "one packet, whole");
    }

    /// The next packet as text, `None` at the end of the stream; panics
    /// after [`PROMPT`].
    pub async fn recv_packet(&mut self) -> Option<String> {
        tokio::time::timeout(PROMPT, self.recv_packet_whenever())
            .await
            .expect("timed out waiting for a packet")
    }

    /// The next packet, however long it takes.
    pub async fn recv_packet_whenever(&mut self) -> Option<String> {
        let mut buffer = vec![0u8; 256 * 1024];
        let info = match self.socket.recv(&mut buffer).await {
            Ok(info) => info,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
            Err(e) => panic!("recv: {e}"),
        };
        assert!(!info.truncated(), "a packet over 256 KiB");
        let n = info.bytes_read();
        (n > 0).then(|| String::from_utf8(buffer[..n].to_vec()).expect("UTF-8 from the server"))
    }

    pub async fn recv_text(&mut self) -> String {
        self.recv_packet().await.expect("the socket ended")
    }

    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Ok(packet) = tokio::time::timeout(wait, self.recv_packet_whenever()).await {
            panic!("expected silence, got {packet:?}");
        }
    }

    pub async fn close(self) {
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
    }
}

pub use support::http::Response as HttpResponse;

/// `GET path` with `headers`, answered within [`PROMPT`].
pub async fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    let request = headers.iter().fold(
        support::http::Request::get(path),
        |request, (name, value)| request.header(name, value),
    );
    http_request(addr, request).await
}

/// `POST path` with a JSON body, answered within [`PROMPT`].
pub async fn http_post(addr: SocketAddr, path: &str, body: &str) -> HttpResponse {
    http_request(addr, support::http::Request::post_json(path, body)).await
}

pub async fn http_request(addr: SocketAddr, request: support::http::Request) -> HttpResponse {
    let what = format!("{request:?}");
    tokio::time::timeout(PROMPT, support::http::request(addr, request))
        .await
        .unwrap_or_else(|_| panic!("no answer within {PROMPT:?} to {what}"))
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// The HTTP status of a refused websocket upgrade.
pub fn refusal_status(error: &WsError) -> u16 {
    match error {
        WsError::Http(response) => response.status().as_u16(),
        other => panic!("expected an HTTP refusal, got {other}"),
    }
}

/// A polling client on Cuttlefish's backoff (1 s after a poll that brought
/// messages, else twice the last wait, up to 60 s) for ten quiet minutes,
/// each `poll` checking its answer, while `device` reads all along (so it
/// answers pings) and must hear nothing. Then the client stops: the
/// client's disconnect must reach the device within `--poll-timeout` (the
/// default) plus a second, and not before it. For a paused clock.
pub async fn poll_on_backoff_then_stop<F, Fut>(device: Peer, mut poll: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let poll_timeout = ServerConfig::default().poll_timeout;
    assert!(poll_timeout > Duration::from_secs(60), "{poll_timeout:?}");
    let quiet = Duration::from_secs(600);
    let mut device = device;
    let listening = tokio::spawn(async move {
        device.expect_silence(quiet).await;
        device
    });
    let started = tokio::time::Instant::now();
    let mut delay = Duration::from_secs(1);
    let mut polls = 0;
    while started.elapsed() < quiet - Duration::from_secs(60) {
        tokio::time::sleep(delay).await;
        poll().await;
        polls += 1;
        delay = (delay * 2).min(Duration::from_secs(60));
    }
    assert!(polls >= 12, "{polls} polls; the 60 s cap was reached");
    let last_poll = tokio::time::Instant::now();
    let mut device = listening.await.expect("the device listened");
    let gone = tokio::time::timeout(poll_timeout * 2, device.recv_text_whenever())
        .await
        .expect("the client is dropped");
    assert_eq!(
        gone,
        r#"{"message_type":"client_disconnected","client_id":1}"#
    );
    // Missing its poll timeout, it is held for the resume window first.
    let dropped_at = poll_timeout + ServerConfig::default().resume_window;
    let waited = last_poll.elapsed();
    assert!(
        waited >= dropped_at && waited <= dropped_at + Duration::from_secs(1),
        "dropped {waited:?} after its last poll"
    );
}

/// Polls `check` until it holds or [`PROMPT`] passes.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PROMPT;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until {what}");
}

/// The reading half of a peer's socket.
pub type Reader = futures_util::stream::SplitStream<WebSocketStream<MaybeTlsStream<TcpStream>>>;

/// Floods the server from `peer` with `text`, 2,000 times (far more than
/// the socket buffers and an outbox hold), while the other side does not
/// read; returns the first text frame the server sends `peer` meanwhile
/// (waiting at most 30 s), and the reading half, still open. The flood
/// stops there.
pub async fn flood_until_told(peer: Peer, text: String) -> (String, Reader) {
    flood_until_told_at_most(peer, text, 2_000).await
}

/// [`flood_until_told`], sending at most `count` times.
pub async fn flood_until_told_at_most(peer: Peer, text: String, count: usize) -> (String, Reader) {
    let (mut tx, mut rx) = peer.ws.split();
    let flood = tokio::spawn(async move {
        for _ in 0..count {
            if tx.send(Message::text(text.clone())).await.is_err() {
                break;
            }
        }
    });
    let told = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match rx.next().await {
                Some(Ok(Message::Text(text))) => return text.to_string(),
                Some(Ok(_)) => {}
                other => panic!("the flooding side was not told: {other:?}"),
            }
        }
    })
    .await
    .expect("the flooding side was told in time");
    flood.abort();
    (told, rx)
}

/// A real redis-server on a free loopback port, for the cluster tests;
/// killed when dropped.
pub struct Redis {
    pub port: u16,
    /// What `--requirepass` it was started with.
    password: Option<String>,
    /// Where it listens besides its port, if told to.
    unix_socket: Option<PathBuf>,
    child: Option<std::process::Child>,
}

impl Redis {
    pub async fn start() -> Self {
        Self::start_as(None, None).await
    }

    /// A redis-server that wants `password` of its clients.
    pub async fn start_with_password(password: &str) -> Self {
        Self::start_as(Some(password.to_owned()), None).await
    }

    /// A redis-server that also listens on a unix socket at `path`.
    pub async fn start_on_unix_socket(path: PathBuf) -> Self {
        Self::start_as(None, Some(path)).await
    }

    async fn start_as(password: Option<String>, unix_socket: Option<PathBuf>) -> Self {
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
            probe.local_addr().expect("its address").port()
        };
        let mut redis = Self {
            port,
            password,
            unix_socket,
            child: None,
        };
        redis.spawn().await;
        redis
    }

    /// Starts redis-server on this port (again) and waits until it answers.
    pub async fn spawn(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--logfile", ""])
            .args(
                self.password
                    .iter()
                    .flat_map(|password| ["--requirepass", password.as_str()]),
            )
            .args(self.unix_socket.iter().flat_map(|path| {
                [std::ffi::OsStr::new("--unixsocket"), path.as_os_str()]
            }))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is not installed: `cargo xtask test` installs it (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + PROMPT;
        loop {
            if let Ok(mut conn) = self.connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok()
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self) -> String {
        self.url_of_database(0)
    }

    /// The URL of one of its databases, with the password if it has one.
    pub fn url_of_database(&self, db: u32) -> String {
        match &self.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}/{db}", self.port),
            None => format!("redis://127.0.0.1:{}/{db}", self.port),
        }
    }

    pub async fn connection(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        redis::Client::open(self.url())?
            .get_multiplexed_async_connection()
            .await
    }

    /// The keys under the server's prefix.
    pub async fn keys(&self) -> Vec<String> {
        let mut conn = self.connection().await.expect("redis answers");
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg("signaling:*")
            .query_async(&mut conn)
            .await
            .expect("KEYS");
        keys.sort();
        keys
    }

    /// Sends `signal` (e.g. "STOP", "CONT", "KILL") to redis-server.
    pub fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let status = std::process::Command::new("kill")
                .args([format!("-{signal}"), child.id().to_string()])
                .status()
                .expect("kill");
            assert!(status.success(), "kill -{signal}");
        }
    }

    /// Kills redis-server and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = std::process::Command::new("kill")
                .args(["-CONT".to_owned(), child.id().to_string()])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A test server that shares its devices through `redis`, with a short
/// lease so that failures show quickly.
pub async fn cluster_member(redis: &Redis, lease: Duration) -> TestServer {
    TestServer::start(cluster_config(redis, lease)).await
}

/// The test configuration of a member of `redis`'s cluster.
pub fn cluster_config(redis: &Redis, lease: Duration) -> ServerConfig {
    ServerConfig {
        redis: Some(signaling_server::cluster::RedisConfig {
            url: redis.url(),
            lease,
            queue_bytes: signaling_server::cluster::RedisConfig::DEFAULT_QUEUE_BYTES,
        }),
        ..test_config()
    }
}

/// Waits until `check` holds, at most `limit`.
pub async fn eventually_within<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TLS connector trusting the certificate at `cert_path`, offering
/// `versions`.
pub fn tls_connector(
    cert_path: &Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(cert_path).unwrap();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let client_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(client_config))
}
