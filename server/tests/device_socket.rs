//! The device socket beyond the D rows (which `device.rs` runs on it too):
//! the socket file (mode, a stale file replaced, a live one or a non-socket
//! refused, removed at shutdown), the peer's uid checked, the same device
//! to clients as a websocket one, shutdown, no idle timeout, its gauge.
//! PROTOCOL.md, "The device socket".

#![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::time::Duration;

use common::{DeviceTransport, SocketPeer, TestServer, temp_dir, test_config};
use signaling_server::config::DeviceSocketConfig;
use signaling_server::{DeviceSocketError, Error, ServerConfig};

const CUTTLEFISH_REGISTER: &str = include_str!("../../protocol/tests/cuttlefish-register.json");

fn socket_config(config: DeviceSocketConfig) -> ServerConfig {
    ServerConfig {
        device_socket: Some(config),
        ..test_config()
    }
}

/// Why a server with this configuration cannot start.
async fn start_error(config: ServerConfig) -> Error {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    signaling_server::Server::bind(listener, config).unwrap_err()
}

#[tokio::test]
async fn the_socket_file_has_its_mode_and_is_removed_at_shutdown() {
    let dir = temp_dir("socket-file");
    let path = dir.join("operator");
    let server = TestServer::start(socket_config(DeviceSocketConfig::at(&path))).await;
    let meta = std::fs::metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o770);
    server.stop().await.unwrap();
    assert!(!path.exists(), "removed at shutdown");

    let server = TestServer::start(socket_config(DeviceSocketConfig {
        mode: 0o700,
        ..DeviceSocketConfig::at(&path)
    }))
    .await;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o700);
    server.stop().await.unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_stale_socket_is_replaced_and_a_live_one_or_a_file_is_refused() {
    let dir = temp_dir("socket-stale");
    let path = dir.join("operator");
    // A socket file nobody listens on any more, as a killed server leaves.
    drop(tokio_seqpacket::UnixSeqpacketListener::bind(&path).unwrap());
    assert!(path.exists());
    let server = TestServer::start(socket_config(DeviceSocketConfig::at(&path))).await;
    let _device = SocketPeer::connect(&path).await;

    // A second server on the same path is refused; the first keeps it.
    let error = start_error(socket_config(DeviceSocketConfig::at(&path))).await;
    assert!(
        matches!(error, Error::DeviceSocket(DeviceSocketError::InUse(_))),
        "{error}"
    );
    assert!(
        error.to_string().contains("another server is listening"),
        "{error}"
    );
    let mut device = server.registered_device_peer("still-here").await;
    device.expect_silence(Duration::from_millis(50)).await;
    server.stop().await.unwrap();

    // A path that is not a socket is never replaced.
    std::fs::write(&path, "not a socket").unwrap();
    let error = start_error(socket_config(DeviceSocketConfig::at(&path))).await;
    assert!(
        matches!(error, Error::DeviceSocket(DeviceSocketError::NotASocket(_))),
        "{error}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a socket");
    std::fs::remove_dir_all(dir).unwrap();
}

/// `--device-socket-allow-uid`: the peer's uid comes from SO_PEERCRED; a
/// user not listed gets an error packet and the end, and is counted.
#[tokio::test]
async fn only_allowed_uids_may_register() {
    let uid = std::fs::metadata("/proc/self").unwrap();
    let uid = std::os::unix::fs::MetadataExt::uid(&uid);
    let dir = temp_dir("socket-uid");
    let allowed = TestServer::start(socket_config(DeviceSocketConfig {
        allowed_uids: Some(vec![uid]),
        ..DeviceSocketConfig::at(dir.join("allowed"))
    }))
    .await;
    let _device = allowed.registered_device_peer("mine").await;
    allowed.stop().await.unwrap();

    let refused = TestServer::start(socket_config(DeviceSocketConfig {
        allowed_uids: Some(vec![uid.wrapping_add(1)]),
        ..DeviceSocketConfig::at(dir.join("refused"))
    }))
    .await;
    let mut device = SocketPeer::connect(refused.device_socket.as_ref().unwrap()).await;
    assert_eq!(
        device.recv_text().await,
        r#"{"error":"Unauthorized: this user may not register on the device socket"}"#
    );
    assert_eq!(device.recv_packet().await, None);
    assert_eq!(
        refused
            .metric(r#"signaling_connections_refused_total{reason="unauthorized"}"#)
            .await,
        1.0
    );
    assert_eq!(refused.get("/devices").await.body, "[]");
    refused.stop().await.unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

/// A Cuttlefish-shaped registration on the socket, and a websocket device
/// beside it: clients see no difference.
#[tokio::test]
async fn a_socket_device_is_a_device_like_any_other() {
    // Its end at the close below would otherwise hold it for a resume.
    let server = TestServer::start_for(DeviceTransport::Socket, common::without_resume()).await;
    let mut cvd = server.device_peer().await;
    cvd.send(CUTTLEFISH_REGISTER.trim()).await;
    assert_eq!(cvd.recv_json().await["message_type"], "config");
    let mut seed = server.registered_device_with_info("seed").await;
    assert_eq!(server.get("/devices").await.body, r#"["cvd-1","seed"]"#);
    assert_eq!(
        server.metric("signaling_device_socket_connections").await,
        1.0
    );

    let mut client = server.client().await;
    client
        .send(r#"{"message_type":"connect","device_id":"cvd-1"}"#)
        .await;
    assert_eq!(client.recv_json().await["message_type"], "config");
    let info = client.recv_json().await;
    let registered: serde_json::Value = serde_json::from_str(CUTTLEFISH_REGISTER).unwrap();
    assert_eq!(info["device_info"], registered["device_info"]);
    client
        .send(r#"{"message_type":"forward","payload":{"type":"request-offer"}}"#)
        .await;
    assert_eq!(
        cvd.recv_text().await,
        r#"{"message_type":"client_msg","client_id":1,"payload":{"type":"request-offer"}}"#
    );
    // The other device's client ids are its own.
    let mut other = server.connected_client("seed").await;
    other
        .send(r#"{"message_type":"forward","payload":2}"#)
        .await;
    assert_eq!(
        seed.recv_text().await,
        r#"{"message_type":"client_msg","client_id":1,"payload":2}"#
    );

    cvd.close().await;
    assert_eq!(client.recv_error().await, "Device disconnected");
    common::eventually("the socket gauge is zero", || async {
        server.metric("signaling_device_socket_connections").await == 0.0
    })
    .await;
    assert_eq!(server.get("/devices").await.body, r#"["seed"]"#);
    server.stop().await.unwrap();
}

/// At shutdown a socket device is told, as a websocket one is with 1001.
#[tokio::test]
async fn shutdown_tells_socket_devices() {
    let server = TestServer::start_for(DeviceTransport::Socket, test_config()).await;
    let common::DevicePeer::Socket(mut device) = server.registered_device_peer("going").await
    else {
        panic!("a socket device");
    };
    server.stop().await.unwrap();
    assert_eq!(
        device.recv_text().await,
        r#"{"error":"Server shutting down"}"#
    );
    assert_eq!(device.recv_packet().await, None);
}

/// No pings and no idle timeout on the socket: a registered device that
/// says nothing for an hour is still registered (a websocket device that
/// answered no ping would have been dropped after --idle-timeout).
#[tokio::test(start_paused = true)]
async fn a_quiet_socket_device_stays_registered() {
    let server = TestServer::start_for(DeviceTransport::Socket, test_config()).await;
    let mut device = server.registered_device_peer("quiet").await;
    device.expect_silence(Duration::from_secs(3600)).await;
    assert_eq!(server.get("/devices").await.body, r#"["quiet"]"#);
    server.stop().await.unwrap();
}

/// Socket connections count against --max-connections; past it a device
/// is told, and the place is free again once one leaves.
#[tokio::test]
async fn the_connection_limit_counts_socket_devices() {
    let server = TestServer::start_for(
        DeviceTransport::Socket,
        ServerConfig {
            max_connections: 1,
            ..test_config()
        },
    )
    .await;
    let first = server.registered_device_peer("first").await;
    let mut over = SocketPeer::connect(server.device_socket.as_ref().unwrap()).await;
    assert_eq!(
        over.recv_text().await,
        r#"{"error":"Server full: connection limit reached"}"#
    );
    assert_eq!(over.recv_packet().await, None);
    first.close().await;
    common::eventually("the place is free", || async {
        server.metric("signaling_device_socket_connections").await == 0.0
    })
    .await;
    let _second = server.registered_device_peer("second").await;
    server.stop().await.unwrap();
}
