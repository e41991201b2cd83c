//! Prometheus metrics: request counts and latencies by route and status,
//! and how well the object store's group commit shares its commits.
//! A registry per server (not a global) so several servers can live in one
//! test process.

use std::sync::Mutex;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use nuage_store::Store;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub listener: String,
    pub method: String,
    pub route: String,
    pub status: u16,
}

type HistogramFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub listener: String,
    /// `per_ip`, `header_read`, `idle`, `body_stall` or `send_stall`.
    pub limit: String,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<RouteLabels, Counter>,
    latency: HistogramFamily,
    limits: Family<LimitLabels, Counter>,
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    ])
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("nuage");
        let requests = Family::<RouteLabels, Counter>::default();
        let latency: HistogramFamily = Family::new_with_constructor(latency_histogram);
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route and status",
            latency.clone(),
        );
        let limits = Family::<LimitLabels, Counter>::default();
        registry.register(
            "http_limit_hits",
            "Connections refused or closed, and requests ended, by a listener's \
             connection limits (crate::listener)",
            limits.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            requests,
            latency,
            limits,
        }
    }
}

impl Metrics {
    /// Adds the store's own counters to what [`Metrics::render`] shows.
    pub fn watch_store(&self, store: &Store) {
        if let Ok(mut reg) = self.registry.lock() {
            reg.register_collector(Box::new(StoreCollector(store.clone())));
        }
    }

    pub fn observe(&self, labels: RouteLabels, seconds: f64) {
        self.requests.get_or_create(&labels).inc();
        self.latency.get_or_create(&labels).observe(seconds);
    }

    /// A connection or request ended by one of a listener's limits.
    pub fn limit_hit(&self, listener: &str, limit: &str) {
        self.limits
            .get_or_create(&LimitLabels {
                listener: listener.to_string(),
                limit: limit.to_string(),
            })
            .inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Ok(reg) = self.registry.lock() {
            let _ = encode(&mut out, &reg);
        }
        out
    }
}

struct StoreCollector(Store);

impl std::fmt::Debug for StoreCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreCollector")
    }
}

impl Collector for StoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.object_commit_stats();
        for (name, help, value) in [
            (
                "object_commit_puts",
                "Object versions written through the group committer",
                s.puts,
            ),
            (
                "object_commit_transactions",
                "Transactions the group committer used for them",
                s.transactions,
            ),
        ] {
            let m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(m)?;
        }
        Ok(())
    }
}
