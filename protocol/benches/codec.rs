//! The per-message work of the relay, without sockets: decoding a
//! `forward` and encoding what the server sends on, for an ICE-candidate
//! sized payload and an SDP sized one.
//!
//! `cargo bench -p protocol`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use protocol::{ClientMsg, DeviceMsg, DeviceToServer, RawValue, ServerToClient, ServerToDevice};

fn payload(size: usize) -> String {
    let head = r#"{"type":"ice-candidate","mid":"0","mLineIndex":0,"candidate":""#;
    format!(
        "{head}{}\"}}",
        "c".repeat(size.saturating_sub(head.len() + 2))
    )
}

fn codec(c: &mut Criterion) {
    for (name, size) in [("200B", 200), ("4KiB", 4096)] {
        let payload = payload(size);
        let frame = format!(r#"{{"message_type":"forward","client_id":7,"payload":{payload}}}"#);
        let raw = RawValue::from_string(payload.clone()).expect("valid JSON");

        c.bench_function(&format!("decode device forward {name}"), |b| {
            b.iter(|| DeviceToServer::decode(black_box(&frame)))
        });
        c.bench_function(&format!("encode device_msg {name}"), |b| {
            b.iter(|| {
                ServerToClient::DeviceMsg(DeviceMsg {
                    payload: black_box(&raw),
                })
                .encode()
            })
        });
        c.bench_function(&format!("encode client_msg {name}"), |b| {
            b.iter(|| {
                ServerToDevice::ClientMsg(ClientMsg {
                    client_id: 7,
                    payload: black_box(&raw),
                })
                .encode()
            })
        });
    }
}

criterion_group!(benches, codec);
criterion_main!(benches);
