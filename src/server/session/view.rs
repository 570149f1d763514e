//! Where a request goes: the routing snapshot one batch of requests is routed with.

use std::sync::Arc;

use arc_swap::Guard;

use super::super::Router;
use crate::backend::Node;
use crate::cluster::{Cluster, Topology};
use crate::command::{Request, Spec};
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
    /// Any backend: the request has no key.
    Any,
}

/// The routing state a batch of requests is routed with, loaded once per batch.
pub(super) enum View<'a> {
    Cluster(&'a Arc<Cluster>, Guard<Arc<Topology>>),
    Shards(Guard<Arc<Table>>),
}

impl<'a> View<'a> {
    pub(super) fn of(router: &'a Router) -> View<'a> {
        match router {
            Router::Cluster(cluster) => View::Cluster(cluster, cluster.topology()),
            Router::Shards(shards) => View::Shards(shards.table()),
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
        }
    }

    /// How many masters (servers in service) a request for every node goes to.
    pub(super) fn node_count(&self) -> usize {
        match self {
            View::Cluster(_, topology) => topology.nodes().len(),
            View::Shards(table) => table.in_service().count(),
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
        }
    }

    /// Asks for a new cluster topology (a slot had no owner).
    pub(super) fn request_refresh(&self) {
        if let View::Cluster(cluster, _) = self {
            cluster.request_refresh();
        }
    }

    /// The error for a command whose keys must live together but do not.
    pub(super) fn cross_error(&self, command: String) -> String {
        match self {
            View::Cluster(..) => format!(
                "CROSSSLOT Keys in request don't hash to the same slot ({command} needs all its keys in one slot; a hash tag such as {{user1}} in each key keeps them together)"
            ),
            View::Shards(_) => format!(
                "CROSSSLOT the keys of this {command} live on different servers of the pool (only MGET, MSET, DEL, UNLINK, EXISTS and TOUCH are split across servers; a hash_tag keeps keys together)"
            ),
        }
    }
}
