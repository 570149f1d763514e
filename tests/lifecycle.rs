//! Stopping the real binary as Kubernetes does: SIGTERM under load must lose no request a client has
//! sent, turn readiness off, refuse new connections and exit 0 within `shutdown_grace`; SIGINT stops
//! at once.

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, OnceLock};
use std::thread;
use std::time::Duration;

use support::{
    free_port, http_get, wait_for, wait_ok, Client, ClusterOpts, RedisCluster, Reply, Slotline,
};

const GRACE_MS: u64 = 8000;

fn shared() -> &'static RedisCluster {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| RedisCluster::start(ClusterOpts::default()))
}

fn start(cluster: &RedisCluster) -> Slotline {
    let seeds: Vec<u16> = cluster.masters().iter().map(|m| m.port).collect();
    let yaml = format!(
        "{}admin:\n  listen: 127.0.0.1:{}\nshutdown_grace: {GRACE_MS}\n",
        Slotline::cluster_yaml(free_port(), &seeds),
        free_port()
    );
    let proxy = Slotline::start(&yaml);
    let admin = proxy.admin_port();
    wait_ok(Duration::from_secs(10), "readiness", || {
        let r = http_get(admin, "/readyz");
        (r.status == 200).then_some(()).ok_or(r.body)
    });
    proxy
}

/// What one loaded client saw.
struct Seen {
    sent: u64,
    answered: u64,
    closed_by_proxy: bool,
}

#[test]
fn sigterm_under_pipelined_load_loses_nothing_and_exits_zero() {
    const CLIENTS: usize = 6;
    const BATCH: usize = 200;
    let cluster = shared();
    let mut proxy = start(cluster);
    let port = proxy.port();
    let admin = proxy.admin_port();

    // Once the drain has visibly begun, each client sends two more batches and then nothing.
    let draining = Arc::new(AtomicBool::new(false));
    let started = Arc::new(Barrier::new(CLIENTS + 1));
    let workers: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (draining, started) = (draining.clone(), started.clone());
            thread::spawn(move || {
                let key = format!("drain:{{c{c}}}:n");
                let mut client = Client::connect(port);
                client.cmd(&["DEL", &key]);
                let batch: Vec<[&str; 2]> = vec![["INCR", key.as_str()]; BATCH];
                let mut seen = Seen {
                    sent: 0,
                    answered: 0,
                    closed_by_proxy: false,
                };
                let mut after_drain = 0;
                let mut first = true;
                while after_drain < 2 {
                    if draining.load(Ordering::SeqCst) {
                        after_drain += 1;
                    }
                    seen.sent += BATCH as u64;
                    for reply in client.pipeline(&batch) {
                        seen.answered += 1;
                        assert_eq!(reply, Reply::Int(seen.answered as i64), "client {c}");
                    }
                    if first {
                        started.wait();
                        first = false;
                    }
                }
                // Quiet now: the proxy closes the connection without being asked.
                seen.closed_by_proxy = client.wait_closed(Duration::from_millis(GRACE_MS));
                seen
            })
        })
        .collect();
    started.wait();
    proxy.signal("TERM");
    wait_ok(Duration::from_secs(5), "/readyz 503 after SIGTERM", || {
        let r = http_get(admin, "/readyz");
        (r.status == 503).then_some(()).ok_or(format!("{r:?}"))
    });
    draining.store(true, Ordering::SeqCst);
    wait_for(
        Duration::from_secs(5),
        "new connections to be refused",
        || TcpStream::connect(("127.0.0.1", port)).is_err(),
    );

    for (c, worker) in workers.into_iter().enumerate() {
        let seen = worker.join().expect("client thread");
        assert_eq!(
            seen.answered, seen.sent,
            "client {c}: every request answered"
        );
        assert!(seen.closed_by_proxy, "client {c}: closed once quiet");
        // Redis counted exactly what the client was told.
        let key = format!("drain:{{c{c}}}:n");
        let owner = cluster.node_for_slot(support::key_slot(key.as_bytes()));
        assert_eq!(
            cluster.client(owner).cmd(&["GET", &key]),
            Reply::bulk(seen.sent.to_string())
        );
    }
    let status = proxy
        .wait_exit(Duration::from_millis(GRACE_MS))
        .expect("slotline exits within shutdown_grace");
    assert!(status.success(), "exit status {status}");
    assert!(proxy.log().contains("draining"), "{}", proxy.log());
}

#[test]
fn sigterm_closes_idle_clients_and_exits_zero() {
    let mut proxy = start(shared());
    let mut idle: Vec<Client> = (0..3).map(|_| proxy.client()).collect();
    for client in &mut idle {
        assert_eq!(client.cmd(&["PING"]), Reply::Status("PONG".into()));
    }
    proxy.signal("TERM");
    for client in &mut idle {
        assert!(
            client.wait_closed(Duration::from_millis(GRACE_MS)),
            "idle client closed"
        );
    }
    let status = proxy
        .wait_exit(Duration::from_millis(GRACE_MS))
        .expect("slotline exits within shutdown_grace");
    assert!(status.success(), "exit status {status}");
}

#[test]
fn a_client_that_never_goes_quiet_is_cut_at_the_end_of_the_grace_period() {
    let mut proxy = start(shared());
    let port = proxy.port();
    let stop = Arc::new(AtomicBool::new(false));
    // SIGTERM once the client is being served: connected after the listener closed, it would not be.
    let (first, served) = std::sync::mpsc::channel();
    let chatty = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut client = Client::connect(port);
            let mut answered = 0u64;
            // Requests keep coming, so the client is never quiet; it is answered until the last call.
            while !stop.load(Ordering::SeqCst) {
                // Written by hand: at the end the proxy closes, and a failed write is expected then.
                if client.stream().write_all(b"*1\r\n$4\r\nPING\r\n").is_err() {
                    return answered;
                }
                match client.try_read_reply() {
                    Ok(reply) => {
                        assert_eq!(reply, Reply::Status("PONG".into()));
                        answered += 1;
                        let _ = first.send(answered);
                    }
                    Err(_) => return answered,
                }
                thread::sleep(Duration::from_millis(20));
            }
            answered
        })
    };
    served
        .recv_timeout(Duration::from_secs(10))
        .expect("the client is answered before the drain");
    proxy.signal("TERM");
    // Everything the client had been answered by now (and a little more: the thread may be ahead).
    let before_term = served.try_iter().last().unwrap_or(1);
    let status = proxy
        .wait_exit(Duration::from_millis(GRACE_MS + 5000))
        .expect("slotline exits even though a client keeps talking");
    stop.store(true, Ordering::SeqCst);
    assert!(status.success(), "exit status {status}");
    assert!(
        chatty.join().expect("client thread") > before_term + 1,
        "served while draining"
    );
}

#[test]
fn sigint_stops_at_once() {
    let mut proxy = start(shared());
    let mut client = proxy.client();
    assert_eq!(client.cmd(&["PING"]), Reply::Status("PONG".into()));
    proxy.signal("INT");
    // Well inside the grace period, although a client is still connected.
    let status = proxy
        .wait_exit(Duration::from_millis(GRACE_MS / 2))
        .expect("slotline stops on SIGINT without waiting for clients");
    assert!(status.success(), "exit status {status}");
    assert!(client.is_closed());
}
