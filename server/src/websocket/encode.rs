//! The seed websocket's encoding of what the core sends: each item one
//! JSON text frame of the protocol.

use protocol::{
    ClientDisconnected, ClientMsg, DeviceInfo, DeviceMsg, ErrorMsg, ServerToClient, ServerToDevice,
};

use crate::core::{Outgoing, ServerError};

/// The frame text of one item; `None` for a close, which is not a text
/// frame.
pub(crate) fn frame(item: &Outgoing) -> Option<String> {
    Some(match item {
        Outgoing::Config(config) => config.encode(),
        Outgoing::DeviceInfo(info) => ServerToClient::DeviceInfo(DeviceInfo {
            device_info: info.as_raw(),
        })
        .encode(),
        Outgoing::DeviceMsg(payload) => ServerToClient::DeviceMsg(DeviceMsg {
            payload: payload.as_raw(),
        })
        .encode(),
        Outgoing::ClientMsg { client_id, payload } => ServerToDevice::ClientMsg(ClientMsg {
            client_id: *client_id,
            payload: payload.as_raw(),
        })
        .encode(),
        Outgoing::ClientDisconnected { client_id } => {
            ServerToDevice::ClientDisconnected(ClientDisconnected {
                client_id: *client_id,
            })
            .encode()
        }
        Outgoing::Error(error) => error_frame(error),
        Outgoing::Close(_) => return None,
    })
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
