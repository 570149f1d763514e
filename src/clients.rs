//! The clients connected through slotline, as `CLIENT LIST`, `CLIENT INFO` and `CLIENT KILL` see them:
//! slotline answers these for its own clients, in Redis's formats, since the nodes only know
//! slotline's shared connections.
//!
//! Each session owns one [`Record`] and keeps it current at the end of each step with a few relaxed
//! stores; other sessions only read it. A kill is a flag the session's read half sees (see
//! `server::lifecycle`), so the session ends as it does when its client leaves.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use bytes::Bytes;

use crate::acl::Active;
use crate::command::{self, Spec};

/// Every connected client, by id (the order `CLIENT LIST` shows them in, as Redis does).
#[derive(Default)]
pub struct Registry {
    clients: Mutex<BTreeMap<u64, Arc<Record>>>,
}

impl Registry {
    pub fn add(&self, record: Record) -> Arc<Record> {
        let record = Arc::new(record);
        self.lock().insert(record.id, record.clone());
        record
    }

    pub fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    pub fn get(&self, id: u64) -> Option<Arc<Record>> {
        self.lock().get(&id).cloned()
    }

    /// Clients idle past their pool's `client_idle_timeout`, as Redis's `timeout` counts them:
    /// subscribers and clients blocked in a command are never idle.
    pub fn idle(&self) -> Vec<u64> {
        let now = CLOCK_MS.load(Ordering::Relaxed);
        self.lock()
            .values()
            .filter(|r| {
                r.idle_timeout_ms > 0
                    && now.saturating_sub(r.active_ms.load(Ordering::Relaxed))
                        > u64::from(r.idle_timeout_ms)
                    && r.blocked.load(Ordering::Relaxed) == 0
                    && r.subscriptions
                        .iter()
                        .all(|n| n.load(Ordering::Relaxed) == 0)
            })
            .map(|r| r.id)
            .collect()
    }

    /// The clients now connected, oldest first.
    pub fn all(&self) -> Vec<Arc<Record>> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Record>>> {
        self.clients.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// No command yet.
const NO_COMMAND: u32 = u32::MAX;

/// Milliseconds since the process started, advanced by [`tick`]: what a command's time is recorded
/// with, so the data path reads no clock for CLIENT LIST (whose `idle` is in seconds anyway).
static CLOCK_MS: AtomicU64 = AtomicU64::new(0);

/// How often the clock is advanced.
pub const TICK: std::time::Duration = std::time::Duration::from_millis(100);

/// Advances the coarse clock to `since_start`; called every [`TICK`] by the server.
pub fn tick(since_start: std::time::Duration) {
    CLOCK_MS.store(since_start.as_millis() as u64, Ordering::Relaxed);
}

/// What `CLIENT LIST` shows of one client.
pub struct Record {
    pub id: u64,
    pub addr: String,
    /// The listener's address (`laddr`).
    pub laddr: String,
    pub fd: i32,
    created: Instant,
    /// The coarse clock at the client's last command (at its connection before one).
    active_ms: AtomicU64,
    /// The last command, as its index in [`command::all`].
    last_command: AtomicU32,
    name: Mutex<Option<Bytes>>,
    /// `lib-name` and `lib-ver` (CLIENT SETINFO). Boxed: an idle client that set none is 56 bytes
    /// smaller (README budgets 3 KiB per idle client).
    lib: Mutex<Option<Box<Lib>>>,
    resp: AtomicU8,
    /// Channels, patterns and shard channels subscribed.
    subscriptions: [AtomicU32; 3],
    /// Commands queued in MULTI, or -1 outside one.
    multi: AtomicI32,
    /// Blocked in a command that waits (`b` in the flags).
    blocked: AtomicU8,
    /// Frames other sessions left for this client (tracking invalidations), taken by its own
    /// session (see [`crate::tracking`]).
    // Boxed: most clients never get one, and an idle client's record stays 16 bytes smaller.
    #[allow(clippy::box_collection)]
    pushes: Mutex<Option<Box<Vec<Bytes>>>>,
    has_pushes: AtomicBool,
    /// CLIENT UNBLOCK asked for its blocked command to end: 0 no, else an [`Unblock`].
    unblock: AtomicU8,
    /// Its pool's `client_idle_timeout` (0: never; at most a day, so it fits).
    idle_timeout_ms: u32,
    /// The user it is logged in as (see [`crate::acl`]): counted in that user's clients while it
    /// is. None before it logs in, shown as `default` as Redis shows it.
    user: Mutex<Option<Arc<Active>>>,
}

impl Drop for Record {
    fn drop(&mut self) {
        self.set_user(None);
    }
}

/// A client library's name and version, as CLIENT SETINFO gives them.
type Lib = (Option<Bytes>, Option<Bytes>);

/// How CLIENT UNBLOCK ends a blocked command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unblock {
    /// As if its timeout had come (the default).
    Timeout = 1,
    /// With `-UNBLOCKED`.
    Error = 2,
}

/// A client's state as its session last published it.
#[derive(Clone, Copy, Default)]
pub struct State {
    pub resp: u8,
    pub subscriptions: [u32; 3],
    pub multi: Option<u32>,
    pub blocked: bool,
}

impl Record {
    pub fn new(id: u64, addr: String, laddr: String, fd: i32) -> Record {
        Record {
            id,
            addr,
            laddr,
            fd,
            created: Instant::now(),
            active_ms: AtomicU64::new(CLOCK_MS.load(Ordering::Relaxed)),
            last_command: AtomicU32::new(NO_COMMAND),
            name: Mutex::new(None),
            lib: Mutex::new(None),
            resp: AtomicU8::new(2),
            subscriptions: Default::default(),
            multi: AtomicI32::new(-1),
            blocked: AtomicU8::new(0),
            pushes: Mutex::new(None),
            has_pushes: AtomicBool::new(false),
            unblock: AtomicU8::new(0),
            user: Mutex::new(None),
            idle_timeout_ms: 0,
        }
    }

    /// Closed by [`Registry::idle`]'s sweep once idle for longer than `ms` (0: never).
    pub fn idle_timeout(mut self, ms: u64) -> Record {
        self.idle_timeout_ms = u32::try_from(ms).unwrap_or(u32::MAX);
        self
    }

    /// The client is now `user` (None: logged out).
    pub fn set_user(&self, user: Option<Arc<Active>>) {
        if let Some(new) = &user {
            new.stats.clients.fetch_add(1, Ordering::Relaxed);
        }
        let old = std::mem::replace(
            &mut *self.user.lock().unwrap_or_else(PoisonError::into_inner),
            user,
        );
        if let Some(old) = old {
            old.stats.clients.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The user it is logged in as.
    pub fn user(&self) -> Option<Arc<Active>> {
        self.user
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Its user's name, `default` before it logs in (as CLIENT LIST shows it).
    pub fn user_name(&self) -> String {
        match &*self.user.lock().unwrap_or_else(PoisonError::into_inner) {
            Some(user) => user.rules.name.to_string(),
            None => "default".into(),
        }
    }

    /// The client ran `spec` just now.
    pub fn ran(&self, spec: &Spec) {
        let now = CLOCK_MS.load(Ordering::Relaxed);
        self.active_ms.store(now, Ordering::Relaxed);
        let index = command::index_of(spec).unwrap_or(NO_COMMAND);
        self.last_command.store(index, Ordering::Relaxed);
    }

    /// The RESP version it speaks.
    pub fn resp(&self) -> u8 {
        self.resp.load(Ordering::Relaxed)
    }

    /// Leaves `frame` for the client's session to write (see [`Record::take_pushes`]).
    pub fn push(&self, frame: Bytes) {
        self.pushes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert_with(Box::default)
            .push(frame);
        self.has_pushes.store(true, Ordering::Release);
    }

    /// Whether frames wait for the session: one load, cheap enough for every step.
    pub fn has_pushes(&self) -> bool {
        self.has_pushes.load(Ordering::Acquire)
    }

    /// CLIENT UNBLOCK: asks the client's session to end its blocked command; false when the
    /// client is not blocked (Redis's 0).
    pub fn unblock(&self, how: Unblock) -> bool {
        if self.blocked.load(Ordering::Relaxed) == 0 {
            return false;
        }
        self.unblock.store(how as u8, Ordering::Relaxed);
        self.has_pushes.store(true, Ordering::Release);
        true
    }

    /// What CLIENT UNBLOCK asked, once.
    pub fn take_unblock(&self) -> Option<Unblock> {
        match self.unblock.swap(0, Ordering::Relaxed) {
            1 => Some(Unblock::Timeout),
            2 => Some(Unblock::Error),
            _ => None,
        }
    }

    pub fn take_pushes(&self) -> Vec<Bytes> {
        let mut pushes = self.pushes.lock().unwrap_or_else(PoisonError::into_inner);
        self.has_pushes.store(false, Ordering::Release);
        pushes.take().map(|p| *p).unwrap_or_default()
    }

    pub fn publish(&self, state: State) {
        self.resp.store(state.resp, Ordering::Relaxed);
        for (slot, n) in self.subscriptions.iter().zip(state.subscriptions) {
            slot.store(n, Ordering::Relaxed);
        }
        let multi = state.multi.map_or(-1, |n| n.min(i32::MAX as u32) as i32);
        self.multi.store(multi, Ordering::Relaxed);
        self.blocked
            .store(u8::from(state.blocked), Ordering::Relaxed);
    }

    pub fn name(&self) -> Option<Bytes> {
        self.name
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn set_name(&self, name: Option<Bytes>) {
        *self.name.lock().unwrap_or_else(PoisonError::into_inner) = name;
    }

    /// Sets `lib-name` (`which` false) or `lib-ver` (true).
    pub fn set_lib(&self, version: bool, value: Bytes) {
        let mut lib = self.lib.lock().unwrap_or_else(PoisonError::into_inner);
        let lib = lib.get_or_insert_with(Box::default);
        match version {
            false => lib.0 = Some(value),
            true => lib.1 = Some(value),
        }
    }

    /// Whether it is a subscriber (`TYPE pubsub`).
    pub fn is_subscriber(&self) -> bool {
        self.subscriptions
            .iter()
            .any(|s| s.load(Ordering::Relaxed) > 0)
    }

    /// Seconds since it connected.
    pub fn age(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.created).as_secs()
    }

    /// Its `CLIENT LIST` line, newline included, in Redis 7.2's field order. `qbuf` is what its
    /// query buffer holds: the asking client's own command while it runs, as Redis shows it.
    pub fn line(&self, now: Instant, qbuf: usize) -> String {
        let since = now.saturating_duration_since(self.created);
        let idle_ms = CLOCK_MS
            .load(Ordering::Relaxed)
            .saturating_sub(self.active_ms.load(Ordering::Relaxed));
        let [sub, psub, ssub] = self
            .subscriptions
            .each_ref()
            .map(|s| s.load(Ordering::Relaxed));
        let multi = self.multi.load(Ordering::Relaxed);
        let mut flags = String::new();
        if sub + psub + ssub > 0 {
            flags.push('P');
        }
        if multi >= 0 {
            flags.push('x');
        }
        if self.blocked.load(Ordering::Relaxed) != 0 {
            flags.push('b');
        }
        if flags.is_empty() {
            flags.push('N');
        }
        let cmd = match self.last_command.load(Ordering::Relaxed) {
            NO_COMMAND => "NULL",
            i => command::all().get(i as usize).map_or("NULL", |s| s.name),
        };
        let text = |b: Option<Bytes>| {
            b.map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        let (lib_name, lib_ver) = self
            .lib
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_deref()
            .cloned()
            .unwrap_or_default();
        let mut line = String::with_capacity(320);
        // Other buffers are the session's and are not tracked per client: shown as Redis shows an
        // idle client's.
        let _ = writeln!(
            line,
            "id={} addr={} laddr={} fd={} name={} age={} idle={} flags={flags} db=0 sub={sub} psub={psub} \
             ssub={ssub} multi={multi} qbuf={qbuf} qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 \
             omem=0 tot-mem=0 events=r cmd={cmd} user={} redir=-1 resp={} lib-name={} lib-ver={}",
            self.id,
            self.addr,
            self.laddr,
            self.fd,
            text(self.name()),
            since.as_secs(),
            idle_ms / 1000,
            self.user_name(),
            self.resp.load(Ordering::Relaxed),
            text(lib_name),
            text(lib_ver),
        );
        line
    }
}

/// Which clients `CLIENT KILL` (new syntax) and `CLIENT LIST` filters name.
#[derive(Default, Debug)]
pub struct Filter {
    pub ids: Vec<u64>,
    pub addr: Option<String>,
    pub laddr: Option<String>,
    /// `normal` or `pubsub` (slotline's clients are never masters or replicas).
    pub kind: Option<Kind>,
    pub user: Option<String>,
    pub max_age: Option<u64>,
    /// Whether the client asking is left out (`SKIPME`, yes by default).
    pub skip_me: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Normal,
    PubSub,
    /// `master`, `replica`/`slave`: none of slotline's clients.
    Other,
}

impl Kind {
    pub fn parse(word: &[u8]) -> Option<Kind> {
        match word.to_ascii_lowercase().as_slice() {
            b"normal" => Some(Kind::Normal),
            b"pubsub" => Some(Kind::PubSub),
            b"master" | b"replica" | b"slave" => Some(Kind::Other),
            _ => None,
        }
    }
}

impl Filter {
    /// Parses `CLIENT KILL`'s filter words (after `KILL`) as Redis does; Err carries Redis's error.
    pub fn parse_kill(args: &[&[u8]]) -> Result<Filter, &'static str> {
        let mut filter = Filter {
            skip_me: true,
            ..Filter::default()
        };
        if args.is_empty() || !args.len().is_multiple_of(2) {
            return Err("ERR syntax error");
        }
        for pair in args.chunks(2) {
            let value = String::from_utf8_lossy(pair[1]).into_owned();
            match pair[0].to_ascii_lowercase().as_slice() {
                b"id" => match value.parse::<u64>() {
                    Ok(id) if id > 0 => filter.ids.push(id),
                    _ => return Err("ERR client-id should be greater than 0"),
                },
                b"type" => match Kind::parse(pair[1]) {
                    Some(kind) => filter.kind = Some(kind),
                    None => return Err("ERR Unknown client type"),
                },
                b"addr" => filter.addr = Some(value),
                b"laddr" => filter.laddr = Some(value),
                b"user" => filter.user = Some(value),
                b"skipme" => match value.to_ascii_lowercase().as_str() {
                    "yes" => filter.skip_me = true,
                    "no" => filter.skip_me = false,
                    _ => return Err("ERR syntax error"),
                },
                b"maxage" => match value.parse::<u64>() {
                    Ok(age) => filter.max_age = Some(age),
                    Err(_) => return Err("ERR syntax error"),
                },
                _ => return Err("ERR syntax error"),
            }
        }
        Ok(filter)
    }

    pub fn matches(&self, record: &Record, me: u64, now: Instant) -> bool {
        (!self.skip_me || record.id != me)
            && (self.ids.is_empty() || self.ids.contains(&record.id))
            && self.addr.as_ref().is_none_or(|a| *a == record.addr)
            && self.laddr.as_ref().is_none_or(|a| *a == record.laddr)
            && self.user.as_ref().is_none_or(|u| *u == record.user_name())
            && self.max_age.is_none_or(|age| record.age(now) >= age)
            && self.kind.is_none_or(|kind| match kind {
                Kind::Normal => !record.is_subscriber(),
                Kind::PubSub => record.is_subscriber(),
                Kind::Other => false,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_carry_redis_fields_in_order() {
        let record = Record::new(7, "127.0.0.1:5000".into(), "127.0.0.1:6380".into(), 12);
        record.set_name(Some(Bytes::from_static(b"worker")));
        record.publish(State {
            resp: 3,
            subscriptions: [2, 0, 0],
            multi: None,
            blocked: false,
        });
        let line = record.line(Instant::now(), 0);
        assert!(line.starts_with("id=7 addr=127.0.0.1:5000 laddr=127.0.0.1:6380 fd=12 name=worker age=0 idle=0 flags=P db=0 sub=2 psub=0"), "{line}");
        assert!(
            line.ends_with("cmd=NULL user=default redir=-1 resp=3 lib-name= lib-ver=\n"),
            "{line}"
        );
    }

    #[test]
    fn kill_filters_parse_as_redis_does() {
        let f = Filter::parse_kill(&[b"ID", b"5", b"SKIPME", b"no"]).unwrap();
        assert_eq!((f.ids.as_slice(), f.skip_me), (&[5u64][..], false));
        assert_eq!(
            Filter::parse_kill(&[b"ID"]).unwrap_err(),
            "ERR syntax error"
        );
        assert_eq!(
            Filter::parse_kill(&[b"ID", b"x"]).unwrap_err(),
            "ERR client-id should be greater than 0"
        );
        assert_eq!(
            Filter::parse_kill(&[b"TYPE", b"x"]).unwrap_err(),
            "ERR Unknown client type"
        );
        let record = Record::new(3, "a:1".into(), "b:2".into(), 1);
        let addr = Filter::parse_kill(&[b"ADDR", b"a:1"]).unwrap();
        assert!(addr.matches(&record, 9, Instant::now()));
        assert!(
            !addr.matches(&record, 3, Instant::now()),
            "SKIPME yes by default"
        );
    }
}
