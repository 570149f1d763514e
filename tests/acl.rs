//! Users in Redis's ACL language, enforced by slotline in front of a real cluster, real shards and a
//! real master with a replica: each user reads and writes its own keys, is refused the others' (split
//! MGET included, EVAL's declared keys, channels), and dangerous commands; the refusals read as the
//! Redis behind would answer them (compared with a redis-server that loads the same file), and land
//! in ACL LOG. Also: redis-cli `--user` and redis-py `username=`, the file rotated under load, a
//! removed user's clients disconnected, and password guessing slowed down for the guesser alone.

mod support;

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use support::{
    free_port, http_get, metric, run_python, wait_for, Client, ClusterOpts, RedisCluster,
    RedisServers, ReplicaGroup, Reply, Slotline, TempDir,
};

const USERS: &str = "\
user default on nopass %R~public:* resetchannels -@all +@read +@connection +acl|whoami
user app1 on >pw1 ~app1:* &app1:* +@all -@dangerous
user app2 on >pw2 %R~shared:* ~app2:* resetchannels -@all +@read +@write
user ops on >opspw ~* &* +@all
";

fn acl_file(dir: &TempDir, text: &str) -> String {
    dir.write("users.acl", text).display().to_string()
}

fn login(port: u16, user: &str, password: &str) -> Client {
    let mut c = Client::connect(port);
    assert_eq!(c.cmd(&["AUTH", user, password]), Reply::ok(), "AUTH {user}");
    c
}

fn error_of(reply: &Reply) -> String {
    reply
        .error()
        .unwrap_or_else(|| panic!("expected an error, got {reply:?}"))
        .to_string()
}

/// A 3-master cluster whose nodes load an ACL file: the default user with everything, and
/// `user` (one ACL file line); with its masters' ports.
fn cluster_with_users(dir: &TempDir, user: &str) -> (RedisCluster, Vec<u16>) {
    let nodes_acl = dir.write(
        "nodes.acl",
        &format!("user default on nopass ~* &* +@all\n{user}\n"),
    );
    let cluster = RedisCluster::start(ClusterOpts {
        replicas_per_master: 0,
        extra_args: vec!["--aclfile".into(), nodes_acl.display().to_string()],
        ..ClusterOpts::default()
    });
    let seeds = cluster.masters().iter().map(|m| m.port).collect();
    (cluster, seeds)
}

const NO_KEY: &str =
    "NOPERM this user has no permissions to access one of the keys used as arguments";
const NO_CHANNEL: &str =
    "NOPERM this user has no permissions to access one of the channels used as arguments";

fn no_command(name: &str) -> String {
    format!("NOPERM this user has no permissions to run the '{name}' command")
}

/// What every mode must enforce, through slotline on `port`. `keys` are three keys of app1's that a
/// cluster places on different masters (so MGET is split).
fn users_hold(port: u16, keys: [&str; 3]) {
    // The restricted default user: reads of public keys only.
    let mut anon = Client::connect(port);
    assert_eq!(anon.cmd(&["GET", "public:x"]), Reply::nil());
    assert_eq!(
        error_of(&anon.cmd(&["SET", "public:x", "1"])),
        no_command("set")
    );
    assert_eq!(error_of(&anon.cmd(&["GET", "app1:x"])), NO_KEY);
    assert_eq!(anon.cmd(&["ACL", "WHOAMI"]), Reply::bulk("default"));

    let mut app1 = login(port, "app1", "pw1");
    assert_eq!(app1.cmd(&["ACL", "WHOAMI"]), Reply::bulk("app1"));
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(app1.cmd(&["SET", key, &i.to_string()]), Reply::ok());
    }
    assert_eq!(
        app1.cmd(&["MGET", keys[0], keys[1], keys[2]]),
        Reply::Array(Some(vec![
            Reply::bulk("0"),
            Reply::bulk("1"),
            Reply::bulk("2")
        ]))
    );
    assert_eq!(error_of(&app1.cmd(&["GET", "app2:x"])), NO_KEY);
    assert_eq!(error_of(&app1.cmd(&["SET", "app2:x", "1"])), NO_KEY);
    assert_eq!(
        error_of(&app1.cmd(&["MGET", keys[0], keys[1], "app2:x"])),
        NO_KEY,
        "every key of a split MGET"
    );
    assert_eq!(
        error_of(&app1.cmd(&["MSET", keys[0], "a", "app2:x", "b"])),
        NO_KEY
    );
    assert_eq!(
        app1.cmd(&["MGET", keys[0]]),
        Reply::Array(Some(vec![Reply::bulk("0")])),
        "a refused MSET wrote nothing"
    );
    let script = "return redis.call('get', KEYS[1])";
    assert_eq!(app1.cmd(&["EVAL", script, "1", keys[1]]), Reply::bulk("1"));
    assert_eq!(
        error_of(&app1.cmd(&["EVAL", script, "1", "app2:x"])),
        NO_KEY
    );
    assert_eq!(error_of(&app1.cmd(&["FLUSHALL"])), no_command("flushall"));
    assert_eq!(
        error_of(&app1.cmd(&["CONFIG", "GET", "maxmemory"])),
        no_command("config|get")
    );
    assert!(app1.cmd(&["PUBLISH", "app1:news", "hi"]).as_int().is_some());
    assert_eq!(
        error_of(&app1.cmd(&["PUBLISH", "app2:news", "hi"])),
        NO_CHANNEL
    );
    let mut sub = login(port, "app1", "pw1");
    assert_eq!(error_of(&sub.cmd(&["SUBSCRIBE", "other"])), NO_CHANNEL);
    assert_eq!(error_of(&sub.cmd(&["PSUBSCRIBE", "app1:*x"])), NO_CHANNEL);
    let confirmed = sub.cmd(&["SUBSCRIBE", "app1:news"]);
    assert_eq!(
        confirmed.as_array().map(|a| a[0].clone()),
        Some(Reply::bulk("subscribe"))
    );

    let mut app2 = login(port, "app2", "pw2");
    assert_eq!(app2.cmd(&["SET", "app2:x", "v"]), Reply::ok());
    assert_eq!(
        app2.cmd(&["GET", "shared:x"]),
        Reply::nil(),
        "read-only keys read"
    );
    assert_eq!(error_of(&app2.cmd(&["SET", "shared:x", "1"])), NO_KEY);
    assert_eq!(error_of(&app2.cmd(&["GET", keys[0]])), NO_KEY);
    assert_eq!(error_of(&app2.cmd(&["DEL", "app2:x", keys[0]])), NO_KEY);
    assert_eq!(
        error_of(&app2.cmd(&["SUBSCRIBE", "app2:x"])),
        no_command("subscribe")
    );
    assert_eq!(app2.cmd(&["GET", "app2:x"]), Reply::bulk("v"));

    // Logging in, as Redis answers it.
    let mut c = Client::connect(port);
    assert_eq!(
        error_of(&c.cmd(&["AUTH", "app1", "nope"])),
        "WRONGPASS invalid username-password pair or user is disabled."
    );
    assert_eq!(
        error_of(&c.cmd(&["AUTH", "ghost", "pw1"])),
        "WRONGPASS invalid username-password pair or user is disabled."
    );
    let hello = c.cmd(&["HELLO", "3", "AUTH", "app2", "pw2"]);
    assert!(hello.error().is_none(), "{hello:?}");
    assert_eq!(c.cmd(&["GET", "app2:x"]), Reply::bulk("v"), "app2's key");
    assert_eq!(c.cmd(&["RESET"]), Reply::Status("RESET".into()));
    assert_eq!(c.cmd(&["ACL", "WHOAMI"]), Reply::bulk("default"));

    // What slotline says of its users (to a user that may ask).
    let mut ops = login(port, "ops", "opspw");
    let list = ops.cmd(&["CLIENT", "LIST"]);
    let list = list.as_str().unwrap_or_default().to_string();
    assert!(
        list.contains(" user=app1 ") && list.contains(" user=app2 "),
        "{list}"
    );
    assert_eq!(
        ops.cmd(&["ACL", "USERS"]),
        Reply::Array(Some(vec![
            Reply::bulk("app1"),
            Reply::bulk("app2"),
            Reply::bulk("default"),
            Reply::bulk("ops")
        ]))
    );
    let log = ops.cmd(&["ACL", "LOG", "50"]);
    let entries = log.as_array().unwrap_or_default();
    let fields = |e: &Reply| -> Vec<String> {
        e.as_array()
            .unwrap_or_default()
            .iter()
            .map(|f| match f {
                Reply::Int(n) => n.to_string(),
                other => other.as_str().unwrap_or_default().to_string(),
            })
            .collect()
    };
    let summary: Vec<(String, String, String)> = entries
        .iter()
        .map(|e| {
            let f = fields(e);
            (f[3].clone(), f[7].clone(), f[9].clone())
        })
        .collect();
    for expected in [
        ("auth", "AUTH", "ghost"),
        ("auth", "AUTH", "app1"),
        ("command", "subscribe", "app2"),
        ("key", keys[0], "app2"),
        ("key", "shared:x", "app2"),
        ("channel", "other", "app1"),
        ("command", "config|get", "app1"),
        ("command", "flushall", "app1"),
        ("key", "app2:x", "app1"),
        ("command", "set", "default"),
    ] {
        let e = (
            expected.0.to_string(),
            expected.1.to_string(),
            expected.2.to_string(),
        );
        assert!(summary.contains(&e), "ACL LOG lacks {e:?}: {summary:?}");
    }
    let first = fields(&entries[0]);
    assert_eq!(
        first.iter().step_by(2).cloned().collect::<Vec<_>>(),
        [
            "count",
            "reason",
            "context",
            "object",
            "username",
            "age-seconds",
            "client-info"
        ]
    );
    assert!(
        error_of(&ops.cmd(&["ACL", "SETUSER", "x", "on"])).contains("refused"),
        "the file is where users change"
    );
    // app2 may not read other users' rules (ACL is @admin).
    assert_eq!(
        error_of(&app2.cmd(&["ACL", "LIST"])),
        no_command("acl|list")
    );
    // CLIENT KILL USER closes that user's clients only.
    let killed = ops.cmd(&["CLIENT", "KILL", "USER", "app2"]);
    assert!(killed.as_int().unwrap_or(0) >= 1, "{killed:?}");
    assert!(
        app2.wait_closed(Duration::from_secs(10)),
        "app2's client closed"
    );
    assert_eq!(
        app1.cmd(&["GET", keys[2]]),
        Reply::bulk("2"),
        "app1's stays"
    );
}

#[test]
fn users_hold_in_front_of_a_cluster_shards_and_a_primary() {
    let dir = TempDir::new("acl");
    let file = acl_file(&dir, USERS);

    let cluster = RedisCluster::start(ClusterOpts {
        replicas_per_master: 0,
        ..ClusterOpts::default()
    });
    let port = free_port();
    let seeds: Vec<u16> = cluster.masters().iter().map(|m| m.port).collect();
    let yaml = Slotline::cluster_yaml(port, &seeds).replace(
        "    servers:\n",
        &format!("    aclfile: {file}\n    servers:\n"),
    );
    let _proxy = Slotline::start(&yaml);
    // Three of app1's keys on three masters: MGET of them is split.
    let keys = ["app1:{a}", "app1:{b}", "app1:{c}"];
    let slots: Vec<u16> = keys
        .iter()
        .map(|k| support::key_slot(k.as_bytes()))
        .collect();
    let owners: std::collections::HashSet<u16> = slots
        .iter()
        .map(|s| {
            cluster
                .masters()
                .iter()
                .find(|m| m.owns(*s))
                .map(|m| m.port)
                .unwrap_or(0)
        })
        .collect();
    assert!(owners.len() >= 2, "the keys live apart: {slots:?}");
    users_hold(port, keys);

    let shards = RedisServers::start(3);
    let port = free_port();
    let _shards_proxy =
        Slotline::start(&shards.ketama_yaml(port, &format!("    aclfile: {file}\n")));
    users_hold(port, keys);

    let group = ReplicaGroup::start(2);
    let port = free_port();
    let yaml = format!(
        "pools:\n  ha:\n    listen: 127.0.0.1:{port}\n    mode: primary\n    probe_interval: 200\n    \
         users:\n{}    servers:\n      - {}\n      - {}\n",
        USERS
            .lines()
            .map(|l| format!("      - \"{l}\"\n"))
            .collect::<String>(),
        group.addr(0),
        group.addr(1)
    );
    let _primary_proxy = Slotline::start(&yaml);
    wait_for(Duration::from_secs(20), "the master found", || {
        login(port, "app1", "pw1").cmd(&["SET", "app1:probe", "1"]) == Reply::ok()
    });
    users_hold(port, keys);
}

/// The refusals read exactly as a redis-server loading the same file answers them.
#[test]
fn refusals_read_as_redis_answers_them() {
    let dir = TempDir::new("acl-compare");
    let file = acl_file(&dir, USERS);
    let direct = RedisServers::start_with(1, &["--aclfile", &file]);
    let shards = RedisServers::start(1);
    let port = free_port();
    let _proxy = Slotline::start(&shards.ketama_yaml(port, &format!("    aclfile: {file}\n")));
    let cases: &[(&str, &[&str])] = &[
        ("default", &["SET", "public:x", "1"]),
        ("default", &["GET", "app1:x"]),
        ("default", &["GET", "public:x"]),
        ("app1", &["GET", "app2:x"]),
        ("app1", &["FLUSHALL"]),
        ("app1", &["CONFIG", "GET", "maxmemory"]),
        ("app1", &["PUBLISH", "x", "y"]),
        ("app1", &["SUBSCRIBE", "nope"]),
        ("app1", &["EVAL", "return 1", "1", "app2:x"]),
        ("app1", &["ACL", "WHOAMI"]),
        ("app1", &["ACL", "DRYRUN", "app2", "SET", "shared:x", "1"]),
        ("app1", &["ACL", "DRYRUN", "app2", "GET", "shared:x"]),
        ("app1", &["ACL", "DRYRUN", "app2", "SUBSCRIBE", "c"]),
        ("app1", &["ACL", "DRYRUN", "nobody", "GET", "x"]),
        ("app1", &["ACL", "DRYRUN", "app2", "nosuchcommand"]),
        ("app1", &["ACL", "GETUSER", "app2"]),
        ("app1", &["ACL", "GETUSER", "nobody"]),
        ("app1", &["ACL", "LIST"]),
        ("app1", &["ACL", "CAT"]),
        ("app1", &["ACL", "CAT", "nosuchcategory"]),
        ("app2", &["SET", "shared:x", "1"]),
        ("app2", &["SET", "shared:x", "1", "GET"]),
        ("app2", &["GETSET", "shared:x", "1"]),
        ("app2", &["EXISTS", "shared:x"]),
        ("app2", &["BITFIELD", "shared:x", "GET", "u8", "0"]),
        ("app2", &["BITFIELD", "shared:x", "SET", "u8", "0", "1"]),
        ("app2", &["DEL", "app2:x", "shared:x"]),
        ("app2", &["LPUSH", "shared:x", "1"]),
        ("app2", &["ACL", "WHOAMI"]),
        ("app2", &["ACL", "LIST"]),
    ];
    let password = |user: &str| match user {
        "app1" => "pw1",
        "app2" => "pw2",
        _ => "",
    };
    for (user, cmd) in cases {
        let mut through = Client::connect(port);
        let mut redis = direct.client(0);
        if *user != "default" {
            assert_eq!(through.cmd(&["AUTH", user, password(user)]), Reply::ok());
            assert_eq!(redis.cmd(&["AUTH", user, password(user)]), Reply::ok());
        }
        assert_eq!(
            through.cmd(cmd),
            redis.cmd(cmd),
            "{user}: {cmd:?} through slotline and from Redis"
        );
    }
}

#[test]
fn redis_cli_and_redis_py_log_in_with_a_user_name() {
    let dir = TempDir::new("acl-clients");
    let file = acl_file(&dir, USERS);
    let shards = RedisServers::start(1);
    let port = free_port();
    let _proxy = Slotline::start(&shards.ketama_yaml(port, &format!("    aclfile: {file}\n")));
    let cli = |args: &[&str]| {
        let out = Command::new("redis-cli")
            .args(["-p", &port.to_string(), "--no-auth-warning"])
            .args(args)
            .output()
            .expect("run redis-cli");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    };
    assert_eq!(
        cli(&["--user", "app1", "--pass", "pw1", "SET", "app1:cli", "v"]),
        "OK"
    );
    assert_eq!(
        cli(&["--user", "app1", "--pass", "pw1", "ACL", "WHOAMI"]),
        "app1"
    );
    assert!(
        cli(&["--user", "app1", "--pass", "pw1", "GET", "app2:cli"]).starts_with("NOPERM"),
        "refused"
    );
    assert!(cli(&["--user", "app1", "--pass", "bad", "PING"]).contains("WRONGPASS"));
    assert_eq!(
        run_python("acl_users.py", &[&port.to_string()]).trim(),
        "ok"
    );
}

#[test]
fn the_file_rotates_under_load_and_removed_users_are_disconnected() {
    let dir = TempDir::new("acl-rotate");
    let base = "user default on nopass ~* &* +@all\n";
    let file = acl_file(
        &dir,
        &format!("{base}user app1 on >old ~app1:* +@all\nuser app2 on >pw2 ~app2:* +@all\n"),
    );
    let shards = RedisServers::start(2);
    let port = free_port();
    let proxy = Slotline::start(&shards.ketama_yaml(port, &format!("    aclfile: {file}\n")));

    // Clients of app1 logged in with the old password keep working through both changes.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let loaders: Vec<_> = (0..4)
        .map(|i| {
            let (stop, done) = (stop.clone(), done.clone());
            thread::spawn(move || {
                let mut c = login(port, "app1", "old");
                let key = format!("app1:load{i}");
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let reply = c.cmd(&["SET", &key, &n.to_string()]);
                    assert_eq!(reply, Reply::ok(), "loader {i}, request {n}");
                    done.fetch_add(1, Ordering::Relaxed);
                }
                n
            })
        })
        .collect();
    let mut app2 = login(port, "app2", "pw2");
    let wait_done = |at_least: u64| {
        wait_for(Duration::from_secs(10), "load to run", || {
            done.load(Ordering::Relaxed) >= at_least
        })
    };
    wait_done(200);

    // A second password: both log in.
    dir.write(
        "users.acl",
        &format!("{base}user app1 on >old >new ~app1:* +@all\nuser app2 on >pw2 ~app2:* +@all\n"),
    );
    wait_for(Duration::from_secs(10), "the new password", || {
        Client::connect(port).cmd(&["AUTH", "app1", "new"]) == Reply::ok()
    });
    assert_eq!(
        Client::connect(port).cmd(&["AUTH", "app1", "old"]),
        Reply::ok()
    );
    let before = done.load(Ordering::Relaxed);
    wait_done(before + 200);

    // The old password goes, and app2 with it.
    dir.write(
        "users.acl",
        &format!("{base}user app1 on >new ~app1:* +@all\n"),
    );
    wait_for(Duration::from_secs(10), "the old password refused", || {
        Client::connect(port)
            .cmd(&["AUTH", "app1", "old"])
            .is_error()
    });
    assert!(
        app2.wait_closed(Duration::from_secs(10)),
        "a removed user's client is disconnected"
    );
    assert!(Client::connect(port)
        .cmd(&["AUTH", "app2", "pw2"])
        .is_error());
    let before = done.load(Ordering::Relaxed);
    wait_done(before + 200);

    // A bad file is reported and changes nothing.
    dir.write("users.acl", "user app1 on >new bogus\n");
    proxy.signal("HUP");
    wait_for(Duration::from_secs(10), "the bad file reported", || {
        proxy.log().contains("bogus")
    });
    assert_eq!(
        Client::connect(port).cmd(&["AUTH", "app1", "new"]),
        Reply::ok()
    );

    stop.store(true, Ordering::Relaxed);
    let total: u64 = loaders.into_iter().map(|l| l.join().expect("loader")).sum();
    assert!(total >= 600, "{total} requests, none failed");
}

#[test]
fn guessing_passwords_is_slow_for_the_guesser_only() {
    let dir = TempDir::new("acl-guess");
    let file = acl_file(&dir, USERS);
    let shards = RedisServers::start(1);
    let (port, admin) = (free_port(), free_port());
    let yaml = format!(
        "{}admin:\n  listen: 127.0.0.1:{admin}\n",
        shards.ketama_yaml(port, &format!("    aclfile: {file}\n"))
    );
    let _proxy = Slotline::start(&yaml);
    const GUESSES: usize = 20;
    let finished = Arc::new(AtomicBool::new(false));
    let guesser = {
        let finished = finished.clone();
        thread::spawn(move || {
            let mut c = Client::connect(port);
            let started = Instant::now();
            for i in 0..GUESSES {
                let reply = c.cmd(&["AUTH", "app1", &format!("guess{i}")]);
                assert!(reply.is_error(), "{reply:?}");
            }
            finished.store(true, Ordering::Relaxed);
            started.elapsed()
        })
    };
    // Another client, meanwhile, is answered as usual: all of its requests before the guesser
    // is through.
    let mut other = login(port, "app1", "pw1");
    wait_for(Duration::from_secs(10), "the guessing to start", || {
        metric(
            &http_get(admin, "/metrics").body,
            "slotline_auth_failures_total{pool=\"shards\"}",
        )
        .unwrap_or(0.0)
            >= 3.0
    });
    for i in 0..200 {
        assert_eq!(
            other.cmd(&["SET", "app1:other", &i.to_string()]),
            Reply::ok()
        );
    }
    assert!(
        !finished.load(Ordering::Relaxed),
        "the guesser's 20 failures take longer than another client's 200 requests"
    );
    let took = guesser.join().expect("guesser");
    // Doubling waits from 2 ms, capped at 500 ms: 20 failures in a row wait at least 6.5 s.
    assert!(
        took >= Duration::from_secs(6),
        "20 failed logins took {took:?}"
    );
    let metrics = http_get(admin, "/metrics").body;
    assert_eq!(
        metric(&metrics, "slotline_auth_failures_total{pool=\"shards\"}"),
        Some(GUESSES as f64)
    );
    assert_eq!(
        metric(
            &metrics,
            "slotline_user_clients{pool=\"shards\",user=\"app1\"}"
        ),
        Some(1.0),
        "the other client, logged in as app1"
    );
    assert!(
        metric(
            &metrics,
            "slotline_user_commands_total{pool=\"shards\",user=\"app1\"}"
        )
        .unwrap_or(0.0)
            >= 201.0
    );
    // One ACL LOG entry counts the guesses; the password is nowhere.
    let log = login(port, "ops", "opspw").cmd(&["ACL", "LOG", "1"]);
    let entry = log.as_array().and_then(|a| a.first()).cloned();
    let fields = entry
        .as_ref()
        .and_then(|e| e.as_array())
        .unwrap_or_default();
    assert_eq!(fields.get(1), Some(&Reply::Int(GUESSES as i64)), "{log:?}");
    assert!(!format!("{log:?}").contains("guess1"));
}

/// `users:` lines in the config change in place when the config is reloaded: connected clients stay
/// (and follow their user's new rules), a removed user's clients are disconnected.
#[test]
fn users_lines_in_the_config_change_in_place() {
    let shards = RedisServers::start(1);
    let port = free_port();
    let config = |lines: &[&str]| {
        let users: String = lines.iter().map(|l| format!("      - \"{l}\"\n")).collect();
        shards.ketama_yaml(port, &format!("    users:\n{users}"))
    };
    let proxy = Slotline::start(&config(&[
        "user app1 on >old ~app1:* +@all",
        "user app2 on >pw2 ~app2:* +@all",
    ]));
    let mut app1 = login(port, "app1", "old");
    let mut app2 = login(port, "app2", "pw2");
    assert_eq!(app1.cmd(&["SET", "app1:k", "1"]), Reply::ok());
    assert_eq!(error_of(&app1.cmd(&["GET", "app3:k"])), NO_KEY);
    std::fs::write(
        proxy.config_path(),
        config(&["user app1 on >old >new ~app1:* ~app3:* +@all"]),
    )
    .expect("rewrite the config");
    wait_for(Duration::from_secs(10), "the new users", || {
        Client::connect(port).cmd(&["AUTH", "app1", "new"]) == Reply::ok()
    });
    assert_eq!(
        app1.cmd(&["GET", "app3:k"]),
        Reply::nil(),
        "the connected client follows its user's new rules"
    );
    assert_eq!(app1.cmd(&["GET", "app1:k"]), Reply::bulk("1"));
    assert!(app2.wait_closed(Duration::from_secs(10)), "app2 removed");
    assert!(proxy.log().contains("pool users changed"));
}

/// A script that declares app1's key and writes another in its slot: slotline sees only the
/// declared one, and only a node that runs it as app1b refuses it.
const REACH: &str =
    "redis.call('SET', KEYS[1], 'v') return redis.call('SET', 'elsewhere:{app1}', 'x')";

/// A cluster whose nodes know app1b (app1's keys and channels only), and slotline in front of it
/// with [`USERS`], app1 running as app1b on the nodes (`backend_users`); slotline's port.
fn backend_users_proxy(dir: &TempDir) -> (RedisCluster, Slotline, u16) {
    let file = acl_file(dir, USERS);
    let (cluster, seeds) =
        cluster_with_users(dir, "user app1b on >b1 ~app1:* &app1:* +@all -@dangerous");
    let port = free_port();
    let yaml = Slotline::cluster_yaml(port, &seeds).replace(
        "    servers:\n",
        &format!(
            "    aclfile: {file}\n    backend_users:\n      app1: {{username: app1b, password: b1}}\n    servers:\n"
        ),
    );
    let proxy = Slotline::start(&yaml);
    (cluster, proxy, port)
}

/// A user with a backend login of its own (`backend_users`) runs as that ACL user on the nodes, so
/// Redis itself refuses what its scripts reach beyond their declared keys; its clients share that
/// login's connections (one per node here), its transactions and subscriptions run as it too, and
/// a user without one runs as the pool's login.
#[test]
fn a_backend_user_makes_the_nodes_enforce_inside_scripts() {
    let dir = TempDir::new("acl-backend");
    let (cluster, _proxy, port) = backend_users_proxy(&dir);
    let mut app1 = login(port, "app1", "pw1");
    let refused = app1.cmd(&["EVAL", REACH, "1", "app1:{app1}"]);
    assert!(
        error_of(&refused).contains("can't access at least one of the keys"),
        "the node refuses app1's script: {refused:?}"
    );
    // Its own keys, in and out of scripts, as before.
    assert_eq!(app1.cmd(&["SET", "app1:{b}", "1"]), Reply::ok());
    let own = app1.cmd(&["EVAL", "return redis.call('GET', KEYS[1])", "1", "app1:{b}"]);
    assert_eq!(own, Reply::Bulk(Some(b"1".to_vec())));
    // In a transaction (the client's own connection), the same.
    assert_eq!(app1.cmd(&["MULTI"]), Reply::ok());
    assert_eq!(
        app1.cmd(&["EVAL", REACH, "1", "app1:{app1}"]),
        Reply::Status("QUEUED".into())
    );
    let exec = app1.cmd(&["EXEC"]);
    let first = exec.as_array().and_then(|a| a.first()).cloned();
    assert!(
        first
            .as_ref()
            .and_then(Reply::error)
            .is_some_and(|e| e.contains("can't access")),
        "EXEC runs the script as app1b: {exec:?}"
    );

    // ops has no login of its own: the pool's (the nodes' default user) runs its script.
    let mut ops = login(port, "ops", "opspw");
    assert_eq!(
        ops.cmd(&["EVAL", REACH, "1", "app1:{app1}"]),
        Reply::ok(),
        "ops runs as the pool's login"
    );

    // Ten app1 clients: on every node, their commands share app1b's one connection (the
    // transaction's and the subscriber's are their own).
    let mut clients: Vec<Client> = (0..8).map(|_| login(port, "app1", "pw1")).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        for k in 0..6 {
            let key = format!("app1:{{{i}-{k}}}");
            assert_eq!(c.cmd(&["SET", &key, "v"]), Reply::ok());
        }
    }
    let mut sub = login(port, "app1", "pw1");
    let confirmed = sub.cmd(&["SUBSCRIBE", "app1:news"]);
    assert!(confirmed.as_array().is_some(), "subscribed: {confirmed:?}");
    let mut shared_total = 0;
    let mut subscribers = 0;
    for m in cluster.masters() {
        let list = cluster.client(m.port).cmd(&["CLIENT", "LIST"]);
        let list = list.as_str().expect("CLIENT LIST").to_string();
        let app1b: Vec<&str> = list
            .lines()
            .filter(|l| l.contains(" user=app1b "))
            .collect();
        let shared = app1b
            .iter()
            .filter(|l| l.contains(" cmd=set ") || l.contains(" cmd=eval "))
            .count();
        assert!(shared <= 1, "node {}: {app1b:#?}", m.port);
        shared_total += shared;
        subscribers += app1b
            .iter()
            .filter(|l| l.contains(" cmd=subscribe "))
            .count();
    }
    assert!(
        shared_total >= 3,
        "app1's commands ran as app1b on every node"
    );
    assert_eq!(subscribers, 1, "the subscription runs as app1b");
}

/// `node_logins`: a pool without users of its own lets clients log in as the nodes' users. A
/// master checks the password; the client's commands then run as that user on every node, so the
/// nodes' ACL applies to it, inside scripts too (`redis.acl_check_cmd`), as on one Redis.
#[test]
fn node_logins_run_a_client_as_the_node_user_it_logged_in_as() {
    let dir = TempDir::new("acl-node-logins");
    let (_cluster, seeds) = cluster_with_users(
        &dir,
        "user bob on >123 ~x* +@scripting +@transaction +set +get",
    );
    let port = free_port();
    let yaml = format!(
        "{}    node_logins: true\n",
        Slotline::cluster_yaml(port, &seeds)
    );
    let _proxy = Slotline::start(&yaml);
    let nodes_error = |reply: Reply| error_of(&reply);

    // AUTH and a command bob may not run, in one write: the command runs as bob.
    let mut bob = Client::connect(port);
    bob.send_raw(b"AUTH bob 123\r\nHSET x:1 f 1\r\n");
    assert_eq!(bob.read_reply(), Reply::ok());
    assert_eq!(nodes_error(bob.read_reply()), no_command("hset"));
    // Its keys on every master (20 keys over 3 masters), and only its keys.
    for i in 0..20 {
        let key = format!("x:{i}");
        assert_eq!(bob.cmd(&["SET", &key, "v"]), Reply::ok(), "{key}");
    }
    assert_eq!(nodes_error(bob.cmd(&["SET", "y", "v"])), NO_KEY);
    // Inside a script, the node asks about bob.
    let check = |cmd: &str| format!("return redis.acl_check_cmd('{cmd}', KEYS[1], 'v')");
    assert_eq!(bob.cmd(&["EVAL", &check("set"), "1", "x:1"]), Reply::Int(1));
    assert_eq!(bob.cmd(&["EVAL", &check("hset"), "1", "x:1"]), Reply::nil());
    // A transaction runs as bob too.
    assert_eq!(bob.cmd(&["MULTI"]), Reply::ok());
    assert_eq!(
        bob.cmd(&["SET", "x:1", "tx"]),
        Reply::Status("QUEUED".into())
    );
    assert_eq!(bob.cmd(&["EXEC"]), Reply::Array(Some(vec![Reply::ok()])));
    let info = bob.cmd(&["CLIENT", "INFO"]);
    assert!(
        matches!(&info, Reply::Bulk(Some(line)) if String::from_utf8_lossy(line).contains(" user=bob ")),
        "{info:?}"
    );
    // A wrong password is the node's WRONGPASS, and the client stays who it was.
    assert!(nodes_error(bob.cmd(&["AUTH", "bob", "wrong"])).starts_with("WRONGPASS"));
    assert_eq!(bob.cmd(&["GET", "x:1"]), Reply::bulk("tx"));
    assert_eq!(
        nodes_error(bob.cmd(&["HSET", "x:1", "f", "1"])),
        no_command("hset")
    );
    let mut nobody = Client::connect(port);
    assert!(nodes_error(nobody.cmd(&["AUTH", "nobody", "x"])).starts_with("WRONGPASS"));
    // HELLO with AUTH logs in the same way and answers as HELLO; a refused one changes nothing.
    let mut hello = Client::connect(port);
    hello.send_raw(
        b"HELLO 2 AUTH bob wrong\r\nHELLO 2 SETNAME AUTH AUTH bob 123\r\nHSET x:1 f 1\r\n",
    );
    assert!(nodes_error(hello.read_reply()).starts_with("WRONGPASS"));
    let reply = hello.read_reply();
    assert!(
        reply
            .as_array()
            .is_some_and(|fields| fields.contains(&Reply::bulk("proto"))),
        "{reply:?}"
    );
    assert_eq!(nodes_error(hello.read_reply()), no_command("hset"));
    // (A name that reads AUTH is a name.)
    assert_eq!(hello.cmd(&["CLIENT", "GETNAME"]), Reply::bulk("AUTH"));
    // Other clients are the pool's login, as before.
    assert_eq!(nobody.cmd(&["HSET", "h", "f", "1"]), Reply::Int(1));

    // Without node_logins, slotline's own users are the only ones.
    let port = free_port();
    let _plain = Slotline::start(&Slotline::cluster_yaml(port, &seeds));
    let mut client = Client::connect(port);
    assert!(error_of(&client.cmd(&["AUTH", "bob", "123"])).starts_with("WRONGPASS"));
}

#[test]
fn a_subscribed_client_logs_in_as_another_node_user_only_once_unsubscribed() {
    // Its subscriber connections are logged in as who it was, and its next subscriptions would go
    // on them: the nodes would check them against the wrong user.
    let dir = TempDir::new("acl-node-login-subscribed");
    let (_cluster, seeds) = cluster_with_users(&dir, "user bob on >123 resetchannels &x* +@all");
    let port = free_port();
    let yaml = format!(
        "{}    node_logins: true\n",
        Slotline::cluster_yaml(port, &seeds)
    );
    let _proxy = Slotline::start(&yaml);
    // RESP3: a subscribed client may send AUTH, and Redis would check its next subscriptions as
    // the new user. slotline refuses the AUTH instead, and the client stays who it was.
    let mut client = Client::connect(port);
    assert!(client.cmd(&["HELLO", "3"]).as_array().is_some());
    assert!(!client.cmd(&["SUBSCRIBE", "y"]).is_error());
    let refused = error_of(&client.cmd(&["AUTH", "bob", "123"]));
    assert!(refused.contains("UNSUBSCRIBE first"), "{refused}");
    // Still the pool's login, which reads any key (bob reads none).
    assert_eq!(client.cmd(&["GET", "y:1"]), Reply::nil());
    assert!(!client.cmd(&["SUBSCRIBE", "y2"]).is_error());

    // Unsubscribed, it logs in, and the nodes check its subscriptions as bob.
    client.send(&["UNSUBSCRIBE"]);
    for _ in 0..2 {
        assert!(!client.read_reply().is_error());
    }
    assert_eq!(client.cmd(&["AUTH", "bob", "123"]), Reply::ok());
    assert_eq!(error_of(&client.cmd(&["GET", "y:1"])), NO_KEY);
    assert_eq!(error_of(&client.cmd(&["SUBSCRIBE", "y"])), NO_CHANNEL);
    assert!(!client.cmd(&["SUBSCRIBE", "x1"]).is_error());
}

#[test]
fn a_client_that_logs_in_again_runs_as_its_new_backend_login() {
    // app1 runs as app1b on the nodes (`backend_users`), ops as the pool's login, which may write
    // anywhere. A transaction goes on a connection of the client's own, logged in as who the client
    // was when it was opened: one that outlived a login would run the next user's transactions as
    // the last one's.
    let dir = TempDir::new("acl-login-again");
    let (_cluster, _proxy, port) = backend_users_proxy(&dir);
    let transaction = |client: &mut Client| {
        assert_eq!(client.cmd(&["MULTI"]), Reply::ok());
        assert_eq!(
            client.cmd(&["EVAL", REACH, "1", "app1:{app1}"]),
            Reply::Status("QUEUED".into())
        );
        let exec = client.cmd(&["EXEC"]);
        exec.as_array()
            .and_then(|replies| replies.first().cloned())
            .unwrap_or_else(|| panic!("EXEC: {exec:?}"))
    };
    let refused_by_app1b =
        |reply: &Reply| reply.error().is_some_and(|e| e.contains("can't access"));

    let mut client = login(port, "ops", "opspw");
    assert_eq!(
        transaction(&mut client),
        Reply::ok(),
        "ops: the pool's login"
    );
    // The same connection logs in as app1: its transactions are app1b's from now on.
    assert_eq!(client.cmd(&["AUTH", "app1", "pw1"]), Reply::ok());
    let as_app1 = transaction(&mut client);
    assert!(
        refused_by_app1b(&as_app1),
        "app1's transaction: {as_app1:?}"
    );
    // And back: the pool's login again, not app1b.
    assert_eq!(client.cmd(&["AUTH", "ops", "opspw"]), Reply::ok());
    assert_eq!(transaction(&mut client), Reply::ok(), "ops again");

    // Subscribed (RESP3 may send AUTH then), it stays who it is until it unsubscribes.
    assert!(client.cmd(&["HELLO", "3"]).as_array().is_some());
    assert!(!client.cmd(&["SUBSCRIBE", "app1:news"]).is_error());
    let refused = error_of(&client.cmd(&["AUTH", "app1", "pw1"]));
    assert!(refused.contains("UNSUBSCRIBE first"), "{refused}");
    assert_eq!(client.cmd(&["ACL", "WHOAMI"]), Reply::bulk("ops"));
    client.send(&["UNSUBSCRIBE"]);
    assert!(!client.read_reply().is_error());
    assert_eq!(client.cmd(&["AUTH", "app1", "pw1"]), Reply::ok());
    assert_eq!(client.cmd(&["ACL", "WHOAMI"]), Reply::bulk("app1"));
}
