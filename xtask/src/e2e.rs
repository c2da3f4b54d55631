//! `cargo xtask e2e`: the whole flow against the real binaries.
//!
//! Starts the server on a free loopback port, fake devices and client-cli,
//! and checks each scenario end to end: the signaling relay itself, then a
//! real WebRTC handshake over plain ws, over wss with a self-signed
//! certificate, with tokens, with five clients on one device, in the
//! alternative flow, across a device restart, across a server restart, and
//! the rest `run_scenarios` lists (the device socket, a Cuttlefish-shaped
//! device, two instances on Redis, a TURN relay).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::process::{Process, read_stdout_until};

/// Where the binaries are and where logs go.
pub struct Tools {
    pub bin_dir: PathBuf,
    pub log_dir: PathBuf,
    /// Pin the server to this CPU core (with taskset), for benchmarks.
    pub server_core: Option<u32>,
}

/// A running server and the URL its tools use.
pub struct Server {
    pub process: Process,
    pub url: String,
    /// Flags every tool needs to reach it (`--ca-cert`, `--token`, ...).
    pub tool_flags: Vec<String>,
    /// Flags `client-cli bench` needs after `bench` (`--device-socket`).
    pub bench_flags: Vec<String>,
    /// Processes that live and die with it (another instance, Redis).
    pub companions: Vec<Process>,
}

impl Tools {
    pub fn command(&self, binary: &str) -> Command {
        let mut command = Command::new(self.bin_dir.join(binary));
        command.env("RUST_LOG", "info");
        command
    }

    /// `binary` pinned to `core` with taskset.
    pub fn pinned_command(&self, binary: &str, core: u32) -> Command {
        let mut command = Command::new("taskset");
        command
            .args(["-c", &core.to_string()])
            .arg(self.bin_dir.join(binary))
            .env("RUST_LOG", "info");
        command
    }

    pub fn log(&self, name: &str) -> PathBuf {
        self.log_dir.join(format!("{name}.log"))
    }

    /// Starts the server with `args` on 127.0.0.1:0.
    pub fn server(&self, name: &str, args: &[&str]) -> Result<Server> {
        let mut command = match self.server_core {
            Some(core) => self.pinned_command("signaling-server", core),
            None => self.command("signaling-server"),
        };
        if !args.contains(&"--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let mut process = Process::start(
            command,
            &format!("{name}-server"),
            &self.log(&format!("{name}-server")),
        )?;
        let line = read_stdout_until(&mut process, "signaling server on ")?;
        let url = line
            .split_whitespace()
            .next()
            .context("no URL in the server's banner")?
            .to_owned();
        Ok(Server {
            process,
            url,
            tool_flags: Vec::new(),
            bench_flags: Vec::new(),
            companions: Vec::new(),
        })
    }

    /// A redis-server of its own on a free loopback port and two
    /// instances on it, each started with `flags` too, once both have
    /// joined: (Redis, the first instance, the second).
    pub fn two_instances(&self, name: &str, flags: &[&str]) -> Result<(Process, Server, Server)> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null());
        let redis = Process::start(
            command,
            &format!("{name}-redis"),
            &self.log(&format!("{name}-redis")),
        )
        .context("redis-server (apt-get install redis-server)")?;
        let url = format!("redis://127.0.0.1:{port}/");
        let mut flags = flags.to_vec();
        flags.extend(["--redis", url.as_str()]);
        // redis-server takes a moment to listen; the instances join on
        // their own once it does.
        let a = self.server(&format!("{name}-a"), &flags)?;
        let b = self.server(&format!("{name}-b"), &flags)?;
        let deadline = Instant::now() + Duration::from_secs(15);
        while metric(&a, "signaling_cluster_redis_up")? != 1.0
            || metric(&b, "signaling_cluster_redis_up")? != 1.0
        {
            ensure!(
                Instant::now() < deadline,
                "the instances never joined redis"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok((redis, a, b))
    }

    /// A coturn of its own taking credentials signed with `secret`, and a
    /// server handing them out (`--turn-url`, `--turn-secret-file`): the
    /// coturn, the server and the secret file.
    pub fn relaying_server(
        &self,
        name: &str,
        secret: &str,
    ) -> Result<(support::coturn::Coturn, Server, PathBuf)> {
        let coturn = support::coturn::Coturn::start(&[secret])?;
        let secret_file = self.log_dir.join(format!("{name}-turn-secret"));
        std::fs::write(&secret_file, secret)?;
        let secret_flag = secret_file.to_string_lossy().into_owned();
        let turn_url = coturn.url();
        let server = self.server(
            name,
            &["--turn-url", &turn_url, "--turn-secret-file", &secret_flag],
        )?;
        Ok((coturn, server, secret_file))
    }

    /// Starts a fake device and waits until the server lists it.
    pub fn fake_device(&self, name: &str, server: &Server, device_id: &str) -> Result<Process> {
        self.fake_device_with(name, server, device_id, &[])
    }

    /// [`Self::fake_device`] with `extra` flags.
    pub fn fake_device_with(
        &self,
        name: &str,
        server: &Server,
        device_id: &str,
        extra: &[&str],
    ) -> Result<Process> {
        let info = format!(r#"{{"e2e":"{name}","displays":[{{"x_res":640,"y_res":360}}]}}"#);
        let mut args = vec!["--device-info", info.as_str()];
        args.extend_from_slice(extra);
        self.fake_device_as(name, server, device_id, &args)
    }

    /// A fake device started with exactly `args` (so with its own,
    /// Cuttlefish-shaped, device_info unless they give one).
    pub fn fake_device_as(
        &self,
        name: &str,
        server: &Server,
        device_id: &str,
        args: &[&str],
    ) -> Result<Process> {
        let mut command = self.command("fake-device");
        // A device told where to register (`--server unix:PATH`) goes there.
        if !args.contains(&"--server") {
            command
                .args(["--server", &server.url])
                .args(&server.tool_flags);
        }
        command
            .args(["--device-id", device_id])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let process = Process::start(
            command,
            &format!("{name}-fake-device"),
            &self.log(&format!("{name}-fake-device")),
        )?;
        self.wait_listed(server, device_id, &process)?;
        Ok(process)
    }

    /// Polls `client-cli devices` until `device_id` is listed.
    pub fn wait_listed(&self, server: &Server, device_id: &str, device: &Process) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            let output = self
                .command("client-cli")
                .args(["--server", &server.url])
                .args(&server.tool_flags)
                .arg("devices")
                .output()?;
            if String::from_utf8_lossy(&output.stdout)
                .lines()
                .any(|l| l == device_id)
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "{device_id} never registered; fake-device log:\n{}",
            device.log_tail(20)
        )
    }

    /// A `client-cli connect` command with --json; it does not wait for
    /// video frames unless `extra` says `--video-wait`.
    pub fn connect_command(&self, server: &Server, device_id: &str, extra: &[&str]) -> Command {
        self.connect_command_to(&server.url, &server.tool_flags, device_id, extra)
    }

    /// [`Self::connect_command`] to the server at `url`, with `tool_flags`.
    pub fn connect_command_to(
        &self,
        url: &str,
        tool_flags: &[String],
        device_id: &str,
        extra: &[&str],
    ) -> Command {
        let mut command = self.command("client-cli");
        command
            .args(["--server", url])
            .args(tool_flags)
            .args(["connect", device_id, "--json", "--messages", "3"])
            .args(extra);
        if !extra.contains(&"--video-wait") {
            command.args(["--video-wait", "0s"]);
        }
        command.env("RUST_LOG", "warn").stdin(Stdio::null());
        command
    }

    /// Runs `client-cli connect` to completion and checks its report.
    pub fn connect(&self, server: &Server, device_id: &str) -> Result<Handshake> {
        let output = self.connect_command(server, device_id, &[]).output()?;
        check_connect(&output).map(|report| Handshake {
            data_channel_open_ms: data_channel_open_ms(&report),
        })
    }
}

/// What a successful `client-cli connect` reported.
pub struct Handshake {
    pub data_channel_open_ms: f64,
}

/// Checks a `client-cli connect --json` run: exit 0, every phase reached,
/// three echoes. Returns the report.
pub fn check_connect(output: &std::process::Output) -> Result<Value> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.success(),
        "client-cli connect failed ({}): {}{}",
        output.status,
        stdout.trim(),
        stderr.trim()
    );
    let report: Value = serde_json::from_str(stdout.trim())
        .with_context(|| format!("client-cli printed no JSON report: {stdout}"))?;
    ensure!(
        report["ok"] == true,
        "client-cli reported failure: {report}"
    );
    for phase in protocol::payload::Phase::REQUIRED.map(protocol::payload::Phase::key) {
        ensure!(
            report["phases_ms"][phase].is_number(),
            "phase {phase:?} missing from {report}"
        );
    }
    let echoes = report["echo_rtt_ms"].as_array().map_or(0, Vec::len);
    ensure!(
        echoes == 3,
        "expected 3 echo round trips, got {echoes}: {report}"
    );
    Ok(report)
}

/// The frames `client-cli connect --json` counted on the video stream
/// `id`; 0 without one.
fn stream_frames(report: &Value, id: &str) -> u64 {
    report["streams"]
        .as_array()
        .and_then(|streams| streams.iter().find(|s| s["stream_id"] == id))
        .and_then(|s| s["frames"].as_u64())
        .unwrap_or(0)
}

fn data_channel_open_ms(report: &Value) -> f64 {
    report["phases_ms"]["data_channel_open"]
        .as_f64()
        .unwrap_or_default()
}

fn report(number: usize, name: &str, started: Instant, detail: &str) {
    println!(
        "e2e: {number}. {name:<44} ok {:>8.0} ms  {detail}",
        started.elapsed().as_secs_f64() * 1e3
    );
}

/// A scenario: runs against the tools, returns a line of detail.
type Scenario = fn(&Tools) -> Result<String>;

/// Runs every scenario; the first failure stops the run.
pub fn run_scenarios(tools: &Tools) -> Result<()> {
    let scenarios: [(&str, Scenario); 14] = [
        ("plain ws, one client", plain_ws),
        (
            "wss, self-signed certificate via --ca-cert",
            wss_self_signed,
        ),
        ("token auth, and a wrong token refused", tokens),
        ("five clients on one device at once", five_clients),
        ("alternative flow: client first", alternative_flow),
        ("device restart", device_restart),
        ("server restart: the device re-registers", server_restart),
        (
            "kill -9 mid-handshake: clients and a device",
            killed_mid_handshake,
        ),
        ("device on the socket; both client APIs", device_socket),
        (
            "a Cuttlefish-shaped device: displays, audio, input",
            cuttlefish_shaped,
        ),
        ("device and client on two instances (Redis)", two_instances),
        ("relay only, through a real coturn", relay_only),
        ("signed tokens, scoped to a device", signed_tokens),
        (
            "TCP cut mid-session: signaling resumes, media goes on",
            tcp_cut,
        ),
    ];
    for (index, (name, scenario)) in scenarios.iter().enumerate() {
        let started = Instant::now();
        let detail = scenario(tools).with_context(|| format!("scenario {}: {name}", index + 1))?;
        report(index + 1, name, started, &detail);
    }
    Ok(())
}

fn plain_ws(tools: &Tools) -> Result<String> {
    let mut server = tools.server("1-plain", &[])?;
    let _device = tools.fake_device("1-plain", &server, "e2e-plain")?;
    // The device's screen too: a second of its live frames, and a
    // keyframe request after the tenth, answered with the next frame (the
    // encoder's own next keyframe is seconds away).
    let output = tools
        .connect_command(
            &server,
            "e2e-plain",
            &["--video-wait", "1s", "--request-keyframe"],
        )
        .output()?;
    let report = check_connect(&output)?;
    let frames = report["video_frames"].as_u64().unwrap_or(0);
    ensure!(
        frames >= 20,
        "expected about 30 video frames in a second, got {frames}: {report}"
    );
    let answered = report["keyframe_after_request_frames"].as_u64();
    ensure!(
        answered.is_some_and(|n| n <= 2),
        "the keyframe request was not answered within two frames: {report}"
    );
    // A clean stop: SIGTERM, exit 0.
    server.process.signal("TERM")?;
    let status = server.process.wait_exit(Duration::from_secs(15))?;
    ensure!(
        status.success(),
        "the server exited with {status} after SIGTERM"
    );
    Ok(format!(
        "data channel open at {:.1} ms; {frames} video frames in 1 s, the first at {} ms, a requested keyframe {} ms after the request; SIGTERM exit 0",
        data_channel_open_ms(&report),
        report["first_video_frame_ms"],
        report["keyframe_after_request_ms"]
    ))
}

fn wss_self_signed(tools: &Tools) -> Result<String> {
    let cert_dir = tools.log_dir.join("2-tls");
    let cert_dir_arg = cert_dir.to_string_lossy().into_owned();
    let mut server = tools.server(
        "2-wss",
        &["--tls-self-signed", "--tls-self-signed-dir", &cert_dir_arg],
    )?;
    ensure!(
        server.url.starts_with("wss://"),
        "not a TLS server: {}",
        server.url
    );
    let cert = cert_dir.join("cert.pem");
    server.tool_flags = vec!["--ca-cert".into(), cert.to_string_lossy().into_owned()];
    let _device = tools.fake_device("2-wss", &server, "e2e-tls")?;
    let handshake = tools.connect(&server, "e2e-tls")?;

    // Without --ca-cert the tool says the certificate is not trusted.
    let output = tools
        .command("client-cli")
        .args(["--server", &server.url, "devices"])
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        !output.status.success() && stderr.contains("is not trusted"),
        "an untrusted certificate was not reported: {stderr}"
    );
    Ok(format!(
        "data channel open at {:.1} ms; untrusted cert reported",
        handshake.data_channel_open_ms
    ))
}

fn tokens(tools: &Tools) -> Result<String> {
    let mut server = tools.server(
        "3-tokens",
        &[
            "--device-token",
            "e2e-device-secret",
            "--client-token",
            "e2e-client-secret",
        ],
    )?;
    server.tool_flags = vec!["--token".into(), "e2e-device-secret".into()];
    let _device = {
        // fake-device presents the device token; listing devices needs the
        // client token, so wait for it with that one.
        let mut command = tools.command("fake-device");
        command
            .args([
                "--server",
                &server.url,
                "--token",
                "e2e-device-secret",
                "--device-id",
                "e2e-token",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let device = Process::start(
            command,
            "3-tokens-fake-device",
            &tools.log("3-tokens-fake-device"),
        )?;
        server.tool_flags = vec!["--token".into(), "e2e-client-secret".into()];
        tools.wait_listed(&server, "e2e-token", &device)?;
        device
    };
    let handshake = tools.connect(&server, "e2e-token")?;

    server.tool_flags = vec!["--token".into(), "wrong".into()];
    let output = tools.connect_command(&server, "e2e-token", &[]).output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(!output.status.success(), "a wrong token was accepted");
    ensure!(
        stderr.contains("the server refused the token (HTTP 401"),
        "the refusal was not reported in the tool's words: {stderr}"
    );
    Ok(format!(
        "data channel open at {:.1} ms; wrong token refused",
        handshake.data_channel_open_ms
    ))
}

/// Tokens minted by `signaling-server token`: the device registers with
/// its own, a client reaches the device its token names, and a token for
/// other devices, or a device's token, is refused in the tools' words.
fn signed_tokens(tools: &Tools) -> Result<String> {
    let secret = tools.log_dir.join("13-token-secret");
    std::fs::write(&secret, "e2e: a token secret of at least 32 bytes\n")?;
    let secret_arg = secret.to_string_lossy().into_owned();
    let mint = |role: &str, device: &str| -> Result<String> {
        let output = tools
            .command("signaling-server")
            .args(["token", "--token-secret-file", &secret_arg])
            .args(["--role", role, "--device", device, "--ttl", "10m"])
            .output()?;
        ensure!(
            output.status.success(),
            "signaling-server token failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8(output.stdout)?.trim().to_owned())
    };
    let device_token = mint("device", "e2e-signed")?;
    let client_token = mint("client", "e2e-signed")?;
    let other_token = mint("client", "other-*")?;
    let mut server = tools.server("13-signed", &["--token-secret-file", &secret_arg])?;
    // fake-device presents the device's token; listing devices needs a
    // client's, so it is waited for with that one.
    let mut command = tools.command("fake-device");
    command
        .args(["--server", &server.url, "--token", &device_token])
        .args(["--device-id", "e2e-signed"])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let device = Process::start(
        command,
        "13-signed-fake-device",
        &tools.log("13-signed-fake-device"),
    )?;
    server.tool_flags = vec!["--token".into(), client_token];
    tools.wait_listed(&server, "e2e-signed", &device)?;
    let handshake = tools.connect(&server, "e2e-signed")?;

    for (token, want) in [
        (
            &other_token,
            "Device not allowed: the token does not cover the device id e2e-signed",
        ),
        (&device_token, "a device's token cannot connect as a client"),
    ] {
        server.tool_flags = vec!["--token".into(), token.clone()];
        let output = tools.connect_command(&server, "e2e-signed", &[]).output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        ensure!(
            !output.status.success(),
            "a token that should not reach e2e-signed did"
        );
        ensure!(stderr.contains(want), "expected {want:?}: {stderr}");
    }
    Ok(format!(
        "data channel open at {:.1} ms; a token for other-* and a device's token refused",
        handshake.data_channel_open_ms
    ))
}

fn five_clients(tools: &Tools) -> Result<String> {
    let server = tools.server("4-five", &[])?;
    let _device = tools.fake_device("4-five", &server, "e2e-five")?;
    let children: Vec<_> = (0..5)
        .map(|_| {
            tools
                .connect_command(&server, "e2e-five", &[])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    let mut slowest: f64 = 0.0;
    for child in children {
        let report = check_connect(&child.wait_with_output()?)?;
        slowest = slowest.max(data_channel_open_ms(&report));
    }
    Ok(format!("slowest data channel open at {slowest:.1} ms"))
}

fn alternative_flow(tools: &Tools) -> Result<String> {
    let server = tools.server("5-wait", &["--client-wait-secs", "15"])?;
    let client = tools
        .connect_command(&server, "e2e-later", &["--timeout", "30s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // The client is connected and waiting before the device exists.
    std::thread::sleep(Duration::from_millis(500));
    let _device = tools.fake_device("5-wait", &server, "e2e-later")?;
    let report = check_connect(&client.wait_with_output()?)?;
    Ok(format!(
        "client waited, then data channel open at {:.1} ms",
        data_channel_open_ms(&report)
    ))
}

fn device_restart(tools: &Tools) -> Result<String> {
    let server = tools.server("6-restart", &[])?;
    let device = tools.fake_device("6-restart", &server, "e2e-restart")?;
    // A client that stays connected, watching what the server tells it.
    let mut command = tools.command("client-cli");
    command
        .args(["--server", &server.url, "raw", "client", "e2e-restart"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut watcher = Process::start(
        command,
        "6-restart-raw-client",
        &tools.log("6-restart-raw-client"),
    )?;
    let stdout = watcher.child.stdout.take().context("raw client stdout")?;
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let expect_line = |what: &str, check: &dyn Fn(&str) -> bool| -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match lines.recv_timeout(left) {
                Ok(line) if check(&line) => return Ok(()),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        bail!("the watching client never saw {what}")
    };
    expect_line("device_info", &|l| {
        l.contains(r#""message_type":"device_info""#)
    })?;

    // Kill the device without warning: its session is held for a resume
    // that will not come (its token died with it).
    device.signal("KILL")?;
    drop(device);

    // It comes back under the same id, this time looping a VP8 clip
    // (`--video FILE`) instead of its live screen: registering afresh, it
    // takes the id from the held session, whose client hears that its
    // device left; a new client gets through and sees the clip play.
    let clip = crate::workspace_root().join("fake-device/media/test-pattern.ivf");
    let clip = clip.to_string_lossy();
    let _device = tools.fake_device_with(
        "6-restart-again",
        &server,
        "e2e-restart",
        &["--video", &clip],
    )?;
    expect_line("Device disconnected", &|l| {
        l == r#"{"error":"Device disconnected"}"#
    })?;
    watcher.wait_exit(Duration::from_secs(10))?;
    let output = tools
        .connect_command(&server, "e2e-restart", &["--video-wait", "1s"])
        .output()?;
    let report = check_connect(&output)?;
    let frames = report["video_frames"].as_u64().unwrap_or(0);
    ensure!(
        frames >= 20,
        "expected about 30 frames of the clip in a second, got {frames}: {report}"
    );
    Ok(format!(
        "Device disconnected seen; after re-registering, data channel open at {:.1} ms, {frames} frames of the --video clip in 1 s",
        data_channel_open_ms(&report)
    ))
}

fn server_restart(tools: &Tools) -> Result<String> {
    let mut server = tools.server("7-server", &[])?;
    let device = tools.fake_device("7-server", &server, "e2e-comeback")?;
    let address = server
        .url
        .strip_prefix("ws://")
        .context("a plain server")?
        .to_owned();
    server.process.signal("TERM")?;
    server.process.wait_exit(Duration::from_secs(15))?;
    // The same address again, so the device's URL still points at it.
    let server = tools.server("7-server-again", &["--listen", &address])?;
    tools.wait_listed(&server, "e2e-comeback", &device)?;
    let handshake = tools.connect(&server, "e2e-comeback")?;
    // The server's 1001 at shutdown ended the session: it registered
    // afresh, with no resume to try.
    let log = std::fs::read_to_string(&device.log).unwrap_or_default();
    ensure!(
        log.contains("server connection lost; re-registering"),
        "fake-device did not say it re-registered:\n{}",
        device.log_tail(20)
    );
    Ok(format!(
        "re-registered; data channel open at {:.1} ms",
        handshake.data_channel_open_ms
    ))
}

/// Clients and a device killed with SIGKILL at points through the
/// handshake: the server keeps serving, the killed device's id is freed,
/// and its client gauge returns to zero (every killed client was let go).
fn killed_mid_handshake(tools: &Tools) -> Result<String> {
    // A killed peer's session is held for the window, then let go.
    let server = tools.server("8-kill", &["--resume-window", "1s"])?;
    let _steady = tools.fake_device("8-kill-steady", &server, "e2e-steady")?;
    // The handshake takes about 30 ms to the data channel: kill at points
    // from before the offer to after it.
    let delays_ms = [0u64, 2, 5, 8, 12, 16, 20, 25, 30, 40, 60, 100];
    for (n, delay) in delays_ms.iter().enumerate() {
        let mut command = tools.connect_command(&server, "e2e-steady", &[]);
        command.stdout(Stdio::null());
        let client = Process::start(
            command,
            &format!("8-kill-client-{n}"),
            &tools.log(&format!("8-kill-client-{n}")),
        )?;
        std::thread::sleep(Duration::from_millis(*delay));
        client.signal("KILL")?;
    }
    // A device killed while a client is half way through its handshake.
    let doomed = tools.fake_device("8-kill-doomed", &server, "e2e-doomed")?;
    let mut command = tools.connect_command(&server, "e2e-doomed", &[]);
    command.stdout(Stdio::null());
    let mut watching = Process::start(
        command,
        "8-kill-doomed-client",
        &tools.log("8-kill-doomed-client"),
    )?;
    std::thread::sleep(Duration::from_millis(10));
    doomed.signal("KILL")?;
    // It ends either way (it reports the failure, or it finished first).
    let watched = watching.wait_exit(Duration::from_secs(30))?;

    // Everyone killed is gone from the server; the steady device serves.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (devices, clients) = (
            metric(&server, "signaling_devices")?,
            metric(&server, "signaling_clients")?,
        );
        if devices == 1.0 && clients == 0.0 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "after the kills the server still counts {devices} devices and {clients} clients"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let handshake = tools.connect(&server, "e2e-steady")?;
    Ok(format!(
        "{} clients and a device killed (its client {}); gauges back to 1 device, 0 clients; then data channel open at {:.1} ms",
        delays_ms.len(),
        if watched.success() {
            "had finished"
        } else {
            "failed, as it should"
        },
        handshake.data_channel_open_ms
    ))
}

/// One sample of the server's /metrics, 0 when absent.
fn metric(server: &Server, series: &str) -> Result<f64> {
    let address = server.url.strip_prefix("ws://").context("a plain server")?;
    let address = address.parse().context("a numeric server address")?;
    let metrics = support::http::get_blocking(address, "/metrics")?;
    ensure!(metrics.status == 200, "GET /metrics: {}", metrics.status);
    Ok(support::prometheus::sample_or_zero(&metrics.body, series))
}

/// fake-device registers on the device socket, as a Cuttlefish device
/// does with the Go operator; client-cli reaches it over the seed's
/// websocket and over the Go operator's `/devices/{id}/connect`.
fn device_socket(tools: &Tools) -> Result<String> {
    let dir = std::env::temp_dir().join(format!("e2e-device-socket-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("operator");
    let path_arg = path.to_string_lossy().into_owned();
    let mut server = tools.server("9-socket", &[&format!("--socket_path={path_arg}")])?;
    let _device = tools.fake_device_with(
        "9-socket",
        &server,
        "e2e-socket",
        &["--device-socket", &path_arg],
    )?;
    let handshake = tools.connect(&server, "e2e-socket")?;
    ensure!(
        metric(&server, "signaling_device_socket_connections")? == 1.0,
        "the device is not on the socket"
    );
    // The Go operator's client API to the same device.
    let output = tools
        .connect_command(&server, "e2e-socket", &["--api", "go"])
        .output()?;
    let go = check_connect(&output)?;
    server.process.signal("TERM")?;
    let status = server.process.wait_exit(Duration::from_secs(15))?;
    ensure!(status.success(), "the server exited with {status}");
    ensure!(!path.exists(), "the socket was not removed at exit");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(format!(
        "registered over SOCK_SEQPACKET; data channel open at {:.1} ms over /connect_client, {:.1} ms over /devices/{{id}}/connect; socket removed at exit",
        handshake.data_channel_open_ms,
        data_channel_open_ms(&go)
    ))
}

/// A fake device as Cuttlefish's client sees one, registered on the device
/// socket with `--server unix:PATH`: two displays each under its stream
/// id and playing, the audio stream, `device-control` opened by the
/// device, and a touch on the first display reported back.
fn cuttlefish_shaped(tools: &Tools) -> Result<String> {
    let dir = std::env::temp_dir().join(format!("e2e-cuttlefish-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("operator");
    let server = tools.server(
        "10-cuttlefish",
        &[&format!("--device-socket={}", path.display())],
    )?;
    // Registered on the device socket, named as the real streamer's
    // server address is.
    let socket = format!("unix:{}", path.display());
    let _device = tools.fake_device_as(
        "10-cuttlefish",
        &server,
        "cvd-1",
        &["--server", &socket, "--displays", "2", "--device-port", "0"],
    )?;
    let output = tools
        .connect_command(&server, "cvd-1", &["--video-wait", "1s", "--input"])
        .output()?;
    let report = check_connect(&output)?;
    let streams = report["streams"].as_array().cloned().unwrap_or_default();
    let stream = |id: &str| streams.iter().find(|s| s["stream_id"] == id).cloned();
    for display in ["display_0", "display_1"] {
        let Some(seen) = stream(display) else {
            bail!("no {display} stream: {report}");
        };
        let frames = seen["frames"].as_u64().unwrap_or(0);
        ensure!(
            seen["kind"] == "video" && frames >= 20,
            "{display}: expected a playing video track, got {seen}: {report}"
        );
    }
    ensure!(
        stream("audio_0").is_some_and(|s| s["kind"] == "audio"),
        "no audio_0 audio stream: {report}"
    );
    let channels = report["device_channels"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    ensure!(
        channels.iter().any(|c| c == "device-control"),
        "the device did not open device-control: {report}"
    );
    let inputs = report["input_reports"].as_array().map_or(0, Vec::len);
    ensure!(
        inputs == 2,
        "expected the touch's down and up reported, got {inputs}: {report}"
    );
    ensure!(
        metric(&server, "signaling_device_socket_connections")? == 1.0,
        "the device is not on the socket"
    );
    // The device's own page, through the server's files proxy: the touch
    // landed on the first display (and is drawn there).
    let address = server
        .url
        .strip_prefix("ws://")
        .context("a plain server")?
        .parse()?;
    let page = support::http::get_blocking(address, "/devices/cvd-1/files/status.json")?;
    ensure!(page.status == 200, "the device's page: {page:?}");
    let status: Value = serde_json::from_str(&page.body)?;
    ensure!(
        status["displays"][0]["touches"] == 1 && status["displays"][1]["touches"] == 0,
        "the device's page does not show the touch on display_0: {status}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(format!(
        "on the device socket; streams {}; the device opened {}; a touch's down and up reported, and on display_0 in the device's page",
        streams
            .iter()
            .map(|s| format!(
                "{} ({})",
                s["stream_id"].as_str().unwrap_or(""),
                s["kind"].as_str().unwrap_or("")
            ))
            .collect::<Vec<_>>()
            .join(", "),
        channels
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// TURN (PROTOCOL.md, "TURN"): a coturn of its own sharing a secret with
/// the server, a relay-only device with two displays and a relay-only
/// client-cli, so everything of the session crosses the relay; then the
/// server's secret file changes to another secret, SIGHUP, and the next
/// connection is refused by coturn and says so.
fn relay_only(tools: &Tools) -> Result<String> {
    let (coturn, server, secret) = tools.relaying_server("12", "e2e-turn-secret")?;
    let _device = tools.fake_device_as(
        "12-relay",
        &server,
        "cvd-1",
        &["--displays", "2", "--relay-only"],
    )?;
    let output = tools
        .connect_command(&server, "cvd-1", &["--relay-only", "--video-wait", "1s"])
        .output()?;
    let report = check_connect(&output)?;
    let pair = &report["candidate_pair"];
    ensure!(
        pair["local"]["type"] == "relay",
        "relay only, but the pair is {pair}: {report}"
    );
    let frames = |id: &str| stream_frames(&report, id);
    ensure!(
        frames("display_0") >= 10 && frames("display_1") >= 10,
        "both displays should play through the relay: {report}"
    );
    let log = coturn.log();
    ensure!(
        log.contains(":cvd-1/client-1>: incoming packet ALLOCATE processed, success"),
        "coturn never allocated for cvd-1/client-1:\n{log}"
    );
    // Another secret than coturn's: the server reads it on SIGHUP, and
    // the relay refuses what it signs.
    std::fs::write(&secret, "not-coturns-secret\n")?;
    server.process.signal("HUP")?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let refused = loop {
        let output = tools
            .connect_command(&server, "cvd-1", &["--relay-only", "--timeout", "10s"])
            .output()?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() && stdout.contains("TURN authentication failed") {
            break stdout;
        }
        ensure!(
            Instant::now() < deadline,
            "after the secret changed, connections still relay: {stdout}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    ensure!(
        refused.contains("do not share the same secret"),
        "the refusal does not say why: {refused}"
    );
    Ok(format!(
        "pair {} ↔ {}; data channel open at {:.1} ms, {} and {} frames through coturn; after SIGHUP with another secret: TURN authentication failed",
        pair["local"]["type"].as_str().unwrap_or(""),
        pair["remote"]["type"].as_str().unwrap_or(""),
        data_channel_open_ms(&report),
        frames("display_0"),
        frames("display_1")
    ))
}

/// Two instances sharing a redis-server of their own: the Cuttlefish-shaped
/// device registers on one, client-cli connects through the other, and
/// the whole WebRTC handshake, both displays' video and a touch cross
/// between them.
fn two_instances(tools: &Tools) -> Result<String> {
    let (_redis, a, b) = tools.two_instances("11", &[])?;
    let device = tools.fake_device_as("11-two", &a, "cvd-1", &["--displays", "2"])?;
    tools.wait_listed(&b, "cvd-1", &device)?;
    let output = tools
        .connect_command(&b, "cvd-1", &["--video-wait", "1s", "--input"])
        .output()?;
    let report = check_connect(&output)?;
    let frames = |id: &str| stream_frames(&report, id);
    ensure!(
        frames("display_0") >= 20 && frames("display_1") >= 20,
        "expected both displays playing through the other instance: {report}"
    );
    let inputs = report["input_reports"].as_array().map_or(0, Vec::len);
    ensure!(
        inputs == 2,
        "expected the touch reported back, got {inputs}: {report}"
    );
    let sent = metric(&b, "signaling_cluster_frames_sent_total")?;
    let received = metric(&b, "signaling_cluster_frames_received_total")?;
    ensure!(
        sent > 0.0 && received > 0.0,
        "the signaling did not cross instances: sent {sent}, received {received}"
    );
    Ok(format!(
        "data channel open at {:.1} ms through the other instance; {} and {} frames on the displays; a touch reported back; {sent} frames to the device's instance, {received} back",
        data_channel_open_ms(&report),
        frames("display_0"),
        frames("display_1"),
    ))
}

/// The build step: every binary the scenarios run.
pub fn build(root: &Path, release: bool) -> Result<()> {
    crate::system::ensure_build_packages()?;
    // Scenarios 11 and 12 and the benchmarks run redis-servers and coturns.
    crate::system::ensure_test_packages()?;
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.current_dir(root).args([
        "build",
        "--quiet",
        "--package",
        "signaling-server",
        "--package",
        "fake-device",
        "--package",
        "client-cli",
        "--bins",
    ]);
    if release {
        command.arg("--release");
    }
    let status = command.status().context("run cargo build")?;
    ensure!(status.success(), "cargo build failed");
    Ok(())
}

/// A client's TCP connection to the server cut in the middle of a session
/// (by a loopback proxy this run controls): client-cli resumes its
/// session, the device hears nothing, no new offer is made, and the data
/// channel and the video, which go peer to peer, go on throughout.
fn tcp_cut(tools: &Tools) -> Result<String> {
    let server = tools.server("14-cut", &[])?;
    let device = tools.fake_device("14-cut", &server, "e2e-cut")?;
    let address = server
        .url
        .strip_prefix("ws://")
        .context("a plain server")?
        .parse()
        .context("a numeric server address")?;
    let proxy = support::cut::CuttingProxy::start(address)?;
    let mut command = tools.connect_command_to(
        &format!("ws://{}", proxy.address),
        &[],
        "e2e-cut",
        &["--video-wait", "1s", "--hold", "8s", "--timeout", "40s"],
    );
    command.stdout(Stdio::piped());
    let client = command.spawn().context("client-cli")?;
    // The handshake and the video wait take about 1.5 s: cut while it
    // holds the session.
    std::thread::sleep(Duration::from_secs(4));
    let cut = proxy.cut();
    let output = client.wait_with_output()?;
    ensure!(cut >= 1, "no connection through the proxy to cut");
    let report = check_connect(&output)?;
    let resumes = report["resumes"].as_array().map_or(0, Vec::len);
    ensure!(resumes == 1, "expected one resume, got {resumes}: {report}");
    let away_ms = report["resumes"][0]["away_ms"].as_f64().unwrap_or_default();
    let echoes = report["hold_echoes"].as_u64().unwrap_or(0);
    let frames = report["hold_video_frames"].as_u64().unwrap_or(0);
    ensure!(echoes >= 6, "{echoes} echoes while holding: {report}");
    ensure!(
        frames >= 150,
        "{frames} video frames while holding: {report}"
    );
    // The device had one client and made one offer: nobody told it of a
    // departure before the client's own clean close at the end.
    let log = std::fs::read_to_string(&device.log).unwrap_or_default();
    let offers = log.matches("offer sent").count();
    ensure!(
        offers == 1,
        "{offers} offers: the handshake started again:\n{}",
        device.log_tail(20)
    );
    ensure!(
        !log.contains("client_id=2"),
        "the device saw a second client:\n{}",
        device.log_tail(20)
    );
    let server_log = std::fs::read_to_string(&server.process.log).unwrap_or_default();
    ensure!(
        server_log.contains("session resumed") && !server_log.contains("resume window passed"),
        "the server did not log the resume:\n{}",
        server.process.log_tail(20)
    );
    Ok(format!(
        "cut {cut} connection(s); resumed after {away_ms:.0} ms; {echoes} echoes and {frames} video frames over 8 s held; one offer, no departure"
    ))
}
