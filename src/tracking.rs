//! CLIENT TRACKING (client-side caching) through slotline.
//!
//! A client's reads travel on connections it shares with other clients, so the nodes cannot track
//! them for it. slotline tracks for its clients instead, and learns of every change from the nodes
//! themselves: while any client of a pool tracks, one connection per master follows the master in
//! RESP3 with `CLIENT TRACKING ON BCAST` (every key it changes, by any client, script, expiry,
//! eviction or flush). For each changed key slotline tells the clients that read it (default mode)
//! or whose prefixes it matches (BCAST), in their protocol: a RESP3 push, or with `REDIRECT` to
//! another client of slotline a push or (RESP2) a `__redis__:invalidate` message.
//!
//! Keys are remembered when a tracking client's read is sent, so an invalidation that comes while
//! the read is under way is not missed; the session delivers it after the replies of the requests
//! it had sent (see `Ctx::take_pushes`), so it never overtakes the reply it invalidates, and
//! before the replies of requests read after it came (their reads ran after the change).
//!
//! A write's invalidations travel on the feed, not with the write's reply, so a client could see
//! its write acknowledged while the invalidation is still on its way, and a reader that then
//! reads the key again would get the invalidation after the fresh value (and throw that away).
//! So while anyone tracks, a write's reply waits until its master's feed has answered a `PING`
//! sent after the reply came ([`Tracking::barrier`]): Redis answers it after the invalidations it
//! sent before, so by then they are with their readers' sessions, as Redis has them in its
//! clients' buffers before the writer's reply leaves. One round trip per write, only while the
//! feeds run (some client of the pool tracks, or did a second ago). A lost or slow feed lets the
//! reply go as it is.
//!
//! A lost feed connection tells every tracking client to flush (a `null` invalidation): what
//! changed meanwhile is unknown. `NOLOOP` counts the client's own writes and skips as many invalidations of
//! each key. A script counts each key it names; once it is answered (after its fence, so its own
//! invalidations have come) the counts it did not spend are taken back. NOLOOP rests on telling
//! the client's changes from others' by count, which a master's feed blurs in one case: two
//! changes of one key in the same turn of its event loop (one the client's) come as one
//! invalidation, taken for the client's; and for a script, another client's change of a key the
//! script named but did not write, within the script's round trip, is taken for the script's.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use crate::backend::{Gate, MasterFeeds, ReplyTo, SubEvent};
use crate::command::{self, flags, Request, Spec};
use crate::protocol::{parse_int, Reply};
use crate::server::{Pool, Shared};

/// Keys remembered for default-mode clients at most unless CONFIG SET tracking-table-max-keys
/// says otherwise (Redis's default): past it a key is invalidated for its readers and forgotten.
const MAX_KEYS: usize = 1_000_000;

/// Own writes a NOLOOP client has not yet seen invalidated, at most: past it they are forgotten
/// (the client then gets invalidations of its own writes, which is harmless).
const MAX_OWN_WRITES: usize = 10_000;

/// How long a `null` invalidation (a flush) waits for the other masters' nulls of the same
/// FLUSHALL, so that a client is told once.
const FLUSH_COALESCE: Duration = Duration::from_millis(5);

/// How often the feeds are checked against the pool's masters, and stopped when no client tracks.
const RECHECK: Duration = Duration::from_secs(1);

/// A client's CLIENT TRACKING options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// The client id invalidations go to; 0: the client itself.
    pub redirect: u64,
    pub bcast: bool,
    pub prefixes: Vec<Bytes>,
    pub optin: bool,
    pub optout: bool,
    pub noloop: bool,
}

/// What CLIENT TRACKINGINFO and GETREDIR show of a tracking client.
#[derive(Debug, Clone, Default)]
pub struct Status {
    pub options: Options,
    pub broken: bool,
}

struct Tracker {
    status: Status,
    own_writes: HashMap<Bytes, u32>,
}

impl Tracker {
    /// Takes back one count of `key` as the client's own write; false when none was left (an
    /// invalidation spent it).
    fn take_back(&mut self, key: &[u8]) -> bool {
        match self.own_writes.get_mut(key) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                self.own_writes.remove(key);
            }
            None => return false,
        }
        true
    }
}

#[derive(Default)]
struct State {
    trackers: HashMap<u64, Tracker>,
    /// Default mode: the clients that read each key since it last changed.
    readers: HashMap<Bytes, HashSet<u64>>,
}

/// A pool's tracking clients and what they read.
pub struct Tracking {
    /// `tracking-table-max-keys`, set through slotline (0: no bound, as in Redis).
    max_keys: std::sync::atomic::AtomicUsize,
    state: Mutex<State>,
    /// Whether the feeds (see [`follow`]) run and every master's is connected: new tracking takes
    /// effect at once; CLIENT TRACKING ON replies wait here until then.
    gate: Gate,
    /// Someone tracks: writes are numbered (see [`Written`]).
    active: std::sync::atomic::AtomicBool,
    written: Mutex<Written>,
    /// Barriers for the feeds' task (see [`Tracking::barrier`]), while it runs.
    barriers: Mutex<Option<mpsc::UnboundedSender<Barrier>>>,
    /// The feeds' task runs (`barriers` is set): read on every write, without the lock.
    feeding: std::sync::atomic::AtomicBool,
}

/// Keys written through slotline lately, numbered in the order their commands named them. A
/// master's BCAST feed sends the keys one command changed together and sorted, where Redis tells
/// a tracking client of each as the command changes it (`MSET b 1 a 1`: b, then a): the keys of a
/// feed's message are told in the order they were written.
#[derive(Default)]
struct Written {
    next: u64,
    at: HashMap<Bytes, u64>,
}

/// A barrier asked of the feeds' task: the master's address, and whom to answer.
type Barrier = (Arc<str>, ReplyTo);

/// Keys [`Written`] remembers at most: past it, it starts again (the order only matters for the
/// keys of one message, written a moment before).
const MAX_WRITTEN: usize = 4096;

/// An invalidation for one client: where it goes and what it says.
struct Delivery {
    to: u64,
    /// The keys; None: everything (a flush).
    keys: Option<Vec<Bytes>>,
    /// The tracking client, told `tracking-redir-broken` when `to` is gone.
    from: u64,
    /// BCAST: the prefix the keys matched (Redis sends one message per prefix).
    prefix: Option<Bytes>,
}

impl Default for Tracking {
    fn default() -> Tracking {
        Tracking {
            max_keys: std::sync::atomic::AtomicUsize::new(MAX_KEYS),
            state: Mutex::default(),
            gate: Gate::default(),
            active: Default::default(),
            written: Mutex::default(),
            barriers: Mutex::default(),
            feeding: Default::default(),
        }
    }
}

impl Tracking {
    /// CONFIG SET tracking-table-max-keys through slotline: keys past the new bound are
    /// invalidated for their readers and forgotten now.
    pub fn set_max_keys(&self, max: usize, shared: &Shared) {
        self.max_keys
            .store(max, std::sync::atomic::Ordering::Relaxed);
        let evicted: Vec<Bytes> = {
            let state = self.lock();
            let over = state.readers.len().saturating_sub(max);
            match max {
                0 => Vec::new(),
                _ => state.readers.keys().take(over).cloned().collect(),
            }
        };
        if !evicted.is_empty() {
            self.evict(&evicted, shared);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// CLIENT TRACKING ON: starts (or extends) tracking for client `id`. `reply` is answered +OK
    /// once every master's changes are followed; None when they already are (answer at once).
    pub fn enable(
        pool: &Arc<Pool>,
        id: u64,
        options: Options,
        reply: impl FnOnce() -> ReplyTo,
    ) -> bool {
        let mut state = pool.tracking.lock();
        let tracker = state.trackers.entry(id).or_insert_with(|| Tracker {
            status: Status::default(),
            own_writes: HashMap::new(),
        });
        let status = &mut tracker.status;
        status.options.redirect = options.redirect;
        status.options.bcast |= options.bcast;
        status.options.optin |= options.optin;
        status.options.optout |= options.optout;
        status.options.noloop |= options.noloop;
        status.options.prefixes.extend(options.prefixes);
        if status.options.bcast && status.options.prefixes.is_empty() {
            status.options.prefixes.push(Bytes::new());
        }
        status.broken = false;
        drop(state);
        pool.tracking
            .active
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let start = || {
            tokio::spawn(follow(pool.clone()));
        };
        pool.tracking.gate.enter(start, reply)
    }

    /// CLIENT TRACKING OFF, RESET, or the client left.
    pub fn disable(&self, id: u64) {
        let mut state = self.lock();
        state.trackers.remove(&id);
        if state.trackers.is_empty() {
            self.active
                .store(false, std::sync::atomic::Ordering::Relaxed);
            let mut written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
            *written = Written::default();
        }
    }

    /// Whether anyone tracks (then [`Tracking::wrote_in_order`] wants the pool's writes).
    #[inline]
    pub fn active(&self) -> bool {
        self.active.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the feeds run (someone tracks, or did a moment ago): writes are fenced (see
    /// [`Tracking::barrier`]) for as long, so that a change made while nobody tracked is not told,
    /// late, to a client that starts tracking just after it was acknowledged. (Before the feeds
    /// run, a barrier would be answered at once, and CLIENT TRACKING ON waits for them.)
    #[inline]
    pub fn fencing(&self) -> bool {
        self.feeding.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Answers `reply` once every invalidation `master` sent before now has been told to the
    /// clients: a write's reply waits for it, so that whoever sees the write acknowledged finds its
    /// invalidations already on their way to the readers, as Redis writes them before the reply
    /// leaves. At once when no feed runs.
    pub fn barrier(&self, master: Arc<str>, reply: ReplyTo) {
        let barriers = self.barriers.lock().unwrap_or_else(PoisonError::into_inner);
        let refused = match barriers.as_ref() {
            Some(tx) => tx.send((master, reply)).err().map(|e| e.0 .1),
            None => Some(reply),
        };
        drop(barriers);
        if let Some(reply) = refused {
            reply.send(Ok(Bytes::from_static(crate::backend::BARRIER_PASSED)));
        }
    }

    /// A client of the pool wrote `keys`, in this order.
    pub fn wrote_in_order<'a>(&self, keys: impl Iterator<Item = &'a [u8]>) {
        let mut written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
        if written.at.len() >= MAX_WRITTEN {
            written.at.clear();
        }
        for key in keys {
            written.next += 1;
            let n = written.next;
            written.at.insert(Bytes::copy_from_slice(key), n);
        }
    }

    /// The keys of one feed message in the order they were written (keys slotline did not see
    /// written stay as the feed sent them, after the others).
    fn in_written_order(&self, keys: &mut [Bytes]) {
        if keys.len() < 2 {
            return;
        }
        let written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
        keys.sort_by_key(|k| written.at.get(k).copied().unwrap_or(u64::MAX));
    }

    pub fn status(&self, id: u64) -> Option<Status> {
        self.lock().trackers.get(&id).map(|t| t.status.clone())
    }

    /// Clients tracking now (INFO's `tracking_clients`).
    pub fn clients(&self) -> usize {
        self.lock().trackers.len()
    }

    /// INFO's `tracking_total_keys`, `tracking_total_items` and `tracking_total_prefixes`, of
    /// slotline's own table: keys read by default-mode clients, (key, client) pairs, and the
    /// distinct BCAST prefixes (the empty one included).
    pub fn totals(&self) -> (usize, usize, usize) {
        let state = self.lock();
        let items = state.readers.values().map(HashSet::len).sum();
        let mut prefixes: HashSet<&[u8]> = HashSet::new();
        for tracker in state.trackers.values() {
            let options = &tracker.status.options;
            if options.bcast {
                match options.prefixes.is_empty() {
                    true => {
                        prefixes.insert(b"");
                    }
                    false => prefixes.extend(options.prefixes.iter().map(|p| &p[..])),
                }
            }
        }
        (state.readers.len(), items, prefixes.len())
    }

    /// Client `id` sent a read of `keys`: it is told when they change.
    pub fn read<'a>(&self, id: u64, keys: impl Iterator<Item = &'a [u8]>, shared: &Shared) {
        let mut evicted = Vec::new();
        {
            let mut state = self.lock();
            for key in keys {
                let max = self.max_keys.load(std::sync::atomic::Ordering::Relaxed);
                if max > 0 && !state.readers.contains_key(key) && state.readers.len() >= max {
                    if let Some(old) = state.readers.keys().next().cloned() {
                        evicted.push(old);
                    }
                }
                state
                    .readers
                    .entry(Bytes::copy_from_slice(key))
                    .or_default()
                    .insert(id);
            }
        }
        // Redis invalidates keys it stops tracking, so that nobody keeps them cached unseen.
        if !evicted.is_empty() {
            self.evict(&evicted, shared);
        }
    }

    /// Client `id` (NOLOOP) sent a write of `keys`: the invalidations they cause are not its.
    pub fn wrote<'a>(&self, id: u64, keys: impl Iterator<Item = &'a [u8]>) {
        let mut state = self.lock();
        let Some(tracker) = state.trackers.get_mut(&id) else {
            return;
        };
        if tracker.own_writes.len() > MAX_OWN_WRITES {
            tracker.own_writes.clear();
        }
        for key in keys {
            *tracker
                .own_writes
                .entry(Bytes::copy_from_slice(key))
                .or_default() += 1;
        }
    }

    /// Client `id`'s (NOLOOP) script naming `keys` was answered, after its fence: the
    /// invalidations of what it wrote have come, each spending a count of [`wrote`](Self::wrote)'s;
    /// the counts left are of keys it did not write, and are taken back (unlike
    /// [`unwrote`](Self::unwrote), a spent count is taken for the script's own change).
    pub fn script_answered<'a>(&self, id: u64, keys: impl Iterator<Item = &'a [u8]>) {
        let mut state = self.lock();
        let Some(tracker) = state.trackers.get_mut(&id) else {
            return;
        };
        for key in keys {
            tracker.take_back(key);
        }
    }

    /// Client `id`'s (NOLOOP) write of `keys` changed nothing, or may not have changed all of
    /// them (its reply says so, see [`changed_nothing`]): `wrote`'s counts are taken back, so
    /// that they do not swallow another client's change later. A count already spent was spent
    /// on another client's change, whose invalidation the client is told now. (Where the write
    /// did change a key after all, that is an invalidation of its own write: harmless; a swallowed
    /// one would leave its cache stale.)
    pub fn unwrote<'a>(&self, id: u64, keys: impl Iterator<Item = &'a [u8]>, shared: &Shared) {
        let delivery = {
            let mut state = self.lock();
            let Some(tracker) = state.trackers.get_mut(&id) else {
                return;
            };
            let mut spent = Vec::new();
            for key in keys {
                if !tracker.take_back(key) {
                    spent.push(Bytes::copy_from_slice(key));
                }
            }
            let options = &tracker.status.options;
            if options.bcast && !options.prefixes.is_empty() {
                spent.retain(|key| options.prefixes.iter().any(|p| key.starts_with(p)));
            }
            if spent.is_empty() {
                return;
            }
            Delivery {
                to: target(id, &tracker.status),
                keys: Some(spent),
                from: id,
                prefix: None,
            }
        };
        self.tell(vec![delivery], shared);
    }

    /// Who is told what of a change of `keys` (None: every key, a flush), or of their eviction
    /// from the table (`evicted`).
    fn deliveries(&self, keys: Option<&[Bytes]>, evicted: bool) -> Vec<Delivery> {
        let mut state = self.lock();
        let state = &mut *state;
        let mut out: Vec<Delivery> = Vec::new();
        let Some(keys) = keys else {
            state.readers.clear();
            return state
                .trackers
                .iter()
                .map(|(&id, t)| Delivery {
                    to: target(id, &t.status),
                    keys: None,
                    from: id,
                    prefix: None,
                })
                .collect();
        };
        for key in keys {
            let readers = state.readers.remove(key).unwrap_or_default();
            let mut still = Vec::new();
            for (&id, tracker) in state.trackers.iter_mut() {
                if evicted {
                    // Forgotten, not changed: only its readers are told, NOLOOP or not.
                    if readers.contains(&id) {
                        out.push(Delivery {
                            to: target(id, &tracker.status),
                            keys: Some(vec![key.clone()]),
                            from: id,
                            prefix: None,
                        });
                    }
                    continue;
                }
                // NOLOOP: the change is the client's own write, told or not. It may come after
                // the client read the key again: that read stays tracked.
                if let Some(n) = tracker.own_writes.get_mut(key) {
                    *n -= 1;
                    if *n == 0 {
                        tracker.own_writes.remove(key);
                    }
                    if readers.contains(&id) {
                        still.push(id);
                    }
                    continue;
                }
                let options = &tracker.status.options;
                let prefix = match options.bcast {
                    true => match options.prefixes.iter().find(|p| key.starts_with(p)) {
                        Some(prefix) => Some(prefix.clone()),
                        None => continue,
                    },
                    false if readers.contains(&id) => None,
                    false => continue,
                };
                let to = target(id, &tracker.status);
                let same =
                    |d: &&mut Delivery| d.from == id && prefix.is_some() && d.prefix == prefix;
                match out.iter_mut().find(same) {
                    // BCAST: one message per prefix with its keys of the change, as Redis sends.
                    Some(d) => d.keys.get_or_insert_with(Vec::new).push(key.clone()),
                    None => out.push(Delivery {
                        to,
                        keys: Some(vec![key.clone()]),
                        from: id,
                        prefix,
                    }),
                }
            }
            if !still.is_empty() {
                state.readers.entry(key.clone()).or_default().extend(still);
            }
        }
        out
    }

    /// Tells the clients concerned that `keys` changed (None: everything, after a flush or a lost
    /// feed).
    fn invalidate(&self, keys: Option<&[Bytes]>, shared: &Shared) {
        self.tell(self.deliveries(keys, false), shared);
    }

    /// Tells the readers of `keys` that they are no longer tracked (the table's bound).
    fn evict(&self, keys: &[Bytes], shared: &Shared) {
        self.tell(self.deliveries(Some(keys), true), shared);
    }

    fn tell(&self, deliveries: Vec<Delivery>, shared: &Shared) {
        let mut broken = Vec::new();
        for d in deliveries {
            let Some(dest) = shared.clients.get(d.to) else {
                broken.push(d.from);
                continue;
            };
            let proto = shared.clients.get(d.from).map_or(2, |r| r.resp());
            let redirected = d.to != d.from;
            let mut frame = BytesMut::new();
            let mut r = Reply(&mut frame);
            if dest.resp() >= 3 {
                r.push(2);
                r.bulk(b"invalidate");
            } else if redirected && dest.is_subscriber() {
                r.array(3);
                r.bulk(b"message");
                r.bulk(b"__redis__:invalidate");
            } else {
                // RESP2 without a redirect: Redis has no way to tell it either.
                continue;
            }
            match &d.keys {
                Some(keys) => {
                    r.array(keys.len());
                    for key in keys {
                        r.bulk(key);
                    }
                }
                // As Redis: the null of the tracking client's own protocol.
                None if proto >= 3 => frame.extend_from_slice(b"_\r\n"),
                None => frame.extend_from_slice(b"$-1\r\n"),
            }
            dest.push(frame.freeze());
            shared.lifecycle.nudge(d.to);
        }
        if broken.is_empty() {
            return;
        }
        let mut state = self.lock();
        for id in broken {
            let Some(tracker) = state.trackers.get_mut(&id) else {
                continue;
            };
            tracker.status.broken = true;
            let redirect = tracker.status.options.redirect;
            if let Some(record) = shared.clients.get(id).filter(|r| r.resp() >= 3) {
                let mut frame = BytesMut::new();
                let mut r = Reply(&mut frame);
                r.push(2);
                r.bulk(b"tracking-redir-broken");
                r.int(redirect as i64);
                record.push(frame.freeze());
                shared.lifecycle.nudge(id);
            }
        }
    }
}

/// What a tracking client's session decides per command without asking the pool.
#[derive(Debug, Clone, Default)]
pub struct ClientSide {
    pub bcast: bool,
    pub optin: bool,
    pub optout: bool,
    pub noloop: bool,
    /// CLIENT CACHING YES (OPTIN) or NO (OPTOUT) was the last command: it applies to the next.
    pub caching: bool,
}

impl ClientSide {
    pub fn new(options: &Options) -> ClientSide {
        ClientSide {
            bcast: options.bcast,
            optin: options.optin,
            optout: options.optout,
            noloop: options.noloop,
            caching: false,
        }
    }

    /// For a command of this client's: whether its keys are remembered as read (default mode, as
    /// OPTIN/OPTOUT and CLIENT CACHING say), and whether as its own writes (NOLOOP). Redis tracks
    /// a script's declared keys when the script runs a read command: for EVAL, whose script is in
    /// the request, slotline reads the commands it calls (see [`script_may_read`]); for EVALSHA
    /// and FCALL, whose code only the node has, it tracks them always (an extra invalidation costs
    /// a re-read; a missing one, a stale cache).
    pub fn on_command(&mut self, req: Request<'_>, spec: &Spec) -> (bool, bool) {
        // A script's declared keys are tracked when it reads, whatever its own flags (EVAL_RO
        // is read-only, yet a script that only PINGs tracks nothing in Redis).
        let reads = match spec.name {
            "eval" | "eval_ro" => script_may_read(req.arg(1)),
            _ if spec.runs_script() => true,
            _ => spec.has(flags::READONLY),
        };
        let reads =
            reads && !self.bcast && (!self.optin || self.caching) && !(self.optout && self.caching);
        let script_writes = spec.runs_script() && !spec.has(flags::READONLY);
        let writes = self.noloop && (spec.has(flags::WRITE) || script_writes);
        // As Redis: CLIENT CACHING applies to the one command after it.
        if !spec.name.starts_with("client") {
            self.caching = false;
        }
        (reads, writes)
    }
}

/// Whether a write's `reply` says it may have left some of its `keys` unchanged: an error, a
/// null, or a count of changes that is 0 (or, for DEL and UNLINK, short of the keys) from a
/// command whose integer reply counts what it changed. Redis invalidates only keys a command
/// changed, so such a write must not count as the cause of the next invalidation of its keys.
pub fn changed_nothing(spec: &Spec, reply: &[u8], keys: usize) -> bool {
    /// Commands whose integer reply is 0 exactly when they changed nothing.
    const COUNTS_CHANGES: &[&str] = &[
        "del",
        "unlink",
        "setnx",
        "hsetnx",
        "msetnx",
        "renamenx",
        "sadd",
        "srem",
        "smove",
        "hdel",
        "zrem",
        "zremrangebyscore",
        "zremrangebyrank",
        "zremrangebylex",
        "lrem",
        "expire",
        "pexpire",
        "expireat",
        "pexpireat",
        "persist",
        "copy",
        "move",
        "pfadd",
    ];
    match reply.first() {
        Some(b'-' | b'_') => true,
        Some(b'$' | b'*') => reply.starts_with(b"$-1\r\n") || reply.starts_with(b"*-1\r\n"),
        Some(b':') if COUNTS_CHANGES.contains(&spec.name) => {
            let n = reply
                .get(1..reply.len().saturating_sub(2))
                .and_then(parse_int)
                .unwrap_or(0);
            let keys = i64::try_from(keys).unwrap_or(i64::MAX);
            n == 0 || (matches!(spec.name, "del" | "unlink") && n < keys)
        }
        _ => false,
    }
}

/// Whether a Lua script may run a read command. Every `.call` and `.pcall` (`redis.call`,
/// `server.pcall` ...) is looked at: a command named by a string literal is read in the command
/// table; anything else (a name in a variable, `redis.call` passed around, a command slotline does
/// not know) may be a read.
pub fn script_may_read(script: &[u8]) -> bool {
    command::script::calls(script).any(|call| match call.map(|name| command::lookup(name, None)) {
        Some(Ok(spec)) => spec.has(flags::READONLY) || spec.route == command::Route::Container,
        _ => true,
    })
}

/// Where client `id`'s invalidations go.
fn target(id: u64, status: &Status) -> u64 {
    match status.options.redirect {
        0 => id,
        other => other,
    }
}

/// Follows every master of `pool` while any of its clients tracks (see the module's doc).
async fn follow(pool: Arc<Pool>) {
    let settings =
        pool.router
            .own_settings()
            .resp3()
            .then(&[b"CLIENT", b"TRACKING", b"ON", b"BCAST"]);
    // Answered once the handshake, and so the tracking, is in place.
    let mut feeds = MasterFeeds::new(settings, Bytes::from_static(b"*1\r\n$4\r\nPING\r\n"));
    let tracking = &pool.tracking;
    let (barrier_tx, mut barriers) = mpsc::unbounded_channel();
    *tracking
        .barriers
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = Some(barrier_tx);
    tracking
        .feeding
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let mut recheck = tokio::time::interval(RECHECK);
    loop {
        tokio::select! {
            _ = recheck.tick() => {
                if !tracking.gate.keep_running(tracking.clients() > 0) {
                    // Barriers asked from now on are answered at once; those queued, as `feeds`
                    // and `barriers` are dropped.
                    *tracking.barriers.lock().unwrap_or_else(PoisonError::into_inner) = None;
                    tracking
                        .feeding
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                    return;
                }
                feeds.follow(&pool.router.masters());
                tracking.gate.set_ready(feeds.ready());
            }
            Some((master, reply)) = barriers.recv() => feeds.barrier(&master, reply),
            Some(event) = feeds.events.recv() => match event {
                SubEvent::Frame(id, frame) => {
                    feeds.taken(&frame);
                    if frame.starts_with(b"+PONG") {
                        tracking.gate.set_ready(feeds.ponged(id));
                        continue;
                    }
                    match invalidated(&frame) {
                        Some(Some(mut keys)) => {
                            tracking.in_written_order(&mut keys);
                            tracking.invalidate(Some(&keys), &pool.shared)
                        }
                        Some(None) => {
                            // Every master flushes for one FLUSHALL: tell each client once.
                            tokio::time::sleep(FLUSH_COALESCE).await;
                            let mut more = Vec::new();
                            while let Ok(event) = feeds.events.try_recv() {
                                if let SubEvent::Frame(_, f) = &event {
                                    feeds.taken(f);
                                    if matches!(invalidated(f), Some(None)) {
                                        continue;
                                    }
                                }
                                more.push(event);
                            }
                            tracking.invalidate(None, &pool.shared);
                            for event in more {
                                match event {
                                    SubEvent::Frame(id, f) if f.starts_with(b"+PONG") => {
                                        tracking.gate.set_ready(feeds.ponged(id));
                                    }
                                    SubEvent::Frame(_, f) => {
                                        if let Some(Some(keys)) = invalidated(&f) {
                                            tracking.invalidate(Some(&keys), &pool.shared);
                                        }
                                    }
                                    SubEvent::Lost(id, _) => feeds.lost(id),
                                }
                            }
                        }
                        None => {}
                    }
                }
                SubEvent::Lost(id, error) => {
                    tracing::warn!(pool = %pool.name, %error, "a tracking feed was lost: tracking clients are told to flush");
                    feeds.lost(id);
                    tracking.invalidate(None, &pool.shared);
                    tracking.gate.set_ready(false);
                }
            },
        }
    }
}

/// The keys of an `invalidate` push (None inside: a flush); None for any other frame.
fn invalidated(frame: &[u8]) -> Option<Option<Vec<Bytes>>> {
    let rest = frame.strip_prefix(b">2\r\n$10\r\ninvalidate\r\n")?;
    if rest.starts_with(b"_\r\n") || rest.starts_with(b"*-1\r\n") {
        return Some(None);
    }
    let rest = rest.strip_prefix(b"*")?;
    let end = rest.windows(2).position(|w| w == b"\r\n")?;
    let count = usize::try_from(parse_int(&rest[..end])?).ok()?;
    let mut rest = &rest[end + 2..];
    let mut keys = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let body = rest.strip_prefix(b"$")?;
        let end = body.windows(2).position(|w| w == b"\r\n")?;
        let len = usize::try_from(parse_int(&body[..end])?).ok()?;
        let key = body.get(end + 2..end + 2 + len)?;
        keys.push(Bytes::copy_from_slice(key));
        rest = body.get(end + 4 + len..)?;
    }
    Some(Some(keys))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_script_may_read_unless_every_command_it_calls_is_named_and_no_read() {
        for writes_only in [
            "redis.call('set', 'key3{t}', 'bar')",
            "return redis.call('set', KEYS[1], '2')",
            "redis.call('ping')",
            "redis.pcall ( \"DEL\", KEYS[1] ) ; return redis.call('incr', KEYS[2])",
            "return 1",
            "local callers = 1; return callers",
        ] {
            assert!(!script_may_read(writes_only.as_bytes()), "{writes_only}");
        }
        for may_read in [
            "redis.call('get', 'key3{t}')",
            "redis.call('set', KEYS[1], 1) return redis.pcall('MGET', KEYS[1], KEYS[2])",
            "local cmd = ARGV[1]; return redis.call(cmd, KEYS[1])",
            "local c = redis.call; return c('get', KEYS[1])",
            "return server.call('nosuchcommand')",
            "return redis.call('object', 'encoding', KEYS[1])",
            "return redis.call('get",
        ] {
            assert!(script_may_read(may_read.as_bytes()), "{may_read}");
        }
    }

    #[test]
    fn invalidate_pushes_are_read_as_redis_sends_them() {
        assert_eq!(
            invalidated(b">2\r\n$10\r\ninvalidate\r\n*2\r\n$1\r\na\r\n$2\r\nbc\r\n"),
            Some(Some(vec![
                Bytes::from_static(b"a"),
                Bytes::from_static(b"bc")
            ]))
        );
        assert_eq!(invalidated(b">2\r\n$10\r\ninvalidate\r\n_\r\n"), Some(None));
        assert_eq!(invalidated(b"+PONG\r\n"), None);
        assert_eq!(
            invalidated(b">2\r\n$10\r\ninvalidate\r\n*2\r\n$1\r\na\r\n"),
            None
        );
    }

    #[test]
    fn writes_that_changed_nothing_are_known_by_their_replies() {
        let spec = |name: &str| command::lookup(name.as_bytes(), None).expect(name);
        let nothing =
            |name: &str, reply: &[u8], keys: usize| changed_nothing(spec(name), reply, keys);
        assert!(nothing("setnx", b":0\r\n", 1));
        assert!(!nothing("setnx", b":1\r\n", 1));
        assert!(
            nothing("del", b":1\r\n", 2),
            "one of two keys was not there"
        );
        assert!(!nothing("del", b":2\r\n", 2));
        // Any count short of all keys could be one: the filter before the keys are known.
        assert!(nothing("del", b":2\r\n", usize::MAX));
        assert!(nothing("set", b"$-1\r\n", 1), "SET NX refused");
        assert!(nothing("set", b"_\r\n", 1));
        assert!(!nothing("set", b"+OK\r\n", 1));
        assert!(nothing(
            "incr",
            b"-ERR value is not an integer or out of range\r\n",
            1
        ));
        // A 0 that is a value, not a count: INCRBY to 0 changed the key.
        assert!(!nothing("incrby", b":0\r\n", 1));
        assert!(
            !nothing("hset", b":0\r\n", 1),
            "an updated field is a change"
        );
    }

    #[test]
    fn scripts_track_their_keys_when_they_read_and_count_them_as_written_under_noloop() {
        let side = |noloop, args: &[&str]| {
            let mut frame = BytesMut::new();
            let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
            Reply(&mut frame).command(&args);
            let mut parser = crate::protocol::RequestParser::new(Default::default());
            assert!(parser.parse(&frame).unwrap().is_some());
            let req = Request {
                frame: &frame,
                args: parser.args(),
            };
            let spec = command::lookup(args[0], None).unwrap();
            ClientSide::new(&Options {
                noloop,
                ..Options::default()
            })
            .on_command(req, spec)
        };
        // EVAL_RO is flagged read-only, yet a script that only PINGs reads nothing.
        let ping = ["EVAL_RO", "redis.call('ping')", "1", "k"];
        assert_eq!(side(false, &ping), (false, false));
        let get = ["EVAL_RO", "return redis.call('get', KEYS[1])", "1", "k"];
        assert_eq!(side(true, &get), (true, false));
        let set = ["EVAL", "return redis.call('set', KEYS[1], 1)", "1", "k"];
        assert_eq!(side(true, &set), (false, true));
        assert_eq!(side(false, &set), (false, false));
        assert_eq!(side(true, &["EVALSHA", "abc", "1", "k"]), (true, true));
        assert_eq!(side(true, &["SET", "k", "1"]), (false, true));
    }

    #[test]
    fn readers_are_told_once_bcast_by_prefix_and_noloop_skips_own_writes() {
        let tracking = Tracking::default();
        {
            let mut state = tracking.lock();
            let mut add = |id, options| {
                state.trackers.insert(
                    id,
                    Tracker {
                        status: Status {
                            options,
                            broken: false,
                        },
                        own_writes: HashMap::new(),
                    },
                );
            };
            add(1, Options::default());
            add(
                2,
                Options {
                    bcast: true,
                    prefixes: vec![Bytes::from_static(b"user:")],
                    ..Options::default()
                },
            );
            add(
                3,
                Options {
                    noloop: true,
                    redirect: 9,
                    ..Options::default()
                },
            );
        }
        let shared = Shared::new(None, (0, 0));
        tracking.read(1, [&b"user:1"[..], b"other"].into_iter(), &shared);
        tracking.read(3, [&b"user:1"[..]].into_iter(), &shared);
        tracking.wrote(3, [&b"user:1"[..]].into_iter());
        let keys = [Bytes::from_static(b"user:1"), Bytes::from_static(b"user:2")];
        let told: Vec<(u64, u64, usize)> = tracking
            .deliveries(Some(&keys), false)
            .iter()
            .map(|d| (d.from, d.to, d.keys.as_ref().map_or(0, Vec::len)))
            .collect();
        assert!(told.contains(&(1, 1, 1)), "{told:?}");
        assert!(told.contains(&(2, 2, 2)), "one BCAST message: {told:?}");
        assert!(!told.iter().any(|t| t.0 == 3), "NOLOOP: {told:?}");
        // Told once: the next change of user:1 reaches BCAST, and the NOLOOP reader, whose read
        // may have come after its own write (the feed is not ordered with its reads), so it
        // stays tracked.
        let mut again: Vec<u64> = tracking
            .deliveries(Some(&keys[..1]), false)
            .iter()
            .map(|d| d.from)
            .collect();
        again.sort_unstable();
        assert_eq!(again, vec![2, 3]);
    }
}
