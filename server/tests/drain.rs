//! The drain before a shutdown (PROTOCOL.md, "Shutting down"): `/readyz`
//! answers 503 while `/healthz` stays 200, new connections are refused,
//! the sessions open go on, and only then are they closed with 1001.

#![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

mod common;

use std::time::Duration;

use common::{Peer, http_get, http_post, refusal_status, test_config};
use signaling_server::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

// The clock is paused: the drain period is virtual time.
#[tokio::test(start_paused = true)]
async fn a_drain_refuses_newcomers_and_keeps_sessions_until_its_end() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = ServerConfig {
        drain_period: Duration::from_secs(30),
        ping_interval: Duration::from_secs(3600),
        idle_timeout: Duration::from_secs(7200),
        ..test_config()
    };
    let server = signaling_server::Server::bind(listener, config).unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    let url = |path: &str| format!("ws://{addr}{path}");
    assert_eq!(http_get(addr, "/readyz", &[]).await.status, 200);
    let mut device = Peer::connect(&url("/register_device")).await;
    device
        .send(r#"{"message_type":"register","device_id":"cvd-1"}"#)
        .await;
    device.recv_json().await;
    let mut client = Peer::connect(&url("/connect_client")).await;
    client
        .send(r#"{"message_type":"connect","device_id":"cvd-1"}"#)
        .await;
    client.recv_json().await;
    client.recv_json().await;

    stop.send(()).unwrap();
    common::eventually("the drain begins", || async {
        http_get(addr, "/readyz", &[]).await.status == 503
    })
    .await;
    let readyz = http_get(addr, "/readyz", &[]).await;
    assert_eq!(readyz.body, "draining\n");
    assert_eq!(http_get(addr, "/healthz", &[]).await.status, 200);
    // Newcomers are refused, on every door.
    let refused = Peer::try_connect_with(&url("/connect_client"), &[])
        .await
        .err()
        .unwrap();
    assert_eq!(refusal_status(&refused), 503);
    let polling = http_post(addr, "/connect", r#"{"device_id":"cvd-1"}"#).await;
    assert_eq!(polling.status, 503, "{}", polling.body);
    // The session open goes on through the drain.
    tokio::time::sleep(Duration::from_secs(28)).await;
    client
        .send(r#"{"message_type":"forward","payload":"during the drain"}"#)
        .await;
    assert_eq!(device.recv_json().await["payload"], "during the drain");
    // At its end, the close: 1001 to both.
    let (code, reason) = client.recv_close().await;
    assert_eq!(
        (code, reason.as_str()),
        (CloseCode::Away, "Server shutting down")
    );
    let (code, _) = device.recv_close().await;
    assert_eq!(code, CloseCode::Away);
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

// Without a drain period (the default), the close comes at once.
#[tokio::test(start_paused = true)]
async fn without_a_drain_period_the_close_is_at_once() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = signaling_server::Server::bind(listener, test_config()).unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let (cut, cut_short) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run_until(
        async move {
            let _ = stopped.await;
        },
        async move {
            let _ = cut_short.await;
        },
    ));
    let mut device = Peer::connect(&format!("ws://{addr}/register_device")).await;
    let started = tokio::time::Instant::now();
    stop.send(()).unwrap();
    let (code, _) = device.recv_close().await;
    assert_eq!(code, CloseCode::Away);
    assert!(started.elapsed() < Duration::from_secs(1));
    task.await.unwrap().unwrap();
    drop(cut);
}
