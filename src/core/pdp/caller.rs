//! Who is asking: from a verified ServiceAccount token (see [`crate::core::jwt`]) to the agent, and
//! the task, a decision is about — trusting only what agentid itself created.
//!
//! - The token's ServiceAccount must be one agentid created for an agent (its uid as agentid saw it, owned
//!   by that agent's uid): a token of an agent that was deleted and re-created under the same name names
//!   the old ServiceAccount's uid and is refused.
//! - A token bound to a Secret is a task token: the Secret must be the anchor agentid created for a task
//!   of that agent (name and uid), and the token's audiences must be among the task's. Completing the
//!   task deletes the anchor, so the next decision is a deny as soon as the watch event arrives.
//! - Any other token must carry the decision point's own audience; the task, if any, is then the one
//!   the request names.

use super::snapshot::Snapshot;
use crate::core::jwt::ServiceAccountToken;

/// A ServiceAccount agentid created for an agent, as the watch saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountEntry {
    pub uid: String,
    /// The agent it was created for (its `agentid.dev/agent` label).
    pub agent: String,
    /// The uid of the AgentIdentity that owns it.
    pub agent_uid: String,
}

/// An anchor Secret agentid created for a task, as the watch saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnchorEntry {
    pub uid: String,
    /// The AgentTask that owns it.
    pub task: String,
    pub task_uid: String,
}

/// The verified caller of a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub namespace: String,
    pub agent: String,
    pub agent_uid: String,
    /// The agent's SPIFFE ID.
    pub spiffe_id: String,
    /// The task the credential is bound to (task tokens), if any.
    pub task: Option<String>,
    /// The token's id, to join decisions to the apiserver's audit records.
    pub credential_id: Option<String>,
}

/// Identifies the caller of a verified token. `Err` is the explanation of an `unauthenticated` denial.
pub fn identify(
    token: &ServiceAccountToken,
    snap: &Snapshot,
    account: Option<&AccountEntry>,
    anchor: Option<&AnchorEntry>,
    pdp_audience: &str,
) -> Result<Caller, String> {
    let ns = &token.namespace;
    let sa = &token.service_account;
    let account = account.filter(|a| a.uid == sa.uid).ok_or_else(|| {
        format!("ServiceAccount {ns}/{} is not the ServiceAccount of an agent (or it was re-created)", sa.name)
    })?;
    let agent = snap
        .agent(ns, &account.agent)
        .filter(|a| a.uid == account.agent_uid && a.service_account == sa.name)
        .ok_or_else(|| format!("ServiceAccount {ns}/{} belongs to no current agent", sa.name))?;
    let task = match &token.secret {
        Some(secret) => {
            let anchor = anchor
                .filter(|a| a.uid == secret.uid)
                .ok_or_else(|| "the token's task has ended (its anchor is gone)".to_string())?;
            let task = snap
                .task(ns, &anchor.task)
                .filter(|t| {
                    t.uid == anchor.task_uid && t.agent == agent.name && t.anchor.as_deref() == Some(&secret.name)
                })
                .ok_or_else(|| "the token is bound to no current task of this agent".to_string())?;
            if !token.audiences.iter().any(|a| task.audiences.contains(a)) {
                return Err("the task token is not meant for any audience of its task".into());
            }
            Some(task.name.clone())
        }
        None => {
            if !token.audiences.iter().any(|a| a == pdp_audience) {
                return Err(format!("the token is not meant for the decision point (audience {pdp_audience:?})"));
            }
            None
        }
    };
    Ok(Caller {
        namespace: ns.clone(),
        agent: agent.name.clone(),
        agent_uid: agent.uid.clone(),
        spiffe_id: agent.spiffe_id.clone(),
        task,
        credential_id: token.id.clone(),
    })
}

/// Whether what a request says of itself agrees with its credential: a subject, if named, is the
/// caller's agent (its SPIFFE ID or `<namespace>/<name>`), and a task, if named, is the one a task token
/// is bound to. `Err` is the explanation of a `bad-request` denial.
pub fn check_claims(caller: &Caller, subject: Option<&str>, task: Option<&str>) -> Result<(), String> {
    if let Some(subject) = subject
        && subject != caller.spiffe_id
        && subject != format!("{}/{}", caller.namespace, caller.agent)
    {
        return Err("subject.id names another agent than the credential".into());
    }
    if let (Some(bound), Some(named)) = (&caller.task, task)
        && bound != named
    {
        return Err(format!("the request names task {named:?}, the token is bound to task {bound:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::jwt::NameUid;
    use crate::core::pdp::snapshot::fixtures::{active_task, ready_agent};

    fn snapshot() -> Snapshot {
        let mut task = active_task("t1", "bot");
        task.status.as_mut().unwrap().anchor = Some("agentid-task-t1".into());
        Snapshot::build(&[ready_agent("bot")], &[], &[task], "cluster.local")
    }

    fn token(secret: Option<(&str, &str)>, aud: &str) -> ServiceAccountToken {
        ServiceAccountToken {
            namespace: "agents".into(),
            service_account: NameUid { name: "agent-bot".into(), uid: "sa-uid".into() },
            secret: secret.map(|(n, u)| NameUid { name: n.into(), uid: u.into() }),
            audiences: vec![aud.into()],
            expires_at: 0,
            id: Some("jti".into()),
            subject: "system:serviceaccount:agents:agent-bot".into(),
        }
    }

    fn account() -> AccountEntry {
        let snap = snapshot();
        AccountEntry {
            uid: "sa-uid".into(),
            agent: "bot".into(),
            agent_uid: snap.agent("agents", "bot").unwrap().uid.clone(),
        }
    }

    fn anchor() -> AnchorEntry {
        let snap = snapshot();
        AnchorEntry {
            uid: "anchor-uid".into(),
            task: "t1".into(),
            task_uid: snap.task("agents", "t1").unwrap().uid.clone(),
        }
    }

    #[test]
    fn agent_tokens_and_task_tokens_identify_their_agent_and_task() {
        let snap = snapshot();
        let c = identify(&token(None, "agentid-pdp"), &snap, Some(&account()), None, "agentid-pdp").unwrap();
        assert_eq!((c.agent.as_str(), c.task.as_deref()), ("bot", None));
        let aud = snap.task("agents", "t1").unwrap().audiences[0].clone();
        let t = token(Some(("agentid-task-t1", "anchor-uid")), &aud);
        let c = identify(&t, &snap, Some(&account()), Some(&anchor()), "agentid-pdp").unwrap();
        assert_eq!(c.task.as_deref(), Some("t1"));
        assert_eq!(c.credential_id.as_deref(), Some("jti"));
    }

    #[test]
    fn anything_agentid_did_not_create_is_refused() {
        let snap = snapshot();
        let pdp = "agentid-pdp";
        // Not an agent's ServiceAccount, or a re-created one (other uid).
        assert!(identify(&token(None, pdp), &snap, None, None, pdp).is_err());
        let recreated = AccountEntry { uid: "new-uid".into(), ..account() };
        assert!(identify(&token(None, pdp), &snap, Some(&recreated), None, pdp).unwrap_err().contains("re-created"));
        // The agent was re-created: its uid no longer owns the ServiceAccount.
        let stale = AccountEntry { agent_uid: "old-agent-uid".into(), ..account() };
        assert!(identify(&token(None, pdp), &snap, Some(&stale), None, pdp).is_err());
        // A plain token for another audience.
        assert!(identify(&token(None, "https://tools.example.com"), &snap, Some(&account()), None, pdp).is_err());
        // A task token whose anchor is gone, was re-created, or whose audience is not the task's.
        let aud = snap.task("agents", "t1").unwrap().audiences[0].clone();
        let t = token(Some(("agentid-task-t1", "anchor-uid")), &aud);
        assert!(identify(&t, &snap, Some(&account()), None, pdp).unwrap_err().contains("has ended"));
        let other_anchor = AnchorEntry { uid: "other".into(), ..anchor() };
        assert!(identify(&t, &snap, Some(&account()), Some(&other_anchor), pdp).is_err());
        let t = token(Some(("agentid-task-t1", "anchor-uid")), "https://elsewhere");
        assert!(identify(&t, &snap, Some(&account()), Some(&anchor()), pdp).unwrap_err().contains("audience"));
    }

    #[test]
    fn what_a_request_says_must_agree_with_its_credential() {
        let snap = snapshot();
        let aud = snap.task("agents", "t1").unwrap().audiences[0].clone();
        let t = token(Some(("agentid-task-t1", "anchor-uid")), &aud);
        let c = identify(&t, &snap, Some(&account()), Some(&anchor()), "agentid-pdp").unwrap();
        assert_eq!(check_claims(&c, None, None), Ok(()));
        assert_eq!(check_claims(&c, Some("spiffe://cluster.local/ns/agents/agent/bot"), Some("t1")), Ok(()));
        assert_eq!(check_claims(&c, Some("agents/bot"), None), Ok(()));
        assert!(check_claims(&c, Some("agents/other"), None).is_err());
        assert!(check_claims(&c, None, Some("t2")).unwrap_err().contains("bound to task \"t1\""));
    }
}
