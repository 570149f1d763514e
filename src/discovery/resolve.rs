//! The static `servers:` source: host names resolved again every `resolve_interval` and soon after a
//! backend connection fails, so that a pod back at a new IP behind the same DNS name is followed without
//! Kubernetes API access. A changed address is a new endpoint set; a failed resolution keeps the last
//! known address.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::time::{sleep, Instant};

use super::{Endpoint, EndpointSet, StaticServer, Status};
use crate::config::join_host_port;

/// Failures ask for a look at most this often: a backend that is down fails every reconnect.
const MIN_RECHECK_GAP: Duration = Duration::from_secs(1);

/// Names a hosts-format file consulted before the system resolver. A hook for tests, which must move
/// a name to another address without editing /etc/hosts under other tests' feet; not documented as a
/// feature.
const HOSTS_OVERRIDE_ENV: &str = "SLOTLINE_TEST_HOSTS_FILE";

pub(super) async fn run(
    mut servers: watch::Receiver<Vec<StaticServer>>,
    interval: Duration,
    tx: watch::Sender<EndpointSet>,
    status: Arc<Status>,
    recheck: Arc<Notify>,
) {
    let overrides = std::env::var_os(HOSTS_OVERRIDE_ENV).map(PathBuf::from);
    // The last good address of each name, kept while a lookup fails.
    let mut resolved: HashMap<(String, u16), SocketAddr> = HashMap::new();
    let mut last_look = Instant::now() - MIN_RECHECK_GAP;
    loop {
        let list = servers.borrow_and_update().clone();
        let mut next: Vec<Endpoint> = Vec::with_capacity(list.len());
        let mut failure = None;
        for server in &list {
            let mut endpoint = server.unresolved();
            if server.needs_resolving() {
                let key = (server.host.clone(), server.port);
                let previous = resolved.get(&key).map(SocketAddr::ip);
                match resolve(&server.host, server.port, overrides.as_ref(), previous).await {
                    Ok(addr) => {
                        resolved.insert(key.clone(), addr);
                    }
                    Err(e) => failure = Some(format!("{}: {e}", server.host)),
                }
                if let Some(addr) = resolved.get(&key) {
                    endpoint.addr = Arc::from(join_host_port(&addr.ip().to_string(), addr.port()));
                }
            }
            next.push(endpoint);
        }
        last_look = Instant::now().max(last_look);
        match failure {
            Some(detail) => status.failed("resolution failed", &detail),
            None => status.ok(),
        }
        let current = tx.borrow().clone();
        if current.as_deref() != Some(&next[..]) {
            for old in current.iter().flat_map(|c| c.iter()) {
                // The first resolution of a name is no news; a resolved address changing is.
                let moved = next
                    .iter()
                    .find(|n| n.name == old.name && n.addr != old.addr);
                if let (Some(new), Some(_)) = (moved, current_ip(old)) {
                    tracing::info!(pool = %status.snapshot().pool, server = %new.name, from = %old.addr, to = %new.addr, "backend address changed");
                }
            }
            status.synced(next.len());
            if tx.send(Some(next.into())).is_err() {
                return; // the pool is gone
            }
        }
        tokio::select! {
            _ = sleep(interval) => {}
            _ = recheck.notified() => {
                let gap = last_look + MIN_RECHECK_GAP;
                if Instant::now() < gap {
                    tokio::time::sleep_until(gap).await;
                }
            }
            changed = servers.changed() => if changed.is_err() {
                return; // the pool is gone
            },
            _ = tx.closed() => return,
        }
        last_look = Instant::now();
    }
}

/// The IP an endpoint is at now, if it was resolved.
fn current_ip(endpoint: &Endpoint) -> Option<IpAddr> {
    endpoint.addr.parse::<SocketAddr>().ok().map(|a| a.ip())
}

/// `host`'s address; the previous one while it is still among the answers, so that a name with many
/// addresses does not flap between them.
async fn resolve(
    host: &str,
    port: u16,
    overrides: Option<&PathBuf>,
    previous: Option<IpAddr>,
) -> Result<SocketAddr, String> {
    let mut addrs: Vec<SocketAddr> = Vec::new();
    if let Some(file) = overrides {
        // A small file read by tests only: not worth a blocking-pool hop.
        if let Ok(text) = std::fs::read_to_string(file) {
            addrs = hosts_lookup(&text, host)
                .into_iter()
                .map(|ip| SocketAddr::new(ip, port))
                .collect();
        }
    }
    if addrs.is_empty() {
        addrs = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| e.to_string())?
            .collect();
    }
    if let Some(prev) = previous.and_then(|p| addrs.iter().find(|a| a.ip() == p)) {
        return Ok(*prev);
    }
    addrs
        .first()
        .copied()
        .ok_or_else(|| "no address".to_string())
}

/// The addresses a hosts-format text gives `host`.
fn hosts_lookup(text: &str, host: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|line| {
            let line = line.split('#').next().unwrap_or("");
            let mut words = line.split_whitespace();
            let ip: IpAddr = words.next()?.parse().ok()?;
            words
                .any(|name| name.eq_ignore_ascii_case(host))
                .then_some(ip)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_format() {
        let text = "# comment\n127.0.0.2 redis-0.test other\n::1 redis-1.test\n127.0.0.3 REDIS-0.test # again\nbad line\n";
        assert_eq!(
            hosts_lookup(text, "redis-0.test"),
            [
                "127.0.0.2".parse::<IpAddr>().unwrap(),
                "127.0.0.3".parse().unwrap()
            ]
        );
        assert_eq!(
            hosts_lookup(text, "redis-1.test"),
            ["::1".parse::<IpAddr>().unwrap()]
        );
        assert!(hosts_lookup(text, "line").is_empty());
    }

    #[tokio::test]
    async fn keeps_the_previous_address_while_it_is_still_given() {
        let dir = std::env::temp_dir().join(format!("slotline-resolve-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("hosts");
        std::fs::write(&file, "127.0.0.2 r.test\n127.0.0.3 r.test\n").unwrap();
        let first = resolve("r.test", 6379, Some(&file), None).await.unwrap();
        assert_eq!(first, "127.0.0.2:6379".parse().unwrap());
        let kept = resolve("r.test", 6379, Some(&file), "127.0.0.3".parse().ok())
            .await
            .unwrap();
        assert_eq!(kept, "127.0.0.3:6379".parse().unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
