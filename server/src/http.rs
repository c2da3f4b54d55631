//! The HTTP side: routes, authentication, limits, and the websocket upgrade.
//!
//! Everything a connection can be refused for is checked here, before the
//! upgrade, in the order of behavior.md: path (404), token (401), connection
//! limits (503, 429), then the upgrade request itself.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::TokioIo;
use subtle::ConstantTimeEq;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tracing::{Instrument, field, info_span, warn};

use crate::ServerState;
use crate::connection::drive;
use crate::limits::Refusal;
use crate::metrics::{Endpoint, RefusedReason};
use crate::outbox::{Outbox, OutboxLimits};
use crate::read_ahead::ReadAhead;
use crate::session::client::ClientSession;
use crate::session::device::DeviceSession;

/// Set on an HTTP connection once it has answered a websocket upgrade.
#[derive(Debug, Clone, Default)]
pub(crate) struct Upgrading(Arc<AtomicBool>);

impl Upgrading {
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

pub(crate) fn router(state: Arc<ServerState>) -> Router {
    Router::new()
        .route(protocol::REGISTER_DEVICE_PATH, get(register_device))
        .route(protocol::CONNECT_CLIENT_PATH, get(connect_client))
        .route("/devices", get(devices))
        .route("/infra_config", get(infra_config))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/connect", post(poll_connect))
        .route("/forward", post(poll_forward))
        .route("/poll_messages", post(poll_messages))
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

/// A refusal before the upgrade, counted on /metrics by its reason.
fn refuse(state: &ServerState, reason: RefusedReason, status: StatusCode, text: &str) -> Response {
    state.ctx.metrics.refused(reason);
    json_error(status, text)
}

fn with_header(mut response: Response, name: header::HeaderName, value: &'static str) -> Response {
    response
        .headers_mut()
        .insert(name, HeaderValue::from_static(value));
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

/// Any other path: a file of `--assets-dir` if one is given, else of the
/// built-in web client; else 404.
async fn not_found(State(state): State<Arc<ServerState>>, request: Request) -> Response {
    // An upgrade on an unknown path is a 404 whatever files there are.
    if !request.headers().contains_key(header::UPGRADE) {
        let (method, path) = (request.method(), request.uri().path());
        let file = match &state.ctx.config.assets_dir {
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

async fn metrics(State(state): State<Arc<ServerState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        state.ctx.metrics.render(),
    )
        .into_response()
}

async fn devices(State(state): State<Arc<ServerState>>, request: Request) -> Response {
    if let Some(refused) = refuse_unauthorized(&state, Endpoint::ConnectClient, &request) {
        return refused;
    }
    let ids = state.ctx.registry.device_ids();
    json(serde_json::to_string(&ids).unwrap_or_else(|_| "[]".into()))
}

async fn infra_config(State(state): State<Arc<ServerState>>, request: Request) -> Response {
    if let Some(refused) = refuse_unauthorized(&state, Endpoint::ConnectClient, &request) {
        return refused;
    }
    json(state.ctx.config_frame.to_string())
}

/// A polling request's body, within the message size limit (with room for
/// the request's own fields); or the refusal, in the polling flow's shape.
async fn polling_body(
    state: &ServerState,
    request: Request,
) -> Result<axum::body::Bytes, Response> {
    if !token_accepted(state, Endpoint::ConnectClient, &request) {
        state.ctx.metrics.refused(RefusedReason::Unauthorized);
        return Err(crate::polling::error(
            StatusCode::UNAUTHORIZED,
            "Unauthorized: missing or invalid token",
        ));
    }
    let limit = state.ctx.config.max_message_bytes + 1024;
    axum::body::to_bytes(request.into_body(), limit)
        .await
        .map_err(|_| {
            crate::polling::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "Message too big: the limit is {} bytes",
                    state.ctx.config.max_message_bytes
                ),
            )
        })
}

async fn poll_connect(State(state): State<Arc<ServerState>>, request: Request) -> Response {
    if state.shutdown.is_cancelled() {
        return crate::polling::error(StatusCode::SERVICE_UNAVAILABLE, "Server shutting down");
    }
    match polling_body(&state, request).await {
        Ok(body) => state
            .polling
            .connect(&state.ctx, &state.tracker, &state.shutdown, &body),
        Err(refusal) => refusal,
    }
}

async fn poll_forward(State(state): State<Arc<ServerState>>, request: Request) -> Response {
    match polling_body(&state, request).await {
        Ok(body) => state.polling.forward(&state.ctx, &body),
        Err(refusal) => refusal,
    }
}

async fn poll_messages(State(state): State<Arc<ServerState>>, request: Request) -> Response {
    match polling_body(&state, request).await {
        Ok(body) => state.polling.poll(&body),
        Err(refusal) => refusal,
    }
}

async fn register_device(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    upgrade(state, peer, request, Endpoint::RegisterDevice)
}

async fn connect_client(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    upgrade(state, peer, request, Endpoint::ConnectClient)
}

/// Checks the token the endpoint needs, from `Authorization: Bearer` or
/// `?token=` (browsers cannot set headers on a websocket). Returns the 401
/// refusal when the token is missing or wrong.
fn refuse_unauthorized(
    state: &ServerState,
    endpoint: Endpoint,
    request: &Request,
) -> Option<Response> {
    if token_accepted(state, endpoint, request) {
        return None;
    }
    let refusal = refuse(
        state,
        RefusedReason::Unauthorized,
        StatusCode::UNAUTHORIZED,
        "Unauthorized: missing or invalid token",
    );
    Some(with_header(refusal, header::WWW_AUTHENTICATE, "Bearer"))
}

/// Whether the request carries the token the endpoint needs (or none is
/// needed).
fn token_accepted(state: &ServerState, endpoint: Endpoint, request: &Request) -> bool {
    let config = &state.ctx.config;
    let expected = match endpoint {
        Endpoint::RegisterDevice => config.device_token.as_deref(),
        Endpoint::ConnectClient => config.client_token.as_deref(),
    };
    let Some(expected) = expected else {
        return true;
    };
    let presented = bearer_token(request.headers()).or_else(|| {
        let query = request.uri().query()?;
        form_urlencoded::parse(query.as_bytes())
            .find(|(key, _)| key == "token")
            .map(|(_, value)| value.into_owned())
    });
    presented.is_some_and(|token| token.as_bytes().ct_eq(expected.as_bytes()).into())
}

fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

/// Whether a comma-separated header holds `token`, ignoring case.
fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn upgrade(
    state: Arc<ServerState>,
    peer: SocketAddr,
    mut request: Request,
    endpoint: Endpoint,
) -> Response {
    if let Some(refused) = refuse_unauthorized(&state, endpoint, &request) {
        return refused;
    }
    if state.shutdown.is_cancelled() {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "Server shutting down");
    }
    let permit = match state.limiter.try_acquire(peer.ip()) {
        Ok(permit) => permit,
        Err(Refusal::Full) => {
            return refuse(
                &state,
                RefusedReason::ConnectionLimit,
                StatusCode::SERVICE_UNAVAILABLE,
                "Server full: connection limit reached",
            );
        }
        Err(Refusal::PerIp) => {
            return refuse(
                &state,
                RefusedReason::PerIpLimit,
                StatusCode::TOO_MANY_REQUESTS,
                "Too many connections from this address",
            );
        }
    };

    let headers = request.headers();
    let is_upgrade = header_has_token(headers, header::CONNECTION, "upgrade")
        && header_has_token(headers, header::UPGRADE, "websocket");
    if !is_upgrade {
        let refusal = refuse(
            &state,
            RefusedReason::BadUpgrade,
            StatusCode::UPGRADE_REQUIRED,
            "Upgrade required: this endpoint takes websocket connections",
        );
        return with_header(refusal, header::UPGRADE, "websocket");
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        let refusal = refuse(
            &state,
            RefusedReason::BadUpgrade,
            StatusCode::UPGRADE_REQUIRED,
            "Unsupported websocket version: 13 is required",
        );
        return with_header(refusal, header::SEC_WEBSOCKET_VERSION, "13");
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return refuse(
            &state,
            RefusedReason::BadUpgrade,
            StatusCode::BAD_REQUEST,
            "Bad request: missing Sec-WebSocket-Key",
        );
    };
    let accept = derive_accept_key(key.as_bytes());
    let subprotocol = header_has_token(
        headers,
        header::SEC_WEBSOCKET_PROTOCOL,
        protocol::SUBPROTOCOL,
    );
    let on_upgrade = hyper::upgrade::on(&mut request);
    if let Some(upgrading) = request.extensions().get::<Upgrading>() {
        upgrading.0.store(true, Ordering::Release);
    }

    let span = match endpoint {
        Endpoint::RegisterDevice => info_span!("device", %peer, device_id = field::Empty),
        Endpoint::ConnectClient => {
            info_span!("client", %peer, device_id = field::Empty, client_id = field::Empty)
        }
    };
    let task_state = state.clone();
    state.tracker.spawn(
        async move {
            let state = task_state;
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(e) => {
                    warn!(error = %e, "websocket upgrade failed");
                    return;
                }
            };
            let ws = WebSocketStream::from_raw_socket(
                ReadAhead::new(TokioIo::new(upgraded)),
                Role::Server,
                Some(state.ws_config),
            )
            .await;
            let gauge = state.ctx.metrics.connections(endpoint);
            gauge.inc();
            let ctx = state.ctx.clone();
            let outbox = Outbox::new(OutboxLimits {
                max_messages: ctx.config.outbox_messages,
                max_bytes: ctx.config.outbox_bytes,
            });
            let shutdown = state.shutdown.clone();
            match endpoint {
                Endpoint::RegisterDevice => {
                    let session = DeviceSession::new(ctx.clone(), outbox.clone());
                    drive(ws, session, outbox, &ctx, shutdown).await;
                }
                Endpoint::ConnectClient => {
                    let session = ClientSession::new(ctx.clone(), outbox.clone());
                    drive(ws, session, outbox, &ctx, shutdown).await;
                }
            }
            gauge.dec();
            drop(permit);
        }
        .instrument(span),
    );

    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if subprotocol {
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(protocol::SUBPROTOCOL),
        );
    }
    response
}

/// How many bytes of frames may wait for the end of a batch before
/// tungstenite writes them out anyway.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// The websocket settings every connection gets.
pub(crate) fn websocket_config(config: &crate::ServerConfig) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(config.read_buffer_bytes)
        // Frames queue in the write buffer until the connection task
        // flushes after its batch: one write syscall per batch, not per
        // frame. This is a threshold, not an allocation.
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_write_buffer_size(
            config
                .outbox_bytes
                .saturating_add(config.max_message_bytes)
                .max(2 * WRITE_BUFFER_BYTES),
        )
        .max_message_size(Some(config.max_message_bytes))
        .max_frame_size(Some(config.max_message_bytes))
}
