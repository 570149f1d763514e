//! Counters the data path keeps as plain atomics, read by the stats endpoints at scrape time.
//!
//! The fields are twemproxy's, so its JSON stats ([`twemproxy`]) are a rendering of these and nothing
//! more; increments are relaxed and, where a loop handles many requests, added once per batch.

pub mod twemproxy;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

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
    pub requests: AtomicU64,
    pub request_bytes: AtomicU64,
    pub responses: AtomicU64,
    pub response_bytes: AtomicU64,
    /// Requests queued for the server, not yet written.
    pub in_queue: AtomicI64,
    pub in_queue_bytes: AtomicI64,
    /// Requests written, waiting for their replies.
    pub out_queue: AtomicI64,
    pub out_queue_bytes: AtomicI64,
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
