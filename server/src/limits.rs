//! Connection limits, checked before a websocket upgrade and when the
//! device socket accepts.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Counts open websocket connections, in all and per address.
#[derive(Debug)]
pub(crate) struct Limiter {
    open: AtomicUsize,
    max: usize,
    per_ip: Option<PerIp>,
}

#[derive(Debug)]
struct PerIp {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The server holds `--max-connections` already (HTTP 503).
    Full,
    /// This address holds `--max-connections-per-ip` already (HTTP 429).
    PerIp,
}

/// One open connection; dropping it frees its place.
#[derive(Debug)]
pub(crate) struct Permit {
    limiter: Arc<Limiter>,
    /// The address counted against `--max-connections-per-ip`, if any.
    ip: Option<IpAddr>,
}

impl Limiter {
    pub fn new(max: usize, max_per_ip: Option<usize>) -> Self {
        Self {
            open: AtomicUsize::new(0),
            max,
            per_ip: max_per_ip.map(|max| PerIp {
                max,
                open: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Refusal> {
        let reserved = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.max).then_some(open + 1)
            });
        if reserved.is_err() {
            return Err(Refusal::Full);
        }
        if let Some(per_ip) = &self.per_ip {
            let mut open = per_ip.open.lock().unwrap_or_else(|p| p.into_inner());
            let count = open.entry(ip).or_insert(0);
            if *count >= per_ip.max {
                if *count == 0 {
                    open.remove(&ip);
                }
                drop(open);
                self.open.fetch_sub(1, Ordering::AcqRel);
                return Err(Refusal::PerIp);
            }
            *count += 1;
        }
        Ok(Permit {
            limiter: self.clone(),
            ip: Some(ip),
        })
    }

    /// A place for a connection on a local (unix) socket, or from a trusted
    /// proxy (which carries many clients): it counts against the total;
    /// the per-address limit does not apply.
    pub fn try_acquire_local(self: &Arc<Self>) -> Result<Permit, Refusal> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.max).then_some(open + 1)
            })
            .map_err(|_| Refusal::Full)?;
        Ok(Permit {
            limiter: self.clone(),
            ip: None,
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let limiter = &self.limiter;
        if let (Some(per_ip), Some(ip)) = (&limiter.per_ip, self.ip) {
            let mut open = per_ip.open.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(count) = open.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    open.remove(&ip);
                }
            }
        }
        limiter.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_exact_and_permits_free_their_place() {
        let limiter = Arc::new(Limiter::new(3, Some(2)));
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let a1 = limiter.try_acquire(a).unwrap();
        let _a2 = limiter.try_acquire(a).unwrap();
        assert_eq!(limiter.try_acquire(a).unwrap_err(), Refusal::PerIp);
        let _b1 = limiter.try_acquire(b).unwrap();
        assert_eq!(limiter.try_acquire(b).unwrap_err(), Refusal::Full);
        drop(a1);
        let _b2 = limiter.try_acquire(b).unwrap();
        assert_eq!(limiter.try_acquire(b).unwrap_err(), Refusal::Full);
    }

    #[test]
    fn local_connections_count_in_all_but_not_per_address() {
        let limiter = Arc::new(Limiter::new(3, Some(1)));
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let first = limiter.try_acquire_local().unwrap();
        let _second = limiter.try_acquire_local().unwrap();
        // The per-address place of 127.0.0.1 is still free.
        let _a1 = limiter.try_acquire(a).unwrap();
        assert_eq!(limiter.try_acquire_local().unwrap_err(), Refusal::Full);
        drop(first);
        let _third = limiter.try_acquire_local().unwrap();
        assert_eq!(limiter.try_acquire(a).unwrap_err(), Refusal::Full);
    }
}
