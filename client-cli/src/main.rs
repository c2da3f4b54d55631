//! `client-cli`: a client of the signaling server.
//!
//! - `devices` lists the registered devices;
//! - `connect DEVICE_ID` completes a real WebRTC handshake with a device
//!   (offer, answer, trickled candidates, DTLS, a data channel), checks the
//!   echo of N messages, and prints a timeline of the phases;
//! - `raw device|client` is a line console: each stdin line is sent as a
//!   frame, each frame received is printed;
//! - `bench relay|idle|churn` loads a server and measures it.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use peer::signaling::ConnectOptions;

mod bench;
mod connect;
mod raw;

/// A client for Cuttlefish-style signaling servers.
#[derive(Debug, Parser)]
#[command(name = "client-cli", version)]
struct Cli {
    #[command(flatten)]
    connect: ConnectOptions,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the registered devices.
    Devices {
        /// Print the JSON array as the server sent it.
        #[arg(long)]
        json: bool,
    },
    /// Connect to a device and complete a WebRTC handshake with it.
    Connect(connect::ConnectArgs),
    /// Load the server with simulated devices and clients, and measure it.
    Bench(bench::BenchArgs),
    /// A line console: stdin lines are sent as frames, frames are printed.
    Raw {
        #[command(subcommand)]
        role: raw::Role,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    peer::init_logging("warn");
    // With --json, a failure is JSON too (connect's report says it with
    // its timeline).
    let json_errors = matches!(cli.command, Command::Devices { json: true });
    let result = match cli.command {
        Command::Devices { json } => devices(&cli.connect, json).await,
        Command::Connect(args) => connect::run(&cli.connect, args).await,
        Command::Raw { role } => raw::run(&cli.connect, role).await,
        Command::Bench(args) => bench::run(&cli.connect, args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if json_errors {
                println!("{}", serde_json::json!({ "error": format!("{e:#}") }));
            }
            eprintln!("client-cli: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn devices(options: &ConnectOptions, json: bool) -> anyhow::Result<()> {
    let (status, body) = options.http_get("/devices").await?;
    // The server's own words, from its {"error": …} body.
    let said = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"].as_str().map(|e| format!(": {e}")))
        .unwrap_or_else(|| match body.trim() {
            "" => String::new(),
            text => format!(": {text}"),
        });
    match status {
        200 => {}
        401 if options.token.is_none() => {
            anyhow::bail!("the server requires a token (HTTP 401{said}); pass --token")
        }
        401 => anyhow::bail!("the server refused the token (HTTP 401{said})"),
        404 => anyhow::bail!("HTTP 404{said} (is --server the signaling server's base URL?)"),
        other => anyhow::bail!("the server answered HTTP {other}{said}"),
    }
    if json {
        println!("{body}");
        return Ok(());
    }
    let ids = device_ids(&body)?;
    if ids.is_empty() {
        eprintln!("no devices registered");
    }
    for id in ids {
        println!("{id}");
    }
    Ok(())
}

/// The ids in a `GET /devices` answer: a list of ids (the reference
/// server's shape) or of descriptors with a `device_id` (the Go
/// operator's).
fn device_ids(body: &str) -> anyhow::Result<Vec<String>> {
    let entries: Vec<serde_json::Value> = serde_json::from_str(body)
        .map_err(|e| anyhow::anyhow!("the server's device list is not a JSON array: {e}"))?;
    entries
        .into_iter()
        .map(|entry| match entry {
            serde_json::Value::String(id) => Ok(id),
            serde_json::Value::Object(mut descriptor) => match descriptor.remove("device_id") {
                Some(serde_json::Value::String(id)) => Ok(id),
                _ => anyhow::bail!("a device descriptor without a device_id"),
            },
            other => anyhow::bail!("not a device id or descriptor: {other}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_lists_of_both_shapes_give_their_ids() {
        assert_eq!(device_ids(r#"["a","b"]"#).unwrap(), ["a", "b"]);
        assert_eq!(
            device_ids(r#"[{"device_id":"a","group_name":"","adb_port":0}]"#).unwrap(),
            ["a"]
        );
        assert!(device_ids(r#"[1]"#).is_err());
        assert!(device_ids(r#"{"a":1}"#).is_err());
    }
}
