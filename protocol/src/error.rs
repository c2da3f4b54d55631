//! Why a frame could not be decoded, phrased as the server answers it.

use thiserror::Error;

/// A frame that is not a valid message of its direction.
///
/// `Display` gives the exact error text the server sends: a stable phrase
/// that programs can match on, then details after a colon.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// Not JSON, not an object, too deeply nested, or `message_type` missing
    /// or not a string.
    #[error("Invalid message: {0}")]
    InvalidMessage(String),
    /// A `message_type` this direction does not have.
    #[error("Unknown message type: {0}")]
    UnknownMessageType(String),
    /// `device_id` missing, not a string, empty, too long, or with control
    /// characters.
    #[error("Invalid device_id: {0}")]
    InvalidDeviceId(String),
    /// `client_id` missing or not a positive integer.
    #[error("Invalid client_id: {0}")]
    InvalidClientId(String),
    /// A `forward` without a `payload` key (`null` is a payload).
    #[error("Missing payload")]
    MissingPayload,
}

impl DecodeError {
    /// The stable phrase the error text starts with, without details; used
    /// as a metrics label.
    pub fn phrase(&self) -> &'static str {
        match self {
            Self::InvalidMessage(_) => "Invalid message",
            Self::UnknownMessageType(_) => "Unknown message type",
            Self::InvalidDeviceId(_) => "Invalid device_id",
            Self::InvalidClientId(_) => "Invalid client_id",
            Self::MissingPayload => "Missing payload",
        }
    }
}
