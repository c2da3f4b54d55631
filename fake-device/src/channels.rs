//! What the device does on each data channel. Cuttlefish's labels get
//! what a device would do, or silence: never an echo, which misleads
//! Cuttlefish's client (an echoed adb CONNECT reads as an adb connection).
//! `echo`, and any label Cuttlefish does not use, echoes, for our own
//! tools.
//!
//! Input (`input-channel`: Cuttlefish's JSON touches, mouse and keys) is
//! counted, logged, drawn on the display it touched (the live screens
//! mark the last touch), and reported on this device's own channel
//! [`INPUT_REPORTS`], so a tool or a page can see that its input arrived.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};

use crate::live::Screens;
use crate::screen::Touch;
use tokio::sync::watch;
use tracing::{debug, info, warn};
use webrtc::data_channel::{DataChannel, DataChannelEvent};

/// The channel the device opens, as a Cuttlefish device does; until it is
/// open, Cuttlefish's client holds every control message back.
pub const CONTROL: &str = "device-control";
/// The channel the device opens for our own tools: everything comes back.
pub const ECHO: &str = "echo";
/// The channel the device opens to report each input it received, as
/// `{"count": N, "input": {…the message…}}`. Cuttlefish's client ignores
/// a channel it did not ask for.
pub const INPUT_REPORTS: &str = "fake-device-input";

/// Cuttlefish's channel labels that a real device reads and this one
/// cannot serve (no adb, bluetooth, camera, sensors, location or lights
/// here): what arrives on them is logged and dropped.
const SILENT: [&str; 8] = [
    "adb-channel",
    "bluetooth-channel",
    "camera-data-channel",
    "sensors-channel",
    "location-channel",
    "kml-locations-channel",
    "gpx-locations-channel",
    "lights-channel",
];

const INPUT: &str = "input-channel";

/// What a channel with this label is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Echo,
    Input,
    Control,
    Silent,
    /// Our report channel: the device writes, it reads nothing.
    Reports,
}

fn role(label: &str) -> Role {
    match label {
        INPUT => Role::Input,
        CONTROL => Role::Control,
        INPUT_REPORTS => Role::Reports,
        label if SILENT.contains(&label) => Role::Silent,
        _ => Role::Echo,
    }
}

/// One client session's input: how many messages came, where the
/// reports go once their channel is open, and the screens touches show on.
pub struct Inputs {
    count: AtomicU64,
    reports: watch::Sender<Option<Arc<dyn DataChannel>>>,
    screens: Option<Arc<Screens>>,
}

impl Inputs {
    pub fn new(screens: Option<Arc<Screens>>) -> Self {
        Self {
            count: AtomicU64::new(0),
            reports: watch::Sender::new(None),
            screens,
        }
    }
}

impl std::fmt::Debug for Inputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inputs")
            .field("count", &self.count())
            .finish_non_exhaustive()
    }
}

impl Inputs {
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// Serves `channel` by its label until it closes.
pub async fn serve(channel: Arc<dyn DataChannel>, inputs: Arc<Inputs>) {
    let label = channel.label().await.unwrap_or_default();
    let role = role(&label);
    while let Some(event) = channel.poll().await {
        match event {
            DataChannelEvent::OnOpen => {
                info!(%label, "data channel open");
                if role == Role::Reports {
                    inputs.reports.send_replace(Some(channel.clone()));
                }
            }
            DataChannelEvent::OnMessage(message) => {
                let served = match role {
                    Role::Echo => echo(&channel, message.is_string, message.data).await,
                    Role::Input => {
                        take_input(&inputs, &message.data).await;
                        Ok(())
                    }
                    Role::Control => {
                        info!(text = %String::from_utf8_lossy(&message.data), "control message");
                        Ok(())
                    }
                    Role::Silent | Role::Reports => {
                        debug!(%label, bytes = message.data.len(), "dropped: not served by a fake device");
                        Ok(())
                    }
                };
                if let Err(e) = served {
                    warn!(%label, error = %e, "data channel write failed");
                    break;
                }
            }
            DataChannelEvent::OnClose => break,
            _ => {}
        }
    }
    debug!(%label, "data channel closed");
}

async fn echo(
    channel: &Arc<dyn DataChannel>,
    is_string: bool,
    data: bytes::BytesMut,
) -> webrtc::error::Result<()> {
    if is_string && let Ok(text) = std::str::from_utf8(&data) {
        return channel.send_text(text).await;
    }
    channel.send(data).await
}

/// Counts and logs one input message, and reports it.
async fn take_input(inputs: &Inputs, data: &[u8]) {
    let Ok(input) = serde_json::from_slice::<Value>(data) else {
        warn!(bytes = data.len(), "input that is not JSON; ignored");
        return;
    };
    let count = inputs.count.fetch_add(1, Ordering::Relaxed) + 1;
    let text = |key: &str| input.get(key).and_then(Value::as_str).map(str::to_owned);
    let json = |key: &str| input.get(key).map(Value::to_string).unwrap_or_default();
    let (kind, on, keycode) = (text("type"), text("device_label"), text("keycode"));
    let (x, y, down) = (json("x"), json("y"), json("down"));
    info!(
        count,
        kind = kind.as_deref().unwrap_or("?"),
        display = on.as_deref(),
        x,
        y,
        down,
        keycode = keycode.as_deref(),
        "input"
    );
    if let Some(screens) = &inputs.screens
        && let Some((label, at, down)) = touch_of(&input)
    {
        screens.touch(label, at, down);
    }
    let reports = inputs.reports.borrow().clone();
    if let Some(reports) = reports {
        let report = json!({"count": count, "input": input}).to_string();
        if let Err(e) = reports.send_text(&report).await {
            debug!(error = %e, "input report not sent");
        }
    }
}

/// The display, first point and down state of a touch: Cuttlefish's
/// `multi-touch` (`device_label`, arrays of `x` and `y`) or an older
/// client's `mouse` (`display_label`, numbers).
fn touch_of(input: &Value) -> Option<(&str, Touch, bool)> {
    let coordinate = |key: &str| {
        let value = input.get(key)?;
        let value = value
            .as_array()
            .map_or(Some(value), |points| points.first())?;
        u32::try_from(value.as_i64()?.max(0)).ok()
    };
    let label = match input.get("type")?.as_str()? {
        "multi-touch" => input.get("device_label")?.as_str()?,
        "mouse" => input.get("display_label")?.as_str()?,
        _ => return None,
    };
    let down = input.get("down").and_then(Value::as_i64).unwrap_or(0) != 0;
    let at = Touch {
        x: coordinate("x")?,
        y: coordinate("y")?,
    };
    Some((label, at, down))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touches_are_read_in_both_of_cuttlefishs_shapes() {
        let touch = json!({"type": "multi-touch", "id": [0], "x": [12], "y": [34], "down": 1, "device_label": "display_1"});
        assert_eq!(
            touch_of(&touch),
            Some(("display_1", Touch { x: 12, y: 34 }, true))
        );
        let mouse =
            json!({"type": "mouse", "x": 5, "y": -3, "down": 0, "display_label": "display_0"});
        assert_eq!(
            touch_of(&mouse),
            Some(("display_0", Touch { x: 5, y: 0 }, false))
        );
        for other in [
            json!({"type": "keyboard", "keycode": "KeyA", "event_type": "keydown"}),
            json!({"type": "multi-touch", "x": [], "y": [], "down": 1, "device_label": "display_0"}),
            json!({"type": "multi-touch", "x": [1], "y": [1], "down": 1}),
        ] {
            assert_eq!(touch_of(&other), None, "{other}");
        }
    }

    #[test]
    fn cuttlefish_labels_are_never_echoed_and_our_own_are() {
        for label in SILENT {
            assert_eq!(role(label), Role::Silent, "{label}");
        }
        assert_eq!(role("input-channel"), Role::Input);
        assert_eq!(role("device-control"), Role::Control);
        assert_eq!(role(INPUT_REPORTS), Role::Reports);
        assert_eq!(role("echo"), Role::Echo);
        assert_eq!(role("anything-else"), Role::Echo);
    }
}
