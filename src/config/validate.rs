//! Checking a parsed configuration before anything binds: every error names the field at fault.

use std::collections::BTreeMap;

use super::*;

/// The longest duration a millisecond field may hold: one day.
const MAX_MS: u64 = 86_400_000;

/// The most client users `backend_users` may name (each distinct login opens its own connections).
const MAX_BACKEND_USERS: usize = 1024;

impl Config {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let err = |pool: &str, field: &str, what: String| ConfigError {
            file: None,
            message: format!("pools.{pool}.{field}: {what}"),
        };
        if self.pools.is_empty() {
            return Err(ConfigError {
                file: None,
                message: "pools: at least one pool is required".into(),
            });
        }
        if self.workers > 1024 {
            return Err(ConfigError {
                file: None,
                message: "workers: at most 1024".into(),
            });
        }
        let top = |field: &str, what: String| ConfigError {
            file: None,
            message: format!("{field}: {what}"),
        };
        if self.shutdown_grace == 0 || self.shutdown_grace > 3_600_000 {
            return Err(top(
                "shutdown_grace",
                "must be between 1 ms and one hour".into(),
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log_level).map_err(|e| {
            top(
                "log_level",
                format!("'{}' is not a log filter: {e}", self.log_level),
            )
        })?;
        if let Some(listen) = &self.stats_listen {
            split_host_port(listen).map_err(|e| ConfigError {
                file: None,
                message: format!("stats_listen: {e}"),
            })?;
        }
        let mut listens = BTreeMap::new();
        if let Some(stats) = &self.stats_listen {
            listens.insert(stats.as_str(), "stats_listen".to_string());
        }
        if let Some(admin) = &self.admin {
            split_host_port(&admin.listen).map_err(|e| top("admin.listen", e))?;
            if let Some(other) = listens.insert(admin.listen.as_str(), "admin".to_string()) {
                return Err(top(
                    "admin.listen",
                    format!("{} is also used by {other}", admin.listen),
                ));
            }
        }
        for (name, pool) in &self.pools {
            if let Some(other) = listens.insert(pool.listen.as_str(), format!("pool {name}")) {
                return Err(err(
                    name,
                    "listen",
                    format!("{} is also used by {other}", pool.listen),
                ));
            }
            if !is_unix_path(&pool.listen) {
                split_host_port(&pool.listen).map_err(|e| err(name, "listen", e))?;
            }
            let named_by_sentinel = pool.mode == Mode::Primary && pool.sentinel.is_some();
            match (&pool.kubernetes, pool.servers.is_empty()) {
                (None, true) if named_by_sentinel => {}
                (None, true) => {
                    return Err(err(
                        name,
                        "servers",
                        "at least one server is required (or a kubernetes: source)".into(),
                    ))
                }
                (Some(_), false) => {
                    return Err(err(
                        name,
                        "servers",
                        "give either servers or kubernetes, not both".into(),
                    ))
                }
                (Some(k8s), true) => k8s
                    .validate()
                    .map_err(|(field, e)| err(name, &format!("kubernetes.{field}"), e))?,
                (None, false) => {}
            }
            if pool.resolve_interval == 0 {
                return Err(err(
                    name,
                    "resolve_interval",
                    "must be at least 1 ms".into(),
                ));
            }
            match pool.mode {
                Mode::Cluster => {
                    for (i, server) in pool.servers.iter().enumerate() {
                        split_host_port(server)
                            .map_err(|e| err(name, &format!("servers[{i}]"), e))?;
                    }
                    for (field, set) in [
                        ("hash", pool.hash.is_some()),
                        ("hash_tag", pool.hash_tag.is_some()),
                        ("distribution", pool.distribution.is_some()),
                        ("auto_eject_hosts", pool.auto_eject_hosts),
                    ] {
                        if set {
                            return Err(err(name, field, "applies to sharded pools (ketama, modula, random), not to a cluster".into()));
                        }
                    }
                    if pool.redis_db != 0 {
                        return Err(err(
                            name,
                            "redis_db",
                            "a Redis Cluster has only database 0".into(),
                        ));
                    }
                }
                Mode::Primary => {
                    pool.validate_primary()
                        .map_err(|(field, e)| err(name, &field, e))?;
                    if let Some(replica_listen) = &pool.replica_listen {
                        if let Some(other) =
                            listens.insert(replica_listen.as_str(), format!("pool {name}"))
                        {
                            return Err(err(
                                name,
                                "replica_listen",
                                format!("{replica_listen} is also used by {other}"),
                            ));
                        }
                    }
                }
                Mode::Ketama | Mode::Modula | Mode::Random if pool.kubernetes.is_some() => {
                    pool.placement()
                        .map_err(|(field, e)| err(name, &field, e))?;
                }
                Mode::Ketama | Mode::Modula | Mode::Random => {
                    pool.sharding().map_err(|(field, e)| err(name, &field, e))?;
                    if let Some(d) = &pool.distribution {
                        let matches = d.parse::<Mode>().is_ok_and(|m| m == pool.mode);
                        if !matches {
                            return Err(err(
                                name,
                                "distribution",
                                format!("{d:?} disagrees with mode (leave one of them out)"),
                            ));
                        }
                    }
                }
            }
            if pool.mode.distribution().is_some() {
                for (field, set) in [
                    ("read_from", pool.read_from != ReadFrom::Master),
                    ("read_listen", !pool.read_listen.is_empty()),
                    ("zones", !pool.zones.is_empty()),
                ] {
                    if set {
                        return Err(err(
                            name,
                            field,
                            "applies to cluster and primary pools: the servers of a sharded pool have no replicas to read from".into(),
                        ));
                    }
                }
            }
            let mut policies = std::collections::BTreeSet::new();
            for (listen, policy) in &pool.read_listen {
                if !policies.insert(policy) {
                    return Err(err(
                        name,
                        "read_listen",
                        format!("{} has two listeners (one per policy: each is named <pool>-{} in metrics)", policy.name(), policy.name()),
                    ));
                }
                split_host_port(listen).map_err(|e| err(name, "read_listen", e))?;
                if let Some(other) = listens.insert(listen.as_str(), format!("pool {name}")) {
                    return Err(err(
                        name,
                        "read_listen",
                        format!("{listen} is also used by {other}"),
                    ));
                }
            }
            if pool.max_replica_lag == 0 {
                return Err(err(name, "max_replica_lag", "must be at least 1 ms".into()));
            }
            if pool.mode != Mode::Primary {
                for (field, set) in [
                    ("sentinel", pool.sentinel.is_some()),
                    ("replica_listen", pool.replica_listen.is_some()),
                ] {
                    if set {
                        return Err(err(
                            name,
                            field,
                            "applies to primary pools (mode: primary) only".into(),
                        ));
                    }
                }
            }
            if let Some(tls) = &pool.tls {
                tls.validate()
                    .map_err(|(field, e)| err(name, &format!("tls.{field}"), e))?;
                if let Some(listen) = &tls.listen {
                    if let Some(other) = listens.insert(listen.as_str(), format!("pool {name}")) {
                        return Err(err(
                            name,
                            "tls.listen",
                            format!("{listen} is also used by {other}"),
                        ));
                    }
                } else if is_unix_path(&pool.listen) {
                    return Err(err(
                        name,
                        "tls",
                        "a unix socket listener does not speak TLS: give tls.listen a TCP address"
                            .into(),
                    ));
                }
            }
            if let Some(migrate) = &pool.migrate {
                migrate
                    .validate(pool)
                    .map_err(|(field, e)| err(name, &format!("migrate.{field}"), e))?;
            }
            if let Some(tls) = &pool.backend_tls {
                tls.validate()
                    .map_err(|(field, e)| err(name, &format!("backend_tls.{field}"), e))?;
            }
            for (i, denied) in pool.deny_commands.iter().enumerate() {
                crate::command::Denied::parse(denied)
                    .map_err(|e| err(name, &format!("deny_commands[{i}]"), e))?;
            }
            if pool.redis == Some(false) {
                return Err(err(
                    name,
                    "redis",
                    "memcached pools are not supported: slotline is a Redis proxy (set redis: true)"
                        .into(),
                ));
            }
            check_login(
                ("redis_username", pool.redis_username.as_deref()),
                ("redis_auth", pool.redis_auth.as_deref()),
            )
            .map_err(|(field, what)| err(name, &field, what))?;
            let (backend_user, backend_password) = pool.backend_login();
            check_login(
                ("backend_username", backend_user),
                ("backend_password", backend_password),
            )
            .map_err(|(field, what)| err(name, &field, what))?;
            if pool.aclfile.is_some() && !pool.users.is_empty() {
                return Err(err(name, "users", "give aclfile or users, not both".into()));
            }
            // The users are read now, so that a bad line stops the (re)load that brings it.
            let field = if pool.aclfile.is_some() {
                "aclfile"
            } else {
                "users"
            };
            let acl = crate::acl::Acl::load(pool.acl_source(), pool.redis_auth.clone())
                .map_err(|e| err(name, field, e.to_string()))?;
            let acl_field = field;
            if pool.backend_users.len() > MAX_BACKEND_USERS {
                return Err(err(
                    name,
                    "backend_users",
                    format!("at most {MAX_BACKEND_USERS}"),
                ));
            }
            if pool.node_logins && acl.configured() {
                return Err(err(
                    name,
                    "node_logins",
                    "is for a pool without users of its own (its users give each their backend_users login)".into(),
                ));
            }
            if !pool.backend_users.is_empty() && !acl.configured() {
                return Err(err(
                    name,
                    "backend_users",
                    "needs the pool's users (aclfile or users)".into(),
                ));
            }
            for (user, backend) in &pool.backend_users {
                let field = format!("backend_users.{user}");
                if acl.users().get(user).is_none() {
                    return Err(err(
                        name,
                        &field,
                        format!("no user '{user}' in the {acl_field}"),
                    ));
                }
                if backend.password.is_none() {
                    return Err(err(
                        name,
                        &format!("{field}.password"),
                        "is required (or password_file)".into(),
                    ));
                }
                check_login(
                    (&format!("{field}.username"), Some(&backend.username)),
                    (&format!("{field}.password"), backend.password.as_deref()),
                )
                .map_err(|(field, what)| err(name, &field, what))?;
            }
            if pool.auto_eject_hosts && pool.server_failure_limit == 0 {
                return Err(err(
                    name,
                    "server_failure_limit",
                    "must be at least 1".into(),
                ));
            }
            if pool.auto_eject_hosts && pool.server_retry_timeout == 0 {
                return Err(err(
                    name,
                    "server_retry_timeout",
                    "must be at least 1 ms".into(),
                ));
            }
            if pool.timeout == 0 {
                return Err(err(name, "timeout", "must be at least 1 ms".into()));
            }
            // Durations are added to clock readings: an absurd one must be refused here, not
            // overflow there.
            for (field, ms) in [
                ("timeout", pool.timeout),
                ("connect_timeout", pool.connect_timeout),
                ("refresh_interval", pool.refresh_interval),
                ("resolve_interval", pool.resolve_interval),
                ("server_retry_timeout", pool.server_retry_timeout),
                ("probe_interval", pool.probe_interval),
                ("client_idle_timeout", pool.client_idle_timeout),
            ] {
                if ms > MAX_MS {
                    return Err(err(
                        name,
                        field,
                        "must be at most one day (86400000 ms)".into(),
                    ));
                }
            }
            if !(1..=64).contains(&pool.server_connections) {
                return Err(err(
                    name,
                    "server_connections",
                    "must be between 1 and 64".into(),
                ));
            }
            if pool.max_request_bytes < 1024 || pool.max_request_bytes > u32::MAX as usize / 2 {
                return Err(err(
                    name,
                    "max_request_bytes",
                    "must be between 1024 and 2 GiB".into(),
                ));
            }
            if pool.max_pending == 0 {
                return Err(err(name, "max_pending", "must be at least 1".into()));
            }
            for (field, bytes) in [
                ("max_client_request_bytes", pool.max_client_request_bytes),
                ("max_client_reply_bytes", pool.max_client_reply_bytes),
                ("max_reply_bytes", pool.max_reply_bytes),
                ("max_server_queue_bytes", pool.max_server_queue_bytes),
            ] {
                if bytes < 1024 {
                    return Err(err(name, field, "must be at least 1024".into()));
                }
            }
            if pool.max_client_reply_bytes < pool.max_reply_bytes {
                return Err(err(
                    name,
                    "max_client_reply_bytes",
                    format!(
                        "must be at least max_reply_bytes ({}): a client must be able to receive the longest reply",
                        pool.max_reply_bytes
                    ),
                ));
            }
            if pool.refresh_interval == 0 {
                return Err(err(
                    name,
                    "refresh_interval",
                    "must be at least 1 ms".into(),
                ));
            }
            if pool.connect_timeout == 0 {
                return Err(err(name, "connect_timeout", "must be at least 1 ms".into()));
            }
        }
        Ok(())
    }
}

impl PoolConfig {
    /// The fields of a primary pool; the error names the field at fault.
    fn validate_primary(&self) -> Result<(), (String, String)> {
        for (i, server) in self.servers.iter().enumerate() {
            split_host_port(server).map_err(|e| (format!("servers[{i}]"), e))?;
        }
        for (field, set) in [
            ("hash", self.hash.is_some()),
            ("hash_tag", self.hash_tag.is_some()),
            ("distribution", self.distribution.is_some()),
            ("auto_eject_hosts", self.auto_eject_hosts),
        ] {
            if set {
                return Err((
                    field.into(),
                    "applies to sharded pools (ketama, modula, random), not to a primary pool"
                        .into(),
                ));
            }
        }
        if self.probe_interval == 0 {
            return Err(("probe_interval".into(), "must be at least 1 ms".into()));
        }
        if let Some(listen) = &self.replica_listen {
            split_host_port(listen).map_err(|e| ("replica_listen".to_string(), e))?;
        }
        let Some(sentinel) = &self.sentinel else {
            return Ok(());
        };
        if sentinel.master_name.is_empty() || sentinel.master_name.contains([' ', '\0']) {
            return Err((
                "sentinel.master_name".into(),
                "must be a non-empty name without spaces".into(),
            ));
        }
        check_login(
            ("sentinel.username", sentinel.username.as_deref()),
            ("sentinel.password", sentinel.password.as_deref()),
        )?;
        match (&sentinel.kubernetes, sentinel.servers.is_empty()) {
            (None, true) => Err((
                "sentinel.servers".into(),
                "at least one sentinel is required (or a kubernetes: source)".into(),
            )),
            (Some(_), false) => Err((
                "sentinel.servers".into(),
                "give either servers or kubernetes, not both".into(),
            )),
            (Some(k8s), true) => k8s
                .validate()
                .map_err(|(field, e)| (format!("sentinel.kubernetes.{field}"), e)),
            (None, false) => {
                for (i, server) in sentinel.servers.iter().enumerate() {
                    split_host_port(server).map_err(|e| (format!("sentinel.servers[{i}]"), e))?;
                }
                Ok(())
            }
        }
    }
}

impl KubernetesConfig {
    /// Checks the names Kubernetes would accept; the error names the field (below `kubernetes.`).
    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        let dns_label = |field: &str, value: &str| {
            let ok = !value.is_empty()
                && value.len() <= 63
                && value
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !value.starts_with('-')
                && !value.ends_with('-');
            if ok {
                Ok(())
            } else {
                Err((
                    field.to_string(),
                    format!("{value:?} is not a valid Kubernetes name (lower case letters, digits and '-', at most 63)"),
                ))
            }
        };
        dns_label("service", &self.service)?;
        if let Some(ns) = &self.namespace {
            dns_label("namespace", ns)?;
        }
        if let Some(PortRef::Name(port)) = &self.port {
            dns_label("port", port)?;
        }
        if self.weight == 0 {
            return Err(("weight".into(), "must be at least 1".into()));
        }
        let mut seen = BTreeMap::new();
        for (pod, name) in &self.names {
            if name.is_empty() || name.contains(['\0', ' ']) {
                return Err((
                    format!("names.{pod}"),
                    "must be a non-empty name without spaces".into(),
                ));
            }
            if let Some(other) = seen.insert(name, pod) {
                return Err((
                    format!("names.{pod}"),
                    format!("{name:?} is also the name of {other}"),
                ));
            }
        }
        Ok(())
    }
}

/// A login's optional ACL user and password, each given as (field, value): neither may be empty,
/// and a user needs its password. Err names the field at fault and why.
fn check_login(
    (user_field, user): (&str, Option<&str>),
    (password_field, password): (&str, Option<&str>),
) -> Result<(), (String, String)> {
    if password == Some("") {
        return Err((password_field.into(), "must not be empty".into()));
    }
    match (user, password) {
        (Some(""), _) => Err((user_field.into(), "must not be empty".into())),
        (Some(_), None) => Err((
            user_field.into(),
            format!("needs {password_field}, the user's password"),
        )),
        _ => Ok(()),
    }
}
