//! `redis-server`s playing Kubernetes pods: each listens on its own loopback address (127.0.0.x), keeps
//! its data in its own directory (its "persistent volume"), and can be stopped and started again on
//! another address, as a rescheduled StatefulSet pod comes back with a new IP and the same volume.

use std::path::PathBuf;
use std::process::Child;
use std::thread;
use std::time::Duration;

use super::standalone::spawn_redis_server;
use super::{log_tail, wait_ok, Client, Reaper, Reply, TempDir};

/// One "pod"; killed (by PID) on drop.
pub struct RedisPod {
    name: String,
    ip: String,
    port: u16,
    child: Option<Child>,
    reaper: Option<Reaper>,
    dir: TempDir,
}

impl RedisPod {
    /// Starts `redis-server` for pod `name` on `ip` (127.0.0.x) and `port` (pods of one service share
    /// their port, as containers of one StatefulSet do; take it from `cluster_port()`), and waits until
    /// it answers PING.
    pub fn start(name: &str, ip: &str, port: u16) -> RedisPod {
        let dir = TempDir::new(&format!("pod-{name}"));
        let reaper = Reaper::spawn(dir.path());
        let mut pod = RedisPod {
            name: name.to_string(),
            ip: ip.to_string(),
            port,
            child: None,
            reaper: Some(reaper),
            dir,
        };
        pod.spawn();
        pod
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn spawn(&mut self) {
        let child = spawn_redis_server(&self.ip, self.port, self.dir.path(), &[]);
        if let Some(reaper) = &mut self.reaper {
            reaper.watch(child.id());
        }
        self.child = Some(child);
        let addr = self.addr();
        let log = self.log();
        let child = &mut self.child;
        wait_ok(
            Duration::from_secs(10),
            &format!("pod redis-server on {addr} to answer PING"),
            || {
                if let Some(Ok(Some(status))) = child.as_mut().map(Child::try_wait) {
                    panic!(
                        "redis-server on {addr} exited ({status}); its log:\n{}",
                        log_tail(&log, 30)
                    );
                }
                let mut client = Client::try_connect_to(&addr).map_err(|e| e.to_string())?;
                match client.cmd(&["PING"]) {
                    Reply::Status(s) if s == "PONG" => Ok(()),
                    other => Err(format!("PING answered {other:?}")),
                }
            },
        );
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn ip(&self) -> &str {
        &self.ip
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `ip:port`.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    /// A direct connection to the pod, bypassing slotline.
    pub fn client(&self) -> Client {
        let addr = self.addr();
        Client::try_connect_to(&addr).unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"))
    }

    /// How many keys the pod holds.
    pub fn dbsize(&self) -> i64 {
        let reply = self.client().cmd(&["DBSIZE"]);
        reply
            .as_int()
            .unwrap_or_else(|| panic!("DBSIZE answered {reply:?}"))
    }

    /// Stops the pod, saving its data to its volume first (SHUTDOWN SAVE).
    pub fn stop(&mut self) {
        if let Ok(mut client) = Client::try_connect_to(&self.addr()) {
            client.send(&["SHUTDOWN", "SAVE"]);
            let _ = client.try_read_reply();
        }
        if let Some(mut child) = self.child.take() {
            let exited = super::wait_until(Duration::from_secs(10), || {
                matches!(child.try_wait(), Ok(Some(_)))
            });
            if !exited {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }

    /// Starts the stopped pod again on `ip`, same port and data: a rescheduled pod.
    pub fn start_on(&mut self, ip: &str) {
        assert!(self.child.is_none(), "pod {} is still running", self.name);
        self.ip = ip.to_string();
        self.spawn();
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for RedisPod {
    fn drop(&mut self) {
        super::kill_owned(&mut self.reaper, &mut self.child);
        if thread::panicking() {
            self.dir.keep();
            eprintln!("pod {} log kept: {}", self.name, self.log().display());
        }
    }
}
