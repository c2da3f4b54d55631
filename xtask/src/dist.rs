//! `cargo xtask dist`: the server packed for a host, under `target/dist/`:
//! a release build of `signaling-server`, its man page and shell
//! completions (the binary makes both: `signaling-server man`,
//! `signaling-server completions SHELL`), the systemd unit and the
//! example settings of `deploy/`, and the docs; as a folder and a
//! `.tar.gz` of it.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};

/// The completion scripts: the shell, and where its files go under the
/// package's `share/`.
const COMPLETIONS: [(&str, &str); 3] = [
    ("bash", "bash-completion/completions/signaling-server"),
    ("zsh", "zsh/site-functions/_signaling-server"),
    ("fish", "fish/vendor_completions.d/signaling-server.fish"),
];

pub fn run(root: &Path) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    crate::system::run_checked(
        Command::new(cargo).current_dir(root).args([
            "build",
            "--release",
            "-p",
            "signaling-server",
        ]),
        "cargo build --release -p signaling-server",
    )?;
    let target = crate::target_dir(root);
    let binary = target.join("release/signaling-server");
    // "signaling-server 0.1.0 (commit)": the version is the second word.
    let version = output(&binary, &["--version"])?;
    let version = version
        .split_whitespace()
        .nth(1)
        .context("signaling-server --version printed no version")?
        .to_owned();
    let name = format!(
        "signaling-server-{version}-{}-{}",
        std::env::consts::ARCH,
        std::env::consts::OS
    );
    let dist = target.join("dist");
    let package = dist.join(&name);
    let _ = std::fs::remove_dir_all(&package);
    let copy = |from: &Path, to: &str| -> Result<()> {
        let to = package.join(to);
        std::fs::create_dir_all(to.parent().context("a path in the package")?)?;
        std::fs::copy(from, &to).with_context(|| format!("copy {}", from.display()))?;
        Ok(())
    };
    let write = |to: &str, text: &str| -> Result<()> {
        let to = package.join(to);
        std::fs::create_dir_all(to.parent().context("a path in the package")?)?;
        std::fs::write(&to, text).with_context(|| format!("write {}", to.display()))
    };
    copy(&binary, "bin/signaling-server")?;
    write(
        "share/man/man1/signaling-server.1",
        &output(&binary, &["man"])?,
    )?;
    for (shell, path) in COMPLETIONS {
        write(
            &format!("share/{path}"),
            &output(&binary, &["completions", shell])?,
        )?;
    }
    copy(
        &root.join("deploy/systemd/signaling-server.service"),
        "systemd/signaling-server.service",
    )?;
    copy(&root.join("deploy/config.toml"), "config.toml")?;
    for doc in ["README.md", "PROTOCOL.md", "docs/operations.md"] {
        let file = Path::new(doc).file_name().context("a doc's name")?;
        copy(
            &root.join(doc),
            &format!("share/doc/signaling-server/{}", file.to_string_lossy()),
        )?;
    }
    let archive = dist.join(format!("{name}.tar.gz"));
    crate::system::run_checked(
        Command::new("tar")
            .arg("czf")
            .arg(&archive)
            .arg("-C")
            .arg(&dist)
            .arg(&name),
        "tar",
    )?;
    println!(
        "xtask: {}\nxtask: {} (docs/operations.md says how to install it)",
        package.display(),
        archive.display()
    );
    Ok(())
}

/// What `binary args` prints, which must succeed.
fn output(binary: &Path, args: &[&str]) -> Result<String> {
    let output = Command::new(binary)
        .args(args)
        .output()
        .with_context(|| format!("run {}", binary.display()))?;
    ensure!(
        output.status.success(),
        "signaling-server {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).context("signaling-server printed text that is not UTF-8")
}
