//! What instances write to Redis, as text: the batches of frames one
//! instance publishes to another, the device records the leases hold, and
//! the directory's events. Payloads and `device_info` are raw JSON copied
//! in as they arrived, never re-encoded.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::Arc;

use protocol::RawValue;
use serde::{Deserialize, Serialize};

use crate::core::Json;
use crate::core::cluster::{Incarnation, RemoteDevice, Wire};
use crate::core::registry::Descriptor;

/// An incarnation as it appears in keys and channels: 16 hex digits.
pub fn incarnation_text(incarnation: Incarnation) -> String {
    format!("{incarnation:016x}")
}

fn parse_incarnation(text: &str) -> Option<Incarnation> {
    u64::from_str_radix(text, 16).ok().filter(|&n| n != 0)
}

/// Appends `text` as a JSON string.
fn push_string(out: &mut String, text: &str) {
    // Serializing a str cannot fail.
    out.push_str(&serde_json::to_string(text).unwrap_or_default());
}

/// A batch of frames from `from`, in order, as one published message.
pub fn encode_batch<'a>(from: Incarnation, frames: impl IntoIterator<Item = &'a Wire>) -> String {
    let mut out = String::with_capacity(256);
    let _ = write!(out, r#"{{"from":"{}","frames":["#, incarnation_text(from));
    for (n, frame) in frames.into_iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        match frame {
            Wire::Connect {
                session,
                device_id,
                registration,
            } => {
                let _ = write!(
                    out,
                    r#"{{"k":"connect","s":{session},"r":{registration},"d":"#
                );
                push_string(&mut out, device_id);
                out.push('}');
            }
            Wire::Attached {
                session,
                device_info,
            } => {
                let _ = write!(
                    out,
                    r#"{{"k":"attached","s":{session},"p":{}}}"#,
                    device_info.get()
                );
            }
            Wire::ClientMsg {
                session,
                seq,
                payload,
            } => {
                let _ = write!(
                    out,
                    r#"{{"k":"c","s":{session},"q":{seq},"p":{}}}"#,
                    payload.get()
                );
            }
            Wire::DeviceMsg {
                session,
                seq,
                payload,
            } => {
                let _ = write!(
                    out,
                    r#"{{"k":"d","s":{session},"q":{seq},"p":{}}}"#,
                    payload.get()
                );
            }
            Wire::Leave { session } => {
                let _ = write!(out, r#"{{"k":"leave","s":{session}}}"#);
            }
            Wire::DeviceGone { session } => {
                let _ = write!(out, r#"{{"k":"gone","s":{session}}}"#);
            }
        }
    }
    out.push_str("]}");
    out
}

#[derive(Deserialize)]
struct BatchIn<'a> {
    #[serde(borrow)]
    from: Cow<'a, str>,
    #[serde(borrow)]
    frames: Vec<FrameIn<'a>>,
}

#[derive(Deserialize)]
struct FrameIn<'a> {
    #[serde(borrow)]
    k: Cow<'a, str>,
    s: u64,
    #[serde(default)]
    q: u64,
    #[serde(default)]
    r: u64,
    #[serde(borrow, default)]
    d: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "present")]
    p: Option<&'a RawValue>,
}

/// A field that is there, `null` included (serde's `Option` would read
/// `null` as absent, and `null` is a payload like any other).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Why a published message was not understood.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("not a batch of frames: {0}")]
    Json(#[from] serde_json::Error),
    #[error("a frame of kind {0:?} without what it needs")]
    Incomplete(String),
    #[error("no sender incarnation")]
    NoSender,
}

/// The sender and frames of a published batch.
pub fn decode_batch(text: &str) -> Result<(Incarnation, Vec<Wire>), WireError> {
    let batch: BatchIn<'_> = serde_json::from_str(text)?;
    let from = parse_incarnation(&batch.from).ok_or(WireError::NoSender)?;
    let frames = batch
        .frames
        .into_iter()
        .map(|frame| {
            let incomplete = || WireError::Incomplete(frame.k.to_string());
            let payload = || frame.p.map(Json::shared).ok_or_else(incomplete);
            Ok(match &*frame.k {
                "connect" => Wire::Connect {
                    session: frame.s,
                    device_id: Arc::from(&*frame.d.clone().ok_or_else(incomplete)?),
                    registration: frame.r,
                },
                "attached" => Wire::Attached {
                    session: frame.s,
                    device_info: payload()?,
                },
                "c" => Wire::ClientMsg {
                    session: frame.s,
                    seq: frame.q,
                    payload: payload()?,
                },
                "d" => Wire::DeviceMsg {
                    session: frame.s,
                    seq: frame.q,
                    payload: payload()?,
                },
                "leave" => Wire::Leave { session: frame.s },
                "gone" => Wire::DeviceGone { session: frame.s },
                _ => return Err(incomplete()),
            })
        })
        .collect::<Result<_, WireError>>()?;
    Ok((from, frames))
}

#[derive(Serialize, Deserialize, Default)]
struct DescriptorJson<'a> {
    #[serde(borrow, default)]
    group_name: Cow<'a, str>,
    #[serde(borrow, default)]
    owner: Cow<'a, str>,
    #[serde(borrow, default)]
    name: Cow<'a, str>,
    #[serde(default)]
    adb_port: u16,
}

/// The text of a device's lease: who holds it, which registration, and
/// what other instances list of it. Its first bytes name the owner
/// ([`owner_prefix`]), which the lease scripts compare.
pub fn device_record(
    owner: Incarnation,
    registration: u64,
    device_id: &str,
    info: &Json,
    descriptor: &Descriptor,
) -> String {
    let mut out = owner_prefix(owner);
    let _ = write!(out, r#","r":{registration},"id":"#);
    push_string(&mut out, device_id);
    out.push_str(r#","descriptor":"#);
    let descriptor = DescriptorJson {
        group_name: Cow::Borrowed(&descriptor.group_name),
        owner: Cow::Borrowed(&descriptor.owner),
        name: Cow::Borrowed(&descriptor.name),
        adb_port: descriptor.adb_port,
    };
    out.push_str(&serde_json::to_string(&descriptor).unwrap_or_default());
    let _ = write!(out, r#","info":{}}}"#, info.get());
    out
}

/// How every record (and departure event) of `owner` starts.
pub fn owner_prefix(owner: Incarnation) -> String {
    format!(r#"{{"o":"{}""#, incarnation_text(owner))
}

/// The directory event of a device's departure.
pub fn departure(owner: Incarnation, registration: u64, device_id: &str) -> String {
    let mut out = owner_prefix(owner);
    let _ = write!(out, r#","r":{registration},"gone":true,"id":"#);
    push_string(&mut out, device_id);
    out.push('}');
    out
}

#[derive(Deserialize)]
struct RecordIn<'a> {
    #[serde(borrow)]
    o: Cow<'a, str>,
    r: u64,
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(default)]
    gone: bool,
    #[serde(borrow, default)]
    descriptor: Option<DescriptorJson<'a>>,
    #[serde(borrow, default)]
    info: Option<&'a RawValue>,
}

/// A directory event, or a record read back.
#[derive(Debug, Clone, PartialEq)]
pub enum Directory {
    Registered {
        id: String,
        device: RemoteDevice,
    },
    Left {
        id: String,
        owner: Incarnation,
        registration: u64,
    },
}

/// Reads a record or an event.
pub fn decode_directory(text: &str) -> Result<Directory, WireError> {
    let record: RecordIn<'_> = serde_json::from_str(text)?;
    let owner = parse_incarnation(&record.o).ok_or(WireError::NoSender)?;
    if record.gone {
        return Ok(Directory::Left {
            id: record.id.into_owned(),
            owner,
            registration: record.r,
        });
    }
    let descriptor = record.descriptor.unwrap_or_default();
    Ok(Directory::Registered {
        id: record.id.into_owned(),
        device: RemoteDevice {
            owner,
            registration: record.r,
            info: record.info.map_or_else(Json::null, Json::shared),
            descriptor: Descriptor {
                group_name: descriptor.group_name.into_owned(),
                owner: descriptor.owner.into_owned(),
                name: descriptor.name.into_owned(),
                adb_port: descriptor.adb_port,
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(text: &str) -> Json {
        Json::shared(&RawValue::from_string(text.to_owned()).unwrap())
    }

    #[test]
    fn a_batch_round_trips_with_its_payloads_verbatim() {
        let frames = vec![
            Wire::Connect {
                session: 7,
                device_id: "cvd-\"1\"\n".into(),
                registration: 3,
            },
            Wire::Attached {
                session: 7,
                device_info: json(r#"{"displays":[ 1 ,2]}"#),
            },
            Wire::ClientMsg {
                session: 7,
                seq: 1,
                payload: json(r#"{"type" : "offer","sdp":"v=0\r\n"}"#),
            },
            Wire::DeviceMsg {
                session: 7,
                seq: 2,
                payload: json("null"),
            },
            Wire::Leave { session: 7 },
            Wire::DeviceGone { session: 8 },
        ];
        let text = encode_batch(0xabc, &frames);
        let (from, decoded) = decode_batch(&text).unwrap();
        assert_eq!(from, 0xabc);
        assert_eq!(decoded, frames);
        // Payloads are copied as they came, spaces and all.
        assert!(
            text.contains(r#""p":{"type" : "offer","sdp":"v=0\r\n"}"#),
            "{text}"
        );
    }

    #[test]
    fn bad_batches_are_errors() {
        for text in [
            "",
            "[]",
            r#"{"from":"0","frames":[]}"#,
            r#"{"from":"1","frames":[{"k":"c","s":1,"q":1}]}"#,
            r#"{"from":"1","frames":[{"k":"connect","s":1}]}"#,
            r#"{"from":"1","frames":[{"k":"what","s":1}]}"#,
        ] {
            assert!(decode_batch(text).is_err(), "{text}");
        }
    }

    #[test]
    fn records_and_departures_read_back() {
        let descriptor = Descriptor {
            group_name: "g".into(),
            owner: "o".into(),
            name: "n".into(),
            adb_port: 6520,
        };
        let record = device_record(0x1f, 4, "cvd-1", &json(r#"{"a": 1}"#), &descriptor);
        assert!(record.starts_with(&owner_prefix(0x1f)), "{record}");
        let Directory::Registered { id, device } = decode_directory(&record).unwrap() else {
            panic!("not a registration: {record}");
        };
        assert_eq!(id, "cvd-1");
        assert_eq!(
            device,
            RemoteDevice {
                owner: 0x1f,
                registration: 4,
                info: json(r#"{"a": 1}"#),
                descriptor,
            }
        );
        let gone = departure(0x1f, 4, "cvd-1");
        assert!(gone.starts_with(&owner_prefix(0x1f)), "{gone}");
        assert_eq!(
            decode_directory(&gone).unwrap(),
            Directory::Left {
                id: "cvd-1".into(),
                owner: 0x1f,
                registration: 4
            }
        );
    }
}
