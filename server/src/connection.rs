//! The task that owns one websocket: it reads frames into its session,
//! writes the session's outbox to the socket, pings, and closes.
//!
//! One task per connection, selecting over the socket, the outbox, one timer
//! and the shutdown signal, so an idle connection is a single parked future.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, sleep_until, timeout_at};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tracing::{debug, info};

use crate::outbox::{Batch, Outbox, Outgoing};
use crate::session::{Context, Session, close_reason, rate_limited};

/// How a connection ends.
#[derive(Debug)]
enum Ending {
    /// Send this close frame and wait for the reply.
    Close(CloseCode, Utf8Bytes),
    /// The peer closed; our reply is queued and only needs flushing.
    PeerClosed,
    /// The socket is gone; nothing more can be sent.
    Gone,
}

/// Runs a connection until it ends. The session (and with it the device's
/// registration or the client's link) is dropped on return, which announces
/// the disconnect.
///
/// A plain function returning an `async move` block rather than an `async
/// fn`: an `async fn` keeps its arguments twice in its state (as captured
/// arguments and as the locals they are moved into), which for the socket
/// and the session is about 470 bytes of every idle connection.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would hold the socket and the session twice"
)]
pub(crate) fn drive<S, T>(
    mut ws: WebSocketStream<T>,
    mut session: S,
    outbox: Outbox,
    ctx: &Context,
    shutdown: CancellationToken,
) -> impl Future<Output = ()>
where
    S: Session,
    T: AsyncRead + AsyncWrite + Unpin,
{
    async move {
        let config = &ctx.config;
        let mut last_seen = Instant::now();
        let mut next_ping = last_seen + config.ping_interval;
        let mut batch = Batch::default();
        // The rate limit's state (see `rate.rs`).
        let mut rate_due = last_seen;
        // Made once: a new one on every pass of the loop would join and
        // leave the token's waiter list each time.
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);

        let ending = loop {
            let idle_at = last_seen + config.idle_timeout;
            let session_deadline = if outbox.is_closing() {
                None
            } else {
                session.deadline()
            };
            let wake = [Some(next_ping), Some(idle_at), session_deadline]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(idle_at);

            tokio::select! {
                biased;
                () = &mut cancelled => {
                    break Ending::Close(CloseCode::Away, "Server shutting down".into());
                }
                () = outbox.next_batch(&mut batch) => {
                    if batch.overflowed {
                        break slow_consumer(ctx);
                    }
                    // Boxed: the write path's futures exist only while writing,
                    // so an idle connection does not carry their space.
                    let written = Box::pin(guarded_write(
                        write_batch(&mut ws, &mut batch, ctx),
                        &outbox,
                        cancelled.as_mut(),
                        ctx,
                    ))
                    .await;
                    // Give the queue's allocation back (a close may also
                    // have left items unsent): an idle connection holds
                    // none, at the price of one allocation per burst.
                    batch.items = VecDeque::new();
                    match written {
                        Ok(None) => {}
                        Ok(Some(ending)) | Err(ending) => break ending,
                    }
                }
                message = ws.next() => {
                    last_seen = Instant::now();
                    match message {
                        Some(Ok(Message::Text(text))) => {
                            ctx.metrics.bytes_in.inc_by(text.len() as u64);
                            on_text_frame(
                                &mut session,
                                &text,
                                &outbox,
                                ctx,
                                &mut rate_due,
                                last_seen,
                            );
                        }
                        Some(Ok(Message::Binary(_))) => {
                            break Ending::Close(
                                CloseCode::Unsupported,
                                "Binary messages are not supported".into(),
                            );
                        }
                        // tungstenite queues the pong; send it now.
                        Some(Ok(Message::Ping(_))) => {
                            if ws.flush().await.is_err() {
                                break Ending::Gone;
                            }
                        }
                        Some(Ok(Message::Pong(_) | Message::Frame(_))) => {}
                        Some(Ok(Message::Close(_))) => break Ending::PeerClosed,
                        Some(Err(e)) => break read_error(e, config.max_message_bytes),
                        None => break Ending::Gone,
                    }
                }
                () = sleep_until(wake) => {
                    let now = Instant::now();
                    if now >= idle_at {
                        break Ending::Close(CloseCode::Policy, "Idle timeout".into());
                    }
                    if session_deadline.is_some_and(|deadline| now >= deadline) {
                        session.on_deadline();
                    }
                    if now >= next_ping {
                        next_ping = now + config.ping_interval;
                        let ping = async {
                            ws.send(Message::Ping(Default::default()))
                                .await
                                .map(|()| None)
                                .map_err(|_| Ending::Gone)
                        };
                        if let Err(ending) =
                            Box::pin(guarded_write(ping, &outbox, cancelled.as_mut(), ctx)).await
                        {
                            break ending;
                        }
                    }
                }
            }
        };

        let deadline = Instant::now() + config.close_timeout;
        match ending {
            Ending::Close(code, reason) => {
                debug!(%code, %reason, "closing");
                Box::pin(close(&mut ws, code, reason, deadline)).await;
            }
            Ending::PeerClosed => {
                let _ = Box::pin(timeout_at(deadline, ws.flush())).await;
            }
            Ending::Gone => {}
        }
        info!("connection closed");
    }
}

/// What a connection does with a text frame that arrived at `now`: its
/// session acts on it, unless the session is already over (after a fatal
/// error, what the peer sends meanwhile is not acted on) or the sender is
/// past its rate limit. `rate_due` is the limit's state (see `rate.rs`).
pub(crate) fn on_text_frame<S: Session + ?Sized>(
    session: &mut S,
    text: &str,
    outbox: &Outbox,
    ctx: &Context,
    rate_due: &mut Instant,
    now: Instant,
) {
    if outbox.is_closing() {
        return;
    }
    if ctx.rate.is_none_or(|rate| rate.allow(rate_due, now)) {
        session.on_text(text);
    } else {
        rate_limited(ctx, outbox);
    }
}

/// Runs a write, unless the outbox overflows (the peer is not reading, so
/// the write may never finish) or the server shuts down first. `Ok(Some)`
/// is a close the write asked for.
async fn guarded_write<F>(
    write: F,
    outbox: &Outbox,
    shutdown: Pin<&mut WaitForCancellationFuture<'_>>,
    ctx: &Context,
) -> Result<Option<Ending>, Ending>
where
    F: Future<Output = Result<Option<Ending>, Ending>>,
{
    tokio::select! {
        biased;
        result = write => result,
        () = outbox.overflowed() => Err(slow_consumer(ctx)),
        () = shutdown => {
            Err(Ending::Close(CloseCode::Away, "Server shutting down".into()))
        }
    }
}

/// Writes a batch, stopping at a close. Returns the close, if there was one.
async fn write_batch<T>(
    ws: &mut WebSocketStream<T>,
    batch: &mut Batch,
    ctx: &Context,
) -> Result<Option<Ending>, Ending>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut close = None;
    for item in batch.items.drain(..) {
        match item {
            Outgoing::Text(text) => {
                ctx.metrics.bytes_out.inc_by(text.len() as u64);
                ws.feed(Message::Text(text))
                    .await
                    .map_err(|_| Ending::Gone)?;
            }
            Outgoing::Close(code, reason) => {
                close = Some(Ending::Close(code, reason));
                break;
            }
        }
    }
    ws.flush().await.map_err(|_| Ending::Gone)?;
    Ok(close)
}

fn slow_consumer(ctx: &Context) -> Ending {
    ctx.metrics.error_sent("Slow consumer");
    let reason = format!(
        "Slow consumer: more than {} messages or {} bytes queued",
        ctx.config.outbox_messages, ctx.config.outbox_bytes
    );
    Ending::Close(CloseCode::Policy, close_reason(reason))
}

/// What a read error means for the connection (D13, D14).
fn read_error(error: WsError, max_message_bytes: usize) -> Ending {
    match error {
        WsError::Capacity(e) => {
            debug!(error = %e, "message over the size limit");
            Ending::Close(
                CloseCode::Size,
                close_reason(format!(
                    "Message too big: the limit is {max_message_bytes} bytes"
                )),
            )
        }
        WsError::Utf8(_) => {
            Ending::Close(CloseCode::Invalid, "Invalid UTF-8 in text message".into())
        }
        WsError::Protocol(e) => {
            use tokio_tungstenite::tungstenite::error::ProtocolError;
            match e {
                ProtocolError::ResetWithoutClosingHandshake => Ending::Gone,
                e => Ending::Close(
                    CloseCode::Protocol,
                    close_reason(format!("Protocol error: {e}")),
                ),
            }
        }
        _ => Ending::Gone,
    }
}

/// Sends a close frame and waits for the peer's, until `deadline`.
async fn close<T>(
    ws: &mut WebSocketStream<T>,
    code: CloseCode,
    reason: Utf8Bytes,
    deadline: Instant,
) where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let frame = CloseFrame { code, reason };
    if !matches!(
        timeout_at(deadline, ws.send(Message::Close(Some(frame)))).await,
        Ok(Ok(()))
    ) {
        return;
    }
    // Drain until the peer's close (or its end of stream) arrives.
    while let Ok(Some(Ok(_))) = timeout_at(deadline, ws.next()).await {}
}
