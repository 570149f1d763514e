//! Listeners and client sessions: accept connections for each pool and serve them until shutdown.

mod fanout;
mod info;
mod local;
mod pools;
mod reload;
mod session;
mod stats_port;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, UnixListener};

use crate::cluster::Cluster;
use crate::config::{is_unix_path, Config, PoolConfig};
use crate::discovery::{self, Discovery};
use crate::shards::Shards;
use crate::stats::{self, PoolStats};
use pools::Pools;
use reload::Reload;
use session::ClientState;

/// How long start-up waits for each cluster pool's first topology before listening anyway.
const FIRST_TOPOLOGY_WAIT: Duration = Duration::from_secs(5);

/// Process-wide counters and facts, shown by INFO.
pub struct Shared {
    pub started: Instant,
    pub config_file: Option<String>,
    pub connected_clients: AtomicU64,
    pub total_connections: AtomicU64,
    pub total_commands: AtomicU64,
    pub rejected_connections: AtomicU64,
    next_client_id: AtomicU64,
}

impl Shared {
    pub fn new(config_file: Option<String>) -> Arc<Shared> {
        Arc::new(Shared {
            started: Instant::now(),
            config_file,
            connected_clients: AtomicU64::new(0),
            total_connections: AtomicU64::new(0),
            total_commands: AtomicU64::new(0),
            rejected_connections: AtomicU64::new(0),
            next_client_id: AtomicU64::new(1),
        })
    }
}

/// One configured pool at run time.
pub struct Pool {
    pub name: String,
    pub config: PoolConfig,
    pub router: Router,
    pub shared: Arc<Shared>,
    pub stats: Arc<PoolStats>,
    clients: AtomicU64,
    local_port: Option<u16>,
    /// Where the backends come from (see [`discovery`](Self::discovery)).
    discovery: Option<Discovery>,
}

/// What is behind a pool.
pub enum Router {
    Cluster(Arc<Cluster>),
    Shards(Arc<Shards>),
}

impl Router {
    /// Settings for a backend connection owned by one client session (blocking commands,
    /// transactions): logged in like the shared ones, one connection, closed as soon as the session
    /// drops it.
    pub fn own_settings(&self) -> crate::backend::Settings {
        let shared = match self {
            Router::Cluster(cluster) => cluster.settings(),
            Router::Shards(shards) => shards.settings(),
        };
        crate::backend::Settings {
            connections: 1,
            on_failure: None,
            timeout: None,
            eject: None,
            drain: Duration::ZERO,
            ..shared.clone()
        }
    }
}

impl Pool {
    /// The TCP port the pool listens on (None for unix sockets).
    pub fn port(&self) -> Option<u16> {
        self.local_port
    }

    /// The state of the pool's discovery source (for readiness and metrics): every sharded pool has
    /// one (static servers are re-resolved), a cluster pool only with `kubernetes:` (None otherwise:
    /// it learns its nodes from the cluster). Ready = `has_endpoints()`; `snapshot().state` says
    /// whether the source is in sync or failing with the last known backends.
    pub fn discovery(&self) -> Option<&Arc<discovery::Status>> {
        self.discovery.as_ref().map(|d| &d.status)
    }
}

/// A bound listener of either kind.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, std::path::PathBuf),
}

impl Listener {
    pub async fn bind(listen: &str) -> std::io::Result<Listener> {
        if is_unix_path(listen) {
            let path = std::path::PathBuf::from(listen.strip_prefix("unix:").unwrap_or(listen));
            // A socket file left by a previous run would make bind fail.
            if std::fs::metadata(&path).is_ok_and(|m| !m.is_dir()) {
                let _ = std::fs::remove_file(&path);
            }
            Ok(Listener::Unix(UnixListener::bind(&path)?, path))
        } else {
            Ok(Listener::Tcp(TcpListener::bind(listen).await?))
        }
    }
}

/// Starts every pool of `config` and serves until `shutdown` completes. With a config file, SIGHUP or a
/// change of the file's content reloads it (see `reload`).
pub async fn run(
    config: Config,
    config_file: Option<String>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let shared = Shared::new(config_file.clone());
    let stats_listener = match &config.stats_listen {
        Some(listen) => Some(TcpListener::bind(listen).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("stats_listen: cannot listen on {listen}: {e}"),
            )
        })?),
        None => None,
    };
    let mut pools = Pools::default();
    // At start, any pool that cannot listen is fatal.
    pools.apply(&config, &shared).await?;
    let stats_task = stats_listener.map(|listener| {
        tracing::info!(listen = ?listener.local_addr().ok(), "serving twemproxy-compatible stats");
        tokio::spawn(stats_port::serve(listener, shared.clone(), pools.watch()))
    });
    let mut reload = config_file.map(|file| Reload::new(file.into()));
    let mut running = config;
    tokio::pin!(shutdown);
    loop {
        let next = async {
            match &mut reload {
                Some(reload) => reload.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut shutdown => break,
            config = next => {
                if config.workers != running.workers {
                    tracing::warn!("workers changes take effect at the next start");
                }
                match pools.apply(&config, &shared).await {
                    Ok(()) => running = config,
                    Err(e) => tracing::error!(error = %e, "new configuration rejected; the running configuration stays"),
                }
            }
        }
    }
    if let Some(task) = stats_task {
        task.abort();
    }
    tracing::info!("shutting down");
    pools.stop();
    Ok(())
}

async fn accept_loop(listener: Arc<Listener>, pool: Arc<Pool>) {
    loop {
        let accepted = match &*listener {
            Listener::Tcp(l) => l.accept().await.map(|(s, addr)| {
                let _ = s.set_nodelay(true);
                let (rd, wr) = s.into_split();
                (
                    Box::new(rd) as BoxRead,
                    Box::new(wr) as BoxWrite,
                    addr.to_string(),
                )
            }),
            Listener::Unix(l, path) => l.accept().await.map(|(s, _)| {
                let (rd, wr) = s.into_split();
                (
                    Box::new(rd) as BoxRead,
                    Box::new(wr) as BoxWrite,
                    path.display().to_string(),
                )
            }),
        };
        let (rd, mut wr, addr) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(pool = %pool.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let limit = pool.config.client_connections as u64;
        if limit > 0 && pool.clients.load(Ordering::Relaxed) >= limit {
            pool.shared
                .rejected_connections
                .fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let _ = wr
                    .write_all(b"-ERR max number of clients reached\r\n")
                    .await;
            });
            continue;
        }
        let shared = &pool.shared;
        shared.total_connections.fetch_add(1, Ordering::Relaxed);
        shared.connected_clients.fetch_add(1, Ordering::Relaxed);
        pool.clients.fetch_add(1, Ordering::Relaxed);
        stats::shift(&pool.stats.client_connections, 1);
        let client = ClientState {
            id: shared.next_client_id.fetch_add(1, Ordering::Relaxed),
            addr,
            name: None,
            lib_name: None,
            lib_ver: None,
        };
        let pool = pool.clone();
        tokio::spawn(async move {
            session::serve(rd, wr, pool.clone(), client).await;
            pool.clients.fetch_sub(1, Ordering::Relaxed);
            stats::shift(&pool.stats.client_connections, -1);
            pool.shared
                .connected_clients
                .fetch_sub(1, Ordering::Relaxed);
        });
    }
}

type BoxRead = Box<dyn tokio::io::AsyncRead + Unpin + Send>;
type BoxWrite = Box<dyn tokio::io::AsyncWrite + Unpin + Send>;
