//! twemproxy's server lines, `host:port:weight [name]` or `/unix/socket:weight [name]`, and the name
//! each server has on the ketama ring.

use super::distribution::ServerSpec;

/// One entry of a twemproxy pool's `servers:` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLine {
    /// Host name or IP address (an IPv6 address without brackets), or a unix socket path.
    pub address: String,
    /// `None` for a unix socket.
    pub port: Option<u16>,
    pub weight: u32,
    /// The optional name after the space.
    pub name: Option<String>,
    ring_name: String,
}

/// Why a server line was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerLineError {
    #[error("{0:?} is not \"host:port:weight [name]\" or \"/path/to/socket:weight [name]\"")]
    Format(String),
    #[error("{0:?} has an invalid port (1 to 65535)")]
    Port(String),
    #[error("{0:?} has an invalid weight (a whole number, at least 1)")]
    Weight(String),
}

impl ServerLine {
    /// Parses a line the way twemproxy does: from the end, so the name is after the last space, the
    /// weight after the last colon before it and the port after the colon before that, and an IPv6
    /// address keeps its colons. Stricter than twemproxy only where it would accept nonsense (an empty
    /// address or name, a NUL byte).
    ///
    /// ```
    /// use slotline::route::ServerLine;
    /// let line = ServerLine::parse("10.0.0.1:6379:2 shard-a").unwrap();
    /// assert_eq!((line.address.as_str(), line.port, line.weight), ("10.0.0.1", Some(6379), 2));
    /// assert_eq!(line.ring_name(), "shard-a");
    /// assert_eq!(ServerLine::parse("10.0.0.1:6379:1").unwrap().ring_name(), "10.0.0.1:6379");
    /// ```
    pub fn parse(line: &str) -> Result<ServerLine, ServerLineError> {
        let format = || ServerLineError::Format(line.to_string());
        if line.contains('\0') {
            return Err(format());
        }
        let (spec, name) = match line.rsplit_once(' ') {
            Some((spec, name)) if !name.is_empty() => (spec, Some(name)),
            Some(_) => return Err(format()),
            None => (line, None),
        };
        let (rest, weight) = spec.rsplit_once(':').ok_or_else(format)?;
        let weight = c_number(weight)
            .filter(|&w| w > 0)
            .ok_or_else(|| ServerLineError::Weight(line.to_string()))?;
        let (address, port, hashed_len) = if line.starts_with('/') {
            // twemproxy finds a third colon in a socket path and rejects the line.
            if rest.contains(':') {
                return Err(format());
            }
            // Unnamed, it hashes the path *with* the colon that follows it: its name is the address
            // plus one separator plus an empty port.
            (rest, None, rest.len() + 1)
        } else {
            let (host, port_text) = rest.rsplit_once(':').ok_or_else(format)?;
            let port = c_number(port_text)
                .and_then(|p| u16::try_from(p).ok())
                .filter(|&p| p > 0)
                .ok_or_else(|| ServerLineError::Port(line.to_string()))?;
            // libmemcached compatibility: the default memcached port is left out of the name.
            let hashed_len = if port == 11211 {
                host.len()
            } else {
                rest.len()
            };
            (host, Some(port), hashed_len)
        };
        if address.is_empty() {
            return Err(format());
        }
        let ring_name = name.unwrap_or(&line[..hashed_len]).to_string();
        Ok(ServerLine {
            address: address.to_string(),
            port,
            weight,
            name: name.map(str::to_string),
            ring_name,
        })
    }

    /// The string twemproxy hashes for this server on the ketama ring, and sorts its servers by:
    /// the name when given, else `host:port` as written (`host` alone for port 11211).
    pub fn ring_name(&self) -> &str {
        &self.ring_name
    }

    /// The server as a distribution sees it.
    pub fn spec(&self) -> ServerSpec {
        ServerSpec {
            name: self.ring_name.clone(),
            weight: self.weight,
        }
    }
}

/// twemproxy's `nc_atoi`: ASCII digits only, at least one, within a C `int`.
fn c_number(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u32>()
        .ok()
        .filter(|&n| i32::try_from(n).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(line: &str) -> ServerLine {
        ServerLine::parse(line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }

    #[test]
    fn addresses_ports_weights_and_names() {
        let line = ok("127.0.0.1:6379:1");
        assert_eq!(line.address, "127.0.0.1");
        assert_eq!(
            (line.port, line.weight, line.name.as_deref()),
            (Some(6379), 1, None)
        );
        assert_eq!(line.ring_name(), "127.0.0.1:6379");
        assert_eq!(
            line.spec(),
            ServerSpec {
                name: "127.0.0.1:6379".into(),
                weight: 1
            }
        );

        let line = ok("redis-0.redis.svc:6380:10 shard0");
        assert_eq!(line.address, "redis-0.redis.svc");
        assert_eq!((line.port, line.weight), (Some(6380), 10));
        assert_eq!(line.name.as_deref(), Some("shard0"));
        assert_eq!(line.ring_name(), "shard0");

        let line = ok("::1:6379:1");
        assert_eq!((line.address.as_str(), line.port), ("::1", Some(6379)));
        assert_eq!(line.ring_name(), "::1:6379");
    }

    #[test]
    fn ring_names_follow_twemproxy_quirks() {
        // Port 11211 is left out; the port is hashed as written.
        assert_eq!(ok("10.0.0.1:11211:1").ring_name(), "10.0.0.1");
        assert_eq!(ok("10.0.0.1:06379:1").ring_name(), "10.0.0.1:06379");
        assert_eq!(ok("10.0.0.1:06379:1").port, Some(6379));
        // A unix socket keeps the colon after its path.
        let line = ok("/run/redis.sock:2");
        assert_eq!(
            (line.address.as_str(), line.port, line.weight),
            ("/run/redis.sock", None, 2)
        );
        assert_eq!(line.ring_name(), "/run/redis.sock:");
        assert_eq!(ok("/run/redis.sock:2 cache").ring_name(), "cache");
        // Non-ASCII names are hashed as their UTF-8 bytes.
        assert_eq!(ok("10.0.0.1:6379:1 café").ring_name(), "café");
    }

    #[test]
    fn malformed_lines_are_rejected() {
        for line in [
            "",
            "127.0.0.1",
            "127.0.0.1:6379",
            ":6379:1",
            "127.0.0.1:6379:1 ",
            "/run/a:b.sock:1",
            "127.0.0.1:6379:1\0",
        ] {
            assert_eq!(
                ServerLine::parse(line),
                Err(ServerLineError::Format(line.into())),
                "{line:?}"
            );
        }
        for line in ["h:0:1", "h:65536:1", "h:-1:1", "h:+80:1", "h::1", "h:80x:1"] {
            assert_eq!(
                ServerLine::parse(line),
                Err(ServerLineError::Port(line.into()))
            );
        }
        for line in [
            "h:6379:0",
            "h:6379:",
            "h:6379:-2",
            "h:6379:1.5",
            "h:6379:2147483648",
            "h:6379:1  two-spaces",
        ] {
            assert_eq!(
                ServerLine::parse(line),
                Err(ServerLineError::Weight(line.into())),
                "{line:?}"
            );
        }
        assert_eq!(ok("h:6379:2147483647").weight, 2_147_483_647);
    }
}
