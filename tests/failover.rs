//! Planned failovers lose no acknowledged write. Writers at full speed go through slotline while the
//! masters change: real sentinels move a primary pool's master back and forth (`SENTINEL FAILOVER`),
//! and replicas of a Redis Cluster take over their masters' slots (`CLUSTER FAILOVER`). Afterwards
//! every write slotline acknowledged must be on the master that serves it, and none was refused.
//!
//! The number of failovers is `FAILOVERS` (default 3; benches/failover.sh runs 20). Run with
//! `--nocapture` to see each round's counts.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use support::{
    free_port, wait_for, wait_ok, Client, ClusterOpts, RedisCluster, ReplicaGroup, Reply,
    Sentinels, Slotline,
};

const WRITERS: usize = 4;
/// Sentinel's `down-after-milliseconds`: long, since these failovers are planned.
const DOWN_AFTER_MS: u64 = 5000;

fn failovers() -> usize {
    std::env::var("FAILOVERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3)
}

/// What one writer saw.
#[derive(Default)]
struct Seen {
    /// Keys slotline acknowledged, with their values.
    acked: Vec<(String, String)>,
    errors: Vec<String>,
    /// The longest a write waited for its reply.
    slowest: Duration,
    dropped: Option<String>,
}

/// Clients writing unique keys through slotline as fast as it answers, one request at a time each.
struct Writers {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<Seen>>,
}

impl Writers {
    fn start(port: u16) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..WRITERS)
            .map(|t| {
                let stop = stop.clone();
                thread::spawn(move || {
                    let mut seen = Seen::default();
                    let mut client = Client::connect(port);
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let (key, value) = (format!("w:{t}:{i}"), format!("v{i}"));
                        let sent = Instant::now();
                        client.send(&["SET", &key, &value]);
                        match client.try_read_reply() {
                            Ok(reply) if reply.is_ok() => seen.acked.push((key, value)),
                            Ok(reply) => seen.errors.push(format!("SET {key}: {reply:?}")),
                            Err(e) => {
                                seen.dropped = Some(e.to_string());
                                break;
                            }
                        }
                        seen.slowest = seen.slowest.max(sent.elapsed());
                    }
                    seen
                })
            })
            .collect();
        Writers { stop, threads }
    }

    fn stop(self) -> Vec<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|t| t.join().expect("a writer thread panicked"))
            .collect()
    }
}

/// The `INFO slotline` field `name`.
fn info_field(slotline: &Slotline, name: &str) -> Option<String> {
    let reply = slotline.client().cmd(&["INFO", "slotline"]);
    let text = String::from_utf8_lossy(reply.as_bytes().unwrap_or_default()).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(|v| v.trim().to_string())
}

/// Asks sentinel 0 for a failover of `master` to `replica` once the replica has caught up, retrying
/// while the sentinel has no replica it considers good yet (right after a failover the demoted
/// master needs a moment to be seen as a replica). Sentinel promotes the replica it chose about
/// 100 ms after announcing it, caught up or not: a replica still replaying seconds of backlog (as
/// after the full resync the round before caused, on a busy machine) would lose what it had not
/// replayed, whatever a proxy does. A planned failover waits for that.
fn sentinel_failover(sentinels: &Sentinels, master: &mut Client, replica: &mut Client) {
    wait_ok(
        Duration::from_secs(60),
        "SENTINEL FAILOVER accepted",
        || {
            caught_up(master, replica);
            let reply = sentinels
                .client(0)
                .cmd(&["SENTINEL", "FAILOVER", Sentinels::MASTER_NAME]);
            match reply.is_ok() {
                true => Ok(()),
                false => {
                    thread::sleep(Duration::from_millis(200));
                    Err(format!("{reply:?}"))
                }
            }
        },
    );
}

#[test]
fn planned_sentinel_failovers_lose_no_acknowledged_write() {
    let group = ReplicaGroup::start(2);
    let sentinels = Sentinels::start(3, group.port(0), DOWN_AFTER_MS, 1);
    let (port, admin) = (free_port(), free_port());
    let servers: String = sentinels
        .ports()
        .iter()
        .map(|p| format!("        - 127.0.0.1:{p}\n"))
        .collect();
    let slotline = Slotline::start(&format!(
        "pools:\n  ha:\n    listen: 127.0.0.1:{port}\n    mode: primary\n    \
         probe_interval: 1000\n    timeout: 1500\n    sentinel:\n      master_name: {}\n      \
         servers:\n{servers}admin:\n  listen: 127.0.0.1:{admin}\n",
        Sentinels::MASTER_NAME,
    ));
    let addr = |i: usize| group.addr(i);
    wait_for(
        Duration::from_secs(20),
        "slotline to find the master",
        || info_field(&slotline, "master").as_deref() == Some(addr(0).as_str()),
    );

    let writers = Writers::start(slotline.port());
    let mut master = 0;
    for round in 1..=failovers() {
        thread::sleep(Duration::from_millis(300));
        let other = 1 - master;
        // The demoted master of the round before is turned into a replica by the sentinels some
        // seconds later, then resyncs.
        wait_for(
            Duration::from_secs(60),
            &format!("round {round}: {} to be a linked replica", addr(other)),
            || {
                group
                    .info(other, "replication")
                    .contains("master_link_status:up")
            },
        );
        sentinel_failover(
            &sentinels,
            &mut group.client(master),
            &mut group.client(other),
        );
        wait_for(
            Duration::from_secs(30),
            &format!("round {round}: slotline to switch to {}", addr(other)),
            || info_field(&slotline, "master").as_deref() == Some(addr(other).as_str()),
        );
        wait_for(
            Duration::from_secs(30),
            &format!("round {round}: the sentinels to name {}", addr(other)),
            || sentinels.master_port(0) == Some(group.port(other)),
        );
        master = other;
        // slotline held the writes while the replica was promoted, and the replica had them all.
        wait_for(
            Duration::from_secs(5),
            &format!("round {round}: a failover hold counted (writes held for the promotion)"),
            || info_field(&slotline, "failover_holds") == Some(round.to_string()),
        );
        assert_eq!(
            info_field(&slotline, "last_failover_hold").as_deref(),
            Some("caught_up"),
            "round {round}"
        );
        eprintln!(
            "round {round}: master is now {}; writes held {} ms",
            addr(master),
            info_field(&slotline, "last_failover_hold_ms").unwrap_or_default()
        );
    }
    thread::sleep(Duration::from_millis(300));
    let seen = writers.stop();
    // Every acknowledged write is on the master now serving.
    let mut master = Client::try_connect_to(&addr(master)).expect("connect to the master");
    check(&seen, &mut master, "SENTINEL FAILOVER");
}

/// The replication offset `ROLE` reports: a master's own, a replica's processed one.
fn offset(node: &mut Client) -> i64 {
    let reply = node.cmd(&["ROLE"]);
    let at = match reply
        .as_array()
        .and_then(|a| a.first())
        .and_then(Reply::as_str)
    {
        Some("master") => 1,
        _ => 4,
    };
    reply
        .as_array()
        .and_then(|a| a.get(at))
        .and_then(Reply::as_int)
        .unwrap_or_else(|| panic!("ROLE: {reply:?}"))
}

/// Waits until `replica` has replayed at least what `master` had a moment ago: it lags by no more
/// than the writes of that moment.
fn caught_up(master: &mut Client, replica: &mut Client) {
    let target = offset(master);
    wait_ok(Duration::from_secs(30), "the replica to catch up", || {
        let at = offset(replica);
        match at >= target {
            true => Ok(()),
            false => Err(format!("{} bytes behind", target - at)),
        }
    });
}

/// Asserts what the writers saw: no connection dropped, no write refused, and every acknowledged
/// write readable through `reader` with its value.
fn check(seen: &[Seen], reader: &mut Client, what: &str) {
    let dropped: Vec<&String> = seen.iter().filter_map(|s| s.dropped.as_ref()).collect();
    assert!(
        dropped.is_empty(),
        "connections to slotline failed: {dropped:?}"
    );
    let acked: Vec<&(String, String)> = seen.iter().flat_map(|s| &s.acked).collect();
    let errors: Vec<&String> = seen.iter().flat_map(|s| &s.errors).collect();
    let slowest = seen.iter().map(|s| s.slowest).max().unwrap_or_default();
    let mut lost = Vec::new();
    for chunk in acked.chunks(1000) {
        let gets: Vec<[&str; 2]> = chunk.iter().map(|(k, _)| ["GET", k.as_str()]).collect();
        for ((key, value), reply) in chunk.iter().zip(reader.pipeline(&gets)) {
            if reply != Reply::bulk(value) {
                lost.push(key.as_str());
            }
        }
    }
    eprintln!(
        "{} x {what}: {} writes acknowledged, {} lost, {} refused, slowest write {} ms",
        failovers(),
        acked.len(),
        lost.len(),
        errors.len(),
        slowest.as_millis()
    );
    assert!(
        lost.is_empty(),
        "{what}: {} of {} acknowledged writes are not on the new master (first: {:?}); errors: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)],
        &errors[..errors.len().min(5)]
    );
    assert!(
        errors.is_empty(),
        "{what}: writes refused during planned failovers: {:?}",
        &errors[..errors.len().min(5)]
    );
}

#[test]
fn planned_cluster_failovers_lose_no_acknowledged_write() {
    let cluster = RedisCluster::start(ClusterOpts::default());
    // During CLUSTER FAILOVER the master holds its clients' writes until the replica has taken over
    // (Redis bounds that at 10 s; up to a second on this busy machine), and a write waits that
    // long: a pool `timeout` shorter than the pause turns it into errors (not executed: the old
    // master then answers MOVED).
    let port = free_port();
    let seeds: Vec<u16> = cluster.masters().iter().map(|m| m.port).collect();
    let slotline = Slotline::start(
        &Slotline::cluster_yaml(port, &seeds).replace("timeout: 1000", "timeout: 5000"),
    );
    wait_ok(
        Duration::from_secs(20),
        "slotline to serve",
        || match slotline.client().cmd(&["SET", "ready", "1"]) {
            r if r.is_ok() => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    let writers = Writers::start(port);
    for round in 1..=failovers() {
        thread::sleep(Duration::from_millis(300));
        // Each round another shard: its replica takes over (the master pauses its clients until the
        // replica has caught up, then answers MOVED to it).
        let (old, replica) = wait_ok(
            Duration::from_secs(30),
            &format!("round {round}: a master with a linked replica"),
            || {
                // ROLE on the masters themselves: one node's CLUSTER NODES may lag a takeover.
                let mut masters: Vec<(u16, Vec<u16>)> = cluster
                    .live_ports()
                    .into_iter()
                    .filter_map(|port| {
                        let role = cluster.client(port).cmd(&["ROLE"]);
                        let parts = role.as_array()?;
                        (parts.first()?.as_str()? == "master").then(|| {
                            let replicas = parts.get(2).and_then(Reply::as_array).unwrap_or(&[]);
                            let ports = replicas
                                .iter()
                                .filter_map(|r| r.as_array()?.get(1)?.as_str()?.parse().ok());
                            (port, ports.collect())
                        })
                    })
                    .collect();
                masters.sort();
                let count = masters.len();
                let (old, replicas) = masters
                    .into_iter()
                    .nth(round % count.max(1))
                    .ok_or("no master")?;
                let replica = *replicas
                    .first()
                    .ok_or(format!("{old} has no linked replica"))?;
                Ok((old, replica))
            },
        );
        caught_up(&mut cluster.client(old), &mut cluster.client(replica));
        let reply = cluster.client(replica).cmd(&["CLUSTER", "FAILOVER"]);
        assert!(reply.is_ok(), "round {round}: CLUSTER FAILOVER: {reply:?}");
        wait_for(
            Duration::from_secs(30),
            &format!("round {round}: {replica} to take over from {old}"),
            || cluster.masters().iter().any(|m| m.port == replica),
        );
        eprintln!("round {round}: {replica} took over from {old}");
    }
    thread::sleep(Duration::from_millis(300));
    let seen = writers.stop();
    check(&seen, &mut slotline.client(), "CLUSTER FAILOVER");
}

#[test]
fn redis_failover_command_in_a_role_probed_pool_loses_no_acknowledged_write() {
    // Redis's own coordinated switch (FAILOVER, Redis 6.2+): the master pauses writes until the
    // replica has caught up, then turns replica itself and answers READONLY, which slotline sends
    // once more to the master its next look finds. No Sentinel: slotline finds the master by ROLE.
    let group = ReplicaGroup::start(2);
    let (port, admin) = (free_port(), free_port());
    let slotline = Slotline::start(&format!(
        "pools:\n  ha:\n    listen: 127.0.0.1:{port}\n    mode: primary\n    probe_interval: 200\n    \
         timeout: 1500\n    servers:\n      - {}\n      - {}\nadmin:\n  listen: 127.0.0.1:{admin}\n",
        group.addr(0),
        group.addr(1),
    ));
    let addr = |i: usize| group.addr(i);
    wait_for(
        Duration::from_secs(20),
        "slotline to find the master",
        || info_field(&slotline, "master").as_deref() == Some(addr(0).as_str()),
    );
    let writers = Writers::start(port);
    let mut master = 0;
    for round in 1..=failovers() {
        thread::sleep(Duration::from_millis(300));
        let other = 1 - master;
        group.wait_linked(other);
        let reply = group.client(master).cmd(&[
            "FAILOVER",
            "TO",
            "127.0.0.1",
            &group.port(other).to_string(),
        ]);
        assert!(reply.is_ok(), "round {round}: FAILOVER: {reply:?}");
        wait_for(
            Duration::from_secs(30),
            &format!("round {round}: slotline to switch to {}", addr(other)),
            || info_field(&slotline, "master").as_deref() == Some(addr(other).as_str()),
        );
        master = other;
        eprintln!("round {round}: master is now {}", addr(master));
    }
    thread::sleep(Duration::from_millis(300));
    let seen = writers.stop();
    let mut reader = Client::try_connect_to(&addr(master)).expect("connect to the master");
    check(&seen, &mut reader, "FAILOVER (ROLE probes)");
}
