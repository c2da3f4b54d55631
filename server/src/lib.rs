//! A WebRTC signaling server for the Cuttlefish signaling protocol.
//!
//! Devices register on `/register_device`, clients connect to them on
//! `/connect_client`, and the server relays their `forward` messages until
//! they have a direct WebRTC connection. `PROTOCOL.md` at the repository root
//! describes the protocol and every decision of behaviour.
//!
//! The library is the whole server: [`run`] takes a bound listener, so tests
//! bind port 0 and run the real thing. The binary only parses flags.
//!
//! Layout: `core/` is every decision, with no I/O (its module doc says how
//! a message travels); the front doors around it own the transports:
//! `websocket/` (the seed's `/register_device` and `/connect_client`) and
//! `polling.rs` (the reference's HTTP polling flow), both behind `http.rs`
//! (routes and every refusal before an upgrade), and `device_socket.rs`
//! (devices on a unix `SOCK_SEQPACKET` socket, as Cuttlefish's Go operator
//! takes them). `lib.rs` accepts
//! connections, holds the server-wide state and shuts down.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::{debug, info, warn};

mod assets;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod core;
mod device_socket;
mod door;
mod encode;
mod files;
mod http;
pub mod ice;
mod limits;
pub mod metrics;
pub mod origin;
mod polling;
pub mod proxy;
pub mod proxy_protocol;
pub mod random;
pub mod secret;
pub mod tls;
pub mod turn;
mod web;
mod websocket;
mod webui;

#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod sim;
pub use crate::core::RateLimit;
pub use config::ServerConfig;
pub use device_socket::DeviceSocketError;

use crate::core::Core;
use crate::device_socket::SocketKind;
use crate::limits::Limiter;
use crate::metrics::Metrics;

/// The version and the git commit it was built from: `0.1.0 (abc123def456)`.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("SIGNALING_GIT_COMMIT"),
    ")"
);

/// The git commit the server was built from, or "unknown".
pub const GIT_COMMIT: &str = env!("SIGNALING_GIT_COMMIT");

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("listener: {0}")]
    Listener(#[from] std::io::Error),
    #[error("device socket {0}")]
    DeviceSocket(#[from] DeviceSocketError),
    #[error("--redis: {0}")]
    Redis(String),
    #[error("--turn-secret-file: {0}")]
    Turn(#[from] turn::TurnError),
    #[error("{0}")]
    Auth(#[from] auth::AuthError),
    #[error("{0}")]
    IceServers(#[from] ice::IceServersError),
}

/// The server-wide state, in one place: the core's (settings, registry,
/// metrics) and the front doors' (limits, websocket settings, shutdown, the
/// polling clients).
#[derive(Debug)]
pub(crate) struct ServerState {
    config: ServerConfig,
    core: Arc<Core>,
    /// The tokens and the token secret, read again on SIGHUP.
    auth: Arc<auth::Auth>,
    /// Websocket connections (and device socket ones).
    limiter: Arc<Limiter>,
    /// Plain HTTP connections, until they upgrade.
    http_limiter: Arc<Limiter>,
    ws_config: WebSocketConfig,
    /// Cancelled when the server shuts down; every connection watches it.
    shutdown: CancellationToken,
    /// Cancelled when the drain begins, before `shutdown`: new
    /// connections are refused, `/readyz` answers 503.
    draining: CancellationToken,
    /// Every connection task, so shutdown can wait for them.
    tracker: TaskTracker,
    /// The clients of the HTTP polling flow.
    polling: Arc<polling::Polling>,
}

/// Serves on `listener` until `shutdown` resolves, then closes every
/// websocket with 1001 and waits for them up to the grace period.
pub async fn run(
    listener: TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    Server::bind(listener, config)?.run(shutdown).await
}

/// A server with everything it listens on bound, not yet serving: binding
/// errors (a device socket in use) come before anything is served.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    /// More listeners, each with its TLS (the Go operator's `--https_port`
    /// beside its plain port).
    tls_listeners: Vec<(TcpListener, TlsListener)>,
    /// The device socket and the control socket, those configured.
    sockets: Vec<device_socket::DeviceSocket>,
    /// With `--redis`: the task that joins the other instances.
    adapter: Option<cluster::Adapter>,
    /// What is read again on SIGHUP and when its file changes.
    reloads: Reloads,
    /// SIGHUP, caught from `bind` on: before the banner, so a SIGHUP right
    /// after it cannot meet the signal's default action (the end).
    hangups: Option<tokio::signal::unix::Signal>,
    state: Arc<ServerState>,
}

/// A listener's TLS configuration.
#[derive(Clone)]
struct TlsListener(TlsAcceptor);

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsListener")
    }
}

impl Server {
    /// Binds the device socket, if configured, beside `listener`.
    pub fn bind(listener: TcpListener, config: ServerConfig) -> Result<Self, Error> {
        let device_socket = config
            .device_socket
            .as_ref()
            .map(|socket| device_socket::bind(socket, SocketKind::Devices))
            .transpose()?;
        let control_socket = config
            .control_socket
            .as_ref()
            .map(|socket| device_socket::bind(socket, SocketKind::Control))
            .transpose()?;
        let metrics = Arc::new(Metrics::new());
        let cluster = config
            .redis
            .as_ref()
            .map(|redis| Arc::new(core::cluster::Cluster::new(redis.queue_bytes)));
        let turn = config
            .turn
            .as_ref()
            .map(|turn| turn::Turn::load(turn).map(Arc::new))
            .transpose()?;
        let auth = Arc::new(auth::Auth::load(&config.auth_config())?);
        let mut settings = config.core_settings();
        let ice_file = match &config.ice_servers_file {
            Some(path) => {
                let (file, all) =
                    ice::IceServersFile::load(path.clone(), settings.ice_servers.clone())?;
                settings.ice_servers = all;
                Some(Arc::new(file))
            }
            None => None,
        };
        settings.turn = turn
            .clone()
            .map(|turn| turn as Arc<dyn core::TurnCredentials>);
        let core = Arc::new(Core::with_cluster(settings, metrics, cluster.clone()));
        let adapter = match (&config.redis, cluster) {
            (Some(redis), Some(cluster)) => Some(
                cluster::Adapter::new(core.clone(), cluster, redis.clone())
                    .map_err(|e| Error::Redis(e.to_string()))?,
            ),
            _ => None,
        };
        let state = Arc::new(ServerState {
            limiter: Arc::new(Limiter::new(
                config.max_connections,
                config.max_connections_per_ip,
            )),
            http_limiter: Arc::new(Limiter::new(
                config.max_http_connections,
                config.max_connections_per_ip,
            )),
            ws_config: websocket::websocket_config(&config),
            core,
            auth,
            config,
            shutdown: CancellationToken::new(),
            draining: CancellationToken::new(),
            tracker: TaskTracker::new(),
            polling: Arc::default(),
        });
        let hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(hangups) => Some(hangups),
            Err(e) => {
                warn!(error = %e, "no SIGHUP handler: certificates are not read again, the other settings' files only when they change");
                None
            }
        };
        Ok(Self {
            listener,
            tls_listeners: Vec::new(),
            sockets: device_socket.into_iter().chain(control_socket).collect(),
            adapter,
            reloads: Reloads {
                turn,
                auth: state.auth.clone(),
                ice: ice_file,
                core: state.core.clone(),
            },
            hangups,
            state,
        })
    }

    /// One line with the configuration in effect, for whoever reads the
    /// log later: where it listens, whether tokens are asked for, the
    /// limits (with what the defaults came to on this machine) and what a
    /// `config` hands out. No secret is in it.
    pub fn log_configuration(&self) {
        let config = &self.state.config;
        let auth = &self.state.auth;
        let listen = self
            .listener
            .local_addr()
            .map(|address| address.to_string())
            .unwrap_or_default();
        let tokens = |role| match (auth.required(role), auth.signed_tokens()) {
            (false, _) => "none",
            (true, true) => "signed or static",
            (true, false) => "static",
        };
        let duration = |d: std::time::Duration| humantime::format_duration(d).to_string();
        info!(
            listen,
            tls = config.tls.is_some(),
            also_tls_on = self.tls_listeners.len(),
            device_socket = config
                .device_socket
                .as_ref()
                .map(|socket| socket.path.display().to_string()),
            control_socket = config
                .control_socket
                .as_ref()
                .map(|socket| socket.path.display().to_string()),
            device_tokens = tokens(auth::Role::Device),
            client_tokens = tokens(auth::Role::Client),
            allowed_origins = if config.allowed_origins.any {
                "*".to_owned()
            } else {
                config.allowed_origins.listed.join(",")
            },
            trusted_proxies = config.trusted_proxies.len(),
            proxy_protocol = config.proxy_protocol,
            max_connections = config.max_connections,
            max_connections_per_ip = config.max_connections_per_ip.unwrap_or(0),
            max_http_connections = config.max_http_connections,
            max_message_bytes = config.max_message_bytes,
            outbox_messages = config.outbox_messages,
            outbox_bytes = config.outbox_bytes,
            rate_limit = config.rate_limit.map_or(0, |rate| rate.per_second),
            rate_burst = config.rate_limit.map_or(0, |rate| rate.burst),
            handshake_timeout = duration(config.handshake_timeout),
            idle_timeout = duration(config.idle_timeout),
            ping_interval = duration(config.ping_interval),
            poll_timeout = duration(config.poll_timeout),
            client_wait = duration(config.client_wait),
            drain_period = duration(config.drain_period),
            shutdown_grace = duration(config.shutdown_grace),
            ice_servers = self.state.core.config().ice_servers.len(),
            turn_urls = config.turn.as_ref().map_or(0, |turn| turn.urls.len()),
            redis = config
                .redis
                .as_ref()
                .map(|redis| cluster::redacted_url(&redis.url)),
            version = VERSION,
            "configuration"
        );
    }

    /// Serves on `listener` too, with TLS: the same endpoints on a second
    /// port (the Go operator's `--https_port` beside `--http_port`).
    pub fn with_tls_listener(
        mut self,
        listener: TcpListener,
        tls: Arc<rustls::ServerConfig>,
    ) -> Self {
        self.tls_listeners
            .push((listener, TlsListener(TlsAcceptor::from(tls))));
        self
    }

    /// Serves until `shutdown` resolves, then closes every connection
    /// (websockets with 1001) and waits for them up to the grace period.
    /// With a drain period, the closing waits that long first.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        self.run_until(shutdown, std::future::pending()).await
    }

    /// [`run`](Self::run), where `cut_short` ends the drain early (a
    /// second signal).
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()>,
        cut_short: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        let Self {
            listener,
            tls_listeners,
            sockets,
            adapter,
            reloads,
            hangups,
            state,
        } = self;
        state
            .tracker
            .spawn(watch_hangups(hangups, reloads, state.shutdown.clone()));
        let drain_state = state.clone();
        let main_tls = state.config.tls.clone().map(TlsAcceptor::from);
        let listeners = std::iter::once((listener, main_tls))
            .chain(tls_listeners.into_iter().map(|(l, tls)| (l, Some(tls.0))))
            .collect();
        let drained = async move {
            shutdown.await;
            drain(&drain_state, cut_short).await;
        };
        serve(listeners, sockets, adapter, state, drained).await
    }
}

/// How often the files of the settings (secrets, tokens, ICE servers) are
/// looked at for a change.
const SETTINGS_FILE_LOOK: std::time::Duration = std::time::Duration::from_secs(1);

/// The settings read again on SIGHUP and when their files change.
#[derive(Debug)]
struct Reloads {
    /// With `--turn-url`: the credentials' issuer and its secret.
    turn: Option<Arc<turn::Turn>>,
    /// The token secret and the static tokens in files.
    auth: Arc<auth::Auth>,
    /// `--ice-servers FILE`, whose entries go to `core`.
    ice: Option<Arc<ice::IceServersFile>>,
    core: Arc<Core>,
}

impl Reloads {
    fn any_file(&self) -> bool {
        self.turn.is_some() || self.auth.reads_files() || self.ice.is_some()
    }

    /// Reads again what changed (everything on SIGHUP), and says what it
    /// found; what cannot be read keeps what was in use.
    fn reload(&self, hangup: bool) {
        let why = if hangup { "SIGHUP" } else { "a file changed" };
        if hangup || self.auth.files_changed() {
            let reload = self.auth.reload(std::time::Instant::now());
            for what in &reload.changed {
                info!(
                    why,
                    "{what} read again: new connections are checked against it"
                );
            }
            for e in &reload.failed {
                warn!(why, error = %e, "could not be read again: what was in use stays");
            }
        }
        if let Some(file) = self.ice.as_ref().filter(|file| hangup || file.changed()) {
            let path = file.path().display().to_string();
            match file.reload() {
                Ok(all) => {
                    info!(why, %path, entries = all.len(), "ICE servers read again: every config from now on carries them");
                    self.core.set_ice_servers(all);
                }
                Err(e) => {
                    warn!(why, error = %e, "the ICE servers could not be read again: those in use stay");
                }
            }
        }
        if let Some(turn) = self
            .turn
            .as_ref()
            .filter(|turn| hangup || turn.file_changed())
        {
            match turn.reload(std::time::Instant::now()) {
                Ok(turn::Reloaded::Unchanged) => debug!(why, "TURN secret read again: unchanged"),
                Ok(turn::Reloaded::Now) => info!(why, "new TURN secret: it signs from now on"),
                Ok(turn::Reloaded::AfterGrace) => {
                    info!(
                        why,
                        "new TURN secret: it signs once the grace period is over"
                    );
                }
                Err(e) => {
                    warn!(why, error = %e, "the TURN secret could not be read again: the one before goes on signing")
                }
            }
        }
    }

    fn changed(&self) -> bool {
        self.auth.files_changed()
            || self.ice.as_ref().is_some_and(|file| file.changed())
            || self.turn.as_ref().is_some_and(|turn| turn.file_changed())
    }
}

/// SIGHUP reads the settings kept in files again, without dropping a
/// session: every certificate loaded from files (`--tls-cert`/`--tls-key`,
/// `--certs_dir`, `--tls_cert_dir`), the TURN secret, the token secret,
/// the static tokens in files and the ICE servers' file; all but the
/// certificates also when their files change. A reload that fails keeps
/// what was in use and says why. SIGHUP never ends the process (its
/// default action).
async fn watch_hangups(
    mut hangups: Option<tokio::signal::unix::Signal>,
    reloads: Reloads,
    shutdown: CancellationToken,
) {
    let mut look = tokio::time::interval(SETTINGS_FILE_LOOK);
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let watching = reloads.any_file();
    loop {
        let hangup = tokio::select! {
            () = shutdown.cancelled() => return,
            Some(()) = async {
                match &mut hangups {
                    Some(hangups) => hangups.recv().await,
                    None => std::future::pending().await,
                }
            } => true,
            _ = look.tick(), if watching => {
                if !reloads.changed() {
                    continue;
                }
                false
            }
        };
        if hangup {
            let reloaded = tls::reload_files();
            if reloaded.is_empty() && !watching {
                info!(
                    "SIGHUP: nothing to read again (no certificate, secret, token or ICE servers from files)"
                );
            }
            for reloaded in reloaded {
                let cert = reloaded.cert_path.display().to_string();
                match reloaded.result {
                    Ok(()) => info!(%cert, "SIGHUP: certificate read again; new handshakes get it"),
                    Err(e) => {
                        warn!(%cert, error = %e, "SIGHUP: the certificate could not be read again: the one in use stays")
                    }
                }
            }
        }
        reloads.reload(hangup);
    }
}

/// The drain: new connections are refused and `/readyz` answers 503,
/// while the sessions open go on, for the drain period or until
/// `cut_short`.
async fn drain(state: &ServerState, cut_short: impl Future<Output = ()>) {
    state.draining.cancel();
    let period = state.config.drain_period;
    if period.is_zero() {
        return;
    }
    info!(
        period = %humantime::format_duration(period),
        connections = state.tracker.len(),
        "draining: /readyz answers 503 and new connections are refused; open sessions go on"
    );
    tokio::select! {
        () = tokio::time::sleep(period) => info!("drain period over"),
        () = cut_short => info!("drain cut short by a second signal"),
    }
}

async fn serve(
    listeners: Vec<(TcpListener, Option<TlsAcceptor>)>,
    sockets: Vec<device_socket::DeviceSocket>,
    adapter: Option<cluster::Adapter>,
    state: Arc<ServerState>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let router = http::router(state.clone());
    // The cluster adapter outlives the connections: it writes their
    // departures to Redis and gives the leases back once they have closed.
    let leave_cluster = CancellationToken::new();
    let adapter = adapter.map(|adapter| tokio::spawn(adapter.run(leave_cluster.clone())));
    for socket in sockets {
        info!(socket = socket.kind().name(), path = %socket.path().display(), "listening");
        state.tracker.spawn(socket.serve(state.clone()));
    }
    let stop_accepting = CancellationToken::new();
    let mut accepting = Vec::new();
    for (listener, tls) in listeners {
        let local = listener.local_addr()?;
        info!(address = %local, tls = tls.is_some(), "listening");
        accepting.push(tokio::spawn(accept(
            listener,
            tls,
            router.clone(),
            state.clone(),
            stop_accepting.clone(),
        )));
    }
    shutdown.await;
    stop_accepting.cancel();
    for task in accepting {
        // Each drops its listener as it ends.
        let _ = task.await;
    }

    info!("shutting down");
    state.shutdown.cancel();
    state.tracker.close();
    let grace = state.config.shutdown_grace;
    if tokio::time::timeout(grace, state.tracker.wait())
        .await
        .is_err()
    {
        warn!(
            remaining = state.tracker.len(),
            "connections still open after the grace period"
        );
    }
    if let Some(adapter) = adapter {
        leave_cluster.cancel();
        // A Redis that does not answer gets a moment, not forever.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(3), adapter).await;
    }
    info!("stopped");
    Ok(())
}

/// Accepts connections on `listener` (with TLS if given) until `stop`.
async fn accept(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: axum::Router,
    state: Arc<ServerState>,
    stop: CancellationToken,
) {
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors or similar: back off instead
                    // of spinning; the pending connections wait in the
                    // backlog.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        // Every connection holds a place from here until it upgrades (the
        // websocket then holds one of its own) or ends.
        // A trusted proxy carries many clients: they are counted by
        // their own addresses once their requests name them.
        let place = if state.config.trusted_proxies.trusts(peer.ip()) {
            state.http_limiter.try_acquire_local()
        } else {
            state.http_limiter.try_acquire(peer.ip())
        };
        let permit = match place {
            Ok(permit) => permit,
            Err(refusal) => {
                let refusal = http::Refusal::from(refusal);
                refusal.count(&state);
                refusal.log(Some(peer), "(at accept)");
                if tls.is_none() {
                    state.tracker.spawn(http::refuse_raw(stream, refusal));
                }
                continue;
            }
        };
        let router = router.clone();
        let tls = tls.clone();
        let task_state = state.clone();
        state.tracker.spawn(async move {
            let _permit = permit;
            let state = task_state;
            if !state.config.proxy_protocol {
                return serve_connection(stream, peer, tls, router, &state).await;
            }
            let timeout = state.config.handshake_timeout;
            let header = tokio::time::timeout(timeout, proxy_protocol::read(stream))
                .await
                .unwrap_or(Err(proxy_protocol::HeaderError::Timeout));
            match header {
                Ok((source, stream)) => {
                    // Only a trusted proxy's header names the client.
                    let client = match source {
                        proxy_protocol::Source::Client(client)
                            if state.config.trusted_proxies.trusts(peer.ip()) =>
                        {
                            client
                        }
                        _ => peer,
                    };
                    serve_connection(stream, client, tls, router, &state).await;
                }
                Err(e) => {
                    state
                        .core
                        .metrics
                        .refused(metrics::RefusedReason::ProxyHeader);
                    debug!(%peer, error = %e, "connection closed: no valid PROXY protocol header");
                }
            }
        });
        // Let the connection's task run before accepting the next: a
        // loop that accepts a whole burst first leaves every idle
        // connection about 1.4 KB more RSS (BENCHMARKS.md, "Accepting a
        // burst"), and churn costs the same either way.
        tokio::task::yield_now().await;
    }
}

/// Serves one connection: its TLS handshake, if the listener has TLS, then
/// HTTP. `peer` is the client, as far as the connection says.
async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    router: axum::Router,
    state: &ServerState,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(acceptor) = tls else {
        return serve_http(stream, peer, false, router, state).await;
    };
    let deadline = tokio::time::Instant::now() + state.config.handshake_timeout;
    // A TLS connection starts with a handshake record (0x16). One that
    // starts with a letter is plain HTTP on the TLS port: it is told so in
    // HTTP, which its client can show, rather than with a TLS alert, which
    // it reads as garbage ("HTTP/0.9").
    let mut stream = stream;
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, stream.read(&mut first)).await {
        Ok(Ok(1)) => {}
        Ok(_) => return,
        Err(_) => return debug!(%peer, "TLS handshake timed out"),
    }
    if first[0].is_ascii_uppercase() {
        debug!(%peer, "plain HTTP on the TLS port: answered 400");
        return http::refuse_plain_on_tls(stream).await;
    }
    let stream = proxy_protocol::Rewind::new(first.to_vec(), stream);
    match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => serve_http(stream, peer, true, router, state).await,
        Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => debug!(%peer, "TLS handshake timed out"),
    }
}

/// Serves HTTP/1.1 on one connection, with upgrades.
async fn serve_http<S>(
    stream: S,
    peer: SocketAddr,
    over_tls: bool,
    router: axum::Router,
    state: &ServerState,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let upgrading = http::Upgrading::default();
    let service_upgrading = upgrading.clone();
    // Behind a trusted proxy, each request names its client: that is the
    // peer every handler and log line sees.
    let proxies =
        (!state.config.trusted_proxies.is_empty()).then(|| state.config.trusted_proxies.clone());
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        let client = match &proxies {
            Some(proxies) => proxies.client(peer, request.headers()),
            None => peer,
        };
        let extensions = request.extensions_mut();
        extensions.insert(axum::extract::ConnectInfo(client));
        extensions.insert(service_upgrading.clone());
        extensions.insert(http::OverTls(over_tls));
        router.clone().oneshot(request.map(axum::body::Body::new))
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(state.config.handshake_timeout)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
        }
        () = state.shutdown.cancelled() => {
            // A connection that has just answered 101 is about to hand its
            // socket to the websocket task, which closes it with 1001; a
            // graceful shutdown now would drop the socket without a close.
            if !upgrading.is_set() {
                connection.as_mut().graceful_shutdown();
            }
            let _ = connection.await;
        }
    }
}
