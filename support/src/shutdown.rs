//! The signal that asks a binary to stop.

use std::fmt;

/// Which signal asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Interrupt,
    Terminate,
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Interrupt => "SIGINT",
            Self::Terminate => "SIGTERM",
        })
    }
}

/// Resolves on the first SIGINT or SIGTERM, saying which. If SIGTERM cannot
/// be listened for, it says so in the log and waits for SIGINT alone.
pub async fn signal() -> Signal {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(terminate) => terminate,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops this process");
            interrupted().await;
            return Signal::Interrupt;
        }
    };
    tokio::select! {
        () = interrupted() => Signal::Interrupt,
        _ = terminate.recv() => Signal::Terminate,
    }
}

/// SIGINT; if even that cannot be listened for, never (the process is then
/// stopped the hard way, which is all it can be).
async fn interrupted() {
    if let Err(e) = tokio::signal::ctrl_c().await {
        tracing::warn!(error = %e, "cannot listen for SIGINT");
        std::future::pending::<()>().await;
    }
}
