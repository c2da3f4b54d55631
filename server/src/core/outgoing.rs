//! What the core sends, as values: each front door encodes them its own way
//! (the seed websocket as the protocol's JSON frames; the polling flow as
//! its answers' JSON).

use std::sync::Arc;

use protocol::RawValue;

use super::error::ServerError;

/// Raw JSON text, forwarded verbatim and never re-encoded (PROTOCOL.md,
/// Promises, 2): a `payload` or a `device_info` as it arrived.
///
/// A relayed payload is copied out of its sender's frame once, into an
/// allocation of its own: a slice of the frame would keep the sender's
/// whole read buffer alive while the payload waits in an outbox, and the
/// outbox's byte bound would no longer bound memory. A `device_info` is
/// shared by every client of its device.
#[derive(Debug, Clone)]
pub struct Json(Holder);

#[derive(Debug, Clone)]
enum Holder {
    /// One receiver: a relayed payload.
    Owned(Box<RawValue>),
    /// Many receivers.
    Shared(Arc<RawValue>),
}

impl Json {
    /// A copy of `raw` for one receiver.
    pub fn new(raw: &RawValue) -> Self {
        Self(Holder::Owned(raw.to_owned()))
    }

    /// A copy of `raw` that many receivers share.
    pub fn shared(raw: &RawValue) -> Self {
        Self(Holder::Shared(Arc::from(raw.to_owned())))
    }

    /// The JSON `null`, for a device that registered without `device_info`.
    pub fn null() -> Self {
        Self::shared(protocol::NULL)
    }

    /// As the protocol crate's raw value, for its encoders.
    pub fn as_raw(&self) -> &RawValue {
        match &self.0 {
            Holder::Owned(raw) => raw,
            Holder::Shared(raw) => raw,
        }
    }

    /// The exact text.
    pub fn get(&self) -> &str {
        self.as_raw().get()
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.get().len()
    }

    /// Never true: JSON text is at least one byte.
    pub fn is_empty(&self) -> bool {
        self.get().is_empty()
    }
}

/// Raw values are equal when their texts are (`RawValue` has no `PartialEq`).
impl PartialEq for Json {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

/// One thing a connection's outbox holds, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    /// `config`: the ICE servers, to a device on `register` or a client on
    /// `connect`.
    Config(Arc<protocol::Config>),
    /// `device_info`: to a client, once attached to its device.
    DeviceInfo(Json),
    /// A device's payload to this client (`device_msg`).
    DeviceMsg(Json),
    /// A client's payload to this device (`client_msg`).
    ClientMsg { client_id: u64, payload: Json },
    /// To a device: its client left (`client_disconnected`).
    ClientDisconnected { client_id: u64 },
    /// An error frame; the connection stays open unless a `Close` follows.
    Error(ServerError),
    /// The session is over: close with the error's code and text. Nothing
    /// after it is sent.
    Close(ServerError),
}

impl Outgoing {
    /// What the item counts against its outbox's byte bound: the raw JSON
    /// it carries (the envelope around it is a few dozen bytes at most).
    pub fn queued_bytes(&self) -> usize {
        match self {
            Self::DeviceInfo(json) | Self::DeviceMsg(json) => json.len(),
            Self::ClientMsg { payload, .. } => payload.len(),
            Self::Config(_) | Self::ClientDisconnected { .. } | Self::Error(_) | Self::Close(_) => {
                0
            }
        }
    }
}
