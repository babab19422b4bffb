//! agentid installed the way users install it: `helm install charts/agentid` with the image built
//! here (`make image`), two replicas on the real node. The webhook is registered through the Service
//! (no URL), its certificate is self-managed in the Secret, one replica leads, the apiserver's
//! admission calls reach the pods through kube-proxy, and when the leader's pod is deleted the other
//! replica takes over and the Deployment replaces the pod.
//!
//! Needs the node and the image loaded, so `#[ignore]`d in the apiserver-only run; `AGENTID_NODE=1
//! e2e/test.sh` runs it with `--ignored`. By hand: `make node-up image`, then
//! `cargo test --features e2e --test e2e_node_chart -- --ignored`.
#![cfg(feature = "e2e")]

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use agentid::api::{AgentIdentity, AgentTask, GrantPhase, TaskPhase, ToolGrant};
use support::*;

fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| panic!("{cmd} on PATH (.cache/bin): {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!("{cmd} {args:?} failed: {stdout}{}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// `helm install ... --wait`; when the pods never become ready, the failure shows their state and
/// last log lines (e.g. an image built from an older binary than the chart expects).
fn helm_install(ns: &str, tag: &str) {
    let image_tag = format!("image.tag={tag}");
    let args = [
        "install",
        "agentid",
        "charts/agentid",
        "--namespace",
        ns,
        "--set",
        "image.repository=agentid.local/agentid",
        "--set",
        &image_tag,
        "--set",
        "image.pullPolicy=Never",
        "--wait",
        "--timeout",
        "90s",
    ];
    if let Err(e) = run("helm", &args) {
        let pods = run("kubectl", &["get", "pods", "-n", ns, "-o", "wide"]).unwrap_or_else(|e| e);
        let logs = run("kubectl", &["logs", "-n", ns, "-l", "app.kubernetes.io/name=agentid", "--tail", "5"])
            .unwrap_or_else(|e| e);
        panic!("{e}\npods:\n{pods}\nlogs:\n{logs}");
    }
}

/// Uninstalls the release and removes what agentid registered at run time (the webhook
/// configuration pointing at the release's Service), also when the test fails.
struct Release {
    ns: String,
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = Command::new("helm").args(["uninstall", "agentid", "-n", &self.ns, "--wait"]).output();
        let _ = Command::new("kubectl")
            .args(["delete", "validatingwebhookconfiguration", "agentid", "--ignore-not-found"])
            .output();
    }
}

async fn leader(leases: &Api<Lease>) -> Option<String> {
    leases.get_opt("agentid-leader").await.ok().flatten()?.spec?.holder_identity
}

async fn ready_replicas(deploys: &Api<Deployment>) -> i32 {
    let d = deploys.get("agentid").await.unwrap();
    d.status.and_then(|s| s.ready_replicas).unwrap_or(0)
}

/// A Deployment that reads a Secret into an env var: the enforcing webhook must refuse it.
fn static_secret_deployment(ns: &str, name: &str) -> Deployment {
    from_yaml(&format!(
        r#"
metadata: {{name: {name}, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
      - name: c
        image: agentid.local/testbox:1
        env:
        - name: DB_PASSWORD
          valueFrom: {{secretKeyRef: {{name: db, key: pw}}}}
"#
    ))
}

/// One server-side dry-run create through the webhook: Ok when refused for the expected rule.
async fn judged(deploys: &Api<Deployment>, d: &Deployment) -> Result<(), String> {
    match deploys.create(&PostParams { dry_run: true, ..Default::default() }, d).await {
        Err(kube::Error::Api(e)) if e.code == 403 && e.message.contains("static-secret-env") => Ok(()),
        Err(e) => Err(e.to_string()),
        Ok(_) => Err("admitted".into()),
    }
}

#[tokio::test]
#[ignore = "needs the node and the image: AGENTID_NODE=1 e2e/test.sh runs it with --ignored"]
async fn helm_installs_two_replicas_whose_webhook_answers_through_the_service() {
    let client = client().await;
    let ns = namespace(&client, "agentid-sys").await;
    let _release = Release { ns: ns.clone() };
    let tag = env!("CARGO_PKG_VERSION");
    let start = Instant::now();
    helm_install(&ns, tag);
    eprintln!("helm install --wait: {:?}", start.elapsed());

    let deploys: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    assert_eq!(ready_replicas(&deploys).await, 2);

    // Both pods run under the chart's security context: non-root (which the kubelet enforces: an image
    // running as root would not start), RuntimeDefault seccomp, a read-only root, no capabilities.
    let selector = ListParams::default().labels("app.kubernetes.io/name=agentid");
    let running = Api::<Pod>::namespaced(client.clone(), &ns).list(&selector).await.unwrap();
    assert_eq!(running.items.len(), 2);
    for p in &running.items {
        let spec = p.spec.as_ref().unwrap();
        let pod_ctx = spec.security_context.as_ref().expect("pod securityContext");
        assert_eq!(pod_ctx.run_as_non_root, Some(true));
        assert_eq!(pod_ctx.seccomp_profile.as_ref().map(|s| s.type_.as_str()), Some("RuntimeDefault"));
        for c in &spec.containers {
            let ctx = c.security_context.as_ref().expect("container securityContext");
            assert_eq!((ctx.read_only_root_filesystem, ctx.allow_privilege_escalation), (Some(true), Some(false)));
            let dropped = ctx.capabilities.as_ref().and_then(|c| c.drop.clone()).unwrap_or_default();
            assert_eq!(dropped, ["ALL"], "{}", c.name);
        }
        assert_eq!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Running"));
    }

    // Registered through the Service, with the CA of the self-managed certificate in the Secret.
    let vwc = wait_on_node(Duration::from_secs(30), "the webhook configuration", || {
        let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
        async move { api.get_opt("agentid").await.ok().flatten() }
    })
    .await;
    let secret = Api::<Secret>::namespaced(client.clone(), &ns).get("agentid-webhook-tls").await.unwrap();
    let ca = secret.data.as_ref().and_then(|d| d.get("ca.crt")).expect("ca.crt in the webhook Secret");
    for w in vwc.webhooks.iter().flatten() {
        let svc = w.client_config.service.as_ref().unwrap_or_else(|| panic!("{} has no service", w.name));
        assert_eq!((svc.name.as_str(), svc.namespace.as_str()), ("agentid", ns.as_str()));
        assert!(w.client_config.url.is_none(), "{} registered by URL", w.name);
        assert_eq!(w.client_config.ca_bundle.as_ref(), Some(ca), "{}: caBundle is not the Secret's CA", w.name);
    }

    // One of the two pods leads.
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let first = wait_on_node(Duration::from_secs(30), "a leader", || {
        let leases = leases.clone();
        async move { leader(&leases).await }
    })
    .await;
    let names: Vec<String> =
        pods.list(&ListParams::default()).await.unwrap().items.into_iter().filter_map(|p| p.metadata.name).collect();
    assert!(names.contains(&first), "leader {first} is none of the pods {names:?}");

    // The apiserver reaches the webhook through the Service: an enforced namespace refuses a
    // Deployment that reads a Secret.
    let agents = namespace(&client, "chart-agents").await;
    let ns_api: Api<Namespace> = Api::all(client.clone());
    let mut n = ns_api.get(&agents).await.unwrap();
    n.metadata.labels.get_or_insert_default().insert("agentid.dev/enforcement".into(), "enforce".into());
    ns_api.replace(&agents, &PostParams::default(), &n).await.unwrap();
    let agent_deploys: Api<Deployment> = Api::namespaced(client.clone(), &agents);
    let bad = static_secret_deployment(&agents, "bad");
    wait_on_node(Duration::from_secs(30), "the webhook to refuse a static Secret", || {
        let (api, bad) = (agent_deploys.clone(), bad.clone());
        async move { judged(&api, &bad).await.ok() }
    })
    .await;

    // A real agent: the sample agent (examples/sample-agent.rs) runs as a pod with its dedicated
    // ServiceAccount and a kubelet-projected token, fetches its task token from the broker through the
    // Service, asks the decision point and calls its tool; once the task completes it is refused.
    sample_agent_runs_until_its_task_completes(&client, &ns, &agents, ca).await;

    // Delete the leader's pod: the other replica takes over, the Deployment replaces the pod.
    // Admission keeps being asked meanwhile, and must answer every time (the chart's preStop delay keeps
    // a terminating pod serving until kube-proxy stopped sending it requests).
    let stream = admission_stream(&agent_deploys, &bad, Duration::from_secs(20));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed = Instant::now();
    pods.delete(&first, &DeleteParams::default()).await.unwrap();
    let second = wait_on_node(Duration::from_secs(30), "another replica to lead", || {
        let (leases, first) = (leases.clone(), first.clone());
        async move { leader(&leases).await.filter(|l| *l != first) }
    })
    .await;
    let failover = killed.elapsed();
    wait_on_node(Duration::from_secs(60), "the Deployment to replace the pod", || {
        let (pods, deploys, first) = (pods.clone(), deploys.clone(), first.clone());
        async move {
            let gone = pods.get_opt(&first).await.ok()?.is_none();
            (gone && ready_replicas(&deploys).await == 2).then_some(())
        }
    })
    .await;
    eprintln!(
        "leader {first} deleted: {second} leads after {failover:?}; 2 ready replicas after {:?}",
        killed.elapsed()
    );
    let (ok, failed) = stream.await.unwrap();
    eprintln!("admission during the failover: {ok} refused as expected, {} failed {:?}", failed.len(), failed.first());
    assert!(ok > 0, "no admission request answered during the failover");
    assert!(failed.is_empty(), "{} admission requests failed during the failover: {failed:?}", failed.len());

    // Upgrade to a new image tag: the replicas roll one by one, admission answers throughout.
    let next = format!("{tag}-next");
    let (from, to) = (format!("agentid.local/agentid:{tag}"), format!("agentid.local/agentid:{next}"));
    run("e2e/node.sh", &["tag", &from, &to]).unwrap();
    let stream = admission_stream(&agent_deploys, &bad, Duration::from_secs(40));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    helm_upgrade(&ns, &next);
    let rolled = started.elapsed();
    let images: Vec<String> = pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=agentid"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .flat_map(|p| p.spec.into_iter().flat_map(|s| s.containers).filter_map(|c| c.image))
        .collect();
    assert_eq!(images, vec![to.clone(), to.clone()], "both replicas run the new tag");
    let (ok, failed) = stream.await.unwrap();
    eprintln!("helm upgrade --wait to {next}: {rolled:?}; admission meanwhile: {ok} answered, {} failed", failed.len());
    assert!(failed.is_empty(), "{} admission requests failed during the upgrade: {failed:?}", failed.len());
}

/// Asks admission again and again for `length`: how many answered as expected, and every failure.
fn admission_stream(
    api: &Api<Deployment>,
    bad: &Deployment,
    length: Duration,
) -> tokio::task::JoinHandle<(u32, Vec<String>)> {
    let (api, bad) = (api.clone(), bad.clone());
    tokio::spawn(async move {
        let (mut ok, mut failed) = (0u32, Vec::new());
        let until = Instant::now() + length;
        while Instant::now() < until {
            match judged(&api, &bad).await {
                Ok(()) => ok += 1,
                Err(e) => failed.push(e),
            }
        }
        (ok, failed)
    })
}

/// `helm upgrade --reuse-values --wait` to image tag `tag`.
fn helm_upgrade(ns: &str, tag: &str) {
    let image_tag = format!("image.tag={tag}");
    let args = ["upgrade", "agentid", "charts/agentid", "--namespace", ns, "--reuse-values", "--set", &image_tag];
    run("helm", &[&args[..], &["--wait", "--timeout", "120s"]].concat()).unwrap();
}

/// The JSON lines the sample agent printed so far.
fn agent_log(ns: &str) -> Vec<Value> {
    let out = run("kubectl", &["logs", "-n", ns, "-l", "app=sample-agent", "--tail=-1"]).unwrap_or_default();
    out.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

fn cluster_ip(svc: &Service) -> String {
    svc.spec.as_ref().and_then(|s| s.cluster_ip.clone()).expect("a ClusterIP")
}

async fn sample_agent_runs_until_its_task_completes(client: &kube::Client, sys_ns: &str, ns: &str, ca: &ByteString) {
    let tools_ns = namespace(client, "chart-tools").await;
    // The tool: a plain HTTP server in a namespace agentid does not govern.
    let tool: Deployment = from_yaml(&format!(
        r#"
metadata: {{name: search, namespace: {tools_ns}}}
spec:
  selector: {{matchLabels: {{app: search}}}}
  template:
    metadata: {{labels: {{app: search}}}}
    spec:
      containers:
      - name: httpd
        image: agentid.local/testbox:1
        imagePullPolicy: Never
        command: [sh, -c, 'echo found > /tmp/index.html && exec httpd -f -p 8080 -h /tmp']
"#
    ));
    Api::<Deployment>::namespaced(client.clone(), &tools_ns).create(&PostParams::default(), &tool).await.unwrap();
    let svc: Service = from_yaml(&format!(
        "metadata: {{name: search, namespace: {tools_ns}}}\nspec: {{selector: {{app: search}}, ports: [{{port: 80, targetPort: 8080}}]}}"
    ));
    let svc = Api::<Service>::namespaced(client.clone(), &tools_ns).create(&PostParams::default(), &svc).await.unwrap();
    let tool_ip = cluster_ip(&svc);
    let agentid_ip = cluster_ip(&Api::<Service>::namespaced(client.clone(), sys_ns).get("agentid").await.unwrap());

    // The agent, its grant and its task.
    let agents: Api<AgentIdentity> = Api::namespaced(client.clone(), ns);
    let grants: Api<ToolGrant> = Api::namespaced(client.clone(), ns);
    let tasks: Api<AgentTask> = Api::namespaced(client.clone(), ns);
    agents
        .create(
            &PostParams::default(),
            &from_yaml(
                "apiVersion: agentid.dev/v1alpha1\nkind: AgentIdentity\nmetadata: {name: sample}\nspec: {owner: team, audiences: [agentid, https://tools.example.com]}",
            ),
        )
        .await
        .unwrap();
    grants
        .create(
            &PostParams::default(),
            &from_yaml(&format!(
                "apiVersion: agentid.dev/v1alpha1\nkind: ToolGrant\nmetadata: {{name: search}}\nspec: {{agentRef: {{name: sample}}, tools: [{{name: search, actions: [query], destinations: ['http://{tool_ip}/'], maxDataSensitivity: internal}}]}}"
            )),
        )
        .await
        .unwrap();
    tasks
        .create(
            &PostParams::default(),
            &from_yaml(
                "apiVersion: agentid.dev/v1alpha1\nkind: AgentTask\nmetadata: {name: lookup}\nspec: {agentRef: {name: sample}, purpose: look something up, audiences: [https://tools.example.com], ttl: 15m}",
            ),
        )
        .await
        .unwrap();
    wait_on_node(Duration::from_secs(60), "the task and the grant Active", || async {
        let t = tasks.get("lookup").await.ok()?.status?.phase?;
        let g = grants.get("search").await.ok()?.status?.phase?;
        (t == TaskPhase::Active && g == GrantPhase::Active).then_some(())
    })
    .await;
    // How the agent trusts agentid's certificate: its CA, published to the agent's namespace.
    let ca_text = String::from_utf8(ca.0.clone()).unwrap();
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "agentid-ca"}, "data": {"ca.crt": ca_text}})).unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), ns).create(&PostParams::default(), &cm).await.unwrap();

    let version = env!("CARGO_PKG_VERSION");
    let deployment: Deployment = from_yaml(&format!(
        r#"
metadata: {{name: sample-agent, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: sample-agent}}}}
  template:
    metadata: {{labels: {{app: sample-agent, agentid.dev/agent: sample}}}}
    spec:
      serviceAccountName: agent-sample
      automountServiceAccountToken: false
      containers:
      - name: agent
        image: agentid.local/sample-agent:{version}
        imagePullPolicy: Never
        securityContext: {{readOnlyRootFilesystem: true, runAsNonRoot: true, allowPrivilegeEscalation: false, capabilities: {{drop: [ALL]}}}}
        env:
        - {{name: AGENTID_BROKER_ADDR, value: "{agentid_ip}:8444"}}
        - {{name: AGENTID_PDP_ADDR, value: "{agentid_ip}:8445"}}
        - {{name: AGENTID_SERVER_NAME, value: agentid.{sys_ns}.svc}}
        - {{name: AGENTID_TASK, value: {ns}/lookup}}
        - {{name: TOOL, value: search}}
        - {{name: ACTION, value: query}}
        - {{name: DESTINATION, value: "http://{tool_ip}/"}}
        - {{name: TOOL_ADDR, value: "{tool_ip}:80"}}
        - {{name: INTERVAL_MS, value: "500"}}
        volumeMounts:
        - {{name: token, mountPath: /var/run/agentid, readOnly: true}}
        - {{name: ca, mountPath: /etc/agentid-ca, readOnly: true}}
      volumes:
      - name: token
        projected:
          sources:
          - serviceAccountToken: {{audience: agentid, expirationSeconds: 600, path: token}}
      - name: ca
        configMap: {{name: agentid-ca}}
"#
    ));
    // Admitted by the enforcing webhook (the ServiceAccount exists once the agent is reconciled).
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), ns);
    wait_on_node(Duration::from_secs(30), "the sample agent admitted", || async {
        match deploys.create(&PostParams::default(), &deployment).await {
            Ok(_) => Some(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Some(()),
            Err(e) => {
                eprintln!("sample agent not admitted yet: {e}");
                None
            }
        }
    })
    .await;
    let started = Instant::now();
    let called = loop {
        let log = agent_log(ns);
        if log.iter().any(|l| l["step"] == "tool" && l["status"] == 200) {
            break log;
        }
        if started.elapsed() > Duration::from_secs(60) {
            // What the agent did, and where its pod is: the failure must say why.
            let pods = run("kubectl", &["get", "pods", "-n", ns, "-o", "wide"]).unwrap_or_else(|e| e);
            let events = run("kubectl", &["get", "events", "-n", ns, "--sort-by=.lastTimestamp"]).unwrap_or_else(|e| e);
            let tail: Vec<&Value> = log.iter().rev().take(20).collect();
            panic!(
                "the agent did not call its tool within 60 s\nlast log lines (newest first): {tail:#?}\npods:\n{pods}\nevents:\n{events}"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!("sample agent: first allowed tool call {:?} after its Deployment was admitted", started.elapsed());
    assert!(called.iter().any(|l| l["step"] == "decision" && l["decision"] == true), "{called:?}");
    assert!(called.iter().any(|l| l["step"] == "task-token" && l["status"] == 200), "{called:?}");
    let pod = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels("app=sample-agent"))
        .await
        .unwrap()
        .items
        .remove(0);
    let spec = pod.spec.unwrap();
    assert_eq!(spec.service_account_name.as_deref(), Some("agent-sample"), "the agent's dedicated account");
    assert!(
        spec.volumes.iter().flatten().all(|v| v.secret.is_none())
            && spec.automount_service_account_token == Some(false),
        "no long-lived token in the pod"
    );

    // The task ends: the agent's next question is refused and it gets no new task token.
    let before = agent_log(ns).len();
    let done = json!({"spec": {"completed": true}});
    tasks.patch("lookup", &PatchParams::default(), &Patch::Merge(&done)).await.unwrap();
    let completed = Instant::now();
    let after = wait_on_node(Duration::from_secs(30), "the agent to be refused", || async {
        let log = agent_log(ns);
        let fresh = log[before.min(log.len())..].to_vec();
        let refused = fresh.iter().any(|l| l["step"] == "decision" && l["decision"] == false);
        let no_token = fresh.iter().any(|l| l["step"] == "task-token" && l["status"] == 409);
        (refused && no_token).then_some(fresh)
    })
    .await;
    eprintln!("sample agent: refused {:?} after the task completed", completed.elapsed());
    // Once refused, never allowed again.
    let first_refusal = after.iter().position(|l| l["step"] == "decision" && l["decision"] == false).unwrap();
    assert!(
        after[first_refusal..].iter().all(|l| !(l["step"] == "tool" || l["decision"] == true)),
        "a call went through after the refusal: {after:?}"
    );
    // Tokens never reach the log.
    let raw = run("kubectl", &["logs", "-n", ns, "-l", "app=sample-agent", "--tail=-1"]).unwrap_or_default();
    assert!(!raw.contains("eyJ"), "a token in the agent's log");
    deploys.delete("sample-agent", &DeleteParams::default()).await.unwrap();
}
