//! Reading `CLUSTER SLOTS`.

use redis_protocol::resp2::types::{OwnedFrame, Resp2Frame};

use crate::route::SLOTS;

/// The slot map as addresses, before it is bound to node connections.
#[derive(Debug, PartialEq)]
pub struct SlotMap {
    /// Master address of each slot, as an index into `masters`.
    pub slots: Vec<Option<u16>>,
    pub masters: Vec<String>,
    /// Each master's replicas (by the master's index), as the reply lists them.
    pub replicas: Vec<Vec<String>>,
    /// Every node the reply names, masters and replicas: the only addresses a redirect may lead to.
    pub nodes: Vec<String>,
}

impl SlotMap {
    pub fn covered(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }
}

/// Parses a `CLUSTER SLOTS` reply. `queried_host` stands in for nodes whose endpoint the reply leaves
/// unknown ("" or "?"), as Redis means it to.
pub fn parse(reply: &[u8], queried_host: &str) -> Result<SlotMap, String> {
    let (frame, _) = redis_protocol::resp2::decode::decode(reply)
        .map_err(|e| format!("undecodable: {e:?}"))?
        .ok_or("incomplete reply")?;
    let ranges = match frame {
        OwnedFrame::Array(ranges) => ranges,
        OwnedFrame::Error(e) => return Err(e),
        other => return Err(format!("expected an array, got {:?}", other.kind())),
    };
    let mut map = SlotMap {
        slots: vec![None; SLOTS],
        masters: Vec::new(),
        replicas: Vec::new(),
        nodes: Vec::new(),
    };
    for range in ranges {
        let OwnedFrame::Array(parts) = range else {
            return Err("slot range is not an array".into());
        };
        let (start, end) = match (parts.first(), parts.get(1)) {
            (Some(OwnedFrame::Integer(s)), Some(OwnedFrame::Integer(e))) => (*s, *e),
            _ => return Err("slot range without start and end".into()),
        };
        if start < 0 || end < start || end >= SLOTS as i64 {
            return Err(format!("invalid slot range {start}-{end}"));
        }
        let Some(OwnedFrame::Array(master)) = parts.get(2) else {
            return Err("slot range without a master".into());
        };
        let addr = endpoint(master, queried_host)?;
        let index = match map.masters.iter().position(|m| *m == addr) {
            Some(i) => i,
            None => {
                map.masters.push(addr);
                map.replicas.push(Vec::new());
                map.masters.len() - 1
            }
        };
        for slot in start..=end {
            map.slots[slot as usize] = Some(index as u16);
        }
        // The master, then its replicas (one with an unusable endpoint is left out, not the map).
        for (i, node) in parts[2..].iter().enumerate() {
            let OwnedFrame::Array(node) = node else {
                continue;
            };
            if let Ok(addr) = endpoint(node, queried_host) {
                let replicas = &mut map.replicas[index];
                if i > 0 && !replicas.contains(&addr) {
                    replicas.push(addr.clone());
                }
                if !map.nodes.contains(&addr) {
                    map.nodes.push(addr);
                }
            }
        }
    }
    Ok(map)
}

/// `host:port` of a node entry `[endpoint, port, id, {metadata}]`.
fn endpoint(node: &[OwnedFrame], queried_host: &str) -> Result<String, String> {
    let text = |f: &OwnedFrame| match f {
        OwnedFrame::BulkString(b) | OwnedFrame::SimpleString(b) => {
            Some(String::from_utf8_lossy(b).into_owned())
        }
        _ => None,
    };
    let port = match node.get(1) {
        Some(OwnedFrame::Integer(p)) if (1..=65535).contains(p) => *p,
        _ => return Err("node without a valid port".into()),
    };
    let mut host = node.first().and_then(text).unwrap_or_default();
    if host.is_empty() || host == "?" {
        // Redis 7 lists the other endpoint types as metadata pairs: prefer the IP there.
        host = match node.get(3) {
            Some(OwnedFrame::Array(meta)) => meta
                .chunks(2)
                .find(|kv| kv.first().and_then(text).as_deref() == Some("ip"))
                .and_then(|kv| kv.get(1).and_then(text))
                .unwrap_or_else(|| queried_host.to_string()),
            _ => queried_host.to_string(),
        };
    }
    if !crate::config::is_network_host(&host) {
        // Never a unix socket path or anything else a connection would read otherwise.
        return Err(format!(
            "node endpoint {host:?} is not a host name or an IP address"
        ));
    }
    Ok(crate::config::join_host_port(&host, port as u16))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_masters_and_host_names() {
        let reply = b"*2\r\n\
            *3\r\n:0\r\n:8191\r\n*4\r\n$15\r\nnode1.redis.svc\r\n:7000\r\n$2\r\nid\r\n*2\r\n$2\r\nip\r\n$9\r\n127.0.0.1\r\n\
            *4\r\n:8192\r\n:16383\r\n*3\r\n$1\r\n?\r\n:7001\r\n$2\r\nid\r\n*3\r\n$9\r\n127.0.0.1\r\n:7004\r\n$2\r\nid\r\n";
        let map = parse(reply, "10.0.0.9").unwrap();
        assert_eq!(map.masters, ["node1.redis.svc:7000", "10.0.0.9:7001"]);
        assert_eq!(
            map.nodes,
            ["node1.redis.svc:7000", "10.0.0.9:7001", "127.0.0.1:7004"]
        );
        assert_eq!(map.replicas, [vec![], vec!["127.0.0.1:7004".to_string()]]);
        assert_eq!(map.slots[0], Some(0));
        assert_eq!(map.slots[8191], Some(0));
        assert_eq!(map.slots[16383], Some(1));
        assert_eq!(map.covered(), SLOTS);
    }

    #[test]
    fn rejects_nonsense() {
        assert!(parse(b"-ERR This instance has cluster support disabled\r\n", "h").is_err());
        assert!(parse(b"*1\r\n*3\r\n:0\r\n:99999\r\n*2\r\n$1\r\na\r\n:1\r\n", "h").is_err());
        assert!(parse(b":1\r\n", "h").is_err());
        assert_eq!(parse(b"*0\r\n", "h").unwrap().covered(), 0);
        // A node announced as a path would be a unix socket connection.
        assert!(parse(
            b"*1\r\n*3\r\n:0\r\n:1\r\n*2\r\n$12\r\n/tmp/r.sock \r\n:1\r\n",
            "h"
        )
        .is_err());
        assert!(parse(
            b"*1\r\n*3\r\n:0\r\n:1\r\n*2\r\n$9\r\n/tmp/r.so\r\n:1\r\n",
            "h"
        )
        .is_err());
    }
}
