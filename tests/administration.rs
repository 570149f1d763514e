//! Administrative commands through slotline: refused by default, and with `allow_admin` sent where
//! they belong — changes of a node's own state (CONFIG SET, ACL SETUSER ...) to every master and
//! replica, reads (CONFIG GET, ACL GETUSER ...) to one master. What changes the cluster itself is
//! refused even then.

mod support;

use support::{free_port, wait_ok, Client, RedisCluster, Reply, Slotline};

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
