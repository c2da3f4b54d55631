//! A real-time VP8 encoder: libvpx, through the `env-libvpx-sys`
//! bindings, behind the few safe calls the live screens need.
//!
//! This is the one module of the workspace with `unsafe` code: the
//! bindings are raw FFI, and the safe crate built on them (`vpx-rs`) needs
//! libvpx 1.13, newer than Debian bookworm's 1.12. What is unsafe here is
//! the handful of libvpx calls, each with what keeps it sound beside it.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::mem::MaybeUninit;
use std::os::raw::{c_int, c_long, c_ulong};
use std::ptr;

use bytes::Bytes;
use vpx_sys::vp8e_enc_control_id::{
    VP8E_SET_CPUUSED, VP8E_SET_SCREEN_CONTENT_MODE, VP8E_SET_STATIC_THRESHOLD,
};
use vpx_sys::vpx_codec_cx_pkt_kind::VPX_CODEC_CX_FRAME_PKT;
use vpx_sys::vpx_codec_err_t::VPX_CODEC_OK;
use vpx_sys::vpx_img_fmt::VPX_IMG_FMT_I420;

use crate::screen::Picture;

// The encoder's tuning for a screen of flat colours and text that barely
// changes between frames, on machines whose cores are shared with the
// device's peers and the tests around it. Measured with one client on a
// 720×1280 display (release build): cpu-used 10 alone took 28% of a core,
// these three together 14%.

/// libvpx's VP8 speed for real-time encoding, -16 (best) to 16 (fastest).
const CPU_USED: c_int = 16;
/// Blocks that changed less than this (a sum of absolute differences) are
/// skipped: most of the screen, from frame to frame.
const STATIC_THRESHOLD: c_int = 1000;
/// libvpx's screen content mode (1: on, without frame dropping).
const SCREEN_CONTENT: c_int = 1;

/// Something libvpx refused, in its own words.
#[derive(Debug, thiserror::Error)]
#[error("libvpx: {what}: {reason}")]
pub struct Error {
    what: &'static str,
    reason: String,
}

/// How to encode.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub width: u32,
    pub height: u32,
    pub frames_per_second: u32,
    pub kilobits_per_second: u32,
    /// The longest run of frames without a keyframe.
    pub keyframe_every: u32,
}

/// One encoded frame.
#[derive(Debug, Clone)]
pub struct Frame {
    pub data: Bytes,
    pub keyframe: bool,
}

/// A VP8 encoder for pictures of one size, one frame in, its frame out
/// (no look-ahead, constant bitrate, as a screen streamed live wants).
pub struct Encoder {
    // Boxed: libvpx is handed its address at init and keeps using it, so
    // it must not move.
    context: Box<vpx_sys::vpx_codec_ctx_t>,
    settings: Settings,
    next_pts: i64,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("settings", &self.settings)
            .field("next_pts", &self.next_pts)
            .finish_non_exhaustive()
    }
}

/// libvpx's text for `error`.
fn describe(error: vpx_sys::vpx_codec_err_t) -> String {
    // SAFETY: vpx_codec_err_to_string returns a static NUL-terminated
    // string for every value, known or not.
    unsafe { CStr::from_ptr(vpx_sys::vpx_codec_err_to_string(error)) }
        .to_string_lossy()
        .into_owned()
}

impl Encoder {
    pub fn new(settings: Settings) -> Result<Self, Error> {
        let fail = |what, reason: String| Error { what, reason };
        if settings.width == 0 || settings.height == 0 || settings.frames_per_second == 0 {
            return Err(fail("settings", format!("{settings:?}")));
        }
        // SAFETY: vpx_codec_vp8_cx returns a pointer to libvpx's static
        // interface; vpx_codec_enc_config_default fills every field of the
        // configuration, which is read only once it said so.
        let interface = unsafe { vpx_sys::vpx_codec_vp8_cx() };
        let mut config = MaybeUninit::<vpx_sys::vpx_codec_enc_cfg_t>::uninit();
        let status =
            unsafe { vpx_sys::vpx_codec_enc_config_default(interface, config.as_mut_ptr(), 0) };
        if status != VPX_CODEC_OK {
            return Err(fail("default configuration", describe(status)));
        }
        let mut config = unsafe { config.assume_init() };
        config.g_w = settings.width;
        config.g_h = settings.height;
        config.g_timebase.num = 1;
        config.g_timebase.den = settings.frames_per_second as c_int;
        config.g_threads = 1;
        config.g_lag_in_frames = 0;
        config.g_error_resilient = vpx_sys::VPX_ERROR_RESILIENT_DEFAULT;
        config.g_pass = vpx_sys::vpx_enc_pass::VPX_RC_ONE_PASS;
        config.rc_end_usage = vpx_sys::vpx_rc_mode::VPX_CBR;
        config.rc_target_bitrate = settings.kilobits_per_second;
        config.kf_mode = vpx_sys::vpx_kf_mode::VPX_KF_AUTO;
        config.kf_max_dist = settings.keyframe_every;

        // SAFETY: all zeroes is how libvpx expects a context before init.
        let mut context: Box<vpx_sys::vpx_codec_ctx_t> = Box::new(unsafe { std::mem::zeroed() });
        // SAFETY: the context is boxed (it stays put) and the configuration
        // outlives the call; the ABI version is the one the bindings were
        // made for, which libvpx checks.
        let status = unsafe {
            vpx_sys::vpx_codec_enc_init_ver(
                &mut *context,
                interface,
                &config,
                0,
                vpx_sys::VPX_ENCODER_ABI_VERSION as c_int,
            )
        };
        if status != VPX_CODEC_OK {
            return Err(fail("encoder init", describe(status)));
        }
        let mut encoder = Self {
            context,
            settings,
            next_pts: 0,
        };
        let controls = [
            (VP8E_SET_CPUUSED, "cpu-used", CPU_USED),
            (
                VP8E_SET_STATIC_THRESHOLD,
                "static-threshold",
                STATIC_THRESHOLD,
            ),
            (
                VP8E_SET_SCREEN_CONTENT_MODE,
                "screen-content-mode",
                SCREEN_CONTENT,
            ),
        ];
        for (control, name, value) in controls {
            // SAFETY: the context was initialised above; each of these
            // controls takes one int.
            let status = unsafe {
                vpx_sys::vpx_codec_control_(&mut *encoder.context, control as c_int, value)
            };
            if status != VPX_CODEC_OK {
                return Err(fail(name, describe(status)));
            }
        }
        Ok(encoder)
    }

    /// Encodes `picture` (of the encoder's size) as the next frame; a
    /// keyframe when `keyframe` is set. None when the rate control drops
    /// the frame.
    pub fn encode(&mut self, picture: &Picture, keyframe: bool) -> Result<Option<Frame>, Error> {
        let fail = |what, reason: String| Error { what, reason };
        let Settings { width, height, .. } = self.settings;
        if (picture.width, picture.height) != (width, height)
            || picture.data.len() != Picture::i420_len(width, height)
        {
            return Err(fail(
                "encode",
                format!(
                    "a {}x{} picture for a {width}x{height} encoder",
                    picture.width, picture.height
                ),
            ));
        }
        // SAFETY: vpx_img_wrap only describes the buffer (I420, rows packed
        // with alignment 1, which is how Picture lays it out, checked
        // above); it copies nothing and the image lives only during this
        // call, while `picture` is borrowed. libvpx reads the planes and
        // never writes them, so handing it a pointer from a shared
        // reference is sound.
        let mut image = MaybeUninit::<vpx_sys::vpx_image_t>::zeroed();
        let wrapped = unsafe {
            vpx_sys::vpx_img_wrap(
                image.as_mut_ptr(),
                VPX_IMG_FMT_I420,
                width,
                height,
                1,
                picture.data.as_ptr().cast_mut(),
            )
        };
        if wrapped.is_null() {
            return Err(fail("wrap picture", "refused".into()));
        }
        let flags = if keyframe {
            c_long::from(vpx_sys::VPX_EFLAG_FORCE_KF)
        } else {
            0
        };
        // SAFETY: an initialised context and a valid image, both alive for
        // the call.
        let status = unsafe {
            vpx_sys::vpx_codec_encode(
                &mut *self.context,
                wrapped,
                self.next_pts,
                1,
                flags,
                c_ulong::from(vpx_sys::VPX_DL_REALTIME),
            )
        };
        self.next_pts += 1;
        if status != VPX_CODEC_OK {
            return Err(fail("encode", self.last_error(status)));
        }
        // With no look-ahead and no partitions, a frame in gives at most
        // one frame packet out; other kinds of packet (statistics) are
        // skipped.
        let mut frame = None;
        let mut iterator: vpx_sys::vpx_codec_iter_t = ptr::null();
        loop {
            // SAFETY: the packet and its buffer belong to the context and
            // stay valid until the next call on it; the bytes are copied
            // out before then.
            let packet =
                unsafe { vpx_sys::vpx_codec_get_cx_data(&mut *self.context, &mut iterator) };
            if packet.is_null() {
                break;
            }
            let packet = unsafe { &*packet };
            if packet.kind != VPX_CODEC_CX_FRAME_PKT {
                continue;
            }
            let out = unsafe { packet.data.frame };
            let data = unsafe { std::slice::from_raw_parts(out.buf.cast::<u8>(), out.sz as usize) };
            frame = Some(Frame {
                data: Bytes::copy_from_slice(data),
                keyframe: out.flags & vpx_sys::VPX_FRAME_IS_KEY != 0,
            });
        }
        Ok(frame)
    }

    /// libvpx's detail for the last failure on this context, or `status`'s
    /// text.
    fn last_error(&mut self, status: vpx_sys::vpx_codec_err_t) -> String {
        // SAFETY: the context is initialised; the detail is NUL-terminated
        // and owned by the context, or null.
        let detail = unsafe { vpx_sys::vpx_codec_error_detail(&mut *self.context) };
        if detail.is_null() {
            return describe(status);
        }
        let detail = unsafe { CStr::from_ptr(detail) }.to_string_lossy();
        format!("{}: {detail}", describe(status))
    }
}

impl Drop for Encoder {
    fn drop(&mut self) {
        // SAFETY: the context was initialised in `new` and is destroyed
        // once, here.
        unsafe {
            vpx_sys::vpx_codec_destroy(&mut *self.context);
        }
    }
}

/// libvpx's version, e.g. "v1.12.0".
pub fn libvpx_version() -> String {
    // SAFETY: a static NUL-terminated string.
    unsafe { CStr::from_ptr(vpx_sys::vpx_codec_version_str()) }
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::screen::{self, State, Touch};

    /// A VP8 decoder, to check what the encoder makes.
    struct Decoder(Box<vpx_sys::vpx_codec_ctx_t>);

    impl Decoder {
        fn new() -> Self {
            let mut context: Box<vpx_sys::vpx_codec_ctx_t> =
                Box::new(unsafe { std::mem::zeroed() });
            let status = unsafe {
                vpx_sys::vpx_codec_dec_init_ver(
                    &mut *context,
                    vpx_sys::vpx_codec_vp8_dx(),
                    ptr::null(),
                    0,
                    vpx_sys::VPX_DECODER_ABI_VERSION as c_int,
                )
            };
            assert_eq!(status, VPX_CODEC_OK);
            Self(context)
        }

        /// Decodes `frame`; its luma plane and the plane's stride.
        fn decode(&mut self, frame: &[u8]) -> (Vec<u8>, usize) {
            let status = unsafe {
                vpx_sys::vpx_codec_decode(
                    &mut *self.0,
                    frame.as_ptr(),
                    frame.len() as _,
                    ptr::null_mut(),
                    0,
                )
            };
            assert_eq!(status, VPX_CODEC_OK, "{}", describe(status));
            let mut iterator: vpx_sys::vpx_codec_iter_t = ptr::null();
            let image = unsafe { vpx_sys::vpx_codec_get_frame(&mut *self.0, &mut iterator) };
            assert!(!image.is_null(), "no picture decoded");
            let image = unsafe { &*image };
            let stride = image.stride[0] as usize;
            let plane =
                unsafe { std::slice::from_raw_parts(image.planes[0], stride * image.d_h as usize) };
            (plane.to_vec(), stride)
        }
    }

    impl Drop for Decoder {
        fn drop(&mut self) {
            unsafe {
                vpx_sys::vpx_codec_destroy(&mut *self.0);
            }
        }
    }

    fn settings() -> Settings {
        Settings {
            width: 320,
            height: 240,
            frames_per_second: 30,
            kilobits_per_second: 300,
            keyframe_every: 90,
        }
    }

    #[test]
    fn frames_decode_to_the_picture_and_a_keyframe_comes_when_asked() {
        let mut encoder = Encoder::new(settings()).unwrap();
        let mut decoder = Decoder::new();
        let mut state = State::default();
        let mut keyframes = Vec::new();
        for n in 0..12 {
            if n == 6 {
                state.press(Touch { x: 200, y: 180 });
            }
            let picture = screen::draw("cvd-1", 0, 320, 240, &state);
            let frame = encoder.encode(&picture, n == 9).unwrap().expect("a frame");
            // VP8's frame tag agrees with libvpx's flag.
            assert_eq!(frame.data[0] & 1 == 0, frame.keyframe);
            if frame.keyframe {
                keyframes.push(n);
            }
            let (luma, stride) = decoder.decode(&frame.data);
            let at = |x: u32, y: u32| luma[y as usize * stride + x as usize];
            // Lossy, so near: the background, and the marker once the
            // touch landed.
            let background = picture.luma(300, 20);
            assert!(
                at(300, 20).abs_diff(background) < 12,
                "frame {n}: {} vs {background}",
                at(300, 20)
            );
            let marker = picture.luma(200, 180);
            assert!(
                at(200, 180).abs_diff(marker) < 40,
                "frame {n}: {} vs {marker}",
                at(200, 180)
            );
        }
        assert_eq!(keyframes, [0, 9]);
    }

    #[test]
    fn a_picture_of_another_size_is_refused() {
        let mut encoder = Encoder::new(settings()).unwrap();
        let picture = screen::draw("cvd-1", 0, 640, 480, &State::default());
        let error = encoder.encode(&picture, false).unwrap_err();
        assert!(error.to_string().contains("640x480"), "{error}");
    }

    #[test]
    fn settings_libvpx_cannot_use_are_refused() {
        let no_width = Settings {
            width: 0,
            ..settings()
        };
        assert!(Encoder::new(no_width).is_err());
        let too_wide = Settings {
            width: 20_000,
            ..settings()
        };
        let error = Encoder::new(too_wide).unwrap_err();
        assert!(error.to_string().contains("encoder init"), "{error}");
    }

    #[test]
    fn the_version_is_known() {
        assert!(libvpx_version().starts_with('v'), "{}", libvpx_version());
    }
}
