//! Metrics read at scrape time from the atomics that pools, clusters and backends keep anyway.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};

use crate::backend::Node;
use crate::server::{Router, Shared};

/// (name, help, type, label names) of every family this collector emits.
const FAMILIES: &[(&str, &str, MetricType, &[&str])] = &[
    (
        "slotline_client_connections",
        "Clients connected now.",
        MetricType::GAUGE,
        &["pool"],
    ),
    (
        "slotline_client_connections_total",
        "Client connections accepted.",
        MetricType::COUNTER,
        &["pool"],
    ),
    (
        "slotline_client_connections_rejected_total",
        "Client connections refused because the pool had client_connections clients.",
        MetricType::COUNTER,
        &["pool"],
    ),
    (
        "slotline_topology_refreshes_total",
        "Cluster topology refreshes, by result.",
        MetricType::COUNTER,
        &["pool", "result"],
    ),
    (
        "slotline_backend_requests_total",
        "Requests written to the backend.",
        MetricType::COUNTER,
        &["backend", "pool"],
    ),
    (
        "slotline_backend_responses_total",
        "Replies read from the backend.",
        MetricType::COUNTER,
        &["backend", "pool"],
    ),
    (
        "slotline_backend_sent_bytes_total",
        "Request bytes written to the backend.",
        MetricType::COUNTER,
        &["backend", "pool"],
    ),
    (
        "slotline_backend_received_bytes_total",
        "Reply bytes read from the backend.",
        MetricType::COUNTER,
        &["backend", "pool"],
    ),
    (
        "slotline_backend_connections",
        "Open connections to the backend.",
        MetricType::GAUGE,
        &["backend", "pool"],
    ),
    (
        "slotline_backend_queued_requests",
        "Requests for the backend not answered yet: queued to be written, or written and awaiting the reply.",
        MetricType::GAUGE,
        &["backend", "pool"],
    ),
    (
        "slotline_backend_errors_total",
        "Backend connection failures: eof (the server closed), error (refused, reset, malformed), timeout (a request unanswered within the timeout).",
        MetricType::COUNTER,
        &["backend", "kind", "pool"],
    ),
    (
        "slotline_backend_ejected",
        "1 while the backend is ejected from its pool's ring (auto_eject_hosts), else 0.",
        MetricType::GAUGE,
        &["backend", "pool"],
    ),
    (
        "slotline_backend_ejections_total",
        "Times the backend was ejected.",
        MetricType::COUNTER,
        &["backend", "pool"],
    ),
    (
        "slotline_discovery_synced",
        "1 while the pool's discovery source follows its backends; 0 while it is starting or failing (the last known backends stay in use).",
        MetricType::GAUGE,
        &["pool"],
    ),
    (
        "slotline_discovery_errors_total",
        "Failures of the pool's discovery source (API server unreachable or refusing, names not resolving); each retry counts.",
        MetricType::COUNTER,
        &["pool"],
    ),
    (
        "slotline_master",
        "1 for the backend a primary pool sends writes to now.",
        MetricType::GAUGE,
        &["backend", "pool"],
    ),
    (
        "slotline_master_last_switch_timestamp_seconds",
        "When a primary pool's master last changed (seconds since the Unix epoch), labelled with how the change was noticed: sentinel (a majority of the sentinels), sentinel_event (+switch-master), sentinel_failover (the replica a sentinel chose answered as master while writes were held), role_probe.",
        MetricType::GAUGE,
        &["pool", "via"],
    ),
    (
        "slotline_replicas_healthy",
        "Replicas of a primary pool whose link to the master is up (where reads go with read_from: replica).",
        MetricType::GAUGE,
        &["pool"],
    ),
    (
        "slotline_failover_holds_total",
        "Times a primary pool held its clients' writes while a sentinel promoted a replica, so that none the old master acknowledged was lost.",
        MetricType::COUNTER,
        &["pool"],
    ),
    (
        "slotline_migration_keys_moved_total",
        "Keys a migrating pool moved from its old placement: by the background mover (by=\"mover\"), or, counted once per command, by a client's command before it ran (by=\"touch\").",
        MetricType::COUNTER,
        &["by", "pool"],
    ),
    (
        "slotline_migration_keys_remaining",
        "Keys on the old servers not yet emptied, when last counted (a ring's servers that stay count the keys they keep).",
        MetricType::GAUGE,
        &["pool"],
    ),
    (
        "slotline_migration_errors_total",
        "MIGRATE and SCAN steps of the background mover that failed (each is tried again on the next pass).",
        MetricType::COUNTER,
        &["pool"],
    ),
    (
        "slotline_migration_stray_keys_total",
        "Keys found on an old server after it was emptied: something writes to the old placement behind slotline (a client still on twemproxy).",
        MetricType::COUNTER,
        &["pool"],
    ),
    (
        "slotline_migration_done",
        "1 once every old server of a migrating pool is empty, else 0.",
        MetricType::GAUGE,
        &["pool"],
    ),
    (
        "slotline_auth_failures_total",
        "Failed logins (AUTH, HELLO AUTH) from the pool's clients; each delays its client's next replies.",
        MetricType::COUNTER,
        &["pool"],
    ),
    (
        "slotline_user_clients",
        "Clients logged in as the user now (pools with users of their own: aclfile, users).",
        MetricType::GAUGE,
        &["pool", "user"],
    ),
    (
        "slotline_user_commands_total",
        "Commands the user's clients sent.",
        MetricType::COUNTER,
        &["pool", "user"],
    ),
    (
        "slotline_user_denials_total",
        "Commands refused to the user by its ACL rules (command, key or channel).",
        MetricType::COUNTER,
        &["pool", "user"],
    ),
    (
        "slotline_replica",
        "1 for each replica a cluster pool may read from, labelled with its master and zone (\"\" when unknown); 1 for a primary pool's healthy replicas.",
        MetricType::GAUGE,
        &["backend", "master", "pool", "zone"],
    ),
    (
        "slotline_replica_lag_milliseconds",
        "How far the replica is behind its master, measured from replication offsets (absent while unknown: unreachable, unlinked).",
        MetricType::GAUGE,
        &["backend", "pool"],
    ),
    (
        "slotline_replica_serving_reads",
        "1 while the replica qualifies for reads (linked, answering, within max_replica_lag).",
        MetricType::GAUGE,
        &["backend", "pool"],
    ),
    (
        "slotline_reads_total",
        "Read-only commands a read policy placed: to=replica; to=master_fallback (no replica qualified); to=master_own_write (the client's write was not on a replica yet: read-your-writes); to=master_retry (its replica failed it, run again on the master).",
        MetricType::COUNTER,
        &["pool", "to"],
    ),
    (
        "slotline_migration_shadow_reads_total",
        "Reads of a migrating pool whose key was also looked for on the other side (migrate.shadow_reads of them); result=mismatch: a copy was there (a misplaced key, or a key the new side should not hold yet).",
        MetricType::COUNTER,
        &["pool", "result"],
    ),
    (
        "slotline_migration_bytes_moved_total",
        "What the keys the background mover moved took on their old servers (MEMORY USAGE, in bytes).",
        MetricType::COUNTER,
        &["pool"],
    ),
    (
        "slotline_migration_rate_keys_per_second",
        "Keys a migrating pool moved a second (mover and touch), on average since this slotline started moving.",
        MetricType::GAUGE,
        &["pool"],
    ),
    (
        "slotline_migration_verifying",
        "1 while a migrating pool serves from its old placement and moves nothing (start: manual, before `slotline migrate start`), else 0.",
        MetricType::GAUGE,
        &["pool"],
    ),
];

/// Indexes into [`FAMILIES`], so that the code below reads by name.
mod family {
    pub const CLIENTS: usize = 0;
    pub const ACCEPTED: usize = 1;
    pub const REJECTED: usize = 2;
    pub const REFRESHES: usize = 3;
    pub const REQUESTS: usize = 4;
    pub const RESPONSES: usize = 5;
    pub const SENT: usize = 6;
    pub const RECEIVED: usize = 7;
    pub const CONNECTIONS: usize = 8;
    pub const QUEUED: usize = 9;
    pub const ERRORS: usize = 10;
    pub const EJECTED: usize = 11;
    pub const EJECTIONS: usize = 12;
    pub const DISCOVERY_SYNCED: usize = 13;
    pub const DISCOVERY_ERRORS: usize = 14;
    pub const MASTER: usize = 15;
    pub const LAST_SWITCH: usize = 16;
    pub const REPLICAS: usize = 17;
    pub const FAILOVER_HOLDS: usize = 18;
    pub const MIGRATION_MOVED: usize = 19;
    pub const MIGRATION_REMAINING: usize = 20;
    pub const MIGRATION_ERRORS: usize = 21;
    pub const MIGRATION_STRAY: usize = 22;
    pub const MIGRATION_DONE: usize = 23;
    pub const AUTH_FAILURES: usize = 24;
    pub const USER_CLIENTS: usize = 25;
    pub const USER_COMMANDS: usize = 26;
    pub const USER_DENIALS: usize = 27;
    pub const REPLICA: usize = 28;
    pub const REPLICA_LAG: usize = 29;
    pub const REPLICA_SERVING: usize = 30;
    pub const READS: usize = 31;
    pub const MIGRATION_SHADOW: usize = 32;
    pub const MIGRATION_BYTES: usize = 33;
    pub const MIGRATION_RATE: usize = 34;
    pub const MIGRATION_VERIFYING: usize = 35;
}

/// A counter or gauge the data path keeps, as it is now.
fn read(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// The replicas a pool may read from: who they are, their lag, whether they serve reads.
fn replicas(f: &mut [Family], pool: &str, replicas: &[crate::read::ReplicaView]) {
    use family::*;
    for view in replicas {
        let (addr, state) = (&**view.replica.node.addr(), &view.replica.state);
        let zone = view.replica.zone.as_deref().unwrap_or("");
        let at = [
            ("backend", addr),
            ("master", &*view.master),
            ("pool", pool),
            ("zone", zone),
        ];
        f[REPLICA].add(&at, 1);
        let at = [("backend", addr), ("pool", pool)];
        if let Some(lag) = state.lag_ms() {
            f[REPLICA_LAG].add(&at, lag);
        }
        f[REPLICA_SERVING].add(&at, u64::from(state.qualifies()));
    }
}

/// A pool's reads by where they went.
fn reads(family: &mut Family, pool: &str, counters: &crate::read::Counters) {
    let [replica, fallback, own_write, retry] = counters.get();
    for (to, n) in [
        ("replica", replica),
        ("master_fallback", fallback),
        ("master_own_write", own_write),
        ("master_retry", retry),
    ] {
        family.add(&[("pool", pool), ("to", to)], n);
    }
}

/// Reads every pool's counters when Prometheus scrapes; nothing is recorded on the data path for it.
pub struct PoolsCollector {
    shared: Arc<Shared>,
    descs: Vec<Desc>,
}

impl PoolsCollector {
    pub fn new(shared: Arc<Shared>) -> Result<PoolsCollector, prometheus::Error> {
        let descs = FAMILIES
            .iter()
            .map(|(name, help, _, labels)| {
                let labels = labels.iter().map(|l| l.to_string()).collect();
                Desc::new(
                    name.to_string(),
                    help.to_string(),
                    labels,
                    Default::default(),
                )
            })
            .collect::<Result<_, _>>()?;
        Ok(PoolsCollector { shared, descs })
    }
}

/// One family being filled during a scrape.
struct Family(MetricFamily);

impl Family {
    fn new(index: usize) -> Family {
        let (name, help, kind, _) = FAMILIES[index];
        let mut mf = MetricFamily::default();
        mf.set_name(name.to_string());
        mf.set_help(help.to_string());
        mf.set_field_type(kind);
        Family(mf)
    }

    /// Adds one sample; `labels` must be sorted by name, as the registry's own metrics are.
    fn add(&mut self, labels: &[(&str, &str)], value: u64) {
        let pairs = labels
            .iter()
            .map(|(k, v)| {
                let mut pair = LabelPair::default();
                pair.set_name(k.to_string());
                pair.set_value(v.to_string());
                pair
            })
            .collect();
        let mut metric = Metric::default();
        metric.set_label(pairs);
        if self.0.get_field_type() == MetricType::GAUGE {
            let mut gauge = Gauge::default();
            gauge.set_value(value as f64);
            metric.set_gauge(gauge);
        } else {
            let mut counter = Counter::default();
            counter.set_value(value as f64);
            metric.set_counter(counter);
        }
        self.0.mut_metric().push(metric);
    }
}

impl Collector for PoolsCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        use family::*;
        let mut f: Vec<Family> = (0..FAMILIES.len()).map(Family::new).collect();
        // Listeners of one pool share its router: its reads are counted under the first.
        let mut routers = std::collections::HashSet::new();
        for pool in self.shared.pools() {
            let name = pool.name.as_str();
            let stats = pool.counters();
            f[CLIENTS].add(&[("pool", name)], stats.clients);
            f[ACCEPTED].add(&[("pool", name)], stats.accepted);
            f[REJECTED].add(&[("pool", name)], stats.rejected);
            // A replica listener's pool shares its primary pool's users: counted there once.
            if !pool.read_only {
                f[AUTH_FAILURES].add(&[("pool", name)], pool.acl.failures.total());
                let users = pool.acl.configured().then(|| pool.acl.stats());
                for (user, counts) in users.unwrap_or_default() {
                    let at = [("pool", name), ("user", &*user)];
                    f[USER_CLIENTS].add(&at, read(&counts.clients));
                    f[USER_COMMANDS].add(&at, read(&counts.commands));
                    f[USER_DENIALS].add(&at, read(&counts.denials));
                }
            }
            if let Some(migration) = &pool.migration {
                let p = &migration.progress;
                f[MIGRATION_MOVED].add(&[("by", "mover"), ("pool", name)], read(&p.moved));
                f[MIGRATION_MOVED].add(&[("by", "touch"), ("pool", name)], read(&p.moved_on_touch));
                f[MIGRATION_REMAINING].add(&[("pool", name)], read(&p.remaining));
                f[MIGRATION_ERRORS].add(&[("pool", name)], read(&p.errors));
                f[MIGRATION_STRAY].add(&[("pool", name)], read(&p.stray));
                let done = p.done.load(Ordering::Relaxed);
                f[MIGRATION_DONE].add(&[("pool", name)], u64::from(done));
                let (reads, mismatches) = (read(&p.shadow_reads), read(&p.shadow_mismatches));
                let at = |result| [("pool", name), ("result", result)];
                f[MIGRATION_SHADOW].add(&at("match"), reads.saturating_sub(mismatches));
                f[MIGRATION_SHADOW].add(&at("mismatch"), mismatches);
                f[MIGRATION_BYTES].add(&[("pool", name)], read(&p.bytes));
                let rate = migration.rate_per_sec().round() as u64;
                f[MIGRATION_RATE].add(&[("pool", name)], rate);
                let verifying = migration.verifying();
                f[MIGRATION_VERIFYING].add(&[("pool", name)], u64::from(verifying));
            }
            if let Some(status) = pool.discovery() {
                let snapshot = status.snapshot();
                let synced = matches!(snapshot.state, crate::discovery::SourceState::Synced);
                f[DISCOVERY_SYNCED].add(&[("pool", name)], u64::from(synced));
                f[DISCOVERY_ERRORS].add(&[("pool", name)], snapshot.errors);
            }
            // (node, ejected now) for every backend the pool routes to.
            let backends: Vec<(Arc<Node>, bool)> = match &pool.router {
                Router::Cluster(cluster) => {
                    let (ok, failed) = cluster.refresh_counts();
                    f[REFRESHES].add(&[("pool", name), ("result", "ok")], ok);
                    f[REFRESHES].add(&[("pool", name), ("result", "error")], failed);
                    let topology = cluster.topology();
                    if routers.insert(Arc::as_ptr(cluster) as usize) {
                        replicas(&mut f, name, &cluster.replicas());
                        reads(&mut f[READS], name, cluster.read_counters());
                    }
                    let replicas = topology.groups().iter().flat_map(|g| g.replicas.iter());
                    topology
                        .nodes()
                        .iter()
                        .chain(replicas.map(|r| &r.node))
                        .map(|n| (n.clone(), false))
                        .collect()
                }
                Router::Shards(shards) => {
                    let table = shards.table();
                    let live: Vec<&Arc<Node>> = table.in_service().collect();
                    let members = shards.members();
                    let nodes = members.nodes().iter();
                    nodes
                        .map(|n| (n.clone(), !live.iter().any(|l| Arc::ptr_eq(l, n))))
                        .collect()
                }
                Router::Primary(primary) => {
                    let roles = primary.roles();
                    if let Some(master) = &roles.master {
                        f[MASTER].add(&[("backend", master.addr()), ("pool", name)], 1);
                    }
                    if let Some(switch) = primary.last_switch() {
                        let at = switch
                            .at
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs());
                        f[LAST_SWITCH].add(&[("pool", name), ("via", switch.via.label())], at);
                    }
                    f[REPLICAS].add(&[("pool", name)], roles.replicas.len() as u64);
                    if routers.insert(Arc::as_ptr(primary) as usize) {
                        replicas(&mut f, name, &primary.replicas());
                        reads(&mut f[READS], name, primary.read_counters());
                    }
                    f[FAILOVER_HOLDS].add(&[("pool", name)], primary.holds().0);
                    let nodes = roles.master.iter().chain(&roles.replicas);
                    nodes.map(|n| (n.clone(), false)).collect()
                }
            };
            let mut seen = std::collections::HashSet::new();
            for (node, ejected) in &backends {
                // The same address twice in one pool would be a duplicate series, which Prometheus
                // refuses: report it once.
                if !seen.insert(node.addr().clone()) {
                    continue;
                }
                let s = node.stats();
                let at = [("backend", &**node.addr()), ("pool", name)];
                let gauge = |g: &AtomicI64| g.load(Ordering::Relaxed).max(0) as u64;
                f[REQUESTS].add(&at, read(&s.requests));
                f[RESPONSES].add(&at, read(&s.responses));
                f[SENT].add(&at, read(&s.request_bytes));
                f[RECEIVED].add(&at, read(&s.response_bytes));
                f[CONNECTIONS].add(&at, gauge(&s.server_connections));
                f[QUEUED].add(&at, s.queued.requests() + gauge(&s.out_queue));
                for (kind, counter) in [
                    ("eof", &s.server_eof),
                    ("error", &s.server_err),
                    ("timeout", &s.server_timedout),
                ] {
                    let labels = [at[0], ("kind", kind), at[1]];
                    f[ERRORS].add(&labels, read(counter));
                }
                f[EJECTED].add(&at, u64::from(*ejected));
                f[EJECTIONS].add(&at, read(&s.ejections));
            }
        }
        let families = f;
        families
            .into_iter()
            .map(|f| f.0)
            .filter(|mf| !mf.get_metric().is_empty())
            .collect()
    }
}
