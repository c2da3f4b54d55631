//! `client-cli raw`: a line console on a signaling websocket.

use anyhow::Result;
use futures_util::{SinkExt, StreamExt};
use peer::signaling::ConnectOptions;
use protocol::{ClientToServer, Connect, DeviceToServer, Register};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, clap::Subcommand)]
pub enum Role {
    /// Open /register_device; with an id, send the register for you.
    Device { device_id: Option<String> },
    /// Open /connect_client; with an id, send the connect for you.
    Client { device_id: Option<String> },
}

pub async fn run(options: &ConnectOptions, role: Role) -> Result<()> {
    let (path, first) = match &role {
        Role::Device { device_id } => (
            protocol::REGISTER_DEVICE_PATH,
            device_id.as_ref().map(|id| {
                DeviceToServer::Register(Register {
                    device_id: id.as_str().into(),
                    device_info: None,
                    device_port: None,
                })
                .encode()
            }),
        ),
        Role::Client { device_id } => (
            protocol::CONNECT_CLIENT_PATH,
            device_id.as_ref().map(|id| {
                ClientToServer::Connect(Connect {
                    device_id: id.as_str().into(),
                })
                .encode()
            }),
        ),
    };
    let mut socket = options.connect(path).await?;
    eprintln!(
        "connected to {}; each line you type is sent as one frame",
        options.endpoint_url(path)?
    );
    if let Some(first) = first {
        println!("> {first}");
        socket.send(Message::text(first)).await?;
    }
    let mut lines = stdin_lines();
    let mut stdin_open = true;
    loop {
        tokio::select! {
            line = lines.recv(), if stdin_open => match line {
                Some(line) if line.trim().is_empty() => {}
                Some(line) => socket.send(Message::text(line)).await?,
                None => {
                    // End of input: close politely and print what is left.
                    stdin_open = false;
                    socket.close(None).await?;
                }
            },
            message = socket.next() => match message {
                Some(Ok(Message::Text(text))) => println!("{text}"),
                // A normal close (1000, or none: the answer to ours) ends
                // well; any other code is how the server ended the
                // session, and the exit status says so.
                Some(Ok(Message::Close(frame))) => match frame {
                    Some(frame) if u16::from(frame.code) != 1000 => {
                        anyhow::bail!("closed by the server: {} {}", u16::from(frame.code), frame.reason)
                    }
                    _ => {
                        eprintln!("closed");
                        return Ok(());
                    }
                },
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => return Ok(()),
            },
        }
    }
}

/// Standard input, line by line. Read on a plain thread rather than with
/// tokio's stdin, whose blocking read would keep the runtime (and so the
/// process) alive after the server has closed the connection.
fn stdin_lines() -> mpsc::UnboundedReceiver<String> {
    let (sender, receiver) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}
