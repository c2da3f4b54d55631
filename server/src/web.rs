//! The built-in web client, embedded in the binary (no CDN, nothing
//! fetched): `GET /` is its page, `GET /web-client.js` its script, and
//! `GET /js/server_connector.js` this server's connector for Cuttlefish's
//! own web client. With `--assets-dir`, that directory is served instead.

use axum::http::{HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};

const INDEX_HTML: &str = include_str!("../web/index.html");
const WEB_CLIENT_JS: &str = include_str!("../web/web-client.js");
/// This server's implementation of Cuttlefish's server connector interface.
pub(crate) const SERVER_CONNECTOR_JS: &str = include_str!("../web/server_connector.js");

/// The built-in file at `path`, if there is one.
/// This server's connector script, as a response.
pub(crate) fn server_connector() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/javascript; charset=utf-8"),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        SERVER_CONNECTOR_JS,
    )
        .into_response()
}

pub(crate) fn serve(method: &Method, path: &str) -> Option<Response> {
    if method != Method::GET && method != Method::HEAD {
        return None;
    }
    let (body, content_type) = match path {
        "/" | "/index.html" => (INDEX_HTML, "text/html; charset=utf-8"),
        "/web-client.js" => (WEB_CLIENT_JS, "text/javascript; charset=utf-8"),
        // The reference layout: Cuttlefish's client.html?deviceId=ID
        // imports it from js/.
        "/js/server_connector.js" => (SERVER_CONNECTOR_JS, "text/javascript; charset=utf-8"),
        _ => return None,
    };
    let body = if method == Method::HEAD { "" } else { body };
    Some(
        (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
                (
                    header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                ),
            ],
            body,
        )
            .into_response(),
    )
}
