//! Instances that share their devices through a real redis-server
//! (PROTOCOL.md, "Many instances"): each test starts its own on a free
//! loopback port, and its own instances.

#![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

mod common;

use std::time::Duration;

use common::{Redis, TestServer, cluster_config, cluster_member, eventually};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use signaling_server::ServerConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Short, so that failures show quickly (renewals, and the deadline of
/// every Redis command, every 500 ms), and long enough that a loaded
/// machine running the suite in parallel does not miss a deadline.
const LEASE: Duration = Duration::from_millis(1500);

async fn joined(server: &TestServer) {
    eventually("the instance joined redis", || async {
        server.metric("signaling_cluster_redis_up").await == 1.0
    })
    .await;
}

async fn listed(server: &TestServer, id: &str) -> bool {
    let devices: Vec<String> = serde_json::from_str(&server.get("/devices").await.body).unwrap();
    devices.iter().any(|d| d == id)
}

async fn until_listed(server: &TestServer, id: &str) {
    eventually(&format!("{id} is listed"), || listed(server, id)).await;
}

/// Two instances on one Redis.
async fn pair(redis: &Redis) -> (TestServer, TestServer) {
    let a = cluster_member(redis, LEASE).await;
    let b = cluster_member(redis, LEASE).await;
    joined(&a).await;
    joined(&b).await;
    (a, b)
}

fn forward(payload: Value) -> String {
    json!({"message_type": "forward", "payload": payload}).to_string()
}

fn device_forward(client_id: u64, payload: Value) -> String {
    json!({"message_type": "forward", "client_id": client_id, "payload": payload}).to_string()
}

#[tokio::test]
async fn a_device_on_one_instance_is_listed_and_reached_from_another() {
    let redis = Redis::start().await;
    let (a, b) = pair(&redis).await;
    let mut device = a.registered_device_with_info("cvd-1").await;
    until_listed(&b, "cvd-1").await;
    let descriptor = b.get("/devices/cvd-1").await;
    assert_eq!(descriptor.status, 200, "{}", descriptor.body);

    // A client on B: config, then the device's device_info, from A.
    let mut client = b.client().await;
    client
        .send(r#"{"message_type":"connect","device_id":"cvd-1"}"#)
        .await;
    assert_eq!(client.recv_json().await["message_type"], "config");
    let info = client.recv_json().await;
    assert_eq!(
        info,
        json!({"message_type": "device_info", "device_info": {"name": "cvd-1"}})
    );

    // Both ways, payloads verbatim.
    client
        .send(&forward(json!({"type": "request-offer"})))
        .await;
    let to_device = device.recv_json().await;
    assert_eq!(
        to_device,
        json!({"message_type": "client_msg", "client_id": 1, "payload": {"type": "request-offer"}})
    );
    device
        .send(&device_forward(1, json!({"type": "offer", "sdp": "v=0"})))
        .await;
    assert_eq!(
        client.recv_json().await,
        json!({"message_type": "device_msg", "payload": {"type": "offer", "sdp": "v=0"}})
    );
    assert_eq!(a.metric("signaling_cluster_sessions").await, 1.0);
    assert_eq!(b.metric("signaling_cluster_sessions").await, 1.0);
    assert_eq!(b.metric("signaling_clients").await, 1.0);
    assert_eq!(a.metric("signaling_clients").await, 0.0);

    // The client leaves: the device hears it once.
    client.close().await;
    assert_eq!(
        device.recv_json().await,
        json!({"message_type": "client_disconnected", "client_id": 1})
    );
    device.expect_silence(Duration::from_millis(300)).await;

    // A second client; then the device leaves: the client hears it once.
    let mut second = b.connected_client("cvd-1").await;
    device.close().await;
    assert_eq!(second.recv_error().await, "Device disconnected");
    let (code, _) = second.recv_close().await;
    assert_eq!(code, CloseCode::Away);
    eventually("cvd-1 is no longer listed", || async {
        !listed(&b, "cvd-1").await
    })
    .await;

    for server in [&a, &b] {
        eventually("the gauges are back to zero", || async {
            server.metric("signaling_cluster_sessions").await == 0.0
                && server.metric("signaling_clients").await == 0.0
                && server.metric("signaling_devices").await == 0.0
        })
        .await;
    }
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    assert!(
        redis.keys().await.is_empty(),
        "left in redis: {:?}",
        redis.keys().await
    );
}

#[tokio::test]
async fn an_id_held_on_one_instance_is_taken_on_every_other() {
    let redis = Redis::start().await;
    let (a, b) = pair(&redis).await;
    let mut holder = a.registered_device_with_info("cvd-1").await;
    until_listed(&b, "cvd-1").await;
    // D3 on B; the holder is untouched.
    let mut duplicate = b.device().await;
    duplicate
        .send(r#"{"message_type":"register","device_id":"cvd-1"}"#)
        .await;
    assert_eq!(
        duplicate.recv_error().await,
        "Device id already taken: cvd-1"
    );
    holder.expect_silence(Duration::from_millis(300)).await;
    let mut client = b.connected_client("cvd-1").await;
    client.send(&forward(json!("still yours"))).await;
    assert_eq!(holder.recv_json().await["payload"], "still yours");
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// An id whose holder's instance key has lapsed is free, though the id's
/// own lease has not run out: every instance stops listing the id at that
/// moment, so a registration there must keep it (PROTOCOL.md, "Many
/// instances", 8).
#[tokio::test]
async fn an_id_whose_instance_is_gone_is_free_though_its_own_lease_runs_on() {
    let redis = Redis::start().await;
    let a = cluster_member(&redis, LEASE).await;
    joined(&a).await;
    // The record of an instance that is gone (it has no alive key), with
    // a minute of lease left on the id.
    let mut conn = redis.connection().await.unwrap();
    let () = redis::cmd("SET")
        .arg("signaling:dev:cvd-1")
        .arg(r#"{"o":"00000000000000ff","r":1,"id":"cvd-1","descriptor":{},"info":null}"#)
        .arg("PX")
        .arg(60_000)
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut device = a.registered_device_with_info("cvd-1").await;
    let mut client = a.connected_client("cvd-1").await;
    client.send(&forward(json!("yours"))).await;
    assert_eq!(device.recv_json().await["payload"], "yours");
    // The lease is the device's now, and stays so past a renewal.
    tokio::time::sleep(LEASE).await;
    let held: String = redis::cmd("GET")
        .arg("signaling:dev:cvd-1")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!held.starts_with(r#"{"o":"00000000000000ff""#), "{held}");
    client.send(&forward(json!("still yours"))).await;
    assert_eq!(device.recv_json().await["payload"], "still yours");
    a.stop().await.unwrap();
}

/// A Redis that wants a password, and a database other than 0: an
/// instance uses both as its URL says; with a wrong password it never
/// joins, and refuses registrations as unavailable.
#[tokio::test]
async fn the_urls_password_and_database_are_used() {
    let redis = Redis::start_with_password("s3cret").await;
    let mut config = cluster_config(&redis, LEASE);
    if let Some(link) = &mut config.redis {
        link.url = redis.url_of_database(3);
    }
    let a = TestServer::start(config).await;
    joined(&a).await;
    let _device = a.registered_device_with_info("cvd-1").await;
    let mut third = redis::Client::open(redis.url_of_database(3))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let held: i64 = redis::cmd("EXISTS")
        .arg("signaling:dev:cvd-1")
        .query_async(&mut third)
        .await
        .unwrap();
    assert_eq!(held, 1, "the lease is in database 3");
    assert!(redis.keys().await.is_empty(), "nothing in database 0");

    let mut config = cluster_config(&redis, LEASE);
    if let Some(link) = &mut config.redis {
        link.url = format!("redis://:wrong@127.0.0.1:{}/", redis.port);
    }
    let wrong = TestServer::start(config).await;
    eventually("the wrong password failed to join", || async {
        wrong.metric("signaling_cluster_link_failures_total").await >= 1.0
    })
    .await;
    assert_eq!(wrong.metric("signaling_cluster_redis_up").await, 0.0);
    let mut refused = wrong.device().await;
    refused
        .send(r#"{"message_type":"register","device_id":"cvd-2"}"#)
        .await;
    let error = refused.recv_error().await;
    assert!(error.starts_with("Registry unavailable"), "{error}");
    a.stop().await.unwrap();
    wrong.stop().await.unwrap();
}

/// `--redis unix:///path`: instances meet on Redis's unix socket.
#[tokio::test]
async fn instances_meet_on_a_unix_socket() {
    let dir = common::temp_dir("redis-socket");
    let socket = dir.join("redis.sock");
    let redis = Redis::start_on_unix_socket(socket.clone()).await;
    let config = || {
        let mut config = cluster_config(&redis, LEASE);
        if let Some(link) = &mut config.redis {
            link.url = format!("unix://{}", socket.display());
        }
        config
    };
    let a = TestServer::start(config()).await;
    let b = TestServer::start(config()).await;
    joined(&a).await;
    joined(&b).await;
    let mut device = a.registered_device_with_info("cvd-1").await;
    until_listed(&b, "cvd-1").await;
    let mut client = b.connected_client("cvd-1").await;
    client.send(&forward(json!("over the socket"))).await;
    assert_eq!(device.recv_json().await["payload"], "over the socket");
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn ten_thousand_messages_each_way_arrive_in_order() {
    const N: usize = 10_000;
    let redis = Redis::start().await;
    // Room for every message: a burst crosses Redis in batches, and lands
    // in the receiver's outbox faster than it would from a socket (the
    // slow-consumer bound across instances has its own test). The default
    // lease: this test is about order, and on a loaded machine the flood
    // can hold up a renewal past the short one.
    let config = || ServerConfig {
        outbox_messages: 2 * N,
        outbox_bytes: 16 << 20,
        ..cluster_config(
            &redis,
            signaling_server::cluster::RedisConfig::DEFAULT_LEASE,
        )
    };
    let a = TestServer::start(config()).await;
    let b = TestServer::start(config()).await;
    joined(&a).await;
    joined(&b).await;
    let device = a.registered_device_with_info("cvd-1").await;
    until_listed(&b, "cvd-1").await;
    let client = b.connected_client("cvd-1").await;
    let (mut device_tx, mut device_rx) = device.ws.split();
    let (mut client_tx, mut client_rx) = client.ws.split();
    // Both directions at once, each sender as fast as it can.
    let client_sends = async {
        for n in 0..N {
            client_tx
                .feed(Message::text(forward(json!({"n": n}))))
                .await
                .unwrap();
        }
        client_tx.flush().await.unwrap();
    };
    let device_sends = async {
        for n in 0..N {
            device_tx
                .feed(Message::text(device_forward(1, json!({"n": n}))))
                .await
                .unwrap();
        }
        device_tx.flush().await.unwrap();
    };
    let device_reads = async {
        let mut n = 0;
        while n < N {
            let Message::Text(text) = device_rx.next().await.unwrap().unwrap() else {
                continue;
            };
            let value: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(
                value["payload"]["n"], n,
                "message {n} to the device: {value}"
            );
            n += 1;
        }
    };
    let client_reads = async {
        let mut n = 0;
        while n < N {
            let Message::Text(text) = client_rx.next().await.unwrap().unwrap() else {
                continue;
            };
            let value: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(
                value["payload"]["n"], n,
                "message {n} to the client: {value}"
            );
            n += 1;
        }
    };
    tokio::time::timeout(
        Duration::from_secs(60),
        futures_util::future::join4(client_sends, device_sends, device_reads, client_reads),
    )
    .await
    .expect("20,000 messages within a minute");
    assert!(b.metric("signaling_cluster_frames_sent_total").await >= N as f64);
    assert!(a.metric("signaling_cluster_frames_sent_total").await >= N as f64);
    // Batched: far fewer publishes than frames.
    let publishes = a.metric("signaling_cluster_publishes_total").await
        + b.metric("signaling_cluster_publishes_total").await;
    assert!(
        publishes < (2 * N) as f64,
        "{publishes} publishes for {} frames",
        2 * N
    );
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test]
async fn a_client_waits_on_one_instance_for_a_device_that_registers_on_another() {
    let redis = Redis::start().await;
    let config = || ServerConfig {
        client_wait: Duration::from_secs(10),
        ..cluster_config(&redis, LEASE)
    };
    let a = TestServer::start(config()).await;
    let b = TestServer::start(config()).await;
    joined(&a).await;
    joined(&b).await;
    let mut client = b.client().await;
    client
        .send(r#"{"message_type":"connect","device_id":"later"}"#)
        .await;
    assert_eq!(client.recv_json().await["message_type"], "config");
    let mut device = a.registered_device_with_info("later").await;
    assert_eq!(
        client.recv_json().await,
        json!({"message_type": "device_info", "device_info": {"name": "later"}})
    );
    client.send(&forward(json!(1))).await;
    assert_eq!(device.recv_json().await["payload"], 1);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test]
async fn a_device_that_cannot_keep_up_is_closed_as_slow_and_its_remote_client_hears_it() {
    let redis = Redis::start().await;
    // The default lease: the flood below must not hold up a renewal past
    // the short one on a loaded machine; the client's instance has room
    // to queue it all for Redis (the bound under test is the device's).
    let lease = signaling_server::cluster::RedisConfig::DEFAULT_LEASE;
    let a = TestServer::start(ServerConfig {
        outbox_messages: 8,
        ..cluster_config(&redis, lease)
    })
    .await;
    let mut roomy = cluster_config(&redis, lease);
    if let Some(link) = &mut roomy.redis {
        link.queue_bytes = 64 << 20;
    }
    let b = TestServer::start(roomy).await;
    joined(&a).await;
    joined(&b).await;
    // A device that never reads.
    let _device = a.registered_device_with_info("slow").await;
    until_listed(&b, "slow").await;
    let client = b.connected_client("slow").await;
    // 24 MB: more than the device's socket buffers and outbox hold.
    let flood = forward(json!("x".repeat(60_000)));
    let (told, _client) = common::flood_until_told_at_most(client, flood, 400).await;
    assert_eq!(told, r#"{"error":"Device disconnected"}"#);
    assert_eq!(
        a.metric(r#"signaling_errors_total{error="slow_consumer"}"#)
            .await,
        1.0
    );
    assert_eq!(b.metric("signaling_cluster_link_failures_total").await, 0.0);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test]
async fn losing_redis_closes_every_spanning_session_refuses_leases_and_keeps_local_ones() {
    let mut redis = Redis::start().await;
    let (a, b) = pair(&redis).await;
    let mut device = a.registered_device_with_info("cvd-1").await;
    until_listed(&b, "cvd-1").await;
    let mut remote = b.connected_client("cvd-1").await;
    let mut local = a.connected_client("cvd-1").await;
    remote.send(&forward(json!("remote"))).await;
    assert_eq!(device.recv_json().await["client_id"], 1);
    local.send(&forward(json!("local"))).await;
    assert_eq!(device.recv_json().await["client_id"], 2);

    redis.kill();
    // The spanning session ends on both sides with the usual
    // announcements: Device disconnected to the client on B, its
    // client_disconnected to the device on A.
    assert_eq!(remote.recv_error().await, "Device disconnected");
    assert_eq!(
        device.recv_json().await,
        json!({"message_type": "client_disconnected", "client_id": 1})
    );
    // The session wholly on A goes on.
    local.send(&forward(json!("still here"))).await;
    assert_eq!(device.recv_json().await["payload"], "still here");
    device.send(&device_forward(2, json!("and you"))).await;
    assert_eq!(local.recv_json().await["payload"], "and you");
    // A registration needs a lease: refused, saying why, with 1013.
    eventually("a is down", || async {
        a.metric("signaling_cluster_redis_up").await == 0.0
    })
    .await;
    let mut refused = a.device().await;
    refused
        .send(r#"{"message_type":"register","device_id":"cvd-2"}"#)
        .await;
    let error = refused.recv_error().await;
    assert!(error.starts_with("Registry unavailable"), "{error}");
    let (code, _) = refused.recv_close().await;
    assert_eq!(u16::from(code), 1013);
    // B lists nothing it cannot reach.
    assert!(!listed(&b, "cvd-1").await);

    // Redis comes back: both rejoin on their own, the device here is
    // leased again and listed on B, and a client on B reaches it.
    redis.spawn().await;
    joined(&a).await;
    joined(&b).await;
    until_listed(&b, "cvd-1").await;
    let mut again = b.connected_client("cvd-1").await;
    again.send(&forward(json!("back"))).await;
    assert_eq!(device.recv_json().await["payload"], "back");
    assert!(a.metric("signaling_cluster_link_failures_total").await >= 1.0);
    assert!(
        b.metric(r#"signaling_cluster_sessions_closed_total{reason="redis_lost"}"#)
            .await
            >= 1.0
    );
    drop((device, local, again));
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    assert!(
        redis.keys().await.is_empty(),
        "left in redis: {:?}",
        redis.keys().await
    );
}

#[tokio::test]
async fn a_redis_that_stops_answering_is_a_redis_lost() {
    let redis = Redis::start().await;
    let (a, b) = pair(&redis).await;
    let mut device = a.registered_device_with_info("cvd-1").await;
    until_listed(&b, "cvd-1").await;
    let mut client = b.connected_client("cvd-1").await;
    client.send(&forward(json!(1))).await;
    assert_eq!(device.recv_json().await["payload"], 1);
    redis.signal("STOP");
    // Within a few renewal periods, both sides give up on it.
    assert_eq!(client.recv_error().await, "Device disconnected");
    assert_eq!(
        device.recv_json().await,
        json!({"message_type": "client_disconnected", "client_id": 1})
    );
    redis.signal("CONT");
    joined(&a).await;
    joined(&b).await;
    until_listed(&b, "cvd-1").await;
    let mut again = b.connected_client("cvd-1").await;
    again.send(&forward(json!(2))).await;
    assert_eq!(device.recv_json().await["payload"], 2);
    drop((device, client, again));
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    // The incarnations that lost Redis left keys that lapse with their
    // lease; the last ones were given back.
    eventually("redis holds nothing of either instance", || async {
        redis.keys().await.is_empty()
    })
    .await;
}

/// An instance as its own process, so that it can be killed with SIGKILL.
struct Process {
    child: std::process::Child,
    address: std::net::SocketAddr,
}

impl Process {
    fn start(redis: &Redis) -> Self {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_signaling-server"))
            .args(["--listen", "127.0.0.1:0", "--redis", &redis.url()])
            .args(["--redis-lease", "1500ms"])
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the server");
        let stdout = child.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(stdout).lines();
        let address = lines
            .find_map(|line| {
                let line = line.ok()?;
                let rest = line.strip_prefix("signaling server on ws://")?;
                rest.split_whitespace().next()?.parse().ok()
            })
            .expect("the server prints its address");
        // Keep stdout drained.
        std::thread::spawn(move || lines.for_each(drop));
        Self { child, address }
    }

    fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.address)
    }

    async fn metric(&self, series: &str) -> f64 {
        let metrics = common::http_get(self.address, "/metrics", &[]).await;
        support::prometheus::sample_or_zero(&metrics.body, series)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test]
async fn an_instance_killed_mid_relay_ends_its_sessions_elsewhere_and_frees_its_ids() {
    let redis = Redis::start().await;
    let mut a = Process::start(&redis);
    let b = cluster_member(&redis, LEASE).await;
    joined(&b).await;
    eventually("a joined", || async {
        a.metric("signaling_cluster_redis_up").await == 1.0
    })
    .await;

    // cvd-a on A with a client on B; cvd-b on B with a client on A.
    let mut device_a = common::Peer::connect(&a.url("/register_device")).await;
    device_a
        .send(r#"{"message_type":"register","device_id":"cvd-a"}"#)
        .await;
    assert_eq!(device_a.recv_json().await["message_type"], "config");
    let mut device_b = b.registered_device_with_info("cvd-b").await;
    until_listed(&b, "cvd-a").await;
    let mut client_b = b.connected_client("cvd-a").await;
    let mut client_a = common::Peer::connect(&a.url("/connect_client")).await;
    eventually("cvd-b is listed on a", || async {
        let devices = common::http_get(a.address, "/devices", &[]).await.body;
        devices.contains("cvd-b")
    })
    .await;
    client_a
        .send(r#"{"message_type":"connect","device_id":"cvd-b"}"#)
        .await;
    assert_eq!(client_a.recv_json().await["message_type"], "config");
    assert_eq!(client_a.recv_json().await["message_type"], "device_info");
    client_a.send(&forward(json!("from a"))).await;
    assert_eq!(device_b.recv_json().await["payload"], "from a");

    // Mid-relay: messages flowing from the device on A to its client on B.
    for n in 0..100 {
        device_a.send(&device_forward(1, json!(n))).await;
    }
    a.kill();
    // What arrived came in order; then the session ends with the usual
    // announcement, on B's side of each session.
    let mut next = 0;
    loop {
        let text = client_b.recv_text().await;
        let value: Value = serde_json::from_str(&text).unwrap();
        if value["error"] == "Device disconnected" {
            break;
        }
        assert_eq!(value["payload"], next, "{value}");
        next += 1;
    }
    assert_eq!(
        device_b.recv_json().await,
        json!({"message_type": "client_disconnected", "client_id": 1})
    );
    // Its device id is free again within the lease.
    eventually("cvd-a is free again", || async {
        let mut device = b.device().await;
        device
            .send(r#"{"message_type":"register","device_id":"cvd-a"}"#)
            .await;
        let answer = device.recv_text().await;
        if answer.contains("config") {
            device.close().await;
            true
        } else {
            false
        }
    })
    .await;
    assert!(
        b.metric(r#"signaling_cluster_sessions_closed_total{reason="instance_gone"}"#)
            .await
            >= 1.0
    );
    assert_eq!(b.metric("signaling_cluster_sessions").await, 0.0);
    device_b.close().await;
    b.stop().await.unwrap();
    eventually("redis holds nothing of either instance", || async {
        redis.keys().await.is_empty()
    })
    .await;
}

#[tokio::test]
async fn two_hundred_pairs_split_over_three_instances() {
    const PAIRS: usize = 200;
    let redis = Redis::start().await;
    let servers = [
        cluster_member(&redis, LEASE).await,
        cluster_member(&redis, LEASE).await,
        cluster_member(&redis, LEASE).await,
    ];
    for server in &servers {
        joined(server).await;
    }
    let mut devices = Vec::new();
    for n in 0..PAIRS {
        devices.push(
            servers[n % 3]
                .registered_device_with_info(&format!("pair-{n}"))
                .await,
        );
    }
    eventually("every instance lists every device", || async {
        for server in &servers {
            let listed: Vec<String> =
                serde_json::from_str(&server.get("/devices").await.body).unwrap();
            if listed.len() != PAIRS {
                return false;
            }
        }
        true
    })
    .await;
    // Each device's client on the next instance over.
    let mut clients = Vec::new();
    for n in 0..PAIRS {
        clients.push(
            servers[(n + 1) % 3]
                .connected_client(&format!("pair-{n}"))
                .await,
        );
    }
    for (n, client) in clients.iter_mut().enumerate() {
        client.send(&forward(json!(n))).await;
    }
    for (n, device) in devices.iter_mut().enumerate() {
        assert_eq!(device.recv_json().await["payload"], n);
        device.send(&device_forward(1, json!(n))).await;
    }
    for (n, client) in clients.iter_mut().enumerate() {
        assert_eq!(client.recv_json().await["payload"], n);
    }
    // Each session spans two instances and counts on both.
    let mut spanning = 0.0;
    for server in &servers {
        spanning += server.metric("signaling_cluster_sessions").await;
    }
    assert_eq!(spanning, (2 * PAIRS) as f64);
    for client in clients {
        client.close().await;
    }
    for device in &mut devices {
        assert_eq!(
            device.recv_json().await["message_type"],
            "client_disconnected"
        );
    }
    for device in devices {
        device.close().await;
    }
    for server in &servers {
        eventually("the gauges are back to zero", || async {
            server.metric("signaling_cluster_sessions").await == 0.0
                && server.metric("signaling_devices").await == 0.0
                && server.metric("signaling_clients").await == 0.0
        })
        .await;
    }
    for server in servers {
        server.stop().await.unwrap();
    }
    assert!(
        redis.keys().await.is_empty(),
        "left in redis: {:?}",
        redis.keys().await
    );
}

/// The device on A's device socket (as Cuttlefish's register with the Go
/// operator); on B, a client on each client front door: the seed's
/// websocket, the reference's polling, the Go operator's websocket with
/// bare payloads, and its polling API.
#[tokio::test]
async fn every_front_door_reaches_a_device_on_another_instance() {
    let redis = Redis::start().await;
    let dir = common::temp_dir("cluster-socket");
    let a = TestServer::start(ServerConfig {
        device_socket: Some(signaling_server::config::DeviceSocketConfig::at(
            dir.join("operator"),
        )),
        // The device's socket closes at the end, which would hold its
        // session for a resume.
        resume_window: Duration::ZERO,
        ..cluster_config(&redis, LEASE)
    })
    .await;
    let b = cluster_member(&redis, LEASE).await;
    joined(&a).await;
    joined(&b).await;
    let mut device = a.registered_device_peer("cvd-1").await;
    until_listed(&b, "cvd-1").await;

    // The seed's websocket: client 1.
    let mut seed = b.connected_client("cvd-1").await;
    seed.send(&forward(json!("seed"))).await;
    assert_eq!(
        device.recv_json().await,
        json!({"message_type": "client_msg", "client_id": 1, "payload": "seed"})
    );

    // The reference's polling: client 2; device_info in the answer.
    let reply = common::http_post(b.addr, "/connect", r#"{"device_id":"cvd-1"}"#).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let answer: Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(answer["device_info"], json!({"name": "cvd-1"}));
    let polled = answer["connection_id"].as_str().unwrap().to_owned();
    let sent = common::http_post(
        b.addr,
        "/forward",
        &format!(r#"{{"connection_id":"{polled}","payload":"polled"}}"#),
    )
    .await;
    assert_eq!(sent.status, 200, "{}", sent.body);
    assert_eq!(
        device.recv_json().await,
        json!({"message_type": "client_msg", "client_id": 2, "payload": "polled"})
    );
    device
        .send(&device_forward(2, json!("to the poller")))
        .await;
    eventually("the polled client gets its message", || async {
        let reply = common::http_post(
            b.addr,
            "/poll_messages",
            &format!(r#"{{"connection_id":"{polled}"}}"#),
        )
        .await;
        reply.body == r#"["to the poller"]"#
    })
    .await;

    // The Go operator's websocket, bare payloads: client 3.
    let mut go = common::Peer::connect(&b.url("/devices/cvd-1/connect")).await;
    assert_eq!(
        common::without_offer_json(go.recv_json().await),
        json!({"device_info": {"name": "cvd-1"}})
    );
    go.send(r#"{"type":"request-offer"}"#).await;
    assert_eq!(
        device.recv_json().await,
        json!({"message_type": "client_msg", "client_id": 3, "payload": {"type": "request-offer"}})
    );
    device
        .send(&device_forward(3, json!({"type": "offer"})))
        .await;
    assert_eq!(
        go.recv_json().await,
        json!({"message_type": "device_msg", "payload": {"type": "offer"}})
    );

    // The Go operator's polling: client 4.
    let reply = common::http_post(b.addr, "/polled_connections", r#"{"device_id":"cvd-1"}"#).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let answer: Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(answer["device_info"], json!({"name": "cvd-1"}));
    let id = answer["connection_id"].as_str().unwrap().to_owned();
    let sent = common::http_post(
        b.addr,
        &format!("/polled_connections/{id}/:forward"),
        r#"{"payload":4}"#,
    )
    .await;
    assert_eq!(sent.status, 200, "{}", sent.body);
    assert_eq!(
        device.recv_json().await,
        json!({"message_type": "client_msg", "client_id": 4, "payload": 4})
    );

    // The device leaves: every client on B hears it.
    device.close().await;
    assert_eq!(seed.recv_error().await, "Device disconnected");
    assert_eq!(go.recv_error().await, "Device disconnected");
    let (code, _) = go.recv_close().await;
    assert_eq!(code, CloseCode::Away);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A TCP proxy to Redis for one instance, which can stall: it stops
/// moving bytes either way, as a link that hangs does, without closing.
struct StallingProxy {
    port: u16,
    stalled: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl StallingProxy {
    async fn start(redis: &Redis) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let stalled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let target = format!("127.0.0.1:{}", redis.port);
        let flag = stalled.clone();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else {
                    continue;
                };
                let (in_read, in_write) = inbound.into_split();
                let (out_read, out_write) = outbound.into_split();
                for (mut from, mut to) in [
                    (
                        Box::new(in_read) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
                        Box::new(out_write) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
                    ),
                    (Box::new(out_read), Box::new(in_write)),
                ] {
                    let flag = flag.clone();
                    tokio::spawn(async move {
                        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                        let mut buffer = vec![0u8; 16 << 10];
                        loop {
                            let Ok(n) = from.read(&mut buffer).await else {
                                return;
                            };
                            if n == 0 {
                                return;
                            }
                            while flag.load(Ordering::Relaxed) {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                            if to.write_all(&buffer[..n]).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        Self {
            port,
            stalled,
            task,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn stall(&self, stalled: bool) {
        self.stalled
            .store(stalled, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for StallingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn an_instance_whose_redis_link_stalls_is_cut_off_on_both_sides_and_rejoins() {
    let redis = Redis::start().await;
    let proxy = StallingProxy::start(&redis).await;
    let mut stalling = cluster_config(&redis, LEASE);
    if let Some(link) = &mut stalling.redis {
        link.url = proxy.url();
    }
    let a = TestServer::start(stalling).await;
    let b = cluster_member(&redis, LEASE).await;
    joined(&a).await;
    joined(&b).await;
    let mut device = a.registered_device_with_info("cvd-1").await;
    until_listed(&b, "cvd-1").await;
    let mut client = b.connected_client("cvd-1").await;
    client.send(&forward(json!(1))).await;
    assert_eq!(device.recv_json().await["payload"], 1);

    proxy.stall(true);
    // A misses a deadline and closes its side; B sees A's incarnation
    // lapse and closes its own.
    assert_eq!(
        device.recv_json().await,
        json!({"message_type": "client_disconnected", "client_id": 1})
    );
    assert_eq!(client.recv_error().await, "Device disconnected");
    eventually("b no longer lists a's device", || async {
        !listed(&b, "cvd-1").await
    })
    .await;

    proxy.stall(false);
    joined(&a).await;
    until_listed(&b, "cvd-1").await;
    let mut again = b.connected_client("cvd-1").await;
    again.send(&forward(json!(2))).await;
    assert_eq!(device.recv_json().await["payload"], 2);
    drop((device, client, again));
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    // The incarnations that lost Redis left keys that lapse with their
    // lease; the last ones were given back.
    eventually("redis holds nothing of either instance", || async {
        redis.keys().await.is_empty()
    })
    .await;
}

#[tokio::test]
async fn past_its_queue_bound_an_instance_fails_closed_rather_than_drop_messages() {
    let redis = Redis::start().await;
    let a = cluster_member(&redis, LEASE).await;
    let mut small = cluster_config(&redis, LEASE);
    if let Some(link) = &mut small.redis {
        link.queue_bytes = 65_536;
    }
    let b = TestServer::start(small).await;
    joined(&a).await;
    joined(&b).await;
    let mut device = a.registered_device_with_info("cvd-1").await;
    until_listed(&b, "cvd-1").await;
    let mut client = b.connected_client("cvd-1").await;
    // Far more than 64 KiB at once: the queue to Redis overflows.
    let big = json!("x".repeat(60_000));
    for _ in 0..40 {
        client.send(&forward(big.clone())).await;
    }
    assert_eq!(client.recv_error().await, "Device disconnected");
    // What reached the device came whole and in order, then it hears the
    // client left.
    loop {
        let message = device.recv_json().await;
        if message["message_type"] == "client_disconnected" {
            break;
        }
        assert_eq!(message["payload"], big);
    }
    assert!(b.metric("signaling_cluster_link_failures_total").await >= 1.0);
    joined(&b).await;
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// An instance cut off from Redis for longer than the lease finds, when it
/// is back, that another instance granted its device's id meanwhile: its
/// own device is told the id is taken and closed (PROTOCOL.md, "Many
/// instances": an id during a long outage).
#[tokio::test]
async fn a_device_whose_id_was_taken_during_its_instances_outage_is_evicted() {
    let redis = Redis::start().await;
    let proxy = StallingProxy::start(&redis).await;
    let mut stalling = cluster_config(&redis, LEASE);
    if let Some(link) = &mut stalling.redis {
        link.url = proxy.url();
    }
    let a = TestServer::start(stalling).await;
    let b = cluster_member(&redis, LEASE).await;
    joined(&a).await;
    joined(&b).await;
    let mut first = a.registered_device_with_info("cvd-1").await;
    until_listed(&b, "cvd-1").await;

    proxy.stall(true);
    // Once A's lease has lapsed, a device on B gets the id (and keeps it).
    let started = tokio::time::Instant::now();
    let mut second = loop {
        let mut device = b.device().await;
        device
            .send(r#"{"message_type":"register","device_id":"cvd-1"}"#)
            .await;
        if device.recv_text().await.contains("config") {
            break device;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the lease never lapsed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    proxy.stall(false);
    assert_eq!(first.recv_error().await, "Device id already taken: cvd-1");
    let (code, _) = first.recv_close().await;
    assert_eq!(code, CloseCode::Policy);
    // The device that got the id keeps it, though A's lease on it may
    // have outlived A's key by a moment when B granted it.
    let mut client = b.connected_client("cvd-1").await;
    client.send(&forward(json!("yours"))).await;
    assert_eq!(second.recv_json().await["payload"], "yours");
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}
