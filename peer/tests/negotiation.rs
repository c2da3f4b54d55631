//! Two real peers on loopback, a device and a client, negotiating through
//! `peer::negotiation` alone, with the payloads carried between them as
//! the server would carry them (as JSON text). The client gets one of the
//! device's candidates before the offer, so holding early candidates is
//! part of the path.

use std::time::Duration;

use clap::Parser;
use peer::negotiation::{Event, Negotiation, Received, Side};
use peer::rtc_peer::{PeerEvent, PeerSettings, build_peer, nudge_until_open};
use protocol::payload::{Payload, WireCandidate};
use webrtc::data_channel::DataChannelEvent;
use webrtc::peer_connection::PeerConnection as _;

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    peer: PeerSettings,
}

/// A payload as the other side reads it, after a trip through JSON text.
fn carried(payload: &Payload) -> Payload {
    Payload::from_raw(&payload.to_raw()).expect("a payload reads back")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_and_a_client_negotiate_an_open_data_channel() {
    let settings = Flags::parse_from(["test"]).peer;
    let (pc, events) = build_peer(&settings, &[]).await.expect("client peer");
    let mut client = Negotiation::with_peer(Side::Client, pc, events);
    let mut device = Negotiation::new(Side::Device);

    // Before any peer exists, the device has nothing to apply a candidate to.
    let early = Payload::flat_candidate(protocol::payload::CandidateInit {
        candidate: "candidate:1 1 udp 1 127.0.0.1 9 typ host".into(),
        sdp_mid: Some("0".into()),
        sdp_m_line_index: Some(0),
        username_fragment: None,
    });
    assert!(matches!(
        device.receive(early).await.unwrap(),
        Received::NoPeer(Payload::IceCandidate(_))
    ));

    let request = Payload::RequestOffer {
        ice_servers: vec![],
    };
    let Received::OfferRequested(servers) = device.receive(carried(&request)).await.unwrap() else {
        panic!("request-offer is the device's to answer");
    };
    let (pc, events) = build_peer(&settings, &servers).await.expect("device peer");
    let channel = pc.create_data_channel("echo", None).await.unwrap();
    tokio::spawn(nudge_until_open(channel.clone(), Duration::from_secs(10)));
    device.set_peer(pc, events).await;
    let offer = device.offer().await.unwrap();
    assert!(matches!(&offer, Payload::Offer { sdp } if sdp.starts_with("v=0")));

    // One of the device's candidates overtakes its offer.
    let first_candidate = loop {
        match device.next_event().await.expect("device events") {
            Event::Send(candidate) => break candidate,
            Event::Peer(_) => {}
        }
    };
    assert!(
        matches!(
            &first_candidate,
            Payload::IceCandidate(WireCandidate::Flat { .. })
        ),
        "a device trickles flat: {first_candidate:?}"
    );
    assert!(matches!(
        client.receive(carried(&first_candidate)).await.unwrap(),
        Received::CandidateTaken
    ));
    let Received::Reply(answer) = client.receive(carried(&offer)).await.unwrap() else {
        panic!("an offer is answered");
    };
    assert!(matches!(
        device.receive(carried(&answer)).await.unwrap(),
        Received::AnswerApplied
    ));

    // Trickle both ways until the client's side of the channel opens.
    let opened = async {
        let mut client_channel: Option<std::sync::Arc<dyn webrtc::data_channel::DataChannel>> =
            None;
        loop {
            tokio::select! {
                event = device.next_event() => match event.expect("device events") {
                    Event::Send(candidate) => {
                        client.receive(carried(&candidate)).await.unwrap();
                    }
                    Event::Peer(_) => {}
                },
                event = client.next_event() => match event.expect("client events") {
                    Event::Send(candidate) => {
                        assert!(
                            matches!(&candidate, Payload::IceCandidate(WireCandidate::Nested { .. })),
                            "a client trickles nested: {candidate:?}"
                        );
                        device.receive(carried(&candidate)).await.unwrap();
                    }
                    Event::Peer(PeerEvent::DataChannel(dc)) => client_channel = Some(dc),
                    Event::Peer(_) => {}
                },
                event = async {
                    match &client_channel {
                        Some(dc) => dc.poll().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if let Some(DataChannelEvent::OnOpen) = event {
                        return client_channel.take().expect("a channel");
                    }
                }
            }
        }
    };
    // A bound so a broken negotiation fails the test instead of hanging it.
    let channel = tokio::time::timeout(Duration::from_secs(30), opened)
        .await
        .expect("the data channel opens");
    assert_eq!(channel.label().await.unwrap(), "echo");

    // A remote error is reported, not applied.
    let error = Payload::Error {
        error: "no such stream".into(),
    };
    assert!(matches!(
        device.receive(carried(&error)).await.unwrap(),
        Received::RemoteError(e) if e == "no such stream"
    ));
    client.close().await;
    device.close().await;
    assert!(client.peer().is_none() && device.peer().is_none());
}
