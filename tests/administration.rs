//! Commands about the nodes themselves through slotline. Administrative ones are refused by default,
//! and with `allow_admin` sent where they belong: changes of a node's own state (CONFIG SET, ACL
//! SETUSER ...) to every master and replica, reads (CONFIG GET, ACL GETUSER ...) to one master; what
//! changes the cluster itself is refused even then. SCRIPT KILL reaches the script wherever it runs.

mod support;

use std::time::Duration;

use support::{free_port, wait_ok, Client, ClusterOpts, RedisCluster, Reply, Slotline};

fn config_get(port: u16, name: &str) -> Reply {
    Client::connect(port).cmd(&["CONFIG", "GET", name])
}

fn pair(name: &str, value: &str) -> Reply {
    Reply::Array(Some(vec![Reply::bulk(name), Reply::bulk(value)]))
}

#[test]
fn admin_commands_reach_every_node_only_when_the_pool_allows_them() {
    let cluster = RedisCluster::start(Default::default());
    let seeds: Vec<u16> = cluster.masters().iter().map(|m| m.port).collect();
    let nodes: Vec<u16> = cluster.nodes().iter().map(|n| n.port).collect();
    assert_eq!(nodes.len(), 6, "3 masters and 3 replicas");

    // By default: refused, with the option that would allow it named; nothing reaches a node.
    let refusing = Slotline::start(&Slotline::cluster_yaml(free_port(), &seeds));
    let mut client = refusing.client();
    let reply = client.cmd(&["CONFIG", "SET", "maxmemory-samples", "7"]);
    assert!(
        reply.error().is_some_and(|e| e.contains("allow_admin")),
        "{reply:?}"
    );
    let reply = client.cmd(&["CONFIG", "GET", "requirepass"]);
    assert!(
        reply.error().is_some_and(|e| e.contains("allow_admin")),
        "{reply:?}"
    );
    for &port in &nodes {
        assert_eq!(
            config_get(port, "maxmemory-samples"),
            pair("maxmemory-samples", "5")
        );
    }

    let yaml = format!(
        "{}    allow_admin: true\n",
        Slotline::cluster_yaml(free_port(), &seeds)
    );
    let allowing = Slotline::start(&yaml);
    let mut client = allowing.client();
    // The replicas are learnt from CLUSTER SLOTS: wait for the topology, then set.
    wait_ok(
        std::time::Duration::from_secs(10),
        "CONFIG SET on every node",
        || match client.cmd(&["CONFIG", "SET", "maxmemory-samples", "7"]) {
            r if r == Reply::ok() => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    for &port in &nodes {
        assert_eq!(
            config_get(port, "maxmemory-samples"),
            pair("maxmemory-samples", "7"),
            "node {port}"
        );
    }
    assert_eq!(
        client.cmd(&["CONFIG", "GET", "maxmemory-samples"]),
        pair("maxmemory-samples", "7")
    );
    // A node's own error comes back as it is.
    let reply = client.cmd(&["CONFIG", "SET", "no-such-option", "1"]);
    assert!(
        reply.error().is_some_and(|e| e.contains("no-such-option")),
        "{reply:?}"
    );
    // Each node has a port of its own: the client's is slotline's. Setting it to what CONFIG GET
    // shows changes nothing (the rest of the command still reaches the nodes); another value is
    // refused, and no node is asked to move.
    let port = allowing.port().to_string();
    assert_eq!(client.cmd(&["CONFIG", "GET", "port"]), pair("port", &port));
    assert_eq!(
        client.cmd(&["CONFIG", "SET", "port", &port, "maxmemory-samples", "8"]),
        Reply::ok()
    );
    let reply = client.cmd(&["CONFIG", "SET", "port", &seeds[1].to_string()]);
    assert!(
        reply
            .error()
            .is_some_and(|e| e.contains("'port') - Unable to listen on this port")),
        "{reply:?}"
    );
    for &node in &nodes {
        assert_eq!(config_get(node, "port"), pair("port", &node.to_string()));
        assert_eq!(
            config_get(node, "maxmemory-samples"),
            pair("maxmemory-samples", "8"),
            "node {node}"
        );
    }
    // ACL users are each node's own: set on all, read from one.
    assert_eq!(
        client.cmd(&[
            "ACL",
            "SETUSER",
            "reporter",
            "on",
            ">pw",
            "~report:*",
            "+get"
        ]),
        Reply::ok()
    );
    for &port in &nodes {
        let users = Client::connect(port).cmd(&["ACL", "USERS"]);
        assert!(
            users
                .as_array()
                .is_some_and(|u| u.contains(&Reply::bulk("reporter"))),
            "node {port}: {users:?}"
        );
    }
    assert_eq!(client.cmd(&["ACL", "DELUSER", "reporter"]), Reply::Int(1));
    // In a transaction, as Redis runs it: a bad value fails that command alone, in EXEC's reply.
    let queued = Reply::Status("QUEUED".into());
    assert_eq!(client.cmd(&["MULTI"]), Reply::ok());
    assert_eq!(client.cmd(&["SET", "tx-config", "1"]), queued);
    assert_eq!(client.cmd(&["CONFIG", "SET", "maxmemory", "bla"]), queued);
    let exec = client.cmd(&["EXEC"]);
    let replies = exec.as_array().expect("EXEC's replies");
    assert_eq!(replies[0], Reply::ok(), "{exec:?}");
    assert!(
        replies[1]
            .error()
            .is_some_and(|e| e.contains("CONFIG SET failed")),
        "{exec:?}"
    );
    // A good one: every node has it once EXEC has left.
    assert_eq!(client.cmd(&["MULTI"]), Reply::ok());
    assert_eq!(
        client.cmd(&["CONFIG", "SET", "maxmemory-samples", "9"]),
        queued
    );
    assert_eq!(client.cmd(&["EXEC"]), Reply::Array(Some(vec![Reply::ok()])));
    for &port in &nodes {
        wait_ok(
            std::time::Duration::from_secs(5),
            "the node to take it",
            || match config_get(port, "maxmemory-samples") {
                r if r == pair("maxmemory-samples", "9") => Ok(()),
                other => Err(format!("node {port}: {other:?}")),
            },
        );
    }
    // Not under WATCH: the other nodes would change even when EXEC runs nothing.
    assert_eq!(client.cmd(&["WATCH", "tx-config"]), Reply::ok());
    assert_eq!(client.cmd(&["MULTI"]), Reply::ok());
    let refused = client.cmd(&["CONFIG", "SET", "maxmemory-samples", "5"]);
    assert!(
        refused.error().is_some_and(|e| e.contains("WATCH")),
        "{refused:?}"
    );
    assert_eq!(client.cmd(&["DISCARD"]), Reply::ok());
    // What changes the cluster itself stays refused.
    for cmd in [
        &["SHUTDOWN"][..],
        &["DEBUG", "SLEEP", "0"],
        &["REPLICAOF", "NO", "ONE"],
        &["CLUSTER", "FAILOVER"],
        &["CONFIG", "REWRITE"],
    ] {
        let reply = client.cmd(cmd);
        assert!(reply.error().is_some(), "{cmd:?}: {reply:?}");
    }
    assert_eq!(client.cmd(&["PING"]), Reply::Status("PONG".into()));
}

/// A script that never ends holds its node and the shared connection it came on: another client's
/// PING answers `-BUSY` as one Redis would, SCRIPT KILL from another client reaches it (on
/// connections of that client's own, since Redis reads nothing more from the script's connection),
/// its client gets Redis's error, and the node serves again.
#[test]
fn script_kill_reaches_a_busy_script_on_a_shared_connection() {
    let cluster = RedisCluster::start(ClusterOpts {
        replicas_per_master: 0,
        ..Default::default()
    });
    let seeds: Vec<u16> = cluster.masters().iter().map(|m| m.port).collect();
    for &port in &seeds {
        // Redis takes SCRIPT KILL once a script has run this long.
        let set = Client::connect(port).cmd(&["CONFIG", "SET", "lua-time-limit", "10"]);
        assert_eq!(set, Reply::ok());
    }
    let yaml = format!(
        "{}    allow_admin: true\n",
        Slotline::cluster_yaml(free_port(), &seeds).replace("timeout: 1000", "timeout: 3000")
    );
    let proxy = Slotline::start(&yaml);
    let mut other = proxy.client();
    assert_eq!(
        other.cmd(&["SCRIPT", "KILL"]).error().map(|e| e
            .split(' ')
            .next()
            .unwrap_or("")
            .to_string()),
        Some("NOTBUSY".to_string())
    );
    let library =
        "#!lua name=busy\nredis.register_function('spin', function() while true do end end)";
    let mut busy = proxy.client();
    // A script, and a function loaded in the same pipeline, each with a PING behind it: Redis
    // answers that PING after the script.
    for (mut pipeline, kill) in [
        (
            support::encode(&["EVAL", "while true do end", "0"]),
            "SCRIPT",
        ),
        (
            support::encode(&["FUNCTION", "LOAD", "REPLACE", library]),
            "FUNCTION",
        ),
    ] {
        if kill == "FUNCTION" {
            pipeline.extend(support::encode(&["FCALL", "spin", "0"]));
        }
        pipeline.extend(support::encode(&["PING"]));
        busy.send_raw(&pipeline);
        std::thread::sleep(Duration::from_millis(300));
        // Another client's PING tells the node is busy, as one Redis busy in a script would.
        for ping in [&["PING"][..], &["PING", "hello"]] {
            let reply = other.cmd(ping);
            assert!(
                reply.error().is_some_and(|e| e.starts_with("BUSY")),
                "{kill}: {ping:?} while a script runs: {reply:?}"
            );
        }
        if kill == "FUNCTION" {
            // FUNCTION STATS names the running function, from the master that runs it.
            let stats = other.cmd(&["FUNCTION", "STATS"]);
            let running = stats
                .as_array()
                .and_then(|s| s.get(1))
                .and_then(Reply::as_array);
            assert!(
                running.is_some_and(|r| r.contains(&Reply::bulk("spin"))),
                "{stats:?}"
            );
        }
        assert_eq!(other.cmd(&[kill, "KILL"]), Reply::ok());
        if kill == "FUNCTION" {
            // Redis sends what it answered before the script once the script ends.
            assert_eq!(busy.read_reply(), Reply::bulk("busy"));
        }
        let reply = busy.read_reply();
        assert!(
            reply.error().is_some_and(|e| e.contains("killed")),
            "{reply:?}"
        );
        assert_eq!(busy.read_reply(), Reply::Status("PONG".into()));
        assert_eq!(other.cmd(&["PING"]), Reply::Status("PONG".into()));
        assert_eq!(other.cmd(&["PING", "hello"]), Reply::bulk("hello"));
    }
    assert_eq!(busy.cmd(&["SET", "after", "1"]), Reply::ok());
    assert_eq!(other.cmd(&["GET", "after"]), Reply::bulk("1"));
}
