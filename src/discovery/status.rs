//! The state of a discovery source, readable by readiness checks and metrics, and the one place that
//! logs its changes: a source that keeps failing the same way logs once, not once per retry.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::SystemTime;

/// Where a source stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceState {
    /// No endpoint set learnt yet.
    Starting,
    /// Following changes.
    Synced,
    /// Cannot reach or read its source (`reason` says how); the last known set stays in use.
    Failing { reason: String },
}

/// What a readiness check or a metric reads.
#[derive(Debug, Clone)]
pub struct StatusSnapshot {
    pub pool: String,
    /// "kubernetes service NAME", "servers".
    pub source: String,
    pub state: SourceState,
    /// Whether a complete endpoint set has ever been learnt (the pool can serve).
    pub has_endpoints: bool,
    /// Backends in the set in use.
    pub endpoints: usize,
    /// Endpoint sets handed to the pool so far.
    pub updates: u64,
    /// Failures seen (each retry counts).
    pub errors: u64,
    /// The last failure's message.
    pub last_error: Option<String>,
    pub last_change: Option<SystemTime>,
}

/// Shared by the source task (writer) and whoever reports on the pool (readers).
#[derive(Debug)]
pub struct Status {
    inner: Mutex<StatusSnapshot>,
    /// The pool's `slotline_discovery_updates_total`, once the pool has metrics.
    updates_metric: OnceLock<prometheus::IntCounter>,
}

impl Status {
    pub(super) fn new(pool: &str, source: String) -> Arc<Status> {
        Arc::new(Status {
            inner: Mutex::new(StatusSnapshot {
                pool: pool.to_string(),
                source,
                state: SourceState::Starting,
                has_endpoints: false,
                endpoints: 0,
                updates: 0,
                errors: 0,
                last_error: None,
                last_change: None,
            }),
            updates_metric: OnceLock::new(),
        })
    }

    /// Counts every endpoint set handed to the pool in `counter` too, the ones before this call
    /// included.
    pub fn count_updates_in(&self, counter: prometheus::IntCounter) {
        let s = self.lock();
        counter.inc_by(s.updates.saturating_sub(counter.get()));
        let _ = self.updates_metric.set(counter);
    }

    pub fn snapshot(&self) -> StatusSnapshot {
        self.lock().clone()
    }

    /// Whether the pool has backends to route to (a source that is failing but has a last known set
    /// still counts: slotline keeps serving with it).
    pub fn has_endpoints(&self) -> bool {
        self.lock().has_endpoints
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StatusSnapshot> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A complete set of `count` endpoints was handed to the pool.
    pub(super) fn synced(&self, count: usize) {
        let mut s = self.lock();
        s.has_endpoints = true;
        s.endpoints = count;
        s.updates += 1;
        if let Some(counter) = self.updates_metric.get() {
            counter.inc();
        }
        s.last_change = Some(SystemTime::now());
        recovered(&mut s);
    }

    /// The source answered (a watch event, a resolution); nothing may have changed.
    pub(super) fn ok(&self) {
        let mut s = self.lock();
        recovered(&mut s);
    }

    /// The source failed; `reason` is a short class ("unreachable", "forbidden", ...) that decides
    /// whether this is news worth a warning, `detail` the error itself.
    pub(super) fn failed(&self, reason: &str, detail: &str) {
        let mut s = self.lock();
        s.errors += 1;
        s.last_error = Some(detail.to_string());
        let news = !matches!(&s.state, SourceState::Failing { reason: r } if r == reason);
        // One line: the reason already carries the API's message; other errors add theirs.
        let error = (!reason.contains(detail)).then_some(detail);
        if news {
            if s.has_endpoints {
                tracing::warn!(pool = %s.pool, source = %s.source, reason, error, endpoints = s.endpoints,
                    "discovery source failing; keeping the last known backends and retrying with backoff");
            } else {
                tracing::warn!(pool = %s.pool, source = %s.source, reason, error,
                    "discovery source failing and no backends known yet; retrying with backoff");
            }
            s.state = SourceState::Failing {
                reason: reason.to_string(),
            };
        } else {
            tracing::debug!(pool = %s.pool, source = %s.source, reason, error = %detail, "discovery source still failing");
        }
    }
}

/// The source answered again: a failing state ends (logged once), and a first set makes it synced.
fn recovered(s: &mut StatusSnapshot) {
    if let SourceState::Failing { .. } = &s.state {
        tracing::info!(pool = %s.pool, source = %s.source, endpoints = s.endpoints, "discovery source reachable again");
        s.state = SourceState::Starting;
    }
    if s.state == SourceState::Starting && s.has_endpoints {
        s.state = SourceState::Synced;
    }
}
