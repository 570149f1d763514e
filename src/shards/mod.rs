//! Sharded pools: independent Redis servers, each key placed exactly where twemproxy would place it.
//!
//! The placement in use is a [`Table`] behind an `ArcSwap`: sessions load it once per batch of
//! requests, and an ejection (or a server's return) builds a new one off the data path.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, Guard};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::backend::{self, Node};
use crate::config::{join_host_port, PoolConfig, Sharding};
use crate::route::{Distribution, DistributionKind, Hash};
use crate::stats::{self, PoolStats};

/// The servers of a sharded pool and how keys are placed on them.
pub struct Shards {
    hash: Hash,
    hash_tag: Option<[u8; 2]>,
    /// Every configured server, ejected or not.
    full: Distribution,
    /// In config order, like the distribution's server indexes.
    nodes: Vec<Arc<Node>>,
    /// Twemproxy's name for each server (its `name`, or `host:port`), in config order.
    names: Vec<String>,
    table: ArcSwap<Table>,
}

/// The placement requests are routed with.
pub struct Table {
    hash: Hash,
    hash_tag: Option<[u8; 2]>,
    /// The ring over the servers in service (all of them unless some are ejected).
    ring: Distribution,
    nodes: Vec<Arc<Node>>,
}

impl Table {
    /// Index (config order) of the server that holds `key`.
    pub fn server_for_key(&self, key: &[u8]) -> usize {
        self.ring.server_for_key(self.hash, self.hash_tag, key)
    }

    pub fn node(&self, index: usize) -> Option<&Arc<Node>> {
        self.nodes.get(index)
    }

    /// A server in service for a request without a key; a client always gets the same one.
    pub fn any_node(&self, pick: usize) -> Option<&Arc<Node>> {
        let live = self.ring.live();
        let count = live.iter().filter(|&&l| l).count();
        let nth = pick % count.max(1);
        live.iter()
            .enumerate()
            .filter(|(_, &l)| l)
            .nth(nth)
            .and_then(|(i, _)| self.nodes.get(i))
            .or_else(|| self.nodes.get(pick % self.nodes.len().max(1)))
    }
}

impl Shards {
    /// Starts connections to every server (and, with `auto_eject_hosts`, the task that ejects failing
    /// servers and puts them back). The config must have been validated.
    pub fn start(config: &PoolConfig, pool_stats: Arc<PoolStats>) -> Result<Arc<Shards>, String> {
        let sharding = config
            .sharding()
            .map_err(|(field, e)| format!("{field}: {e}"))?;
        let notify = Arc::new(Notify::new());
        let mut settings = backend::Settings::new(
            config.server_connections,
            Duration::from_millis(config.connect_timeout),
        )
        .with_login(config.redis_auth.as_deref(), config.redis_db);
        settings.timeout = Some(Duration::from_millis(config.timeout));
        if config.auto_eject_hosts {
            settings.eject = Some((config.server_failure_limit, notify.clone()));
        }
        let Sharding {
            servers,
            hash,
            hash_tag,
            distribution,
        } = sharding;
        let nodes: Vec<Arc<Node>> = servers
            .iter()
            .map(|s| {
                let addr = join_host_port(&s.address, s.port.unwrap_or(0));
                Node::spawn(Arc::from(addr), &settings)
            })
            .collect();
        let names = servers
            .iter()
            .map(|s| match &s.name {
                Some(name) => name.clone(),
                None => join_host_port(&s.address, s.port.unwrap_or(0)),
            })
            .collect();
        let table = Table {
            hash,
            hash_tag,
            ring: distribution.clone(),
            nodes: nodes.clone(),
        };
        let shards = Arc::new(Shards {
            hash,
            hash_tag,
            full: distribution,
            nodes,
            names,
            table: ArcSwap::from_pointee(table),
        });
        if config.auto_eject_hosts {
            let retry = Duration::from_millis(config.server_retry_timeout);
            tokio::spawn(eject_failing(
                Arc::downgrade(&shards),
                notify,
                retry,
                pool_stats,
            ));
        }
        Ok(shards)
    }

    /// The placement in use now.
    pub fn table(&self) -> Guard<Arc<Table>> {
        self.table.load()
    }

    /// Every configured server in config order, with twemproxy's name for it.
    pub fn servers(&self) -> impl Iterator<Item = (&str, &Arc<Node>)> {
        self.names.iter().map(String::as_str).zip(&self.nodes)
    }

    pub fn nodes(&self) -> &[Arc<Node>] {
        &self.nodes
    }

    pub fn hash(&self) -> Hash {
        self.hash
    }

    pub fn hash_tag(&self) -> Option<[u8; 2]> {
        self.hash_tag
    }

    pub fn distribution(&self) -> DistributionKind {
        self.full.kind()
    }

    /// Puts a ring over the servers marked live in service.
    fn use_live(&self, live: &[bool]) {
        // With every server ejected there is no ring to build: keep them all, so that requests fail
        // fast at their down servers rather than nowhere.
        let ring = self
            .full
            .with_live(live)
            .unwrap_or_else(|_| self.full.clone());
        self.table.store(Arc::new(Table {
            hash: self.hash,
            hash_tag: self.hash_tag,
            ring,
            nodes: self.nodes.clone(),
        }));
    }
}

/// twemproxy's auto_eject_hosts: a server with `server_failure_limit` failures in a row leaves the
/// ring; after `retry` it is put back, and must fail as many times again to leave once more.
async fn eject_failing(
    shards: std::sync::Weak<Shards>,
    notify: Arc<Notify>,
    retry: Duration,
    pool_stats: Arc<PoolStats>,
) {
    let mut ejected_until: Vec<Option<Instant>> = Vec::new();
    loop {
        let next_return = ejected_until.iter().flatten().min().copied();
        match next_return {
            Some(at) => {
                tokio::select! {
                    _ = notify.notified() => {}
                    _ = tokio::time::sleep_until(at) => {}
                }
            }
            None => notify.notified().await,
        }
        let Some(shards) = shards.upgrade() else {
            return;
        };
        ejected_until.resize(shards.nodes.len(), None);
        let now = Instant::now();
        let mut changed = false;
        for (i, (name, node)) in shards.servers().enumerate() {
            let Some(health) = node.health() else {
                continue;
            };
            match ejected_until[i] {
                Some(until) if until <= now => {
                    ejected_until[i] = None;
                    health.reset();
                    changed = true;
                    tracing::info!(server = name, backend = %node.addr(), "server back in the ring after server_retry_timeout");
                }
                None if health.failing() => {
                    ejected_until[i] = Some(now + retry);
                    health.reset();
                    changed = true;
                    stats::add(&pool_stats.server_ejects, 1);
                    let micros = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_micros() as u64);
                    node.stats()
                        .server_ejected_at
                        .store(micros, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(server = name, backend = %node.addr(), retry_ms = retry.as_millis() as u64, "server ejected after server_failure_limit failures in a row; its keys move to the other servers");
                }
                _ => {}
            }
        }
        if changed {
            let live: Vec<bool> = ejected_until.iter().map(Option::is_none).collect();
            shards.use_live(&live);
        }
    }
}
