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
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;

use agentid::controller::{Context, OperatorConfig};
use agentid::metrics::Metrics;

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
        let api: Api<CustomResourceDefinition> = Api::all(client.clone());
        for crd in agentid::api::crds() {
            let name = crd.metadata.name.clone().unwrap();
            api.patch(&name, &PatchParams::apply("agentid-tests").force(), &Patch::Apply(&crd)).await.unwrap();
            wait_until(Duration::from_secs(30), "CRD established", || {
                let api = api.clone();
                let name = name.clone();
                async move {
                    let crd = api.get(&name).await.ok()?;
                    crd.status?.conditions?.iter().any(|c| c.type_ == "Established" && c.status == "True").then_some(())
                }
            })
            .await;
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
    let metrics = Arc::new(Metrics::default());
    let ctx = Arc::new(Context::new(client.clone(), config, metrics.clone()));
    let handles = vec![
        tokio::spawn(agentid::controller::identity::run(ctx.clone())),
        tokio::spawn(agentid::controller::toolgrant::run(ctx)),
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
