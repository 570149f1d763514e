//! At most one event per period, for log lines that a client (or a script it runs) can provoke as
//! often as it likes: the first is logged, the rest wait for the next period.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub struct Throttle {
    period_ms: u64,
    /// Milliseconds since the process's first throttle check, plus one, at the last event let
    /// through; 0 before any.
    last: AtomicU64,
}

impl Throttle {
    pub const fn new(period: Duration) -> Throttle {
        Throttle {
            period_ms: period.as_millis() as u64,
            last: AtomicU64::new(0),
        }
    }

    /// True for the first call of each period (one caller wins when several race).
    pub fn ready(&self) -> bool {
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        let now = EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1;
        let last = self.last.load(Ordering::Relaxed);
        (last == 0 || now >= last + self.period_ms)
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lets_one_event_through_per_period() {
        let t = Throttle::new(Duration::from_millis(50));
        assert!(t.ready());
        assert!(!t.ready());
        std::thread::sleep(Duration::from_millis(60));
        assert!(t.ready());
        assert!(!t.ready());
    }
}
