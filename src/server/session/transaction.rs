//! MULTI, EXEC, DISCARD, WATCH and UNWATCH: a transaction runs on one backend, on a connection of the
//! client's own.
//!
//! slotline queues the commands itself (answering `+QUEUED`) and learns from their keys which backend
//! the transaction belongs to. EXEC sends MULTI, the commands and EXEC there back to back, and the
//! client gets EXEC's reply. WATCH goes out at once, on the same connection, so that the backend
//! watches the keys for this transaction. A command whose keys live on another backend is refused and
//! aborts the transaction, as Redis aborts on any error while queuing (EXECABORT).
//!
//! A few commands slotline answers itself (SLOWLOG, CLIENT PAUSE ...) are queued too, as Redis
//! queues them: they run when EXEC is sent, and their replies take their places in EXEC's.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

use super::parts::PartToSend;
use super::{Ctx, Pending, Place, View};
use crate::backend::{Node, ReplyTo};
use crate::command::{flags, policy, Merge};
use crate::command::{Request, Spec};

const MULTI: &[u8] = b"*1\r\n$5\r\nMULTI\r\n";
const EXEC: &[u8] = b"*1\r\n$4\r\nEXEC\r\n";
const UNWATCH: &[u8] = b"*1\r\n$7\r\nUNWATCH\r\n";

/// A client's transaction state: on the heap from its first MULTI or WATCH until EXEC, DISCARD or
/// UNWATCH ends it. Most clients never use one, and every session would otherwise carry its 88
/// bytes (an idle client is budgeted at 3 KiB). Reading an idle one reads [`IDLE`]; writing one
/// makes it.
#[derive(Default)]
pub(super) struct Transaction(Option<Box<State>>);

/// A client in no transaction: what an idle one reads ([`IDLE`]), and what MULTI or WATCH starts
/// from. One definition, so the two cannot differ.
const NONE: State = State {
    queuing: false,
    queued: Vec::new(),
    local: Vec::new(),
    queued_bytes: 0,
    place: None,
    node: None,
    watching: false,
    aborted: false,
    writes: false,
    watch_lost: false,
};

static IDLE: State = NONE;

impl std::ops::Deref for Transaction {
    type Target = State;

    fn deref(&self) -> &State {
        self.0.as_deref().unwrap_or(&IDLE)
    }
}

impl std::ops::DerefMut for Transaction {
    fn deref_mut(&mut self) -> &mut State {
        self.0.get_or_insert_with(|| Box::new(NONE))
    }
}

pub(super) struct State {
    /// Between MULTI and EXEC/DISCARD.
    queuing: bool,
    /// The commands for the transaction's backend.
    queued: Vec<Bytes>,
    /// Commands slotline answers itself, each with its place among all the queued ones; and
    /// CONFIG SETs (with `allow_admin`, also in `queued`), which every other node takes as EXEC
    /// leaves (see `queue_config_set`). One list: the session's state is per client.
    local: Vec<Local>,
    /// Bytes of `queued`, bounded by `max_client_request_bytes`.
    queued_bytes: usize,
    /// Where the transaction and its WATCH are bound, once a key names it, and that place's backend.
    place: Option<Place>,
    node: Option<Arc<Node>>,
    watching: bool,
    /// A command was refused while queuing: EXEC will fail with EXECABORT.
    aborted: bool,
    /// A queued command may write: CLIENT PAUSE WRITE holds the EXEC, as Redis does.
    writes: bool,
    /// The connection that held the WATCH is gone (the client switched protocol): EXEC fails as if
    /// a watched key had changed, rather than run unwatched.
    watch_lost: bool,
}

/// A local command queued in a transaction (see [`policy::queued_locally`]), or a CONFIG SET or
/// flush the other nodes take as EXEC leaves.
struct Local {
    /// Its place in the EXEC reply; None for a CONFIG SET or flush, whose reply is the node's.
    at: Option<usize>,
    spec: &'static Spec,
    frame: Bytes,
    args: Vec<(u32, u32)>,
}

impl Transaction {
    /// The backend connection the WATCH was sent on is being dropped.
    pub(super) fn lose_watch(&mut self) {
        if self.watching {
            self.watch_lost = true;
        }
    }

    /// A command was refused while queuing.
    pub(super) fn abort(&mut self) {
        if self.queuing {
            self.aborted = true;
        }
    }
}

impl State {
    /// Between MULTI and EXEC/DISCARD.
    pub(super) fn queuing(&self) -> bool {
        self.queuing
    }

    /// Commands queued since MULTI.
    pub(super) fn queued_count(&self) -> u32 {
        (self.queued.len() + self.answered_here()).min(u32::MAX as usize) as u32
    }

    /// The queued commands slotline answers itself (a queued CONFIG SET, in both lists, is the
    /// node's to answer).
    fn answered_here(&self) -> usize {
        self.local.iter().filter(|l| l.at.is_some()).count()
    }

    /// Whether CLIENT PAUSE WRITE holds this transaction's EXEC.
    pub(super) fn writes(&self) -> bool {
        self.writes
    }
}

impl Ctx {
    /// MULTI, EXEC, DISCARD, WATCH, UNWATCH.
    pub(super) fn transaction(
        &mut self,
        req: Request<'_>,
        spec: &Spec,
        frame: &Bytes,
        view: &View<'_>,
        now: Instant,
    ) {
        match spec.name {
            "multi" if self.tx.queuing => {
                self.reply(|r| r.error("ERR MULTI calls can not be nested"))
            }
            "multi" => {
                self.tx.queuing = true;
                self.tx.writes = false;
                self.reply(|r| r.ok());
            }
            "exec" if !self.tx.queuing => self.error("ERR EXEC without MULTI"),
            "exec" => self.exec(view, now),
            "discard" if !self.tx.queuing => self.error("ERR DISCARD without MULTI"),
            "discard" => {
                self.end_transaction();
                self.reply(|r| r.ok());
            }
            "watch" if self.tx.queuing => {
                self.reply(|r| r.error("ERR WATCH inside MULTI is not allowed"))
            }
            "watch" => {
                let Some(node) = self.bind(req, spec, view) else {
                    return;
                };
                self.tx.watching = true;
                self.on_own(node, frame.clone(), 1, now);
            }
            "unwatch" => {
                let watched = match (self.tx.watching, self.tx.node.clone()) {
                    (true, Some(node)) => Some(node),
                    _ => None,
                };
                if self.tx.queuing {
                    // The transaction keeps its place and backend.
                    self.tx.watch_lost = false;
                    self.tx.watching = false;
                } else {
                    // Nothing is left of it.
                    self.tx = Transaction::default();
                }
                match watched {
                    Some(node) => self.on_own(node, frame.clone(), 1, now),
                    None => self.reply(|r| r.ok()),
                }
            }
            _ => self.error("ERR unknown transaction command"),
        }
    }

    /// A command between MULTI and EXEC: checked, bound to the transaction's backend, and queued.
    pub(super) fn queue(
        &mut self,
        req: Request<'_>,
        spec: &'static Spec,
        frame: &Bytes,
        view: &View<'_>,
    ) {
        if spec.has(flags::NO_MULTI) {
            // Redis's own refusal (SAVE, SHUTDOWN ...), which dooms the transaction as in Redis.
            return self.error("ERR Command not allowed inside a transaction");
        }
        let local = policy::queued_locally(spec);
        if local && self.tx.watching {
            // It would run even when a watched key changed and EXEC runs nothing.
            let msg = format!(
                "ERR {} cannot be part of a transaction with WATCH through slotline",
                spec.display_name()
            );
            return self.error(&msg);
        }
        let flush = matches!(spec.name, "flushdb" | "flushall");
        if (spec.name == "config|set" && self.pool.config.allow_admin)
            || (flush && self.pool.config.allow_flush)
        {
            return self.queue_everywhere(req, spec, frame, view);
        }
        if !local && !policy::queueable(spec) {
            let msg = format!(
                "ERR {} cannot be part of a transaction through slotline",
                spec.display_name()
            );
            return self.error(&msg);
        }
        if self.tx.queued_bytes + frame.len() > self.pool.config.max_client_request_bytes {
            return self.error(
                "ERR slotline: the transaction is larger than max_client_request_bytes allows",
            );
        }
        if local {
            self.tx.queued_bytes += req.frame.len();
            let at = self.tx.queued.len() + self.tx.answered_here();
            self.tx.local.push(Local {
                at: Some(at),
                spec,
                frame: Bytes::copy_from_slice(req.frame),
                args: req.args.to_vec(),
            });
            return self.reply(|r| r.status("QUEUED"));
        }
        if self.bind(req, spec, view).is_some() {
            self.tx.writes |= policy::may_write(spec) && !policy::declares_no_writes(req, spec);
            self.tx.queued_bytes += frame.len();
            self.tx.queued.push(frame.clone());
            self.reply(|r| r.status("QUEUED"));
        }
    }

    /// CONFIG SET (with `allow_admin`), FLUSHDB and FLUSHALL (with `allow_flush`): Redis runs them
    /// inside the transaction, and so they run inside it on the transaction's node, their reply
    /// (an error for a bad value included) in its place in EXEC's; every other node (every other
    /// master, for a flush) takes them as EXEC leaves, and slotline's own settings in a CONFIG SET
    /// change then. Not with WATCH: the other nodes would change even when EXEC runs nothing.
    fn queue_everywhere(
        &mut self,
        req: Request<'_>,
        spec: &'static Spec,
        frame: &Bytes,
        view: &View<'_>,
    ) {
        if self.tx.watching {
            return self.error(&format!(
                "ERR {} cannot be part of a transaction with WATCH through slotline",
                spec.display_name()
            ));
        }
        if self.tx.queued_bytes + 2 * frame.len() > self.pool.config.max_client_request_bytes {
            return self.error(
                "ERR slotline: the transaction is larger than max_client_request_bytes allows",
            );
        }
        if self.bind(req, spec, view).is_some() {
            self.tx.writes |= policy::may_write(spec);
            self.tx.queued_bytes += 2 * frame.len();
            self.tx.queued.push(frame.clone());
            self.tx.local.push(Local {
                at: None,
                spec,
                frame: frame.clone(),
                args: req.args.to_vec(),
            });
            self.reply(|r| r.status("QUEUED"));
        }
    }

    /// Ties the transaction to the place of the request's keys (a cluster slot: Redis Cluster runs a
    /// transaction only within one slot; a server of a sharded pool) and returns its backend; None
    /// (with the client told why) when the keys live apart or elsewhere than the transaction's others.
    fn bind(&mut self, req: Request<'_>, spec: &Spec, view: &View<'_>) -> Option<Arc<Node>> {
        let place = match view.place_of_request(req, spec) {
            Ok(place) => place,
            Err(()) => {
                self.error(&view.cross_error(spec.display_name()));
                return None;
            }
        };
        let pick = self.client.id() as usize;
        if place == Place::Any {
            // Keyless: runs wherever the transaction runs.
            let node = self
                .tx
                .node
                .clone()
                .or_else(|| view.target(place, pick).cloned());
            if node.is_none() {
                self.error("CLUSTERDOWN slotline knows no backend to send this to yet");
            }
            return node;
        }
        if self.tx.place.is_some_and(|bound| bound != place) {
            let msg = format!(
                "CROSSSLOT Keys in request don't hash to the same slot ({} reaches beyond this transaction's {})",
                spec.display_name(),
                match view {
                    View::Cluster(..) => "slot: all keys of a transaction must share one slot; a hash tag such as {user1} keeps them together",
                    View::Shards(_) => "server: all keys of a transaction must live on one server of the pool; a hash_tag keeps them together",
                    View::Primary(..) => "master",
                }
            );
            self.error(&msg);
            return None;
        }
        let Some(node) = view.target_or_refresh(place, pick).cloned() else {
            self.error("CLUSTERDOWN Hash slot not served");
            return None;
        };
        self.tx.place = Some(place);
        self.tx.node = Some(node.clone());
        Some(node)
    }

    fn exec(&mut self, view: &View<'_>, now: Instant) {
        if self.tx.aborted {
            self.end_transaction();
            return self.error("EXECABORT Transaction discarded because of previous errors.");
        }
        if self.tx.watch_lost {
            self.tx = Default::default();
            let null = match self.protocol() {
                3 => "_\r\n",
                _ => "*-1\r\n",
            };
            return self.reply(|r| r.0.extend_from_slice(null.as_bytes()));
        }
        let queued = std::mem::take(&mut self.tx.queued);
        let (local, everywhere): (Vec<Local>, Vec<Local>) = std::mem::take(&mut self.tx.local)
            .into_iter()
            .partition(|l| l.at.is_some());
        let node = self.tx.node.clone();
        let watching = self.tx.watching;
        // EXEC ends the transaction and unwatches, on the backend as here.
        self.tx = Default::default();
        // Slotline's own commands run now, as the transaction leaves: what they start (a pause)
        // follows it, what they clear (the slow log) precedes what it causes.
        let answers: Vec<(usize, Bytes)> = local
            .iter()
            .filter_map(|l| Some((l.at?, self.answer_queued(l))))
            .collect();
        let node = match node {
            Some(node) => node,
            None if queued.is_empty() && !watching => {
                return self.reply(|r| {
                    r.array(answers.len());
                    for (_, answer) in &answers {
                        r.0.extend_from_slice(answer);
                    }
                })
            }
            None => match view.target(Place::Any, self.client.id() as usize) {
                Some(node) => node.clone(),
                None => {
                    return self.error("CLUSTERDOWN slotline knows no backend to send this to yet")
                }
            },
        };
        // One frame, whatever the length: MULTI, the commands and EXEC leave together, and the
        // client's answer is EXEC's reply.
        let size = MULTI.len() + EXEC.len() + queued.iter().map(Bytes::len).sum::<usize>();
        let mut frame = BytesMut::with_capacity(size);
        frame.extend_from_slice(MULTI);
        for command in &queued {
            frame.extend_from_slice(command);
        }
        frame.extend_from_slice(EXEC);
        let requests = u32::try_from(queued.len() + 2).unwrap_or(u32::MAX);
        // Where the commands queued everywhere go besides the transaction's node: every member
        // for a CONFIG SET, every master for a flush.
        let needs = |config: bool| {
            everywhere
                .iter()
                .any(|l| (l.spec.name == "config|set") == config)
        };
        let others = |nodes: Vec<Arc<Node>>| -> Vec<Arc<Node>> {
            nodes
                .into_iter()
                .filter(|n| n.addr() != node.addr())
                .collect()
        };
        let members = match needs(true) {
            true => others(view.members()),
            false => Vec::new(),
        };
        let masters = match needs(false) {
            true => others(view.masters().cloned().collect()),
            false => Vec::new(),
        };
        self.on_own(node, frame.freeze(), requests, now);
        for command in &everywhere {
            let req = Request {
                frame: &command.frame,
                args: &command.args,
            };
            // The transaction's node answers for it; the others follow.
            match command.spec.name {
                "config|set" => {
                    self.set_own_config(req);
                    self.send_for_effect(members.iter(), &command.frame);
                }
                _ => self.send_for_effect(masters.iter(), &command.frame),
            }
        }
        if !answers.is_empty() {
            if let Some(Pending::Split(s)) = self.pending.back_mut() {
                s.merge = Merge::Exec;
                s.spliced = answers;
            }
        }
    }

    /// The reply of a local command queued in the transaction.
    fn answer_queued(&mut self, local: &Local) -> Bytes {
        // A reply goes straight to `out` when nothing is pending: both are set aside meanwhile, and
        // the commands allowed here answer at once, queuing nothing.
        let out = std::mem::take(&mut self.out);
        let pending = std::mem::take(&mut self.pending);
        let req = Request {
            frame: &local.frame,
            args: &local.args,
        };
        crate::server::local::handle(self, req, local.spec);
        let reply = std::mem::replace(&mut self.out, out).freeze();
        self.pending = pending;
        reply
    }

    /// Forgets the transaction, and the WATCH on the backend if there was one.
    pub(crate) fn end_transaction(&mut self) {
        let tx = std::mem::take(&mut self.tx);
        if let (true, Some(node)) = (tx.watching, tx.node.clone()) {
            let own = self.own_node(&node);
            own.send(0, UNWATCH, false, ReplyTo::nowhere());
        }
    }

    /// Sends `frame`, holding `requests` requests, on this client's own connection to `node`; the
    /// client gets the last one's reply.
    fn on_own(&mut self, node: Arc<Node>, frame: Bytes, requests: u32, now: Instant) {
        let own = self.own_node(&node);
        let parts = vec![PartToSend {
            requests,
            ..PartToSend::new(Some(own), frame)
        }];
        let deadline = now + std::time::Duration::from_millis(self.pool.config.timeout);
        self.send_parts(parts, Merge::Last, 0, Vec::new(), true, deadline);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_in_no_transaction_carries_one_pointer_for_it() {
        assert_eq!(
            std::mem::size_of::<Transaction>(),
            std::mem::size_of::<usize>()
        );
        let mut tx = Transaction::default();
        // Reading, and the calls every session may make, leave it unmade.
        assert!(!tx.queuing() && !tx.writes() && tx.queued_count() == 0);
        tx.lose_watch();
        tx.abort();
        assert!(tx.0.is_none());
        // MULTI makes it; EXEC, DISCARD and UNWATCH put the default back.
        tx.queuing = true;
        assert!(tx.0.is_some() && tx.queuing());
        tx.abort();
        assert!(tx.aborted);
        tx = Transaction::default();
        assert!(tx.0.is_none() && !tx.aborted);
    }
}
