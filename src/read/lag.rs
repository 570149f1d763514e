//! How far behind its master each replica is, measured from replication offsets.
//!
//! Every [`PROBE_EVERY`] the tracker asks each master and each of its replicas `ROLE`. A master's
//! answer is its replication offset, kept with the time the question was sent; a replica's is how
//! far into that stream it has processed. The newest master sample whose offset the replica has
//! reached is what the replica *covers*: every write the master had acknowledged before that
//! sample was sent is on the replica. Its lag is how long ago that was. A replica that does not
//! answer within [`PROBE_WAIT`], whose link is down, or whose lag passes `max_replica_lag`, gets no
//! reads until a later round says otherwise.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::time::timeout;

use super::now_ms;
use crate::backend::Node;
use crate::primary::replies::{role_offset, Role};

/// Time between two rounds of probes.
pub const PROBE_EVERY: Duration = Duration::from_millis(100);
/// How long a node may take to answer `ROLE` before it counts as unreachable.
pub const PROBE_WAIT: Duration = Duration::from_millis(300);
/// Master samples kept: a replica further behind than these reach back is lagging anyway.
const HISTORY: usize = 128;
const ROLE: Bytes = Bytes::from_static(b"*1\r\n$4\r\nROLE\r\n");

/// A replica's progress, read by sessions choosing where a read goes.
#[derive(Debug)]
pub struct State {
    /// [`now_ms`] when the newest master sample the replica has reached was asked for; 0: none.
    covers: AtomicU64,
    /// Qualifies for reads: linked, answering, within the lag bound.
    qualifies: AtomicBool,
    /// Milliseconds behind the master at the last probe; u64::MAX when unknown.
    lag_ms: AtomicU64,
    /// The replica's link to its master is up.
    linked: AtomicBool,
}

impl Default for State {
    /// Not measured yet: no reads.
    fn default() -> State {
        State {
            covers: AtomicU64::new(0),
            qualifies: AtomicBool::new(false),
            lag_ms: AtomicU64::new(u64::MAX),
            linked: AtomicBool::new(false),
        }
    }
}

impl State {
    #[inline]
    pub fn qualifies(&self) -> bool {
        self.qualifies.load(Ordering::Relaxed)
    }

    #[inline]
    pub fn covers(&self) -> u64 {
        self.covers.load(Ordering::Acquire)
    }

    /// Milliseconds behind its master, if known.
    pub fn lag_ms(&self) -> Option<u64> {
        let lag = self.lag_ms.load(Ordering::Relaxed);
        (lag != u64::MAX).then_some(lag)
    }

    pub fn linked(&self) -> bool {
        self.linked.load(Ordering::Relaxed)
    }

    /// A replica whose progress nobody measures (a primary pool's, whose detector keeps only
    /// linked replicas): it qualifies and covers every write.
    pub fn unmeasured() -> State {
        State {
            covers: AtomicU64::new(u64::MAX),
            qualifies: AtomicBool::new(true),
            lag_ms: AtomicU64::new(u64::MAX),
            linked: AtomicBool::new(true),
        }
    }

    fn unreachable(&self) {
        self.qualifies.store(false, Ordering::Relaxed);
        self.linked.store(false, Ordering::Relaxed);
        self.lag_ms.store(u64::MAX, Ordering::Relaxed);
    }

    #[cfg(test)]
    pub(crate) fn set_for_test(&self, qualifies: bool, covers: u64) {
        self.qualifies.store(qualifies, Ordering::Relaxed);
        self.covers.store(covers, Ordering::Release);
    }
}

/// The replicas' states by address (kept across topologies, so a refresh does not forget how far a
/// replica is), and the masters' recent offsets.
#[derive(Debug)]
pub struct Tracker {
    max_lag_ms: u64,
    states: Mutex<HashMap<Arc<str>, Arc<State>>>,
}

/// A master and its replicas, as one round probes them.
pub struct Probed {
    pub master: Arc<Node>,
    pub replicas: Vec<(Arc<Node>, Arc<State>)>,
}

impl Probed {
    /// `master` and the replicas of `group`.
    pub fn of(master: &Arc<Node>, group: &super::Group) -> Probed {
        Probed {
            master: master.clone(),
            replicas: group
                .replicas
                .iter()
                .map(|r| (r.node.clone(), r.state.clone()))
                .collect(),
        }
    }
}

/// A master's offsets: (when asked, offset), oldest first.
type History = VecDeque<(u64, i64)>;

impl Tracker {
    pub fn new(max_lag_ms: u64) -> Tracker {
        Tracker {
            max_lag_ms,
            states: Mutex::default(),
        }
    }

    /// The state of the replica at `addr` (a new one starts out not qualifying).
    pub fn state(&self, addr: &Arc<str>) -> Arc<State> {
        let mut states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
        states.entry(addr.clone()).or_default().clone()
    }

    /// Forgets replicas no longer in the topology.
    pub fn keep_only(&self, addrs: &[&Arc<str>]) {
        let mut states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
        states.retain(|addr, _| addrs.contains(&addr));
    }

    /// Probes every group until `groups` returns None (the pool is gone).
    pub async fn run(self: Arc<Self>, mut groups: impl FnMut() -> Option<Vec<Probed>>) {
        let mut histories: HashMap<Arc<str>, History> = HashMap::new();
        loop {
            let Some(round) = groups() else { return };
            histories.retain(|addr, _| round.iter().any(|g| g.master.addr() == addr));
            let probes = round.iter().map(|group| {
                let history = histories.remove(group.master.addr()).unwrap_or_default();
                self.probe(group, history)
            });
            for (addr, history) in futures::future::join_all(probes).await {
                histories.insert(addr, history);
            }
            tokio::time::sleep(PROBE_EVERY).await;
        }
    }

    /// One round for one group: the master's offset, then each replica's against its history.
    async fn probe(&self, group: &Probed, mut history: History) -> (Arc<str>, History) {
        let asked = now_ms(Instant::now());
        let replicas = group.replicas.iter().map(|(node, _)| async {
            let reply = ask(node).await;
            (reply, now_ms(Instant::now()))
        });
        let (master, replicas) =
            futures::future::join(ask(&group.master), futures::future::join_all(replicas)).await;
        if let Some((Role::Master, offset)) = master {
            if history.back().is_some_and(|&(_, last)| offset < last) {
                // A new master (or a restarted one): its offsets start a new stream.
                history.clear();
            }
            history.push_back((asked, offset));
            if history.len() > HISTORY {
                history.pop_front();
            }
        }
        for ((reply, answered), (_, state)) in replicas.into_iter().zip(&group.replicas) {
            match reply {
                Some((Role::Replica { linked: true }, offset)) => {
                    self.judge(state, &history, offset, answered)
                }
                _ => state.unreachable(),
            }
        }
        (group.master.addr().clone(), history)
    }

    /// A linked replica at `offset`, seen at `seen`.
    fn judge(&self, state: &State, history: &History, offset: i64, seen: u64) {
        state.linked.store(true, Ordering::Relaxed);
        let covered = history
            .iter()
            .rev()
            .find(|&&(_, master)| master <= offset)
            .map(|&(asked, _)| asked);
        let Some(covered) = covered else {
            // Behind every sample kept (or none yet): too far behind to say by how much.
            state.qualifies.store(false, Ordering::Relaxed);
            state.lag_ms.store(u64::MAX, Ordering::Relaxed);
            return;
        };
        let lag = seen.saturating_sub(covered);
        state.lag_ms.store(lag, Ordering::Relaxed);
        state.covers.fetch_max(covered, Ordering::AcqRel);
        state
            .qualifies
            .store(lag <= self.max_lag_ms, Ordering::Relaxed);
    }
}

async fn ask(node: &Node) -> Option<(Role, i64)> {
    match timeout(PROBE_WAIT, node.request(&ROLE)).await {
        Ok(Ok(reply)) => role_offset(&reply).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_covers_the_newest_sample_it_reached() {
        let tracker = Tracker::new(1000);
        let state = State::default();
        let history: History = [(10, 100), (110, 200), (210, 300)].into();
        tracker.judge(&state, &history, 250, 260);
        assert_eq!((state.covers(), state.lag_ms()), (110, Some(150)));
        assert!(state.qualifies());
        tracker.judge(&state, &history, 300, 300);
        assert_eq!((state.covers(), state.lag_ms()), (210, Some(90)));
        // Further behind than the bound.
        tracker.judge(&state, &history, 100, 1500);
        assert_eq!(state.lag_ms(), Some(1490));
        assert!(!state.qualifies());
        // Covers never goes back.
        assert_eq!(state.covers(), 210);
        // Behind everything kept.
        tracker.judge(&state, &history, 50, 300);
        assert!(!state.qualifies());
        assert_eq!(state.lag_ms(), None);
    }
}
