//! MULTI/EXEC/DISCARD/WATCH through slotline: a transaction whose keys live on one backend runs there
//! as Redis runs it; one that reaches for another backend is aborted the way Redis aborts (EXECABORT).

mod support;

use support::{free_port, key_slot, Client, RedisCluster, RedisServers, Reply, Slotline};

fn queued() -> Reply {
    Reply::Status("QUEUED".into())
}

fn execabort() -> Reply {
    Reply::Error("EXECABORT Transaction discarded because of previous errors.".into())
}

/// The behaviour a user checks, given two keys on one backend and one key on another.
fn transactions_behave_like_redis(port: u16, same: [&str; 2], elsewhere: &str) {
    let mut client = Client::connect(port);
    let [a, b] = same;
    assert_eq!(
        client.cmd(&["DEL", a, b, elsewhere]).as_int().map(|_| ()),
        Some(())
    );

    assert_eq!(client.cmd(&["MULTI"]), Reply::ok());
    assert_eq!(client.cmd(&["SET", a, "1"]), queued());
    assert_eq!(client.cmd(&["INCR", b]), queued());
    assert_eq!(client.cmd(&["PING"]), queued());
    assert_eq!(client.cmd(&["GET", a]), queued());
    assert_eq!(
        client.cmd(&["EXEC"]),
        Reply::Array(Some(vec![
            Reply::ok(),
            Reply::Int(1),
            Reply::Status("PONG".into()),
            Reply::bulk("1")
        ]))
    );

    // A key on another backend aborts the whole transaction; nothing of it runs.
    assert_eq!(client.cmd(&["MULTI"]), Reply::ok());
    assert_eq!(client.cmd(&["SET", a, "2"]), queued());
    let reply = client.cmd(&["SET", elsewhere, "2"]);
    assert!(
        reply
            .error()
            .is_some_and(|e| e.starts_with("CROSSSLOT") && e.contains("transaction")),
        "{reply:?}"
    );
    assert_eq!(client.cmd(&["EXEC"]), execabort());
    assert_eq!(client.cmd(&["GET", a]), Reply::bulk("1"));
    assert_eq!(client.cmd(&["EXISTS", elsewhere]), Reply::Int(0));

    // Errors while queuing abort, as with Redis; nested MULTI is refused without aborting.
    assert_eq!(client.cmd(&["MULTI"]), Reply::ok());
    assert!(client.cmd(&["MULTI"]).is_error());
    assert!(client.cmd(&["NOSUCHCOMMAND"]).is_error());
    assert_eq!(client.cmd(&["EXEC"]), execabort());
    assert_eq!(client.cmd(&["MULTI"]), Reply::ok());
    assert!(client.cmd(&["GET"]).is_error(), "wrong arity");
    assert_eq!(client.cmd(&["EXEC"]), execabort());
    // What Redis never queues is refused in Redis's words, and dooms the transaction.
    for never in ["SAVE", "SHUTDOWN"] {
        assert_eq!(client.cmd(&["MULTI"]), Reply::ok());
        assert_eq!(client.cmd(&["SET", a, "never"]), queued());
        assert_eq!(
            client.cmd(&[never]),
            Reply::Error("ERR Command not allowed inside a transaction".into())
        );
        assert_eq!(client.cmd(&["EXEC"]), execabort());
    }

    // DISCARD drops what was queued.
    assert_eq!(client.cmd(&["MULTI"]), Reply::ok());
    assert_eq!(client.cmd(&["SET", a, "discarded"]), queued());
    assert_eq!(client.cmd(&["DISCARD"]), Reply::ok());
    assert_eq!(client.cmd(&["GET", a]), Reply::bulk("1"));
    assert_eq!(
        client.cmd(&["EXEC"]),
        Reply::Error("ERR EXEC without MULTI".into())
    );
    assert_eq!(
        client.cmd(&["DISCARD"]),
        Reply::Error("ERR DISCARD without MULTI".into())
    );

    // WATCH: a change by another client makes EXEC fail (nil); without one, EXEC runs.
    let mut other = Client::connect(port);
    assert_eq!(client.cmd(&["WATCH", a]), Reply::ok());
    assert_eq!(other.cmd(&["SET", a, "theirs"]), Reply::ok());
    assert_eq!(client.cmd(&["MULTI"]), Reply::ok());
    assert_eq!(client.cmd(&["SET", a, "mine"]), queued());
    assert_eq!(client.cmd(&["EXEC"]), Reply::Array(None));
    assert_eq!(client.cmd(&["GET", a]), Reply::bulk("theirs"));
    assert_eq!(client.cmd(&["WATCH", a, b]), Reply::ok());
    assert_eq!(client.cmd(&["MULTI"]), Reply::ok());
    assert_eq!(client.cmd(&["SET", a, "mine"]), queued());
    assert_eq!(client.cmd(&["EXEC"]), Reply::Array(Some(vec![Reply::ok()])));
    assert_eq!(client.cmd(&["GET", a]), Reply::bulk("mine"));
    // UNWATCH forgets the watch.
    assert_eq!(client.cmd(&["WATCH", a]), Reply::ok());
    assert_eq!(client.cmd(&["UNWATCH"]), Reply::ok());
    assert_eq!(other.cmd(&["SET", a, "theirs again"]), Reply::ok());
    assert_eq!(client.cmd(&["MULTI"]), Reply::ok());
    assert_eq!(client.cmd(&["SET", a, "mine again"]), queued());
    assert_eq!(client.cmd(&["EXEC"]), Reply::Array(Some(vec![Reply::ok()])));

    // A transaction sent in one write (as client libraries pipeline it) comes back in order, and other
    // clients are served while it is queued.
    // The SET before it runs first (on the shared connection) and the GET after it runs last.
    let replies = client.pipeline(&[
        vec!["SET", b, "1"],
        vec!["MULTI"],
        vec!["INCR", b],
        vec!["INCR", b],
        vec!["EXEC"],
        vec!["GET", b],
    ]);
    assert_eq!(
        replies,
        vec![
            Reply::ok(),
            Reply::ok(),
            queued(),
            queued(),
            Reply::Array(Some(vec![Reply::Int(2), Reply::Int(3)])),
            Reply::bulk("3")
        ]
    );
    assert_eq!(client.cmd(&["MULTI"]), Reply::ok());
    assert_eq!(client.cmd(&["INCR", b]), queued());
    assert_eq!(
        other.cmd(&["GET", b]),
        Reply::bulk("3"),
        "another client meanwhile"
    );
    assert_eq!(
        client.cmd(&["EXEC"]),
        Reply::Array(Some(vec![Reply::Int(4)]))
    );
    assert_eq!(client.cmd(&["DEL", a, b]), Reply::Int(2));
}

#[test]
fn cluster_transactions_run_on_the_master_of_their_keys() {
    let cluster = RedisCluster::start(Default::default());
    let (_proxy, port) = Slotline::cluster(&cluster);
    // Redis Cluster runs a transaction within one slot: two keys with one hash tag, and a key in another
    // slot (of the same master or not).
    let elsewhere = "tx:elsewhere".to_string();
    assert_ne!(key_slot(b"tx"), key_slot(elsewhere.as_bytes()));
    let (a, b) = ("{tx}a", "{tx}b");
    transactions_behave_like_redis(port, [a, b], &elsewhere);
    a_transaction_of_any_length_is_answered_in_place(port, "{tx}long");
}

/// 100,000 queued commands: more than the 65,536 parts a split request may have, which is where the
/// numbering of replies once wrapped. Every reply of EXEC is in place, and the replies around it too.
fn a_transaction_of_any_length_is_answered_in_place(port: u16, key: &str) {
    const QUEUED: usize = 100_000;
    let mut client = Client::connect(port);
    let mut cmds = vec![
        vec!["DEL".to_string(), key.to_string()],
        vec!["MULTI".into()],
    ];
    cmds.extend((0..QUEUED).map(|_| vec!["INCR".to_string(), key.to_string()]));
    cmds.push(vec!["EXEC".into()]);
    cmds.push(vec!["GET".into(), key.to_string()]);
    let replies = client.pipeline(&cmds);
    assert_eq!(replies.len(), QUEUED + 4);
    assert!(replies[0].as_int().is_some(), "{:?}", replies[0]);
    assert_eq!(replies[1], Reply::ok());
    assert!(replies[2..QUEUED + 2].iter().all(|r| *r == queued()));
    let exec = replies[QUEUED + 2].as_array().expect("EXEC's array");
    assert_eq!(exec.len(), QUEUED);
    for (i, reply) in exec.iter().enumerate() {
        assert_eq!(*reply, Reply::Int(i as i64 + 1), "reply {i} of EXEC");
    }
    assert_eq!(replies[QUEUED + 3], Reply::bulk(QUEUED.to_string()));
}

#[test]
fn ketama_transactions_run_on_the_server_of_their_keys() {
    let servers = RedisServers::start(3);
    let port = free_port();
    let yaml = servers.ketama_yaml(port, "");
    let _proxy = Slotline::start(&yaml);
    // Find a key on another server than {t}: try names until one of them refuses to join a
    // transaction with {t}a.
    let mut probe = Client::connect(port);
    let elsewhere = (0..200)
        .map(|i| format!("other{i}"))
        .find(|k| {
            assert_eq!(probe.cmd(&["MULTI"]), Reply::ok());
            assert_eq!(probe.cmd(&["GET", "{t}a"]), queued());
            let apart = probe.cmd(&["GET", k]).is_error();
            let _ = probe.cmd(&["DISCARD"]);
            apart
        })
        .expect("a key on another server");
    transactions_behave_like_redis(port, ["{t}a", "{t}b"], &elsewhere);
}

/// Commands slotline answers itself are queued as Redis queues them, run when EXEC is sent and
/// answered in their places in EXEC's reply: a CLIENT PAUSE in a transaction starts where the
/// transaction ends (its own writes go through, the next client's wait).
#[test]
fn local_commands_in_a_transaction_answer_in_place_at_exec() {
    let cluster = RedisCluster::start(Default::default());
    let (_proxy, port) = Slotline::cluster(&cluster);
    let mut client = Client::connect(port);
    let mut other = Client::connect(port);
    assert!(client.cmd(&["DEL", "{tx}a"]).as_int().is_some());
    let id = client.cmd(&["CLIENT", "ID"]).as_int().expect("an id");

    assert_eq!(client.cmd(&["MULTI"]), Reply::ok());
    assert_eq!(client.cmd(&["CLIENT", "SETNAME", "txn"]), queued());
    assert_eq!(client.cmd(&["SET", "{tx}a", "1"]), queued());
    assert_eq!(client.cmd(&["CLIENT", "PAUSE", "60000", "WRITE"]), queued());
    assert_eq!(client.cmd(&["SLOWLOG", "RESET"]), queued());
    assert_eq!(client.cmd(&["INCR", "{tx}a"]), queued());
    assert_eq!(client.cmd(&["CLIENT", "GETNAME"]), queued());
    let listed = format!("{:?}", other.cmd(&["CLIENT", "LIST"]));
    let line = listed
        .split('\n')
        .find(|l| l.contains(&format!("id={id} ")))
        .unwrap_or_default();
    assert!(
        line.contains(" multi=6 "),
        "queued commands counted: {listed}"
    );
    assert_eq!(
        client.cmd(&["EXEC"]),
        Reply::Array(Some(vec![
            Reply::ok(),
            Reply::ok(),
            Reply::ok(),
            Reply::ok(),
            Reply::Int(2),
            Reply::bulk("txn"),
        ]))
    );
    // The pause began with EXEC: another client's write now waits, reads do not.
    other.send(&["SET", "{tx}a", "other"]);
    assert_eq!(client.cmd(&["GET", "{tx}a"]), Reply::bulk("2"));
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(client.cmd(&["GET", "{tx}a"]), Reply::bulk("2"));
    assert_eq!(client.cmd(&["CLIENT", "UNPAUSE"]), Reply::ok());
    assert_eq!(other.read_reply(), Reply::ok());

    // Only local commands: no node is asked.
    assert_eq!(client.cmd(&["MULTI"]), Reply::ok());
    assert_eq!(client.cmd(&["SLOWLOG", "LEN"]), queued());
    let exec = client.cmd(&["EXEC"]);
    assert!(
        matches!(&exec, Reply::Array(Some(v)) if v.len() == 1 && v[0].as_int().is_some()),
        "{exec:?}"
    );

    // With WATCH, a local command would run even when the transaction does not: refused, and the
    // transaction aborted as Redis aborts on any error while queuing.
    assert_eq!(client.cmd(&["WATCH", "{tx}a"]), Reply::ok());
    assert_eq!(client.cmd(&["MULTI"]), Reply::ok());
    assert!(client.cmd(&["CLIENT", "PAUSE", "10"]).is_error());
    assert_eq!(client.cmd(&["EXEC"]), execabort());
}
