//! The background mover: walks every old server with SCAN and MIGRATEs each key whose new home is
//! elsewhere, at most `rate` keys a second, `batch` at a time. A server whose full SCAN found
//! nothing left to move is marked emptied ([`MARKER`], naming this migration), and every slotline
//! reads the marks once a second: keys whose old home is emptied need no MIGRATE. A restarted
//! slotline starts its passes again from the beginning, but keys already moved are no longer
//! there: no work is done twice.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use redis_protocol::resp2::types::OwnedFrame;

use super::{HomeOf, Migration};
use crate::backend::Node;
use crate::protocol::Reply;

/// The key an emptied old server holds: its value names the migration (the old placement), so a
/// later migration with another placement does not take it for its own.
pub const MARKER: &str = "slotline:migration:emptied";

/// How often the marks are read (and, while paused or moving on touch only, how often to look).
const LOOK: Duration = Duration::from_secs(1);

/// How long one request to an old server may take.
const WAIT: Duration = Duration::from_secs(10);

pub(super) fn spawn(migration: Arc<Migration>) {
    let weak = Arc::downgrade(&migration);
    let new_home = migration.new_home.clone();
    tokio::spawn(run(weak, new_home));
}

pub(super) fn command(args: &[&[u8]]) -> Bytes {
    let mut frame = BytesMut::new();
    Reply(&mut frame).command(args);
    frame.freeze()
}

pub(super) async fn ask(node: &Node, frame: Bytes) -> Result<OwnedFrame, String> {
    let reply = match tokio::time::timeout(WAIT, node.request(&frame)).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("timed out".into()),
    };
    match redis_protocol::resp2::decode::decode(&reply) {
        Ok(Some((OwnedFrame::Error(e), _))) => Err(e),
        Ok(Some((frame, _))) => Ok(frame),
        _ => Err("an unreadable reply".into()),
    }
}

/// One SCAN step on `node` from `cursor`: the next cursor (`0` at the end of a pass) and the keys
/// found, the marks left out.
pub(super) async fn scan_step(
    node: &Node,
    cursor: &[u8],
    count: &str,
) -> Result<(Vec<u8>, Vec<Vec<u8>>), String> {
    let scan = command(&[b"SCAN", cursor, b"COUNT", count.as_bytes()]);
    let mut parts = match ask(node, scan).await {
        Ok(OwnedFrame::Array(parts)) if parts.len() == 2 => parts,
        other => return Err(format!("SCAN on {}: {other:?}", node.addr())),
    };
    let keys = match parts.pop() {
        Some(OwnedFrame::Array(keys)) => keys
            .into_iter()
            .filter_map(|k| match k {
                OwnedFrame::BulkString(k)
                    if k != MARKER.as_bytes() && k != super::STARTED.as_bytes() =>
                {
                    Some(k)
                }
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let next = match parts.pop() {
        Some(OwnedFrame::BulkString(next)) => next,
        _ => b"0".to_vec(),
    };
    Ok((next, keys))
}

/// What names this migration in the marks: its old placement.
pub(super) fn identity(m: &Migration) -> String {
    let table = m.old.table();
    let servers: Vec<&str> = table.in_service().map(|n| &**n.addr()).collect();
    format!("{}:{}", m.pool, servers.join(","))
}

async fn run(weak: Weak<Migration>, new_home: HomeOf) {
    let mut logged_percent = 0;
    let mut total = None;
    // Where the look for stray keys is on each emptied server.
    let mut cursors: HashMap<Arc<str>, Vec<u8>> = HashMap::new();
    loop {
        let Some(m) = weak.upgrade() else {
            return;
        };
        if !m.moving() {
            // Nothing moves before the start (see `super::phase`).
            drop(m);
            tokio::time::sleep(LOOK).await;
            continue;
        }
        let id = identity(&m);
        let servers: Vec<Arc<Node>> = m.old.table().in_service().cloned().collect();
        for node in &servers {
            if m.drained.load().contains(node.addr()) {
                stray(&m, node, &new_home, &mut cursors).await;
            }
        }
        // The marks, and what is left.
        let mut left = 0;
        let mut all_emptied = !servers.is_empty();
        for node in &servers {
            if !m.drained.load().contains(node.addr()) {
                match ask(node, command(&[b"GET", MARKER.as_bytes()])).await {
                    Ok(OwnedFrame::BulkString(v)) if v == id.as_bytes() => {
                        m.set_drained(node.addr())
                    }
                    _ => all_emptied = false,
                }
            }
            if !m.drained.load().contains(node.addr()) {
                if let Ok(OwnedFrame::Integer(n)) = ask(node, command(&[b"DBSIZE"])).await {
                    // Less the start mark every old server holds once moving.
                    left += (n.max(0) as u64).saturating_sub(1);
                }
            }
        }
        m.progress.remaining.store(left, Ordering::Relaxed);
        if all_emptied {
            if !m.progress.done.swap(true, Ordering::Relaxed) {
                tracing::info!(pool = %m.pool, moved = m.progress.moved.load(Ordering::Relaxed),
                    moved_on_touch = m.progress.moved_on_touch.load(Ordering::Relaxed),
                    "migration done: every old server is empty; the pool may drop its migrate: settings");
            }
            // Still looked at for stray keys, for as long as the pool has its migrate: block.
            drop(m);
            tokio::time::sleep(LOOK).await;
            continue;
        }
        let total = *total.get_or_insert(left.max(1));
        if m.rate == 0 || m.progress.paused.load(Ordering::Relaxed) {
            drop(m);
            tokio::time::sleep(LOOK).await;
            continue;
        }
        for node in servers {
            if m.drained.load().contains(node.addr()) || m.progress.paused.load(Ordering::Relaxed) {
                continue;
            }
            if pass(&m, &node, &new_home, total, &mut logged_percent).await {
                // A whole pass moved everything that was to move: the server is emptied (of keys
                // that live elsewhere now). Marked for every slotline, this one included.
                let marked = ask(&node, command(&[b"SET", MARKER.as_bytes(), id.as_bytes()])).await;
                if marked.is_ok() {
                    m.set_drained(node.addr());
                    tracing::info!(pool = %m.pool, server = %node.addr(), "migration: old server emptied");
                }
            }
        }
        drop(m);
        tokio::time::sleep(LOOK).await;
    }
}

/// Looks at the next stretch of an emptied old server's keyspace for keys that should not be there
/// (something wrote to the old placement behind slotline's back: a client still on twemproxy). One
/// found is counted and logged with its key, and the server is no longer taken for emptied: its
/// mark is removed, its keys move on touch again, and the mover tries to move it (a copy the new
/// side already has fails with BUSYKEY and stays reported, as neither copy can be chosen blindly).
async fn stray(
    m: &Migration,
    node: &Arc<Node>,
    new_home: &HomeOf,
    cursors: &mut HashMap<Arc<str>, Vec<u8>>,
) {
    let cursor = cursors
        .entry(node.addr().clone())
        .or_insert_with(|| b"0".to_vec());
    let Ok((next, keys)) = scan_step(node, cursor, "100").await else {
        return;
    };
    *cursor = next;
    let found = keys
        .into_iter()
        .find(|k| new_home(k).is_none_or(|to| to.addr() != node.addr()));
    let Some(key) = found else {
        return;
    };
    m.progress.stray.fetch_add(1, Ordering::Relaxed);
    m.failed(&format!(
        "key {:?} appeared on {} after it was emptied: something writes to the old placement",
        String::from_utf8_lossy(&key),
        node.addr()
    ));
    let _ = ask(node, command(&[b"DEL", MARKER.as_bytes()])).await;
    m.set_drained_to(node.addr(), false);
    m.progress.done.store(false, Ordering::Relaxed);
}

/// What each of `keys` takes on `node` (`MEMORY USAGE`, 0 when gone), in one script: the bytes
/// the mover reports. All 0 when the node would not say.
async fn memory_usage(node: &Node, keys: &[&[u8]]) -> Vec<u64> {
    if keys.is_empty() {
        return Vec::new();
    }
    const USAGE: &[u8] = b"local r = {} for i, k in ipairs(KEYS) do \
        r[i] = redis.call('MEMORY', 'USAGE', k) or 0 end return r";
    let count = keys.len().to_string();
    let mut args: Vec<&[u8]> = vec![b"EVAL", USAGE, count.as_bytes()];
    args.extend(keys);
    match ask(node, command(&args)).await {
        Ok(OwnedFrame::Array(sizes)) => sizes
            .into_iter()
            .map(|s| match s {
                OwnedFrame::Integer(n) => n.max(0) as u64,
                _ => 0,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// One full SCAN of `node`, moving what is to move; true when every MIGRATE succeeded.
async fn pass(
    m: &Migration,
    node: &Arc<Node>,
    new_home: &HomeOf,
    total: u64,
    logged_percent: &mut u64,
) -> bool {
    let mut cursor = b"0".to_vec();
    let count = m.batch.to_string();
    let mut clean = true;
    loop {
        if m.progress.paused.load(Ordering::Relaxed) {
            return false;
        }
        let (next, keys) = match scan_step(node, &cursor, &count).await {
            Ok(step) => step,
            Err(e) => {
                m.failed(&e);
                return false;
            }
        };
        m.progress
            .scanned
            .fetch_add(keys.len() as u64, Ordering::Relaxed);
        // Grouped by destination: one MIGRATE each.
        let mut groups: Vec<(Arc<Node>, Vec<&[u8]>)> = Vec::new();
        for key in &keys {
            let Some(to) = new_home(key) else {
                clean = false;
                continue;
            };
            if to.addr() == node.addr() {
                continue; // a ring server that keeps this key
            }
            match groups.iter_mut().find(|(n, _)| n.addr() == to.addr()) {
                Some((_, ks)) => ks.push(key),
                None => groups.push((to, vec![key])),
            }
        }
        let all: Vec<&[u8]> = groups
            .iter()
            .flat_map(|(_, ks)| ks.iter().copied())
            .collect();
        let mut sizes = memory_usage(node, &all)
            .await
            .into_iter()
            .chain(std::iter::repeat(0));
        let mut moved = 0;
        for (to, ks) in groups {
            let bytes: u64 = sizes.by_ref().take(ks.len()).sum();
            match ask(node, m.migrate_frame(to.addr(), &ks)).await {
                Ok(OwnedFrame::SimpleString(s)) if s == b"OK" => {
                    moved += ks.len() as u64;
                    m.progress.bytes.fetch_add(bytes, Ordering::Relaxed);
                }
                Ok(OwnedFrame::SimpleString(s)) if s == b"NOKEY" => {}
                other => {
                    clean = false;
                    m.failed(&format!(
                        "MIGRATE from {} to {}: {other:?}",
                        node.addr(),
                        to.addr()
                    ));
                }
            }
        }
        let before = m.progress.moved.fetch_add(moved, Ordering::Relaxed);
        let percent = (before + moved) * 100 / total;
        if percent > *logged_percent && percent <= 100 {
            *logged_percent = percent;
            tracing::info!(pool = %m.pool, percent, moved = before + moved, "migration progress");
        }
        if m.rate > 0 && !keys.is_empty() {
            tokio::time::sleep(Duration::from_secs_f64(keys.len() as f64 / m.rate as f64)).await;
        }
        if next == b"0" {
            return clean;
        }
        cursor = next;
    }
}

impl Migration {
    pub(super) fn failed(&self, what: &str) {
        self.progress.errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(pool = %self.pool, error = %what, "migration: a step failed; it is tried again on the next pass");
        *self
            .progress
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = what.to_string();
    }
}
