//! What the core sends, as values: each front door encodes them its own way
//! (the seed websocket as the protocol's JSON frames; the polling flow as
//! its answers' JSON).

use std::sync::Arc;

use protocol::RawValue;

use super::error::ServerError;

/// Raw JSON text, forwarded verbatim and never re-encoded (PROTOCOL.md,
/// Promises, 2): a `payload` or a `device_info` as it arrived.
///
/// A relayed payload is copied out of its sender's frame once: a slice of
/// that frame would keep the sender's whole read buffer alive while the
/// payload waits in an outbox, and the outbox's byte bound would no longer
/// bound memory. The one copy goes into the protocol frame that carries the
/// payload to its receiver ([`Outgoing::device_msg`],
/// [`Outgoing::client_msg`]), so the websocket front door, which nearly
/// every receiver uses, sends it without copying again; every other front
/// door reads the payload alone ([`Json::get`]). A `device_info` is shared
/// by every client of its device.
#[derive(Debug, Clone)]
pub struct Json(Holder);

#[derive(Debug, Clone)]
enum Holder {
    /// The payload is `frame[start..frame.len() - 1]`: the protocol frame
    /// that relays it ends with it, then the closing brace.
    Framed { frame: String, start: usize },
    /// Many receivers.
    Shared(Arc<RawValue>),
}

impl Json {
    /// A copy of `raw` that many receivers share.
    pub fn shared(raw: &RawValue) -> Self {
        Self(Holder::Shared(Arc::from(raw.to_owned())))
    }

    /// The JSON `null`, for a device that registered without `device_info`.
    pub fn null() -> Self {
        Self::shared(protocol::NULL)
    }

    /// `raw` inside `frame`, the protocol frame that relays it and ends with
    /// it (the encoders write `payload` last).
    fn framed(frame: String, raw: &RawValue) -> Self {
        let start = frame.len() - 1 - raw.get().len();
        debug_assert_eq!(&frame[start..frame.len() - 1], raw.get());
        Self(Holder::Framed { frame, start })
    }

    /// The exact text.
    pub fn get(&self) -> &str {
        match &self.0 {
            Holder::Framed { frame, start } => &frame[*start..frame.len() - 1],
            Holder::Shared(raw) => raw.get(),
        }
    }

    /// As the protocol crate's raw value, for its encoders; `None` when it
    /// sits inside a frame (take that with [`Json::into_frame`]).
    pub fn as_raw(&self) -> Option<&RawValue> {
        match &self.0 {
            Holder::Framed { .. } => None,
            Holder::Shared(raw) => Some(raw),
        }
    }

    /// The protocol frame it was copied into, if it was.
    pub fn into_frame(self) -> Result<String, Self> {
        match self.0 {
            Holder::Framed { frame, .. } => Ok(frame),
            other => Err(Self(other)),
        }
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
    /// To a control connection: what became of each device of its
    /// `pre-register`, in one message.
    PreRegistration(Vec<protocol::control::RegistrationStatus>),
    /// To a control connection: a device it pre-registered has registered.
    Registered { device_id: Arc<str> },
}

impl Outgoing {
    /// A device's payload to a client.
    pub fn device_msg(payload: &RawValue) -> Self {
        let frame = protocol::ServerToClient::DeviceMsg(protocol::DeviceMsg { payload }).encode();
        Self::DeviceMsg(Json::framed(frame, payload))
    }

    /// A client's payload to its device.
    pub fn client_msg(client_id: u64, payload: &RawValue) -> Self {
        let frame = protocol::ServerToDevice::ClientMsg(protocol::ClientMsg { client_id, payload })
            .encode();
        Self::ClientMsg {
            client_id,
            payload: Json::framed(frame, payload),
        }
    }

    /// What the item counts against its outbox's byte bound: the raw JSON
    /// it carries (the envelope around it is a few dozen bytes at most).
    pub fn queued_bytes(&self) -> usize {
        match self {
            Self::DeviceInfo(json) | Self::DeviceMsg(json) => json.len(),
            Self::ClientMsg { payload, .. } => payload.len(),
            Self::Config(_)
            | Self::ClientDisconnected { .. }
            | Self::Error(_)
            | Self::Close(_)
            | Self::PreRegistration(_)
            | Self::Registered { .. } => 0,
        }
    }
}
