//! The `/register_device` state machine (behavior.md rows D1–D16).

use std::sync::Arc;
use tokio::time::Instant;

use protocol::{DecodeError, DeviceMessageType, DeviceToServer, Frame};
use tracing::{Span, debug, info};

use super::{Context, Replies, Session};
use crate::frames;
use crate::outbox::Outbox;
use crate::registry::{DeviceRegistration, ForwardError, IdTaken};

/// One device connection.
#[derive(Debug)]
pub(crate) struct DeviceSession {
    replies: Replies,
    registration: Option<DeviceRegistration>,
    /// `register` must arrive before this (D15).
    register_by: Instant,
}

impl DeviceSession {
    pub fn new(ctx: Arc<Context>, outbox: Outbox) -> Self {
        let register_by = Instant::now() + ctx.config.handshake_timeout;
        Self {
            replies: Replies { ctx, outbox },
            registration: None,
            register_by,
        }
    }

    fn decode_error(&self, e: &DecodeError) {
        self.replies.error(e.phrase(), e.to_string());
    }

    fn register(&mut self, frame: Frame<'_, DeviceMessageType>) {
        let register = match frame.into_message() {
            Ok(DeviceToServer::Register(register)) => register,
            Ok(DeviceToServer::Forward(_)) => return,
            // D2: a register that names no usable id ends the session.
            Err(e) => return self.replies.fatal(e.phrase(), e.to_string()),
        };
        let ctx = &self.replies.ctx;
        let outbox = self.replies.outbox.clone();
        match ctx
            .registry
            .register(&register.device_id, register.device_info, outbox)
        {
            Ok(registration) => {
                // D1
                Span::current().record("device_id", registration.device_id());
                info!("device registered");
                self.replies.frame(ctx.config_frame.clone());
                self.registration = Some(registration);
            }
            Err(IdTaken) => {
                // D3: the holder is untouched.
                debug!(device_id = %register.device_id, "device id already taken");
                let text = format!("Device id already taken: {}", register.device_id);
                self.replies.fatal("Device id already taken", text);
            }
        }
    }
}

fn forward(
    replies: &Replies,
    registration: &DeviceRegistration,
    frame: Frame<'_, DeviceMessageType>,
) {
    let forward = match frame.into_message() {
        Ok(DeviceToServer::Forward(forward)) => forward,
        Ok(DeviceToServer::Register(_)) => return,
        // D9, D10
        Err(e) => return replies.error(e.phrase(), e.to_string()),
    };
    match registration.send_to_client(forward.client_id, frames::device_msg(forward.payload)) {
        // D6
        Ok(()) => {
            replies.ctx.relayed_to_client.inc();
        }
        // D7: the reply the reference gives.
        Err(ForwardError::Departed) => {
            replies.frame(frames::client_disconnected(forward.client_id));
        }
        // D8
        Err(ForwardError::Unknown) => replies.error(
            "Unknown client",
            format!("Unknown client: {}", forward.client_id),
        ),
    }
}

impl Session for DeviceSession {
    fn on_text(&mut self, text: &str) {
        let frame = match Frame::<DeviceMessageType>::parse(text) {
            Ok(frame) => frame,
            // D11, D12
            Err(e) => return self.decode_error(&e),
        };
        match (frame.message_type(), &self.registration) {
            (DeviceMessageType::Register, Some(registration)) => {
                // D4
                let text = format!("Device already registered: {}", registration.device_id());
                self.replies.error("Device already registered", text);
            }
            (DeviceMessageType::Register, None) => self.register(frame),
            // D5
            (DeviceMessageType::Forward, None) => {
                self.replies.error("Not registered", "Not registered");
            }
            (DeviceMessageType::Forward, Some(registration)) => {
                forward(&self.replies, registration, frame);
            }
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.registration.is_none().then_some(self.register_by)
    }

    fn on_deadline(&mut self) {
        // D15
        if self.registration.is_none() {
            self.replies
                .fatal("Registration timeout", "Registration timeout".to_owned());
        }
    }
}
