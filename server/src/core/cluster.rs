//! What the core knows of other instances (PROTOCOL.md, "Many
//! instances"), and nothing of how it reaches them: the cluster adapter
//! (`src/cluster/`) carries what is queued here over Redis and hands back
//! what arrives, as another front door would.
//!
//! A session spans two instances when its client sits on one and its
//! device on the other. The device's instance holds the client as a
//! *remote end* of the device ([`Inbound`] keeps its link); the client's
//! instance holds the device as a [`RemoteSession`]. Every frame between
//! them carries a sequence number per session and direction: a gap means
//! Redis dropped something, and the session is closed with the usual
//! announcements rather than going on without it.
//!
//! Each time an instance joins Redis it takes a new *incarnation* (a random
//! 64-bit number): sessions, leases and directory entries belong to one.
//! An instance that lost Redis and came back is a new incarnation, so
//! whatever the old one was part of is closed on every side.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::task::AtomicWaker;

use super::error::ServerError;
use super::outbox::Outbox;
use super::outgoing::{Json, Outgoing};
use super::registry::{ClientLink, Descriptor, Registry, lock};

/// One joining of one instance to Redis; never 0.
pub type Incarnation = u64;

/// A device on another instance, as the directory says.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteDevice {
    pub owner: Incarnation,
    /// Its registration at its owner: a new registration of the same id is
    /// another device.
    pub registration: u64,
    pub info: Json,
    pub descriptor: Descriptor,
}

/// A frame from one instance to another.
#[derive(Debug, Clone, PartialEq)]
pub enum Wire {
    /// To the device's instance: a client asks to attach.
    Connect {
        session: u64,
        device_id: Arc<str>,
        registration: u64,
    },
    /// To the client's instance: attached; its `device_info`.
    Attached { session: u64, device_info: Json },
    /// A client's payload to its device.
    ClientMsg {
        session: u64,
        seq: u64,
        payload: Json,
    },
    /// A device's payload to a client.
    DeviceMsg {
        session: u64,
        seq: u64,
        payload: Json,
    },
    /// To the device's instance: the client left (or its side closed the
    /// session).
    Leave { session: u64 },
    /// To the client's instance: the device left, was never there, or its
    /// side closed the session.
    DeviceGone { session: u64 },
}

impl Wire {
    fn queued_bytes(&self) -> usize {
        match self {
            Self::ClientMsg { payload, .. } | Self::DeviceMsg { payload, .. } => payload.len(),
            Self::Attached { device_info, .. } => device_info.len(),
            Self::Connect { device_id, .. } => device_id.len(),
            Self::Leave { .. } | Self::DeviceGone { .. } => 0,
        }
    }
}

/// What the core asks of the cluster adapter.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Send `wire` to the instance `to`.
    Send { to: Incarnation, wire: Wire },
    /// Take the cluster-wide lease on a device id just registered here;
    /// if another instance holds it, evict this registration.
    Claim {
        device_id: Arc<str>,
        registration: u64,
        info: Json,
        descriptor: Descriptor,
    },
    /// Give the lease back: the device left.
    Release {
        device_id: Arc<str>,
        registration: u64,
    },
}

/// Every request in the uplink counts at least this much against its
/// bound, so that a flood of empty frames is bounded too.
const REQUEST_OVERHEAD: usize = 64;

/// The queue from the core to the cluster adapter. Pushing never waits (a
/// registry lock may be held); past its bound in bytes the queue is marked
/// overflowed, and the adapter fails closed: Redis is not keeping up, and
/// every session that spans instances is closed rather than left to lose
/// messages.
#[derive(Debug)]
pub struct Uplink {
    state: Mutex<UplinkState>,
    wake: AtomicWaker,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct UplinkState {
    queue: VecDeque<Request>,
    bytes: usize,
    overflowed: bool,
}

/// What the adapter takes from the uplink at once.
#[derive(Debug, Default)]
pub struct UplinkBatch {
    pub requests: Vec<Request>,
    pub overflowed: bool,
}

impl Uplink {
    fn new(max_bytes: usize) -> Self {
        Self {
            state: Mutex::new(UplinkState::default()),
            wake: AtomicWaker::new(),
            max_bytes,
        }
    }

    /// Queues `request`; false once overflowed (it is dropped: the adapter
    /// is about to close every session it could belong to).
    pub fn push(&self, request: Request) -> bool {
        let len = REQUEST_OVERHEAD
            + match &request {
                Request::Send { wire, .. } => wire.queued_bytes(),
                Request::Claim { info, .. } => info.len(),
                Request::Release { .. } => 0,
            };
        let mut state = lock(&self.state);
        if state.overflowed {
            return false;
        }
        if state.bytes + len > self.max_bytes {
            state.overflowed = true;
            drop(state);
            self.wake.wake();
            return false;
        }
        state.bytes += len;
        state.queue.push_back(request);
        drop(state);
        self.wake.wake();
        true
    }

    /// Everything queued, or pending until there is something.
    pub fn poll_batch(&self, cx: &mut Context<'_>) -> Poll<UplinkBatch> {
        let take = |state: &mut UplinkState| UplinkBatch {
            requests: state.queue.drain(..).collect(),
            overflowed: std::mem::take(&mut state.overflowed),
        };
        {
            let mut state = lock(&self.state);
            if !state.queue.is_empty() || state.overflowed {
                state.bytes = 0;
                return Poll::Ready(take(&mut state));
            }
        }
        self.wake.register(cx.waker());
        let mut state = lock(&self.state);
        if !state.queue.is_empty() || state.overflowed {
            state.bytes = 0;
            return Poll::Ready(take(&mut state));
        }
        Poll::Pending
    }

    /// Drops what is queued (the link went down: it would reach a new
    /// incarnation's peers as nonsense).
    pub fn clear(&self) {
        let mut state = lock(&self.state);
        state.queue.clear();
        state.bytes = 0;
        state.overflowed = false;
    }

    /// Takes only the lease requests out of what is queued, dropping the
    /// frames: the adapter keeps the leases' books while the link is down.
    pub fn take_leases(&self) -> Vec<Request> {
        let mut state = lock(&self.state);
        state.bytes = 0;
        state.overflowed = false;
        state
            .queue
            .drain(..)
            .filter(|request| !matches!(request, Request::Send { .. }))
            .collect()
    }
}

/// The core's side of the cluster: the uplink, whether and as which
/// incarnation this instance is joined, and the sessions of local clients
/// with remote devices.
#[derive(Debug)]
pub struct Cluster {
    pub uplink: Uplink,
    /// This instance's incarnation while joined; 0 while not.
    incarnation: AtomicU64,
    next_session: AtomicU64,
    next_registration: AtomicU64,
    /// Local clients' sessions with devices elsewhere, by session id.
    sessions: Mutex<HashMap<u64, Arc<RemoteSession>>>,
}

impl Cluster {
    /// A cluster side whose uplink holds at most `uplink_bytes`.
    pub fn new(uplink_bytes: usize) -> Self {
        Self {
            uplink: Uplink::new(uplink_bytes),
            incarnation: AtomicU64::new(0),
            next_session: AtomicU64::new(1),
            next_registration: AtomicU64::new(1),
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// This instance's incarnation, if joined.
    pub fn incarnation(&self) -> Option<Incarnation> {
        match self.incarnation.load(Ordering::Acquire) {
            0 => None,
            incarnation => Some(incarnation),
        }
    }

    pub(crate) fn next_registration(&self) -> u64 {
        self.next_registration.fetch_add(1, Ordering::Relaxed)
    }

    /// How many local clients have a session with a device elsewhere.
    pub fn remote_sessions(&self) -> usize {
        lock(&self.sessions).len()
    }

    /// A new session of the local client `outbox` with `device` on
    /// `owner`; asks the owner to attach it.
    pub(crate) fn open_session(
        &self,
        device_id: &str,
        device: &RemoteDevice,
        client: Outbox,
    ) -> Arc<RemoteSession> {
        let session = Arc::new(RemoteSession {
            id: self.next_session.fetch_add(1, Ordering::Relaxed),
            peer: device.owner,
            client,
            next_from_device: AtomicU64::new(1),
            next_to_device: AtomicU64::new(1),
            over: AtomicBool::new(false),
            silent: AtomicBool::new(false),
        });
        lock(&self.sessions).insert(session.id, session.clone());
        let pushed = self.uplink.push(Request::Send {
            to: device.owner,
            wire: Wire::Connect {
                session: session.id,
                device_id: device_id.into(),
                registration: device.registration,
            },
        });
        if !pushed {
            session.end();
        }
        session
    }

    /// The client's side of `session` is over; tells the device's side
    /// (which then forgets it), unless that side is gone.
    pub(crate) fn close_session(&self, session: &RemoteSession) {
        lock(&self.sessions).remove(&session.id);
        session.over.store(true, Ordering::Release);
        if !session.silent.swap(true, Ordering::AcqRel) {
            self.uplink.push(Request::Send {
                to: session.peer,
                wire: Wire::Leave {
                    session: session.id,
                },
            });
        }
    }

    fn session(&self, id: u64) -> Option<Arc<RemoteSession>> {
        lock(&self.sessions).get(&id).cloned()
    }
}

/// A local client's session with a device on another instance.
#[derive(Debug)]
pub struct RemoteSession {
    id: u64,
    peer: Incarnation,
    client: Outbox,
    /// The sequence number the next frame from the device must carry.
    next_from_device: AtomicU64,
    next_to_device: AtomicU64,
    /// Ended by the device's side or by a failure: the client has been
    /// told.
    over: AtomicBool,
    /// The device's side is gone with its instance (or with this one's
    /// link): nothing more is sent to it.
    silent: AtomicBool,
}

impl RemoteSession {
    /// Sends a client's payload to the device.
    pub(crate) fn send(&self, uplink: &Uplink, payload: &protocol::RawValue) -> bool {
        if self.over.load(Ordering::Acquire) {
            return false;
        }
        let seq = self.next_to_device.fetch_add(1, Ordering::Relaxed);
        uplink.push(Request::Send {
            to: self.peer,
            wire: Wire::ClientMsg {
                session: self.id,
                seq,
                payload: Json::shared(payload),
            },
        })
    }

    /// The device's side is gone: the client hears `Device disconnected`
    /// and is closed, as when a device on this instance leaves (D16).
    fn end(&self) {
        if !self.over.swap(true, Ordering::AcqRel) {
            let _ = self
                .client
                .push(Outgoing::Error(ServerError::DeviceDisconnected));
            self.client.push_close(ServerError::DeviceDisconnected);
        }
    }
}

/// The device's side of sessions with clients on other instances, and
/// the handling of every frame that arrives: owned by the cluster adapter's
/// task, so it needs no lock of its own.
#[derive(Debug)]
pub struct Inbound {
    registry: Arc<Registry>,
    cluster: Arc<Cluster>,
    /// Remote clients of local devices: their links, by (instance,
    /// session), and the next sequence number each must send.
    remote_clients: HashMap<(Incarnation, u64), (ClientLink, u64)>,
}

impl Inbound {
    pub fn new(registry: Arc<Registry>, cluster: Arc<Cluster>) -> Self {
        Self {
            registry,
            cluster,
            remote_clients: HashMap::new(),
        }
    }

    /// How many remote clients local devices have.
    pub fn remote_clients(&self) -> usize {
        self.remote_clients.len()
    }

    /// How many sessions, on either side, this instance has with `peer`.
    pub fn sessions_with(&self, peer: Incarnation) -> usize {
        let here = self
            .remote_clients
            .keys()
            .filter(|(p, _)| *p == peer)
            .count();
        let there = lock(&self.cluster.sessions)
            .values()
            .filter(|session| session.peer == peer)
            .count();
        here + there
    }

    /// Acts on a frame from instance `from`. Returns false when a sequence
    /// number was out of order (the session is closed; the adapter counts
    /// it).
    pub fn on_wire(&mut self, from: Incarnation, wire: Wire, now: Instant) -> bool {
        let cluster = &self.cluster;
        match wire {
            Wire::Connect {
                session,
                device_id,
                registration,
            } => {
                match self
                    .registry
                    .attach_remote(&device_id, registration, from, session)
                {
                    Some(link) => {
                        self.remote_clients.insert((from, session), (link, 1));
                    }
                    None => {
                        cluster.uplink.push(Request::Send {
                            to: from,
                            wire: Wire::DeviceGone { session },
                        });
                    }
                }
                true
            }
            Wire::ClientMsg {
                session,
                seq,
                payload,
            } => {
                let Some((link, next)) = self.remote_clients.get_mut(&(from, session)) else {
                    // A session this side already closed: the client's
                    // side hears of it (or has).
                    return true;
                };
                if seq != *next {
                    self.end_remote_client(from, session);
                    return false;
                }
                *next += 1;
                if let Some(raw) = payload.as_raw() {
                    // A device that cannot keep up is closed as slow, and
                    // its clients hear of it.
                    let _ = link.send_to_device(raw, now);
                }
                true
            }
            Wire::Leave { session } => {
                // Dropping the link is the client's departure (C14).
                self.remote_clients.remove(&(from, session));
                true
            }
            Wire::Attached {
                session,
                device_info,
            } => {
                if let Some(remote) = cluster.session(session)
                    && remote.peer == from
                    && !remote.over.load(Ordering::Acquire)
                {
                    let _ = remote.client.push(Outgoing::DeviceInfo(device_info));
                }
                true
            }
            Wire::DeviceMsg {
                session,
                seq,
                payload,
            } => {
                let Some(remote) = cluster.session(session).filter(|r| r.peer == from) else {
                    return true;
                };
                let expected = remote.next_from_device.fetch_add(1, Ordering::Relaxed);
                if seq != expected {
                    remote.end();
                    cluster.close_session(&remote);
                    return false;
                }
                if let Some(raw) = payload.as_raw() {
                    // A client that cannot keep up is closed as slow; its
                    // link's drop tells the device's side.
                    let _ = remote.client.push_relayed(Outgoing::device_msg(raw), now);
                }
                true
            }
            Wire::DeviceGone { session } => {
                if let Some(remote) = cluster.session(session).filter(|r| r.peer == from) {
                    remote.end();
                }
                true
            }
        }
    }

    /// Closes a remote client's session from this (the device's) side:
    /// the device hears `client_disconnected`, the client's side `DeviceGone`.
    fn end_remote_client(&mut self, peer: Incarnation, session: u64) {
        if self.remote_clients.remove(&(peer, session)).is_some() {
            self.cluster.uplink.push(Request::Send {
                to: peer,
                wire: Wire::DeviceGone { session },
            });
        }
    }

    /// The instance `peer` is gone (its incarnation expired, or a frame to
    /// it reached nobody): every session with it is closed on this side,
    /// with the usual announcements, and its devices leave the directory.
    pub fn peer_gone(&mut self, peer: Incarnation) {
        self.remote_clients.retain(|(from, _), _| *from != peer);
        let cluster = &self.cluster;
        let ended: Vec<Arc<RemoteSession>> = lock(&cluster.sessions)
            .values()
            .filter(|session| session.peer == peer)
            .cloned()
            .collect();
        for session in ended {
            session.silent.store(true, Ordering::Release);
            session.end();
            cluster.close_session(&session);
        }
        self.registry.directory_forget(peer);
    }

    /// This instance joined Redis as `incarnation`.
    pub fn joined(&mut self, incarnation: Incarnation) {
        self.cluster
            .incarnation
            .store(incarnation, Ordering::Release);
    }

    /// This instance lost Redis: every session that spans instances is
    /// closed with the usual announcements, the directory of other
    /// instances' devices is emptied, and new registrations are refused
    /// until it joins again. Sessions wholly on this instance go on.
    pub fn link_down(&mut self) {
        let cluster = &self.cluster;
        cluster.incarnation.store(0, Ordering::Release);
        self.remote_clients.clear();
        let ended: Vec<Arc<RemoteSession>> =
            lock(&cluster.sessions).drain().map(|(_, s)| s).collect();
        for session in ended {
            session.silent.store(true, Ordering::Release);
            session.end();
        }
        self.registry.directory_clear();
    }

    /// The peers this side has sessions or directory entries with.
    pub fn peers(&self) -> Vec<Incarnation> {
        let mut peers: Vec<Incarnation> =
            self.remote_clients.keys().map(|(peer, _)| *peer).collect();
        let cluster = &self.cluster;
        peers.extend(lock(&cluster.sessions).values().map(|s| s.peer));
        peers.extend(self.registry.directory_owners());
        peers.sort_unstable();
        peers.dedup();
        peers
    }
}
