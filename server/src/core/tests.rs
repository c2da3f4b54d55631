//! The core's own promises: it touches no socket and reads no clock, its
//! errors are the ones PROTOCOL.md lists, and its timeouts fire at the
//! `now` they are given (rows D15, C13, C3's wait, and the idle timeout).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::session::{ClientSession, DeviceSession};
use super::*;
use crate::metrics::Metrics;

/// Every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

#[test]
fn the_core_touches_no_socket_and_reads_no_clock() {
    // Paths that mean I/O or the real clock. Tests may use what they like
    // (this file reads files), so only code before a `#[cfg(test)]` counts.
    const FORBIDDEN: [&str; 11] = [
        "tokio::",
        "hyper::",
        "hyper_util::",
        "axum::",
        "rustls::",
        "tungstenite::",
        "std::net",
        "std::fs",
        "std::io",
        "Instant::now",
        "SystemTime",
    ];
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/core");
    let files = sources(&root);
    assert!(files.len() >= 8, "found only {files:?}");
    for file in files {
        if file.ends_with("core/tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for (n, line) in code.lines().enumerate() {
            let line = line.trim_start();
            if line.starts_with("//") {
                continue;
            }
            for word in FORBIDDEN {
                assert!(
                    !line.contains(word),
                    "{}:{}: the core must not use {word}: {line}",
                    file.display(),
                    n + 1
                );
            }
        }
    }
}

/// The rows of the PROTOCOL.md table under `heading`, as cells.
fn table(heading: &str) -> Vec<Vec<String>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../PROTOCOL.md");
    let doc = std::fs::read_to_string(path).unwrap();
    let section = doc
        .split_once(heading)
        .unwrap_or_else(|| panic!("PROTOCOL.md has no {heading:?}"))
        .1;
    section
        .lines()
        .skip_while(|line| !line.starts_with('|'))
        .take_while(|line| line.starts_with('|'))
        .skip(2)
        .map(|line| {
            line.trim_matches('|')
                .split(" | ")
                .map(|cell| cell.trim().to_owned())
                .collect()
        })
        .collect()
}

/// What PROTOCOL.md's "connection" column says of an error.
fn connection_column(error: &ServerError) -> String {
    match error.close_code() {
        None => "open".to_owned(),
        Some(code) => format!("closed, {}", code.code()),
    }
}

#[test]
fn protocol_md_lists_every_error_and_nothing_else() {
    let rows = table("### Every error phrase");
    assert!(rows.len() > 10, "{rows:?}");
    let errors = ServerError::one_of_each();
    // Each documented phrase is a variant's, with the same ending.
    for row in &rows {
        let text = row[0].trim_matches('`');
        let phrase = text.split(':').next().unwrap_or(text);
        let error = errors
            .iter()
            .find(|e| e.phrase() == phrase)
            .unwrap_or_else(|| panic!("PROTOCOL.md lists {phrase:?}, which no variant has"));
        assert!(error.sends_error_frame(), "{phrase:?} sends no error frame");
        assert_eq!(row[3], connection_column(error), "{phrase:?}");
    }
    for error in &errors {
        assert!(
            error.to_string().starts_with(error.phrase()),
            "{error} does not start with its phrase"
        );
        if error.sends_error_frame() {
            // Every error frame is in the table.
            assert!(
                rows.iter()
                    .any(|row| row[0].trim_matches('`').starts_with(error.phrase())),
                "{:?} is missing from PROTOCOL.md's error table",
                error.phrase()
            );
        } else {
            // A close alone: its code's row names its reason.
            let code = error.close_code().expect("a close-only error closes");
            let row = table("### Close codes")
                .into_iter()
                .find(|row| row[0] == code.code().to_string())
                .unwrap_or_else(|| panic!("no row for close code {}", code.code()));
            assert!(
                row[2].contains(error.phrase()),
                "the {} row of PROTOCOL.md's close codes does not name {:?}",
                code.code(),
                error.phrase()
            );
        }
    }
}

#[test]
fn every_error_has_a_snake_case_label_of_its_own_listed_in_protocol_md() {
    let errors = ServerError::one_of_each();
    let mut labels: Vec<&str> = errors.iter().map(ServerError::label).collect();
    labels.sort_unstable();
    labels.dedup();
    assert_eq!(labels.len(), errors.len(), "two variants share a label");
    let mut listed = ServerError::LABELS.to_vec();
    listed.sort_unstable();
    assert_eq!(labels, listed, "ServerError::LABELS is not every label");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../PROTOCOL.md");
    let doc = std::fs::read_to_string(path).unwrap();
    let metrics = doc.split_once("## Metrics").expect("a Metrics section").1;
    for label in labels {
        assert!(
            label
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "{label:?} is not snake_case"
        );
        assert!(
            metrics.contains(&format!("`{label}`")),
            "PROTOCOL.md's Metrics section does not list the error label {label:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// Timeouts, with driven time
// ---------------------------------------------------------------------------

const HANDSHAKE: Duration = Duration::from_secs(10);
const WAIT: Duration = Duration::from_secs(5);
const IDLE: Duration = Duration::from_secs(45);
const KEEPALIVE: Keepalive = Keepalive {
    idle: Some(IDLE),
    ping: Some(Duration::from_secs(15)),
};

fn core(client_wait: Duration) -> Arc<Core> {
    let settings = Settings {
        ice_servers: Vec::new(),
        turn: None,
        client_wait,
        handshake_timeout: HANDSHAKE,
        outbox: OutboxLimits {
            max_messages: 64,
            max_bytes: 1 << 16,
        },
        rate_limit: None,
        max_message_bytes: 65_536,
        resume_window: Duration::from_secs(30),
        random: Arc::new(crate::random::SystemRandom),
    };
    Arc::new(Core::new(settings, Arc::new(Metrics::new())))
}

fn device(core: &Arc<Core>, now: Instant) -> Connection<DeviceSession> {
    let session = DeviceSession::new(core.clone(), core.outbox(), now);
    Connection::new(session, KEEPALIVE, now)
}

fn client(core: &Arc<Core>, now: Instant) -> Connection<ClientSession> {
    let session = ClientSession::new(core.clone(), core.outbox(), now);
    Connection::new(session, KEEPALIVE, now)
}

/// Everything queued, taken.
fn sent<S: Session>(conn: &Connection<S>) -> Vec<Outgoing> {
    let mut batch = Batch::default();
    conn.outbox().take(&mut batch);
    batch.items.into()
}

fn fatal(error: ServerError) -> Vec<Outgoing> {
    vec![Outgoing::Error(error.clone()), Outgoing::Close(error)]
}

#[test]
fn d15_registration_timeout_fires_at_the_handshake_timeout() {
    let core = core(Duration::ZERO);
    let t0 = Instant::now();
    let mut silent = device(&core, t0);
    assert_eq!(silent.poll_timeout(), t0 + HANDSHAKE);
    assert_eq!(
        silent.handle_timeout(t0 + HANDSHAKE - Duration::from_millis(1)),
        None
    );
    assert_eq!(sent(&silent), []);
    assert_eq!(silent.handle_timeout(t0 + HANDSHAKE), None);
    assert_eq!(sent(&silent), fatal(ServerError::RegistrationTimeout));

    // Just inside: a register a moment before the deadline holds.
    let mut quick = device(&core, t0);
    let at = t0 + HANDSHAKE - Duration::from_millis(1);
    quick.on_text(r#"{"message_type":"register","device_id":"quick"}"#, at);
    assert_eq!(sent(&quick), [Outgoing::Config(core.config())]);
    // From now on only the keepalive wakes it.
    assert_eq!(quick.poll_timeout(), t0 + KEEPALIVE.ping.unwrap());
    assert_eq!(quick.handle_timeout(t0 + HANDSHAKE), None);
    assert_eq!(sent(&quick), []);
}

#[test]
fn d15_errors_before_register_do_not_stop_the_clock() {
    let core = core(Duration::ZERO);
    let t0 = Instant::now();
    let mut device = device(&core, t0);
    device.on_text("not json", t0 + Duration::from_secs(9));
    assert_eq!(sent(&device).len(), 1);
    assert_eq!(device.poll_timeout(), t0 + HANDSHAKE);
    device.handle_timeout(t0 + HANDSHAKE);
    assert_eq!(sent(&device), fatal(ServerError::RegistrationTimeout));
}

#[test]
fn c13_connect_timeout_fires_at_the_handshake_timeout() {
    let core = core(Duration::ZERO);
    let t0 = Instant::now();
    let mut silent = client(&core, t0);
    assert_eq!(silent.poll_timeout(), t0 + HANDSHAKE);
    silent.handle_timeout(t0 + HANDSHAKE - Duration::from_millis(1));
    assert_eq!(sent(&silent), []);
    silent.handle_timeout(t0 + HANDSHAKE);
    assert_eq!(sent(&silent), fatal(ServerError::ConnectTimeout));
    // Over means over: later input is not acted on.
    silent.on_text(
        r#"{"message_type":"connect","device_id":"x"}"#,
        t0 + HANDSHAKE,
    );
    assert_eq!(sent(&silent), []);
}

#[test]
fn c03_the_wait_ends_with_not_found_at_client_wait() {
    let core = core(WAIT);
    let t0 = Instant::now();
    let mut waiting = client(&core, t0);
    let connect = r#"{"message_type":"connect","device_id":"later"}"#;
    waiting.on_text(connect, t0);
    assert_eq!(sent(&waiting), [Outgoing::Config(core.config())]);
    assert_eq!(waiting.poll_timeout(), t0 + WAIT);
    waiting.handle_timeout(t0 + WAIT - Duration::from_millis(1));
    assert_eq!(sent(&waiting), []);
    waiting.handle_timeout(t0 + WAIT);
    assert_eq!(
        sent(&waiting),
        fatal(ServerError::DeviceNotFound("later".into()))
    );
    assert_eq!(core.registry.waiting_clients(), 0);
}

#[test]
fn c03_a_device_that_registers_within_the_wait_gets_its_client() {
    let core = core(WAIT);
    let t0 = Instant::now();
    let mut waiting = client(&core, t0);
    waiting.on_text(r#"{"message_type":"connect","device_id":"soon"}"#, t0);
    sent(&waiting);
    let t1 = t0 + WAIT - Duration::from_millis(1);
    let mut device = device(&core, t1);
    device.on_text(
        r#"{"message_type":"register","device_id":"soon","device_info":{"a":1}}"#,
        t1,
    );
    let info = raw(r#"{"a":1}"#);
    assert_eq!(sent(&waiting), [Outgoing::DeviceInfo(Json::shared(&info))]);
    // The wait is over: the deadline has gone, and passing it does nothing.
    assert_eq!(waiting.poll_timeout(), t0 + KEEPALIVE.ping.unwrap());
    waiting.handle_timeout(t0 + WAIT);
    assert_eq!(sent(&waiting), []);
    assert_eq!(waiting.session_mut().client_id(), Some(1));
}

#[test]
fn idle_timeout_counts_from_the_last_sign_of_life() {
    let core = core(Duration::ZERO);
    let t0 = Instant::now();
    let mut device = device(&core, t0);
    device.on_text(r#"{"message_type":"register","device_id":"idle"}"#, t0);
    sent(&device);
    let ping = KEEPALIVE.ping.unwrap();
    assert_eq!(device.poll_timeout(), t0 + ping);
    assert_eq!(device.handle_timeout(t0 + ping), Some(Due::Ping));
    // A pong at 20 s: the idle timeout now counts from there.
    device.on_activity(t0 + Duration::from_secs(20));
    assert_eq!(device.handle_timeout(t0 + 2 * ping), Some(Due::Ping));
    assert_eq!(device.handle_timeout(t0 + IDLE), Some(Due::Ping));
    let idle_at = t0 + Duration::from_secs(20) + IDLE;
    assert_eq!(device.poll_timeout(), t0 + 4 * ping);
    assert_eq!(
        device.handle_timeout(idle_at - Duration::from_millis(1)),
        Some(Due::Ping)
    );
    assert_eq!(device.poll_timeout(), idle_at);
    assert_eq!(
        device.handle_timeout(idle_at),
        Some(Due::End(ServerError::IdleTimeout))
    );
}

/// A device socket's connection has no idle timeout (the kernel reports a
/// peer that is gone) and no pings: once registered, nothing ends it.
#[test]
fn without_idle_timeout_or_pings_a_registered_device_stays() {
    let core = core(Duration::ZERO);
    let t0 = Instant::now();
    let session = DeviceSession::new(core.clone(), core.outbox(), t0);
    let keepalive = Keepalive {
        idle: None,
        ping: None,
    };
    let mut device = Connection::new(session, keepalive, t0);
    // The registration timeout still applies before registering.
    assert_eq!(device.poll_timeout(), t0 + HANDSHAKE);
    device.on_text(r#"{"message_type":"register","device_id":"quiet"}"#, t0);
    sent(&device);
    let week = Duration::from_secs(7 * 24 * 60 * 60);
    let mut now = t0;
    while now < t0 + week {
        let next = device.poll_timeout();
        assert!(next > now, "each wake-up is later than the last");
        now = next;
        assert_eq!(device.handle_timeout(now), None);
    }
    assert_eq!(sent(&device), []);
}

#[test]
fn the_rate_limit_runs_on_the_given_clock() {
    let settings = Settings {
        rate_limit: Some(RateLimit {
            per_second: 10,
            burst: 2,
        }),
        ..core(Duration::ZERO).settings.clone()
    };
    let core = Arc::new(Core::new(settings, Arc::new(Metrics::new())));
    let t0 = Instant::now();
    let mut device = device(&core, t0);
    let forward = r#"{"message_type":"forward","client_id":1,"payload":1}"#;
    device.on_text(forward, t0);
    device.on_text(forward, t0);
    assert_eq!(sent(&device).len(), 2, "two Not registered errors");
    // 100 ms later one more message has been earned; at once, none.
    device.on_text(forward, t0 + Duration::from_millis(100));
    assert_eq!(sent(&device).len(), 1);
    device.on_text(forward, t0 + Duration::from_millis(100));
    assert_eq!(
        sent(&device),
        fatal(ServerError::RateLimited {
            per_second: 10,
            burst: 2
        })
    );
}

/// A raw JSON value made from text, for comparisons.
fn raw(text: &str) -> Box<protocol::RawValue> {
    protocol::RawValue::from_string(text.to_owned()).unwrap()
}

/// Credentials that say whom they name, for the test below.
#[derive(Debug)]
struct NamingCredentials;

impl TurnCredentials for NamingCredentials {
    fn ice_servers(&self, who: &str) -> Vec<protocol::IceServer> {
        vec![protocol::IceServer {
            urls: vec!["turn:t".into()],
            username: Some(who.to_owned()),
            credential: None,
        }]
    }
}

/// With TURN, each `config` has its own entry after the configured ones,
/// naming the device, or the device and a number for each client.
#[test]
fn each_config_names_its_peer_for_turn() {
    let stun = protocol::IceServer {
        urls: vec!["stun:s".into()],
        username: None,
        credential: None,
    };
    let settings = Settings {
        ice_servers: vec![stun.clone()],
        turn: Some(Arc::new(NamingCredentials)),
        ..core(Duration::ZERO).settings.clone()
    };
    let turned = Arc::new(Core::new(settings, Arc::new(Metrics::new())));
    let named = |config: Arc<protocol::Config>| {
        assert_eq!(config.ice_servers[0], stun);
        config.ice_servers[1].username.clone().unwrap()
    };
    let t0 = Instant::now();
    let mut device = device(&turned, t0);
    device.on_text(r#"{"message_type":"register","device_id":"cvd-1"}"#, t0);
    let sent = sent(&device);
    let [Outgoing::Config(config)] = sent.as_slice() else {
        panic!("expected a config");
    };
    assert_eq!(named(config.clone()), "cvd-1");
    assert_eq!(named(turned.client_config("cvd-1")), "cvd-1/client-1");
    assert_eq!(named(turned.client_config("cvd-1")), "cvd-1/client-2");
    assert_eq!(named(turned.anonymous_config()), "client-3");
    // New ICE servers (read again on SIGHUP): the TURN entry follows them.
    let other = protocol::IceServer {
        urls: vec!["stun:other".into()],
        username: None,
        credential: None,
    };
    turned.set_ice_servers(vec![other.clone()]);
    let config = turned.client_config("cvd-1");
    assert_eq!(config.ice_servers[0], other);
    assert_eq!(
        config.ice_servers[1].username.as_deref(),
        Some("cvd-1/client-4")
    );
    // Without TURN, the one shared config, until it is replaced.
    let plain = core(Duration::ZERO);
    assert!(Arc::ptr_eq(&plain.device_config("x"), &plain.config()));
    plain.set_ice_servers(vec![other.clone()]);
    assert_eq!(plain.device_config("x").ice_servers, [other]);
}

/// Every frame a device receives is within the size limit: a client's
/// payload that its `client_msg` envelope would carry past it is refused
/// with `Payload too big` and not relayed; the session goes on, and the
/// longest payload allowed arrives in a frame of at most the limit.
#[test]
fn a_payload_is_relayed_only_if_its_frame_fits_the_limit() {
    let core = core(Duration::ZERO);
    let limit = core.settings.max_message_bytes;
    let t0 = Instant::now();
    let mut device = device(&core, t0);
    device.on_text(r#"{"message_type":"register","device_id":"small"}"#, t0);
    sent(&device);
    let mut client = client(&core, t0);
    client.on_text(r#"{"message_type":"connect","device_id":"small"}"#, t0);
    sent(&client);
    let allowed = limit - protocol::CLIENT_MSG_ENVELOPE_MAX;
    // A JSON string of `length` bytes, quotes included.
    let payload = |length: usize| format!("\"{}\"", "x".repeat(length - 2));
    let forward = |length: usize| {
        format!(
            r#"{{"message_type":"forward","payload":{}}}"#,
            payload(length)
        )
    };
    client.on_text(&forward(allowed + 1), t0);
    assert_eq!(
        sent(&client),
        [Outgoing::Error(ServerError::PayloadTooBig {
            limit: allowed
        })]
    );
    assert_eq!(sent(&device), []);
    client.on_text(&forward(allowed), t0);
    assert_eq!(sent(&client), []);
    let relayed = sent(&device);
    let [
        Outgoing::ClientMsg {
            payload: carried, ..
        },
    ] = &relayed[..]
    else {
        panic!("{relayed:?}");
    };
    let frame = carried.clone().into_frame().unwrap();
    assert!(frame.len() <= limit, "{} bytes", frame.len());
}
