//! A Redis Cluster of real `redis-server` processes on loopback, and the admin steps tests need
//! (kill a node, move a slot). Topology is always read back from the nodes, never assumed.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use super::{
    cluster_port, ensure_test_hosts, log_tail, test_hostname, wait_ok, Client, Reaper, Reply,
    TempDir, SLOTS,
};

/// What cluster to start.
#[derive(Debug, Clone)]
pub struct ClusterOpts {
    /// Masters that share the 16384 slots (at least 3, as `redis-cli --cluster create` requires).
    pub masters: usize,
    /// Replicas started for each master.
    pub replicas_per_master: usize,
    /// Nodes announce `nodeN.slotline.test` and prefer host-name endpoints, so CLUSTER SLOTS, MOVED
    /// and ASK carry host names instead of IPs.
    pub hostnames: bool,
    /// More `redis-server` arguments, e.g. `["--cluster-require-full-coverage", "no"]`.
    pub extra_args: Vec<String>,
    /// TLS arguments (see [`super::Certs::redis_args`]): each node also listens for TLS on a port
    /// of its own, with `tls-cluster` and `tls-replication`, so CLUSTER SLOTS asked over TLS lists
    /// the TLS ports (over plaintext, the plaintext ones the harness uses).
    pub tls: Option<Vec<String>>,
}

impl Default for ClusterOpts {
    fn default() -> Self {
        ClusterOpts {
            masters: 3,
            replicas_per_master: 1,
            hostnames: false,
            extra_args: Vec::new(),
            tls: None,
        }
    }
}

/// One `redis-server` of the cluster as started.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// 1-based; node N announces `nodeN.slotline.test` when host names are on.
    pub index: usize,
    pub port: u16,
    /// `127.0.0.1:port`.
    pub addr: String,
    /// Of the running process; 0 while it is killed.
    pub pid: u32,
    pub hostname: Option<String>,
    /// False once `kill` has been called for it.
    pub alive: bool,
    /// Its TLS port, with [`ClusterOpts::tls`].
    pub tls_port: Option<u16>,
}

/// A master as CLUSTER NODES reports it.
#[derive(Debug, Clone)]
pub struct MasterInfo {
    pub id: String,
    pub port: u16,
    /// Inclusive slot ranges it serves.
    pub slots: Vec<(u16, u16)>,
}

impl MasterInfo {
    pub fn owns(&self, slot: u16) -> bool {
        self.slots
            .iter()
            .any(|&(start, end)| (start..=end).contains(&slot))
    }
}

/// A node as CLUSTER SLOTS reports it: `host` is an IP or, with host names on, a host name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub id: String,
}

/// One entry of CLUSTER SLOTS.
#[derive(Debug, Clone)]
pub struct SlotRange {
    pub start: u16,
    pub end: u16,
    pub master: Endpoint,
    pub replicas: Vec<Endpoint>,
}

struct Node {
    index: usize,
    port: u16,
    tls_port: Option<u16>,
    dir: PathBuf,
    hostname: Option<String>,
    /// `None` once killed.
    child: Mutex<Option<Child>>,
}

/// Real `redis-server` processes forming a cluster; killed (by PID) and removed on drop.
pub struct RedisCluster {
    opts: ClusterOpts,
    nodes: Vec<Node>,
    reaper: Mutex<Option<Reaper>>,
    dir: TempDir,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RedisCluster {
    /// Starts the nodes, creates the cluster with `redis-cli --cluster create`, and returns once every
    /// node reports `cluster_state:ok`, sees all 16384 slots served with every replica in place, and
    /// every replica's link to its master is up (so that a failover can happen).
    pub fn start(opts: ClusterOpts) -> RedisCluster {
        assert!(
            opts.masters >= 3,
            "redis-cli --cluster create needs at least 3 masters"
        );
        let count = opts.masters * (1 + opts.replicas_per_master);
        if opts.hostnames {
            ensure_test_hosts(count);
        }
        let dir = TempDir::new("cluster");
        let reaper = Reaper::spawn(dir.path());
        let mut cluster = RedisCluster {
            opts,
            nodes: Vec::new(),
            reaper: Mutex::new(Some(reaper)),
            dir,
        };
        for index in 1..=count {
            cluster.spawn_node(index);
        }
        for node in &cluster.nodes {
            cluster.wait_answers_ping(node);
        }
        cluster.create();
        wait_ok(
            Duration::from_secs(60),
            "the new cluster to be complete on every node",
            || cluster.check(true),
        );
        cluster
    }

    fn spawn_node(&mut self, index: usize) {
        let port = cluster_port();
        let dir = self.dir.path().join(format!("node{index}"));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let node = Node {
            index,
            port,
            tls_port: self.opts.tls.as_ref().map(|_| super::free_port()),
            dir,
            hostname: self.opts.hostnames.then(|| test_hostname(index)),
            child: Mutex::new(None),
        };
        self.spawn(&node);
        self.nodes.push(node);
    }

    /// Starts `node`'s redis-server (again: its nodes.conf makes a restarted node rejoin the cluster
    /// as it left it, or as the replica of whoever took its slots meanwhile).
    fn spawn(&self, node: &Node) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(node.dir.join("redis.log"))
            .expect("open redis.log");
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &node.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--cluster-enabled",
            "yes",
        ])
        .arg("--cluster-config-file")
        .arg(node.dir.join("nodes.conf"))
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .arg("--dir")
        .arg(&node.dir)
        .args(["--cluster-node-timeout", "2000"]);
        if let Some(name) = &node.hostname {
            cmd.args([
                "--cluster-announce-hostname",
                name,
                "--cluster-preferred-endpoint-type",
                "hostname",
            ]);
        }
        if let (Some(tls), Some(tls_port)) = (&self.opts.tls, node.tls_port) {
            // The bus stays where the harness reserved it (port + 10000), now speaking TLS.
            cmd.args(["--tls-port", &tls_port.to_string()])
                .args(["--cluster-port", &(node.port + 10000).to_string()])
                .args(["--tls-cluster", "yes", "--tls-replication", "yes"])
                .args(tls);
        }
        cmd.args(&self.opts.extra_args)
            .current_dir(&node.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot run redis-server ({e}); is the redis-server package installed?")
        });
        lock(&self.reaper)
            .as_mut()
            .expect("reaper")
            .watch(child.id());
        *lock(&node.child) = Some(child);
    }

    fn wait_answers_ping(&self, node: &Node) {
        wait_ok(
            Duration::from_secs(10),
            &format!("redis-server on port {} to answer PING", node.port),
            || {
                if let Some(child) = lock(&node.child).as_mut() {
                    if let Ok(Some(status)) = child.try_wait() {
                        panic!(
                            "redis-server on port {} exited ({status}); its log:\n{}",
                            node.port,
                            log_tail(&node.dir.join("redis.log"), 30)
                        );
                    }
                }
                let mut client = Client::try_connect(node.port).map_err(|e| e.to_string())?;
                match client.cmd(&["PING"]) {
                    Reply::Status(s) if s == "PONG" => Ok(()),
                    other => Err(format!("PING answered {other:?}")),
                }
            },
        );
    }

    fn create(&self) {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["--cluster", "create"]);
        for node in &self.nodes {
            cmd.arg(format!("127.0.0.1:{}", node.port));
        }
        cmd.args([
            "--cluster-replicas",
            &self.opts.replicas_per_master.to_string(),
            "--cluster-yes",
        ]);
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() || text.contains("[ERR]") {
            panic!(
                "redis-cli --cluster create failed ({}):\n{text}",
                out.status
            );
        }
    }

    /// Checks every live node's view: `cluster_state:ok`, all slots served by live masters, host
    /// names when configured. `complete` also wants every replica listed and every replica link up.
    fn check(&self, complete: bool) -> Result<(), String> {
        let live = self.live_ports();
        let mut masters = Vec::new();
        for &port in &live {
            let mut client =
                Client::try_connect(port).map_err(|e| format!("connect to {port}: {e}"))?;
            let info = client.cmd(&["CLUSTER", "INFO"]);
            if !info.as_str().unwrap_or("").contains("cluster_state:ok") {
                return Err(format!("{port} is not cluster_state:ok"));
            }
            let ranges = parse_slots(&client.cmd(&["CLUSTER", "SLOTS"]))?;
            check_coverage(&ranges).map_err(|e| format!("{port}: {e}"))?;
            for range in &ranges {
                if !live.contains(&range.master.port) {
                    return Err(format!(
                        "{port} has slots {}-{} on {}, which is down",
                        range.start, range.end, range.master.port
                    ));
                }
                if complete && range.replicas.len() != self.opts.replicas_per_master {
                    return Err(format!(
                        "{port} lists {} replicas for slots {}-{}",
                        range.replicas.len(),
                        range.start,
                        range.end
                    ));
                }
                for endpoint in std::iter::once(&range.master).chain(&range.replicas) {
                    let want = match self.node_at(endpoint.port).and_then(|n| n.hostname.clone()) {
                        Some(name) => name,
                        None => "127.0.0.1".to_string(),
                    };
                    if endpoint.host != want {
                        return Err(format!(
                            "{port} names {} as {:?}, not {want:?}",
                            endpoint.port, endpoint.host
                        ));
                    }
                }
                if !masters.contains(&range.master.port) {
                    masters.push(range.master.port);
                }
            }
            if complete {
                let replication = client.cmd(&["INFO", "replication"]);
                let text = replication.as_str().unwrap_or("");
                if text.contains("role:slave") && !text.contains("master_link_status:up") {
                    return Err(format!("replica {port} has no link to its master yet"));
                }
            }
        }
        if complete && masters.len() != self.opts.masters {
            return Err(format!(
                "{} masters serve slots, {} expected",
                masters.len(),
                self.opts.masters
            ));
        }
        Ok(())
    }

    /// Waits until every live node reports `cluster_state:ok` and sees every slot served by a live
    /// master: after a kill, this is the replica's promotion having reached every node.
    pub fn wait_healthy(&self, deadline: Duration) {
        wait_ok(
            deadline,
            "every slot to be served by a live master in every live node's view",
            || self.check(false),
        );
    }

    pub fn opts(&self) -> &ClusterOpts {
        &self.opts
    }

    /// The TLS port of the node whose plaintext port is `port` (a cluster started with TLS).
    pub fn tls_port(&self, port: u16) -> u16 {
        self.node_at(port)
            .and_then(|n| n.tls_port)
            .unwrap_or_else(|| panic!("node {port} has no TLS port"))
    }

    /// Every node as started, with whether it has been killed.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        self.nodes
            .iter()
            .map(|n| {
                let pid = lock(&n.child).as_ref().map(Child::id);
                NodeInfo {
                    index: n.index,
                    port: n.port,
                    addr: format!("127.0.0.1:{}", n.port),
                    pid: pid.unwrap_or(0),
                    hostname: n.hostname.clone(),
                    alive: pid.is_some(),
                    tls_port: n.tls_port,
                }
            })
            .collect()
    }

    /// Ports of the nodes not killed.
    pub fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| lock(&n.child).is_some())
            .map(|n| n.port)
            .collect()
    }

    fn node_at(&self, port: u16) -> Option<&Node> {
        self.nodes.iter().find(|n| n.port == port)
    }

    fn node(&self, port: u16) -> &Node {
        self.node_at(port)
            .unwrap_or_else(|| panic!("no node of this cluster listens on {port}"))
    }

    fn any_live_port(&self) -> u16 {
        *self
            .live_ports()
            .first()
            .expect("every node of the cluster is down")
    }

    /// The directory holding each node's `nodeN/redis.log`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_path(&self, port: u16) -> PathBuf {
        self.node(port).dir.join("redis.log")
    }

    /// A new connection to one node, for direct checks and admin commands.
    pub fn client(&self, port: u16) -> Client {
        Client::connect(port)
    }

    /// Runs `redis-cli -h 127.0.0.1 -p PORT ARGS...` and returns its stdout (errors are printed there
    /// too when stdout is not a terminal).
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli");
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        text.trim_end().to_string()
    }

    /// SIGKILLs one node (by its PID) and reaps it.
    pub fn kill(&self, port: u16) {
        let node = self.node(port);
        let mut child = lock(&node.child)
            .take()
            .unwrap_or_else(|| panic!("node {port} was already killed"));
        child
            .kill()
            .unwrap_or_else(|e| panic!("kill redis-server {} on port {port}: {e}", child.id()));
        let _ = child.wait();
    }

    /// Starts a killed node again on its port, with its data directory (no data: persistence is
    /// off) and nodes.conf, and waits until it answers PING. It rejoins the cluster on its own.
    pub fn restart(&self, port: u16) {
        let node = self.node(port);
        assert!(lock(&node.child).is_none(), "node {port} is running");
        self.spawn(node);
        self.wait_answers_ping(node);
    }

    /// Sends `signal` (`STOP`, `CONT` ...) to a live node.
    pub fn signal(&self, port: u16, signal: &str) {
        let pid = lock(&self.node(port).child)
            .as_ref()
            .map(Child::id)
            .unwrap_or_else(|| panic!("node {port} is not running"));
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} redis-server on {port}");
    }

    /// CLUSTER SLOTS as one live node sees it.
    pub fn slots(&self) -> Vec<SlotRange> {
        self.slots_seen_by(self.any_live_port())
    }

    pub fn slots_seen_by(&self, port: u16) -> Vec<SlotRange> {
        let reply = Client::connect(port).cmd(&["CLUSTER", "SLOTS"]);
        parse_slots(&reply).unwrap_or_else(|e| panic!("CLUSTER SLOTS from {port}: {e}"))
    }

    /// The live nodes that answer `ROLE` as master, by port, each with the ports of the replicas
    /// linked to it, sorted. Asked of the masters themselves: one node's CLUSTER NODES may lag a
    /// takeover.
    pub fn masters_by_role(&self) -> Vec<(u16, Vec<u16>)> {
        let mut masters: Vec<(u16, Vec<u16>)> = self
            .live_ports()
            .into_iter()
            .filter_map(|port| {
                let role = self.client(port).cmd(&["ROLE"]);
                let parts = role.as_array()?;
                (parts.first()?.as_str()? == "master").then(|| {
                    let replicas = parts.get(2).and_then(Reply::as_array).unwrap_or(&[]);
                    let ports = replicas
                        .iter()
                        .filter_map(|r| r.as_array()?.get(1)?.as_str()?.parse().ok());
                    (port, ports.collect())
                })
            })
            .collect();
        masters.sort();
        masters
    }

    /// Waits until every live node's CLUSTER NODES lists as masters exactly the nodes that answer
    /// `ROLE` as master. Right after a CLUSTER FAILOVER the new master says so at once, while the
    /// old one (and the others' view of it) follows a gossip round later; choosing the nodes of a
    /// slot migration in between sends SETSLOT to a node that has just become a replica.
    pub fn wait_roles_settled(&self, deadline: Duration) {
        wait_ok(
            deadline,
            "every node to agree on which nodes are masters",
            || {
                let by_role: Vec<u16> =
                    self.masters_by_role().into_iter().map(|(p, _)| p).collect();
                for port in self.live_ports() {
                    let seen: Vec<u16> =
                        self.masters_seen_by(port).iter().map(|m| m.port).collect();
                    if seen != by_role {
                        return Err(format!(
                            "{port} lists masters {seen:?}, ROLE says {by_role:?}"
                        ));
                    }
                }
                Ok(())
            },
        );
    }

    /// A master other than `port`.
    pub fn another_master(&self, port: u16) -> u16 {
        self.masters()
            .iter()
            .map(|m| m.port)
            .find(|&p| p != port)
            .expect("another master")
    }

    /// Port of the master serving `slot`, from CLUSTER SLOTS of a live node.
    pub fn node_for_slot(&self, slot: u16) -> u16 {
        self.slots()
            .iter()
            .find(|r| (r.start..=r.end).contains(&slot))
            .map(|r| r.master.port)
            .unwrap_or_else(|| panic!("no master serves slot {slot}"))
    }

    /// The masters (not failed) as one live node's CLUSTER NODES lists them, by port.
    pub fn masters(&self) -> Vec<MasterInfo> {
        self.masters_seen_by(self.any_live_port())
    }

    pub fn masters_seen_by(&self, port: u16) -> Vec<MasterInfo> {
        let mut masters: Vec<MasterInfo> = self
            .cluster_nodes(port)
            .into_iter()
            .filter(|n| n.flags.iter().any(|f| f == "master"))
            .filter(|n| {
                !n.flags
                    .iter()
                    .any(|f| matches!(f.as_str(), "fail" | "noaddr" | "handshake"))
            })
            .map(|n| MasterInfo {
                id: n.id,
                port: n.port,
                slots: n.slots,
            })
            .collect();
        masters.sort_by_key(|m| m.port);
        masters
    }

    /// Ports of the replicas of the master on `master_port`, from that master's CLUSTER NODES.
    pub fn replicas_of(&self, master_port: u16) -> Vec<u16> {
        let id = self.node_id(master_port);
        self.cluster_nodes(master_port)
            .into_iter()
            .filter(|n| n.master == id && !n.flags.iter().any(|f| f == "fail"))
            .map(|n| n.port)
            .collect()
    }

    fn cluster_nodes(&self, port: u16) -> Vec<NodeLine> {
        let reply = Client::connect(port).cmd(&["CLUSTER", "NODES"]);
        let text = reply
            .as_str()
            .unwrap_or_else(|| panic!("CLUSTER NODES from {port}: {reply:?}"));
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(parse_node_line)
            .collect()
    }

    /// CLUSTER MYID of a node.
    pub fn node_id(&self, port: u16) -> String {
        let reply = Client::connect(port).cmd(&["CLUSTER", "MYID"]);
        reply
            .as_str()
            .unwrap_or_else(|| panic!("CLUSTER MYID on {port}: {reply:?}"))
            .to_string()
    }

    /// Migration step 1, on the target: `CLUSTER SETSLOT slot IMPORTING <source id>`.
    pub fn setslot_importing(&self, slot: u16, to: u16, from: u16) {
        let from_id = self.node_id(from);
        expect_ok(
            to,
            &[
                "CLUSTER",
                "SETSLOT",
                &slot.to_string(),
                "IMPORTING",
                &from_id,
            ],
        );
    }

    /// Migration step 2, on the source: `CLUSTER SETSLOT slot MIGRATING <target id>`.
    pub fn setslot_migrating(&self, slot: u16, from: u16, to: u16) {
        let to_id = self.node_id(to);
        expect_ok(
            from,
            &["CLUSTER", "SETSLOT", &slot.to_string(), "MIGRATING", &to_id],
        );
    }

    /// Migration step 3, one batch: MIGRATEs up to `max` keys of `slot` from `from` to `to` and
    /// returns how many there were (0: the slot is empty on the source).
    pub fn migrate_some_keys(&self, slot: u16, from: u16, to: u16, max: usize) -> usize {
        let mut source = Client::connect(from);
        let reply = source.cmd(&[
            "CLUSTER",
            "GETKEYSINSLOT",
            &slot.to_string(),
            &max.to_string(),
        ]);
        let keys: Vec<Vec<u8>> = match reply.as_array() {
            Some(items) => items
                .iter()
                .map(|k| k.as_bytes().expect("key").to_vec())
                .collect(),
            None => panic!("CLUSTER GETKEYSINSLOT on {from}: {reply:?}"),
        };
        if keys.is_empty() {
            return 0;
        }
        // With tls-cluster, nodes MIGRATE to each other over TLS.
        let target = self.node_at(to).and_then(|n| n.tls_port).unwrap_or(to);
        let mut args: Vec<Vec<u8>> = [
            "MIGRATE",
            "127.0.0.1",
            &target.to_string(),
            "",
            "0",
            "5000",
            "KEYS",
        ]
        .iter()
        .map(|a| a.as_bytes().to_vec())
        .collect();
        args.extend(keys.iter().cloned());
        let reply = source.cmd(&args);
        assert!(
            reply.is_ok() || reply == Reply::Status("NOKEY".into()),
            "MIGRATE of {} keys of slot {slot} from {from} to {to}: {reply:?}",
            keys.len()
        );
        keys.len()
    }

    /// Migration step 3: MIGRATEs every key of `slot` from `from` to `to`; returns how many.
    pub fn migrate_keys(&self, slot: u16, from: u16, to: u16) -> usize {
        let mut moved = 0;
        loop {
            match self.migrate_some_keys(slot, from, to, 100) {
                0 => return moved,
                n => moved += n,
            }
        }
    }

    /// Migration step 4: `CLUSTER SETSLOT slot NODE <owner id>` on the owner first (which ends its
    /// importing state and bumps its epoch), then on every other live master.
    pub fn setslot_node(&self, slot: u16, owner: u16) {
        let owner_id = self.node_id(owner);
        let others: Vec<u16> = self
            .masters_seen_by(owner)
            .iter()
            .map(|m| m.port)
            .filter(|&p| p != owner)
            .collect();
        // Masters as they are now: a node the owner still lists as master may have just handed its
        // slots to its replica (CLUSTER FAILOVER), and a replica refuses SETSLOT.
        let live = self.live_ports();
        let others = others
            .into_iter()
            .filter(|p| live.contains(p))
            .filter(|&p| Client::connect(p).role() == "master");
        for port in std::iter::once(owner).chain(others) {
            expect_ok(
                port,
                &["CLUSTER", "SETSLOT", &slot.to_string(), "NODE", &owner_id],
            );
        }
    }

    /// Waits until every live node's CLUSTER SLOTS puts `slot` on `owner`.
    pub fn wait_slot_owner(&self, slot: u16, owner: u16, deadline: Duration) {
        wait_ok(
            deadline,
            &format!("every node to see slot {slot} on {owner}"),
            || {
                for port in self.live_ports() {
                    let ranges = parse_slots(&Client::connect(port).cmd(&["CLUSTER", "SLOTS"]))?;
                    let seen = ranges
                        .iter()
                        .find(|r| (r.start..=r.end).contains(&slot))
                        .map(|r| r.master.port);
                    if seen != Some(owner) {
                        return Err(format!("{port} sees slot {slot} on {seen:?}"));
                    }
                }
                Ok(())
            },
        );
    }

    /// Moves `slot` from `from` to `to` the way `redis-cli --cluster reshard` does (IMPORTING,
    /// MIGRATING, MIGRATE every key, SETSLOT NODE on all masters), then waits until every node agrees.
    pub fn migrate_slot(&self, slot: u16, from: u16, to: u16) {
        self.setslot_importing(slot, to, from);
        self.setslot_migrating(slot, from, to);
        self.migrate_keys(slot, from, to);
        self.setslot_node(slot, to);
        self.wait_slot_owner(slot, to, Duration::from_secs(10));
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        if let Some(reaper) = self
            .reaper
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            reaper.disarm();
        }
        for node in &mut self.nodes {
            if let Some(mut child) = node
                .child
                .get_mut()
                .unwrap_or_else(|e| e.into_inner())
                .take()
            {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if thread::panicking() {
            self.dir.keep();
            eprintln!(
                "redis cluster logs kept in {}/node*/redis.log",
                self.dir.path().display()
            );
        }
    }
}

fn expect_ok(port: u16, args: &[&str]) {
    let reply = Client::connect(port).cmd(args);
    assert!(reply.is_ok(), "{} on {port}: {reply:?}", args.join(" "));
}

struct NodeLine {
    id: String,
    port: u16,
    flags: Vec<String>,
    master: String,
    slots: Vec<(u16, u16)>,
}

/// One line of CLUSTER NODES: `id ip:port@bus[,hostname] flags master ping pong epoch link slot...`.
fn parse_node_line(line: &str) -> NodeLine {
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert!(fields.len() >= 8, "short CLUSTER NODES line: {line}");
    let addr = fields[1].split('@').next().unwrap_or("");
    let port = addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let slots = fields[8..]
        .iter()
        .filter(|s| !s.starts_with('[')) // [slot->-id] / [slot-<-id]: migration in progress
        .map(|s| {
            let (a, b) = s.split_once('-').unwrap_or((s, s));
            (a.parse().expect("slot"), b.parse().expect("slot"))
        })
        .collect();
    NodeLine {
        id: fields[0].to_string(),
        port,
        flags: fields[2].split(',').map(str::to_string).collect(),
        master: fields[3].to_string(),
        slots,
    }
}

/// Parses a CLUSTER SLOTS reply.
pub fn parse_slots(reply: &Reply) -> Result<Vec<SlotRange>, String> {
    let items = reply
        .as_array()
        .ok_or_else(|| format!("CLUSTER SLOTS answered {reply:?}"))?;
    let mut ranges = Vec::new();
    for item in items {
        let fields = item
            .as_array()
            .ok_or_else(|| format!("bad CLUSTER SLOTS entry {item:?}"))?;
        let slot = |i: usize| fields.get(i).and_then(Reply::as_int).map(|n| n as u16);
        let (Some(start), Some(end)) = (slot(0), slot(1)) else {
            return Err(format!("bad CLUSTER SLOTS entry {item:?}"));
        };
        let mut endpoints = fields[2..].iter().map(|e| {
            let e = e.as_array().unwrap_or(&[]);
            match (
                e.first().and_then(Reply::as_str),
                e.get(1).and_then(Reply::as_int),
            ) {
                (Some(host), Some(port)) => Ok(Endpoint {
                    host: host.to_string(),
                    port: port as u16,
                    id: e.get(2).and_then(Reply::as_str).unwrap_or("").to_string(),
                }),
                _ => Err(format!("bad endpoint in CLUSTER SLOTS entry {item:?}")),
            }
        });
        let master = endpoints
            .next()
            .ok_or_else(|| format!("no master in {item:?}"))??;
        let replicas = endpoints.collect::<Result<Vec<_>, _>>()?;
        ranges.push(SlotRange {
            start,
            end,
            master,
            replicas,
        });
    }
    ranges.sort_by_key(|r| r.start);
    Ok(ranges)
}

/// Sorted ranges must cover 0..=16383 without gaps or overlaps.
fn check_coverage(ranges: &[SlotRange]) -> Result<(), String> {
    let mut next = 0u32;
    for r in ranges {
        if u32::from(r.start) != next {
            return Err(format!(
                "slots from {next} are not covered (next range starts at {})",
                r.start
            ));
        }
        next = u32::from(r.end) + 1;
    }
    if next != u32::from(SLOTS) {
        return Err(format!("slots from {next} are not covered"));
    }
    Ok(())
}
