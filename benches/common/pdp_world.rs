//! The decision point's benchmark world, shared by benches/pdp_load.rs (AuthZEN over HTTPS) and
//! benches/pdp_grpc_load.rs (Envoy ext_authz over gRPC), each side by side with Open Policy Agent:
//! 1,000 agents × 20 ToolGrants as the typed objects the decision point watches, a fixed ES256 issuer key
//! signing ServiceAccount tokens the way kube-apiserver does, the ready `PdpState` over them, the same
//! grants as OPA data (bench/opa/), the calls both benches ask and the questions both engines must agree
//! on. Included with `#[path = "common/pdp_world.rs"] mod world;`.
#![allow(dead_code)] // each bench uses its own part

use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};

use agentid::api::{AgentIdentity, GrantPhase, ToolGrant};
use agentid::core::jwt::{Jwk, KeySet};
use agentid::core::pdp::caller::AccountEntry;
use agentid::core::pdp::{DecideConfig, Destination, Snapshot};
use agentid::metrics::Metrics;
use agentid::pdp::budget::Budgets;
use agentid::pdp::keys::{IssuerKeys, KeySource};
use agentid::pdp::{PdpConfig, PdpState, Question};

pub const ISSUER: &str = "https://kubernetes.default.svc";
pub const AUDIENCE: &str = "agentid-pdp";
pub const NS: &str = "agents";
pub const KID: &str = "bench-key-1";
pub const GRANTS_PER_AGENT: usize = 20;

// ---------------------------------------------------------------------------------------------------------
// The world: the same typed objects the decision point watches.

pub fn agent_name(n: usize) -> String {
    format!("agent-{n}")
}

pub fn service_account(n: usize) -> String {
    format!("agent-{}", agent_name(n))
}

pub fn agent(n: usize) -> AgentIdentity {
    serde_json::from_value(json!({
        "apiVersion": "agentid.dev/v1alpha1", "kind": "AgentIdentity",
        "metadata": {"name": agent_name(n), "namespace": NS, "uid": uuid(1, n, 0)},
        "spec": {"owner": "team", "audiences": ["https://tools.example.com"], "tokenTTL": "15m"},
        "status": {"serviceAccountName": service_account(n), "conditions": [{"type": "Ready", "status": "True",
            "reason": "IdentityReady", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}))
    .unwrap()
}

/// Grant `i` of agent `n`: tool `tool-<i>`, actions read/list, on `https://api-<i>.internal/v1/` and any
/// one-label host under `cdn.example.com`, up to confidential data. No limits, no `when`, no window: what
/// OPA can decide statelessly too.
pub fn grant(n: usize, i: usize) -> ToolGrant {
    serde_json::from_value(json!({
        "apiVersion": "agentid.dev/v1alpha1", "kind": "ToolGrant",
        "metadata": {"name": format!("{}-g{i}", agent_name(n)), "namespace": NS,
            "uid": uuid(2, n, i), "generation": 1},
        "spec": {"agentRef": {"name": agent_name(n)},
            "tools": [{"name": format!("tool-{i}"), "actions": ["read", "list"],
                "destinations": [format!("https://api-{i}.internal/v1/"), "*.cdn.example.com"],
                "maxDataSensitivity": "confidential"}]},
        "status": {"phase": "Active"}}))
    .unwrap()
}

pub struct World {
    pub agents: Vec<AgentIdentity>,
    pub grants: Vec<ToolGrant>,
}

pub fn world(agents: usize) -> World {
    World {
        agents: (0..agents).map(agent).collect(),
        grants: (0..agents).flat_map(|n| (0..GRANTS_PER_AGENT).map(move |i| grant(n, i))).collect(),
    }
}

/// The issuer's ES256 key, signing tokens the way kube-apiserver does.
pub struct Signer {
    pub key: EcdsaKeyPair,
    pub rng: SystemRandom,
}

impl Signer {
    pub fn new() -> Signer {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        Signer { key, rng }
    }

    pub fn jwk(&self) -> Jwk {
        let point = self.key.public_key().as_ref();
        Jwk {
            kid: KID.into(),
            kty: "EC".into(),
            alg: Some("ES256".into()),
            use_: Some("sig".into()),
            n: None,
            e: None,
            crv: Some("P-256".into()),
            x: Some(URL_SAFE_NO_PAD.encode(&point[1..33])),
            y: Some(URL_SAFE_NO_PAD.encode(&point[33..65])),
        }
    }

    pub fn sign(&self, claims: &Value) -> String {
        let header = json!({"alg": "ES256", "kid": KID, "typ": "JWT"});
        let signed =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let sig = self.key.sign(&self.rng, signed.as_bytes()).unwrap();
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    /// A ServiceAccount token of agent `n` for the decision point, valid for an hour.
    pub fn token(&self, n: usize, now: i64) -> String {
        self.sign(&json!({"iss": ISSUER, "sub": format!("system:serviceaccount:{NS}:{}", service_account(n)),
            "aud": [AUDIENCE], "exp": now + 3600, "nbf": now - 60, "iat": now - 60, "jti": format!("bench-{n}"),
            "kubernetes.io": {"namespace": NS, "serviceaccount": {"name": service_account(n), "uid": uuid(3, n, 0)}}}))
    }
}

pub fn jwks(signer: &Signer) -> Value {
    let k = signer.jwk();
    json!({"keys": [{"kid": k.kid, "kty": k.kty, "alg": k.alg, "use": k.use_, "crv": k.crv, "x": k.x, "y": k.y}]})
}

/// A ready decision point over the world.
pub fn pdp_state(w: &World, signer: &Signer) -> Arc<PdpState> {
    let keys = KeySource::fixed(IssuerKeys { issuer: ISSUER.into(), keys: KeySet { keys: vec![signer.jwk()] } });
    let config = PdpConfig {
        audience: AUDIENCE.into(),
        decide: DecideConfig::default(),
        replica: "bench".into(),
        ..Default::default()
    };
    let state = PdpState::new(
        config,
        "cluster.local",
        Arc::new(keys),
        Arc::new(Budgets::local()),
        Arc::new(Metrics::default()),
    );
    *state.snapshot.write().unwrap() = Snapshot::build(&w.agents, &w.grants, &[], "cluster.local");
    let mut accounts = state.accounts.write().unwrap();
    for n in 0..w.agents.len() {
        let entry = AccountEntry { uid: uuid(3, n, 0).into(), agent: agent_name(n), agent_uid: uuid(1, n, 0).into() };
        accounts.insert(NS, &service_account(n), entry);
    }
    drop(accounts);
    state.ready.store(true, Ordering::Release);
    Arc::new(state)
}

/// The same grants as OPA data (bench/opa/policy.rego documents the layout): accounts and agents by
/// namespace and name, grants by namespace, agent and tool; destination patterns pre-parsed the way a
/// competent OPA user would (normalised URL prefixes, host suffixes for globs).
pub fn opa_data(w: &World, jwks: &Value) -> Value {
    let mut accounts = serde_json::Map::new();
    let mut agents = serde_json::Map::new();
    for a in &w.agents {
        let name = a.metadata.name.clone().unwrap();
        let n: usize = name.trim_start_matches("agent-").parse().unwrap();
        let ready =
            a.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        accounts.insert(
            a.service_account_name(),
            json!({"uid": uuid(3, n, 0), "agent": name, "agent_uid": a.metadata.uid}),
        );
        agents.insert(name, json!({"uid": a.metadata.uid, "ready": ready, "suspended": a.spec.suspended}));
    }
    let mut grants: serde_json::Map<String, Value> = serde_json::Map::new();
    for g in &w.grants {
        let by_tool = grants.entry(g.spec.agent_ref.name.clone()).or_insert_with(|| json!({}));
        for t in &g.spec.tools {
            let destinations: Vec<Value> = t
                .destinations
                .iter()
                .map(|d| {
                    if d.contains("://") {
                        let prefix = Destination::parse(d).unwrap().to_string();
                        let under = if prefix.ends_with('/') { prefix.clone() } else { format!("{prefix}/") };
                        json!({"prefix": prefix, "under": under})
                    } else if let Some(suffix) = d.strip_prefix("*.") {
                        json!({"host_suffix": format!(".{}", suffix.to_ascii_lowercase())})
                    } else {
                        json!({"host": d.to_ascii_lowercase()})
                    }
                })
                .collect();
            let active = g.status.as_ref().and_then(|s| s.phase) == Some(GrantPhase::Active);
            let rule = json!({"grant": g.metadata.name, "active": active, "actions": t.actions,
                "destinations": destinations, "max_sensitivity": t.max_data_sensitivity});
            let list = by_tool.as_object_mut().unwrap().entry(t.name.clone()).or_insert_with(|| json!([]));
            list.as_array_mut().unwrap().push(rule);
        }
    }
    json!({
        "config": {"issuer": ISSUER, "audience": AUDIENCE, "jwks": jwks.to_string(), "verify_token": true,
            "default_sensitivity": "internal"},
        "accounts": {NS: accounts},
        "agents": {NS: agents},
        "grants": {NS: grants},
    })
}

// ---------------------------------------------------------------------------------------------------------
// Questions, as AuthZEN bodies for agentid and as OPA input.

#[derive(Clone)]
pub struct Call {
    pub token: String,
    pub tool: String,
    pub action: String,
    pub destination: String,
    pub sensitivity: Option<&'static str>,
}

impl Call {
    pub fn allowed(signer_tokens: &[String], n: usize) -> Call {
        let i = n % GRANTS_PER_AGENT;
        Call {
            token: signer_tokens[n].clone(),
            tool: format!("tool-{i}"),
            action: "read".into(),
            destination: format!("https://api-{i}.internal/v1/items/{n}?expand=owner"),
            sensitivity: None,
        }
    }

    /// Denied: the grant for the tool covers `/v1/`, not `/admin/`.
    pub fn denied(signer_tokens: &[String], n: usize) -> Call {
        let i = n % GRANTS_PER_AGENT;
        Call { destination: format!("https://api-{i}.internal/admin/{n}"), ..Call::allowed(signer_tokens, n) }
    }

    pub fn authzen(&self) -> Value {
        let mut properties = json!({"destination": self.destination});
        if let Some(s) = self.sensitivity {
            properties["sensitivity"] = json!(s);
        }
        json!({"action": {"name": self.action}, "resource": {"type": "tool", "id": self.tool, "properties": properties}})
    }

    pub fn question(&self) -> Question {
        Question {
            tool: self.tool.clone(),
            action: self.action.clone(),
            destination: Some(self.destination.clone()),
            sensitivity: self.sensitivity.map(|s| serde_json::from_value(json!(s)).unwrap()),
            ..Default::default()
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Agreement: both engines answer the same questions the same way.

pub struct Agreement {
    pub call: Call,
    pub allow: bool,
    pub reason: Option<&'static str>,
    /// Not asked of OPA without verification (a forged token is the point of verifying).
    pub needs_verification: bool,
}

pub fn agreement_cases(tokens: &[String], forged: &str, stranger: &str) -> Vec<Agreement> {
    let n = 3.min(tokens.len() - 1);
    let base = Call::allowed(tokens, n);
    let i = n % GRANTS_PER_AGENT;
    let with = |f: &dyn Fn(&mut Call)| {
        let mut c = base.clone();
        f(&mut c);
        c
    };
    let case = |call: Call, allow: bool, reason: Option<&'static str>| Agreement {
        call,
        allow,
        reason,
        needs_verification: false,
    };
    vec![
        case(base.clone(), true, None),
        case(with(&|c| c.destination = format!("https://api-{i}.internal/v1/")), true, None),
        case(
            with(&|c| c.destination = format!("https://api-{i}.internal/admin/")),
            false,
            Some("destination-not-granted"),
        ),
        case(
            with(&|c| c.destination = format!("https://api-{i}.internal/v1x/a")),
            false,
            Some("destination-not-granted"),
        ),
        case(
            with(&|c| c.destination = format!("http://api-{i}.internal/v1/a")),
            false,
            Some("destination-not-granted"),
        ),
        case(
            with(&|c| c.destination = format!("https://api-{}.internal/v1/a", i + 1)),
            false,
            Some("destination-not-granted"),
        ),
        case(with(&|c| c.destination = "https://eu.cdn.example.com/x".into()), true, None),
        case(with(&|c| c.destination = "https://a.b.cdn.example.com/x".into()), false, Some("destination-not-granted")),
        case(with(&|c| c.destination = "https://cdn.example.com/x".into()), false, Some("destination-not-granted")),
        case(with(&|c| c.destination = "http://eu.cdn.example.com/x".into()), false, Some("destination-not-granted")),
        case(with(&|c| c.action = "delete".into()), false, Some("action-not-granted")),
        case(with(&|c| c.action = "list".into()), true, None),
        case(with(&|c| c.sensitivity = Some("confidential")), true, None),
        case(with(&|c| c.sensitivity = Some("restricted")), false, Some("sensitivity-too-high")),
        case(with(&|c| c.sensitivity = Some("public")), true, None),
        case(with(&|c| c.tool = "tool-99".into()), false, Some("no-grant-for-tool")),
        // The agent's other tools are its own grants; another agent's tool name is not a grant of this one.
        case(
            with(&|c| c.tool = format!("tool-{}", (i + 1) % GRANTS_PER_AGENT)),
            false,
            Some("destination-not-granted"),
        ),
        Agreement {
            call: with(&|c| c.token = forged.to_string()),
            allow: false,
            reason: Some("unauthenticated"),
            needs_verification: true,
        },
        case(with(&|c| c.token = stranger.to_string()), false, Some("unauthenticated")),
    ]
}

// ---------------------------------------------------------------------------------------------------------
// OPA processes and the machine.

/// `opa run --server`, killed when dropped.
pub struct Opa(pub Child);

impl Drop for Opa {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The 1/5/15-minute load averages: the machine is shared, so say how busy it was.
pub fn load_average() -> String {
    let l = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// A decision point's routes served by agentid's own TLS listener on 127.0.0.1, on a 2-thread runtime of
/// its own (so the load client does not share it).
pub struct Served {
    pub addr: std::net::SocketAddr,
    /// The CA (PEM) clients trust.
    pub ca: Vec<u8>,
    /// The serving certificate and key (PEM), for a peer engine to serve with the same.
    pub cert: String,
    pub key: String,
}

pub fn serve(app: axum::Router, now: k8s_openapi::jiff::Timestamp) -> Served {
    use agentid::server::listener::{Limits, Listener, TlsHandle};
    use agentid::server::tls;
    let (ca, ca_key) = tls::generate_ca(now).unwrap();
    let (cert, key, _) =
        tls::generate_serving(&ca_key, &["localhost".into()], now, std::time::Duration::from_secs(3600)).unwrap();
    let material = tls::TlsMaterial {
        cert_pem: cert.clone().into_bytes(),
        key_pem: key.clone().into_bytes(),
        ca_pem: None,
        not_after: None,
    };
    let handle = TlsHandle::new(tls::server_config(&material, None).unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let listener =
                Listener::bind("pdp", "127.0.0.1:0".parse().unwrap(), handle, app, Limits::default()).unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            listener.run().await;
        });
    });
    Served { addr: rx.recv().unwrap(), ca: ca.into_bytes(), cert, key }
}

/// A uid as Kubernetes writes them (a canonical lowercase UUID), distinct per (kind of object, n, i).
pub fn uuid(kind: u8, n: usize, i: usize) -> String {
    format!("{n:08x}-{i:04x}-4{kind:03x}-8000-000000000000")
}
