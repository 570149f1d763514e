//! A master with replicas (plain `redis-server`s), and real `redis-sentinel`s watching them.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Duration;

use super::{free_port, log_tail, wait_ok, Client, Reaper, RedisServers, Reply, TempDir};

/// Server 0 starts as master, the others as its replicas; `switch` and `kill` change that.
pub struct ReplicaGroup {
    pub servers: RedisServers,
    /// Replicas replicate over TLS (the servers' TLS ports).
    tls: bool,
}

impl ReplicaGroup {
    /// Starts `count` servers, makes 1.. replicas of 0, and waits until every link is up.
    pub fn start(count: usize) -> ReplicaGroup {
        ReplicaGroup::link(RedisServers::start(count), false)
    }

    /// The same with TLS (see [`RedisServers::start_tls`]): replicas replicate over TLS, and
    /// [`tls_port`](Self::tls_port) is where clients speak it.
    pub fn start_tls(count: usize, tls_args: Vec<String>) -> ReplicaGroup {
        ReplicaGroup::link(RedisServers::start_tls(count, tls_args), true)
    }

    fn link(servers: RedisServers, tls: bool) -> ReplicaGroup {
        let count = servers.len();
        let group = ReplicaGroup { servers, tls };
        for i in 1..count {
            group.replicate(i, Some(0));
        }
        for i in 1..count {
            group.wait_linked(i);
        }
        group
    }

    pub fn port(&self, index: usize) -> u16 {
        self.servers.port(index)
    }

    pub fn tls_port(&self, index: usize) -> u16 {
        self.servers.tls_port(index)
    }

    pub fn addr(&self, index: usize) -> String {
        format!("127.0.0.1:{}", self.port(index))
    }

    pub fn client(&self, index: usize) -> Client {
        self.servers.client(index)
    }

    /// `REPLICAOF` server `master` on server `index`, or `REPLICAOF NO ONE` with None.
    pub fn replicate(&self, index: usize, master: Option<usize>) {
        let reply = match master {
            Some(m) => {
                let port = match self.tls {
                    true => self.tls_port(m),
                    false => self.port(m),
                };
                self.client(index)
                    .cmd(&["REPLICAOF", "127.0.0.1", &port.to_string()])
            }
            None => self.client(index).cmd(&["REPLICAOF", "NO", "ONE"]),
        };
        assert!(reply.is_ok(), "REPLICAOF on server {index}: {reply:?}");
    }

    /// Waits until server `index` is a replica with its link to the master up.
    pub fn wait_linked(&self, index: usize) {
        wait_ok(
            Duration::from_secs(15),
            &format!("server {index} to be a linked replica"),
            || {
                let info = self.info(index, "replication");
                match info.contains("master_link_status:up") {
                    true => Ok(()),
                    false => Err(info),
                }
            },
        );
    }

    /// `INFO section` of server `index`.
    pub fn info(&self, index: usize, section: &str) -> String {
        match self.client(index).cmd(&["INFO", section]) {
            Reply::Bulk(Some(b)) => String::from_utf8_lossy(&b).into_owned(),
            other => panic!("INFO on server {index}: {other:?}"),
        }
    }

    /// What `ROLE` says server `index` is: "master" or "slave".
    pub fn role(&self, index: usize) -> String {
        let role = self.client(index).role();
        assert!(!role.is_empty(), "ROLE on server {index} names no role");
        role
    }

    /// SIGKILLs server `index`.
    pub fn kill(&mut self, index: usize) {
        self.servers.stop(index);
    }
}

/// `redis-sentinel` processes monitoring one master as `mymaster`; killed (by PID) on drop.
pub struct Sentinels {
    ports: Vec<u16>,
    /// With [`Sentinels::start_tls`].
    tls_ports: Vec<u16>,
    /// The ACL user and password the sentinels require, if any.
    user: Option<(String, String)>,
    children: Vec<Child>,
    reaper: Option<Reaper>,
    dir: TempDir,
}

impl Sentinels {
    pub const MASTER_NAME: &'static str = "mymaster";

    /// Starts `count` sentinels (quorum 2) monitoring `127.0.0.1:master_port`, which they consider down
    /// after `down_after_ms` without an answer, and waits until each sees every other sentinel and
    /// `replicas` replicas.
    pub fn start(count: usize, master_port: u16, down_after_ms: u64, replicas: usize) -> Sentinels {
        Sentinels::start_with(count, master_port, down_after_ms, replicas, None)
    }

    /// The same, the sentinels requiring ACL user `user` (name, password) of every client, each
    /// other included; their default user is off.
    pub fn start_with(
        count: usize,
        master_port: u16,
        down_after_ms: u64,
        replicas: usize,
        user: Option<(&str, &str)>,
    ) -> Sentinels {
        Sentinels::start_inner(count, master_port, down_after_ms, replicas, user, None)
    }

    /// Sentinels that also listen for TLS ([`tls_ports`](Self::tls_ports)) and speak TLS to the
    /// master (its TLS port), its replicas and each other; `tls_conf` holds the certificate lines
    /// of a sentinel.conf.
    pub fn start_tls(
        count: usize,
        master_tls_port: u16,
        down_after_ms: u64,
        replicas: usize,
        tls_conf: &str,
    ) -> Sentinels {
        let conf = format!("{tls_conf}tls-replication yes\n");
        Sentinels::start_inner(
            count,
            master_tls_port,
            down_after_ms,
            replicas,
            None,
            Some(conf),
        )
    }

    fn start_inner(
        count: usize,
        master_port: u16,
        down_after_ms: u64,
        replicas: usize,
        user: Option<(&str, &str)>,
        tls: Option<String>,
    ) -> Sentinels {
        let acl = user.map_or(String::new(), |(name, password)| {
            format!(
                "user default off\nuser {name} on >{password} allchannels +@all\n\
                 sentinel sentinel-user {name}\nsentinel sentinel-pass {password}\n"
            )
        });
        let dir = TempDir::new("sentinel");
        let mut reaper = Reaper::spawn(dir.path());
        let mut ports = Vec::new();
        let mut tls_ports = Vec::new();
        let mut children = Vec::new();
        for i in 0..count {
            let port = free_port();
            let tls_lines = match &tls {
                Some(conf) => {
                    let tls_port = free_port();
                    tls_ports.push(tls_port);
                    format!("tls-port {tls_port}\n{conf}")
                }
                None => String::new(),
            };
            let sdir = dir.path().join(format!("sentinel{i}"));
            fs::create_dir_all(&sdir).expect("create a sentinel dir");
            let conf = sdir.join("sentinel.conf");
            let name = Sentinels::MASTER_NAME;
            fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {dir}\nlogfile {log}\n\
                     sentinel monitor {name} 127.0.0.1 {master_port} 2\n\
                     sentinel down-after-milliseconds {name} {down_after_ms}\n\
                     sentinel failover-timeout {name} 10000\n\
                     sentinel parallel-syncs {name} 1\n{acl}{tls_lines}",
                    dir = sdir.display(),
                    log = sdir.join("sentinel.log").display(),
                ),
            )
            .expect("write sentinel.conf");
            let child = Command::new("redis-sentinel")
                .arg(&conf)
                .current_dir(&sdir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot run redis-sentinel ({e}); is the redis-sentinel package installed?"
                    )
                });
            reaper.watch(child.id());
            ports.push(port);
            children.push(child);
        }
        let sentinels = Sentinels {
            ports,
            tls_ports,
            user: user.map(|(name, password)| (name.to_string(), password.to_string())),
            children,
            reaper: Some(reaper),
            dir,
        };
        for i in 0..count {
            wait_ok(
                Duration::from_secs(30),
                &format!("sentinel {i} to know its peers and {replicas} replicas"),
                || {
                    let mut client =
                        Client::try_connect(sentinels.ports[i]).map_err(|e| e.to_string())?;
                    sentinels.log_in(&mut client);
                    let reply = client.cmd(&["SENTINEL", "MASTER", Sentinels::MASTER_NAME]);
                    let fields = reply.as_array().ok_or(format!("{reply:?}"))?;
                    let peers = field(fields, "num-other-sentinels").unwrap_or_default();
                    let slaves = field(fields, "num-slaves").unwrap_or_default();
                    if peers == (count - 1).to_string() && slaves == replicas.to_string() {
                        Ok(())
                    } else {
                        Err(format!("{peers} other sentinels, {slaves} replicas"))
                    }
                },
            );
        }
        sentinels
    }

    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    pub fn tls_ports(&self) -> &[u16] {
        &self.tls_ports
    }

    /// A client of sentinel `index`, logged in when the sentinels require it.
    pub fn client(&self, index: usize) -> Client {
        let mut client = Client::connect(self.ports[index]);
        self.log_in(&mut client);
        client
    }

    fn log_in(&self, client: &mut Client) {
        if let Some((name, password)) = &self.user {
            let reply = client.cmd(&["AUTH", name, password]);
            assert!(reply.is_ok(), "AUTH {name} at a sentinel: {reply:?}");
        }
    }

    /// The master sentinel `index` names now.
    pub fn master_port(&self, index: usize) -> Option<u16> {
        let reply = self.client(index).cmd(&[
            "SENTINEL",
            "GET-MASTER-ADDR-BY-NAME",
            Sentinels::MASTER_NAME,
        ]);
        reply
            .as_array()
            .and_then(|a| a.get(1))
            .and_then(Reply::as_str)
            .and_then(|p| p.parse().ok())
    }

    /// Whether every sentinel names `master` and has seen `replica` report itself a replica (the
    /// role it reported last, `role-reported` in SENTINEL REPLICAS).
    ///
    /// Sentinel only refreshes a replica's INFO every 10 s. A sentinel that last saw `replica` as a
    /// master (two failovers back) and has not yet heard of a new failover takes the promoted
    /// replica for a stray master and turns it back into a replica at once (`+convert-to-slave`):
    /// the writes the new master acknowledged until then are thrown away by Sentinel itself. Tests
    /// that fail over again and again wait for this before the next failover, as failovers minutes
    /// apart always find it.
    pub fn agree_on(&self, master: u16, replica: u16) -> bool {
        (0..self.ports.len()).all(|i| {
            if self.master_port(i) != Some(master) {
                return false;
            }
            let reply = self
                .client(i)
                .cmd(&["SENTINEL", "REPLICAS", Sentinels::MASTER_NAME]);
            reply.as_array().unwrap_or_default().iter().any(|fields| {
                let fields = fields.as_array().unwrap_or_default();
                field(fields, "port") == Some(&replica.to_string())
                    && field(fields, "role-reported") == Some("slave")
            })
        })
    }

    /// Sentinel `index`'s log, for failure messages.
    pub fn log(&self, index: usize) -> String {
        let path: PathBuf = self
            .dir
            .path()
            .join(format!("sentinel{index}"))
            .join("sentinel.log");
        log_tail(&path, 40)
    }
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        if let Some(reaper) = self.reaper.take() {
            reaper.disarm();
        }
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            self.dir.keep();
            eprintln!(
                "sentinel logs kept in {}/sentinel*/sentinel.log",
                self.dir.path().display()
            );
        }
    }
}

/// A field of a sentinel's flat `name value name value ...` reply (SENTINEL MASTER, REPLICAS).
fn field<'a>(fields: &'a [Reply], name: &str) -> Option<&'a str> {
    fields
        .chunks(2)
        .find(|kv| kv[0].as_str() == Some(name))
        .and_then(|kv| kv.get(1)?.as_str())
}
