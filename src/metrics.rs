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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdmissionLabels {
    pub mode: String,
    pub verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    pub mode: String,
    pub rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExceptionLabels {
    pub exception: String,
    pub rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabels {
    pub mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub decision: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: String,
    pub reason: String,
}

pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Family<KindLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Family<KindLabels, Histogram>,
    pub admission_requests: Family<AdmissionLabels, Counter>,
    pub admission_violations: Family<RuleLabels, Counter>,
    pub admission_exceptions: Family<ExceptionLabels, Counter>,
    pub admission_bad_requests: Family<ModeLabels, Counter>,
    pub admission_duration: Family<ModeLabels, Histogram>,
    pub task_revocations: Family<ReasonLabels, Counter>,
    pub tokens_issued: Counter,
    pub grant_transitions: Family<ReasonLabels, Counter>,
    pub token_refusals: Family<ReasonLabels, Counter>,
    pub connections_refused: Family<ListenerLabels, Counter>,
    pub connections_cut: Family<ListenerLabels, Counter>,
    pub access_checks_throttled: Family<ReasonLabels, Counter>,
    pub decisions: Family<DecisionLabels, Counter>,
    pub decision_duration: Histogram,
    /// The audit trail's metrics (`agentid_audit_*`).
    pub audit: crate::audit::AuditMetrics,
    /// The background scan's metrics (`agentid_scan_*`).
    pub scan: crate::scan::ScanMetrics,
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
        let admission_requests = Family::<AdmissionLabels, Counter>::default();
        let admission_violations = Family::<RuleLabels, Counter>::default();
        let admission_exceptions = Family::<ExceptionLabels, Counter>::default();
        let admission_bad_requests = Family::<ModeLabels, Counter>::default();
        let admission_duration = Family::<ModeLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.00001, 2.0, 18))
        });
        registry.register("admission_requests", "Admission reviews by mode and verdict", admission_requests.clone());
        registry.register(
            "admission_violations",
            "Rule violations seen by admission, by mode and rule",
            admission_violations.clone(),
        );
        registry.register("admission_exceptions", "Violations waived by an exception", admission_exceptions.clone());
        registry.register(
            "admission_bad_requests",
            "Malformed AdmissionReviews refused with 400",
            admission_bad_requests.clone(),
        );
        registry.register(
            "admission_duration_seconds",
            "Time to judge one AdmissionReview",
            admission_duration.clone(),
        );
        let task_revocations = Family::<ReasonLabels, Counter>::default();
        let tokens_issued = Counter::default();
        let grant_transitions = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "grant_transitions",
            "ToolGrant phase changes (GrantActivated, GrantExpired, GrantRevoked, GrantPending)",
            grant_transitions.clone(),
        );
        let token_refusals = Family::<ReasonLabels, Counter>::default();
        registry.register("task_tokens_issued", "Task tokens issued by the token broker", tokens_issued.clone());
        registry.register("task_token_refusals", "Task token requests refused, by reason", token_refusals.clone());
        registry.register(
            "task_revocations",
            "AgentTask anchors deleted, revoking every token of the task, by reason (completed, expired, suspended, deleted, agent_changed)",
            task_revocations.clone(),
        );
        let connections_refused = Family::<ListenerLabels, Counter>::default();
        let connections_cut = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections closed on accept, by listener and reason (max_connections, max_connections_per_peer, accept_error)",
            connections_refused.clone(),
        );
        registry.register(
            "connections_cut",
            "Connections closed early, by listener and reason (handshake_failed, handshake_timeout, idle_timeout, close_timeout: requests still unanswered 10 s after the connection was asked to close)",
            connections_cut.clone(),
        );
        let access_checks_throttled = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "access_checks_throttled",
            "Requests refused because they would exceed a budget of SubjectAccessReviews or TokenReviews, by reason",
            access_checks_throttled.clone(),
        );
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "decisions",
            "Decisions of the decision point, by decision (allow, deny, approval-required) and first reason",
            decisions.clone(),
        );
        let decision_duration = Histogram::new(exponential_buckets(0.000_001, 2.0, 24));
        registry.register(
            "decision_duration_seconds",
            "Time to decide one tool call (verification, decision, budgets, log)",
            decision_duration.clone(),
        );
        let audit = crate::audit::AuditMetrics::register(&mut registry);
        let scan = crate::scan::ScanMetrics::register(&mut registry);
        Self {
            audit,
            scan,
            registry,
            decisions,
            decision_duration,
            connections_refused,
            connections_cut,
            access_checks_throttled,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            admission_requests,
            admission_violations,
            admission_exceptions,
            admission_bad_requests,
            admission_duration,
            task_revocations,
            tokens_issued,
            grant_transitions,
            token_refusals,
        }
    }
}

impl Metrics {
    pub fn decision(&self, decision: &str, reason: &str, seconds: f64) {
        let labels = DecisionLabels { decision: decision.into(), reason: reason.into() };
        self.decisions.get_or_create(&labels).inc();
        self.decision_duration.observe(seconds);
    }

    pub fn connection_refused(&self, listener: &str, reason: &str) {
        let labels = ListenerLabels { listener: listener.into(), reason: reason.into() };
        self.connections_refused.get_or_create(&labels).inc();
    }

    pub fn connection_closed(&self, listener: &str, reason: &str) {
        let labels = ListenerLabels { listener: listener.into(), reason: reason.into() };
        self.connections_cut.get_or_create(&labels).inc();
    }

    pub fn access_check_throttled(&self, reason: &str) {
        self.access_checks_throttled.get_or_create(&ReasonLabels { reason: reason.into() }).inc();
    }

    pub fn reconciled(&self, kind: &str, seconds: f64) {
        let labels = KindLabels { kind: kind.to_string() };
        self.reconciles.get_or_create(&labels).inc();
        self.reconcile_duration.get_or_create(&labels).observe(seconds);
    }

    pub fn reconcile_failed(&self, kind: &str, reason: String) {
        self.reconcile_errors.get_or_create(&ErrorLabels { kind: kind.to_string(), reason }).inc();
    }

    pub fn admission_reviewed(&self, mode: &str, verdict: &str, seconds: f64) {
        self.admission_requests.get_or_create(&AdmissionLabels { mode: mode.into(), verdict: verdict.into() }).inc();
        self.admission_duration.get_or_create(&ModeLabels { mode: mode.into() }).observe(seconds);
    }

    pub fn admission_violation(&self, mode: &str, rule: &str) {
        self.admission_violations.get_or_create(&RuleLabels { mode: mode.into(), rule: rule.into() }).inc();
    }

    pub fn admission_exception_used(&self, exception: &str, rule: &str) {
        self.admission_exceptions
            .get_or_create(&ExceptionLabels { exception: exception.into(), rule: rule.into() })
            .inc();
    }

    pub fn admission_bad_request(&self, mode: &str) {
        self.admission_bad_requests.get_or_create(&ModeLabels { mode: mode.into() }).inc();
    }

    /// An AgentTask's anchor was deleted: every token issued for the task stops authenticating.
    pub fn grant_transition(&self, reason: &str) {
        self.grant_transitions.get_or_create(&ReasonLabels { reason: reason.into() }).inc();
    }

    pub fn token_issued(&self) {
        self.tokens_issued.inc();
    }

    pub fn token_refused(&self, reason: &str) {
        self.token_refusals.get_or_create(&ReasonLabels { reason: reason.into() }).inc();
    }

    pub fn task_revoked(&self, reason: &str) {
        self.task_revocations.get_or_create(&ReasonLabels { reason: reason.into() }).inc();
    }

    /// The registry in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
