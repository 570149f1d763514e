//! Connections that follow every master of a pool rather than carry requests: CLIENT TRACKING's
//! invalidation feeds and MONITOR's relay of script commands. Each is one [`Subscriber`] per
//! master, opened with a setup request, and kept in step with the pool's masters; a client whose
//! command needs them waits at a [`Gate`] until every master's setup has been answered.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{Feed, Node, ReplyTo, Settings, SubEvent, Subscriber};

/// What a barrier's [`ReplyTo`] is answered with once it has passed (see
/// [`MasterFeeds::barrier`]).
pub const BARRIER_PASSED: &[u8] = b"+PONG\r\n";

/// One connection per master, each sent `setup` when opened.
pub struct MasterFeeds {
    settings: Settings,
    setup: Bytes,
    /// Each master's connection.
    links: HashMap<Arc<str>, Link>,
    next_id: u32,
    events_tx: mpsc::UnboundedSender<SubEvent>,
    /// What the connections read, frame by frame.
    pub events: mpsc::UnboundedReceiver<SubEvent>,
    feed: Arc<Feed>,
}

struct Link {
    sub: Subscriber,
    /// Its setup was answered.
    set_up: bool,
    /// Barriers sent on it (a PING each), answered in order by its `+PONG`s.
    barriers: VecDeque<ReplyTo>,
}

impl MasterFeeds {
    pub fn new(settings: Settings, setup: Bytes) -> MasterFeeds {
        let (events_tx, events) = mpsc::unbounded_channel();
        MasterFeeds {
            settings,
            setup,
            links: HashMap::new(),
            next_id: 0,
            events_tx,
            events,
            // Frames are taken as they come: nothing waits for a slow client here.
            feed: Feed::new(usize::MAX),
        }
    }

    /// Opens connections to new masters and closes those to masters no longer in `masters`.
    pub fn follow(&mut self, masters: &[Arc<Node>]) {
        self.links
            .retain(|addr, _| masters.iter().any(|m| m.addr() == addr));
        for master in masters {
            if self.links.contains_key(master.addr()) {
                continue;
            }
            let link = Subscriber::spawn(
                self.next_id,
                master.addr().clone(),
                &self.settings,
                self.events_tx.clone(),
                self.feed.clone(),
            );
            self.next_id += 1;
            link.send(self.setup.clone());
            let link = Link {
                sub: link,
                set_up: false,
                barriers: VecDeque::new(),
            };
            self.links.insert(master.addr().clone(), link);
        }
    }

    /// A frame was taken from connection `id`.
    pub fn taken(&self, frame: &[u8]) {
        self.feed.written(frame.len());
    }

    /// Connection `id` answered its setup; true when every connection has.
    pub fn set_up(&mut self, id: u32) -> bool {
        if let Some(link) = self.links.values_mut().find(|l| l.sub.id() == id) {
            link.set_up = true;
        }
        self.ready()
    }

    /// Connection `id` answered `+PONG`: its setup, or else its oldest barrier. True when every
    /// connection is set up.
    pub fn ponged(&mut self, id: u32) -> bool {
        if let Some(link) = self.links.values_mut().find(|l| l.sub.id() == id) {
            match link.set_up {
                false => link.set_up = true,
                true => {
                    if let Some(reply) = link.barriers.pop_front() {
                        reply.send(Ok(Bytes::from_static(BARRIER_PASSED)));
                    }
                }
            }
        }
        self.ready()
    }

    /// Answers `reply` once everything `master`'s connection reads before now has been taken:
    /// a PING on it, answered in order after whatever the master sent it first. At once when
    /// there is no such connection, or it is not set up yet (it then follows nothing older).
    pub fn barrier(&mut self, master: &str, reply: ReplyTo) {
        match self.links.get_mut(master) {
            Some(link) if link.set_up => {
                link.sub.send(Bytes::from_static(b"*1\r\n$4\r\nPING\r\n"));
                link.barriers.push_back(reply);
            }
            _ => reply.send(Ok(Bytes::from_static(BARRIER_PASSED))),
        }
    }

    /// Every master is followed.
    pub fn ready(&self) -> bool {
        !self.links.is_empty() && self.links.values().all(|l| l.set_up)
    }

    /// Connection `id` is gone; the next [`follow`](Self::follow) opens another. Its barriers
    /// are answered (dropped): nothing more will come on it.
    pub fn lost(&mut self, id: u32) {
        self.links.retain(|_, l| l.sub.id() != id);
    }
}

/// Where a client's command waits until its pool's feeds run: whether they run and are ready, and
/// the replies held meanwhile (answered `+OK`).
#[derive(Default)]
pub struct Gate(Mutex<GateState>);

#[derive(Default)]
struct GateState {
    running: bool,
    ready: bool,
    waiting: Vec<ReplyTo>,
}

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A client needs the feeds: `start` runs them if they do not run. True when they are ready
    /// (answer at once); else `later` is answered when they are.
    pub fn enter(&self, start: impl FnOnce(), later: impl FnOnce() -> ReplyTo) -> bool {
        let mut state = self.lock();
        if !state.running {
            state.running = true;
            state.ready = false;
            start();
        }
        if state.ready {
            return true;
        }
        state.waiting.push(later());
        false
    }

    /// Whether the feeds are ready now; held replies are answered when they become so.
    pub fn set_ready(&self, ready: bool) {
        let mut state = self.lock();
        state.ready = ready;
        if ready {
            for reply in state.waiting.drain(..) {
                reply.send(Ok(Bytes::from_static(b"+OK\r\n")));
            }
        }
    }

    /// Whether the feeds go on: no longer when `needed` says nobody needs them and no reply is
    /// held (then the next [`enter`](Self::enter) starts them again).
    pub fn keep_running(&self, needed: bool) -> bool {
        let mut state = self.lock();
        if needed || !state.waiting.is_empty() {
            return true;
        }
        state.running = false;
        state.ready = false;
        false
    }
}
