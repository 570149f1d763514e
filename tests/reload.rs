//! Config reload through the real binary: a change of the config file, or SIGHUP, adds, removes and
//! changes pools while clients of the pools that did not change carry on, on the same connections
//! (and clients of a pool whose servers alone changed follow them); an invalid new config is refused
//! and the running one stays.

mod support;

use std::fs;
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use support::{free_port, wait_for, Client, RedisServers, Reply, Slotline};

const WAIT: Duration = Duration::from_secs(20);

fn pool(name: &str, port: u16, server_port: u16) -> String {
    format!("  {name}:\n    listen: 127.0.0.1:{port}\n    mode: ketama\n    servers:\n      - 127.0.0.1:{server_port}:1 {name}-0\n")
}

fn keys_on(servers: &RedisServers, index: usize) -> i64 {
    servers
        .client(index)
        .cmd(&["DBSIZE"])
        .as_int()
        .unwrap_or(-1)
}

fn set(client: &mut Client, key: &str) {
    let reply = client.cmd(&["SET", key, "v"]);
    assert!(reply.is_ok(), "SET {key}: {reply:?}");
}

#[test]
fn pools_are_added_removed_and_changed_without_dropping_unaffected_clients() {
    let servers = RedisServers::start(3);
    let (a, b, c, d) = (free_port(), free_port(), free_port(), free_port());
    let proxy = Slotline::start(&format!(
        "pools:\n{}{}{}",
        pool("a", a, servers.port(0)),
        pool("b", b, servers.port(1)),
        pool("d", d, servers.port(0))
    ));
    let mut client_a = Client::connect(a);
    let mut client_b = Client::connect(b);
    set(&mut client_a, "a:1");
    set(&mut client_b, "b:1");
    assert_eq!((keys_on(&servers, 0), keys_on(&servers, 1)), (1, 1));

    // The file changes (as a mounted ConfigMap does): b moves to server 2, c is added, d removed.
    fs::write(
        proxy.config_path(),
        format!(
            "pools:\n{}{}{}",
            pool("a", a, servers.port(0)),
            pool("b", b, servers.port(2)),
            pool("c", c, servers.port(0))
        ),
    )
    .expect("write the config");
    wait_for(WAIT, "pool c to listen", || {
        TcpStream::connect(("127.0.0.1", c)).is_ok()
    });
    wait_for(WAIT, "pool d to stop listening", || {
        TcpStream::connect(("127.0.0.1", d)).is_err()
    });
    // Unaffected clients carry on on the same connections.
    set(&mut client_a, "a:2");
    assert_eq!(client_a.cmd(&["GET", "a:1"]), Reply::bulk("v"));
    // Only b's servers changed: its connected client follows them, as do new connections. The
    // pool takes the new list from its discovery task, a moment after pool c listens: a first try
    // may still reach the old server.
    wait_for(WAIT, "b's connected client to reach the new server", || {
        set(&mut client_b, "b:2");
        keys_on(&servers, 2) == 1
    });
    let on_old = keys_on(&servers, 1);
    set(&mut Client::connect(b), "b:3");
    set(&mut client_b, "b:4");
    assert_eq!(keys_on(&servers, 2), 3);
    assert_eq!(
        keys_on(&servers, 1),
        on_old,
        "nothing more went to b's old server"
    );
    set(&mut Client::connect(c), "c:1");
    assert_eq!(keys_on(&servers, 0), 3);

    // An invalid config is refused; everything keeps serving.
    fs::write(
        proxy.config_path(),
        "pools:\n  a:\n    listen: 127.0.0.1:1\n    mode: ketama\n",
    )
    .expect("write the config");
    wait_for(WAIT, "the invalid config to be rejected", || {
        proxy.log().contains("new configuration rejected")
    });
    set(&mut client_a, "a:3");
    set(&mut Client::connect(c), "c:2");
    assert!(TcpStream::connect(("127.0.0.1", d)).is_err());

    // SIGHUP reloads too (and does not stop the process, its default action).
    fs::write(
        proxy.config_path(),
        format!(
            "pools:\n{}{}",
            pool("a", a, servers.port(0)),
            pool("b", b, servers.port(2))
        ),
    )
    .expect("write the config");
    wait_for(WAIT, "pool c to stop listening", || {
        TcpStream::connect(("127.0.0.1", c)).is_err()
    });
    let status = Command::new("kill")
        .args(["-HUP", &proxy.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    wait_for(WAIT, "the SIGHUP reload", || proxy.log().contains("SIGHUP"));
    set(&mut client_a, "a:4");
    assert_eq!(client_a.cmd(&["GET", "a:1"]), Reply::bulk("v"));
}
