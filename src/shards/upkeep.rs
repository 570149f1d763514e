//! The one task that writes a sharded pool's routing: it takes each endpoint set discovery hands over
//! as the new members, and, with twemproxy's `auto_eject_hosts`, takes a server with
//! `server_failure_limit` failures in a row out of the ring and puts it back after
//! `server_retry_timeout` (it must then fail as many times again to leave once more). One writer, so
//! a membership change and an ejection never race to store their tables.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{oneshot, watch, Notify};
use tokio::time::Instant;

use super::Shards;
use crate::discovery::EndpointSet;
use crate::stats::{self, PoolStats};

/// Ejection settings of a pool with `auto_eject_hosts`.
pub(super) struct Eject {
    /// Woken when a node reaches its failure limit.
    pub notify: Arc<Notify>,
    pub retry: Duration,
    pub stats: Arc<PoolStats>,
}

/// `endpoints` has seen the set `Shards::start` installed.
pub(super) async fn run(
    shards: Weak<Shards>,
    mut endpoints: watch::Receiver<EndpointSet>,
    eject: Option<Eject>,
    mut gone: oneshot::Receiver<()>,
) {
    // Ejected servers by (name, address): a server that moves is a new backend with a clean record.
    let mut ejected: HashMap<(Arc<str>, Arc<str>), Instant> = HashMap::new();
    let mut following = true;
    loop {
        let next_return = ejected.values().min().copied();
        let mut new_set = None;
        tokio::select! {
            _ = &mut gone => return,
            changed = endpoints.changed(), if following => match changed {
                Ok(()) => new_set = endpoints.borrow_and_update().clone(),
                Err(_) => following = false, // the source is gone; keep what we have
            },
            _ = wait(eject.as_ref().map(|e| &e.notify)) => {}
            _ = sleep_until(next_return) => {}
        }
        let Some(shards) = shards.upgrade() else {
            return;
        };
        let mut changed = false;
        let members = match new_set {
            Some(set) => {
                changed = true;
                shards.install(&set)
            }
            None => shards.members(),
        };
        if let Some(eject) = &eject {
            ejected.retain(|(name, addr), _| {
                members
                    .servers()
                    .any(|(n, node)| n == &**name && node.addr() == addr)
            });
            changed |= check_health(&members, &mut ejected, eject);
        }
        if changed {
            if ejected.is_empty() {
                shards.use_live(&members, None);
            } else {
                let live: Vec<bool> = members
                    .servers()
                    .map(|(name, node)| {
                        !ejected.contains_key(&(Arc::from(name), node.addr().clone()))
                    })
                    .collect();
                shards.use_live(&members, Some(&live));
            }
        }
    }
}

async fn wait(notify: Option<&Arc<Notify>>) {
    match notify {
        Some(n) => n.notified().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Ejects servers that reached their failure limit and returns those whose time is up. Returns
/// whether anything changed.
fn check_health(
    members: &super::Members,
    ejected: &mut HashMap<(Arc<str>, Arc<str>), Instant>,
    eject: &Eject,
) -> bool {
    let now = Instant::now();
    let mut changed = false;
    for (name, node) in members.servers() {
        let Some(health) = node.health() else {
            continue;
        };
        let key = (Arc::from(name), node.addr().clone());
        match ejected.get(&key) {
            Some(&until) if until <= now => {
                ejected.remove(&key);
                health.reset();
                changed = true;
                tracing::info!(server = name, backend = %node.addr(), "server back in the ring after server_retry_timeout");
            }
            None if health.failing() => {
                ejected.insert(key, now + eject.retry);
                health.reset();
                changed = true;
                stats::add(&eject.stats.server_ejects, 1);
                stats::add(&node.stats().ejections, 1);
                let micros = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_micros() as u64);
                node.stats()
                    .server_ejected_at
                    .store(micros, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(server = name, backend = %node.addr(), retry_ms = eject.retry.as_millis() as u64, "server ejected after server_failure_limit failures in a row; its keys move to the other servers");
            }
            _ => {}
        }
    }
    changed
}
