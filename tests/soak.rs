//! Fault-injection soak: 64 clients pipeline a mix of commands through slotline (a Redis Cluster
//! pool, a Sentinel-watched primary pool, and a ketama pool over "pods" found through the fake
//! Kubernetes API) while a chaos loop drops backend connections, fails a cluster master over,
//! migrates slots, stops a node for longer than `timeout`, fails the primary over with Sentinel,
//! moves a pod to a new IP, and crashes a master (then restarts it).
//!
//! Every value names its client and request, and each client keeps a model of its own keys, so every
//! reply is checked: it answers that very request (never another client's, never a stale value,
//! never one twice), errors are only those a fault explains, and at the end every acknowledged write
//! is there (apart from writes Redis itself loses in a crash, which are counted). slotline must not
//! panic, no client may wait for a reply longer than `IO_TIMEOUT`, and its RSS must stay bounded.
//!
//! Short mode (the default, in `cargo test`): one round of every fault. `SOAK_ROUNDS=N` runs N
//! rounds, and `SOAK_REQUESTS=N` more until N requests were answered (benches/soak.sh: 10 rounds,
//! at least 1,000,000 requests).

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use support::{
    cluster_port, free_port, proc_status_kib, wait_for, wait_ok, Client, ClusterOpts, KubeApi,
    PodEndpoint, RedisCluster, RedisPod, ReplicaGroup, Reply, Sentinels, Slice, Slotline, TempDir,
};

const CLUSTER_CLIENTS: usize = 40;
const PRIMARY_CLIENTS: usize = 12;
const POD_CLIENTS: usize = 12;
/// Requests in one pipeline, at most.
const DEPTH: usize = 8;
/// Plain keys each client owns (spread over slots and shards).
const KEYS: usize = 8;
/// slotline's RSS may not exceed this at any time (68 clients: a few MB are expected).
const RSS_BOUND_KB: u64 = 128 * 1024;
const NS: &str = "soak";

/// A count from the environment, else `default`.
fn from_env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

/// Which pool a client talks to: what it may send, and what errors its faults explain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Pool {
    Cluster,
    Primary,
    Pods,
}

/// State shared by the clients and the chaos loop.
struct Shared {
    stop: AtomicBool,
    /// Crashes so far: a cluster write acknowledged before a crash may be gone after it.
    crashes: AtomicU64,
    /// Pod moves so far: while a pod is away its keys are served by the other pods (off the ring,
    /// as with twemproxy's `auto_eject_hosts`), and once it is back, writes made meanwhile are
    /// shadowed by its older values (README, Kubernetes discovery).
    moves: AtomicU64,
    /// A pod is moving: its keys' placement changes twice (away, back), each time a read may find
    /// an older value.
    moving: AtomicBool,
    /// Requests answered, all clients together.
    answered: AtomicU64,
    /// Once set, every reply must be a success: the faults are over.
    quiet: AtomicBool,
}

impl Shared {
    /// Events so far that may lose acknowledged writes of `pool`'s keys.
    fn losses(&self, pool: Pool) -> u64 {
        match pool {
            Pool::Cluster => self.crashes.load(Ordering::Relaxed),
            // While moving, every read may find another pod's older value: a number no write was
            // acknowledged under. After it, each key once more (the pod is back with its own).
            Pool::Pods if self.moving.load(Ordering::Relaxed) => {
                self.moves.fetch_add(1, Ordering::Relaxed) + 1
            }
            Pool::Pods => self.moves.load(Ordering::Relaxed),
            Pool::Primary => 0,
        }
    }
}

/// What a read may return for one key.
struct KeyModel {
    /// The last acknowledged value (`None`: never written), and writes since whose outcome is unknown
    /// (an error reply: the node may still have executed it, say once it resumes after SIGSTOP).
    possible: Vec<Option<String>>,
    /// Every value ever sent for the key: after a crash, any of them (or none) may be what survived.
    history: HashSet<String>,
    /// `crashes` when the key was last acknowledged.
    acked_in: u64,
}

impl Default for KeyModel {
    fn default() -> KeyModel {
        KeyModel {
            possible: vec![None],
            history: HashSet::new(),
            acked_in: 0,
        }
    }
}

impl KeyModel {
    fn acked(&mut self, value: &str, crashes: u64) {
        self.possible = vec![Some(value.to_string())];
        self.history.insert(value.to_string());
        self.acked_in = crashes;
    }

    fn unknown(&mut self, value: &str) {
        self.possible.push(Some(value.to_string()));
        self.history.insert(value.to_string());
    }

    /// Checks a read; `Ok(true)` when it is explained only by a crash losing writes.
    /// `crashes`: the loss events so far; `sent`: those when the read was sent.
    fn read(&mut self, got: Option<&str>, crashes: u64, sent: u64) -> Result<bool, String> {
        let got = got.map(str::to_string);
        if self.possible.contains(&got) {
            return Ok(false);
        }
        let survived = got.as_ref().is_none_or(|v| self.history.contains(v));
        if crashes > self.acked_in && survived {
            self.possible = vec![got];
            self.acked_in = sent;
            return Ok(true);
        }
        Err(format!("read {got:?}, expected one of {:?}", self.possible))
    }
}

/// An INCR counter: the last acknowledged value and INCRs of unknown outcome since.
#[derive(Default)]
struct Counter {
    value: i64,
    unknown: i64,
    acked_in: u64,
}

impl Counter {
    fn incremented(&mut self, got: i64, crashes: u64, sent: u64) -> Result<bool, String> {
        let fine = got > self.value && got <= self.value + 1 + self.unknown;
        // A counter that lost writes, or one read from where an older copy of it lives (a pod back
        // on the ring), may be anything.
        let crash = crashes > self.acked_in && got >= 1;
        if !fine && !crash {
            return Err(format!(
                "INCR answered {got} after {} ({} of unknown outcome)",
                self.value, self.unknown
            ));
        }
        self.value = got;
        self.acked_in = sent;
        Ok(!fine)
    }
}

/// One request of a pipeline (MULTI/EXEC is one, of four commands), with what it wrote.
enum Op {
    Set(String, String),
    Get(String),
    Incr(String),
    MGet(Vec<String>),
    MSet(Vec<(String, String)>),
    /// A script that writes its key and returns its argument: the reply names this request.
    Eval(String, String),
    /// MULTI, SET key value, INCR counter, EXEC.
    Multi(String, String, String),
    /// RPUSH list value, BLPOP list 1.
    PushPop(String, String),
    Publish(String, String),
}

const SCRIPT: &str = "redis.call('SET', KEYS[1], ARGV[1]) return ARGV[1]";

impl Op {
    fn commands(&self) -> Vec<Vec<String>> {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        match self {
            Op::Set(k, v) => vec![s(&["SET", k, v])],
            Op::Get(k) => vec![s(&["GET", k])],
            Op::Incr(k) => vec![s(&["INCR", k])],
            Op::MGet(keys) => vec![std::iter::once("MGET".to_string())
                .chain(keys.clone())
                .collect()],
            Op::MSet(pairs) => vec![std::iter::once("MSET".to_string())
                .chain(pairs.iter().flat_map(|(k, v)| [k.clone(), v.clone()]))
                .collect()],
            Op::Eval(k, v) => vec![s(&["EVAL", SCRIPT, "1", k, v])],
            Op::Multi(k, v, n) => vec![
                s(&["MULTI"]),
                s(&["SET", k, v]),
                s(&["INCR", n]),
                s(&["EXEC"]),
            ],
            Op::PushPop(l, v) => vec![s(&["RPUSH", l, v]), s(&["BLPOP", l, "1"])],
            Op::Publish(ch, v) => vec![s(&["PUBLISH", ch, v])],
        }
    }
}

/// What one client saw, for the report.
#[derive(Default)]
struct Tally {
    requests: u64,
    /// Error replies a fault explains, by their first word.
    errors: BTreeMap<String, u64>,
    /// Reads explained only by writes lost in a crash.
    crash_rollbacks: u64,
    /// Replies that are not the reply to their request, or errors no fault explains.
    wrong: Vec<String>,
    /// Connections slotline closed (the client connected again).
    closed: u64,
}

/// A client: its keys, its model of them, its connection.
struct Worker {
    id: usize,
    pool: Pool,
    port: u16,
    rng: u64,
    request: u64,
    keys: HashMap<String, KeyModel>,
    counter: Counter,
    /// Values pushed to the client's list and not popped yet (some may be of unknown outcome).
    pushed: Vec<String>,
    popped: HashSet<String>,
    tally: Tally,
}

impl Worker {
    fn new(id: usize, pool: Pool, port: u16) -> Worker {
        Worker {
            id,
            pool,
            port,
            rng: 0x9E37_79B9_7F4A_7C15 ^ (id as u64 + 1),
            request: 0,
            keys: HashMap::new(),
            counter: Counter::default(),
            pushed: Vec::new(),
            popped: HashSet::new(),
            tally: Tally::default(),
        }
    }

    fn next(&mut self, n: usize) -> usize {
        // xorshift64: enough to vary the mix, and the same run after run.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng % n as u64) as usize
    }

    fn plain_key(&mut self) -> String {
        let j = self.next(KEYS);
        format!("k:{}:{j}", self.id)
    }

    /// Keys under the client's hash tag: one slot, one shard, as MULTI and scripts need.
    fn tagged(&self, name: &str) -> String {
        format!("{{c{}}}:{name}", self.id)
    }

    fn value(&mut self) -> String {
        self.request += 1;
        format!("c{}:r{}", self.id, self.request)
    }

    fn plan(&mut self) -> Vec<Op> {
        let depth = 1 + self.next(DEPTH);
        (0..depth)
            .map(|_| match self.next(12) {
                0 | 1 => {
                    let (k, v) = (self.plain_key(), self.value());
                    Op::Set(k, v)
                }
                2 | 3 => Op::Get(self.plain_key()),
                4 => Op::Incr(self.tagged("n")),
                5 => Op::MGet((0..4).map(|_| self.plain_key()).collect()),
                6 => {
                    let mut pairs: Vec<(String, String)> = Vec::new();
                    for _ in 0..3 {
                        let (k, v) = (self.plain_key(), self.value());
                        pairs.retain(|(key, _)| *key != k);
                        pairs.push((k, v));
                    }
                    Op::MSet(pairs)
                }
                7 => {
                    let (k, v) = (self.tagged("e"), self.value());
                    Op::Eval(k, v)
                }
                8 => {
                    let v = self.value();
                    Op::Multi(self.tagged("m"), v, self.tagged("n"))
                }
                9 => {
                    let v = self.value();
                    Op::PushPop(self.tagged("l"), v)
                }
                10 => {
                    let v = self.value();
                    Op::Publish(format!("ch:{}", self.id), v)
                }
                _ => Op::Get(self.tagged("e")),
            })
            .collect()
    }

    fn key(&mut self, key: &str) -> &mut KeyModel {
        self.keys.entry(key.to_string()).or_default()
    }

    /// An error reply: counted when a fault explains it (the write may or may not have happened),
    /// else wrong.
    fn error(&mut self, what: &str, reply: &Reply, shared: &Shared) -> bool {
        let Some(text) = reply.error() else {
            return false;
        };
        let explained = explained(self.pool, text) && !shared.quiet.load(Ordering::Relaxed);
        if explained {
            let word = text
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" ");
            *self.tally.errors.entry(word).or_default() += 1;
        } else {
            self.wrong(format!("{what}: {text}"));
        }
        true
    }

    fn wrong(&mut self, what: String) {
        if self.tally.wrong.len() < 20 {
            self.tally
                .wrong
                .push(format!("client {} ({:?}): {what}", self.id, self.pool));
        } else {
            self.tally.wrong.push(String::new());
        }
    }

    fn read(&mut self, key: &str, got: &Reply, (crashes, sent): (u64, u64)) {
        let value = match got {
            Reply::Bulk(None) => None,
            other => match other.as_str() {
                Some(v) => Some(v.to_string()),
                None => return self.wrong(format!("GET {key} answered {got:?}")),
            },
        };
        match self.key(key).read(value.as_deref(), crashes, sent) {
            Ok(true) => self.tally.crash_rollbacks += 1,
            Ok(false) => {}
            Err(e) => self.wrong(format!("GET {key}: {e}")),
        }
    }

    fn incremented(&mut self, got: &Reply, (crashes, sent): (u64, u64)) {
        match got
            .as_int()
            .map(|n| self.counter.incremented(n, crashes, sent))
        {
            Some(Ok(true)) => self.tally.crash_rollbacks += 1,
            Some(Ok(false)) => {}
            Some(Err(e)) => self.wrong(e),
            None => self.wrong(format!("INCR answered {got:?}")),
        }
    }

    /// Checks the replies of one op against the model and updates it. `sent`: the loss events
    /// (crashes, pod moves) when the op was sent. A write is taken as acknowledged under those (an
    /// event after its sending may have lost it, however late its reply is read), a read is
    /// checked against the events until now.
    fn verify(&mut self, op: &Op, replies: &[Reply], shared: &Shared, sent: u64) {
        let crashes = shared.losses(self.pool);
        let epochs = (crashes, sent);
        match op {
            Op::Set(k, v) => {
                if self.error("SET", &replies[0], shared) {
                    self.key(k).unknown(v);
                } else if replies[0].is_ok() {
                    self.key(k).acked(v, sent);
                } else {
                    self.wrong(format!("SET {k} answered {:?}", replies[0]));
                }
            }
            Op::Get(k) => {
                if !self.error("GET", &replies[0], shared) {
                    self.read(k, &replies[0], epochs);
                }
            }
            Op::Incr(_) => {
                if self.error("INCR", &replies[0], shared) {
                    self.counter.unknown += 1;
                } else {
                    self.incremented(&replies[0], epochs);
                }
            }
            Op::MGet(keys) => {
                if self.error("MGET", &replies[0], shared) {
                    return;
                }
                match replies[0].as_array() {
                    Some(items) if items.len() == keys.len() => {
                        for (k, item) in keys.iter().zip(items) {
                            self.read(k, item, epochs);
                        }
                    }
                    _ => self.wrong(format!("MGET {keys:?} answered {:?}", replies[0])),
                }
            }
            Op::MSet(pairs) => {
                let failed = self.error("MSET", &replies[0], shared);
                if !failed && !replies[0].is_ok() {
                    self.wrong(format!("MSET answered {:?}", replies[0]));
                }
                for (k, v) in pairs {
                    match failed {
                        true => self.key(k).unknown(v),
                        false => self.key(k).acked(v, sent),
                    }
                }
            }
            Op::Eval(k, v) => {
                if self.error("EVAL", &replies[0], shared) {
                    self.key(k).unknown(v);
                } else if replies[0] == Reply::bulk(v) {
                    self.key(k).acked(v, sent);
                } else {
                    self.wrong(format!("EVAL writing {v} answered {:?}", replies[0]));
                }
            }
            Op::Multi(k, v, _) => {
                let queued = replies[..3].iter().all(|r| !r.is_error());
                if !replies[0].is_ok() && !self.error("MULTI", &replies[0], shared) {
                    self.wrong(format!("MULTI answered {:?}", replies[0]));
                }
                for r in &replies[1..3] {
                    let queued = matches!(r, Reply::Status(s) if s == "QUEUED");
                    if !queued && !self.error("queued", r, shared) {
                        self.wrong(format!("queued: {r:?}"));
                    }
                }
                let exec = &replies[3];
                let done = match exec.as_array() {
                    Some([set, n]) if queued && set.is_ok() => Some(n.clone()),
                    _ => None,
                };
                match done {
                    Some(n) => {
                        self.key(k).acked(v, sent);
                        self.incremented(&n, epochs);
                    }
                    None => {
                        if !self.error("EXEC", exec, shared) && exec.as_array().is_some() {
                            self.wrong(format!("EXEC answered {exec:?}"));
                        }
                        self.key(k).unknown(v);
                        self.counter.unknown += 1;
                    }
                }
            }
            Op::PushPop(l, v) => {
                if !self.error("RPUSH", &replies[0], shared) && replies[0].as_int().is_none() {
                    self.wrong(format!("RPUSH answered {:?}", replies[0]));
                }
                self.pushed.push(v.clone());
                let pop = &replies[1];
                if self.error("BLPOP", pop, shared) {
                    return;
                }
                match pop.as_array() {
                    Some([key, Reply::Bulk(Some(got))]) if key.as_str() == Some(l) => {
                        let got = String::from_utf8_lossy(got).into_owned();
                        if !self.pushed.contains(&got) || !self.popped.insert(got.clone()) {
                            self.wrong(format!(
                                "BLPOP {l} answered {got}, not pushed or popped twice"
                            ));
                        }
                        self.pushed.retain(|p| *p != got);
                    }
                    // Nothing to pop: only when what was pushed may be lost (an unknown RPUSH, a crash).
                    None if *pop == Reply::Array(None) => {
                        if replies[0].as_int().is_some() && crashes == 0 {
                            self.wrong(format!("BLPOP {l} found nothing after RPUSH {v}"));
                        }
                    }
                    _ => self.wrong(format!("BLPOP {l} answered {pop:?}")),
                }
            }
            Op::Publish(_, _) => {
                if !self.error("PUBLISH", &replies[0], shared) && replies[0].as_int().is_none() {
                    self.wrong(format!("PUBLISH answered {:?}", replies[0]));
                }
            }
        }
    }

    /// Pipelines rounds of ops until told to stop.
    fn run(mut self, shared: &Shared) -> Worker {
        let mut client = Client::connect(self.port);
        while !shared.stop.load(Ordering::Relaxed) {
            let ops = self.plan();
            let commands: Vec<Vec<String>> = ops.iter().flat_map(Op::commands).collect();
            let sent = shared.losses(self.pool);
            for command in &commands {
                client.send(command);
            }
            let mut replies = Vec::with_capacity(commands.len());
            for _ in 0..commands.len() {
                match client.try_read_reply() {
                    Ok(reply) => replies.push(reply),
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                    Err(e) => {
                        self.wrong(format!(
                            "no reply within the client's timeout (stuck?): {e}"
                        ));
                        shared.stop.store(true, Ordering::Relaxed);
                        return self;
                    }
                }
            }
            if replies.len() < commands.len() {
                // slotline closed the connection: only a fault may explain it, and what was in
                // flight has an unknown outcome.
                self.tally.closed += 1;
                if shared.quiet.load(Ordering::Relaxed) {
                    self.wrong("connection closed after the faults".into());
                }
                replies.resize(
                    commands.len(),
                    Reply::Error("ERR slotline: connection closed".into()),
                );
                client = Client::connect(self.port);
            }
            let mut at = 0;
            for op in &ops {
                let n = op.commands().len();
                self.verify(op, &replies[at..at + n], shared, sent);
                at += n;
            }
            self.tally.requests += commands.len() as u64;
            shared
                .answered
                .fetch_add(commands.len() as u64, Ordering::Relaxed);
        }
        self
    }

    /// Reads every key back through a new connection: acknowledged writes are there, or were lost
    /// in a crash since (counted).
    fn check_final(&mut self, crashes: u64) {
        let mut client = Client::connect(self.port);
        let mut keys: Vec<String> = self.keys.keys().cloned().collect();
        keys.sort();
        for key in keys {
            let got = client.cmd(&["GET", &key]);
            self.read(&key, &got, (crashes, crashes));
        }
        let counter = self.tagged("n");
        let got = client.cmd(&["GET", &counter]);
        let n = match got {
            Reply::Bulk(None) => 0,
            ref other => other.as_str().and_then(|s| s.parse().ok()).unwrap_or(-1),
        };
        let (low, high) = (
            self.counter.value,
            self.counter.value + self.counter.unknown,
        );
        if !(low..=high).contains(&n) {
            match crashes > self.counter.acked_in && (0..=high).contains(&n) {
                true => self.tally.crash_rollbacks += 1,
                false => self.wrong(format!(
                    "{counter} is {got:?} at the end, not {low}..={high}"
                )),
            }
        }
    }
}

/// The errors a fault explains, by pool: slotline's own (a node unreachable, a timeout, a
/// connection lost), and Redis's while a cluster changes hands or a master is promoted. A client
/// blocked (BLPOP) on a master that is demoted waits on at the new one, but in a primary pool it
/// gets the demoted master's `-UNBLOCKED ... (master -> replica?)` when no master answers within
/// the pool's timeout (the soak's faults can leave it without one that long).
fn explained(pool: Pool, text: &str) -> bool {
    let common = ["ERR slotline:", "LOADING", "EXECABORT"];
    let cluster = ["CLUSTERDOWN", "TRYAGAIN"];
    let primary = [
        "READONLY",
        "MASTERDOWN",
        "UNBLOCKED force unblock from blocking operation, instance state changed",
    ];
    common.iter().any(|p| text.starts_with(p))
        || (pool == Pool::Cluster && cluster.iter().any(|p| text.starts_with(p)))
        || (pool == Pool::Primary && primary.iter().any(|p| text.starts_with(p)))
}

/// What a subscriber heard.
#[derive(Default)]
struct Heard {
    received: u64,
    /// Messages older than one received before: in a cluster, a PUBLISH goes to its channel's
    /// slot owner, which passes it on to the subscriber's node over the cluster bus; when the
    /// owner changes between two PUBLISHes (a failover, a migration), the two take different
    /// paths and may arrive in either order, as they would for a client of the cluster itself.
    /// Redis Cluster promises no order there; a primary or a sharded pool, one path, does.
    reordered: u64,
    wrong: Vec<String>,
}

/// A subscriber to one client's channel: every message is that client's, none twice, and in the
/// order published except as `Heard::reordered` says. Messages published while its connection was
/// being replaced may be missing (pub/sub is at most once).
fn subscribe(port: u16, publisher: usize, ordered: bool, shared: &Shared) -> Heard {
    let channel = format!("ch:{publisher}");
    let prefix = format!("c{publisher}:r");
    let mut heard = Heard::default();
    // The request numbers heard lately (a reordered message is at most a few behind).
    let mut recent = std::collections::BTreeSet::new();
    let mut last = 0u64;
    let connect = || {
        let mut client = Client::connect(port);
        let reply = client.cmd(&["SUBSCRIBE", &channel]);
        (client, reply)
    };
    let (mut client, _) = connect();
    while !shared.stop.load(Ordering::Relaxed) {
        match client.try_read_reply() {
            Ok(Reply::Array(Some(parts))) if parts.len() == 3 => {
                let (kind, ch, payload) = (&parts[0], &parts[1], &parts[2]);
                if kind.as_str() != Some("message") {
                    continue;
                }
                let payload = payload.as_str().unwrap_or_default().to_string();
                let n = payload
                    .strip_prefix(&prefix)
                    .and_then(|n| n.parse::<u64>().ok());
                match n {
                    Some(n) if ch.as_str() == Some(&channel) && recent.insert(n) => {
                        heard.received += 1;
                        if n < last {
                            match ordered {
                                true => heard
                                    .wrong
                                    .push(format!("{channel} got {payload} after r{last}")),
                                false => heard.reordered += 1,
                            }
                        }
                        last = last.max(n);
                        while recent.len() > 4096 {
                            recent.pop_first();
                        }
                    }
                    _ => heard
                        .wrong
                        .push(format!("{channel} got {payload} on {ch:?} after r{last}")),
                }
            }
            Ok(other) => heard.wrong.push(format!("{channel}: {other:?}")),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                (client, _) = connect();
            }
            // Nothing published for a while: fine.
            Err(_) => {}
        }
    }
    heard
}

/// Sets its flag when dropped: on the way out of a failing test as well.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// slotline's resident set, in KiB.
fn rss_kb(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS").unwrap_or(0)
}

/// How a pod is listed instead of ready; `None` leaves it out of the slice.
type Listed = Option<fn(&str, &str) -> PodEndpoint>;

/// Everything the soak runs against.
struct Rig {
    cluster: RedisCluster,
    group: ReplicaGroup,
    sentinels: Sentinels,
    api: KubeApi,
    pods: Vec<RedisPod>,
    pod_port: u16,
    /// slotline's listener for the pods' pool.
    pods_port: u16,
    /// The next 127.0.0.x a moved pod gets.
    next_ip: u8,
    _dir: TempDir,
}

impl Rig {
    /// Publishes the pods' slice, every pod ready but `except` (a pod, and how it is listed instead;
    /// `None` leaves it out).
    fn publish_pods(&self, except: Option<(usize, Listed)>) {
        let endpoints = self
            .pods
            .iter()
            .enumerate()
            .filter_map(|(i, pod)| match except {
                Some((at, how)) if at == i => how.map(|how| how(pod.ip(), pod.name())),
                _ => Some(PodEndpoint::ready(pod.ip(), pod.name())),
            })
            .collect();
        self.api.apply_slice(
            NS,
            &Slice::new("redis-soak", "redis", self.pod_port, endpoints),
        );
    }

    /// The cluster's masters, each with a linked replica (as ROLE on the masters says).
    fn masters_with_replicas(&self) -> Vec<(u16, u16)> {
        self.cluster
            .masters_by_role()
            .into_iter()
            .filter_map(|(master, replicas)| Some((master, *replicas.first()?)))
            .collect()
    }
}

/// The faults, in the order a round runs them.
const FAULTS: [&str; 7] = [
    "drop backend connections (CLIENT KILL on every node)",
    "CLUSTER FAILOVER",
    "migrate slots under traffic",
    "SIGSTOP a cluster master for longer than timeout",
    "SENTINEL FAILOVER",
    "move a pod to a new IP",
    "crash a cluster master (SIGKILL), restart it",
];

fn fault(rig: &mut Rig, which: usize, round: usize, shared: &Shared) {
    match which {
        0 => {
            let mut nodes: Vec<u16> = rig.cluster.live_ports();
            nodes.extend([rig.group.port(0), rig.group.port(1)]);
            for port in nodes {
                Client::connect(port).cmd(&["CLIENT", "KILL", "TYPE", "normal"]);
            }
            for pod in &rig.pods {
                pod.client().cmd(&["CLIENT", "KILL", "TYPE", "normal"]);
            }
        }
        1 => {
            let pairs = rig.masters_with_replicas();
            let (old, replica) = pairs[round % pairs.len()];
            wait_ok(
                Duration::from_secs(60),
                "a CLUSTER FAILOVER to happen",
                || {
                    let reply = rig.cluster.client(replica).cmd(&["CLUSTER", "FAILOVER"]);
                    assert!(reply.is_ok(), "CLUSTER FAILOVER: {reply:?}");
                    let took = support::wait_until(Duration::from_secs(8), || {
                        rig.cluster.client(replica).role() == "master"
                    });
                    took.then_some(())
                        .ok_or(format!("{replica} did not take over from {old}"))
                },
            );
        }
        2 => {
            // Slots the clients use: their hash tags'. The last fault may have been a failover.
            rig.cluster.wait_roles_settled(Duration::from_secs(30));
            for c in (round % 7..CLUSTER_CLIENTS).step_by(7).take(4) {
                let slot = support::key_slot(format!("c{c}").as_bytes());
                let from = rig.cluster.node_for_slot(slot);
                let to = rig.cluster.another_master(from);
                rig.cluster.migrate_slot(slot, from, to);
            }
        }
        3 => {
            let pairs = rig.masters_with_replicas();
            let (victim, _) = pairs[(round + 1) % pairs.len()];
            rig.cluster.signal(victim, "STOP");
            // Past slotline's timeout (1 s), short of the cluster's node timeout (2 s).
            thread::sleep(Duration::from_millis(1500));
            rig.cluster.signal(victim, "CONT");
        }
        4 => {
            // The sentinels and the servers agree on the master, and its replica is linked (the
            // demoted master of the last failover is reconfigured some seconds after it) and seen
            // as a replica by every sentinel (`Sentinels::agree_on`: else Sentinel itself may undo
            // the promotion and drop what the new master acknowledged).
            let (_, r) = wait_ok(
                Duration::from_secs(60),
                "the sentinels and the servers to agree on the master",
                || {
                    let named = rig.sentinels.master_port(0).ok_or("no master named")?;
                    let m = (0..2)
                        .find(|&i| rig.group.port(i) == named)
                        .ok_or(format!("the sentinels name {named}"))?;
                    let r = 1 - m;
                    let replication = rig.group.info(r, "replication");
                    match rig.group.client(m).role() == "master"
                        && replication.contains("master_link_status:up")
                        && rig.sentinels.agree_on(rig.group.port(m), rig.group.port(r))
                    {
                        true => Ok((m, r)),
                        false => {
                            thread::sleep(Duration::from_millis(200));
                            Err(format!(
                                "sentinels name server {m}; server {r}: {replication}"
                            ))
                        }
                    }
                },
            );
            wait_ok(
                Duration::from_secs(60),
                "a SENTINEL FAILOVER to happen",
                || {
                    let reply = rig.sentinels.client(0).cmd(&[
                        "SENTINEL",
                        "FAILOVER",
                        Sentinels::MASTER_NAME,
                    ]);
                    if !reply.is_ok() {
                        thread::sleep(Duration::from_millis(200));
                        return Err(format!("{reply:?}"));
                    }
                    // Sentinel may still give a failover up (no replica it deems good yet, say):
                    // asked again then.
                    let named = support::wait_until(Duration::from_secs(10), || {
                        rig.sentinels.master_port(0) == Some(rig.group.port(r))
                    });
                    named.then_some(()).ok_or("given up".to_string())
                },
            );
        }
        5 => {
            let at = round % rig.pods.len();
            // A key of the moving pod, written through slotline: read back through slotline with
            // this value, it says slotline has the pod back on the ring.
            let mut through = Client::connect(rig.pods_port);
            let marker = (0..)
                .map(|i| format!("marker:{round}:{i}"))
                .find(|key| {
                    assert!(through.cmd(&["SET", key, "home"]).is_ok(), "SET {key}");
                    rig.pods[at].client().cmd(&["EXISTS", key]) == Reply::Int(1)
                })
                .expect("some key lives on every pod");
            shared.moving.store(true, Ordering::Relaxed);
            rig.publish_pods(Some((at, Some(PodEndpoint::terminating))));
            rig.pods[at].stop();
            rig.publish_pods(Some((at, None)));
            rig.next_ip += 1;
            let ip = format!("127.0.0.{}", rig.next_ip);
            rig.pods[at].start_on(&ip);
            rig.publish_pods(None);
            wait_for(
                Duration::from_secs(30),
                "slotline to put the pod back on the ring",
                || through.cmd(&["GET", &marker]) == Reply::bulk("home"),
            );
            // Requests routed by the old ring just before are answered by now.
            thread::sleep(Duration::from_millis(500));
            shared.moves.fetch_add(1, Ordering::Relaxed);
            shared.moving.store(false, Ordering::Relaxed);
        }
        _ => {
            let pairs = rig.masters_with_replicas();
            let (victim, replica) = pairs[round % pairs.len()];
            shared.crashes.fetch_add(1, Ordering::Relaxed);
            rig.cluster.kill(victim);
            wait_for(
                Duration::from_secs(30),
                "the replica to be promoted",
                || rig.cluster.client(replica).role() == "master",
            );
            rig.cluster.wait_healthy(Duration::from_secs(60));
            rig.cluster.restart(victim);
            wait_for(
                Duration::from_secs(60),
                "the restarted node to be a linked replica",
                || {
                    let info = rig.cluster.client(victim).cmd(&["INFO", "replication"]);
                    info.as_str()
                        .is_some_and(|i| i.contains("master_link_status:up"))
                },
            );
        }
    }
}

#[test]
fn clients_get_their_own_replies_through_every_fault() {
    let cluster = RedisCluster::start(ClusterOpts {
        extra_args: vec!["--cluster-require-full-coverage".into(), "no".into()],
        ..ClusterOpts::default()
    });
    let group = ReplicaGroup::start(2);
    let sentinels = Sentinels::start(3, group.port(0), 5000, 1);
    let pod_port = cluster_port();
    let pods: Vec<RedisPod> = (0..3)
        .map(|i| {
            RedisPod::start(
                &format!("redis-{i}"),
                &format!("127.0.0.{}", i + 2),
                pod_port,
            )
        })
        .collect();
    let dir = TempDir::new("soak");
    let mut rig = Rig {
        cluster,
        group,
        sentinels,
        api: KubeApi::start(),
        pods,
        pod_port,
        pods_port: free_port(),
        next_ip: 20,
        _dir: dir,
    };
    rig.publish_pods(None);

    let (cluster_port_, primary_port, pods_port) = (free_port(), free_port(), rig.pods_port);
    let seeds: String = rig
        .cluster
        .masters()
        .iter()
        .map(|m| format!("      - 127.0.0.1:{}\n", m.port))
        .collect();
    let sentinel_servers: String = rig
        .sentinels
        .ports()
        .iter()
        .map(|p| format!("        - 127.0.0.1:{p}\n"))
        .collect();
    let yaml = format!(
        "pools:\n  cluster:\n    listen: 127.0.0.1:{cluster_port_}\n    mode: cluster\n    \
         timeout: 1000\n    servers:\n{seeds}  \
         ha:\n    listen: 127.0.0.1:{primary_port}\n    mode: primary\n    timeout: 1500\n    \
         sentinel:\n      master_name: {}\n      servers:\n{sentinel_servers}  \
         pods:\n    listen: 127.0.0.1:{pods_port}\n    mode: ketama\n    timeout: 1000\n    \
         kubernetes:\n      service: redis\n      namespace: {NS}\n      port: redis\n",
        Sentinels::MASTER_NAME
    );
    let kubeconfig = rig.api.write_kubeconfig(&rig._dir);
    let kubeconfig = kubeconfig.to_string_lossy().into_owned();
    let slotline = Slotline::start_with_env(&yaml, &[("KUBECONFIG", &kubeconfig)]);
    for port in [cluster_port_, primary_port, pods_port] {
        wait_ok(
            Duration::from_secs(30),
            "slotline to serve every pool",
            || match Client::connect(port).cmd(&["SET", "ready", "1"]) {
                r if r.is_ok() => Ok(()),
                other => Err(format!("{other:?}")),
            },
        );
    }

    let shared = Shared {
        stop: AtomicBool::new(false),
        crashes: AtomicU64::new(0),
        moves: AtomicU64::new(0),
        moving: AtomicBool::new(false),
        answered: AtomicU64::new(0),
        quiet: AtomicBool::new(false),
    };
    let (wanted, rounds_wanted) = (from_env("SOAK_REQUESTS", 0), from_env("SOAK_ROUNDS", 1));
    let pid = slotline.pid();
    let max_rss = Mutex::new(0u64);
    let started = Instant::now();
    let (mut workers, subscribed, rounds) = thread::scope(|s| {
        // Should the chaos loop fail, the clients stop too, and the failure is reported.
        let _stop = StopOnDrop(&shared.stop);
        let workers: Vec<_> = (0..CLUSTER_CLIENTS + PRIMARY_CLIENTS + POD_CLIENTS)
            .map(|id| {
                let (pool, port) = match id {
                    id if id < CLUSTER_CLIENTS => (Pool::Cluster, cluster_port_),
                    id if id < CLUSTER_CLIENTS + PRIMARY_CLIENTS => (Pool::Primary, primary_port),
                    _ => (Pool::Pods, pods_port),
                };
                let shared = &shared;
                s.spawn(move || Worker::new(id, pool, port).run(shared))
            })
            .collect();
        let subscribers: Vec<_> = [
            (cluster_port_, 0),
            (cluster_port_, 1),
            (primary_port, CLUSTER_CLIENTS),
            (pods_port, CLUSTER_CLIENTS + PRIMARY_CLIENTS),
        ]
        .into_iter()
        .map(|(port, publisher)| {
            let shared = &shared;
            let ordered = port != cluster_port_;
            s.spawn(move || subscribe(port, publisher, ordered, shared))
        })
        .collect();
        let sampler = s.spawn(|| {
            while !shared.stop.load(Ordering::Relaxed) {
                let rss = rss_kb(pid);
                let mut max = max_rss.lock().unwrap_or_else(|e| e.into_inner());
                *max = (*max).max(rss);
                drop(max);
                thread::sleep(Duration::from_millis(200));
            }
        });

        thread::sleep(Duration::from_secs(2));
        let mut round = 0u64;
        loop {
            round += 1;
            for (which, name) in FAULTS.iter().enumerate() {
                if shared.stop.load(Ordering::Relaxed) {
                    break;
                }
                let at = started.elapsed();
                fault(&mut rig, which, round as usize, &shared);
                eprintln!(
                    "round {round}, {:.1} s: {} ({} ms); {} requests answered so far",
                    at.as_secs_f64(),
                    name,
                    (started.elapsed() - at).as_millis(),
                    shared.answered.load(Ordering::Relaxed)
                );
                thread::sleep(Duration::from_secs(1));
            }
            if shared.stop.load(Ordering::Relaxed)
                || (round >= rounds_wanted && shared.answered.load(Ordering::Relaxed) >= wanted)
            {
                break;
            }
        }
        // The faults are over: once the topology has settled, every reply must be a success.
        rig.cluster.wait_healthy(Duration::from_secs(60));
        thread::sleep(Duration::from_secs(3));
        shared.quiet.store(true, Ordering::Relaxed);
        thread::sleep(Duration::from_secs(3));
        shared.stop.store(true, Ordering::Relaxed);
        let workers: Vec<Worker> = workers
            .into_iter()
            .map(|h| h.join().expect("a client thread panicked"))
            .collect();
        let subscribed: Vec<Heard> = subscribers
            .into_iter()
            .map(|h| h.join().expect("a subscriber thread panicked"))
            .collect();
        sampler.join().expect("the RSS sampler panicked");
        (workers, subscribed, round)
    });
    let elapsed = started.elapsed();

    // Every acknowledged write is there (crash losses apart), read back through slotline.
    let crashes = shared.crashes.load(Ordering::Relaxed);
    for worker in &mut workers {
        worker.check_final(shared.losses(worker.pool));
    }
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let (mut requests, mut rollbacks, mut closed) = (0, 0, 0);
    let mut wrong: Vec<&String> = Vec::new();
    let mut by_pool: BTreeMap<Pool, u64> = BTreeMap::new();
    for w in &workers {
        requests += w.tally.requests;
        rollbacks += w.tally.crash_rollbacks;
        closed += w.tally.closed;
        *by_pool.entry(w.pool).or_default() += w.tally.requests;
        for (e, n) in &w.tally.errors {
            *errors.entry(e.clone()).or_default() += n;
        }
        wrong.extend(w.tally.wrong.iter().filter(|w| !w.is_empty()));
    }
    let wrong_count: usize = workers.iter().map(|w| w.tally.wrong.len()).sum();
    let messages: u64 = subscribed.iter().map(|h| h.received).sum();
    let reordered: u64 = subscribed.iter().map(|h| h.reordered).sum();
    let bad_messages: Vec<&String> = subscribed.iter().flat_map(|h| &h.wrong).collect();
    let max_rss = *max_rss.lock().unwrap_or_else(|e| e.into_inner());
    let log = slotline.log();
    eprintln!(
        "soak: {rounds} round(s) of {} faults in {:.0} s; {requests} requests answered \
         ({by_pool:?}), {wrong_count} wrong; errors explained by the faults: {errors:?}; \
         {rollbacks} reads explained by lost writes (after {crashes} crashes and {rounds} pod \
         moves); {closed} \
         client connections closed; {messages} pub/sub messages received ({reordered} in another order in the cluster \
         pool), {} wrong; slotline's \
         RSS at most {max_rss} KiB",
        FAULTS.len(),
        elapsed.as_secs_f64(),
        bad_messages.len(),
    );
    for bad in bad_messages.iter().take(5) {
        eprintln!("subscriber: {bad}");
    }
    assert!(
        wrong.is_empty(),
        "{wrong_count} replies were not the replies to their requests, or errors no fault \
         explains; first: {:#?}",
        &wrong[..wrong.len().min(20)]
    );
    assert!(
        bad_messages.is_empty(),
        "subscribers: {:?}",
        &bad_messages[..bad_messages.len().min(10)]
    );
    assert!(messages > 0, "no subscriber received anything");
    assert!(requests >= wanted, "{requests} requests, {wanted} wanted");
    assert!(
        max_rss < RSS_BOUND_KB,
        "slotline's RSS reached {max_rss} KiB"
    );
    assert!(!log.contains("panicked"), "slotline panicked: {log}");
    let mut slotline = slotline;
    assert!(slotline.is_running(), "slotline exited");
}
