//! Admission records: which audit records one admission judgement makes. A denial, a warning or an
//! audit-mode finding is one record per judged object (its rules in `reasons`, sorted and without
//! repeats); each exception applied is one record more. Clean objects and dry runs (GitOps diffs run
//! server-side dry runs constantly) record nothing.
//!
//! Fields: `actor` the user who wrote the object, `namespace` its namespace, `action` the operation
//! (`CREATE`, `UPDATE`), `destination` the object as `<Kind>/<name>`, `decision` `deny` / `warn` /
//! `audit` / `excepted`, `reasons` the rule IDs (an exception record: its rule and `exception=<name>`),
//! `request` the AdmissionReview uid. Never a value from the object.

use super::{Event, Kind};
use crate::core::admission::review::Judgement;
use crate::core::admission::{Enforcement, Verdict};

/// The records of `j`, judged in `mode` for `user` (AdmissionReview `uid`, `operation`, `dry_run`).
pub fn admission_events(
    mode: Enforcement,
    user: &str,
    uid: &str,
    operation: &str,
    dry_run: bool,
    j: &Judgement,
) -> Vec<Event> {
    let Some((kind, namespace, name)) = &j.subject else { return Vec::new() };
    if dry_run {
        return Vec::new();
    }
    let base = |k: Kind, decision: &str| {
        let mut e = Event::new(k);
        e.actor = Some(user.to_string()).filter(|u| !u.is_empty());
        e.namespace = Some(namespace.clone()).filter(|n| !n.is_empty());
        e.action = Some(operation.to_string()).filter(|o| !o.is_empty());
        e.destination = Some(format!("{kind}/{name}"));
        e.decision = Some(decision.to_string());
        e.request = Some(uid.to_string()).filter(|u| !u.is_empty());
        e
    };
    let mut out = Vec::new();
    if !j.violations.is_empty() {
        let (k, decision) = match (j.verdict, mode) {
            (Verdict::Deny, _) => (Kind::AdmissionDenied, "deny"),
            (_, Enforcement::Audit) => (Kind::AdmissionAudited, "audit"),
            _ => (Kind::AdmissionWarned, "warn"),
        };
        let mut e = base(k, decision);
        let mut rules: Vec<String> = j.violations.iter().map(|v| v.rule.as_str().to_string()).collect();
        rules.sort();
        rules.dedup();
        e.reasons = rules;
        out.push(e);
    }
    for u in &j.exceptions_used {
        let mut e = base(Kind::ExceptionUsed, "excepted");
        e.reasons = vec![u.rule.as_str().to_string(), format!("exception={}", u.exception)];
        out.push(e);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::admission::exceptions::ExceptionUse;
    use crate::core::admission::review::AdmissionResponse;
    use crate::core::admission::rules::{RuleId, Violation};

    fn judgement(verdict: Verdict, rules: &[RuleId], excepted: &[RuleId]) -> Judgement {
        Judgement {
            response: AdmissionResponse::default(),
            verdict,
            subject: Some(("Deployment".into(), "shop".into(), "web".into())),
            violations: rules
                .iter()
                .map(|r| Violation { rule: *r, path: "spec".into(), message: "m with s3cret".into() })
                .collect(),
            exceptions_used: excepted
                .iter()
                .map(|r| ExceptionUse { exception: "legacy-db".into(), rule: *r, path: "p".into(), reason: "r".into() })
                .collect(),
        }
    }

    #[test]
    fn one_record_per_judged_object_and_one_per_exception() {
        let j = judgement(Verdict::Deny, &[RuleId::ALL[1], RuleId::ALL[0], RuleId::ALL[1]], &[RuleId::ALL[2]]);
        let ev = admission_events(Enforcement::Enforce, "alice", "uid-1", "CREATE", false, &j);
        assert_eq!(ev.len(), 2);
        assert_eq!((ev[0].kind, ev[0].decision.as_deref()), (Kind::AdmissionDenied, Some("deny")));
        let mut want = vec![RuleId::ALL[0].as_str().to_string(), RuleId::ALL[1].as_str().to_string()];
        want.sort();
        assert_eq!(ev[0].reasons, want, "sorted, without repeats");
        assert_eq!(ev[0].destination.as_deref(), Some("Deployment/web"));
        assert_eq!(
            (ev[0].actor.as_deref(), ev[0].namespace.as_deref(), ev[0].request.as_deref()),
            (Some("alice"), Some("shop"), Some("uid-1"))
        );
        assert_eq!(ev[1].kind, Kind::ExceptionUsed);
        assert_eq!(ev[1].reasons, vec![RuleId::ALL[2].as_str().to_string(), "exception=legacy-db".into()]);
        let text = format!("{ev:?}");
        assert!(!text.contains("s3cret"), "no message (and so no value) is recorded");
    }

    #[test]
    fn modes_dry_runs_and_clean_objects() {
        let warn = judgement(Verdict::Warn, &[RuleId::ALL[0]], &[]);
        assert_eq!(
            admission_events(Enforcement::Warn, "u", "1", "CREATE", false, &warn)[0].kind,
            Kind::AdmissionWarned
        );
        let audit = judgement(Verdict::Allow, &[RuleId::ALL[0]], &[]);
        assert_eq!(
            admission_events(Enforcement::Audit, "u", "1", "CREATE", false, &audit)[0].kind,
            Kind::AdmissionAudited
        );
        let deny = judgement(Verdict::Deny, &[RuleId::ALL[0]], &[]);
        assert!(admission_events(Enforcement::Enforce, "u", "1", "CREATE", true, &deny).is_empty(), "dry run");
        let clean = judgement(Verdict::Allow, &[], &[]);
        assert!(admission_events(Enforcement::Enforce, "u", "1", "CREATE", false, &clean).is_empty());
        let mut other = deny.clone();
        other.subject = None;
        assert!(admission_events(Enforcement::Enforce, "u", "1", "CREATE", false, &other).is_empty());
    }
}
