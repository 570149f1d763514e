//! CLIENT LIST, CLIENT INFO and CLIENT KILL through slotline: answered for slotline's own clients in
//! Redis's formats (the nodes only see slotline's shared connections), and a killed client is gone.

mod support;

use std::time::Duration;

use support::{free_port, Client, RedisServers, Reply, Slotline};

/// The value of `field` in a CLIENT LIST line.
fn field<'a>(line: &'a str, field: &str) -> &'a str {
    line.split(' ')
        .find_map(|kv| kv.trim_end().strip_prefix(&format!("{field}=")))
        .unwrap_or_else(|| panic!("no {field} in {line}"))
}

/// The first element of an array of arrays (SLOWLOG GET's newest entry), as a slice.
fn first_entry(reply: &Reply) -> Option<&[Reply]> {
    reply
        .as_array()
        .and_then(|e| e.first())
        .and_then(Reply::as_array)
}

fn text(reply: Reply) -> String {
    String::from_utf8_lossy(reply.as_bytes().unwrap_or_else(|| panic!("{reply:?}"))).into_owned()
}

fn list(client: &mut Client, args: &[&str]) -> Vec<String> {
    let mut cmd = vec!["CLIENT", "LIST"];
    cmd.extend_from_slice(args);
    text(client.cmd(&cmd)).lines().map(str::to_string).collect()
}

#[test]
fn client_list_info_and_kill_answer_for_slotlines_own_clients() {
    let servers = RedisServers::start(1);
    let proxy = Slotline::start(&servers.ketama_yaml(free_port(), ""));
    let port = proxy.port().to_string();

    let mut alpha = proxy.client();
    assert_eq!(alpha.cmd(&["CLIENT", "SETNAME", "alpha"]), Reply::ok());
    assert_eq!(alpha.cmd(&["SET", "k", "v"]), Reply::ok());
    let alpha_id = alpha.cmd(&["CLIENT", "ID"]).as_int().expect("CLIENT ID");
    let info = text(alpha.cmd(&["CLIENT", "INFO"]));
    assert_eq!(field(&info, "id"), alpha_id.to_string());
    assert_eq!(field(&info, "name"), "alpha");
    assert_eq!(field(&info, "cmd"), "client|info");
    assert_eq!(field(&info, "laddr"), format!("127.0.0.1:{port}"));
    assert_eq!(field(&info, "flags"), "N");
    // Its query buffer holds the running command, as Redis shows it: *2 $6 client $4 info.
    assert_eq!(field(&info, "qbuf"), "26");
    assert!(info.ends_with('\n'), "{info:?}");
    let alpha_addr = field(&info, "addr").to_string();
    assert_eq!(
        alpha_addr,
        alpha.stream().local_addr().expect("addr").to_string()
    );

    let mut observer = proxy.client();
    let mut subscriber = proxy.client();
    assert!(subscriber.cmd(&["SUBSCRIBE", "news"]).as_array().is_some());
    let mut queuing = proxy.client();
    assert_eq!(queuing.cmd(&["MULTI"]), Reply::ok());
    assert_eq!(queuing.cmd(&["INCR", "n"]), Reply::Status("QUEUED".into()));

    let lines = list(&mut observer, &[]);
    assert_eq!(lines.len(), 4, "{lines:#?}");
    let ids: Vec<u64> = lines
        .iter()
        .map(|l| field(l, "id").parse().expect("id"))
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "oldest first: {ids:?}");
    let alpha_line = lines
        .iter()
        .find(|l| field(l, "name") == "alpha")
        .expect("alpha listed");
    assert_eq!(field(alpha_line, "cmd"), "client|info");
    assert_eq!(field(alpha_line, "addr"), alpha_addr);
    assert_eq!(
        field(alpha_line, "qbuf"),
        "0",
        "an idle client's buffer is empty"
    );
    let observer_line = lines
        .iter()
        .find(|l| field(l, "cmd") == "client|list")
        .expect("the asking client listed");
    assert_eq!(field(observer_line, "qbuf"), "26");
    let sub_line = &list(&mut observer, &["TYPE", "pubsub"]);
    assert_eq!(sub_line.len(), 1, "{sub_line:#?}");
    assert_eq!(
        (field(&sub_line[0], "flags"), field(&sub_line[0], "sub")),
        ("P", "1")
    );
    let normal = list(&mut observer, &["TYPE", "normal"]);
    let multi = normal
        .iter()
        .find(|l| field(l, "multi") != "-1")
        .expect("the MULTI client");
    assert_eq!((field(multi, "flags"), field(multi, "multi")), ("x", "1"));
    assert_eq!(list(&mut observer, &["ID", &alpha_id.to_string()]).len(), 1);
    assert_eq!(
        observer.cmd(&["CLIENT", "LIST", "TYPE", "nope"]),
        Reply::Error("ERR Unknown client type 'nope'".into())
    );

    // Killed: its connection closes; the others stay.
    assert_eq!(
        observer.cmd(&["CLIENT", "KILL", "ID", &alpha_id.to_string()]),
        Reply::Int(1)
    );
    assert!(
        alpha.wait_closed(Duration::from_secs(5)),
        "alpha still connected"
    );
    assert_eq!(
        observer.cmd(&["CLIENT", "KILL", "127.0.0.1:1"]),
        Reply::Error("ERR No such client".into())
    );
    assert_eq!(
        observer.cmd(&["CLIENT", "KILL", "ID", "0"]),
        Reply::Error("ERR client-id should be greater than 0".into())
    );
    assert_eq!(
        observer.cmd(&["CLIENT", "KILL", "FOO", "bar"]),
        Reply::Error("ERR syntax error".into())
    );
    assert_eq!(
        observer.cmd(&["CLIENT", "KILL", "USER", "nobody"]),
        Reply::Error("ERR No such user 'nobody'".into())
    );
    // SKIPME yes by default: the asking client survives a kill that names everyone.
    assert_eq!(
        observer.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]),
        Reply::Int(1)
    );
    assert!(subscriber.wait_closed(Duration::from_secs(5)));
    assert_eq!(
        observer.cmd(&["CLIENT", "KILL", "TYPE", "normal"]),
        Reply::Int(1)
    );
    assert!(queuing.wait_closed(Duration::from_secs(5)));
    assert_eq!(observer.cmd(&["GET", "k"]), Reply::bulk("v"));
    assert_eq!(list(&mut observer, &[]).len(), 1);
    // Tracking is not offered through slotline, and says so as Redis does for a client without it.
    assert_eq!(observer.cmd(&["CLIENT", "GETREDIR"]), Reply::Int(-1));
    assert_eq!(
        observer.cmd(&["CLIENT", "TRACKINGINFO"]),
        Reply::Array(Some(vec![
            Reply::bulk("flags"),
            Reply::Array(Some(vec![Reply::bulk("off")])),
            Reply::bulk("redirect"),
            Reply::Int(-1),
            Reply::bulk("prefixes"),
            Reply::Array(Some(vec![])),
        ]))
    );
}

/// MONITOR through slotline streams every client's commands, in Redis's format, to redis-cli; a
/// monitor that does not read is dropped, and the clients it watched never wait for it.
#[test]
fn monitor_streams_every_clients_commands_and_drops_a_monitor_that_does_not_read() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let servers = RedisServers::start(1);
    let proxy = Slotline::start(&servers.ketama_yaml(free_port(), ""));
    let mut cli = Command::new("redis-cli")
        .args(["-p", &proxy.port().to_string(), "MONITOR"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("run redis-cli MONITOR");
    let mut lines = BufReader::new(cli.stdout.take().expect("stdout")).lines();
    assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("OK"));

    let mut writer = proxy.client();
    let writer_addr = writer.stream().local_addr().expect("addr").to_string();
    assert_eq!(
        writer.cmd(&["SET", "greeting", "hello \"world\"\n"]),
        Reply::ok()
    );
    let mut reader = proxy.client();
    assert_eq!(
        reader.cmd(&["GET", "greeting"]),
        Reply::bulk("hello \"world\"\n")
    );
    assert!(writer.cmd(&["AUTH", "secret"]).is_error());
    assert_eq!(writer.cmd(&["GET", "after"]), Reply::nil());

    let set = lines.next().and_then(Result::ok).expect("the SET line");
    let (stamp, rest) = set.split_once(' ').expect("a timestamp first");
    assert!(stamp.parse::<f64>().is_ok(), "{set}");
    assert_eq!(
        rest,
        format!(r#"[0 {writer_addr}] "SET" "greeting" "hello \"world\"\n""#)
    );
    let get = lines.next().and_then(Result::ok).expect("the GET line");
    assert!(get.ends_with(r#"] "GET" "greeting""#), "{get}");
    // AUTH carries a password: not shown, as in Redis.
    let after = lines
        .next()
        .and_then(Result::ok)
        .expect("the line after AUTH");
    assert!(after.ends_with(r#"] "GET" "after""#), "{after}");
    // What a script runs on a node shows as Redis shows it, after the script's own line.
    assert_eq!(
        writer.cmd(&[
            "EVAL",
            "return redis.call('set', KEYS[1], ARGV[1])",
            "1",
            "scripted",
            "v"
        ]),
        Reply::ok()
    );
    let eval = lines.next().and_then(Result::ok).expect("the EVAL line");
    assert!(eval.contains(r#"] "EVAL" "#), "{eval}");
    let inner = lines.next().and_then(Result::ok).expect("the script's SET");
    assert!(
        inner.ends_with(r#" [0 lua] "set" "scripted" "v""#),
        "{inner}"
    );

    // A monitor that reads nothing: the writer's 40,000 commands (20 MiB of lines) all go through, and it is dropped.
    let mut stalled = proxy.client();
    stalled.send(&["MONITOR"]);
    std::thread::sleep(Duration::from_millis(100));
    let cmds: Vec<Vec<String>> = (0..40_000)
        .map(|i| vec!["SET".into(), format!("k{i}"), "x".repeat(512)])
        .collect();
    for chunk in cmds.chunks(1000) {
        assert!(writer.pipeline(chunk).iter().all(Reply::is_ok));
    }
    support::wait_for(
        Duration::from_secs(10),
        "the stalled monitor to be dropped",
        || proxy.log().contains("closing a MONITOR client"),
    );
    let _ = cli.kill();
    let _ = cli.wait();
}

/// SLOWLOG keeps slotline's own slow requests, timed as the client saw them: a node that stalls
/// makes the request slow, whatever the node's own slowlog says.
#[test]
fn slowlog_keeps_requests_slow_end_to_end() {
    let servers = RedisServers::start(1);
    let yaml = format!(
        "slowlog_log_slower_than: 100000\nslowlog_max_len: 3\n{}",
        servers.ketama_yaml(free_port(), "")
    );
    let proxy = Slotline::start(&yaml);
    let mut client = proxy.client();
    assert_eq!(client.cmd(&["CLIENT", "SETNAME", "slowpoke"]), Reply::ok());
    assert_eq!(client.cmd(&["SET", "k", "v"]), Reply::ok());
    assert_eq!(
        client.cmd(&["SLOWLOG", "LEN"]),
        Reply::Int(0),
        "a fast SET is not slow"
    );

    // The node stops answering for 300 ms: the GET through slotline takes that long.
    let paused = servers.client(0).cmd(&["CLIENT", "PAUSE", "300"]);
    assert_eq!(paused, Reply::ok());
    assert_eq!(client.cmd(&["GET", "k"]), Reply::bulk("v"));
    assert_eq!(client.cmd(&["SLOWLOG", "LEN"]), Reply::Int(1));
    let entries = client.cmd(&["SLOWLOG", "GET"]);
    let entry = first_entry(&entries);
    let entry = entry.unwrap_or_else(|| panic!("{entries:?}"));
    assert_eq!(entry.len(), 6, "{entry:?}");
    assert!(
        entry[2].as_int().is_some_and(|us| us >= 250_000),
        "{entry:?}"
    );
    assert_eq!(
        entry[3],
        Reply::Array(Some(vec![Reply::bulk("GET"), Reply::bulk("k")]))
    );
    let addr = client.stream().local_addr().expect("addr").to_string();
    assert_eq!(
        (&entry[4], &entry[5]),
        (&Reply::bulk(addr), &Reply::bulk("slowpoke"))
    );
    assert_eq!(client.cmd(&["SLOWLOG", "RESET"]), Reply::ok());
    assert_eq!(client.cmd(&["SLOWLOG", "LEN"]), Reply::Int(0));
    // CONFIG SET of SLOWLOG's settings sets slotline's own (answered here without allow_admin).
    assert_eq!(
        client.cmd(&[
            "CONFIG",
            "SET",
            "slowlog-log-slower-than",
            "0",
            "slowlog-max-len",
            "2"
        ]),
        Reply::ok()
    );
    for i in 0..5 {
        assert_eq!(client.cmd(&["SET", &format!("k{i}"), "v"]), Reply::ok());
    }
    assert_eq!(
        client.cmd(&["SLOWLOG", "LEN"]),
        Reply::Int(2),
        "every request, 2 kept"
    );
    let entries = client.cmd(&["SLOWLOG", "GET"]);
    let newest = first_entry(&entries);
    assert_eq!(
        newest.map(|e| e[3].clone()),
        Some(Reply::Array(Some(vec![
            Reply::bulk("SLOWLOG"),
            Reply::bulk("LEN")
        ])))
    );
    // A blocking command is logged too, as Redis logs it when it is unblocked: for its run, not
    // its wait (so only when every request is logged).
    assert!(client.cmd(&["RPUSH", "l", "x"]).as_int().is_some());
    assert_eq!(client.cmd(&["SLOWLOG", "RESET"]), Reply::ok());
    assert_eq!(
        client.cmd(&["BLPOP", "l", "0"]),
        Reply::Array(Some(vec![Reply::bulk("l"), Reply::bulk("x")]))
    );
    let entries = client.cmd(&["SLOWLOG", "GET", "1"]);
    let newest = first_entry(&entries);
    assert_eq!(
        newest.map(|e| e[3].clone()),
        Some(Reply::Array(Some(vec![
            Reply::bulk("BLPOP"),
            Reply::bulk("l"),
            Reply::bulk("0")
        ]))),
        "{entries:?}"
    );
    let refused = client.cmd(&["CONFIG", "SET", "slowlog-max-len", "5", "maxmemory", "1"]);
    assert!(
        refused.error().is_some_and(|e| e.contains("allow_admin")),
        "{refused:?}"
    );
    assert_eq!(
        client.cmd(&["CONFIG", "SET", "slowlog-log-slower-than", "-1"]),
        Reply::ok()
    );
    assert_eq!(client.cmd(&["SLOWLOG", "RESET"]), Reply::ok());
    assert_eq!(client.cmd(&["GET", "k"]), Reply::bulk("v"));
    assert_eq!(client.cmd(&["SLOWLOG", "LEN"]), Reply::Int(0), "off");
    assert_eq!(
        client.cmd(&["SLOWLOG", "GET", "-2"]),
        Reply::Error("ERR count should be greater than or equal to -1".into())
    );
    // LATENCY is about slotline too, which records no latency events: it says where to look.
    assert_eq!(
        client.cmd(&["LATENCY", "LATEST"]),
        Reply::Array(Some(vec![]))
    );
    assert_eq!(client.cmd(&["LATENCY", "RESET"]), Reply::Int(0));
    let doctor = client.cmd(&["LATENCY", "DOCTOR"]);
    assert!(
        doctor
            .as_bytes()
            .is_some_and(|d| String::from_utf8_lossy(d).contains("SLOWLOG")),
        "{doctor:?}"
    );
    let graph = client.cmd(&["LATENCY", "GRAPH", "command"]);
    assert!(
        graph
            .error()
            .is_some_and(|e| e.contains("LATENCY GRAPH is not supported")),
        "{graph:?}"
    );
}

/// CLIENT PAUSE holds slotline's own clients, so a pause works across every node: WRITE holds writes
/// (and what follows them) while reads go on; UNPAUSE lets them through; ALL holds everything until
/// the pause ends.
#[test]
fn client_pause_holds_writes_across_the_pool_until_unpaused() {
    let servers = RedisServers::start(2);
    let proxy = Slotline::start(&servers.ketama_yaml(free_port(), ""));
    let mut admin = proxy.client();
    let mut writer = proxy.client();
    let mut reader = proxy.client();
    assert_eq!(writer.cmd(&["SET", "k", "old"]), Reply::ok());
    let on_nodes = |servers: &RedisServers| -> Vec<Reply> {
        (0..2)
            .map(|i| servers.client(i).cmd(&["GET", "k"]))
            .collect()
    };

    assert_eq!(
        admin.cmd(&["CLIENT", "PAUSE", "60000", "WRITE"]),
        Reply::ok()
    );
    writer.send(&["SET", "k", "new"]);
    writer.send(&["GET", "k"]);
    // Reads from others go on; the write waits in slotline, not on a node.
    assert_eq!(reader.cmd(&["GET", "k"]), Reply::bulk("old"));
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !on_nodes(&servers).contains(&Reply::bulk("new")),
        "a paused write reached a node"
    );
    // A client held by the pause counts as blocked, as in Redis.
    let info = text(admin.cmd(&["INFO", "clients"]));
    assert!(info.contains("blocked_clients:1\r\n"), "{info}");
    assert_eq!(admin.cmd(&["CLIENT", "UNPAUSE"]), Reply::ok());
    assert_eq!(writer.read_reply(), Reply::ok());
    assert_eq!(
        writer.read_reply(),
        Reply::bulk("new"),
        "what followed the write waited with it"
    );

    // ALL holds reads too, until the pause ends by itself.
    assert_eq!(admin.cmd(&["CLIENT", "PAUSE", "2000", "ALL"]), Reply::ok());
    reader.set_read_timeout(Duration::from_millis(300));
    reader.send(&["GET", "k"]);
    assert!(
        reader.try_read_reply().is_err(),
        "a read went through an ALL pause"
    );
    reader.set_read_timeout(Duration::from_secs(10));
    assert_eq!(reader.read_reply(), Reply::bulk("new"));

    // Transactions: EXEC waits only when a queued command may write; a script declaring
    // no-writes is a read.
    let mut tx = proxy.client();
    assert_eq!(tx.cmd(&["MULTI"]), Reply::ok());
    assert_eq!(tx.cmd(&["GET", "k"]), Reply::Status("QUEUED".into()));
    let mut writing = proxy.client();
    assert_eq!(writing.cmd(&["MULTI"]), Reply::ok());
    assert_eq!(
        writing.cmd(&["SET", "k", "tx"]),
        Reply::Status("QUEUED".into())
    );
    assert_eq!(
        admin.cmd(&["CLIENT", "PAUSE", "60000", "WRITE"]),
        Reply::ok()
    );
    assert_eq!(
        tx.cmd(&["EXEC"]),
        Reply::Array(Some(vec![Reply::bulk("new")]))
    );
    let no_writes = "#!lua flags=no-writes\nreturn 'read'";
    assert_eq!(reader.cmd(&["EVAL", no_writes, "0"]), Reply::bulk("read"));
    writing.send(&["EXEC"]);
    let info = || text(proxy.client().cmd(&["INFO", "clients"]));
    support::wait_for(Duration::from_secs(5), "EXEC held", || {
        info().contains("blocked_clients:1\r\n")
    });
    assert_eq!(admin.cmd(&["CLIENT", "UNPAUSE"]), Reply::ok());
    assert_eq!(writing.read_reply(), Reply::Array(Some(vec![Reply::ok()])));

    // EVALSHA and FCALL: only the node knows a script's flags. One that may not write runs during
    // the pause; one that may is held, unrun, until it ends.
    let reads = reader.cmd(&["SCRIPT", "LOAD", "#!lua flags=no-writes\nreturn 2"]);
    let writes = reader.cmd(&[
        "SCRIPT",
        "LOAD",
        "return redis.call('SET', KEYS[1], 'script')",
    ]);
    let (reads, writes) = (text(reads), text(writes));
    assert_eq!(
        admin.cmd(&["CLIENT", "PAUSE", "60000", "WRITE"]),
        Reply::ok()
    );
    assert_eq!(reader.cmd(&["EVALSHA", &reads, "0"]), Reply::Int(2));
    writing.send(&["EVALSHA", &writes, "1", "k"]);
    support::wait_for(Duration::from_secs(5), "EVALSHA held", || {
        info().contains("blocked_clients:1\r\n")
    });
    assert_eq!(
        reader.cmd(&["GET", "k"]),
        Reply::bulk("tx"),
        "not run during the pause"
    );
    assert_eq!(admin.cmd(&["CLIENT", "UNPAUSE"]), Reply::ok());
    assert_eq!(writing.read_reply(), Reply::ok());
    assert_eq!(reader.cmd(&["GET", "k"]), Reply::bulk("script"));

    assert_eq!(
        admin.cmd(&["CLIENT", "PAUSE", "-1"]),
        Reply::Error("ERR timeout is negative".into())
    );
    assert_eq!(
        admin.cmd(&["CLIENT", "PAUSE", "10", "SOMETIMES"]),
        Reply::Error("ERR syntax error".into())
    );
}

/// CLIENT REPLY OFF and SKIP drop exactly the replies Redis would drop, whether slotline answers
/// them itself, a backend does, or they are errors, and in one pipeline where later replies are
/// queued behind earlier ones.
#[test]
fn client_reply_off_and_skip_drop_exactly_their_replies() {
    let servers = RedisServers::start(2);
    let proxy = Slotline::start(&servers.ketama_yaml(free_port(), ""));
    let mut client = proxy.client();
    let pipeline: [&[&str]; 15] = [
        &["SET", "a", "1"],
        &["CLIENT", "REPLY", "OFF"],
        &["SET", "b", "2"],
        &["GET", "a"],
        &["MGET", "a", "b", "c", "d"],
        &["PING", "quiet"],
        &["NOSUCHCOMMAND"],
        &["CLIENT", "REPLY", "SKIP"],
        &["CLIENT", "REPLY", "ON"],
        &["GET", "b"],
        &["CLIENT", "REPLY", "SKIP"],
        &["GET", "a"],
        &["GET", "a"],
        &["CLIENT", "REPLY", "SKIP"],
        &["CLIENT", "REPLY", "ON"],
    ];
    let mut bytes = Vec::new();
    for cmd in pipeline {
        bytes.extend(support::encode(cmd));
    }
    client.send_raw(&bytes);
    for expected in [
        Reply::ok(),
        Reply::ok(),
        Reply::bulk("2"),
        Reply::bulk("1"),
        Reply::ok(),
    ] {
        assert_eq!(client.read_reply(), expected);
    }
    // Nothing else was sent: the next reply is this PING's.
    assert_eq!(client.cmd(&["PING"]), Reply::Status("PONG".into()));
    assert_eq!(
        client.cmd(&["CLIENT", "REPLY", "MAYBE"]),
        Reply::Error("ERR syntax error".into())
    );
    // The silenced commands ran.
    assert_eq!(client.cmd(&["GET", "b"]), Reply::bulk("2"));
    // RESET turns replies back on.
    client.send(&["CLIENT", "REPLY", "OFF"]);
    client.send(&["RESET"]);
    assert_eq!(client.read_reply(), Reply::Status("RESET".into()));
    assert_eq!(client.cmd(&["PING"]), Reply::Status("PONG".into()));
}

/// INFO shows what the nodes hold, summed over them (the keyspace, hits and misses), beside
/// slotline's own sections, as one Redis would.
#[test]
fn info_sums_the_nodes_keyspace_and_counters() {
    let servers = RedisServers::start(2);
    let proxy = Slotline::start(&servers.ketama_yaml(free_port(), ""));
    let mut client = proxy.client();
    for i in 0..6 {
        assert_eq!(client.cmd(&["SET", &format!("info:{i}"), "v"]), Reply::ok());
    }
    assert_eq!(client.cmd(&["EXPIRE", "info:0", "100"]), Reply::Int(1));
    for key in ["info:1", "info:2", "info:3", "none:1", "none:2"] {
        client.cmd(&["GET", key]);
    }
    // The keys live on both servers.
    let on = |i: usize| servers.client(i).cmd(&["DBSIZE"]).as_int().unwrap_or(0);
    assert!(on(0) > 0 && on(1) > 0, "{} + {}", on(0), on(1));
    let info = text(client.cmd(&["INFO", "keyspace", "stats"]));
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .unwrap_or_else(|| panic!("no {name} in {info}"))
            .to_string()
    };
    assert!(
        field("db0").starts_with("keys=6,expires=1,avg_ttl="),
        "{info}"
    );
    assert_eq!(field("keyspace_hits"), "3");
    assert_eq!(field("keyspace_misses"), "2");
    assert!(
        info.contains("total_commands_processed:"),
        "slotline's own too: {info}"
    );
    // Sections that need no node are answered by slotline alone; all of them together work.
    let all = text(client.cmd(&["INFO"]));
    for section in [
        "# Server",
        "# Clients",
        "# Stats",
        "# Keyspace",
        "# Slotline",
    ] {
        assert!(all.contains(section), "{section} in {all}");
    }
    assert!(!text(client.cmd(&["INFO", "cpu"])).contains("# Keyspace"));

    // Scripts the nodes hold: SCRIPT LOAD puts one on every server, SCRIPT FLUSH empties them.
    assert_eq!(client.cmd(&["SCRIPT", "FLUSH"]), Reply::ok());
    for n in 0..3 {
        client.cmd(&["SCRIPT", "LOAD", &format!("return {n}")]);
    }
    let memory = text(client.cmd(&["INFO", "memory"]));
    assert!(
        memory.contains("number_of_cached_scripts:3\r\n"),
        "{memory}"
    );
    assert_eq!(client.cmd(&["SCRIPT", "FLUSH", "ASYNC"]), Reply::ok());
    let memory = text(client.cmd(&["INFO", "memory"]));
    assert!(
        memory.contains("number_of_cached_scripts:0\r\n"),
        "{memory}"
    );
}

/// INFO commandstats and errorstats show what clients saw through slotline: calls per command,
/// refusals, error replies (the nodes' and slotline's own) by error code; CONFIG RESETSTAT clears
/// them. Not in the default sections, commandstats; errorstats is, as in Redis.
#[test]
fn info_commandstats_and_errorstats_count_what_clients_saw() {
    let servers = RedisServers::start(2);
    let proxy = Slotline::start(&servers.ketama_yaml(free_port(), ""));
    let mut client = proxy.client();
    assert_eq!(client.cmd(&["CONFIG", "RESETSTAT"]), Reply::ok());
    for i in 0..3 {
        assert_eq!(client.cmd(&["SET", &format!("cs:{i}"), "v"]), Reply::ok());
    }
    client.cmd(&["MGET", "cs:0", "cs:1", "cs:2"]);
    assert!(client.cmd(&["INCR", "cs:0"]).is_error(), "not an integer");
    let script = "return redis.error_reply('MY_CODE custom msg')";
    assert!(client.cmd(&["EVAL", script, "0"]).is_error());
    assert!(client.cmd(&["GET"]).is_error(), "wrong arity");
    assert!(
        client.cmd(&["SELECT", "1"]).is_error(),
        "refused by slotline"
    );
    // An unknown command is no command's refusal, not even the one read just before it.
    let replies = client.pipeline(&[vec!["SET", "cs:3", "v"], vec!["NOSUCHCOMMAND"]]);
    assert!(replies[1].is_error(), "{replies:?}");

    let stats = text(client.cmd(&["INFO", "commandstats"]));
    let line = |name: &str| {
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{name}:")))
            .unwrap_or_else(|| panic!("no {name} in {stats}"))
            .to_string()
    };
    assert!(line("set").starts_with("calls=4,usec="), "{stats}");
    assert!(line("set").contains(",rejected_calls=0,"), "{stats}");
    assert!(line("mget").starts_with("calls=1,"), "{stats}");
    assert!(
        line("incr").ends_with(",rejected_calls=0,failed_calls=1"),
        "{stats}"
    );
    assert!(
        line("select").starts_with("calls=0,") && line("select").contains("rejected_calls=1"),
        "{stats}"
    );
    let errors = text(client.cmd(&["INFO", "errorstats"]));
    for want in ["errorstat_ERR:count=4\r\n", "errorstat_MY_CODE:count=1\r\n"] {
        assert!(errors.contains(want), "{want} in {errors}");
    }
    let default = text(client.cmd(&["INFO"]));
    assert!(default.contains("# Errorstats") && !default.contains("# Commandstats"));
    assert!(text(client.cmd(&["INFO", "everything"])).contains("cmdstat_set:"));

    assert_eq!(client.cmd(&["CONFIG", "RESETSTAT"]), Reply::ok());
    let errors = text(client.cmd(&["INFO", "errorstats"]));
    assert!(!errors.contains("errorstat_"), "{errors}");
    let stats = text(client.cmd(&["INFO", "commandstats"]));
    assert!(!stats.contains("cmdstat_set"), "{stats}");
}

/// What CLIENT LIST shows of a client is current by the time the client has its reply: a test (or
/// an operator's script) that sees QUEUED and then lists the client from another connection,
/// served by another worker, finds the command counted. The state was published after the write,
/// so now and then the listing came first (seen in CI: `multi=5` after the sixth QUEUED).
#[test]
fn client_list_is_current_when_the_client_has_its_reply() {
    let servers = RedisServers::start(1);
    let port = free_port();
    let proxy = Slotline::start(&format!("workers: 2\n{}", servers.ketama_yaml(port, "")));
    let mut client = proxy.client();
    let mut observer = proxy.client();
    let id = client
        .cmd(&["CLIENT", "ID"])
        .as_int()
        .expect("CLIENT ID")
        .to_string();
    let multi_of = |observer: &mut Client| {
        let lines = list(observer, &["ID", &id]);
        field(&lines[0], "multi").to_string()
    };
    for round in 0..2000 {
        assert_eq!(client.cmd(&["MULTI"]), Reply::ok());
        assert_eq!(multi_of(&mut observer), "0", "round {round}");
        assert_eq!(client.cmd(&["GET", "k"]), Reply::Status("QUEUED".into()));
        assert_eq!(multi_of(&mut observer), "1", "round {round}");
        assert_eq!(client.cmd(&["DISCARD"]), Reply::ok());
        assert_eq!(multi_of(&mut observer), "-1", "round {round}");
    }
}
