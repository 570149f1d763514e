//! Metrics read at scrape time from the atomics that pools, clusters and backends keep anyway.

use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};

use crate::server::{Router, Shared};

/// (name, help, type, label names) of every family this collector emits.
const FAMILIES: &[(&str, &str, MetricType, &[&str])] = &[
    (
        "slotline_client_connections",
        "Clients connected now.",
        MetricType::GAUGE,
        &["pool"],
    ),
    (
        "slotline_client_connections_total",
        "Client connections accepted.",
        MetricType::COUNTER,
        &["pool"],
    ),
    (
        "slotline_client_connections_rejected_total",
        "Client connections refused because the pool had client_connections clients.",
        MetricType::COUNTER,
        &["pool"],
    ),
    (
        "slotline_topology_refreshes_total",
        "Cluster topology refreshes, by result.",
        MetricType::COUNTER,
        &["pool", "result"],
    ),
];

/// Reads every pool's counters when Prometheus scrapes; nothing is recorded on the data path for it.
pub struct PoolsCollector {
    shared: Arc<Shared>,
    descs: Vec<Desc>,
}

impl PoolsCollector {
    pub fn new(shared: Arc<Shared>) -> Result<PoolsCollector, prometheus::Error> {
        let descs = FAMILIES
            .iter()
            .map(|(name, help, _, labels)| {
                let labels = labels.iter().map(|l| l.to_string()).collect();
                Desc::new(
                    name.to_string(),
                    help.to_string(),
                    labels,
                    Default::default(),
                )
            })
            .collect::<Result<_, _>>()?;
        Ok(PoolsCollector { shared, descs })
    }
}

/// One family being filled during a scrape.
struct Family(MetricFamily);

impl Family {
    fn new(index: usize) -> Family {
        let (name, help, kind, _) = FAMILIES[index];
        let mut mf = MetricFamily::default();
        mf.set_name(name.to_string());
        mf.set_help(help.to_string());
        mf.set_field_type(kind);
        Family(mf)
    }

    /// Adds one sample; `labels` must be sorted by name, as the registry's own metrics are.
    fn add(&mut self, labels: &[(&str, &str)], value: u64) {
        let pairs = labels
            .iter()
            .map(|(k, v)| {
                let mut pair = LabelPair::default();
                pair.set_name(k.to_string());
                pair.set_value(v.to_string());
                pair
            })
            .collect();
        let mut metric = Metric::default();
        metric.set_label(pairs);
        if self.0.get_field_type() == MetricType::GAUGE {
            let mut gauge = Gauge::default();
            gauge.set_value(value as f64);
            metric.set_gauge(gauge);
        } else {
            let mut counter = Counter::default();
            counter.set_value(value as f64);
            metric.set_counter(counter);
        }
        self.0.mut_metric().push(metric);
    }
}

impl Collector for PoolsCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut families: Vec<Family> = (0..FAMILIES.len()).map(Family::new).collect();
        for pool in self.shared.pools() {
            let name = pool.name.as_str();
            let stats = pool.counters();
            families[0].add(&[("pool", name)], stats.clients);
            families[1].add(&[("pool", name)], stats.accepted);
            families[2].add(&[("pool", name)], stats.rejected);
            if let Router::Cluster(cluster) = &pool.router {
                let (ok, failed) = cluster.refresh_counts();
                families[3].add(&[("pool", name), ("result", "ok")], ok);
                families[3].add(&[("pool", name), ("result", "error")], failed);
            }
        }
        families
            .into_iter()
            .map(|f| f.0)
            .filter(|mf| !mf.get_metric().is_empty())
            .collect()
    }
}
