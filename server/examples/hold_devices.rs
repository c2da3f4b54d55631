//! Registers N idle devices on a running server and holds them, to measure
//! the server's memory per idle connection:
//!
//! ```text
//! cargo run --release -p signaling-server --example hold_devices -- 127.0.0.1:8443 5000 30
//! ```
//!
//! Connections are spread over source addresses 127.0.0.1–127.0.0.254 so
//! large counts do not run out of ephemeral ports. Prints the server's
//! resident memory (from /metrics) before and after, and per device.

#![allow(clippy::unwrap_used)] // A measuring tool: a panic is the report.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

async fn resident_memory(server: SocketAddr) -> f64 {
    let mut stream = TcpStream::connect(server).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix("signaling_process_resident_memory_bytes "))
        .and_then(|v| v.trim().parse().ok())
        .expect("resident memory on /metrics")
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let server: SocketAddr = args.next().expect("server address").parse().unwrap();
    let count: usize = args.next().expect("device count").parse().unwrap();
    let hold_secs: u64 = args.next().map_or(10, |s| s.parse().unwrap());

    let before = resident_memory(server).await;
    let mut devices = Vec::with_capacity(count);
    for n in 0..count {
        let source: SocketAddr = format!("127.0.0.{}:0", 1 + n % 254).parse().unwrap();
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(source).unwrap();
        let stream = socket.connect(server).await.unwrap();
        let url = format!("ws://{server}/register_device");
        let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
        let register = format!(
            r#"{{"message_type":"register","device_id":"idle-{n}","device_info":{{"n":{n}}}}}"#
        );
        ws.send(Message::text(register)).await.unwrap();
        let config = ws.next().await.unwrap().unwrap();
        assert!(config.to_text().unwrap().contains("config"));
        devices.push(ws);
    }
    // Let the server settle (buffers released, allocator quiet).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = resident_memory(server).await;
    println!(
        "devices={count} rss_before={:.1}MiB rss_after={:.1}MiB per_device={:.0}B",
        before / 1048576.0,
        after / 1048576.0,
        (after - before) / count as f64
    );
    // Keep the devices alive (answering pings) for the rest of the hold.
    let hold = async {
        let readers = devices
            .into_iter()
            .map(|mut ws| async move { while let Some(Ok(_)) = ws.next().await {} });
        futures_util::future::join_all(readers).await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(hold_secs), hold).await;
}
