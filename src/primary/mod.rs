//! Primary pools: one Redis master with replicas, as the redis-ha chart runs them. Writes (and
//! everything not read-only) go to the current master; reads go to replicas when `read_from` asks.
//!
//! Who is master is decided by one task per pool (`detect`), off the data path: it asks the sentinels
//! (a majority of those that answer must agree, and their `+switch-master` messages switch at once,
//! see `sentinel`) or, without Sentinel, probes `ROLE` on every member and accepts a new master only
//! when exactly one claims the role. Each decision is a new [`Roles`] snapshot behind an `ArcSwap`:
//! sessions load it once per batch of requests and never wait on it.
//!
//! A planned Sentinel failover is followed from its first announcement: writes are held while the
//! chosen replica catches up and is promoted, then go to it (see `handover`), so no write the old
//! master acknowledged is lost.
//!
//! When the master changes, slotline drops its connections to the demoted one (they close once the
//! replies already on their way are in), so no later request can reach it; a request it refused with
//! READONLY is sent once more, to the master the next look finds.

mod detect;
mod handover;
pub(crate) mod replies;
mod sentinel;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, Guard};
use bytes::Bytes;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::backend::{self, Node, ReplyTo};
use crate::config::{PoolConfig, ReadFrom};
use crate::discovery::{Discovery, EndpointSet};
use crate::pause::Pause;

pub use handover::{Ended, Hold};

/// `ROLE`, as the detector's probes and a handover ask it.
const ROLE: Bytes = Bytes::from_static(b"*1\r\n$4\r\nROLE\r\n");

/// Between looks for the master a READONLY-refused request waits for.
const RESEND_LOOK_GAP: Duration = Duration::from_millis(50);

/// One request to `node` outside any client session (a sentinel's question, a `ROLE` probe), within
/// `wait`; None when it failed or took too long.
async fn ask(node: &Node, frame: Bytes, wait: Duration) -> Option<Bytes> {
    match tokio::time::timeout(wait, node.request(&frame)).await {
        Ok(Ok(reply)) => Some(reply),
        _ => None,
    }
}

/// Who serves what, now.
#[derive(Default)]
pub struct Roles {
    pub master: Option<Arc<Node>>,
    /// Replicas whose link to their master is up.
    pub replicas: Vec<Arc<Node>>,
    /// The same replicas as reads choose among them.
    pub group: crate::read::Group,
    /// New with every snapshot (see [`crate::route::next_generation`]).
    pub generation: u64,
}

/// How a master switch was noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A majority of the sentinels named a new master when asked.
    Sentinel,
    /// A sentinel announced `+switch-master`.
    SentinelEvent,
    /// Exactly one member answered `ROLE` with master.
    RoleProbe,
    /// The replica a sentinel announced it would promote answered `ROLE` as master (see
    /// [`handover`]).
    SentinelFailover,
}

impl Via {
    pub const ALL: [Via; 4] = [
        Via::Sentinel,
        Via::SentinelEvent,
        Via::RoleProbe,
        Via::SentinelFailover,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Via::Sentinel => "sentinel",
            Via::SentinelEvent => "sentinel_event",
            Via::RoleProbe => "role_probe",
            Via::SentinelFailover => "sentinel_failover",
        }
    }
}

/// The last master switch.
#[derive(Debug, Clone)]
pub struct Switch {
    pub from: Arc<str>,
    pub to: Arc<str>,
    pub at: SystemTime,
    pub via: Via,
}

/// A primary pool's master and replicas, and what decides them.
pub struct Primary {
    pool: String,
    roles: ArcSwap<Roles>,
    /// Connections to every member, by address (the demoted master's are dropped at a switch).
    nodes: backend::Nodes,
    /// Wakes the detector for a look now (a failed connection, a READONLY reply).
    look: Arc<Notify>,
    /// Looks begun, and (watched) looks finished: a READONLY retry waits for a look that began after
    /// the refusal.
    looks_begun: AtomicU64,
    looks_done: watch::Sender<u64>,
    next_read: AtomicUsize,
    read_counts: crate::read::Counters,
    /// How far each replica lags, measured once a read policy uses replicas (then replicas that
    /// lag more than `max_replica_lag` get no reads, and read-your-writes holds).
    lag: OnceLock<Arc<crate::read::lag::Tracker>>,
    max_replica_lag: u64,
    /// Holds the clients' writes while a sentinel promotes a replica (see [`handover`]).
    hold: Pause,
    /// Holds so far, and how the last one went.
    holds: AtomicU64,
    last_hold: Mutex<Option<handover::Hold>>,
    /// How long a hold may last: the pool's `timeout`.
    hold_bound: Duration,
    /// The master a handover left, until the sentinels stop naming it: they go on naming it until
    /// `+switch-master`, and a look must not switch back to it (see `detect`).
    left: Mutex<Option<Arc<str>>>,
    /// Serializes [`install`](Self::install).
    installing: Mutex<()>,
    switches: [AtomicU64; 4],
    /// The pool's `slotline_master_switches_total`.
    switch_counter: OnceLock<prometheus::IntCounter>,
    last_switch: Mutex<Option<Switch>>,
    sentinel: bool,
}

impl Primary {
    /// Starts the pool's detector; `members` are the master and replicas as discovery lists them (None
    /// when the sentinels name them), `sentinels` where the sentinels are. The config must have been
    /// validated. Call [`look_now`](Self::look_now) to wait for a first master.
    pub fn start(
        pool: &str,
        config: &PoolConfig,
        members: Option<watch::Receiver<EndpointSet>>,
        sentinels: Option<Discovery>,
        tls: Option<Arc<crate::tls::Connector>>,
    ) -> Arc<Primary> {
        let look = Arc::new(Notify::new());
        let settings = backend::Settings {
            on_failure: Some(look.clone()),
            ..backend::Settings::for_pool(config, config.redis_db, tls.clone())
        };
        let primary = Arc::new(Primary {
            pool: pool.to_string(),
            roles: ArcSwap::from_pointee(Roles::default()),
            nodes: backend::Nodes::new(settings),
            look,
            looks_begun: AtomicU64::new(0),
            looks_done: watch::channel(0).0,
            next_read: AtomicUsize::new(0),
            read_counts: Default::default(),
            lag: OnceLock::new(),
            max_replica_lag: config.max_replica_lag,
            hold: Pause::default(),
            holds: AtomicU64::new(0),
            last_hold: Mutex::new(None),
            hold_bound: Duration::from_millis(config.timeout),
            left: Mutex::new(None),
            installing: Mutex::new(()),
            switches: Default::default(),
            switch_counter: OnceLock::new(),
            last_switch: Mutex::new(None),
            sentinel: config.sentinel.is_some(),
        });
        tokio::spawn(detect::run(
            Arc::downgrade(&primary),
            detect::Sources::new(config, members, sentinels, tls),
        ));
        if config.reads_replicas() {
            primary.read_from_replicas();
        }
        primary
    }

    /// The current roles; cheap, never blocks.
    pub fn roles(&self) -> Guard<Arc<Roles>> {
        self.roles.load()
    }

    /// How this pool's backend connections are set up.
    pub fn settings(&self) -> &backend::Settings {
        self.nodes.settings()
    }

    /// Where a read-only command goes under `read_from` for a client whose reads must be `fresh`:
    /// the replicas that qualify take turns (every request the next one), as the policy allows.
    pub fn read_node<'r>(
        &self,
        roles: &'r Roles,
        read_from: ReadFrom,
        fresh: crate::read::Fresh,
    ) -> crate::read::Pick<'r> {
        let turn = self.next_read.fetch_add(1, Ordering::Relaxed);
        roles.group.choose(read_from, fresh, turn)
    }

    /// The healthy replicas, with the master, for INFO and metrics.
    pub fn replicas(&self) -> Vec<crate::read::ReplicaView> {
        let roles = self.roles();
        crate::read::describe([(roles.master.as_ref(), &roles.group)])
    }

    /// Starts measuring the replicas' lag (a read policy uses them now); idempotent.
    pub fn read_from_replicas(self: &Arc<Self>) {
        if self.lag.get().is_some() {
            return; // every client's READONLY comes here
        }
        let tracker = Arc::new(crate::read::lag::Tracker::new(self.max_replica_lag));
        if self.lag.set(tracker.clone()).is_err() {
            return;
        }
        let primary = Arc::downgrade(self);
        tokio::spawn(tracker.run(move || {
            let primary = primary.upgrade()?;
            let roles = primary.roles();
            let probed = roles.master.as_ref();
            let probed = probed.map(|master| crate::read::lag::Probed::of(master, &roles.group));
            Some(probed.into_iter().collect())
        }));
        // The replicas as they are now, measured from here on.
        let _one = self
            .installing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let current = self.roles.load();
        self.roles.store(Arc::new(Roles {
            master: current.master.clone(),
            replicas: current.replicas.clone(),
            group: self.group(&current.replicas),
            generation: current.generation,
        }));
    }

    /// The replicas as reads choose among them: measured once a policy uses them.
    fn group(&self, replicas: &[Arc<Node>]) -> crate::read::Group {
        let state = |node: &Arc<Node>| match self.lag.get() {
            Some(tracker) => tracker.state(node.addr()),
            // The detector keeps only linked replicas; their lag is not measured.
            None => Arc::new(crate::read::State::unmeasured()),
        };
        if let Some(tracker) = self.lag.get() {
            let addrs: Vec<&Arc<str>> = replicas.iter().map(|n| n.addr()).collect();
            tracker.keep_only(&addrs);
        }
        crate::read::Group {
            replicas: replicas
                .iter()
                .map(|node| crate::read::Replica {
                    node: node.clone(),
                    state: state(node),
                    local: false,
                    zone: None,
                })
                .collect(),
            master_local: false,
        }
    }

    /// Where reads went.
    pub fn read_counters(&self) -> &crate::read::Counters {
        &self.read_counts
    }

    /// Asks the detector to look at the roles again soon.
    pub fn look_soon(&self) {
        self.look.notify_one();
    }

    /// Waits (up to `wait`) for a look that begins after this call; true when one finished.
    pub async fn look_now(&self, wait: Duration) -> bool {
        let want = self.looks_begun.load(Ordering::Relaxed) + 1;
        let mut done = self.looks_done.subscribe();
        self.look_soon();
        tokio::time::timeout(wait, done.wait_for(|&n| n >= want))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Sends once more a request the master refused with READONLY (it was demoted, so the request did
    /// not run): to the master [`answering_master`](Self::answering_master) finds before `deadline`.
    /// The client gets `refused` when no master answers in time.
    pub fn resend_to_new_master(
        self: &Arc<Self>,
        frame: Bytes,
        via: backend::Via,
        pick: usize,
        refused: Bytes,
        deadline: Instant,
        reply: ReplyTo,
    ) {
        let primary = self.clone();
        tokio::spawn(async move {
            match primary.answering_master(deadline).await {
                Some(master) => {
                    master.via(via).send(pick, &frame, false, reply);
                }
                None => reply.send(Ok(refused)),
            }
        });
    }

    /// The master a look finds once that node answers `ROLE` as master, before `deadline`; None
    /// when none does in time. An operator may demote the master before promoting a replica: until
    /// then the looks find no new master, and this waits for the next.
    pub async fn answering_master(self: &Arc<Self>, deadline: Instant) -> Option<Arc<Node>> {
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            self.look_now(wait).await;
            let master = self.roles().master.clone();
            if let Some(master) = master {
                let role = ask(&master, ROLE, wait).await;
                if let Some(Ok(replies::Role::Master)) = role.as_deref().map(replies::role) {
                    return Some(master);
                }
            }
            if Instant::now() + RESEND_LOOK_GAP >= deadline {
                return None;
            }
            tokio::time::sleep(RESEND_LOOK_GAP).await;
        }
    }

    /// Counts every master switch in `counter` too.
    pub fn count_switches_in(&self, counter: prometheus::IntCounter) {
        let _ = self.switch_counter.set(counter);
    }

    /// Whether the sentinels decide who is master (else `ROLE` probes do).
    pub fn uses_sentinel(&self) -> bool {
        self.sentinel
    }

    /// The pause that holds the clients' writes during a failover: sessions look at it as at CLIENT
    /// PAUSE's.
    pub fn hold(&self) -> &Pause {
        &self.hold
    }

    /// Failover holds so far, and the last one.
    pub fn holds(&self) -> (u64, Option<Hold>) {
        let last = *self
            .last_hold
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        (self.holds.load(Ordering::Relaxed), last)
    }

    /// Master switches so far, by how they were noticed.
    pub fn switch_counts(&self) -> [(Via, u64); 4] {
        Via::ALL.map(|via| (via, self.switches[via as usize].load(Ordering::Relaxed)))
    }

    pub fn last_switch(&self) -> Option<Switch> {
        self.last_switch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The node at `addr`, connecting to it if there is none yet.
    fn node(&self, addr: &str) -> Arc<Node> {
        self.nodes.get(addr)
    }

    /// Installs the roles a look found; `master` None keeps the current one. `based_on` is the
    /// generation of the roles the look started from: when another installer (a handover, an
    /// announcement) changed them meanwhile, the look's findings are stale and dropped.
    fn install(&self, based_on: Option<u64>, master: Option<(&str, Via)>, replicas: &[Arc<str>]) {
        // Installers run on different tasks: one at a time, so none undoes another's switch.
        let _one = self
            .installing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let current = self.roles.load();
        if based_on.is_some_and(|g| g != current.generation) {
            return;
        }
        let current_master = current.master.as_ref().map(|n| n.addr().clone());
        let master = match master {
            Some((addr, via)) if current_master.as_deref() != Some(addr) => {
                self.switch(current_master.clone(), addr, via)
            }
            _ => current.master.clone(),
        };
        let master_addr = master.as_ref().map(|n| n.addr().clone());
        let replicas: Vec<Arc<Node>> = replicas
            .iter()
            .filter(|addr| Some(*addr) != master_addr.as_ref())
            .map(|addr| self.node(addr))
            .collect();
        let same = master_addr == current_master
            && replicas.len() == current.replicas.len()
            && replicas
                .iter()
                .zip(&current.replicas)
                .all(|(a, b)| Arc::ptr_eq(a, b));
        if !same {
            if replicas.len() != current.replicas.len() {
                tracing::info!(pool = %self.pool, replicas = replicas.len(), "healthy replicas changed");
            }
            let group = self.group(&replicas);
            self.roles.store(Arc::new(Roles {
                master,
                replicas,
                group,
                generation: crate::route::next_generation(),
            }));
        }
    }

    /// Makes `to` the master: the demoted one's connections are dropped, so nothing more is sent there.
    fn switch(&self, from: Option<Arc<str>>, to: &str, via: Via) -> Option<Arc<Node>> {
        if let Some(old) = &from {
            self.nodes.forget(old);
        }
        let node = self.node(to);
        let Some(old) = from else {
            tracing::info!(pool = %self.pool, master = %to, via = via.label(), "master found");
            return Some(node);
        };
        self.switches[via as usize].fetch_add(1, Ordering::Relaxed);
        if let Some(counter) = self.switch_counter.get() {
            counter.inc();
        }
        tracing::warn!(pool = %self.pool, from = %old, to = %to, via = via.label(), "master switched");
        *self
            .last_switch
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Switch {
            from: old,
            to: node.addr().clone(),
            at: SystemTime::now(),
            via,
        });
        Some(node)
    }
}
