//! Failures in a row of one backend, for pools that eject failing servers (twemproxy's
//! `auto_eject_hosts`).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// Counts a server's consecutive failures; any reply resets the count. Reaching the limit wakes the
/// pool's ejector, which decides; the data path only counts.
#[derive(Debug)]
pub struct Health {
    failures: AtomicU32,
    limit: u32,
    on_limit: Arc<Notify>,
}

impl Health {
    pub fn new(limit: u32, on_limit: Arc<Notify>) -> Health {
        Health {
            failures: AtomicU32::new(0),
            limit: limit.max(1),
            on_limit,
        }
    }

    /// A connection could not be made or was lost, or a request went unanswered for `timeout` after
    /// it was written.
    pub fn failed(&self) {
        if self.failures.fetch_add(1, Ordering::Relaxed) + 1 >= self.limit {
            self.on_limit.notify_one();
        }
    }

    /// A reply arrived: the server works.
    pub fn answered(&self) {
        // A load first: the common case (no failures) writes nothing to a shared cache line.
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// Whether the server has failed `limit` times in a row.
    pub fn failing(&self) -> bool {
        self.failures.load(Ordering::Relaxed) >= self.limit
    }

    /// Starts counting afresh (the server was ejected, or came back).
    pub fn reset(&self) {
        self.failures.store(0, Ordering::Relaxed);
    }
}
