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

#[test]
fn shards_move_into_a_cluster_while_two_proxies_serve_clients() {
    let shards = RedisServers::start(3);
    let cluster = RedisCluster::start(ClusterOpts {
        replicas_per_master: 0,
        ..Default::default()
    });
    let (_nutcracker, mut model) = loaded_ring(&shards, 2000);

    let seeds: String = cluster
        .masters()
        .iter()
        .map(|m| format!("      - 127.0.0.1:{}\n", m.port))
        .collect();
    let ports = [free_port(), free_port()];
    let admin = free_port();
    let proxies: Vec<Slotline> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            let admin = match i {
                0 => format!("admin:\n  listen: 127.0.0.1:{admin}\n"),
                _ => String::new(),
            };
            Slotline::start(&format!(
                "{admin}pools:\n  main:\n    listen: 127.0.0.1:{port}\n    mode: cluster\n    servers:\n{seeds}{}",
                migrate_from(&shards, 3, 1000)
            ))
        })
        .collect();
    // The admin port drives this process's mover.
    let post = |path: &str| {
        let request = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
        support::http_raw(admin, request.as_bytes())
            .expect("admin reply")
            .body
    };
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
    for i in 0..3 {
        let left = shards.keys(i, b"*");
        assert_eq!(
            left,
            vec![b"slotline:migration:emptied".to_vec()],
            "shard {i} keeps only the mark that it was emptied"
        );
    }
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
    let key = (0..)
        .map(|i| format!("astray:{i}"))
        .find(|k| {
            nutcracker.client().cmd(&["SET", k, "x"]).is_ok()
                && shards.client(0).cmd(&["EXISTS", k]).as_int() == Some(0)
        })
        .expect("a key the ring places elsewhere");
    assert!(shards.client(0).cmd(&["SET", &key, "wrong place"]).is_ok());
    let (ok, text) = run();
    assert!(
        !ok && text.contains("1 out of place") && text.contains(&key),
        "{text}"
    );
}
