//! TURN credentials in every `config` (PROTOCOL.md, "TURN"), checked by
//! computing them as the TURN server does.

#![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{TestServer, http_get, temp_dir, test_config};
use serde_json::{Value, json};
use signaling_server::ServerConfig;
use signaling_server::turn::{SecretSource, TurnConfig, credential};

const TTL: Duration = Duration::from_secs(600);
const URLS: [&str; 2] = [
    "turn:127.0.0.1:3478?transport=udp",
    "turns:127.0.0.1:5349?transport=tcp",
];

fn config_with_turn(secret_file: &Path) -> ServerConfig {
    ServerConfig {
        ice_servers: vec![protocol::IceServer {
            urls: vec!["stun:127.0.0.1:3478".into()],
            username: None,
            credential: None,
        }],
        turn: Some(TurnConfig {
            urls: URLS.iter().map(|url| (*url).to_owned()).collect(),
            secret: SecretSource::File(secret_file.to_owned()),
            ttl: TTL,
            grace: Duration::ZERO,
        }),
        ..test_config()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The TURN entry of a `config`, after the configured STUN server; its
/// username's `who`, checked for its expiry and its credential under
/// `secret`.
fn turn_user(config: &Value, secret: &[u8]) -> String {
    let servers = config["ice_servers"].as_array().unwrap();
    assert_eq!(servers.len(), 2, "{config}");
    assert_eq!(servers[0], json!({"urls": ["stun:127.0.0.1:3478"]}));
    let entry = &servers[1];
    assert_eq!(entry["urls"], json!(URLS));
    let username = entry["username"].as_str().unwrap();
    let (expiry, who) = username.split_once(':').unwrap();
    let expiry: u64 = expiry.parse().unwrap();
    let expected = unix_now() + TTL.as_secs();
    assert!(
        expiry.abs_diff(expected) <= 2,
        "expires at {expiry}, not about {expected}"
    );
    assert_eq!(
        entry["credential"].as_str().unwrap(),
        credential(secret, username),
        "{username}"
    );
    who.to_owned()
}

#[tokio::test]
async fn every_config_carries_credentials_of_its_own() {
    let dir = temp_dir("turn");
    let secret_file = dir.join("secret");
    std::fs::write(&secret_file, "S3cret\n").unwrap();
    let server = TestServer::start(config_with_turn(&secret_file)).await;

    let mut device = server.device().await;
    device
        .send(r#"{"message_type":"register","device_id":"cvd-1"}"#)
        .await;
    assert_eq!(turn_user(&device.recv_json().await, b"S3cret"), "cvd-1");

    let mut clients = Vec::new();
    for _ in 0..2 {
        let mut client = server.client().await;
        client
            .send(r#"{"message_type":"connect","device_id":"cvd-1"}"#)
            .await;
        clients.push(turn_user(&client.recv_json().await, b"S3cret"));
    }
    assert_eq!(clients, ["cvd-1/client-1", "cvd-1/client-2"]);

    // A device id of any shape makes a username a TURN server takes.
    let mut odd = server.device().await;
    odd.send(r#"{"message_type":"register","device_id":"a:b c"}"#)
        .await;
    assert_eq!(turn_user(&odd.recv_json().await, b"S3cret"), "a_b_c");

    // /infra_config (the Go operator's and the polling clients'): each
    // answer its own.
    let mut anonymous = Vec::new();
    for _ in 0..2 {
        let reply = http_get(server.addr, "/infra_config", &[]).await;
        assert_eq!(reply.status, 200);
        let config: Value = serde_json::from_str(&reply.body).unwrap();
        anonymous.push(turn_user(&config, b"S3cret"));
    }
    assert_eq!(anonymous, ["client-3", "client-4"]);
    server.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A changed secret file signs the next `config`s, without a restart; one
/// that cannot be read keeps the secret there was.
#[tokio::test]
async fn a_changed_secret_file_signs_the_next_configs() {
    let dir = temp_dir("turn-rotation");
    let secret_file = dir.join("secret");
    std::fs::write(&secret_file, "old-secret\n").unwrap();
    let server = TestServer::start(config_with_turn(&secret_file)).await;
    let infra = || async {
        let reply = http_get(server.addr, "/infra_config", &[]).await;
        serde_json::from_str::<Value>(&reply.body).unwrap()
    };
    turn_user(&infra().await, b"old-secret");

    std::fs::write(&secret_file, "a newer, longer secret\n").unwrap();
    common::eventually("the new secret signs", || async {
        let config = infra().await;
        let entry = &config["ice_servers"][1];
        entry["credential"].as_str()
            == Some(&credential(
                b"a newer, longer secret",
                entry["username"].as_str().unwrap(),
            ))
    })
    .await;
    turn_user(&infra().await, b"a newer, longer secret");

    std::fs::remove_file(&secret_file).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    turn_user(&infra().await, b"a newer, longer secret");
    server.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
