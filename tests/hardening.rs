//! What a hostile client, script or backend must not be able to make slotline do: follow a redirect
//! to a host the cluster does not list, run a script twice, hold memory it did not budget, answer
//! requests out of order, or reconnect in a tight loop.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpListener;
use std::sync::OnceLock;
use std::thread;
use std::time::Duration;

use support::{
    free_port, http_get, key_slot, metric, proc_status_kib, wait_for, Client, ClusterOpts,
    RedisCluster, RedisServers, Reply, Slotline,
};

fn shared() -> &'static RedisCluster {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        RedisCluster::start(ClusterOpts {
            replicas_per_master: 0,
            ..ClusterOpts::default()
        })
    })
}

/// A listener standing in for an attacker's host; says whether anything connected to it.
struct Trap(TcpListener);

impl Trap {
    fn new() -> Trap {
        let listener = TcpListener::bind(("127.0.0.1", free_port())).expect("bind the trap");
        listener.set_nonblocking(true).expect("nonblocking trap");
        Trap(listener)
    }

    fn addr(&self) -> String {
        self.0.local_addr().expect("trap address").to_string()
    }

    fn was_connected(&self) -> bool {
        match self.0.accept() {
            Ok(_) => true,
            Err(e) if e.kind() == ErrorKind::WouldBlock => false,
            Err(e) => panic!("trap accept: {e}"),
        }
    }
}

#[track_caller]
fn assert_error(reply: &Reply, expected: &str) {
    assert_eq!(reply.error(), Some(expected), "reply {reply:?}");
}

/// `EVAL "return redis.error_reply('MOVED 0 attacker:port')" 0`, the reproduction: the client
/// gets the script's error as it is, and slotline never connects to the address (so no password can
/// go there either).
#[test]
fn a_script_cannot_send_slotline_to_a_host_of_its_choosing() {
    let (proxy, port) = Slotline::cluster(shared());
    let trap = Trap::new();
    let mut client = Client::connect(port);
    for kind in ["MOVED", "ASK"] {
        let error = format!("{kind} 0 {}", trap.addr());
        let script = format!("return redis.error_reply('{error}')");
        assert_error(&client.cmd(&["EVAL", &script, "0"]), &error);
        // The same through a function's and a cached script's forms.
        let sha = client.cmd(&["SCRIPT", "LOAD", &script]);
        let sha = sha
            .as_str()
            .expect("SCRIPT LOAD answers the sha")
            .to_string();
        assert_error(&client.cmd(&["EVALSHA", &sha, "0"]), &error);
    }
    // A redirect slotline would have followed is sent at once; give a stray connection time anyway.
    thread::sleep(Duration::from_millis(300));
    assert!(
        !trap.was_connected(),
        "slotline connected to the host a script named"
    );
    assert_eq!(client.cmd(&["PING"]), Reply::Status("PONG".into()));
    drop(proxy);
}

/// A script that wrote and then returned a redirect or a retry error must not run again elsewhere:
/// its error is its own, however much it looks like the cluster's.
#[test]
fn a_script_that_returns_a_redirect_or_retry_error_runs_once() {
    let cluster = shared();
    let (_proxy, port) = Slotline::cluster(cluster);
    let mut client = Client::connect(port);
    let key = "{script-once}counter";
    let owner = cluster.node_for_slot(key_slot(key.as_bytes()));
    let other = cluster.another_master(owner);
    let slot = key_slot(key.as_bytes());
    let errors = [
        format!("MOVED {slot} 127.0.0.1:{other}"),
        format!("ASK {slot} 127.0.0.1:{other}"),
        "TRYAGAIN Multiple keys request during rehashing of slot".to_string(),
        "CLUSTERDOWN The cluster is down".to_string(),
    ];
    for (i, error) in errors.iter().enumerate() {
        let script = format!("redis.call('INCR', KEYS[1]) return redis.error_reply('{error}')");
        assert_error(&client.cmd(&["EVAL", &script, "1", key]), error);
        assert_eq!(
            client.cmd(&["GET", key]),
            Reply::bulk((i + 1).to_string()),
            "the script that answered {error} ran more than once"
        );
    }
}

/// Requests before a pipelined `HELLO 3` or `RESET` finish on the old protocol's backend connection
/// before any after it is sent on the new one's: with the node holding writes (CLIENT PAUSE WRITE), a
/// GET that overtook the SET before the switch would read the old value.
#[test]
fn requests_do_not_overtake_each_other_across_a_protocol_switch() {
    let cluster = shared();
    let (_proxy, port) = Slotline::cluster(cluster);
    let key = "{order}k";
    let node = cluster.node_for_slot(key_slot(key.as_bytes()));
    let mut client = Client::connect(port);
    assert_eq!(client.cmd(&["SET", key, "old"]), Reply::ok());
    for (value, switch) in [("new", vec!["HELLO", "3"]), ("newer", vec!["RESET"])] {
        let paused = cluster.cli(node, &["CLIENT", "PAUSE", "300", "WRITE"]);
        assert_eq!(paused.trim(), "OK");
        let replies = client.pipeline(&[vec!["SET", key, value], switch.clone(), vec!["GET", key]]);
        assert_eq!(replies[0], Reply::ok());
        assert_eq!(
            replies[2],
            Reply::bulk(value),
            "GET after {switch:?} overtook the SET"
        );
    }
}

/// WATCH lives on a backend connection of the client's own, which a switch of protocol replaces: EXEC
/// must then fail as it does when a watched key changed, never run unwatched.
#[test]
fn a_protocol_switch_between_watch_and_exec_never_runs_exec_unwatched() {
    let (_proxy, port) = Slotline::cluster(shared());
    let key = "{watch-switch}k";
    let mut client = Client::connect(port);
    let mut other = Client::connect(port);
    assert_eq!(client.cmd(&["SET", key, "mine"]), Reply::ok());
    assert_eq!(client.cmd(&["WATCH", key]), Reply::ok());
    assert_eq!(other.cmd(&["SET", key, "theirs"]), Reply::ok());
    assert!(client.cmd(&["HELLO", "3"]).as_array().is_some());
    assert_eq!(client.cmd(&["MULTI"]), Reply::ok());
    assert_eq!(
        client.cmd(&["SET", key, "after"]),
        Reply::Status("QUEUED".into())
    );
    assert_eq!(
        client.cmd(&["EXEC"]),
        Reply::Bulk(None),
        "EXEC ran unwatched"
    );
    assert_eq!(client.cmd(&["GET", key]), Reply::bulk("theirs"));
    // UNWATCH, or a transaction after EXEC, starts afresh.
    assert_eq!(client.cmd(&["MULTI"]), Reply::ok());
    assert_eq!(
        client.cmd(&["SET", key, "later"]),
        Reply::Status("QUEUED".into())
    );
    assert_eq!(client.cmd(&["EXEC"]), Reply::Array(Some(vec![Reply::ok()])));
}

/// A request routed by an old topology that comes back MOVED is resent; a later request of the same
/// client, routed by the new topology, must not run before it (SET k 1; SET k 2 must leave 2).
#[test]
fn a_redirected_request_is_not_overtaken_by_a_later_one_routed_by_the_new_topology() {
    let cluster = RedisCluster::start(ClusterOpts {
        replicas_per_master: 0,
        ..ClusterOpts::default()
    });
    let key = "{overtake}k";
    let slot = key_slot(key.as_bytes());
    let from = cluster.node_for_slot(slot);
    let to = cluster.another_master(from);
    let (port, admin) = (free_port(), free_port());
    let mut yaml = Slotline::cluster_yaml(port, &[from]);
    yaml = yaml.replace("timeout: 1000", "timeout: 10000\n    refresh_interval: 100");
    yaml.push_str(&format!("admin:\n  listen: 127.0.0.1:{admin}\n"));
    let _proxy = Slotline::start(&yaml);
    let refreshes = || {
        let text = http_get(admin, "/metrics").body;
        metric(
            &text,
            "slotline_topology_refreshes_total{pool=\"main\",result=\"ok\"}",
        )
        .unwrap_or(0.0)
    };
    let mut client = Client::connect(port);
    assert!(client.cmd(&["DEL", key]).as_int().is_some());

    // The node holds writes: SET k 1 waits there, routed by the topology that names `from`.
    let paused = cluster.cli(from, &["CLIENT", "PAUSE", "3000", "WRITE"]);
    assert_eq!(paused.trim(), "OK");
    client.send(&["SET", key, "1"]);
    // The (empty) slot moves meanwhile, and slotline learns it.
    cluster.migrate_slot(slot, from, to);
    let before = refreshes();
    wait_for(Duration::from_secs(5), "two topology refreshes", || {
        refreshes() >= before + 2.0
    });
    client.send(&["SET", key, "2"]);
    assert_eq!(client.read_reply(), Reply::ok());
    assert_eq!(client.read_reply(), Reply::ok());
    assert_eq!(cluster.client(to).cmd(&["GET", key]), Reply::bulk("2"));
}

/// A server that accepts and then drops every connection (maxclients reached) is tried again after a
/// growing backoff, not in a tight loop, and the log says so once.
#[test]
fn a_backend_that_accepts_and_fails_at_once_is_retried_with_backoff() {
    let servers = RedisServers::start_with(1, &["--maxclients", "1"]);
    // The one client the server takes.
    let mut hog = servers.client(0);
    let rejected = |hog: &mut Client| -> i64 {
        let info = hog.cmd(&["INFO", "stats"]);
        let text = String::from_utf8_lossy(info.as_bytes().expect("INFO")).into_owned();
        text.lines()
            .find_map(|l| l.strip_prefix("rejected_connections:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("rejected_connections")
    };
    let before = rejected(&mut hog);
    let port = free_port();
    let proxy = Slotline::start(&servers.ketama_yaml(port, ""));
    let mut client = proxy.client();
    // Requests fail at once, with an error that says why.
    let reply = client.cmd(&["GET", "k"]);
    assert!(reply.is_error(), "{reply:?}");
    thread::sleep(Duration::from_secs(3));
    let attempts = rejected(&mut hog) - before;
    // 50 ms doubling to 2 s: about 7 tries in 3 s. A tight loop makes thousands.
    assert!(
        (1..=15).contains(&attempts),
        "{attempts} connection attempts in 3 s"
    );
    let warnings = proxy.log().matches("backend unreachable").count();
    assert_eq!(warnings, 1, "one warning for one cause:\n{}", proxy.log());
}

/// A backend that answers with nested lengths whose sum overflows 64 bits, or a length no reply may
/// have, costs the requests on that connection an error; slotline neither wraps nor panics nor waits
/// for the bytes announced, and the next request finds a fresh connection. (No real Redis sends
/// these: the backend here is a stand-in for a hostile one, answering each request with the next
/// reply of its script.)
#[test]
fn hostile_backend_replies_fail_their_connection_not_the_proxy() {
    let listener = TcpListener::bind(("127.0.0.1", free_port())).expect("bind the backend");
    let backend_port = listener.local_addr().expect("addr").port();
    let script: Vec<Vec<u8>> = vec![
        b"%999999999999999999\r\n".repeat(12),
        b"$99999999999\r\n".to_vec(),
        b"*3\r\n:1\r\n:2\r\n:3\r\n".to_vec(),
    ];
    thread::spawn(move || {
        let mut replies = script.into_iter();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut buf = [0u8; 4096];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let Some(reply) = replies.next() else { return };
                if stream.write_all(&reply).is_err() {
                    break;
                }
            }
        }
    });
    let port = free_port();
    let yaml = format!(
        "pools:\n  p:\n    listen: 127.0.0.1:{port}\n    mode: ketama\n    servers: [\"127.0.0.1:{backend_port}:1 hostile\"]\n"
    );
    let mut proxy = Slotline::start(&yaml);
    let mut client = Client::connect(port);
    // While the connection waits out its backoff, requests fail at once, saying so.
    let mut get = || loop {
        let reply = client.cmd(&["GET", "k"]);
        if !reply.error().is_some_and(|e| e.contains("cannot connect")) {
            return reply;
        }
        thread::sleep(Duration::from_millis(20));
    };
    for _ in 0..2 {
        let reply = get();
        assert!(
            reply.error().is_some_and(|e| e.contains("malformed reply")),
            "{reply:?}"
        );
    }
    assert_eq!(
        get(),
        Reply::Array(Some(vec![Reply::Int(1), Reply::Int(2), Reply::Int(3)]))
    );
    assert!(proxy.is_running());
}

/// A node's reply to the AUTH that opens a connection is bounded tighter than its replies to
/// requests: a stand-in for a hostile node answers AUTH with a string of 400 MB and sends it as
/// fast as it can. slotline refuses it at its length, its memory never grows toward it, and the
/// node counts as unreachable.
#[test]
fn a_node_that_answers_auth_with_an_absurd_reply_is_unreachable_and_costs_no_memory() {
    let listener = TcpListener::bind(("127.0.0.1", free_port())).expect("bind the backend");
    let backend_port = listener.local_addr().expect("addr").port();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                if !matches!(stream.read(&mut buf), Ok(n) if n > 0) {
                    return;
                }
                let _ = stream.write_all(b"$400000000\r\n");
                let chunk = vec![b'x'; 1 << 20];
                for _ in 0..400 {
                    if stream.write_all(&chunk).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let port = free_port();
    let yaml = format!(
        "pools:\n  p:\n    listen: 127.0.0.1:{port}\n    mode: ketama\n    redis_auth: secret\n    \
         connect_timeout: 2000\n    servers: [\"127.0.0.1:{backend_port}:1 hostile\"]\n"
    );
    let mut proxy = Slotline::start(&yaml);
    let mut client = Client::connect(port);
    // redis_auth is the password of the pool's clients as well as the nodes'.
    assert_eq!(client.cmd(&["AUTH", "secret"]), Reply::ok());
    for _ in 0..5 {
        let reply = client.cmd(&["GET", "k"]);
        assert!(
            reply.error().is_some_and(|e| e.contains("cannot connect")),
            "{reply:?}"
        );
        thread::sleep(Duration::from_millis(200));
    }
    let peak_kib = proc_status_kib(proxy.pid(), "VmHWM").expect("VmHWM of slotline");
    assert!(peak_kib < 64 * 1024, "peak RSS {peak_kib} KiB");
    assert!(
        proxy.log().contains("reply to AUTH/SELECT over 4096 bytes"),
        "{}",
        proxy.log()
    );
    assert!(proxy.is_running());
}

/// slotline's command policy is no security boundary for scripts: the nodes' ACL is. With the
/// restricted user config/redis-users.acl describes, a script that calls FLUSHALL is refused by
/// Redis itself, while everything slotline needs (CLUSTER SLOTS, EVAL, WAIT, KEYS) still works.
#[test]
fn a_restricted_acl_user_stops_what_scripts_could_do_past_the_command_policy() {
    let rules = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/redis-users.acl"
    ))
    .expect("config/redis-users.acl");
    let user_line = rules
        .lines()
        .find(|l| l.starts_with("user slotline "))
        .expect("the slotline user line");
    // The same rules on every node, with the default user still on for the test harness.
    let mut extra_args = vec!["--user".to_string()];
    extra_args.extend(user_line.split_whitespace().skip(1).map(|w| {
        if w.starts_with('>') {
            ">s3cret".to_string()
        } else {
            w.to_string()
        }
    }));
    let cluster = RedisCluster::start(ClusterOpts {
        replicas_per_master: 0,
        extra_args,
        ..ClusterOpts::default()
    });
    let port = free_port();
    let seeds: Vec<u16> = cluster.masters().iter().map(|m| m.port).collect();
    let yaml = Slotline::cluster_yaml(port, &seeds)
        + "    redis_username: slotline\n    redis_auth: s3cret\n";
    let _proxy = Slotline::start(&yaml);
    let mut client = Client::connect(port);
    assert!(client.cmd(&["AUTH", "s3cret"]).is_ok());
    assert_eq!(client.cmd(&["SET", "{acl}k", "v"]), Reply::ok());
    let reply = client.cmd(&["EVAL", "return redis.call('FLUSHALL')", "1", "{acl}k"]);
    assert!(
        reply
            .error()
            .is_some_and(|e| e.contains("can't run this command")),
        "{reply:?}"
    );
    let reply = client.cmd(&["EVAL", "return redis.call('SWAPDB', '0', '1')", "0"]);
    assert!(reply.is_error(), "{reply:?}");
    assert_eq!(client.cmd(&["GET", "{acl}k"]), Reply::bulk("v"));
    assert_eq!(
        client.cmd(&["KEYS", "{acl}*"]),
        Reply::Array(Some(vec![Reply::bulk("{acl}k")]))
    );
    assert_eq!(client.cmd(&["WAIT", "0", "100"]), Reply::Int(0));
}
