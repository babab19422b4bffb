//! The task-token broker's decisions: who may have a token for which task.
//! An agent authenticates with its own projected ServiceAccount token
//! (verified by TokenReview, audience-bound to the broker); only the task's
//! own agent gets a token, and only while the task is Active.

use k8s_openapi::api::authentication::v1::TokenReviewStatus;

use crate::api::{AgentIdentity, AgentTask};

/// Why a token request is refused, with its HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerRefusal {
    /// 400: the request names no valid task (checked before any API call).
    #[error("{0}")]
    BadRequest(String),
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
    /// 429: this peer asked for too many token reviews; try again later.
    #[error("{0}")]
    TooManyRequests(String),
}

impl BrokerRefusal {
    pub fn http_status(&self) -> u16 {
        match self {
            BrokerRefusal::BadRequest(_) => 400,
            BrokerRefusal::Unauthenticated(_) => 401,
            BrokerRefusal::Forbidden(_) => 403,
            BrokerRefusal::NotFound(_) => 404,
            BrokerRefusal::NotActive(_) => 409,
            BrokerRefusal::TooManyRequests(_) => 429,
        }
    }

    /// Low-cardinality label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            BrokerRefusal::BadRequest(_) => "bad_request",
            BrokerRefusal::Unauthenticated(_) => "unauthenticated",
            BrokerRefusal::Forbidden(_) => "forbidden",
            BrokerRefusal::NotFound(_) => "not_found",
            BrokerRefusal::NotActive(_) => "not_active",
            BrokerRefusal::TooManyRequests(_) => "rate_limited",
        }
    }
}

/// Whether `s` is an RFC 1123 label (a namespace name).
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Whether `s` is a DNS subdomain (an object name).
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// The task a request path names, checked before anything else: a namespace that is an RFC 1123 label
/// and a name that is a DNS subdomain. Anything else (`..`, `?`, `/`, upper case, percent-decoded
/// characters) is a 400, so no such string ever reaches an apiserver URL.
pub fn task_path(namespace: &str, name: &str) -> Result<(), BrokerRefusal> {
    if !is_dns_label(namespace) {
        return Err(BrokerRefusal::BadRequest("the namespace in the path is not a valid namespace name".into()));
    }
    if !is_dns_subdomain(name) {
        return Err(BrokerRefusal::BadRequest("the task in the path is not a valid AgentTask name".into()));
    }
    Ok(())
}

/// Whether a bearer token has the shape of a Kubernetes ServiceAccount token (a JWS in compact
/// serialization: three base64url parts, a JSON header with an `alg`). Anything else is refused
/// without asking the apiserver, so garbage costs no TokenReview.
pub fn looks_like_jwt(token: &str) -> bool {
    use base64::Engine;
    if token.len() > 16 * 1024 {
        return false;
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let b64url = |p: &str| !p.is_empty() && p.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
    if !(b64url(header) && b64url(payload) && b64url(signature)) {
        return false;
    }
    let Ok(decoded) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header) else { return false };
    serde_json::from_slice::<serde_json::Value>(&decoded)
        .ok()
        .is_some_and(|h| h.get("alg").and_then(|a| a.as_str()).is_some_and(|a| !a.is_empty() && a != "none"))
}

/// The refusal for a caller that is not in the task's namespace: the same whether or not the task
/// exists, so the broker is no oracle for other namespaces' tasks.
pub fn foreign_caller(username: &str, namespace: &str, name: &str) -> Option<BrokerRefusal> {
    (caller_namespace(username) != Some(namespace))
        .then(|| BrokerRefusal::Forbidden(format!("{username} may not have tokens of AgentTask {namespace}/{name}")))
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
    fn task_paths_are_validated_before_any_api_call() {
        assert_eq!(task_path("agents", "t1"), Ok(()));
        assert_eq!(task_path("agents", "triage.v2"), Ok(()));
        for (ns, name) in [
            ("agents", "tx?dryRun=All"),
            ("agents", "../secrets"),
            ("agents", "a/b"),
            ("agents", "UPPER"),
            ("agents", ""),
            ("agents", "-x"),
            ("a.b", "t"),
            ("", "t"),
            ("agents", &"x".repeat(254)),
            (&"n".repeat(64), "t"),
        ] {
            assert_eq!(task_path(ns, name).unwrap_err().http_status(), 400, "{ns}/{name}");
        }
    }

    #[test]
    fn only_jwt_shaped_bearers_reach_a_token_review() {
        use base64::Engine;
        let enc = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let jwt = format!("{}.{}.c2ln", enc(r#"{"alg":"RS256","kid":"k"}"#), enc(r#"{"sub":"x"}"#));
        assert!(looks_like_jwt(&jwt));
        for bad in [
            "garbage".to_string(),
            "a.b".into(),
            "a.b.c.d".into(),
            format!("{}.{}.", enc(r#"{"alg":"RS256"}"#), enc("{}")),
            format!("{}.{}.c2ln", enc(r#"{"alg":"none"}"#), enc("{}")),
            format!("{}.{}.c2ln", enc(r#"{"typ":"JWT"}"#), enc("{}")),
            format!("{}.{}.c2ln", enc("not json"), enc("{}")),
            format!("{}.e30.c2l+", enc(r#"{"alg":"RS256"}"#)),
            format!("{}.{}.c2ln", enc(r#"{"alg":"RS256"}"#), "x".repeat(20_000)),
        ] {
            assert!(!looks_like_jwt(&bad), "{bad}");
        }
    }

    #[test]
    fn callers_from_other_namespaces_learn_nothing_about_tasks() {
        let a = foreign_caller("system:serviceaccount:other:agent-x", "agents", "exists").unwrap();
        let b = foreign_caller("system:serviceaccount:other:agent-x", "agents", "missing").unwrap();
        assert_eq!(a.http_status(), 403);
        assert_eq!(
            a.to_string().replace("exists", "T"),
            b.to_string().replace("missing", "T"),
            "same answer whether or not the task exists"
        );
        assert!(foreign_caller("system:serviceaccount:agents:agent-x", "agents", "t").is_none());
        assert!(foreign_caller("alice", "agents", "t").is_some());
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
