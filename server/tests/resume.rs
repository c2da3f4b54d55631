//! Sessions that outlive their connection (PROTOCOL.md, "Resuming a
//! session"), on the real server: rows R1 to R16, each test named after its
//! row. A peer whose connection drops comes back with its token within
//! `--resume-window` and finds its session as it left it: the same client
//! id, nothing announced, and every frame it missed, once.

#![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

mod common;

use std::time::Duration;

use common::{DeviceTransport, Peer, SocketPeer, TestServer, eventually, http_post, test_config};
use serde_json::{Value, json};
use signaling_server::ServerConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const WINDOW: Duration = Duration::from_secs(30);

/// One side of a session as a peer that resumes keeps it: its connection,
/// its next token, and how many of the session's frames it received.
struct Side {
    peer: Peer,
    token: String,
    received: u64,
}

/// The resume token a frame offers, if it offers one.
fn offered(text: &str) -> Option<String> {
    let value: Value = serde_json::from_str(text).ok()?;
    Some(value["resume"]["token"].as_str()?.to_owned())
}

impl Side {
    /// The next frame of the session, counted.
    async fn recv_text(&mut self) -> String {
        let text = self.peer.recv_text().await;
        self.received += 1;
        if let Some(token) = offered(&text) {
            self.token = token;
        }
        text
    }

    async fn recv_json(&mut self) -> Value {
        serde_json::from_str(&self.recv_text().await).unwrap()
    }

    async fn send(&mut self, text: &str) {
        self.peer.send(text).await;
    }

    /// Drops the TCP connection without a close frame, as a network that
    /// fails does; what a peer keeps to come back.
    fn drop_connection(self) -> (String, u64) {
        (self.token, self.received)
    }

    /// A new connection to `url` that resumes with `token`, having
    /// received `received` frames: its `resumed` frame and the side.
    async fn resume(url: &str, token: String, received: u64) -> (Self, Value) {
        let mut peer = Peer::connect(url).await;
        peer.send(&resume_message(&token, received)).await;
        let resumed = peer.recv_json().await;
        assert_eq!(resumed["message_type"], "resumed", "{resumed}");
        let next = resumed["resume"]["token"].as_str().unwrap().to_owned();
        assert_ne!(next, token, "a resume hands out a new token");
        assert_eq!(resumed["resume"]["window_ms"], 30_000);
        (
            Self {
                peer,
                token: next,
                received,
            },
            resumed,
        )
    }
}

fn resume_message(token: &str, received: u64) -> String {
    json!({"message_type": "resume", "token": token, "received": received}).to_string()
}

/// A device registered on `/register_device` under `id`, its `config` read.
async fn device(server: &TestServer, id: &str) -> Side {
    let mut peer = server.device().await;
    peer.send(
        &json!({"message_type": "register", "device_id": id, "device_info": {"name": id}})
            .to_string(),
    )
    .await;
    let mut side = Side {
        peer,
        token: String::new(),
        received: 0,
    };
    let config = side.recv_text().await;
    assert!(config.contains(r#""message_type":"config""#), "{config}");
    assert!(!side.token.is_empty(), "no token in {config}");
    server.until_clients_see(id).await;
    side
}

/// A client of `id` on `/connect_client`, its `config` and `device_info`
/// read.
async fn client(server: &TestServer, id: &str) -> Side {
    let mut side = Side {
        peer: server.client().await,
        token: String::new(),
        received: 0,
    };
    side.send(&json!({"message_type": "connect", "device_id": id}).to_string())
        .await;
    let config = side.recv_text().await;
    assert!(config.contains(r#""message_type":"config""#), "{config}");
    assert_eq!(side.recv_json().await["message_type"], "device_info");
    assert!(!side.token.is_empty(), "no token in {config}");
    side
}

fn forward(payload: Value) -> String {
    json!({"message_type": "forward", "payload": payload}).to_string()
}

fn device_forward(client_id: u64, payload: Value) -> String {
    json!({"message_type": "forward", "client_id": client_id, "payload": payload}).to_string()
}

async fn away(server: &TestServer, role: &str, count: f64) {
    let series = format!(r#"signaling_sessions_away{{role="{role}"}}"#);
    eventually(&format!("{count} {role} sessions away"), || async {
        server.metric(&series).await == count
    })
    .await;
}

async fn outcome(server: &TestServer, role: &str, outcome: &str) -> f64 {
    server
        .metric(&format!(
            r#"signaling_session_resumes_total{{role="{role}",outcome="{outcome}"}}"#
        ))
        .await
}

/// R1: a session's first frame carries the offer (device and seed client:
/// `config`; the Go operator's client: `{"device_info"}`), after
/// everything the seed defines; none with the window at zero.
#[tokio::test]
async fn r01_the_first_frame_offers_a_token() {
    let server = TestServer::start_for(DeviceTransport::Socket, test_config()).await;
    let mut socket = server.device_peer().await;
    socket
        .send(r#"{"message_type":"register","device_id":"sock"}"#)
        .await;
    let config = socket.recv_text().await;
    assert_eq!(
        common::without_offer(&config),
        r#"{"message_type":"config","ice_servers":[]}"#
    );
    let device = device(&server, "r1").await;
    let client = client(&server, "r1").await;
    assert_ne!(device.token, client.token);
    let mut go = Peer::connect(&server.url("/devices/r1/connect")).await;
    let first = go.recv_text().await;
    assert_eq!(
        common::without_offer(&first),
        r#"{"device_info":{"name":"r1"}}"#
    );
    // Later frames carry none.
    let mut device = device;
    device.send(&device_forward(1, json!(1))).await;
    let mut client = client;
    assert_eq!(
        client.recv_text().await,
        r#"{"message_type":"device_msg","payload":1}"#
    );
    server.stop().await.unwrap();

    let off = TestServer::start(common::without_resume()).await;
    let mut device = off.device().await;
    device
        .send(r#"{"message_type":"register","device_id":"x"}"#)
        .await;
    assert_eq!(
        device.recv_text().await,
        r#"{"message_type":"config","ice_servers":[]}"#
    );
    device
        .send(r#"{"message_type":"resume","token":"x","received":0}"#)
        .await;
    assert_eq!(
        device.recv_error().await,
        "Invalid message: resume is only the first message of a new connection"
    );
    let mut late = off.client().await;
    late.send(&resume_message("x", 0)).await;
    assert_eq!(
        late.recv_error().await,
        "Resume refused: this server does not hold sessions (--resume-window 0)"
    );
    off.stop().await.unwrap();
}

/// R2, R3: a client whose connection drops comes back within the window:
/// the same client id at its device, nothing announced, what the device
/// sent meanwhile delivered in order, once; `resumed` says how many of
/// the client's frames the server has.
#[tokio::test]
async fn r02_a_client_comes_back_to_its_session_and_what_was_held_for_it() {
    let server = TestServer::start(test_config()).await;
    let mut device = device(&server, "r2").await;
    let mut client = client(&server, "r2").await;
    client.send(&forward(json!("before"))).await;
    assert_eq!(
        device.recv_json().await,
        json!({"message_type": "client_msg", "client_id": 1, "payload": "before"})
    );
    let (token, received) = client.drop_connection();
    away(&server, "client", 1.0).await;
    for n in 0..3 {
        device.send(&device_forward(1, json!(n))).await;
    }
    let (mut client, resumed) = Side::resume(&server.url("/connect_client"), token, received).await;
    // It sent connect and one forward.
    assert_eq!(resumed["received"], 2);
    for n in 0..3 {
        assert_eq!(
            client.recv_json().await,
            json!({"message_type": "device_msg", "payload": n})
        );
    }
    client.send(&forward(json!("after"))).await;
    assert_eq!(
        device.recv_json().await,
        json!({"message_type": "client_msg", "client_id": 1, "payload": "after"})
    );
    device.peer.expect_silence(Duration::from_millis(300)).await;
    client.peer.expect_silence(Duration::from_millis(100)).await;
    away(&server, "client", 0.0).await;
    assert_eq!(outcome(&server, "client", "resumed").await, 1.0);
    server.stop().await.unwrap();
}

/// R4: frames written to a connection that dropped before its peer read
/// them are sent again, and only those; a `received` beyond what was sent
/// ends the session.
#[tokio::test]
async fn r04_frames_lost_with_the_connection_are_sent_again_once() {
    let server = TestServer::start(test_config()).await;
    let mut device = device(&server, "r4").await;
    let mut client = client(&server, "r4").await;
    let sent_before = server.metric("signaling_sent_bytes_total").await;
    for n in 0..4 {
        device.send(&device_forward(1, json!(n))).await;
    }
    // It reads the first and loses the rest with its connection, once
    // the server has written them all.
    assert_eq!(client.recv_json().await["payload"], 0);
    let frame = json!({"message_type": "device_msg", "payload": 0}).to_string();
    let written = sent_before + 4.0 * frame.len() as f64;
    eventually("every frame written", || async {
        server.metric("signaling_sent_bytes_total").await == written
    })
    .await;
    let (token, received) = client.drop_connection();
    assert_eq!(received, 3);
    away(&server, "client", 1.0).await;
    let (mut client, _) = Side::resume(&server.url("/connect_client"), token, received).await;
    for n in 1..4 {
        assert_eq!(client.recv_json().await["payload"], n);
    }
    client.peer.expect_silence(Duration::from_millis(200)).await;
    assert_eq!(server.metric("signaling_frames_replayed_total").await, 3.0);

    // Claiming more than was sent is a resume that cannot be.
    let (token, received) = client.drop_connection();
    away(&server, "client", 1.0).await;
    let mut liar = Peer::connect(&server.url("/connect_client")).await;
    liar.send(&resume_message(&token, received + 5)).await;
    assert_eq!(
        liar.recv_error().await,
        format!(
            "Resume refused: received {} is more than the {received} frames sent",
            received + 5
        )
    );
    assert_eq!(liar.recv_close().await.0, CloseCode::Policy);
    assert_eq!(
        device.recv_text().await,
        r#"{"message_type":"client_disconnected","client_id":1}"#
    );
    server.stop().await.unwrap();
}

/// R5: a token resumes once: the spent one, a made-up one and one of
/// another endpoint are refused, and no session is touched.
#[tokio::test]
async fn r05_a_spent_guessed_or_foreign_token_gets_no_session() {
    let server = TestServer::start(test_config()).await;
    let mut device = device(&server, "r5").await;
    let client = client(&server, "r5").await;
    let (token, received) = client.drop_connection();
    away(&server, "client", 1.0).await;
    let (client, _) = Side::resume(&server.url("/connect_client"), token.clone(), received).await;

    let refused = |token: String, path: &'static str| {
        let url = server.url(path);
        async move {
            let mut peer = Peer::connect(&url).await;
            peer.send(&resume_message(&token, 0)).await;
            let error = peer.recv_error().await;
            assert_eq!(peer.recv_close().await.0, CloseCode::Policy);
            error
        }
    };
    assert_eq!(
        refused(token, "/connect_client").await,
        "Resume refused: no session holds this token (each token resumes once, within the window)"
    );
    let mut guessed = client.token.clone().into_bytes();
    guessed[30] = if guessed[30] == b'A' { b'B' } else { b'A' };
    assert_eq!(
        refused(String::from_utf8(guessed).unwrap(), "/connect_client").await,
        "Resume refused: no session holds this token (each token resumes once, within the window)"
    );
    assert_eq!(
        refused("not-a-token".into(), "/connect_client").await,
        "Resume refused: not a resume token"
    );
    // The device's token is no client's, and the other way round.
    assert_eq!(
        refused(device.token.clone(), "/connect_client").await,
        "Resume refused: the token is for a session of /register_device, not of /connect_client"
    );
    assert_eq!(
        refused(client.token.clone(), "/register_device").await,
        "Resume refused: the token is for a session of /connect_client, not of /register_device"
    );
    assert_eq!(
        server
            .metric(r#"signaling_connections_refused_total{reason="resume"}"#)
            .await,
        5.0
    );
    // Both sessions go on untouched.
    let mut client = client;
    device.send(&device_forward(1, json!("still"))).await;
    assert_eq!(client.recv_json().await["payload"], "still");
    device.peer.expect_silence(Duration::from_millis(200)).await;
    server.stop().await.unwrap();
}

/// R6: a clean close ends the session at once; a close with 1001 (going
/// away) holds it, as a connection lost does.
#[tokio::test]
async fn r06_a_clean_close_ends_the_session_and_1001_holds_it() {
    let server = TestServer::start(test_config()).await;
    let mut device = device(&server, "r6").await;
    let clean = client(&server, "r6").await;
    clean.peer.close().await;
    assert_eq!(
        device.recv_text().await,
        r#"{"message_type":"client_disconnected","client_id":1}"#
    );
    let mut going = client(&server, "r6").await;
    going
        .peer
        .ws
        .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: CloseCode::Away,
            reason: "page left".into(),
        }))
        .await
        .unwrap();
    away(&server, "client", 1.0).await;
    device.peer.expect_silence(Duration::from_millis(200)).await;
    let (token, received) = (going.token.clone(), going.received);
    let (mut back, _) = Side::resume(&server.url("/connect_client"), token, received).await;
    device.send(&device_forward(2, json!("back"))).await;
    assert_eq!(back.recv_json().await["payload"], "back");
    server.stop().await.unwrap();
}

/// R7: when the window passes, the other side hears the usual departure,
/// once, and the token is past use; on a paused clock.
#[tokio::test(start_paused = true)]
async fn r07_the_window_passes_and_the_departure_is_said_once() {
    let server = TestServer::start(test_config()).await;
    let mut device = device(&server, "r7").await;
    let client = client(&server, "r7").await;
    let (token, received) = client.drop_connection();
    away(&server, "client", 1.0).await;
    // Nothing is said during the window.
    device
        .peer
        .expect_silence(WINDOW - Duration::from_secs(1))
        .await;
    assert_eq!(
        device.peer.recv_text_whenever().await,
        r#"{"message_type":"client_disconnected","client_id":1}"#
    );
    device.peer.expect_silence(Duration::from_secs(60)).await;
    let mut late = Peer::connect(&server.url("/connect_client")).await;
    late.send(&resume_message(&token, received)).await;
    assert_eq!(
        late.recv_error().await,
        "Resume refused: no session holds this token (each token resumes once, within the window)"
    );
    assert_eq!(outcome(&server, "client", "window_passed").await, 1.0);
    away(&server, "client", 0.0).await;

    // A device: its client hears `Device disconnected` at the window's end.
    let device = self::device(&server, "r7-device").await;
    let mut client = self::client(&server, "r7-device").await;
    drop(device);
    away(&server, "device", 1.0).await;
    client
        .peer
        .expect_silence(WINDOW - Duration::from_secs(1))
        .await;
    assert_eq!(
        serde_json::from_str::<Value>(&client.peer.recv_text_whenever().await).unwrap()["error"],
        "Device disconnected"
    );
    assert_eq!(client.peer.recv_close().await.0, CloseCode::Away);
    server.stop().await.unwrap();
}

/// R8: a peer that comes back before the server saw it go takes its
/// session over: the old connection is closed as replaced.
#[tokio::test]
async fn r08_a_resume_replaces_a_connection_still_up() {
    let server = TestServer::start(test_config()).await;
    let mut device = device(&server, "r8").await;
    let mut old = client(&server, "r8").await;
    let (mut new, resumed) = Side::resume(
        &server.url("/connect_client"),
        old.token.clone(),
        old.received,
    )
    .await;
    assert_eq!(resumed["received"], 1);
    let (code, reason) = old.peer.recv_close().await;
    assert_eq!(
        (code, reason.as_str()),
        (
            CloseCode::Normal,
            "Replaced: the session was resumed on another connection"
        )
    );
    device.send(&device_forward(1, json!("new"))).await;
    assert_eq!(new.recv_json().await["payload"], "new");
    device.peer.expect_silence(Duration::from_millis(200)).await;
    assert_eq!(outcome(&server, "client", "resumed").await, 1.0);
    server.stop().await.unwrap();
}

/// R9: a device comes back to its clients: what they sent meanwhile
/// arrives in order, and they hear nothing of it.
#[tokio::test]
async fn r09_a_device_comes_back_to_its_clients() {
    let server = TestServer::start(test_config()).await;
    let device = device(&server, "r9").await;
    let mut client = client(&server, "r9").await;
    let (token, received) = device.drop_connection();
    away(&server, "device", 1.0).await;
    // Still listed, and a new client may connect meanwhile.
    assert_eq!(server.get("/devices").await.body, r#"["r9"]"#);
    let mut second = self::client(&server, "r9").await;
    client.send(&forward(json!("a"))).await;
    second.send(&forward(json!("b"))).await;
    let (mut device, resumed) =
        Side::resume(&server.url("/register_device"), token, received).await;
    assert_eq!(resumed["received"], 1);
    assert_eq!(
        device.recv_json().await,
        json!({"message_type": "client_msg", "client_id": 1, "payload": "a"})
    );
    assert_eq!(
        device.recv_json().await,
        json!({"message_type": "client_msg", "client_id": 2, "payload": "b"})
    );
    device.send(&device_forward(2, json!("to b"))).await;
    assert_eq!(second.recv_json().await["payload"], "to b");
    client.peer.expect_silence(Duration::from_millis(200)).await;
    assert_eq!(outcome(&server, "device", "resumed").await, 1.0);
    server.stop().await.unwrap();
}

/// R10: a held device's id goes to a device that registers afresh; the
/// held session ends as a departure, and its token says why.
#[tokio::test]
async fn r10_a_new_registration_takes_a_held_id() {
    let server = TestServer::start(test_config()).await;
    let device = device(&server, "r10").await;
    let mut client = client(&server, "r10").await;
    let (token, received) = device.drop_connection();
    away(&server, "device", 1.0).await;
    let mut fresh = server.device().await;
    fresh
        .send(r#"{"message_type":"register","device_id":"r10"}"#)
        .await;
    assert_eq!(fresh.recv_json().await["message_type"], "config");
    assert_eq!(client.peer.recv_error().await, "Device disconnected");
    assert_eq!(client.peer.recv_close().await.0, CloseCode::Away);
    let mut back = Peer::connect(&server.url("/register_device")).await;
    back.send(&resume_message(&token, received)).await;
    assert_eq!(
        back.recv_error().await,
        "Resume refused: the session ended while its connection was away: Device id already taken: r10"
    );
    // The new registration is the device now.
    let mut new_client = self::client(&server, "r10").await;
    new_client.send(&forward(json!(1))).await;
    assert_eq!(
        fresh.recv_json().await,
        json!({"message_type": "client_msg", "client_id": 1, "payload": 1})
    );
    assert_eq!(outcome(&server, "device", "ended_away").await, 1.0);
    server.stop().await.unwrap();
}

/// R11: a session that ends while away (its device leaves; its outbox
/// overflows) is said so to a token that comes back.
#[tokio::test]
async fn r11_a_session_that_ends_while_away_says_why() {
    let server = TestServer::start(ServerConfig {
        outbox_messages: 4,
        ..test_config()
    })
    .await;
    let device = device(&server, "r11").await;
    let client = client(&server, "r11").await;
    let (token, received) = client.drop_connection();
    away(&server, "client", 1.0).await;
    device.peer.close().await;
    away(&server, "client", 0.0).await;
    let mut back = Peer::connect(&server.url("/connect_client")).await;
    back.send(&resume_message(&token, received)).await;
    assert_eq!(
        back.recv_error().await,
        "Resume refused: the session ended while its connection was away: Device disconnected"
    );

    let mut device = self::device(&server, "r11b").await;
    let client = self::client(&server, "r11b").await;
    let (token, received) = client.drop_connection();
    away(&server, "client", 1.0).await;
    for n in 0..5 {
        device.send(&device_forward(1, json!(n))).await;
    }
    assert_eq!(
        device.recv_text().await,
        r#"{"message_type":"client_disconnected","client_id":1}"#
    );
    let mut back = Peer::connect(&server.url("/connect_client")).await;
    back.send(&resume_message(&token, received)).await;
    assert!(back.recv_error().await.starts_with(
        "Resume refused: the session ended while its connection was away: Slow consumer"
    ));
    assert_eq!(outcome(&server, "client", "ended_away").await, 2.0);
    server.stop().await.unwrap();
}

/// R12: on the device socket, a device that connects again with its token
/// keeps its clients.
#[tokio::test]
async fn r12_a_socket_device_comes_back_with_its_token() {
    let server = TestServer::start_for(DeviceTransport::Socket, test_config()).await;
    let path = server.device_socket.clone().unwrap();
    let mut socket = SocketPeer::connect(&path).await;
    socket
        .send_bytes(br#"{"message_type":"register","device_id":"r12"}"#)
        .await;
    let config = socket.recv_text().await;
    let token = offered(&config).unwrap();
    server.until_clients_see("r12").await;
    let mut client = client(&server, "r12").await;
    socket.close().await;
    away(&server, "device", 1.0).await;
    client.send(&forward(json!("held"))).await;
    let mut socket = SocketPeer::connect(&path).await;
    socket
        .send_bytes(resume_message(&token, 1).as_bytes())
        .await;
    let resumed: Value = serde_json::from_str(&socket.recv_text().await).unwrap();
    assert_eq!(resumed["message_type"], "resumed", "{resumed}");
    assert_eq!(resumed["received"], 1);
    assert_eq!(
        socket.recv_text().await,
        r#"{"message_type":"client_msg","client_id":1,"payload":"held"}"#
    );
    client.peer.expect_silence(Duration::from_millis(200)).await;
    // The spent token is refused on the socket too.
    let mut again = SocketPeer::connect(&path).await;
    again.send_bytes(resume_message(&token, 1).as_bytes()).await;
    let error: Value = serde_json::from_str(&again.recv_text().await).unwrap();
    assert_eq!(
        error["error"],
        "Resume refused: no session holds this token (each token resumes once, within the window)"
    );
    assert_eq!(again.recv_packet().await, None);
    server.stop().await.unwrap();
}

/// R13: the Go operator's client resumes on the upgrade
/// (`?resume=&received=`); a refusal is an HTTP status.
#[tokio::test]
async fn r13_a_go_operator_client_resumes_on_the_upgrade() {
    let server = TestServer::start(test_config()).await;
    let mut device = device(&server, "r13").await;
    let _other = self::device(&server, "r13-other").await;
    let mut go = Peer::connect(&server.url("/devices/r13/connect")).await;
    let token = offered(&go.recv_text().await).unwrap();
    go.send(r#"{"type":"request-offer"}"#).await;
    assert_eq!(device.recv_json().await["client_id"], 1);
    drop(go);
    away(&server, "client", 1.0).await;
    device.send(&device_forward(1, json!("held"))).await;
    let status = |path: String| {
        let url = server.url(&path);
        async move {
            let error = Peer::try_connect_with(&url, &[])
                .await
                .err()
                .expect("refused");
            common::refusal_status(&error)
        }
    };
    assert_eq!(
        status(format!("/devices/r13/connect?resume={token}")).await,
        400
    );
    assert_eq!(
        status(format!(
            "/devices/r13-other/connect?resume={token}&received=1"
        ))
        .await,
        403
    );
    assert_eq!(
        status(format!(
            "/devices/r13/connect?resume={}&received=1",
            "A".repeat(43)
        ))
        .await,
        410
    );
    let url = server.url(&format!("/devices/r13/connect?resume={token}&received=1"));
    let mut back = Peer::connect(&url).await;
    let resumed = back.recv_json().await;
    assert_eq!(resumed["message_type"], "resumed", "{resumed}");
    assert_eq!(resumed["received"], 1);
    assert_eq!(
        back.recv_text().await,
        r#"{"message_type":"device_msg","payload":"held"}"#
    );
    back.send(r#"{"type":"answer"}"#).await;
    assert_eq!(
        device.recv_json().await,
        json!({"message_type": "client_msg", "client_id": 1, "payload": {"type": "answer"}})
    );
    server.stop().await.unwrap();
}

/// R14: a polling client (both flavors) that misses its poll timeout but
/// comes back within the window keeps its session; one that does not is
/// dropped when the window passes. On a paused clock.
#[tokio::test(start_paused = true)]
async fn r14_a_polling_client_that_comes_back_within_the_window_keeps_its_session() {
    let server = TestServer::start(test_config()).await;
    let poll_timeout = ServerConfig::default().poll_timeout;
    let mut device = device(&server, "r14").await;
    let reply = http_post(server.addr, "/connect", r#"{"device_id":"r14"}"#).await;
    let reference: Value = serde_json::from_str(&reply.body).unwrap();
    let reference = reference["connection_id"].as_str().unwrap().to_owned();
    let reply = http_post(server.addr, "/polled_connections", r#"{"device_id":"r14"}"#).await;
    let go: Value = serde_json::from_str(&reply.body).unwrap();
    let go = go["connection_id"].as_str().unwrap().to_owned();
    device.send(&device_forward(1, json!("to ref"))).await;
    device.send(&device_forward(2, json!("to go"))).await;
    // The device reads meanwhile (and so answers the keepalive's pings),
    // and hears nothing of its clients.
    device.peer.expect_silence(poll_timeout + WINDOW / 2).await;
    assert_eq!(
        server
            .metric(r#"signaling_sessions_away{role="client"}"#)
            .await,
        2.0
    );
    let polled = http_post(
        server.addr,
        "/poll_messages",
        &json!({"connection_id": reference}).to_string(),
    )
    .await;
    assert_eq!(
        (polled.status, polled.body.as_str()),
        (200, r#"["to ref"]"#)
    );
    let polled = common::http_get(
        server.addr,
        &format!("/polled_connections/{go}/messages?start=0"),
        &[],
    )
    .await;
    assert_eq!(
        (polled.status, polled.body.as_str()),
        (200, r#"[{"message_type":"device_msg","payload":"to go"}]"#)
    );
    device.peer.expect_silence(Duration::from_secs(1)).await;
    assert_eq!(outcome(&server, "client", "resumed").await, 2.0);
    // Now they stop: each is held once more, then dropped.
    let quiet_until = poll_timeout + WINDOW - Duration::from_secs(2);
    device.peer.expect_silence(quiet_until).await;
    let mut gone = Vec::new();
    for _ in 0..2 {
        gone.push(device.peer.recv_text_whenever().await);
    }
    gone.sort();
    assert_eq!(
        gone,
        [
            r#"{"message_type":"client_disconnected","client_id":1}"#,
            r#"{"message_type":"client_disconnected","client_id":2}"#
        ]
    );
    assert_eq!(outcome(&server, "client", "window_passed").await, 2.0);
    server.stop().await.unwrap();
}

/// R15: signed tokens still apply on resume: an expired one is refused
/// (401), and one that does not cover the session's device too.
#[tokio::test]
async fn r15_a_resume_needs_a_token_that_covers_its_device() {
    use signaling_server::auth::{Claims, Role, mint};
    use signaling_server::secret::Secret;
    const SECRET: &[u8] = b"resume-tokens-test-secret-32-bytes!";
    let dir = common::temp_dir("resume-tokens");
    let path = dir.join("secret");
    std::fs::write(&path, SECRET).unwrap();
    let server = TestServer::start(ServerConfig {
        token_secret_file: Some(path),
        ..test_config()
    })
    .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = |role, device: &str, exp: u64| {
        mint(
            &Secret::new(SECRET),
            &Claims {
                role,
                devices: vec![device.into()],
                exp,
                nbf: None,
                iat: None,
            },
        )
        .unwrap()
    };
    let bearer = |token: String| format!("Bearer {token}");
    let connect = |credentials: String| {
        let url = server.url("/connect_client");
        async move { Peer::try_connect_with(&url, &[("authorization", &credentials)]).await }
    };
    let mut device = Peer::try_connect_with(
        &server.url("/register_device"),
        &[(
            "authorization",
            &bearer(token(Role::Device, "r15", now + 3600)),
        )],
    )
    .await
    .unwrap();
    device
        .send(r#"{"message_type":"register","device_id":"r15"}"#)
        .await;
    device.recv_json().await;
    server.until_clients_see("r15").await;
    let mut peer = connect(bearer(token(Role::Client, "r15", now + 3600)))
        .await
        .unwrap();
    let mut client = Side {
        peer: {
            peer.send(r#"{"message_type":"connect","device_id":"r15"}"#)
                .await;
            peer
        },
        token: String::new(),
        received: 0,
    };
    client.recv_text().await;
    client.recv_text().await;
    let (resume_token, received) = client.drop_connection();
    away(&server, "client", 1.0).await;
    let expired = connect(bearer(token(Role::Client, "r15", now - 60)))
        .await
        .err()
        .expect("refused");
    assert_eq!(common::refusal_status(&expired), 401);
    let mut elsewhere = connect(bearer(token(Role::Client, "other", now + 3600)))
        .await
        .unwrap();
    elsewhere
        .send(&resume_message(&resume_token, received))
        .await;
    assert_eq!(
        elsewhere.recv_error().await,
        "Resume refused: the token is for a session of another device than r15"
    );
    // That refusal spends nothing: the right credentials take it back.
    let mut back = connect(bearer(token(Role::Client, "r15", now + 3600)))
        .await
        .unwrap();
    back.send(&resume_message(&resume_token, received)).await;
    assert_eq!(back.recv_json().await["message_type"], "resumed");
    server.stop().await.unwrap();
}

/// R16: a peer that goes silent past the idle timeout is closed with 4000
/// (its session held) and may come back; on a paused clock.
#[tokio::test(start_paused = true)]
async fn r16_a_silent_peer_is_told_its_session_is_held() {
    let server = TestServer::start(ServerConfig {
        ping_interval: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(400),
        ..test_config()
    })
    .await;
    let mut device = device(&server, "r16").await;
    let mut client = client(&server, "r16").await;
    // The device keeps reading (and so answering pings); the client stops.
    let listening = tokio::spawn(async move {
        device.peer.expect_silence(Duration::from_secs(2)).await;
        device
    });
    // Not reading at all, it answers no ping; what the server sent waits
    // in its socket, the close last. Read as bytes: a websocket would
    // answer the pings first, into a socket the server has closed.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (code, reason) = raw_close(&mut client.peer).await;
    assert_eq!(code, protocol::CLOSE_SESSION_HELD);
    assert_eq!(
        reason,
        "Idle timeout: the session is held for 30s; resume it with its token"
    );
    let mut device = listening.await.unwrap();
    let (token, received) = client.drop_connection();
    away(&server, "client", 1.0).await;
    let (mut client, _) = Side::resume(&server.url("/connect_client"), token, received).await;
    device.send(&device_forward(1, json!("awake"))).await;
    assert_eq!(client.recv_json().await["payload"], "awake");
    server.stop().await.unwrap();
}

/// The close frame among the frames a server wrote to `peer`'s socket,
/// read as bytes to the end of the stream (server frames are unmasked).
async fn raw_close(peer: &mut Peer) -> (u16, String) {
    use tokio::io::AsyncReadExt;
    let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = peer.ws.get_mut() else {
        panic!("not a plain connection");
    };
    let mut bytes = Vec::new();
    let _ = tcp.read_to_end(&mut bytes).await;
    let mut at = 0;
    while at + 2 <= bytes.len() {
        let opcode = bytes[at] & 0x0f;
        let (len, start) = match bytes[at + 1] & 0x7f {
            126 => (
                usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]])),
                at + 4,
            ),
            len => (usize::from(len), at + 2),
        };
        let payload = &bytes[start..start + len];
        if opcode == 8 {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            return (code, String::from_utf8(payload[2..].to_vec()).unwrap());
        }
        at = start + len;
    }
    panic!("no close frame in {} bytes", bytes.len());
}

/// With `--redis`, a session that spans two instances is held by the
/// client's instance, which takes it back: the device on the other
/// instance hears nothing, and what it sent meanwhile arrives. Another
/// instance does not hold it, and says so.
#[tokio::test]
async fn a_session_spanning_two_instances_resumes_on_the_instance_that_holds_it() {
    let server = TestServer::start_for(DeviceTransport::OtherInstance, test_config()).await;
    let mut device = device(&server, "r-span").await;
    let mut client = Side {
        peer: server.client().await,
        token: String::new(),
        received: 0,
    };
    client
        .send(&json!({"message_type": "connect", "device_id": "r-span"}).to_string())
        .await;
    client.recv_text().await;
    assert_eq!(client.recv_json().await["message_type"], "device_info");
    client.send(&forward(json!("hello"))).await;
    assert_eq!(device.recv_json().await["payload"], "hello");
    let (token, received) = client.drop_connection();
    away(&server, "client", 1.0).await;
    device.send(&device_forward(1, json!("while away"))).await;
    // The device's instance holds no such session.
    let mut elsewhere = Peer::connect(&server.url("/connect_client")).await;
    elsewhere.send(&resume_message(&token, received)).await;
    assert_eq!(
        elsewhere.recv_error().await,
        "Resume refused: no session holds this token (each token resumes once, within the window)"
    );
    let (mut client, _) =
        Side::resume(&server.clients_url("/connect_client"), token, received).await;
    assert_eq!(client.recv_json().await["payload"], "while away");
    client.send(&forward(json!("back"))).await;
    assert_eq!(
        device.recv_json().await,
        json!({"message_type": "client_msg", "client_id": 1, "payload": "back"})
    );
    device.peer.expect_silence(Duration::from_millis(300)).await;
    server.stop().await.unwrap();
}
