//! Blocking commands through slotline: they wait as long as Redis makes them wait, never hold up other
//! clients whose requests share the backend connection, and a client that leaves while blocked is
//! gone from the server too.

mod support;

use std::time::{Duration, Instant};

use support::{
    client_list, free_port, key_slot, wait_for, Client, RedisCluster, RedisServers, Reply, Slotline,
};

/// Keys that all live on one master: the blocked command and the other client's traffic share the
/// master's one multiplexed connection (server_connections: 1).
const LIST: &str = "{b}list";
const OTHER: &str = "{b}other";

/// Client list lines of the server at `port` that are blocked in `command`.
fn blocked_in(port: u16, command: &str) -> usize {
    client_list(port)
        .iter()
        .filter(|l| l.contains(&format!(" cmd={command} ")))
        .count()
}

/// `blocked_clients` of INFO through slotline: what clients (and Redis's own test suite) wait on.
fn blocked_clients(proxy_port: u16) -> u64 {
    let reply = Client::connect(proxy_port).cmd(&["INFO", "clients"]);
    let text = String::from_utf8_lossy(reply.as_bytes().expect("INFO")).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("blocked_clients:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no blocked_clients in {text}"))
}

fn blocking_commands_stall_no_one(proxy_port: u16, backend_port: u16) {
    assert_eq!(blocked_clients(proxy_port), 0);
    let mut blocked = Client::connect(proxy_port);
    blocked.send(&["BLPOP", LIST, "0"]);
    wait_for(
        Duration::from_secs(5),
        "BLPOP to block on the server",
        || blocked_in(backend_port, "blpop") == 1,
    );
    assert_eq!(
        blocked_clients(proxy_port),
        1,
        "INFO clients while BLPOP waits"
    );

    // Another client's requests to the same master go through while BLPOP waits.
    let mut other = Client::connect(proxy_port);
    let cmds: Vec<Vec<String>> = (0..500)
        .map(|i| vec!["SET".into(), OTHER.into(), i.to_string()])
        .collect();
    assert!(other.pipeline(&cmds).iter().all(Reply::is_ok));
    assert_eq!(other.cmd(&["GET", OTHER]), Reply::bulk("499"));

    // The blocked client gets its reply when there is one.
    assert_eq!(other.cmd(&["RPUSH", LIST, "x"]), Reply::Int(1));
    assert_eq!(
        blocked.read_reply(),
        Reply::Array(Some(vec![Reply::bulk(LIST), Reply::bulk("x")]))
    );
    // The same client goes on with ordinary commands, and blocks again.
    assert_eq!(blocked.cmd(&["GET", OTHER]), Reply::bulk("499"));
    assert_eq!(blocked_clients(proxy_port), 0, "INFO clients once answered");

    // Pipelined with the push before it, the blocking command sees the push (it is not sent ahead of
    // it on its own connection), and the read after it sees what it popped.
    let replies = blocked.pipeline(&[
        vec!["RPUSH", LIST, "y"],
        vec!["BLPOP", LIST, "0"],
        vec!["LLEN", LIST],
    ]);
    assert_eq!(
        replies,
        vec![
            Reply::Int(1),
            Reply::Array(Some(vec![Reply::bulk(LIST), Reply::bulk("y")])),
            Reply::Int(0)
        ]
    );

    // CLIENT UNBLOCK from another client ends it as its timeout would, or with an error; the
    // node no longer holds it, and the client goes on.
    let id = blocked.cmd(&["CLIENT", "ID"]).as_int().expect("CLIENT ID");
    for (how, reply) in [
        ("TIMEOUT", Reply::Array(None)),
        (
            "ERROR",
            Reply::Error("UNBLOCKED client unblocked via CLIENT UNBLOCK".into()),
        ),
    ] {
        blocked.send(&["BLPOP", LIST, "0"]);
        wait_for(Duration::from_secs(5), "BLPOP to block", || {
            blocked_clients(proxy_port) == 1
        });
        let unblock = ["CLIENT", "UNBLOCK", &id.to_string(), how];
        assert_eq!(other.cmd(&unblock), Reply::Int(1), "{how}");
        assert_eq!(blocked.read_reply(), reply, "{how}");
        wait_for(Duration::from_secs(5), "the node to let go", || {
            blocked_in(backend_port, "blpop") == 0
        });
        assert_eq!(other.cmd(&unblock), Reply::Int(0), "not blocked any more");
        assert_eq!(blocked.cmd(&["GET", OTHER]), Reply::bulk("499"));
    }
    assert_eq!(
        other.cmd(&["CLIENT", "UNBLOCK", &id.to_string(), "SOON"]),
        Reply::Error("ERR CLIENT UNBLOCK reason should be TIMEOUT or ERROR".into())
    );

    // A blocking command with a timeout outlives the pool's timeout (300 ms) and returns nil.
    let started = Instant::now();
    assert_eq!(blocked.cmd(&["BLPOP", LIST, "1"]), Reply::Array(None));
    assert!(started.elapsed() >= Duration::from_millis(900));

    // XREAD with BLOCK waits on the client's own connection too.
    blocked.send(&["XREAD", "BLOCK", "0", "STREAMS", "{b}stream", "$"]);
    wait_for(Duration::from_secs(5), "XREAD BLOCK to block", || {
        blocked_in(backend_port, "xread") == 1
    });
    assert_eq!(other.cmd(&["GET", OTHER]), Reply::bulk("499"));
    assert!(other
        .cmd(&["XADD", "{b}stream", "*", "f", "v"])
        .as_bytes()
        .is_some());
    let reply = blocked.read_reply();
    assert!(
        reply.as_array().is_some_and(|a| a.len() == 1),
        "XREAD: {reply:?}"
    );

    // A client that leaves while blocked is gone from the server: it takes nothing pushed later.
    let mut leaving = Client::connect(proxy_port);
    leaving.send(&["BLPOP", LIST, "0"]);
    wait_for(Duration::from_secs(5), "the second BLPOP to block", || {
        blocked_in(backend_port, "blpop") == 1
    });
    assert_eq!(blocked_clients(proxy_port), 1);
    drop(leaving);
    wait_for(
        Duration::from_secs(5),
        "the server to forget the client",
        || blocked_in(backend_port, "blpop") == 0,
    );
    wait_for(Duration::from_secs(5), "slotline to count it gone", || {
        blocked_clients(proxy_port) == 0
    });
    assert_eq!(other.cmd(&["RPUSH", LIST, "kept"]), Reply::Int(1));
    assert_eq!(
        other.cmd(&["LRANGE", LIST, "0", "-1"]),
        Reply::Array(Some(vec![Reply::bulk("kept")]))
    );
    assert_eq!(other.cmd(&["DEL", LIST, OTHER, "{b}stream"]), Reply::Int(3));
}

#[test]
fn cluster_blocking_commands_wait_on_their_own_connection() {
    let cluster = RedisCluster::start(Default::default());
    let port = free_port();
    let seeds: Vec<u16> = cluster.masters().iter().map(|m| m.port).collect();
    let yaml = Slotline::cluster_yaml(port, &seeds).replace("timeout: 1000", "timeout: 300");
    let _proxy = Slotline::start(&yaml);
    let backend = cluster.node_for_slot(key_slot(b"b"));
    blocking_commands_stall_no_one(port, backend);

    // Keys in different slots cannot block together.
    let reply = Client::connect(port).cmd(&["BLPOP", "a", "b", "0"]);
    assert!(
        reply.error().is_some_and(|e| e.starts_with("CROSSSLOT")),
        "{reply:?}"
    );
}

#[test]
fn ketama_blocking_commands_wait_on_their_own_connection() {
    let servers = RedisServers::start(1);
    let port = free_port();
    let proxy = Slotline::start(&format!(
        "pools:\n  shards:\n    listen: 127.0.0.1:{port}\n    mode: ketama\n    timeout: 300\n    servers:\n      - 127.0.0.1:{}:1\n",
        servers.port(0)
    ));
    blocking_commands_stall_no_one(proxy.port(), servers.port(0));
}

/// The PID of the redis-server on `port`.
fn process_id(port: u16) -> String {
    let reply = Client::connect(port).cmd(&["INFO", "server"]);
    let text = String::from_utf8_lossy(reply.as_bytes().expect("INFO server")).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .expect("process_id in INFO")
        .trim()
        .to_string()
}

fn signal(pid: &str, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, pid])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {sig} {pid}");
}

#[test]
fn wait_counts_the_replicas_that_have_every_earlier_write_on_every_master() {
    let cluster = RedisCluster::start(Default::default());
    let port = free_port();
    let seeds: Vec<u16> = cluster.masters().iter().map(|m| m.port).collect();
    let yaml = Slotline::cluster_yaml(port, &seeds).replace("timeout: 1000", "timeout: 300");
    let proxy = Slotline::start(&yaml);
    let mut client = proxy.client();
    for i in 0..30 {
        assert!(client.cmd(&["SET", &format!("k{i}"), "v"]).is_ok());
    }
    // Every master has one replica, and it has every write.
    assert_eq!(client.cmd(&["WAIT", "1", "5000"]), Reply::Int(1));
    // A timeout of thousands of years is a timeout like any other.
    assert_eq!(client.cmd(&["WAIT", "1", "100000000000000"]), Reply::Int(1));

    // One master's replica stops (SIGSTOP: its link stays up, it just acknowledges nothing), and the
    // client writes to that master: its replica has not got the write, so it is not counted, and WAIT
    // waits out its timeout, on the client's own connections only.
    let master = &cluster.masters()[0];
    let replica = cluster.replicas_of(master.port)[0];
    let pid = process_id(replica);
    let key = support::key_in_slot("w", master.slots[0].0);
    assert!(client.cmd(&["SET", &key, "v"]).is_ok());
    signal(&pid, "-STOP");
    let started = Instant::now();
    client.send(&["WAIT", "1", "800"]);
    let mut other = proxy.client();
    for i in 0..30 {
        assert_eq!(other.cmd(&["GET", &format!("k{i}")]), Reply::bulk("v"));
    }
    assert!(
        started.elapsed() < Duration::from_millis(700),
        "other clients waited for WAIT: {:?}",
        started.elapsed()
    );
    let waited = client.read_reply();
    let took = started.elapsed();
    signal(&pid, "-CONT");
    assert_eq!(waited, Reply::Int(0), "the stopped replica was counted");
    assert!(
        took >= Duration::from_millis(800),
        "WAIT returned after {took:?}"
    );

    // Once it runs again it catches up, and WAIT says so.
    assert_eq!(client.cmd(&["WAIT", "1", "5000"]), Reply::Int(1));
    // WAIT's own key (set and deleted in one script on each master) is nowhere.
    let keys = client.cmd(&["KEYS", "__slotline_wait__*"]);
    assert_eq!(keys, Reply::Array(Some(vec![])));
    for bad in [["WAIT", "1", "-1"], ["WAIT", "x", "0"]] {
        assert!(client.cmd(&bad).is_error(), "{bad:?}");
    }
}

#[test]
fn wait_in_a_sharded_pool_asks_every_server() {
    let servers = RedisServers::start(2);
    let port = free_port();
    let proxy = Slotline::start(&servers.ketama_yaml(port, ""));
    let mut client = proxy.client();
    assert!(client.cmd(&["SET", "a", "1"]).is_ok());
    // No replicas: none to count, at once for 0 and after the timeout for 1.
    assert_eq!(client.cmd(&["WAIT", "0", "0"]), Reply::Int(0));
    let started = Instant::now();
    assert_eq!(client.cmd(&["WAIT", "1", "200"]), Reply::Int(0));
    assert!(started.elapsed() >= Duration::from_millis(200));
}
