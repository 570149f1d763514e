//! Shadow reads: a sampled fraction of a migrating pool's reads (`migrate.shadow_reads`) also look
//! for their key on the other side. In this design a key lives in one place at a time (the old
//! server while verifying; its new home once it moved), so any copy elsewhere is a mismatch, even
//! an identical one: a key the old placement does not put where it is (the placement differs from
//! the one the data was written with), or one the new side holds before anything moved (left over,
//! or written behind slotline's back), which moving would then refuse with BUSYKEY. Mismatches are
//! counted and logged with the key, so an operator watches them stay at 0 before starting.
//!
//! The look (`EXISTS` on every other place the key could be: each old server, and its new home)
//! runs in a task of its own, after the read was sent: the read itself waits for nothing.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use redis_protocol::resp2::types::OwnedFrame;

use super::mover::{ask, command};
use super::{phase, Migration};

/// Shadow looks under way at most; a read sampled beyond it is not looked at.
const MAX_IN_FLIGHT: usize = 64;

impl Migration {
    /// Whether this read is one of the sampled ones. None is once the migration is done: the old
    /// side is empty, and reads cost what they cost in a plain pool.
    #[inline]
    pub fn shadow_sample(&self) -> bool {
        self.shadow_every > 0
            && !self.progress.done.load(Ordering::Relaxed)
            && self
                .shadow_tick
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(self.shadow_every)
    }

    /// Looks for `key`, which was just read on `read_on`, everywhere else it could be.
    pub fn shadow(self: &Arc<Self>, key: &[u8], read_on: &Arc<str>) {
        if self.shadow_inflight.fetch_add(1, Ordering::AcqRel) >= MAX_IN_FLIGHT {
            self.shadow_inflight.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let (m, key, read_on) = (self.clone(), key.to_vec(), read_on.clone());
        tokio::spawn(async move {
            m.look(&key, &read_on).await;
            m.shadow_inflight.fetch_sub(1, Ordering::AcqRel);
        });
    }

    async fn look(&self, key: &[u8], read_on: &str) {
        let phase = self.phase.load(Ordering::Acquire);
        let mut places: Vec<_> = self.old.table().in_service().cloned().collect();
        places.extend((self.new_home)(key));
        let mut seen: Vec<&str> = vec![read_on];
        let mut found = Vec::new();
        for node in &places {
            if seen.contains(&&**node.addr()) {
                continue;
            }
            seen.push(node.addr());
            // A verifying slotline's look is only good while it may still serve from the old
            // side: after that another slotline may be moving the key.
            if phase == phase::VERIFYING && !self.leased(tokio::time::Instant::now()) {
                return;
            }
            match ask(node, command(&[b"EXISTS", key])).await {
                Ok(OwnedFrame::Integer(0)) => {}
                Ok(OwnedFrame::Integer(_)) => found.push(node.addr().clone()),
                // Unknown: not counted either way.
                _ => return,
            }
        }
        if self.phase.load(Ordering::Acquire) != phase {
            return; // the migration started meanwhile: the sides are not what they were
        }
        self.progress.shadow_reads.fetch_add(1, Ordering::Relaxed);
        if !found.is_empty() {
            self.progress
                .shadow_mismatches
                .fetch_add(1, Ordering::Relaxed);
            let found: Vec<&str> = found.iter().map(|a| &**a).collect();
            tracing::warn!(pool = %self.pool, key = %String::from_utf8_lossy(key), read_on,
                also_on = %found.join(","), "migration shadow read: the key is also on the other side");
        }
    }
}
