//! Timeouts, size limits, listeners of both kinds, and the command table against the live server.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::{
    free_port, key_slot, wait_for, Client, ClusterOpts, RedisCluster, Reply, Slotline, TempDir,
};

fn small_cluster() -> RedisCluster {
    RedisCluster::start(ClusterOpts {
        replicas_per_master: 0,
        ..ClusterOpts::default()
    })
}

fn yaml(port: u16, seed: u16, extra: &str) -> String {
    format!(
        "pools:\n  main:\n    listen: 127.0.0.1:{port}\n    mode: cluster\n    servers: [127.0.0.1:{seed}]\n{extra}"
    )
}

/// A node that stops answering makes the waiting request fail with a timeout; the replies that arrive
/// later on the same backend connection still go to the right requests.
#[test]
fn a_timed_out_request_fails_alone_and_later_replies_stay_in_order() {
    let cluster = small_cluster();
    let node = cluster.node_for_slot(key_slot(b"{t}key"));
    let port = free_port();
    let _proxy = Slotline::start(&yaml(port, node, "    timeout: 300\n"));
    let mut client = Client::connect(port);
    assert_eq!(client.cmd(&["SET", "{t}key", "v1"]), Reply::ok());

    // Every normal client of the node, slotline's connection included, waits for 1.5 s.
    let pause = cluster.cli(node, &["CLIENT", "PAUSE", "1500", "ALL"]);
    assert_eq!(pause.trim(), "OK");
    let started = Instant::now();
    let reply = client.cmd(&["SET", "{t}key", "v2"]);
    assert!(
        matches!(&reply, Reply::Error(e) if e.contains("no reply")),
        "expected a timeout error, got {reply:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "the timeout did not fire before the pause ended"
    );

    // The paused SET still runs when the node wakes; its late reply must not be taken for GET's.
    wait_for(Duration::from_secs(10), "the node to answer again", || {
        client.cmd(&["GET", "{t}key"]) == Reply::bulk("v2")
    });
    assert_eq!(client.cmd(&["INCR", "{t}counter"]), Reply::Int(1));
    assert_eq!(client.cmd(&["GET", "{t}counter"]), Reply::bulk("1"));
}

#[test]
fn requests_over_the_size_limit_close_only_that_connection() {
    let cluster = small_cluster();
    let node = cluster.masters()[0].port;
    let port = free_port();
    let _proxy = Slotline::start(&yaml(port, node, "    max_request_bytes: 4096\n"));
    let mut other = Client::connect(port);
    let mut client = Client::connect(port);
    assert_eq!(
        client.cmd(&["SET", "small", &"x".repeat(3000)]),
        Reply::ok()
    );
    let reply = client.cmd(&["SET", "big", &"x".repeat(5000)]);
    assert!(
        matches!(&reply, Reply::Error(e) if e.starts_with("ERR Protocol error")),
        "{reply:?}"
    );
    assert!(
        client.is_closed(),
        "the oversized request's connection stays open"
    );
    assert_eq!(
        other.cmd(&["GET", "small"]).as_bytes().map(<[u8]>::len),
        Some(3000)
    );
    assert_eq!(other.cmd(&["EXISTS", "big"]), Reply::Int(0));
}

#[test]
fn pools_listen_on_tcp_and_unix_sockets_side_by_side() {
    let cluster = small_cluster();
    let node = cluster.masters()[0].port;
    let dir = TempDir::new("unix");
    let socket = dir.path().join("slotline.sock");
    let port = free_port();
    let config = format!(
        "{}  second:\n    listen: {}\n    mode: cluster\n    servers: [127.0.0.1:{node}]\n",
        yaml(port, node, ""),
        socket.display()
    );
    let _proxy = Slotline::start(&config);
    wait_for(Duration::from_secs(10), "the unix socket", || {
        socket.exists()
    });
    assert_eq!(
        Client::connect(port).cmd(&["SET", "via", "tcp"]),
        Reply::ok()
    );
    let out = Command::new("redis-cli")
        .arg("-s")
        .arg(&socket)
        .args(["GET", "via"])
        .output()
        .expect("redis-cli");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "tcp");
}

/// The table slotline routes by (generated from Redis 7.0) agrees with the server it fronts: same
/// arity and key positions for every command both know.
#[test]
fn command_table_agrees_with_the_live_server() {
    let cluster = small_cluster();
    let node = cluster.masters()[0].port;
    let (_proxy, port) = Slotline::cluster(&cluster);
    let server = Client::connect(node).cmd(&["COMMAND"]);
    let ours = Client::connect(port).cmd(&["COMMAND"]);
    let by_name = |reply: &Reply| -> std::collections::BTreeMap<String, (i64, i64, i64, i64)> {
        reply
            .as_array()
            .expect("COMMAND array")
            .iter()
            .map(|info| {
                let info = info.as_array().expect("command info");
                let int = |i: usize| info[i].as_int().expect("integer field");
                (
                    info[0].as_str().expect("name").to_string(),
                    (int(1), int(3), int(4), int(5)),
                )
            })
            .collect()
    };
    let (server, ours) = (by_name(&server), by_name(&ours));
    assert!(
        ours.len() > 200,
        "slotline knows only {} commands",
        ours.len()
    );
    let mut compared = 0;
    for (name, want) in &server {
        if let Some(got) = ours.get(name) {
            assert_eq!(got.0, want.0, "arity of {name}");
            assert_eq!(
                (got.1, got.2, got.3),
                (want.1, want.2, want.3),
                "first/last/step of {name}"
            );
            compared += 1;
        }
    }
    assert!(
        compared * 10 >= server.len() * 9,
        "only {compared} of {} commands known",
        server.len()
    );
    // COMMAND GETKEYS through the proxy finds keys as the server does, for a key-spec search.
    let cmd = [
        "COMMAND", "GETKEYS", "XREAD", "COUNT", "2", "STREAMS", "s1", "s2", "0", "0",
    ];
    assert_eq!(
        Client::connect(port).cmd(&cmd),
        Client::connect(node).cmd(&cmd)
    );
    // What the server answers about its commands, the proxy answers alike.
    for cmd in [
        &["COMMAND", "GETKEYS", "EVAL", "return 1", "0"][..],
        &["COMMAND", "GETKEYS", "PING"],
        &["COMMAND", "GETKEYS", "GET"],
        &[
            "COMMAND",
            "GETKEYSANDFLAGS",
            "LMOVE",
            "k1",
            "k2",
            "left",
            "right",
        ],
        &["COMMAND", "LIST", "FILTERBY", "ACLCAT", "scripting"],
        &["COMMAND", "LIST", "bad_arg"],
    ] {
        // In the server's own order, which differs from server to server.
        let sorted = |reply: Reply| match reply {
            Reply::Array(Some(mut items)) => {
                items.sort_by_key(|i| format!("{i:?}"));
                Reply::Array(Some(items))
            }
            other => other,
        };
        assert_eq!(
            sorted(Client::connect(port).cmd(cmd)),
            sorted(Client::connect(node).cmd(cmd)),
            "{cmd:?}"
        );
    }
}

/// With several connections per node, each client's requests to a node still run in the order sent.
#[test]
fn several_connections_per_node_keep_each_clients_order() {
    let cluster = small_cluster();
    let node = cluster.masters()[0].port;
    let port = free_port();
    let _proxy = Slotline::start(&yaml(port, node, "    server_connections: 4\n"));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                let mut client = Client::connect(port);
                let key = format!("order:{t}");
                let mut cmds = Vec::new();
                let mut want = Vec::new();
                for i in 0..300 {
                    cmds.push(vec!["SET".to_string(), key.clone(), i.to_string()]);
                    want.push(Reply::ok());
                    cmds.push(vec!["INCR".to_string(), key.clone()]);
                    want.push(Reply::Int(i + 1));
                    cmds.push(vec!["GET".to_string(), key.clone()]);
                    want.push(Reply::bulk((i + 1).to_string()));
                }
                assert_eq!(client.pipeline(&cmds), want, "client {t}");
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
}

/// A pipeline much longer than `max_pending`, sent in one go and then nothing more: slotline must keep
/// taking requests from its buffer as replies make room, not wait for input that will never come.
#[test]
fn a_pipeline_longer_than_max_pending_is_answered_in_full() {
    let cluster = small_cluster();
    let node = cluster.masters()[0].port;
    let port = free_port();
    let _proxy = Slotline::start(&yaml(port, node, "    max_pending: 8\n"));
    let mut cmds = Vec::new();
    let mut want = Vec::new();
    for i in 0..1500 {
        let key = format!("deep:{i}");
        cmds.push(vec!["SET".to_string(), key.clone(), i.to_string()]);
        want.push(Reply::ok());
        // Answered locally: a run of these between backend requests fills the pipeline too.
        cmds.push(vec!["PING".to_string()]);
        want.push(Reply::Status("PONG".into()));
        cmds.push(vec!["GET".to_string(), key]);
        want.push(Reply::bulk(i.to_string()));
    }
    for round in 0..3 {
        assert_eq!(Client::connect(port).pipeline(&cmds), want, "round {round}");
    }
}

/// `deny_commands` refuses a command however it comes: alone, queued in MULTI (which then aborts,
/// as Redis aborts a transaction with a refused command), or called by name in a script's text,
/// and even where another setting would allow it (`allow_flush`).
#[test]
fn denied_commands_are_refused_alone_in_transactions_and_in_scripts() {
    let cluster = small_cluster();
    let port = free_port();
    let extra = "    allow_flush: true\n    deny_commands: [KEYS, FLUSHALL, \"config|set\"]\n";
    let _proxy = Slotline::start(&yaml(port, cluster.masters()[0].port, extra));
    let mut client = Client::connect(port);
    let denied = |reply: Reply, what: &str| match reply {
        Reply::Error(e) if e.contains(&format!("'{what}' command is denied")) => {}
        other => panic!("{what}: {other:?}"),
    };
    denied(client.cmd(&["KEYS", "*"]), "keys");
    denied(client.cmd(&["FLUSHALL"]), "flushall");
    denied(
        client.cmd(&["CONFIG", "SET", "maxmemory", "1"]),
        "config set",
    );
    assert!(client.cmd(&["SET", "{d}k", "v"]).is_ok(), "others run");

    assert!(client.cmd(&["MULTI"]).is_ok());
    assert_eq!(
        client.cmd(&["SET", "{d}k", "w"]),
        Reply::Status("QUEUED".into())
    );
    denied(client.cmd(&["KEYS", "*"]), "keys");
    match client.cmd(&["EXEC"]) {
        Reply::Error(e) if e.starts_with("EXECABORT") => {}
        other => panic!("EXEC after a denied command: {other:?}"),
    }
    assert_eq!(
        client.cmd(&["GET", "{d}k"]),
        Reply::bulk("v"),
        "nothing ran"
    );

    denied(
        client.cmd(&["EVAL", "return redis.call('keys', '*')", "0"]),
        "keys",
    );
    assert_eq!(
        client.cmd(&["EVAL", "return redis.call('get', KEYS[1])", "1", "{d}k"]),
        Reply::bulk("v"),
        "a script that calls no denied command runs"
    );
}

/// `client_idle_timeout` closes a client that sends nothing for longer than it, as Redis's
/// `timeout` does: not one that keeps sending, a subscriber, or one blocked in a command.
#[test]
fn idle_clients_are_closed_but_not_subscribers_or_blocked_ones() {
    let cluster = small_cluster();
    let port = free_port();
    let _proxy = Slotline::start(&yaml(
        port,
        cluster.masters()[0].port,
        "    client_idle_timeout: 1000\n",
    ));
    let mut idle = Client::connect(port);
    assert_eq!(idle.cmd(&["PING"]), Reply::Status("PONG".into()));
    let mut busy = Client::connect(port);
    let mut subscriber = Client::connect(port);
    assert!(subscriber.cmd(&["SUBSCRIBE", "news"]).as_array().is_some());
    let mut blocked = Client::connect(port);
    blocked.send(&["BLPOP", "{idle}list", "0"]);

    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(3500) {
        assert_eq!(busy.cmd(&["PING"]), Reply::Status("PONG".into()));
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        idle.wait_closed(Duration::from_secs(3)),
        "the idle client is closed"
    );

    let mut other = Client::connect(port);
    assert_eq!(other.cmd(&["PUBLISH", "news", "hi"]).as_int(), Some(1));
    let message = subscriber.read_reply();
    assert_eq!(message.as_array().map(|m| m.len()), Some(3), "{message:?}");
    assert_eq!(other.cmd(&["RPUSH", "{idle}list", "x"]).as_int(), Some(1));
    assert_eq!(
        blocked.read_reply(),
        Reply::Array(Some(vec![Reply::bulk("{idle}list"), Reply::bulk("x")]))
    );
}
