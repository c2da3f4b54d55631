//! `--webui_url URL`: every request this server does not route itself
//! goes on to another web server, as the Go operator's `--webui_url` does
//! (PROTOCOL.md, "The web UI proxy"). Cuttlefish hosts use it to put
//! their web UI beside the operator's API on one origin.
//!
//! Any method, the body streamed both ways; a websocket (or other)
//! upgrade is tunnelled, the tunnel counting against `--max-connections`.
//! The request goes on with its headers but those of one hop, `Host` set
//! to the web UI's and the `X-Forwarded-` headers added; the answer comes
//! back as given. Only `http://` web UIs: it is a server of the same host
//! or network, as the Go operator's is.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use tracing::{Instrument, debug, info, info_span};

use crate::ServerState;
use crate::config::WebUiUrl;
use crate::http::{Refusal, Upgrading, strip_hop_by_hop};

/// The upgrade a request asks for (`Connection: upgrade` and `Upgrade`).
fn requested_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    connection_upgrade
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

/// Answers a request no route of this server took, from the web UI.
pub(crate) async fn serve(
    state: Arc<ServerState>,
    webui: &WebUiUrl,
    peer: SocketAddr,
    tls: bool,
    mut request: Request,
) -> Response {
    let upgrade = requested_upgrade(request.headers());
    // A tunnel is a connection like any other: it needs a place.
    let permit = match &upgrade {
        Some(_) if state.draining.is_cancelled() => {
            return Refusal::ShuttingDown.respond(&state, &request);
        }
        Some(_) => match state.limiter.try_acquire(peer.ip()) {
            Ok(permit) => Some(permit),
            Err(refusal) => return Refusal::from(refusal).respond(&state, &request),
        },
        None => None,
    };
    let downstream = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut request));
    let path = request.uri().path();
    let target = match request.uri().query() {
        Some(query) => format!("{}{path}?{query}", webui.prefix()),
        None => format!("{}{path}", webui.prefix()),
    };
    let (mut parts, body) = request.into_parts();
    let original_host = parts.headers.get(header::HOST).cloned();
    strip_hop_by_hop(&mut parts.headers);
    let headers = &mut parts.headers;
    if let Ok(host) = HeaderValue::from_str(webui.authority().as_str()) {
        headers.insert(header::HOST, host);
    }
    forwarded_for(headers, peer, original_host, tls);
    if let Some(protocol) = &upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol.clone());
    }
    let mut forwarded = match hyper::Request::builder()
        .method(parts.method)
        .uri(&target)
        .body(body)
    {
        Ok(request) => request,
        Err(e) => return bad_gateway(webui, &e.to_string()),
    };
    *forwarded.headers_mut() = parts.headers;

    let mut answer = match send(&state, webui, forwarded).await {
        Ok(answer) => answer,
        Err(e) => {
            debug!(%webui, path = %target, error = %e, "the web UI did not answer");
            return bad_gateway(webui, &e);
        }
    };
    if answer.status() == StatusCode::SWITCHING_PROTOCOLS
        && let (Some(downstream), Some(permit)) = (downstream, permit)
    {
        let upstream = hyper::upgrade::on(&mut answer);
        if let Some(upgrading) = parts.extensions.get::<Upgrading>() {
            upgrading
                .0
                .store(true, std::sync::atomic::Ordering::Release);
        }
        let shutdown = state.shutdown.clone();
        let span = info_span!("webui_tunnel", %peer, path = %target);
        state.tracker.spawn(
            async move {
                let (Ok(upstream), Ok(downstream)) = tokio::join!(upstream, downstream) else {
                    debug!("the upgrade did not complete");
                    return;
                };
                let (mut upstream, mut downstream) =
                    (TokioIo::new(upstream), TokioIo::new(downstream));
                tokio::select! {
                    copied = tokio::io::copy_bidirectional(&mut downstream, &mut upstream) => {
                        match copied {
                            Ok((up, down)) => info!(bytes_to_webui = up, bytes_from_webui = down, "tunnel closed"),
                            Err(e) => debug!(error = %e, "tunnel failed"),
                        }
                    }
                    () = shutdown.cancelled() => info!("tunnel closed at shutdown"),
                }
                drop(permit);
            }
            .instrument(span),
        );
        return answer.map(|_| Body::empty());
    }
    let (mut parts, body) = answer.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    (parts, Body::new(body)).into_response()
}

/// Adds this hop to `X-Forwarded-For`, and says the host and scheme the
/// client asked for.
fn forwarded_for(headers: &mut HeaderMap, peer: SocketAddr, host: Option<HeaderValue>, tls: bool) {
    let chain = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(before) => format!("{before}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    if let Ok(chain) = HeaderValue::from_str(&chain) {
        headers.insert("x-forwarded-for", chain);
    }
    if let Some(host) = host {
        headers.insert("x-forwarded-host", host);
    }
    headers.insert(
        "x-forwarded-proto",
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
}

/// One request on a new connection to the web UI; connecting and the
/// answer's head are bounded by `--handshake-timeout`, the body is not.
async fn send(
    state: &ServerState,
    webui: &WebUiUrl,
    request: hyper::Request<Body>,
) -> Result<hyper::Response<hyper::body::Incoming>, String> {
    let deadline = tokio::time::Instant::now() + state.config.handshake_timeout;
    let stream = tokio::time::timeout_at(
        deadline,
        tokio::net::TcpStream::connect(webui.host_and_port()),
    )
    .await
    .map_err(|_| "no connection within the handshake timeout".to_owned())?
    .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    // The connection does the I/O for as long as the body streams, or the
    // tunnel is open.
    state.tracker.spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            debug!(error = %e, "the web UI connection ended");
        }
    });
    tokio::time::timeout_at(deadline, sender.send_request(request))
        .await
        .map_err(|_| "no answer within the handshake timeout".to_owned())?
        .map_err(|e| e.to_string())
}

fn bad_gateway(webui: &WebUiUrl, why: &str) -> Response {
    crate::http::bad_gateway(
        "op-webui",
        &format!("Bad gateway: the web UI at {webui}: {why}"),
    )
}
