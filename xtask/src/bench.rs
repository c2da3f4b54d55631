//! `cargo xtask bench-handshake`: how long `client-cli connect` takes to
//! open a data channel with a fake device through the server.
//!
//! Release build, one server and one fake device, 20 sequential runs of
//! `client-cli connect --json`; the medians and spread go into
//! BENCHMARKS.md between its `handshake` markers.

use std::path::Path;

use anyhow::{Context, Result};

const RUNS: usize = 20;
const START_MARK: &str = "<!-- handshake:start -->";
const END_MARK: &str = "<!-- handshake:end -->";

pub fn handshake(root: &Path) -> Result<()> {
    crate::e2e::build(root, true)?;
    let tools = crate::tools(root, "release", "bench-logs")?;
    let server = tools.server("handshake", &[])?;
    let _device = tools.fake_device("handshake", &server, "bench-device")?;

    use protocol::payload::Phase;
    let phases = [
        Phase::IceConnected,
        Phase::DtlsConnected,
        Phase::DataChannelOpen,
    ]
    .map(Phase::name);
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); phases.len()];
    let mut rtts = Vec::new();
    for run in 0..RUNS {
        let report = tools
            .connect_report(&server, "bench-device")
            .with_context(|| format!("run {}", run + 1))?;
        for (index, phase) in phases.iter().enumerate() {
            samples[index].push(report["phases_ms"][phase].as_f64().unwrap_or(f64::NAN));
        }
        if let Some(values) = report["echo_rtt_ms"].as_array() {
            rtts.extend(values.iter().filter_map(serde_json::Value::as_f64));
        }
    }

    let mut table =
        String::from("| phase (ms from connect) | median | min | max |\n|---|---|---|---|\n");
    for (phase, values) in phases.iter().zip(&mut samples) {
        let (median, min, max) = crate::spread(values);
        table.push_str(&format!(
            "| {phase} | {median:.1} | {min:.1} | {max:.1} |\n"
        ));
    }
    let (median, min, max) = crate::spread(&mut rtts);
    table.push_str(&format!(
        "| data channel echo round trip | {median:.2} | {min:.2} | {max:.2} |\n"
    ));
    let section = format!(
        "{START_MARK}\n## WebRTC handshake through the server\n\n\
         `cargo xtask bench-handshake` (release build): one `signaling-server` and one \
         `fake-device` on loopback, then {RUNS} sequential runs of \
         `client-cli connect DEVICE --json --messages 3`, timed from the moment the tool \
         starts connecting. Machine: {}.\n\n{table}\n{END_MARK}",
        crate::machine_description()
    );
    print!("{table}");
    crate::replace_section(&root.join("BENCHMARKS.md"), START_MARK, END_MARK, &section)?;
    println!("bench-handshake: BENCHMARKS.md updated");
    Ok(())
}
