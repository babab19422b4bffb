//! Time-boxed exceptions to admission rules.
//!
//! Exceptions live in operator configuration (a file, typically a ConfigMap in
//! the operator's namespace that only the platform team can write) — never in
//! an annotation on the workload, which its author could set themselves. Each
//! names the workload, the rules, a reason and an expiry; an expired exception
//! stops applying, and every use is reported so it can be recorded.
//!
//! ```yaml
//! exceptions:
//!   - name: legacy-billing-db          # id used in logs and metrics
//!     namespace: agents
//!     workload: billing*               # exact name, or a prefix glob: `billing*` also covers the
//!                                      # Deployment's ReplicaSets and Pods, which are judged too
//!     kind: Deployment                 # optional: only this kind (then not its ReplicaSets and Pods)
//!     rules: [static-secret-env]
//!     reason: "DB credentials move to a ToolGrant in PAY-1234"
//!     approvedBy: security@example.com # optional
//!     expires: "2027-01-31T00:00:00Z"
//! ```

use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::rules::{RuleId, Violation};
use super::workload::Workload;

/// One exception.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Exception {
    pub name: String,
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub workload: String,
    pub rules: Vec<String>,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
    pub expires: Timestamp,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExceptionSet {
    #[serde(default)]
    pub exceptions: Vec<Exception>,
}

/// An exception that waived one violation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExceptionUse {
    pub exception: String,
    pub rule: RuleId,
    pub path: String,
    pub reason: String,
}

impl ExceptionSet {
    /// Parses and validates an exception file (YAML or JSON).
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let set: ExceptionSet = serde_norway::from_str(text).map_err(|e| format!("invalid exceptions: {e}"))?;
        for e in &set.exceptions {
            if e.name.trim().is_empty() || e.namespace.trim().is_empty() || e.workload.trim().is_empty() {
                return Err(format!("exception {:?}: name, namespace and workload are required", e.name));
            }
            if e.reason.trim().is_empty() {
                return Err(format!("exception {:?}: a reason is required", e.name));
            }
            if e.rules.is_empty() {
                return Err(format!("exception {:?}: list the rules it waives", e.name));
            }
            if let Some(bad) = e.rules.iter().find(|r| RuleId::parse(r).is_none()) {
                return Err(format!("exception {:?}: unknown rule {bad:?}", e.name));
            }
        }
        Ok(set)
    }

    /// Splits `violations` into those that remain and those an unexpired exception waives.
    pub fn apply(
        &self,
        w: &Workload,
        violations: Vec<Violation>,
        now: Timestamp,
    ) -> (Vec<Violation>, Vec<ExceptionUse>) {
        if self.exceptions.is_empty() || violations.is_empty() {
            return (violations, Vec::new());
        }
        let ns = w.namespace.as_deref().unwrap_or("default");
        let live: Vec<&Exception> = self
            .exceptions
            .iter()
            .filter(|e| e.expires > now && e.namespace == ns && e.kind.as_deref().is_none_or(|k| k == w.kind))
            .filter(|e| match e.workload.strip_suffix('*') {
                Some(prefix) => w.name.starts_with(prefix),
                None => e.workload == w.name,
            })
            .collect();
        let mut remaining = Vec::new();
        let mut used = Vec::new();
        for v in violations {
            match live.iter().find(|e| e.rules.iter().any(|r| r == v.rule.as_str())) {
                Some(e) => used.push(ExceptionUse {
                    exception: e.name.clone(),
                    rule: v.rule,
                    path: v.path,
                    reason: e.reason.clone(),
                }),
                None => remaining.push(v),
            }
        }
        (remaining, used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::admission::rules::{StaticDirectory, evaluate};
    use crate::core::admission::workload::from_object;
    use serde_json::json;

    fn workload() -> Workload {
        from_object(&json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "billing", "namespace": "agents"},
            "spec": {"template": {"spec": {"serviceAccountName": "billing", "containers": [{"name": "app", "image": "x",
                "env": [{"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "pw"}}}]}]}}}
        }))
        .unwrap()
        .unwrap()
    }

    const FILE: &str = r#"
exceptions:
  - name: legacy-db
    namespace: agents
    kind: Deployment
    workload: bill*
    rules: [static-secret-env]
    reason: moving to a ToolGrant in PAY-1234
    expires: "2030-01-01T00:00:00Z"
"#;

    #[test]
    fn unexpired_matching_exception_waives_and_is_reported() {
        let set = ExceptionSet::parse(FILE).unwrap();
        let w = workload();
        let v = evaluate(&w, &StaticDirectory::default());
        assert_eq!(v.len(), 1);
        let now = "2029-06-01T00:00:00Z".parse().unwrap();
        let (left, used) = set.apply(&w, v, now);
        assert!(left.is_empty());
        assert_eq!(used[0].exception, "legacy-db");
        assert_eq!(used[0].rule, RuleId::StaticSecretEnv);
    }

    #[test]
    fn expired_or_non_matching_exceptions_do_not_apply() {
        let set = ExceptionSet::parse(FILE).unwrap();
        let w = workload();
        let after = "2030-01-01T00:00:00Z".parse().unwrap();
        let (left, used) = set.apply(&w, evaluate(&w, &StaticDirectory::default()), after);
        assert_eq!((left.len(), used.len()), (1, 0), "expired at the instant of expiry");
        let mut other = w.clone();
        other.namespace = Some("other".into());
        let now = "2029-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(set.apply(&other, evaluate(&other, &StaticDirectory::default()), now).0.len(), 1);
        let mut sts = w.clone();
        sts.kind = "StatefulSet".into();
        assert_eq!(set.apply(&sts, evaluate(&sts, &StaticDirectory::default()), now).0.len(), 1);
    }

    #[test]
    fn invalid_files_are_refused_with_reasons() {
        assert!(ExceptionSet::parse("").unwrap().exceptions.is_empty());
        let unknown_rule = FILE.replace("static-secret-env", "no-such-rule");
        assert!(ExceptionSet::parse(&unknown_rule).unwrap_err().contains("no-such-rule"));
        let no_reason = FILE.replace("reason: moving to a ToolGrant in PAY-1234", "reason: ''");
        assert!(ExceptionSet::parse(&no_reason).unwrap_err().contains("reason"));
        let no_expiry = FILE.replace("    expires: \"2030-01-01T00:00:00Z\"\n", "");
        assert!(ExceptionSet::parse(&no_expiry).is_err());
        assert!(ExceptionSet::parse("exceptions: 3").is_err());
    }
}
