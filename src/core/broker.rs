//! The task-token broker's decisions: who may have a token for which task.
//! An agent authenticates with its own projected ServiceAccount token
//! (verified by TokenReview, audience-bound to the broker); only the task's
//! own agent gets a token, and only while the task is Active.

use k8s_openapi::api::authentication::v1::TokenReviewStatus;

use crate::api::{AgentIdentity, AgentTask};

/// Why a token request is refused, with its HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerRefusal {
    /// 401: no valid credential.
    #[error("{0}")]
    Unauthenticated(String),
    /// 403: authenticated, but not this task's agent.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such task (said only to callers from the task's namespace).
    #[error("{0}")]
    NotFound(String),
    /// 409: the task exists but is not Active.
    #[error("{0}")]
    NotActive(String),
}

impl BrokerRefusal {
    pub fn http_status(&self) -> u16 {
        match self {
            BrokerRefusal::Unauthenticated(_) => 401,
            BrokerRefusal::Forbidden(_) => 403,
            BrokerRefusal::NotFound(_) => 404,
            BrokerRefusal::NotActive(_) => 409,
        }
    }

    /// Low-cardinality label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            BrokerRefusal::Unauthenticated(_) => "unauthenticated",
            BrokerRefusal::Forbidden(_) => "forbidden",
            BrokerRefusal::NotFound(_) => "not_found",
            BrokerRefusal::NotActive(_) => "not_active",
        }
    }
}

/// The bearer token of an `Authorization` header value.
pub fn bearer(header: Option<&str>) -> Result<&str, BrokerRefusal> {
    let h = header.ok_or_else(|| {
        BrokerRefusal::Unauthenticated("missing Authorization: Bearer <projected ServiceAccount token>".into())
    })?;
    let (scheme, token) = h.split_once(' ').unwrap_or((h, ""));
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(BrokerRefusal::Unauthenticated("Authorization must be `Bearer <token>`".into()));
    }
    Ok(token)
}

/// The username a TokenReview authenticated, if it did so for `audience`.
pub fn authenticated_user<'a>(status: &'a TokenReviewStatus, audience: &str) -> Result<&'a str, BrokerRefusal> {
    if status.authenticated != Some(true) {
        return Err(BrokerRefusal::Unauthenticated(
            "the token is not valid (expired, revoked or not a Kubernetes token)".into(),
        ));
    }
    // The apiserver answers with the audiences the token is valid for, out of those asked: insist on ours.
    if !status.audiences.as_ref().is_some_and(|a| a.iter().any(|x| x == audience)) {
        return Err(BrokerRefusal::Unauthenticated(format!("the token is not meant for audience {audience:?}")));
    }
    status
        .user
        .as_ref()
        .and_then(|u| u.username.as_deref())
        .ok_or_else(|| BrokerRefusal::Unauthenticated("the token names no user".into()))
}

/// Whether `username` is the caller from `namespace` (any ServiceAccount of it).
pub fn caller_namespace(username: &str) -> Option<&str> {
    username.strip_prefix("system:serviceaccount:")?.split_once(':').map(|(ns, _)| ns)
}

/// Only the task's own agent, running as its dedicated ServiceAccount, may have the task's token.
pub fn authorize(username: &str, task: &AgentTask, agent: &AgentIdentity) -> Result<(), BrokerRefusal> {
    let ns = task.metadata.namespace.as_deref().unwrap_or_default();
    let expected = format!("system:serviceaccount:{ns}:{}", agent.service_account_name());
    if username != expected {
        return Err(BrokerRefusal::Forbidden(format!(
            "{username} may not have tokens of AgentTask {ns}/{}: only agent {:?} may",
            task.metadata.name.as_deref().unwrap_or_default(),
            task.spec.agent_ref.name
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::UserInfo;

    fn status(ok: bool, user: &str, audiences: &[&str]) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(ok),
            audiences: Some(audiences.iter().map(|s| s.to_string()).collect()),
            user: Some(UserInfo { username: Some(user.into()), ..Default::default() }),
            error: None,
        }
    }

    fn task_and_agent() -> (AgentTask, AgentIdentity) {
        let agent: AgentIdentity = serde_norway::from_str(
            "apiVersion: agentid.dev/v1alpha1\nkind: AgentIdentity\nmetadata: {name: bot, namespace: agents}\nspec: {owner: t, audiences: [x]}",
        )
        .unwrap();
        let task: AgentTask = serde_norway::from_str(
            "apiVersion: agentid.dev/v1alpha1\nkind: AgentTask\nmetadata: {name: t1, namespace: agents}\nspec: {agentRef: {name: bot}, purpose: p, audiences: [x], ttl: 10m}",
        )
        .unwrap();
        (task, agent)
    }

    #[test]
    fn bearer_tokens_are_required() {
        assert_eq!(bearer(Some("Bearer abc")), Ok("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Ok("abc"));
        for bad in [None, Some(""), Some("Basic abc"), Some("Bearer"), Some("Bearer   ")] {
            assert_eq!(bearer(bad).unwrap_err().http_status(), 401, "{bad:?}");
        }
    }

    #[test]
    fn reviews_must_authenticate_for_the_broker_audience() {
        assert_eq!(authenticated_user(&status(true, "u", &["agentid"]), "agentid"), Ok("u"));
        assert_eq!(authenticated_user(&status(false, "u", &["agentid"]), "agentid").unwrap_err().http_status(), 401);
        assert_eq!(authenticated_user(&status(true, "u", &["other"]), "agentid").unwrap_err().http_status(), 401);
        let mut no_audiences = status(true, "u", &[]);
        no_audiences.audiences = None;
        assert_eq!(authenticated_user(&no_audiences, "agentid").unwrap_err().http_status(), 401);
    }

    #[test]
    fn only_the_tasks_own_agent_is_authorized() {
        let (task, agent) = task_and_agent();
        assert_eq!(authorize("system:serviceaccount:agents:agent-bot", &task, &agent), Ok(()));
        for other in ["system:serviceaccount:agents:agent-other", "system:serviceaccount:elsewhere:agent-bot", "alice"]
        {
            assert_eq!(authorize(other, &task, &agent).unwrap_err().http_status(), 403, "{other}");
        }
        assert_eq!(caller_namespace("system:serviceaccount:agents:x"), Some("agents"));
        assert_eq!(caller_namespace("alice"), None);
    }
}
