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
use crate::core::resume::{ConnectionEnd, Handoff, Replay, ReplayFrame, ResumeDoor, TicketEvent};
use crate::core::session::{ControlSession, DeviceSession};
use crate::core::{Batch, Connection, Due, Keepalive, Outgoing, ServerError, Session};
use crate::door::{self, Closed, Traffic, now};
use crate::encode;
use crate::http::Refusal;
use crate::limits::Permit;

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
                let session = DeviceSession::new(core.clone(), core.outbox(), now)
                    .resumable_on(ResumeDoor::DeviceSocket);
                drive(
                    socket,
                    permit,
                    Connection::new(session, keepalive, now),
                    &state,
                )
                .await;
            }
            SocketKind::Control => {
                info!("control connection");
                let session = ControlSession::new(core.clone(), core.outbox());
                drive(
                    socket,
                    permit,
                    Connection::new(session, keepalive, now),
                    &state,
                )
                .await;
            }
        }
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
#[derive(Debug, Clone)]
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

    /// As the core weighs it. A socket has no close frames: its end is its
    /// device's only goodbye, and the one a device process that restarts
    /// or reconnects gives too, so it holds the session.
    fn end(&self) -> ConnectionEnd {
        match self {
            Self::Close(_) => ConnectionEnd::Server,
            Self::PeerClosed | Self::Gone => ConnectionEnd::Lost,
        }
    }
}

/// What serving one socket came to.
enum Served {
    Ended(Ending),
    /// Its first packet was a `resume`: the socket is for the session that
    /// token names.
    Resume {
        token: String,
        received: u64,
    },
    /// A resume handed the session a new socket while this one was up.
    Replaced(Handoff),
}

/// A device's socket and the place it holds: what a resume hands to the
/// session it takes back.
struct Held {
    socket: UnixSeqpacket,
    /// Released with the socket.
    _permit: Permit,
}

impl ReplayFrame for () {
    fn bytes(&self) -> usize {
        0
    }
}

/// Runs a session until it ends, over every socket it has. The connection
/// (and with it the registration) is dropped as soon as the session is
/// over, which announces the departure to its clients.
async fn drive<S: Session>(
    socket: UnixSeqpacket,
    permit: Permit,
    mut conn: Connection<S>,
    state: &ServerState,
) {
    let config = &state.config;
    let metrics = &state.core.metrics;
    let gauge = metrics.socket_connections.clone();
    gauge.inc();
    let mut io = Io {
        state,
        batch: Batch::default(),
        // A device reads what its socket accepted, even after the server
        // is gone: written is delivered, and nothing is kept.
        replay: Replay::new(state.core.settings.outbox),
        traffic: Traffic::new(),
        offer: None,
    };
    let cancelled = state.shutdown.cancelled();
    tokio::pin!(cancelled);
    let mut held = Held {
        socket,
        _permit: permit,
    };
    let mut opening = true;
    let (ending, held) = loop {
        let served = serve(
            &held.socket,
            &mut conn,
            &mut io,
            opening,
            cancelled.as_mut(),
        )
        .await;
        opening = false;
        let ending = match served {
            Served::Resume { token, received } => {
                gauge.dec();
                return hand_over(held, state, &token, received).await;
            }
            Served::Replaced(mut handoff) => {
                info!("connection replaced: the session was resumed on a new one");
                let transport = std::mem::replace(&mut handoff.transport, Box::new(()));
                let old = std::mem::replace(&mut held, adopt(transport));
                let _ = old.socket.shutdown(std::net::Shutdown::Both);
                match take_back(&held.socket, &mut conn, &mut io, handoff, None).await {
                    Ok(()) => continue,
                    Err(refused) => break (Ending::Close(refused), Some(held)),
                }
            }
            Served::Ended(ending) => ending,
        };
        let holds = ending.end().holds_session()
            && conn.session().ticket().is_some()
            && !conn.outbox().is_closing();
        if !holds {
            break (ending, Some(held));
        }
        let _ = held.socket.shutdown(std::net::Shutdown::Both);
        drop(held);
        gauge.dec();
        let away_since = now();
        if let Some(ticket) = conn.session().ticket() {
            ticket.park(away_since);
        }
        conn.park();
        let window = state.core.resumes.window();
        door::away(metrics, S::ROLE, ending.closed(), window);
        match door::wait_away(&mut conn, cancelled.as_mut()).await {
            door::Away::Back(mut handoff) => {
                gauge.inc();
                let transport = std::mem::replace(&mut handoff.transport, Box::new(()));
                held = adopt(transport);
                let away_for = now().saturating_duration_since(away_since);
                let back = take_back(&held.socket, &mut conn, &mut io, handoff, Some(away_for));
                if let Err(refused) = back.await {
                    door::not_resumed(metrics, S::ROLE, Some(&refused));
                    break (Ending::Close(refused), Some(held));
                }
            }
            door::Away::Expired => {
                door::not_resumed(metrics, S::ROLE, None);
                break (ending, None);
            }
            door::Away::Ended(reason) => {
                door::not_resumed(metrics, S::ROLE, Some(&reason));
                if let Some(ticket) = conn.session().ticket() {
                    ticket.ended_while_away(&reason);
                }
                break (Ending::Close(reason), None);
            }
        }
    };
    let queued_by_core = matches!(&ending, Ending::Close(_)) && conn.outbox().is_closing();
    drop(conn);
    if let Some(held) = held {
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
                    metrics.error_sent(error);
                }
                let deadline = Instant::now() + config.close_timeout;
                let frame = encode::error_frame(error);
                let _ = timeout_at(deadline, held.socket.send(frame.as_bytes())).await;
            }
            let _ = held.socket.shutdown(std::net::Shutdown::Both);
        }
        gauge.dec();
    }
    door::ended(metrics, S::ROLE, ending.closed(), &io.traffic);
}

/// What one session's sockets share, besides the core connection.
struct Io<'a> {
    state: &'a ServerState,
    batch: Batch,
    /// The count of packets written in the session.
    replay: Replay<()>,
    traffic: Traffic,
    /// The resume token the device has not been given: it goes into the
    /// `config` written first.
    offer: Option<String>,
}

/// Serves one socket of the session until it ends.
async fn serve<S: Session>(
    socket: &UnixSeqpacket,
    conn: &mut Connection<S>,
    io: &mut Io<'_>,
    opening: bool,
    mut cancelled: std::pin::Pin<&mut tokio_util::sync::WaitForCancellationFuture<'_>>,
) -> Served {
    let state = io.state;
    let config = &state.config;
    loop {
        let wake = Instant::from_std(conn.poll_timeout());
        tokio::select! {
            biased;
            () = &mut cancelled => return Served::Ended(Ending::Close(ServerError::ShuttingDown)),
            () = conn.outbox().next_batch(&mut io.batch) => {
                if io.batch.overflowed {
                    return Served::Ended(Ending::Close(conn.slow_consumer()));
                }
                let written = door::unless_stuck(
                    write_batch(socket, io),
                    conn,
                    cancelled.as_mut(),
                )
                .await
                .unwrap_or_else(|error| Err(Ending::Close(error)));
                io.batch.items = VecDeque::new();
                match written {
                    Ok(None) => {}
                    Ok(Some(ending)) | Err(ending) => return Served::Ended(ending),
                }
            }
            ready = socket.as_async_fd().readable() => {
                let Ok(mut ready) = ready else { return Served::Ended(Ending::Gone) };
                let mut served = None;
                let received = seqpacket::receive_ready(&mut ready, config.max_message_bytes, |packet| {
                    match packet {
                        Packet::Text(text) => {
                            state.core.metrics.bytes_in.inc_by(text.len() as u64);
                            if opening
                                && conn.frames_in() == 0
                                && let Some(resume) = protocol::Resume::opening(text)
                            {
                                served = Some(match resume {
                                    Ok(resume) => Served::Resume {
                                        token: resume.token.into_owned(),
                                        received: resume.received,
                                    },
                                    Err(e) => Served::Ended(Ending::Close(ServerError::ResumeRefused(
                                        format!("Resume refused: {e}"),
                                    ))),
                                });
                                return ControlFlow::Break(());
                            }
                            io.traffic.received(text.len());
                            conn.on_text(text, now());
                            if io.offer.is_none() {
                                io.offer = conn.session_mut().take_resume_offer();
                            }
                            return ControlFlow::Continue(());
                        }
                        Packet::TooBig => served = Some(Served::Ended(Ending::Close(ServerError::MessageTooBig {
                            limit: config.max_message_bytes,
                        }))),
                        Packet::NotUtf8 => served = Some(Served::Ended(Ending::Close(ServerError::InvalidUtf8))),
                        Packet::End => served = Some(Served::Ended(Ending::PeerClosed)),
                    }
                    ControlFlow::Break(())
                });
                if let Err(e) = received {
                    debug!(error = %e, "device socket read failed");
                    return Served::Ended(Ending::Gone);
                }
                if let Some(served) = served {
                    return served;
                }
            }
            event = door::ticket_event(conn.session()) => match event {
                TicketEvent::Handoff(handoff) => return Served::Replaced(handoff),
                TicketEvent::Released => {}
            },
            () = sleep_until(wake) => match conn.handle_timeout(now()) {
                Some(Due::End(error)) => return Served::Ended(Ending::Close(error)),
                // No pings on this socket (the keepalive asks for none).
                Some(Due::Ping) | None => {}
            },
        }
    }
}

/// The socket a resume handed over: always one of this door's, which its
/// claim checked.
fn adopt(transport: Box<dyn std::any::Any + Send>) -> Held {
    match transport.downcast::<Held>() {
        Ok(held) => *held,
        Err(_) => unreachable!("a device socket session is handed device sockets only"),
    }
}

/// Starts a session again on the socket a resume handed over: `resumed`,
/// then what the outbox held. Everything written before reached the
/// device, so a `received` short of it is refused.
async fn take_back<S: Session>(
    socket: &UnixSeqpacket,
    conn: &mut Connection<S>,
    io: &mut Io<'_>,
    handoff: Handoff,
    away_for: Option<std::time::Duration>,
) -> Result<(), ServerError> {
    let state = io.state;
    if let Some(ticket) = conn.session().ticket() {
        ticket.unpark();
    }
    conn.unpark(now());
    let deadline = Instant::now() + state.config.close_timeout;
    if let Err(e) = io.replay.missing(handoff.received) {
        let error = ServerError::ResumeRefused(e.to_string());
        state.core.metrics.error_sent(&error);
        let frame = encode::error_frame(&error);
        let _ = timeout_at(deadline, socket.send(frame.as_bytes())).await;
        return Err(error);
    }
    door::resumed(
        &state.core.metrics,
        S::ROLE,
        door::Resumption {
            away_for,
            replayed: 0,
            peer_received: handoff.received,
            server_received: conn.frames_in(),
        },
    );
    let resumed = door::resumed_frame(state, handoff.token, conn.frames_in());
    if let Err(e) = timeout_at(deadline, socket.send(resumed.as_bytes())).await {
        debug!(error = %e, "the resumed socket failed at once");
    }
    Ok(())
}

/// A socket whose first packet was `resume`: claims the session its token
/// names and hands it this socket, or says why not and shuts it down.
async fn hand_over(mut held: Held, state: &ServerState, token: &str, received: u64) {
    let claimed = state
        .core
        .resumes
        .claim(token, ResumeDoor::DeviceSocket, None, now());
    let refusal = match claimed {
        Ok(claim) => match claim.deliver(Box::new(held), received, None) {
            Ok(()) => return debug!("socket handed to the session it resumes"),
            Err((transport, refusal)) => {
                held = adopt(transport);
                refusal
            }
        },
        Err(refusal) => refusal,
    };
    crate::http::resume_refused(state, None, "(device socket)", &refusal);
    let error = ServerError::ResumeRefused(refusal.to_string());
    state.core.metrics.error_sent(&error);
    let deadline = Instant::now() + state.config.close_timeout;
    let frame = encode::error_frame(&error);
    let _ = timeout_at(deadline, held.socket.send(frame.as_bytes())).await;
    let _ = held.socket.shutdown(std::net::Shutdown::Both);
}

/// Writes a batch, one packet per message, stopping at a close; the
/// resume token rides on the first `config`.
async fn write_batch(socket: &UnixSeqpacket, io: &mut Io<'_>) -> Result<Option<Ending>, Ending> {
    let state = io.state;
    let mut close = None;
    let mut frames = Vec::with_capacity(io.batch.items.len());
    for item in io.batch.items.drain(..) {
        if let Outgoing::Close(error) = item {
            close = Some(Ending::Close(error));
            break;
        }
        let first = matches!(item, Outgoing::Config(_));
        if let Some(mut text) = encode::frame(item) {
            if first && let Some(token) = io.offer.take() {
                door::offer(state, token).append_to(&mut text);
            }
            state.core.metrics.bytes_out.inc_by(text.len() as u64);
            io.traffic.sent(text.len());
            frames.push(text);
        }
    }
    if let Err(e) = seqpacket::send_all(socket, &frames).await {
        debug!(error = %e, "device socket write failed");
        return Err(Ending::Gone);
    }
    for _ in &frames {
        io.replay.written_and_delivered();
    }
    door::written(state, &mut io.batch, None);
    Ok(close)
}
