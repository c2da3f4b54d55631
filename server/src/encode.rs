//! The seed's JSON encoding of what the core sends: each item one protocol
//! message, a websocket text frame or a device socket's packet.

use protocol::{
    ClientDisconnected, ClientMsg, DeviceInfo, DeviceMsg, ErrorMsg, RawValue, ServerToClient,
    ServerToDevice,
};

use crate::core::{Json, Outgoing, ServerError};

/// Which client dialect a connection speaks: what it is sent differs only
/// where the Go operator's `/devices/{id}/connect` differs from the seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// The seed's messages (and every device connection).
    Seed,
    /// The Go operator's client websocket: no `config` (its clients read
    /// `/infra_config`), and `device_info` as `{"device_info": …}`.
    GoOperator,
}

/// The frame text of one item in `dialect`; `None` for what is not sent as
/// a frame (a close; `config` in the Go dialect).
pub(crate) fn frame_in(item: Outgoing, dialect: Dialect) -> Option<String> {
    match (dialect, item) {
        (Dialect::GoOperator, Outgoing::Config(_)) => None,
        (Dialect::GoOperator, Outgoing::DeviceInfo(info)) => {
            Some(format!(r#"{{"device_info":{}}}"#, info.get()))
        }
        (_, item) => frame(item),
    }
}

/// The frame text of one item; `None` for a close, which is not a text
/// frame. A relayed payload already sits in its frame (see `core::Json`).
pub(crate) fn frame(item: Outgoing) -> Option<String> {
    Some(match item {
        Outgoing::Config(config) => config.encode(),
        Outgoing::DeviceInfo(info) => with_raw(&info, |device_info| {
            ServerToClient::DeviceInfo(DeviceInfo { device_info }).encode()
        }),
        Outgoing::DeviceMsg(payload) => payload.into_frame().unwrap_or_else(|payload| {
            with_raw(&payload, |payload| {
                ServerToClient::DeviceMsg(DeviceMsg { payload }).encode()
            })
        }),
        Outgoing::ClientMsg { client_id, payload } => {
            payload.into_frame().unwrap_or_else(|payload| {
                with_raw(&payload, |payload| {
                    ServerToDevice::ClientMsg(ClientMsg { client_id, payload }).encode()
                })
            })
        }
        Outgoing::ClientDisconnected { client_id } => {
            ServerToDevice::ClientDisconnected(ClientDisconnected { client_id }).encode()
        }
        Outgoing::Error(error) => error_frame(&error),
        Outgoing::PreRegistration(statuses) => protocol::control::encode_statuses(&statuses),
        Outgoing::Registered { device_id } => protocol::control::RegistrationStatus {
            id: device_id.to_string(),
            status: protocol::control::RegistrationState::Registered,
            message: String::new(),
        }
        .encode(),
        Outgoing::Close(_) => return None,
    })
}

/// Calls `f` with `json` as the protocol's raw value. Only a payload laid
/// out for another frame than the one asked for needs a copy (the core
/// never makes one), so this is the slow way round for a case that does
/// not happen.
fn with_raw<R>(json: &Json, f: impl FnOnce(&RawValue) -> R) -> R {
    match json.as_raw() {
        Some(raw) => f(raw),
        None => {
            // Built only from raw values, so the text is valid JSON.
            let copy = RawValue::from_string(json.get().to_owned())
                .unwrap_or_else(|_| protocol::NULL.to_owned());
            f(&copy)
        }
    }
}

/// `{"error": text}`; the same shape in both directions.
pub(crate) fn error_frame(error: &ServerError) -> String {
    ServerToClient::Error(ErrorMsg {
        error: error.to_string().into(),
    })
    .encode()
}

/// A close reason must fit the 123 bytes a close frame allows.
pub(crate) fn close_reason(error: &ServerError) -> String {
    const MAX: usize = 123;
    let mut text = error.to_string();
    if text.len() > MAX {
        let mut end = MAX;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}
