//! Pub/Sub through slotline, in front of a real 3-master cluster and a real ketama pool: subscribers
//! get what publishers send and PUBLISH counts them as one Redis would, shard channels follow their slot, PUBSUB
//! introspection sees the whole pool, subscriber mode behaves as Redis's own, and the backend
//! connections a subscriber uses are its own and go away with it.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use support::{
    client_list, free_port, key_slot, run_python_client, wait_for, wait_ok, Client, RedisCluster,
    RedisServers, Reply, Slotline,
};

fn shared_cluster() -> &'static RedisCluster {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| RedisCluster::start(Default::default()))
}

fn bulk(s: &str) -> Reply {
    Reply::bulk(s)
}

/// `[kind, name, count]`, as Redis confirms a (un)subscription.
fn confirmed(kind: &str, name: &str, count: i64) -> Reply {
    Reply::Array(Some(vec![bulk(kind), bulk(name), Reply::Int(count)]))
}

fn message(channel: &str, payload: &str) -> Reply {
    Reply::Array(Some(vec![bulk("message"), bulk(channel), bulk(payload)]))
}

fn pmessage(pattern: &str, channel: &str, payload: &str) -> Reply {
    Reply::Array(Some(vec![
        bulk("pmessage"),
        bulk(pattern),
        bulk(channel),
        bulk(payload),
    ]))
}

fn command<S: AsRef<str>>(name: &str, args: &[S]) -> Vec<String> {
    std::iter::once(name.to_string())
        .chain(args.iter().map(|a| a.as_ref().to_string()))
        .collect()
}

/// How many connections the server at `port` has that are subscribed to something.
fn subscriber_connections(port: u16) -> usize {
    client_list(port)
        .iter()
        .filter(|line| {
            line.split(' ').any(|field| match field.split_once('=') {
                Some(("sub" | "psub" | "ssub", n)) => n != "0",
                _ => false,
            })
        })
        .count()
}

fn total_subscriber_connections(ports: &[u16]) -> usize {
    ports.iter().map(|&p| subscriber_connections(p)).sum()
}

/// Waits until the servers at `ports` have `count` subscribed connections between them.
fn wait_subscriber_connections(ports: &[u16], count: usize, what: &str) {
    wait_for(Duration::from_secs(5), what, || {
        total_subscriber_connections(ports) == count
    });
}

/// A slotline in front of the shared cluster, and the cluster to this test alone: the tests count
/// the subscriber connections on the masters.
fn cluster_proxy() -> (MutexGuard<'static, ()>, Slotline, Vec<u16>) {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = shared_cluster();
    let port = free_port();
    let masters: Vec<u16> = cluster.masters().iter().map(|m| m.port).collect();
    let proxy = Slotline::start(&Slotline::cluster_yaml(port, &masters));
    (guard, proxy, masters)
}

#[test]
fn cluster_subscribers_and_publishers_meet_so_publish_counts_them() {
    let (_one, proxy, masters) = cluster_proxy();
    let before = total_subscriber_connections(&masters);
    // Every client's classic subscriptions live on one master, where PUBLISH goes too.
    let mut subscribers: Vec<Client> = (0..6).map(|_| proxy.client()).collect();
    for sub in &mut subscribers {
        assert_eq!(
            sub.cmd(&["SUBSCRIBE", "news", "sports"]),
            confirmed("subscribe", "news", 1)
        );
        assert_eq!(sub.read_reply(), confirmed("subscribe", "sports", 2));
    }
    let spread: Vec<usize> = masters.iter().map(|&p| subscriber_connections(p)).collect();
    assert_eq!(spread.iter().sum::<usize>(), before + 6, "{spread:?}");
    assert!(
        spread.iter().any(|&n| n >= 6),
        "subscribers should meet on one master: {spread:?}"
    );

    // PUBLISH answers how many received it, as one Redis would.
    let mut publisher = proxy.client();
    assert_eq!(publisher.cmd(&["PUBLISH", "news", "hello"]), Reply::Int(6));
    assert_eq!(publisher.cmd(&["PUBLISH", "sports", "goal"]), Reply::Int(6));
    assert_eq!(publisher.cmd(&["PUBLISH", "nobody", "x"]), Reply::Int(0));
    for sub in &mut subscribers {
        assert_eq!(sub.read_reply(), message("news", "hello"));
        assert_eq!(sub.read_reply(), message("sports", "goal"));
    }

    // PUBSUB sees every master's subscribers, as one server would.
    let channels = publisher.cmd(&["PUBSUB", "CHANNELS", "*"]);
    let mut names: Vec<&str> = channels
        .as_array()
        .expect("PUBSUB CHANNELS")
        .iter()
        .filter_map(Reply::as_str)
        .collect();
    names.sort();
    assert_eq!(names, ["news", "sports"]);
    assert_eq!(
        publisher.cmd(&["PUBSUB", "NUMSUB", "news", "nobody"]),
        Reply::Array(Some(vec![
            bulk("news"),
            Reply::Int(6),
            bulk("nobody"),
            Reply::Int(0)
        ]))
    );

    // A pattern subscriber gets what is published, and is counted.
    let mut watcher = proxy.client();
    assert_eq!(
        watcher.cmd(&["PSUBSCRIBE", "n*"]),
        confirmed("psubscribe", "n*", 1)
    );
    assert_eq!(publisher.cmd(&["PUBSUB", "NUMPAT"]), Reply::Int(1));
    // Pattern subscribers count too.
    assert_eq!(publisher.cmd(&["PUBLISH", "news", "again"]), Reply::Int(7));
    assert_eq!(watcher.read_reply(), pmessage("n*", "news", "again"));
    for sub in &mut subscribers {
        assert_eq!(sub.read_reply(), message("news", "again"));
    }

    // Unsubscribing from everything leaves subscriber mode and closes the backend connections.
    for sub in &mut subscribers {
        let first = sub.cmd(&["UNSUBSCRIBE"]);
        let second = sub.read_reply();
        let mut names = [&first, &second].map(|r| r.as_array().expect("confirmation")[1].clone());
        names.sort_by_key(|n| n.as_str().map(str::to_string));
        assert_eq!(names, [bulk("news"), bulk("sports")]);
        assert_eq!(second.as_array().map(|a| a[2].clone()), Some(Reply::Int(0)));
        assert_eq!(sub.cmd(&["SET", "after:unsubscribe", "1"]), Reply::ok());
    }
    drop(watcher);
    wait_subscriber_connections(
        &masters,
        before,
        "the backend subscriber connections to close",
    );
}

#[test]
fn cluster_shard_channels_follow_their_slot() {
    let cluster = shared_cluster();
    let (_one, proxy, masters) = cluster_proxy();
    let owner = cluster.node_for_slot(key_slot(b"orders"));
    let before = total_subscriber_connections(&masters);
    let mut sub = proxy.client();
    assert_eq!(
        sub.cmd(&["SSUBSCRIBE", "{orders}eu", "{orders}us"]),
        confirmed("ssubscribe", "{orders}eu", 1)
    );
    assert_eq!(sub.read_reply(), confirmed("ssubscribe", "{orders}us", 2));
    // The subscription is on the master owning the slot, where SPUBLISH goes.
    let direct = Client::connect(owner).cmd(&["PUBSUB", "SHARDNUMSUB", "{orders}eu"]);
    assert_eq!(
        direct,
        Reply::Array(Some(vec![bulk("{orders}eu"), Reply::Int(1)]))
    );

    let mut publisher = proxy.client();
    assert_eq!(
        publisher.cmd(&["SPUBLISH", "{orders}us", "order 7"]),
        Reply::Int(1)
    );
    assert_eq!(
        sub.read_reply(),
        Reply::Array(Some(vec![
            bulk("smessage"),
            bulk("{orders}us"),
            bulk("order 7")
        ]))
    );
    let channels = publisher.cmd(&["PUBSUB", "SHARDCHANNELS", "{orders}*"]);
    assert_eq!(
        channels.as_array().map(<[Reply]>::len),
        Some(2),
        "{channels:?}"
    );
    assert_eq!(
        publisher.cmd(&["PUBSUB", "SHARDNUMSUB", "{orders}us"]),
        Reply::Array(Some(vec![bulk("{orders}us"), Reply::Int(1)]))
    );

    // Channels of one SSUBSCRIBE must share a slot, as Redis Cluster requires.
    let (a, b) = ("chan-a", "chan-b");
    assert_ne!(key_slot(a.as_bytes()), key_slot(b.as_bytes()));
    let refused = sub.cmd(&["SSUBSCRIBE", a, b]);
    assert!(
        refused.error().is_some_and(|e| e.starts_with("CROSSSLOT")),
        "{refused:?}"
    );
    // A shard channel in another slot lives on its own master.
    assert_eq!(sub.cmd(&["SSUBSCRIBE", a]), confirmed("ssubscribe", a, 3));
    assert_eq!(publisher.cmd(&["SPUBLISH", a, "x"]), Reply::Int(1));
    assert_eq!(
        sub.read_reply(),
        Reply::Array(Some(vec![bulk("smessage"), bulk(a), bulk("x")]))
    );

    // SUNSUBSCRIBE with no channel leaves them all, and subscriber mode with them.
    let mut left: Vec<Reply> = (0..3)
        .map(|i| {
            let reply = match i {
                0 => sub.cmd(&["SUNSUBSCRIBE"]),
                _ => sub.read_reply(),
            };
            let items = reply.as_array().expect("confirmation").to_vec();
            assert_eq!(items[0], bulk("sunsubscribe"));
            assert_eq!(items[2], Reply::Int(2 - i));
            items[1].clone()
        })
        .collect();
    left.sort_by_key(|r| r.as_str().map(str::to_string));
    assert_eq!(left, [bulk(a), bulk("{orders}eu"), bulk("{orders}us")]);
    assert_eq!(sub.cmd(&["PING"]), Reply::Status("PONG".into()));
    wait_subscriber_connections(
        &masters,
        before,
        "the subscriber connections to the masters to close",
    );
}

#[test]
fn ketama_channels_live_where_their_name_hashes_and_patterns_everywhere() {
    let servers = RedisServers::start(3);
    let port = free_port();
    let _proxy = Slotline::start(&servers.ketama_yaml(port, ""));
    let ports: Vec<u16> = (0..3).map(|i| servers.port(i)).collect();

    let channels: Vec<String> = (0..30).map(|i| format!("ch:{i}")).collect();
    let mut sub = Client::connect(port);
    sub.send(&command("SUBSCRIBE", &channels));
    for (i, ch) in channels.iter().enumerate() {
        assert_eq!(sub.read_reply(), confirmed("subscribe", ch, i as i64 + 1));
    }
    // Each channel is subscribed on the server a key of the same name lives on.
    let mut writer = Client::connect(port);
    for ch in &channels {
        assert_eq!(writer.cmd(&["SET", ch, "x"]), Reply::ok());
    }
    let mut used = 0;
    for (i, &p) in ports.iter().enumerate() {
        let keys = servers.keys(i, b"ch:*");
        let on_server = Client::connect(p).cmd(&["PUBSUB", "CHANNELS", "ch:*"]);
        let mut subscribed: Vec<Vec<u8>> = on_server
            .as_array()
            .expect("PUBSUB CHANNELS")
            .iter()
            .filter_map(|r| r.as_bytes().map(<[u8]>::to_vec))
            .collect();
        subscribed.sort();
        let mut keys = keys.clone();
        keys.sort();
        assert_eq!(subscribed, keys, "server {i}");
        used += usize::from(!keys.is_empty());
    }
    assert_eq!(used, 3, "30 channels should spread over all 3 servers");

    // Every message published through slotline reaches the subscriber, once. The servers are
    // independent, so only messages of one server keep their order.
    for ch in &channels {
        assert_eq!(
            writer.cmd(&["PUBLISH", ch, &format!("to {ch}")]),
            Reply::Int(1)
        );
    }
    let received = |sub: &mut Client, payload: &dyn Fn(&str) -> String| {
        let mut got: Vec<Reply> = (0..channels.len()).map(|_| sub.read_reply()).collect();
        let mut want: Vec<Reply> = channels
            .iter()
            .map(|ch| message(ch, &payload(ch)))
            .collect();
        let key = |r: &Reply| format!("{r:?}");
        got.sort_by_key(key);
        want.sort_by_key(key);
        assert_eq!(got, want);
    };
    received(&mut sub, &|ch| format!("to {ch}"));
    assert_eq!(
        writer
            .cmd(&["PUBSUB", "CHANNELS", "ch:*"])
            .as_array()
            .map(<[Reply]>::len),
        Some(30)
    );
    assert_eq!(
        writer.cmd(&["PUBSUB", "NUMSUB", "ch:1", "ch:2", "none"]),
        Reply::Array(Some(vec![
            bulk("ch:1"),
            Reply::Int(1),
            bulk("ch:2"),
            Reply::Int(1),
            bulk("none"),
            Reply::Int(0)
        ]))
    );

    // A pattern is subscribed on every server, and their streams merge into one.
    let mut watcher = Client::connect(port);
    assert_eq!(
        watcher.cmd(&["PSUBSCRIBE", "ch:*"]),
        confirmed("psubscribe", "ch:*", 1)
    );
    for &p in &ports {
        assert_eq!(Client::connect(p).cmd(&["PUBSUB", "NUMPAT"]), Reply::Int(1));
    }
    assert_eq!(writer.cmd(&["PUBSUB", "NUMPAT"]), Reply::Int(1));
    for ch in &channels {
        writer.cmd(&["PUBLISH", ch, "all"]);
    }
    let mut got: Vec<String> = (0..channels.len())
        .map(|_| {
            let reply = watcher.read_reply();
            let items = reply.as_array().expect("pmessage").to_vec();
            assert_eq!(items[0], bulk("pmessage"));
            items[2].as_str().expect("channel").to_string()
        })
        .collect();
    got.sort();
    let mut want = channels.clone();
    want.sort();
    assert_eq!(got, want);
    received(&mut sub, &|_| "all".to_string());

    // Leaving: the pattern is dropped on every server, and the connections close.
    assert_eq!(
        watcher.cmd(&["PUNSUBSCRIBE", "ch:*"]),
        confirmed("punsubscribe", "ch:*", 0)
    );
    drop(sub);
    wait_subscriber_connections(&ports, 0, "the subscriber connections to close");
    let _ = writer.cmd(&["DEL", "ch:0"]);
}

/// The same requests, one at a time, to a lone Redis and to slotline over a three-server ketama pool:
/// the replies must be the same bytes' worth (counts, nils, errors, PING's subscriber-mode answer).
#[test]
fn subscriber_mode_answers_as_redis_does() {
    let servers = RedisServers::start(4);
    let port = free_port();
    let pool = RedisServers::ketama_yaml(&servers, port, "");
    // Server 3 is the lone Redis the proxy's answers are compared with; the pool uses 0..3.
    let lone = servers.port(3);
    let yaml = pool
        .lines()
        .filter(|l| !l.contains(&format!(":{lone}:")))
        .collect::<Vec<_>>()
        .join("\n");
    let _proxy = Slotline::start(&format!("{yaml}\n"));
    let script: &[&[&str]] = &[
        &["UNSUBSCRIBE"],
        &["PUNSUBSCRIBE", "nothing*"],
        &["SUBSCRIBE", "a", "b", "a", "c", "d"],
        &["PSUBSCRIBE", "p*", "q*"],
        &["SSUBSCRIBE", "s"],
        &["GET", "x"],
        &["CLIENT", "SETNAME", "n"],
        &["PING"],
        &["PING", "hi"],
        &["UNSUBSCRIBE", "a", "never"],
        &["PUNSUBSCRIBE", "p*"],
        &["UNSUBSCRIBE", "b"],
        &["UNSUBSCRIBE", "c", "d"],
        &["PUNSUBSCRIBE"],
        &["GET", "x"],
        &["SUNSUBSCRIBE"],
        &["GET", "x"],
        &["PING"],
        &["UNSUBSCRIBE"],
        &["SUNSUBSCRIBE"],
        &["SUBSCRIBE", "z"],
        &["HELLO", "3"],
        &["RESET"],
        &["GET", "x"],
        &["SUBSCRIBE"],
        &["PUBLISH", "only-one-arg"],
    ];
    let mut direct = Client::connect(lone);
    let mut proxied = Client::connect(port);
    for cmd in script {
        let expected = read_all(&mut direct, cmd);
        let got = read_all(&mut proxied, cmd);
        assert_eq!(got, expected, "{cmd:?}");
    }
}

/// Sends `cmd` and reads every reply it brings (a SUBSCRIBE of N names brings N), settling on
/// the last one that comes within a moment.
fn read_all(client: &mut Client, cmd: &[&str]) -> Vec<Reply> {
    client.send(cmd);
    let mut replies = vec![client.read_reply()];
    client.set_read_timeout(Duration::from_millis(200));
    while let Ok(reply) = client.try_read_reply() {
        replies.push(reply);
    }
    client.set_read_timeout(support::IO_TIMEOUT);
    replies
}

#[test]
fn resp3_clients_get_pushes_between_their_replies() {
    let (_one, proxy, _) = cluster_proxy();
    let mut sub = proxy.client();
    assert!(sub.cmd(&["HELLO", "3"]).as_array().is_some());
    assert_eq!(
        sub.cmd(&["SUBSCRIBE", "r3"]),
        confirmed("subscribe", "r3", 1)
    );
    // In RESP3 a subscribed client may run any command; the push comes between the replies.
    assert_eq!(sub.cmd(&["SET", "r3:key", "v"]), Reply::ok());
    let mut publisher = proxy.client();
    publisher.cmd(&["PUBLISH", "r3", "pushed"]);
    assert_eq!(sub.read_reply(), message("r3", "pushed"));
    assert_eq!(sub.cmd(&["GET", "r3:key"]), bulk("v"));
    assert_eq!(sub.cmd(&["PING"]), Reply::Status("PONG".into()));
    // As in Redis, a RESP3 subscriber may switch to RESP2 (Redis's own suite does, to have
    // invalidations redirected to it as messages): then messages are RESP2 arrays, whatever the
    // subscription's connection speaks, and RESP2's subscriber mode holds.
    assert!(sub.cmd(&["HELLO", "2"]).as_array().is_some());
    publisher.cmd(&["PUBLISH", "r3", "as-array"]);
    let mut raw = [0u8; 64];
    let want = b"*3\r\n$7\r\nmessage\r\n$2\r\nr3\r\n$8\r\nas-array\r\n";
    std::io::Read::read_exact(&mut sub.stream(), &mut raw[..want.len()]).expect("a message");
    assert_eq!(&raw[..want.len()], &want[..]);
    assert!(
        sub.cmd(&["GET", "r3:key"]).is_error(),
        "RESP2 subscriber mode"
    );
    assert_eq!(
        sub.cmd(&["UNSUBSCRIBE", "r3"]),
        confirmed("unsubscribe", "r3", 0)
    );
    assert_eq!(
        sub.cmd(&["UNSUBSCRIBE"]),
        Reply::Array(Some(vec![
            bulk("unsubscribe"),
            Reply::Bulk(None),
            Reply::Int(0)
        ]))
    );

    // redis-cli -3 sees the push as a RESP3 client does.
    let mut cli = Command::new("redis-cli")
        .args(["-3", "-p", &proxy.port().to_string(), "SUBSCRIBE", "cli3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run redis-cli");
    let stdout = cli.stdout.take().expect("redis-cli stdout");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    wait_ok(
        Duration::from_secs(5),
        "redis-cli to subscribe",
        || match publisher.cmd(&["PUBSUB", "NUMSUB", "cli3"]).as_array() {
            Some([_, Reply::Int(1)]) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    publisher.cmd(&["PUBLISH", "cli3", "hello from slotline"]);
    let mut shown = Vec::new();
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(5)) {
        shown.push(line);
        if shown
            .last()
            .is_some_and(|l| l.contains("hello from slotline"))
        {
            break;
        }
    }
    let _ = cli.kill();
    let _ = cli.wait();
    assert!(
        shown
            .last()
            .is_some_and(|l| l.contains("hello from slotline")),
        "redis-cli -3 did not show the message: {shown:?}"
    );
}

#[test]
fn redis_py_pubsub_over_resp2_and_resp3() {
    let (_one, proxy, _) = cluster_proxy();
    let servers = RedisServers::start(3);
    let ketama = free_port();
    let _sharded = Slotline::start(&servers.ketama_yaml(ketama, ""));
    for port in [proxy.port(), ketama] {
        for protocol in ["2", "3"] {
            run_python_client("redis_py_pubsub.py", port, protocol);
        }
    }
}

#[test]
fn a_client_that_leaves_takes_its_backend_subscriptions_with_it() {
    let (_one, proxy, masters) = cluster_proxy();
    let before = total_subscriber_connections(&masters);
    let mut subs: Vec<Client> = (0..3).map(|_| proxy.client()).collect();
    for (i, sub) in subs.iter_mut().enumerate() {
        let ch = format!("leaving:{i}");
        assert_eq!(sub.cmd(&["SUBSCRIBE", &ch]), confirmed("subscribe", &ch, 1));
        assert_eq!(
            sub.cmd(&["PSUBSCRIBE", "leaving:*"]),
            confirmed("psubscribe", "leaving:*", 2)
        );
    }
    wait_subscriber_connections(&masters, before + 3, "three subscriber connections");
    // One leaves mid-stream; the others keep getting messages.
    subs.remove(0).shutdown();
    wait_subscriber_connections(
        &masters,
        before + 2,
        "the leaving client's backend connection to close",
    );
    let mut publisher = proxy.client();
    publisher.cmd(&["PUBLISH", "leaving:1", "still here"]);
    assert_eq!(subs[0].read_reply(), message("leaving:1", "still here"));
    assert_eq!(
        subs[0].read_reply(),
        pmessage("leaving:*", "leaving:1", "still here")
    );
    assert_eq!(
        subs[1].read_reply(),
        pmessage("leaving:*", "leaving:1", "still here")
    );
    drop(subs);
    wait_subscriber_connections(&masters, before, "every subscriber connection to close");
}

#[test]
fn a_lost_backend_closes_its_subscribers() {
    let mut servers = RedisServers::start(1);
    let port = free_port();
    let proxy = Slotline::start(&servers.ketama_yaml(port, ""));
    let mut sub = Client::connect(port);
    assert_eq!(
        sub.cmd(&["SUBSCRIBE", "restart"]),
        confirmed("subscribe", "restart", 1)
    );
    servers.stop(0);
    // Not left subscribed to nothing: the client sees its connection close and can subscribe again.
    assert!(sub.is_closed(), "the subscriber should be disconnected");
    assert!(proxy
        .log()
        .contains("subscriber connection to the backend was lost"));
    servers.restart(0);
    let mut again = Client::connect(port);
    wait_ok(
        Duration::from_secs(10),
        "a new subscription",
        || match again.cmd(&["SUBSCRIBE", "restart"]) {
            r if r == confirmed("subscribe", "restart", 1) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
}

#[test]
fn a_subscriber_that_does_not_read_is_dropped_not_buffered_without_end() {
    // Redis's own limit for subscribers is the same 32 MiB: lifted here, so that it is slotline's
    // bound that drops the client, not a race with the server's.
    let servers = RedisServers::start_with(1, &["--client-output-buffer-limit", "pubsub 0 0 0"]);
    let port = free_port();
    let proxy = Slotline::start(&servers.ketama_yaml(port, ""));
    let mut slow = Client::connect(port);
    assert_eq!(
        slow.cmd(&["SUBSCRIBE", "firehose"]),
        confirmed("subscribe", "firehose", 1)
    );
    // 64 MiB of messages against a 32 MiB limit (socket buffers hold a few MiB at most).
    let payload = "x".repeat(1 << 20);
    let mut publisher = Client::connect(port);
    for _ in 0..64 {
        publisher.cmd(&["PUBLISH", "firehose", &payload]);
    }
    wait_for(
        Duration::from_secs(10),
        "slotline to drop the slow subscriber",
        || {
            proxy
                .log()
                .contains("does not read its messages fast enough")
        },
    );
    wait_for(
        Duration::from_secs(5),
        "its backend connection to close",
        || subscriber_connections(servers.port(0)) == 0,
    );
    // Everyone else is served as before.
    assert_eq!(publisher.cmd(&["PING"]), Reply::Status("PONG".into()));
    let mut got = 0;
    while let Ok(reply) = slow.try_read_reply() {
        assert_eq!(
            reply.as_array().map(|a| a[0].clone()),
            Some(bulk("message"))
        );
        got += 1;
    }
    assert!(
        got < 64,
        "the slow subscriber got everything ({got}): nothing was dropped"
    );
}

#[test]
fn pubsub_errors() {
    let (_one, proxy, _) = cluster_proxy();
    let mut c = proxy.client();
    assert_eq!(
        c.cmd(&["SUBSCRIBE"]),
        Reply::Error("ERR wrong number of arguments for 'subscribe' command".into())
    );
    assert_eq!(
        c.cmd(&["PUBLISH", "ch"]),
        Reply::Error("ERR wrong number of arguments for 'publish' command".into())
    );
    assert_eq!(c.cmd(&["MULTI"]), Reply::ok());
    assert!(c.cmd(&["SUBSCRIBE", "in-tx"]).error().is_some());
    assert!(c
        .cmd(&["EXEC"])
        .error()
        .is_some_and(|e| e.starts_with("EXECABORT")));
    // Binary channel names and payloads pass untouched.
    let mut sub = proxy.client();
    let name = "bin\r\n\0chan";
    assert_eq!(
        sub.cmd(&["SUBSCRIBE", name]),
        confirmed("subscribe", name, 1)
    );
    c.cmd(&["PUBLISH", name, "a\r\nb\0"]);
    assert_eq!(sub.read_reply(), message(name, "a\r\nb\0"));
    // A client that disconnects in the middle of a SUBSCRIBE does not bother slotline.
    let mut gone = proxy.client();
    gone.send_raw(b"*3\r\n$9\r\nSUBSCRIBE\r\n$1\r\na\r\n$1");
    gone.shutdown();
    assert_eq!(c.cmd(&["PING"]), Reply::Status("PONG".into()));
}

/// Keyspace notifications are each cluster node's own: a pattern that may hear them is placed on
/// every master, so the client gets every node's notifications once, while a PUBLISH (which the
/// cluster bus copies to every node) still arrives once. Confirmations are pushes, which Redis
/// sends even with CLIENT REPLY OFF.
#[test]
fn cluster_keyspace_notifications_come_from_every_master_once() {
    let (_one, proxy, masters) = cluster_proxy();
    let set_events = |value: &str| {
        for &port in &masters {
            let set =
                Client::connect(port).cmd(&["CONFIG", "SET", "notify-keyspace-events", value]);
            assert_eq!(set, Reply::ok());
        }
    };
    set_events("KEA");
    let cluster = shared_cluster();
    // A key on each master.
    let keys: Vec<String> = masters
        .iter()
        .map(|&port| {
            (0..)
                .map(|i| format!("ks:{i}"))
                .find(|k| cluster.node_for_slot(support::key_slot(k.as_bytes())) == port)
                .expect("a key on every master")
        })
        .collect();
    let mut watcher = proxy.client();
    watcher.send(&["CLIENT", "REPLY", "OFF"]);
    assert_eq!(
        watcher.cmd(&["PSUBSCRIBE", "__keyevent@*__:set", "*"]),
        confirmed("psubscribe", "__keyevent@*__:set", 1)
    );
    assert_eq!(watcher.read_reply(), confirmed("psubscribe", "*", 2));
    // A pattern that cannot hear keyspace notifications stays on one master.
    assert_eq!(
        watcher.cmd(&["PSUBSCRIBE", "news.*"]),
        confirmed("psubscribe", "news.*", 3)
    );
    let mut writer = proxy.client();
    assert_eq!(writer.cmd(&["PUBSUB", "NUMPAT"]), Reply::Int(3));
    for key in &keys {
        assert_eq!(writer.cmd(&["SET", key, "v"]), Reply::ok());
    }
    assert_eq!(writer.cmd(&["PUBLISH", "news.eu", "hello"]), Reply::Int(2));
    let mut heard = Vec::new();
    for _ in 0..keys.len() * 3 + 2 {
        heard.push(watcher.read_reply());
    }
    for key in &keys {
        let space = format!("__keyspace@0__:{key}");
        assert!(
            heard.contains(&pmessage("*", &space, "set")),
            "{key}: {heard:?}"
        );
        assert!(
            heard.contains(&pmessage("__keyevent@*__:set", "__keyevent@0__:set", key)),
            "{key}: {heard:?}"
        );
        assert!(
            heard.contains(&pmessage("*", "__keyevent@0__:set", key)),
            "{key}: {heard:?}"
        );
    }
    assert!(
        heard.contains(&pmessage("*", "news.eu", "hello")),
        "{heard:?}"
    );
    assert!(
        heard.contains(&pmessage("news.*", "news.eu", "hello")),
        "{heard:?}"
    );
    // Nothing twice: the next message is the next PUBLISH.
    assert_eq!(writer.cmd(&["PUBLISH", "other", "x"]), Reply::Int(1));
    assert_eq!(watcher.read_reply(), pmessage("*", "other", "x"));
    set_events("");
    for key in &keys {
        writer.cmd(&["DEL", key]);
    }
}
