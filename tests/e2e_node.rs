//! A real node (e2e/node.sh: containerd, kubelet, kube-proxy, controller manager, scheduler):
//! Deployments make pods that run, `default` ServiceAccounts exist and are mounted, a ClusterIP
//! Service routes (from the host and from a pod), `kubectl logs` and `exec` work, namespaces finish
//! deleting.
//!
//! These tests need the node, so they are `#[ignore]`d in the apiserver-only run of `make test`
//! (listed there as ignored, never passed). `AGENTID_NODE=1 e2e/test.sh` starts the node and runs
//! them with `--ignored`; against a running node: `make node-up`, then
//! `cargo test --features e2e --test e2e_node -- --ignored`. Without a node they fail.
#![cfg(feature = "e2e")]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service, ServiceAccount};
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use support::*;

const NODE: &str = "agentid-node";
const TESTBOX: &str = "agentid.local/testbox:1";

/// Fails (never skips) when the node is missing or not Ready.
async fn require_node(client: &kube::Client) {
    let node = Api::<Node>::all(client.clone()).get(NODE).await.unwrap_or_else(|e| {
        panic!("no node {NODE} ({e}): start one with `make node-up` (AGENTID_NODE=1 e2e/cluster.sh up)")
    });
    let ready = node
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    assert!(ready, "node {NODE} is not Ready");
}

/// `kubectl ARGS...` against KUBECONFIG; stdout on success, panics with stderr otherwise.
fn kubectl(args: &[&str]) -> String {
    let out = Command::new("kubectl").args(args).output().expect("kubectl on PATH (.cache/bin)");
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A namespace whose `default` ServiceAccount the controller manager has created (pods need it now
/// that ServiceAccount admission is on).
async fn node_namespace(client: &kube::Client, prefix: &str) -> String {
    let ns = namespace(client, prefix).await;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let start = Instant::now();
    wait_on_node(Duration::from_secs(30), "the default ServiceAccount", || {
        let sas = sas.clone();
        async move { sas.get_opt("default").await.ok().flatten() }
    })
    .await;
    eprintln!("default ServiceAccount in {ns} after {:?}", start.elapsed());
    ns
}

fn running_ready(p: &Pod) -> bool {
    let Some(status) = &p.status else { return false };
    status.phase.as_deref() == Some("Running")
        && status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True")
}

async fn wait_pods_ready(pods: &Api<Pod>, selector: &str, n: usize) -> Vec<Pod> {
    wait_on_node(Duration::from_secs(60), &format!("{n} pods {selector} Running and Ready"), || {
        let pods = pods.clone();
        let selector = selector.to_string();
        async move {
            let list = pods.list(&ListParams::default().labels(&selector)).await.ok()?;
            let ready: Vec<Pod> = list.items.into_iter().filter(running_ready).collect();
            (ready.len() == n).then_some(ready)
        }
    })
    .await
}

/// One HTTP/1.0 GET over a plain TCP connection; the whole response.
fn http_get(addr: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: web\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

#[tokio::test]
#[ignore = "needs the node: AGENTID_NODE=1 e2e/test.sh runs it with --ignored"]
async fn deployment_runs_pods_that_a_cluster_ip_service_routes_to() {
    let client = client().await;
    require_node(&client).await;
    let ns = node_namespace(&client, "node-web").await;

    // Two replicas of a tiny web server, each answering with its own pod name.
    let deploy: Deployment = from_yaml(&format!(
        r#"
metadata: {{name: web}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: {TESTBOX}
        command: [sh, -c, 'mkdir -p /tmp/www && echo "hello from $(hostname)" > /tmp/www/index.html && echo "web serving as $(id -u)" && exec httpd -f -p 8080 -h /tmp/www']
        ports: [{{containerPort: 8080}}]
        readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
"#
    ));
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let start = Instant::now();
    deploys.create(&PostParams::default(), &deploy).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let ready = wait_pods_ready(&pods, "app=web", 2).await;
    eprintln!("2-replica Deployment: both pods Running and Ready {:?} after create", start.elapsed());

    // The Deployment made a ReplicaSet that owns the pods; they run on our node with the
    // namespace's default ServiceAccount and its projected token (ServiceAccount admission).
    for p in &ready {
        let owner = &p.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.kind, "ReplicaSet");
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some(NODE));
        assert_eq!(spec.service_account_name.as_deref(), Some("default"));
        assert!(
            spec.volumes.iter().flatten().any(|v| v.name.starts_with("kube-api-access-")),
            "pod {} has no kube-api-access volume",
            p.metadata.name.as_deref().unwrap()
        );
    }
    let pod_names: Vec<String> = ready.iter().map(|p| p.metadata.name.clone().unwrap()).collect();

    // kubectl logs: the line the container printed before exec'ing the server.
    let logs = kubectl(&["logs", "-n", &ns, &pod_names[0]]);
    assert!(logs.contains("web serving as 65534"), "unexpected logs: {logs}");

    // kubectl exec: the mounted token belongs to this namespace.
    let token_ns = kubectl(&[
        "exec",
        "-n",
        &ns,
        &pod_names[0],
        "--",
        "cat",
        "/var/run/secrets/kubernetes.io/serviceaccount/namespace",
    ]);
    assert_eq!(token_ns, ns);

    // A ClusterIP Service: kube-proxy's rules route to both pods, from the host...
    let svc: Service = from_yaml(
        r#"
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"#,
    );
    let svcs: Api<Service> = Api::namespaced(client.clone(), &ns);
    let svc = svcs.create(&PostParams::default(), &svc).await.unwrap();
    let ip = svc.spec.unwrap().cluster_ip.unwrap();
    let addr = format!("{ip}:80");
    let start = Instant::now();
    let mut seen = std::collections::BTreeSet::new();
    wait_on_node(Duration::from_secs(30), "the Service to reach both pods", || {
        let addr = addr.clone();
        if let Ok(body) = http_get(&addr)
            && let Some(line) = body.lines().find(|l| l.starts_with("hello from "))
        {
            seen.insert(line.trim_start_matches("hello from ").to_string());
        }
        let done = seen.len() == 2;
        async move { done.then_some(()) }
    })
    .await;
    eprintln!("Service {addr} reached both pods from the host {:?} after create", start.elapsed());
    let expected: std::collections::BTreeSet<String> = pod_names.iter().cloned().collect();
    assert_eq!(seen, expected);

    // ...and from a pod, through the Service IP and through the kubernetes Service (the apiserver).
    let from_pod = kubectl(&[
        "exec",
        "-n",
        &ns,
        &pod_names[1],
        "--",
        "sh",
        "-c",
        &format!(
            "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} 80; \
             nc -w 3 $KUBERNETES_SERVICE_HOST $KUBERNETES_SERVICE_PORT </dev/null && echo apiserver-reachable"
        ),
    ]);
    assert!(from_pod.contains("hello from web-"), "pod -> Service failed: {from_pod}");
    assert!(from_pod.contains("apiserver-reachable"), "pod -> kubernetes Service failed: {from_pod}");

    deploys.delete("web", &DeleteParams::default()).await.unwrap();
}

#[tokio::test]
#[ignore = "needs the node: AGENTID_NODE=1 e2e/test.sh runs it with --ignored"]
async fn a_namespace_with_running_pods_finishes_deleting() {
    let client = client().await;
    require_node(&client).await;
    let ns = node_namespace(&client, "node-del").await;
    let pod: Pod = from_yaml(&format!(
        r#"
metadata: {{name: sleeper, labels: {{app: sleeper}}}}
spec:
  terminationGracePeriodSeconds: 2
  containers: [{{name: s, image: {TESTBOX}, command: [sleep, "3600"]}}]
"#
    ));
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let start = Instant::now();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    wait_on_node(Duration::from_secs(60), "the pod to run", || {
        let pods = pods.clone();
        async move {
            let p = pods.get("sleeper").await.ok()?;
            (p.status?.phase.as_deref() == Some("Running")).then_some(())
        }
    })
    .await;
    eprintln!("first pod Running {:?} after create", start.elapsed());

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let start = Instant::now();
    namespaces.delete(&ns, &DeleteParams::default()).await.unwrap();
    wait_on_node(Duration::from_secs(60), "the namespace to be gone", || {
        let namespaces = namespaces.clone();
        let ns = ns.clone();
        async move { matches!(namespaces.get_opt(&ns).await, Ok(None)).then_some(()) }
    })
    .await;
    eprintln!("namespace with a running pod deleted in {:?}", start.elapsed());
}
