//! The server's settings, as the library takes them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::http::uri::{Authority, Uri};
use protocol::IceServer;

use crate::core::{OutboxLimits, RateLimit, Settings};

/// The longest wait of Cuttlefish's polling clients between two polls: they
/// poll 1 s after a poll that brought messages, else twice the last wait,
/// up to this.
pub const CUTTLEFISH_POLL_BACKOFF_CAP: Duration = Duration::from_secs(60);

/// `--poll-timeout`'s default: three of Cuttlefish's longest waits, so a
/// client whose timer a browser delays (background tabs get their timers
/// batched) is not dropped, while one that is gone is dropped within three
/// minutes.
pub const DEFAULT_POLL_TIMEOUT: Duration = Duration::from_secs(180);

/// `--resume-window`'s default: what spreed holds a session for, long
/// enough for a phone to change networks or a laptop to wake.
pub const DEFAULT_RESUME_WINDOW: Duration = Duration::from_secs(30);

/// The longest `--resume-window`: a held session keeps its device id and
/// its client's place, and its peers hear nothing meanwhile.
pub const MAX_RESUME_WINDOW: Duration = Duration::from_secs(60 * 60);

/// The device socket: a unix `SOCK_SEQPACKET` socket on which devices
/// register as Cuttlefish's devices do with its Go operator, one JSON
/// message per packet (PROTOCOL.md, "The device socket").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSocketConfig {
    /// Where the socket is made. A socket left there by a server that is
    /// gone is replaced; one a live server answers on is an error.
    pub path: PathBuf,
    /// The socket file's permission bits; who may connect is who may write
    /// it.
    pub mode: u32,
    /// The socket file's owner and group, if they are to be changed.
    pub owner: Option<u32>,
    pub group: Option<u32>,
    /// Only processes of these users may register (their uid, from
    /// `SO_PEERCRED`); `None` lets in whoever can open the socket.
    pub allowed_uids: Option<Vec<u32>>,
}

impl DeviceSocketConfig {
    /// The Go operator's mode: its owner and group may connect.
    pub const DEFAULT_MODE: u32 = 0o770;

    /// A socket at `path` with the Go operator's mode and no other checks.
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            mode: Self::DEFAULT_MODE,
            owner: None,
            group: None,
            allowed_uids: None,
        }
    }
}

/// Everything [`crate::run`] needs to know. [`ServerConfig::default`] gives
/// the documented defaults; the binary fills it from its flags.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `ice_servers` in every `config` message.
    pub ice_servers: Vec<IceServer>,
    /// More entries, after those, from a file read again on SIGHUP
    /// (`--ice-servers`).
    pub ice_servers_file: Option<PathBuf>,
    /// How long a client may wait for its device to register (the
    /// alternative flow). Zero keeps the reference flow: unknown device is
    /// an error at once.
    pub client_wait: Duration,
    /// The token devices must present, if any.
    pub device_token: Option<String>,
    /// The token clients (and the client-facing HTTP endpoints) need, if any.
    pub client_token: Option<String>,
    /// The same tokens in files, read again on SIGHUP (in place of the
    /// values above).
    pub device_token_file: Option<PathBuf>,
    pub client_token_file: Option<PathBuf>,
    /// The HS256 secret of signed, scoped tokens (PROTOCOL.md, "Tokens").
    pub token_secret_file: Option<PathBuf>,
    /// After the token secret changes, how long the one before still
    /// verifies.
    pub token_secret_grace: Duration,
    /// Sessions go on past their token's expiry instead of ending there.
    pub sessions_outlive_tokens: bool,
    /// The largest message accepted, in bytes after reassembly.
    pub max_message_bytes: usize,
    /// The most messages queued for one connection before it counts as a
    /// slow consumer.
    pub outbox_messages: usize,
    /// The most bytes queued for one connection before it counts as a slow
    /// consumer: the raw JSON of the payloads and device_info queued.
    pub outbox_bytes: usize,
    /// How long a new connection has to `register` or `connect`; also the
    /// limit for a TLS handshake and an HTTP request head.
    pub handshake_timeout: Duration,
    /// How often the server pings every websocket.
    pub ping_interval: Duration,
    /// A websocket silent for this long (no frame, no pong) is closed.
    pub idle_timeout: Duration,
    /// How long to wait for the peer's reply to a close frame.
    pub close_timeout: Duration,
    /// The most websocket connections open at once.
    pub max_connections: usize,
    /// The most websocket connections open at once from one IP address;
    /// `None` is no limit. It bounds plain HTTP connections from one
    /// address too, counted apart.
    pub max_connections_per_ip: Option<usize>,
    /// Which browser pages, besides the server's own, may open its
    /// websockets and use its polling endpoints (`--allowed-origin`).
    pub allowed_origins: crate::origin::AllowedOrigins,
    /// The reverse proxies whose `Forwarded` / `X-Forwarded-For` name the
    /// client (`--trusted-proxy`); from any other peer they are ignored.
    pub trusted_proxies: crate::proxy::TrustedProxies,
    /// Every TCP connection starts with a PROXY protocol header (v1 or
    /// v2); a trusted proxy's names the client (`--proxy-protocol`).
    pub proxy_protocol: bool,
    /// The most plain HTTP connections open at once: every connection,
    /// from its accept (and TLS handshake) until it upgrades to a
    /// websocket or ends.
    pub max_http_connections: usize,
    /// How long shutdown waits for connections to close.
    pub shutdown_grace: Duration,
    /// After SIGTERM, how long the server goes on serving its sessions
    /// while `/readyz` answers 503 and new connections are refused,
    /// before it closes them (`--drain-period`).
    pub drain_period: Duration,
    /// How long a session whose connection dropped is held for its peer
    /// to resume it with its token (`--resume-window`); zero holds none.
    pub resume_window: Duration,
    /// The initial read buffer of each websocket, in bytes, kept for the
    /// connection's life; it grows for a larger frame. Reads go through a
    /// per-thread read-ahead buffer (`read_ahead.rs`), so a small one costs
    /// no extra syscalls: 256 B and 2 KiB measured the same CPU per 4 KiB
    /// message, and each 256 B more is 256 B more per idle connection.
    pub read_buffer_bytes: usize,
    /// The most messages one connection may send (PROTOCOL.md rows D17, C15);
    /// `None` is no limit.
    pub rate_limit: Option<RateLimit>,
    /// A polling client (`POST /connect`) that makes no request for this
    /// long is dropped, and its device told. Longer than
    /// [`CUTTLEFISH_POLL_BACKOFF_CAP`], or Cuttlefish's own clients are
    /// dropped while they wait.
    pub poll_timeout: Duration,
    /// Devices may also register on this unix socket (`--device-socket`).
    pub device_socket: Option<DeviceSocketConfig>,
    /// The Go operator's control socket, for pre-registration
    /// (`--control-socket`).
    pub control_socket: Option<DeviceSocketConfig>,
    /// What `GET /devices` answers: ids, or the Go operator's descriptors.
    pub devices_list: crate::cli::DevicesList,
    /// Serve the files of this directory on every other GET path (the
    /// reference's `--assets_dir`).
    pub assets_dir: Option<PathBuf>,
    /// Proxy every path no route takes to this web UI (the Go operator's
    /// `--webui_url`); it then stands in for `assets_dir` and the built-in
    /// pages.
    pub webui_url: Option<WebUiUrl>,
    /// Serve TLS with this configuration.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Share devices with other instances through this Redis.
    pub redis: Option<crate::cluster::RedisConfig>,
    /// Give every `config` its own TURN credentials.
    pub turn: Option<crate::turn::TurnConfig>,
}

impl ServerConfig {
    /// The part of the settings the core decides with.
    /// The credentials' settings: each token from its file, else its value.
    pub fn auth_config(&self) -> crate::auth::AuthConfig {
        use crate::secret::{Secret, SecretSource};
        let source = |file: &Option<PathBuf>, value: &Option<String>| {
            file.clone().map(SecretSource::File).or_else(|| {
                value
                    .as_ref()
                    .map(|value| SecretSource::Value(Secret::new(value.as_bytes())))
            })
        };
        crate::auth::AuthConfig {
            device_token: source(&self.device_token_file, &self.device_token),
            client_token: source(&self.client_token_file, &self.client_token),
            token_secret: self.token_secret_file.clone(),
            token_secret_grace: self.token_secret_grace,
            sessions_outlive_tokens: self.sessions_outlive_tokens,
        }
    }

    pub fn core_settings(&self) -> Settings {
        Settings {
            ice_servers: self.ice_servers.clone(),
            // The issuer reads the secret: `Server::bind` sets it.
            turn: None,
            client_wait: self.client_wait,
            handshake_timeout: self.handshake_timeout,
            outbox: OutboxLimits {
                max_messages: self.outbox_messages,
                max_bytes: self.outbox_bytes,
            },
            rate_limit: self.rate_limit.filter(|limit| limit.per_second > 0),
            max_message_bytes: self.max_message_bytes,
            resume_window: self.resume_window,
            random: Arc::new(crate::random::SystemRandom),
        }
    }
}

/// The default `--max-connections` when the open-file limit is unknown.
pub const FALLBACK_MAX_CONNECTIONS: usize = 1024;

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            ice_servers: Vec::new(),
            ice_servers_file: None,
            client_wait: Duration::ZERO,
            device_token: None,
            client_token: None,
            device_token_file: None,
            client_token_file: None,
            token_secret_file: None,
            token_secret_grace: Duration::ZERO,
            sessions_outlive_tokens: false,
            max_message_bytes: 65_536,
            outbox_messages: 1024,
            outbox_bytes: 1 << 20,
            handshake_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(45),
            close_timeout: Duration::from_secs(2),
            max_connections: default_max_connections(),
            max_connections_per_ip: None,
            max_http_connections: default_max_http_connections(),
            allowed_origins: crate::origin::AllowedOrigins::default(),
            trusted_proxies: crate::proxy::TrustedProxies::default(),
            proxy_protocol: false,
            shutdown_grace: Duration::from_secs(10),
            drain_period: Duration::ZERO,
            resume_window: DEFAULT_RESUME_WINDOW,
            read_buffer_bytes: 256,
            // High enough that no real handshake (tens of messages) meets
            // it: a burst of 20,000, then 1,000 a second.
            rate_limit: Some(RateLimit {
                per_second: 1000,
                burst: 20_000,
            }),
            assets_dir: None,
            webui_url: None,
            device_socket: None,
            control_socket: None,
            devices_list: crate::cli::DevicesList::Ids,
            poll_timeout: DEFAULT_POLL_TIMEOUT,
            tls: None,
            redis: None,
            turn: None,
        }
    }
}

/// The open-file limit less headroom for the listener, plain HTTP requests,
/// log files and refusals: 90% of the limit, and at least 64 files spare.
pub fn default_max_connections() -> usize {
    match open_file_limit() {
        Some(limit) => {
            let limit = usize::try_from(limit).unwrap_or(usize::MAX);
            (limit / 10 * 9).min(limit.saturating_sub(64)).max(1)
        }
        None => FALLBACK_MAX_CONNECTIONS,
    }
}

/// The default `--max-http-connections` when the open-file limit is
/// unknown.
pub const FALLBACK_MAX_HTTP_CONNECTIONS: usize = 256;

/// Half of what the open-file limit leaves beside the default
/// `--max-connections` (the other half is for the listeners, files and
/// refusals), and at least 16.
pub fn default_max_http_connections() -> usize {
    match open_file_limit() {
        Some(limit) => {
            let limit = usize::try_from(limit).unwrap_or(usize::MAX);
            (limit.saturating_sub(default_max_connections()) / 2).max(16)
        }
        None => FALLBACK_MAX_HTTP_CONNECTIONS,
    }
}

/// The soft limit on open files, from /proc (Linux only).
pub(crate) fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Where `--webui_url` points: an `http://` server, and the path its pages
/// sit under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebUiUrl {
    authority: Authority,
    /// The URL's path without its trailing `/`: `""` for the root.
    prefix: String,
}

impl WebUiUrl {
    /// Reads `http://HOST[:PORT][/PATH]`; no query, fragment or user.
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("{url} is not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => {
                return Err(format!(
                    "{url}: only http:// web UIs are proxied, not {other}://"
                ));
            }
            None => return Err(format!("{url}: give it as http://HOST[:PORT][/PATH]")),
        }
        let authority = uri
            .authority()
            .filter(|a| !a.host().is_empty())
            .ok_or_else(|| format!("{url}: no host"))?
            .clone();
        if authority.as_str().contains('@') {
            return Err(format!("{url}: a user in the URL is not supported"));
        }
        if uri.query().is_some() || url.contains('#') {
            return Err(format!("{url}: a query or fragment is not supported"));
        }
        Ok(Self {
            authority,
            prefix: uri.path().trim_end_matches('/').to_owned(),
        })
    }

    pub(crate) fn host_and_port(&self) -> (&str, u16) {
        let host = self.authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        (host, self.authority.port_u16().unwrap_or(80))
    }
}

impl WebUiUrl {
    pub(crate) fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The path the pages sit under, without its trailing `/`.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }
}

impl std::fmt::Display for WebUiUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}{}/", self.authority, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn web_ui_urls_are_read_with_their_path_and_port() {
        let url = WebUiUrl::parse("http://127.0.0.1:8071/ui/").unwrap();
        assert_eq!(url.host_and_port(), ("127.0.0.1", 8071));
        assert_eq!(url.prefix, "/ui");
        assert_eq!(url.to_string(), "http://127.0.0.1:8071/ui/");
        let url = WebUiUrl::parse("http://[::1]").unwrap();
        assert_eq!(url.host_and_port(), ("::1", 80));
        assert_eq!(url.prefix, "");
    }

    #[test]
    fn web_ui_urls_that_cannot_be_proxied_say_why() {
        for (url, why) in [
            ("https://127.0.0.1:8071", "only http://"),
            ("127.0.0.1:8071", "http://HOST"),
            ("http://127.0.0.1:8071/?a=b", "query"),
            ("http://u:p@127.0.0.1:8071/", "user"),
            ("http://", "URL"),
        ] {
            let error = WebUiUrl::parse(url).unwrap_err();
            assert!(error.contains(why), "{url}: {error}");
        }
    }
}
