//! Backend nodes: a few long-lived, multiplexed connections per node.
//!
//! Many clients' requests are queued on one connection; a writer sends everything queued in one write and
//! a reader matches replies to requests in order, forwarding each reply as the bytes it arrived as. There
//! is no checkout: a request never waits for a connection to be free, only for its place in the pipeline.
//! Subscriptions are the exception: they live on a [`Subscriber`] connection of one client's own.

mod connection;
mod feeds;
mod gather;
mod health;
mod inbox;
mod logins;
mod nodes;
mod queue;
mod stream;

pub use stream::Stream;
mod subscriber;

pub use feeds::{Gate, MasterFeeds, BARRIER_PASSED};
pub use gather::{gathering, send_gathered, LARGEST as LARGEST_GATHERED};
pub use health::Health;
pub use inbox::{Awaited, Inbox, ReplyTo};
pub use logins::{Logins, NODE_LOGINS};
pub use nodes::Nodes;
pub use subscriber::{Feed, SubEvent, Subscriber};

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;

use crate::stats::ServerStats;

/// What a backend answered, or why it could not.
pub type BackendResult = Result<Bytes, BackendError>;

/// Why a request got no reply from its backend.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    #[error("cannot connect to {0}")]
    Connect(Arc<str>),
    #[error("connection to {0} lost")]
    Closed(Arc<str>),
    #[error("{0} sent a malformed reply")]
    Protocol(Arc<str>),
    #[error("the request was dropped before a backend could answer it")]
    Abandoned,
}

/// How backend connections behave.
#[derive(Debug, Clone)]
pub struct Settings {
    pub connections: usize,
    pub connect_timeout: Duration,
    /// Notified whenever a connection fails, so the owner of the topology can look again.
    pub on_failure: Option<Arc<Notify>>,
    /// Sent first on every new connection (AUTH, SELECT); each reply must be a success.
    pub handshake: Option<Handshake>,
    /// A request unanswered this long after it was written counts as a server timeout (and, with
    /// ejection, as a failure). Counted from the write, not from when it was queued, so a long queue
    /// in front of a healthy server is never mistaken for a failing server.
    pub timeout: Option<Duration>,
    /// Count failures in a row, waking this when a node reaches `limit` of them.
    pub eject: Option<(u32, Arc<Notify>)>,
    /// How long a connection whose node was dropped waits for replies already on their way.
    pub drain: Duration,
    /// Longest reply taken from the node, in bytes: a longer one closes the connection.
    pub max_reply: usize,
    /// Bytes of requests that may wait for the node's connections to take them, each connection
    /// its share; past it sessions stop reading their clients (see [`Node::send`]).
    pub max_queue: usize,
    /// Connections speak TLS (the pool's `backend_tls`).
    pub tls: Option<Arc<crate::tls::Connector>>,
    /// The other logins a client's requests may run as (`backend_users`, `node_logins`), by
    /// [`Via::login`].
    pub logins: Arc<Logins>,
}

/// Which of a node's sets of connections carries a client's requests: the protocol the client
/// speaks, and the backend login its user runs as (`backend_users`; None: the pool's own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Via {
    pub proto: u8,
    pub login: Option<u16>,
}

impl Via {
    /// The pool's own login over RESP2: what slotline's own requests use.
    pub const POOL: Via = Via {
        proto: 2,
        login: None,
    };
}

/// Commands that prepare a fresh connection before it carries requests.
#[derive(Debug, Clone)]
pub struct Handshake {
    frames: Bytes,
    replies: usize,
}

impl Settings {
    pub fn new(connections: usize, connect_timeout: Duration) -> Settings {
        Settings {
            connections,
            connect_timeout,
            on_failure: None,
            handshake: None,
            timeout: None,
            eject: None,
            drain: Duration::from_secs(10),
            max_reply: crate::protocol::DEFAULT_MAX_REPLY,
            max_queue: usize::MAX,
            tls: None,
            logins: Arc::default(),
        }
    }

    /// A pool's connections: `server_connections` per node, its connect timeout and reply bound,
    /// over TLS with `tls`, logged in with its user and password and switched to database `db`.
    pub fn for_pool(
        config: &crate::config::PoolConfig,
        db: u32,
        tls: Option<Arc<crate::tls::Connector>>,
    ) -> Settings {
        let logins = config
            .backend_logins()
            .logins
            .into_iter()
            .filter_map(|(user, password)| Handshake::login(Some(user), Some(password), db))
            .collect();
        let room = if config.node_logins { NODE_LOGINS } else { 0 };
        let logins = Arc::new(Logins::new(logins, room, db));
        Settings {
            max_reply: config.max_reply_bytes,
            max_queue: config.max_server_queue_bytes,
            tls,
            logins,
            ..Settings::new(
                config.server_connections,
                Duration::from_millis(config.connect_timeout),
            )
            .with_login(config.backend_login().0, config.backend_login().1, db)
        }
    }

    /// The same settings logged in as `login` (an index into `logins`), or these when None. The
    /// pool's connections count a server's failures; these share the counters and leave health
    /// to them.
    pub fn as_login(&self, login: Option<u16>) -> Settings {
        match login.and_then(|i| self.logins.get(i)) {
            Some(handshake) => Settings {
                handshake: Some(handshake),
                eject: None,
                logins: Arc::default(),
                ..self.clone()
            },
            None => self.clone(),
        }
    }

    /// The settings for a client reaching the node `via` a login and protocol.
    pub fn via(&self, via: Via) -> Settings {
        let settings = self.as_login(via.login);
        match via.proto {
            3 => settings.resp3(),
            _ => settings,
        }
    }

    /// The same settings for connections that speak RESP3 (`HELLO 3` after the login), for clients
    /// that asked for it: replies must reach them in the protocol they chose.
    pub fn resp3(&self) -> Settings {
        Settings {
            // Health is the RESP2 twin's to count; one set of failures per server.
            eject: None,
            ..self.then(&[b"HELLO", b"3"])
        }
    }

    /// The same settings with `command` sent on each new connection after the rest of the
    /// handshake (its reply must be a success too).
    pub fn then(&self, command: &[&[u8]]) -> Settings {
        let mut frames = bytes::BytesMut::new();
        let mut replies = 0;
        if let Some(h) = &self.handshake {
            frames.extend_from_slice(&h.frames);
            replies = h.replies;
        }
        crate::protocol::Reply(&mut frames).command(command);
        Settings {
            handshake: Some(Handshake {
                frames: frames.freeze(),
                replies: replies + 1,
            }),
            ..self.clone()
        }
    }

    /// Authenticates each connection with `password` (as ACL user `user`, or the default user) and
    /// switches it to database `db`.
    pub fn with_login(mut self, user: Option<&str>, password: Option<&str>, db: u32) -> Settings {
        self.handshake = Handshake::login(user, password, db);
        self
    }
}

impl Handshake {
    /// `AUTH user password` as a client gave them (`node_logins`), then `SELECT db` when `db` is
    /// not 0.
    pub fn node_login(user: &[u8], password: &[u8], db: u32) -> Handshake {
        let mut frames = bytes::BytesMut::new();
        crate::protocol::Reply(&mut frames).command(&[b"AUTH", user, password]);
        Handshake::then_select(frames, 1, db)
    }

    /// `AUTH [user] password` when there is a password, then `SELECT db` when `db` is not 0; None
    /// when there is neither.
    fn login(user: Option<&str>, password: Option<&str>, db: u32) -> Option<Handshake> {
        let mut frames = bytes::BytesMut::new();
        if let Some(password) = password {
            auth_command(user, password, &mut frames);
        }
        let replies = usize::from(password.is_some());
        (replies > 0 || db != 0).then(|| Handshake::then_select(frames, replies, db))
    }

    /// `frames`, holding `replies` commands, then `SELECT db` when `db` is not 0.
    fn then_select(mut frames: bytes::BytesMut, replies: usize, db: u32) -> Handshake {
        if db != 0 {
            crate::protocol::Reply(&mut frames).command(&[b"SELECT", db.to_string().as_bytes()]);
        }
        Handshake {
            frames: frames.freeze(),
            replies: replies + usize::from(db != 0),
        }
    }
}

/// Appends `AUTH [user] password` to `out`.
pub fn auth_command(user: Option<&str>, password: &str, out: &mut bytes::BytesMut) {
    let mut out = crate::protocol::Reply(out);
    match user {
        Some(user) => out.command(&[b"AUTH", user.as_bytes(), password.as_bytes()]),
        None => out.command(&[b"AUTH", password.as_bytes()]),
    }
}

/// One backend server and its connections. Dropping the last handle closes the connections once their
/// queued requests are answered.
pub struct Node {
    addr: Arc<str>,
    conns: Box<[queue::Sender]>,
    /// The bytes each connection may have waiting: its share of `settings.max_queue`.
    queue_bound: usize,
    stats: Arc<ServerStats>,
    health: Option<Arc<Health>>,
    settings: Settings,
    /// The same server over RESP3 connections, started when a RESP3 client first needs it.
    resp3: OnceLock<Arc<Node>>,
    /// The same server logged in as each of the settings' other logins, started when a client of
    /// that login first needs it.
    logins: Box<[OnceLock<Arc<Node>>]>,
}

impl Node {
    /// Starts the node's connection tasks (they connect at once, then on demand with backoff).
    pub fn spawn(addr: Arc<str>, settings: &Settings) -> Arc<Node> {
        Node::spawn_with_stats(addr, settings, Arc::new(ServerStats::default()))
    }

    fn spawn_with_stats(addr: Arc<str>, settings: &Settings, stats: Arc<ServerStats>) -> Arc<Node> {
        let health = settings
            .eject
            .as_ref()
            .map(|(limit, notify)| Arc::new(Health::new(*limit, notify.clone())));
        let conns: Box<[queue::Sender]> = (0..settings.connections.max(1))
            .map(|_| {
                let (tx, rx) = queue::queue(stats.queued.register());
                let link = connection::Link {
                    addr: addr.clone(),
                    settings: settings.clone(),
                    stats: stats.clone(),
                    health: health.clone(),
                };
                tokio::spawn(connection::run(link, rx));
                tx
            })
            .collect();
        let queue_bound = settings.max_queue / conns.len();
        Arc::new(Node {
            addr,
            conns,
            queue_bound,
            stats,
            health,
            settings: settings.clone(),
            resp3: OnceLock::new(),
            logins: (0..settings.logins.slots())
                .map(|_| OnceLock::new())
                .collect(),
        })
    }

    /// This server for a client that reaches it `via` a login and a protocol: itself, or the twin
    /// logged in as the client's backend user, or the RESP3 twin of either. Twins share this
    /// node's counters.
    #[inline]
    pub fn via(self: &Arc<Self>, via: Via) -> &Arc<Node> {
        let node = match via.login {
            None => self,
            Some(login) => match self.logins.get(usize::from(login)) {
                Some(twin) => twin.get_or_init(|| {
                    Node::spawn_with_stats(
                        self.addr.clone(),
                        &self.settings.as_login(Some(login)),
                        self.stats.clone(),
                    )
                }),
                None => self,
            },
        };
        node.for_protocol(via.proto)
    }

    /// This server for a client speaking `protocol` (2 or 3): itself, or its RESP3 twin, whose
    /// connections are set up with `HELLO 3` and share this node's counters.
    pub fn for_protocol(self: &Arc<Self>, protocol: u8) -> &Arc<Node> {
        if protocol < 3 {
            return self;
        }
        self.resp3.get_or_init(|| {
            Node::spawn_with_stats(
                self.addr.clone(),
                &self.settings.resp3(),
                self.stats.clone(),
            )
        })
    }

    pub fn addr(&self) -> &Arc<str> {
        &self.addr
    }

    pub fn stats(&self) -> &ServerStats {
        &self.stats
    }

    /// The connection a client that picks `pick` uses. (Without a division when there is one, as
    /// there usually is: a division is a dozen cycles on every request.)
    fn conn_index(&self, pick: usize) -> usize {
        match self.conns.len() {
            1 => 0,
            n => pick % n,
        }
    }

    /// Whether the queue of connection `pick` has drained to half its bound, after a request sent
    /// there found it congested (see [`Node::send`]): its clients may go on.
    pub fn drained(&self, pick: usize) -> bool {
        self.conns[self.conn_index(pick)].queued() <= self.queue_bound / 2
    }

    /// Failures in a row, when the pool ejects failing servers.
    pub fn health(&self) -> Option<&Arc<Health>> {
        self.health.as_ref()
    }

    /// Queues a complete request (its bytes are copied) on connection `pick % connections`, after an
    /// `ASKING` when `asking` (an ASK redirect's retry). A client always picks the same connection,
    /// so its requests to this node stay in order. Its reply is forwarded as it is.
    ///
    /// Returns whether that connection now has more bytes waiting than its share of `max_queue`:
    /// the server (or the network to it) is slower than the clients, and they should wait (until
    /// [`Node::drained`]) rather than have slotline hold their requests.
    pub fn send(&self, pick: usize, frame: &[u8], asking: bool, reply: ReplyTo) -> bool {
        self.queue(pick, std::iter::once(frame), asking, reply)
    }

    /// Queues request number `seq`, `frame`, as [`Node::send`] does, but with the other requests
    /// the session sends to the same connection in this step, in one batch when the step ends
    /// ([`send_gathered`]) or anything else is sent on this thread: one lock of the queue and one
    /// promise of replies for them all (see [`gather`]). For requests of at most
    /// [`LARGEST_GATHERED`] bytes.
    ///
    /// Returns a node that was found congested when what was gathered had to be sent now.
    pub fn send_soon(
        self: &Arc<Self>,
        pick: usize,
        frame: &[u8],
        inbox: &Arc<Inbox>,
        seq: u64,
    ) -> Option<Arc<Node>> {
        gather::gather(self, pick, frame, inbox, seq)
    }

    /// Queues the requests of `frames`, back to back, as many as `reply` owes replies (see
    /// [`Inbox::reply_to_each`]), like [`Node::send`]; each reply is delivered as it arrives.
    pub fn send_batch<'f>(
        &self,
        pick: usize,
        frames: impl Iterator<Item = &'f [u8]>,
        reply: ReplyTo,
    ) -> bool {
        self.queue(pick, frames, false, reply)
    }

    fn queue<'f>(
        &self,
        pick: usize,
        frames: impl Iterator<Item = &'f [u8]>,
        asking: bool,
        reply: ReplyTo,
    ) -> bool {
        if gather::gathering() {
            // Gathered requests go first: nothing this thread sends may overtake them. (A session
            // whose connection this finds congested learns it from its next request there.)
            gather::send_gathered();
        }
        let conn = &self.conns[self.conn_index(pick)];
        match conn.send(frames, asking, reply) {
            Ok(queued) => queued > self.queue_bound,
            Err(reply) => {
                // The connection task is gone (runtime shutting down): fail the request rather
                // than hang it.
                reply.send(Err(BackendError::Closed(self.addr.clone())));
                false
            }
        }
    }

    /// Sends one request outside any client session and waits for its reply (topology queries).
    pub async fn request(&self, frame: &[u8]) -> BackendResult {
        let inbox = Inbox::new();
        self.send(0, frame, false, inbox.reply_to(0));
        inbox.recv(0).await
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("addr", &self.addr).finish()
    }
}
