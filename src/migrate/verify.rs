//! `slotline migrate verify`: before a migration starts, checks that every key on the old servers
//! is where `migrate.from` places it. Moving keys on touch reads each key from the server the
//! placement names, so a placement that differs from the one the data was written with (another
//! hash, hash tag, server order or names) would miss keys: this finds that first, reading only
//! (SCAN), and names the keys it found out of place.

use std::sync::Arc;
use std::time::Duration;

use redis_protocol::resp2::types::OwnedFrame;

use super::mover::{ask, command, MARKER};
use crate::config::PoolConfig;
use crate::discovery::Discovery;
use crate::shards::Shards;

/// What a verification found.
#[derive(Debug, Default)]
pub struct Report {
    pub servers: usize,
    pub keys: u64,
    /// Keys found on a server other than the one the placement names (up to 10 named).
    pub misplaced: u64,
    pub examples: Vec<String>,
}

/// Walks every old server of `pool`'s migration and checks each key's placement.
pub async fn verify(name: &str, pool: &PoolConfig) -> Result<Report, String> {
    let Some(migrate) = &pool.migrate else {
        return Err("the pool has no migrate: block".into());
    };
    let old = migrate.from_pool(pool);
    let source = Discovery::start(&format!("{name}/from"), &old);
    let mut endpoints = source.endpoints.clone();
    let _ = tokio::time::timeout(Duration::from_secs(5), endpoints.wait_for(Option::is_some)).await;
    let stats = Arc::new(crate::stats::PoolStats::default());
    let shards = Shards::start(&old, stats, &source, None)?;
    let table = shards.table();
    let mut report = Report::default();
    for node in table.in_service() {
        report.servers += 1;
        let mut cursor = b"0".to_vec();
        loop {
            let scan = command(&[b"SCAN", &cursor, b"COUNT", b"1000"]);
            let (next, keys) = match ask(node, scan).await {
                Ok(OwnedFrame::Array(mut parts)) if parts.len() == 2 => {
                    let keys = match parts.pop() {
                        Some(OwnedFrame::Array(keys)) => keys,
                        _ => Vec::new(),
                    };
                    match parts.pop() {
                        Some(OwnedFrame::BulkString(next)) => (next, keys),
                        _ => (b"0".to_vec(), keys),
                    }
                }
                other => return Err(format!("SCAN on {}: {other:?}", node.addr())),
            };
            for key in keys {
                let OwnedFrame::BulkString(key) = key else {
                    continue;
                };
                if key == MARKER.as_bytes() {
                    continue;
                }
                report.keys += 1;
                let home = table.node(table.server_for_key(&key));
                if home.is_none_or(|home| home.addr() != node.addr()) {
                    report.misplaced += 1;
                    if report.examples.len() < 10 {
                        report.examples.push(format!(
                            "{:?} is on {} but the placement names {}",
                            String::from_utf8_lossy(&key),
                            node.addr(),
                            home.map_or("no server", |h| &**h.addr())
                        ));
                    }
                }
            }
            if next == b"0" {
                break;
            }
            cursor = next;
        }
    }
    Ok(report)
}
