//! Where a request goes: the routing snapshot one batch of requests is routed with.

use std::sync::Arc;

use arc_swap::Guard;

use super::super::{Pool, Router};
use crate::backend::Node;
use crate::cluster::{Cluster, Topology};
use crate::command::{flags, Request, Spec};
use crate::primary::{Primary, Roles};
use crate::read::{Fresh, Pick, ReadFrom};
use crate::route::{key_slot, Slot};
use crate::shards::Table;

/// Where a keyed request goes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Place {
    /// A cluster slot.
    Slot(Slot),
    /// A server of a sharded pool, by config index.
    Server(usize),
    /// Master (or server in service) number `i`, for requests sent to every one.
    Node(usize),
    /// Any backend: the request has no key. In a primary pool: the master.
    Any,
    /// A primary pool's replica, for a read-only command.
    Replica,
    /// A read of a cluster slot that its replicas may serve (see [`crate::read`]).
    ReadSlot(Slot),
    /// Master `i` or one of its replicas, for a read sent to every master.
    ReadNode(usize),
}

impl Place {
    /// The master number, for a place that names one.
    fn node(self) -> Option<usize> {
        match self {
            Place::Node(i) | Place::ReadNode(i) => Some(i),
            _ => None,
        }
    }

    /// Whether a read policy chooses the node (a replica, or the master).
    pub(super) fn is_read(self) -> bool {
        matches!(
            self,
            Place::ReadSlot(_) | Place::ReadNode(_) | Place::Replica
        )
    }

    /// The cluster slot, for a place that is one (TRYAGAIN retries ask its owner again).
    pub(super) fn slot(self) -> Option<Slot> {
        match self {
            Place::Slot(slot) | Place::ReadSlot(slot) => Some(slot),
            _ => None,
        }
    }
}

/// The routing state a batch of requests is routed with, loaded once per batch.
pub(super) enum View<'a> {
    Cluster(&'a Arc<Cluster>, Guard<Arc<Topology>>),
    Shards(Guard<Arc<Table>>),
    Primary(&'a Arc<Primary>, Guard<Arc<Roles>>),
}

impl<'a> View<'a> {
    pub(super) fn of(pool: &'a Pool) -> View<'a> {
        // A migrating pool that verifies still serves from its old placement (see
        // `crate::migrate::phase`).
        if let Some(migration) = pool.migration.as_deref().filter(|m| m.verifying()) {
            return View::Shards(migration.old_table());
        }
        match &pool.router {
            Router::Cluster(cluster) => View::Cluster(cluster, cluster.topology()),
            Router::Shards(shards) => View::Shards(shards.table()),
            Router::Primary(primary) => View::Primary(primary, primary.roles()),
        }
    }

    /// Identifies the routing snapshot: requests routed under different ones may go to different
    /// places for the same key.
    pub(super) fn generation(&self) -> u64 {
        match self {
            View::Cluster(_, topology) => topology.generation(),
            View::Shards(table) => table.generation(),
            View::Primary(_, roles) => roles.generation,
        }
    }

    /// Where a request that may be read from a replica goes under `policy`: read-only commands to
    /// a primary pool's replicas, or to a cluster slot's; everything else stays where its keys are.
    #[inline]
    pub(super) fn for_reads(&self, place: Place, spec: &Spec, policy: ReadFrom) -> Place {
        if policy == ReadFrom::Master || !spec.has(flags::READONLY) {
            return place;
        }
        match (self, place) {
            (View::Primary(..), _) => Place::Replica,
            (View::Cluster(cluster, _), Place::Slot(slot)) if cluster.reads_replicas() => {
                Place::ReadSlot(slot)
            }
            (View::Cluster(cluster, _), Place::Node(i)) if cluster.reads_replicas() => {
                Place::ReadNode(i)
            }
            _ => place,
        }
    }

    /// The node a read goes to under `policy` (see [`crate::read::Group::choose`]), and whether
    /// it is a replica; any other place as [`target`](Self::target) names it. None: no node may
    /// take it.
    pub(super) fn read_target(
        &self,
        place: Place,
        policy: ReadFrom,
        fresh: Fresh,
        pick: usize,
    ) -> Option<(&Arc<Node>, bool)> {
        let (master, pick) = match (self, place) {
            (View::Cluster(cluster, topology), Place::ReadSlot(_) | Place::ReadNode(_)) => {
                let (master, group) = match place {
                    Place::ReadSlot(slot) => topology.group_for(slot)?,
                    _ => topology.group_of(place.node()?)?,
                };
                let Some(group) = group else {
                    return Some((master, false));
                };
                let pick = group.choose(policy, fresh, pick);
                cluster.read_counters().count(&pick);
                (Some(master), pick)
            }
            (View::Primary(primary, roles), Place::Replica) => {
                let pick = primary.read_node(roles, policy, fresh);
                primary.read_counters().count(&pick);
                (roles.master.as_ref(), pick)
            }
            _ => return self.target(place, pick).map(|node| (node, false)),
        };
        match pick {
            Pick::Replica(node) => Some((node, true)),
            Pick::Master(_) => master.map(|node| (node, false)),
            Pick::Nothing => None,
        }
    }

    /// Where all the keys of a request live (Any when it has none); Err when they live apart.
    pub(super) fn place_of_request(&self, req: Request<'_>, spec: &Spec) -> Result<Place, ()> {
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
    pub(super) fn place_of(&self, key: &[u8]) -> Place {
        match self {
            View::Cluster(..) => Place::Slot(key_slot(key)),
            View::Shards(table) => Place::Server(table.server_for_key(key)),
            View::Primary(..) => Place::Any,
        }
    }

    /// The node for a request; a client without a key always uses the same one.
    pub(super) fn target(&self, place: Place, pick: usize) -> Option<&Arc<Node>> {
        match (self, place) {
            (View::Cluster(_, topology), Place::Slot(slot) | Place::ReadSlot(slot)) => {
                topology.node_for_request(Some(slot), pick)
            }
            (View::Cluster(_, topology), Place::Node(i) | Place::ReadNode(i)) => {
                topology.nodes().get(i)
            }
            (View::Cluster(_, topology), _) => topology.node_for_request(None, pick),
            (View::Shards(table), Place::Server(i)) => table.node(i),
            (View::Shards(table), Place::Node(i)) => table.in_service().nth(i),
            (View::Shards(table), _) => table.any_node(pick),
            (View::Primary(_, roles), _) => roles.master.as_ref(),
        }
    }

    /// How many masters (servers in service) a request for every node goes to.
    pub(super) fn node_count(&self) -> usize {
        match self {
            View::Cluster(_, topology) => topology.nodes().len(),
            View::Shards(table) => table.in_service().count(),
            View::Primary(_, roles) => usize::from(roles.master.is_some()),
        }
    }

    /// The masters (a sharded pool's servers in service), in [`Place::Node`] order.
    pub(super) fn masters(&self) -> impl Iterator<Item = &Arc<Node>> + '_ {
        (0..self.node_count()).filter_map(|i| self.target(Place::Node(i), 0))
    }

    /// Every node of the pool, masters and replicas (a sharded pool's servers in service): where a
    /// command that changes each node's own state goes.
    pub(super) fn members(&self) -> Vec<Arc<Node>> {
        match self {
            View::Cluster(cluster, topology) => topology
                .known()
                .iter()
                .filter_map(|addr| cluster.redirect_node(addr))
                .collect(),
            View::Shards(table) => table.in_service().cloned().collect(),
            View::Primary(_, roles) => roles
                .master
                .iter()
                .chain(&roles.replicas)
                .cloned()
                .collect(),
        }
    }

    /// The error for a request no node can take (see [`target`](Self::target)): a sharded pool says
    /// why it has no server (a Kubernetes Service without ready endpoints).
    pub(super) fn no_node(&self, place: Place) -> &str {
        match (self, place) {
            (View::Cluster(_, topology), Place::ReadSlot(slot))
                if topology.node_for(slot).is_some() =>
            {
                "ERR slotline: no replica of this slot qualifies for reads (read_from: replica): each is unreachable, unlinked or more than max_replica_lag behind"
            }
            (View::Cluster(..), Place::Slot(_) | Place::ReadSlot(_)) => {
                "CLUSTERDOWN Hash slot not served"
            }
            (View::Cluster(_, topology), Place::ReadNode(i)) if topology.nodes().get(i).is_some() => {
                "ERR slotline: no replica of a master qualifies for reads (read_from: replica): each is unreachable, unlinked or more than max_replica_lag behind"
            }
            (View::Cluster(..), _) => {
                "CLUSTERDOWN slotline has not learnt the cluster topology yet"
            }
            (View::Shards(table), _) => table.unavailable(),
            (View::Primary(..), Place::Replica) => {
                "ERR slotline: no healthy replica to read from (read_from: replica)"
            }
            (View::Primary(..), _) => "MASTERDOWN slotline knows no master for this pool yet",
        }
    }

    /// [`View::target`], asking for a fresh topology (or a look for the master) when the place has
    /// none: the request fails now, the next one finds a node.
    pub(super) fn target_or_refresh(&self, place: Place, pick: usize) -> Option<&Arc<Node>> {
        let node = self.target(place, pick);
        if node.is_none() {
            self.request_refresh();
        }
        node
    }

    /// Asks for a new cluster topology (a slot had no owner), or a look for the master.
    pub(super) fn request_refresh(&self) {
        match self {
            View::Cluster(cluster, _) => cluster.request_refresh(),
            View::Primary(primary, ..) => primary.look_soon(),
            View::Shards(_) => {}
        }
    }

    /// The error for a command whose keys must live together but do not.
    pub(super) fn cross_error(&self, command: String) -> String {
        match self {
            View::Cluster(..) => format!(
                "CROSSSLOT Keys in request don't hash to the same slot ({command} needs all its keys in one slot; a hash tag such as {{user1}} in each key keeps them together)"
            ),
            // Never: a primary pool holds every key on one master.
            View::Primary(..) => format!("ERR the keys of this {command} cannot be served together"),
            View::Shards(_) => format!(
                "CROSSSLOT the keys of this {command} live on different servers of the pool (only MGET, MSET, DEL, UNLINK, EXISTS and TOUCH are split across servers; a hash_tag keeps keys together)"
            ),
        }
    }
}
