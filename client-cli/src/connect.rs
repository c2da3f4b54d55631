//! `client-cli connect`: a full WebRTC handshake with a device through the
//! server, reported as a timeline of its phases. When its connection to
//! the server drops and the server holds the session, it reconnects and
//! resumes on its own (the peer connection stays up), and the timeline
//! says so; when the server no longer holds the session (the resume is
//! refused, or the window passed), it starts a new one: a new connection
//! and a new peer, the phases over again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use futures_util::SinkExt;
use peer::negotiation::{Event, Negotiation, Received, Side};
use peer::resume::Resumable;
use peer::rtc_peer::{
    FrameCount, PeerEvent, PeerSettings, SelectedPair, build_peer, count_frames, selected_pair,
};
use peer::signaling::{ConnectOptions, Socket};
use peer::turn_check::why_no_relay;
use protocol::payload::{Payload, Phase};
use protocol::{ClientForward, ClientToServer, Connect, RawValue, ServerToClient};
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{RTCIceConnectionState, RTCPeerConnectionState};

#[derive(Debug, clap::Args)]
pub struct ConnectArgs {
    /// The device to connect to.
    device_id: String,

    /// How many messages to send on the data channel, each checked for its
    /// echo.
    #[arg(long, default_value_t = 3)]
    messages: u32,

    /// Print one JSON object with the timeline instead of the human view.
    #[arg(long)]
    json: bool,

    /// After the echoes, how long to count the frames of the device's video
    /// track (0: do not wait).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    video_wait: Duration,

    /// Ask the device for a keyframe (a PLI) after the tenth video frame,
    /// and report how long the keyframe took to come.
    #[arg(long)]
    request_keyframe: bool,

    /// After the echoes, open Cuttlefish's `input-channel` and touch the
    /// middle of the first display (down, then up, in Cuttlefish's format
    /// and the display's coordinates); the device must report both on its
    /// `fake-device-input` channel.
    #[arg(long)]
    input: bool,

    /// After everything else, keep the session this long, sending one
    /// echo a second and counting the device's video frames: to watch a
    /// session ride out a dropped signaling connection (each resume is in
    /// the timeline; a new session holds again). Counts against --timeout.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    hold: Duration,

    /// Give up after this long, saying which phase was not reached.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    timeout: Duration,

    /// Which client API to connect through: the seed's /connect_client, or
    /// the Go operator's /devices/{id}/connect (ICE servers from
    /// /infra_config, bare payload frames).
    #[arg(long, value_enum, default_value_t = ClientApi::Seed)]
    api: ClientApi,

    /// Use these ICE servers (the JSON of a `config`'s `ice_servers`)
    /// instead of the ones the server hands out, for this peer and in the
    /// request-offer to the device: to try a TURN server with credentials
    /// of one's own.
    #[arg(long, value_name = "JSON", value_parser = parse_ice_servers)]
    ice_servers: Option<IceServers>,

    #[command(flatten)]
    peer: PeerSettings,
}

/// The ICE servers of `--ice-servers`.
#[derive(Debug, Clone)]
struct IceServers(Vec<protocol::IceServer>);

fn parse_ice_servers(json: &str) -> Result<IceServers, String> {
    serde_json::from_str(json).map(IceServers).map_err(|e| {
        format!(r#"not a list of ICE servers ({e}); e.g. [{{"urls":["turn:host:3478"],"username":"u","credential":"c"}}]"#)
    })
}

/// The client APIs a server may offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientApi {
    /// `/connect_client`: `connect`, then `config` and `device_info`;
    /// payloads inside `forward`.
    Seed,
    /// `/devices/{id}/connect`: `{"device_info"}` first; bare payloads.
    Go,
}

/// What happened when, printed as it happens (or collected for --json).
struct Timeline {
    started: Instant,
    json: bool,
    reached: Vec<(Phase, f64)>,
    notes: serde_json::Map<String, serde_json::Value>,
    /// Each resume of the signaling connection: when, and how long it was
    /// away.
    resumes: Vec<serde_json::Value>,
    /// Each new session started because the server no longer held the
    /// last one: when, and why.
    new_sessions: Vec<serde_json::Value>,
}

impl Timeline {
    fn mark(&mut self, phase: Phase, detail: &str) {
        let ms = self.started.elapsed().as_secs_f64() * 1e3;
        if self.reached.iter().any(|(p, _)| *p == phase) {
            return;
        }
        self.reached.push((phase, ms));
        if !self.json {
            let phase = phase.name();
            if detail.is_empty() {
                println!("{ms:>9.1} ms  {phase}");
            } else {
                println!("{ms:>9.1} ms  {phase}  {detail}");
            }
        }
    }

    fn missing(&self) -> Vec<&'static str> {
        Phase::REQUIRED
            .into_iter()
            .filter(|p| !self.reached.iter().any(|(r, _)| r == p))
            .map(Phase::name)
            .collect()
    }

    /// Milliseconds since the start.
    fn now_ms(&self) -> f64 {
        self.started.elapsed().as_secs_f64() * 1e3
    }

    /// Prints a line of the human view.
    fn say(&self, what: &str) {
        if !self.json {
            println!("{:>9.1} ms  {what}", self.now_ms());
        }
    }

    fn report(&self, ok: bool, error: Option<&str>, rtts: &[f64]) {
        if !self.json {
            return;
        }
        let phases: serde_json::Map<String, serde_json::Value> = self
            .reached
            .iter()
            .map(|(phase, ms)| (phase.key().to_owned(), json!(round(*ms))))
            .collect();
        let mut out = json!({
            "ok": ok,
            "phases_ms": phases,
            "echo_rtt_ms": rtts.iter().map(|r| round(*r)).collect::<Vec<_>>(),
        });
        if let Some(error) = error {
            out["error"] = json!(error);
        }
        out["resumes"] = json!(self.resumes);
        out["new_sessions"] = json!(self.new_sessions);
        for (key, value) in &self.notes {
            out[key] = value.clone();
        }
        println!("{out}");
    }
}

fn round(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

pub async fn run(options: &ConnectOptions, args: ConnectArgs) -> Result<()> {
    let mut timeline = Timeline {
        started: Instant::now(),
        json: args.json,
        reached: Vec::new(),
        notes: serde_json::Map::new(),
        resumes: Vec::new(),
        new_sessions: Vec::new(),
    };
    let mut rtts = Vec::new();
    let outcome = tokio::time::timeout(
        args.timeout,
        sessions(options, &args, &mut timeline, &mut rtts),
    )
    .await;
    let result = match outcome {
        Ok(result) => result,
        Err(_) => Err(anyhow!(
            "timed out after {} waiting for: {}",
            humantime::format_duration(args.timeout),
            timeline.missing().first().copied().unwrap_or("the echoes")
        )),
    };
    match &result {
        Ok(()) => timeline.report(true, None, &rtts),
        Err(e) => timeline.report(false, Some(&format!("{e:#}")), &rtts),
    }
    result
}

/// How many new sessions `connect` starts, one after another, when the
/// server no longer holds the last one, before it gives up.
const MAX_NEW_SESSIONS: usize = 3;

/// The handshake, and a new one (a new connection, a new peer) each time
/// the session is gone from the server: its resume refused (the server
/// restarted, or the session ended while its connection was away) or the
/// window passed. Each new session goes into the timeline, whose phases
/// then start over.
async fn sessions(
    options: &ConnectOptions,
    args: &ConnectArgs,
    timeline: &mut Timeline,
    rtts: &mut Vec<f64>,
) -> Result<()> {
    loop {
        let Err(e) = handshake(options, args, timeline, rtts).await else {
            return Ok(());
        };
        let Some(gone) = e.downcast_ref::<SessionGone>() else {
            return Err(e);
        };
        if timeline.new_sessions.len() >= MAX_NEW_SESSIONS {
            return Err(e.context(format!("after {MAX_NEW_SESSIONS} new sessions")));
        }
        timeline.say(&format!("{gone}; starting a new session"));
        timeline.new_sessions.push(json!({
            "at_ms": round(timeline.now_ms()),
            "why": gone.to_string(),
        }));
        timeline.reached.clear();
        rtts.clear();
    }
}

/// The server no longer holds the session: its resume was refused, or the
/// connection did not come back within the window. Another session may
/// start; nothing of this one can be saved.
#[derive(Debug)]
struct SessionGone(String);

impl std::fmt::Display for SessionGone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SessionGone {}

/// The connection to the server, which comes back on its own: when it
/// drops and the server holds the session, it reconnects with backoff
/// (100 ms, doubling to 2 s, within the window) and resumes, sending again
/// what the server did not get; each resume goes into the timeline.
struct Signaling<'a> {
    options: &'a ConnectOptions,
    api: ClientApi,
    device_id: &'a str,
    socket: Option<Socket>,
    books: Resumable,
    /// When the connection dropped, while it is down.
    lost_at: Option<Instant>,
    /// The socket's first frame must be `resumed`.
    resuming: bool,
}

/// Waits before the first reconnection, then doubles to the last.
const RECONNECT_FIRST: Duration = Duration::from_millis(100);
const RECONNECT_LAST: Duration = Duration::from_secs(2);

impl<'a> Signaling<'a> {
    /// The first connection: the seed's `/connect_client` with `connect`,
    /// or the Go operator's `/devices/{id}/connect`.
    async fn open(
        options: &'a ConnectOptions,
        api: ClientApi,
        device_id: &'a str,
        timeline: &mut Timeline,
    ) -> Result<Self> {
        let path = match api {
            ClientApi::Seed => protocol::CONNECT_CLIENT_PATH.to_owned(),
            ClientApi::Go => format!("/devices/{device_id}/connect"),
        };
        let socket = options.connect(&path).await?;
        timeline.mark(Phase::WebsocketOpen, &options.endpoint_url(&path)?);
        let mut signaling = Self {
            options,
            api,
            device_id,
            socket: Some(socket),
            books: Resumable::new(),
            lost_at: None,
            resuming: false,
        };
        if api == ClientApi::Seed {
            let connect = ClientToServer::Connect(Connect {
                device_id: device_id.into(),
            });
            signaling.send(connect.encode()).await;
        }
        Ok(signaling)
    }

    /// Sends a frame; kept, so that if the connection is down (or drops
    /// before the server has it), it goes again after the resume.
    async fn send(&mut self, text: String) {
        self.books.sent(text.clone());
        if let Some(socket) = &mut self.socket
            && let Err(e) = socket.send(Message::text(text)).await
        {
            self.lost(&anyhow::Error::from(e));
        }
    }

    /// Sends a payload to the device the way the API carries it.
    async fn forward(&mut self, payload: &Payload) {
        let text = match self.api {
            ClientApi::Seed => {
                let raw = payload.to_raw();
                ClientToServer::Forward(ClientForward { payload: &raw }).encode()
            }
            ClientApi::Go => payload.to_json(),
        };
        self.send(text).await;
    }

    fn lost(&mut self, why: &anyhow::Error) {
        if self.socket.take().is_some() {
            tracing::debug!(error = %format!("{why:#}"), "signaling connection lost");
            self.lost_at = Some(Instant::now());
        }
    }

    /// The next frame of the session, resuming first if the connection is
    /// down; an error when the session is over.
    async fn next_text(&mut self, timeline: &mut Timeline) -> Result<String> {
        loop {
            let Some(socket) = &mut self.socket else {
                self.reconnect(timeline).await?;
                continue;
            };
            let ended = match peer::signaling::next_text(socket).await {
                Ok(Some(text)) if self.resuming => {
                    self.take_back(&text, timeline).await?;
                    continue;
                }
                Ok(Some(text)) => {
                    self.books.received(&text);
                    return Ok(text);
                }
                Ok(None) => None,
                Err(e) => Some(e),
            };
            let held = self.books.window().is_some() && peer::resume::holds_session(ended.as_ref());
            match ended {
                _ if held => {
                    let why = ended.unwrap_or_else(|| anyhow!("the server ended the stream"));
                    timeline.say(&format!("signaling connection lost ({why:#}); resuming"));
                    self.lost(&why);
                }
                Some(e) => return Err(e),
                None => bail!("the server closed the connection"),
            }
        }
    }

    /// Connects again and asks for the session back, with backoff, until
    /// the server's window is over.
    async fn reconnect(&mut self, timeline: &mut Timeline) -> Result<()> {
        let window = self.books.window().unwrap_or_default();
        let lost_at = *self.lost_at.get_or_insert_with(Instant::now);
        let mut wait = RECONNECT_FIRST;
        loop {
            if lost_at.elapsed() >= window {
                return Err(SessionGone(format!(
                    "the signaling connection dropped and did not come back within the server's resume window ({})",
                    humantime::format_duration(window)
                ))
                .into());
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(RECONNECT_LAST);
            let attempt = match self.api {
                ClientApi::Seed => {
                    let resume = self.books.resume_message().context("no resume token")?;
                    match self.options.connect(protocol::CONNECT_CLIENT_PATH).await {
                        Ok(mut socket) => socket
                            .send(Message::text(resume))
                            .await
                            .map(|()| socket)
                            .map_err(anyhow::Error::from),
                        Err(e) => Err(e.into()),
                    }
                }
                ClientApi::Go => {
                    let query = self.books.resume_query().context("no resume token")?;
                    let path = format!("/devices/{}/connect?{query}", self.device_id);
                    self.options
                        .connect(&path)
                        .await
                        .map_err(anyhow::Error::from)
                }
            };
            match attempt {
                Ok(socket) => {
                    self.socket = Some(socket);
                    self.resuming = true;
                    return Ok(());
                }
                // A refused resume (its token past use) is final.
                Err(e) if format!("{e:#}").contains("Resume refused") => {
                    return Err(SessionGone(format!("the server refused the resume: {e:#}")).into());
                }
                Err(e) => timeline.say(&format!("reconnecting: {e:#}")),
            }
        }
    }

    /// The first frame of a resumed connection: `resumed`, or the refusal.
    async fn take_back(&mut self, text: &str, timeline: &mut Timeline) -> Result<()> {
        self.resuming = false;
        let resumed = match ServerToClient::decode(text) {
            Ok(ServerToClient::Resumed(resumed)) => resumed,
            Ok(ServerToClient::Error(e)) => {
                return Err(
                    SessionGone(format!("the server refused the resume: {}", e.error)).into(),
                );
            }
            _ => bail!("expected resumed, got {text}"),
        };
        let again = self.books.resumed(&resumed)?;
        let away_ms = self
            .lost_at
            .take()
            .map_or(0.0, |at| at.elapsed().as_secs_f64() * 1e3);
        timeline.say(&format!(
            "resumed after {away_ms:.1} ms away; {} frame(s) sent again",
            again.len()
        ));
        timeline.resumes.push(json!({
            "at_ms": round(timeline.now_ms()),
            "away_ms": round(away_ms),
            "sent_again": again.len(),
        }));
        if let Some(socket) = &mut self.socket {
            for frame in again {
                socket.send(Message::text(frame)).await?;
            }
        }
        Ok(())
    }

    /// The next message from the server; its error frames become errors.
    async fn next(&mut self, timeline: &mut Timeline) -> Result<ServerMessage> {
        let text = self.next_text(timeline).await?;
        // The Go operator's first frame: {"device_info": …}, with no
        // message_type (a resume offer may ride beside it).
        if let Ok(serde_json::Value::Object(fields)) =
            serde_json::from_str::<serde_json::Value>(&text)
            && !fields.contains_key("message_type")
            && let Some(info) = fields.get("device_info")
        {
            return Ok(ServerMessage::DeviceInfo(info.to_string()));
        }
        let message = ServerToClient::decode(&text)
            .map_err(|e| anyhow!("undecodable message from the server ({e}): {text}"))?;
        Ok(match message {
            ServerToClient::Config(config) => ServerMessage::Config(config.ice_servers),
            ServerToClient::DeviceInfo(info) => {
                ServerMessage::DeviceInfo(info.device_info.get().to_owned())
            }
            ServerToClient::DeviceMsg(msg) => ServerMessage::Payload(msg.payload.to_owned()),
            ServerToClient::Error(e) => bail!("the server says: {}", e.error),
            ServerToClient::Resumed(_) => {
                bail!("the server sent resumed to a connection that did not resume")
            }
        })
    }

    /// Ends the session: a clean close, so that the server does not hold it.
    async fn close(&mut self) {
        if let Some(mut socket) = self.socket.take() {
            let _ = socket.close(None).await;
        }
    }
}

enum ServerMessage {
    Config(Vec<protocol::IceServer>),
    DeviceInfo(String),
    Payload(Box<RawValue>),
}

async fn handshake(
    options: &ConnectOptions,
    args: &ConnectArgs,
    timeline: &mut Timeline,
    rtts: &mut Vec<f64>,
) -> Result<()> {
    let (mut socket, ice_servers) = match args.api {
        ClientApi::Seed => {
            let mut socket = Signaling::open(options, args.api, &args.device_id, timeline).await?;
            let ServerMessage::Config(ice_servers) = socket.next(timeline).await? else {
                bail!("the server did not send config first");
            };
            (socket, ice_servers)
        }
        ClientApi::Go => {
            // These clients read the ICE servers from /infra_config.
            let (status, body) = options.http_get("/infra_config").await?;
            ensure!(status == 200, "GET /infra_config answered {status}: {body}");
            let Ok(ServerToClient::Config(config)) = ServerToClient::decode(&body) else {
                bail!("GET /infra_config is not a config message: {body}");
            };
            let socket = Signaling::open(options, args.api, &args.device_id, timeline).await?;
            (socket, config.ice_servers)
        }
    };
    timeline.mark(
        Phase::Config,
        &format!("{} ICE server(s)", ice_servers.len()),
    );
    let ice_servers = args
        .ice_servers
        .clone()
        .map_or(ice_servers, |IceServers(servers)| servers);
    let ServerMessage::DeviceInfo(info) = socket.next(timeline).await? else {
        bail!("the server did not send device_info after config");
    };
    timeline.mark(
        Phase::DeviceInfo,
        &info.chars().take(100).collect::<String>(),
    );
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(&info) {
        timeline.notes.insert("device_info".into(), value);
    }

    let (pc, events) = build_peer(&args.peer, &ice_servers).await?;
    let mut negotiation = Negotiation::with_peer(Side::Client, pc, events);
    let result = session(
        &mut socket,
        &mut negotiation,
        &ice_servers,
        &info,
        args,
        timeline,
        rtts,
    )
    .await;
    // Whatever the outcome: a clean close, so that the server ends the
    // session at once rather than holding it for a resume.
    negotiation.close().await;
    socket.close().await;
    result
}

/// The session once both sides are known: the offer asked for, answered,
/// the data channel's echoes, the video, the input, the hold.
async fn session(
    socket: &mut Signaling<'_>,
    negotiation: &mut Negotiation<impl webrtc::peer_connection::PeerConnection>,
    ice_servers: &[protocol::IceServer],
    info: &str,
    args: &ConnectArgs,
    timeline: &mut Timeline,
    rtts: &mut Vec<f64>,
) -> Result<()> {
    socket
        .forward(&Payload::RequestOffer {
            ice_servers: ice_servers.to_vec(),
        })
        .await;

    // The device's echo channel (or, from another device, the first it
    // opens), its input reports, every label it opened, and its media.
    let mut channel: Option<Arc<dyn DataChannel>> = None;
    let mut reports: Option<Arc<dyn DataChannel>> = None;
    let mut device_channels: Vec<String> = Vec::new();
    let mut streams: Vec<Stream> = Vec::new();
    let mut channel_open = false;
    let mut video = None;
    while !channel_open {
        tokio::select! {
            message = socket.next(timeline) => {
                let ServerMessage::Payload(raw) = message? else { continue };
                // Payloads of other layers share the channel.
                let Ok(payload) = Payload::from_raw(&raw) else { continue };
                if let Payload::Offer { sdp } = &payload {
                    timeline.mark(Phase::OfferReceived, &format!("{} bytes of SDP", sdp.len()));
                }
                match negotiation.receive(payload).await? {
                    Received::Reply(answer) => {
                        socket.forward(&answer).await;
                        timeline.mark(Phase::AnswerSent, "");
                    }
                    Received::RemoteError(error) => bail!("the device says: {error}"),
                    // A device does not ask a client for offers.
                    Received::OfferRequested(_) => {}
                    Received::AnswerApplied | Received::CandidateTaken | Received::NoPeer(_) => {}
                }
            }
            event = negotiation.next_event() => match event.context("the peer connection stopped reporting")? {
                Event::Send(candidate) => socket.forward(&candidate).await,
                Event::Peer(PeerEvent::IceConnectionState(RTCIceConnectionState::Connected)) => {
                    timeline.mark(Phase::IceConnected, "");
                }
                Event::Peer(PeerEvent::IceConnectionState(RTCIceConnectionState::Failed)) => {
                    if args.peer.relay_only {
                        bail!("ICE failed: no candidate pair works; {}", why_no_relay(ice_servers).await);
                    }
                    bail!("ICE failed: no candidate pair works");
                }
                Event::Peer(PeerEvent::GatheringComplete) => {
                    if args.peer.relay_only && negotiation.relayed_candidates() == 0 {
                        bail!("{}", why_no_relay(ice_servers).await);
                    }
                }
                Event::Peer(PeerEvent::ConnectionState(RTCPeerConnectionState::Connected)) => {
                    timeline.mark(Phase::DtlsConnected, "");
                }
                Event::Peer(PeerEvent::ConnectionState(RTCPeerConnectionState::Failed)) => {
                    bail!("the peer connection failed");
                }
                Event::Peer(PeerEvent::DataChannel(dc)) => {
                    let label = dc.label().await.unwrap_or_default();
                    match label.as_str() {
                        ECHO => channel = Some(dc),
                        INPUT_REPORTS => reports = Some(dc),
                        _ => {}
                    }
                    device_channels.push(label);
                }
                Event::Peer(PeerEvent::Track(track)) => {
                    take_track(track, &mut streams, &mut video, args, timeline).await;
                }
                Event::Peer(_) => {}
            },
            event = channel_event(&channel) => match event {
                Some(DataChannelEvent::OnOpen) => {
                    let label = match &channel {
                        Some(dc) => dc.label().await.unwrap_or_default(),
                        None => String::new(),
                    };
                    timeline.mark(Phase::DataChannelOpen, &format!("label {label:?}"));
                    channel_open = true;
                }
                Some(DataChannelEvent::OnClose) | None => bail!("the data channel closed before opening"),
                _ => {}
            },
        }
    }
    let channel = channel.context("no data channel")?;
    timeline
        .notes
        .insert("device_channels".into(), json!(device_channels));
    let pair = match negotiation.peer() {
        Some(pc) => selected_pair(pc).await,
        None => None,
    };
    report_pair(pair.as_ref(), args.peer.relay_only, timeline)?;

    for n in 0..args.messages {
        let text = format!("echo {n} from client-cli {}", std::process::id());
        let sent = Instant::now();
        channel.send_text(&text).await?;
        loop {
            match channel.poll().await {
                Some(DataChannelEvent::OnMessage(message)) => {
                    let echoed = String::from_utf8_lossy(&message.data);
                    if echoed != text {
                        bail!("echo {n} came back different: sent {text:?}, got {echoed:?}");
                    }
                    let rtt = sent.elapsed().as_secs_f64() * 1e3;
                    rtts.push(rtt);
                    if !timeline.json {
                        println!(
                            "{:>9.1} ms  echo {n} round trip {rtt:.2} ms",
                            timeline.started.elapsed().as_secs_f64() * 1e3
                        );
                    }
                    break;
                }
                Some(DataChannelEvent::OnClose) | None => {
                    bail!("the data channel closed waiting for echo {n}")
                }
                _ => {}
            }
        }
    }
    // The device's screen: count its frames for a while. The track may
    // still be announced meanwhile.
    let video_until = tokio::time::Instant::now() + args.video_wait;
    while tokio::time::Instant::now() < video_until {
        tokio::select! {
            () = tokio::time::sleep_until(video_until) => {}
            Some(event) = negotiation.next_event() => match event {
                Event::Peer(PeerEvent::Track(track)) => {
                    take_track(track, &mut streams, &mut video, args, timeline).await;
                }
                Event::Peer(PeerEvent::DataChannel(dc)) => {
                    let label = dc.label().await.unwrap_or_default();
                    if label == INPUT_REPORTS {
                        reports = Some(dc);
                    }
                    device_channels.push(label);
                }
                _ => {}
            },
        }
    }
    timeline
        .notes
        .insert("device_channels".into(), json!(device_channels));
    let stream_list: Vec<_> = streams
        .iter()
        .map(|stream| {
            let mut entry = json!({"stream_id": stream.id, "kind": stream.kind});
            if let Some(frames) = &stream.frames {
                entry["frames"] = json!(frames.frames.load(std::sync::atomic::Ordering::Relaxed));
            }
            entry
        })
        .collect();
    if !timeline.json && !streams.is_empty() {
        let listed: Vec<String> = stream_list
            .iter()
            .map(|s| match s.get("frames") {
                Some(frames) => format!(
                    "{} (video, {frames} frames)",
                    s["stream_id"].as_str().unwrap_or("")
                ),
                None => format!(
                    "{} ({})",
                    s["stream_id"].as_str().unwrap_or(""),
                    s["kind"].as_str().unwrap_or("")
                ),
            })
            .collect();
        println!("             streams: {}", listed.join(", "));
    }
    timeline.notes.insert("streams".into(), json!(stream_list));
    if args.input {
        let pc = negotiation.peer().context("no peer connection")?;
        let seen = touch(pc, reports.as_ref(), info, timeline).await?;
        timeline.notes.insert("input_reports".into(), json!(seen));
    }
    if !args.hold.is_zero() {
        hold(socket, &channel, video.as_deref(), args.hold, timeline).await?;
    }
    if let Some(video) = &video {
        let frames = video.frames.load(std::sync::atomic::Ordering::Relaxed);
        let first = *video.first.lock().unwrap_or_else(|p| p.into_inner());
        let first_ms = first.map(|t| round((t - timeline.started).as_secs_f64() * 1e3));
        timeline.notes.insert("video_frames".into(), json!(frames));
        let keyframes = video.keyframes.load(std::sync::atomic::Ordering::Relaxed);
        timeline
            .notes
            .insert("video_keyframes".into(), json!(keyframes));
        let answered = *video
            .keyframe_after_request
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let answered_ms = answered.map(|(d, _)| round(d.as_secs_f64() * 1e3));
        if args.request_keyframe {
            timeline
                .notes
                .insert("keyframe_after_request_ms".into(), json!(answered_ms));
            timeline.notes.insert(
                "keyframe_after_request_frames".into(),
                json!(answered.map(|(_, frames)| frames)),
            );
        }
        timeline
            .notes
            .insert("first_video_frame_ms".into(), json!(first_ms));
        if !timeline.json {
            println!(
                "{:>9.1} ms  video: {frames} frames ({keyframes} keyframes), the first at {} ms",
                timeline.started.elapsed().as_secs_f64() * 1e3,
                first_ms.map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1}"))
            );
            if args.request_keyframe {
                println!(
                    "             keyframe requested after frame 10: {}",
                    answered.map_or_else(
                        || "never came".to_owned(),
                        |(d, frames)| format!(
                            "frame {frames} after it was a keyframe, {:.1} ms later",
                            d.as_secs_f64() * 1e3
                        )
                    )
                );
            }
        }
    }
    Ok(())
}

/// Keeps the session for `duration`: an echo a second on the data channel
/// (each one checked), the server's connection read (so that a drop is
/// found and resumed at once), the device's video counted.
async fn hold(
    signaling: &mut Signaling<'_>,
    channel: &Arc<dyn DataChannel>,
    video: Option<&FrameCount>,
    duration: Duration,
    timeline: &mut Timeline,
) -> Result<()> {
    let mut rtts = Vec::new();
    let frames = || {
        video.map_or(0, |video| {
            video.frames.load(std::sync::atomic::Ordering::Relaxed)
        })
    };
    let frames_before = frames();
    let until = tokio::time::Instant::now() + duration;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut sent = 0u32;
    let mut echoed = 0u32;
    let mut pending: Option<(String, Instant)> = None;
    timeline.say(&format!(
        "holding the session for {}",
        humantime::format_duration(duration)
    ));
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(until) => break,
            _ = tick.tick(), if pending.is_none() => {
                let text = format!("hold {sent} from client-cli {}", std::process::id());
                channel.send_text(&text).await?;
                pending = Some((text, Instant::now()));
                sent += 1;
            }
            event = channel.poll() => match event {
                Some(DataChannelEvent::OnMessage(message)) => {
                    let echo = String::from_utf8_lossy(&message.data);
                    let Some((text, at)) = pending.take() else {
                        bail!("an echo nobody asked for: {echo:?}");
                    };
                    ensure!(echo == text, "the echo came back different: sent {text:?}, got {echo:?}");
                    rtts.push(at.elapsed().as_secs_f64() * 1e3);
                    echoed += 1;
                }
                Some(DataChannelEvent::OnClose) | None => bail!("the data channel closed while holding the session"),
                _ => {}
            },
            // Read for its own sake: a dropped connection is found here and
            // resumed; what the device sends meanwhile (candidates) is not
            // needed once connected.
            message = signaling.next(timeline) => { message?; }
        }
    }
    let during = frames() - frames_before;
    timeline.say(&format!(
        "held: {echoed} of {sent} echoes back, {during} video frames meanwhile, {} resume(s)",
        timeline.resumes.len()
    ));
    timeline.notes.insert("hold_echoes".into(), json!(echoed));
    timeline.notes.insert(
        "hold_echo_rtt_ms".into(),
        json!(rtts.iter().map(|r| round(*r)).collect::<Vec<_>>()),
    );
    timeline
        .notes
        .insert("hold_video_frames".into(), json!(during));
    ensure!(
        echoed + 1 >= sent,
        "only {echoed} of {sent} echoes came back while holding the session"
    );
    Ok(())
}

/// Notes the candidate pair the connection uses; a relay-only connection
/// must be relayed on our side.
fn report_pair(
    pair: Option<&SelectedPair>,
    relay_only: bool,
    timeline: &mut Timeline,
) -> Result<()> {
    let Some(pair) = pair else {
        ensure!(
            !relay_only,
            "relay only, but no selected candidate pair to check"
        );
        return Ok(());
    };
    let end = |end: &peer::rtc_peer::PairEnd| json!({"type": end.kind, "address": end.address, "port": end.port});
    timeline.notes.insert(
        "candidate_pair".into(),
        json!({"local": end(&pair.local), "remote": end(&pair.remote), "protocol": pair.local.protocol}),
    );
    if !timeline.json {
        println!("             candidate pair: {pair}");
    }
    ensure!(
        !relay_only || pair.local.kind == "relay",
        "relay only, but the selected pair is {pair}"
    );
    Ok(())
}

/// The device's channel for our tools' echoes, and the one where it
/// reports the input it received.
const ECHO: &str = "echo";
const INPUT_REPORTS: &str = "fake-device-input";

/// A media stream of the device's, as the client saw it.
struct Stream {
    id: String,
    kind: &'static str,
    /// A video track's frames, counted as they come.
    frames: Option<Arc<FrameCount>>,
}

/// Notes a track of the device's (its stream id and kind) and counts a
/// video track's frames; the first video track is the one the timeline
/// and the keyframe request follow.
async fn take_track(
    track: Arc<dyn TrackRemote>,
    streams: &mut Vec<Stream>,
    video: &mut Option<Arc<FrameCount>>,
    args: &ConnectArgs,
    timeline: &mut Timeline,
) {
    let id = track.stream_id().await.to_string();
    let kind = match track.kind().await {
        RtpCodecKind::Video => "video",
        RtpCodecKind::Audio => "audio",
        _ => "other",
    };
    let frames = (kind == "video").then(|| {
        let first = video.is_none();
        let counted = count_frames(track, (first && args.request_keyframe).then_some(10));
        if first {
            timeline.mark(Phase::VideoTrack, &format!("stream {id}"));
            *video = Some(counted.clone());
        }
        counted
    });
    streams.push(Stream { id, kind, frames });
}

/// Touches the middle of the device's first display through Cuttlefish's
/// `input-channel` (down, then up) and waits for the device to report
/// both; returns the reports.
async fn touch(
    pc: &impl webrtc::peer_connection::PeerConnection,
    reports: Option<&Arc<dyn DataChannel>>,
    device_info: &str,
    timeline: &mut Timeline,
) -> Result<Vec<serde_json::Value>> {
    let reports = reports.context(
        "the device opened no fake-device-input channel: it does not report input (not a fake-device?)",
    )?;
    let info: serde_json::Value = serde_json::from_str(device_info).unwrap_or_default();
    let display = &info["displays"][0];
    let (Some(width), Some(height)) = (display["x_res"].as_u64(), display["y_res"].as_u64()) else {
        bail!("the device's device_info describes no display to touch");
    };
    let label = display["stream_id"]
        .as_str()
        .unwrap_or("display_0")
        .to_owned();
    let (x, y) = (width / 2, height / 2);
    let input = pc.create_data_channel("input-channel", None).await?;
    loop {
        match input.poll().await {
            Some(DataChannelEvent::OnOpen) => break,
            Some(DataChannelEvent::OnClose) | None => bail!("input-channel closed before opening"),
            _ => {}
        }
    }
    let sent = Instant::now();
    for down in [1, 0] {
        let touch = json!({
            "type": "multi-touch", "id": [0], "x": [x], "y": [y], "down": down, "device_label": label,
        });
        input.send_text(&touch.to_string()).await?;
    }
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match reports.poll().await {
            Some(DataChannelEvent::OnMessage(message)) => {
                let report: serde_json::Value = serde_json::from_slice(&message.data)
                    .with_context(|| {
                        format!(
                            "an input report that is not JSON: {:?}",
                            String::from_utf8_lossy(&message.data)
                        )
                    })?;
                let touched = &report["input"];
                ensure!(
                    touched["type"] == "multi-touch"
                        && touched["x"][0] == x
                        && touched["y"][0] == y,
                    "the device reported another input than the touch sent: {report}"
                );
                seen.push(report);
            }
            Some(DataChannelEvent::OnClose) | None => bail!("the input report channel closed"),
            _ => {}
        }
    }
    if !timeline.json {
        println!(
            "{:>9.1} ms  input: a touch at ({x}, {y}) on {label} reported by the device in {:.1} ms (count {})",
            timeline.started.elapsed().as_secs_f64() * 1e3,
            sent.elapsed().as_secs_f64() * 1e3,
            seen[1]["count"]
        );
    }
    Ok(seen)
}

async fn channel_event(channel: &Option<Arc<dyn DataChannel>>) -> Option<DataChannelEvent> {
    match channel {
        Some(channel) => channel.poll().await,
        None => std::future::pending().await,
    }
}
