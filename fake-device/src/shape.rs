//! What makes this device look like a Cuttlefish device to Cuttlefish's
//! web client: the `device_info` it registers with, and the displays and
//! audio streams that follow from it.
//!
//! Cuttlefish's client reads `hardware` (an object; without it the page
//! reports no connection), `custom_control_panel_buttons`, `audio_streams`
//! ({stream_id}), `touchpads` and `displays` ({stream_id, x_res, y_res,
//! dpi}), and draws a video only for a media stream whose id is a
//! display's (`display_0` … `display_15`).

use anyhow::{Result, bail, ensure};
use serde_json::{Value, json};

/// The most displays Cuttlefish's client draws.
pub const MAX_DISPLAYS: usize = 16;

/// The resolution of a display nobody described: a phone's portrait
/// screen, as Cuttlefish's default device has.
const DEFAULT_RESOLUTION: (u32, u32) = (720, 1280);
const DEFAULT_DPI: u32 = 320;

/// A display: its media stream id and resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Display {
    pub stream_id: String,
    pub width: u32,
    pub height: u32,
}

/// The media a device's `device_info` promises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    pub displays: Vec<Display>,
    /// The stream id of each audio stream.
    pub audio_streams: Vec<String>,
}

/// The `device_info` of a Cuttlefish device with `displays` displays of
/// 720×1280 and one audio stream.
pub fn default_info(displays: usize) -> Value {
    let (width, height) = DEFAULT_RESOLUTION;
    let displays: Vec<Value> = (0..displays)
        .map(|n| {
            json!({
                "stream_id": format!("display_{n}"),
                "x_res": width,
                "y_res": height,
                "dpi": DEFAULT_DPI,
                "is_touch": true,
            })
        })
        .collect();
    json!({
        "hardware": {"cpus": 2, "memory_mb": 2048, "gpu_mode": "none"},
        "custom_control_panel_buttons": [],
        "audio_streams": [{"stream_id": "audio_0"}],
        "touchpads": [],
        "displays": displays,
        "mouse_enabled": false,
    })
}

/// The displays and audio streams `info` describes. A display without a
/// `stream_id` is `display_N` by its place, as Cuttlefish's client names
/// it.
pub fn shape_of(info: &Value) -> Result<Shape> {
    let mut displays = Vec::new();
    if let Some(listed) = info.get("displays") {
        let Some(listed) = listed.as_array() else {
            bail!("displays must be an array");
        };
        ensure!(
            listed.len() <= MAX_DISPLAYS,
            "{} displays: Cuttlefish's client draws at most {MAX_DISPLAYS}",
            listed.len()
        );
        for (n, display) in listed.iter().enumerate() {
            let dimension = |key: &str| {
                display
                    .get(key)
                    .and_then(Value::as_u64)
                    .and_then(|v| u32::try_from(v).ok())
                    .filter(|&v| (16..=8192).contains(&v))
            };
            let (Some(width), Some(height)) = (dimension("x_res"), dimension("y_res")) else {
                bail!("display {n} needs x_res and y_res, each 16 to 8192");
            };
            let stream_id = match display.get("stream_id") {
                None => format!("display_{n}"),
                Some(Value::String(id)) if !id.is_empty() => id.clone(),
                Some(_) => bail!("display {n}: stream_id must be a non-empty string"),
            };
            displays.push(Display {
                stream_id,
                width,
                height,
            });
        }
    }
    let mut audio_streams = Vec::new();
    if let Some(listed) = info.get("audio_streams") {
        let Some(listed) = listed.as_array() else {
            bail!("audio_streams must be an array");
        };
        for (n, stream) in listed.iter().enumerate() {
            match stream.get("stream_id") {
                Some(Value::String(id)) if !id.is_empty() => audio_streams.push(id.clone()),
                _ => bail!("audio stream {n} needs a stream_id"),
            }
        }
    }
    Ok(Shape {
        displays,
        audio_streams,
    })
}

/// The fields Cuttlefish's client needs that `info` lacks (or has in
/// another type): with any of them missing it shows no device.
pub fn missing_for_cuttlefish(info: &Value) -> Vec<&'static str> {
    let mut missing = Vec::new();
    if !info.get("hardware").is_some_and(Value::is_object) {
        missing.push("hardware (an object)");
    }
    for key in [
        "custom_control_panel_buttons",
        "audio_streams",
        "touchpads",
        "displays",
    ] {
        if !info.get(key).is_some_and(Value::is_array) {
            missing.push(match key {
                "custom_control_panel_buttons" => "custom_control_panel_buttons (an array)",
                "audio_streams" => "audio_streams (an array)",
                "touchpads" => "touchpads (an array)",
                _ => "displays (an array)",
            });
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_a_cuttlefish_device_with_its_displays_and_audio() {
        let info = default_info(2);
        assert!(missing_for_cuttlefish(&info).is_empty());
        let shape = shape_of(&info).unwrap();
        assert_eq!(
            shape.displays,
            [
                Display {
                    stream_id: "display_0".into(),
                    width: 720,
                    height: 1280
                },
                Display {
                    stream_id: "display_1".into(),
                    width: 720,
                    height: 1280
                },
            ]
        );
        assert_eq!(shape.audio_streams, ["audio_0"]);
    }

    #[test]
    fn the_fixture_of_a_real_device_reads_as_two_displays_and_one_audio_stream() {
        let register: Value = serde_json::from_str(include_str!(
            "../../protocol/tests/cuttlefish-register.json"
        ))
        .unwrap();
        let info = &register["device_info"];
        assert!(missing_for_cuttlefish(info).is_empty());
        let shape = shape_of(info).unwrap();
        assert_eq!(shape.displays.len(), 2);
        assert_eq!(shape.audio_streams, ["audio_0"]);
    }

    #[test]
    fn displays_without_a_stream_id_are_named_by_place_and_bad_ones_are_refused() {
        let shape = shape_of(&json!({"displays": [{"x_res": 640, "y_res": 480}]})).unwrap();
        assert_eq!(shape.displays[0].stream_id, "display_0");
        assert!(shape.audio_streams.is_empty());
        for (info, why) in [
            (json!({"displays": {}}), "must be an array"),
            (json!({"displays": [{"x_res": 640}]}), "x_res and y_res"),
            (
                json!({"displays": [{"x_res": 1, "y_res": 1}]}),
                "16 to 8192",
            ),
            (
                json!({"displays": [{"x_res": 640, "y_res": 480, "stream_id": 3}]}),
                "stream_id",
            ),
            (json!({"audio_streams": [{}]}), "needs a stream_id"),
        ] {
            let error = shape_of(&info).unwrap_err().to_string();
            assert!(error.contains(why), "{info}: {error}");
        }
    }

    #[test]
    fn the_readme_example_lacks_what_cuttlefish_needs() {
        let missing = missing_for_cuttlefish(&json!({"displays": []}));
        assert!(missing.contains(&"hardware (an object)"), "{missing:?}");
    }
}
