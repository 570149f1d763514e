//! Replies in request order: replies taken from the inbox placed under their requests, and the
//! oldest request answered, failed on its deadline or sent again.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::parts::{part_seq, MAX_PARTS, PART, PART_BITS};
use super::pending::{Fence, Pending, Waiting};
use super::redirect::{follow_reply, Redirected};
use super::view::{Place, View};
use super::Ctx;
use crate::backend::{Awaited, BackendResult};
use crate::command::{self, flags, Request};
use crate::metrics::ErrorKind;
use crate::protocol::RequestParser;
use crate::stats;

/// What a session with `pending` requests, the oldest numbered `front_seq`, waits for when it has
/// nothing else to do: the replies that let it write (see [`Ctx::holds_output`]), while `room`
/// bytes of replies may still be held. The oldest request and the ones read with it whose replies
/// the first is held for must all be answered before one write can take them; their replies
/// arriving one backend at a time would otherwise wake the session once per backend for nothing.
/// `None`: any reply may be acted on.
pub(super) fn awaited(pending: &VecDeque<Pending>, front_seq: u64, room: u16) -> Option<Awaited> {
    // Far enough to cover a pipeline's batch; a longer run is woken for in parts.
    const MAX_SPAN: u8 = 63;
    let Some(Pending::Wait(head)) = pending.front() else {
        return None;
    };
    if head.result.is_some() || head.fence.is_some() {
        return None;
    }
    let mut run = Awaited {
        first: front_seq,
        span: 0,
        unanswered: 1,
        room,
    };
    for pending in pending.iter().skip(1).take(usize::from(MAX_SPAN)) {
        match pending {
            Pending::Wait(w) if w.holds_earlier_replies() => {
                run.span += 1;
                run.unanswered += u8::from(w.result.is_none());
            }
            _ => break,
        }
    }
    Some(run)
}

pub(super) enum HeadEvent {
    Reply(BackendResult),
    Timeout,
}

impl Ctx {
    /// A script probed with its read-only twin under CLIENT PAUSE WRITE (see `dispatch`) answered
    /// `reply`: if the node refused it as one that may write (unrun), it is held as it came, and
    /// true.
    fn probe_refused(&mut self, reply: &[u8]) -> bool {
        let Some(probes) = self.probes.as_deref_mut() else {
            return false;
        };
        let Some(i) = probes.iter().position(|(seq, _)| *seq == self.front_seq) else {
            return false;
        };
        let (_, original) = probes.swap_remove(i);
        if probes.is_empty() {
            self.probes = None;
        }
        let refused = reply.starts_with(b"-ERR Can not execute a script with write flag")
            || reply.starts_with(b"-ERR Write commands are not allowed from read-only scripts");
        if refused {
            self.replace_front(Pending::Held(original));
            let pool = self.pool.clone();
            if pool.shared.pause.writes_only() {
                self.pause_watch(&pool.shared.pause);
            }
        }
        refused
    }

    /// Puts `pending` in the oldest request's place, its bookkeeping with it.
    fn replace_front(&mut self, pending: Pending) {
        let Some(front) = self.pending.front_mut() else {
            return;
        };
        let old = std::mem::replace(front, pending);
        let new = &self.pending[0];
        self.serial =
            (self.serial + usize::from(new.serial())).saturating_sub(usize::from(old.serial()));
        self.request_bytes =
            (self.request_bytes + new.request_bytes()).saturating_sub(old.request_bytes());
        self.replies_held =
            (self.replies_held + new.reply_bytes()).saturating_sub(old.reply_bytes());
        if self.scripts > 0 && old.script() {
            self.scripts -= 1;
        }
    }

    /// Whether the oldest request is a blocking command still waiting.
    pub(super) fn blocked(&self) -> bool {
        matches!(self.pending.front(), Some(Pending::Wait(w)) if w.own_connection && w.result.is_none())
    }

    /// CLIENT UNBLOCK from another client: the blocked command ends as its timeout or an error
    /// would end it, and its connection of the client's own is closed, which unblocks it on the
    /// node too.
    pub(super) fn unblock(&mut self, how: crate::clients::Unblock) {
        if !self.blocked() {
            return;
        }
        let reply: &'static [u8] = match (how, self.proto) {
            (crate::clients::Unblock::Error, _) => {
                b"-UNBLOCKED client unblocked via CLIENT UNBLOCK\r\n"
            }
            (_, 3) => b"_\r\n",
            _ => b"*-1\r\n",
        };
        if let Some(Pending::Wait(w)) = self.pending.front_mut() {
            w.result = Some(Ok(Bytes::from_static(reply)));
        }
        self.own = None;
        self.drain_ready();
    }

    /// A reply this client gets later from another task (CLIENT TRACKING ON, once slotline
    /// follows every master): queued in order like a backend's, bounded by the pool's timeout.
    pub(crate) fn answer_later(&mut self) -> crate::backend::ReplyTo {
        let seq = self.front_seq + self.pending.len() as u64;
        self.push(Pending::Wait(Waiting {
            result: None,
            frame: Bytes::new(),
            slot: None,
            sent: self.now,
            deadline: self.now + Duration::from_millis(self.pool.config.timeout),
            redirects: 0,
            own_connection: false,
            scripted: None,
            command: crate::cmdstats::NONE,
            replica: false,
            fence: None,
            joined: false,
        }));
        self.inbox.reply_to(seq)
    }

    /// When the oldest request gives up, if it is still waiting for a backend.
    pub(super) fn head_deadline(&self) -> Option<Instant> {
        match self.pending.front() {
            Some(Pending::Wait(w)) if w.result.is_none() => Some(w.deadline),
            Some(Pending::Split(s)) if s.parts.iter().any(|p| p.w.result.is_none()) => {
                Some(s.deadline)
            }
            Some(Pending::PubSub(s)) if s.waiting() => s.deadline,
            Some(Pending::Moving(m)) if m.waiting() => Some(m.deadline),
            _ => None,
        }
    }

    pub(super) fn push(&mut self, pending: Pending) {
        self.serial += usize::from(pending.serial());
        self.request_bytes += pending.request_bytes();
        self.replies_held += pending.reply_bytes();
        self.pending.push_back(pending);
    }

    /// The oldest request is settled, its reply (if any) written. Returns whether that reply was
    /// dropped for CLIENT REPLY, if the client uses it.
    pub(super) fn pop_front(&mut self) -> Option<bool> {
        let silenced = match self.reply_mode.is_some() {
            true => self.reply_settled(),
            false => None,
        };
        if let Some(pending) = self.pending.pop_front() {
            debug_assert!(self.serial >= usize::from(pending.serial()));
            self.serial = self.serial.saturating_sub(usize::from(pending.serial()));
            if self.scripts > 0 && pending.script() {
                self.scripts -= 1;
            }
            self.request_bytes = self.request_bytes.saturating_sub(pending.request_bytes());
            self.replies_held = self.replies_held.saturating_sub(pending.reply_bytes());
        }
        self.front_seq += 1;
        if self.deferred.is_some() {
            self.write_deferred();
        }
        if self.pending.is_empty() && self.pending.capacity() > 64 {
            // A burst is over: an idle client keeps no queue the size of its deepest pipeline.
            self.pending = VecDeque::new();
        }
        silenced
    }

    /// Gives each reply taken from the inbox to its request. Replies for requests that already gave up
    /// (timed out) find no place and are dropped.
    fn place_arrived(&mut self) {
        let now = self.now;
        for (seq, result) in self.arrived.drain(..) {
            let (seq, part) = match seq & PART {
                0 => (seq, None),
                _ => ((seq & !PART) >> PART_BITS, Some(seq as usize % MAX_PARTS)),
            };
            let Some(i) = seq.checked_sub(self.front_seq) else {
                continue;
            };
            match (self.pending.get_mut(i as usize), part) {
                (Some(Pending::Wait(w)), None) if w.result.is_none() => {
                    // Sent at `deadline - timeout` (redirects included). A blocking command waits as
                    // long as the client asked: not a backend's answer time.
                    if !w.own_connection {
                        self.tally.get().backend_answered(w.sent, now);
                    }
                    let (tracking, inbox) = (&self.pool.tracking, &self.inbox);
                    let barrier =
                        |master| tracking.barrier(master, inbox.reply_to(part_seq(seq, 0)));
                    let Some(result) = w.fenced(result, barrier) else {
                        continue;
                    };
                    w.result = Some(result);
                    self.replies_held += w.reply_bytes();
                }
                (Some(Pending::Wait(w)), Some(_)) => {
                    // Its fence's barrier passed (or its feed is gone): the reply may go.
                    if let Some(held) = Fence::release(&mut w.fence) {
                        w.result = Some(held);
                        self.replies_held += w.reply_bytes();
                    }
                }
                (Some(Pending::Moving(m)), Some(part)) => {
                    if let Some(slot) = m.replies.get_mut(part) {
                        *slot = Some(result);
                    }
                }
                (Some(Pending::Split(s)), Some(part)) => {
                    let Some(w) = s.parts.get_mut(part).map(|p| &mut p.w) else {
                        continue;
                    };
                    // Its reply (not its fence's barrier): the backend has answered.
                    if !matches!(w.fence.as_deref(), Some(Fence::Held(_))) {
                        self.tally.get().backend_answered(w.sent, now);
                    }
                    let (tracking, inbox) = (&self.pool.tracking, &self.inbox);
                    let barrier =
                        |master| tracking.barrier(master, inbox.reply_to(part_seq(seq, part)));
                    let Some(result) = w.fenced(result, barrier) else {
                        continue;
                    };
                    w.result = Some(result);
                    self.replies_held += w.reply_bytes();
                }
                _ => {}
            }
        }
    }

    /// Moves every reply that is already known, from the front of the pipeline, into the output.
    pub(super) fn drain_ready(&mut self) {
        self.place_arrived();
        self.take_pubsub();
        self.reply_boundary();
        loop {
            let result = match self.pending.front_mut() {
                None => {
                    // Everything it sent is answered: its writes are acknowledged as of now.
                    self.reads.settled(self.now.into_std());
                    return;
                }
                Some(Pending::Ready(bytes)) => {
                    self.out.extend_from_slice(bytes);
                    self.pop_front();
                    continue;
                }
                Some(Pending::Wait(w)) => {
                    let held = w.reply_bytes();
                    match w.result.take() {
                        Some(result) => {
                            self.replies_held = self.replies_held.saturating_sub(held);
                            result
                        }
                        None => return,
                    }
                }
                Some(Pending::Split(_)) => {
                    if self.settle_split() {
                        continue;
                    }
                    return;
                }
                Some(Pending::PubSub(_)) => {
                    if self.settle_pubsub() {
                        continue;
                    }
                    return;
                }
                Some(Pending::Moving(_)) => {
                    if self.settle_moving() {
                        continue;
                    }
                    return;
                }
                Some(Pending::Held(frame)) => {
                    if let Some((held_by, changes)) = self.paused.as_deref() {
                        // The same pause, not over: the held request waits. Anything else, and
                        // dispatching it again decides.
                        let current = *changes.borrow();
                        if current == *held_by && held_by.is_some_and(|(end, _)| end > self.now) {
                            return;
                        }
                        self.paused = None;
                    }
                    let frame = frame.clone();
                    let decided = self.pop_front();
                    self.release(frame, decided);
                    continue;
                }
            };
            self.on_head(HeadEvent::Reply(result));
        }
    }

    /// Settles the oldest request: forwards its reply, follows a redirect, or reports a failure.
    pub(super) fn on_head(&mut self, event: HeadEvent) {
        if let Some(hello) = self.checks_login() {
            return self.node_login_checked(event, hello);
        }
        if let (HeadEvent::Timeout, Some(Pending::Split(s))) = (&event, self.pending.front_mut()) {
            // Writes that ran and only wait for a slow feed go as they are.
            for w in s.parts.iter_mut().map(|p| &mut p.w) {
                if let Some(held) = Fence::release(&mut w.fence) {
                    w.result = Some(held);
                }
            }
            if s.parts.iter().all(|p| p.w.result.is_some()) {
                return;
            }
        }
        if let (HeadEvent::Timeout, Some(Pending::Split(_))) = (&event, self.pending.front()) {
            if self.read_parts_again(false) {
                // Its replicas did not answer in time: its masters may.
                return;
            }
            self.tally.get().error(ErrorKind::Timeout);
            stats::add(&self.pool.stats.forward_error, 1);
            self.timed_out();
            self.pop_front();
            return;
        }
        if let (HeadEvent::Timeout, Some(Pending::PubSub(_))) = (&event, self.pending.front()) {
            return self.pubsub_timed_out();
        }
        if let (HeadEvent::Timeout, Some(Pending::Moving(_))) = (&event, self.pending.front()) {
            self.tally.get().error(ErrorKind::Timeout);
            self.timed_out();
            self.pop_front();
            return;
        }
        let Some(Pending::Wait(w)) = self.pending.front_mut() else {
            return;
        };
        if w.replica && !matches!(event, HeadEvent::Reply(Ok(_))) {
            // A read is idempotent: one its replica failed runs again on the master.
            w.replica = false;
            if self.read_again_on_master() {
                return;
            }
        }
        let Some(Pending::Wait(w)) = self.pending.front_mut() else {
            return;
        };
        let event = match event {
            // The write ran; only its feed did not answer in time: its reply goes as it is.
            HeadEvent::Timeout => Fence::release(&mut w.fence).map_or(event, HeadEvent::Reply),
            event => event,
        };
        // Observed once the client's reply is decided. Not for blocking commands, which take as
        // long as the client asked them to.
        let own_connection = w.own_connection;
        let started = (!own_connection).then_some(w.sent);
        // How long the client has waited: for the latency histogram, and for SLOWLOG, which reads
        // the request's arguments again only for a slow one.
        let now = self.now;
        let took = started.map(|s| self.tally.get().elapsed(s, now));
        let command = w.command;
        let slowlog = &self.pool.shared.slowlog;
        let slow = match took {
            Some(took) => slowlog.is_slow(took).then_some(took),
            // A blocking command: Redis logs its run, not its wait, which is next to nothing.
            None => slowlog.is_slow(Duration::ZERO).then_some(Duration::ZERO),
        }
        .map(|took| (took, w.frame.clone()));
        let reply = match event {
            HeadEvent::Reply(Ok(reply)) => reply,
            HeadEvent::Reply(Err(e)) => {
                if own_connection {
                    if let Some(kind) = self.await_master_after_loss(&e) {
                        return self.tally.get().redirect(kind);
                    }
                }
                self.tally.get().answered_in(took);
                self.tally.get().command_answered(command, took, true);
                self.tally.get().error(ErrorKind::from(&e));
                stats::add(&self.pool.stats.forward_error, 1);
                self.error_now(&format!("ERR slotline: {e}"));
                self.pop_front();
                return;
            }
            HeadEvent::Timeout => {
                self.tally.get().answered_in(took);
                self.tally.get().command_answered(command, took, true);
                self.tally.get().error(ErrorKind::Timeout);
                stats::add(&self.pool.stats.forward_error, 1);
                self.timed_out();
                self.pop_front();
                return;
            }
        };
        // Only an error reply can be a redirect (or anything but the client's answer).
        if reply.first() == Some(&b'-') {
            if self.probes.is_some() && self.probe_refused(&reply) {
                return;
            }
            if own_connection {
                if let Some(kind) = self.follow_on_own(&reply) {
                    return self.tally.get().redirect(kind);
                }
            }
            let via = self.via();
            let Some(Pending::Wait(w)) = self.pending.front_mut() else {
                return;
            };
            let pick = self.client.id() as usize;
            let resend = || self.inbox.reply_to(self.front_seq);
            let failure = match follow_reply(&self.pool, pick, via, w, &reply, resend) {
                Redirected::Followed(kind) => return self.tally.get().redirect(kind),
                Redirected::Refused => ErrorKind::RedirectLimit,
                Redirected::No => ErrorKind::BackendError,
            };
            self.tally.get().error(failure);
            self.pool.shared.errorstats.count(&reply);
        }
        let tally = self.tally.get();
        tally.answered_in(took);
        tally.command_answered(command, took, reply.first() == Some(&b'-'));
        if let Some((took, frame)) = slow {
            self.log_slow(&frame, took);
        }
        if self.tracking.as_deref().is_some_and(|t| t.noloop) {
            self.noloop_answered(&reply);
        }
        self.out.extend_from_slice(&reply);
        self.pop_front();
    }

    /// The oldest request of a NOLOOP tracking client is answered with `reply`: a write that
    /// changed nothing takes back its count of own writes (see [`crate::tracking::changed_nothing`]);
    /// a script, the counts of the keys it named and did not write.
    fn noloop_answered(&self, reply: &[u8]) {
        let Some(Pending::Wait(w)) = self.pending.front() else {
            return;
        };
        let Some(spec) = command::all().get(usize::from(w.command)) else {
            return;
        };
        let script = spec.runs_script() && !spec.has(flags::READONLY);
        // The reply alone rules out most writes (any key count short of all counts), before
        // the request is parsed again for its keys.
        let unchanged = || crate::tracking::changed_nothing(spec, reply, usize::MAX);
        if !script && (!spec.has(flags::WRITE) || !unchanged()) {
            return;
        }
        let Some(parser) = RequestParser::parsed_again(&w.frame) else {
            return;
        };
        let req = Request {
            frame: &w.frame,
            args: parser.args(),
        };
        let mut keys = Vec::new();
        req.for_each_key(spec, |key| keys.push(key));
        let (tracking, shared) = (&self.pool.tracking, &self.pool.shared);
        if script {
            // Its fence has passed: its own invalidations have come.
            tracking.script_answered(self.client.id(), keys.into_iter());
        } else if crate::tracking::changed_nothing(spec, reply, keys.len()) {
            tracking.unwrote(self.client.id(), keys.into_iter(), shared);
        }
    }

    /// Sends the oldest request, a read its replica failed, to its master instead; false when
    /// there is none to send it to.
    #[cold]
    #[inline(never)]
    fn read_again_on_master(&mut self) -> bool {
        let pool = self.pool.clone();
        let view = View::of(&pool);
        let (pick, via) = (self.client.id() as usize, self.via());
        let Some(Pending::Wait(w)) = self.pending.front_mut() else {
            return false;
        };
        let place = w.slot.map_or(Place::Any, Place::Slot);
        let Some(master) = view.target(place, pick) else {
            return false;
        };
        master
            .via(via)
            .send(pick, &w.frame, false, self.inbox.reply_to(self.front_seq));
        w.deadline = self.now + Duration::from_millis(pool.config.timeout);
        if let Some(counters) = pool.router.read_counters() {
            counters.retried.fetch_add(1, Ordering::Relaxed);
        }
        true
    }

    /// Adds a slow request to SLOWLOG.
    pub(super) fn log_slow(&self, frame: &Bytes, took: Duration) {
        if let Some(parser) = RequestParser::parsed_again(frame) {
            let args = parser.args();
            let arg = |&(s, e): &(u32, u32)| frame.get(s as usize..e as usize).unwrap_or_default();
            self.pool.shared.slowlog.log(
                args.iter().map(arg),
                took,
                self.client.addr(),
                self.client.record.name(),
            );
        }
    }

    pub(super) fn timed_out(&mut self) {
        let msg = format!(
            "ERR slotline: no reply from the backend within {} ms",
            self.pool.config.timeout
        );
        self.error_now(&msg);
    }
}
