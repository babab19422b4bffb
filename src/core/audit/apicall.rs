//! Agents' own calls to the Kubernetes API, from the apiserver's audit events (`audit.k8s.io/v1`,
//! delivered by its webhook backend), as records of the trail.
//!
//! Only what an investigator needs and nothing the event might carry of value: verb, the request path
//! without its query string (which names resource, namespace and object), the response code, the
//! authorizer's decision, the RoleBinding that allowed the call when it is one of agentid's grants, the
//! apiserver's audit id and the token's credential id (`JTI=…`, which joins the call to the task token
//! that made it). Audit events at `Metadata` level carry no request or response bodies; anything else in
//! them (user agent, source IPs, annotations other than the authorizer's) is not kept.

use serde::Deserialize;
use std::collections::BTreeMap;

use super::record::{Event, Kind, destination};
use crate::core::grant::RBAC_NAME_PREFIX;
use crate::core::identity::spiffe_id;

/// Stage of an audit event the trail records: the response was sent (or the handler panicked).
const RECORDED_STAGES: [&str; 2] = ["ResponseComplete", "Panic"];
/// `user.extra` key under which the apiserver names the credential (`JTI=<id>` for service account tokens).
pub const CREDENTIAL_ID: &str = "authentication.kubernetes.io/credential-id";
const DECISION_ANNOTATION: &str = "authorization.k8s.io/decision";
const REASON_ANNOTATION: &str = "authorization.k8s.io/reason";
/// The `tool` of an API call record.
pub const KUBERNETES_TOOL: &str = "kubernetes";

/// `audit.k8s.io/v1` EventList, only the fields read here (unknown fields are ignored: the apiserver
/// adds fields over time).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct EventList {
    #[serde(default)]
    pub items: Vec<ApiEvent>,
}

/// One `audit.k8s.io/v1` Event.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiEvent {
    #[serde(default, rename = "auditID")]
    pub audit_id: String,
    #[serde(default)]
    pub stage: String,
    #[serde(default, rename = "requestURI")]
    pub request_uri: String,
    #[serde(default)]
    pub verb: String,
    #[serde(default)]
    pub user: UserInfo,
    #[serde(default)]
    pub impersonated_user: Option<UserInfo>,
    #[serde(default)]
    pub response_status: Option<ResponseStatus>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct UserInfo {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub extra: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ResponseStatus {
    #[serde(default)]
    pub code: Option<i32>,
}

/// The events of one delivery: an `audit.k8s.io/v1` EventList (the apiserver's webhook backend), a JSON
/// array of events, or one event per line (log shippers such as Fluent Bit or Vector tailing an audit log
/// file, for clusters that only write audit logs). Blank lines are skipped; anything else that does not
/// parse fails the whole delivery, so the sender retries rather than losing events silently.
pub fn parse_batch(body: &[u8]) -> Result<Vec<ApiEvent>, String> {
    let trimmed = body.trim_ascii_start();
    match trimmed.first() {
        None => Ok(Vec::new()),
        Some(b'[') => serde_json::from_slice::<Vec<ApiEvent>>(trimmed).map_err(|e| e.to_string()),
        Some(b'{') => {
            // One object: an EventList, or the first of several JSON lines.
            let mut lines = trimmed.split(|b| *b == b'\n').filter(|l| !l.trim_ascii().is_empty());
            let first = lines.next().unwrap_or_default();
            let rest: Vec<&[u8]> = lines.collect();
            if rest.is_empty() {
                let v: serde_json::Value = serde_json::from_slice(first).map_err(|e| e.to_string())?;
                return if v.get("kind").and_then(|k| k.as_str()) == Some("EventList") || v.get("items").is_some() {
                    serde_json::from_value::<EventList>(v).map(|l| l.items).map_err(|e| e.to_string())
                } else {
                    serde_json::from_value::<ApiEvent>(v).map(|e| vec![e]).map_err(|e| e.to_string())
                };
            }
            std::iter::once(first)
                .chain(rest)
                .enumerate()
                .map(|(i, l)| serde_json::from_slice::<ApiEvent>(l).map_err(|e| format!("line {}: {e}", i + 1)))
                .collect()
        }
        Some(_) => Err("expected an EventList, a JSON array of audit events or JSON lines".into()),
    }
}

/// `system:serviceaccount:<namespace>:<name>` → (namespace, name).
pub fn service_account_of(username: &str) -> Option<(&str, &str)> {
    let rest = username.strip_prefix("system:serviceaccount:")?;
    let (ns, name) = rest.split_once(':')?;
    (!ns.is_empty() && !name.is_empty() && !name.contains(':')).then_some((ns, name))
}

/// The agent's ToolGrant that allowed a call, from the RBAC authorizer's reason
/// (`RBAC: allowed by RoleBinding "agentid-grant-<grant>/<ns>" of Role …`).
pub fn grant_of_reason(reason: &str) -> Option<&str> {
    let rest = reason.split_once("RoleBinding \"")?.1;
    let binding = rest.split_once('"')?.0;
    let name = binding.split_once('/').map_or(binding, |(n, _)| n);
    name.strip_prefix(RBAC_NAME_PREFIX).filter(|g| !g.is_empty())
}

/// The trail record of one audit event, when it is a completed request of an agent's ServiceAccount
/// (`agent_of(namespace, service_account)` names the agent). Requests of anyone else, and earlier
/// stages of a request, give `None`. When someone impersonates an agent's ServiceAccount, the record
/// is the agent's, with the impersonator as actor and reason `impersonated`.
pub fn to_event(e: &ApiEvent, trust_domain: &str, agent_of: impl Fn(&str, &str) -> Option<String>) -> Option<Event> {
    if !RECORDED_STAGES.contains(&e.stage.as_str()) {
        return None;
    }
    let direct = service_account_of(&e.user.username).and_then(|(ns, sa)| Some((ns, agent_of(ns, sa)?)));
    let (namespace, agent, impersonator) = match direct {
        Some((ns, agent)) => (ns, agent, None),
        None => {
            let target = e.impersonated_user.as_ref()?;
            let (ns, sa) = service_account_of(&target.username)?;
            (ns, agent_of(ns, sa)?, Some(e.user.username.as_str()))
        }
    };
    let code = e.response_status.as_ref().and_then(|s| s.code);
    let decision = match (e.annotations.get(DECISION_ANNOTATION).map(String::as_str), code) {
        (Some("allow"), Some(c)) if c < 400 => "allow",
        (Some("forbid"), _) | (_, Some(401 | 403)) => "deny",
        (_, Some(c)) if c < 400 => "allow",
        (_, Some(_)) => "error",
        (_, None) => "unknown",
    };
    let mut ev = Event::new(Kind::ApiCall);
    ev.actor = Some(match impersonator {
        Some(user) => user.to_string(),
        None => spiffe_id(trust_domain, namespace, &agent),
    });
    ev.namespace = Some(namespace.to_string());
    ev.agent = Some(agent);
    ev.tool = Some(KUBERNETES_TOOL.to_string());
    ev.action = Some(e.verb.clone()).filter(|v| !v.is_empty());
    ev.destination = Some(destination(&e.request_uri).to_string()).filter(|d| !d.is_empty());
    ev.decision = Some(decision.to_string());
    if let Some(c) = code {
        ev.reasons.push(format!("http-{c}"));
    }
    if impersonator.is_some() {
        ev.reasons.push("impersonated".into());
    }
    ev.grant = e.annotations.get(REASON_ANNOTATION).and_then(|r| grant_of_reason(r)).map(str::to_string);
    ev.request = Some(e.audit_id.clone()).filter(|i| !i.is_empty());
    let who = if impersonator.is_some() { e.impersonated_user.as_ref() } else { Some(&e.user) };
    ev.credential = who.and_then(|u| u.extra.get(CREDENTIAL_ID)).and_then(|v| v.first()).cloned();
    Some(ev)
}

/// The credential id the apiserver gives a service account token with this `jti` claim, so the broker's
/// record of a task token and the API calls made with it carry the same value.
pub fn credential_id_of_jti(jti: &str) -> String {
    format!("JTI={jti}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agents(ns: &str, sa: &str) -> Option<String> {
        (ns == "team-a" && sa == "agentid-billing").then(|| "billing".to_string())
    }

    fn event(json: serde_json::Value) -> ApiEvent {
        serde_json::from_value(json).unwrap()
    }

    fn secret_read() -> serde_json::Value {
        serde_json::json!({
            "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata",
            "auditID": "5d0e7b4a-1", "stage": "ResponseComplete",
            "requestURI": "/api/v1/namespaces/team-a/secrets/db-creds?resourceVersion=0",
            "verb": "get",
            "user": {"username": "system:serviceaccount:team-a:agentid-billing", "uid": "u1",
                     "groups": ["system:serviceaccounts"],
                     "extra": {"authentication.kubernetes.io/credential-id": ["JTI=4f1c"]}},
            "sourceIPs": ["10.0.0.7"], "userAgent": "curl/8",
            "objectRef": {"resource": "secrets", "namespace": "team-a", "name": "db-creds", "apiVersion": "v1"},
            "responseStatus": {"metadata": {}, "code": 200},
            "annotations": {
                "authorization.k8s.io/decision": "allow",
                "authorization.k8s.io/reason": "RBAC: allowed by RoleBinding \"agentid-grant-read-db/team-a\" of Role \"agentid-grant-read-db\" to ServiceAccount \"agentid-billing/team-a\""
            },
            "someFutureField": {"x": 1}
        })
    }

    #[test]
    fn an_agents_secret_read_becomes_an_api_call_record() {
        let ev = to_event(&event(secret_read()), "cluster.local", agents).unwrap();
        assert_eq!(ev.kind, Kind::ApiCall);
        assert_eq!(ev.actor.as_deref(), Some("spiffe://cluster.local/ns/team-a/agent/billing"));
        assert_eq!((ev.namespace.as_deref(), ev.agent.as_deref()), (Some("team-a"), Some("billing")));
        assert_eq!((ev.tool.as_deref(), ev.action.as_deref()), (Some("kubernetes"), Some("get")));
        assert_eq!(ev.destination.as_deref(), Some("/api/v1/namespaces/team-a/secrets/db-creds"), "no query string");
        assert_eq!(ev.decision.as_deref(), Some("allow"));
        assert_eq!(ev.reasons, vec!["http-200"]);
        assert_eq!(ev.grant.as_deref(), Some("read-db"));
        assert_eq!(ev.request.as_deref(), Some("5d0e7b4a-1"));
        assert_eq!(ev.credential.as_deref(), Some("JTI=4f1c"));
        assert_eq!(ev.credential.as_deref(), Some(credential_id_of_jti("4f1c").as_str()));
    }

    #[test]
    fn refusals_errors_and_other_callers() {
        let mut j = secret_read();
        j["responseStatus"]["code"] = 403.into();
        j["annotations"] = serde_json::json!({"authorization.k8s.io/decision": "forbid"});
        let ev = to_event(&event(j.clone()), "td", agents).unwrap();
        assert_eq!((ev.decision.as_deref(), ev.grant.as_deref()), (Some("deny"), None));
        assert_eq!(ev.reasons, vec!["http-403"]);

        j["responseStatus"]["code"] = 404.into();
        j["annotations"] = serde_json::json!({"authorization.k8s.io/decision": "allow"});
        assert_eq!(to_event(&event(j.clone()), "td", agents).unwrap().decision.as_deref(), Some("error"));

        // Earlier stages, humans, other service accounts, malformed usernames: not recorded.
        for (path, value) in [
            ("stage", "RequestReceived"),
            ("stage", "ResponseStarted"),
            ("username", "admin"),
            ("username", "system:serviceaccount:team-a:default"),
            ("username", "system:serviceaccount:team-a"),
            ("username", "system:serviceaccount::agentid-billing"),
            ("username", "system:serviceaccount:team-a:agentid-billing:x"),
        ] {
            let mut j = secret_read();
            if path == "stage" {
                j["stage"] = value.into();
            } else {
                j["user"]["username"] = value.into();
            }
            assert!(to_event(&event(j), "td", agents).is_none(), "{path}={value}");
        }
    }

    #[test]
    fn impersonating_an_agent_is_recorded_against_the_agent_with_the_impersonator() {
        let mut j = secret_read();
        j["user"] = serde_json::json!({"username": "alice", "extra": {"authentication.kubernetes.io/credential-id": ["X509SHA256=ab"]}});
        j["impersonatedUser"] = serde_json::json!({"username": "system:serviceaccount:team-a:agentid-billing"});
        let ev = to_event(&event(j), "td", agents).unwrap();
        assert_eq!((ev.agent.as_deref(), ev.actor.as_deref()), (Some("billing"), Some("alice")));
        assert!(ev.reasons.contains(&"impersonated".to_string()));
        assert_eq!(ev.credential, None, "the impersonated user has no credential of its own");
    }

    #[test]
    fn grants_are_read_only_from_agentids_role_bindings() {
        let r = |s: &str| grant_of_reason(s).map(str::to_string);
        assert_eq!(r("RBAC: allowed by RoleBinding \"agentid-grant-g1/ns\" of Role \"x\""), Some("g1".into()));
        assert_eq!(r("RBAC: allowed by ClusterRoleBinding \"admin\" of ClusterRole \"admin\""), None);
        assert_eq!(r("RBAC: allowed by RoleBinding \"other/ns\" of Role \"x\""), None);
        assert_eq!(r("RBAC: allowed by RoleBinding \"agentid-grant-/ns\""), None);
        assert_eq!(r("RBAC: allowed by RoleBinding \"agentid-grant-g"), None, "unterminated");
        assert_eq!(r(""), None);
    }

    #[test]
    fn deliveries_parse_as_event_lists_arrays_or_json_lines() {
        let one = secret_read().to_string();
        let list = serde_json::json!({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": [secret_read(), secret_read()]});
        assert_eq!(parse_batch(list.to_string().as_bytes()).unwrap().len(), 2);
        assert_eq!(parse_batch(format!("[{one},{one},{one}]").as_bytes()).unwrap().len(), 3);
        assert_eq!(parse_batch(format!("{one}\n\n{one}\n").as_bytes()).unwrap().len(), 2);
        assert_eq!(parse_batch(one.as_bytes()).unwrap().len(), 1, "a single event");
        assert_eq!(parse_batch(b"  \n").unwrap().len(), 0);
        assert_eq!(
            parse_batch(format!("{one}\n{{\"stage\": 7}}").as_bytes()).unwrap_err().split(':').next(),
            Some("line 2")
        );
        for bad in [&b"nope"[..], b"{", b"[1,2]", b"{\"items\": 3}"] {
            assert!(parse_batch(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn event_lists_parse_with_unknown_fields_and_missing_ones() {
        let list: EventList = serde_json::from_value(serde_json::json!({
            "kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {},
            "items": [secret_read(), {"stage": "ResponseComplete"}]
        }))
        .unwrap();
        assert_eq!(list.items.len(), 2);
        assert!(to_event(&list.items[1], "td", agents).is_none());
    }
}
