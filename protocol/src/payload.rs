//! The payload layer: what Cuttlefish devices and clients put inside
//! `forward` payloads to set up WebRTC. The server never looks at it; the
//! tools (and real devices and browsers) speak it.
//!
//! ```text
//! client → device  {"type":"request-offer","ice_servers":[…]}
//! device → client  {"type":"offer","sdp":"…"}
//! either way       {"type":"ice-candidate","mid":"0","mLineIndex":0,"candidate":"candidate:…"}
//!                  {"type":"ice-candidate","candidate":{"candidate":"…","sdpMid":"0","sdpMLineIndex":0}}
//! client → device  {"type":"answer","sdp":"…"}
//! either way       {"type":"error","error":"…"}
//! ```
//!
//! Cuttlefish devices send candidates flat; browsers send them nested, as
//! `RTCIceCandidate.toJSON()` gives them. Both shapes are accepted on both
//! sides. A client may renegotiate with its own `offer`, which the device
//! answers.

use serde::{Deserialize, Serialize};

use crate::{IceServer, RawValue};

/// One message of the payload layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Payload {
    /// A client asks the device for an offer.
    RequestOffer {
        /// The ICE servers the client got in its `config`.
        #[serde(default)]
        ice_servers: Vec<IceServer>,
    },
    Offer {
        sdp: String,
    },
    Answer {
        sdp: String,
    },
    IceCandidate(WireCandidate),
    Error {
        error: String,
    },
}

/// An ICE candidate in either shape it travels in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum WireCandidate {
    /// The browser's shape: `{"candidate": {"candidate", "sdpMid", "sdpMLineIndex"}}`.
    Nested { candidate: CandidateInit },
    /// The Cuttlefish device's shape: `{"candidate", "mid", "mLineIndex"}`.
    Flat {
        candidate: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mid: Option<String>,
        #[serde(
            default,
            rename = "mLineIndex",
            skip_serializing_if = "Option::is_none"
        )]
        m_line_index: Option<u16>,
    },
}

/// A candidate as `RTCIceCandidateInit` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CandidateInit {
    pub candidate: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    #[serde(
        default,
        rename = "sdpMLineIndex",
        skip_serializing_if = "Option::is_none"
    )]
    pub sdp_m_line_index: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_fragment: Option<String>,
}

impl WireCandidate {
    /// The candidate in one shape, whichever it came in.
    pub fn into_init(self) -> CandidateInit {
        match self {
            Self::Nested { candidate } => candidate,
            Self::Flat {
                candidate,
                mid,
                m_line_index,
            } => CandidateInit {
                candidate,
                sdp_mid: mid,
                sdp_m_line_index: m_line_index,
                username_fragment: None,
            },
        }
    }

    /// An empty candidate string marks the end of candidates; there is
    /// nothing to add.
    pub fn is_end_of_candidates(&self) -> bool {
        match self {
            Self::Nested { candidate } => candidate.candidate.is_empty(),
            Self::Flat { candidate, .. } => candidate.is_empty(),
        }
    }
}

impl Payload {
    /// A candidate in the device's flat shape.
    pub fn flat_candidate(init: CandidateInit) -> Self {
        Self::IceCandidate(WireCandidate::Flat {
            candidate: init.candidate,
            mid: init.sdp_mid,
            m_line_index: init.sdp_m_line_index,
        })
    }

    /// A candidate in the browser's nested shape.
    pub fn nested_candidate(init: CandidateInit) -> Self {
        Self::IceCandidate(WireCandidate::Nested { candidate: init })
    }

    /// The JSON text of this payload.
    pub fn to_json(&self) -> String {
        // Plain structs of strings and numbers always serialize.
        serde_json::to_string(self).unwrap_or_else(|_| "null".to_owned())
    }

    /// This payload as the raw JSON a `forward` carries.
    pub fn to_raw(&self) -> Box<RawValue> {
        // Plain structs of strings and numbers always serialize.
        serde_json::value::to_raw_value(self).unwrap_or_else(|_| RawValue::NULL.to_owned())
    }

    /// The payload a `client_msg` or `device_msg` carries, if it is one of
    /// this layer's (other layers may share the channel).
    pub fn from_raw(raw: &RawValue) -> Result<Self, serde_json::Error> {
        serde_json::from_str(raw.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Payload {
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn both_candidate_shapes_give_the_same_candidate() {
        let flat = parse(
            r#"{"type":"ice-candidate","mid":"0","mLineIndex":0,"candidate":"candidate:1 1 udp 1 127.0.0.1 5000 typ host"}"#,
        );
        let nested = parse(
            r#"{"type":"ice-candidate","candidate":{"candidate":"candidate:1 1 udp 1 127.0.0.1 5000 typ host","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":null}}"#,
        );
        let (Payload::IceCandidate(flat), Payload::IceCandidate(nested)) = (flat, nested) else {
            panic!("not candidates");
        };
        assert_eq!(flat.into_init(), nested.into_init());
    }

    #[test]
    fn end_of_candidates_is_recognised_in_both_shapes() {
        for text in [
            r#"{"type":"ice-candidate","candidate":""}"#,
            r#"{"type":"ice-candidate","candidate":{"candidate":"","sdpMid":"0"}}"#,
        ] {
            let Payload::IceCandidate(c) = parse(text) else {
                panic!("{text}")
            };
            assert!(c.is_end_of_candidates(), "{text}");
        }
    }

    #[test]
    fn shapes_encode_as_their_senders_write_them() {
        let init = CandidateInit {
            candidate: "candidate:x".into(),
            sdp_mid: Some("0".into()),
            sdp_m_line_index: Some(0),
            username_fragment: None,
        };
        assert_eq!(
            Payload::flat_candidate(init.clone()).to_json(),
            r#"{"type":"ice-candidate","candidate":"candidate:x","mid":"0","mLineIndex":0}"#
        );
        assert_eq!(
            Payload::nested_candidate(init).to_json(),
            r#"{"type":"ice-candidate","candidate":{"candidate":"candidate:x","sdpMid":"0","sdpMLineIndex":0}}"#
        );
        assert_eq!(
            Payload::RequestOffer {
                ice_servers: vec![]
            }
            .to_json(),
            r#"{"type":"request-offer","ice_servers":[]}"#
        );
    }

    #[test]
    fn offers_answers_and_errors_round_trip() {
        for payload in [
            Payload::Offer {
                sdp: "v=0\r\n".into(),
            },
            Payload::Answer {
                sdp: "v=0\r\n".into(),
            },
            Payload::Error {
                error: "no such stream".into(),
            },
            Payload::RequestOffer {
                ice_servers: vec![IceServer {
                    urls: vec!["stun:127.0.0.1:3478".into()],
                    username: None,
                    credential: None,
                }],
            },
        ] {
            assert_eq!(parse(&payload.to_json()), payload);
            let raw = payload.to_raw();
            assert_eq!(raw.get(), payload.to_json());
            assert_eq!(Payload::from_raw(&raw).ok(), Some(payload));
        }
        // request-offer without ice_servers, as older clients send it.
        assert_eq!(
            parse(r#"{"type":"request-offer"}"#),
            Payload::RequestOffer {
                ice_servers: vec![]
            }
        );
    }
}

/// The steps of one client's handshake with a device, by the names the
/// tools report them under (`client-cli connect`'s timeline and its
/// `--json` report, which `cargo xtask` reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    WebsocketOpen,
    Config,
    DeviceInfo,
    OfferReceived,
    AnswerSent,
    IceConnected,
    DtlsConnected,
    DataChannelOpen,
    /// The device's video track arrived; not every device sends one.
    VideoTrack,
}

impl Phase {
    /// What a successful handshake reaches, in the order it normally does.
    pub const REQUIRED: [Phase; 8] = [
        Self::WebsocketOpen,
        Self::Config,
        Self::DeviceInfo,
        Self::OfferReceived,
        Self::AnswerSent,
        Self::IceConnected,
        Self::DtlsConnected,
        Self::DataChannelOpen,
    ];

    /// The name it is reported under.
    pub fn name(self) -> &'static str {
        match self {
            Self::WebsocketOpen => "websocket open",
            Self::Config => "config",
            Self::DeviceInfo => "device_info",
            Self::OfferReceived => "offer received",
            Self::AnswerSent => "answer sent",
            Self::IceConnected => "ICE connected",
            Self::DtlsConnected => "DTLS connected",
            Self::DataChannelOpen => "data channel open",
            Self::VideoTrack => "video track",
        }
    }

    /// Its name as a JSON key: snake_case, no spaces.
    pub fn key(self) -> &'static str {
        match self {
            Self::WebsocketOpen => "websocket_open",
            Self::Config => "config",
            Self::DeviceInfo => "device_info",
            Self::OfferReceived => "offer_received",
            Self::AnswerSent => "answer_sent",
            Self::IceConnected => "ice_connected",
            Self::DtlsConnected => "dtls_connected",
            Self::DataChannelOpen => "data_channel_open",
            Self::VideoTrack => "video_track",
        }
    }
}
