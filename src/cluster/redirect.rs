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

impl<'a> Redirect<'a> {
    /// A MOVED's or ASK's slot, the endpoint it names, and whether it is an ASK; `None` for a retry.
    pub fn target(&self) -> Option<(Slot, &'a str, bool)> {
        match *self {
            Redirect::Moved { slot, addr } => Some((slot, addr, false)),
            Redirect::Ask { slot, addr } => Some((slot, addr, true)),
            Redirect::Retry => None,
        }
    }
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

/// Whether a node's `CLUSTER NODES` reply (the RESP bulk string as it came) shows `slot` migrating
/// from that node (`myself`) to the node at `addr` (its `ip:port`, or its announced host name and
/// port): an ASK only that node could have meant.
pub fn migrating_to(nodes_reply: &[u8], slot: Slot, addr: &str) -> bool {
    let Some(text) = bulk_text(nodes_reply) else {
        return false;
    };
    let lines: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let migrating = format!("[{}->-", slot.get());
    let target = lines
        .iter()
        .find(|f| {
            f.get(2)
                .is_some_and(|flags| flags.split(',').any(|x| x == "myself"))
        })
        .and_then(|myself| {
            myself.iter().skip(8).find_map(|f| {
                f.strip_prefix(migrating.as_str())
                    .and_then(|id| id.strip_suffix(']'))
            })
        });
    let Some(target) = target else {
        return false;
    };
    lines
        .iter()
        .filter(|f| f.first() == Some(&target))
        .filter_map(|f| f.get(1))
        .any(|endpoint| {
            // ip:port@cport[,hostname]
            let (ip_port, hostname) = endpoint.split_once(',').unwrap_or((endpoint, ""));
            let ip_port = ip_port.split('@').next().unwrap_or("");
            let port = ip_port.rsplit_once(':').map_or("", |(_, p)| p);
            addr == ip_port || (!hostname.is_empty() && addr == format!("{hostname}:{port}"))
        })
}

/// The text of a RESP bulk string reply (`$n\r\n...\r\n`).
fn bulk_text(reply: &[u8]) -> Option<&str> {
    let rest = reply.strip_prefix(b"$")?;
    let end = rest.iter().position(|&b| b == b'\r')?;
    let len: usize = std::str::from_utf8(&rest[..end]).ok()?.parse().ok()?;
    let body = rest.get(end + 2..end + 2 + len)?;
    std::str::from_utf8(body).ok()
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

    fn bulk(text: &str) -> Vec<u8> {
        format!("${}\r\n{text}\r\n", text.len()).into_bytes()
    }

    #[test]
    fn an_ask_is_confirmed_only_by_the_migration_the_node_itself_lists() {
        let slot = Slot::new(4713).unwrap();
        let nodes = "a1 127.0.0.1:7001@17001,node1.test myself,master - 0 0 1 connected 0-5460 \
                     [4713->-b2]\nb2 127.0.0.1:7002@17002,node2.test master - 0 0 2 connected 5461-10922\n";
        assert!(migrating_to(&bulk(nodes), slot, "127.0.0.1:7002"));
        assert!(migrating_to(&bulk(nodes), slot, "node2.test:7002"));
        assert!(
            !migrating_to(&bulk(nodes), slot, "127.0.0.1:7003"),
            "another node"
        );
        assert!(!migrating_to(
            &bulk(nodes),
            Slot::new(4714).unwrap(),
            "127.0.0.1:7002"
        ));
        // Importing, not migrating; and a migration some other node lists.
        let importing = nodes.replace("[4713->-b2]", "[4713-<-b2]");
        assert!(!migrating_to(&bulk(&importing), slot, "127.0.0.1:7002"));
        let elsewhere = nodes
            .replace(" [4713->-b2]", "")
            .replace("5461-10922", "5461-10922 [4713->-b2]");
        assert!(!migrating_to(&bulk(&elsewhere), slot, "127.0.0.1:7002"));
        assert!(!migrating_to(b"-ERR no\r\n", slot, "127.0.0.1:7002"));
        assert!(!migrating_to(b"$999\r\nshort\r\n", slot, "127.0.0.1:7002"));
    }
}
