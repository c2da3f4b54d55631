//! Hostile input against the real server: many fragments, floods of tiny
//! frames, absurd ids. Each test names the bound it checks; after each, the
//! server still serves a bystander.

#![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

mod common;

use common::{TestServer, test_config};
use futures_util::{SinkExt, StreamExt};
use signaling_server::ServerConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};

/// `text` as one message in `pieces` frames: a text frame, then
/// continuations, the last one final.
fn fragments(text: &str, pieces: usize) -> Vec<Message> {
    let bytes = text.as_bytes();
    let size = bytes.len().div_ceil(pieces);
    let chunks: Vec<&[u8]> = bytes.chunks(size).collect();
    let last = chunks.len() - 1;
    chunks
        .into_iter()
        .enumerate()
        .map(|(n, chunk)| {
            let opcode = if n == 0 {
                OpCode::Data(Data::Text)
            } else {
                OpCode::Data(Data::Continue)
            };
            Message::Frame(Frame::message(chunk.to_vec(), opcode, n == last))
        })
        .collect()
}

/// A bystander registered before the test still relays afterwards.
async fn bystander_still_served(server: &TestServer, device: &mut common::Peer) {
    let mut client = server.connected_client("bystander").await;
    client
        .send(r#"{"message_type":"forward","payload":"still here"}"#)
        .await;
    assert_eq!(
        device.recv_text().await,
        r#"{"message_type":"client_msg","client_id":1,"payload":"still here"}"#
    );
}

/// A message in 1,000 fragments is reassembled (principle 8 is about what
/// the server sends; what it receives may be fragmented).
#[tokio::test]
async fn a_message_in_1000_fragments_is_reassembled() {
    let server = TestServer::with_defaults().await;
    let mut bystander = server.registered_device_with_info("bystander").await;
    let mut device = server.device().await;
    let info = "i".repeat(5_000);
    let register =
        format!(r#"{{"message_type":"register","device_id":"pieces","device_info":"{info}"}}"#);
    for frame in fragments(&register, 1_000) {
        device.ws.feed(frame).await.unwrap();
    }
    device.ws.flush().await.unwrap();
    assert_eq!(device.recv_json().await["message_type"], "config");
    let mut client = server.connected_client("pieces").await;
    client
        .send(r#"{"message_type":"forward","payload":0}"#)
        .await;
    assert_eq!(device.recv_json().await["payload"], 0);
    bystander_still_served(&server, &mut bystander).await;
    server.stop().await.unwrap();
}

/// D14's bound is on the reassembled message: fragments adding up to one
/// byte over `max_message_bytes` close with 1009, however small each is.
#[tokio::test]
async fn the_size_limit_counts_all_fragments() {
    let server = TestServer::start(ServerConfig {
        max_message_bytes: 4096,
        ..test_config()
    })
    .await;
    let mut bystander = server.registered_device_with_info("bystander").await;
    for (len, fits) in [(4096, true), (4097, false)] {
        let head = r#"{"message_type":"register","device_id":"frag","device_info":""#;
        let tail = r#""}"#;
        let text = format!("{head}{}{tail}", "x".repeat(len - head.len() - tail.len()));
        let mut device = server.device().await;
        for frame in fragments(&text, 512) {
            // The server may close before the last fragment is written.
            let _ = device.ws.feed(frame).await;
        }
        let _ = device.ws.flush().await;
        if fits {
            assert_eq!(device.recv_json().await["message_type"], "config");
            device.close().await;
        } else {
            assert_eq!(
                device.recv_close().await,
                (
                    CloseCode::Size,
                    "Message too big: the limit is 4096 bytes".to_owned()
                )
            );
        }
    }
    bystander_still_served(&server, &mut bystander).await;
    server.stop().await.unwrap();
}

/// A flood of tiny frames meets the default rate limit (D17): a burst of
/// 20,000 is answered one by one, and the flood ends with the rate error
/// and 1008 long before its 25,000th frame could have earned a place
/// (that would take five seconds at 1,000 a second).
#[tokio::test]
async fn a_flood_of_tiny_frames_meets_the_default_rate_limit() {
    let server = TestServer::with_defaults().await;
    let mut bystander = server.registered_device_with_info("bystander").await;
    let device = server.device().await;
    let (mut tx, mut rx) = device.ws.split();
    let flood = tokio::spawn(async move {
        for _ in 0..25_000 {
            // The server closes once the limit is met; stop there.
            if tx.feed(Message::text("{}")).await.is_err() {
                break;
            }
        }
        let _ = tx.flush().await;
        tx
    });
    let mut answered = 0;
    let end = loop {
        let message = tokio::time::timeout(common::PROMPT, rx.next())
            .await
            .expect("the server answers promptly");
        match message {
            Some(Ok(Message::Text(text))) if text.contains("Rate limit exceeded") => {
                let close = rx.next().await;
                break (text.to_string(), close);
            }
            Some(Ok(Message::Text(text))) => {
                assert_eq!(text, r#"{"error":"Invalid message: missing message_type"}"#);
                answered += 1;
            }
            Some(Ok(_)) => {}
            other => panic!("after {answered} answers: {other:?}"),
        }
    };
    let _ = flood.await;
    assert!(
        (20_000..25_000).contains(&answered),
        "{answered} frames answered"
    );
    assert_eq!(
        end.0,
        r#"{"error":"Rate limit exceeded: more than 1000 messages per second (bursts of 20000)"}"#
    );
    match end.1 {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Policy),
        other => panic!("expected close 1008, got {other:?}"),
    }
    bystander_still_served(&server, &mut bystander).await;
    server.stop().await.unwrap();
}

/// D2's 256-byte bound holds for an id of 60,000 bytes, far past it but
/// under the message size limit: refused, and nobody else notices.
#[tokio::test]
async fn a_60000_byte_device_id_is_refused() {
    let server = TestServer::with_defaults().await;
    let mut bystander = server.registered_device_with_info("bystander").await;
    let mut device = server.device().await;
    let id = "d".repeat(60_000);
    device
        .send(&format!(
            r#"{{"message_type":"register","device_id":"{id}"}}"#
        ))
        .await;
    let error = device.recv_error().await;
    assert!(error.starts_with("Invalid device_id: "), "{error}");
    assert!(error.len() < 200, "the error does not echo the id: {error}");
    assert_eq!(device.recv_close().await.0, CloseCode::Policy);
    let mut client = server.client().await;
    client
        .send(&format!(
            r#"{{"message_type":"connect","device_id":"{id}"}}"#
        ))
        .await;
    assert!(client.recv_error().await.starts_with("Invalid device_id: "));
    bystander_still_served(&server, &mut bystander).await;
    server.stop().await.unwrap();
}

/// Principle 5 for a device that stops reading while a client floods it:
/// once its outbox holds more than `--outbox-messages` (8 here) the device
/// is closed with 1008 and a reason naming the bound, and its client is
/// told the device left, however much it still sends.
#[tokio::test]
async fn a_device_that_stops_reading_is_closed_as_a_slow_consumer() {
    let server = TestServer::start(ServerConfig {
        outbox_messages: 8,
        ..test_config()
    })
    .await;
    // This device never reads while the flood lasts.
    let mut slow = server.registered_device_with_info("slow").await;
    let client = server.connected_client("slow").await;
    let payload = "x".repeat(60_000);
    let forward = format!(r#"{{"message_type":"forward","payload":"{payload}"}}"#);
    let (told, _client) = common::flood_until_told(client, forward).await;
    assert_eq!(told, r#"{"error":"Device disconnected"}"#);
    // The slow device finds what was relayed before the bound, then 1008.
    let end = loop {
        match tokio::time::timeout(common::PROMPT, slow.ws.next())
            .await
            .expect("stalled")
        {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    let frame = end.expect("a close code");
    assert_eq!(frame.code, CloseCode::Policy);
    assert_eq!(
        frame.reason.as_str(),
        "Slow consumer: more than 8 messages or 1048576 bytes queued"
    );
    assert_eq!(
        server
            .metric(r#"signaling_errors_total{error="slow_consumer"}"#)
            .await,
        1.0
    );
    server.stop().await.unwrap();
}

/// A forward of exactly the size limit is taken, but its payload would
/// reach the device in a frame over the limit (a Cuttlefish device reads
/// 64 KiB frames): it is refused with `Payload too big` and not relayed,
/// and the client stays. The longest payload allowed arrives in a frame
/// within the limit.
#[tokio::test]
async fn no_frame_to_a_device_exceeds_the_size_limit() {
    let server = TestServer::start(test_config()).await;
    let limit = ServerConfig::default().max_message_bytes;
    let mut device = server.registered_device_with_info("cvd-frames").await;
    let mut client = server.connected_client("cvd-frames").await;
    let forward = |payload_bytes: usize| {
        format!(
            r#"{{"message_type":"forward","payload":"{}"}}"#,
            "x".repeat(payload_bytes - 2)
        )
    };
    let whole = forward(limit - r#"{"message_type":"forward","payload":}"#.len());
    assert_eq!(whole.len(), limit);
    client.send(&whole).await;
    let error = client.recv_text().await;
    assert!(
        error.contains("Payload too big: a forwarded payload may be at most 65463 bytes"),
        "{error}"
    );
    let allowed = forward(limit - protocol::CLIENT_MSG_ENVELOPE_MAX);
    client.send(&allowed).await;
    let relayed = device.recv_text().await;
    assert!(relayed.len() <= limit, "{} bytes", relayed.len());
    assert!(relayed.starts_with(r#"{"message_type":"client_msg","client_id":1,"payload":"xx"#));
    server.stop().await.unwrap();
}
