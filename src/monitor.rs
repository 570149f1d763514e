//! MONITOR: every command that passes through slotline, streamed to any number of monitoring clients
//! in Redis's line format (`+1339518083.107412 [0 127.0.0.1:60866] "keys" "*"`).
//!
//! Sessions publish a line per command only while a monitor is connected (one relaxed load per
//! command otherwise). Lines go through a bounded broadcast channel: a monitor that falls
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
pub struct Monitors {
    watching: AtomicUsize,
    lines: broadcast::Sender<Bytes>,
}

impl Default for Monitors {
    fn default() -> Self {
        Monitors {
            watching: AtomicUsize::new(0),
            lines: broadcast::channel(BACKLOG).0,
        }
    }
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
        // No receiver left is no error: the last monitor just went.
        let _ = self.lines.send(Bytes::from(line));
    }

    /// A new monitor, counted until it is dropped.
    pub fn watch(self: &Arc<Self>) -> Monitor {
        self.watching.fetch_add(1, Ordering::Relaxed);
        Monitor {
            monitors: self.clone(),
            lines: self.lines.subscribe(),
        }
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
                // The sender lives as long as the process's shared state: never closed while a
                // session runs.
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
        self.monitors.watching.fetch_sub(1, Ordering::Relaxed);
    }
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
}
