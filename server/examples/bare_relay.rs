//! A bare websocket relay: the floor `cargo xtask bench` measures the
//! server against. It is not the server: no validation, no limits, no
//! metrics, one client per device.
//!
//! A device's first frame registers it (it gets `config`); a client's first
//! frame names its device (it gets `config` and `device_info`). From then on
//! every frame is forwarded to the other side as it came, unparsed. Drive it
//! with `client-cli bench relay --bare` (or `churn --bare`, where it stands
//! for a bare tokio-tungstenite accept loop).
//!
//! ```text
//! cargo run --release -p signaling-server --example bare_relay -- 127.0.0.1:9000
//! ```

#![allow(clippy::unwrap_used)] // A measuring tool: a panic is the report.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// A registered device: where its client's frames go, and how it learns
/// where its own frames go.
struct Device {
    inbox: mpsc::UnboundedSender<Message>,
    client: oneshot::Sender<mpsc::UnboundedSender<Message>>,
}

type Devices = Arc<Mutex<HashMap<String, Device>>>;

#[tokio::main]
async fn main() {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let listener = TcpListener::bind(&address).await.unwrap();
    println!("bare relay on ws://{}", listener.local_addr().unwrap());
    let devices: Devices = Arc::default();
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        stream.set_nodelay(true).unwrap();
        tokio::spawn(serve(stream, devices.clone()));
    }
}

/// The string value of `"key":"…"` in `text`, found without parsing.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let start = text.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let end = start + text[start..].find('"')?;
    Some(&text[start..end])
}

async fn serve(stream: TcpStream, devices: Devices) {
    // 4 KiB read buffers: a large 4 KiB message takes one read, the
    // plain way to make a bare relay fast (at 4 KiB of memory per
    // connection that the server does not spend).
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(64 * 1024);
    let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    let (mut sink, mut frames) = ws.split();
    let Some(Ok(Message::Text(first))) = frames.next().await else {
        return;
    };
    let (inbox, mut outbox) = mpsc::unbounded_channel::<Message>();
    let config_frame = Message::text(r#"{"message_type":"config","ice_servers":[]}"#);
    let peer = if first.contains(r#""message_type":"register""#) {
        let Some(id) = field(&first, "device_id") else {
            return;
        };
        let (client, attached) = oneshot::channel();
        devices
            .lock()
            .unwrap()
            .insert(id.to_owned(), Device { inbox, client });
        sink.send(config_frame).await.unwrap();
        // Frames only flow once a client is attached.
        let Ok(peer) = attached.await else { return };
        peer
    } else {
        let Some(id) = field(&first, "device_id") else {
            return;
        };
        let Some(device) = devices.lock().unwrap().remove(id) else {
            return;
        };
        let _ = device.client.send(inbox);
        sink.send(config_frame).await.unwrap();
        sink.send(Message::text(
            r#"{"message_type":"device_info","device_info":null}"#,
        ))
        .await
        .unwrap();
        device.inbox
    };
    // Writer: everything for this socket, one write per batch.
    let writer = tokio::spawn(async move {
        while let Some(message) = outbox.recv().await {
            if sink.feed(message).await.is_err() {
                return;
            }
            while let Ok(message) = outbox.try_recv() {
                if sink.feed(message).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    // Reader: every frame to the peer, unparsed.
    while let Some(Ok(message)) = frames.next().await {
        if message.is_text() && peer.send(message).is_err() {
            break;
        }
    }
    writer.abort();
}
