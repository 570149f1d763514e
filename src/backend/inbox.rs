//! Where backend replies are delivered: one inbox per client session instead of a channel per request.
//!
//! A request carries a [`ReplyTo`] (the session's inbox and the request's sequence number); the backend
//! reader drops the reply into the inbox and wakes the session, which puts replies back in request order
//! by their numbers. Compared with a oneshot channel per request this saves an allocation and a channel's
//! worth of atomics on every request, and a session woken once collects every reply that has arrived.
//!
//! A session that can do nothing until a run of its requests is answered (the replies to one read go
//! out in one write) says so when it waits, and replies within that run wake it only when the run is
//! complete or holds enough bytes to write: a pipeline spread over three backends wakes its session
//! once, not once per backend.

use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use super::{BackendError, BackendResult};

/// Replies delivered to one session, not yet collected.
#[derive(Default)]
pub struct Inbox {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    replies: Vec<(u64, BackendResult)>,
    waker: Option<Waker>,
    /// What the waiting session needs before it can act; `None`: any reply.
    awaited: Option<Awaited>,
}

/// The replies a session waits for before it can act: those to the requests numbered `first` to
/// `first + span`, of which `unanswered` are still to come, or `room` bytes of them, whichever is
/// first. A reply to any other request wakes the session at once. (Small: a waiting session keeps
/// one in its inbox, and every client connection is a session.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Awaited {
    pub first: u64,
    pub span: u8,
    pub unanswered: u8,
    pub room: u16,
}

impl State {
    /// Takes in the reply (or the `count` replies) numbered from `seq`; true when the session must
    /// be woken for it.
    fn push(&mut self, seq: u64, count: u32, result: BackendResult) -> bool {
        let count = count.max(1);
        let last = seq + u64::from(count - 1);
        let bytes = result.as_ref().map_or(0, |reply| reply.len());
        for n in seq..last {
            self.replies.push((n, result.clone()));
        }
        self.replies.push((last, result));
        let Some(awaited) = &mut self.awaited else {
            return true;
        };
        if seq < awaited.first || last > awaited.first + u64::from(awaited.span) {
            return true;
        }
        let bytes = u16::try_from(bytes).unwrap_or(u16::MAX);
        awaited.unanswered = awaited
            .unanswered
            .saturating_sub(u8::try_from(count).unwrap_or(u8::MAX));
        awaited.room = awaited.room.saturating_sub(bytes);
        awaited.unanswered == 0 || awaited.room == 0
    }

    /// The waker, when a reply has made the session's wait end.
    fn wake_if(&mut self, due: bool) -> Option<Waker> {
        match due {
            true => {
                self.awaited = None;
                self.waker.take()
            }
            false => None,
        }
    }
}

impl Inbox {
    pub fn new() -> Arc<Inbox> {
        Arc::new(Inbox::default())
    }

    /// A handle that delivers one reply, numbered `seq`, to this inbox.
    pub fn reply_to(self: &Arc<Self>, seq: u64) -> ReplyTo {
        self.reply_to_each(seq, 1)
    }

    /// A handle that delivers the replies of `count` requests sent as one batch, numbered `seq`,
    /// `seq + 1` and on, each as it arrives.
    pub fn reply_to_each(self: &Arc<Self>, seq: u64, count: u32) -> ReplyTo {
        ReplyTo {
            inbox: Some(self.clone()),
            seq,
            owed: count.max(1),
            last_only: false,
            skip: 0,
        }
    }

    /// A handle for `count` requests sent as one batch whose answer is the last reply alone (MULTI,
    /// the queued commands and EXEC): the others are counted off the stream and dropped, so a batch
    /// of any length takes one number, `seq`.
    pub fn reply_to_last(self: &Arc<Self>, seq: u64, count: u32) -> ReplyTo {
        let mut reply = self.reply_to_each(seq, count);
        reply.last_only = true;
        reply
    }

    /// Delivers what `deliver` puts into the inbox's state, and wakes the session if it must.
    fn deliver(&self, deliver: impl FnOnce(&mut State) -> bool) {
        let waker = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let due = deliver(&mut state);
            state.wake_if(due)
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Until the next [`poll_take`](Self::poll_take) that finds replies, the session is woken only
    /// by the reply that completes `awaited` (by any reply when None).
    pub fn wait_for(&self, awaited: Option<Awaited>) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .awaited = awaited;
    }

    /// Moves every delivered reply into `out`; when there are none, registers to be woken by the
    /// next (see [`wait_for`](Self::wait_for)).
    pub fn poll_take(&self, cx: &mut Context<'_>, out: &mut Vec<(u64, BackendResult)>) -> Poll<()> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.replies.is_empty() {
            match &state.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => state.waker = Some(cx.waker().clone()),
            }
            return Poll::Pending;
        }
        state.awaited = None;
        if out.is_empty() {
            std::mem::swap(out, &mut state.replies);
        } else {
            out.append(&mut state.replies);
        }
        Poll::Ready(())
    }

    /// Takes what has been delivered without waiting.
    #[cfg(test)]
    pub(crate) fn take(&self, out: &mut Vec<(u64, BackendResult)>) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        out.append(&mut state.replies);
    }

    /// Waits for the reply numbered `seq` (for control-path requests that have an inbox of their own).
    pub async fn recv(&self, seq: u64) -> BackendResult {
        let mut got = Vec::new();
        loop {
            std::future::poll_fn(|cx| self.poll_take(cx, &mut got)).await;
            if let Some(i) = got.iter().position(|(s, _)| *s == seq) {
                return got.swap_remove(i).1;
            }
            got.clear();
        }
    }
}

/// The promise of one reply (or of each reply of a batch). Dropping it with replies unanswered (the
/// request never reached a connection, the connection failed) delivers an error for each, so no
/// session waits for a reply that cannot come.
pub struct ReplyTo {
    inbox: Option<Arc<Inbox>>,
    /// The number the next reply is delivered under.
    seq: u64,
    /// Replies still to deliver: more than one for a batch.
    owed: u32,
    /// Only the last reply is delivered, under `seq` (see [`Inbox::reply_to_last`]).
    last_only: bool,
    /// Numbers after `seq` that are not this batch's (a gathered batch's requests are numbered
    /// among the session's requests to other nodes: see [`ReplyTo::take_in`]): bit `i` stands for
    /// number `seq + 1 + i`.
    skip: u64,
}

impl ReplyTo {
    /// For a request sent for its effect alone: its reply goes nowhere.
    pub fn nowhere() -> ReplyTo {
        ReplyTo {
            inbox: None,
            seq: 0,
            owed: 1,
            last_only: false,
            skip: 0,
        }
    }

    /// The number the next reply is delivered under.
    #[cfg(test)]
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    /// Replies still to deliver.
    pub fn owed(&self) -> u32 {
        self.owed
    }

    /// Whether its replies go to `inbox`.
    pub fn is_for(&self, inbox: &Arc<Inbox>) -> bool {
        self.inbox.as_ref().is_some_and(|i| Arc::ptr_eq(i, inbox))
    }

    /// Makes a promise of one more reply, to request number `seq`, sent after the others in the
    /// same batch (see [`crate::backend::gather`]). False when it cannot: `seq` is not after its
    /// last number, or not within [`ReplyTo::SPAN`] of its first.
    pub fn take_in(&mut self, seq: u64) -> bool {
        let last = self.seq + u64::from(self.owed - 1) + u64::from(self.skip.count_ones());
        if self.last_only || seq <= last || seq - self.seq >= ReplyTo::SPAN {
            return false;
        }
        // The numbers between its last and this one are not the batch's.
        let between = seq - last - 1;
        self.skip |= ((1u64 << between) - 1) << (last - self.seq);
        self.owed += 1;
        true
    }

    /// The most numbers a batch taken in by [`ReplyTo::take_in`] spans, first to last: one bit of
    /// `skip` each but the first.
    pub const SPAN: u64 = 64;

    /// Delivers `result` as the answer to every request still owed one: the reply to a single request
    /// (or a batch's last), or a failure shared by the rest of a batch.
    pub fn send(mut self, result: BackendResult) {
        if let Some(inbox) = self.inbox.take() {
            inbox.deliver(|state| self.deliver_into(state, result));
        }
    }

    /// The numbers its replies are still owed under, in order (a `last_only` batch's one number).
    fn numbers(&self) -> impl Iterator<Item = u64> {
        let (mut seq, mut skip) = (self.seq, self.skip);
        let owed = if self.last_only { 1 } else { self.owed };
        (0..owed).map(move |_| {
            let n = seq;
            (seq, skip) = after(seq, skip);
            n
        })
    }

    /// [`send`](Self::send)s each result to its promise, locking and waking each inbox once for a
    /// run of promises to it (a pipelining client's replies come back side by side).
    pub fn send_all(sent: &mut Vec<(ReplyTo, BackendResult)>) {
        let mut rest = sent.drain(..).peekable();
        while let Some((mut first, result)) = rest.next() {
            let Some(inbox) = first.inbox.take() else {
                continue;
            };
            let waker = {
                let mut state = inbox.state.lock().unwrap_or_else(PoisonError::into_inner);
                let mut due = first.deliver_into(&mut state, result);
                while let Some((next, _)) = rest.peek() {
                    if !next.inbox.as_ref().is_some_and(|i| Arc::ptr_eq(i, &inbox)) {
                        break;
                    }
                    let Some((mut next, result)) = rest.next() else {
                        break;
                    };
                    next.inbox = None;
                    due |= next.deliver_into(&mut state, result);
                }
                state.wake_if(due)
            };
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }

    /// Puts what [`send`](Self::send) delivers into an inbox's state, locked by the caller; true
    /// when it must wake the session.
    fn deliver_into(&self, state: &mut State, result: BackendResult) -> bool {
        if self.skip != 0 && self.owed > 1 {
            let mut due = false;
            for n in self.numbers() {
                due |= state.push(n, 1, result.clone());
            }
            return due;
        }
        let count = if self.last_only { 1 } else { self.owed.max(1) };
        state.push(self.seq, count, result)
    }

    /// Takes a batch's next reply (not its last: that goes with [`send`](Self::send)) into `next`,
    /// under its number, to be delivered with the others read with it by
    /// [`deliver_next`](Self::deliver_next). A `last_only` batch drops it.
    pub fn hold_next(&mut self, result: BackendResult, next: &mut Vec<(u64, BackendResult)>) {
        if self.owed <= 1 {
            return;
        }
        self.owed -= 1;
        if self.last_only {
            return;
        }
        if self.inbox.is_some() {
            next.push((self.seq, result));
        }
        (self.seq, self.skip) = after(self.seq, self.skip);
    }

    /// Delivers the replies [`hold_next`](Self::hold_next) took, under one lock of the inbox.
    pub fn deliver_next(&self, next: &mut Vec<(u64, BackendResult)>) {
        if let Some(inbox) = &self.inbox {
            inbox.deliver(|state| {
                let mut due = false;
                for (n, result) in next.drain(..) {
                    due |= state.push(n, 1, result);
                }
                due
            });
        }
        next.clear();
    }
}

/// The number after `seq` in a batch that skips the numbers `skip` marks, and what it skips after.
fn after(seq: u64, skip: u64) -> (u64, u64) {
    let skipped = skip.trailing_ones();
    (
        seq + 1 + u64::from(skipped),
        skip.checked_shr(skipped + 1).unwrap_or(0),
    )
}

impl Drop for ReplyTo {
    fn drop(&mut self) {
        if let Some(inbox) = self.inbox.take() {
            inbox.deliver(|state| self.deliver_into(state, Err(BackendError::Abandoned)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn replies_sent_together_reach_each_inbox_in_order() {
        let (a, b) = (Inbox::new(), Inbox::new());
        let reply = |s: &'static str| Ok(Bytes::from_static(s.as_bytes()));
        let mut sent = vec![
            (a.reply_to(1), reply(":1\r\n")),
            (a.reply_to(2), reply(":2\r\n")),
            (b.reply_to(7), reply(":7\r\n")),
            (a.reply_to_last(3, 4), reply("*0\r\n")),
        ];
        ReplyTo::send_all(&mut sent);
        assert!(sent.is_empty());
        let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
        a.take(&mut got_a);
        b.take(&mut got_b);
        assert_eq!(
            got_a,
            vec![
                (1, reply(":1\r\n")),
                (2, reply(":2\r\n")),
                (3, reply("*0\r\n"))
            ]
        );
        assert_eq!(got_b, vec![(7, reply(":7\r\n"))]);
    }

    #[test]
    fn a_last_only_batch_delivers_its_last_reply_under_its_one_number() {
        let inbox = Inbox::new();
        let mut tx = inbox.reply_to_last(7, 100_002);
        let mut next = Vec::new();
        for _ in 0..100_001 {
            assert!(tx.owed() > 1);
            tx.hold_next(Ok(Bytes::from_static(b"+QUEUED\r\n")), &mut next);
        }
        assert!(next.is_empty(), "none but the last is kept");
        assert_eq!(tx.owed(), 1);
        tx.send(Ok(Bytes::from_static(b"*0\r\n")));
        let mut got = Vec::new();
        inbox.take(&mut got);
        assert_eq!(got, vec![(7, Ok(Bytes::from_static(b"*0\r\n")))]);
        // Cut short, it still answers once.
        drop(inbox.reply_to_last(8, 3));
        inbox.take(&mut got);
        assert_eq!(got[1], (8, Err(BackendError::Abandoned)));
        assert_eq!(got.len(), 2);
    }

    /// A waker that counts its wakes.
    struct Count(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn a_session_waiting_for_a_run_is_woken_once_it_is_answered_or_holds_its_bytes() {
        let count = Arc::new(Count(Default::default()));
        let wakes = || count.0.load(std::sync::atomic::Ordering::SeqCst);
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let inbox = Inbox::new();
        let mut got = Vec::new();
        let reply = |s: &'static str| Ok(Bytes::from_static(s.as_bytes()));
        // Requests 3 to 5 went to three backends; 4 is answered already.
        let run = Awaited {
            first: 3,
            span: 2,
            unanswered: 2,
            room: 100,
        };
        inbox.wait_for(Some(run));
        assert!(inbox.poll_take(&mut cx, &mut got).is_pending());
        inbox.reply_to(5).send(reply(":5\r\n"));
        assert_eq!(wakes(), 0, "one reply of the run is still to come");
        inbox.reply_to(3).send(reply(":3\r\n"));
        assert_eq!(wakes(), 1);
        assert!(inbox.poll_take(&mut cx, &mut got).is_ready());
        assert_eq!(got.len(), 2);

        // A reply outside the run (a later read's, or one that outlived its request) wakes at once.
        got.clear();
        inbox.wait_for(Some(run));
        assert!(inbox.poll_take(&mut cx, &mut got).is_pending());
        inbox.reply_to(9).send(reply(":9\r\n"));
        assert_eq!(wakes(), 2);
        assert!(inbox.poll_take(&mut cx, &mut got).is_ready());

        // So do replies that fill what the session may hold before it writes.
        let small = Awaited { room: 8, ..run };
        inbox.wait_for(Some(small));
        assert!(inbox.poll_take(&mut cx, &mut got).is_pending());
        inbox.reply_to(4).send(reply("$3\r\nabc\r\n"));
        assert_eq!(wakes(), 3);

        // Without a run, any reply wakes.
        got.clear();
        assert!(inbox.poll_take(&mut cx, &mut got).is_ready());
        assert!(inbox.poll_take(&mut cx, &mut got).is_pending());
        drop(inbox.reply_to(4));
        assert_eq!(wakes(), 4);
    }

    #[tokio::test]
    async fn delivers_by_number_and_never_loses_a_dropped_promise() {
        let inbox = Inbox::new();
        let (a, b, c) = (inbox.reply_to(1), inbox.reply_to(2), inbox.reply_to(3));
        c.send(Ok(Bytes::from_static(b"+three\r\n")));
        drop(b);
        a.send(Ok(Bytes::from_static(b"+one\r\n")));
        assert_eq!(inbox.recv(1).await, Ok(Bytes::from_static(b"+one\r\n")));
        let mut rest = Vec::new();
        inbox.take(&mut rest);
        assert!(
            rest.is_empty(),
            "recv consumed what it looked through: {rest:?}"
        );
        let (d, e) = (inbox.reply_to(4), inbox.reply_to(5));
        drop(d);
        e.send(Ok(Bytes::from_static(b":5\r\n")));
        let mut got = Vec::new();
        inbox.take(&mut got);
        assert_eq!(
            got,
            vec![
                (4, Err(BackendError::Abandoned)),
                (5, Ok(Bytes::from_static(b":5\r\n")))
            ]
        );
    }

    #[test]
    fn a_batch_of_numbers_apart_delivers_each_reply_under_its_own_number() {
        let inbox = Inbox::new();
        let reply = |s: &'static str| Ok(Bytes::from_static(s.as_bytes()));
        // Requests 3, 5, 6 and 9 went to one connection; 4, 7 and 8 elsewhere.
        let mut tx = inbox.reply_to(3);
        for n in [5, 6, 9] {
            assert!(tx.take_in(n));
        }
        assert!(!tx.take_in(9), "not after its last");
        assert!(!tx.take_in(3 + ReplyTo::SPAN), "too far from its first");
        assert_eq!(tx.owed(), 4);
        let mut next = Vec::new();
        tx.hold_next(reply("+3\r\n"), &mut next);
        tx.hold_next(reply("+5\r\n"), &mut next);
        tx.deliver_next(&mut next);
        assert!(next.is_empty());
        // Cut short after three replies: the fourth is failed under its own number.
        tx.hold_next(reply("+6\r\n"), &mut next);
        tx.deliver_next(&mut next);
        drop(tx);
        let mut got = Vec::new();
        inbox.take(&mut got);
        assert_eq!(
            got,
            vec![
                (3, reply("+3\r\n")),
                (5, reply("+5\r\n")),
                (6, reply("+6\r\n")),
                (9, Err(BackendError::Abandoned)),
            ]
        );

        // So is a batch of numbers side by side.
        let mut tx = inbox.reply_to_each(20, 3);
        tx.hold_next(reply("+20\r\n"), &mut next);
        tx.deliver_next(&mut next);
        drop(tx);
        got.clear();
        inbox.take(&mut got);
        let abandoned = Err(BackendError::Abandoned);
        assert_eq!(
            got,
            vec![
                (20, reply("+20\r\n")),
                (21, abandoned.clone()),
                (22, abandoned)
            ]
        );

        // Failed whole (its connection lost), each number gets the failure.
        let mut tx = inbox.reply_to(10);
        assert!(tx.take_in(12) && tx.take_in(73));
        assert!(!tx.take_in(74));
        tx.send(Err(BackendError::Abandoned));
        got.clear();
        inbox.take(&mut got);
        let numbers: Vec<_> = got.iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, [10, 12, 73]);
    }
}
