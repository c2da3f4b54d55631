//! A real coturn (Debian's `turnserver`) on a free loopback port, for the
//! tests, the e2e run and the handshake benchmark: TURN REST credentials
//! (`--use-auth-secret`) under the secrets given, relaying between
//! loopback addresses only, no TLS. Stopped (and its files removed) when
//! dropped.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum CoturnError {
    #[error("cannot start turnserver (Debian's coturn: apt-get install coturn): {0}")]
    Start(std::io::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("turnserver never answered a STUN request on 127.0.0.1:{port}; its log:\n{log}")]
    NeverListened { port: u16, log: String },
}

/// A running turnserver.
#[derive(Debug)]
pub struct Coturn {
    child: Child,
    port: u16,
    dir: PathBuf,
}

/// The realm the test servers use; TURN REST credentials do not depend on it.
pub const REALM: &str = "signaling-test";

/// How long [`Coturn::start`] waits for the server to answer.
const START_PATIENCE: Duration = Duration::from_secs(10);

impl Coturn {
    /// A turnserver accepting credentials signed with any of `secrets`
    /// (coturn takes several, as during a rotation), answering once it does.
    pub fn start(secrets: &[&str]) -> Result<Self, CoturnError> {
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "coturn-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        // A port free on both UDP and TCP now; turnserver listens on both.
        let port = loop {
            let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
            let port = udp.local_addr()?.port();
            if std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
                break port;
            }
        };
        let mut command = Command::new("turnserver");
        command
            // Nothing from /etc/turnserver.conf.
            .arg("-n")
            .args(["--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1"])
            .args(["--listening-port", &port.to_string()])
            .args(["--realm", REALM, "--use-auth-secret"]);
        for secret in secrets {
            command.arg(format!("--static-auth-secret={secret}"));
        }
        command
            // Peers here are loopback addresses, which coturn refuses to
            // relay to unless told.
            .args([
                "--allow-loopback-peers",
                "--no-cli",
                "--no-tls",
                "--no-dtls",
            ])
            .args(["--no-multicast-peers", "--simple-log", "--no-stdout-log"])
            // Session lines, which name each user.
            .arg("--verbose")
            .arg("--log-file")
            .arg(dir.join("turn.log"))
            .arg("--pidfile")
            .arg(dir.join("turn.pid"))
            .arg("--userdb")
            .arg(dir.join("turn.db"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = command.spawn().map_err(CoturnError::Start)?;
        let coturn = Self { child, port, dir };
        if !answers_stun(coturn.address(), START_PATIENCE) {
            return Err(CoturnError::NeverListened {
                port,
                log: coturn.log(),
            });
        }
        Ok(coturn)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn address(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The URL to hand the signaling server's `--turn-url`.
    pub fn url(&self) -> String {
        format!("turn:127.0.0.1:{}?transport=udp", self.port)
    }

    /// What turnserver has logged so far (it names each session's user).
    pub fn log(&self) -> String {
        read_log(&self.dir)
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn read_log(dir: &Path) -> String {
    // --simple-log keeps the name as given; older coturns add a date.
    let mut log = String::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with("turn")
                && entry.path().extension().is_some_and(|e| e == "log")
            {
                log.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
    }
    log
}

/// Whether a STUN Binding request to `address` (RFC 8489 §5: type 0x0001,
/// no attributes, the magic cookie, a transaction id) gets an answer
/// within `patience`.
fn answers_stun(address: SocketAddr, patience: Duration) -> bool {
    let Ok(socket) = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)) else {
        return false;
    };
    let _ = socket.set_read_timeout(Some(Duration::from_millis(100)));
    let mut request = [0u8; 20];
    request[..2].copy_from_slice(&1u16.to_be_bytes());
    request[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
    request[8..].copy_from_slice(&std::process::id().to_be_bytes().repeat(3));
    let deadline = Instant::now() + patience;
    let mut answer = [0u8; 512];
    while Instant::now() < deadline {
        if socket.send_to(&request, address).is_ok()
            && let Ok((length, _)) = socket.recv_from(&mut answer)
            // A Binding success response, for our transaction.
            && length >= 20
            && answer[..2] == [0x01, 0x01]
            && answer[8..20] == request[8..20]
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}
