//! The device socket: devices register on a unix `SOCK_SEQPACKET` socket,
//! as Cuttlefish's devices do with its Go operator (its default is
//! `/run/cuttlefish/operator`). One JSON message per packet, the seed's
//! device messages both ways; a device here is the same to clients as one
//! on `/register_device`: same registry, ids, announcements and limits.
//!
//! What differs from a websocket, and why (PROTOCOL.md, "The device
//! socket"): there are no close frames, so a session that ends with an
//! error gets that error as its last packet (including the ones a
//! websocket says with a close code alone: too big, not UTF-8, shutting
//! down), then the socket is shut down. There are no pings and no idle
//! timeout: when a device's process exits, the kernel ends its socket. Who
//! may connect is who may write the socket file (its mode, owner and
//! group are settable); the peer's uid, gid and pid (`SO_PEERCRED`) are in
//! every log line of the connection, and can be limited to a list of uids.
//!
//! Like `websocket/connection.rs`, this file only moves packets and keeps
//! time; every decision is the core's.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::ops::ControlFlow;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use support::seqpacket::{self, Packet};
use tokio::time::{Instant, sleep_until, timeout_at};
use tokio_seqpacket::{UnixSeqpacket, UnixSeqpacketListener};
use tracing::{Instrument, debug, field, info, info_span, warn};

use crate::ServerState;
use crate::config::DeviceSocketConfig;
use crate::core::session::{ControlSession, DeviceSession};
use crate::core::{Batch, Connection, Due, Keepalive, Outgoing, ServerError, Session};
use crate::door::{self, Closed, Traffic, now};
use crate::encode;
use crate::http::Refusal;

/// Why the device socket cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum DeviceSocketError {
    #[error("{0}: another server is listening on this socket")]
    InUse(PathBuf),
    #[error("{0}: exists and is not a socket; not replacing it")]
    NotASocket(PathBuf),
    #[error("{path}: cannot {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        source: io::Error,
    },
}

fn io_error(path: &Path, action: &'static str) -> impl FnOnce(io::Error) -> DeviceSocketError {
    let path = path.to_owned();
    move |source| DeviceSocketError::Io {
        path,
        action,
        source,
    }
}

/// What a unix socket of this server takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SocketKind {
    /// Devices registering (`--device-socket`).
    Devices,
    /// The Go operator's control connections: pre-registration
    /// (`--control-socket`).
    Control,
}

impl SocketKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Devices => "device socket",
            Self::Control => "control socket",
        }
    }
}

/// A bound device or control socket, not yet serving.
#[derive(Debug)]
pub(crate) struct DeviceSocket {
    kind: SocketKind,
    listener: UnixSeqpacketListener,
    path: PathBuf,
    /// The socket file made here (device, inode): removed at shutdown only
    /// if it is still this one.
    file: (u64, u64),
}

/// Binds the socket at `config.path` with its mode and owner. A socket
/// file that nothing answers on (a server that is gone) is replaced.
pub(crate) fn bind(
    config: &DeviceSocketConfig,
    kind: SocketKind,
) -> Result<DeviceSocket, DeviceSocketError> {
    let path = &config.path;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            match UnixSeqpacket::connect_blocking(path) {
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    std::fs::remove_file(path)
                        .map_err(io_error(path, "remove the stale socket"))?;
                }
                // Connected, or a live socket of another kind.
                _ => return Err(DeviceSocketError::InUse(path.clone())),
            }
        }
        Ok(_) => return Err(DeviceSocketError::NotASocket(path.clone())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(path, "inspect the path")(e)),
    }
    let listener = UnixSeqpacketListener::bind(path).map_err(io_error(path, "bind"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(config.mode))
        .map_err(io_error(path, "set the socket's mode"))?;
    if config.owner.is_some() || config.group.is_some() {
        std::os::unix::fs::chown(path, config.owner, config.group)
            .map_err(io_error(path, "set the socket's owner"))?;
    }
    let meta = std::fs::metadata(path).map_err(io_error(path, "inspect the socket"))?;
    Ok(DeviceSocket {
        kind,
        listener,
        path: path.clone(),
        file: (meta.dev(), meta.ino()),
    })
}

impl DeviceSocket {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn kind(&self) -> SocketKind {
        self.kind
    }

    /// Accepts devices until the server shuts down, then removes the
    /// socket file.
    pub(crate) async fn serve(self, state: Arc<ServerState>) {
        let Self {
            kind,
            mut listener,
            path,
            file,
        } = self;
        loop {
            let accepted = tokio::select! {
                () = state.shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok(socket) => {
                    let task = serve_connection(socket, kind, state.clone());
                    state.tracker.spawn(task);
                }
                Err(e) => {
                    // Out of file descriptors or similar: back off.
                    warn!(socket = kind.name(), error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
        drop(listener);
        let still_ours = std::fs::metadata(&path).is_ok_and(|m| (m.dev(), m.ino()) == file);
        if still_ours && let Err(e) = std::fs::remove_file(&path) {
            warn!(socket = kind.name(), path = %path.display(), error = %e, "cannot remove the socket");
        }
    }
}

/// One connection: checked (uid, shutdown, connection limit), then driven
/// until it ends.
fn serve_connection(
    socket: UnixSeqpacket,
    kind: SocketKind,
    state: Arc<ServerState>,
) -> impl Future<Output = ()> {
    let credentials = socket.peer_cred().ok();
    let uid = credentials.map(|c| c.uid());
    let (gid, pid) = (
        credentials.map(|c| c.gid()),
        credentials.and_then(|c| c.pid()),
    );
    let span = match kind {
        SocketKind::Devices => info_span!(
            "device",
            transport = "socket",
            uid,
            gid,
            pid,
            device_id = field::Empty,
        ),
        SocketKind::Control => info_span!("control", uid, gid, pid),
    };
    async move {
        let refusal = if !uid_allowed(&state, kind, uid) {
            Some(Refusal::UidNotAllowed)
        } else if state.draining.is_cancelled() {
            Some(Refusal::ShuttingDown)
        } else {
            None
        };
        let permit = match refusal.map_or_else(
            || state.limiter.try_acquire_local().map_err(Refusal::from),
            Err,
        ) {
            Ok(permit) => permit,
            Err(refusal) => {
                refusal.log_on_socket(kind.name());
                refusal.count(&state);
                let error = protocol::ServerToDevice::Error(protocol::ErrorMsg {
                    error: refusal.text().into(),
                })
                .encode();
                let deadline = Instant::now() + state.config.close_timeout;
                let _ = timeout_at(deadline, socket.send(error.as_bytes())).await;
                let _ = socket.shutdown(std::net::Shutdown::Both);
                return;
            }
        };
        let gauge = state.core.metrics.socket_connections.clone();
        gauge.inc();
        let now = now();
        let core = state.core.clone();
        // No idle timeout and no pings: the kernel ends the socket of a
        // process that is gone.
        let keepalive = Keepalive {
            idle: None,
            ping: None,
        };
        match kind {
            SocketKind::Devices => {
                let session = DeviceSession::new(core.clone(), core.outbox(), now);
                drive(socket, Connection::new(session, keepalive, now), &state).await;
            }
            SocketKind::Control => {
                info!("control connection");
                let session = ControlSession::new(core.clone(), core.outbox());
                drive(socket, Connection::new(session, keepalive, now), &state).await;
            }
        }
        gauge.dec();
        drop(permit);
    }
    .instrument(span)
}

fn uid_allowed(state: &ServerState, kind: SocketKind, uid: Option<u32>) -> bool {
    let config = match kind {
        SocketKind::Devices => &state.config.device_socket,
        SocketKind::Control => &state.config.control_socket,
    };
    let allowed = config
        .as_ref()
        .and_then(|socket| socket.allowed_uids.as_ref());
    match (allowed, uid) {
        (None, _) => true,
        (Some(allowed), Some(uid)) => allowed.contains(&uid),
        (Some(_), None) => false,
    }
}

/// How a connection ends.
#[derive(Debug)]
enum Ending {
    /// Send this error (unless the core already queued it) and shut down.
    Close(ServerError),
    /// The device closed its end.
    PeerClosed,
    /// The socket failed.
    Gone,
}

impl Ending {
    /// As the line and the metrics of its end say it.
    fn closed(&self) -> Closed<'_> {
        match self {
            Self::Close(error) => Closed::ByServer(error),
            Self::PeerClosed => Closed::ByPeer {
                code: None,
                reason: None,
            },
            Self::Gone => Closed::Lost,
        }
    }
}

/// Runs a device's connection until it ends. The connection (and with it
/// the registration) is dropped as soon as the session is over, which
/// announces the departure to its clients.
async fn drive<S: Session>(socket: UnixSeqpacket, mut conn: Connection<S>, state: &ServerState) {
    let config = &state.config;
    let mut batch = Batch::default();
    let mut traffic = Traffic::new();
    let cancelled = state.shutdown.cancelled();
    tokio::pin!(cancelled);
    let ending = loop {
        let wake = Instant::from_std(conn.poll_timeout());
        tokio::select! {
            biased;
            () = &mut cancelled => break Ending::Close(ServerError::ShuttingDown),
            () = conn.outbox().next_batch(&mut batch) => {
                if batch.overflowed {
                    break Ending::Close(conn.slow_consumer());
                }
                let written = door::unless_stuck(
                    write_batch(&socket, &mut batch, state, &mut traffic),
                    &conn,
                    cancelled.as_mut(),
                )
                .await
                .unwrap_or_else(|error| Err(Ending::Close(error)));
                batch.items = VecDeque::new();
                match written {
                    Ok(None) => {}
                    Ok(Some(ending)) | Err(ending) => break ending,
                }
            }
            ready = socket.as_async_fd().readable() => {
                let Ok(mut ready) = ready else { break Ending::Gone };
                let mut ending = None;
                let received = seqpacket::receive_ready(&mut ready, config.max_message_bytes, |packet| {
                    match packet {
                        Packet::Text(text) => {
                            state.core.metrics.bytes_in.inc_by(text.len() as u64);
                            traffic.received(text.len());
                            conn.on_text(text, now());
                            return ControlFlow::Continue(());
                        }
                        Packet::TooBig => ending = Some(Ending::Close(ServerError::MessageTooBig {
                            limit: config.max_message_bytes,
                        })),
                        Packet::NotUtf8 => ending = Some(Ending::Close(ServerError::InvalidUtf8)),
                        Packet::End => ending = Some(Ending::PeerClosed),
                    }
                    ControlFlow::Break(())
                });
                if let Err(e) = received {
                    debug!(error = %e, "device socket read failed");
                    break Ending::Gone;
                }
                if let Some(ending) = ending {
                    break ending;
                }
            }
            () = sleep_until(wake) => match conn.handle_timeout(now()) {
                Some(Due::End(error)) => break Ending::Close(error),
                // No pings on this socket (the keepalive asks for none).
                Some(Due::Ping) | None => {}
            },
        }
    };
    let queued_by_core = matches!(&ending, Ending::Close(_)) && conn.outbox().is_closing();
    drop(conn);
    if let Ending::Close(error) = &ending {
        debug!(reason = %error, "closing");
        // The core queued its fatal errors (with their error frame) and
        // they were written; an ending found here (too big, not UTF-8,
        // shutdown) is said now, as the last packet, where a websocket
        // would say it with a close code. A slow consumer is past
        // listening.
        let say_it = !queued_by_core && !matches!(error, ServerError::SlowConsumer { .. });
        if say_it {
            if error.sends_error_frame() || error.is_fatal() {
                state.core.metrics.error_sent(error);
            }
            let deadline = Instant::now() + config.close_timeout;
            let frame = encode::error_frame(error);
            let _ = timeout_at(deadline, socket.send(frame.as_bytes())).await;
        }
        let _ = socket.shutdown(std::net::Shutdown::Both);
    }
    door::ended(&state.core.metrics, S::ROLE, ending.closed(), &traffic);
}

/// Writes a batch, one packet per message, stopping at a close.
async fn write_batch(
    socket: &UnixSeqpacket,
    batch: &mut Batch,
    state: &ServerState,
    traffic: &mut Traffic,
) -> Result<Option<Ending>, Ending> {
    let mut close = None;
    let mut frames = Vec::with_capacity(batch.items.len());
    for item in batch.items.drain(..) {
        if let Outgoing::Close(error) = item {
            close = Some(Ending::Close(error));
            break;
        }
        if let Some(text) = encode::frame(item) {
            state.core.metrics.bytes_out.inc_by(text.len() as u64);
            traffic.sent(text.len());
            frames.push(text);
        }
    }
    if let Err(e) = seqpacket::send_all(socket, &frames).await {
        debug!(error = %e, "device socket write failed");
        return Err(Ending::Gone);
    }
    door::written(state, batch, None);
    Ok(close)
}
