//! Test support: the real server on 127.0.0.1:0 and real websocket peers.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use signaling_server::ServerConfig;
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

/// A running server; dropping it without `stop` aborts it.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), signaling_server::Error>>>,
}

impl TestServer {
    pub async fn start(config: ServerConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(signaling_server::run(listener, config, async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn with_defaults() -> Self {
        Self::start(test_config()).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// Shuts the server down and waits for `run` to return.
    pub async fn stop(mut self) -> Result<()> {
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
        Peer::connect(&self.url("/connect_client")).await
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
        device
    }

    /// A client connected to `id`, its `config` and `device_info` read.
    pub async fn connected_client(&self, id: &str) -> Peer {
        let mut client = self.client().await;
        let connect = serde_json::json!({"message_type": "connect", "device_id": id});
        client.send(&connect.to_string()).await;
        let config = client.recv_json().await;
        assert_eq!(config["message_type"], "config", "{config}");
        let info = client.recv_json().await;
        assert_eq!(info["message_type"], "device_info", "{info}");
        client
    }

    pub async fn get(&self, path: &str) -> HttpResponse {
        http_get(self.addr, path, &[]).await
    }

    /// The value of one metric line (name with labels), 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        support::prometheus::sample_or_zero(&self.get("/metrics").await.body, series)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The defaults, except: test peers held in a variable are not read while
/// the server stops, so they never answer its close frame, and waiting the
/// default 2 s for each would only slow the suite.
pub fn test_config() -> ServerConfig {
    ServerConfig {
        close_timeout: Duration::from_millis(200),
        max_connections: 10_000,
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

async fn http_request(addr: SocketAddr, request: support::http::Request) -> HttpResponse {
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
    let (mut tx, mut rx) = peer.ws.split();
    let flood = tokio::spawn(async move {
        for _ in 0..2_000 {
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
