//! What a sharded pool routes with. [`Members`]: the servers discovery listed last, each with its node,
//! ejected or not. [`Table`]: the ring over those in service, which sessions load once per batch. Both
//! immutable, built off the data path.

use std::collections::HashMap;
use std::sync::Arc;

use crate::backend::Node;
use crate::discovery::Endpoint;
use crate::route::{Distribution, DistributionError, DistributionKind, Hash, ServerSpec};

/// The servers of a pool at one moment, in the order of the endpoint set they were built from (the
/// distribution's server indexes).
pub struct Members {
    /// twemproxy's name for each server: what the ring hashes.
    names: Vec<Arc<str>>,
    nodes: Vec<Arc<Node>>,
    /// Every server, ejected or not; `None` when there is none.
    full: Option<Distribution>,
}

impl Members {
    pub fn empty() -> Members {
        Members {
            names: Vec::new(),
            nodes: Vec::new(),
            full: None,
        }
    }

    /// The members for `endpoints`. Servers whose name and address are unchanged keep their node (and
    /// its connections); a server at a new address gets a new node from `spawn`. Nodes of servers that
    /// left go with `previous`: their connections close once the requests already on them are answered.
    pub fn build(
        kind: DistributionKind,
        endpoints: &[Endpoint],
        previous: &Members,
        mut spawn: impl FnMut(&Arc<str>) -> Arc<Node>,
    ) -> Result<Members, DistributionError> {
        if endpoints.is_empty() {
            return Ok(Members::empty());
        }
        let specs: Vec<ServerSpec> = endpoints
            .iter()
            .map(|e| ServerSpec {
                name: e.name.to_string(),
                weight: e.weight,
            })
            .collect();
        let full = Distribution::new(kind, &specs)?;
        let reusable: HashMap<(&str, &str), &Arc<Node>> = previous
            .servers()
            .map(|(name, node)| ((name, &**node.addr()), node))
            .collect();
        let nodes = endpoints
            .iter()
            .map(|e| match reusable.get(&(&*e.name, &*e.addr)) {
                Some(node) => Arc::clone(node),
                None => spawn(&e.addr),
            })
            .collect();
        Ok(Members {
            names: endpoints.iter().map(|e| e.name.clone()).collect(),
            nodes,
            full: Some(full),
        })
    }

    /// Every server with its name.
    pub fn servers(&self) -> impl Iterator<Item = (&str, &Arc<Node>)> {
        self.names.iter().map(|n| &**n).zip(&self.nodes)
    }

    pub fn nodes(&self) -> &[Arc<Node>] {
        &self.nodes
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The table that routes over the servers marked `live` (all when `None`). With every server
    /// ejected there is no ring to build: all are kept, so that requests fail fast at their down
    /// servers rather than nowhere.
    pub(super) fn table(
        &self,
        placement: (Hash, Option<[u8; 2]>),
        live: Option<&[bool]>,
        unavailable: &Arc<str>,
    ) -> Table {
        let ring = self.full.as_ref().map(|full| match live {
            Some(live) => full.with_live(live).unwrap_or_else(|_| full.clone()),
            None => full.clone(),
        });
        Table {
            hash: placement.0,
            hash_tag: placement.1,
            ring,
            nodes: self.nodes.clone(),
            unavailable: unavailable.clone(),
            generation: crate::route::next_generation(),
        }
    }
}

/// The placement requests are routed with.
pub struct Table {
    hash: Hash,
    hash_tag: Option<[u8; 2]>,
    /// The ring over the servers in service (all of them unless some are ejected); `None` without
    /// servers.
    ring: Option<Distribution>,
    nodes: Vec<Arc<Node>>,
    /// Why no server can take a request, when the pool has none.
    unavailable: Arc<str>,
    /// New with every table (see [`crate::route::next_generation`]).
    generation: u64,
}

impl Table {
    /// A table without servers: every request fails, saying `unavailable`.
    pub(super) fn empty(placement: (Hash, Option<[u8; 2]>), unavailable: &Arc<str>) -> Table {
        Members::empty().table(placement, None, unavailable)
    }

    /// Index of the server that holds `key` (no server has index 0 in an empty table, so
    /// [`node`](Self::node) answers None).
    pub fn server_for_key(&self, key: &[u8]) -> usize {
        self.ring
            .as_ref()
            .map_or(0, |ring| ring.server_for_key(self.hash, self.hash_tag, key))
    }

    /// Identifies this placement among all routing snapshots.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn node(&self, index: usize) -> Option<&Arc<Node>> {
        self.nodes.get(index)
    }

    /// A server in service for a request without a key; a client always gets the same one.
    pub fn any_node(&self, pick: usize) -> Option<&Arc<Node>> {
        let count = self.in_service().count();
        self.in_service()
            .nth(pick % count.max(1))
            .or_else(|| self.nodes.get(pick % self.nodes.len().max(1)))
    }

    /// The servers on the ring (all but the ejected ones), in the members' order.
    pub fn in_service(&self) -> impl Iterator<Item = &Arc<Node>> {
        let live = self.ring.as_ref().map_or(&[][..], |r| r.live());
        self.nodes
            .iter()
            .zip(live)
            .filter(|(_, &live)| live)
            .map(|(node, _)| node)
    }

    /// What a client is told when no server can take its request.
    pub fn unavailable(&self) -> &str {
        &self.unavailable
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Settings;
    use std::time::Duration;

    fn endpoint(name: &str, addr: &str) -> Endpoint {
        Endpoint {
            name: Arc::from(name),
            addr: Arc::from(addr),
            weight: 1,
            zone: None,
        }
    }

    #[tokio::test]
    async fn nodes_are_kept_while_name_and_address_are() {
        let settings = Settings::new(1, Duration::from_millis(10));
        let spawned = std::cell::RefCell::new(Vec::new());
        let mut spawn = |addr: &Arc<str>| {
            spawned.borrow_mut().push(addr.to_string());
            Node::spawn(addr.clone(), &settings)
        };
        let kind = DistributionKind::Ketama;
        let first = [
            endpoint("redis-0", "127.0.0.2:1"),
            endpoint("redis-1", "127.0.0.3:1"),
        ];
        let a = Members::build(kind, &first, &Members::empty(), &mut spawn).unwrap();
        let moved = [
            endpoint("redis-0", "127.0.0.5:1"),
            endpoint("redis-1", "127.0.0.3:1"),
        ];
        let b = Members::build(kind, &moved, &a, &mut spawn).unwrap();
        assert!(
            Arc::ptr_eq(&a.nodes()[1], &b.nodes()[1]),
            "redis-1 kept its node"
        );
        assert_eq!(&**b.nodes()[0].addr(), "127.0.0.5:1");
        assert_eq!(
            *spawned.borrow(),
            ["127.0.0.2:1", "127.0.0.3:1", "127.0.0.5:1"]
        );
        // The ring is keyed by name: the move changes no key's server.
        let none: Arc<str> = Arc::from("none");
        let placement = (Hash::Fnv1a_64, None);
        let (ta, tb) = (
            a.table(placement, None, &none),
            b.table(placement, None, &none),
        );
        for key in ["a", "foo", "user:1000", "bar", "baz"] {
            assert_eq!(
                ta.server_for_key(key.as_bytes()),
                tb.server_for_key(key.as_bytes())
            );
        }
        let empty = Members::build(kind, &[], &b, |_| unreachable!()).unwrap();
        let table = empty.table(placement, None, &none);
        assert!(table.node(table.server_for_key(b"k")).is_none());
        assert!(table.any_node(7).is_none());
        assert_eq!(table.unavailable(), "none");
    }
}
