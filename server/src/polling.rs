//! The HTTP polling flows, for clients that cannot open websockets: the
//! reference server's (`POST /connect`, `POST /forward`, `POST
//! /poll_messages`, each answer draining what is queued) and the Go
//! operator's (`POST /polled_connections`, `POST
//! /polled_connections/{id}/:forward`, `GET
//! /polled_connections/{id}/messages?start=N`, where the device's messages
//! are kept, bounded, and read by index: a cursor).
//!
//! A polling client is a client like any other to its device: the same
//! registry link, the same client ids, the same `client_disconnected`
//! exactly once. What the device sends it waits in its outbox until it
//! polls. The reference keeps at most 1000 such messages, silently
//! dropping the rest, and never forgets a client; here the queue has the
//! websocket outbox's bounds, and a client that overflows it, or stops
//! polling for `--poll-timeout`, is dropped openly: its device is told it
//! left, and its next request gets the unknown-connection error.
//!
//! A polling client is a core connection like a websocket's: its session
//! decides, its outbox holds what the device sent, and its keepalive's
//! idle timeout is `--poll-timeout`. This file only turns requests into
//! calls on it and what its outbox holds into answers. One small task per
//! polling client watches for the two endings.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use protocol::RawValue;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span, debug, field, info, info_span};

use crate::ServerState;
use crate::core::registry::lock;
use crate::core::session::ClientSession;
use crate::core::{Batch, Connection, Due, Grant, Keepalive, Outgoing, ServerError};
use crate::door::{self, Closed, Traffic, now};
use crate::metrics::Role;

/// The polling clients of this server, by connection id.
#[derive(Debug, Default)]
pub(crate) struct Polling {
    clients: Mutex<HashMap<String, Arc<PollingClient>>>,
}

#[derive(Debug)]
struct PollingClient {
    /// Taken, and so dropped, when the client is: its link's drop tells
    /// its device.
    conn: Mutex<Option<Connection<ClientSession>>>,
    /// Cancelled when the client is dropped, to end its watcher.
    gone: CancellationToken,
    /// Told when a held client comes back, so its watcher counts its
    /// poll timeout again.
    back: tokio::sync::Notify,
    /// The Go flavor's kept messages (unused by the reference flavor).
    kept: Mutex<Kept>,
    /// Its device: every request's token must cover it.
    device_id: String,
    /// What it sent and was handed, for the line that says how it ended.
    traffic: Mutex<Traffic>,
    /// Since when it has been away (it missed its poll timeout) and until
    /// when it is held: its next request within that takes it back.
    away: Mutex<Option<(std::time::Instant, std::time::Instant)>>,
    /// Its lines' context: the peer that connected it, its device and
    /// client ids; entered by whatever request or task drops it.
    span: Span,
}

/// Which polling API a client came in by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// `POST /connect`: the reference's shapes and statuses.
    Reference,
    /// `POST /polled_connections`: the Go operator's.
    GoOperator,
}

/// The device's messages to a Go-flavored client, by index: the client asks
/// for them from the count it has seen, and what it has seen is dropped.
#[derive(Debug, Default)]
struct Kept {
    /// The index of `frames[0]`.
    first: u64,
    /// Each a `{"message_type":"device_msg","payload":…}` frame.
    frames: std::collections::VecDeque<String>,
    /// The payload bytes of `frames`, bounded like an outbox.
    bytes: usize,
    /// The device left: nothing more will come.
    device_gone: bool,
}

/// The error a client whose queue overflowed is dropped with, not yet
/// counted.
fn slow_consumer(client: &PollingClient) -> Option<ServerError> {
    lock(&client.conn)
        .as_ref()
        .map(|conn| conn.core().slow_consumer_error())
}

/// The status a polling answer gives an error that ends the client.
fn status(error: &ServerError) -> StatusCode {
    match error {
        ServerError::Decode(_) => StatusCode::BAD_REQUEST,
        ServerError::DeviceNotFound(_) => StatusCode::NOT_FOUND,
        ServerError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        ServerError::DeviceNotAllowed(_) => StatusCode::FORBIDDEN,
        _ => StatusCode::UNAUTHORIZED,
    }
}

/// A refusal in the reference's shape: `{"type":"error","error":…}`.
pub(crate) fn error(status: StatusCode, text: &str) -> Response {
    Refusal::new(status, text).into_response()
}

/// A refusal not yet made into a response.
#[derive(Debug)]
pub(crate) struct Refusal {
    status: StatusCode,
    text: String,
}

impl Refusal {
    pub fn new(status: StatusCode, text: impl Into<String>) -> Self {
        Self {
            status,
            text: text.into(),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"type": "error", "error": self.text}).to_string();
        json(self.status, body)
    }
}

fn json(status: StatusCode, body: String) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// The fields of a request body, each as its raw JSON text. A field given
/// twice is an invalid message, as it is on the websocket: no path lets
/// the last of two values win.
fn fields(body: &[u8]) -> Result<HashMap<String, Box<RawValue>>, Refusal> {
    match serde_json::from_slice::<UniqueFields>(body) {
        Ok(UniqueFields(fields)) => Ok(fields),
        Err(e) if e.is_data() && e.to_string().starts_with("duplicate field") => Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            format!("Invalid message: {e}"),
        )),
        Err(e) => Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            format!("Invalid message: expected a JSON object ({e})"),
        )),
    }
}

/// A JSON object whose keys are all different.
struct UniqueFields(HashMap<String, Box<RawValue>>);

impl<'de> serde::Deserialize<'de> for UniqueFields {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = UniqueFields;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<UniqueFields, A::Error> {
                let mut fields = HashMap::new();
                while let Some(key) = map.next_key::<String>()? {
                    if fields.contains_key(&key) {
                        return Err(serde::de::Error::custom(format!("duplicate field `{key}`")));
                    }
                    let value: Box<RawValue> = map.next_value()?;
                    fields.insert(key, value);
                }
                Ok(UniqueFields(fields))
            }
        }
        deserializer.deserialize_map(Fields)
    }
}

fn string_field(fields: &HashMap<String, Box<RawValue>>, key: &str) -> Option<String> {
    serde_json::from_str(fields.get(key)?.get()).ok()
}

/// A connection id: 128 random bits, hex.
fn new_connection_id() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    // The system's randomness source does not fail once the process runs;
    // if it ever did, going on with a predictable id would let anyone
    // guess a client's connection id, so stop loudly instead.
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system random number generator failed");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Polling {
    fn get(&self, connection_id: &str) -> Option<Arc<PollingClient>> {
        lock(&self.clients).get(connection_id).cloned()
    }

    /// Drops a client: its device is told now, whoever still holds it,
    /// and its end is logged and counted. With `count_error`, the error
    /// that ended it is counted too, if this call is the one that dropped
    /// it (the core counted the errors it queued itself).
    fn remove(&self, connection_id: &str, closed: Closed<'_>, count_error: bool) {
        let removed = lock(&self.clients).remove(connection_id);
        let Some(client) = removed else { return };
        let Some(conn) = lock(&client.conn).take() else {
            return;
        };
        let metrics = conn.core().metrics.clone();
        if lock(&client.away).take().is_some() {
            let _entered = client.span.enter();
            match closed {
                Closed::ByServer(error) => door::not_resumed(&metrics, Role::Client, Some(error)),
                _ => door::not_resumed(&metrics, Role::Client, None),
            }
        }
        if let (true, Closed::ByServer(error)) = (count_error, closed) {
            metrics.error_sent(error);
        }
        drop(conn);
        client.gone.cancel();
        let _entered = client.span.enter();
        door::ended(&metrics, Role::Client, closed, &lock(&client.traffic));
    }

    /// `POST /connect {"device_id"}` (C1, C2, C4 in the reference's shape).
    pub async fn connect(
        self: &Arc<Self>,
        state: &ServerState,
        peer: Option<std::net::SocketAddr>,
        body: &[u8],
        grant: Grant,
        flavor: Flavor,
    ) -> Response {
        let (core, config) = (&state.core, &state.config);
        let fields = match fields(body) {
            Ok(fields) => fields,
            Err(refusal) => return refusal.into_response(),
        };
        let Some(device_id) = string_field(&fields, "device_id") else {
            return error(
                StatusCode::BAD_REQUEST,
                "Invalid device_id: missing or not a string",
            );
        };
        if let Err(e) = protocol::validate_device_id(&device_id) {
            let e = ServerError::from(e);
            core.metrics.error_sent(&e);
            return error(StatusCode::BAD_REQUEST, &e.to_string());
        }
        let now = now();
        let traffic = Traffic::new();
        let span = info_span!(
            "client",
            transport = "polling",
            peer = peer.map(field::display),
            device_id = field::Empty,
            client_id = field::Empty,
        );
        let outbox = core.outbox();
        let session = ClientSession::new(core.clone(), outbox.clone(), now).with_grant(grant);
        let keepalive = Keepalive {
            idle: Some(config.poll_timeout),
            ping: None,
        };
        let mut conn = Connection::new(session, keepalive, now);
        // The alternative flow's wait does not apply to polling clients.
        // In the span: the session names its device and client id on it.
        span.in_scope(|| conn.session_mut().connect(&device_id, None, now));
        // The answer is the device_info the registry queued on attaching
        // (the reference's answer has no config: clients read
        // /infra_config), or the reason there is none.
        let mut batch = Batch::default();
        outbox.take(&mut batch);
        let answered = |batch: &Batch| {
            batch
                .items
                .iter()
                .any(|item| matches!(item, Outgoing::DeviceInfo(_) | Outgoing::Close(_)))
        };
        if !answered(&batch) && conn.session().is_attached() {
            // A device on another instance: its device_info comes when it
            // has attached the client, within the handshake timeout.
            let mut later = Batch::default();
            let _ =
                tokio::time::timeout(config.handshake_timeout, outbox.next_batch(&mut later)).await;
            batch.items.extend(later.items);
        }
        let mut info = None;
        let mut refused = None;
        for item in batch.items {
            match item {
                Outgoing::DeviceInfo(json) => info = Some(json),
                Outgoing::Close(e) => refused = Some(e),
                _ => {}
            }
        }
        let info = match (info, refused) {
            (Some(info), None) => info,
            (_, refused) => {
                let e = refused.unwrap_or(ServerError::DeviceNotFound(device_id));
                return error(status(&e), &e.to_string());
            }
        };
        core.metrics
            .device_info_wait
            .observe(door::now().saturating_duration_since(now));
        let connection_id = new_connection_id();
        let client = Arc::new(PollingClient {
            conn: Mutex::new(Some(conn)),
            gone: CancellationToken::new(),
            back: tokio::sync::Notify::new(),
            kept: Mutex::default(),
            device_id: device_id.clone(),
            traffic: Mutex::new(traffic),
            away: Mutex::new(None),
            span: span.clone(),
        });
        lock(&self.clients).insert(connection_id.clone(), client.clone());
        state.tracker.spawn(
            self.clone()
                .watch(connection_id.clone(), client, state.shutdown.clone())
                .instrument(span.clone()),
        );
        span.in_scope(|| info!(?flavor, "polling client connected"));
        let body = match flavor {
            Flavor::Reference => format!(
                r#"{{"connection_id":"{connection_id}","message_type":"device_info","device_info":{}}}"#,
                info.get()
            ),
            Flavor::GoOperator => format!(
                r#"{{"connection_id":"{connection_id}","device_info":{}}}"#,
                info.get()
            ),
        };
        json(StatusCode::OK, body)
    }

    /// Drops the client once it overflows its queue, stops polling, or the
    /// server shuts down; dropping its connection tells its device. With
    /// resume on, a client that stops polling is held for the window
    /// first: its next request within it takes it back.
    async fn watch(
        self: Arc<Self>,
        connection_id: String,
        client: Arc<PollingClient>,
        shutdown: CancellationToken,
    ) {
        let Some((outbox, mut wake, window, metrics)) = lock(&client.conn).as_ref().map(|conn| {
            (
                conn.outbox().clone(),
                conn.poll_timeout(),
                conn.core().resumes.window(),
                conn.core().metrics.clone(),
            )
        }) else {
            return;
        };
        loop {
            let held_until = lock(&client.away).map(|(_, until)| until);
            let due = held_until.map_or(wake, |until| until.min(wake));
            tokio::select! {
                () = outbox.overflowed() => {
                    if let Some(error) = slow_consumer(&client) {
                        self.remove(&connection_id, Closed::ByServer(&error), true);
                    }
                    return;
                }
                () = tokio::time::sleep_until(Instant::from_std(due)) => {
                    let now = now();
                    let stopped = Closed::ByPeer {
                        code: None,
                        reason: Some("stopped polling"),
                    };
                    if held_until.is_some_and(|until| now >= until)
                        && lock(&client.away).is_some_and(|(_, until)| now >= until)
                    {
                        return self.remove(&connection_id, stopped, false);
                    }
                    let mut guard = lock(&client.conn);
                    let Some(conn) = guard.as_mut() else { return };
                    match conn.handle_timeout(now) {
                        // The polling flow has no goodbye: a client that
                        // stops polling has left, or, with resume on, is
                        // away. (The core counted it.)
                        Some(Due::End(_)) if window.is_zero() => {
                            drop(guard);
                            return self.remove(&connection_id, stopped, false);
                        }
                        Some(Due::End(_)) => {
                            conn.park();
                            wake = conn.poll_timeout();
                            drop(guard);
                            *lock(&client.away) = Some((now, now + window));
                            let _entered = client.span.enter();
                            door::away(&metrics, Role::Client, stopped, window);
                        }
                        Some(Due::Ping) | None => wake = conn.poll_timeout(),
                    }
                }
                () = shutdown.cancelled() => {
                    let closed = Closed::ByServer(&ServerError::ShuttingDown);
                    return self.remove(&connection_id, closed, false);
                }
                () = client.gone.cancelled() => return,
                () = client.back.notified() => {
                    if let Some(conn) = lock(&client.conn).as_ref() {
                        wake = conn.poll_timeout();
                    }
                }
            }
        }
    }

    /// The client a request names, marked as seen; or the refusal.
    fn client(
        &self,
        fields: &HashMap<String, Box<RawValue>>,
        grant: &Grant,
    ) -> Result<(String, Arc<PollingClient>), Refusal> {
        let Some(connection_id) = string_field(fields, "connection_id") else {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "Invalid message: missing connection_id",
            ));
        };
        let client = self.seen(&connection_id, Flavor::Reference, grant)?;
        Ok((connection_id, client))
    }

    /// The client `connection_id` names, marked as seen; or the flavor's
    /// refusal for an unknown one (the reference's 401, the Go operator's
    /// 404), and 403 when the request's token does not cover its device.
    fn seen(
        &self,
        connection_id: &str,
        flavor: Flavor,
        grant: &Grant,
    ) -> Result<Arc<PollingClient>, Refusal> {
        let status = match flavor {
            Flavor::Reference => StatusCode::UNAUTHORIZED,
            Flavor::GoOperator => StatusCode::NOT_FOUND,
        };
        let unknown = || {
            Refusal::new(
                status,
                "Unknown connection_id: it never existed, or it was dropped",
            )
        };
        let client = self.get(connection_id).ok_or_else(unknown)?;
        if !grant.allows(&client.device_id) {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                ServerError::DeviceNotAllowed(client.device_id.clone()).to_string(),
            ));
        }
        let now = now();
        {
            let mut guard = lock(&client.conn);
            let conn = guard.as_mut().ok_or_else(unknown)?;
            if let Some((since, _)) = lock(&client.away).take() {
                // Back within the window: the session goes on, and its
                // device heard nothing.
                conn.unpark(now);
                let _entered = client.span.enter();
                door::resumed(
                    &conn.core().metrics,
                    Role::Client,
                    door::Resumption {
                        away_for: Some(now.saturating_duration_since(since)),
                        replayed: 0,
                        peer_received: 0,
                        server_received: 0,
                    },
                );
                client.back.notify_one();
            }
            conn.on_activity(now);
        }
        Ok(client)
    }

    /// `POST /forward {"connection_id","payload"}`: relays the payload
    /// verbatim (C7, C8), then answers what the device sent meanwhile.
    pub fn forward(&self, body: &[u8], grant: &Grant) -> Response {
        let fields = match fields(body) {
            Ok(fields) => fields,
            Err(refusal) => return refusal.into_response(),
        };
        let (connection_id, client) = match self.client(&fields, grant) {
            Ok(found) => found,
            Err(refusal) => return refusal.into_response(),
        };
        {
            let mut guard = lock(&client.conn);
            let Some(conn) = guard.as_mut() else {
                return error(StatusCode::UNAUTHORIZED, "Unknown connection_id: dropped");
            };
            let Some(payload) = fields.get("payload") else {
                let e = ServerError::Decode(protocol::DecodeError::MissingPayload);
                conn.core().metrics.error_sent(&e);
                return error(StatusCode::BAD_REQUEST, &e.to_string());
            };
            // Over the rate limit, the session ends (C15) and the answer
            // below says so.
            let now = now();
            if conn.admit(now) {
                lock(&client.traffic).received(payload.get().len());
                conn.session_mut().forward(payload, now);
            }
        }
        self.drain(&connection_id, &client)
    }

    /// `POST /poll_messages {"connection_id"}`: what the device sent.
    pub fn poll(&self, body: &[u8], grant: &Grant) -> Response {
        let fields = match fields(body) {
            Ok(fields) => fields,
            Err(refusal) => return refusal.into_response(),
        };
        match self.client(&fields, grant) {
            Ok((connection_id, client)) => self.drain(&connection_id, &client),
            Err(refusal) => refusal.into_response(),
        }
    }

    /// The device's payloads queued for the client, as a JSON array of
    /// their raw texts. If the device has left (its departure is queued
    /// after them), the client is dropped once they are handed over; if the
    /// session ended otherwise, the answer is that error.
    fn drain(&self, connection_id: &str, client: &PollingClient) -> Response {
        let mut batch = Batch::default();
        if let Some(conn) = lock(&client.conn).as_ref() {
            conn.outbox().take(&mut batch);
        }
        if batch.overflowed {
            // Its watcher drops it too; whichever comes first counts it.
            if let Some(slow) = slow_consumer(client) {
                self.remove(connection_id, Closed::ByServer(&slow), true);
            }
            return error(
                StatusCode::UNAUTHORIZED,
                "Unknown connection_id: dropped, its queue was full",
            );
        }
        let mut payloads = Vec::with_capacity(batch.items.len());
        for item in &batch.items {
            match item {
                Outgoing::DeviceMsg(payload) => {
                    lock(&client.traffic).sent(payload.len());
                    payloads.push(payload.get());
                }
                // If the device left (D16), nothing more will come: the
                // array has no place for the notice, and the next
                // request's 401 says the client is gone. Any other ending
                // is the answer.
                Outgoing::Close(ended) => {
                    self.remove(connection_id, Closed::ByServer(ended), false);
                    if *ended != ServerError::DeviceDisconnected {
                        return error(status(ended), &ended.to_string());
                    }
                }
                other => debug!(item = ?other, "not a device payload; not relayed"),
            }
        }
        json(StatusCode::OK, format!("[{}]", payloads.join(",")))
    }

    /// `POST /polled_connections/{id}/:forward {"payload"}`: relays the
    /// payload verbatim; the answer is `"ok"`, as the Go operator's.
    pub fn go_forward(&self, connection_id: &str, body: &[u8], grant: &Grant) -> Response {
        let fields = match fields(body) {
            Ok(fields) => fields,
            Err(refusal) => return refusal.into_response(),
        };
        let client = match self.seen(connection_id, Flavor::GoOperator, grant) {
            Ok(client) => client,
            Err(refusal) => return refusal.into_response(),
        };
        let mut guard = lock(&client.conn);
        let Some(conn) = guard.as_mut() else {
            return error(StatusCode::NOT_FOUND, "Unknown connection_id: dropped");
        };
        let Some(payload) = fields.get("payload") else {
            let e = ServerError::Decode(protocol::DecodeError::MissingPayload);
            conn.core().metrics.error_sent(&e);
            return error(StatusCode::BAD_REQUEST, &e.to_string());
        };
        let now = now();
        if !conn.admit(now) {
            // Over the rate limit the session ends (C15): the core queued
            // why; the client is dropped and told.
            let mut batch = Batch::default();
            conn.outbox().take(&mut batch);
            drop(guard);
            let ended = batch.items.into_iter().find_map(|item| match item {
                Outgoing::Close(e) => Some(e),
                _ => None,
            });
            let slow = if batch.overflowed {
                slow_consumer(&client)
            } else {
                None
            };
            return match (ended, slow) {
                (Some(e), _) => {
                    self.remove(connection_id, Closed::ByServer(&e), false);
                    error(status(&e), &e.to_string())
                }
                (None, Some(slow)) => {
                    self.remove(connection_id, Closed::ByServer(&slow), true);
                    error(
                        StatusCode::NOT_FOUND,
                        "Unknown connection_id: dropped, its queue was full",
                    )
                }
                // The session is over and a request at the same moment
                // took its close: that request drops the client, or, if
                // the device left, keeps it until it has read the rest.
                (None, None) => error(StatusCode::NOT_FOUND, "Unknown connection_id: dropped"),
            };
        }
        lock(&client.traffic).received(payload.get().len());
        conn.session_mut().forward(payload, now);
        json(StatusCode::OK, r#""ok""#.to_owned())
    }

    /// `GET /polled_connections/{id}/messages?start=N&count=M`: the
    /// device's messages from index `start` (what the client has seen so
    /// far, 0 at first), at most `count` of them. Messages before `start`
    /// are dropped: the client has them. Once the device has left and the
    /// client has been handed everything, it is dropped.
    pub fn go_messages(&self, connection_id: &str, query: Option<&str>, grant: &Grant) -> Response {
        let (start, count) = match cursor(query) {
            Ok(cursor) => cursor,
            Err(refusal) => return refusal.into_response(),
        };
        let client = match self.seen(connection_id, Flavor::GoOperator, grant) {
            Ok(client) => client,
            Err(refusal) => return refusal.into_response(),
        };
        let mut batch = Batch::default();
        let limits = match lock(&client.conn).as_ref() {
            Some(conn) => {
                conn.outbox().take(&mut batch);
                conn.core().settings.outbox
            }
            None => return error(StatusCode::NOT_FOUND, "Unknown connection_id: dropped"),
        };
        let mut kept = lock(&client.kept);
        for item in batch.items {
            match item {
                Outgoing::DeviceMsg(payload) => {
                    kept.bytes += payload.len();
                    if let Some(frame) = crate::encode::frame(Outgoing::DeviceMsg(payload)) {
                        kept.frames.push_back(frame);
                    }
                }
                Outgoing::Close(ServerError::DeviceDisconnected) => kept.device_gone = true,
                Outgoing::Close(ended) => {
                    drop(kept);
                    self.remove(connection_id, Closed::ByServer(&ended), false);
                    return error(status(&ended), &ended.to_string());
                }
                other => debug!(item = ?other, "not a device message; not relayed"),
            }
        }
        let end = kept.first + kept.frames.len() as u64;
        if start < kept.first || start > end {
            return error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "Invalid start: {start} is outside the messages kept, {} to {end} (messages before {} were read)",
                    kept.first, kept.first
                ),
            );
        }
        // What the client has seen is dropped.
        while kept.first < start {
            if let Some(frame) = kept.frames.pop_front() {
                kept.bytes = kept.bytes.saturating_sub(payload_len(&frame));
            }
            kept.first += 1;
        }
        let overflowed = batch.overflowed
            || kept.frames.len() > limits.max_messages
            || kept.bytes > limits.max_bytes;
        if overflowed {
            drop(kept);
            if let Some(slow) = slow_consumer(&client) {
                self.remove(connection_id, Closed::ByServer(&slow), true);
            }
            return error(
                StatusCode::NOT_FOUND,
                "Unknown connection_id: dropped, its queue was full",
            );
        }
        let available = kept.frames.len();
        let take = count.map_or(available, |count| count.min(available));
        {
            let mut traffic = lock(&client.traffic);
            for frame in kept.frames.iter().take(take) {
                traffic.sent(payload_len(frame));
            }
        }
        let body = format!(
            "[{}]",
            kept.frames
                .iter()
                .take(take)
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(",")
        );
        let handed_everything = kept.device_gone && take == available;
        drop(kept);
        if handed_everything {
            let closed = Closed::ByServer(&ServerError::DeviceDisconnected);
            self.remove(connection_id, closed, false);
        }
        json(StatusCode::OK, body)
    }
}

/// The payload bytes of a kept `device_msg` frame, as they were counted.
fn payload_len(frame: &str) -> usize {
    const ENVELOPE: usize = r#"{"message_type":"device_msg","payload":}"#.len();
    frame.len().saturating_sub(ENVELOPE)
}

/// `start` and `count` of a messages request: non-negative integers;
/// `start` defaults to 0 and `count` to all.
fn cursor(query: Option<&str>) -> Result<(u64, Option<usize>), Refusal> {
    let mut start = 0;
    let mut count = None;
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let invalid = || {
            Refusal::new(
                StatusCode::BAD_REQUEST,
                format!("Invalid {key}: {value:?} is not a non-negative integer"),
            )
        };
        match key.as_ref() {
            "start" => start = value.parse().map_err(|_| invalid())?,
            "count" => count = Some(value.parse().map_err(|_| invalid())?),
            _ => {}
        }
    }
    Ok((start, count))
}
