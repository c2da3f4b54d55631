//! The per-connection state machines: they turn decoded frames into
//! registry calls and replies, and do no I/O of their own.
//!
//! Everything a session sends goes into its connection's outbox, so replies
//! and relayed messages leave in one order. The connection task (see
//! `connection.rs`) owns the socket and calls in here.

use std::sync::Arc;
use tokio::time::Instant;

use prometheus_client::metrics::counter::Counter;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::config::ServerConfig;
use crate::frames;
use crate::metrics::{Direction, Metrics};
use crate::outbox::Outbox;
use crate::rate::Gcra;
use crate::registry::Registry;

pub(crate) mod client;
pub(crate) mod device;

/// What sessions share: settings, the registry, metrics.
#[derive(Debug)]
pub(crate) struct Context {
    pub config: ServerConfig,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    /// The `config` message, encoded once.
    pub config_frame: Utf8Bytes,
    /// The per-connection rate limit, if one is set.
    pub rate: Option<Gcra>,
    pub relayed_to_device: Counter,
    pub relayed_to_client: Counter,
}

impl Context {
    pub fn new(config: ServerConfig, metrics: Arc<Metrics>) -> Self {
        let config_frame = protocol::ServerToClient::Config(protocol::Config {
            ice_servers: config.ice_servers.clone(),
        })
        .encode()
        .into();
        Self {
            rate: config.rate_limit.and_then(Gcra::new),
            config,
            registry: Arc::new(Registry::new(metrics.clone())),
            relayed_to_device: metrics.relayed(Direction::ClientToDevice),
            relayed_to_client: metrics.relayed(Direction::DeviceToClient),
            metrics,
            config_frame,
        }
    }
}

/// A connection's state machine, as the connection task sees it.
///
/// Its methods run inside the connection's tracing span (the task is
/// instrumented with it), so a session names its device and client ids on
/// `Span::current()` instead of keeping a handle of its own.
pub(crate) trait Session {
    /// A text frame arrived.
    fn on_text(&mut self, text: &str);
    /// When `on_deadline` is due, if ever.
    fn deadline(&self) -> Option<Instant>;
    /// The deadline passed.
    fn on_deadline(&mut self);
}

/// The sending half every session has: its own outbox, plus accounting.
#[derive(Debug)]
struct Replies {
    ctx: Arc<Context>,
    outbox: Outbox,
}

impl Replies {
    /// Sends an error frame; `phrase` labels it on /metrics.
    fn error(&self, phrase: &'static str, text: impl Into<std::borrow::Cow<'static, str>>) {
        self.ctx.metrics.error_sent(phrase);
        let _ = self.outbox.push_text(frames::error(text));
    }

    /// Sends an error frame, then closes with 1008: the session is over.
    fn fatal(&self, phrase: &'static str, text: String) {
        end_session(&self.ctx, &self.outbox, phrase, text);
    }

    fn frame(&self, frame: Utf8Bytes) {
        let _ = self.outbox.push_text(frame);
    }
}

/// Sends an error frame, then closes with 1008: the session is over.
pub(crate) fn end_session(ctx: &Context, outbox: &Outbox, phrase: &'static str, text: String) {
    ctx.metrics.error_sent(phrase);
    let _ = outbox.push_text(frames::error(text.clone()));
    outbox.push_close(CloseCode::Policy, close_reason(text));
}

/// Ends a session that sent more than the rate limit allows (D17, C15).
pub(crate) fn rate_limited(ctx: &Context, outbox: &Outbox) {
    let text = match ctx.config.rate_limit {
        Some(limit) => format!(
            "Rate limit exceeded: more than {} messages per second (bursts of {})",
            limit.per_second, limit.burst
        ),
        None => "Rate limit exceeded".to_owned(),
    };
    end_session(ctx, outbox, "Rate limit exceeded", text);
}

/// A close reason must fit the 123 bytes a close frame allows.
pub(crate) fn close_reason(text: String) -> Utf8Bytes {
    const MAX: usize = 123;
    if text.len() <= MAX {
        return text.into();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned().into()
}
