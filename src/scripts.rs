//! Scripts EVAL ran, loaded on every master.
//!
//! Redis caches every script EVAL runs, so that EVALSHA and SCRIPT EXISTS find it afterwards. Behind
//! slotline an EVAL runs on the one master its keys live on (any, without keys), and the script would
//! be cached there alone: EVALSHA of it with keys on another master would get NOSCRIPT, and SCRIPT
//! EXISTS, which asks every master, would answer 0. So the first time a pool sees a script's body,
//! its session also sends `SCRIPT LOAD body` to every master, on the connections the client's own
//! later requests take: its SCRIPT EXISTS or EVALSHA, sent after the EVAL, is queued behind them.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::{Mutex, PoisonError};

/// How many bodies are remembered; past it the set starts over (loading a script again is
/// harmless, and an application has a handful of scripts, not thousands).
const REMEMBERED: usize = 4096;

/// The scripts a pool has loaded on every master, as hashes of their bodies.
#[derive(Default)]
pub struct Spread {
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    /// The masters these were loaded on: a topology's generation (a new master has none of them).
    generation: u64,
    bodies: HashSet<u64>,
}

impl Spread {
    /// Whether `body` is new to the masters of the topology of `generation`; it is noted as loaded
    /// on them from now on.
    pub fn first_sight(&self, generation: u64, body: &[u8]) -> bool {
        let mut hasher = DefaultHasher::new();
        body.hash(&mut hasher);
        let hash = hasher.finish();
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.generation != generation || seen.bodies.len() >= REMEMBERED {
            seen.generation = generation;
            seen.bodies.clear();
        }
        seen.bodies.insert(hash)
    }

    /// SCRIPT FLUSH emptied the masters' caches: every script is new to them again.
    pub fn forget(&self) {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .bodies
            .clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_new_once_per_topology_and_after_a_flush() {
        let spread = Spread::default();
        assert!(spread.first_sight(1, b"return 1"));
        assert!(!spread.first_sight(1, b"return 1"));
        assert!(spread.first_sight(1, b"return 2"));
        assert!(spread.first_sight(2, b"return 1"), "new masters");
        spread.forget();
        assert!(spread.first_sight(2, b"return 1"), "flushed");
        for i in 0..REMEMBERED * 2 {
            spread.first_sight(2, format!("return {i}").as_bytes());
        }
        assert!(spread.seen.lock().unwrap().bodies.len() <= REMEMBERED);
    }
}
