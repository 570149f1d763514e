//! The requests a session has not answered yet, and what each waits for.

use std::sync::Arc;

use bytes::Bytes;
use tokio::time::Instant;

use super::parts::SplitRequest;
use super::{moving, pubsub};
use crate::backend::BackendResult;
use crate::route::Slot;

/// A request whose reply the client has not been given yet.
pub(super) enum Pending {
    /// The reply is known (answered locally, or an error decided by slotline).
    Ready(Bytes),
    Wait(Waiting),
    /// A multi-key command cut into parts for several backends.
    Split(Box<SplitRequest>),
    /// A request for a connection of the client's own (a blocking command, EXEC, WATCH), held until
    /// every request before it is answered: it must not overtake them on the other connection.
    Held(Bytes),
    /// (UN)SUBSCRIBE and its kin, waiting for the backends' confirmations.
    PubSub(Box<pubsub::SubRequest>),
    /// In a migrating pool: its keys are being moved to their new home first.
    Moving(Box<moving::Moving>),
}

impl Pending {
    /// Bytes of request frames it keeps (for redirects, or to send later).
    pub(super) fn request_bytes(&self) -> usize {
        match self {
            Pending::Wait(w) => w.frame.len(),
            Pending::Split(s) => s.parts.iter().map(|p| p.w.frame.len()).sum(),
            Pending::Held(frame) => frame.len(),
            Pending::Moving(m) => m.frame.len(),
            Pending::Ready(_) | Pending::PubSub(_) => 0,
        }
    }

    /// Bytes of replies it holds for the client.
    pub(super) fn reply_bytes(&self) -> usize {
        match self {
            Pending::Ready(reply) => reply.len(),
            Pending::Wait(w) => w.reply_bytes(),
            Pending::Split(s) => s.parts.iter().map(|p| p.w.reply_bytes()).sum(),
            Pending::Held(_) | Pending::PubSub(_) | Pending::Moving(_) => 0,
        }
    }

    /// A script or function (counted while it waits: see [`Ctx::running_script`](super::Ctx::running_script)).
    pub(super) fn script(&self) -> bool {
        matches!(self, Pending::Wait(w) if w.scripted.is_some())
    }

    /// Whether later requests must wait for this one: it runs on the client's own connection, where
    /// they would overtake it (or it them) on the shared one.
    pub(super) fn serial(&self) -> bool {
        match self {
            Pending::Held(_) | Pending::PubSub(_) | Pending::Moving(_) => true,
            Pending::Wait(w) => w.own_connection,
            Pending::Split(s) => s.parts.first().is_some_and(|p| p.w.own_connection),
            Pending::Ready(_) => false,
        }
    }
}

pub(super) struct Waiting {
    /// The backend's answer, once it has arrived.
    pub(super) result: Option<BackendResult>,
    /// Kept for redirects: resending costs a reference count, not a copy.
    pub(super) frame: Bytes,
    pub(super) slot: Option<Slot>,
    /// When the request was read, for its latency (redirects included).
    pub(super) sent: Instant,
    pub(super) deadline: Instant,
    pub(super) redirects: u32,
    /// Sent on a connection of the client's own (a blocking command): a redirect is followed on
    /// another connection of the client's own, never on a shared one.
    pub(super) own_connection: bool,
    /// A script or function, with the node it was sent to: its error replies are its own (a script
    /// can return `-MOVED` or `-READONLY` as easily as Redis can), so only a MOVED that the cluster
    /// itself confirms is followed (see `redirect::follow_reply`).
    pub(super) scripted: Option<Arc<str>>,
    /// The command, for INFO commandstats (see [`crate::command::Spec::number`]).
    pub(super) command: u16,
    /// A read sent to a replica: if the replica fails it (connection lost, no answer in time), it
    /// runs once more on the master.
    pub(super) replica: bool,
    /// A write while clients of the pool track keys: its reply waits for its master's feed.
    // Boxed: a request is 8 bytes of it, and nothing is allocated while nobody tracks.
    pub(super) fence: Option<Box<Fence>>,
    /// Read in the same batch as the request before it, and sent as it was: the replies before
    /// it wait for its own (see [`Ctx::holds_output`](super::Ctx::holds_output)).
    pub(super) joined: bool,
}

/// A write's reply held until its master's tracking feed has passed a barrier sent after it (see
/// [`crate::tracking::Tracking::barrier`]): its invalidations are then on their way to the
/// readers before the writer (or anyone it tells) can read the key again.
pub(super) enum Fence {
    /// To be fenced on this master's feed once its reply comes.
    Write(Arc<str>),
    /// The reply, waiting for the barrier.
    Held(BackendResult),
}

impl Fence {
    /// The reply a fence holds, if it holds one; the fence is gone either way.
    pub(super) fn release(fence: &mut Option<Box<Fence>>) -> Option<BackendResult> {
        match *fence.take()? {
            Fence::Held(result) => Some(result),
            Fence::Write(_) => None,
        }
    }
}

impl Waiting {
    /// Its reply and the replies before it go in one write: it came in the same read as the
    /// request before it and went as it was, on a shared connection (not a script's, not a
    /// fenced write's). [`Ctx::holds_output`](super::Ctx::holds_output) holds output for it, and [`awaited`](super::awaited) waits for it.
    pub(super) fn holds_earlier_replies(&self) -> bool {
        self.joined && self.fence.is_none() && self.scripted.is_none()
    }

    /// A reply came for this request: `result`, or its fence's barrier (see [`Fence`]). Returns
    /// the reply to place now; None while a write's reply waits for the barrier, which `barrier`
    /// is asked to send.
    pub(super) fn fenced(
        &mut self,
        result: BackendResult,
        barrier: impl FnOnce(Arc<str>),
    ) -> Option<BackendResult> {
        match self.fence.take().map(|f| *f) {
            // Its barrier passed (or its feed is gone).
            Some(Fence::Held(held)) => Some(held),
            // An error changed nothing (a redirect is sent again unfenced).
            Some(Fence::Write(master))
                if result.as_ref().is_ok_and(|r| r.first() != Some(&b'-')) =>
            {
                barrier(master);
                self.fence = Some(Box::new(Fence::Held(result)));
                None
            }
            _ => Some(result),
        }
    }

    pub(super) fn reply_bytes(&self) -> usize {
        match &self.result {
            Some(Ok(reply)) => reply.len(),
            _ => 0,
        }
    }
}
