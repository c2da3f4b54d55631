//! `--webui_url` (PROTOCOL.md, "The web UI proxy"): every path no route
//! takes goes to the web UI, any method, its body and a websocket upgrade
//! through; this server's own endpoints stay its own.

#![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;

use axum::body::Body;
use common::{TestServer, http_get, http_post, refusal_status, test_config};
use futures_util::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use signaling_server::config::WebUiUrl;
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

/// A web UI on 127.0.0.1: answers every request with what it received as
/// JSON, and a websocket upgrade with an echoing websocket.
struct WebUi {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl WebUi {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(answer);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Self { addr, task }
    }

    fn url(&self, path: &str) -> WebUiUrl {
        WebUiUrl::parse(&format!("http://{}{path}", self.addr)).unwrap()
    }
}

impl Drop for WebUi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    mut request: hyper::Request<Incoming>,
) -> Result<hyper::Response<Body>, Infallible> {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    if let Some(key) = header("sec-websocket-key") {
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            let upgraded = upgrade.await.unwrap();
            let mut ws =
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            while let Some(Ok(message)) = ws.next().await {
                if message.is_text() && ws.send(message).await.is_err() {
                    break;
                }
            }
        });
        let response = hyper::Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", derive_accept_key(key.as_bytes()))
            .body(Body::empty())
            .unwrap();
        return Ok(response);
    }
    let seen = json!({
        "method": request.method().as_str(),
        "target": request.uri().to_string(),
        "host": header("host"),
        "x_forwarded_for": header("x-forwarded-for"),
        "x_forwarded_host": header("x-forwarded-host"),
        "x_forwarded_proto": header("x-forwarded-proto"),
        "cookie": header("cookie"),
        "secret": header("x-secret"),
    });
    let body = axum::body::to_bytes(Body::new(request.into_body()), 1 << 20)
        .await
        .unwrap();
    let mut seen = seen;
    seen["body"] = String::from_utf8_lossy(&body).into();
    Ok(hyper::Response::builder()
        .header("content-type", "application/json")
        .header("x-from", "webui")
        .body(Body::from(seen.to_string()))
        .unwrap())
}

async fn server_with(webui: WebUiUrl) -> TestServer {
    let mut config = test_config();
    config.webui_url = Some(webui);
    TestServer::start(config).await
}

#[tokio::test]
async fn other_paths_go_to_the_web_ui_under_its_path_with_forwarding_headers() {
    let webui = WebUi::start().await;
    let server = server_with(webui.url("/ui/")).await;
    let host = server.addr.to_string();

    let page = http_get(server.addr, "/", &[("cookie", "a=b")]).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(page.header("x-from"), Some("webui"));
    let seen: Value = serde_json::from_str(&page.body).unwrap();
    assert_eq!(seen["method"], "GET");
    assert_eq!(seen["target"], "/ui/");
    assert_eq!(seen["host"], webui.addr.to_string());
    assert_eq!(seen["x_forwarded_for"], "127.0.0.1");
    assert_eq!(seen["x_forwarded_host"], host.as_str());
    assert_eq!(seen["x_forwarded_proto"], "http");
    assert_eq!(seen["cookie"], "a=b");

    let page = http_get(
        server.addr,
        "/app/main.js?v=2",
        &[("connection", "x-secret"), ("x-secret", "hop")],
    )
    .await;
    let seen: Value = serde_json::from_str(&page.body).unwrap();
    assert_eq!(seen["target"], "/ui/app/main.js?v=2");
    // A header the Connection header names is of this hop only.
    assert_eq!(seen["secret"], Value::Null);

    let posted = http_post(server.addr, "/api/v1/things", r#"{"a":1}"#).await;
    let seen: Value = serde_json::from_str(&posted.body).unwrap();
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["target"], "/ui/api/v1/things");
    assert_eq!(seen["body"], r#"{"a":1}"#);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn this_servers_own_endpoints_stay_its_own() {
    let webui = WebUi::start().await;
    let server = server_with(webui.url("")).await;
    for path in ["/devices", "/infra_config", "/healthz"] {
        let answer = http_get(server.addr, path, &[]).await;
        assert_eq!(answer.status, 200, "{path}");
        assert_eq!(answer.header("x-from"), None, "{path} was proxied");
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_websocket_is_tunnelled_and_holds_a_connection_place() {
    let webui = WebUi::start().await;
    let mut config = test_config();
    config.webui_url = Some(webui.url(""));
    config.max_connections = 1;
    let server = TestServer::start(config).await;

    let (mut ws, _) = tokio_tungstenite::connect_async(server.url("/live"))
        .await
        .unwrap();
    ws.send(Message::text("hello")).await.unwrap();
    let echoed = ws.next().await.unwrap().unwrap();
    assert_eq!(echoed.into_text().unwrap().as_str(), "hello");

    // The tunnel holds the one place.
    let second = tokio_tungstenite::connect_async(server.url("/live")).await;
    assert_eq!(refusal_status(&second.unwrap_err()), 503);

    ws.close(None).await.unwrap();
    drop(ws);
    common::eventually("the place is given back", || async {
        tokio_tungstenite::connect_async(server.url("/live"))
            .await
            .is_ok()
    })
    .await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_web_ui_that_does_not_answer_is_a_bad_gateway() {
    // A port nothing listens on.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let server = server_with(WebUiUrl::parse(&format!("http://{addr}/")).unwrap()).await;
    let answer = http_get(server.addr, "/index.html", &[]).await;
    assert_eq!(answer.status, 502, "{}", answer.body);
    assert_eq!(answer.header("x-cutf-proxy"), Some("op-webui"));
    assert!(
        answer.body.contains("the web UI at http://"),
        "{}",
        answer.body
    );
    server.stop().await.unwrap();
}
