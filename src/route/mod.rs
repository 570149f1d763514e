//! Where a key goes. `slot` maps keys to Redis Cluster hash slots; the twemproxy distributions
//! (ketama, modula, random) will live beside it.

pub mod slot;

pub use slot::{key_slot, Slot, SLOTS};
