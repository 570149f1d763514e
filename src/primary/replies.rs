//! Reading the replies that say who is master: `ROLE`, and the sentinels' `GET-MASTER-ADDR-BY-NAME`,
//! `REPLICAS` and failover announcements.

use redis_protocol::resp2::types::OwnedFrame;

use crate::config::join_host_port;

/// What a server says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Master,
    /// A replica; `linked` when its link to its master is up (state `connected`).
    Replica {
        linked: bool,
    },
    /// A sentinel, or anything else: never a backend.
    Other,
}

fn decode(reply: &[u8]) -> Result<OwnedFrame, String> {
    match redis_protocol::resp2::decode::decode(reply) {
        Ok(Some((OwnedFrame::Error(e), _))) => Err(e),
        Ok(Some((frame, _))) => Ok(frame),
        Ok(None) => Err("incomplete reply".into()),
        Err(e) => Err(format!("undecodable reply: {e:?}")),
    }
}

fn text(frame: &OwnedFrame) -> Option<String> {
    match frame {
        OwnedFrame::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        OwnedFrame::SimpleString(s) => Some(String::from_utf8_lossy(s).into_owned()),
        OwnedFrame::Integer(i) => Some(i.to_string()),
        _ => None,
    }
}

/// Parses a `ROLE` reply: `[master, offset, replicas]` or `[slave, ip, port, state, offset]`.
pub fn role(reply: &[u8]) -> Result<Role, String> {
    role_parts(reply).map(|(role, _)| role)
}

/// The replication offset in a `ROLE` reply too: a master's own, or how far a replica has
/// processed its master's stream.
pub fn role_offset(reply: &[u8]) -> Result<(Role, i64), String> {
    let (role, parts) = role_parts(reply)?;
    let at = match role {
        Role::Master => 1,
        Role::Replica { .. } => 4,
        Role::Other => return Err("not a Redis server".into()),
    };
    match parts.get(at) {
        Some(OwnedFrame::Integer(offset)) => Ok((role, *offset)),
        _ => Err("ROLE reply without an offset".into()),
    }
}

/// The role a `ROLE` reply names, and the reply's parts.
fn role_parts(reply: &[u8]) -> Result<(Role, Vec<OwnedFrame>), String> {
    let OwnedFrame::Array(parts) = decode(reply)? else {
        return Err("ROLE reply is not an array".into());
    };
    let role = match parts.first().and_then(text).as_deref() {
        Some("master") => Role::Master,
        Some("slave") | Some("replica") => Role::Replica {
            linked: parts.get(3).and_then(text).as_deref() == Some("connected"),
        },
        Some(_) => Role::Other,
        None => return Err("ROLE reply without a role".into()),
    };
    Ok((role, parts))
}

/// Parses `SENTINEL GET-MASTER-ADDR-BY-NAME`: the master's `host:port`, or None when the sentinel does
/// not monitor that name.
pub fn master_addr(reply: &[u8]) -> Result<Option<String>, String> {
    match decode(reply)? {
        OwnedFrame::Null => Ok(None),
        OwnedFrame::Array(parts) => {
            match (parts.first().and_then(text), parts.get(1).and_then(text)) {
                (Some(host), Some(port)) => port
                    .parse::<u16>()
                    .map(|port| Some(join_host_port(&host, port)))
                    .map_err(|_| format!("bad port {port:?}")),
                _ => Ok(None),
            }
        }
        _ => Err("GET-MASTER-ADDR-BY-NAME reply is not an array".into()),
    }
}

/// Parses `SENTINEL REPLICAS`: the replicas the sentinel does not consider down, as `host:port`.
pub fn replicas(reply: &[u8]) -> Result<Vec<String>, String> {
    let OwnedFrame::Array(replicas) = decode(reply)? else {
        return Err("REPLICAS reply is not an array".into());
    };
    let mut addrs = Vec::new();
    for replica in replicas {
        let OwnedFrame::Array(fields) = replica else {
            continue;
        };
        let field = |name: &str| {
            fields
                .chunks(2)
                .find(|kv| kv.first().and_then(text).as_deref() == Some(name))
                .and_then(|kv| kv.get(1).and_then(text))
        };
        let down = field("flags").is_some_and(|flags| {
            flags
                .split(',')
                .any(|f| matches!(f, "s_down" | "o_down" | "disconnected"))
        });
        if let (false, Some(ip), Some(port)) = (down, field("ip"), field("port")) {
            if let Ok(port) = port.parse::<u16>() {
                addrs.push(join_host_port(&ip, port));
            }
        }
    }
    Ok(addrs)
}

/// What a sentinel announces about one master's failover (see [`sentinel_event`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `+selected-slave` / `+failover-state-send-slaveof-noone`: this replica is about to be promoted.
    Promoting(String),
    /// `-failover-abort-*`: the failover ended with the old master still master.
    Aborted,
    /// `+switch-master`: the new master's address.
    Switched(String),
}

/// The channels a sentinel announces [`Event`]s on.
pub const EVENT_CHANNELS: [&[u8]; 3] = [
    b"+switch-master",
    b"+selected-slave",
    b"+failover-state-send-slaveof-noone",
];
/// The pattern of the abort channels (`-failover-abort-not-elected`, `-no-good-slave`, ...).
pub const ABORT_PATTERN: &[u8] = b"-failover-abort-*";

/// The failover event a sentinel's `message` or `pmessage` frame announces for `master_name`; None
/// for other frames and other masters. Payloads: `+switch-master` is `name old-ip old-port new-ip
/// new-port`; a replica's events `slave ip:port ip port @ name master-ip master-port`; a master's
/// `master name ip port`.
pub fn sentinel_event(frame: &OwnedFrame, master_name: &str) -> Option<Event> {
    let OwnedFrame::Array(parts) = frame else {
        return None;
    };
    let (channel, payload) = match parts.first().and_then(text)?.as_str() {
        "message" => (parts.get(1).and_then(text)?, parts.get(2).and_then(text)?),
        "pmessage" => (parts.get(2).and_then(text)?, parts.get(3).and_then(text)?),
        _ => return None,
    };
    let words: Vec<&str> = payload.split(' ').collect();
    let addr = |ip: &str, port: &str| port.parse::<u16>().ok().map(|p| join_host_port(ip, p));
    match (channel.as_str(), words.as_slice()) {
        ("+switch-master", [name, _, _, ip, port]) if *name == master_name => {
            addr(ip, port).map(Event::Switched)
        }
        (
            "+selected-slave" | "+failover-state-send-slaveof-noone",
            ["slave", _, ip, port, "@", name, ..],
        ) if *name == master_name => addr(ip, port).map(Event::Promoting),
        (abort, ["master", name, ..])
            if abort.starts_with("-failover-abort-") && *name == master_name =>
        {
            Some(Event::Aborted)
        }
        _ => None,
    }
}

/// The master most sentinels name: the answer of more than half of those that answered (a sentinel
/// that does not know the master counts, and votes for nobody). None without such a majority.
pub fn agreed(answers: &[Option<String>]) -> Option<String> {
    let mut best: Option<(&String, usize)> = None;
    for addr in answers.iter().flatten() {
        let votes = answers.iter().filter(|a| a.as_ref() == Some(addr)).count();
        if best.is_none_or(|(_, v)| votes > v) {
            best = Some((addr, votes));
        }
    }
    best.filter(|(_, votes)| votes * 2 > answers.len())
        .map(|(addr, _)| addr.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles() {
        let master = b"*3\r\n$6\r\nmaster\r\n:3129659\r\n*1\r\n*3\r\n$9\r\n127.0.0.1\r\n$4\r\n9001\r\n$7\r\n3129242\r\n";
        assert_eq!(role(master), Ok(Role::Master));
        let replica =
            b"*5\r\n$5\r\nslave\r\n$9\r\n127.0.0.1\r\n:9000\r\n$9\r\nconnected\r\n:3167038\r\n";
        assert_eq!(role(replica), Ok(Role::Replica { linked: true }));
        let syncing = b"*5\r\n$5\r\nslave\r\n$9\r\n127.0.0.1\r\n:9000\r\n$7\r\nconnect\r\n:-1\r\n";
        assert_eq!(role(syncing), Ok(Role::Replica { linked: false }));
        let sentinel = b"*2\r\n$8\r\nsentinel\r\n*1\r\n$6\r\nmymast\r\n";
        assert_eq!(role(sentinel), Ok(Role::Other));
        assert!(role(b"-NOAUTH Authentication required.\r\n").is_err());
        assert!(role(b"+OK\r\n").is_err());
        assert!(role(b"*0\r\n").is_err());
    }

    #[test]
    fn sentinel_master_addr() {
        let reply = b"*2\r\n$8\r\n10.0.0.7\r\n$4\r\n6379\r\n";
        assert_eq!(master_addr(reply), Ok(Some("10.0.0.7:6379".into())));
        assert_eq!(master_addr(b"*-1\r\n"), Ok(None));
        assert_eq!(master_addr(b"$-1\r\n"), Ok(None));
        assert!(master_addr(b"*2\r\n$3\r\nfoo\r\n$3\r\nbar\r\n").is_err());
        let v6 = b"*2\r\n$3\r\n::1\r\n$4\r\n6379\r\n";
        assert_eq!(master_addr(v6), Ok(Some("[::1]:6379".into())));
    }

    #[test]
    fn sentinel_replicas_skip_the_down_ones() {
        let entry = |ip: &str, flags: &str| {
            format!(
                "*6\r\n$2\r\nip\r\n${}\r\n{ip}\r\n$4\r\nport\r\n$4\r\n6380\r\n$5\r\nflags\r\n${}\r\n{flags}\r\n",
                ip.len(),
                flags.len()
            )
        };
        let reply = format!(
            "*3\r\n{}{}{}",
            entry("10.0.0.1", "slave"),
            entry("10.0.0.2", "s_down,slave"),
            entry("10.0.0.3", "slave,disconnected")
        );
        assert_eq!(replicas(reply.as_bytes()), Ok(vec!["10.0.0.1:6380".into()]));
    }

    #[test]
    fn failover_events() {
        let msg = |kind: &str, channel: &str, payload: &str| {
            let mut parts = vec![OwnedFrame::BulkString(kind.into())];
            if kind == "pmessage" {
                parts.push(OwnedFrame::BulkString("-failover-abort-*".into()));
            }
            parts.push(OwnedFrame::BulkString(channel.into()));
            parts.push(OwnedFrame::BulkString(payload.into()));
            OwnedFrame::Array(parts)
        };
        let m = msg(
            "message",
            "+switch-master",
            "mymaster 10.0.0.1 6379 10.0.0.2 6379",
        );
        assert_eq!(
            sentinel_event(&m, "mymaster"),
            Some(Event::Switched("10.0.0.2:6379".into()))
        );
        assert_eq!(sentinel_event(&m, "other"), None);
        let sub = msg("subscribe", "+switch-master", "1");
        assert_eq!(sentinel_event(&sub, "mymaster"), None);
        let short = msg("message", "+switch-master", "mymaster 10.0.0.2");
        assert_eq!(sentinel_event(&short, "mymaster"), None);
        let replica = "slave 10.0.0.3:6380 10.0.0.3 6380 @ mymaster 10.0.0.1 6379";
        for channel in ["+selected-slave", "+failover-state-send-slaveof-noone"] {
            assert_eq!(
                sentinel_event(&msg("message", channel, replica), "mymaster"),
                Some(Event::Promoting("10.0.0.3:6380".into()))
            );
            assert_eq!(
                sentinel_event(&msg("message", channel, replica), "other"),
                None
            );
        }
        let abort = msg(
            "pmessage",
            "-failover-abort-not-elected",
            "master mymaster 10.0.0.1 6379",
        );
        assert_eq!(sentinel_event(&abort, "mymaster"), Some(Event::Aborted));
        assert_eq!(sentinel_event(&abort, "other"), None);
    }

    #[test]
    fn role_offsets() {
        let master = b"*3\r\n$6\r\nmaster\r\n:3129659\r\n*0\r\n";
        assert_eq!(role_offset(master), Ok((Role::Master, 3129659)));
        let replica =
            b"*5\r\n$5\r\nslave\r\n$9\r\n127.0.0.1\r\n:9000\r\n$9\r\nconnected\r\n:3167038\r\n";
        assert_eq!(
            role_offset(replica),
            Ok((Role::Replica { linked: true }, 3167038))
        );
        assert!(role_offset(b"*1\r\n$6\r\nmaster\r\n").is_err());
    }

    #[test]
    fn a_majority_of_the_sentinels_that_answered_decides() {
        let a = || Some("a:1".to_string());
        let b = || Some("b:1".to_string());
        assert_eq!(agreed(&[a(), a(), b()]), a());
        assert_eq!(agreed(&[a(), b()]), None);
        assert_eq!(agreed(&[a()]), a());
        assert_eq!(agreed(&[a(), None]), None);
        assert_eq!(agreed(&[a(), a(), None]), a());
        assert_eq!(agreed(&[]), None);
    }
}
