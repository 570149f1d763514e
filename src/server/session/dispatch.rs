//! A request on its way: parsed from the client's input, looked up, checked, and sent to its
//! backend, or answered here.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

use super::super::fanout;
use super::super::local::{self, Outcome};
use super::moving;
use super::pending::{Fence, Pending, Waiting};
use super::redirect::own_redirect;
use super::view::{Place, View};
use super::{printable, Ctx, BLOCKING_WAIT};
use crate::backend::{Node, LARGEST_GATHERED};
use crate::command::{self, flags, policy, LookupError, Merge, Request, Route, Spec};
use crate::metrics::ErrorKind;
use crate::protocol::RequestParser;
use crate::route::Slot;

impl Ctx {
    /// Parses and dispatches buffered requests while the pipeline has room. Returns true when it
    /// stopped only because the pipeline is full and input is left.
    pub(super) fn parse_input(
        &mut self,
        parser: &mut RequestParser,
        inbuf: &mut BytesMut,
        max_pending: usize,
    ) -> bool {
        if inbuf.is_empty() || self.closing {
            return false;
        }
        debug_assert!(
            !crate::backend::gathering(),
            "a step began with another's requests gathered"
        );
        // One snapshot of the routing state per batch of requests.
        let pool = self.pool.clone();
        let view = View::of(&pool);
        let now = self.now;
        while !self.closing
            && self.pending.len() < max_pending
            && self.serial == 0
            && self.congested.is_none()
            && self.penalty_ms == 0
        {
            parser.set_unauthenticated(self.user.is_none());
            match parser.parse(inbuf) {
                Ok(Some(len)) => {
                    let raw = inbuf.split_to(len);
                    // An inline command travels on as the RESP array it was read as.
                    let frame = parser.take_inline().unwrap_or_else(|| raw.freeze());
                    if parser.args().is_empty() {
                        continue;
                    }
                    if !self.pending.is_empty() && self.routed_by != view.generation() {
                        // Requests routed by an older snapshot may yet be redirected or resent to
                        // where this one would go at once: it waits for them, or it could overtake.
                        self.hold(&frame);
                        continue;
                    }
                    let (queued, written) = (self.pending.len(), self.out.len());
                    // More requests were read with it (or were already gathered): it may wait for
                    // them, to go to its connection with them.
                    self.gather = !inbuf.is_empty() || self.gathered;
                    self.dispatch(parser.args(), frame, &view, now, true);
                    self.gather = false;
                    if self.reply_mode.is_some() {
                        self.after_dispatch(queued, written, None);
                    }
                }
                Ok(None) => {
                    self.send_gathered();
                    self.flush_stats();
                    return false;
                }
                Err(e) => {
                    // The stream cannot be resynchronised: say why, then close.
                    self.tally.get().error(ErrorKind::Protocol);
                    self.reply(|r| r.error(&format!("ERR {e}")));
                    self.client_err = true;
                    self.closing = true;
                }
            }
        }
        self.send_gathered();
        self.flush_stats();
        if self.own.is_some() || self.pubsub.is_some() {
            if let Some(migration) = &self.pool.migration {
                migration.bind(self.client.id());
            }
        }
        !self.closing && !inbuf.is_empty()
    }

    /// Routes one request; `arrived` is false for a held request dispatched again, which was counted
    /// (and shown to MONITOR) when it first arrived.
    ///
    /// Takes the request's bytes: one that is forwarded keeps them while it waits for its reply (a
    /// clone and a drop per request were two atomic operations on the hottest path).
    pub(super) fn dispatch(
        &mut self,
        args: &[(u32, u32)],
        owned: Bytes,
        view: &View<'_>,
        now: Instant,
        arrived: bool,
    ) {
        let frame = &owned;
        let req = Request { frame, args };
        self.commands += u64::from(arrived);
        self.routed_by = view.generation();
        let moved = std::mem::take(&mut self.moved);
        self.dispatching = crate::cmdstats::NONE;
        let argc = req.argc();
        let cached = self
            .last_command
            .filter(|spec| command::names(req.arg(0), spec.name));
        let looked_up = match cached {
            Some(spec) => Ok(spec),
            None => command::lookup(req.arg(0), (argc > 1).then(|| req.arg(1))),
        };
        let spec = match looked_up {
            Ok(spec) => {
                // Only a command without subcommands is the same spec whatever its arguments.
                if cached.is_none()
                    && !matches!(spec.route, Route::Container | Route::Local)
                    && !spec.name.contains('|')
                {
                    self.last_command = Some(spec);
                }
                self.tally.get().command(spec.family, spec.number);

                self.ran = Some(spec);
                self.dispatching = spec.number;
                spec
            }
            Err(LookupError::UnknownCommand) => return self.unknown_command(req),
            Err(LookupError::UnknownSubcommand) => {
                let msg = format!(
                    "ERR unknown subcommand '{}'. Try {} HELP.",
                    printable(req.arg(1)),
                    printable(req.arg(0)).to_uppercase()
                );
                return self.error(&msg);
            }
        };
        if !spec.arity_ok(argc) {
            return self.error(&format!(
                "ERR wrong number of arguments for '{}' command",
                spec.name
            ));
        }
        if self.user.as_ref().is_some_and(|u| u.retired()) && !self.follow_user() {
            return;
        }
        match &self.user {
            None if !policy::before_auth(spec) => {
                return self.error("NOAUTH Authentication required.")
            }
            Some(user) if !user.unrestricted => {
                if let Err(denial) = user.rules.check(req, spec) {
                    return self.refuse(denial);
                }
            }
            _ => {}
        }
        if let Some(denied) = self.pool.denied.check(req, spec) {
            // Before routing, queuing or holding: a denied command never reaches a node.
            return self.error(&format!(
                "ERR slotline: the '{}' command is denied on this pool (deny_commands)",
                denied.replace('|', " ")
            ));
        }
        let monitors = &self.pool.shared.monitors;
        if arrived && monitors.active() && policy::monitored(spec) {
            monitors.publish(self.client.addr(), (0..argc).map(|i| req.arg(i)));
        }
        if self.pool.migration.is_some() && self.migration_holds(spec, frame, now) {
            return;
        }
        if self.subscriber_mode(req, spec) {
            return;
        }
        if let Some(refusal) = policy::refusal(req, spec) {
            return self.error(refusal);
        }
        // The pool is cloned only when a pause holds this command: a clone per request was two
        // atomic operations on every request's path.
        let held = self.pool.pause_holding(spec, now).is_some();
        let pool = held.then(|| self.pool.clone());
        if let Some(pause) = pool
            .as_deref()
            .and_then(|pool| pool.pause_holding(spec, now))
            // Queued commands wait for EXEC, which waits if one of them may write.
            .filter(|_| !self.tx.queuing() || (spec.name == "exec" && self.tx.writes()))
            .filter(|_| !policy::declares_no_writes(req, spec))
        {
            if pause.writes_only() && !self.tx.queuing() {
                if let Some(read_only) = policy::read_only_twin(spec) {
                    // EVALSHA and FCALL: only the node knows whether the script may write. Its
                    // read-only twin runs it if it may not, and refuses it unrun if it may: then
                    // it is held (see `on_head`).
                    let probe = fanout::with_arg(&req, 0, read_only.name.as_bytes());
                    let seq = self.front_seq + self.pending.len() as u64;
                    self.probes
                        .get_or_insert_with(Box::default)
                        .push((seq, frame.clone()));
                    return match view.place_of_request(req, read_only) {
                        Ok(place) => self.forward(view, place, read_only, probe, now),
                        Err(()) => self.error(&view.cross_error(spec.display_name())),
                    };
                }
            }
            // Held with everything after it, and looked at again when the pause ends or changes
            // (see `drain_ready`).
            self.pause_watch(pause);
            return self.hold(frame);
        }
        if self.pool.read_only && !spec.replica_may_run() {
            // The replica listener, like a replica: reads only, scripts included.
            return self.error("READONLY You can't write against a read only replica.");
        }
        // A migrating pool: keys still on an old server move before the request runs anywhere.
        if !moved && self.move_keys_first(req, spec, frame, view, now) {
            return;
        }
        if self.tracking.is_some() {
            self.track(req, spec);
        }
        if spec.has(flags::WRITE)
            || (spec.family == command::Family::Scripting && !spec.has(flags::READONLY))
        {
            // Its next reads must see this (read-your-writes), wherever it lands.
            self.reads.wrote();
        }
        if self.pool.tracking.active() && spec.has(flags::WRITE) {
            // Anyone's writes, for the order invalidations are told in.
            let mut keys = Vec::new();
            req.for_each_key(spec, |key| keys.push(key));
            self.pool.tracking.wrote_in_order(keys.into_iter());
        }
        if self.tx.queuing() && spec.route != Route::Transaction && !policy::ends_connection(spec) {
            return self.queue(req, spec, frame, view);
        }
        let route = match spec.route {
            _ if policy::answered_from_users(spec) && self.pool.acl.configured() => Route::Local,
            Route::BlockingOption
                if (1..argc).any(|i| req.arg(i).eq_ignore_ascii_case(b"BLOCK")) =>
            {
                Route::Blocking
            }
            Route::BlockingOption => Route::Keyed,
            other => other,
        };
        if !self.pending.is_empty()
            && (matches!(route, Route::Blocking) || policy::after_earlier_replies(spec))
        {
            return self.hold(frame);
        }
        match route {
            // Placed once, key by key: forwarded whole when the keys live together.
            Route::Split(split) if argc > 2 => self.split(req, spec, split, frame, view, now),
            Route::Keyed | Route::Split(_) => match view.place_of_request(req, spec) {
                Ok(place) => {
                    let place = view.for_reads(place, spec, self.read_policy());
                    let script = (spec.family == command::Family::Scripting
                        && matches!(spec.name, "eval" | "eval_ro"))
                    .then(|| owned.slice_ref(req.arg(1)));
                    self.forward(view, place, spec, owned, now);
                    if let Some(body) = script {
                        self.spread_script(&body, view);
                    }
                }
                Err(()) => self.error(&view.cross_error(spec.display_name())),
            },
            Route::Blocking => match view.place_of_request(req, spec) {
                Ok(place) => self.forward_blocking(view, place, owned),
                Err(()) => self.error(&view.cross_error(spec.display_name())),
            },
            Route::AnyNode => self.forward(view, Place::Any, spec, owned, now),
            Route::EveryNode { merge, needs } => {
                self.every_node(spec, merge, needs, frame, view, now)
            }
            Route::Admin(admin) => self.admin(req, spec, admin, frame, view, now),
            Route::Scan => self.scan(req, view, now),
            Route::RunningScript(merge) => self.every_master_apart(frame, merge, view, now),
            Route::Wait => self.wait(req, frame, view, now),
            Route::PubSub => self.pubsub(req, spec, frame, view, now),
            Route::Transaction => self.transaction(req, spec, frame, view, now),
            Route::Local => match local::handle(self, req, spec) {
                Outcome::Answered => {
                    // Answered at once: slow only for a log that keeps every request. AUTH and
                    // HELLO carry passwords, which Redis keeps out of its log too.
                    if self.pool.shared.slowlog.is_slow(Duration::ZERO)
                        && !matches!(spec.name, "auth" | "hello")
                    {
                        self.log_slow(frame, Duration::ZERO);
                    }
                }
                Outcome::Forward => self.forward(view, Place::Any, spec, owned, now),
                Outcome::EveryMaster => self.every_master_apart(frame, Merge::Same, view, now),
                Outcome::Info => self.info_from_nodes(frame, view, now),
                Outcome::NodeLogin { user_at } => self.check_node_login(req, user_at, view, now),
                Outcome::Quit => self.closing = true,
            },
            Route::Unsupported(reason) => self.error(&format!(
                "ERR {} is not supported by slotline: {reason}",
                spec.display_name()
            )),
            Route::Container | Route::BlockingOption => self.error(&format!(
                "ERR wrong number of arguments for '{}' command",
                spec.name
            )),
        }
    }

    /// Sends a command that may block to its backend on a connection of this client's own: on a shared
    /// one it would hold up every other client's requests until it returns. It waits as long as it
    /// blocks (the command's own timeout decides), and the connection closes with the session, which
    /// unblocks it on the server if the client leaves first.
    fn forward_blocking(&mut self, view: &View<'_>, place: Place, frame: Bytes) {
        let pick = self.client.id() as usize;
        let Some(shared) = view.target_or_refresh(place, pick) else {
            return self.no_backend(view, place);
        };
        let deadline = Instant::now() + BLOCKING_WAIT;
        self.on_own_connection(shared, frame, place.slot(), self.now, deadline);
    }

    /// Sends `frame` on this client's own connection to the backend of `shared`, and queues the
    /// request to be answered by its reply.
    pub(super) fn on_own_connection(
        &mut self,
        shared: &Arc<Node>,
        frame: Bytes,
        slot: Option<Slot>,
        sent: Instant,
        deadline: Instant,
    ) {
        let seq = self.front_seq + self.pending.len() as u64;
        self.own_node(shared)
            .send(0, &frame, false, self.inbox.reply_to(seq));
        self.push(Pending::Wait(Waiting {
            result: None,
            frame,
            slot,
            sent,
            deadline,
            redirects: 0,
            own_connection: true,
            scripted: None,
            command: self.command_number(),
            replica: false,
            fence: None,
            joined: false,
        }));
    }

    /// A blocking command's MOVED or ASK, or its UNBLOCKED from a demoted master (it did not run):
    /// sent again on the client's own connection to the node the cluster says, or in a primary pool
    /// to the master found next (see `demoted`), with what it already waited taken off its timeout.
    /// `None`: the reply stands.
    pub(super) fn follow_on_own(&mut self, reply: &[u8]) -> Option<crate::metrics::RedirectKind> {
        if let Some(kind) = self.await_new_master(reply) {
            return Some(kind);
        }
        let Some(Pending::Wait(w)) = self.pending.front_mut() else {
            return None;
        };
        let again = own_redirect(&self.pool, w, reply)?;
        if again.kind == crate::metrics::RedirectKind::Unblocked {
            // The demoted node closes the connection right after that reply: a command sent on it
            // now would be lost with it. Until a refresh, the demoted node is where it goes again.
            self.drop_own(again.node.addr());
        }
        let own = self.own_node(&again.node);
        let reply_to = self.inbox.reply_to(self.front_seq);
        own.send(0, &again.frame, again.asking, reply_to);
        Some(again.kind)
    }

    /// Drops the connections of the client's own, which speak the protocol and carry the login it
    /// had when they were opened; the next transaction or blocking command opens new ones. The
    /// WATCH lived on one of them: the transaction can no longer be checked.
    pub(in crate::server) fn leave_own_connections(&mut self) {
        self.tx.lose_watch();
        self.own = None;
    }

    /// Drops the client's own connection to `addr`, if it has one; the next command for that node
    /// opens a new one. A WATCH may have lived on it (see `leave_own_connections`).
    fn drop_own(&mut self, addr: &str) {
        let Some(own) = self.own.as_deref_mut() else {
            return;
        };
        let before = own.len();
        own.retain(|node| &**node.addr() != addr);
        if own.len() != before {
            self.tx.lose_watch();
        }
    }

    /// This client's own connection to the backend of `shared`, opened on first use.
    pub(in crate::server) fn own_node(&mut self, shared: &Arc<Node>) -> Arc<Node> {
        if let Some(node) = self
            .own
            .iter()
            .flat_map(|own| own.iter())
            .find(|n| n.addr() == shared.addr())
        {
            return node.clone();
        }
        let settings = self.pool.router.own_settings().via(self.via());
        let node = Node::spawn(shared.addr().clone(), &settings);
        self.own.get_or_insert_with(Box::default).push(node.clone());
        node
    }

    /// The node for a request at `place` (a read's as the client's read policy chooses it), and
    /// whether it is a replica; None when no node may take it (a refresh is asked for when the
    /// place has no master).
    #[inline]
    pub(super) fn node_for<'v>(
        &self,
        view: &'v View<'_>,
        place: Place,
        pick: usize,
    ) -> Option<(&'v Arc<Node>, bool)> {
        if !place.is_read() {
            return view
                .target_or_refresh(place, pick)
                .map(|node| (node, false));
        }
        let fresh = self.reads.fresh(self.pool.config.read_your_writes);
        let found = view.read_target(place, self.read_policy(), fresh, pick);
        if found.is_none() && view.target(place, pick).is_none() {
            view.request_refresh();
        }
        found
    }

    /// Sends a request to the backend its keys belong to (any backend when it has none).
    pub(super) fn forward(
        &mut self,
        view: &View<'_>,
        place: Place,
        spec: &Spec,
        frame: Bytes,
        now: Instant,
    ) {
        let pick = self.client.id() as usize;
        let Some((node, replica)) = self.node_for(view, place, pick) else {
            return self.no_backend(view, place);
        };
        let seq = self.front_seq + self.pending.len() as u64;
        let to = node.via(self.via());
        if self.gather && frame.len() <= LARGEST_GATHERED {
            if let Some(congested) = to.send_soon(pick, &frame, &self.inbox, seq) {
                self.congested = Some(congested);
            }
            self.gathered = true;
        } else if to.send(pick, &frame, false, self.inbox.reply_to(seq)) {
            self.congested = Some(to.clone());
        }
        if let Some(migration) = self.pool.migration.as_ref() {
            if spec.has(crate::command::flags::READONLY) && migration.shadow_sample() {
                moving::shadow_read(migration, &frame, spec, node.addr());
            }
        }
        let slot = place.slot();
        let scripted = spec.runs_script().then(|| node.addr().clone());
        // Counted here, the one place scripts are queued, and uncounted when they leave.
        self.scripts += usize::from(scripted.is_some());
        let fence = (self.pool.tracking.fencing() && policy::may_write(spec))
            .then(|| Box::new(Fence::Write(node.addr().clone())));
        // Requests parsed in one step share its clock reading: one equal to this one's came in
        // the same read.
        let joined = matches!(self.pending.back(), Some(Pending::Wait(w)) if w.sent == now && !w.own_connection);
        self.push(Pending::Wait(Waiting {
            result: None,
            frame,
            slot,
            sent: now,
            deadline: now + Duration::from_millis(self.pool.config.timeout),
            redirects: 0,
            own_connection: false,
            scripted,
            command: self.command_number(),
            replica,
            fence,
            joined,
        }));
    }

    /// Gives every master the script an EVAL just sent runs, the first time the pool sees it (see
    /// [`crate::scripts`]).
    fn spread_script(&mut self, body: &[u8], view: &View<'_>) {
        if view.node_count() < 2 || !self.pool.scripts.first_sight(view.generation(), body) {
            return;
        }
        let mut load = bytes::BytesMut::new();
        crate::protocol::Reply(&mut load).command(&[b"SCRIPT", b"LOAD", body]);
        // Nobody waits for the answer: a script that does not compile fails its EVAL anyway.
        self.send_for_effect(view.masters(), &load.freeze());
    }

    /// Sends `frame` to each of `nodes` on this client's connections (so its later requests queue
    /// behind it), for its effect alone: the replies go nowhere.
    pub(in crate::server) fn send_for_effect<'n>(
        &self,
        nodes: impl Iterator<Item = &'n Arc<Node>>,
        frame: &Bytes,
    ) {
        let (pick, via) = (self.client.id() as usize, self.via());
        for node in nodes {
            let nowhere = crate::backend::ReplyTo::nowhere();
            node.via(via).send(pick, frame, false, nowhere);
        }
    }

    /// The error for a request no backend can take: why the pool has none, discovery's reason first
    /// when it never found any (an RBAC refusal is not "no ready endpoints").
    pub(super) fn no_backend(&mut self, view: &View<'_>, place: Place) {
        let why = self.pool.discovery().map(|d| d.snapshot());
        let msg = match why {
            Some(s) if !s.has_endpoints => match s.state {
                crate::discovery::SourceState::Failing { reason } => format!(
                    "ERR slotline: pool has no backend: {} could not be read: {reason}",
                    s.source
                ),
                _ => format!(
                    "ERR slotline: pool has no backend: {} has not been read yet",
                    s.source
                ),
            },
            _ => view.no_node(place).to_string(),
        };
        self.error(&msg);
    }

    /// Remembers what a tracking client reads (and, with NOLOOP, writes): see [`crate::tracking`].
    fn track(&mut self, req: Request<'_>, spec: &Spec) {
        let Some(side) = self.tracking.as_deref_mut() else {
            return;
        };
        let (reads, writes) = side.on_command(req, spec);
        if !reads && !writes {
            return;
        }
        let mut keys = Vec::new();
        req.for_each_key(spec, |key| keys.push(key));
        let tracking = &self.pool.tracking;
        if reads {
            tracking.read(self.client.id(), keys.iter().copied(), &self.pool.shared);
        }
        if writes {
            tracking.wrote(self.client.id(), keys.iter().copied());
        }
    }

    /// Refuses a command the user may not run: Redis's error, and an entry in ACL LOG.
    fn refuse(&mut self, denial: crate::acl::Denial) {
        if let Some(user) = &self.user {
            user.stats.denials.fetch_add(1, Ordering::Relaxed);
            let context = if self.tx.queuing() {
                "multi"
            } else {
                "toplevel"
            };
            self.pool.acl.log.note(
                denial.reason.label(),
                context,
                &denial.object,
                user.rules.name.as_bytes(),
                &self.client.record,
            );
        }
        self.error(&denial.message());
    }

    fn unknown_command(&mut self, req: Request<'_>) {
        let mut msg = format!(
            "ERR unknown command '{}', with args beginning with: ",
            printable(req.arg(0))
        );
        for i in 1..req.argc().min(4) {
            msg.push_str(&format!("'{}' ", printable(req.arg(i))));
        }
        self.error(&msg);
    }

    /// Sends what this step gathered (see [`crate::backend::Node::send_soon`]).
    fn send_gathered(&mut self) {
        if std::mem::take(&mut self.gathered) {
            if let Some(congested) = crate::backend::send_gathered() {
                self.congested = Some(congested);
            }
        }
    }
}
