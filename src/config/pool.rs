//! One pool's configuration: its mode, its backends and how keys are placed on them, its limits
//! and logins, its read policy.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::{defaults, BackendTls, KubernetesConfig, ListenTls, MigrateConfig};
use crate::route::{Distribution, DistributionKind, Hash, ServerLine};

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
