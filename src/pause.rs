//! CLIENT PAUSE and UNPAUSE: slotline holds its own clients' commands, as Redis holds its clients',
//! so a pause works across every node behind it. `WRITE` holds the commands that may write (and
//! EXEC, scripts that may write, PUBLISH ...); `ALL` holds every command. A held command waits in
//! its client's queue, with everything the client sent after it, until the pause ends or is lifted.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::command::{policy, Spec};

/// What a pause holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    Write,
    All,
}

/// A pause: until when, and what it holds; None when there is none.
pub type State = Option<(Instant, Mode)>;

/// The process's pause. Sessions holding a command watch it.
pub struct Pause {
    state: watch::Sender<State>,
    /// Whether a pause was set and not lifted: every command looks here first, with one relaxed
    /// load, and at `state` only when it is set.
    set: AtomicBool,
}

impl Default for Pause {
    fn default() -> Self {
        Pause {
            state: watch::channel(None).0,
            set: AtomicBool::new(false),
        }
    }
}

impl Pause {
    /// Pauses for `timeout`. A pause already on is extended, never shortened, and ALL wins over
    /// WRITE, as in Redis.
    pub fn pause(&self, timeout: Duration, mode: Mode) {
        let until = Instant::now() + timeout;
        self.state.send_modify(|state| {
            *state = Some(match *state {
                Some((end, old)) if end > Instant::now() => (end.max(until), old.max(mode)),
                _ => (until, mode),
            });
        });
        // After the state, and UNPAUSE clears it before: however the two interleave, a pause in
        // `state` is never left with `set` false.
        self.set.store(true, Ordering::Release);
    }

    pub fn unpause(&self) {
        self.set.store(false, Ordering::Release);
        self.state.send_replace(None);
    }

    /// Until when `spec` is held at `now`; None when it may run.
    #[inline]
    pub fn holds(&self, spec: &Spec, now: Instant) -> Option<Instant> {
        if !self.set.load(Ordering::Relaxed) {
            return None;
        }
        let (until, mode) = (*self.state.borrow())?;
        (until > now && (mode == Mode::All || policy::may_write(spec))).then_some(until)
    }

    /// When the pause set last ends, if one is set (it may have ended already).
    pub fn until(&self) -> Option<Instant> {
        if !self.set.load(Ordering::Relaxed) {
            return None;
        }
        (*self.state.borrow()).map(|(until, _)| until)
    }

    /// Whether the pause now holds only what may write (`WRITE`, not `ALL`).
    pub fn writes_only(&self) -> bool {
        matches!(*self.state.borrow(), Some((_, Mode::Write)))
    }

    /// Changes of the pause, to wake a session whose command is held.
    pub fn watch(&self) -> watch::Receiver<State> {
        self.state.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::lookup;

    #[test]
    fn write_pauses_hold_writes_and_all_pauses_hold_everything() {
        let pause = Pause::default();
        let (get, set, eval_ro) = (
            lookup(b"get", None).unwrap(),
            lookup(b"set", None).unwrap(),
            lookup(b"eval_ro", None).unwrap(),
        );
        let now = Instant::now();
        assert_eq!(pause.holds(set, now), None);
        pause.pause(Duration::from_secs(10), Mode::Write);
        assert!(pause.holds(set, now).is_some());
        assert_eq!(pause.holds(get, now), None);
        assert_eq!(pause.holds(eval_ro, now), None);
        pause.pause(Duration::from_secs(1), Mode::All);
        let until = pause.holds(get, now).expect("ALL holds reads");
        assert!(until >= now + Duration::from_secs(9), "never shortened");
        pause.unpause();
        assert_eq!(pause.holds(set, now), None);
    }
}
