//! Where a key goes. `slot` maps keys to Redis Cluster hash slots; `hash`, `distribution` and
//! `server_line` place keys on a sharded pool exactly as twemproxy does.

pub mod distribution;
pub mod hash;
pub mod server_line;
pub mod slot;

pub use distribution::{
    Distribution, DistributionError, DistributionKind, ServerSpec, UnknownDistribution,
};
pub use hash::{hash_tag, Hash, UnknownHash};
pub use server_line::{ServerLine, ServerLineError};
pub use slot::{key_slot, Slot, SLOTS};

/// A number no earlier routing snapshot (cluster topology, sharded table, primary roles) has: a
/// session that sent requests under one snapshot lets later ones wait for them before it routes by
/// another, so that none overtakes an earlier one being redirected.
pub fn next_generation() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}
