//! One client connection: read pipelined requests, route each, and write replies strictly in request
//! order, as many per write as are ready.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

mod parts;
mod pubsub;
mod redirect;
mod transaction;
mod view;

use super::fanout;
use super::local::{self, Outcome};
use super::Pool;
use crate::backend::{BackendResult, Inbox, Node};
use crate::command::{self, LookupError, Request, Route, Spec};
use crate::metrics::{ErrorKind, SessionTally};
use crate::protocol::{Reply, RequestParser};
use crate::route::Slot;
use crate::stats;
use parts::{SplitRequest, MAX_PARTS, PART, PART_BITS};
use redirect::{follow_reply, Redirected};
use transaction::Transaction;
use view::{Place, View};

const READ_CHUNK: usize = 16 * 1024;

/// What a client is, as far as commands like CLIENT and HELLO are concerned.
pub(crate) struct ClientState {
    pub id: u64,
    pub addr: String,
    pub name: Option<Bytes>,
    pub lib_name: Option<Bytes>,
    pub lib_ver: Option<Bytes>,
}

/// A request whose reply the client has not been given yet.
enum Pending {
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
}

impl Pending {
    /// Whether later requests must wait for this one: it runs on the client's own connection, where
    /// they would overtake it (or it them) on the shared one.
    fn serial(&self) -> bool {
        match self {
            Pending::Held(_) | Pending::PubSub(_) => true,
            Pending::Wait(w) => w.own_connection,
            Pending::Split(s) => s.parts.first().is_some_and(|p| p.w.own_connection),
            Pending::Ready(_) => false,
        }
    }
}

struct Waiting {
    /// The backend's answer, once it has arrived.
    result: Option<BackendResult>,
    /// Kept for redirects: resending costs a reference count, not a copy.
    frame: Bytes,
    slot: Option<Slot>,
    deadline: Instant,
    redirects: u32,
    /// Sent on a connection of the client's own (a blocking command): a redirect is given to the
    /// client rather than followed on a shared connection.
    own_connection: bool,
    /// A script or function: its error replies are its own (a script can return `-MOVED` or
    /// `-READONLY` as easily as Redis can), so none is followed or retried.
    scripted: bool,
}

/// How long a blocking command may wait: its own timeout argument decides, this only bounds forever.
pub(super) const BLOCKING_WAIT: Duration = Duration::from_secs(365 * 24 * 3600);

/// Everything of a session but its input buffer and parser, so that dispatching can borrow the parsed
/// arguments while changing this.
pub(crate) struct Ctx {
    pub pool: Arc<Pool>,
    pub client: ClientState,
    /// Requests not yet answered to the client, oldest first; `pending[i]` is request number
    /// `front_seq + i`, which is how replies arriving in the inbox find their place.
    pending: VecDeque<Pending>,
    front_seq: u64,
    inbox: Arc<Inbox>,
    /// Replies taken from the inbox, not yet placed.
    arrived: Vec<(u64, BackendResult)>,
    out: BytesMut,
    closing: bool,
    commands: u64,
    /// False until the client gives the pool's `redis_auth` password (always true without one).
    pub authenticated: bool,
    /// The connection ends in an error (protocol error, reset) rather than the client closing it.
    client_err: bool,
    /// Backend connections of this client's own (blocking commands, transactions), closed with the
    /// session.
    own: Vec<Arc<Node>>,
    tx: Transaction,
    /// Pending requests for which later ones must wait (see [`Pending::serial`]).
    serial: usize,
    /// The RESP version the client chose with HELLO (2 until it says otherwise).
    proto: u8,
    /// Subscriptions and the backend connections of its own that carry them, once it subscribes.
    pubsub: Option<Box<pubsub::PubSub>>,
    /// Metrics counted here and added to the pool's once per batch.
    tally: SessionTally,
    /// The routing snapshot the last request was routed by (its generation).
    routed_by: u64,
}

pub(crate) async fn serve<R, W>(mut rd: R, mut wr: W, pool: Arc<Pool>, client: ClientState)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let max_pending = pool.config.max_pending;
    let mut parser = RequestParser::new(crate::protocol::Limits {
        max_request_bytes: pool.config.max_request_bytes,
    });
    let mut inbuf = BytesMut::with_capacity(READ_CHUNK);
    let authenticated = pool.config.redis_auth.is_none();
    let tally = SessionTally::new(&pool.metrics);
    let mut ctx = Ctx {
        pool,
        client,
        pending: VecDeque::new(),
        front_seq: 0,
        inbox: Inbox::new(),
        arrived: Vec::new(),
        out: BytesMut::with_capacity(READ_CHUNK),
        closing: false,
        commands: 0,
        authenticated,
        client_err: false,
        own: Vec::new(),
        tx: Transaction::default(),
        serial: 0,
        proto: 2,
        pubsub: None,
        tally,
        routed_by: 0,
    };
    // One timer per session, re-armed only when the oldest request's deadline moves to a later tick:
    // arming a timer per request would cost more than the rest of the request's work.
    let tick = timer_tick(ctx.pool.config.timeout);
    let epoch = Instant::now();
    let timer = tokio::time::sleep_until(epoch);
    tokio::pin!(timer);
    let mut timer_at = None;
    loop {
        // Never wait with a complete request buffered and room to take it: when the pipeline was full,
        // settling replies makes room, so parse again until the input runs out or the oldest request
        // really has to wait for its backend (then its reply wakes us).
        while ctx.parse_input(&mut parser, &mut inbuf, max_pending) {
            let before = ctx.pending.len();
            ctx.drain_ready();
            if ctx.pending.len() == before {
                break;
            }
        }
        ctx.drain_ready();
        if !ctx.out.is_empty() {
            // Flushed before the write, once per write: a client that has its reply finds the request
            // in the metrics, and they never wait for more input.
            ctx.tally.sent(ctx.out.len());
            ctx.tally.flush(&ctx.pool.metrics);
            // A subscriber that stops reading must not make slotline buffer its messages without end.
            let written = tokio::select! {
                written = wr.write_all(&ctx.out) => written.is_ok(),
                _ = pubsub::overflow(ctx.feed()) => {
                    ctx.drop_slow_subscriber();
                    false
                }
            };
            if !written {
                ctx.client_err = true;
                break;
            }
            ctx.out.clear();
            ctx.wrote();
            if ctx.out.capacity() > 4 * READ_CHUNK {
                // A large reply went out; do not keep its buffer for the life of the connection.
                ctx.out = BytesMut::with_capacity(READ_CHUNK);
            }
        }
        if ctx.closing && (ctx.pending.is_empty() || ctx.blocked()) {
            // A client that has sent everything and waits on a blocking command cannot be told apart
            // from one that left: drop it, so the server unblocks it and hands the data to someone else.
            break;
        }
        let can_read = !ctx.closing && ctx.pending.len() < max_pending;
        if can_read {
            let need = parser.needed().saturating_sub(inbuf.len()).max(READ_CHUNK);
            if inbuf.capacity() - inbuf.len() < need / 2 {
                inbuf.reserve(need);
            }
        }
        let deadline = ctx.head_deadline();
        if let Some(deadline) = deadline {
            let at = round_up(epoch, deadline, tick);
            if timer_at != Some(at) {
                timer.as_mut().reset(at);
                timer_at = Some(at);
            }
        }
        tokio::select! {
            biased;
            // Replies land in `arrived` and are placed and written at the top of the loop.
            _ = std::future::poll_fn(|cx| ctx.inbox.poll_take(cx, &mut ctx.arrived)), if deadline.is_some() => {}
            _ = &mut timer, if deadline.is_some() => {
                timer_at = None;
                // The timer is rounded up, so the oldest request's deadline has passed.
                ctx.on_head(HeadEvent::Timeout);
            }
            read = rd.read_buf(&mut inbuf), if can_read => match read {
                // The client has sent all it will (it may still read, as `nc` does): answer what it
                // sent, then close. If it is gone altogether, the next write fails and ends this.
                Ok(0) => ctx.closing = true,
                Ok(n) => ctx.tally.received(n),
                Err(_) => {
                    ctx.client_err = true;
                    break;
                }
            },
            // Messages and confirmations from the client's subscriber connections (also taken on
            // every pass, so a busy client socket cannot starve them, nor they it).
            woken = pubsub::next_events(&mut ctx.pubsub) => match woken {
                pubsub::Woken::Events => {}
                pubsub::Woken::TooSlow => {
                    ctx.drop_slow_subscriber();
                    ctx.client_err = true;
                    break;
                }
                pubsub::Woken::Placement => ctx.follow_placement(),
            },
        }
    }
    ctx.flush_stats();
    let ended = match ctx.client_err {
        true => &ctx.pool.stats.client_err,
        false => &ctx.pool.stats.client_eof,
    };
    stats::add(ended, 1);
    let _ = wr.shutdown().await;
}

enum HeadEvent {
    Reply(BackendResult),
    Timeout,
}

/// Timeout resolution: a tenth of the timeout, between 1 and 25 ms.
fn timer_tick(timeout_ms: u64) -> Duration {
    Duration::from_millis((timeout_ms / 10).clamp(1, 25))
}

/// `at` rounded up to the next multiple of `tick` after `epoch`.
fn round_up(epoch: Instant, at: Instant, tick: Duration) -> Instant {
    let since = at.saturating_duration_since(epoch).as_nanos();
    let tick_ns = tick.as_nanos().max(1);
    let ticks = since.div_ceil(tick_ns);
    epoch + Duration::from_nanos((ticks * tick_ns).min(u64::MAX as u128) as u64)
}

impl Ctx {
    /// Parses and dispatches buffered requests while the pipeline has room. Returns true when it
    /// stopped only because the pipeline is full and input is left.
    fn parse_input(
        &mut self,
        parser: &mut RequestParser,
        inbuf: &mut BytesMut,
        max_pending: usize,
    ) -> bool {
        if inbuf.is_empty() || self.closing {
            return false;
        }
        // One snapshot of the routing state per batch of requests.
        let pool = self.pool.clone();
        let view = View::of(&pool);
        let now = Instant::now();
        while !self.closing && self.pending.len() < max_pending && self.serial == 0 {
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
                    let req = Request {
                        frame: &frame,
                        args: parser.args(),
                    };
                    self.dispatch(req, &frame, &view, now);
                }
                Ok(None) => {
                    self.flush_stats();
                    return false;
                }
                Err(e) => {
                    // The stream cannot be resynchronised: say why, then close.
                    self.tally.error(ErrorKind::Protocol);
                    self.reply(|r| r.error(&format!("ERR {e}")));
                    self.client_err = true;
                    self.closing = true;
                }
            }
        }
        self.flush_stats();
        !self.closing && !inbuf.is_empty()
    }

    fn dispatch(&mut self, req: Request<'_>, frame: &Bytes, view: &View<'_>, now: Instant) {
        self.commands += 1;
        self.routed_by = view.generation();
        let argc = req.argc();
        let spec = match command::lookup(req.arg(0), (argc > 1).then(|| req.arg(1))) {
            Ok(spec) => {
                self.tally.command(spec.family);
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
        if !self.authenticated && !matches!(spec.name, "auth" | "hello" | "quit") {
            return self.error("NOAUTH Authentication required.");
        }
        if self.subscriber_mode(req, spec) {
            return;
        }
        if argc > 4
            && spec.name == "copy"
            && (3..argc).any(|i| req.arg(i).eq_ignore_ascii_case(b"DB"))
        {
            // Into another database: a pool serves one (with redis_db, not even the one numbered).
            return self
                .error("ERR COPY ... DB is not supported by slotline: a pool serves one database");
        }
        if self.pool.read_only && !spec.replica_may_run() {
            // The replica listener, like a replica: reads only, scripts included.
            return self.error("READONLY You can't write against a read only replica.");
        }
        if self.tx.queuing() && spec.route != Route::Transaction && spec.name != "quit" {
            return self.queue(req, spec, frame, view);
        }
        let route = match spec.route {
            Route::BlockingOption
                if (1..argc).any(|i| req.arg(i).eq_ignore_ascii_case(b"BLOCK")) =>
            {
                Route::Blocking
            }
            Route::BlockingOption => Route::Keyed,
            other => other,
        };
        match route {
            Route::Keyed => match fanout::policy(spec.name) {
                // Placed once, key by key: forwarded whole when the keys live together.
                Some(split) if argc > 2 => self.split(req, spec, split, frame, view, now),
                _ => match view.place_of_request(req, spec) {
                    Ok(place) => {
                        self.forward(view, view.for_reads(place, spec), spec, frame.clone(), now)
                    }
                    Err(()) => self.error(&view.cross_error(spec.display_name())),
                },
            },
            Route::Blocking if !self.pending.is_empty() => self.hold(frame),
            Route::Transaction
                if !self.pending.is_empty()
                    && matches!(spec.name, "exec" | "watch" | "unwatch") =>
            {
                self.hold(frame)
            }
            Route::Blocking => match view.place_of_request(req, spec) {
                Ok(place) => self.forward_blocking(view, place, frame.clone()),
                Err(()) => self.error(&view.cross_error(spec.display_name())),
            },
            Route::AnyNode => self.forward(view, Place::Any, spec, frame.clone(), now),
            Route::EveryNode => self.every_node(req, spec, frame, view, now),
            Route::PubSub => self.pubsub(req, spec, frame, view, now),
            Route::Transaction => self.transaction(req, spec, frame, view, now),
            Route::Local if !self.pending.is_empty() && matches!(spec.name, "hello" | "reset") => {
                // It changes the protocol, and so the connections later requests take: those before
                // it finish on the old ones first.
                self.hold(frame)
            }
            Route::Local => match local::handle(self, req, spec) {
                Outcome::Answered => {}
                Outcome::Forward => self.forward(view, Place::Any, spec, frame.clone(), now),
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
        let pick = self.client.id as usize;
        let Some(shared) = view.target_or_refresh(place, pick) else {
            return self.error(view.no_node(place));
        };
        let node = self.own_node(shared);
        let seq = self.front_seq + self.pending.len() as u64;
        node.send(0, frame.clone(), false, self.inbox.reply_to(seq));
        self.push(Pending::Wait(Waiting {
            result: None,
            frame,
            slot: match place {
                Place::Slot(slot) => Some(slot),
                _ => None,
            },
            deadline: Instant::now() + BLOCKING_WAIT,
            redirects: 0,
            own_connection: true,
            scripted: false,
        }));
    }

    /// The RESP version the client speaks.
    pub(crate) fn protocol(&self) -> u8 {
        self.proto
    }

    /// Switches the client to RESP `proto`: its requests go to backend connections speaking it from now
    /// on. Its own connections speak the old one, so they are dropped (and reopened when needed).
    pub(crate) fn set_protocol(&mut self, proto: u8) {
        if proto != self.proto {
            self.proto = proto;
            // The WATCH lived on one of them: the transaction can no longer be checked.
            self.tx.lose_watch();
            self.own.clear();
        }
    }

    /// This client's own connection to the backend of `shared`, opened on first use.
    pub(super) fn own_node(&mut self, shared: &Arc<Node>) -> Arc<Node> {
        if let Some(node) = self.own.iter().find(|n| n.addr() == shared.addr()) {
            return node.clone();
        }
        let settings = match self.proto {
            3 => self.pool.router.own_settings().resp3(),
            _ => self.pool.router.own_settings(),
        };
        let node = Node::spawn(shared.addr().clone(), &settings);
        self.own.push(node.clone());
        node
    }

    /// Sends a request to the backend its keys belong to (any backend when it has none).
    fn forward(&mut self, view: &View<'_>, place: Place, spec: &Spec, frame: Bytes, now: Instant) {
        let pick = self.client.id as usize;
        let Some(node) = view.target_or_refresh(place, pick) else {
            return self.error(view.no_node(place));
        };
        let seq = self.front_seq + self.pending.len() as u64;
        node.for_protocol(self.proto)
            .send(pick, frame.clone(), false, self.inbox.reply_to(seq));
        let slot = match place {
            Place::Slot(slot) => Some(slot),
            _ => None,
        };
        self.pending.push_back(Pending::Wait(Waiting {
            result: None,
            frame,
            slot,
            deadline: now + Duration::from_millis(self.pool.config.timeout),
            redirects: 0,
            own_connection: false,
            scripted: spec.runs_script(),
        }));
    }

    /// Whether the oldest request is a blocking command still waiting.
    fn blocked(&self) -> bool {
        matches!(self.pending.front(), Some(Pending::Wait(w)) if w.own_connection && w.result.is_none())
    }

    /// When the oldest request gives up, if it is still waiting for a backend.
    fn head_deadline(&self) -> Option<Instant> {
        match self.pending.front() {
            Some(Pending::Wait(w)) if w.result.is_none() => Some(w.deadline),
            Some(Pending::Split(s)) if s.parts.iter().any(|p| p.w.result.is_none()) => {
                Some(s.deadline)
            }
            Some(Pending::PubSub(s)) if s.waiting() => s.deadline,
            _ => None,
        }
    }

    fn push(&mut self, pending: Pending) {
        self.serial += usize::from(pending.serial());
        self.pending.push_back(pending);
    }

    fn pop_front(&mut self) {
        if let Some(pending) = self.pending.pop_front() {
            debug_assert!(self.serial >= usize::from(pending.serial()));
            self.serial = self.serial.saturating_sub(usize::from(pending.serial()));
        }
        self.front_seq += 1;
    }

    /// Holds a request for the client's own connection until everything before it is answered.
    fn hold(&mut self, frame: &Bytes) {
        self.push(Pending::Held(frame.clone()));
    }

    /// Dispatches a held request, now that nothing is before it.
    fn release(&mut self, frame: Bytes) {
        let mut parser = RequestParser::new(crate::protocol::Limits {
            max_request_bytes: frame.len().max(1024),
        });
        if let Ok(Some(_)) = parser.parse(&frame) {
            let pool = self.pool.clone();
            let view = View::of(&pool);
            let req = Request {
                frame: &frame,
                args: parser.args(),
            };
            // It was counted when it first arrived.
            self.commands = self.commands.saturating_sub(1);
            self.dispatch(req, &frame, &view, Instant::now());
        }
    }

    /// Gives each reply taken from the inbox to its request. Replies for requests that already gave up
    /// (timed out) find no place and are dropped.
    fn place_arrived(&mut self) {
        let now = Instant::now();
        let timeout = Duration::from_millis(self.pool.config.timeout);
        for (seq, result) in self.arrived.drain(..) {
            let (seq, part) = match seq & PART {
                0 => (seq, None),
                _ => ((seq & !PART) >> PART_BITS, Some(seq as usize % MAX_PARTS)),
            };
            let Some(i) = seq.checked_sub(self.front_seq) else {
                continue;
            };
            match (self.pending.get_mut(i as usize), part) {
                (Some(Pending::Wait(w)), None) => {
                    // Sent at `deadline - timeout` (redirects included). A blocking command waits as
                    // long as the client asked: not a backend's answer time.
                    if !w.own_connection {
                        let sent = w.deadline.checked_sub(timeout).unwrap_or(now);
                        self.tally
                            .backend_answered(now.saturating_duration_since(sent));
                    }
                    w.result = Some(result);
                }
                (Some(Pending::Split(s)), Some(part)) => {
                    let Some(w) = s.parts.get_mut(part).map(|p| &mut p.w) else {
                        continue;
                    };
                    let sent = w.deadline.checked_sub(timeout).unwrap_or(now);
                    self.tally
                        .backend_answered(now.saturating_duration_since(sent));
                    w.result = Some(result);
                }
                _ => {}
            }
        }
    }

    /// Moves every reply that is already known, from the front of the pipeline, into the output.
    fn drain_ready(&mut self) {
        self.place_arrived();
        self.take_pubsub();
        loop {
            let result = match self.pending.front_mut() {
                None => return,
                Some(Pending::Ready(bytes)) => {
                    self.out.extend_from_slice(bytes);
                    self.pop_front();
                    continue;
                }
                Some(Pending::Wait(w)) => match w.result.take() {
                    Some(result) => result,
                    None => return,
                },
                Some(Pending::Split(_)) => {
                    if self.settle_split() {
                        continue;
                    }
                    return;
                }
                Some(Pending::PubSub(_)) => {
                    if self.settle_pubsub() {
                        continue;
                    }
                    return;
                }
                Some(Pending::Held(frame)) => {
                    let frame = frame.clone();
                    self.pop_front();
                    self.release(frame);
                    continue;
                }
            };
            self.on_head(HeadEvent::Reply(result));
        }
    }

    /// Settles the oldest request: forwards its reply, follows a redirect, or reports a failure.
    fn on_head(&mut self, event: HeadEvent) {
        if let (HeadEvent::Timeout, Some(Pending::Split(_))) = (&event, self.pending.front()) {
            self.tally.error(ErrorKind::Timeout);
            stats::add(&self.pool.stats.forward_error, 1);
            self.pop_front();
            return self.timed_out();
        }
        if let (HeadEvent::Timeout, Some(Pending::PubSub(_))) = (&event, self.pending.front()) {
            return self.pubsub_timed_out();
        }
        let Some(Pending::Wait(w)) = self.pending.front_mut() else {
            return;
        };
        // Read at `deadline - timeout`; observed once the client's reply is decided. Not for blocking
        // commands, which take as long as the client asked them to.
        let started = match w.own_connection {
            true => None,
            false => w
                .deadline
                .checked_sub(Duration::from_millis(self.pool.config.timeout)),
        };
        let reply = match event {
            HeadEvent::Reply(Ok(reply)) => reply,
            HeadEvent::Reply(Err(e)) => {
                self.tally.answered_since(started);
                self.tally.error(ErrorKind::from(&e));
                stats::add(&self.pool.stats.forward_error, 1);
                self.pop_front();
                return self.error_now(&format!("ERR slotline: {e}"));
            }
            HeadEvent::Timeout => {
                self.tally.answered_since(started);
                self.tally.error(ErrorKind::Timeout);
                stats::add(&self.pool.stats.forward_error, 1);
                self.pop_front();
                return self.timed_out();
            }
        };
        let pick = self.client.id as usize;
        let resend = || self.inbox.reply_to(self.front_seq);
        let failure = match follow_reply(&self.pool, pick, self.proto, w, &reply, resend) {
            Redirected::Followed(kind) => return self.tally.redirect(kind),
            Redirected::Refused => ErrorKind::RedirectLimit,
            Redirected::No => ErrorKind::BackendError,
        };
        if reply.first() == Some(&b'-') {
            self.tally.error(failure);
        }
        self.tally.answered_since(started);
        self.out.extend_from_slice(&reply);
        self.pop_front();
    }

    fn timed_out(&mut self) {
        let msg = format!(
            "ERR slotline: no reply from the backend within {} ms",
            self.pool.config.timeout
        );
        self.error_now(&msg);
    }

    /// Writes an error reply in order: straight to the output when nothing is waiting before it.
    /// Errors slotline decides itself (unknown command, CROSSSLOT, no topology ...).
    pub(crate) fn error(&mut self, msg: &str) {
        self.tally.error(ErrorKind::Proxy);
        // An error while queuing a transaction dooms it, as with Redis.
        self.tx.abort();
        self.reply(|r| r.error(msg));
    }

    /// An error for the request at the front, which was just removed.
    fn error_now(&mut self, msg: &str) {
        Reply(&mut self.out).error(msg);
    }

    /// Appends a locally made reply in request order.
    pub(crate) fn reply(&mut self, write: impl FnOnce(&mut Reply<'_>)) {
        if self.pending.is_empty() {
            write(&mut Reply(&mut self.out));
        } else {
            let mut buf = BytesMut::new();
            write(&mut Reply(&mut buf));
            self.pending.push_back(Pending::Ready(buf.freeze()));
        }
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

    fn flush_stats(&mut self) {
        if self.commands > 0 {
            self.pool.metrics.requests.inc_by(self.commands);
            self.pool
                .shared
                .total_commands
                .fetch_add(std::mem::take(&mut self.commands), Ordering::Relaxed);
        }
        self.tally.flush(&self.pool.metrics);
    }
}

/// Client-supplied bytes made safe to quote in an error line.
pub(crate) fn printable(bytes: &[u8]) -> String {
    let s: String = String::from_utf8_lossy(&bytes[..bytes.len().min(128)])
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    s
}
