//! Start-up, readiness and graceful shutdown.
//!
//! On SIGTERM the process turns unready, closes its listeners, and lets each client finish: a session
//! keeps reading while its client keeps sending, and sees end-of-input once the client has been quiet
//! for [`QUIET`]. A session that sees end-of-input answers everything it has read and then closes, so no
//! request that reached slotline is dropped. "Nothing pending" alone would not be enough: a pipelining
//! client is between two batches the moment its last reply leaves, and closing then would lose the batch
//! it is writing. Shortly before the grace period ends, every session sees end-of-input at once.
//!
//! All of this lives in a wrapper around the session's read half ([`DrainRead`]), so the session loop
//! itself knows nothing about shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Sleep;

/// How long a client must send nothing, once shutdown has begun, before its connection is closed.
pub const QUIET: Duration = Duration::from_millis(500);

/// Where the process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Pools are being set up; not ready.
    Starting = 0,
    Serving = 1,
    /// SIGTERM: no new clients; clients are closed once quiet.
    Draining = 2,
    /// The grace period is nearly over: every client stops being read and is closed once answered.
    Closing = 3,
}

/// Which signal asked the process to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM: drain within `shutdown_grace`.
    Graceful,
    /// SIGINT: stop now.
    Fast,
}

/// The phase, and a way to wake every session when it changes.
pub struct Lifecycle {
    phase: AtomicU8,
    /// The waker of each session blocked reading, by client id.
    sessions: Mutex<HashMap<u64, Arc<WakeSlot>>>,
    /// Notified whenever a session ends.
    ended: Notify,
}

/// Where a session's read half leaves its waker while it waits for input, and a flag that ends the
/// session's input (CLIENT KILL).
#[derive(Default)]
pub struct WakeSlot(Mutex<Option<Waker>>, AtomicBool);

impl WakeSlot {
    fn register(&self, waker: &Waker) {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *slot = Some(waker.clone());
        }
    }

    fn wake(&self) {
        if let Some(waker) = self.0.lock().unwrap_or_else(PoisonError::into_inner).take() {
            waker.wake();
        }
    }
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            phase: AtomicU8::new(Phase::Starting as u8),
            sessions: Mutex::new(HashMap::new()),
            ended: Notify::new(),
        }
    }
}

impl Lifecycle {
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Starting,
            1 => Phase::Serving,
            2 => Phase::Draining,
            _ => Phase::Closing,
        }
    }

    /// Moves to `phase` and wakes every session so that it looks at the new phase.
    pub fn enter(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Release);
        let slots: Vec<Arc<WakeSlot>> = self
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        for slot in slots {
            slot.wake();
        }
    }

    /// Registers a new session; its read half is wrapped so that it sees end-of-input at shutdown.
    pub fn track<R>(self: &Arc<Self>, id: u64, read: R) -> DrainRead<R> {
        let slot = Arc::new(WakeSlot::default());
        self.sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, slot.clone());
        DrainRead {
            inner: read,
            life: self.clone(),
            slot,
            quiet: None,
        }
    }

    fn slot(&self, id: u64) -> Option<Arc<WakeSlot>> {
        self.sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned()
    }

    /// Ends the input of session `id` (CLIENT KILL): it answers what it has read and closes, as when
    /// its client leaves. False when there is no such session.
    pub fn kill(&self, id: u64) -> bool {
        match self.slot(id) {
            Some(slot) => {
                slot.1.store(true, Ordering::Release);
                slot.wake();
                true
            }
            None => false,
        }
    }

    /// Wakes session `id` if it waits for input, so that it looks at what was left for it
    /// (tracking invalidations).
    pub fn nudge(&self, id: u64) {
        if let Some(slot) = self.slot(id) {
            slot.wake();
        }
    }

    /// Forgets a session that has ended.
    pub fn untrack(&self, id: u64) {
        self.sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        self.ended.notify_waiters();
    }

    pub fn sessions(&self) -> usize {
        self.sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Waits until no session is left; false if `deadline` comes first.
    pub async fn all_ended(&self, deadline: tokio::time::Instant) -> bool {
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if self.sessions() == 0 {
                return true;
            }
            tokio::select! {
                _ = ended => {}
                _ = tokio::time::sleep_until(deadline) => return self.sessions() == 0,
            }
        }
    }
}

/// A client's read half that reports end-of-input when shutdown wants the client gone.
pub struct DrainRead<R> {
    inner: R,
    life: Arc<Lifecycle>,
    slot: Arc<WakeSlot>,
    /// Started when the client went quiet during a drain.
    quiet: Option<Pin<Box<Sleep>>>,
}

impl<R: AsyncRead + Unpin> AsyncRead for DrainRead<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.life.phase() == Phase::Closing || this.slot.1.load(Ordering::Acquire) {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if read.is_ready() {
            if buf.filled().len() > before {
                // The client is still talking: it is not quiet, whatever the phase.
                this.quiet = None;
            }
            return read;
        }
        // Waiting for input: leave a way to be woken when the phase changes, then look at the phase
        // again, so that a change made in between is not missed.
        this.slot.register(cx.waker());
        let phase = this.life.phase();
        if phase == Phase::Closing || this.slot.1.load(Ordering::Acquire) {
            return Poll::Ready(Ok(()));
        }
        if phase == Phase::Draining {
            let quiet = this
                .quiet
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(QUIET)));
            if quiet.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(()));
            }
        }
        Poll::Pending
    }
}
