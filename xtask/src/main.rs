//! `cargo xtask <task>`: project chores, run with cargo alone.
//!
//! - `e2e`: builds the binaries and runs the whole flow against them: the
//!   signaling relay itself, then eight WebRTC scenarios (see `e2e.rs`).
//! - `bench [--quick]`: release build; the standard load scenarios of
//!   `client-cli bench` with the server pinned to one core, written into
//!   BENCHMARKS.md (`--quick`: a few seconds, small numbers, nothing written).
//! - `bench-handshake`: release build; times `client-cli connect` to a fake
//!   device 20 times and writes the figures into BENCHMARKS.md.
//! - `fuzz [SECONDS]`: each fuzz target for SECONDS (default 30), from the
//!   committed corpus (see `fuzz.rs`).
//! - `browser`: the built-in web client in headless Chromium (see
//!   `browser.rs`), installing Chromium and playwright-core when missing.
//! - `test`: every test: `cargo test --workspace`, then `browser`.
//! - `demo`: a server and a fake device, up until Ctrl-C, and the URL of
//!   the web client connected to the device.
//! - `dist`: the server packed for a host (binary, man page, completions,
//!   systemd unit, settings, docs) under `target/dist/` (see `dist.rs`).
//!
//! Every process a task starts, it stops, also on failure.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

mod bench;
mod browser;
mod demo;
mod dist;
mod e2e;
mod fuzz;
mod load;
mod process;
mod system;

fn main() -> ExitCode {
    let task = std::env::args().nth(1);
    let result = match task.as_deref() {
        Some("e2e") => run_e2e(),
        Some("bench-handshake") => bench::handshake(&workspace_root()),
        Some("browser") => browser::run(&workspace_root()),
        Some("test") => run_all_tests(),
        Some("demo") => demo::run(&workspace_root()),
        Some("dist") => dist::run(&workspace_root()),
        Some("fuzz") => match std::env::args().nth(2).map(|s| s.parse::<u64>()) {
            None => fuzz::run(&workspace_root(), 30),
            Some(Ok(seconds)) => fuzz::run(&workspace_root(), seconds),
            Some(Err(_)) => {
                eprintln!("usage: cargo xtask fuzz [SECONDS]");
                return ExitCode::from(2);
            }
        },
        Some("bench") => {
            let args: Vec<String> = std::env::args().skip(2).collect();
            let quick = args.iter().any(|a| a == "--quick");
            let against = args
                .iter()
                .position(|a| a == "--against")
                .and_then(|i| args.get(i + 1))
                .map(PathBuf::from);
            let only = args
                .iter()
                .position(|a| a == "--only")
                .and_then(|i| args.get(i + 1))
                .map(String::as_str);
            load::run_with(&workspace_root(), quick, against.as_deref(), only)
        }
        _ => {
            eprintln!(
                "usage: cargo xtask <task>\n\n  e2e               build, then run the whole flow end to end\n  bench [--quick] [--against BINARY] [--only TEXT]\n                    load the server with client-cli bench; --quick is a few seconds for CI;\n                    --against compares with another signaling-server binary, alternating;\n                    --only runs the scenarios whose name holds TEXT and prints, writing nothing\n  bench-handshake   time the WebRTC handshake through the server (release build)\n  fuzz [SECONDS]    run each fuzz target for SECONDS (default 30)\n  browser           the web client in headless Chromium (installs it when missing)\n  test              every test: cargo test --workspace, then browser\n  demo              a server and a fake device until Ctrl-C; prints the URL to open\n  dist              the server packed for a host under target/dist (binary, man page,\n                    completions, systemd unit, settings, docs)"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `cargo test --workspace`, then the browser tests.
fn run_all_tests() -> Result<()> {
    let root = workspace_root();
    system::ensure_build_packages()?;
    system::ensure_test_packages()?;
    let status =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(&root)
            .args(["test", "--workspace"])
            .status()
            .context("run cargo test")?;
    ensure!(status.success(), "cargo test --workspace failed: {status}");
    browser::run(&root)
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

fn target_dir(root: &std::path::Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

/// The tools of one build profile, with a fresh log folder.
fn tools(root: &std::path::Path, profile: &str, logs: &str) -> Result<e2e::Tools> {
    let target = target_dir(root);
    let log_dir = target.join(logs);
    let _ = std::fs::remove_dir_all(&log_dir);
    std::fs::create_dir_all(&log_dir)?;
    Ok(e2e::Tools {
        bin_dir: target.join(profile),
        log_dir,
        server_core: None,
    })
}

fn run_e2e() -> Result<()> {
    let root = workspace_root();
    let started = Instant::now();
    e2e::build(&root, false)?;
    println!(
        "e2e: build {:>8.0} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    let tools = tools(&root, "debug", "e2e-logs")?;
    println!("e2e: logs in {}", tools.log_dir.display());

    let started = Instant::now();
    let server = tools.server("0-relay", &["--stun-server", "stun:127.0.0.1:3478"])?;
    let address = server
        .url
        .strip_prefix("ws://")
        .context("a plain server")?
        .to_owned();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime
        .block_on(async {
            tokio::time::timeout(Duration::from_secs(30), signaling_flow(&address)).await
        })
        .context("the relay flow took longer than 30 s")??;
    drop(server);
    println!(
        "e2e: 0. {:<44} ok {:>8.0} ms  offer, candidate, answer relayed verbatim",
        "signaling relay, no WebRTC",
        started.elapsed().as_secs_f64() * 1e3
    );

    e2e::run_scenarios(&tools)?;
    println!("e2e: ok");
    Ok(())
}

/// Median, min and max of `values` (sorting them); NaN when empty.
fn spread(values: &mut [f64]) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    if values.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let mid = values.len() / 2;
    let median = if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    };
    (median, values[0], values[values.len() - 1])
}

/// "N cores, MODEL" from /proc/cpuinfo, for benchmark reports.
fn machine_description() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    format!("{cores} cores, {model}")
}

/// Replaces the text between `start` and `end` (markers included) in
/// `path` with `section`, or appends it.
fn replace_section(path: &std::path::Path, start: &str, end: &str, section: &str) -> Result<()> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".into());
    let updated = match (text.find(start), text.find(end)) {
        (Some(from), Some(to)) if to > from => {
            format!("{}{section}{}", &text[..from], &text[to + end.len()..])
        }
        _ => format!("{}\n{section}\n", text.trim_end()),
    };
    std::fs::write(path, updated).with_context(|| format!("write {}", path.display()))
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn send(ws: &mut Socket, value: Value) -> Result<()> {
    ws.send(Message::text(value.to_string())).await?;
    Ok(())
}

async fn recv(ws: &mut Socket) -> Result<Value> {
    loop {
        match ws.next().await.context("connection ended")?? {
            Message::Text(text) => return Ok(serde_json::from_str(&text)?),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => bail!("unexpected frame {other:?}"),
        }
    }
}

async fn expect_type(ws: &mut Socket, message_type: &str) -> Result<Value> {
    let value = recv(ws).await?;
    ensure!(
        value["message_type"] == message_type,
        "expected {message_type}, got {value}"
    );
    Ok(value)
}

/// A websocket with Nagle's algorithm off: signaling messages are small and
/// latency-bound.
async fn connect(url: &str) -> Result<Socket> {
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
        .await
        .with_context(|| format!("connect to {url}"))?;
    Ok(ws)
}

/// The signaling flow of a Cuttlefish device and a browser-like client.
async fn signaling_flow(address: &str) -> Result<()> {
    let mut device = connect(&format!("ws://{address}/register_device")).await?;
    let device_info = json!({"displays": [{"x_res": 720, "y_res": 1280, "dpi": 320}]});
    send(
        &mut device,
        json!({"message_type": "register", "device_id": "e2e-device", "device_info": device_info}),
    )
    .await?;
    let config = expect_type(&mut device, "config").await?;
    ensure!(
        config["ice_servers"] == json!([{"urls": ["stun:127.0.0.1:3478"]}]),
        "device config: {config}"
    );
    let mut client = connect(&format!("ws://{address}/connect_client")).await?;
    send(
        &mut client,
        json!({"message_type": "connect", "device_id": "e2e-device"}),
    )
    .await?;
    let config = expect_type(&mut client, "config").await?;
    let info = expect_type(&mut client, "device_info").await?;
    ensure!(info["device_info"] == device_info, "device_info: {info}");
    send(
        &mut client,
        json!({"message_type": "forward", "payload": {"type": "request-offer", "ice_servers": config["ice_servers"]}}),
    )
    .await?;
    let request = expect_type(&mut device, "client_msg").await?;
    let client_id = request["client_id"].as_u64().context("client_id")?;
    ensure!(request["payload"]["type"] == "request-offer", "{request}");
    let offer =
        json!({"type": "offer", "sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"});
    send(
        &mut device,
        json!({"message_type": "forward", "client_id": client_id, "payload": offer}),
    )
    .await?;
    let candidate = json!({"type": "ice-candidate", "mid": "0", "mLineIndex": 0,
        "candidate": "candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host"});
    send(
        &mut device,
        json!({"message_type": "forward", "client_id": client_id, "payload": candidate}),
    )
    .await?;
    ensure!(
        expect_type(&mut client, "device_msg").await?["payload"] == offer,
        "offer mangled"
    );
    ensure!(
        expect_type(&mut client, "device_msg").await?["payload"] == candidate,
        "candidate mangled"
    );
    let answer = json!({"type": "answer", "sdp": "v=0\r\n"});
    send(
        &mut client,
        json!({"message_type": "forward", "payload": answer}),
    )
    .await?;
    ensure!(
        expect_type(&mut device, "client_msg").await?["payload"] == answer,
        "answer mangled"
    );
    client.close(None).await?;
    let left = expect_type(&mut device, "client_disconnected").await?;
    ensure!(left["client_id"] == client_id, "{left}");
    device.close(None).await?;
    while let Some(Ok(_)) = device.next().await {}
    Ok(())
}
