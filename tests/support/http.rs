//! A tiny HTTP/1.1 client for the admin endpoints: one request per connection, as probes do.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Status code and body of an answer.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// `GET path` on `127.0.0.1:port`.
pub fn http_get(port: u16, path: &str) -> HttpReply {
    http_raw(
        port,
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes(),
    )
    .unwrap_or_else(|e| panic!("GET {path} on 127.0.0.1:{port}: {e}"))
}

/// Sends `request` as it is and reads the answer until the server closes.
pub fn http_raw(port: u16, request: &[u8]) -> Result<HttpReply, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    stream.write_all(request).map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no end of head in {text:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    Ok(HttpReply {
        status,
        head: head.to_string(),
        body: body.to_string(),
    })
}

/// The value of an unlabelled sample, or of the sample whose name and labels start with `series`
/// (e.g. `slotline_client_connections_total{pool="main"}`), in a Prometheus text exposition.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

/// Metric names only primary pools export.
pub const PRIMARY_METRIC_NAMES: &[&str] = &[
    "slotline_master",
    "slotline_master_last_switch_timestamp_seconds",
    "slotline_replicas_healthy",
    "slotline_failover_holds_total",
];

/// Metric names only cluster and primary pools export (where their reads go).
pub const READ_METRIC_NAMES: &[&str] = &[
    "slotline_replica",
    "slotline_replica_lag_milliseconds",
    "slotline_replica_serving_reads",
    "slotline_reads_total",
];

/// Every metric name slotline exports: a contract with dashboards and alerts.
pub const METRIC_NAMES: &[&str] = &[
    "slotline_client_connections",
    "slotline_client_connections_total",
    "slotline_client_connections_rejected_total",
    "slotline_requests_total",
    "slotline_commands_total",
    "slotline_errors_total",
    "slotline_request_duration_seconds",
    "slotline_backend_request_duration_seconds",
    "slotline_client_received_bytes_total",
    "slotline_client_sent_bytes_total",
    "slotline_backend_requests_total",
    "slotline_backend_responses_total",
    "slotline_backend_sent_bytes_total",
    "slotline_backend_received_bytes_total",
    "slotline_backend_connections",
    "slotline_backend_queued_requests",
    "slotline_backend_errors_total",
    "slotline_backend_ejected",
    "slotline_backend_ejections_total",
    "slotline_redirects_total",
    "slotline_topology_refreshes_total",
    "slotline_discovery_updates_total",
    "slotline_discovery_synced",
    "slotline_discovery_errors_total",
    "slotline_config_reloads_total",
    "slotline_master_switches_total",
    "slotline_master",
    "slotline_master_last_switch_timestamp_seconds",
    "slotline_replicas_healthy",
    "slotline_failover_holds_total",
    "slotline_replica",
    "slotline_replica_lag_milliseconds",
    "slotline_replica_serving_reads",
    "slotline_reads_total",
    "slotline_up",
    "slotline_build_info",
    "slotline_start_time_seconds",
];
