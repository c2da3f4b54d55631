//! `fake-device`: registers like a Cuttlefish device and answers every
//! client with its own WebRTC peer connection shaped like a Cuttlefish
//! device's: a video track per display of its `device_info` under the
//! display's stream id (`display_0`, …), drawn and VP8-encoded live
//! (`live.rs`: the device id, the display's number, a clock, and where the
//! last touch landed), an Opus track per audio stream
//! (`audio_0`, silent), the `device-control` channel Cuttlefish's client
//! waits for, and Cuttlefish's channels served as a device would, or left
//! silent (see `channels.rs`). For our own tools it also opens `echo`,
//! which sends back whatever it receives, and `fake-device-input`, which
//! reports each input that arrived.
//!
//! It speaks the payload layer of PROTOCOL.md: `request-offer` from a client
//! starts a peer; the device sends its offer and trickles candidates (flat
//! shape, as Cuttlefish devices do); it applies the client's answer and
//! candidates (either shape), buffering candidates that arrive before the
//! remote description. A client may renegotiate with its own offer. When the
//! server connection drops, it resumes its session with backoff while the
//! server holds it (its clients' peer connections stay up), and registers
//! again, as real devices do, once that is no longer possible.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use peer::device_link::DeviceLink;
use peer::negotiation::{Event, Negotiation, Received, Side};
use peer::resume::Resumable;
use peer::rtc_peer::{PeerEvent, PeerSettings, build_peer, nudge_until_open, selected_pair};
use peer::signaling::{ConnectError, ConnectOptions};
use peer::turn_check::why_no_relay;
use protocol::payload::Payload;
use protocol::{DeviceForward, DeviceToServer, IceServer, RawValue, Register, ServerToDevice};
use tokio::sync::mpsc;
use tracing::{Instrument, debug, info, info_span, warn};
use webrtc::peer_connection::{PeerConnection as _, RTCPeerConnectionState};

use crate::channels::Inputs;
use crate::live::Screens;
use crate::shape::Shape;
use crate::video::Clip;

mod audio;
mod channels;
mod live;
mod page;
mod screen;
mod shape;
mod video;
mod vp8;

/// How long a new peer's driver is nudged while its data channel opens.
const NUDGE_LIMIT: Duration = Duration::from_secs(10);

/// A device for testing signaling servers and WebRTC clients.
#[derive(Debug, Parser)]
#[command(name = "fake-device", version)]
struct Cli {
    #[command(flatten)]
    connect: ConnectOptions,

    /// Register on this device socket (a unix SOCK_SEQPACKET socket, as
    /// Cuttlefish's devices reach its Go operator, e.g.
    /// /run/cuttlefish/operator) instead of the server's websocket. Also
    /// --server unix:PATH.
    #[arg(long, value_name = "PATH")]
    device_socket: Option<PathBuf>,

    /// The id to register under.
    #[arg(long)]
    device_id: String,

    /// `device_info` to register with: JSON text, or @FILE to read it from
    /// a file. Its `displays` and `audio_streams` decide the device's
    /// tracks. Without it, a Cuttlefish device's (hardware, displays of
    /// 720×1280, one audio stream, no buttons or touchpads).
    #[arg(long, value_name = "JSON|@FILE")]
    device_info: Option<String>,

    /// How many displays the default device_info describes (1 to 16),
    /// each its own video track.
    #[arg(long, value_name = "N", conflicts_with = "device_info",
          value_parser = clap::value_parser!(u8).range(1..=shape::MAX_DISPLAYS as i64))]
    displays: Option<u8>,

    /// First wait before re-registering after the server connection drops;
    /// doubles on each failure.
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
    reconnect_min: Duration,

    /// Longest wait between re-registration attempts.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    reconnect_max: Duration,

    /// Serve the device's own page on 127.0.0.1:PORT (0: any free port)
    /// and register with it as `device_port`, so the server's
    /// /devices/{id}/files/ shows it, as a Cuttlefish device's files are.
    #[arg(long, value_name = "PORT")]
    device_port: Option<u16>,

    /// Send no video tracks.
    #[arg(long, conflicts_with = "video")]
    no_video: bool,

    /// Loop this IVF file (VP8, starting with a keyframe) on every display
    /// instead of drawing the screens live.
    #[arg(long, value_name = "FILE")]
    video: Option<PathBuf>,

    #[command(flatten)]
    peer: PeerSettings,
}

/// What the displays show.
#[derive(Debug, Clone)]
enum Screen {
    /// Drawn and encoded live, one encoder per display.
    Live(Arc<Screens>),
    /// `--video FILE` on every display.
    Clip(Arc<Clip>),
    /// `--no-video`.
    Off,
}

impl Screen {
    fn from_cli(cli: &Cli, shape: &Shape) -> Result<Self> {
        if cli.no_video {
            return Ok(Self::Off);
        }
        if let Some(path) = &cli.video {
            let data = std::fs::read(path)
                .with_context(|| format!("cannot read --video {}", path.display()))?;
            let clip =
                Clip::from_ivf(&data).with_context(|| format!("--video {}", path.display()))?;
            for shown in &shape.displays {
                let resolution = format!("{}x{}", shown.width, shown.height);
                let video = format!("{}x{}", clip.width, clip.height);
                info!(stream_id = %shown.stream_id, resolution, video, "display (clip)");
            }
            return Ok(Self::Clip(Arc::new(clip)));
        }
        let screens = Screens::start(&cli.device_id, shape)?;
        for shown in &shape.displays {
            let resolution = format!("{}x{}", shown.width, shown.height);
            info!(stream_id = %shown.stream_id, resolution, libvpx = %vp8::libvpx_version(), "display (live VP8)");
        }
        Ok(Self::Live(Arc::new(screens)))
    }

    /// What the displays show, for a person.
    fn describe(&self) -> String {
        match self {
            Self::Live(_) => format!("live VP8 (libvpx {})", vp8::libvpx_version()),
            Self::Clip(clip) => format!("a looped VP8 clip of {}x{}", clip.width, clip.height),
            Self::Off => "no video".to_owned(),
        }
    }

    fn screens(&self) -> Option<Arc<Screens>> {
        match self {
            Self::Live(screens) => Some(screens.clone()),
            _ => None,
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    peer::init_logging("info");
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fake-device: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The `device_info` to register with, and the shape it gives the device.
/// One given that Cuttlefish's client cannot show is still used, with a
/// warning saying what it lacks.
fn device_info(cli: &Cli) -> Result<(Box<RawValue>, Shape)> {
    let text = match cli.device_info.as_deref() {
        None => {
            let displays = cli.displays.map_or(1, usize::from);
            shape::default_info(displays).to_string()
        }
        Some(arg) => match arg.strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --device-info file {path}"))?,
            None => arg.to_owned(),
        },
    };
    let raw =
        RawValue::from_string(text.trim().to_owned()).context("--device-info is not valid JSON")?;
    let value: serde_json::Value = serde_json::from_str(raw.get())?;
    let shape = shape::shape_of(&value).context("--device-info")?;
    let missing = shape::missing_for_cuttlefish(&value);
    if !missing.is_empty() {
        warn!(
            missing = %missing.join(", "),
            "this device_info lacks what Cuttlefish's web client reads; that client will show no device"
        );
    }
    Ok((raw, shape))
}

async fn run(cli: Cli) -> Result<()> {
    protocol::validate_device_id(&cli.device_id).context("--device-id")?;
    let (info, shape) = device_info(&cli)?;
    let screen = Screen::from_cli(&cli, &shape)?;
    let shape = Arc::new(shape);
    let device_port = match cli.device_port {
        Some(port) => Some(
            page::serve(
                port,
                page::Page {
                    device_id: cli.device_id.clone(),
                    device_info: info.get().to_owned(),
                    shape: shape.clone(),
                    video: screen.describe(),
                    screens: screen.screens(),
                },
            )
            .await?,
        ),
        None => None,
    };
    for stream_id in &shape.audio_streams {
        info!(%stream_id, "audio stream (silence)");
    }
    let mut backoff = cli.reconnect_min;
    let shutdown = support::shutdown::listen().recv();
    tokio::pin!(shutdown);
    // The session with the server, while it may be resumed: its clients'
    // peer connections stay up across a dropped connection.
    let mut held: Option<Registration> = None;
    loop {
        let session = serve(&cli, &info, device_port, &shape, &screen, &mut held);
        let outcome = tokio::select! {
            outcome = session => outcome,
            signal = &mut shutdown => {
                info!(%signal, "stopping");
                return Ok(());
            }
        };
        match outcome {
            Ok(Served::Held | Served::Registered) => backoff = cli.reconnect_min,
            Ok(Served::NotRegistered) => {}
            Err(e) if !e.retryable => bail!("{}", e.message),
            Err(e) => warn!("{}", e.message),
        }
        match &held {
            Some(registration) => warn!(
                retry_in = %humantime::format_duration(backoff),
                clients = registration.clients.len(),
                "server connection lost; resuming the session (its clients' peer connections stay up)"
            ),
            None => warn!(
                retry_in = %humantime::format_duration(backoff),
                "server connection lost; re-registering"
            ),
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = &mut shutdown => return Ok(()),
        }
        backoff = (backoff * 2).min(cli.reconnect_max);
    }
}

/// How a connection to the server ended without an error worth stopping for.
enum Served {
    /// It was registered for a while: the next attempt starts a fresh backoff.
    Registered,
    NotRegistered,
    /// It dropped, and the server holds the session for a resume.
    Held,
}

fn lost(error: impl std::fmt::Display) -> ConnectError {
    ConnectError {
        message: error.to_string(),
        retryable: true,
    }
}

/// The device's session with the server, across the connections it has:
/// its clients, each a task with its own peer connection; the ICE servers
/// the server handed out; what a resume needs.
struct Registration {
    clients: HashMap<u64, mpsc::UnboundedSender<Payload>>,
    ice_servers: Vec<IceServer>,
    books: Resumable,
    /// Frames from client tasks to the server, waiting while the
    /// connection is down.
    outgoing: mpsc::UnboundedSender<String>,
    to_send: mpsc::UnboundedReceiver<String>,
    /// When its connection dropped, while it is held.
    lost_at: Option<std::time::Instant>,
}

impl Registration {
    fn new(ice_servers: Vec<IceServer>, books: Resumable) -> Self {
        let (outgoing, to_send) = mpsc::unbounded_channel();
        Self {
            clients: HashMap::new(),
            ice_servers,
            books,
            outgoing,
            to_send,
            lost_at: None,
        }
    }

    /// Whether the server still holds it: its connection dropped less than
    /// the window ago.
    fn resumable(&self) -> bool {
        match (self.lost_at, self.books.window()) {
            (Some(lost_at), Some(window)) => lost_at.elapsed() < window,
            _ => false,
        }
    }
}

/// One connection to the server: register (or resume the held session),
/// then serve clients until it drops.
async fn serve(
    cli: &Cli,
    info: &RawValue,
    device_port: Option<u16>,
    shape: &Arc<Shape>,
    screen: &Screen,
    held: &mut Option<Registration>,
) -> Result<Served, ConnectError> {
    if held.as_ref().is_some_and(|held| !held.resumable()) {
        info!("the resume window passed: registering again, as a new session");
        // Dropping the clients' inboxes closes their peers.
        *held = None;
    }
    let mut link = DeviceLink::open(&cli.connect, cli.device_socket.as_deref()).await?;
    let mut registration = match held.take() {
        Some(mut registration) => {
            let Some(resume) = registration.books.resume_message() else {
                return Ok(Served::NotRegistered);
            };
            let answer = match link.send(resume).await {
                Ok(()) => resumed(&mut link, &mut registration).await,
                Err(e) => Err(lost(e)),
            };
            match answer {
                Ok(Some(())) => registration,
                // Refused: the session is over; its clients' peers close,
                // and the next connection registers afresh.
                Ok(None) => return Ok(Served::NotRegistered),
                // This connection failed too: the session is still held.
                Err(e) => {
                    *held = Some(registration);
                    return Err(e);
                }
            }
        }
        None => match register(cli, info, device_port, &mut link).await? {
            Some(registration) => registration,
            None => return Ok(Served::NotRegistered),
        },
    };

    let ended = loop {
        tokio::select! {
            text = link.next_text() => {
                let text = match text {
                    Ok(Some(text)) => text,
                    Ok(None) => break None,
                    Err(e) => break Some(e),
                };
                registration.books.received(&text);
                match ServerToDevice::decode(&text) {
                    Ok(ServerToDevice::ClientMsg(message)) => {
                        let payload = match Payload::from_raw(message.payload) {
                            Ok(payload) => payload,
                            Err(e) => {
                                debug!(client_id = message.client_id, error = %e, "ignoring a payload of another layer");
                                continue;
                            }
                        };
                        let outgoing = registration.outgoing.clone();
                        let ice_servers = registration.ice_servers.clone();
                        let inbox = registration.clients.entry(message.client_id).or_insert_with(|| {
                            spawn_client(message.client_id, outgoing, cli.peer.clone(), ice_servers, Media { shape: shape.clone(), screen: screen.clone() })
                        });
                        let _ = inbox.send(payload);
                    }
                    Ok(ServerToDevice::ClientDisconnected(gone)) => {
                        // Dropping its inbox ends the client's task, which
                        // closes its peer connection.
                        if registration.clients.remove(&gone.client_id).is_some() {
                            info!(client_id = gone.client_id, "client disconnected");
                        }
                    }
                    Ok(ServerToDevice::Config(config)) => registration.ice_servers = config.ice_servers,
                    Ok(ServerToDevice::Error(e)) => warn!(error = %e.error, "the server reports an error"),
                    Ok(ServerToDevice::Resumed(_)) => warn!("the server sent resumed to a connection that did not resume"),
                    Err(e) => warn!(error = %e, "undecodable message from the server"),
                }
            }
            Some(frame) = registration.to_send.recv() => {
                registration.books.sent(frame.clone());
                if let Err(e) = link.send(frame).await {
                    break Some(e);
                }
            }
        }
    };
    if let Some(e) = &ended {
        debug!(error = %format!("{e:#}"), "server connection ended");
    }
    if registration.books.window().is_some() && peer::resume::holds_session(ended.as_ref()) {
        registration.lost_at = Some(std::time::Instant::now());
        *held = Some(registration);
        return Ok(Served::Held);
    }
    if let Some(e) = ended {
        warn!(error = %format!("{e:#}"), "the server ended the session");
    }
    // Dropping the inboxes closes every peer.
    drop(registration);
    Ok(Served::Registered)
}

/// Registers afresh on `link`; the new session, or none if refused.
async fn register(
    cli: &Cli,
    info: &RawValue,
    device_port: Option<u16>,
    link: &mut DeviceLink,
) -> Result<Option<Registration>, ConnectError> {
    let register = DeviceToServer::Register(Register {
        device_id: cli.device_id.as_str().into(),
        device_info: Some(info),
        device_port,
    });
    link.send(register.encode()).await.map_err(lost)?;
    let Some(text) = link.next_text().await.map_err(lost)? else {
        return Ok(None);
    };
    let mut books = Resumable::new();
    books.received(&text);
    match ServerToDevice::decode(&text) {
        Ok(ServerToDevice::Config(config)) => {
            info!(device_id = %cli.device_id, resumable = books.window().is_some(), "registered");
            Ok(Some(Registration::new(config.ice_servers, books)))
        }
        Ok(ServerToDevice::Error(e)) => Err(lost(format!("registration refused: {}", e.error))),
        other => Err(lost(format!("expected config, got {other:?}"))),
    }
}

/// Reads the answer to a `resume`: `Some` once the session is back (the
/// frames the server lacked sent again), `None` if the server refused it.
async fn resumed(
    link: &mut DeviceLink,
    registration: &mut Registration,
) -> Result<Option<()>, ConnectError> {
    let Some(text) = link.next_text().await.map_err(lost)? else {
        return Err(lost(
            "the server closed the connection before answering the resume",
        ));
    };
    match ServerToDevice::decode(&text) {
        Ok(ServerToDevice::Resumed(resumed)) => {
            let again = match registration.books.resumed(&resumed) {
                Ok(again) => again,
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "the resumed session cannot go on; registering again");
                    return Ok(None);
                }
            };
            let away = registration.lost_at.map(|at| at.elapsed());
            info!(
                away_ms = away.map(|away| away.as_millis() as u64),
                sent_again = again.len(),
                clients = registration.clients.len(),
                "session resumed: its clients and their peer connections kept"
            );
            registration.lost_at = None;
            for frame in again {
                link.send(frame).await.map_err(lost)?;
            }
            Ok(Some(()))
        }
        Ok(ServerToDevice::Error(e)) if peer::resume::is_refusal(&e.error) => {
            warn!(reason = %e.error, "the server no longer holds the session; registering again");
            Ok(None)
        }
        Ok(ServerToDevice::Error(e)) => Err(lost(format!("resume failed: {}", e.error))),
        other => Err(lost(format!("expected resumed, got {other:?}"))),
    }
}

/// What every client's peer sends: a track per display (unless
/// `--no-video`) and per audio stream.
#[derive(Debug, Clone)]
struct Media {
    shape: Arc<Shape>,
    screen: Screen,
}

fn spawn_client(
    client_id: u64,
    outgoing: mpsc::UnboundedSender<String>,
    settings: PeerSettings,
    ice_servers: Vec<IceServer>,
    media: Media,
) -> mpsc::UnboundedSender<Payload> {
    let (inbox, payloads) = mpsc::unbounded_channel();
    info!(client_id, "new client");
    let task = async move {
        if let Err(e) = serve_client(
            client_id,
            payloads,
            &outgoing,
            &settings,
            ice_servers,
            media,
        )
        .await
        {
            warn!(error = %format!("{e:#}"), "client session failed");
            send(
                &outgoing,
                client_id,
                &Payload::Error {
                    error: format!("{e:#}"),
                },
            );
        }
    };
    tokio::spawn(task.instrument(info_span!("client", client_id)));
    inbox
}

/// Sends `payload` to client `client_id`.
fn send(outgoing: &mpsc::UnboundedSender<String>, client_id: u64, payload: &Payload) {
    let raw = payload.to_raw();
    let forward = DeviceToServer::Forward(DeviceForward {
        client_id,
        payload: &raw,
    });
    let _ = outgoing.send(forward.encode());
}

/// One client's peer, for as long as the client stays.
async fn serve_client(
    client_id: u64,
    mut payloads: mpsc::UnboundedReceiver<Payload>,
    outgoing: &mpsc::UnboundedSender<String>,
    settings: &PeerSettings,
    default_ice_servers: Vec<IceServer>,
    media: Media,
) -> Result<()> {
    let mut negotiation = Negotiation::new(Side::Device);
    // The current peer's tracks, until it connects; then their players,
    // which stop when dropped (a new peer, or the client left).
    let mut tracks: Vec<Track> = Vec::new();
    let mut players: Vec<Player> = Vec::new();
    let inputs = Arc::new(Inputs::new(media.screen.screens()));
    // The ICE servers the current peer was built with.
    let mut peer_servers: Vec<IceServer> = Vec::new();
    loop {
        tokio::select! {
            payload = payloads.recv() => {
                let Some(payload) = payload else { break };
                match negotiation.receive(payload).await? {
                    Received::OfferRequested(ice_servers) => {
                        players.clear();
                        let servers = if ice_servers.is_empty() { &default_ice_servers } else { &ice_servers };
                        peer_servers.clone_from(servers);
                        let (pc, events) = build_peer(settings, servers).await?;
                        for label in [channels::CONTROL, channels::ECHO, channels::INPUT_REPORTS] {
                            let channel = pc.create_data_channel(label, None).await?;
                            if label == channels::ECHO {
                                tokio::spawn(nudge_until_open(channel.clone(), NUDGE_LIMIT));
                            }
                            tokio::spawn(channels::serve(channel, inputs.clone()).in_current_span());
                        }
                        tracks = add_tracks(&pc, &media).await?;
                        negotiation.set_peer(pc, events).await;
                        send(outgoing, client_id, &negotiation.offer().await?);
                        info!("offer sent");
                    }
                    Received::Reply(answer) => {
                        send(outgoing, client_id, &answer);
                        info!("answered the client's offer");
                    }
                    Received::AnswerApplied => info!("answer applied"),
                    Received::CandidateTaken => {}
                    Received::RemoteError(error) => warn!(%error, "the client reports an error"),
                    // The client offers first: a peer for its offer.
                    Received::NoPeer(offer @ Payload::Offer { .. }) => {
                        peer_servers.clone_from(&default_ice_servers);
                        let (pc, events) = build_peer(settings, &default_ice_servers).await?;
                        negotiation.set_peer(pc, events).await;
                        if let Received::Reply(answer) = negotiation.receive(offer).await? {
                            send(outgoing, client_id, &answer);
                            info!("answered the client's offer");
                        }
                    }
                    // Before any peer exists there is nothing to hold it for.
                    Received::NoPeer(other) => debug!(?other, "no peer yet; ignored"),
                }
            }
            Some(event) = negotiation.next_event() => match event {
                Event::Send(candidate) => send(outgoing, client_id, &candidate),
                Event::Peer(PeerEvent::ConnectionState(state)) => {
                    info!(%state, "peer connection state");
                    if state == RTCPeerConnectionState::Connected {
                        if let Some(pc) = negotiation.peer()
                            && let Some(pair) = selected_pair(pc).await
                        {
                            info!(%pair, "candidate pair");
                        }
                        players.extend(tracks.drain(..).map(|track| Player::start(track, &media)));
                    }
                }
                Event::Peer(PeerEvent::IceConnectionState(state)) => debug!(%state, "ICE connection state"),
                Event::Peer(PeerEvent::DataChannel(channel)) => {
                    tokio::spawn(channels::serve(channel, inputs.clone()).in_current_span());
                }
                // A device shows its screen; it does not watch the client's.
                Event::Peer(PeerEvent::Track(_)) => debug!("the client sends media; ignored"),
                Event::Peer(PeerEvent::GatheringComplete) => {
                    // A device that must relay and cannot says why, to
                    // its log and to the client.
                    if settings.relay_only && negotiation.relayed_candidates() == 0 {
                        bail!("{}", why_no_relay(&peer_servers).await);
                    }
                }
                // The negotiation hands our candidates out as `Event::Send`.
                Event::Peer(PeerEvent::LocalCandidate(_)) => {}
            },
        }
    }
    drop(players);
    negotiation.close().await;
    info!(inputs = inputs.count(), "client gone");
    Ok(())
}

/// A track added to a peer, waiting for it to connect.
enum Track {
    /// The track of the display at this place in the shape.
    Display(video::LocalTrack, usize),
    Audio(video::LocalTrack),
}

/// A track per display (unless `--no-video`) and per audio stream, each
/// under its stream id.
async fn add_tracks(
    pc: &impl webrtc::peer_connection::PeerConnection,
    media: &Media,
) -> Result<Vec<Track>> {
    let mut tracks = Vec::new();
    if !matches!(media.screen, Screen::Off) {
        for (index, display) in media.shape.displays.iter().enumerate() {
            tracks.push(Track::Display(
                video::add_track(pc, &display.stream_id).await?,
                index,
            ));
        }
    }
    for stream_id in &media.shape.audio_streams {
        tracks.push(Track::Audio(audio::add_track(pc, stream_id).await?));
    }
    Ok(tracks)
}

/// A track's send loop; dropping it stops the loop.
struct Player(tokio::task::JoinHandle<()>);

impl Player {
    fn start(track: Track, media: &Media) -> Self {
        let screen = media.screen.clone();
        let shape = media.shape.clone();
        let task = async move {
            let played = match (track, screen) {
                (Track::Display(track, index), Screen::Live(screens)) => {
                    let stream_id = &shape.displays[index].stream_id;
                    match screens.display(stream_id) {
                        Some(display) => {
                            info!(%stream_id, "live video playing");
                            live::play(track, display.clone()).await
                        }
                        None => Ok(()),
                    }
                }
                (Track::Display(track, _), Screen::Clip(clip)) => {
                    info!("video clip playing");
                    video::play(track, clip).await
                }
                (Track::Display(..), Screen::Off) => Ok(()),
                (Track::Audio(track), _) => audio::play_silence(track).await,
            };
            if let Err(e) = played {
                // The peer closed under it: the usual way a player ends.
                debug!(error = %format!("{e:#}"), "track stopped");
            }
        };
        Self(tokio::spawn(task.in_current_span()))
    }
}

impl Drop for Player {
    fn drop(&mut self) {
        self.0.abort();
    }
}
