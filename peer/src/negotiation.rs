//! The payload layer of PROTOCOL.md ("The payload layer"), once for both
//! sides: what fake-device and client-cli do with each payload they
//! receive, and what they trickle back.
//!
//! A [`Negotiation`] holds the peer connection and the other side's
//! candidates. Each payload from the other side goes to
//! [`Negotiation::receive`], which applies it (an offer is answered, an
//! answer set, a candidate added or held until the remote description is
//! set) and says what the caller must do; each event of the peer comes out
//! of [`Negotiation::next_event`], our own candidates already turned into
//! payloads in this side's shape. The caller owns the signaling socket and
//! the policy: which peer to build, when to offer, what a remote error
//! means.

use anyhow::{Context as _, Result};
use protocol::IceServer;
use protocol::payload::{CandidateInit, Payload, WireCandidate};
use tokio::sync::mpsc;
use tracing::debug;
use webrtc::peer_connection::{PeerConnection, RTCSessionDescription};

use crate::rtc_peer::{PeerEvent, is_relay_candidate, to_rtc_candidate};

/// Which side of the payload layer this is; it decides the shape our
/// candidates travel in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Offers when asked; trickles candidates flat, as Cuttlefish devices
    /// do.
    Device,
    /// Asks for an offer and answers it; trickles candidates nested, as a
    /// browser's `RTCIceCandidate.toJSON()` gives them.
    Client,
}

/// What a payload from the other side asks of the caller.
#[derive(Debug)]
pub enum Received {
    /// Send this to the other side: the answer to its offer.
    Reply(Payload),
    /// The other side's answer is set, with the candidates it sent early.
    AnswerApplied,
    /// One of the other side's candidates is added, or held until the
    /// remote description is set (end-of-candidates markers are skipped).
    CandidateTaken,
    /// The other side asks for an offer: build the peer (with these ICE
    /// servers, or the configured ones when empty), then [`Negotiation::offer`].
    OfferRequested(Vec<IceServer>),
    /// The other side reports an error.
    RemoteError(String),
    /// There is no peer to apply this to yet; it is handed back, for the
    /// caller to build one and receive it again, or to drop it.
    NoPeer(Payload),
}

/// What the peer reports, ready to act on.
#[derive(Debug)]
pub enum Event {
    /// Send this to the other side: one of our candidates, in our shape.
    Send(Payload),
    /// Anything else the peer reports.
    Peer(PeerEvent),
}

/// One side's half of a WebRTC negotiation over the payload layer.
#[derive(Debug)]
pub struct Negotiation<P> {
    side: Side,
    peer: Option<Peer<P>>,
    early_candidates: Vec<CandidateInit>,
    have_remote_description: bool,
    /// How many of the current peer's own candidates were relayed ones.
    relayed_candidates: usize,
}

#[derive(Debug)]
struct Peer<P> {
    connection: P,
    events: mpsc::UnboundedReceiver<PeerEvent>,
}

impl<P: PeerConnection> Negotiation<P> {
    /// A negotiation with no peer yet.
    pub fn new(side: Side) -> Self {
        Self {
            side,
            peer: None,
            early_candidates: Vec::new(),
            have_remote_description: false,
            relayed_candidates: 0,
        }
    }

    /// A negotiation over `connection`, whose events come on `events` (as
    /// [`crate::rtc_peer::build_peer`] returns them).
    pub fn with_peer(
        side: Side,
        connection: P,
        events: mpsc::UnboundedReceiver<PeerEvent>,
    ) -> Self {
        let mut negotiation = Self::new(side);
        negotiation.peer = Some(Peer { connection, events });
        negotiation
    }

    /// Replaces the peer (closing the one before, if any): the new one has
    /// no remote description, and candidates held for the old one are
    /// dropped.
    pub async fn set_peer(&mut self, connection: P, events: mpsc::UnboundedReceiver<PeerEvent>) {
        self.close().await;
        self.peer = Some(Peer { connection, events });
    }

    /// The peer connection, once there is one.
    pub fn peer(&self) -> Option<&P> {
        self.peer.as_ref().map(|peer| &peer.connection)
    }

    /// How many relayed (TURN) candidates the current peer has gathered.
    pub fn relayed_candidates(&self) -> usize {
        self.relayed_candidates
    }

    /// Closes the peer connection, if any; the negotiation starts over.
    pub async fn close(&mut self) {
        self.early_candidates.clear();
        self.have_remote_description = false;
        self.relayed_candidates = 0;
        if let Some(peer) = self.peer.take()
            && let Err(e) = peer.connection.close().await
        {
            debug!(error = %e, "closing the peer connection");
        }
    }

    /// Creates our offer and sets it locally: the payload to send.
    pub async fn offer(&mut self) -> Result<Payload> {
        let pc = self.connection()?;
        let offer = pc.create_offer(None).await?;
        Ok(Payload::Offer {
            sdp: set_local(pc, offer).await?,
        })
    }

    /// Applies one payload from the other side.
    pub async fn receive(&mut self, payload: Payload) -> Result<Received> {
        match payload {
            Payload::RequestOffer { ice_servers } => Ok(Received::OfferRequested(ice_servers)),
            Payload::Error { error } => Ok(Received::RemoteError(error)),
            Payload::Offer { sdp } if self.peer.is_some() => {
                self.set_remote(RTCSessionDescription::offer(sdp)?).await?;
                let pc = self.connection()?;
                let answer = pc.create_answer(None).await?;
                Ok(Received::Reply(Payload::Answer {
                    sdp: set_local(pc, answer).await?,
                }))
            }
            Payload::Answer { sdp } if self.peer.is_some() => {
                self.set_remote(RTCSessionDescription::answer(sdp)?).await?;
                Ok(Received::AnswerApplied)
            }
            Payload::IceCandidate(candidate) if self.peer.is_some() => {
                self.add_candidate(candidate).await?;
                Ok(Received::CandidateTaken)
            }
            no_peer => Ok(Received::NoPeer(no_peer)),
        }
    }

    /// The peer's next event; our candidates come as payloads to send.
    /// Never resolves while there is no peer; `None` once the peer has
    /// stopped reporting.
    pub async fn next_event(&mut self) -> Option<Event> {
        let Some(peer) = &mut self.peer else {
            return std::future::pending().await;
        };
        Some(match peer.events.recv().await? {
            PeerEvent::LocalCandidate(candidate) => {
                if is_relay_candidate(&candidate.candidate) {
                    self.relayed_candidates += 1;
                }
                Event::Send(match self.side {
                    Side::Device => Payload::flat_candidate(candidate),
                    Side::Client => Payload::nested_candidate(candidate),
                })
            }
            other => Event::Peer(other),
        })
    }

    fn connection(&self) -> Result<&P> {
        Ok(&self
            .peer
            .as_ref()
            .context("no peer to negotiate for")?
            .connection)
    }

    async fn set_remote(&mut self, description: RTCSessionDescription) -> Result<()> {
        let pc = &self.peer.as_ref().context("no peer")?.connection;
        pc.set_remote_description(description).await?;
        self.have_remote_description = true;
        for candidate in self.early_candidates.drain(..) {
            pc.add_ice_candidate(to_rtc_candidate(candidate)).await?;
        }
        Ok(())
    }

    async fn add_candidate(&mut self, candidate: WireCandidate) -> Result<()> {
        if candidate.is_end_of_candidates() {
            return Ok(());
        }
        let candidate = candidate.into_init();
        if self.have_remote_description {
            let pc = self.connection()?;
            pc.add_ice_candidate(to_rtc_candidate(candidate)).await?;
        } else {
            self.early_candidates.push(candidate);
        }
        Ok(())
    }
}

/// Sets our offer or answer locally; its SDP, as the peer settled it.
async fn set_local(pc: &impl PeerConnection, description: RTCSessionDescription) -> Result<String> {
    pc.set_local_description(description).await?;
    Ok(pc
        .local_description()
        .await
        .context("no local description after setting it")?
        .sdp)
}
