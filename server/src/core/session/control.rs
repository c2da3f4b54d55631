//! A control connection's state machine: the Go operator's
//! pre-registration (PROTOCOL.md, "The control socket"). A host tool names
//! the devices it is about to launch, with their group, owner, name and
//! adb port; each is accepted or refused at once, and the connection hears
//! each one register. When it closes, what has not registered is
//! cancelled: dropping the session is the cancellation.

use std::sync::Arc;
use std::time::Instant;

use protocol::control::{RegistrationState, RegistrationStatus};
use tracing::info;

use super::{Replies, Session};
use crate::core::Core;
use crate::core::outbox::Outbox;
use crate::core::outgoing::Outgoing;
use crate::core::registry::Descriptor;
use crate::metrics::Role;

/// One control connection.
#[derive(Debug)]
pub struct ControlSession {
    replies: Replies,
    /// Every id it pre-registered; those still waiting are cancelled when
    /// it ends.
    announced: Vec<String>,
}

impl ControlSession {
    pub fn new(core: Arc<Core>, outbox: Outbox) -> Self {
        Self {
            replies: Replies { core, outbox },
            announced: Vec::new(),
        }
    }

    fn pre_register(&mut self, message: protocol::control::PreRegister) {
        let registry = &self.replies.core.registry;
        let statuses = message
            .devices
            .into_iter()
            .map(|device| {
                let outcome = protocol::validate_device_id(&device.id)
                    .map_err(|e| e.to_string())
                    .and_then(|()| {
                        let descriptor = Descriptor {
                            group_name: message.group_name.clone(),
                            owner: message.owner.clone(),
                            name: device.name,
                            adb_port: device.adb_port,
                        };
                        registry
                            .pre_register(&device.id, descriptor, self.replies.outbox.clone())
                            .map_err(|e| e.to_string())
                    });
                let (status, text) = match outcome {
                    Ok(()) => {
                        info!(device_id = %device.id, group = %message.group_name, "device pre-registered");
                        self.announced.push(device.id.clone());
                        (RegistrationState::Accepted, String::new())
                    }
                    Err(why) => (RegistrationState::Failed, why),
                };
                RegistrationStatus {
                    id: device.id,
                    status,
                    message: text,
                }
            })
            .collect();
        let _ = self.replies.send(Outgoing::PreRegistration(statuses));
    }
}

impl Session for ControlSession {
    const ROLE: Role = Role::Control;

    fn on_text(&mut self, text: &str, _now: Instant) {
        match protocol::control::decode(text) {
            Ok(message) => self.pre_register(message),
            // Said, and the connection goes on: a tool may try again.
            Err(e) => self.replies.send_error(e.into()),
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    fn handle_timeout(&mut self, _now: Instant) {}

    fn replies(&self) -> &Replies {
        &self.replies
    }
}

impl Drop for ControlSession {
    fn drop(&mut self) {
        let registry = &self.replies.core.registry;
        for id in &self.announced {
            registry.cancel_pre_registration(id, &self.replies.outbox);
        }
    }
}
