//! `agentid decide` over manifests: the objects of a pull request have no status yet, so they are given
//! the status agentid's controllers would give them at `now` — agents Ready (their ServiceAccount in
//! place) unless suspended, grants in the phase [`crate::core::grant::phase`] computes, tasks Active from
//! `now` for their ttl unless completed or their agent is suspended — and the same decision runs over them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::snapshot::Snapshot;
use crate::api::{
    AgentIdentity, AgentIdentityStatus, AgentTask, AgentTaskStatus, TaskPhase, ToolGrant, ToolGrantStatus, duration,
};
use crate::core::conditions::READY;

fn ready(now: Timestamp) -> Condition {
    Condition {
        type_: READY.into(),
        status: "True".into(),
        reason: "IdentityReady".into(),
        message: String::new(),
        observed_generation: None,
        last_transition_time: Time(now),
    }
}

/// The snapshot the objects would give once reconciled at `now`. Objects without a namespace are put in
/// `default_namespace`; each gets a uid derived from its name.
pub fn reconciled(
    mut agents: Vec<AgentIdentity>,
    mut grants: Vec<ToolGrant>,
    mut tasks: Vec<AgentTask>,
    default_namespace: &str,
    trust_domain: &str,
    now: Timestamp,
) -> Snapshot {
    let fill = |m: &mut kube::api::ObjectMeta, kind: &str| {
        let ns = m.namespace.get_or_insert_with(|| default_namespace.to_string()).clone();
        m.uid.get_or_insert_with(|| format!("{kind}/{ns}/{}", m.name.as_deref().unwrap_or_default()));
        m.generation.get_or_insert(1);
    };
    for a in &mut agents {
        fill(&mut a.metadata, "agent");
        a.status = Some(AgentIdentityStatus {
            service_account_name: Some(a.service_account_name()),
            conditions: if a.spec.suspended { Vec::new() } else { vec![ready(now)] },
            ..Default::default()
        });
    }
    let agent_of = |ns: &str, name: &str| {
        agents.iter().find(|a| a.metadata.namespace.as_deref() == Some(ns) && a.metadata.name.as_deref() == Some(name))
    };
    for g in &mut grants {
        fill(&mut g.metadata, "grant");
        let ns = g.metadata.namespace.clone().unwrap_or_default();
        let (phase, ..) = crate::core::grant::phase(g, agent_of(&ns, &g.spec.agent_ref.name), now);
        g.status = Some(ToolGrantStatus { phase: Some(phase), ..Default::default() });
    }
    for t in &mut tasks {
        fill(&mut t.metadata, "task");
        let ns = t.metadata.namespace.clone().unwrap_or_default();
        let suspended = agent_of(&ns, &t.spec.agent_ref.name).is_none_or(|a| a.spec.suspended);
        let ttl = duration::parse(&t.spec.ttl).ok().and_then(|d| SignedDuration::try_from(d).ok());
        let phase = match (t.spec.completed, suspended) {
            (true, _) => TaskPhase::Completed,
            (false, true) => TaskPhase::Revoked,
            (false, false) => TaskPhase::Active,
        };
        t.status = Some(AgentTaskStatus {
            phase: Some(phase),
            issued_at: Some(Time(now)),
            expires_at: ttl.and_then(|d| now.checked_add(d).ok()).map(Time),
            anchor: (phase == TaskPhase::Active)
                .then(|| crate::core::task::anchor_name(t.metadata.name.as_deref().unwrap_or_default())),
            ..Default::default()
        });
    }
    Snapshot::build(&agents, &grants, &tasks, trust_domain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::pdp::{DecideConfig, DecisionRequest, MemoryUsage, Outcome, decide};

    fn parse<T: serde::de::DeserializeOwned>(y: &str) -> T {
        serde_norway::from_str(y).unwrap()
    }

    #[test]
    fn manifests_decide_as_they_would_once_reconciled() {
        let agent: AgentIdentity = parse(
            "apiVersion: agentid.dev/v1alpha1\nkind: AgentIdentity\nmetadata: {name: bot}\nspec: {owner: t, audiences: [x]}",
        );
        let grant: ToolGrant = parse(
            "apiVersion: agentid.dev/v1alpha1\nkind: ToolGrant\nmetadata: {name: g}\nspec: {agentRef: {name: bot}, tools: [{name: crm, actions: [read], destinations: ['https://crm/api/'], maxDataSensitivity: internal}]}",
        );
        let now = Timestamp::from_second(1_900_000_000).unwrap();
        let snap = reconciled(vec![agent.clone()], vec![grant.clone()], vec![], "agents", "cluster.local", now);
        let req = |dest: &str| DecisionRequest {
            namespace: "agents".into(),
            agent: "bot".into(),
            tool: "crm".into(),
            action: "read".into(),
            destination: Some(dest.into()),
            ..Default::default()
        };
        let d = decide(&req("https://crm/api/x"), &snap, &MemoryUsage::default(), now, &DecideConfig::default());
        assert_eq!(d.outcome, Outcome::Allow, "{d:?}");
        let d = decide(&req("https://crm/admin"), &snap, &MemoryUsage::default(), now, &DecideConfig::default());
        assert_eq!(d.outcome, Outcome::Deny);
        // An expired grant, or a suspended agent, denies.
        let mut expired = grant;
        expired.spec.valid_until = Some(Time(Timestamp::from_second(1_800_000_000).unwrap()));
        let snap = reconciled(vec![agent], vec![expired], vec![], "agents", "cluster.local", now);
        let d = decide(&req("https://crm/api/x"), &snap, &MemoryUsage::default(), now, &DecideConfig::default());
        assert_eq!(d.outcome, Outcome::Deny);
    }
}
