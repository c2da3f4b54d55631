//! Unit tests for every message shape, and property tests for the decoders.

use std::borrow::Cow;

use proptest::prelude::*;

use super::*;

fn raw(text: &str) -> Box<RawValue> {
    RawValue::from_string(text.to_owned()).expect("valid JSON")
}

fn err(text: &str) -> String {
    DeviceToServer::decode(text).expect_err(text).to_string()
}

fn client_err(text: &str) -> String {
    ClientToServer::decode(text).expect_err(text).to_string()
}

#[test]
fn register_with_and_without_device_info() {
    let msg = DeviceToServer::decode(
        r#"{"message_type":"register","device_id":"cvd-1","device_info":{"b":1,"a":[1.50,2]}}"#,
    )
    .unwrap();
    let DeviceToServer::Register(register) = msg else {
        panic!("not a register: {msg:?}");
    };
    assert_eq!(register.device_id, "cvd-1");
    // Verbatim: key order and number spelling survive.
    assert_eq!(
        register.device_info.unwrap().get(),
        r#"{"b":1,"a":[1.50,2]}"#
    );

    let msg = DeviceToServer::decode(r#"{"message_type":"register","device_id":"x"}"#).unwrap();
    assert_eq!(
        msg,
        DeviceToServer::Register(Register {
            device_id: "x".into(),
            device_info: None,
            device_port: None,
        })
    );
}

#[test]
fn register_device_id_borrows_when_it_can() {
    let text = r#"{"message_type":"register","device_id":"plain"}"#;
    let Ok(DeviceToServer::Register(r)) = DeviceToServer::decode(text) else {
        panic!()
    };
    assert!(matches!(r.device_id, Cow::Borrowed("plain")));
    let text = r#"{"message_type":"register","device_id":"esc\u00e9"}"#;
    let Ok(DeviceToServer::Register(r)) = DeviceToServer::decode(text) else {
        panic!()
    };
    assert_eq!(r.device_id, "escé");
}

#[test]
fn cuttlefish_register_fixture_is_accepted_verbatim() {
    let text = include_str!("../tests/cuttlefish-register.json");
    let Ok(DeviceToServer::Register(r)) = DeviceToServer::decode(text) else {
        panic!("fixture rejected")
    };
    assert_eq!(r.device_id, "cvd-1");
    let info = r.device_info.unwrap().get();
    assert!(info.starts_with("{\n\t\t\"adb_port\" : 6520,"), "{info}");
    assert!(info.ends_with("\n\t}"), "{info}");
}

#[test]
fn device_forward() {
    let msg = DeviceToServer::decode(
        r#"{"message_type":"forward","client_id":7,"payload":{"type":"offer","sdp":"v=0\r\n"}}"#,
    )
    .unwrap();
    let DeviceToServer::Forward(f) = msg else {
        panic!()
    };
    assert_eq!(f.client_id, 7);
    assert_eq!(f.payload.get(), r#"{"type":"offer","sdp":"v=0\r\n"}"#);
}

#[test]
fn null_is_a_payload_and_missing_is_not() {
    let msg = DeviceToServer::decode(r#"{"message_type":"forward","client_id":1,"payload":null}"#)
        .unwrap();
    let DeviceToServer::Forward(f) = msg else {
        panic!()
    };
    assert_eq!(f.payload.get(), "null");
    assert_eq!(
        err(r#"{"message_type":"forward","client_id":1}"#),
        "Missing payload"
    );
    assert_eq!(
        client_err(r#"{"message_type":"forward"}"#),
        "Missing payload"
    );
}

#[test]
fn client_id_must_be_a_positive_integer() {
    for bad in [
        "0",
        "-1",
        "1.0",
        "1e0",
        "\"1\"",
        "null",
        "18446744073709551616",
        "[]",
    ] {
        let text = format!(r#"{{"message_type":"forward","client_id":{bad},"payload":1}}"#);
        let e = err(&text);
        assert!(e.starts_with("Invalid client_id: "), "{bad}: {e}");
    }
    assert_eq!(
        err(r#"{"message_type":"forward","payload":1}"#),
        "Invalid client_id: missing client_id"
    );
    // The client id is checked before the payload (PROTOCOL.md, the decisions added where the specification is silent).
    assert!(err(r#"{"message_type":"forward"}"#).starts_with("Invalid client_id"));
    let max = format!(
        r#"{{"message_type":"forward","client_id":{},"payload":1}}"#,
        u64::MAX
    );
    assert!(DeviceToServer::decode(&max).is_ok());
}

#[test]
fn device_id_rules() {
    let ok_256 = "d".repeat(256);
    let text = format!(r#"{{"message_type":"register","device_id":"{ok_256}"}}"#);
    assert!(DeviceToServer::decode(&text).is_ok());
    // 256 bytes counted in UTF-8, not characters: 128 two-byte characters fit.
    let text = format!(
        r#"{{"message_type":"register","device_id":"{}"}}"#,
        "é".repeat(128)
    );
    assert!(DeviceToServer::decode(&text).is_ok());

    let cases = [
        (
            r#"{"message_type":"register"}"#,
            "Invalid device_id: missing device_id",
        ),
        (
            r#"{"message_type":"register","device_id":5}"#,
            "Invalid device_id: device_id must be a string",
        ),
        (
            r#"{"message_type":"register","device_id":null}"#,
            "Invalid device_id: device_id must be a string",
        ),
        (
            r#"{"message_type":"register","device_id":""}"#,
            "Invalid device_id: device_id must not be empty",
        ),
        (
            r#"{"message_type":"register","device_id":"a\nb"}"#,
            "Invalid device_id: device_id must not contain control characters",
        ),
        (
            r#"{"message_type":"register","device_id":"a\u0000"}"#,
            "Invalid device_id: device_id must not contain control characters",
        ),
    ];
    for (text, want) in cases {
        assert_eq!(err(text), want, "{text}");
        let client_text = text.replace("register", "connect");
        assert_eq!(client_err(&client_text), want, "{client_text}");
    }
    let long = format!(
        r#"{{"message_type":"register","device_id":"{}"}}"#,
        "d".repeat(257)
    );
    assert_eq!(
        err(&long),
        "Invalid device_id: device_id is 257 bytes, at most 256 allowed"
    );
}

#[test]
fn envelope_errors() {
    let cases = [
        ("", "Invalid message: empty message"),
        ("not json", "Invalid message: expected a JSON object"),
        ("[1,2]", "Invalid message: expected a JSON object"),
        ("\"register\"", "Invalid message: expected a JSON object"),
        ("{}", "Invalid message: missing message_type"),
        (
            r#"{"message_type":5}"#,
            "Invalid message: message_type must be a string",
        ),
        (
            r#"{"message_type":null}"#,
            "Invalid message: message_type must be a string",
        ),
        (r#"{"message_type":"hello"}"#, "Unknown message type: hello"),
        (
            r#"{"message_type":"connect"}"#,
            "Unknown message type: connect",
        ),
    ];
    for (text, want) in cases {
        assert_eq!(err(text), want, "{text:?}");
    }
    assert_eq!(
        client_err(r#"{"message_type":"register"}"#),
        "Unknown message type: register"
    );
    assert!(err("{").starts_with("Invalid message: EOF while parsing"));
    assert!(err(r#"{"message_type":"register"} x"#).starts_with("Invalid message: trailing"));
    assert!(
        err(r#"{"message_type":"forward","payload":1,"payload":2,"client_id":1}"#)
            .starts_with("Invalid message: duplicate field `payload`")
    );
}

#[test]
fn device_port_is_a_port_number_and_round_trips() {
    let decode = |text: &str| match DeviceToServer::decode(text) {
        Ok(DeviceToServer::Register(register)) => Ok(register.device_port),
        Ok(other) => panic!("{other:?}"),
        Err(e) => Err(e.to_string()),
    };
    let register = |port: &str| {
        format!(r#"{{"message_type":"register","device_id":"a","device_port":{port}}}"#)
    };
    assert_eq!(decode(&register("8443")), Ok(Some(8443)));
    // 0 and null are none, as the Go operator reads them.
    assert_eq!(decode(&register("0")), Ok(None));
    assert_eq!(decode(&register("null")), Ok(None));
    for bad in ["65536", "-1", "\"80\"", "1.5"] {
        assert!(
            decode(&register(bad))
                .unwrap_err()
                .starts_with("Invalid message: device_port must be a port number"),
            "{bad}"
        );
    }
    let message = DeviceToServer::Register(Register {
        device_id: "a".into(),
        device_info: None,
        device_port: Some(8443),
    });
    assert_eq!(
        message.encode(),
        r#"{"message_type":"register","device_id":"a","device_port":8443}"#
    );
    assert_eq!(DeviceToServer::decode(&message.encode()).unwrap(), message);
}

#[test]
fn extra_fields_are_ignored() {
    let msg = DeviceToServer::decode(
        r#"{"device_port":8443,"x_app":{"deep":[1,2,3]},"message_type":"register","device_id":"a"}"#,
    )
    .unwrap();
    assert!(matches!(msg, DeviceToServer::Register(_)));
}

fn nested(depth: usize) -> String {
    // The message object is level one; each array adds one.
    format!(
        r#"{{"message_type":"forward","payload":{}1{}}}"#,
        "[".repeat(depth - 1),
        "]".repeat(depth - 1)
    )
}

#[test]
fn nesting_limit_is_exact() {
    assert!(ClientToServer::decode(&nested(MAX_NESTING_DEPTH)).is_ok());
    assert_eq!(
        client_err(&nested(MAX_NESTING_DEPTH + 1)),
        "Invalid message: nested deeper than 128 levels"
    );
    // Brackets inside strings do not count, escaped quotes included.
    let in_string = format!(
        r#"{{"message_type":"forward","payload":["\"{}",{{"a":{{"b":1}}}}]}}"#,
        "[{".repeat(300)
    );
    assert!(ClientToServer::decode(&in_string).is_ok(), "{in_string}");
    let objects = format!(
        r#"{{"message_type":"forward","payload":{}1{}}}"#,
        r#"{"a":"#.repeat(MAX_NESTING_DEPTH),
        "}".repeat(MAX_NESTING_DEPTH)
    );
    assert_eq!(
        client_err(&objects),
        "Invalid message: nested deeper than 128 levels"
    );
    // Far deeper input fails the same way, without exhausting the stack.
    let deep = format!(
        r#"{{"message_type":"forward","payload":{}}}"#,
        "[".repeat(100_000)
    );
    assert_eq!(
        client_err(&deep),
        "Invalid message: nested deeper than 128 levels"
    );
}

#[test]
fn unknown_type_text_is_truncated() {
    let name = "x".repeat(1000);
    let e = err(&format!(r#"{{"message_type":"{name}"}}"#));
    assert_eq!(e, format!("Unknown message type: {}", "x".repeat(128)));
}

#[test]
fn client_connect_and_forward() {
    assert_eq!(
        ClientToServer::decode(r#"{"message_type":"connect","device_id":"cvd-1"}"#).unwrap(),
        ClientToServer::Connect(Connect {
            device_id: "cvd-1".into()
        })
    );
    let payload = raw(r#"{"type":"answer"}"#);
    assert_eq!(
        ClientToServer::decode(r#"{"message_type":"forward","payload":{"type":"answer"}}"#)
            .unwrap(),
        ClientToServer::Forward(ClientForward { payload: &payload })
    );
}

#[test]
fn server_messages_encode_exactly() {
    let payload = raw(r#"{"b": 1.10, "a":"\u00e9"}"#);
    assert_eq!(
        ServerToDevice::ClientMsg(ClientMsg {
            client_id: 3,
            payload: &payload
        })
        .encode(),
        r#"{"message_type":"client_msg","client_id":3,"payload":{"b": 1.10, "a":"\u00e9"}}"#
    );
    assert_eq!(
        ServerToClient::DeviceMsg(DeviceMsg { payload: &payload }).encode(),
        r#"{"message_type":"device_msg","payload":{"b": 1.10, "a":"\u00e9"}}"#
    );
    assert_eq!(
        ServerToDevice::ClientDisconnected(ClientDisconnected { client_id: 9 }).encode(),
        r#"{"message_type":"client_disconnected","client_id":9}"#
    );
    assert_eq!(
        ServerToClient::DeviceInfo(DeviceInfo { device_info: NULL }).encode(),
        r#"{"message_type":"device_info","device_info":null}"#
    );
    assert_eq!(
        ServerToClient::Error(ErrorMsg {
            error: "Device not found: \"x\"".into()
        })
        .encode(),
        r#"{"error":"Device not found: \"x\""}"#
    );
    let config = Config {
        ice_servers: vec![IceServer {
            urls: vec!["stun:127.0.0.1:3478".into()],
            username: None,
            credential: None,
        }],
    };
    assert_eq!(
        ServerToDevice::Config(config.clone()).encode(),
        r#"{"message_type":"config","ice_servers":[{"urls":["stun:127.0.0.1:3478"]}]}"#
    );
    assert_eq!(
        ServerToClient::Config(Config::default()).encode(),
        r#"{"message_type":"config","ice_servers":[]}"#
    );
}

#[test]
fn server_messages_decode() {
    let msg = ServerToClient::decode(
        r#"{"message_type":"config","ice_servers":[{"urls":"stun:a","username":"u","credential":"c"}],"extra":1}"#,
    )
    .unwrap();
    assert_eq!(
        msg,
        ServerToClient::Config(Config {
            ice_servers: vec![IceServer {
                urls: vec!["stun:a".into()],
                username: Some("u".into()),
                credential: Some("c".into()),
            }]
        })
    );
    assert_eq!(
        ServerToDevice::decode(r#"{"error":"Not registered"}"#).unwrap(),
        ServerToDevice::Error(ErrorMsg {
            error: "Not registered".into()
        })
    );
    let info = ServerToClient::decode(r#"{"message_type":"device_info"}"#).unwrap();
    assert_eq!(
        info,
        ServerToClient::DeviceInfo(DeviceInfo { device_info: NULL })
    );
    assert!(ServerToDevice::decode(r#"{"message_type":"device_msg","payload":1}"#).is_err());
}

// ---------------------------------------------------------------------------
// Property tests
// ---------------------------------------------------------------------------

/// Arbitrary JSON text of the kinds a payload may hold, as a sender might
/// have spelled it (numbers with exponents and trailing zeros, escapes,
/// whitespace), since the raw text must come back exactly.
fn json_text() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("false".to_owned()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:e}")),
        Just("1.500".to_owned()),
        any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap()),
        Just(r#""\u00e9\n\ud83d\ude00""#.to_owned()),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::vec((any::<String>(), inner), 0..6).prop_map(|v| {
                let fields: Vec<String> = v
                    .into_iter()
                    .map(|(k, v)| format!("{} :\t{v}", serde_json::to_string(&k).unwrap()))
                    .collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    })
}

fn device_id() -> impl Strategy<Value = String> {
    "[^\\p{Cc}]{1,64}"
}

proptest! {
    #[test]
    fn device_to_server_round_trips(
        id in device_id(),
        info in prop::option::of(json_text()),
        client_id in 1u64..,
        payload in json_text(),
    ) {
        let info = info.map(|t| raw(&t));
        let payload = raw(&payload);
        let messages = [
            DeviceToServer::Register(Register { device_id: id.as_str().into(), device_info: info.as_deref(), device_port: None }),
            DeviceToServer::Forward(DeviceForward { client_id, payload: &payload }),
        ];
        for message in messages {
            let text = message.encode();
            prop_assert_eq!(DeviceToServer::decode(&text).unwrap(), message);
        }
    }

    #[test]
    fn client_to_server_round_trips(id in device_id(), payload in json_text()) {
        let payload = raw(&payload);
        let messages = [
            ClientToServer::Connect(Connect { device_id: id.as_str().into() }),
            ClientToServer::Forward(ClientForward { payload: &payload }),
        ];
        for message in messages {
            let text = message.encode();
            prop_assert_eq!(ClientToServer::decode(&text).unwrap(), message);
        }
    }

    #[test]
    fn server_to_device_round_trips(
        client_id in 1u64..,
        payload in json_text(),
        error in any::<String>(),
        urls in prop::collection::vec(any::<String>(), 0..3),
        username in prop::option::of(any::<String>()),
    ) {
        let payload = raw(&payload);
        let config = Config { ice_servers: vec![IceServer { urls, username, credential: None }] };
        let messages = [
            ServerToDevice::Config(config),
            ServerToDevice::ClientMsg(ClientMsg { client_id, payload: &payload }),
            ServerToDevice::ClientDisconnected(ClientDisconnected { client_id }),
            ServerToDevice::Error(ErrorMsg { error: error.into() }),
        ];
        for message in messages {
            let text = message.encode();
            prop_assert_eq!(ServerToDevice::decode(&text).unwrap(), message);
        }
    }

    #[test]
    fn server_to_client_round_trips(payload in json_text(), info in json_text(), error in any::<String>()) {
        let payload = raw(&payload);
        let info = raw(&info);
        let messages = [
            ServerToClient::Config(Config::default()),
            ServerToClient::DeviceInfo(DeviceInfo { device_info: &info }),
            ServerToClient::DeviceMsg(DeviceMsg { payload: &payload }),
            ServerToClient::Error(ErrorMsg { error: error.into() }),
        ];
        for message in messages {
            let text = message.encode();
            prop_assert_eq!(ServerToClient::decode(&text).unwrap(), message);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = DeviceToServer::decode(&text);
        let _ = ClientToServer::decode(&text);
        let _ = ServerToDevice::decode(&text);
        let _ = ServerToClient::decode(&text);
    }

    #[test]
    fn arbitrary_json_objects_never_panic(
        fields in prop::collection::vec(
            (prop_oneof![
                Just("message_type".to_owned()), Just("device_id".to_owned()),
                Just("client_id".to_owned()), Just("payload".to_owned()),
                Just("device_info".to_owned()), Just("error".to_owned()),
                Just("ice_servers".to_owned()), any::<String>()
            ],
            prop_oneof![
                Just("\"register\"".to_owned()), Just("\"forward\"".to_owned()),
                Just("\"connect\"".to_owned()), Just("\"config\"".to_owned()),
                Just("\"client_msg\"".to_owned()), Just("\"device_msg\"".to_owned()),
                json_text()
            ]),
            0..6,
        )
    ) {
        let body: Vec<String> = fields
            .iter()
            .map(|(k, v)| format!("{}:{v}", serde_json::to_string(k).unwrap()))
            .collect();
        let text = format!("{{{}}}", body.join(","));
        // Whatever the outcome, an error always renders with a known phrase.
        let errors = [DeviceToServer::decode(&text).err(), ClientToServer::decode(&text).err()];
        for e in errors.into_iter().flatten() {
            prop_assert!(e.to_string().starts_with(e.phrase()));
        }
        let _ = ServerToDevice::decode(&text);
        let _ = ServerToClient::decode(&text);
    }
}

#[test]
fn bare_payloads_are_objects_kept_verbatim_within_the_nesting_bound() {
    let text = r#" { "type" : "offer", "n": 12345678901234567890 } "#;
    assert_eq!(parse_bare_payload(text).unwrap().get(), text.trim());
    for (text, want) in [
        ("", "Invalid message: empty message"),
        ("[1]", "Invalid message: expected a JSON object"),
        ("\"hi\"", "Invalid message: expected a JSON object"),
    ] {
        assert_eq!(parse_bare_payload(text).unwrap_err().to_string(), want);
    }
    assert!(
        parse_bare_payload("{")
            .unwrap_err()
            .to_string()
            .starts_with("Invalid message: EOF")
    );
    let deep = format!(r#"{{"a":{}1{}}}"#, "[".repeat(128), "]".repeat(128));
    assert_eq!(
        parse_bare_payload(&deep).unwrap_err().to_string(),
        "Invalid message: nested deeper than 128 levels"
    );
    let at_bound = format!(r#"{{"a":{}1{}}}"#, "[".repeat(127), "]".repeat(127));
    assert!(parse_bare_payload(&at_bound).is_ok());
}

#[test]
fn the_client_msg_envelope_is_at_most_its_constant() {
    let payload = raw(r#"{"type":"offer","sdp":"v=0"}"#);
    for client_id in [1, 42, u64::MAX] {
        let frame = ServerToDevice::ClientMsg(ClientMsg {
            client_id,
            payload: &payload,
        })
        .encode();
        assert!(frame.len() - payload.get().len() <= CLIENT_MSG_ENVELOPE_MAX);
        if client_id == u64::MAX {
            assert_eq!(frame.len() - payload.get().len(), CLIENT_MSG_ENVELOPE_MAX);
        }
    }
}

#[test]
fn resume_and_resumed_round_trip() {
    let resume = DeviceToServer::Resume(Resume {
        token: "abc_-1".into(),
        received: 7,
    });
    let text = resume.encode();
    assert_eq!(
        text,
        r#"{"message_type":"resume","token":"abc_-1","received":7}"#
    );
    assert_eq!(DeviceToServer::decode(&text).unwrap(), resume);
    let client = ClientToServer::Resume(Resume {
        token: "t".into(),
        received: 0,
    });
    assert_eq!(ClientToServer::decode(&client.encode()).unwrap(), client);

    let resumed = Resumed {
        resume: ResumeOffer {
            token: "next".into(),
            window_ms: 30_000,
        },
        received: 3,
    };
    let text = ServerToDevice::Resumed(resumed.clone()).encode();
    assert_eq!(
        text,
        r#"{"message_type":"resumed","received":3,"resume":{"token":"next","window_ms":30000}}"#
    );
    assert_eq!(
        ServerToDevice::decode(&text).unwrap(),
        ServerToDevice::Resumed(resumed.clone())
    );
    assert_eq!(
        ServerToClient::decode(&text).unwrap(),
        ServerToClient::Resumed(resumed)
    );
}

#[test]
fn a_resume_offer_rides_on_the_first_frame_and_is_found_there() {
    let offer = ResumeOffer {
        token: "tok\"en".into(),
        window_ms: 5,
    };
    let mut config = Config::default().encode();
    offer.append_to(&mut config);
    assert_eq!(
        config,
        r#"{"message_type":"config","ice_servers":[],"resume":{"token":"tok\"en","window_ms":5}}"#
    );
    // A peer that knows nothing of it reads the config as before.
    assert_eq!(
        ServerToDevice::decode(&config).unwrap(),
        ServerToDevice::Config(Config::default())
    );
    assert_eq!(ResumeOffer::in_frame(&config).unwrap(), Some(offer.clone()));
    // The Go operator's first frame.
    let mut info = r#"{"device_info":{"a":1}}"#.to_owned();
    offer.append_to(&mut info);
    assert_eq!(ResumeOffer::in_frame(&info).unwrap(), Some(offer));
    assert_eq!(
        ResumeOffer::in_frame(r#"{"message_type":"config","ice_servers":[]}"#).unwrap(),
        None
    );
}

#[test]
fn a_resume_is_checked_field_by_field() {
    let err = |text: &str| DeviceToServer::decode(text).expect_err(text).to_string();
    assert_eq!(
        err(r#"{"message_type":"resume","received":1}"#),
        "Invalid message: missing token"
    );
    assert_eq!(
        err(r#"{"message_type":"resume","token":1,"received":1}"#),
        "Invalid message: token must be a string"
    );
    assert_eq!(
        err(r#"{"message_type":"resume","token":"t"}"#),
        "Invalid message: missing received"
    );
    for received in ["-1", "1.0", "\"1\"", "1e3", "18446744073709551616"] {
        assert!(
            err(&format!(
                r#"{{"message_type":"resume","token":"t","received":{received}}}"#
            ))
            .starts_with("Invalid message: received must be a non-negative integer"),
            "{received}"
        );
    }
    let long = "x".repeat(MAX_RESUME_TOKEN_BYTES + 1);
    assert_eq!(
        err(&format!(
            r#"{{"message_type":"resume","token":"{long}","received":0}}"#
        )),
        format!("Invalid message: token is 129 bytes, at most {MAX_RESUME_TOKEN_BYTES} allowed")
    );
}

#[test]
fn a_resume_is_told_apart_from_the_frames_a_session_reads() {
    assert_eq!(
        Resume::opening(r#"{"message_type":"resume","token":"t","received":2}"#),
        Some(Ok(Resume {
            token: "t".into(),
            received: 2
        }))
    );
    assert!(matches!(
        Resume::opening(r#"{"message_type":"resume","token":"t"}"#),
        Some(Err(_))
    ));
    for other in [
        r#"{"message_type":"register","device_id":"x"}"#,
        r#"{"message_type":"connect","device_id":"x"}"#,
        "not json",
        r#"{"message_type":7}"#,
        "[]",
    ] {
        assert_eq!(Resume::opening(other), None, "{other}");
    }
}
