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
pub use scan::{ReplyScanner, DEFAULT_MAX_REPLY, TOO_LONG as REPLY_TOO_LONG};

/// A stream the proxy cannot resynchronise on: the connection has to close after the client is told why.
/// In Redis's words, with the byte found where another was expected (`expected '$', got 'f'`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub &'static str, pub Option<u8>);

impl ProtocolError {
    pub const fn new(what: &'static str) -> ProtocolError {
        ProtocolError(what, None)
    }

    /// `what`, and the byte found instead.
    pub const fn got(what: &'static str, found: u8) -> ProtocolError {
        ProtocolError(what, Some(found))
    }
}

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Protocol error: {}", self.0)?;
        match self.1 {
            Some(found) => write!(f, ", got '{}'", char::from(found).escape_default()),
            None => Ok(()),
        }
    }
}

impl std::error::Error for ProtocolError {}
