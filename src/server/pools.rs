//! The running pools, and how a (new) configuration becomes them: pools added are started, pools removed
//! stop listening, pools whose settings changed are started afresh behind the same listener; pools
//! whose settings did not change are not touched, so their clients never notice a reload.
//!
//! Clients connected to a pool that changed keep the session they have (nobody is dropped) with the
//! settings it started with; new connections get the new ones.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{accept_loop, Listener, Pool, Router, Shared, FIRST_TOPOLOGY_WAIT};
use crate::cluster::Cluster;
use crate::config::{Config, Mode, PoolConfig, ReadFrom};
use crate::discovery::Discovery;
use crate::metrics::{Metrics, PoolMetrics};
use crate::migrate::Migration;
use crate::primary::Primary;
use crate::shards::Shards;
use crate::stats::PoolStats;
use crate::tls::{Acceptor, Connector};

struct Running {
    /// The settings it runs with: the pool's own, but for `servers:` a reload may have replaced.
    config: PoolConfig,
    pool: Arc<Pool>,
    listener: Arc<Listener>,
    accept: JoinHandle<()>,
    /// A primary pool's replica listener.
    replicas: Option<Replicas>,
    /// Listeners with read policies of their own (`read_listen`).
    reads: Vec<Replicas>,
    /// The TLS listener beside a plaintext `listen` (`tls.listen`).
    secure: Option<Secure>,
}

/// A pool's TLS listener of its own.
struct Secure {
    listen: String,
    listener: Arc<Listener>,
    accept: JoinHandle<()>,
}

/// The read-only listener of a primary pool, or a `read_listen` listener: a pool of its own sharing
/// the pool's router.
struct Replicas {
    pool: Arc<Pool>,
    listener: Arc<Listener>,
    accept: JoinHandle<()>,
}

impl Running {
    fn stop_accepting(&self) {
        self.accept.abort();
        for replicas in self.replicas.iter().chain(&self.reads) {
            replicas.accept.abort();
        }
        if let Some(secure) = &self.secure {
            secure.accept.abort();
        }
    }

    fn pools(&self) -> impl Iterator<Item = Arc<Pool>> + '_ {
        std::iter::once(self.pool.clone()).chain(
            self.replicas
                .iter()
                .chain(&self.reads)
                .map(|r| r.pool.clone()),
        )
    }
}

pub(super) struct Pools {
    running: BTreeMap<String, Running>,
    /// The pools serving now, for those who report on them (the stats port).
    current: watch::Sender<Vec<Arc<Pool>>>,
}

impl Default for Pools {
    fn default() -> Pools {
        Pools {
            running: BTreeMap::new(),
            current: watch::channel(Vec::new()).0,
        }
    }
}

impl Pools {
    /// Makes the running pools those of `config`. Every new listener is bound first: if one cannot be,
    /// nothing changes and the error says which.
    pub(super) async fn apply(
        &mut self,
        config: &Config,
        shared: &Arc<Shared>,
        metrics: &Metrics,
    ) -> io::Result<()> {
        let mut fresh = BTreeMap::new();
        for (name, pool_config) in &config.pools {
            let reusable = self
                .running
                .get(name)
                .is_some_and(|r| r.config.listen == pool_config.listen);
            if !reusable {
                let listener = listener_at(name, &pool_config.listen, pool_config, None).await?;
                fresh.insert(name.clone(), listener);
            }
        }
        let removed: Vec<String> = self
            .running
            .keys()
            .filter(|name| !config.pools.contains_key(*name))
            .cloned()
            .collect();
        for name in removed {
            if let Some(old) = self.running.remove(&name) {
                old.stop_accepting();
                tracing::info!(pool = %name, listen = %old.config.listen,
                    "pool removed: no longer listening; its connected clients stay until they leave");
            }
        }
        for (name, pool_config) in &config.pools {
            let old = self.running.get_mut(name);
            if old.as_ref().is_some_and(|r| r.config == *pool_config) {
                continue;
            }
            if let Some(old) = old {
                if servers_only(&old.config, pool_config) && replace_servers(&old.pool, pool_config)
                {
                    old.config = pool_config.clone();
                    tracing::info!(pool = %name, "pool servers changed: connected clients follow them");
                    continue;
                }
                if users_only(&old.config, pool_config) {
                    match old.pool.acl.replace_lines(&pool_config.users) {
                        Ok(gone) => {
                            old.config = pool_config.clone();
                            tracing::info!(pool = %name, "pool users changed: new logins use them, connected clients follow their user's rules");
                            disconnect_users(&old.pool, &gone);
                            continue;
                        }
                        Err(e) => {
                            tracing::error!(pool = %name, error = %e, "pool users changed but cannot be read; starting the pool afresh");
                        }
                    }
                }
            }
            let old = self.running.get(name);
            let listener = match fresh.remove(name) {
                Some(listener) => listener,
                None => match old {
                    Some(old) => old.listener.clone(),
                    None => continue, // bound above; cannot happen
                },
            };
            let pool = start_pool(name, pool_config, &listener, shared, metrics).await?;
            // Every listener speaks TLS, unless the pool has a TLS listener of its own.
            let own_tls = pool_config.tls.as_ref().and_then(|t| t.listen.clone());
            let listeners_tls = match own_tls {
                Some(_) => None,
                None => pool.tls.clone(),
            };
            let secure = match own_tls {
                Some(listen) => {
                    let same = old
                        .and_then(|r| r.secure.as_ref())
                        .filter(|s| s.listen == listen)
                        .map(|s| &s.listener);
                    let listener = listener_at(name, &listen, pool_config, same).await?;
                    let accept = tokio::spawn(accept_loop(
                        listener.clone(),
                        pool.clone(),
                        pool.tls.clone(),
                    ));
                    tracing::info!(pool = %name, listen = %listen, "TLS listener");
                    Some(Secure {
                        listen,
                        listener,
                        accept,
                    })
                }
                None => None,
            };
            let replicas = match &pool_config.replica_listen {
                Some(listen) => {
                    let same = old
                        .filter(|r| r.config.replica_listen.as_ref() == Some(listen))
                        .and_then(|r| r.replicas.as_ref())
                        .map(|rep| &rep.listener);
                    let listener = listener_at(name, listen, pool_config, same).await?;
                    let replica_pool = replica_pool(&pool, listen, &listener, metrics);
                    let accept = tokio::spawn(accept_loop(
                        listener.clone(),
                        replica_pool.clone(),
                        listeners_tls.clone(),
                    ));
                    tracing::info!(pool = %name, listen = %listen, "replica listener: read-only commands, served by replicas");
                    Some(Replicas {
                        pool: replica_pool,
                        listener,
                        accept,
                    })
                }
                None => None,
            };
            let mut reads = Vec::new();
            for (listen, &policy) in &pool_config.read_listen {
                let same = old
                    .and_then(|r| r.reads.iter().find(|p| p.pool.config.listen == *listen))
                    .map(|rep| &rep.listener);
                let listener = listener_at(name, listen, pool_config, same).await?;
                let name = format!("{name}-{}", policy.name());
                let read_pool =
                    listener_pool(&pool, &name, listen, policy, false, &listener, metrics);
                let accept = tokio::spawn(accept_loop(
                    listener.clone(),
                    read_pool.clone(),
                    listeners_tls.clone(),
                ));
                tracing::info!(pool = %name, listen = %listen, read_from = policy.name(), "read listener");
                reads.push(Replicas {
                    pool: read_pool,
                    listener,
                    accept,
                });
            }
            let accept = tokio::spawn(accept_loop(listener.clone(), pool.clone(), listeners_tls));
            if let Some(old) = self.running.insert(
                name.clone(),
                Running {
                    config: pool_config.clone(),
                    pool,
                    listener,
                    accept,
                    replicas,
                    reads,
                    secure,
                },
            ) {
                old.stop_accepting();
                tracing::info!(pool = %name, "pool settings changed: new connections use them; connected clients keep theirs");
            } else {
                tracing::info!(pool = %name, listen = %pool_config.listen, "listening");
            }
        }
        self.current
            .send_replace(self.running.values().flat_map(Running::pools).collect());
        Ok(())
    }

    /// The pools serving now, and later after each reload.
    pub(super) fn watch(&self) -> watch::Receiver<Vec<Arc<Pool>>> {
        self.current.subscribe()
    }

    pub(super) fn stop(&mut self) {
        for running in std::mem::take(&mut self.running).into_values() {
            running.stop_accepting();
        }
    }
}

/// The listener pool `name` listens on `listen` with: the one it had there (`kept`), or a new one
/// bound with the pool's backlog; the error names the pool and the address.
async fn listener_at(
    name: &str,
    listen: &str,
    config: &PoolConfig,
    kept: Option<&Arc<Listener>>,
) -> io::Result<Arc<Listener>> {
    if let Some(listener) = kept {
        return Ok(listener.clone());
    }
    match Listener::bind(listen, config.backlog).await {
        Ok(listener) => Ok(Arc::new(listener)),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("pool {name}: cannot listen on {listen}: {e}"),
        )),
    }
}

/// Whether `new` differs from `old` in `servers:` alone.
fn servers_only(old: &PoolConfig, new: &PoolConfig) -> bool {
    let mut probe = old.clone();
    probe.servers.clone_from(&new.servers);
    probe == *new
}

/// Whether only a pool's `users:` lines changed (and it had some before and has some now): they are
/// swapped in place, as a rotated ACL file is.
fn users_only(old: &PoolConfig, new: &PoolConfig) -> bool {
    let mut probe = old.clone();
    probe.users.clone_from(&new.users);
    probe == *new && !old.users.is_empty() && !new.users.is_empty()
}

/// Hands a sharded pool with a static source its new `servers:`; the pool swaps them in like any
/// other endpoint set. False when the pool cannot (a cluster's seeds, a Kubernetes source).
fn replace_servers(pool: &Pool, config: &PoolConfig) -> bool {
    matches!(pool.router, Router::Shards(_))
        && pool
            .discovery
            .as_ref()
            .is_some_and(|d| d.replace_servers(config))
}

/// Starts what is behind one pool: its cluster or shards, and its discovery source.
async fn start_pool(
    name: &str,
    config: &PoolConfig,
    listener: &Listener,
    shared: &Arc<Shared>,
    metrics: &Metrics,
) -> io::Result<Arc<Pool>> {
    let stats = Arc::new(PoolStats::default());
    let pool_metrics = metrics.pool(name);
    let invalid = |field: &str, e: String| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("pool {name}: {field}: {e}"),
        )
    };
    let tls = match &config.tls {
        Some(settings) => Some(Acceptor::new(settings).map_err(|e| invalid("tls", e))?),
        None => None,
    };
    let backend_tls = match &config.backend_tls {
        Some(settings) => {
            let connector = Connector::new(settings).map_err(|e| invalid("backend_tls", e))?;
            if connector.insecure() {
                tracing::warn!(pool = %name, "backend_tls.insecure_skip_verify: the nodes' certificates are not verified; anyone on the path can pose as them");
            }
            Some(connector)
        }
        None => None,
    };
    let mut discovery = None;
    let router = match config.mode {
        Mode::Cluster => {
            let cluster = Cluster::start(config, backend_tls.clone());
            // Only Kubernetes seeds are followed: a cluster learns the rest from CLUSTER SLOTS.
            if config.kubernetes.is_some() {
                let source = first_set(Discovery::start(name, config)).await;
                cluster.follow(source.endpoints.clone());
                discovery = Some(source);
            }
            if tokio::time::timeout(FIRST_TOPOLOGY_WAIT, cluster.refresh_now()).await != Ok(true) {
                tracing::warn!(pool = %name, "no cluster topology yet; serving anyway and retrying in the background");
            }
            Router::Cluster(cluster)
        }
        Mode::Primary => {
            // Members are optional with Sentinel, which names the master and its replicas.
            if !config.servers.is_empty() || config.kubernetes.is_some() {
                discovery = Some(first_set(Discovery::start(name, config)).await);
            }
            let sentinels = match &config.sentinel {
                Some(sentinel) => {
                    let mut source = PoolConfig::new(
                        config.listen.clone(),
                        Mode::Primary,
                        sentinel.servers.clone(),
                    );
                    source.kubernetes.clone_from(&sentinel.kubernetes);
                    source.resolve_interval = config.resolve_interval;
                    let sentinels = Discovery::start(&format!("{name}/sentinels"), &source);
                    Some(first_set(sentinels).await)
                }
                None => None,
            };
            let members = discovery.as_ref().map(|d| d.endpoints.clone());
            let primary = Primary::start(name, config, members, sentinels, backend_tls.clone());
            primary.count_switches_in(pool_metrics.master_switches.clone());
            let found = primary.look_now(FIRST_TOPOLOGY_WAIT).await;
            if !found || primary.roles().master.is_none() {
                tracing::warn!(pool = %name, "no master known yet; serving anyway and looking again in the background");
            }
            Router::Primary(primary)
        }
        Mode::Ketama | Mode::Modula | Mode::Random => {
            // Static servers have a source too: their host names are resolved again as they move.
            let source = first_set(Discovery::start(name, config)).await;
            let shards = Shards::start(config, stats.clone(), &source, backend_tls.clone())
                .map_err(|e| {
                    io::Error::new(io::ErrorKind::InvalidInput, format!("pool {name}: {e}"))
                })?;
            discovery = Some(source);
            Router::Shards(shards)
        }
    };
    if let Some(source) = &discovery {
        source
            .status
            .count_updates_in(pool_metrics.discovery_updates.clone());
    }
    let migration = match &config.migrate {
        Some(_) => {
            let new_home = new_home(router.clone());
            let lifecycle = shared.lifecycle.clone();
            let kill = Box::new(move |client| {
                lifecycle.kill(client);
            });
            let migration = Migration::start(name, config, new_home, backend_tls.clone(), kill)
                .await
                .map_err(|e| invalid("migrate", e))?;
            match migration.manual() {
                true => {
                    tracing::info!(pool = %name, "migrating pool verifying: it serves from migrate.from and moves nothing until `slotline migrate start`")
                }
                false => {
                    tracing::info!(pool = %name, "migrating: keys move from migrate.from to this pool's placement as clients touch them and as the mover finds them")
                }
            }
            Some(migration)
        }
        None => None,
    };
    let acl = crate::acl::Acl::load_with_backends(
        config.acl_source(),
        config.redis_auth.clone(),
        config.backend_logins().by_user,
    )
    .map_err(|e| invalid("aclfile", e.0))?;
    let behind = Behind {
        router,
        stats,
        discovery,
        read_only: false,
        tls,
        backend_tls,
        migration,
        acl: Arc::new(acl),
    };
    let pool = new_pool(name, config.clone(), listener, shared, pool_metrics, behind);
    follow_users(&pool);
    Ok(pool)
}

/// Reads the pool's ACL file again whenever it changes (a rotated Secret) or SIGHUP comes: new logins
/// use the new users at once, sessions find their user's new rules at their next command, and the
/// clients of users removed or turned off are disconnected, as Redis's ACL DELUSER does.
fn follow_users(pool: &Arc<Pool>) {
    let Some(path) = pool.acl.file() else {
        return;
    };
    let acl = pool.acl.clone();
    crate::follow::follow(
        "aclfile",
        vec![path.clone()],
        Arc::downgrade(pool),
        move || acl.read().map_err(|e| e.0),
        |pool: &Pool, users| {
            let gone = pool.acl.install(users);
            disconnect_users(pool, &gone);
        },
    );
}

/// Closes the clients of the pool's users named in `gone` (removed or turned off), as Redis's ACL
/// DELUSER does.
fn disconnect_users(pool: &Pool, gone: &[String]) {
    if gone.is_empty() {
        return;
    }
    let closed = pool.shared.kill_clients(|record| {
        record
            .user()
            .is_some_and(|user| pool.acl.is_among(&user, gone))
    });
    tracing::info!(pool = %pool.name, users = ?gone, clients = closed,
        "users removed or turned off: their clients are disconnected");
}

/// What serves a pool's clients.
struct Behind {
    router: Router,
    stats: Arc<PoolStats>,
    discovery: Option<Discovery>,
    /// Writes refused (a replica listener).
    read_only: bool,
    tls: Option<Arc<Acceptor>>,
    backend_tls: Option<Arc<Connector>>,
    migration: Option<Arc<Migration>>,
    acl: Arc<crate::acl::Acl>,
}

/// Where a key lives under `router`'s placement: what a migration moves it to.
fn new_home(router: Router) -> impl Fn(&[u8]) -> Option<Arc<crate::backend::Node>> + Send + Sync {
    move |key| match &router {
        Router::Cluster(cluster) => cluster
            .topology()
            .node_for(crate::route::key_slot(key))
            .cloned(),
        Router::Shards(shards) => {
            let table = shards.table();
            table.node(table.server_for_key(key)).cloned()
        }
        Router::Primary(_) => None,
    }
}

fn new_pool(
    name: &str,
    config: PoolConfig,
    listener: &Listener,
    shared: &Arc<Shared>,
    metrics: Arc<PoolMetrics>,
    behind: Behind,
) -> Arc<Pool> {
    let denied = crate::command::Denied::new(&config.deny_commands);
    let local_port = match listener {
        Listener::Tcp(l) => l.local_addr().ok().map(|a| a.port()),
        Listener::Unix(..) => None,
    };
    Arc::new(Pool {
        name: name.to_string(),
        config,
        router: behind.router,
        shared: shared.clone(),
        stats: behind.stats,
        metrics,
        clients: AtomicU64::new(0),
        accepted: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
        accepting: AtomicBool::new(true),
        tls_failures: AtomicU64::new(0),
        local_port,
        discovery: behind.discovery,
        read_only: behind.read_only,
        tls: behind.tls,
        backend_tls: behind.backend_tls,
        migration: behind.migration,
        denied,
        acl: behind.acl,
        scripts_running: AtomicU64::new(0),
        tracking: Default::default(),
        scripts: Default::default(),
        monitor_relay: Default::default(),
    })
}

/// The pool behind a primary pool's replica listener (named `<pool>-replicas` in metrics and INFO):
/// the same master and replicas, reads to replicas (to the master only with `read_from:
/// prefer_replica`), writes refused.
fn replica_pool(
    primary: &Arc<Pool>,
    listen: &str,
    listener: &Listener,
    metrics: &Metrics,
) -> Arc<Pool> {
    let read_from = match primary.config.read_from {
        ReadFrom::PreferReplica => ReadFrom::PreferReplica,
        _ => ReadFrom::Replica,
    };
    let name = format!("{}-replicas", primary.name);
    listener_pool(primary, &name, listen, read_from, true, listener, metrics)
}

/// A pool of its own (named `name` in metrics and INFO) on `listen`, sharing `main`'s router and
/// backend connections, whose reads follow `read_from`; `read_only` refuses writes.
fn listener_pool(
    main: &Arc<Pool>,
    name: &str,
    listen: &str,
    read_from: ReadFrom,
    read_only: bool,
    listener: &Listener,
    metrics: &Metrics,
) -> Arc<Pool> {
    let mut config = main.config.clone();
    config.listen = listen.to_string();
    config.replica_listen = None;
    config.read_listen.clear();
    config.read_from = read_from;
    let behind = Behind {
        router: main.router.clone(),
        stats: Arc::new(PoolStats::default()),
        discovery: main.discovery.clone(),
        read_only,
        tls: main.tls.clone(),
        backend_tls: main.backend_tls.clone(),
        migration: None,
        acl: main.acl.clone(),
    };
    new_pool(
        name,
        config,
        listener,
        &main.shared,
        metrics.pool(name),
        behind,
    )
}

/// Waits a little for the source's first endpoint set, so that the pool serves with it from the first
/// request on; a slow API server or resolver does not hold the pool back (it fills in later).
async fn first_set(source: Discovery) -> Discovery {
    let mut endpoints = source.endpoints.clone();
    let _ = tokio::time::timeout(FIRST_TOPOLOGY_WAIT, endpoints.wait_for(Option::is_some)).await;
    source
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::Seat;

    /// A session that panics (should one ever) still gives its connection slot back and leaves the
    /// lifecycle, so `client_connections` keeps admitting clients and a drain does not wait for it.
    #[tokio::test]
    async fn a_panicking_session_gives_its_seat_back() {
        let config = crate::config::Config::from_yaml(
            "pools:\n  p:\n    listen: 127.0.0.1:6379\n    mode: ketama\n    servers: [\"127.0.0.1:1:1 a\"]\n",
        )
        .expect("config");
        let shared = Shared::new(None, (10_000, 128));
        let metrics = Metrics::new().expect("metrics");
        let listener = Listener::bind("127.0.0.1:0", None).await.expect("bind");
        let pool = start_pool("p", &config.pools["p"], &listener, &shared, &metrics)
            .await
            .expect("pool");
        let seat = Seat::take(&pool);
        let _read = shared.lifecycle.track(seat.id, tokio::io::empty());
        assert_eq!(
            (pool.counters().clients, shared.lifecycle.sessions()),
            (1, 1)
        );
        let session = tokio::spawn(async move {
            let _seat = seat;
            panic!("a bug in a session");
        });
        assert!(session.await.is_err_and(|e| e.is_panic()));
        assert_eq!(
            (pool.counters().clients, shared.lifecycle.sessions()),
            (0, 0)
        );
        assert_eq!(
            shared
                .connected_clients
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }
}
