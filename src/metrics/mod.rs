//! Prometheus metrics: one registry per process, rendered in the text format for `/metrics`.
//!
//! Two kinds of source feed it. Counters the data path already keeps as plain atomics (per pool, per
//! backend) are read only when Prometheus scrapes, by [`scrape::PoolsCollector`], so they cost the data
//! path nothing more. What has no atomic of its own (commands by family, errors by kind) is a
//! prometheus metric whose label handles are resolved once per pool ([`PoolMetrics`]), so recording
//! one is an atomic add with no label lookup and no allocation. Latency histograms are rows of
//! atomics of their own ([`latency`]), made cumulative only when scraped.
//!
//! Every label takes values from a fixed set (pool and backend names come from the config and the
//! topology), so the number of series is bounded.

mod latency;
mod scrape;
mod tally;

pub use latency::Latency;
use latency::LatencyFamily;
pub use scrape::PoolsCollector;
pub use tally::{SessionTally, Tally};

use std::sync::Arc;

pub use crate::command::Family;
use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

/// Why a request failed, as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No reply within the pool's timeout.
    Timeout = 0,
    /// The backend could not be reached or its connection was lost.
    Connection,
    /// A malformed request from the client, or a malformed reply from a backend.
    Protocol,
    /// More MOVED/ASK/TRYAGAIN redirects than `max_redirects`.
    RedirectLimit,
    /// The backend answered with an error reply.
    BackendError,
    /// slotline refused the request itself (unsupported, CROSSSLOT, no topology).
    Proxy,
}

impl From<&crate::backend::BackendError> for ErrorKind {
    /// Why a backend gave no reply, as the client's error.
    fn from(e: &crate::backend::BackendError) -> ErrorKind {
        use crate::backend::BackendError;
        match e {
            BackendError::Protocol(_) => ErrorKind::Protocol,
            BackendError::Connect(_) | BackendError::Closed(_) | BackendError::Abandoned => {
                ErrorKind::Connection
            }
        }
    }
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 6] = [
        ErrorKind::Timeout,
        ErrorKind::Connection,
        ErrorKind::Protocol,
        ErrorKind::RedirectLimit,
        ErrorKind::BackendError,
        ErrorKind::Proxy,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timeout",
            ErrorKind::Connection => "connection",
            ErrorKind::Protocol => "protocol",
            ErrorKind::RedirectLimit => "redirect_limit",
            ErrorKind::BackendError => "backend_error",
            ErrorKind::Proxy => "proxy",
        }
    }
}

/// Redirect replies a cluster pool followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedirectKind {
    Moved = 0,
    Ask,
    /// TRYAGAIN and CLUSTERDOWN, retried after a pause.
    TryAgain,
    /// READONLY from a demoted master, sent again to the new one.
    Readonly,
    /// A blocking command a demoted master unblocked (`-UNBLOCKED`), sent again to the new one.
    Unblocked,
}

impl From<&crate::cluster::Redirect<'_>> for RedirectKind {
    fn from(r: &crate::cluster::Redirect<'_>) -> RedirectKind {
        use crate::cluster::Redirect;
        match r {
            Redirect::Moved { .. } => RedirectKind::Moved,
            Redirect::Ask { .. } => RedirectKind::Ask,
            Redirect::Retry => RedirectKind::TryAgain,
        }
    }
}

impl RedirectKind {
    pub const ALL: [RedirectKind; 5] = [
        RedirectKind::Moved,
        RedirectKind::Ask,
        RedirectKind::TryAgain,
        RedirectKind::Readonly,
        RedirectKind::Unblocked,
    ];

    pub fn label(self) -> &'static str {
        match self {
            RedirectKind::Moved => "moved",
            RedirectKind::Ask => "ask",
            RedirectKind::TryAgain => "tryagain",
            RedirectKind::Readonly => "readonly",
            RedirectKind::Unblocked => "unblocked",
        }
    }
}

/// The registry and every metric family that is not read from atomics at scrape time.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    commands: IntCounterVec,
    errors: IntCounterVec,
    request_duration: LatencyFamily,
    backend_request_duration: LatencyFamily,
    client_received_bytes: IntCounterVec,
    client_sent_bytes: IntCounterVec,
    redirects: IntCounterVec,
    discovery_updates: IntCounterVec,
    master_switches: IntCounterVec,
    config_reloads: IntCounterVec,
}

/// One pool's label handles, resolved once when the pool starts.
pub struct PoolMetrics {
    pub requests: IntCounter,
    /// Indexed by [`Family`] as usize.
    pub commands: [IntCounter; Family::ALL.len()],
    /// Indexed by [`ErrorKind`] as usize.
    pub errors: [IntCounter; ErrorKind::ALL.len()],
    /// From the moment a request is read to the moment its reply is queued for the client.
    pub request_duration: Arc<Latency>,
    /// From the moment a request is queued on a backend connection to its reply.
    pub backend_request_duration: Arc<Latency>,
    pub client_received_bytes: IntCounter,
    pub client_sent_bytes: IntCounter,
    /// Indexed by [`RedirectKind`] as usize.
    pub redirects: [IntCounter; RedirectKind::ALL.len()],
    pub discovery_updates: IntCounter,
    pub master_switches: IntCounter,
    /// INFO commandstats: per command, as this pool's clients saw them.
    pub commandstats: crate::cmdstats::CommandStats,
}

impl PoolMetrics {
    pub fn command(&self, family: Family) {
        self.commands[family as usize].inc();
    }

    pub fn error(&self, kind: ErrorKind) {
        self.errors[kind as usize].inc();
    }

    pub fn redirect(&self, kind: RedirectKind) {
        self.redirects[kind as usize].inc();
    }
}

impl Metrics {
    /// Builds the registry with the process-wide facts (`slotline_up`, build info, start time).
    pub fn new() -> Result<Arc<Metrics>, prometheus::Error> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let histogram = |name: &str, help: &str| {
            let h = LatencyFamily::new(name, help)?;
            registry.register(Box::new(h.clone()))?;
            Ok::<_, prometheus::Error>(h)
        };
        let gauge = |name: &str, help: &str, label: Option<(&str, &str)>| {
            let mut opts = Opts::new(name, help);
            if let Some((k, v)) = label {
                opts = opts.const_label(k, v);
            }
            let g = IntGauge::with_opts(opts)?;
            registry.register(Box::new(g.clone()))?;
            Ok::<_, prometheus::Error>(g)
        };
        gauge("slotline_up", "1 while the process runs.", None)?.set(1);
        gauge(
            "slotline_build_info",
            "Always 1; the version is in the label.",
            Some(("version", env!("CARGO_PKG_VERSION"))),
        )?
        .set(1);
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        gauge(
            "slotline_start_time_seconds",
            "When the process started, in seconds since the Unix epoch.",
            None,
        )?
        .set(i64::try_from(started).unwrap_or(i64::MAX));
        let metrics = Metrics {
            requests: counter(
                "slotline_requests_total",
                "Requests read from clients.",
                &["pool"],
            )?,
            commands: counter(
                "slotline_commands_total",
                "Requests by command family (the command's Redis ACL category).",
                &["pool", "family"],
            )?,
            errors: counter(
                "slotline_errors_total",
                "Requests answered with an error, by why.",
                &["pool", "kind"],
            )?,
            request_duration: histogram(
                "slotline_request_duration_seconds",
                "Time from reading a request to queueing its reply, as the client sees it.",
            )?,
            backend_request_duration: histogram(
                "slotline_backend_request_duration_seconds",
                "Time a backend took to answer a request.",
            )?,
            client_received_bytes: counter(
                "slotline_client_received_bytes_total",
                "Bytes read from clients.",
                &["pool"],
            )?,
            client_sent_bytes: counter(
                "slotline_client_sent_bytes_total",
                "Bytes written to clients.",
                &["pool"],
            )?,
            redirects: counter(
                "slotline_redirects_total",
                "MOVED, ASK and TRYAGAIN/CLUSTERDOWN replies followed, and READONLY replies (and blocking commands' UNBLOCKED) of a demoted master sent again to the new one.",
                &["pool", "kind"],
            )?,
            discovery_updates: counter(
                "slotline_discovery_updates_total",
                "Changes of a pool's backend list received from discovery.",
                &["pool"],
            )?,
            master_switches: counter(
                "slotline_master_switches_total",
                "Times a primary pool's master changed.",
                &["pool"],
            )?,
            config_reloads: counter(
                "slotline_config_reloads_total",
                "Configuration reloads, by result.",
                &["result"],
            )?,
            registry,
        };
        for result in ["ok", "error"] {
            // Present from the start, so that rate() and alerts see a zero rather than nothing.
            metrics.config_reloads.with_label_values(&[result]);
        }
        Ok(Arc::new(metrics))
    }

    /// Adds a collector read at scrape time (atomics kept by the data path).
    pub fn register(&self, collector: Box<dyn prometheus::core::Collector>) {
        if let Err(e) = self.registry.register(collector) {
            // Only a programming error (a duplicate name) gets here; metrics must not stop the proxy.
            tracing::error!(error = %e, "cannot register a metrics collector");
        }
    }

    /// Resolves every per-pool label handle once; every series of the pool exists from now on, at 0.
    pub fn pool(&self, pool: &str) -> std::sync::Arc<PoolMetrics> {
        let one = |vec: &IntCounterVec| vec.with_label_values(&[pool]);
        let two = |vec: &IntCounterVec, label: &str| vec.with_label_values(&[pool, label]);
        std::sync::Arc::new(PoolMetrics {
            requests: one(&self.requests),
            commands: Family::ALL.map(|f| two(&self.commands, f.label())),
            errors: ErrorKind::ALL.map(|k| two(&self.errors, k.label())),
            request_duration: self.request_duration.pool(pool),
            backend_request_duration: self.backend_request_duration.pool(pool),
            client_received_bytes: one(&self.client_received_bytes),
            client_sent_bytes: one(&self.client_sent_bytes),
            redirects: RedirectKind::ALL.map(|k| two(&self.redirects, k.label())),
            discovery_updates: one(&self.discovery_updates),
            master_switches: one(&self.master_switches),
            commandstats: Default::default(),
        })
    }

    /// Counts a configuration reload.
    pub fn config_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.config_reloads.with_label_values(&[result]).inc();
    }

    /// Everything, in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::with_capacity(16 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pool_series_exists_at_zero_with_bounded_labels() {
        let metrics = Metrics::new().unwrap();
        let pool = metrics.pool("main");
        pool.error(ErrorKind::Timeout);
        pool.request_duration
            .observe(std::time::Duration::from_millis(2));
        let text = metrics.render();
        for line in [
            "slotline_up 1",
            "slotline_build_info{version=\"",
            "slotline_errors_total{kind=\"timeout\",pool=\"main\"} 1",
            "slotline_errors_total{kind=\"proxy\",pool=\"main\"} 0",
            "slotline_commands_total{family=\"sortedset\",pool=\"main\"} 0",
            "slotline_redirects_total{kind=\"ask\",pool=\"main\"} 0",
            "slotline_request_duration_seconds_bucket{pool=\"main\",le=\"0.0025\"} 1",
            "slotline_config_reloads_total{result=\"error\"} 0",
        ] {
            assert!(text.contains(line), "no {line:?} in:\n{text}");
        }
    }
}
