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
use crate::core::{Batch, Connection, ServerError, Session};
use crate::metrics::{ClosedBy, Metrics, Role};

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
    let (closed_by, code, reason) = match closed {
        Closed::ByServer(error) => (
            ClosedBy::Server,
            error.close_code().map(|c| c.code()),
            Some(error.to_string()),
        ),
        Closed::ByPeer { code, reason } => (ClosedBy::Peer, code, reason.map(str::to_owned)),
        Closed::Lost => (ClosedBy::Network, None, None),
    };
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
