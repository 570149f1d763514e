//! Requests answered by several backends together: multi-key commands split by slot or server,
//! commands sent to every master, SCAN, and the parts of a transaction. Each part is a [`Waiting`]
//! of its own, following its own redirects; the merge is [`fanout`]'s.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

use super::super::{fanout, info};
use super::redirect::{follow_reply, Redirected};
use super::view::{Place, View};
use super::{printable, Ctx, Pending, Waiting};
use crate::backend::Node;
use crate::command::policy;
use crate::command::{Admin, Merge, PoolOption, Split};
use crate::command::{Request, Spec};
use crate::metrics::ErrorKind;
use crate::protocol::{parse_int, Reply, RequestParser};
use crate::route::Slot;
use crate::stats;

/// Replies to the parts of a split request are numbered apart from whole requests: the top bit marks a
/// part, the low bits hold the part's index and the bits between the request's number.
pub(super) const PART: u64 = 1 << 63;
pub(super) const PART_BITS: u32 = 16;
/// Parts per request that the numbering can tell apart: more than a cluster has slots.
pub(super) const MAX_PARTS: usize = 1 << PART_BITS;

pub(super) fn part_seq(seq: u64, part: usize) -> u64 {
    PART | (seq << PART_BITS) | part as u64
}

/// The CONFIG SET parameters slotline has its own of.
enum OwnSetting {
    /// `slowlog-log-slower-than`
    SlowerThan,
    /// `slowlog-max-len`
    MaxLen,
    /// `tracking-table-max-keys`
    TrackingKeys,
}

/// What slotline made of a CONFIG SET (see [`Ctx::set_own_config`]).
pub(super) enum OwnConfig {
    /// It sets something slotline has no own of, or a value it refuses: the nodes' to answer.
    NotOwn,
    /// A value slotline cannot take: the client's answer.
    Refused(String),
    /// It set only what is slotline's alone: answered +OK here.
    Done,
    /// slotline took its share; `only_own`: nothing else was set; `frame`: the command without
    /// what was slotline's alone (None: the command as it is).
    Rest {
        only_own: bool,
        frame: Option<Bytes>,
    },
}

pub(super) struct SplitRequest {
    pub(super) merge: Merge,
    pub(super) nkeys: usize,
    /// The request's key numbers, grouped by part: each part holds a run of them.
    pub(super) keys: Vec<u32>,
    pub(super) deadline: Instant,
    pub(super) parts: Vec<Part>,
    /// An INFO that shows the masters' data ([`Merge::NodeInfo`]): the client's request.
    pub(super) info: Option<Bytes>,
    /// A transaction's local replies and their places in EXEC's reply ([`Merge::Exec`]).
    pub(super) spliced: Vec<(usize, Bytes)>,
    /// The command, for INFO commandstats (see [`crate::command::Spec::number`]).
    pub(super) command: u16,
}

/// A part on its way out.
pub(super) struct PartToSend {
    /// None: the slot has no owner (the part is answered CLUSTERDOWN).
    pub(super) node: Option<Arc<Node>>,
    /// Where its key numbers are in [`SplitRequest::keys`].
    pub(super) keys: Range<u32>,
    pub(super) frame: Bytes,
    /// For TRYAGAIN retries.
    pub(super) slot: Option<Slot>,
    /// Requests in `frame`, of which the last one's reply is the part's (a whole transaction: MULTI,
    /// its commands and EXEC); 1 for a plain part.
    pub(super) requests: u32,
    /// A read sent to a replica (run again on the master if the replica fails it).
    pub(super) replica: bool,
    /// Where it was routed (Any when that does not matter).
    pub(super) place: Place,
    /// Its answer when `node` is None (None: CLUSTERDOWN, the slot has no owner).
    pub(super) unserved: Option<Bytes>,
}

impl PartToSend {
    pub(super) fn new(node: Option<Arc<Node>>, frame: Bytes) -> PartToSend {
        PartToSend {
            node,
            keys: 0..0,
            frame,
            slot: None,
            requests: 1,
            replica: false,
            place: Place::Any,
            unserved: None,
        }
    }
}

pub(super) struct Part {
    /// Where the request's key numbers this part carries are in [`SplitRequest::keys`].
    pub(super) keys: Range<u32>,
    pub(super) w: Waiting,
    /// Where it was routed: a read a replica fails goes to that place's master.
    pub(super) place: Place,
}

impl Ctx {
    /// Cuts a multi-key request whose keys live in several places into one part per place, sends every
    /// part, and queues the request to be answered once all parts are. When its keys all live in one
    /// place, the request goes there as it is.
    pub(super) fn split(
        &mut self,
        req: Request<'_>,
        spec: &Spec,
        split: Split,
        frame: &Bytes,
        view: &View<'_>,
        now: Instant,
    ) {
        let Some(nkeys) = fanout::key_count(&req, split) else {
            let name = printable(req.arg(0)).to_lowercase();
            return self.error(&format!(
                "ERR wrong number of arguments for '{name}' command"
            ));
        };
        let mut placed: Vec<(Place, u32)> = (0..nkeys)
            .map(|k| (view.place_of(fanout::key(&req, split, k)), k as u32))
            .collect();
        if let Some(&(first, _)) = placed.first() {
            if placed.iter().all(|&(place, _)| place == first) {
                let place = view.for_reads(first, spec, self.read_policy());
                return self.forward(view, place, spec, frame.clone(), now);
            }
        }
        // Stable: each part keeps its keys in the client's order.
        placed.sort_by_key(|&(place, _)| place);
        let keys: Vec<u32> = placed.iter().map(|&(_, k)| k).collect();
        let pick = self.client.id() as usize;
        let policy = self.read_policy();
        let mut groups = Vec::new();
        let mut start = 0;
        for group in placed.chunk_by(|a, b| a.0 == b.0) {
            // A read's parts go where the client's read policy sends each slot's reads.
            let place = view.for_reads(group[0].0, spec, policy);
            let node = self.node_for(view, place, pick);
            let end = start + group.len() as u32;
            groups.push((
                node.map(|(n, _)| n.clone()),
                place,
                node.is_some_and(|(_, r)| r),
                start..end,
            ));
            start = end;
        }
        if groups.len() > MAX_PARTS {
            return self.error("ERR slotline: the keys of this command live in too many places");
        }
        // A node's parts side by side leave as one batch (stable: the merge goes by key numbers).
        groups.sort_by_key(|(node, ..)| {
            node.as_ref()
                .map_or(usize::MAX, |n| Arc::as_ptr(n) as usize)
        });
        // Every part's frame in one buffer: one allocation for the request, not one per part.
        // Each argument is in one part, as in the request; each part adds a header and the name.
        let size = req.frame.len() + groups.len() * (16 + req.arg(0).len());
        let mut buf = BytesMut::with_capacity(size);
        let mut ends = Vec::with_capacity(groups.len());
        for (_, _, _, range) in &groups {
            fanout::encode_into(
                &req,
                split,
                &keys[range.start as usize..range.end as usize],
                &mut buf,
            );
            ends.push(buf.len());
        }
        let buf = buf.freeze();
        let mut from = 0;
        let parts = groups
            .into_iter()
            .zip(ends)
            .map(|((node, place, replica, keys), end)| {
                let frame = buf.slice(from..end);
                from = end;
                PartToSend {
                    keys,
                    slot: place.slot(),
                    replica,
                    place,
                    unserved: node.is_none().then(|| unserved(view, place)),
                    ..PartToSend::new(node, frame)
                }
            })
            .collect();
        let deadline = now + Duration::from_millis(self.pool.config.timeout);
        self.send_parts(parts, split.merge, nkeys, keys, false, deadline);
    }

    /// Sends a command about the whole data set to every master (every server in service) as it is.
    pub(super) fn every_node(
        &mut self,
        spec: &Spec,
        merge: Merge,
        needs: Option<PoolOption>,
        frame: &Bytes,
        view: &View<'_>,
        now: Instant,
    ) {
        if spec.name == "script|flush" {
            self.pool.scripts.forget();
        }
        if needs == Some(PoolOption::AllowFlush) && !self.pool.config.allow_flush {
            let msg = format!(
                "ERR {} is disabled: it would empty every {} of pool '{}' (set allow_flush: true in its config to permit it)",
                spec.display_name(),
                match view { View::Cluster(..) | View::Primary(..) => "master", View::Shards(_) => "server" },
                self.pool.name
            );
            return self.error(&msg);
        }
        let policy = self.read_policy();
        let groups = (0..view.node_count())
            .map(|i| (view.for_reads(Place::Node(i), spec, policy), frame.clone()))
            .collect();
        self.fan_out(groups, merge, view, now);
    }

    /// CONFIG SET of the settings slotline has its own of: SLOWLOG's (SLOWLOG through slotline
    /// shows slotline's log) and `tracking-table-max-keys` are applied here when every value is
    /// valid, and go on to the nodes too; `port` is slotline's own alone (each node has its own):
    /// setting it to slotline's port changes nothing, and any other value refuses the command.
    pub(super) fn set_own_config(&mut self, req: Request<'_>) -> OwnConfig {
        let argc = req.argc();
        if argc < 4 || !argc.is_multiple_of(2) {
            return OwnConfig::NotOwn;
        }
        let mut own = Vec::new();
        let mut only_own = true;
        let mut port_at = None;
        for i in (2..argc).step_by(2) {
            let value = parse_int(req.arg(i + 1));
            match (req.arg(i).to_ascii_lowercase().as_slice(), value) {
                (b"slowlog-log-slower-than", Some(us)) if us >= -1 => {
                    own.push((OwnSetting::SlowerThan, us))
                }
                (b"slowlog-max-len", Some(n)) if n >= 0 => own.push((OwnSetting::MaxLen, n)),
                (b"tracking-table-max-keys", Some(n)) if n >= 0 => {
                    own.push((OwnSetting::TrackingKeys, n))
                }
                (
                    b"slowlog-log-slower-than" | b"slowlog-max-len" | b"tracking-table-max-keys",
                    _,
                ) => return OwnConfig::NotOwn,
                (b"port", Some(port)) if port == i64::from(self.client.port()) => port_at = Some(i),
                (b"port", _) => {
                    return OwnConfig::Refused(format!(
                        "ERR CONFIG SET failed (possibly related to argument 'port') - Unable to listen on this port: slotline keeps listening on {} for this pool (each node's own port is set on the node)",
                        self.client.port()
                    ))
                }
                _ => only_own = false,
            }
        }
        if !only_own && !self.pool.config.allow_admin {
            // Refused as a whole, as Redis refuses a CONFIG SET with one bad parameter.
            return OwnConfig::NotOwn;
        }
        let log = &self.pool.shared.slowlog;
        for (which, value) in own {
            let count = usize::try_from(value).unwrap_or(usize::MAX);
            match which {
                OwnSetting::SlowerThan => log.set_slower_than(value),
                OwnSetting::MaxLen => log.set_max_len(count),
                OwnSetting::TrackingKeys => {
                    self.pool.tracking.set_max_keys(count, &self.pool.shared)
                }
            }
        }
        match port_at {
            // Every other parameter goes on to the nodes.
            Some(at) if argc > 4 => {
                let keep: Vec<usize> = (0..argc).filter(|&i| i != at && i != at + 1).collect();
                OwnConfig::Rest {
                    only_own,
                    frame: Some(fanout::with_args(&req, &keep)),
                }
            }
            Some(_) => OwnConfig::Done,
            None => OwnConfig::Rest {
                only_own,
                frame: None,
            },
        }
    }

    /// An administrative command: refused unless the pool sets `allow_admin`; then to one master, or
    /// to every master and replica with +OK only when each said so (else the first error).
    pub(super) fn admin(
        &mut self,
        req: Request<'_>,
        spec: &Spec,
        admin: Admin,
        frame: &Bytes,
        view: &View<'_>,
        now: Instant,
    ) {
        let mut frame = frame;
        let rest;
        if spec.name == "config|set" {
            match self.set_own_config(req) {
                OwnConfig::Refused(msg) => return self.error(&msg),
                OwnConfig::Done => return self.reply(|r| r.ok()),
                // Only slotline's own settings: answered here.
                OwnConfig::Rest { only_own: true, .. } if !self.pool.config.allow_admin => {
                    return self.reply(|r| r.ok())
                }
                OwnConfig::Rest {
                    frame: Some(without),
                    ..
                } => {
                    rest = without;
                    frame = &rest;
                }
                OwnConfig::Rest { .. } | OwnConfig::NotOwn => {}
            }
        }
        if spec.name == "config|resetstat" {
            // slotline's own statistics (INFO commandstats, errorstats); the nodes' too with
            // `allow_admin`.
            let shared = &self.pool.shared;
            shared.errorstats.reset();
            for pool in shared.pools() {
                pool.metrics.commandstats.reset();
            }
            if !self.pool.config.allow_admin {
                return self.reply(|r| r.ok());
            }
        }
        if !self.pool.config.allow_admin {
            let msg = format!(
                "ERR {} is not supported by slotline: administrative commands go to the Redis nodes directly (set allow_admin: true in pool '{}' to send it to them)",
                spec.display_name(),
                self.pool.name
            );
            return self.error(&msg);
        }
        match admin {
            Admin::OneNode if spec.name == "config|get" => {
                let port = self.client.port();
                let groups = vec![(Place::Any, frame.clone())];
                self.fan_out(groups, Merge::Config { port }, view, now);
            }
            Admin::OneNode => self.forward(view, Place::Any, spec, frame.clone(), now),
            Admin::EveryMember(merge) => {
                let parts: Vec<PartToSend> = view
                    .members()
                    .into_iter()
                    .map(|node| PartToSend::new(Some(node), frame.clone()))
                    .collect();
                if parts.is_empty() {
                    return self.no_backend(view, Place::Any);
                }
                let deadline = now + Duration::from_millis(self.pool.config.timeout);
                self.send_parts(parts, merge, 0, Vec::new(), false, deadline);
            }
        }
    }

    /// To every master on connections of this client's own, since the shared connection may be
    /// the one whose script runs: SCRIPT KILL, FUNCTION KILL and STATS (see
    /// [`Route::RunningScript`]), and PING while a script runs.
    ///
    /// [`Route::RunningScript`]: crate::command::Route::RunningScript
    pub(super) fn every_master_apart(
        &mut self,
        frame: &Bytes,
        merge: Merge,
        view: &View<'_>,
        now: Instant,
    ) {
        let masters: Vec<Arc<Node>> = view.masters().cloned().collect();
        if masters.is_empty() {
            return self.no_backend(view, Place::Any);
        }
        let parts = masters
            .iter()
            .map(|node| PartToSend::new(Some(self.own_node(node)), frame.clone()))
            .collect();
        let deadline = now + Duration::from_millis(self.pool.config.timeout);
        self.send_parts(parts, merge, 0, Vec::new(), true, deadline);
    }

    /// INFO showing the masters' data: every master is asked for its keyspace and counters, and
    /// the reply composed once all have answered (see [`Merge::NodeInfo`]).
    pub(super) fn info_from_nodes(&mut self, frame: &Bytes, view: &View<'_>, now: Instant) {
        let groups: Vec<(Place, Bytes)> = (0..view.node_count())
            .map(|i| (Place::Node(i), Bytes::from_static(info::NODE_SECTIONS)))
            .collect();
        if groups.is_empty() {
            // No master known yet: slotline's own sections.
            if let Some(parser) = RequestParser::parsed_again(frame) {
                let req = Request {
                    frame,
                    args: parser.args(),
                };
                let text = info::render(&self.pool, &self.client, req, None);
                self.reply(|r| r.bulk(text.as_bytes()));
            }
            return;
        }
        self.fan_out(groups, Merge::NodeInfo, view, now);
        if let Some(Pending::Split(s)) = self.pending.back_mut() {
            s.info = Some(frame.clone());
        }
    }

    /// SCAN, one master at a time: the cursor's top bits say which.
    pub(super) fn scan(&mut self, req: Request<'_>, view: &View<'_>, now: Instant) {
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
        let groups = vec![(Place::Node(node), frame)];
        self.fan_out(groups, Merge::Scan { node, nodes }, view, now);
    }

    /// Sends each frame to its place and queues the request to be answered once all are.
    pub(super) fn fan_out(
        &mut self,
        groups: Vec<(Place, Bytes)>,
        merge: Merge,
        view: &View<'_>,
        now: Instant,
    ) {
        if groups.len() > MAX_PARTS {
            return self.error("ERR slotline: the keys of this command live in too many places");
        }
        if groups.is_empty() {
            return self.error("CLUSTERDOWN slotline knows no backend to send this to yet");
        }
        let pick = self.client.id() as usize;
        let parts = groups
            .into_iter()
            .map(|(place, frame)| {
                let node = self.node_for(view, place, pick);
                PartToSend {
                    slot: place.slot(),
                    replica: node.is_some_and(|(_, r)| r),
                    place,
                    unserved: node.is_none().then(|| unserved(view, place)),
                    ..PartToSend::new(node.map(|(n, _)| n.clone()), frame)
                }
            })
            .collect();
        let deadline = now + Duration::from_millis(self.pool.config.timeout);
        self.send_parts(parts, merge, 0, Vec::new(), false, deadline);
    }

    /// The oldest request's parts that a replica failed (`failed`: its connection was lost) or has
    /// not answered in time (else) go to their masters instead, once. True when any did.
    pub(super) fn read_parts_again(&mut self, failed: bool) -> bool {
        let Some(Pending::Split(s)) = self.pending.front() else {
            return false;
        };
        let retry = |w: &Waiting| {
            w.replica
                && match &w.result {
                    Some(Err(_)) => failed,
                    None => !failed,
                    Some(Ok(_)) => false,
                }
        };
        if !s.parts.iter().any(|p| retry(&p.w)) {
            return false;
        }
        let pool = self.pool.clone();
        let view = View::of(&pool);
        let (pick, via, front) = (self.client.id() as usize, self.via(), self.front_seq);
        let deadline = self.now + Duration::from_millis(pool.config.timeout);
        let Some(Pending::Split(s)) = self.pending.front_mut() else {
            return false;
        };
        let mut sent = false;
        for (i, part) in s.parts.iter_mut().enumerate() {
            if !retry(&part.w) {
                continue;
            }
            part.w.replica = false;
            let Some(master) = view.target(part.place, pick) else {
                continue;
            };
            part.w.result = None;
            part.w.deadline = deadline;
            let reply = self.inbox.reply_to(part_seq(front, i));
            master.via(via).send(pick, &part.w.frame, false, reply);
            if let Some(counters) = pool.router.read_counters() {
                counters
                    .retried
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            sent = true;
        }
        if sent {
            s.deadline = deadline;
        }
        sent
    }

    /// Sends each part to its node (a part without one is answered CLUSTERDOWN) and queues the request
    /// to be answered once every part is, or to fail at `deadline`. Consecutive parts for one node go
    /// as one batch: one message to its connection, and each reply delivered as it is read. Parts on
    /// the client's own connection follow no redirects.
    pub(super) fn send_parts(
        &mut self,
        parts: Vec<PartToSend>,
        merge: Merge,
        nkeys: usize,
        keys: Vec<u32>,
        own_connection: bool,
        deadline: Instant,
    ) {
        let seq = self.front_seq + self.pending.len() as u64;
        let pick = self.client.id() as usize;
        if parts.len() > MAX_PARTS {
            // The numbering could not tell their replies apart.
            return self.error("ERR slotline: the request has too many parts");
        }
        let mut sent = Vec::with_capacity(parts.len());
        let mut nodes = Vec::with_capacity(parts.len());
        let mut requests = Vec::with_capacity(parts.len());
        // Writes (EXEC included) are fenced while clients track (see `super::Fence`).
        let fenced = self.pool.tracking.fencing() && self.ran.is_some_and(policy::may_write);
        for part in parts {
            let PartToSend {
                node,
                keys,
                frame,
                slot,
                requests: count,
                replica,
                place,
                unserved,
            } = part;
            requests.push(count);
            let result = node
                .is_none()
                .then(|| Ok(unserved.unwrap_or_else(|| Bytes::from_static(SLOT_NOT_SERVED))));
            let w = Waiting {
                result,
                frame,
                slot,
                deadline,
                redirects: 0,
                own_connection,
                scripted: None,
                command: crate::cmdstats::NONE,
                sent: self.now,
                replica,
                fence: match (fenced, &node) {
                    (true, Some(node)) => Some(Box::new(super::Fence::Write(node.addr().clone()))),
                    _ => None,
                },
                joined: false,
            };
            sent.push(Part { keys, w, place });
            nodes.push(node);
        }
        let via = self.via();
        let mut first = 0;
        while first < sent.len() {
            let Some(node) = &nodes[first] else {
                first += 1;
                continue;
            };
            let run = nodes[first..]
                .iter()
                .zip(&requests[first..])
                .take_while(|(n, &r)| r == 1 && n.as_ref().is_some_and(|n| Arc::ptr_eq(n, node)))
                .count();
            // Own connections already speak the client's protocol.
            let node = match own_connection {
                true => node,
                false => node.via(via),
            };
            if run == 0 {
                // A whole transaction: only its last reply (EXEC's) is the part's.
                let reply = self
                    .inbox
                    .reply_to_last(part_seq(seq, first), requests[first]);
                node.send_batch(pick, std::iter::once(&sent[first].w.frame[..]), reply);
                first += 1;
                continue;
            }
            // One number per part: the replies of a batch are delivered each under its own.
            let reply = self.inbox.reply_to_each(part_seq(seq, first), run as u32);
            let congested = if run == 1 {
                node.send(pick, &sent[first].w.frame, false, reply)
            } else {
                let frames = sent[first..first + run].iter().map(|p| &p.w.frame[..]);
                node.send_batch(pick, frames, reply)
            };
            if congested {
                self.congested = Some(node.clone());
            }
            first += run;
        }
        stats::add(&self.pool.stats.fragments, sent.len() as u64);
        self.push(Pending::Split(Box::new(SplitRequest {
            merge,
            nkeys,
            keys,
            deadline,
            parts: sent,
            info: None,
            spliced: Vec::new(),
            command: self.command_number(),
        })));
    }

    /// WAIT. The client's writes went to any master, over shared connections, so every master is
    /// asked on a connection of the client's own. First a script there sets and deletes a key of
    /// slotline's own (in a slot that master serves): it leaves no trace, but it gives the connection a
    /// replication offset past every write the master ran for the client before (Redis 7.0 moves a
    /// connection's offset with any command; later versions only with commands that replicate, hence
    /// a write). WAIT then waits for the replicas to reach that offset. The client gets the least
    /// count: each of its earlier writes reached at least that many replicas.
    pub(super) fn wait(&mut self, req: Request<'_>, frame: &Bytes, view: &View<'_>, now: Instant) {
        let timeout = match parse_int(req.arg(2)) {
            Some(t) if t >= 0 => t as u64,
            Some(_) => return self.error("ERR timeout is negative"),
            None => return self.error("ERR timeout is not an integer or out of range"),
        };
        if parse_int(req.arg(1)).is_none() {
            return self.error("ERR value is not an integer or out of range");
        }
        let pick = self.client.id() as usize;
        let mut parts = Vec::new();
        for i in 0..view.node_count() {
            let Some(node) = view.target_or_refresh(Place::Node(i), pick).cloned() else {
                return self.error("CLUSTERDOWN slotline knows no backend to send this to yet");
            };
            let Some(mark) = wait_mark(view, &node, pick) else {
                return self.error("ERR slotline: found no key of its own on a master for WAIT");
            };
            let own = self.own_node(&node);
            parts.push(PartToSend::new(Some(own.clone()), mark));
            parts.push(PartToSend::new(Some(own), frame.clone()));
        }
        if parts.is_empty() {
            return self.error("CLUSTERDOWN slotline knows no backend to send this to yet");
        }
        // WAIT 0 blocks until the replicas answer: as long as a blocking command, which also bounds
        // absurd timeouts (an Instant cannot reach that far).
        let deadline = match timeout {
            0 => now + super::BLOCKING_WAIT,
            ms => {
                let wait = Duration::from_millis(ms.saturating_add(self.pool.config.timeout));
                now + wait.min(super::BLOCKING_WAIT)
            }
        };
        self.send_parts(parts, Merge::Wait, 0, Vec::new(), true, deadline);
    }

    /// Follows redirects of the split request at the front and, once every part is answered, writes
    /// the merged reply. Returns false while a part is still waiting.
    pub(super) fn settle_split(&mut self) -> bool {
        let via = self.via();
        if self.read_parts_again(true) {
            return false;
        }
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
            let pick = self.client.id() as usize;
            let resend = || self.inbox.reply_to(part_seq(self.front_seq, i));
            if let Redirected::Followed(kind) =
                follow_reply(&self.pool, pick, via, &mut part.w, &reply, resend)
            {
                self.tally.get().redirect(kind);
                self.replies_held = self.replies_held.saturating_sub(reply.len());
                waiting = true;
                continue;
            }
            part.w.result = Some(Ok(reply));
        }
        if waiting {
            return false;
        }
        let written = self.out.len();
        let failed = s.parts.iter().find_map(|p| match &p.w.result {
            Some(Err(e)) => Some(format!("ERR slotline: {e}")),
            _ => None,
        });
        let counted = failed.is_some();
        match failed {
            Some(msg) => {
                self.tally.get().error(ErrorKind::Connection);
                stats::add(&self.pool.stats.forward_error, 1);
                self.pool.shared.errorstats.count(msg.as_bytes());
                Reply(&mut self.out).error(&msg);
            }
            None if s.merge == Merge::NodeInfo => {
                let facts = info::NodeFacts::sum(s.parts.iter().map(|p| match &p.w.result {
                    Some(Ok(reply)) => &reply[..],
                    _ => &[],
                }));
                let text = s.info.as_ref().and_then(|frame| {
                    let parser = RequestParser::parsed_again(frame)?;
                    let req = Request {
                        frame,
                        args: parser.args(),
                    };
                    Some(info::render(&self.pool, &self.client, req, Some(&facts)))
                });
                Reply(&mut self.out).bulk(text.unwrap_or_default().as_bytes());
            }
            None if s.merge == Merge::Exec => {
                let exec = match s.parts.last().map(|p| &p.w.result) {
                    Some(Some(Ok(reply))) => &reply[..],
                    _ => &[],
                };
                fanout::splice_exec(exec, &s.spliced, &mut self.out);
            }
            None => {
                let replies: Vec<(&[u32], &[u8])> = s
                    .parts
                    .iter()
                    .map(|p| {
                        let keys = s.keys.get(p.keys.start as usize..p.keys.end as usize);
                        let reply = match &p.w.result {
                            Some(Ok(reply)) => &reply[..],
                            _ => &[],
                        };
                        (keys.unwrap_or_default(), reply)
                    })
                    .collect();
                fanout::merge(s.merge, s.nkeys, &replies, &mut self.out);
            }
        }
        let took = s
            .deadline
            .checked_sub(Duration::from_millis(self.pool.config.timeout))
            .map(|started| self.now.saturating_duration_since(started));
        let error = self.out.get(written) == Some(&b'-');
        if error && !counted {
            self.pool.shared.errorstats.count(&self.out[written..]);
        }
        let tally = self.tally.get();
        tally.answered_in(took);
        tally.command_answered(s.command, took, error);
        self.pop_front();
        true
    }
}

/// A part's answer when its slot has no owner.
const SLOT_NOT_SERVED: &[u8] = b"-CLUSTERDOWN Hash slot not served\r\n";

/// A part's answer when no node may take it: for a read whose master is there, why no replica
/// may (as [`View::no_node`] says); else CLUSTERDOWN.
fn unserved(view: &View<'_>, place: Place) -> Bytes {
    match place.is_read() && view.target(place, 0).is_some() {
        true => Bytes::from(format!("-{}\r\n", view.no_node(place))),
        false => Bytes::from_static(SLOT_NOT_SERVED),
    }
}

/// Sets and deletes the key, in one script: replicated, yet no client can ever see the key.
const WAIT_MARK_SCRIPT: &[u8] =
    b"redis.call('SET', KEYS[1], '1') redis.call('DEL', KEYS[1]) return 1";

/// The script that moves a connection's replication offset past everything `node` has run: on a key
/// `node` serves (a slot it owns, a server's share of the ring), named so that no application uses it.
fn wait_mark(view: &View<'_>, node: &Arc<Node>, pick: usize) -> Option<Bytes> {
    (0..100_000u32).find_map(|n| {
        let key = format!("__slotline_wait__:{n}");
        let place = view.place_of(key.as_bytes());
        let owner = view.target(place, pick)?;
        Arc::ptr_eq(owner, node).then(|| {
            let mut buf = bytes::BytesMut::new();
            Reply(&mut buf).command(&[b"EVAL", WAIT_MARK_SCRIPT, b"1", key.as_bytes()]);
            buf.freeze()
        })
    })
}
