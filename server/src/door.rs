//! What the front doors that own a socket share (`websocket/`,
//! `device_socket.rs`, `polling.rs`): the clock they read for the core, and
//! the guard around a write that may never finish.

use std::future::Future;
use std::pin::Pin;

use tokio_util::sync::WaitForCancellationFuture;

use crate::core::{Connection, ServerError, Session};

/// The core's clock reading: tokio's, so a paused test clock drives it.
pub(crate) fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// Runs `write`, unless the connection's outbox overflows first (the peer
/// is not reading, so the write may never finish) or the server shuts
/// down; then the error that ends the connection.
pub(crate) async fn unless_stuck<F, S>(
    write: F,
    conn: &Connection<S>,
    shutdown: Pin<&mut WaitForCancellationFuture<'_>>,
) -> Result<F::Output, ServerError>
where
    F: Future,
    S: Session,
{
    tokio::select! {
        biased;
        result = write => Ok(result),
        () = conn.outbox().overflowed() => Err(conn.slow_consumer()),
        () = shutdown => Err(ServerError::ShuttingDown),
    }
}
