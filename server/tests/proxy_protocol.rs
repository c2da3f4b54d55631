//! `--proxy-protocol` (PROTOCOL.md, "Behind a proxy"): the PROXY protocol
//! header of HAProxy and AWS NLB, versions 1 and 2, before HTTP and TLS;
//! believed from trusted proxies only; malformed, missing or stalled
//! headers end their connection.

#![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{PROMPT, TestServer, test_config};
use signaling_server::ServerConfig;
use signaling_server::proxy::TrustedProxies;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config(trusted: &str) -> ServerConfig {
    ServerConfig {
        proxy_protocol: true,
        trusted_proxies: TrustedProxies::parse(&[trusted.to_owned()]).unwrap(),
        max_connections_per_ip: Some(1),
        ..test_config()
    }
}

fn v1(client: &str) -> Vec<u8> {
    let client: SocketAddr = client.parse().unwrap();
    let family = if client.is_ipv4() { "TCP4" } else { "TCP6" };
    let local = if client.is_ipv4() { "10.0.0.1" } else { "::1" };
    format!(
        "PROXY {family} {} {local} {} 443\r\n",
        client.ip(),
        client.port()
    )
    .into_bytes()
}

/// A version 2 header for an IPv4 client, with a TLV after the addresses.
fn v2(client: &str) -> Vec<u8> {
    let client: SocketAddr = client.parse().unwrap();
    let std::net::IpAddr::V4(ip) = client.ip() else {
        panic!("IPv4 only here")
    };
    let mut block = ip.octets().to_vec();
    block.extend_from_slice(&[10, 0, 0, 1]);
    block.extend_from_slice(&client.port().to_be_bytes());
    block.extend_from_slice(&443u16.to_be_bytes());
    block.extend_from_slice(&[0x04, 0x00, 0x02, 0xab, 0xcd]);
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend_from_slice(&[0x21, 0x11]);
    header.extend_from_slice(&u16::try_from(block.len()).unwrap().to_be_bytes());
    header.extend_from_slice(&block);
    header
}

/// A TCP connection to the server that has sent `header`.
async fn after_header(server: &TestServer, header: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(header).await.unwrap();
    stream
}

/// A device websocket opened after `header`; the error is the HTTP
/// status of a refusal.
async fn device_after(
    server: &TestServer,
    header: &[u8],
) -> Result<tokio_tungstenite::WebSocketStream<TcpStream>, u16> {
    let stream = after_header(server, header).await;
    let url = format!("ws://{}/register_device", server.addr);
    match tokio_tungstenite::client_async(url, stream).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(e) => panic!("{e}"),
    }
}

/// What the server answers `GET path` after `header`, until it closes.
async fn get_after(server: &TestServer, header: &[u8], path: &str) -> String {
    let mut stream = after_header(server, header).await;
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    read_to_close(&mut stream, PROMPT).await
}

async fn read_to_close(stream: &mut TcpStream, limit: Duration) -> String {
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(limit, stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

async fn refused_for_headers(server: &TestServer) -> f64 {
    let answer = get_after(server, &v1("198.51.100.200:1"), "/metrics").await;
    support::prometheus::sample_or_zero(
        &answer,
        r#"signaling_connections_refused_total{reason="proxy_header"}"#,
    )
}

#[tokio::test]
async fn headers_of_both_versions_from_a_trusted_proxy_name_the_client() {
    let server = TestServer::start(config("127.0.0.1")).await;
    // One connection per client address (--max-connections-per-ip 1):
    // two clients behind the one proxy each get theirs.
    let _first = device_after(&server, &v1("203.0.113.1:4000"))
        .await
        .unwrap();
    let _second = device_after(&server, &v2("203.0.113.2:4000"))
        .await
        .unwrap();
    let _third = device_after(&server, &v1("[2001:db8::3]:4000"))
        .await
        .unwrap();
    // The same client again is over its limit, whichever version says so.
    assert_eq!(
        device_after(&server, &v2("203.0.113.1:5000")).await.err(),
        Some(429)
    );
    // HTTP after the header; a LOCAL header (a health check) is the
    // proxy's own connection.
    assert!(
        get_after(&server, &v1("203.0.113.9:1"), "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    assert!(
        get_after(&server, &local, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_header_from_a_peer_that_is_no_trusted_proxy_names_no_one() {
    // Loopback is not among the trusted proxies: its headers are read
    // and ignored, so both connections are 127.0.0.1's.
    let server = TestServer::start(config("10.0.0.0/8")).await;
    let _first = device_after(&server, &v1("203.0.113.1:4000"))
        .await
        .unwrap();
    assert_eq!(
        device_after(&server, &v1("203.0.113.2:4000")).await.err(),
        Some(429)
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn connections_without_a_valid_header_are_closed_unanswered() {
    let server = TestServer::start(config("127.0.0.1")).await;
    let mut huge = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
    let mut wrong_version = v2("203.0.113.1:1");
    wrong_version[12] = 0x11;
    let bad: Vec<Vec<u8>> = vec![
        // No header at all: plain HTTP, and a TLS ClientHello's start.
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
        b"PROXY TCP4 203.0.113.1 10.0.0.1 99999 443\r\nGET / HTTP/1.1\r\n\r\n".to_vec(),
        b"PROXY TCP4 not-an-address 10.0.0.1 1 443\r\nGET / HTTP/1.1\r\n\r\n".to_vec(),
        [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat(),
        wrong_version,
        huge,
    ];
    for bytes in &bad {
        let mut stream = after_header(&server, bytes).await;
        let answer = read_to_close(&mut stream, PROMPT).await;
        assert_eq!(answer, "", "{:?}", String::from_utf8_lossy(bytes));
    }
    assert_eq!(refused_for_headers(&server).await, bad.len() as f64);
    server.stop().await.unwrap();
}

// The clock is paused: the header's deadline is virtual time.
#[tokio::test(start_paused = true)]
async fn a_header_that_never_finishes_is_cut_at_the_handshake_timeout() {
    let server = TestServer::start(ServerConfig {
        handshake_timeout: Duration::from_secs(10),
        ..config("127.0.0.1")
    })
    .await;
    let started = tokio::time::Instant::now();
    let mut stream = after_header(&server, b"PROXY TCP4 203.0.1").await;
    let answer = read_to_close(&mut stream, Duration::from_secs(60)).await;
    assert_eq!(answer, "");
    let waited = started.elapsed();
    assert!(
        (Duration::from_secs(10)..Duration::from_secs(11)).contains(&waited),
        "{waited:?}"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn tls_comes_after_the_header() {
    let dir = common::temp_dir("proxy-protocol-tls");
    let generated = signaling_server::tls::self_signed(&dir, "127.0.0.1".parse().unwrap()).unwrap();
    let server = TestServer::start(ServerConfig {
        tls: Some(generated.config.clone()),
        ..config("127.0.0.1")
    })
    .await;
    let connector = common::tls_connector(&generated.cert_path, rustls::DEFAULT_VERSIONS);
    for header in [v1("203.0.113.1:4000"), v2("203.0.113.2:4000")] {
        let tcp = after_header(&server, &header).await;
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = connector.connect(name, tcp).await.unwrap();
        let (mut ws, _) = tokio_tungstenite::client_async(
            format!("wss://localhost:{}/register_device", server.addr.port()),
            tls,
        )
        .await
        .unwrap();
        use futures_util::{SinkExt, StreamExt};
        ws.send(r#"{"message_type":"register","device_id":"behind-nlb"}"#.into())
            .await
            .unwrap();
        let reply = ws.next().await.unwrap().unwrap();
        assert!(reply.to_text().unwrap().contains("config"), "{reply}");
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
    }
    server.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
