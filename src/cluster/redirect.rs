//! Classifying a node's error reply into what the proxy should do with the request.

use crate::route::Slot;

/// An error reply that means "not here" or "not now" rather than a failure of the command.
#[derive(Debug, PartialEq, Eq)]
pub enum Redirect<'a> {
    /// The slot lives at `addr` now: resend there and refresh the topology.
    Moved { slot: Slot, addr: &'a str },
    /// The slot is being migrated and this key may be at `addr`: resend there once, after `ASKING`.
    Ask { slot: Slot, addr: &'a str },
    /// TRYAGAIN or CLUSTERDOWN: resend after a pause.
    Retry,
}

/// `-MOVED 3999 127.0.0.1:6381`, `-ASK 3999 host:port`, `-TRYAGAIN ...`, `-CLUSTERDOWN ...`.
/// An endpoint with an empty or `?` host means the same host as the node that replied; the caller fills
/// it in.
pub fn classify(reply: &[u8]) -> Option<Redirect<'_>> {
    let line = reply.strip_prefix(b"-")?;
    let line = line.strip_suffix(b"\r\n").unwrap_or(line);
    if line.starts_with(b"TRYAGAIN") || line.starts_with(b"CLUSTERDOWN") {
        return Some(Redirect::Retry);
    }
    let (moved, rest) = if let Some(rest) = line.strip_prefix(b"MOVED ") {
        (true, rest)
    } else {
        (false, line.strip_prefix(b"ASK ")?)
    };
    let rest = std::str::from_utf8(rest).ok()?;
    let (slot, addr) = rest.split_once(' ')?;
    let slot = Slot::new(slot.parse().ok()?)?;
    Some(if moved {
        Redirect::Moved { slot, addr }
    } else {
        Redirect::Ask { slot, addr }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_cluster_errors() {
        let slot = Slot::new(3999).unwrap();
        assert_eq!(
            classify(b"-MOVED 3999 127.0.0.1:6381\r\n"),
            Some(Redirect::Moved {
                slot,
                addr: "127.0.0.1:6381"
            })
        );
        assert_eq!(
            classify(b"-ASK 3999 node-2.redis:6379\r\n"),
            Some(Redirect::Ask {
                slot,
                addr: "node-2.redis:6379"
            })
        );
        assert_eq!(
            classify(b"-TRYAGAIN Multiple keys request during rehashing of slot\r\n"),
            Some(Redirect::Retry)
        );
        assert_eq!(
            classify(b"-CLUSTERDOWN The cluster is down\r\n"),
            Some(Redirect::Retry)
        );
        assert_eq!(classify(b"-ERR wrong type\r\n"), None);
        assert_eq!(classify(b"-MOVED 99999 h:1\r\n"), None);
        assert_eq!(classify(b"+OK\r\n"), None);
    }
}
