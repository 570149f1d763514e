//! Runs the real slotline binary with a YAML config, as a user would.

use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Duration;

use super::{free_port, log_tail, wait_until, Client, Reaper, RedisCluster, TempDir};

/// A running slotline process; killed on drop. When a test fails its log is kept and its tail
/// printed.
pub struct Slotline {
    child: Option<Child>,
    reaper: Option<Reaper>,
    /// Listen addresses found in the config, waited for at start.
    listen: Vec<String>,
    config: PathBuf,
    log: PathBuf,
    dir: TempDir,
}

impl Slotline {
    /// The binary cargo built for this test run.
    pub fn binary() -> &'static str {
        env!("CARGO_BIN_EXE_slotline")
    }

    /// `slotline` with no arguments yet, for one-shot runs (`check`, `--version`).
    pub fn command() -> Command {
        Command::new(Slotline::binary())
    }

    /// Writes `yaml` to a temp file, runs `slotline --config FILE` with stdout and stderr going to a
    /// log file, and waits (up to 10 s) until every `listen: host:port` in the YAML accepts TCP.
    pub fn start(yaml: &str) -> Slotline {
        Slotline::start_with(yaml, &[], &[])
    }

    /// [`start`](Self::start) with more command-line arguments (e.g. nutcracker's `-s PORT`).
    pub fn start_with_args(yaml: &str, args: &[&str]) -> Slotline {
        Slotline::start_with(yaml, args, &[])
    }

    /// As [`start`](Self::start), with extra environment variables (KUBECONFIG, ...).
    pub fn start_with_env(yaml: &str, env: &[(&str, &str)]) -> Slotline {
        Slotline::start_with(yaml, &[], env)
    }

    fn start_with(yaml: &str, args: &[&str], env: &[(&str, &str)]) -> Slotline {
        let dir = TempDir::new("slotline");
        let config = dir.write("slotline.yml", yaml);
        let log = dir.path().join("slotline.log");
        let out = fs::File::create(&log).expect("create slotline.log");
        let mut reaper = Reaper::spawn(dir.path());
        let child = Slotline::command()
            .arg("--config")
            .arg(&config)
            .args(args)
            .current_dir(dir.path())
            .env("RUST_BACKTRACE", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone log handle"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", Slotline::binary()));
        reaper.watch(child.id());
        let listen = listen_addresses(yaml);
        assert!(
            !listen.is_empty(),
            "no `listen: host:port` in the config:\n{yaml}"
        );
        let mut slotline = Slotline {
            child: Some(child),
            reaper: Some(reaper),
            listen,
            config,
            log,
            dir,
        };
        for addr in slotline.listen.clone() {
            let up = wait_until(Duration::from_secs(10), || {
                if let Some(status) = slotline.exit_status() {
                    panic!(
                        "slotline exited ({status}) before listening on {addr}; {}",
                        slotline.describe_log()
                    );
                }
                TcpStream::connect(&addr).is_ok()
            });
            if !up {
                panic!(
                    "slotline did not accept connections on {addr} within 10 s; {}",
                    slotline.describe_log()
                );
            }
        }
        slotline
    }

    /// Starts slotline in cluster mode in front of `cluster` (its current masters as seeds) on a free
    /// port, and returns it with that port.
    pub fn cluster(cluster: &RedisCluster) -> (Slotline, u16) {
        let port = free_port();
        let seeds: Vec<u16> = cluster.masters().iter().map(|m| m.port).collect();
        (Slotline::start(&Slotline::cluster_yaml(port, &seeds)), port)
    }

    /// The config of one cluster pool named `main` listening on `127.0.0.1:port`.
    pub fn cluster_yaml(port: u16, seeds: &[u16]) -> String {
        let mut yaml = format!(
            "pools:\n  main:\n    listen: 127.0.0.1:{port}\n    mode: cluster\n    timeout: 1000\n    \
             server_connections: 1\n    servers:\n"
        );
        for seed in seeds {
            yaml.push_str(&format!("      - 127.0.0.1:{seed}\n"));
        }
        yaml
    }

    /// The port of the first listen address.
    pub fn port(&self) -> u16 {
        let addr = &self.listen[0];
        addr.rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {addr}"))
    }

    /// A new client connection to the first listen address.
    pub fn client(&self) -> Client {
        Client::connect(self.port())
    }

    /// The `INFO slotline` field `name` (of the first pool that has it).
    pub fn info_field(&self, name: &str) -> Option<String> {
        let reply = self.client().cmd(&["INFO", "slotline"]);
        let text = String::from_utf8_lossy(reply.as_bytes().expect("INFO slotline")).into_owned();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(|v| v.trim().to_string())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends a signal (`"TERM"`, `"INT"`) to the process.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {} failed", self.pid());
    }

    /// Waits up to `deadline` for the process to exit, and returns how it did (None if it is still
    /// running). An exit seen here is expected, so dropping this handle afterwards does not complain.
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<std::process::ExitStatus> {
        let mut status = None;
        wait_until(deadline, || {
            status = self.exit_status();
            status.is_some()
        });
        if status.is_some() {
            self.child = None;
        }
        status
    }

    /// The port of the admin listener (`admin:` then `listen: host:port` in the config).
    pub fn admin_port(&self) -> u16 {
        let yaml = fs::read_to_string(&self.config).unwrap_or_default();
        let after = yaml
            .split_once("\nadmin:")
            .map(|(_, rest)| rest)
            .unwrap_or_else(|| panic!("no top-level `admin:` in the config:\n{yaml}"));
        listen_addresses(after)
            .first()
            .and_then(|a| a.rsplit(':').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no admin listen port in the config:\n{yaml}"))
    }

    /// Whether the process is still running (it has not exited or crashed).
    pub fn is_running(&mut self) -> bool {
        self.exit_status().is_none()
    }

    fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Everything slotline has written to stdout and stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    fn describe_log(&self) -> String {
        format!("log {}:\n{}", self.log.display(), log_tail(&self.log, 40))
    }
}

impl Drop for Slotline {
    fn drop(&mut self) {
        if let Some(reaper) = self.reaper.take() {
            reaper.disarm();
        }
        let crashed = self.exit_status();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            self.dir.keep();
            eprintln!("slotline {}", self.describe_log());
        } else if let Some(status) = crashed {
            self.dir.keep();
            panic!(
                "slotline exited during the test ({status}); {}",
                self.describe_log()
            );
        }
    }
}

/// The `host:port` values of `listen:` keys in the YAML (unix socket paths are skipped).
fn listen_addresses(yaml: &str) -> Vec<String> {
    yaml.lines()
        .filter_map(|line| {
            line.trim_start()
                .trim_start_matches("- ")
                .strip_prefix("listen:")
        })
        .map(|v| {
            v.split('#')
                .next()
                .unwrap_or("")
                .trim()
                .trim_matches(|c| c == '"' || c == '\'')
                .to_string()
        })
        .filter(|v| !v.starts_with('/') && v.contains(':'))
        .collect()
}
