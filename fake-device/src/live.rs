//! The device's screens, drawn and VP8-encoded live: one encoder per
//! display, on a thread of its own, shared by every client watching it,
//! as a real device's screen is one picture however many look at it.
//!
//! A display encodes only while someone watches; a new watcher, a watcher
//! that fell behind, and a receiver's keyframe request (PLI or FIR) each
//! make the next frame a keyframe. Touches on `input-channel` land in the
//! display's [`State`], so the next frame marks them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use tokio::sync::broadcast;
use tracing::{debug, info, warn};

use crate::screen::{self, State, Touch};
use crate::shape::Shape;
use crate::video::LocalTrack;
use crate::vp8;

pub const FRAMES_PER_SECOND: u32 = 30;
/// A keyframe at least this often, for a receiver that lost one and did
/// not ask.
const KEYFRAME_EVERY: u32 = 3 * FRAMES_PER_SECOND;
/// Frames a slow watcher may fall behind before it skips to a keyframe.
const FRAMES_QUEUED: usize = 8;
/// How often an idle display's thread looks whether it is watched.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// The bitrate for a display: about 1 kbit/s per 1000 pixels (a 720×1280
/// screen gets 921 kbit/s), at least 200. The picture is flat colour and
/// text, so most frames use far less.
fn kilobits_per_second(width: u32, height: u32) -> u32 {
    (width * height / 1000).max(200)
}

/// Every display of the device.
#[derive(Debug)]
pub struct Screens {
    displays: Vec<Arc<Display>>,
}

impl Screens {
    /// Starts an encoder for each display of `shape`; fails if libvpx
    /// refuses one (a size VP8 cannot encode).
    pub fn start(device_id: &str, shape: &Shape) -> Result<Self> {
        let displays = shape
            .displays
            .iter()
            .enumerate()
            .map(|(index, display)| {
                Display::start(
                    device_id,
                    index,
                    &display.stream_id,
                    display.width,
                    display.height,
                )
                .with_context(|| {
                    format!(
                        "cannot encode {} at {}x{}",
                        display.stream_id, display.width, display.height
                    )
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self { displays })
    }

    /// The display whose stream id (Cuttlefish's `device_label`) is `label`.
    pub fn display(&self, label: &str) -> Option<&Arc<Display>> {
        self.displays.iter().find(|d| d.stream_id == label)
    }

    /// How many presses the display `label` received (0 for none such).
    pub fn touches(&self, label: &str) -> u64 {
        self.display(label).map_or(0, |display| {
            display
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .touches
        })
    }

    /// A touch on the display `label`: down (or dragging) at `at`, or up.
    pub fn touch(&self, label: &str, at: Touch, down: bool) {
        let Some(display) = self.display(label) else {
            debug!(label, "a touch on a display this device does not have");
            return;
        };
        let mut state = display.state.lock().unwrap_or_else(PoisonError::into_inner);
        if down {
            state.press(at);
        } else {
            state.release();
        }
    }
}

/// One display: its picture's state, and its encoded frames for whoever
/// watches.
#[derive(Debug)]
pub struct Display {
    stream_id: String,
    state: Mutex<State>,
    frames: broadcast::Sender<vp8::Frame>,
    keyframe_wanted: AtomicBool,
    /// Frames encoded so far.
    encoded: AtomicU64,
    /// Wakes the encoder thread when the first watcher comes.
    watched: (Mutex<()>, Condvar),
}

impl Display {
    fn start(
        device_id: &str,
        index: usize,
        stream_id: &str,
        width: u32,
        height: u32,
    ) -> Result<Arc<Self>> {
        let display = Arc::new(Self {
            stream_id: stream_id.to_owned(),
            state: Mutex::new(State::default()),
            frames: broadcast::channel(FRAMES_QUEUED).0,
            keyframe_wanted: AtomicBool::new(true),
            encoded: AtomicU64::new(0),
            watched: (Mutex::new(()), Condvar::new()),
        });
        let settings = vp8::Settings {
            width,
            height,
            frames_per_second: FRAMES_PER_SECOND,
            kilobits_per_second: kilobits_per_second(width, height),
            keyframe_every: KEYFRAME_EVERY,
        };
        // The encoder is made on its thread (libvpx's context stays on
        // one thread); whether it could be is sent back.
        let (ready, made) = std::sync::mpsc::sync_channel(1);
        let device_id = device_id.to_owned();
        let shared = Arc::clone(&display);
        std::thread::Builder::new()
            .name(format!("encode-{stream_id}"))
            .spawn(move || match vp8::Encoder::new(settings) {
                Ok(encoder) => {
                    let _ = ready.send(Ok(()));
                    shared.encode(encoder, &device_id, index, width, height);
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
            })
            .context("cannot start an encoder thread")?;
        made.recv().context("the encoder thread ended")??;
        Ok(display)
    }

    /// Draws and encodes a frame every 1/30 s while anyone watches; waits
    /// while nobody does. Runs for the life of the process.
    fn encode(
        &self,
        mut encoder: vp8::Encoder,
        device_id: &str,
        index: usize,
        width: u32,
        height: u32,
    ) {
        let frame_time = Duration::from_secs(1) / FRAMES_PER_SECOND;
        let mut next = Instant::now();
        loop {
            if self.frames.receiver_count() == 0 {
                let (lock, wake) = &self.watched;
                let guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
                let _ = wake.wait_timeout(guard, IDLE_CHECK);
                next = Instant::now();
                continue;
            }
            let state = self
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            let picture = screen::draw(device_id, index, width, height, &state);
            let keyframe = self.keyframe_wanted.swap(false, Ordering::Relaxed);
            match encoder.encode(&picture, keyframe) {
                Ok(Some(frame)) => {
                    self.encoded.fetch_add(1, Ordering::Relaxed);
                    let _ = self.frames.send(frame);
                }
                // The rate control skipped it; a wanted keyframe waits for
                // the next.
                Ok(None) => {
                    if keyframe {
                        self.keyframe_wanted.store(true, Ordering::Relaxed);
                    }
                }
                Err(e) => warn!(stream_id = %self.stream_id, error = %e, "frame not encoded"),
            }
            next += frame_time;
            let now = Instant::now();
            match next.checked_duration_since(now) {
                Some(wait) => std::thread::sleep(wait),
                // Behind (a busy machine): go on from now rather than race
                // to catch up.
                None => next = now,
            }
        }
    }

    /// Starts watching: frames from the next keyframe on.
    fn watch(&self) -> broadcast::Receiver<vp8::Frame> {
        let frames = self.frames.subscribe();
        self.request_keyframe();
        let (lock, wake) = &self.watched;
        let _guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
        wake.notify_all();
        frames
    }

    fn request_keyframe(&self) {
        self.keyframe_wanted.store(true, Ordering::Relaxed);
    }
}

/// Sends `display`'s live frames on `video` until writing fails (the peer
/// closed) or the task is dropped. The first frame sent is a keyframe; a
/// receiver's keyframe request is passed to the encoder.
pub async fn play(video: LocalTrack, display: Arc<Display>) -> Result<()> {
    let payload_type = video.payload_type().await?;
    let frame_time = Duration::from_secs(1) / FRAMES_PER_SECOND;
    let mut frames = display.watch();
    let mut waiting_for_keyframe = true;
    // Until the track reports no more events (it was unbound).
    let mut listening = true;
    loop {
        tokio::select! {
            frame = frames.recv() => match frame {
                Ok(frame) => {
                    if waiting_for_keyframe && !frame.keyframe {
                        continue;
                    }
                    waiting_for_keyframe = false;
                    video.write(payload_type, frame.data, frame_time).await?;
                }
                Err(broadcast::error::RecvError::Lagged(skipped)) => {
                    info!(skipped, "fell behind the screen; resuming at a keyframe");
                    waiting_for_keyframe = true;
                    display.request_keyframe();
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            requested = video.keyframe_request(), if listening => match requested {
                Some(()) => {
                    let stream_id = &display.stream_id;
                    info!(%stream_id, "keyframe request");
                    display.request_keyframe();
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
    use crate::shape;

    #[test]
    fn each_display_encodes_only_while_watched_and_starts_a_watcher_at_a_keyframe() {
        let shape = shape::shape_of(&shape::default_info(2)).unwrap();
        let screens = Screens::start("cvd-1", &shape).unwrap();
        let first = screens.display("display_0").unwrap();
        assert_eq!(first.frames.receiver_count(), 0);
        let mut frames = first.watch();
        let frame = frames.blocking_recv().unwrap();
        assert!(frame.keyframe, "a new watcher's first frame is a keyframe");
        // Later frames are deltas until a keyframe is asked for.
        let later = frames.blocking_recv().unwrap();
        assert!(!later.keyframe);
        first.request_keyframe();
        let asked = (0..3)
            .map(|_| frames.blocking_recv().unwrap())
            .any(|f| f.keyframe);
        assert!(asked, "a requested keyframe comes within three frames");
        // The other display is nobody's: it encodes nothing.
        let idle = screens.display("display_1").unwrap();
        assert_eq!(idle.encoded.load(Ordering::Relaxed), 0);
        assert!(first.encoded.load(Ordering::Relaxed) >= 3);
    }

    #[test]
    fn touches_land_on_their_display_only() {
        let shape = shape::shape_of(&shape::default_info(2)).unwrap();
        let screens = Screens::start("cvd-1", &shape).unwrap();
        screens.touch("display_1", Touch { x: 10, y: 20 }, true);
        screens.touch("display_1", Touch { x: 10, y: 20 }, false);
        screens.touch("display_9", Touch { x: 1, y: 1 }, true);
        let state = |label| {
            screens
                .display(label)
                .unwrap()
                .state
                .lock()
                .unwrap()
                .clone()
        };
        assert_eq!(state("display_1").touches, 1);
        assert_eq!(state("display_1").last_touch, Some(Touch { x: 10, y: 20 }));
        assert_eq!(state("display_0").touches, 0);
    }

    #[test]
    fn odd_and_extreme_sizes_encode() {
        for (width, height) in [(721, 1281), (16, 16), (8192, 16)] {
            let mut info = shape::default_info(1);
            info["displays"][0]["x_res"] = width.into();
            info["displays"][0]["y_res"] = height.into();
            let shape = shape::shape_of(&info).unwrap();
            let screens = Screens::start("cvd-1", &shape).unwrap();
            let mut frames = screens.display("display_0").unwrap().watch();
            assert!(frames.blocking_recv().unwrap().keyframe, "{width}x{height}");
        }
    }

    #[test]
    fn bitrates_follow_the_size() {
        assert_eq!(kilobits_per_second(720, 1280), 921);
        assert_eq!(kilobits_per_second(16, 16), 200);
    }
}
