//! Prometheus metrics, served as text on `GET /metrics`.
//!
//! The hot path holds the counters it needs (each an `Arc` of an atomic) so a
//! relayed message costs an atomic add, not a label lookup.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

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
struct PhraseLabel {
    phrase: &'static str,
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
}

impl RefusedReason {
    fn label(self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::ConnectionLimit => "connection_limit",
            Self::PerIpLimit => "per_ip_limit",
            Self::BadUpgrade => "bad_upgrade",
            Self::Origin => "origin",
            Self::ProxyHeader => "proxy_header",
        }
    }
}

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
    errors: Family<PhraseLabel, Counter>,
    refused: Family<ReasonLabel, Counter>,
    /// Payload bytes of websocket messages received.
    pub bytes_in: Counter,
    /// Payload bytes of websocket messages sent.
    pub bytes_out: Counter,
    resident_memory: Gauge,
    pub cluster: ClusterMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("signaling");
        let devices = Gauge::default();
        registry.register("devices", "Devices registered", devices.clone());
        let clients = Gauge::default();
        registry.register(
            "clients",
            "Clients connected to a device or waiting for one",
            clients.clone(),
        );
        let connections = Family::<EndpointLabel, Gauge>::default();
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
        registry.register(
            "messages_relayed",
            "Messages relayed between clients and devices",
            relayed.clone(),
        );
        let errors = Family::<PhraseLabel, Counter>::default();
        registry.register(
            "errors",
            "Error messages sent, by their stable phrase",
            errors.clone(),
        );
        let refused = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "connections_refused",
            "Websocket upgrades refused, by reason",
            refused.clone(),
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
        let resident_memory = Gauge::default();
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory of the server process",
            resident_memory.clone(),
        );
        let cluster = ClusterMetrics::register(&mut registry);
        Self {
            registry,
            cluster,
            devices,
            clients,
            connections,
            socket_connections,
            relayed,
            errors,
            refused,
            bytes_in,
            bytes_out,
            resident_memory,
        }
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
            .get_or_create(&PhraseLabel {
                phrase: error.label(),
            })
            .inc();
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
        if let Some(rss) = resident_memory_bytes() {
            self.resident_memory.set(rss);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The process's resident set size, from /proc (Linux only).
fn resident_memory_bytes() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
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
