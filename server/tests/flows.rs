//! Whole flows: ordering and loss under load, many pairs at once, real
//! Cuttlefish message shapes, keepalive, slow consumers, shutdown.

#![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{TestServer, test_config};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use signaling_server::ServerConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const CUTTLEFISH_REGISTER: &str = include_str!("../../protocol/tests/cuttlefish-register.json");

#[tokio::test]
async fn cuttlefish_register_is_accepted_and_device_info_is_verbatim() {
    let server = TestServer::with_defaults().await;
    let mut device = server.device().await;
    device.send(CUTTLEFISH_REGISTER).await;
    assert_eq!(device.recv_json().await["message_type"], "config");
    assert_eq!(server.get("/devices").await.body, r#"["cvd-1"]"#);

    #[derive(serde::Deserialize)]
    struct Fixture<'a> {
        #[serde(borrow)]
        device_info: &'a serde_json::value::RawValue,
    }
    let fixture: Fixture = serde_json::from_str(CUTTLEFISH_REGISTER).unwrap();
    let mut client = server.client().await;
    client
        .send(r#"{"message_type":"connect","device_id":"cvd-1"}"#)
        .await;
    client.recv_json().await;
    assert_eq!(
        client.recv_text().await,
        format!(
            r#"{{"message_type":"device_info","device_info":{}}}"#,
            fixture.device_info.get()
        )
    );
    server.stop().await.unwrap();
}

/// A payload shaped like a browser's offer: about 8 KiB of SDP.
fn browser_sdp() -> String {
    let mut sdp =
        String::from("v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n");
    let mut line = 0;
    while sdp.len() < 8 * 1024 {
        sdp.push_str(&format!(
            "a=candidate:{line} 1 udp 2122260223 127.0.0.1 {} typ host generation 0 network-id 1\r\n",
            50_000 + line
        ));
        line += 1;
    }
    serde_json::json!({"type": "offer", "sdp": sdp}).to_string()
}

#[tokio::test]
async fn browser_sized_sdp_is_relayed_verbatim_both_ways() {
    let server = TestServer::with_defaults().await;
    let mut device = server.registered_device_with_info("sdp").await;
    let mut client = server.connected_client("sdp").await;
    let payload = browser_sdp();
    assert!(payload.len() > 8 * 1024);
    device
        .send(&format!(
            r#"{{"message_type":"forward","client_id":1,"payload":{payload}}}"#
        ))
        .await;
    assert_eq!(
        client.recv_text().await,
        format!(r#"{{"message_type":"device_msg","payload":{payload}}}"#)
    );
    client
        .send(&format!(
            r#"{{"message_type":"forward","payload":{payload}}}"#
        ))
        .await;
    assert_eq!(
        device.recv_text().await,
        format!(r#"{{"message_type":"client_msg","client_id":1,"payload":{payload}}}"#)
    );
    server.stop().await.unwrap();
}

const INTERLEAVED: u64 = 10_000;

#[tokio::test]
async fn ten_thousand_interleaved_messages_each_way_arrive_in_order() {
    let server = TestServer::with_defaults().await;
    let device = server.registered_device_with_info("order").await;
    let client = server.connected_client("order").await;
    let (device_tx, device_rx) = device.ws.split();
    let (client_tx, client_rx) = client.ws.split();

    // Each direction keeps up to WINDOW messages in flight, like a real
    // peer that reads while it writes; without that, a sender that outruns
    // its receiver is a slow consumer and is closed by design.
    let device_got = Arc::new(AtomicU64::new(0));
    let client_got = Arc::new(AtomicU64::new(0));
    let device_sends = tokio::spawn(send_windowed(device_tx, client_got.clone(), |seq| {
        format!(r#"{{"message_type":"forward","client_id":1,"payload":{{"seq":{seq}}}}}"#)
    }));
    let client_sends = tokio::spawn(send_windowed(client_tx, device_got.clone(), |seq| {
        format!(r#"{{"message_type":"forward","payload":{{"seq":{seq}}}}}"#)
    }));
    let device_receives = tokio::spawn(receive_in_order(device_rx, "client_msg", device_got));
    let client_receives = tokio::spawn(receive_in_order(client_rx, "device_msg", client_got));
    let (_, _, _, _) =
        tokio::try_join!(device_sends, client_sends, device_receives, client_receives).unwrap();
    assert_eq!(
        server
            .metric(r#"signaling_messages_relayed_total{direction="client_to_device"}"#)
            .await,
        INTERLEAVED as f64
    );
    server.stop().await.unwrap();
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
type Sender = futures_util::stream::SplitSink<Socket, Message>;
type Receiver = futures_util::stream::SplitStream<Socket>;

const WINDOW: u64 = 256;

/// Sends INTERLEAVED messages, at most WINDOW ahead of what the other side
/// has received.
async fn send_windowed(
    mut tx: Sender,
    received: Arc<AtomicU64>,
    message: impl Fn(u64) -> String,
) -> Sender {
    for seq in 0..INTERLEAVED {
        while seq >= received.load(Ordering::Acquire) + WINDOW {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tx.send(Message::text(message(seq))).await.unwrap();
    }
    tx
}

/// Reads INTERLEAVED messages of `kind` and checks their sequence numbers.
async fn receive_in_order(mut rx: Receiver, kind: &'static str, count: Arc<AtomicU64>) -> Receiver {
    for want in 0..INTERLEAVED {
        let text = loop {
            let message = tokio::time::timeout(common::PROMPT, rx.next())
                .await
                .expect("timed out")
                .unwrap()
                .unwrap();
            match message {
                Message::Text(text) => break text,
                // The server asks for acknowledgements as it writes (its
                // pings carry the count written).
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("{kind} #{want}: expected a text frame, got {other:?}"),
            }
        };
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["message_type"], kind);
        assert_eq!(value["payload"]["seq"], want, "lost or reordered");
        count.store(want + 1, Ordering::Release);
    }
    rx
}

#[tokio::test]
async fn two_hundred_pairs_in_parallel() {
    let server = Arc::new(TestServer::with_defaults().await);
    let mut pairs = Vec::new();
    for pair in 0..200 {
        let server = server.clone();
        pairs.push(tokio::spawn(async move {
            let id = format!("pair-{pair}");
            let mut device = server.registered_device_with_info(&id).await;
            let mut client = server.connected_client(&id).await;
            for round in 0..5 {
                client
                    .send(&format!(r#"{{"message_type":"forward","payload":"{id}/{round}"}}"#))
                    .await;
                let got = device.recv_json().await;
                assert_eq!(got["client_id"], 1);
                assert_eq!(got["payload"], format!("{id}/{round}"));
                device
                    .send(&format!(
                        r#"{{"message_type":"forward","client_id":1,"payload":"{id}/{round}/back"}}"#
                    ))
                    .await;
                assert_eq!(client.recv_json().await["payload"], format!("{id}/{round}/back"));
            }
            (device, client)
        }));
    }
    let mut peers = Vec::new();
    for pair in pairs {
        peers.push(pair.await.unwrap());
    }
    let devices: Vec<String> = serde_json::from_str(&server.get("/devices").await.body).unwrap();
    assert_eq!(devices.len(), 200);
    assert_eq!(server.metric("signaling_clients").await, 200.0);
    for (device, client) in peers {
        client.close().await;
        device.close().await;
    }
    common::eventually("the registry is empty", || async {
        server.metric("signaling_devices").await == 0.0
            && server.metric("signaling_clients").await == 0.0
    })
    .await;
    Arc::into_inner(server).unwrap().stop().await.unwrap();
}

fn keepalive_config() -> ServerConfig {
    ServerConfig {
        ping_interval: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(400),
        ..test_config()
    }
}

// The clock is paused: it moves only when every task waits, straight to
// the next timer, so the timeouts below are virtual time.
#[tokio::test(start_paused = true)]
async fn idle_timeout_closes_a_peer_that_stops_answering_pings() {
    // With resume on, a silent peer's session is held (tests/resume.rs).
    let server = TestServer::start(ServerConfig {
        resume_window: Duration::ZERO,
        ..keepalive_config()
    })
    .await;
    // This device never reads, so it never answers a ping.
    let mut silent = server.registered_device_with_info("silent").await;
    // This one reads (and so answers pings) but never sends a message.
    let mut alive = server.registered_device_with_info("alive").await;
    let watch = tokio::spawn(async move {
        alive.expect_silence(Duration::from_millis(1200)).await;
        alive
    });
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(server.get("/devices").await.body, r#"["alive"]"#);
    let mut alive = watch.await.unwrap();
    // The silent one finds the server's pings, then its close. Its own
    // pong replies may hit the closed socket first, ending the read early;
    // any close frame it does read must be the idle timeout's.
    loop {
        match tokio::time::timeout(common::PROMPT, silent.ws.next())
            .await
            .expect("stalled")
        {
            Some(Ok(Message::Close(frame))) => {
                let frame = frame.expect("a close code");
                assert_eq!(
                    (frame.code, frame.reason.as_str()),
                    (CloseCode::Policy, "Idle timeout")
                );
                break;
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => break,
        }
    }
    // The live one is still registered and usable.
    alive
        .send(r#"{"message_type":"forward","client_id":1,"payload":1}"#)
        .await;
    assert_eq!(alive.recv_error().await, "Unknown client: 1");
    server.stop().await.unwrap();
}

// The clock is paused: it moves only when every task waits, straight to
// the next timer, so the timeouts below are virtual time.
#[tokio::test(start_paused = true)]
async fn device_can_take_its_id_back_after_the_keepalive_reaps_it() {
    let server = TestServer::start(keepalive_config()).await;
    let _vanished = server.registered_device_with_info("cvd").await;
    // Right away the id is still held (D3).
    let mut retry = server.device().await;
    assert_eq!(
        retry
            .send_and_recv_error(r#"{"message_type":"register","device_id":"cvd"}"#)
            .await,
        "Device id already taken: cvd"
    );
    // Within the idle timeout (plus one ping) the holder is reaped; its
    // session is then held for a resume, and a device that registers
    // afresh takes the id from it.
    common::eventually("a new registration takes the id", || async {
        let mut retry = server.device().await;
        retry
            .send(r#"{"message_type":"register","device_id":"cvd"}"#)
            .await;
        retry.recv_json().await["message_type"] == "config"
    })
    .await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn slow_consumer_is_closed_and_its_device_told() {
    let server = TestServer::start(ServerConfig {
        outbox_messages: 8,
        ..test_config()
    })
    .await;
    let device = server.registered_device_with_info("fast").await;
    // This client never reads.
    let mut slow = server.connected_client("fast").await;
    let payload = "x".repeat(60_000);
    let forward = format!(r#"{{"message_type":"forward","client_id":1,"payload":"{payload}"}}"#);
    let (told, _device) = common::flood_until_told(device, forward).await;
    assert_eq!(
        told,
        r#"{"message_type":"client_disconnected","client_id":1}"#
    );
    // The slow client finds the relayed messages, then the end.
    let mut frames = 0;
    let end = loop {
        match tokio::time::timeout(common::PROMPT, slow.ws.next())
            .await
            .expect("stalled")
        {
            Some(Ok(Message::Text(_))) => frames += 1,
            Some(Ok(Message::Close(frame))) => break frame.map(|f| (f.code, f.reason.to_string())),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break None,
        }
    };
    assert!(frames > 0);
    if let Some((code, reason)) = end {
        assert_eq!(code, CloseCode::Policy);
        assert!(reason.starts_with("Slow consumer"), "{reason}");
    }
    assert_eq!(
        server
            .metric(r#"signaling_errors_total{error="slow_consumer"}"#)
            .await,
        1.0
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn graceful_shutdown_closes_every_socket_with_1001() {
    let server = TestServer::start(ServerConfig {
        shutdown_grace: Duration::from_secs(5),
        ..test_config()
    })
    .await;
    let mut peers = Vec::new();
    for n in 0..5 {
        let id = format!("s{n}");
        peers.push(server.registered_device_with_info(&id).await);
        peers.push(server.connected_client(&id).await);
    }
    let mut unregistered = server.client().await;
    let readers: Vec<_> = peers
        .into_iter()
        .map(|mut peer| {
            tokio::spawn(async move {
                loop {
                    match peer.ws.next().await {
                        Some(Ok(Message::Close(Some(frame)))) => return Some(frame.code),
                        // A client may hear its device leave first.
                        Some(Ok(_)) => continue,
                        _ => return None,
                    }
                }
            })
        })
        .collect();
    let started = std::time::Instant::now();
    let address = server.addr;
    server.stop().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    for reader in readers {
        let code = reader.await.unwrap();
        // Each socket is closed with 1001: for the server's shutdown, or
        // (a client) because its device went away in the same moment.
        assert_eq!(code, Some(CloseCode::Away));
    }
    assert_eq!(
        unregistered.recv_close().await,
        (CloseCode::Away, "Server shutting down".to_owned())
    );
    // The listener is closed.
    assert!(tokio::net::TcpStream::connect(address).await.is_err());
}

/// How long `run` takes to return once stopped, with one registered device
/// that never reads, and so never answers the server's close frame.
async fn shutdown_time_with_a_deaf_peer(
    close_timeout: Duration,
    shutdown_grace: Duration,
) -> Duration {
    let server = TestServer::start(ServerConfig {
        close_timeout,
        shutdown_grace,
        ..test_config()
    })
    .await;
    let _deaf = server.registered_device_with_info("deaf").await;
    let started = tokio::time::Instant::now();
    server.stop().await.unwrap();
    started.elapsed()
}

// The clock is paused: it moves only when every task waits, straight to
// the next timer, so the timeouts below are virtual time.
#[tokio::test(start_paused = true)]
async fn close_timeout_bounds_the_wait_for_a_peer_that_never_answers() {
    let took =
        shutdown_time_with_a_deaf_peer(Duration::from_millis(300), Duration::from_secs(20)).await;
    assert!(took >= Duration::from_millis(250), "{took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}

// The clock is paused: it moves only when every task waits, straight to
// the next timer, so the timeouts below are virtual time.
#[tokio::test(start_paused = true)]
async fn shutdown_grace_bounds_the_whole_shutdown() {
    let took =
        shutdown_time_with_a_deaf_peer(Duration::from_secs(20), Duration::from_millis(300)).await;
    assert!(took >= Duration::from_millis(250), "{took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}
