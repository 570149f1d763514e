//! Primary pools in front of a real master with replicas: writes follow the master through Sentinel
//! failovers, a SIGKILLed master, and `REPLICAOF` switches found by `ROLE` probes, with the clients of
//! slotline connected throughout; reads go to replicas when asked.
//!
//! The failover tests run a steady write/read load through slotline and print how many requests failed
//! and for how long (run with `--nocapture` to see it).

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::{
    free_port, http_get, metric, wait_for, wait_ok, Client, KubeApi, PodEndpoint, ReplicaGroup,
    Reply, Sentinels, Slice, Slotline, TempDir,
};

/// `probe_interval` of the ROLE-probing pools.
const PROBE_MS: u64 = 200;
/// Sentinel's `down-after-milliseconds`.
const DOWN_AFTER_MS: u64 = 1000;
const LOAD_THREADS: usize = 4;

fn role_probe_yaml(port: u16, admin: u16, group: &ReplicaGroup, extra: &str) -> String {
    let servers: Vec<String> = (0..3)
        .map(|i| format!("      - {}\n", group.addr(i)))
        .collect();
    format!(
        "pools:\n  ha:\n    listen: 127.0.0.1:{port}\n    mode: primary\n    \
         probe_interval: {PROBE_MS}\n    timeout: 3000\n{extra}    servers:\n{}admin:\n  listen: 127.0.0.1:{admin}\n",
        servers.concat()
    )
}

fn sentinel_yaml(port: u16, admin: u16, sentinels: &Sentinels) -> String {
    let servers: Vec<String> = sentinels
        .ports()
        .iter()
        .map(|p| format!("        - 127.0.0.1:{p}\n"))
        .collect();
    format!(
        "pools:\n  ha:\n    listen: 127.0.0.1:{port}\n    mode: primary\n    \
         probe_interval: 1000\n    timeout: 3000\n    sentinel:\n      master_name: {}\n      servers:\n{}admin:\n  listen: 127.0.0.1:{admin}\n",
        Sentinels::MASTER_NAME,
        servers.concat()
    )
}

/// A master with two replicas and slotline in front (pool `ha`, ROLE probes, `extra` pool lines),
/// once slotline has found the master; with slotline's admin port.
fn role_probed(extra: &str) -> (ReplicaGroup, Slotline, u16) {
    let group = ReplicaGroup::start(3);
    let (port, admin) = (free_port(), free_port());
    let slotline = Slotline::start(&role_probe_yaml(port, admin, &group, extra));
    wait_master(&slotline, &group.addr(0));
    (group, slotline, admin)
}

/// The same, with three sentinels watching the group and slotline asking them.
fn sentinel_watched() -> (ReplicaGroup, Sentinels, Slotline, u16) {
    let group = ReplicaGroup::start(3);
    let sentinels = Sentinels::start(3, group.port(0), DOWN_AFTER_MS, 2);
    let (port, admin) = (free_port(), free_port());
    let slotline = Slotline::start(&sentinel_yaml(port, admin, &sentinels));
    wait_master(&slotline, &group.addr(0));
    (group, sentinels, slotline, admin)
}

fn wait_master(slotline: &Slotline, addr: &str) {
    wait_for(
        Duration::from_secs(20),
        &format!("slotline to name {addr} master"),
        || slotline.info_field("master").as_deref() == Some(addr),
    );
}

/// Waits until slotline counts `n` healthy replicas.
fn wait_replicas(slotline: &Slotline, n: usize) {
    wait_for(
        Duration::from_secs(10),
        &format!("{n} healthy replicas"),
        || slotline.info_field("replicas") == Some(n.to_string()),
    );
}

/// One write of the load: `SET key value`, sent at `sent`.
struct Write {
    key: String,
    value: String,
    sent: SystemTime,
    acked: bool,
}

/// What one load thread saw.
#[derive(Default)]
struct Seen {
    writes: Vec<Write>,
    /// When a request failed, and how.
    errors: Vec<(Instant, String)>,
    /// Successful writes, by when they were acknowledged.
    oks: Vec<Instant>,
    /// The connection to slotline failed (it must never).
    dropped: Option<String>,
}

/// Clients writing and reading through slotline, each on one connection, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<Seen>>,
}

impl Load {
    fn start(port: u16) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..LOAD_THREADS)
            .map(|t| {
                let stop = stop.clone();
                thread::spawn(move || {
                    let mut seen = Seen::default();
                    let mut client = Client::connect(port);
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let (key, value) = (format!("load:{t}:{i}"), i.to_string());
                        let sent = SystemTime::now();
                        client.send(&["SET", &key, &value]);
                        let set = client.try_read_reply();
                        client.send(&["GET", &key]);
                        let get = client.try_read_reply();
                        let now = Instant::now();
                        let (set, get) = match (set, get) {
                            (Ok(set), Ok(get)) => (set, get),
                            (Err(e), _) | (_, Err(e)) => {
                                seen.dropped = Some(e.to_string());
                                break;
                            }
                        };
                        let acked = set.is_ok();
                        match (&set, &get) {
                            (Reply::Status(_), Reply::Bulk(Some(v))) if v == value.as_bytes() => {
                                seen.oks.push(now)
                            }
                            _ => seen.errors.push((now, format!("SET {set:?}, GET {get:?}"))),
                        }
                        seen.writes.push(Write {
                            key,
                            value,
                            sent,
                            acked,
                        });
                        thread::sleep(Duration::from_millis(2));
                    }
                    seen
                })
            })
            .collect();
        Load { stop, threads }
    }

    fn stop(self) -> Vec<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|t| t.join().expect("a load thread panicked"))
            .collect()
    }
}

/// Runs the load, does `trigger`, waits until slotline has moved away from `old_master` and the load
/// has run on the new one for a second, then checks and reports: no client connection dropped, writes
/// resumed within `bound` of the trigger, and every write sent after slotline's switch is on the new
/// master. Returns the new master's address.
fn failover_under_load(
    what: &str,
    slotline: &Slotline,
    old_master: &str,
    bound: Duration,
    trigger: impl FnOnce(),
) -> String {
    let load = Load::start(slotline.port());
    thread::sleep(Duration::from_millis(500));
    let triggered = Instant::now();
    trigger();
    let mut new_master = String::new();
    wait_for(
        Duration::from_secs(30),
        "slotline to switch masters",
        || {
            new_master = slotline.info_field("master").unwrap_or_default();
            !new_master.is_empty() && new_master != old_master
        },
    );
    // Writes keep going on the new master for a while.
    thread::sleep(Duration::from_secs(1));
    let seen = load.stop();

    let dropped: Vec<&String> = seen.iter().filter_map(|s| s.dropped.as_ref()).collect();
    assert!(
        dropped.is_empty(),
        "{what}: client connections to slotline failed: {dropped:?}"
    );
    let mut errors: Vec<&(Instant, String)> = seen.iter().flat_map(|s| &s.errors).collect();
    errors.sort_by_key(|(at, _)| *at);
    let writes: usize = seen.iter().map(|s| s.writes.len()).sum();
    let last_error = errors.last().map(|(at, _)| *at);
    // Writes resumed: the first success after the last failure (or after the trigger).
    let resumed = seen
        .iter()
        .flat_map(|s| &s.oks)
        .filter(|at| **at > last_error.unwrap_or(triggered))
        .min()
        .copied()
        .unwrap_or_else(|| panic!("{what}: no request succeeded after the switch"));
    let window = match (errors.first(), errors.last()) {
        (Some((first, _)), Some((last, _))) => last.duration_since(*first),
        _ => Duration::ZERO,
    };
    let switch_ms: u128 = slotline
        .info_field("last_switch_time_ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{what}: slotline reports no switch"));
    let via = slotline.info_field("last_switch_via").unwrap_or_default();
    eprintln!(
        "{what}: {} of {writes} write+read pairs failed, over {} ms; writes resumed {} ms after the trigger; switch noticed via {via}",
        errors.len(),
        window.as_millis(),
        resumed.duration_since(triggered).as_millis(),
    );
    if let Some((_, first)) = errors.first() {
        eprintln!("{what}: first failure: {first}");
    }
    assert!(
        resumed.duration_since(triggered) <= bound,
        "{what}: writes resumed {:?} after the trigger, beyond {bound:?}",
        resumed.duration_since(triggered)
    );

    // Every write sent after slotline switched went to the new master (nothing to the demoted one,
    // where it would have been lost).
    let mut master = Client::try_connect_to(&new_master).expect("connect to the new master");
    let mut after = 0;
    for write in seen.iter().flat_map(|s| &s.writes) {
        let sent_ms = write
            .sent
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        if write.acked && sent_ms > switch_ms {
            after += 1;
            assert_eq!(
                master.cmd(&["GET", &write.key]),
                Reply::bulk(&write.value),
                "{what}: {} was written after the switch but is not on the new master",
                write.key
            );
        }
    }
    assert!(
        after > 100,
        "{what}: only {after} writes after the switch were checked"
    );
    new_master
}

#[test]
fn writes_go_to_the_master_reads_to_replicas_and_the_replica_port_refuses_writes() {
    let replica_port = free_port();
    let extra = format!("    read_from: replica\n    replica_listen: 127.0.0.1:{replica_port}\n");
    let (group, slotline, admin) = role_probed(&extra);
    wait_replicas(&slotline, 2);
    for i in 0..3 {
        assert!(group.client(i).cmd(&["CONFIG", "RESETSTAT"]).is_ok());
    }

    let mut client = slotline.client();
    for i in 0..50 {
        assert!(client.cmd(&["SET", &format!("k{i}"), "v"]).is_ok());
    }
    // Another client has no read-your-writes promise: a replica within max_replica_lag may not
    // have the last writes yet. Both have them before it reads (CI once read a nil here).
    assert_eq!(group.client(0).cmd(&["WAIT", "2", "5000"]), Reply::Int(2));
    // The writer's own reads stay on the master until a replica has its writes (read-your-
    // writes): another client reads, once both replicas are measured and serve reads.
    wait_for(
        Duration::from_secs(10),
        "both replicas to serve reads",
        || {
            let info = slotline.client().cmd(&["INFO", "slotline"]);
            let text = String::from_utf8_lossy(info.as_bytes().unwrap_or_default()).into_owned();
            let serving = text.lines().filter(|l| l.starts_with("replica_ha_"));
            serving.filter(|l| l.contains("serving_reads=1")).count() == 2
        },
    );
    for i in 0..3 {
        assert!(group.client(i).cmd(&["CONFIG", "RESETSTAT"]).is_ok());
    }
    let mut other = slotline.client();
    for i in 0..50 {
        assert_eq!(other.cmd(&["GET", &format!("k{i}")]), Reply::bulk("v"));
    }
    // The writer's read right after its write is the master's.
    assert!(client.cmd(&["SET", "k0", "v"]).is_ok());
    assert_eq!(client.cmd(&["GET", "k0"]), Reply::bulk("v"));
    let calls = |i: usize, cmd: &str| -> u64 {
        let stats = group.info(i, "commandstats");
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let (m, r1, r2) = (calls(0, "get"), calls(1, "get"), calls(2, "get"));
    assert_eq!(
        m, 1,
        "one read went to the master, the writer's (replicas: {r1}, {r2})"
    );
    assert_eq!(r1 + r2, 50, "every other read went to a replica");
    // Writes on the master (replicas apply them through replication, not from slotline).
    assert_eq!(calls(0, "set"), 1);
    // Replication is asynchronous: the replicas apply the SET soon, not at once.
    wait_for(
        Duration::from_secs(10),
        "both replicas to apply the SET",
        || calls(1, "set") + calls(2, "set") >= 2,
    );
    assert_eq!(calls(1, "set") + calls(2, "set"), 2, "replicated, not sent");
    assert_eq!(group.client(0).cmd(&["GET", "k49"]), Reply::bulk("v"));
    assert!(
        r1 >= 20 && r2 >= 20,
        "reads are spread over both replicas: {r1} and {r2}"
    );
    // A transaction is the master's.
    client.send(&["MULTI"]);
    client.send(&["INCR", "counter"]);
    client.send(&["GET", "counter"]);
    client.send(&["EXEC"]);
    let replies: Vec<Reply> = (0..4).map(|_| client.read_reply()).collect();
    assert_eq!(
        replies[3],
        Reply::Array(Some(vec![Reply::Int(1), Reply::bulk("1")])),
        "{replies:?}"
    );

    // The replica port: reads served by replicas, writes refused as a replica refuses them.
    let mut reader = Client::connect(replica_port);
    let refused = reader.cmd(&["SET", "x", "1"]);
    assert!(
        refused.error().is_some_and(|e| e.starts_with("READONLY")),
        "{refused:?}"
    );
    assert_eq!(reader.cmd(&["EXISTS", "x"]), Reply::Int(0));
    // Scripts too: a replica runs only their read-only forms, and what every node runs stays put.
    let write_script = "return redis.call('SET', 'x', '1')";
    for refused in [
        vec!["EVAL", write_script, "0"],
        vec!["EVALSHA", "0123456789012345678901234567890123456789", "0"],
        vec!["FCALL", "f", "0"],
        vec!["SCRIPT", "LOAD", write_script],
        vec!["SCRIPT", "FLUSH"],
        vec![
            "FUNCTION",
            "LOAD",
            "#!lua name=lib\nredis.register_function('f', function() return 1 end)",
        ],
        vec!["FUNCTION", "FLUSH"],
    ] {
        let reply = reader.cmd(&refused);
        assert!(
            reply.error().is_some_and(|e| e.starts_with("READONLY")),
            "{refused:?} on the replica port: {reply:?}"
        );
    }
    assert_eq!(
        reader.cmd(&["EVAL_RO", "return redis.call('EXISTS', 'x')", "0"]),
        Reply::Int(0)
    );
    assert_eq!(
        reader.cmd(&["EXISTS", "x"]),
        Reply::Int(0),
        "a script wrote through the replica port"
    );
    // A script's READONLY is the script's own: not taken for a demoted master's, so not run again.
    let script =
        "redis.call('INCR', 'ran') return redis.error_reply('READONLY made up by a script')";
    let reply = client.cmd(&["EVAL", script, "0"]);
    assert_eq!(reply.error(), Some("READONLY made up by a script"));
    assert_eq!(
        client.cmd(&["GET", "ran"]),
        Reply::bulk("1"),
        "the script ran again"
    );
    // The writer's reads went to the master (read-your-writes); the replica port's never do.
    let on_master = calls(0, "get");
    wait_for(Duration::from_secs(5), "k0 to reach the replicas", || {
        reader.cmd(&["GET", "k0"]) == Reply::bulk("v")
    });
    assert_eq!(
        calls(0, "get"),
        on_master,
        "the replica port read from the master"
    );

    // Operators see the master, the replicas, and no switch yet.
    let text = http_get(admin, "/metrics").body;
    let series = format!(
        "slotline_master{{backend=\"{}\",pool=\"ha\"}}",
        group.addr(0)
    );
    assert_eq!(metric(&text, &series), Some(1.0), "{text}");
    assert_eq!(
        metric(&text, "slotline_replicas_healthy{pool=\"ha\"}"),
        Some(2.0)
    );
    assert_eq!(
        metric(&text, "slotline_master_switches_total{pool=\"ha\"}"),
        Some(0.0)
    );
    assert_eq!(
        slotline.info_field("master_detection").as_deref(),
        Some("role_probe")
    );
}

#[test]
fn role_probes_follow_a_replicaof_switch_under_load() {
    let (group, slotline, admin) = role_probed("");
    let before = slotline_connections(&group, 0);
    assert!(
        !before.is_empty(),
        "slotline holds connections to the master"
    );
    // What an operator (or a failover script) does: promote server 1, then point the others at it.
    let bound = Duration::from_millis(4 * PROBE_MS + 1000);
    let old = group.addr(0);
    let new = failover_under_load(
        "ROLE probe, REPLICAOF switch",
        &slotline,
        &old,
        bound,
        || {
            group.replicate(1, None);
            group.replicate(0, Some(1));
            group.replicate(2, Some(1));
        },
    );
    assert_eq!(new, group.addr(1));
    assert_eq!(
        slotline.info_field("last_switch_via").as_deref(),
        Some("role_probe")
    );
    let text = http_get(admin, "/metrics").body;
    assert_eq!(
        metric(&text, "slotline_master_switches_total{pool=\"ha\"}"),
        Some(1.0)
    );
    // The demoted master now replicates the new one, and the connections slotline wrote through
    // are closed (its probes use new ones).
    assert_eq!(group.role(0), "slave");
    wait_for(
        Duration::from_secs(15),
        "the old connections to the demoted master to close",
        || {
            let now = slotline_connections(&group, 0);
            before.iter().all(|id| !now.contains(id))
        },
    );
    // Writes it refused with READONLY were sent again to the new master, not failed.
    let readonly = "slotline_redirects_total{kind=\"readonly\",pool=\"ha\"}";
    assert!(metric(&text, readonly).is_some_and(|n| n >= 1.0), "{text}");
}

/// The ids of the ordinary client connections of server `index` (slotline's: not replication links,
/// not the connection asking).
fn slotline_connections(group: &ReplicaGroup, index: usize) -> Vec<String> {
    let reply = group.client(index).cmd(&["CLIENT", "LIST"]);
    let text = String::from_utf8_lossy(reply.as_bytes().expect("CLIENT LIST")).into_owned();
    text.lines()
        .filter(|l| l.contains(" flags=N ") && !l.contains(" cmd=client|list "))
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .map(str::to_string)
        .collect()
}

#[test]
fn reads_without_a_healthy_replica_fail_or_go_to_the_master_as_read_from_says() {
    let replica_port = free_port();
    let extra = format!("    read_from: replica\n    replica_listen: 127.0.0.1:{replica_port}\n");
    let (mut group, slotline, _) = role_probed(&extra);
    wait_replicas(&slotline, 2);
    let mut client = slotline.client();
    assert!(client.cmd(&["SET", "k", "v"]).is_ok());
    group.kill(1);
    group.kill(2);
    wait_for(
        Duration::from_secs(10),
        "the replicas to be found gone",
        || slotline.info_field("replicas").as_deref() == Some("0"),
    );
    // read_from: replica: an error that says why; writes still go to the master.
    let read = client.cmd(&["GET", "k"]);
    assert!(
        read.error()
            .is_some_and(|e| e.contains("no healthy replica")),
        "{read:?}"
    );
    assert!(client.cmd(&["SET", "k", "w"]).is_ok());
    let mut reader = Client::connect(replica_port);
    assert!(reader.cmd(&["GET", "k"]).is_error());

    // prefer_replica: the master answers meanwhile.
    let port = free_port();
    let yaml = role_probe_yaml(port, free_port(), &group, "    read_from: prefer_replica\n");
    let preferring = Slotline::start(&yaml);
    wait_master(&preferring, &group.addr(0));
    assert_eq!(preferring.client().cmd(&["GET", "k"]), Reply::bulk("w"));
}

#[test]
fn sentinels_found_through_a_kubernetes_service_are_asked_and_followed() {
    const NS: &str = "redis-ha";
    let group = ReplicaGroup::start(3);
    let sentinels = Sentinels::start(3, group.port(0), DOWN_AFTER_MS, 2);
    let api = KubeApi::start();
    // One slice per sentinel: each listens on a port of its own.
    for (i, port) in sentinels.ports().iter().enumerate() {
        let pod = format!("sentinel-{i}");
        let endpoint = PodEndpoint::ready("127.0.0.1", &pod);
        api.apply_slice(
            NS,
            &Slice::new(&pod, "redis-sentinel", *port, vec![endpoint]),
        );
    }
    let dir = TempDir::new("kubeconfig");
    let kubeconfig = api.write_kubeconfig(&dir).to_string_lossy().into_owned();
    let port = free_port();
    let yaml = format!(
        "pools:\n  ha:\n    listen: 127.0.0.1:{port}\n    mode: primary\n    timeout: 3000\n    \
         sentinel:\n      master_name: {}\n      kubernetes:\n        service: redis-sentinel\n        \
         namespace: {NS}\n",
        Sentinels::MASTER_NAME
    );
    let slotline = Slotline::start_with_env(&yaml, &[("KUBECONFIG", &kubeconfig)]);
    wait_master(&slotline, &group.addr(0));
    let old = group.addr(0);
    let new = failover_under_load(
        "Sentinel from a Service, SENTINEL FAILOVER",
        &slotline,
        &old,
        SENTINEL_BOUND,
        || sentinel_failover(&sentinels, 1),
    );
    let promoted = sentinels.master_port(2).map(|p| format!("127.0.0.1:{p}"));
    assert_eq!(promoted.as_deref(), Some(new.as_str()));
}

#[test]
fn role_probes_follow_a_killed_master_once_a_replica_is_promoted() {
    let (mut group, slotline, _) = role_probed("");
    // The master dies; a second later a replica is promoted (by hand here: no Sentinel).
    let operator = Duration::from_secs(1);
    let bound = operator + Duration::from_millis(4 * PROBE_MS + 1000);
    let (p1, p2) = (group.port(1), group.port(2));
    let old = group.addr(0);
    let new = failover_under_load(
        "ROLE probe, master SIGKILLed, replica promoted 1 s later",
        &slotline,
        &old,
        bound,
        || {
            group.kill(0);
            thread::sleep(operator);
            assert!(Client::connect(p1).cmd(&["REPLICAOF", "NO", "ONE"]).is_ok());
            let to_p1 = Client::connect(p2).cmd(&["REPLICAOF", "127.0.0.1", &p1.to_string()]);
            assert!(to_p1.is_ok());
        },
    );
    assert_eq!(new, format!("127.0.0.1:{p1}"));
    assert_eq!(
        slotline.info_field("last_switch_via").as_deref(),
        Some("role_probe")
    );
}

/// Asks sentinel `index` for a failover, as an operator would.
fn sentinel_failover(sentinels: &Sentinels, index: usize) {
    let reply = sentinels
        .client(index)
        .cmd(&["SENTINEL", "FAILOVER", Sentinels::MASTER_NAME]);
    assert!(reply.is_ok(), "SENTINEL FAILOVER: {reply:?}");
}

/// Sentinel's `failover-timeout` and election leave a failover some seconds: the bound for writes
/// to resume after the trigger.
const SENTINEL_BOUND: Duration = Duration::from_secs(10);

#[test]
fn sentinels_that_require_an_acl_user_are_asked_as_that_user() {
    let group = ReplicaGroup::start(2);
    let sentinels =
        Sentinels::start_with(3, group.port(0), DOWN_AFTER_MS, 1, Some(("watcher", "pw2")));
    let refused = Client::connect(sentinels.ports()[0]).cmd(&["SENTINEL", "MASTERS"]);
    assert!(
        refused.error().is_some_and(|e| e.starts_with("NOAUTH")),
        "the sentinels require a login: {refused:?}"
    );
    let (port, admin) = (free_port(), free_port());
    let yaml = sentinel_yaml(port, admin, &sentinels).replace(
        "      master_name:",
        "      username: watcher\n      password: pw2\n      master_name:",
    );
    let slotline = Slotline::start(&yaml);
    wait_master(&slotline, &group.addr(0));
    let mut client = slotline.client();
    assert_eq!(client.cmd(&["SET", "acl", "1"]), Reply::ok());
    // A switch the sentinels make is followed.
    sentinel_failover(&sentinels, 0);
    wait_master(&slotline, &group.addr(1));
    wait_ok(
        SENTINEL_BOUND,
        "a write on the new master",
        || match slotline.client().cmd(&["SET", "acl", "2"]) {
            r if r.is_ok() => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    assert_eq!(group.client(1).cmd(&["GET", "acl"]), Reply::bulk("2"));
}

#[test]
fn sentinel_failover_under_load() {
    let (group, sentinels, slotline, admin) = sentinel_watched();
    assert_eq!(
        slotline.info_field("master_detection").as_deref(),
        Some("sentinel")
    );
    let old = group.addr(0);
    let new = failover_under_load(
        "Sentinel, SENTINEL FAILOVER",
        &slotline,
        &old,
        SENTINEL_BOUND,
        || sentinel_failover(&sentinels, 0),
    );
    // The master slotline chose is the one the sentinels promoted.
    let promoted = sentinels.master_port(0).map(|p| format!("127.0.0.1:{p}"));
    assert_eq!(promoted.as_deref(), Some(new.as_str()));
    let via = slotline.info_field("last_switch_via").unwrap_or_default();
    assert!(via.starts_with("sentinel"), "switch noticed via {via}");
    let text = http_get(admin, "/metrics").body;
    assert_eq!(
        metric(&text, "slotline_master_switches_total{pool=\"ha\"}"),
        Some(1.0)
    );
}

#[test]
fn sentinel_follows_a_killed_master() {
    let (mut group, sentinels, slotline, _) = sentinel_watched();
    let old = group.addr(0);
    let bound = SENTINEL_BOUND + Duration::from_millis(DOWN_AFTER_MS);
    let new = failover_under_load("Sentinel, master SIGKILLed", &slotline, &old, bound, || {
        group.kill(0)
    });
    let promoted = sentinels.master_port(1).map(|p| format!("127.0.0.1:{p}"));
    assert_eq!(promoted.as_deref(), Some(new.as_str()));
}

#[test]
fn members_found_through_a_kubernetes_service_are_probed_and_followed() {
    const NS: &str = "redis-ha";
    let group = ReplicaGroup::start(3);
    let api = KubeApi::start();
    // One slice per member: each listens on a port of its own.
    for i in 0..3 {
        let pod = format!("redis-{i}");
        let endpoint = PodEndpoint::ready("127.0.0.1", &pod);
        api.apply_slice(
            NS,
            &Slice::new(&pod, "redis", group.port(i), vec![endpoint]),
        );
    }
    let dir = TempDir::new("kubeconfig");
    let kubeconfig = api.write_kubeconfig(&dir).to_string_lossy().into_owned();
    let port = free_port();
    let yaml = format!(
        "pools:\n  ha:\n    listen: 127.0.0.1:{port}\n    mode: primary\n    probe_interval: {PROBE_MS}\n    \
         timeout: 3000\n    kubernetes:\n      service: redis\n      namespace: {NS}\n"
    );
    let slotline = Slotline::start_with_env(&yaml, &[("KUBECONFIG", &kubeconfig)]);
    wait_master(&slotline, &group.addr(0));
    wait_replicas(&slotline, 2);
    // A member that leaves the Service is no longer a replica to read from.
    api.delete_slice(NS, "redis-2");
    wait_for(
        Duration::from_secs(10),
        "the departed replica to be dropped",
        || slotline.info_field("replica_addresses").as_deref() == Some(group.addr(1).as_str()),
    );
    let old = group.addr(0);
    let bound = Duration::from_millis(4 * PROBE_MS + 1000);
    let new = failover_under_load(
        "ROLE probe over Kubernetes members",
        &slotline,
        &old,
        bound,
        || {
            group.replicate(1, None);
            group.replicate(0, Some(1));
        },
    );
    assert_eq!(new, group.addr(1));
}

#[test]
fn subscribers_keep_hearing_publishes_across_a_master_switch() {
    let (group, slotline, _) = role_probed("");
    let mut subscriber = slotline.client();
    let confirmed = subscriber.cmd(&["SUBSCRIBE", "news"]);
    assert_eq!(
        confirmed.as_array().map(<[Reply]>::len),
        Some(3),
        "{confirmed:?}"
    );
    let mut publisher = slotline.client();
    let message = |n: &str| {
        Reply::Array(Some(vec![
            Reply::bulk("message"),
            Reply::bulk("news"),
            Reply::bulk(n),
        ]))
    };
    assert_eq!(publisher.cmd(&["PUBLISH", "news", "one"]), Reply::Int(1));
    assert_eq!(subscriber.read_reply(), message("one"));

    // The subscription stays on the demoted master, which now replicates the new one's PUBLISHes.
    group.replicate(1, None);
    group.replicate(0, Some(1));
    group.replicate(2, Some(1));
    wait_master(&slotline, &group.addr(1));
    group.wait_linked(0);
    publisher.cmd(&["PUBLISH", "news", "two"]);
    assert_eq!(subscriber.read_reply(), message("two"));
}
