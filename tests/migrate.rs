//! A migrating pool (docs/migration.md) against real backends: standalone shards placed by the
//! real `nutcracker`'s ring move into a 3-master cluster (and a ring grows from 3 servers to 4)
//! while clients read, write, delete and expire keys through two slotline processes serving the
//! same pool. Afterwards every key is where the new placement says, with its value and TTL; no
//! deleted key is back; no client saw a wrong value or an error.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use support::{
    free_port, wait_ok, Client, ClusterOpts, Nutcracker, RedisCluster, RedisServers, Reply,
    Slotline,
};

/// Server lines `127.0.0.1:port:1 sN` of `servers`, indented for YAML.
fn server_lines(servers: &RedisServers, count: usize, indent: &str) -> String {
    (0..count)
        .map(|i| format!("{indent}- 127.0.0.1:{}:1 s{i}\n", servers.port(i)))
        .collect()
}

fn nutcracker_yaml(port: u16, servers: &RedisServers, count: usize) -> String {
    format!(
        "alpha:\n  listen: 127.0.0.1:{port}\n  hash: murmur\n  hash_tag: \"{{}}\"\n  distribution: ketama\n  \
         redis: true\n  servers:\n{}",
        server_lines(servers, count, "   ")
    )
}

/// The `migrate:` block moving from the first `count` of `servers`.
fn migrate_from(servers: &RedisServers, count: usize, rate: u64) -> String {
    format!(
        "    migrate:\n      rate: {rate}\n      batch: 50\n      from:\n        mode: ketama\n        hash: murmur\n        \
         hash_tag: \"{{}}\"\n        servers:\n{}",
        server_lines(servers, count, "          ")
    )
}

/// What the test wrote: the value of every key (None: deleted), and the keys given a long TTL.
#[derive(Default)]
struct Model {
    values: HashMap<String, Option<String>>,
    ttl: Vec<String>,
}

/// nutcracker's ring over the first three of `servers`, loaded with `keys` keys of every type, and
/// the model of what they hold.
fn loaded_ring(servers: &RedisServers, keys: usize) -> (Nutcracker, Model) {
    let port = free_port();
    let ring = Nutcracker::start(&nutcracker_yaml(port, servers, 3), port);
    let mut model = Model::default();
    preload(&ring, &mut model, keys);
    (ring, model)
}

/// Loads keys of every type through nutcracker (so each is where nutcracker's ring puts it).
fn preload(nutcracker: &Nutcracker, model: &mut Model, count: usize) {
    let mut client = nutcracker.client();
    for i in 0..count {
        let key = format!("pre:{i}");
        match i % 5 {
            // Expires while the keys move: it must not come back.
            0 if i % 10 == 0 => {
                assert!(client
                    .cmd(&["SET", &key, &format!("v{i}"), "PX", "1500"])
                    .is_ok());
                model.values.insert(key, None);
            }
            0 => {
                assert!(client.cmd(&["SET", &key, &format!("v{i}")]).is_ok());
                model.values.insert(key, Some(format!("v{i}")));
            }
            1 => {
                assert!(client
                    .cmd(&["SET", &key, &format!("v{i}"), "EX", "3600"])
                    .is_ok());
                model.values.insert(key.clone(), Some(format!("v{i}")));
                model.ttl.push(key);
            }
            2 => {
                assert_eq!(
                    client.cmd(&["HSET", &key, "f", &format!("h{i}")]).as_int(),
                    Some(1)
                );
            }
            3 => {
                assert_eq!(client.cmd(&["RPUSH", &key, "a", "b"]).as_int(), Some(2));
            }
            _ => {
                assert_eq!(client.cmd(&["ZADD", &key, "1", "m"]).as_int(), Some(1));
            }
        }
    }
}

/// What one client thread saw: errors and wrong values.
type Seen = Vec<String>;

/// `threads` clients, each on its own keys, alternating between `ports`, writing, reading back,
/// deleting and reading preloaded keys until `stop`; each returns its model and what went wrong.
fn clients(
    ports: &[u16],
    threads: usize,
    preloaded: usize,
    stop: Arc<AtomicBool>,
) -> Vec<thread::JoinHandle<(Model, Seen)>> {
    (0..threads)
        .map(|t| {
            let port = ports[t % ports.len()];
            let stop = stop.clone();
            thread::spawn(move || {
                let mut client = Client::connect(port);
                let mut model = Model::default();
                let mut seen = Vec::new();
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let key = format!("t{t}:{}", i % 200);
                    let reply = match i % 5 {
                        // A key that expires at once: never read back here, absent at the end.
                        4 => {
                            let key = format!("e{t}:{}", i % 50);
                            model.values.insert(key.clone(), None);
                            client.cmd(&["SET", &key, "gone", "PX", "50"])
                        }
                        0 | 1 => {
                            let value = format!("{t}-{i}");
                            let r = client.cmd(&["SET", &key, &value]);
                            model.values.insert(key.clone(), Some(value));
                            r
                        }
                        2 => {
                            let r = client.cmd(&["DEL", &key]);
                            model.values.insert(key.clone(), None);
                            r
                        }
                        _ => {
                            let want = model.values.get(&key).cloned().flatten();
                            let r = client.cmd(&["GET", &key]);
                            let got = r.as_bytes().map(|b| String::from_utf8_lossy(b).to_string());
                            if !r.is_error() && got != want {
                                seen.push(format!("GET {key}: {got:?}, wrote {want:?}"));
                            }
                            r
                        }
                    };
                    if reply.is_error() {
                        seen.push(format!("{key}: {reply:?}"));
                    }
                    // A preloaded key, read through the migrating pool: its type and value held.
                    let pre = (t * 7919 + i * 31) % preloaded;
                    if pre % 5 == 2 {
                        let r = client.cmd(&["HGET", &format!("pre:{pre}"), "f"]);
                        if r != Reply::bulk(format!("h{pre}")) {
                            seen.push(format!("HGET pre:{pre}: {r:?}"));
                        }
                    }
                }
                (model, seen)
            })
        })
        .collect()
}

fn info_field(port: u16, name: &str) -> Option<String> {
    let reply = Client::connect(port).cmd(&["INFO", "migration"]);
    let text = String::from_utf8_lossy(reply.as_bytes()?).to_string();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(|v| v.trim().to_string())
}

/// Runs clients against both proxies until the migration is done on both, and returns their models.
fn move_under_load(ports: &[u16], preloaded: usize) -> Model {
    let stop = Arc::new(AtomicBool::new(false));
    let threads = clients(ports, 16, preloaded, stop.clone());
    thread::sleep(Duration::from_millis(500));
    finish(ports, stop, threads)
}

/// Waits until every proxy on `ports` says the migration is done, stops the clients and returns
/// what they wrote; panics with what they saw go wrong, if anything did.
fn finish(
    ports: &[u16],
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<(Model, Seen)>>,
) -> Model {
    for &port in ports {
        wait_ok(
            Duration::from_secs(120),
            "the migration to be done",
            || match info_field(port, "migration_state").as_deref() {
                Some("done") => Ok(()),
                other => Err(format!(
                    "state {other:?}; {:?} remaining",
                    info_field(port, "migration_keys_remaining")
                )),
            },
        );
    }
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let mut model = Model::default();
    let mut seen = Vec::new();
    for t in threads {
        let (m, s) = t.join().expect("a client thread");
        model.values.extend(m.values);
        seen.extend(s);
    }
    // The last keys set to expire at once (PX 50) have expired.
    thread::sleep(Duration::from_millis(200));
    assert!(
        seen.is_empty(),
        "clients saw {} problems: {:?}",
        seen.len(),
        &seen[..seen.len().min(10)]
    );
    model
}

/// A 3-master cluster with no replicas, and two slotline processes serving it as pool `main` with
/// the `migrate:` block `block`; the first also has an admin listener. Returns the cluster, the
/// proxies, their ports and the admin port.
fn two_proxies_into_a_cluster(block: &str) -> (RedisCluster, Vec<Slotline>, [u16; 2], u16) {
    let cluster = RedisCluster::start(ClusterOpts {
        replicas_per_master: 0,
        ..Default::default()
    });
    let seeds: String = cluster
        .masters()
        .iter()
        .map(|m| format!("      - 127.0.0.1:{}\n", m.port))
        .collect();
    let ports = [free_port(), free_port()];
    let admin = free_port();
    let proxies = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            let admin = match i {
                0 => format!("admin:\n  listen: 127.0.0.1:{admin}\n"),
                _ => String::new(),
            };
            Slotline::start(&format!(
                "{admin}pools:\n  main:\n    listen: 127.0.0.1:{port}\n    mode: cluster\n    servers:\n{seeds}{block}"
            ))
        })
        .collect();
    (cluster, proxies, ports, admin)
}

#[test]
fn shards_move_into_a_cluster_while_two_proxies_serve_clients() {
    let shards = RedisServers::start(3);
    let (_nutcracker, mut model) = loaded_ring(&shards, 2000);
    let (cluster, proxies, ports, admin) =
        two_proxies_into_a_cluster(&migrate_from(&shards, 3, 1000));
    // The admin port drives this process's mover.
    let post = |path: &str| {
        let request = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
        support::http_raw(admin, request.as_bytes())
            .expect("admin reply")
            .body
    };
    // `start: auto`: each proxy starts by itself, after the start's hold.
    for &port in &ports {
        wait_ok(Duration::from_secs(10), "moving", || {
            match info_field(port, "migration_state").as_deref() {
                Some("moving" | "done") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        });
    }
    assert!(post("/migration/pause").contains("migration_state:paused"));
    assert!(post("/migration/resume").contains("migration_state:moving"));
    assert!(support::http_get(admin, "/migration")
        .body
        .contains("migration_pool:main"));
    // While keys are on both sides, the keyspace as a whole cannot be listed.
    let refused = Client::connect(ports[0]).cmd(&["KEYS", "*"]);
    assert!(
        matches!(&refused, Reply::Error(e) if e.contains("migrates")),
        "{refused:?}"
    );

    let clients = move_under_load(&ports, 2000);
    model.values.extend(clients.values);

    // Every key is on the master that owns its slot, with its value and TTL; none is left behind.
    for (key, value) in &model.values {
        let owner = cluster.node_for_slot(support::key_slot(key.as_bytes()));
        let got = cluster.client(owner).cmd(&["GET", key]);
        match value {
            Some(v) => assert_eq!(got, Reply::bulk(v), "{key} on its owner {owner}"),
            None => assert_eq!(got, Reply::nil(), "{key} was deleted and must stay so"),
        }
    }
    for key in &model.ttl {
        let owner = cluster.node_for_slot(support::key_slot(key.as_bytes()));
        let ttl = cluster
            .client(owner)
            .cmd(&["TTL", key])
            .as_int()
            .unwrap_or(-3);
        assert!((3000..=3600).contains(&ttl), "{key} kept its TTL: {ttl}");
    }
    for i in (2..2000).step_by(5) {
        let key = format!("pre:{i}");
        let owner = cluster.node_for_slot(support::key_slot(key.as_bytes()));
        assert_eq!(
            cluster.client(owner).cmd(&["HGET", &key, "f"]),
            Reply::bulk(format!("h{i}"))
        );
    }
    only_marks_left(&shards);
    // Done: the keyspace is whole again, and the metrics say so.
    assert!(Client::connect(ports[1])
        .cmd(&["KEYS", "t0:*"])
        .as_array()
        .is_some());
    let metrics = support::http_get(admin, "/metrics").body;
    assert_eq!(
        support::metric(&metrics, "slotline_migration_done{pool=\"main\"}"),
        Some(1.0)
    );
    let moved = ["mover", "touch"]
        .iter()
        .map(|by| {
            let series =
                format!("slotline_migration_keys_moved_total{{by=\"{by}\",pool=\"main\"}}");
            support::metric(&metrics, &series).unwrap_or(0.0)
        })
        .sum::<f64>();
    assert!(moved > 0.0, "{metrics}");
    // What the mover moved, in bytes: at least the 5-byte values of the keys it moved.
    let series = "slotline_migration_bytes_moved_total{pool=\"main\"}";
    let by_mover = "slotline_migration_keys_moved_total{by=\"mover\",pool=\"main\"}";
    let (bytes, keys) = (
        support::metric(&metrics, series).unwrap_or(0.0),
        support::metric(&metrics, by_mover).unwrap_or(0.0),
    );
    assert!(
        keys > 0.0 && bytes >= 5.0 * keys,
        "{bytes} bytes for {keys} keys"
    );
    let rate = support::metric(
        &metrics,
        "slotline_migration_rate_keys_per_second{pool=\"main\"}",
    );
    assert!(rate.is_some_and(|r| r > 0.0), "{metrics}");

    // A client still on the old placement writes behind slotline's back: the key is found on the
    // emptied shard, reported, and moved where slotline's clients see it.
    let mut old_client = shards.client(0);
    assert!(old_client.cmd(&["SET", "stray:1", "written late"]).is_ok());
    wait_ok(
        Duration::from_secs(30),
        "the stray key to be reported and moved",
        || {
            // Either proxy may be the one that finds it.
            let stray: u64 = ports
                .iter()
                .filter_map(|&p| info_field(p, "migration_stray_keys")?.parse::<u64>().ok())
                .sum();
            let state = info_field(ports[0], "migration_state");
            let got = Client::connect(ports[0]).cmd(&["GET", "stray:1"]);
            match (state.as_deref(), &got) {
                (Some("done"), Reply::Bulk(Some(v))) if stray > 0 && v == b"written late" => Ok(()),
                _ => Err(format!("stray {stray}, state {state:?}, GET {got:?}")),
            }
        },
    );
    drop(proxies);
}

#[test]
fn a_ring_grows_from_three_servers_to_four_and_a_restarted_proxy_carries_on() {
    let servers = RedisServers::start(4);
    let (_old_ring, mut model) = loaded_ring(&servers, 2000);

    let ports = [free_port(), free_port()];
    let config = |port: u16| {
        format!(
            "pools:\n  main:\n    listen: 127.0.0.1:{port}\n    mode: ketama\n    hash: murmur\n    \
             hash_tag: \"{{}}\"\n    servers:\n{}{}",
            server_lines(&servers, 4, "      "),
            migrate_from(&servers, 3, 300)
        )
    };
    let first = Slotline::start(&config(ports[0]));
    let mut second = Some(Slotline::start(&config(ports[1])));
    // One proxy restarts in the middle of the move.
    let restart = thread::spawn({
        let yaml = config(ports[1]);
        move || {
            thread::sleep(Duration::from_secs(2));
            drop(second.take());
            Slotline::start(&yaml)
        }
    });
    let stop = Arc::new(AtomicBool::new(false));
    let threads = clients(&ports[..1], 4, 2000, stop.clone());
    let second = restart.join().expect("the restarted proxy");
    model.values.extend(finish(&ports, stop, threads).values);

    // The real nutcracker with the four servers finds every key where the ring moved it.
    let new_port = free_port();
    let new_ring = Nutcracker::start(&nutcracker_yaml(new_port, &servers, 4), new_port);
    let mut client = new_ring.client();
    for (key, value) in &model.values {
        let got = client.cmd(&["GET", key]);
        match value {
            Some(v) => assert_eq!(
                got,
                Reply::bulk(v),
                "{key} through nutcracker's 4-server ring"
            ),
            None => assert_eq!(got, Reply::nil(), "{key} was deleted"),
        }
    }
    for key in &model.ttl {
        let ttl = client.cmd(&["TTL", key]).as_int().unwrap_or(-3);
        assert!((3000..=3600).contains(&ttl), "{key} kept its TTL: {ttl}");
    }
    let total: usize = (0..4).map(|i| servers.keys(i, b"*").len()).sum();
    let marks: usize = (0..4)
        .map(|i| servers.keys(i, b"slotline:migration:*").len())
        .sum();
    assert_eq!(
        total - marks,
        model.values.values().filter(|v| v.is_some()).count() + 1200,
        "no key is on two servers (the 1,200 hashes, lists and sorted sets counted too)"
    );
    drop((first, second));
}

/// Each of the three old shards holds only the marks that the migration started and emptied it.
fn only_marks_left(shards: &RedisServers) {
    for i in 0..3 {
        let mut left = shards.keys(i, b"*");
        left.sort();
        assert_eq!(
            left,
            vec![
                b"slotline:migration:emptied".to_vec(),
                b"slotline:migration:started".to_vec()
            ],
            "shard {i} keeps only its marks"
        );
    }
}

/// A key set to "x" through nutcracker, whose ring places it off the first shard, and then written
/// to the first shard too (where the ring does not place it).
fn astray_key(nutcracker: &Nutcracker, shards: &RedisServers) -> String {
    let key = (0..)
        .map(|i| format!("astray:{i}"))
        .find(|k| {
            nutcracker.client().cmd(&["SET", k, "x"]).is_ok()
                && shards.client(0).cmd(&["EXISTS", k]).as_int() == Some(0)
        })
        .expect("a key the ring places elsewhere");
    assert!(shards.client(0).cmd(&["SET", &key, "wrong place"]).is_ok());
    key
}

/// `slotline migrate-verify` reads every old server before the move starts: keys where the
/// `from` placement names them pass; one written to another server is named.
#[test]
fn verify_finds_keys_the_old_placement_does_not_place_there() {
    let shards = RedisServers::start(3);
    let (nutcracker, _) = loaded_ring(&shards, 300);
    let dir = support::TempDir::new("verify");
    let config = dir.write(
        "slotline.yml",
        &format!(
            "pools:\n  main:\n    listen: 127.0.0.1:{}\n    mode: ketama\n    servers: [\"127.0.0.1:1:1 new\"]\n{}",
            free_port(),
            migrate_from(&shards, 3, 0)
        ),
    );
    let run = || {
        let out = Slotline::command()
            .args(["migrate-verify", "--config"])
            .arg(&config)
            .output()
            .expect("run slotline migrate-verify");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let (ok, text) = run();
    assert!(
        ok && text.contains("300 keys on 3 old servers, 0 out of place"),
        "{text}"
    );

    // A key written straight to a server the ring does not give it to.
    let key = astray_key(&nutcracker, &shards);
    let (ok, text) = run();
    assert!(
        !ok && text.contains("1 out of place") && text.contains(&key),
        "{text}"
    );
}

/// A pool with `start: manual` verifies first: it serves from the old placement (a write through
/// it is where nutcracker reads it), moves nothing, and its shadow reads name the keys found on the
/// other side. `slotline migrate start` on one proxy then starts both: clients that ran through
/// the switch saw no error and no wrong value, a client blocked on an old server is closed rather
/// than left waiting, and every key ends where the cluster says.
#[test]
fn a_pool_verifies_with_shadow_reads_until_it_is_started() {
    let shards = RedisServers::start(3);
    let (nutcracker, mut model) = loaded_ring(&shards, 500);
    let block = migrate_from(&shards, 3, 1000).replace(
        "    migrate:\n",
        "    migrate:\n      start: manual\n      shadow_reads: 1\n",
    );
    let (cluster, proxies, ports, admin) = two_proxies_into_a_cluster(&block);
    let owner = |key: &str| cluster.node_for_slot(support::key_slot(key.as_bytes()));

    // Served from the old placement: a write lands where nutcracker reads it, not in the cluster.
    let mut client = Client::connect(ports[1]);
    assert_eq!(
        info_field(ports[1], "migration_state").as_deref(),
        Some("verifying")
    );
    assert!(client.cmd(&["SET", "verify:w", "through slotline"]).is_ok());
    assert_eq!(
        nutcracker.client().cmd(&["GET", "verify:w"]),
        Reply::bulk("through slotline")
    );
    assert_eq!(client.cmd(&["GET", "pre:5"]), Reply::bulk("v5"));
    let tracking = Client::connect(ports[1]).cmd(&["CLIENT", "TRACKING", "ON"]);
    assert!(
        matches!(&tracking, Reply::Error(e) if e.contains("verifies")),
        "{tracking:?}"
    );
    for (key, value) in model.values.iter().take(100) {
        let got = client.cmd(&["GET", key]);
        if let Some(v) = value {
            assert_eq!(got, Reply::bulk(v), "{key} read from the old placement");
        }
    }
    let in_cluster: i64 = cluster
        .masters()
        .iter()
        .map(|m| {
            cluster
                .client(m.port)
                .cmd(&["DBSIZE"])
                .as_int()
                .unwrap_or(-1)
        })
        .sum();
    assert_eq!(in_cluster, 0, "nothing moves while verifying");

    // Two keys on the other side: one the old placement does not put where it is, and one the
    // cluster holds before anything moved. Shadow reads name both.
    let astray = astray_key(&nutcracker, &shards);
    assert!(cluster
        .client(owner("pre:5"))
        .cmd(&["SET", "pre:5", "left over"])
        .is_ok());
    assert_eq!(client.cmd(&["GET", &astray]), Reply::bulk("x"));
    assert_eq!(client.cmd(&["GET", "pre:5"]), Reply::bulk("v5"));
    let proxy = &proxies[1];
    wait_ok(
        Duration::from_secs(10),
        "both mismatches",
        || match info_field(ports[1], "migration_shadow_mismatches").as_deref() {
            Some("2") => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    let reads: u64 = info_field(ports[1], "migration_shadow_reads")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(reads >= 100, "every read is a shadow read here: {reads}");
    let log = proxy.log();
    assert!(
        log.contains(&astray) && log.contains("pre:5") && log.contains("also on the other side"),
        "{log}"
    );
    // The operator clears them before starting.
    assert_eq!(shards.client(0).cmd(&["DEL", &astray]).as_int(), Some(1));
    assert_eq!(
        cluster
            .client(owner("pre:5"))
            .cmd(&["DEL", "pre:5"])
            .as_int(),
        Some(1)
    );
    model.values.insert(astray.clone(), Some("x".into()));
    model
        .values
        .insert("verify:w".into(), Some("through slotline".into()));

    // A client blocked on an old server while verifying.
    let mut blocked = std::net::TcpStream::connect(("127.0.0.1", ports[1])).expect("connect");
    std::io::Write::write_all(
        &mut blocked,
        b"*3\r\n$5\r\nBLPOP\r\n$6\r\nnolist\r\n$1\r\n0\r\n",
    )
    .expect("send BLPOP");

    // Clients run through the start, on both proxies; one proxy is told to start.
    let stop = Arc::new(AtomicBool::new(false));
    let threads = clients(&ports, 8, 500, stop.clone());
    thread::sleep(Duration::from_millis(500));
    let out = Slotline::command()
        .args(["migrate", "start", "--admin", &format!("127.0.0.1:{admin}")])
        .arg("--config")
        .arg(proxies[0].config_path())
        .output()
        .expect("run slotline migrate start");
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && said.contains("migration_state:starting"),
        "{said}"
    );
    model.values.extend(finish(&ports, stop, threads).values);

    blocked
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut buf = [0u8; 256];
    let n = std::io::Read::read(&mut blocked, &mut buf).expect("closed, not left waiting");
    assert!(
        n == 0 || buf.starts_with(b"-"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    for (key, value) in &model.values {
        let got = cluster.client(owner(key)).cmd(&["GET", key]);
        match value {
            Some(v) => assert_eq!(got, Reply::bulk(v), "{key} on its owner"),
            None => assert_eq!(got, Reply::nil(), "{key} was deleted and must stay so"),
        }
    }
    only_marks_left(&shards);
    let status = Slotline::command()
        .args([
            "migrate",
            "status",
            "--admin",
            &format!("127.0.0.1:{admin}"),
        ])
        .arg("--config")
        .arg(proxies[0].config_path())
        .output()
        .expect("run slotline migrate status");
    assert!(String::from_utf8_lossy(&status.stdout).contains("migration_state:done"));
    drop(proxies);
}
