//! Failed logins, per client address: each failure in a row from one address waits longer before
//! its reply (doubling, capped), so guessing passwords is slow, while other clients are not slowed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The first failure's wait; each one after it in a row waits twice as long, up to [`MAX_DELAY`].
const FIRST_DELAY: Duration = Duration::from_millis(2);
pub const MAX_DELAY: Duration = Duration::from_millis(500);
/// An address that has not failed for this long starts again from the first wait.
const FORGET_AFTER: Duration = Duration::from_secs(60);
/// Addresses remembered at most; past it the ones not seen for longest are forgotten first, and an
/// address that still finds no room waits the longest.
const MAX_ADDRESSES: usize = 10_000;

#[derive(Default)]
pub struct Failures {
    by_address: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    total: AtomicU64,
}

impl std::fmt::Debug for Failures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Failures")
            .field("total", &self.total)
            .finish()
    }
}

impl Failures {
    /// Counts a failed login from `addr` (`ip:port`, or a socket path) and returns how long its
    /// reply waits.
    pub fn failed(&self, addr: &str, now: Instant) -> Duration {
        self.total.fetch_add(1, Ordering::Relaxed);
        let Some(ip) = ip_of(addr) else {
            // A Unix socket's clients are local: one address for all of them.
            return self.failed_ip(IpAddr::from([0, 0, 0, 0]), now);
        };
        self.failed_ip(ip, now)
    }

    fn failed_ip(&self, ip: IpAddr, now: Instant) -> Duration {
        let mut map = self
            .by_address
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if map.len() >= MAX_ADDRESSES && !map.contains_key(&ip) {
            map.retain(|_, (_, last)| now.saturating_duration_since(*last) < FORGET_AFTER);
            if map.len() >= MAX_ADDRESSES {
                return MAX_DELAY;
            }
        }
        let entry = map.entry(ip).or_insert((0, now));
        if now.saturating_duration_since(entry.1) >= FORGET_AFTER {
            entry.0 = 0;
        }
        entry.0 = entry.0.saturating_add(1);
        entry.1 = now;
        delay(entry.0)
    }

    /// A login from `addr` succeeded: its next failure starts from the first wait.
    pub fn succeeded(&self, addr: &str) {
        if let Some(ip) = ip_of(addr) {
            let mut map = self
                .by_address
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            map.remove(&ip);
        }
    }

    /// Failed logins since start.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

fn delay(failures_in_a_row: u32) -> Duration {
    let doublings = failures_in_a_row.saturating_sub(1).min(16);
    (FIRST_DELAY * (1u32 << doublings)).min(MAX_DELAY)
}

fn ip_of(addr: &str) -> Option<IpAddr> {
    addr.parse::<std::net::SocketAddr>().ok().map(|a| a.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_per_address_and_reset_on_success() {
        let f = Failures::default();
        let now = Instant::now();
        let waits: Vec<_> = (0..10).map(|_| f.failed("10.0.0.1:5000", now)).collect();
        assert_eq!(waits[0], FIRST_DELAY);
        assert_eq!(waits[1], FIRST_DELAY * 2);
        assert_eq!(waits[9], MAX_DELAY);
        assert!(waits.windows(2).all(|w| w[0] <= w[1]));
        // Another address, or another port of no other address, starts afresh.
        assert_eq!(f.failed("10.0.0.2:5000", now), FIRST_DELAY);
        assert_eq!(f.failed("10.0.0.1:6000", now), MAX_DELAY);
        f.succeeded("10.0.0.1:7000");
        assert_eq!(f.failed("10.0.0.1:5000", now), FIRST_DELAY);
        assert_eq!(
            f.failed("10.0.0.2:5000", now + FORGET_AFTER),
            FIRST_DELAY,
            "forgotten after a quiet minute"
        );
        assert_eq!(f.total(), 14);
    }
}
