//! `slotline migrate-verify`: before a migration starts, checks that every key on the old servers
//! is where `migrate.from` places it. Moving keys on touch reads each key from the server the
//! placement names, so a placement that differs from the one the data was written with (another
//! hash, hash tag, server order or names) would miss keys: this finds that first, reading only
//! (SCAN), and names the keys it found out of place.

use std::time::Duration;

use super::mover::scan_step;
use crate::config::PoolConfig;

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
    // Longer than a serving pool waits: nothing else is waiting for this one.
    let (_, shards, _source) = super::old_side(name, pool, None, Duration::from_secs(5)).await?;
    let table = shards.table();
    let mut report = Report::default();
    for node in table.in_service() {
        report.servers += 1;
        let mut cursor = b"0".to_vec();
        loop {
            let (next, keys) = scan_step(node, &cursor, "1000").await?;
            for key in keys {
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
