//! Reading a twemproxy `nutcracker.yml` as it is: every top-level key is a pool.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{Config, ConfigError, Mode, PoolConfig};

/// A twemproxy pool, with twemproxy's keys and nothing else.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Pool {
    listen: String,
    hash: Option<String>,
    hash_tag: Option<String>,
    distribution: Option<String>,
    /// Milliseconds; twemproxy waits forever when absent.
    timeout: Option<i64>,
    backlog: Option<i64>,
    preconnect: Option<bool>,
    redis: Option<bool>,
    redis_auth: Option<String>,
    redis_db: Option<i64>,
    server_connections: Option<i64>,
    auto_eject_hosts: Option<bool>,
    server_retry_timeout: Option<i64>,
    server_failure_limit: Option<i64>,
    client_connections: Option<i64>,
    tcpkeepalive: Option<bool>,
    reuseport: Option<bool>,
    servers: Vec<String>,
}

/// Converts a nutcracker.yml. A key slotline cannot honour (a memcached pool) is refused by name rather
/// than ignored, so a config never silently behaves differently from twemproxy.
pub(super) fn parse(text: &str) -> Result<Config, ConfigError> {
    let pools: BTreeMap<String, Pool> = serde_yaml::from_str(text).map_err(|e| ConfigError {
        file: None,
        message: format!("(read as a twemproxy config) {e}"),
    })?;
    let mut config = Config {
        pools: BTreeMap::new(),
        workers: 0,
        admin: None,
        shutdown_grace: super::defaults::shutdown_grace(),
        log_level: super::defaults::log_level(),
        slowlog_log_slower_than: super::defaults::slowlog_log_slower_than(),
        slowlog_max_len: super::defaults::slowlog_max_len(),
        stats_listen: None,
    };
    for (name, pool) in pools {
        let err = |field: &str, what: &str| ConfigError {
            file: None,
            message: format!("{name}.{field}: {what}"),
        };
        if pool.redis != Some(true) {
            return Err(err(
                "redis",
                "memcached pools are not supported: slotline is a Redis proxy (set redis: true)",
            ));
        }
        let redis_db = match pool.redis_db {
            None => 0,
            Some(db) => u32::try_from(db).map_err(|_| err("redis_db", "must not be negative"))?,
        };
        let mode = match pool.distribution.as_deref().unwrap_or("ketama") {
            "ketama" => Mode::Ketama,
            "modula" => Mode::Modula,
            "random" => Mode::Random,
            other => {
                return Err(err(
                    "distribution",
                    &format!("unknown distribution {other:?} (ketama, modula, random)"),
                ))
            }
        };
        let mut native = PoolConfig::new(strip_permissions(&pool.listen), mode, pool.servers);
        native.hash = pool.hash;
        native.hash_tag = pool.hash_tag;
        // twemproxy's "wait forever" becomes slotline's default bound.
        if let Some(ms) = pool.timeout.filter(|&ms| ms > 0) {
            native.timeout = ms as u64;
        }
        if let Some(n) = pool.server_connections {
            native.server_connections =
                usize::try_from(n).map_err(|_| err("server_connections", "must be positive"))?;
        }
        if let Some(n) = pool.client_connections {
            native.client_connections = usize::try_from(n)
                .map_err(|_| err("client_connections", "must not be negative"))?;
        }
        native.redis_auth = pool.redis_auth;
        native.redis_db = redis_db;
        native.auto_eject_hosts = pool.auto_eject_hosts.unwrap_or(false);
        if let Some(ms) = pool.server_retry_timeout {
            native.server_retry_timeout = u64::try_from(ms)
                .map_err(|_| err("server_retry_timeout", "must not be negative"))?;
        }
        if let Some(n) = pool.server_failure_limit {
            native.server_failure_limit = u32::try_from(n)
                .map_err(|_| err("server_failure_limit", "must not be negative"))?;
        }
        native.redis = pool.redis;
        native.backlog = pool.backlog.and_then(|n| u32::try_from(n).ok());
        native.preconnect = pool.preconnect;
        native.tcpkeepalive = pool.tcpkeepalive;
        native.reuseport = pool.reuseport;
        config.pools.insert(name, native);
    }
    config.validate()?;
    Ok(config)
}

/// twemproxy writes a unix socket listener as `path:permissions`.
fn strip_permissions(listen: &str) -> String {
    match listen.rsplit_once(':') {
        Some((path, perm))
            if listen.starts_with('/') && perm.chars().all(|c| c.is_ascii_digit()) =>
        {
            path.to_string()
        }
        _ => listen.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NUTCRACKER_YML: &str = "alpha:
  listen: 127.0.0.1:22121
  hash: fnv1a_64
  hash_tag: \"{}\"
  distribution: ketama
  auto_eject_hosts: false
  timeout: 400
  redis: true
  server_retry_timeout: 2000
  server_failure_limit: 1
  servers:
   - 127.0.0.1:6379:1 server1
   - 127.0.0.1:6380:1 server2
beta:
  listen: /tmp/beta.sock:0666
  redis: true
  preconnect: true
  distribution: modula
  servers:
   - 127.0.0.1:6381:1
";

    #[test]
    fn loads_a_nutcracker_yml_unchanged() {
        let config = Config::from_yaml(NUTCRACKER_YML).unwrap();
        let alpha = &config.pools["alpha"];
        assert_eq!((alpha.mode, alpha.timeout), (Mode::Ketama, 400));
        assert_eq!(alpha.hash.as_deref(), Some("fnv1a_64"));
        let beta = &config.pools["beta"];
        assert_eq!(
            (beta.mode, beta.listen.as_str()),
            (Mode::Modula, "/tmp/beta.sock")
        );
    }

    #[test]
    fn twemproxy_keys_carry_over() {
        let text = NUTCRACKER_YML.replacen(
            "auto_eject_hosts: false",
            "auto_eject_hosts: true\n  redis_auth: s3cret\n  redis_db: 3",
            1,
        );
        let alpha = &Config::from_yaml(&text).unwrap().pools["alpha"];
        assert!(alpha.auto_eject_hosts);
        assert_eq!(alpha.redis_auth.as_deref(), Some("s3cret"));
        assert_eq!(
            (
                alpha.redis_db,
                alpha.server_retry_timeout,
                alpha.server_failure_limit
            ),
            (3, 2000, 1)
        );
        let beta = &Config::from_yaml(&text).unwrap().pools["beta"];
        assert_eq!(
            (beta.server_retry_timeout, beta.server_failure_limit),
            (30_000, 2)
        );
    }

    #[test]
    fn refuses_what_it_cannot_honour_by_name() {
        for (change, field) in [
            (
                (
                    "redis: true\n  server_retry",
                    "redis: false\n  server_retry",
                ),
                "alpha.redis",
            ),
            (
                ("timeout: 400", "timeout: 400\n  redis_db: -1"),
                "alpha.redis_db",
            ),
            (
                ("distribution: ketama", "distribution: ring"),
                "alpha.distribution",
            ),
            (("timeout: 400", "timeout: 400\n  tiemout: 5"), "tiemout"),
        ] {
            let text = NUTCRACKER_YML.replacen(change.0, change.1, 1);
            let e = Config::from_yaml(&text).unwrap_err().to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
    }
}
