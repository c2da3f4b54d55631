//! `cargo xtask fuzz [SECONDS]`: runs each fuzz target of `fuzz/` for a
//! bounded time (default 30 s each), starting from the committed corpus.
//!
//! cargo fuzz needs the compiler's unstable flags; the machine's stable
//! toolchain allows them with `RUSTC_BOOTSTRAP=1`, so no nightly is needed.
//! cargo-fuzz itself is installed from crates.io when missing. New inputs
//! go to a scratch folder, so a run leaves the repository as it was; a
//! crash is kept under `fuzz/artifacts/` for `fuzz/regressions/`.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};

const TARGETS: [&str; 2] = ["sessions", "decode"];

pub fn run(root: &Path, seconds: u64) -> Result<()> {
    ensure_cargo_fuzz()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let fuzz_dir = root.join("fuzz");
    for target in TARGETS {
        let scratch = crate::target_dir(root).join("fuzz-scratch").join(target);
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&scratch)?;
        let status = Command::new(&cargo)
            .current_dir(&fuzz_dir)
            .env("RUSTC_BOOTSTRAP", "1")
            .args(["fuzz", "run", target])
            .arg(&scratch)
            .arg(fuzz_dir.join("corpus").join(target))
            .args([
                "--",
                &format!("-max_total_time={seconds}"),
                "-print_final_stats=1",
            ])
            .status()
            .with_context(|| format!("run cargo fuzz on {target}"))?;
        ensure!(status.success(), "fuzz target {target} failed: {status}");
        println!("fuzz: {target} ran {seconds} s without a failure");
    }
    Ok(())
}

fn ensure_cargo_fuzz() -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let installed = Command::new(&cargo)
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if installed {
        return Ok(());
    }
    println!("fuzz: installing cargo-fuzz");
    let status = Command::new(&cargo)
        .args(["install", "cargo-fuzz", "--locked"])
        .status()
        .context("cargo install cargo-fuzz")?;
    ensure!(status.success(), "installing cargo-fuzz failed: {status}");
    Ok(())
}
