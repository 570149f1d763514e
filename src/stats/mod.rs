//! Counters the data path keeps as plain atomics, read by the stats endpoints at scrape time.
//!
//! The fields are twemproxy's, so its JSON stats ([`twemproxy`]) are a rendering of these and nothing
//! more; increments are relaxed and, where a loop handles many requests, added once per batch.

pub mod twemproxy;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

/// One backend server's counters (twemproxy's per-server stats).
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Connections the server closed.
    pub server_eof: AtomicU64,
    /// Connections that failed otherwise: refused, reset, malformed replies, refused AUTH/SELECT.
    pub server_err: AtomicU64,
    /// Requests unanswered `timeout` ms after they were written to the server.
    pub server_timedout: AtomicU64,
    /// Open connections.
    pub server_connections: AtomicI64,
    /// When the server was last ejected, in microseconds since the Unix epoch (0: never).
    pub server_ejected_at: AtomicU64,
    /// Times the server was ejected (not in twemproxy's JSON; exported as a Prometheus counter).
    pub ejections: AtomicU64,
    pub requests: AtomicU64,
    pub request_bytes: AtomicU64,
    pub responses: AtomicU64,
    pub response_bytes: AtomicU64,
    /// Requests queued for the server, not yet written, and their bytes.
    pub queued: Queued,
    /// Requests written, waiting for their replies.
    pub out_queue: AtomicI64,
    pub out_queue_bytes: AtomicI64,
}

/// What waits in the queues in front of one server's connections. Each queue counts its own, under
/// the lock a request takes to be queued anyway, and publishes the count with plain stores; the
/// server's is their sum, taken when it is read. (A counter shared by the queues cost every request
/// two atomic read-modify-writes.)
#[derive(Debug, Default)]
pub struct Queued(Mutex<Vec<Weak<QueueCount>>>);

/// One queue's count, published by whoever holds the queue's lock.
#[derive(Debug, Default)]
pub struct QueueCount {
    requests: AtomicI64,
    bytes: AtomicI64,
}

impl QueueCount {
    /// Called with the queue's lock held: one writer at a time, so a store is enough.
    pub fn set(&self, requests: usize, bytes: usize) {
        self.requests.store(requests as i64, Ordering::Relaxed);
        self.bytes.store(bytes as i64, Ordering::Relaxed);
    }
}

impl Queued {
    /// A count for a new queue of this server, summed in until it is dropped.
    pub fn register(&self) -> Arc<QueueCount> {
        let count = Arc::new(QueueCount::default());
        let mut queues = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        queues.retain(|q| q.strong_count() > 0);
        queues.push(Arc::downgrade(&count));
        count
    }

    /// Requests queued for the server.
    pub fn requests(&self) -> u64 {
        self.sum(|q| &q.requests)
    }

    /// Their bytes.
    pub fn bytes(&self) -> u64 {
        self.sum(|q| &q.bytes)
    }

    fn sum(&self, field: impl Fn(&QueueCount) -> &AtomicI64) -> u64 {
        let queues = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let total: i64 = queues
            .iter()
            .filter_map(Weak::upgrade)
            .map(|q| field(&q).load(Ordering::Relaxed))
            .sum();
        total.max(0) as u64
    }
}

/// One pool's counters (twemproxy's per-pool stats).
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Clients that closed their connection.
    pub client_eof: AtomicU64,
    /// Client connections that ended in an error (protocol errors, resets).
    pub client_err: AtomicU64,
    /// Open client connections.
    pub client_connections: AtomicI64,
    /// Servers taken out of the ring.
    pub server_ejects: AtomicU64,
    /// Requests that got an error because no backend could answer them (unreachable, timed out).
    pub forward_error: AtomicU64,
    /// Sub-requests of multi-key commands split across backends.
    pub fragments: AtomicU64,
}

/// `counter += n`, relaxed: stats need no ordering with anything else.
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// `gauge += n` (n may be negative), relaxed.
pub fn shift(gauge: &AtomicI64, n: i64) {
    gauge.fetch_add(n, Ordering::Relaxed);
}
