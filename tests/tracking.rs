//! CLIENT TRACKING (client-side caching) through a cluster pool: invalidations reach the client
//! that read a key (RESP3 pushes, or `__redis__:invalidate` messages on the client it redirects
//! to), from whichever master owns the key, whoever changed it; BCAST with prefixes, NOLOOP,
//! OPTIN, `tracking-redir-broken`, and redis-py's own client-side cache.

mod support;

use std::time::Duration;

use support::{free_port, run_python_client, Client, RedisCluster, Reply, Slotline};

fn bulk(s: &str) -> Reply {
    Reply::bulk(s)
}

/// An `invalidate` push (or RESP2 `__redis__:invalidate` message) for `keys`.
fn invalidate(keys: &[&str]) -> Reply {
    Reply::Array(Some(vec![
        bulk("invalidate"),
        Reply::Array(Some(keys.iter().map(|k| bulk(k)).collect())),
    ]))
}

fn message(keys: &[&str]) -> Reply {
    Reply::Array(Some(vec![
        bulk("message"),
        bulk("__redis__:invalidate"),
        Reply::Array(Some(keys.iter().map(|k| bulk(k)).collect())),
    ]))
}

/// Asserts nothing more arrives within a moment.
fn quiet(client: &mut Client, what: &str) {
    client.set_read_timeout(Duration::from_millis(300));
    let got = client.try_read_reply();
    assert!(got.is_err(), "{what}: nothing more expected, got {got:?}");
    client.set_read_timeout(support::IO_TIMEOUT);
}

/// A client subscribed to `__redis__:invalidate` (a RESP2 redirect target), and its id.
fn invalidation_sink(proxy: &Slotline) -> (Client, i64) {
    let mut sink = proxy.client();
    let id = sink.cmd(&["CLIENT", "ID"]).as_int().expect("CLIENT ID");
    assert!(sink
        .cmd(&["SUBSCRIBE", "__redis__:invalidate"])
        .as_array()
        .is_some());
    (sink, id)
}

/// A 3-master cluster (with replicas) and a slotline in front of it.
fn cluster_behind_slotline() -> (RedisCluster, Slotline) {
    let cluster = RedisCluster::start(Default::default());
    let seeds: Vec<u16> = cluster.masters().iter().map(|m| m.port).collect();
    let proxy = Slotline::start(&Slotline::cluster_yaml(free_port(), &seeds));
    (cluster, proxy)
}

fn resp3(proxy: &Slotline) -> Client {
    let mut client = proxy.client();
    assert!(client.cmd(&["HELLO", "3"]).as_array().is_some());
    client
}

/// One key on each master, so that every test reads and writes across all of them.
fn keys_on_every_master(cluster: &RedisCluster, prefix: &str) -> Vec<String> {
    cluster
        .masters()
        .iter()
        .map(|m| {
            (0..)
                .map(|i| format!("{prefix}{i}"))
                .find(|k| cluster.node_for_slot(support::key_slot(k.as_bytes())) == m.port)
                .expect("a key on every master")
        })
        .collect()
}

#[test]
fn invalidations_reach_the_client_that_read_the_key() {
    let (cluster, proxy) = cluster_behind_slotline();
    let keys = keys_on_every_master(&cluster, "t:");
    let mut writer = proxy.client();

    // RESP3, default mode: each read key is invalidated once, whoever changes it.
    let mut reader = resp3(&proxy);
    assert_eq!(reader.cmd(&["CLIENT", "TRACKING", "ON"]), Reply::ok());
    assert_eq!(reader.cmd(&["CLIENT", "GETREDIR"]), Reply::Int(0));
    for key in &keys {
        assert_eq!(reader.cmd(&["GET", key]), Reply::Bulk(None));
    }
    for key in &keys {
        assert_eq!(writer.cmd(&["SET", key, "1"]), Reply::ok());
        assert_eq!(reader.read_reply(), invalidate(&[key]), "{key}");
    }
    assert_eq!(writer.cmd(&["SET", &keys[0], "2"]), Reply::ok());
    quiet(&mut reader, "a key not read again is not invalidated again");
    // One command's keys are told in the order it changed them, as Redis tells them (a master's
    // feed sends them sorted).
    assert!(reader.cmd(&["MGET", "{o}a", "{o}b"]).as_array().is_some());
    assert_eq!(writer.cmd(&["MSET", "{o}b", "1", "{o}a", "1"]), Reply::ok());
    assert_eq!(reader.read_reply(), invalidate(&["{o}b"]));
    assert_eq!(reader.read_reply(), invalidate(&["{o}a"]));
    // A change made directly on the node (not through slotline) is seen too.
    assert_eq!(reader.cmd(&["GET", &keys[1]]), bulk("1"));
    let owner = cluster.node_for_slot(support::key_slot(keys[1].as_bytes()));
    assert_eq!(
        Client::connect(owner).cmd(&["DEL", &keys[1]]),
        Reply::Int(1)
    );
    assert_eq!(reader.read_reply(), invalidate(&[&keys[1]]));
    // Its own write: the reply first, then the invalidation, as from one Redis.
    assert_eq!(reader.cmd(&["GET", &keys[2]]), bulk("1"));
    assert_eq!(reader.cmd(&["SET", &keys[2], "mine"]), Reply::ok());
    assert_eq!(reader.read_reply(), invalidate(&[&keys[2]]));

    // RESP2 with REDIRECT to a client subscribed to __redis__:invalidate.
    let (mut sink, sink_id) = invalidation_sink(&proxy);
    assert_eq!(writer.cmd(&["SET", &keys[1], "1"]), Reply::ok());
    let mut redirected = proxy.client();
    assert_eq!(
        redirected.cmd(&["CLIENT", "TRACKING", "ON", "REDIRECT", &sink_id.to_string()]),
        Reply::ok()
    );
    assert_eq!(redirected.cmd(&["CLIENT", "GETREDIR"]), Reply::Int(sink_id));
    assert_eq!(
        redirected
            .cmd(&["MGET", &keys[0], &keys[1]])
            .as_array()
            .map(<[Reply]>::len),
        Some(2)
    );
    assert_eq!(writer.cmd(&["DEL", &keys[0], &keys[1]]), Reply::Int(2));
    let mut got = vec![sink.read_reply(), sink.read_reply()];
    got.sort_by_key(|r| format!("{r:?}"));
    let mut want = vec![message(&[&keys[0]]), message(&[&keys[1]])];
    want.sort_by_key(|r| format!("{r:?}"));
    assert_eq!(got, want);

    // BCAST with a prefix: every change of a matching key, read or not, in one message per change.
    let mut watcher = resp3(&proxy);
    assert_eq!(
        watcher.cmd(&["CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", "t:", "NOLOOP"]),
        Reply::ok()
    );
    assert_eq!(writer.cmd(&["SET", "other", "1"]), Reply::ok());
    assert_eq!(writer.cmd(&["SET", &keys[1], "b"]), Reply::ok());
    assert_eq!(watcher.read_reply(), invalidate(&[&keys[1]]));
    // Two prefixes: a change of keys under both is one message per prefix, as Redis sends.
    let mut two = resp3(&proxy);
    assert_eq!(
        two.cmd(&["CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", "x:", "PREFIX", "y:"]),
        Reply::ok()
    );
    assert_eq!(
        writer.cmd(&["MSET", "x:{p}1", "1", "y:{p}1", "1", "z:{p}1", "1"]),
        Reply::ok()
    );
    let mut got = vec![two.read_reply(), two.read_reply()];
    got.sort_by_key(|r| format!("{r:?}"));
    assert_eq!(got, vec![invalidate(&["x:{p}1"]), invalidate(&["y:{p}1"])]);
    quiet(&mut two, "z: matches no prefix");
    // NOLOOP: its own writes tell it nothing; others' do.
    assert_eq!(watcher.cmd(&["SET", &keys[0], "own"]), Reply::ok());
    quiet(&mut watcher, "NOLOOP: its own write");
    let info = watcher.cmd(&["CLIENT", "TRACKINGINFO"]);
    assert_eq!(
        info,
        Reply::Array(Some(vec![
            bulk("flags"),
            Reply::Array(Some(vec![bulk("on"), bulk("bcast"), bulk("noloop")])),
            bulk("redirect"),
            Reply::Int(0),
            bulk("prefixes"),
            Reply::Array(Some(vec![bulk("t:")])),
        ]))
    );

    // OPTIN: only a read right after CLIENT CACHING YES is tracked.
    let mut optin = resp3(&proxy);
    assert_eq!(
        optin.cmd(&["CLIENT", "TRACKING", "ON", "OPTIN"]),
        Reply::ok()
    );
    assert_eq!(optin.cmd(&["GET", &keys[0]]), bulk("own"));
    assert_eq!(optin.cmd(&["CLIENT", "CACHING", "YES"]), Reply::ok());
    assert_eq!(optin.cmd(&["GET", &keys[1]]), bulk("b"));
    assert_eq!(writer.cmd(&["SET", &keys[0], "x"]), Reply::ok());
    assert_eq!(writer.cmd(&["SET", &keys[1], "x"]), Reply::ok());
    assert_eq!(optin.read_reply(), invalidate(&[&keys[1]]));
    quiet(&mut optin, "OPTIN: a read without CACHING YES");

    // A script's declared keys are tracked when the script runs a read command, as Redis tracks
    // them; one that only writes leaves them untracked.
    let mut scripted = resp3(&proxy);
    assert_eq!(scripted.cmd(&["CLIENT", "TRACKING", "ON"]), Reply::ok());
    let writes_only = "redis.call('SET', KEYS[1], 'w') return 1";
    assert_eq!(
        scripted.cmd(&["EVAL", writes_only, "1", &keys[0]]),
        Reply::Int(1)
    );
    assert_eq!(writer.cmd(&["SET", &keys[0], "x"]), Reply::ok());
    quiet(&mut scripted, "a script that read nothing");
    assert_eq!(
        scripted.cmd(&["EVAL", "return redis.call('GET', KEYS[1])", "1", &keys[0]]),
        bulk("x")
    );
    assert_eq!(writer.cmd(&["SET", &keys[0], "s"]), Reply::ok());
    assert_eq!(scripted.read_reply(), invalidate(&[&keys[0]]));

    // The redirect target leaves: a RESP3 tracker is told its redirect is broken.
    let mut orphan = resp3(&proxy);
    let mut target = proxy.client();
    let target_id = target.cmd(&["CLIENT", "ID"]).as_int().expect("id");
    assert_eq!(
        orphan.cmd(&[
            "CLIENT",
            "TRACKING",
            "ON",
            "REDIRECT",
            &target_id.to_string()
        ]),
        Reply::ok()
    );
    assert_eq!(orphan.cmd(&["GET", &keys[2]]), bulk("mine"));
    drop(target);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(writer.cmd(&["SET", &keys[2], "y"]), Reply::ok());
    assert_eq!(
        orphan.read_reply(),
        Reply::Array(Some(vec![
            bulk("tracking-redir-broken"),
            Reply::Int(target_id)
        ]))
    );

    // Redis's own errors.
    for (args, error) in [
        (
            &["CLIENT", "TRACKING", "ON", "PREFIX", "a"][..],
            "ERR PREFIX option requires BCAST mode to be enabled",
        ),
        (
            &["CLIENT", "TRACKING", "ON", "REDIRECT", "999999"],
            "ERR The client ID you want redirect to does not exist",
        ),
        (
            &["CLIENT", "TRACKING", "ON", "OPTIN", "OPTOUT"],
            "ERR You can't specify both OPTIN mode and OPTOUT mode",
        ),
        (
            &["CLIENT", "TRACKING", "MAYBE"],
            "ERR syntax error",
        ),
        (
            &["CLIENT", "CACHING", "YES"],
            "ERR CLIENT CACHING can be called only when the client is in tracking mode with OPTIN or OPTOUT mode enabled",
        ),
    ] {
        assert_eq!(writer.cmd(args), Reply::Error(error.into()), "{args:?}");
    }
    let mut prefixed = resp3(&proxy);
    assert_eq!(
        prefixed.cmd(&["CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", "p:"]),
        Reply::ok()
    );
    assert_eq!(
        prefixed.cmd(&["CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", "p:x"]),
        Reply::Error(
            "ERR Prefix 'p:x' overlaps with an existing prefix 'p:'. Prefixes for a single client must not overlap."
                .into()
        )
    );
    assert_eq!(writer.cmd(&["CLIENT", "GETREDIR"]), Reply::Int(-1));
    let info = writer.cmd(&["INFO", "clients"]);
    let text = String::from_utf8_lossy(info.as_bytes().expect("INFO")).into_owned();
    assert!(text.contains("tracking_clients:8\r\n"), "{text}");
    assert_eq!(reader.cmd(&["CLIENT", "TRACKING", "OFF"]), Reply::ok());
    assert_eq!(reader.cmd(&["GET", &keys[0]]), bulk("s"));
    assert_eq!(writer.cmd(&["SET", &keys[0], "z"]), Reply::ok());
    quiet(&mut reader, "tracking off");

    // CONFIG SET tracking-table-max-keys bounds what slotline remembers: past it a key is
    // invalidated for its readers and forgotten, as Redis does.
    let mut bounded = resp3(&proxy);
    assert_eq!(
        bounded.cmd(&["CLIENT", "TRACKING", "ON", "NOLOOP"]),
        Reply::ok()
    );
    assert_eq!(
        bounded.cmd(&["MSET", "{m}1", "1", "{m}2", "2"]),
        Reply::ok()
    );
    assert_eq!(
        bounded
            .cmd(&["MGET", "{m}1", "{m}2"])
            .as_array()
            .map(<[Reply]>::len),
        Some(2)
    );
    for key in &keys {
        assert!(bounded.cmd(&["GET", key]).as_bytes().is_some());
    }
    assert_eq!(
        writer.cmd(&["CONFIG", "SET", "tracking-table-max-keys", "1"]),
        Reply::ok()
    );
    let evicted = bounded.read_reply();
    assert!(
        evicted
            .as_array()
            .is_some_and(|a| a.first() == Some(&bulk("invalidate"))),
        "{evicted:?}"
    );
    assert_eq!(
        writer.cmd(&["CONFIG", "SET", "tracking-table-max-keys", "0"]),
        Reply::ok()
    );

    // An application's client-side cache (redis-py, RESP2 with a redirect) stays correct.
    run_python_client("redis_py_tracking.py", proxy.port(), "2");
}

#[test]
fn noloop_skips_only_own_writes_that_changed_the_key() {
    let (_cluster, proxy) = cluster_behind_slotline();
    let mut writer = proxy.client();
    let key = "t:noloop";
    assert_eq!(writer.cmd(&["SET", key, "a"]), Reply::ok());
    let mut cached = resp3(&proxy);
    assert_eq!(
        cached.cmd(&["CLIENT", "TRACKING", "ON", "NOLOOP"]),
        Reply::ok()
    );
    assert_eq!(cached.cmd(&["GET", key]), bulk("a"));
    // Its own writes that change nothing: Redis invalidates nothing for them.
    assert_eq!(cached.cmd(&["SETNX", key, "x"]), Reply::Int(0));
    assert_eq!(cached.cmd(&["SET", key, "y", "NX"]), Reply::Bulk(None));
    assert_eq!(cached.cmd(&["DEL", "t:{noloop}missing"]), Reply::Int(0));
    quiet(&mut cached, "writes that changed nothing");
    // So another client's change is not taken for one of them: the cached value is invalidated.
    assert_eq!(writer.cmd(&["SET", key, "b"]), Reply::ok());
    assert_eq!(cached.read_reply(), invalidate(&[key]));
    // Its own change still tells it nothing.
    assert_eq!(cached.cmd(&["GET", key]), bulk("b"));
    assert_eq!(cached.cmd(&["SET", key, "c"]), Reply::ok());
    quiet(&mut cached, "NOLOOP: its own write");
    // A script's writes are its own too; a key it names and leaves alone is not: another
    // client's change of it afterwards is told.
    let set = "return redis.call('set', KEYS[1], ARGV[1])";
    assert_eq!(cached.cmd(&["GET", key]), bulk("c"));
    assert_eq!(cached.cmd(&["EVAL", set, "1", key, "d"]), Reply::ok());
    assert_eq!(
        cached.cmd(&["GET", key]),
        bulk("d"),
        "no invalidation first"
    );
    let leave = "if ARGV[1] == 'write' then redis.call('set', KEYS[1], 'x') end return 1";
    assert_eq!(cached.cmd(&["EVAL", leave, "1", key, "no"]), Reply::Int(1));
    assert_eq!(writer.cmd(&["SET", key, "e"]), Reply::ok());
    assert_eq!(cached.read_reply(), invalidate(&[key]));
}

/// Invalidations are where Redis writes them among a client's replies: a write acknowledged to
/// anyone has its invalidations already on their way to the readers, so a reader that reads the
/// key again gets the invalidation before the new value (never after it, which would throw away a
/// value it just fetched), and its own write's invalidation comes right after that write's reply,
/// before the reply of the read it sends next. 300 rounds each, on every master.
#[test]
fn invalidations_come_before_the_replies_of_reads_sent_after_the_write() {
    let (cluster, proxy) = cluster_behind_slotline();
    let keys = keys_on_every_master(&cluster, "order:");
    let mut writer = proxy.client();
    let mut reader = resp3(&proxy);
    assert_eq!(reader.cmd(&["CLIENT", "TRACKING", "ON"]), Reply::ok());
    let mut out_of_order = Vec::new();
    for round in 0..300 {
        let key = &keys[round % keys.len()];
        let value = round.to_string();
        // Another client writes a key the reader has cached.
        assert!(reader.cmd(&["GET", key]).as_bytes().is_some() || round < keys.len());
        assert_eq!(writer.cmd(&["SET", key, &value]), Reply::ok());
        reader.send(&["GET", key]);
        let first = reader.read_reply();
        let second = reader.read_reply();
        if (&first, &second) != (&invalidate(&[key]), &bulk(&value)) {
            out_of_order.push(format!("other's write {round}: {first:?} then {second:?}"));
            break;
        }
        // The reader's own write: its reply, the invalidation, then its next read's reply.
        let own = format!("own{round}");
        assert_eq!(reader.cmd(&["SET", key, &own]), Reply::ok());
        reader.send(&["GET", key]);
        let got = [reader.read_reply(), reader.read_reply()];
        if got != [invalidate(&[key]), bulk(&own)] {
            out_of_order.push(format!("own write {round}: {got:?}"));
            break;
        }
    }
    assert!(out_of_order.is_empty(), "{out_of_order:?}");
    quiet(&mut reader, "no invalidation left over");
}

/// FLUSHDB inside a transaction (allow_flush) empties every master, EXEC answers as Redis does and
/// the tracking client is then told to flush; INFO counts slotline's own tracking table.
#[test]
fn a_flush_in_a_transaction_empties_every_master_and_tells_tracking_clients() {
    let cluster = RedisCluster::start(Default::default());
    let seeds: Vec<u16> = cluster.masters().iter().map(|m| m.port).collect();
    let yaml = Slotline::cluster_yaml(free_port(), &seeds) + "    allow_flush: true\n";
    let proxy = Slotline::start(&yaml);
    let keys = keys_on_every_master(&cluster, "flush:");
    let mut reader = resp3(&proxy);
    assert_eq!(reader.cmd(&["CLIENT", "TRACKING", "ON"]), Reply::ok());
    for key in &keys {
        assert_eq!(reader.cmd(&["SET", key, "1"]), Reply::ok());
    }
    let info = |field: &str| {
        let reply = proxy.client().cmd(&["INFO", "stats"]);
        let text = String::from_utf8_lossy(reply.as_bytes().unwrap_or_default()).into_owned();
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")));
        line.and_then(|v| v.trim().parse::<u64>().ok())
    };
    assert_eq!(reader.cmd(&["GET", &keys[0]]), bulk("1"));
    assert_eq!(info("tracking_total_keys"), Some(1));
    assert_eq!(info("tracking_total_items"), Some(1));
    assert_eq!(reader.cmd(&["MULTI"]), Reply::Status("OK".into()));
    assert_eq!(reader.cmd(&["FLUSHDB"]), Reply::Status("QUEUED".into()));
    assert_eq!(reader.cmd(&["EXEC"]), Reply::Array(Some(vec![Reply::ok()])));
    let push = reader.read_reply();
    assert!(
        matches!(&push, Reply::Array(Some(v)) if v.len() == 2 && v[0] == bulk("invalidate")
            && matches!(v[1], Reply::Bulk(None) | Reply::Array(None))),
        "{push:?}"
    );
    for m in cluster.masters() {
        assert_eq!(Client::connect(m.port).cmd(&["DBSIZE"]), Reply::Int(0));
    }
    assert_eq!(info("tracking_total_keys"), Some(0));
    // A flush while nobody tracks is not told, late, to a client that starts tracking right
    // after it was acknowledged (the feeds still run for a moment after the last client left).
    let mut writer = proxy.client();
    for round in 0..20 {
        // As Redis's suite does it: the reader tracks into a redirect, another client flushes.
        let (sink, sink_id) = invalidation_sink(&proxy);
        assert!(reader.cmd(&["HELLO", "2"]).as_array().is_some());
        let redirect = sink_id.to_string();
        let on = ["CLIENT", "TRACKING", "ON", "REDIRECT", &redirect];
        assert_eq!(reader.cmd(&on), Reply::ok());
        assert_eq!(reader.cmd(&["GET", "flush:a"]), Reply::Bulk(None));
        assert_eq!(writer.cmd(&["FLUSHALL", "ASYNC"]), Reply::ok());
        assert_eq!(reader.cmd(&["CLIENT", "TRACKING", "OFF"]), Reply::ok());
        drop(sink);
        assert_eq!(reader.cmd(&["FLUSHALL"]), Reply::ok());
        assert!(reader.cmd(&["HELLO", "3"]).as_array().is_some());
        assert_eq!(reader.cmd(&["CLIENT", "TRACKING", "ON"]), Reply::ok());
        let got = reader.cmd(&["PING"]);
        assert_eq!(got, Reply::Status("PONG".into()), "round {round}");
    }
}
