//! Where a key goes. `slot` maps keys to Redis Cluster hash slots; `hash` has twemproxy's key hashes,
//! and its distributions (ketama, modula, random) will live beside them.

pub mod hash;
pub mod slot;

pub use hash::{hash_tag, Hash, UnknownHash};
pub use slot::{key_slot, Slot, SLOTS};
