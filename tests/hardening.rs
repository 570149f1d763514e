//! What a hostile client, script or backend must not be able to make slotline do: follow a redirect
//! to a host the cluster does not list, run a script twice, hold memory it did not budget, answer
//! requests out of order, or reconnect in a tight loop.

mod support;

use std::io::ErrorKind;
use std::net::TcpListener;
use std::sync::OnceLock;
use std::thread;
use std::time::Duration;

use support::{free_port, key_slot, ClusterOpts, RedisCluster, Reply, Slotline};

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
    let mut client = support::Client::connect(port);
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
    let mut client = support::Client::connect(port);
    let key = "{script-once}counter";
    let owner = cluster.node_for_slot(key_slot(key.as_bytes()));
    let other = cluster
        .masters()
        .iter()
        .map(|m| m.port)
        .find(|&p| p != owner)
        .expect("another master");
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
