//! Plain `redis-server`s (the shards of a twemproxy pool) and the real `nutcracker` in front of them.

use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Duration;

use super::{
    cluster_port, free_port, log_tail, wait_ok, wait_until, Client, Reaper, Reply, TempDir,
};

/// Standalone `redis-server`s on loopback, each also listening on a unix socket; killed (by PID) and
/// removed on drop.
pub struct RedisServers {
    servers: Vec<Server>,
    args: Vec<String>,
    reaper: Option<Reaper>,
    dir: TempDir,
}

struct Server {
    port: u16,
    /// With [`RedisServers::start_tls`].
    tls_port: Option<u16>,
    dir: PathBuf,
    child: Child,
}

impl RedisServers {
    /// Starts `count` servers and returns once each answers PING.
    pub fn start(count: usize) -> RedisServers {
        RedisServers::start_with(count, &[])
    }

    /// Starts `count` servers with extra `redis-server` arguments (e.g. `--requirepass`).
    pub fn start_with(count: usize, extra_args: &[&str]) -> RedisServers {
        let args: Vec<String> = extra_args.iter().map(|a| a.to_string()).collect();
        RedisServers::start_servers(count, args, false)
    }

    /// Starts `count` servers that also listen for TLS ([`tls_port`](Self::tls_port)), with
    /// `tls_args` (see [`super::Certs::redis_args`]); replicas of them replicate over TLS.
    pub fn start_tls(count: usize, tls_args: Vec<String>) -> RedisServers {
        let mut args = tls_args;
        args.extend(["--tls-replication".to_string(), "yes".to_string()]);
        RedisServers::start_servers(count, args, true)
    }

    fn start_servers(count: usize, args: Vec<String>, tls: bool) -> RedisServers {
        let dir = TempDir::new("redis");
        let mut reaper = Reaper::spawn(dir.path());
        let mut servers = Vec::new();
        for index in 0..count {
            // cluster_port: never handed out twice in this process, so parallel starts cannot collide.
            let port = cluster_port();
            let tls_port = tls.then(free_port);
            let server_dir = dir.path().join(format!("redis{index}"));
            fs::create_dir_all(&server_dir)
                .unwrap_or_else(|e| panic!("create {}: {e}", server_dir.display()));
            let child = spawn_server(port, tls_port, &server_dir, &args);
            reaper.watch(child.id());
            servers.push(Server {
                port,
                tls_port,
                dir: server_dir,
                child,
            });
        }
        let mut all = RedisServers {
            servers,
            args,
            reaper: Some(reaper),
            dir,
        };
        for index in 0..count {
            all.wait_answers_ping(index);
        }
        all
    }

    fn wait_answers_ping(&mut self, index: usize) {
        let server = &mut self.servers[index];
        let (port, log) = (server.port, server.dir.join("redis.log"));
        wait_ok(
            Duration::from_secs(10),
            &format!("redis-server on port {port} to answer PING"),
            || {
                if let Ok(Some(status)) = server.child.try_wait() {
                    panic!(
                        "redis-server on port {port} exited ({status}); its log:\n{}",
                        log_tail(&log, 30)
                    );
                }
                let mut client = Client::try_connect(port).map_err(|e| e.to_string())?;
                match client.cmd(&["PING"]) {
                    Reply::Status(s) if s == "PONG" => Ok(()),
                    // A server with requirepass answers, just not yet to us.
                    Reply::Error(e) if e.starts_with("NOAUTH") => Ok(()),
                    other => Err(format!("PING answered {other:?}")),
                }
            },
        );
    }

    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// A native slotline config with one ketama pool named `shards` on `127.0.0.1:port` over these
    /// servers (named s0, s1, ...), hashed with murmur and `{}` hash tags; `extra` adds pool lines
    /// (indented by four spaces).
    pub fn ketama_yaml(&self, port: u16, extra: &str) -> String {
        let mut yaml = format!(
            "pools:\n  shards:\n    listen: 127.0.0.1:{port}\n    mode: ketama\n    hash: murmur\n    \
             hash_tag: \"{{}}\"\n{extra}    servers:\n"
        );
        for i in 0..self.len() {
            yaml.push_str(&format!("      - 127.0.0.1:{}:1 s{i}\n", self.port(i)));
        }
        yaml
    }

    /// Kills server `index` (SIGKILL) and waits until it is gone: a shard that went down.
    pub fn stop(&mut self, index: usize) {
        let server = &mut self.servers[index];
        let _ = server.child.kill();
        let _ = server.child.wait();
    }

    /// Starts server `index` again on its old port (with no data) and waits until it answers PING.
    pub fn restart(&mut self, index: usize) {
        self.stop(index);
        let server = &mut self.servers[index];
        server.child = spawn_server(server.port, server.tls_port, &server.dir, &self.args);
        if let Some(reaper) = &mut self.reaper {
            reaper.watch(server.child.id());
        }
        self.wait_answers_ping(index);
    }

    /// Sends `signal` ("STOP", "CONT") to server `index`: a stopped server takes no more bytes from
    /// its sockets, as a stalled or unreachable one.
    pub fn signal(&self, index: usize, signal: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.servers[index].child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} redis-server {index}");
    }

    pub fn port(&self, index: usize) -> u16 {
        self.servers[index].port
    }

    /// Server `index`'s TLS port (servers started with [`start_tls`](Self::start_tls)).
    pub fn tls_port(&self, index: usize) -> u16 {
        self.servers[index]
            .tls_port
            .expect("a server started with start_tls")
    }

    /// The path of server `index`'s unix socket.
    pub fn socket(&self, index: usize) -> PathBuf {
        self.servers[index].dir.join("redis.sock")
    }

    pub fn client(&self, index: usize) -> Client {
        Client::connect(self.port(index))
    }

    /// The keys server `index` holds that match a KEYS `pattern`.
    pub fn keys(&self, index: usize, pattern: &[u8]) -> Vec<Vec<u8>> {
        let reply = self.client(index).cmd(&[&b"KEYS"[..], pattern]);
        let items = reply
            .as_array()
            .unwrap_or_else(|| panic!("KEYS on port {} answered {reply:?}", self.port(index)));
        items
            .iter()
            .map(|k| {
                k.as_bytes()
                    .unwrap_or_else(|| panic!("KEYS returned {k:?}"))
                    .to_vec()
            })
            .collect()
    }
}

/// A standalone server on `ip:port` (and a unix socket in `dir`), logging to `dir/redis.log`.
fn spawn_server(port: u16, tls_port: Option<u16>, dir: &Path, extra_args: &[String]) -> Child {
    let mut args = vec![
        "--unixsocket".to_string(),
        dir.join("redis.sock").display().to_string(),
    ];
    if let Some(tls_port) = tls_port {
        args.extend(["--tls-port".to_string(), tls_port.to_string()]);
    }
    args.extend_from_slice(extra_args);
    spawn_redis_server("127.0.0.1", port, dir, &args)
}

/// Runs `redis-server` bound to `ip:port` with no persistence, its files and its log
/// (`dir/redis.log`, appended to across restarts) in `dir`.
pub(crate) fn spawn_redis_server(ip: &str, port: u16, dir: &Path, extra_args: &[String]) -> Child {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("redis.log"))
        .expect("open redis.log");
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", ip])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .arg("--dir")
        .arg(dir)
        .args(extra_args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone log handle"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run redis-server ({e}); is the redis-server package installed?")
        })
}

impl Drop for RedisServers {
    fn drop(&mut self) {
        if let Some(reaper) = self.reaper.take() {
            reaper.disarm();
        }
        for server in &mut self.servers {
            let _ = server.child.kill();
            let _ = server.child.wait();
        }
        if thread::panicking() {
            self.dir.keep();
            eprintln!(
                "redis-server logs kept in {}/redis*/redis.log",
                self.dir.path().display()
            );
        }
    }
}

/// The real twemproxy (`nutcracker`) running one YAML config; killed (by PID) on drop.
pub struct Nutcracker {
    child: Option<Child>,
    reaper: Option<Reaper>,
    port: u16,
    stats_port: u16,
    log: PathBuf,
    dir: TempDir,
}

impl Nutcracker {
    /// Writes `yaml` to a temp file, runs `nutcracker -c FILE` with its stats on a free port, and waits
    /// (up to 10 s) until `127.0.0.1:port`, the config's `listen:`, answers `PING`.
    ///
    /// nutcracker is the reference here, not the code under test: one that exits before it has
    /// answered (seen once in CI, log lost) is started again, once, with its log printed.
    pub fn start(yaml: &str, port: u16) -> Nutcracker {
        match Nutcracker::try_start(yaml, port) {
            Ok(nutcracker) => nutcracker,
            Err(why) => {
                eprintln!("nutcracker on {port} failed at start, starting it again: {why}");
                Nutcracker::try_start(yaml, port).unwrap_or_else(|why| panic!("{why}"))
            }
        }
    }

    /// One start: `Err` says why (exit status, log tail) when nutcracker did not come up answering.
    fn try_start(yaml: &str, port: u16) -> Result<Nutcracker, String> {
        let dir = TempDir::new("nutcracker");
        let config = dir.write("nutcracker.yml", yaml);
        let log = dir.path().join("nutcracker.log");
        let mut reaper = Reaper::spawn(dir.path());
        let stats_port = free_port();
        let child = Command::new("nutcracker")
            .arg("-c")
            .arg(&config)
            .args(["-s", &stats_port.to_string(), "-a", "127.0.0.1"])
            .arg("-o")
            .arg(&log)
            .arg("-p")
            .arg(dir.path().join("nutcracker.pid"))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run nutcracker ({e}); is the nutcracker package installed?")
            });
        reaper.watch(child.id());
        let mut nutcracker = Nutcracker {
            child: Some(child),
            reaper: Some(reaper),
            port,
            stats_port,
            log,
            dir,
        };
        let up = wait_until(Duration::from_secs(10), || {
            nutcracker.exit_status().is_some() || nutcracker.answers_ping()
        });
        // An answer from a listener that then exits would be someone else's: ask once more.
        // (`try_wait` keeps the status it reaped, so asking again sees an exit the wait saw.)
        if up && nutcracker.exit_status().is_none() && nutcracker.answers_ping() {
            return Ok(nutcracker);
        }
        let state = match nutcracker.exit_status() {
            Some(status) => format!("exited ({status})"),
            None if up => "stopped answering".to_string(),
            None => "did not answer within 10 s".to_string(),
        };
        Err(format!(
            "nutcracker on {port} {state}; config:\n{yaml}\nlog:\n{}",
            log_tail(&nutcracker.log, 20)
        ))
    }

    fn answers_ping(&self) -> bool {
        Client::try_connect(self.port)
            .and_then(|mut client| client.try_cmd(&["PING"]))
            .is_ok_and(|reply| reply == Reply::Status("PONG".into()))
    }

    /// Where nutcracker serves its JSON stats.
    pub fn stats_port(&self) -> u16 {
        self.stats_port
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn client(&self) -> Client {
        Client::connect(self.port)
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }
}

impl Drop for Nutcracker {
    fn drop(&mut self) {
        super::kill_owned(&mut self.reaper, &mut self.child);
        if thread::panicking() {
            self.dir.keep();
            eprintln!(
                "nutcracker log kept: {}\n{}",
                self.log.display(),
                log_tail(&self.log, 20)
            );
        }
    }
}

/// The JSON a twemproxy-style stats port (nutcracker's, or slotline's `-s`) writes on connect.
pub fn twemproxy_stats(port: u16) -> serde_json::Value {
    use std::io::Read;
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to stats");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read stats");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("stats are not JSON ({e}): {text}"))
}
