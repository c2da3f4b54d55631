//! The frames the server sends, encoded once each.

use std::borrow::Cow;

use protocol::{
    ClientDisconnected, ClientMsg, DeviceInfo, DeviceMsg, ErrorMsg, RawValue, ServerToClient,
    ServerToDevice,
};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// `{"error": text}`; the same shape in both directions.
pub(crate) fn error(text: impl Into<Cow<'static, str>>) -> Utf8Bytes {
    ServerToClient::Error(ErrorMsg { error: text.into() })
        .encode()
        .into()
}

pub(crate) fn device_info(info: Option<&RawValue>) -> Utf8Bytes {
    ServerToClient::DeviceInfo(DeviceInfo {
        device_info: info.unwrap_or(protocol::NULL),
    })
    .encode()
    .into()
}

pub(crate) fn device_msg(payload: &RawValue) -> Utf8Bytes {
    ServerToClient::DeviceMsg(DeviceMsg { payload })
        .encode()
        .into()
}

pub(crate) fn client_msg(client_id: u64, payload: &RawValue) -> Utf8Bytes {
    ServerToDevice::ClientMsg(ClientMsg { client_id, payload })
        .encode()
        .into()
}

pub(crate) fn client_disconnected(client_id: u64) -> Utf8Bytes {
    ServerToDevice::ClientDisconnected(ClientDisconnected { client_id })
        .encode()
        .into()
}
