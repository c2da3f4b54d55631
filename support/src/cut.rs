//! A TCP proxy on loopback that a test or the e2e run controls: it carries every
//! connection to one address, and [`CuttingProxy::cut`] breaks all of them
//! at once, as a network that fails does (the peers see their connections
//! end without a close frame). New connections go through afterwards,
//! unless [`CuttingProxy::set_down`] keeps the network down.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The proxy; it stops accepting when dropped.
#[derive(Debug)]
pub struct CuttingProxy {
    pub address: SocketAddr,
    /// Both ends of every connection carried so far.
    open: Arc<Mutex<Vec<TcpStream>>>,
    stopped: Arc<AtomicBool>,
    down: Arc<AtomicBool>,
}

impl CuttingProxy {
    /// Listens on a free loopback port, carrying connections to `to`.
    pub fn start(to: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let address = listener.local_addr()?;
        let open = Arc::new(Mutex::new(Vec::new()));
        let stopped = Arc::new(AtomicBool::new(false));
        let down = Arc::new(AtomicBool::new(false));
        let (accepted, stop, refuse) = (open.clone(), stopped.clone(), down.clone());
        std::thread::spawn(move || {
            for incoming in listener.incoming() {
                if stop.load(Ordering::Acquire) {
                    return;
                }
                let Ok(client) = incoming else { continue };
                if refuse.load(Ordering::Acquire) {
                    // Dropped at once: the peer's connection ends before
                    // a byte reaches the server.
                    continue;
                }
                let Ok(server) = TcpStream::connect(to) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let clones = [client.try_clone(), server.try_clone()];
                if let [Ok(client_end), Ok(server_end)] = clones {
                    let mut open = accepted.lock().unwrap_or_else(|p| p.into_inner());
                    open.push(client_end);
                    open.push(server_end);
                }
                if let (Ok(c), Ok(s)) = (client.try_clone(), server.try_clone()) {
                    std::thread::spawn(move || pipe(c, s));
                    std::thread::spawn(move || pipe(server, client));
                }
            }
        });
        Ok(Self {
            address,
            open,
            stopped,
            down,
        })
    }

    /// While down, every connection carried is cut and each new one is
    /// closed as soon as it is accepted: a network that stays down for a
    /// while, so that peers retry without getting through.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::Release);
        if down {
            self.cut();
        }
    }

    /// Breaks every connection carried so far, both ways; returns how many.
    pub fn cut(&self) -> usize {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        for stream in open.iter() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        let cut = open.len() / 2;
        open.clear();
        cut
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::Release);
        self.cut();
        // Wake the accept loop so it sees the stop.
        let _ = TcpStream::connect(self.address);
    }
}

/// Copies `from` into `to` until either ends.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let mut buffer = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buffer[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
