//! Sharded pools: independent Redis servers, each key placed exactly where twemproxy would place it.

use std::sync::Arc;
use std::time::Duration;

use crate::backend::{self, Node};
use crate::config::{join_host_port, PoolConfig, Sharding};
use crate::route::Hash;

/// The servers of a sharded pool and how keys are placed on them.
pub struct Shards {
    sharding: Sharding,
    /// In config order, like the distribution's server indexes.
    nodes: Vec<Arc<Node>>,
}

impl Shards {
    /// Starts connections to every server. The config must have been validated.
    pub fn start(config: &PoolConfig) -> Result<Arc<Shards>, String> {
        let sharding = config
            .sharding()
            .map_err(|(field, e)| format!("{field}: {e}"))?;
        let settings = backend::Settings::new(
            config.server_connections,
            Duration::from_millis(config.connect_timeout),
        )
        .with_login(config.redis_auth.as_deref(), config.redis_db);
        let nodes = sharding
            .servers
            .iter()
            .map(|s| {
                let addr = join_host_port(&s.address, s.port.unwrap_or(0));
                Node::spawn(Arc::from(addr), &settings)
            })
            .collect();
        Ok(Arc::new(Shards { sharding, nodes }))
    }

    /// Index of the server that holds `key`.
    pub fn server_for_key(&self, key: &[u8]) -> usize {
        let s = &self.sharding;
        s.distribution.server_for_key(s.hash, s.hash_tag, key)
    }

    pub fn node(&self, index: usize) -> Option<&Arc<Node>> {
        self.nodes.get(index)
    }

    pub fn nodes(&self) -> &[Arc<Node>] {
        &self.nodes
    }

    pub fn hash(&self) -> Hash {
        self.sharding.hash
    }

    pub fn distribution(&self) -> crate::route::DistributionKind {
        self.sharding.distribution.kind()
    }
}
