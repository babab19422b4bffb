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

/// The operator's controllers, in-process, watching only `ns`. Aborted on drop. Against the chart
/// install ([`chart_namespace`]) nothing runs in-process: the installed replicas do the work.
pub struct Operator {
    pub handles: Vec<JoinHandle<()>>,
    pub metrics: TestMetrics,
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
    if let Some(ns) = chart_namespace() {
        assert!(trail.is_none(), "an audit trail needs the in-process operator");
        return Operator { handles: vec![], metrics: TestMetrics::of_chart(&ns) };
    }
    let metrics = Arc::new(Metrics::default());
    let mut ctx = Context::new(client.clone(), config, metrics.clone());
    ctx.audit = trail;
    let ctx = Arc::new(ctx);
    let handles = vec![
        tokio::spawn(agentid::controller::identity::run(ctx.clone())),
        tokio::spawn(agentid::controller::toolgrant::run(ctx.clone())),
        tokio::spawn(agentid::controller::task::run(ctx)),
    ];
    Operator { handles, metrics: TestMetrics::InProcess(metrics) }
}

/// The flags of a test's operator: HTTPS on 127.0.0.1 (the webhook on `port`), registered by URL,
/// judging namespaces labeled `agentid.dev/test-scope=<scope>`.
fn test_args(operator_ns: &str, port: u16, name: &str, scope: &str) -> RunArgs {
    RunArgs {
        trust_domain: "cluster.local".into(),
        probe_addr: "127.0.0.1:0".parse().unwrap(),
        watch_namespace: None,
        instance: None,
        operator_namespace: operator_ns.to_string(),
        service_account: "agentid".into(),
        no_leader_elect: true,
        allow_unchecked_grants: false,
        no_webhook: false,
        webhook_addr: format!("127.0.0.1:{port}").parse().unwrap(),
        broker_addr: "127.0.0.1:0".parse().unwrap(),
        webhook_url: Some(format!("https://127.0.0.1:{port}")),
        webhook_service: "agentid".into(),
        webhook_configuration: name.to_string(),
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
    }
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    match poll(timeout, check).await {
        Some(v) => v,
        None => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// Polls `check` every 100 ms until it returns `Some`; `None` after `timeout`.
async fn poll<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if start.elapsed() >= timeout {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// [`wait_until`] for tests that need the real node: a timeout's panic carries `e2e/node.sh diagnose`
/// (the node's conditions and taints, free disk, pods not Running, warnings, the kubelet's last errors),
/// so a CI log that shows only the failure still says why nothing ran.
pub async fn wait_on_node<T, F, Fut>(timeout: Duration, what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    match poll(timeout, check).await {
        Some(v) => v,
        None => panic!("timed out after {timeout:?} waiting for {what}\n{}", node_diagnosis()),
    }
}

/// The output of `e2e/node.sh diagnose` for the cluster of `KUBECONFIG` (its directory).
pub fn node_diagnosis() -> String {
    let dir = std::env::var_os("AGENTID_CLUSTER_DIR").map(std::path::PathBuf::from).or_else(|| {
        std::env::var_os("KUBECONFIG").and_then(|k| std::path::Path::new(&k).parent().map(|p| p.to_path_buf()))
    });
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/node.sh");
    let mut cmd = std::process::Command::new(script);
    cmd.arg("diagnose");
    if let Some(dir) = dir {
        cmd.env("AGENTID_CLUSTER_DIR", dir);
    }
    match cmd.output() {
        Ok(out) => format!(
            "e2e/node.sh diagnose:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => format!("e2e/node.sh diagnose could not run: {e}"),
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
    pub metrics: TestMetrics,
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
        if let Some(ns) = chart_namespace() {
            return Self::of_chart(client, scope, &ns, configure).await;
        }
        let operator_ns = namespace(client, "agentid-op").await;
        let port = free_port();
        let name = format!("agentid-test-{scope}");
        let mut args = test_args(&operator_ns, port, &name, scope);
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
        let (listening, audit) = (listening.listening, listening.audit);
        let addr = listening.of("broker").expect("the broker listens");
        assert!(ready.webhook.load(std::sync::atomic::Ordering::Acquire), "ready only once TLS serves");
        let w = Webhook {
            client: client.clone(),
            name,
            scope: scope.to_string(),
            metrics: TestMetrics::InProcess(metrics),
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
        if chart_namespace().is_some() {
            return; // the chart's release registered it and keeps it
        }
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

/// A free port on 127.0.0.1 for a server a test starts (often in another process, which binds it later).
///
/// Taken from 20000–29999, below the kernel's ephemeral range (`ip_local_port_range`, 32768–60999 here) and
/// the NodePort range: a port from `bind(127.0.0.1:0)` is an ephemeral one, and between this call and the
/// server's bind any outgoing connection of a concurrent test (to the apiserver, say) could take it. That
/// happened in CI: a replica of `tests/e2e_faults.rs` exited with "Address already in use". Each process
/// starts at its own offset and walks the range, so concurrent test binaries do not hand out the same port.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    if ephemeral_low < FIRST + SPAN {
        // An unusual ephemeral range that overlaps ours: let the kernel choose.
        return std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    }
    let offset = std::process::id().wrapping_mul(7_919) % SPAN;
    for _ in 0..SPAN {
        let port = FIRST + (offset + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN;
        if std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
    panic!("no free port on 127.0.0.1 in {FIRST}..{}", FIRST + SPAN);
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

/// The namespace of an agentid installed by its Helm chart that the tests run against instead of an
/// in-process operator (`AGENTID_E2E_CHART=<namespace>`, set by e2e/test.sh with the node, which installs
/// it with `e2e/node.sh chart`). Unset: the operator runs in-process, as everywhere else.
pub fn chart_namespace() -> Option<String> {
    std::env::var("AGENTID_E2E_CHART").ok().filter(|ns| !ns.is_empty())
}

/// An operator's metrics, as Prometheus text. In-process: its registry. Against the chart install: the
/// sum over its pods of each series' growth since this handle was made (series that did not change are
/// left out), so a test sees what happened during it; the chart suites run one test at a time.
pub enum TestMetrics {
    InProcess(Arc<Metrics>),
    Chart { namespace: String, baseline: BTreeMap<String, f64> },
}

impl TestMetrics {
    pub fn of_chart(namespace: &str) -> TestMetrics {
        TestMetrics::Chart { namespace: namespace.to_string(), baseline: chart_series(namespace) }
    }

    pub fn encode(&self) -> String {
        match self {
            TestMetrics::InProcess(m) => m.encode(),
            TestMetrics::Chart { namespace, baseline } => chart_series(namespace)
                .into_iter()
                .filter_map(|(series, v)| {
                    let delta = v - baseline.get(&series).copied().unwrap_or(0.0);
                    (delta != 0.0).then(|| format!("{series} {delta}\n"))
                })
                .collect(),
        }
    }
}

/// Every sample of every agentid pod in `namespace` (`GET /metrics` on the probes port of each pod IP),
/// summed per series. Blocking: only a few kilobytes from local pods.
fn chart_series(namespace: &str) -> BTreeMap<String, f64> {
    use std::io::{Read, Write};
    let out = std::process::Command::new("kubectl")
        .args(["get", "pods", "-n", namespace, "-l", "app.kubernetes.io/name=agentid"])
        .args(["--field-selector", "status.phase=Running", "-o", "jsonpath={.items[*].status.podIP}"])
        .output()
        .expect("kubectl on PATH");
    assert!(out.status.success(), "kubectl get pods: {}", String::from_utf8_lossy(&out.stderr));
    let ips = String::from_utf8(out.stdout).unwrap();
    assert!(!ips.trim().is_empty(), "no running agentid pod in {namespace}");
    let mut sum = BTreeMap::new();
    for ip in ips.split_whitespace() {
        let addr: std::net::SocketAddr = format!("{ip}:8080").parse().unwrap();
        let mut tcp = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("metrics of {addr}: {e}"));
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        tcp.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {ip}\r\n\r\n").as_bytes()).unwrap();
        let mut text = String::new();
        tcp.read_to_string(&mut text).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("metrics of {addr}: {text}"));
        assert!(head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"), "metrics of {addr}: {head}");
        for line in body.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
            if let Some((series, value)) = line.rsplit_once(' ')
                && let Ok(v) = value.parse::<f64>()
            {
                *sum.entry(series.to_string()).or_insert(0.0) += v;
            }
        }
    }
    sum
}

impl Webhook {
    /// The chart install in `namespace` as this test's webhook, broker and decision point: addressed
    /// through its Service (kube-proxy routes the ClusterIP from this host), registered by the release
    /// itself. A test that needs other flags than the chart's cannot run against it.
    async fn of_chart(client: &Client, scope: &str, namespace: &str, configure: impl FnOnce(&mut RunArgs)) -> Webhook {
        let defaults = test_args(namespace, 0, "agentid", scope);
        let mut asked = defaults.clone();
        configure(&mut asked);
        assert_eq!(
            format!("{asked:?}"),
            format!("{defaults:?}"),
            "this test sets flags of its own: it needs the in-process operator, not the chart install"
        );
        use k8s_openapi::api::core::v1::Service;
        let svc = Api::<Service>::namespaced(client.clone(), namespace).get("agentid").await.unwrap();
        let ip: std::net::IpAddr =
            svc.spec.and_then(|s| s.cluster_ip).expect("the agentid Service has a ClusterIP").parse().unwrap();
        let w = Webhook {
            client: client.clone(),
            name: "agentid".into(),
            scope: scope.to_string(),
            metrics: TestMetrics::of_chart(namespace),
            operator_ns: namespace.to_string(),
            addr: (ip, 8444).into(),
            webhook_addr: (ip, 443).into(),
            pdp_addr: (ip, 8445).into(),
            audit: None,
        };
        w.label(namespace, Some("enforce")).await;
        w
    }
}
