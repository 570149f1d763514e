//! Pub/Sub through slotline: SUBSCRIBE, PSUBSCRIBE, SSUBSCRIBE, their UNSUBSCRIBEs, and PUBLISH.
//!
//! Subscriptions live on backend connections of the client's own ([`Subscriber`]), one per backend
//! the client needs, opened on first use and closed when it leaves subscriber mode or disconnects:
//! - cluster: classic channels and patterns of every client on one node, the master of the first slot,
//!   where PUBLISH goes too. The cluster bus broadcasts every PUBLISH to every node, so any node would
//!   deliver the messages; meeting on one makes PUBLISH count every subscriber connected through
//!   slotline (channels and matching patterns), as one Redis would. Shard channels live on the master
//!   owning their slot, where SPUBLISH goes.
//! - sharded pools: the servers know nothing of each other, so a channel lives on the server its name
//!   hashes to as a key (PUBLISH is routed the same way), and a pattern on every server, whose
//!   streams are merged.
//!
//! slotline writes the (un)subscribe confirmations itself once the backends have confirmed, with the
//! counts Redis would give this client (its subscriptions over all its connections, not one
//! connection's); messages are forwarded as the bytes they came as. A subscription request holds the
//! requests after it back until it is confirmed, as other requests on own connections do, so a
//! PUBLISH pipelined after SUBSCRIBE finds the subscription in place.
//!
//! A backend connection that carries subscriptions and drops (node restart, failover) disconnects
//! the client, as the Redis it was subscribed on would have: client libraries reconnect and subscribe
//! again, where a silent resubscription would hide the messages lost in between. So does a sharded
//! pool's new placement (a server added, moved, ejected or back) under which a channel of the client
//! hashes to another server, or a pattern misses a server in service: PUBLISH goes by the new one.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::super::Router;
use super::view::{Place, View};
use super::{Ctx, Pending};
use crate::backend::{BackendError, Feed, Node, Settings, SubEvent, Subscriber};
use crate::command::{Request, Spec};
use crate::protocol::{parse_int, Reply};
use crate::route::{key_slot, Slot};

/// What a subscriber may have waiting in slotline before it is dropped: Redis's default hard
/// `client-output-buffer-limit pubsub`.
const OUTPUT_LIMIT: usize = 32 << 20;

/// Where a cluster's classic subscriptions and PUBLISH meet (see the module's doc).
const CLUSTER_HOME: Place = Place::Slot(Slot::FIRST);

/// Frames from subscriber connections taken per pass of the session loop.
const EVENTS_PER_PASS: usize = 1024;

#[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
enum Kind {
    #[default]
    Channel,
    Pattern,
    Shard,
}

impl Kind {
    /// The command (and confirmation) name.
    fn name(self, subscribe: bool) -> &'static str {
        match (self, subscribe) {
            (Kind::Channel, true) => "subscribe",
            (Kind::Pattern, true) => "psubscribe",
            (Kind::Shard, true) => "ssubscribe",
            (Kind::Channel, false) => "unsubscribe",
            (Kind::Pattern, false) => "punsubscribe",
            (Kind::Shard, false) => "sunsubscribe",
        }
    }
}

/// A client's subscriptions and the connections that carry them.
pub(super) struct PubSub {
    conns: Vec<Conn>,
    next_id: u32,
    events: mpsc::UnboundedReceiver<SubEvent>,
    sender: mpsc::UnboundedSender<SubEvent>,
    feed: Arc<Feed>,
    /// Events taken from the connections, not yet looked at.
    arrived: Vec<SubEvent>,
    /// Every subscription asked for (confirmed or on its way), by kind, with the connections holding
    /// it (several for a pattern in a sharded pool).
    wanted: [HashMap<Bytes, Vec<u32>>; 3],
    /// Subscriptions confirmed to the client: what its counts are made of.
    confirmed: [HashSet<Bytes>; 3],
    /// The cluster node holding classic channels and patterns.
    classic: Option<u32>,
    /// A cluster pool's: messages on other connections than `classic` are delivered only when
    /// they are keyspace notifications (see [`may_hear_keyspace`]).
    cluster: bool,
    /// Message bytes moved into the session's output since its last write.
    moved: usize,
    /// A sharded pool's placement changes, which the subscriptions must still match.
    placement: Option<watch::Receiver<u64>>,
}

struct Conn {
    link: Subscriber,
    /// Requests sent on it, oldest first, waiting for confirmations.
    expect: VecDeque<Expect>,
}

/// One (un)subscribe request on one connection: the server confirms each of its names.
struct Expect {
    remaining: usize,
    /// The client request's items it carries.
    items: Vec<usize>,
}

/// A client's (un)subscribe request, answered once every backend involved has confirmed.
#[derive(Default)]
pub(super) struct SubRequest {
    kind: Kind,
    subscribe: bool,
    items: Vec<Item>,
    /// Confirmations still to come.
    waiting: usize,
    pub(super) deadline: Option<Instant>,
    /// Messages that came after a confirmation of this request on their connection: they follow it.
    after: BytesMut,
    confirmed_on: Vec<u32>,
}

impl SubRequest {
    pub(super) fn waiting(&self) -> bool {
        self.waiting > 0
    }
}

/// The backend requests of one client request, by connection (and, for shard channels in a cluster,
/// by slot, which Redis requires of one request): the request's items each carries.
#[derive(Default)]
struct Batches(Vec<(BatchKey, Vec<usize>)>);

/// A connection id, and the slot of shard channels in a cluster.
type BatchKey = (u32, Option<Slot>);

impl Batches {
    fn add(&mut self, key: BatchKey, item: usize) {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some((_, items)) => items.push(item),
            None => self.0.push((key, vec![item])),
        }
    }
}

/// One channel or pattern of a request (None: an UNSUBSCRIBE of everything when there was nothing).
#[derive(Default)]
struct Item {
    name: Option<Bytes>,
    error: Option<Bytes>,
}

impl PubSub {
    fn new(router: &Router) -> PubSub {
        let placement = match router {
            Router::Shards(shards) => {
                let mut changes = shards.placement_changes();
                // The first subscriptions were placed with the batch's snapshot, which a change may
                // already have replaced: check them once against the newest.
                changes.mark_changed();
                Some(changes)
            }
            _ => None,
        };
        let (sender, events) = mpsc::unbounded_channel();
        PubSub {
            conns: Vec::new(),
            next_id: 0,
            events,
            sender,
            feed: Feed::new(OUTPUT_LIMIT),
            arrived: Vec::new(),
            wanted: Default::default(),
            confirmed: Default::default(),
            classic: None,
            cluster: matches!(router, Router::Cluster(_)),
            moved: 0,
            placement,
        }
    }

    /// The count Redis reports in a confirmation of `kind`.
    fn count(&self, kind: Kind) -> usize {
        match kind {
            Kind::Shard => self.confirmed[Kind::Shard as usize].len(),
            _ => {
                self.confirmed[Kind::Channel as usize].len()
                    + self.confirmed[Kind::Pattern as usize].len()
            }
        }
    }

    /// Channels, patterns and shard channels subscribed, as CLIENT LIST's sub, psub and ssub.
    pub(super) fn counts(&self) -> [u32; 3] {
        self.confirmed
            .each_ref()
            .map(|set| set.len().min(u32::MAX as usize) as u32)
    }

    /// Subscriptions of every kind: more than 0 is subscriber mode.
    fn total(&self) -> usize {
        self.confirmed.iter().map(HashSet::len).sum()
    }

    /// The connection to `node`'s server, opened now if there is none.
    fn conn_for(&mut self, node: &Arc<Node>, settings: &Settings) -> u32 {
        if let Some(conn) = self.conns.iter().find(|c| c.link.addr() == node.addr()) {
            return conn.link.id();
        }
        let id = self.next_id;
        self.next_id += 1;
        let link = Subscriber::spawn(
            id,
            node.addr().clone(),
            settings,
            self.sender.clone(),
            self.feed.clone(),
        );
        self.conns.push(Conn {
            link,
            expect: VecDeque::new(),
        });
        id
    }

    /// Forgets that `name` is held on connection `id`.
    fn unwant(&mut self, kind: Kind, name: &Bytes, id: u32) {
        let wanted = &mut self.wanted[kind as usize];
        if let Some(ids) = wanted.get_mut(name) {
            ids.retain(|&i| i != id);
            if ids.is_empty() {
                wanted.remove(name);
            }
        }
    }

    /// The connections a new subscription goes on (None: a backend it needs is not known): see the
    /// module's note.
    fn holders(
        &mut self,
        kind: Kind,
        name: &[u8],
        view: &View<'_>,
        shard_place: Option<Place>,
        settings: &Settings,
        pick: usize,
    ) -> Option<Vec<u32>> {
        let classic = kind != Kind::Shard && !matches!(view, View::Shards(_));
        let everywhere = classic && self.cluster && may_hear_keyspace(kind, name);
        if let (true, false, Some(id)) = (classic, everywhere, self.classic) {
            return Some(vec![id]);
        }
        let places: Vec<Place> = match (kind, view) {
            (Kind::Shard, _) => shard_place.into_iter().collect(),
            // Keyspace notifications are each node's own: also on every other master.
            (_, View::Cluster(..)) if everywhere => std::iter::once(CLUSTER_HOME)
                .chain((0..view.node_count()).map(Place::Node))
                .collect(),
            // One connection: to the cluster's pub/sub home, to a primary's master.
            (_, View::Cluster(..)) => vec![CLUSTER_HOME],
            (_, View::Primary(..)) => vec![Place::Any],
            (Kind::Channel, View::Shards(_)) => vec![view.place_of(name)],
            (Kind::Pattern, View::Shards(_)) => (0..view.node_count()).map(Place::Node).collect(),
        };
        let mut ids = Vec::with_capacity(places.len());
        for place in places {
            let node = view.target_or_refresh(place, pick)?;
            let id = self.conn_for(node, settings);
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        if classic {
            self.classic = ids.first().copied();
        }
        (!ids.is_empty()).then_some(ids)
    }

    /// Sends each batch as one `command` on its connection; returns how many confirmations to
    /// expect.
    fn send(&mut self, batches: Batches, command: &str, items: &[Item]) -> usize {
        let mut waiting = 0;
        for ((id, _), carried) in batches.0 {
            let Some(conn) = self.conns.iter_mut().find(|c| c.link.id() == id) else {
                continue;
            };
            let mut frame = BytesMut::new();
            let mut out = Reply(&mut frame);
            out.array(1 + carried.len());
            out.bulk(command.as_bytes());
            for &i in &carried {
                out.bulk(items[i].name.as_deref().unwrap_or_default());
            }
            conn.link.send(frame.freeze());
            waiting += carried.len();
            conn.expect.push_back(Expect {
                remaining: carried.len(),
                items: carried,
            });
        }
        waiting
    }

    /// Closes connections that hold nothing and wait for nothing: the server forgets them.
    fn prune(&mut self) {
        let wanted = &self.wanted;
        self.conns.retain(|c| {
            let id = c.link.id();
            !c.expect.is_empty()
                || wanted
                    .iter()
                    .any(|m| m.values().any(|ids| ids.contains(&id)))
        });
        if self
            .classic
            .is_some_and(|id| !self.conns.iter().any(|c| c.link.id() == id))
        {
            self.classic = None;
        }
    }
}

impl Ctx {
    /// SUBSCRIBE and its kin, and PUBLISH.
    pub(super) fn pubsub(
        &mut self,
        req: Request<'_>,
        spec: &Spec,
        frame: &Bytes,
        view: &View<'_>,
        now: Instant,
    ) {
        let (kind, subscribe) = match spec.name {
            "publish" => {
                // A cluster broadcasts PUBLISH to every node, and the home holds slotline's
                // subscribers, so its count is theirs; independent servers only reach the
                // subscribers of the server the channel hashes to.
                let place = match view {
                    View::Cluster(..) => CLUSTER_HOME,
                    View::Primary(..) => Place::Any,
                    View::Shards(_) => view.place_of(req.arg(1)),
                };
                return self.forward(view, place, spec, frame.clone(), now);
            }
            "subscribe" => (Kind::Channel, true),
            "psubscribe" => (Kind::Pattern, true),
            "ssubscribe" => (Kind::Shard, true),
            "unsubscribe" => (Kind::Channel, false),
            "punsubscribe" => (Kind::Pattern, false),
            "sunsubscribe" => (Kind::Shard, false),
            _ => return self.error("ERR slotline: unknown pub/sub command"),
        };
        if !self.pending.is_empty() {
            return self.hold(frame);
        }
        // Shard channels of one request must share a slot, as Redis Cluster requires.
        let mut shard_place = None;
        if kind == Kind::Shard && req.argc() > 1 {
            match view.place_of_request(req, spec) {
                Ok(place) => shard_place = Some(place),
                Err(()) => return self.error(&view.cross_error(spec.display_name())),
            }
        }
        let settings = self.pool.router.own_settings().via(self.via());
        let pick = self.client.id() as usize;
        let cluster = matches!(view, View::Cluster(..));
        let router = &self.pool.router;
        let ps = self
            .pubsub
            .get_or_insert_with(|| Box::new(PubSub::new(router)));
        let mut names: Vec<Bytes> = (1..req.argc())
            .map(|i| Bytes::copy_from_slice(req.arg(i)))
            .collect();
        if names.is_empty() && !subscribe {
            names = ps.wanted[kind as usize].keys().cloned().collect();
        }
        let mut items: Vec<Item> = names
            .into_iter()
            .map(|name| Item {
                name: Some(name),
                error: None,
            })
            .collect();
        if items.is_empty() {
            items.push(Item::default());
        }
        let mut batches = Batches::default();
        for (i, item) in items.iter_mut().enumerate() {
            let Some(name) = item.name.clone() else {
                continue;
            };
            let slot = (cluster && kind == Kind::Shard).then(|| key_slot(&name));
            if !subscribe {
                // Unsubscribing from what it never subscribed to is answered here.
                for id in ps.wanted[kind as usize].remove(&name).unwrap_or_default() {
                    batches.add((id, slot), i);
                }
                continue;
            }
            if ps.wanted[kind as usize].contains_key(&name) {
                continue;
            }
            let Some(ids) = ps.holders(kind, &name, view, shard_place, &settings, pick) else {
                let msg = format!("-{}\r\n", view.no_node(shard_place.unwrap_or(Place::Any)));
                item.error = Some(Bytes::from(msg));
                continue;
            };
            for &id in &ids {
                batches.add((id, slot), i);
            }
            ps.wanted[kind as usize].insert(name, ids);
        }
        let waiting = ps.send(batches, kind.name(subscribe), &items);
        self.push(Pending::PubSub(Box::new(SubRequest {
            kind,
            subscribe,
            items,
            waiting,
            deadline: Some(now + Duration::from_millis(self.pool.config.timeout)),
            after: BytesMut::new(),
            confirmed_on: Vec::new(),
        })));
    }

    /// In subscriber mode, what Redis allows a RESP2 client and how it answers PING there. Returns
    /// true when the request was answered here.
    pub(super) fn subscriber_mode(&mut self, req: Request<'_>, spec: &Spec) -> bool {
        if self.pubsub.as_ref().is_none_or(|ps| ps.total() == 0) {
            return false;
        }
        if self.proto == 3 {
            // Anything goes, as in Redis; HELLO 2 too: messages then reach the client as RESP2
            // arrays whatever their connection speaks (see `on_frame`).
            return false;
        }
        match spec.name {
            "ping" => {
                let arg = if req.argc() > 1 { req.arg(1) } else { b"" };
                self.reply(|r| {
                    r.array(2);
                    r.bulk(b"pong");
                    r.bulk(arg);
                });
                true
            }
            "subscribe" | "psubscribe" | "ssubscribe" | "unsubscribe" | "punsubscribe"
            | "sunsubscribe" | "quit" | "reset" => false,
            name => {
                let msg = format!("ERR Can't execute '{name}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context");
                self.error(&msg);
                true
            }
        }
    }

    /// Unsubscribes from everything at once (RESET): closing the connections is what tells the
    /// servers.
    pub(crate) fn end_pubsub(&mut self) {
        self.pubsub = None;
    }

    /// Looks at what the subscriber connections delivered: messages go to the client, confirmations
    /// to the request waiting for them.
    pub(super) fn take_pubsub(&mut self) {
        let Some(ps) = self.pubsub.as_mut() else {
            return;
        };
        while ps.arrived.len() < EVENTS_PER_PASS {
            match ps.events.try_recv() {
                Ok(event) => ps.arrived.push(event),
                Err(_) => break,
            }
        }
        let mut events = std::mem::take(&mut ps.arrived);
        for event in events.drain(..) {
            match event {
                SubEvent::Frame(id, frame) => self.on_frame(id, frame),
                SubEvent::Lost(id, error) => self.on_lost(id, error),
            }
        }
        if let Some(ps) = self.pubsub.as_mut() {
            if ps.arrived.is_empty() {
                ps.arrived = events;
            }
        }
    }

    fn on_frame(&mut self, id: u32, frame: Bytes) {
        let Some(ps) = self.pubsub.as_mut() else {
            return;
        };
        if is_message(&frame) {
            if ps.cluster && ps.classic.is_some_and(|home| home != id) && !keyspace_message(&frame)
            {
                // The cluster bus's copy of a PUBLISH the home node delivers too.
                ps.feed.written(frame.len());
                return;
            }
            // The client switched protocol (HELLO) since the connection subscribed: a message is
            // the same aggregate in both, a push in RESP3 and an array in RESP2.
            let marker = if self.proto >= 3 { b'>' } else { b'*' };
            let frame = match frame.first() {
                Some(&m) if m != marker => {
                    let mut remarked = BytesMut::from(&frame[..]);
                    remarked[0] = marker;
                    remarked.freeze()
                }
                _ => frame,
            };
            match self.pending.front_mut() {
                Some(Pending::PubSub(r)) if r.confirmed_on.contains(&id) => {
                    r.after.extend_from_slice(&frame)
                }
                _ => {
                    ps.moved += frame.len();
                    self.out.extend_from_slice(&frame);
                }
            }
            return;
        }
        // Confirmations never reach the client as they came.
        ps.feed.written(frame.len());
        let Some(conn) = ps.conns.iter_mut().find(|c| c.link.id() == id) else {
            return;
        };
        let (Some(expect), Some(Pending::PubSub(r))) =
            (conn.expect.front_mut(), self.pending.front_mut())
        else {
            return self.unasked(id, &frame);
        };
        if frame.first() == Some(&b'-') {
            // One error answers the whole request on this connection.
            let error = match frame.starts_with(b"-MOVED") || frame.starts_with(b"-ASK") {
                true => {
                    View::of(&self.pool).request_refresh();
                    Bytes::from_static(
                        b"-TRYAGAIN slotline: the channel's slot has moved; try again\r\n",
                    )
                }
                false => frame,
            };
            r.waiting -= expect.remaining;
            let items = std::mem::take(&mut expect.items);
            conn.expect.pop_front();
            for i in items {
                let Some(item) = r.items.get_mut(i) else {
                    continue;
                };
                item.error.get_or_insert_with(|| error.clone());
                if let (true, Some(name)) = (r.subscribe, &item.name) {
                    ps.unwant(r.kind, name, id);
                }
            }
            return;
        }
        expect.remaining -= 1;
        r.waiting -= 1;
        if expect.remaining == 0 {
            conn.expect.pop_front();
        }
        if !r.confirmed_on.contains(&id) {
            r.confirmed_on.push(id);
        }
    }

    /// A frame nobody asked for that is not a message: Redis Cluster unsubscribes shard channels whose
    /// slot left the node (`sunsubscribe`, unasked). Anything else means the stream is out of step.
    fn unasked(&mut self, id: u32, frame: &[u8]) {
        let Some(ps) = self.pubsub.as_mut() else {
            return;
        };
        match kind_and_channel(frame) {
            Some((b"sunsubscribe", channel)) => {
                let channel = Bytes::copy_from_slice(channel);
                ps.unwant(Kind::Shard, &channel, id);
                ps.confirmed[Kind::Shard as usize].remove(&channel);
                let count = ps.count(Kind::Shard);
                confirmation(
                    &mut self.out,
                    self.proto,
                    "sunsubscribe",
                    Some(&channel),
                    count,
                );
            }
            _ => {
                tracing::warn!(client.addr = %self.client.addr(), frame = %super::printable(frame), "unexpected frame on a subscriber connection: closing the client");
                self.pubsub = None;
                self.closing = true;
            }
        }
    }

    /// A subscriber connection failed or closed. Requests waiting on it get the error; if it held
    /// subscriptions, the client is closed (see the module's note).
    fn on_lost(&mut self, id: u32, error: BackendError) {
        let Some(ps) = self.pubsub.as_mut() else {
            return;
        };
        let Some(pos) = ps.conns.iter().position(|c| c.link.id() == id) else {
            return;
        };
        let conn = ps.conns.remove(pos);
        if let Some(Pending::PubSub(r)) = self.pending.front_mut() {
            let line = Bytes::from(format!("-ERR slotline: {error}\r\n"));
            for expect in conn.expect {
                r.waiting -= expect.remaining;
                // An unsubscribe is done: the connection is gone.
                if !r.subscribe {
                    continue;
                }
                for i in expect.items {
                    if let Some(item) = r.items.get_mut(i) {
                        item.error.get_or_insert_with(|| line.clone());
                        if let Some(name) = &item.name {
                            ps.unwant(r.kind, name, id);
                        }
                    }
                }
            }
        }
        let held: Vec<(usize, Bytes)> = ps
            .wanted
            .iter()
            .enumerate()
            .flat_map(|(k, m)| {
                m.iter()
                    .filter(|(_, ids)| ids.contains(&id))
                    .map(move |(name, _)| (k, name.clone()))
            })
            .collect();
        if !held.is_empty() {
            tracing::warn!(client.addr = %self.client.addr(), backend = %conn.link.addr(), %error,
                "a subscriber connection to the backend was lost: closing the client, which subscribes again when it reconnects");
            self.closing = true;
        }
        for (k, name) in held {
            let kind = [Kind::Channel, Kind::Pattern, Kind::Shard][k];
            ps.unwant(kind, &name, id);
        }
        ps.prune();
    }

    /// A sharded pool put another placement in use. A channel held on a server it no longer hashes
    /// to, or a pattern missing a server now in service, would silently miss what PUBLISH now sends
    /// there: the client is closed, as when a subscriber connection is lost, and subscribes again
    /// where its channels live now when it reconnects. Subscriptions the change left in place keep
    /// their client connected.
    pub(super) fn follow_placement(&mut self) {
        let Some(ps) = self.pubsub.as_ref() else {
            return;
        };
        let pool = self.pool.clone();
        let view = View::of(&pool);
        let held_on = |id: &u32| {
            ps.conns
                .iter()
                .find(|c| c.link.id() == *id)
                .map(|c| c.link.addr())
        };
        let moved_channel = ps.wanted[Kind::Channel as usize]
            .iter()
            .find(|(name, ids)| {
                let now = view.target(view.place_of(name), 0).map(|node| node.addr());
                ids.iter().any(|id| held_on(id) != now)
            })
            .map(|(name, _)| name.clone());
        let in_service: Vec<_> = view.masters().map(|node| node.addr()).collect();
        let short_pattern = ps.wanted[Kind::Pattern as usize]
            .iter()
            .find(|(_, ids)| {
                let held: Vec<_> = ids.iter().filter_map(held_on).collect();
                in_service.iter().any(|addr| !held.contains(addr))
            })
            .map(|(name, _)| name.clone());
        let Some((what, name)) = moved_channel
            .map(|name| ("channel", name))
            .or(short_pattern.map(|name| ("pattern", name)))
        else {
            return;
        };
        tracing::info!(client.addr = %self.client.addr(), what, name = %super::printable(&name),
            "the pool's servers changed and a subscription no longer matches where messages are published: closing the client, which subscribes again when it reconnects");
        self.closing = true;
    }

    /// Writes the confirmations of the (un)subscribe request at the front once all have come.
    /// Returns false while it still waits.
    pub(super) fn settle_pubsub(&mut self) -> bool {
        let r = match self.pending.front_mut() {
            Some(Pending::PubSub(r)) if r.waiting == 0 => std::mem::take(r),
            Some(Pending::PubSub(_)) => return false,
            _ => return true,
        };
        let Some(ps) = self.pubsub.as_mut() else {
            self.pop_front();
            return true;
        };
        let kind = r.kind;
        let mut last_error: Option<&Bytes> = None;
        for item in &r.items {
            if let Some(error) = &item.error {
                // A request refused by a backend is one error, as from Redis, not one per name.
                if last_error != Some(error) {
                    self.out.extend_from_slice(error);
                }
                last_error = Some(error);
                continue;
            }
            last_error = None;
            if let Some(name) = &item.name {
                match r.subscribe {
                    true => ps.confirmed[kind as usize].insert(name.clone()),
                    false => ps.confirmed[kind as usize].remove(name),
                };
            }
            let count = ps.count(kind);
            confirmation(
                &mut self.out,
                self.proto,
                kind.name(r.subscribe),
                item.name.as_deref(),
                count,
            );
        }
        ps.moved += r.after.len();
        self.out.extend_from_slice(&r.after);
        ps.prune();
        if ps.conns.is_empty() && ps.total() == 0 {
            // Out of subscriber mode: nothing is left open.
            self.pubsub = None;
        }
        // Written: it may leave the queue (see `reply_mode`).
        self.pop_front();
        true
    }

    /// The request at the front waited too long for its confirmations: a late one could no longer
    /// be told apart from the next request's, so the client is closed after the error.
    pub(super) fn pubsub_timed_out(&mut self) {
        self.timed_out();
        self.pop_front();
        self.pubsub = None;
        self.closing = true;
    }

    /// The output was written: the messages in it no longer count against the client's limit.
    pub(super) fn pubsub_written(&mut self) {
        if let Some(ps) = self.pubsub.as_mut() {
            ps.feed.written(std::mem::take(&mut ps.moved));
        }
    }

    pub(super) fn drop_slow_subscriber(&self) {
        tracing::warn!(client.addr = %self.client.addr(), limit = OUTPUT_LIMIT,
            "closing a subscriber that does not read its messages fast enough (output limit for pub/sub clients reached)");
    }
}

/// What woke a subscribed client's session besides its own socket.
pub(super) enum Woken {
    /// Frames from its subscriber connections, taken into `arrived`.
    Events,
    /// The client fell too far behind and must be dropped.
    TooSlow,
    /// A sharded pool put another placement in use (see [`Ctx::follow_placement`]).
    Placement,
}

/// Waits for what the client's subscriber connections deliver or its pool's placement changing.
/// Never ready for a client without subscriptions.
pub(super) async fn next_events(pubsub: &mut Option<Box<PubSub>>) -> Woken {
    let Some(ps) = pubsub.as_deref_mut() else {
        return std::future::pending().await;
    };
    let feed = ps.feed.clone();
    let placement = async {
        match ps.placement.as_mut() {
            Some(changes) => changes.changed().await.is_ok(),
            None => std::future::pending().await,
        }
    };
    let pool_alive = tokio::select! {
        _ = feed.wait_overflow() => return Woken::TooSlow,
        _ = ps.events.recv_many(&mut ps.arrived, EVENTS_PER_PASS) => {
            return match feed.overflowed() {
                true => Woken::TooSlow,
                false => Woken::Events,
            };
        }
        alive = placement => alive,
    };
    if !pool_alive {
        // The pool is gone (a reload replaced it); its placement will not change again.
        ps.placement = None;
    }
    Woken::Placement
}

/// Messages of every kind (`message`, `pmessage`, `smessage`), in RESP2 or RESP3, told apart from
/// confirmations by their first bytes alone.
fn is_message(frame: &[u8]) -> bool {
    let Some((&marker, rest)) = frame.split_first() else {
        return false;
    };
    matches!(marker, b'*' | b'>')
        && (rest.starts_with(b"3\r\n$7\r\nmessage\r\n")
            || rest.starts_with(b"4\r\n$8\r\npmessage\r\n")
            || rest.starts_with(b"3\r\n$8\r\nsmessage\r\n"))
}

/// Whether a subscription may receive keyspace notifications (`__keyspace@<db>__:<key>`,
/// `__keyevent@<db>__:<event>`), which a cluster node publishes only to its own subscribers: a
/// channel so named, or a pattern whose literal beginning does not rule them out.
fn may_hear_keyspace(kind: Kind, name: &[u8]) -> bool {
    let literal = match kind {
        Kind::Shard => return false,
        Kind::Channel => return is_keyspace_channel(name),
        Kind::Pattern => {
            let end = name
                .iter()
                .position(|b| matches!(b, b'*' | b'?' | b'[' | b'\\'))
                .unwrap_or(name.len());
            &name[..end]
        }
    };
    KEYSPACE_PREFIXES
        .iter()
        .any(|prefix| prefix.starts_with(literal) || literal.starts_with(prefix))
}

const KEYSPACE_PREFIXES: [&[u8]; 2] = [b"__keyspace@", b"__keyevent@"];

fn is_keyspace_channel(channel: &[u8]) -> bool {
    KEYSPACE_PREFIXES.iter().any(|p| channel.starts_with(p))
}

/// Whether a `message` or `pmessage` frame carries a keyspace notification (`smessage`s are
/// delivered as they are).
fn keyspace_message(frame: &[u8]) -> bool {
    let Some(rest) = frame.get(1..) else {
        return false;
    };
    let channel = if let Some(rest) = rest.strip_prefix(b"3\r\n$7\r\nmessage\r\n") {
        bulk(rest).map(|(channel, _)| channel)
    } else if let Some(rest) = rest.strip_prefix(b"4\r\n$8\r\npmessage\r\n") {
        bulk(rest)
            .and_then(|(_, rest)| bulk(rest))
            .map(|(channel, _)| channel)
    } else {
        return rest.starts_with(b"3\r\n$8\r\nsmessage\r\n");
    };
    channel.is_some_and(is_keyspace_channel)
}

/// The kind and channel of a three-element confirmation (`[sunsubscribe, channel, count]`).
fn kind_and_channel(frame: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = frame
        .strip_prefix(b">3\r\n")
        .or_else(|| frame.strip_prefix(b"*3\r\n"))?;
    let (kind, rest) = bulk(rest)?;
    let (channel, _) = bulk(rest)?;
    Some((kind, channel))
}

fn bulk(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let body = buf.strip_prefix(b"$")?;
    let end = body.windows(2).position(|w| w == b"\r\n")?;
    let len = usize::try_from(parse_int(&body[..end])?).ok()?;
    let data = body.get(end + 2..end + 2 + len)?;
    Some((data, body.get(end + 4 + len..)?))
}

/// `[what, name, count]`, a push in RESP3, as Redis confirms (un)subscriptions; no name is a null.
fn confirmation(out: &mut BytesMut, proto: u8, what: &str, name: Option<&[u8]>, count: usize) {
    let mut r = Reply(out);
    match proto {
        3 => r.push(3),
        _ => r.array(3),
    }
    r.bulk(what.as_bytes());
    match (name, proto) {
        (Some(name), _) => r.bulk(name),
        (None, 3) => r.0.put_slice(b"_\r\n"),
        (None, _) => r.null(),
    }
    r.int(count as i64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_told_from_confirmations() {
        assert!(is_message(b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$1\r\nx\r\n"));
        assert!(is_message(b">3\r\n$7\r\nmessage\r\n$1\r\na\r\n$1\r\nx\r\n"));
        assert!(is_message(
            b"*4\r\n$8\r\npmessage\r\n$2\r\na*\r\n$1\r\na\r\n$1\r\nx\r\n"
        ));
        assert!(is_message(
            b">3\r\n$8\r\nsmessage\r\n$1\r\na\r\n$1\r\nx\r\n"
        ));
        assert!(!is_message(b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n"));
        assert!(!is_message(b"-ERR no\r\n"));
        assert!(!is_message(b""));
    }

    #[test]
    fn confirmations_carry_the_clients_count() {
        let mut out = BytesMut::new();
        confirmation(&mut out, 2, "subscribe", Some(b"ch"), 3);
        confirmation(&mut out, 2, "unsubscribe", None, 0);
        confirmation(&mut out, 3, "unsubscribe", None, 1);
        assert_eq!(
            &out[..],
            &b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:3\r\n*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n>3\r\n$11\r\nunsubscribe\r\n_\r\n:1\r\n"[..]
        );
        assert_eq!(
            kind_and_channel(b">3\r\n$12\r\nsunsubscribe\r\n$2\r\nch\r\n:0\r\n"),
            Some((&b"sunsubscribe"[..], &b"ch"[..]))
        );
        assert_eq!(kind_and_channel(b"*3\r\n$12\r\nsunsub"), None);
    }
}
