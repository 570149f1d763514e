//! Read policies: which node of a master and its replicas serves a read-only command. Cluster pools
//! (per slot) and primary pools (one group) ask the same question here; the session only asks.
//!
//! A replica qualifies while its link to the master is up, it answers, and it is at most
//! `max_replica_lag` behind (see [`lag`]). A client that wrote reads its own writes: until a
//! replica has replicated past its last write ([`Fresh`]), its reads go to the master
//! (docs/read-your-writes.md has the argument).
//!
//! A client reads a slot from the same replica while that replica qualifies (the one its id
//! picks among those that do): its reads of one key never go back in time by hopping between
//! replicas that are at different offsets. Many clients spread over every replica.

pub mod lag;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::backend::Node;
pub use crate::config::ReadFrom;
pub use lag::State;

/// Milliseconds since slotline started: the clock replicas' progress and clients' writes are
/// compared on.
pub fn now_ms(now: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    // Never 0: 0 is "no write yet" and "never caught up".
    u64::try_from(now.saturating_duration_since(epoch).as_millis()).unwrap_or(u64::MAX) + 1
}

/// A replica as reads see it.
#[derive(Debug, Clone)]
pub struct Replica {
    pub node: Arc<Node>,
    /// Its progress, kept by the lag tracker (shared across topologies by address).
    pub state: Arc<State>,
    /// In slotline's zone.
    pub local: bool,
    /// Its zone, when known.
    pub zone: Option<Arc<str>>,
}

/// A master and its replicas: a cluster slot's, or a primary pool's.
#[derive(Debug, Clone, Default)]
pub struct Group {
    pub replicas: Box<[Replica]>,
    /// The master is in slotline's zone.
    pub master_local: bool,
}

/// A replica as INFO and metrics show it.
pub struct ReplicaView {
    pub replica: Replica,
    /// Its master's address ("" while there is none).
    pub master: Arc<str>,
}

/// Every replica of `groups`, each with its master.
pub fn describe<'g>(
    groups: impl IntoIterator<Item = (Option<&'g Arc<Node>>, &'g Group)>,
) -> Vec<ReplicaView> {
    groups
        .into_iter()
        .flat_map(|(master, group)| {
            let master: Arc<str> = master.map_or_else(|| Arc::from(""), |m| m.addr().clone());
            group.replicas.iter().map(move |r| ReplicaView {
                replica: r.clone(),
                master: master.clone(),
            })
        })
        .collect()
}

/// How fresh a client's read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fresh {
    /// Anything a qualifying replica has.
    Any,
    /// Past the client's write whose reply slotline had by this time ([`now_ms`]).
    After(u64),
    /// A write of the client's is still on its way: only the master has it for sure.
    Master,
}

/// Where a read goes.
#[derive(Debug, Clone, Copy)]
pub enum Pick<'g> {
    Replica(&'g Arc<Node>),
    /// The master: the policy's choice, or a fallback (then `why` says which).
    Master(Option<Fallback>),
    /// `read_from: replica` and no replica of the group qualifies.
    Nothing,
}

/// Why a read a replica could have served went to the master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// No replica qualifies (link down, unreachable, lagging).
    NoReplica,
    /// The client's own write is not on a qualifying replica yet.
    OwnWrite,
}

impl Group {
    /// The node `policy` sends a read to, for the client numbered `pick`.
    pub fn choose(&self, policy: ReadFrom, fresh: Fresh, pick: usize) -> Pick<'_> {
        let fits = |r: &Replica| r.state.qualifies() && fresh.allows(&r.state);
        let replica = |local_only: bool| -> Option<&Arc<Node>> {
            let n = self.replicas.len();
            (0..n)
                .map(|i| &self.replicas[(pick + i) % n])
                .find(|r| (!local_only || r.local) && fits(r))
                .map(|r| &r.node)
        };
        // The master instead of a replica: tells whether a replica qualified apart from freshness.
        let fallback = || {
            let healthy = self.replicas.iter().any(|r| r.state.qualifies());
            match healthy && fresh != Fresh::Any {
                true => Fallback::OwnWrite,
                false => Fallback::NoReplica,
            }
        };
        match policy {
            ReadFrom::Master | ReadFrom::PreferMaster => Pick::Master(None),
            ReadFrom::Replica => match replica(false) {
                Some(node) => Pick::Replica(node),
                // Its own writes are the master's to show; a replica policy means "not the
                // master while replicas qualify", not "stale".
                None if fallback() == Fallback::OwnWrite => Pick::Master(Some(Fallback::OwnWrite)),
                None => Pick::Nothing,
            },
            ReadFrom::PreferReplica => match replica(false) {
                Some(node) => Pick::Replica(node),
                None => Pick::Master(Some(fallback())),
            },
            ReadFrom::Any => {
                // The master is one more choice among the qualifying replicas.
                let qualifying = self.replicas.iter().filter(|r| fits(r)).count();
                match pick % (qualifying + 1) {
                    0 => Pick::Master(None),
                    _ => replica(false).map_or(Pick::Master(None), Pick::Replica),
                }
            }
            ReadFrom::NearestReplica => match replica(true).or_else(|| replica(false)) {
                Some(node) => Pick::Replica(node),
                None => Pick::Master(Some(fallback())),
            },
            ReadFrom::Nearest => {
                if self.master_local && !self.replicas.iter().any(|r| r.local && fits(r)) {
                    return Pick::Master(None);
                }
                if self.master_local && pick.is_multiple_of(2) {
                    return Pick::Master(None);
                }
                match replica(true).or_else(|| replica(false)) {
                    Some(node) => Pick::Replica(node),
                    None => Pick::Master(Some(fallback())),
                }
            }
        }
    }
}

impl Fresh {
    fn allows(self, state: &State) -> bool {
        match self {
            Fresh::Any => true,
            Fresh::After(at) => state.covers() > at,
            Fresh::Master => false,
        }
    }
}

/// A client's reads: its policy (the listener's, or its own after READONLY/READWRITE) and its
/// last write, for read-your-writes. Kept in the session, so small.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientReads {
    /// The client's own choice: None, the listener's policy.
    pub chosen: Option<ReadFrom>,
    /// A write was sent and the client's pipeline has not been empty since.
    pending: bool,
    /// When the client's pipeline emptied after its last write ([`now_ms`]); 0: never wrote.
    wrote_at: u64,
}

impl ClientReads {
    /// The policy the client's reads follow.
    pub fn policy(&self, listener: ReadFrom) -> ReadFrom {
        self.chosen.unwrap_or(listener)
    }

    /// The client sent a write.
    #[inline]
    pub fn wrote(&mut self) {
        self.pending = true;
    }

    /// Every request of the client has been answered, at `now`.
    #[inline]
    pub fn settled(&mut self, now: Instant) {
        if self.pending {
            self.pending = false;
            self.wrote_at = now_ms(now);
        }
    }

    /// How fresh its next read must be (with read-your-writes on).
    pub fn fresh(&self, read_your_writes: bool) -> Fresh {
        match (read_your_writes, self.pending, self.wrote_at) {
            (false, ..) | (true, false, 0) => Fresh::Any,
            (true, true, _) => Fresh::Master,
            (true, false, at) => Fresh::After(at),
        }
    }
}

/// What the pool's reads did, for INFO and metrics.
#[derive(Debug, Default)]
pub struct Counters {
    /// Reads sent to a replica.
    pub to_replicas: AtomicU64,
    /// Reads sent to the master because no replica qualified.
    pub fallbacks: AtomicU64,
    /// Reads sent to the master because the client's own write was not on a replica yet.
    pub own_writes: AtomicU64,
    /// Reads retried on the master after their replica failed them.
    pub retried: AtomicU64,
}

impl Counters {
    pub fn count(&self, pick: &Pick<'_>) {
        let counter = match pick {
            Pick::Replica(_) => &self.to_replicas,
            Pick::Master(Some(Fallback::NoReplica)) => &self.fallbacks,
            Pick::Master(Some(Fallback::OwnWrite)) => &self.own_writes,
            _ => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> [u64; 4] {
        [
            &self.to_replicas,
            &self.fallbacks,
            &self.own_writes,
            &self.retried,
        ]
        .map(|c| c.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Settings;
    use std::time::Duration;

    fn group(replicas: usize, qualify: &[bool], local: &[bool], master_local: bool) -> Group {
        let settings = Settings::new(1, Duration::from_millis(10));
        Group {
            replicas: (0..replicas)
                .map(|i| {
                    let state = Arc::new(State::default());
                    state.set_for_test(qualify[i], 100);
                    Replica {
                        node: Node::spawn(Arc::from(format!("127.0.0.1:{}", 1 + i)), &settings),
                        state,
                        local: local[i],
                        zone: None,
                    }
                })
                .collect(),
            master_local,
        }
    }

    fn addr(pick: Pick<'_>) -> String {
        match pick {
            Pick::Replica(n) => n.addr().to_string(),
            Pick::Master(why) => format!("master {why:?}"),
            Pick::Nothing => "nothing".into(),
        }
    }

    #[tokio::test]
    async fn policies_pick_as_documented() {
        let g = group(2, &[true, true], &[false, true], false);
        assert_eq!(
            addr(g.choose(ReadFrom::Master, Fresh::Any, 0)),
            "master None"
        );
        assert_eq!(
            addr(g.choose(ReadFrom::PreferMaster, Fresh::Any, 0)),
            "master None"
        );
        // A client sticks to one replica; clients spread.
        assert_eq!(
            addr(g.choose(ReadFrom::Replica, Fresh::Any, 0)),
            "127.0.0.1:1"
        );
        assert_eq!(
            addr(g.choose(ReadFrom::Replica, Fresh::Any, 1)),
            "127.0.0.1:2"
        );
        assert_eq!(
            addr(g.choose(ReadFrom::NearestReplica, Fresh::Any, 0)),
            "127.0.0.1:2"
        );
        assert_eq!(
            addr(g.choose(ReadFrom::Nearest, Fresh::Any, 0)),
            "127.0.0.1:2"
        );
        let spread: Vec<String> = (0..3)
            .map(|p| addr(g.choose(ReadFrom::Any, Fresh::Any, p)))
            .collect();
        assert!(spread.contains(&"master None".to_string()), "{spread:?}");
        // Freshness: covered past 100 ms only.
        assert_eq!(
            addr(g.choose(ReadFrom::Replica, Fresh::After(99), 0)),
            "127.0.0.1:1"
        );
        assert_eq!(
            addr(g.choose(ReadFrom::Replica, Fresh::After(100), 0)),
            "master Some(OwnWrite)"
        );
        assert_eq!(
            addr(g.choose(ReadFrom::PreferReplica, Fresh::Master, 0)),
            "master Some(OwnWrite)"
        );
        // Nothing qualifies.
        let down = group(2, &[false, false], &[false, false], true);
        assert_eq!(
            addr(down.choose(ReadFrom::Replica, Fresh::Any, 0)),
            "nothing"
        );
        assert_eq!(
            addr(down.choose(ReadFrom::PreferReplica, Fresh::Any, 0)),
            "master Some(NoReplica)"
        );
        assert_eq!(
            addr(down.choose(ReadFrom::Nearest, Fresh::Any, 1)),
            "master None"
        );
        // One down: the other takes the client that stuck to it.
        let one = group(2, &[false, true], &[true, false], false);
        assert_eq!(
            addr(one.choose(ReadFrom::Replica, Fresh::Any, 0)),
            "127.0.0.1:2"
        );
        assert_eq!(
            addr(one.choose(ReadFrom::NearestReplica, Fresh::Any, 0)),
            "127.0.0.1:2"
        );
    }

    #[test]
    fn a_client_reads_its_writes() {
        let mut reads = ClientReads::default();
        assert_eq!(reads.fresh(true), Fresh::Any);
        reads.wrote();
        assert_eq!(reads.fresh(true), Fresh::Master);
        assert_eq!(reads.fresh(false), Fresh::Any);
        let now = Instant::now();
        reads.settled(now);
        assert_eq!(reads.fresh(true), Fresh::After(now_ms(now)));
    }
}
