//! Media tracks, and `--video FILE`: a VP8 clip (IVF) looped to every
//! client on every display, in place of the live screens (`live.rs`).
//!
//! Learned while making it: a local track serves one peer connection only
//! (adding it to a second one silently moves it), so every client gets its
//! own track, fed from the frames shared here; a sample's duration must be
//! one frame (1/fps), or the receiver's clock runs wrong; each client
//! starts at a keyframe, so its first frame decodes at once; and a
//! receiver that loses its picture asks for a keyframe (PLI or FIR, which
//! `peer::rtc_peer` passes on), answered by skipping to the clip's next
//! keyframe instead of leaving it to wait for the loop to reach one.

use std::io::Cursor;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use bytes::Bytes;
use rtc::media::Sample;
use rtc::media::io::ivf_reader::IVFReader;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::MIME_TYPE_VP8;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use tracing::{debug, info};
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::peer_connection::PeerConnection;
use webrtc::rtp_transceiver::RtpSender;

/// A test clip (see media/README.md).
#[cfg(test)]
const TEST_PATTERN: &[u8] = include_bytes!("../media/test-pattern.ivf");

/// A VP8 clip in memory, ready to loop.
#[derive(Debug)]
pub struct Clip {
    frames: Vec<Bytes>,
    /// The indices of the keyframes, in order; the first is 0.
    keyframes: Vec<usize>,
    frame_duration: Duration,
    pub width: u16,
    pub height: u16,
}

impl Clip {
    /// Reads an IVF file of VP8 frames; it must start with a keyframe.
    pub fn from_ivf(data: &[u8]) -> Result<Self> {
        let (mut reader, header) = IVFReader::new(Cursor::new(data)).context("not an IVF file")?;
        ensure!(&header.four_cc == b"VP80", "the IVF file is not VP8");
        ensure!(
            header.timebase_numerator > 0 && header.timebase_denominator > 0,
            "the IVF file has no frame rate"
        );
        let frame_duration = Duration::from_secs_f64(
            f64::from(header.timebase_numerator) / f64::from(header.timebase_denominator),
        );
        let mut frames = Vec::new();
        while let Ok((frame, _)) = reader.parse_next_frame() {
            frames.push(frame.freeze());
        }
        ensure!(!frames.is_empty(), "the IVF file holds no frame");
        ensure!(
            is_keyframe(&frames[0]),
            "the IVF file does not start with a keyframe"
        );
        let keyframes = (0..frames.len())
            .filter(|&n| is_keyframe(&frames[n]))
            .collect();
        Ok(Self {
            frames,
            keyframes,
            frame_duration,
            width: header.width,
            height: header.height,
        })
    }
}

impl Clip {
    /// The first keyframe at or after frame `n`, looping.
    fn keyframe_from(&self, n: usize) -> usize {
        self.keyframes
            .iter()
            .copied()
            .find(|&k| k >= n)
            .unwrap_or(self.keyframes[0])
    }
}

/// VP8's frame tag: the lowest bit of the first byte is 0 for a keyframe.
fn is_keyframe(frame: &[u8]) -> bool {
    frame.first().is_some_and(|tag| tag & 1 == 0)
}

/// One of a client's media tracks (a display's video, an audio stream).
pub struct LocalTrack {
    track: Arc<TrackLocalStaticSample>,
    sender: Arc<dyn RtpSender>,
    ssrc: u32,
}

impl std::fmt::Debug for LocalTrack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalTrack")
            .field("ssrc", &self.ssrc)
            .finish()
    }
}

impl LocalTrack {
    /// The payload type the peer negotiated for the track's codec.
    pub(crate) async fn payload_type(&self) -> Result<u8> {
        self.sender
            .get_parameters()
            .await?
            .rtp_parameters
            .codecs
            .first()
            .map(|codec| codec.payload_type)
            .context("the sender has no negotiated codec")
    }

    /// Waits for a receiver's keyframe request (the RTCP that
    /// `peer::rtc_peer` passes on: PLI or FIR); None once the track reports
    /// no more events (it was unbound).
    pub(crate) async fn keyframe_request(&self) -> Option<()> {
        loop {
            match self.track.poll().await? {
                TrackLocalEvent::OnRtcpPacket(_) => return Some(()),
                _ => continue,
            }
        }
    }

    /// Sends one sample of `duration`.
    pub(crate) async fn write(
        &self,
        payload_type: u8,
        data: Bytes,
        duration: Duration,
    ) -> Result<()> {
        self.track
            .sample_writer(self.ssrc, payload_type)
            .write_sample(&Sample {
                data,
                duration,
                ..Sample::new(Instant::now())
            })
            .await?;
        Ok(())
    }
}

/// A random SSRC: the standard library's randomly keyed hasher is enough
/// to keep two tracks apart.
fn random_ssrc() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let hash = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (hash >> 32) as u32
}

/// Adds a track of `codec` to `pc` in the media stream `stream_id` (the
/// `a=msid:` of the offer, which is how Cuttlefish's client tells a
/// display's stream from another's), before its offer is made.
pub(crate) async fn add_local_track(
    pc: &impl PeerConnection,
    stream_id: &str,
    kind: RtpCodecKind,
    codec: RTCRtpCodec,
) -> Result<LocalTrack> {
    let ssrc = random_ssrc();
    let track = Arc::new(TrackLocalStaticSample::new(
        Instant::now(),
        MediaStreamTrack::new(
            stream_id.to_owned(),
            format!("{stream_id}-track"),
            stream_id.to_owned(),
            kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec,
                ..Default::default()
            }],
        ),
    )?);
    let sender = pc
        .add_track(Arc::clone(&track) as Arc<dyn TrackLocal>)
        .await
        .with_context(|| format!("cannot add the track of {stream_id}"))?;
    Ok(LocalTrack {
        track,
        sender,
        ssrc,
    })
}

/// Adds a display's VP8 track to `pc`, in the stream `stream_id`.
pub async fn add_track(pc: &impl PeerConnection, stream_id: &str) -> Result<LocalTrack> {
    let codec = RTCRtpCodec {
        mime_type: MIME_TYPE_VP8.to_owned(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: String::new(),
        rtcp_feedback: vec![],
    };
    add_local_track(pc, stream_id, RtpCodecKind::Video, codec).await
}

/// Sends the clip on the track, looping, one frame per frame duration,
/// from its first (key)frame, until writing fails (the peer closed) or
/// the task is dropped. A keyframe request makes the next frame sent the
/// clip's next keyframe.
pub async fn play(video: LocalTrack, clip: Arc<Clip>) -> Result<()> {
    let payload_type = video.payload_type().await?;
    let mut ticker = tokio::time::interval(clip.frame_duration);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next = 0;
    // Until the track reports no more events (it was unbound).
    let mut listening = true;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                video
                    .write(payload_type, clip.frames[next].clone(), clip.frame_duration)
                    .await?;
                next = (next + 1) % clip.frames.len();
            }
            requested = video.keyframe_request(), if listening => match requested {
                Some(()) => {
                    let skipped_from = next;
                    next = clip.keyframe_from(next);
                    info!(skipped_from, keyframe = next, "keyframe request");
                }
                None => {
                    debug!("no more events from the video track");
                    listening = false;
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_pattern_is_640_by_360_at_30_fps_with_a_keyframe_every_second() {
        let clip = Clip::from_ivf(TEST_PATTERN).unwrap();
        assert_eq!((clip.width, clip.height), (640, 360));
        assert_eq!(clip.frame_duration, Duration::from_secs_f64(1.0 / 30.0));
        assert_eq!(clip.frames.len(), 60);
        let keyframes: Vec<usize> = (0..clip.frames.len())
            .filter(|&n| is_keyframe(&clip.frames[n]))
            .collect();
        assert_eq!(keyframes, [0, 30]);
        assert_eq!(clip.keyframes, [0, 30]);
        assert_eq!(clip.keyframe_from(0), 0);
        assert_eq!(clip.keyframe_from(1), 30);
        assert_eq!(clip.keyframe_from(30), 30);
        assert_eq!(clip.keyframe_from(31), 0);
    }

    #[test]
    fn a_clip_must_be_vp8_ivf_starting_with_a_keyframe() {
        assert!(Clip::from_ivf(b"not ivf").is_err());
        let mut no_key = TEST_PATTERN.to_vec();
        // The first frame's tag byte sits after the 32-byte file header and
        // the 12-byte frame header.
        no_key[44] |= 1;
        assert!(Clip::from_ivf(&no_key).is_err());
    }
}
