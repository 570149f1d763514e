//! Where a migration is, for every slotline serving the pool at once: verifying, starting or
//! moving. docs/migration.md ("Verifying, then starting") has the argument; in short:
//!
//! - **Verifying** (a pool with `start: manual`, until it is started): the pool serves from the old
//!   placement, as the twemproxy it replaces did, and nothing moves. A slotline may do that only
//!   while it knows no other one is moving: every [`RENEW`] it reads the start mark ([`STARTED`])
//!   on every old server, and only a round in which every server answered "no mark" lets it serve
//!   for [`LEASE`] more, counted from when it asked. Without a fresh lease its commands are held.
//! - **Starting**: one slotline is told to start (`slotline migrate start`, or `start: auto`). It
//!   writes the mark on every old server. Every slotline that sees a mark (the starter at once, the
//!   others at their next reading) stops serving from the old placement, holds the pool's commands
//!   for [`SWITCH`], closes the clients whose state of their own lives on old servers, and then
//!   moves. No MIGRATE can run before every lease given out before the mark has ended, plus
//!   [`DELIVERY`] for a command sent just before to reach its server.
//! - **Moving**: the rules of the module above.
//!
//! The phase lives in the backends (the mark), not in a config file: a restarted slotline, or one
//! with `start: manual` joining a pool that has started, reads it and moves too.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, Weak};
use std::time::Duration;

use redis_protocol::resp2::types::OwnedFrame;
use tokio::time::Instant;

use super::mover::{ask, command, identity};
use super::Migration;
use crate::pause::{Mode, Pause};

/// The key every old server holds once the migration has started; its value names the migration,
/// as the emptied mark's does.
pub const STARTED: &str = "slotline:migration:started";

pub(super) const VERIFYING: u8 = 0;
pub(super) const STARTING: u8 = 1;
pub(super) const MOVING: u8 = 2;

/// How long a reading of "no start mark anywhere" lets a slotline serve from the old placement.
const LEASE: Duration = Duration::from_secs(1);

/// How often a verifying slotline reads the marks (several times a lease, so one slow reading does
/// not hold its clients).
const RENEW: Duration = Duration::from_millis(250);

/// How long a command sent to an old server is taken to need to reach it at most.
const DELIVERY: Duration = Duration::from_secs(1);

/// How long a slotline that learns of the start holds the pool's commands before its first move.
const SWITCH: Duration =
    Duration::from_millis(LEASE.as_millis() as u64 + DELIVERY.as_millis() as u64);

/// How long one reading or writing of a mark may take.
const ASK: Duration = Duration::from_millis(500);

pub(super) fn spawn(migration: &Arc<Migration>) {
    tokio::spawn(run(Arc::downgrade(migration)));
}

async fn run(weak: Weak<Migration>) {
    loop {
        let Some(m) = weak.upgrade() else {
            return;
        };
        match m.phase.load(Ordering::Acquire) {
            VERIFYING if m.start_requested.swap(false, Ordering::AcqRel) => m.mark().await,
            VERIFYING => m.read_marks().await,
            STARTING => {
                let at = m.at(m.moves_at_ms.load(Ordering::Acquire));
                drop(m);
                tokio::time::sleep_until(at).await;
                let Some(m) = weak.upgrade() else {
                    return;
                };
                m.phase.store(MOVING, Ordering::Release);
                m.hold.unpause();
                tracing::info!(pool = %m.pool, "migration: moving");
                return;
            }
            _ => return,
        }
        drop(m);
        tokio::time::sleep(RENEW).await;
    }
}

impl Migration {
    fn ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64
    }

    pub(super) fn at(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    /// While verifying: the pool serves from the old placement and nothing moves.
    #[inline]
    pub fn verifying(&self) -> bool {
        self.phase.load(Ordering::Acquire) == VERIFYING
    }

    /// Whether this slotline may serve from the old placement at `now`.
    pub(super) fn leased(&self, now: Instant) -> bool {
        self.verifying() && now < self.at(self.lease_ms.load(Ordering::Acquire))
    }

    /// Keys move (the mover's passes, its stray-key looks).
    pub(super) fn moving(&self) -> bool {
        self.phase.load(Ordering::Acquire) == MOVING
    }

    /// The old placement's table, which a verifying pool routes by.
    pub fn old_table(&self) -> arc_swap::Guard<Arc<crate::shards::Table>> {
        self.old.table()
    }

    /// The hold a command at `now` waits behind, if any: while starting, and while verifying
    /// without a fresh lease.
    #[inline]
    pub fn holding(&self, now: Instant) -> Option<&Pause> {
        match self.phase.load(Ordering::Acquire) {
            MOVING => None,
            STARTING => {
                (now < self.at(self.moves_at_ms.load(Ordering::Acquire))).then_some(&self.hold)
            }
            _ if self.leased(now) => None,
            _ => {
                // Set once per lapse (each change wakes every held session).
                if self.hold.until().is_none_or(|until| until <= now) {
                    self.hold.pause(2 * RENEW, Mode::All);
                }
                Some(&self.hold)
            }
        }
    }

    /// Asks this slotline to start the migration (`slotline migrate start`): done by its phase
    /// task within [`RENEW`], for every slotline serving the pool.
    pub fn request_start(&self) {
        if self.verifying() {
            self.start_requested.store(true, Ordering::Release);
        }
    }

    /// Whether this slotline waits to be started (`start: manual`).
    pub fn manual(&self) -> bool {
        self.manual
    }

    /// Notes a client whose connections of its own (a transaction, a blocking command,
    /// subscriptions) went to old servers while verifying: it is closed when moving starts.
    pub fn bind(&self, client: u64) {
        if self.verifying() {
            let mut bound = self.bound.lock().unwrap_or_else(PoisonError::into_inner);
            if bound.insert(client) {
                self.bound_count.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Forgets a client that left.
    pub fn unbind(&self, client: u64) {
        if self.bound_count.load(Ordering::Relaxed) > 0 {
            let mut bound = self.bound.lock().unwrap_or_else(PoisonError::into_inner);
            if bound.remove(&client) {
                self.bound_count.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Whether `client`'s own connections lead to old servers that no longer serve: nothing more
    /// may run on them (it is being closed).
    pub fn stale(&self, client: u64) -> bool {
        self.bound_count.load(Ordering::Relaxed) > 0
            && !self.verifying()
            && self
                .bound
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(&client)
    }

    /// One reading of the start marks: a mark anywhere starts this slotline; "no mark" from every
    /// server renews its lease.
    async fn read_marks(&self) {
        let asked = Instant::now();
        let id = identity(self);
        let servers: Vec<_> = self.old.table().in_service().cloned().collect();
        let mut all_unmarked = !servers.is_empty();
        for node in &servers {
            let get = command(&[b"GET", STARTED.as_bytes()]);
            match tokio::time::timeout(ASK, ask(node, get)).await {
                Ok(Ok(OwnedFrame::BulkString(v))) if v == id.as_bytes() => {
                    return self.learn_started("another slotline started it");
                }
                // Another migration's mark (an old one, with other servers) is not this one's.
                Ok(Ok(OwnedFrame::Null | OwnedFrame::BulkString(_))) => {}
                _ => all_unmarked = false,
            }
        }
        if all_unmarked {
            self.lease_ms
                .store(self.ms(asked + LEASE), Ordering::Release);
            if self.hold.until().is_some() {
                self.hold.unpause();
            }
        }
    }

    /// Writes the start mark on every old server it can; started once one has it.
    async fn mark(&self) {
        let id = identity(self);
        let mut marked = 0;
        for node in self.old.table().in_service() {
            let set = command(&[b"SET", STARTED.as_bytes(), id.as_bytes()]);
            match tokio::time::timeout(ASK, ask(node, set)).await {
                Ok(Ok(_)) => marked += 1,
                Ok(Err(e)) => self.failed(&format!("start mark on {}: {e}", node.addr())),
                Err(_) => self.failed(&format!("start mark on {}: timed out", node.addr())),
            }
        }
        // One mark is enough for every slotline to learn of the start; a server that missed
        // its mark keeps none (the safety of the start rests on the first mark alone).
        match marked {
            0 => {
                self.failed("no old server took the migration's start mark; trying again");
                self.start_requested.store(true, Ordering::Release);
            }
            _ => self.learn_started("started here"),
        }
    }

    /// This slotline stops serving from the old placement, holds the pool's commands for
    /// [`SWITCH`] and closes the clients bound to old servers; then it moves.
    fn learn_started(&self, how: &str) {
        let now = Instant::now();
        self.moves_at_ms
            .store(self.ms(now + SWITCH), Ordering::Release);
        self.phase.store(STARTING, Ordering::Release);
        self.hold.pause(SWITCH, Mode::All);
        let bound: Vec<u64> = self
            .bound
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .copied()
            .collect();
        for &client in &bound {
            (self.kill)(client);
        }
        tracing::info!(pool = %self.pool, how, hold_ms = SWITCH.as_millis() as u64, closed = bound.len(),
            "migration started: the pool's commands wait until no slotline can still serve from the old placement, then keys move");
    }
}
