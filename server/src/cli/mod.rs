//! The command line of `signaling-server`, and how it becomes a
//! [`ServerConfig`]; `config_file` adds the environment and `--config`.

pub mod config_file;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use protocol::IceServer;

use crate::config::{
    CUTTLEFISH_POLL_BACKOFF_CAP, DeviceSocketConfig, ServerConfig, default_max_connections,
    default_max_http_connections,
};
use crate::tls;

/// A WebRTC signaling server for Cuttlefish-style devices and their clients.
///
/// Devices register on /register_device, clients connect on /connect_client;
/// PROTOCOL.md describes the protocol, every error and every limit.
#[derive(Debug, Parser)]
#[command(
    name = "signaling-server",
    version = crate::VERSION,
    after_help = "Every setting is also read from its environment variable (shown with \
        it; SIGNALING_ and the flag in capitals) and from --config FILE: a flag wins over \
        its variable, which wins over the file; --print-config shows what is in effect.\n\
        Logs go to stderr; RUST_LOG filters them (default \
        \"info,hyper=warn,tokio_tungstenite=warn,tungstenite=warn,rustls=warn\"; e.g. \
        RUST_LOG=debug, RUST_LOG=signaling_server=debug).\n\
        To mint a signed token for --token-secret-file: signaling-server token --help\n\
        The manual page and shell completions: signaling-server man, \
        signaling-server completions bash|zsh|fish|elvish|powershell"
)]
pub struct Cli {
    /// Read settings from this TOML file, one `key = value` each, the key
    /// the flag's long name: listen = "0.0.0.0:8443", max-message-bytes =
    /// 65536, stun-server = ["stun:stun.example:3478"], allow-insecure =
    /// true. A flag, then its environment variable, overrides the file.
    #[arg(long, env = "SIGNALING_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Print the settings in effect (each from its flag, its environment
    /// variable, --config or its default) as a file --config takes, and
    /// exit. Tokens are not printed.
    #[arg(long)]
    pub print_config: bool,

    /// Address and port to listen on, ADDR:PORT (127.0.0.1:8443,
    /// [::1]:8443, 0.0.0.0:8443; localhost is 127.0.0.1). Plain ws:// is
    /// only allowed on a loopback address unless --allow-insecure is given.
    #[arg(
        long,
        env = "SIGNALING_LISTEN",
        value_name = "ADDR:PORT",
        default_value = "127.0.0.1:8443",
        value_parser = parse_listen
    )]
    pub listen: SocketAddr,

    /// The reference server's port flag (--http_server_port=N): listen on
    /// this port of the --listen address (127.0.0.1 unless given).
    #[arg(long = "http_server_port", value_name = "N")]
    pub http_server_port: Option<u16>,

    /// The Go operator's port flag (--http_port=N): listen on this port of
    /// --listen_addr (127.0.0.1 unless given). Its default there is 1080;
    /// here the port stays --listen's unless given.
    #[arg(
        long = "http_port",
        value_name = "N",
        conflicts_with = "http_server_port"
    )]
    pub http_port: Option<u16>,

    /// The Go operator's --https_port=N: also serve the same endpoints with
    /// TLS (https://, wss://) on this port of --listen_addr, with the
    /// certificate of --tls_cert_dir.
    #[arg(long = "https_port", value_name = "N")]
    pub https_port: Option<u16>,

    /// The Go operator's --tls_cert_dir=DIR: DIR/cert.pem and DIR/key.pem
    /// serve --https_port.
    #[arg(
        long = "tls_cert_dir",
        value_name = "DIR",
        default_value = "/etc/cuttlefish-common/operator/cert"
    )]
    pub tls_cert_dir: PathBuf,

    /// The Go operator's address flag (--listen_addr=IP): listen on this
    /// address, on the port --http_port or --http_server_port names.
    #[arg(long = "listen_addr", value_name = "IP")]
    pub listen_addr: Option<std::net::IpAddr>,

    /// The Go operator's --log_file=PATH: the log is appended there as well
    /// as written to stderr (without colours).
    #[arg(long = "log_file", value_name = "PATH")]
    pub log_file: Option<PathBuf>,

    /// What GET /devices lists: device ids (the reference server's answer)
    /// or descriptors (the Go operator's: objects with device_id,
    /// group_name, adb_port). Without it, ids, unless a Go operator flag
    /// (--socket_path, --http_port, --listen_addr) is given.
    #[arg(long, value_enum, value_name = "SHAPE")]
    pub devices_list: Option<DevicesList>,

    /// The reference server's TLS switch (--use_secure_http=true|false):
    /// true needs a certificate (--certs_dir, --tls-cert/--tls-key or
    /// --tls-self-signed); false serves plain ws:// even if --certs_dir is
    /// given.
    #[arg(
        long = "use_secure_http",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new(),
    )]
    pub use_secure_http: Option<bool>,

    /// gflags' negative form, --nouse_secure_http: the same as
    /// --use_secure_http=false.
    #[arg(
        long = "nouse_secure_http",
        conflicts_with = "use_secure_http",
        hide = true
    )]
    pub nouse_secure_http: bool,

    /// The reference server's certificate folder (--certs_dir=DIR):
    /// DIR/server.crt and DIR/server.key serve wss:// and https://.
    #[arg(long = "certs_dir", value_name = "DIR", conflicts_with_all = ["tls_cert", "tls_self_signed"])]
    pub certs_dir: Option<PathBuf>,

    /// Devices may also register on this unix SOCK_SEQPACKET socket, one
    /// JSON message per packet, as Cuttlefish's devices do with its Go
    /// operator (its default there is /run/cuttlefish/operator).
    #[arg(
        long,
        env = "SIGNALING_DEVICE_SOCKET",
        value_name = "PATH",
        group = "socket"
    )]
    pub device_socket: Option<PathBuf>,

    /// The Go operator's spelling of --device-socket (--socket_path=PATH).
    #[arg(long = "socket_path", value_name = "PATH", group = "socket")]
    pub socket_path: Option<PathBuf>,

    /// A unix SOCK_SEQPACKET socket for the Go operator's control
    /// connections: a host tool pre-registers the devices it launches
    /// (group, owner, name, adb port) and hears each register. Its
    /// default there is /run/cuttlefish/operator_control. The
    /// --device-socket-* settings apply to it too.
    #[arg(long, value_name = "PATH", group = "control")]
    pub control_socket: Option<PathBuf>,

    /// The Go operator's spelling of --control-socket
    /// (--control_socket_path=PATH).
    #[arg(long = "control_socket_path", value_name = "PATH", group = "control")]
    pub control_socket_path: Option<PathBuf>,

    /// The device socket's permission bits, in octal. Who may connect is
    /// who may write the socket; the default is the Go operator's.
    #[arg(long, default_value = "770", value_name = "OCTAL", value_parser = parse_mode)]
    pub device_socket_mode: u32,

    /// The device socket's owner, as a numeric uid.
    #[arg(long, value_name = "UID")]
    pub device_socket_owner: Option<u32>,

    /// The device socket's group, as a numeric gid (with mode 770, the
    /// users of this group may connect).
    #[arg(long, value_name = "GID")]
    pub device_socket_group: Option<u32>,

    /// Only processes of this user (a numeric uid, read with SO_PEERCRED)
    /// may register on the device socket; repeatable. Without it, whoever
    /// can open the socket may.
    #[arg(long = "device-socket-allow-uid", value_name = "UID")]
    pub device_socket_allowed_uids: Vec<u32>,

    /// Serve this directory's files on every other GET path (`/` is
    /// index.html), e.g. Cuttlefish's web UI. Also --assets_dir=DIR.
    #[arg(long, alias = "assets_dir", value_name = "DIR")]
    pub assets_dir: Option<PathBuf>,

    /// The Go operator's --webui_url=URL: every path this server does not
    /// serve itself is proxied to this http:// web server (any method,
    /// websockets tunnelled), in place of --assets-dir and the built-in
    /// pages. Also --webui-url.
    #[arg(
        long = "webui_url",
        alias = "webui-url",
        value_name = "URL",
        conflicts_with = "assets_dir"
    )]
    pub webui_url: Option<String>,

    /// Share devices with other instances through this Redis
    /// (redis://HOST:PORT[/DB] or unix:///PATH): every instance on it
    /// lists every device and reaches it, as one server would (PROTOCOL.md,
    /// "Many instances").
    #[arg(long, env = "SIGNALING_REDIS", value_name = "URL")]
    pub redis: Option<String>,

    /// With --redis: how long a device id stays held once its instance
    /// stops renewing it (a dead instance's ids are free after this);
    /// renewed every third of it, and a Redis command that takes longer
    /// than a third counts as Redis lost. 300ms to 1h.
    #[arg(long, default_value = "5s", value_parser = parse_duration, requires = "redis")]
    pub redis_lease: Duration,

    /// With --redis: the most bytes that may wait to be written to Redis;
    /// past it the instance closes every session that spans instances
    /// rather than lose messages. At least 65536.
    #[arg(long, default_value_t = 16 << 20, requires = "redis")]
    pub redis_queue_bytes: u64,

    /// Serve plain ws:// and http:// on a non-loopback address. Tokens and
    /// signaling then cross the network unencrypted.
    #[arg(long)]
    pub allow_insecure: bool,

    /// PEM certificate chain; serves wss:// and https:// (needs --tls-key).
    #[arg(long, requires = "tls_key", conflicts_with = "tls_self_signed")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Make a fresh self-signed certificate for localhost and the listen
    /// address (development only); prints its SHA-256 fingerprint.
    #[arg(long)]
    pub tls_self_signed: bool,

    /// Where --tls-self-signed writes cert.pem and key.pem.
    #[arg(long, default_value_os_t = std::env::temp_dir().join("signaling-server-tls"))]
    pub tls_self_signed_dir: PathBuf,

    /// A STUN (or TURN) server URL for `ice_servers`; repeatable. Also
    /// --stun_server=HOST:PORT; `stun:` is added when the URL has no
    /// scheme.
    #[arg(long = "stun-server", alias = "stun_server", value_name = "URL")]
    pub stun_servers: Vec<String>,

    /// A JSON file holding an array of IceServer dictionaries ({"urls",
    /// "username", "credential"}), added to `ice_servers`. Without this and
    /// --stun-server, `ice_servers` is an empty list.
    #[arg(long, value_name = "FILE")]
    pub ice_servers: Option<PathBuf>,

    /// A TURN server URL (`turn:HOST[:PORT][?transport=udp|tcp]`, or
    /// `turns:`); repeatable. Every `config` then carries credentials of
    /// its own for them, signed with the secret shared with the TURN
    /// server (coturn's --use-auth-secret --static-auth-secret).
    #[arg(long = "turn-url", value_name = "URL")]
    pub turn_urls: Vec<String>,

    /// The file holding that secret; read again on SIGHUP and when it
    /// changes. Or the secret itself in SIGNALING_TURN_SECRET (there is no
    /// flag for it: a flag's value shows in `ps`).
    #[arg(long, env = "SIGNALING_TURN_SECRET_FILE", value_name = "FILE")]
    pub turn_secret_file: Option<PathBuf>,

    /// How long each TURN credential is valid, 1m to 7d.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub turn_ttl: Duration,

    /// When the secret changes, how long the one before goes on signing
    /// (time to give every TURN server the new one).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub turn_secret_grace: Duration,

    /// Let a client connect before its device registers and wait this many
    /// seconds for it (the seed document's alternative flow). 0 keeps the
    /// reference flow: an unknown device is an error at once.
    #[arg(long, default_value_t = 0, value_name = "SECS")]
    pub client_wait_secs: u64,

    /// Token devices must present (Authorization: Bearer, or ?token=).
    #[arg(long, env = "SIGNALING_DEVICE_TOKEN", hide_env_values = true)]
    pub device_token: Option<String>,

    /// Token clients must present; also guards /devices and /infra_config.
    #[arg(long, env = "SIGNALING_CLIENT_TOKEN", hide_env_values = true)]
    pub client_token: Option<String>,

    /// The device token in a file, read again on SIGHUP (in place of
    /// --device-token).
    #[arg(
        long,
        env = "SIGNALING_DEVICE_TOKEN_FILE",
        value_name = "FILE",
        conflicts_with = "device_token"
    )]
    pub device_token_file: Option<PathBuf>,

    /// The client token in a file, read again on SIGHUP (in place of
    /// --client-token).
    #[arg(
        long,
        env = "SIGNALING_CLIENT_TOKEN_FILE",
        value_name = "FILE",
        conflicts_with = "client_token"
    )]
    pub client_token_file: Option<PathBuf>,

    /// Take signed tokens (HS256 JWTs with a role, device ids and an
    /// expiry), signed with the secret in FILE (at least 32 bytes); mint
    /// them with `signaling-server token`. Devices and clients then need a
    /// token (a static one above, or a signed one). Read again on SIGHUP.
    #[arg(long, env = "SIGNALING_TOKEN_SECRET_FILE", value_name = "FILE")]
    pub token_secret_file: Option<PathBuf>,

    /// When the token secret changes, how long tokens signed with the one
    /// before still verify (0s to 7d).
    #[arg(long, default_value = "0s", value_parser = parse_duration, requires = "token_secret_file")]
    pub token_secret_grace: Duration,

    /// Let a session go on past its signed token's expiry; by default it
    /// ends then, with `Token expired`.
    #[arg(long, requires = "token_secret_file")]
    pub sessions_outlive_tokens: bool,

    /// Largest message accepted, in bytes after reassembly; larger ones
    /// close the connection with 1009.
    #[arg(long, default_value_t = 65_536, value_parser = clap::value_parser!(u64).range(64..=16 << 20))]
    pub max_message_bytes: u64,

    /// Most messages queued for one connection; past it the connection is
    /// closed as a slow consumer (1008).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub outbox_messages: u64,

    /// Most bytes queued for one connection (the raw JSON of the payloads
    /// and device_info it waits to send); past it the connection is closed
    /// as a slow consumer (1008).
    #[arg(long, default_value_t = 1 << 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub outbox_bytes: u64,

    /// Time a new connection has to send `register` or `connect` (also the
    /// limit for the TLS handshake, an HTTP request's head, and its body
    /// once the head is in: 408 past it), e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// How often every websocket is pinged.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub ping_interval: Duration,

    /// A websocket silent this long (no frame, no pong) is closed with 1008.
    #[arg(long, default_value = "45s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// How long to wait for a peer's reply to a close frame.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub close_timeout: Duration,

    /// Most websocket connections at once; more are refused with HTTP 503.
    /// Default: 90% of the open-file limit, at least 64 files spare.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: Option<u64>,

    /// Most websocket connections at once from one IP address; more are
    /// refused with HTTP 429. 0 (default) is no limit, since a server behind
    /// a proxy sees every peer at one address.
    #[arg(long, default_value_t = 0)]
    pub max_connections_per_ip: u64,

    /// Most plain HTTP connections at once (every connection until it
    /// upgrades to a websocket: requests, polling, a TLS handshake); past
    /// it a new one is answered 503 and closed. Default: half of what the
    /// open-file limit leaves beside the default --max-connections, at
    /// least 16.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_http_connections: Option<u64>,

    /// A web page origin (`https://app.example`, `http://host:8080`) that
    /// may open this server's websockets and use its polling endpoints
    /// besides the server's own pages; repeatable, or `*` for any. A
    /// request with another Origin gets 403; one without (a device, a
    /// CLI) is not a page and passes. Also SIGNALING_ALLOWED_ORIGINS,
    /// comma-separated.
    #[arg(
        long = "allowed-origin",
        value_name = "ORIGIN",
        env = "SIGNALING_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,

    /// A reverse proxy (an address or a network: 10.0.0.5, 10.0.0.0/8,
    /// fd00::/8) whose `Forwarded` or `X-Forwarded-For` names the client;
    /// repeatable. That address then counts against
    /// --max-connections-per-ip and is the peer in every log line. From
    /// any other peer the headers are ignored. Also
    /// SIGNALING_TRUSTED_PROXIES, comma-separated.
    #[arg(
        long = "trusted-proxy",
        value_name = "CIDR",
        env = "SIGNALING_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<String>,

    /// Every TCP connection starts with a PROXY protocol header, version 1
    /// or 2 (HAProxy's send-proxy, an AWS NLB's proxy protocol v2), before
    /// TLS or HTTP; a connection without a valid one within
    /// --handshake-timeout is closed. The header names the client only
    /// when the connection comes from a --trusted-proxy, which this needs
    /// (0.0.0.0/0 and ::/0 believe every peer).
    #[arg(long, env = "SIGNALING_PROXY_PROTOCOL", requires = "trusted_proxies")]
    pub proxy_protocol: bool,

    /// How long shutdown (SIGINT, SIGTERM) waits for connections to close.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// On SIGTERM (or SIGINT), first drain for this long: /readyz answers
    /// 503, new websockets and polling clients are refused with 503
    /// `Server shutting down`, and the sessions open go on; then every
    /// socket is closed with 1001 and --shutdown-grace begins. A second
    /// signal ends the drain at once. 0s to 1h.
    #[arg(long, env = "SIGNALING_DRAIN_PERIOD", default_value = "0s", value_parser = parse_duration)]
    pub drain_period: Duration,

    /// How long a session whose connection dropped (no close frame, 1001,
    /// or silent past --idle-timeout) is held for its peer to come back
    /// with its resume token: its messages are kept, and nothing is
    /// announced to the other side until this has passed. 0s turns resume
    /// off (a dropped connection ends its session at once); at most 1h.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub resume_window: Duration,

    /// Most messages per second one connection may send, on average; past
    /// it the connection gets `Rate limit exceeded` and close 1008. 0 turns
    /// the limit off.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub rate_limit: u32,

    /// Messages one connection may send at once before --rate-limit
    /// applies.
    #[arg(long, default_value_t = 20_000, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_burst: u32,

    /// A polling client (POST /connect, /forward, /poll_messages) that
    /// makes no request for this long is dropped, and its device told.
    /// Cuttlefish's clients wait up to 60 s between polls, so keep it
    /// above that; the default is three such waits.
    #[arg(long, default_value = "3m", value_parser = parse_duration)]
    pub poll_timeout: Duration,

    /// Initial read buffer of each websocket, in bytes; it grows for larger
    /// frames. Small keeps idle connections small.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(256..))]
    pub read_buffer_bytes: u64,

    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// The longest `--drain-period`.
const MAX_DRAIN_PERIOD: Duration = Duration::from_secs(3600);

/// The longest `--token-secret-grace`.
const MAX_TOKEN_SECRET_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);

/// `signaling-server token`: mints a signed token and prints it.
#[derive(Debug, Parser)]
#[command(name = "signaling-server token", version = crate::VERSION)]
pub struct TokenCli {
    /// The file with the server's --token-secret-file secret.
    #[arg(long, env = "SIGNALING_TOKEN_SECRET_FILE", value_name = "FILE")]
    pub token_secret_file: PathBuf,

    /// Who the token is for: a device registers, a client connects.
    #[arg(long, value_enum)]
    pub role: crate::auth::Role,

    /// A device id the token covers: exact, or a prefix ending in `*`
    /// (`lab-*`; `*` alone is every device). Repeatable; at least one.
    #[arg(long = "device", value_name = "ID", required = true)]
    pub devices: Vec<String>,

    /// How long the token is valid, from now (1m to 365d).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub ttl: Duration,

    /// Not valid until this long from now.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub not_before: Option<Duration>,
}

/// The longest `--ttl` of a minted token.
const MAX_TOKEN_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

impl TokenCli {
    /// The token, signed.
    pub fn mint(&self) -> Result<String, String> {
        if !(Duration::from_secs(60)..=MAX_TOKEN_TTL).contains(&self.ttl) {
            return Err(format!("--ttl {:?} must be from 1m to 365d", self.ttl));
        }
        for device in &self.devices {
            let id = device.strip_suffix('*').unwrap_or(device);
            if device.is_empty() || (!id.is_empty() && protocol::validate_device_id(id).is_err()) {
                return Err(format!(
                    "--device {device:?} is not a device id, nor a prefix of one ending in *"
                ));
            }
        }
        let (secret, _) =
            crate::auth::read_token_secret(&self.token_secret_file).map_err(|e| e.to_string())?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        let claims = crate::auth::Claims {
            role: self.role,
            devices: self.devices.clone(),
            exp: now + self.ttl.as_secs(),
            nbf: self.not_before.map(|after| now + after.as_secs()),
            iat: Some(now),
        };
        crate::auth::mint(&secret, &claims).map_err(|e| e.to_string())
    }
}

/// What `GET /devices` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum DevicesList {
    /// `["id", …]`, sorted: the reference server's answer.
    #[default]
    Ids,
    /// `[{"device_id", "group_name", "adb_port"}, …]`: the Go operator's.
    Descriptors,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// `--listen`: an IP address and a port; `localhost` is 127.0.0.1 (no
/// other name is looked up: the address a server binds should not hang on
/// a resolver).
fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    if let Ok(address) = text.parse::<SocketAddr>() {
        return Ok(address);
    }
    let hint = "write ADDR:PORT, e.g. 127.0.0.1:8443, [::1]:8443 or 0.0.0.0:8443";
    if let Some(port) = text.strip_prefix("localhost:") {
        return port
            .parse::<u16>()
            .map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
            .map_err(|_| format!("{port:?} is not a port; {hint}"));
    }
    if text.parse::<std::net::IpAddr>().is_ok() || text == "localhost" {
        return Err(format!("no port; {hint}"));
    }
    Err(format!(
        "not an IP address and a port; {hint} (names other than localhost are not looked up)"
    ))
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (write e.g. 10s, 500ms, 2m)"))
}

/// File permission bits in octal, as chmod takes them (e.g. 770 or 0660).
fn parse_mode(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text, 8)
        .ok()
        .filter(|mode| *mode <= 0o7777)
        .ok_or_else(|| format!("{text:?} is not a file mode in octal (write e.g. 770 or 0660)"))
}

/// A setting that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(
        "--device-socket-mode, --device-socket-owner, --device-socket-group and --device-socket-allow-uid need --device-socket PATH (or --socket_path, or --control-socket)"
    )]
    SocketSettingsWithoutSocket,
    #[error(
        "refusing to serve plain ws:// on the non-loopback address {0}: give --tls-cert and \
         --tls-key (or --tls-self-signed), or --allow-insecure if a TLS proxy is in front"
    )]
    InsecureListen(SocketAddr),
    #[error("{0}")]
    IceServers(#[from] crate::ice::IceServersError),
    #[error("--idle-timeout ({idle:?}) must be longer than --ping-interval ({ping:?})")]
    IdleShorterThanPing { idle: Duration, ping: Duration },
    #[error(
        "--use_secure_http=true needs a certificate: --certs_dir DIR (holding server.crt and \
         server.key), --tls-cert and --tls-key, or --tls-self-signed"
    )]
    SecureWithoutCertificate,
    #[error("--use_secure_http=false contradicts --tls-cert or --tls-self-signed")]
    PlainWithCertificate,
    #[error("--webui_url {0}")]
    WebUiUrl(String),
    #[error("--assets-dir {0} is not a directory")]
    AssetsDir(PathBuf),
    #[error("--redis {url}: {why}")]
    RedisUrl { url: String, why: String },
    #[error("--redis-lease {0:?} must be from 300ms to 1h")]
    RedisLease(Duration),
    #[error("--redis-queue-bytes {0} must be at least 65536")]
    RedisQueueBytes(u64),
    #[error("--turn-url {url}: {why}")]
    TurnUrl { url: String, why: &'static str },
    #[error(
        "--turn-url needs the secret it shares with the TURN server: --turn-secret-file FILE \
         (or SIGNALING_TURN_SECRET_FILE), or SIGNALING_TURN_SECRET"
    )]
    TurnWithoutSecret,
    #[error("a TURN secret without --turn-url: give the TURN server's URL")]
    TurnSecretWithoutUrl,
    #[error("--turn-ttl {0:?} must be from 1m to 7d")]
    TurnTtl(Duration),
    #[error("--drain-period {0:?} must be at most 1h")]
    DrainPeriod(Duration),
    #[error("--resume-window {0:?} must be at most 1h")]
    ResumeWindow(Duration),
    #[error("--token-secret-grace {0:?} must be at most 7d")]
    TokenSecretGrace(Duration),
    #[error("{0}")]
    Origin(#[from] crate::origin::OriginError),
    #[error("{0}")]
    Proxy(#[from] crate::proxy::ProxyError),
    #[error("{0}")]
    Tls(#[from] tls::TlsError),
}

/// What the binary should tell its user once the config is built.
#[derive(Debug, Default)]
pub struct Notes {
    /// Where a self-signed certificate was written, and its fingerprint.
    pub self_signed: Option<tls::SelfSigned>,
    /// Settings that start but will surprise someone, said once at start.
    pub warnings: Vec<String>,
}

impl Cli {
    /// The address to listen on: --listen, or its parts from the reference
    /// server's and the Go operator's flags.
    pub fn listen_address(&self) -> SocketAddr {
        let ip = self.listen_addr.unwrap_or(self.listen.ip());
        let port = self
            .http_port
            .or(self.http_server_port)
            .unwrap_or(self.listen.port());
        SocketAddr::new(ip, port)
    }

    /// Where `--https_port` listens, and its TLS, if it is given.
    pub fn https_listen(
        &self,
    ) -> Result<Option<(SocketAddr, std::sync::Arc<rustls::ServerConfig>)>, CliError> {
        let Some(port) = self.https_port else {
            return Ok(None);
        };
        let tls = tls::load_pem(
            &self.tls_cert_dir.join("cert.pem"),
            &self.tls_cert_dir.join("key.pem"),
        )?;
        Ok(Some((
            SocketAddr::new(self.listen_address().ip(), port),
            tls,
        )))
    }

    /// Whether a flag only the Go operator has was given.
    fn go_operator_flags(&self) -> bool {
        self.https_port.is_some()
            || self.webui_url.is_some()
            || self.socket_path.is_some()
            || self.control_socket_path.is_some()
            || self.http_port.is_some()
            || self.listen_addr.is_some()
    }

    /// Builds the server's configuration, reading the files named.
    pub fn into_config(self) -> Result<(ServerConfig, Notes), CliError> {
        let mut notes = Notes::default();
        let go_flags = self.go_operator_flags();
        let socket_given = [
            &self.device_socket,
            &self.socket_path,
            &self.control_socket,
            &self.control_socket_path,
        ]
        .iter()
        .any(|path| path.is_some());
        let socket_settings = self.device_socket_owner.is_some()
            || self.device_socket_group.is_some()
            || !self.device_socket_allowed_uids.is_empty()
            || self.device_socket_mode != DeviceSocketConfig::DEFAULT_MODE;
        if socket_settings && !socket_given {
            return Err(CliError::SocketSettingsWithoutSocket);
        }
        let socket_at = |path: PathBuf| DeviceSocketConfig {
            path,
            mode: self.device_socket_mode,
            owner: self.device_socket_owner,
            group: self.device_socket_group,
            allowed_uids: (!self.device_socket_allowed_uids.is_empty())
                .then(|| self.device_socket_allowed_uids.clone()),
        };
        let device_socket = self
            .device_socket
            .clone()
            .or(self.socket_path.clone())
            .map(socket_at);
        let control_socket = self
            .control_socket
            .clone()
            .or(self.control_socket_path.clone())
            .map(socket_at);
        let listen = self.listen_address();
        let secure = if self.nouse_secure_http {
            Some(false)
        } else {
            self.use_secure_http
        };
        let explicit_tls = self.tls_cert.is_some() || self.tls_self_signed;
        if secure == Some(false) && explicit_tls {
            return Err(CliError::PlainWithCertificate);
        }
        // The reference's certificate folder turns TLS on, as the
        // reference's default (--use_secure_http=true) does, unless TLS
        // was turned off.
        let certs_dir = self.certs_dir.as_ref().filter(|_| secure != Some(false));
        let mut served_cert = None;
        let tls = match (&self.tls_cert, &self.tls_key, certs_dir) {
            (Some(cert), Some(key), _) => {
                served_cert = Some(cert.clone());
                Some(tls::load_pem(cert, key)?)
            }
            (_, _, Some(dir)) => {
                served_cert = Some(dir.join("server.crt"));
                Some(tls::load_pem(
                    &dir.join("server.crt"),
                    &dir.join("server.key"),
                )?)
            }
            _ if self.tls_self_signed => {
                let generated = tls::self_signed(&self.tls_self_signed_dir, listen.ip())?;
                let config = generated.config.clone();
                notes.self_signed = Some(generated);
                Some(config)
            }
            _ => None,
        };
        if let Some(warning) = served_cert.as_deref().and_then(tls::ca_certificate_warning) {
            notes.warnings.push(warning);
        }
        if secure == Some(true) && tls.is_none() {
            return Err(CliError::SecureWithoutCertificate);
        }
        if tls.is_none() && !listen.ip().is_loopback() && !self.allow_insecure {
            return Err(CliError::InsecureListen(listen));
        }
        let webui_url = self
            .webui_url
            .as_deref()
            .map(crate::config::WebUiUrl::parse)
            .transpose()
            .map_err(CliError::WebUiUrl)?;
        if let Some(dir) = &self.assets_dir
            && !dir.is_dir()
        {
            return Err(CliError::AssetsDir(dir.clone()));
        }
        if self.poll_timeout <= CUTTLEFISH_POLL_BACKOFF_CAP {
            notes.warnings.push(format!(
                "--poll-timeout {} is not longer than the {} Cuttlefish's polling clients may wait between polls; they will be dropped while idle",
                humantime::format_duration(self.poll_timeout),
                humantime::format_duration(CUTTLEFISH_POLL_BACKOFF_CAP),
            ));
        }
        if self.idle_timeout <= self.ping_interval {
            return Err(CliError::IdleShorterThanPing {
                idle: self.idle_timeout,
                ping: self.ping_interval,
            });
        }

        let ice_servers: Vec<IceServer> = self
            .stun_servers
            .iter()
            .map(|url| IceServer {
                urls: vec![with_scheme(url)],
                username: None,
                credential: None,
            })
            .collect();
        // Read here too, so that a bad file is said before anything starts.
        if let Some(path) = &self.ice_servers {
            crate::ice::read(path)?;
        }

        let to_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        let turn = self.turn_config()?;
        if self.drain_period > MAX_DRAIN_PERIOD {
            return Err(CliError::DrainPeriod(self.drain_period));
        }
        if self.resume_window > crate::config::MAX_RESUME_WINDOW {
            return Err(CliError::ResumeWindow(self.resume_window));
        }
        if self.token_secret_grace > MAX_TOKEN_SECRET_GRACE {
            return Err(CliError::TokenSecretGrace(self.token_secret_grace));
        }
        let redis = match self.redis {
            None => None,
            Some(url) => {
                crate::cluster::parse_url(&url).map_err(|e| CliError::RedisUrl {
                    url: url.clone(),
                    why: e.to_string(),
                })?;
                if !(Duration::from_millis(300)..=Duration::from_secs(3600))
                    .contains(&self.redis_lease)
                {
                    return Err(CliError::RedisLease(self.redis_lease));
                }
                if self.redis_queue_bytes < 65_536 {
                    return Err(CliError::RedisQueueBytes(self.redis_queue_bytes));
                }
                Some(crate::cluster::RedisConfig {
                    url,
                    lease: self.redis_lease,
                    queue_bytes: to_usize(self.redis_queue_bytes),
                })
            }
        };
        let allowed_origins = crate::origin::AllowedOrigins::parse(&self.allowed_origins)?;
        let trusted_proxies = crate::proxy::TrustedProxies::parse(&self.trusted_proxies)?;
        let config = ServerConfig {
            redis,
            turn,
            allowed_origins,
            trusted_proxies,
            proxy_protocol: self.proxy_protocol,
            ice_servers,
            ice_servers_file: self.ice_servers,
            client_wait: Duration::from_secs(self.client_wait_secs),
            device_token: self.device_token.filter(|t| !t.is_empty()),
            client_token: self.client_token.filter(|t| !t.is_empty()),
            device_token_file: self.device_token_file,
            client_token_file: self.client_token_file,
            token_secret_file: self.token_secret_file,
            token_secret_grace: self.token_secret_grace,
            sessions_outlive_tokens: self.sessions_outlive_tokens,
            max_message_bytes: to_usize(self.max_message_bytes),
            outbox_messages: to_usize(self.outbox_messages),
            outbox_bytes: to_usize(self.outbox_bytes),
            handshake_timeout: self.handshake_timeout,
            ping_interval: self.ping_interval,
            idle_timeout: self.idle_timeout,
            close_timeout: self.close_timeout,
            max_connections: self
                .max_connections
                .map_or_else(default_max_connections, to_usize),
            max_connections_per_ip: (self.max_connections_per_ip > 0)
                .then(|| to_usize(self.max_connections_per_ip)),
            max_http_connections: self
                .max_http_connections
                .map_or_else(default_max_http_connections, to_usize),
            shutdown_grace: self.shutdown_grace,
            drain_period: self.drain_period,
            resume_window: self.resume_window,
            read_buffer_bytes: to_usize(self.read_buffer_bytes),
            assets_dir: self.assets_dir,
            webui_url,
            devices_list: self.devices_list.unwrap_or(if go_flags {
                DevicesList::Descriptors
            } else {
                DevicesList::Ids
            }),
            device_socket,
            control_socket,
            poll_timeout: self.poll_timeout,
            rate_limit: (self.rate_limit > 0).then_some(crate::RateLimit {
                per_second: self.rate_limit,
                burst: self.rate_burst,
            }),
            tls,
        };
        Ok((config, notes))
    }
}

impl Cli {
    /// `--turn-url` and its secret, checked.
    fn turn_config(&self) -> Result<Option<crate::turn::TurnConfig>, CliError> {
        use crate::turn::{Secret, SecretSource, TurnConfig};
        let from_env = std::env::var("SIGNALING_TURN_SECRET")
            .ok()
            .filter(|secret| !secret.trim().is_empty());
        let secret = match (&self.turn_secret_file, from_env) {
            (Some(path), _) => Some(SecretSource::File(path.clone())),
            (None, Some(secret)) => {
                Some(SecretSource::Value(Secret::new(secret.trim().as_bytes())))
            }
            (None, None) => None,
        };
        if self.turn_urls.is_empty() {
            return match secret {
                Some(_) => Err(CliError::TurnSecretWithoutUrl),
                None => Ok(None),
            };
        }
        for url in &self.turn_urls {
            check_turn_url(url).map_err(|why| CliError::TurnUrl {
                url: url.clone(),
                why,
            })?;
        }
        let secret = secret.ok_or(CliError::TurnWithoutSecret)?;
        if !(TurnConfig::MIN_TTL..=TurnConfig::MAX_TTL).contains(&self.turn_ttl) {
            return Err(CliError::TurnTtl(self.turn_ttl));
        }
        Ok(Some(TurnConfig {
            urls: self.turn_urls.clone(),
            secret,
            ttl: self.turn_ttl,
            grace: self.turn_secret_grace,
        }))
    }
}

/// `turn:` or `turns:`, a host, an optional port, and at most a
/// `transport` of `udp` or `tcp` (RFC 7065).
fn check_turn_url(url: &str) -> Result<(), &'static str> {
    let rest = url
        .strip_prefix("turn:")
        .or_else(|| url.strip_prefix("turns:"))
        .ok_or("not a turn: or turns: URL")?;
    let (authority, query) = match rest.split_once('?') {
        Some((authority, query)) => (authority, Some(query)),
        None => (rest, None),
    };
    if let Some(query) = query
        && !matches!(query, "transport=udp" | "transport=tcp")
    {
        return Err("the only query it may have is ?transport=udp or ?transport=tcp");
    }
    // A bracketed IPv6 address, or a host, then an optional :port.
    let (host, port) = match authority.strip_prefix('[') {
        Some(bracketed) => {
            let (host, after) = bracketed.split_once(']').ok_or("an unclosed [")?;
            let port = match after {
                "" => None,
                after => Some(after.strip_prefix(':').ok_or("junk after ]")?),
            };
            (host, port)
        }
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if host.is_empty() || host.contains(['/', '@', ' ']) {
        return Err("no host, or not a host");
    }
    if let Some(port) = port
        && !port.parse::<u16>().is_ok_and(|port| port > 0)
    {
        return Err("the port must be a number from 1 to 65535");
    }
    Ok(())
}

/// A STUN or TURN URL as given, or `stun:` and the given `host:port` (the
/// reference's --stun_server takes a bare `host:port`).
fn with_scheme(url: &str) -> String {
    const SCHEMES: [&str; 4] = ["stun:", "stuns:", "turn:", "turns:"];
    if SCHEMES.iter().any(|scheme| url.starts_with(scheme)) {
        url.to_owned()
    } else {
        format!("stun:{url}")
    }
}
