//! The task that owns one websocket session: it reads frames into its core
//! connection, writes the connection's outbox to the socket, pings, and
//! closes; with resume on, it outlives a connection that drops.
//!
//! One task per session, selecting over the socket, the outbox, one timer,
//! the shutdown signal and the session's resume ticket, so an idle
//! connection is a single parked future. When the connection drops in a way
//! that holds the session (PROTOCOL.md, "Resuming a session"), the task
//! waits without a socket until a new connection is handed to it (its
//! peer's `resume`), the window passes, or the session ends meanwhile; a
//! new connection gets `resumed`, the frames its peer said it missed, then
//! what the outbox held. Every decision (what a frame means, when a
//! deadline has passed, what to send, which endings hold a session) is the
//! core's; this file only moves frames and keeps time.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, sleep_until, timeout_at};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_util::sync::WaitForCancellationFuture;
use tracing::{debug, info};

use crate::ServerState;
use crate::core::resume::{Handoff, Replay, ReplayFrame, ResumeDoor, ResumeRefusal, TicketEvent};
use crate::core::{Batch, Connection, Due, Grant, Outgoing, ServerError, Session};
use crate::door::{self, Closed, Resumption, Traffic, now};
use crate::encode::{self, Dialect};
use crate::limits::Permit;
use crate::metrics::Endpoint;

/// A websocket and the place it holds among the open connections: what a
/// resume hands to the session it takes back.
pub(crate) struct Socket<T> {
    pub ws: WebSocketStream<T>,
    pub permit: Permit,
}

impl ReplayFrame for Utf8Bytes {
    fn bytes(&self) -> usize {
        self.len()
    }
}

/// Past this many frames (or bytes) written and not yet acknowledged, a
/// ping asks the peer to acknowledge them (its pong echoes the count), so
/// that what a session keeps for a resume stays small under load; the
/// keepalive's pings acknowledge the rest.
const ACK_FRAMES: usize = 256;
const ACK_BYTES: usize = 256 << 10;

/// How one connection of the session ended.
#[derive(Debug, Clone)]
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

    /// As the core weighs it: whether it leaves the session held.
    fn end(&self) -> crate::core::resume::ConnectionEnd {
        use crate::core::resume::ConnectionEnd;
        match self {
            Self::Close(ServerError::IdleTimeout) => ConnectionEnd::Silent,
            Self::Close(_) => ConnectionEnd::Server,
            Self::PeerClosed(frame) => ConnectionEnd::PeerClosed(frame.as_ref().map(|f| f.0)),
            Self::Gone => ConnectionEnd::Lost,
        }
    }
}

/// What serving a connection came to.
enum Served {
    Ended(Ending),
    /// Its first frame was a `resume`: the connection is for the session
    /// that token names.
    Resume {
        token: String,
        received: u64,
    },
    /// A resume handed the session a new connection while this one was
    /// still up (the peer came back before the server saw it go).
    Replaced(Handoff),
}

/// What one session's connections share, besides the core connection.
struct Io<'a> {
    state: &'a ServerState,
    dialect: Dialect,
    batch: Batch,
    /// The frames written in the session, for a resume.
    replay: Replay<Utf8Bytes>,
    traffic: Traffic,
    /// The resume token the peer has not been given: it goes into the
    /// first `config` (the Go dialect: `{"device_info"}`) written.
    offer: Option<String>,
    /// The sent count a ping asked the peer to acknowledge, until its pong.
    ack_asked: Option<u64>,
}

/// Runs a session until it ends, over every connection it has. The
/// connection (and with it the device's registration or the client's
/// link) is dropped as soon as the session is over, before the close
/// handshake, which announces the departure.
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
    socket: Socket<T>,
    mut conn: Connection<S>,
    state: &ServerState,
    dialect: Dialect,
    endpoint: Endpoint,
    grant: Grant,
) -> impl Future<Output = ()>
where
    S: Session,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async move {
        let metrics = &state.core.metrics;
        let gauge = metrics.connections(endpoint);
        gauge.inc();
        // Made once: a new one on every pass of the loop would join and
        // leave the token's waiter list each time.
        let cancelled = state.shutdown.cancelled();
        tokio::pin!(cancelled);
        let mut io = Io {
            state,
            dialect,
            batch: Batch::default(),
            replay: Replay::new(state.core.settings.outbox),
            traffic: Traffic::new(),
            offer: conn.session_mut().take_resume_offer(),
            ack_asked: None,
        };
        let mut socket = socket;
        // Only the seed's doors read a `resume` as a connection's first
        // frame; the Go operator's asks for one on the upgrade.
        let mut opening = dialect == Dialect::Seed;
        let (ending, socket) = loop {
            let served = run(
                &mut socket.ws,
                &mut conn,
                &mut io,
                opening,
                cancelled.as_mut(),
            )
            .await;
            opening = false;
            let ending = match served {
                Served::Resume { token, received } => {
                    gauge.dec();
                    return hand_over(socket, state, endpoint, &token, received, grant).await;
                }
                Served::Replaced(mut handoff) => {
                    info!("connection replaced: the session was resumed on a new one");
                    let transport = std::mem::replace(&mut handoff.transport, Box::new(()));
                    let old = std::mem::replace(&mut socket, adopt::<T>(transport));
                    state
                        .tracker
                        .spawn(close_replaced(old, state.config.close_timeout));
                    let back = take_back(&mut socket.ws, &mut conn, &mut io, handoff, None);
                    match back.await {
                        Ok(()) => continue,
                        Err(refused) => break (Ending::Close(refused), Some(socket)),
                    }
                }
                Served::Ended(ending) => ending,
            };
            let held = ending.end().holds_session()
                && conn.session().ticket().is_some()
                && !conn.outbox().is_closing();
            if !held {
                break (ending, Some(socket));
            }
            let window = state.core.resumes.window();
            finish_held(&mut socket.ws, &ending, window, state).await;
            drop(socket);
            gauge.dec();
            let away_since = now();
            if let Some(ticket) = conn.session().ticket() {
                ticket.park(away_since);
            }
            conn.park();
            door::away(metrics, S::ROLE, ending.closed(), window);
            match door::wait_away(&mut conn, cancelled.as_mut()).await {
                door::Away::Back(mut handoff) => {
                    gauge.inc();
                    let transport = std::mem::replace(&mut handoff.transport, Box::new(()));
                    socket = adopt::<T>(transport);
                    let away_for = now().saturating_duration_since(away_since);
                    let back =
                        take_back(&mut socket.ws, &mut conn, &mut io, handoff, Some(away_for));
                    if let Err(refused) = back.await {
                        door::not_resumed(metrics, S::ROLE, Some(&refused));
                        break (Ending::Close(refused), Some(socket));
                    }
                }
                door::Away::Expired => {
                    door::not_resumed(metrics, S::ROLE, None);
                    break (ending, None);
                }
                door::Away::Ended(reason) => {
                    door::not_resumed(metrics, S::ROLE, Some(&reason));
                    if let Some(ticket) = conn.session().ticket() {
                        ticket.ended_while_away(&reason);
                    }
                    break (Ending::Close(reason), None);
                }
            }
        };

        // The session is over: announce the departure now (dropping the
        // registration or link tells the peers), not after the close
        // handshake, which a slow or vanished peer may stall for the whole
        // close timeout.
        drop(conn);
        if let Some(mut socket) = socket {
            let deadline = Instant::now() + state.config.close_timeout;
            match &ending {
                Ending::Close(error) => {
                    debug!(code = error.close_code().map(|c| c.code()), reason = %error, "closing");
                    Box::pin(close(&mut socket.ws, error, deadline)).await;
                }
                Ending::PeerClosed(_) => {
                    let _ = Box::pin(timeout_at(deadline, socket.ws.flush())).await;
                }
                Ending::Gone => {}
            }
            gauge.dec();
        }
        door::ended(metrics, S::ROLE, ending.closed(), &io.traffic);
    }
}

/// Serves one connection of the session until it ends.
async fn run<S, T>(
    ws: &mut WebSocketStream<T>,
    conn: &mut Connection<S>,
    io: &mut Io<'_>,
    opening: bool,
    mut cancelled: Pin<&mut WaitForCancellationFuture<'_>>,
) -> Served
where
    S: Session,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let state = io.state;
    let config = &state.config;
    loop {
        let wake = Instant::from_std(conn.poll_timeout());
        tokio::select! {
            biased;
            () = &mut cancelled => return Served::Ended(Ending::Close(ServerError::ShuttingDown)),
            () = conn.outbox().next_batch(&mut io.batch) => {
                if io.batch.overflowed {
                    return Served::Ended(Ending::Close(conn.slow_consumer()));
                }
                let connect_at = conn.session().connect_received_at();
                // Boxed: the write path's futures exist only while writing,
                // so an idle connection does not carry their space.
                let written = Box::pin(door::unless_stuck(
                    write_batch(ws, io, connect_at),
                    conn,
                    cancelled.as_mut(),
                ))
                .await
                .unwrap_or_else(|error| Err(Ending::Close(error)));
                // Give the queue's allocation back (a close may also
                // have left items unsent): an idle connection holds
                // none, at the price of one allocation per burst.
                io.batch.items = VecDeque::new();
                match written {
                    Ok(None) => {}
                    Ok(Some(ending)) | Err(ending) => return Served::Ended(ending),
                }
                if let Err(ending) = ask_for_ack(ws, conn, io, cancelled.as_mut()).await {
                    return Served::Ended(ending);
                }
            }
            message = ws.next() => {
                let now = now();
                match message {
                    Some(Ok(Message::Text(text))) => {
                        state.core.metrics.bytes_in.inc_by(text.len() as u64);
                        if opening
                            && conn.frames_in() == 0
                            && let Some(resume) = protocol::Resume::opening(&text)
                        {
                            return match resume {
                                Ok(resume) => Served::Resume {
                                    token: resume.token.into_owned(),
                                    received: resume.received,
                                },
                                Err(e) => Served::Ended(Ending::Close(ServerError::ResumeRefused(
                                    format!("Resume refused: {e}"),
                                ))),
                            };
                        }
                        io.traffic.received(text.len());
                        conn.on_text(&text, now);
                        if io.offer.is_none() {
                            io.offer = conn.session_mut().take_resume_offer();
                        }
                    }
                    Some(Ok(Message::Binary(_))) => return Served::Ended(Ending::Close(ServerError::BinaryMessage)),
                    // tungstenite queues the pong; send it now.
                    Some(Ok(Message::Ping(_))) => {
                        conn.on_activity(now);
                        if ws.flush().await.is_err() {
                            return Served::Ended(Ending::Gone);
                        }
                    }
                    Some(Ok(Message::Pong(payload))) => {
                        conn.on_activity(now);
                        // Our pings carry the count of frames sent before
                        // them: the peer has read every one of those.
                        if let Ok(count) = <[u8; 8]>::try_from(payload.as_ref()) {
                            let count = u64::from_be_bytes(count);
                            io.replay.acknowledged(count);
                            if io.ack_asked.is_some_and(|asked| count >= asked) {
                                io.ack_asked = None;
                            }
                        }
                    }
                    Some(Ok(Message::Frame(_))) => conn.on_activity(now),
                    Some(Ok(Message::Close(frame))) => {
                        return Served::Ended(Ending::PeerClosed(
                            frame.map(|f| (u16::from(f.code), f.reason.to_string())),
                        ));
                    }
                    Some(Err(e)) => return Served::Ended(read_error(e, config.max_message_bytes)),
                    None => return Served::Ended(Ending::Gone),
                }
            }
            event = door::ticket_event(conn.session()) => match event {
                TicketEvent::Handoff(handoff) => return Served::Replaced(handoff),
                TicketEvent::Released => {}
            },
            () = sleep_until(wake) => match conn.handle_timeout(now()) {
                Some(Due::End(error)) => return Served::Ended(Ending::Close(error)),
                Some(Due::Ping) => {
                    let ping = ping(ws, io.replay.sent());
                    if let Err(ending) =
                        Box::pin(door::unless_stuck(ping, conn, cancelled.as_mut()))
                            .await
                            .unwrap_or_else(|error| Err(Ending::Close(error)))
                    {
                        return Served::Ended(ending);
                    }
                }
                None => {}
            },
        }
    }
}

/// A ping that carries how many frames were sent before it: its pong
/// acknowledges them all.
async fn ping<T>(ws: &mut WebSocketStream<T>, sent: u64) -> Result<(), Ending>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let payload = sent.to_be_bytes().to_vec();
    ws.send(Message::Ping(payload.into()))
        .await
        .map_err(|_| Ending::Gone)
}

/// Asks the peer to acknowledge what it was sent, when much waits for an
/// acknowledgement and no ask is out.
async fn ask_for_ack<S, T>(
    ws: &mut WebSocketStream<T>,
    conn: &Connection<S>,
    io: &mut Io<'_>,
    cancelled: Pin<&mut WaitForCancellationFuture<'_>>,
) -> Result<(), Ending>
where
    S: Session,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let (frames, bytes) = io.replay.unacknowledged();
    if io.ack_asked.is_some() || (frames < ACK_FRAMES && bytes < ACK_BYTES) {
        return Ok(());
    }
    let sent = io.replay.sent();
    io.ack_asked = Some(sent);
    Box::pin(door::unless_stuck(ping(ws, sent), conn, cancelled))
        .await
        .unwrap_or_else(|error| Err(Ending::Close(error)))
}

/// Writes a batch, stopping at a close. Returns the close, if there was one.
/// Every frame written is numbered and kept until acknowledged (see
/// [`Replay`]). A client's `device_info` written is observed as the wait
/// since its `connect` arrived, at `connect_at`; the batch's oldest relayed
/// message as the outbox wait.
async fn write_batch<T>(
    ws: &mut WebSocketStream<T>,
    io: &mut Io<'_>,
    connect_at: Option<std::time::Instant>,
) -> Result<Option<Ending>, Ending>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let state = io.state;
    let mut close = None;
    let mut device_info = false;
    for item in io.batch.items.drain(..) {
        // The resume token rides on the session's first frame.
        let first = match (&item, io.dialect) {
            (Outgoing::Close(error), _) => {
                close = Some(Ending::Close(error.clone()));
                break;
            }
            (Outgoing::DeviceInfo(_), Dialect::GoOperator) => {
                device_info = true;
                true
            }
            (Outgoing::DeviceInfo(_), Dialect::Seed) => {
                device_info = true;
                false
            }
            (Outgoing::Config(_), Dialect::Seed) => true,
            _ => false,
        };
        let Some(mut text) = encode::frame_in(item, io.dialect) else {
            continue;
        };
        if first && let Some(token) = io.offer.take() {
            door::offer(state, token).append_to(&mut text);
        }
        state.core.metrics.bytes_out.inc_by(text.len() as u64);
        io.traffic.sent(text.len());
        let frame = Utf8Bytes::from(text);
        io.replay.written(frame.clone());
        ws.feed(Message::Text(frame))
            .await
            .map_err(|_| Ending::Gone)?;
    }
    ws.flush().await.map_err(|_| Ending::Gone)?;
    door::written(
        state,
        &mut io.batch,
        device_info.then_some(connect_at).flatten(),
    );
    Ok(close)
}

/// The transport a resume handed over: always a websocket of this door's,
/// which its claim checked.
fn adopt<T: 'static>(transport: Box<dyn std::any::Any + Send>) -> Socket<T> {
    match transport.downcast::<Socket<T>>() {
        Ok(socket) => *socket,
        Err(_) => unreachable!("a websocket session is handed websockets only"),
    }
}

/// Starts a session again on the socket a resume handed over (the
/// handoff's transport, already taken out): the session's credentials
/// become the new connection's, then the peer gets `resumed` (its next
/// token, and how many of its frames the server received) and every frame
/// after the `received` it gave. A `received` the books cannot answer ends
/// the session: its error frame is written, and the error returned.
async fn take_back<S, T>(
    ws: &mut WebSocketStream<T>,
    conn: &mut Connection<S>,
    io: &mut Io<'_>,
    handoff: Handoff,
    away_for: Option<std::time::Duration>,
) -> Result<(), ServerError>
where
    S: Session,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let state = io.state;
    let Handoff {
        received,
        token,
        grant,
        ..
    } = handoff;
    if let Some(grant) = grant {
        conn.session_mut().regrant(grant);
    }
    if let Some(ticket) = conn.session().ticket() {
        ticket.unpark();
    }
    conn.unpark(now());
    io.ack_asked = None;
    let missing: Vec<Utf8Bytes> = match io.replay.missing(received) {
        Ok(missing) => missing.cloned().collect(),
        Err(e) => {
            let error = ServerError::ResumeRefused(e.to_string());
            state.core.metrics.error_sent(&error);
            let frame = encode::error_frame(&error);
            let deadline = Instant::now() + state.config.close_timeout;
            let _ = timeout_at(deadline, ws.send(Message::Text(frame.into()))).await;
            return Err(error);
        }
    };
    let resumed = door::resumed_frame(state, token, conn.frames_in());
    door::resumed(
        &state.core.metrics,
        S::ROLE,
        Resumption {
            away_for,
            replayed: missing.len(),
            peer_received: received,
            server_received: conn.frames_in(),
        },
    );
    let write = async {
        ws.feed(Message::Text(resumed.into())).await?;
        for frame in missing {
            state.core.metrics.bytes_out.inc_by(frame.len() as u64);
            io.traffic.sent(frame.len());
            ws.feed(Message::Text(frame)).await?;
        }
        ws.flush().await
    };
    // A socket that fails at once is found so by the next read, which
    // holds the session again.
    if let Err(e) = write.await {
        debug!(error = %e, "the resumed connection failed at once");
    }
    Ok(())
}

/// Ends the connection of a session that is held: the reply to the peer's
/// 1001 is flushed; a peer that went silent is told, should it still
/// listen, that its session is held (4000); a lost one gets nothing.
async fn finish_held<T>(
    ws: &mut WebSocketStream<T>,
    ending: &Ending,
    window: std::time::Duration,
    state: &ServerState,
) where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let deadline = Instant::now() + state.config.close_timeout;
    match ending {
        Ending::PeerClosed(_) => {
            let _ = Box::pin(timeout_at(deadline, ws.flush())).await;
        }
        Ending::Close(error) => {
            let frame = CloseFrame {
                code: WsCloseCode::from(protocol::CLOSE_SESSION_HELD),
                reason: format!(
                    "{error}: the session is held for {}; resume it with its token",
                    humantime::format_duration(window)
                )
                .into(),
            };
            let _ = Box::pin(timeout_at(deadline, ws.send(Message::Close(Some(frame))))).await;
        }
        Ending::Gone => {}
    }
}

/// A connection replaced by a resume: closed in the background, so that
/// the session goes on at once on its new one.
async fn close_replaced<T>(mut old: Socket<T>, close_timeout: std::time::Duration)
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let frame = CloseFrame {
        code: WsCloseCode::Normal,
        reason: "Replaced: the session was resumed on another connection".into(),
    };
    let _ = timeout_at(
        Instant::now() + close_timeout,
        old.ws.send(Message::Close(Some(frame))),
    )
    .await;
}

/// A connection whose first frame was `resume`: claims the session its
/// token names and hands it this socket, or says why not and closes.
async fn hand_over<T>(
    mut socket: Socket<T>,
    state: &ServerState,
    endpoint: Endpoint,
    token: &str,
    received: u64,
    grant: Grant,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let door = match endpoint {
        Endpoint::RegisterDevice => ResumeDoor::RegisterDevice,
        _ => ResumeDoor::ConnectClient,
    };
    let refusal = match state.core.resumes.claim(token, door, None, now()) {
        Ok(claim) if grant.allows(claim.device_id()) => {
            match claim.deliver(Box::new(socket), received, Some(grant)) {
                Ok(()) => return debug!("connection handed to the session it resumes"),
                Err((transport, refusal)) => {
                    socket = adopt(transport);
                    refusal
                }
            }
        }
        Ok(claim) => ResumeRefusal::WrongDevice(claim.device_id().to_owned()),
        Err(refusal) => refusal,
    };
    refuse(&mut socket.ws, state, &refusal).await;
}

/// Says on a new connection why it cannot resume its session (an error
/// frame, then close 1008), logged and counted as a refusal.
pub(crate) async fn refuse<T>(
    ws: &mut WebSocketStream<T>,
    state: &ServerState,
    refusal: &ResumeRefusal,
) where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let error = ServerError::ResumeRefused(refusal.to_string());
    crate::http::resume_refused(state, None, "(resume)", refusal);
    state.core.metrics.error_sent(&error);
    let deadline = Instant::now() + state.config.close_timeout;
    let frame = encode::error_frame(&error);
    let _ = timeout_at(deadline, ws.send(Message::Text(frame.into()))).await;
    Box::pin(close(ws, &error, deadline)).await;
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
