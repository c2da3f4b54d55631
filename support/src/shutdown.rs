//! The signal that asks a binary to stop.

use std::fmt;

use tokio::signal::unix::SignalKind;

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

/// SIGINT and SIGTERM, caught from the moment [`listen`] returns.
#[derive(Debug)]
pub struct Signals {
    interrupt: Option<tokio::signal::unix::Signal>,
    terminate: Option<tokio::signal::unix::Signal>,
}

/// Catches SIGINT and SIGTERM from now on: call it before telling anyone
/// the process is up, or a signal sent right after would still kill it
/// the default way. A signal that cannot be caught is said in the log and
/// left to its default.
pub fn listen() -> Signals {
    let catch = |kind: SignalKind, name: &str| match tokio::signal::unix::signal(kind) {
        Ok(signal) => Some(signal),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for {name}; it stops this process the default way");
            None
        }
    };
    Signals {
        interrupt: catch(SignalKind::interrupt(), "SIGINT"),
        terminate: catch(SignalKind::terminate(), "SIGTERM"),
    }
}

impl Signals {
    /// Resolves on the first SIGINT or SIGTERM, saying which.
    pub async fn recv(mut self) -> Signal {
        self.recv_next().await
    }

    /// Resolves on the next SIGINT or SIGTERM, saying which; the signals
    /// stay caught for the one after.
    pub async fn recv_next(&mut self) -> Signal {
        tokio::select! {
            Some(()) = next(&mut self.interrupt) => Signal::Interrupt,
            Some(()) = next(&mut self.terminate) => Signal::Terminate,
        }
    }
}

async fn next(signal: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match signal {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

/// [`listen`], then [`Signals::recv`]: for a process whose readiness
/// nobody waits on.
pub async fn signal() -> Signal {
    listen().recv().await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SIGTERM sent after `listen` is caught, not fatal.
    #[tokio::test]
    async fn a_signal_after_listen_is_caught() {
        let signals = listen();
        let pid = std::process::id().to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(status.success());
        assert_eq!(signals.recv().await, Signal::Terminate);
    }
}
