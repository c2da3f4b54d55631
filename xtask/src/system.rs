//! The Debian packages the tasks need, installed when missing: with
//! apt-get as root (after one `apt-get update` per run), otherwise an
//! error that names the package to install.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail, ensure};

/// Whether this run has refreshed apt's package lists.
static UPDATED: AtomicBool = AtomicBool::new(false);

/// What the build needs: fake-device links Debian's libvpx (its live VP8
/// screens), found through pkg-config.
pub fn ensure_build_packages() -> Result<()> {
    let present = Command::new("pkg-config")
        .args(["--exists", "vpx"])
        .status()
        .is_ok_and(|status| status.success());
    if present {
        return Ok(());
    }
    install(&["libvpx-dev", "pkg-config"], "fake-device's VP8 encoder")?;
    let found = Command::new("pkg-config")
        .args(["--exists", "vpx"])
        .status()
        .is_ok_and(|status| status.success());
    ensure!(
        found,
        "libvpx-dev installed, but pkg-config does not find vpx"
    );
    Ok(())
}

/// What the tests start themselves, each on free loopback ports: Debian's
/// redis-server (the cluster tests) and coturn's turnserver (the relay
/// tests).
pub fn ensure_test_packages() -> Result<()> {
    for (program, package, for_what) in [
        ("redis-server", "redis-server", "the cluster tests"),
        ("turnserver", "coturn", "the TURN relay tests"),
    ] {
        if runs(program, "--version") {
            continue;
        }
        install(&[package], for_what)?;
        // The package starts a server of its own where an init system
        // runs; the tests need none of it (best effort: there may be none).
        let _ = Command::new("service").args([package, "stop"]).output();
    }
    Ok(())
}

/// Whether `program` exists and exits 0 given `arg`.
fn runs(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .output()
        .is_ok_and(|output| output.status.success())
}

/// Debian's chromium at `path`, for the browser tests.
pub fn ensure_chromium(path: &str) -> Result<()> {
    if Path::new(path).exists() {
        return Ok(());
    }
    install(&["chromium"], "the browser tests")?;
    ensure!(
        Path::new(path).exists(),
        "chromium installed, but {path} is not there"
    );
    Ok(())
}

fn install(packages: &[&str], for_what: &str) -> Result<()> {
    let list = packages.join(" ");
    // apt-get needs root: `id -u` prints 0 for it.
    let uid = Command::new("id").arg("-u").output().context("run id -u")?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        bail!("{for_what}: Debian's {list} is missing; as root: apt-get install {list}");
    }
    println!("xtask: installing {list} for {for_what} (apt-get)");
    if !UPDATED.swap(true, Ordering::Relaxed) {
        run_checked(Command::new("apt-get").arg("update"), "apt-get update")?;
    }
    run_checked(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        &format!("apt-get install {list}"),
    )
}

pub fn run_checked(command: &mut Command, what: &str) -> Result<()> {
    let status = command.status().with_context(|| format!("start {what}"))?;
    ensure!(status.success(), "{what} failed: {status}");
    Ok(())
}
