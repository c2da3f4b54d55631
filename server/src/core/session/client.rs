//! The client's state machine (PROTOCOL.md, "Every decision, row by row":
//! `/connect_client`, rows C1–C15; C11, C12 and C15 are decided before a
//! frame reaches it), and the Go operator's dialect of it
//! (`/devices/{id}/connect`): the path names the device, and every frame is
//! a bare payload for it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::{ClientMessageType, ClientToServer, Frame, RawValue};
use tracing::{Span, info};

use super::{Replies, Resumable, Session};
use crate::core::Core;
use crate::core::error::ServerError;
use crate::core::grant::Grant;
use crate::core::outbox::Outbox;
use crate::core::outgoing::Outgoing;
use crate::core::registry::{ClientLink, Connection, NotAttached};
use crate::core::resume::{ResumeDoor, Ticket};
use crate::metrics::Role;

/// One client connection.
#[derive(Debug)]
pub struct ClientSession {
    replies: Replies,
    state: State,
    framing: Framing,
    /// The devices its token lets it connect to, and when the session
    /// ends.
    grant: Grant,
    resume: Resumable,
}

/// What a client's frames are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// The seed's `connect` and `forward` messages.
    Messages,
    /// Bare payloads, each one JSON object, for the device the session was
    /// connected to when it opened (the Go operator's
    /// `/devices/{id}/connect`).
    BarePayloads,
}

#[derive(Debug)]
enum State {
    /// `connect` must arrive before the deadline (C13).
    AwaitingConnect { connect_by: Instant },
    /// Connected, or waiting for the device to register (C3) until
    /// `wait_until`. The link says which.
    Linked {
        device_id: String,
        link: ClientLink,
        wait_until: Option<Instant>,
        client_id_logged: bool,
        /// When the `connect` arrived.
        connect_received_at: Instant,
    },
}

impl ClientSession {
    /// A client connection opened at `now`.
    pub fn new(core: Arc<Core>, outbox: Outbox, now: Instant) -> Self {
        let connect_by = now + core.settings.handshake_timeout;
        Self {
            replies: Replies { core, outbox },
            state: State::AwaitingConnect { connect_by },
            framing: Framing::Messages,
            grant: Grant::unlimited(),
            resume: Resumable::default(),
        }
    }

    /// Limited to what its token allows.
    pub fn with_grant(self, grant: Grant) -> Self {
        Self { grant, ..self }
    }

    /// A session that may be resumed on `door` once connected.
    pub fn resumable_on(self, door: ResumeDoor) -> Self {
        Self {
            resume: Resumable::on(door),
            ..self
        }
    }

    /// A client of the Go operator's `/devices/{id}/connect`, connected to
    /// `device_id` at once (no alternative-flow wait: the door answers 404
    /// before the upgrade for a device that is not there). Each frame it
    /// sends is a payload for the device.
    pub fn with_bare_payloads(
        core: Arc<Core>,
        outbox: Outbox,
        device_id: &str,
        grant: Grant,
        now: Instant,
    ) -> Self {
        let mut session = Self::new(core, outbox, now)
            .with_grant(grant)
            .resumable_on(ResumeDoor::DeviceConnect);
        session.framing = Framing::BarePayloads;
        session.connect(device_id, None, now);
        session
    }

    /// A `connect` to a valid device id (C1–C3, C5). With `wait`, a client
    /// whose device has not registered waits for it that long (C3).
    pub fn connect(&mut self, device_id: &str, wait: Option<Duration>, now: Instant) {
        if let State::Linked { device_id, .. } = &self.state {
            // C5
            let id = device_id.clone();
            return self.replies.send_error(ServerError::AlreadyConnected(id));
        }
        if !self.grant.allows(device_id) {
            info!(
                device_id,
                "connect refused: the token does not cover this device"
            );
            let id = device_id.to_owned();
            return self.replies.send_error(ServerError::DeviceNotAllowed(id));
        }
        let core = self.replies.core.clone();
        Span::current().record("device_id", device_id);
        // The reference sends config first in every case (C1, C2, C3).
        let _ = self
            .replies
            .send(Outgoing::Config(core.client_config(device_id)));
        let waits = wait.is_some_and(|wait| !wait.is_zero());
        let (link, wait_until) =
            match core
                .registry
                .connect(device_id, self.replies.outbox.clone(), waits)
            {
                // C1: device_info is already queued by the registry.
                Connection::Attached(link) => (link, None),
                // C3
                Connection::Waiting(link) => {
                    info!("client waiting for its device");
                    (link, wait.map(|wait| now + wait))
                }
                // C2
                Connection::NotFound => {
                    let error = ServerError::DeviceNotFound(device_id.to_owned());
                    return self.replies.send_error(error);
                }
            };
        self.resume.issue(&core, device_id);
        self.state = State::Linked {
            device_id: device_id.to_owned(),
            link,
            wait_until,
            client_id_logged: false,
            connect_received_at: now,
        };
        self.note_attached();
    }

    /// A `forward` with its payload (C6, C7), arrived at `now`.
    pub fn forward(&mut self, payload: &RawValue, now: Instant) {
        self.note_attached();
        let State::Linked { link, .. } = &mut self.state else {
            // C6
            return self.replies.send_error(ServerError::NotConnected);
        };
        // The device reads frames of at most the size limit (a Cuttlefish
        // device, into a 64 KiB buffer): the payload must fit in one with
        // its envelope, whatever the client id.
        let limit = self
            .replies
            .core
            .settings
            .max_message_bytes
            .saturating_sub(protocol::CLIENT_MSG_ENVELOPE_MAX);
        if payload.get().len() > limit {
            return self
                .replies
                .send_error(ServerError::PayloadTooBig { limit });
        }
        match link.send_to_device(payload, now) {
            // C7
            Ok(()) => {
                self.replies.core.relayed_to_device.inc();
            }
            // The device is leaving; the client is told when it has.
            Err(NotAttached::Leaving(_)) => {}
            // C6, while waiting for the device.
            Err(NotAttached::Waiting) => self.replies.send_error(ServerError::NotConnected),
        }
    }

    /// Whether the client is attached to its device (its `device_info` is
    /// queued, or, for a device on another instance, on its way).
    pub fn is_attached(&self) -> bool {
        match &self.state {
            State::Linked { link, .. } => link.is_attached(),
            State::AwaitingConnect { .. } => false,
        }
    }

    /// This client's id at its device, once attached.
    pub fn client_id(&mut self) -> Option<u64> {
        match &mut self.state {
            State::Linked { link, .. } => link.client_id(),
            State::AwaitingConnect { .. } => None,
        }
    }

    /// Puts the client id on the connection's span once it is known.
    fn note_attached(&mut self) {
        if let State::Linked {
            link,
            client_id_logged: logged @ false,
            ..
        } = &mut self.state
            && let Some(client_id) = link.client_id()
        {
            *logged = true;
            Span::current().record("client_id", client_id);
            info!("client connected");
        }
    }
}

impl Session for ClientSession {
    const ROLE: Role = Role::Client;

    fn connect_received_at(&self) -> Option<Instant> {
        match &self.state {
            State::Linked {
                connect_received_at,
                ..
            } => Some(*connect_received_at),
            State::AwaitingConnect { .. } => None,
        }
    }

    fn on_text(&mut self, text: &str, now: Instant) {
        if self.framing == Framing::BarePayloads {
            // Not a JSON object: said, and the session goes on (as C8).
            return match protocol::parse_bare_payload(text) {
                Ok(payload) => self.forward(payload, now),
                Err(e) => self.replies.send_error(e.into()),
            };
        }
        let frame = match Frame::<ClientMessageType>::parse(text) {
            Ok(frame) => frame,
            // C9, C10
            Err(e) => return self.replies.send_error(e.into()),
        };
        self.note_attached();
        // The state decides before the fields (PROTOCOL.md, Errors: the
        // order a message is checked in).
        match (frame.message_type(), &self.state) {
            // C5
            (ClientMessageType::Connect, State::Linked { device_id, .. }) => {
                let id = device_id.clone();
                self.replies.send_error(ServerError::AlreadyConnected(id));
            }
            // C6
            (ClientMessageType::Forward, State::AwaitingConnect { .. }) => {
                self.replies.send_error(ServerError::NotConnected);
            }
            // The front door takes a resume that opens a connection; one
            // later in it has no session to take back.
            (ClientMessageType::Resume, _) => {
                self.replies.send_error(ServerError::Decode(
                    protocol::DecodeError::InvalidMessage(
                        "resume is only the first message of a new connection".into(),
                    ),
                ));
            }
            (_, _) => match frame.into_message() {
                Ok(ClientToServer::Connect(connect)) => {
                    let wait = self.replies.core.settings.client_wait;
                    self.connect(&connect.device_id, Some(wait), now);
                }
                Ok(ClientToServer::Forward(forward)) => self.forward(forward.payload, now),
                Ok(ClientToServer::Resume(_)) => {}
                // C4 (ends the session), C8
                Err(e) => self.replies.send_error(e.into()),
            },
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let state = match &self.state {
            State::AwaitingConnect { connect_by } => Some(*connect_by),
            State::Linked {
                wait_until, link, ..
            } => wait_until.filter(|_| !link.is_attached()),
        };
        state.into_iter().chain(self.grant.expires()).min()
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.grant.expires().is_some_and(|at| now >= at) {
            info!("session ended: its token expired");
            return self.replies.send_error(ServerError::TokenExpired);
        }
        match &mut self.state {
            // C13
            State::AwaitingConnect { connect_by } => {
                if now >= *connect_by {
                    self.replies.send_error(ServerError::ConnectTimeout);
                }
            }
            State::Linked {
                device_id,
                link,
                wait_until,
                ..
            } => {
                if wait_until.is_none_or(|until| now < until) {
                    return;
                }
                *wait_until = None;
                // C3: the wait ended before the device came.
                if link.cancel_wait() {
                    let error = ServerError::DeviceNotFound(device_id.clone());
                    self.replies.send_error(error);
                }
            }
        }
        self.note_attached();
    }

    fn replies(&self) -> &Replies {
        &self.replies
    }

    fn ticket(&self) -> Option<&Ticket> {
        self.resume.ticket()
    }

    fn take_resume_offer(&mut self) -> Option<String> {
        self.resume.take_offer()
    }

    fn regrant(&mut self, grant: Grant) {
        self.grant = grant;
    }
}
