//! Latency histograms that cost a session's step one atomic add per bucket it touched, and one for
//! the sum. prometheus's own histogram, flushed from a local copy at the end of every step (at
//! -P 1 once or twice per request), looked at each of its 17 buckets, added the sum as an `f64`
//! by compare-and-swap, counted twice more for its hot and cold halves, and cleared the copy: 376
//! of the 8,000 instructions slotline spends per request at -P 1 (callgrind, 50 clients).
//!
//! Here the shared side is a row of counters and a sum, read and made cumulative only when
//! Prometheus scrapes ([`LatencyFamily`]); a step's observations wait in a [`LocalLatency`] that
//! knows which buckets it touched. The exposition is prometheus's: the same family, buckets,
//! `_sum` in seconds and `_count`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Bucket, Histogram, LabelPair, Metric, MetricFamily, MetricType};

/// Bucket upper bounds in seconds: 100 µs to 10 s, dense where a proxy in front of Redis usually
/// is. A last bucket, past them all, counts what is slower (`+Inf`).
pub const BOUNDS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// [`BOUNDS`] in nanoseconds, compared with a duration's without a conversion to `f64`.
const BOUNDS_NS: [u64; BOUNDS.len()] = {
    let mut ns = [0; BOUNDS.len()];
    let mut i = 0;
    while i < BOUNDS.len() {
        ns[i] = (BOUNDS[i] * 1e9 + 0.5) as u64;
        i += 1;
    }
    ns
};

const BUCKETS: usize = BOUNDS.len() + 1;

/// One pool's histogram, as the sessions of every worker add to it.
#[derive(Default)]
pub struct Latency {
    /// Observations per bucket, not cumulative (the last is past every bound).
    buckets: [AtomicU64; BUCKETS],
    /// In microseconds: nanoseconds would wrap after 213 days of a million requests a second that
    /// take a millisecond each, microseconds after 584 years.
    sum_us: AtomicU64,
}

impl Latency {
    /// Observations so far (the `_count`).
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// One observation at once (the data path counts in a step's [`LocalLatency`]).
    #[cfg(test)]
    pub fn observe(&self, took: Duration) {
        let mut local = LocalLatency::default();
        local.observe(took);
        local.flush(self);
    }
}

/// Observations not yet added to a [`Latency`].
#[derive(Default)]
pub struct LocalLatency {
    counts: [u64; BUCKETS],
    /// One bit per bucket with a count: a flush adds to those only.
    touched: u32,
    /// Nanoseconds not yet added (a flush adds whole microseconds and keeps the rest).
    sum_ns: u64,
}

impl LocalLatency {
    #[inline]
    pub fn observe(&mut self, took: Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        // The usual latency falls in the first few buckets: a scan from the bottom finds it soonest.
        let at = BOUNDS_NS
            .iter()
            .position(|&bound| ns <= bound)
            .unwrap_or(BOUNDS.len());
        self.counts[at] += 1;
        self.touched |= 1 << at;
        self.sum_ns = self.sum_ns.saturating_add(ns);
    }

    /// Adds what was observed to `to` and starts again from nothing.
    #[inline]
    pub fn flush(&mut self, to: &Latency) {
        if self.touched == 0 {
            return;
        }
        while self.touched != 0 {
            let at = self.touched.trailing_zeros() as usize;
            self.touched &= self.touched - 1;
            to.buckets[at].fetch_add(std::mem::take(&mut self.counts[at]), Ordering::Relaxed);
        }
        to.sum_us.fetch_add(self.sum_ns / 1000, Ordering::Relaxed);
        self.sum_ns %= 1000;
    }
}

/// A pool's name and its histogram.
type PoolSeries = (String, Arc<Latency>);

/// A histogram family with a `pool` label, rendered from its pools' [`Latency`] at scrape time.
/// Clones share their series (one is registered, one hands them out).
#[derive(Clone)]
pub struct LatencyFamily {
    desc: Desc,
    /// Every pool's series, from the pool's start on (a pool a reload removed keeps its series, as
    /// prometheus's own vectors do).
    pools: Arc<Mutex<Vec<PoolSeries>>>,
}

impl LatencyFamily {
    pub fn new(name: &str, help: &str) -> Result<LatencyFamily, prometheus::Error> {
        Ok(LatencyFamily {
            desc: Desc::new(
                name.to_string(),
                help.to_string(),
                vec!["pool".to_string()],
                Default::default(),
            )?,
            pools: Default::default(),
        })
    }

    /// The pool's histogram, made on its first use.
    pub fn pool(&self, pool: &str) -> Arc<Latency> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, latency)) = pools.iter().find(|(name, _)| name == pool) {
            return latency.clone();
        }
        let latency = Arc::new(Latency::default());
        pools.push((pool.to_string(), latency.clone()));
        latency
    }
}

impl Collector for LatencyFamily {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut family = MetricFamily::default();
        family.set_name(self.desc.fq_name.clone());
        family.set_help(self.desc.help.clone());
        family.set_field_type(MetricType::HISTOGRAM);
        let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        for (pool, latency) in pools.iter() {
            let mut histogram = Histogram::default();
            // The count is the buckets' total, read once: `_count` and the `+Inf` bucket agree
            // however the data path adds meanwhile.
            let mut count = 0;
            let mut buckets = Vec::with_capacity(BOUNDS.len());
            for (bound, observed) in BOUNDS.iter().zip(&latency.buckets) {
                count += observed.load(Ordering::Relaxed);
                let mut bucket = Bucket::default();
                bucket.set_upper_bound(*bound);
                bucket.set_cumulative_count(count);
                buckets.push(bucket);
            }
            count += latency.buckets[BOUNDS.len()].load(Ordering::Relaxed);
            histogram.set_bucket(buckets);
            histogram.set_sample_count(count);
            histogram.set_sample_sum(latency.sum_us.load(Ordering::Relaxed) as f64 / 1e6);
            let mut label = LabelPair::default();
            label.set_name("pool".to_string());
            label.set_value(pool.clone());
            let mut metric = Metric::default();
            metric.set_label(vec![label]);
            metric.set_histogram(histogram);
            family.mut_metric().push(metric);
        }
        vec![family]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_bucket_of_their_bound_and_reach_the_pool_only_when_flushed() {
        let latency = Latency::default();
        let mut local = LocalLatency::default();
        for micros in [50, 100, 101, 300, 300, 20_000_000] {
            local.observe(Duration::from_micros(micros));
        }
        assert_eq!(latency.count(), 0);
        local.flush(&latency);
        local.flush(&latency);
        let at = |i: usize| latency.buckets[i].load(Ordering::Relaxed);
        // 50 and 100 µs are within 100 µs (bounds are inclusive, as Prometheus's `le`); 101 µs
        // is within 250 µs, 300 µs within 500 µs, 20 s past every bound.
        assert_eq!((at(0), at(1), at(2), at(16)), (2, 1, 2, 1));
        assert_eq!(latency.count(), 6);
        assert_eq!(
            latency.sum_us.load(Ordering::Relaxed),
            50 + 100 + 101 + 300 + 300 + 20_000_000
        );
    }

    #[test]
    fn the_sum_keeps_what_is_short_of_a_microsecond_for_the_next_flush() {
        let latency = Latency::default();
        let mut local = LocalLatency::default();
        for _ in 0..3 {
            local.observe(Duration::from_nanos(1_400));
            local.flush(&latency);
        }
        // 4.2 µs in all: 1 + 1 (2.8 µs, 0.8 kept) + 2 (2.2 µs).
        assert_eq!(latency.sum_us.load(Ordering::Relaxed), 4);
        assert_eq!(local.sum_ns, 200);
    }

    #[test]
    fn a_sum_past_what_nanoseconds_can_count_is_still_right() {
        // 584 years of nanoseconds fill a u64: a busy pool's sum gets there in months.
        let family = LatencyFamily::new("x_seconds", "help").unwrap();
        let latency = family.pool("main");
        let long = Duration::from_secs(10_000_000_000);
        latency.observe(long);
        latency.observe(long);
        let families = family.collect();
        let sum = families[0].get_metric()[0].get_histogram().get_sample_sum();
        assert_eq!(sum, 2e10);
    }

    #[test]
    fn a_scrape_shows_cumulative_buckets_a_count_and_the_sum_in_seconds() {
        let family = LatencyFamily::new("x_seconds", "help").unwrap();
        let latency = family.pool("main");
        assert!(Arc::ptr_eq(&latency, &family.pool("main")));
        latency.observe(Duration::from_micros(200));
        latency.observe(Duration::from_millis(3));
        latency.observe(Duration::from_secs(11));
        let families = family.collect();
        let metric = &families[0].get_metric()[0];
        assert_eq!(metric.get_label()[0].value(), "main");
        let histogram = metric.get_histogram();
        let cumulative: Vec<u64> = histogram
            .get_bucket()
            .iter()
            .map(|b| b.cumulative_count())
            .collect();
        assert_eq!(
            cumulative,
            [0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2],
            "bounds {BOUNDS:?}"
        );
        assert_eq!(histogram.get_sample_count(), 3);
        assert!((histogram.get_sample_sum() - 11.0032).abs() < 1e-9);
    }
}
