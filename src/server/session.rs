//! One client connection: read pipelined requests, route each, and write replies strictly in request
//! order, as many per write as are ready (those to requests read together, together).
//!
//! [`serve`] runs the loop, one step per wake-up. The step's parts sit beside it: [`dispatch`] (a
//! request parsed, looked up, checked and sent, or answered here), [`replies`] (replies placed
//! under their requests, the oldest answered, failed on its deadline or sent again), [`output`]
//! (what the client is written, and the bounds on what waits for it) and [`pending`] (what each
//! unanswered request waits for). Rarer paths have modules of their own: [`parts`] (requests
//! answered by several backends), [`redirect`], [`transaction`], [`pubsub`], [`moving`] (a
//! migrating pool), [`node_login`] and [`reply_mode`].

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

mod buffers;
mod demoted;
mod dispatch;
mod moving;
mod node_login;
mod output;
mod parts;
mod pending;
mod pubsub;
mod redirect;
mod replies;
mod reply_mode;
mod transaction;
mod view;

use super::Pool;
use crate::backend::{BackendResult, Inbox, Node, Via};
use crate::command::{Route, Spec};
use crate::metrics::Tally;
use crate::protocol::RequestParser;
use crate::stats;
use buffers::Input;
use pending::{Fence, Pending, Waiting};
use replies::{awaited, HeadEvent};
use transaction::Transaction;
use view::{Place, View};

/// How often a client held back by a congested backend looks whether its queue has drained.
const CONGESTION_CHECK: Duration = Duration::from_millis(10);

/// Unwritten output past which a client is not read: it has to take its replies before it may send
/// more (what it already asked for is still answered, up to `max_client_reply_bytes`).
const OUTPUT_PAUSE: usize = 256 * 1024;
/// The same for a client that has not authenticated, whose replies are only errors.
const OUTPUT_PAUSE_UNAUTHENTICATED: usize = 16 * 1024;
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
    /// A primary pool's demoted master gave up the blocking command at the head: the search for
    /// the master it goes to next (see [`demoted`]). Boxed: 8 bytes of a session until then.
    new_master: Option<Box<demoted::NewMaster>>,
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
        new_master: None,
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
            Woke::NewMaster(found) => ctx.on_new_master(found),
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
            // The master a blocking command goes to again, found or given up on.
            found = std::future::poll_fn(|cx| demoted::poll_found(&mut ctx.new_master, cx)), if ctx.new_master.is_some() => {
                woke = Woke::NewMaster(found);
            }
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

/// What woke the session that its next step must act on (replies and input are found by looking).
enum Woke {
    Nothing,
    /// The oldest request's deadline passed.
    Timer,
    /// A sharded pool's placement changed under the client's subscriptions.
    Placement,
    /// The search for a new master ended (see [`demoted`]).
    NewMaster(Option<Arc<Node>>),
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

    /// Notes the pause that holds this client's oldest request, to look again when it changes.
    pub(super) fn pause_watch(&mut self, pause: &crate::pause::Pause) {
        let changes = pause.watch();
        let state = *changes.borrow();
        self.paused = Some(Box::new((state, changes)));
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

    /// The command being dispatched, for INFO commandstats.
    pub(super) fn command_number(&self) -> u16 {
        self.dispatching
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
