//! Listen and backend addresses: `host:port`, IPv6 in brackets, unix socket paths.

/// A listen address naming a unix socket rather than `host:port`.
pub fn is_unix_path(listen: &str) -> bool {
    listen.starts_with('/') || listen.starts_with("./") || listen.starts_with("unix:")
}

/// Whether `host` can only be reached over the network: an IP address or a DNS name, never a path
/// (which would open a unix socket) or anything else a node's reply might put there.
pub fn is_network_host(host: &str) -> bool {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    !host.is_empty()
        && host.len() <= 253
        && !host.starts_with(['-', '.'])
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

/// `host:port`, with an IPv6 host in brackets: the inverse of [`split_host_port`].
pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Splits `host:port` (IPv6 hosts in brackets); the host may be a name.
pub fn split_host_port(addr: &str) -> Result<(&str, u16), String> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("'{addr}' is not host:port"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err(format!("'{addr}' has no host"));
    }
    // A colon left in the host is an IPv6 address (bracketed or not) or a mistake, such as a
    // twemproxy server line's `:weight` where only host:port belongs.
    if host.contains(':') && host.parse::<std::net::Ipv6Addr>().is_err() {
        return Err(format!("'{addr}' is not host:port"));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| format!("'{addr}' has an invalid port '{port}'"))?;
    if port == 0 {
        return Err(format!("'{addr}' has port 0"));
    }
    Ok((host, port))
}
