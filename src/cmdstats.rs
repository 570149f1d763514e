//! INFO `commandstats` and `errorstats`, as slotline's clients see them: per command, its calls, their
//! time end to end (redirects included), those slotline refused and those answered with an error;
//! per error code, the error replies clients got. `CONFIG RESETSTAT` clears both.
//!
//! Sessions count commands into their worker's tally ([`Local`]), which adds them here when it is
//! flushed, so that counting a request touches no shared cache line. Errors are rare: they are
//! counted here at once.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use crate::command;

/// Counts of one command.
#[derive(Default, Clone, Copy)]
pub struct Counts {
    calls: u64,
    usec: u64,
    rejected: u64,
    failed: u64,
    /// Listed in [`Local::touched`] since the last flush.
    touched: bool,
}

/// A pool's counts per command (indexed as [`command::all`]).
pub struct CommandStats {
    commands: Box<[Shared]>,
}

#[derive(Default)]
struct Shared {
    calls: AtomicU64,
    usec: AtomicU64,
    rejected: AtomicU64,
    failed: AtomicU64,
}

impl Default for CommandStats {
    fn default() -> Self {
        CommandStats {
            commands: command::all().iter().map(|_| Shared::default()).collect(),
        }
    }
}

impl CommandStats {
    pub fn reset(&self) {
        for c in self.commands.iter() {
            for n in [&c.calls, &c.usec, &c.rejected, &c.failed] {
                n.store(0, Relaxed);
            }
        }
    }

    /// The `# Commandstats` section over every pool's counts, in Redis's format.
    pub fn render<'a>(pools: impl Iterator<Item = &'a CommandStats> + Clone, out: &mut String) {
        out.push_str("# Commandstats\r\n");
        for (i, spec) in command::all().iter().enumerate() {
            let sum = |field: fn(&Shared) -> &AtomicU64| {
                pools
                    .clone()
                    .filter_map(|p| p.commands.get(i))
                    .map(|c| field(c).load(Relaxed))
                    .sum::<u64>()
            };
            let calls = sum(|c| &c.calls);
            let (rejected, failed) = (sum(|c| &c.rejected), sum(|c| &c.failed));
            if calls == 0 && rejected == 0 {
                continue;
            }
            let usec = sum(|c| &c.usec);
            let per_call = if calls > 0 {
                usec as f64 / calls as f64
            } else {
                0.0
            };
            let _ = write!(
                out,
                "cmdstat_{}:calls={calls},usec={usec},usec_per_call={per_call:.2},rejected_calls={rejected},failed_calls={failed}\r\n",
                spec.name
            );
        }
        out.push_str("\r\n");
    }
}

/// A worker's counts per command since its last flush: the commands touched, and only those, are
/// added to the pool's on flush.
pub struct Local {
    commands: Box<[Counts]>,
    touched: Vec<u16>,
}

impl Default for Local {
    fn default() -> Self {
        Local {
            commands: vec![Counts::default(); command::all().len()].into_boxed_slice(),
            touched: Vec::new(),
        }
    }
}

/// No command (a request slotline answers as a whole, such as a protocol error). A command's own
/// number is [`command::Spec::number`], its place in [`command::all`].
pub const NONE: u16 = u16::MAX;

impl Local {
    #[inline]
    fn entry(&mut self, number: u16) -> Option<&mut Counts> {
        let counts = self.commands.get_mut(usize::from(number))?;
        if !counts.touched {
            counts.touched = true;
            self.touched.push(number);
        }
        Some(counts)
    }

    /// A call of the command was read.
    #[inline]
    pub fn call(&mut self, number: u16) {
        if let Some(c) = self.entry(number) {
            c.calls += 1;
        }
    }

    /// slotline refused the call just counted (it reached no node): as in Redis, a rejected call
    /// is not one of the calls.
    #[inline]
    pub fn rejected(&mut self, number: u16) {
        if let Some(c) = self.entry(number) {
            c.calls = c.calls.saturating_sub(1);
            c.rejected += 1;
        }
    }

    /// The call was answered after `took` (None: not timed), with an error reply or not.
    #[inline]
    pub fn answered(&mut self, number: u16, took: Option<Duration>, error: bool) {
        if let Some(c) = self.entry(number) {
            c.usec += took.map_or(0, |t| t.as_micros() as u64);
            c.failed += u64::from(error);
        }
    }

    pub fn flush(&mut self, into: &CommandStats) {
        for number in self.touched.drain(..) {
            let (Some(c), Some(to)) = (
                self.commands.get_mut(usize::from(number)),
                into.commands.get(usize::from(number)),
            ) else {
                continue;
            };
            let counts = std::mem::take(c);
            for (n, to) in [
                (counts.calls, &to.calls),
                (counts.usec, &to.usec),
                (counts.rejected, &to.rejected),
                (counts.failed, &to.failed),
            ] {
                if n > 0 {
                    to.fetch_add(n, Relaxed);
                }
            }
        }
    }
}

/// Error replies per error code (the first word of the error), process-wide as Redis's.
#[derive(Default)]
pub struct ErrorStats {
    codes: Mutex<Vec<(String, u64)>>,
}

/// Redis stops adding codes past this many (a client could otherwise invent codes without end), and
/// so does slotline.
const MAX_CODES: usize = 128;

impl ErrorStats {
    /// An error reply (`-CODE message\r\n`, or the message alone) a client got.
    pub fn count(&self, error: &[u8]) {
        let text = error.strip_prefix(b"-").unwrap_or(error);
        let end = text
            .iter()
            .position(|&b| b == b' ' || b == b'\r' || b == b'\n')
            .unwrap_or(text.len());
        let code = String::from_utf8_lossy(&text[..end.min(64)]);
        let mut codes = self
            .codes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, n)) = codes.iter_mut().find(|(c, _)| *c == code) {
            *n += 1;
        } else if codes.len() < MAX_CODES {
            codes.push((code.into_owned(), 1));
        }
    }

    pub fn reset(&self) {
        self.codes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }

    /// The `# Errorstats` section, in Redis's format (codes sorted, as Redis's dict walk is not).
    pub fn render(&self, out: &mut String) {
        let mut codes = self
            .codes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        codes.sort();
        out.push_str("# Errorstats\r\n");
        for (code, count) in codes {
            let _ = write!(out, "errorstat_{code}:count={count}\r\n");
        }
        out.push_str("\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_counted_by_their_first_word() {
        let stats = ErrorStats::default();
        stats.count(b"-ERR unknown command\r\n");
        stats.count(b"-MY_CODE custom msg\r\n");
        stats.count(b"ERR wrong number of arguments");
        stats.count(b"-ERR\r\n");
        let mut out = String::new();
        stats.render(&mut out);
        assert_eq!(
            out,
            "# Errorstats\r\nerrorstat_ERR:count=3\r\nerrorstat_MY_CODE:count=1\r\n\r\n"
        );
        stats.reset();
        out.clear();
        stats.render(&mut out);
        assert_eq!(out, "# Errorstats\r\n\r\n");
    }

    #[test]
    fn only_touched_commands_are_flushed_and_listed() {
        let get = command::lookup(b"get", None).unwrap();
        let set = command::lookup(b"set", None).unwrap();
        let pool = CommandStats::default();
        let mut local = Local::default();
        local.call(get.number);
        local.call(get.number);
        local.answered(get.number, Some(Duration::from_micros(30)), false);
        local.answered(get.number, Some(Duration::from_micros(10)), true);
        local.call(set.number);
        local.rejected(set.number);
        local.call(NONE);
        assert_eq!(local.touched.len(), 2);
        local.flush(&pool);
        assert!(local.touched.is_empty());
        let mut out = String::new();
        CommandStats::render(std::iter::once(&pool), &mut out);
        assert_eq!(
            out,
            "# Commandstats\r\n\
             cmdstat_get:calls=2,usec=40,usec_per_call=20.00,rejected_calls=0,failed_calls=1\r\n\
             cmdstat_set:calls=0,usec=0,usec_per_call=0.00,rejected_calls=1,failed_calls=0\r\n\r\n"
        );
        pool.reset();
        out.clear();
        CommandStats::render(std::iter::once(&pool), &mut out);
        assert_eq!(out, "# Commandstats\r\n\r\n");
    }
}
