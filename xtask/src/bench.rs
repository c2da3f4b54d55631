//! `cargo xtask bench-handshake`: how long `client-cli connect` takes to
//! open a data channel with a fake device through the server, and to see
//! its first video frame: directly, and relay-only through a real coturn.
//!
//! Release build. One server and one fake device for each way, started
//! side by side; 20 runs of `client-cli connect --json` each, alternating
//! between the two; the medians and spread go into BENCHMARKS.md between
//! its `handshake` markers.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;

const RUNS: usize = 20;
const START_MARK: &str = "<!-- handshake:start -->";
const END_MARK: &str = "<!-- handshake:end -->";
const SECRET: &str = "bench-turn-secret";

/// What each run reports, in the order of the table: a phase of the
/// timeline, or a note of the report.
const ROWS: [(&str, &str); 4] = [
    ("ICE connected", "ice_connected"),
    ("DTLS connected", "dtls_connected"),
    ("data channel open", "data_channel_open"),
    ("first video frame", "first_video_frame_ms"),
];

pub fn handshake(root: &Path) -> Result<()> {
    crate::e2e::build(root, true)?;
    let tools = crate::tools(root, "release", "bench-logs")?;
    let direct = tools.server("handshake", &[])?;
    let _direct_device = tools.fake_device("handshake", &direct, "bench-device")?;
    let (_coturn, relayed, _secret) = tools.relaying_server("handshake-relay", SECRET)?;
    let _relay_device = tools.fake_device_with(
        "handshake-relay",
        &relayed,
        "bench-device",
        &["--relay-only"],
    )?;

    let ways = [
        (&direct, vec!["--video-wait", "500ms"]),
        (&relayed, vec!["--relay-only", "--video-wait", "500ms"]),
    ];
    // samples[way][row], and each way's echo round trips.
    let mut samples: [Vec<Vec<f64>>; 2] = std::array::from_fn(|_| vec![Vec::new(); ROWS.len()]);
    let mut rtts: [Vec<f64>; 2] = Default::default();
    for run in 0..RUNS {
        for (way, (server, flags)) in ways.iter().enumerate() {
            let output = tools
                .connect_command(server, "bench-device", flags)
                .output()?;
            let report = crate::e2e::check_connect(&output)
                .with_context(|| format!("run {} ({})", run + 1, flags.join(" ")))?;
            if way == 1 {
                anyhow::ensure!(
                    report["candidate_pair"]["local"]["type"] == "relay",
                    "relay only, but not relayed: {report}"
                );
            }
            for (row, (_, key)) in ROWS.iter().enumerate() {
                let value = report["phases_ms"][key]
                    .as_f64()
                    .or_else(|| report[key].as_f64());
                samples[way][row].push(value.unwrap_or(f64::NAN));
            }
            if let Some(values) = report["echo_rtt_ms"].as_array() {
                rtts[way].extend(values.iter().filter_map(Value::as_f64));
            }
        }
    }

    let cell = |values: &mut Vec<f64>, digits: usize| {
        let (median, min, max) = crate::spread(values);
        format!("{median:.digits$} ({min:.digits$}–{max:.digits$})")
    };
    let mut table = String::from(
        "| ms from connect | direct: median (min–max) | relay only: median (min–max) |\n|---|---|---|\n",
    );
    let [direct, relayed] = &mut samples;
    for (row, (name, _)) in ROWS.iter().enumerate() {
        table.push_str(&format!(
            "| {name} | {} | {} |\n",
            cell(&mut direct[row], 1),
            cell(&mut relayed[row], 1)
        ));
    }
    let [direct_rtts, relayed_rtts] = &mut rtts;
    table.push_str(&format!(
        "| data channel echo round trip | {} | {} |\n",
        cell(direct_rtts, 2),
        cell(relayed_rtts, 2)
    ));
    let section = format!(
        "{START_MARK}\n## WebRTC handshake through the server\n\n\
         `cargo xtask bench-handshake` (release build): side by side, one `signaling-server` \
         and one `fake-device` on loopback each way: directly, and relay-only (a coturn \
         on loopback, the server with `--turn-url` and `--turn-secret-file`, `fake-device \
         --relay-only`). Then {RUNS} runs each, alternating, of `client-cli connect DEVICE \
         --json --messages 3 --video-wait 500ms` (with `--relay-only` for the second), timed \
         from the moment the tool starts connecting. Machine: {}.\n\n{table}\n{END_MARK}",
        crate::machine_description()
    );
    print!("{table}");
    crate::replace_section(&root.join("BENCHMARKS.md"), START_MARK, END_MARK, &section)?;
    println!("bench-handshake: BENCHMARKS.md updated");
    Ok(())
}
