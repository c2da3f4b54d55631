//! PROTOCOL.md's rows C1–C15 ("Every decision, row by row",
//! `/connect_client`), each against the real server with a real websocket
//! client. The same timeouts with driven time: `server/src/core/tests.rs`.

#![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

#[macro_use]
mod common;

use std::time::Duration;

use common::{DeviceTransport, TestServer, test_config};
use signaling_server::ServerConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};

async fn c01_connect_gets_config_then_device_info(topology: DeviceTransport) {
    let server = TestServer::start_for(topology, test_config()).await;
    let mut device = server.device().await;
    let info = "{\n\t\"displays\" : [ { \"x_res\" : 720 } ],\n\t\"n\" : 1.0\n}";
    device
        .send(&format!(
            r#"{{"message_type":"register","device_id":"c1","device_info":{info}}}"#
        ))
        .await;
    device.recv_json().await;
    server.until_clients_see("c1").await;
    let mut client = server.client().await;
    client
        .send(r#"{"message_type":"connect","device_id":"c1"}"#)
        .await;
    // The resume offer rides on the first frame (PROTOCOL.md, "Resuming a
    // session"), after everything the seed defines.
    assert_eq!(
        common::without_offer(&client.recv_text().await),
        r#"{"message_type":"config","ice_servers":[]}"#
    );
    assert_eq!(
        client.recv_text().await,
        format!(r#"{{"message_type":"device_info","device_info":{info}}}"#)
    );
    server.stop().await.unwrap();
}

async fn c01_device_info_absent_is_null(topology: DeviceTransport) {
    let server = TestServer::start_for(topology, test_config()).await;
    let mut device = server.device().await;
    device
        .send(r#"{"message_type":"register","device_id":"bare"}"#)
        .await;
    device.recv_json().await;
    server.until_clients_see("bare").await;
    let mut client = server.client().await;
    client
        .send(r#"{"message_type":"connect","device_id":"bare"}"#)
        .await;
    client.recv_json().await;
    assert_eq!(
        client.recv_text().await,
        r#"{"message_type":"device_info","device_info":null}"#
    );
    server.stop().await.unwrap();
}

async fn c02_unknown_device_gets_config_then_not_found(topology: DeviceTransport) {
    let server = TestServer::start_for(topology, test_config()).await;
    let mut client = server.client().await;
    client
        .send(r#"{"message_type":"connect","device_id":"nobody"}"#)
        .await;
    assert_eq!(client.recv_json().await["message_type"], "config");
    assert_eq!(client.recv_error().await, "Device not found: nobody");
    assert_eq!(
        client.recv_close().await,
        (CloseCode::Policy, "Device not found: nobody".to_owned())
    );
    server.stop().await.unwrap();
}

fn waiting_config(wait: Duration) -> ServerConfig {
    ServerConfig {
        client_wait: wait,
        ..test_config()
    }
}

async fn c03_alternative_flow_client_waits_for_its_device(topology: DeviceTransport) {
    let server = TestServer::start_for(topology, waiting_config(Duration::from_secs(10))).await;
    let mut client = server.client().await;
    client
        .send(r#"{"message_type":"connect","device_id":"later"}"#)
        .await;
    assert_eq!(client.recv_json().await["message_type"], "config");
    client.expect_silence(Duration::from_millis(100)).await;
    // Forwarding while waiting is "Not connected" (C6).
    assert_eq!(
        client
            .send_and_recv_error(r#"{"message_type":"forward","payload":1}"#)
            .await,
        "Not connected"
    );

    let mut device = server.device().await;
    device
        .send(r#"{"message_type":"register","device_id":"later","device_info":{"a":1}}"#)
        .await;
    assert_eq!(device.recv_json().await["message_type"], "config");
    assert_eq!(
        client.recv_text().await,
        r#"{"message_type":"device_info","device_info":{"a":1}}"#
    );
    // The id was given at registration: 1.
    client
        .send(r#"{"message_type":"forward","payload":"x"}"#)
        .await;
    assert_eq!(
        device.recv_text().await,
        r#"{"message_type":"client_msg","client_id":1,"payload":"x"}"#
    );
    device
        .send(r#"{"message_type":"forward","client_id":1,"payload":"y"}"#)
        .await;
    assert_eq!(
        client.recv_text().await,
        r#"{"message_type":"device_msg","payload":"y"}"#
    );
    server.stop().await.unwrap();
}

// The clock is paused: it moves only when every task waits, straight to
// the next timer, so the timeouts below are virtual time.
async fn c03_alternative_flow_wait_ends_with_not_found(topology: DeviceTransport) {
    let server = TestServer::start_for(topology, waiting_config(Duration::from_secs(1))).await;
    let mut client = server.client().await;
    let started = tokio::time::Instant::now();
    client
        .send(r#"{"message_type":"connect","device_id":"never"}"#)
        .await;
    assert_eq!(client.recv_json().await["message_type"], "config");
    assert_eq!(client.recv_error().await, "Device not found: never");
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(client.recv_close().await.0, CloseCode::Policy);
    // The waiter is gone: a device registering now has no client 1.
    let mut device = server.registered_device_with_info("never").await;
    assert_eq!(
        device
            .send_and_recv_error(r#"{"message_type":"forward","client_id":1,"payload":1}"#)
            .await,
        "Unknown client: 1"
    );
    common::eventually("the client gauge is zero", || async {
        server.metric("signaling_clients").await == 0.0
    })
    .await;
    server.stop().await.unwrap();
}

async fn c03_alternative_flow_waiting_client_that_leaves_is_forgotten(topology: DeviceTransport) {
    let server = TestServer::start_for(topology, waiting_config(Duration::from_secs(10))).await;
    let mut client = server.client().await;
    client
        .send(r#"{"message_type":"connect","device_id":"w"}"#)
        .await;
    client.recv_json().await;
    client.close().await;
    common::eventually("the client gauge is zero", || async {
        server.metric("signaling_clients").await == 0.0
    })
    .await;
    let mut device = server.registered_device_with_info("w").await;
    device.expect_silence(Duration::from_millis(100)).await;
    // A waiting client that leaves was never this device's: no client 1.
    let mut second = server.connected_client("w").await;
    second
        .send(r#"{"message_type":"forward","payload":1}"#)
        .await;
    assert_eq!(
        device.recv_text().await,
        r#"{"message_type":"client_msg","client_id":1,"payload":1}"#
    );
    server.stop().await.unwrap();
}

async fn c04_invalid_device_id_closes_1008(topology: DeviceTransport) {
    let server = TestServer::start_for(topology, test_config()).await;
    for (text, want) in [
        (
            r#"{"message_type":"connect"}"#.to_owned(),
            "Invalid device_id: missing device_id",
        ),
        (
            r#"{"message_type":"connect","device_id":{}}"#.to_owned(),
            "Invalid device_id: device_id must be a string",
        ),
        (
            r#"{"message_type":"connect","device_id":""}"#.to_owned(),
            "Invalid device_id: device_id must not be empty",
        ),
        (
            format!(
                r#"{{"message_type":"connect","device_id":"{}"}}"#,
                "c".repeat(257)
            ),
            "Invalid device_id: device_id is 257 bytes, at most 256 allowed",
        ),
        (
            r#"{"message_type":"connect","device_id":"a\u0007"}"#.to_owned(),
            "Invalid device_id: device_id must not contain control characters",
        ),
    ] {
        let mut client = server.client().await;
        assert_eq!(client.send_and_recv_error(&text).await, want);
        assert_eq!(
            client.recv_close().await,
            (CloseCode::Policy, want.to_owned())
        );
    }
    // 256 bytes is a valid id: the answer is about the device, not the id.
    let mut client = server.client().await;
    client
        .send(&format!(
            r#"{{"message_type":"connect","device_id":"{}"}}"#,
            "c".repeat(256)
        ))
        .await;
    client.recv_json().await;
    assert!(
        client
            .recv_error()
            .await
            .starts_with("Device not found: ccc")
    );
    server.stop().await.unwrap();
}

async fn c05_connect_again(topology: DeviceTransport) {
    let server = TestServer::start_for(topology, test_config()).await;
    let mut device = server.registered_device_with_info("c5").await;
    let _other = server.registered_device_with_info("other").await;
    let mut client = server.connected_client("c5").await;
    assert_eq!(
        client
            .send_and_recv_error(r#"{"message_type":"connect","device_id":"other"}"#)
            .await,
        "Already connected: c5"
    );
    client
        .send(r#"{"message_type":"forward","payload":2}"#)
        .await;
    assert_eq!(
        device.recv_text().await,
        r#"{"message_type":"client_msg","client_id":1,"payload":2}"#
    );
    server.stop().await.unwrap();
}

async fn c06_forward_before_connect_is_not_connected(topology: DeviceTransport) {
    let server = TestServer::start_for(topology, test_config()).await;
    let _device = server.registered_device_with_info("c6").await;
    let mut client = server.client().await;
    assert_eq!(
        client
            .send_and_recv_error(r#"{"message_type":"forward","payload":1}"#)
            .await,
        "Not connected"
    );
    // Fields are not checked before the state.
    assert_eq!(
        client
            .send_and_recv_error(r#"{"message_type":"forward"}"#)
            .await,
        "Not connected"
    );
    client
        .send(r#"{"message_type":"connect","device_id":"c6"}"#)
        .await;
    assert_eq!(client.recv_json().await["message_type"], "config");
    assert_eq!(client.recv_json().await["message_type"], "device_info");
    server.stop().await.unwrap();
}

async fn c07_forward_reaches_the_device_with_the_client_id(topology: DeviceTransport) {
    let server = TestServer::start_for(topology, test_config()).await;
    let mut device = server.registered_device_with_info("c7").await;
    let mut first = server.connected_client("c7").await;
    let mut second = server.connected_client("c7").await;
    second
        .send(r#"{"message_type":"forward","payload":{"from":2}}"#)
        .await;
    assert_eq!(
        device.recv_text().await,
        r#"{"message_type":"client_msg","client_id":2,"payload":{"from":2}}"#
    );
    first
        .send(r#"{"message_type":"forward","payload":[1, 2.0]}"#)
        .await;
    assert_eq!(
        device.recv_text().await,
        r#"{"message_type":"client_msg","client_id":1,"payload":[1, 2.0]}"#
    );
    server.stop().await.unwrap();
}

async fn c08_missing_payload(topology: DeviceTransport) {
    let server = TestServer::start_for(topology, test_config()).await;
    let mut device = server.registered_device_with_info("c8").await;
    let mut client = server.connected_client("c8").await;
    assert_eq!(
        client
            .send_and_recv_error(r#"{"message_type":"forward"}"#)
            .await,
        "Missing payload"
    );
    client
        .send(r#"{"message_type":"forward","payload":null}"#)
        .await;
    assert_eq!(
        device.recv_text().await,
        r#"{"message_type":"client_msg","client_id":1,"payload":null}"#
    );
    server.stop().await.unwrap();
}

async fn c09_unknown_message_type(topology: DeviceTransport) {
    let server = TestServer::start_for(topology, test_config()).await;
    let mut client = server.client().await;
    assert_eq!(
        client
            .send_and_recv_error(r#"{"message_type":"register","device_id":"x"}"#)
            .await,
        "Unknown message type: register"
    );
    server.stop().await.unwrap();
}

async fn c10_invalid_message(topology: DeviceTransport) {
    let server = TestServer::start_for(topology, test_config()).await;
    let _device = server.registered_device_with_info("c10").await;
    let mut client = server.connected_client("c10").await;
    for (text, want) in [
        ("nope", "Invalid message: expected a JSON object"),
        ("null", "Invalid message: expected a JSON object"),
        (r#"{"payload":1}"#, "Invalid message: missing message_type"),
        (
            r#"{"message_type":1}"#,
            "Invalid message: message_type must be a string",
        ),
    ] {
        assert_eq!(client.send_and_recv_error(text).await, want);
    }
    server.stop().await.unwrap();
}

async fn c11_binary_frame_closes_1003_and_the_device_hears_it(topology: DeviceTransport) {
    let server = TestServer::start_for(topology, test_config()).await;
    let mut device = server.registered_device_with_info("c11").await;
    let mut client = server.connected_client("c11").await;
    client.send_message(Message::binary(vec![0u8; 8])).await;
    assert_eq!(
        client.recv_close().await,
        (
            CloseCode::Unsupported,
            "Binary messages are not supported".to_owned()
        )
    );
    assert_eq!(
        device.recv_text().await,
        r#"{"message_type":"client_disconnected","client_id":1}"#
    );
    server.stop().await.unwrap();
}

async fn c11_invalid_utf8_closes_1007(topology: DeviceTransport) {
    let server = TestServer::start_for(topology, test_config()).await;
    let mut client = server.client().await;
    let frame = Frame::message(vec![0xc3, 0x28], OpCode::Data(Data::Text), true);
    client.send_message(Message::Frame(frame)).await;
    assert_eq!(client.recv_close().await.0, CloseCode::Invalid);
    server.stop().await.unwrap();
}

async fn c12_size_limit_is_exact(topology: DeviceTransport) {
    let server = TestServer::start_for(
        topology,
        ServerConfig {
            max_message_bytes: 1024,
            ..test_config()
        },
    )
    .await;
    let mut device = server.registered_device_with_info("c12").await;
    let mut client = server.connected_client("c12").await;
    let message = |len: usize| {
        let head = r#"{"message_type":"forward","payload":""#;
        format!("{head}{}\"}}", "p".repeat(len - head.len() - 2))
    };
    // A forward of exactly the limit is taken, but the frame carrying its
    // payload to the device would not fit the limit: not relayed.
    client.send(&message(1024)).await;
    let error = client.recv_text().await;
    assert!(
        error.contains("Payload too big: a forwarded payload may be at most 951 bytes"),
        "{error}"
    );
    // The longest payload allowed (1024 less the 73-byte envelope) is.
    let envelope = r#"{"message_type":"forward","payload":}"#.len();
    client.send(&message(1024 - 73 + envelope)).await;
    let relayed = device.recv_text().await;
    assert!(relayed.len() <= 1024, "{} bytes", relayed.len());
    let relayed: serde_json::Value = serde_json::from_str(&relayed).unwrap();
    assert_eq!(
        relayed["payload"].as_str().map(str::len),
        Some(1024 - 73 - 2)
    );
    client.send(&message(1025)).await;
    assert_eq!(
        client.recv_close().await,
        (
            CloseCode::Size,
            "Message too big: the limit is 1024 bytes".to_owned()
        )
    );
    assert_eq!(
        device.recv_text().await,
        r#"{"message_type":"client_disconnected","client_id":1}"#
    );
    server.stop().await.unwrap();
}

// The clock is paused: it moves only when every task waits, straight to
// the next timer, so the timeouts below are virtual time.
async fn c13_connect_timeout(topology: DeviceTransport) {
    let server = TestServer::start_for(
        topology,
        ServerConfig {
            handshake_timeout: Duration::from_millis(400),
            ..test_config()
        },
    )
    .await;
    let _device = server.registered_device_with_info("c13").await;
    // Just inside: connecting before the timeout keeps the connection.
    let mut quick = server.client().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    quick
        .send(r#"{"message_type":"connect","device_id":"c13"}"#)
        .await;
    quick.recv_json().await;
    quick.recv_json().await;

    let mut silent = server.client().await;
    assert_eq!(silent.recv_error().await, "Connect timeout");
    assert_eq!(
        silent.recv_close().await,
        (CloseCode::Policy, "Connect timeout".to_owned())
    );
    quick.expect_silence(Duration::from_millis(200)).await;
    server.stop().await.unwrap();
}

/// With resume on, a dropped connection is announced when its window passes
/// (tests/resume.rs); here, with it off, at once.
async fn c14_client_disconnect_is_announced_exactly_once(topology: DeviceTransport) {
    let server = TestServer::start_for(topology, common::without_resume()).await;
    let mut device = server.registered_device_with_info("c14").await;

    // A clean close.
    let clean = server.connected_client("c14").await;
    clean.close().await;
    assert_eq!(
        device.recv_text().await,
        r#"{"message_type":"client_disconnected","client_id":1}"#
    );
    // A dropped TCP connection.
    let dropped = server.connected_client("c14").await;
    drop(dropped);
    assert_eq!(
        device.recv_text().await,
        r#"{"message_type":"client_disconnected","client_id":2}"#
    );
    // A client closed by the server for a protocol violation.
    let mut violator = server.connected_client("c14").await;
    violator.send_message(Message::binary(vec![1])).await;
    violator.recv_close().await;
    assert_eq!(
        device.recv_text().await,
        r#"{"message_type":"client_disconnected","client_id":3}"#
    );
    // Exactly once: nothing more follows.
    device.expect_silence(Duration::from_millis(200)).await;
    server.stop().await.unwrap();
}

/// C15: as D17, for a client; its device is told it left.
async fn c15_rate_limit_is_exact(topology: DeviceTransport) {
    use futures_util::SinkExt;

    let server = TestServer::start_for(
        topology,
        ServerConfig {
            rate_limit: Some(signaling_server::RateLimit {
                per_second: 1,
                burst: 3,
            }),
            ..test_config()
        },
    )
    .await;
    let mut device = server.registered_device_with_info("c15").await;
    let mut client = server.connected_client("c15").await;
    for _ in 0..3 {
        client
            .ws
            .feed(Message::text(r#"{"message_type":"forward","payload":2}"#))
            .await
            .unwrap();
    }
    client.ws.flush().await.unwrap();
    for _ in 0..2 {
        assert_eq!(
            device.recv_text().await,
            r#"{"message_type":"client_msg","client_id":1,"payload":2}"#
        );
    }
    let text = "Rate limit exceeded: more than 1 messages per second (bursts of 3)";
    assert_eq!(client.recv_error().await, text);
    assert_eq!(
        client.recv_close().await,
        (CloseCode::Policy, text.to_owned())
    );
    assert_eq!(
        device.recv_text().await,
        r#"{"message_type":"client_disconnected","client_id":1}"#
    );
    server.stop().await.unwrap();
}

on_both_topologies! {
    c01_connect_gets_config_then_device_info,
    c01_device_info_absent_is_null,
    c02_unknown_device_gets_config_then_not_found,
    c03_alternative_flow_client_waits_for_its_device,
    c03_alternative_flow_wait_ends_with_not_found: paused,
    c03_alternative_flow_waiting_client_that_leaves_is_forgotten,
    c04_invalid_device_id_closes_1008,
    c05_connect_again,
    c06_forward_before_connect_is_not_connected,
    c07_forward_reaches_the_device_with_the_client_id,
    c08_missing_payload,
    c09_unknown_message_type,
    c10_invalid_message,
    c11_binary_frame_closes_1003_and_the_device_hears_it,
    c11_invalid_utf8_closes_1007,
    c12_size_limit_is_exact,
    c13_connect_timeout: paused,
    c14_client_disconnect_is_announced_exactly_once,
    c15_rate_limit_is_exact,
}
