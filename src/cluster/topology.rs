//! An immutable snapshot of which master serves each slot.

use std::sync::Arc;

use crate::backend::Node;
use crate::read::Group;
use crate::route::{Slot, SLOTS};

/// Marks a slot no master serves.
const UNASSIGNED: u16 = u16::MAX;

/// Slot -> master, as one array of node indexes (no string per slot).
pub struct Topology {
    slots: Box<[u16]>,
    nodes: Vec<Arc<Node>>,
    /// Each master's replicas that may serve reads, by the master's index (none while no read
    /// policy of the pool uses replicas).
    groups: Vec<Group>,
    /// Every node the cluster named, masters and replicas, sorted: where a redirect may lead.
    known: Box<[Arc<str>]>,
    /// Changes when the routes do (see [`crate::route::next_generation`]).
    generation: u64,
}

impl Topology {
    pub fn empty() -> Topology {
        Topology {
            slots: vec![UNASSIGNED; SLOTS].into_boxed_slice(),
            nodes: Vec::new(),
            groups: Vec::new(),
            known: Box::default(),
            generation: 0,
        }
    }

    /// `slots[i]` is an index into `nodes` or `None`; `known` lists every node's address (the
    /// masters are added if missing).
    pub fn new(
        slots: Vec<Option<u16>>,
        nodes: Vec<Arc<Node>>,
        groups: Vec<Group>,
        known: &[String],
    ) -> Topology {
        let mut known: Vec<Arc<str>> = known
            .iter()
            .map(|a| Arc::from(a.as_str()))
            .chain(nodes.iter().map(|n| n.addr().clone()))
            .collect();
        known.sort();
        known.dedup();
        let slots = slots
            .into_iter()
            .map(|s| {
                s.filter(|&i| (i as usize) < nodes.len())
                    .unwrap_or(UNASSIGNED)
            })
            .collect();
        Topology {
            slots,
            nodes,
            groups,
            known: known.into(),
            generation: crate::route::next_generation(),
        }
    }

    /// Identifies the routes: equal for two topologies that route alike (see [`Self::same_routes`]).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Takes `old`'s generation when it routes alike, so that a refresh that changed nothing holds
    /// no request back.
    pub fn inherit_generation(&mut self, old: &Topology) {
        if self.same_routes(old) {
            self.generation = old.generation;
        }
    }

    /// Whether the cluster named a node at `addr` (a master or a replica).
    pub fn knows(&self, addr: &str) -> bool {
        self.known.binary_search_by(|a| (**a).cmp(addr)).is_ok()
    }

    /// Every node the cluster named, sorted.
    pub fn known(&self) -> &[Arc<str>] {
        &self.known
    }

    /// The master serving `slot`, if any.
    pub fn node_for(&self, slot: Slot) -> Option<&Arc<Node>> {
        let i = self.slots[slot.index()];
        self.nodes.get(i as usize)
    }

    /// The master serving `slot` and its replicas that may serve reads.
    pub fn group_for(&self, slot: Slot) -> Option<(&Arc<Node>, Option<&Group>)> {
        let i = self.slots[slot.index()] as usize;
        self.nodes.get(i).map(|master| (master, self.groups.get(i)))
    }

    /// Master `i` and its replicas that may serve reads.
    pub fn group_of(&self, i: usize) -> Option<(&Arc<Node>, Option<&Group>)> {
        self.nodes.get(i).map(|master| (master, self.groups.get(i)))
    }

    /// Each master's replicas, in master order (empty while reads stay on masters).
    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// The master for a request: the owner of its slot, or for a keyless request the master a client
    /// numbered `pick` always uses.
    pub fn node_for_request(&self, slot: Option<Slot>, pick: usize) -> Option<&Arc<Node>> {
        match slot {
            Some(slot) => self.node_for(slot),
            None => self.nodes.get(pick % self.nodes.len().max(1)),
        }
    }

    /// Masters, in the order of their first slot.
    pub fn nodes(&self) -> &[Arc<Node>] {
        &self.nodes
    }

    pub fn covered(&self) -> usize {
        self.slots.iter().filter(|&&s| s != UNASSIGNED).count()
    }

    /// Whether both send every slot to the same address.
    pub fn same_routes(&self, other: &Topology) -> bool {
        self.slots.iter().zip(other.slots.iter()).all(|(&a, &b)| {
            let addr = |t: &Topology, i: u16| t.nodes.get(i as usize).map(|n| n.addr().clone());
            addr(self, a) == addr(other, b)
        })
    }
}
