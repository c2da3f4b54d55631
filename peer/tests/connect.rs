//! The tools' connection errors, against the real server: each usual
//! mistake gets a message that says what to do.

#![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

use std::net::SocketAddr;
use std::time::Duration;

use peer::signaling::ConnectOptions;
use signaling_server::ServerConfig;
use tokio::net::TcpListener;

fn options(server: String) -> ConnectOptions {
    ConnectOptions {
        server,
        token: None,
        ca_cert: None,
        insecure: false,
    }
}

async fn start(config: ServerConfig) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(signaling_server::run(
        listener,
        config,
        std::future::pending(),
    ));
    address
}

#[test]
fn server_urls_become_endpoint_urls() {
    let cases = [
        ("ws://127.0.0.1:8443", "ws://127.0.0.1:8443/register_device"),
        (
            "ws://127.0.0.1:8443/",
            "ws://127.0.0.1:8443/register_device",
        ),
        (
            "http://localhost:9000",
            "ws://localhost:9000/register_device",
        ),
        (
            "https://example.test",
            "wss://example.test:443/register_device",
        ),
        (
            "wss://[::1]:9443/signal/",
            "wss://[::1]:9443/signal/register_device",
        ),
    ];
    for (server, want) in cases {
        assert_eq!(
            options(server.into())
                .endpoint_url("/register_device")
                .unwrap(),
            want
        );
    }
    for (server, want) in [
        ("ftp://host:1", "unsupported scheme \"ftp\""),
        ("127.0.0.1:8443", "has no scheme"),
        ("not a url", "is not a URL"),
        (
            "ws://127.0.0.1:8443/connect_client",
            "names the endpoint /connect_client; give the server's base URL (ws://127.0.0.1:8443)",
        ),
        (
            "wss://h:1/signal/register_device/",
            "names the endpoint /register_device; give the server's base URL (wss://h:1/signal)",
        ),
    ] {
        let error = options(server.into())
            .endpoint_url("/register_device")
            .unwrap_err();
        assert!(format!("{error:#}").contains(want), "{server}: {error:#}");
    }
}

#[tokio::test]
async fn a_server_that_is_not_running_is_named_as_such() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    let error = options(format!("ws://{address}"))
        .connect("/register_device")
        .await
        .unwrap_err();
    assert!(error.retryable);
    assert!(
        error
            .message
            .contains("connection refused (is the server running, on this port?)"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn tokens_missing_and_refused_are_told_apart() {
    let address = start(ServerConfig {
        device_token: Some("right".into()),
        ..ServerConfig::default()
    })
    .await;
    let mut opts = options(format!("ws://{address}"));
    let error = opts.connect("/register_device").await.unwrap_err();
    assert!(!error.retryable);
    assert!(
        error
            .message
            .starts_with("the server requires a token (HTTP 401"),
        "{}",
        error.message
    );
    opts.token = Some("wrong".into());
    let error = opts.connect("/register_device").await.unwrap_err();
    assert!(
        error
            .message
            .starts_with("the server refused the token (HTTP 401"),
        "{}",
        error.message
    );
    opts.token = Some("right".into());
    assert!(opts.connect("/register_device").await.is_ok());
}

/// A signed token the server refuses says why; one whose scope leaves the
/// device out is a 403, not worth retrying.
#[tokio::test]
async fn a_refused_signed_token_says_why() {
    use signaling_server::auth::{Claims, Role, mint};
    let dir = std::env::temp_dir().join(format!("peer-token-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("secret");
    let secret = b"a secret for signed tokens, 32 bytes+";
    std::fs::write(&path, secret).unwrap();
    let address = start(ServerConfig {
        token_secret_file: Some(path),
        ..ServerConfig::default()
    })
    .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = |role, exp| {
        mint(
            &signaling_server::secret::Secret::new(secret),
            &Claims {
                role,
                devices: vec!["cvd-1".into()],
                exp,
                nbf: None,
                iat: None,
            },
        )
        .unwrap()
    };
    let mut opts = options(format!("ws://{address}"));
    opts.token = Some(token(Role::Client, now.saturating_sub(10)));
    let error = opts.connect("/connect_client").await.unwrap_err();
    assert!(!error.retryable);
    assert_eq!(
        error.message,
        "the server refused the token (HTTP 401: Unauthorized: the token has expired)"
    );
    opts.token = Some(token(Role::Client, now + 600));
    let error = opts.connect("/devices/cvd-2/connect").await.unwrap_err();
    assert!(!error.retryable);
    assert_eq!(
        error.message,
        "the server forbids it (HTTP 403: Forbidden: the token does not cover this device)"
    );
    assert!(opts.connect("/connect_client").await.is_ok());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A server certificate made as a CA's (plain `openssl req -x509`): the
/// server warns at start (see tests/binary.rs there), and the tool says
/// what is wrong instead of "not trusted; pass --ca-cert" to a user who
/// did.
#[tokio::test]
async fn a_ca_certificate_on_the_server_is_named_as_such() {
    let dir = std::env::temp_dir().join(format!("peer-ca-cert-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    assert!(signaling_server::tls::is_ca_certificate(&cert_path));
    let generated =
        signaling_server::tls::self_signed(&dir.join("plain"), "127.0.0.1".parse().unwrap())
            .unwrap();
    assert!(!signaling_server::tls::is_ca_certificate(
        &generated.cert_path
    ));

    let address = start(ServerConfig {
        tls: Some(signaling_server::tls::load_pem(&cert_path, &key_path).unwrap()),
        ..ServerConfig::default()
    })
    .await;
    let mut opts = options(format!("wss://localhost:{}", address.port()));
    opts.ca_cert = Some(cert_path.clone());
    let error = opts.connect("/connect_client").await.unwrap_err();
    assert!(!error.retryable);
    assert!(
        error
            .message
            .contains("is a CA certificate (basicConstraints CA:TRUE)"),
        "{}",
        error.message
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn tls_mistakes_are_explained() {
    let dir = std::env::temp_dir().join(format!("peer-tls-test-{}", std::process::id()));
    let generated = signaling_server::tls::self_signed(&dir, "127.0.0.1".parse().unwrap()).unwrap();
    let tls_address = start(ServerConfig {
        tls: Some(generated.config.clone()),
        ..ServerConfig::default()
    })
    .await;
    let plain_address = start(ServerConfig::default()).await;

    // A self-signed certificate without --ca-cert: not trusted.
    let mut opts = options(format!("wss://localhost:{}", tls_address.port()));
    let error = opts.connect("/connect_client").await.unwrap_err();
    assert!(
        error.message.contains("is not trusted"),
        "{}",
        error.message
    );
    assert!(error.message.contains("--ca-cert"), "{}", error.message);

    // With it, or with --insecure, the connection works.
    opts.ca_cert = Some(generated.cert_path.clone());
    assert!(opts.connect("/connect_client").await.is_ok());
    let insecure = ConnectOptions {
        insecure: true,
        ..options(format!("wss://127.0.0.1:{}", tls_address.port()))
    };
    assert!(insecure.connect("/connect_client").await.is_ok());

    // wss:// to a plain server, and ws:// to a TLS one.
    let error = options(format!("wss://localhost:{}", plain_address.port()))
        .connect("/connect_client")
        .await
        .unwrap_err();
    assert!(error.message.contains("use ws://"), "{}", error.message);
    let error = tokio::time::timeout(
        Duration::from_secs(15),
        options(format!("ws://127.0.0.1:{}", tls_address.port())).connect("/connect_client"),
    )
    .await
    .unwrap()
    .unwrap_err();
    // The server says so itself, in HTTP.
    assert!(
        error
            .message
            .ends_with("HTTP 400: Bad request: this port serves TLS; use https:// or wss://"),
        "{}",
        error.message
    );
    let _ = std::fs::remove_dir_all(dir);
}
