//! The per-connection state machines: they turn decoded frames into
//! registry calls and replies, and do no I/O of their own.
//!
//! Everything a session sends goes into its connection's outbox, so replies
//! and relayed messages leave in one order. A front door owns the transport
//! and drives the session through [`Connection`](super::Connection).

use std::sync::Arc;
use std::time::Instant;

use super::Core;
use super::error::ServerError;
use super::grant::Grant;
use super::outbox::{Outbox, PushError};
use super::outgoing::Outgoing;
use super::resume::{ResumeDoor, Ticket};
use crate::metrics::Role;

pub mod client;
pub mod control;
pub mod device;

pub use client::ClientSession;
pub use control::ControlSession;
pub use device::DeviceSession;

/// A connection's state machine, as its front door sees it.
///
/// Its methods run inside the connection's tracing span (the front door
/// instruments the connection with it), so a session names its device and
/// client ids on `Span::current()` instead of keeping a handle of its own.
pub trait Session {
    /// What kind of session it is, for the metrics.
    const ROLE: Role;
    /// When a client's `connect` arrived, for the time to its
    /// `device_info` (`signaling_device_info_wait_seconds`).
    fn connect_received_at(&self) -> Option<Instant> {
        None
    }
    /// A text frame arrived at `now`.
    fn on_text(&mut self, text: &str, now: Instant);
    /// When `handle_timeout` is due, if ever.
    fn poll_timeout(&self) -> Option<Instant>;
    /// A deadline passed.
    fn handle_timeout(&mut self, now: Instant);
    /// Where it sends.
    fn replies(&self) -> &Replies;
    /// Its right to be resumed, once it has one (a device registered, a
    /// client connected, with resume on and a door that resumes).
    fn ticket(&self) -> Option<&Ticket> {
        None
    }
    /// The token its peer has not been given yet: the front door puts it
    /// in the first frame it writes of the session (a `config`; the Go
    /// operator's `{"device_info"}`).
    fn take_resume_offer(&mut self) -> Option<String> {
        None
    }
    /// A new connection took the session back with these credentials.
    fn regrant(&mut self, _grant: Grant) {}
    /// Its connection dropped (`true`) or came back (`false`).
    fn set_away(&mut self, _away: bool) {}
}

/// A session's resume: the door it may come back by, and once issued, its
/// ticket and the token not yet sent.
#[derive(Debug, Default)]
pub struct Resumable {
    door: Option<ResumeDoor>,
    ticket: Option<Ticket>,
    offer: Option<String>,
}

impl Resumable {
    /// A session of `door`, which resumes.
    pub fn on(door: ResumeDoor) -> Self {
        Self {
            door: Some(door),
            ticket: None,
            offer: None,
        }
    }

    /// Issues the session's ticket, once, if its door resumes and resume
    /// is on.
    fn issue(&mut self, core: &Core, device_id: &str) {
        if self.ticket.is_some() {
            return;
        }
        if let Some(door) = self.door
            && let Some((ticket, token)) = core.resumes.issue(door, device_id)
        {
            self.ticket = Some(ticket);
            self.offer = Some(token);
        }
    }

    fn ticket(&self) -> Option<&Ticket> {
        self.ticket.as_ref()
    }

    fn take_offer(&mut self) -> Option<String> {
        self.offer.take()
    }
}

/// The sending half every session has: its own outbox, plus accounting.
#[derive(Debug)]
pub struct Replies {
    pub core: Arc<Core>,
    pub outbox: Outbox,
}

impl Replies {
    /// Sends `error` as the variant says: an error frame, then, if the
    /// error ends the session, a close. Counted on /metrics by its label.
    pub fn send_error(&self, error: ServerError) {
        self.core.metrics.error_sent(&error);
        if error.is_fatal() {
            if error.sends_error_frame() {
                // A full outbox is closed as a slow consumer anyway; the
                // close below is queued regardless of the bound.
                let _ = self.outbox.push(Outgoing::Error(error.clone()));
            }
            self.outbox.push_close(error);
        } else {
            let _ = self.outbox.push(Outgoing::Error(error));
        }
    }

    /// Queues a reply of the session's own (not an error).
    pub fn send(&self, item: Outgoing) -> Result<(), PushError> {
        self.outbox.push(item)
    }
}
