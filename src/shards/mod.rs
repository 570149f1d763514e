//! Sharded pools: independent Redis servers, each key placed exactly where twemproxy would place it.
//!
//! The placement in use is a [`Table`] behind an `ArcSwap`: sessions load it once per batch of
//! requests. One task per pool (`upkeep`) builds every new one off the data path: when discovery hands
//! over a new endpoint set (a pod back at a new IP, a host name resolving elsewhere, a server added or
//! gone), and when an ejection (or a server's return) changes which servers are in service.

mod table;
mod upkeep;

pub use table::{Members, Table};

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::{ArcSwap, Guard};
use tokio::sync::{oneshot, watch, Notify};

use crate::backend::{self, Node};
use crate::config::PoolConfig;
use crate::discovery::{Discovery, Endpoint};
use crate::route::{DistributionKind, Hash};
use crate::stats::PoolStats;

/// The servers of a sharded pool and how keys are placed on them.
pub struct Shards {
    hash: Hash,
    hash_tag: Option<[u8; 2]>,
    kind: DistributionKind,
    /// How connections to a new server are made.
    settings: backend::Settings,
    /// Every server discovery listed last, ejected or not; replaced whole by `upkeep`.
    members: Mutex<Arc<Members>>,
    table: ArcSwap<Table>,
    /// Counts the placements put in use: a subscribed client follows it, because a channel lives on
    /// the server its name hashes to and a pattern on every server in service.
    placed: watch::Sender<u64>,
    /// What clients are told while the pool has no server.
    unavailable: Arc<str>,
    /// Dropped with the pool, which ends its upkeep task.
    _alive: oneshot::Sender<()>,
}

impl Shards {
    /// Starts connections to the servers `discovery` knows now, and the task that follows its changes
    /// (and, with `auto_eject_hosts`, ejects failing servers and puts them back). The config must have
    /// been validated.
    pub fn start(
        config: &PoolConfig,
        pool_stats: Arc<PoolStats>,
        discovery: &Discovery,
        tls: Option<Arc<crate::tls::Connector>>,
    ) -> Result<Arc<Shards>, String> {
        let (hash, hash_tag) = config
            .placement()
            .map_err(|(field, e)| format!("{field}: {e}"))?;
        let kind = config
            .mode
            .distribution()
            .ok_or_else(|| "mode: a cluster pool has no sharding".to_string())?;
        let notify = Arc::new(Notify::new());
        let mut settings = backend::Settings::for_pool(config, config.redis_db, tls);
        settings.timeout = Some(Duration::from_millis(config.timeout));
        // A failed connection may mean a host name now resolves elsewhere: look again.
        settings.on_failure = Some(discovery.recheck());
        if config.auto_eject_hosts {
            settings.eject = Some((config.server_failure_limit, notify.clone()));
        }
        let unavailable: Arc<str> = Arc::from(match &config.kubernetes {
            Some(k8s) => format!(
                "ERR slotline: pool has no backend: kubernetes service {} lists no ready endpoints",
                k8s.service
            ),
            None => "ERR slotline: pool has no backend".to_string(),
        });
        let (alive, gone) = oneshot::channel();
        let shards = Arc::new(Shards {
            hash,
            hash_tag,
            kind,
            settings,
            members: Mutex::new(Arc::new(Members::empty())),
            table: ArcSwap::from_pointee(Table::empty((hash, hash_tag), &unavailable)),
            placed: watch::Sender::new(0),
            unavailable,
            _alive: alive,
        });
        // The servers known now serve from the first request on; the upkeep task takes every later
        // set (marked seen here, on its own receiver, so that none falls between the two).
        let mut follow = discovery.endpoints.clone();
        let endpoints = follow.borrow_and_update().clone();
        if let Some(endpoints) = endpoints {
            let members = shards.install(&endpoints);
            shards.use_live(&members, None);
        }
        let eject = config.auto_eject_hosts.then(|| upkeep::Eject {
            notify,
            retry: Duration::from_millis(config.server_retry_timeout),
            stats: pool_stats,
        });
        tokio::spawn(upkeep::run(Arc::downgrade(&shards), follow, eject, gone));
        Ok(shards)
    }

    /// How this pool's backend connections are set up.
    pub fn settings(&self) -> &backend::Settings {
        &self.settings
    }

    /// The placement in use now.
    pub fn table(&self) -> Guard<Arc<Table>> {
        self.table.load()
    }

    /// Changes each time another placement is put in use (a server added, gone, moved, ejected or
    /// back); the receiver has seen the one in use now.
    pub fn placement_changes(&self) -> watch::Receiver<u64> {
        self.placed.subscribe()
    }

    /// Every server now, ejected or not, with twemproxy's name for it.
    pub fn members(&self) -> Arc<Members> {
        self.members
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn hash(&self) -> Hash {
        self.hash
    }

    pub fn hash_tag(&self) -> Option<[u8; 2]> {
        self.hash_tag
    }

    pub fn distribution(&self) -> DistributionKind {
        self.kind
    }

    /// Makes `endpoints` the members (reusing the nodes of servers that did not move) and returns them.
    /// A set that cannot be placed (two servers of one name) is logged and the members stay.
    fn install(&self, endpoints: &[Endpoint]) -> Arc<Members> {
        let mut members = self.members.lock().unwrap_or_else(PoisonError::into_inner);
        match Members::build(self.kind, endpoints, &members, |addr| {
            Node::spawn(addr.clone(), &self.settings)
        }) {
            Ok(new) => *members = Arc::new(new),
            Err(e) => {
                tracing::error!(error = %e, "discovered servers cannot be placed; keeping the previous ones")
            }
        }
        members.clone()
    }

    /// Routes with the members marked `live` (all of them when `None`).
    fn use_live(&self, members: &Members, live: Option<&[bool]>) {
        let table = members.table((self.hash, self.hash_tag), live, &self.unavailable);
        self.table.store(Arc::new(table));
        self.placed.send_modify(|n| *n += 1);
    }
}
