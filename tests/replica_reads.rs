//! A Redis Cluster's replicas serve reads through slotline (issue 25): read policies per pool, per
//! listener (`read_listen`) and per client (READONLY/READWRITE), replicas that lag or stop answering
//! left out, a client that always reads its own writes, zone affinity, and a killed replica costing
//! no read. Every check counts what the nodes themselves ran (INFO commandstats).

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use support::{
    free_port, http_get, metric, wait_ok, Client, ClusterOpts, KubeApi, PodEndpoint, RedisCluster,
    Reply, Slice, Slotline, TempDir,
};

const WAIT: Duration = Duration::from_secs(20);

fn cluster() -> RedisCluster {
    let cluster = RedisCluster::start(ClusterOpts::default());
    cluster.wait_healthy(WAIT);
    cluster
}

/// A cluster pool in front of `cluster` with `extra` settings (indented for the pool).
fn yaml(port: u16, cluster: &RedisCluster, extra: &str) -> String {
    let seeds: Vec<u16> = cluster.masters().iter().map(|m| m.port).collect();
    let mut yaml = Slotline::cluster_yaml(port, &seeds);
    yaml.push_str(extra);
    yaml
}

/// `cmdstat_<name>` calls on the node at `port`.
fn calls(cluster: &RedisCluster, port: u16, name: &str) -> u64 {
    let info = cluster.cli(port, &["INFO", "commandstats"]);
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{name}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn reset_stats(cluster: &RedisCluster) {
    for port in cluster.live_ports() {
        cluster.cli(port, &["CONFIG", "RESETSTAT"]);
    }
}

/// (masters, replicas) by port.
fn roles(cluster: &RedisCluster) -> (Vec<u16>, Vec<u16>) {
    let masters: Vec<u16> = cluster.masters().iter().map(|m| m.port).collect();
    let replicas = masters
        .iter()
        .flat_map(|&m| cluster.replicas_of(m))
        .collect();
    (masters, replicas)
}

fn total(cluster: &RedisCluster, ports: &[u16], name: &str) -> u64 {
    ports.iter().map(|&p| calls(cluster, p, name)).sum()
}

/// slotline's INFO, as text.
fn info(client: &mut Client) -> String {
    match client.cmd(&["INFO", "slotline"]) {
        Reply::Bulk(Some(b)) => String::from_utf8_lossy(&b).into_owned(),
        other => panic!("INFO: {other:?}"),
    }
}

/// Waits until slotline says every replica of the cluster serves reads (or, with `serving`
/// false, that the one at `port` does not).
fn wait_serving(client: &mut Client, expect: usize, port: Option<(u16, bool)>) {
    wait_ok(WAIT, "replicas to qualify for reads", || {
        let info = info(client);
        let lines: Vec<&str> = info
            .lines()
            .filter(|l| l.starts_with("replica_main_"))
            .collect();
        let serving = lines
            .iter()
            .filter(|l| l.contains("serving_reads=1"))
            .count();
        match port {
            None if serving == expect => Ok(()),
            Some((port, want)) => {
                let line = lines.iter().find(|l| l.contains(&format!(":{port},")));
                match line {
                    Some(l) if l.contains(&format!("serving_reads={}", u8::from(want))) => Ok(()),
                    _ => Err(info.clone()),
                }
            }
            _ => Err(info.clone()),
        }
    });
}

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("read:{i}")).collect()
}

/// A 3+3 cluster behind a pool with `extra` settings, `n` keys set (each to its own name), and
/// every replica serving reads; with the pool's port and a client of it.
fn serving_pool(extra: &str, n: usize) -> (RedisCluster, Slotline, u16, Client, Arc<Vec<String>>) {
    let cluster = cluster();
    let port = free_port();
    let proxy = Slotline::start(&yaml(port, &cluster, extra));
    let mut client = proxy.client();
    let keys = Arc::new(keys(n));
    for k in keys.iter() {
        assert_eq!(client.cmd(&["SET", k, k]), Reply::ok());
    }
    wait_serving(&mut client, 3, None);
    (cluster, proxy, port, client, keys)
}

#[test]
fn replicas_serve_the_reads_and_masters_every_write() {
    let cluster = cluster();
    let (port, admin) = (free_port(), free_port());
    let proxy = Slotline::start(&format!(
        "{}admin:\n  listen: 127.0.0.1:{admin}\n",
        yaml(port, &cluster, "    read_from: replica\n")
    ));
    let mut writer = proxy.client();
    let keys = keys(300);
    for k in &keys {
        assert_eq!(writer.cmd(&["SET", k, k]), Reply::ok());
    }
    wait_serving(&mut writer, 3, None);
    reset_stats(&cluster);
    let (masters, replicas) = roles(&cluster);
    for k in &keys {
        assert_eq!(writer.cmd(&["SET", k, k]), Reply::ok());
    }
    // Another client, which never wrote: nothing holds its reads on the masters.
    let mut reader = proxy.client();
    for _ in 0..3 {
        for k in &keys {
            assert_eq!(reader.cmd(&["GET", k]), Reply::bulk(k));
        }
    }
    let (on_masters, on_replicas) = (
        total(&cluster, &masters, "get"),
        total(&cluster, &replicas, "get"),
    );
    assert!(
        on_replicas * 100 >= (on_masters + on_replicas) * 95,
        "GETs: {on_replicas} on replicas, {on_masters} on masters"
    );
    assert_eq!(on_replicas + on_masters, 900);
    // Every SET ran on a master (a replica's own count is what it replicated).
    assert_eq!(total(&cluster, &masters, "set"), 300);
    // Each replica took some: the reads spread with the slots.
    for &r in &replicas {
        assert!(calls(&cluster, r, "get") > 0, "replica {r} served no read");
    }
    let text = info(&mut reader);
    assert!(text.contains("reads_main:read_from=replica"), "{text}");
    // Operators see the same in /metrics: each replica, its master, that it serves reads.
    let metrics = http_get(admin, "/metrics").body;
    let to_replicas = metric(
        &metrics,
        "slotline_reads_total{pool=\"main\",to=\"replica\"}",
    );
    assert_eq!(to_replicas, Some(on_replicas as f64), "{metrics}");
    for (master, replica) in masters
        .iter()
        .flat_map(|&m| cluster.replicas_of(m).into_iter().map(move |r| (m, r)))
    {
        let at = format!("backend=\"127.0.0.1:{replica}\",pool=\"main\"");
        let serving = metric(&metrics, &format!("slotline_replica_serving_reads{{{at}}}"));
        assert_eq!(serving, Some(1.0), "{metrics}");
        let known = format!("slotline_replica{{backend=\"127.0.0.1:{replica}\",master=\"127.0.0.1:{master}\",pool=\"main\",zone=\"\"}} 1");
        assert!(metrics.contains(&known), "{known} in {metrics}");
        assert!(metric(
            &metrics,
            &format!("slotline_replica_lag_milliseconds{{{at}}}")
        )
        .is_some());
    }
    // A cross-slot MGET's parts and a read sent to every master go to the replicas too.
    reset_stats(&cluster);
    let some: Vec<&str> = keys.iter().take(20).map(String::as_str).collect();
    let mut mget = vec!["MGET"];
    mget.extend(&some);
    let want = Reply::Array(Some(some.iter().map(Reply::bulk).collect()));
    assert_eq!(reader.cmd(&mget), want);
    assert_eq!(reader.cmd(&["DBSIZE"]), Reply::Int(300));
    assert_eq!(total(&cluster, &masters, "mget"), 0);
    assert_eq!(
        total(&cluster, &replicas, "mget"),
        20,
        "one part per slot, all on replicas"
    );
    assert_eq!(total(&cluster, &masters, "dbsize"), 0);
    assert_eq!(total(&cluster, &replicas, "dbsize"), 3);
}

#[test]
fn a_client_reads_its_own_writes_through_replica_reads() {
    let cluster = cluster();
    let port = free_port();
    let proxy = Slotline::start(&yaml(port, &cluster, "    read_from: replica\n"));
    let mut client = proxy.client();
    wait_serving(&mut client, 3, None);
    reset_stats(&cluster);
    let rounds: usize = std::env::var("RYW_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let mut stale = Vec::new();
    for i in 0..rounds {
        let key = format!("ryw:{}", i % 64);
        let value = i.to_string();
        if i % 2 == 0 {
            // The read pipelined right behind the write, sent before its reply came back.
            client.send(&["SET", &key, &value]);
            client.send(&["GET", &key]);
            assert_eq!(client.read_reply(), Reply::ok());
        } else {
            assert_eq!(client.cmd(&["SET", &key, &value]), Reply::ok());
        }
        if i % 1000 == 999 {
            // A pause now and then: the replicas catch up, and the client's reads may go there.
            thread::sleep(Duration::from_millis(250));
        }
        let got = if i % 2 == 0 {
            client.read_reply()
        } else {
            client.cmd(&["GET", &key])
        };
        if got != Reply::bulk(&value) {
            stale.push((i, got));
        }
    }
    assert!(
        stale.is_empty(),
        "{} older reads, first {:?}",
        stale.len(),
        stale.first()
    );
    // After a pause, the client's reads went to replicas: read-your-writes did not simply turn
    // replica reads off.
    let (_, replicas) = roles(&cluster);
    let pauses = (rounds / 1000) as u64;
    assert!(
        total(&cluster, &replicas, "get") >= pauses / 2,
        "replicas served {} of the client's reads after {pauses} pauses",
        total(&cluster, &replicas, "get")
    );
}

#[test]
fn a_stopped_replica_gets_no_reads_until_it_answers_again() {
    let (cluster, _proxy, _, mut reader, keys) = serving_pool(
        "    read_from: prefer_replica\n    max_replica_lag: 500\n",
        200,
    );
    let (_, replicas) = roles(&cluster);
    let stopped = replicas[0];
    let before = calls(&cluster, stopped, "get");
    cluster.signal(stopped, "STOP");
    wait_serving(&mut reader, 3, Some((stopped, false)));
    for k in keys.iter() {
        assert_eq!(
            reader.cmd(&["GET", k]),
            Reply::bulk(k),
            "while {stopped} is stopped"
        );
    }
    cluster.signal(stopped, "CONT");
    assert_eq!(
        calls(&cluster, stopped, "get"),
        before,
        "the stopped replica was sent reads"
    );
    wait_serving(&mut reader, 3, Some((stopped, true)));
    for k in keys.iter() {
        assert_eq!(reader.cmd(&["GET", k]), Reply::bulk(k));
    }
    assert!(
        calls(&cluster, stopped, "get") > before,
        "{stopped} serves reads again"
    );
}

#[test]
fn a_replica_killed_under_read_load_costs_no_read() {
    reads_go_on_through("KILL");
}

#[test]
fn a_replica_stopped_under_read_load_costs_no_read() {
    reads_go_on_through("STOP");
}

/// Four readers (GETs and a cross-slot MGET) through `prefer_replica` while a replica is sent
/// `signal`: none gets an error or a wrong value, and some reads were run again on a master.
fn reads_go_on_through(signal: &str) {
    let (cluster, _proxy, port, mut client, keys) =
        serving_pool("    read_from: prefer_replica\n", 200);
    let stop = Arc::new(AtomicBool::new(false));
    let (reads, errors) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (keys, stop, reads, errors) =
                (keys.clone(), stop.clone(), reads.clone(), errors.clone());
            thread::spawn(move || {
                let mut c = Client::connect(port);
                let mut first = None;
                // A cross-slot MGET too: its parts go to several replicas at once.
                let some: Vec<&str> = keys.iter().take(10).map(String::as_str).collect();
                let mut mget = vec!["MGET"];
                mget.extend(&some);
                let all = Reply::Array(Some(some.iter().map(Reply::bulk).collect()));
                while !stop.load(Ordering::Relaxed) {
                    for k in keys.iter().take(50) {
                        let got = c.cmd(&["GET", k]);
                        reads.fetch_add(1, Ordering::Relaxed);
                        if got != Reply::bulk(k) {
                            errors.fetch_add(1, Ordering::Relaxed);
                            first.get_or_insert(got);
                        }
                    }
                    let got = c.cmd(&mget);
                    if got != all {
                        errors.fetch_add(1, Ordering::Relaxed);
                        first.get_or_insert(got);
                    }
                }
                first
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(500));
    let (_, replicas) = roles(&cluster);
    match signal {
        "KILL" => cluster.kill(replicas[1]),
        // Its reads in flight get no answer: each is run again on the master after `timeout`.
        _ => cluster.signal(replicas[1], signal),
    }
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let firsts: Vec<Reply> = readers
        .into_iter()
        .filter_map(|r| r.join().expect("reader"))
        .collect();
    assert_eq!(
        errors.load(Ordering::Relaxed),
        0,
        "of {} reads; first: {firsts:?}",
        reads.load(Ordering::Relaxed)
    );
    assert!(reads.load(Ordering::Relaxed) > 1000);
    if signal == "STOP" {
        cluster.signal(replicas[1], "CONT");
    }
    // They were read again on the masters: the replica failed some before it was left out.
    let text = info(&mut client);
    let retries: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("reads_main:"))
        .and_then(|l| l.split(',').find_map(|f| f.strip_prefix("master_retries=")))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(retries > 0, "{text}");
}

#[test]
fn each_client_and_listener_chooses_where_its_reads_go() {
    let cluster = cluster();
    let (port, replica_port) = (free_port(), free_port());
    let proxy = Slotline::start(&yaml(
        port,
        &cluster,
        &format!("    read_listen:\n      \"127.0.0.1:{replica_port}\": replica\n"),
    ));
    let mut client = proxy.client();
    let keys = keys(100);
    for k in &keys {
        assert_eq!(client.cmd(&["SET", k, k]), Reply::ok());
    }
    wait_serving(&mut client, 3, None);
    let (masters, replicas) = roles(&cluster);
    let read_all = |c: &mut Client| {
        for k in &keys {
            assert_eq!(c.cmd(&["GET", k]), Reply::bulk(k));
        }
    };
    let count = || {
        (
            total(&cluster, &masters, "get"),
            total(&cluster, &replicas, "get"),
        )
    };
    // The pool's own listener: masters (read_from: master, the default).
    reset_stats(&cluster);
    let mut plain = Client::connect(port);
    read_all(&mut plain);
    assert_eq!(count(), (100, 0));
    // READONLY on the same listener: this connection's reads go to replicas; READWRITE undoes it.
    reset_stats(&cluster);
    assert_eq!(plain.cmd(&["READONLY"]), Reply::ok());
    read_all(&mut plain);
    assert_eq!(count(), (0, 100));
    reset_stats(&cluster);
    assert_eq!(plain.cmd(&["READWRITE"]), Reply::ok());
    read_all(&mut plain);
    assert_eq!(count(), (100, 0));
    // The read listener: replicas, on the same backend connections.
    reset_stats(&cluster);
    let mut reads = Client::connect(replica_port);
    read_all(&mut reads);
    assert_eq!(count(), (0, 100));
    // Writes there still go to the masters.
    assert_eq!(reads.cmd(&["SET", "read:0", "x"]), Reply::ok());
    assert_eq!(reads.cmd(&["GET", "read:0"]), Reply::bulk("x"));
}

#[test]
fn nearest_policies_follow_zones_from_the_config() {
    let cluster = cluster();
    let (masters, replicas) = roles(&cluster);
    let zones = |local: &[u16], other: &[u16]| {
        let mut yaml = String::from("    zone: zone-a\n    zones:\n");
        for p in local {
            yaml.push_str(&format!("      \"127.0.0.1:{p}\": zone-a\n"));
        }
        for p in other {
            yaml.push_str(&format!("      \"127.0.0.1:{p}\": zone-b\n"));
        }
        yaml
    };
    let keys = keys(100);
    for (policy, local, other, expect) in [
        // The masters are in slotline's zone, the replicas elsewhere: nearest reads the masters.
        ("nearest", &masters, &replicas, (100, 0)),
        // The other way round: the replicas.
        ("nearest", &replicas, &masters, (0, 100)),
        // nearest_replica always prefers a replica, even in another zone.
        ("nearest_replica", &masters, &replicas, (0, 100)),
    ] {
        let port = free_port();
        let extra = format!("    read_from: {policy}\n{}", zones(local, other));
        let proxy = Slotline::start(&yaml(port, &cluster, &extra));
        let mut client = proxy.client();
        for k in &keys {
            assert_eq!(client.cmd(&["SET", k, k]), Reply::ok());
        }
        wait_serving(&mut client, 3, None);
        reset_stats(&cluster);
        let mut reader = proxy.client();
        for k in &keys {
            assert_eq!(reader.cmd(&["GET", k]), Reply::bulk(k));
        }
        let got = (
            total(&cluster, &masters, "get"),
            total(&cluster, &replicas, "get"),
        );
        assert_eq!(got, expect, "{policy} with {local:?} in zone-a");
    }
}

#[test]
fn nearest_replica_follows_zones_from_endpoint_slices() {
    let cluster = cluster();
    let (masters, replicas) = roles(&cluster);
    let api = KubeApi::start();
    const NS: &str = "redis";
    // Each node its own slice, in its own zone: the first master's replica in slotline's.
    for (i, port) in cluster.live_ports().into_iter().enumerate() {
        let mut endpoint = PodEndpoint::ready("127.0.0.1", &format!("redis-{i}"));
        endpoint.zone = Some(match port == replicas[0] {
            true => "zone-a".into(),
            false => format!("zone-{port}"),
        });
        api.apply_slice(
            NS,
            &Slice::new(&format!("redis-{i}"), "redis-cluster", port, vec![endpoint]),
        );
    }
    let dir = TempDir::new("kubeconfig");
    let kubeconfig = api.write_kubeconfig(&dir).to_string_lossy().into_owned();
    let port = free_port();
    let proxy = Slotline::start_with_env(
        &format!(
            "pools:\n  main:\n    listen: 127.0.0.1:{port}\n    mode: cluster\n    read_from: nearest\n    zone: zone-a\n    kubernetes:\n      service: redis-cluster\n      namespace: {NS}\n"
        ),
        &[("KUBECONFIG", &kubeconfig)],
    );
    let mut client = proxy.client();
    let keys = keys(300);
    wait_ok(WAIT, "the pool to serve", || {
        match client.cmd(&["SET", "probe", "1"]) {
            r if r.is_ok() => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    for k in &keys {
        assert_eq!(client.cmd(&["SET", k, k]), Reply::ok());
    }
    wait_serving(&mut client, 3, None);
    wait_ok(WAIT, "slotline to learn the zones", || {
        let text = info(&mut client);
        match text.contains("zone=zone-a") {
            true => Ok(()),
            false => Err(text),
        }
    });
    reset_stats(&cluster);
    let mut reader = proxy.client();
    for k in &keys {
        assert_eq!(reader.cmd(&["GET", k]), Reply::bulk(k));
    }
    // The local replica serves its master's slots; the others' slots read from replicas too
    // (nearest: no node of theirs is local, so as nearest_replica).
    let local_master = masters
        .iter()
        .copied()
        .find(|&m| cluster.replicas_of(m).contains(&replicas[0]))
        .expect("the local replica's master");
    assert!(calls(&cluster, replicas[0], "get") > 0);
    assert_eq!(calls(&cluster, local_master, "get"), 0);
    assert_eq!(total(&cluster, &masters, "get"), 0);
}

#[test]
fn a_promoted_replica_takes_the_writes_while_reads_go_on() {
    let (cluster, _proxy, port, mut client, keys) =
        serving_pool("    read_from: prefer_replica\n", 200);
    let stop = Arc::new(AtomicBool::new(false));
    let wrong = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (keys, stop, wrong) = (keys.clone(), stop.clone(), wrong.clone());
        thread::spawn(move || {
            let mut c = Client::connect(port);
            let (mut reads, mut first) = (0, None);
            while !stop.load(Ordering::Relaxed) {
                for k in keys.iter() {
                    let got = c.cmd(&["GET", k]);
                    reads += 1;
                    if got != Reply::bulk(k) {
                        wrong.fetch_add(1, Ordering::Relaxed);
                        first.get_or_insert(got);
                    }
                }
            }
            (reads, first)
        })
    };
    let master = cluster.masters()[0].port;
    let replica = cluster.replicas_of(master)[0];
    assert_eq!(cluster.cli(replica, &["CLUSTER", "FAILOVER"]).trim(), "OK");
    wait_ok(WAIT, "the replica to take over", || {
        match cluster.client(replica).role() == "master" {
            true => Ok(()),
            false => Err("still a replica".into()),
        }
    });
    cluster.wait_roles_settled(WAIT);
    // Writes: every one acknowledged, the promoted replica's slots on it.
    let before = calls(&cluster, replica, "set");
    for k in keys.iter() {
        assert_eq!(client.cmd(&["SET", k, k]), Reply::ok());
    }
    assert!(
        calls(&cluster, replica, "set") > before,
        "the promoted replica took no write"
    );
    // The demoted master is a replica now, measured and serving reads like the others.
    wait_serving(&mut client, 3, Some((master, true)));
    stop.store(true, Ordering::Relaxed);
    let (reads, first) = reader.join().expect("reader");
    assert_eq!(
        wrong.load(Ordering::Relaxed),
        0,
        "of {reads} reads; first: {first:?}"
    );
}
