//! Connecting to a signaling server: the URL, TLS, the token, and errors
//! that say what to do about them.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, Result, anyhow, bail};
use futures_util::StreamExt;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Uri};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::either::Either;

/// A connection to the server, plain or TLS.
pub type Stream = Either<TcpStream, TlsStream<TcpStream>>;
/// A websocket to the server.
pub type Socket = WebSocketStream<Stream>;

/// The TCP connection under a socket, plain or TLS.
pub fn tcp_stream(socket: &Socket) -> &TcpStream {
    match socket.get_ref() {
        Either::Left(tcp) => tcp,
        Either::Right(tls) => tls.get_ref().0,
    }
}

/// Why a connection to the server failed, and whether trying again later
/// can help (a server that is down may come back; a refused token will not
/// change).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ConnectError {
    pub message: String,
    pub retryable: bool,
}

impl ConnectError {
    fn retry(error: anyhow::Error) -> Self {
        Self {
            message: format!("{error:#}"),
            retryable: true,
        }
    }

    fn fatal(error: anyhow::Error) -> Self {
        Self {
            message: format!("{error:#}"),
            retryable: false,
        }
    }
}

/// How to reach the server; the flags both tools share.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectOptions {
    /// The server's base URL: ws://HOST:PORT or wss://HOST:PORT (http:// and
    /// https:// are taken to mean the same).
    #[arg(long, env = "SIGNALING_SERVER", default_value = "ws://127.0.0.1:8443")]
    pub server: String,

    /// Token to present (as Authorization: Bearer).
    #[arg(long, env = "SIGNALING_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Trust the server certificate(s) in this PEM file (for a self-signed
    /// server) instead of the public roots.
    #[arg(long, value_name = "FILE", conflicts_with = "insecure")]
    pub ca_cert: Option<PathBuf>,

    /// Do not check the server's certificate at all (development only).
    #[arg(long)]
    pub insecure: bool,
}

/// The endpoints a server URL must not end with.
const ENDPOINTS: [&str; 4] = [
    protocol::REGISTER_DEVICE_PATH,
    protocol::CONNECT_CLIENT_PATH,
    "/devices",
    "/infra_config",
];

/// The parts of the server URL.
#[derive(Debug, Clone)]
struct Target {
    tls: bool,
    host: String,
    port: u16,
    /// Path prefix under which the server's endpoints live (usually empty).
    base_path: String,
}

impl ConnectOptions {
    fn target(&self) -> Result<Target> {
        let uri: Uri = self
            .server
            .parse()
            .with_context(|| format!("--server {:?} is not a URL", self.server))?;
        let tls = match uri.scheme_str() {
            Some("ws" | "http") => false,
            Some("wss" | "https") => true,
            Some(other) => bail!(
                "--server {:?}: unsupported scheme {other:?}; use ws://HOST:PORT or wss://HOST:PORT",
                self.server
            ),
            None => bail!(
                "--server {:?} has no scheme; use ws://HOST:PORT or wss://HOST:PORT",
                self.server
            ),
        };
        let host = uri
            .host()
            .with_context(|| format!("--server {:?} names no host", self.server))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let base_path = uri.path().trim_end_matches('/').to_owned();
        // An endpoint's URL given as the server's: the tools add the
        // endpoint themselves.
        for endpoint in ENDPOINTS {
            if base_path.ends_with(endpoint) {
                let base = &self.server[..self.server.rfind(endpoint).unwrap_or(0)];
                bail!(
                    "--server {:?} names the endpoint {endpoint}; give the server's base URL \
                     ({base}), and the tools add the endpoint",
                    self.server
                );
            }
        }
        Ok(Target {
            tls,
            host,
            port,
            base_path,
        })
    }

    /// The websocket URL of an endpoint such as `/register_device`.
    pub fn endpoint_url(&self, path: &str) -> Result<String> {
        let target = self.target()?;
        let scheme = if target.tls { "wss" } else { "ws" };
        Ok(format!(
            "{scheme}://{}{}{path}",
            authority(&target),
            target.base_path
        ))
    }

    fn tls_connector(&self) -> Result<TlsConnector> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let config = if self.insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
                .with_no_client_auth()
        } else {
            let mut roots = rustls::RootCertStore::empty();
            match &self.ca_cert {
                Some(path) => {
                    let pem = std::fs::read(path)
                        .with_context(|| format!("cannot read --ca-cert {}", path.display()))?;
                    let mut found = 0;
                    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                        let cert = cert
                            .with_context(|| format!("--ca-cert {} is not PEM", path.display()))?;
                        roots.add(cert).with_context(|| {
                            format!("--ca-cert {} holds an unusable certificate", path.display())
                        })?;
                        found += 1;
                    }
                    if found == 0 {
                        bail!("--ca-cert {} holds no PEM certificate", path.display());
                    }
                }
                None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        Ok(TlsConnector::from(Arc::new(config)))
    }

    /// Opens a TCP (and, for wss, TLS) connection to the server, from
    /// `source` when given (a load generator spreads its connections over
    /// several loopback addresses, since one address has ~28,000 ports).
    async fn open_stream(&self, source: Option<IpAddr>) -> Result<(Stream, Target), ConnectError> {
        let target = self.target().map_err(ConnectError::fatal)?;
        let address = authority(&target);
        let connected = match source {
            None => TcpStream::connect((target.host.as_str(), target.port)).await,
            Some(source) => connect_from(source, &target).await,
        };
        let tcp = connected
            .map_err(|e| {
                ConnectError::retry(if e.kind() == std::io::ErrorKind::ConnectionRefused {
                    anyhow!("cannot connect to {address}: connection refused (is the server running, on this port?)")
                } else {
                    anyhow!("cannot connect to {address}: {e}")
                })
            })?;
        // Signaling messages are small and latency-bound.
        let _ = tcp.set_nodelay(true);
        if !target.tls {
            return Ok((Either::Left(tcp), target));
        }
        let name = ServerName::try_from(target.host.clone()).map_err(|_| {
            ConnectError::fatal(anyhow!("{:?} is not a valid TLS server name", target.host))
        })?;
        let connector = self.tls_connector().map_err(ConnectError::fatal)?;
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| tls_error(&e, &address))?;
        Ok((Either::Right(tls), target))
    }

    /// Opens a websocket to `path` (`/register_device` or `/connect_client`).
    pub async fn connect(&self, path: &str) -> Result<Socket, ConnectError> {
        self.connect_from(path, None).await
    }

    /// Opens a websocket to `path` from the local address `source`.
    pub async fn connect_from(
        &self,
        path: &str,
        source: Option<IpAddr>,
    ) -> Result<Socket, ConnectError> {
        self.connect_with(path, source, websocket_config()).await
    }

    /// Opens a websocket to `path` from `source` with these websocket
    /// settings (a load generator buffers its writes; the tools do not).
    pub async fn connect_with(
        &self,
        path: &str,
        source: Option<IpAddr>,
        config: WebSocketConfig,
    ) -> Result<Socket, ConnectError> {
        let url = self.endpoint_url(path).map_err(ConnectError::fatal)?;
        let (stream, target) = self.open_stream(source).await?;
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| ConnectError::fatal(e.into()))?;
        if let Some(token) = &self.token {
            let value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                ConnectError::fatal(anyhow!("the token has characters a header cannot carry"))
            })?;
            request.headers_mut().insert("Authorization", value);
        }
        match tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await {
            Ok((socket, _)) => Ok(socket),
            Err(e) => Err(self.handshake_error(e, &target, &url)),
        }
    }

    fn handshake_error(&self, error: WsError, target: &Target, url: &str) -> ConnectError {
        match error {
            WsError::Http(response) => {
                let status = response.status();
                let body = response
                    .body()
                    .as_ref()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
                    .and_then(|v| v["error"].as_str().map(str::to_owned));
                let said = body.map(|b| format!(": {b}")).unwrap_or_default();
                match status.as_u16() {
                    401 if self.token.is_none() => ConnectError::fatal(anyhow!(
                        "the server requires a token (HTTP 401{said}); pass --token"
                    )),
                    401 => ConnectError::fatal(anyhow!(
                        "the server refused the token (HTTP 401{said})"
                    )),
                    // A request the server cannot take (plain ws:// to a
                    // TLS port among them): the same one will not do.
                    400 => ConnectError::fatal(anyhow!("{url}: HTTP 400{said}")),
                    // An origin or a token's scope: asking again changes
                    // nothing.
                    403 => ConnectError::fatal(anyhow!("the server forbids it (HTTP 403{said})")),
                    404 => ConnectError::fatal(anyhow!(
                        "{url}: HTTP 404{said} (is --server the signaling server's base URL?)"
                    )),
                    _ => ConnectError::retry(anyhow!(
                        "the server refused the websocket: HTTP {status}{said}"
                    )),
                }
            }
            WsError::Protocol(_) | WsError::HttpFormat(_) if !target.tls => {
                ConnectError::fatal(anyhow!(
                    "{url}: the server did not answer as a websocket server; if it serves TLS, use wss://"
                ))
            }
            other => ConnectError::retry(anyhow!("websocket handshake with {url} failed: {other}")),
        }
    }

    /// An HTTP connection to the server kept open for many requests, from
    /// the local address `source`; `base_path` and `bearer` are what each
    /// request needs (the URL's base path, the token's header value).
    pub async fn http_connection(
        &self,
        source: Option<IpAddr>,
    ) -> Result<(support::http::KeptAlive, String, Option<String>)> {
        let (stream, target) = self.open_stream(source).await?;
        let kept = support::http::KeptAlive::open(stream, &authority(&target)).await?;
        let bearer = self.token.as_ref().map(|token| format!("Bearer {token}"));
        Ok((kept, target.base_path.clone(), bearer))
    }

    /// A GET of `path` (under the URL's base path, with the token), for
    /// `/devices`, `/metrics` and friends: its status and body.
    pub async fn http_get(&self, path: &str) -> Result<(u16, String)> {
        let (stream, target) = self.open_stream(None).await?;
        let mut request = support::http::Request::get(&format!("{}{path}", target.base_path));
        if let Some(token) = &self.token {
            request = request.header("Authorization", &format!("Bearer {token}"));
        }
        let response = support::http::send(stream, &authority(&target), request)
            .await
            .with_context(|| format!("GET {path} from {}", authority(&target)))?;
        Ok((response.status, response.body))
    }
}

/// Small buffers: signaling messages are small, and a load generator holds
/// thousands of these (tungstenite's default read buffer is 128 KiB). No
/// write buffer: every frame is written as it is sent.
pub fn websocket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

async fn connect_from(source: IpAddr, target: &Target) -> std::io::Result<TcpStream> {
    let mut last_error = None;
    for remote in tokio::net::lookup_host((target.host.as_str(), target.port)).await? {
        let socket = if remote.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.bind(SocketAddr::new(source, 0))?;
        match socket.connect(remote).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| std::io::Error::other("the server's host has no address")))
}

fn authority(target: &Target) -> String {
    if target.host.contains(':') {
        format!("[{}]:{}", target.host, target.port)
    } else {
        format!("{}:{}", target.host, target.port)
    }
}

fn tls_error(error: &std::io::Error, address: &str) -> ConnectError {
    if let Some(inner) = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        return match inner {
            // webpki names this one only in its Debug form.
            rustls::Error::InvalidCertificate(why)
                if format!("{why:?}").contains("CaUsedAsEndEntity") =>
            {
                ConnectError::fatal(anyhow!(
                    "the certificate of {address} is a CA certificate (basicConstraints \
                     CA:TRUE), which TLS clients refuse as a server's even with --ca-cert; \
                     the server needs one made with basicConstraints CA:FALSE (openssl req \
                     -x509 ... -addext basicConstraints=critical,CA:FALSE), or its \
                     --tls-self-signed"
                ))
            }
            rustls::Error::InvalidCertificate(why) => ConnectError::fatal(anyhow!(
                "the certificate of {address} is not trusted ({why:?}); pass --ca-cert FILE with \
                 the server's certificate, or --insecure for development"
            )),
            rustls::Error::InvalidMessage(_) => ConnectError::fatal(anyhow!(
                "TLS with {address} failed ({inner}); if the server serves plain ws://, use ws://"
            )),
            other => ConnectError::retry(anyhow!("TLS with {address} failed: {other}")),
        };
    }
    ConnectError::retry(anyhow!("TLS with {address} failed: {error}"))
}

/// `--insecure`: accepts any certificate, still checking the handshake
/// signatures so the connection itself is sound.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The server's close frame, as the error that ends a connection: the
/// tools tell from its code whether the session is over or held for a
/// resume ([`crate::resume::holds_session`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the server closed the connection ({code}): {reason}")]
pub struct ServerClosed {
    pub code: u16,
    pub reason: String,
}

/// The next text frame, skipping pings; `None` when the server closed.
/// A close frame from the server becomes a [`ServerClosed`] error naming
/// its code and reason.
pub async fn next_text(socket: &mut Socket) -> Result<Option<String>> {
    while let Some(message) = socket.next().await {
        match message? {
            Message::Text(text) => return Ok(Some(text.to_string())),
            Message::Close(Some(frame)) => {
                return Err(ServerClosed {
                    code: u16::from(frame.code),
                    reason: frame.reason.to_string(),
                }
                .into());
            }
            Message::Close(None) => return Ok(None),
            _ => {}
        }
    }
    Ok(None)
}
