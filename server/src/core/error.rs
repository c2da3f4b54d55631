//! Every error the server sends, as one enum that knows its wire text.
//!
//! A variant gives its stable phrase (what programs match on, and the
//! metrics label), its full text, whether it ends the session, and the close
//! code it ends it with. Some endings are a close frame alone (the close
//! code says it: 1003, 1007, 1009; or the peer is past listening: an idle
//! timeout, a slow consumer); those send no error frame. PROTOCOL.md's
//! tables "Every error phrase" and "Close codes" list the same set, and a
//! test holds the two to each other.

use std::fmt;

use protocol::DecodeError;

/// A websocket close code, as the server uses them (RFC 6455 §7.4.1).
/// Front doors without close frames map it to their own way of ending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 1001: the server is going away, or a client's device did.
    Away,
    /// 1002: the peer broke the websocket protocol.
    Protocol,
    /// 1003: a kind of data the server does not take (binary).
    Unsupported,
    /// 1007: text that is not UTF-8.
    Invalid,
    /// 1008: the session broke a rule of the signaling protocol.
    Policy,
    /// 1009: a message over the size limit.
    Size,
    /// 1013: try again later (the instances' shared registry is out of
    /// reach).
    TryAgain,
}

impl CloseCode {
    /// The number on the wire.
    pub fn code(self) -> u16 {
        match self {
            Self::Away => 1001,
            Self::Protocol => 1002,
            Self::Unsupported => 1003,
            Self::Invalid => 1007,
            Self::Policy => 1008,
            Self::Size => 1009,
            Self::TryAgain => 1013,
        }
    }
}

/// What the server tells a peer that went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerError {
    /// A frame that does not decode (D9–D12, C4, C8–C10); `Invalid
    /// device_id` ends the session (D2, C4), the others do not.
    Decode(DecodeError),
    /// D3: a live device holds this id.
    DeviceIdTaken(String),
    /// D4: `register` on a registered socket.
    AlreadyRegistered(String),
    /// D5: `forward` before `register`.
    NotRegistered,
    /// D8: a client id this device never had.
    UnknownClient(u64),
    /// D15.
    RegistrationTimeout,
    /// C2, C3: no device holds the id.
    DeviceNotFound(String),
    /// C5: `connect` again; names the device already connected.
    AlreadyConnected(String),
    /// C6: `forward` before `device_info`.
    NotConnected,
    /// C13.
    ConnectTimeout,
    /// D16, to each client: its device left.
    DeviceDisconnected,
    /// D17, C15.
    RateLimited { per_second: u32, burst: u32 },
    /// No sign of life within the idle timeout.
    IdleTimeout,
    /// The peer's outbox went past a bound (PROTOCOL.md, Promises, 3).
    SlowConsumer { messages: usize, bytes: usize },
    /// D14, C12.
    MessageTooBig { limit: usize },
    /// A client's payload too long to reach its device in a frame within
    /// the size limit; it is not relayed, the session goes on.
    PayloadTooBig { limit: usize },
    /// D13, C11: a binary frame.
    BinaryMessage,
    /// D13, C11: text that is not UTF-8.
    InvalidUtf8,
    /// The peer broke the websocket protocol.
    ProtocolViolation(String),
    /// The server is shutting down.
    ShuttingDown,
    /// A registration that needs a cluster-wide lease while this instance
    /// cannot reach the registry (PROTOCOL.md, "Many instances").
    RegistryUnavailable,
    /// A `register` or `connect` for a device id the connection's token
    /// does not cover.
    DeviceNotAllowed(String),
    /// The connection's token expired while its session ran.
    TokenExpired,
    /// A connection that came to resume a session cannot: the reason, which
    /// starts with the phrase (PROTOCOL.md, "Resuming a session").
    ResumeRefused(String),
}

impl ServerError {
    /// The stable phrase the text starts with; also the metrics label.
    pub fn phrase(&self) -> &'static str {
        match self {
            Self::Decode(e) => e.phrase(),
            Self::DeviceIdTaken(_) => "Device id already taken",
            Self::AlreadyRegistered(_) => "Device already registered",
            Self::NotRegistered => "Not registered",
            Self::UnknownClient(_) => "Unknown client",
            Self::RegistrationTimeout => "Registration timeout",
            Self::DeviceNotFound(_) => "Device not found",
            Self::AlreadyConnected(_) => "Already connected",
            Self::NotConnected => "Not connected",
            Self::ConnectTimeout => "Connect timeout",
            Self::DeviceDisconnected => "Device disconnected",
            Self::RateLimited { .. } => "Rate limit exceeded",
            Self::IdleTimeout => "Idle timeout",
            Self::SlowConsumer { .. } => "Slow consumer",
            Self::MessageTooBig { .. } => "Message too big",
            Self::PayloadTooBig { .. } => "Payload too big",
            Self::BinaryMessage => "Binary messages are not supported",
            Self::InvalidUtf8 => "Invalid UTF-8 in text message",
            Self::ProtocolViolation(_) => "Protocol error",
            Self::ShuttingDown => "Server shutting down",
            Self::RegistryUnavailable => "Registry unavailable",
            Self::DeviceNotAllowed(_) => "Device not allowed",
            Self::TokenExpired => "Token expired",
            Self::ResumeRefused(_) => "Resume refused",
        }
    }

    /// The metrics label: the phrase in snake_case, never a free string.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Decode(DecodeError::InvalidMessage(_)) => "invalid_message",
            Self::Decode(DecodeError::UnknownMessageType(_)) => "unknown_message_type",
            Self::Decode(DecodeError::InvalidDeviceId(_)) => "invalid_device_id",
            Self::Decode(DecodeError::InvalidClientId(_)) => "invalid_client_id",
            Self::Decode(DecodeError::MissingPayload) => "missing_payload",
            Self::DeviceIdTaken(_) => "device_id_taken",
            Self::AlreadyRegistered(_) => "already_registered",
            Self::NotRegistered => "not_registered",
            Self::UnknownClient(_) => "unknown_client",
            Self::RegistrationTimeout => "registration_timeout",
            Self::DeviceNotFound(_) => "device_not_found",
            Self::AlreadyConnected(_) => "already_connected",
            Self::NotConnected => "not_connected",
            Self::ConnectTimeout => "connect_timeout",
            Self::DeviceDisconnected => "device_disconnected",
            Self::RateLimited { .. } => "rate_limited",
            Self::IdleTimeout => "idle_timeout",
            Self::SlowConsumer { .. } => "slow_consumer",
            Self::MessageTooBig { .. } => "message_too_big",
            Self::PayloadTooBig { .. } => "payload_too_big",
            Self::BinaryMessage => "binary_message",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::ProtocolViolation(_) => "protocol_error",
            Self::ShuttingDown => "shutting_down",
            Self::RegistryUnavailable => "registry_unavailable",
            Self::DeviceNotAllowed(_) => "device_not_allowed",
            Self::TokenExpired => "token_expired",
            Self::ResumeRefused(_) => "resume_refused",
        }
    }

    /// Every [`label`](Self::label), for the metrics to show at zero from
    /// the start (a test holds it to the variants).
    pub const LABELS: [&'static str; 28] = [
        "invalid_message",
        "unknown_message_type",
        "invalid_device_id",
        "invalid_client_id",
        "missing_payload",
        "device_id_taken",
        "already_registered",
        "not_registered",
        "unknown_client",
        "registration_timeout",
        "device_not_found",
        "already_connected",
        "not_connected",
        "connect_timeout",
        "device_disconnected",
        "rate_limited",
        "idle_timeout",
        "slow_consumer",
        "message_too_big",
        "payload_too_big",
        "binary_message",
        "invalid_utf8",
        "protocol_error",
        "shutting_down",
        "registry_unavailable",
        "device_not_allowed",
        "token_expired",
        "resume_refused",
    ];

    /// Whether the session is over after this error, and with which code.
    pub fn close_code(&self) -> Option<CloseCode> {
        match self {
            Self::Decode(DecodeError::InvalidDeviceId(_))
            | Self::DeviceIdTaken(_)
            | Self::RegistrationTimeout
            | Self::DeviceNotFound(_)
            | Self::ConnectTimeout
            | Self::RateLimited { .. }
            | Self::IdleTimeout
            | Self::SlowConsumer { .. }
            | Self::DeviceNotAllowed(_)
            | Self::TokenExpired
            | Self::ResumeRefused(_) => Some(CloseCode::Policy),
            Self::DeviceDisconnected | Self::ShuttingDown => Some(CloseCode::Away),
            Self::MessageTooBig { .. } => Some(CloseCode::Size),
            Self::RegistryUnavailable => Some(CloseCode::TryAgain),
            Self::BinaryMessage => Some(CloseCode::Unsupported),
            Self::InvalidUtf8 => Some(CloseCode::Invalid),
            Self::ProtocolViolation(_) => Some(CloseCode::Protocol),
            Self::Decode(_)
            | Self::AlreadyRegistered(_)
            | Self::NotRegistered
            | Self::UnknownClient(_)
            | Self::AlreadyConnected(_)
            | Self::NotConnected
            | Self::PayloadTooBig { .. } => None,
        }
    }

    /// Whether the session ends with this error.
    pub fn is_fatal(&self) -> bool {
        self.close_code().is_some()
    }

    /// Whether the peer gets an error frame (`{"error": text}`) before any
    /// close. Endings that the close code says alone, or that reach a peer
    /// past listening, are a close frame only.
    pub fn sends_error_frame(&self) -> bool {
        !matches!(
            self,
            Self::IdleTimeout
                | Self::SlowConsumer { .. }
                | Self::MessageTooBig { .. }
                | Self::BinaryMessage
                | Self::InvalidUtf8
                | Self::ProtocolViolation(_)
                | Self::ShuttingDown
        )
    }

    /// One error of every variant, for tests that hold the enum to the
    /// documentation. The match without a wildcard makes a new variant a
    /// compile error here until it is added.
    #[cfg(test)]
    pub(crate) fn one_of_each() -> Vec<ServerError> {
        let all = vec![
            Self::Decode(DecodeError::InvalidMessage("x".into())),
            Self::Decode(DecodeError::UnknownMessageType("x".into())),
            Self::Decode(DecodeError::InvalidDeviceId("x".into())),
            Self::Decode(DecodeError::InvalidClientId("x".into())),
            Self::Decode(DecodeError::MissingPayload),
            Self::DeviceIdTaken("x".into()),
            Self::AlreadyRegistered("x".into()),
            Self::NotRegistered,
            Self::UnknownClient(1),
            Self::RegistrationTimeout,
            Self::DeviceNotFound("x".into()),
            Self::AlreadyConnected("x".into()),
            Self::NotConnected,
            Self::ConnectTimeout,
            Self::DeviceDisconnected,
            Self::RateLimited {
                per_second: 1,
                burst: 1,
            },
            Self::IdleTimeout,
            Self::SlowConsumer {
                messages: 1,
                bytes: 1,
            },
            Self::MessageTooBig { limit: 1 },
            Self::PayloadTooBig { limit: 1 },
            Self::BinaryMessage,
            Self::InvalidUtf8,
            Self::ProtocolViolation("x".into()),
            Self::ShuttingDown,
            Self::RegistryUnavailable,
            Self::DeviceNotAllowed("x".into()),
            Self::TokenExpired,
            Self::ResumeRefused("Resume refused: x".into()),
        ];
        for error in &all {
            match error {
                Self::Decode(
                    DecodeError::InvalidMessage(_)
                    | DecodeError::UnknownMessageType(_)
                    | DecodeError::InvalidDeviceId(_)
                    | DecodeError::InvalidClientId(_)
                    | DecodeError::MissingPayload,
                )
                | Self::DeviceIdTaken(_)
                | Self::AlreadyRegistered(_)
                | Self::NotRegistered
                | Self::UnknownClient(_)
                | Self::RegistrationTimeout
                | Self::DeviceNotFound(_)
                | Self::AlreadyConnected(_)
                | Self::NotConnected
                | Self::ConnectTimeout
                | Self::DeviceDisconnected
                | Self::RateLimited { .. }
                | Self::IdleTimeout
                | Self::SlowConsumer { .. }
                | Self::MessageTooBig { .. }
                | Self::PayloadTooBig { .. }
                | Self::BinaryMessage
                | Self::InvalidUtf8
                | Self::ProtocolViolation(_)
                | Self::ShuttingDown
                | Self::RegistryUnavailable
                | Self::DeviceNotAllowed(_)
                | Self::TokenExpired
                | Self::ResumeRefused(_) => {}
            }
        }
        all
    }
}

/// The full text: the phrase, then details after a colon where there are
/// any. It is the error frame's text and the close reason.
impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Decode(e) => e.fmt(f),
            Self::DeviceIdTaken(id)
            | Self::AlreadyRegistered(id)
            | Self::DeviceNotFound(id)
            | Self::AlreadyConnected(id) => write!(f, "{}: {id}", self.phrase()),
            Self::UnknownClient(client_id) => write!(f, "{}: {client_id}", self.phrase()),
            Self::RateLimited { per_second, burst } => write!(
                f,
                "{}: more than {per_second} messages per second (bursts of {burst})",
                self.phrase()
            ),
            Self::SlowConsumer { messages, bytes } => write!(
                f,
                "{}: more than {messages} messages or {bytes} bytes queued",
                self.phrase()
            ),
            Self::MessageTooBig { limit } => {
                write!(f, "{}: the limit is {limit} bytes", self.phrase())
            }
            Self::PayloadTooBig { limit } => write!(
                f,
                "{}: a forwarded payload may be at most {limit} bytes, so that the frame \
                 carrying it to the device stays within the size limit; not relayed",
                self.phrase()
            ),
            Self::ProtocolViolation(why) => write!(f, "{}: {why}", self.phrase()),
            // The refusal's text says the phrase itself.
            Self::ResumeRefused(text) => f.write_str(text),
            Self::DeviceNotAllowed(id) => write!(
                f,
                "{}: the token does not cover the device id {id}",
                self.phrase()
            ),
            Self::TokenExpired => write!(
                f,
                "{}: the session ended when its token did; connect again with a new token",
                self.phrase()
            ),
            Self::RegistryUnavailable => write!(
                f,
                "{}: this instance cannot reach the shared registry; try again",
                self.phrase()
            ),
            Self::NotRegistered
            | Self::RegistrationTimeout
            | Self::NotConnected
            | Self::ConnectTimeout
            | Self::DeviceDisconnected
            | Self::IdleTimeout
            | Self::BinaryMessage
            | Self::InvalidUtf8
            | Self::ShuttingDown => f.write_str(self.phrase()),
        }
    }
}

impl std::error::Error for ServerError {}

impl From<DecodeError> for ServerError {
    fn from(e: DecodeError) -> Self {
        Self::Decode(e)
    }
}
