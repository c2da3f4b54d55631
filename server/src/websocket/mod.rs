//! The websocket front doors: the seed's `/register_device` and
//! `/connect_client`, and the Go operator's `/devices/{id}/connect`.
//!
//! An upgrade request is admitted (token, shutdown, connection limits),
//! its handshake checked, and answered 101; the upgraded socket then gets a
//! task of its own (`connection.rs`) that drives a core connection. This
//! module and its children own sockets; nothing here decides the protocol.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tracing::{Instrument, Span, field, info_span, warn};

use crate::ServerState;
use crate::core::Grant;
use crate::core::resume::{Claim, ResumeDoor};
use crate::core::session::{ClientSession, DeviceSession};
use crate::core::{Connection, Keepalive};
use crate::encode::Dialect;
use crate::http::{Refusal, Upgrading, authorize};
use crate::limits::Permit;
use crate::metrics::Endpoint;
use connection::Socket;
use read_ahead::ReadAhead;

mod adb;
mod connection;
mod read_ahead;

/// Which websocket a request opens.
#[derive(Debug)]
pub(crate) enum Door {
    RegisterDevice,
    ConnectClient,
    /// The Go operator's client websocket: the path names the device, and
    /// the client sends bare payloads.
    DeviceConnect {
        device_id: String,
    },
    /// The Go operator's `/devices/{id}/adb`: bytes bridged to the
    /// device's adb port, already connected.
    AdbBridge {
        adb: tokio::net::TcpStream,
    },
    /// A Go operator's client that asked to resume its session
    /// (`/devices/{id}/connect?resume=TOKEN&received=N`): its claim,
    /// taken before the upgrade, gets the socket once it is upgraded.
    Resume {
        claim: Claim,
        received: u64,
    },
}

impl Door {
    fn endpoint(&self) -> Endpoint {
        match self {
            Self::RegisterDevice => Endpoint::RegisterDevice,
            Self::ConnectClient => Endpoint::ConnectClient,
            Self::DeviceConnect { .. } | Self::Resume { .. } => Endpoint::DeviceConnect,
            Self::AdbBridge { .. } => Endpoint::Adb,
        }
    }
}

/// What a Go operator's client's upgrade asks to resume: `resume` (the
/// token) and `received` in its query.
fn resume_query(request: &Request) -> Option<Result<(String, u64), Refusal>> {
    let query = request.uri().query()?;
    let mut token = None;
    let mut received = None;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "resume" => token = Some(value.into_owned()),
            "received" => received = Some(value.into_owned()),
            _ => {}
        }
    }
    let token = token?;
    let received = received.as_deref().map(str::parse::<u64>);
    Some(match received {
        Some(Ok(received)) if token.len() <= protocol::MAX_RESUME_TOKEN_BYTES => {
            Ok((token, received))
        }
        Some(Ok(_)) => Err(Refusal::BadResume("Resume refused: the token is too long")),
        _ => Err(Refusal::BadResume(
            "Resume refused: received must be given: the number of frames received, a non-negative integer",
        )),
    })
}

/// Answers a websocket request on `door`: a refusal, or 101 with the
/// connection's task spawned. `authorized` is what the request's token
/// allows, where the route has checked it already (one that names its
/// device in the path).
pub(crate) fn upgrade(
    state: Arc<ServerState>,
    peer: SocketAddr,
    mut request: Request,
    door: Door,
    authorized: Option<Grant>,
) -> Response {
    let endpoint = door.endpoint();
    let admitted = admit(&state, peer, &request, endpoint, authorized)
        .and_then(|admitted| Ok((admitted, Handshake::read(&request)?)));
    let ((permit, grant), handshake) = match admitted {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal.respond(&state, &request),
    };
    // The Go operator's client sends bare payloads: it asks to resume on
    // the upgrade, and a refusal is an HTTP status.
    let door = match (door, resume_query(&request)) {
        (Door::DeviceConnect { device_id }, Some(resume)) => {
            let (token, received) = match resume {
                Ok(resume) => resume,
                Err(refusal) => return refusal.respond(&state, &request),
            };
            let claimed = state.core.resumes.claim(
                &token,
                ResumeDoor::DeviceConnect,
                Some(&device_id),
                crate::door::now(),
            );
            match claimed {
                Ok(claim) => Door::Resume { claim, received },
                Err(refusal) => return crate::http::refuse_resume(&state, &request, &refusal),
            }
        }
        (door, _) => door,
    };
    let on_upgrade = hyper::upgrade::on(&mut request);
    if let Some(upgrading) = request.extensions().get::<Upgrading>() {
        upgrading.0.store(true, Ordering::Release);
    }
    let span = connection_span(endpoint, peer);
    let task = serve(state.clone(), door, grant, permit, on_upgrade);
    state.tracker.spawn(task.instrument(span));
    handshake.response()
}

/// The checks before the handshake, in PROTOCOL.md's order (Refusals
/// before the upgrade): origin (403), token (401), shutdown (503),
/// connection limits (503, 429). The permit holds the connection's place;
/// the grant is what its token allows.
fn admit(
    state: &ServerState,
    peer: SocketAddr,
    request: &Request,
    endpoint: Endpoint,
    authorized: Option<Grant>,
) -> Result<(Permit, Grant), Refusal> {
    if let Err(origin) = state.config.allowed_origins.check(request.headers()) {
        tracing::debug!(%peer, %origin, "the origin is not allowed");
        return Err(Refusal::ForbiddenOrigin);
    }
    let grant = match authorized {
        Some(grant) => grant,
        None => {
            let role = match endpoint {
                Endpoint::RegisterDevice => crate::auth::Role::Device,
                Endpoint::ConnectClient | Endpoint::DeviceConnect | Endpoint::Adb => {
                    crate::auth::Role::Client
                }
            };
            authorize(state, role, request)?
        }
    };
    if state.draining.is_cancelled() {
        return Err(Refusal::ShuttingDown);
    }
    let permit = state
        .limiter
        .try_acquire(peer.ip())
        .map_err(Refusal::from)?;
    Ok((permit, grant))
}

/// A valid websocket handshake request, as far as the answer needs it.
#[derive(Debug)]
struct Handshake {
    accept: String,
    /// The client offered Cuttlefish's subprotocol; it is echoed.
    subprotocol: bool,
}

impl Handshake {
    /// Checks the upgrade request (RFC 6455 §4.2.1): 426 when it is not a
    /// websocket upgrade of version 13, or comes in HTTP/1.0, whose
    /// Upgrade a server ignores (RFC 9110 §7.8); 400 without a key, or
    /// with one that is not 16 bytes in base64.
    fn read(request: &Request) -> Result<Self, Refusal> {
        let headers = request.headers();
        let is_upgrade = header_has_token(headers, header::CONNECTION, "upgrade")
            && header_has_token(headers, header::UPGRADE, "websocket");
        if !is_upgrade || request.version() < axum::http::Version::HTTP_11 {
            return Err(Refusal::NotAnUpgrade);
        }
        if headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_none_or(|v| v.as_bytes() != b"13")
        {
            return Err(Refusal::WrongVersion);
        }
        let key = headers
            .get(header::SEC_WEBSOCKET_KEY)
            .ok_or(Refusal::MissingKey)?;
        if !is_websocket_key(key.as_bytes()) {
            return Err(Refusal::BadKey);
        }
        Ok(Self {
            accept: derive_accept_key(key.as_bytes()),
            subprotocol: header_has_token(
                headers,
                header::SEC_WEBSOCKET_PROTOCOL,
                protocol::SUBPROTOCOL,
            ),
        })
    }

    /// The 101 answer.
    fn response(self) -> Response {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) = HeaderValue::from_str(&self.accept) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        if self.subprotocol {
            headers.insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(protocol::SUBPROTOCOL),
            );
        }
        response
    }
}

/// Whether `key` is a `Sec-WebSocket-Key`: 16 bytes in base64, so 24
/// characters (RFC 6455 §4.1, §4.2.1).
fn is_websocket_key(key: &[u8]) -> bool {
    use base64::Engine as _;
    key.len() == 24
        && base64::engine::general_purpose::STANDARD
            .decode(key)
            .is_ok_and(|bytes| bytes.len() == 16)
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

/// The span every line of one connection is logged in; the session fills
/// in the ids.
fn connection_span(endpoint: Endpoint, peer: SocketAddr) -> Span {
    match endpoint {
        Endpoint::RegisterDevice => info_span!("device", %peer, device_id = field::Empty),
        Endpoint::Adb => info_span!("adb", %peer, device_id = field::Empty),
        Endpoint::ConnectClient | Endpoint::DeviceConnect => {
            info_span!("client", %peer, device_id = field::Empty, client_id = field::Empty)
        }
    }
}

/// The connection's task: waits for the upgrade, then drives a device or
/// client session over the socket until it ends.
///
/// A plain function returning an `async move` block, like `drive`, so the
/// task's state holds its arguments once.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would hold its arguments twice in every idle connection"
)]
fn serve(
    state: Arc<ServerState>,
    door: Door,
    grant: Grant,
    permit: Permit,
    on_upgrade: OnUpgrade,
) -> impl Future<Output = ()> {
    async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                warn!(error = %e, "websocket upgrade failed");
                return;
            }
        };
        let ws_config = match &door {
            Door::AdbBridge { .. } => state
                .ws_config
                .max_message_size(Some(adb::ADB_MESSAGE_LIMIT))
                .max_frame_size(Some(adb::ADB_MESSAGE_LIMIT)),
            _ => state.ws_config,
        };
        let ws = WebSocketStream::from_raw_socket(
            ReadAhead::new(TokioIo::new(upgraded)),
            Role::Server,
            Some(ws_config),
        )
        .await;
        let endpoint = door.endpoint();
        let core = state.core.clone();
        let keepalive = Keepalive {
            idle: Some(state.config.idle_timeout),
            ping: Some(state.config.ping_interval),
        };
        let now = crate::door::now();
        let socket = Socket { ws, permit };
        match door {
            Door::RegisterDevice => {
                let session = DeviceSession::new(core.clone(), core.outbox(), now)
                    .with_grant(grant.clone())
                    .resumable_on(ResumeDoor::RegisterDevice);
                let conn = Connection::new(session, keepalive, now);
                connection::drive(socket, conn, &state, Dialect::Seed, endpoint, grant).await;
            }
            Door::ConnectClient => {
                let session = ClientSession::new(core.clone(), core.outbox(), now)
                    .with_grant(grant.clone())
                    .resumable_on(ResumeDoor::ConnectClient);
                let conn = Connection::new(session, keepalive, now);
                connection::drive(socket, conn, &state, Dialect::Seed, endpoint, grant).await;
            }
            Door::DeviceConnect { device_id } => {
                // The device may have left since the check before the
                // upgrade: the session then says `Device not found`.
                let session = ClientSession::with_bare_payloads(
                    core.clone(),
                    core.outbox(),
                    &device_id,
                    grant.clone(),
                    now,
                );
                let conn = Connection::new(session, keepalive, now);
                connection::drive(socket, conn, &state, Dialect::GoOperator, endpoint, grant).await;
            }
            Door::Resume { claim, received } => {
                if let Err((socket, refusal)) =
                    claim.deliver(Box::new(socket), received, Some(grant))
                {
                    // The session ended between the claim and the upgrade.
                    if let Ok(mut socket) =
                        socket.downcast::<Socket<ReadAhead<TokioIo<hyper::upgrade::Upgraded>>>>()
                    {
                        connection::refuse(&mut socket.ws, &state, &refusal).await;
                    }
                }
            }
            Door::AdbBridge { adb } => {
                let gauge = state.core.metrics.connections(endpoint);
                gauge.inc();
                let Socket { ws, permit } = socket;
                adb::bridge(ws, adb, state.shutdown.clone(), grant.expires()).await;
                gauge.dec();
                drop(permit);
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::is_websocket_key;

    #[test]
    fn a_key_is_16_bytes_in_base64() {
        // RFC 6455 §1.3's example.
        assert!(is_websocket_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!is_websocket_key(b""));
        assert!(!is_websocket_key(b"abc"));
        assert!(!is_websocket_key(b"########################"));
        // 24 characters, but 17 bytes.
        assert!(!is_websocket_key(b"AAAAAAAAAAAAAAAAAAAAAAA="));
        // 16 bytes, without the padding.
        assert!(!is_websocket_key(b"dGhlIHNhbXBsZSBub25jZQ"));
        assert!(!is_websocket_key(&[b'A'; 65_536]));
    }
}
