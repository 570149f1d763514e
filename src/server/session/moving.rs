//! A migrating pool's requests whose keys move first (see [`crate::migrate`]): the MIGRATEs run on
//! the old servers, and only once all have answered is the request dispatched again, to the new
//! placement. It is serial: nothing after it is read until it has gone, so no later request of the
//! client overtakes it.

use std::sync::Arc;

use bytes::Bytes;
use tokio::time::Instant;

use super::parts::part_seq;
use super::view::View;
use super::{Ctx, Pending};
use crate::backend::BackendResult;
use crate::command::{Request, Spec};
use crate::migrate::Migration;
use crate::protocol::RequestParser;

pub(super) struct Moving {
    /// The request as it came, dispatched again once its keys have moved.
    pub(super) frame: Bytes,
    /// One per MIGRATE, as they arrive.
    pub(super) replies: Vec<Option<BackendResult>>,
    pub(super) deadline: Instant,
}

impl Moving {
    pub(super) fn waiting(&self) -> bool {
        self.replies.iter().any(Option::is_none)
    }
}

/// A sampled read of a migrating pool (see [`crate::migrate`]'s shadow reads): its first key is
/// looked for everywhere but `read_on`.
pub(super) fn shadow_read(
    migration: &Arc<Migration>,
    frame: &Bytes,
    spec: &Spec,
    read_on: &Arc<str>,
) {
    let Some(parser) = RequestParser::parsed_again(frame) else {
        return;
    };
    let req = Request {
        frame,
        args: parser.args(),
    };
    let mut first = None;
    req.for_each_key(spec, |key| {
        first.get_or_insert(key);
    });
    if let Some(key) = first {
        migration.shadow(key, read_on);
    }
}

impl Ctx {
    /// A migrating pool that is starting holds every command that reaches a node (and one that
    /// verifies, while it cannot be sure no other slotline moves keys); a client whose connections
    /// of its own lead to old servers that no longer serve can run nothing more on them. True when
    /// `frame` was held or refused.
    pub(super) fn migration_holds(&mut self, spec: &Spec, frame: &Bytes, now: Instant) -> bool {
        let Some(migration) = self.pool.migration.clone() else {
            return false;
        };
        if migration.stale(self.client.id()) {
            self.error(
                "ERR slotline: the pool's migration started; this connection's transaction, \
                 blocking command or subscriptions were on the old servers and it is closed",
            );
            self.closing = true;
            return true;
        }
        match migration.holding(now) {
            // Answered by slotline itself (PING, INFO, CLIENT ...): no node is involved.
            Some(_) if spec.route == crate::command::Route::Local => false,
            Some(hold) => {
                self.pause_watch(hold);
                self.hold(frame);
                true
            }
            None => false,
        }
    }

    /// In a migrating pool: sends the MIGRATEs `req`'s keys need and holds it until they answer;
    /// true when it did (or refused the request), false when the request may go on now.
    pub(super) fn move_keys_first(
        &mut self,
        req: Request<'_>,
        spec: &Spec,
        frame: &Bytes,
        view: &View<'_>,
        now: Instant,
    ) -> bool {
        let Some(migration) = self.pool.migration.clone() else {
            return false;
        };
        if let Some(refusal) = migration.refusal(spec) {
            self.error(&refusal);
            return true;
        }
        let pick = self.client.id() as usize;
        let new_home = |key: &[u8]| view.target(view.place_of(key), pick).cloned();
        let moves = match migration.moves(req, spec, &new_home) {
            Ok(moves) if moves.is_empty() => return false,
            Ok(moves) => moves,
            Err(e) => {
                self.error(&e);
                return true;
            }
        };
        let seq = self.front_seq + self.pending.len() as u64;
        for (i, (node, migrate)) in moves.iter().enumerate() {
            node.send(pick, migrate, false, self.inbox.reply_to(part_seq(seq, i)));
        }
        self.push(Pending::Moving(Box::new(Moving {
            frame: frame.clone(),
            replies: vec![None; moves.len()],
            deadline: now + std::time::Duration::from_millis(self.pool.config.timeout),
        })));
        true
    }

    /// The oldest request is a [`Moving`] one: once every MIGRATE answered, it is dispatched again
    /// (to where its keys are now), or answered with the error that kept a key from moving. False
    /// while MIGRATEs are still under way.
    pub(super) fn settle_moving(&mut self) -> bool {
        let Some(Pending::Moving(moving)) = self.pending.front() else {
            return false;
        };
        if moving.waiting() {
            return false;
        }
        let failure = moving.replies.iter().flatten().find_map(|r| match r {
            Ok(reply) if Migration::migrated(reply) => None,
            Ok(reply) => Some(String::from_utf8_lossy(reply).trim_end().to_string()),
            Err(e) => Some(e.to_string()),
        });
        let moved = moving
            .replies
            .iter()
            .flatten()
            .any(|r| r.as_ref().is_ok_and(|reply| reply.starts_with(b"+OK")));
        let frame = moving.frame.clone();
        if let Some(why) = failure {
            let why = why.trim_start_matches('-');
            self.error_now(&format!(
                "ERR slotline: a key could not move to its new home: {why}"
            ));
            self.pop_front();
            return true;
        }
        if let Some(migration) = &self.pool.migration {
            migration.touched(moved);
        }
        let decided = self.pop_front();
        self.moved = true;
        self.release(frame, decided);
        true
    }
}
