//! Configuration: plain data read from YAML, checked before anything binds.
//!
//! Every field has a default and a doc comment; unknown keys are errors, because a misspelt option that
//! silently does nothing is worse than refusing to start. `config/slotline.yml` is the commented example.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::route::{Distribution, DistributionKind, Hash, ServerLine};

mod migrate;
mod tls;
mod twemproxy;
mod validate;

pub use migrate::{FromPlacement, MigrateConfig, Start as MigrateStart};
pub use tls::{BackendTls, ListenTls};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Pools by name; each has its own listener.
    pub pools: BTreeMap<String, PoolConfig>,
    /// Threads serving connections; 0 means one per CPU the process may use (cgroup limits included).
    #[serde(default)]
    pub workers: usize,
    /// `host:port` of a twemproxy-compatible stats port (one JSON object per connection); none when
    /// absent. nutcracker's `-s PORT -a ADDR` flags set it too.
    #[serde(default)]
    pub stats_listen: Option<String>,
    /// The admin HTTP listener (/metrics, /healthz, /readyz); none when absent.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// Milliseconds a SIGTERM allows for in-flight requests to finish and clients to leave.
    #[serde(default = "defaults::shutdown_grace")]
    pub shutdown_grace: u64,
    /// Log filter (a tracing filter such as `info` or `warn,slotline=debug`); RUST_LOG wins when set.
    #[serde(default = "defaults::log_level")]
    pub log_level: String,
    /// SLOWLOG: requests slower than this many microseconds, end to end, are logged (negative: none;
    /// 0: all), as Redis's `slowlog-log-slower-than`.
    #[serde(default = "defaults::slowlog_log_slower_than")]
    pub slowlog_log_slower_than: i64,
    /// SLOWLOG keeps this many entries, as Redis's `slowlog-max-len`.
    #[serde(default = "defaults::slowlog_max_len")]
    pub slowlog_max_len: usize,
}

/// The admin HTTP listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `host:port` to serve /metrics, /healthz and /readyz on.
    pub listen: String,
}

/// How a pool finds the backend for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A Redis Cluster: route by key slot, follow MOVED/ASK.
    Cluster,
    /// Independent shards placed as twemproxy's ketama distribution places them.
    Ketama,
    /// Independent shards, twemproxy's modula distribution.
    Modula,
    /// Independent shards, any live server (twemproxy's random distribution).
    Random,
    /// One master with replicas: writes to the current master (found by Sentinel or by probing
    /// `ROLE`), reads to replicas when `read_from` says so.
    Primary,
}

impl std::str::FromStr for Mode {
    type Err = ();

    fn from_str(s: &str) -> Result<Mode, ()> {
        match s {
            "cluster" => Ok(Mode::Cluster),
            "ketama" => Ok(Mode::Ketama),
            "modula" => Ok(Mode::Modula),
            "random" => Ok(Mode::Random),
            "primary" => Ok(Mode::Primary),
            _ => Err(()),
        }
    }
}

impl Mode {
    /// The twemproxy distribution of a sharded mode.
    pub fn distribution(self) -> Option<DistributionKind> {
        match self {
            Mode::Cluster | Mode::Primary => None,
            Mode::Ketama => Some(DistributionKind::Ketama),
            Mode::Modula => Some(DistributionKind::Modula),
            Mode::Random => Some(DistributionKind::Random),
        }
    }
}

/// The ACL user of the nodes a client user's commands run as (`backend_users`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendUser {
    pub username: String,
    #[serde(default)]
    pub password: Option<String>,
    /// A file holding `password`, read as `redis_auth_file` is.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

/// `backend_users` as connections need it (see [`PoolConfig::backend_logins`]).
#[derive(Debug, PartialEq, Eq)]
pub struct BackendLogins<'a> {
    /// Each distinct (user, password), once: one set of connections per node each.
    pub logins: Vec<(&'a str, &'a str)>,
    /// Client user -> index into `logins`: what [`crate::backend::Via::login`] picks.
    pub by_user: BTreeMap<Box<str>, u16>,
}

/// One pool: a listener and the backends behind it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// `host:port` to listen on, or the path of a unix socket.
    pub listen: String,
    pub mode: Mode,
    /// Cluster: seed nodes as `host:port` (host names allowed); the topology is learnt from them.
    /// Sharded modes: twemproxy server lines, `host:port:weight [name]`.
    /// Primary: the master and its replicas as `host:port` (optional with `sentinel`, which names them).
    /// Host names are re-resolved every `resolve_interval` and when a connection fails.
    /// Either this or `kubernetes`.
    #[serde(default)]
    pub servers: Vec<String>,
    /// The backends are the endpoints of a Kubernetes Service, followed as they change.
    #[serde(default)]
    pub kubernetes: Option<KubernetesConfig>,
    /// Milliseconds between re-resolutions of the host names in `servers`.
    #[serde(default = "defaults::resolve_interval")]
    pub resolve_interval: u64,
    /// Sharded modes: the key hash, by twemproxy's name (default fnv1a_64).
    #[serde(default)]
    pub hash: Option<String>,
    /// Sharded modes: two characters; only the text between them is hashed (e.g. "{}").
    #[serde(default)]
    pub hash_tag: Option<String>,
    /// Milliseconds a request may take, end to end, before the client gets an error.
    #[serde(default = "defaults::timeout")]
    pub timeout: u64,
    /// Multiplexed connections per backend node.
    #[serde(default = "defaults::server_connections")]
    pub server_connections: usize,
    /// Most clients connected at once; more are refused at accept (0: no limit).
    #[serde(default)]
    pub client_connections: usize,
    /// Largest request a client may send, in bytes. (No one argument may pass 512 MiB, Redis's own
    /// `proto-max-bulk-len`, whatever this allows.)
    #[serde(default = "defaults::max_request_bytes")]
    pub max_request_bytes: usize,
    /// Requests a client may have outstanding; past this slotline stops reading from that client until
    /// replies drain, which bounds the memory one client can hold.
    #[serde(default = "defaults::max_pending")]
    pub max_pending: usize,
    /// Bytes of requests one client may have in slotline at once (waiting for backends, kept for
    /// redirects, queued in MULTI); past it slotline stops reading from that client (and refuses a
    /// MULTI queue that would pass it). One partial request of up to `max_request_bytes` comes on top.
    #[serde(default = "defaults::max_client_request_bytes")]
    pub max_client_request_bytes: usize,
    /// Bytes of replies one client may leave unread in slotline; past it the client is disconnected,
    /// as Redis disconnects a client past its `client-output-buffer-limit`.
    #[serde(default = "defaults::max_client_reply_bytes")]
    pub max_client_reply_bytes: usize,
    /// Bytes of requests that may wait for one backend server's connections (a server slower than its
    /// clients), each connection its share (and again for each protocol and backend login that
    /// reaches the server); past it, sessions sending there stop reading their clients until half
    /// has drained.
    #[serde(default = "defaults::max_server_queue_bytes")]
    pub max_server_queue_bytes: usize,
    /// Longest reply slotline takes from a backend, in bytes; a longer one (or a length or element
    /// count that announces one) closes that backend connection with an error to the requests on it.
    #[serde(default = "defaults::max_reply_bytes")]
    pub max_reply_bytes: usize,
    /// MOVED/ASK/TRYAGAIN redirects followed for one request before it fails.
    #[serde(default = "defaults::max_redirects")]
    pub max_redirects: u32,
    /// Milliseconds between periodic topology refreshes (refreshes also happen on MOVED and on failures).
    #[serde(default = "defaults::refresh_interval")]
    pub refresh_interval: u64,
    /// Milliseconds allowed to connect to a backend.
    #[serde(default = "defaults::connect_timeout")]
    pub connect_timeout: u64,
    /// Whether FLUSHALL and FLUSHDB may empty every master (server) of the pool. Off by default: a
    /// proxy in front of shared data should not wipe every shard by accident.
    #[serde(default)]
    pub allow_flush: bool,
    /// Whether administrative commands are sent to the nodes: CONFIG SET/RESETSTAT, FUNCTION RESTORE
    /// and ACL SETUSER/DELUSER to every master and replica, CONFIG GET, FUNCTION LIST/DUMP/STATS and
    /// ACL's reads to one master. Off by default: they change (or show the secrets of) every node.
    #[serde(default)]
    pub allow_admin: bool,
    /// Password clients must give with AUTH before anything else; slotline also authenticates its
    /// backend connections with it.
    #[serde(default)]
    pub redis_auth: Option<String>,
    /// A file holding `redis_auth` (a mounted Kubernetes Secret, say), read at start and at every
    /// reload; one trailing newline is ignored. Not with `redis_auth`.
    #[serde(default)]
    pub redis_auth_file: Option<PathBuf>,
    /// With `redis_auth`: the ACL user (Redis 6 and later) slotline logs in to its backends as, and
    /// the user name clients may give with AUTH (the password alone logs them in too). Without it,
    /// the `default` user.
    #[serde(default)]
    pub redis_username: Option<String>,
    /// Users in Redis's ACL file format (`user app1 on >secret ~app1:* +@all -@dangerous`), which
    /// slotline enforces for its clients (see `crate::acl`); the file is followed as it changes and
    /// re-read on SIGHUP. Not with `users`.
    #[serde(default)]
    pub aclfile: Option<PathBuf>,
    /// The same lines as `aclfile`, in the config.
    #[serde(default)]
    pub users: Vec<String>,
    /// The ACL user slotline logs in to its backends as; `redis_username` when not given.
    #[serde(default)]
    pub backend_username: Option<String>,
    /// The password slotline logs in to its backends with; `redis_auth` when not given.
    #[serde(default)]
    pub backend_password: Option<String>,
    /// A file holding `backend_password`, read as `redis_auth_file` is.
    #[serde(default)]
    pub backend_password_file: Option<PathBuf>,
    /// Per client user (by name, one of `aclfile`'s or `users`'), the ACL user of the nodes that
    /// user's commands run as, instead of `backend_username`: then the nodes themselves enforce that
    /// user's rules where slotline cannot look, inside scripts. Clients of one backend user share
    /// its connections (`server_connections` per node, opened when its first client needs them).
    #[serde(default)]
    pub backend_users: BTreeMap<String, BackendUser>,
    /// A pool without users of its own: `AUTH user password` for a user other than slotline's is
    /// the nodes' to check (their ACL users), and the client's commands then run on connections
    /// logged in as that user, shared by its clients. At most [`crate::backend::NODE_LOGINS`]
    /// distinct logins per pool.
    #[serde(default)]
    pub node_logins: bool,
    /// Sharded modes: the database backends are switched to; clients still see database 0.
    #[serde(default)]
    pub redis_db: u32,
    /// Sharded modes: take a server out of the ring after `server_failure_limit` failures in a row
    /// (its keys move to the others, as with twemproxy) and try it again after `server_retry_timeout`.
    #[serde(default)]
    pub auto_eject_hosts: bool,
    /// Milliseconds an ejected server stays out of the ring.
    #[serde(default = "defaults::server_retry_timeout")]
    pub server_retry_timeout: u64,
    /// Failures in a row (connection failures, and requests unanswered `timeout` ms after they were
    /// sent) that eject a server.
    #[serde(default = "defaults::server_failure_limit")]
    pub server_failure_limit: u32,
    /// twemproxy keys accepted so that a pool reads the same in both formats. `distribution`, when
    /// given, must agree with `mode`; `redis` must be true; `preconnect`, `tcpkeepalive` and
    /// `reuseport` change nothing (slotline always connects at start and uses the system's defaults).
    #[serde(default)]
    pub distribution: Option<String>,
    #[serde(default)]
    pub redis: Option<bool>,
    /// The listener's queue of connections not yet accepted (the kernel caps it at
    /// net.core.somaxconn); default 4096, so a storm of reconnecting clients waits in the queue
    /// rather than being refused.
    #[serde(default)]
    pub backlog: Option<u32>,
    #[serde(default)]
    pub preconnect: Option<bool>,
    #[serde(default)]
    pub tcpkeepalive: Option<bool>,
    #[serde(default)]
    pub reuseport: Option<bool>,
    /// Primary pools: find the master by asking these sentinels (without it, by probing `ROLE`).
    #[serde(default)]
    pub sentinel: Option<SentinelConfig>,
    /// Primary pools: milliseconds between two looks at who is master (`ROLE` probes, sentinel
    /// queries). Failures and READONLY replies make slotline look at once.
    #[serde(default = "defaults::probe_interval")]
    pub probe_interval: u64,
    /// Cluster and primary pools: where read-only commands go (see [`crate::read`]).
    #[serde(default)]
    pub read_from: ReadFrom,
    /// Cluster and primary pools: more listeners on the same backend connections, each with its
    /// own read policy (`{"0.0.0.0:7379": replica}`).
    #[serde(default)]
    pub read_listen: BTreeMap<String, ReadFrom>,
    /// Cluster pools: milliseconds a replica may be behind its master (measured from replication
    /// offsets) and still serve reads.
    #[serde(default = "defaults::max_replica_lag")]
    pub max_replica_lag: u64,
    /// A client that wrote reads its writes back: its reads go to the master until a replica has
    /// replicated past its last write (only matters when reads may go to replicas).
    #[serde(default = "defaults::read_your_writes")]
    pub read_your_writes: bool,
    /// The zone slotline runs in (`nearest*` policies); the `SLOTLINE_ZONE` environment variable
    /// when unset.
    #[serde(default)]
    pub zone: Option<String>,
    /// Zones of nodes discovery does not tell (`{"10.1.2.3:6379": eu-west-1a}`, or a host alone).
    #[serde(default)]
    pub zones: BTreeMap<String, String>,
    /// Primary pools: a second listener serving read-only commands from replicas (writes are refused
    /// with READONLY, as a replica would), like the redis-ha chart's read port.
    #[serde(default)]
    pub replica_listen: Option<String>,
    /// Clients speak TLS: to every listener of the pool, or to a listener of its own beside a
    /// plaintext `listen` (`tls.listen`).
    #[serde(default)]
    pub tls: Option<ListenTls>,
    /// slotline speaks TLS to the pool's nodes and sentinels.
    #[serde(default)]
    pub backend_tls: Option<BackendTls>,
    /// Commands (or `command|subcommand`) this pool's clients may not run, refused before routing
    /// with `-ERR ... denied`: also when queued in MULTI, and in scripts whose text calls them.
    #[serde(default)]
    pub deny_commands: Vec<String>,
    /// Milliseconds a client may stay idle before slotline closes it (0: never, the default), as
    /// Redis's `timeout`: subscribers and clients blocked in a command are never idle.
    #[serde(default)]
    pub client_idle_timeout: u64,
    /// The pool's data is moving here from an old sharded placement (see config/migrate.yml).
    #[serde(default)]
    pub migrate: Option<MigrateConfig>,
}

/// Where a primary pool finds out who the master is.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SentinelConfig {
    /// The name the sentinels monitor the master under.
    pub master_name: String,
    /// Sentinels as `host:port`; or
    #[serde(default)]
    pub servers: Vec<String>,
    /// the endpoints of the sentinels' Kubernetes Service.
    #[serde(default)]
    pub kubernetes: Option<KubernetesConfig>,
    /// Password of the sentinels (`requirepass` in sentinel.conf), if they ask for one.
    #[serde(default)]
    pub password: Option<String>,
    /// With `password`: the sentinels' ACL user (`user` in sentinel.conf); without it, the default user.
    #[serde(default)]
    pub username: Option<String>,
}

/// Where a cluster or primary pool sends read-only commands (see [`crate::read`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadFrom {
    /// Everything to the master.
    #[default]
    Master,
    /// Reads to the master, to a replica while there is none.
    PreferMaster,
    /// Reads to a replica only; while none qualifies they fail with an error rather than load
    /// the master.
    Replica,
    /// Reads to a replica that qualifies, and to the master while there is none.
    PreferReplica,
    /// Reads spread over the master and the replicas that qualify.
    Any,
    /// A replica in slotline's zone, else any replica, else the master.
    NearestReplica,
    /// The master or a replica in slotline's zone, else as `nearest_replica`.
    Nearest,
}

impl ReadFrom {
    /// The name in the config.
    pub fn name(self) -> &'static str {
        match self {
            ReadFrom::Master => "master",
            ReadFrom::PreferMaster => "prefer_master",
            ReadFrom::Replica => "replica",
            ReadFrom::PreferReplica => "prefer_replica",
            ReadFrom::Any => "any",
            ReadFrom::NearestReplica => "nearest_replica",
            ReadFrom::Nearest => "nearest",
        }
    }
}

mod defaults {
    pub fn timeout() -> u64 {
        1000
    }
    pub fn max_replica_lag() -> u64 {
        1000
    }
    pub fn read_your_writes() -> bool {
        true
    }
    pub fn server_connections() -> usize {
        1
    }
    pub fn max_request_bytes() -> usize {
        64 * 1024 * 1024
    }
    pub fn max_pending() -> usize {
        1024
    }
    pub fn max_client_request_bytes() -> usize {
        128 * 1024 * 1024
    }
    pub fn max_client_reply_bytes() -> usize {
        512 * 1024 * 1024
    }
    pub fn max_server_queue_bytes() -> usize {
        64 * 1024 * 1024
    }
    /// Redis's own `proto-max-bulk-len` default: the largest value a node stores unless told otherwise.
    pub fn max_reply_bytes() -> usize {
        512 * 1024 * 1024
    }
    pub fn max_redirects() -> u32 {
        5
    }
    pub fn refresh_interval() -> u64 {
        10_000
    }
    pub fn connect_timeout() -> u64 {
        500
    }
    pub fn shutdown_grace() -> u64 {
        10_000
    }
    pub fn log_level() -> String {
        "info".into()
    }
    pub fn slowlog_log_slower_than() -> i64 {
        10_000
    }
    pub fn slowlog_max_len() -> usize {
        128
    }
    pub fn resolve_interval() -> u64 {
        30_000
    }
    pub fn weight() -> u32 {
        1
    }
    /// twemproxy's defaults.
    pub fn server_retry_timeout() -> u64 {
        30_000
    }
    pub fn server_failure_limit() -> u32 {
        2
    }
    /// HAProxy's `inter 1s`, as the redis-ha chart configures it.
    pub fn probe_interval() -> u64 {
        1000
    }
}

/// A pool's backends taken from a Kubernetes Service's endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// The Service whose endpoints are the backends.
    pub service: String,
    /// Its namespace; default: the namespace of the kubeconfig context, or the pod's own in-cluster.
    #[serde(default)]
    pub namespace: Option<String>,
    /// The Service port, by name or number; may be left out when the Service has one port.
    #[serde(default)]
    pub port: Option<PortRef>,
    /// Which API to read; default: chosen from API discovery (`endpointslices` when the API server
    /// serves discovery.k8s.io/v1, else `endpoints`).
    #[serde(default)]
    pub api: Option<EndpointsApi>,
    /// Pod name -> the name the server has on the ketama ring (default: the pod's hostname or name).
    #[serde(default)]
    pub names: BTreeMap<String, String>,
    /// Sharded modes: the weight of every endpoint.
    #[serde(default = "defaults::weight")]
    pub weight: u32,
}

/// A Service port, by name or number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortRef {
    Name(String),
    Number(u16),
}

impl<'de> Deserialize<'de> for PortRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<PortRef, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Name(String),
        }
        let number = |n: u64| match u16::try_from(n) {
            Ok(n) if n > 0 => Ok(PortRef::Number(n)),
            _ => Err(serde::de::Error::custom(format!(
                "port {n} is not between 1 and 65535"
            ))),
        };
        match Raw::deserialize(d)? {
            Raw::Number(n) => number(n),
            Raw::Name(name) => match name.parse::<u64>() {
                Ok(n) => number(n),
                Err(_) => Ok(PortRef::Name(name)),
            },
        }
    }
}

/// The Kubernetes API endpoints are read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointsApi {
    /// discovery.k8s.io/v1 EndpointSlices (GA since Kubernetes 1.21).
    Endpointslices,
    /// core/v1 Endpoints (deprecated since Kubernetes 1.33).
    Endpoints,
}

/// A configuration that cannot be used, with where the problem is.
#[derive(Debug)]
pub struct ConfigError {
    /// The file, when the config came from one.
    pub file: Option<PathBuf>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(file) => write!(f, "{}: {}", file.display(), self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: Some(path.to_owned()),
            message: format!("cannot read: {e}"),
        })?;
        Config::from_yaml(&text).map_err(|mut e| {
            e.file = Some(path.to_owned());
            e
        })
    }

    /// Parses and validates YAML text.
    ///
    /// ```
    /// use slotline::config::Config;
    /// let yaml = "pools:\n  main:\n    listen: 127.0.0.1:6380\n    mode: cluster\n    servers: [redis-0.redis:6379]\n";
    /// let config = Config::from_yaml(yaml).unwrap();
    /// assert_eq!(config.pools["main"].timeout, 1000); // the default
    /// let typo = yaml.replace("servers", "severs");
    /// assert!(Config::from_yaml(&typo).unwrap_err().to_string().contains("severs"));
    /// ```
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        // A native config has a `pools:` key; a twemproxy nutcracker.yml has pools at the top level.
        let value: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| ConfigError {
            file: None,
            message: e.to_string(),
        })?;
        if let Some(map) = value.as_mapping() {
            let native = ["pools", "workers", "stats_listen"];
            if !map.is_empty() && !native.iter().any(|k| map.contains_key(*k)) {
                return twemproxy::parse(text);
            }
        }
        let mut config: Config = serde_yaml::from_value(value).map_err(|e| ConfigError {
            file: None,
            message: e.to_string(),
        })?;
        config.read_secrets()?;
        config.validate()?;
        Ok(config)
    }
}

impl Config {
    /// Takes every pool's `redis_auth_file` into its `redis_auth`, and `backend_password_file` into
    /// `backend_password`.
    fn read_secrets(&mut self) -> Result<(), ConfigError> {
        for (name, pool) in &mut self.pools {
            let backend_users = pool.backend_users.iter_mut().map(|(user, b)| {
                (
                    format!("backend_users.{user}.password"),
                    &b.password_file,
                    &mut b.password,
                )
            });
            for (field, file, secret) in [
                (
                    "redis_auth".to_string(),
                    &pool.redis_auth_file,
                    &mut pool.redis_auth,
                ),
                (
                    "backend_password".to_string(),
                    &pool.backend_password_file,
                    &mut pool.backend_password,
                ),
            ]
            .into_iter()
            .chain(backend_users)
            {
                let Some(path) = file else {
                    continue;
                };
                let fail = |message: String| ConfigError {
                    file: None,
                    message: format!("pools.{name}.{field}_file: {message}"),
                };
                if secret.is_some() {
                    return Err(fail(format!("give {field} or {field}_file, not both")));
                }
                let text = std::fs::read_to_string(path)
                    .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
                let value = text.strip_suffix('\n').unwrap_or(&text);
                let value = value.strip_suffix('\r').unwrap_or(value);
                if value.is_empty() {
                    return Err(fail(format!("{} is empty", path.display())));
                }
                *secret = Some(value.to_string());
            }
        }
        Ok(())
    }
}

impl PoolConfig {
    /// The user and password slotline logs in to its backends with.
    pub fn backend_login(&self) -> (Option<&str>, Option<&str>) {
        (
            self.backend_username
                .as_deref()
                .or(self.redis_username.as_deref()),
            self.backend_password
                .as_deref()
                .or(self.redis_auth.as_deref()),
        )
    }

    /// The distinct logins of `backend_users`, and for each client user named there the index of
    /// its login among them.
    pub fn backend_logins(&self) -> BackendLogins<'_> {
        let mut logins: Vec<(&str, &str)> = Vec::new();
        let mut by_user = BTreeMap::new();
        for (user, backend) in &self.backend_users {
            let login = (
                backend.username.as_str(),
                backend.password.as_deref().unwrap_or(""),
            );
            let index = match logins.iter().position(|l| *l == login) {
                Some(index) => index,
                None => {
                    logins.push(login);
                    logins.len() - 1
                }
            };
            // At most 1,024 (validation).
            by_user.insert(user.as_str().into(), index as u16);
        }
        BackendLogins { logins, by_user }
    }

    /// Where the pool's client users come from.
    pub fn acl_source(&self) -> crate::acl::Source {
        match (&self.aclfile, self.users.is_empty()) {
            (Some(path), _) => crate::acl::Source::File(path.clone()),
            (None, false) => crate::acl::Source::Lines(self.users.clone()),
            (None, true) => crate::acl::Source::Single {
                name: self
                    .redis_username
                    .clone()
                    .unwrap_or_else(|| "default".into()),
                password: self.redis_auth.clone(),
            },
        }
    }
}

/// How a sharded pool places keys, read from its config.
#[derive(Debug, Clone)]
pub struct Sharding {
    pub servers: Vec<ServerLine>,
    pub hash: Hash,
    pub hash_tag: Option<[u8; 2]>,
    pub distribution: Distribution,
}

impl PoolConfig {
    /// A pool with every optional setting at its default.
    pub fn new(listen: String, mode: Mode, servers: Vec<String>) -> PoolConfig {
        PoolConfig {
            listen,
            mode,
            servers,
            kubernetes: None,
            resolve_interval: defaults::resolve_interval(),
            hash: None,
            hash_tag: None,
            timeout: defaults::timeout(),
            server_connections: defaults::server_connections(),
            client_connections: 0,
            max_request_bytes: defaults::max_request_bytes(),
            max_client_request_bytes: defaults::max_client_request_bytes(),
            max_client_reply_bytes: defaults::max_client_reply_bytes(),
            max_reply_bytes: defaults::max_reply_bytes(),
            max_server_queue_bytes: defaults::max_server_queue_bytes(),
            max_pending: defaults::max_pending(),
            max_redirects: defaults::max_redirects(),
            refresh_interval: defaults::refresh_interval(),
            connect_timeout: defaults::connect_timeout(),
            allow_flush: false,
            allow_admin: false,
            redis_auth: None,
            redis_auth_file: None,
            redis_username: None,
            aclfile: None,
            users: Vec::new(),
            backend_username: None,
            backend_password: None,
            backend_password_file: None,
            backend_users: BTreeMap::new(),
            node_logins: false,
            redis_db: 0,
            auto_eject_hosts: false,
            server_retry_timeout: defaults::server_retry_timeout(),
            server_failure_limit: defaults::server_failure_limit(),
            distribution: None,
            redis: None,
            backlog: None,
            preconnect: None,
            tcpkeepalive: None,
            reuseport: None,
            sentinel: None,
            probe_interval: defaults::probe_interval(),
            read_from: ReadFrom::Master,
            read_listen: BTreeMap::new(),
            max_replica_lag: defaults::max_replica_lag(),
            read_your_writes: defaults::read_your_writes(),
            zone: None,
            zones: BTreeMap::new(),
            replica_listen: None,
            tls: None,
            backend_tls: None,
            deny_commands: Vec::new(),
            client_idle_timeout: 0,
            migrate: None,
        }
    }

    /// Whether a policy of the pool's own listeners (`read_from`, `read_listen`, a primary
    /// pool's `replica_listen`) reads from replicas; a client's READONLY may yet, later.
    pub fn reads_replicas(&self) -> bool {
        self.replica_listen.is_some()
            || std::iter::once(&self.read_from)
                .chain(self.read_listen.values())
                .any(|&p| p != ReadFrom::Master)
    }

    /// The placement of a sharded pool; the error names the field at fault.
    pub fn sharding(&self) -> Result<Sharding, (String, String)> {
        let kind = self.mode.distribution().ok_or_else(|| {
            (
                "mode".to_string(),
                "a cluster pool has no sharding".to_string(),
            )
        })?;
        let mut servers = Vec::with_capacity(self.servers.len());
        for (i, line) in self.servers.iter().enumerate() {
            // A line without a port is a unix socket; the backend connection opens it by path.
            let server =
                ServerLine::parse(line).map_err(|e| (format!("servers[{i}]"), e.to_string()))?;
            servers.push(server);
        }
        let (hash, hash_tag) = self.placement()?;
        let specs: Vec<_> = servers.iter().map(ServerLine::spec).collect();
        let distribution =
            Distribution::new(kind, &specs).map_err(|e| ("servers".to_string(), e.to_string()))?;
        Ok(Sharding {
            servers,
            hash,
            hash_tag,
            distribution,
        })
    }
}

/// A sharded pool's key hash and hash tag.
pub type Placement = (Hash, Option<[u8; 2]>);

impl PoolConfig {
    /// The key hash and hash tag of a sharded pool; the error names the field at fault.
    pub fn placement(&self) -> Result<Placement, (String, String)> {
        let hash = match &self.hash {
            Some(name) => name
                .parse()
                .map_err(|e: crate::route::UnknownHash| ("hash".to_string(), e.to_string()))?,
            None => Hash::Fnv1a_64,
        };
        let hash_tag = match self.hash_tag.as_deref() {
            None => None,
            Some(tag) => match tag.as_bytes() {
                [open, close] => Some([*open, *close]),
                _ => {
                    return Err((
                        "hash_tag".into(),
                        format!("{tag:?} must be exactly two characters, like \"{{}}\""),
                    ))
                }
            },
        };
        Ok((hash, hash_tag))
    }
}

/// A listen address naming a unix socket rather than `host:port`.
pub fn is_unix_path(listen: &str) -> bool {
    listen.starts_with('/') || listen.starts_with("./") || listen.starts_with("unix:")
}

/// Whether `host` can only be reached over the network: an IP address or a DNS name, never a path
/// (which would open a unix socket) or anything else a node's reply might put there.
pub fn is_network_host(host: &str) -> bool {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    !host.is_empty()
        && host.len() <= 253
        && !host.starts_with(['-', '.'])
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

/// `host:port`, with an IPv6 host in brackets: the inverse of [`split_host_port`].
pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Splits `host:port` (IPv6 hosts in brackets); the host may be a name.
pub fn split_host_port(addr: &str) -> Result<(&str, u16), String> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("'{addr}' is not host:port"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err(format!("'{addr}' has no host"));
    }
    // A colon left in the host is an IPv6 address (bracketed or not) or a mistake, such as a
    // twemproxy server line's `:weight` where only host:port belongs.
    if host.contains(':') && host.parse::<std::net::Ipv6Addr>().is_err() {
        return Err(format!("'{addr}' is not host:port"));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| format!("'{addr}' has an invalid port '{port}'"))?;
    if port == 0 {
        return Err(format!("'{addr}' has port 0"));
    }
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "pools:\n  main:\n    listen: 127.0.0.1:6380\n    mode: cluster\n    servers: [127.0.0.1:7000]\n";

    #[test]
    fn the_password_may_come_from_a_file() {
        let path = std::env::temp_dir().join(format!("slotline-secret-{}", std::process::id()));
        std::fs::write(&path, "from a secret\n").unwrap();
        let yaml = format!("{MINIMAL}    redis_auth_file: {}\n", path.display());
        let config = Config::from_yaml(&yaml).unwrap();
        assert_eq!(
            config.pools["main"].redis_auth.as_deref(),
            Some("from a secret")
        );
        let both = format!("{yaml}    redis_auth: inline\n");
        let err = Config::from_yaml(&both).unwrap_err().to_string();
        assert!(err.contains("not both"), "{err}");
        std::fs::remove_file(&path).unwrap();
        let err = Config::from_yaml(&yaml).unwrap_err().to_string();
        assert!(err.contains("redis_auth_file: cannot read"), "{err}");
    }

    #[test]
    fn backend_users_name_users_and_share_logins() {
        let path = std::env::temp_dir().join(format!("slotline-b2-{}", std::process::id()));
        std::fs::write(&path, "b2secret\n").unwrap();
        let users = "    users: [\"user a1 on >x ~* +@all\", \"user a2 on >y ~* +@all\", \"user a3 on >z ~* +@all\"]\n";
        let yaml = format!(
            "{MINIMAL}{users}    backend_users:\n      a1: {{username: b1, password: p1}}\n      \
             a2: {{username: b2, password_file: {}}}\n      a3: {{username: b1, password: p1}}\n",
            path.display()
        );
        let config = Config::from_yaml(&yaml).unwrap();
        std::fs::remove_file(&path).unwrap();
        let crate::config::BackendLogins { logins, by_user } =
            config.pools["main"].backend_logins();
        // a1 and a3 share one login, so one set of connections.
        assert_eq!(logins, vec![("b1", "p1"), ("b2", "b2secret")]);
        assert_eq!(
            by_user.into_iter().collect::<Vec<_>>(),
            vec![("a1".into(), 0), ("a2".into(), 1), ("a3".into(), 0)]
        );
        let refused = |yaml: String, want: &str| {
            let err = Config::from_yaml(&yaml).unwrap_err().to_string();
            assert!(err.contains(want), "{yaml}: {err}");
        };
        refused(
            format!("{MINIMAL}    backend_users: {{a1: {{username: b1, password: p1}}}}\n"),
            "pools.main.backend_users: needs the pool's users",
        );
        refused(
            format!(
                "{MINIMAL}{users}    backend_users: {{nobody: {{username: b1, password: p1}}}}\n"
            ),
            "pools.main.backend_users.nobody: no user 'nobody' in the users",
        );
        refused(
            format!("{MINIMAL}{users}    backend_users: {{a1: {{username: b1}}}}\n"),
            "pools.main.backend_users.a1.password: is required",
        );
        refused(
            format!("{MINIMAL}{users}    backend_users: {{a1: {{username: b1, password: p1, db: 2}}}}\n"),
            "unknown field",
        );
        // The nodes' users are the clients' only where slotline has none of its own.
        refused(
            format!("{MINIMAL}{users}    node_logins: true\n"),
            "pools.main.node_logins: is for a pool without users of its own",
        );
        let plain = Config::from_yaml(&format!("{MINIMAL}    node_logins: true\n")).unwrap();
        assert!(plain.pools["main"].node_logins);
    }

    #[test]
    fn tls_and_command_settings_are_checked() {
        let refused = |extra: &str, want: &str| {
            let err = Config::from_yaml(&format!("{MINIMAL}{extra}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{extra}: {err}");
        };
        let tls = "    tls:\n      cert_file: c.pem\n      key_file: k.pem\n";
        assert!(Config::from_yaml(&format!("{MINIMAL}{tls}")).is_ok());
        refused(
            &format!("{tls}      tls_user_from_cert: true\n"),
            "pools.main.tls.tls_user_from_cert: needs client_ca_file",
        );
        refused(
            &format!("{tls}      listen: 127.0.0.1:6380\n"),
            "pools.main.tls.listen: 127.0.0.1:6380 is also used by pool main",
        );
        refused(
            "    backend_tls:\n      cert_file: c.pem\n",
            "pools.main.backend_tls.cert_file: cert_file and key_file go together",
        );
        refused(
            "    backend_tls:\n      server_name: \"not a name\"\n",
            "backend_tls.server_name",
        );
        refused(
            "    deny_commands: [KEYS, NOSUCH]\n",
            "pools.main.deny_commands[1]: \"NOSUCH\" is not a Redis command",
        );
        refused(
            "    client_idle_timeout: 999999999999\n",
            "client_idle_timeout",
        );
        let unix = "pools:\n  main:\n    listen: /tmp/s.sock\n    mode: cluster\n    servers: [127.0.0.1:7000]\n";
        let err = Config::from_yaml(&format!("{unix}{tls}"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("a unix socket listener does not speak TLS"),
            "{err}"
        );
    }

    #[test]
    fn defaults_apply() {
        let config = Config::from_yaml(MINIMAL).unwrap();
        let pool = &config.pools["main"];
        assert_eq!(pool.timeout, 1000);
        assert_eq!(pool.server_connections, 1);
        assert_eq!(pool.servers, ["127.0.0.1:7000"]);
        assert!(config.admin.is_none());
        assert_eq!(config.shutdown_grace, 10_000);
        assert_eq!(config.log_level, "info");
        let admin = format!("{MINIMAL}admin:\n  listen: 0.0.0.0:9121\nshutdown_grace: 30000\n");
        let config = Config::from_yaml(&admin).unwrap();
        assert_eq!(config.admin.unwrap().listen, "0.0.0.0:9121");
        assert_eq!(config.shutdown_grace, 30_000);
    }

    #[test]
    fn a_migration_starts_auto_or_manual_with_shadow_reads_a_fraction() {
        let migrating = |extra: &str| {
            format!(
                "{MINIMAL}    migrate:\n{extra}      from:\n        mode: ketama\n        servers: [\"127.0.0.1:6379:1 a\"]\n"
            )
        };
        let config = Config::from_yaml(&migrating("")).unwrap();
        let migrate = config.pools["main"].migrate.clone().unwrap();
        assert_eq!(
            (migrate.start, migrate.shadow_reads),
            (MigrateStart::Auto, 0.01)
        );
        let config =
            Config::from_yaml(&migrating("      start: manual\n      shadow_reads: 0.5\n"));
        let migrate = config.unwrap().pools["main"].migrate.clone().unwrap();
        assert_eq!(
            (migrate.start, migrate.shadow_reads),
            (MigrateStart::Manual, 0.5)
        );
        for (extra, field) in [
            ("      shadow_reads: 2\n", "migrate.shadow_reads"),
            ("      start: later\n", "later"),
        ] {
            let e = Config::from_yaml(&migrating(extra))
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{extra}: {e}");
        }
    }

    #[test]
    fn errors_name_the_field() {
        let typo = MINIMAL.replace("servers:", "tiemout: 5\n    servers:");
        let e = Config::from_yaml(&typo).unwrap_err().to_string();
        assert!(e.contains("tiemout"), "{e}");
        let bad_port = MINIMAL.replace("7000", "70000");
        let e = Config::from_yaml(&bad_port).unwrap_err().to_string();
        assert!(
            e.contains("pools.main.servers[0]") && e.contains("70000"),
            "{e}"
        );
        let bad_mode = MINIMAL.replace("cluster", "clsuter");
        assert!(Config::from_yaml(&bad_mode)
            .unwrap_err()
            .to_string()
            .contains("clsuter"));
        let no_servers = MINIMAL.replace("[127.0.0.1:7000]", "[]");
        assert!(Config::from_yaml(&no_servers)
            .unwrap_err()
            .to_string()
            .contains("pools.main.servers"));
        assert!(Config::from_yaml("pools: {}").is_err());
        for (extra, field) in [
            ("admin:\n  listen: nowhere\n", "admin.listen"),
            ("admin:\n  listen: 127.0.0.1:6380\n", "pools.main.listen"),
            ("admin:\n  lisen: 127.0.0.1:9121\n", "lisen"),
            ("shutdown_grace: 0\n", "shutdown_grace"),
            ("log_level: \"slotline=loud\"\n", "log_level"),
        ] {
            let e = Config::from_yaml(&format!("{MINIMAL}{extra}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{extra}: {e}");
        }
        assert!(Config::from_yaml("::: not yaml").is_err());
    }

    #[test]
    fn sharded_pools_check_their_twemproxy_fields() {
        let pool = "pools:\n  s:\n    listen: 127.0.0.1:6390\n    mode: ketama\n    hash: murmur\n    hash_tag: \"{}\"\n    servers:\n      - 10.0.0.1:6379:1 a\n      - 10.0.0.2:6379:2 b\n";
        let sharding = Config::from_yaml(pool).unwrap().pools["s"]
            .sharding()
            .unwrap();
        assert_eq!(sharding.hash, Hash::Murmur);
        assert_eq!(sharding.hash_tag, Some(*b"{}"));
        for (bad, field) in [
            (pool.replace("murmur", "murmur3"), "pools.s.hash"),
            (pool.replace("\"{}\"", "\"{\""), "pools.s.hash_tag"),
            (pool.replace("6379:2 b", "6379:x b"), "pools.s.servers[1]"),
            (pool.replace("6379:1 a", "6379"), "pools.s.servers[0]"),
        ] {
            let e = Config::from_yaml(&bad).unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
        let cluster_with_hash = MINIMAL.replace("servers:", "hash: md5\n    servers:");
        let e = Config::from_yaml(&cluster_with_hash)
            .unwrap_err()
            .to_string();
        assert!(e.contains("pools.main.hash"), "{e}");
    }

    #[test]
    fn primary_pools_check_their_fields() {
        let sentinel = "pools:\n  p:\n    listen: 127.0.0.1:6390\n    mode: primary\n    read_from: prefer_replica\n    replica_listen: 127.0.0.1:6391\n    sentinel:\n      master_name: mymaster\n      servers: [10.0.0.1:26379, 10.0.0.2:26379]\n";
        let config = Config::from_yaml(sentinel).unwrap();
        let p = &config.pools["p"];
        assert_eq!(p.read_from, ReadFrom::PreferReplica);
        assert_eq!(p.probe_interval, 1000);
        assert!(p.servers.is_empty(), "the sentinels name the members");
        let acl = sentinel
            .replace(
                "mode: primary",
                "mode: primary\n    redis_auth: pw\n    redis_username: app",
            )
            .replace(
                "master_name",
                "username: watcher\n      password: pw2\n      master_name",
            );
        let acl = Config::from_yaml(&acl).unwrap();
        let p = &acl.pools["p"];
        assert_eq!(p.redis_username.as_deref(), Some("app"));
        let s = p.sentinel.as_ref().unwrap();
        assert_eq!(
            (s.username.as_deref(), s.password.as_deref()),
            (Some("watcher"), Some("pw2"))
        );
        let probed = "pools:\n  p:\n    listen: 127.0.0.1:6390\n    mode: primary\n    servers: [10.0.0.1:6379, 10.0.0.2:6379]\n";
        assert_eq!(
            Config::from_yaml(probed).unwrap().pools["p"].read_from,
            ReadFrom::Master
        );
        for (bad, field) in [
            (
                sentinel.replace("mymaster", "\"\""),
                "pools.p.sentinel.master_name",
            ),
            (
                sentinel.replace("10.0.0.2:26379", "10.0.0.2"),
                "pools.p.sentinel.servers[1]",
            ),
            (
                sentinel.replace("      servers: [10.0.0.1:26379, 10.0.0.2:26379]\n", ""),
                "pools.p.sentinel.servers",
            ),
            (
                sentinel.replace("prefer_replica", "replicas"),
                "unknown variant `replicas`",
            ),
            (
                sentinel.replace("127.0.0.1:6391", "127.0.0.1:6390"),
                "pools.p.replica_listen",
            ),
            (
                sentinel.replace("mode: primary", "mode: primary\n    hash: md5"),
                "pools.p.hash",
            ),
            (
                probed.replace("servers: [10.0.0.1:6379, 10.0.0.2:6379]", "servers: []"),
                "pools.p.servers",
            ),
            (
                probed.replace("10.0.0.2:6379", "10.0.0.2:6379:1"),
                "pools.p.servers[1]",
            ),
            (
                probed.replace("mode: primary", "mode: primary\n    probe_interval: 0"),
                "pools.p.probe_interval",
            ),
            (
                // An ACL user needs its password.
                probed.replace("mode: primary", "mode: primary\n    redis_username: app"),
                "pools.p.redis_username",
            ),
            (
                sentinel.replace("master_name", "username: app\n      master_name"),
                "pools.p.sentinel.username",
            ),
        ] {
            let e = Config::from_yaml(&bad).unwrap_err().to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
        // A duration that would overflow the clock is refused.
        let absurd = probed.replace(
            "mode: primary",
            "mode: primary\n    timeout: 18446744073709551615",
        );
        let e = Config::from_yaml(&absurd).unwrap_err().to_string();
        assert!(e.contains("pools.p.timeout"), "{e}");
        // Primary-only fields elsewhere are refused by name.
        let bad = MINIMAL.replace("servers:", "replica_listen: 127.0.0.1:7000\n    servers:");
        let e = Config::from_yaml(&bad).unwrap_err().to_string();
        assert!(e.contains("pools.main.replica_listen"), "{e}");
    }

    #[test]
    fn read_policies_apply_where_there_are_replicas() {
        let cluster = "pools:\n  c:\n    listen: 127.0.0.1:6390\n    mode: cluster\n    servers: [127.0.0.1:7000]\n    read_from: nearest_replica\n    max_replica_lag: 250\n    read_your_writes: false\n    zone: eu-west-1a\n    zones: {\"10.0.0.1:6379\": eu-west-1b}\n    read_listen: {\"127.0.0.1:7379\": replica, \"127.0.0.1:8379\": any}\n";
        let config = Config::from_yaml(cluster).unwrap();
        let c = &config.pools["c"];
        assert_eq!(c.read_from, ReadFrom::NearestReplica);
        assert_eq!((c.max_replica_lag, c.read_your_writes), (250, false));
        assert_eq!(c.read_listen["127.0.0.1:8379"], ReadFrom::Any);
        // Defaults: masters only, read-your-writes on, 1 s of lag.
        let plain = Config::from_yaml(MINIMAL).unwrap();
        let p = &plain.pools["main"];
        assert_eq!(
            (p.read_from, p.max_replica_lag, p.read_your_writes),
            (ReadFrom::Master, 1000, true)
        );
        // A sharded pool's servers have no replicas: a clear error, by field.
        let sharded = "pools:\n  s:\n    listen: 127.0.0.1:6390\n    mode: ketama\n    servers: [\"127.0.0.1:7000:1 a\"]\n";
        for field in [
            "read_from: replica",
            "read_listen: {\"127.0.0.1:7379\": any}",
            "zones: {a: b}",
        ] {
            let e = Config::from_yaml(&format!("{sharded}    {field}\n"))
                .unwrap_err()
                .to_string();
            let name = field.split(':').next().unwrap_or_default();
            assert!(
                e.contains(&format!("pools.s.{name}")) && e.contains("no replicas"),
                "{e}"
            );
        }
        // A listener taken twice, two listeners for one policy, no lag at all, a bad policy.
        for (bad, field) in [
            (cluster.replace("7379", "6390"), "read_listen"),
            (
                cluster.replace("8379\": any", "8379\": replica"),
                "read_listen",
            ),
            (
                cluster.replace("max_replica_lag: 250", "max_replica_lag: 0"),
                "max_replica_lag",
            ),
            (
                cluster.replace("nearest_replica", "closest"),
                "unknown variant `closest`",
            ),
        ] {
            let e = Config::from_yaml(&bad).unwrap_err().to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
    }

    #[test]
    fn kubernetes_source_is_checked_field_by_field() {
        let pool = "pools:\n  s:\n    listen: 127.0.0.1:6390\n    mode: ketama\n    kubernetes:\n      service: redis\n      namespace: cache\n      port: redis\n      names: {redis-0: shard-a}\n";
        let config = Config::from_yaml(pool).unwrap();
        let k8s = config.pools["s"].kubernetes.clone().unwrap();
        assert_eq!(k8s.port, Some(PortRef::Name("redis".into())));
        assert_eq!((k8s.api, k8s.weight), (None, 1));
        assert_eq!(config.pools["s"].resolve_interval, 30_000);
        let numbered = pool.replace("port: redis", "port: 6379");
        assert_eq!(
            Config::from_yaml(&numbered).unwrap().pools["s"]
                .kubernetes
                .clone()
                .unwrap()
                .port,
            Some(PortRef::Number(6379))
        );
        for (bad, field) in [
            (
                pool.replace("service: redis", "service: Redis_0"),
                "pools.s.kubernetes.service",
            ),
            (
                pool.replace("namespace: cache", "namespace: \"\""),
                "pools.s.kubernetes.namespace",
            ),
            (pool.replace("port: redis", "port: 70000"), "70000"),
            (
                pool.replace("shard-a}", "\"a b\"}"),
                "pools.s.kubernetes.names.redis-0",
            ),
            (
                pool.replace("      port: redis\n", "      prot: redis\n"),
                "prot",
            ),
            (
                pool.replace(
                    "    kubernetes:",
                    "    servers: [127.0.0.1:7000:1]\n    kubernetes:",
                ),
                "pools.s.servers",
            ),
            (
                pool.replace("      port: redis\n", "      api: slices\n"),
                "slices",
            ),
            (
                pool.replace(
                    "    kubernetes:",
                    "    resolve_interval: 0\n    kubernetes:",
                ),
                "pools.s.resolve_interval",
            ),
        ] {
            let e = Config::from_yaml(&bad).unwrap_err().to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
        let neither = "pools:\n  s:\n    listen: 127.0.0.1:6390\n    mode: cluster\n";
        let e = Config::from_yaml(neither).unwrap_err().to_string();
        assert!(
            e.contains("pools.s.servers") && e.contains("kubernetes"),
            "{e}"
        );
    }

    #[test]
    fn host_port() {
        assert_eq!(
            split_host_port("redis-0.redis:6379").unwrap(),
            ("redis-0.redis", 6379)
        );
        assert_eq!(split_host_port("[::1]:7000").unwrap(), ("::1", 7000));
        assert!(split_host_port("nohost").is_err());
        assert!(split_host_port(":6379").is_err());
    }
}
