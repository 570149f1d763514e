//! The queue in front of one backend connection: sessions push requests, the connection task takes
//! them in batches, one batch per write.
//!
//! A lock around a deque rather than tokio's unbounded channel. The connection takes its whole
//! batch under one lock, and a push wakes it only when it is waiting; the channel paid several
//! atomic operations on each side of every request, and on a pipelined path that was as much as
//! routing the request.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use super::Message;

struct State {
    queue: VecDeque<Message>,
    /// The connection task, when it waits for a request.
    waker: Option<Waker>,
    /// The node still holds the sending end: more requests may come.
    open: bool,
    /// The connection task still holds the receiving end: requests can be taken.
    taken: bool,
}

type Shared = Arc<Mutex<State>>;

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A connection's queue, as the node holds it. Dropping it tells the connection that no request
/// will follow those queued.
pub(super) struct Sender(Shared);

/// A connection's queue, as its task holds it. Dropping it fails every request still queued (each
/// request's [`super::ReplyTo`] answers for itself when dropped).
pub(super) struct Receiver(Shared);

pub(super) fn queue() -> (Sender, Receiver) {
    let shared = Arc::new(Mutex::new(State {
        queue: VecDeque::new(),
        waker: None,
        open: true,
        taken: true,
    }));
    (Sender(shared.clone()), Receiver(shared))
}

impl Sender {
    /// Queues `msg`; gives it back when the connection task is gone.
    pub fn send(&self, msg: Message) -> Result<(), Message> {
        let waker = {
            let mut state = lock(&self.0);
            if !state.taken {
                return Err(msg);
            }
            state.queue.push_back(msg);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let waker = {
            let mut state = lock(&self.0);
            state.open = false;
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl Receiver {
    /// Moves queued requests into `batch` until it holds `max` of them or `max_bytes` of frames
    /// (counted in `bytes`; one more request may pass the bound). Ready with whether any were
    /// taken; Pending, registered to be woken, while the queue is empty and the node may still
    /// send; Ready(false) once it is empty and no request can follow.
    pub fn poll_take(
        &mut self,
        cx: &mut Context<'_>,
        batch: &mut Vec<Message>,
        max: usize,
        max_bytes: usize,
        bytes: &mut usize,
    ) -> Poll<bool> {
        let mut state = lock(&self.0);
        if !state.queue.is_empty() {
            take_into(&mut state, batch, max, max_bytes, bytes);
            return Poll::Ready(true);
        }
        if !state.open {
            return Poll::Ready(false);
        }
        match &state.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => state.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Takes what is queued, as [`poll_take`](Self::poll_take), without waiting.
    pub fn try_take(
        &mut self,
        batch: &mut Vec<Message>,
        max: usize,
        max_bytes: usize,
        bytes: &mut usize,
    ) {
        take_into(&mut lock(&self.0), batch, max, max_bytes, bytes);
    }

    /// The next request; None once none is queued and none can follow.
    pub async fn recv(&mut self) -> Option<Message> {
        let mut one = Vec::with_capacity(1);
        let mut bytes = 0;
        match std::future::poll_fn(|cx| self.poll_take(cx, &mut one, 1, usize::MAX, &mut bytes))
            .await
        {
            true => one.pop(),
            false => None,
        }
    }
}

fn take_into(
    state: &mut State,
    batch: &mut Vec<Message>,
    max: usize,
    max_bytes: usize,
    bytes: &mut usize,
) {
    while batch.len() < max && *bytes < max_bytes {
        let Some(msg) = state.queue.pop_front() else {
            break;
        };
        *bytes += msg.frame.len();
        batch.push(msg);
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let queued = {
            let mut state = lock(&self.0);
            state.taken = false;
            std::mem::take(&mut state.queue)
        };
        // Outside the lock: each failed request delivers its error to a session's inbox.
        drop(queued);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{BackendError, Inbox};
    use bytes::Bytes;

    fn message(inbox: &Arc<Inbox>, seq: u64, frame: &'static [u8]) -> Message {
        Message {
            frame: Bytes::from_static(frame),
            asking: false,
            reply: inbox.reply_to(seq),
        }
    }

    #[tokio::test]
    async fn requests_leave_in_order_in_bounded_batches_and_none_is_lost() {
        let inbox = Inbox::new();
        let (tx, mut rx) = queue();
        for seq in 0..5 {
            assert!(tx.send(message(&inbox, seq, b"0123456789")).is_ok());
        }
        let (mut batch, mut bytes) = (Vec::new(), 0);
        // Two requests, or 15 bytes with one more past them.
        rx.try_take(&mut batch, 2, usize::MAX, &mut bytes);
        assert_eq!(batch.len(), 2);
        let mut more = Vec::new();
        bytes = 0;
        rx.try_take(&mut more, 10, 15, &mut bytes);
        assert_eq!((more.len(), bytes), (2, 20));
        let seqs: Vec<u64> = batch.iter().chain(&more).map(|m| m.reply.seq()).collect();
        assert_eq!(seqs, [0, 1, 2, 3]);

        // The node lets go: what is queued is still taken, then the queue says it is over.
        drop(tx);
        let last = rx.recv().await.map(|m| m.reply.seq());
        assert_eq!(last, Some(4));
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn a_waiting_connection_is_woken_by_a_request_and_a_gone_one_fails_them() {
        let inbox = Inbox::new();
        let (tx, mut rx) = queue();
        let waiting = tokio::spawn(async move {
            let got = rx.recv().await.map(|m| m.reply.seq());
            (got, rx)
        });
        tokio::task::yield_now().await;
        assert!(tx.send(message(&inbox, 7, b"x")).is_ok());
        let (got, rx) = waiting.await.expect("the connection task");
        assert_eq!(got, Some(7));

        // Queued, then the connection task ends: the request is answered with an error.
        assert!(tx.send(message(&inbox, 8, b"y")).is_ok());
        drop(rx);
        assert_eq!(inbox.recv(8).await, Err(BackendError::Abandoned));
        assert!(tx.send(message(&inbox, 9, b"z")).is_err());
    }
}
