//! The signaling core: every decision the server makes, and no I/O.
//!
//! Nothing under `core/` touches a socket, a timer or the clock (a test in
//! this module reads the sources to keep it so). Time comes in as an
//! argument, `now`, and a connection says when it next needs waking
//! ([`Connection::poll_timeout`]); what it decides to send comes out as
//! typed values ([`Outgoing`]) in its outbox, which each front door encodes
//! its own way. This is the shape of quinn-proto under quinn, or of str0m:
//! the simulator (`src/sim.rs`) and the tests drive it without sockets and
//! without sleeping.
//!
//! # How a message travels
//!
//! A client's websocket task reads a text frame and hands it to its
//! [`Connection`], which checks the gate (the session is not over, the
//! sender is within its rate limit) and passes it to the client's
//! [`session`]. The session decodes the frame with the `protocol` crate
//! and, for a `forward`, calls its [`ClientLink`](registry::ClientLink),
//! which pushes `Outgoing::ClientMsg { client_id, payload }` into the
//! device's outbox under the device's lock (so messages to one device keep
//! their order). That push wakes the device's websocket task, which takes
//! everything queued at once, encodes each item as a protocol frame
//! (`websocket/encode.rs`) and writes the batch with one flush. The payload
//! is copied once out of the client's frame and never re-encoded. A polling
//! client's session is the same; the polling adapter (`polling.rs`) answers
//! its HTTP requests from its outbox instead of a socket.
//!
//! Modules: [`session`] (the per-connection state machines), [`registry`]
//! (who is connected; its handles' drop is the disconnect), [`outbox`]
//! (each connection's bounded queue), [`outgoing`] (what goes in it),
//! [`error`] (every error the server sends), [`rate`] (the rate limit),
//! [`resume`] (sessions that outlive their connection).
//!
//! # A session and its connections
//!
//! A session usually lives and dies with one connection. With resume on, a
//! session whose connection drops is *away*: its front door keeps it (the
//! same task, the same [`Connection`]), [`Connection::park`] stops its
//! keepalive, its outbox holds what is sent to it, and nothing is
//! announced. A new connection that brings its token is handed to that
//! task, which writes what the peer missed and goes on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;

use crate::metrics::{Direction, Metrics};

pub mod cluster;
pub mod error;
pub mod grant;
pub mod outbox;
pub mod outgoing;
pub mod rate;
pub mod registry;
pub mod resume;
pub mod session;

pub use error::{CloseCode, ServerError};
pub use grant::{DevicePattern, Grant};
pub use outbox::{Batch, Outbox, OutboxLimits, PushError};
pub use outgoing::{Json, Outgoing};
pub use rate::RateLimit;
pub use resume::{RandomSource, Resumes};
pub use session::Session;

use rate::Gcra;
use registry::Registry;

/// Fresh TURN credentials for one device or client. A front door's part
/// (`turn.rs`): they need the wall clock and the shared secret, which the
/// core does not touch.
pub trait TurnCredentials: Send + Sync + std::fmt::Debug {
    /// The `ice_servers` entries whose credentials name `who`, valid from
    /// now.
    fn ice_servers(&self, who: &str) -> Vec<protocol::IceServer>;
}

/// What the core needs of the server's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `ice_servers` in every `config` message, at start (see
    /// [`Core::set_ice_servers`]).
    pub ice_servers: Vec<protocol::IceServer>,
    /// Where each `config` gets its own TURN credentials, if the server
    /// hands any out.
    pub turn: Option<Arc<dyn TurnCredentials>>,
    /// How long a client may wait for its device to register; zero keeps
    /// the reference flow (C2).
    pub client_wait: Duration,
    /// How long a new connection has to `register` or `connect`.
    pub handshake_timeout: Duration,
    /// The bounds of every outbox.
    pub outbox: OutboxLimits,
    /// The per-connection rate limit, if any.
    pub rate_limit: Option<RateLimit>,
    /// The most bytes in a frame either side receives
    /// (`--max-message-bytes`): a client's payload is relayed only if the
    /// `client_msg` carrying it fits.
    pub max_message_bytes: usize,
    /// How long a session whose connection dropped is held for its peer
    /// to resume it (`--resume-window`); zero holds none.
    pub resume_window: Duration,
    /// Where resume tokens' randomness comes from.
    pub random: Arc<dyn RandomSource>,
}

/// What every session shares: settings, the registry, metrics. The one
/// home of the core's server-wide state; the front doors keep theirs beside
/// it in `ServerState` (lib.rs).
#[derive(Debug)]
pub struct Core {
    pub settings: Settings,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    /// The resume tokens of every resumable session.
    pub resumes: Arc<Resumes>,
    /// The `config` message every device and client gets (without TURN
    /// credentials, which are each one's own); replaced when the ICE
    /// servers are read again.
    config: RwLock<Arc<protocol::Config>>,
    /// Numbers the clients in their TURN usernames (a client has no id
    /// yet when its `config` is sent).
    turn_serial: AtomicU64,
    rate: Option<Gcra>,
    relayed_to_device: Counter,
    relayed_to_client: Counter,
}

impl Core {
    pub fn new(settings: Settings, metrics: Arc<Metrics>) -> Self {
        Self::with_cluster(settings, metrics, None)
    }

    /// A core that shares its devices with other instances through
    /// `cluster` (PROTOCOL.md, "Many instances").
    pub fn with_cluster(
        settings: Settings,
        metrics: Arc<Metrics>,
        cluster: Option<Arc<cluster::Cluster>>,
    ) -> Self {
        Self {
            config: RwLock::new(Arc::new(protocol::Config {
                ice_servers: settings.ice_servers.clone(),
            })),
            turn_serial: AtomicU64::new(0),
            rate: settings.rate_limit.and_then(Gcra::new),
            resumes: Arc::new(Resumes::new(
                settings.resume_window,
                settings.random.clone(),
            )),
            settings,
            registry: Arc::new(Registry::new(metrics.clone(), cluster)),
            relayed_to_device: metrics.relayed(Direction::ClientToDevice),
            relayed_to_client: metrics.relayed(Direction::DeviceToClient),
            metrics,
        }
    }

    /// The `config` message without TURN credentials.
    pub fn config(&self) -> Arc<protocol::Config> {
        // Each write is one assignment: a panic cannot leave it half done.
        self.config
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Every `config` from now on carries these `ice_servers` (and TURN
    /// credentials after them, as before); sessions already open keep the
    /// `config` they were sent.
    pub fn set_ice_servers(&self, ice_servers: Vec<protocol::IceServer>) {
        let config = Arc::new(protocol::Config { ice_servers });
        *self
            .config
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = config;
    }

    /// The `config` message for the device `device_id`: its TURN username
    /// names it.
    pub fn device_config(&self, device_id: &str) -> Arc<protocol::Config> {
        self.config_for(|| device_id.to_owned())
    }

    /// The `config` message for a client of `device_id`: its TURN username
    /// names the device and numbers the client, `<device_id>/client-<n>`.
    pub fn client_config(&self, device_id: &str) -> Arc<protocol::Config> {
        self.config_for(|| format!("{device_id}/client-{}", self.next_turn_serial()))
    }

    /// The `config` for a request that names no device (`/infra_config`):
    /// `client-<n>`.
    pub fn anonymous_config(&self) -> Arc<protocol::Config> {
        self.config_for(|| format!("client-{}", self.next_turn_serial()))
    }

    fn next_turn_serial(&self) -> u64 {
        self.turn_serial.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn config_for(&self, who: impl FnOnce() -> String) -> Arc<protocol::Config> {
        let base = self.config();
        let Some(turn) = &self.settings.turn else {
            return base;
        };
        let mut ice_servers = base.ice_servers.clone();
        ice_servers.extend(turn.ice_servers(&who()));
        Arc::new(protocol::Config { ice_servers })
    }

    /// A new, empty outbox with the configured bounds.
    pub fn outbox(&self) -> Outbox {
        Outbox::new(self.settings.outbox)
    }

    /// The ending of a connection whose outbox overflowed; counted.
    pub fn slow_consumer(&self) -> ServerError {
        let error = self.slow_consumer_error();
        self.metrics.error_sent(&error);
        error
    }

    /// The same, not counted (for a front door that counts it elsewhere).
    pub fn slow_consumer_error(&self) -> ServerError {
        ServerError::SlowConsumer {
            messages: self.settings.outbox.max_messages,
            bytes: self.settings.outbox.max_bytes,
        }
    }
}

/// How long a connection with no deadline at all (no idle timeout, no
/// ping, no session timer) sleeps before it looks again.
const NOTHING_DUE_RECHECK: Duration = Duration::from_secs(24 * 60 * 60);

/// How a front door keeps a connection alive, or gives up on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// A connection that shows no sign of life for this long is ended;
    /// `None` where the transport itself reports a peer that is gone (a
    /// unix socket's end of stream when its process exits).
    pub idle: Option<Duration>,
    /// Probe the peer this often (a websocket ping), if the front door can.
    pub ping: Option<Duration>,
}

/// What a connection's timeout asks of its front door.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    /// Send a keepalive probe.
    Ping,
    /// End the connection now with this close, without sending what is
    /// queued: the peer has stopped answering.
    End(ServerError),
}

/// One connection as its front door drives it: its session, behind the
/// gate every frame passes (the session is not over; the sender is within
/// its rate limit), and its keepalive.
#[derive(Debug)]
pub struct Connection<S> {
    session: S,
    /// The rate limit's state (see `rate.rs`).
    rate_due: Instant,
    last_seen: Instant,
    /// When the front door last woke it: with nothing due, the next look
    /// is a while after this.
    last_woken: Instant,
    next_ping: Option<Instant>,
    keepalive: Keepalive,
    /// Its transport dropped and it is held for a resume: no keepalive.
    away: bool,
    /// The text frames that came in (the `received` of a resume).
    frames_in: u64,
}

impl<S: Session> Connection<S> {
    /// A connection opened at `now`.
    pub fn new(session: S, keepalive: Keepalive, now: Instant) -> Self {
        Self {
            session,
            rate_due: now,
            last_seen: now,
            last_woken: now,
            next_ping: keepalive.ping.map(|ping| now + ping),
            keepalive,
            away: false,
            frames_in: 0,
        }
    }

    /// How many text frames its peer sent in the session, on every
    /// connection it had.
    pub fn frames_in(&self) -> u64 {
        self.frames_in
    }

    /// Its transport dropped: the session is held, and nothing is due
    /// but the session's own deadlines (a token's expiry, a client's wait).
    pub fn park(&mut self) {
        self.away = true;
        self.session.set_away(true);
    }

    /// A new transport took the session back at `now`: its keepalive
    /// starts over.
    pub fn unpark(&mut self, now: Instant) {
        self.away = false;
        self.session.set_away(false);
        self.last_seen = now;
        self.next_ping = self.keepalive.ping.map(|ping| now + ping);
    }

    /// Whether it is held for a resume.
    pub fn is_away(&self) -> bool {
        self.away
    }

    pub fn session(&self) -> &S {
        &self.session
    }

    pub fn session_mut(&mut self) -> &mut S {
        &mut self.session
    }

    /// What every session shares.
    pub fn core(&self) -> &Arc<Core> {
        &self.session.replies().core
    }

    /// Its outbox: what the front door sends.
    pub fn outbox(&self) -> &Outbox {
        &self.session.replies().outbox
    }

    /// The peer showed a sign of life (any frame, a pong, a request).
    pub fn on_activity(&mut self, now: Instant) {
        self.last_seen = now;
    }

    /// A text frame arrived at `now`.
    pub fn on_text(&mut self, text: &str, now: Instant) {
        self.on_activity(now);
        self.frames_in += 1;
        if self.admit(now) {
            self.session.on_text(text, now);
        }
    }

    /// Whether a message arriving at `now` may be acted on: not once the
    /// session is over (after a fatal error, what the peer sends meanwhile
    /// is read but not acted on), and not past the rate limit, which ends
    /// the session (D17, C15).
    pub fn admit(&mut self, now: Instant) -> bool {
        let replies = self.session.replies();
        if replies.outbox.is_closing() {
            return false;
        }
        let core = &replies.core;
        match (&core.rate, core.settings.rate_limit) {
            (Some(rate), Some(limit)) if !rate.allow(&mut self.rate_due, now) => {
                replies.send_error(ServerError::RateLimited {
                    per_second: limit.per_second,
                    burst: limit.burst,
                });
                false
            }
            _ => true,
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    pub fn poll_timeout(&self) -> Instant {
        let keepalive = !self.away;
        let idle_at = self
            .keepalive
            .idle
            .filter(|_| keepalive)
            .map(|idle| self.last_seen + idle);
        let next_ping = self.next_ping.filter(|_| keepalive);
        let session = if self.outbox().is_closing() {
            None
        } else {
            self.session.poll_timeout()
        };
        [idle_at, next_ping, session]
            .into_iter()
            .flatten()
            .min()
            // Nothing is due: look again after a while, and find nothing.
            .unwrap_or(self.last_woken.max(self.last_seen) + NOTHING_DUE_RECHECK)
    }

    /// Acts on every deadline that has passed by `now`.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Due> {
        self.last_woken = self.last_woken.max(now);
        if !self.away
            && self
                .keepalive
                .idle
                .is_some_and(|idle| now >= self.last_seen + idle)
        {
            let error = ServerError::IdleTimeout;
            self.session.replies().core.metrics.error_sent(&error);
            return Some(Due::End(error));
        }
        if !self.outbox().is_closing() && self.session.poll_timeout().is_some_and(|due| now >= due)
        {
            self.session.handle_timeout(now);
        }
        match (self.next_ping, self.keepalive.ping) {
            (Some(at), Some(every)) if now >= at && !self.away => {
                self.next_ping = Some(now + every);
                Some(Due::Ping)
            }
            _ => None,
        }
    }

    /// The ending of this connection when its outbox overflowed; counted.
    pub fn slow_consumer(&self) -> ServerError {
        self.session.replies().core.slow_consumer()
    }
}

#[cfg(test)]
mod tests;
