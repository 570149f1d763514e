//! One client connection: read pipelined requests, route each, and write replies strictly in request
//! order, as many per write as are ready.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::Guard;
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::fanout::{self, Merge, Split};
use super::local::{self, Outcome};
use super::{Pool, Router};
use crate::backend::{BackendResult, Inbox, Node, ReplyTo};
use crate::cluster::{classify, Cluster, Redirect, Topology};
use crate::command::{self, LookupError, Request, Route, Spec};
use crate::protocol::{Reply, RequestParser};
use crate::route::{key_slot, Slot};
use crate::shards::Table;
use crate::stats;

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
}

/// Replies to the parts of a split request are numbered apart from whole requests: the top bit marks a
/// part, the low bits hold the part's index and the bits between the request's number.
const PART: u64 = 1 << 63;
const PART_BITS: u32 = 16;
/// Parts per request that the numbering can tell apart: more than a cluster has slots.
const MAX_PARTS: usize = 1 << PART_BITS;

fn part_seq(seq: u64, part: usize) -> u64 {
    PART | (seq << PART_BITS) | part as u64
}

struct SplitRequest {
    merge: Merge,
    nkeys: usize,
    deadline: Instant,
    parts: Vec<Part>,
}

struct Part {
    /// The request's key numbers this part carries, ascending.
    keys: Vec<u32>,
    w: Waiting,
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
}

/// How long a blocking command may wait: its own timeout argument decides, this only bounds forever.
const BLOCKING_WAIT: Duration = Duration::from_secs(365 * 24 * 3600);

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
    /// Backend connections of this client's own (for blocking commands), closed with the session.
    own: Vec<Arc<Node>>,
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
            if wr.write_all(&ctx.out).await.is_err() {
                ctx.client_err = true;
                break;
            }
            ctx.out.clear();
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
                Ok(_) => {}
                Err(_) => {
                    ctx.client_err = true;
                    break;
                }
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
        let view = View::of(&pool.router);
        let now = Instant::now();
        while !self.closing && self.pending.len() < max_pending {
            match parser.parse(inbuf) {
                Ok(Some(len)) => {
                    let frame = inbuf.split_to(len).freeze();
                    if !parser.args().is_empty() {
                        let req = Request {
                            frame: &frame,
                            args: parser.args(),
                        };
                        self.dispatch(req, &frame, &view, now);
                    }
                }
                Ok(None) => {
                    self.flush_stats();
                    return false;
                }
                Err(e) => {
                    // The stream cannot be resynchronised: say why, then close.
                    self.error(&format!("ERR {e}"));
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
        let argc = req.argc();
        let spec = match command::lookup(req.arg(0), (argc > 1).then(|| req.arg(1))) {
            Ok(spec) => spec,
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
            Route::Keyed => match view.place_of_request(req, spec) {
                Ok(place) => self.forward(view, place, frame.clone(), now),
                Err(()) => match fanout::policy(spec.name) {
                    Some(split) => self.split(req, split, view, now),
                    None => self.error(&view.cross_error(spec.display_name())),
                },
            },
            Route::Blocking => match view.place_of_request(req, spec) {
                Ok(place) => self.forward_blocking(view, place, frame.clone()),
                Err(()) => self.error(&view.cross_error(spec.display_name())),
            },
            Route::AnyNode => self.forward(view, Place::Any, frame.clone(), now),
            Route::EveryNode => self.every_node(req, spec, frame, view, now),
            Route::Local => match local::handle(self, req, spec) {
                Outcome::Answered => {}
                Outcome::Forward => self.forward(view, Place::Any, frame.clone(), now),
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
        let Some(shared) = view.target(place, pick) else {
            view.request_refresh();
            return self.error("CLUSTERDOWN Hash slot not served");
        };
        let node = match self.own.iter().find(|n| n.addr() == shared.addr()) {
            Some(node) => node.clone(),
            None => {
                let node = Node::spawn(shared.addr().clone(), &self.pool.router.own_settings());
                self.own.push(node.clone());
                node
            }
        };
        let seq = self.front_seq + self.pending.len() as u64;
        node.send(0, frame.clone(), false, self.inbox.reply_to(seq));
        self.pending.push_back(Pending::Wait(Waiting {
            result: None,
            frame,
            slot: match place {
                Place::Slot(slot) => Some(slot),
                _ => None,
            },
            deadline: Instant::now() + BLOCKING_WAIT,
            redirects: 0,
            own_connection: true,
        }));
    }

    /// Sends a request to the backend its keys belong to (any backend when it has none).
    fn forward(&mut self, view: &View<'_>, place: Place, frame: Bytes, now: Instant) {
        let pick = self.client.id as usize;
        let Some(node) = view.target(place, pick) else {
            view.request_refresh();
            return self.error(view.no_node(place));
        };
        let seq = self.front_seq + self.pending.len() as u64;
        node.send(pick, frame.clone(), false, self.inbox.reply_to(seq));
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
        }));
    }

    /// Cuts a multi-key request whose keys live in several places into one part per place, sends every
    /// part, and queues the request to be answered once all parts are.
    fn split(&mut self, req: Request<'_>, split: Split, view: &View<'_>, now: Instant) {
        let Some(nkeys) = fanout::key_count(&req, split) else {
            let name = printable(req.arg(0)).to_lowercase();
            return self.error(&format!(
                "ERR wrong number of arguments for '{name}' command"
            ));
        };
        let mut placed: Vec<(Place, u32)> = (0..nkeys)
            .map(|k| (view.place_of(fanout::key(&req, split, k)), k as u32))
            .collect();
        // Stable: each part keeps its keys in the client's order.
        placed.sort_by_key(|&(place, _)| place);
        let mut groups = Vec::new();
        for group in placed.chunk_by(|a, b| a.0 == b.0) {
            let keys: Vec<u32> = group.iter().map(|&(_, k)| k).collect();
            let frame = fanout::encode(&req, split, &keys);
            groups.push((group[0].0, keys, frame));
        }
        self.fan_out(groups, split.merge, nkeys, view, now);
    }

    /// Sends a command about the whole data set to every master (every server in service) as it is.
    fn every_node(
        &mut self,
        req: Request<'_>,
        spec: &Spec,
        frame: &Bytes,
        view: &View<'_>,
        now: Instant,
    ) {
        if spec.name == "scan" {
            return self.scan(req, view, now);
        }
        let Some(merge) = fanout::every_node_policy(spec.name) else {
            return self.error(&format!(
                "ERR {} is not supported by slotline",
                spec.display_name()
            ));
        };
        if matches!(spec.name, "flushall" | "flushdb") && !self.pool.config.allow_flush {
            let msg = format!(
                "ERR {} is disabled: it would empty every {} of pool '{}' (set allow_flush: true in its config to permit it)",
                spec.display_name(),
                match view { View::Cluster(..) => "master", View::Shards(_) => "server" },
                self.pool.name
            );
            return self.error(&msg);
        }
        let groups = (0..view.node_count())
            .map(|i| (Place::Node(i), Vec::new(), frame.clone()))
            .collect();
        self.fan_out(groups, merge, 0, view, now);
    }

    /// SCAN, one master at a time: the cursor's top bits say which.
    fn scan(&mut self, req: Request<'_>, view: &View<'_>, now: Instant) {
        let cursor = std::str::from_utf8(req.arg(1))
            .ok()
            .and_then(|c| c.parse::<u64>().ok());
        let nodes = view.node_count();
        let Some((node, inner)) = cursor
            .map(fanout::scan_cursor)
            .filter(|&(n, _)| n < nodes.max(1))
        else {
            return self.error("ERR invalid cursor");
        };
        let frame = fanout::with_arg(&req, 1, inner.to_string().as_bytes());
        let groups = vec![(Place::Node(node), Vec::new(), frame)];
        self.fan_out(groups, Merge::Scan { node, nodes }, 0, view, now);
    }

    /// Sends each part to its place and queues the request to be answered once all parts are.
    fn fan_out(
        &mut self,
        groups: Vec<(Place, Vec<u32>, Bytes)>,
        merge: Merge,
        nkeys: usize,
        view: &View<'_>,
        now: Instant,
    ) {
        if groups.len() > MAX_PARTS {
            return self.error("ERR slotline: the keys of this command live in too many places");
        }
        if groups.is_empty() {
            return self.error("CLUSTERDOWN slotline knows no backend to send this to yet");
        }
        let seq = self.front_seq + self.pending.len() as u64;
        let deadline = now + Duration::from_millis(self.pool.config.timeout);
        let pick = self.client.id as usize;
        let mut parts = Vec::with_capacity(groups.len());
        for (place, keys, frame) in groups {
            let mut w = Waiting {
                result: None,
                frame,
                slot: match place {
                    Place::Slot(slot) => Some(slot),
                    _ => None,
                },
                deadline,
                redirects: 0,
                own_connection: false,
            };
            match view.target(place, pick) {
                Some(node) => {
                    let reply = self.inbox.reply_to(part_seq(seq, parts.len()));
                    node.send(pick, w.frame.clone(), false, reply);
                }
                None => {
                    view.request_refresh();
                    w.result = Some(Ok(Bytes::from(format!("-{}\r\n", view.no_node(place)))));
                }
            }
            parts.push(Part { keys, w });
        }
        stats::add(&self.pool.stats.fragments, parts.len() as u64);
        self.pending
            .push_back(Pending::Split(Box::new(SplitRequest {
                merge,
                nkeys,
                deadline,
                parts,
            })));
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
            _ => None,
        }
    }

    fn pop_front(&mut self) {
        self.pending.pop_front();
        self.front_seq += 1;
    }

    /// Gives each reply taken from the inbox to its request. Replies for requests that already gave up
    /// (timed out) find no place and are dropped.
    fn place_arrived(&mut self) {
        for (seq, result) in self.arrived.drain(..) {
            let (seq, part) = match seq & PART {
                0 => (seq, None),
                _ => ((seq & !PART) >> PART_BITS, Some(seq as usize % MAX_PARTS)),
            };
            let Some(i) = seq.checked_sub(self.front_seq) else {
                continue;
            };
            match (self.pending.get_mut(i as usize), part) {
                (Some(Pending::Wait(w)), None) => w.result = Some(result),
                (Some(Pending::Split(s)), Some(part)) => {
                    if let Some(part) = s.parts.get_mut(part) {
                        part.w.result = Some(result);
                    }
                }
                _ => {}
            }
        }
    }

    /// Moves every reply that is already known, from the front of the pipeline, into the output.
    fn drain_ready(&mut self) {
        self.place_arrived();
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
            };
            self.on_head(HeadEvent::Reply(result));
        }
    }

    /// Settles the oldest request: forwards its reply, follows a redirect, or reports a failure.
    fn on_head(&mut self, event: HeadEvent) {
        if let (HeadEvent::Timeout, Some(Pending::Split(_))) = (&event, self.pending.front()) {
            stats::add(&self.pool.stats.forward_error, 1);
            self.pop_front();
            return self.timed_out();
        }
        let Some(Pending::Wait(w)) = self.pending.front_mut() else {
            return;
        };
        let reply = match event {
            HeadEvent::Reply(Ok(reply)) => reply,
            HeadEvent::Reply(Err(e)) => {
                stats::add(&self.pool.stats.forward_error, 1);
                self.pop_front();
                return self.error_now(&format!("ERR slotline: {e}"));
            }
            HeadEvent::Timeout => {
                stats::add(&self.pool.stats.forward_error, 1);
                self.pop_front();
                return self.timed_out();
            }
        };
        if let (Some(b'-'), Router::Cluster(cluster), false) =
            (reply.first(), &self.pool.router, w.own_connection)
        {
            if let Some(r) = classify(&reply) {
                let resend = self.inbox.reply_to(self.front_seq);
                let max = self.pool.config.max_redirects;
                if follow(cluster, max, self.client.id as usize, w, r, resend) {
                    return;
                }
            }
        }
        self.out.extend_from_slice(&reply);
        self.pop_front();
    }

    /// Follows redirects of the split request at the front and, once every part is answered, writes
    /// the merged reply. Returns false while a part is still waiting.
    fn settle_split(&mut self) -> bool {
        let Some(Pending::Split(s)) = self.pending.front_mut() else {
            return true;
        };
        let mut waiting = false;
        for (i, part) in s.parts.iter_mut().enumerate() {
            let reply = match part.w.result.take() {
                None => {
                    waiting = true;
                    continue;
                }
                Some(Ok(reply)) => reply,
                Some(failed) => {
                    part.w.result = Some(failed);
                    continue;
                }
            };
            if let (Some(b'-'), Router::Cluster(cluster)) = (reply.first(), &self.pool.router) {
                if let Some(r) = classify(&reply) {
                    let resend = self.inbox.reply_to(part_seq(self.front_seq, i));
                    let max = self.pool.config.max_redirects;
                    if follow(
                        cluster,
                        max,
                        self.client.id as usize,
                        &mut part.w,
                        r,
                        resend,
                    ) {
                        waiting = true;
                        continue;
                    }
                }
            }
            part.w.result = Some(Ok(reply));
        }
        if waiting {
            return false;
        }
        let failed = s.parts.iter().find_map(|p| match &p.w.result {
            Some(Err(e)) => Some(format!("ERR slotline: {e}")),
            _ => None,
        });
        match failed {
            Some(msg) => {
                stats::add(&self.pool.stats.forward_error, 1);
                Reply(&mut self.out).error(&msg);
            }
            None => {
                let replies: Vec<(&[u32], &[u8])> = s
                    .parts
                    .iter()
                    .map(|p| match &p.w.result {
                        Some(Ok(reply)) => (&p.keys[..], &reply[..]),
                        _ => (&p.keys[..], &[][..]),
                    })
                    .collect();
                fanout::merge(s.merge, s.nkeys, &replies, &mut self.out);
            }
        }
        self.pop_front();
        true
    }

    fn timed_out(&mut self) {
        let msg = format!(
            "ERR slotline: no reply from the backend within {} ms",
            self.pool.config.timeout
        );
        self.error_now(&msg);
    }

    /// Writes an error reply in order: straight to the output when nothing is waiting before it.
    pub(crate) fn error(&mut self, msg: &str) {
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
            self.pool
                .shared
                .total_commands
                .fetch_add(std::mem::take(&mut self.commands), Ordering::Relaxed);
        }
    }
}

/// Where a keyed request goes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Place {
    /// A cluster slot.
    Slot(Slot),
    /// A server of a sharded pool, by config index.
    Server(usize),
    /// Master (or server in service) number `i`, for requests sent to every one.
    Node(usize),
    /// Any backend: the request has no key.
    Any,
}

/// The routing state a batch of requests is routed with, loaded once per batch.
enum View<'a> {
    Cluster(&'a Arc<Cluster>, Guard<Arc<Topology>>),
    Shards(Guard<Arc<Table>>),
}

impl<'a> View<'a> {
    fn of(router: &'a Router) -> View<'a> {
        match router {
            Router::Cluster(cluster) => View::Cluster(cluster, cluster.topology()),
            Router::Shards(shards) => View::Shards(shards.table()),
        }
    }

    /// Where all the keys of a request live (Any when it has none); Err when they live apart.
    fn place_of_request(&self, req: Request<'_>, spec: &Spec) -> Result<Place, ()> {
        let mut place = None;
        let mut cross = false;
        req.for_each_key(spec, |key| {
            let p = self.place_of(key);
            match place {
                None => place = Some(p),
                Some(first) if first != p => cross = true,
                _ => {}
            }
        });
        match cross {
            true => Err(()),
            false => Ok(place.unwrap_or(Place::Any)),
        }
    }

    /// Where a key lives.
    fn place_of(&self, key: &[u8]) -> Place {
        match self {
            View::Cluster(..) => Place::Slot(key_slot(key)),
            View::Shards(table) => Place::Server(table.server_for_key(key)),
        }
    }

    /// The node for a request; a client without a key always uses the same one.
    fn target(&self, place: Place, pick: usize) -> Option<&Arc<Node>> {
        match (self, place) {
            (View::Cluster(_, topology), Place::Slot(slot)) => {
                topology.node_for_request(Some(slot), pick)
            }
            (View::Cluster(_, topology), Place::Node(i)) => topology.nodes().get(i),
            (View::Cluster(_, topology), _) => topology.node_for_request(None, pick),
            (View::Shards(table), Place::Server(i)) => table.node(i),
            (View::Shards(table), Place::Node(i)) => table.in_service().nth(i),
            (View::Shards(table), _) => table.any_node(pick),
        }
    }

    /// The error for a request no node can take (see [`target`](Self::target)).
    fn no_node(&self, place: Place) -> &str {
        match (self, place) {
            (View::Cluster(..), Place::Slot(_)) => "CLUSTERDOWN Hash slot not served",
            (View::Cluster(..), _) => {
                "CLUSTERDOWN slotline has not learnt the cluster topology yet"
            }
            (View::Shards(table), _) => table.unavailable(),
        }
    }

    /// How many masters (servers in service) a request for every node goes to.
    fn node_count(&self) -> usize {
        match self {
            View::Cluster(_, topology) => topology.nodes().len(),
            View::Shards(table) => table.in_service().count(),
        }
    }

    /// Asks for a new cluster topology (a slot had no owner).
    fn request_refresh(&self) {
        if let View::Cluster(cluster, _) = self {
            cluster.request_refresh();
        }
    }

    /// The error for a command whose keys must live together but do not.
    fn cross_error(&self, command: String) -> String {
        match self {
            View::Cluster(..) => format!(
                "CROSSSLOT Keys in request don't hash to the same slot ({command} needs all its keys in one slot; a hash tag such as {{user1}} in each key keeps them together)"
            ),
            View::Shards(_) => format!(
                "CROSSSLOT the keys of this {command} live on different servers of the pool (only MGET, MSET, DEL, UNLINK, EXISTS and TOUCH are split across servers; a hash_tag keeps keys together)"
            ),
        }
    }
}

/// Resends a redirected request; false when it may not be (too many redirects, or out of time), in which
/// case the client gets the cluster's reply as is.
fn follow(
    cluster: &Arc<Cluster>,
    max_redirects: u32,
    pick: usize,
    w: &mut Waiting,
    redirect: Redirect<'_>,
    reply: ReplyTo,
) -> bool {
    if w.redirects >= max_redirects || Instant::now() >= w.deadline {
        return false;
    }
    w.redirects += 1;
    match redirect {
        Redirect::Moved { slot, addr } | Redirect::Ask { slot, addr } => {
            let asking = matches!(redirect, Redirect::Ask { .. });
            if !asking {
                cluster.request_refresh();
            }
            let addr = complete_endpoint(addr, &cluster.topology(), slot);
            let node = cluster.node(&addr);
            node.send(pick, w.frame.clone(), asking, reply);
        }
        Redirect::Retry => {
            // TRYAGAIN / CLUSTERDOWN: wait a little (doubling), then ask the slot's owner again.
            let delay = Duration::from_millis(10 << w.redirects.min(5));
            let (cluster, frame, slot) = (cluster.clone(), w.frame.clone(), w.slot);
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                match cluster.topology().node_for_request(slot, pick) {
                    Some(node) => node.send(pick, frame, false, reply),
                    None => reply.send(Ok(Bytes::from_static(
                        b"-CLUSTERDOWN Hash slot not served\r\n",
                    ))),
                }
            });
        }
    }
    true
}

/// A redirect endpoint may leave the host out (`:6380` or `?:6380`): it is the host of the node that
/// answered, which is the slot's current owner.
fn complete_endpoint(addr: &str, topology: &Topology, slot: Slot) -> String {
    match addr.rsplit_once(':') {
        Some((host, port)) if host.is_empty() || host == "?" => {
            let owner = topology
                .node_for(slot)
                .map(|n| n.addr().to_string())
                .unwrap_or_default();
            let host = crate::config::split_host_port(&owner).map_or("127.0.0.1", |(h, _)| h);
            format!("{host}:{port}")
        }
        _ => addr.to_string(),
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
