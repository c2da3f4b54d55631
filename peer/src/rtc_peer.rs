//! A WebRTC peer connection set up to work on hosts like these, and its
//! events as a channel.
//!
//! Settings that matter here, found while choosing the crate: multicast DNS
//! must be off (with it on, building a peer fails with ENODEV on a host
//! whose only interface is loopback); UDP is bound on 127.0.0.1 as well as
//! the wildcard address, because loopback candidates are only gathered from
//! explicitly bound sockets; and peer-reflexive candidates are accepted
//! without the default one-second wait.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use protocol::IceServer;
use protocol::payload::CandidateInit;
use rtc::ice::mdns::MulticastDnsMode;
use tokio::sync::mpsc;
use webrtc::data_channel::DataChannel;
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceCandidateInit, RTCIceConnectionState, RTCIceServer,
    RTCPeerConnectionIceEvent, RTCPeerConnectionState, Registry, SettingEngineBuilder,
    register_default_interceptors,
};

pub use webrtc::peer_connection::RTCSessionDescription;

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

    /// Interval between ICE connectivity checks (the crate's default is
    /// 200 ms).
    #[arg(long, value_name = "MS", default_value_t = 200)]
    pub ice_check_interval_ms: u64,
}

/// What a peer connection reports, in order.
pub enum PeerEvent {
    /// A local candidate to trickle to the other side.
    LocalCandidate(CandidateInit),
    IceConnectionState(RTCIceConnectionState),
    ConnectionState(RTCPeerConnectionState),
    /// The other side opened a data channel.
    DataChannel(Arc<dyn DataChannel>),
}

impl std::fmt::Debug for PeerEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::LocalCandidate(c) => f.debug_tuple("LocalCandidate").field(c).finish(),
            Self::IceConnectionState(s) => f.debug_tuple("IceConnectionState").field(s).finish(),
            Self::ConnectionState(s) => f.debug_tuple("ConnectionState").field(s).finish(),
            Self::DataChannel(c) => f.debug_tuple("DataChannel").field(&c.id()).finish(),
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

/// A new peer connection with `ice_servers`, reporting on the returned
/// channel.
pub async fn build_peer(
    settings: &PeerSettings,
    ice_servers: &[IceServer],
) -> Result<(
    impl PeerConnection + use<>,
    mpsc::UnboundedReceiver<PeerEvent>,
)> {
    let mut media = MediaEngine::default();
    media.register_default_codecs()?;
    let registry = register_default_interceptors(Registry::new(), &mut media)?;
    let mdns = if settings.mdns {
        MulticastDnsMode::QueryAndGather
    } else {
        MulticastDnsMode::Disabled
    };
    let setting_engine = SettingEngineBuilder::new()
        .with_multicast_dns_mode(mdns)
        .with_prflx_acceptance_min_wait(Some(Duration::from_millis(settings.prflx_wait_ms)))
        .with_ice_connection_attempts(
            Some(Duration::from_millis(settings.ice_check_interval_ms)),
            None,
        )
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
    Ok((peer, receiver))
}
