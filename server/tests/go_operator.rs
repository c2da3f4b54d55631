//! The Go operator's client API (PROTOCOL.md, "The Go operator's client
//! API"): the websocket `/devices/{id}/connect` with bare payloads, the
//! polling API with its cursor, and `GET /devices/{id}`; with this server's
//! client ids, announcements, limits and tokens.

#![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

#[macro_use]
mod common;

use common::{
    DeviceTransport, HttpResponse, Peer, TestServer, http_get, http_post, refusal_status,
    test_config,
};
use serde_json::Value;
use signaling_server::ServerConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

fn body_json(reply: &HttpResponse) -> Value {
    serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", reply.body))
}

async fn go_client(server: &TestServer, device_id: &str) -> Peer {
    Peer::connect(&server.clients_url(&format!("/devices/{device_id}/connect"))).await
}

async fn websocket_clients_send_bare_payloads(transport: DeviceTransport) {
    let server = TestServer::start_for(transport, test_config()).await;
    // An unknown device is refused before the upgrade, as there.
    let error = Peer::try_connect_with(&server.clients_url("/devices/nobody/connect"), &[])
        .await
        .err()
        .expect("refused");
    assert_eq!(refusal_status(&error), 404);

    let mut device = server.registered_device_with_info("go").await;
    // A seed client first: client ids are one sequence per device.
    let _seed = server.connected_client("go").await;
    let mut client = go_client(&server, "go").await;
    // No config: the Go operator's clients read /infra_config.
    // Its first frame carries the resume offer beside device_info.
    assert_eq!(
        common::without_offer(&client.recv_text().await),
        r#"{"device_info":{"name":"go"}}"#
    );

    // A bare payload reaches the device verbatim, numbers and all.
    let payload = r#"{ "type":"request-offer", "n": 12345678901234567890 }"#;
    client.send(payload).await;
    assert_eq!(
        device.recv_text().await,
        format!(r#"{{"message_type":"client_msg","client_id":2,"payload":{payload}}}"#)
    );
    device
        .send(r#"{"message_type":"forward","client_id":2,"payload":{"type":"offer"}}"#)
        .await;
    assert_eq!(
        client.recv_text().await,
        r#"{"message_type":"device_msg","payload":{"type":"offer"}}"#
    );

    // What is not a JSON object is said, and the session goes on.
    for (text, want) in [
        ("[1]", "Invalid message: expected a JSON object"),
        ("42", "Invalid message: expected a JSON object"),
        (
            "{",
            "Invalid message: EOF while parsing an object at line 1 column 1",
        ),
    ] {
        assert_eq!(client.send_and_recv_error(text).await, want, "{text}");
    }
    client.send(r#"{"still":"here"}"#).await;
    assert!(
        device
            .recv_text()
            .await
            .contains(r#""payload":{"still":"here"}"#)
    );

    // Leaving is announced once.
    client.close().await;
    assert_eq!(
        device.recv_text().await,
        r#"{"message_type":"client_disconnected","client_id":2}"#
    );
    server.stop().await.unwrap();
}

async fn websocket_clients_hear_their_device_leave(transport: DeviceTransport) {
    let server = TestServer::start_for(transport, test_config()).await;
    let device = server.registered_device_with_info("leaving").await;
    let mut client = go_client(&server, "leaving").await;
    client.recv_text().await;
    device.close().await;
    assert_eq!(client.recv_error().await, "Device disconnected");
    assert_eq!(
        client.recv_close().await,
        (CloseCode::Away, "Device disconnected".to_owned())
    );
    drop(client);
    common::eventually("the devices_connect gauge is zero", || async {
        server
            .metric(r#"signaling_websocket_connections{endpoint="devices_connect"}"#)
            .await
            == 0.0
    })
    .await;
    server.stop().await.unwrap();
}

async fn tokens_apply_to_the_go_api(transport: DeviceTransport) {
    let server = TestServer::start_for(
        transport,
        ServerConfig {
            client_token: Some("secret".into()),
            ..test_config()
        },
    )
    .await;
    let _device = server.registered_device_with_info("guarded").await;
    let error = Peer::try_connect_with(&server.clients_url("/devices/guarded/connect"), &[])
        .await
        .err()
        .expect("refused");
    assert_eq!(refusal_status(&error), 401);
    let mut client =
        Peer::connect(&server.clients_url("/devices/guarded/connect?token=secret")).await;
    assert!(client.recv_text().await.starts_with(r#"{"device_info""#));
    for path in ["/devices/guarded", "/polled_connections/x/messages"] {
        assert_eq!(server.clients_get(path).await.status, 401, "{path}");
    }
    let reply = http_post(
        server.clients_addr(),
        "/polled_connections",
        r#"{"device_id":"guarded"}"#,
    )
    .await;
    assert_eq!(reply.status, 401);
    let reply = http_get(
        server.clients_addr(),
        "/devices/guarded",
        &[("Authorization", "Bearer secret")],
    )
    .await;
    assert_eq!(reply.status, 200);
    server.stop().await.unwrap();
}

async fn a_device_descriptor_carries_its_device_info(transport: DeviceTransport) {
    let server = TestServer::start_for(transport, test_config()).await;
    let _device = server.registered_device_with_info("described").await;
    let reply = server.clients_get("/devices/described").await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        body_json(&reply),
        serde_json::json!({
            "device_id": "described",
            "group_name": "",
            "adb_port": 0,
            "registration_info": {"name": "described"},
        })
    );
    let missing = server.clients_get("/devices/nobody").await;
    assert_eq!(missing.status, 404);
    assert_eq!(body_json(&missing)["error"], "Device not found: nobody");
    server.stop().await.unwrap();
}

/// `POST /polled_connections`; the connection id.
async fn polled_connect(server: &TestServer, device_id: &str) -> String {
    let reply = http_post(
        server.clients_addr(),
        "/polled_connections",
        &format!(r#"{{"device_id":"{device_id}"}}"#),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let value = body_json(&reply);
    value["connection_id"].as_str().unwrap().to_owned()
}

async fn messages(server: &TestServer, id: &str, query: &str) -> HttpResponse {
    server
        .clients_get(&format!("/polled_connections/{id}/messages{query}"))
        .await
}

async fn polling_clients_read_the_device_messages_by_index(transport: DeviceTransport) {
    let server = TestServer::start_for(transport, test_config()).await;
    let mut device = server.registered_device_with_info("polled").await;
    let reply = http_post(
        server.clients_addr(),
        "/polled_connections",
        r#"{"device_id":"polled"}"#,
    )
    .await;
    assert_eq!(reply.status, 200);
    let value = body_json(&reply);
    assert_eq!(value["device_info"], serde_json::json!({"name": "polled"}));
    assert!(value.get("message_type").is_none(), "{value}");
    let id = value["connection_id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 32);

    let forward = http_post(
        server.clients_addr(),
        &format!("/polled_connections/{id}/:forward"),
        r#"{"payload":{"type":"request-offer"}}"#,
    )
    .await;
    assert_eq!((forward.status, forward.body.as_str()), (200, r#""ok""#));
    assert_eq!(
        device.recv_text().await,
        r#"{"message_type":"client_msg","client_id":1,"payload":{"type":"request-offer"}}"#
    );

    for n in 0..3 {
        device
            .send(&format!(
                r#"{{"message_type":"forward","client_id":1,"payload":{n}}}"#
            ))
            .await;
    }
    let frame = |n: u32| format!(r#"{{"message_type":"device_msg","payload":{n}}}"#);
    common::eventually("the device's messages are there", || async {
        messages(&server, &id, "?start=0&count=2").await.body
            == format!("[{},{}]", frame(0), frame(1))
    })
    .await;
    // From the count seen: what was before it is dropped.
    assert_eq!(
        messages(&server, &id, "?start=2").await.body,
        format!("[{}]", frame(2))
    );
    assert_eq!(messages(&server, &id, "?start=3").await.body, "[]");
    for (query, want) in [
        (
            "?start=0",
            "Invalid start: 0 is outside the messages kept, 3 to 3",
        ),
        (
            "?start=9",
            "Invalid start: 9 is outside the messages kept, 3 to 3",
        ),
        (
            "?start=-1",
            "Invalid start: \"-1\" is not a non-negative integer",
        ),
        (
            "?start=3&count=x",
            "Invalid count: \"x\" is not a non-negative integer",
        ),
    ] {
        let reply = messages(&server, &id, query).await;
        assert_eq!(reply.status, 400, "{query}");
        let error = body_json(&reply)["error"].as_str().unwrap().to_owned();
        assert!(error.starts_with(want), "{query}: {error}");
    }

    // Bad requests on forward.
    let missing = http_post(
        server.clients_addr(),
        &format!("/polled_connections/{id}/:forward"),
        "{}",
    )
    .await;
    assert_eq!(
        (missing.status, body_json(&missing)["error"].as_str()),
        (400, Some("Missing payload"))
    );
    let other = http_post(
        server.clients_addr(),
        &format!("/polled_connections/{id}/:other"),
        "{}",
    )
    .await;
    assert_eq!(other.status, 404);
    let unknown = http_post(
        server.clients_addr(),
        "/polled_connections/nope/:forward",
        r#"{"payload":1}"#,
    )
    .await;
    assert_eq!(unknown.status, 404);
    assert_eq!(messages(&server, "nope", "").await.status, 404);
    let not_there = http_post(
        server.clients_addr(),
        "/polled_connections",
        r#"{"device_id":"elsewhere"}"#,
    )
    .await;
    assert_eq!(not_there.status, 404);

    // The device leaves: what it sent is still handed over, then the
    // client is gone.
    device
        .send(r#"{"message_type":"forward","client_id":1,"payload":"last"}"#)
        .await;
    device.close().await;
    common::eventually("the last message is handed over", || async {
        let reply = messages(&server, &id, "?start=3").await;
        reply.status == 200 && reply.body.contains("last") || reply.status == 404
    })
    .await;
    assert_eq!(messages(&server, &id, "?start=4").await.status, 404);
    server.stop().await.unwrap();
}

/// The Go operator's polling client backs off like the reference's: 1 s,
/// doubling, up to 60 s while nothing arrives. Driven time: ten quiet
/// minutes on that backoff keep it; then it stops and is dropped after
/// --poll-timeout, and its device is told.
#[tokio::test(start_paused = true)]
async fn a_go_polling_client_on_backoff_stays_and_one_that_stops_is_dropped() {
    let server = TestServer::start(test_config()).await;
    let device = server.registered_device_with_info("patient").await;
    let id = polled_connect(&server, "patient").await;
    common::poll_on_backoff_then_stop(device, || async {
        let reply = messages(&server, &id, "?start=0").await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "[]"));
    })
    .await;
    assert_eq!(messages(&server, &id, "?start=0").await.status, 404);
    server.stop().await.unwrap();
}

/// Kept messages are bounded like an outbox: a client that lets more than
/// --outbox-messages pile up unread is dropped, and its device told.
async fn kept_messages_are_bounded(transport: DeviceTransport) {
    let server = TestServer::start_for(
        transport,
        ServerConfig {
            outbox_messages: 4,
            ..test_config()
        },
    )
    .await;
    let mut device = server.registered_device_with_info("bounded").await;
    let id = polled_connect(&server, "bounded").await;
    let send = |n: u32| format!(r#"{{"message_type":"forward","client_id":1,"payload":{n}}}"#);
    for n in 0..3 {
        device.send(&send(n)).await;
    }
    common::eventually("three are kept", || async {
        messages(&server, &id, "?start=0")
            .await
            .body
            .matches("device_msg")
            .count()
            == 3
    })
    .await;
    // Read two: room for more.
    assert_eq!(messages(&server, &id, "?start=2&count=0").await.body, "[]");
    for n in 3..6 {
        device.send(&send(n)).await;
    }
    common::eventually("four are kept", || async {
        messages(&server, &id, "?start=2")
            .await
            .body
            .matches("device_msg")
            .count()
            == 4
    })
    .await;
    // One more than the bound, unread.
    device.send(&send(6)).await;
    common::eventually("the client is dropped", || async {
        messages(&server, &id, "?start=2").await.status == 404
    })
    .await;
    assert_eq!(
        device.recv_text().await,
        r#"{"message_type":"client_disconnected","client_id":1}"#
    );
    server.stop().await.unwrap();
}

/// `/devices/{id}/adb`: a websocket bridged to the device's adb port on
/// loopback, both ways, bytes as they are.
#[tokio::test]
async fn the_adb_bridge_carries_bytes_both_ways() {
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::Message;

    // adb's side: answers each read with its bytes reversed.
    let adb = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let adb_port = adb.local_addr().unwrap().port();
    let adb_task = tokio::spawn(async move {
        let (mut stream, _) = adb.accept().await.unwrap();
        let mut buffer = [0u8; 64];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let mut back = buffer[..n].to_vec();
                    back.reverse();
                    stream.write_all(&back).await.unwrap();
                }
            }
        }
    });
    let server = TestServer::with_defaults().await;
    let mut device = server.device().await;
    device
        .send(&format!(
            r#"{{"message_type":"register","device_id":"adb","device_info":{{"adb_port":{adb_port}}}}}"#
        ))
        .await;
    device.recv_json().await;
    let mut bridge = Peer::connect(&server.clients_url("/devices/adb/adb")).await;
    bridge
        .ws
        .send(Message::binary(vec![0u8, 1, 2, 0xff]))
        .await
        .unwrap();
    let back = tokio::time::timeout(common::PROMPT, bridge.ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(back, Message::binary(vec![0xffu8, 2, 1, 0]));
    bridge.close().await;
    tokio::time::timeout(common::PROMPT, adb_task)
        .await
        .expect("the adb connection is closed with the bridge")
        .unwrap();

    // No port, or nothing listening on it: refused before the upgrade.
    let _plain = server.registered_device_with_info("no-adb").await;
    let refused = Peer::try_connect_with(&server.clients_url("/devices/no-adb/adb"), &[])
        .await
        .err()
        .unwrap();
    assert_eq!(refusal_status(&refused), 404);
    let refused = Peer::try_connect_with(&server.clients_url("/devices/nobody/adb"), &[])
        .await
        .err()
        .unwrap();
    assert_eq!(refusal_status(&refused), 404);
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut unreachable = server.device().await;
    unreachable
        .send(&format!(
            r#"{{"message_type":"register","device_id":"adb-gone","device_info":{{"adb_port":{closed}}}}}"#
        ))
        .await;
    unreachable.recv_json().await;
    let refused = Peer::try_connect_with(&server.clients_url("/devices/adb-gone/adb"), &[])
        .await
        .err()
        .unwrap();
    assert_eq!(refusal_status(&refused), 502);
    drop(device);
    server.stop().await.unwrap();
}

on_both_topologies! {
    websocket_clients_send_bare_payloads,
    websocket_clients_hear_their_device_leave,
    tokens_apply_to_the_go_api,
    a_device_descriptor_carries_its_device_info,
    polling_clients_read_the_device_messages_by_index,
    kept_messages_are_bounded,
}
