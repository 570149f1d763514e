//! The real slotline binary in front of a real Redis Cluster, checked the way a user would: through
//! the proxy, and directly on the nodes.
//!
//! Tests that leave the cluster as they found it share one cluster; tests that kill a node or move a
//! slot start their own.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, OnceLock};
use std::thread;
use std::time::Duration;

use support::{key_slot, wait_for, Client, ClusterOpts, RedisCluster, Reply, Slotline, TempDir};

/// The cluster shared by the tests that do not disturb it.
fn shared() -> &'static RedisCluster {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| RedisCluster::start(ClusterOpts::default()))
}

fn args<S: AsRef<[u8]>>(parts: &[S]) -> Vec<Vec<u8>> {
    parts.iter().map(|p| p.as_ref().to_vec()).collect()
}

#[track_caller]
fn assert_error_prefix(reply: &Reply, prefix: &str, what: &str) {
    match reply {
        Reply::Error(e) if e.starts_with(prefix) => {}
        other => panic!("{what}: expected an error starting with {prefix:?}, got {other:?}"),
    }
}

#[track_caller]
fn assert_open(client: &mut Client, what: &str) {
    assert_eq!(
        client.cmd(&["PING"]),
        Reply::Status("PONG".into()),
        "connection unusable after {what}"
    );
}

/// Keys of many shapes: plain, binary (NUL, CR, LF, 0xff), hash-tagged, non-ASCII, long.
fn varied_key(i: usize) -> Vec<u8> {
    match i % 5 {
        0 => format!("land:{i}").into_bytes(),
        1 => {
            let mut key = format!("land:bin:{i}:").into_bytes();
            key.extend_from_slice(&[0, b'\r', b'\n', 0xff, b' ', (i % 256) as u8]);
            key
        }
        2 => format!("{{user{}}}:a{i}", i % 40).into_bytes(),
        3 => format!("land:ünïcødé {i}").into_bytes(),
        _ => format!("land:long:{i}:{}", "x".repeat(i % 700)).into_bytes(),
    }
}

fn varied_value(i: usize) -> Vec<u8> {
    if i.is_multiple_of(97) {
        vec![(i % 251) as u8; 64 * 1024]
    } else {
        let mut value = format!("value-{i}-").into_bytes();
        value.extend_from_slice(&[0, b'\r', b'\n', 0xfe]);
        value
    }
}

#[test]
fn every_key_lands_on_the_master_owning_its_slot() {
    let cluster = shared();
    let (_proxy, port) = Slotline::cluster(cluster);
    let mut client = Client::connect(port);
    let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = (0..2000)
        .map(|i| (varied_key(i), varied_value(i)))
        .collect();
    pairs.push((b"{user1}:a".to_vec(), b"tagged".to_vec()));

    for chunk in pairs.chunks(200) {
        let sets: Vec<Vec<Vec<u8>>> = chunk
            .iter()
            .map(|(k, v)| args(&[&b"SET"[..], k, v]))
            .collect();
        for (reply, (key, _)) in client.pipeline(&sets).iter().zip(chunk) {
            assert_eq!(
                reply,
                &Reply::ok(),
                "SET {:?} through slotline",
                key.escape_ascii().to_string()
            );
        }
    }

    // Where each key belongs, from CLUSTER SLOTS; then ask each master directly.
    let ranges = cluster.slots();
    let owner = |slot: u16| {
        ranges
            .iter()
            .find(|r| (r.start..=r.end).contains(&slot))
            .unwrap()
            .master
            .port
    };
    let mut masters: Vec<u16> = ranges.iter().map(|r| r.master.port).collect();
    masters.sort_unstable();
    masters.dedup();
    let mut keys_in_slot: BTreeMap<u16, i64> = BTreeMap::new();
    for (key, _) in &pairs {
        *keys_in_slot.entry(key_slot(key)).or_default() += 1;
    }
    for &master in &masters {
        let mut direct = Client::connect(master);
        let mine: Vec<&(Vec<u8>, Vec<u8>)> = pairs
            .iter()
            .filter(|(k, _)| owner(key_slot(k)) == master)
            .collect();
        assert!(!mine.is_empty(), "no key of 2000 maps to master {master}");
        for (key, value) in mine {
            let reply = direct.cmd(&[&b"GET"[..], key]);
            assert_eq!(
                reply,
                Reply::bulk(value),
                "GET {:?} directly on its owner {master}",
                key.escape_ascii().to_string()
            );
        }
        for (&slot, &count) in &keys_in_slot {
            let reply = direct.cmd(&["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()]);
            let held = reply
                .as_int()
                .unwrap_or_else(|| panic!("COUNTKEYSINSLOT {slot} on {master}: {reply:?}"));
            if owner(slot) == master {
                assert!(
                    held >= count,
                    "owner {master} holds {held} keys of slot {slot}, {count} were written"
                );
            } else {
                assert_eq!(
                    held, 0,
                    "master {master} holds keys of slot {slot}, which it does not own"
                );
            }
        }
    }

    for chunk in pairs.chunks(200) {
        let gets: Vec<Vec<Vec<u8>>> = chunk.iter().map(|(k, _)| args(&[&b"GET"[..], k])).collect();
        for (reply, (key, value)) in client.pipeline(&gets).iter().zip(chunk) {
            assert_eq!(
                reply,
                &Reply::bulk(value),
                "GET {:?} through slotline",
                key.escape_ascii().to_string()
            );
        }
    }
}

/// A small deterministic generator, so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn concurrent_pipelining_clients_get_their_own_replies_in_order() {
    const CLIENTS: usize = 20;
    const COMMANDS: usize = 500; // per client: 10,000 in all
    let (_proxy, port) = Slotline::cluster(shared());
    let start = Arc::new(Barrier::new(CLIENTS));
    let workers: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let start = Arc::clone(&start);
            thread::spawn(move || {
                let strings: Vec<String> = (0..40).map(|j| format!("pipe:{id}:s{j}")).collect();
                let counters: Vec<String> = (0..10).map(|j| format!("pipe:{id}:n{j}")).collect();
                let dels: Vec<Vec<Vec<u8>>> = strings
                    .iter()
                    .chain(&counters)
                    .map(|k| args(&["DEL", k]))
                    .collect();

                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (id as u64 + 1));
                let mut values: HashMap<&str, String> = HashMap::new();
                let mut counts: HashMap<&str, i64> = HashMap::new();
                let (mut cmds, mut expected) = (Vec::new(), Vec::new());
                for i in 0..COMMANDS {
                    match rng.below(3) {
                        0 => {
                            let key = &strings[rng.below(40) as usize];
                            let value = format!("{id}-{i}-{}", rng.below(1_000_000));
                            cmds.push(args(&["SET", key, &value]));
                            expected.push(Reply::ok());
                            values.insert(key, value);
                        }
                        1 => {
                            let key = &strings[rng.below(40) as usize];
                            cmds.push(args(&["GET", key]));
                            expected
                                .push(values.get(key.as_str()).map_or(Reply::nil(), Reply::bulk));
                        }
                        _ => {
                            let key = &counters[rng.below(10) as usize];
                            let n = counts.entry(key).or_insert(0);
                            *n += 1;
                            cmds.push(args(&["INCR", key]));
                            expected.push(Reply::Int(*n));
                        }
                    }
                }
                // Nothing above can fail, so no thread is left waiting here for one that died.
                start.wait();
                let mut client = Client::connect(port);
                client.pipeline(&dels);
                let replies = client.pipeline(&cmds);
                for (i, (got, want)) in replies.iter().zip(&expected).enumerate() {
                    assert_eq!(
                        got,
                        want,
                        "client {id}, command {i}: {:?}",
                        String::from_utf8_lossy(&cmds[i].join(&b' '))
                    );
                }
                replies.len()
            })
        })
        .collect();
    let total: usize = workers
        .into_iter()
        .map(|w| w.join().expect("a client thread failed"))
        .sum();
    assert_eq!(total, CLIENTS * COMMANDS);
}

#[test]
fn slot_migration_under_traffic_is_invisible_to_clients() {
    let cluster = RedisCluster::start(ClusterOpts::default());
    let (_proxy, port) = Slotline::cluster(&cluster);
    let keys: Vec<String> = (0..30).map(|i| format!("{{migrating}}:{i}")).collect();
    let slot = key_slot(b"{migrating}");
    let from = cluster.node_for_slot(slot);
    let to = cluster.another_master(from);

    // A key of another slot on the same master: an MGET of both sends their parts there as one
    // batch, and only the moving slot's part is redirected.
    let outside = (0..)
        .map(|i| format!("outside:{i}"))
        .find(|k| {
            let s = key_slot(k.as_bytes());
            s != slot && cluster.node_for_slot(s) == from
        })
        .expect("a key on the same master");
    assert_eq!(
        Client::connect(port).cmd(&["SET", &outside, "fixed"]),
        Reply::ok()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let traffic = {
        let (stop, rounds, keys) = (Arc::clone(&stop), Arc::clone(&rounds), keys.clone());
        let outside = outside.clone();
        thread::spawn(move || {
            let mut client = Client::connect(port);
            let mut errors = Vec::new();
            let mut last = HashMap::new();
            let mut round = 0u64;
            while !stop.load(Ordering::SeqCst) {
                for key in &keys {
                    let value = format!("round {round}");
                    let set = client.cmd(&["SET", key, &value]);
                    if !set.is_ok() {
                        errors.push(format!("round {round}: SET {key} -> {set:?}"));
                    }
                    let get = client.cmd(&["GET", key]);
                    if get != Reply::bulk(&value) {
                        errors.push(format!(
                            "round {round}: GET {key} -> {get:?}, wrote {value:?}"
                        ));
                    }
                    last.insert(key.clone(), value.clone());
                    // Split across the moving slot and a fixed one: the part for the moving slot meets
                    // ASK and MOVED on its own.
                    let mget = client.cmd(&["MGET", key, &outside, key]);
                    let want = Reply::Array(Some(vec![
                        Reply::bulk(&value),
                        Reply::bulk("fixed"),
                        Reply::bulk(&value),
                    ]));
                    if mget != want {
                        errors.push(format!("round {round}: MGET {key} outside -> {mget:?}"));
                    }
                }
                round += 1;
                rounds.store(round, Ordering::SeqCst);
            }
            (errors, last)
        })
    };
    let wait_rounds = |n: u64, what: &str| {
        let target = rounds.load(Ordering::SeqCst) + n;
        // A traffic thread that died (a hang or a closed connection) ends the wait early; its
        // panic is re-raised by the join below.
        wait_for(Duration::from_secs(20), what, || {
            rounds.load(Ordering::SeqCst) >= target || traffic.is_finished()
        });
        if traffic.is_finished() {
            stop.store(true, Ordering::SeqCst);
        }
    };
    wait_rounds(1, "traffic through slotline before the migration");

    cluster.setslot_importing(slot, to, from);
    cluster.setslot_migrating(slot, from, to);
    wait_rounds(1, "traffic while the slot is marked migrating");
    // A few keys at a time, with traffic in between, so that clients meet the half-moved slot (ASK).
    while cluster.migrate_some_keys(slot, from, to, 7) > 0 {
        wait_rounds(1, "traffic while the slot is half migrated");
    }
    cluster.setslot_node(slot, to);
    cluster.wait_slot_owner(slot, to, Duration::from_secs(10));
    wait_rounds(3, "traffic after the migration (MOVED)");

    stop.store(true, Ordering::SeqCst);
    let (errors, last) = match traffic.join() {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    };
    assert!(
        errors.is_empty(),
        "{} errors seen by the client during the migration, first: {:#?}",
        errors.len(),
        &errors[..errors.len().min(10)]
    );

    let mut client = Client::connect(port);
    let mut on_target = Client::connect(to);
    for key in &keys {
        assert_eq!(
            client.cmd(&["GET", key]),
            Reply::bulk(&last[key]),
            "GET {key} through slotline"
        );
        assert_eq!(
            on_target.cmd(&["GET", key]),
            Reply::bulk(&last[key]),
            "GET {key} on the new owner {to}"
        );
    }
    let count =
        |port: u16| Client::connect(port).cmd(&["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()]);
    assert_eq!(count(to), Reply::Int(keys.len() as i64));
    assert_eq!(count(from), Reply::Int(0));
}

#[test]
fn killed_master_fails_only_its_slots_and_the_same_connection_recovers() {
    // Without full coverage the surviving masters keep serving while the dead one's slots are down,
    // so "other keys keep working" is a property of the proxy alone.
    let cluster = RedisCluster::start(ClusterOpts {
        extra_args: vec!["--cluster-require-full-coverage".into(), "no".into()],
        ..ClusterOpts::default()
    });
    // A generous timeout: this test is about failover, and on a loaded 2-core machine a healthy node
    // can take longer than the default second to answer.
    let port = support::free_port();
    let seeds: Vec<u16> = cluster.masters().iter().map(|m| m.port).collect();
    let _proxy = Slotline::start(
        &Slotline::cluster_yaml(port, &seeds).replace("timeout: 1000", "timeout: 5000"),
    );
    let masters = cluster.masters();
    let mut keys_of: BTreeMap<u16, Vec<String>> =
        masters.iter().map(|m| (m.port, Vec::new())).collect();
    for i in 0.. {
        if keys_of.values().all(|keys| keys.len() >= 10) {
            break;
        }
        let key = format!("kill:{i}");
        let owner = masters
            .iter()
            .find(|m| m.owns(key_slot(key.as_bytes())))
            .expect("owner")
            .port;
        keys_of.get_mut(&owner).unwrap().push(key);
    }
    let victim = masters[0].port;
    let victim_keys = keys_of.remove(&victim).unwrap();
    let other_keys: Vec<String> = keys_of.into_values().flatten().collect();

    let mut client = Client::connect(port);
    for key in victim_keys.iter().chain(&other_keys) {
        assert_eq!(
            client.cmd(&["SET", key, "before"]),
            Reply::ok(),
            "SET {key} before the kill"
        );
    }

    cluster.kill(victim);
    let mut round = 0;
    wait_for(
        Duration::from_secs(30),
        "the dead master's slots to work again through the same connection",
        || {
            round += 1;
            for key in &other_keys {
                let value = format!("round {round}");
                assert_eq!(
                    client.cmd(&["SET", key, &value]),
                    Reply::ok(),
                    "SET {key} (healthy master) while {victim} is down"
                );
                assert_eq!(
                    client.cmd(&["GET", key]),
                    Reply::bulk(&value),
                    "GET {key} (healthy master) while {victim} is down"
                );
            }
            // May fail while the master is down, but only as an error reply (a hang or a closed
            // connection makes read_reply panic).
            let reply = client.cmd(&["SET", &victim_keys[0], "after"]);
            assert!(
                reply.is_ok() || reply.is_error(),
                "SET on the dead master's slot: {reply:?}"
            );
            reply.is_ok()
        },
    );

    for key in &victim_keys {
        assert_eq!(
            client.cmd(&["SET", key, "after"]),
            Reply::ok(),
            "SET {key} after the failover"
        );
        assert_eq!(
            client.cmd(&["GET", key]),
            Reply::bulk("after"),
            "GET {key} after the failover"
        );
    }
    for key in &other_keys {
        assert!(
            client.cmd(&["GET", key]).as_str().is_some(),
            "GET {key} after the failover"
        );
    }
    // The node the harness asks may not have heard of the promotion yet (gossip): wait until every
    // live node sees every slot served by a live master.
    cluster.wait_healthy(Duration::from_secs(30));
    let new_owner = cluster.node_for_slot(key_slot(victim_keys[0].as_bytes()));
    assert_ne!(new_owner, victim, "the replica was promoted");
    assert_eq!(
        Client::connect(new_owner).cmd(&["GET", &victim_keys[0]]),
        Reply::bulk("after")
    );
}

#[test]
fn malformed_input_gets_a_protocol_error_and_the_connection_is_closed() {
    let (proxy, port) = Slotline::cluster(shared());
    let mut bystander = Client::connect(port);
    let cases: [(&str, &[u8]); 10] = [
        ("a non-numeric array length", b"*abc\r\n"),
        // Redis refuses these with a protocol error and closes the connection: forwarded, they
        // would cut a backend connection other clients' requests share.
        (
            "a bulk length with a leading zero",
            b"*2\r\n$3\r\nGET\r\n$01\r\na\r\n",
        ),
        (
            "an array length with a leading zero",
            b"*02\r\n$3\r\nGET\r\n$1\r\na\r\n",
        ),
        (
            "a bulk length with a plus sign",
            b"*2\r\n$3\r\nGET\r\n$+1\r\na\r\n",
        ),
        ("an inline command with unbalanced quotes", b"GET \"a\r\n"),
        (
            "an inline command with a word after a closing quote",
            b"GET 'a'b\r\n",
        ),
        (
            "a negative bulk length inside an array",
            b"*2\r\n$3\r\nGET\r\n$-5\r\n",
        ),
        ("an absurd array length", b"*99999999999\r\n"),
        ("a bulk length over 4 GiB", b"*1\r\n$4294967296\r\n"),
        ("an integer where a bulk string belongs", b"*1\r\n:1\r\n"),
    ];
    // Redis's own words where its suite checks them.
    for (bytes, error) in [
        (
            &b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\nfooz\r\n"[..],
            "ERR Protocol error: expected '$', got 'f'",
        ),
        (
            b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$blabla\r\n",
            "ERR Protocol error: invalid bulk length",
        ),
        (
            b"*20000000000\r\n",
            "ERR Protocol error: invalid multibulk length",
        ),
    ] {
        let mut client = Client::connect(port);
        client.send_raw(bytes);
        assert_eq!(client.read_reply(), Reply::Error(error.into()));
    }
    for (what, bytes) in cases {
        let mut client = Client::connect(port);
        client.send_raw(bytes);
        assert_error_prefix(&client.read_reply(), "ERR Protocol error", what);
        assert!(client.is_closed(), "connection still open after {what}");

        let value = format!("still fine after {what}");
        assert_eq!(
            bystander.cmd(&["SET", "malformed:bystander", &value]),
            Reply::ok()
        );
        assert_eq!(
            bystander.cmd(&["GET", "malformed:bystander"]),
            Reply::bulk(&value)
        );
    }
    assert!(
        !proxy.log().contains("backend connection failed"),
        "a backend connection was lost:\n{}",
        proxy.log()
    );
}

#[test]
fn inline_commands_are_read_as_redis_reads_them() {
    let (proxy, port) = Slotline::cluster(shared());
    let mut client = Client::connect(port);
    // As typed into telnet: quotes group words, escapes are read, and the key routes by its slot.
    client.send_raw(b"SET \"inline key\" 'it\\'s \"here\"'\r\n");
    assert_eq!(client.read_reply(), Reply::ok());
    client.send_raw(b"  mget \"inline key\"\t\"inline\\x20key\"   nokey\r\n");
    let value = Reply::bulk("it's \"here\"");
    assert_eq!(
        client.read_reply(),
        Reply::Array(Some(vec![value.clone(), value.clone(), Reply::nil()]))
    );
    assert_eq!(client.cmd(&["GET", "inline key"]), value);
    assert!(!proxy.log().contains("backend connection failed"));
}

#[test]
fn unknown_command_is_an_error_and_the_connection_stays_open() {
    let (_proxy, port) = Slotline::cluster(shared());
    let mut client = Client::connect(port);
    let reply = client.cmd(&["FOOBAR", "x"]);
    assert_error_prefix(&reply, "ERR unknown command", "FOOBAR x");
    assert!(
        reply.error().unwrap().to_lowercase().contains("foobar"),
        "the error names the command: {reply:?}"
    );
    assert_open(&mut client, "an unknown command");
}

#[test]
fn wrong_arity_is_an_error() {
    let (_proxy, port) = Slotline::cluster(shared());
    let mut client = Client::connect(port);
    assert_eq!(
        client.cmd(&["GET"]),
        Reply::Error("ERR wrong number of arguments for 'get' command".into())
    );
    // Answered by slotline itself, with Redis's own words.
    assert_eq!(
        client.cmd(&["PING", "a", "b"]),
        Reply::Error("ERR wrong number of arguments for 'ping' command".into())
    );
    assert_open(&mut client, "a wrong arity");
}

#[test]
fn multi_key_commands_must_stay_in_one_slot() {
    let (_proxy, port) = Slotline::cluster(shared());
    let mut client = Client::connect(port);
    assert_ne!(key_slot(b"a"), key_slot(b"b"));
    assert_error_prefix(
        &client.cmd(&["RENAME", "a", "b"]),
        "CROSSSLOT",
        "RENAME a b",
    );
    assert_open(&mut client, "CROSSSLOT");

    assert_eq!(client.cmd(&["SET", "{t}a", "1"]), Reply::ok());
    assert_eq!(client.cmd(&["SET", "{t}b", "2"]), Reply::ok());
    assert_eq!(
        client.cmd(&["MGET", "{t}a", "{t}b"]),
        Reply::Array(Some(vec![Reply::bulk("1"), Reply::bulk("2")]))
    );
}

#[test]
fn unsupported_commands_are_refused_by_name() {
    let (_proxy, port) = Slotline::cluster(shared());
    let mut client = Client::connect(port);
    for cmd in [
        &["DEBUG", "SLEEP", "0"][..],
        &["ACL", "WHOAMI"],
        &["CONFIG", "GET", "maxmemory"],
    ] {
        let reply = client.cmd(cmd);
        assert_error_prefix(&reply, "ERR", cmd[0]);
        assert!(
            reply
                .error()
                .unwrap()
                .to_lowercase()
                .contains(&cmd[0].to_lowercase()),
            "the error for {} names it: {reply:?}",
            cmd[0]
        );
        assert_open(&mut client, cmd[0]);
    }
}

#[test]
fn only_database_zero_can_be_selected() {
    let (_proxy, port) = Slotline::cluster(shared());
    let mut client = Client::connect(port);
    assert_eq!(client.cmd(&["SELECT", "0"]), Reply::ok());
    assert!(
        client.cmd(&["SELECT", "1"]).is_error(),
        "SELECT 1 must fail: a cluster has only database 0"
    );
    assert_open(&mut client, "SELECT 1");
}

#[test]
fn connection_commands_are_answered_by_the_proxy() {
    let (proxy, port) = Slotline::cluster(shared());
    let mut client = Client::connect(port);
    assert_eq!(client.cmd(&["PING"]), Reply::Status("PONG".into()));
    assert_eq!(
        client.cmd(&["PING", "hello there"]),
        Reply::bulk("hello there")
    );
    assert_eq!(client.cmd(&["ECHO", "echo me"]), Reply::bulk("echo me"));

    let hello = client.cmd(&["HELLO", "2"]);
    let fields = hello
        .as_array()
        .unwrap_or_else(|| panic!("HELLO 2: {hello:?}"));
    let proto = fields
        .chunks(2)
        .find(|pair| pair[0] == Reply::bulk("proto"))
        .map(|pair| pair[1].clone());
    assert_eq!(
        proto,
        Some(Reply::Int(2)),
        "HELLO 2 reports proto 2: {hello:?}"
    );
    assert_error_prefix(&client.cmd(&["HELLO", "4"]), "NOPROTO", "HELLO 4");
    assert_open(&mut client, "HELLO 4");

    assert_eq!(
        client.cmd(&["CLIENT", "SETNAME", "slotline-test"]),
        Reply::ok()
    );
    assert_eq!(
        client.cmd(&["CLIENT", "GETNAME"]),
        Reply::bulk("slotline-test")
    );
    let id = client.cmd(&["CLIENT", "ID"]);
    assert!(id.as_int().is_some(), "CLIENT ID is an integer: {id:?}");

    let count = client.cmd(&["COMMAND", "COUNT"]);
    assert!(
        count.as_int().is_some_and(|n| n > 100),
        "COMMAND COUNT: {count:?}"
    );
    let info = client.cmd(&["COMMAND", "INFO", "get"]);
    let first = info
        .as_array()
        .and_then(|items| items.first())
        .and_then(Reply::as_array);
    assert_eq!(
        first.and_then(|f| f.first()),
        Some(&Reply::bulk("get")),
        "COMMAND INFO get: {info:?}"
    );

    let info = client.cmd(&["INFO"]);
    let text = info.as_str().unwrap_or_else(|| panic!("INFO: {info:?}"));
    for needle in ["# Server", "redis_mode:standalone", "slotline"] {
        assert!(text.contains(needle), "INFO lacks {needle:?}:\n{text}");
    }
    // Several sections at once, with what Redis's own tools read: slotline's memory and CPU.
    let info = client.cmd(&["INFO", "memory", "cpu"]);
    let text = info.as_str().unwrap_or_else(|| panic!("INFO: {info:?}"));
    let field = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("INFO lacks {name}:\n{text}"))
    };
    assert!(field("used_memory_rss") > 1e6, "{text}");
    // The process's own CPU time, as the kernel counts it (ticks of 1/100 s).
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", proxy.pid())).expect("stat");
    let ticks: Vec<f64> = stat[stat.rfind(')').expect("comm") + 2..]
        .split(' ')
        .skip(11)
        .take(2)
        .map(|t| t.parse::<f64>().expect("ticks") / 100.0)
        .collect();
    assert!(field("used_cpu_user") <= ticks[0], "{text}");
    assert!(field("used_cpu_sys") <= ticks[1], "{text}");
    assert!(
        text.starts_with("# Memory") && !text.contains("# Server"),
        "{text}"
    );

    assert_eq!(client.cmd(&["QUIT"]), Reply::ok());
    assert!(client.is_closed(), "the connection is closed after QUIT");
    assert_open(&mut Client::connect(port), "another client's QUIT");
}

#[test]
fn a_client_leaving_mid_pipeline_does_not_disturb_others() {
    let (mut proxy, port) = Slotline::cluster(shared());
    let mut steady = Client::connect(port);
    for round in 0..5 {
        let mut rude = Client::connect(port);
        let mut burst = Vec::new();
        for i in 0..1000 {
            let key = format!("rude:{round}:{i}");
            burst.extend_from_slice(&support::encode(&["SET", &key, "x"]));
            burst.extend_from_slice(&support::encode(&["GET", &key]));
        }
        rude.send_raw(&burst);
        rude.shutdown();
        drop(rude);

        let mut cmds = Vec::new();
        let mut expected = Vec::new();
        for i in 0..200 {
            let key = format!("steady:{round}:{i}");
            let value = format!("v{round}.{i}");
            cmds.push(args(&["SET", &key, &value]));
            expected.push(Reply::ok());
            cmds.push(args(&["GET", &key]));
            expected.push(Reply::bulk(&value));
        }
        assert_eq!(steady.pipeline(&cmds), expected, "round {round}");
    }
    assert_open(&mut Client::connect(port), "clients leaving mid-pipeline");
    assert!(
        proxy.is_running(),
        "slotline must survive clients leaving mid-pipeline"
    );
}

#[test]
fn host_name_endpoints_are_resolved_and_followed() {
    let cluster = RedisCluster::start(ClusterOpts {
        hostnames: true,
        ..ClusterOpts::default()
    });
    for range in cluster.slots() {
        assert!(
            range.master.host.ends_with(".slotline.test"),
            "the cluster announces host names: {range:?}"
        );
    }
    let (_proxy, port) = Slotline::cluster(&cluster);
    let mut client = Client::connect(port);

    let keys: Vec<String> = (0..300).map(|i| format!("host:{i}")).collect();
    let masters = cluster.masters();
    for master in &masters {
        assert!(
            keys.iter().any(|k| master.owns(key_slot(k.as_bytes()))),
            "some key maps to {}",
            master.port
        );
    }
    for key in &keys {
        assert_eq!(client.cmd(&["SET", key, key]), Reply::ok(), "SET {key}");
    }
    for key in &keys {
        assert_eq!(client.cmd(&["GET", key]), Reply::bulk(key), "GET {key}");
    }

    // Move a slot the proxy has already routed: its next request meets MOVED naming a host name.
    let key = "host:moved";
    let slot = key_slot(key.as_bytes());
    let from = cluster.node_for_slot(slot);
    let to = cluster.another_master(from);
    assert_eq!(client.cmd(&["SET", key, "before"]), Reply::ok());
    assert_eq!(client.cmd(&["GET", key]), Reply::bulk("before"));
    cluster.migrate_slot(slot, from, to);
    let moved = Client::connect(from).cmd(&["GET", key]);
    assert!(
        moved.error().is_some_and(|e| e.contains(".slotline.test:")),
        "MOVED carries a host name: {moved:?}"
    );

    assert_eq!(
        client.cmd(&["GET", key]),
        Reply::bulk("before"),
        "GET after the slot moved"
    );
    assert_eq!(
        client.cmd(&["SET", key, "after"]),
        Reply::ok(),
        "SET after the slot moved"
    );
    assert_eq!(
        Client::connect(to).cmd(&["GET", key]),
        Reply::bulk("after"),
        "the write reached the new owner"
    );
}

fn redis_cli(port: u16, cli_args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(cli_args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run redis-cli");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .expect("write to redis-cli");
    }
    let out = child.wait_with_output().expect("redis-cli output");
    assert!(
        out.status.success(),
        "redis-cli {cli_args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

#[test]
fn redis_cli_works_against_the_proxy() {
    let (_proxy, port) = Slotline::cluster(shared());
    assert_eq!(redis_cli(port, &["set", "cli:k", "v"], None), "OK");
    assert_eq!(redis_cli(port, &["get", "cli:k"], None), "v");
    assert_eq!(redis_cli(port, &[], Some("ping\n")), "PONG");
}

#[test]
fn check_accepts_a_valid_config_and_names_an_unknown_field() {
    let dir = TempDir::new("check");
    let good = dir.write(
        "good.yml",
        &Slotline::cluster_yaml(6380, &[7000, 7001, 7002]),
    );
    let out = Slotline::command()
        .arg("check")
        .arg("--config")
        .arg(&good)
        .output()
        .expect("run slotline check");
    assert!(
        out.status.success(),
        "slotline check rejected a valid file: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = dir.write(
        "typo.yml",
        "pools:\n  main:\n    listen: 127.0.0.1:6380\n    mode: cluster\n    servers:\n      - 127.0.0.1:7000\n    tiemout: 5\n",
    );
    let out = Slotline::command()
        .arg("check")
        .arg("--config")
        .arg(&bad)
        .output()
        .expect("run slotline check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "slotline check accepted an unknown field"
    );
    assert!(
        stderr.contains(&*bad.to_string_lossy()),
        "stderr names the file {}: {stderr}",
        bad.display()
    );
    assert!(
        stderr.contains("tiemout"),
        "stderr names the field `tiemout`: {stderr}"
    );
}

#[test]
fn version_flag_prints_the_version() {
    let out = Slotline::command()
        .arg("--version")
        .output()
        .expect("run slotline --version");
    assert!(
        out.status.success(),
        "slotline --version failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(env!("CARGO_PKG_VERSION")),
        "--version prints {}: {stdout}",
        env!("CARGO_PKG_VERSION")
    );
}

/// The harness computes slots itself to check the proxy independently; Redis is the reference.
#[test]
fn harness_key_slot_agrees_with_redis() {
    let cluster = shared();
    let mut node = Client::connect(cluster.nodes()[0].port);
    for i in 0..300 {
        let key = varied_key(i);
        let reply = node.cmd(&[&b"CLUSTER"[..], b"KEYSLOT", &key]);
        assert_eq!(
            reply,
            Reply::Int(i64::from(key_slot(&key))),
            "slot of {:?}",
            key.escape_ascii().to_string()
        );
    }
}

/// `printf 'SET k v\r\nGET k\r\n' | nc host port` half-closes after sending: the replies must still come.
#[test]
fn a_client_that_stops_sending_still_gets_every_reply() {
    let (_proxy, port) = Slotline::cluster(shared());
    let mut client = Client::connect(port);
    let mut burst = Vec::new();
    for i in 0..300 {
        burst.extend_from_slice(&support::encode(&[
            "SET",
            &format!("halfclose:{i}"),
            &i.to_string(),
        ]));
        burst.extend_from_slice(&support::encode(&["GET", &format!("halfclose:{i}")]));
    }
    client.send_raw(&burst);
    client
        .stream()
        .shutdown(std::net::Shutdown::Write)
        .expect("half-close");
    for i in 0..300 {
        assert_eq!(client.read_reply(), Reply::ok(), "SET {i}");
        assert_eq!(client.read_reply(), Reply::bulk(i.to_string()), "GET {i}");
    }
    assert!(
        client.is_closed(),
        "slotline closes once everything is answered"
    );
}

/// Three masters without replicas (redis-server `extra_args`) behind slotline, whose cluster pool is
/// `yaml` of the usual one, and a client of it.
fn masters_behind_slotline(
    extra_args: Vec<String>,
    yaml: impl FnOnce(String) -> String,
) -> (RedisCluster, Slotline, Client) {
    let cluster = RedisCluster::start(ClusterOpts {
        replicas_per_master: 0,
        extra_args,
        ..ClusterOpts::default()
    });
    let port = support::free_port();
    let seeds: Vec<u16> = cluster.masters().iter().map(|m| m.port).collect();
    let proxy = Slotline::start(&yaml(Slotline::cluster_yaml(port, &seeds)));
    let client = Client::connect(port);
    (cluster, proxy, client)
}

/// `masters_behind_slotline` with a topology refreshed only when something says it is old: the
/// moves a test makes are slotline's news.
fn masters_behind_a_lazy_proxy(extra_args: Vec<String>) -> (RedisCluster, Slotline, Client) {
    masters_behind_slotline(extra_args, |yaml| yaml + "    refresh_interval: 600000\n")
}

#[test]
fn a_script_or_a_blocking_command_whose_slot_moved_or_migrates_goes_where_the_slot_is() {
    let (cluster, _proxy, mut client) = masters_behind_a_lazy_proxy(vec![]);
    let slot = key_slot(b"{moving}");
    let from = cluster.node_for_slot(slot);
    let to = cluster.another_master(from);
    assert_eq!(client.cmd(&["SET", "{moving}:n", "1"]), Reply::ok());

    // The slot moves: the old owner answers the script MOVED without running it. The cluster
    // confirms the move, so slotline runs the script where the slot is now, once.
    cluster.migrate_slot(slot, from, to);
    let script = "return redis.call('INCR', KEYS[1])";
    assert_eq!(
        client.cmd(&["EVAL", script, "1", "{moving}:n"]),
        Reply::Int(2),
        "EVAL after its slot moved"
    );
    assert_eq!(
        cluster.client(to).cmd(&["GET", "{moving}:n"]),
        Reply::bulk("2")
    );

    // And back: a blocking command goes to the old owner on the client's own connection, which
    // answers MOVED; it is sent again to the new owner, where the list is.
    cluster.migrate_slot(slot, to, from);
    assert_eq!(
        cluster.client(from).cmd(&["RPUSH", "{moving}:l", "v"]),
        Reply::Int(1)
    );
    assert_eq!(
        client.cmd(&["BLPOP", "{moving}:l", "5"]),
        Reply::Array(Some(vec![Reply::bulk("{moving}:l"), Reply::bulk("v")])),
        "BLPOP after its slot moved"
    );
    // The connection is still in order.
    assert_eq!(client.cmd(&["GET", "{moving}:n"]), Reply::bulk("2"));

    // Mid-migration, the key already moved: the old owner answers the script ASK without running
    // it, and lists the migration itself, so the script runs once on the importing node.
    let importing = cluster.another_master(from);
    cluster.setslot_importing(slot, importing, from);
    cluster.setslot_migrating(slot, from, importing);
    cluster.migrate_keys(slot, from, importing);
    assert_eq!(
        client.cmd(&["EVAL", script, "1", "{moving}:n"]),
        Reply::Int(3),
        "EVAL while its slot migrates"
    );
    cluster.setslot_node(slot, importing);
    cluster.wait_slot_owner(slot, importing, Duration::from_secs(10));
    assert_eq!(client.cmd(&["GET", "{moving}:n"]), Reply::bulk("3"));
}

/// The migration may finish between the source's ASK and slotline's look at the source (seen in
/// the soak): the source no longer lists it, but the cluster says the slot is the ASK target's now,
/// which a MOVED would have said. The script, refused unrun, runs there once.
#[test]
fn a_script_asked_elsewhere_by_a_migration_that_ends_at_once_runs_where_the_slot_went() {
    let (cluster, _proxy, mut client) =
        masters_behind_a_lazy_proxy(vec!["--enable-debug-command".into(), "yes".into()]);
    let slot = key_slot(b"{asked}");
    let from = cluster.node_for_slot(slot);
    let to = cluster.another_master(from);
    assert_eq!(client.cmd(&["SET", "{asked}:n", "1"]), Reply::ok());

    // The key has moved.
    cluster.setslot_importing(slot, to, from);
    cluster.setslot_migrating(slot, from, to);
    cluster.migrate_keys(slot, from, to);
    // The source sleeps while the script, then the migration's last step (on every node, the
    // source last), reach it: it reads them in that order when it wakes (epoll hands out sockets
    // in the order their data came), so it answers the script ASK and has forgotten the migration
    // before slotline can look.
    let owner = cluster.node_id(to);
    let others = cluster
        .live_ports()
        .into_iter()
        .filter(|&p| p != from && p != to);
    let mut last_step = cluster.client(from);
    let mut sleeper = cluster.client(from);
    sleeper.send(&["DEBUG", "SLEEP", "0.5"]);
    thread::sleep(Duration::from_millis(100));
    let script = thread::spawn(move || {
        client.cmd(&[
            "EVAL",
            "return redis.call('INCR', KEYS[1])",
            "1",
            "{asked}:n",
        ])
    });
    thread::sleep(Duration::from_millis(100));
    for node in std::iter::once(to).chain(others) {
        let reply =
            cluster
                .client(node)
                .cmd(&["CLUSTER", "SETSLOT", &slot.to_string(), "NODE", &owner]);
        assert!(reply.is_ok(), "SETSLOT NODE at {node}: {reply:?}");
    }
    last_step.send(&["CLUSTER", "SETSLOT", &slot.to_string(), "NODE", &owner]);
    assert_eq!(sleeper.read_reply(), Reply::ok());
    assert_eq!(last_step.read_reply(), Reply::ok());
    assert_eq!(
        script.join().expect("the script's client"),
        Reply::Int(2),
        "EVAL asked elsewhere by a migration that ended since"
    );
    assert_eq!(
        cluster.client(to).cmd(&["GET", "{asked}:n"]),
        Reply::bulk("2")
    );
}

/// A node in the middle of a failover can list a master's slots as no one's (it heard the master
/// was demoted, not yet who took over): seen in the soak as -MOVED replies reaching clients, since
/// a topology fetched from that node dropped the new master and refused redirects to it. Here one
/// node forgets another's slots (CLUSTER DELSLOTS) while that other sleeps and cannot correct it:
/// slotline, refreshing every 100 ms from node after node, keeps the fuller map, and a request for
/// the sleeping node's slots waits for it rather than failing.
#[test]
fn a_node_that_lists_fewer_slots_than_the_others_does_not_shrink_the_topology() {
    let (cluster, proxy, mut client) = masters_behind_slotline(
        vec!["--enable-debug-command".into(), "yes".into()],
        |yaml| yaml.replace("timeout: 1000", "timeout: 5000") + "    refresh_interval: 100\n",
    );
    let masters = cluster.masters().len();
    assert_eq!(client.cmd(&["SET", "{sleeper}", "here"]), Reply::ok());
    let sleeper = cluster.node_for_slot(key_slot(b"{sleeper}"));
    let forgetful = cluster.another_master(sleeper);
    let mut slots: Vec<String> = cluster
        .masters()
        .iter()
        .filter(|m| m.port == sleeper)
        .flat_map(|m| m.slots.clone())
        .flat_map(|(start, end)| (start..=end).map(|s| s.to_string()))
        .collect();
    slots.insert(0, "DELSLOTS".into());
    slots.insert(0, "CLUSTER".into());

    let mut sleeping = cluster.client(sleeper);
    sleeping.send(&["DEBUG", "SLEEP", "2"]);
    thread::sleep(Duration::from_millis(50));
    let reply = cluster.client(forgetful).cmd(&slots);
    assert!(reply.is_ok(), "DELSLOTS: {reply:?}");
    assert!(
        cluster.slots_seen_by(forgetful).len() < masters,
        "{forgetful} lists the sleeper's slots as no one's"
    );
    // Refreshes every 100 ms ask the nodes in turn: the forgetful one among them.
    let mut covered = Vec::new();
    for _ in 0..8 {
        thread::sleep(Duration::from_millis(100));
        covered.extend(proxy.info_field("slots_covered"));
    }
    assert!(
        covered.iter().all(|c| c == "16384"),
        "slots covered while one node listed fewer: {covered:?}"
    );
    assert_eq!(
        client.cmd(&["GET", "{sleeper}"]),
        Reply::bulk("here"),
        "a request for the sleeping node's slots"
    );
    assert_eq!(sleeping.read_reply(), Reply::ok());
}
