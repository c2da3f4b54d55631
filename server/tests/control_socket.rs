//! The Go operator's control socket (PROTOCOL.md, "The control socket"):
//! pre-registration, its statuses, the registration events, cancellation
//! when the connection closes, and the descriptors it fills in.

#![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

mod common;

use std::time::Duration;

use common::{SocketPeer, TestServer, temp_dir, test_config};
use serde_json::Value;
use signaling_server::ServerConfig;
use signaling_server::cli::DevicesList;
use signaling_server::config::DeviceSocketConfig;

struct Setup {
    server: TestServer,
    control: std::path::PathBuf,
    dir: std::path::PathBuf,
}

async fn start() -> Setup {
    let dir = temp_dir("control-socket");
    let control = dir.join("operator_control");
    let server = TestServer::start(ServerConfig {
        control_socket: Some(DeviceSocketConfig::at(&control)),
        devices_list: DevicesList::Descriptors,
        ..test_config()
    })
    .await;
    Setup {
        server,
        control,
        dir,
    }
}

const PRE_REGISTER: &str = r#"{"message_type":"pre-register","group_name":"g1","owner":"alice","devices":[{"id":"cvd-1","name":"phone","adb_port":6520},{"id":"a\tb"}]}"#;

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test]
async fn pre_registration_fills_the_descriptor_and_reports_the_registration() {
    let Setup {
        server,
        control,
        dir,
    } = start().await;
    let mut tool = SocketPeer::connect(&control).await;
    tool.send_bytes(PRE_REGISTER.as_bytes()).await;
    assert_eq!(
        json(&tool.recv_text().await),
        serde_json::json!([
            {"id": "cvd-1", "status": "accepted", "message": ""},
            {"id": "a\tb", "status": "failed",
             "message": "Invalid device_id: device_id must not contain control characters"},
        ])
    );
    // Another tool cannot take the id meanwhile.
    let mut other = SocketPeer::connect(&control).await;
    other.send_bytes(PRE_REGISTER.as_bytes()).await;
    let answer = json(&other.recv_text().await);
    assert_eq!(answer[0]["status"], "failed");
    assert_eq!(answer[0]["message"], "Device id already pre-registered");

    let _device = server.registered_device_with_info("cvd-1").await;
    assert_eq!(
        tool.recv_text().await,
        r#"{"id":"cvd-1","status":"registered","message":""}"#
    );
    assert_eq!(
        json(&server.get("/devices/cvd-1").await.body),
        serde_json::json!({
            "device_id": "cvd-1", "group_name": "g1", "owner": "alice",
            "name": "phone", "adb_port": 6520,
            "registration_info": {"name": "cvd-1"},
        })
    );
    let _plain = server.registered_device_with_info("plain").await;
    assert_eq!(
        json(&server.get("/devices").await.body),
        serde_json::json!([
            {"device_id": "cvd-1", "group_name": "g1", "owner": "alice", "name": "phone", "adb_port": 6520},
            {"device_id": "plain", "group_name": "", "adb_port": 0},
        ])
    );
    let grouped = json(&server.get("/devices?groupId=g1").await.body);
    assert_eq!(grouped.as_array().unwrap().len(), 1);
    assert_eq!(grouped[0]["device_id"], "cvd-1");
    assert_eq!(
        json(&server.get("/devices?owner=bob").await.body),
        serde_json::json!([])
    );

    // Registered now: a pre-registration of it is refused.
    other.send_bytes(PRE_REGISTER.as_bytes()).await;
    let answer = json(&other.recv_text().await);
    assert_eq!(answer[0]["message"], "Device id already registered");
    server.stop().await.unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn closing_the_control_connection_cancels_what_has_not_registered() {
    let Setup {
        server,
        control,
        dir,
    } = start().await;
    let mut tool = SocketPeer::connect(&control).await;
    tool.send_bytes(PRE_REGISTER.as_bytes()).await;
    assert_eq!(json(&tool.recv_text().await)[0]["status"], "accepted");
    tool.close().await;
    // The session ends with the connection (the socket gauge says when),
    // and its pre-registration with it.
    let closed = || async { server.metric("signaling_device_socket_connections").await == 0.0 };
    common::eventually("the control connection is closed", closed).await;
    let mut again = SocketPeer::connect(&control).await;
    again.send_bytes(PRE_REGISTER.as_bytes()).await;
    assert_eq!(json(&again.recv_text().await)[0]["status"], "accepted");
    again.close().await;
    common::eventually("the second control connection is closed", closed).await;
    // Nothing waits for the id now: it registers with an empty descriptor.
    let _device = server.registered_device_with_info("cvd-1").await;
    assert_eq!(
        json(&server.get("/devices/cvd-1").await.body)["group_name"],
        ""
    );
    server.stop().await.unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn bad_control_messages_are_answered_and_the_connection_stays() {
    let Setup {
        server,
        control,
        dir,
    } = start().await;
    let mut tool = SocketPeer::connect(&control).await;
    for (text, want) in [
        ("nonsense", "Invalid message: expected a JSON object"),
        (
            r#"{"message_type":"reboot"}"#,
            "Unknown message type: reboot",
        ),
        (
            r#"{"message_type":"pre-register"}"#,
            "Invalid message: missing field `devices` at line 1 column 31",
        ),
    ] {
        tool.send_bytes(text.as_bytes()).await;
        let answer = json(&tool.recv_text().await);
        assert_eq!(answer["error"], want, "{text}");
    }
    tool.send_bytes(PRE_REGISTER.as_bytes()).await;
    assert_eq!(json(&tool.recv_text().await)[0]["status"], "accepted");
    tool.expect_silence(Duration::from_millis(50)).await;
    server.stop().await.unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}
