//! What the client is written: the step's replies in the worker's scratch buffer, held so that a
//! batch's replies leave in one write, and the byte bounds on what waits for the client.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

use super::buffers;
use super::pending::Pending;
use super::view::View;
use super::Ctx;
use crate::metrics::ErrorKind;
use crate::protocol::{Reply, RequestParser};

/// Output past which replies go without waiting for the rest of their batch (see
/// [`Ctx::holds_output`]): a big pipeline's replies stream.
const HOLD_OUTPUT: usize = 16 * 1024;

impl Ctx {
    /// Takes the invalidations left for this client: written now when nothing is under way, else
    /// after the replies of what is (see `deferred`).
    pub(super) fn take_pushes(&mut self) {
        if !self.client.record.has_pushes() {
            return;
        }
        if let Some(how) = self.client.record.take_unblock() {
            self.unblock(how);
        }
        let after = self.front_seq + self.pending.len() as u64;
        for frame in self.client.record.take_pushes() {
            match self.pending.is_empty() {
                true => self.out.extend_from_slice(&frame),
                false => self
                    .deferred
                    .get_or_insert_with(Box::default)
                    .push_back((after, frame)),
            }
        }
        self.reply_boundary();
    }

    /// Writes the deferred invalidations whose requests are all answered.
    pub(super) fn write_deferred(&mut self) {
        if let Some(deferred) = self.deferred.as_deref_mut() {
            while let Some((after, _)) = deferred.front() {
                if *after > self.front_seq {
                    break;
                }
                if let Some((_, frame)) = deferred.pop_front() {
                    self.out.extend_from_slice(&frame);
                }
            }
            if deferred.is_empty() {
                self.deferred = None;
            }
        }
        self.reply_boundary();
    }

    /// Takes the worker's scratch buffer to compose this step's output in, unless output from an
    /// earlier step is still waiting for the socket.
    pub(super) fn begin_output(&mut self) {
        if self.out.is_empty() {
            self.out = buffers::take_scratch();
            self.out_scratch = true;
        }
        self.reply_boundary();
    }

    /// Gives the scratch buffer back; what the socket did not take moves into a buffer of the
    /// client's own.
    pub(super) fn end_output(&mut self) {
        if !std::mem::take(&mut self.out_scratch) {
            if self.out.is_empty() && self.out.capacity() > 0 {
                self.out = BytesMut::new();
            }
            return;
        }
        let scratch = std::mem::take(&mut self.out);
        if !scratch.is_empty() {
            self.out = BytesMut::from(&scratch[..]);
        }
        buffers::give_scratch(scratch);
        if self.arrived.capacity() > 64 {
            self.arrived = Vec::new();
        }
    }

    /// Output to write now: replies are ready and do not wait for the rest of their read's (see
    /// [`Ctx::holds_output`]).
    pub(super) fn output_due(&self) -> bool {
        !self.out.is_empty() && !self.holds_output()
    }

    /// Whether the replies ready now wait for the next one: the oldest unanswered request came
    /// in the same read as the reply before it and is on its way on a shared connection, so its
    /// answer is a moment away (and its deadline still bounds the wait). Redis answers the
    /// requests of one read in one write; so does slotline, where a pipeline spread over several
    /// backends would otherwise cost a write per backend, and the client a read for each: half
    /// of slotline's CPU at -P 16 goes to its writes.
    pub(super) fn holds_output(&self) -> bool {
        self.hold_room().is_some_and(|room| room > 0)
            && matches!(self.pending.front(), Some(Pending::Wait(w))
                if w.result.is_none() && w.holds_earlier_replies())
    }

    /// Bytes of replies that may still be held before a write (see
    /// [`holds_output`](Self::holds_output)); None when none may.
    pub(super) fn hold_room(&self) -> Option<u16> {
        let room = HOLD_OUTPUT
            .checked_sub(self.out.len())
            .filter(|_| !self.closing)?;
        u16::try_from(room).ok()
    }

    /// Takes stock of a write; false when the client is gone.
    pub(super) fn wrote(&mut self, written: std::io::Result<usize>) -> bool {
        match written {
            Ok(n) => {
                self.out_counted = self.out_counted.saturating_sub(n);
                if self.out.is_empty() {
                    self.pubsub_written();
                }
                true
            }
            Err(_) => {
                self.client_err = true;
                false
            }
        }
    }

    /// The client asked for more than it reads: its replies passed `max_client_reply_bytes`.
    pub(super) fn too_much_output(&mut self, limit: usize) {
        static WARNED: crate::throttle::Throttle =
            crate::throttle::Throttle::new(Duration::from_secs(10));
        if WARNED.ready() {
            tracing::warn!(client.addr = %self.client.addr(), pool = %self.pool.name, limit,
                "closing a client that does not read its replies (max_client_reply_bytes reached)");
        }
        self.tally.get().error(ErrorKind::Proxy);
        self.client_err = true;
    }

    /// Holds a request for the client's own connection until everything before it is answered.
    pub(in crate::server) fn hold(&mut self, frame: &Bytes) {
        self.push(Pending::Held(frame.clone()));
    }

    /// Dispatches a held request, now that nothing is before it; `decided` is whether its reply is
    /// dropped, if that was decided when it was held (see [`reply_mode`](super::reply_mode)).
    pub(super) fn release(&mut self, frame: Bytes, decided: Option<bool>) {
        if let Some(parser) = RequestParser::parsed_again(&frame) {
            let pool = self.pool.clone();
            let view = View::of(&pool);
            let (queued, written) = (self.pending.len(), self.out.len());
            self.dispatch(parser.args(), frame, &view, Instant::now(), false);
            self.after_dispatch(queued, written, decided);
        }
    }

    /// Writes an error reply in order: straight to the output when nothing is waiting before it.
    /// Errors slotline decides itself (unknown command, CROSSSLOT, no topology ...).
    pub(crate) fn error(&mut self, msg: &str) {
        self.tally.get().error(ErrorKind::Proxy);
        if self.dispatching != crate::cmdstats::NONE {
            self.tally.get().rejected(self.dispatching);
        }
        self.pool.shared.errorstats.count(msg.as_bytes());
        // An error while queuing a transaction dooms it, as with Redis.
        self.tx.abort();
        self.reply(|r| r.error(msg));
    }

    /// An error for the request at the front, written before it leaves the queue.
    pub(super) fn error_now(&mut self, msg: &str) {
        self.pool.shared.errorstats.count(msg.as_bytes());
        Reply(&mut self.out).error(msg);
    }

    /// Appends a locally made reply in request order.
    pub(crate) fn reply(&mut self, write: impl FnOnce(&mut Reply<'_>)) {
        if self.pending.is_empty() {
            write(&mut Reply(&mut self.out));
        } else {
            let mut buf = BytesMut::new();
            write(&mut Reply(&mut buf));
            self.push(Pending::Ready(buf.freeze()));
        }
    }
}
