//! What `fake-device` and `client-cli` share: the connection to a signaling
//! server (ws or wss, tokens, certificates, errors a person can act on) and
//! a WebRTC peer set up to work on these machines.

pub mod rtc_peer;
pub mod signaling;

pub use signaling::{ConnectOptions, Socket};

/// A log filter for the tools: `{default}` for our crates, errors only from
/// the WebRTC stack, whose warnings are routine on a loopback-only host
/// (checks before candidates arrive, a DTLS server name it cannot know).
pub const QUIET_WEBRTC_LOGS: &str = "{default},webrtc=error,rtc=error,rtc_ice=error,rtc_dtls=error,rtc_sctp=error,rtc_srtp=error,rtc_datachannel=error,rtc_interceptor=error,rtc_mdns=error";
