//! `--redis URL`: instances that share their devices through Redis
//! (PROTOCOL.md, "Many instances"). This is a front door like the others:
//! it carries what the core queues for other instances (`core::cluster`)
//! over Redis, and hands what arrives back to the core. It decides nothing
//! of the protocol itself.
//!
//! What lives in Redis, all under `signaling:`:
//! - `alive:<incarnation>`: this joining of an instance, with a lease of
//!   `--redis-lease`, renewed every third of it;
//! - `dev:<id>`: the lease on a device id, whose value is the device's
//!   record (owner, registration, descriptor, `device_info`), renewed the
//!   same way by its owner;
//! - `devices`: a sorted set of the ids, scored by their leases' expiry
//!   (the index a joining instance reads), itself expiring when nobody
//!   renews it;
//! - channels `i:<incarnation>` (the frames sent to an instance, in
//!   batches) and `directory` (devices registering and leaving).
//!
//! Every command has a deadline of a third of the lease: an instance that
//! cannot renew in time has lost Redis, closes every session that spans
//! instances, and joins again as a new incarnation.

mod resp;
pub mod wire;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::core::Core;
use crate::core::Json;
use crate::core::cluster::{Cluster, Inbound, Incarnation, Request, Wire};
use crate::core::registry::Descriptor;
use wire::{Directory, incarnation_text};

/// Where instances meet, and how long their leases last.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://host:port/db` or `unix:///path`.
    pub url: String,
    /// How long a device id (and an instance) stays held after its holder
    /// stopped renewing: the most a dead instance's ids stay taken.
    pub lease: Duration,
    /// The bound of what may wait to be written to Redis, in bytes; past
    /// it the instance fails closed.
    pub queue_bytes: usize,
}

impl RedisConfig {
    pub const DEFAULT_LEASE: Duration = Duration::from_secs(5);
    pub const DEFAULT_QUEUE_BYTES: usize = 16 << 20;
}

const PREFIX: &str = "signaling:";
const DEVICES: &str = "signaling:devices";
const DIRECTORY: &str = "signaling:directory";
/// What a heartbeat on an instance's own channel starts with (a batch of
/// frames starts with `{`).
const HEARTBEAT: &str = "heartbeat ";
/// A published batch is cut at about this many bytes.
const BATCH_BYTES: usize = 256 << 10;
/// Waits before joining again: from the first, doubling to the last.
const REJOIN_FIRST: Duration = Duration::from_millis(100);
const REJOIN_LAST: Duration = Duration::from_secs(5);

/// An instance's alive key is this and its incarnation (under [`PREFIX`]).
const ALIVE_PREFIX: &str = "signaling:alive:";

fn alive_key(incarnation: Incarnation) -> String {
    format!("{ALIVE_PREFIX}{}", incarnation_text(incarnation))
}

fn device_key(id: &str) -> String {
    format!("{PREFIX}dev:{id}")
}

fn channel(incarnation: Incarnation) -> String {
    format!("{PREFIX}i:{}", incarnation_text(incarnation))
}

// The lease scripts. Each runs atomically in Redis; time is Redis's own
// (TIME), so instances' clocks need not agree.

/// What the lease scripts share: `now`, Redis's time in ms, and whether a
/// held record belongs to an instance that still lives. An instance is
/// gone once its alive key has lapsed, which every other instance sees as
/// the moment it forgets that instance's devices; its device keys outlive
/// that key by the few milliseconds between the two in a renewal, and the
/// id must be free in that gap too, or a registration the directory
/// allowed would be refused after the fact. (The alive key is read by
/// name, not passed in KEYS: one Redis, not Redis Cluster.)
macro_rules! lease_prelude {
    () => {
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function owner_lives(record, alive_prefix)
  local owner = string.match(record, '^{"o":"(%x+)"')
  return owner == nil or redis.call('EXISTS', alive_prefix .. owner) == 1
end
"#
    };
}

/// KEYS: the device key, the index. ARGV: the record, the lease in ms, the
/// id, the previous owner's record prefix (or ""), the directory channel,
/// the alive key prefix. Takes the lease if it is free, already ours, held
/// by our previous incarnation or by an instance that is gone; announces
/// it. 1 when taken, 0 when another holds it.
const CLAIM: &str = concat!(
    lease_prelude!(),
    r"
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[1] and (ARGV[4] == '' or string.sub(held, 1, #ARGV[4]) ~= ARGV[4])
    and owner_lives(held, ARGV[6]) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('PUBLISH', ARGV[5], ARGV[1])
return 1
"
);

/// KEYS: the device key, the index. ARGV: the record, the lease in ms, the
/// id, the directory channel, the alive key prefix. 1 when renewed; 2 when
/// it had lapsed (or its holder is gone), so taken and announced again; 0
/// when another holds it now.
const RENEW: &str = concat!(
    lease_prelude!(),
    r"
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[3])
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return 1
end
if held and owner_lives(held, ARGV[5]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('PUBLISH', ARGV[4], ARGV[1])
return 2
"
);

/// KEYS: the device key, the index. ARGV: the record, the id, the
/// directory channel, the departure event. Gives the lease back if it is
/// still ours, and announces the departure.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[2])
  redis.call('PUBLISH', ARGV[3], ARGV[4])
  return 1
end
return 0
";

/// KEYS: the index. ARGV: the device key prefix, the alive key prefix.
/// Drops lapsed ids from the index and returns the records of the others
/// whose holders live.
const SNAPSHOT: &str = concat!(
    lease_prelude!(),
    r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local records = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local record = redis.call('GET', ARGV[1] .. id)
  if record and owner_lives(record, ARGV[2]) then records[#records + 1] = record end
end
return records
"
);

/// KEYS: the index. Drops lapsed ids from it.
const SWEEP: &str = concat!(
    lease_prelude!(),
    r"
return redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
"
);

/// The scripts' SHA1s, loaded on every join (a restarted Redis has none).
#[derive(Debug)]
struct Scripts {
    claim: String,
    renew: String,
    release: String,
    snapshot: String,
    sweep: String,
}

/// A lease this instance holds, or is about to.
#[derive(Debug)]
struct Lease {
    registration: u64,
    info: Json,
    descriptor: Descriptor,
}

/// One joining of Redis: its connections and incarnation.
struct Link {
    incarnation: Incarnation,
    commands: resp::Conn,
    /// Subscribed to this instance's channel and the directory; the
    /// heartbeats check it.
    subscription: resp::Conn,
    scripts: Scripts,
    heartbeats_sent: u64,
    heartbeats_seen: u64,
}

/// Why a joining ended.
enum Ended {
    Stopped,
    Failed(String),
}

/// The adapter: one task per instance.
pub struct Adapter {
    core: Arc<Core>,
    cluster: Arc<Cluster>,
    config: RedisConfig,
    client: redis::Client,
    inbound: Inbound,
    leases: HashMap<Arc<str>, Lease>,
    /// The incarnation of the last joining, whose leases the next may take
    /// over.
    previous: Option<Incarnation>,
}

impl std::fmt::Debug for Adapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adapter")
            .field("url", &self.config.url)
            .field("leases", &self.leases.len())
            .finish_non_exhaustive()
    }
}

/// Checks a `--redis` URL.
pub fn parse_url(url: &str) -> Result<(), redis::RedisError> {
    redis::Client::open(url).map(|_| ())
}

/// A Redis URL without its user and password, for the log.
pub fn redacted_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

fn random_incarnation() -> Incarnation {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    loop {
        // See polling.rs: the system's source does not fail once running.
        ring::rand::SystemRandom::new()
            .fill(&mut bytes)
            .expect("the system random number generator failed");
        let incarnation = u64::from_le_bytes(bytes);
        if incarnation != 0 {
            return incarnation;
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

impl Adapter {
    pub fn new(
        core: Arc<Core>,
        cluster: Arc<Cluster>,
        config: RedisConfig,
    ) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(config.url.as_str())?;
        Ok(Self {
            inbound: Inbound::new(core.registry.clone(), cluster.clone()),
            core,
            cluster,
            config,
            client,
            leases: HashMap::new(),
            previous: None,
        })
    }

    /// How long any one Redis command may take.
    fn deadline(&self) -> Duration {
        self.config.lease / 3
    }

    /// Joins, serves and joins again until `stop`; then gives back what it
    /// holds.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut wait = REJOIN_FIRST;
        loop {
            let joined = tokio::select! {
                () = stop.cancelled() => return,
                joined = self.join() => joined,
            };
            match joined {
                Ok(mut link) => {
                    wait = REJOIN_FIRST;
                    self.core.metrics.cluster.redis_up.set(1);
                    info!(incarnation = %incarnation_text(link.incarnation), "joined redis");
                    match self.serve(&mut link, &stop).await {
                        Ended::Stopped => {
                            self.leave(&mut link).await;
                            self.core.metrics.cluster.redis_up.set(0);
                            return;
                        }
                        Ended::Failed(why) => {
                            warn!(reason = %why, "lost redis: every session that spans instances is closed");
                        }
                    }
                    self.previous = Some(link.incarnation);
                }
                Err(why) => warn!(reason = %why, "cannot join redis"),
            }
            self.link_down();
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(REJOIN_LAST);
        }
    }

    fn link_down(&mut self) {
        let metrics = &self.core.metrics.cluster;
        metrics.redis_up.set(0);
        metrics.link_failures.inc();
        let closed = self.inbound.remote_clients() + self.cluster.remote_sessions();
        metrics.closed(wire_reason::LINK_DOWN, closed as u64);
        self.inbound.link_down();
        // What waited to be sent belonged to the sessions just closed; the
        // lease books are kept.
        for request in self.cluster.uplink.take_leases() {
            self.book(request);
        }
        self.update_gauges();
    }

    /// Keeps the lease books for a request that arrived while down.
    fn book(&mut self, request: Request) {
        match request {
            Request::Claim {
                device_id,
                registration,
                info,
                descriptor,
            } => {
                self.leases.insert(
                    device_id,
                    Lease {
                        registration,
                        info,
                        descriptor,
                    },
                );
            }
            Request::Release {
                device_id,
                registration,
            } => {
                if self
                    .leases
                    .get(&device_id)
                    .is_some_and(|lease| lease.registration == registration)
                {
                    self.leases.remove(&device_id);
                }
            }
            Request::Send { .. } => {}
        }
    }

    async fn timed<T>(
        &self,
        what: &str,
        future: impl Future<Output = Result<T, resp::Error>>,
    ) -> Result<T, String> {
        match tokio::time::timeout(self.deadline(), future).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(format!("{what}: {e}")),
            Err(_) => Err(format!("{what}: no answer within {:?}", self.deadline())),
        }
    }

    /// Connects, takes a new incarnation, subscribes, announces itself,
    /// takes the leases of its devices again and reads the directory.
    async fn join(&mut self) -> Result<Link, String> {
        let info = self.client.get_connection_info().clone();
        let mut commands = self.timed("connect", resp::Conn::connect(&info)).await?;
        let mut subscription = self.timed("subscribe", resp::Conn::connect(&info)).await?;
        let incarnation = random_incarnation();
        let mut subscribe = redis::cmd("SUBSCRIBE");
        subscribe.arg(channel(incarnation)).arg(DIRECTORY);
        self.timed("subscribe", async {
            subscription.send(&subscribe.get_packed_command()).await?;
            // One confirmation per channel.
            subscription.answers(2).await
        })
        .await?;
        let mut load = redis::pipe();
        for script in [CLAIM, RENEW, RELEASE, SNAPSHOT, SWEEP] {
            load.cmd("SCRIPT").arg("LOAD").arg(script);
        }
        let shas: Vec<String> = self
            .timed("load scripts", commands.query_pipeline(&load))
            .await?;
        let [claim, renew, release, snapshot, sweep] = <[String; 5]>::try_from(shas)
            .map_err(|_| "load scripts: not five answers".to_owned())?;
        let mut link = Link {
            incarnation,
            commands,
            subscription,
            scripts: Scripts {
                claim,
                renew,
                release,
                snapshot,
                sweep,
            },
            heartbeats_sent: 0,
            heartbeats_seen: 0,
        };
        let lease = millis(self.config.lease);
        let mut announce = redis::pipe();
        announce
            .cmd("SET")
            .arg(alive_key(incarnation))
            .arg(1)
            .arg("PX")
            .arg(lease);
        if let Some(previous) = self.previous {
            announce.cmd("DEL").arg(alive_key(previous));
        }
        let _: Vec<redis::Value> = self
            .timed("announce", link.commands.query_pipeline(&announce))
            .await?;
        // Registrations from here on are leased as this incarnation.
        for request in self.cluster.uplink.take_leases() {
            self.book(request);
        }
        self.inbound.joined(incarnation);
        // The registry is the truth of which devices are here.
        self.leases = self
            .core
            .registry
            .local_registrations()
            .into_iter()
            .map(|(id, registration, info, descriptor)| {
                (
                    id,
                    Lease {
                        registration,
                        info,
                        descriptor,
                    },
                )
            })
            .collect();
        let previous = self.previous.map(wire::owner_prefix).unwrap_or_default();
        let claims: Vec<(Arc<str>, u64)> = self
            .leases
            .iter()
            .map(|(id, lease)| (id.clone(), lease.registration))
            .collect();
        if !claims.is_empty() {
            let mut pipe = redis::pipe();
            for (id, _) in &claims {
                self.claim(&mut pipe, &link, id, &previous);
            }
            let taken: Vec<i64> = self
                .timed("claim", link.commands.query_pipeline(&pipe))
                .await?;
            for ((id, registration), taken) in claims.iter().zip(taken) {
                if taken == 0 {
                    self.lost_lease(id, *registration);
                }
            }
        }
        let mut snapshot = redis::cmd("EVALSHA");
        snapshot
            .arg(&link.scripts.snapshot)
            .arg(1)
            .arg(DEVICES)
            .arg(format!("{PREFIX}dev:"))
            .arg(ALIVE_PREFIX);
        let records: Vec<String> = self
            .timed("read the directory", link.commands.query(&snapshot))
            .await?;
        for record in records {
            self.on_directory(link.incarnation, &record);
        }
        self.update_gauges();
        Ok(link)
    }

    /// Adds the claim of `id`'s lease to `pipe`.
    fn claim(&self, pipe: &mut redis::Pipeline, link: &Link, id: &str, previous: &str) {
        let Some(lease) = self.leases.get(id) else {
            return;
        };
        let record = wire::device_record(
            link.incarnation,
            lease.registration,
            id,
            &lease.info,
            &lease.descriptor,
        );
        pipe.cmd("EVALSHA")
            .arg(&link.scripts.claim)
            .arg(2)
            .arg(device_key(id))
            .arg(DEVICES)
            .arg(record)
            .arg(millis(self.config.lease))
            .arg(id)
            .arg(previous)
            .arg(DIRECTORY)
            .arg(ALIVE_PREFIX);
    }

    /// Another instance holds `id`: the local device is evicted.
    fn lost_lease(&mut self, id: &str, registration: u64) {
        warn!(device_id = %id, "another instance holds this device id: the device here is closed");
        self.leases.remove(id);
        self.core.registry.evict(id, registration);
    }

    fn on_directory(&mut self, own: Incarnation, text: &str) {
        match wire::decode_directory(text) {
            Ok(Directory::Registered { id, device }) if device.owner != own => {
                self.core.registry.directory_add(&id, device);
            }
            Ok(Directory::Left {
                id,
                owner,
                registration,
            }) if owner != own => {
                self.core
                    .registry
                    .directory_remove(&id, owner, registration);
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "undecodable directory event"),
        }
    }

    async fn serve(&mut self, link: &mut Link, stop: &CancellationToken) -> Ended {
        let mut tick = tokio::time::interval(self.config.lease / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => return Ended::Stopped,
                // Before the traffic, which under load is always ready: a
                // renewal starved by it would let this instance's alive key
                // lapse, and every other instance would end its sessions.
                _ = tick.tick() => {
                    if let Err(why) = self.renew(link).await {
                        return Ended::Failed(why);
                    }
                }
                filled = link.subscription.fill() => {
                    let len = match filled {
                        Ok(len) => len,
                        Err(e) => return Ended::Failed(format!("the subscription: {e}")),
                    };
                    if let Some(n) = self.on_message(link.incarnation, &link.subscription.peek(len)) {
                        link.heartbeats_seen = n;
                    }
                    link.subscription.consume(len);
                }
                batch = std::future::poll_fn(|cx| self.cluster.uplink.poll_batch(cx)) => {
                    if batch.overflowed {
                        return Ended::Failed(format!(
                            "more than {} bytes waited to be written to redis",
                            self.config.queue_bytes
                        ));
                    }
                    if let Err(why) = self.write(link, batch.requests).await {
                        return Ended::Failed(why);
                    }
                }
            }
        }
    }

    /// What the subscription delivered; the number of a heartbeat.
    fn on_message(&mut self, own: Incarnation, message: &resp::Value<'_>) -> Option<u64> {
        let resp::Value::Array(parts) = message else {
            warn!("a message from redis that is not an array");
            return None;
        };
        let [
            resp::Value::Bulk(b"message"),
            resp::Value::Bulk(channel),
            resp::Value::Bulk(payload),
        ] = parts.as_slice()
        else {
            // Nothing else is asked for once subscribed.
            debug!("a message from redis that is not a published one");
            return None;
        };
        let Ok(text) = std::str::from_utf8(payload) else {
            warn!("a message from redis that is not UTF-8");
            return None;
        };
        if *channel == DIRECTORY.as_bytes() {
            self.on_directory(own, text);
            return None;
        }
        if let Some(n) = text.strip_prefix(HEARTBEAT) {
            return n.parse().ok();
        }
        match wire::decode_batch(text) {
            Ok((from, frames)) => {
                let metrics = &self.core.metrics.cluster;
                metrics.frames_received.inc_by(frames.len() as u64);
                let now = crate::door::now();
                for frame in frames {
                    if !self.inbound.on_wire(from, frame, now) {
                        metrics.closed(wire_reason::SEQUENCE_GAP, 1);
                        warn!(peer = %incarnation_text(from), "a frame from another instance went missing: its session is closed");
                    }
                }
            }
            Err(e) => warn!(error = %e, "undecodable frames from another instance"),
        }
        self.update_sessions_gauge();
        None
    }

    /// Writes what the core queued: sends, grouped per instance and cut
    /// into batches, and lease claims and releases, in one pipeline.
    async fn write(&mut self, link: &mut Link, requests: Vec<Request>) -> Result<(), String> {
        enum Step {
            Claim(Arc<str>, u64),
            Publish(Incarnation),
            Release,
        }
        let mut pipe = redis::pipe();
        let mut steps = Vec::new();
        let mut sends: Vec<(Incarnation, Vec<Wire>)> = Vec::new();
        for request in requests {
            match request {
                Request::Send { to, wire } => {
                    match sends.iter_mut().find(|(peer, _)| *peer == to) {
                        Some((_, frames)) => frames.push(wire),
                        None => sends.push((to, vec![wire])),
                    }
                }
                Request::Claim {
                    device_id,
                    registration,
                    info,
                    descriptor,
                } => {
                    self.leases.insert(
                        device_id.clone(),
                        Lease {
                            registration,
                            info,
                            descriptor,
                        },
                    );
                    self.claim(&mut pipe, link, &device_id, "");
                    steps.push(Step::Claim(device_id, registration));
                }
                Request::Release {
                    device_id,
                    registration,
                } => {
                    let Some(lease) = self.leases.get(&device_id) else {
                        continue;
                    };
                    if lease.registration != registration {
                        continue;
                    }
                    let record = wire::device_record(
                        link.incarnation,
                        registration,
                        &device_id,
                        &lease.info,
                        &lease.descriptor,
                    );
                    pipe.cmd("EVALSHA")
                        .arg(&link.scripts.release)
                        .arg(2)
                        .arg(device_key(&device_id))
                        .arg(DEVICES)
                        .arg(record)
                        .arg(&*device_id)
                        .arg(DIRECTORY)
                        .arg(wire::departure(link.incarnation, registration, &device_id));
                    steps.push(Step::Release);
                    self.leases.remove(&device_id);
                }
            }
        }
        // The claims and releases, then each batch written straight in
        // after them (one copy of it, not two).
        let mut out = pipe.get_packed_pipeline();
        let metrics = &self.core.metrics.cluster;
        for (to, frames) in &sends {
            metrics.frames_sent.inc_by(frames.len() as u64);
            let mut start = 0;
            while start < frames.len() {
                let mut end = start;
                let mut bytes = 0;
                while end < frames.len() && (end == start || bytes < BATCH_BYTES) {
                    bytes += frame_bytes(&frames[end]);
                    end += 1;
                }
                let text = wire::encode_batch(link.incarnation, &frames[start..end]);
                resp::command(
                    &mut out,
                    &[b"PUBLISH", channel(*to).as_bytes(), text.as_bytes()],
                );
                steps.push(Step::Publish(*to));
                metrics.publishes.inc();
                start = end;
            }
        }
        if steps.is_empty() {
            return Ok(());
        }
        let count = steps.len();
        let answers = self
            .timed("write", async {
                link.commands.send(&out).await?;
                link.commands.answers(count).await
            })
            .await?;
        let mut gone = Vec::new();
        for (step, answer) in steps.into_iter().zip(answers) {
            let answer = match answer {
                redis::Value::Int(n) => n,
                other => return Err(format!("write: an unexpected answer: {other:?}")),
            };
            match step {
                Step::Claim(id, registration) if answer == 0 => self.lost_lease(&id, registration),
                // Nobody subscribed to that instance's channel: it has
                // left, and what was just sent to it is lost.
                Step::Publish(to) if answer == 0 && !gone.contains(&to) => gone.push(to),
                Step::Claim(..) | Step::Publish(_) | Step::Release => {}
            }
        }
        if gone.is_empty() {
            self.update_sessions_gauge();
        } else {
            for peer in gone {
                self.peer_gone(peer);
            }
            self.update_gauges();
        }
        Ok(())
    }

    fn peer_gone(&mut self, peer: Incarnation) {
        let sessions = self.inbound.sessions_with(peer);
        info!(peer = %incarnation_text(peer), sessions, "another instance is gone: its sessions here are closed");
        self.core
            .metrics
            .cluster
            .closed(wire_reason::PEER_GONE, sessions as u64);
        self.inbound.peer_gone(peer);
    }

    /// Every third of the lease: this instance's and its devices' leases
    /// renewed, the instances it has sessions with checked, lapsed ids
    /// swept from the index, and the subscription pinged.
    async fn renew(&mut self, link: &mut Link) -> Result<(), String> {
        let lease = millis(self.config.lease);
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(alive_key(link.incarnation))
            .arg(1)
            .arg("PX")
            .arg(lease);
        pipe.cmd("EVALSHA")
            .arg(&link.scripts.sweep)
            .arg(1)
            .arg(DEVICES);
        // A heartbeat through this instance's own subscription: it must
        // have a subscriber (this one), and come back within two renewals
        // (under load it waits behind the traffic that came first), so a
        // stalled subscription is found within the lease.
        if link.heartbeats_sent > link.heartbeats_seen + 1 {
            return Err("the subscription did not deliver a heartbeat in time".into());
        }
        link.heartbeats_sent += 1;
        pipe.cmd("PUBLISH")
            .arg(channel(link.incarnation))
            .arg(format!("{HEARTBEAT}{}", link.heartbeats_sent));
        let renewing: Vec<(Arc<str>, u64)> = self
            .leases
            .iter()
            .map(|(id, lease)| (id.clone(), lease.registration))
            .collect();
        for (id, registration) in &renewing {
            let Some(held) = self.leases.get(id) else {
                continue;
            };
            let record = wire::device_record(
                link.incarnation,
                *registration,
                id,
                &held.info,
                &held.descriptor,
            );
            pipe.cmd("EVALSHA")
                .arg(&link.scripts.renew)
                .arg(2)
                .arg(device_key(id))
                .arg(DEVICES)
                .arg(record)
                .arg(lease)
                .arg(&**id)
                .arg(DIRECTORY)
                .arg(ALIVE_PREFIX);
        }
        let peers = self.inbound.peers();
        for peer in &peers {
            pipe.cmd("EXISTS").arg(alive_key(*peer));
        }
        let answers: Vec<redis::Value> = self
            .timed("renew", link.commands.query_pipeline(&pipe))
            .await?;
        let int = |value: &redis::Value| match value {
            redis::Value::Int(n) => *n,
            redis::Value::Okay | redis::Value::SimpleString(_) => 1,
            _ => -1,
        };
        if answers.get(2).map(int) == Some(0) {
            return Err("the subscription is gone".into());
        }
        let mut answers = answers.iter().skip(3);
        for (id, registration) in renewing {
            match answers.next().map(int) {
                Some(0) => self.lost_lease(&id, registration),
                Some(2) => debug!(device_id = %id, "a lapsed lease taken again"),
                _ => {}
            }
        }
        for peer in peers {
            if answers.next().map(int) == Some(0) {
                self.peer_gone(peer);
            }
        }
        self.update_gauges();
        Ok(())
    }

    /// A clean stop: what is queued is written (the departures of the
    /// devices and clients that just closed), the leases left are given
    /// back, and this incarnation's key is deleted.
    async fn leave(&mut self, link: &mut Link) {
        let requests = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match self.cluster.uplink.poll_batch(cx) {
                std::task::Poll::Ready(batch) => batch.requests,
                std::task::Poll::Pending => Vec::new(),
            })
        })
        .await;
        // A failed exchange leaves the connection out of step: the first
        // failure ends the leaving (the leases then lapse on their own).
        if let Err(why) = self.write(link, requests).await {
            warn!(reason = %why, "could not write the last departures to redis");
            return;
        }
        let releases: Vec<Request> = self
            .leases
            .iter()
            .map(|(id, lease)| Request::Release {
                device_id: id.clone(),
                registration: lease.registration,
            })
            .collect();
        if let Err(why) = self.write(link, releases).await {
            warn!(reason = %why, "could not give the leases back");
            return;
        }
        let mut delete = redis::cmd("DEL");
        delete.arg(alive_key(link.incarnation));
        let deleted: Result<i64, String> = self.timed("leave", link.commands.query(&delete)).await;
        if let Err(why) = deleted {
            warn!(reason = %why, "could not leave redis cleanly");
            return;
        }
        info!("left redis");
    }

    /// The sessions gauge, after frames came or went: cheap enough for
    /// every batch.
    fn update_sessions_gauge(&self) {
        let sessions = self.inbound.remote_clients() + self.cluster.remote_sessions();
        self.core.metrics.cluster.sessions.set(sessions as i64);
    }

    /// Every gauge: on joining, on every renewal and when a peer leaves,
    /// not per batch (counting the peers walks the whole directory).
    fn update_gauges(&self) {
        self.update_sessions_gauge();
        let metrics = &self.core.metrics.cluster;
        metrics.peers.set(self.inbound.peers().len() as i64);
        metrics
            .remote_devices
            .set(self.core.registry.remote_devices() as i64);
    }
}

/// What a frame adds to a published batch, roughly.
fn frame_bytes(frame: &Wire) -> usize {
    40 + match frame {
        Wire::ClientMsg { payload, .. } | Wire::DeviceMsg { payload, .. } => payload.len(),
        Wire::Attached { device_info, .. } => device_info.len(),
        Wire::Connect { device_id, .. } => device_id.len(),
        Wire::Leave { .. } | Wire::DeviceGone { .. } => 0,
    }
}

/// The `reason` labels of `signaling_cluster_sessions_closed_total`.
pub mod wire_reason {
    pub const LINK_DOWN: &str = "redis_lost";
    pub const PEER_GONE: &str = "instance_gone";
    pub const SEQUENCE_GAP: &str = "message_lost";
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_redis_url_is_logged_without_its_password() {
        use super::redacted_url;
        assert_eq!(
            redacted_url("redis://user:secret@10.0.0.1:6379/2"),
            "redis://10.0.0.1:6379/2"
        );
        assert_eq!(
            redacted_url("rediss://:p%40ss@cache:6380"),
            "rediss://cache:6380"
        );
        assert_eq!(
            redacted_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(
            redacted_url("unix:///run/redis.sock"),
            "unix:///run/redis.sock"
        );
    }
}
