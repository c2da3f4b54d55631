//! Session resume (PROTOCOL.md, "Resuming a session"): a session whose
//! connection dropped is held for `--resume-window`, and a peer that comes
//! back with its token within that time gets the session back on its new
//! connection, nothing announced to the other side, nothing lost and
//! nothing sent twice.
//!
//! Three parts, none of which touches a socket:
//!
//! - [`Resumes`], the tokens. A session that registered or connected gets a
//!   [`Ticket`] and a token for its peer. The token is 32 random bytes: the
//!   first 12 name the ticket (the *selector*, a map key), the other 20 are
//!   its secret, of which only the SHA-256 is kept and which is compared in
//!   constant time. A token resumes one session, on its own endpoint and
//!   for its own device, once: a resume hands out the next one. A
//!   connection that brings a token *claims* the ticket; once it is handed
//!   to the session's task (`Claim::deliver`), the token is spent.
//! - [`Replay`], one session's books of the frames written to its peer:
//!   numbered from 1, each kept until the peer acknowledges it (a websocket
//!   pong to a ping that carries the count, or at once on a transport that
//!   loses nothing it accepted), so that a peer who says how many it
//!   received gets the rest again, and only the rest.
//! - [`ConnectionEnd::holds_session`]: which endings leave a session held
//!   (no close frame, 1001, or a peer gone silent), and which end it (a
//!   clean close, or any close the server decided).

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::task::AtomicWaker;
use subtle::ConstantTimeEq;

use super::grant::Grant;
use super::outbox::OutboxLimits;
use super::registry::lock;

/// Where randomness comes from: the system's in the server, a seeded one
/// where a test wants the same tokens twice.
pub trait RandomSource: Send + Sync + std::fmt::Debug {
    /// Fills `bytes` with random bytes.
    fn fill(&self, bytes: &mut [u8]);
}

const SELECTOR_BYTES: usize = 12;
const SECRET_BYTES: usize = 20;
const TOKEN_BYTES: usize = SELECTOR_BYTES + SECRET_BYTES;
/// The length of a token in base64url without padding.
pub const TOKEN_CHARS: usize = 43;

type Selector = [u8; SELECTOR_BYTES];
type SecretHash = [u8; 32];

fn secret_hash(secret: &[u8]) -> SecretHash {
    let digest = ring::digest::digest(&ring::digest::SHA256, secret);
    let mut hash = [0u8; 32];
    hash.copy_from_slice(digest.as_ref());
    hash
}

/// The endpoint a session came in by: its token resumes it on that
/// endpoint only (a device's token is no client's, and a session of the
/// seed's `/connect_client` does not come back as a Go operator's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeDoor {
    RegisterDevice,
    DeviceSocket,
    ConnectClient,
    DeviceConnect,
}

impl ResumeDoor {
    fn name(self) -> &'static str {
        match self {
            Self::RegisterDevice => "/register_device",
            Self::DeviceSocket => "the device socket",
            Self::ConnectClient => "/connect_client",
            Self::DeviceConnect => "/devices/{id}/connect",
        }
    }
}

/// Why a resume was refused. Each text starts with `Resume refused`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResumeRefusal {
    /// `--resume-window 0`.
    #[error("Resume refused: this server does not hold sessions (--resume-window 0)")]
    Off,
    /// Not shaped like a token of this server.
    #[error("Resume refused: not a resume token")]
    Malformed,
    /// No session holds it: it was spent by a resume, its session's
    /// window passed, or it was never issued (a guess, or a secret that
    /// does not match: the same answer, so a guess learns nothing).
    #[error(
        "Resume refused: no session holds this token (each token resumes once, within the window)"
    )]
    Unknown,
    /// The session ended while its peer was away, for this reason.
    #[error("Resume refused: the session ended while its connection was away: {0}")]
    Ended(Arc<str>),
    /// The token is a session's of another endpoint.
    #[error("Resume refused: the token is for a session of {held}, not of {asked}")]
    WrongDoor {
        held: &'static str,
        asked: &'static str,
    },
    /// The token is a session's of another device.
    #[error("Resume refused: the token is for a session of another device than {0}")]
    WrongDevice(String),
    /// Another connection is taking the session back at this moment.
    #[error("Resume refused: another connection is resuming this session")]
    Busy,
}

impl ResumeRefusal {
    /// Whether the token is valid but not for this request (forbidden,
    /// rather than gone).
    pub fn is_forbidden(&self) -> bool {
        matches!(self, Self::WrongDoor { .. } | Self::WrongDevice(_))
    }
}

/// The resume tokens of every resumable session, and the sessions that
/// ended while away, until their window is over.
#[derive(Debug)]
pub struct Resumes {
    window: Duration,
    random: Arc<dyn RandomSource>,
    /// Each ticket under its current selector. Lock order: this, then a
    /// ticket's state.
    live: Mutex<HashMap<Selector, Arc<Shared>>>,
    ended: Mutex<Tombstones>,
}

/// Why each session that ended while away ended, until its window would
/// have.
#[derive(Debug, Default)]
struct Tombstones {
    reasons: HashMap<Selector, (Arc<str>, Instant)>,
    /// In the order they lapse: every window is as long.
    order: VecDeque<(Selector, Instant)>,
}

impl Tombstones {
    fn sweep(&mut self, now: Instant) {
        while let Some((selector, until)) = self.order.front().copied() {
            if until > now {
                break;
            }
            self.order.pop_front();
            if self
                .reasons
                .get(&selector)
                .is_some_and(|(_, at)| *at == until)
            {
                self.reasons.remove(&selector);
            }
        }
    }
}

/// A ticket's books, shared by its [`Ticket`], the table and a
/// [`Claim`].
#[derive(Debug)]
struct Shared {
    door: ResumeDoor,
    device_id: Arc<str>,
    state: Mutex<TicketState>,
    /// The session's task: a connection was handed over, or a claim let
    /// go.
    wake: AtomicWaker,
}

#[derive(Debug)]
struct TicketState {
    selector: Selector,
    secret: SecretHash,
    /// Held since its connection dropped, until then.
    away_until: Option<Instant>,
    /// A connection has claimed it and is about to hand itself over.
    claimed: bool,
    handoff: Option<Handoff>,
    /// A claim let go without handing over, since the task last looked.
    released: bool,
    /// The session is over: nothing more is handed to it.
    over: bool,
    /// Why it ended while away, for a token that comes back.
    end_reason: Option<Arc<str>>,
}

/// What happens to a ticket while its session runs.
#[derive(Debug)]
pub enum TicketEvent {
    /// A connection took the session back.
    Handoff(Handoff),
    /// A connection that claimed it let go without taking it: a window
    /// that passed meanwhile is over now.
    Released,
}

/// A new connection for a held (or live) session.
#[derive(Debug)]
pub struct Handoff {
    /// The new transport, as its front door made it (the door that
    /// claimed the ticket is the ticket's own, so the task knows the type).
    pub transport: Box<dyn Any + Send>,
    /// How many frames of the session the peer says it received.
    pub received: u64,
    /// The token the peer gets for its next resume.
    pub token: String,
    /// What the new connection's credentials allow, where the door checks
    /// them: it replaces the session's grant.
    pub grant: Option<Grant>,
}

impl Resumes {
    pub fn new(window: Duration, random: Arc<dyn RandomSource>) -> Self {
        Self {
            window,
            random,
            live: Mutex::new(HashMap::new()),
            ended: Mutex::default(),
        }
    }

    /// How long a session whose connection dropped is held; zero is never.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// A ticket for a session of `device_id` on `door`, and its peer's
    /// token; none when resume is off.
    pub fn issue(self: &Arc<Self>, door: ResumeDoor, device_id: &str) -> Option<(Ticket, String)> {
        if self.window.is_zero() {
            return None;
        }
        let (selector, secret, token) = self.new_token();
        let shared = Arc::new(Shared {
            door,
            device_id: device_id.into(),
            state: Mutex::new(TicketState {
                selector,
                secret,
                away_until: None,
                claimed: false,
                handoff: None,
                released: false,
                over: false,
                end_reason: None,
            }),
            wake: AtomicWaker::new(),
        });
        lock(&self.live).insert(selector, shared.clone());
        Some((
            Ticket {
                resumes: self.clone(),
                shared,
            },
            token,
        ))
    }

    fn new_token(&self) -> (Selector, SecretHash, String) {
        loop {
            let mut bytes = [0u8; TOKEN_BYTES];
            self.random.fill(&mut bytes);
            let mut selector = [0u8; SELECTOR_BYTES];
            selector.copy_from_slice(&bytes[..SELECTOR_BYTES]);
            // 96 random bits do not collide; a source that repeats itself
            // (a broken one) must not hand one session's token to another.
            if lock(&self.live).contains_key(&selector) {
                continue;
            }
            let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
            return (selector, secret_hash(&bytes[SELECTOR_BYTES..]), token);
        }
    }

    /// A connection on `door` brings `token` at `now`, for `device_id`
    /// where its request names one: the session's ticket, reserved for it,
    /// or why not.
    pub fn claim(
        self: &Arc<Self>,
        token: &str,
        door: ResumeDoor,
        device_id: Option<&str>,
        now: Instant,
    ) -> Result<Claim, ResumeRefusal> {
        if self.window.is_zero() {
            return Err(ResumeRefusal::Off);
        }
        let bytes = (token.len() == TOKEN_CHARS)
            .then(|| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token))
            .and_then(Result::ok)
            .filter(|bytes| bytes.len() == TOKEN_BYTES)
            .ok_or(ResumeRefusal::Malformed)?;
        let mut selector = [0u8; SELECTOR_BYTES];
        selector.copy_from_slice(&bytes[..SELECTOR_BYTES]);
        let presented = secret_hash(&bytes[SELECTOR_BYTES..]);
        let found = lock(&self.live).get(&selector).cloned();
        let Some(shared) = found else {
            let mut ended = lock(&self.ended);
            ended.sweep(now);
            return Err(match ended.reasons.get(&selector) {
                Some((reason, _)) => ResumeRefusal::Ended(reason.clone()),
                None => ResumeRefusal::Unknown,
            });
        };
        let mut state = lock(&shared.state);
        // The selector only finds the ticket; the secret is what proves
        // the token, compared without an early exit.
        if !bool::from(presented.ct_eq(&state.secret)) || state.over {
            return Err(ResumeRefusal::Unknown);
        }
        if shared.door != door {
            return Err(ResumeRefusal::WrongDoor {
                held: shared.door.name(),
                asked: door.name(),
            });
        }
        if let Some(id) = device_id
            && *id != *shared.device_id
        {
            return Err(ResumeRefusal::WrongDevice(id.to_owned()));
        }
        if state.claimed || state.handoff.is_some() {
            return Err(ResumeRefusal::Busy);
        }
        // Its task may not have ended it yet; the token is past use.
        if state.away_until.is_some_and(|until| now >= until) {
            return Err(ResumeRefusal::Unknown);
        }
        state.claimed = true;
        drop(state);
        Ok(Claim {
            resumes: self.clone(),
            shared: Some(shared),
        })
    }

    /// How many sessions can be resumed right now (connected or away).
    pub fn tickets(&self) -> usize {
        lock(&self.live).len()
    }
}

/// A session's right to be resumed; its connection task holds it (through
/// the session). Dropping it ends that right: the session is over.
#[derive(Debug)]
pub struct Ticket {
    resumes: Arc<Resumes>,
    shared: Arc<Shared>,
}

impl Ticket {
    /// The connection dropped at `now`: the session is held until the
    /// window is over, which this returns.
    pub fn park(&self, now: Instant) -> Instant {
        let until = now + self.resumes.window;
        lock(&self.shared.state).away_until = Some(until);
        until
    }

    /// The session has a connection again.
    pub fn unpark(&self) {
        lock(&self.shared.state).away_until = None;
    }

    /// Whether the window of a held session has passed by `now`, with no
    /// connection about to take it back.
    pub fn expired(&self, now: Instant) -> bool {
        let state = lock(&self.shared.state);
        !state.claimed
            && state.handoff.is_none()
            && state.away_until.is_some_and(|until| now >= until)
    }

    /// When a held session's window ends, unless a connection is taking
    /// it back (then the claim decides: a handoff, or a release after
    /// which this says again).
    pub fn deadline(&self) -> Option<Instant> {
        let state = lock(&self.shared.state);
        if state.claimed || state.handoff.is_some() {
            return None;
        }
        state.away_until
    }

    /// What happened to the ticket since the task last looked; registers
    /// the task to be woken by the next thing.
    pub fn poll_event(&self, cx: &mut Context<'_>) -> Poll<TicketEvent> {
        self.shared.wake.register(cx.waker());
        let mut state = lock(&self.shared.state);
        if let Some(handoff) = state.handoff.take() {
            state.released = false;
            return Poll::Ready(TicketEvent::Handoff(handoff));
        }
        if std::mem::take(&mut state.released) {
            return Poll::Ready(TicketEvent::Released);
        }
        Poll::Pending
    }

    /// Waits for [`Self::poll_event`].
    pub async fn event(&self) -> TicketEvent {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    /// The session is ending while away, for `reason`: a token that comes
    /// back within the window is told so.
    pub fn ended_while_away(&self, reason: impl std::fmt::Display) {
        lock(&self.shared.state).end_reason = Some(reason.to_string().into());
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut live = lock(&self.resumes.live);
        let mut state = lock(&self.shared.state);
        state.over = true;
        // A connection handed over just now goes with the session.
        state.handoff = None;
        if live
            .get(&state.selector)
            .is_some_and(|found| Arc::ptr_eq(found, &self.shared))
        {
            live.remove(&state.selector);
        }
        drop(live);
        if let (Some(reason), Some(until)) = (state.end_reason.clone(), state.away_until) {
            let mut ended = lock(&self.resumes.ended);
            // Every window is as long, so whatever lapses before this
            // one's start (a time already past) is over.
            ended.sweep(until - self.resumes.window);
            ended.reasons.insert(state.selector, (reason, until));
            ended.order.push_back((state.selector, until));
        }
    }
}

/// A ticket reserved for one connection. Handing the connection over
/// spends the token; dropping the claim first leaves it as it was.
#[derive(Debug)]
pub struct Claim {
    resumes: Arc<Resumes>,
    shared: Option<Arc<Shared>>,
}

impl Claim {
    /// The device of the claimed session.
    pub fn device_id(&self) -> &str {
        self.shared.as_ref().map_or("", |shared| &shared.device_id)
    }

    /// Hands `transport` to the session, whose peer received `received`
    /// of its frames: the token is spent, and the next one is in the
    /// handoff. The transport comes back if the session ended meanwhile.
    pub fn deliver(
        mut self,
        transport: Box<dyn Any + Send>,
        received: u64,
        grant: Option<Grant>,
    ) -> Result<(), (Box<dyn Any + Send>, ResumeRefusal)> {
        let Some(shared) = self.shared.take() else {
            return Err((transport, ResumeRefusal::Unknown));
        };
        let (selector, secret, token) = self.resumes.new_token();
        let mut live = lock(&self.resumes.live);
        let mut state = lock(&shared.state);
        state.claimed = false;
        if state.over {
            let reason = state.end_reason.clone();
            drop(state);
            drop(live);
            shared.wake.wake();
            return Err((
                transport,
                reason.map_or(ResumeRefusal::Unknown, ResumeRefusal::Ended),
            ));
        }
        live.remove(&state.selector);
        live.insert(selector, shared.clone());
        state.selector = selector;
        state.secret = secret;
        state.handoff = Some(Handoff {
            transport,
            received,
            token,
            grant,
        });
        drop(state);
        drop(live);
        shared.wake.wake();
        Ok(())
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            let mut state = lock(&shared.state);
            state.claimed = false;
            state.released = true;
            drop(state);
            shared.wake.wake();
        }
    }
}

/// How a connection ended, as far as its session is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionEnd {
    /// Without a close: the socket failed, or its peer's end went away
    /// (a websocket without a close frame, a device socket's end).
    Lost,
    /// The peer sent a close frame, with this code if it gave one.
    PeerClosed(Option<u16>),
    /// The peer showed no sign of life for the idle timeout.
    Silent,
    /// The server ended it (an error, a limit, shutdown).
    Server,
}

impl ConnectionEnd {
    /// Whether the session outlives this connection, held for a resume: a
    /// connection lost, closed with 1001 (going away: a page navigating,
    /// a network changing), or silent. A clean close (1000, or any other
    /// code) and every close the server decided end the session at once.
    pub fn holds_session(self) -> bool {
        matches!(
            self,
            Self::Lost | Self::Silent | Self::PeerClosed(Some(1001))
        )
    }
}

/// What a frame kept for a replay weighs.
pub trait ReplayFrame {
    /// Its length in bytes.
    fn bytes(&self) -> usize;
}

/// One session's books of the frames written to its peer, numbered from
/// 1: the count, and the frames its peer has not acknowledged, within the
/// outbox's bounds (past them the oldest are let go, and a resume that
/// needs one of them fails).
#[derive(Debug)]
pub struct Replay<F> {
    kept: VecDeque<F>,
    /// The number of `kept[0]`; one past `sent` when nothing is kept.
    first: u64,
    sent: u64,
    bytes: usize,
    limits: OutboxLimits,
}

/// Why the frames a peer asks for cannot be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error("Resume refused: received {received} is more than the {sent} frames sent")]
    Ahead { received: u64, sent: u64 },
    #[error(
        "Resume refused: the frames after {received} are no longer held (the server holds those from {first} on)"
    )]
    Gone { received: u64, first: u64 },
}

impl<F: ReplayFrame> Replay<F> {
    pub fn new(limits: OutboxLimits) -> Self {
        Self {
            kept: VecDeque::new(),
            first: 1,
            sent: 0,
            bytes: 0,
            limits,
        }
    }

    /// How many frames were written in the session.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// A frame was written; kept until the peer acknowledges it.
    pub fn written(&mut self, frame: F) {
        self.sent += 1;
        self.bytes += frame.bytes();
        self.kept.push_back(frame);
        while self.kept.len() > self.limits.max_messages || self.bytes > self.limits.max_bytes {
            self.forget_oldest();
        }
    }

    /// A frame was written on a transport that delivers what it accepts
    /// (a unix socket's peer reads it even after the server has gone), so
    /// it is counted and not kept.
    pub fn written_and_delivered(&mut self) {
        self.sent += 1;
        self.acknowledged(self.sent);
    }

    fn forget_oldest(&mut self) {
        if let Some(frame) = self.kept.pop_front() {
            self.bytes -= frame.bytes();
            self.first += 1;
        }
    }

    /// The peer received every frame up to number `n` (beyond what was
    /// sent, it means nothing).
    pub fn acknowledged(&mut self, n: u64) {
        if n > self.sent {
            return;
        }
        while self.first <= n && !self.kept.is_empty() {
            self.forget_oldest();
        }
        self.first = self.first.max(n + 1);
    }

    /// How many frames, and bytes of them, wait for an acknowledgement.
    pub fn unacknowledged(&self) -> (usize, usize) {
        (self.kept.len(), self.bytes)
    }

    /// The frames a peer that received `received` of them lacks, in order.
    pub fn missing(&self, received: u64) -> Result<impl Iterator<Item = &F>, ReplayError> {
        if received > self.sent {
            return Err(ReplayError::Ahead {
                received,
                sent: self.sent,
            });
        }
        if received + 1 < self.first {
            return Err(ReplayError::Gone {
                received,
                first: self.first,
            });
        }
        let skip = usize::try_from(received + 1 - self.first).unwrap_or(usize::MAX);
        Ok(self.kept.iter().skip(skip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes from a counter: every token differs, and the test knows them.
    #[derive(Debug, Default)]
    struct Counting(Mutex<u8>);

    impl RandomSource for Counting {
        fn fill(&self, bytes: &mut [u8]) {
            let mut next = lock(&self.0);
            for byte in bytes {
                *next = next.wrapping_add(1);
                *byte = *next;
            }
        }
    }

    fn resumes(window: Duration) -> Arc<Resumes> {
        Arc::new(Resumes::new(window, Arc::new(Counting::default())))
    }

    const WINDOW: Duration = Duration::from_secs(30);

    fn event(ticket: &Ticket) -> Option<TicketEvent> {
        let waker = futures_util::task::noop_waker();
        match ticket.poll_event(&mut Context::from_waker(&waker)) {
            Poll::Ready(event) => Some(event),
            Poll::Pending => None,
        }
    }

    /// Hands over a transport holding `n`, and returns the handoff the
    /// session's task sees.
    fn resume(ticket: &Ticket, claim: Claim, n: u32, received: u64) -> Handoff {
        claim.deliver(Box::new(n), received, None).unwrap();
        match event(ticket) {
            Some(TicketEvent::Handoff(handoff)) => handoff,
            other => panic!("nothing handed over: {other:?}"),
        }
    }

    #[test]
    fn a_token_resumes_its_session_once_and_the_next_token_the_next_time() {
        let resumes = resumes(WINDOW);
        let now = Instant::now();
        let (ticket, token) = resumes.issue(ResumeDoor::ConnectClient, "cvd-1").unwrap();
        assert_eq!(token.len(), TOKEN_CHARS);
        ticket.park(now);
        let claim = resumes
            .claim(&token, ResumeDoor::ConnectClient, None, now)
            .unwrap();
        assert_eq!(claim.device_id(), "cvd-1");
        let handoff = resume(&ticket, claim, 7, 3);
        assert_eq!(*handoff.transport.downcast::<u32>().unwrap(), 7);
        assert_eq!(handoff.received, 3);
        assert_ne!(handoff.token, token);
        // Spent: the same token again is unknown, the new one works.
        assert_eq!(
            resumes
                .claim(&token, ResumeDoor::ConnectClient, None, now)
                .unwrap_err(),
            ResumeRefusal::Unknown
        );
        let next = resumes
            .claim(&handoff.token, ResumeDoor::ConnectClient, None, now)
            .unwrap();
        drop(next);
        assert_eq!(resumes.tickets(), 1);
        drop(ticket);
        assert_eq!(resumes.tickets(), 0);
    }

    #[test]
    fn a_token_is_bound_to_its_endpoint_and_device() {
        let resumes = resumes(WINDOW);
        let now = Instant::now();
        let (_ticket, token) = resumes.issue(ResumeDoor::DeviceConnect, "cvd-1").unwrap();
        assert_eq!(
            resumes
                .claim(&token, ResumeDoor::RegisterDevice, None, now)
                .unwrap_err(),
            ResumeRefusal::WrongDoor {
                held: "/devices/{id}/connect",
                asked: "/register_device"
            }
        );
        assert_eq!(
            resumes
                .claim(&token, ResumeDoor::DeviceConnect, Some("cvd-2"), now)
                .unwrap_err(),
            ResumeRefusal::WrongDevice("cvd-2".into())
        );
        // A refusal spends nothing.
        assert!(
            resumes
                .claim(&token, ResumeDoor::DeviceConnect, Some("cvd-1"), now)
                .is_ok()
        );
    }

    #[test]
    fn a_guessed_or_malformed_token_learns_nothing() {
        let resumes = resumes(WINDOW);
        let now = Instant::now();
        let (_ticket, token) = resumes.issue(ResumeDoor::ConnectClient, "cvd-1").unwrap();
        // The right selector with another secret reads as no token at all
        // (character 30 is of the secret's bits).
        let mut forged: Vec<char> = token.chars().collect();
        forged[30] = if forged[30] == 'A' { 'B' } else { 'A' };
        let forged: String = forged.into_iter().collect();
        assert_eq!(
            resumes
                .claim(&forged, ResumeDoor::ConnectClient, None, now)
                .unwrap_err(),
            ResumeRefusal::Unknown
        );
        for bad in ["", "short", &"!".repeat(TOKEN_CHARS), &format!("{token}A")] {
            assert_eq!(
                resumes
                    .claim(bad, ResumeDoor::ConnectClient, None, now)
                    .unwrap_err(),
                ResumeRefusal::Malformed,
                "{bad}"
            );
        }
    }

    #[test]
    fn a_token_does_not_outlive_the_window() {
        let resumes = resumes(WINDOW);
        let now = Instant::now();
        let (ticket, token) = resumes.issue(ResumeDoor::ConnectClient, "cvd-1").unwrap();
        // While its connection is up, a token has no deadline.
        assert!(!ticket.expired(now + WINDOW * 10));
        let until = ticket.park(now);
        assert_eq!(until, now + WINDOW);
        assert!(!ticket.expired(until - Duration::from_millis(1)));
        assert!(ticket.expired(until));
        assert_eq!(
            resumes
                .claim(&token, ResumeDoor::ConnectClient, None, until)
                .unwrap_err(),
            ResumeRefusal::Unknown
        );
        // A claim just before the end holds the window open until it
        // hands over or lets go, and its task hears when it lets go.
        let claim = resumes
            .claim(
                &token,
                ResumeDoor::ConnectClient,
                None,
                until - Duration::from_millis(1),
            )
            .unwrap();
        assert!(!ticket.expired(until));
        assert_eq!(ticket.deadline(), None);
        assert!(event(&ticket).is_none());
        drop(claim);
        assert!(matches!(event(&ticket), Some(TicketEvent::Released)));
        assert!(event(&ticket).is_none());
        assert!(ticket.expired(until));
        assert_eq!(ticket.deadline(), Some(until));
    }

    #[test]
    fn a_session_that_ended_while_away_says_why_until_its_window_is_over() {
        let resumes = resumes(WINDOW);
        let now = Instant::now();
        let (ticket, token) = resumes.issue(ResumeDoor::RegisterDevice, "cvd-1").unwrap();
        ticket.park(now);
        ticket.ended_while_away("Slow consumer: more than 1 messages");
        drop(ticket);
        assert_eq!(
            resumes
                .claim(&token, ResumeDoor::RegisterDevice, None, now)
                .unwrap_err(),
            ResumeRefusal::Ended("Slow consumer: more than 1 messages".into())
        );
        assert_eq!(
            resumes
                .claim(&token, ResumeDoor::RegisterDevice, None, now + WINDOW)
                .unwrap_err(),
            ResumeRefusal::Unknown
        );
        assert!(lock(&resumes.ended).reasons.is_empty());
    }

    #[test]
    fn only_one_connection_takes_a_session_back_and_a_late_one_gets_its_transport_back() {
        let resumes = resumes(WINDOW);
        let now = Instant::now();
        let (ticket, token) = resumes.issue(ResumeDoor::ConnectClient, "cvd-1").unwrap();
        let claim = resumes
            .claim(&token, ResumeDoor::ConnectClient, None, now)
            .unwrap();
        assert_eq!(
            resumes
                .claim(&token, ResumeDoor::ConnectClient, None, now)
                .unwrap_err(),
            ResumeRefusal::Busy
        );
        ticket.park(now);
        ticket.ended_while_away("Device disconnected");
        drop(ticket);
        let (transport, refusal) = claim.deliver(Box::new(1u32), 0, None).unwrap_err();
        assert_eq!(*transport.downcast::<u32>().unwrap(), 1);
        assert_eq!(refusal, ResumeRefusal::Ended("Device disconnected".into()));
    }

    #[test]
    fn nothing_is_issued_with_the_window_at_zero() {
        let resumes = resumes(Duration::ZERO);
        assert!(resumes.issue(ResumeDoor::ConnectClient, "x").is_none());
        assert_eq!(
            resumes
                .claim("x", ResumeDoor::ConnectClient, None, Instant::now())
                .unwrap_err(),
            ResumeRefusal::Off
        );
    }

    #[test]
    fn which_endings_hold_a_session() {
        assert!(ConnectionEnd::Lost.holds_session());
        assert!(ConnectionEnd::Silent.holds_session());
        assert!(ConnectionEnd::PeerClosed(Some(1001)).holds_session());
        assert!(!ConnectionEnd::PeerClosed(Some(1000)).holds_session());
        assert!(!ConnectionEnd::PeerClosed(None).holds_session());
        assert!(!ConnectionEnd::PeerClosed(Some(4000)).holds_session());
        assert!(!ConnectionEnd::Server.holds_session());
    }

    impl ReplayFrame for &'static str {
        fn bytes(&self) -> usize {
            self.len()
        }
    }

    fn limits(max_messages: usize, max_bytes: usize) -> OutboxLimits {
        OutboxLimits {
            max_messages,
            max_bytes,
        }
    }

    fn missing(replay: &Replay<&'static str>, received: u64) -> Vec<&'static str> {
        replay.missing(received).unwrap().copied().collect()
    }

    #[test]
    fn a_peer_gets_again_exactly_what_it_did_not_receive() {
        let mut replay = Replay::new(limits(10, 1000));
        for frame in ["a", "b", "c", "d"] {
            replay.written(frame);
        }
        assert_eq!(replay.sent(), 4);
        assert_eq!(missing(&replay, 4), Vec::<&str>::new());
        assert_eq!(missing(&replay, 1), ["b", "c", "d"]);
        assert_eq!(missing(&replay, 0), ["a", "b", "c", "d"]);
        // An acknowledgement lets them go.
        replay.acknowledged(2);
        assert_eq!(replay.unacknowledged(), (2, 2));
        assert_eq!(missing(&replay, 2), ["c", "d"]);
        assert_eq!(
            replay.missing(1).err(),
            Some(ReplayError::Gone {
                received: 1,
                first: 3
            })
        );
        assert_eq!(
            replay.missing(5).err(),
            Some(ReplayError::Ahead {
                received: 5,
                sent: 4
            })
        );
        // One beyond what was sent acknowledges nothing.
        replay.acknowledged(9);
        assert_eq!(replay.unacknowledged(), (2, 2));
        replay.acknowledged(4);
        assert_eq!(replay.unacknowledged(), (0, 0));
        assert_eq!(missing(&replay, 4), Vec::<&str>::new());
    }

    #[test]
    fn what_is_kept_stays_within_the_outbox_bounds() {
        let mut replay = Replay::new(limits(2, 1000));
        for frame in ["a", "b", "c"] {
            replay.written(frame);
        }
        assert_eq!(missing(&replay, 1), ["b", "c"]);
        assert!(replay.missing(0).is_err());
        let mut replay = Replay::new(limits(100, 5));
        for frame in ["abc", "de", "f"] {
            replay.written(frame);
        }
        assert_eq!(replay.unacknowledged(), (2, 3));
        assert_eq!(missing(&replay, 1), ["de", "f"]);
    }

    #[test]
    fn a_transport_that_delivers_what_it_takes_keeps_nothing() {
        let mut replay = Replay::<&'static str>::new(limits(10, 1000));
        replay.written_and_delivered();
        replay.written_and_delivered();
        assert_eq!(replay.sent(), 2);
        assert_eq!(replay.unacknowledged(), (0, 0));
        assert_eq!(missing(&replay, 2), Vec::<&str>::new());
        assert!(replay.missing(1).is_err());
    }
}
