//! A blocking command a primary pool's master gave up as it was demoted (`-UNBLOCKED ... instance
//! state changed`, `-READONLY` from a node that was no longer master when it arrived, or the
//! connection closed once the pool had left that node): it did not run, so it waits on at the
//! master the pool finds next, on the client's own connection, with what it already waited taken
//! off its timeout. A cluster pool's owner of the slot is known at once (see
//! `redirect::own_redirect`); a primary pool's new master may not be yet, so the session looks for
//! it beside its other work and sends the command when it answers as master.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::super::Router;
use super::{Ctx, Pending};
use crate::backend::{BackendError, BackendResult, Node};
use crate::command;
use crate::metrics::RedirectKind;

/// The search for the master a blocking command goes to again.
pub(super) struct NewMaster {
    /// The master once it answers `ROLE` as master; None when none did within the pool's timeout.
    found: Pin<Box<dyn Future<Output = Option<Arc<Node>>> + Send>>,
    /// What the client gets when no master is found: the reply (or the connection's failure) as
    /// it came.
    reply: BackendResult,
}

/// Polls the search, if there is one (the session's loop waits on this beside its other work).
pub(super) fn poll_found(
    search: &mut Option<Box<NewMaster>>,
    cx: &mut Context<'_>,
) -> Poll<Option<Arc<Node>>> {
    match search.as_deref_mut() {
        Some(search) => search.found.as_mut().poll(cx),
        None => Poll::Pending,
    }
}

/// A master giving up a blocking command: Redis's words for a client it unblocks as it turns
/// replica, and its refusal of a write (BLPOP and the like are writes) once it is one.
fn gave_up(reply: &[u8]) -> bool {
    reply.starts_with(super::redirect::DEMOTED) || reply.starts_with(b"-READONLY")
}

impl Ctx {
    /// Begins the search for the new master when `reply`, to the blocking command at the head sent
    /// on the client's own connection in a primary pool, says the master gave it up unrun. `None`:
    /// the reply stands.
    pub(super) fn await_new_master(&mut self, reply: &[u8]) -> Option<RedirectKind> {
        match gave_up(reply) {
            true => self.search_master(|| Ok(Bytes::copy_from_slice(reply))),
            false => None,
        }
    }

    /// The same when the client's own connection to `lost`, with the blocking command at the head
    /// on it, closed after the pool had left that node for another master. Sentinel does that to
    /// the master it demotes (`CLIENT KILL TYPE normal` right after `REPLICAOF`), so the UNBLOCKED
    /// Redis queued never arrives. The command did not run there as far as the pool's data goes:
    /// anything that node did once it was no longer master is dropped when it resyncs from the new
    /// one, and a reply to what it did before would have come long before the close.
    pub(super) fn await_master_after_loss(&mut self, lost: &BackendError) -> Option<RedirectKind> {
        let (Router::Primary(primary), BackendError::Closed(addr)) = (&self.pool.router, lost)
        else {
            return None;
        };
        let left = (primary.roles().master.as_ref()).is_some_and(|master| master.addr() != addr);
        match left {
            true => self.search_master(|| Err(lost.clone())),
            false => None,
        }
    }

    /// Starts the search for the blocking command at the head, sent on the client's own
    /// connection in a primary pool. Only a command whose timeout can be made to count what it
    /// waited goes again, and no more often than a request may be redirected; the client gets
    /// `reply` if no master answers within the pool's timeout. `None`: not such a command.
    fn search_master(&mut self, reply: impl FnOnce() -> BackendResult) -> Option<RedirectKind> {
        let Router::Primary(primary) = &self.pool.router else {
            return None;
        };
        if self.new_master.is_some() {
            return None;
        }
        let Some(Pending::Wait(w)) = self.pending.front_mut() else {
            return None;
        };
        if !w.own_connection
            || w.redirects >= self.pool.config.max_redirects
            || command::with_time_left(&w.frame, Duration::ZERO).is_none()
        {
            return None;
        }
        w.redirects += 1;
        let deadline = Instant::now() + Duration::from_millis(self.pool.config.timeout);
        let primary = primary.clone();
        self.new_master = Some(Box::new(NewMaster {
            found: Box::pin(async move { primary.answering_master(deadline).await }),
            reply: reply(),
        }));
        Some(RedirectKind::Unblocked)
    }

    /// The search ended: the command goes to `found` on a new connection of the client's own (the
    /// demoted master closes the ones it unblocked, and the WATCH a transaction kept there is
    /// lost with it), or the client gets the reply it was given up with.
    pub(super) fn on_new_master(&mut self, found: Option<Arc<Node>>) {
        let Some(search) = self.new_master.take() else {
            return;
        };
        let Some(Pending::Wait(w)) = self.pending.front_mut() else {
            return;
        };
        let again = found.zip(command::with_time_left(&w.frame, w.sent.elapsed()));
        let reply_to = self.inbox.reply_to(self.front_seq);
        match again {
            Some((master, frame)) => {
                self.leave_own_connections();
                self.own_node(&master).send(0, &frame, false, reply_to);
            }
            None => {
                // Answered as it was, not followed again.
                w.redirects = self.pool.config.max_redirects;
                reply_to.send(search.reply);
            }
        }
    }
}
