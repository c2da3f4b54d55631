//! The files of `deploy/`: the systemd unit passes `systemd-analyze
//! verify` and its security rating where systemd is installed, and the
//! example settings are a file the server takes. Also what `cargo xtask
//! dist` packs from the binary: its man page and shell completions.

#![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BINARY: &str = env!("CARGO_BIN_EXE_signaling-server");

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_owned()
}

/// A fresh directory of this test's own.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("signaling-deploy-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn succeeded(output: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{what}: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn the_systemd_unit_verifies_where_systemd_is_installed() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("systemd-analyze is not installed here: the unit is not checked");
        return;
    }
    let dir = scratch("unit");
    // The unit as installed, with the binary where this build put it.
    let unit =
        std::fs::read_to_string(repository().join("deploy/systemd/signaling-server.service"))
            .unwrap()
            .replace("/usr/local/bin/signaling-server", BINARY);
    let path = dir.join("signaling-server.service");
    std::fs::write(&path, unit).unwrap();
    // Its Documentation= names the man page, which the binary makes.
    let man = dir.join("man/man1");
    std::fs::create_dir_all(&man).unwrap();
    let page = succeeded(
        &Command::new(BINARY).arg("man").output().unwrap(),
        "signaling-server man",
    );
    std::fs::write(man.join("signaling-server.1"), page).unwrap();
    let mut verify = Command::new("systemd-analyze");
    verify.arg("verify");
    if Command::new("man").arg("--version").output().is_err() {
        // Without man, verify cannot look the page up.
        verify.arg("--man=no");
    }
    let output = verify
        .arg(&path)
        .env("MANPATH", dir.join("man"))
        .output()
        .unwrap();
    succeeded(&output, "systemd-analyze verify");
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        said.trim().is_empty(),
        "systemd-analyze verify said: {said}"
    );
    // Hardened: "OK" or better (systemd's scale is tenths of the 0-10
    // exposure level; the unit rates 1.4 with systemd 252).
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=20"])
        .arg(&path)
        .output()
        .unwrap();
    succeeded(&security, "systemd-analyze security --threshold=20");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_example_settings_are_a_file_the_server_takes() {
    let example = repository().join("deploy/config.toml");
    let output = Command::new(BINARY)
        .arg("--config")
        .arg(&example)
        .arg("--print-config")
        .env_remove("SIGNALING_LISTEN")
        .output()
        .unwrap();
    let printed = succeeded(&output, "--print-config with deploy/config.toml");
    for line in [
        r#"listen = "0.0.0.0:8443"  # --config"#,
        r#"drain-period = "20s"  # --config"#,
        r#"log-format = "json"  # --config"#,
        r#"# max-message-bytes = 65536  # default"#,
    ] {
        assert!(printed.contains(line), "{line} not in\n{printed}");
    }
}

#[test]
fn the_binary_makes_its_man_page_and_completions() {
    let page = succeeded(
        &Command::new(BINARY).arg("man").output().unwrap(),
        "signaling-server man",
    );
    assert!(page.contains(".TH signaling-server"), "{page}");
    for flag in [
        "max\\-message\\-bytes",
        "print\\-config",
        "SIGNALING_MAX_MESSAGE_BYTES",
    ] {
        assert!(page.contains(flag), "{flag} not in the man page");
    }
    for (shell, mark) in [
        ("bash", "complete -F _signaling__server"),
        ("zsh", "#compdef signaling-server"),
        ("fish", "complete -c signaling-server"),
    ] {
        let script = succeeded(
            &Command::new(BINARY)
                .args(["completions", shell])
                .output()
                .unwrap(),
            shell,
        );
        assert!(script.contains(mark), "{shell}: {mark} not in\n{script}");
        assert!(script.contains("max-message-bytes"), "{shell}");
    }
    let unknown = Command::new(BINARY)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("bash|zsh|fish"),
        "{unknown:?}"
    );
}
