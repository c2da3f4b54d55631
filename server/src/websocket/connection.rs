//! The task that owns one websocket: it reads frames into its core
//! connection, writes the connection's outbox to the socket, pings, and
//! closes.
//!
//! One task per connection, selecting over the socket, the outbox, one timer
//! and the shutdown signal, so an idle connection is a single parked future.
//! Every decision (what a frame means, when a deadline has passed, what to
//! send) is the core's; this file only moves frames and keeps time.

use std::collections::VecDeque;
use std::future::Future;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, sleep_until, timeout_at};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::ServerState;
use crate::core::{Batch, Connection, Due, Outgoing, ServerError, Session};
use crate::door::{self, Closed, Traffic, now};
use crate::encode::{self, Dialect};

/// How a connection ends.
#[derive(Debug)]
enum Ending {
    /// Send this close frame and wait for the reply.
    Close(ServerError),
    /// The peer closed, with this code and reason if it gave one; our
    /// reply is queued and only needs flushing.
    PeerClosed(Option<(u16, String)>),
    /// The socket is gone; nothing more can be sent.
    Gone,
}

impl Ending {
    /// As the line and the metrics of its end say it.
    fn closed(&self) -> Closed<'_> {
        match self {
            Self::Close(error) => Closed::ByServer(error),
            Self::PeerClosed(frame) => Closed::ByPeer {
                code: frame.as_ref().map(|(code, _)| *code),
                reason: frame.as_ref().map(|(_, reason)| reason.as_str()),
            },
            Self::Gone => Closed::Lost,
        }
    }
}

/// Runs a connection until it ends. The connection (and with it the
/// device's registration or the client's link) is dropped as soon as the
/// session is over, before the close handshake, which announces the
/// disconnect.
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
    mut conn: Connection<S>,
    state: &ServerState,
    shutdown: CancellationToken,
    dialect: Dialect,
) -> impl Future<Output = ()>
where
    S: Session,
    T: AsyncRead + AsyncWrite + Unpin,
{
    async move {
        let config = &state.config;
        let mut batch = Batch::default();
        // Made once: a new one on every pass of the loop would join and
        // leave the token's waiter list each time.
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        let mut traffic = Traffic::new();

        let ending = loop {
            let wake = Instant::from_std(conn.poll_timeout());
            tokio::select! {
                biased;
                () = &mut cancelled => break Ending::Close(ServerError::ShuttingDown),
                () = conn.outbox().next_batch(&mut batch) => {
                    if batch.overflowed {
                        break Ending::Close(conn.slow_consumer());
                    }
                    let connect_at = conn.session().connect_received_at();
                    // Boxed: the write path's futures exist only while writing,
                    // so an idle connection does not carry their space.
                    let written = Box::pin(door::unless_stuck(
                        write_batch(&mut ws, &mut batch, state, dialect, &mut traffic, connect_at),
                        &conn,
                        cancelled.as_mut(),
                    ))
                    .await
                    .unwrap_or_else(|error| Err(Ending::Close(error)));
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
                    let now = now();
                    match message {
                        Some(Ok(Message::Text(text))) => {
                            state.core.metrics.bytes_in.inc_by(text.len() as u64);
                            traffic.received(text.len());
                            conn.on_text(&text, now);
                        }
                        Some(Ok(Message::Binary(_))) => break Ending::Close(ServerError::BinaryMessage),
                        // tungstenite queues the pong; send it now.
                        Some(Ok(Message::Ping(_))) => {
                            conn.on_activity(now);
                            if ws.flush().await.is_err() {
                                break Ending::Gone;
                            }
                        }
                        Some(Ok(Message::Pong(_) | Message::Frame(_))) => conn.on_activity(now),
                        Some(Ok(Message::Close(frame))) => {
                            break Ending::PeerClosed(
                                frame.map(|f| (u16::from(f.code), f.reason.to_string())),
                            );
                        }
                        Some(Err(e)) => break read_error(e, config.max_message_bytes),
                        None => break Ending::Gone,
                    }
                }
                () = sleep_until(wake) => match conn.handle_timeout(now()) {
                    Some(Due::End(error)) => break Ending::Close(error),
                    Some(Due::Ping) => {
                        let ping = async {
                            ws.send(Message::Ping(Default::default()))
                                .await
                                .map(|()| None::<Ending>)
                                .map_err(|_| Ending::Gone)
                        };
                        if let Err(ending) =
                            Box::pin(door::unless_stuck(ping, &conn, cancelled.as_mut()))
                                .await
                                .unwrap_or_else(|error| Err(Ending::Close(error)))
                        {
                            break ending;
                        }
                    }
                    None => {}
                },
            }
        };

        // The session is over: announce the departure now (dropping the
        // registration or link tells the peers), not after the close
        // handshake, which a slow or vanished peer may stall for the whole
        // close timeout.
        drop(conn);
        let deadline = Instant::now() + config.close_timeout;
        match &ending {
            Ending::Close(error) => {
                debug!(code = error.close_code().map(|c| c.code()), reason = %error, "closing");
                Box::pin(close(&mut ws, error, deadline)).await;
            }
            Ending::PeerClosed(_) => {
                let _ = Box::pin(timeout_at(deadline, ws.flush())).await;
            }
            Ending::Gone => {}
        }
        door::ended(&state.core.metrics, S::ROLE, ending.closed(), &traffic);
    }
}

/// Writes a batch, stopping at a close. Returns the close, if there was one.
/// A client's `device_info` written is observed as the wait since its
/// `connect` arrived, at `connect_at`; the batch's oldest relayed message
/// as the outbox wait.
async fn write_batch<T>(
    ws: &mut WebSocketStream<T>,
    batch: &mut Batch,
    state: &ServerState,
    dialect: Dialect,
    traffic: &mut Traffic,
    connect_at: Option<std::time::Instant>,
) -> Result<Option<Ending>, Ending>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut close = None;
    let mut device_info = false;
    for item in batch.items.drain(..) {
        match item {
            Outgoing::Close(error) => {
                close = Some(Ending::Close(error));
                break;
            }
            Outgoing::DeviceInfo(_) => device_info = true,
            _ => {}
        }
        let Some(text) = encode::frame_in(item, dialect) else {
            continue;
        };
        state.core.metrics.bytes_out.inc_by(text.len() as u64);
        traffic.sent(text.len());
        ws.feed(Message::Text(text.into()))
            .await
            .map_err(|_| Ending::Gone)?;
    }
    ws.flush().await.map_err(|_| Ending::Gone)?;
    door::written(state, batch, device_info.then_some(connect_at).flatten());
    Ok(close)
}

/// What a read error means for the connection (D13, D14).
fn read_error(error: WsError, max_message_bytes: usize) -> Ending {
    match error {
        WsError::Capacity(e) => {
            debug!(error = %e, "message over the size limit");
            Ending::Close(ServerError::MessageTooBig {
                limit: max_message_bytes,
            })
        }
        WsError::Utf8(_) => Ending::Close(ServerError::InvalidUtf8),
        WsError::Protocol(e) => {
            use tokio_tungstenite::tungstenite::error::ProtocolError;
            match e {
                ProtocolError::ResetWithoutClosingHandshake => Ending::Gone,
                e => Ending::Close(ServerError::ProtocolViolation(e.to_string())),
            }
        }
        _ => Ending::Gone,
    }
}

/// Sends a close frame and waits for the peer's, until `deadline`.
async fn close<T>(ws: &mut WebSocketStream<T>, error: &ServerError, deadline: Instant)
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let code = error
        .close_code()
        .map_or(WsCloseCode::Error, |c| c.code().into());
    let frame = CloseFrame {
        code,
        reason: encode::close_reason(error).into(),
    };
    if !matches!(
        timeout_at(deadline, ws.send(Message::Close(Some(frame)))).await,
        Ok(Ok(()))
    ) {
        return;
    }
    // Drain until the peer's close (or its end of stream) arrives.
    while let Ok(Some(Ok(_))) = timeout_at(deadline, ws.next()).await {}
}
