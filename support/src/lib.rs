//! Small pieces that the server binary, the tools and the tests share, so
//! each exists once:
//!
//! - [`http`]: one HTTP/1.1 request over any byte stream (plain TCP or a
//!   TLS session), answered with its status, headers and decoded body;
//! - [`prometheus`]: reading one sample out of a Prometheus text
//!   exposition;
//! - [`shutdown`]: the future that resolves on SIGINT or SIGTERM;
//! - [`seqpacket`]: many packets per system call on a unix
//!   `SOCK_SEQPACKET` socket;
//! - [`coturn`]: a real TURN server (Debian's coturn) on a free loopback
//!   port, for the tests and benchmarks that relay;
//! - [`cut`]: a loopback TCP proxy whose connections a test cuts at once,
//!   as a failing network would.
//!
//! It depends on nothing the server does not already build (tokio, hyper,
//! tokio-seqpacket, nix),
//! so the xtask runner can use it without pulling in the WebRTC stack.

pub mod coturn;
pub mod cut;
pub mod http;
pub mod prometheus;
pub mod seqpacket;
pub mod shutdown;
