//! The INFO reply: Redis-style sections describing slotline itself.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use super::session::ClientState;
use super::{Pool, Router};
use crate::command::{self, Request};

/// What the masters hold, summed, for the sections slotline cannot know alone (`keyspace`, and the
/// keyspace counters of `stats`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct NodeFacts {
    keys: u64,
    expires: u64,
    /// Weighted by each node's keys with a TTL, in ms.
    avg_ttl: u64,
    keyspace_hits: u64,
    keyspace_misses: u64,
    expired_keys: u64,
    evicted_keys: u64,
    /// The most any master has: a script SCRIPT LOAD sent through slotline is on every master, one
    /// only EVAL ran is on the master that ran it.
    cached_scripts: u64,
}

/// What slotline asks every master for an INFO that shows their data.
pub(crate) const NODE_SECTIONS: &[u8] =
    b"*4\r\n$4\r\nINFO\r\n$5\r\nstats\r\n$8\r\nkeyspace\r\n$6\r\nmemory\r\n";

impl NodeFacts {
    /// Sums the masters' INFO replies (bulk strings; anything else is skipped).
    pub(crate) fn sum<'a>(replies: impl Iterator<Item = &'a [u8]>) -> NodeFacts {
        let mut facts = NodeFacts::default();
        let mut ttl_weighted: u128 = 0;
        for reply in replies {
            let text = String::from_utf8_lossy(reply);
            for line in text.lines() {
                let Some((field, value)) = line.split_once(':') else {
                    continue;
                };
                let number = || value.trim().parse::<u64>().unwrap_or(0);
                match field {
                    "keyspace_hits" => facts.keyspace_hits += number(),
                    "keyspace_misses" => facts.keyspace_misses += number(),
                    "expired_keys" => facts.expired_keys += number(),
                    "evicted_keys" => facts.evicted_keys += number(),
                    "number_of_cached_scripts" => {
                        facts.cached_scripts = facts.cached_scripts.max(number())
                    }
                    "db0" => {
                        let get = |name: &str| {
                            value
                                .split(',')
                                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                                .and_then(|v| v.trim().parse::<u64>().ok())
                                .unwrap_or(0)
                        };
                        let expires = get("expires");
                        facts.keys += get("keys");
                        facts.expires += expires;
                        ttl_weighted += u128::from(get("avg_ttl")) * u128::from(expires);
                    }
                    _ => {}
                }
            }
        }
        if facts.expires > 0 {
            facts.avg_ttl = (ttl_weighted / u128::from(facts.expires)) as u64;
        }
        facts
    }
}

/// Whether INFO with these arguments shows data only the masters have.
pub(crate) fn needs_nodes(req: Request<'_>) -> bool {
    let wanted = sections(req);
    wanted.is_empty()
        || wanted.iter().any(|w| {
            matches!(
                w.as_str(),
                "keyspace" | "stats" | "memory" | "all" | "everything" | "default"
            )
        })
}

fn sections(req: Request<'_>) -> Vec<String> {
    (1..req.argc())
        .map(|i| String::from_utf8_lossy(req.arg(i)).to_lowercase())
        .collect()
}

/// INFO's reply: slotline's own sections, with what the masters hold (`nodes`, when asked).
pub(crate) fn render(
    pool: &Pool,
    _client: &ClientState,
    req: Request<'_>,
    nodes: Option<&NodeFacts>,
) -> String {
    let wanted = sections(req);
    let show = |section: &str| {
        wanted.is_empty()
            || wanted
                .iter()
                .any(|w| w == section || w == "all" || w == "everything" || w == "default")
    };
    // Not among the default sections, as in Redis.
    let show_extra = |section: &str| {
        wanted
            .iter()
            .any(|w| w == section || w == "all" || w == "everything")
    };
    let nodes = nodes.cloned().unwrap_or_default();
    let shared = &pool.shared;
    let uptime = shared.started.elapsed().as_secs();
    let mut out = String::new();
    if show("server") {
        let _ = write!(
            out,
            "# Server\r\nredis_version:{}\r\nslotline_version:{}\r\nredis_mode:standalone\r\n\
             proxy:slotline\r\nos:{} {}\r\narch_bits:{}\r\nprocess_id:{}\r\ntcp_port:{}\r\n\
             uptime_in_seconds:{}\r\nuptime_in_days:{}\r\nconfig_file:{}\r\n\r\n",
            command::TABLE_REDIS_VERSION,
            env!("CARGO_PKG_VERSION"),
            std::env::consts::OS,
            std::env::consts::ARCH,
            usize::BITS,
            std::process::id(),
            pool.port().unwrap_or(0),
            uptime,
            uptime / 86400,
            shared.config_file.as_deref().unwrap_or(""),
        );
    }
    let pools = shared.pools();
    if show("clients") {
        let _ = write!(
            out,
            "# Clients\r\nconnected_clients:{}\r\nmaxclients:{}\r\nblocked_clients:{}\r\ntracking_clients:{}\r\n\r\n",
            shared.connected_clients.load(Ordering::Relaxed),
            pools
                .iter()
                .map(|p| p.config.client_connections)
                .sum::<usize>(),
            shared.blocked_clients.load(Ordering::Relaxed),
            pools.iter().map(|p| p.tracking.clients()).sum::<usize>(),
        );
    }
    if show("memory") {
        // slotline's own memory, not the nodes': the process's resident set (the allocator's own
        // count is not read without unsafe code).
        let rss = proc_status_kib("VmRSS").unwrap_or(0) * 1024;
        let peak = proc_status_kib("VmHWM").unwrap_or(0) * 1024;
        let _ = write!(
            out,
            "# Memory\r\nused_memory:{rss}\r\nused_memory_human:{}\r\nused_memory_rss:{rss}\r\n\
             used_memory_rss_human:{}\r\nused_memory_peak:{peak}\r\nused_memory_peak_human:{}\r\n\
             number_of_cached_scripts:{}\r\n\
             maxmemory:0\r\nmaxmemory_human:0B\r\nmaxmemory_policy:noeviction\r\nmem_allocator:libc\r\n\r\n",
            human(rss),
            human(rss),
            human(peak),
            nodes.cached_scripts,
        );
    }
    if show("stats") {
        let tracked = pools.iter().map(|p| p.tracking.totals());
        let (keys, items, prefixes) = tracked.fold((0, 0, 0), |(k, i, p), (k2, i2, p2)| {
            (k + k2, i + i2, p + p2)
        });
        let _ = write!(
            out,
            "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\nrejected_connections:{}\r\n\
             total_net_input_bytes:{}\r\ntotal_net_output_bytes:{}\r\ntotal_error_replies:{}\r\n\
             expired_keys:{}\r\nevicted_keys:{}\r\nkeyspace_hits:{}\r\nkeyspace_misses:{}\r\n\
             tracking_total_keys:{keys}\r\ntracking_total_items:{items}\r\ntracking_total_prefixes:{prefixes}\r\n\r\n",
            shared.total_connections.load(Ordering::Relaxed),
            shared.total_commands.load(Ordering::Relaxed),
            shared.rejected_connections.load(Ordering::Relaxed),
            pools.iter().map(|p| p.metrics.client_received_bytes.get()).sum::<u64>(),
            pools.iter().map(|p| p.metrics.client_sent_bytes.get()).sum::<u64>(),
            pools
                .iter()
                .flat_map(|p| p.metrics.errors.iter().map(|e| e.get()))
                .sum::<u64>(),
            nodes.expired_keys,
            nodes.evicted_keys,
            nodes.keyspace_hits,
            nodes.keyspace_misses,
        );
    }
    if show("cpu") {
        let (user, sys) = cpu_seconds().unwrap_or((0.0, 0.0));
        let _ = write!(
            out,
            "# CPU\r\nused_cpu_sys:{sys:.6}\r\nused_cpu_user:{user:.6}\r\n\
             used_cpu_sys_children:0.000000\r\nused_cpu_user_children:0.000000\r\n\r\n"
        );
    }
    if show_extra("commandstats") {
        crate::cmdstats::CommandStats::render(
            pools.iter().map(|p| &p.metrics.commandstats),
            &mut out,
        );
    }
    if show("errorstats") {
        shared.errorstats.render(&mut out);
    }
    if show("keyspace") {
        // Database 0 of every master, summed (Redis lists a database only when it has keys).
        out.push_str("# Keyspace\r\n");
        if nodes.keys > 0 {
            let _ = write!(
                out,
                "db0:keys={},expires={},avg_ttl={}\r\n",
                nodes.keys, nodes.expires, nodes.avg_ttl
            );
        }
        out.push_str("\r\n");
    }
    if let Some(migration) = pool.migration.as_ref().filter(|_| show("migration")) {
        migration.info(&mut out);
    }
    if show("users") {
        pool.acl.info(&mut out);
    }
    if show("slotline") {
        let _ = write!(
            out,
            "# Slotline\r\npool:{}\r\nlisten:{}\r\n",
            pool.name, pool.config.listen
        );
        // TLS: to clients (on which listener), to the nodes (and whether they go unverified).
        let client_tls = match &pool.config.tls {
            Some(tls) => tls.listen.as_deref().unwrap_or(&pool.config.listen),
            None => "",
        };
        let backend_tls = match &pool.backend_tls {
            Some(tls) if tls.insecure() => "insecure_skip_verify",
            Some(_) => "verified",
            None => "off",
        };
        let _ = write!(
            out,
            "tls_listen:{client_tls}\r\ntls_handshake_failures:{}\r\nbackend_tls:{backend_tls}\r\n",
            pool.tls_failures.load(Ordering::Relaxed)
        );
        // "kind:count\r\nkind_addresses:a,b,c" for the backends a pool routes to.
        let backends =
            |out: &mut String, kind: &str, nodes: &[std::sync::Arc<crate::backend::Node>]| {
                let addrs: Vec<&str> = nodes.iter().map(|n| &**n.addr()).collect();
                let _ = write!(
                    out,
                    "{kind}s:{}\r\n{kind}_addresses:{}\r\n",
                    addrs.len(),
                    addrs.join(",")
                );
            };
        match &pool.router {
            Router::Cluster(cluster) => {
                let topology = cluster.topology();
                out.push_str("mode:cluster\r\n");
                backends(&mut out, "master", topology.nodes());
                let _ = write!(out, "slots_covered:{}\r\n", topology.covered());
            }
            Router::Shards(shards) => {
                let _ = write!(
                    out,
                    "mode:{}\r\nhash:{}\r\n",
                    shards.distribution(),
                    shards.hash()
                );
                backends(&mut out, "server", shards.members().nodes());
            }
            Router::Primary(primary) => primary_section(&mut out, primary),
        }
        if let Some(status) = pool.discovery() {
            discovery(&mut out, &status.snapshot());
        }
        pools_and_backends(&mut out, &pools, shared);
    }
    out
}

/// A `kB` line of /proc/self/status, in KiB (Linux; None elsewhere).
fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// The process's user and system CPU time in seconds, from /proc/self/stat (in USER_HZ ticks, which
/// Linux fixes at 100 for user space).
fn cpu_seconds() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces: the fields that follow it start after its `)`.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let mut fields = rest.split(' ').skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let sys: u64 = fields.next()?.parse().ok()?;
    Some((user as f64 / 100.0, sys as f64 / 100.0))
}

/// Bytes as Redis writes them for humans: `1.50M`.
fn human(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0..=1023 => format!("{bytes}B"),
        1024..=1048575 => format!("{:.2}K", b / 1024.0),
        1048576..=1073741823 => format!("{:.2}M", b / 1048576.0),
        _ => format!("{:.2}G", b / 1073741824.0),
    }
}

/// Every pool of the process, one line each, then one line per backend, so that one `INFO slotline`
/// on any pool shows the whole proxy.
fn pools_and_backends(out: &mut String, pools: &[std::sync::Arc<Pool>], shared: &super::Shared) {
    let ready = shared.readiness();
    let _ = write!(
        out,
        "ready:{}\r\nready_reason:{}\r\npools:{}\r\n",
        u8::from(ready.is_ok()),
        ready.err().unwrap_or_default(),
        pools.len()
    );
    for pool in pools {
        let counters = pool.counters();
        let nodes = pool.router.backends();
        let mode = match &pool.router {
            Router::Cluster(_) => "cluster".to_string(),
            Router::Shards(shards) => shards.distribution().to_string(),
            Router::Primary(_) => "primary".to_string(),
        };
        let _ = write!(
            out,
            "pool_{}:mode={mode},listen={},clients={},connections_received={},rejected_connections={},backends={}\r\n",
            pool.name,
            pool.config.listen,
            counters.clients,
            counters.accepted,
            counters.rejected,
            nodes.len(),
        );
        for (i, node) in nodes.iter().enumerate() {
            let s = node.stats();
            let read = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
            let gauge = |g: &std::sync::atomic::AtomicI64| g.load(Ordering::Relaxed).max(0);
            let _ = write!(
                out,
                "backend_{}_{i}:addr={},connections={},requests={},responses={},queued={},errors={}\r\n",
                pool.name,
                node.addr(),
                gauge(&s.server_connections),
                read(&s.requests),
                read(&s.responses),
                s.queued.requests() as i64 + gauge(&s.out_queue),
                read(&s.server_eof) + read(&s.server_err) + read(&s.server_timedout),
            );
        }
        read_section(out, pool);
    }
    out.push_str("\r\n");
}

/// Where the pool's reads go: `reads_<pool>` (its policy and counts: to replicas, to the master
/// for want of a qualifying replica, to the master for the client's own write, run again on the
/// master after a replica failed them), and one `replica_<pool>_<i>` line per replica (its master,
/// zone, whether it is linked and serving reads, lag, requests).
fn read_section(out: &mut String, pool: &Pool) {
    let Some(counters) = pool.router.read_counters() else {
        return;
    };
    let [to_replicas, fallbacks, own_writes, retried] = counters.get();
    let _ = write!(
        out,
        "reads_{}:read_from={},read_your_writes={},max_replica_lag_ms={},to_replicas={to_replicas},master_fallbacks={fallbacks},master_own_writes={own_writes},master_retries={retried}\r\n",
        pool.name,
        pool.config.read_from.name(),
        u8::from(pool.config.read_your_writes),
        pool.config.max_replica_lag,
    );
    let replicas = match &pool.router {
        Router::Cluster(cluster) => cluster.replicas(),
        Router::Primary(primary) => primary.replicas(),
        Router::Shards(_) => return,
    };
    for (i, view) in replicas.iter().enumerate() {
        let (r, state) = (&view.replica, &view.replica.state);
        let lag = state
            .lag_ms()
            .map_or("unknown".to_string(), |l| l.to_string());
        let _ = write!(
            out,
            "replica_{}_{i}:addr={},role=replica,master={},zone={},linked={},serving_reads={},lag_ms={lag},requests={}\r\n",
            pool.name,
            r.node.addr(),
            view.master,
            r.zone.as_deref().unwrap_or(""),
            u8::from(state.linked()),
            u8::from(state.qualifies()),
            r.node.stats().requests.load(Ordering::Relaxed),
        );
    }
}

/// how often writes were held for a promotion.
fn primary_section(out: &mut String, primary: &crate::primary::Primary) {
    let roles = primary.roles();
    let master = roles.master.as_ref().map_or("", |n| &**n.addr());
    let detection = match primary.uses_sentinel() {
        true => "sentinel",
        false => "role_probe",
    };
    let replicas: Vec<&str> = roles.replicas.iter().map(|n| &**n.addr()).collect();
    let switches: u64 = primary.switch_counts().iter().map(|(_, n)| n).sum();
    let _ = write!(
        out,
        "mode:primary\r\nmaster_detection:{detection}\r\nmaster:{master}\r\nreplicas:{}\r\nreplica_addresses:{}\r\nmaster_switches:{switches}\r\n",
        replicas.len(),
        replicas.join(","),
    );
    if let Some(switch) = primary.last_switch() {
        let at = switch
            .at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let _ = write!(
            out,
            "last_switch_from:{}\r\nlast_switch_to:{}\r\nlast_switch_via:{}\r\nlast_switch_time_ms:{at}\r\n",
            switch.from,
            switch.to,
            switch.via.label()
        );
    }
    // Failover holds (see crate::primary): how long writes waited, and whether the promoted replica
    // had every write the old master acknowledged (`caught_up`).
    let (holds, last) = primary.holds();
    let _ = write!(out, "failover_holds:{holds}\r\n");
    if let Some(hold) = last {
        let _ = write!(
            out,
            "last_failover_hold_ms:{}\r\nlast_failover_hold:{}\r\n",
            hold.held.as_millis(),
            hold.ended.label()
        );
    }
}

/// Where the pool's backends come from and how that is going: `discovery_state` is `starting` (no
/// endpoints yet), `synced`, or `failing` (the last known backends stay in use).
fn discovery(out: &mut String, status: &crate::discovery::StatusSnapshot) {
    use crate::discovery::SourceState;
    let state = match &status.state {
        SourceState::Starting => "starting",
        SourceState::Synced => "synced",
        SourceState::Failing { .. } => "failing",
    };
    let _ = write!(
        out,
        "discovery:{}\r\ndiscovery_state:{state}\r\ndiscovery_endpoints:{}\r\ndiscovery_updates:{}\r\ndiscovery_errors:{}\r\n",
        status.source, status.endpoints, status.updates, status.errors
    );
    if let SourceState::Failing { reason } = &status.state {
        // One line: the reason may not carry a line break into the reply.
        let _ = write!(
            out,
            "discovery_failing:{}\r\n",
            reason.replace(['\r', '\n'], " ")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masters_info_is_summed() {
        let a = b"# Stats\r\nkeyspace_hits:3\r\nkeyspace_misses:1\r\nexpired_keys:2\r\n\r\n# Keyspace\r\ndb0:keys=10,expires=2,avg_ttl=1000\r\n# Memory\r\nnumber_of_cached_scripts:3\r\n";
        let b = b"# Stats\r\nkeyspace_hits:4\r\nkeyspace_misses:0\r\n\r\n# Keyspace\r\ndb0:keys=5,expires=2,avg_ttl=3000\r\n# Memory\r\nnumber_of_cached_scripts:5\r\n";
        let facts = NodeFacts::sum([&a[..], &b[..], b"-ERR no"].into_iter());
        assert_eq!(
            facts,
            NodeFacts {
                keys: 15,
                expires: 4,
                avg_ttl: 2000,
                keyspace_hits: 7,
                keyspace_misses: 1,
                expired_keys: 2,
                evicted_keys: 0,
                cached_scripts: 5,
            }
        );
    }
}
