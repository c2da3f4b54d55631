//! `client-cli bench`: drives a server with many simulated devices and
//! clients speaking the real protocol, and measures it.
//!
//! - `relay`: D devices × C clients each; every client keeps W messages in
//!   flight (closed loop) or sends at a fixed rate (open loop); devices echo
//!   to the sender. Every payload carries a sequence number, so loss and
//!   reordering are counted, and must be zero.
//! - `idle`: holds N registered devices (and clients) and reports the
//!   server's resident memory per connection, and the connect rate.
//! - `churn`: devices and clients connect, exchange one message and leave,
//!   as fast as possible; the server's gauges must come back to zero.
//! - `resume`: clients whose connections drop and come back: the time from
//!   a reconnect's start to its `resumed`, and the server's memory while
//!   the sessions are held.
//!
//! Connections are spread over 127.0.0.x source addresses (one address has
//! about 28,000 ephemeral ports). With `--server-pid`, the server's CPU time
//! over the measured window is read from /proc and divided by the messages
//! it relayed in that window (from its /metrics).

use std::net::IpAddr;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use futures_util::{FutureExt, SinkExt, StreamExt};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use peer::signaling::{ConnectOptions, Socket};
use protocol::{
    ClientForward, ClientToServer, Connect, DeviceForward, DeviceToServer, RawValue, Register,
    ServerToClient, ServerToDevice,
};
use serde_json::json;
use support::prometheus::sample_or_zero as metric;
use support::seqpacket::{self, Packet};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    mode: Mode,

    /// Print one JSON result line instead of the human summary.
    #[arg(long, global = true)]
    json: bool,

    /// Spread connections over this many source addresses, 127.0.0.1 up.
    #[arg(long, global = true, default_value_t = 16, value_parser = clap::value_parser!(u8).range(1..=254))]
    source_addrs: u8,

    /// The server's process id: report its CPU time per relayed message
    /// (from /proc) over the measured window.
    #[arg(long, global = true)]
    server_pid: Option<u32>,

    /// Connect the clients to this other instance of the server (one that
    /// shares the first's devices through --redis); devices stay on
    /// --server. Relayed messages are then counted on both.
    #[arg(long, global = true, value_name = "URL")]
    client_server: Option<String>,

    /// With --client-server: that instance's process id, whose CPU time is
    /// added to --server-pid's.
    #[arg(long, global = true, requires = "client_server")]
    client_server_pid: Option<u32>,

    /// Redis's process id: its CPU time per relayed message is reported
    /// beside the server's.
    #[arg(long, global = true)]
    redis_pid: Option<u32>,

    /// Put the relay and idle modes' devices on this device socket (the
    /// server's --device-socket) instead of /register_device; clients stay
    /// on the websocket.
    #[arg(long, global = true, value_name = "PATH")]
    device_socket: Option<std::path::PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
enum Mode {
    /// Relay messages between clients and echoing devices.
    Relay(RelayArgs),
    /// Hold idle registered devices and measure the server's memory.
    Idle(IdleArgs),
    /// Connect, exchange one message and leave, over and over.
    Churn(ChurnArgs),
    /// Polling clients of the Go operator's API relaying to echoing
    /// devices: forward, then poll until the echo arrives, over one
    /// kept-alive HTTP connection each.
    Poll(PollArgs),
    /// Clients whose connections drop (without a close) and resume: the
    /// time from the start of each reconnect to its `resumed`, and the
    /// server's memory with the sessions held.
    Resume(ResumeArgs),
}

#[derive(Debug, clap::Args)]
struct ResumeArgs {
    /// Devices, each with one client.
    #[arg(long, default_value_t = 200)]
    devices: usize,
    /// How many times each client's connection drops and resumes.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
}

#[derive(Debug, clap::Args)]
struct PollArgs {
    /// Devices, each with one polling client.
    #[arg(long, default_value_t = 50)]
    devices: usize,
    /// Size of each payload in bytes.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(64..=60_000))]
    payload_bytes: u64,
    /// Measured time, after the warm-up.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Time before measuring starts.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
}

#[derive(Debug, clap::Args)]
struct RelayArgs {
    /// Devices.
    #[arg(long, default_value_t = 50)]
    devices: usize,
    /// Clients per device.
    #[arg(long, default_value_t = 1)]
    clients_per_device: usize,
    /// Messages each client keeps in flight (closed loop).
    #[arg(long, default_value_t = 4, conflicts_with = "rate")]
    in_flight: usize,
    /// Messages per second each client sends, whatever comes back (open
    /// loop).
    #[arg(long)]
    rate: Option<f64>,
    /// Size of each payload in bytes (200 is an ICE candidate, 4096 an SDP).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(64..=60_000))]
    payload_bytes: u64,
    /// Measured time, after the warm-up.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Time before measuring starts.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Drive the bare relay (`server/examples/bare_relay.rs`), which
    /// forwards frames unchanged: devices echo the client's frame as it
    /// came, and clients read their payload back from it.
    #[arg(long)]
    bare: bool,
    /// Beside the relay, make this many abrupt disconnects (sockets dropped
    /// without a close frame, half of them reset) of other devices and
    /// clients, checking what the server tells the other side each time;
    /// then the server's gauges must return to zero. The server must run
    /// with --resume-window 0: with resume on, it holds a dropped session
    /// and announces its departure only when the window passes.
    #[arg(long, default_value_t = 0, conflicts_with = "bare")]
    disconnects: u64,
    /// The clients' API: the seed's /connect_client, or the Go operator's
    /// /devices/{id}/connect (bare payload frames).
    #[arg(long, value_enum, default_value_t = crate::connect::ClientApi::Seed, conflicts_with = "bare")]
    client_api: crate::connect::ClientApi,
    /// Websocket devices write each echoed frame with a system call of its
    /// own, as a device that sends message by message does (and as a
    /// device socket's packets always go), instead of a burst per write.
    #[arg(long)]
    device_write_each: bool,
}

#[derive(Debug, clap::Args)]
struct IdleArgs {
    /// Devices to register and hold.
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// Clients to connect to each device.
    #[arg(long, default_value_t = 0)]
    clients_per_device: usize,
    /// Connections opened at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// How long to hold them once all are connected.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    hold: Duration,
}

#[derive(Debug, clap::Args)]
struct ChurnArgs {
    /// How long to churn.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Device/client pairs cycling at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Drive the bare relay (`server/examples/bare_relay.rs`), the baseline
    /// of a bare accept loop: the echo comes back verbatim, no
    /// `client_disconnected` is expected and there are no gauges to check.
    #[arg(long)]
    bare: bool,
}

pub async fn run(options: &ConnectOptions, args: BenchArgs) -> Result<()> {
    let context = Bench {
        options: options.clone(),
        sources: (1..=args.source_addrs)
            .map(|n| IpAddr::from([127, 0, 0, n]))
            .collect(),
        next_source: AtomicU64::new(0),
        run_id: format!("{:x}", std::process::id()),
        json: args.json,
        server_pid: args.server_pid,
        client_options: args.client_server.map(|server| ConnectOptions {
            server,
            ..options.clone()
        }),
        client_server_pid: args.client_server_pid,
        redis_pid: args.redis_pid,
        device_socket: args.device_socket,
    };
    match args.mode {
        Mode::Relay(relay) => run_relay(Arc::new(context), relay).await,
        Mode::Idle(idle) => run_idle(Arc::new(context), idle).await,
        Mode::Churn(churn) => run_churn(Arc::new(context), churn).await,
        Mode::Poll(poll) => run_poll(Arc::new(context), poll).await,
        Mode::Resume(resume) => run_resume(Arc::new(context), resume).await,
    }
}

/// What every mode shares.
struct Bench {
    options: ConnectOptions,
    sources: Vec<IpAddr>,
    next_source: AtomicU64,
    /// Makes device ids unique per run, so runs do not collide.
    run_id: String,
    json: bool,
    server_pid: Option<u32>,
    /// `--client-server`: where clients connect, when not `options`.
    client_options: Option<ConnectOptions>,
    client_server_pid: Option<u32>,
    redis_pid: Option<u32>,
    device_socket: Option<std::path::PathBuf>,
}

/// A device of the relay and idle modes, where `--device-socket` puts it.
enum BenchDevice {
    Websocket(Box<Socket>),
    Socket(tokio_seqpacket::UnixSeqpacket),
}

impl Bench {
    /// A registered device on the device socket if one was given, else on
    /// the websocket; its `config` read.
    async fn any_device(&self, device_id: &str) -> Result<BenchDevice> {
        let Some(path) = &self.device_socket else {
            return Ok(BenchDevice::Websocket(Box::new(
                self.device(device_id).await?,
            )));
        };
        let socket = tokio_seqpacket::UnixSeqpacket::connect(path)
            .await
            .with_context(|| format!("connect to the device socket {}", path.display()))?;
        let register = DeviceToServer::Register(Register {
            device_id: device_id.into(),
            device_info: None,
            device_port: None,
        });
        socket.send(register.encode().as_bytes()).await?;
        let mut buffer = vec![0u8; 64 * 1024];
        let n = socket.recv(&mut buffer).await?.bytes_read();
        let text = std::str::from_utf8(&buffer[..n])?;
        match ServerToDevice::decode(text) {
            Ok(ServerToDevice::Config(_)) => Ok(BenchDevice::Socket(socket)),
            other => bail!("registering {device_id}: expected config, got {other:?}"),
        }
    }

    async fn connect(&self, path: &str) -> Result<Socket> {
        self.connect_to(&self.options, path).await
    }

    /// Where clients connect: `--client-server`, or the server.
    fn client_side(&self) -> &ConnectOptions {
        self.client_options.as_ref().unwrap_or(&self.options)
    }

    /// CPU seconds of the server's processes (one instance, or both).
    fn server_cpu(&self) -> Result<Option<f64>> {
        let Some(pid) = self.server_pid else {
            return Ok(None);
        };
        let other = self.client_server_pid.map(cpu_seconds).transpose()?;
        Ok(Some(cpu_seconds(pid)? + other.unwrap_or(0.0)))
    }

    /// Messages relayed so far, counted on every instance.
    async fn relayed_now(&self) -> Result<f64> {
        let mut relayed = relayed_total(&self.metrics().await?);
        if let Some(other) = &self.client_options {
            let (status, body) = other.http_get("/metrics").await?;
            ensure!(
                status == 200,
                "GET /metrics of --client-server answered {status}"
            );
            relayed += relayed_total(&body);
        }
        Ok(relayed)
    }

    async fn connect_to(&self, options: &ConnectOptions, path: &str) -> Result<Socket> {
        let n = self.next_source.fetch_add(1, Ordering::Relaxed) as usize;
        let source = (self.sources.len() > 1 || self.sources[0] != IpAddr::from([127, 0, 0, 1]))
            .then(|| self.sources[n % self.sources.len()]);
        // Frames fed in a burst go out in one write at the flush, as a
        // busy peer's would; see `echo_device` and `RelayClient::run`.
        let config = peer::signaling::websocket_config().write_buffer_size(64 * 1024);
        Ok(options.connect_with(path, source, config).await?)
    }

    /// A registered device, its `config` read.
    async fn device(&self, device_id: &str) -> Result<Socket> {
        let mut socket = self.connect(protocol::REGISTER_DEVICE_PATH).await?;
        let register = DeviceToServer::Register(Register {
            device_id: device_id.into(),
            device_info: None,
            device_port: None,
        });
        socket.send(Message::text(register.encode())).await?;
        match next_text(&mut socket)
            .await?
            .as_deref()
            .map(ServerToDevice::decode)
        {
            Some(Ok(ServerToDevice::Config(_))) => Ok(socket),
            other => bail!("registering {device_id}: expected config, got {other:?}"),
        }
    }

    /// A client of the Go operator's API connected to `device_id`, its
    /// `{"device_info"}` read.
    async fn go_client(&self, device_id: &str) -> Result<Socket> {
        self.until_listed(device_id).await?;
        let mut socket = self
            .connect_to(self.client_side(), &format!("/devices/{device_id}/connect"))
            .await?;
        let text = next_text(&mut socket)
            .await?
            .context("closed while connecting")?;
        ensure!(
            text.starts_with(r#"{"device_info":"#),
            "connecting to {device_id}: expected device_info, got {text}"
        );
        Ok(socket)
    }

    /// A client connected to `device_id`, its `config` and `device_info` read.
    async fn client(&self, device_id: &str) -> Result<Socket> {
        self.until_listed(device_id).await?;
        let mut socket = self
            .connect_to(self.client_side(), protocol::CONNECT_CLIENT_PATH)
            .await?;
        let connect = ClientToServer::Connect(Connect {
            device_id: device_id.into(),
        });
        socket.send(Message::text(connect.encode())).await?;
        for expected in ["config", "device_info"] {
            let text = next_text(&mut socket)
                .await?
                .context("closed while connecting")?;
            match ServerToClient::decode(&text) {
                Ok(ServerToClient::Config(_)) if expected == "config" => {}
                Ok(ServerToClient::DeviceInfo(_)) if expected == "device_info" => {}
                other => bail!("connecting to {device_id}: expected {expected}, got {other:?}"),
            }
        }
        Ok(socket)
    }

    /// With `--client-server`, waits until that instance lists `device_id`
    /// (registered on the other, it is listed there once Redis carried
    /// the news); at once otherwise.
    async fn until_listed(&self, device_id: &str) -> Result<()> {
        let Some(other) = &self.client_options else {
            return Ok(());
        };
        let quoted = format!("\"{device_id}\"");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, body) = other.http_get("/devices").await?;
            if body.contains(&quoted) {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "{device_id} is not listed on --client-server after 10 s"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Waits up to 10 s for the server's connection gauges to return to
    /// zero; returns those that did not.
    async fn gauges_not_zero(&self) -> Result<Vec<(&'static str, f64)>> {
        const GAUGES: [&str; 4] = [
            "signaling_devices",
            "signaling_clients",
            r#"signaling_websocket_connections{endpoint="register_device"}"#,
            r#"signaling_websocket_connections{endpoint="connect_client"}"#,
        ];
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut bodies = vec![self.metrics().await?];
            if let Some(other) = &self.client_options {
                bodies.push(other.http_get("/metrics").await?.1);
            }
            let left: Vec<_> = GAUGES
                .iter()
                .map(|g| (*g, bodies.iter().map(|body| metric(body, g)).sum::<f64>()))
                .filter(|(_, v)| *v != 0.0)
                .collect();
            if left.is_empty() || Instant::now() > deadline {
                return Ok(left);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn metrics(&self) -> Result<String> {
        let (status, body) = self.options.http_get("/metrics").await?;
        ensure!(status == 200, "GET /metrics answered {status}");
        Ok(body)
    }

    fn progress(&self, message: &str) -> ProgressBar {
        let bar = if self.json {
            ProgressBar::hidden()
        } else {
            ProgressBar::new_spinner()
        };
        bar.set_style(
            ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        say(&bar, message);
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    }
}

/// A new phase of the run: on the spinner, or, where there is none (not
/// a terminal, or --json), as a line on stderr, so a run is never silent
/// through its warm-up.
fn say(bar: &ProgressBar, message: impl Into<String>) {
    let message = message.into();
    if bar.is_hidden() {
        eprintln!("client-cli bench: {message}");
    }
    bar.set_message(message);
}

/// The next text frame, skipping pings.
async fn next_text(socket: &mut Socket) -> Result<Option<String>> {
    peer::signaling::next_text(socket).await
}

const RELAYED: [&str; 2] = [
    r#"signaling_messages_relayed_total{direction="client_to_device"}"#,
    r#"signaling_messages_relayed_total{direction="device_to_client"}"#,
];

fn relayed_total(body: &str) -> f64 {
    RELAYED.iter().map(|series| metric(body, series)).sum()
}

/// CPU seconds (user + system) a process has used, from /proc. Linux
/// reports them in USER_HZ ticks, which is 100 per second on every
/// architecture it runs on.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    // The command name may hold spaces; fields count from after its ")".
    let after_name = stat.rsplit_once(')').context("odd /proc stat")?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: f64 = fields.get(11).context("no utime")?.parse()?;
    let stime: f64 = fields.get(12).context("no stime")?.parse()?;
    Ok((utime + stime) / 100.0)
}

// ---------------------------------------------------------------------------
// relay
// ---------------------------------------------------------------------------

/// Counters every relay task updates.
#[derive(Default)]
struct RelayCounters {
    /// Round trips completed inside the measured window.
    measured: AtomicU64,
    /// Round trips completed in all.
    completed: AtomicU64,
    reordered: AtomicU64,
    errors: AtomicU64,
}

/// A payload of about `size` bytes carrying a sequence number and the send
/// time: `{"seq":N,"t":NANOS,"pad":"xx…"}`.
fn relay_payload(seq: u64, sent_ns: u64, size: usize) -> String {
    let head = format!(r#"{{"seq":{seq},"t":{sent_ns},"pad":""#);
    let pad = size.saturating_sub(head.len() + 2);
    let mut payload = String::with_capacity(head.len() + pad + 2);
    payload.push_str(&head);
    payload.extend(std::iter::repeat_n('x', pad));
    payload.push_str("\"}");
    payload
}

/// Reads `seq` and `t` back from a payload made by [`relay_payload`]
/// without a second JSON parse (the frame was already validated).
fn parse_relay_payload(payload: &str) -> Option<(u64, u64)> {
    let rest = payload.strip_prefix(r#"{"seq":"#)?;
    let (seq, rest) = rest.split_once(',')?;
    let rest = rest.strip_prefix(r#""t":"#)?;
    let (sent, _) = rest.split_once(',')?;
    Some((seq.parse().ok()?, sent.parse().ok()?))
}

async fn run_relay(bench: Arc<Bench>, args: RelayArgs) -> Result<()> {
    ensure!(
        !(args.bare && bench.device_socket.is_some()),
        "the bare relay has no device socket: drop --bare or --device-socket"
    );
    ensure!(
        !(args.device_write_each && bench.device_socket.is_some()),
        "--device-write-each is for websocket devices; a device socket's packets always go one by one"
    );
    let bar = bench.progress("connecting");
    let epoch = Instant::now();
    let counters = Arc::new(RelayCounters::default());
    let measuring = Arc::new(AtomicBool::new(false));
    let sending = Arc::new(AtomicBool::new(true));
    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1,
        60_000_000_000,
        3,
    )?));
    let payload_bytes = usize::try_from(args.payload_bytes)?;

    // Devices first, then their clients; all connected before any sends.
    let mut devices = Vec::with_capacity(args.devices);
    for d in 0..args.devices {
        let id = format!("bench-{}-{d}", bench.run_id);
        devices.push((id.clone(), bench.any_device(&id).await?));
    }
    let mut clients = Vec::new();
    for (id, _) in &devices {
        for _ in 0..args.clients_per_device {
            clients.push(match args.client_api {
                crate::connect::ClientApi::Seed => bench.client(id).await?,
                crate::connect::ClientApi::Go => bench.go_client(id).await?,
            });
        }
    }
    let (stop_devices, devices_stop) = tokio::sync::watch::channel(false);
    let device_tasks: Vec<_> = devices
        .into_iter()
        .map(|(_, device)| match device {
            BenchDevice::Websocket(socket) => tokio::spawn(echo_device(
                *socket,
                counters.clone(),
                args.bare,
                args.device_write_each,
                devices_stop.clone(),
            )),
            BenchDevice::Socket(socket) => {
                tokio::spawn(echo_socket_device(socket, counters.clone()))
            }
        })
        .collect();
    let client_tasks: Vec<_> = clients
        .into_iter()
        .map(|socket| {
            let task = RelayClient {
                epoch,
                counters: counters.clone(),
                measuring: measuring.clone(),
                sending: sending.clone(),
                histogram: histogram.clone(),
                payload_bytes,
                in_flight: args.in_flight.max(1),
                rate: args.rate,
                bare: args.bare,
                bare_payloads: args.client_api == crate::connect::ClientApi::Go,
            };
            tokio::spawn(task.run(socket))
        })
        .collect();

    let faults = Arc::new(AtomicU64::new(0));
    let fault_workers: Vec<_> = (0..args.disconnects.div_ceil(2).min(16))
        .map(|worker| {
            let (bench, faults) = (bench.clone(), faults.clone());
            let total = args.disconnects;
            tokio::spawn(async move { fault_worker(&bench, worker, total, &faults).await })
        })
        .collect();

    say(
        &bar,
        format!("warming up for {}", humantime::format_duration(args.warmup)),
    );
    tokio::time::sleep(args.warmup).await;
    say(
        &bar,
        format!(
            "measuring for {}",
            humantime::format_duration(args.duration)
        ),
    );
    // The bare relay has no /metrics: count its messages ourselves.
    let relayed_before = match bench.server_pid {
        Some(_) if !args.bare => Some(bench.relayed_now().await?),
        _ => None,
    };
    let cpu_before = bench.server_cpu()?;
    let redis_before = bench.redis_pid.map(cpu_seconds).transpose()?;
    measuring.store(true, Ordering::Release);
    let started = Instant::now();
    let completed_before = counters.completed.load(Ordering::Relaxed);
    while started.elapsed() < args.duration {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let done = counters.completed.load(Ordering::Relaxed) - completed_before;
        bar.set_message(format!(
            "{:.0} round trips/s",
            done as f64 / started.elapsed().as_secs_f64()
        ));
    }
    measuring.store(false, Ordering::Release);
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = bench.server_cpu()?;
    let redis_after = bench.redis_pid.map(cpu_seconds).transpose()?;
    let relayed_after = match bench.server_pid {
        Some(_) if !args.bare => Some(bench.relayed_now().await?),
        _ => None,
    };

    // Stop sending and collect what is still in flight.
    sending.store(false, Ordering::Release);
    say(&bar, "draining");
    let mut lost = 0u64;
    for task in client_tasks {
        match task.await? {
            Ok(outcome) => lost += outcome.lost,
            Err(e) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                bar.suspend(|| eprintln!("client error: {e:#}"));
            }
        }
    }
    let _ = stop_devices.send(true);
    for task in device_tasks {
        // A device socket's device has no clean close: it ends its socket.
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    for worker in fault_workers {
        if let Err(e) = worker.await? {
            counters.errors.fetch_add(1, Ordering::Relaxed);
            bar.suspend(|| eprintln!("disconnect check failed: {e:#}"));
        }
    }
    let gauges_left = if args.disconnects > 0 {
        say(&bar, "waiting for the server's gauges to return to zero");
        bench.gauges_not_zero().await?
    } else {
        Vec::new()
    };
    bar.finish_and_clear();

    let round_trips = counters.measured.load(Ordering::Relaxed);
    let histogram = histogram.lock().await;
    let micros = |q: f64| histogram.value_at_quantile(q) as f64 / 1e3;
    let server = match (cpu_before, cpu_after) {
        (Some(before), Some(after)) => {
            let relayed = match (relayed_before, relayed_after) {
                (Some(before), Some(after)) => after - before,
                // Two relayed messages per round trip.
                _ => 2.0 * counters.measured.load(Ordering::Relaxed) as f64,
            };
            let cpu = after - before;
            Some((cpu, relayed, cpu / relayed.max(1.0) * 1e6))
        }
        _ => None,
    };
    let reordered = counters.reordered.load(Ordering::Relaxed);
    let errors = counters.errors.load(Ordering::Relaxed);
    let result = json!({
        "mode": "relay",
        "devices": args.devices,
        "clients": args.devices * args.clients_per_device,
        "in_flight": args.rate.is_none().then_some(args.in_flight),
        "rate_per_client": args.rate,
        "payload_bytes": args.payload_bytes,
        "seconds": elapsed,
        "round_trips_per_s": round_trips as f64 / elapsed,
        "relayed_per_s": 2.0 * round_trips as f64 / elapsed,
        "rtt_us": {
            "p50": micros(0.5), "p90": micros(0.9), "p99": micros(0.99),
            "p999": micros(0.999), "max": histogram.max() as f64 / 1e3,
        },
        "server_cpu_s": server.map(|s| s.0),
        "server_relayed": server.map(|s| s.1),
        "server_cpu_us_per_msg": server.map(|s| s.2),
        "redis_cpu_us_per_msg": match (redis_before, redis_after, server) {
            (Some(before), Some(after), Some((_, relayed, _))) => Some((after - before) / relayed.max(1.0) * 1e6),
            _ => None,
        },
        "lost": lost,
        "reordered": reordered,
        "errors": errors,
        "disconnects": faults.load(Ordering::Relaxed),
        "gauges_not_zero": gauges_left.iter().map(|(g, v)| json!({"series": g, "value": v})).collect::<Vec<_>>(),
    });
    if bench.json {
        println!("{result}");
    } else {
        println!(
            "relay: {} clients, {} B payloads, {:.1} s measured\n  {:.0} relayed messages/s ({:.0} round trips/s)\n  round trip µs: p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
            args.devices * args.clients_per_device,
            args.payload_bytes,
            elapsed,
            2.0 * round_trips as f64 / elapsed,
            round_trips as f64 / elapsed,
            micros(0.5),
            micros(0.9),
            micros(0.99),
            micros(0.999),
            histogram.max() as f64 / 1e3
        );
        if let Some((cpu, relayed, per)) = server {
            println!(
                "  server CPU: {cpu:.2} s for {relayed:.0} relayed messages = {per:.2} µs per message"
            );
        }
        println!("  lost {lost}, reordered {reordered}, errors {errors}");
        if args.disconnects > 0 {
            println!(
                "  {} abrupt disconnects beside the relay, each announced as it should be; gauges back to zero: {}",
                faults.load(Ordering::Relaxed),
                if gauges_left.is_empty() {
                    "yes".to_owned()
                } else {
                    format!("no: {gauges_left:?}")
                }
            );
        }
    }
    ensure!(
        lost == 0 && reordered == 0 && errors == 0,
        "{lost} lost, {reordered} reordered, {errors} errors"
    );
    ensure!(round_trips > 0, "no message made a round trip");
    ensure!(
        gauges_left.is_empty(),
        "server gauges not back to zero: {gauges_left:?}"
    );
    Ok(())
}

/// Abrupt disconnects beside the relay, until `total` have been made in
/// all, each followed by a check of what the server tells the other side:
/// a client that vanishes is announced to its device exactly once (the
/// next client's first message comes next, with nothing between), and a
/// device that vanishes is reported to its client, then closed 1001.
async fn fault_worker(bench: &Bench, worker: u64, total: u64, done: &AtomicU64) -> Result<()> {
    let payload = RawValue::from_string(r#"{"type":"probe"}"#.to_owned())?;
    let forward =
        Message::text(ClientToServer::Forward(ClientForward { payload: &payload }).encode());
    for cycle in 0u64.. {
        if done.load(Ordering::Relaxed) >= total {
            return Ok(());
        }
        let id = format!("fault-{}-{worker}-{cycle}", bench.run_id);
        let mut device = bench.device(&id).await?;
        let mut first = bench.client(&id).await?;
        first.send(forward.clone()).await?;
        let text = expect_text(&mut device).await?;
        ensure!(
            text.starts_with(r#"{"message_type":"client_msg","client_id":1,"#),
            "{id}: expected client 1's message, got {text}"
        );
        // Half the drops are resets, half plain ends of stream.
        vanish(first, cycle % 2 == 0);
        done.fetch_add(1, Ordering::Relaxed);
        let text = expect_text(&mut device).await?;
        ensure!(
            text == r#"{"message_type":"client_disconnected","client_id":1}"#,
            "{id}: expected client 1's departure, got {text}"
        );
        let mut second = bench.client(&id).await?;
        second.send(forward.clone()).await?;
        let text = expect_text(&mut device).await?;
        ensure!(
            text.starts_with(r#"{"message_type":"client_msg","client_id":2,"#),
            "{id}: expected client 2's message and nothing before it, got {text}"
        );
        vanish(device, cycle % 2 == 1);
        done.fetch_add(1, Ordering::Relaxed);
        let text = expect_text(&mut second).await?;
        ensure!(
            text == r#"{"error":"Device disconnected"}"#,
            "{id}: expected the device's departure, got {text}"
        );
        match tokio::time::timeout(FAULT_WAIT, second.next()).await? {
            Some(Ok(Message::Close(Some(frame)))) if u16::from(frame.code) == 1001 => {}
            other => bail!("{id}: expected close 1001, got {other:?}"),
        }
    }
    Ok(())
}

/// How long a fault check waits for the server's word.
const FAULT_WAIT: Duration = Duration::from_secs(10);

/// The next text frame, within [`FAULT_WAIT`].
async fn expect_text(socket: &mut Socket) -> Result<String> {
    tokio::time::timeout(FAULT_WAIT, next_text(socket))
        .await
        .context("no word from the server in 10 s (with --disconnects, is the server's --resume-window 0?)")??
        .context("the server closed the connection")
}

/// Drops a socket without a close frame; with `reset`, the kernel sends
/// a TCP reset instead of a FIN.
fn vanish(socket: Socket, reset: bool) {
    if reset {
        let _ = peer::signaling::tcp_stream(&socket).set_zero_linger();
    }
    drop(socket);
}

/// A device that sends every client's message back to it, verbatim.
///
/// It answers every frame that has already arrived before writing, so a
/// burst of frames read at once goes back in one write: the generator then
/// spends its core on messages, not on a syscall per frame, and can load a
/// server harder than one core's worth of single-frame writes. With
/// `write_each`, every echo is written (and flushed) on its own.
async fn echo_device(
    mut socket: Socket,
    counters: Arc<RelayCounters>,
    bare: bool,
    write_each: bool,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let message = tokio::select! {
            message = socket.next() => message,
            _ = stop.changed() => return close_cleanly(socket).await,
        };
        let Some(Ok(message)) = message else { return };
        if echo(&mut socket, message, &counters, bare).await.is_err() {
            return;
        }
        while let Some(Some(Ok(message))) = socket.next().now_or_never() {
            if write_each && socket.flush().await.is_err() {
                return;
            }
            if echo(&mut socket, message, &counters, bare).await.is_err() {
                return;
            }
        }
        if socket.flush().await.is_err() {
            return;
        }
    }
}

/// Leaves as a peer that is done leaves: a close frame, then the server's
/// reply (a dropped connection would hold the session for a resume).
async fn close_cleanly(mut socket: Socket) {
    let _ = socket.close(None).await;
    let drain = async { while let Some(Ok(_)) = socket.next().await {} };
    let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
}

/// [`echo_device`] on the device socket: each packet answered with one.
/// What has arrived is received with one system call and answered with
/// one, as `echo_device` answers a burst with one write; each packet is
/// still one message, as a Cuttlefish device sends them.
async fn echo_socket_device(socket: tokio_seqpacket::UnixSeqpacket, counters: Arc<RelayCounters>) {
    let mut replies = Vec::new();
    loop {
        let Ok(mut ready) = socket.as_async_fd().readable().await else {
            return;
        };
        let mut ended = false;
        let received = seqpacket::receive_ready(&mut ready, 64 * 1024, |packet| {
            let Packet::Text(text) = packet else {
                ended = true;
                return ControlFlow::Break(());
            };
            match ServerToDevice::decode(text) {
                Ok(ServerToDevice::ClientMsg(message)) => {
                    let back = DeviceToServer::Forward(DeviceForward {
                        client_id: message.client_id,
                        payload: message.payload,
                    });
                    replies.push(back.encode());
                }
                Ok(ServerToDevice::ClientDisconnected(_)) => {}
                _ => {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            ControlFlow::Continue(())
        });
        drop(ready);
        if received.is_err() || seqpacket::send_all(&socket, &replies).await.is_err() || ended {
            return;
        }
        replies.clear();
    }
}

/// Queues the echo of one frame; `echo_device` flushes.
async fn echo(
    socket: &mut Socket,
    message: Message,
    counters: &RelayCounters,
    bare: bool,
) -> Result<()> {
    let Message::Text(text) = message else {
        return Ok(());
    };
    if bare {
        // The bare relay passes the client's frame through unchanged.
        socket.feed(Message::Text(text)).await?;
        return Ok(());
    }
    match ServerToDevice::decode(&text) {
        Ok(ServerToDevice::ClientMsg(message)) => {
            let back = DeviceToServer::Forward(DeviceForward {
                client_id: message.client_id,
                payload: message.payload,
            });
            socket.feed(Message::text(back.encode())).await?;
        }
        Ok(ServerToDevice::ClientDisconnected(_)) => {}
        _ => {
            counters.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// One simulated client of the relay mode.
struct RelayClient {
    epoch: Instant,
    counters: Arc<RelayCounters>,
    measuring: Arc<AtomicBool>,
    sending: Arc<AtomicBool>,
    histogram: Arc<Mutex<Histogram<u64>>>,
    payload_bytes: usize,
    in_flight: usize,
    rate: Option<f64>,
    bare: bool,
    /// Sends payloads as they are (the Go operator's client API) instead
    /// of inside `forward`.
    bare_payloads: bool,
}

struct ClientOutcome {
    lost: u64,
}

impl RelayClient {
    /// Queues message `seq`; the caller flushes.
    async fn feed(&self, socket: &mut Socket, seq: u64) -> Result<()> {
        let sent_ns = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let payload = relay_payload(seq, sent_ns, self.payload_bytes);
        if self.bare_payloads {
            socket.feed(Message::text(payload)).await?;
            return Ok(());
        }
        let payload = RawValue::from_string(payload)?;
        let forward = ClientToServer::Forward(ClientForward { payload: &payload });
        socket.feed(Message::text(forward.encode())).await?;
        Ok(())
    }

    /// Checks one echoed frame: ours, in order; records its round trip.
    fn on_echo(&self, text: &str, expected: &mut u64, local: &mut Histogram<u64>) -> Result<()> {
        let payload = if self.bare {
            match ClientToServer::decode(text) {
                Ok(ClientToServer::Forward(forward)) => forward.payload,
                _ => bail!("unexpected frame from the bare relay: {text}"),
            }
        } else {
            match ServerToClient::decode(text) {
                Ok(ServerToClient::DeviceMsg(reply)) => reply.payload,
                _ => bail!("unexpected frame: {text}"),
            }
        };
        let (seq, sent_ns) =
            parse_relay_payload(payload.get()).context("a payload that is not ours")?;
        if seq != *expected {
            self.counters.reordered.fetch_add(1, Ordering::Relaxed);
        }
        *expected = seq + 1;
        let now_ns = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.counters.completed.fetch_add(1, Ordering::Relaxed);
        if self.measuring.load(Ordering::Acquire) {
            self.counters.measured.fetch_add(1, Ordering::Relaxed);
            let _ = local.record(now_ns.saturating_sub(sent_ns).max(1));
        }
        Ok(())
    }

    async fn run(self, mut socket: Socket) -> Result<ClientOutcome> {
        let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
        let mut next_seq = 0u64;
        let mut expected = 0u64;
        let mut ticker = self
            .rate
            .map(|rate| tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.001))));
        if ticker.is_none() {
            for _ in 0..self.in_flight {
                self.feed(&mut socket, next_seq).await?;
                next_seq += 1;
            }
            socket.flush().await?;
        }
        let drain_limit = Duration::from_secs(10);
        let mut drain_deadline: Option<tokio::time::Instant> = None;
        loop {
            if !self.sending.load(Ordering::Acquire) && drain_deadline.is_none() {
                drain_deadline = Some(tokio::time::Instant::now() + drain_limit);
            }
            if drain_deadline.is_some() && expected == next_seq {
                break;
            }
            let tick = async {
                match &mut ticker {
                    Some(ticker) if drain_deadline.is_none() => {
                        ticker.tick().await;
                    }
                    _ => std::future::pending::<()>().await,
                }
            };
            let deadline = async {
                match drain_deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    // Wake now and then to notice the end of sending.
                    None => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            };
            tokio::select! {
                () = tick => {
                    self.feed(&mut socket, next_seq).await?;
                    next_seq += 1;
                    socket.flush().await?;
                }
                message = socket.next() => {
                    // Handle every echo that has already arrived, then
                    // write their successors at once (closed loop).
                    let mut ready = Some(message);
                    while let Some(message) = ready {
                        let Some(message) = message else {
                            bail!("the server closed the connection")
                        };
                        if let Message::Text(text) = message? {
                            self.on_echo(&text, &mut expected, &mut local)?;
                            if ticker.is_none() && drain_deadline.is_none() {
                                self.feed(&mut socket, next_seq).await?;
                                next_seq += 1;
                            }
                        }
                        ready = socket.next().now_or_never();
                    }
                    socket.flush().await?;
                }
                () = deadline => {
                    if drain_deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                        break;
                    }
                }
            }
        }
        self.histogram.lock().await.add(&local)?;
        let _ = socket.close(None).await;
        Ok(ClientOutcome {
            lost: next_seq - expected,
        })
    }
}

// ---------------------------------------------------------------------------
// idle
// ---------------------------------------------------------------------------

/// The server's resident memory: the standard `process_` metric, or the
/// name servers before it used (`bench --against` runs older builds).
fn resident_memory(exposition: &str) -> f64 {
    support::prometheus::sample(exposition, "process_resident_memory_bytes")
        .unwrap_or_else(|| metric(exposition, "signaling_process_resident_memory_bytes"))
}

async fn run_idle(bench: Arc<Bench>, args: IdleArgs) -> Result<()> {
    let bar = bench.progress("connecting");
    let before = resident_memory(&bench.metrics().await?);
    let started = Instant::now();
    let connections = args.devices * (1 + args.clients_per_device);
    let opened = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..args.concurrency.max(1))
        .map(|_| {
            let bench = bench.clone();
            let opened = opened.clone();
            let next = next.clone();
            let devices = args.devices as u64;
            let clients_per_device = args.clients_per_device;
            tokio::spawn(async move {
                let mut held = Vec::new();
                loop {
                    let d = next.fetch_add(1, Ordering::Relaxed);
                    if d >= devices {
                        return Ok::<_, anyhow::Error>(held);
                    }
                    let id = format!("idle-{}-{d}", bench.run_id);
                    held.push(bench.any_device(&id).await?);
                    opened.fetch_add(1, Ordering::Relaxed);
                    for _ in 0..clients_per_device {
                        held.push(BenchDevice::Websocket(Box::new(bench.client(&id).await?)));
                        opened.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let progress = {
        let bar = bar.clone();
        let opened = opened.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                bar.set_message(format!(
                    "{} of {connections} connections",
                    opened.load(Ordering::Relaxed)
                ));
            }
        })
    };
    let mut held = Vec::with_capacity(connections);
    for worker in workers {
        held.extend(worker.await??);
    }
    progress.abort();
    let connect_seconds = started.elapsed().as_secs_f64();
    say(&bar, format!("holding {connections} connections"));
    // Keep every socket read (answering the server's pings) while holding.
    let (stop_readers, readers_stop) = tokio::sync::watch::channel(false);
    let readers: Vec<_> = held
        .into_iter()
        .map(|held| {
            let mut stop = readers_stop.clone();
            tokio::spawn(async move {
                match held {
                    BenchDevice::Websocket(mut socket) => loop {
                        tokio::select! {
                            message = socket.next() => if !matches!(message, Some(Ok(_))) { break },
                            _ = stop.changed() => break close_cleanly(*socket).await,
                        }
                    },
                    BenchDevice::Socket(socket) => {
                        let mut buffer = [0u8; 512];
                        while socket
                            .recv(&mut buffer)
                            .await
                            .is_ok_and(|i| i.bytes_read() > 0)
                        {}
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(args.hold).await;
    let after_body = bench.metrics().await?;
    let after = resident_memory(&after_body);
    let registered = metric(&after_body, "signaling_devices");
    let _ = stop_readers.send(true);
    for reader in readers {
        let _ = tokio::time::timeout(Duration::from_secs(10), reader).await;
    }
    bar.finish_and_clear();
    let per_connection = (after - before) / connections as f64;
    let result = json!({
        "mode": "idle",
        "devices": args.devices,
        "clients": args.devices * args.clients_per_device,
        "connections": connections,
        "connect_seconds": connect_seconds,
        "connects_per_s": connections as f64 / connect_seconds,
        "server_rss_before": before,
        "server_rss_after": after,
        "server_rss_per_connection": per_connection,
        "server_devices_gauge": registered,
    });
    if bench.json {
        println!("{result}");
    } else {
        println!(
            "idle: {connections} connections ({} devices) in {connect_seconds:.1} s = {:.0} connects/s\n  server RSS {:.1} MiB -> {:.1} MiB: {per_connection:.0} bytes per connection",
            args.devices,
            connections as f64 / connect_seconds,
            before / 1048576.0,
            after / 1048576.0,
        );
    }
    ensure!(
        registered >= args.devices as f64,
        "the server lists {registered} devices, expected at least {}",
        args.devices
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// resume
// ---------------------------------------------------------------------------

/// A client whose session may be resumed: its socket and its books.
struct ResumingClient {
    socket: Option<Socket>,
    books: peer::resume::Resumable,
}

impl Bench {
    /// A client connected to `device_id`, its `config` (and token) and
    /// `device_info` read.
    async fn resuming_client(&self, device_id: &str) -> Result<ResumingClient> {
        let mut socket = self.connect(protocol::CONNECT_CLIENT_PATH).await?;
        let mut books = peer::resume::Resumable::new();
        let connect = ClientToServer::Connect(Connect {
            device_id: device_id.into(),
        })
        .encode();
        books.sent(connect.clone());
        socket.send(Message::text(connect)).await?;
        for _ in 0..2 {
            let text = next_text(&mut socket)
                .await?
                .context("closed while connecting")?;
            books.received(&text);
        }
        ensure!(
            books.window().is_some(),
            "the server offered no resume token (is --resume-window 0?)"
        );
        Ok(ResumingClient {
            socket: Some(socket),
            books,
        })
    }

    /// Waits until the server holds `count` client sessions.
    async fn until_away(&self, count: usize) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let away = metric(
                &self.metrics().await?,
                r#"signaling_sessions_away{role="client"}"#,
            );
            if away == count as f64 {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "{away} client sessions held after 60 s, expected {count}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl ResumingClient {
    /// Connects again and resumes; the time from the start of the TCP
    /// connect to the `resumed` frame.
    async fn resume(&mut self, bench: &Bench) -> Result<Duration> {
        let started = Instant::now();
        let mut socket = bench.connect(protocol::CONNECT_CLIENT_PATH).await?;
        let resume = self.books.resume_message().context("no token")?;
        socket.send(Message::text(resume)).await?;
        let text = next_text(&mut socket)
            .await?
            .context("closed before resumed")?;
        let took = started.elapsed();
        match ServerToClient::decode(&text) {
            Ok(ServerToClient::Resumed(resumed)) => {
                ensure!(
                    self.books.resumed(&resumed)?.is_empty(),
                    "the server lacks frames"
                );
            }
            other => bail!("expected resumed, got {other:?}"),
        }
        self.socket = Some(socket);
        Ok(took)
    }
}

async fn run_resume(bench: Arc<Bench>, args: ResumeArgs) -> Result<()> {
    let bar = bench.progress("registering devices");
    let mut readers = Vec::new();
    for d in 0..args.devices {
        let mut device = bench
            .device(&format!("resume-{}-{d}", bench.run_id))
            .await?;
        // Read, so that the keepalive's pings are answered.
        readers.push(tokio::spawn(async move {
            while let Some(Ok(_)) = device.next().await {}
        }));
    }
    let devices_rss = resident_memory(&bench.metrics().await?);
    say(&bar, "connecting clients");
    let mut clients = Vec::with_capacity(args.devices);
    for d in 0..args.devices {
        clients.push(
            bench
                .resuming_client(&format!("resume-{}-{d}", bench.run_id))
                .await?,
        );
    }
    let connected_rss = resident_memory(&bench.metrics().await?);
    let mut histogram = Histogram::<u64>::new(3)?;
    let mut held_rss = 0.0;
    for round in 0..args.rounds {
        say(
            &bar,
            format!("round {} of {}: dropping", round + 1, args.rounds),
        );
        for client in &mut clients {
            if let Some(socket) = client.socket.take() {
                vanish(socket, false);
            }
        }
        bench.until_away(args.devices).await?;
        if round == 0 {
            held_rss = resident_memory(&bench.metrics().await?);
        }
        say(
            &bar,
            format!("round {} of {}: resuming", round + 1, args.rounds),
        );
        for client in &mut clients {
            let took = client.resume(&bench).await?;
            histogram.record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX))?;
        }
        bench.until_away(0).await?;
    }
    for client in &mut clients {
        if let Some(mut socket) = client.socket.take() {
            socket.close(None).await?;
            while let Some(Ok(_)) = socket.next().await {}
        }
    }
    for reader in readers {
        reader.abort();
    }
    bar.finish_and_clear();
    let n = args.devices as f64;
    let result = json!({
        "mode": "resume",
        "devices": args.devices,
        "resumes": histogram.len(),
        "resume_p50_us": histogram.value_at_quantile(0.5),
        "resume_p99_us": histogram.value_at_quantile(0.99),
        "resume_max_us": histogram.max(),
        "server_rss_devices": devices_rss,
        "server_rss_per_connected_client": (connected_rss - devices_rss) / n,
        "server_rss_per_held_client": (held_rss - devices_rss) / n,
    });
    if bench.json {
        println!("{result}");
    } else {
        println!(
            "resume: {} resumes of {} clients: reconnect to resumed p50 {} µs, p99 {} µs, max {} µs\n  server RSS per client: {:.0} bytes connected, {:.0} bytes held (its connection gone)",
            histogram.len(),
            args.devices,
            histogram.value_at_quantile(0.5),
            histogram.value_at_quantile(0.99),
            histogram.max(),
            (connected_rss - devices_rss) / n,
            (held_rss - devices_rss) / n,
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// poll
// ---------------------------------------------------------------------------

/// One polling client: forward a payload, poll until its echo is there,
/// again, until `running` is cleared. Returns the round trips measured
/// (while `measuring`) in `histogram`, and the requests it made.
/// What every polling client shares.
struct PollShared {
    payload_bytes: usize,
    epoch: Instant,
    measuring: AtomicBool,
    running: AtomicBool,
    histogram: Mutex<Histogram<u64>>,
    completed: AtomicU64,
}

async fn poll_client(bench: &Bench, device_id: &str, shared: &PollShared) -> Result<u64> {
    let PollShared {
        payload_bytes,
        epoch,
        measuring,
        running,
        histogram,
        completed,
    } = shared;
    let (payload_bytes, epoch) = (*payload_bytes, *epoch);
    let n = bench.next_source.fetch_add(1, Ordering::Relaxed) as usize;
    let source = Some(bench.sources[n % bench.sources.len()]);
    let (mut http, base, bearer) = bench.options.http_connection(source).await?;
    let request = |request: support::http::Request| match &bearer {
        Some(value) => request.header("Authorization", value),
        None => request,
    };
    let body = serde_json::json!({ "device_id": device_id }).to_string();
    let reply = http
        .send(request(support::http::Request::post_json(
            &format!("{base}/polled_connections"),
            &body,
        )))
        .await?;
    ensure!(
        reply.status == 200,
        "POST /polled_connections: {} {}",
        reply.status,
        reply.body
    );
    let connection: serde_json::Value = serde_json::from_str(&reply.body)?;
    let id = connection["connection_id"]
        .as_str()
        .context("no connection_id")?
        .to_owned();
    let mut requests = 1u64;
    let mut seen = 0u64;
    let mut seq = 0u64;
    let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    while running.load(Ordering::Acquire) {
        let sent_ns = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let forward = format!(
            r#"{{"payload":{}}}"#,
            relay_payload(seq, sent_ns, payload_bytes)
        );
        let reply = http
            .send(request(support::http::Request::post_json(
                &format!("{base}/polled_connections/{id}/:forward"),
                &forward,
            )))
            .await?;
        requests += 1;
        ensure!(
            reply.status == 200,
            "forward: {} {}",
            reply.status,
            reply.body
        );
        // Poll at once until the echo is there: the server's cost per
        // polled message, not a browser's pace.
        loop {
            let reply = http
                .send(request(support::http::Request::get(&format!(
                    "{base}/polled_connections/{id}/messages?start={seen}"
                ))))
                .await?;
            requests += 1;
            ensure!(
                reply.status == 200,
                "messages: {} {}",
                reply.status,
                reply.body
            );
            let messages: Vec<serde_json::Value> = serde_json::from_str(&reply.body)?;
            if messages.is_empty() {
                continue;
            }
            seen += messages.len() as u64;
            let echoed = messages
                .last()
                .and_then(|m| m["payload"]["seq"].as_u64())
                .context("an echo that is not ours")?;
            ensure!(echoed == seq, "echo {echoed} for {seq}");
            break;
        }
        let now_ns = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        completed.fetch_add(1, Ordering::Relaxed);
        if measuring.load(Ordering::Acquire) {
            let _ = local.record(now_ns.saturating_sub(sent_ns).max(1));
        }
        seq += 1;
    }
    histogram.lock().await.add(&local)?;
    Ok(requests)
}

async fn run_poll(bench: Arc<Bench>, args: PollArgs) -> Result<()> {
    let bar = bench.progress("connecting");
    let counters = Arc::new(RelayCounters::default());
    let shared = Arc::new(PollShared {
        payload_bytes: usize::try_from(args.payload_bytes)?,
        epoch: Instant::now(),
        measuring: AtomicBool::new(false),
        running: AtomicBool::new(true),
        histogram: Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?),
        completed: AtomicU64::new(0),
    });
    let mut device_tasks = Vec::new();
    let mut ids = Vec::new();
    let (stop_devices, devices_stop) = tokio::sync::watch::channel(false);
    for d in 0..args.devices {
        let id = format!("poll-{}-{d}", bench.run_id);
        let task = match bench.any_device(&id).await? {
            BenchDevice::Websocket(socket) => tokio::spawn(echo_device(
                *socket,
                counters.clone(),
                false,
                false,
                devices_stop.clone(),
            )),
            BenchDevice::Socket(socket) => {
                tokio::spawn(echo_socket_device(socket, counters.clone()))
            }
        };
        device_tasks.push(task);
        ids.push(id);
    }
    let clients: Vec<_> = ids
        .into_iter()
        .map(|id| {
            let (bench, shared) = (bench.clone(), shared.clone());
            tokio::spawn(async move { poll_client(&bench, &id, &shared).await })
        })
        .collect();
    say(
        &bar,
        format!("warming up for {}", humantime::format_duration(args.warmup)),
    );
    tokio::time::sleep(args.warmup).await;
    let metrics_before = match bench.server_pid {
        Some(_) => Some(bench.metrics().await?),
        None => None,
    };
    let cpu_before = bench.server_cpu()?;
    shared.measuring.store(true, Ordering::Release);
    let started = Instant::now();
    let completed_before = shared.completed.load(Ordering::Relaxed);
    tokio::time::sleep(args.duration).await;
    shared.measuring.store(false, Ordering::Release);
    let elapsed = started.elapsed().as_secs_f64();
    let round_trips = shared.completed.load(Ordering::Relaxed) - completed_before;
    let cpu_after = bench.server_cpu()?;
    let metrics_after = match bench.server_pid {
        Some(_) => Some(bench.metrics().await?),
        None => None,
    };
    shared.running.store(false, Ordering::Release);
    let mut requests = 0;
    for client in clients {
        requests += client.await??;
    }
    let _ = stop_devices.send(true);
    for task in device_tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    bar.finish_and_clear();
    let server = match (cpu_before, cpu_after, &metrics_before, &metrics_after) {
        (Some(before), Some(after), Some(m0), Some(m1)) => {
            let relayed = relayed_total(m1) - relayed_total(m0);
            Some((
                after - before,
                relayed,
                (after - before) / relayed.max(1.0) * 1e6,
            ))
        }
        _ => None,
    };
    let histogram = shared.histogram.lock().await;
    let micros = |q: f64| histogram.value_at_quantile(q) as f64 / 1e3;
    let result = json!({
        // Read as the relay rows are: per relayed message, both ways.
        "mode": "relay",
        "flow": "polling",
        "devices": args.devices,
        "payload_bytes": args.payload_bytes,
        "seconds": elapsed,
        "round_trips_per_s": round_trips as f64 / elapsed,
        "relayed_per_s": 2.0 * round_trips as f64 / elapsed,
        "http_requests": requests,
        "rtt_us": {
            "p50": micros(0.5), "p90": micros(0.9), "p99": micros(0.99),
            "p999": micros(0.999), "max": histogram.max() as f64 / 1e3,
        },
        "server_cpu_s": server.map(|s| s.0),
        "server_relayed": server.map(|s| s.1),
        "server_cpu_us_per_msg": server.map(|s| s.2),
        "lost": 0,
        "reordered": 0,
        "errors": counters.errors.load(Ordering::Relaxed),
    });
    if bench.json {
        println!("{result}");
    } else {
        println!(
            "poll: {} polling clients, {} B payloads, {elapsed:.1} s measured\n  {:.0} relayed messages/s; round trip µs p50 {:.1} p99 {:.1}",
            args.devices,
            args.payload_bytes,
            2.0 * round_trips as f64 / elapsed,
            micros(0.5),
            micros(0.99),
        );
        if let Some((_, relayed, per_message)) = server {
            println!(
                "  server: {per_message:.2} µs CPU per relayed message ({relayed:.0} relayed)"
            );
        }
    }
    ensure!(
        counters.errors.load(Ordering::Relaxed) == 0,
        "a device got a frame it did not expect"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// churn
// ---------------------------------------------------------------------------

async fn run_churn(bench: Arc<Bench>, args: ChurnArgs) -> Result<()> {
    let bar = bench.progress("churning");
    let cycles = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let cpu_before = bench.server_cpu()?;
    let started = Instant::now();
    let workers: Vec<_> = (0..args.concurrency.max(1))
        .map(|worker| {
            let bench = bench.clone();
            let cycles = cycles.clone();
            let errors = errors.clone();
            let stop = stop.clone();
            let bare = args.bare;
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Acquire) {
                    let id = format!("churn-{}-{worker}-{n}", bench.run_id);
                    n += 1;
                    match churn_cycle(&bench, &id, bare).await {
                        Ok(()) => cycles.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            if errors.fetch_add(1, Ordering::Relaxed) < 5 {
                                eprintln!("churn error: {e:#}");
                            }
                            0
                        }
                    };
                }
            })
        })
        .collect();
    while started.elapsed() < args.duration {
        tokio::time::sleep(Duration::from_millis(250)).await;
        bar.set_message(format!(
            "{:.0} cycles/s",
            cycles.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
        ));
    }
    stop.store(true, Ordering::Release);
    for worker in workers {
        worker.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = bench.server_cpu()?;
    say(&bar, "waiting for the server's gauges to return to zero");
    let left = if args.bare {
        Vec::new()
    } else {
        bench.gauges_not_zero().await?
    };
    bar.finish_and_clear();
    let cycles = cycles.load(Ordering::Relaxed);
    let errors = errors.load(Ordering::Relaxed);
    // Server CPU per cycle (two connections opened, used and closed).
    let server_us_per_cycle = match (cpu_before, cpu_after) {
        (Some(before), Some(after)) => Some((after - before) / cycles.max(1) as f64 * 1e6),
        _ => None,
    };
    let result = json!({
        "mode": "churn",
        "server_cpu_us_per_cycle": server_us_per_cycle,
        "concurrency": args.concurrency,
        "seconds": elapsed,
        "cycles": cycles,
        "cycles_per_s": cycles as f64 / elapsed,
        "connections_per_s": 2.0 * cycles as f64 / elapsed,
        "errors": errors,
        "gauges_not_zero": left.iter().map(|(g, v)| json!({"series": g, "value": v})).collect::<Vec<_>>(),
    });
    if bench.json {
        println!("{result}");
    } else {
        println!(
            "churn: {cycles} register/connect/exchange/leave cycles in {elapsed:.1} s = {:.0} cycles/s ({:.0} connections/s)\n  errors {errors}; server gauges back to zero: {}",
            cycles as f64 / elapsed,
            2.0 * cycles as f64 / elapsed,
            if left.is_empty() {
                "yes".to_owned()
            } else {
                format!("no: {left:?}")
            }
        );
        if let Some(per_cycle) = server_us_per_cycle {
            println!("  server CPU: {per_cycle:.1} µs per cycle");
        }
    }
    ensure!(errors == 0, "{errors} churn cycles failed");
    ensure!(left.is_empty(), "server gauges not back to zero: {left:?}");
    Ok(())
}

/// One device and one client: register, connect, one message each way,
/// leave (the device is told exactly once; the bare relay tells nothing).
async fn churn_cycle(bench: &Bench, device_id: &str, bare: bool) -> Result<()> {
    let mut device = bench.device(device_id).await?;
    let mut client = bench.client(device_id).await?;
    let payload = RawValue::from_string(r#"{"type":"ping"}"#.to_owned())?;
    let forward = ClientToServer::Forward(ClientForward { payload: &payload });
    client.send(Message::text(forward.encode())).await?;
    let text = next_text(&mut device).await?.context("device closed")?;
    if bare {
        device.send(Message::text(text)).await?;
        next_text(&mut client).await?.context("client closed")?;
        client.close(None).await?;
        device.close(None).await?;
        while let Some(Ok(_)) = client.next().await {}
        while let Some(Ok(_)) = device.next().await {}
        return Ok(());
    }
    let Ok(ServerToDevice::ClientMsg(message)) = ServerToDevice::decode(&text) else {
        bail!("device expected client_msg, got {text}");
    };
    let back = DeviceToServer::Forward(DeviceForward {
        client_id: message.client_id,
        payload: message.payload,
    });
    device.send(Message::text(back.encode())).await?;
    let text = next_text(&mut client).await?.context("client closed")?;
    ensure!(
        matches!(
            ServerToClient::decode(&text),
            Ok(ServerToClient::DeviceMsg(_))
        ),
        "client expected device_msg, got {text}"
    );
    client.close(None).await?;
    let text = next_text(&mut device).await?.context("device closed")?;
    ensure!(
        matches!(
            ServerToDevice::decode(&text),
            Ok(ServerToDevice::ClientDisconnected(_))
        ),
        "device expected client_disconnected, got {text}"
    );
    device.close(None).await?;
    // Read the server's close replies so both sockets end cleanly.
    while let Some(Ok(_)) = client.next().await {}
    while let Some(Ok(_)) = device.next().await {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_payloads_are_sized_and_parse_back() {
        for size in [64, 200, 4096] {
            let payload = relay_payload(42, 123_456_789, size);
            assert_eq!(payload.len(), size, "{payload}");
            assert!(serde_json::from_str::<serde_json::Value>(&payload).is_ok());
            assert_eq!(parse_relay_payload(&payload), Some((42, 123_456_789)));
        }
        assert_eq!(parse_relay_payload(r#"{"other":1}"#), None);
    }

    #[test]
    fn relayed_messages_are_summed_over_both_directions() {
        let body = "# HELP x\nsignaling_devices 3\nsignaling_messages_relayed_total{direction=\"client_to_device\"} 10\nsignaling_messages_relayed_total{direction=\"device_to_client\"} 12\n";
        assert_eq!(relayed_total(body), 22.0);
        assert_eq!(relayed_total("signaling_devices 3\n"), 0.0);
    }
}
