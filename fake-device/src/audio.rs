//! The fake device's sound: an Opus track per audio stream of its
//! `device_info` (Cuttlefish's client plays the track whose stream id is
//! listed in `audio_streams`, `audio_0` on a real device), carrying
//! silence.
//!
//! Silence needs no encoder: an Opus packet whose only frame is a 20 ms
//! CELT frame of zero energy (RFC 6716 §3.1, TOC byte 0xF8: configuration
//! 31, mono, one frame) decodes to silence in every decoder, and is what
//! encoders themselves send for digital silence.

use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use rtc::peer_connection::configuration::media_engine::MIME_TYPE_OPUS;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RtpCodecKind};
use webrtc::peer_connection::PeerConnection;

use crate::video::{LocalTrack, add_local_track};

/// One 20 ms Opus frame of silence.
const SILENT_FRAME: [u8; 3] = [0xf8, 0xff, 0xfe];

/// How long each packet lasts.
const FRAME: Duration = Duration::from_millis(20);

/// Adds an Opus track in the stream `stream_id` to `pc`, before its offer.
pub async fn add_track(pc: &impl PeerConnection, stream_id: &str) -> Result<LocalTrack> {
    let codec = RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    };
    add_local_track(pc, stream_id, RtpCodecKind::Audio, codec).await
}

/// Sends silence on the track, a packet every 20 ms, until writing fails
/// (the peer closed) or the task is dropped.
pub async fn play_silence(audio: LocalTrack) -> Result<()> {
    let payload_type = audio.payload_type().await?;
    let mut ticker = tokio::time::interval(FRAME);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let frame = Bytes::from_static(&SILENT_FRAME);
    loop {
        ticker.tick().await;
        audio.write(payload_type, frame.clone(), FRAME).await?;
    }
}
