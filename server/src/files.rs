//! The device's own pages, `GET /devices/{id}/files/{path}` (PROTOCOL.md,
//! "The device's page"): proxied to the web server the device named with
//! `device_port` in its `register`, on 127.0.0.1 only, as the Go operator
//! does; for a device without one, served from `--assets-dir`.
//!
//! Only GET and HEAD. The path may not climb (`.` or `..` segments, also
//! percent-encoded). The request goes on without its cookies, its
//! `Authorization` (this server's token is not the device's business) and
//! its `X-` headers, as the Go operator strips them; the answer comes back
//! as the device gave it, its body streamed.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use tracing::debug;

use crate::ServerState;
use crate::core::ServerError;
use crate::http::{bad_gateway, json_error, strip_hop_by_hop};

/// Answers `GET /devices/{device_id}/files/{path}`.
pub(crate) async fn serve(
    state: Arc<ServerState>,
    device_id: String,
    request: Request,
) -> Response {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method not allowed: the device's files are read with GET",
        );
    }
    // The path as the client wrote it (still percent-encoded), after
    // `/devices/{id}/files`.
    let path = request
        .uri()
        .path()
        .splitn(4, '/')
        .nth(3)
        .and_then(|rest| rest.strip_prefix("files"))
        .unwrap_or("/")
        .to_owned();
    if climbs(&path) {
        return json_error(
            StatusCode::BAD_REQUEST,
            &format!("Invalid path: {path} has a . or .. segment"),
        );
    }
    let Some(port) = state.core.registry.device_port(&device_id) else {
        return json_error(
            StatusCode::NOT_FOUND,
            &ServerError::DeviceNotFound(device_id).to_string(),
        );
    };
    let Some(port) = port else {
        if let Some(dir) = &state.config.assets_dir
            && let Some(response) = crate::assets::serve(dir, request.method(), &path).await
        {
            return response;
        }
        return json_error(
            StatusCode::NOT_FOUND,
            &format!("Not found: the device {device_id} has no web server (no device_port)"),
        );
    };
    match proxy(&state, port, &path, request).await {
        Ok(response) => response,
        Err(e) => {
            debug!(%device_id, port, error = %e, "the device's web server did not answer");
            bad_gateway(
                "op-device",
                &format!("Bad gateway: the device's web server at 127.0.0.1:{port}: {e}"),
            )
        }
    }
}

/// Whether a path has a `.` or `..` segment, percent-encoded or not.
fn climbs(path: &str) -> bool {
    path.split('/').any(|segment| {
        let decoded: Vec<u8> = percent_decoded(segment);
        decoded == b"." || decoded == b".."
    })
}

fn percent_decoded(segment: &str) -> Vec<u8> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(&h), Some(&l)) = (bytes.get(i + 1), bytes.get(i + 2))
            && let (Some(h), Some(l)) = (hex(h), hex(l))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// Sends the request to 127.0.0.1:`port` and hands back its answer, the
/// body streaming. Connecting and the answer's head are bounded by
/// `--handshake-timeout`.
async fn proxy(
    state: &ServerState,
    port: u16,
    path: &str,
    request: Request,
) -> Result<Response, String> {
    let deadline = tokio::time::Instant::now() + state.config.handshake_timeout;
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let stream = tokio::time::timeout_at(deadline, tokio::net::TcpStream::connect(address))
        .await
        .map_err(|_| "no connection within the handshake timeout".to_owned())?
        .map_err(|e| e.to_string())?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    // The connection does the I/O for as long as the body streams.
    state.tracker.spawn(async move {
        if let Err(e) = connection.await {
            debug!(error = %e, "the device's web server connection ended");
        }
    });

    let (mut parts, _) = request.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let target = match parts.uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    let mut forwarded = hyper::Request::builder()
        .method(parts.method)
        .uri(target)
        .body(Body::empty())
        .map_err(|e| e.to_string())?;
    let headers = forwarded.headers_mut();
    for (name, value) in &parts.headers {
        let dropped = name == header::HOST
            || name == header::COOKIE
            || name == header::AUTHORIZATION
            || name.as_str().starts_with("x-");
        if !dropped {
            headers.append(name.clone(), value.clone());
        }
    }
    if let Ok(host) = HeaderValue::from_str(&address.to_string()) {
        headers.insert(header::HOST, host);
    }
    let answer = tokio::time::timeout_at(deadline, sender.send_request(forwarded))
        .await
        .map_err(|_| "no answer within the handshake timeout".to_owned())?
        .map_err(|e| e.to_string())?;
    let (mut parts, body) = answer.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Ok((parts, Body::new(body)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_climb_are_found_however_they_are_written() {
        for path in [
            "/../x",
            "/a/..",
            "/./a",
            "/a/%2e%2e/b",
            "/%2E%2e",
            "/a/.%2e",
        ] {
            assert!(climbs(path), "{path}");
        }
        for path in [
            "/index.html",
            "/js/app.js",
            "/a/..b",
            "/a/%2e%2ex",
            "/.well-known/x",
        ] {
            assert!(!climbs(path), "{path}");
        }
    }
}
