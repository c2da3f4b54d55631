//! What `fake-device` and `client-cli` share: the connection to a signaling
//! server (ws or wss, tokens, certificates, errors a person can act on) and
//! a WebRTC peer set up to work on these machines, and the payload layer
//! both sides speak over it.

pub mod device_link;
pub mod negotiation;
pub mod resume;
pub mod rtc_peer;
pub mod signaling;
pub mod turn_check;

pub use signaling::{ConnectOptions, Socket};

/// A log filter for the tools: `{default}` for our crates, errors only from
/// the WebRTC stack, whose warnings are routine on a loopback-only host
/// (checks before candidates arrive, a DTLS server name it cannot know).
pub const QUIET_WEBRTC_LOGS: &str = "{default},webrtc=error,rtc=error,rtc_ice=error,rtc_dtls=error,rtc_sctp=error,rtc_srtp=error,rtc_datachannel=error,rtc_interceptor=error,rtc_mdns=error";

/// Logs to stderr: `RUST_LOG` if set, else `default_level` for our crates
/// and [`QUIET_WEBRTC_LOGS`] for the WebRTC stack.
pub fn init_logging(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(QUIET_WEBRTC_LOGS.replace("{default}", default_level))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
