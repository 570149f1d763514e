//! twemproxy's stats format: one JSON object, written to whoever connects to the stats port, so that
//! exporters and dashboards made for nutcracker read slotline unchanged.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use super::{PoolStats, ServerStats};

/// The process-wide fields.
pub struct Header<'a> {
    pub source: &'a str,
    pub version: &'a str,
    /// Seconds since start.
    pub uptime: u64,
    /// Seconds since the Unix epoch.
    pub timestamp: u64,
    pub total_connections: u64,
    pub curr_connections: u64,
}

/// One pool and its servers, by the names twemproxy would give them.
pub struct Pool<'a> {
    pub name: &'a str,
    pub stats: &'a PoolStats,
    pub servers: Vec<(String, &'a ServerStats)>,
}

/// The JSON object, laid out as nutcracker 0.5 writes it.
pub fn render(header: &Header<'_>, pools: &[Pool<'_>]) -> String {
    let mut out = String::with_capacity(512 + pools.len() * 1024);
    out.push_str("{\"service\":\"slotline\", \"source\":");
    string(&mut out, header.source);
    out.push_str(", \"version\":");
    string(&mut out, header.version);
    let _ = write!(
        out,
        ", \"uptime\":{}, \"timestamp\":{}, \"total_connections\":{}, \"curr_connections\":{}",
        header.uptime, header.timestamp, header.total_connections, header.curr_connections
    );
    for pool in pools {
        out.push_str(", ");
        string(&mut out, pool.name);
        let s = pool.stats;
        let _ = write!(
            out,
            ": {{\"client_eof\":{}, \"client_err\":{}, \"client_connections\":{}, \"server_ejects\":{}, \"forward_error\":{}, \"fragments\":{}",
            s.client_eof.load(Ordering::Relaxed),
            s.client_err.load(Ordering::Relaxed),
            s.client_connections.load(Ordering::Relaxed).max(0),
            s.server_ejects.load(Ordering::Relaxed),
            s.forward_error.load(Ordering::Relaxed),
            s.fragments.load(Ordering::Relaxed),
        );
        for (name, s) in &pool.servers {
            out.push_str(", ");
            string(&mut out, name);
            let gauge = |g: &std::sync::atomic::AtomicI64| g.load(Ordering::Relaxed).max(0);
            let _ = write!(
                out,
                ": {{\"server_eof\":{}, \"server_err\":{}, \"server_timedout\":{}, \"server_connections\":{}, \"server_ejected_at\":{}, \"requests\":{}, \"request_bytes\":{}, \"responses\":{}, \"response_bytes\":{}, \"in_queue\":{}, \"in_queue_bytes\":{}, \"out_queue\":{}, \"out_queue_bytes\":{}}}",
                s.server_eof.load(Ordering::Relaxed),
                s.server_err.load(Ordering::Relaxed),
                s.server_timedout.load(Ordering::Relaxed),
                gauge(&s.server_connections),
                s.server_ejected_at.load(Ordering::Relaxed),
                s.requests.load(Ordering::Relaxed),
                s.request_bytes.load(Ordering::Relaxed),
                s.responses.load(Ordering::Relaxed),
                s.response_bytes.load(Ordering::Relaxed),
                s.queued.requests(),
                s.queued.bytes(),
                gauge(&s.out_queue),
                gauge(&s.out_queue_bytes),
            );
        }
        out.push('}');
    }
    out.push_str("}\n");
    out
}

/// A JSON string: names come from the config and may hold quotes or control characters.
fn string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::add;

    #[test]
    fn lays_out_twemproxy_fields_and_escapes_names() {
        let pool = PoolStats::default();
        add(&pool.fragments, 3);
        let server = ServerStats::default();
        add(&server.requests, 7);
        let text = render(
            &Header {
                source: "host",
                version: "1.0",
                uptime: 5,
                timestamp: 100,
                total_connections: 2,
                curr_connections: 1,
            },
            &[Pool {
                name: "alpha",
                stats: &pool,
                servers: vec![("a\"b".into(), &server)],
            }],
        );
        assert_eq!(
            text,
            "{\"service\":\"slotline\", \"source\":\"host\", \"version\":\"1.0\", \"uptime\":5, \"timestamp\":100, \"total_connections\":2, \"curr_connections\":1, \"alpha\": {\"client_eof\":0, \"client_err\":0, \"client_connections\":0, \"server_ejects\":0, \"forward_error\":0, \"fragments\":3, \"a\\\"b\": {\"server_eof\":0, \"server_err\":0, \"server_timedout\":0, \"server_connections\":0, \"server_ejected_at\":0, \"requests\":7, \"request_bytes\":0, \"responses\":0, \"response_bytes\":0, \"in_queue\":0, \"in_queue_bytes\":0, \"out_queue\":0, \"out_queue_bytes\":0}}}\n"
        );
    }
}
