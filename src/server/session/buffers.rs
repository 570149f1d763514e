//! A session's buffers, held only while they hold something, so that an idle client costs no buffer
//! at all.
//!
//! Input is read into the worker thread's arena: whole requests are cut out of it as shared slices
//! (forwarded without a copy), and only a request that has not fully arrived is copied into a buffer
//! of the client's own, which grows with the bytes that arrive, never with a length the client
//! merely declared. Output is composed in the worker's scratch buffer and written at once; only what
//! the socket would not take is copied into a buffer of the client's own.
//!
//! Thread-local buffers are borrowed only within one synchronous step (a poll, or the session's step
//! between two awaits), never across an await, so a task moving between threads is no concern.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

/// The arena a worker reads into: replaced by a new block when little room is left (the old one is
/// freed once the requests cut from it are answered).
const ARENA_BLOCK: usize = 64 * 1024;
/// A read gets at least this much room.
const MIN_READ: usize = 4 * 1024;
/// A scratch buffer that grew past this (a large reply) is not kept for the next session.
const SCRATCH_KEEP: usize = 256 * 1024;

thread_local! {
    static ARENA: RefCell<BytesMut> = RefCell::new(BytesMut::new());
    static SCRATCH: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// Bytes held for clients that have not authenticated, across the whole process: no number of such
/// clients may hold more, whatever each may send.
pub(crate) struct Budget {
    held: AtomicUsize,
    limit: usize,
}

impl Budget {
    pub(crate) fn new(limit: usize) -> Budget {
        Budget {
            held: AtomicUsize::new(0),
            limit,
        }
    }

    fn take(&self, n: usize) -> bool {
        self.held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                (held + n <= self.limit).then_some(held + n)
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.held.fetch_sub(n, Ordering::Relaxed);
    }

    #[cfg(test)]
    fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

/// A client's unparsed input.
pub(super) struct Input {
    /// What was read and not yet cut into requests; empty between requests.
    pub(super) buf: BytesMut,
    /// `buf` is a piece of the worker's arena (just read), not the client's own.
    in_arena: bool,
    /// Until the client authenticates: the budget its own buffer is charged to, and the charge.
    budget: Option<Arc<Budget>>,
    charged: usize,
}

/// The unauthenticated-bytes budget could not take a client's partial request.
#[derive(Debug)]
pub(super) struct OverBudget;

impl Input {
    pub(super) fn new(budget: Option<Arc<Budget>>) -> Input {
        Input {
            buf: BytesMut::new(),
            in_arena: false,
            budget,
            charged: 0,
        }
    }

    /// The client authenticated: its input no longer counts against the budget.
    pub(super) fn authenticated(&mut self) {
        if let Some(budget) = self.budget.take() {
            budget.give(std::mem::take(&mut self.charged));
        }
    }

    /// Reads what the client sent: into the arena when nothing is pending, else onto the partial
    /// request, growing its buffer with what arrives (`need`: bytes that request needs in all, when
    /// known, which caps the growth).
    pub(super) fn poll_read<R: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        rd: &mut R,
        need: usize,
    ) -> Poll<io::Result<usize>> {
        if self.buf.is_empty() {
            return ARENA.with(|arena| {
                let mut arena = arena.borrow_mut();
                if arena.capacity() - arena.len() < MIN_READ {
                    *arena = BytesMut::with_capacity(ARENA_BLOCK);
                }
                let read = poll_read_buf(cx, rd, &mut arena);
                if let Poll::Ready(Ok(_)) = read {
                    self.buf = arena.split();
                    self.in_arena = true;
                }
                read
            });
        }
        if self.buf.capacity() - self.buf.len() < MIN_READ {
            // Double what arrived, up to what the request needs: a declared length alone reserves
            // nothing.
            let missing = need.saturating_sub(self.buf.len()).max(MIN_READ);
            let grow = self.buf.len().max(MIN_READ).min(missing);
            if !self.charge(self.buf.capacity() + grow) {
                return Poll::Ready(Err(io::Error::other(
                    "too many bytes held for unauthenticated clients",
                )));
            }
            self.buf.reserve(grow);
        }
        poll_read_buf(cx, rd, &mut self.buf)
    }

    /// After requests were cut from the input: a partial request left in the arena moves into a
    /// buffer of the client's own (the arena block goes on to other clients); an empty buffer is let
    /// go.
    pub(super) fn settle(&mut self) -> Result<(), OverBudget> {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
            self.in_arena = false;
            self.charge(0);
            return Ok(());
        }
        if self.in_arena {
            let capacity = (self.buf.len() * 2).max(MIN_READ);
            if !self.charge(capacity) {
                return Err(OverBudget);
            }
            let mut own = BytesMut::with_capacity(capacity);
            own.extend_from_slice(&self.buf);
            self.buf = own;
            self.in_arena = false;
        }
        Ok(())
    }

    /// Charges `capacity` (the client's own buffer) to the budget in place of the previous charge;
    /// false when the budget cannot take it.
    fn charge(&mut self, capacity: usize) -> bool {
        let Some(budget) = &self.budget else {
            return true;
        };
        if capacity > self.charged && !budget.take(capacity - self.charged) {
            return false;
        }
        if capacity < self.charged {
            budget.give(self.charged - capacity);
        }
        self.charged = capacity;
        true
    }
}

impl Drop for Input {
    fn drop(&mut self) {
        self.authenticated();
    }
}

fn poll_read_buf<R: AsyncRead + Unpin>(
    cx: &mut Context<'_>,
    rd: &mut R,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    // Polled once and dropped: a read future that returned Pending has read nothing, and the waker
    // it registered stays registered.
    let read = rd.read_buf(buf);
    tokio::pin!(read);
    read.as_mut().poll(cx)
}

/// The worker's scratch buffer, for composing one step's output (empty, with whatever capacity the
/// worker has kept).
pub(super) fn take_scratch() -> BytesMut {
    SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()))
}

/// Gives a scratch buffer back to the worker, emptied.
pub(super) fn give_scratch(mut buf: BytesMut) {
    buf.clear();
    // A write advanced the buffer's start, so its capacity counts only what lies past the bytes
    // written: a grown block written out reads as small. Reclaiming its front (no allocation, no
    // copy: it is empty) shows the block's whole size.
    if buf.try_reclaim(SCRATCH_KEEP + 1) {
        return;
    }
    SCRATCH.with(|s| *s.borrow_mut() = buf);
}

/// The client's socket, and whether TLS records written to it still wait for room: a TLS stream
/// keeps the records the socket would not take until it is flushed (for a plain socket, flushing
/// is a no-op and they never wait). One flag beside the socket, so that an idle session is no
/// larger for it.
pub(super) struct Writer<W> {
    pub(super) io: W,
    unflushed: bool,
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    pub(super) fn new(io: W) -> Writer<W> {
        Writer {
            io,
            unflushed: false,
        }
    }

    /// Whether written records wait for the socket: it must be polled again, with nothing to add.
    pub(super) fn unflushed(&self) -> bool {
        self.unflushed
    }

    /// Writes as much of `out` as the socket takes now. Ready(Ok(n)) once it took everything or
    /// nothing more (n bytes in all); Pending, with the waker registered, when the socket is full.
    /// Once everything is taken the socket is flushed, and [`unflushed`](Self::unflushed) says
    /// whether that finished.
    pub(super) fn poll_write_out(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        let mut written = 0;
        while !out.is_empty() {
            match Pin::new(&mut self.io).poll_write(cx, out) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    out.advance(n);
                    written += n;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending if written > 0 => return Poll::Ready(Ok(written)),
                Poll::Pending => return Poll::Pending,
            }
        }
        match Pin::new(&mut self.io).poll_flush(cx) {
            Poll::Ready(Ok(())) => self.unflushed = false,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {
                self.unflushed = true;
                if written == 0 {
                    return Poll::Pending;
                }
            }
        }
        Poll::Ready(Ok(written))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scratch_buffer_that_grew_is_not_kept_even_once_written_out() {
        let mut big = BytesMut::with_capacity(4 * SCRATCH_KEEP);
        big.extend_from_slice(&vec![b'x'; 4 * SCRATCH_KEEP - 100]);
        // As the socket took it: the start advances past what was written.
        big.advance(big.len());
        assert!(
            big.capacity() <= SCRATCH_KEEP,
            "written out, it reads as small"
        );
        give_scratch(big);
        let mut kept = take_scratch();
        assert!(
            !kept.try_reclaim(SCRATCH_KEEP + 1),
            "the worker keeps a block of {} bytes",
            kept.capacity()
        );

        let mut small = BytesMut::with_capacity(1024);
        small.extend_from_slice(b"+OK\r\n");
        give_scratch(small);
        assert!(
            take_scratch().capacity() >= 1024,
            "a small one is kept for the next step"
        );
    }

    #[test]
    fn the_budget_refuses_what_passes_its_limit_and_takes_back_what_is_given() {
        let budget = Arc::new(Budget::new(10_000));
        let mut a = Input::new(Some(budget.clone()));
        assert!(a.charge(8_000));
        let mut b = Input::new(Some(budget.clone()));
        assert!(!b.charge(4_000), "8,000 + 4,000 passes 10,000");
        assert!(b.charge(2_000));
        assert_eq!(budget.held(), 10_000);
        a.authenticated();
        assert_eq!(budget.held(), 2_000);
        drop(b);
        assert_eq!(budget.held(), 0);
    }
}
