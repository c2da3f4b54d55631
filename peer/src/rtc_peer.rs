//! A WebRTC peer connection set up to work on hosts like these, and its
//! events as a channel.
//!
//! Settings that matter here, found while choosing the crate: multicast DNS
//! must be off (with it on, building a peer fails with ENODEV on a host
//! whose only interface is loopback); UDP is bound on 127.0.0.1 as well as
//! the wildcard address, because loopback candidates are only gathered from
//! explicitly bound sockets; and peer-reflexive candidates are accepted
//! without the default one-second wait.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use protocol::IceServer;
use protocol::payload::CandidateInit;
use rtc::data_channel::RTCDataChannelInit;
use rtc::ice::mdns::MulticastDnsMode;
use rtc::interceptor::{Attribute, Interceptor, Packet, Slot, StreamInfo, TaggedPacket};
use rtc::peer_connection::configuration::RTCIceTransportPolicy;
use rtc::peer_connection::transport::RTCDtlsRole;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::sansio::Protocol;
use rtc::statistics::StatsSelector;
use rtc::statistics::report::RTCStatsReportEntry;
use tokio::sync::mpsc;
use webrtc::data_channel::{DataChannel, RTCDataChannelState};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceCandidateInit, RTCIceConnectionState, RTCIceGatheringState,
    RTCIceServer, RTCPeerConnectionIceEvent, RTCPeerConnectionState, Registry,
    SettingEngineBuilder, register_default_interceptors,
};

/// Peer settings a user may want to change; the flags both tools share.
#[derive(Debug, Clone, clap::Args)]
pub struct PeerSettings {
    /// Local UDP addresses to gather candidates on; repeatable. Loopback
    /// candidates come only from an explicitly bound loopback socket.
    #[arg(long = "udp-bind", value_name = "ADDR:PORT", default_values_t = [
        "0.0.0.0:0".to_owned(), "127.0.0.1:0".to_owned()
    ])]
    pub udp_binds: Vec<String>,

    /// Gather and accept multicast DNS (.local) candidates. Off by default:
    /// on a host whose only interface is loopback it makes building a peer
    /// fail.
    #[arg(long)]
    pub mdns: bool,

    /// How long to wait before accepting a peer-reflexive candidate pair
    /// (the crate's default is 1 s).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub prflx_wait_ms: u64,

    /// Interval between ICE connectivity checks. The offerer nominates a
    /// pair on its next check, so this bounds the step from ICE to DTLS;
    /// the crate's default is 200 ms. A candidate is still given up after
    /// the crate's 1.4 s (the number of checks scales to match).
    #[arg(long, value_name = "MS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=1400))]
    pub ice_check_interval_ms: u64,

    /// The DTLS role this peer takes when it answers an offer. `server`
    /// leaves the offerer (the device) to start DTLS and SCTP, which lets it
    /// speed up the handshake (see `nudge_until_open`); `client` is the
    /// crate's (and browsers') default.
    #[arg(long, value_enum, default_value_t = AnswerDtlsRole::Server)]
    pub answer_dtls_role: AnswerDtlsRole,

    /// Use relayed candidates only, as a peer behind a network that lets
    /// nothing else through: the TURN servers of the `config` (the
    /// signaling server's --turn-url) carry every packet. Fails when the
    /// config names no TURN server, or when none grants an allocation.
    /// Such a peer wakes its WebRTC driver every 2 ms (the crate would
    /// hold each relayed packet until its next wake): about 2% of a core
    /// more for an idle session.
    #[arg(long)]
    pub relay_only: bool,

    /// How long to wait before accepting a relayed candidate pair, giving
    /// a direct one the chance to work first. The crate's default is 2 s;
    /// with --relay-only no direct pair can come, and the default is 0.
    #[arg(long, value_name = "MS")]
    pub relay_wait_ms: Option<u64>,
}

/// The DTLS role of an answering peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AnswerDtlsRole {
    Client,
    Server,
}

/// What a peer connection reports, in order.
pub enum PeerEvent {
    /// A local candidate to trickle to the other side.
    LocalCandidate(CandidateInit),
    IceConnectionState(RTCIceConnectionState),
    ConnectionState(RTCPeerConnectionState),
    /// The other side opened a data channel.
    DataChannel(Arc<dyn DataChannel>),
    /// The other side sends media on this track.
    Track(Arc<dyn TrackRemote>),
    /// Every local candidate has been reported.
    GatheringComplete,
}

impl std::fmt::Debug for PeerEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::LocalCandidate(c) => f.debug_tuple("LocalCandidate").field(c).finish(),
            Self::IceConnectionState(s) => f.debug_tuple("IceConnectionState").field(s).finish(),
            Self::ConnectionState(s) => f.debug_tuple("ConnectionState").field(s).finish(),
            Self::DataChannel(c) => f.debug_tuple("DataChannel").field(&c.id()).finish(),
            Self::Track(_) => f.write_str("Track"),
            Self::GatheringComplete => f.write_str("GatheringComplete"),
        }
    }
}

struct EventForwarder(mpsc::UnboundedSender<PeerEvent>);

#[async_trait::async_trait]
impl PeerConnectionEventHandler for EventForwarder {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(init) = event.candidate.to_json() {
            let _ = self.0.send(PeerEvent::LocalCandidate(CandidateInit {
                candidate: init.candidate,
                sdp_mid: init.sdp_mid,
                sdp_m_line_index: init.sdp_mline_index,
                username_fragment: init.username_fragment,
            }));
        }
    }

    async fn on_ice_connection_state_change(&self, state: RTCIceConnectionState) {
        let _ = self.0.send(PeerEvent::IceConnectionState(state));
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.0.send(PeerEvent::ConnectionState(state));
    }

    async fn on_data_channel(&self, channel: Arc<dyn DataChannel>) {
        let _ = self.0.send(PeerEvent::DataChannel(channel));
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let _ = self.0.send(PeerEvent::Track(track));
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.0.send(PeerEvent::GatheringComplete);
        }
    }
}

/// The candidate as the crate takes it.
pub fn to_rtc_candidate(init: CandidateInit) -> RTCIceCandidateInit {
    RTCIceCandidateInit {
        candidate: init.candidate,
        sdp_mid: init.sdp_mid,
        sdp_mline_index: init.sdp_m_line_index,
        username_fragment: init.username_fragment,
        ..Default::default()
    }
}

/// How long the crate tries one candidate pair by default: 7 checks, 200 ms
/// apart.
const CANDIDATE_PATIENCE_MS: u64 = 1400;

/// Checks per candidate pair at `interval_ms`, keeping the crate's patience.
fn binding_requests(interval_ms: u64) -> u16 {
    u16::try_from((CANDIDATE_PATIENCE_MS / interval_ms.max(1)).max(1)).unwrap_or(u16::MAX)
}

/// Whether `ice_servers` names a TURN server, which a relay-only peer
/// cannot do without.
pub fn names_turn_server(ice_servers: &[IceServer]) -> bool {
    ice_servers
        .iter()
        .flat_map(|server| &server.urls)
        .any(|url| url.starts_with("turn:") || url.starts_with("turns:"))
}

/// Whether a candidate line (`candidate:… typ relay …`) is a relayed one.
pub fn is_relay_candidate(candidate: &str) -> bool {
    candidate_type(candidate) == Some("relay")
}

/// The type of a candidate line: host, srflx, prflx or relay.
pub fn candidate_type(candidate: &str) -> Option<&str> {
    let mut words = candidate.split_ascii_whitespace();
    words.by_ref().find(|word| *word == "typ")?;
    words.next()
}

/// One end of the candidate pair a connection uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairEnd {
    /// host, srflx, prflx or relay.
    pub kind: String,
    pub address: String,
    pub port: u16,
    pub protocol: String,
}

impl std::fmt::Display for PairEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}:{}", self.kind, self.address, self.port)
    }
}

/// The candidate pair ICE selected, from the connection's statistics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectedPair {
    pub local: PairEnd,
    pub remote: PairEnd,
}

impl std::fmt::Display for SelectedPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ↔ {} ({})",
            self.local, self.remote, self.local.protocol
        )
    }
}

/// The candidate pair `peer` sends on, once ICE has selected one.
pub async fn selected_pair(peer: &impl PeerConnection) -> Option<SelectedPair> {
    let report = peer.get_stats(Instant::now(), StatsSelector::None).await;
    let pair_id = report.iter().find_map(|entry| match entry {
        RTCStatsReportEntry::Transport(transport)
            if !transport.selected_candidate_pair_id.is_empty() =>
        {
            Some(transport.selected_candidate_pair_id.clone())
        }
        _ => None,
    })?;
    let Some(RTCStatsReportEntry::IceCandidatePair(pair)) = report.get(&pair_id) else {
        return None;
    };
    // The pair names its candidates by the candidate's own id, which the
    // candidates' stats ids carry after a prefix of their kind.
    let end = |id: &str| {
        report.iter().find_map(|entry| match entry {
            RTCStatsReportEntry::LocalCandidate(candidate)
            | RTCStatsReportEntry::RemoteCandidate(candidate)
                if candidate.stats.id == id || candidate.stats.id.ends_with(&format!("_{id}")) =>
            {
                Some(PairEnd {
                    kind: candidate.candidate_type.to_string(),
                    address: candidate.address.clone().unwrap_or_default(),
                    port: candidate.port,
                    protocol: candidate.protocol.clone(),
                })
            }
            _ => None,
        })
    };
    Some(SelectedPair {
        local: end(&pair.local_candidate_id)?,
        remote: end(&pair.remote_candidate_id)?,
    })
}

/// A new peer connection with `ice_servers`, reporting on the returned
/// channel. A relay-only peer needs a TURN server among them: without
/// one it is refused at once, saying so.
pub async fn build_peer(
    settings: &PeerSettings,
    ice_servers: &[IceServer],
) -> Result<(
    impl PeerConnection + use<>,
    mpsc::UnboundedReceiver<PeerEvent>,
)> {
    if settings.relay_only && !names_turn_server(ice_servers) {
        anyhow::bail!("{}", crate::turn_check::why_no_relay(ice_servers).await);
    }
    let mut media = MediaEngine::default();
    media.register_default_codecs()?;
    // Last in the chain, so the crate's own interceptors see all of the
    // inbound RTCP before it picks out the keyframe requests.
    let registry = register_default_interceptors(Registry::new(), &mut media)?
        .with(Slot::from(14_000), KeyframeRequests::default());
    let mdns = if settings.mdns {
        MulticastDnsMode::QueryAndGather
    } else {
        MulticastDnsMode::Disabled
    };
    let setting_engine = SettingEngineBuilder::new()
        .with_multicast_dns_mode(mdns)
        .with_prflx_acceptance_min_wait(Some(Duration::from_millis(settings.prflx_wait_ms)))
        .with_relay_acceptance_min_wait(
            settings
                .relay_wait_ms
                .or(settings.relay_only.then_some(0))
                .map(Duration::from_millis),
        )
        .with_ice_connection_attempts(
            Some(Duration::from_millis(settings.ice_check_interval_ms)),
            Some(binding_requests(settings.ice_check_interval_ms)),
        )
        .with_answering_dtls_role(match settings.answer_dtls_role {
            AnswerDtlsRole::Client => RTCDtlsRole::Client,
            AnswerDtlsRole::Server => RTCDtlsRole::Server,
        })
        .build();
    let configuration = RTCConfigurationBuilder::new()
        .with_ice_servers(
            ice_servers
                .iter()
                .map(|server| RTCIceServer {
                    urls: server.urls.clone(),
                    username: server.username.clone().unwrap_or_default(),
                    credential: server.credential.clone().unwrap_or_default(),
                })
                .collect(),
        )
        .with_ice_transport_policy(if settings.relay_only {
            RTCIceTransportPolicy::Relay
        } else {
            RTCIceTransportPolicy::All
        })
        .build();
    let (events, receiver) = mpsc::unbounded_channel();
    let runtime = webrtc::runtime::default_runtime().context("no async runtime for webrtc")?;
    let peer = PeerConnectionBuilder::new()
        .with_configuration(configuration)
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .with_setting_engine(setting_engine)
        .with_handler(Arc::new(EventForwarder(events)))
        .with_runtime(runtime)
        .with_udp_addrs(settings.udp_binds.clone())
        .build()
        .await
        .context("cannot create a WebRTC peer connection")?;
    if settings.relay_only {
        keep_relayed_packets_moving(&peer).await?;
    }
    Ok((peer, receiver))
}

/// How often a relay-only peer wakes its driver.
pub const RELAY_WAKE_INTERVAL: Duration = Duration::from_millis(2);

/// The SCTP stream of the channel [`keep_relayed_packets_moving`] wakes
/// the driver through: negotiated out of band, so nothing announces it
/// to the other side, and never sent on; far above the ids either side's
/// own channels take (they count up from 0 and 1).
const WAKE_STREAM: u16 = 1023;

/// Wakes `peer`'s driver every [`RELAY_WAKE_INTERVAL`] until the peer
/// closes.
///
/// Why: the crate's driver (webrtc 0.21) drains its TURN client's queue of
/// outgoing packets before it hands that client the packets the protocol
/// core wrote, so every relayed packet waits for the driver's next wake:
/// measured through a loopback coturn, DTLS took a second longer than
/// ICE and a data channel echo 65 ms. Any call that wakes the driver
/// flushes them; re-setting a data channel's threshold to its own value is
/// one that changes nothing (as in [`nudge_until_open`]). The cost,
/// measured on an idle relayed session (release build): 0.27–0.29 s of
/// CPU every 10 s, against 0.04–0.06 s without it (BENCHMARKS.md).
async fn keep_relayed_packets_moving(peer: &impl PeerConnection) -> Result<()> {
    let channel = peer
        .create_data_channel(
            "relay-wake",
            Some(RTCDataChannelInit {
                negotiated: Some(WAKE_STREAM),
                ..Default::default()
            }),
        )
        .await
        .context("cannot create the relay wake channel")?;
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(RELAY_WAKE_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if matches!(
                channel.ready_state().await,
                Ok(RTCDataChannelState::Closed | RTCDataChannelState::Closing) | Err(_)
            ) {
                return;
            }
            if !wake_driver(channel.as_ref()).await {
                return;
            }
        }
    });
    Ok(())
}

/// Wakes the driver of `channel`'s peer connection by re-setting the
/// channel's buffered-amount threshold to its own value, a call that
/// changes nothing; false once the channel no longer takes calls.
async fn wake_driver(channel: &dyn DataChannel) -> bool {
    let Ok(threshold) = channel.buffered_amount_low_threshold().await else {
        return false;
    };
    channel
        .set_buffered_amount_low_threshold(threshold)
        .await
        .is_ok()
}

/// How often [`nudge_until_open`] wakes the peer's driver.
pub const NUDGE_INTERVAL: Duration = Duration::from_millis(2);

/// Wakes the peer connection's driver every [`NUDGE_INTERVAL`] until
/// `channel` opens (or `limit` passes).
///
/// Why: the crate's driver flushes outgoing packets at the top of its loop,
/// before it processes the core's events, and some handshake steps queue
/// packets while their events are processed (the SCTP INIT once DTLS
/// completes, the data channel OPEN once SCTP is up). Those packets then
/// wait for the driver's next timer, about 200 ms each. Any call that wakes
/// the driver flushes them; re-setting a data channel threshold to its own
/// value is one that changes nothing.
pub async fn nudge_until_open(channel: Arc<dyn DataChannel>, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        match channel.ready_state().await {
            Ok(RTCDataChannelState::Connecting) => {}
            _ => return,
        }
        if !wake_driver(channel.as_ref()).await {
            return;
        }
        tokio::time::sleep(NUDGE_INTERVAL).await;
    }
}

/// Counts the frames arriving on a VP8 video track (an RTP packet with the
/// marker bit ends one) and its keyframes. With `request_keyframe_after`,
/// it asks for a keyframe (a PLI) once that many frames have arrived, and
/// measures how long the sender takes to send one.
pub fn count_frames(
    track: Arc<dyn TrackRemote>,
    request_keyframe_after: Option<u64>,
) -> Arc<FrameCount> {
    let count = Arc::new(FrameCount::default());
    let counting = count.clone();
    tokio::spawn(async move {
        let media_ssrc = track.ssrcs().await.first().copied().unwrap_or(0);
        // When the keyframe was requested, and after how many frames.
        let mut requested: Option<(Instant, u64)> = None;
        // Until a keyframe comes, nothing can be decoded: a receiver that
        // joined after the sender's first keyframe (its first packets can
        // arrive before the track is announced) asks for one, as a
        // browser's decoder does, at most every KEYFRAME_ASK_INTERVAL.
        let mut asked_for_first: Option<Instant> = None;
        while let Some(event) = track.poll().await {
            let packet = match event {
                TrackRemoteEvent::OnRtpPacket(packet) => packet,
                TrackRemoteEvent::OnEnded | TrackRemoteEvent::OnError => break,
                _ => continue,
            };
            if starts_vp8_keyframe(&packet.payload) {
                counting.keyframes.fetch_add(1, Ordering::Relaxed);
                if let Some((at, frames)) = requested.take() {
                    let waited = counting.frames.load(Ordering::Relaxed) - frames;
                    *lock(&counting.keyframe_after_request) = Some((at.elapsed(), waited + 1));
                }
            }
            if !packet.header.marker {
                continue;
            }
            lock(&counting.first).get_or_insert_with(Instant::now);
            let frames = counting.frames.fetch_add(1, Ordering::Relaxed) + 1;
            if counting.keyframes.load(Ordering::Relaxed) == 0
                && asked_for_first.is_none_or(|at| at.elapsed() >= KEYFRAME_ASK_INTERVAL)
            {
                let pli = PictureLossIndication {
                    sender_ssrc: 0,
                    media_ssrc,
                };
                if track.write_rtcp(vec![Box::new(pli)]).await.is_ok() {
                    asked_for_first = Some(Instant::now());
                }
            }
            if request_keyframe_after == Some(frames) {
                let pli = PictureLossIndication {
                    sender_ssrc: 0,
                    media_ssrc,
                };
                if track.write_rtcp(vec![Box::new(pli)]).await.is_ok() {
                    requested = Some((Instant::now(), frames));
                }
            }
        }
    });
    count
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether an RTP payload of VP8 (RFC 7741) starts a keyframe: the start of
/// partition 0, whose VP8 header has the inverse key frame bit clear.
fn starts_vp8_keyframe(payload: &[u8]) -> bool {
    let Some(&first) = payload.first() else {
        return false;
    };
    let extended = first & 0x80 != 0;
    let start_of_partition = first & 0x10 != 0;
    let partition = first & 0x07;
    if !start_of_partition || partition != 0 {
        return false;
    }
    let mut at = 1;
    if extended {
        let Some(&bits) = payload.get(1) else {
            return false;
        };
        at = 2;
        if bits & 0x80 != 0 {
            // A picture id of 7 bits, or 15 with the M bit.
            let long = payload.get(at).is_some_and(|b| b & 0x80 != 0);
            at += if long { 2 } else { 1 };
        }
        if bits & 0x40 != 0 {
            at += 1; // TL0PICIDX
        }
        if bits & 0x30 != 0 {
            at += 1; // TID, Y, KEYIDX
        }
    }
    payload.get(at).is_some_and(|header| header & 0x01 == 0)
}

/// How often [`count_frames`] asks for a first keyframe while none came.
const KEYFRAME_ASK_INTERVAL: Duration = Duration::from_millis(500);

/// Frames received on a track so far.
#[derive(Debug, Default)]
pub struct FrameCount {
    pub frames: AtomicU64,
    pub keyframes: AtomicU64,
    pub first: std::sync::Mutex<Option<Instant>>,
    /// From the keyframe request to the first keyframe after it: the time,
    /// and which frame after the request it was (1 is the next one).
    pub keyframe_after_request: std::sync::Mutex<Option<(Duration, u64)>>,
}

#[cfg(test)]
mod tests {
    use super::starts_vp8_keyframe;

    #[test]
    fn vp8_keyframes_are_found_behind_any_descriptor() {
        // No extension: S=1, PID=0, then a key frame header (P=0).
        assert!(starts_vp8_keyframe(&[0x10, 0x00]));
        // The same, an inter frame (P=1).
        assert!(!starts_vp8_keyframe(&[0x10, 0x01]));
        // Not the start of the partition.
        assert!(!starts_vp8_keyframe(&[0x00, 0x00]));
        // Extended: a 15-bit picture id, then the key frame header.
        assert!(starts_vp8_keyframe(&[0x90, 0x80, 0x81, 0x23, 0x00]));
        // Extended: a 7-bit picture id, TL0PICIDX and TID/KEYIDX.
        assert!(starts_vp8_keyframe(&[0x90, 0xe0, 0x05, 0x07, 0x20, 0x00]));
        assert!(!starts_vp8_keyframe(&[0x90, 0xe0, 0x05, 0x07, 0x20, 0x01]));
        assert!(!starts_vp8_keyframe(&[]));
    }

    #[test]
    fn candidate_types_are_read_from_the_line() {
        use super::{candidate_type, is_relay_candidate};
        let relay = "candidate:1 1 udp 16777215 127.0.0.1 49160 typ relay raddr 0.0.0.0 rport 5000";
        assert!(is_relay_candidate(relay));
        assert_eq!(
            candidate_type("candidate:2 1 udp 2130706431 127.0.0.1 5000 typ host"),
            Some("host")
        );
        assert_eq!(
            candidate_type("candidate:2 1 udp 2130706431 127.0.0.1 5000"),
            None
        );
        assert!(!is_relay_candidate("a relay candidate"));
    }
}

/// Passes the remote side's keyframe requests (PLI and FIR) on to the
/// application, as `TrackLocalEvent::OnRtcpPacket` on the track they are
/// about.
///
/// Inbound RTCP ends at the end of the crate's interceptor chain unless an
/// interceptor marks it for the application; only a sender can answer a
/// keyframe request (with a keyframe), so these, and nothing else, are
/// marked. Everything passes through unchanged otherwise.
#[derive(Default)]
struct KeyframeRequests {
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeRequests {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut message: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &message.message.packet {
            let requests: Vec<_> = packets
                .iter()
                .filter(|packet| {
                    let packet = packet.as_any();
                    packet.is::<PictureLossIndication>() || packet.is::<FullIntraRequest>()
                })
                .cloned()
                .collect();
            if requests.is_empty() {
                // Reports and NACKs: the crate's interceptors have acted.
                return Ok(());
            }
            message.message.packet = Packet::Rtcp(requests);
            message.message.add(Attribute::DeliverToApplication);
        }
        self.read.push_back(message);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, message: TaggedPacket) -> Result<(), Self::Error> {
        self.write.push_back(message);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write.pop_front()
    }
}

impl Interceptor for KeyframeRequests {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}
