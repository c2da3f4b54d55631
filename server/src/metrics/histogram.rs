//! A histogram of durations with fixed buckets, observed with two atomic
//! adds and no lock.
//!
//! prometheus-client's own histogram takes a mutex on every observation;
//! the outbox wait is observed once per batch a connection writes, on the
//! relay path, where every connection would meet on that one lock.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Seconds; cheap to clone (every clone observes into the same buckets).
#[derive(Debug, Clone)]
pub struct DurationHistogram {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Upper bounds in seconds, ascending; a last bucket, +Inf, follows.
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative): `bounds.len() + 1`.
    counts: Box<[AtomicU64]>,
    /// The sum of every observation, in nanoseconds (584 years fit).
    sum_nanos: AtomicU64,
}

impl DurationHistogram {
    /// A histogram with these upper bounds, in seconds, ascending.
    pub fn new(bounds: &'static [f64]) -> Self {
        debug_assert!(bounds.windows(2).all(|pair| pair[0] < pair[1]));
        Self {
            inner: Arc::new(Inner {
                bounds,
                counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
                sum_nanos: AtomicU64::new(0),
            }),
        }
    }

    pub fn observe(&self, duration: Duration) {
        let seconds = duration.as_secs_f64();
        let bucket = self
            .inner
            .bounds
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(self.inner.bounds.len());
        self.inner.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        self.inner.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// How many observations there were.
    #[cfg(test)]
    pub fn count(&self) -> u64 {
        self.inner
            .counts
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .sum()
    }
}

impl TypedMetric for DurationHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for DurationHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = self
            .inner
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.inner.counts.iter())
            .map(|(bound, count)| (bound, count.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, count)| count).sum();
        let sum = self.inner.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    #[test]
    fn observations_land_in_their_buckets_and_render_cumulatively() {
        let histogram = DurationHistogram::new(&[0.001, 0.01, 1.0]);
        histogram.observe(Duration::from_micros(500));
        histogram.observe(Duration::from_millis(1));
        histogram.observe(Duration::from_millis(5));
        histogram.observe(Duration::from_secs(3));
        let mut registry = Registry::default();
        registry.register("wait_seconds", "a wait", histogram.clone());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            r#"wait_seconds_bucket{le="0.001"} 2"#,
            r#"wait_seconds_bucket{le="0.01"} 3"#,
            r#"wait_seconds_bucket{le="1.0"} 3"#,
            r#"wait_seconds_bucket{le="+Inf"} 4"#,
            "wait_seconds_count 4",
            "wait_seconds_sum 3.0065",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
        assert_eq!(histogram.count(), 4);
    }
}
