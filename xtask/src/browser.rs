//! `cargo xtask browser`: the built-in web client in headless Chromium
//! (`web-tests/`), against the real binaries.
//!
//! Installs what is missing first: Debian's `chromium` (with apt-get, as
//! root) and the pinned `playwright-core` from npm (`npm ci`, from
//! web-tests/package-lock.json). Playwright's own browser download does not
//! work on these machines, so the tests drive the system Chromium.

use std::path::Path;
use std::process::Command;

use anyhow::Result;

use crate::system::run_checked;

const CHROMIUM: &str = "/usr/bin/chromium";

pub fn run(root: &Path) -> Result<()> {
    crate::e2e::build(root, false)?;
    crate::system::ensure_chromium(CHROMIUM)?;
    let tests = root.join("web-tests");
    if !tests.join("node_modules/playwright-core").is_dir() {
        println!("browser: installing playwright-core (npm ci)");
        run_checked(
            Command::new("npm")
                .current_dir(&tests)
                .args(["ci", "--no-audit", "--no-fund"]),
            "npm ci in web-tests (is Node.js with npm installed?)",
        )?;
    }
    let target = crate::target_dir(root);
    run_checked(
        Command::new("node")
            .current_dir(&tests)
            .args(["--test", "--test-concurrency=1", "browser.test.mjs"])
            .env("SIGNALING_BIN_DIR", target.join("debug"))
            .env("SIGNALING_ARTIFACTS", target.join("browser-tests"))
            .env("CHROMIUM", CHROMIUM),
        "the browser tests",
    )?;
    println!(
        "browser: ok; screenshot in {}",
        target.join("browser-tests/connected.png").display()
    );
    Ok(())
}
