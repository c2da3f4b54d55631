//! The device's state machine (PROTOCOL.md, "Every decision, row by row":
//! `/register_device`, rows D1–D17; D13, D14 and D17 are decided before a
//! frame reaches it).

use std::sync::Arc;
use std::time::Instant;

use protocol::{DeviceMessageType, DeviceToServer, Frame, RawValue, Register};
use tracing::{Span, debug, info};

use super::{Replies, Resumable, Session};
use crate::core::Core;
use crate::core::error::ServerError;
use crate::core::grant::Grant;
use crate::core::outbox::Outbox;
use crate::core::outgoing::Outgoing;
use crate::core::registry::{DeviceRegistration, ForwardError, RegisterError};
use crate::core::resume::{ResumeDoor, Ticket};
use crate::metrics::Role;

/// One device connection.
#[derive(Debug)]
pub struct DeviceSession {
    replies: Replies,
    registration: Option<DeviceRegistration>,
    /// `register` must arrive before this (D15).
    register_by: Instant,
    /// The ids its token lets it register, and when the session ends.
    grant: Grant,
    resume: Resumable,
}

impl DeviceSession {
    /// A device connection opened at `now`.
    pub fn new(core: Arc<Core>, outbox: Outbox, now: Instant) -> Self {
        let register_by = now + core.settings.handshake_timeout;
        Self {
            replies: Replies { core, outbox },
            registration: None,
            register_by,
            grant: Grant::unlimited(),
            resume: Resumable::default(),
        }
    }

    /// Limited to what its token allows.
    pub fn with_grant(self, grant: Grant) -> Self {
        Self { grant, ..self }
    }

    /// A session that may be resumed on `door` once registered.
    pub fn resumable_on(self, door: ResumeDoor) -> Self {
        Self {
            resume: Resumable::on(door),
            ..self
        }
    }

    /// The id this device holds, once registered.
    pub fn device_id(&self) -> Option<&str> {
        self.registration
            .as_ref()
            .map(DeviceRegistration::device_id)
    }

    /// A `register` whose fields decoded (D1, D3, D4).
    pub fn register(&mut self, register: Register<'_>) {
        if let Some(registration) = &self.registration {
            // D4
            let id = registration.device_id().to_owned();
            return self.replies.send_error(ServerError::AlreadyRegistered(id));
        }
        if !self.grant.allows(&register.device_id) {
            info!(device_id = %register.device_id, "registration refused: the token does not cover this id");
            let id = register.device_id.into_owned();
            return self.replies.send_error(ServerError::DeviceNotAllowed(id));
        }
        let core = &self.replies.core;
        let outbox = self.replies.outbox.clone();
        match core.registry.register(
            &register.device_id,
            register.device_info,
            register.device_port,
            outbox,
        ) {
            Ok(registration) => {
                // D1
                Span::current().record("device_id", registration.device_id());
                info!("device registered");
                let config = core.device_config(registration.device_id());
                let _ = self.replies.send(Outgoing::Config(config));
                self.resume.issue(core, registration.device_id());
                self.registration = Some(registration);
            }
            Err(RegisterError::IdTaken) => {
                // D3: the holder is untouched.
                debug!(device_id = %register.device_id, "device id already taken");
                let id = register.device_id.into_owned();
                self.replies.send_error(ServerError::DeviceIdTaken(id));
            }
            Err(RegisterError::Unavailable) => {
                info!(device_id = %register.device_id, "registry unavailable: registration refused");
                self.replies.send_error(ServerError::RegistryUnavailable);
            }
        }
    }

    /// A `forward` whose fields decoded (D5–D8), arrived at `now`.
    pub fn forward(&mut self, client_id: u64, payload: &RawValue, now: Instant) {
        let Some(registration) = &self.registration else {
            // D5
            return self.replies.send_error(ServerError::NotRegistered);
        };
        match registration.send_to_client(client_id, payload, now) {
            // D6
            Ok(()) => {
                self.replies.core.relayed_to_client.inc();
            }
            // The client is leaving (it is closing, or was too slow): the
            // device hears client_disconnected when it has left.
            Err(ForwardError::NotQueued(_)) => {}
            // D7: the reply the reference gives.
            Err(ForwardError::Departed) => {
                let _ = self
                    .replies
                    .send(Outgoing::ClientDisconnected { client_id });
            }
            // D8
            Err(ForwardError::Unknown) => {
                self.replies
                    .send_error(ServerError::UnknownClient(client_id));
            }
        }
    }
}

impl Session for DeviceSession {
    const ROLE: Role = Role::Device;

    fn on_text(&mut self, text: &str, now: Instant) {
        let frame = match Frame::<DeviceMessageType>::parse(text) {
            Ok(frame) => frame,
            // D11, D12
            Err(e) => return self.replies.send_error(e.into()),
        };
        // The state decides before the fields (PROTOCOL.md, Errors: the
        // order a message is checked in).
        match (frame.message_type(), &self.registration) {
            (DeviceMessageType::Register, Some(registration)) => {
                // D4
                let id = registration.device_id().to_owned();
                self.replies.send_error(ServerError::AlreadyRegistered(id));
            }
            // D5
            (DeviceMessageType::Forward, None) => {
                self.replies.send_error(ServerError::NotRegistered);
            }
            // The front door takes a resume that opens a connection; one
            // later in it has no session to take back.
            (DeviceMessageType::Resume, _) => {
                self.replies.send_error(ServerError::Decode(
                    protocol::DecodeError::InvalidMessage(
                        "resume is only the first message of a new connection".into(),
                    ),
                ));
            }
            (_, _) => match frame.into_message() {
                Ok(DeviceToServer::Register(register)) => self.register(register),
                Ok(DeviceToServer::Forward(forward)) => {
                    self.forward(forward.client_id, forward.payload, now);
                }
                Ok(DeviceToServer::Resume(_)) => {}
                // D2 (ends the session), D9, D10
                Err(e) => self.replies.send_error(e.into()),
            },
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let register_by = self.registration.is_none().then_some(self.register_by);
        register_by.into_iter().chain(self.grant.expires()).min()
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.grant.expires().is_some_and(|at| now >= at) {
            info!("session ended: its token expired");
            return self.replies.send_error(ServerError::TokenExpired);
        }
        // D15
        if self.registration.is_none() && now >= self.register_by {
            self.replies.send_error(ServerError::RegistrationTimeout);
        }
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

    fn set_away(&mut self, away: bool) {
        if let Some(registration) = &self.registration {
            registration.set_away(away);
        }
    }
}
