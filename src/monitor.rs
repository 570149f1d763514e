//! MONITOR: every command that passes through slotline, streamed to any number of monitoring clients
//! in Redis's line format (`+1339518083.107412 [0 127.0.0.1:60866] "keys" "*"`).
//!
//! Sessions publish a line per command only while a monitor is connected (one relaxed load per
//! command otherwise). What scripts run on the nodes slotline cannot see, so while a monitor is
//! connected each pool also runs MONITOR on every master and passes on the lines of commands
//! scripts issued (`[0 lua]`), as Redis shows them ([`relay_scripts`]). Lines go through a bounded broadcast channel: a monitor that falls
//! [`BACKLOG`] lines behind, or whose client leaves [`OUTPUT_LIMIT`] bytes of them unread, is
//! dropped, never buffered without end and never slowing the clients it watches.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::broadcast;

/// Lines a monitor may fall behind before it is dropped.
pub const BACKLOG: usize = 16 * 1024;
/// Bytes of lines a monitoring client may leave unread before it is dropped.
pub const OUTPUT_LIMIT: usize = 8 << 20;

/// The process's monitors.
#[derive(Default)]
pub struct Monitors {
    watching: AtomicUsize,
    /// The channel, only while anyone monitors: its [`BACKLOG`] slots are 900 KB, more than
    /// everything else slotline holds at start.
    lines: std::sync::Mutex<Option<broadcast::Sender<Bytes>>>,
}

impl Monitors {
    /// Whether any client is monitoring: the only cost of MONITOR to a command when none is.
    pub fn active(&self) -> bool {
        self.watching.load(Ordering::Relaxed) > 0
    }

    /// Streams one command to every monitor: `args` as the client sent them, `from` the client's
    /// address.
    pub fn publish<'a>(&self, from: &str, args: impl Iterator<Item = &'a [u8]>) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut line = String::with_capacity(64);
        let _ = write!(
            line,
            "+{}.{:06} [0 {from}]",
            now.as_secs(),
            now.subsec_micros()
        );
        for arg in args {
            line.push(' ');
            quote(&mut line, arg);
        }
        line.push_str("\r\n");
        self.publish_line(Bytes::from(line));
    }

    /// Streams a line as a node gave it (a script's command, see [`start`]).
    fn publish_line(&self, line: Bytes) {
        if let Some(lines) = &*self.channel() {
            // No receiver left is no error: the last monitor just went.
            let _ = lines.send(line);
        }
    }

    /// A new monitor, counted until it is dropped.
    pub fn watch(self: &Arc<Self>) -> Monitor {
        let mut channel = self.channel();
        self.watching.fetch_add(1, Ordering::Relaxed);
        let lines = channel
            .get_or_insert_with(|| broadcast::channel(BACKLOG).0)
            .subscribe();
        Monitor {
            monitors: self.clone(),
            lines,
        }
    }

    fn channel(&self) -> std::sync::MutexGuard<'_, Option<broadcast::Sender<Bytes>>> {
        // Nothing panics while holding it; a poisoned lock still guards a sound channel.
        self.lines.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One monitoring client's stream of lines.
pub struct Monitor {
    monitors: Arc<Monitors>,
    lines: broadcast::Receiver<Bytes>,
}

/// What a monitor found waiting.
pub enum Next {
    Line(Bytes),
    /// It fell [`BACKLOG`] lines behind: drop it.
    TooSlow,
}

impl Monitor {
    pub async fn next(&mut self) -> Next {
        loop {
            match self.lines.recv().await {
                Ok(line) => return Next::Line(line),
                Err(broadcast::error::RecvError::Lagged(_)) => return Next::TooSlow,
                // The sender lives while anyone monitors: never closed while this one does.
                Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
            }
        }
    }

    /// A line already waiting, without waiting.
    pub fn try_next(&mut self) -> Option<Next> {
        match self.lines.try_recv() {
            Ok(line) => Some(Next::Line(line)),
            Err(broadcast::error::TryRecvError::Lagged(_)) => Some(Next::TooSlow),
            Err(_) => None,
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        // Counted and uncounted under the lock, so the last monitor to go frees the channel and
        // a new one never subscribes to a channel about to be freed.
        let mut channel = self.monitors.channel();
        if self.monitors.watching.fetch_sub(1, Ordering::Relaxed) == 1 {
            *channel = None;
        }
    }
}

/// How often a relay looks whether any monitor is left, and at the pool's masters.
const RELAY_RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Starts monitoring for a client of `pool`: the relay of its masters' script commands runs
/// (started now if it did not). True when it is ready, so MONITOR is answered at once; else
/// `later` is answered once it is.
pub fn start(
    pool: &Arc<crate::server::Pool>,
    later: impl FnOnce() -> crate::backend::ReplyTo,
) -> bool {
    let relay = || {
        tokio::spawn(relay_scripts(pool.clone()));
    };
    pool.monitor_relay.enter(relay, later)
}

/// While any client monitors, runs MONITOR on every master of `pool` and passes on the lines of
/// the commands scripts issued there (`[<db> lua]`); the lines of slotline's own connections are
/// left out (slotline shows its clients' commands itself).
async fn relay_scripts(pool: Arc<crate::server::Pool>) {
    let monitors = pool.shared.monitors.clone();
    let mut feeds = crate::backend::MasterFeeds::new(
        pool.router.own_settings(),
        Bytes::from_static(b"*1\r\n$7\r\nMONITOR\r\n"),
    );
    let mut recheck = tokio::time::interval(RELAY_RECHECK);
    loop {
        tokio::select! {
            _ = recheck.tick() => {
                if !pool.monitor_relay.keep_running(monitors.active()) {
                    return;
                }
                feeds.follow(&pool.router.masters());
            }
            Some(event) = feeds.events.recv() => match event {
                crate::backend::SubEvent::Frame(id, line) => {
                    feeds.taken(&line);
                    if line.starts_with(b"+OK\r\n") {
                        pool.monitor_relay.set_ready(feeds.set_up(id));
                    } else if from_script(&line) {
                        monitors.publish_line(line);
                    }
                }
                crate::backend::SubEvent::Lost(id, _) => feeds.lost(id),
            },
        }
    }
}

/// Whether a node's MONITOR line is a command a script issued: `+<time> [<db> lua] ...`.
fn from_script(line: &[u8]) -> bool {
    line.starts_with(b"+")
        && line
            .iter()
            .position(|&b| b == b']')
            .is_some_and(|end| line[..end].ends_with(b" lua"))
}

/// `arg` as Redis's MONITOR quotes it (sdscatrepr): in double quotes, with `\\`, `\"`, `\n`, `\r`,
/// `\t`, `\a`, `\b` escaped and other unprintable bytes as `\xHH`.
fn quote(out: &mut String, arg: &[u8]) {
    out.push('"');
    for &b in arg {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'"' => out.push_str("\\\""),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x07 => out.push_str("\\a"),
            0x08 => out.push_str("\\b"),
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_the_lines_of_script_commands_are_relayed() {
        assert!(super::from_script(
            b"+1700000000.123456 [0 lua] \"set\" \"foo\" \"bar\"\r\n"
        ));
        assert!(!super::from_script(
            b"+1700000000.123456 [0 127.0.0.1:5000] \"eval\" \"x\"\r\n"
        ));
        assert!(!super::from_script(b"+OK\r\n"));
    }

    use super::*;

    #[test]
    fn arguments_are_quoted_as_redis_quotes_them() {
        let mut out = String::new();
        quote(&mut out, b"a \"b\"\\\n\x01\xff");
        assert_eq!(out, r#""a \"b\"\\\n\x01\xff""#);
    }

    #[test]
    fn lines_reach_every_monitor_and_a_lagging_one_is_told() {
        let monitors = Arc::new(Monitors::default());
        assert!(!monitors.active());
        let mut one = monitors.watch();
        let mut two = monitors.watch();
        assert!(monitors.active());
        monitors.publish("127.0.0.1:5000", [&b"SET"[..], b"k", b"v"].into_iter());
        for m in [&mut one, &mut two] {
            match m.try_next() {
                Some(Next::Line(line)) => {
                    let line = String::from_utf8_lossy(&line).into_owned();
                    assert!(line.starts_with('+'), "{line}");
                    assert!(
                        line.ends_with(" [0 127.0.0.1:5000] \"SET\" \"k\" \"v\"\r\n"),
                        "{line}"
                    );
                }
                _ => panic!("no line"),
            }
        }
        drop(two);
        for _ in 0..=BACKLOG {
            monitors.publish("x", std::iter::empty());
        }
        assert!(matches!(one.try_next(), Some(Next::TooSlow)));
        drop(one);
        assert!(!monitors.active());
    }

    #[test]
    fn the_backlog_exists_only_while_anyone_monitors() {
        let monitors = Arc::new(Monitors::default());
        let unused = || monitors.channel().is_none();
        assert!(unused(), "a backlog allocated before anyone monitors");
        monitors.publish("x", std::iter::empty());
        let (one, two) = (monitors.watch(), monitors.watch());
        assert!(!unused());
        drop(one);
        assert!(!unused(), "freed while a monitor still reads it");
        drop(two);
        assert!(unused(), "kept after the last monitor left");
        let mut again = monitors.watch();
        monitors.publish("x", std::iter::empty());
        assert!(matches!(again.try_next(), Some(Next::Line(_))));
    }
}
