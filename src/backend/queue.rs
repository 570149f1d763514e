//! The queue in front of one backend connection: sessions copy their requests into it, the
//! connection task takes what has gathered, one batch per write.
//!
//! A lock around a byte buffer and a deque of reply slots rather than tokio's unbounded channel of
//! messages. A session copies a request's bytes in under the lock it takes anyway, so the request
//! keeps no reference to the client's read buffer and the connection writes the buffer as it
//! finds it; the connection takes its whole batch under one lock, and a push wakes it only when it
//! is waiting. The channel paid several atomic operations on each side of every request, and
//! sharing each request's bytes two more: on a pipelined path that was as much as routing it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, BytesMut};

use super::ReplyTo;
use crate::stats::QueueCount;

/// A queue whose buffer held more than this (a burst, or a backend slower than its clients) gives
/// it up once it has gone out, as the connection gives up a write buffer that grew past it.
const KEEP: usize = 256 * 1024;

/// Sent before a request that follows an ASK redirect, on the same connection.
const ASKING: &[u8] = b"*1\r\n$6\r\nASKING\r\n";

/// A request queued or written: who its replies go to (nobody for an `ASKING`), and its bytes.
pub(super) struct Written {
    pub reply: Option<ReplyTo>,
    pub bytes: usize,
}

impl Written {
    /// Replies it still waits for: more than one for a batch not yet answered in full.
    pub fn owed(&self) -> u32 {
        self.reply.as_ref().map_or(1, ReplyTo::owed)
    }
}

struct State {
    /// The queued requests, back to back, as they will be written.
    bytes: BytesMut,
    /// One slot per queued request (or batch of them), in the order of `bytes`.
    slots: VecDeque<Written>,
    /// Replies the queued requests owe (an `ASKING` owes none that anyone waits for).
    requests: usize,
    /// The most `bytes` held since its buffer was last given up (see [`KEEP`]).
    peak: usize,
    /// Where `requests` and the length of `bytes` are published for the server's stats.
    count: Arc<QueueCount>,
    /// The connection task, when it waits for a request.
    waker: Option<Waker>,
    /// The node still holds the sending end: more requests may come.
    open: bool,
    /// The connection task still holds the receiving end: requests can be taken.
    taken: bool,
}

impl State {
    fn publish(&self) {
        self.count.set(self.requests, self.bytes.len());
    }

    /// Takes the oldest slot off the queue, with the bytes it stands for still in `bytes`.
    fn pop(&mut self) -> Option<Written> {
        let slot = self.slots.pop_front()?;
        self.requests -= slot.reply.as_ref().map_or(0, |r| r.owed() as usize);
        Some(slot)
    }
}

type Shared = Arc<Mutex<State>>;

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A connection's queue, as the node holds it. Dropping it tells the connection that no request
/// will follow those queued.
pub(super) struct Sender(Shared);

/// A connection's queue, as its task holds it. Dropping it fails every request still queued (each
/// request's [`ReplyTo`] answers for itself when dropped).
pub(super) struct Receiver(Shared);

/// A queue whose count is published in `count`.
pub(super) fn queue(count: Arc<QueueCount>) -> (Sender, Receiver) {
    let shared = Arc::new(Mutex::new(State {
        bytes: BytesMut::new(),
        slots: VecDeque::new(),
        requests: 0,
        peak: 0,
        count,
        waker: None,
        open: true,
        taken: true,
    }));
    (Sender(shared.clone()), Receiver(shared))
}

impl Sender {
    /// Queues the complete requests of `frames`, as many as `reply` owes replies, after an
    /// `ASKING` when `asking`. Returns the bytes now queued; gives `reply` back when the connection
    /// task is gone.
    pub fn send<'f>(
        &self,
        frames: impl Iterator<Item = &'f [u8]>,
        asking: bool,
        reply: ReplyTo,
    ) -> Result<usize, ReplyTo> {
        let (waker, queued) = {
            let mut state = lock(&self.0);
            if !state.taken {
                return Err(reply);
            }
            if asking {
                state.bytes.extend_from_slice(ASKING);
                state.slots.push_back(Written {
                    reply: None,
                    bytes: ASKING.len(),
                });
            }
            let before = state.bytes.len();
            for frame in frames {
                state.bytes.extend_from_slice(frame);
            }
            let bytes = state.bytes.len() - before;
            state.peak = state.peak.max(state.bytes.len());
            state.requests += reply.owed() as usize;
            state.slots.push_back(Written {
                reply: Some(reply),
                bytes,
            });
            state.publish();
            (state.waker.take(), state.bytes.len())
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(queued)
    }

    /// Bytes queued now.
    pub fn queued(&self) -> usize {
        lock(&self.0).bytes.len()
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

/// What the connection task has taken off its queue for its next write.
#[derive(Default)]
pub(super) struct Batch {
    /// The requests' bytes.
    pub out: BytesMut,
    /// Their slots, in order.
    pub slots: Vec<Written>,
    /// `out` is the buffer of a burst: dropped, not kept, once written.
    pub burst: bool,
}

impl Receiver {
    /// Moves queued requests into `batch` until it holds `max` slots or `max_bytes` (one more
    /// request may pass the bound). Ready with whether any were taken; Pending, registered to be
    /// woken, while the queue is empty and the node may still send; Ready(false) once it is empty
    /// and no request can follow.
    pub fn poll_take(
        &mut self,
        cx: &mut Context<'_>,
        batch: &mut Batch,
        max: usize,
        max_bytes: usize,
    ) -> Poll<bool> {
        let mut state = lock(&self.0);
        if !state.slots.is_empty() {
            take_into(&mut state, batch, max, max_bytes);
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
    pub fn try_take(&mut self, batch: &mut Batch, max: usize, max_bytes: usize) {
        take_into(&mut lock(&self.0), batch, max, max_bytes);
    }

    /// The next request's slot, its bytes discarded (a connection that cannot write them fails
    /// it); None once none is queued and none can follow.
    pub async fn next_slot(&mut self) -> Option<Written> {
        std::future::poll_fn(|cx| {
            let mut state = lock(&self.0);
            if let Some(slot) = state.pop() {
                state.bytes.advance(slot.bytes);
                if state.slots.is_empty() && state.peak > KEEP {
                    state.bytes = BytesMut::new();
                    state.peak = 0;
                }
                state.publish();
                return Poll::Ready(Some(slot));
            }
            if !state.open {
                return Poll::Ready(None);
            }
            state.waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

fn take_into(state: &mut State, batch: &mut Batch, max: usize, max_bytes: usize) {
    let mut bytes = 0;
    let mut taken = 0;
    while taken < max && batch.out.len() + bytes < max_bytes {
        let Some(slot) = state.pop() else {
            break;
        };
        bytes += slot.bytes;
        taken += 1;
        batch.slots.push(slot);
    }
    let all = bytes == state.bytes.len();
    if all && state.peak > KEEP {
        // The end of a burst: its buffer leaves with this write and nobody keeps it.
        if batch.out.is_empty() {
            batch.out = std::mem::take(&mut state.bytes);
        } else {
            batch.out.extend_from_slice(&state.bytes);
            state.bytes = BytesMut::new();
        }
        batch.burst = true;
        state.peak = 0;
    } else if all && batch.out.is_empty() {
        // Everything queued is taken (the usual case): the buffers trade places, the queue keeps
        // the capacity the last write freed.
        std::mem::swap(&mut batch.out, &mut state.bytes);
    } else {
        batch.out.extend_from_slice(&state.bytes[..bytes]);
        state.bytes.advance(bytes);
    }
    state.publish();
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let queued = {
            let mut state = lock(&self.0);
            state.taken = false;
            state.bytes = BytesMut::new();
            state.requests = 0;
            state.publish();
            std::mem::take(&mut state.slots)
        };
        // Outside the lock: each failed request delivers its error to a session's inbox.
        drop(queued);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{BackendError, Inbox};
    use crate::stats::Queued;
    use std::future::Future;

    #[tokio::test]
    async fn requests_leave_in_order_in_bounded_batches_and_none_is_lost() {
        let inbox = Inbox::new();
        let server = Queued::default();
        let (tx, mut rx) = queue(server.register());
        for seq in 0..5u8 {
            let frame = [b'0' + seq; 10];
            let queued = tx.send(
                [&frame[..]].into_iter(),
                seq == 4,
                inbox.reply_to(seq.into()),
            );
            assert!(queued.is_ok());
        }
        // The server's count: five requests, and an ASKING before the last.
        assert_eq!(
            (server.requests(), server.bytes()),
            (5, 50 + ASKING.len() as u64)
        );
        let mut batch = Batch::default();
        // Two requests, or 15 bytes with one more past them.
        rx.try_take(&mut batch, 2, usize::MAX);
        assert_eq!(batch.slots.len(), 2);
        assert_eq!(&batch.out[..], b"00000000001111111111");
        let mut more = Batch::default();
        rx.try_take(&mut more, 10, 15);
        assert_eq!((more.slots.len(), more.out.len()), (2, 20));
        assert_eq!(&more.out[..], b"22222222223333333333");
        let seqs: Vec<Option<u64>> = batch
            .slots
            .iter()
            .chain(&more.slots)
            .map(|w| w.reply.as_ref().map(ReplyTo::seq))
            .collect();
        assert_eq!(seqs, [Some(0), Some(1), Some(2), Some(3)]);
        assert_eq!(
            (server.requests(), server.bytes()),
            (1, 10 + ASKING.len() as u64)
        );

        // The node lets go: what is queued is still taken (an ASK retry, after its ASKING), then
        // the queue says it is over.
        drop(tx);
        let mut last = Batch::default();
        let taken = std::future::poll_fn(|cx| rx.poll_take(cx, &mut last, 10, usize::MAX)).await;
        assert!(taken);
        assert_eq!(&last.out[..], &b"*1\r\n$6\r\nASKING\r\n4444444444"[..]);
        let seqs: Vec<_> = last
            .slots
            .iter()
            .map(|w| w.reply.as_ref().map(ReplyTo::seq))
            .collect();
        assert_eq!(seqs, [None, Some(4)]);
        assert_eq!((server.requests(), server.bytes()), (0, 0));
        let over = std::future::poll_fn(|cx| rx.poll_take(cx, &mut last, 10, usize::MAX)).await;
        assert!(!over);
    }

    #[test]
    fn a_queue_gives_up_the_buffer_of_a_burst_once_it_has_gone_out() {
        let inbox = Inbox::new();
        let (tx, mut rx) = queue(Default::default());
        let request = vec![b'x'; 100 * 1024];
        let send = |seq| tx.send([&request[..]].into_iter(), false, inbox.reply_to(seq));
        // Small requests: the queue and the connection trade one buffer back and forth.
        assert!(send(0).is_ok());
        let mut batch = Batch::default();
        rx.try_take(&mut batch, 10, usize::MAX);
        assert!(!batch.burst);
        assert!(lock(&rx.0).bytes.is_empty());

        // A burst of 500 KiB, taken as the connection takes it: some, then the rest after a turn
        // of the scheduler. The queue's buffer leaves with the write, and the connection does not
        // keep it either.
        for seq in 1..=5 {
            assert!(send(seq).is_ok());
        }
        let mut batch = Batch::default();
        rx.try_take(&mut batch, 2, usize::MAX);
        assert!(!batch.burst, "the queue still holds the rest of the burst");
        rx.try_take(&mut batch, 10, usize::MAX);
        assert_eq!(batch.slots.len(), 5);
        assert!(batch.burst);
        assert_eq!(
            lock(&rx.0).bytes.capacity(),
            0,
            "the queue kept the burst's buffer"
        );

        // The same when a failing connection discards what is queued.
        for seq in 6..=9 {
            assert!(send(seq).is_ok());
        }
        let mut discarded = 0;
        while lock(&rx.0).slots.front().is_some() {
            let slot = next_now(&mut rx);
            discarded += slot.map_or(0, |w| w.bytes);
        }
        assert_eq!(discarded, 4 * request.len());
        assert_eq!(lock(&rx.0).bytes.capacity(), 0);
    }

    /// The next slot, taken without waiting (one is queued).
    fn next_now(rx: &mut Receiver) -> Option<Written> {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        match std::pin::pin!(rx.next_slot()).poll(&mut cx) {
            Poll::Ready(slot) => slot,
            Poll::Pending => None,
        }
    }

    #[tokio::test]
    async fn a_waiting_connection_is_woken_by_a_request_and_a_gone_one_fails_them() {
        let inbox = Inbox::new();
        let (tx, mut rx) = queue(Default::default());
        let waiting = tokio::spawn(async move {
            let got = rx.next_slot().await.and_then(|w| w.reply).map(|r| r.seq());
            (got, rx)
        });
        tokio::task::yield_now().await;
        assert!(tx
            .send([&b"x"[..]].into_iter(), false, inbox.reply_to(7))
            .is_ok());
        let (got, rx) = waiting.await.expect("the connection task");
        assert_eq!(got, Some(7));

        // Queued, then the connection task ends: the request is answered with an error.
        assert!(tx
            .send([&b"y"[..]].into_iter(), false, inbox.reply_to(8))
            .is_ok());
        drop(rx);
        assert_eq!(inbox.recv(8).await, Err(BackendError::Abandoned));
        assert!(tx
            .send([&b"z"[..]].into_iter(), false, inbox.reply_to(9))
            .is_err());
    }
}
