//! TLS on both sides, with real TLS everywhere: `redis-server --tls-port` nodes (a 3-master cluster
//! with `tls-cluster yes` and host names, standalone shards that require client certificates, a
//! master with a replica, real sentinels speaking TLS), certificates made by `openssl`, and
//! `redis-cli --tls`, redis-py with `ssl=True` and Python's `ssl` as clients.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::{
    free_port, run_python, wait_for, wait_ok, Certs, Client, ClusterOpts, Pair, RedisCluster,
    RedisServers, ReplicaGroup, Reply, Sentinels, Slotline,
};

/// `redis-cli --tls` against slotline on `port`, verifying it against the test CA.
fn cli(certs: &Certs, client: Option<&Pair>, port: u16, args: &[&str]) -> Output {
    Command::new("redis-cli")
        .args(certs.cli_args(client))
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("run redis-cli")
}

fn cli_out(certs: &Certs, client: Option<&Pair>, port: u16, args: &[&str]) -> String {
    let out = cli(certs, client, port, args);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// The client side of a pool: a plaintext `listen` and a TLS listener of its own on `tls_port`.
fn client_tls(certs: &Certs, tls_port: u16, extra: &str) -> String {
    format!(
        "    tls:\n      listen: 127.0.0.1:{tls_port}\n      cert_file: {}\n      key_file: {}\n{extra}",
        path(&certs.server.cert),
        path(&certs.server.key)
    )
}

/// slotline verifies the nodes against the test CA (and presents `client`'s certificate).
fn backend_tls(certs: &Certs, client: Option<&Pair>) -> String {
    let mut yaml = format!("    backend_tls:\n      ca_file: {}\n", path(&certs.ca));
    if let Some(pair) = client {
        yaml.push_str(&format!(
            "      cert_file: {}\n      key_file: {}\n",
            path(&pair.cert),
            path(&pair.key)
        ));
    }
    yaml
}

#[test]
fn a_tls_cluster_with_host_names_is_served_over_tls_and_plaintext() {
    let certs = Certs::make();
    let cluster = RedisCluster::start(ClusterOpts {
        masters: 3,
        replicas_per_master: 0,
        hostnames: true,
        tls: Some(certs.redis_args(false)),
        ..Default::default()
    });
    let (port, tls_port) = (free_port(), free_port());
    let seeds: String = cluster
        .masters()
        .iter()
        .map(|m| format!("      - 127.0.0.1:{}\n", cluster.tls_port(m.port)))
        .collect();
    let yaml = format!(
        "pools:\n  main:\n    listen: 127.0.0.1:{port}\n    mode: cluster\n    servers:\n{seeds}{}{}",
        client_tls(&certs, tls_port, ""),
        backend_tls(&certs, None)
    );
    let proxy = Slotline::start(&yaml);

    // Over TLS, CLUSTER SLOTS lists the nodes' TLS ports under their host names, and slotline
    // connects to each by name, verifying its certificate for that name.
    let masters = cluster.masters();
    for (i, master) in masters.iter().enumerate() {
        let key = support::key_in_slot("tls", master.slots[0].0);
        assert_eq!(
            cli_out(&certs, None, tls_port, &["SET", &key, &format!("v{i}")]),
            "OK"
        );
        assert_eq!(
            cluster.client(master.port).cmd(&["GET", &key]),
            Reply::Bulk(Some(format!("v{i}").into_bytes())),
            "{key} is on the master that owns its slot"
        );
        let mut plain = Client::connect(port);
        assert_eq!(
            plain.cmd(&["GET", &key]),
            Reply::Bulk(Some(format!("v{i}").into_bytes())),
            "the plaintext listener serves the same pool"
        );
    }
    let backends = proxy.info_field("master_addresses").unwrap_or_default();
    assert!(
        backends.contains(".slotline.test:")
            && backends.contains(&cluster.tls_port(masters[0].port).to_string()),
        "the topology is the TLS ports by host name: {backends}"
    );
    assert_eq!(proxy.info_field("backend_tls").as_deref(), Some("verified"));
    assert_eq!(
        proxy.info_field("tls_listen"),
        Some(format!("127.0.0.1:{tls_port}"))
    );

    // A slot that moves: the MOVED that follows names the new owner's TLS port, and slotline
    // follows it over TLS.
    let (from, to) = (masters[0].port, masters[1].port);
    let slot = masters[0].slots[0].0;
    let key = support::key_in_slot("tls", slot);
    cluster.migrate_slot(slot, from, to);
    assert_eq!(
        cli_out(&certs, None, tls_port, &["GET", &key]),
        "v0",
        "read after its slot moved"
    );
    assert_eq!(
        cli_out(&certs, None, tls_port, &["SET", &key, "moved"]),
        "OK"
    );
    assert_eq!(
        cluster.client(to).cmd(&["GET", &key]),
        Reply::Bulk(Some(b"moved".to_vec()))
    );

    // A real client library with ssl=True.
    assert!(run_python(
        "redis_py_tls.py",
        &[&tls_port.to_string(), &path(&certs.ca)]
    )
    .contains("ok"));
}

/// Under TLS 1.3 a node that wants a client certificate refuses one only after the client's side of
/// the handshake is done. Requests sent meanwhile must be told the node cannot be reached, as when
/// it refuses the TCP connection, not that a connection to it was lost: none of them ran.
#[test]
fn a_node_that_refuses_slotline_without_a_client_certificate_is_unreachable_to_every_request() {
    let certs = Certs::make();
    let shard = RedisServers::start_tls(1, certs.redis_args(true));
    let port = free_port();
    let yaml = format!(
        "pools:\n  shards:\n    listen: 127.0.0.1:{port}\n    mode: ketama\n    servers:\n      - 127.0.0.1:{}:1 s0\n{}",
        shard.tls_port(0),
        backend_tls(&certs, None)
    );
    let proxy = Slotline::start(&yaml);
    let mut client = Client::connect(port);
    // Requests back to back for long enough to span several reconnection attempts (the backoff
    // starts at 50 ms): some of them wait while one is made.
    let (until, mut replies) = (Instant::now() + Duration::from_millis(1500), 0);
    while Instant::now() < until {
        let reply = client.cmd(&["GET", "k"]);
        assert!(
            matches!(&reply, Reply::Error(e) if e.contains("cannot connect")),
            "reply {replies}: {reply:?}"
        );
        replies += 1;
    }
    assert!(replies > 100, "only {replies} replies in 1.5 s");
    // The operator is told why: the node's refusal, not a connection lost.
    let log = proxy.log();
    assert!(
        log.contains("backend unreachable") && log.contains("received fatal alert"),
        "{log}"
    );
}

#[test]
fn shards_and_a_primary_speak_tls_to_nodes_that_require_client_certificates() {
    let certs = Certs::make();
    // Shards that refuse any client without a certificate their CA signed.
    let shards = RedisServers::start_tls(3, certs.redis_args(true));
    let (port, tls_port) = (free_port(), free_port());
    let servers: String = (0..3)
        .map(|i| format!("      - 127.0.0.1:{}:1 s{i}\n", shards.tls_port(i)))
        .collect();
    let yaml = format!(
        "pools:\n  shards:\n    listen: 127.0.0.1:{port}\n    mode: ketama\n    servers:\n{servers}{}{}",
        client_tls(&certs, tls_port, ""),
        backend_tls(&certs, Some(&certs.client))
    );
    let _proxy = Slotline::start(&yaml);
    let mut client = Client::connect(port);
    for i in 0..60 {
        assert!(client.cmd(&["SET", &format!("shard:{i}"), "v"]).is_ok());
    }
    let held: usize = (0..3).map(|i| shards.keys(i, b"shard:*").len()).sum();
    assert_eq!(held, 60, "every key is on one of the shards");
    assert_eq!(cli_out(&certs, None, tls_port, &["GET", "shard:7"]), "v");

    // Without its certificate, slotline cannot reach them: proof that it is what let it in.
    let (port2, tls_port2) = (free_port(), free_port());
    let refused = yaml
        .replace(&format!(":{port}\n"), &format!(":{port2}\n"))
        .replace(&format!(":{tls_port}\n"), &format!(":{tls_port2}\n"))
        .replace(
            &backend_tls(&certs, Some(&certs.client)),
            &backend_tls(&certs, None),
        );
    let _without = Slotline::start(&refused);
    let reply = Client::connect(port2).cmd(&["GET", "shard:7"]);
    assert!(
        matches!(&reply, Reply::Error(e) if e.contains("cannot connect")),
        "nodes that require a client certificate refuse slotline without one: {reply:?}"
    );

    // A master and its replica, replicating over TLS, found by ROLE probes over TLS; both of the
    // pool's listeners (its replica listener too) speak TLS.
    let group = ReplicaGroup::start_tls(2, certs.redis_args(false));
    let (port3, replica_port) = (free_port(), free_port());
    let yaml = format!(
        "pools:\n  main:\n    listen: 127.0.0.1:{port3}\n    mode: primary\n    \
         replica_listen: 127.0.0.1:{replica_port}\n    servers:\n      - 127.0.0.1:{}\n      - 127.0.0.1:{}\n    \
         tls:\n      cert_file: {}\n      key_file: {}\n{}",
        group.tls_port(0),
        group.tls_port(1),
        path(&certs.server.cert),
        path(&certs.server.key),
        backend_tls(&certs, None)
    );
    let _primary = Slotline::start(&yaml);
    assert_eq!(
        cli_out(&certs, None, port3, &["SET", "primary:k", "v"]),
        "OK"
    );
    assert_eq!(
        group.client(0).cmd(&["GET", "primary:k"]),
        Reply::Bulk(Some(b"v".to_vec())),
        "the write went to the master"
    );
    wait_ok(
        Duration::from_secs(10),
        "a read from the replica listener",
        || match cli_out(&certs, None, replica_port, &["GET", "primary:k"]).as_str() {
            "v" => Ok(()),
            other => Err(other.to_string()),
        },
    );
    let mut plaintext = Client::connect(port3);
    plaintext.send(&["PING"]);
    let reply = plaintext.try_read_reply();
    assert!(
        !matches!(reply, Ok(Reply::Status(_))),
        "plaintext on a TLS listener is not served: {reply:?}"
    );
}

#[test]
fn sentinels_over_tls_move_the_master_and_slotline_follows() {
    let certs = Certs::make();
    let group = ReplicaGroup::start_tls(2, certs.redis_args(false));
    let sentinels = Sentinels::start_tls(3, group.tls_port(0), 1000, 1, &certs.conf_lines());
    let port = free_port();
    let addrs: String = sentinels
        .tls_ports()
        .iter()
        .map(|p| format!("        - 127.0.0.1:{p}\n"))
        .collect();
    let yaml = format!(
        "pools:\n  main:\n    listen: 127.0.0.1:{port}\n    mode: primary\n    sentinel:\n      \
         master_name: {}\n      servers:\n{addrs}{}",
        Sentinels::MASTER_NAME,
        backend_tls(&certs, None)
    );
    let proxy = Slotline::start(&yaml);
    let mut client = Client::connect(port);
    assert!(client.cmd(&["SET", "before", "1"]).is_ok());
    assert_eq!(
        proxy.info_field("master"),
        Some(format!("127.0.0.1:{}", group.tls_port(0))),
        "the sentinels name the master's TLS port"
    );

    let mut group = group;
    group.kill(0);
    let promoted = format!("127.0.0.1:{}", group.tls_port(1));
    wait_for(
        Duration::from_secs(30),
        "slotline to follow the promotion",
        || proxy.info_field("master").as_deref() == Some(&promoted),
    );
    wait_ok(
        Duration::from_secs(10),
        "a write to the new master",
        || match Client::connect(port).cmd(&["SET", "after", "2"]) {
            r if r.is_ok() => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    assert_eq!(
        group.client(1).cmd(&["GET", "after"]),
        Reply::Bulk(Some(b"2".to_vec()))
    );
}

#[test]
fn clients_without_a_trusted_certificate_are_refused_and_a_certificate_names_the_user() {
    let certs = Certs::make();
    let shards = RedisServers::start_with(1, &["--requirepass", "s3cret"]);
    let (port, tls_port) = (free_port(), free_port());
    let mutual = format!(
        "      client_ca_file: {}\n      tls_user_from_cert: true\n",
        path(&certs.ca)
    );
    let yaml = format!(
        "pools:\n  shards:\n    listen: 127.0.0.1:{port}\n    mode: ketama\n    redis_auth: s3cret\n    \
         servers:\n      - 127.0.0.1:{}:1 s0\n{}",
        shards.port(0),
        client_tls(&certs, tls_port, &mutual)
    );
    let _proxy = Slotline::start(&yaml);

    // No certificate, or one from a CA slotline does not trust: refused at the handshake.
    for (who, pair) in [
        ("no certificate", None),
        ("a stranger's", Some(&certs.stranger)),
    ] {
        let out = cli(&certs, pair, tls_port, &["PING"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            !text.contains("PONG") && !text.contains("NOAUTH"),
            "a client with {who} got through: {text}"
        );
    }
    // A trusted certificate: its common name is the user, logged in without AUTH.
    assert_eq!(
        cli_out(&certs, Some(&certs.client), tls_port, &["PING"]),
        "PONG"
    );
    let me = cli_out(&certs, Some(&certs.client), tls_port, &["CLIENT", "INFO"]);
    assert!(me.contains(" user=app1 "), "{me}");
    // The plaintext listener still wants the password.
    let reply = Client::connect(port).cmd(&["PING"]);
    assert!(
        matches!(&reply, Reply::Error(e) if e.starts_with("NOAUTH")),
        "{reply:?}"
    );
    let info = cli_out(&certs, Some(&certs.client), tls_port, &["INFO", "slotline"]);
    let failures: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("tls_handshake_failures:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(failures >= 2, "the refused handshakes are counted: {info}");
}

/// Makes `dir/tls.crt` and `dir/tls.key` what a mounted Kubernetes Secret is: symlinks through
/// `..data`, which an update points at a new directory in one rename.
/// With users of the pool's own, the user a certificate names is logged in with that user's ACL
/// rules; a certificate naming no user that is on logs nobody in.
#[test]
fn a_certificate_user_gets_its_acl_rules() {
    let certs = Certs::make();
    let dir = support::TempDir::new("tls-acl");
    let users = dir.write(
        "users.acl",
        "user default off\nuser app1 on >pw1 ~app1:* +@all -@dangerous\n",
    );
    let shards = RedisServers::start(1);
    let (port, tls_port) = (free_port(), free_port());
    let mutual = format!(
        "      client_ca_file: {}\n      tls_user_from_cert: true\n",
        path(&certs.ca)
    );
    let yaml = format!(
        "pools:\n  shards:\n    listen: 127.0.0.1:{port}\n    mode: ketama\n    aclfile: {}\n    \
         servers:\n      - 127.0.0.1:{}:1 s0\n{}",
        path(&users),
        shards.port(0),
        client_tls(&certs, tls_port, &mutual)
    );
    let _proxy = Slotline::start(&yaml);
    let as_app1 = |args: &[&str]| cli_out(&certs, Some(&certs.client), tls_port, args);
    assert_eq!(as_app1(&["ACL", "WHOAMI"]), "app1");
    assert_eq!(as_app1(&["SET", "app1:k", "v"]), "OK");
    assert!(
        as_app1(&["GET", "app2:k"]).contains("NOPERM"),
        "app1's rules apply"
    );
    assert!(as_app1(&["FLUSHALL"]).contains("NOPERM"));
    // app1 leaves the file: its certificate no longer logs anyone in.
    std::fs::write(
        &users,
        "user default off\nuser app2 on >pw2 ~app2:* +@all\n",
    )
    .expect("write");
    wait_for(Duration::from_secs(10), "app1 gone", || {
        as_app1(&["GET", "app1:k"]).contains("NOAUTH")
    });
}

fn mount_secret(dir: &Path, version: &str, pair: &Pair) {
    let versioned = dir.join(version);
    std::fs::create_dir_all(&versioned).expect("create a version dir");
    std::fs::copy(&pair.cert, versioned.join("tls.crt")).expect("copy the certificate");
    std::fs::copy(&pair.key, versioned.join("tls.key")).expect("copy the key");
    let next = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&next);
    std::os::unix::fs::symlink(version, &next).expect("symlink the version");
    std::fs::rename(&next, dir.join("..data")).expect("swap ..data");
    for file in ["tls.crt", "tls.key"] {
        let link = dir.join(file);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{file}"), &link).expect("symlink a file");
        }
    }
}

/// The serial number Python reports for the certificate a pair holds.
fn serial(pair: &Pair) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(&pair.cert)
        .output()
        .expect("run openssl");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_start_matches("serial=")
        .to_string()
}

#[test]
fn certificates_rotate_without_dropping_anyone_and_a_bad_file_keeps_the_old_one() {
    let certs = Certs::make();
    let shards = RedisServers::start(1);
    let secret = support::TempDir::new("secret");
    mount_secret(secret.path(), "v1", &certs.server);
    let renewed = certs.issue("renewed", "redis", Some("IP:127.0.0.1"));
    let tls_port = free_port();
    let yaml = format!(
        "pools:\n  shards:\n    listen: 127.0.0.1:{}\n    mode: ketama\n    servers:\n      - 127.0.0.1:{}:1 s0\n    \
         tls:\n      listen: 127.0.0.1:{tls_port}\n      cert_file: {dir}/tls.crt\n      key_file: {dir}/tls.key\n",
        free_port(),
        shards.port(0),
        dir = secret.path().display()
    );
    let proxy = Slotline::start(&yaml);

    // Clients connect all along (and one stays connected) while the Secret is updated, then
    // updated again with a certificate that does not match its key.
    let ca = path(&certs.ca);
    let port_arg = tls_port.to_string();
    let load = std::thread::spawn(move || run_python("tls_rotation.py", &[&port_arg, &ca, "9"]));
    std::thread::sleep(Duration::from_secs(2));
    mount_secret(secret.path(), "v2", &renewed);
    std::thread::sleep(Duration::from_secs(4));
    let mismatched = Pair {
        cert: certs.server.cert.clone(),
        key: renewed.key.clone(),
    };
    mount_secret(secret.path(), "v3", &mismatched);
    let report: serde_json::Value =
        serde_json::from_str(load.join().expect("the load thread").trim()).expect("JSON report");

    assert_eq!(
        report["errors"],
        serde_json::json!([]),
        "no client saw an error"
    );
    assert!(report["made"].as_u64().unwrap_or(0) > 50, "{report}");
    let seen: Vec<String> = report["serials"]
        .as_array()
        .expect("serials")
        .iter()
        .map(|s| s.as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        seen,
        vec![serial(&certs.server), serial(&renewed)],
        "handshakes got the first certificate, then the renewed one, and kept it when the next files were bad"
    );
    wait_for(
        Duration::from_secs(5),
        "the bad files to be reported",
        || {
            proxy
                .log()
                .contains("cannot be used; the previous settings stay")
        },
    );
}

/// Sends `bytes` to the TLS port and returns whether slotline closed the connection within
/// `within` (reading what it sent until then).
fn closed_within(port: u16, bytes: &[u8], within: Duration) -> bool {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    conn.write_all(bytes).expect("send");
    conn.set_read_timeout(Some(within)).expect("timeout");
    let mut buf = [0u8; 4096];
    let start = Instant::now();
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // an alert
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return start.elapsed() < within,
        }
    }
}

#[test]
fn bad_input_over_tls_costs_only_that_connection() {
    let certs = Certs::make();
    let shards = RedisServers::start(1);
    let tls_port = free_port();
    let yaml = format!(
        "pools:\n  shards:\n    listen: 127.0.0.1:{}\n    mode: ketama\n    servers:\n      - 127.0.0.1:{}:1 s0\n{}",
        free_port(),
        shards.port(0),
        client_tls(&certs, tls_port, "      handshake_timeout: 1000\n")
    );
    let proxy = Slotline::start(&yaml);

    // Slow-loris handshakes: 200 connections that send nothing hold no accept and no one else.
    let stalled: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(("127.0.0.1", tls_port)).expect("connect"))
        .collect();
    assert_eq!(cli_out(&certs, None, tls_port, &["SET", "k", "v"]), "OK");
    assert_eq!(cli_out(&certs, None, tls_port, &["GET", "k"]), "v");
    // ... and each is closed once its handshake time is up.
    for mut conn in stalled {
        conn.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        assert!(
            matches!(conn.read(&mut buf), Ok(0) | Err(_)),
            "a stalled handshake is closed"
        );
    }

    // Plaintext RESP on the TLS port: closed at once.
    assert!(closed_within(
        tls_port,
        b"*1\r\n$4\r\nPING\r\n",
        Duration::from_secs(3)
    ));
    // Half a handshake: a record header announcing a ClientHello that never comes.
    assert!(closed_within(
        tls_port,
        &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01],
        Duration::from_secs(3)
    ));
    // An oversized record (TLS allows 2^14 bytes of plaintext, 2^14 + 2048 of ciphertext).
    let mut huge = vec![0x16, 0x03, 0x03, 0xff, 0xff];
    huge.extend(std::iter::repeat_n(0u8, 1024));
    assert!(closed_within(tls_port, &huge, Duration::from_secs(3)));

    // The proxy is unharmed and counted every one of them.
    assert_eq!(cli_out(&certs, None, tls_port, &["GET", "k"]), "v");
    let failures: u64 = proxy
        .info_field("tls_handshake_failures")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(failures >= 203, "handshake failures counted: {failures}");
}
