//! The admin listener of the real binary, as a kubelet and Prometheus use it: probes, metrics, and
//! input no HTTP client should send.

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::sync::OnceLock;
use std::time::Duration;

use support::{
    free_port, http_get, http_raw, metric, wait_ok, ClusterOpts, RedisCluster, Reply, Slotline,
};

fn shared() -> &'static RedisCluster {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| RedisCluster::start(ClusterOpts::default()))
}

/// A cluster pool in front of `seeds` with the admin listener on a free port.
fn with_admin(seeds: &[u16]) -> Slotline {
    let yaml = format!(
        "{}admin:\n  listen: 127.0.0.1:{}\n",
        Slotline::cluster_yaml(free_port(), seeds),
        free_port()
    );
    Slotline::start(&yaml)
}

fn seeds(cluster: &RedisCluster) -> Vec<u16> {
    cluster.masters().iter().map(|m| m.port).collect()
}

#[test]
fn probes_and_metrics_with_a_live_cluster() {
    let proxy = with_admin(&seeds(shared()));
    let admin = proxy.admin_port();

    let health = http_get(admin, "/healthz");
    assert_eq!(health.status, 200, "{health:?}");
    wait_ok(Duration::from_secs(10), "/readyz to answer 200", || {
        let ready = http_get(admin, "/readyz");
        (ready.status == 200)
            .then_some(())
            .ok_or(format!("{ready:?}"))
    });

    let metrics = http_get(admin, "/metrics");
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.head.contains("text/plain; version=0.0.4"),
        "{}",
        metrics.head
    );
    for name in [
        "slotline_up 1",
        "# TYPE slotline_client_connections gauge",
        "# TYPE slotline_client_connections_total counter",
        "# TYPE slotline_client_connections_rejected_total counter",
        "# TYPE slotline_requests_total counter",
        "# TYPE slotline_commands_total counter",
        "# TYPE slotline_errors_total counter",
        "# TYPE slotline_request_duration_seconds histogram",
        "# TYPE slotline_backend_request_duration_seconds histogram",
        "# TYPE slotline_redirects_total counter",
        "# TYPE slotline_topology_refreshes_total counter",
        "# TYPE slotline_discovery_updates_total counter",
        "# TYPE slotline_config_reloads_total counter",
        "# TYPE slotline_master_switches_total counter",
        "# TYPE slotline_start_time_seconds gauge",
        "slotline_build_info{version=\"",
    ] {
        assert!(metrics.body.contains(name), "/metrics lacks {name:?}");
    }
    let series = |text: &str, name: &str| {
        metric(text, &format!("{name}{{pool=\"main\"}}"))
            .unwrap_or_else(|| panic!("no {name}{{pool=\"main\"}} in:\n{text}"))
    };
    // The harness made one connection to see the port open; the accept loop may count it only
    // now (under load, after /readyz already answers). The baseline waits for it, so the client
    // below is the only one the counters may add.
    let accepted = wait_ok(
        Duration::from_secs(10),
        "the readiness probe counted",
        || {
            let now = http_get(admin, "/metrics").body;
            let total = series(&now, "slotline_client_connections_total");
            let open = series(&now, "slotline_client_connections");
            (total >= 1.0 && open == 0.0)
                .then_some(total)
                .ok_or(format!("accepted {total}, open {open}"))
        },
    );
    let refreshes = metric(
        &metrics.body,
        "slotline_topology_refreshes_total{pool=\"main\",result=\"ok\"}",
    )
    .unwrap_or(0.0);
    assert!(refreshes >= 1.0, "a topology was learnt: {refreshes}");

    let mut client = proxy.client();
    assert_eq!(client.cmd(&["SET", "admin:k", "v"]), Reply::ok());
    assert_eq!(client.cmd(&["GET", "admin:k"]), Reply::bulk("v"));
    let after = http_get(admin, "/metrics").body;
    assert_eq!(
        series(&after, "slotline_client_connections_total"),
        accepted + 1.0
    );
    assert_eq!(series(&after, "slotline_client_connections"), 1.0);
    // Per request, counted by the session.
    for (name, at_least) in [
        ("slotline_requests_total", 2.0),
        ("slotline_request_duration_seconds_count", 2.0),
        ("slotline_backend_request_duration_seconds_count", 2.0),
        ("slotline_client_received_bytes_total", 20.0),
        ("slotline_client_sent_bytes_total", 10.0),
    ] {
        let value = series(&after, name);
        assert!(value >= at_least, "{name} = {value}");
    }
    let labelled = |text: &str, labels: &str| {
        metric(text, labels).unwrap_or_else(|| panic!("no {labels} in:\n{text}"))
    };
    assert!(
        labelled(
            &after,
            "slotline_commands_total{family=\"string\",pool=\"main\"}"
        ) >= 2.0
    );
    // One error slotline decides, one the backend answers.
    assert!(client.cmd(&["NOSUCHCOMMAND"]).is_error());
    assert!(
        client.cmd(&["INCR", "admin:k"]).is_error(),
        "not an integer"
    );
    let errors = http_get(admin, "/metrics").body;
    for kind in ["proxy", "backend_error"] {
        let series = format!("slotline_errors_total{{kind=\"{kind}\",pool=\"main\"}}");
        assert_eq!(labelled(&errors, &series), 1.0, "{series}");
    }
    assert_eq!(
        labelled(
            &errors,
            "slotline_errors_total{kind=\"timeout\",pool=\"main\"}"
        ),
        0.0
    );

    // Per backend, read from the data path's counters at scrape time.
    let owner = shared().node_for_slot(support::key_slot(b"admin:k"));
    let backend = |name: &str| {
        metric(
            &after,
            &format!("{name}{{backend=\"127.0.0.1:{owner}\",pool=\"main\"}}"),
        )
        .unwrap_or_else(|| panic!("no {name} for the owner of admin:k in:\n{after}"))
    };
    assert!(backend("slotline_backend_requests_total") >= 2.0);
    assert!(backend("slotline_backend_responses_total") >= 2.0);
    assert!(backend("slotline_backend_sent_bytes_total") > 0.0);
    assert!(backend("slotline_backend_received_bytes_total") > 0.0);
    assert!(backend("slotline_backend_connections") >= 1.0);
    assert_eq!(backend("slotline_backend_ejected"), 0.0);
    assert_eq!(backend("slotline_backend_queued_requests"), 0.0);

    // The same proxy seen through INFO, as `redis-cli info` shows it.
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &proxy.port().to_string(), "info"])
        .output()
        .expect("run redis-cli");
    let info = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "# Server",
        "# Clients",
        "connected_clients:2",
        "# Stats",
        "total_connections_received:",
        "total_net_input_bytes:",
        "total_error_replies:",
        "# Slotline",
        "ready:1",
        "pools:1",
        "pool_main:mode=cluster,listen=127.0.0.1:",
        "backends=3",
        "backend_main_0:addr=127.0.0.1:",
        "backend_main_2:addr=127.0.0.1:",
        ",connections=1,requests=",
    ] {
        assert!(info.contains(needle), "INFO lacks {needle:?}:\n{info}");
    }
}

#[test]
fn not_ready_until_a_cluster_pool_has_a_topology() {
    // Nothing listens on the seed: the pool starts, but can route nothing.
    let proxy = with_admin(&[free_port()]);
    let admin = proxy.admin_port();
    let ready = http_get(admin, "/readyz");
    assert_eq!(ready.status, 503, "{ready:?}");
    assert!(
        ready.body.contains("pool main") && ready.body.contains("topology"),
        "the reason names the pool and what it lacks: {ready:?}"
    );
    assert_eq!(
        http_get(admin, "/healthz").status,
        200,
        "alive all the same"
    );
    let metrics = http_get(admin, "/metrics").body;
    assert!(
        metric(
            &metrics,
            "slotline_topology_refreshes_total{pool=\"main\",result=\"error\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "failed refreshes are counted:\n{metrics}"
    );
}

#[test]
fn other_paths_methods_and_garbage() {
    let mut proxy = with_admin(&seeds(shared()));
    let admin = proxy.admin_port();

    assert_eq!(http_get(admin, "/").status, 404);
    assert_eq!(http_get(admin, "/metricsx").status, 404);
    let post = http_raw(
        admin,
        b"POST /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
    )
    .unwrap();
    assert_eq!(post.status, 405);
    assert!(post.head.contains("Allow: GET"), "{}", post.head);
    assert_eq!(
        http_raw(admin, b"DELETE /readyz HTTP/1.1\r\n\r\n")
            .unwrap()
            .status,
        405
    );
    assert_eq!(
        http_get(admin, "/healthz?verbose=1").status,
        200,
        "a query string is ignored"
    );

    for garbage in [
        &b"\x00\x01\x02\xff\xfe\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b"GET /healthz SPDY/3\r\n\r\n",
        b"*1\r\n$4\r\nPING\r\n\r\n\r\n",
    ] {
        let reply = http_raw(admin, garbage).unwrap();
        assert_eq!(reply.status, 400, "{garbage:?}: {reply:?}");
    }
    let huge = format!(
        "GET /metrics HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    // The server may answer and close before it has read everything sent: a reset is fine too.
    if let Ok(reply) = http_raw(admin, huge.as_bytes()) {
        assert_eq!(reply.status, 431, "{reply:?}");
    }
    // Clients that send half a request, or nothing, and hang up.
    for partial in [&b"GET /hea"[..], b""] {
        let mut stream = TcpStream::connect(("127.0.0.1", admin)).unwrap();
        stream.write_all(partial).unwrap();
        drop(stream);
    }
    // More idle connections than the listener serves at once: it closes the surplus and, once the
    // idle ones time out or go away, serves again.
    let idle: Vec<TcpStream> = (0..100)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", admin)).ok())
        .collect();
    drop(idle);

    wait_ok(Duration::from_secs(10), "/healthz after garbage", || {
        http_raw(admin, b"GET /healthz HTTP/1.1\r\n\r\n").and_then(|r| {
            (r.status == 200)
                .then_some(())
                .ok_or(format!("status {}", r.status))
        })
    });
    assert!(proxy.is_running(), "garbage did not kill the process");
}

#[test]
fn json_logs_one_line_per_event_and_none_per_request() {
    let yaml = format!(
        "{}admin:\n  listen: 127.0.0.1:{}\nlog_level: info\n",
        Slotline::cluster_yaml(free_port(), &seeds(shared())),
        free_port()
    );
    let mut proxy = Slotline::start_with_args(&yaml, &["--log-format", "json"]);
    let mut client = proxy.client();
    assert_eq!(client.cmd(&["SET", "log:k", "v"]), Reply::ok());
    let before = proxy.log().lines().count();
    for _ in 0..200 {
        assert_eq!(client.cmd(&["GET", "log:k"]), Reply::bulk("v"));
    }
    drop(client);
    proxy.signal("TERM");
    assert!(proxy.wait_exit(Duration::from_secs(15)).is_some());
    let log = proxy.log();
    let lines: Vec<&str> = log.lines().collect();
    // Start-up, then shutdown: 200 requests added nothing in between.
    let after_requests: Vec<&&str> = lines[before..]
        .iter()
        .filter(|l| !l.contains("draining") && !l.contains("stopped"))
        .collect();
    assert!(
        after_requests.is_empty(),
        "per-request lines: {after_requests:?}"
    );
    for line in &lines {
        // JSON is YAML: the YAML parser reads each line as one object.
        let event: serde_yaml::Value =
            serde_yaml::from_str(line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}"));
        assert!(
            event["level"].is_string() && event["fields"]["message"].is_string(),
            "{line}"
        );
    }
    let listening = lines
        .iter()
        .find(|l| l.contains("\"listening\""))
        .expect("a listening event");
    assert!(
        listening.contains("\"pool\":\"main\""),
        "structured fields: {listening}"
    );
    assert!(
        log.contains("\"version\""),
        "the start-up line names the version"
    );
}

#[test]
fn answers_while_the_data_path_is_saturated() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    // One data-path worker, kept busy by pipelining clients: the admin thread is not behind them.
    let yaml = format!(
        "{}admin:\n  listen: 127.0.0.1:{}\nworkers: 1\n",
        Slotline::cluster_yaml(free_port(), &seeds(shared())),
        free_port()
    );
    let proxy = Slotline::start(&yaml);
    let (port, admin) = (proxy.port(), proxy.admin_port());
    let stop = Arc::new(AtomicBool::new(false));
    let running = Arc::new(AtomicUsize::new(0));
    let load: Vec<_> = (0..8)
        .map(|i| {
            let (stop, running) = (stop.clone(), running.clone());
            std::thread::spawn(move || {
                let mut client = support::Client::connect(port);
                let key = format!("busy:{i}");
                let batch: Vec<[&str; 2]> = vec![["INCR", key.as_str()]; 1000];
                let mut batches = 0u64;
                loop {
                    assert_eq!(client.pipeline(&batch).len(), 1000);
                    batches += 1;
                    if batches == 1 {
                        running.fetch_add(1, Ordering::SeqCst);
                    }
                    if stop.load(Ordering::SeqCst) {
                        return batches;
                    }
                }
            })
        })
        .collect();
    // Probe only once every loader has a batch through, so the worker is busy while the admin answers.
    wait_ok(Duration::from_secs(30), "every loader running", || {
        let n = running.load(Ordering::SeqCst);
        (n == 8).then_some(()).ok_or(format!("{n} of 8"))
    });
    for _ in 0..20 {
        assert_eq!(http_get(admin, "/healthz").status, 200);
        assert_eq!(http_get(admin, "/readyz").status, 200);
        assert!(http_get(admin, "/metrics").body.contains("slotline_up 1"));
    }
    stop.store(true, Ordering::SeqCst);
    for worker in load {
        assert!(worker.join().expect("load thread") > 0, "the load ran");
    }
}

#[test]
fn sharded_pool_backends_and_ejection_in_metrics() {
    let mut servers = support::RedisServers::start(2);
    let (a, b) = (servers.port(0), servers.port(1));
    let yaml = format!(
        "pools:\n  shards:\n    listen: 127.0.0.1:{}\n    mode: ketama\n    auto_eject_hosts: true\n    \
         server_failure_limit: 2\n    server_retry_timeout: 600000\n    timeout: 300\n    servers:\n      \
         - 127.0.0.1:{a}:1 one\n      - 127.0.0.1:{b}:1 two\nadmin:\n  listen: 127.0.0.1:{}\n",
        free_port(),
        free_port()
    );
    let proxy = Slotline::start(&yaml);
    let admin = proxy.admin_port();
    wait_ok(Duration::from_secs(10), "/readyz 200", || {
        let r = http_get(admin, "/readyz");
        (r.status == 200).then_some(()).ok_or(r.body)
    });
    let mut client = proxy.client();
    for i in 0..50 {
        assert_eq!(client.cmd(&["SET", &format!("k{i}"), "v"]), Reply::ok());
    }
    let value = |text: &str, name: &str, port: u16| {
        metric(
            text,
            &format!("{name}{{backend=\"127.0.0.1:{port}\",pool=\"shards\"}}"),
        )
        .unwrap_or_else(|| panic!("no {name} for {port} in:\n{text}"))
    };
    let text = http_get(admin, "/metrics").body;
    // A sharded pool has every series but the cluster-only refreshes and the primary pools' own.
    for name in support::METRIC_NAMES {
        let elsewhere = *name == "slotline_topology_refreshes_total"
            || support::PRIMARY_METRIC_NAMES.contains(name)
            || support::READ_METRIC_NAMES.contains(name);
        if !elsewhere {
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "/metrics lacks {name}"
            );
        }
    }
    let sent = value(&text, "slotline_backend_requests_total", a)
        + value(&text, "slotline_backend_requests_total", b);
    assert!(sent >= 50.0, "{sent}");
    // The static server list is a discovery source too: its first endpoint set is an update.
    assert!(
        metric(&text, "slotline_discovery_updates_total{pool=\"shards\"}")
            .is_some_and(|n| n >= 1.0),
        "discovery updates counted:\n{text}"
    );
    assert_eq!(
        metric(&text, "slotline_discovery_synced{pool=\"shards\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "slotline_discovery_errors_total{pool=\"shards\"}"),
        Some(0.0)
    );

    // Both servers stop answering for a while: a request times out, and is counted as such.
    for port in [a, b] {
        let mut direct = support::Client::connect(port);
        assert_eq!(direct.cmd(&["CLIENT", "PAUSE", "1500", "ALL"]), Reply::ok());
    }
    let reply = client.cmd(&["GET", "k1"]);
    assert!(
        reply.error().is_some_and(|e| e.contains("no reply")),
        "{reply:?}"
    );
    let text = http_get(admin, "/metrics").body;
    assert!(
        metric(
            &text,
            "slotline_errors_total{kind=\"timeout\",pool=\"shards\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "timeouts counted:\n{text}"
    );
    wait_ok(
        Duration::from_secs(10),
        "the servers answer again",
        || match client.cmd(&["GET", "k1"]) {
            Reply::Bulk(_) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );

    // Server b goes away: its failures eject it.
    servers.stop(1);
    wait_ok(Duration::from_secs(20), "b ejected in /metrics", || {
        for i in 0..20 {
            client.cmd(&["GET", &format!("k{i}")]);
        }
        let text = http_get(admin, "/metrics").body;
        let ejected = value(&text, "slotline_backend_ejected", b);
        let errors = metric(
            &text,
            &format!("slotline_backend_errors_total{{backend=\"127.0.0.1:{b}\",kind=\"error\",pool=\"shards\"}}"),
        )
        .unwrap_or(0.0)
            + metric(
                &text,
                &format!("slotline_backend_errors_total{{backend=\"127.0.0.1:{b}\",kind=\"eof\",pool=\"shards\"}}"),
            )
            .unwrap_or(0.0);
        (ejected == 1.0
            && value(&text, "slotline_backend_ejections_total", b) == 1.0
            && errors >= 1.0)
            .then_some(())
            .ok_or(format!("ejected {ejected}, errors {errors}"))
    });
    assert_eq!(
        value(
            &http_get(admin, "/metrics").body,
            "slotline_backend_ejected",
            a
        ),
        0.0
    );
}

#[test]
fn redirects_are_counted_by_kind() {
    // Its own cluster: a slot moves.
    let cluster = RedisCluster::start(ClusterOpts {
        replicas_per_master: 0,
        ..ClusterOpts::default()
    });
    // No periodic refresh during the test: the MOVED below must reach slotline.
    let yaml = format!(
        "{}admin:\n  listen: 127.0.0.1:{}\n",
        Slotline::cluster_yaml(free_port(), &seeds(&cluster)).replace(
            "timeout: 1000\n",
            "timeout: 1000\n    refresh_interval: 600000\n"
        ),
        free_port()
    );
    let proxy = Slotline::start(&yaml);
    let admin = proxy.admin_port();
    let mut client = proxy.client();
    let (ask_key, moved_key) = ("{redir}:ask", "{redir}:moved");
    let slot = support::key_slot(ask_key.as_bytes());
    assert_eq!(client.cmd(&["SET", ask_key, "a"]), Reply::ok());
    assert_eq!(client.cmd(&["SET", moved_key, "m"]), Reply::ok());
    let from = cluster.node_for_slot(slot);
    let to = cluster.another_master(from);

    // Mid-migration with the key already moved: the old owner answers ASK.
    cluster.setslot_importing(slot, to, from);
    cluster.setslot_migrating(slot, from, to);
    assert_eq!(cluster.migrate_keys(slot, from, to), 2);
    assert_eq!(client.cmd(&["GET", ask_key]), Reply::bulk("a"));
    // Done: the old owner answers MOVED until slotline has refreshed its topology.
    cluster.setslot_node(slot, to);
    cluster.wait_slot_owner(slot, to, Duration::from_secs(10));
    assert_eq!(client.cmd(&["GET", moved_key]), Reply::bulk("m"));

    let text = http_get(admin, "/metrics").body;
    let redirects = |kind: &str| {
        metric(
            &text,
            &format!("slotline_redirects_total{{kind=\"{kind}\",pool=\"main\"}}"),
        )
        .unwrap_or_else(|| panic!("no {kind} redirects in:\n{text}"))
    };
    assert!(redirects("ask") >= 1.0, "ASK followed and counted");
    assert!(redirects("moved") >= 1.0, "MOVED followed and counted");
    assert_eq!(
        metric(
            &text,
            "slotline_errors_total{kind=\"redirect_limit\",pool=\"main\"}"
        ),
        Some(0.0)
    );
}

/// Connections that never send a request, or send it a byte at a time, cannot crowd a kubelet probe
/// out: with 64 of them open (the admin listener's limit) and a slow one trickling, /readyz and the
/// twemproxy stats port still answer, and the idle ones are closed soon.
#[test]
fn idle_and_slow_connections_cannot_starve_the_probes() {
    let stats = free_port();
    let yaml = format!(
        "{}admin:\n  listen: 127.0.0.1:{}\nstats_listen: 127.0.0.1:{stats}\n",
        Slotline::cluster_yaml(free_port(), &seeds(shared())),
        free_port()
    );
    let proxy = Slotline::start(&yaml);
    let admin = proxy.admin_port();
    let mut idle: Vec<TcpStream> = (0..64)
        .map(|_| TcpStream::connect(("127.0.0.1", admin)).expect("connect"))
        .collect();
    let mut slow = TcpStream::connect(("127.0.0.1", admin)).expect("connect");
    slow.write_all(b"GET /rea").expect("a first byte");
    for _ in 0..5 {
        let ready = http_get(admin, "/readyz");
        assert_eq!(ready.status, 200, "{ready:?}");
    }
    let json = support::twemproxy_stats(stats);
    assert!(json.get("main").is_some(), "{json}");
    // Idle connections are closed: a read ends instead of blocking.
    use std::io::Read;
    let first = &mut idle[0];
    first
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = [0u8; 16];
    assert!(matches!(first.read(&mut buf), Ok(0) | Err(_)));
    let _ = slow.write_all(b"dyz HTTP/1.1\r\n\r\n");
}
