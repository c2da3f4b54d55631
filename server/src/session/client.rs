//! The `/connect_client` state machine (behavior.md rows C1–C14).

use std::sync::Arc;
use tokio::time::Instant;

use protocol::{ClientMessageType, ClientToServer, Frame};
use tracing::{Span, info};

use super::{Context, Replies, Session};
use crate::outbox::Outbox;
use crate::registry::{ClientLink, Connection, NotAttached};

/// One client connection.
#[derive(Debug)]
pub(crate) struct ClientSession {
    replies: Replies,
    state: State,
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
    },
}

impl ClientSession {
    pub fn new(ctx: Arc<Context>, outbox: Outbox) -> Self {
        let connect_by = Instant::now() + ctx.config.handshake_timeout;
        Self {
            replies: Replies { ctx, outbox },
            state: State::AwaitingConnect { connect_by },
        }
    }

    fn connect(&mut self, frame: Frame<'_, ClientMessageType>) {
        let connect = match frame.into_message() {
            Ok(ClientToServer::Connect(connect)) => connect,
            Ok(ClientToServer::Forward(_)) => return,
            // C4
            Err(e) => return self.replies.fatal(e.phrase(), e.to_string()),
        };
        let ctx = self.replies.ctx.clone();
        let device_id = connect.device_id.into_owned();
        Span::current().record("device_id", device_id.as_str());
        // The reference sends config first in every case (C1, C2, C3).
        self.replies.frame(ctx.config_frame.clone());
        let wait = !ctx.config.client_wait.is_zero();
        let (link, wait_until) =
            match ctx
                .registry
                .connect(&device_id, self.replies.outbox.clone(), wait)
            {
                // C1: device_info is already queued by the registry.
                Connection::Attached(link) => (link, None),
                // C3
                Connection::Waiting(link) => {
                    info!("client waiting for its device");
                    (link, Some(Instant::now() + ctx.config.client_wait))
                }
                // C2
                Connection::NotFound => {
                    let text = format!("Device not found: {device_id}");
                    return self.replies.fatal("Device not found", text);
                }
            };
        self.state = State::Linked {
            device_id,
            link,
            wait_until,
            client_id_logged: false,
        };
        self.note_attached();
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
    fn on_text(&mut self, text: &str) {
        let frame = match Frame::<ClientMessageType>::parse(text) {
            Ok(frame) => frame,
            // C9, C10
            Err(e) => return self.replies.error(e.phrase(), e.to_string()),
        };
        self.note_attached();
        match (frame.message_type(), &mut self.state) {
            (ClientMessageType::Connect, State::AwaitingConnect { .. }) => self.connect(frame),
            // C5
            (ClientMessageType::Connect, State::Linked { device_id, .. }) => {
                let text = format!("Already connected: {device_id}");
                self.replies.error("Already connected", text);
            }
            // C6
            (ClientMessageType::Forward, State::AwaitingConnect { .. }) => {
                self.replies.error("Not connected", "Not connected");
            }
            (ClientMessageType::Forward, State::Linked { link, .. }) => {
                match frame.into_message() {
                    Ok(ClientToServer::Forward(forward)) => {
                        match link.send_to_device(forward.payload) {
                            // C7
                            Ok(()) => {
                                self.replies.ctx.relayed_to_device.inc();
                            }
                            // C6, while waiting for the device.
                            Err(NotAttached) => {
                                self.replies.error("Not connected", "Not connected");
                            }
                        }
                    }
                    Ok(ClientToServer::Connect(_)) => {}
                    // C8
                    Err(e) => self.replies.error(e.phrase(), e.to_string()),
                }
            }
        }
    }

    fn deadline(&self) -> Option<Instant> {
        match &self.state {
            State::AwaitingConnect { connect_by } => Some(*connect_by),
            State::Linked {
                wait_until, link, ..
            } => wait_until.filter(|_| !link.is_attached()),
        }
    }

    fn on_deadline(&mut self) {
        match &mut self.state {
            // C13
            State::AwaitingConnect { .. } => {
                self.replies
                    .fatal("Connect timeout", "Connect timeout".to_owned());
            }
            State::Linked {
                device_id,
                link,
                wait_until,
                ..
            } => {
                *wait_until = None;
                // C3: the wait ended before the device came.
                if link.cancel_wait() {
                    let text = format!("Device not found: {device_id}");
                    self.replies.fatal("Device not found", text);
                }
            }
        }
        self.note_attached();
    }
}
