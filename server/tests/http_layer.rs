//! The HTTP layer under hostile peers (PROTOCOL.md, "Limits"): bodies that
//! stall or trickle, declared lengths past the limit, bogus upgrades,
//! duplicate keys, and connections that never upgrade, each bounded.

#![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

mod common;

use std::time::Duration;

use common::{PROMPT, TestServer, test_config};
use signaling_server::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Writes `request` as it is and reads what comes back until the server
/// closes (or `PROMPT` passes).
async fn exchange(server: &TestServer, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_to_close(&mut stream, PROMPT).await
}

/// What the server sends until it closes, or `limit` passes.
async fn read_to_close(stream: &mut TcpStream, limit: Duration) -> String {
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(limit, stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// Longer than any deadline here, on a paused clock.
const DRIVEN: Duration = Duration::from_secs(60);

/// Writes `request` and reads the answer's head and body, on a
/// connection the server may keep open.
async fn ask(server: &TestServer, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    let read_all = async {
        loop {
            let n = stream.read(&mut buffer).await.unwrap();
            answer.extend_from_slice(&buffer[..n]);
            let text = String::from_utf8_lossy(&answer);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|line| {
                        line.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().to_owned())
                    })
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0);
                if body.len() >= length || n == 0 {
                    return;
                }
            } else if n == 0 {
                return;
            }
        }
    };
    tokio::time::timeout(PROMPT, read_all)
        .await
        .expect("an answer");
    String::from_utf8_lossy(&answer).into_owned()
}

fn status_of(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"))
}

fn upgrade_request(path: &str, version: &str, key: &str) -> String {
    format!(
        "GET {path} {version}\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
    )
}

/// A body that never comes, or comes a byte a second, is answered 408 at
/// the deadline (`--handshake-timeout`, 10 s), and the connection closed.
/// Driven time: the clock jumps to each next timer.
#[tokio::test(start_paused = true)]
async fn a_body_that_stalls_or_trickles_is_cut_at_the_deadline() {
    let server = TestServer::start(test_config()).await;
    let head = "POST /forward HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n";

    let started = tokio::time::Instant::now();
    let mut stalled = TcpStream::connect(server.addr).await.unwrap();
    stalled
        .write_all(format!("{head}{{\"connection_id\"").as_bytes())
        .await
        .unwrap();
    let answer = read_to_close(&mut stalled, DRIVEN).await;
    assert_eq!(status_of(&answer), 408, "{answer}");
    assert!(
        answer.contains("Request timeout: the body did not arrive within 10s"),
        "{answer}"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(10) && waited < Duration::from_secs(11),
        "answered after {waited:?}"
    );

    let started = tokio::time::Instant::now();
    let mut trickling = TcpStream::connect(server.addr).await.unwrap();
    trickling.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 1024];
    loop {
        tokio::select! {
            read = trickling.read(&mut buffer) => match read.unwrap() {
                0 => break,
                n => answer.extend_from_slice(&buffer[..n]),
            },
            () = tokio::time::sleep(Duration::from_secs(1)) => {
                // A byte a second: the whole body would take 100 s.
                let _ = trickling.write_all(b" ").await;
            }
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(status_of(&answer), 408, "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(11),
        "{:?}",
        started.elapsed()
    );
    server.stop().await.unwrap();
}

/// A connection that sends nothing at all is closed at the same deadline.
#[tokio::test(start_paused = true)]
async fn a_connection_that_sends_nothing_is_closed_at_the_deadline() {
    let server = TestServer::start(test_config()).await;
    let started = tokio::time::Instant::now();
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let answer = read_to_close(&mut silent, DRIVEN).await;
    assert!(answer.is_empty() || status_of(&answer) == 408, "{answer}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(10) && waited < Duration::from_secs(11),
        "closed after {waited:?}"
    );
    server.stop().await.unwrap();
}

/// A declared length past the limit is refused before the body is read:
/// 413 at once, though the body never comes.
#[tokio::test]
async fn a_declared_length_past_the_limit_gets_413_at_once() {
    let server = TestServer::start(test_config()).await;
    for path in [
        "/connect",
        "/forward",
        "/poll_messages",
        "/polled_connections",
    ] {
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000000\r\n\r\n{{}}"
        );
        let answer = exchange(&server, request.as_bytes()).await;
        assert_eq!(status_of(&answer), 413, "{path}: {answer}");
        assert!(
            answer.contains("Message too big: the limit is 65536 bytes"),
            "{answer}"
        );
    }
    server.stop().await.unwrap();
}

/// Upgrades RFC 6455 and RFC 9110 do not allow are refused: a key that is
/// not 16 bytes in base64 (short, not base64, 64 KiB) gets 400; an
/// upgrade in HTTP/1.0 is not one (426). A good key still gets 101.
#[tokio::test]
async fn bogus_upgrades_are_refused() {
    let server = TestServer::start(test_config()).await;
    let big_key = "A".repeat(65_536);
    for key in [
        "abc",
        "########################",
        "AAAAAAAAAAAAAAAAAAAAAAA=",
        &big_key,
    ] {
        let answer = ask(
            &server,
            upgrade_request("/register_device", "HTTP/1.1", key).as_bytes(),
        )
        .await;
        assert_eq!(
            status_of(&answer),
            400,
            "key {:?}: {answer}",
            &key[..key.len().min(30)]
        );
        assert!(
            answer.contains("Sec-WebSocket-Key must be 16 bytes in base64"),
            "{answer}"
        );
    }
    let good = "dGhlIHNhbXBsZSBub25jZQ==";
    let answer = ask(
        &server,
        upgrade_request("/connect_client", "HTTP/1.0", good).as_bytes(),
    )
    .await;
    assert_eq!(status_of(&answer), 426, "{answer}");
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(upgrade_request("/connect_client", "HTTP/1.1", good).as_bytes())
        .await
        .unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
    server.stop().await.unwrap();
}

/// A key given twice is an invalid message on every path, never the last
/// value winning: the polling bodies as the websocket frames.
#[tokio::test]
async fn a_key_given_twice_is_an_invalid_message_on_every_path() {
    let server = TestServer::start(test_config()).await;
    let _device = server.registered_device_with_info("cvd-twice").await;
    let post = |path: &'static str, body: String| {
        let addr = server.addr;
        async move { common::http_post(addr, path, &body).await }
    };
    let reply = post(
        "/connect",
        r#"{"device_id":"cvd-twice","device_id":"cvd-other"}"#.into(),
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(
        reply
            .body
            .contains("Invalid message: duplicate field `device_id`"),
        "{}",
        reply.body
    );
    let reply = post("/connect", r#"{"device_id":"cvd-twice"}"#.into()).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let id: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    let id = id["connection_id"].as_str().unwrap().to_owned();
    let forward =
        format!(r#"{{"connection_id":"{id}","connection_id":"someone-else","payload":1}}"#);
    let reply = post("/forward", forward).await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(
        reply.body.contains("duplicate field `connection_id`"),
        "{}",
        reply.body
    );
    let poll = format!(r#"{{"connection_id":"{id}","connection_id":"{id}"}}"#);
    let reply = post("/poll_messages", poll).await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    let reply = post(
        "/polled_connections",
        r#"{"device_id":"cvd-twice","device_id":"cvd-twice"}"#.into(),
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(
        reply.body.contains("duplicate field `device_id`"),
        "{}",
        reply.body
    );
    // The websocket: the same input is an invalid message there too.
    let mut client = common::Peer::connect(&format!("ws://{}/connect_client", server.addr)).await;
    client
        .send(r#"{"message_type":"connect","device_id":"cvd-twice","device_id":"cvd-other"}"#)
        .await;
    let error = client.recv_text().await;
    assert!(
        error.contains("Invalid message: duplicate field `device_id`"),
        "{error}"
    );
    server.stop().await.unwrap();
}

/// Every connection holds a place until it upgrades or ends: past
/// `--max-http-connections`, a new one is answered 503 and closed; a
/// websocket frees its HTTP place when it upgrades.
#[tokio::test]
async fn every_connection_counts_until_it_upgrades() {
    let server = TestServer::start(ServerConfig {
        max_http_connections: 2,
        ..test_config()
    })
    .await;
    // Two upgraded websockets hold no HTTP place.
    let _device = server.registered_device_with_info("cvd-limit").await;
    let _client = server.connected_client("cvd-limit").await;
    let first = TcpStream::connect(server.addr).await.unwrap();
    let _second = TcpStream::connect(server.addr).await.unwrap();
    let answer = exchange(&server, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert_eq!(status_of(&answer), 503, "{answer}");
    assert!(
        answer.contains("Server full: connection limit reached"),
        "{answer}"
    );
    drop(first);
    common::eventually("a place is free again", || async {
        let answer = exchange(
            &server,
            b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
        .await;
        answer.starts_with("HTTP/1.1 200")
    })
    .await;
    server.stop().await.unwrap();
}

/// A browser page of a foreign origin cannot drive a user's browser into
/// the server (PROTOCOL.md, "Origins"): 403 before the upgrade and on the
/// polling endpoints, counted; the server's own pages, requests without
/// an Origin, and `--allowed-origin` ones pass.
#[tokio::test]
async fn a_foreign_origin_is_refused_before_the_upgrade_and_on_polling() {
    let server = TestServer::start(test_config()).await;
    let _device = server.registered_device_with_info("cvd-origin").await;
    let url = format!("ws://{}/connect_client", server.addr);
    let foreign = [("Origin", "http://evil.example")];
    let refused = common::Peer::try_connect_with(&url, &foreign)
        .await
        .err()
        .unwrap();
    assert_eq!(common::refusal_status(&refused), 403);
    let own = format!("http://{}", server.addr);
    assert!(
        common::Peer::try_connect_with(&url, &[("Origin", &own)])
            .await
            .is_ok()
    );
    assert!(common::Peer::try_connect_with(&url, &[]).await.is_ok());
    let device_url = format!("ws://{}/register_device", server.addr);
    let refused = common::Peer::try_connect_with(&device_url, &[("Origin", "null")])
        .await
        .err()
        .unwrap();
    assert_eq!(common::refusal_status(&refused), 403);
    // Polling: a foreign page's fetch needs no preflight to POST.
    let request = support::http::Request::post_json("/connect", r#"{"device_id":"cvd-origin"}"#)
        .header("Origin", "http://evil.example");
    let reply = support::http::request(server.addr, request).await.unwrap();
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert!(
        reply
            .body
            .contains("Forbidden: a page of this origin may not use this server"),
        "{}",
        reply.body
    );
    let reply = common::http_get(
        server.addr,
        "/polled_connections/0123/messages",
        &[("Origin", "http://evil.example")],
    )
    .await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert_eq!(
        server
            .metric(r#"signaling_connections_refused_total{reason="origin"}"#)
            .await,
        4.0
    );
    server.stop().await.unwrap();

    let listed = TestServer::start(ServerConfig {
        allowed_origins: signaling_server::origin::AllowedOrigins::parse(&[
            "https://app.example".into()
        ])
        .unwrap(),
        ..test_config()
    })
    .await;
    let url = format!("ws://{}/connect_client", listed.addr);
    assert!(
        common::Peer::try_connect_with(&url, &[("Origin", "https://app.example")])
            .await
            .is_ok()
    );
    let refused = common::Peer::try_connect_with(&url, &foreign)
        .await
        .err()
        .unwrap();
    assert_eq!(common::refusal_status(&refused), 403);
    listed.stop().await.unwrap();

    let any = TestServer::start(ServerConfig {
        allowed_origins: signaling_server::origin::AllowedOrigins::parse(&["*".into()]).unwrap(),
        ..test_config()
    })
    .await;
    let url = format!("ws://{}/connect_client", any.addr);
    assert!(common::Peer::try_connect_with(&url, &foreign).await.is_ok());
    any.stop().await.unwrap();
}

/// Behind a trusted proxy each client is counted against the per-address
/// limit by the address its request names (PROTOCOL.md, "Behind a
/// proxy"); from a peer that is no trusted proxy, the same headers change
/// nothing.
#[tokio::test]
async fn a_trusted_proxy_names_each_client_and_others_cannot_spoof() {
    let proxies = |list: &[&str]| {
        signaling_server::proxy::TrustedProxies::parse(
            &list.iter().map(|p| (*p).to_owned()).collect::<Vec<_>>(),
        )
        .unwrap()
    };
    let behind = TestServer::start(ServerConfig {
        trusted_proxies: proxies(&["127.0.0.1"]),
        max_connections_per_ip: Some(1),
        ..test_config()
    })
    .await;
    let url = format!("ws://{}/connect_client", behind.addr);
    let _first = common::Peer::try_connect_with(&url, &[("X-Forwarded-For", "203.0.113.1")])
        .await
        .unwrap();
    let _second =
        common::Peer::try_connect_with(&url, &[("X-Forwarded-For", "6.6.6.6, 203.0.113.2")])
            .await
            .unwrap();
    let again = common::Peer::try_connect_with(&url, &[("Forwarded", "for=203.0.113.1")])
        .await
        .err()
        .unwrap();
    assert_eq!(common::refusal_status(&again), 429);
    behind.stop().await.unwrap();

    let exposed = TestServer::start(ServerConfig {
        trusted_proxies: proxies(&["10.0.0.0/8"]),
        max_connections_per_ip: Some(1),
        ..test_config()
    })
    .await;
    let url = format!("ws://{}/connect_client", exposed.addr);
    let _first = common::Peer::try_connect_with(&url, &[("X-Forwarded-For", "203.0.113.1")])
        .await
        .unwrap();
    let spoofed = common::Peer::try_connect_with(&url, &[("X-Forwarded-For", "203.0.113.2")])
        .await
        .err()
        .unwrap();
    assert_eq!(common::refusal_status(&spoofed), 429);
    exposed.stop().await.unwrap();
}

/// A refused upgrade ends its connection at once (`Connection: close`):
/// it does not hold a place until the head timeout. Driven time: a
/// connection left open would close only at the 10 s head timeout.
#[tokio::test(start_paused = true)]
async fn a_refused_upgrade_closes_its_connection() {
    let server = TestServer::start(test_config()).await;
    for request in [
        upgrade_request("/register_device", "HTTP/1.1", "abc"),
        upgrade_request("/connect_client", "HTTP/1.0", "dGhlIHNhbXBsZSBub25jZQ=="),
        "GET /connect_client HTTP/1.1\r\nHost: localhost\r\n\r\n".to_owned(),
    ] {
        let started = tokio::time::Instant::now();
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let answer = read_to_close(&mut stream, DRIVEN).await;
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{answer}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "held {:?}: {answer}",
            started.elapsed()
        );
    }
    server.stop().await.unwrap();
}
