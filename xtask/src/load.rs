//! `cargo xtask bench`: the standard load scenarios of `client-cli bench`
//! against a release server pinned to one core, the load on the other.
//!
//! Each relay and churn scenario runs several times; the table gives the
//! median and the spread (min–max) and is rewritten in BENCHMARKS.md between
//! its `load` markers, with the machine and the exact commands. `--quick`
//! runs each mode briefly with small numbers, checks it succeeds, and writes
//! nothing: CI runs it so the tool cannot rot.

use std::path::Path;
use std::process::Stdio;

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use crate::e2e::{Server, Tools};

const START_MARK: &str = "<!-- load:start -->";
const END_MARK: &str = "<!-- load:end -->";

/// One `client-cli bench` invocation.
struct Scenario {
    name: &'static str,
    /// Arguments after `bench`.
    args: Vec<String>,
    runs: usize,
    /// Extra server flags; a scenario with flags gets its own server.
    server_args: Vec<&'static str>,
    /// Whether it needs a fresh server (idle memory is RSS growth).
    fresh_server: bool,
    tls: bool,
    /// Run against the bare relay example instead of the server.
    bare: bool,
    /// Its devices register on the server's device socket.
    device_socket: bool,
    /// Run against the `--against` server binary instead of this build's.
    baseline: bool,
    /// Two instances sharing a redis-server of their own: devices on one,
    /// clients on the other.
    cluster: bool,
}

/// A scenario on the shared plain server, with no extra flags.
fn scenario(name: &'static str, args: Vec<String>, runs: usize) -> Scenario {
    Scenario {
        name,
        args,
        runs,
        server_args: vec![],
        fresh_server: false,
        tls: false,
        bare: false,
        device_socket: false,
        baseline: false,
        cluster: false,
    }
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn standard() -> Vec<Scenario> {
    let relay = |payload: &str, extra: &[&str]| {
        let mut a = args(&[
            "relay",
            "--devices",
            "50",
            "--in-flight",
            "4",
            "--payload-bytes",
            payload,
            "--duration",
            "10s",
            "--warmup",
            "2s",
        ]);
        a.extend(args(extra));
        a
    };
    vec![
        scenario("relay 50 pairs × 4 in flight, 200 B", relay("200", &[]), 3),
        Scenario {
            fresh_server: true,
            bare: true,
            ..scenario(
                "bare relay baseline, 50 × 4, 200 B",
                relay("200", &["--bare"]),
                3,
            )
        },
        Scenario {
            fresh_server: true,
            bare: true,
            ..scenario(
                "bare relay baseline, 50 × 4, 4 KiB",
                relay("4096", &["--bare"]),
                3,
            )
        },
        scenario("relay 50 pairs × 4 in flight, 4 KiB", relay("4096", &[]), 3),
        Scenario {
            fresh_server: true,
            device_socket: true,
            ..scenario(
                "device socket: relay 50 pairs × 4 in flight, 200 B",
                relay("200", &[]),
                3,
            )
        },
        Scenario {
            fresh_server: true,
            device_socket: true,
            ..scenario(
                "device socket: relay 50 pairs × 4 in flight, 4 KiB",
                relay("4096", &[]),
                3,
            )
        },
        scenario(
            "websocket devices writing each frame: relay 50 pairs × 4 in flight, 200 B",
            relay("200", &["--device-write-each"]),
            3,
        ),
        Scenario {
            fresh_server: true,
            ..scenario(
                "polling (Go operator API): 50 clients, 1 in flight, 200 B",
                args(&[
                    "poll",
                    "--devices",
                    "50",
                    "--payload-bytes",
                    "200",
                    "--duration",
                    "10s",
                    "--warmup",
                    "2s",
                ]),
                3,
            )
        },
        Scenario {
            fresh_server: true,
            ..scenario(
                "Go operator client API: relay 50 pairs × 4 in flight, 200 B",
                relay("200", &["--client-api", "go"]),
                3,
            )
        },
        scenario(
            "unloaded round trip: 1 pair, 1 in flight, 200 B",
            args(&[
                "relay",
                "--devices",
                "1",
                "--in-flight",
                "1",
                "--payload-bytes",
                "200",
                "--duration",
                "10s",
                "--warmup",
                "2s",
            ]),
            3,
        ),
        Scenario {
            // Each abrupt drop is announced at once with resume off (with
            // it on, at the window's end, which the resume rows measure).
            server_args: vec!["--resume-window", "0s"],
            fresh_server: true,
            ..scenario(
                "relay 50 × 4, 200 B, beside 5,000 abrupt disconnects (resume off)",
                relay("200", &["--disconnects", "5000"]),
                1,
            )
        },
        Scenario {
            fresh_server: true,
            ..scenario(
                "resume: 200 clients dropped and resumed 10 times",
                args(&["resume", "--devices", "200", "--rounds", "10"]),
                3,
            )
        },
        Scenario {
            fresh_server: true,
            tls: true,
            ..scenario("relay over TLS (wss), 50 × 4, 200 B", relay("200", &[]), 1)
        },
        Scenario {
            fresh_server: true,
            ..scenario(
                "idle: 5,000 registered devices",
                args(&["idle", "--devices", "5000", "--hold", "3s"]),
                1,
            )
        },
        Scenario {
            fresh_server: true,
            device_socket: true,
            ..scenario(
                "device socket: idle: 5,000 registered devices",
                args(&["idle", "--devices", "5000", "--hold", "3s"]),
                1,
            )
        },
        Scenario {
            server_args: vec!["--max-connections", "19500"],
            fresh_server: true,
            ..scenario(
                "idle: 19,000 registered devices",
                args(&[
                    "idle",
                    "--devices",
                    "19000",
                    "--hold",
                    "3s",
                    "--source-addrs",
                    "32",
                ]),
                1,
            )
        },
        scenario("churn: register/connect/exchange/leave", churn(&[]), 3),
        Scenario {
            cluster: true,
            ..scenario(
                "two instances (Redis): churn, devices on one, clients on the other",
                churn(&[]),
                3,
            )
        },
        Scenario {
            cluster: true,
            ..scenario(
                "two instances (Redis): relay 50 pairs × 4 in flight, 200 B",
                relay("200", &[]),
                3,
            )
        },
        Scenario {
            fresh_server: true,
            ..scenario(
                "one instance: open loop, 50 clients × 100 msg/s, 200 B",
                open_loop(),
                3,
            )
        },
        Scenario {
            cluster: true,
            ..scenario(
                "two instances (Redis): open loop, 50 clients × 100 msg/s, 200 B",
                open_loop(),
                3,
            )
        },
        Scenario {
            fresh_server: true,
            bare: true,
            ..scenario("bare relay baseline: churn", churn(&["--bare"]), 3)
        },
    ]
}

/// 10,000 relayed messages a second (5,000 each way): 50 clients sending
/// 100 a second each, whatever comes back.
fn open_loop() -> Vec<String> {
    args(&[
        "relay",
        "--devices",
        "50",
        "--rate",
        "100",
        "--payload-bytes",
        "200",
        "--duration",
        "10s",
        "--warmup",
        "2s",
    ])
}

fn churn(extra: &[&str]) -> Vec<String> {
    let mut a = args(&[
        "churn",
        "--duration",
        "10s",
        "--concurrency",
        "32",
        "--source-addrs",
        "64",
    ]);
    a.extend(args(extra));
    a
}

fn quick() -> Vec<Scenario> {
    vec![
        Scenario {
            server_args: vec!["--resume-window", "0s"],
            fresh_server: true,
            ..scenario(
                "relay with abrupt disconnects beside it (quick)",
                args(&[
                    "relay",
                    "--devices",
                    "4",
                    "--in-flight",
                    "2",
                    "--duration",
                    "1s",
                    "--warmup",
                    "200ms",
                    "--disconnects",
                    "200",
                ]),
                1,
            )
        },
        Scenario {
            fresh_server: true,
            ..scenario(
                "resume (quick)",
                args(&["resume", "--devices", "10", "--rounds", "2"]),
                1,
            )
        },
        scenario(
            "relay open loop (quick)",
            args(&[
                "relay",
                "--devices",
                "2",
                "--rate",
                "200",
                "--payload-bytes",
                "4096",
                "--duration",
                "1s",
                "--warmup",
                "200ms",
            ]),
            1,
        ),
        scenario(
            "idle (quick)",
            args(&["idle", "--devices", "100", "--hold", "200ms"]),
            1,
        ),
        // Its own server: polling clients stay until --poll-timeout, and
        // the scenarios after it check the gauges return to zero.
        Scenario {
            fresh_server: true,
            ..scenario(
                "polling clients (quick)",
                args(&[
                    "poll",
                    "--devices",
                    "2",
                    "--duration",
                    "1s",
                    "--warmup",
                    "200ms",
                ]),
                1,
            )
        },
        scenario(
            "relay with Go operator clients (quick)",
            args(&[
                "relay",
                "--devices",
                "2",
                "--in-flight",
                "2",
                "--duration",
                "1s",
                "--warmup",
                "200ms",
                "--client-api",
                "go",
            ]),
            1,
        ),
        Scenario {
            fresh_server: true,
            device_socket: true,
            ..scenario(
                "relay with devices on the device socket (quick)",
                args(&[
                    "relay",
                    "--devices",
                    "4",
                    "--in-flight",
                    "2",
                    "--duration",
                    "1s",
                    "--warmup",
                    "200ms",
                ]),
                1,
            )
        },
        scenario(
            "churn (quick)",
            args(&["churn", "--duration", "1s", "--concurrency", "4"]),
            1,
        ),
        Scenario {
            cluster: true,
            ..scenario(
                "two instances on Redis, open loop (quick)",
                args(&[
                    "relay",
                    "--devices",
                    "4",
                    "--rate",
                    "200",
                    "--duration",
                    "1s",
                    "--warmup",
                    "200ms",
                ]),
                1,
            )
        },
    ]
}

/// The scenarios `--against` measures, each beside the same one on the other
/// server: CPU per relayed message at 200 B and 4 KiB, idle memory, the
/// same with devices on the device socket when both servers serve one,
/// and the relay between two instances on Redis (at full load and at
/// 10,000 messages/s) when both serve `--redis`. Every run gets a fresh
/// server, so neither build inherits the other's state.
fn comparison(with_device_socket: bool, with_redis: bool) -> Vec<Scenario> {
    let measured = standard().into_iter().filter(|s| {
        let name = s.name.strip_prefix("device socket: ").unwrap_or(s.name);
        let name = name.strip_prefix("two instances (Redis): ").unwrap_or(name);
        !s.bare
            && (with_device_socket || !s.device_socket)
            && (with_redis || !s.cluster)
            && (name.starts_with("relay 50 pairs")
                || name == "idle: 5,000 registered devices"
                || (s.cluster && name.starts_with("open loop")))
    });
    let mut all = Vec::new();
    for scenario in measured {
        for (label, baseline) in [("before", true), ("after", false)] {
            all.push(Scenario {
                name: leak(format!("{label}: {}", scenario.name)),
                args: scenario.args.clone(),
                runs: 5,
                server_args: scenario.server_args.clone(),
                fresh_server: true,
                tls: false,
                bare: false,
                device_socket: scenario.device_socket,
                baseline,
                cluster: scenario.cluster,
            });
        }
    }
    all
}

/// Whether a server binary serves `flag` (older ones may not).
fn serves(binary: &Path, flag: &str) -> bool {
    std::process::Command::new(binary)
        .arg("--help")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains(flag))
}

/// Scenario names are `&'static str`; the few made at run time live as long.
fn leak(name: String) -> &'static str {
    Box::leak(name.into_boxed_str())
}

/// With `against`, only the comparison scenarios, alternating between this
/// build's server and the server binary at that path. With `only`, the
/// standard scenarios whose name holds that text, printed and not written
/// down (for trying a change).
pub fn run_with(
    root: &Path,
    quick_run: bool,
    against: Option<&Path>,
    only: Option<&str>,
) -> Result<()> {
    crate::e2e::build(root, true)?;
    if !quick_run && against.is_none() && only.is_none() {
        build_bare_relay(root)?;
    }
    let mut tools = crate::tools(root, "release", "load-logs")?;
    let pinned = !quick_run && taskset_works();
    if pinned {
        tools.server_core = Some(0);
    }
    let baseline_tools = match against {
        Some(binary) => {
            let dir = tools.log_dir.join("baseline-bin");
            std::fs::create_dir_all(&dir)?;
            std::fs::copy(binary, dir.join("signaling-server"))
                .with_context(|| format!("copy {}", binary.display()))?;
            Some(Tools {
                bin_dir: dir,
                log_dir: tools.log_dir.clone(),
                server_core: tools.server_core,
            })
        }
        None => None,
    };
    let scenarios = match (quick_run, against, only) {
        (true, _, _) => quick(),
        (false, Some(binary), only) => {
            let chosen: Vec<Scenario> = comparison(
                serves(binary, "--device-socket"),
                serves(binary, "--redis "),
            )
            .into_iter()
            .filter(|s| only.is_none_or(|text| s.name.contains(text)))
            .collect();
            anyhow::ensure!(
                !chosen.is_empty(),
                "no comparison scenario's name holds {:?}",
                only.unwrap_or_default()
            );
            chosen
        }
        (false, None, Some(text)) => {
            let chosen: Vec<Scenario> = standard()
                .into_iter()
                .filter(|s| s.name.contains(text) && !s.bare)
                .collect();
            anyhow::ensure!(
                !chosen.is_empty(),
                "no standard scenario's name holds {text:?}"
            );
            chosen
        }
        (false, None, None) => standard(),
    };
    // Rounds: each round runs every scenario that has runs left once, so
    // a scenario and its bare-relay baseline are measured minutes apart at
    // most, under the same load from the machine's other tenants.
    let mut shared: Option<Server> = None;
    let mut all_results: Vec<Vec<Value>> = scenarios.iter().map(|_| Vec::new()).collect();
    let rounds = scenarios.iter().map(|s| s.runs).max().unwrap_or(0);
    for round in 0..rounds {
        for (scenario, results) in scenarios.iter().zip(&mut all_results) {
            if round >= scenario.runs {
                continue;
            }
            let server_tools = match (&baseline_tools, scenario.baseline) {
                (Some(baseline), true) => baseline,
                _ => &tools,
            };
            let own_server = if scenario.fresh_server
                || !scenario.server_args.is_empty()
                || scenario.tls
                || scenario.cluster
            {
                Some(start_server(server_tools, scenario)?)
            } else {
                None
            };
            let server = match &own_server {
                Some(server) => server,
                None => match &mut shared {
                    Some(server) => server,
                    none => none.insert(start_server(&tools, scenario)?),
                },
            };
            let result = bench_once(&tools, server, scenario, pinned)
                .with_context(|| format!("{} (run {})", scenario.name, round + 1))?;
            results.push(result);
            println!(
                "bench: {:<52} run {} of {} ok",
                scenario.name,
                round + 1,
                scenario.runs
            );
        }
    }
    let rows: Vec<String> = scenarios
        .iter()
        .zip(&all_results)
        .map(|(scenario, results)| row(scenario, results))
        .collect();
    let commands: Vec<String> = scenarios
        .iter()
        .map(|scenario| {
            format!(
                "client-cli --server {} bench {}{} --server-pid PID --json",
                if scenario.tls {
                    "wss://localhost:PORT --ca-cert cert.pem"
                } else {
                    "ws://127.0.0.1:PORT"
                },
                scenario.args.join(" "),
                if scenario.device_socket {
                    " --device-socket PATH"
                } else if scenario.cluster {
                    " --client-server ws://127.0.0.1:PORT2 --client-server-pid PID2 --redis-pid REDIS_PID"
                } else {
                    ""
                },
            )
        })
        .collect();
    if quick_run {
        println!("bench: quick run ok");
        return Ok(());
    }
    if only.is_some() {
        for (scenario, row) in scenarios.iter().zip(&rows) {
            println!("bench: {}: {row}", scenario.name);
        }
        return Ok(());
    }
    if let Some(against) = against {
        return write_comparison(root, &scenarios, &all_results, &rows, &commands, against);
    }
    let mut table = String::from("| scenario | result (median of runs; min–max) |\n|---|---|\n");
    for (scenario, row) in scenarios.iter().zip(&rows) {
        table.push_str(&format!("| {} | {row} |\n", scenario.name));
    }
    // Each of ours against its reference (the bare relay, or the same
    // scenario with websocket devices): (what, ours, reference, field, unit).
    let comparisons = [
        (
            "server CPU per message relative to the bare relay, 200 B",
            "relay 50 pairs × 4 in flight, 200 B",
            "bare relay baseline, 50 × 4, 200 B",
            "/server_cpu_us_per_msg",
            "µs",
        ),
        (
            "server CPU per message relative to the bare relay, 4 KiB",
            "relay 50 pairs × 4 in flight, 4 KiB",
            "bare relay baseline, 50 × 4, 4 KiB",
            "/server_cpu_us_per_msg",
            "µs",
        ),
        (
            "server CPU per message, socket devices relative to websocket devices, 200 B",
            "device socket: relay 50 pairs × 4 in flight, 200 B",
            "relay 50 pairs × 4 in flight, 200 B",
            "/server_cpu_us_per_msg",
            "µs",
        ),
        (
            "server CPU per message, socket devices relative to websocket devices writing each frame, 200 B",
            "device socket: relay 50 pairs × 4 in flight, 200 B",
            "websocket devices writing each frame: relay 50 pairs × 4 in flight, 200 B",
            "/server_cpu_us_per_msg",
            "µs",
        ),
        (
            "server CPU per message, socket devices relative to websocket devices, 4 KiB",
            "device socket: relay 50 pairs × 4 in flight, 4 KiB",
            "relay 50 pairs × 4 in flight, 4 KiB",
            "/server_cpu_us_per_msg",
            "µs",
        ),
        (
            "server CPU per message, Go operator clients relative to seed clients, 200 B",
            "Go operator client API: relay 50 pairs × 4 in flight, 200 B",
            "relay 50 pairs × 4 in flight, 200 B",
            "/server_cpu_us_per_msg",
            "µs",
        ),
        (
            "idle memory per device, socket relative to websocket",
            "device socket: idle: 5,000 registered devices",
            "idle: 5,000 registered devices",
            "/server_rss_per_connection",
            "B",
        ),
        (
            "churn rate relative to the bare relay",
            "churn: register/connect/exchange/leave",
            "bare relay baseline: churn",
            "/cycles_per_s",
            "cycles/s",
        ),
        (
            "server CPU per churn cycle relative to the bare relay",
            "churn: register/connect/exchange/leave",
            "bare relay baseline: churn",
            "/server_cpu_us_per_cycle",
            "µs",
        ),
    ];
    for (what, ours, bare, field, unit) in comparisons {
        let median = |name: &str| {
            scenarios
                .iter()
                .position(|s| s.name == name)
                .map(|i| stat(&all_results[i], field).0)
        };
        if let (Some(ours), Some(bare)) = (median(ours), median(bare)) {
            table.push_str(&format!(
                "| {what} | {:.2}× ({ours:.2} {unit} vs {bare:.2} {unit}) |\n",
                ours / bare
            ));
        }
    }
    let section = format!(
        "{START_MARK}\n## Load: `cargo xtask bench`\n\n\
         Release build. The server runs pinned to core 0 (`taskset -c 0 signaling-server --listen 127.0.0.1:0 --rate-limit 0`), \
         `client-cli bench` pinned to core 1{}. Server CPU per message is the server's user+system \
         time from /proc over the measured window divided by the messages it relayed in that window \
         (from its /metrics). The baseline is the bare relay (`server/examples/bare_relay.rs`: frames \
         forwarded unparsed, 4 KiB read buffers). The generator writes each burst of frames it has \
         ready with one syscall, as a busy peer does; a device on the device socket (the server started \
         with `--device-socket PATH` as well) sends one packet per message, as a Cuttlefish device does. Scenarios run in rounds, a run of each per round. \
         Machine: {}.\n\n{table}\nCommands (one line per scenario, in order):\n\n```\n{}\n```\n{END_MARK}",
        if pinned {
            ""
        } else {
            " (taskset was not available: nothing was pinned)"
        },
        crate::machine_description(),
        commands.join("\n")
    );
    print!("{table}");
    crate::replace_section(&root.join("BENCHMARKS.md"), START_MARK, END_MARK, &section)?;
    println!("bench: BENCHMARKS.md updated");
    Ok(())
}

const COMPARE_START: &str = "<!-- compare:start -->";
const COMPARE_END: &str = "<!-- compare:end -->";

/// The `--against` table: each scenario before and after, and their ratios.
fn write_comparison(
    root: &Path,
    scenarios: &[Scenario],
    results: &[Vec<Value>],
    rows: &[String],
    commands: &[String],
    against: &Path,
) -> Result<()> {
    let mut table = String::from("| scenario | result (median of runs; min–max) |\n|---|---|\n");
    for (scenario, row) in scenarios.iter().zip(rows) {
        table.push_str(&format!("| {} | {row} |\n", scenario.name));
    }
    for (index, after) in scenarios.iter().enumerate() {
        let Some(what) = after.name.strip_prefix("after: ") else {
            continue;
        };
        let Some(before) = scenarios
            .iter()
            .position(|s| s.name == format!("before: {what}"))
        else {
            continue;
        };
        let (field, unit) = if what.contains("idle") {
            ("/server_rss_per_connection", "B per connection")
        } else {
            ("/server_cpu_us_per_msg", "µs/message")
        };
        let (a, b) = (stat(&results[index], field), stat(&results[before], field));
        table.push_str(&format!(
            "| after relative to before: {what} | {:.3}× ({:.2} vs {:.2} {unit}; spread before {:.2}–{:.2}, after {:.2}–{:.2}) |\n",
            a.0 / b.0,
            a.0,
            b.0,
            b.1,
            b.2,
            a.1,
            a.2
        ));
    }
    let section = format!(
        "{COMPARE_START}\n## Before and after: `cargo xtask bench --against OLD-BINARY`\n\n\
         Release builds. `before` is the server binary given (`{}`), `after` this build's; \
         each run gets a fresh server pinned to core 0, the generator on core 1, and the \
         runs alternate before, after, before, … in rounds. Machine: {}.\n\n{table}\n\
         Commands (one line per scenario, in order):\n\n```\n{}\n```\n{COMPARE_END}",
        against
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        crate::machine_description(),
        commands.join("\n")
    );
    print!("{table}");
    let path = root.join("BENCHMARKS.md");
    let text = std::fs::read_to_string(&path)?;
    if !text.contains(COMPARE_START) {
        std::fs::write(
            &path,
            format!("{}\n{COMPARE_START}\n{COMPARE_END}\n", text.trim_end()),
        )?;
    }
    crate::replace_section(&path, COMPARE_START, COMPARE_END, &section)?;
    println!("bench: BENCHMARKS.md updated");
    Ok(())
}

fn build_bare_relay(root: &Path) -> Result<()> {
    let status =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(root)
            .args([
                "build",
                "--quiet",
                "--release",
                "--package",
                "signaling-server",
                "--example",
                "bare_relay",
            ])
            .status()
            .context("build the bare relay")?;
    ensure!(status.success(), "building the bare relay failed");
    Ok(())
}

fn taskset_works() -> bool {
    std::process::Command::new("taskset")
        .args(["-c", "0", "true"])
        .status()
        .is_ok_and(|s| s.success())
}

/// The bare relay example, pinned like the server.
fn start_bare_relay(tools: &Tools) -> Result<Server> {
    let binary = tools.bin_dir.join("examples").join("bare_relay");
    let mut command = match tools.server_core {
        Some(core) => {
            let mut command = std::process::Command::new("taskset");
            command.args(["-c", &core.to_string()]).arg(binary);
            command
        }
        None => std::process::Command::new(binary),
    };
    command
        .arg("127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut process =
        crate::process::Process::start(command, "bare-relay", &tools.log("bare-relay"))?;
    let url = crate::process::read_stdout_until(&mut process, "bare relay on ")?;
    Ok(Server {
        process,
        url,
        tool_flags: Vec::new(),
        bench_flags: Vec::new(),
        companions: Vec::new(),
    })
}

/// Two instances on a redis-server of their own; the first one, holding
/// the other two, with the flags that send `client-cli bench`'s clients to
/// the second and count both instances' CPU (and Redis's beside).
fn start_cluster(tools: &Tools, name: &str) -> Result<Server> {
    let (redis, mut devices, clients) = tools.two_instances(name, &["--rate-limit", "0"])?;
    devices.bench_flags = vec![
        "--client-server".into(),
        clients.url.clone(),
        "--client-server-pid".into(),
        clients.process.pid().to_string(),
        "--redis-pid".into(),
        redis.pid().to_string(),
    ];
    devices.companions = vec![clients.process, redis];
    Ok(devices)
}

fn start_server(tools: &Tools, scenario: &Scenario) -> Result<Server> {
    if scenario.bare {
        return start_bare_relay(tools);
    }
    if scenario.cluster {
        return start_cluster(tools, "cluster");
    }
    let name = scenario
        .name
        .split(':')
        .next()
        .unwrap_or("server")
        .replace(' ', "-");
    // The bench measures the relay, not the rate limiter.
    let mut flags: Vec<String> = vec!["--rate-limit".into(), "0".into()];
    flags.extend(scenario.server_args.iter().map(|s| (*s).to_owned()));
    let cert_dir = tools.log_dir.join("tls");
    if scenario.tls {
        flags.extend(["--tls-self-signed".into(), "--tls-self-signed-dir".into()]);
        flags.push(cert_dir.to_string_lossy().into_owned());
    }
    let socket = scenario.device_socket.then(|| {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        std::env::temp_dir().join(format!("bench-device-socket-{}-{n}", std::process::id()))
    });
    if let Some(path) = &socket {
        flags.extend([
            "--device-socket".into(),
            path.to_string_lossy().into_owned(),
        ]);
    }
    let flag_refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut server = tools.server(&name, &flag_refs)?;
    if let Some(path) = socket {
        server.bench_flags = vec![
            "--device-socket".into(),
            path.to_string_lossy().into_owned(),
        ];
    }
    if scenario.tls {
        // The certificate names localhost; connect by that name.
        server.url = server.url.replace("127.0.0.1", "localhost");
        server.tool_flags = vec![
            "--ca-cert".into(),
            cert_dir.join("cert.pem").to_string_lossy().into_owned(),
        ];
    }
    Ok(server)
}

fn bench_once(tools: &Tools, server: &Server, scenario: &Scenario, pinned: bool) -> Result<Value> {
    let mut command = if pinned {
        tools.pinned_command("client-cli", 1)
    } else {
        tools.command("client-cli")
    };
    command
        .env("RUST_LOG", "warn")
        .args(["--server", &server.url])
        .args(&server.tool_flags)
        .arg("bench")
        .args(&scenario.args)
        .args(&server.bench_flags)
        .args(["--json", "--server-pid", &server.process.pid().to_string()])
        .stdin(Stdio::null());
    // With taskset the server's pid is taskset's, which exec'd the server.
    let output = command.output().context("run client-cli bench")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "client-cli bench failed ({}): {}{}",
        output.status,
        stdout.trim(),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    serde_json::from_str(stdout.trim()).with_context(|| format!("not a JSON result: {stdout}"))
}

/// Median, min and max of one field over the runs.
fn stat(results: &[Value], pointer: &str) -> (f64, f64, f64) {
    let mut values: Vec<f64> = results
        .iter()
        .filter_map(|r| r.pointer(pointer).and_then(Value::as_f64))
        .collect();
    crate::spread(&mut values)
}

fn fmt_stat((median, min, max): (f64, f64, f64), digits: usize) -> String {
    if min == max {
        format!("{median:.digits$}")
    } else {
        format!("{median:.digits$} ({min:.digits$}–{max:.digits$})")
    }
}

fn row(scenario: &Scenario, results: &[Value]) -> String {
    let mode = results
        .first()
        .and_then(|r| r["mode"].as_str())
        .unwrap_or_default();
    match mode {
        "relay" => format!(
            "server CPU {} µs/message{}; {} relayed messages/s; round trip p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs; lost 0, reordered 0{}",
            fmt_stat(stat(results, "/server_cpu_us_per_msg"), 2),
            if scenario.cluster {
                format!(
                    " (both instances), Redis {} µs/message",
                    fmt_stat(stat(results, "/redis_cpu_us_per_msg"), 2)
                )
            } else {
                String::new()
            },
            fmt_stat(stat(results, "/relayed_per_s"), 0),
            fmt_stat(stat(results, "/rtt_us/p50"), 1),
            fmt_stat(stat(results, "/rtt_us/p99"), 1),
            fmt_stat(stat(results, "/rtt_us/p999"), 1),
            fmt_stat(stat(results, "/rtt_us/max"), 0),
            match stat(results, "/disconnects") {
                (d, ..) if d > 0.0 => format!(
                    "; {} abrupt disconnects beside it, each announced, gauges back to zero",
                    fmt_stat(stat(results, "/disconnects"), 0)
                ),
                _ => String::new(),
            },
        ),
        "idle" => format!(
            "{} bytes of server RSS per connection ({} MiB → {} MiB); {} connects/s",
            fmt_stat(stat(results, "/server_rss_per_connection"), 0),
            fmt_stat(
                stat(results, "/server_rss_before").map3(|v| v / 1048576.0),
                1
            ),
            fmt_stat(
                stat(results, "/server_rss_after").map3(|v| v / 1048576.0),
                1
            ),
            fmt_stat(stat(results, "/connects_per_s"), 0),
        ),
        "churn" => format!(
            "{} cycles/s ({} connections/s); server CPU {} µs per cycle; {}",
            fmt_stat(stat(results, "/cycles_per_s"), 0),
            fmt_stat(stat(results, "/connections_per_s"), 0),
            fmt_stat(stat(results, "/server_cpu_us_per_cycle"), 1),
            if scenario.bare {
                "no gauges to check"
            } else {
                "gauges back to zero"
            },
        ),
        other => format!("unknown mode {other:?} in {}", scenario.name),
    }
}

trait Map3 {
    fn map3(self, f: impl Fn(f64) -> f64) -> Self;
}

impl Map3 for (f64, f64, f64) {
    fn map3(self, f: impl Fn(f64) -> f64) -> Self {
        (f(self.0), f(self.1), f(self.2))
    }
}
