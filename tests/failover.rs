//! Planned failovers lose no acknowledged write. Writers at full speed go through slotline while the
//! masters change: real sentinels move a primary pool's master back and forth (`SENTINEL FAILOVER`),
//! and replicas of a Redis Cluster take over their masters' slots (`CLUSTER FAILOVER`). Afterwards
//! every write slotline acknowledged must be on the master that serves it, and none was refused.
//!
//! A crashed master (SIGKILL) fails only its own slots, until its replica takes over. The number of
//! failovers is `FAILOVERS` (default 3; benches/failover.sh runs 20), of crashes `CRASHES`. Run with
//! `--nocapture` to see each round's counts.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use support::{
    free_port, key_slot, try_client_list, wait_for, wait_ok, Client, ClusterOpts, RedisCluster,
    ReplicaGroup, Reply, Sentinels, Slotline,
};

const WRITERS: usize = 4;
/// Sentinel's `down-after-milliseconds`: long, since these failovers are planned.
const DOWN_AFTER_MS: u64 = 5000;

/// A count from the environment (the benches' longer runs), else `default`.
fn count_from_env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

fn failovers() -> usize {
    count_from_env("FAILOVERS", 3)
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
    let slotline = behind_sentinels(&sentinels, &group);
    let addr = |i: usize| group.addr(i);

    let mut master = 0;
    for round in 1..=failovers() {
        // Writers for this round only: its writes are checked, then deleted, so that the data set
        // (and the full resync of the demoted master, which flushes it) stays small over 20 rounds.
        let writers = Writers::start(slotline.port());
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
        // ... and every sentinel saw it report itself a replica (`Sentinels::agree_on`).
        wait_for(
            Duration::from_secs(60),
            &format!(
                "round {round}: every sentinel to see {} as a replica",
                addr(other)
            ),
            || sentinels.agree_on(group.port(master), group.port(other)),
        );
        sentinel_failover(
            &sentinels,
            &mut group.client(master),
            &mut group.client(other),
        );
        // 90 s: a sentinel whose clock jumped (a stalled machine) enters TILT mode and does
        // nothing for 30 s, then goes on with the failover.
        wait_for(
            Duration::from_secs(90),
            &format!("round {round}: slotline to switch to {}", addr(other)),
            || slotline.info_field("master").as_deref() == Some(addr(other).as_str()),
        );
        wait_for(
            Duration::from_secs(90),
            &format!("round {round}: the sentinels to name {}", addr(other)),
            || sentinels.master_port(0) == Some(group.port(other)),
        );
        master = other;
        // slotline held the writes while the replica was promoted, and the replica had them all.
        wait_for(
            Duration::from_secs(5),
            &format!("round {round}: a failover hold counted (writes held for the promotion)"),
            || slotline.info_field("failover_holds") == Some(round.to_string()),
        );
        assert_eq!(
            slotline.info_field("last_failover_hold").as_deref(),
            Some("caught_up"),
            "round {round}"
        );
        eprintln!(
            "round {round}: master is now {}; writes held {} ms",
            addr(master),
            slotline
                .info_field("last_failover_hold_ms")
                .unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(300));
        let seen = writers.stop();
        // Every acknowledged write is on the master now serving.
        let mut reader = Client::try_connect_to(&addr(master)).expect("connect to the master");
        check(
            &seen,
            &mut reader,
            &format!("SENTINEL FAILOVER round {round}"),
        );
        for seen in &seen {
            for chunk in seen.acked.chunks(1000) {
                let mut unlink = vec!["UNLINK"];
                unlink.extend(chunk.iter().map(|(k, _)| k.as_str()));
                reader.cmd(&unlink);
            }
        }
    }
}

/// A primary pool that asks `sentinels` who is master, once it has found server 0 of `group`.
fn behind_sentinels(sentinels: &Sentinels, group: &ReplicaGroup) -> Slotline {
    let servers: String = sentinels
        .ports()
        .iter()
        .map(|p| format!("        - 127.0.0.1:{p}\n"))
        .collect();
    let slotline = Slotline::start(&format!(
        "pools:\n  ha:\n    listen: 127.0.0.1:{}\n    mode: primary\n    \
         probe_interval: 1000\n    timeout: 1500\n    sentinel:\n      master_name: {}\n      \
         servers:\n{servers}",
        free_port(),
        Sentinels::MASTER_NAME,
    ));
    wait_for(
        Duration::from_secs(20),
        "slotline to find the master",
        || slotline.info_field("master").as_deref() == Some(group.addr(0).as_str()),
    );
    slotline
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
        "{what}: {} writes acknowledged, {} lost, {} refused, slowest write {} ms",
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

/// slotline in front of `cluster` (pool `main`, its `timeout` in ms), once it serves; with its port.
fn in_front_of(cluster: &RedisCluster, timeout_ms: u64) -> (Slotline, u16) {
    let port = free_port();
    let seeds: Vec<u16> = cluster.masters().iter().map(|m| m.port).collect();
    let yaml = Slotline::cluster_yaml(port, &seeds)
        .replace("timeout: 1000", &format!("timeout: {timeout_ms}"));
    let slotline = Slotline::start(&yaml);
    wait_ok(
        Duration::from_secs(20),
        "slotline to serve",
        || match slotline.client().cmd(&["SET", "ready", "1"]) {
            r if r.is_ok() => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    (slotline, port)
}

#[test]
fn planned_cluster_failovers_lose_no_acknowledged_write() {
    let cluster = RedisCluster::start(ClusterOpts::default());
    // During CLUSTER FAILOVER the master holds its clients' writes until the replica has taken over
    // (up to a second on this busy machine; 5 s when Redis gives the failover up, 10 s at most),
    // and a write waits that long: a pool `timeout` shorter than the pause turns it into errors
    // (not executed: the old master then answers MOVED, or goes on as master).
    let (slotline, port) = in_front_of(&cluster, 10_000);
    let writers = Writers::start(port);
    for round in 1..=failovers() {
        thread::sleep(Duration::from_millis(300));
        // Each round another shard: its replica takes over (the master pauses its clients until the
        // replica has caught up, then answers MOVED to it).
        let (old, replica) = wait_ok(
            Duration::from_secs(30),
            &format!("round {round}: a master with a linked replica"),
            || {
                let masters = cluster.masters_by_role();
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
        take_over(&cluster, old, replica, &format!("round {round}"));
        eprintln!("round {round}: {replica} took over from {old}");
    }
    thread::sleep(Duration::from_millis(300));
    let seen = writers.stop();
    let what = format!("{} x CLUSTER FAILOVER", failovers());
    check(&seen, &mut slotline.client(), &what);
}

/// `replica` takes over from its master `old` by `CLUSTER FAILOVER`, once it has caught up.
fn take_over(cluster: &RedisCluster, old: u16, replica: u16, what: &str) {
    caught_up(&mut cluster.client(old), &mut cluster.client(replica));
    // A manual failover Redis gives up after 5 s (the masters vote for one shard's failover once
    // per twice the node timeout, 4 s here): asked again until it happens.
    wait_ok(
        Duration::from_secs(60),
        &format!("{what}: {replica} to take over from {old}"),
        || {
            let reply = cluster.client(replica).cmd(&["CLUSTER", "FAILOVER"]);
            assert!(reply.is_ok(), "{what}: CLUSTER FAILOVER: {reply:?}");
            let took_over = support::wait_until(Duration::from_secs(8), || {
                cluster.client(replica).role() == "master"
            });
            took_over.then_some(()).ok_or("not yet".to_string())
        },
    );
}

/// Clients of `port` blocked in `command` (lower case, as CLIENT LIST names it).
fn blocked_in(port: u16, command: &str) -> usize {
    // Sentinel kills the clients of a server it promotes or demotes: a CLIENT LIST it cuts off
    // counts none, and the wait asks again.
    try_client_list(port)
        .unwrap_or_default()
        .iter()
        .filter(|l| l.contains(&format!(" cmd={command} ")) && l.contains(" flags=b "))
        .count()
}

/// A client blocked in BLPOP on a master that `CLUSTER FAILOVER` demotes: Redis unblocks it with
/// `-UNBLOCKED ... instance state changed` (the command did not run), which the client used to get
/// as its answer. slotline sends it again to the new master, with the time it already waited taken
/// off its timeout, and the client gets what is pushed there.
#[test]
fn a_client_blocked_on_a_demoted_master_waits_on_at_the_new_one() {
    let cluster = RedisCluster::start(ClusterOpts::default());
    let (slotline, port) = in_front_of(&cluster, 10_000);
    let key = "jobs";
    let old = cluster.node_for_slot(key_slot(key.as_bytes()));
    let replica = *cluster.replicas_of(old).first().expect("a replica");
    // Every command the replica runs once it is master goes to its slow log, with its arguments.
    assert!(cluster
        .client(replica)
        .cmd(&["CONFIG", "SET", "slowlog-log-slower-than", "0"])
        .is_ok());
    let blocked = thread::spawn(move || Client::connect(port).cmd(&["BLPOP", key, "60"]));
    wait_for(
        Duration::from_secs(10),
        "BLPOP to block on the master",
        || blocked_in(old, "blpop") == 1,
    );
    // Long enough that what it waited shows in the timeout it is sent again with.
    thread::sleep(Duration::from_millis(1100));
    take_over(&cluster, old, replica, "failover under BLPOP");
    waits_on_at(blocked, replica, key, &slotline);
}

/// `blocked`, a client's `BLPOP key 60` that its master gave up, must block again on the server at
/// `port` (the new master), get what an LPUSH through `slotline` puts there, and have been sent
/// there with what it already waited (over a second) taken off its timeout. The server's
/// slowlog-log-slower-than must be 0.
fn waits_on_at(blocked: thread::JoinHandle<Reply>, port: u16, key: &str, slotline: &Slotline) {
    // 60 s: sentinels turn a demoted master into a replica only once they see it (its INFO, every
    // 10 s at most), and a stalled machine can put a sentinel in TILT mode for 30 s.
    let again = support::wait_until(Duration::from_secs(60), || {
        blocked_in(port, "blpop") == 1 || blocked.is_finished()
    });
    if !again || blocked.is_finished() {
        let answered = blocked
            .is_finished()
            .then(|| blocked.join().expect("BLPOP"));
        panic!("BLPOP does not block again on the new master; the client got {answered:?}");
    }
    assert_eq!(
        slotline.client().cmd(&["LPUSH", key, "job-1"]),
        Reply::Int(1)
    );
    assert_eq!(
        blocked.join().expect("BLPOP"),
        Reply::Array(Some(vec![Reply::bulk(key), Reply::bulk("job-1")]))
    );
    let timeout = blpop_timeout_in_slowlog(&mut Client::connect(port));
    eprintln!("BLPOP sent again with a timeout of {timeout} s");
    assert!(
        timeout > 0.0 && timeout <= 59.0,
        "sent again with a timeout of {timeout} s, after waiting over a second of its 60"
    );
}

/// The timeout of the BLPOP in `node`'s slow log (its slowlog-log-slower-than set to 0 beforehand).
fn blpop_timeout_in_slowlog(node: &mut Client) -> f64 {
    // SLOWLOG GET: entries of [id, time, duration, [arguments], client address, client name].
    let log = node.cmd(&["SLOWLOG", "GET", "1000"]);
    let Reply::Array(Some(entries)) = &log else {
        panic!("SLOWLOG GET: {log:?}");
    };
    entries
        .iter()
        .find_map(|entry| match entry {
            Reply::Array(Some(fields)) => match fields.get(3) {
                Some(Reply::Array(Some(args))) if args.first() == Some(&Reply::bulk("BLPOP")) => {
                    args.get(2)?.as_str()?.parse().ok()
                }
                _ => None,
            },
            _ => None,
        })
        .unwrap_or_else(|| panic!("no BLPOP in the slow log: {log:?}"))
}

/// A ROLE-probed primary pool (no Sentinel) in front of `group`, its servers 0 and 1, with `timeout`.
fn primary_pool(group: &ReplicaGroup, timeout_ms: u64) -> Slotline {
    let slotline = Slotline::start(&format!(
        "pools:\n  ha:\n    listen: 127.0.0.1:{}\n    mode: primary\n    probe_interval: 200\n    \
         timeout: {timeout_ms}\n    servers:\n      - {}\n      - {}\n",
        free_port(),
        group.addr(0),
        group.addr(1),
    ));
    wait_for(
        Duration::from_secs(20),
        "slotline to find the master",
        || slotline.info_field("master").as_deref() == Some(group.addr(0).as_str()),
    );
    slotline
}

/// A `BLPOP key 60` through `slotline`, once it has been blocked on server 0 of `group` for over a
/// second (long enough to show in the timeout it is sent again with); server 1 logs every command
/// it runs in its slow log.
fn blocked_blpop(
    slotline: &Slotline,
    group: &ReplicaGroup,
    key: &'static str,
) -> thread::JoinHandle<Reply> {
    let port = slotline.port();
    let blocked = thread::spawn(move || {
        let mut client = Client::connect(port);
        // Its 60 s, not the harness's usual 10: a Sentinel failover takes longer to unblock it.
        client.set_read_timeout(Duration::from_secs(70));
        client.cmd(&["BLPOP", key, "60"])
    });
    wait_for(
        Duration::from_secs(10),
        "BLPOP to block on the master",
        || blocked_in(group.port(0), "blpop") == 1,
    );
    assert!(group
        .client(1)
        .cmd(&["CONFIG", "SET", "slowlog-log-slower-than", "0"])
        .is_ok());
    thread::sleep(Duration::from_millis(1100));
    blocked
}

/// The same in a primary pool: the master is demoted (`REPLICAOF`) before any replica is promoted,
/// so when Redis unblocks the client no master is there yet. slotline looks until one answers as
/// master, and the BLPOP waits on there with what it already waited taken off its timeout.
#[test]
fn a_client_blocked_on_a_demoted_primary_master_waits_on_at_the_one_promoted_next() {
    let group = ReplicaGroup::start(2);
    let slotline = primary_pool(&group, 5000);
    let key = "jobs";
    let blocked = blocked_blpop(&slotline, &group, key);
    group.replicate(0, Some(1));
    // Redis unblocks the client now; for a moment no server is master.
    thread::sleep(Duration::from_millis(300));
    group.replicate(1, None);
    waits_on_at(blocked, group.port(1), key, &slotline);
    assert_eq!(slotline.info_field("master"), Some(group.addr(1)));
}

/// The same behind Sentinel, as the redis-ha chart runs it: `SENTINEL FAILOVER` promotes the
/// replica, and the sentinels turn the old master into a replica a few seconds later, which
/// unblocks the client; by then slotline knows the new master.
#[test]
fn a_client_blocked_on_a_master_sentinel_fails_over_waits_on_at_the_new_one() {
    let group = ReplicaGroup::start(2);
    let sentinels = Sentinels::start(3, group.port(0), DOWN_AFTER_MS, 1);
    let slotline = behind_sentinels(&sentinels, &group);
    let key = "jobs";
    let blocked = blocked_blpop(&slotline, &group, key);
    sentinel_failover(&sentinels, &mut group.client(0), &mut group.client(1));
    waits_on_at(blocked, group.port(1), key, &slotline);
}

/// When no server takes over within the pool's timeout, the client gets Redis's UNBLOCKED after
/// all (its command did not run), rather than waiting on with nowhere to wait.
#[test]
fn a_client_blocked_on_a_demoted_primary_master_is_told_when_no_master_takes_over() {
    let group = ReplicaGroup::start(2);
    let slotline = primary_pool(&group, 1000);
    let blocked = blocked_blpop(&slotline, &group, "jobs");
    // Both servers replicas (of each other): no master at all.
    group.replicate(0, Some(1));
    let told = support::wait_until(Duration::from_secs(20), || blocked.is_finished());
    assert!(
        told,
        "the client still waits 20 s after its master was demoted"
    );
    let reply = blocked.join().expect("BLPOP");
    assert!(
        matches!(&reply, Reply::Error(e) if e.starts_with("UNBLOCKED")),
        "{reply:?}"
    );
}

/// A ROLE-probed primary pool (no Sentinel) over two servers, under writers at full speed, while
/// `switch(group, master, replica)` makes the replica master, `failovers()` times back and forth;
/// then every acknowledged write must be on the last master, and none refused.
fn role_probed_switches(what: &str, switch: impl Fn(&ReplicaGroup, usize, usize)) {
    let group = ReplicaGroup::start(2);
    let slotline = primary_pool(&group, 1500);
    let addr = |i: usize| group.addr(i);
    let writers = Writers::start(slotline.port());
    let mut master = 0;
    for round in 1..=failovers() {
        thread::sleep(Duration::from_millis(300));
        let other = 1 - master;
        group.wait_linked(other);
        switch(&group, master, other);
        wait_for(
            Duration::from_secs(30),
            &format!("round {round}: slotline to switch to {}", addr(other)),
            || slotline.info_field("master").as_deref() == Some(addr(other).as_str()),
        );
        master = other;
        eprintln!("round {round}: master is now {}", addr(master));
    }
    thread::sleep(Duration::from_millis(300));
    let seen = writers.stop();
    let mut reader = Client::try_connect_to(&addr(master)).expect("connect to the master");
    check(&seen, &mut reader, &format!("{} x {what}", failovers()));
}

#[test]
fn redis_failover_command_in_a_role_probed_pool_loses_no_acknowledged_write() {
    // Redis's own coordinated switch (FAILOVER, Redis 6.2+): the master pauses writes until the
    // replica has caught up, then turns replica itself and answers READONLY, which slotline sends
    // once more to the master a look finds. No Sentinel: slotline finds the master by ROLE.
    role_probed_switches("FAILOVER (ROLE probes)", |group, master, replica| {
        let to = group.port(replica).to_string();
        let reply = group
            .client(master)
            .cmd(&["FAILOVER", "TO", "127.0.0.1", &to]);
        assert!(reply.is_ok(), "FAILOVER: {reply:?}");
    });
}

#[test]
fn a_replicaof_switch_that_demotes_the_master_first_loses_no_acknowledged_write() {
    // The order an operator can make safe without Redis's FAILOVER: writes paused on the master
    // until the replica has them all, the master turned replica (the writes it holds are refused
    // with READONLY from then on, and slotline sends each once more to the node that answers as
    // master next), then the replica promoted. Without the pause Redis itself may lose a write the
    // master acknowledged a moment before REPLICAOF, which cuts the link that was carrying it to
    // the replica (CI saw 2 of 168,545).
    role_probed_switches(
        "REPLICAOF, master demoted first (ROLE probes)",
        |group, master, replica| {
            let mut old = group.client(master);
            assert!(old.cmd(&["CLIENT", "PAUSE", "5000", "WRITE"]).is_ok());
            caught_up(&mut old, &mut group.client(replica));
            group.replicate(master, Some(replica));
            group.replicate(replica, None);
            assert!(old.cmd(&["CLIENT", "UNPAUSE"]).is_ok());
        },
    );
}

/// Slots `redis-cli --cluster reshard` moves in the resharding test (`RESHARD_SLOTS`, default 1000;
/// benches/failover.sh moves 4000).
fn reshard_slots() -> usize {
    count_from_env("RESHARD_SLOTS", 1000)
}

#[test]
fn live_resharding_under_pipelined_load_is_invisible_to_clients() {
    const CLIENTS: usize = 32;
    const DEPTH: usize = 16;
    const KEYS_PER_CLIENT: usize = 500;
    let cluster = RedisCluster::start(ClusterOpts {
        replicas_per_master: 0,
        ..ClusterOpts::default()
    });
    let (_slotline, port) = in_front_of(&cluster, 1000);

    // Each client owns its keys, so it knows what every GET must answer: the value its SET just
    // before wrote. Pipelines of SET k v / GET k pairs, keys spread over every slot.
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|t| {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut client = Client::connect(port);
                let mut wrong = Vec::new();
                // When each pipeline was answered, in ms since `started`.
                let mut answered = Vec::new();
                let mut generation = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    generation += 1;
                    let pairs: Vec<(String, String)> = (0..DEPTH / 2)
                        .map(|j| {
                            let i = (generation as usize * DEPTH / 2 + j) % KEYS_PER_CLIENT;
                            (format!("r:{t}:{i}"), format!("{generation}"))
                        })
                        .collect();
                    for (key, value) in &pairs {
                        client.send(&["SET", key, value]);
                        client.send(&["GET", key]);
                    }
                    for (key, value) in &pairs {
                        let set = client.read_reply();
                        let get = client.read_reply();
                        if !set.is_ok() || get != Reply::bulk(value) {
                            wrong.push(format!("SET {key} {value} -> {set:?}, GET -> {get:?}"));
                        }
                    }
                    answered.push(started.elapsed().as_millis() as u64);
                }
                (wrong, answered)
            })
        })
        .collect();

    thread::sleep(Duration::from_secs(2));
    let masters = cluster.masters();
    let (from, to) = (&masters[0], &masters[1]);
    let reshard_start = started.elapsed().as_millis() as u64;
    let output = std::process::Command::new("redis-cli")
        .args(["--cluster", "reshard", &format!("127.0.0.1:{}", from.port)])
        .args(["--cluster-from", &from.id, "--cluster-to", &to.id])
        .args(["--cluster-slots", &reshard_slots().to_string()])
        .args(["--cluster-yes", "--cluster-pipeline", "100"])
        .output()
        .expect("run redis-cli --cluster reshard");
    let reshard_end = started.elapsed().as_millis() as u64;
    assert!(
        output.status.success(),
        "reshard failed: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let results: Vec<(Vec<String>, Vec<u64>)> = threads
        .into_iter()
        .map(|t| t.join().expect("a client thread panicked"))
        .collect();

    let wrong: Vec<&String> = results.iter().flat_map(|(w, _)| w).collect();
    let rate = |from_ms: u64, to_ms: u64| {
        let pipelines = results
            .iter()
            .flat_map(|(_, a)| a)
            .filter(|&&at| at >= from_ms && at < to_ms)
            .count();
        (pipelines * DEPTH) as f64 * 1000.0 / (to_ms - from_ms).max(1) as f64
    };
    let (before, during) = (rate(500, reshard_start), rate(reshard_start, reshard_end));
    eprintln!(
        "resharding {} slots took {} ms under {CLIENTS} clients pipelining {DEPTH}: {} wrong or failed \
         replies; {before:.0} requests/s before, {during:.0} during ({:.2}x)",
        reshard_slots(),
        reshard_end - reshard_start,
        wrong.len(),
        during / before.max(1.0)
    );
    assert!(
        wrong.is_empty(),
        "{} replies wrong or failed during resharding, first: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    // Every slot moved: the cluster agrees with itself.
    let moved = cluster
        .masters()
        .iter()
        .find(|m| m.port == to.port)
        .map_or(0, |m| {
            m.slots.iter().map(|(a, b)| usize::from(b - a + 1)).sum()
        });
    assert!(moved >= reshard_slots(), "{moved} slots on the target");
}

/// Crashes in the crash-failover test (`CRASHES`, default 1; benches/failover.sh runs 10).
fn crashes() -> usize {
    count_from_env("CRASHES", 1)
}

/// What a writer of one master's slots saw in the crash test, with when (since the round began).
#[derive(Default)]
struct Timed {
    acked: Vec<(String, String, Duration)>,
    errors: Vec<(String, Duration)>,
    dropped: Option<String>,
}

/// Writers, `per_master` for each master, each writing its own keys of that master's slots (under
/// `tags`) one at a time until stopped; with the index of the master each writes to.
fn crash_writers(
    port: u16,
    tags: &[Vec<String>],
    per_master: usize,
    round: usize,
    started: Instant,
    stop: &Arc<AtomicBool>,
) -> Vec<(usize, thread::JoinHandle<Timed>)> {
    (0..tags.len())
        .flat_map(|m| (0..per_master).map(move |t| (m, t)))
        .map(|(m, t)| {
            let (stop, tags) = (stop.clone(), tags[m].clone());
            let handle = thread::spawn(move || {
                let mut seen = Timed::default();
                let mut client = Client::connect(port);
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let key = format!("{{{}}}:{round}:{t}:{i}", tags[i % tags.len()]);
                    let value = format!("v{i}");
                    client.send(&["SET", &key, &value]);
                    match client.try_read_reply() {
                        Ok(reply) if reply.is_ok() => {
                            seen.acked.push((key, value, started.elapsed()))
                        }
                        Ok(reply) => seen.errors.push((format!("{reply:?}"), started.elapsed())),
                        Err(e) => {
                            seen.dropped = Some(e.to_string());
                            break;
                        }
                    }
                    if !seen.errors.is_empty() {
                        // While the slots are down, errors come at once: no need to count thousands.
                        thread::sleep(Duration::from_millis(1));
                    }
                }
                seen
            });
            (m, handle)
        })
        .collect()
}

#[test]
fn a_crashed_master_fails_only_its_own_slots_until_its_replica_is_promoted() {
    // Without full coverage the other masters keep serving while the dead one's slots are down: what
    // their clients see is slotline's doing alone.
    let cluster = RedisCluster::start(ClusterOpts {
        extra_args: vec!["--cluster-require-full-coverage".into(), "no".into()],
        ..ClusterOpts::default()
    });
    let (slotline, port) = in_front_of(&cluster, 1000);
    let (mut acked, mut crash_lost, mut slowest) = (0, 0, Duration::ZERO);
    for round in 1..=crashes() {
        let mut masters = cluster.masters();
        masters.sort_by_key(|m| m.port);
        let victim_at = round % masters.len();
        let victim = masters[victim_at].port;
        let replica = cluster.replicas_of(victim)[0];
        // Keys of each master's slots: hash tags found once, so a writer's keys stay on its master.
        let tags: Vec<Vec<String>> = masters
            .iter()
            .map(|m| {
                (0u32..)
                    .map(|n| format!("t{n}"))
                    .filter(|tag| m.owns(support::key_slot(tag.as_bytes())))
                    .take(8)
                    .collect()
            })
            .collect();
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let writers = crash_writers(port, &tags, 2, round, started, &stop);

        thread::sleep(Duration::from_secs(1));
        let killed = started.elapsed();
        cluster.kill(victim);
        // The promotion is visible when the replica answers ROLE as master.
        let promoted = wait_ok(
            Duration::from_secs(30),
            &format!("round {round}: the replica to be promoted"),
            || {
                let role = cluster.client(replica).cmd(&["ROLE"]);
                match role
                    .as_array()
                    .and_then(|a| a.first())
                    .and_then(Reply::as_str)
                {
                    Some("master") => Ok(started.elapsed()),
                    other => {
                        thread::sleep(Duration::from_millis(5));
                        Err(format!("ROLE {other:?}"))
                    }
                }
            },
        );
        thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::Relaxed);
        let seen: Vec<(usize, Timed)> = writers
            .into_iter()
            .map(|(m, h)| (m, h.join().expect("a writer thread panicked")))
            .collect();

        let mut new_master = Client::connect(replica);
        let (mut lost, mut recovered) = (0, Duration::ZERO);
        for (m, seen) in &seen {
            assert!(
                seen.dropped.is_none(),
                "round {round}: a connection to slotline failed: {:?}",
                seen.dropped
            );
            acked += seen.acked.len();
            if *m != victim_at {
                assert!(
                    seen.errors.is_empty(),
                    "round {round}: a client of a live master saw errors: {:?}",
                    &seen.errors[..seen.errors.len().min(5)]
                );
                continue;
            }
            // The dead master's clients: errors only from the kill until its slots work again.
            let last_error = seen.errors.last().map_or(killed, |(_, at)| *at);
            let back = seen
                .acked
                .iter()
                .map(|(_, _, at)| *at)
                .find(|at| *at > last_error)
                .expect("the dead master's slots never worked again");
            recovered = recovered.max(back.saturating_sub(promoted));
            if let Some((error, at)) = seen.errors.first() {
                assert!(
                    *at >= killed,
                    "round {round}: an error before the kill ({at:?}): {error}"
                );
            }
            // Writes acknowledged after the promotion were the new master's; only those the dead
            // master acknowledged and had not yet replicated are gone (Redis's own loss in a crash).
            for (key, value, at) in &seen.acked {
                if new_master.cmd(&["GET", key]) != Reply::bulk(value) {
                    assert!(
                        *at < promoted,
                        "round {round}: {key}, acknowledged {at:?} into the round, after the \
                         promotion, is lost"
                    );
                    lost += 1;
                }
            }
        }
        eprintln!(
            "crash {round}: {victim} killed; {replica} answered as master {} ms later; its slots \
             worked again {} ms after that; {lost} acknowledged writes lost in the crash (not \
             replicated before the kill)",
            (promoted - killed).as_millis(),
            recovered.as_millis()
        );
        // The bound, far above what it takes (tens of ms: a failed request has the
        // topology looked at again, at most every 100 ms); the connection backoff alone took up
        // to 2 s.
        assert!(
            recovered < Duration::from_secs(1),
            "round {round}: the dead master's slots were down {recovered:?} after the promotion; {}",
            slotline.log()
        );
        crash_lost += lost;
        slowest = slowest.max(recovered);
        // The dead master comes back as a replica of the one that took over.
        cluster.restart(victim);
        cluster.wait_healthy(Duration::from_secs(60));
        wait_for(
            Duration::from_secs(60),
            &format!("round {round}: {victim} to be a linked replica again"),
            || {
                let info = cluster.client(victim).cmd(&["INFO", "replication"]);
                info.as_str()
                    .is_some_and(|i| i.contains("master_link_status:up"))
            },
        );
    }
    eprintln!(
        "{} crash failovers: {acked} writes acknowledged, {crash_lost} lost in crashes, slots back \
         at most {} ms after a promotion",
        crashes(),
        slowest.as_millis()
    );
}
