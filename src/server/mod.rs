//! Listeners and client sessions: accept connections for each pool and serve them until shutdown.

mod fanout;
mod info;
mod lifecycle;
mod local;
mod pools;
mod reload;
mod session;
mod stats_port;

pub use lifecycle::{Lifecycle, Phase, Stop};

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::cluster::Cluster;
use crate::config::{is_unix_path, Config, PoolConfig};
use crate::discovery::{self, Discovery};
use crate::metrics::{Metrics, PoolMetrics, PoolsCollector};
use crate::primary::Primary;
use crate::shards::Shards;
use crate::stats::{self, PoolStats};
use crate::tls::Acceptor;
use pools::Pools;
use reload::Reload;
pub(crate) use session::printable;
use session::ClientState;

/// Bytes all clients that have not authenticated may make slotline hold together (partial requests
/// of up to 10 arguments of 16 KiB each, Redis's own limit before AUTH): a client that would pass it is
/// closed. No number of clients without the password can push the process past this.
pub const UNAUTHENTICATED_BYTES: usize = 16 << 20;

/// How long start-up waits for each cluster pool's first topology before listening anyway.
const FIRST_TOPOLOGY_WAIT: Duration = Duration::from_secs(5);

/// Process-wide counters and facts, shown by INFO.
pub struct Shared {
    pub started: Instant,
    pub config_file: Option<String>,
    pub connected_clients: AtomicU64,
    /// Clients whose oldest request is a blocking command waiting for its backend (Redis's count,
    /// which clients and Redis's own test suite wait on; see [`Mark`]).
    pub blocked_clients: AtomicU64,
    pub total_connections: AtomicU64,
    pub total_commands: AtomicU64,
    pub rejected_connections: AtomicU64,
    next_client_id: AtomicU64,
    pub lifecycle: Arc<Lifecycle>,
    /// The clients connected, as CLIENT LIST shows them.
    pub clients: crate::clients::Registry,
    /// CLIENT PAUSE.
    pub pause: crate::pause::Pause,
    /// SLOWLOG's entries.
    pub slowlog: crate::slowlog::SlowLog,
    /// INFO errorstats.
    pub errorstats: crate::cmdstats::ErrorStats,
    /// MONITOR's clients.
    pub monitors: Arc<crate::monitor::Monitors>,
    /// Bytes held for clients that have not authenticated, all pools together.
    pub(crate) unauthenticated: Arc<session::Budget>,
    /// Every pool, once all have started (weak: each pool holds this).
    pools: std::sync::Mutex<Vec<Weak<Pool>>>,
}

impl Shared {
    /// `slowlog`: `slowlog_log_slower_than` and `slowlog_max_len`.
    pub fn new(config_file: Option<String>, slowlog: (i64, usize)) -> Arc<Shared> {
        Arc::new(Shared {
            started: Instant::now(),
            config_file,
            connected_clients: AtomicU64::new(0),
            blocked_clients: AtomicU64::new(0),
            total_connections: AtomicU64::new(0),
            total_commands: AtomicU64::new(0),
            rejected_connections: AtomicU64::new(0),
            next_client_id: AtomicU64::new(1),
            lifecycle: Arc::new(Lifecycle::default()),
            clients: crate::clients::Registry::default(),
            monitors: Arc::default(),
            slowlog: crate::slowlog::SlowLog::new(slowlog.0, slowlog.1),
            errorstats: Default::default(),
            pause: crate::pause::Pause::default(),
            unauthenticated: Arc::new(session::Budget::new(UNAUTHENTICATED_BYTES)),
            pools: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Closes every client `matching` picks (its session answers what it had sent, then ends);
    /// returns how many. CLIENT KILL, and the clients of users removed from an ACL file.
    pub(crate) fn kill_clients(&self, matching: impl Fn(&crate::clients::Record) -> bool) -> usize {
        let clients = self.clients.all();
        let picked = clients.iter().filter(|record| matching(record));
        picked
            .filter(|record| self.lifecycle.kill(record.id))
            .count()
    }

    /// Every pool, in config order; empty while they are starting.
    pub fn pools(&self) -> Vec<Arc<Pool>> {
        let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.iter().filter_map(Weak::upgrade).collect()
    }

    /// The pools serving now (at start and after each reload).
    fn set_pools(&self, pools: &[Arc<Pool>]) {
        *self.pools.lock().unwrap_or_else(|e| e.into_inner()) =
            pools.iter().map(Arc::downgrade).collect();
    }

    /// `Ok` when every pool can route requests and accepts clients; otherwise why not.
    pub fn readiness(&self) -> Result<(), String> {
        match self.lifecycle.phase() {
            Phase::Starting => return Err("starting".into()),
            Phase::Draining | Phase::Closing => return Err("shutting down".into()),
            Phase::Serving => {}
        }
        for pool in self.pools() {
            if let Some(status) = pool.discovery() {
                let s = status.snapshot();
                if !s.has_endpoints {
                    return Err(match s.state {
                        crate::discovery::SourceState::Failing { reason } => {
                            format!(
                                "pool {}: {} could not be read: {reason}",
                                pool.name, s.source
                            )
                        }
                        _ => format!("pool {}: discovery has found no backend yet", pool.name),
                    });
                }
            }
            if !pool.accepting.load(Ordering::Relaxed) {
                return Err(format!("pool {}: listener is not accepting", pool.name));
            }
            match &pool.router {
                Router::Cluster(c) if c.topology().covered() == 0 => {
                    return Err(format!("pool {}: no cluster topology yet", pool.name))
                }
                Router::Shards(s) if s.members().is_empty() => {
                    return Err(format!("pool {}: no servers", pool.name))
                }
                Router::Primary(p) if p.roles().master.is_none() => {
                    return Err(format!("pool {}: no master known", pool.name))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// A pool's connection counts, read by metrics and INFO.
pub struct PoolCounters {
    pub clients: u64,
    pub accepted: u64,
    pub rejected: u64,
}

/// One configured pool at run time.
pub struct Pool {
    pub name: String,
    pub config: PoolConfig,
    pub router: Router,
    pub shared: Arc<Shared>,
    pub stats: Arc<PoolStats>,
    pub metrics: Arc<PoolMetrics>,
    clients: AtomicU64,
    accepted: AtomicU64,
    rejected: AtomicU64,
    /// The accept loop runs and its last accept succeeded.
    accepting: AtomicBool,
    /// TLS handshakes that failed (timed out, not TLS, refused certificate).
    pub tls_failures: AtomicU64,
    local_port: Option<u16>,
    /// Where the backends come from (see [`discovery`](Self::discovery)).
    discovery: Option<Discovery>,
    /// A primary pool's replica listener: read-only commands only, served by replicas.
    pub read_only: bool,
    /// TLS for clients (`tls`): the handshakes of the listeners that speak it.
    pub tls: Option<Arc<crate::tls::Acceptor>>,
    /// TLS to the nodes (`backend_tls`).
    pub backend_tls: Option<Arc<crate::tls::Connector>>,
    /// Commands refused to this pool's clients (`deny_commands`).
    pub denied: crate::command::Denied,
    /// Its users, and what is kept about them (see [`crate::acl`]).
    pub acl: Arc<crate::acl::Acl>,
    /// The pool's data is moving here from an old placement (`migrate:`).
    pub migration: Option<Arc<crate::migrate::Migration>>,
    /// Clients whose oldest request is a script or function still running (see
    /// [`Pool::others_run_scripts`]).
    scripts_running: AtomicU64,
    /// CLIENT TRACKING's clients and what they read.
    pub tracking: crate::tracking::Tracking,
    /// The scripts EVAL ran that every master has been given.
    pub scripts: crate::scripts::Spread,
    /// The relay of the masters' script commands to MONITOR (see [`crate::monitor::start`]).
    pub monitor_relay: crate::backend::Gate,
}

/// What is behind a pool.
#[derive(Clone)]
pub enum Router {
    Cluster(Arc<Cluster>),
    Shards(Arc<Shards>),
    Primary(Arc<Primary>),
}

impl Router {
    /// Where the pool's reads went (a sharded pool has no replicas to count).
    pub fn read_counters(&self) -> Option<&crate::read::Counters> {
        match self {
            Router::Cluster(cluster) => Some(cluster.read_counters()),
            Router::Primary(primary) => Some(primary.read_counters()),
            Router::Shards(_) => None,
        }
    }

    /// The nodes that take writes now: a cluster's masters, a sharded pool's servers, a primary
    /// pool's master.
    pub fn masters(&self) -> Vec<Arc<crate::backend::Node>> {
        match self {
            Router::Cluster(cluster) => cluster.topology().nodes().to_vec(),
            Router::Shards(shards) => shards.members().nodes().to_vec(),
            Router::Primary(primary) => primary.roles().master.iter().cloned().collect(),
        }
    }

    /// Every backend the pool routes to now.
    pub fn backends(&self) -> Vec<Arc<crate::backend::Node>> {
        match self {
            Router::Cluster(cluster) => cluster.topology().nodes().to_vec(),
            Router::Shards(shards) => shards.members().nodes().to_vec(),
            Router::Primary(primary) => {
                let roles = primary.roles();
                roles
                    .master
                    .iter()
                    .chain(&roles.replicas)
                    .cloned()
                    .collect()
            }
        }
    }

    /// Settings for a backend connection owned by one client session (blocking commands,
    /// transactions): logged in like the shared ones, one connection, closed as soon as the session
    /// drops it.
    pub fn own_settings(&self) -> crate::backend::Settings {
        crate::backend::Settings {
            connections: 1,
            on_failure: None,
            timeout: None,
            eject: None,
            drain: Duration::ZERO,
            ..self.settings().clone()
        }
    }

    /// The settings of the pool's shared backend connections.
    pub fn settings(&self) -> &crate::backend::Settings {
        match self {
            Router::Cluster(cluster) => cluster.settings(),
            Router::Shards(shards) => shards.settings(),
            Router::Primary(primary) => primary.settings(),
        }
    }
}

impl Pool {
    /// Whether a client other than one with `own` scripts running has a script or function running
    /// on a node of this pool. PING then asks every master, as one Redis busy in a script answers
    /// PING with `-BUSY` (Redis's own test suite, and health checks, tell a busy server so).
    pub(crate) fn others_run_scripts(&self, own: bool) -> bool {
        self.scripts_running.load(Ordering::Relaxed) > u64::from(own)
    }

    /// The pause that holds `spec` now, if one does: CLIENT PAUSE's, or the failover hold of a
    /// primary pool (see [`crate::primary`]).
    pub(crate) fn pause_holding(
        &self,
        spec: &crate::command::Spec,
        now: tokio::time::Instant,
    ) -> Option<&crate::pause::Pause> {
        let process = &self.shared.pause;
        if process.holds(spec, now).is_some() {
            return Some(process);
        }
        match &self.router {
            Router::Primary(primary) if primary.hold().holds(spec, now).is_some() => {
                Some(primary.hold())
            }
            _ => None,
        }
    }

    /// The TCP port the pool listens on (None for unix sockets).
    pub fn port(&self) -> Option<u16> {
        self.local_port
    }

    pub fn counters(&self) -> PoolCounters {
        PoolCounters {
            clients: self.clients.load(Ordering::Relaxed),
            accepted: self.accepted.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
        }
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

/// The listen backlog when the config names none.
const DEFAULT_BACKLOG: u32 = 4096;

impl Listener {
    /// Binds `listen` (host:port, or a unix socket path) with a queue of `backlog` connections not
    /// yet accepted.
    pub async fn bind(listen: &str, backlog: Option<u32>) -> std::io::Result<Listener> {
        let backlog = backlog.unwrap_or(DEFAULT_BACKLOG);
        if is_unix_path(listen) {
            let path = std::path::PathBuf::from(listen.strip_prefix("unix:").unwrap_or(listen));
            // A socket file left by a previous run would make bind fail.
            if std::fs::metadata(&path).is_ok_and(|m| !m.is_dir()) {
                let _ = std::fs::remove_file(&path);
            }
            Ok(Listener::Unix(UnixListener::bind(&path)?, path))
        } else {
            let mut last = None;
            for addr in tokio::net::lookup_host(listen).await? {
                let socket = match addr {
                    std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                    std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
                };
                socket.set_reuseaddr(true)?;
                match socket.bind(addr).and_then(|()| socket.listen(backlog)) {
                    Ok(listener) => return Ok(Listener::Tcp(listener)),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::AddrNotAvailable,
                    format!("{listen} resolves to no address"),
                )
            }))
        }
    }
}

/// Starts every pool of `config` (and the admin listener, if configured) and serves until a [`Stop`]
/// arrives on `stops`: [`Stop::Graceful`] drains within `shutdown_grace`, [`Stop::Fast`] returns at once.
/// With a config file, SIGHUP or a change of the file's content reloads it (see `reload`).
/// `serving` is called once, when every pool listens and readiness turns on.
pub async fn run(
    config: Config,
    config_file: Option<String>,
    mut stops: UnboundedReceiver<Stop>,
    serving: impl FnOnce(),
) -> std::io::Result<()> {
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = config_file.as_deref().unwrap_or(""),
        pools = config.pools.len(),
        "starting"
    );
    check_file_limit(&config);
    let shared = Shared::new(
        config_file.clone(),
        (config.slowlog_log_slower_than, config.slowlog_max_len),
    );
    // CLIENT LIST's clock (see `clients::tick`), and once a second, the clients idle past their
    // pool's `client_idle_timeout` are closed, as CLIENT KILL closes them.
    let sweeper = shared.clone();
    tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        let mut every = tokio::time::interval(crate::clients::TICK);
        for tick in 0u64.. {
            every.tick().await;
            crate::clients::tick(start.elapsed());
            if tick % 10 == 0 {
                for id in sweeper.clients.idle() {
                    sweeper.lifecycle.kill(id);
                }
            }
        }
    });
    let metrics = Metrics::new().map_err(std::io::Error::other)?;
    metrics.register(Box::new(
        PoolsCollector::new(shared.clone()).map_err(std::io::Error::other)?,
    ));
    if let Some(admin) = &config.admin {
        let listener = std::net::TcpListener::bind(&admin.listen).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("admin: cannot listen on {}: {e}", admin.listen),
            )
        })?;
        let endpoints = Arc::new(AdminEndpoints {
            shared: shared.clone(),
            metrics: metrics.clone(),
        });
        crate::admin::spawn(listener, endpoints)?;
        tracing::info!(listen = %admin.listen, "admin listening (/metrics /healthz /readyz)");
    }
    let stats_listener = match &config.stats_listen {
        Some(listen) => Some(std::net::TcpListener::bind(listen).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("stats_listen: cannot listen on {listen}: {e}"),
            )
        })?),
        None => None,
    };
    let mut pools = Pools::default();
    // At start, any pool that cannot listen is fatal.
    pools.apply(&config, &shared, &metrics).await?;
    shared.set_pools(&pools.watch().borrow());
    let stats_task = match stats_listener {
        Some(listener) => {
            tracing::info!(listen = ?listener.local_addr().ok(), "serving twemproxy-compatible stats");
            let (shared, pools) = (shared.clone(), pools.watch());
            Some(crate::admin::spawn_on_control(listener, move |listener| {
                stats_port::serve(listener, shared, pools)
            })?)
        }
        None => None,
    };
    let life = shared.lifecycle.clone();
    life.enter(Phase::Serving);
    serving();
    let mut reload = config_file.map(|file| Reload::new(file.into()));
    let mut running = config;
    let stop = loop {
        let next = async {
            match &mut reload {
                Some(reload) => reload.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            stop = stops.recv() => break stop.unwrap_or(Stop::Fast),
            config = next => {
                if config.workers != running.workers {
                    tracing::warn!("workers changes take effect at the next start");
                }
                match pools.apply(&config, &shared, &metrics).await {
                    Ok(()) => {
                        metrics.config_reload(true);
                        shared.set_pools(&pools.watch().borrow());
                        running = config;
                    }
                    Err(e) => {
                        metrics.config_reload(false);
                        tracing::error!(error = %e, "new configuration rejected; the running configuration stays");
                    }
                }
            }
        }
    };
    let config = running;
    // Unready first, so that the endpoint leaves the Service while the listeners close.
    life.enter(Phase::Draining);
    if let Some(task) = stats_task {
        task.abort();
    }
    pools.stop();
    if stop == Stop::Fast {
        tracing::info!(clients = life.sessions(), "stopping now");
        return Ok(());
    }
    let start = tokio::time::Instant::now();
    let grace = Duration::from_millis(config.shutdown_grace);
    // The last moment to stop reading clients and still answer what they sent within the grace period.
    let answer_time = config
        .pools
        .values()
        .map(|p| Duration::from_millis(p.timeout))
        .max()
        .unwrap_or_default()
        .min(grace / 2);
    tracing::info!(
        clients = life.sessions(),
        grace_ms = config.shutdown_grace,
        "draining: not accepting; closing each client once it is quiet"
    );
    let fast = async {
        while let Some(stop) = stops.recv().await {
            if stop == Stop::Fast {
                return;
            }
        }
        std::future::pending::<()>().await
    };
    tokio::pin!(fast);
    // Some(true): every client left; Some(false): the last call came first; None: SIGINT.
    let drained = tokio::select! {
        drained = life.all_ended(start + grace - answer_time) => Some(drained),
        _ = &mut fast => None,
    };
    if drained == Some(false) {
        tracing::warn!(
            clients = life.sessions(),
            "grace period nearly over: answering what clients sent and closing them"
        );
        life.enter(Phase::Closing);
        tokio::select! {
            _ = life.all_ended(start + grace) => {}
            _ = &mut fast => {}
        }
    }
    tracing::info!(clients_cut = life.sessions(), "stopped");
    Ok(())
}

/// File descriptors slotline needs besides its clients: listeners, backend connections, the admin
/// and stats ports, the API server.
const RESERVED_FILES: u64 = 256;

/// Says at start-up when `ulimit -n` cannot hold the clients the config admits: past it, accepts
/// fail (and are retried) while the pool looks full to nobody.
fn check_file_limit(config: &Config) {
    let Some(limit) = open_files_limit() else {
        return;
    };
    let admitted: u64 = config
        .pools
        .values()
        .map(|p| p.client_connections as u64)
        .sum();
    let unlimited = config.pools.values().any(|p| p.client_connections == 0);
    if admitted + RESERVED_FILES > limit {
        tracing::warn!(
            open_files_limit = limit,
            client_connections = admitted,
            "the pools admit more clients than the process may open files (ulimit -n): raise the limit or lower client_connections"
        );
    } else if unlimited {
        tracing::info!(
            open_files_limit = limit,
            clients = limit.saturating_sub(RESERVED_FILES),
            "a pool without client_connections takes clients up to the open files limit (ulimit -n)"
        );
    }
}

/// The soft limit on open files, from /proc/self/limits (None where there is none to read).
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// What the admin listener reports.
struct AdminEndpoints {
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
}

impl crate::admin::Endpoints for AdminEndpoints {
    fn metrics(&self) -> String {
        self.metrics.render()
    }

    fn readiness(&self) -> Result<(), String> {
        self.shared.readiness()
    }

    fn migration(&self, action: Option<&str>) -> Result<String, String> {
        let pools = self.shared.pools();
        let migrations: Vec<_> = pools.iter().filter_map(|p| p.migration.as_ref()).collect();
        if migrations.is_empty() {
            return Err("no pool migrates".into());
        }
        let mut out = String::new();
        for migration in migrations {
            match action {
                Some("start") => migration.request_start(),
                Some("pause") => migration.pause(true),
                Some("resume") => migration.pause(false),
                _ => {}
            }
            migration.info(&mut out);
        }
        Ok(out.replace("\r\n", "\n"))
    }
}

/// Accepts the clients of one listener of `pool`; with `tls`, each client's handshake runs in a
/// task of its own, so a slow or hostile one never holds the others' accepts.
async fn accept_loop(listener: Arc<Listener>, pool: Arc<Pool>, tls: Option<Arc<Acceptor>>) {
    loop {
        let accepted = match &*listener {
            Listener::Tcp(l) => l.accept().await.map(|(s, addr)| {
                let _ = s.set_nodelay(true);
                let laddr = s.local_addr().map(|a| a.to_string()).unwrap_or_default();
                (Accepted::Tcp(s), addr.to_string(), laddr)
            }),
            Listener::Unix(l, path) => l.accept().await.map(|(s, _)| {
                let path = path.display().to_string();
                (Accepted::Unix(s), path.clone(), path)
            }),
        };
        let (conn, addr, laddr) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning, and say so in
                // readiness meanwhile.
                pool.accepting.store(false, Ordering::Relaxed);
                tracing::warn!(pool = %pool.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        pool.accepting.store(true, Ordering::Relaxed);
        let life = pool.shared.lifecycle.clone();
        if matches!(life.phase(), Phase::Draining | Phase::Closing) {
            // Accepted in the instant shutdown began: the listener is about to close. (While
            // starting, a pool that listens serves: the others are still being set up.)
            continue;
        }
        let limit = pool.config.client_connections as u64;
        if limit > 0 && pool.clients.load(Ordering::Relaxed) >= limit {
            pool.rejected.fetch_add(1, Ordering::Relaxed);
            pool.shared
                .rejected_connections
                .fetch_add(1, Ordering::Relaxed);
            let (tls, pool) = (tls.clone(), pool.clone());
            tokio::spawn(async move {
                if let Ok((_, mut wr, _)) = conn.open(tls.as_deref(), &pool).await {
                    let _ = wr
                        .write_all(b"-ERR max number of clients reached\r\n")
                        .await;
                    let _ = wr.flush().await;
                }
            });
            continue;
        }
        let fd = conn.fd();
        let seat = Seat::take(&pool);
        // What CLIENT LIST shows of it, from the moment its session starts.
        let client = move |pool: &Pool, user: Option<String>| {
            let record = crate::clients::Record::new(seat.id, addr, laddr, fd)
                .idle_timeout(pool.config.client_idle_timeout);
            // Its certificate names its user (`tls_user_from_cert`): logged in by its handshake.
            record.set_user(user.and_then(|name| pool.acl.cert_login(&name)));
            ClientState {
                record: pool.shared.clients.add(record),
            }
        };
        match tls {
            None => {
                let (rd, wr) = conn.split();
                let rd = life.track(seat.id, rd);
                let client = client(&pool, None);
                // The session future alone: wrapped in another async block it would be stored twice.
                tokio::spawn(session::serve(rd, wr, pool.clone(), client, seat));
            }
            Some(ref tls) => {
                let (tls, pool) = (tls.clone(), pool.clone());
                tokio::spawn(async move {
                    // The seat is held through the handshake: a handshake counts against
                    // `client_connections` like the client it may become.
                    let Ok((rd, wr, user)) = conn.open(Some(&tls), &pool).await else {
                        return;
                    };
                    let rd = life.track(seat.id, rd);
                    let client = client(&pool, user);
                    tokio::spawn(session::serve(rd, wr, pool, client, seat));
                });
            }
        }
    }
}

/// Handshakes fail at a client's will (plaintext on a TLS port, scanners): said now and then.
static HANDSHAKE_LOG: crate::throttle::Throttle =
    crate::throttle::Throttle::new(Duration::from_secs(10));

/// A connection just accepted, before its halves are made (and its TLS handshake run).
enum Accepted {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl Accepted {
    fn fd(&self) -> i32 {
        match self {
            Accepted::Tcp(s) => s.as_raw_fd(),
            Accepted::Unix(s) => s.as_raw_fd(),
        }
    }

    fn split(self) -> (BoxRead, BoxWrite) {
        match self {
            Accepted::Tcp(s) => {
                let (rd, wr) = s.into_split();
                (Box::new(rd), Box::new(wr))
            }
            Accepted::Unix(s) => {
                let (rd, wr) = s.into_split();
                (Box::new(rd), Box::new(wr))
            }
        }
    }

    /// The halves a session reads and writes: after the TLS handshake with `tls` (and the user the
    /// client's certificate names, with `tls_user_from_cert`). A failed handshake is counted and
    /// costs only this connection.
    async fn open(
        self,
        tls: Option<&Acceptor>,
        pool: &Pool,
    ) -> std::io::Result<(BoxRead, BoxWrite, Option<String>)> {
        let (tls, tcp) = match (tls, self) {
            (Some(tls), Accepted::Tcp(tcp)) => (tls, tcp),
            (_, conn) => {
                let (rd, wr) = conn.split();
                return Ok((rd, wr, None));
            }
        };
        match tls.accept(tcp).await {
            Ok(accepted) => {
                let (rd, wr) = tokio::io::split(accepted.stream);
                Ok((Box::new(rd), Box::new(wr), accepted.user))
            }
            Err(e) => {
                pool.tls_failures.fetch_add(1, Ordering::Relaxed);
                if HANDSHAKE_LOG.ready() {
                    tracing::info!(pool = %pool.name, error = %e, "TLS handshake failed (logged at most every 10 s)");
                }
                Err(e)
            }
        }
    }
}

/// A session's part in a count that others read (INFO's `blocked_clients`, a pool's
/// running scripts, see [`Pool::others_run_scripts`]): taken while the state lasts, given back on drop, when
/// the state ends or the session ends however it ends.
pub(crate) struct Mark<O: Counted>(Arc<O>);

/// Who keeps a count sessions [`Mark`] themselves in.
pub(crate) trait Counted {
    fn count(&self) -> &AtomicU64;
}

/// INFO's `blocked_clients`.
impl Counted for Shared {
    fn count(&self) -> &AtomicU64 {
        &self.blocked_clients
    }
}

/// The pool's clients with a script running.
impl Counted for Pool {
    fn count(&self) -> &AtomicU64 {
        &self.scripts_running
    }
}

impl<O: Counted> Mark<O> {
    pub(crate) fn take(owner: &Arc<O>) -> Mark<O> {
        owner.count().fetch_add(1, Ordering::Relaxed);
        Mark(owner.clone())
    }
}

impl<O: Counted> Drop for Mark<O> {
    fn drop(&mut self) {
        self.0.count().fetch_sub(1, Ordering::Relaxed);
    }
}

/// A client's place in its pool: counted from accept until the session ends, however it ends. The
/// release runs on drop, so a session that panicked still frees its connection slot and leaves the
/// lifecycle, and the shutdown drain never waits for it.
pub(crate) struct Seat {
    pool: Arc<Pool>,
    id: u64,
}

impl Seat {
    fn take(pool: &Arc<Pool>) -> Seat {
        let shared = &pool.shared;
        shared.total_connections.fetch_add(1, Ordering::Relaxed);
        shared.connected_clients.fetch_add(1, Ordering::Relaxed);
        pool.clients.fetch_add(1, Ordering::Relaxed);
        pool.accepted.fetch_add(1, Ordering::Relaxed);
        stats::shift(&pool.stats.client_connections, 1);
        Seat {
            pool: pool.clone(),
            id: shared.next_client_id.fetch_add(1, Ordering::Relaxed),
        }
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        let pool = &self.pool;
        pool.clients.fetch_sub(1, Ordering::Relaxed);
        stats::shift(&pool.stats.client_connections, -1);
        pool.shared
            .connected_clients
            .fetch_sub(1, Ordering::Relaxed);
        pool.shared.lifecycle.untrack(self.id);
        pool.shared.clients.remove(self.id);
        pool.tracking.disable(self.id);
    }
}

type BoxRead = Box<dyn tokio::io::AsyncRead + Unpin + Send>;
type BoxWrite = Box<dyn tokio::io::AsyncWrite + Unpin + Send>;
