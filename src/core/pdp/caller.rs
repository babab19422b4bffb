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
//! - Without a token, the peer principal of an enforcement point that terminated the agent's mTLS
//!   (ext_authz `source.principal`), when the operator trusts that enforcement point: agentid's own
//!   `spiffe://<td>/ns/<ns>/agent/<name>` or the mesh's `spiffe://<td>/ns/<ns>/sa/<sa>` of the
//!   ServiceAccount agentid created for the agent. See [`identify_principal`].

use std::collections::HashMap;

use super::snapshot::Snapshot;
use crate::core::jwt::ServiceAccountToken;
use crate::core::uid::Uid;

/// Entries by namespace and name: each namespace held once, names without a second copy of it, and a
/// lookup by `&str` that allocates nothing (the decision path looks up a ServiceAccount and an anchor on
/// every call). Namespaces left empty are dropped.
#[derive(Debug, Clone)]
pub struct ByName<V> {
    namespaces: HashMap<Box<str>, HashMap<Box<str>, V>>,
}

impl<V> Default for ByName<V> {
    fn default() -> Self {
        ByName { namespaces: HashMap::new() }
    }
}

impl<V> ByName<V> {
    pub fn get(&self, namespace: &str, name: &str) -> Option<&V> {
        self.namespaces.get(namespace)?.get(name)
    }

    /// Inserts or replaces; the entry replaced, if any.
    pub fn insert(&mut self, namespace: &str, name: &str, value: V) -> Option<V> {
        let names = match self.namespaces.get_mut(namespace) {
            Some(names) => names,
            None => self.namespaces.entry(namespace.into()).or_default(),
        };
        names.insert(name.into(), value)
    }

    pub fn remove(&mut self, namespace: &str, name: &str) -> Option<V> {
        let names = self.namespaces.get_mut(namespace)?;
        let old = names.remove(name)?;
        if names.is_empty() {
            self.namespaces.remove(namespace);
        }
        Some(old)
    }

    pub fn len(&self) -> usize {
        self.namespaces.values().map(HashMap::len).sum()
    }

    /// Namespaces are dropped when emptied, so no namespace means no entry.
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
    }

    /// (namespace, name) of every entry.
    pub fn keys(&self) -> Vec<(String, String)> {
        self.namespaces
            .iter()
            .flat_map(|(ns, names)| names.keys().map(move |n| (ns.to_string(), n.to_string())))
            .collect()
    }
}

impl<V, N: AsRef<str>, M: AsRef<str>> FromIterator<((N, M), V)> for ByName<V> {
    fn from_iter<I: IntoIterator<Item = ((N, M), V)>>(iter: I) -> Self {
        let mut map = ByName::default();
        for ((ns, name), v) in iter {
            map.insert(ns.as_ref(), name.as_ref(), v);
        }
        map
    }
}

/// A ServiceAccount agentid created for an agent, as the watch saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountEntry {
    pub uid: Uid,
    /// The agent it was created for (its `agentid.dev/agent` label).
    pub agent: String,
    /// The uid of the AgentIdentity that owns it.
    pub agent_uid: Uid,
}

/// An anchor Secret agentid created for a task, as the watch saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnchorEntry {
    pub uid: Uid,
    /// The AgentTask that owns it.
    pub task: String,
    pub task_uid: Uid,
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
            if !token.audiences.iter().any(|a| task.audiences.iter().any(|t| **t == **a)) {
                return Err("the task token is not meant for any audience of its task".into());
            }
            Some(task.name.to_string())
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
        agent: agent.name.to_string(),
        agent_uid: agent.uid.to_string(),
        spiffe_id: agent.spiffe_id.clone(),
        task,
        credential_id: token.id.clone(),
    })
}

/// The parts of a SPIFFE ID a decision point can map to an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal<'a> {
    /// `spiffe://<td>/ns/<ns>/agent/<name>`: agentid's own form.
    Agent { trust_domain: &'a str, namespace: &'a str, name: &'a str },
    /// `spiffe://<td>/ns/<ns>/sa/<sa>`: the form of Istio and other meshes.
    ServiceAccount { trust_domain: &'a str, namespace: &'a str, name: &'a str },
}

/// Parses a SPIFFE ID of either form, strictly: lower-case scheme and trust domain, no port, userinfo,
/// query, fragment, percent-encoding, empty or dot segments, and nothing after the name.
pub fn parse_principal(id: &str) -> Result<Principal<'_>, String> {
    let rest = id.strip_prefix("spiffe://").ok_or_else(|| format!("{id:?} is no SPIFFE ID"))?;
    let mut parts = rest.split('/');
    let (Some(td), Some("ns"), Some(ns), Some(kind), Some(name), None) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("{id:?} is not of the form spiffe://<trust-domain>/ns/<namespace>/(agent|sa)/<name>"));
    };
    let td_ok = !td.is_empty()
        && td.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'));
    // Kubernetes names: DNS labels and subdomains (lower-case alphanumerics, '-', '.').
    let name_ok = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.len() <= 253
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-'))
    };
    if !td_ok || !name_ok(ns) || !name_ok(name) {
        return Err(format!("{id:?} is not a well-formed SPIFFE ID of a Kubernetes object"));
    }
    match kind {
        "agent" => Ok(Principal::Agent { trust_domain: td, namespace: ns, name }),
        "sa" => Ok(Principal::ServiceAccount { trust_domain: td, namespace: ns, name }),
        _ => Err(format!("{id:?} names neither an agent nor a ServiceAccount")),
    }
}

/// Identifies the caller from the peer principal a trusted enforcement point reports (it terminated
/// the agent's mTLS). agentid's form must be the agent's SPIFFE ID exactly (trust domain included); the
/// mesh form's trust domain must be agentid's or one of `mesh_trust_domains`. Either way the agent must
/// exist and its ServiceAccount must be the one agentid created for this very agent (`accounts`, by
/// namespace and name): a mesh identity of a ServiceAccount agentid did not create, or one left over
/// from an agent deleted and re-created under the same name, is refused. A principal carries no task.
/// `Err` explains an `unauthenticated` denial.
pub fn identify_principal(
    principal: &str,
    snap: &Snapshot,
    accounts: &ByName<AccountEntry>,
    mesh_trust_domains: &[String],
) -> Result<Caller, String> {
    let no_agent = || format!("peer principal {principal} is not the identity of a current agent");
    let (ns, account) = match parse_principal(principal)? {
        Principal::Agent { namespace, name, .. } => {
            let agent = snap.agent(namespace, name).filter(|a| a.spiffe_id == principal).ok_or_else(no_agent)?;
            (namespace, accounts.get(namespace, &agent.service_account))
        }
        Principal::ServiceAccount { trust_domain, namespace, name } => {
            if trust_domain != snap.trust_domain() && !mesh_trust_domains.iter().any(|d| d == trust_domain) {
                return Err(format!("peer principal {principal}: trust domain {trust_domain:?} is not trusted"));
            }
            (namespace, accounts.get(namespace, name))
        }
    };
    let account = account.ok_or_else(no_agent)?;
    let agent = snap
        .agent(ns, &account.agent)
        .filter(|a| a.uid == account.agent_uid && accounts_match(principal, a))
        .ok_or_else(no_agent)?;
    Ok(Caller {
        namespace: ns.to_string(),
        agent: agent.name.to_string(),
        agent_uid: agent.uid.to_string(),
        spiffe_id: agent.spiffe_id.clone(),
        task: None,
        credential_id: None,
    })
}

/// An agent-form principal names the agent the ServiceAccount belongs to.
fn accounts_match(principal: &str, agent: &super::snapshot::AgentEntry) -> bool {
    match parse_principal(principal) {
        Ok(Principal::Agent { .. }) => agent.spiffe_id == principal,
        Ok(Principal::ServiceAccount { name, .. }) => agent.service_account == name,
        Err(_) => false,
    }
}

/// How a caller's credentials combine into one identity: `by_token` from a bearer token, if one was
/// presented; `by_principal` from the reported peer `principal`, present only when the enforcement point
/// reporting it is trusted. With both, they must name the same agent (the token's identity is kept: it
/// carries the task). An untrusted principal alone is no credential, and the error says why.
pub fn combine(
    by_token: Option<Result<Caller, String>>,
    principal: Option<&str>,
    by_principal: Option<Result<Caller, String>>,
) -> Result<Caller, String> {
    match (by_token, by_principal) {
        (Some(token), None) => token,
        (Some(token), Some(peer)) => {
            let (token, peer) = (token?, peer?);
            if (&token.namespace, &token.agent) != (&peer.namespace, &peer.agent) {
                return Err(format!(
                    "the peer principal {} and the token name different agents",
                    principal.unwrap_or_default()
                ));
            }
            Ok(token)
        }
        (None, Some(peer)) => peer,
        (None, None) => Err(match principal {
            Some(p) => format!(
                "no credential: the peer principal {p} is not honoured from this client (it presented no \
                 client certificate of a trusted enforcement point, see --pdp-trusted-pep); present the \
                 agent's task token as a Bearer token"
            ),
            None => "no credential: present the agent's task token as a Bearer token".into(),
        }),
    }
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

    fn accounts() -> ByName<AccountEntry> {
        ByName::from_iter([(("agents", "agent-bot"), account())])
    }

    #[test]
    fn by_name_counts_replaces_and_drops_empty_namespaces() {
        let mut m = ByName::default();
        assert_eq!(m.insert("a", "x", 1), None);
        assert_eq!(m.insert("a", "y", 2), None);
        assert_eq!(m.insert("b", "x", 3), None);
        assert_eq!(m.insert("a", "x", 4), Some(1));
        assert_eq!((m.len(), m.get("a", "x"), m.get("b", "x"), m.get("b", "y")), (3, Some(&4), Some(&3), None));
        assert_eq!(m.remove("b", "x"), Some(3));
        assert_eq!(m.remove("b", "x"), None);
        assert_eq!(m.remove("zz", "x"), None);
        assert_eq!(m.len(), 2);
        assert!(!m.namespaces.contains_key("b"), "an emptied namespace is dropped");
        let mut keys = m.keys();
        keys.sort();
        assert_eq!(keys, [("a".to_string(), "x".to_string()), ("a".to_string(), "y".to_string())]);
        m.remove("a", "x");
        m.remove("a", "y");
        assert!(m.is_empty() && m.namespaces.is_empty());
    }

    #[test]
    fn spiffe_ids_parse_strictly() {
        assert_eq!(
            parse_principal("spiffe://cluster.local/ns/agents/agent/bot"),
            Ok(Principal::Agent { trust_domain: "cluster.local", namespace: "agents", name: "bot" })
        );
        assert_eq!(
            parse_principal("spiffe://mesh.example/ns/agents/sa/agent-bot"),
            Ok(Principal::ServiceAccount { trust_domain: "mesh.example", namespace: "agents", name: "agent-bot" })
        );
        for bad in [
            "",
            "spiffe://",
            "SPIFFE://cluster.local/ns/agents/agent/bot",
            "https://cluster.local/ns/agents/agent/bot",
            "spiffe://Cluster.local/ns/agents/agent/bot",
            "spiffe://cluster.local:443/ns/agents/agent/bot",
            "spiffe://user@cluster.local/ns/agents/agent/bot",
            "spiffe://cluster.local/ns/agents/agent/bot/extra",
            "spiffe://cluster.local/ns/agents/agent/bot/",
            "spiffe://cluster.local/ns/agents/agent/",
            "spiffe://cluster.local/ns//agent/bot",
            "spiffe://cluster.local/ns/agents/agent/..",
            "spiffe://cluster.local/ns/agents/agent/b%6ft",
            "spiffe://cluster.local/ns/agents/agent/bot?x=1",
            "spiffe://cluster.local/ns/agents/agent/bot#f",
            "spiffe://cluster.local/ns/agents/user/bot",
            "spiffe://cluster.local/namespace/agents/agent/bot",
        ] {
            assert!(parse_principal(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn a_trusted_peer_principal_identifies_the_agent_in_either_form() {
        let snap = snapshot();
        for p in ["spiffe://cluster.local/ns/agents/agent/bot", "spiffe://cluster.local/ns/agents/sa/agent-bot"] {
            let c = identify_principal(p, &snap, &accounts(), &[]).unwrap();
            assert_eq!((c.agent.as_str(), c.task.as_deref(), c.credential_id.as_deref()), ("bot", None, None));
            assert_eq!(c.spiffe_id, "spiffe://cluster.local/ns/agents/agent/bot");
        }
        // The mesh's own trust domain, when configured.
        let mesh = "spiffe://mesh.example/ns/agents/sa/agent-bot";
        assert!(identify_principal(mesh, &snap, &accounts(), &[]).unwrap_err().contains("not trusted"));
        assert_eq!(identify_principal(mesh, &snap, &accounts(), &["mesh.example".into()]).unwrap().agent, "bot");
    }

    #[test]
    fn a_peer_principal_of_anything_agentid_did_not_create_is_refused() {
        let snap = snapshot();
        let none = ByName::default();
        let ids = [
            // agentid's form in another trust domain, another namespace, or of no agent.
            "spiffe://evil.example/ns/agents/agent/bot",
            "spiffe://cluster.local/ns/other/agent/bot",
            "spiffe://cluster.local/ns/agents/agent/ghost",
            // A ServiceAccount agentid did not create (here: the namespace's default).
            "spiffe://cluster.local/ns/agents/sa/default",
        ];
        for p in ids {
            assert!(identify_principal(p, &snap, &accounts(), &[]).is_err(), "{p} identified");
        }
        // The agent's ServiceAccount, but the watch has not seen agentid create it (or it was re-created).
        for p in ["spiffe://cluster.local/ns/agents/agent/bot", "spiffe://cluster.local/ns/agents/sa/agent-bot"] {
            assert!(identify_principal(p, &snap, &none, &[]).is_err());
            let stale = ByName::from_iter([(
                ("agents", "agent-bot"),
                AccountEntry { agent_uid: "old-agent-uid".into(), ..account() },
            )]);
            assert!(identify_principal(p, &snap, &stale, &[]).is_err());
        }
    }

    #[test]
    fn credentials_combine_into_one_caller() {
        let snap = snapshot();
        let bot = identify(&token(None, "agentid-pdp"), &snap, Some(&account()), None, "agentid-pdp").unwrap();
        let other = Caller { agent: "other".into(), ..bot.clone() };
        let p = Some("spiffe://cluster.local/ns/agents/agent/bot");
        assert_eq!(combine(Some(Ok(bot.clone())), None, None), Ok(bot.clone()));
        assert_eq!(combine(None, p, Some(Ok(bot.clone()))), Ok(bot.clone()));
        assert_eq!(combine(Some(Ok(bot.clone())), p, Some(Ok(bot.clone()))), Ok(bot.clone()));
        assert!(combine(Some(Ok(bot.clone())), p, Some(Ok(other))).unwrap_err().contains("different agents"));
        // Either failing fails the whole.
        assert_eq!(combine(Some(Err("bad token".into())), p, Some(Ok(bot.clone()))), Err("bad token".into()));
        assert_eq!(combine(Some(Ok(bot)), p, Some(Err("bad peer".into()))), Err("bad peer".into()));
        // An untrusted principal alone (no by_principal) is no credential, and says so.
        assert!(combine(None, p, None).unwrap_err().contains("not honoured"));
        assert!(combine(None, None, None).unwrap_err().starts_with("no credential"));
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
