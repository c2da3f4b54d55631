//! What the front doors that own a socket share (`websocket/`,
//! `device_socket.rs`, `polling.rs`): the clock they read for the core, the
//! guard around a write that may never finish, and the line and metrics
//! that say how a connection ended.

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use tokio_util::sync::WaitForCancellationFuture;
use tracing::{info, warn};

use crate::ServerState;
use crate::core::resume::{Handoff, TicketEvent};
use crate::core::{Batch, Connection, ServerError, Session};
use crate::metrics::{ClosedBy, Metrics, ResumeOutcome, Role};

/// The core's clock reading: tokio's, so a paused test clock drives it.
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Runs `write`, unless the connection's outbox overflows first (the peer
/// is not reading, so the write may never finish) or the server shuts
/// down; then the error that ends the connection.
pub(crate) async fn unless_stuck<F, S>(
    write: F,
    conn: &Connection<S>,
    shutdown: Pin<&mut WaitForCancellationFuture<'_>>,
) -> Result<F::Output, ServerError>
where
    F: Future,
    S: Session,
{
    tokio::select! {
        biased;
        result = write => Ok(result),
        () = conn.outbox().overflowed() => Err(conn.slow_consumer()),
        () = shutdown => Err(ServerError::ShuttingDown),
    }
}

/// Observes what a batch just written waited: its oldest relayed message
/// in the outbox, and a client's `device_info` since its `connect` arrived
/// at `connect_at`, if the batch held it.
pub(crate) fn written(state: &ServerState, batch: &mut Batch, connect_at: Option<Instant>) {
    let oldest = batch.oldest_relayed.take();
    if oldest.is_none() && connect_at.is_none() {
        return;
    }
    let now = now();
    let metrics = &state.core.metrics;
    if let Some(arrived) = oldest {
        metrics
            .outbox_wait
            .observe(now.saturating_duration_since(arrived));
    }
    if let Some(connect_at) = connect_at {
        metrics
            .device_info_wait
            .observe(now.saturating_duration_since(connect_at));
    }
}

/// What one connection carried, and since when: the figures of the line
/// that says how it ended.
#[derive(Debug)]
pub(crate) struct Traffic {
    opened: tokio::time::Instant,
    messages_in: u64,
    bytes_in: u64,
    messages_out: u64,
    bytes_out: u64,
}

impl Traffic {
    /// A connection opening now.
    pub fn new() -> Self {
        Self {
            opened: tokio::time::Instant::now(),
            messages_in: 0,
            bytes_in: 0,
            messages_out: 0,
            bytes_out: 0,
        }
    }

    /// A message of `bytes` came in.
    pub fn received(&mut self, bytes: usize) {
        self.messages_in += 1;
        self.bytes_in += bytes as u64;
    }

    /// A message of `bytes` went out.
    pub fn sent(&mut self, bytes: usize) {
        self.messages_out += 1;
        self.bytes_out += bytes as u64;
    }
}

/// How a connection ended.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Closed<'a> {
    /// The server ended it with this error (on a websocket, its close
    /// code; elsewhere, the code a websocket would have carried).
    ByServer(&'a ServerError),
    /// The peer ended it: a close frame (with its code and reason, if it
    /// gave them), a device closing its socket, a polling client that
    /// stopped polling.
    ByPeer {
        code: Option<u16>,
        reason: Option<&'a str>,
    },
    /// Lost without a close.
    Lost,
}

impl Closed<'_> {
    /// Whether the server ended the session for a fault or a limit (a
    /// warning), rather than as sessions end (info): every server close
    /// but the shutdown's and a device's departure.
    fn is_fault(&self) -> bool {
        matches!(self, Self::ByServer(error)
            if !matches!(error, ServerError::ShuttingDown | ServerError::DeviceDisconnected))
    }
}

impl Closed<'_> {
    /// Who, which code and why, as the lines say it.
    fn parts(&self) -> (ClosedBy, Option<u16>, Option<String>) {
        match *self {
            Closed::ByServer(error) => (
                ClosedBy::Server,
                error.close_code().map(|c| c.code()),
                Some(error.to_string()),
            ),
            Closed::ByPeer { code, reason } => (ClosedBy::Peer, code, reason.map(str::to_owned)),
            Closed::Lost => (ClosedBy::Network, None, None),
        }
    }
}

/// The resume offer a session's first frame carries: its token and the
/// window.
pub(crate) fn offer(state: &ServerState, token: String) -> protocol::ResumeOffer<'static> {
    protocol::ResumeOffer {
        token: token.into(),
        window_ms: u64::try_from(state.core.resumes.window().as_millis()).unwrap_or(u64::MAX),
    }
}

/// The `resumed` frame a resumed session's new connection gets first: the
/// next token, and how many of the peer's frames the server received.
pub(crate) fn resumed_frame(state: &ServerState, token: String, received: u64) -> String {
    protocol::ServerToClient::Resumed(protocol::Resumed {
        resume: offer(state, token),
        received,
    })
    .encode()
}

/// The next event of the session's resume ticket; never, for a session
/// without one.
pub(crate) async fn ticket_event<S: Session>(session: &S) -> TicketEvent {
    match session.ticket() {
        Some(ticket) => ticket.event().await,
        None => std::future::pending().await,
    }
}

/// How a held session's time away ended.
pub(crate) enum Away {
    Back(Handoff),
    /// The window passed.
    Expired,
    /// The session ended meanwhile, for this reason.
    Ended(ServerError),
}

/// Waits out a held session's time away: until a new connection is handed
/// to it, its window passes, or it ends meanwhile (its outbox overflowed,
/// a close was queued: its device left, its id was taken; its token
/// expired; the server shuts down).
pub(crate) async fn wait_away<S: Session>(
    conn: &mut Connection<S>,
    mut cancelled: Pin<&mut WaitForCancellationFuture<'_>>,
) -> Away {
    loop {
        let Some(ticket) = conn.session().ticket() else {
            return Away::Expired;
        };
        if ticket.expired(now()) {
            return Away::Expired;
        }
        // While a connection is taking the session back, its claim
        // decides: a handoff, or a release after which the window counts
        // again.
        let deadline = ticket.deadline();
        let due = conn.poll_timeout();
        let wake = tokio::time::Instant::from_std(deadline.map_or(due, |until| until.min(due)));
        tokio::select! {
            biased;
            () = &mut cancelled => return Away::Ended(ServerError::ShuttingDown),
            event = ticket.event() => match event {
                TicketEvent::Handoff(handoff) => return Away::Back(handoff),
                TicketEvent::Released => {}
            },
            () = conn.outbox().ended() => {
                let outbox = conn.outbox();
                let reason = match outbox.close_reason() {
                    Some(reason) if !outbox.has_overflowed() => reason,
                    _ => conn.slow_consumer(),
                };
                return Away::Ended(reason);
            }
            () = tokio::time::sleep_until(wake) => {
                // The session's own deadlines (a token's expiry, a
                // client's wait for its device) run on while it is away.
                let _ = conn.handle_timeout(now());
            }
        }
    }
}

/// Says that a session's connection ended as `closed` and the session is
/// held for its peer to resume it until `window` has passed, and counts
/// it as away.
pub(crate) fn away(metrics: &Metrics, role: Role, closed: Closed<'_>, window: std::time::Duration) {
    let (closed_by, code, reason) = closed.parts();
    let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
    info!(
        role = role.label(),
        code,
        reason = reason.as_deref(),
        closed_by = closed_by.label(),
        window_ms,
        "connection lost: session held for resume"
    );
    metrics.sessions_away(role).inc();
}

/// What a resume took back, for its line.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Resumption {
    /// How long the session was away; none when its connection was still
    /// up (the peer came back before the server saw it go).
    pub away_for: Option<std::time::Duration>,
    /// Frames written again: those the peer said it had not received.
    pub replayed: usize,
    /// The frames the peer said it received, and those the server had
    /// received from it.
    pub peer_received: u64,
    pub server_received: u64,
}

/// Says that a session took a new connection, and counts it.
pub(crate) fn resumed(metrics: &Metrics, role: Role, resumption: Resumption) {
    let away_ms = resumption
        .away_for
        .map(|away| u64::try_from(away.as_millis()).unwrap_or(u64::MAX));
    info!(
        role = role.label(),
        away_ms,
        replayed = resumption.replayed,
        peer_received = resumption.peer_received,
        server_received = resumption.server_received,
        "session resumed"
    );
    if let Some(away) = resumption.away_for {
        metrics.sessions_away(role).dec();
        metrics.resume_away.observe(away);
    }
    metrics.resume_outcome(role, ResumeOutcome::Resumed);
    metrics.frames_replayed.inc_by(resumption.replayed as u64);
}

/// Says that a held session ends without its peer: its window passed, or
/// it ended for `reason` meanwhile; and counts it.
pub(crate) fn not_resumed(metrics: &Metrics, role: Role, reason: Option<&ServerError>) {
    metrics.sessions_away(role).dec();
    match reason {
        None => {
            info!(
                role = role.label(),
                "resume window passed: the session ends"
            );
            metrics.resume_outcome(role, ResumeOutcome::WindowPassed);
        }
        Some(reason) => {
            info!(role = role.label(), reason = %reason, "session ended while its connection was away");
            metrics.resume_outcome(role, ResumeOutcome::EndedAway);
        }
    }
}

/// Says how a connection ended, in one line (PROTOCOL.md, "Logs"), and
/// counts it: its close, and its length by role.
pub(crate) fn ended(metrics: &Metrics, role: Role, closed: Closed<'_>, traffic: &Traffic) {
    let duration = traffic.opened.elapsed();
    let duration_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    let Traffic {
        messages_in,
        bytes_in,
        messages_out,
        bytes_out,
        ..
    } = *traffic;
    let (closed_by, code, reason) = closed.parts();
    metrics.session_ended(role, closed_by, code, duration);
    let closed_by = closed_by.label();
    let role = role.label();
    let message = match closed {
        Closed::Lost => "connection lost without a close",
        _ => "connection closed",
    };
    // One event, at one of two levels: tracing's macros take the level as
    // a constant.
    macro_rules! line {
        ($level:ident) => {
            $level!(
                role,
                code,
                reason = reason.as_deref(),
                closed_by,
                duration_ms,
                messages_in,
                bytes_in,
                messages_out,
                bytes_out,
                "{message}"
            )
        };
    }
    if closed.is_fault() {
        line!(warn);
    } else {
        line!(info);
    }
}
