//! Where backend replies are delivered: one inbox per client session instead of a channel per request.
//!
//! A request carries a [`ReplyTo`] (the session's inbox and the request's sequence number); the backend
//! reader drops the reply into the inbox and wakes the session, which puts replies back in request order
//! by their numbers. Compared with a oneshot channel per request this saves an allocation and a channel's
//! worth of atomics on every request, and a session woken once collects every reply that has arrived.

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

    /// Delivers `result` under the numbers `seq..seq + count`.
    fn deliver(&self, seq: u64, count: u32, result: BackendResult) {
        let waker = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let last = seq + u64::from(count.max(1) - 1);
            for n in seq..last {
                state.replies.push((n, result.clone()));
            }
            state.replies.push((last, result));
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Moves every delivered reply into `out`; when there are none, registers to be woken by the next.
    pub fn poll_take(&self, cx: &mut Context<'_>, out: &mut Vec<(u64, BackendResult)>) -> Poll<()> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.replies.is_empty() {
            match &state.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => state.waker = Some(cx.waker().clone()),
            }
            return Poll::Pending;
        }
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
}

impl ReplyTo {
    /// For a request sent for its effect alone: its reply goes nowhere.
    pub fn nowhere() -> ReplyTo {
        ReplyTo {
            inbox: None,
            seq: 0,
            owed: 1,
            last_only: false,
        }
    }

    /// Replies still to deliver.
    pub fn owed(&self) -> u32 {
        self.owed
    }

    /// Delivers `result` as the answer to every request still owed one: the reply to a single request
    /// (or a batch's last), or a failure shared by the rest of a batch.
    pub fn send(mut self, result: BackendResult) {
        if let Some(inbox) = self.inbox.take() {
            let count = if self.last_only { 1 } else { self.owed };
            inbox.deliver(self.seq, count, result);
        }
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
                first.deliver_into(&mut state, result);
                while let Some((next, _)) = rest.peek() {
                    if !next.inbox.as_ref().is_some_and(|i| Arc::ptr_eq(i, &inbox)) {
                        break;
                    }
                    let Some((mut next, result)) = rest.next() else {
                        break;
                    };
                    next.inbox = None;
                    next.deliver_into(&mut state, result);
                }
                state.waker.take()
            };
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }

    /// Puts what [`send`](Self::send) delivers into an inbox's state, locked by the caller.
    fn deliver_into(&self, state: &mut State, result: BackendResult) {
        let count = if self.last_only { 1 } else { self.owed.max(1) };
        let last = self.seq + u64::from(count - 1);
        for n in self.seq..last {
            state.replies.push((n, result.clone()));
        }
        state.replies.push((last, result));
    }

    /// Delivers a batch's next reply (not its last: that goes with [`send`](Self::send)).
    pub fn send_next(&mut self, result: BackendResult) {
        if self.owed <= 1 {
            return;
        }
        self.owed -= 1;
        if self.last_only {
            return;
        }
        if let Some(inbox) = &self.inbox {
            inbox.deliver(self.seq, 1, result);
        }
        self.seq += 1;
    }
}

impl Drop for ReplyTo {
    fn drop(&mut self) {
        if let Some(inbox) = self.inbox.take() {
            let count = if self.last_only { 1 } else { self.owed };
            inbox.deliver(self.seq, count, Err(BackendError::Abandoned));
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
        for _ in 0..100_001 {
            assert!(tx.owed() > 1);
            tx.send_next(Ok(Bytes::from_static(b"+QUEUED\r\n")));
        }
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
}
