//! RESP on the wire: cutting requests and replies out of a byte stream, and writing the replies slotline
//! makes itself.
//!
//! The data path never builds a frame tree: [`RequestParser`] records where each argument lies in the
//! client's buffer and [`ReplyScanner`] only measures how long a backend reply is, so both can hand out
//! `split_to(n).freeze()` slices that are forwarded without a copy. (An inline command, typed by a
//! human, is the exception: it is re-encoded as a RESP array.) What is forwarded as it came must be
//! read exactly as Redis reads it, or a backend would drop a connection other clients share. Both
//! resume where they stopped, so a large frame arriving in many reads is scanned once. The full decoder of the `redis-protocol` crate is
//! used off the data path (topology replies) and as the reference the fuzzers compare against.

mod reply;
mod request;
mod scan;

pub use reply::Reply;
pub use request::{parse_int, Limits, RequestParser};
pub use scan::{ReplyScanner, DEFAULT_MAX_REPLY};

/// A stream the proxy cannot resynchronise on: the connection has to close after the client is told why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Protocol error: {0}")]
pub struct ProtocolError(pub &'static str);
