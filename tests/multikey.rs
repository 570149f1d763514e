//! Multi-key commands whose keys live on several backends (MGET, MSET, DEL, UNLINK, EXISTS, TOUCH) are
//! split and their replies merged, in a Redis Cluster and in a ketama pool; other multi-key commands
//! must keep their keys together and say so when they do not.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use support::{
    free_port, key_slot, twemproxy_stats, Client, Nutcracker, RedisCluster, RedisServers, Reply,
    Slotline,
};

fn shared() -> &'static RedisCluster {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| RedisCluster::start(Default::default()))
}

fn values(reply: &Reply) -> Vec<Option<Vec<u8>>> {
    reply
        .as_array()
        .unwrap_or_else(|| panic!("expected an array, got {reply:?}"))
        .iter()
        .map(|r| match r {
            Reply::Bulk(v) => v.clone(),
            other => panic!("expected a bulk string, got {other:?}"),
        })
        .collect()
}

/// Binary-safe values with CRLF and NUL inside, so a merge that cuts at the wrong place shows.
fn value(i: usize) -> Vec<u8> {
    format!("value\r\n{i}\0").into_bytes()
}

/// The split commands as a user sees them: a write of many keys lands key by key where single-key
/// commands find it, and the counts and values come back as if one server held every key.
fn split_commands_behave_like_one_server(client: &mut Client, prefix: &str, spread: usize) {
    let keys: Vec<Vec<u8>> = (0..40)
        .map(|i| format!("{prefix}{i}").into_bytes())
        .collect();
    assert!(spread > 1, "the keys must live in several places");
    let mut mset: Vec<Vec<u8>> = vec![b"MSET".to_vec()];
    for (i, k) in keys.iter().enumerate() {
        mset.push(k.clone());
        mset.push(value(i));
    }
    assert_eq!(client.cmd(&mset), Reply::ok(), "MSET across places");
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(client.cmd(&[&b"GET"[..], k]), Reply::bulk(value(i)));
    }

    // MGET in the client's order, with absent keys and a repeated key in between.
    let mut mget: Vec<Vec<u8>> = vec![b"MGET".to_vec()];
    let mut expected = Vec::new();
    for (i, k) in keys.iter().enumerate().rev() {
        mget.push(k.clone());
        expected.push(Some(value(i)));
        if i % 7 == 0 {
            mget.push(format!("{prefix}absent{i}").into_bytes());
            expected.push(None);
            mget.push(keys[0].clone());
            expected.push(Some(value(0)));
        }
    }
    assert_eq!(values(&client.cmd(&mget)), expected, "MGET across places");

    // Counts are summed; a key named twice counts twice, as with Redis.
    let mut exists: Vec<&[u8]> = vec![b"EXISTS", &keys[0], &keys[0], b"no-such-key"];
    exists.extend(keys[1..10].iter().map(|k| &k[..]));
    assert_eq!(client.cmd(&exists), Reply::Int(11));
    let mut touch: Vec<&[u8]> = vec![b"TOUCH"];
    touch.extend(keys[..20].iter().map(|k| &k[..]));
    assert_eq!(client.cmd(&touch), Reply::Int(20));
    let mut del: Vec<&[u8]> = vec![b"DEL"];
    del.extend(keys[..20].iter().map(|k| &k[..]));
    del.push(b"no-such-key");
    assert_eq!(client.cmd(&del), Reply::Int(20));
    let mut unlink: Vec<&[u8]> = vec![b"UNLINK"];
    unlink.extend(keys.iter().map(|k| &k[..]));
    assert_eq!(
        client.cmd(&unlink),
        Reply::Int(20),
        "only the other half was left"
    );
    let mut mget_all: Vec<&[u8]> = vec![b"MGET"];
    mget_all.extend(keys.iter().map(|k| &k[..]));
    assert_eq!(values(&client.cmd(&mget_all)), vec![None; keys.len()]);

    // MSET with a key but no value is refused before anything is written.
    let reply = client.cmd(&["MSET", &format!("{prefix}1"), "v", &format!("{prefix}2")]);
    assert_eq!(
        reply,
        Reply::Error("ERR wrong number of arguments for 'mset' command".into())
    );
    assert_eq!(
        client.cmd(&["EXISTS", &format!("{prefix}1")]),
        Reply::Int(0)
    );
}

/// MSET of each key to `v-<key>`.
fn set_values(client: &mut Client, keys: &[String]) {
    let mut mset = vec!["MSET".to_string()];
    for k in keys {
        mset.push(k.clone());
        mset.push(format!("v-{k}"));
    }
    assert_eq!(client.cmd(&mset), Reply::ok());
}

/// One MGET of every key returns what [`set_values`] wrote, in the keys' order.
fn mget_gets_the_values(client: &mut Client, keys: &[String]) {
    let mut mget = vec!["MGET".to_string()];
    mget.extend(keys.iter().cloned());
    let expected: Vec<Option<Vec<u8>>> = keys
        .iter()
        .map(|k| Some(format!("v-{k}").into_bytes()))
        .collect();
    assert_eq!(values(&client.cmd(&mget)), expected);
}

/// Split commands in the middle of a pipeline keep their place, and a large MGET comes back whole.
fn pipelines_keep_order_through_splits(client: &mut Client, prefix: &str) {
    let mut cmds: Vec<Vec<String>> = Vec::new();
    for i in 0..300 {
        let (a, b) = (format!("{prefix}p{i}"), format!("{prefix}q{i}"));
        cmds.push(vec![
            "MSET".into(),
            a.clone(),
            format!("{i}a"),
            b.clone(),
            format!("{i}b"),
        ]);
        cmds.push(vec!["GET".into(), a.clone()]);
        cmds.push(vec!["MGET".into(), b.clone(), "absent".into(), a.clone()]);
        cmds.push(vec!["DEL".into(), a, b]);
    }
    let replies = client.pipeline(&cmds);
    for (i, chunk) in replies.chunks(4).enumerate() {
        assert_eq!(chunk[0], Reply::ok(), "MSET #{i}");
        assert_eq!(chunk[1], Reply::bulk(format!("{i}a")), "GET #{i}");
        assert_eq!(
            values(&chunk[2]),
            vec![
                Some(format!("{i}b").into_bytes()),
                None,
                Some(format!("{i}a").into_bytes())
            ],
            "MGET #{i}"
        );
        assert_eq!(chunk[3], Reply::Int(2), "DEL #{i}");
    }

    let keys: Vec<String> = (0..5000).map(|i| format!("{prefix}big{i}")).collect();
    set_values(client, &keys);
    mget_gets_the_values(client, &keys);
    let mut del = vec!["DEL".to_string()];
    del.extend(keys.iter().cloned());
    assert_eq!(client.cmd(&del), Reply::Int(keys.len() as i64));
}

#[test]
fn cluster_splits_multi_key_commands_across_slots() {
    let (_proxy, port) = Slotline::cluster(shared());
    let mut client = Client::connect(port);
    let slots: BTreeSet<u16> = (0..40)
        .map(|i| key_slot(format!("split:{i}").as_bytes()))
        .collect();
    split_commands_behave_like_one_server(&mut client, "split:", slots.len());
    // Each key really is on the master that owns its slot.
    let cluster = shared();
    assert_eq!(client.cmd(&["SET", "split:home", "here"]), Reply::ok());
    let owner = cluster.node_for_slot(key_slot(b"split:home"));
    assert_eq!(
        Client::connect(owner).cmd(&["GET", "split:home"]),
        Reply::bulk("here")
    );
    pipelines_keep_order_through_splits(&mut client, "pipe:");
}

/// The parts of a split command that go to one master leave as one batch, yet each is a request of
/// its own to Redis (its own slot) and is counted as one: the twemproxy-style stats of every master
/// grow by at least its number of parts, and no queue is left holding requests once all is answered.
#[test]
fn cluster_parts_for_one_master_travel_together_and_each_is_counted() {
    let cluster = shared();
    let port = free_port();
    let stats_port = free_port();
    let seeds: Vec<u16> = cluster.masters().iter().map(|m| m.port).collect();
    let _proxy = Slotline::start_with_args(
        &Slotline::cluster_yaml(port, &seeds),
        &["-s", &stats_port.to_string(), "-a", "127.0.0.1"],
    );
    let mut client = Client::connect(port);
    let keys: Vec<String> = (0..60).map(|i| format!("batch:{i}")).collect();
    let mut slots_of_master: BTreeMap<u16, BTreeSet<u16>> = BTreeMap::new();
    for key in &keys {
        let slot = key_slot(key.as_bytes());
        slots_of_master
            .entry(cluster.node_for_slot(slot))
            .or_default()
            .insert(slot);
    }
    assert_eq!(slots_of_master.len(), 3, "the keys span every master");
    assert!(
        slots_of_master.values().all(|slots| slots.len() > 1),
        "every master holds several of the keys' slots: {slots_of_master:?}"
    );
    set_values(&mut client, &keys);

    let requests = |report: &serde_json::Value, master: u16| {
        report["main"][format!("127.0.0.1:{master}")]["requests"]
            .as_u64()
            .unwrap_or_else(|| panic!("no requests for master {master}: {report}"))
    };
    let before = twemproxy_stats(stats_port);
    mget_gets_the_values(&mut client, &keys);
    let after = twemproxy_stats(stats_port);

    let parts: usize = slots_of_master.values().map(BTreeSet::len).sum();
    let fragments = |report: &serde_json::Value| report["main"]["fragments"].as_u64().unwrap_or(0);
    assert_eq!(
        fragments(&after) - fragments(&before),
        parts as u64,
        "one part per slot"
    );
    for (master, slots) in &slots_of_master {
        let sent = requests(&after, *master) - requests(&before, *master);
        assert!(
            sent >= slots.len() as u64,
            "master {master} holds {} of the slots but counted {sent} requests",
            slots.len()
        );
        let server = &after["main"][format!("127.0.0.1:{master}")];
        assert_eq!(server["in_queue"].as_i64(), Some(0), "{server}");
        assert_eq!(server["out_queue"].as_i64(), Some(0), "{server}");
    }
}

#[test]
fn cluster_commands_that_cannot_be_split_say_why() {
    let (_proxy, port) = Slotline::cluster(shared());
    let mut client = Client::connect(port);
    assert_ne!(key_slot(b"a"), key_slot(b"b"));
    for cmd in [
        &["MSETNX", "a", "1", "b", "2"][..],
        &["RENAME", "a", "b"],
        &["SMOVE", "a", "b", "m"],
        &["SINTERSTORE", "a", "b"],
    ] {
        let reply = client.cmd(cmd);
        let error = reply
            .error()
            .unwrap_or_else(|| panic!("{cmd:?}: {reply:?}"));
        assert!(
            error.starts_with("CROSSSLOT Keys in request don't hash to the same slot")
                && error.contains(cmd[0])
                && error.contains("hash tag"),
            "{cmd:?}: {error}"
        );
    }
    assert_eq!(
        client.cmd(&["EXISTS", "a"]),
        Reply::Int(0),
        "MSETNX wrote nothing"
    );
    // With a hash tag the same commands work.
    assert_eq!(
        client.cmd(&["MSETNX", "{t}a", "1", "{t}b", "2"]),
        Reply::Int(1)
    );
    assert_eq!(client.cmd(&["RENAME", "{t}a", "{t}c"]), Reply::ok());
    assert_eq!(
        values(&client.cmd(&["MGET", "{t}a", "{t}b", "{t}c"])),
        vec![None, Some(b"2".to_vec()), Some(b"1".to_vec())]
    );
    assert_eq!(client.cmd(&["DEL", "{t}b", "{t}c"]), Reply::Int(2));
}

fn ketama_yaml(port: u16, servers: &RedisServers) -> String {
    let mut yaml = format!(
        "shards:\n  listen: 127.0.0.1:{port}\n  redis: true\n  hash: fnv1a_64\n  distribution: ketama\n  \
         timeout: 1000\n  servers:\n"
    );
    for i in 0..servers.len() {
        yaml.push_str(&format!("    - 127.0.0.1:{}:1 shard{i}\n", servers.port(i)));
    }
    yaml
}

/// Which server holds each key.
fn holders(servers: &RedisServers, keys: &[String]) -> Vec<usize> {
    keys.iter()
        .map(|k| {
            let on: Vec<usize> = (0..servers.len())
                .filter(|&i| servers.client(i).cmd(&["EXISTS", k]) == Reply::Int(1))
                .collect();
            assert_eq!(on.len(), 1, "{k} is on servers {on:?}");
            on[0]
        })
        .collect()
}

#[test]
fn ketama_pool_splits_multi_key_commands_by_server_like_nutcracker() {
    let mut servers = RedisServers::start(4);
    let yaml = ketama_yaml(free_port(), &servers);
    let proxy = Slotline::start(&yaml);
    let mut client = proxy.client();
    split_commands_behave_like_one_server(&mut client, "split:", servers.len());
    pipelines_keep_order_through_splits(&mut client, "pipe:");

    // One MSET through slotline and the same MSET through nutcracker (which splits MSET too) put
    // every key on the same server.
    let keys: Vec<String> = (0..300).map(|i| format!("placed:{i}")).collect();
    let mut mset = vec!["MSET".to_string()];
    for k in &keys {
        mset.push(k.clone());
        mset.push("1".into());
    }
    assert_eq!(client.cmd(&mset), Reply::ok());
    let ours = holders(&servers, &keys);
    let mut del = vec!["DEL".to_string()];
    del.extend(keys.iter().cloned());
    assert_eq!(client.cmd(&del), Reply::Int(keys.len() as i64));
    let nutcracker_port = free_port();
    let nutcracker = Nutcracker::start(&ketama_yaml(nutcracker_port, &servers), nutcracker_port);
    assert_eq!(nutcracker.client().cmd(&mset), Reply::ok());
    assert_eq!(
        holders(&servers, &keys),
        ours,
        "placement differs from nutcracker"
    );
    let used: BTreeSet<_> = ours.iter().collect();
    assert!(used.len() > 1, "every key on one server: {used:?}");

    // A shard that is down fails the whole command, not a silently shorter answer; the connection
    // stays usable, and keys elsewhere still answer.
    let on_down = keys[0].clone();
    let elsewhere = keys
        .iter()
        .zip(&ours)
        .find(|(_, &s)| s != ours[0])
        .map(|(k, _)| k.clone())
        .expect("a key on another shard");
    let down = ours[0];
    servers.stop(down);
    let reply = client.cmd(&["MGET", &elsewhere, &on_down]);
    assert!(
        reply.error().is_some_and(|e| e.starts_with("ERR slotline")),
        "MGET with a key on a stopped shard: {reply:?}"
    );
    assert_eq!(client.cmd(&["GET", &elsewhere]), Reply::bulk("1"));
    servers.restart(down);
    support::wait_for(
        std::time::Duration::from_secs(10),
        "the shard to be back",
        || {
            client
                .cmd(&["MGET", &elsewhere, &on_down])
                .as_array()
                .is_some()
        },
    );
}

#[test]
fn ketama_commands_that_cannot_be_split_say_why() {
    let servers = RedisServers::start(3);
    let proxy = Slotline::start(&ketama_yaml(free_port(), &servers));
    let mut client = proxy.client();
    // Two keys on different servers, as slotline places them.
    assert_eq!(client.cmd(&["SET", "k0", "x"]), Reply::ok());
    let other = (1..200)
        .map(|i| format!("k{i}"))
        .find(|k| {
            assert_eq!(client.cmd(&["SET", k, "x"]), Reply::ok());
            let apart = holders(&servers, &["k0".to_string(), k.clone()]);
            apart[0] != apart[1]
        })
        .expect("a key on another server than k0");
    let reply = client.cmd(&["RENAME", "k0", &other]);
    let error = reply.error().unwrap_or_else(|| panic!("RENAME: {reply:?}"));
    assert!(
        error.starts_with("CROSSSLOT") && error.contains("RENAME") && error.contains("hash_tag"),
        "{error}"
    );
    assert_eq!(client.cmd(&["EXISTS", "k0", &other]), Reply::Int(2));
}
