//! `cargo xtask <task>`: project chores, run with cargo alone.
//!
//! - `e2e`: builds the server, starts it on a free loopback port, and runs
//!   the whole signaling flow against the real binary: a device registers,
//!   a client connects, they exchange a Cuttlefish-style offer, answer and
//!   ICE candidates, the client leaves and the device is told, the device
//!   leaves, and SIGTERM stops the server cleanly. Every process it starts
//!   it stops, also on failure.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

fn main() -> ExitCode {
    let task = std::env::args().nth(1);
    let result = match task.as_deref() {
        Some("e2e") => e2e(),
        _ => {
            eprintln!(
                "usage: cargo xtask e2e\n\n  e2e   build the server and run the whole signaling flow against it"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("e2e: FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// A child process that is killed and reaped when dropped.
struct Process {
    child: Child,
    name: &'static str,
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn e2e() -> Result<()> {
    let root = workspace_root();
    let started = Instant::now();
    let status = cargo()
        .current_dir(&root)
        .args([
            "build",
            "--quiet",
            "--package",
            "signaling-server",
            "--bin",
            "signaling-server",
        ])
        .status()
        .context("run cargo build")?;
    ensure!(status.success(), "cargo build failed");
    step("build", started);

    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let binary = target.join("debug").join("signaling-server");
    let started = Instant::now();
    let mut child = Command::new(&binary)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--stun-server",
            "stun:127.0.0.1:3478",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {}", binary.display()))?;
    let stdout = child.stdout.take().context("server stdout")?;
    let mut server = Process {
        child,
        name: "signaling-server",
    };
    let address = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|line| {
            let rest = line.strip_prefix("signaling server on ws://")?;
            Some(rest.split_whitespace().next()?.to_owned())
        })
        .context("the server did not print its address")?;
    step(&format!("server listening on {address}"), started);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime
        .block_on(async {
            tokio::time::timeout(Duration::from_secs(30), signaling_flow(&address)).await
        })
        .context("the flow took longer than 30 s")??;

    let started = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .context("send SIGTERM")?;
    ensure!(status.success(), "kill -TERM failed");
    let deadline = Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(exit) = server.child.try_wait()? {
            break exit;
        }
        if Instant::now() > deadline {
            bail!("{} did not exit within 15 s of SIGTERM", server.name);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    ensure!(
        exit.success(),
        "the server exited with {exit} after SIGTERM"
    );
    step("SIGTERM: server exited 0", started);
    println!("e2e: ok");
    Ok(())
}

fn step(what: &str, started: Instant) {
    println!(
        "e2e: {what:<58} {:>8.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
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
    let started = Instant::now();
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
    step("device registered, got config", started);

    let started = Instant::now();
    let mut client = connect(&format!("ws://{address}/connect_client")).await?;
    send(
        &mut client,
        json!({"message_type": "connect", "device_id": "e2e-device"}),
    )
    .await?;
    let config = expect_type(&mut client, "config").await?;
    let info = expect_type(&mut client, "device_info").await?;
    ensure!(info["device_info"] == device_info, "device_info: {info}");
    step("client connected, got config and device_info", started);

    let started = Instant::now();
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
    step("offer, candidate and answer relayed verbatim", started);

    let started = Instant::now();
    client.close(None).await?;
    let left = expect_type(&mut device, "client_disconnected").await?;
    ensure!(left["client_id"] == client_id, "{left}");
    step("client left, device told", started);

    let started = Instant::now();
    device.close(None).await?;
    while let Some(Ok(_)) = device.next().await {}
    step("device left", started);
    Ok(())
}
