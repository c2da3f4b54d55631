//! The reference server's HTTP polling flow, for clients that cannot open
//! websockets: `POST /connect`, `POST /forward`, `POST /poll_messages`.
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
//! One small task per polling client watches for those two endings; the
//! requests themselves only touch its queue and its link.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use protocol::{RawValue, ServerToClient};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span};

use crate::outbox::{Batch, Outbox, OutboxLimits, Outgoing};
use crate::registry::{ClientLink, Connection, lock};
use crate::session::Context;

/// The polling clients of this server, by connection id.
#[derive(Debug, Default)]
pub(crate) struct Polling {
    clients: Mutex<HashMap<String, Arc<PollingClient>>>,
}

#[derive(Debug)]
struct PollingClient {
    /// Taken, and so dropped, when the client is: that tells its device.
    link: Mutex<Option<ClientLink>>,
    /// Cancelled when the client is dropped, to end its watcher.
    gone: CancellationToken,
    outbox: Outbox,
    /// When it last made a request.
    last_seen: Mutex<Instant>,
    /// The rate limit's state (see `rate.rs`).
    rate_due: Mutex<Instant>,
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

/// The fields of a request body, each as its raw JSON text.
fn fields(body: &[u8]) -> Result<HashMap<String, Box<RawValue>>, Refusal> {
    serde_json::from_slice(body).map_err(|e| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            format!("Invalid message: expected a JSON object ({e})"),
        )
    })
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

    /// Drops a client: its device is told now, whoever still holds it.
    fn remove(&self, connection_id: &str) {
        let removed = lock(&self.clients).remove(connection_id);
        if let Some(client) = removed {
            drop(lock(&client.link).take());
            client.gone.cancel();
        }
    }

    /// `POST /connect {"device_id"}` (C1, C2, C4 in the reference's shape).
    pub fn connect(
        self: &Arc<Self>,
        ctx: &Arc<Context>,
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
        body: &[u8],
    ) -> Response {
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
            ctx.metrics.error_sent(e.phrase());
            return error(StatusCode::BAD_REQUEST, &e.to_string());
        }
        let outbox = Outbox::new(OutboxLimits {
            max_messages: ctx.config.outbox_messages,
            max_bytes: ctx.config.outbox_bytes,
        });
        let link = match ctx.registry.connect(&device_id, outbox.clone(), false) {
            Connection::Attached(link) => link,
            Connection::Waiting(_) | Connection::NotFound => {
                ctx.metrics.error_sent("Device not found");
                return error(
                    StatusCode::NOT_FOUND,
                    &format!("Device not found: {device_id}"),
                );
            }
        };
        // The registry queued device_info on attaching; it is the answer.
        let info = match outbox.pop() {
            Some(Outgoing::Text(frame)) => frame,
            _ => {
                return error(
                    StatusCode::NOT_FOUND,
                    &format!("Device not found: {device_id}"),
                );
            }
        };
        let connection_id = new_connection_id();
        let now = Instant::now();
        let client = Arc::new(PollingClient {
            link: Mutex::new(Some(link)),
            gone: CancellationToken::new(),
            outbox,
            last_seen: Mutex::new(now),
            rate_due: Mutex::new(now),
        });
        lock(&self.clients).insert(connection_id.clone(), client.clone());
        let span = info_span!("polling client", device_id = %device_id);
        tracker.spawn(
            self.clone()
                .watch(connection_id.clone(), client, ctx.clone(), shutdown.clone())
                .instrument(span),
        );
        info!(device_id = %device_id, "polling client connected");
        // `{"message_type":"device_info",…}` with the id in front.
        let body = format!(r#"{{"connection_id":"{connection_id}",{}"#, &info[1..]);
        json(StatusCode::OK, body)
    }

    /// Drops the client once it overflows its queue, stops polling, or the
    /// server shuts down; dropping its link tells its device.
    async fn watch(
        self: Arc<Self>,
        connection_id: String,
        client: Arc<PollingClient>,
        ctx: Arc<Context>,
        shutdown: CancellationToken,
    ) {
        let timeout = ctx.config.poll_timeout;
        loop {
            let quiet_until = *lock(&client.last_seen) + timeout;
            tokio::select! {
                () = client.outbox.overflowed() => {
                    ctx.metrics.error_sent("Slow consumer");
                    info!("polling client dropped: its queue is full");
                    break;
                }
                () = tokio::time::sleep_until(quiet_until) => {
                    if *lock(&client.last_seen) + timeout <= Instant::now() {
                        info!("polling client dropped: it stopped polling");
                        break;
                    }
                }
                () = shutdown.cancelled() => break,
                () = client.gone.cancelled() => break,
            }
        }
        self.remove(&connection_id);
    }

    /// The client a request names, marked as seen; or the refusal.
    fn client(
        &self,
        fields: &HashMap<String, Box<RawValue>>,
    ) -> Result<(String, Arc<PollingClient>), Refusal> {
        let Some(connection_id) = string_field(fields, "connection_id") else {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "Invalid message: missing connection_id",
            ));
        };
        let Some(client) = self.get(&connection_id) else {
            return Err(Refusal::new(
                StatusCode::UNAUTHORIZED,
                "Unknown connection_id: it never existed, or it was dropped",
            ));
        };
        *lock(&client.last_seen) = Instant::now();
        Ok((connection_id, client))
    }

    /// `POST /forward {"connection_id","payload"}`: relays the payload
    /// verbatim (C7, C8), then answers what the device sent meanwhile.
    pub fn forward(&self, ctx: &Context, body: &[u8]) -> Response {
        let fields = match fields(body) {
            Ok(fields) => fields,
            Err(refusal) => return refusal.into_response(),
        };
        let (connection_id, client) = match self.client(&fields) {
            Ok(found) => found,
            Err(refusal) => return refusal.into_response(),
        };
        let Some(payload) = fields.get("payload") else {
            ctx.metrics.error_sent("Missing payload");
            return error(StatusCode::BAD_REQUEST, "Missing payload");
        };
        let within_rate = ctx
            .rate
            .is_none_or(|rate| rate.allow(&mut lock(&client.rate_due), Instant::now()));
        if !within_rate {
            // C15: the client is over, as a websocket client would be.
            self.remove(&connection_id);
            ctx.metrics.error_sent("Rate limit exceeded");
            return error(StatusCode::TOO_MANY_REQUESTS, "Rate limit exceeded");
        }
        let sent = lock(&client.link)
            .as_mut()
            .is_some_and(|link| link.send_to_device(payload).is_ok());
        if sent {
            ctx.relayed_to_device.inc();
        }
        self.drain(&connection_id, &client)
    }

    /// `POST /poll_messages {"connection_id"}`: what the device sent.
    pub fn poll(&self, body: &[u8]) -> Response {
        let fields = match fields(body) {
            Ok(fields) => fields,
            Err(refusal) => return refusal.into_response(),
        };
        match self.client(&fields) {
            Ok((connection_id, client)) => self.drain(&connection_id, &client),
            Err(refusal) => refusal.into_response(),
        }
    }

    /// The device's payloads queued for the client, as a JSON array of
    /// their raw texts. If the device has left (its departure is queued
    /// after them), the client is dropped once they are handed over.
    fn drain(&self, connection_id: &str, client: &PollingClient) -> Response {
        let mut batch = Batch::default();
        client.outbox.take(&mut batch);
        if batch.overflowed {
            // Its watcher drops it; this answer is the first to say so.
            self.remove(connection_id);
            return error(
                StatusCode::UNAUTHORIZED,
                "Unknown connection_id: dropped, its queue was full",
            );
        }
        let mut payloads = Vec::with_capacity(batch.items.len());
        for item in &batch.items {
            match item {
                Outgoing::Text(frame) => match ServerToClient::decode(frame) {
                    Ok(ServerToClient::DeviceMsg(message)) => {
                        payloads.push(message.payload.get().to_owned());
                    }
                    // Device disconnected: the array has no place for it;
                    // the next request's 401 says the client is gone.
                    _ => {
                        debug!(frame = %frame, "not a device payload; not relayed")
                    }
                },
                Outgoing::Close(..) => {
                    // The device left (D16): nothing more will come.
                    self.remove(connection_id);
                }
            }
        }
        json(StatusCode::OK, format!("[{}]", payloads.join(",")))
    }
}
