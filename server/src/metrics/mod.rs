//! Prometheus metrics, served as text on `GET /metrics`.
//!
//! The hot path holds the counters it needs (each an `Arc` of an atomic) so a
//! relayed message costs an atomic add, not a label lookup.
//!
//! Every label value is snake_case, and every series whose labels are known
//! in advance exists from the start at zero, so that an alert on one can be
//! written before its first event (PROTOCOL.md, "Metrics").

mod histogram;
mod process;

use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};

pub use histogram::DurationHistogram;

/// Which websocket endpoint a connection came in on.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Endpoint {
    RegisterDevice,
    ConnectClient,
    /// The Go operator's client websocket, `/devices/{id}/connect`.
    DeviceConnect,
    /// The Go operator's adb bridge, `/devices/{id}/adb`.
    Adb,
}

impl Endpoint {
    const ALL: [Self; 4] = [
        Self::RegisterDevice,
        Self::ConnectClient,
        Self::DeviceConnect,
        Self::Adb,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::RegisterDevice => "register_device",
            Self::ConnectClient => "connect_client",
            Self::DeviceConnect => "devices_connect",
            Self::Adb => "devices_adb",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabel {
    endpoint: &'static str,
}

/// The direction of a relayed message.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Direction {
    ClientToDevice,
    DeviceToClient,
}

impl Direction {
    const ALL: [Self; 2] = [Self::ClientToDevice, Self::DeviceToClient];

    fn label(self) -> &'static str {
        match self {
            Self::ClientToDevice => "client_to_device",
            Self::DeviceToClient => "device_to_client",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabel {
    error: &'static str,
}

/// Why a connection was refused before the websocket upgrade.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum RefusedReason {
    Unauthorized,
    ConnectionLimit,
    PerIpLimit,
    BadUpgrade,
    /// A browser page of an origin `--allowed-origin` does not let in.
    Origin,
    /// With `--proxy-protocol`, a connection without a valid header.
    ProxyHeader,
    /// The server is draining or shutting down.
    ShuttingDown,
    /// A resume whose token no session holds, or holds for another
    /// endpoint or device.
    Resume,
}

impl RefusedReason {
    const ALL: [Self; 8] = [
        Self::Unauthorized,
        Self::ConnectionLimit,
        Self::PerIpLimit,
        Self::BadUpgrade,
        Self::Origin,
        Self::ProxyHeader,
        Self::ShuttingDown,
        Self::Resume,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::ConnectionLimit => "connection_limit",
            Self::PerIpLimit => "per_ip_limit",
            Self::BadUpgrade => "bad_upgrade",
            Self::Origin => "origin",
            Self::ProxyHeader => "proxy_header",
            Self::ShuttingDown => "shutting_down",
            Self::Resume => "resume",
        }
    }
}

/// What a connection was for: its session's kind.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Role {
    Device,
    Client,
    /// A control connection on the control socket.
    Control,
}

impl Role {
    const ALL: [Self; 3] = [Self::Device, Self::Client, Self::Control];

    pub fn label(self) -> &'static str {
        match self {
            Self::Device => "device",
            Self::Client => "client",
            Self::Control => "control",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabel {
    role: &'static str,
}

/// How a held session ended its time away.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum ResumeOutcome {
    /// A new connection took it back.
    Resumed,
    /// Its window passed first: its peers heard it leave.
    WindowPassed,
    /// It ended while away: its outbox overflowed, its device left, its
    /// token expired, its id was taken by a new registration, or the
    /// server shut down.
    EndedAway,
}

impl ResumeOutcome {
    const ALL: [Self; 3] = [Self::Resumed, Self::WindowPassed, Self::EndedAway];

    fn label(self) -> &'static str {
        match self {
            Self::Resumed => "resumed",
            Self::WindowPassed => "window_passed",
            Self::EndedAway => "ended_away",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResumeLabels {
    role: &'static str,
    outcome: &'static str,
}

/// The roles whose sessions resume (a control connection's do not).
const RESUMING_ROLES: [Role; 2] = [Role::Device, Role::Client];

/// Who ended a connection.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum ClosedBy {
    /// The server, for the reason its close code says.
    Server,
    /// The peer: a close frame, or a device closing its socket.
    Peer,
    /// Nobody: the connection was lost without a close.
    Network,
}

impl ClosedBy {
    pub fn label(self) -> &'static str {
        match self {
            Self::Server => "server",
            Self::Peer => "peer",
            Self::Network => "network",
        }
    }
}

/// The close codes counted under their own number; a peer's other codes
/// are counted as `other`, so that no peer can make new series.
const KNOWN_CLOSE_CODES: [(u16, &str); 9] = [
    (1000, "1000"),
    (1001, "1001"),
    (1002, "1002"),
    (1003, "1003"),
    (1007, "1007"),
    (1008, "1008"),
    (1009, "1009"),
    (1011, "1011"),
    (1013, "1013"),
];

/// A close code's label: its number, `none` for an end without one, or
/// `other`.
fn close_code_label(code: Option<u16>) -> &'static str {
    match code {
        None => "none",
        Some(code) => KNOWN_CLOSE_CODES
            .iter()
            .find(|(known, _)| *known == code)
            .map_or("other", |(_, label)| label),
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CloseLabels {
    closed_by: &'static str,
    code: &'static str,
}

/// A family whose label sets are all known at start: its members are
/// handles held where they are observed, so an observation looks no label
/// up.
#[derive(Debug)]
struct FixedFamily<L, M> {
    members: Vec<(L, M)>,
}

impl<L, M> EncodeMetric for FixedFamily<L, M>
where
    L: EncodeLabelSet + std::fmt::Debug + Send + Sync,
    M: EncodeMetric + TypedMetric,
{
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, metric) in &self.members {
            metric.encode(encoder.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        M::TYPE
    }
}

/// Buckets of a session's length: from a refused handshake to a device up
/// for days.
const SESSION_SECONDS: &[f64] = &[
    0.1, 1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 14_400.0, 43_200.0, 86_400.0, 604_800.0,
];

/// Buckets of the time a client waits for its `device_info`: at once in
/// the reference flow, a Redis round trip with the device on another
/// instance, up to `--client-wait-secs` in the alternative flow.
const DEVICE_INFO_SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];

/// Buckets of the time a held session was away before its peer came back:
/// a reconnect on a working network (tens of milliseconds) to the end of
/// the longest window.
const AWAY_SECONDS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
];

/// Buckets of the time a relayed message waits in an outbox before it is
/// written: tens of microseconds when the receiver keeps up, seconds when
/// it is about to be closed as a slow consumer.
const OUTBOX_WAIT_SECONDS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    commit: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// The cluster's metrics (`--redis`; zero without it, so that alerts on
/// them can be written before the first instance joins).
#[derive(Debug)]
pub struct ClusterMetrics {
    /// 1 while this instance is joined to Redis.
    pub redis_up: Gauge,
    /// Other instances this one has sessions or listed devices with.
    pub peers: Gauge,
    /// Devices of other instances in this instance's directory.
    pub remote_devices: Gauge,
    /// Sessions that span this instance and another, right now.
    pub sessions: Gauge,
    /// Frames sent to and received from other instances.
    pub frames_sent: Counter,
    pub frames_received: Counter,
    /// PUBLISH commands (each a batch of frames to one instance).
    pub publishes: Counter,
    /// Times this instance lost Redis (or could not join it).
    pub link_failures: Counter,
    sessions_closed: Family<ReasonLabel, Counter>,
}

impl ClusterMetrics {
    const CLOSE_REASONS: [&'static str; 3] = [
        crate::cluster::wire_reason::LINK_DOWN,
        crate::cluster::wire_reason::PEER_GONE,
        crate::cluster::wire_reason::SEQUENCE_GAP,
    ];

    fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            redis_up: Gauge::default(),
            peers: Gauge::default(),
            remote_devices: Gauge::default(),
            sessions: Gauge::default(),
            frames_sent: Counter::default(),
            frames_received: Counter::default(),
            publishes: Counter::default(),
            link_failures: Counter::default(),
            sessions_closed: Family::default(),
        };
        for reason in Self::CLOSE_REASONS {
            let _ = metrics
                .sessions_closed
                .get_or_create(&ReasonLabel { reason });
        }
        registry.register(
            "cluster_redis_up",
            "1 while joined to Redis (--redis)",
            metrics.redis_up.clone(),
        );
        registry.register(
            "cluster_peers",
            "Other instances with sessions or devices known here (refreshed every third of --redis-lease)",
            metrics.peers.clone(),
        );
        registry.register(
            "cluster_remote_devices",
            "Devices of other instances listed here (refreshed every third of --redis-lease)",
            metrics.remote_devices.clone(),
        );
        registry.register(
            "cluster_sessions",
            "Sessions between a client and a device on different instances",
            metrics.sessions.clone(),
        );
        registry.register(
            "cluster_frames_sent",
            "Frames sent to other instances",
            metrics.frames_sent.clone(),
        );
        registry.register(
            "cluster_frames_received",
            "Frames received from other instances",
            metrics.frames_received.clone(),
        );
        registry.register(
            "cluster_publishes",
            "Batches of frames published to Redis",
            metrics.publishes.clone(),
        );
        registry.register(
            "cluster_link_failures",
            "Times this instance lost Redis or could not join it",
            metrics.link_failures.clone(),
        );
        registry.register(
            "cluster_sessions_closed",
            "Sessions spanning instances closed by a failure, by reason",
            metrics.sessions_closed.clone(),
        );
        metrics
    }

    /// Counts `n` sessions closed for `reason` (one of `CLOSE_REASONS`).
    pub fn closed(&self, reason: &'static str, n: u64) {
        self.sessions_closed
            .get_or_create(&ReasonLabel { reason })
            .inc_by(n);
    }
}

/// Every metric the server exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Devices registered right now.
    pub devices: Gauge,
    /// Clients connected to a device, or waiting for one, right now.
    pub clients: Gauge,
    connections: Family<EndpointLabel, Gauge>,
    /// Connections open on the device and control sockets right now.
    pub socket_connections: Gauge,
    relayed: Family<DirectionLabel, Counter>,
    errors: Family<ErrorLabel, Counter>,
    refused: Family<ReasonLabel, Counter>,
    closed: Family<CloseLabels, Counter>,
    /// Each role's session length, indexed as `Role::ALL`.
    session_seconds: [DurationHistogram; 3],
    /// From a client's `connect` to its `device_info` written.
    pub device_info_wait: DurationHistogram,
    /// From a relayed message's arrival to the write of the batch it is
    /// in, for the oldest message of each batch a socket writes.
    pub outbox_wait: DurationHistogram,
    /// Sessions held for a resume right now, by role.
    sessions_away: Family<RoleLabel, Gauge>,
    resumes: Family<ResumeLabels, Counter>,
    /// How long held sessions were away before their peer came back.
    pub resume_away: DurationHistogram,
    /// Frames written again to a peer that resumed (those it had not
    /// received).
    pub frames_replayed: Counter,
    /// Payload bytes of websocket messages received.
    pub bytes_in: Counter,
    /// Payload bytes of websocket messages sent.
    pub bytes_out: Counter,
    pub cluster: ClusterMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut root = Registry::default();
        // The standard names, without the server's prefix.
        root.register_collector(Box::new(process::ProcessCollector));
        let registry = root.sub_registry_with_prefix("signaling");
        let devices = Gauge::default();
        registry.register("devices", "Devices registered", devices.clone());
        let clients = Gauge::default();
        registry.register(
            "clients",
            "Clients connected to a device or waiting for one",
            clients.clone(),
        );
        let connections = Family::<EndpointLabel, Gauge>::default();
        for endpoint in Endpoint::ALL {
            let _ = connections.get_or_create(&EndpointLabel {
                endpoint: endpoint.label(),
            });
        }
        registry.register(
            "websocket_connections",
            "Open websocket connections by endpoint",
            connections.clone(),
        );
        let socket_connections = Gauge::default();
        registry.register(
            "device_socket_connections",
            "Open connections on the device and control sockets",
            socket_connections.clone(),
        );
        let relayed = Family::<DirectionLabel, Counter>::default();
        for direction in Direction::ALL {
            let _ = relayed.get_or_create(&DirectionLabel {
                direction: direction.label(),
            });
        }
        registry.register(
            "messages_relayed",
            "Messages relayed between clients and devices",
            relayed.clone(),
        );
        let errors = Family::<ErrorLabel, Counter>::default();
        for error in crate::core::ServerError::LABELS {
            let _ = errors.get_or_create(&ErrorLabel { error });
        }
        registry.register(
            "errors",
            "Errors sent (an error frame or a close), by error",
            errors.clone(),
        );
        let refused = Family::<ReasonLabel, Counter>::default();
        for reason in RefusedReason::ALL {
            let _ = refused.get_or_create(&ReasonLabel {
                reason: reason.label(),
            });
        }
        registry.register(
            "connections_refused",
            "Connections refused before a session began, by reason",
            refused.clone(),
        );
        let closed = Family::<CloseLabels, Counter>::default();
        let server_codes = [1001, 1002, 1003, 1007, 1008, 1009, 1013].map(Some);
        let peer_codes = KNOWN_CLOSE_CODES
            .iter()
            .map(|(code, _)| Some(*code))
            .chain([None, Some(0)]);
        let combinations = server_codes
            .into_iter()
            .map(|code| (ClosedBy::Server, code))
            .chain(peer_codes.map(|code| (ClosedBy::Peer, code)))
            .chain([(ClosedBy::Network, None)]);
        for (closed_by, code) in combinations {
            let _ = closed.get_or_create(&CloseLabels {
                closed_by: closed_by.label(),
                code: close_code_label(code),
            });
        }
        registry.register(
            "connections_closed",
            "Sessions ended, by who ended them and the close code (none: without one)",
            closed.clone(),
        );
        let session_seconds = Role::ALL.map(|_| DurationHistogram::new(SESSION_SECONDS));
        let by_role = FixedFamily {
            members: Role::ALL
                .iter()
                .zip(&session_seconds)
                .map(|(role, histogram)| (RoleLabel { role: role.label() }, histogram.clone()))
                .collect(),
        };
        registry.register_with_unit(
            "session_duration",
            "How long sessions lasted, from the upgrade (or the polling connect) to the end",
            Unit::Seconds,
            by_role,
        );
        let device_info_wait = DurationHistogram::new(DEVICE_INFO_SECONDS);
        registry.register_with_unit(
            "device_info_wait",
            "From a client's connect to its device_info written",
            Unit::Seconds,
            device_info_wait.clone(),
        );
        let outbox_wait = DurationHistogram::new(OUTBOX_WAIT_SECONDS);
        registry.register_with_unit(
            "outbox_wait",
            "How long the oldest relayed message of each batch a socket writes waited in its outbox",
            Unit::Seconds,
            outbox_wait.clone(),
        );
        let sessions_away = Family::<RoleLabel, Gauge>::default();
        let resumes = Family::<ResumeLabels, Counter>::default();
        for role in RESUMING_ROLES {
            let _ = sessions_away.get_or_create(&RoleLabel { role: role.label() });
            for outcome in ResumeOutcome::ALL {
                let _ = resumes.get_or_create(&ResumeLabels {
                    role: role.label(),
                    outcome: outcome.label(),
                });
            }
        }
        registry.register(
            "sessions_away",
            "Sessions whose connection dropped, held for their peer to resume them (--resume-window)",
            sessions_away.clone(),
        );
        registry.register(
            "session_resumes",
            "Held sessions by how their time away ended: resumed, window_passed, ended_away",
            resumes.clone(),
        );
        let resume_away = DurationHistogram::new(AWAY_SECONDS);
        registry.register_with_unit(
            "resume_away",
            "How long a resumed session was away, from its connection's end to the new one's handover",
            Unit::Seconds,
            resume_away.clone(),
        );
        let frames_replayed = Counter::default();
        registry.register(
            "frames_replayed",
            "Frames written again to a peer that resumed: those it said it had not received",
            frames_replayed.clone(),
        );
        let bytes_in = Counter::default();
        registry.register(
            "received_bytes",
            "Payload bytes of messages received (websocket frames, device socket packets)",
            bytes_in.clone(),
        );
        let bytes_out = Counter::default();
        registry.register(
            "sent_bytes",
            "Payload bytes of messages sent (websocket frames, device socket packets)",
            bytes_out.clone(),
        );
        registry.register(
            "build",
            "The server's version and the git commit it was built from",
            prometheus_client::metrics::info::Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                commit: crate::GIT_COMMIT,
            }),
        );
        let cluster = ClusterMetrics::register(registry);
        Self {
            registry: root,
            cluster,
            devices,
            clients,
            connections,
            socket_connections,
            relayed,
            errors,
            refused,
            closed,
            session_seconds,
            device_info_wait,
            outbox_wait,
            sessions_away,
            resumes,
            resume_away,
            frames_replayed,
            bytes_in,
            bytes_out,
        }
    }

    /// The gauge of sessions of `role` held for a resume.
    pub fn sessions_away(&self, role: Role) -> Gauge {
        self.sessions_away
            .get_or_create(&RoleLabel { role: role.label() })
            .clone()
    }

    /// Counts how a held session of `role` ended its time away.
    pub fn resume_outcome(&self, role: Role, outcome: ResumeOutcome) {
        self.resumes
            .get_or_create(&ResumeLabels {
                role: role.label(),
                outcome: outcome.label(),
            })
            .inc();
    }

    /// The gauge of open connections on one endpoint.
    pub fn connections(&self, endpoint: Endpoint) -> Gauge {
        self.connections
            .get_or_create(&EndpointLabel {
                endpoint: endpoint.label(),
            })
            .clone()
    }

    /// The counter of messages relayed in one direction.
    pub fn relayed(&self, direction: Direction) -> Counter {
        self.relayed
            .get_or_create(&DirectionLabel {
                direction: direction.label(),
            })
            .clone()
    }

    /// Counts one error sent, under its variant's label.
    pub fn error_sent(&self, error: &crate::core::ServerError) {
        self.errors
            .get_or_create(&ErrorLabel {
                error: error.label(),
            })
            .inc();
    }

    /// Counts a session's end and observes its length.
    pub fn session_ended(
        &self,
        role: Role,
        closed_by: ClosedBy,
        code: Option<u16>,
        duration: Duration,
    ) {
        self.closed
            .get_or_create(&CloseLabels {
                closed_by: closed_by.label(),
                code: close_code_label(code),
            })
            .inc();
        let index = Role::ALL.iter().position(|r| *r == role).unwrap_or(0);
        self.session_seconds[index].observe(duration);
    }

    /// Counts one refused upgrade.
    pub fn refused(&self, reason: RefusedReason) {
        self.refused
            .get_or_create(&ReasonLabel {
                reason: reason.label(),
            })
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    /// The `signaling_errors_total` lines of the exposition.
    pub fn render_errors(metrics: &super::Metrics) -> String {
        metrics
            .render()
            .lines()
            .filter(|line| line.starts_with("signaling_errors_total"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}
