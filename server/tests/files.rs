//! The device's page, `GET /devices/{id}/files/{path}` (PROTOCOL.md, "The
//! device's page"): proxied to the web server the device named with
//! `device_port`, on loopback, or served from --assets-dir; and the bad
//! input it refuses.

#![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

mod common;

use std::sync::{Arc, Mutex};

use common::{Peer, TestServer, http_get, temp_dir, test_config};
use signaling_server::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A device's web server on 127.0.0.1: answers `/client.html` with a page,
/// anything else 404, and keeps the request heads it read.
struct DeviceWeb {
    port: u16,
    heads: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl DeviceWeb {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut head = Vec::new();
                let mut buffer = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buffer[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let found = head.starts_with("GET /client.html");
                seen.lock().unwrap().push(head);
                let (status, body) = if found {
                    ("200 OK", "<title>device page</title>")
                } else {
                    ("404 Not Found", "no such file")
                };
                let reply = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(reply.as_bytes()).await;
                let _ = stream.shutdown().await;
            }
        });
        Self { port, heads, task }
    }

    fn last_head(&self) -> String {
        self.heads
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for DeviceWeb {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A device registered under `id` with `device_port` (or none).
async fn device_with_port(server: &TestServer, id: &str, port: Option<u16>) -> Peer {
    let mut device = server.device().await;
    let port = port.map_or_else(String::new, |port| format!(r#","device_port":{port}"#));
    device
        .send(&format!(
            r#"{{"message_type":"register","device_id":"{id}","device_info":{{}}{port}}}"#
        ))
        .await;
    assert_eq!(device.recv_json().await["message_type"], "config");
    device
}

#[tokio::test]
async fn the_device_page_is_proxied_to_its_port_without_credentials() {
    let web = DeviceWeb::start().await;
    let server = TestServer::with_defaults().await;
    let _device = device_with_port(&server, "web", Some(web.port)).await;
    let page = http_get(
        server.addr,
        "/devices/web/files/client.html?deviceId=web",
        &[
            ("Accept", "text/html"),
            ("Connection", "keep-alive, foo"),
            ("Foo", "a header of this hop only"),
            ("Cookie", "session=secret"),
            ("Authorization", "Bearer secret"),
            ("X-Forwarded-For", "10.0.0.1"),
        ],
    )
    .await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(page.body, "<title>device page</title>");
    assert_eq!(page.header("content-type"), Some("text/html"));
    let head = web.last_head().to_ascii_lowercase();
    assert!(
        head.starts_with("get /client.html?deviceid=web http/1.1\r\n"),
        "{head}"
    );
    assert!(
        head.contains(&format!("host: 127.0.0.1:{}\r\n", web.port)),
        "{head}"
    );
    assert!(head.contains("accept: text/html\r\n"), "{head}");
    for stripped in [
        "cookie",
        "authorization",
        "x-forwarded-for",
        "foo:",
        "keep-alive",
    ] {
        assert!(!head.contains(stripped), "{stripped} passed on: {head}");
    }
    // The index too: asked for as `/` (this device has no page there).
    let index = server.get("/devices/web/files/").await;
    assert_eq!((index.status, index.body.as_str()), (404, "no such file"));
    let head = web.last_head().to_ascii_lowercase();
    assert!(head.starts_with("get / http/1.1\r\n"), "{head}");
    // The device's own statuses come back as they are.
    let missing = server.get("/devices/web/files/nothing.js").await;
    assert_eq!(
        (missing.status, missing.body.as_str()),
        (404, "no such file")
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn bad_paths_ids_and_methods_are_refused() {
    let web = DeviceWeb::start().await;
    let server = TestServer::with_defaults().await;
    let _device = device_with_port(&server, "web", Some(web.port)).await;
    for path in [
        "/devices/web/files/../secret",
        "/devices/web/files/%2e%2e/secret",
        "/devices/web/files/js/%2E%2e/x",
        "/devices/web/files/./client.html",
    ] {
        let reply = server.get(path).await;
        assert_eq!(reply.status, 400, "{path}: {}", reply.body);
        assert!(
            reply.body.contains("Invalid path"),
            "{path}: {}",
            reply.body
        );
    }
    assert!(
        web.heads.lock().unwrap().is_empty(),
        "nothing reached the device"
    );
    for path in [
        "/devices/nobody/files/client.html",
        "/devices/we%2Fb/files/client.html",
    ] {
        let reply = server.get(path).await;
        assert_eq!(reply.status, 404, "{path}");
        assert!(
            reply.body.contains("Device not found"),
            "{path}: {}",
            reply.body
        );
    }
    let post = common::http_post(server.addr, "/devices/web/files/client.html", "{}").await;
    assert_eq!(post.status, 405);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_device_without_a_port_is_served_from_the_assets_dir_or_not_at_all() {
    let server = TestServer::with_defaults().await;
    let _bare = device_with_port(&server, "bare", None).await;
    let reply = server.get("/devices/bare/files/client.html").await;
    assert_eq!(reply.status, 404);
    assert!(reply.body.contains("has no web server"), "{}", reply.body);
    server.stop().await.unwrap();

    let dir = temp_dir("device-assets");
    std::fs::write(dir.join("client.html"), "<title>from the assets</title>").unwrap();
    let server = TestServer::start(ServerConfig {
        assets_dir: Some(dir.clone()),
        ..test_config()
    })
    .await;
    let _bare = device_with_port(&server, "bare", None).await;
    let reply = server.get("/devices/bare/files/client.html").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "<title>from the assets</title>")
    );
    server.stop().await.unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_device_web_server_that_is_not_there_is_a_bad_gateway() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = TestServer::with_defaults().await;
    let _device = device_with_port(&server, "gone", Some(port)).await;
    let reply = server.get("/devices/gone/files/client.html").await;
    assert_eq!(reply.status, 502, "{}", reply.body);
    assert_eq!(reply.header("x-cutf-proxy"), Some("op-device"));
    assert!(
        reply.body.contains(&format!("127.0.0.1:{port}")),
        "{}",
        reply.body
    );
    server.stop().await.unwrap();
}

/// The page's connector is this server's own, for every device and without
/// a token; with a client token, a page opened with ?token= gets a cookie
/// for its device's files, so its scripts load too.
#[tokio::test]
async fn the_connector_is_ours_and_a_page_token_reaches_its_scripts() {
    let web = DeviceWeb::start().await;
    let server = TestServer::start(ServerConfig {
        client_token: Some("page secret".into()),
        ..test_config()
    })
    .await;
    let _device = device_with_port(&server, "web", Some(web.port)).await;
    let connector = server
        .get("/devices/web/files/js/server_connector.js")
        .await;
    assert_eq!(connector.status, 200);
    assert!(
        connector
            .body
            .contains("export async function createConnector()")
    );
    assert!(
        connector
            .header("content-type")
            .is_some_and(|value| value.starts_with("text/javascript"))
    );
    assert!(
        web.heads.lock().unwrap().is_empty(),
        "not asked of the device"
    );

    assert_eq!(
        server.get("/devices/web/files/client.html").await.status,
        401
    );
    let page = server
        .get("/devices/web/files/client.html?token=page%20secret")
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    let cookie = page.header("set-cookie").unwrap().to_owned();
    assert!(
        cookie.starts_with(
            "signaling_token=page+secret; Path=/devices/web/files/; HttpOnly; SameSite=Strict"
        ),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_owned();
    let script = http_get(
        server.addr,
        "/devices/web/files/client.html",
        &[("Cookie", &pair)],
    )
    .await;
    assert_eq!(script.status, 200);
    // The cookie is this server's: the device does not see it.
    assert!(!web.last_head().to_ascii_lowercase().contains("cookie"));
    let wrong = http_get(
        server.addr,
        "/devices/web/files/client.html",
        &[("Cookie", "signaling_token=guess")],
    )
    .await;
    assert_eq!(wrong.status, 401);
    server.stop().await.unwrap();
}
