//! Requests on agentid's own objects — AgentIdentities, AgentTasks and the status of all three kinds
//! (ToolGrants themselves are judged by [`super::grants`]):
//! - an agent's ServiceAccount never creates or changes them: an agent must not lift its own kill
//!   switch, widen its audiences, start tasks for itself or forge a status, whatever RBAC an admin
//!   gave it;
//! - an AgentIdentity may not name a ServiceAccount that another AgentIdentity already names, nor one
//!   that exists already (agentid never takes over a ServiceAccount it did not create, so such an agent
//!   could never become Ready, and naming it would only make that ServiceAccount's workloads look like
//!   an agent's).
//!
//! This module decides up to the one lookup it needs (does the ServiceAccount exist?), which the shell
//! performs.

use super::review::UserInfo;
use super::rules::AgentDirectory;
use crate::api::AgentIdentity;

/// Why a request on an agentid object is refused. The message says what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjectRefusal {
    #[error(
        "{user} is the ServiceAccount of agent {agent:?}: agents can never create or change {what}; \
         an owner of the agent does that"
    )]
    AgentRequester { user: String, agent: String, what: &'static str },
    #[error(
        "spec.serviceAccountName: ServiceAccount {service_account:?} is already named by AgentIdentity {other:?} in \
         this namespace; fix: choose another name (each agent has a ServiceAccount of its own)"
    )]
    Claimed { service_account: String, other: String },
    #[error(
        "spec.serviceAccountName: ServiceAccount {namespace}/{service_account} already exists and agentid did not \
         create it for this agent; agentid never takes over a ServiceAccount. fix: leave serviceAccountName unset \
         (agentid creates agent-<name>) or choose a name that is not in use"
    )]
    Exists { namespace: String, service_account: String },
}

/// What admitting a request on an agentid object takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectReview {
    Allow,
    Refuse(ObjectRefusal),
    /// Admit only if no ServiceAccount `namespace/service_account` exists yet.
    CheckServiceAccount {
        namespace: String,
        service_account: String,
    },
}

/// The objects an agent's ServiceAccount may never write, for messages.
fn what(kind: &str, sub_resource: Option<&str>) -> &'static str {
    match (kind, sub_resource) {
        (_, Some("status")) => "the status of AgentIdentities, ToolGrants or AgentTasks",
        ("AgentIdentity", _) => "AgentIdentities (their own kill switch and audiences included)",
        ("AgentTask", _) => "AgentTasks",
        ("ToolGrant", _) => "ToolGrants",
        _ => "agentid objects",
    }
}

/// Decides a CREATE or UPDATE of an AgentIdentity or AgentTask, or of the status of any agentid kind.
/// `identity` is the AgentIdentity in the request, when the request is for one.
pub fn review_request(
    user: &UserInfo,
    operation: &str,
    kind: &str,
    sub_resource: Option<&str>,
    namespace: &str,
    identity: Option<&AgentIdentity>,
    agents: &dyn AgentDirectory,
) -> ObjectReview {
    if let Some((sa_ns, sa)) = super::grants::service_account_of(user)
        && let Some(agent) = agents.agent_of_service_account(sa_ns, sa)
    {
        return ObjectReview::Refuse(ObjectRefusal::AgentRequester {
            user: user.username.clone(),
            agent,
            what: what(kind, sub_resource),
        });
    }
    // serviceAccountName is immutable (a CRD rule), so only a CREATE can name one.
    let (Some(identity), "CREATE", None) = (identity, operation, sub_resource) else { return ObjectReview::Allow };
    let name = identity.metadata.name.as_deref().unwrap_or_default();
    let service_account = identity.service_account_name();
    if let Some(other) =
        agents.claimants_of_service_account(namespace, &service_account).into_iter().find(|other| other != name)
    {
        return ObjectReview::Refuse(ObjectRefusal::Claimed { service_account, other });
    }
    ObjectReview::CheckServiceAccount { namespace: namespace.to_string(), service_account }
}

/// The answer once the shell looked the ServiceAccount up.
pub fn judge_service_account(namespace: &str, service_account: &str, exists: bool) -> Result<(), ObjectRefusal> {
    if exists {
        return Err(ObjectRefusal::Exists {
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::AgentIdentityStatus;
    use crate::core::admission::rules::StaticDirectory;

    fn user(name: &str) -> UserInfo {
        UserInfo { username: name.into(), ..Default::default() }
    }

    fn bot() -> AgentIdentity {
        let mut a = crate::api::test_agent("bot");
        a.status = Some(AgentIdentityStatus { service_account_name: Some("agent-bot".into()), ..Default::default() });
        a
    }

    fn agent_naming(name: &str, sa: Option<&str>) -> AgentIdentity {
        let mut a = crate::api::test_agent(name);
        a.spec.service_account_name = sa.map(str::to_string);
        a
    }

    #[test]
    fn agents_never_write_identities_tasks_or_status() {
        let dir = StaticDirectory::live([bot()].iter());
        let agent = user("system:serviceaccount:agents:agent-bot");
        for (kind, sub) in [("AgentIdentity", None), ("AgentTask", None), ("ToolGrant", Some("status"))] {
            for op in ["CREATE", "UPDATE"] {
                let r = review_request(&agent, op, kind, sub, "agents", None, &dir);
                let ObjectReview::Refuse(e @ ObjectRefusal::AgentRequester { .. }) = r else {
                    panic!("{kind} {op}: {r:?}")
                };
                assert!(e.to_string().contains("agents can never create or change"), "{e}");
            }
        }
        // Anyone else may (RBAC decides), and an UPDATE of an identity needs no lookup.
        let a = bot();
        assert_eq!(
            review_request(&user("alice"), "UPDATE", "AgentIdentity", None, "agents", Some(&a), &dir),
            ObjectReview::Allow
        );
        assert_eq!(
            review_request(&user("alice"), "CREATE", "AgentTask", None, "agents", None, &dir),
            ObjectReview::Allow
        );
        // A ServiceAccount that an agent only names (not in place) is no agent.
        let squatter = agent_naming("squatter", Some("web"));
        let dir = StaticDirectory::live([bot(), squatter].iter());
        let web = user("system:serviceaccount:agents:web");
        assert_eq!(review_request(&web, "CREATE", "AgentTask", None, "agents", None, &dir), ObjectReview::Allow);
    }

    #[test]
    fn a_new_identity_may_not_name_a_service_account_in_use() {
        let dir = StaticDirectory::live([bot()].iter());
        // Naming the ServiceAccount of another agent, explicitly or by default name.
        let squat = agent_naming("squatter", Some("agent-bot"));
        let r = review_request(&user("alice"), "CREATE", "AgentIdentity", None, "agents", Some(&squat), &dir);
        assert_eq!(
            r,
            ObjectReview::Refuse(ObjectRefusal::Claimed { service_account: "agent-bot".into(), other: "bot".into() })
        );
        let pending = StaticDirectory::live([agent_naming("first", Some("agent-second"))].iter());
        let second = agent_naming("second", None);
        let r = review_request(&user("alice"), "CREATE", "AgentIdentity", None, "agents", Some(&second), &pending);
        assert!(matches!(r, ObjectReview::Refuse(ObjectRefusal::Claimed { .. })), "{r:?}");
        // Otherwise the ServiceAccount must not exist yet.
        let fresh = agent_naming("fresh", Some("web"));
        let r = review_request(&user("alice"), "CREATE", "AgentIdentity", None, "agents", Some(&fresh), &dir);
        assert_eq!(r, ObjectReview::CheckServiceAccount { namespace: "agents".into(), service_account: "web".into() });
        let e = judge_service_account("agents", "web", true).unwrap_err().to_string();
        assert!(e.contains("ServiceAccount agents/web already exists") && e.contains("fix:"), "{e}");
        assert_eq!(judge_service_account("agents", "web", false), Ok(()));
    }
}
