//! Shared harness of the integration tests. They run against the real
//! kube-apiserver in KUBECONFIG (`make test` starts one); each test works in a
//! fresh namespace, since namespaces never finish deleting without
//! kube-controller-manager.
#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;

use std::collections::BTreeMap;

use agentid::cli::run::{RunArgs, serve_webhook};
use agentid::controller::{Context, OperatorConfig};
use agentid::metrics::Metrics;
use agentid::probes::Readiness;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use kube::api::DeleteParams;

static CRDS: OnceCell<()> = OnceCell::const_new();
static COUNTER: AtomicU32 = AtomicU32::new(0);

pub async fn client() -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::try_default()
        .await
        .expect("integration tests need KUBECONFIG pointing at a running kube-apiserver (make test)")
}

/// Installs (server-side applies) the CRDs once per test binary and waits until they are served.
pub async fn install_crds(client: &Client) {
    CRDS.get_or_init(|| async {
        for crd in agentid::api::crds() {
            apply_crd(client, &crd).await;
        }
    })
    .await;
}

/// Server-side applies `crd` and waits until the apiserver serves it (Established).
pub async fn apply_crd(client: &Client, crd: &CustomResourceDefinition) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = crd.metadata.name.clone().unwrap();
    api.patch(&name, &PatchParams::apply("agentid-tests").force(), &Patch::Apply(crd)).await.unwrap();
    wait_until(Duration::from_secs(30), &format!("CRD {name} established"), || {
        let api = api.clone();
        let name = name.clone();
        async move {
            let crd = api.get(&name).await.ok()?;
            crd.status?.conditions?.iter().any(|c| c.type_ == "Established" && c.status == "True").then_some(())
        }
    })
    .await;
}

/// A fresh namespace with a unique name.
pub async fn namespace(client: &Client, prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let name = format!("{prefix}-{}-{n}-{:05x}", std::process::id() % 100000, nanos & 0xfffff);
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.unwrap();
    name
}

/// Everything a test needs: a client, the CRDs, a fresh namespace.
pub struct TestEnv {
    pub client: Client,
    pub ns: String,
}

pub async fn env(prefix: &str) -> TestEnv {
    let client = client().await;
    install_crds(&client).await;
    let ns = namespace(&client, prefix).await;
    TestEnv { client, ns }
}

/// The operator's controllers, in-process, watching only `ns`. Aborted on drop.
pub struct Operator {
    pub handles: Vec<JoinHandle<()>>,
    pub metrics: Arc<Metrics>,
}

impl Drop for Operator {
    fn drop(&mut self) {
        for h in &self.handles {
            h.abort();
        }
    }
}

pub fn operator_config(ns: &str) -> OperatorConfig {
    OperatorConfig {
        trust_domain: "cluster.local".into(),
        instance: format!("test-{ns}"),
        watch_namespace: Some(ns.to_string()),
    }
}

pub fn start_operator(client: &Client, config: OperatorConfig) -> Operator {
    start_operator_with_trail(client, config, None)
}

/// [`start_operator`], recording lifecycle changes in `trail`.
pub fn start_operator_with_trail(
    client: &Client,
    config: OperatorConfig,
    trail: Option<Arc<agentid::audit::AuditTrail>>,
) -> Operator {
    let metrics = Arc::new(Metrics::default());
    let mut ctx = Context::new(client.clone(), config, metrics.clone());
    ctx.audit = trail;
    let ctx = Arc::new(ctx);
    let handles = vec![
        tokio::spawn(agentid::controller::identity::run(ctx.clone())),
        tokio::spawn(agentid::controller::toolgrant::run(ctx.clone())),
        tokio::spawn(agentid::controller::task::run(ctx)),
    ];
    Operator { handles, metrics }
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Parses a YAML object into a typed resource.
pub fn from_yaml<T: serde::de::DeserializeOwned>(yaml: &str) -> T {
    serde_norway::from_str(yaml).expect("test fixture YAML")
}

/// The CA of the client certificate the local control plane's apiserver presents to webhooks
/// (`e2e/cluster.sh` writes it next to the kubeconfig), so the test webhook accepts only the apiserver.
pub fn webhook_client_ca() -> Option<std::path::PathBuf> {
    let kubeconfig = std::env::var_os("KUBECONFIG").expect("KUBECONFIG");
    let path = std::path::Path::new(&kubeconfig).parent().unwrap().join("pki/webhook-client-ca.crt");
    assert!(
        path.exists(),
        "{} is missing: the local control plane of e2e/cluster.sh presents a client certificate to webhooks (restart it)",
        path.display()
    );
    Some(path)
}

/// An HTTPS server of the operator (webhook + token broker), in-process, scoped to
/// namespaces labeled `agentid.dev/test-scope=<scope>`, registered with a `url:` client config.
pub struct Webhook {
    pub client: Client,
    pub name: String,
    pub scope: String,
    pub metrics: Arc<Metrics>,
    pub operator_ns: String,
    /// The task-token broker's address.
    pub addr: std::net::SocketAddr,
    /// The admission endpoint's address (the apiserver's client certificate required).
    pub webhook_addr: std::net::SocketAddr,
    /// The decision point's address.
    pub pdp_addr: std::net::SocketAddr,
    /// The audit trail, when the flags opened one.
    pub audit: Option<Arc<agentid::audit::AuditTrail>>,
}

impl Webhook {
    pub async fn start(client: &Client, scope: &str) -> Webhook {
        Self::start_with(client, scope, |_| {}).await
    }

    /// [`Webhook::start`] with flags changed by `configure`.
    pub async fn start_with(client: &Client, scope: &str, configure: impl FnOnce(&mut RunArgs)) -> Webhook {
        let operator_ns = namespace(client, "agentid-op").await;
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let name = format!("agentid-test-{scope}");
        let args = RunArgs {
            trust_domain: "cluster.local".into(),
            probe_addr: "127.0.0.1:0".parse().unwrap(),
            watch_namespace: None,
            instance: None,
            operator_namespace: operator_ns.clone(),
            service_account: "agentid".into(),
            no_leader_elect: true,
            allow_unchecked_grants: false,
            no_webhook: false,
            webhook_addr: format!("127.0.0.1:{port}").parse().unwrap(),
            broker_addr: "127.0.0.1:0".parse().unwrap(),
            webhook_url: Some(format!("https://127.0.0.1:{port}")),
            webhook_service: "agentid".into(),
            webhook_configuration: name.clone(),
            no_webhook_registration: false,
            webhook_scope: Some(format!("agentid.dev/test-scope={scope}")),
            tls_cert_file: None,
            tls_key_file: None,
            ca_bundle_file: None,
            exceptions_file: None,
            token_audience: "agentid".into(),
            webhook_client_ca_file: webhook_client_ca(),
            enforcement_admin_groups: vec!["system:masters".into()],
            no_enforcement_guard: false,
            pdp_addr: "127.0.0.1:0".parse().unwrap(),
            pdp_audience: "agentid-pdp".into(),
            pdp_default_sensitivity: agentid::api::DataSensitivity::Internal,
            pdp_client_ca_file: None,
            pdp_trusted_pep: vec![],
            pdp_mesh_trust_domain: vec![],
            audit: Default::default(),
            scan: Default::default(),
        };
        let mut args = args;
        configure(&mut args);
        let metrics = Arc::new(Metrics::default());
        let ready = Arc::new(Readiness::default());
        // The webhook's URL names its port, so the port is picked (and let go) before start_webhook binds it;
        // a listener of a test running alongside may take it in between: then pick another.
        let mut retries = 0;
        let listening = loop {
            match serve_webhook(&args, client.clone(), metrics.clone(), ready.clone()).await {
                Err(agentid::Error::Io(e)) if e.kind() == std::io::ErrorKind::AddrInUse && retries < 5 => {
                    retries += 1;
                    let port = free_port();
                    args.webhook_addr = format!("127.0.0.1:{port}").parse().unwrap();
                    args.webhook_url = Some(format!("https://127.0.0.1:{port}"));
                }
                started => break started.expect("webhook starts"),
            }
        };
        let (listening, audit) = listening;
        let addr = listening.of("broker").expect("the broker listens");
        assert!(ready.webhook.load(std::sync::atomic::Ordering::Acquire), "ready only once TLS serves");
        let w = Webhook {
            client: client.clone(),
            name,
            scope: scope.to_string(),
            metrics,
            operator_ns,
            addr,
            webhook_addr: listening.webhook,
            pdp_addr: listening.of("pdp").expect("the decision point listens"),
            audit,
        };
        w.label(&w.operator_ns.clone(), Some("enforce")).await;
        w
    }

    /// Labels a namespace into this webhook's scope with a mode (or only the scope).
    pub async fn label(&self, ns: &str, mode: Option<&str>) {
        let mut labels = BTreeMap::from([("agentid.dev/test-scope".to_string(), self.scope.clone())]);
        if let Some(m) = mode {
            labels.insert("agentid.dev/enforcement".into(), m.into());
        }
        let patch = serde_json::json!({"metadata": {"labels": labels}});
        Api::<Namespace>::all(self.client.clone())
            .patch(ns, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }

    pub async fn stop(self) {
        let api: Api<ValidatingWebhookConfiguration> = Api::all(self.client.clone());
        api.delete(&self.name, &DeleteParams::default()).await.unwrap();
        use k8s_openapi::api::admissionregistration::v1::{
            ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
        };
        for policy in [format!("{}-enforcement-label", self.name), format!("{}-enforcement-guard", self.name)] {
            Api::<ValidatingAdmissionPolicyBinding>::all(self.client.clone())
                .delete(&policy, &DeleteParams::default())
                .await
                .unwrap();
            Api::<ValidatingAdmissionPolicy>::all(self.client.clone())
                .delete(&policy, &DeleteParams::default())
                .await
                .unwrap();
        }
    }
}

impl Webhook {
    /// The CA that signs the server's certificate (from its self-managed Secret).
    pub async fn ca_pem(&self) -> Vec<u8> {
        let s: Secret = Api::namespaced(self.client.clone(), &self.operator_ns)
            .get(&format!("{}-webhook-tls", self.name))
            .await
            .unwrap();
        s.data.unwrap()["ca.crt"].0.clone()
    }

    /// `method path` to `addr` over TLS (verified against the CA) with `headers` and `body`:
    /// `(status, response headers and body)`.
    pub async fn https(
        &self,
        addr: std::net::SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, String) {
        https_request(&self.ca_pem().await, addr, method, path, headers, body).await
    }

    /// `POST path` over TLS (verified against the CA) with an optional bearer token: `(status, body)`.
    pub async fn post(&self, path: &str, bearer: Option<&str>) -> (u16, String) {
        let auth = bearer.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth.as_deref().map(|a| ("Authorization", a)).into_iter().collect();
        let (status, text) = self.https(self.addr, "POST", path, &headers, "").await;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (status, body)
    }
}

/// Runs `body` with a client acting as a user that holds nothing but the ClusterRole of
/// config/rbac/role.yaml (under a name of this test's own), and removes those cluster-scoped
/// objects afterwards, also when `body` panics.
pub async fn with_shipped_cluster_role<F, Fut>(env: &TestEnv, body: F)
where
    F: FnOnce(Client) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    use serde::Deserialize;
    let shipped: ClusterRole = serde_norway::Deserializer::from_str(include_str!("../../config/rbac/role.yaml"))
        .map(|doc| serde_json::Value::deserialize(doc).unwrap())
        .find(|v| v["kind"] == "ClusterRole")
        .map(|v| serde_json::from_value(v).unwrap())
        .expect("config/rbac/role.yaml has a ClusterRole");
    let name = format!("agentid-operator-{}", env.ns);
    let user = format!("agentid-rbac-check-{}", env.ns);
    let role = ClusterRole { metadata: from_yaml(&format!("name: {name}")), ..shipped };
    let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }))
    .unwrap();
    let cluster_roles: Api<ClusterRole> = Api::all(env.client.clone());
    let cluster_bindings: Api<ClusterRoleBinding> = Api::all(env.client.clone());
    cluster_roles.create(&PostParams::default(), &role).await.unwrap();
    cluster_bindings.create(&PostParams::default(), &binding).await.unwrap();

    // Start only once the apiserver's RBAC cache has the binding, so the operator is not refused early.
    wait_until(Duration::from_secs(20), "the ClusterRole in effect", || {
        let (client, user) = (env.client.clone(), user.clone());
        async move {
            use k8s_openapi::api::authorization::v1::{
                ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
            };
            let sar = SubjectAccessReview {
                metadata: Default::default(),
                spec: SubjectAccessReviewSpec {
                    user: Some(user),
                    resource_attributes: Some(ResourceAttributes {
                        group: Some("agentid.dev".into()),
                        resource: Some("agentidentities".into()),
                        verb: Some("list".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                status: None,
            };
            let res = Api::<SubjectAccessReview>::all(client).create(&PostParams::default(), &sar).await.ok()?;
            res.status?.allowed.then_some(())
        }
    })
    .await;
    let mut config = kube::Config::infer().await.unwrap();
    config.auth_info.impersonate = Some(user);
    let operator_client = Client::try_from(config).unwrap();
    // In a task of its own, so the cluster-scoped objects above are removed even when it fails.
    let outcome = tokio::spawn(body(operator_client)).await;
    cluster_bindings.delete(&name, &DeleteParams::default()).await.unwrap();
    cluster_roles.delete(&name, &DeleteParams::default()).await.unwrap();
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// A token of ServiceAccount `ns/sa` for `audience` (what a pod's projected token would be).
pub async fn sa_token(client: &Client, ns: &str, sa: &str, audience: &str) -> String {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    let tr = TokenRequest {
        metadata: Default::default(),
        spec: Some(TokenRequestSpec {
            audiences: Some(vec![audience.into()]),
            expiration_seconds: Some(600),
            bound_object_ref: None,
        }),
        status: None,
    };
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    api.create_token_request(sa, &PostParams::default(), &tr).await.unwrap().status.unwrap().token.unwrap()
}

/// `method path` to `addr` over TLS verified against `ca_pem` (name `localhost`), with `headers` and
/// `body`: `(status, response headers and body)`. A server that is not listening (yet) or drops the
/// handshake gives status 0 and the error as text, so readiness loops can retry and assertions on the
/// status still fail with the reason.
pub async fn https_request(
    ca_pem: &[u8],
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    use rustls_pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    let tcp = match tokio::net::TcpStream::connect(addr).await {
        Ok(tcp) => tcp,
        Err(e) => return (0, format!("connect to {addr}: {e}")),
    };
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = match tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await {
        Ok(tls) => tls,
        Err(e) => return (0, format!("TLS handshake with {addr}: {e}")),
    };
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tls.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

/// A child process that is killed (and reaped) when dropped, also when a test fails.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Creates these ServiceAccounts in `ns` unless they exist. With a node (AGENTID_NODE=1) the apiserver's
/// ServiceAccount admission refuses pods whose account does not exist, `default` included until the
/// controller manager has made it; without one nothing needs them, and they do no harm.
pub async fn ensure_service_accounts(client: &Client, ns: &str, names: &[&str]) {
    use k8s_openapi::api::core::v1::ServiceAccount;
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    for name in names {
        let sa = ServiceAccount {
            metadata: kube::api::ObjectMeta { name: Some(name.to_string()), ..Default::default() },
            ..Default::default()
        };
        match api.create(&PostParams::default(), &sa).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => panic!("ServiceAccount {ns}/{name}: {e}"),
        }
    }
}
