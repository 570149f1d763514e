//! Integration-test harness: real `redis-server` processes, the real slotline binary, and a small client.
//! Standard library only, synchronous; used by integration tests as `mod support;`.
//!
//! Layout:
//! - `resp`: blocking RESP2 client and reply parser (`Client`, `Reply`).
//! - `cluster`: a Redis Cluster of real `redis-server` processes, and admin helpers (kill, migrate).
//! - `slotline`: runs the slotline binary with a YAML config and waits until it listens; signals it.
//! - `http`: a tiny HTTP client for the admin endpoints, and a Prometheus text reader.
//! - `kube_api`: a fake Kubernetes API server (EndpointSlices and Endpoints, list and watch) that
//!   kube-rs's watcher runs against unmodified.
//! - `pods`: `redis-server`s on their own loopback addresses, stopped and started again elsewhere.
//! - `sentinel`: a master with replicas, and real `redis-sentinel`s watching it.
//! - `standalone`: plain `redis-server`s (twemproxy shards) and the real `nutcracker` in front of them.
//! - `tls`: certificates made with `openssl` (a CA, servers, clients, a CA nobody trusts).
//! - this file: ports, temp dirs, polling, key slots, test host names, a process's memory, and the reaper that cleans up
//!   processes even when a test binary dies without running `Drop` (statics, SIGKILL, Ctrl-C).
#![allow(dead_code)]

mod cluster;
mod http;
mod kube_api;
mod pods;
mod resp;
mod sentinel;
mod slotline;
mod standalone;
mod tls;

// Not every test binary uses every item.
#[allow(unused_imports)]
pub use cluster::{
    parse_slots, ClusterOpts, Endpoint, MasterInfo, NodeInfo, RedisCluster, SlotRange,
};
#[allow(unused_imports)]
pub use http::{
    http_get, http_raw, metric, HttpReply, METRIC_NAMES, PRIMARY_METRIC_NAMES, READ_METRIC_NAMES,
};
#[allow(unused_imports)]
pub use kube_api::{KubeApi, PodEndpoint, Slice, IDENTITY};
#[allow(unused_imports)]
pub use pods::RedisPod;
#[allow(unused_imports)]
pub use resp::{encode, parse, Client, Reply, IO_TIMEOUT};
#[allow(unused_imports)]
pub use sentinel::{ReplicaGroup, Sentinels};
#[allow(unused_imports)]
pub use slotline::Slotline;
#[allow(unused_imports)]
pub use standalone::{twemproxy_stats, Nutcracker, RedisServers};
#[allow(unused_imports)]
pub use tls::{Certs, Pair};

use std::fs;
use std::io::Write;
use std::net::{IpAddr, TcpListener, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Runs `tests/clients/<script>` with python3 against slotline on `port` speaking RESP `protocol`, and
/// panics with its output unless it succeeds (redis-py must be installed: `pip install redis`).
pub fn run_python_client(script: &str, port: u16, protocol: &str) {
    run_python(script, &[&port.to_string(), protocol]);
}

/// Runs `tests/clients/<script>` with python3 and `args`, and returns what it printed; panics with
/// its output unless it succeeds.
pub fn run_python(script: &str, args: &[&str]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(script);
    let out = Command::new("python3")
        .arg(&path)
        .args(args)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{script} {args:?} failed (is redis-py installed? pip install redis):\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Number of hash slots in a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// A port that was free a moment ago, for a listener a test starts (slotline, nutcracker, a fake API
/// server).
///
/// Ports come from 10000..=19999: below the cluster ports (whose bus ports sit 10000 higher) and far
/// below the kernel's ephemeral range, so an outgoing connection of some other process cannot take the
/// port between this check and the bind (which `127.0.0.1:0` would risk).
pub fn free_port() -> u16 {
    static CURSOR: Mutex<Option<u32>> = Mutex::new(None);
    next_port(&CURSOR, (10000, 19999), port_bindable)
}

/// A port for a cluster node: it and its cluster bus port (`port + 10000`) are both bindable.
///
/// Ports come from 20000 up to just below where the bus port would enter the kernel's ephemeral range,
/// so neither can be taken by an outgoing connection or by `free_port`.
pub fn cluster_port() -> u16 {
    static CURSOR: Mutex<Option<u32>> = Mutex::new(None);
    next_port(&CURSOR, cluster_port_range(), |port| {
        port_bindable(port) && port_bindable(port + 10000)
    })
}

/// The next port in `lo..=hi` that `usable` accepts. A process-wide cursor keeps concurrent tests from
/// being handed the same port before its server has bound it.
fn next_port(
    cursor: &Mutex<Option<u32>>,
    (lo, hi): (u16, u16),
    usable: impl Fn(u16) -> bool,
) -> u16 {
    let span = u32::from(hi - lo) + 1;
    let mut cursor = cursor.lock().unwrap_or_else(|e| e.into_inner());
    let next = cursor.get_or_insert_with(|| {
        // Spread separate test binaries (rare, but possible) over the range.
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        (std::process::id().wrapping_mul(7919) ^ nanos) % span
    });
    for _ in 0..span {
        let port = lo + (*next % span) as u16;
        *next = next.wrapping_add(1);
        if usable(port) {
            return port;
        }
    }
    panic!("no usable port in {lo}..={hi}");
}

fn cluster_port_range() -> (u16, u16) {
    const LO: u16 = 20000;
    let ephemeral_lo = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|n| n.parse::<u32>().ok())
        })
        .unwrap_or(32768);
    let hi = ephemeral_lo.saturating_sub(10001).min(29999);
    if hi >= u32::from(LO) + 200 {
        (LO, hi as u16)
    } else {
        (LO, 29999)
    }
}

fn port_bindable(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Interval between two checks of a polled condition.
const POLL: Duration = Duration::from_millis(50);

/// Polls `done` until it returns true; false if `deadline` passes first.
pub fn wait_until(deadline: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        thread::sleep(POLL);
    }
}

/// Polls `done` until it returns true; panics naming `what` if `deadline` passes first.
pub fn wait_for(deadline: Duration, what: &str, done: impl FnMut() -> bool) {
    if !wait_until(deadline, done) {
        panic!("timed out after {deadline:?} waiting for {what}");
    }
}

/// The lines of `CLIENT LIST` from the server at `port`, one per connection (this one's included).
pub fn client_list(port: u16) -> Vec<String> {
    try_client_list(port).unwrap_or_else(|e| panic!("CLIENT LIST on 127.0.0.1:{port}: {e}"))
}

/// The same, or why the connection failed (a server whose clients Sentinel kills as it promotes or
/// demotes it cuts off any CLIENT LIST under way).
pub fn try_client_list(port: u16) -> std::io::Result<Vec<String>> {
    let reply = Client::try_connect(port)?.try_cmd(&["CLIENT", "LIST"])?;
    let text = String::from_utf8_lossy(reply.as_bytes().expect("CLIENT LIST")).into_owned();
    Ok(text.lines().map(str::to_string).collect())
}

/// Polls `check` until it returns `Ok`; on timeout panics with the last reason it gave.
pub fn wait_ok<T>(
    deadline: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let end = Instant::now() + deadline;
    loop {
        match check() {
            Ok(value) => return value,
            Err(reason) if Instant::now() >= end => {
                panic!("timed out after {deadline:?} waiting for {what}; last state: {reason}")
            }
            Err(_) => thread::sleep(POLL),
        }
    }
}

/// A size in KiB from `/proc/PID/status` (`VmRSS`, `VmHWM`, `RssAnon` ...); None when the process
/// or the field is gone.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The cluster hash slot of a key: CRC16-XMODEM of the key, or of its `{hash tag}` when that is
/// non-empty, modulo 16384. Written here rather than borrowed so that it checks the proxy's routing.
pub fn key_slot(key: &[u8]) -> u16 {
    let mut hashed = key;
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                hashed = &key[open + 1..open + 1 + len];
            }
        }
    }
    crc16_xmodem(hashed) % SLOTS
}

fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// A key (`prefix:N`, N counting up from 0) whose slot is `slot`.
pub fn key_in_slot(prefix: &str, slot: u16) -> String {
    (0u64..)
        .map(|n| format!("{prefix}:{n}"))
        .find(|k| key_slot(k.as_bytes()) == slot)
        .expect("some key hashes to every slot")
}

/// How many `nodeN.slotline.test` names `TEST_HOSTS_LINE` maps.
pub const TEST_HOSTS: usize = 12;

/// The `/etc/hosts` line that makes the cluster's announced host names resolve. `.ci/run` adds the
/// same line.
pub const TEST_HOSTS_LINE: &str = "127.0.0.1 node1.slotline.test node2.slotline.test node3.slotline.test \
node4.slotline.test node5.slotline.test node6.slotline.test node7.slotline.test node8.slotline.test \
node9.slotline.test node10.slotline.test node11.slotline.test node12.slotline.test";

/// The host name node `index` (1-based) announces when a cluster uses host names.
pub fn test_hostname(index: usize) -> String {
    format!("node{index}.slotline.test")
}

/// Makes sure `node1.slotline.test` .. `node{count}.slotline.test` resolve to 127.0.0.1, appending
/// `TEST_HOSTS_LINE` to /etc/hosts when they do not and we may write it (root). Panics, saying what
/// to do, when that is impossible: a host-name test must fail loudly, not skip.
pub fn ensure_test_hosts(count: usize) {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    assert!(
        count <= TEST_HOSTS,
        "only {TEST_HOSTS} test host names exist, {count} asked for"
    );
    let names: Vec<String> = (1..=count).map(test_hostname).collect();
    let unresolved = || -> Vec<String> {
        let localhost = IpAddr::from([127, 0, 0, 1]);
        names
            .iter()
            .filter(|name| {
                let addrs = (name.as_str(), 0).to_socket_addrs();
                !addrs.is_ok_and(|mut a| a.any(|a| a.ip() == localhost))
            })
            .cloned()
            .collect()
    };
    if unresolved().is_empty() {
        return;
    }
    let hosts = fs::read_to_string("/etc/hosts").unwrap_or_default();
    let sep = if hosts.is_empty() || hosts.ends_with('\n') {
        ""
    } else {
        "\n"
    };
    let appended = fs::OpenOptions::new()
        .append(true)
        .open("/etc/hosts")
        .and_then(|mut f| f.write_all(format!("{sep}{TEST_HOSTS_LINE}\n").as_bytes()));
    if let Err(e) = appended {
        panic!(
            "the host-name tests need the test host names to resolve to 127.0.0.1, and /etc/hosts \
             cannot be edited from here ({e}). Add this line to /etc/hosts as root, or run .ci/run:\n\
             {TEST_HOSTS_LINE}"
        );
    }
    let still = unresolved();
    assert!(
        still.is_empty(),
        "{still:?} do not resolve to 127.0.0.1 although /etc/hosts now has:\n{TEST_HOSTS_LINE}"
    );
}

/// A directory under the system temp dir, unique to this process, removed on drop.
pub struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("slotline-test-{what}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        // Canonical, because the reaper compares it with /proc/PID/cwd.
        let path = fs::canonicalize(&path).unwrap_or(path);
        TempDir { path, keep: false }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `contents` to `name` inside the directory and returns the file's path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let file = self.path.join(name);
        fs::write(&file, contents).unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
        file
    }

    /// Leaves the directory in place on drop (for logs of a failed test).
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// The last `lines` lines of a log file, for failure messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path)
        .unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Kills a process this harness owns, by PID, after disarming its reaper (the owner cleans up
/// itself).
pub(crate) fn kill_owned(reaper: &mut Option<Reaper>, child: &mut Option<Child>) {
    if let Some(reaper) = reaper.take() {
        reaper.disarm();
    }
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A watchdog shell that SIGKILLs the registered processes and removes a directory once its stdin
/// closes. Our end of that pipe closes when the test process exits in any way, so processes owned by
/// statics (never dropped) or by a test binary that was killed do not outlive it. Each process is
/// killed by PID, and only while its working directory is still inside `dir`, so a reused PID is safe.
pub(crate) struct Reaper {
    child: Child,
    stdin: ChildStdin,
}

const REAPER_SCRIPT: &str = r#"
trap '' INT TERM HUP
dir=$1
pids=
while read -r pid; do pids="$pids $pid"; done
for pid in $pids; do
    case "$(readlink "/proc/$pid/cwd" 2>/dev/null)" in
        "$dir"|"$dir"/*) kill -9 "$pid" 2>/dev/null ;;
    esac
done
rm -rf -- "$dir"
"#;

impl Reaper {
    /// Starts a watchdog for processes that will run with their working directory inside `dir`.
    pub(crate) fn spawn(dir: &Path) -> Reaper {
        let mut child = Command::new("sh")
            .args(["-c", REAPER_SCRIPT, "slotline-test-reaper"])
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the reaper shell");
        let stdin = child.stdin.take().expect("reaper stdin");
        Reaper { child, stdin }
    }

    /// Registers a process to kill if the test process dies.
    pub(crate) fn watch(&mut self, pid: u32) {
        writeln!(self.stdin, "{pid}").expect("register a pid with the reaper");
    }

    /// Stops the watchdog without letting it act: the owner is cleaning up itself.
    pub(crate) fn disarm(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
