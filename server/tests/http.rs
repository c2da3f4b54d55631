//! The HTTP side: endpoints, authentication, limits and refusals before the
//! upgrade, subprotocol, metrics, TLS.

#![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

mod common;

use common::{Peer, TestServer, http_get, refusal_status, test_config};
use signaling_server::ServerConfig;
use tokio::net::TcpSocket;

#[tokio::test]
async fn devices_lists_sorted_ids_and_healthz_answers() {
    let server = TestServer::with_defaults().await;
    let response = server.get("/devices").await;
    assert_eq!((response.status, response.body.as_str()), (200, "[]"));
    assert_eq!(
        response.header("content-type"),
        Some("application/json"),
        "{:?}",
        response.headers
    );
    let _b = server.registered_device_with_info("b").await;
    let _a = server.registered_device_with_info("a").await;
    let _c = server.registered_device_with_info("c\"q").await;
    assert_eq!(server.get("/devices").await.body, r#"["a","b","c\"q"]"#);
    let health = server.get("/healthz").await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn infra_config_is_the_config_message() {
    let server = TestServer::start(ServerConfig {
        ice_servers: vec![protocol::IceServer {
            urls: vec!["turn:127.0.0.1:3478".into()],
            username: Some("u".into()),
            credential: Some("secret".into()),
        }],
        ..test_config()
    })
    .await;
    let response = server.get("/infra_config").await;
    assert_eq!(response.status, 200);
    assert_eq!(
        response.body,
        r#"{"message_type":"config","ice_servers":[{"urls":["turn:127.0.0.1:3478"],"username":"u","credential":"secret"}]}"#
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn unknown_paths_are_404_also_for_upgrades() {
    let server = TestServer::with_defaults().await;
    let response = server.get("/nope").await;
    assert_eq!(response.status, 404);
    assert_eq!(response.body, r#"{"error":"Not found: /nope"}"#);
    let error = Peer::try_connect_with(&server.url("/register"), &[])
        .await
        .err()
        .unwrap();
    assert_eq!(refusal_status(&error), 404);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn plain_get_on_a_websocket_endpoint_is_426() {
    let server = TestServer::with_defaults().await;
    let response = server.get("/register_device").await;
    assert_eq!(response.status, 426);
    assert!(response.body.starts_with(r#"{"error":"Upgrade required"#));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn malformed_upgrades_are_refused_with_the_reason() {
    let server = TestServer::with_defaults().await;
    let upgrade = [("Connection", "Upgrade"), ("Upgrade", "websocket")];
    let wrong_version = [
        upgrade[0],
        upgrade[1],
        ("Sec-WebSocket-Version", "8"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let response = http_get(server.addr, "/connect_client", &wrong_version).await;
    assert_eq!(response.status, 426);
    assert_eq!(
        response.header("sec-websocket-version"),
        Some("13"),
        "{:?}",
        response.headers
    );
    assert_eq!(
        response.body,
        r#"{"error":"Unsupported websocket version: 13 is required"}"#
    );
    let no_key = [upgrade[0], upgrade[1], ("Sec-WebSocket-Version", "13")];
    let response = http_get(server.addr, "/connect_client", &no_key).await;
    assert_eq!(response.status, 400);
    assert_eq!(
        response.body,
        r#"{"error":"Bad request: missing Sec-WebSocket-Key"}"#
    );
    assert_eq!(
        server
            .metric(r#"signaling_connections_refused_total{reason="bad_upgrade"}"#)
            .await,
        2.0
    );
    // Refused upgrades leave no connection counted.
    assert_eq!(
        server
            .metric(r#"signaling_websocket_connections{endpoint="connect_client"}"#)
            .await,
        0.0
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn subprotocol_webrtc_operator_is_echoed() {
    let server = TestServer::with_defaults().await;
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            server.url("/connect_client"),
        )
        .unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "webrtc-operator".parse().unwrap());
    let (_ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(
        response.headers().get("sec-websocket-protocol").unwrap(),
        "webrtc-operator"
    );
    // None is required.
    let (_ws, response) = tokio_tungstenite::connect_async(server.url("/connect_client"))
        .await
        .unwrap();
    assert!(response.headers().get("sec-websocket-protocol").is_none());
    server.stop().await.unwrap();
}

fn with_tokens() -> ServerConfig {
    ServerConfig {
        device_token: Some("dev-secret".into()),
        client_token: Some("cli secret&=".into()),
        ..test_config()
    }
}

#[tokio::test]
async fn device_token_is_checked_before_the_upgrade() {
    let server = TestServer::start(with_tokens()).await;
    let url = server.url("/register_device");
    for (url, headers) in [
        (url.clone(), vec![]),
        (url.clone(), vec![("Authorization", "Bearer wrong")]),
        (url.clone(), vec![("Authorization", "Basic dev-secret")]),
        (format!("{url}?token=wrong"), vec![]),
        // The client's token does not open the device endpoint.
        (url.clone(), vec![("Authorization", "Bearer cli secret&=")]),
    ] {
        let error = Peer::try_connect_with(&url, &headers)
            .await
            .err()
            .expect("refused");
        assert_eq!(refusal_status(&error), 401, "{url} {headers:?}");
    }
    let mut by_header = Peer::try_connect_with(&url, &[("Authorization", "Bearer dev-secret")])
        .await
        .unwrap();
    by_header
        .send(r#"{"message_type":"register","device_id":"h"}"#)
        .await;
    assert_eq!(by_header.recv_json().await["message_type"], "config");
    let mut by_query = Peer::try_connect_with(&format!("{url}?token=dev-secret"), &[])
        .await
        .unwrap();
    by_query
        .send(r#"{"message_type":"register","device_id":"q"}"#)
        .await;
    assert_eq!(by_query.recv_json().await["message_type"], "config");
    assert_eq!(
        server
            .metric(r#"signaling_connections_refused_total{reason="unauthorized"}"#)
            .await,
        5.0
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn client_token_guards_the_client_endpoints() {
    let server = TestServer::start(with_tokens()).await;
    let url = server.url("/connect_client");
    let error = Peer::try_connect_with(&url, &[]).await.err().unwrap();
    assert_eq!(refusal_status(&error), 401);
    // The query form is URL-decoded.
    let mut client = Peer::try_connect_with(&format!("{url}?token=cli%20secret%26%3D"), &[])
        .await
        .unwrap();
    client
        .send(r#"{"message_type":"connect","device_id":"x"}"#)
        .await;
    assert_eq!(client.recv_json().await["message_type"], "config");

    for path in ["/devices", "/infra_config"] {
        let refused = server.get(path).await;
        assert_eq!(refused.status, 401, "{path}");
        assert_eq!(
            refused.body,
            r#"{"error":"Unauthorized: missing or invalid token"}"#
        );
        assert!(
            refused
                .header("www-authenticate")
                .is_some_and(|value| value.starts_with("Bearer")),
            "{:?}",
            refused.headers
        );
        let allowed = http_get(
            server.addr,
            path,
            &[("Authorization", "Bearer cli secret&=")],
        )
        .await;
        assert_eq!(allowed.status, 200, "{path}");
        let by_query = server.get(&format!("{path}?token=cli+secret%26%3D")).await;
        assert_eq!(by_query.status, 200, "{path}");
    }
    // Health and metrics carry no secrets and need no token.
    assert_eq!(server.get("/healthz").await.status, 200);
    assert_eq!(server.get("/metrics").await.status, 200);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn connection_limit_refuses_with_503_and_frees_places() {
    let server = TestServer::start(ServerConfig {
        max_connections: 2,
        ..test_config()
    })
    .await;
    let mut device = server.registered_device_with_info("full").await;
    // Just below the limit: the second connection is accepted.
    let client = server.connected_client("full").await;
    // At the limit: the third is refused before the upgrade.
    let error = Peer::try_connect_with(&server.url("/connect_client"), &[])
        .await
        .err()
        .unwrap();
    assert_eq!(refusal_status(&error), 503);
    assert_eq!(
        server
            .metric(r#"signaling_connections_refused_total{reason="connection_limit"}"#)
            .await,
        1.0
    );
    // The sessions already open are unaffected.
    device
        .send(r#"{"message_type":"forward","client_id":1,"payload":1}"#)
        .await;
    let mut client = client;
    assert_eq!(client.recv_json().await["payload"], 1);
    client.close().await;
    assert_eq!(
        device.recv_json().await["message_type"],
        "client_disconnected"
    );
    common::eventually("a place is free again", || async {
        Peer::try_connect_with(&server.url("/connect_client"), &[])
            .await
            .is_ok()
    })
    .await;
    server.stop().await.unwrap();
}

/// A websocket connection from a chosen loopback source address.
async fn connect_from(source: &str, url: &str, server: &TestServer) -> Result<Peer, u16> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    match tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(stream))
        .await
    {
        Ok((ws, _)) => Ok(Peer { ws }),
        Err(e) => Err(refusal_status(&e)),
    }
}

#[tokio::test]
async fn per_ip_limit_refuses_with_429() {
    let server = TestServer::start(ServerConfig {
        max_connections_per_ip: Some(2),
        ..test_config()
    })
    .await;
    let url = server.url("/register_device");
    let mut first = connect_from("127.0.0.1", &url, &server).await.unwrap();
    let _second = connect_from("127.0.0.1", &url, &server).await.unwrap();
    assert_eq!(
        connect_from("127.0.0.1", &url, &server).await.err(),
        Some(429)
    );
    // Another address has its own allowance.
    let _other = connect_from("127.0.0.2", &url, &server).await.unwrap();
    assert_eq!(
        server
            .metric(r#"signaling_connections_refused_total{reason="per_ip_limit"}"#)
            .await,
        1.0
    );
    // The connections already open are unaffected.
    first
        .send(r#"{"message_type":"register","device_id":"ip"}"#)
        .await;
    assert_eq!(first.recv_json().await["message_type"], "config");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn metrics_count_connections_relays_errors_and_bytes() {
    let server = TestServer::with_defaults().await;
    let mut device = server.registered_device_with_info("m").await;
    let mut client = server.connected_client("m").await;
    client
        .send(r#"{"message_type":"forward","payload":1}"#)
        .await;
    device.recv_json().await;
    device
        .send(r#"{"message_type":"forward","client_id":1,"payload":2}"#)
        .await;
    client.recv_json().await;
    device
        .send(r#"{"message_type":"forward","client_id":1,"payload":2}"#)
        .await;
    client.recv_json().await;
    client.send_and_recv_error("{}").await;

    let body = server.get("/metrics").await.body;
    for line in [
        "signaling_devices 1",
        "signaling_clients 1",
        r#"signaling_websocket_connections{endpoint="register_device"} 1"#,
        r#"signaling_websocket_connections{endpoint="connect_client"} 1"#,
        r#"signaling_messages_relayed_total{direction="client_to_device"} 1"#,
        r#"signaling_messages_relayed_total{direction="device_to_client"} 2"#,
        r#"signaling_errors_total{error="invalid_message"} 1"#,
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "missing {line:?} in\n{body}"
        );
    }
    assert!(server.metric("signaling_received_bytes_total").await > 100.0);
    assert!(server.metric("signaling_sent_bytes_total").await > 100.0);
    assert!(server.metric("process_resident_memory_bytes").await > 1e6);
    assert!(server.metric("process_open_fds").await >= 3.0);
    assert!(server.metric("process_threads").await >= 1.0);
    assert!(server.metric("process_start_time_seconds").await > 1.6e9);
    assert_eq!(
        server
            .metric("signaling_device_info_wait_seconds_count")
            .await,
        1.0
    );
    // Three relayed messages, each written in a batch of its own.
    assert_eq!(
        server.metric("signaling_outbox_wait_seconds_count").await,
        3.0
    );

    // The device leaves with a close frame without a code; the server
    // closes its client with 1001.
    device.close().await;
    client.recv_error().await;
    client.close().await;
    common::eventually("every gauge is back to zero", || async {
        let body = server.get("/metrics").await.body;
        ["signaling_devices 0", "signaling_clients 0"]
            .iter()
            .all(|l| body.lines().any(|line| line == *l))
            && body
                .lines()
                .filter(|l| l.starts_with("signaling_websocket_connections{"))
                .all(|l| l.ends_with(" 0"))
    })
    .await;
    common::eventually("both ends are counted", || async {
        server
            .metric(r#"signaling_session_duration_seconds_count{role="client"}"#)
            .await
            == 1.0
            && server
                .metric(r#"signaling_session_duration_seconds_count{role="device"}"#)
                .await
                == 1.0
    })
    .await;
    for (series, value) in [
        (
            r#"signaling_connections_closed_total{closed_by="peer",code="none"}"#,
            1.0,
        ),
        (
            r#"signaling_connections_closed_total{closed_by="server",code="1001"}"#,
            1.0,
        ),
        (
            r#"signaling_connections_closed_total{closed_by="server",code="1008"}"#,
            0.0,
        ),
    ] {
        assert_eq!(server.metric(series).await, value, "{series}");
    }
    server.stop().await.unwrap();
}

/// An alert can be written before its first event: every series whose
/// labels are known is there, at zero, on a fresh server; label values
/// are snake_case.
#[tokio::test]
async fn every_known_series_is_there_at_zero_from_the_start() {
    let server = TestServer::with_defaults().await;
    let body = server.get("/metrics").await.body;
    let mut expected: Vec<String> = [
        "signaling_devices 0",
        "signaling_clients 0",
        r#"signaling_websocket_connections{endpoint="register_device"} 0"#,
        r#"signaling_websocket_connections{endpoint="devices_adb"} 0"#,
        r#"signaling_messages_relayed_total{direction="client_to_device"} 0"#,
        r#"signaling_messages_relayed_total{direction="device_to_client"} 0"#,
        r#"signaling_connections_refused_total{reason="shutting_down"} 0"#,
        r#"signaling_connections_refused_total{reason="per_ip_limit"} 0"#,
        r#"signaling_connections_closed_total{closed_by="server",code="1008"} 0"#,
        r#"signaling_connections_closed_total{closed_by="peer",code="1000"} 0"#,
        r#"signaling_connections_closed_total{closed_by="network",code="none"} 0"#,
        r#"signaling_session_duration_seconds_count{role="device"} 0"#,
        r#"signaling_session_duration_seconds_count{role="control"} 0"#,
        r#"signaling_session_duration_seconds_bucket{le="+Inf",role="client"} 0"#,
        "signaling_device_info_wait_seconds_count 0",
        "signaling_outbox_wait_seconds_count 0",
        r#"signaling_cluster_sessions_closed_total{reason="redis_lost"} 0"#,
    ]
    .map(str::to_owned)
    .to_vec();
    for label in [
        "slow_consumer",
        "rate_limited",
        "device_id_taken",
        "invalid_utf8",
    ] {
        expected.push(format!(r#"signaling_errors_total{{error="{label}"}} 0"#));
    }
    for line in &expected {
        assert!(
            body.lines().any(|l| l == line),
            "missing {line:?} in\n{body}"
        );
    }
    assert!(
        body.lines()
            .any(|l| l.starts_with("signaling_build_info{") && l.ends_with(" 1")),
        "{body}"
    );
    // Every label value is snake_case (or a close code, or a bucket bound).
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some((_, labels)) = line.split_once('{') else {
            continue;
        };
        let labels = labels.rsplit_once('}').map_or(labels, |(labels, _)| labels);
        for pair in labels.split(',') {
            let (name, value) = pair.split_once('=').unwrap();
            let value = value.trim_matches('"');
            if matches!(name, "le" | "version" | "commit") {
                continue;
            }
            assert!(
                value
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{name}={value:?} in {line:?} is not snake_case"
            );
        }
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn tls_serves_wss_and_https() {
    let dir = std::env::temp_dir().join(format!("signaling-tls-test-{}", std::process::id()));
    let generated = signaling_server::tls::self_signed(&dir, "127.0.0.1".parse().unwrap()).unwrap();
    let server = TestServer::start(ServerConfig {
        tls: Some(generated.config.clone()),
        ..test_config()
    })
    .await;

    let connector = common::tls_connector(&generated.cert_path, rustls::DEFAULT_VERSIONS);
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(
        format!("wss://localhost:{}/register_device", server.addr.port()),
        tls,
    )
    .await
    .unwrap();
    use futures_util::{SinkExt, StreamExt};
    ws.send(r#"{"message_type":"register","device_id":"secure"}"#.into())
        .await
        .unwrap();
    let reply = ws.next().await.unwrap().unwrap();
    assert_eq!(
        common::without_offer(reply.to_text().unwrap()),
        r#"{"message_type":"config","ice_servers":[]}"#
    );

    // A plaintext client on the TLS port is told so in HTTP; the server
    // goes on.
    let plain = Peer::try_connect_with(&server.url("/register_device"), &[]).await;
    assert_eq!(refusal_status(&plain.err().unwrap()), 400);
    let answer = http_get(server.addr, "/healthz", &[]).await;
    assert_eq!(answer.status, 400);
    assert_eq!(
        answer.body,
        r#"{"error":"Bad request: this port serves TLS; use https:// or wss://"}"#
    );
    ws.send(r#"{"message_type":"forward","client_id":1,"payload":1}"#.into())
        .await
        .unwrap();
    let reply = ws.next().await.unwrap().unwrap();
    assert_eq!(reply.to_text().unwrap(), r#"{"error":"Unknown client: 1"}"#);
    let fingerprint_hex = generated.fingerprint.replace(':', "");
    assert_eq!(fingerprint_hex.len(), 64);
    server.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// TLS 1.2 and 1.3 are served; a client that offers only TLS 1.0 (a
/// hand-made ClientHello: rustls cannot speak it) gets a fatal alert and
/// the connection ends, while an open wss session goes on.
#[tokio::test]
async fn tls_is_1_2_or_newer() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = std::env::temp_dir().join(format!("signaling-tls-versions-{}", std::process::id()));
    let generated = signaling_server::tls::self_signed(&dir, "127.0.0.1".parse().unwrap()).unwrap();
    let server = TestServer::start(ServerConfig {
        tls: Some(generated.config.clone()),
        ..test_config()
    })
    .await;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let connector = common::tls_connector(&generated.cert_path, &[version]);
        let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let tls = connector.connect(name.clone(), tcp).await.unwrap();
        assert_eq!(tls.get_ref().1.protocol_version(), Some(version.version));
    }

    let connector = common::tls_connector(&generated.cert_path, rustls::DEFAULT_VERSIONS);
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let (mut open, _) = tokio_tungstenite::client_async(
        format!("wss://localhost:{}/register_device", server.addr.port()),
        tls,
    )
    .await
    .unwrap();

    // record: handshake, TLS 1.0, 57 bytes; ClientHello, 53 bytes: version
    // 3.1, a zero random, no session, one cipher suite
    // (TLS_RSA_WITH_AES_128_CBC_SHA), no compression, and the one extension
    // rustls needs to get as far as the version check,
    // signature_algorithms (ecdsa_secp256r1_sha256, rsa_pkcs1_sha256).
    let mut hello = vec![
        0x16, 0x03, 0x01, 0x00, 0x39, 0x01, 0x00, 0x00, 0x35, 0x03, 0x01,
    ];
    hello.extend([0; 32]);
    hello.extend([0x00, 0x00, 0x02, 0x00, 0x2f, 0x01, 0x00]);
    hello.extend([
        0x00, 0x0a, 0x00, 0x0d, 0x00, 0x06, 0x00, 0x04, 0x04, 0x03, 0x04, 0x01,
    ]);
    let mut old = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    old.write_all(&hello).await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(common::PROMPT, old.read_to_end(&mut reply))
        .await
        .expect("the server ends the connection")
        .unwrap();
    // An alert record (21): fatal (2), protocol_version (70).
    assert_eq!(reply.first(), Some(&0x15), "{reply:?}");
    assert_eq!(reply.get(5..7), Some(&[2, 70][..]), "{reply:?}");

    use futures_util::{SinkExt, StreamExt};
    open.send(r#"{"message_type":"register","device_id":"still"}"#.into())
        .await
        .unwrap();
    let config = open.next().await.unwrap().unwrap();
    assert!(config.to_text().unwrap().contains("config"));
    server.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// A TLS client on a plain port fails with an error, promptly; a plain
/// session already open there goes on.
#[tokio::test]
async fn tls_client_on_a_plain_port_fails_cleanly() {
    let server = TestServer::with_defaults().await;
    let mut device = server.registered_device_with_info("plain").await;
    let dir = std::env::temp_dir().join(format!("signaling-tls-plain-{}", std::process::id()));
    let generated = signaling_server::tls::self_signed(&dir, "127.0.0.1".parse().unwrap()).unwrap();
    let connector = common::tls_connector(&generated.cert_path, rustls::DEFAULT_VERSIONS);
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let attempt = tokio::time::timeout(common::PROMPT, connector.connect(name, tcp))
        .await
        .expect("the TLS attempt ends promptly");
    assert!(attempt.is_err());
    let mut client = server.connected_client("plain").await;
    client
        .send(r#"{"message_type":"forward","payload":7}"#)
        .await;
    assert_eq!(device.recv_json().await["payload"], 7);
    server.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// The built-in web client is served without a token (it carries no
/// secret; it asks for the token in its own requests).
#[tokio::test]
async fn the_web_client_is_built_in() {
    let server = TestServer::start(ServerConfig {
        client_token: Some("secret".into()),
        ..test_config()
    })
    .await;
    let page = server.get("/").await;
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .is_some_and(|value| value.contains("text/html")),
        "{:?}",
        page.headers
    );
    assert!(page.body.contains(r#"<script src="/web-client.js">"#));
    let script = server.get("/web-client.js").await;
    assert_eq!(script.status, 200);
    assert!(
        script
            .header("content-type")
            .is_some_and(|value| value.contains("text/javascript")),
        "{:?}",
        script.headers
    );
    assert!(script.body.contains("RTCPeerConnection"));
    assert_eq!(server.get("/other.js").await.status, 404);
    server.stop().await.unwrap();
}

/// A second listener with TLS (the Go operator's --https_port beside its
/// plain port) serves the same endpoints; both stop with the server.
#[tokio::test]
async fn a_tls_listener_beside_the_plain_one_serves_the_same_endpoints() {
    let dir = std::env::temp_dir().join(format!("signaling-https-port-{}", std::process::id()));
    let generated = signaling_server::tls::self_signed(&dir, "127.0.0.1".parse().unwrap()).unwrap();
    let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain_addr = plain.local_addr().unwrap();
    let secure = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let secure_addr = secure.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = signaling_server::Server::bind(plain, test_config())
        .unwrap()
        .with_tls_listener(secure, generated.config.clone());
    let task = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    let over_plain = support::http::get(plain_addr, "/healthz").await.unwrap();
    assert_eq!(over_plain.body, "ok\n");
    let connector = common::tls_connector(&generated.cert_path, &[&rustls::version::TLS13]);
    let tcp = tokio::net::TcpStream::connect(secure_addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let over_tls = support::http::send(tls, "localhost", support::http::Request::get("/healthz"))
        .await
        .unwrap();
    assert_eq!(over_tls.body, "ok\n");
    // The TLS port speaks only TLS, and says so to plain HTTP.
    let plain_on_tls = support::http::get(secure_addr, "/healthz").await.unwrap();
    assert_eq!(plain_on_tls.status, 400);
    assert!(plain_on_tls.body.contains("this port serves TLS"));
    let _ = stop.send(());
    task.await.unwrap().unwrap();
    assert!(
        tokio::net::TcpStream::connect(secure_addr).await.is_err(),
        "closed at stop"
    );
    let _ = std::fs::remove_dir_all(dir);
}
