//! What sessions count between two flushes: plain integers and local histograms, so that recording
//! a request touches no shared cache line. A worker thread keeps one tally per pool, lent to a session
//! for one step at a time ([`Tally`]) and added to the pool's metrics at the end of the step, where the
//! session already flushes its other counters: an idle client carries none.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::latency::LocalLatency;
use super::{ErrorKind, Family, PoolMetrics, RedirectKind};

/// A worker's tally for one pool, with the pool's metrics it adds to.
type Kept = (Arc<PoolMetrics>, Box<SessionTally>);

thread_local! {
    /// The worker's tallies, one per pool, while no session has one lent.
    static TALLIES: RefCell<Vec<Kept>> = const { RefCell::new(Vec::new()) };
}

/// A session's access to its worker's tally for its pool: borrowed on first use within a step and
/// given back, flushed, by [`Tally::flush`] (or on drop).
///
/// Lending and giving back move the tally and the worker's reference to the pool between the
/// worker's list and the session: a reference made and dropped per step (a `Weak`) was two atomic
/// operations on every request's path at -P 1.
pub struct Tally {
    pool: Arc<PoolMetrics>,
    lent: Option<Kept>,
}

impl Tally {
    pub fn new(pool: &Arc<PoolMetrics>) -> Tally {
        Tally {
            pool: pool.clone(),
            lent: None,
        }
    }

    /// The tally to count into now.
    #[inline]
    pub fn get(&mut self) -> &mut SessionTally {
        let pool = &self.pool;
        // Asked several times per request: the borrowing, once per step, stays out of line.
        &mut self.lent.get_or_insert_with(|| Tally::lend(pool)).1
    }

    #[cold]
    #[inline(never)]
    fn lend(pool: &Arc<PoolMetrics>) -> Kept {
        TALLIES
            .with(|t| {
                let mut tallies = t.borrow_mut();
                let at = tallies.iter().position(|(p, _)| Arc::ptr_eq(p, pool))?;
                Some(tallies.swap_remove(at))
            })
            .unwrap_or_else(|| (pool.clone(), Box::new(SessionTally::default())))
    }

    /// Adds what was counted to the pool's metrics and gives the tally back to the worker.
    pub fn flush(&mut self) {
        let Some((pool, mut tally)) = self.lent.take() else {
            return;
        };
        tally.flush(&pool);
        TALLIES.with(|t| {
            let mut tallies = t.borrow_mut();
            // Pools a reload removed leave their tallies behind once: held by nothing but this
            // list, their metrics are gone from every scrape.
            tallies.retain(|(p, _)| Arc::strong_count(p) > 1);
            tallies.push((pool, tally));
        });
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Unflushed counts. (Requests themselves the session already counts per batch.)
#[derive(Default)]
pub struct SessionTally {
    commands: [u64; Family::ALL.len()],
    errors: [u64; ErrorKind::ALL.len()],
    redirects: [u64; RedirectKind::ALL.len()],
    received: u64,
    sent: u64,
    latency: LocalLatency,
    backend_latency: LocalLatency,
    /// Per command, for INFO commandstats.
    per_command: crate::cmdstats::Local,
    /// Families counted since the last flush, one bit each: a flush after a step of GETs adds one
    /// counter rather than looking at every family.
    families: u64,
    /// An error or redirect was counted since the last flush (rare: their counts are looked at
    /// only then).
    rare: bool,
    /// Something to flush.
    dirty: bool,
    /// The last latency worked out, with its two instants (see [`SessionTally::elapsed`]).
    last_elapsed: Option<(Instant, Instant, Duration)>,
}

impl SessionTally {
    /// `now - since`, for the latency of a request answered in a step: the requests of one read
    /// share their clock reading, as the replies of one step share theirs, so a pipeline's
    /// latencies are one subtraction, not two per request (1% of a pipelined request's
    /// instructions).
    #[inline]
    pub fn elapsed(&mut self, since: Instant, now: Instant) -> Duration {
        match self.last_elapsed {
            Some((s, n, took)) if s == since && n == now => took,
            _ => {
                let took = now.saturating_duration_since(since);
                self.last_elapsed = Some((since, now, took));
                took
            }
        }
    }

    /// A request for a known command was read (`number`: its [`crate::command::Spec::number`]).
    #[inline]
    pub fn command(&mut self, family: Family, number: u16) {
        self.commands[family as usize] += 1;
        self.families |= 1 << (family as u32 % 64);
        self.per_command.call(number);
        self.dirty = true;
    }

    /// slotline refused the command just read.
    #[inline]
    pub fn rejected(&mut self, number: u16) {
        self.per_command.rejected(number);
        self.dirty = true;
    }

    /// A command's reply (an error or not) was queued for the client, `took` after it was read.
    #[inline]
    pub fn command_answered(&mut self, number: u16, took: Option<Duration>, error: bool) {
        self.per_command.answered(number, took, error);
        self.dirty = true;
    }

    #[inline]
    pub fn error(&mut self, kind: ErrorKind) {
        self.errors[kind as usize] += 1;
        self.rare = true;
        self.dirty = true;
    }

    #[inline]
    pub fn redirect(&mut self, kind: RedirectKind) {
        self.redirects[kind as usize] += 1;
        self.rare = true;
        self.dirty = true;
    }

    #[inline]
    pub fn received(&mut self, bytes: usize) {
        self.received += bytes as u64;
        self.dirty = true;
    }

    #[inline]
    pub fn sent(&mut self, bytes: usize) {
        self.sent += bytes as u64;
        self.dirty = true;
    }

    /// A request's reply was queued for the client, `took` after the request was read.
    #[inline]
    pub fn answered(&mut self, took: Duration) {
        self.latency.observe(took);
        self.dirty = true;
    }

    /// A request answered after `took` (None: not timed, a blocking command).
    #[inline]
    pub fn answered_in(&mut self, took: Option<Duration>) {
        if let Some(took) = took {
            self.answered(took);
        }
    }

    /// A backend's reply, to a request sent at `sent`, was taken in at `now`.
    #[inline]
    pub fn backend_answered(&mut self, sent: Instant, now: Instant) {
        let took = self.elapsed(sent, now);
        self.backend_latency.observe(took);
        self.dirty = true;
    }

    /// Adds everything counted since the last flush to the pool's metrics.
    pub fn flush(&mut self, pool: &PoolMetrics) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        self.latency.flush(&pool.request_duration);
        self.backend_latency.flush(&pool.backend_request_duration);
        let add = |counts: &mut [u64], counters: &[prometheus::IntCounter]| {
            for (n, counter) in counts.iter_mut().zip(counters) {
                if *n > 0 {
                    counter.inc_by(std::mem::take(n));
                }
            }
        };
        while self.families != 0 {
            let family = self.families.trailing_zeros() as usize;
            self.families &= self.families - 1;
            if let (Some(n), Some(counter)) =
                (self.commands.get_mut(family), pool.commands.get(family))
            {
                counter.inc_by(std::mem::take(n));
            }
        }
        if std::mem::take(&mut self.rare) {
            add(&mut self.errors, &pool.errors);
            add(&mut self.redirects, &pool.redirects);
        }
        self.per_command.flush(&pool.commandstats);
        // A step that only read, or only wrote, adds nothing to the other count (an atomic
        // operation saved).
        if self.received > 0 {
            pool.client_received_bytes
                .inc_by(std::mem::take(&mut self.received));
        }
        if self.sent > 0 {
            pool.client_sent_bytes
                .inc_by(std::mem::take(&mut self.sent));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn nothing_reaches_the_pool_until_a_flush() {
        let metrics = Metrics::new().unwrap();
        let pool = metrics.pool("p");
        let mut tally = SessionTally::default();
        tally.command(Family::Hash, crate::cmdstats::NONE);
        tally.error(ErrorKind::Timeout);
        tally.received(10);
        tally.answered(Duration::from_millis(3));
        assert_eq!(pool.commands[Family::Hash as usize].get(), 0);
        tally.flush(&pool);
        tally.flush(&pool);
        assert_eq!(pool.commands[Family::Hash as usize].get(), 1);
        assert_eq!(pool.errors[ErrorKind::Timeout as usize].get(), 1);
        assert_eq!(pool.client_received_bytes.get(), 10);
        assert_eq!(pool.request_duration.count(), 1);
    }

    #[test]
    fn a_latency_kept_for_the_next_request_is_the_one_of_the_same_two_instants() {
        let mut tally = SessionTally::default();
        let sent = Instant::now();
        let (now, later) = (
            sent + Duration::from_millis(3),
            sent + Duration::from_millis(5),
        );
        assert_eq!(tally.elapsed(sent, now), Duration::from_millis(3));
        assert_eq!(tally.elapsed(sent, now), Duration::from_millis(3));
        assert_eq!(tally.elapsed(sent, later), Duration::from_millis(5));
        assert_eq!(tally.elapsed(now, later), Duration::from_millis(2));
        assert_eq!(tally.elapsed(later, now), Duration::ZERO);
    }
}
