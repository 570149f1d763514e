//! Discovery: where a pool's backends are. A source (the `servers:` list with its host names
//! re-resolved, or a Kubernetes Service's endpoints) runs as one task and hands the pool complete endpoint
//! sets, each replacing the last; the pool builds its routing table from a set off the data path.
//!
//! - `resolve`: the static `servers:` list, host names re-resolved periodically and on failures.
//! - `kubernetes`: a Service's EndpointSlices (or core/v1 Endpoints) followed with kube-rs's watcher.
//! - `endpoints`: which endpoints of those objects are backends, and under which stable name.
//! - `status`: the state of a source, for readiness and metrics, and its state-change logging.

mod endpoints;
mod kubernetes;
mod resolve;
mod status;

pub use status::{SourceState, Status, StatusSnapshot};

use std::sync::Arc;

use tokio::sync::{watch, Notify};

use crate::config::{join_host_port, split_host_port, PoolConfig};
use crate::route::ServerLine;

/// One backend as discovery sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    /// Stable identity: what a sharded pool's ring hashes (a pod's hostname or name, or a server
    /// line's twemproxy name), so that a backend back at a new address keeps its keys.
    pub name: Arc<str>,
    /// Where to connect: `ip:port`, or `host:port` when a name could not be resolved yet.
    pub addr: Arc<str>,
    /// Sharded pools' weight.
    pub weight: u32,
    /// The zone the endpoint is in, when discovery says (an EndpointSlice's `zone`).
    pub zone: Option<Arc<str>>,
}

/// A complete set of backends; `None` until the source has learnt one.
pub type EndpointSet = Option<Arc<[Endpoint]>>;

/// A running source: its endpoint sets, its state, and a way to ask it to look again.
#[derive(Clone)]
pub struct Discovery {
    pub endpoints: watch::Receiver<EndpointSet>,
    pub status: Arc<Status>,
    recheck: Arc<Notify>,
    /// A static source's server list, which a reload may replace.
    servers: Option<Arc<watch::Sender<Vec<StaticServer>>>>,
}

impl Discovery {
    /// Starts the source of pool `pool` (the config must have been validated). Must run inside the
    /// runtime.
    pub fn start(pool: &str, config: &PoolConfig) -> Discovery {
        let recheck = Arc::new(Notify::new());
        match &config.kubernetes {
            Some(k8s) => {
                let status = Status::new(pool, format!("kubernetes service {}", k8s.service));
                let (tx, rx) = watch::channel(None);
                tokio::spawn(kubernetes::run(k8s.clone(), tx, status.clone()));
                Discovery {
                    endpoints: rx,
                    status,
                    recheck,
                    servers: None,
                }
            }
            None => {
                let servers = static_servers(config);
                let status = Status::new(pool, "servers".to_string());
                // Addresses only: known at once. Host names: once the resolver has looked them up
                // (it hands over the first set even if a lookup fails, with the name as written).
                let initial = if servers.iter().any(StaticServer::needs_resolving) {
                    None
                } else {
                    status.synced(servers.len());
                    Some(servers.iter().map(StaticServer::unresolved).collect())
                };
                let (tx, rx) = watch::channel(initial);
                let (list, list_rx) = watch::channel(servers);
                tokio::spawn(resolve::run(
                    list_rx,
                    std::time::Duration::from_millis(config.resolve_interval),
                    tx,
                    status.clone(),
                    recheck.clone(),
                ));
                Discovery {
                    endpoints: rx,
                    status,
                    recheck,
                    servers: Some(Arc::new(list)),
                }
            }
        }
    }

    /// A backend connection failed: the source should look again soon (a host name may now resolve to
    /// a new address). Cheap; many calls collapse into one look.
    pub fn recheck(&self) -> Arc<Notify> {
        self.recheck.clone()
    }

    /// Makes `config`'s `servers:` this static source's list (a reload changed only them): the pool
    /// follows as it follows any new endpoint set, connected clients included. False for a Kubernetes
    /// source.
    pub fn replace_servers(&self, config: &PoolConfig) -> bool {
        match &self.servers {
            Some(list) => {
                list.send_replace(static_servers(config));
                true
            }
            None => false,
        }
    }
}

/// What `slotline check` finds of a pool's source beyond its config: for a Kubernetes Service, what the
/// API server lets slotline see (`Ok` with a summary, or the problems, in the running proxy's words);
/// `None` for a static list, which the config check covers.
pub async fn check(config: &PoolConfig) -> Option<Result<String, Vec<String>>> {
    let k8s = config.kubernetes.as_ref()?;
    Some(kubernetes::check(k8s).await)
}

/// One entry of `servers:` as the resolver sees it.
#[derive(Debug, Clone)]
pub(crate) struct StaticServer {
    name: Arc<str>,
    host: String,
    port: u16,
    weight: u32,
}

impl StaticServer {
    /// A unix socket (a twemproxy server line naming a path): its `host` is the path.
    fn is_unix(&self) -> bool {
        self.host.starts_with('/')
    }

    fn needs_resolving(&self) -> bool {
        !self.is_unix() && self.host.parse::<std::net::IpAddr>().is_err()
    }

    fn unresolved(&self) -> Endpoint {
        let addr = match self.is_unix() {
            true => Arc::from(self.host.as_str()),
            false => Arc::from(join_host_port(&self.host, self.port)),
        };
        Endpoint {
            name: self.name.clone(),
            addr,
            weight: self.weight,
            zone: None,
        }
    }
}

/// The `servers:` of a pool: twemproxy lines for sharded pools (named by their ring name), `host:port`
/// seeds for a cluster (named by themselves). Lines that do not parse were refused by validation.
fn static_servers(config: &PoolConfig) -> Vec<StaticServer> {
    config
        .servers
        .iter()
        .filter_map(|line| match config.mode.distribution() {
            Some(_) => {
                let line = ServerLine::parse(line).ok()?;
                Some(StaticServer {
                    name: Arc::from(line.ring_name()),
                    host: line.address.clone(),
                    // None: a unix socket, whose address is its path.
                    port: line.port.unwrap_or(0),
                    weight: line.weight,
                })
            }
            None => {
                let (host, port) = split_host_port(line).ok()?;
                Some(StaticServer {
                    name: Arc::from(line.as_str()),
                    host: host.to_string(),
                    port,
                    weight: 1,
                })
            }
        })
        .collect()
}
