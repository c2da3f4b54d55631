//! A server without sockets, for property tests and fuzzing.
//!
//! Devices and clients are sessions over the real registry; every frame the
//! server queues is delivered at once (encoded as the websocket front door
//! encodes it), and a queued close ends the connection as the connection
//! task would. Time is the simulation's own clock: it moves only when a
//! step ticks it, to the next deadline of a connection, so registration,
//! connect, wait and idle timeouts happen as they would, without sleeping.
//! After every step one checker holds the server to PROTOCOL.md's promises
//! ("Promises"):
//!
//! - every frame sent is one JSON object (1);
//! - a message between a client and its device arrives, in order, while
//!   both are open (3), and never after the receiver was told its sender
//!   left;
//! - every client that leaves its device is announced to it exactly once
//!   (D7's answers aside);
//! - no device id stays registered once its connection has ended;
//! - when everyone has left, the registry and the gauges are back to zero.
//!
//! What it does not model: keepalive pings (a simulated peer is silent
//! unless a step makes it send), slow consumers (delivery is immediate, so
//! no outbox fills up) and the socket layer; the server's integration tests
//! cover those.
//!
//! Inputs come from [`Action`]s, or from raw bytes ([`run_bytes`], the fuzz
//! target's entry), so the fuzzer and proptest drive the same code.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use std::time::Instant;

use futures_util::FutureExt;
use serde_json::Value;

use crate::config::ServerConfig;
use crate::core::session::{ClientSession, DeviceSession};
use crate::core::{Batch, Connection, Core, Due, Keepalive, Outbox};
use crate::encode;
use crate::metrics::Metrics;

/// Device ids the generated messages use; raw frames may use any other.
const IDS: [&str; 3] = ["dev-a", "dev-b", "dev-c"];

/// One step of a scenario. Connections are named by index, taken modulo
/// the number opened so far (a step with none to name does nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    OpenDevice,
    OpenClient,
    /// `register` for one of three ids.
    Register {
        conn: u8,
        id: u8,
    },
    /// `connect` to one of three ids.
    Connect {
        conn: u8,
        id: u8,
    },
    /// A device's `forward` to a client id (0 to 4).
    DeviceForward {
        conn: u8,
        client_id: u8,
    },
    /// A client's `forward`.
    ClientForward {
        conn: u8,
    },
    /// Any text frame.
    Raw {
        conn: u8,
        text: String,
    },
    /// The peer closes its socket.
    Close {
        conn: u8,
    },
    /// The clock moves on to the connection's next deadline (registration,
    /// connect, wait, idle), and every connection due by then acts on it.
    Tick {
        conn: u8,
    },
}

impl Action {
    /// Decodes a scenario from bytes: one opcode byte per action, then its
    /// arguments. Every byte string is some scenario.
    pub fn decode_all(mut data: &[u8]) -> Vec<Action> {
        let mut actions = Vec::new();
        let mut byte = || -> Option<u8> {
            let (first, rest) = data.split_first()?;
            data = rest;
            Some(*first)
        };
        while let Some(op) = byte() {
            let action = match op % 9 {
                0 => Action::OpenDevice,
                1 => Action::OpenClient,
                2 => Action::Register {
                    conn: byte().unwrap_or(0),
                    id: byte().unwrap_or(0),
                },
                3 => Action::Connect {
                    conn: byte().unwrap_or(0),
                    id: byte().unwrap_or(0),
                },
                4 => Action::DeviceForward {
                    conn: byte().unwrap_or(0),
                    client_id: byte().unwrap_or(0),
                },
                5 => Action::ClientForward {
                    conn: byte().unwrap_or(0),
                },
                6 => {
                    let conn = byte().unwrap_or(0);
                    let len = usize::from(byte().unwrap_or(0));
                    let mut raw = Vec::with_capacity(len);
                    for _ in 0..len {
                        match byte() {
                            Some(b) => raw.push(b),
                            None => break,
                        }
                    }
                    // The socket layer refuses invalid UTF-8 (D13) before
                    // a session sees it.
                    let text = String::from_utf8_lossy(&raw).into_owned();
                    Action::Raw { conn, text }
                }
                7 => Action::Close {
                    conn: byte().unwrap_or(0),
                },
                _ => Action::Tick {
                    conn: byte().unwrap_or(0),
                },
            };
            actions.push(action);
        }
        actions
    }
}

/// A promise the server broke, with the step it broke at.
#[derive(Debug)]
pub struct Violation(String);

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Violation {}

/// Runs the scenario `data` encodes (its first byte chooses the flow:
/// odd is the alternative flow, where clients wait for their device), then
/// everyone leaves; checks every step.
pub fn run_bytes(data: &[u8]) -> Result<(), Violation> {
    let (wait, actions) = match data.split_first() {
        Some((first, rest)) => (first % 2 == 1, Action::decode_all(rest)),
        None => (false, Vec::new()),
    };
    let mut sim = Sim::new(wait);
    for action in &actions {
        sim.step(action)?;
    }
    sim.finish()
}

#[derive(Debug)]
enum AnyConnection {
    Device(Connection<DeviceSession>),
    Client(Connection<ClientSession>),
}

impl AnyConnection {
    fn on_text(&mut self, text: &str, now: Instant) {
        match self {
            Self::Device(c) => c.on_text(text, now),
            Self::Client(c) => c.on_text(text, now),
        }
    }

    fn poll_timeout(&self) -> Instant {
        match self {
            Self::Device(c) => c.poll_timeout(),
            Self::Client(c) => c.poll_timeout(),
        }
    }

    fn handle_timeout(&mut self, now: Instant) -> Option<Due> {
        match self {
            Self::Device(c) => c.handle_timeout(now),
            Self::Client(c) => c.handle_timeout(now),
        }
    }
}

/// A peer and what it has seen.
#[derive(Debug)]
struct Peer {
    is_device: bool,
    /// `None` once the connection has ended.
    session: Option<AnyConnection>,
    outbox: Outbox,
    /// Device: the id it holds (it got `config` for its `register`).
    holds: Option<String>,
    /// Client: the device connection it is attached to (it got
    /// `device_info`).
    attached_to: Option<usize>,
    /// Client: it was told its device left.
    device_left: bool,
    /// Client: the device id of its `connect`.
    wants: Option<String>,
    /// Device: announcements (`client_disconnected` not answering a
    /// `forward`) received, by client id.
    announced: HashMap<u64, u32>,
    /// Device: clients that attached to it and left while it was open.
    departures: u32,
    /// The last sequence number received from each sending connection.
    last_seq: HashMap<usize, u64>,
    /// Next sequence number this peer sends.
    next_seq: u64,
}

/// What a peer sent, as far as the checker needs to know.
#[derive(Debug)]
struct Sent {
    from: usize,
    /// A `register` with a string id.
    register_as: Option<String>,
    /// A `connect` with a string id.
    connect_to: Option<String>,
    /// A `forward` of one of our payloads.
    forward: Option<Forward>,
}

#[derive(Debug, Clone, Copy)]
struct Forward {
    /// Our sequence number, when the payload is ours.
    seq: Option<u64>,
    /// The client id a device's forward names.
    client_id: Option<u64>,
}

impl Sent {
    fn new(from: usize, text: &str, nonce: u64) -> Self {
        let value: Value = serde_json::from_str(text).unwrap_or(Value::Null);
        let string = |key: &str| value[key].as_str().map(str::to_owned);
        let kind = value["message_type"].as_str();
        Self {
            from,
            register_as: (kind == Some("register"))
                .then(|| string("device_id"))
                .flatten(),
            connect_to: (kind == Some("connect"))
                .then(|| string("device_id"))
                .flatten(),
            forward: (kind == Some("forward")).then(|| Forward {
                seq: ours(&value["payload"], nonce).map(|(_, seq)| seq),
                client_id: value["client_id"].as_u64(),
            }),
        }
    }
}

/// The sender and sequence number of a payload the simulation made.
/// Payloads carry the simulation's random nonce, so that a raw frame,
/// which may hold any JSON, is never taken for one of ours.
fn ours(payload: &Value, nonce: u64) -> Option<(usize, u64)> {
    if payload["sim"].as_u64() != Some(nonce) {
        return None;
    }
    let from = usize::try_from(payload["from"].as_u64()?).ok()?;
    Some((from, payload["seq"].as_u64()?))
}

/// What a delivered frame was.
#[derive(Debug)]
struct Delivered {
    to: usize,
    frame: Value,
}

/// The simulated server and its peers.
#[derive(Debug)]
pub struct Sim {
    core: Arc<Core>,
    /// The simulation's clock.
    now: Instant,
    peers: Vec<Peer>,
    /// Each client connection's id at its device, once known.
    client_ids: HashMap<usize, u64>,
    step: usize,
    /// Marks the payloads the simulation made (see [`ours`]).
    nonce: u64,
}

impl Sim {
    /// A server with the default settings; `wait` turns on the
    /// alternative flow.
    pub fn new(wait: bool) -> Self {
        let config = ServerConfig {
            client_wait: if wait {
                std::time::Duration::from_secs(5)
            } else {
                std::time::Duration::ZERO
            },
            ..ServerConfig::default()
        };
        Self {
            core: Arc::new(Core::new(config.core_settings(), Arc::new(Metrics::new()))),
            // The one reading of the real clock: the epoch. From here on
            // time moves only by `Tick` steps.
            now: Instant::now(),
            peers: Vec::new(),
            client_ids: HashMap::new(),
            step: 0,
            nonce: {
                use std::hash::{BuildHasher, Hasher};
                std::collections::hash_map::RandomState::new()
                    .build_hasher()
                    .finish()
            },
        }
    }

    /// The websocket front door's keepalive, without pings: a simulated
    /// peer shows life only by sending.
    fn keepalive(&self) -> Keepalive {
        Keepalive {
            idle: Some(ServerConfig::default().idle_timeout),
            ping: None,
        }
    }

    fn fail(&self, what: impl fmt::Display) -> Violation {
        Violation(format!("step {}: {what}", self.step))
    }

    fn index(&self, conn: u8) -> Option<usize> {
        (!self.peers.is_empty()).then(|| usize::from(conn) % self.peers.len())
    }

    fn open(&mut self, is_device: bool) -> Result<(), Violation> {
        let outbox = self.core.outbox();
        let (core, now) = (self.core.clone(), self.now);
        let session = if is_device {
            let session = DeviceSession::new(core, outbox.clone(), now);
            AnyConnection::Device(Connection::new(session, self.keepalive(), now))
        } else {
            let session = ClientSession::new(core, outbox.clone(), now);
            AnyConnection::Client(Connection::new(session, self.keepalive(), now))
        };
        self.peers.push(Peer {
            is_device,
            session: Some(session),
            outbox,
            holds: None,
            wants: None,
            attached_to: None,
            device_left: false,
            announced: HashMap::new(),
            departures: 0,
            last_seq: HashMap::new(),
            next_seq: 0,
        });
        Ok(())
    }

    /// Sends `text` as conn `i`; the server's reactions are delivered.
    fn send(&mut self, i: usize, text: &str) -> Result<Vec<Delivered>, Violation> {
        let peer = &mut self.peers[i];
        let Some(session) = peer.session.as_mut() else {
            return Ok(Vec::new());
        };
        session.on_text(text, self.now);
        self.deliver()
    }

    /// Ends conn `i`'s connection, as the connection task does on return.
    fn end(&mut self, i: usize) {
        let peer = &mut self.peers[i];
        if peer.session.take().is_none() {
            return;
        }
        // What was queued but not sent dies with the connection.
        peer.outbox.take(&mut Batch::default());
        if let Some(device) = peer.attached_to
            && self.peers[device].session.is_some()
        {
            self.peers[device].departures += 1;
        }
    }

    /// Delivers everything queued, ending connections whose outbox holds a
    /// close, until nothing is left.
    fn deliver(&mut self) -> Result<Vec<Delivered>, Violation> {
        let mut delivered = Vec::new();
        loop {
            let mut progressed = false;
            for i in 0..self.peers.len() {
                let mut batch = Batch::default();
                if self.peers[i]
                    .outbox
                    .next_batch(&mut batch)
                    .now_or_never()
                    .is_none()
                {
                    continue;
                }
                progressed = true;
                if batch.overflowed {
                    return Err(self.fail(format!("conn {i}: outbox overflowed")));
                }
                for item in batch.items {
                    match encode::frame(item) {
                        Some(text) => {
                            let frame: Value = serde_json::from_str(&text).map_err(|e| {
                                self.fail(format!(
                                    "conn {i} got a frame that is not JSON ({e}): {text}"
                                ))
                            })?;
                            if !frame.is_object() {
                                return Err(self.fail(format!("conn {i} got a non-object: {text}")));
                            }
                            if self.peers[i].session.is_none() {
                                return Err(self.fail(format!(
                                    "conn {i} got a frame after its connection ended: {text}"
                                )));
                            }
                            delivered.push(Delivered { to: i, frame });
                        }
                        None => {
                            self.end(i);
                            break;
                        }
                    }
                }
            }
            if !progressed {
                return Ok(delivered);
            }
        }
    }

    /// The frames of `delivered` that reached `to`, in order.
    fn frames_to(delivered: &[Delivered], to: usize) -> impl Iterator<Item = &Value> {
        delivered
            .iter()
            .filter(move |d| d.to == to)
            .map(|d| &d.frame)
    }

    /// Takes one step and checks every promise.
    pub fn step(&mut self, action: &Action) -> Result<(), Violation> {
        self.step += 1;
        let (i, text) = match action {
            Action::OpenDevice => return self.open(true),
            Action::OpenClient => return self.open(false),
            Action::Register { conn, id } => {
                let Some(i) = self.index(*conn) else {
                    return Ok(());
                };
                let id = IDS[usize::from(*id) % IDS.len()];
                let text = format!(
                    r#"{{"message_type":"register","device_id":"{id}","device_info":{{"conn":{i}}}}}"#
                );
                (i, text)
            }
            Action::Connect { conn, id } => {
                let Some(i) = self.index(*conn) else {
                    return Ok(());
                };
                let id = IDS[usize::from(*id) % IDS.len()];
                (
                    i,
                    format!(r#"{{"message_type":"connect","device_id":"{id}"}}"#),
                )
            }
            Action::DeviceForward { conn, client_id } => {
                let Some(i) = self.index(*conn) else {
                    return Ok(());
                };
                (i, self.forward_text(i, Some(u64::from(*client_id % 5))))
            }
            Action::ClientForward { conn } => {
                let Some(i) = self.index(*conn) else {
                    return Ok(());
                };
                (i, self.forward_text(i, None))
            }
            Action::Raw { conn, text } => {
                let Some(i) = self.index(*conn) else {
                    return Ok(());
                };
                (i, text.clone())
            }
            Action::Close { conn } => {
                let Some(i) = self.index(*conn) else {
                    return Ok(());
                };
                self.end(i);
                let delivered = self.deliver()?;
                return self.observe(None, &delivered);
            }
            Action::Tick { conn } => {
                let Some(i) = self.index(*conn) else {
                    return Ok(());
                };
                if let Some(session) = &self.peers[i].session {
                    self.now = self.now.max(session.poll_timeout());
                }
                let now = self.now;
                for j in 0..self.peers.len() {
                    let due = match self.peers[j].session.as_mut() {
                        Some(session) if session.poll_timeout() <= now => {
                            session.handle_timeout(now)
                        }
                        _ => None,
                    };
                    // The front door ends the connection at once.
                    if let Some(Due::End(_)) = due {
                        self.end(j);
                    }
                }
                let delivered = self.deliver()?;
                return self.observe(None, &delivered);
            }
        };
        let sent = Sent::new(i, &text, self.nonce);
        if self.peers[i].session.is_some() && self.peers[i].wants.is_none() {
            self.peers[i].wants = sent.connect_to.clone();
        }
        let delivered = self.send(i, &text)?;
        self.observe(Some(&sent), &delivered)
    }

    /// A forward from conn `i` carrying its next sequence number.
    fn forward_text(&mut self, i: usize, client_id: Option<u64>) -> String {
        let peer = &mut self.peers[i];
        let seq = peer.next_seq;
        peer.next_seq += 1;
        let payload = format!(r#"{{"from":{i},"seq":{seq},"sim":{}}}"#, self.nonce);
        match client_id {
            Some(id) => {
                format!(r#"{{"message_type":"forward","client_id":{id},"payload":{payload}}}"#)
            }
            None => format!(r#"{{"message_type":"forward","payload":{payload}}}"#),
        }
    }

    /// Updates what each peer has seen and checks the per-message promises.
    fn observe(&mut self, sent: Option<&Sent>, delivered: &[Delivered]) -> Result<(), Violation> {
        // A device that got `config` holds the id it registered.
        for d in delivered {
            if d.frame["message_type"] == "config"
                && self.peers[d.to].is_device
                && let Some(sent) = sent.filter(|s| s.from == d.to)
            {
                self.peers[d.to].holds = sent.register_as.clone();
            }
        }
        // A client forward between open, attached peers must arrive now.
        if let Some(&Sent {
            from: i,
            forward:
                Some(Forward {
                    seq: Some(seq),
                    client_id: None,
                }),
            ..
        }) = sent
            && !self.peers[i].is_device
            && let Some(device) = self.peers[i].attached_to
            && self.peers[i].session.is_some()
            && self.peers[device].session.is_some()
            && !self.peers[i].device_left
        {
            let arrived = Self::frames_to(delivered, device).any(|f| {
                f["message_type"] == "client_msg"
                    && f["payload"]["from"] == i
                    && f["payload"]["seq"] == seq
            });
            if !arrived {
                return Err(self.fail(format!(
                    "client conn {i}'s message {seq} did not reach its device conn {device}"
                )));
            }
        }
        for d in delivered {
            let to = d.to;
            let frame = &d.frame;
            let kind = frame["message_type"].as_str().unwrap_or("");
            match kind {
                "device_info" => {
                    // The open device holding the id this client asked for.
                    let wants = self.peers[to].wants.clone();
                    let device = self
                        .peers
                        .iter()
                        .position(|p| p.session.is_some() && p.holds.is_some() && p.holds == wants)
                        .ok_or_else(|| {
                            self.fail(format!(
                                "client conn {to} got device_info, but no open device holds {wants:?}"
                            ))
                        })?;
                    // Our own registrations say who they are.
                    if let Some(conn) = frame["device_info"]["conn"].as_u64()
                        && conn != device as u64
                    {
                        return Err(self.fail(format!(
                            "client conn {to} got the device_info of conn {conn}, but conn {device} holds {wants:?}"
                        )));
                    }
                    self.peers[to].attached_to = Some(device);
                }
                "client_msg" => {
                    let client_id = frame["client_id"].as_u64().unwrap_or(0);
                    if self.peers[to].announced.contains_key(&client_id) {
                        return Err(self.fail(format!(
                            "device conn {to} got a message from client {client_id} after its departure was announced"
                        )));
                    }
                    if let Some(from) = self.check_order(to, &frame["payload"])? {
                        self.client_ids.insert(from, client_id);
                    }
                }
                "device_msg" => {
                    if self.peers[to].device_left {
                        return Err(self.fail(format!(
                            "client conn {to} got a device message after its device left"
                        )));
                    }
                    self.check_order(to, &frame["payload"])?;
                }
                "client_disconnected" => {
                    let client_id = frame["client_id"].as_u64().unwrap_or(0);
                    // D7: an answer to this device's own forward to a
                    // departed client, not an announcement.
                    if sent.is_some_and(|s| {
                        s.from == to && s.forward.is_some_and(|f| f.client_id == Some(client_id))
                    }) {
                        continue;
                    }
                    let count = self.peers[to].announced.entry(client_id).or_insert(0);
                    *count += 1;
                    let count = *count;
                    if count > 1 {
                        return Err(self.fail(format!(
                            "device conn {to} was told client {client_id} left {count} times"
                        )));
                    }
                }
                _ => {
                    if frame["error"] == "Device disconnected" {
                        self.peers[to].device_left = true;
                    }
                }
            }
        }
        // A device forward to a known, open client of its own must arrive.
        if let Some(&Sent {
            from: i,
            forward:
                Some(Forward {
                    seq: Some(seq),
                    client_id: Some(client_id),
                }),
            ..
        }) = sent
            && self.peers[i].is_device
        {
            let target = self
                .client_ids
                .iter()
                .find(|(c, id)| **id == client_id && self.peers[**c].attached_to == Some(i))
                .map(|(c, _)| *c);
            if let Some(c) = target
                && self.peers[c].session.is_some()
                && self.peers[i].session.is_some()
                && !self.peers[c].device_left
            {
                let arrived = Self::frames_to(delivered, c).any(|f| {
                    f["message_type"] == "device_msg"
                        && f["payload"]["from"] == i
                        && f["payload"]["seq"] == seq
                });
                if !arrived {
                    return Err(self.fail(format!(
                        "device conn {i}'s message {seq} did not reach client conn {c}"
                    )));
                }
            }
        }
        // Every departure of an attached client is announced to its open
        // device, and only departures are.
        for (i, peer) in self.peers.iter().enumerate() {
            if peer.is_device && peer.session.is_some() {
                let announced: u32 = peer.announced.values().sum();
                if announced != peer.departures {
                    return Err(self.fail(format!(
                        "device conn {i}: {} clients left, {announced} announced",
                        peer.departures
                    )));
                }
            }
        }
        Ok(())
    }

    /// Checks that a relayed payload of ours comes after the last one from
    /// the same sender; returns the sender.
    fn check_order(&mut self, to: usize, payload: &Value) -> Result<Option<usize>, Violation> {
        let Some((from, seq)) = ours(payload, self.nonce) else {
            return Ok(None);
        };
        if let Some(last) = self.peers[to].last_seq.insert(from, seq)
            && seq <= last
        {
            return Err(self.fail(format!(
                "conn {to} got message {seq} from conn {from} after {last}"
            )));
        }
        Ok(Some(from))
    }

    /// The registry lists exactly the ids that open devices hold.
    fn check_registry(&self) -> Result<(), Violation> {
        let mut held: Vec<String> = self
            .peers
            .iter()
            .filter(|p| p.session.is_some())
            .filter_map(|p| p.holds.clone())
            .collect();
        held.sort_unstable();
        let registered = self.core.registry.device_ids();
        if registered != held {
            return Err(self.fail(format!(
                "registered {registered:?}, but open devices hold {held:?}"
            )));
        }
        Ok(())
    }

    /// Everyone leaves; the registry and the gauges must be back to zero.
    pub fn finish(mut self) -> Result<(), Violation> {
        for conn in 0..self.peers.len() {
            let conn = u8::try_from(conn % 256).unwrap_or(0);
            self.step(&Action::Close { conn })?;
        }
        // `Close` names connections modulo 256; end any beyond that too.
        for i in 0..self.peers.len() {
            self.end(i);
        }
        self.deliver()?;
        self.check_registry()?;
        let metrics = &self.core.metrics;
        let (devices, clients) = (metrics.devices.get(), metrics.clients.get());
        let waiting = self.core.registry.waiting_clients();
        if devices != 0 || clients != 0 || waiting != 0 {
            return Err(self.fail(format!(
                "everyone left, yet {devices} devices, {clients} clients and {waiting} waiting remain"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Outgoing;
    use proptest::prelude::*;

    fn action() -> impl Strategy<Value = Action> {
        let conn = 0u8..8;
        prop_oneof![
            2 => Just(Action::OpenDevice),
            2 => Just(Action::OpenClient),
            3 => (conn.clone(), 0u8..3).prop_map(|(conn, id)| Action::Register { conn, id }),
            3 => (conn.clone(), 0u8..3).prop_map(|(conn, id)| Action::Connect { conn, id }),
            4 => (conn.clone(), 0u8..5)
                .prop_map(|(conn, client_id)| Action::DeviceForward { conn, client_id }),
            4 => conn.clone().prop_map(|conn| Action::ClientForward { conn }),
            1 => (conn.clone(), "\\PC{0,40}").prop_map(|(conn, text)| Action::Raw { conn, text }),
            1 => (conn.clone(), prop_oneof![
                Just(r#"{"message_type":"forward","client_id":1}"#.to_owned()),
                Just(r#"{"message_type":"register","device_id":""}"#.to_owned()),
                Just(r#"{"message_type":"connect","device_id":"nobody"}"#.to_owned()),
                Just("[1,2]".to_owned()),
                Just(r#"{"message_type":"forward","client_id":"1","payload":0}"#.to_owned()),
            ]).prop_map(|(conn, text)| Action::Raw { conn, text }),
            2 => conn.clone().prop_map(|conn| Action::Close { conn }),
            1 => conn.prop_map(|conn| Action::Tick { conn }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Random scenarios keep every promise, in both flows.
        #[test]
        fn random_scenarios_keep_every_promise(
            wait in any::<bool>(),
            actions in proptest::collection::vec(action(), 0..120),
        ) {
            let mut sim = Sim::new(wait);
            for action in &actions {
                sim.step(action).map_err(|v| TestCaseError::fail(v.to_string()))?;
            }
            sim.finish().map_err(|v| TestCaseError::fail(v.to_string()))?;
        }

        /// Any bytes are some scenario, and it keeps every promise.
        #[test]
        fn arbitrary_bytes_keep_every_promise(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            run_bytes(&data).map_err(|v| TestCaseError::fail(v.to_string()))?;
        }
    }

    /// The checker itself catches a broken promise: a device told twice.
    #[test]
    fn the_checker_sees_a_double_announcement() {
        let mut sim = Sim::new(false);
        sim.step(&Action::OpenDevice).unwrap();
        sim.step(&Action::Register { conn: 0, id: 0 }).unwrap();
        sim.step(&Action::OpenClient).unwrap();
        sim.step(&Action::Connect { conn: 1, id: 0 }).unwrap();
        sim.step(&Action::Close { conn: 1 }).unwrap();
        // Forge a second announcement, as a faulty registry would send it.
        let _ = sim.peers[0]
            .outbox
            .push(Outgoing::ClientDisconnected { client_id: 1 });
        let delivered = sim.deliver().unwrap();
        let error = sim.observe(None, &delivered).unwrap_err();
        assert!(
            error.to_string().contains("told client 1 left 2 times"),
            "{error}"
        );
    }

    /// Ticks move the clock to a connection's next deadline, and every
    /// connection due by then acts: the wait (C3) and the registration
    /// timeout (D15) end their sessions at their own times.
    #[test]
    fn ticks_drive_the_timeouts() {
        let mut sim = Sim::new(true);
        sim.step(&Action::OpenDevice).unwrap();
        sim.step(&Action::OpenClient).unwrap();
        sim.step(&Action::Connect { conn: 1, id: 0 }).unwrap();
        // The client's wait (5 s) ends before the device's handshake (10 s).
        sim.step(&Action::Tick { conn: 1 }).unwrap();
        assert!(sim.peers[1].session.is_none(), "the waiting client ended");
        assert!(
            sim.peers[0].session.is_some(),
            "the device is still in time"
        );
        sim.step(&Action::Tick { conn: 0 }).unwrap();
        assert!(sim.peers[0].session.is_none(), "registration timed out");
        let text = crate::metrics::tests::render_errors(&sim.core.metrics);
        assert!(text.contains(r#"error="device_not_found"} 1"#), "{text}");
        assert!(
            text.contains(r#"error="registration_timeout"} 1"#),
            "{text}"
        );
        sim.finish().unwrap();
    }

    /// Every file of the fuzz corpus and of the regressions replays clean
    /// (`fuzz/corpus/sessions`, `fuzz/regressions/sessions`).
    #[test]
    fn fuzz_corpus_replays() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        let mut replayed = 0;
        for dir in ["corpus/sessions", "regressions/sessions"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                if let Err(violation) = run_bytes(&data) {
                    panic!("{}: {violation}", path.display());
                }
                replayed += 1;
            }
        }
        assert!(replayed > 0, "no corpus under {}", root.display());
    }
}
