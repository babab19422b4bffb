//! The kubelet rotates an agent's projected ServiceAccount token in place, and the agent reads the new
//! one: the sample agent (`examples/sample-agent.rs`) reads its token file on every round and logs when
//! that token was issued. The test reads the same file from the host (the kubelet's volume directory of
//! the pod), has the apiserver review both tokens (TokenReview, audience `agentid`), and waits for the
//! kubelet to write a new one: it refreshes a token after 80 % of its lifetime, and 600 s is the
//! shortest lifetime a pod may ask for, so the test takes about 8 minutes.
//!
//! Needs the node and the sample-agent image, so `#[ignore]`d in the apiserver-only run; e2e/test.sh
//! starts it in the background as soon as the images are loaded, so its wait overlaps the other suites.
//! By hand: `make node-up image`, then `cargo test --features e2e --test e2e_token_rotation -- --ignored`.
#![cfg(feature = "e2e")]

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewStatus};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{DeleteParams, LogParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use support::*;

/// The token file of the pod's projected volume `token`, as the kubelet wrote it on this host.
fn token_file(pod_uid: &str) -> PathBuf {
    let kubeconfig = PathBuf::from(std::env::var_os("KUBECONFIG").expect("KUBECONFIG"));
    let cluster_dir = kubeconfig.parent().unwrap().to_path_buf();
    cluster_dir.join(format!("node/kubelet/pods/{pod_uid}/volumes/kubernetes.io~projected/token/token"))
}

/// `(iat, exp)` of a JWT, from its payload.
fn claims(jwt: &str) -> (i64, i64) {
    use base64::Engine;
    let payload = jwt.split('.').nth(1).expect("a JWT");
    let claims: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    (claims["iat"].as_i64().unwrap(), claims["exp"].as_i64().unwrap())
}

async fn review(client: &Client, token: &str) -> TokenReviewStatus {
    let review: TokenReview =
        serde_json::from_value(json!({"spec": {"token": token, "audiences": ["agentid"]}})).unwrap();
    Api::<TokenReview>::all(client.clone()).create(&PostParams::default(), &review).await.unwrap().status.unwrap()
}

/// The apiserver authenticates `token` as the ServiceAccount `agent-watcher` of `ns`, bound to pod `pod`.
async fn assert_authenticates(client: &Client, token: &str, ns: &str, pod: &str) {
    let status = review(client, token).await;
    assert_eq!(status.authenticated, Some(true), "{:?}", status.error);
    let user = status.user.unwrap();
    assert_eq!(user.username.as_deref(), Some(format!("system:serviceaccount:{ns}:agent-watcher").as_str()));
    let extra = user.extra.unwrap_or_default();
    assert_eq!(extra.get("authentication.kubernetes.io/pod-name"), Some(&vec![pod.to_string()]), "{extra:?}");
}

#[tokio::test]
#[ignore = "needs the node and the sample-agent image, and about 8 minutes: e2e/test.sh runs it with the node"]
async fn the_kubelet_rotates_the_agents_projected_token_and_the_agent_reads_the_new_one() {
    let client = client().await;
    let ns = namespace(&client, "rotation").await;
    ensure_service_accounts(&client, &ns, &["agent-watcher"]).await;
    let version = env!("CARGO_PKG_VERSION");
    // Nothing answers on the broker's address: every round fails after reading the token file again.
    let pod: Pod = from_yaml(&format!(
        r#"
metadata: {{name: watcher, namespace: {ns}}}
spec:
  serviceAccountName: agent-watcher
  automountServiceAccountToken: false
  containers:
  - name: agent
    image: agentid.local/sample-agent:{version}
    imagePullPolicy: Never
    securityContext: {{readOnlyRootFilesystem: true, runAsNonRoot: true, allowPrivilegeEscalation: false, capabilities: {{drop: [ALL]}}}}
    env:
    - {{name: AGENTID_BROKER_ADDR, value: "127.0.0.1:9"}}
    - {{name: AGENTID_PDP_ADDR, value: "127.0.0.1:9"}}
    - {{name: AGENTID_SERVER_NAME, value: localhost}}
    - {{name: AGENTID_CA_FILE, value: /etc/kube-ca/ca.crt}}
    - {{name: AGENTID_TASK, value: {ns}/none}}
    - {{name: TOOL, value: none}}
    - {{name: ACTION, value: none}}
    - {{name: DESTINATION, value: "http://127.0.0.1:9/"}}
    - {{name: TOOL_ADDR, value: "127.0.0.1:9"}}
    - {{name: INTERVAL_MS, value: "10000"}}
    volumeMounts:
    - {{name: token, mountPath: /var/run/agentid, readOnly: true}}
    - {{name: kube-ca, mountPath: /etc/kube-ca, readOnly: true}}
  volumes:
  - name: token
    projected:
      sources:
      - serviceAccountToken: {{audience: agentid, expirationSeconds: 600, path: token}}
  - name: kube-ca
    configMap: {{name: kube-root-ca.crt}}
"#
    ));
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    // The controller manager publishes kube-root-ca.crt into a new namespace within moments; until then
    // the kubelet waits to mount it.
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let started = Instant::now();
    let uid = wait_on_node(Duration::from_secs(90), "the watcher pod running", || async {
        let p = pods.get("watcher").await.ok()?;
        (p.status.as_ref()?.phase.as_deref() == Some("Running")).then(|| p.metadata.uid.clone().unwrap())
    })
    .await;
    let file = token_file(&uid);
    let first = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let (iat0, exp0) = claims(&first);
    assert_eq!(exp0 - iat0, 600, "the lifetime the pod asked for");
    assert_authenticates(&client, &first, &ns, "watcher").await;
    eprintln!("first token issued at {iat0}, expires {exp0}; waiting for the kubelet to rotate it");

    // The kubelet refreshes after 80 % of the lifetime (480 s, less a jitter of up to 10 s), when it next
    // syncs the pod: up to 11 minutes in all.
    let second = wait_on_node(Duration::from_secs(660), "the kubelet to write a new token", || async {
        let now = std::fs::read_to_string(&file).ok()?;
        (now != first && !now.is_empty()).then_some(now)
    })
    .await;
    let (iat1, exp1) = claims(&second);
    let rotated_after = iat1 - iat0;
    eprintln!(
        "rotated: the new token was issued {rotated_after} s after the first ({:?} after the pod ran)",
        started.elapsed()
    );
    // 80 % of 600 s, less the kubelet's random jitter of up to 10 s.
    assert!(rotated_after >= 470, "refreshed at 80 % of the lifetime, not before: {rotated_after} s");
    assert!(iat1 < exp0, "the new token was written before the old one expired");
    assert_eq!(exp1 - iat1, 600);
    assert_authenticates(&client, &second, &ns, "watcher").await;

    // The agent read the new token: its log names the new issue time (and never a token).
    let log = wait_on_node(Duration::from_secs(60), "the agent's log to show the new token", || async {
        let log = pods.logs("watcher", &LogParams::default()).await.ok()?;
        log.contains(&format!(r#""iat":{iat1}"#)).then_some(log)
    })
    .await;
    assert!(log.contains(&format!(r#""iat":{iat0}"#)), "the first token was read too:\n{log}");
    assert!(!log.contains("eyJ") && !log.contains(first.trim()) && !log.contains(second.trim()), "a token in the log");
    let restarts = pods.get("watcher").await.unwrap().status.unwrap().container_statuses.unwrap()[0].restart_count;
    assert_eq!(restarts, 0, "the agent kept running through the rotation");

    Api::<Namespace>::all(client.clone()).delete(&ns, &DeleteParams::default()).await.unwrap();
}
