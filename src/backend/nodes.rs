//! The nodes a pool holds connections to, by address: opened on first use, shared by every session,
//! and dropped (their connections closing once drained) when the pool no longer needs them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::{Node, Settings};

pub struct Nodes {
    settings: Settings,
    nodes: Mutex<HashMap<Arc<str>, Arc<Node>>>,
}

impl Nodes {
    pub fn new(settings: Settings) -> Nodes {
        Nodes {
            settings,
            nodes: Mutex::new(HashMap::new()),
        }
    }

    /// How connections to a new node are set up.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The node at `addr`, connecting to it if there is none yet.
    pub fn get(&self, addr: &str) -> Arc<Node> {
        let mut nodes = self.lock();
        if let Some(node) = nodes.get(addr) {
            return node.clone();
        }
        let addr: Arc<str> = Arc::from(addr);
        let node = Node::spawn(addr.clone(), &self.settings);
        nodes.insert(addr, node.clone());
        node
    }

    /// Keeps the nodes at `addrs` (connecting to those there are none for yet) and drops the rest.
    pub fn keep_only<'a>(&self, addrs: impl IntoIterator<Item = &'a str>) -> Vec<Arc<Node>> {
        let mut nodes = self.lock();
        let kept: Vec<Arc<Node>> = addrs
            .into_iter()
            .map(|addr| match nodes.get(addr) {
                Some(node) => node.clone(),
                None => Node::spawn(Arc::from(addr), &self.settings),
            })
            .collect();
        *nodes = kept.iter().map(|n| (n.addr().clone(), n.clone())).collect();
        kept
    }

    /// Drops the node at `addr`: nothing new is sent to it through this map.
    pub fn forget(&self, addr: &str) {
        self.lock().remove(addr);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Arc<Node>>> {
        self.nodes.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
