//! Redis Cluster pools: the slot map, how it is learnt and refreshed, and redirect replies.
//!
//! The refresher task is the only writer of the topology. It builds a complete new [`Topology`] off the
//! data path and swaps it in; sessions load the current one with one atomic read and never wait on it.

mod redirect;
mod slots;
mod topology;

pub use redirect::{classify, migrating_to, Redirect};
pub use topology::Topology;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{watch, Notify};
use tokio::time::{sleep, timeout, Instant};

use crate::backend::{self, Node};
use crate::config::PoolConfig;
use crate::discovery::EndpointSet;

/// Shortest time between two topology refreshes: a burst of MOVED replies costs one refresh.
const MIN_REFRESH_GAP: Duration = Duration::from_millis(100);
/// How long one node may take to answer CLUSTER SLOTS.
const SLOTS_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a follower of discovery checks that its cluster still exists.
const FOLLOW_CHECK: Duration = Duration::from_secs(10);
const CLUSTER_SLOTS: &[u8] = b"*2\r\n$7\r\nCLUSTER\r\n$5\r\nSLOTS\r\n";

/// A Redis Cluster behind one pool.
pub struct Cluster {
    topology: ArcSwap<Topology>,
    /// Every node slotline holds connections to, by address: the current masters plus nodes named by
    /// redirects since the last refresh.
    nodes: backend::Nodes,
    /// Where to learn the topology when no known master answers: the configured servers, or the
    /// endpoints discovery last handed over (replaced whole, off the data path).
    seeds: Mutex<Arc<[Arc<str>]>>,
    /// Whether the seeds come from discovery (and so list every node that exists).
    discovered: AtomicBool,
    refresh: Arc<Notify>,
    refresh_interval: Duration,
    refreshes: AtomicUsize,
    /// Refreshes that installed a topology, and those no node answered usefully (read by metrics).
    refresh_ok: AtomicU64,
    refresh_failed: AtomicU64,
    /// The last refresh failed: log the next failure at debug, and say so when one works again.
    refresh_failing: AtomicBool,
    /// Refreshes begun, and (published) refreshes finished: a redirect to a node the topology does
    /// not know waits for one that began after it.
    refreshes_begun: AtomicU64,
    refreshes_done: watch::Sender<u64>,
    /// Reads from replicas, set up when a read policy first needs them.
    reads: OnceLock<ReplicaReads>,
    read_counts: crate::read::Counters,
    /// How replica connections are set up, and how far replicas may lag.
    read_settings: (backend::Settings, u64),
    /// Where each node is: slotline's own zone, and nodes' zones by `host:port` or host (the
    /// config's `zones:`, then discovery's).
    zones: Mutex<Zones>,
}

/// Replicas serving reads: their connections (sent `READONLY` once each) and their progress.
struct ReplicaReads {
    nodes: backend::Nodes,
    tracker: Arc<crate::read::lag::Tracker>,
}

#[derive(Debug, Default)]
struct Zones {
    own: Option<Arc<str>>,
    configured: HashMap<String, Arc<str>>,
    discovered: HashMap<String, Arc<str>>,
}

impl Zones {
    /// The zone of the node at `addr`, if the config or discovery says.
    fn of(&self, addr: &str) -> Option<&Arc<str>> {
        let host = host_of(addr);
        [&self.configured, &self.discovered]
            .into_iter()
            .find_map(|z| z.get(addr).or_else(|| z.get(host)))
    }

    /// Whether the node at `addr` is in slotline's zone (an unknown zone is another zone).
    fn local(&self, addr: &str) -> bool {
        self.own.is_some() && self.of(addr) == self.own.as_ref()
    }
}

impl Cluster {
    /// Creates the cluster handle and starts its refresher. Call [`refresh_now`](Self::refresh_now) to wait
    /// for a first topology.
    pub fn start(config: &PoolConfig, tls: Option<Arc<crate::tls::Connector>>) -> Arc<Cluster> {
        let refresh = Arc::new(Notify::new());
        // One set of logins for masters and replicas: a client's login is the same index on both.
        let settings = backend::Settings::for_pool(config, 0, tls);
        let cluster = Arc::new(Cluster {
            topology: ArcSwap::from_pointee(Topology::empty()),
            nodes: backend::Nodes::new(backend::Settings {
                on_failure: Some(refresh.clone()),
                ..settings.clone()
            }),
            seeds: Mutex::new(
                config
                    .servers
                    .iter()
                    .map(|s| Arc::from(s.as_str()))
                    .collect(),
            ),
            discovered: AtomicBool::new(false),
            refresh,
            refresh_interval: Duration::from_millis(config.refresh_interval),
            refreshes: AtomicUsize::new(0),
            refresh_ok: AtomicU64::new(0),
            refresh_failed: AtomicU64::new(0),
            refresh_failing: AtomicBool::new(false),
            refreshes_begun: AtomicU64::new(0),
            refreshes_done: watch::Sender::new(0),
            reads: OnceLock::new(),
            read_counts: Default::default(),
            read_settings: (settings.then(&[b"READONLY"]), config.max_replica_lag),
            zones: Mutex::new(Zones {
                own: config
                    .zone
                    .clone()
                    .or_else(|| std::env::var("SLOTLINE_ZONE").ok())
                    .filter(|z| !z.is_empty())
                    .map(Arc::from),
                configured: config
                    .zones
                    .iter()
                    .map(|(k, v)| (k.clone(), Arc::from(v.as_str())))
                    .collect(),
                discovered: HashMap::new(),
            }),
        });
        tokio::spawn(refresher(Arc::downgrade(&cluster)));
        if config.reads_replicas() {
            cluster.read_from_replicas();
        }
        cluster
    }

    /// Sets up reads from replicas (connections, lag probes) if they are not yet; the next
    /// topology lists each slot's replicas. Idempotent and cheap once done.
    pub fn read_from_replicas(self: &Arc<Self>) {
        if self.reads.get().is_some() {
            return;
        }
        let (settings, max_lag) = &self.read_settings;
        let tracker = Arc::new(crate::read::lag::Tracker::new(*max_lag));
        let reads = ReplicaReads {
            nodes: backend::Nodes::new(settings.clone()),
            tracker: tracker.clone(),
        };
        if self.reads.set(reads).is_err() {
            return; // another client was first
        }
        let cluster = Arc::downgrade(self);
        tokio::spawn(tracker.run(move || {
            let cluster = cluster.upgrade()?;
            let topology = cluster.topology();
            Some(
                topology
                    .nodes()
                    .iter()
                    .zip(topology.groups())
                    .map(|(master, group)| crate::read::lag::Probed::of(master, group))
                    .collect(),
            )
        }));
        self.request_refresh();
    }

    /// Where reads went.
    pub fn read_counters(&self) -> &crate::read::Counters {
        &self.read_counts
    }

    /// Whether reads may go to replicas (a policy asked for them).
    pub fn reads_replicas(&self) -> bool {
        self.reads.get().is_some()
    }

    /// The replicas reads may use, with their masters, for INFO and metrics.
    pub fn replicas(&self) -> Vec<crate::read::ReplicaView> {
        let topology = self.topology();
        crate::read::describe(topology.nodes().iter().map(Some).zip(topology.groups()))
    }

    /// The current topology; cheap, never blocks.
    pub fn topology(&self) -> arc_swap::Guard<Arc<Topology>> {
        self.topology.load()
    }

    /// Asks for a refresh soon; requests made while one is pending collapse into it.
    /// How this cluster's backend connections are set up.
    pub fn settings(&self) -> &backend::Settings {
        self.nodes.settings()
    }

    pub fn request_refresh(&self) {
        self.refresh.notify_one();
    }

    /// Replaces the seeds (discovery found the cluster's endpoints elsewhere) and looks again soon: if
    /// every node the topology knows has moved, the next refresh starts over from these.
    pub fn set_seeds(&self, seeds: Vec<Arc<str>>) {
        let mut current = self.seeds.lock().unwrap_or_else(PoisonError::into_inner);
        if **current != *seeds {
            tracing::info!(seeds = ?seeds, "cluster seeds changed");
            *current = seeds.into();
            self.discovered.store(true, Ordering::Relaxed);
            self.request_refresh();
        }
    }

    /// Takes every endpoint set discovery hands over as the new seeds, until the cluster or the source
    /// is gone.
    pub fn follow(self: &Arc<Self>, mut endpoints: watch::Receiver<EndpointSet>) {
        let take = |endpoints: &mut watch::Receiver<EndpointSet>, cluster: &Cluster| {
            type Zones = HashMap<String, Arc<str>>;
            let (seeds, zones): (Option<Vec<Arc<str>>>, Zones) = {
                let set = endpoints.borrow_and_update();
                let set = set.as_deref();
                (
                    set.map(|set| set.iter().map(|e| e.addr.clone()).collect()),
                    set.into_iter()
                        .flatten()
                        .filter_map(|e| Some((&e.addr, e.zone.clone()?)))
                        // By address, and by host for a node that listens on another port
                        // than the Service names.
                        .flat_map(|(addr, zone)| {
                            [
                                (addr.to_string(), zone.clone()),
                                (host_of(addr).to_string(), zone),
                            ]
                        })
                        .collect(),
                )
            };
            cluster.set_discovered_zones(zones);
            if let Some(seeds) = seeds {
                cluster.set_seeds(seeds);
            }
        };
        // The set known now is taken at once, so that a refresh right after this call uses it.
        take(&mut endpoints, self);
        let cluster = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                // Woken now and then to notice the pool is gone (removed by a reload): this task's
                // receiver is what keeps the discovery source running.
                let changed = tokio::select! {
                    changed = endpoints.changed() => Some(changed.is_ok()),
                    _ = sleep(FOLLOW_CHECK) => None,
                };
                let Some(c) = cluster.upgrade() else { return };
                match changed {
                    Some(true) => take(&mut endpoints, &c),
                    Some(false) => return, // the source is gone
                    None => {}
                }
            }
        });
    }

    /// The zones discovery tells (by host); a change is taken at the next refresh.
    fn set_discovered_zones(&self, discovered: HashMap<String, Arc<str>>) {
        let mut zones = self.zones.lock().unwrap_or_else(PoisonError::into_inner);
        if zones.discovered != discovered {
            zones.discovered = discovered;
            drop(zones);
            self.request_refresh();
        }
    }

    fn seeds(&self) -> Arc<[Arc<str>]> {
        self.seeds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The node at `addr`, connecting to it if slotline has not yet.
    fn node(&self, addr: &str) -> Arc<Node> {
        self.nodes.get(addr)
    }

    /// The node a redirect names, if the cluster itself named it (a master or a replica of the current
    /// topology). A reply can be made up by a script, so an address it alone names is never connected
    /// to, nor sent a request or a password.
    pub fn redirect_node(&self, addr: &str) -> Option<Arc<Node>> {
        self.topology().knows(addr).then(|| self.node(addr))
    }

    /// Asks for a refresh and waits (up to `wait`) until one that began after this call has finished.
    pub async fn refreshed(&self, wait: Duration) {
        let want = self.refreshes_begun.load(Ordering::Acquire) + 1;
        let mut done = self.refreshes_done.subscribe();
        self.request_refresh();
        let _ = timeout(wait, done.wait_for(|&n| n >= want)).await;
    }

    /// Fetches the slot map from the first node that answers (known masters first, then the seeds) and
    /// installs it. Returns whether a topology was installed.
    pub async fn refresh_now(&self) -> bool {
        self.refreshes_begun.fetch_add(1, Ordering::AcqRel);
        let installed = self.fetch_and_install().await;
        self.refreshes_done.send_modify(|n| *n += 1);
        installed
    }

    async fn fetch_and_install(&self) -> bool {
        let seeds = self.seeds();
        let mut candidates: Vec<Arc<str>> = self
            .topology()
            .nodes()
            .iter()
            .map(|n| n.addr().clone())
            .collect();
        // Start at a different node each time, so one sick node does not answer every refresh.
        if !candidates.is_empty() {
            let shift = self.refreshes.fetch_add(1, Ordering::Relaxed) % candidates.len();
            candidates.rotate_left(shift);
        }
        // Known masters that the seeds no longer list (discovery saw them go: a whole StatefulSet
        // restarted at new IPs) are asked last, so that the seeds bootstrap the topology again without
        // waiting for every old address to time out first.
        if self.discovered.load(Ordering::Relaxed) {
            candidates.sort_by_key(|addr| !seeds.contains(addr));
        }
        for seed in seeds.iter() {
            if !candidates.contains(seed) {
                candidates.push(seed.clone());
            }
        }
        // A node in the middle of a failover may list a master's slots as no one's (it has heard
        // that the master was demoted, not yet who took over). Such a map is installed only if no
        // other node gives a fuller one; installing it would fail those slots, drop the
        // connections to their nodes and refuse redirects there until the next refresh.
        let covered_now = self.topology().covered();
        let mut fallback: Option<(Arc<str>, slots::SlotMap)> = None;
        for addr in candidates {
            let node = self.node(&addr);
            let reply = match timeout(SLOTS_TIMEOUT, node.request(CLUSTER_SLOTS)).await {
                Ok(Ok(reply)) => reply,
                _ => continue,
            };
            match slots::parse(&reply, host_of(&addr)) {
                Ok(map) if map.covered() < covered_now && map.covered() > 0 => {
                    if fallback
                        .as_ref()
                        .is_none_or(|(_, f)| f.covered() < map.covered())
                    {
                        fallback = Some((addr, map));
                    }
                }
                Ok(map) if map.covered() > 0 => return self.installed(&addr, map),
                Ok(_) => tracing::warn!(node = %addr, "CLUSTER SLOTS lists no slots"),
                Err(e) => tracing::warn!(node = %addr, error = %e, "unusable CLUSTER SLOTS reply"),
            }
        }
        if let Some((addr, map)) = fallback {
            return self.installed(&addr, map);
        }
        // A cluster that stays unreachable logs once, not on every retry.
        if self.refresh_failing.swap(true, Ordering::Relaxed) {
            tracing::debug!(seeds = ?seeds, "still no cluster node answers CLUSTER SLOTS");
        } else {
            tracing::warn!(seeds = ?seeds, "no cluster node answered CLUSTER SLOTS");
        }
        self.refresh_failed.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// Topology refreshes so far: (succeeded, failed).
    pub fn refresh_counts(&self) -> (u64, u64) {
        (
            self.refresh_ok.load(Ordering::Relaxed),
            self.refresh_failed.load(Ordering::Relaxed),
        )
    }

    /// Installs `map`, fetched from `addr`, as a successful refresh.
    fn installed(&self, addr: &str, map: slots::SlotMap) -> bool {
        self.install(map);
        self.refresh_ok.fetch_add(1, Ordering::Relaxed);
        if self.refresh_failing.swap(false, Ordering::Relaxed) {
            tracing::info!(node = %addr, "cluster topology refreshed again");
        }
        true
    }

    fn install(&self, map: slots::SlotMap) {
        // Nodes no longer in the topology are dropped here; their connections close once sessions
        // holding the old topology are done with them.
        let masters = self.nodes.keep_only(map.masters.iter().map(String::as_str));
        let groups = self.groups(&map);
        let mut new = Topology::new(map.slots, masters, groups, &map.nodes);
        let old = self.topology.load();
        new.inherit_generation(&old);
        // Every address redirects may lead to from now on is in the log once.
        for addr in new.known().iter().filter(|a| !old.knows(a)) {
            tracing::info!(node = %addr, "cluster node learnt from CLUSTER SLOTS");
        }
        if !old.same_routes(&new) {
            tracing::info!(
                masters = new.nodes().len(),
                slots_covered = new.covered(),
                "cluster topology changed"
            );
        }
        self.topology.store(Arc::new(new));
    }
}

impl Cluster {
    /// Each master's replicas as reads use them (none until a policy reads from replicas): their
    /// connections, progress and zone.
    fn groups(&self, map: &slots::SlotMap) -> Vec<crate::read::Group> {
        let Some(reads) = self.reads.get() else {
            return Vec::new();
        };
        let zones = self.zones.lock().unwrap_or_else(PoisonError::into_inner);
        let all: Vec<&str> = map.replicas.iter().flatten().map(String::as_str).collect();
        let nodes = reads.nodes.keep_only(all);
        let mut nodes = nodes.into_iter();
        let groups: Vec<crate::read::Group> = map
            .masters
            .iter()
            .zip(&map.replicas)
            .map(|(master, replicas)| crate::read::Group {
                master_local: zones.local(master),
                replicas: replicas
                    .iter()
                    .zip(nodes.by_ref())
                    .map(|(addr, node)| crate::read::Replica {
                        state: reads.tracker.state(node.addr()),
                        local: zones.local(addr),
                        zone: zones.of(addr).cloned(),
                        node,
                    })
                    .collect(),
            })
            .collect();
        let addrs: Vec<&Arc<str>> = groups
            .iter()
            .flat_map(|g| g.replicas.iter().map(|r| r.node.addr()))
            .collect();
        reads.tracker.keep_only(&addrs);
        groups
    }
}

/// The refresher: one task, so concurrent refresh requests collapse into one fetch.
async fn refresher(cluster: std::sync::Weak<Cluster>) {
    let mut last = Instant::now() - MIN_REFRESH_GAP;
    loop {
        let Some(c) = cluster.upgrade() else { return };
        let (refresh, interval) = (c.refresh.clone(), c.refresh_interval);
        drop(c);
        tokio::select! {
            _ = refresh.notified() => {}
            _ = sleep(interval) => {}
        }
        let gap = last + MIN_REFRESH_GAP;
        if Instant::now() < gap {
            tokio::time::sleep_until(gap).await;
        }
        let Some(c) = cluster.upgrade() else { return };
        c.refresh_now().await;
        last = Instant::now();
    }
}

/// The host part of `host:port`.
fn host_of(addr: &str) -> &str {
    crate::config::split_host_port(addr).map_or(addr, |(h, _)| h)
}
