//! SLOWLOG: slotline's own log of slow requests, timed as the client saw them (from the moment
//! slotline routed the request to the moment its reply was decided, redirects and retries included),
//! in Redis's entry format. Blocking commands are left out, as Redis leaves out the time a client
//! spends blocked.
//!
//! The data path pays one comparison per reply; only a slow request takes the lock.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

/// Arguments kept per entry, and bytes per argument, as Redis keeps them.
const MAX_ARGS: usize = 32;
const MAX_ARG_BYTES: usize = 128;

/// One slow request.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: u64,
    /// Unix time, seconds.
    pub at: u64,
    pub micros: u64,
    pub args: Vec<Bytes>,
    pub client_addr: String,
    pub client_name: Bytes,
}

pub struct SlowLog {
    /// Requests at least this slow are logged; `u64::MAX` when the log is off (a negative
    /// `slowlog_log_slower_than`).
    slower_than_us: AtomicU64,
    max_len: AtomicUsize,
    next_id: AtomicU64,
    entries: Mutex<VecDeque<Entry>>,
}

impl SlowLog {
    /// `slower_than_us` as Redis's `slowlog-log-slower-than` (negative: off; 0: every request).
    pub fn new(slower_than_us: i64, max_len: usize) -> SlowLog {
        SlowLog {
            slower_than_us: AtomicU64::new(u64::try_from(slower_than_us).unwrap_or(u64::MAX)),
            max_len: AtomicUsize::new(max_len),
            next_id: AtomicU64::new(0),
            entries: Mutex::new(VecDeque::new()),
        }
    }

    /// Whether a request that took `took` belongs in the log.
    #[inline]
    pub fn is_slow(&self, took: Duration) -> bool {
        let slower_than = self.slower_than_us.load(Ordering::Relaxed);
        slower_than != u64::MAX && took.as_micros() as u64 >= slower_than
    }

    /// CONFIG SET slowlog-log-slower-than through slotline (see [`Self::new`]).
    pub fn set_slower_than(&self, us: i64) {
        let us = u64::try_from(us).unwrap_or(u64::MAX);
        self.slower_than_us.store(us, Ordering::Relaxed);
    }

    /// CONFIG SET slowlog-max-len through slotline: older entries past it go.
    pub fn set_max_len(&self, max_len: usize) {
        self.max_len.store(max_len, Ordering::Relaxed);
        self.lock().truncate(max_len);
    }

    /// Logs a request: `args` as the client sent them (cut as Redis cuts them).
    pub fn log<'a>(
        &self,
        args: impl ExactSizeIterator<Item = &'a [u8]>,
        took: Duration,
        client_addr: &str,
        client_name: Option<Bytes>,
    ) {
        let max_len = self.max_len.load(Ordering::Relaxed);
        if max_len == 0 {
            return;
        }
        let argc = args.len();
        let shown = if argc > MAX_ARGS { MAX_ARGS - 1 } else { argc };
        let mut kept: Vec<Bytes> = args
            .take(shown)
            .map(|a| match a.len() > MAX_ARG_BYTES {
                true => {
                    let mut cut = a[..MAX_ARG_BYTES].to_vec();
                    cut.extend_from_slice(
                        format!("... ({} more bytes)", a.len() - MAX_ARG_BYTES).as_bytes(),
                    );
                    Bytes::from(cut)
                }
                false => Bytes::copy_from_slice(a),
            })
            .collect();
        if argc > MAX_ARGS {
            kept.push(Bytes::from(format!(
                "... ({} more arguments)",
                argc - shown
            )));
        }
        let entry = Entry {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs(),
            micros: took.as_micros() as u64,
            args: kept,
            client_addr: client_addr.to_string(),
            client_name: client_name.unwrap_or_default(),
        };
        let mut entries = self.lock();
        entries.push_front(entry);
        entries.truncate(max_len);
    }

    /// The newest `count` entries (all with None), newest first.
    pub fn get(&self, count: Option<usize>) -> Vec<Entry> {
        let entries = self.lock();
        let count = count.unwrap_or(entries.len());
        entries.iter().take(count).cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn reset(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_cut_and_bounded_as_redis_does() {
        let log = SlowLog::new(1000, 2);
        assert!(!log.is_slow(Duration::from_micros(999)));
        assert!(log.is_slow(Duration::from_micros(1000)));
        let long = vec![b'x'; 200];
        let many: Vec<Vec<u8>> = (0..40).map(|i| i.to_string().into_bytes()).collect();
        log.log(
            [&b"SET"[..], b"k", &long].into_iter(),
            Duration::from_millis(2),
            "a:1",
            None,
        );
        log.log(
            many.iter().map(Vec::as_slice),
            Duration::from_millis(3),
            "a:1",
            None,
        );
        log.log(
            [&b"GET"[..]].into_iter(),
            Duration::from_millis(4),
            "a:1",
            None,
        );
        assert_eq!(log.len(), 2, "bounded by slowlog_max_len");
        let entries = log.get(None);
        assert_eq!((entries[0].id, entries[1].id), (2, 1), "newest first");
        assert_eq!(entries[1].args.len(), 32);
        assert_eq!(&entries[1].args[31][..], b"... (9 more arguments)");
        log.reset();
        log.log(
            [&b"SET"[..], b"k", &long].into_iter(),
            Duration::from_millis(2),
            "a:1",
            None,
        );
        let arg = &log.get(Some(1))[0].args[2];
        assert!(arg.ends_with(b"... (72 more bytes)") && arg.len() == 128 + 19);
        assert!(!SlowLog::new(-1, 128).is_slow(Duration::from_secs(100)));
    }
}
