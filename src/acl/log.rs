//! ACL LOG: the latest refusals and failed logins, grouped as Redis groups them (the same reason,
//! context, object and user within a minute is one entry with a count).

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Entries kept (Redis's `acllog-max-len` default).
const MAX_ENTRIES: usize = 128;
/// Repeats within this long are counted in one entry.
const GROUPING: Duration = Duration::from_secs(60);
/// Bytes kept of an entry's object and user name, which a client chooses (a key of megabytes, a
/// made-up user): the log stays bounded whatever clients send.
const MAX_TEXT: usize = 256;

#[derive(Debug, Clone)]
pub struct Entry {
    pub count: u64,
    /// `command`, `key`, `channel` or `auth`.
    pub reason: &'static str,
    /// `toplevel` or `multi` (a command queued in a transaction).
    pub context: &'static str,
    pub object: String,
    pub username: String,
    pub at: Instant,
    /// The client's CLIENT LIST line, at the latest refusal.
    pub client_info: String,
}

#[derive(Default)]
pub struct Log {
    entries: Mutex<VecDeque<Entry>>,
}

impl Log {
    /// Logs a refusal (`reason` command, key or channel) or a failed login (`auth`) of `client`,
    /// as `username`, of `object` (the command, key, channel, or `AUTH`).
    pub fn note(
        &self,
        reason: &'static str,
        context: &'static str,
        object: &[u8],
        username: &[u8],
        client: &crate::clients::Record,
    ) {
        let at = Instant::now();
        self.add(Entry {
            count: 1,
            reason,
            context,
            object: bounded_text(object),
            username: bounded_text(username),
            at,
            client_info: client.line(at, 0),
        });
    }

    /// Adds `entry`, or counts it in a recent one like it (which becomes the newest).
    fn add(&self, entry: Entry) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let like = entries.iter().position(|e| {
            e.reason == entry.reason
                && e.context == entry.context
                && e.object == entry.object
                && e.username == entry.username
                && entry.at.saturating_duration_since(e.at) < GROUPING
        });
        let entry = match like.and_then(|i| entries.remove(i)) {
            Some(mut known) => {
                known.count += 1;
                known.at = entry.at;
                known.client_info = entry.client_info;
                known
            }
            None => entry,
        };
        entries.push_front(entry);
        entries.truncate(MAX_ENTRIES);
    }

    /// The newest `count` entries, newest first.
    pub fn newest(&self, count: usize) -> Vec<Entry> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.iter().take(count).cloned().collect()
    }

    pub fn reset(&self) {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

/// At most [`MAX_TEXT`] bytes of `bytes` as text, `...` marking the cut (the rest is never copied).
fn bounded_text(bytes: &[u8]) -> String {
    match bytes.get(..MAX_TEXT).filter(|_| bytes.len() > MAX_TEXT) {
        Some(kept) => String::from_utf8_lossy(kept).into_owned() + "...",
        None => String::from_utf8_lossy(bytes).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(object: &str, at: Instant) -> Entry {
        Entry {
            count: 1,
            reason: "key",
            context: "toplevel",
            object: object.into(),
            username: "app".into(),
            at,
            client_info: String::new(),
        }
    }

    #[test]
    fn groups_repeats_and_keeps_the_newest() {
        let log = Log::default();
        let now = Instant::now();
        log.add(entry("a", now));
        log.add(entry("b", now));
        log.add(entry("a", now));
        let all = log.newest(10);
        assert_eq!(all.len(), 2);
        assert_eq!((all[0].object.as_str(), all[0].count), ("a", 2));
        log.add(entry("a", now + GROUPING));
        assert_eq!(log.newest(10).len(), 3, "a minute later: a new entry");
        for i in 0..200 {
            log.add(entry(&i.to_string(), now));
        }
        assert_eq!(log.newest(1000).len(), MAX_ENTRIES);
        let client = crate::clients::Record::new(1, "10.0.0.1:5000".into(), String::new(), 0);
        log.note("key", "toplevel", &[b'k'; 1 << 20], b"app", &client);
        assert_eq!(
            log.newest(1)[0].object.len(),
            MAX_TEXT + 3,
            "a huge key is not kept whole"
        );
        log.reset();
        assert!(log.newest(10).is_empty());
    }
}
