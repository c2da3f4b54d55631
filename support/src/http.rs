//! One HTTP/1.1 request and its whole answer, over any byte stream: what
//! the tools need for `/devices`, `/metrics` and `/infra_config`, and what
//! the tests need to check statuses, headers and bodies. hyper's client
//! does the framing (chunked bodies included), so no caller parses HTTP.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::header::{CONTENT_TYPE, HOST, HeaderMap, HeaderName, HeaderValue};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to {address}: {source}")]
    Connect {
        address: String,
        source: std::io::Error,
    },
    #[error("the request cannot be sent: {0}")]
    Request(#[from] hyper::http::Error),
    /// The peer answered, but not in HTTP/1.1: often a TLS server spoken
    /// to in plain text.
    #[error("the server did not answer HTTP ({0}); if it serves TLS, use https:// or wss://")]
    NotHttp(hyper::Error),
    #[error("the HTTP exchange failed: {0}")]
    Exchange(hyper::Error),
    #[error("cannot start a runtime for a blocking request: {0}")]
    Runtime(std::io::Error),
}

impl From<hyper::Error> for Error {
    fn from(error: hyper::Error) -> Self {
        if error.is_parse() {
            Self::NotHttp(error)
        } else {
            Self::Exchange(error)
        }
    }
}

/// A request to send: `GET path` unless changed.
#[derive(Debug, Clone)]
pub struct Request {
    method: hyper::Method,
    path: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Request {
    /// `GET path` (path and query, e.g. `/devices?token=t`).
    pub fn get(path: &str) -> Self {
        Self {
            method: hyper::Method::GET,
            path: path.to_owned(),
            headers: Vec::new(),
            body: String::new(),
        }
    }

    /// `POST path` with a JSON body.
    pub fn post_json(path: &str, body: &str) -> Self {
        Self {
            method: hyper::Method::POST,
            path: path.to_owned(),
            headers: vec![(CONTENT_TYPE.to_string(), "application/json".to_owned())],
            body: body.to_owned(),
        }
    }

    /// Adds a header (a `Host` given here replaces the default one).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    fn build(self, host: &str) -> Result<hyper::Request<Full<Bytes>>, Error> {
        let mut request = hyper::Request::builder()
            .method(self.method)
            .uri(self.path)
            .body(Full::new(Bytes::from(self.body)))?;
        let headers = request.headers_mut();
        headers.insert(
            HOST,
            HeaderValue::from_str(host).map_err(hyper::http::Error::from)?,
        );
        for (name, value) in self.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(hyper::http::Error::from)?;
            let value = HeaderValue::from_str(&value).map_err(hyper::http::Error::from)?;
            if name == HOST {
                headers.insert(name, value);
            } else {
                headers.append(name, value);
            }
        }
        Ok(request)
    }
}

/// The whole answer: status, headers and the body as text (bytes that are
/// not UTF-8 are replaced, as a person reading it would want).
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Response {
    /// The first value of header `name`, if present and readable as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)?.to_str().ok()
    }
}

/// Sends `request` over `stream` (already connected, TLS or not) to `host`
/// (the `Host` header's value) and reads the whole answer. The connection
/// is used for this one request.
pub async fn send<S>(stream: S, host: &str, request: Request) -> Result<Response, Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let request = request.build(host)?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // The connection does the I/O while the sender waits for its answer;
    // it ends when the exchange does.
    let exchange = async move {
        let response = sender.send_request(request).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok::<_, Error>(Response {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    tokio::pin!(exchange);
    tokio::select! {
        response = &mut exchange => response,
        ended = connection => match ended {
            // The connection finished first (it may, once the body is in):
            // the exchange then has its answer already or fails at once.
            Ok(()) => exchange.await,
            Err(e) => Err(e.into()),
        },
    }
}

/// One HTTP/1.1 connection kept open for request after request, as a
/// browser polling a server keeps its connection.
#[derive(Debug)]
pub struct KeptAlive {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: String,
}

impl KeptAlive {
    /// Opens the connection over `stream` to `host` (the `Host` header).
    pub async fn open<S>(stream: S, host: &str) -> Result<Self, Error>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        // The connection's I/O runs beside the requests until it closes.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self {
            sender,
            host: host.to_owned(),
        })
    }

    /// Sends `request` and reads its whole answer.
    pub async fn send(&mut self, request: Request) -> Result<Response, Error> {
        self.sender.ready().await?;
        let response = self.sender.send_request(request.build(&self.host)?).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Response {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// `request` to `address` over plain TCP.
pub async fn request(address: SocketAddr, request: Request) -> Result<Response, Error> {
    let stream = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|source| Error::Connect {
            address: address.to_string(),
            source,
        })?;
    send(stream, &address.to_string(), request).await
}

/// `GET path` from `address` over plain TCP.
pub async fn get(address: SocketAddr, path: &str) -> Result<Response, Error> {
    request(address, Request::get(path)).await
}

/// [`get`] for code that is not async (a `#[test]`, a build script's
/// checks): runs the request on a runtime of its own.
pub fn get_blocking(address: SocketAddr, path: &str) -> Result<Response, Error> {
    request_blocking(address, Request::get(path))
}

/// [`request`] for code that is not async, on a runtime of its own.
pub fn request_blocking(address: SocketAddr, sent: Request) -> Result<Response, Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)?
        .block_on(request(address, sent))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    /// A server that reads one request head, answers `reply` as is, and
    /// hands back the request it read.
    async fn answer_once(reply: &'static str) -> (SocketAddr, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buffer = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut buffer).await.unwrap();
                assert!(n > 0, "the client closed before a full head");
                request.extend_from_slice(&buffer[..n]);
            }
            stream.write_all(reply.as_bytes()).await.unwrap();
            stream.shutdown().await.unwrap();
            String::from_utf8(request).unwrap()
        });
        (address, task)
    }

    #[tokio::test]
    async fn reads_a_chunked_body_and_sends_its_headers() {
        let (address, server) = answer_once(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n\
             5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n",
        )
        .await;
        let response = request(
            address,
            Request::get("/devices").header("Authorization", "Bearer t"),
        )
        .await
        .unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.header("content-type"), Some("text/plain"));
        assert_eq!(response.body, "hello, world");
        let sent = server.await.unwrap();
        assert!(sent.starts_with("GET /devices HTTP/1.1\r\n"), "{sent}");
        assert!(
            sent.to_ascii_lowercase()
                .contains("authorization: bearer t\r\n"),
            "{sent}"
        );
        assert!(
            sent.to_ascii_lowercase()
                .contains(&format!("host: {address}\r\n")),
            "{sent}"
        );
    }

    #[tokio::test]
    async fn reads_a_body_that_ends_with_the_connection() {
        let (address, _server) =
            answer_once("HTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\nno such page").await;
        let response = get(address, "/nothing").await.unwrap();
        assert_eq!(response.status, 404);
        assert_eq!(response.body, "no such page");
    }

    #[tokio::test]
    async fn a_kept_alive_connection_carries_several_requests() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut seen = 0;
            let mut pending = Vec::new();
            let mut buffer = [0u8; 1024];
            while seen < 2 {
                let n = stream.read(&mut buffer).await.unwrap();
                assert!(n > 0);
                pending.extend_from_slice(&buffer[..n]);
                while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                    pending.drain(..end + 4);
                    seen += 1;
                    let body = format!("answer {seen}");
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    stream.write_all(reply.as_bytes()).await.unwrap();
                }
            }
        });
        let stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let mut kept = KeptAlive::open(stream, &address.to_string()).await.unwrap();
        assert_eq!(
            kept.send(Request::get("/a")).await.unwrap().body,
            "answer 1"
        );
        assert_eq!(
            kept.send(Request::get("/b")).await.unwrap().body,
            "answer 2"
        );
        server.await.unwrap();
    }

    #[tokio::test]
    async fn an_answer_that_is_not_http_says_so() {
        let (address, _server) = answer_once("\x16\x03\x01 this is a TLS record\r\n\r\n").await;
        let error = get(address, "/").await.unwrap_err();
        assert!(matches!(error, Error::NotHttp(_)), "{error}");
        assert!(
            error.to_string().contains("use https:// or wss://"),
            "{error}"
        );
    }
}
