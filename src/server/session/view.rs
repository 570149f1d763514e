//! Where a request goes: the routing snapshot one batch of requests is routed with.

use std::sync::Arc;

use arc_swap::Guard;

use super::super::{Pool, Router};
use crate::backend::Node;
use crate::cluster::{Cluster, Topology};
use crate::command::{flags, Request, Spec};
use crate::config::ReadFrom;
use crate::primary::{Primary, Roles};
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
}

impl Place {
    /// The cluster slot, for a place that is one (TRYAGAIN retries ask its owner again).
    pub(super) fn slot(self) -> Option<Slot> {
        match self {
            Place::Slot(slot) => Some(slot),
            _ => None,
        }
    }
}

/// The routing state a batch of requests is routed with, loaded once per batch.
pub(super) enum View<'a> {
    Cluster(&'a Arc<Cluster>, Guard<Arc<Topology>>),
    Shards(Guard<Arc<Table>>),
    Primary(&'a Arc<Primary>, Guard<Arc<Roles>>, ReadFrom),
}

impl<'a> View<'a> {
    pub(super) fn of(pool: &'a Pool) -> View<'a> {
        match &pool.router {
            Router::Cluster(cluster) => View::Cluster(cluster, cluster.topology()),
            Router::Shards(shards) => View::Shards(shards.table()),
            Router::Primary(primary) => {
                View::Primary(primary, primary.roles(), pool.config.read_from)
            }
        }
    }

    /// Identifies the routing snapshot: requests routed under different ones may go to different
    /// places for the same key.
    pub(super) fn generation(&self) -> u64 {
        match self {
            View::Cluster(_, topology) => topology.generation(),
            View::Shards(table) => table.generation(),
            View::Primary(_, roles, _) => roles.generation,
        }
    }

    /// Where a request that may be read from a replica goes: a primary pool that reads from replicas
    /// sends read-only commands there; everything else stays where its keys are.
    pub(super) fn for_reads(&self, place: Place, spec: &Spec) -> Place {
        match self {
            View::Primary(_, _, read_from)
                if *read_from != ReadFrom::Master && spec.has(flags::READONLY) =>
            {
                Place::Replica
            }
            _ => place,
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
            (View::Cluster(_, topology), Place::Slot(slot)) => {
                topology.node_for_request(Some(slot), pick)
            }
            (View::Cluster(_, topology), Place::Node(i)) => topology.nodes().get(i),
            (View::Cluster(_, topology), _) => topology.node_for_request(None, pick),
            (View::Shards(table), Place::Server(i)) => table.node(i),
            (View::Shards(table), Place::Node(i)) => table.in_service().nth(i),
            (View::Shards(table), _) => table.any_node(pick),
            (View::Primary(primary, roles, read_from), Place::Replica) => {
                primary.read_node(roles, *read_from)
            }
            (View::Primary(_, roles, _), _) => roles.master.as_ref(),
        }
    }

    /// How many masters (servers in service) a request for every node goes to.
    pub(super) fn node_count(&self) -> usize {
        match self {
            View::Cluster(_, topology) => topology.nodes().len(),
            View::Shards(table) => table.in_service().count(),
            View::Primary(_, roles, _) => usize::from(roles.master.is_some()),
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
            View::Primary(_, roles, _) => roles
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
            (View::Cluster(..), Place::Slot(_)) => "CLUSTERDOWN Hash slot not served",
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
