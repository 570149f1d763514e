//! Users, in Redis's own ACL language, enforced by slotline for every mode.
//!
//! A pool's users come from `aclfile:` (Redis's ACL file format) or `users:` (the same lines in the
//! config); without either, the pool has the one user it always had (`redis_auth`'s password, every
//! command and key). Sessions keep only the user they logged in as ([`Active`]) and ask it one
//! question per command ([`User::check`]). When the file changes, the set is swapped whole: the users
//! it replaces are marked retired, and a session finds its user's new rules by name at its next
//! command; clients of users removed or turned off are disconnected.

mod check;
pub mod command;
mod failures;
mod glob;
mod log;
mod rules;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;

pub use check::{Denial, Reason};
pub use failures::Failures;
pub use log::{Entry, Log};
pub use rules::{RuleError, User};

use crate::command::key_access;

/// Redis's ACL categories, in the order `ACL CAT` lists them; a command's categories are a bit mask
/// in this order (generated into the command table).
pub const CATEGORIES: [&str; 21] = [
    "keyspace",
    "read",
    "write",
    "set",
    "sortedset",
    "list",
    "hash",
    "string",
    "bitmap",
    "hyperloglog",
    "geo",
    "stream",
    "pubsub",
    "admin",
    "fast",
    "slow",
    "blocking",
    "dangerous",
    "connection",
    "transaction",
    "scripting",
];

/// Key access a pattern grants, and a command needs.
pub(crate) const READ: u8 = key_access::READ;
pub(crate) const WRITE: u8 = key_access::WRITE;

/// SHA-256, as Redis keeps passwords.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Compares without stopping at the first difference, so the time taken does not tell how much of a
/// guess was right.
pub fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// What a pool counts per user (kept across reloads, by name; users come from a file, so the labels
/// stay bounded).
#[derive(Default, Debug)]
pub struct UserStats {
    pub clients: AtomicU64,
    pub commands: AtomicU64,
    pub denials: AtomicU64,
}

/// A user as sessions hold it: its rules, its counters, and whether a newer set replaced it.
#[derive(Debug)]
pub struct Active {
    pub rules: User,
    pub stats: Arc<UserStats>,
    /// The [`Acl`] it belongs to (its `id`).
    acl: u64,
    /// Everything is allowed: sessions skip the check.
    pub unrestricted: bool,
    /// The backend login its commands run as (`backend_users`), when not the pool's own.
    pub backend: Option<u16>,
    retired: AtomicBool,
}

impl Active {
    /// A newer set of users replaced this one: look the user up again by name.
    pub fn retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }
}

/// One set of users, as one file (or config) made them.
#[derive(Debug, Default)]
pub struct Users {
    by_name: BTreeMap<Box<str>, Arc<Active>>,
}

impl Users {
    pub fn get(&self, name: &str) -> Option<&Arc<Active>> {
        self.by_name.get(name)
    }

    /// By name, as ACL USERS and ACL LIST order them.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Active>> {
        self.by_name.values()
    }
}

/// Where a pool's users come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `aclfile:`, followed as it changes.
    File(PathBuf),
    /// `users:` lines in the config.
    Lines(Vec<String>),
    /// Neither: the pool's one user, `name` (`redis_username`, or `default`), with `password`
    /// (`redis_auth`) or none.
    Single {
        name: String,
        password: Option<String>,
    },
}

/// A pool's users and what is kept about them.
pub struct Acl {
    /// Tells the users of one pool's set from another's (pools share the client registry).
    id: u64,
    users: ArcSwap<Users>,
    source: Source,
    /// The default user stands in for `redis_auth` when the users do not define it.
    default_password: Option<String>,
    /// The backend login of each user that has one of its own, by name (see
    /// [`crate::config::PoolConfig::backend_logins`]).
    backends: BTreeMap<Box<str>, u16>,
    stats: Mutex<HashMap<Box<str>, Arc<UserStats>>>,
    pub log: Log,
    pub failures: Failures,
}

impl std::fmt::Debug for Acl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acl").field("source", &self.source).finish()
    }
}

/// Users that could not be read: the file or line, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError(pub String);

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Acl {
    /// The users `source` defines (`default_password` is `redis_auth`, the default user's password
    /// when the users leave it out).
    pub fn load(source: Source, default_password: Option<String>) -> Result<Acl, LoadError> {
        Acl::load_with_backends(source, default_password, BTreeMap::new())
    }

    /// [`Acl::load`], with the backend login of users that run as one of their own.
    pub fn load_with_backends(
        source: Source,
        default_password: Option<String>,
        backends: BTreeMap<Box<str>, u16>,
    ) -> Result<Acl, LoadError> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let acl = Acl {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            users: ArcSwap::from_pointee(Users::default()),
            source,
            default_password,
            backends,
            stats: Mutex::new(HashMap::new()),
            log: Log::default(),
            failures: Failures::default(),
        };
        let users = acl.read()?;
        acl.users.store(Arc::new(users));
        Ok(acl)
    }

    /// The users come from the config or a file (and ACL commands are slotline's to answer).
    pub fn configured(&self) -> bool {
        !matches!(self.source, Source::Single { .. })
    }

    /// The file the users come from, if any.
    pub fn file(&self) -> Option<&PathBuf> {
        match &self.source {
            Source::File(path) => Some(path),
            _ => None,
        }
    }

    pub fn users(&self) -> arc_swap::Guard<Arc<Users>> {
        self.users.load()
    }

    /// The user a client logging in with no user name becomes: `default`, or the pool's one user.
    pub fn default_name(&self) -> &str {
        match &self.source {
            Source::Single { name, .. } => name,
            _ => "default",
        }
    }

    /// The user a new client is, before it says AUTH: the default user when it is on and needs no
    /// password, as in Redis.
    pub fn initial(&self) -> Option<Arc<Active>> {
        self.default_user()
            .filter(|u| u.rules.enabled && u.rules.nopass)
    }

    /// Whether the default user takes any password (then `AUTH password` is an error, as Redis
    /// answers it).
    pub fn default_needs_no_password(&self) -> bool {
        self.default_user().is_some_and(|u| u.rules.nopass)
    }

    fn default_user(&self) -> Option<Arc<Active>> {
        self.users().get(self.default_name()).cloned()
    }

    /// The user `name` (the default user when absent) if `password` is one of its passwords.
    pub fn login(&self, name: Option<&[u8]>, password: &[u8]) -> Option<Arc<Active>> {
        let users = self.users();
        let name = match name {
            Some(name) => std::str::from_utf8(name).ok()?,
            None => self.default_name(),
        };
        let user = users.get(name)?;
        if !user.rules.enabled {
            return None;
        }
        if user.rules.nopass {
            return Some(user.clone());
        }
        let given = sha256(password);
        // Every digest compared, whichever matches.
        let matched = user
            .rules
            .passwords
            .iter()
            .fold(false, |found, p| found | same_secret(&given, p));
        matched.then(|| user.clone())
    }

    /// Reads the users from where they come from (again, when the file changed or SIGHUP came; a
    /// set that cannot be read is not installed, and the old one stays).
    pub fn read(&self) -> Result<Users, LoadError> {
        self.read_from(&self.source)
    }

    /// Makes `users` the set: it serves new logins and, by name, the sessions of users it keeps.
    /// Returns the names of users removed or turned off, whose clients are to be disconnected.
    pub fn install(&self, users: Users) -> Vec<String> {
        let old = self.users.swap(Arc::new(users));
        let new = self.users();
        let mut gone = Vec::new();
        for (name, user) in &old.by_name {
            user.retired.store(true, Ordering::Relaxed);
            if !new.get(name).is_some_and(|u| u.rules.enabled) {
                gone.push(name.to_string());
            }
        }
        gone
    }

    /// Whether `user` is one of this set's users named in `names`.
    pub fn is_among(&self, user: &Active, names: &[String]) -> bool {
        user.acl == self.id && names.iter().any(|n| **n == *user.rules.name)
    }

    /// The user a client's TLS certificate names (`tls_user_from_cert`): that user when it is on;
    /// for a pool without users of its own, the pool's one user under the certificate's name.
    pub fn cert_login(&self, name: &str) -> Option<Arc<Active>> {
        let users = self.users();
        if self.configured() {
            return users.get(name).filter(|u| u.rules.enabled).cloned();
        }
        let single = users.get(self.default_name())?;
        Some(self.renamed(single, name, single.unrestricted, None))
    }

    /// A node user a client logged in as (`node_logins`), the nodes having accepted its password:
    /// slotline checks nothing of it (the nodes do, on connections logged in as it, `backend`),
    /// and counts it with the pool's one user.
    pub fn node_login(&self, name: &[u8], backend: u16) -> Option<Arc<Active>> {
        let users = self.users();
        let single = users.get(self.default_name())?;
        let name = String::from_utf8_lossy(name);
        Some(self.renamed(single, &name, true, Some(backend)))
    }

    /// The pool's one user (a pool without users of its own) under another name, counted with it.
    fn renamed(
        &self,
        single: &Active,
        name: &str,
        unrestricted: bool,
        backend: Option<u16>,
    ) -> Arc<Active> {
        let mut rules = single.rules.clone();
        rules.name = name.into();
        Arc::new(Active {
            unrestricted,
            backend,
            rules,
            stats: single.stats.clone(),
            acl: self.id,
            retired: AtomicBool::new(false),
        })
    }

    /// The user `name` now, for a session whose user was retired; None when it is gone or off.
    pub fn current(&self, name: &str) -> Option<Arc<Active>> {
        if !self.configured() {
            // A pool's one user is never replaced (a change of config starts a new pool).
            return None;
        }
        self.users().get(name).filter(|u| u.rules.enabled).cloned()
    }

    /// New `users:` lines (a reloaded config whose users alone changed): installed as
    /// [`Acl::install`] does. Returns the names of users removed or turned off.
    pub fn replace_lines(&self, lines: &[String]) -> Result<Vec<String>, LoadError> {
        if !matches!(self.source, Source::Lines(_)) {
            return Err(LoadError("the users do not come from users: lines".into()));
        }
        let users = self.read_from(&Source::Lines(lines.to_vec()))?;
        Ok(self.install(users))
    }

    fn read_from(&self, source: &Source) -> Result<Users, LoadError> {
        let (lines, origin): (Vec<String>, String) = match source {
            Source::File(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| LoadError(format!("cannot read {}: {e}", path.display())))?;
                (
                    text.lines().map(str::to_string).collect(),
                    path.display().to_string(),
                )
            }
            Source::Lines(lines) => (lines.clone(), "users".into()),
            Source::Single { name, password } => {
                let user = User::everything(name, password.as_deref())
                    .map_err(|e| LoadError(format!("the pool's user: {e}")))?;
                return Ok(self.users_of(vec![user]));
            }
        };
        let mut users = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let user = User::parse_line(line)
                .map_err(|e| LoadError(format!("{origin}: line {}: {e}", i + 1)))?;
            if users.iter().any(|u: &User| u.name == user.name) {
                return Err(LoadError(format!(
                    "{origin}: line {}: user '{}' is defined twice",
                    i + 1,
                    user.name
                )));
            }
            users.push(user);
        }
        if !users.iter().any(|u| &*u.name == "default") {
            // As Redis: a default user, which `redis_auth` gives a password.
            let default = User::everything("default", self.default_password.as_deref())
                .map_err(|e| LoadError(format!("the default user: {e}")))?;
            users.push(default);
        }
        Ok(self.users_of(users))
    }

    fn users_of(&self, users: Vec<User>) -> Users {
        let mut stats = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        let by_name = users
            .into_iter()
            .map(|rules| {
                let stats = stats.entry(rules.name.clone()).or_default().clone();
                let active = Active {
                    unrestricted: rules.unrestricted(),
                    backend: self.backends.get(&rules.name).copied(),
                    rules,
                    stats,
                    acl: self.id,
                    retired: AtomicBool::new(false),
                };
                (active.rules.name.clone(), Arc::new(active))
            })
            .collect();
        Users { by_name }
    }

    /// INFO's `users` section: failed logins, and per user (with users of the pool's own) its
    /// clients, commands and denials.
    pub fn info(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = write!(
            out,
            "# Users\r\nusers_source:{}\r\nauth_failures:{}\r\n",
            match &self.source {
                Source::File(_) => "aclfile",
                Source::Lines(_) => "config",
                Source::Single { .. } => "redis_auth",
            },
            self.failures.total()
        );
        if self.configured() {
            for (name, s) in self.stats() {
                let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
                let _ = write!(
                    out,
                    "user_{name}:clients={},commands={},denials={}\r\n",
                    read(&s.clients),
                    read(&s.commands),
                    read(&s.denials)
                );
            }
        }
        out.push_str("\r\n");
    }

    /// Every user's counters, by name (for INFO and /metrics).
    pub fn stats(&self) -> Vec<(Box<str>, Arc<UserStats>)> {
        let stats = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<_> = stats.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(ls: &[&str]) -> Source {
        Source::Lines(ls.iter().map(|l| l.to_string()).collect())
    }

    #[test]
    fn logins() {
        let acl = Acl::load(
            lines(&[
                "user app1 on >pw1 >pw1b ~app1:* +@all",
                "user off1 off >pw ~* +@all",
                "user default on >dpw ~* +@all",
            ]),
            None,
        )
        .unwrap();
        assert!(acl.configured());
        assert!(acl.initial().is_none(), "default has a password");
        assert_eq!(
            acl.login(Some(b"app1"), b"pw1")
                .map(|u| u.rules.name.clone()),
            Some("app1".into())
        );
        assert!(acl.login(Some(b"app1"), b"pw1b").is_some());
        assert!(acl.login(Some(b"app1"), b"nope").is_none());
        assert!(acl.login(Some(b"off1"), b"pw").is_none());
        assert!(acl.login(Some(b"ghost"), b"pw").is_none());
        assert_eq!(
            acl.login(None, b"dpw").map(|u| u.rules.name.clone()),
            Some("default".into())
        );
    }

    #[test]
    fn default_user_as_redis_makes_it() {
        let acl = Acl::load(lines(&["user app on >pw ~* +@all"]), None).unwrap();
        assert!(acl.initial().is_some(), "no password: logged in at once");
        let acl = Acl::load(lines(&["user app on >pw ~* +@all"]), Some("s".into())).unwrap();
        assert!(acl.initial().is_none());
        assert!(acl.login(None, b"s").is_some());
        let single = Acl::load(
            Source::Single {
                name: "app".into(),
                password: Some("pw".into()),
            },
            None,
        )
        .unwrap();
        assert!(!single.configured());
        assert!(single.login(None, b"pw").is_some());
        assert!(single.login(Some(b"app"), b"pw").is_some());
        assert!(single.login(Some(b"default"), b"pw").is_none());
    }

    #[test]
    fn the_example_file_loads() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/slotline-users.acl");
        let acl = Acl::load(Source::File(path), None).unwrap();
        let names: Vec<_> = acl
            .users()
            .iter()
            .map(|u| u.rules.name.to_string())
            .collect();
        assert_eq!(names, ["app1", "app2", "default", "ops"]);
    }

    #[test]
    fn bad_lines_are_named() {
        let err = Acl::load(lines(&["user a on ~*", "", "user b on bogus"]), None).unwrap_err();
        assert_eq!(err.0, "users: line 3: 'bogus': not an ACL rule slotline knows (on, off, nopass, >password, #sha256, resetpass, ~pattern, %R~pattern, %W~pattern, allkeys, resetkeys, &pattern, allchannels, resetchannels, +@category, -@category, +command, -command, +command|subcommand, allcommands, nocommands, reset)");
        let twice = Acl::load(lines(&["user a on", "user a off"]), None).unwrap_err();
        assert!(
            twice.0.contains("line 2: user 'a' is defined twice"),
            "{twice}"
        );
    }

    #[test]
    fn reload_retires_and_names_the_gone() {
        let dir = std::env::temp_dir().join(format!("slotline-acl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("users.acl");
        std::fs::write(
            &file,
            "user a on >1 ~* +@all\nuser b on >2 ~* +@all\nuser c on >3 ~* +@all\n",
        )
        .unwrap();
        let acl = Acl::load(Source::File(file.clone()), None).unwrap();
        let a = acl.login(Some(b"a"), b"1").unwrap();
        std::fs::write(&file, "user a on >1 >1b ~* +@all\nuser c off >3 ~* +@all\n").unwrap();
        let gone = acl.install(acl.read().unwrap());
        assert_eq!(gone, ["b", "c"]);
        assert!(a.retired());
        assert!(acl.login(Some(b"a"), b"1b").is_some());
        std::fs::write(&file, "user a on bogus\n").unwrap();
        assert!(acl.read().is_err());
        assert!(acl.login(Some(b"a"), b"1b").is_some(), "the old users stay");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
