//! twemproxy's pool options through the real binary: redis_auth, redis_db, and auto_eject_hosts.

mod support;

use std::time::Duration;

use support::{free_port, twemproxy_stats, wait_for, Client, RedisServers, Reply, Slotline};

fn nutcracker_yml(port: u16, servers: &RedisServers, extra: &str) -> String {
    let mut yaml = format!(
        "shards:\n  listen: 127.0.0.1:{port}\n  redis: true\n  hash: murmur\n  \
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
    // Nothing leaves the pool's database: not a key moved or copied to another one, not a key sent
    // to another server.
    let elsewhere = |reply: Reply| {
        reply
            .error()
            .is_some_and(|e| e.contains("not supported by slotline"))
    };
    assert!(elsewhere(client.cmd(&["MOVE", "key1", "0"])));
    assert!(elsewhere(
        client.cmd(&["COPY", "key1", "key1copy", "DB", "0"])
    ));
    assert!(elsewhere(
        client.cmd(&["COPY", "key1", "key1copy", "REPLACE", "db", "5"])
    ));
    let port = servers.port(0).to_string();
    assert!(elsewhere(client.cmd(&[
        "MIGRATE",
        "127.0.0.1",
        &port,
        "key1",
        "0",
        "1000"
    ])));
    assert_eq!(client.cmd(&["COPY", "key1", "key1copy"]), Reply::Int(1));
    assert_eq!(client.cmd(&["GET", "key1copy"]), Reply::bulk("key1"));
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
fn an_acl_user_logs_in_to_the_backends_and_clients_log_in_as_it() {
    // Redis 6 ACLs: the default user is off; the application's user has a password.
    let acl = [
        "--user", "app", "on", ">s3cret", "~*", "&*", "+@all", "--user", "default", "off",
    ];
    let servers = RedisServers::start_with(2, &acl);
    let proxy = Slotline::start(&format!(
        "pools:\n  shards:\n    listen: 127.0.0.1:{}\n    mode: ketama\n    redis_auth: s3cret\n    \
         redis_username: app\n    servers:\n      - 127.0.0.1:{}:1\n      - 127.0.0.1:{}:1\n",
        free_port(),
        servers.port(0),
        servers.port(1)
    ));
    let wrongpass = |reply: Reply| reply.error().is_some_and(|e| e.starts_with("WRONGPASS"));
    let mut client = proxy.client();
    assert!(wrongpass(client.cmd(&["AUTH", "default", "s3cret"])));
    assert!(wrongpass(client.cmd(&["AUTH", "app", "wrong"])));
    assert_eq!(client.cmd(&["AUTH", "app", "s3cret"]), Reply::ok());
    let keys: Vec<String> = (0..20).map(|i| format!("key{i}")).collect();
    for k in &keys {
        assert_eq!(client.cmd(&["SET", k, k]), Reply::ok());
    }
    // The keys reached the servers, written by the user slotline logs in as.
    let stored: i64 = (0..servers.len())
        .map(|i| {
            let mut backend = servers.client(i);
            assert_eq!(backend.cmd(&["AUTH", "app", "s3cret"]), Reply::ok());
            backend.cmd(&["DBSIZE"]).as_int().expect("DBSIZE")
        })
        .sum();
    assert_eq!(stored, keys.len() as i64);
    // The password alone logs in as the pool's user, as HELLO's AUTH with the user's name does.
    let mut short = proxy.client();
    assert_eq!(short.cmd(&["AUTH", "s3cret"]), Reply::ok());
    assert_eq!(short.cmd(&["GET", "key3"]), Reply::bulk("key3"));
    let mut hello = proxy.client();
    let reply = hello.cmd(&["HELLO", "2", "AUTH", "app", "s3cret"]);
    assert!(reply.as_array().is_some(), "HELLO 2 AUTH: {reply:?}");
    assert_eq!(
        hello.cmd(&["EXISTS", "key1", "key2", "nokey"]),
        Reply::Int(2)
    );
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

/// Which server holds each key (exactly one must).
#[track_caller]
fn holders(servers: &RedisServers, live: &[usize], keys: &[String]) -> Vec<usize> {
    let caller = std::panic::Location::caller();
    keys.iter()
        .map(|k| {
            let on: Vec<usize> = live
                .iter()
                .copied()
                .filter(|&i| servers.client(i).cmd(&["EXISTS", k]) == Reply::Int(1))
                .collect();
            assert_eq!(
                on.len(),
                1,
                "{k} is on servers {on:?} (holders at {caller})"
            );
            on[0]
        })
        .collect()
}

fn flush(servers: &RedisServers, live: &[usize]) {
    for &i in live {
        assert_eq!(servers.client(i).cmd(&["FLUSHALL"]), Reply::ok());
    }
}

fn write_all(client: &mut Client, keys: &[String]) {
    for k in keys {
        assert_eq!(client.cmd(&["SET", k, "v"]), Reply::ok(), "SET {k}");
    }
}

#[test]
fn auto_eject_hosts_moves_keys_as_nutcracker_does_and_takes_the_server_back() {
    let mut servers = RedisServers::start(4);
    let options =
        "  auto_eject_hosts: true\n  server_failure_limit: 2\n  server_retry_timeout: 1500\n";
    let stats_port = free_port();
    let proxy = Slotline::start_with_args(
        &nutcracker_yml(free_port(), &servers, options),
        &["-s", &stats_port.to_string(), "-a", "127.0.0.1"],
    );
    let nutcracker_port = free_port();
    let nutcracker = support::Nutcracker::start(
        &nutcracker_yml(nutcracker_port, &servers, options),
        nutcracker_port,
    );
    let keys: Vec<String> = (0..200).map(|i| format!("eject:{i}")).collect();
    let all = [0, 1, 2, 3];
    let mut client = proxy.client();
    write_all(&mut client, &keys);
    let before = holders(&servers, &all, &keys);
    let down = before[0];
    let live: Vec<usize> = all.iter().copied().filter(|&i| i != down).collect();
    flush(&servers, &all);

    // The shard goes down: after server_failure_limit failures (lost connection, failed reconnects,
    // failed requests) both proxies take it out of the ring.
    servers.stop(down);
    wait_for(
        Duration::from_secs(10),
        "slotline to eject the down server",
        || client.cmd(&["SET", &keys[0], "v"]).is_ok(),
    );
    let mut through_nutcracker = nutcracker.client();
    wait_for(
        Duration::from_secs(10),
        "nutcracker to eject the down server",
        || through_nutcracker.cmd(&["SET", &keys[0], "v"]).is_ok(),
    );
    flush(&servers, &live);

    // The keys of the down server move exactly where nutcracker moves them; no other key moves.
    write_all(&mut client, &keys);
    let ours = holders(&servers, &live, &keys);
    flush(&servers, &live);
    write_all(&mut through_nutcracker, &keys);
    assert_eq!(
        holders(&servers, &live, &keys),
        ours,
        "placement after ejection differs from nutcracker"
    );
    for (i, (&was, &is)) in before.iter().zip(&ours).enumerate() {
        if was != down {
            assert_eq!(was, is, "{} moved although its server is up", keys[i]);
        }
    }
    flush(&servers, &live);

    let report = twemproxy_stats(stats_port);
    let pool = &report["shards"];
    assert!(pool["server_ejects"].as_u64() >= Some(1), "{pool}");
    let down_name = format!("shard{down}");
    assert!(
        pool[&down_name]["server_ejected_at"].as_u64() > Some(0),
        "{pool}"
    );
    assert!(pool[&down_name]["server_err"].as_u64() > Some(0), "{pool}");

    // Back after server_retry_timeout: its keys return to it.
    servers.restart(down);
    wait_for(
        Duration::from_secs(10),
        "the server to be back in the ring",
        || {
            client.cmd(&["SET", &keys[0], "v"]).is_ok()
                && servers.client(down).cmd(&["EXISTS", &keys[0]]) == Reply::Int(1)
        },
    );
    flush(&servers, &all);
    write_all(&mut client, &keys);
    assert_eq!(
        holders(&servers, &all, &keys),
        before,
        "placement after the server came back"
    );
}

#[test]
fn without_auto_eject_hosts_a_down_server_fails_its_keys_and_nothing_moves() {
    let mut servers = RedisServers::start(3);
    let proxy = Slotline::start(&nutcracker_yml(free_port(), &servers, ""));
    let keys: Vec<String> = (0..60).map(|i| format!("stay:{i}")).collect();
    let all = [0, 1, 2];
    let mut client = proxy.client();
    write_all(&mut client, &keys);
    let before = holders(&servers, &all, &keys);
    let down = before[0];
    servers.stop(down);
    for _ in 0..10 {
        let reply = client.cmd(&["SET", &keys[0], "v"]);
        assert!(
            reply.error().is_some_and(|e| e.starts_with("ERR slotline")),
            "{reply:?}"
        );
    }
    let live: Vec<usize> = all.iter().copied().filter(|&i| i != down).collect();
    flush(&servers, &live);
    let others: Vec<String> = keys
        .iter()
        .zip(&before)
        .filter(|(_, &s)| s != down)
        .map(|(k, _)| k.clone())
        .collect();
    write_all(&mut client, &others);
    let expected: Vec<usize> = before.iter().copied().filter(|&s| s != down).collect();
    assert_eq!(holders(&servers, &live, &others), expected);
}

#[test]
fn stats_port_speaks_twemproxys_format_with_real_counts() {
    let servers = RedisServers::start(2);
    let stats_port = free_port();
    let proxy = Slotline::start_with_args(
        &nutcracker_yml(free_port(), &servers, ""),
        &["-s", &stats_port.to_string(), "-a", "127.0.0.1"],
    );
    let nutcracker_port = free_port();
    let nutcracker = support::Nutcracker::start(
        &nutcracker_yml(nutcracker_port, &servers, ""),
        nutcracker_port,
    );
    let _ = nutcracker.client().cmd(&["GET", "x"]);

    let mut clients: Vec<Client> = (0..3).map(|_| proxy.client()).collect();
    for i in 0..100 {
        assert_eq!(
            clients[i % 3].cmd(&["SET", &format!("s{i}"), "v"]),
            Reply::ok()
        );
    }
    let keys: Vec<String> = (0..20).map(|i| format!("s{i}")).collect();
    let mut mget = vec!["MGET".to_string()];
    mget.extend(keys.iter().cloned());
    assert_eq!(clients[0].cmd(&mget).as_array().map(|a| a.len()), Some(20));
    let mut gone = proxy.client();
    assert_eq!(gone.cmd(&["PING"]), Reply::Status("PONG".into()));
    drop(gone);
    wait_for(
        Duration::from_secs(5),
        "the closed client to be counted",
        || twemproxy_stats(stats_port)["shards"]["client_connections"].as_u64() == Some(3),
    );

    let ours = twemproxy_stats(stats_port);
    // The same fields, at every level, as the real nutcracker writes.
    let theirs = twemproxy_stats(nutcracker.stats_port());
    let fields = |v: &serde_json::Value| -> Vec<String> {
        let mut names: Vec<String> = v.as_object().expect("an object").keys().cloned().collect();
        names.sort();
        names
    };
    assert_eq!(fields(&ours), fields(&theirs));
    assert_eq!(fields(&ours["shards"]), fields(&theirs["shards"]));
    assert_eq!(
        fields(&ours["shards"]["shard0"]),
        fields(&theirs["shards"]["shard0"])
    );

    let pool = &ours["shards"];
    let servers_total = |field: &str| -> u64 {
        (0..2)
            .map(|i| pool[format!("shard{i}")][field].as_u64().expect(field))
            .sum()
    };
    // 100 SETs plus the MGET's parts (one per server holding some of its keys).
    let fragments = pool["fragments"].as_u64().expect("fragments");
    assert_eq!(fragments, 2, "the 20 keys span both servers: {pool}");
    assert_eq!(servers_total("requests"), 100 + fragments);
    assert_eq!(servers_total("responses"), 100 + fragments);
    assert!(servers_total("request_bytes") > 100 * 20);
    // 100 × "+OK\r\n", 20 × "$1\r\nv\r\n", and the two parts' array headers ("*9\r\n", "*11\r\n"...).
    let headers = servers_total("response_bytes") - (100 * 5 + 20 * 7);
    assert!((8..=10).contains(&headers), "{pool}");
    assert_eq!(servers_total("server_connections"), 2);
    assert_eq!(pool["client_connections"].as_u64(), Some(3), "{pool}");
    assert!(pool["client_eof"].as_u64() >= Some(1), "{pool}");
    assert_eq!(ours["curr_connections"].as_u64(), Some(3));
    assert!(ours["total_connections"].as_u64() >= Some(4));
    assert_eq!(servers_total("out_queue"), 0);
    assert_eq!(servers_total("in_queue"), 0);
}

#[test]
fn a_server_that_stops_answering_times_out_and_is_ejected() {
    let servers = RedisServers::start(3);
    let stats_port = free_port();
    let options =
        "  auto_eject_hosts: true\n  server_failure_limit: 1\n  server_retry_timeout: 60000\n";
    let yaml =
        nutcracker_yml(free_port(), &servers, options).replace("timeout: 500", "timeout: 300");
    let proxy = Slotline::start_with_args(&yaml, &["-s", &stats_port.to_string()]);
    let mut client = proxy.client();
    let keys: Vec<String> = (0..60).map(|i| format!("slow:{i}")).collect();
    write_all(&mut client, &keys);
    let before = holders(&servers, &[0, 1, 2], &keys);
    let slow = before[0];

    // The server accepts the request and then says nothing for longer than the timeout.
    assert_eq!(
        servers
            .client(slow)
            .cmd(&["CLIENT", "PAUSE", "3000", "ALL"]),
        Reply::ok()
    );
    let reply = client.cmd(&["GET", &keys[0]]);
    assert!(
        reply
            .error()
            .is_some_and(|e| e.contains("no reply from the backend within 300 ms")),
        "{reply:?}"
    );
    wait_for(
        Duration::from_secs(2),
        "the silent server to be ejected",
        || {
            let pool = &twemproxy_stats(stats_port)["shards"];
            pool["server_ejects"].as_u64() == Some(1)
                && pool[format!("shard{slow}")]["server_timedout"].as_u64() >= Some(1)
        },
    );
    // Its keys are served by the others while it is out of the ring (the paused server still holds
    // the old value, so a write lands elsewhere and reads back from there).
    assert_eq!(client.cmd(&["SET", &keys[0], "moved"]), Reply::ok());
    assert_eq!(client.cmd(&["GET", &keys[0]]), Reply::bulk("moved"));
}
