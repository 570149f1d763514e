//! A migrating pool's settings (`migrate:`): the placement its data is moving away from. The pool's
//! own settings are where the data goes (a cluster, or a ring); `from` is where it was.

use serde::Deserialize;

use super::{Mode, PoolConfig};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrateConfig {
    /// The old placement, as a sharded pool's settings (those of a nutcracker.yml pool).
    pub from: FromPlacement,
    /// Keys the background mover moves per second at most (0: no background mover; keys then move
    /// only as clients touch them).
    #[serde(default = "rate")]
    pub rate: u64,
    /// Keys per SCAN and MIGRATE of the background mover.
    #[serde(default = "batch")]
    pub batch: usize,
    /// Whether this slotline starts moving by itself (`auto`) or serves from the old placement,
    /// verifying, until told to start (`manual`: `slotline migrate start`).
    #[serde(default)]
    pub start: Start,
    /// The fraction of reads whose key is also looked for on the other side (0 to 1): a copy
    /// there is a mismatch, counted and logged with the key.
    #[serde(default = "shadow_reads")]
    pub shadow_reads: f64,
}

/// How a migration starts (see [`MigrateConfig::start`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Start {
    #[default]
    Auto,
    Manual,
}

/// A sharded placement: the servers, hash, hash tag and distribution of a ketama, modula or random
/// pool.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FromPlacement {
    pub mode: Mode,
    pub servers: Vec<String>,
    #[serde(default)]
    pub hash: Option<String>,
    #[serde(default)]
    pub hash_tag: Option<String>,
}

fn rate() -> u64 {
    20_000
}

fn batch() -> usize {
    100
}

fn shadow_reads() -> f64 {
    0.01
}

impl MigrateConfig {
    /// The old placement as a pool of its own (the migrating pool's login and limits, `from`'s
    /// servers and hashing), to run it with.
    pub fn from_pool(&self, pool: &PoolConfig) -> PoolConfig {
        let mut old = pool.clone();
        old.mode = self.from.mode;
        old.servers.clone_from(&self.from.servers);
        old.kubernetes = None;
        old.hash.clone_from(&self.from.hash);
        old.hash_tag.clone_from(&self.from.hash_tag);
        old.distribution = None;
        old.migrate = None;
        old.auto_eject_hosts = false;
        old
    }

    /// The error names the field below `migrate.`.
    pub(super) fn validate(&self, pool: &PoolConfig) -> Result<(), (String, String)> {
        if self.from.mode.distribution().is_none() {
            return Err((
                "from.mode".into(),
                "the old placement is a sharded one: ketama, modula or random".into(),
            ));
        }
        if self.from.servers.is_empty() {
            return Err((
                "from.servers".into(),
                "at least one server is required".into(),
            ));
        }
        if pool.mode == Mode::Primary {
            return Err((
                "migrate".into(),
                "data moves into a cluster or a ring, not a primary pool".into(),
            ));
        }
        if !(0.0..=1.0).contains(&self.shadow_reads) {
            return Err((
                "shadow_reads".into(),
                "a fraction of reads, from 0 to 1".into(),
            ));
        }
        if self.batch == 0 || self.batch > 10_000 {
            return Err(("batch".into(), "must be between 1 and 10000".into()));
        }
        self.from_pool(pool)
            .sharding()
            .map(|_| ())
            .map_err(|(field, e)| (format!("from.{field}"), e))
    }
}
