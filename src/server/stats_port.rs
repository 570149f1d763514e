//! The twemproxy-compatible stats port: every connection gets one JSON object, then the connection
//! closes (what nutcracker's `-s` port does). It runs on the control thread, apart from the data
//! path, and a reader that does not take the object within the admin write timeout is dropped.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use super::{Pool, Router, Shared};
use crate::backend::Node;
use crate::stats::twemproxy::{self, Header};

pub(super) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    pools: tokio::sync::watch::Receiver<Vec<Arc<Pool>>>,
) {
    let source = host_name();
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            // Out of descriptors and the like: the data path matters more; try again shortly.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        // The pools serving now: a reload may have added or removed some.
        let current = pools.borrow().clone();
        let text = render(&source, &shared, &current);
        tokio::spawn(async move {
            let write = async {
                let _ = stream.write_all(text.as_bytes()).await;
                let _ = stream.shutdown().await;
            };
            let _ = tokio::time::timeout(crate::admin::WRITE_TIMEOUT, write).await;
        });
    }
}

fn render(source: &str, shared: &Shared, pools: &[Arc<Pool>]) -> String {
    // Cluster pools report the nodes of their current topology, primary pools their master and
    // replicas, by address.
    let nodes: Vec<Vec<(String, Arc<Node>)>> = pools
        .iter()
        .map(|pool| match &pool.router {
            Router::Shards(shards) => shards
                .members()
                .servers()
                .map(|(name, node)| (name.to_string(), node.clone()))
                .collect(),
            Router::Cluster(_) | Router::Primary(_) => pool
                .router
                .backends()
                .into_iter()
                .map(|node| (node.addr().to_string(), node))
                .collect(),
        })
        .collect();
    let entries: Vec<twemproxy::Pool<'_>> = pools
        .iter()
        .zip(&nodes)
        .map(|(pool, nodes)| twemproxy::Pool {
            name: &pool.name,
            stats: &pool.stats,
            servers: nodes
                .iter()
                .map(|(name, node)| (name.clone(), node.stats()))
                .collect(),
        })
        .collect();
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    twemproxy::render(
        &Header {
            source,
            version: env!("CARGO_PKG_VERSION"),
            uptime: shared.started.elapsed().as_secs(),
            timestamp,
            total_connections: shared.total_connections.load(Ordering::Relaxed),
            curr_connections: shared.connected_clients.load(Ordering::Relaxed),
        },
        &entries,
    )
}

/// The machine's name, as nutcracker reports it in `source` (the pod name in Kubernetes).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "slotline".into())
}
