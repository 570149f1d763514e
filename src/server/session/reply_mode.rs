//! CLIENT REPLY ON|OFF|SKIP: the replies a client does not want. Its requests still run; their
//! replies are cut from the output when they are written. Replies go out in request order, each
//! written whole when its request is settled (just before the request leaves the queue), so a
//! silenced reply is exactly the bytes written since the previous request was settled.
//!
//! (Un)subscribe confirmations and messages are pushes, which Redis sends even with replies off.
//!
//! Only a client that has used CLIENT REPLY carries this state; for every other client the data
//! path pays one `Option` check per request.

use std::collections::VecDeque;

use bytes::BytesMut;

use super::Ctx;

/// What CLIENT REPLY asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    On,
    Off,
    Skip,
}

impl Mode {
    pub(crate) fn parse(word: &[u8]) -> Option<Mode> {
        match word.to_ascii_lowercase().as_slice() {
            b"on" => Some(Mode::On),
            b"off" => Some(Mode::Off),
            b"skip" => Some(Mode::Skip),
            _ => None,
        }
    }
}

#[derive(Default)]
pub(super) struct ReplyMode {
    /// CLIENT REPLY OFF: every reply is dropped until ON.
    off: bool,
    /// Set by SKIP: the command after it is silenced ...
    skip_next: bool,
    /// ... which is this one, once the SKIP itself has run.
    skip_this: bool,
    /// Requests queued since the client first used CLIENT REPLY, oldest first: their number and
    /// whether their reply is dropped, decided when they ran.
    queued: VecDeque<(u64, bool)>,
    /// Where the output stood when the oldest request began to be written.
    front_start: usize,
}

impl ReplyMode {
    fn set(&mut self, mode: Mode) {
        match mode {
            Mode::On => (self.off, self.skip_next, self.skip_this) = (false, false, false),
            Mode::Off => self.off = true,
            // As Redis: SKIP means nothing while replies are off.
            Mode::Skip if !self.off => self.skip_next = true,
            Mode::Skip => {}
        }
    }

    /// After a command ran: whether its reply is dropped. SKIP's effect moves on to the command
    /// after the SKIP.
    fn after_command(&mut self) -> bool {
        let silent = self.off || std::mem::take(&mut self.skip_this);
        self.skip_this = std::mem::take(&mut self.skip_next);
        silent
    }

    /// The request numbered `seq` was settled, its reply written to `out`: cut it if silenced
    /// (unless `push`: (un)subscribe confirmations, which Redis sends even with replies off).
    /// Returns what was decided for it, if it was queued while this mode existed.
    fn settled(&mut self, seq: u64, out: &mut BytesMut, push: bool) -> Option<bool> {
        let decided = match self.queued.front() {
            Some(&(first, silent)) if first == seq => {
                self.queued.pop_front();
                if silent && !push {
                    out.truncate(self.front_start.min(out.len()));
                }
                Some(silent)
            }
            _ => None,
        };
        self.front_start = out.len();
        decided
    }
}

impl Ctx {
    /// CLIENT REPLY: OFF and SKIP are not answered, ON is.
    pub(crate) fn set_reply_mode(&mut self, mode: Mode) {
        self.reply_mode.get_or_insert_with(Box::default).set(mode);
        if mode == Mode::On {
            self.reply(|r| r.ok());
        }
    }

    /// RESET turns replies back on.
    pub(crate) fn reset_reply_mode(&mut self) {
        if let Some(mode) = self.reply_mode.as_deref_mut() {
            mode.set(Mode::On);
        }
    }

    /// After a request was dispatched (`queued` and `written`: the queue's length and the
    /// output's before it): drops its reply if it was written at once and silenced, or remembers
    /// the decision for when it is settled. `decided` carries the decision of a held request
    /// dispatched again.
    pub(super) fn after_dispatch(&mut self, queued: usize, written: usize, decided: Option<bool>) {
        let Some(mode) = self.reply_mode.as_deref_mut() else {
            return;
        };
        let silent = decided.unwrap_or_else(|| mode.after_command());
        if self.pending.len() > queued {
            let seq = self.front_seq + self.pending.len() as u64 - 1;
            mode.queued.push_back((seq, silent));
        } else {
            if silent {
                self.out.truncate(written.min(self.out.len()));
            }
            mode.front_start = self.out.len();
        }
    }

    /// The oldest request leaves the queue, its reply written: see [`ReplyMode::settled`].
    pub(super) fn reply_settled(&mut self) -> Option<bool> {
        let mode = self.reply_mode.as_deref_mut()?;
        let push = matches!(self.pending.front(), Some(super::Pending::PubSub(_)));
        mode.settled(self.front_seq, &mut self.out, push)
    }

    /// Output written from here on is not the oldest request's (the start of a step, messages to
    /// a subscriber).
    pub(super) fn reply_boundary(&mut self) {
        if let Some(mode) = self.reply_mode.as_deref_mut() {
            mode.front_start = self.out.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_silences_the_command_after_it_and_off_everything_until_on() {
        let mut mode = ReplyMode::default();
        assert!(!mode.after_command());
        mode.set(Mode::Skip);
        assert!(
            !mode.after_command(),
            "the SKIP itself writes nothing anyway"
        );
        assert!(mode.after_command(), "the command after SKIP");
        assert!(!mode.after_command());
        mode.set(Mode::Off);
        assert!(mode.after_command());
        mode.set(Mode::Skip);
        assert!(mode.after_command(), "SKIP while off changes nothing");
        assert!(mode.after_command());
        mode.set(Mode::On);
        assert!(!mode.after_command(), "ON is answered");
        assert!(!mode.after_command());
    }

    #[test]
    fn a_silenced_request_loses_exactly_its_own_reply() {
        let mut mode = ReplyMode::default();
        let mut out = BytesMut::from(&b"+earlier\r\n"[..]);
        mode.front_start = out.len();
        mode.queued.extend([(7, true), (8, false)]);
        out.extend_from_slice(b"+seven\r\n");
        assert_eq!(mode.settled(7, &mut out, false), Some(true));
        out.extend_from_slice(b"+eight\r\n");
        assert_eq!(mode.settled(8, &mut out, false), Some(false));
        assert_eq!(mode.settled(9, &mut out, false), None);
        mode.queued.push_back((10, true));
        out.extend_from_slice(b">3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(mode.settled(10, &mut out, true), Some(true));
        assert_eq!(
            &out[..],
            b"+earlier\r\n+eight\r\n>3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n"
        );
    }
}
