//! The reference server's HTTP polling flow: POST /connect, /forward,
//! /poll_messages, with its shapes and statuses, and the websocket
//! clients' rows for ids, errors and departures.

#![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

#[macro_use]
mod common;

use std::time::Duration;

use common::{DeviceTransport, TestServer, http_post, test_config};
use serde_json::Value;
use signaling_server::ServerConfig;

/// `POST /connect` to `device_id`; the connection id.
async fn poll_connect(server: &TestServer, device_id: &str) -> String {
    let reply = http_post(
        server.clients_addr(),
        "/connect",
        &format!(r#"{{"device_id":"{device_id}"}}"#),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let value: Value = serde_json::from_str(&reply.body).unwrap();
    value["connection_id"].as_str().unwrap().to_owned()
}

async fn poll(server: &TestServer, connection_id: &str) -> common::HttpResponse {
    http_post(
        server.clients_addr(),
        "/poll_messages",
        &format!(r#"{{"connection_id":"{connection_id}"}}"#),
    )
    .await
}

fn assert_error(reply: &common::HttpResponse, status: u16, starts: &str) {
    assert_eq!(reply.status, status, "{}", reply.body);
    let value: Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(value["type"], "error", "{}", reply.body);
    let text = value["error"].as_str().unwrap();
    assert!(text.starts_with(starts), "{text}");
}

/// A client that polls on Cuttlefish's backoff for ten minutes of quiet is
/// never dropped; once it stops, it is dropped after --poll-timeout (3 min
/// by default) and its device is told. Driven time: the clock is paused and
/// jumps to each next timer.
#[tokio::test(start_paused = true)]
async fn a_client_on_cuttlefish_backoff_stays_and_one_that_stops_is_dropped() {
    let server = TestServer::start(test_config()).await;
    let device = server.registered_device_with_info("patient").await;
    let id = poll_connect(&server, "patient").await;
    common::poll_on_backoff_then_stop(device, || async {
        let reply = poll(&server, &id).await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "[]"));
    })
    .await;
    assert_error(&poll(&server, &id).await, 401, "Unknown connection_id");
    server.stop().await.unwrap();
}

/// Polls until something comes (a payload crossing from another
/// instance lands a moment after the device sent it); that answer.
async fn poll_until_some(server: &TestServer, connection_id: &str) -> common::HttpResponse {
    let deadline = tokio::time::Instant::now() + common::PROMPT;
    loop {
        let reply = poll(server, connection_id).await;
        if reply.body != "[]" || tokio::time::Instant::now() > deadline {
            return reply;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// C1 and C7 over polling: device_info with a random connection id, the
/// payload reaches the device verbatim, the device's payloads come back
/// verbatim as a JSON array, in order, once each.
async fn connect_forward_and_poll(transport: DeviceTransport) {
    let server = TestServer::start_for(transport, test_config()).await;
    let mut device = server.registered_device_with_info("polled").await;
    let reply = http_post(
        server.clients_addr(),
        "/connect",
        r#"{"device_id":"polled"}"#,
    )
    .await;
    assert_eq!(reply.status, 200);
    let value: Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(value["message_type"], "device_info");
    assert_eq!(value["device_info"], serde_json::json!({"name": "polled"}));
    let id = value["connection_id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 32);
    assert_ne!(poll_connect(&server, "polled").await, id, "ids are random");

    let forward = format!(r#"{{"connection_id":"{id}","payload":{{"b": [1, 2.50]}}}}"#);
    let reply = http_post(server.clients_addr(), "/forward", &forward).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "[]"));
    assert_eq!(
        device.recv_text().await,
        r#"{"message_type":"client_msg","client_id":1,"payload":{"b": [1, 2.50]}}"#
    );
    for payload in [r#"{"type":"offer", "sdp":"x"}"#, "null", r#""s""#] {
        device
            .send(&format!(
                r#"{{"message_type":"forward","client_id":1,"payload":{payload}}}"#
            ))
            .await;
    }
    let mut polled = Vec::new();
    while polled.len() < 3 {
        let reply = poll_until_some(&server, &id).await;
        assert_eq!(reply.status, 200);
        let batch: Vec<Box<serde_json::value::RawValue>> =
            serde_json::from_str(&reply.body).unwrap();
        assert!(!batch.is_empty(), "the device's payloads never came");
        polled.extend(batch.into_iter().map(|raw| raw.get().to_owned()));
    }
    assert_eq!(polled, [r#"{"type":"offer", "sdp":"x"}"#, "null", r#""s""#]);
    assert_eq!(poll(&server, &id).await.body, "[]");
    server.stop().await.unwrap();
}

/// The errors, in the reference's shape and statuses.
async fn errors_have_the_reference_shape(transport: DeviceTransport) {
    let server = TestServer::start_for(transport, test_config()).await;
    let _device = server.registered_device_with_info("here").await;
    let addr = server.clients_addr();
    assert_error(
        &http_post(addr, "/connect", "not json").await,
        400,
        "Invalid message",
    );
    assert_error(
        &http_post(addr, "/connect", "{}").await,
        400,
        "Invalid device_id",
    );
    assert_error(
        &http_post(addr, "/connect", r#"{"device_id":"a\u0001b"}"#).await,
        400,
        "Invalid device_id",
    );
    assert_error(
        &http_post(addr, "/connect", r#"{"device_id":"elsewhere"}"#).await,
        404,
        "Device not found: elsewhere",
    );
    assert_error(
        &http_post(addr, "/forward", r#"{"connection_id":"nope","payload":1}"#).await,
        401,
        "Unknown connection_id",
    );
    assert_error(&poll(&server, "nope").await, 401, "Unknown connection_id");
    let id = poll_connect(&server, "here").await;
    assert_error(
        &http_post(addr, "/forward", &format!(r#"{{"connection_id":"{id}"}}"#)).await,
        400,
        "Missing payload",
    );
    let big = "x".repeat(70_000);
    assert_error(
        &http_post(
            addr,
            "/forward",
            &format!(r#"{{"connection_id":"{id}","payload":"{big}"}}"#),
        )
        .await,
        413,
        "Message too big",
    );
    server.stop().await.unwrap();
}

/// Client ids are shared with websocket clients (the next id), and a
/// polling client's departure is announced like any other (C14).
// The clock is paused: it moves only when every task waits, straight to
// the next timer, so the timeouts below are virtual time.
#[tokio::test(start_paused = true)]
async fn ids_and_departures_as_for_websocket_clients() {
    // With resume on, a client that stops polling is held for the window
    // first (tests/resume.rs).
    let server = TestServer::start(ServerConfig {
        poll_timeout: Duration::from_millis(300),
        ..common::without_resume()
    })
    .await;
    let mut device = server.registered_device_with_info("shared").await;
    let _websocket = server.connected_client("shared").await;
    let id = poll_connect(&server, "shared").await;
    let forward = format!(r#"{{"connection_id":"{id}","payload":7}}"#);
    assert_eq!(
        http_post(server.clients_addr(), "/forward", &forward)
            .await
            .status,
        200
    );
    assert_eq!(
        device.recv_text().await,
        r#"{"message_type":"client_msg","client_id":2,"payload":7}"#
    );
    assert_eq!(server.metric("signaling_clients").await, 2.0);
    // It stops polling: after --poll-timeout it is dropped, its device is
    // told, and its next request gets the unknown-connection error.
    assert_eq!(
        device.recv_text().await,
        r#"{"message_type":"client_disconnected","client_id":2}"#
    );
    assert_error(&poll(&server, &id).await, 401, "Unknown connection_id");
    assert_eq!(server.metric("signaling_clients").await, 1.0);
    server.stop().await.unwrap();
}

/// A queue over --outbox-messages drops the client openly: its device is
/// told at once, and the client's next poll gets the unknown-connection
/// error (the reference drops messages past 1000 silently).
async fn a_full_queue_drops_the_client_openly(transport: DeviceTransport) {
    let server = TestServer::start_for(
        transport,
        ServerConfig {
            outbox_messages: 4,
            ..test_config()
        },
    )
    .await;
    let mut device = server.registered_device_with_info("full").await;
    let id = poll_connect(&server, "full").await;
    let forward = format!(r#"{{"connection_id":"{id}","payload":0}}"#);
    http_post(server.clients_addr(), "/forward", &forward).await;
    assert!(device.recv_text().await.contains("client_msg"));
    for n in 0..5 {
        device
            .send(&format!(
                r#"{{"message_type":"forward","client_id":1,"payload":{n}}}"#
            ))
            .await;
    }
    assert_eq!(
        device.recv_text().await,
        r#"{"message_type":"client_disconnected","client_id":1}"#
    );
    assert_error(&poll(&server, &id).await, 401, "Unknown connection_id");
    assert_eq!(
        server
            .metric(r#"signaling_errors_total{error="slow_consumer"}"#)
            .await,
        1.0
    );
    server.stop().await.unwrap();
}

/// D16 for a polling client: what the device sent before leaving is still
/// handed over, then the connection is gone.
async fn device_departure_keeps_what_was_sent(transport: DeviceTransport) {
    let server = TestServer::start_for(transport, test_config()).await;
    let mut device = server.registered_device_with_info("leaving").await;
    let id = poll_connect(&server, "leaving").await;
    let forward = format!(r#"{{"connection_id":"{id}","payload":0}}"#);
    http_post(server.clients_addr(), "/forward", &forward).await;
    assert!(device.recv_text().await.contains("client_msg"));
    device
        .send(r#"{"message_type":"forward","client_id":1,"payload":"last"}"#)
        .await;
    common::eventually("the last payload is queued", || async {
        server
            .metric(r#"signaling_messages_relayed_total{direction="device_to_client"}"#)
            .await
            == 1.0
    })
    .await;
    device.close().await;
    common::eventually("the device is gone", || async {
        server.metric("signaling_devices").await == 0.0
    })
    .await;
    assert_eq!(poll_until_some(&server, &id).await.body, r#"["last"]"#);
    // Then the connection is gone (across instances, once the departure
    // that followed the payload has arrived too; nothing comes meanwhile).
    let gone = poll_until_some(&server, &id).await;
    assert_error(&gone, 401, "Unknown connection_id");
    assert_eq!(server.metric("signaling_clients").await, 0.0);
    server.stop().await.unwrap();
}

/// With a client token, the polling endpoints need it, as a header or in
/// the query string.
async fn the_client_token_guards_polling(transport: DeviceTransport) {
    let server = TestServer::start_for(
        transport,
        ServerConfig {
            client_token: Some("secret".into()),
            ..test_config()
        },
    )
    .await;
    let _device = server.registered_device_with_info("guarded").await;
    let body = r#"{"device_id":"guarded"}"#;
    assert_error(
        &http_post(server.clients_addr(), "/connect", body).await,
        401,
        "Unauthorized",
    );
    let reply = http_post(server.clients_addr(), "/connect?token=secret", body).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    server.stop().await.unwrap();
}

/// C15 for a polling client: forwards past the rate limit get 429, and
/// the client is dropped as a websocket client would be.
async fn the_rate_limit_applies_to_forwards(transport: DeviceTransport) {
    let server = TestServer::start_for(
        transport,
        ServerConfig {
            rate_limit: Some(signaling_server::RateLimit {
                per_second: 1,
                burst: 2,
            }),
            ..test_config()
        },
    )
    .await;
    let mut device = server.registered_device_with_info("hasty").await;
    let id = poll_connect(&server, "hasty").await;
    let forward = format!(r#"{{"connection_id":"{id}","payload":1}}"#);
    for _ in 0..2 {
        assert_eq!(
            http_post(server.clients_addr(), "/forward", &forward)
                .await
                .status,
            200
        );
        assert!(device.recv_text().await.contains("client_msg"));
    }
    assert_error(
        &http_post(server.clients_addr(), "/forward", &forward).await,
        429,
        "Rate limit exceeded",
    );
    assert_eq!(
        device.recv_text().await,
        r#"{"message_type":"client_disconnected","client_id":1}"#
    );
    assert_error(&poll(&server, &id).await, 401, "Unknown connection_id");
    server.stop().await.unwrap();
}

on_both_topologies! {
    connect_forward_and_poll,
    errors_have_the_reference_shape,
    a_full_queue_drops_the_client_openly,
    device_departure_keeps_what_was_sent,
    the_client_token_guards_polling,
    the_rate_limit_applies_to_forwards,
}
