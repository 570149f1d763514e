//! A planned Sentinel failover without lost writes.
//!
//! Sentinel promotes a replica (`REPLICAOF NO ONE`) and only then, after reconfiguring the other
//! replicas, announces `+switch-master`. Whatever the old master acknowledges in between is thrown
//! away when it later resyncs as a replica of the new one. So slotline acts on the earlier
//! announcement, `+selected-slave`, which the failover leader makes one timer tick (about 100 ms)
//! before it sends the promotion:
//! 1. it holds its clients' writes (the pool's own pause, as CLIENT PAUSE WRITE holds them: reads go
//!    on to the old master, which holds every acknowledged write; a client's commands after a held
//!    write wait behind it, so it still reads its writes);
//! 2. it watches the old master's replication offset and the chosen replica's: the replica must
//!    have processed everything the old master did before the promotion;
//! 3. as soon as the replica answers `ROLE` as master it becomes the pool's master, and the held
//!    writes go there.
//!
//! An aborted failover (`-failover-abort-*`) releases the writes to the old master; so does the
//! bound (the pool's `timeout`), with a warning, if no promotion comes.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use tokio::time::{sleep, Instant};

use super::replies::{self, Role};
use super::{ask, Primary, Via, ROLE};
use crate::backend::Node;
use crate::pause::Mode;

/// A session that found no pause a moment before it was set may still be handing a write to the
/// old master's queue: the offsets are read after this.
const GRACE: Duration = Duration::from_millis(2);
/// How often the offsets and the replica's role are read while writes are held.
const POLL: Duration = Duration::from_millis(5);
/// How long one `ROLE` may take.
const ROLE_WAIT: Duration = Duration::from_millis(200);

/// How a hold ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The replica was promoted holding every write the old master had processed.
    CaughtUp,
    /// The replica was promoted `behind` bytes of replication stream short of the old master: writes
    /// the old master acknowledged may be lost.
    Behind(i64),
    /// The failover was aborted: the old master stays.
    Aborted,
    /// No promotion within the bound: the writes went to the old master.
    TimedOut,
}

impl Ended {
    pub fn label(self) -> &'static str {
        match self {
            Ended::CaughtUp => "caught_up",
            Ended::Behind(_) => "behind",
            Ended::Aborted => "aborted",
            Ended::TimedOut => "timed_out",
        }
    }
}

/// The last hold: how long writes waited, and how it ended.
#[derive(Debug, Clone, Copy)]
pub struct Hold {
    pub held: Duration,
    pub ended: Ended,
}

/// Lifts the pool's hold however the handover ends (its task may be aborted).
struct Release<'a> {
    primary: &'a Primary,
    started: Instant,
    ended: Ended,
}

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.primary.hold.unpause();
        let hold = Hold {
            held: self.started.elapsed(),
            ended: self.ended,
        };
        self.primary.holds.fetch_add(1, Ordering::Relaxed);
        *self
            .primary
            .last_hold
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(hold);
        let pool = &self.primary.pool;
        let held_ms = hold.held.as_millis() as u64;
        match hold.ended {
            Ended::CaughtUp => {
                tracing::info!(pool = %pool, held_ms, "failover: writes released to the promoted replica")
            }
            Ended::Behind(bytes) => {
                tracing::error!(pool = %pool, held_ms, bytes, "failover: the replica was promoted before it had every write the old master acknowledged; those may be lost")
            }
            Ended::Aborted => {
                tracing::warn!(pool = %pool, held_ms, "failover aborted: writes released to the old master")
            }
            Ended::TimedOut => {
                tracing::warn!(pool = %pool, held_ms, "failover: no promotion within the pool's timeout; writes released to the old master")
            }
        }
    }
}

/// Holds the pool's writes while `replica` is promoted, for at most `bound`; see the module doc.
/// Aborting the task (a `-failover-abort-*`) releases the writes where they were going.
pub(super) async fn run(primary: Arc<Primary>, replica: Arc<str>, bound: Duration) {
    let started = Instant::now();
    primary.hold.pause(bound, Mode::Write);
    let mut release = Release {
        primary: &primary,
        started,
        ended: Ended::Aborted,
    };
    tracing::info!(pool = %primary.pool, replica = %replica, "failover announced: holding writes");
    sleep(GRACE).await;
    let old = primary.roles().master.clone();
    let new = primary.node(&replica);
    let deadline = started + bound;
    // The least the replica must have: the old master's offset read last before a look that still
    // found the replica a replica. An offset read after the promotion would count what the old
    // master took on since (the sentinels' hello messages are PUBLISHes), which no write of ours is.
    let mut needed: Option<i64> = None;
    release.ended = loop {
        if Instant::now() >= deadline {
            break Ended::TimedOut;
        }
        let before = match &old {
            Some(old) => match role(old).await {
                Some((Role::Master, offset)) => Some(offset),
                _ => None,
            },
            None => None,
        };
        match role(&new).await {
            Some((Role::Master, offset)) => {
                break match needed {
                    Some(needed) if offset < needed => Ended::Behind(needed - offset),
                    _ => Ended::CaughtUp,
                };
            }
            Some(_) => needed = before.or(needed),
            None => {}
        }
        sleep(POLL).await;
    };
    if matches!(release.ended, Ended::CaughtUp | Ended::Behind(_)) {
        let replicas: Vec<Arc<str>> = primary
            .roles()
            .replicas
            .iter()
            .map(|n| n.addr().clone())
            .collect();
        let left = old.as_ref().map(|n| n.addr().clone());
        *primary.left.lock().unwrap_or_else(PoisonError::into_inner) = left;
        primary.install(None, Some((&replica, Via::SentinelFailover)), &replicas);
    }
    // `release` drops here: the held writes go to the master just installed (or the old one).
}

/// What `ROLE` says `node` is, and its replication offset; None when it does not answer in time.
async fn role(node: &Node) -> Option<(Role, i64)> {
    let reply = ask(node, ROLE, ROLE_WAIT).await?;
    replies::role_offset(&reply).ok()
}
