//! A fake-device whose connection to the server is cut mid-session (by a
//! loopback proxy the test controls) resumes its session: the server
//! counts the resume, and its client hears nothing of it: no error, no
//! new offer.

#![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use peer::signaling::ConnectOptions;
use signaling_server::ServerConfig;
use support::cut::CuttingProxy;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

struct Device(Child);

impl Drop for Device {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn metric(options: &ConnectOptions, series: &str) -> f64 {
    let (_, body) = options.http_get("/metrics").await.unwrap();
    support::prometheus::sample_or_zero(&body, series)
}

async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < Duration::from_secs(15), "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_device_whose_connection_is_cut_resumes_and_keeps_its_client() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(signaling_server::run(
        listener,
        ServerConfig::default(),
        std::future::pending(),
    ));
    let options = ConnectOptions {
        server: format!("ws://{address}"),
        token: None,
        ca_cert: None,
        insecure: false,
    };
    let proxy = CuttingProxy::start(address).unwrap();
    let _device = Device(
        Command::new(env!("CARGO_BIN_EXE_fake-device"))
            .args(["--server", &format!("ws://{}", proxy.address)])
            .args(["--device-id", "cut-device", "--no-video"])
            .args(["--reconnect-min", "50ms", "--reconnect-max", "200ms"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    until("the device is listed", async || {
        options
            .http_get("/devices")
            .await
            .unwrap()
            .1
            .contains("cut-device")
    })
    .await;

    // A client asks for an offer and gets it.
    let url = format!("ws://{address}/connect_client");
    let (mut client, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let send = |payload: serde_json::Value| {
        Message::text(
            serde_json::json!({"message_type": "forward", "payload": payload}).to_string(),
        )
    };
    client
        .send(Message::text(
            r#"{"message_type":"connect","device_id":"cut-device"}"#,
        ))
        .await
        .unwrap();
    client
        .send(send(serde_json::json!({"type": "request-offer"})))
        .await
        .unwrap();
    let mut offers = 0;
    let next_payload = async |client: &mut tokio_tungstenite::WebSocketStream<_>| loop {
        match client.next().await {
            Some(Ok(Message::Text(text))) => {
                let value: serde_json::Value = serde_json::from_str(&text).unwrap();
                assert!(value.get("error").is_none(), "the client was told {value}");
                if value["message_type"] == "device_msg" {
                    return value["payload"].clone();
                }
            }
            Some(Ok(_)) => {}
            other => panic!("the client's connection ended: {other:?}"),
        }
    };
    while next_payload(&mut client).await["type"] != "offer" {}
    offers += 1;

    let cut = proxy.cut();
    assert_eq!(cut, 1);
    until("the device's session is held", async || {
        metric(&options, r#"signaling_sessions_away{role="device"}"#).await == 1.0
    })
    .await;
    until("the device resumed", async || {
        metric(
            &options,
            r#"signaling_session_resumes_total{role="device",outcome="resumed"}"#,
        )
        .await
            == 1.0
    })
    .await;

    // Still the same session: one device, one client, and the client's
    // next payload reaches the device's peer for it (an end of candidates,
    // which it takes in silence) without a new offer or an error.
    client
        .send(send(
            serde_json::json!({"type": "ice-candidate", "candidate": ""}),
        ))
        .await
        .unwrap();
    assert_eq!(metric(&options, "signaling_devices").await, 1.0);
    assert_eq!(metric(&options, "signaling_clients").await, 1.0);
    let quiet = tokio::time::timeout(Duration::from_millis(500), next_payload(&mut client)).await;
    if let Ok(payload) = quiet {
        // Late candidates of the first offer may come; never an offer.
        assert_ne!(payload["type"], "offer", "a new offer: {payload}");
    }
    assert_eq!(offers, 1);
    client.close(None).await.unwrap();
}
