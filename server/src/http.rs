//! The HTTP side: routes, authentication, and every refusal before an
//! upgrade. The websocket upgrade itself is `websocket/`'s, the polling
//! flow `polling.rs`'s.
//!
//! Everything a connection can be refused for is checked before the
//! upgrade, in the order of PROTOCOL.md ("Refusals before the upgrade"):
//! path (404), token (401), shutdown and connection limits (503, 429), then
//! the upgrade request itself (426, 400).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use tracing::debug;

use crate::ServerState;
use crate::auth::{Denied, Role};
use crate::cli::DevicesList;
use crate::core::registry::Descriptor;
use crate::core::resume::ResumeRefusal;
use crate::core::{Grant, ServerError};
use crate::limits;
use crate::metrics::RefusedReason;
use crate::polling::{Flavor, Refusal as PollingRefusal};
use crate::websocket::{self, Door};

/// Set on an HTTP connection once it has answered a websocket upgrade.
#[derive(Debug, Clone, Default)]
pub(crate) struct Upgrading(pub(crate) Arc<AtomicBool>);

impl Upgrading {
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Whether the request came over TLS (a proxy says so onward).
#[derive(Debug, Clone, Copy)]
pub(crate) struct OverTls(pub(crate) bool);

/// Why a request was refused before a websocket upgrade, or a client-facing
/// HTTP endpoint refused; each knows its status, body and metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// A browser page whose origin may not use this server.
    ForbiddenOrigin,
    /// No token, or one that does not let this request in.
    Unauthorized(Denied),
    /// A signed token that does not cover the device the path names.
    DeviceNotAllowed,
    ShuttingDown,
    Full,
    PerIp,
    NotAnUpgrade,
    WrongVersion,
    MissingKey,
    /// A `Sec-WebSocket-Key` that is not 16 bytes in base64.
    BadKey,
    /// The device socket's peer runs as a user not in
    /// `--device-socket-allow-uid`.
    UidNotAllowed,
    /// A resume asked for without what it needs: its text says what.
    BadResume(&'static str),
}

impl From<limits::Refusal> for Refusal {
    fn from(refusal: limits::Refusal) -> Self {
        match refusal {
            limits::Refusal::Full => Self::Full,
            limits::Refusal::PerIp => Self::PerIp,
        }
    }
}

impl Refusal {
    fn status(self) -> StatusCode {
        match self {
            Self::ForbiddenOrigin => StatusCode::FORBIDDEN,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::DeviceNotAllowed => StatusCode::FORBIDDEN,
            Self::ShuttingDown | Self::Full => StatusCode::SERVICE_UNAVAILABLE,
            Self::PerIp => StatusCode::TOO_MANY_REQUESTS,
            Self::NotAnUpgrade | Self::WrongVersion => StatusCode::UPGRADE_REQUIRED,
            Self::MissingKey | Self::BadKey | Self::BadResume(_) => StatusCode::BAD_REQUEST,
            Self::UidNotAllowed => StatusCode::FORBIDDEN,
        }
    }

    pub(crate) fn text(self) -> &'static str {
        match self {
            Self::ForbiddenOrigin => {
                "Forbidden: a page of this origin may not use this server (see --allowed-origin)"
            }
            Self::Unauthorized(denied) => denied.text(),
            Self::DeviceNotAllowed => "Forbidden: the token does not cover this device",
            Self::ShuttingDown => "Server shutting down",
            Self::Full => "Server full: connection limit reached",
            Self::PerIp => "Too many connections from this address",
            Self::NotAnUpgrade => "Upgrade required: this endpoint takes websocket connections",
            Self::WrongVersion => "Unsupported websocket version: 13 is required",
            Self::MissingKey => "Bad request: missing Sec-WebSocket-Key",
            Self::BadKey => "Bad request: Sec-WebSocket-Key must be 16 bytes in base64",
            Self::UidNotAllowed => "Unauthorized: this user may not register on the device socket",
            Self::BadResume(text) => text,
        }
    }

    /// The label it is counted under.
    fn reason(self) -> RefusedReason {
        match self {
            Self::ForbiddenOrigin => RefusedReason::Origin,
            Self::Unauthorized(_) | Self::DeviceNotAllowed | Self::UidNotAllowed => {
                RefusedReason::Unauthorized
            }
            Self::ShuttingDown => RefusedReason::ShuttingDown,
            Self::Full => RefusedReason::ConnectionLimit,
            Self::PerIp => RefusedReason::PerIpLimit,
            Self::NotAnUpgrade | Self::WrongVersion | Self::MissingKey | Self::BadKey => {
                RefusedReason::BadUpgrade
            }
            Self::BadResume(_) => RefusedReason::Resume,
        }
    }

    /// The header that tells the peer what would be accepted.
    fn hint(self) -> Option<(HeaderName, &'static str)> {
        match self {
            Self::Unauthorized(_) => Some((header::WWW_AUTHENTICATE, "Bearer")),
            Self::NotAnUpgrade => Some((header::UPGRADE, "websocket")),
            Self::WrongVersion => Some((header::SEC_WEBSOCKET_VERSION, "13")),
            Self::ForbiddenOrigin
            | Self::DeviceNotAllowed
            | Self::ShuttingDown
            | Self::Full
            | Self::PerIp
            | Self::MissingKey
            | Self::BadKey
            | Self::UidNotAllowed
            | Self::BadResume(_) => None,
        }
    }

    /// The line it is logged with: a warning, but for a refusal while the
    /// server shuts down, which is expected.
    pub fn log(self, peer: Option<SocketAddr>, path: &str) {
        let status = self.status().as_u16();
        let peer = peer.map(tracing::field::display);
        if self == Self::ShuttingDown {
            tracing::info!(peer, path, status, why = self.text(), "refused");
        } else {
            tracing::warn!(peer, path, status, why = self.text(), "refused");
        }
    }

    /// Logs it with the request's peer and path, and counts it on
    /// /metrics: every refusal of a request, whatever its answer's shape.
    pub fn refused(self, state: &ServerState, request: &Request) {
        let peer = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|info| info.0);
        self.log(peer, request.uri().path());
        self.count(state);
    }

    /// The same line for a connection refused on the device or control
    /// socket, whose peer the span names (its uid, gid and pid).
    pub fn log_on_socket(self, socket: &str) {
        if self == Self::ShuttingDown {
            tracing::info!(socket, why = self.text(), "refused");
        } else {
            tracing::warn!(socket, why = self.text(), "refused");
        }
    }

    /// Counts it on /metrics.
    pub fn count(self, state: &ServerState) {
        state.core.metrics.refused(self.reason());
    }

    /// The response to `request`, logged and counted.
    /// The connection ends after it: a client tries again on a new one,
    /// and the refused one would otherwise hold a place of
    /// `--max-http-connections` until the head timeout.
    pub fn respond(self, state: &ServerState, request: &Request) -> Response {
        self.refused(state, request);
        let mut response = json_error(self.status(), self.text());
        let headers = response.headers_mut();
        if let Some((name, value)) = self.hint() {
            headers.insert(name, HeaderValue::from_static(value));
        }
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        response
    }
}

/// The status of a resume refused before the upgrade: 403 for a token of
/// another endpoint or device, 400 for one not shaped as a token, 410 for
/// one no session holds (spent, past its window, ended, never issued), 409
/// while another connection takes the session back.
fn resume_status(refusal: &ResumeRefusal) -> StatusCode {
    match refusal {
        _ if refusal.is_forbidden() => StatusCode::FORBIDDEN,
        ResumeRefusal::Malformed => StatusCode::BAD_REQUEST,
        ResumeRefusal::Busy => StatusCode::CONFLICT,
        _ => StatusCode::GONE,
    }
}

/// Logs a refused resume with its peer and path, as every refusal, and
/// counts it (`refused{reason="resume"}`). The token is never in it.
pub(crate) fn resume_refused(
    state: &ServerState,
    peer: Option<SocketAddr>,
    path: &str,
    refusal: &ResumeRefusal,
) {
    let status = resume_status(refusal).as_u16();
    let peer = peer.map(tracing::field::display);
    tracing::warn!(peer, path, status, why = %refusal, "refused");
    state.core.metrics.refused(RefusedReason::Resume);
}

/// The answer to an upgrade whose resume is refused, logged and counted.
pub(crate) fn refuse_resume(
    state: &ServerState,
    request: &Request,
    refusal: &ResumeRefusal,
) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0);
    resume_refused(state, peer, request.uri().path(), refusal);
    let mut response = json_error(resume_status(refusal), &refusal.to_string());
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Answers a connection refused at accept (no place for it) without
/// reading its request: a minimal HTTP/1.1 response, then the close. A
/// TLS connection is closed without one (it would need a handshake).
pub(crate) async fn refuse_raw(mut stream: tokio::net::TcpStream, refusal: Refusal) {
    // The peer may be gone, or never read: a second at most, then close.
    let write = write_raw(&mut stream, refusal.status(), refusal.text());
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), write).await;
}

/// The text a plain HTTP request to a TLS port gets.
pub(crate) const PLAIN_ON_TLS: &str = "Bad request: this port serves TLS; use https:// or wss://";

/// Answers plain HTTP that came to a TLS port: 400, then the close.
pub(crate) async fn refuse_plain_on_tls<S>(mut stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncReadExt as _;
    let exchange = async {
        write_raw(&mut stream, StatusCode::BAD_REQUEST, PLAIN_ON_TLS).await?;
        // Read what the client sent until it closes: a socket closed with
        // unread bytes is reset, and a reset can reach the client before
        // it has read the answer.
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), exchange).await;
}

/// Writes `status` with `{"error": text}` on a connection no HTTP server
/// has read, and shuts its side.
async fn write_raw<S>(stream: &mut S, status: StatusCode, text: &str) -> std::io::Result<()>
where
    S: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt as _;
    let body = protocol::ServerToClient::Error(protocol::ErrorMsg { error: text.into() }).encode();
    let answer = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        status.as_str(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    stream.write_all(answer.as_bytes()).await?;
    stream.shutdown().await
}

pub(crate) fn router(state: Arc<ServerState>) -> Router {
    Router::new()
        .route(protocol::REGISTER_DEVICE_PATH, get(register_device))
        .route(protocol::CONNECT_CLIENT_PATH, get(connect_client))
        .route("/devices/{device_id}", get(device_descriptor))
        .route("/devices/{device_id}/connect", get(device_connect))
        .route("/devices/{device_id}/files/{*path}", get(device_files))
        // The wildcard wants at least one character: the device's index.
        .route("/devices/{device_id}/files/", get(device_files_index))
        .route("/devices/{device_id}/adb", get(device_adb))
        .route("/devices", get(devices))
        .route("/infra_config", get(infra_config))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/connect", post(poll_connect))
        .route("/forward", post(poll_forward))
        .route("/poll_messages", post(poll_messages))
        .route("/polled_connections", post(polled_connections))
        .route(
            "/polled_connections/{connection_id}/messages",
            get(polled_messages),
        )
        // `:forward` is a literal segment; the router takes no segment
        // that starts with a colon, so it is matched here.
        .route(
            "/polled_connections/{connection_id}/{action}",
            post(polled_forward),
        )
        .fallback(not_found)
        .with_state(state)
}

/// A JSON error body, the same shape as the websocket error frames.
pub(crate) fn json_error(status: StatusCode, text: &str) -> Response {
    let body = protocol::ServerToClient::Error(protocol::ErrorMsg { error: text.into() }).encode();
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// 502 from one of the proxies, with the Go operator's marker naming
/// which (`x-cutf-proxy: op-device`, `op-webui`).
pub(crate) fn bad_gateway(proxy: &'static str, text: &str) -> Response {
    let mut response = json_error(StatusCode::BAD_GATEWAY, text);
    response
        .headers_mut()
        .insert("x-cutf-proxy", HeaderValue::from_static(proxy));
    response
}

fn json(body: String) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// Any other path: the web UI's answer with `--webui_url`; else a file of
/// `--assets-dir` if one is given, else of the built-in web client; else
/// 404.
async fn not_found(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    if let Some(webui) = &state.config.webui_url {
        let over_tls = request
            .extensions()
            .get::<OverTls>()
            .is_some_and(|tls| tls.0);
        let webui = webui.clone();
        return crate::webui::serve(state, &webui, peer, over_tls, request).await;
    }
    // An upgrade on an unknown path is a 404 whatever files there are.
    if !request.headers().contains_key(header::UPGRADE) {
        let (method, path) = (request.method(), request.uri().path());
        let file = match &state.config.assets_dir {
            Some(dir) => crate::assets::serve(dir, method, path).await,
            None => crate::web::serve(method, path),
        };
        if let Some(response) = file {
            return response;
        }
    }
    json_error(
        StatusCode::NOT_FOUND,
        &format!("Not found: {}", request.uri().path()),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Whether to send new connections here: 503 once the server drains
/// (SIGTERM), while `/healthz` stays 200 until it stops.
async fn readyz(State(state): State<Arc<ServerState>>) -> Response {
    if state.draining.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else {
        "ok\n".into_response()
    }
}

async fn metrics(State(state): State<Arc<ServerState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        state.core.metrics.render(),
    )
        .into_response()
}

async fn devices(State(state): State<Arc<ServerState>>, request: Request) -> Response {
    let grant = match authorize(&state, Role::Client, &request) {
        Ok(grant) => grant,
        Err(refusal) => return refusal.respond(&state, &request),
    };
    // A scoped token lists the devices it covers.
    match state.config.devices_list {
        DevicesList::Ids => {
            let mut ids = state.core.registry.device_ids();
            ids.retain(|id| grant.allows(id));
            json(serde_json::to_string(&ids).unwrap_or_else(|_| "[]".into()))
        }
        DevicesList::Descriptors => {
            // The Go operator's filters; an empty one matches all.
            let query = request.uri().query().unwrap_or("");
            let (mut group, mut owner) = (None, None);
            for (key, value) in form_urlencoded::parse(query.as_bytes()) {
                match key.as_ref() {
                    "groupId" if !value.is_empty() => group = Some(value.into_owned()),
                    "owner" if !value.is_empty() => owner = Some(value.into_owned()),
                    _ => {}
                }
            }
            let descriptors: Vec<String> = state
                .core
                .registry
                .descriptors()
                .iter()
                .filter(|(id, _)| grant.allows(id))
                .filter(|(_, d)| group.as_ref().is_none_or(|g| *g == d.group_name))
                .filter(|(_, d)| owner.as_ref().is_none_or(|o| *o == d.owner))
                .map(|(id, d)| descriptor_json(id, d, None))
                .collect();
            json(format!("[{}]", descriptors.join(",")))
        }
    }
}

async fn infra_config(State(state): State<Arc<ServerState>>, request: Request) -> Response {
    if let Err(refusal) = authorize(&state, Role::Client, &request) {
        return refusal.respond(&state, &request);
    }
    json(state.core.anonymous_config().encode())
}

/// A polling request's body, within the message size limit (with room for
/// the request's own fields), and what its token allows; or the refusal, in
/// the polling flow's shape.
async fn polling_body(
    state: &ServerState,
    request: Request,
) -> Result<(axum::body::Bytes, Grant), Response> {
    let grant = polling_grant(state, &request).map_err(IntoResponse::into_response)?;
    let limit = state.config.max_message_bytes + 1024;
    let too_big = || {
        crate::polling::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "Message too big: the limit is {} bytes",
                state.config.max_message_bytes
            ),
        )
    };
    // A declared length past the limit is refused before a byte of the
    // body is read.
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(too_big());
    }
    // The body has the head's deadline again: a body that trickles in, or
    // never comes, does not hold the connection.
    let deadline = state.config.handshake_timeout;
    match tokio::time::timeout(deadline, axum::body::to_bytes(request.into_body(), limit)).await {
        Ok(Ok(body)) => Ok((body, grant)),
        Ok(Err(e)) if is_length_limit(&e) => Err(too_big()),
        Ok(Err(e)) => Err(crate::polling::error(
            StatusCode::BAD_REQUEST,
            &format!("Bad request: the body could not be read ({e})"),
        )),
        Err(_) => Err(crate::polling::error(
            StatusCode::REQUEST_TIMEOUT,
            &format!(
                "Request timeout: the body did not arrive within {}",
                humantime::format_duration(deadline)
            ),
        )),
    }
}

/// The origin and token checks of a polling request (PROTOCOL.md,
/// "Origins": a foreign page's `fetch` needs no preflight to POST, so its
/// request is refused before it does anything); the refusal is counted,
/// and answered in the polling flow's shape.
fn polling_grant(state: &ServerState, request: &Request) -> Result<Grant, PollingRefusal> {
    let checked = match state.config.allowed_origins.check(request.headers()) {
        Err(origin) => {
            debug!(%origin, "the origin is not allowed");
            Err(Refusal::ForbiddenOrigin)
        }
        Ok(()) => authorize(state, Role::Client, request),
    };
    checked.map_err(|refusal| {
        refusal.refused(state, request);
        PollingRefusal::new(refusal.status(), refusal.text())
    })
}

/// Whether reading a body failed for its length (it went past the limit
/// without declaring it).
fn is_length_limit(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = source {
        if error.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = error.source();
    }
    false
}

async fn poll_connect(State(state): State<Arc<ServerState>>, request: Request) -> Response {
    new_polled_client(&state, request, Flavor::Reference).await
}

/// `POST /polled_connections`, the Go operator's polling `connect`.
async fn polled_connections(State(state): State<Arc<ServerState>>, request: Request) -> Response {
    new_polled_client(&state, request, Flavor::GoOperator).await
}

async fn new_polled_client(state: &ServerState, request: Request, flavor: Flavor) -> Response {
    if state.draining.is_cancelled() {
        let refusal = Refusal::ShuttingDown;
        refusal.refused(state, &request);
        return crate::polling::error(refusal.status(), refusal.text());
    }
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0);
    match polling_body(state, request).await {
        Ok((body, grant)) => {
            state
                .polling
                .connect(state, peer, &body, grant, flavor)
                .await
        }
        Err(refusal) => refusal,
    }
}

/// `POST /polled_connections/{id}/:forward`.
async fn polled_forward(
    State(state): State<Arc<ServerState>>,
    Path((connection_id, action)): Path<(String, String)>,
    request: Request,
) -> Response {
    if action != ":forward" {
        return json_error(
            StatusCode::NOT_FOUND,
            &format!("Not found: {}", request.uri().path()),
        );
    }
    match polling_body(&state, request).await {
        Ok((body, grant)) => state.polling.go_forward(&connection_id, &body, &grant),
        Err(refusal) => refusal,
    }
}

/// `GET /polled_connections/{id}/messages?start=N&count=M`.
async fn polled_messages(
    State(state): State<Arc<ServerState>>,
    Path(connection_id): Path<String>,
    request: Request,
) -> Response {
    let grant = match polling_grant(&state, &request) {
        Ok(grant) => grant,
        Err(refusal) => return refusal.into_response(),
    };
    state
        .polling
        .go_messages(&connection_id, request.uri().query(), &grant)
}

async fn poll_forward(State(state): State<Arc<ServerState>>, request: Request) -> Response {
    match polling_body(&state, request).await {
        Ok((body, grant)) => state.polling.forward(&body, &grant),
        Err(refusal) => refusal,
    }
}

async fn poll_messages(State(state): State<Arc<ServerState>>, request: Request) -> Response {
    match polling_body(&state, request).await {
        Ok((body, grant)) => state.polling.poll(&body, &grant),
        Err(refusal) => refusal,
    }
}

async fn register_device(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    websocket::upgrade(state, peer, request, Door::RegisterDevice, None)
}

async fn connect_client(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    websocket::upgrade(state, peer, request, Door::ConnectClient, None)
}

/// `GET /devices/{id}/connect`, the Go operator's client websocket: 404
/// before the upgrade when no device holds the id, as there.
async fn device_connect(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(device_id): Path<String>,
    request: Request,
) -> Response {
    let grant = match authorize_device(&state, Role::Client, &request, &device_id) {
        Ok(grant) => grant,
        Err(refusal) => return refusal.respond(&state, &request),
    };
    if !state.core.registry.is_registered(&device_id) {
        return json_error(
            StatusCode::NOT_FOUND,
            &ServerError::DeviceNotFound(device_id).to_string(),
        );
    }
    websocket::upgrade(
        state,
        peer,
        request,
        Door::DeviceConnect { device_id },
        Some(grant),
    )
}

/// `GET /devices/{id}/adb`: a websocket bridged to the device's adb port
/// on 127.0.0.1, from its pre-registration or else `adb_port` in its
/// `device_info`. The port is connected before the upgrade, so a refusal
/// is an HTTP status.
async fn device_adb(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(device_id): Path<String>,
    request: Request,
) -> Response {
    let grant = match authorize_device(&state, Role::Client, &request, &device_id) {
        Ok(grant) => grant,
        Err(refusal) => return refusal.respond(&state, &request),
    };
    let Some((descriptor, info)) = state.core.registry.descriptor(&device_id) else {
        return json_error(
            StatusCode::NOT_FOUND,
            &ServerError::DeviceNotFound(device_id).to_string(),
        );
    };
    let from_info = || {
        serde_json::from_str::<serde_json::Value>(info.get())
            .ok()?
            .get("adb_port")?
            .as_u64()
            .and_then(|port| u16::try_from(port).ok())
    };
    let port = Some(descriptor.adb_port)
        .filter(|port| *port != 0)
        .or_else(from_info)
        .filter(|port| *port != 0);
    let Some(port) = port else {
        return json_error(
            StatusCode::NOT_FOUND,
            &format!("Not found: no adb port for the device {device_id}"),
        );
    };
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let connected = tokio::time::timeout(
        state.config.handshake_timeout,
        tokio::net::TcpStream::connect(address),
    )
    .await;
    let adb = match connected {
        Ok(Ok(adb)) => adb,
        Ok(Err(e)) => {
            return json_error(
                StatusCode::BAD_GATEWAY,
                &format!("Bad gateway: adb at {address}: {e}"),
            );
        }
        Err(_) => {
            return json_error(
                StatusCode::BAD_GATEWAY,
                &format!("Bad gateway: adb at {address} did not accept in time"),
            );
        }
    };
    let _ = adb.set_nodelay(true);
    websocket::upgrade(state, peer, request, Door::AdbBridge { adb }, Some(grant))
}

/// `GET /devices/{id}/files/`: the device's index page.
async fn device_files_index(
    state: State<Arc<ServerState>>,
    Path(device_id): Path<String>,
    request: Request,
) -> Response {
    device_files(state, Path((device_id, String::new())), request).await
}

/// `GET /devices/{id}/files/{path}`: the device's own pages.
async fn device_files(
    State(state): State<Arc<ServerState>>,
    Path((device_id, path)): Path<(String, String)>,
    request: Request,
) -> Response {
    // Served from this server's own copy, as the Go operator does: the
    // page talks to this server, not to the device. A static script with
    // nothing secret in it, so no token is asked for it.
    if path == "js/server_connector.js" && request.method() == Method::GET {
        return crate::web::server_connector();
    }
    let by_cookie = files_cookie_grant(&state, request.headers());
    let grant = match by_cookie.clone() {
        Some(grant) => Ok(grant),
        None => authorize(&state, Role::Client, &request),
    };
    match grant {
        Ok(grant) if grant.allows(&device_id) => {}
        Ok(_) => return Refusal::DeviceNotAllowed.respond(&state, &request),
        Err(refusal) => return refusal.respond(&state, &request),
    }
    let token_in_query = by_cookie
        .is_none()
        .then(|| query_token(&request))
        .flatten()
        .filter(|_| state.auth.required(Role::Client));
    let mut response = crate::files::serve(state.clone(), device_id.clone(), request).await;
    if let Some(token) = token_in_query
        && let Some(cookie) = files_cookie(&state, &device_id, &token)
    {
        // The page's own scripts and styles do not carry ?token=: a cookie
        // for this device's files does, and nothing else.
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// `GET /devices/{id}`: the Go operator's descriptor of a device, with its
/// `device_info` as `registration_info`.
async fn device_descriptor(
    State(state): State<Arc<ServerState>>,
    Path(device_id): Path<String>,
    request: Request,
) -> Response {
    if let Err(refusal) = authorize_device(&state, Role::Client, &request, &device_id) {
        return refusal.respond(&state, &request);
    }
    match state.core.registry.descriptor(&device_id) {
        Some((descriptor, info)) => {
            json(descriptor_json(&device_id, &descriptor, Some(info.get())))
        }
        None => json_error(
            StatusCode::NOT_FOUND,
            &ServerError::DeviceNotFound(device_id).to_string(),
        ),
    }
}

/// A device's descriptor in the Go operator's shape: its group, owner,
/// name and adb port come from its pre-registration (empty and 0 without
/// one, and owner and name left out when empty, as there).
fn descriptor_json(
    device_id: &str,
    descriptor: &Descriptor,
    registration_info: Option<&str>,
) -> String {
    /// The Go operator's `DeviceDescriptor`, field for field.
    #[derive(serde::Serialize)]
    struct Shape<'a> {
        device_id: &'a str,
        group_name: &'a str,
        #[serde(skip_serializing_if = "str::is_empty")]
        owner: &'a str,
        #[serde(skip_serializing_if = "str::is_empty")]
        name: &'a str,
        adb_port: u16,
    }
    let value = Shape {
        device_id,
        group_name: &descriptor.group_name,
        owner: &descriptor.owner,
        name: &descriptor.name,
        adb_port: descriptor.adb_port,
    };
    // Strings and a number always serialize.
    let text = serde_json::to_string(&value).unwrap_or_else(|_| "{}".into());
    match registration_info {
        // The device's own JSON, verbatim, as the last field.
        Some(info) => format!(
            r#"{},"registration_info":{info}}}"#,
            &text[..text.len() - 1]
        ),
        None => text,
    }
}

const FILES_COOKIE: &str = "signaling_token";

/// The cookie that lets a device page's sub-resources through: the token
/// the page was opened with, for `/devices/{id}/files/` only, not readable
/// by scripts, not sent by other sites.
fn files_cookie(state: &ServerState, device_id: &str, token: &str) -> Option<HeaderValue> {
    let path: String = form_urlencoded::byte_serialize(device_id.as_bytes()).collect();
    let secure = if state.config.tls.is_some() {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{FILES_COOKIE}={}; Path=/devices/{path}/files/; HttpOnly; SameSite=Strict{secure}",
        form_urlencoded::byte_serialize(token.as_bytes()).collect::<String>()
    ))
    .ok()
}

/// What the files cookie's token allows, if the request carries one.
fn files_cookie_grant(state: &ServerState, headers: &HeaderMap) -> Option<Grant> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, _)| *name == FILES_COOKIE)
        .find_map(|(_, value)| {
            let value: String = form_urlencoded::parse(format!("v={value}").as_bytes())
                .map(|(_, v)| v.into_owned())
                .next()
                .unwrap_or_default();
            state.auth.authorize(Role::Client, Some(&value)).ok()
        })
}

/// The token a request presents: `Authorization: Bearer`, or `?token=`
/// (browsers cannot set headers on a websocket).
fn presented_token(request: &Request) -> Option<String> {
    bearer_token(request.headers()).or_else(|| query_token(request))
}

fn query_token(request: &Request) -> Option<String> {
    let query = request.uri().query()?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == "token")
        .map(|(_, value)| value.into_owned())
}

/// What the request's token allows `role` (everything, where no token is
/// needed); or the 401.
pub(crate) fn authorize(
    state: &ServerState,
    role: Role,
    request: &Request,
) -> Result<Grant, Refusal> {
    state
        .auth
        .authorize(role, presented_token(request).as_deref())
        .map_err(Refusal::Unauthorized)
}

/// The same for a request whose path names `device_id`: a token that does
/// not cover it is a 403.
pub(crate) fn authorize_device(
    state: &ServerState,
    role: Role,
    request: &Request,
    device_id: &str,
) -> Result<Grant, Refusal> {
    let grant = authorize(state, role, request)?;
    if grant.allows(device_id) {
        Ok(grant)
    } else {
        debug!(device_id, "refused: the token does not cover this device");
        Err(Refusal::DeviceNotAllowed)
    }
}

fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

/// Headers of one hop (RFC 9110 §7.6.1), never passed on; an upgrade
/// sets `Connection` and `Upgrade` again.
pub(crate) const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes the hop-by-hop headers, and those `Connection` names.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(&named) {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_dropped() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(header::ACCEPT, HeaderValue::from_static("text/html"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key(header::ACCEPT));
    }
}
