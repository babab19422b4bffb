//! The agentid image (`make image`: e2e/tools/image.sh agentid, loaded into the node's containerd)
//! runs in a pod with a read-only root filesystem as a non-root user, says the version of this
//! source, and has no shell.
//!
//! Needs the node and the image loaded, so `#[ignore]`d in the apiserver-only run; `AGENTID_NODE=1
//! e2e/test.sh` builds and loads the image and runs it with `--ignored`. By hand: `make node-up image`,
//! then `cargo test --features e2e --test e2e_node_image -- --ignored`.
#![cfg(feature = "e2e")]

mod support;

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerState, Pod, ServiceAccount};
use kube::Api;
use kube::api::{LogParams, PostParams};
use support::*;

fn image_ref() -> String {
    format!("agentid.local/agentid:{}", env!("CARGO_PKG_VERSION"))
}

async fn node_namespace(client: &kube::Client, prefix: &str) -> String {
    let ns = namespace(client, prefix).await;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    wait_on_node(Duration::from_secs(30), "the default ServiceAccount", || {
        let sas = sas.clone();
        async move { sas.get_opt("default").await.ok().flatten() }
    })
    .await;
    ns
}

/// A locked-down pod of the agentid image running `command`.
fn pod(name: &str, command: Option<&str>, args: &[&str]) -> Pod {
    let mut container = serde_json::json!({
        "name": "agentid",
        "image": image_ref(),
        "imagePullPolicy": "Never",
        "args": args,
        "securityContext": {
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
        },
    });
    if let Some(c) = command {
        container["command"] = serde_json::json!([c]);
    }
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "containers": [container],
        },
    }))
    .unwrap()
}

fn terminated(p: &Pod) -> Option<ContainerState> {
    let st = p.status.as_ref()?.container_statuses.as_ref()?.first()?.state.clone()?;
    st.terminated.is_some().then_some(st)
}

#[tokio::test]
#[ignore = "needs the node and the image: AGENTID_NODE=1 e2e/test.sh runs it with --ignored"]
async fn the_image_runs_read_only_as_non_root_and_says_the_source_version() {
    let client = client().await;
    let ns = node_namespace(&client, "node-image").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);

    // What this source says: the binary cargo built for this test from the same tree.
    let out = Command::new(env!("CARGO_BIN_EXE_agentid")).arg("version").output().unwrap();
    assert!(out.status.success());
    let expected = String::from_utf8(out.stdout).unwrap();
    assert!(expected.starts_with("agentid "), "{expected}");

    pods.create(&PostParams::default(), &pod("version", None, &["version"])).await.unwrap();
    let state = wait_on_node(Duration::from_secs(60), "the version pod to finish", || {
        let pods = pods.clone();
        async move { terminated(&pods.get("version").await.ok()?) }
    })
    .await;
    let term = state.terminated.unwrap();
    let logs = pods.logs("version", &LogParams::default()).await.unwrap();
    assert_eq!(term.exit_code, 0, "image {} failed: {:?} {logs}", image_ref(), term.reason);
    // runAsNonRoot with no runAsUser: the kubelet started it only because the image's user is
    // numeric and not 0.
    assert_eq!(logs, expected, "the image's agentid is not this source's");

    // No shell in the image: a container asking for one never starts.
    pods.create(&PostParams::default(), &pod("shell", Some("/bin/sh"), &["-c", "true"])).await.unwrap();
    let reason = wait_on_node(Duration::from_secs(60), "the shell pod to fail", || {
        let pods = pods.clone();
        async move {
            let p = pods.get("shell").await.ok()?;
            let st = p.status?.container_statuses?.first()?.state.clone()?;
            if let Some(t) = st.terminated {
                return Some(format!("terminated {} {:?}", t.exit_code, t.reason));
            }
            let w = st.waiting?;
            let r = w.reason.unwrap_or_default();
            (r != "ContainerCreating").then(|| format!("waiting {r}: {}", w.message.unwrap_or_default()))
        }
    })
    .await;
    assert!(!reason.starts_with("terminated 0 "), "/bin/sh ran in the agentid image: {reason}");
    assert!(
        reason.contains("/bin/sh") || reason.contains("StartError") || reason.contains("ContainerCannotRun"),
        "{reason}"
    );
}
