//! A migrating pool: its data moves from an old sharded placement (`migrate.from`, a twemproxy ring)
//! to the pool's own placement (a Redis Cluster, or a ring with servers added or removed) while
//! clients keep using it. docs/migration.md gives the design and why each invariant holds; in short:
//!
//! - Nothing writes to the old servers once the migration starts: every command runs on the new
//!   placement. So a key only ever leaves the old side, and a server the mover has emptied stays
//!   empty.
//! - Before a command runs, each of its keys that may still be on the old side is moved by the old
//!   server itself, with `MIGRATE ... KEYS` (atomic on the old server: it copies with `RESTORE`,
//!   without REPLACE, then deletes its own copy; a key that is not there answers `NOKEY`). Only
//!   once every MIGRATE answered does the command run, so it sees the key where it now lives, with
//!   its TTL. Any number of slotline processes may do this at once: the old server runs one MIGRATE
//!   at a time, and a key it no longer has is never copied again.
//! - The background [`mover`] walks every old server with SCAN and MIGRATEs what it finds, at a
//!   bounded rate. A server it has emptied gets a marker (a key of its own), which every slotline
//!   reads: keys whose old home is emptied go straight to the new placement, at no extra cost.
//! - Before any of that, a pool that starts `manual` serves from the old placement and verifies
//!   ([`phase`]): shadow reads look for each sampled key on the other side. Moving starts for
//!   every slotline at once when one is told to (a start mark on the old servers), after a short
//!   hold that outlasts every other slotline's right to serve from the old side.

mod mover;
mod phase;
mod shadow;
mod verify;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};

use crate::backend::Node;
use crate::command::{Request, Spec};
use crate::config::{MigrateConfig, PoolConfig};
use crate::discovery::Discovery;
use crate::protocol::Reply;
use crate::shards::Shards;

pub use mover::MARKER;
pub use phase::STARTED;
pub use verify::{verify, Report};

/// How long the old placement's discovery may take to name its servers before the pool goes on
/// without them.
const FIRST_ENDPOINTS: Duration = Duration::from_secs(2);

/// How long a MIGRATE may take on the old server (its own timeout for talking to the new one).
const MIGRATE_TIMEOUT_MS: u64 = 5000;

/// Where a key lives under the pool's own (new) placement: its node, if the placement has one.
pub type NewHome<'a> = &'a dyn Fn(&[u8]) -> Option<Arc<Node>>;

/// [`NewHome`], owned by the migration's tasks.
type HomeOf = Arc<dyn Fn(&[u8]) -> Option<Arc<Node>> + Send + Sync>;

/// Closes a client's connection by its id (the sessions of clients whose state lives on the old
/// servers, when moving starts).
pub type Kill = Box<dyn Fn(u64) + Send + Sync>;

/// Keys of one request that one old server moves to one node.
struct Group<'k> {
    /// The old server's place in the old placement.
    index: usize,
    to: Arc<str>,
    from: Arc<Node>,
    keys: Vec<&'k [u8]>,
}

/// One migrating pool's old side and progress.
pub struct Migration {
    pub pool: String,
    old: Arc<Shards>,
    _old_discovery: Discovery,
    /// Old servers known to be empty (by address): their keys need no MIGRATE.
    drained: ArcSwap<HashSet<Arc<str>>>,
    /// The AUTH (or AUTH2) part of a MIGRATE, when the nodes want a password.
    auth: Vec<Bytes>,
    pub(crate) progress: Progress,
    rate: u64,
    batch: usize,
    new_home: HomeOf,
    /// Verifying, starting or moving (see [`phase`]).
    phase: AtomicU8,
    /// The clock [`phase`]'s instants count from, in milliseconds.
    epoch: tokio::time::Instant,
    /// Until when (ms from `epoch`) this slotline may serve from the old placement while
    /// verifying: its last reading of the start marks, plus [`phase::LEASE`].
    lease_ms: AtomicU64,
    /// When this slotline's moves may begin (ms from `epoch`), once starting.
    moves_at_ms: AtomicU64,
    /// Holds the pool's commands while starting, and while verifying without a fresh lease.
    hold: crate::pause::Pause,
    /// `manual`: waits for [`Migration::request_start`] (or another slotline's start).
    manual: bool,
    start_requested: AtomicBool,
    /// Clients whose connections of their own (transactions, blocking commands, subscriptions)
    /// went to the old servers while verifying: closed when moving starts.
    bound: Mutex<HashSet<u64>>,
    bound_count: AtomicUsize,
    kill: Kill,
    /// One read in `shadow_every` is a shadow read (0: none).
    shadow_every: u64,
    shadow_tick: AtomicU64,
    shadow_inflight: AtomicUsize,
}

/// What the migration has done, for INFO and the metrics.
#[derive(Default)]
pub struct Progress {
    /// Keys the background mover moved.
    pub moved: AtomicU64,
    /// Commands that moved a key before they ran (one per command, however many of its keys its
    /// MIGRATEs moved: MIGRATE says only that it moved some).
    pub moved_on_touch: AtomicU64,
    /// What the keys the mover moved took on their old servers (`MEMORY USAGE`).
    pub bytes: AtomicU64,
    /// Keys the mover looked at.
    pub scanned: AtomicU64,
    /// Keys on the old servers when last counted.
    pub remaining: AtomicU64,
    /// MIGRATEs that failed.
    pub errors: AtomicU64,
    /// Keys found on an old server after it was emptied (something writes to the old placement).
    pub stray: AtomicU64,
    /// Every old server is empty.
    pub done: AtomicBool,
    /// This process's mover is paused (admin `POST /migration/pause`).
    pub paused: AtomicBool,
    /// The last error, for INFO.
    pub last_error: Mutex<String>,
    /// Reads whose key was also looked for on the other side.
    pub shadow_reads: AtomicU64,
    /// Shadow reads that found a copy of the key there.
    pub shadow_mismatches: AtomicU64,
}

/// The old placement of `config`'s migration (`migrate.from`, logged in as the pool is), followed
/// by a discovery source of its own; waits up to `wait` for its first endpoints.
async fn old_side<'c>(
    name: &str,
    config: &'c PoolConfig,
    tls: Option<Arc<crate::tls::Connector>>,
    wait: Duration,
) -> Result<(&'c MigrateConfig, Arc<Shards>, Discovery), String> {
    let Some(migrate) = &config.migrate else {
        return Err("the pool has no migrate: block".into());
    };
    let old_config = migrate.from_pool(config);
    let source = Discovery::start(&format!("{name}/from"), &old_config);
    let mut endpoints = source.endpoints.clone();
    let _ = tokio::time::timeout(wait, endpoints.wait_for(Option::is_some)).await;
    let stats = Arc::new(crate::stats::PoolStats::default());
    let old = Shards::start(&old_config, stats, &source, tls)?;
    Ok((migrate, old, source))
}

impl Migration {
    /// Starts following the old servers (`migrate.from`), the phase (verifying until started)
    /// and, with a rate, the background mover, which finds where keys go with `new_home`.
    pub async fn start(
        name: &str,
        config: &PoolConfig,
        new_home: impl Fn(&[u8]) -> Option<Arc<Node>> + Send + Sync + 'static,
        tls: Option<Arc<crate::tls::Connector>>,
        kill: Kill,
    ) -> Result<Arc<Migration>, String> {
        let (migrate, old, source) = old_side(name, config, tls, FIRST_ENDPOINTS).await?;
        // MIGRATE logs in to the new node as slotline does.
        let auth: Vec<Bytes> = match config.backend_login() {
            (Some(user), Some(password)) => vec![
                Bytes::from_static(b"AUTH2"),
                Bytes::copy_from_slice(user.as_bytes()),
                Bytes::copy_from_slice(password.as_bytes()),
            ],
            (None, Some(password)) => vec![
                Bytes::from_static(b"AUTH"),
                Bytes::copy_from_slice(password.as_bytes()),
            ],
            _ => Vec::new(),
        };
        let migration = Arc::new(Migration {
            pool: name.to_string(),
            old,
            _old_discovery: source,
            drained: ArcSwap::from_pointee(HashSet::new()),
            auth,
            progress: Progress::default(),
            rate: migrate.rate,
            batch: migrate.batch,
            new_home: Arc::new(new_home),
            phase: AtomicU8::new(phase::VERIFYING),
            epoch: tokio::time::Instant::now(),
            lease_ms: AtomicU64::new(0),
            moves_at_ms: AtomicU64::new(0),
            hold: crate::pause::Pause::default(),
            manual: migrate.start == crate::config::MigrateStart::Manual,
            start_requested: AtomicBool::new(migrate.start == crate::config::MigrateStart::Auto),
            bound: Mutex::new(HashSet::new()),
            bound_count: AtomicUsize::new(0),
            kill,
            shadow_every: match migrate.shadow_reads {
                f if f <= 0.0 => 0,
                f => (1.0 / f).round().max(1.0) as u64,
            },
            shadow_tick: AtomicU64::new(0),
            shadow_inflight: AtomicUsize::new(0),
        });
        phase::spawn(&migration);
        mover::spawn(migration.clone());
        Ok(migration)
    }

    /// The MIGRATEs that must run, each on its old server, before `req` may run on the new
    /// placement: its keys that may still be on an old server other than their new home, grouped
    /// per old server and destination. Empty for almost every request once the mover is done.
    pub fn moves(
        &self,
        req: Request<'_>,
        spec: &Spec,
        new_home: NewHome<'_>,
    ) -> Result<Vec<(Arc<Node>, Bytes)>, String> {
        if self.progress.done.load(Ordering::Relaxed) || self.verifying() {
            return Ok(Vec::new());
        }
        let table = self.old.table();
        let drained = self.drained.load();
        // Per old server and destination: one MIGRATE each (a request names few keys).
        let mut groups: Vec<Group<'_>> = Vec::new();
        let mut failed = None;
        req.for_each_key(spec, |key| {
            let index = table.server_for_key(key);
            let Some(old) = table.node(index) else {
                return;
            };
            if drained.contains(old.addr()) {
                return;
            }
            let Some(new) = new_home(key) else {
                failed = Some("ERR slotline: no node of the new placement takes this key yet");
                return;
            };
            if new.addr() == old.addr() {
                return;
            }
            match groups
                .iter_mut()
                .find(|g| g.index == index && g.to == *new.addr())
            {
                Some(group) => group.keys.push(key),
                None => groups.push(Group {
                    index,
                    to: new.addr().clone(),
                    from: old.clone(),
                    keys: vec![key],
                }),
            }
        });
        if let Some(e) = failed {
            return Err(e.to_string());
        }
        Ok(groups
            .into_iter()
            .map(|g| (g.from, self.migrate_frame(&g.to, &g.keys)))
            .collect())
    }

    /// `MIGRATE host port "" 0 timeout [AUTH ...] KEYS key...`, run on an old server.
    fn migrate_frame(&self, to: &str, keys: &[&[u8]]) -> Bytes {
        let (host, port) = to.rsplit_once(':').unwrap_or((to, "6379"));
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let timeout = MIGRATE_TIMEOUT_MS.to_string();
        let mut args: Vec<&[u8]> = vec![
            b"MIGRATE",
            host.as_bytes(),
            port.as_bytes(),
            b"",
            b"0",
            timeout.as_bytes(),
        ];
        args.extend(self.auth.iter().map(|a| &a[..]));
        args.push(b"KEYS");
        args.extend_from_slice(keys);
        let mut frame = BytesMut::new();
        Reply(&mut frame).command(&args);
        frame.freeze()
    }

    /// Commands that read or change the whole keyspace cannot span both placements while keys are
    /// on both: refused until the migration is done.
    pub fn refusal(&self, spec: &Spec) -> Option<String> {
        if self.progress.done.load(Ordering::Relaxed) || self.verifying() {
            return None;
        }
        matches!(
            spec.name,
            "keys" | "scan" | "randomkey" | "dbsize" | "flushall" | "flushdb" | "swapdb"
        )
        .then(|| {
            format!(
                "ERR slotline: {} is not available while pool {} migrates (its keys are on both placements); \
                 it is again once INFO migration says done",
                spec.name.to_uppercase(),
                self.pool
            )
        })
    }

    /// Whether a MIGRATE's reply means its keys are on the new side now (moved, or not there).
    pub fn migrated(reply: &[u8]) -> bool {
        reply.starts_with(b"+OK") || reply.starts_with(b"+NOKEY")
    }

    /// Counts a command that moved a key before it ran (see [`Progress::moved_on_touch`]).
    pub fn touched(&self, moved: bool) {
        if moved {
            self.progress.moved_on_touch.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn set_drained(&self, addr: &Arc<str>) {
        self.set_drained_to(addr, true);
    }

    fn set_drained_to(&self, addr: &Arc<str>, drained: bool) {
        if self.drained.load().contains(addr) == drained {
            return;
        }
        let mut next = HashSet::clone(&self.drained.load());
        match drained {
            true => next.insert(addr.clone()),
            false => next.remove(addr),
        };
        self.drained.store(Arc::new(next));
    }

    /// INFO's `# Migration` section.
    pub fn info(&self, out: &mut String) {
        use std::fmt::Write as _;
        let p = &self.progress;
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let servers = self.old.table().in_service().count();
        let drained = self.drained.load().len();
        let _ = write!(
            out,
            "# Migration\r\nmigration_pool:{}\r\nmigration_state:{}\r\nmigration_servers:{servers}\r\n\
             migration_servers_drained:{drained}\r\nmigration_keys_moved:{}\r\nmigration_keys_moved_on_touch:{}\r\n\
             migration_bytes_moved:{}\r\n\
             migration_keys_scanned:{}\r\nmigration_keys_remaining:{}\r\nmigration_errors:{}\r\n\
             migration_stray_keys:{}\r\nmigration_shadow_reads:{}\r\nmigration_shadow_mismatches:{}\r\n\
             migration_rate_per_sec:{:.0}\r\nmigration_last_error:{}\r\n\r\n",
            self.pool,
            self.state(),
            read(&p.moved),
            read(&p.moved_on_touch),
            read(&p.bytes),
            read(&p.scanned),
            read(&p.remaining),
            read(&p.errors),
            read(&p.stray),
            read(&p.shadow_reads),
            read(&p.shadow_mismatches),
            self.rate_per_sec(),
            p.last_error.lock().unwrap_or_else(PoisonError::into_inner),
        );
    }

    /// Keys moved a second, on average since this process started moving.
    pub fn rate_per_sec(&self) -> f64 {
        let p = &self.progress;
        let since = self.at(self.moves_at_ms.load(Ordering::Acquire));
        let elapsed = tokio::time::Instant::now()
            .saturating_duration_since(since)
            .as_secs_f64();
        let moved = p.moved.load(Ordering::Relaxed) + p.moved_on_touch.load(Ordering::Relaxed);
        match self.verifying() || elapsed <= 0.0 {
            true => 0.0,
            false => moved as f64 / elapsed,
        }
    }

    /// Pauses (or resumes) this process's background mover; keys clients touch still move.
    pub fn pause(&self, paused: bool) {
        if self.progress.paused.swap(paused, Ordering::Relaxed) != paused {
            tracing::info!(pool = %self.pool, paused, "migration mover paused or resumed");
        }
    }

    pub fn state(&self) -> &'static str {
        let p = &self.progress;
        match self.phase.load(Ordering::Acquire) {
            phase::VERIFYING if self.start_requested.load(Ordering::Acquire) => return "starting",
            phase::VERIFYING => return "verifying",
            phase::STARTING => return "starting",
            _ => {}
        }
        if p.done.load(Ordering::Relaxed) {
            "done"
        } else if self.rate == 0 {
            "on_touch"
        } else if p.paused.load(Ordering::Relaxed) {
            "paused"
        } else {
            "moving"
        }
    }
}
