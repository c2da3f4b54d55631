//! Signed, scoped, expiring tokens (PROTOCOL.md, "Signed tokens"), on the
//! real server: roles, device scopes on every front door, each kind of
//! forged or stale token, expiry ending a running session, rotation.

#![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

mod common;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use common::{
    HttpResponse, Peer, TestServer, eventually, http_get, http_request, refusal_status, temp_dir,
    test_config,
};
use signaling_server::ServerConfig;
use signaling_server::auth::{Claims, Role, mint};
use signaling_server::secret::Secret;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const SECRET: &[u8] = b"signed-tokens-test-secret-32-bytes!";

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(role: Role, devices: &[&str], ttl: u64) -> Claims {
    Claims {
        role,
        devices: devices.iter().map(|d| d.to_string()).collect(),
        exp: unix_now() + ttl,
        nbf: None,
        iat: Some(unix_now()),
    }
}

fn signed(claims: &Claims) -> String {
    mint(&Secret::new(SECRET), claims).unwrap()
}

fn token(role: Role, devices: &[&str]) -> String {
    signed(&claims(role, devices, 3600))
}

/// A folder holding the secret file, and a config that reads it.
fn config_with_secret(name: &str) -> (ServerConfig, PathBuf) {
    let dir = temp_dir(name);
    let path = dir.join("token-secret");
    std::fs::write(&path, SECRET).unwrap();
    let config = ServerConfig {
        token_secret_file: Some(path.clone()),
        ..test_config()
    };
    (config, path)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn get_with(server: &TestServer, path: &str, token: &str) -> HttpResponse {
    http_get(server.addr, path, &[("Authorization", &bearer(token))]).await
}

async fn post_with(server: &TestServer, path: &str, token: &str, body: &str) -> HttpResponse {
    let request =
        support::http::Request::post_json(path, body).header("Authorization", &bearer(token));
    http_request(server.addr, request).await
}

fn error_text(response: &HttpResponse) -> String {
    let value: serde_json::Value = serde_json::from_str(&response.body).unwrap();
    value["error"].as_str().unwrap().to_owned()
}

async fn ws_with(server: &TestServer, path: &str, token: &str) -> Peer {
    Peer::try_connect_with(&server.url(path), &[("authorization", &bearer(token))])
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

async fn register(server: &TestServer, id: &str, token: &str) -> Peer {
    let mut device = ws_with(server, "/register_device", token).await;
    let register = serde_json::json!({
        "message_type": "register", "device_id": id, "device_info": {"name": id},
    });
    device.send(&register.to_string()).await;
    let config = device.recv_json().await;
    assert_eq!(config["message_type"], "config", "{config}");
    device
}

async fn connect(server: &TestServer, id: &str, token: &str) -> Peer {
    let mut client = ws_with(server, "/connect_client", token).await;
    client.connect_to(id).await;
    client
}

#[tokio::test]
async fn a_client_token_reaches_the_devices_it_names_and_no_other() {
    let (config, _) = config_with_secret("tokens-scope");
    let server = TestServer::start(config).await;
    let devices = token(Role::Device, &["cvd-*"]);
    let _one = register(&server, "cvd-1", &devices).await;
    let _two = register(&server, "cvd-2", &devices).await;
    let only_one = token(Role::Client, &["cvd-1"]);

    let mut client = connect(&server, "cvd-1", &only_one).await;
    client
        .send(r#"{"message_type":"forward","payload":{"type":"request-offer"}}"#)
        .await;

    // The seed's websocket: the scope is checked at connect.
    let mut other = ws_with(&server, "/connect_client", &only_one).await;
    other
        .send(r#"{"message_type":"connect","device_id":"cvd-2"}"#)
        .await;
    assert_eq!(
        other.recv_error().await,
        "Device not allowed: the token does not cover the device id cvd-2"
    );
    let (code, _) = other.recv_close().await;
    assert_eq!(code, CloseCode::Policy);

    // Paths that name the device: 403 before anything else.
    let forbidden = "Forbidden: the token does not cover this device";
    for path in [
        "/devices/cvd-2",
        "/devices/cvd-2/files/",
        "/devices/cvd-2/files/index.html",
        "/devices/cvd-2/adb",
        "/devices/cvd-2/connect",
    ] {
        let response = get_with(&server, path, &only_one).await;
        assert_eq!(response.status, 403, "{path}: {}", response.body);
        assert_eq!(error_text(&response), forbidden, "{path}");
    }
    let refused = Peer::try_connect_with(
        &server.url("/devices/cvd-2/connect"),
        &[("authorization", &bearer(&only_one))],
    )
    .await
    .err()
    .unwrap();
    assert_eq!(refusal_status(&refused), 403);
    let response = get_with(&server, "/devices/cvd-1", &only_one).await;
    assert_eq!(response.status, 200, "{}", response.body);
    let _go_client = ws_with(&server, "/devices/cvd-1/connect", &only_one).await;

    // The listing shows what the token covers; `*` covers all.
    assert_eq!(
        get_with(&server, "/devices", &only_one).await.body,
        r#"["cvd-1"]"#
    );
    let every = token(Role::Client, &["*"]);
    assert_eq!(
        get_with(&server, "/devices", &every).await.body,
        r#"["cvd-1","cvd-2"]"#
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn each_role_is_held_to_its_endpoints_and_a_device_to_its_ids() {
    let (config, _) = config_with_secret("tokens-roles");
    let server = TestServer::start(config).await;
    let device = token(Role::Device, &["cvd-1"]);
    let client = token(Role::Client, &["cvd-1"]);

    let mut wrong_id = ws_with(&server, "/register_device", &device).await;
    wrong_id
        .send(r#"{"message_type":"register","device_id":"cvd-2"}"#)
        .await;
    assert_eq!(
        wrong_id.recv_error().await,
        "Device not allowed: the token does not cover the device id cvd-2"
    );
    assert_eq!(wrong_id.recv_close().await.0, CloseCode::Policy);
    assert_eq!(server.get("/metrics").await.status, 200);

    for (path, token, text) in [
        (
            "/connect_client",
            &device,
            "Unauthorized: a device's token cannot connect as a client",
        ),
        (
            "/register_device",
            &client,
            "Unauthorized: a client's token cannot register a device",
        ),
    ] {
        let refused =
            Peer::try_connect_with(&server.url(path), &[("authorization", &bearer(token))])
                .await
                .err()
                .unwrap();
        assert_eq!(refusal_status(&refused), 401, "{path}");
        let tokio_tungstenite::tungstenite::Error::Http(response) = refused else {
            unreachable!()
        };
        let body = String::from_utf8(response.into_body().unwrap_or_default()).unwrap();
        assert!(body.contains(text), "{path}: {body}");
    }
    // A device's token does not read the client endpoints either.
    let response = get_with(&server, "/devices", &device).await;
    assert_eq!(response.status, 401);
    // And without a token, nothing.
    let response = server.get("/infra_config").await;
    assert_eq!(
        (response.status, error_text(&response).as_str()),
        (401, "Unauthorized: missing or invalid token")
    );
    let _registered = register(&server, "cvd-1", &device).await;
    let _connected = connect(&server, "cvd-1", &client).await;
    server.stop().await.unwrap();
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A token with `header`, signed with HMAC-SHA256 under `key` whatever the
/// header says.
fn hand_made(header: &str, claims: &Claims, key: &[u8]) -> String {
    let message = format!(
        "{}.{}",
        b64(header.as_bytes()),
        b64(serde_json::to_string(claims).unwrap().as_bytes())
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let tag = ring::hmac::sign(&key, message.as_bytes());
    format!("{message}.{}", b64(tag.as_ref()))
}

#[tokio::test]
async fn forged_stale_and_early_tokens_are_refused_with_their_reason() {
    let (config, _) = config_with_secret("tokens-forged");
    let server = TestServer::start(config).await;
    let good = claims(Role::Client, &["*"], 600);
    let mut early = good.clone();
    early.nbf = Some(unix_now() + 600);
    let payload = b64(serde_json::to_string(&good).unwrap().as_bytes());
    let cases = [
        (
            mint(
                &Secret::new(b"some other secret, also 32 bytes long"),
                &good,
            )
            .unwrap(),
            "Unauthorized: the token's signature does not verify with the server's secret",
        ),
        (
            format!("{}.{payload}.", b64(br#"{"alg":"none","typ":"JWT"}"#)),
            "Unauthorized: the token is not signed with HS256, the one algorithm accepted",
        ),
        (
            hand_made(r#"{"alg":"RS256","typ":"JWT"}"#, &good, SECRET),
            "Unauthorized: the token is not signed with HS256, the one algorithm accepted",
        ),
        (
            signed(&claims(Role::Client, &["*"], 0)),
            "Unauthorized: the token has expired",
        ),
        (
            signed(&early),
            "Unauthorized: the token is not valid yet (nbf)",
        ),
        (
            signed(&claims(Role::Client, &[], 600)),
            "Unauthorized: the token is not a JWT with a role, a list of devices and an expiry",
        ),
        (
            "x.y.z".to_owned(),
            "Unauthorized: the token is not a JWT with a role, a list of devices and an expiry",
        ),
    ];
    for (token, text) in &cases {
        let response = get_with(&server, "/infra_config", token).await;
        assert_eq!(response.status, 401, "{text}: {}", response.body);
        assert_eq!(error_text(&response), *text);
        assert_eq!(
            response.header("www-authenticate"),
            Some("Bearer"),
            "{text}"
        );
        // The same before a websocket upgrade, and in the polling flow.
        let refused = Peer::try_connect_with(
            &server.url("/connect_client"),
            &[("authorization", &bearer(token))],
        )
        .await
        .err()
        .unwrap();
        assert_eq!(refusal_status(&refused), 401, "{text}");
        let response = post_with(&server, "/connect", token, r#"{"device_id":"cvd-1"}"#).await;
        assert_eq!(response.status, 401, "{text}");
        assert_eq!(error_text(&response), *text);
    }
    // The RS256 token's signature is the right HMAC: under an HS256
    // header it is taken. So it was the algorithm that refused it.
    let honest = hand_made(r#"{"alg":"HS256","typ":"JWT"}"#, &good, SECRET);
    assert_eq!(
        get_with(&server, "/infra_config", &honest).await.status,
        200
    );
    // In the query, as a browser gives it.
    let response = server.get(&format!("/infra_config?token={honest}")).await;
    assert_eq!(response.status, 200);
    server.stop().await.unwrap();
}

// The clock is paused: the server's timers are virtual time, so the
// expiry an hour away comes without waiting for it.
#[tokio::test(start_paused = true)]
async fn a_session_ends_when_its_token_expires() {
    let (config, _) = config_with_secret("tokens-expiry");
    let server = TestServer::start(ServerConfig {
        // No keepalive in the way of an hour of virtual time.
        ping_interval: Duration::from_secs(24 * 3600),
        idle_timeout: Duration::from_secs(48 * 3600),
        ..config
    })
    .await;
    let mut device = register(
        &server,
        "cvd-1",
        &signed(&claims(Role::Device, &["cvd-1"], 7200)),
    )
    .await;
    let mut client = connect(
        &server,
        "cvd-1",
        &signed(&claims(Role::Client, &["cvd-1"], 3600)),
    )
    .await;
    // Seconds before the hour, the session relays.
    tokio::time::sleep(Duration::from_secs(3597)).await;
    client
        .send(r#"{"message_type":"forward","payload":"still here"}"#)
        .await;
    let relayed = device.recv_json().await;
    assert_eq!(relayed["payload"], "still here", "{relayed}");
    // Past the hour, it ends with its reason, and the device is told.
    assert_eq!(
        client.recv_error().await,
        "Token expired: the session ended when its token did; connect again with a new token"
    );
    let (code, reason) = client.recv_close().await;
    assert_eq!(code, CloseCode::Policy);
    assert!(reason.starts_with("Token expired"), "{reason}");
    let gone = device.recv_json().await;
    assert_eq!(gone["message_type"], "client_disconnected", "{gone}");
    // The device's token has an hour more: it is still registered, and
    // ends at its own expiry.
    tokio::time::sleep(Duration::from_secs(3598)).await;
    assert_eq!(
        server.metric("signaling_devices").await,
        1.0,
        "the device outlived the client's token"
    );
    assert!(device.recv_error().await.starts_with("Token expired"));
    server.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn with_sessions_outlive_tokens_a_session_goes_on() {
    let (config, _) = config_with_secret("tokens-outlive");
    let server = TestServer::start(ServerConfig {
        sessions_outlive_tokens: true,
        ping_interval: Duration::from_secs(24 * 3600),
        idle_timeout: Duration::from_secs(48 * 3600),
        ..config
    })
    .await;
    let mut device = register(&server, "cvd-1", &token(Role::Device, &["cvd-1"])).await;
    let mut client = connect(
        &server,
        "cvd-1",
        &signed(&claims(Role::Client, &["cvd-1"], 60)),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(600)).await;
    client
        .send(r#"{"message_type":"forward","payload":"later"}"#)
        .await;
    assert_eq!(device.recv_json().await["payload"], "later");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn polling_clients_are_held_to_their_tokens_on_every_request() {
    let (config, _) = config_with_secret("tokens-polling");
    let server = TestServer::start(config).await;
    let _one = register(&server, "cvd-1", &token(Role::Device, &["*"])).await;
    let _two = register(&server, "cvd-2", &token(Role::Device, &["*"])).await;
    let one = token(Role::Client, &["cvd-1"]);
    let two = token(Role::Client, &["cvd-2"]);

    let refused = post_with(&server, "/connect", &one, r#"{"device_id":"cvd-2"}"#).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(
        error_text(&refused),
        "Device not allowed: the token does not cover the device id cvd-2"
    );
    let connected = post_with(&server, "/connect", &one, r#"{"device_id":"cvd-1"}"#).await;
    assert_eq!(connected.status, 200, "{}", connected.body);
    let id: serde_json::Value = serde_json::from_str(&connected.body).unwrap();
    let id = id["connection_id"].as_str().unwrap().to_owned();
    let forward = format!(r#"{{"connection_id":"{id}","payload":1}}"#);
    let poll = format!(r#"{{"connection_id":"{id}"}}"#);
    // Another device's token cannot drive this connection.
    for (path, body) in [("/forward", &forward), ("/poll_messages", &poll)] {
        let response = post_with(&server, path, &two, body).await;
        assert_eq!(response.status, 403, "{path}: {}", response.body);
    }
    assert_eq!(
        post_with(&server, "/forward", &one, &forward).await.status,
        200
    );
    assert_eq!(
        post_with(&server, "/poll_messages", &one, &poll)
            .await
            .status,
        200
    );

    // The Go operator's flavor.
    let connected = post_with(
        &server,
        "/polled_connections",
        &one,
        r#"{"device_id":"cvd-1"}"#,
    )
    .await;
    assert_eq!(connected.status, 200, "{}", connected.body);
    let id: serde_json::Value = serde_json::from_str(&connected.body).unwrap();
    let id = id["connection_id"].as_str().unwrap().to_owned();
    let messages = format!("/polled_connections/{id}/messages?start=0");
    assert_eq!(get_with(&server, &messages, &two).await.status, 403);
    assert_eq!(get_with(&server, &messages, &one).await.status, 200);
    let forward = format!("/polled_connections/{id}/:forward");
    assert_eq!(
        post_with(&server, &forward, &two, r#"{"payload":1}"#)
            .await
            .status,
        403
    );
    assert_eq!(
        post_with(&server, &forward, &one, r#"{"payload":1}"#)
            .await
            .status,
        200
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_new_secret_file_is_read_and_the_old_secret_kept_through_the_grace() {
    let (config, path) = config_with_secret("tokens-rotation");
    let graceful = TestServer::start(ServerConfig {
        token_secret_grace: Duration::from_secs(3600),
        ..config.clone()
    })
    .await;
    let strict = TestServer::start(config).await;
    let old = token(Role::Client, &["*"]);
    let new_secret = b"the rotated secret, at least 32 bytes";
    let new = mint(&Secret::new(new_secret), &claims(Role::Client, &["*"], 600)).unwrap();
    for server in [&graceful, &strict] {
        assert_eq!(get_with(server, "/devices", &old).await.status, 200);
        assert_eq!(get_with(server, "/devices", &new).await.status, 401);
    }
    // A running session with the old secret's token.
    let _device = register(&strict, "cvd-1", &token(Role::Device, &["cvd-1"])).await;
    let mut running = connect(&strict, "cvd-1", &old).await;
    std::fs::write(&path, new_secret).unwrap();
    // Both servers look at the file every second.
    for server in [&graceful, &strict] {
        eventually("the new secret is read", || async {
            get_with(server, "/devices", &new).await.status == 200
        })
        .await;
    }
    assert_eq!(get_with(&graceful, "/devices", &old).await.status, 200);
    let refused = get_with(&strict, "/devices", &old).await;
    assert_eq!(
        error_text(&refused),
        "Unauthorized: the token's signature does not verify with the server's secret"
    );
    // The session opened before goes on.
    running
        .send(r#"{"message_type":"forward","payload":2}"#)
        .await;
    running.expect_silence(Duration::from_millis(200)).await;
    // A secret too short is not taken: the one in use stays.
    std::fs::write(&path, "short").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(get_with(&strict, "/devices", &new).await.status, 200);
    graceful.stop().await.unwrap();
    strict.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}
