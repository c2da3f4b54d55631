//! The per-connection message rate limit (PROTOCOL.md rows D17, C15).
//!
//! A generic cell rate algorithm: each connection keeps one instant, the
//! time at which its message count would be back to zero if it sent
//! nothing more ("theoretical arrival time"). A message is allowed when
//! that time, moved on by one interval, stays within `burst` intervals of
//! now. So a connection may send `burst` messages at once, then one every
//! interval, and the state is 16 bytes, with no timer.

use std::time::{Duration, Instant};

/// The limit as configured: `per_second` messages per second on average,
/// `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

/// The limit in the form the check uses.
#[derive(Debug, Clone, Copy)]
pub struct Gcra {
    /// Time one message uses up.
    interval: Duration,
    /// How far ahead of now a connection may run: `burst` intervals.
    tolerance: Duration,
}

impl Gcra {
    /// `None` when the limit is off (`per_second` 0).
    pub fn new(limit: RateLimit) -> Option<Self> {
        if limit.per_second == 0 {
            return None;
        }
        let interval = Duration::from_secs(1) / limit.per_second;
        let tolerance = interval
            .checked_mul(limit.burst.max(1))
            .unwrap_or(Duration::MAX);
        Some(Self {
            interval,
            tolerance,
        })
    }

    /// Whether one more message arriving at `now` is within the limit;
    /// counts it if so. `due` is the connection's state; start it at the
    /// time the connection opened.
    pub fn allow(&self, due: &mut Instant, now: Instant) -> bool {
        let next = (*due).max(now) + self.interval;
        if next.duration_since(now) > self.tolerance {
            return false;
        }
        *due = next;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gcra(per_second: u32, burst: u32) -> Gcra {
        Gcra::new(RateLimit { per_second, burst }).unwrap()
    }

    #[test]
    fn zero_turns_it_off() {
        assert!(
            Gcra::new(RateLimit {
                per_second: 0,
                burst: 10
            })
            .is_none()
        );
    }

    #[test]
    fn exactly_burst_messages_at_once() {
        let rate = gcra(1000, 20_000);
        let start = Instant::now();
        let mut due = start;
        for n in 0..20_000 {
            assert!(rate.allow(&mut due, start), "message {n}");
        }
        assert!(!rate.allow(&mut due, start), "message 20,001");
    }

    #[test]
    fn then_one_per_interval() {
        let rate = gcra(10, 5);
        let start = Instant::now();
        let mut due = start;
        for _ in 0..5 {
            assert!(rate.allow(&mut due, start));
        }
        // 99 ms later nothing has been earned back; at 100 ms one message.
        assert!(!rate.allow(&mut due, start + Duration::from_millis(99)));
        assert!(rate.allow(&mut due, start + Duration::from_millis(100)));
        assert!(!rate.allow(&mut due, start + Duration::from_millis(100)));
        // Ten seconds at exactly the rate: every message allowed.
        let mut now = start + Duration::from_millis(100);
        for _ in 0..100 {
            now += Duration::from_millis(100);
            assert!(rate.allow(&mut due, now));
        }
    }

    #[test]
    fn a_quiet_connection_earns_back_at_most_the_burst() {
        let rate = gcra(10, 5);
        let start = Instant::now();
        let mut due = start;
        let later = start + Duration::from_secs(3600);
        for _ in 0..5 {
            assert!(rate.allow(&mut due, later));
        }
        assert!(!rate.allow(&mut due, later));
    }
}
