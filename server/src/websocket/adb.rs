//! `/devices/{id}/adb`: a websocket bridged to the device's adb port on
//! 127.0.0.1, as the Go operator does (PROTOCOL.md, "The adb bridge").
//! Every websocket message's bytes go to the TCP stream; what the stream
//! sends comes back as binary messages. Bytes only: this door decides
//! nothing but when the bridge ends.

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

/// The largest websocket message the bridge takes from a browser: adb's
/// own packets are at most 1 MiB of payload plus a 24-byte header.
pub(crate) const ADB_MESSAGE_LIMIT: usize = (1 << 20) + 24;

/// How much of the adb stream one binary message carries at most.
const READ_CHUNK: usize = 16 * 1024;

/// Copies both ways until either side ends or the server shuts down.
pub(crate) async fn bridge<T>(
    mut ws: WebSocketStream<T>,
    mut adb: TcpStream,
    shutdown: CancellationToken,
    token_expires: Option<std::time::Instant>,
) where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut buffer = vec![0u8; READ_CHUNK];
    let (mut to_device, mut from_browser) = (0u64, 0u64);
    let expiry = async {
        match token_expires {
            Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(expiry);
    let why = loop {
        tokio::select! {
            () = shutdown.cancelled() => break "the server is shutting down",
            () = &mut expiry => break "its token expired",
            message = ws.next() => match message {
                Some(Ok(Message::Binary(bytes))) => {
                    from_browser += bytes.len() as u64;
                    if adb.write_all(&bytes).await.is_err() {
                        break "the adb connection failed";
                    }
                }
                Some(Ok(Message::Text(text))) => {
                    from_browser += text.len() as u64;
                    if adb.write_all(text.as_bytes()).await.is_err() {
                        break "the adb connection failed";
                    }
                }
                Some(Ok(Message::Close(_))) | None => break "the browser left",
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    debug!(error = %e, "adb bridge websocket error");
                    break "the websocket failed";
                }
            },
            read = adb.read(&mut buffer) => match read {
                Ok(0) => break "adb closed its connection",
                Ok(n) => {
                    to_device += n as u64;
                    if ws.send(Message::binary(buffer[..n].to_vec())).await.is_err() {
                        break "the websocket failed";
                    }
                }
                Err(_) => break "the adb connection failed",
            },
        }
    };
    info!(
        reason = why,
        bytes_to_browser = to_device,
        bytes_from_browser = from_browser,
        "adb bridge closed"
    );
    let close = (why == "its token expired").then(|| {
        let error = crate::core::ServerError::TokenExpired;
        tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: 1008.into(),
            reason: error.to_string().into(),
        }
    });
    let _ = ws.close(close).await;
    let _ = adb.shutdown().await;
}
