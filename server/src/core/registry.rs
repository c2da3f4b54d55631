//! Who is connected, and where messages go: the one seam between the
//! connection code and the routing state.
//!
//! Sessions never see a map. A device holds a [`DeviceRegistration`], a
//! client a [`ClientLink`]; messages go out through their methods, and
//! dropping one is the disconnect, so every way a connection can end (error,
//! timeout, panic, shutdown) announces it exactly once. A cluster mode can
//! give these handles a remote implementation without touching the sessions.
//!
//! Locks: one `Mutex` over the id maps, taken only to register, connect and
//! leave; and one per device over its clients, taken per relayed message.
//! Neither is held across an `.await` (pushing to an outbox never waits), and
//! the order is always maps → device → outbox.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use protocol::RawValue;

use super::cluster::{Cluster, Incarnation, RemoteDevice, RemoteSession, Request, Wire};
use super::error::ServerError;
use super::outbox::{Outbox, PushError};
use super::outgoing::{Json, Outgoing};
use crate::metrics::Metrics;

/// Locks a mutex whose data stays consistent even if a holder panicked:
/// every update below (and in `polling.rs`, which uses this too) is
/// complete before any call that could panic.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The devices and waiting clients of this server.
#[derive(Debug)]
pub struct Registry {
    maps: Mutex<Maps>,
    metrics: Arc<Metrics>,
    /// With `--redis`: the other instances.
    cluster: Option<Arc<Cluster>>,
}

#[derive(Debug, Default)]
struct Maps {
    devices: HashMap<Arc<str>, Arc<DeviceSlot>>,
    /// Devices on other instances, as the directory says (cluster mode).
    remote: HashMap<Arc<str>, RemoteDevice>,
    /// Clients waiting for a device id to register (the alternative flow).
    waiting: HashMap<Arc<str>, Vec<Arc<Waiter>>>,
    /// Devices a control connection announced, until they register.
    pre_registered: HashMap<Arc<str>, PreRegistered>,
}

#[derive(Debug)]
struct DeviceSlot {
    id: Arc<str>,
    /// Its registration number in cluster mode (the lease names it), else 0.
    registration: u64,
    outbox: Outbox,
    /// The `device_info` every client gets, shared.
    info: Json,
    /// From its pre-registration, if it had one.
    descriptor: Descriptor,
    /// Its own web server's port on this host, if it has one.
    device_port: Option<u16>,
    /// Its connection dropped and it is held for a resume: a new
    /// registration of its id takes the id over.
    away: AtomicBool,
    clients: Mutex<Clients>,
}

/// What the Go operator's descriptors say of a device beyond its id: set
/// by a pre-registration on the control socket, empty (and 0) without one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Descriptor {
    pub group_name: String,
    pub owner: String,
    pub name: String,
    pub adb_port: u16,
}

#[derive(Debug)]
struct PreRegistered {
    descriptor: Descriptor,
    /// The control connection that announced it, told when it registers.
    watcher: Outbox,
}

/// Why a pre-registration was refused (the Go operator's reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PreRegisterError {
    #[error("Device id already pre-registered")]
    AlreadyPreRegistered,
    #[error("Device id already registered")]
    AlreadyRegistered,
}

#[derive(Debug)]
struct Clients {
    /// Ids start at 1 and are never reused while the device is registered.
    next_id: u64,
    live: HashMap<u64, ClientEnd>,
    /// The device left: no client may attach any more.
    gone: bool,
}

/// Where a device's client is.
#[derive(Debug)]
enum ClientEnd {
    /// On this instance: its outbox.
    Local(Outbox),
    /// On another instance, in `session` there; `next_seq` numbers the
    /// frames sent to it.
    Remote {
        peer: Incarnation,
        session: u64,
        next_seq: u64,
    },
}

#[derive(Debug)]
struct Waiter {
    outbox: Outbox,
    /// Filled when the device registers; read by the client's link.
    attached: Mutex<Option<Attachment>>,
}

/// What a waiting client was attached to.
#[derive(Debug)]
enum Attachment {
    Local(Arc<DeviceSlot>, u64),
    Remote(Arc<RemoteSession>),
}

/// Why a registration was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterError {
    /// The id is held by a live device (here or, in cluster mode, on
    /// another instance).
    IdTaken,
    /// Cluster mode, and this instance cannot reach Redis to take a lease.
    Unavailable,
}

/// Why a device's message did not reach its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardError {
    /// The client was this device's and has left (D7).
    Departed,
    /// This device never had a client with that id (D8).
    Unknown,
    /// The client is leaving: its outbox is closing, or this message went
    /// past its bound and it will be closed as a slow consumer. Either way
    /// the device hears `client_disconnected` once it has left.
    NotQueued(PushError),
}

/// What a `connect` led to.
#[derive(Debug)]
pub enum Connection {
    /// Attached; `device_info` is already queued on the client's outbox.
    Attached(ClientLink),
    /// Waiting for the device to register (alternative flow).
    Waiting(ClientLink),
    /// No such device, and waiting was not asked for.
    NotFound,
}

impl Registry {
    pub fn new(metrics: Arc<Metrics>, cluster: Option<Arc<Cluster>>) -> Self {
        Self {
            maps: Mutex::new(Maps::default()),
            metrics,
            cluster,
        }
    }

    /// The cluster side, in cluster mode.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    /// Registers a device under `id`; its clients reach it through `outbox`.
    pub fn register(
        self: &Arc<Self>,
        id: &str,
        device_info: Option<&RawValue>,
        device_port: Option<u16>,
        outbox: Outbox,
    ) -> Result<DeviceRegistration, RegisterError> {
        let info = device_info.map_or_else(Json::null, Json::shared);
        let mut maps = lock(&self.maps);
        if let Some(held) = maps.devices.get(id)
            && held.away.load(Ordering::Acquire)
        {
            // Its device is not there to hold it: a device that registers
            // afresh (one that knows nothing of resume, or lost its token)
            // takes the id, and the held session ends as if its device had
            // left (its clients hear `Device disconnected`).
            let error = ServerError::DeviceIdTaken(id.to_owned());
            held.outbox.push_close(error);
            if let Some(cluster) = &self.cluster {
                // Its lease first, so that the new one's claim below finds
                // the id free (the held session's own release, when it
                // ends, then gives back nothing: the record is no longer
                // its).
                cluster.uplink.push(Request::Release {
                    device_id: held.id.clone(),
                    registration: held.registration,
                });
            }
            maps.devices.remove(id);
        }
        if maps.devices.contains_key(id) || maps.remote.contains_key(id) {
            return Err(RegisterError::IdTaken);
        }
        let registration = match &self.cluster {
            Some(cluster) if cluster.incarnation().is_none() => {
                return Err(RegisterError::Unavailable);
            }
            Some(cluster) => cluster.next_registration(),
            None => 0,
        };
        let pre = maps.pre_registered.remove(id);
        let slot = Arc::new(DeviceSlot {
            id: id.into(),
            registration,
            outbox,
            info,
            descriptor: pre
                .as_ref()
                .map(|pre| pre.descriptor.clone())
                .unwrap_or_default(),
            device_port,
            away: AtomicBool::new(false),
            clients: Mutex::new(Clients {
                next_id: 1,
                live: HashMap::new(),
                gone: false,
            }),
        });
        if let Some(pre) = pre {
            // A control connection that went away is past telling.
            let _ = pre.watcher.push(Outgoing::Registered {
                device_id: slot.id.clone(),
            });
        }
        maps.devices.insert(slot.id.clone(), slot.clone());
        if let Some(cluster) = &self.cluster {
            // The lease is taken after the fact: if another instance got
            // the id at the same moment, this registration is evicted.
            cluster.uplink.push(Request::Claim {
                device_id: slot.id.clone(),
                registration,
                info: slot.info.clone(),
                descriptor: slot.descriptor.clone(),
            });
        }
        let waiters = maps.waiting.remove(id).unwrap_or_default();
        // Attach waiting clients under the maps lock, so a waiter cannot
        // time out half attached (see `ClientLink::cancel_wait`).
        if !waiters.is_empty() {
            let mut clients = lock(&slot.clients);
            for waiter in waiters {
                let client_id = clients.attach(&slot, &waiter.outbox);
                *lock(&waiter.attached) = Some(Attachment::Local(slot.clone(), client_id));
            }
        }
        drop(maps);
        self.metrics.devices.inc();
        Ok(DeviceRegistration {
            registry: self.clone(),
            slot,
        })
    }

    /// Connects a client to the device `id`. With `wait`, a client whose
    /// device is not registered yet waits for it.
    pub fn connect(self: &Arc<Self>, id: &str, outbox: Outbox, wait: bool) -> Connection {
        let mut maps = lock(&self.maps);
        let link = if let Some(slot) = maps.devices.get(id).cloned() {
            drop(maps);
            let mut clients = lock(&slot.clients);
            if clients.gone {
                // The device is leaving; it is as good as not found.
                return Connection::NotFound;
            }
            let client_id = clients.attach(&slot, &outbox);
            drop(clients);
            Connection::Attached(ClientLink {
                registry: self.clone(),
                state: LinkState::Attached { slot, client_id },
                counted: true,
            })
        } else if let (Some(device), Some(cluster)) = (maps.remote.get(id), &self.cluster) {
            // On another instance: `device_info` comes when it attaches.
            let session = cluster.open_session(id, device, outbox);
            drop(maps);
            Connection::Attached(ClientLink {
                registry: self.clone(),
                state: LinkState::Remote(session),
                counted: true,
            })
        } else if wait {
            let waiter = Arc::new(Waiter {
                outbox,
                attached: Mutex::new(None),
            });
            maps.waiting
                .entry(Arc::from(id))
                .or_default()
                .push(waiter.clone());
            drop(maps);
            Connection::Waiting(ClientLink {
                registry: self.clone(),
                state: LinkState::Waiting {
                    device_id: id.into(),
                    waiter,
                },
                counted: true,
            })
        } else {
            return Connection::NotFound;
        };
        self.metrics.clients.inc();
        link
    }

    /// How many clients wait for a device to register.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn waiting_clients(&self) -> usize {
        lock(&self.maps).waiting.values().map(Vec::len).sum()
    }

    /// Announces that device `id` will register, with what its descriptor
    /// says; `watcher` is told when it does.
    pub fn pre_register(
        &self,
        id: &str,
        descriptor: Descriptor,
        watcher: Outbox,
    ) -> Result<(), PreRegisterError> {
        let mut maps = lock(&self.maps);
        if maps.pre_registered.contains_key(id) {
            return Err(PreRegisterError::AlreadyPreRegistered);
        }
        if maps.devices.contains_key(id) {
            return Err(PreRegisterError::AlreadyRegistered);
        }
        maps.pre_registered.insert(
            id.into(),
            PreRegistered {
                descriptor,
                watcher,
            },
        );
        Ok(())
    }

    /// Cancels `watcher`'s pre-registration of `id`, if it is still waiting.
    pub fn cancel_pre_registration(&self, id: &str, watcher: &Outbox) {
        let mut maps = lock(&self.maps);
        if maps
            .pre_registered
            .get(id)
            .is_some_and(|pre| pre.watcher.is(watcher))
        {
            maps.pre_registered.remove(id);
        }
    }

    /// The descriptor and `device_info` of the device that holds `id`
    /// (here or, in cluster mode, on another instance).
    pub fn descriptor(&self, id: &str) -> Option<(Descriptor, Json)> {
        let maps = lock(&self.maps);
        match maps.devices.get(id) {
            Some(slot) => Some((slot.descriptor.clone(), slot.info.clone())),
            None => maps
                .remote
                .get(id)
                .map(|device| (device.descriptor.clone(), device.info.clone())),
        }
    }

    /// Whether a device holds `id`, and if so its web server's port on
    /// this host (none for a device on another instance).
    pub fn device_port(&self, id: &str) -> Option<Option<u16>> {
        let maps = lock(&self.maps);
        match maps.devices.get(id) {
            Some(slot) => Some(slot.device_port),
            None => maps.remote.contains_key(id).then_some(None),
        }
    }

    /// Every registered device's id and descriptor, sorted by id.
    pub fn descriptors(&self) -> Vec<(String, Descriptor)> {
        let maps = lock(&self.maps);
        let mut all: Vec<(String, Descriptor)> = maps
            .devices
            .values()
            .map(|slot| (slot.id.to_string(), slot.descriptor.clone()))
            .chain(
                maps.remote
                    .iter()
                    .filter(|(id, _)| !maps.devices.contains_key(*id))
                    .map(|(id, device)| (id.to_string(), device.descriptor.clone())),
            )
            .collect();
        drop(maps);
        all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Whether a device holds `id` right now.
    pub fn is_registered(&self, id: &str) -> bool {
        let maps = lock(&self.maps);
        maps.devices.contains_key(id) || maps.remote.contains_key(id)
    }

    /// The ids of every registered device, sorted.
    pub fn device_ids(&self) -> Vec<String> {
        let maps = lock(&self.maps);
        let mut ids: Vec<String> = maps
            .devices
            .keys()
            .chain(
                maps.remote
                    .keys()
                    .filter(|id| !maps.devices.contains_key(*id)),
            )
            .map(|id| id.to_string())
            .collect();
        drop(maps);
        ids.sort_unstable();
        ids
    }

    /// How many devices this instance holds (not those of other instances).
    pub fn local_devices(&self) -> usize {
        lock(&self.maps).devices.len()
    }
}

/// Cluster mode: the directory of other instances' devices, remote
/// clients, and evictions (driven by `cluster::Inbound` and the adapter).
impl Registry {
    /// Another instance registered `id` (or took it again as a new
    /// incarnation): listed here, and clients waiting for it are attached.
    pub fn directory_add(&self, id: &str, device: RemoteDevice) {
        let Some(cluster) = &self.cluster else { return };
        let mut maps = lock(&self.maps);
        let id: Arc<str> = id.into();
        let waiters = if maps.devices.contains_key(&id) {
            Vec::new()
        } else {
            maps.waiting.remove(&id).unwrap_or_default()
        };
        for waiter in waiters {
            let session = cluster.open_session(&id, &device, waiter.outbox.clone());
            *lock(&waiter.attached) = Some(Attachment::Remote(session));
        }
        maps.remote.insert(id, device);
    }

    /// The device `id` of `owner`'s registration `registration` left.
    pub fn directory_remove(&self, id: &str, owner: Incarnation, registration: u64) {
        let mut maps = lock(&self.maps);
        if maps
            .remote
            .get(id)
            .is_some_and(|d| d.owner == owner && d.registration == registration)
        {
            maps.remote.remove(id);
        }
    }

    /// Every device of the incarnation `owner` is gone.
    pub fn directory_forget(&self, owner: Incarnation) {
        lock(&self.maps)
            .remote
            .retain(|_, device| device.owner != owner);
    }

    /// This instance lost Redis: it knows no other instance's devices.
    pub fn directory_clear(&self) {
        lock(&self.maps).remote.clear();
    }

    /// How many devices of other instances the directory lists.
    pub fn remote_devices(&self) -> usize {
        lock(&self.maps).remote.len()
    }

    /// The instances the directory lists devices of.
    pub fn directory_owners(&self) -> Vec<Incarnation> {
        let mut owners: Vec<Incarnation> =
            lock(&self.maps).remote.values().map(|d| d.owner).collect();
        owners.sort_unstable();
        owners.dedup();
        owners
    }

    /// Attaches a client of another instance (`peer`'s `session`) to the
    /// local device `id` of registration `registration`; its
    /// `device_info` goes back as `Attached`. None if that device is gone.
    pub(crate) fn attach_remote(
        self: &Arc<Self>,
        id: &str,
        registration: u64,
        peer: Incarnation,
        session: u64,
    ) -> Option<ClientLink> {
        let cluster = self.cluster.as_ref()?;
        let slot = lock(&self.maps)
            .devices
            .get(id)
            .filter(|slot| slot.registration == registration)
            .cloned()?;
        let mut clients = lock(&slot.clients);
        if clients.gone {
            return None;
        }
        let client_id = clients.next_id;
        clients.next_id += 1;
        // Under the lock, so that no message from the device overtakes it.
        cluster.uplink.push(Request::Send {
            to: peer,
            wire: Wire::Attached {
                session,
                device_info: slot.info.clone(),
            },
        });
        clients.live.insert(
            client_id,
            ClientEnd::Remote {
                peer,
                session,
                next_seq: 1,
            },
        );
        drop(clients);
        Some(ClientLink {
            registry: self.clone(),
            state: LinkState::Attached { slot, client_id },
            // Counted where its socket is.
            counted: false,
        })
    }

    /// Another instance holds the lease on `id`: the local device of that
    /// registration is told the id is taken and closed.
    pub fn evict(&self, id: &str, registration: u64) {
        let slot = lock(&self.maps)
            .devices
            .get(id)
            .filter(|slot| slot.registration == registration)
            .cloned();
        if let Some(slot) = slot {
            let error = ServerError::DeviceIdTaken(id.to_owned());
            let _ = slot.outbox.push(Outgoing::Error(error.clone()));
            slot.outbox.push_close(error);
        }
    }

    /// Every local device's id, registration, `device_info` and descriptor
    /// (for the leases, when this instance joins again).
    pub fn local_registrations(&self) -> Vec<(Arc<str>, u64, Json, Descriptor)> {
        lock(&self.maps)
            .devices
            .values()
            .map(|slot| {
                (
                    slot.id.clone(),
                    slot.registration,
                    slot.info.clone(),
                    slot.descriptor.clone(),
                )
            })
            .collect()
    }
}

impl Clients {
    /// Gives the client the next id and queues `device_info` for it, under
    /// this lock so that no message from the device can overtake it.
    fn attach(&mut self, slot: &DeviceSlot, outbox: &Outbox) -> u64 {
        let client_id = self.next_id;
        self.next_id += 1;
        // A brand-new outbox has room for one message; if not, the client is
        // already closing and its link will detach it.
        let _ = outbox.push(Outgoing::DeviceInfo(slot.info.clone()));
        self.live
            .insert(client_id, ClientEnd::Local(outbox.clone()));
        client_id
    }
}

/// A registered device; dropping it unregisters the device and tells its
/// clients (D16).
#[derive(Debug)]
pub struct DeviceRegistration {
    registry: Arc<Registry>,
    slot: Arc<DeviceSlot>,
}

impl DeviceRegistration {
    pub fn device_id(&self) -> &str {
        &self.slot.id
    }

    /// Its connection dropped (`true`: a new registration of the id may
    /// take it) or came back.
    pub fn set_away(&self, away: bool) {
        self.slot.away.store(away, Ordering::Release);
    }

    /// Sends a device's payload, which arrived at `now`, to client
    /// `client_id` of this device.
    pub fn send_to_client(
        &self,
        client_id: u64,
        payload: &RawValue,
        now: Instant,
    ) -> Result<(), ForwardError> {
        let mut clients = lock(&self.slot.clients);
        let next_id = clients.next_id;
        match clients.live.get_mut(&client_id) {
            // Pushing under the lock keeps messages to one client in order
            // and never waits. A full outbox closes that client, which
            // then leaves as usual: the device hears client_disconnected.
            Some(ClientEnd::Local(outbox)) => outbox
                .push_relayed(Outgoing::device_msg(payload), now)
                .map_err(ForwardError::NotQueued),
            Some(ClientEnd::Remote {
                peer,
                session,
                next_seq,
            }) => {
                let seq = *next_seq;
                *next_seq += 1;
                let wire = Wire::DeviceMsg {
                    session: *session,
                    seq,
                    payload: Json::shared(payload),
                };
                let queued =
                    self.registry.cluster.as_ref().is_some_and(|cluster| {
                        cluster.uplink.push(Request::Send { to: *peer, wire })
                    });
                if queued {
                    Ok(())
                } else {
                    Err(ForwardError::NotQueued(PushError::Closed))
                }
            }
            None if client_id < next_id => Err(ForwardError::Departed),
            None => Err(ForwardError::Unknown),
        }
    }
}

impl Drop for DeviceRegistration {
    fn drop(&mut self) {
        {
            let mut maps = lock(&self.registry.maps);
            if maps
                .devices
                .get(&self.slot.id)
                .is_some_and(|s| Arc::ptr_eq(s, &self.slot))
            {
                maps.devices.remove(&self.slot.id);
            }
        }
        let clients = {
            let mut clients = lock(&self.slot.clients);
            clients.gone = true;
            std::mem::take(&mut clients.live)
        };
        let cluster = self.registry.cluster.as_ref();
        for end in clients.values() {
            match end {
                ClientEnd::Local(outbox) => {
                    // D16: a client whose outbox is full is closed as slow
                    // anyway.
                    let _ = outbox.push(Outgoing::Error(ServerError::DeviceDisconnected));
                    outbox.push_close(ServerError::DeviceDisconnected);
                }
                ClientEnd::Remote { peer, session, .. } => {
                    if let Some(cluster) = cluster {
                        cluster.uplink.push(Request::Send {
                            to: *peer,
                            wire: Wire::DeviceGone { session: *session },
                        });
                    }
                }
            }
        }
        if let Some(cluster) = cluster {
            cluster.uplink.push(Request::Release {
                device_id: self.slot.id.clone(),
                registration: self.slot.registration,
            });
        }
        self.registry.metrics.devices.dec();
    }
}

#[derive(Debug)]
enum LinkState {
    Attached {
        slot: Arc<DeviceSlot>,
        client_id: u64,
    },
    Waiting {
        device_id: Arc<str>,
        waiter: Arc<Waiter>,
    },
    /// With a device on another instance.
    Remote(Arc<RemoteSession>),
    Detached,
}

/// A client's tie to its device; dropping it tells the device the client
/// left (C14), exactly once.
#[derive(Debug)]
pub struct ClientLink {
    registry: Arc<Registry>,
    state: LinkState,
    /// Whether it counts in the clients gauge: not for a client of another
    /// instance, which its own instance counts.
    counted: bool,
}

/// Why a client's message did not reach its device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotAttached {
    /// The client waits for its device to register (or gave up waiting).
    Waiting,
    /// The device is leaving: its outbox is closing or full. The client
    /// hears `Device disconnected` once it has left.
    Leaving(PushError),
}

impl ClientLink {
    /// Moves a waiting link to attached if its device has registered.
    fn refresh(&mut self) {
        let attached = match &self.state {
            LinkState::Waiting { waiter, .. } => lock(&waiter.attached).take(),
            _ => None,
        };
        match attached {
            Some(Attachment::Local(slot, client_id)) => {
                self.state = LinkState::Attached { slot, client_id };
            }
            Some(Attachment::Remote(session)) => self.state = LinkState::Remote(session),
            None => {}
        }
    }

    /// Whether the client is attached to its device.
    pub fn is_attached(&self) -> bool {
        match &self.state {
            LinkState::Attached { .. } | LinkState::Remote(_) => true,
            LinkState::Waiting { waiter, .. } => lock(&waiter.attached).is_some(),
            LinkState::Detached => false,
        }
    }

    /// This client's id at its device, once attached.
    pub fn client_id(&mut self) -> Option<u64> {
        self.refresh();
        match self.state {
            LinkState::Attached { client_id, .. } => Some(client_id),
            _ => None,
        }
    }

    /// Sends a client's payload, which arrived at `now`, to its device as
    /// `client_msg`.
    pub fn send_to_device(&mut self, payload: &RawValue, now: Instant) -> Result<(), NotAttached> {
        self.refresh();
        if let LinkState::Remote(session) = &self.state {
            let cluster = self.registry.cluster.as_ref();
            return match cluster.is_some_and(|cluster| session.send(&cluster.uplink, payload)) {
                true => Ok(()),
                false => Err(NotAttached::Leaving(PushError::Closed)),
            };
        }
        let LinkState::Attached { slot, client_id } = &self.state else {
            return Err(NotAttached::Waiting);
        };
        // A full outbox means the device cannot keep up: its own task closes
        // it, and its clients are then told it disconnected. A closed one
        // means it is already leaving. Either way the client hears of it.
        slot.outbox
            .push_relayed(Outgoing::client_msg(*client_id, payload), now)
            .map_err(NotAttached::Leaving)
    }

    /// Gives up waiting (the wait timed out). False if the device attached
    /// the client first; the link is then attached.
    pub fn cancel_wait(&mut self) -> bool {
        let LinkState::Waiting { device_id, waiter } = &self.state else {
            return false;
        };
        let mut maps = lock(&self.registry.maps);
        if lock(&waiter.attached).is_some() {
            drop(maps);
            self.refresh();
            return false;
        }
        if let Some(list) = maps.waiting.get_mut(device_id) {
            list.retain(|w| !Arc::ptr_eq(w, waiter));
            if list.is_empty() {
                maps.waiting.remove(device_id);
            }
        }
        drop(maps);
        self.state = LinkState::Detached;
        if self.counted {
            self.registry.metrics.clients.dec();
        }
        true
    }
}

impl Drop for ClientLink {
    fn drop(&mut self) {
        // A waiting client may have been attached a moment ago: cancel_wait
        // tells which, and when it did cancel it also did the accounting.
        if matches!(self.state, LinkState::Waiting { .. }) && self.cancel_wait() {
            return;
        }
        self.refresh();
        match std::mem::replace(&mut self.state, LinkState::Detached) {
            LinkState::Attached { slot, client_id } => {
                let mut clients = lock(&slot.clients);
                // Absent when the device left first: it needs no notice.
                if clients.live.remove(&client_id).is_some() {
                    // C14: a device whose outbox is full is closed as slow.
                    let _ = slot.outbox.push(Outgoing::ClientDisconnected { client_id });
                }
                drop(clients);
            }
            LinkState::Remote(session) => {
                if let Some(cluster) = &self.registry.cluster {
                    cluster.close_session(&session);
                }
            }
            LinkState::Waiting { .. } | LinkState::Detached => return,
        }
        if self.counted {
            self.registry.metrics.clients.dec();
        }
    }
}
