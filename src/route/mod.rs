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
