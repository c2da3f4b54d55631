//! The control socket of Cuttlefish's Go operator: a host tool
//! pre-registers the devices it is about to launch (their group, owner,
//! name and adb port), is told which were accepted, then hears each one
//! register. Closing the connection cancels what has not registered.
//!
//! ```text
//! tool → server  {"message_type":"pre-register","group_name":"g","owner":"o",
//!                 "devices":[{"id":"cvd-1","name":"phone","adb_port":6520}]}
//! server → tool  [{"id":"cvd-1","status":"accepted","message":""}]
//! server → tool  {"id":"cvd-1","status":"registered","message":""}
//! ```

use serde::{Deserialize, Serialize};

use crate::DecodeError;

/// `pre-register`: the devices a group is about to register.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PreRegister {
    #[serde(default)]
    pub group_name: String,
    #[serde(default)]
    pub owner: String,
    pub devices: Vec<PreRegisteredDevice>,
}

/// One device of a `pre-register`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PreRegisteredDevice {
    pub id: String,
    #[serde(default)]
    pub name: String,
    /// The device's adb port on this host; 0 when it has none.
    #[serde(default)]
    pub adb_port: u16,
}

/// What became of one pre-registered device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegistrationStatus {
    pub id: String,
    pub status: RegistrationState,
    /// Why it failed; empty otherwise.
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistrationState {
    Accepted,
    Failed,
    Registered,
}

impl RegistrationStatus {
    pub fn encode(&self) -> String {
        // Strings and a unit enum always serialize.
        serde_json::to_string(self).unwrap_or_else(|_| "null".into())
    }
}

/// The answer to a `pre-register`: one status per device, in one message.
pub fn encode_statuses(statuses: &[RegistrationStatus]) -> String {
    serde_json::to_string(statuses).unwrap_or_else(|_| "[]".into())
}

/// Decodes a control message; `pre-register` is the only kind.
pub fn decode(text: &str) -> Result<PreRegister, DecodeError> {
    #[derive(Deserialize)]
    struct Kind<'a> {
        #[serde(borrow)]
        message_type: Option<std::borrow::Cow<'a, str>>,
    }
    // One JSON object within the nesting bound, as every message.
    let object = crate::parse_bare_payload(text)?;
    let kind: Kind<'_> = serde_json::from_str(object.get())
        .map_err(|e| DecodeError::InvalidMessage(e.to_string()))?;
    match kind.message_type.as_deref() {
        Some("pre-register") => {
            serde_json::from_str(text).map_err(|e| DecodeError::InvalidMessage(e.to_string()))
        }
        Some(other) => Err(DecodeError::UnknownMessageType(other.to_owned())),
        None => Err(DecodeError::InvalidMessage("missing message_type".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pre_register_decodes_and_statuses_encode_as_the_go_operator_writes_them() {
        let message = decode(
            r#"{"message_type":"pre-register","group_name":"g","owner":"o","devices":[{"id":"cvd-1","name":"phone","adb_port":6520},{"id":"cvd-2"}]}"#,
        )
        .unwrap();
        assert_eq!(message.group_name, "g");
        assert_eq!(message.devices[0].adb_port, 6520);
        assert_eq!(message.devices[1].name, "");
        let accepted = RegistrationStatus {
            id: "cvd-1".into(),
            status: RegistrationState::Accepted,
            message: String::new(),
        };
        assert_eq!(
            encode_statuses(std::slice::from_ref(&accepted)),
            r#"[{"id":"cvd-1","status":"accepted","message":""}]"#
        );
        let registered = RegistrationStatus {
            status: RegistrationState::Registered,
            ..accepted
        };
        assert_eq!(
            registered.encode(),
            r#"{"id":"cvd-1","status":"registered","message":""}"#
        );
    }

    #[test]
    fn other_control_messages_are_refused_clearly() {
        for (text, want) in [
            ("[]", "Invalid message: expected a JSON object"),
            (r#"{"devices":[]}"#, "Invalid message: missing message_type"),
            (
                r#"{"message_type":"reboot"}"#,
                "Unknown message type: reboot",
            ),
            (
                r#"{"message_type":"pre-register"}"#,
                "Invalid message: missing field `devices`",
            ),
        ] {
            let error = decode(text).unwrap_err().to_string();
            assert!(error.starts_with(want), "{text}: {error}");
        }
    }
}
