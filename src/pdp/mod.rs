//! The runtime decision point (PDP), the shell around [`crate::core::pdp`]: it keeps the snapshot of
//! agents, grants and tasks current from watches, verifies callers' tokens locally against the
//! issuer's keys, asks the pure core for the decision, keeps the counters (with cross-replica budgets
//! for per-task limits, see [`budget`]) and writes one decision-log line per decision.
//!
//! Interfaces: [`http`] (OpenID AuthZEN, forward-auth for nginx / Traefik / Caddy / Envoy's HTTP
//! ext_authz) and [`grpc`] (Envoy ext_authz v3, for Envoy, Istio `CUSTOM` policies, Envoy Gateway and
//! agentgateway). Every replica serves them on one TLS listener of their own (`--pdp-addr`).

pub mod budget;
pub mod grpc;
pub mod http;
pub mod keys;
pub mod watch;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use k8s_openapi::jiff::Timestamp;
use serde::Serialize;
use tracing::info;

use crate::api::DataSensitivity;
use crate::core::jwt;
use crate::core::pdp::caller::{self, AccountEntry, AnchorEntry, ByName, Caller};
use crate::core::pdp::{DecideConfig, Decision, DecisionRequest, MemoryUsage, Outcome, ReasonCode, Snapshot};
use crate::metrics::Metrics;
use budget::Budgets;
use keys::KeySource;

/// Settings of the decision point.
#[derive(Debug, Clone, Default)]
pub struct PdpConfig {
    /// Audience an agent's own ServiceAccount token must carry to be accepted here (task tokens carry their
    /// task's audiences instead).
    pub audience: String,
    pub decide: DecideConfig,
    /// This replica's name (budgets and decision logs).
    pub replica: String,
    /// Names (URI or DNS SANs) of enforcement points' client certificates whose ext_authz
    /// `source.principal` identifies the agent (they terminated the agent's mTLS). Empty: principals are
    /// never trusted, every caller presents a token.
    pub trusted_peps: Vec<String>,
    /// Trust domains of mesh identities (`spiffe://<td>/ns/<ns>/sa/<sa>`) accepted besides agentid's own.
    pub mesh_trust_domains: Vec<String>,
}

/// What a caller presents to be identified.
#[derive(Debug, Clone, Copy, Default)]
pub struct Credentials<'a> {
    /// The bearer token of the request.
    pub bearer: Option<&'a str>,
    /// The peer principal an enforcement point reports (ext_authz `source.principal`).
    pub principal: Option<&'a str>,
    /// Whether the enforcement point reporting `principal` presented a client certificate naming one of
    /// [`PdpConfig::trusted_peps`]; an untrusted principal is ignored.
    pub principal_trusted: bool,
}

impl<'a> Credentials<'a> {
    pub fn bearer(bearer: Option<&'a str>) -> Self {
        Credentials { bearer, ..Default::default() }
    }
}

/// What a caller asks, before identification.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Question {
    /// The task named by the request (a task token names its own; the two must agree).
    pub task: Option<String>,
    pub tool: String,
    pub action: String,
    pub destination: Option<String>,
    pub sensitivity: Option<DataSensitivity>,
    pub method: Option<String>,
    pub argument_names: Vec<String>,
    /// Who the request says the agent is (AuthZEN `subject.id`): its SPIFFE ID or `<namespace>/<name>`.
    /// Must agree with the credential.
    pub subject: Option<String>,
}

impl Question {
    /// What the identified `caller` asks: the agent and task its credential names, the tool and call of
    /// the question. Refused when the question claims another agent or task than the credential.
    pub fn request_for(&self, caller: &Caller) -> Result<DecisionRequest, String> {
        caller::check_claims(caller, self.subject.as_deref(), self.task.as_deref())?;
        Ok(DecisionRequest {
            namespace: caller.namespace.clone(),
            agent: caller.agent.clone(),
            agent_uid: Some(caller.agent_uid.clone()),
            task: caller.task.clone().or_else(|| self.task.clone()),
            tool: self.tool.clone(),
            action: self.action.clone(),
            destination: self.destination.clone(),
            sensitivity: self.sensitivity,
            method: self.method.clone(),
            argument_names: self.argument_names.clone(),
        })
    }
}

/// A decision with its id, as the interfaces return it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Answer {
    pub decision_id: String,
    /// `allow`, `deny` or `approval-required`.
    pub decision: &'static str,
    pub reasons: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub explanation: String,
    /// The agent's SPIFFE ID, when the caller was identified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}

impl Answer {
    pub fn allowed(&self) -> bool {
        self.decision == "allow"
    }

    pub fn unauthenticated(&self) -> bool {
        self.reasons.first() == Some(&ReasonCode::Unauthenticated.as_str())
    }
}

/// The state every replica's decision point serves from.
pub struct PdpState {
    pub config: PdpConfig,
    pub snapshot: RwLock<Snapshot>,
    pub accounts: RwLock<ByName<AccountEntry>>,
    pub anchors: RwLock<ByName<AnchorEntry>>,
    pub usage: Mutex<MemoryUsage>,
    pub budgets: Arc<Budgets>,
    pub keys: Arc<KeySource>,
    pub metrics: Arc<Metrics>,
    /// Set once every watch has listed and the issuer's keys are loaded; until then every decision is a
    /// deny (`not-ready`).
    pub ready: AtomicBool,
    verified: Mutex<VerifiedTokens>,
    /// The audit trail, when one is configured: every decision is recorded without waiting (dropped
    /// records are counted, decisions keep flowing).
    pub audit: std::sync::OnceLock<Arc<crate::audit::AuditTrail>>,
}

/// Most verified tokens remembered (by SHA-256) at once.
const VERIFIED_TOKENS: usize = 65_536;

#[derive(Default)]
struct VerifiedTokens {
    /// The keys the entries were verified with.
    keys: Option<Arc<keys::IssuerKeys>>,
    tokens: HashMap<[u8; 32], Arc<jwt::ServiceAccountToken>>,
}

impl VerifiedTokens {
    /// Remembers a verified token, holding at most `cap`: when full, the expired ones go first, and if that
    /// frees nothing, all of them (each is verified again on its next use: a bound, never a wrong answer).
    fn remember(&mut self, hash: [u8; 32], token: Arc<jwt::ServiceAccountToken>, now: i64, cap: usize) {
        if self.tokens.len() >= cap {
            self.tokens.retain(|_, t| now <= t.expires_at);
            if self.tokens.len() >= cap {
                self.tokens.clear();
            }
        }
        self.tokens.insert(hash, token);
    }
}

impl PdpState {
    pub fn new(
        config: PdpConfig,
        trust_domain: &str,
        keys: Arc<KeySource>,
        budgets: Arc<Budgets>,
        metrics: Arc<Metrics>,
    ) -> Self {
        PdpState {
            config,
            snapshot: RwLock::new(Snapshot::new(trust_domain)),
            accounts: RwLock::new(ByName::default()),
            anchors: RwLock::new(ByName::default()),
            usage: Mutex::new(MemoryUsage::default()),
            budgets,
            keys,
            metrics,
            ready: AtomicBool::new(false),
            verified: Mutex::new(VerifiedTokens::default()),
            audit: std::sync::OnceLock::new(),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Verifies a bearer token and identifies its agent (and task).
    pub async fn authenticate(&self, bearer: &str) -> Result<Caller, String> {
        let now = Timestamp::now().as_second();
        let mut verified = self.verify(bearer, now);
        if let Err(e) = &verified
            && e.is_unknown_key()
            && self.keys.refresh_for_unknown_key().await
        {
            verified = self.verify(bearer, now);
        }
        let token = verified.map_err(|e| e.to_string())?;
        let ns = &token.namespace;
        let account =
            self.accounts.read().unwrap_or_else(|p| p.into_inner()).get(ns, &token.service_account.name).cloned();
        let anchor = token
            .secret
            .as_ref()
            .and_then(|s| self.anchors.read().unwrap_or_else(|p| p.into_inner()).get(ns, &s.name).cloned());
        let snap = self.snapshot.read().unwrap_or_else(|p| p.into_inner());
        caller::identify(&token, &snap, account.as_ref(), anchor.as_ref(), &self.config.audience)
    }

    /// Verifies a token's signature and claims, remembering the result until the token expires: a
    /// signature does not stop being valid (the cache is dropped when the issuer's keys change), while
    /// everything that can be revoked — the ServiceAccount, the agent, the task's anchor — is looked up
    /// again on every call by [`caller::identify`].
    fn verify(&self, bearer: &str, now: i64) -> Result<Arc<jwt::ServiceAccountToken>, jwt::TokenError> {
        use sha2::{Digest, Sha256};
        let keys = self.keys.current().ok_or(jwt::TokenError::UnknownKey)?;
        let hash: [u8; 32] = Sha256::digest(bearer.as_bytes()).into();
        {
            let mut cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            if !cache.keys.as_ref().is_some_and(|k| Arc::ptr_eq(k, &keys)) {
                cache.tokens.clear();
                cache.keys = Some(keys.clone());
            }
            if let Some(t) = cache.tokens.get(&hash) {
                if now <= t.expires_at.saturating_add(jwt::LEEWAY_SECS) {
                    return Ok(t.clone());
                }
                cache.tokens.remove(&hash);
                return Err(jwt::TokenError::Expired);
            }
        }
        let token = Arc::new(jwt::verify(bearer, &keys.keys, &keys.issuer, now, &|_| true)?);
        self.verified.lock().unwrap_or_else(|p| p.into_inner()).remember(hash, token.clone(), now, VERIFIED_TOKENS);
        Ok(token)
    }

    /// Decides one question from a caller presenting `bearer`: authentication, the pure decision, the
    /// cross-replica budgets of an allowed call, the counters, the decision log and metrics.
    pub async fn check(&self, bearer: Option<&str>, question: Question) -> Answer {
        self.check_as(Credentials::bearer(bearer), question).await
    }

    /// [`Self::check`] for a caller identified by a bearer token, a trusted peer principal, or both.
    pub async fn check_as(&self, creds: Credentials<'_>, question: Question) -> Answer {
        let started = Instant::now();
        let (decision, caller) = self.decide(creds, &question).await;
        let answer = self.answer(&decision, caller.as_ref());
        self.record(&answer, caller.as_ref(), &question, started);
        if let Some(trail) = self.audit.get() {
            // The call's caller and question are moved into the record, not copied: the decision's own
            // cost with the trail on stays close to its cost without (benches/pdp_load.rs).
            trail.try_record(audit_event(&answer, caller, question));
        }
        answer
    }

    /// Identifies the caller: a verified token, a trusted peer principal, or both (then they must name
    /// the same agent). `Err` explains an `unauthenticated` denial.
    pub async fn identify(&self, creds: Credentials<'_>) -> Result<Caller, String> {
        let principal = creds.principal.filter(|p| !p.is_empty());
        let by_principal = principal.filter(|_| creds.principal_trusted).map(|p| {
            let accounts = self.accounts.read().unwrap_or_else(|e| e.into_inner());
            let snap = self.snapshot.read().unwrap_or_else(|e| e.into_inner());
            caller::identify_principal(p, &snap, &accounts, &self.config.mesh_trust_domains)
        });
        let by_token = match creds.bearer {
            Some(bearer) => Some(self.authenticate(bearer).await),
            None => None,
        };
        caller::combine(by_token, principal, by_principal)
    }

    async fn decide(&self, creds: Credentials<'_>, q: &Question) -> (Decision, Option<Caller>) {
        if !self.is_ready() {
            return (Decision::deny(ReasonCode::NotReady, "the decision point is still loading its state"), None);
        }
        let caller = match self.identify(creds).await {
            Ok(c) => c,
            Err(e) => return (Decision::deny(ReasonCode::Unauthenticated, e), None),
        };
        let req = match q.request_for(&caller) {
            Ok(req) => req,
            Err(e) => return (Decision::deny(ReasonCode::BadRequest, e), Some(caller)),
        };
        let now = Timestamp::now();
        // One read of the snapshot for the decision and the limits an allowed call spends from.
        let (decision, limits) = {
            let snap = self.snapshot.read().unwrap_or_else(|p| p.into_inner());
            let decision = {
                let usage = self.usage.lock().unwrap_or_else(|p| p.into_inner());
                crate::core::pdp::decide(&req, &snap, &*usage, now, &self.config.decide)
            };
            let limits = decision.charge.as_ref().map(|c| crate::core::pdp::budget::needs(&snap, &req, c));
            (decision, limits.unwrap_or_default())
        };
        let Some(charge) = decision.charge.clone() else { return (decision, Some(caller)) };
        // Per-task limits hold across replicas: an allowed call spends a unit of a budget slice this
        // replica holds for the task (claimed from the AgentTask's status when it has none left).
        if let Err(why) = self.budgets.spend(&req.namespace, &limits).await {
            let mut d = Decision::deny(ReasonCode::LimitExceeded, why);
            d.grant = Some(charge.grant.clone());
            return (d, Some(caller));
        }
        self.usage.lock().unwrap_or_else(|p| p.into_inner()).record(&req, &charge);
        (decision, Some(caller))
    }

    fn answer(&self, d: &Decision, caller: Option<&Caller>) -> Answer {
        Answer {
            decision_id: decision_id(),
            decision: d.outcome.as_str(),
            reasons: d.reasons.iter().map(|r| r.as_str()).collect(),
            grant: d.grant.clone(),
            explanation: d.explanation.clone(),
            agent: caller.map(|c| c.spiffe_id.clone()),
        }
    }

    /// The decision log (one JSON line per decision with `--log-format json`) and metrics. Never a
    /// token, never argument values, never a query string.
    fn record(&self, a: &Answer, caller: Option<&Caller>, q: &Question, started: Instant) {
        let took = started.elapsed();
        let reason = a.reasons.first().copied().unwrap_or("");
        self.metrics.decision(a.decision, reason, took.as_secs_f64());
        let destination = q.destination.as_deref().map(crate::core::audit::record::destination);
        info!(
            target: "agentid::decision",
            decision_id = %a.decision_id,
            decision = a.decision,
            reasons = ?a.reasons,
            agent = a.agent.as_deref().unwrap_or_default(),
            namespace = caller.map(|c| c.namespace.as_str()).unwrap_or_default(),
            task = caller.and_then(|c| c.task.as_deref()).or(q.task.as_deref()).unwrap_or_default(),
            credential = caller.and_then(|c| c.credential_id.as_deref()).unwrap_or_default(),
            tool = %q.tool,
            action = %q.action,
            destination = destination.unwrap_or_default(),
            sensitivity = q.sensitivity.map(crate::core::pdp::condition::sensitivity_name).unwrap_or_default(),
            arguments = ?q.argument_names,
            grant = a.grant.as_deref().unwrap_or_default(),
            replica = %self.config.replica,
            latency_us = took.as_micros() as u64,
            "decision"
        );
    }
}

/// The audit record of a decision: never the token, argument values or the query string. Takes the
/// call's caller and question, whose strings it keeps (only the answer's are copied).
fn audit_event(a: &Answer, caller: Option<Caller>, q: Question) -> crate::core::audit::Event {
    let Question { task: asked_task, tool, action, destination, .. } = q;
    let mut e = crate::core::audit::Event::new(crate::core::audit::Kind::Decision);
    if let Some(c) = caller {
        e.actor = Some(c.spiffe_id);
        e.namespace = Some(c.namespace);
        e.agent = Some(c.agent);
        e.task = c.task;
        e.credential = c.credential_id;
    }
    e.task = e.task.or(asked_task);
    e.tool = Some(tool);
    e.action = Some(action);
    e.destination = destination.map(|mut d| {
        d.truncate(crate::core::audit::record::destination(&d).len());
        d
    });
    e.decision = Some(a.decision.to_string());
    e.reasons = a.reasons.iter().map(|r| r.to_string()).collect();
    e.grant = a.grant.clone();
    e.request = Some(a.decision_id.clone());
    e
}

/// A random 128-bit decision id, hex.
pub fn decision_id() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        // The system RNG failing is not a reason to refuse a decision; fall back to the clock.
        bytes[..16].copy_from_slice(&Timestamp::now().as_nanosecond().to_be_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Outcome as the interfaces report it.
pub fn outcome_of(a: &Answer) -> Outcome {
    match a.decision {
        "allow" => Outcome::Allow,
        "approval-required" => Outcome::ApprovalRequired,
        _ => Outcome::Deny,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(expires_at: i64) -> Arc<jwt::ServiceAccountToken> {
        Arc::new(jwt::ServiceAccountToken {
            namespace: "agents".into(),
            service_account: Default::default(),
            secret: None,
            audiences: vec![],
            expires_at,
            id: None,
            subject: String::new(),
        })
    }

    /// The verified-token cache stays within its bound: expired tokens go first, and a cache full of live
    /// tokens starts over rather than grow (threat model: a flood of distinct valid tokens).
    #[test]
    fn the_verified_token_cache_is_bounded() {
        let mut cache = VerifiedTokens::default();
        let now = 1_000;
        cache.remember([1; 32], token(now - 1), now, 3);
        cache.remember([2; 32], token(now + 60), now, 3);
        cache.remember([3; 32], token(now + 60), now, 3);
        assert_eq!(cache.tokens.len(), 3);
        // Full: the expired one makes room; the live ones stay.
        cache.remember([4; 32], token(now + 60), now, 3);
        assert_eq!(cache.tokens.len(), 3);
        assert!(!cache.tokens.contains_key(&[1; 32]) && cache.tokens.contains_key(&[2; 32]));
        // Full of live tokens: starts over with the new one.
        cache.remember([5; 32], token(now + 60), now, 3);
        assert_eq!(cache.tokens.keys().collect::<Vec<_>>(), [&[5; 32]]);
        for i in 0..100u8 {
            cache.remember([i; 32], token(now + 60), now, 3);
            assert!(cache.tokens.len() <= 3);
        }
    }

    #[test]
    fn a_decision_record_names_who_asked_what_and_where_never_the_query() {
        let answer = Answer {
            decision_id: "d1".into(),
            decision: "deny",
            reasons: vec!["destination-not-granted"],
            grant: Some("crm-read".into()),
            explanation: "not granted".into(),
            agent: Some("spiffe://td/ns/agents/agent/bot".into()),
        };
        let caller = Caller {
            namespace: "agents".into(),
            agent: "bot".into(),
            agent_uid: "u1".into(),
            spiffe_id: "spiffe://td/ns/agents/agent/bot".into(),
            task: Some("fix-1".into()),
            credential_id: Some("jti-1".into()),
        };
        let question = Question {
            task: Some("asked".into()),
            tool: "crm".into(),
            action: "read".into(),
            destination: Some("https://crm.internal/api/x?secret=1#frag".into()),
            argument_names: vec!["customer".into()],
            ..Default::default()
        };
        let e = audit_event(&answer, Some(caller), question.clone());
        assert_eq!(e.kind, crate::core::audit::Kind::Decision);
        assert_eq!(e.actor.as_deref(), Some("spiffe://td/ns/agents/agent/bot"));
        assert_eq!((e.namespace.as_deref(), e.agent.as_deref()), (Some("agents"), Some("bot")));
        assert_eq!(e.task.as_deref(), Some("fix-1"), "the credential's task, not the one asked for");
        assert_eq!((e.tool.as_deref(), e.action.as_deref()), (Some("crm"), Some("read")));
        assert_eq!(e.destination.as_deref(), Some("https://crm.internal/api/x"));
        assert_eq!(e.decision.as_deref(), Some("deny"));
        assert_eq!(e.reasons, ["destination-not-granted"]);
        assert_eq!((e.grant.as_deref(), e.request.as_deref()), (Some("crm-read"), Some("d1")));
        assert_eq!(e.credential.as_deref(), Some("jti-1"));

        // Not identified: no actor, the task asked for, a fragment cut as well.
        let question = Question { destination: Some("https://h/p#f?x".into()), ..question };
        let e = audit_event(&answer, None, question);
        assert_eq!((e.actor, e.namespace, e.agent, e.credential), (None, None, None, None));
        assert_eq!(e.task.as_deref(), Some("asked"));
        assert_eq!(e.destination.as_deref(), Some("https://h/p"));
    }
}
