//! A device's connection to the server: the seed's `/register_device`
//! websocket, or the device socket (a unix `SOCK_SEQPACKET` socket, one
//! message per packet), as Cuttlefish's devices reach its Go operator.

use std::path::Path;

use anyhow::{Context as _, Result, anyhow};
use futures_util::SinkExt;
use tokio_seqpacket::UnixSeqpacket;
use tokio_tungstenite::tungstenite::Message;

use crate::signaling::{ConnectError, ConnectOptions, Socket, next_text};

/// The largest packet the server sends on the device socket: its message
/// limit plus the envelope, well inside this.
const MAX_PACKET: usize = 1 << 20;

/// Where a device registers.
#[derive(Debug)]
pub enum DeviceLink {
    Websocket(Box<Socket>),
    Socket(UnixSeqpacket),
}

impl DeviceLink {
    /// Opens the device socket at `path`, or else the websocket `options`
    /// name.
    pub async fn open(
        options: &ConnectOptions,
        device_socket: Option<&Path>,
    ) -> Result<Self, ConnectError> {
        // `--server unix:PATH` names a device socket too.
        let from_server = options.server.strip_prefix("unix:").map(Path::new);
        match device_socket.or(from_server) {
            Some(path) => UnixSeqpacket::connect(path)
                .await
                .map(Self::Socket)
                .map_err(|e| {
                    ConnectError {
                        message: format!(
                            "cannot connect to the device socket {}: {e}",
                            path.display()
                        ),
                        // A server that is restarting recreates its socket.
                        retryable: true,
                    }
                }),
            None => Ok(Self::Websocket(Box::new(
                options.connect(protocol::REGISTER_DEVICE_PATH).await?,
            ))),
        }
    }

    /// Sends one message.
    pub async fn send(&mut self, text: String) -> Result<()> {
        match self {
            Self::Websocket(socket) => socket.send(Message::text(text)).await?,
            Self::Socket(socket) => {
                socket.send(text.as_bytes()).await?;
            }
        }
        Ok(())
    }

    /// The next message; `None` when the server closed the connection. A
    /// websocket close frame becomes an error naming its code and reason.
    pub async fn next_text(&mut self) -> Result<Option<String>> {
        match self {
            Self::Websocket(socket) => next_text(socket).await,
            Self::Socket(socket) => {
                let mut buffer = vec![0u8; MAX_PACKET];
                let info = match socket.recv(&mut buffer).await {
                    Ok(info) => info,
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
                    Err(e) => return Err(e).context("reading the device socket"),
                };
                if info.truncated() {
                    return Err(anyhow!("the server sent a packet over {MAX_PACKET} bytes"));
                }
                buffer.truncate(info.bytes_read());
                if buffer.is_empty() {
                    return Ok(None);
                }
                String::from_utf8(buffer)
                    .map(Some)
                    .context("the server sent a packet that is not UTF-8")
            }
        }
    }
}
