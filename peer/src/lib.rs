//! What `fake-device` and `client-cli` share: the connection to a signaling
//! server (ws or wss, tokens, certificates, errors a person can act on) and
//! a WebRTC peer set up to work on these machines.

pub mod rtc_peer;
pub mod signaling;

pub use signaling::{ConnectOptions, Socket};
