//! Metrics of the audit trail (registered into [`crate::metrics::Metrics`]).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::metrics::ReasonLabels;

/// Cheap to clone: clones count into the same series.
#[derive(Clone, Default)]
pub struct AuditMetrics {
    /// Records appended to the trail.
    pub written: Counter,
    /// Records of non-blocking events (decisions) not written, by reason.
    pub dropped: Family<ReasonLabels, Counter>,
    /// Must-record events that could not be recorded (the action they belong to was refused), by reason.
    pub failures: Family<ReasonLabels, Counter>,
    /// Checkpoints, by result (signed, anchored, anchor_failed, anchor_dropped).
    pub checkpoints: Family<ReasonLabels, Counter>,
    /// Audit events received from the kube-apiserver, by outcome (recorded, ignored, malformed).
    pub apiserver_events: Family<ReasonLabels, Counter>,
}

impl AuditMetrics {
    /// The metrics, registered as `agentid_audit_*`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = AuditMetrics::default();
        registry.register("audit_records_written", "Records appended to the audit trail", m.written.clone());
        registry.register(
            "audit_records_dropped",
            "Decision records not written to the audit trail, by reason (queue_full, closed, write_error, failed)",
            m.dropped.clone(),
        );
        registry.register(
            "audit_record_failures",
            "Must-record events (task tokens, approvals) that could not be recorded, so the action was refused, by reason",
            m.failures.clone(),
        );
        registry.register(
            "audit_checkpoints",
            "Audit checkpoints by result (signed, anchored, anchor_failed, anchor_dropped)",
            m.checkpoints.clone(),
        );
        registry.register(
            "audit_apiserver_events",
            "Audit events received from the kube-apiserver, by outcome (recorded: an agent's call; ignored: anyone else's or an earlier stage; malformed: a batch that did not parse)",
            m.apiserver_events.clone(),
        );
        m
    }

    pub fn apiserver_event(&self, outcome: &str) {
        self.apiserver_events.get_or_create(&ReasonLabels { reason: outcome.into() }).inc();
    }

    pub fn dropped(&self, reason: &str) {
        self.dropped.get_or_create(&ReasonLabels { reason: reason.into() }).inc();
    }

    pub fn failed(&self, reason: &str) {
        self.failures.get_or_create(&ReasonLabels { reason: reason.into() }).inc();
    }

    pub fn checkpoint(&self, result: &str) {
        self.checkpoints.get_or_create(&ReasonLabels { reason: result.into() }).inc();
    }
}
