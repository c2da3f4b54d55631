//! The device's own web page (`--device-port`), as a Cuttlefish device
//! serves its files for the operator's `/devices/{id}/files/` proxy: on
//! 127.0.0.1 only, GET and HEAD only.
//!
//! - `/` (or `/index.html`): the device's id, its displays with the
//!   touches each received, its audio streams, what the screens show, and
//!   a link to the server's web client connected to this device.
//! - `/device_info.json`: the `device_info` it registered with.
//! - `/status.json`: the same as the page, as JSON.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use anyhow::{Context as _, Result};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tracing::{debug, info};

use crate::live::Screens;
use crate::shape::Shape;

/// What the page shows.
#[derive(Debug)]
pub struct Page {
    pub device_id: String,
    pub device_info: String,
    pub shape: Arc<Shape>,
    /// What the displays show: "live VP8 (libvpx …)", "the clip FILE", "no video".
    pub video: String,
    pub screens: Option<Arc<Screens>>,
}

/// Binds 127.0.0.1:`port` (0: any free port) and serves `page` for the
/// life of the process; the bound port.
pub async fn serve(port: u16, page: Page) -> Result<u16> {
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .await
        .with_context(|| format!("cannot listen on 127.0.0.1:{port} for --device-port"))?;
    let port = listener.local_addr()?.port();
    info!(port, "device page on 127.0.0.1");
    let page = Arc::new(page);
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    debug!(error = %e, "device page: accept failed");
                    continue;
                }
            };
            let page = Arc::clone(&page);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let response = answer(&page, &request);
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    debug!(%peer, error = %e, "device page connection ended");
                }
            });
        }
    });
    Ok(port)
}

fn answer<B>(page: &Page, request: &Request<B>) -> Response<Full<Bytes>> {
    let head = request.method() == Method::HEAD;
    if request.method() != Method::GET && !head {
        let mut response = respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET or HEAD\n".into(),
            false,
        );
        response
            .headers_mut()
            .insert(ALLOW, "GET, HEAD".parse().expect("a header value"));
        return response;
    }
    match request.uri().path() {
        "/" | "/index.html" => respond(
            StatusCode::OK,
            "text/html; charset=utf-8",
            page.html(),
            head,
        ),
        "/device_info.json" => respond(
            StatusCode::OK,
            "application/json",
            page.device_info.clone(),
            head,
        ),
        "/status.json" => respond(
            StatusCode::OK,
            "application/json",
            page.status().to_string(),
            head,
        ),
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".into(),
            head,
        ),
    }
}

fn respond(
    status: StatusCode,
    content_type: &str,
    body: String,
    head: bool,
) -> Response<Full<Bytes>> {
    let length = body.len();
    let body = if head {
        Bytes::new()
    } else {
        Bytes::from(body)
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, content_type.parse().expect("a header value"));
    headers.insert(CACHE_CONTROL, "no-store".parse().expect("a header value"));
    headers.insert(hyper::header::CONTENT_LENGTH, length.into());
    response
}

impl Page {
    fn status(&self) -> Value {
        let displays: Vec<Value> = self
            .shape
            .displays
            .iter()
            .map(|display| {
                json!({
                    "stream_id": display.stream_id,
                    "x_res": display.width,
                    "y_res": display.height,
                    "touches": self.screens.as_ref().map(|s| s.touches(&display.stream_id)),
                })
            })
            .collect();
        json!({
            "device_id": self.device_id,
            "displays": displays,
            "audio_streams": self.shape.audio_streams,
            "video": self.video,
        })
    }

    fn html(&self) -> String {
        let id = escape(&self.device_id);
        let mut rows = String::new();
        for display in &self.shape.displays {
            let touches = self.screens.as_ref().map_or_else(
                || "-".to_owned(),
                |s| s.touches(&display.stream_id).to_string(),
            );
            let _ = write!(
                rows,
                "<tr><td>{}</td><td>{}×{}</td><td>{touches}</td></tr>",
                escape(&display.stream_id),
                display.width,
                display.height
            );
        }
        let audio = if self.shape.audio_streams.is_empty() {
            "none".to_owned()
        } else {
            escape(&self.shape.audio_streams.join(", "))
        };
        // The link goes to the server's root, which is where this page is
        // proxied from: its web client, connected to this device.
        let link = form_urlencoded::byte_serialize(self.device_id.as_bytes()).collect::<String>();
        format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <title>fake-device {id}</title></head><body>\
             <h1>fake-device <span id=\"device-id\">{id}</span></h1>\
             <p>A fake Cuttlefish device. Its screens show: {video}.</p>\
             <table id=\"displays\"><tr><th>display</th><th>resolution</th><th>touches</th></tr>{rows}</table>\
             <p>Audio: {audio}.</p>\
             <p><a id=\"connect\" href=\"/?deviceId={link}\">Open it in the web client</a> · \
             <a href=\"device_info.json\">device_info.json</a> · <a href=\"status.json\">status.json</a></p>\
             </body></html>\n",
            video = escape(&self.video),
        )
    }
}

/// `text` safe inside HTML.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shape;

    fn page() -> Page {
        let info = shape::default_info(2);
        let shape = shape::shape_of(&info).unwrap();
        Page {
            device_id: "cvd-<1>".into(),
            device_info: info.to_string(),
            shape: Arc::new(shape),
            video: "no video".into(),
            screens: None,
        }
    }

    fn get(page: &Page, method: Method, path: &str) -> (StatusCode, String) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap();
        let response = answer(page, &request);
        let status = response.status();
        let body = body_of(response);
        (status, body)
    }

    /// The body of a `Full` response, which is ready at once.
    fn body_of(response: Response<Full<Bytes>>) -> String {
        use http_body_util::BodyExt as _;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let bytes = runtime
            .block_on(response.into_body().collect())
            .unwrap()
            .to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn the_page_lists_the_displays_and_escapes_the_id() {
        let page = page();
        let (status, html) = get(&page, Method::GET, "/");
        assert_eq!(status, StatusCode::OK);
        assert!(
            html.contains("cvd-&lt;1&gt;") && !html.contains("cvd-<1>"),
            "{html}"
        );
        assert!(
            html.contains("<td>display_1</td><td>720×1280</td>"),
            "{html}"
        );
        assert!(html.contains("href=\"/?deviceId=cvd-%3C1%3E\""), "{html}");
        let (_, info) = get(&page, Method::GET, "/device_info.json");
        assert_eq!(info, page.device_info);
        let (_, status) = get(&page, Method::GET, "/status.json");
        let status: Value = serde_json::from_str(&status).unwrap();
        assert_eq!(status["displays"][1]["stream_id"], "display_1");
        assert_eq!(status["audio_streams"][0], "audio_0");
    }

    #[test]
    fn the_touches_each_display_received_show() {
        let mut page = page();
        let screens = Arc::new(Screens::start("cvd-1", &page.shape).unwrap());
        screens.touch("display_1", crate::screen::Touch { x: 1, y: 2 }, true);
        page.screens = Some(screens);
        let (_, html) = get(&page, Method::GET, "/index.html");
        assert!(
            html.contains("<td>display_0</td><td>720×1280</td><td>0</td>"),
            "{html}"
        );
        assert!(
            html.contains("<td>display_1</td><td>720×1280</td><td>1</td>"),
            "{html}"
        );
        let (_, status) = get(&page, Method::GET, "/status.json");
        let status: Value = serde_json::from_str(&status).unwrap();
        assert_eq!(status["displays"][1]["touches"], 1);
    }

    #[test]
    fn only_get_and_head_of_known_paths() {
        let page = page();
        assert_eq!(
            get(&page, Method::POST, "/").0,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            get(&page, Method::GET, "/../etc/passwd").0,
            StatusCode::NOT_FOUND
        );
        let (status, body) = get(&page, Method::HEAD, "/");
        assert_eq!((status, body.as_str()), (StatusCode::OK, ""));
    }
}
