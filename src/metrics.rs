//! Prometheus metrics. Labels are low-cardinality (kind, reason): never object
//! names, never anything secret.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: String,
    pub reason: String,
}

pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Family<KindLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Family<KindLabels, Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("agentid");
        let reconciles = Family::<KindLabels, Counter>::default();
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        let reconcile_duration = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 14))
        });
        registry.register("reconciles", "Reconciliations by kind", reconciles.clone());
        registry.register("reconcile_errors", "Failed reconciliations by kind and reason", reconcile_errors.clone());
        registry.register("reconcile_duration_seconds", "Reconciliation latency by kind", reconcile_duration.clone());
        Self { registry, reconciles, reconcile_errors, reconcile_duration }
    }
}

impl Metrics {
    pub fn reconciled(&self, kind: &str, seconds: f64) {
        let labels = KindLabels { kind: kind.to_string() };
        self.reconciles.get_or_create(&labels).inc();
        self.reconcile_duration.get_or_create(&labels).observe(seconds);
    }

    pub fn reconcile_failed(&self, kind: &str, reason: String) {
        self.reconcile_errors.get_or_create(&ErrorLabels { kind: kind.to_string(), reason }).inc();
    }

    /// The registry in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
