//! twemproxy's pool options through the real binary: redis_auth, redis_db, and auto_eject_hosts.

mod support;

use std::time::Duration;

use support::{free_port, wait_for, Client, RedisServers, Reply, Slotline};

fn nutcracker_yml(port: u16, servers: &RedisServers, extra: &str) -> String {
    let mut yaml = format!(
        "shards:\n  listen: 127.0.0.1:{port}\n  redis: true\n  hash: fnv1a_64\n  \
         distribution: ketama\n  timeout: 500\n{extra}  servers:\n"
    );
    for i in 0..servers.len() {
        yaml.push_str(&format!("    - 127.0.0.1:{}:1 shard{i}\n", servers.port(i)));
    }
    yaml
}

/// A direct connection to a backend, logged in and switched to `db`.
fn backend(servers: &RedisServers, i: usize, db: &str) -> Client {
    let mut client = servers.client(i);
    assert_eq!(client.cmd(&["AUTH", "s3cret"]), Reply::ok());
    assert_eq!(client.cmd(&["SELECT", db]), Reply::ok());
    client
}

#[test]
fn redis_auth_and_redis_db_apply_to_clients_and_backends() {
    let servers = RedisServers::start_with(2, &["--requirepass", "s3cret"]);
    let proxy = Slotline::start(&nutcracker_yml(
        free_port(),
        &servers,
        "  redis_auth: s3cret\n  redis_db: 3\n",
    ));

    let mut client = proxy.client();
    let noauth = Reply::Error("NOAUTH Authentication required.".into());
    assert_eq!(client.cmd(&["GET", "k"]), noauth);
    assert_eq!(client.cmd(&["PING"]), noauth);
    assert_eq!(client.cmd(&["MGET", "a", "b", "c"]), noauth);
    assert!(
        client
            .cmd(&["HELLO", "2"])
            .error()
            .is_some_and(|e| e.starts_with("NOAUTH")),
        "HELLO without AUTH before logging in"
    );
    assert!(client
        .cmd(&["AUTH", "wrong"])
        .error()
        .is_some_and(|e| e.starts_with("WRONGPASS")));
    assert!(client
        .cmd(&["AUTH", "someone", "s3cret"])
        .error()
        .is_some_and(|e| e.starts_with("WRONGPASS")));
    assert_eq!(
        client.cmd(&["GET", "k"]),
        noauth,
        "still locked after failures"
    );
    assert_eq!(client.cmd(&["AUTH", "s3cret"]), Reply::ok());
    assert_eq!(client.cmd(&["PING"]), Reply::Status("PONG".into()));
    let keys: Vec<String> = (0..50).map(|i| format!("key{i}")).collect();
    for k in &keys {
        assert_eq!(client.cmd(&["SET", k, k]), Reply::ok());
    }
    // The client sees database 0; the backends hold the keys in database 3.
    assert_eq!(client.cmd(&["SELECT", "0"]), Reply::ok());
    for k in &keys {
        let found: Vec<usize> = (0..servers.len())
            .filter(|&i| backend(&servers, i, "3").cmd(&["GET", k]) == Reply::bulk(k))
            .collect();
        assert_eq!(found.len(), 1, "{k} in database 3 of servers {found:?}");
    }
    for i in 0..servers.len() {
        assert_eq!(backend(&servers, i, "0").cmd(&["DBSIZE"]), Reply::Int(0));
    }
    // RESET logs out, as with Redis.
    assert_eq!(client.cmd(&["RESET"]), Reply::Status("RESET".into()));
    assert_eq!(client.cmd(&["GET", "key1"]), noauth);

    // HELLO can log in on its own, and AUTH with the default user name works too.
    let mut hello = proxy.client();
    let reply = hello.cmd(&["HELLO", "2", "AUTH", "default", "s3cret"]);
    assert!(reply.as_array().is_some(), "HELLO 2 AUTH: {reply:?}");
    assert_eq!(hello.cmd(&["GET", "key1"]), Reply::bulk("key1"));
    let mut named = proxy.client();
    assert_eq!(named.cmd(&["AUTH", "default", "s3cret"]), Reply::ok());
    assert_eq!(named.cmd(&["EXISTS", "key1", "key2"]), Reply::Int(2));
}

#[test]
fn a_wrong_backend_password_is_reported_not_hidden() {
    let servers = RedisServers::start_with(1, &["--requirepass", "s3cret"]);
    let proxy = Slotline::start(&nutcracker_yml(
        free_port(),
        &servers,
        "  redis_auth: not-the-password\n",
    ));
    let mut client = proxy.client();
    assert_eq!(client.cmd(&["AUTH", "not-the-password"]), Reply::ok());
    let reply = client.cmd(&["GET", "k"]);
    assert!(
        reply.error().is_some_and(|e| e.starts_with("ERR slotline")),
        "{reply:?}"
    );
    wait_for(Duration::from_secs(5), "the log to say why", || {
        proxy.log().contains("AUTH/SELECT refused: WRONGPASS")
    });
}
