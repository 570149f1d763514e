//! One client connection: read pipelined requests, route each, and write replies strictly in request
//! order, as many per write as are ready (those to requests read together, together).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

mod buffers;
mod moving;
mod node_login;
mod parts;
mod pubsub;
mod redirect;
mod reply_mode;
mod transaction;
mod view;

use super::fanout;
use super::local::{self, Outcome};
use super::Pool;
use crate::backend::{Awaited, BackendResult, Inbox, Node, Via, LARGEST_GATHERED};
use crate::command::{self, flags, policy, LookupError, Merge, Request, Route, Spec};
use crate::metrics::{ErrorKind, Tally};
use crate::protocol::{Reply, RequestParser};
use crate::route::Slot;
use crate::stats;
use buffers::Input;
use parts::{part_seq, SplitRequest, MAX_PARTS, PART, PART_BITS};
use redirect::{follow_reply, own_redirect, Redirected};
use transaction::Transaction;
use view::{Place, View};

/// How often a client held back by a congested backend looks whether its queue has drained.
const CONGESTION_CHECK: Duration = Duration::from_millis(10);

/// Unwritten output past which a client is not read: it has to take its replies before it may send
/// more (what it already asked for is still answered, up to `max_client_reply_bytes`).
const OUTPUT_PAUSE: usize = 256 * 1024;
/// The same for a client that has not authenticated, whose replies are only errors.
const OUTPUT_PAUSE_UNAUTHENTICATED: usize = 16 * 1024;
/// Output past which replies go without waiting for the rest of their batch (see
/// [`Ctx::holds_output`]): a big pipeline's replies stream.
const HOLD_OUTPUT: usize = 16 * 1024;

pub(crate) use buffers::Budget;
pub(crate) use reply_mode::Mode as ReplyMode;

/// What a client is, as far as commands like CLIENT and HELLO are concerned.
pub(crate) struct ClientState {
    /// What CLIENT LIST shows of this client (its name and library included), and its id and
    /// address (read from here rather than copied: every session holds this).
    pub record: Arc<crate::clients::Record>,
}

impl ClientState {
    pub fn id(&self) -> u64 {
        self.record.id
    }

    pub fn addr(&self) -> &str {
        &self.record.addr
    }

    /// The port the client connected to (0 on a unix socket), which CONFIG GET port shows.
    pub fn port(&self) -> u16 {
        let laddr = &self.record.laddr;
        laddr
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse().ok())
            .unwrap_or(0)
    }
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
    /// In a migrating pool: its keys are being moved to their new home first.
    Moving(Box<moving::Moving>),
}

impl Pending {
    /// Bytes of request frames it keeps (for redirects, or to send later).
    fn request_bytes(&self) -> usize {
        match self {
            Pending::Wait(w) => w.frame.len(),
            Pending::Split(s) => s.parts.iter().map(|p| p.w.frame.len()).sum(),
            Pending::Held(frame) => frame.len(),
            Pending::Moving(m) => m.frame.len(),
            Pending::Ready(_) | Pending::PubSub(_) => 0,
        }
    }

    /// Bytes of replies it holds for the client.
    fn reply_bytes(&self) -> usize {
        match self {
            Pending::Ready(reply) => reply.len(),
            Pending::Wait(w) => w.reply_bytes(),
            Pending::Split(s) => s.parts.iter().map(|p| p.w.reply_bytes()).sum(),
            Pending::Held(_) | Pending::PubSub(_) | Pending::Moving(_) => 0,
        }
    }

    /// A script or function (counted while it waits: see [`Ctx::running_script`]).
    fn script(&self) -> bool {
        matches!(self, Pending::Wait(w) if w.scripted.is_some())
    }

    /// Whether later requests must wait for this one: it runs on the client's own connection, where
    /// they would overtake it (or it them) on the shared one.
    fn serial(&self) -> bool {
        match self {
            Pending::Held(_) | Pending::PubSub(_) | Pending::Moving(_) => true,
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
    /// When the request was read, for its latency (redirects included).
    sent: Instant,
    deadline: Instant,
    redirects: u32,
    /// Sent on a connection of the client's own (a blocking command): a redirect is followed on
    /// another connection of the client's own, never on a shared one.
    own_connection: bool,
    /// A script or function, with the node it was sent to: its error replies are its own (a script
    /// can return `-MOVED` or `-READONLY` as easily as Redis can), so only a MOVED that the cluster
    /// itself confirms is followed (see `redirect::follow_reply`).
    scripted: Option<Arc<str>>,
    /// The command, for INFO commandstats (see [`crate::command::Spec::number`]).
    command: u16,
    /// A read sent to a replica: if the replica fails it (connection lost, no answer in time), it
    /// runs once more on the master.
    replica: bool,
    /// A write while clients of the pool track keys: its reply waits for its master's feed.
    // Boxed: a request is 8 bytes of it, and nothing is allocated while nobody tracks.
    fence: Option<Box<Fence>>,
    /// Read in the same batch as the request before it, and sent as it was: the replies before
    /// it wait for its own (see [`Ctx::holds_output`]).
    joined: bool,
}

/// A write's reply held until its master's tracking feed has passed a barrier sent after it (see
/// [`crate::tracking::Tracking::barrier`]): its invalidations are then on their way to the
/// readers before the writer (or anyone it tells) can read the key again.
enum Fence {
    /// To be fenced on this master's feed once its reply comes.
    Write(Arc<str>),
    /// The reply, waiting for the barrier.
    Held(BackendResult),
}

impl Fence {
    /// The reply a fence holds, if it holds one; the fence is gone either way.
    fn release(fence: &mut Option<Box<Fence>>) -> Option<BackendResult> {
        match *fence.take()? {
            Fence::Held(result) => Some(result),
            Fence::Write(_) => None,
        }
    }
}

impl Waiting {
    /// Its reply and the replies before it go in one write: it came in the same read as the
    /// request before it and went as it was, on a shared connection (not a script's, not a
    /// fenced write's). [`Ctx::holds_output`] holds output for it, and [`awaited`] waits for it.
    fn holds_earlier_replies(&self) -> bool {
        self.joined && self.fence.is_none() && self.scripted.is_none()
    }

    /// A reply came for this request: `result`, or its fence's barrier (see [`Fence`]). Returns
    /// the reply to place now; None while a write's reply waits for the barrier, which `barrier`
    /// is asked to send.
    fn fenced(
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

    fn reply_bytes(&self) -> usize {
        match &self.result {
            Some(Ok(reply)) => reply.len(),
            _ => 0,
        }
    }
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
    /// Replies ready for the client and not yet written: the worker's scratch buffer during a step
    /// (see [`Ctx::begin_output`]), otherwise what the socket did not take (empty while idle).
    out: BytesMut,
    out_scratch: bool,
    /// Bytes at the front of `out` already counted as sent (counted once, before the first write).
    out_counted: usize,
    /// Bytes of request frames the pending requests keep, and of replies they hold for the client
    /// (both bounded: see `max_client_request_bytes` and `max_client_reply_bytes`).
    request_bytes: usize,
    replies_held: usize,
    closing: bool,
    commands: u64,
    /// The user it is logged in as; None until it logs in (see [`crate::acl`]).
    pub(crate) user: Option<Arc<crate::acl::Active>>,
    /// A login failed: the milliseconds its reply waits, and the client's next requests with it.
    pub(crate) penalty_ms: u16,
    /// The connection ends in an error (protocol error, reset) rather than the client closing it.
    client_err: bool,
    /// Backend connections of this client's own (blocking commands, transactions), closed with the
    /// session. Boxed, as `deferred`: most clients never have one.
    #[allow(clippy::box_collection)]
    own: Option<Box<Vec<Arc<Node>>>>,
    tx: Transaction,
    /// Pending requests for which later ones must wait (see [`Pending::serial`]).
    serial: usize,
    /// Pending scripts and functions (see [`Pending::script`]): counted in `forward`, where they
    /// are queued, and uncounted in `pop_front`.
    scripts: usize,
    /// Scripts sent as their read-only twins under CLIENT PAUSE WRITE: their request numbers and
    /// frames as they came (see `probe_refused`).
    // Boxed, as `deferred`: a session is 8 bytes of it, not 24, until it is used.
    #[allow(clippy::box_collection)]
    probes: Option<Box<Vec<(u64, Bytes)>>>,
    /// Set once the client uses CLIENT REPLY: which replies it does not want.
    reply_mode: Option<Box<reply_mode::ReplyMode>>,
    /// Set while the client tracks keys (CLIENT TRACKING ON).
    pub(crate) tracking: Option<Box<crate::tracking::ClientSide>>,
    /// Invalidations that came while requests were under way: each is written once the replies of
    /// the requests sent before it came are (numbered as `front_seq`), so it never overtakes the
    /// reply of a read it invalidates.
    // Boxed: a session is 8 bytes of it, not 32, until an invalidation has to wait (idle clients
    // are budgeted at 3 KiB each).
    #[allow(clippy::box_collection)]
    deferred: Option<Box<VecDeque<(u64, Bytes)>>>,
    /// The RESP version the client chose with HELLO (2 until it says otherwise).
    proto: u8,
    /// Subscriptions and the backend connections of its own that carry them, once it subscribes.
    pubsub: Option<Box<pubsub::PubSub>>,
    /// Metrics counted here and added to the pool's once per batch.
    tally: Tally,
    /// The routing snapshot the last request was routed by (its generation).
    routed_by: u64,
    /// The clock, read once at the start of each step.
    now: Instant,
    /// The last command looked up: a pipeline mostly repeats one, and comparing its name is cheaper
    /// than a lookup.
    last_command: Option<&'static Spec>,
    /// A backend this client sent to has more bytes waiting on its connection than its share of
    /// `max_server_queue_bytes`: the client is not read until half of them have gone out.
    congested: Option<Arc<Node>>,
    /// Set by MONITOR: the stream of every command, and the lines taken from it not yet written.
    monitor: Option<Box<(crate::monitor::Monitor, Vec<Bytes>)>>,
    /// CLIENT PAUSE holds this client's oldest request: the pause as it was when it did, and its
    /// changes (UNPAUSE, a new PAUSE) to look again.
    paused: Option<
        Box<(
            crate::pause::State,
            tokio::sync::watch::Receiver<crate::pause::State>,
        )>,
    >,
    /// The last command of this step, for CLIENT LIST (published once per step).
    ran: Option<&'static Spec>,
    /// The command being dispatched (its number, for INFO commandstats; `cmdstats::NONE` while
    /// the request names no command slotline knows).
    dispatching: u16,
    /// Counted in INFO's `blocked_clients` while a blocking command waits, and in the pool's
    /// running scripts while a script does (see [`Ctx::publish_client_state`]).
    marks: Marks,
    /// The request being dispatched again has had its keys moved (a migrating pool).
    moved: bool,
    /// Where its reads go: its READONLY/READWRITE choice, and its last write (read-your-writes).
    pub(crate) reads: crate::read::ClientReads,
    /// The request being dispatched may be gathered with the others of its step (see
    /// [`crate::backend::Node::send_soon`]): more were read with it.
    gather: bool,
    /// Requests of this step are gathered, to be sent when it ends.
    gathered: bool,
}

/// The counts a session is part of for as long as a state of its lasts.
#[derive(Default)]
struct Marks {
    blocked: Option<super::Mark<super::Shared>>,
    script: Option<super::Mark<Pool>>,
}

/// Serves one client until it leaves; `seat` is its place in the pool, given back when this ends.
pub(crate) async fn serve<R, W>(
    mut rd: R,
    wr: W,
    pool: Arc<Pool>,
    client: ClientState,
    seat: super::Seat,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // The bounds are read from the pool's config where they are checked: copies kept here would be
    // stored in the session across every await.
    let mut parser = RequestParser::new(crate::protocol::Limits {
        max_request_bytes: pool.config.max_request_bytes,
    });
    let mut wr = buffers::Writer::new(wr);
    let tally = Tally::new(&pool.metrics);
    let mut ctx = Ctx {
        pool,
        client,
        pending: VecDeque::new(),
        front_seq: 0,
        inbox: Inbox::new(),
        arrived: Vec::new(),
        out: BytesMut::new(),
        out_scratch: false,
        out_counted: 0,
        marks: Marks::default(),
        ran: None,
        dispatching: crate::cmdstats::NONE,
        monitor: None,
        paused: None,
        request_bytes: 0,
        replies_held: 0,
        closing: false,
        commands: 0,
        user: None,
        penalty_ms: 0,
        client_err: false,
        own: None,
        tx: Transaction::default(),
        serial: 0,
        scripts: 0,
        probes: None,
        reply_mode: None,
        tracking: None,
        deferred: None,
        proto: 2,
        pubsub: None,
        reads: Default::default(),
        gather: false,
        gathered: false,
        tally,
        routed_by: 0,
        now: Instant::now(),
        last_command: None,
        congested: None,
        moved: false,
    };
    // Logged in already by its certificate, or as the default user when that needs no password.
    // (Into `ctx` directly: a local of this function would be kept across every await.)
    ctx.user = match ctx.client.record.user() {
        Some(user) => Some(user),
        None => ctx.pool.acl.initial().inspect(|user| {
            ctx.client.record.set_user(Some(user.clone()));
        }),
    };
    let mut input = Input::new(
        ctx.user
            .is_none()
            .then(|| ctx.pool.shared.unauthenticated.clone()),
    );
    // One timer per session, re-armed only when the oldest request's deadline moves to a later tick:
    // arming a timer per request would cost more than the rest of the request's work.
    let timer = tokio::time::sleep_until(ctx.now);
    tokio::pin!(timer);
    let mut timer_at = None;
    let mut woke = Woke::Nothing;
    loop {
        // One step, with no await that can suspend: events taken, requests parsed and dispatched,
        // ready replies composed in the worker's scratch buffer and written.
        ctx.now = Instant::now();
        ctx.begin_output();
        if ctx
            .congested
            .as_ref()
            .is_some_and(|node| node.drained(ctx.client.id() as usize))
        {
            ctx.congested = None;
        }
        match std::mem::replace(&mut woke, Woke::Nothing) {
            // The timer is rounded up, so a deadline that has come is the oldest request's, passed.
            // (It also wakes a client that waits for a congested backend.)
            Woke::Timer if ctx.head_deadline().is_some_and(|d| d <= ctx.now) => {
                ctx.on_head(HeadEvent::Timeout)
            }
            Woke::Timer => {}
            Woke::Placement => ctx.follow_placement(),
            Woke::Nothing => {}
        }
        // Invalidations already here are of changes made before the requests about to be read:
        // they go before those requests' replies, as Redis would have written them.
        ctx.take_pushes();
        // Never wait with a complete request buffered and room to take it: when the pipeline was full,
        // settling replies makes room, so parse again until the input runs out or the oldest request
        // really has to wait for its backend (then its reply wakes us).
        while ctx.parse_input(&mut parser, &mut input.buf, ctx.pool.config.max_pending) {
            let before = ctx.pending.len();
            ctx.drain_ready();
            if ctx.pending.len() == before {
                break;
            }
        }
        if ctx.user.is_some() {
            input.authenticated();
        }
        if input.settle().is_err() {
            ctx.reply(|r| {
                r.error("ERR slotline: too many bytes held for clients that have not authenticated")
            });
            ctx.client_err = true;
            ctx.closing = true;
        }
        ctx.drain_ready();
        ctx.take_pushes();
        if !ctx.write_monitor_lines() {
            ctx.drop_slow_monitor();
            break;
        }
        // Published before the write: a client that has its reply finds itself listed as the
        // reply left it (CLIENT LIST from another connection, served by another worker).
        ctx.publish_client_state();
        if ctx.output_due() && ctx.penalty_ms == 0 {
            // Flushed before the write: a client that has its reply finds the request in the
            // metrics, and they never wait for more input.
            ctx.tally.get().sent(ctx.out.len() - ctx.out_counted);
            ctx.out_counted = ctx.out.len();
            ctx.flush_stats();
            // Ready at once: written, or the socket is full (the waker is registered).
            let written = std::future::poll_fn(|cx| {
                Poll::Ready(match wr.poll_write_out(cx, &mut ctx.out) {
                    Poll::Ready(written) => written,
                    Poll::Pending => Ok(0),
                })
            })
            .await;
            if !ctx.wrote(written) {
                break;
            }
        }
        ctx.end_output();
        // What the step counted reaches the pool's metrics, and the worker gets its tally back.
        ctx.tally.flush();
        if ctx.penalty_ms > 0 {
            // A login failed: its reply, and whatever the client sent after it, wait (this client
            // only; outside the step, so no buffer of the worker's is held meanwhile).
            // The session's own timer: a Sleep of its own would make every idle session bigger.
            let wait = Duration::from_millis(u64::from(std::mem::take(&mut ctx.penalty_ms)));
            timer.as_mut().reset(Instant::now() + wait);
            timer_at = None;
            (&mut timer).await;
            continue;
        }
        if ctx.closing && (ctx.pending.is_empty() || ctx.blocked()) {
            // A client that has sent everything and waits on a blocking command cannot be told apart
            // from one that left: drop it, so the server unblocks it and hands the data to someone else.
            // What it has not read yet gets as long as a request would.
            if !ctx.out.is_empty() {
                let wait = Duration::from_millis(ctx.pool.config.timeout);
                let last = async {
                    wr.io.write_all(&ctx.out).await?;
                    wr.io.flush().await
                };
                let _ = tokio::time::timeout(wait, last).await;
            }
            break;
        }
        let max_replies = ctx.pool.config.max_client_reply_bytes;
        if ctx.replies_held + ctx.out.len() > max_replies {
            ctx.too_much_output(max_replies);
            break;
        }
        let pause = match ctx.user.is_some() {
            true => OUTPUT_PAUSE,
            false => OUTPUT_PAUSE_UNAUTHENTICATED,
        };
        let can_read = !ctx.closing
            && ctx.pending.len() < ctx.pool.config.max_pending
            && ctx.request_bytes < ctx.pool.config.max_client_request_bytes
            && ctx.out.len() < pause
            && ctx.congested.is_none();
        let mut deadline = ctx.head_deadline();
        if let Some((Some((until, _)), _)) = ctx.paused.as_deref() {
            deadline = Some(deadline.map_or(*until, |d| d.min(*until)));
        }
        if ctx.congested.is_some() {
            // Nothing else may wake this client when its own requests are all answered: look again
            // soon whether the backend's queue has drained.
            let soon = ctx.now + CONGESTION_CHECK;
            deadline = Some(deadline.map_or(soon, |d| d.min(soon)));
        }
        if let Some(deadline) = deadline {
            // The timer already set rounds this deadline to itself: most steps, whose oldest
            // request is a moment younger than the last one's, compare two instants and go on.
            let armed = timer_at.is_some_and(|(after, at)| after < deadline && deadline <= at);
            if !armed {
                // (The tick and its origin are worked out again here rather than kept: kept, they
                // were 32 more bytes in every session.)
                let (epoch, tick) = (timer_epoch(), timer_tick(ctx.pool.config.timeout));
                let at = round_up(epoch, deadline, tick);
                timer.as_mut().reset(at);
                timer_at = Some((at.checked_sub(tick).unwrap_or(epoch), at));
            }
        }
        let need = parser.needed();
        // Replies that only complete part of what the next write waits for wait with it.
        let awaited = ctx
            .hold_room()
            .and_then(|room| awaited(&ctx.pending, ctx.front_seq, room));
        ctx.inbox.wait_for(awaited);
        tokio::select! {
            biased;
            // Replies land in `arrived` and are placed and written at the top of the loop. Before
            // the timer: replies the session was not woken for (see `awaited`) must be placed
            // before a deadline is judged, or an answered request would be failed as late.
            _ = std::future::poll_fn(|cx| ctx.inbox.poll_take(cx, &mut ctx.arrived)), if deadline.is_some() => {}
            _ = &mut timer, if deadline.is_some() => {
                timer_at = None;
                woke = Woke::Timer;
            }
            // The socket took what it would not before.
            written = std::future::poll_fn(|cx| wr.poll_write_out(cx, &mut ctx.out)), if ctx.output_due() || wr.unflushed() => {
                if !ctx.wrote(written) {
                    break;
                }
            }
            read = std::future::poll_fn(|cx| input.poll_read(cx, &mut rd, need)), if can_read => match read {
                // The client has sent all it will (it may still read, as `nc` does): answer what it
                // sent, then close. If it is gone altogether, the next write fails and ends this.
                Ok(0) => ctx.closing = true,
                Ok(n) => ctx.tally.get().received(n),
                Err(_) => {
                    ctx.client_err = true;
                    break;
                }
            },
            // The pause that holds this client's oldest request changed (UNPAUSE, a new PAUSE).
            // This branch and the two below it await on the heap, boxed for one pass while they
            // are in use: inline, their futures made every session 560 bytes bigger, idle ones too
            // (an idle client is budgeted at 3 KiB).
            _ = async {
                if let Some((_, changes)) = ctx.paused.as_deref_mut() {
                    let _ = Box::pin(changes.changed()).await;
                }
            }, if ctx.paused.is_some() => {}
            // Invalidations another task left for this client (its session is nudged awake).
            _ = std::future::poll_fn(|_| match ctx.client.record.has_pushes() {
                true => Poll::Ready(()),
                false => Poll::Pending,
            }) => {}
            // MONITOR's lines, written at the top of the loop.
            next = async { Box::pin(next_monitor_lines(&mut ctx.monitor)).await }, if ctx.monitor.is_some() => {
                if !next {
                    ctx.drop_slow_monitor();
                    break;
                }
            }
            // Messages and confirmations from the client's subscriber connections (also taken on
            // every pass, so a busy client socket cannot starve them, nor they it).
            woken = async { Box::pin(pubsub::next_events(&mut ctx.pubsub)).await }, if ctx.pubsub.is_some() => match woken {
                pubsub::Woken::Events => {}
                pubsub::Woken::TooSlow => {
                    ctx.drop_slow_subscriber();
                    ctx.client_err = true;
                    break;
                }
                pubsub::Woken::Placement => woke = Woke::Placement,
            },
        }
    }
    ctx.flush_stats();
    if let Some(migration) = &ctx.pool.migration {
        migration.unbind(ctx.client.id());
    }
    let ended = match ctx.client_err {
        true => &ctx.pool.stats.client_err,
        false => &ctx.pool.stats.client_eof,
    };
    stats::add(ended, 1);
    let _ = wr.io.shutdown().await;
    drop(seat);
}

/// Waits for MONITOR's next lines (forever for a client that is not monitoring) and takes what else
/// is waiting; false when the monitor fell too far behind.
async fn next_monitor_lines(
    monitor: &mut Option<Box<(crate::monitor::Monitor, Vec<Bytes>)>>,
) -> bool {
    use crate::monitor::Next;
    let Some(state) = monitor.as_deref_mut() else {
        return std::future::pending().await;
    };
    let (stream, lines) = state;
    let mut next = Some(stream.next().await);
    while let Some(found) = next {
        match found {
            Next::Line(line) => lines.push(line),
            Next::TooSlow => return false,
        }
        next = (lines.len() < MONITOR_LINES_PER_PASS)
            .then(|| stream.try_next())
            .flatten();
    }
    true
}

/// MONITOR lines taken per pass of the session loop.
const MONITOR_LINES_PER_PASS: usize = 1024;

/// A frame kept from a request parsed again, to read its arguments (it was whole when it arrived).
fn parsed_again(frame: &[u8]) -> Option<RequestParser> {
    let mut parser = RequestParser::new(crate::protocol::Limits {
        max_request_bytes: frame.len().max(1024),
    });
    matches!(parser.parse(frame), Ok(Some(_))).then_some(parser)
}

/// What a session with `pending` requests, the oldest numbered `front_seq`, waits for when it has
/// nothing else to do: the replies that let it write (see [`Ctx::holds_output`]), while `room`
/// bytes of replies may still be held. The oldest request and the ones read with it whose replies
/// the first is held for must all be answered before one write can take them; their replies
/// arriving one backend at a time would otherwise wake the session once per backend for nothing.
/// `None`: any reply may be acted on.
fn awaited(pending: &VecDeque<Pending>, front_seq: u64, room: u16) -> Option<Awaited> {
    // Far enough to cover a pipeline's batch; a longer run is woken for in parts.
    const MAX_SPAN: u8 = 63;
    let Some(Pending::Wait(head)) = pending.front() else {
        return None;
    };
    if head.result.is_some() || head.fence.is_some() {
        return None;
    }
    let mut run = Awaited {
        first: front_seq,
        span: 0,
        unanswered: 1,
        room,
    };
    for pending in pending.iter().skip(1).take(usize::from(MAX_SPAN)) {
        match pending {
            Pending::Wait(w) if w.holds_earlier_replies() => {
                run.span += 1;
                run.unanswered += u8::from(w.result.is_none());
            }
            _ => break,
        }
    }
    Some(run)
}

/// What woke the session that its next step must act on (replies and input are found by looking).
enum Woke {
    Nothing,
    /// The oldest request's deadline passed.
    Timer,
    /// A sharded pool's placement changed under the client's subscriptions.
    Placement,
}

enum HeadEvent {
    Reply(BackendResult),
    Timeout,
}

/// Timeout resolution: a tenth of the timeout, between 1 and 25 ms.
fn timer_tick(timeout_ms: u64) -> Duration {
    Duration::from_millis((timeout_ms / 10).clamp(1, 25))
}

/// The origin every session's timer ticks from: the first time a session asked.
fn timer_epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// `at` rounded up to the next multiple of `tick` after `epoch`.
fn round_up(epoch: Instant, at: Instant, tick: Duration) -> Instant {
    // In u64 nanoseconds (585 years): u128 division is a call, u64 one instruction.
    let since = u64::try_from(at.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX);
    let tick_ns = u64::try_from(tick.as_nanos()).unwrap_or(u64::MAX).max(1);
    epoch + Duration::from_nanos(since.div_ceil(tick_ns).saturating_mul(tick_ns))
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
    fn dispatch(
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
    fn on_own_connection(
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

    /// A blocking command's MOVED or ASK (it did not run): sent again on the client's own connection
    /// to the node the cluster says. `None`: the reply stands.
    fn follow_on_own(&mut self, reply: &[u8]) -> Option<crate::metrics::RedirectKind> {
        let Some(Pending::Wait(w)) = self.pending.front_mut() else {
            return None;
        };
        let (node, asking, kind) = own_redirect(&self.pool, w, reply)?;
        let frame = w.frame.clone();
        let own = self.own_node(&node);
        own.send(0, &frame, asking, self.inbox.reply_to(self.front_seq));
        Some(kind)
    }

    /// The read policy the client's reads follow: its listener's, or its own (READONLY).
    #[inline]
    pub(crate) fn read_policy(&self) -> crate::read::ReadFrom {
        self.reads.policy(self.pool.config.read_from)
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
            self.leave_own_connections();
        }
    }

    /// Drops the connections of the client's own, which speak the protocol and carry the login it
    /// had when they were opened; the next transaction or blocking command opens new ones. The
    /// WATCH lived on one of them: the transaction can no longer be checked.
    pub(super) fn leave_own_connections(&mut self) {
        self.tx.lose_watch();
        self.own = None;
    }

    /// This client's own connection to the backend of `shared`, opened on first use.
    pub(super) fn own_node(&mut self, shared: &Arc<Node>) -> Arc<Node> {
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
    fn node_for<'v>(
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
    fn forward(&mut self, view: &View<'_>, place: Place, spec: &Spec, frame: Bytes, now: Instant) {
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
    pub(super) fn send_for_effect<'n>(
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
    fn no_backend(&mut self, view: &View<'_>, place: Place) {
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

    /// Notes the pause that holds this client's oldest request, to look again when it changes.
    pub(super) fn pause_watch(&mut self, pause: &crate::pause::Pause) {
        let changes = pause.watch();
        let state = *changes.borrow();
        self.paused = Some(Box::new((state, changes)));
    }

    /// A script probed with its read-only twin under CLIENT PAUSE WRITE (see `dispatch`) answered
    /// `reply`: if the node refused it as one that may write (unrun), it is held as it came, and
    /// true.
    fn probe_refused(&mut self, reply: &[u8]) -> bool {
        let Some(probes) = self.probes.as_deref_mut() else {
            return false;
        };
        let Some(i) = probes.iter().position(|(seq, _)| *seq == self.front_seq) else {
            return false;
        };
        let (_, original) = probes.swap_remove(i);
        if probes.is_empty() {
            self.probes = None;
        }
        let refused = reply.starts_with(b"-ERR Can not execute a script with write flag")
            || reply.starts_with(b"-ERR Write commands are not allowed from read-only scripts");
        if refused {
            self.replace_front(Pending::Held(original));
            let pool = self.pool.clone();
            if pool.shared.pause.writes_only() {
                self.pause_watch(&pool.shared.pause);
            }
        }
        refused
    }

    /// Puts `pending` in the oldest request's place, its bookkeeping with it.
    fn replace_front(&mut self, pending: Pending) {
        let Some(front) = self.pending.front_mut() else {
            return;
        };
        let old = std::mem::replace(front, pending);
        let new = &self.pending[0];
        self.serial =
            (self.serial + usize::from(new.serial())).saturating_sub(usize::from(old.serial()));
        self.request_bytes =
            (self.request_bytes + new.request_bytes()).saturating_sub(old.request_bytes());
        self.replies_held =
            (self.replies_held + new.reply_bytes()).saturating_sub(old.reply_bytes());
        if self.scripts > 0 && old.script() {
            self.scripts -= 1;
        }
    }

    /// Whether the oldest request is a blocking command still waiting.
    fn blocked(&self) -> bool {
        matches!(self.pending.front(), Some(Pending::Wait(w)) if w.own_connection && w.result.is_none())
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

    /// Takes the invalidations left for this client: written now when nothing is under way, else
    /// after the replies of what is (see `deferred`).
    fn take_pushes(&mut self) {
        if !self.client.record.has_pushes() {
            return;
        }
        if let Some(how) = self.client.record.take_unblock() {
            self.unblock(how);
        }
        let after = self.front_seq + self.pending.len() as u64;
        for frame in self.client.record.take_pushes() {
            match self.pending.is_empty() {
                true => self.out.extend_from_slice(&frame),
                false => self
                    .deferred
                    .get_or_insert_with(Box::default)
                    .push_back((after, frame)),
            }
        }
        self.reply_boundary();
    }

    /// CLIENT UNBLOCK from another client: the blocked command ends as its timeout or an error
    /// would end it, and its connection of the client's own is closed, which unblocks it on the
    /// node too.
    fn unblock(&mut self, how: crate::clients::Unblock) {
        if !self.blocked() {
            return;
        }
        let reply: &'static [u8] = match (how, self.proto) {
            (crate::clients::Unblock::Error, _) => {
                b"-UNBLOCKED client unblocked via CLIENT UNBLOCK\r\n"
            }
            (_, 3) => b"_\r\n",
            _ => b"*-1\r\n",
        };
        if let Some(Pending::Wait(w)) = self.pending.front_mut() {
            w.result = Some(Ok(Bytes::from_static(reply)));
        }
        self.own = None;
        self.drain_ready();
    }

    /// Writes the deferred invalidations whose requests are all answered.
    fn write_deferred(&mut self) {
        if let Some(deferred) = self.deferred.as_deref_mut() {
            while let Some((after, _)) = deferred.front() {
                if *after > self.front_seq {
                    break;
                }
                if let Some((_, frame)) = deferred.pop_front() {
                    self.out.extend_from_slice(&frame);
                }
            }
            if deferred.is_empty() {
                self.deferred = None;
            }
        }
        self.reply_boundary();
    }

    /// A reply this client gets later from another task (CLIENT TRACKING ON, once slotline
    /// follows every master): queued in order like a backend's, bounded by the pool's timeout.
    pub(crate) fn answer_later(&mut self) -> crate::backend::ReplyTo {
        let seq = self.front_seq + self.pending.len() as u64;
        self.push(Pending::Wait(Waiting {
            result: None,
            frame: Bytes::new(),
            slot: None,
            sent: self.now,
            deadline: self.now + Duration::from_millis(self.pool.config.timeout),
            redirects: 0,
            own_connection: false,
            scripted: None,
            command: crate::cmdstats::NONE,
            replica: false,
            fence: None,
            joined: false,
        }));
        self.inbox.reply_to(seq)
    }

    /// Whether a script or function of this client's is unanswered. Not only the oldest request:
    /// Redis holds back the replies of whatever came before a busy script on its connection, so the
    /// request before it may wait as long as the script runs.
    fn running_script(&self) -> bool {
        self.scripts > 0
    }

    /// Whether another client of the pool has a script running (see [`Pool::others_run_scripts`]).
    pub(crate) fn others_run_scripts(&self) -> bool {
        self.pool.others_run_scripts(self.marks.script.is_some())
    }

    /// MONITOR: from now on every command through slotline is streamed to this client (answered
    /// +OK here).
    pub(crate) fn start_monitor(&mut self) {
        let stream = self.pool.shared.monitors.watch();
        self.monitor = Some(Box::new((stream, Vec::new())));
        // +OK once the masters' script commands are relayed too.
        let pool = self.pool.clone();
        if crate::monitor::start(&pool, || self.answer_later()) {
            self.reply(|r| r.ok());
        }
    }

    /// Appends the MONITOR lines taken since the last step; false when the client leaves more than
    /// [`crate::monitor::OUTPUT_LIMIT`] of them unread.
    fn write_monitor_lines(&mut self) -> bool {
        if !self.pending.is_empty() {
            // After the replies before them (MONITOR's own +OK first).
            return true;
        }
        if let Some(state) = self.monitor.as_deref_mut() {
            for line in state.1.drain(..) {
                self.out.extend_from_slice(&line);
            }
            return self.out.len() <= crate::monitor::OUTPUT_LIMIT;
        }
        true
    }

    /// A monitor that fell too far behind is closed, as Redis closes a client past its output limit.
    fn drop_slow_monitor(&mut self) {
        static WARNED: crate::throttle::Throttle =
            crate::throttle::Throttle::new(Duration::from_secs(10));
        if WARNED.ready() {
            tracing::warn!(client.addr = %self.client.addr(), backlog = crate::monitor::BACKLOG,
                "closing a MONITOR client that does not keep up with the commands");
        }
        self.client_err = true;
    }

    /// Keeps what CLIENT LIST shows of this client current, and counts it in INFO's
    /// `blocked_clients` while it is [blocked](Self::blocked) or held by a pause: once per step, and the state only when
    /// a command that can change it ran (a keyed command changes nothing listed but the time and the
    /// command). A blocking request is always the oldest: it waits for those before it.
    pub(crate) fn publish_client_state(&mut self) {
        // Held by CLIENT PAUSE counts as blocked too, as in Redis (its suite waits on that).
        let blocked = self.blocked() || self.paused.is_some();
        let blocked_changed = blocked != self.marks.blocked.is_some();
        if blocked_changed {
            self.marks.blocked = blocked.then(|| super::Mark::take(&self.pool.shared));
        }
        let script = self.running_script();
        if script != self.marks.script.is_some() {
            self.marks.script = script.then(|| super::Mark::take(&self.pool));
        }
        // A subscriber's counts change when the backends confirm, in a step of their own.
        let changing = blocked_changed || self.pubsub.is_some();
        let Some(spec) = self.ran.take() else {
            if changing {
                self.publish_state(blocked);
            }
            return;
        };
        self.client.record.ran(spec);
        let may_change = !matches!(
            spec.route,
            Route::Keyed | Route::Split(_) | Route::AnyNode | Route::BlockingOption
        );
        if changing || may_change || self.tx.queuing() {
            self.publish_state(blocked);
        }
    }

    fn publish_state(&self, blocked: bool) {
        let subscriptions = self.pubsub.as_ref().map_or([0; 3], |p| p.counts());
        self.client.record.publish(crate::clients::State {
            resp: self.proto,
            subscriptions,
            multi: self.tx.queuing().then(|| self.tx.queued_count()),
            blocked,
        });
    }

    /// When the oldest request gives up, if it is still waiting for a backend.
    fn head_deadline(&self) -> Option<Instant> {
        match self.pending.front() {
            Some(Pending::Wait(w)) if w.result.is_none() => Some(w.deadline),
            Some(Pending::Split(s)) if s.parts.iter().any(|p| p.w.result.is_none()) => {
                Some(s.deadline)
            }
            Some(Pending::PubSub(s)) if s.waiting() => s.deadline,
            Some(Pending::Moving(m)) if m.waiting() => Some(m.deadline),
            _ => None,
        }
    }

    fn push(&mut self, pending: Pending) {
        self.serial += usize::from(pending.serial());
        self.request_bytes += pending.request_bytes();
        self.replies_held += pending.reply_bytes();
        self.pending.push_back(pending);
    }

    /// The oldest request is settled, its reply (if any) written. Returns whether that reply was
    /// dropped for CLIENT REPLY, if the client uses it.
    fn pop_front(&mut self) -> Option<bool> {
        let silenced = match self.reply_mode.is_some() {
            true => self.reply_settled(),
            false => None,
        };
        if let Some(pending) = self.pending.pop_front() {
            debug_assert!(self.serial >= usize::from(pending.serial()));
            self.serial = self.serial.saturating_sub(usize::from(pending.serial()));
            if self.scripts > 0 && pending.script() {
                self.scripts -= 1;
            }
            self.request_bytes = self.request_bytes.saturating_sub(pending.request_bytes());
            self.replies_held = self.replies_held.saturating_sub(pending.reply_bytes());
        }
        self.front_seq += 1;
        if self.deferred.is_some() {
            self.write_deferred();
        }
        if self.pending.is_empty() && self.pending.capacity() > 64 {
            // A burst is over: an idle client keeps no queue the size of its deepest pipeline.
            self.pending = VecDeque::new();
        }
        silenced
    }

    /// Takes the worker's scratch buffer to compose this step's output in, unless output from an
    /// earlier step is still waiting for the socket.
    fn begin_output(&mut self) {
        if self.out.is_empty() {
            self.out = buffers::take_scratch();
            self.out_scratch = true;
        }
        self.reply_boundary();
    }

    /// Gives the scratch buffer back; what the socket did not take moves into a buffer of the
    /// client's own.
    fn end_output(&mut self) {
        if !std::mem::take(&mut self.out_scratch) {
            if self.out.is_empty() && self.out.capacity() > 0 {
                self.out = BytesMut::new();
            }
            return;
        }
        let scratch = std::mem::take(&mut self.out);
        if !scratch.is_empty() {
            self.out = BytesMut::from(&scratch[..]);
        }
        buffers::give_scratch(scratch);
        if self.arrived.capacity() > 64 {
            self.arrived = Vec::new();
        }
    }

    /// Output to write now: replies are ready and do not wait for the rest of their read's (see
    /// [`Ctx::holds_output`]).
    fn output_due(&self) -> bool {
        !self.out.is_empty() && !self.holds_output()
    }

    /// Whether the replies ready now wait for the next one: the oldest unanswered request came
    /// in the same read as the reply before it and is on its way on a shared connection, so its
    /// answer is a moment away (and its deadline still bounds the wait). Redis answers the
    /// requests of one read in one write; so does slotline, where a pipeline spread over several
    /// backends would otherwise cost a write per backend, and the client a read for each: half
    /// of slotline's CPU at -P 16 goes to its writes.
    fn holds_output(&self) -> bool {
        self.hold_room().is_some_and(|room| room > 0)
            && matches!(self.pending.front(), Some(Pending::Wait(w))
                if w.result.is_none() && w.holds_earlier_replies())
    }

    /// Bytes of replies that may still be held before a write (see
    /// [`holds_output`](Self::holds_output)); None when none may.
    fn hold_room(&self) -> Option<u16> {
        let room = HOLD_OUTPUT
            .checked_sub(self.out.len())
            .filter(|_| !self.closing)?;
        u16::try_from(room).ok()
    }

    /// Takes stock of a write; false when the client is gone.
    fn wrote(&mut self, written: std::io::Result<usize>) -> bool {
        match written {
            Ok(n) => {
                self.out_counted = self.out_counted.saturating_sub(n);
                if self.out.is_empty() {
                    self.pubsub_written();
                }
                true
            }
            Err(_) => {
                self.client_err = true;
                false
            }
        }
    }

    /// The client asked for more than it reads: its replies passed `max_client_reply_bytes`.
    fn too_much_output(&mut self, limit: usize) {
        static WARNED: crate::throttle::Throttle =
            crate::throttle::Throttle::new(Duration::from_secs(10));
        if WARNED.ready() {
            tracing::warn!(client.addr = %self.client.addr(), pool = %self.pool.name, limit,
                "closing a client that does not read its replies (max_client_reply_bytes reached)");
        }
        self.tally.get().error(ErrorKind::Proxy);
        self.client_err = true;
    }

    /// Holds a request for the client's own connection until everything before it is answered.
    pub(super) fn hold(&mut self, frame: &Bytes) {
        self.push(Pending::Held(frame.clone()));
    }

    /// Dispatches a held request, now that nothing is before it; `decided` is whether its reply is
    /// dropped, if that was decided when it was held (see [`reply_mode`]).
    fn release(&mut self, frame: Bytes, decided: Option<bool>) {
        if let Some(parser) = parsed_again(&frame) {
            let pool = self.pool.clone();
            let view = View::of(&pool);
            let (queued, written) = (self.pending.len(), self.out.len());
            self.dispatch(parser.args(), frame, &view, Instant::now(), false);
            self.after_dispatch(queued, written, decided);
        }
    }

    /// Gives each reply taken from the inbox to its request. Replies for requests that already gave up
    /// (timed out) find no place and are dropped.
    fn place_arrived(&mut self) {
        let now = self.now;
        for (seq, result) in self.arrived.drain(..) {
            let (seq, part) = match seq & PART {
                0 => (seq, None),
                _ => ((seq & !PART) >> PART_BITS, Some(seq as usize % MAX_PARTS)),
            };
            let Some(i) = seq.checked_sub(self.front_seq) else {
                continue;
            };
            match (self.pending.get_mut(i as usize), part) {
                (Some(Pending::Wait(w)), None) if w.result.is_none() => {
                    // Sent at `deadline - timeout` (redirects included). A blocking command waits as
                    // long as the client asked: not a backend's answer time.
                    if !w.own_connection {
                        self.tally.get().backend_answered(w.sent, now);
                    }
                    let (tracking, inbox) = (&self.pool.tracking, &self.inbox);
                    let barrier =
                        |master| tracking.barrier(master, inbox.reply_to(part_seq(seq, 0)));
                    let Some(result) = w.fenced(result, barrier) else {
                        continue;
                    };
                    w.result = Some(result);
                    self.replies_held += w.reply_bytes();
                }
                (Some(Pending::Wait(w)), Some(_)) => {
                    // Its fence's barrier passed (or its feed is gone): the reply may go.
                    if let Some(held) = Fence::release(&mut w.fence) {
                        w.result = Some(held);
                        self.replies_held += w.reply_bytes();
                    }
                }
                (Some(Pending::Moving(m)), Some(part)) => {
                    if let Some(slot) = m.replies.get_mut(part) {
                        *slot = Some(result);
                    }
                }
                (Some(Pending::Split(s)), Some(part)) => {
                    let Some(w) = s.parts.get_mut(part).map(|p| &mut p.w) else {
                        continue;
                    };
                    // Its reply (not its fence's barrier): the backend has answered.
                    if !matches!(w.fence.as_deref(), Some(Fence::Held(_))) {
                        self.tally.get().backend_answered(w.sent, now);
                    }
                    let (tracking, inbox) = (&self.pool.tracking, &self.inbox);
                    let barrier =
                        |master| tracking.barrier(master, inbox.reply_to(part_seq(seq, part)));
                    let Some(result) = w.fenced(result, barrier) else {
                        continue;
                    };
                    w.result = Some(result);
                    self.replies_held += w.reply_bytes();
                }
                _ => {}
            }
        }
    }

    /// Moves every reply that is already known, from the front of the pipeline, into the output.
    fn drain_ready(&mut self) {
        self.place_arrived();
        self.take_pubsub();
        self.reply_boundary();
        loop {
            let result = match self.pending.front_mut() {
                None => {
                    // Everything it sent is answered: its writes are acknowledged as of now.
                    self.reads.settled(self.now.into_std());
                    return;
                }
                Some(Pending::Ready(bytes)) => {
                    self.out.extend_from_slice(bytes);
                    self.pop_front();
                    continue;
                }
                Some(Pending::Wait(w)) => {
                    let held = w.reply_bytes();
                    match w.result.take() {
                        Some(result) => {
                            self.replies_held = self.replies_held.saturating_sub(held);
                            result
                        }
                        None => return,
                    }
                }
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
                Some(Pending::Moving(_)) => {
                    if self.settle_moving() {
                        continue;
                    }
                    return;
                }
                Some(Pending::Held(frame)) => {
                    if let Some((held_by, changes)) = self.paused.as_deref() {
                        // The same pause, not over: the held request waits. Anything else, and
                        // dispatching it again decides.
                        let current = *changes.borrow();
                        if current == *held_by && held_by.is_some_and(|(end, _)| end > self.now) {
                            return;
                        }
                        self.paused = None;
                    }
                    let frame = frame.clone();
                    let decided = self.pop_front();
                    self.release(frame, decided);
                    continue;
                }
            };
            self.on_head(HeadEvent::Reply(result));
        }
    }

    /// Settles the oldest request: forwards its reply, follows a redirect, or reports a failure.
    fn on_head(&mut self, event: HeadEvent) {
        if let Some(hello) = self.checks_login() {
            return self.node_login_checked(event, hello);
        }
        if let (HeadEvent::Timeout, Some(Pending::Split(s))) = (&event, self.pending.front_mut()) {
            // Writes that ran and only wait for a slow feed go as they are.
            for w in s.parts.iter_mut().map(|p| &mut p.w) {
                if let Some(held) = Fence::release(&mut w.fence) {
                    w.result = Some(held);
                }
            }
            if s.parts.iter().all(|p| p.w.result.is_some()) {
                return;
            }
        }
        if let (HeadEvent::Timeout, Some(Pending::Split(_))) = (&event, self.pending.front()) {
            if self.read_parts_again(false) {
                // Its replicas did not answer in time: its masters may.
                return;
            }
            self.tally.get().error(ErrorKind::Timeout);
            stats::add(&self.pool.stats.forward_error, 1);
            self.timed_out();
            self.pop_front();
            return;
        }
        if let (HeadEvent::Timeout, Some(Pending::PubSub(_))) = (&event, self.pending.front()) {
            return self.pubsub_timed_out();
        }
        if let (HeadEvent::Timeout, Some(Pending::Moving(_))) = (&event, self.pending.front()) {
            self.tally.get().error(ErrorKind::Timeout);
            self.timed_out();
            self.pop_front();
            return;
        }
        let Some(Pending::Wait(w)) = self.pending.front_mut() else {
            return;
        };
        if w.replica && !matches!(event, HeadEvent::Reply(Ok(_))) {
            // A read is idempotent: one its replica failed runs again on the master.
            w.replica = false;
            if self.read_again_on_master() {
                return;
            }
        }
        let Some(Pending::Wait(w)) = self.pending.front_mut() else {
            return;
        };
        let event = match event {
            // The write ran; only its feed did not answer in time: its reply goes as it is.
            HeadEvent::Timeout => Fence::release(&mut w.fence).map_or(event, HeadEvent::Reply),
            event => event,
        };
        // Observed once the client's reply is decided. Not for blocking commands, which take as
        // long as the client asked them to.
        let started = (!w.own_connection).then_some(w.sent);
        // How long the client has waited: for the latency histogram, and for SLOWLOG, which reads
        // the request's arguments again only for a slow one.
        let now = self.now;
        let took = started.map(|s| self.tally.get().elapsed(s, now));
        let command = w.command;
        let slowlog = &self.pool.shared.slowlog;
        let slow = match took {
            Some(took) => slowlog.is_slow(took).then_some(took),
            // A blocking command: Redis logs its run, not its wait, which is next to nothing.
            None => slowlog.is_slow(Duration::ZERO).then_some(Duration::ZERO),
        }
        .map(|took| (took, w.frame.clone()));
        let reply = match event {
            HeadEvent::Reply(Ok(reply)) => reply,
            HeadEvent::Reply(Err(e)) => {
                self.tally.get().answered_in(took);
                self.tally.get().command_answered(command, took, true);
                self.tally.get().error(ErrorKind::from(&e));
                stats::add(&self.pool.stats.forward_error, 1);
                self.error_now(&format!("ERR slotline: {e}"));
                self.pop_front();
                return;
            }
            HeadEvent::Timeout => {
                self.tally.get().answered_in(took);
                self.tally.get().command_answered(command, took, true);
                self.tally.get().error(ErrorKind::Timeout);
                stats::add(&self.pool.stats.forward_error, 1);
                self.timed_out();
                self.pop_front();
                return;
            }
        };
        // Only an error reply can be a redirect (or anything but the client's answer).
        if reply.first() == Some(&b'-') {
            let own_connection = w.own_connection;
            if self.probes.is_some() && self.probe_refused(&reply) {
                return;
            }
            if own_connection {
                if let Some(kind) = self.follow_on_own(&reply) {
                    return self.tally.get().redirect(kind);
                }
            }
            let via = self.via();
            let Some(Pending::Wait(w)) = self.pending.front_mut() else {
                return;
            };
            let pick = self.client.id() as usize;
            let resend = || self.inbox.reply_to(self.front_seq);
            let failure = match follow_reply(&self.pool, pick, via, w, &reply, resend) {
                Redirected::Followed(kind) => return self.tally.get().redirect(kind),
                Redirected::Refused => ErrorKind::RedirectLimit,
                Redirected::No => ErrorKind::BackendError,
            };
            self.tally.get().error(failure);
            self.pool.shared.errorstats.count(&reply);
        }
        let tally = self.tally.get();
        tally.answered_in(took);
        tally.command_answered(command, took, reply.first() == Some(&b'-'));
        if let Some((took, frame)) = slow {
            self.log_slow(&frame, took);
        }
        if self.tracking.as_deref().is_some_and(|t| t.noloop) {
            self.noloop_answered(&reply);
        }
        self.out.extend_from_slice(&reply);
        self.pop_front();
    }

    /// The oldest request of a NOLOOP tracking client is answered with `reply`: a write that
    /// changed nothing takes back its count of own writes (see [`crate::tracking::changed_nothing`]);
    /// a script, the counts of the keys it named and did not write.
    fn noloop_answered(&self, reply: &[u8]) {
        let Some(Pending::Wait(w)) = self.pending.front() else {
            return;
        };
        let Some(spec) = command::all().get(usize::from(w.command)) else {
            return;
        };
        let script = spec.runs_script() && !spec.has(flags::READONLY);
        // The reply alone rules out most writes (any key count short of all counts), before
        // the request is parsed again for its keys.
        let unchanged = || crate::tracking::changed_nothing(spec, reply, usize::MAX);
        if !script && (!spec.has(flags::WRITE) || !unchanged()) {
            return;
        }
        let Some(parser) = parsed_again(&w.frame) else {
            return;
        };
        let req = Request {
            frame: &w.frame,
            args: parser.args(),
        };
        let mut keys = Vec::new();
        req.for_each_key(spec, |key| keys.push(key));
        let (tracking, shared) = (&self.pool.tracking, &self.pool.shared);
        if script {
            // Its fence has passed: its own invalidations have come.
            tracking.script_answered(self.client.id(), keys.into_iter());
        } else if crate::tracking::changed_nothing(spec, reply, keys.len()) {
            tracking.unwrote(self.client.id(), keys.into_iter(), shared);
        }
    }

    /// Sends the oldest request, a read its replica failed, to its master instead; false when
    /// there is none to send it to.
    #[cold]
    #[inline(never)]
    fn read_again_on_master(&mut self) -> bool {
        let pool = self.pool.clone();
        let view = View::of(&pool);
        let (pick, via) = (self.client.id() as usize, self.via());
        let Some(Pending::Wait(w)) = self.pending.front_mut() else {
            return false;
        };
        let place = w.slot.map_or(Place::Any, Place::Slot);
        let Some(master) = view.target(place, pick) else {
            return false;
        };
        master
            .via(via)
            .send(pick, &w.frame, false, self.inbox.reply_to(self.front_seq));
        w.deadline = self.now + Duration::from_millis(pool.config.timeout);
        if let Some(counters) = pool.router.read_counters() {
            counters.retried.fetch_add(1, Ordering::Relaxed);
        }
        true
    }

    /// Adds a slow request to SLOWLOG.
    fn log_slow(&self, frame: &Bytes, took: Duration) {
        if let Some(parser) = parsed_again(frame) {
            let args = parser.args();
            let arg = |&(s, e): &(u32, u32)| frame.get(s as usize..e as usize).unwrap_or_default();
            self.pool.shared.slowlog.log(
                args.iter().map(arg),
                took,
                self.client.addr(),
                self.client.record.name(),
            );
        }
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
        self.tally.get().error(ErrorKind::Proxy);
        if self.dispatching != crate::cmdstats::NONE {
            self.tally.get().rejected(self.dispatching);
        }
        self.pool.shared.errorstats.count(msg.as_bytes());
        // An error while queuing a transaction dooms it, as with Redis.
        self.tx.abort();
        self.reply(|r| r.error(msg));
    }

    /// An error for the request at the front, written before it leaves the queue.
    fn error_now(&mut self, msg: &str) {
        self.pool.shared.errorstats.count(msg.as_bytes());
        Reply(&mut self.out).error(msg);
    }

    /// How this client's requests reach a node: in its protocol, as its user's backend login.
    pub(super) fn via(&self) -> Via {
        Via {
            proto: self.proto,
            login: self.user.as_ref().and_then(|u| u.backend),
        }
    }

    /// The client is now `user` (None: logged out), in the session and in CLIENT LIST. Under
    /// another backend login, the connections of its own (logged in as who it was) go.
    pub(crate) fn set_user(&mut self, user: Option<Arc<crate::acl::Active>>) {
        if user.as_ref().and_then(|u| u.backend) != self.via().login {
            self.leave_own_connections();
        }
        self.client.record.set_user(user.clone());
        self.user = user;
    }

    /// Whether the client may log in as a user whose backend login is `login` (None: a node user,
    /// whose login is known only once a node has accepted it): not while it is subscribed under
    /// another, which it is told. Its subscriber connections stay logged in as who it is now, and
    /// its next subscriptions would go on them, checked by the nodes against the wrong user. (A
    /// RESP2 subscriber cannot send AUTH at all; RESP3 lets it.)
    pub(crate) fn may_log_in_as(&mut self, login: Option<Option<u16>>) -> bool {
        if self.pubsub.is_none() || login == Some(self.via().login) {
            return true;
        }
        self.error(
            "ERR slotline: a subscribed client cannot log in as a user of another backend login: \
             UNSUBSCRIBE first",
        );
        false
    }

    /// The client's user was replaced by a newer set (the ACL file changed): its new rules, by
    /// name. False, and the connection closing, when the user is gone or turned off.
    fn follow_user(&mut self) -> bool {
        let name = match &self.user {
            Some(user) => user.rules.name.clone(),
            None => return true,
        };
        match self.pool.acl.current(&name) {
            Some(user) => {
                self.set_user(Some(user));
                true
            }
            None => {
                self.set_user(None);
                self.closing = true;
                false
            }
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

    /// The command being dispatched, for INFO commandstats.
    pub(super) fn command_number(&self) -> u16 {
        self.dispatching
    }

    /// Appends a locally made reply in request order.
    pub(crate) fn reply(&mut self, write: impl FnOnce(&mut Reply<'_>)) {
        if self.pending.is_empty() {
            write(&mut Reply(&mut self.out));
        } else {
            let mut buf = BytesMut::new();
            write(&mut Reply(&mut buf));
            self.push(Pending::Ready(buf.freeze()));
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

    /// Sends what this step gathered (see [`crate::backend::Node::send_soon`]).
    fn send_gathered(&mut self) {
        if std::mem::take(&mut self.gathered) {
            if let Some(congested) = crate::backend::send_gathered() {
                self.congested = Some(congested);
            }
        }
    }

    fn flush_stats(&mut self) {
        if self.commands > 0 {
            self.pool.metrics.requests.inc_by(self.commands);
            if let Some(user) = self.user.as_ref().filter(|_| self.pool.acl.configured()) {
                user.stats
                    .commands
                    .fetch_add(self.commands, Ordering::Relaxed);
            }
            self.pool
                .shared
                .total_commands
                .fetch_add(std::mem::take(&mut self.commands), Ordering::Relaxed);
        }
        self.tally.flush();
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
