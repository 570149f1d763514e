//! Configuration: plain data read from YAML, checked before anything binds.
//!
//! Every field has a default and a doc comment; unknown keys are errors, because a misspelt option that
//! silently does nothing is worse than refusing to start. `config/slotline.yml` is the commented example.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod address;
mod kubernetes;
mod migrate;
mod pool;
mod tls;
mod twemproxy;
mod validate;

pub use address::{is_network_host, is_unix_path, join_host_port, split_host_port};
pub use kubernetes::{EndpointsApi, KubernetesConfig, PortRef};
pub use migrate::{FromPlacement, MigrateConfig, Start as MigrateStart};
pub use pool::{
    BackendLogins, BackendUser, Mode, Placement, PoolConfig, ReadFrom, SentinelConfig, Sharding,
};
pub use tls::{BackendTls, ListenTls};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Pools by name; each has its own listener.
    pub pools: BTreeMap<String, PoolConfig>,
    /// Threads serving connections; 0 means one per CPU the process may use (cgroup limits included).
    #[serde(default)]
    pub workers: usize,
    /// `host:port` of a twemproxy-compatible stats port (one JSON object per connection); none when
    /// absent. nutcracker's `-s PORT -a ADDR` flags set it too.
    #[serde(default)]
    pub stats_listen: Option<String>,
    /// The admin HTTP listener (/metrics, /healthz, /readyz); none when absent.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// Milliseconds a SIGTERM allows for in-flight requests to finish and clients to leave.
    #[serde(default = "defaults::shutdown_grace")]
    pub shutdown_grace: u64,
    /// Log filter (a tracing filter such as `info` or `warn,slotline=debug`); RUST_LOG wins when set.
    #[serde(default = "defaults::log_level")]
    pub log_level: String,
    /// SLOWLOG: requests slower than this many microseconds, end to end, are logged (negative: none;
    /// 0: all), as Redis's `slowlog-log-slower-than`.
    #[serde(default = "defaults::slowlog_log_slower_than")]
    pub slowlog_log_slower_than: i64,
    /// SLOWLOG keeps this many entries, as Redis's `slowlog-max-len`.
    #[serde(default = "defaults::slowlog_max_len")]
    pub slowlog_max_len: usize,
}

/// The admin HTTP listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `host:port` to serve /metrics, /healthz and /readyz on.
    pub listen: String,
}

mod defaults {
    pub fn timeout() -> u64 {
        1000
    }
    pub fn max_replica_lag() -> u64 {
        1000
    }
    pub fn read_your_writes() -> bool {
        true
    }
    pub fn server_connections() -> usize {
        1
    }
    pub fn max_request_bytes() -> usize {
        64 * 1024 * 1024
    }
    pub fn max_pending() -> usize {
        1024
    }
    pub fn max_client_request_bytes() -> usize {
        128 * 1024 * 1024
    }
    pub fn max_client_reply_bytes() -> usize {
        512 * 1024 * 1024
    }
    pub fn max_server_queue_bytes() -> usize {
        64 * 1024 * 1024
    }
    /// Redis's own `proto-max-bulk-len` default: the largest value a node stores unless told otherwise.
    pub fn max_reply_bytes() -> usize {
        512 * 1024 * 1024
    }
    pub fn max_redirects() -> u32 {
        5
    }
    pub fn refresh_interval() -> u64 {
        10_000
    }
    pub fn connect_timeout() -> u64 {
        500
    }
    pub fn shutdown_grace() -> u64 {
        10_000
    }
    pub fn log_level() -> String {
        "info".into()
    }
    pub fn slowlog_log_slower_than() -> i64 {
        10_000
    }
    pub fn slowlog_max_len() -> usize {
        128
    }
    pub fn resolve_interval() -> u64 {
        30_000
    }
    pub fn weight() -> u32 {
        1
    }
    /// twemproxy's defaults.
    pub fn server_retry_timeout() -> u64 {
        30_000
    }
    pub fn server_failure_limit() -> u32 {
        2
    }
    /// HAProxy's `inter 1s`, as the redis-ha chart configures it.
    pub fn probe_interval() -> u64 {
        1000
    }
}

/// A configuration that cannot be used, with where the problem is.
#[derive(Debug)]
pub struct ConfigError {
    /// The file, when the config came from one.
    pub file: Option<PathBuf>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(file) => write!(f, "{}: {}", file.display(), self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: Some(path.to_owned()),
            message: format!("cannot read: {e}"),
        })?;
        Config::from_yaml(&text).map_err(|mut e| {
            e.file = Some(path.to_owned());
            e
        })
    }

    /// Parses and validates YAML text.
    ///
    /// ```
    /// use slotline::config::Config;
    /// let yaml = "pools:\n  main:\n    listen: 127.0.0.1:6380\n    mode: cluster\n    servers: [redis-0.redis:6379]\n";
    /// let config = Config::from_yaml(yaml).unwrap();
    /// assert_eq!(config.pools["main"].timeout, 1000); // the default
    /// let typo = yaml.replace("servers", "severs");
    /// assert!(Config::from_yaml(&typo).unwrap_err().to_string().contains("severs"));
    /// ```
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        // A native config has a `pools:` key; a twemproxy nutcracker.yml has pools at the top level.
        let value: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| ConfigError {
            file: None,
            message: e.to_string(),
        })?;
        if let Some(map) = value.as_mapping() {
            let native = ["pools", "workers", "stats_listen"];
            if !map.is_empty() && !native.iter().any(|k| map.contains_key(*k)) {
                return twemproxy::parse(text);
            }
        }
        let mut config: Config = serde_yaml::from_value(value).map_err(|e| ConfigError {
            file: None,
            message: e.to_string(),
        })?;
        config.read_secrets()?;
        config.validate()?;
        Ok(config)
    }
}

impl Config {
    /// Takes every pool's `redis_auth_file` into its `redis_auth`, and `backend_password_file` into
    /// `backend_password`.
    fn read_secrets(&mut self) -> Result<(), ConfigError> {
        for (name, pool) in &mut self.pools {
            let backend_users = pool.backend_users.iter_mut().map(|(user, b)| {
                (
                    format!("backend_users.{user}.password"),
                    &b.password_file,
                    &mut b.password,
                )
            });
            for (field, file, secret) in [
                (
                    "redis_auth".to_string(),
                    &pool.redis_auth_file,
                    &mut pool.redis_auth,
                ),
                (
                    "backend_password".to_string(),
                    &pool.backend_password_file,
                    &mut pool.backend_password,
                ),
            ]
            .into_iter()
            .chain(backend_users)
            {
                let Some(path) = file else {
                    continue;
                };
                let fail = |message: String| ConfigError {
                    file: None,
                    message: format!("pools.{name}.{field}_file: {message}"),
                };
                if secret.is_some() {
                    return Err(fail(format!("give {field} or {field}_file, not both")));
                }
                let text = std::fs::read_to_string(path)
                    .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
                let value = text.strip_suffix('\n').unwrap_or(&text);
                let value = value.strip_suffix('\r').unwrap_or(value);
                if value.is_empty() {
                    return Err(fail(format!("{} is empty", path.display())));
                }
                *secret = Some(value.to_string());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::Hash;

    const MINIMAL: &str = "pools:\n  main:\n    listen: 127.0.0.1:6380\n    mode: cluster\n    servers: [127.0.0.1:7000]\n";

    #[test]
    fn the_password_may_come_from_a_file() {
        let path = std::env::temp_dir().join(format!("slotline-secret-{}", std::process::id()));
        std::fs::write(&path, "from a secret\n").unwrap();
        let yaml = format!("{MINIMAL}    redis_auth_file: {}\n", path.display());
        let config = Config::from_yaml(&yaml).unwrap();
        assert_eq!(
            config.pools["main"].redis_auth.as_deref(),
            Some("from a secret")
        );
        let both = format!("{yaml}    redis_auth: inline\n");
        let err = Config::from_yaml(&both).unwrap_err().to_string();
        assert!(err.contains("not both"), "{err}");
        std::fs::remove_file(&path).unwrap();
        let err = Config::from_yaml(&yaml).unwrap_err().to_string();
        assert!(err.contains("redis_auth_file: cannot read"), "{err}");
    }

    #[test]
    fn backend_users_name_users_and_share_logins() {
        let path = std::env::temp_dir().join(format!("slotline-b2-{}", std::process::id()));
        std::fs::write(&path, "b2secret\n").unwrap();
        let users = "    users: [\"user a1 on >x ~* +@all\", \"user a2 on >y ~* +@all\", \"user a3 on >z ~* +@all\"]\n";
        let yaml = format!(
            "{MINIMAL}{users}    backend_users:\n      a1: {{username: b1, password: p1}}\n      \
             a2: {{username: b2, password_file: {}}}\n      a3: {{username: b1, password: p1}}\n",
            path.display()
        );
        let config = Config::from_yaml(&yaml).unwrap();
        std::fs::remove_file(&path).unwrap();
        let crate::config::BackendLogins { logins, by_user } =
            config.pools["main"].backend_logins();
        // a1 and a3 share one login, so one set of connections.
        assert_eq!(logins, vec![("b1", "p1"), ("b2", "b2secret")]);
        assert_eq!(
            by_user.into_iter().collect::<Vec<_>>(),
            vec![("a1".into(), 0), ("a2".into(), 1), ("a3".into(), 0)]
        );
        let refused = |yaml: String, want: &str| {
            let err = Config::from_yaml(&yaml).unwrap_err().to_string();
            assert!(err.contains(want), "{yaml}: {err}");
        };
        refused(
            format!("{MINIMAL}    backend_users: {{a1: {{username: b1, password: p1}}}}\n"),
            "pools.main.backend_users: needs the pool's users",
        );
        refused(
            format!(
                "{MINIMAL}{users}    backend_users: {{nobody: {{username: b1, password: p1}}}}\n"
            ),
            "pools.main.backend_users.nobody: no user 'nobody' in the users",
        );
        refused(
            format!("{MINIMAL}{users}    backend_users: {{a1: {{username: b1}}}}\n"),
            "pools.main.backend_users.a1.password: is required",
        );
        refused(
            format!("{MINIMAL}{users}    backend_users: {{a1: {{username: b1, password: p1, db: 2}}}}\n"),
            "unknown field",
        );
        // The nodes' users are the clients' only where slotline has none of its own.
        refused(
            format!("{MINIMAL}{users}    node_logins: true\n"),
            "pools.main.node_logins: is for a pool without users of its own",
        );
        let plain = Config::from_yaml(&format!("{MINIMAL}    node_logins: true\n")).unwrap();
        assert!(plain.pools["main"].node_logins);
    }

    #[test]
    fn tls_and_command_settings_are_checked() {
        let refused = |extra: &str, want: &str| {
            let err = Config::from_yaml(&format!("{MINIMAL}{extra}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{extra}: {err}");
        };
        let tls = "    tls:\n      cert_file: c.pem\n      key_file: k.pem\n";
        assert!(Config::from_yaml(&format!("{MINIMAL}{tls}")).is_ok());
        refused(
            &format!("{tls}      tls_user_from_cert: true\n"),
            "pools.main.tls.tls_user_from_cert: needs client_ca_file",
        );
        refused(
            &format!("{tls}      listen: 127.0.0.1:6380\n"),
            "pools.main.tls.listen: 127.0.0.1:6380 is also used by pool main",
        );
        refused(
            "    backend_tls:\n      cert_file: c.pem\n",
            "pools.main.backend_tls.cert_file: cert_file and key_file go together",
        );
        refused(
            "    backend_tls:\n      server_name: \"not a name\"\n",
            "backend_tls.server_name",
        );
        refused(
            "    deny_commands: [KEYS, NOSUCH]\n",
            "pools.main.deny_commands[1]: \"NOSUCH\" is not a Redis command",
        );
        refused(
            "    client_idle_timeout: 999999999999\n",
            "client_idle_timeout",
        );
        let unix = "pools:\n  main:\n    listen: /tmp/s.sock\n    mode: cluster\n    servers: [127.0.0.1:7000]\n";
        let err = Config::from_yaml(&format!("{unix}{tls}"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("a unix socket listener does not speak TLS"),
            "{err}"
        );
    }

    #[test]
    fn defaults_apply() {
        let config = Config::from_yaml(MINIMAL).unwrap();
        let pool = &config.pools["main"];
        assert_eq!(pool.timeout, 1000);
        assert_eq!(pool.server_connections, 1);
        assert_eq!(pool.servers, ["127.0.0.1:7000"]);
        assert!(config.admin.is_none());
        assert_eq!(config.shutdown_grace, 10_000);
        assert_eq!(config.log_level, "info");
        let admin = format!("{MINIMAL}admin:\n  listen: 0.0.0.0:9121\nshutdown_grace: 30000\n");
        let config = Config::from_yaml(&admin).unwrap();
        assert_eq!(config.admin.unwrap().listen, "0.0.0.0:9121");
        assert_eq!(config.shutdown_grace, 30_000);
    }

    #[test]
    fn a_migration_starts_auto_or_manual_with_shadow_reads_a_fraction() {
        let migrating = |extra: &str| {
            format!(
                "{MINIMAL}    migrate:\n{extra}      from:\n        mode: ketama\n        servers: [\"127.0.0.1:6379:1 a\"]\n"
            )
        };
        let config = Config::from_yaml(&migrating("")).unwrap();
        let migrate = config.pools["main"].migrate.clone().unwrap();
        assert_eq!(
            (migrate.start, migrate.shadow_reads),
            (MigrateStart::Auto, 0.01)
        );
        let config =
            Config::from_yaml(&migrating("      start: manual\n      shadow_reads: 0.5\n"));
        let migrate = config.unwrap().pools["main"].migrate.clone().unwrap();
        assert_eq!(
            (migrate.start, migrate.shadow_reads),
            (MigrateStart::Manual, 0.5)
        );
        for (extra, field) in [
            ("      shadow_reads: 2\n", "migrate.shadow_reads"),
            ("      start: later\n", "later"),
        ] {
            let e = Config::from_yaml(&migrating(extra))
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{extra}: {e}");
        }
    }

    #[test]
    fn errors_name_the_field() {
        let typo = MINIMAL.replace("servers:", "tiemout: 5\n    servers:");
        let e = Config::from_yaml(&typo).unwrap_err().to_string();
        assert!(e.contains("tiemout"), "{e}");
        let bad_port = MINIMAL.replace("7000", "70000");
        let e = Config::from_yaml(&bad_port).unwrap_err().to_string();
        assert!(
            e.contains("pools.main.servers[0]") && e.contains("70000"),
            "{e}"
        );
        let bad_mode = MINIMAL.replace("cluster", "clsuter");
        assert!(Config::from_yaml(&bad_mode)
            .unwrap_err()
            .to_string()
            .contains("clsuter"));
        let no_servers = MINIMAL.replace("[127.0.0.1:7000]", "[]");
        assert!(Config::from_yaml(&no_servers)
            .unwrap_err()
            .to_string()
            .contains("pools.main.servers"));
        assert!(Config::from_yaml("pools: {}").is_err());
        for (extra, field) in [
            ("admin:\n  listen: nowhere\n", "admin.listen"),
            ("admin:\n  listen: 127.0.0.1:6380\n", "pools.main.listen"),
            ("admin:\n  lisen: 127.0.0.1:9121\n", "lisen"),
            ("shutdown_grace: 0\n", "shutdown_grace"),
            ("log_level: \"slotline=loud\"\n", "log_level"),
        ] {
            let e = Config::from_yaml(&format!("{MINIMAL}{extra}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{extra}: {e}");
        }
        assert!(Config::from_yaml("::: not yaml").is_err());
    }

    #[test]
    fn sharded_pools_check_their_twemproxy_fields() {
        let pool = "pools:\n  s:\n    listen: 127.0.0.1:6390\n    mode: ketama\n    hash: murmur\n    hash_tag: \"{}\"\n    servers:\n      - 10.0.0.1:6379:1 a\n      - 10.0.0.2:6379:2 b\n";
        let sharding = Config::from_yaml(pool).unwrap().pools["s"]
            .sharding()
            .unwrap();
        assert_eq!(sharding.hash, Hash::Murmur);
        assert_eq!(sharding.hash_tag, Some(*b"{}"));
        for (bad, field) in [
            (pool.replace("murmur", "murmur3"), "pools.s.hash"),
            (pool.replace("\"{}\"", "\"{\""), "pools.s.hash_tag"),
            (pool.replace("6379:2 b", "6379:x b"), "pools.s.servers[1]"),
            (pool.replace("6379:1 a", "6379"), "pools.s.servers[0]"),
        ] {
            let e = Config::from_yaml(&bad).unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
        let cluster_with_hash = MINIMAL.replace("servers:", "hash: md5\n    servers:");
        let e = Config::from_yaml(&cluster_with_hash)
            .unwrap_err()
            .to_string();
        assert!(e.contains("pools.main.hash"), "{e}");
    }

    #[test]
    fn primary_pools_check_their_fields() {
        let sentinel = "pools:\n  p:\n    listen: 127.0.0.1:6390\n    mode: primary\n    read_from: prefer_replica\n    replica_listen: 127.0.0.1:6391\n    sentinel:\n      master_name: mymaster\n      servers: [10.0.0.1:26379, 10.0.0.2:26379]\n";
        let config = Config::from_yaml(sentinel).unwrap();
        let p = &config.pools["p"];
        assert_eq!(p.read_from, ReadFrom::PreferReplica);
        assert_eq!(p.probe_interval, 1000);
        assert!(p.servers.is_empty(), "the sentinels name the members");
        let acl = sentinel
            .replace(
                "mode: primary",
                "mode: primary\n    redis_auth: pw\n    redis_username: app",
            )
            .replace(
                "master_name",
                "username: watcher\n      password: pw2\n      master_name",
            );
        let acl = Config::from_yaml(&acl).unwrap();
        let p = &acl.pools["p"];
        assert_eq!(p.redis_username.as_deref(), Some("app"));
        let s = p.sentinel.as_ref().unwrap();
        assert_eq!(
            (s.username.as_deref(), s.password.as_deref()),
            (Some("watcher"), Some("pw2"))
        );
        let probed = "pools:\n  p:\n    listen: 127.0.0.1:6390\n    mode: primary\n    servers: [10.0.0.1:6379, 10.0.0.2:6379]\n";
        assert_eq!(
            Config::from_yaml(probed).unwrap().pools["p"].read_from,
            ReadFrom::Master
        );
        for (bad, field) in [
            (
                sentinel.replace("mymaster", "\"\""),
                "pools.p.sentinel.master_name",
            ),
            (
                sentinel.replace("10.0.0.2:26379", "10.0.0.2"),
                "pools.p.sentinel.servers[1]",
            ),
            (
                sentinel.replace("      servers: [10.0.0.1:26379, 10.0.0.2:26379]\n", ""),
                "pools.p.sentinel.servers",
            ),
            (
                sentinel.replace("prefer_replica", "replicas"),
                "unknown variant `replicas`",
            ),
            (
                sentinel.replace("127.0.0.1:6391", "127.0.0.1:6390"),
                "pools.p.replica_listen",
            ),
            (
                sentinel.replace("mode: primary", "mode: primary\n    hash: md5"),
                "pools.p.hash",
            ),
            (
                probed.replace("servers: [10.0.0.1:6379, 10.0.0.2:6379]", "servers: []"),
                "pools.p.servers",
            ),
            (
                probed.replace("10.0.0.2:6379", "10.0.0.2:6379:1"),
                "pools.p.servers[1]",
            ),
            (
                probed.replace("mode: primary", "mode: primary\n    probe_interval: 0"),
                "pools.p.probe_interval",
            ),
            (
                // An ACL user needs its password.
                probed.replace("mode: primary", "mode: primary\n    redis_username: app"),
                "pools.p.redis_username",
            ),
            (
                sentinel.replace("master_name", "username: app\n      master_name"),
                "pools.p.sentinel.username",
            ),
        ] {
            let e = Config::from_yaml(&bad).unwrap_err().to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
        // A duration that would overflow the clock is refused.
        let absurd = probed.replace(
            "mode: primary",
            "mode: primary\n    timeout: 18446744073709551615",
        );
        let e = Config::from_yaml(&absurd).unwrap_err().to_string();
        assert!(e.contains("pools.p.timeout"), "{e}");
        // Primary-only fields elsewhere are refused by name.
        let bad = MINIMAL.replace("servers:", "replica_listen: 127.0.0.1:7000\n    servers:");
        let e = Config::from_yaml(&bad).unwrap_err().to_string();
        assert!(e.contains("pools.main.replica_listen"), "{e}");
    }

    #[test]
    fn read_policies_apply_where_there_are_replicas() {
        let cluster = "pools:\n  c:\n    listen: 127.0.0.1:6390\n    mode: cluster\n    servers: [127.0.0.1:7000]\n    read_from: nearest_replica\n    max_replica_lag: 250\n    read_your_writes: false\n    zone: eu-west-1a\n    zones: {\"10.0.0.1:6379\": eu-west-1b}\n    read_listen: {\"127.0.0.1:7379\": replica, \"127.0.0.1:8379\": any}\n";
        let config = Config::from_yaml(cluster).unwrap();
        let c = &config.pools["c"];
        assert_eq!(c.read_from, ReadFrom::NearestReplica);
        assert_eq!((c.max_replica_lag, c.read_your_writes), (250, false));
        assert_eq!(c.read_listen["127.0.0.1:8379"], ReadFrom::Any);
        // Defaults: masters only, read-your-writes on, 1 s of lag.
        let plain = Config::from_yaml(MINIMAL).unwrap();
        let p = &plain.pools["main"];
        assert_eq!(
            (p.read_from, p.max_replica_lag, p.read_your_writes),
            (ReadFrom::Master, 1000, true)
        );
        // A sharded pool's servers have no replicas: a clear error, by field.
        let sharded = "pools:\n  s:\n    listen: 127.0.0.1:6390\n    mode: ketama\n    servers: [\"127.0.0.1:7000:1 a\"]\n";
        for field in [
            "read_from: replica",
            "read_listen: {\"127.0.0.1:7379\": any}",
            "zones: {a: b}",
        ] {
            let e = Config::from_yaml(&format!("{sharded}    {field}\n"))
                .unwrap_err()
                .to_string();
            let name = field.split(':').next().unwrap_or_default();
            assert!(
                e.contains(&format!("pools.s.{name}")) && e.contains("no replicas"),
                "{e}"
            );
        }
        // A listener taken twice, two listeners for one policy, no lag at all, a bad policy.
        for (bad, field) in [
            (cluster.replace("7379", "6390"), "read_listen"),
            (
                cluster.replace("8379\": any", "8379\": replica"),
                "read_listen",
            ),
            (
                cluster.replace("max_replica_lag: 250", "max_replica_lag: 0"),
                "max_replica_lag",
            ),
            (
                cluster.replace("nearest_replica", "closest"),
                "unknown variant `closest`",
            ),
        ] {
            let e = Config::from_yaml(&bad).unwrap_err().to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
    }

    #[test]
    fn kubernetes_source_is_checked_field_by_field() {
        let pool = "pools:\n  s:\n    listen: 127.0.0.1:6390\n    mode: ketama\n    kubernetes:\n      service: redis\n      namespace: cache\n      port: redis\n      names: {redis-0: shard-a}\n";
        let config = Config::from_yaml(pool).unwrap();
        let k8s = config.pools["s"].kubernetes.clone().unwrap();
        assert_eq!(k8s.port, Some(PortRef::Name("redis".into())));
        assert_eq!((k8s.api, k8s.weight), (None, 1));
        assert_eq!(config.pools["s"].resolve_interval, 30_000);
        let numbered = pool.replace("port: redis", "port: 6379");
        assert_eq!(
            Config::from_yaml(&numbered).unwrap().pools["s"]
                .kubernetes
                .clone()
                .unwrap()
                .port,
            Some(PortRef::Number(6379))
        );
        for (bad, field) in [
            (
                pool.replace("service: redis", "service: Redis_0"),
                "pools.s.kubernetes.service",
            ),
            (
                pool.replace("namespace: cache", "namespace: \"\""),
                "pools.s.kubernetes.namespace",
            ),
            (pool.replace("port: redis", "port: 70000"), "70000"),
            (
                pool.replace("shard-a}", "\"a b\"}"),
                "pools.s.kubernetes.names.redis-0",
            ),
            (
                pool.replace("      port: redis\n", "      prot: redis\n"),
                "prot",
            ),
            (
                pool.replace(
                    "    kubernetes:",
                    "    servers: [127.0.0.1:7000:1]\n    kubernetes:",
                ),
                "pools.s.servers",
            ),
            (
                pool.replace("      port: redis\n", "      api: slices\n"),
                "slices",
            ),
            (
                pool.replace(
                    "    kubernetes:",
                    "    resolve_interval: 0\n    kubernetes:",
                ),
                "pools.s.resolve_interval",
            ),
        ] {
            let e = Config::from_yaml(&bad).unwrap_err().to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
        let neither = "pools:\n  s:\n    listen: 127.0.0.1:6390\n    mode: cluster\n";
        let e = Config::from_yaml(neither).unwrap_err().to_string();
        assert!(
            e.contains("pools.s.servers") && e.contains("kubernetes"),
            "{e}"
        );
    }

    #[test]
    fn host_port() {
        assert_eq!(
            split_host_port("redis-0.redis:6379").unwrap(),
            ("redis-0.redis", 6379)
        );
        assert_eq!(split_host_port("[::1]:7000").unwrap(), ("::1", 7000));
        assert!(split_host_port("nohost").is_err());
        assert!(split_host_port(":6379").is_err());
    }
}
