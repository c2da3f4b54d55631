//! PROTOCOL.md's rows D1–D17 ("Every decision, row by row",
//! `/register_device`), each against the real server, run twice: with the
//! device on a real websocket (`/register_device`) and on the device socket
//! (PROTOCOL.md, "The device socket"). Where the two differ (close frames,
//! binary frames), `DevicePeer::expect_end` says how. The same timeouts
//! with driven time: `server/src/core/tests.rs`.

#![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

mod common;

use std::time::Duration;

use common::{DevicePeer, DeviceTransport, TestServer, test_config};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

async fn d01_register_gets_config(transport: DeviceTransport) {
    let server = TestServer::start_for(
        transport,
        signaling_server::ServerConfig {
            ice_servers: vec![protocol::IceServer {
                urls: vec!["stun:127.0.0.1:3478".into()],
                username: None,
                credential: None,
            }],
            ..test_config()
        },
    )
    .await;
    let mut device = server.device_peer().await;
    device
        .send(r#"{"message_type":"register","device_id":"d1","device_info":{"x":1}}"#)
        .await;
    assert_eq!(
        common::without_offer(&device.recv_text().await),
        r#"{"message_type":"config","ice_servers":[{"urls":["stun:127.0.0.1:3478"]}]}"#
    );
    assert_eq!(server.get("/devices").await.body, r#"["d1"]"#);
    server.stop().await.unwrap();
}

async fn d02_invalid_device_id_closes_1008(transport: DeviceTransport) {
    let server = TestServer::start_for(transport, test_config()).await;
    let too_long = format!(
        r#"{{"message_type":"register","device_id":"{}"}}"#,
        "d".repeat(257)
    );
    let cases = [
        (
            r#"{"message_type":"register"}"#.to_owned(),
            "Invalid device_id: missing device_id",
        ),
        (
            r#"{"message_type":"register","device_id":7}"#.to_owned(),
            "Invalid device_id: device_id must be a string",
        ),
        (
            r#"{"message_type":"register","device_id":""}"#.to_owned(),
            "Invalid device_id: device_id must not be empty",
        ),
        (
            too_long,
            "Invalid device_id: device_id is 257 bytes, at most 256 allowed",
        ),
        (
            r#"{"message_type":"register","device_id":"a\tb"}"#.to_owned(),
            "Invalid device_id: device_id must not contain control characters",
        ),
    ];
    for (text, want) in cases {
        let mut device = server.device_peer().await;
        assert_eq!(device.send_and_recv_error(&text).await, want);
        device.expect_end(CloseCode::Policy, want).await;
    }
    // Just inside the bound: 256 bytes is accepted.
    let id = "d".repeat(256);
    let _device = server.registered_device_peer(&id).await;
    assert_eq!(server.get("/devices").await.body, format!(r#"["{id}"]"#));
    server.stop().await.unwrap();
}

async fn d03_duplicate_id_is_refused_and_the_holder_is_untouched(transport: DeviceTransport) {
    let server = TestServer::start_for(transport, test_config()).await;
    let mut holder = server.registered_device_peer("dup").await;
    let mut client = server.connected_client("dup").await;

    let mut second = server.device_peer().await;
    assert_eq!(
        second
            .send_and_recv_error(r#"{"message_type":"register","device_id":"dup"}"#)
            .await,
        "Device id already taken: dup"
    );
    second
        .expect_end(CloseCode::Policy, "Device id already taken: dup")
        .await;

    // The holder still relays both ways.
    client
        .send(r#"{"message_type":"forward","payload":"hi"}"#)
        .await;
    assert_eq!(
        holder.recv_text().await,
        r#"{"message_type":"client_msg","client_id":1,"payload":"hi"}"#
    );
    holder
        .send(r#"{"message_type":"forward","client_id":1,"payload":"back"}"#)
        .await;
    assert_eq!(
        client.recv_text().await,
        r#"{"message_type":"device_msg","payload":"back"}"#
    );
    server.stop().await.unwrap();
}

async fn d04_register_again_keeps_the_registration(transport: DeviceTransport) {
    let server = TestServer::start_for(transport, test_config()).await;
    let mut device = server.registered_device_peer("first").await;
    assert_eq!(
        device
            .send_and_recv_error(r#"{"message_type":"register","device_id":"second"}"#)
            .await,
        "Device already registered: first"
    );
    assert_eq!(server.get("/devices").await.body, r#"["first"]"#);
    // Still open and still registered: a client reaches it.
    let mut client = server.connected_client("first").await;
    client
        .send(r#"{"message_type":"forward","payload":1}"#)
        .await;
    assert_eq!(
        device.recv_text().await,
        r#"{"message_type":"client_msg","client_id":1,"payload":1}"#
    );
    server.stop().await.unwrap();
}

async fn d05_forward_before_register_is_not_registered(transport: DeviceTransport) {
    let server = TestServer::start_for(transport, test_config()).await;
    let mut device = server.device_peer().await;
    assert_eq!(
        device
            .send_and_recv_error(r#"{"message_type":"forward","client_id":1,"payload":{}}"#)
            .await,
        "Not registered"
    );
    // Fields are not checked before the state: still "Not registered".
    assert_eq!(
        device
            .send_and_recv_error(r#"{"message_type":"forward"}"#)
            .await,
        "Not registered"
    );
    // The connection stays open and can register.
    device
        .send(r#"{"message_type":"register","device_id":"late"}"#)
        .await;
    assert_eq!(device.recv_json().await["message_type"], "config");
    server.stop().await.unwrap();
}

async fn d06_forward_reaches_the_client_verbatim(transport: DeviceTransport) {
    let server = TestServer::start_for(transport, test_config()).await;
    let mut device = server.registered_device_peer("d6").await;
    let mut client = server.connected_client("d6").await;
    client
        .send(r#"{"message_type":"forward","payload":null}"#)
        .await;
    assert_eq!(
        device.recv_text().await,
        r#"{"message_type":"client_msg","client_id":1,"payload":null}"#
    );
    let payload = r#"{ "type" : "offer", "sdp":"v=0\r\n", "n": 1.50e3, "s":"\u00e9" }"#;
    device
        .send(&format!(
            r#"{{"message_type":"forward","client_id":1,"payload":{payload}}}"#
        ))
        .await;
    assert_eq!(
        client.recv_text().await,
        format!(r#"{{"message_type":"device_msg","payload":{payload}}}"#)
    );
    server.stop().await.unwrap();
}

async fn d07_forward_to_a_departed_client_answers_client_disconnected(transport: DeviceTransport) {
    let server = TestServer::start_for(transport, test_config()).await;
    let mut device = server.registered_device_peer("d7").await;
    let client = server.connected_client("d7").await;
    client.close().await;
    assert_eq!(
        device.recv_text().await,
        r#"{"message_type":"client_disconnected","client_id":1}"#
    );
    for _ in 0..2 {
        device
            .send(r#"{"message_type":"forward","client_id":1,"payload":"late"}"#)
            .await;
        assert_eq!(
            device.recv_text().await,
            r#"{"message_type":"client_disconnected","client_id":1}"#
        );
    }
    server.stop().await.unwrap();
}

async fn d08_forward_to_an_unknown_client(transport: DeviceTransport) {
    let server = TestServer::start_for(transport, test_config()).await;
    let mut device = server.registered_device_peer("d8").await;
    let _client = server.connected_client("d8").await;
    assert_eq!(
        device
            .send_and_recv_error(r#"{"message_type":"forward","client_id":2,"payload":1}"#)
            .await,
        "Unknown client: 2"
    );
    assert_eq!(
        device
            .send_and_recv_error(
                r#"{"message_type":"forward","client_id":18446744073709551615,"payload":1}"#
            )
            .await,
        "Unknown client: 18446744073709551615"
    );
    server.stop().await.unwrap();
}

async fn d09_invalid_client_id(transport: DeviceTransport) {
    let server = TestServer::start_for(transport, test_config()).await;
    let mut device = server.registered_device_peer("d9").await;
    for (text, want) in [
        (
            r#"{"message_type":"forward","payload":1}"#,
            "Invalid client_id: missing client_id",
        ),
        (
            r#"{"message_type":"forward","client_id":"1","payload":1}"#,
            "Invalid client_id: client_id must be a positive integer, got \"1\"",
        ),
        (
            r#"{"message_type":"forward","client_id":0,"payload":1}"#,
            "Invalid client_id: client_id must be a positive integer, got 0",
        ),
        (
            r#"{"message_type":"forward","client_id":-3,"payload":1}"#,
            "Invalid client_id: client_id must be a positive integer, got -3",
        ),
        (
            r#"{"message_type":"forward","client_id":1.5,"payload":1}"#,
            "Invalid client_id: client_id must be a positive integer, got 1.5",
        ),
    ] {
        assert_eq!(device.send_and_recv_error(text).await, want);
    }
    server.stop().await.unwrap();
}

async fn d10_missing_payload(transport: DeviceTransport) {
    let server = TestServer::start_for(transport, test_config()).await;
    let mut device = server.registered_device_peer("d10").await;
    let mut client = server.connected_client("d10").await;
    assert_eq!(
        device
            .send_and_recv_error(r#"{"message_type":"forward","client_id":1}"#)
            .await,
        "Missing payload"
    );
    // null is a payload.
    device
        .send(r#"{"message_type":"forward","client_id":1,"payload":null}"#)
        .await;
    assert_eq!(
        client.recv_text().await,
        r#"{"message_type":"device_msg","payload":null}"#
    );
    server.stop().await.unwrap();
}

async fn d11_unknown_message_type(transport: DeviceTransport) {
    let server = TestServer::start_for(transport, test_config()).await;
    let mut device = server.device_peer().await;
    assert_eq!(
        device
            .send_and_recv_error(r#"{"message_type":"connect","device_id":"x"}"#)
            .await,
        "Unknown message type: connect"
    );
    let _ = server.registered_device_peer("d11").await;
    assert_eq!(
        device
            .send_and_recv_error(r#"{"message_type":"hello"}"#)
            .await,
        "Unknown message type: hello"
    );
    server.stop().await.unwrap();
}

async fn d12_invalid_message(transport: DeviceTransport) {
    let server = TestServer::start_for(transport, test_config()).await;
    let mut device = server.device_peer().await;
    let nested = |depth: usize| {
        format!(
            r#"{{"message_type":"register","device_id":"deep","device_info":{}1{}}}"#,
            "[".repeat(depth - 1),
            "]".repeat(depth - 1)
        )
    };
    for (text, want) in [
        (
            "hello".to_owned(),
            "Invalid message: expected a JSON object",
        ),
        ("[]".to_owned(), "Invalid message: expected a JSON object"),
        ("42".to_owned(), "Invalid message: expected a JSON object"),
        (
            r#"{"device_id":"x"}"#.to_owned(),
            "Invalid message: missing message_type",
        ),
        (
            r#"{"message_type":["register"]}"#.to_owned(),
            "Invalid message: message_type must be a string",
        ),
        (
            nested(129),
            "Invalid message: nested deeper than 128 levels",
        ),
    ] {
        assert_eq!(device.send_and_recv_error(&text).await, want, "{text}");
    }
    assert!(
        device
            .send_and_recv_error("{")
            .await
            .starts_with("Invalid message: EOF while parsing")
    );
    // Just inside the nesting bound, the same connection registers.
    device.send(&nested(128)).await;
    assert_eq!(device.recv_json().await["message_type"], "config");
    server.stop().await.unwrap();
}

async fn d13_binary_frame_closes_1003(transport: DeviceTransport) {
    let server = TestServer::start_for(transport, test_config()).await;
    let mut device = server.registered_device_peer("d13").await;
    let mut client = server.connected_client("d13").await;
    let DevicePeer::Websocket(device) = &mut device else {
        panic!("binary frames are a websocket's");
    };
    device.send_message(Message::binary(vec![1, 2, 3])).await;
    assert_eq!(
        device.recv_close().await,
        (
            CloseCode::Unsupported,
            "Binary messages are not supported".to_owned()
        )
    );
    assert_eq!(client.recv_error().await, "Device disconnected");
    server.stop().await.unwrap();
}

async fn d13_invalid_utf8_closes_1007(transport: DeviceTransport) {
    let server = TestServer::start_for(transport, test_config()).await;
    let mut device = server.registered_device_peer("d13u").await;
    device.send_not_utf8(&[b'{', 0xff, 0xfe, b'}']).await;
    device
        .expect_end(CloseCode::Invalid, "Invalid UTF-8 in text message")
        .await;
    server.stop().await.unwrap();
}

/// A register message of exactly `len` bytes.
fn register_of_len(id: &str, len: usize) -> String {
    let head = format!(r#"{{"message_type":"register","device_id":"{id}","device_info":""#);
    let tail = r#""}"#;
    format!("{head}{}{tail}", "x".repeat(len - head.len() - tail.len()))
}

async fn d14_size_limit_is_exact(transport: DeviceTransport) {
    let server = TestServer::start_for(
        transport,
        signaling_server::ServerConfig {
            max_message_bytes: 4096,
            ..test_config()
        },
    )
    .await;
    let mut other = server.registered_device_peer("bystander").await;
    let mut at_limit = server.device_peer().await;
    at_limit.send(&register_of_len("d14", 4096)).await;
    assert_eq!(at_limit.recv_json().await["message_type"], "config");

    let mut over = server.device_peer().await;
    over.send(&register_of_len("d14b", 4097)).await;
    over.expect_end(CloseCode::Size, "Message too big: the limit is 4096 bytes")
        .await;
    // Nobody else noticed.
    let mut client = server.connected_client("bystander").await;
    client
        .send(r#"{"message_type":"forward","payload":1}"#)
        .await;
    assert_eq!(other.recv_json().await["message_type"], "client_msg");
    server.stop().await.unwrap();
}

async fn d14_default_size_limit_is_64_kib(transport: DeviceTransport) {
    let server = TestServer::start_for(transport, test_config()).await;
    let mut at_limit = server.device_peer().await;
    at_limit.send(&register_of_len("big", 65_536)).await;
    assert_eq!(at_limit.recv_json().await["message_type"], "config");
    let mut over = server.device_peer().await;
    over.send(&register_of_len("bigger", 65_537)).await;
    over.expect_end(CloseCode::Size, "Message too big: the limit is 65536 bytes")
        .await;
    server.stop().await.unwrap();
}

// Run on a paused clock (see `on_both_transports`), so the timeouts below
// are virtual time.
async fn d15_registration_timeout(transport: DeviceTransport) {
    let server = TestServer::start_for(
        transport,
        signaling_server::ServerConfig {
            handshake_timeout: Duration::from_millis(400),
            ..test_config()
        },
    )
    .await;
    // Just inside: registering before the timeout keeps the connection.
    let mut quick = server.device_peer().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    quick
        .send(r#"{"message_type":"register","device_id":"quick"}"#)
        .await;
    assert_eq!(quick.recv_json().await["message_type"], "config");

    // Past it: a silent connection is told and closed.
    let mut silent = server.device_peer().await;
    let started = tokio::time::Instant::now();
    assert_eq!(silent.recv_error().await, "Registration timeout");
    assert!(started.elapsed() >= Duration::from_millis(300));
    silent
        .expect_end(CloseCode::Policy, "Registration timeout")
        .await;
    // Errors before registering do not stop the clock.
    let mut chatty = server.device_peer().await;
    assert_eq!(
        chatty.send_and_recv_error("{}").await,
        "Invalid message: missing message_type"
    );
    assert_eq!(chatty.recv_error().await, "Registration timeout");

    // The registered device outlived the timeout.
    quick.expect_silence(Duration::from_millis(200)).await;
    assert_eq!(server.get("/devices").await.body, r#"["quick"]"#);
    server.stop().await.unwrap();
}

async fn d16_device_disconnect_tells_clients_and_frees_the_id(transport: DeviceTransport) {
    // A socket has no close frame: its end holds the session with resume
    // on (tests/resume.rs), so the immediate departure is resume off's.
    let config = match transport {
        DeviceTransport::Socket => common::without_resume(),
        _ => test_config(),
    };
    let server = TestServer::start_for(transport, config).await;
    let device = server.registered_device_peer("d16").await;
    let mut first = server.connected_client("d16").await;
    let mut second = server.connected_client("d16").await;
    device.close().await;
    for client in [&mut first, &mut second] {
        assert_eq!(client.recv_error().await, "Device disconnected");
        assert_eq!(
            client.recv_close().await,
            (CloseCode::Away, "Device disconnected".to_owned())
        );
    }
    // The id is free at once, and client ids start again at 1.
    let mut again = server.registered_device_peer("d16").await;
    let mut client = server.connected_client("d16").await;
    client
        .send(r#"{"message_type":"forward","payload":1}"#)
        .await;
    assert_eq!(
        again.recv_text().await,
        r#"{"message_type":"client_msg","client_id":1,"payload":1}"#
    );
    server.stop().await.unwrap();
}

/// With resume on, an abrupt drop is announced when the window passes
/// (tests/resume.rs); with it off, at once.
async fn d16_abrupt_device_drop_also_tells_clients(transport: DeviceTransport) {
    let server = TestServer::start_for(transport, common::without_resume()).await;
    let device = server.registered_device_peer("abrupt").await;
    let mut client = server.connected_client("abrupt").await;
    // Drop the TCP connection without a close handshake.
    drop(device);
    assert_eq!(client.recv_error().await, "Device disconnected");
    assert_eq!(client.recv_close().await.0, CloseCode::Away);
    common::eventually("the id is free", || async {
        server.get("/devices").await.body == "[]"
    })
    .await;
    server.stop().await.unwrap();
}

/// D17: `burst` messages at once pass, the next one ends the session; the
/// device's clients hear it as a departure (D16); the refusal is counted.
async fn d17_rate_limit_is_exact(transport: DeviceTransport) {
    let server = TestServer::start_for(
        transport,
        signaling_server::ServerConfig {
            rate_limit: Some(signaling_server::RateLimit {
                per_second: 1,
                burst: 5,
            }),
            ..test_config()
        },
    )
    .await;
    let mut device = server.registered_device_peer("d17").await;
    let mut client = server.connected_client("d17").await;
    // The register was one message: four more fit the burst, the fifth
    // forward does not. All in one write, well inside the one-second
    // interval in which the burst could earn a message back.
    let forward = r#"{"message_type":"forward","client_id":1,"payload":"x"}"#;
    device.send_all(&[forward; 5]).await;
    for _ in 0..4 {
        assert_eq!(client.recv_json().await["message_type"], "device_msg");
    }
    let text = "Rate limit exceeded: more than 1 messages per second (bursts of 5)";
    assert_eq!(device.recv_error().await, text);
    device.expect_end(CloseCode::Policy, text).await;
    assert_eq!(client.recv_error().await, "Device disconnected");
    assert_eq!(client.recv_close().await.0, CloseCode::Away);
    assert_eq!(
        server
            .metric(r#"signaling_errors_total{error="rate_limited"}"#)
            .await,
        1.0
    );
    server.stop().await.unwrap();
}

/// Each row as three tests: `<row>::websocket`, `<row>::device_socket`,
/// and `<row>::other_instance` (the device on one instance of a Redis,
/// its clients on another); `paused` ones run on a paused clock (time
/// moves only when every task waits, straight to the next timer), which
/// a real Redis's deadlines cannot share, so on one instance only.
macro_rules! on_both_transports {
    ($($row:ident $(: $mode:ident)?),* $(,)?) => {
        $( on_both_transports!(@row $($mode)? $row); )*
    };
    (@row $row:ident) => {
        mod $row {
            #[tokio::test]
            async fn websocket() {
                super::$row(super::DeviceTransport::Websocket).await
            }
            #[tokio::test]
            async fn device_socket() {
                super::$row(super::DeviceTransport::Socket).await
            }
            /// The device on one instance, its clients on another.
            #[tokio::test]
            async fn other_instance() {
                super::$row(super::DeviceTransport::OtherInstance).await
            }
        }
    };
    (@row paused $row:ident) => {
        mod $row {
            #[tokio::test(start_paused = true)]
            async fn websocket() {
                super::$row(super::DeviceTransport::Websocket).await
            }
            #[tokio::test(start_paused = true)]
            async fn device_socket() {
                super::$row(super::DeviceTransport::Socket).await
            }
        }
    };
    (@row websocket_only $row:ident) => {
        mod $row {
            #[tokio::test]
            async fn websocket() {
                super::$row(super::DeviceTransport::Websocket).await
            }
            #[tokio::test]
            async fn other_instance() {
                super::$row(super::DeviceTransport::OtherInstance).await
            }
        }
    };
}

on_both_transports! {
    d01_register_gets_config,
    d02_invalid_device_id_closes_1008,
    d03_duplicate_id_is_refused_and_the_holder_is_untouched,
    d04_register_again_keeps_the_registration,
    d05_forward_before_register_is_not_registered,
    d06_forward_reaches_the_client_verbatim,
    d07_forward_to_a_departed_client_answers_client_disconnected,
    d08_forward_to_an_unknown_client,
    d09_invalid_client_id,
    d10_missing_payload,
    d11_unknown_message_type,
    d12_invalid_message,
    d13_binary_frame_closes_1003: websocket_only,
    d13_invalid_utf8_closes_1007,
    d14_size_limit_is_exact,
    d14_default_size_limit_is_64_kib,
    d15_registration_timeout: paused,
    d16_device_disconnect_tells_clients_and_frees_the_id,
    d16_abrupt_device_drop_also_tells_clients,
    d17_rate_limit_is_exact,
}
