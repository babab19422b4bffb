//! The admission webhook through the real kube-apiserver: the operator serves
//! HTTPS on 127.0.0.1, registers its ValidatingWebhookConfiguration with a
//! `url:` client config, and kubectl sees denials and warnings.
#![cfg(feature = "e2e")]

mod support;

use std::process::{Command, Output};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use support::*;

use agentid::api::AgentIdentity;

fn kubectl(args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new("kubectl")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl on PATH (make test puts .cache/bin there)");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn bad_deployment(ns: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: billing, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: billing}}}}
  template:
    metadata: {{labels: {{app: billing}}}}
    spec:
      containers:
      - name: app
        image: registry.example.com/billing:1
        env:
        - {{name: LOG_LEVEL, value: info}}
        - name: DB_PASSWORD
          valueFrom: {{secretKeyRef: {{name: db, key: password}}}}
"
    )
}

fn good_agent_pod(ns: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: triage, namespace: {ns}, labels: {{agentid.dev/agent: triage}}}}
spec:
  serviceAccountName: agent-triage
  automountServiceAccountToken: false
  containers:
  - name: agent
    image: registry.example.com/triage:1
    volumeMounts: [{{name: token, mountPath: /var/run/agentid}}]
  volumes:
  - name: token
    projected:
      sources:
      - serviceAccountToken: {{audience: https://tools.example.com, expirationSeconds: 600, path: token}}
"
    )
}

// kubectl runs as a blocking child process: the webhook needs other threads to answer it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_enforces_warns_and_audits_through_the_apiserver() {
    let env = env("webhook").await;
    // Agents are trusted once the controller has put their ServiceAccount in place.
    let _op = start_operator(&env.client, operator_config(&env.ns));
    let hook = Webhook::start(&env.client, &env.ns).await;
    let stderr = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();

    // enforce: kubectl apply is refused, listing the rule ids.
    hook.label(&env.ns, Some("enforce")).await;
    let out = kubectl(&["apply", "-f", "-"], &bad_deployment(&env.ns));
    assert!(!out.status.success(), "bad Deployment was admitted");
    let msg = stderr(&out);
    assert!(msg.contains("denied the request"), "{msg}");
    assert!(msg.contains("[agentid/static-secret-env]") && msg.contains("[agentid/default-service-account]"), "{msg}");
    assert!(msg.contains("spec.template.spec.containers[0].env[1] (DB_PASSWORD)"), "{msg}");
    assert!(!msg.contains("password\n") && !msg.contains("valueFrom"), "messages name paths, not values");

    // warn: allowed, and kubectl prints one Warning: line per violation.
    let warn_ns = namespace(&env.client, "webhook-warn").await;
    hook.label(&warn_ns, Some("warn")).await;
    let out = kubectl(&["apply", "-f", "-"], &bad_deployment(&warn_ns));
    assert!(out.status.success(), "{}", stderr(&out));
    let msg = stderr(&out);
    let warnings: Vec<&str> = msg.lines().filter(|l| l.starts_with("Warning: [agentid/")).collect();
    assert_eq!(warnings.len(), 2, "{msg}");

    // audit: allowed silently, recorded in metrics.
    let audit_ns = namespace(&env.client, "webhook-audit").await;
    hook.label(&audit_ns, Some("audit")).await;
    let out = kubectl(&["apply", "-f", "-"], &bad_deployment(&audit_ns));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("Warning"), "{}", stderr(&out));
    // At least the Deployment's own review; with a node (AGENTID_NODE=1) the ReplicaSet the Deployment
    // controller makes, and its pods, are judged too, as they are arriving.
    let metrics = hook.metrics.encode();
    let recorded = metrics
        .lines()
        .find_map(|l| l.strip_prefix("agentid_admission_violations_total{mode=\"audit\",rule=\"static-secret-env\"} "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert!(recorded >= 1, "{metrics}");

    // A misspelled mode is refused by the apiserver itself (a ValidatingAdmissionPolicy agentid installs),
    // instead of silently leaving the namespace unjudged.
    let typo = serde_json::json!({"metadata": {"labels": {"agentid.dev/enforcement": "Enforce"}}});
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(env.client.clone());
    let msg = wait_until(std::time::Duration::from_secs(20), "policy in effect", || async {
        match namespaces.patch(&audit_ns, &PatchParams::default(), &Patch::Merge(&typo)).await {
            Err(kube::Error::Api(s)) => Some(s.message),
            Ok(_) => None,
            Err(e) => panic!("unexpected: {e}"),
        }
    })
    .await;
    assert!(msg.contains("must be enforce, warn or audit"), "{msg}");
    hook.label(&audit_ns, Some("audit")).await;

    // Unlabeled namespaces and the operator's own namespace are untouched.
    let free_ns = namespace(&env.client, "webhook-free").await;
    hook.label(&free_ns, None).await;
    let out = kubectl(&["apply", "-f", "-"], &bad_deployment(&free_ns));
    assert!(out.status.success() && !stderr(&out).contains("Warning"), "{}", stderr(&out));
    let out = kubectl(&["apply", "-f", "-"], &bad_deployment(&hook.operator_ns));
    assert!(out.status.success(), "operator namespace must never be judged: {}", stderr(&out));

    // A good agent pod passes in enforce mode once its AgentIdentity exists.
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns);
    let pod: Pod = from_yaml(&good_agent_pod(&env.ns));
    // With a node the apiserver's own ServiceAccount admission refuses first: the agent's account does
    // not exist yet either.
    let err = pods.create(&PostParams::default(), &pod).await.unwrap_err().to_string();
    let node = std::env::var("AGENTID_NODE").is_ok_and(|v| v == "1");
    assert!(
        err.contains("[agentid/unknown-agent]") || (node && err.contains("serviceaccount \"agent-triage\" not found")),
        "{err}"
    );
    let agents: Api<AgentIdentity> = Api::namespaced(env.client.clone(), &env.ns);
    let agent: AgentIdentity = from_yaml(
        "apiVersion: agentid.dev/v1alpha1\nkind: AgentIdentity\nmetadata: {name: triage}\nspec: {owner: team, audiences: [https://tools.example.com]}",
    );
    agents.create(&PostParams::default(), &agent).await.unwrap();
    wait_until(std::time::Duration::from_secs(20), "webhook sees the new agent", || async {
        match pods.create(&PostParams::default(), &pod).await {
            Ok(_) => Some(()),
            Err(kube::Error::Api(s))
                if s.message.contains("unknown-agent") || s.message.contains("error looking up service account") =>
            {
                None
            }
            Err(e) => panic!("good agent pod refused: {e}"),
        }
    })
    .await;

    // A debug container added through pods/ephemeralcontainers is judged too.
    let debug = serde_json::json!({"spec": {"ephemeralContainers": [{"name": "debug", "image": "busybox",
        "env": [{"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}]}]}});
    let err = pods
        .patch_ephemeral_containers("triage", &PatchParams::default(), &Patch::Strategic(&debug))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("[agentid/static-secret-env]") && err.contains("spec.ephemeralContainers[0].env[0]"), "{err}");

    // A suspended agent's pods are refused with their own reason.
    let patch = serde_json::json!({"spec": {"suspended": true}});
    agents.patch("triage", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    // The webhook's cache follows the change within moments; until then a pod may still get in.
    let mut attempt = 0;
    let err = wait_until(std::time::Duration::from_secs(20), "suspension seen", || {
        attempt += 1;
        let mut p = pod.clone();
        p.metadata.name = Some(format!("triage-{attempt}"));
        let pods = pods.clone();
        async move {
            match pods.create(&PostParams::default(), &p).await {
                Err(kube::Error::Api(s)) if s.message.contains("suspended") => Some(s.message),
                Ok(_) => None,
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
    })
    .await;
    assert!(err.contains("[agentid/unknown-agent]"), "{err}");

    hook.stop().await;
}

/// A client acting as `user` (impersonated by the admin credentials of the test kubeconfig).
async fn client_as(user: &str) -> Client {
    let mut config = kube::Config::infer().await.unwrap();
    config.auth_info.impersonate = Some(user.to_string());
    Client::try_from(config).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toolgrants_cannot_escalate_beyond_their_author() {
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    let env = env("escalation").await;
    let _op = start_operator(&env.client, operator_config(&env.ns));
    let hook = Webhook::start(&env.client, &env.ns).await;
    hook.label(&env.ns, None).await;

    // dev may manage ToolGrants and read ConfigMaps in this namespace, nothing more.
    let role: Role = from_yaml(
        "metadata: {name: grant-author}\nrules:\n- {apiGroups: [agentid.dev], resources: [toolgrants], verbs: [get, list, create, update, patch]}\n- {apiGroups: [''], resources: [configmaps], verbs: [get, list]}",
    );
    Api::<Role>::namespaced(env.client.clone(), &env.ns).create(&PostParams::default(), &role).await.unwrap();
    let binding: RoleBinding = from_yaml(
        "metadata: {name: grant-author}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: grant-author}\nsubjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: dev}]",
    );
    Api::<RoleBinding>::namespaced(env.client.clone(), &env.ns).create(&PostParams::default(), &binding).await.unwrap();

    let dev = client_as("dev").await;
    let grants: Api<agentid::api::ToolGrant> = Api::namespaced(dev, &env.ns);
    let grant = |name: &str, resource: &str| -> agentid::api::ToolGrant {
        from_yaml(&format!(
            "apiVersion: agentid.dev/v1alpha1\nkind: ToolGrant\nmetadata: {{name: {name}}}\nspec:\n  agentRef: {{name: bot}}\n  kubernetesRules: [{{apiGroups: [''], resources: [{resource}], verbs: [get]}}]\n"
        ))
    };
    // The apiserver's RBAC cache catches up with the new binding within moments.
    wait_until(std::time::Duration::from_secs(20), "dev may grant get configmaps", || async {
        match grants.create(&PostParams::default(), &grant("read-config", "configmaps")).await {
            Ok(_) => Some(()),
            Err(kube::Error::Api(s)) if s.message.contains("is forbidden: User") => None,
            Err(e) => panic!("unexpected: {e}"),
        }
    })
    .await;
    let err = grants.create(&PostParams::default(), &grant("read-secrets", "secrets")).await.unwrap_err().to_string();
    assert!(err.contains("[agentid/toolgrant-escalation] dev may not grant permissions they do not hold"), "{err}");
    assert!(err.contains("get core/secrets"), "{err}");

    // An agent's own ServiceAccount can never create grants, whatever RBAC it has.
    let agents: Api<AgentIdentity> = Api::namespaced(env.client.clone(), &env.ns);
    let bot: AgentIdentity = from_yaml(
        "apiVersion: agentid.dev/v1alpha1\nkind: AgentIdentity\nmetadata: {name: bot}\nspec: {owner: team, audiences: [x]}",
    );
    agents.create(&PostParams::default(), &bot).await.unwrap();
    let mut sa_binding = binding.clone();
    sa_binding.metadata.name = Some("bot-too".into());
    sa_binding.subjects = Some(vec![k8s_openapi::api::rbac::v1::Subject {
        kind: "ServiceAccount".into(),
        name: "agent-bot".into(),
        namespace: Some(env.ns.clone()),
        api_group: None,
    }]);
    Api::<RoleBinding>::namespaced(env.client.clone(), &env.ns)
        .create(&PostParams::default(), &sa_binding)
        .await
        .unwrap();
    let bot_grants: Api<agentid::api::ToolGrant> =
        Api::namespaced(client_as(&format!("system:serviceaccount:{}:agent-bot", env.ns)).await, &env.ns);
    let err = wait_until(std::time::Duration::from_secs(20), "agent SA refused", || async {
        match bot_grants.create(&PostParams::default(), &grant("self-grant", "configmaps")).await {
            Err(kube::Error::Api(s)) if s.message.contains("agents can never create or change ToolGrants") => {
                Some(s.message)
            }
            Ok(g) => {
                // The webhook's cache had not seen the agent yet: undo and retry.
                let _ = Api::<agentid::api::ToolGrant>::namespaced(env.client.clone(), &env.ns)
                    .delete(&g.metadata.name.unwrap(), &DeleteParams::default())
                    .await;
                None
            }
            // The apiserver's RBAC cache has not seen the binding yet.
            Err(kube::Error::Api(s)) if s.message.contains("is forbidden: User") => None,
            Err(e) => panic!("unexpected: {e}"),
        }
    })
    .await;
    assert!(err.contains("agent-bot"), "{err}");
    hook.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_as_an_agent_needs_use_on_its_identity() {
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    let env = env("agentuse").await;
    let _op = start_operator(&env.client, operator_config(&env.ns));
    let hook = Webhook::start(&env.client, &env.ns).await;
    hook.label(&env.ns, Some("enforce")).await;
    let agents: Api<AgentIdentity> = Api::namespaced(env.client.clone(), &env.ns);
    let agent: AgentIdentity = from_yaml(
        "apiVersion: agentid.dev/v1alpha1\nkind: AgentIdentity\nmetadata: {name: triage}\nspec: {owner: team, audiences: [https://tools.example.com]}",
    );
    agents.create(&PostParams::default(), &agent).await.unwrap();

    // dev may create pods here, but may not (yet) run the triage agent.
    let roles: Api<Role> = Api::namespaced(env.client.clone(), &env.ns);
    let bindings: Api<RoleBinding> = Api::namespaced(env.client.clone(), &env.ns);
    roles
        .create(
            &PostParams::default(),
            &from_yaml("metadata: {name: deployer}\nrules: [{apiGroups: [''], resources: [pods], verbs: [create]}]"),
        )
        .await
        .unwrap();
    bindings
        .create(&PostParams::default(), &from_yaml("metadata: {name: deployer}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: deployer}\nsubjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: dev}]"))
        .await
        .unwrap();
    let dev_pods: Api<Pod> = Api::namespaced(client_as("dev").await, &env.ns);
    let pod: Pod = from_yaml(&good_agent_pod(&env.ns));
    let msg = wait_until(std::time::Duration::from_secs(20), "agent known to the webhook", || async {
        match dev_pods.create(&PostParams::default(), &pod).await {
            Err(kube::Error::Api(s))
                if s.message.contains("agent-use-denied") && !s.message.contains("unknown-agent") =>
            {
                Some(s.message)
            }
            // The webhook's cache has not seen the agent yet, or the apiserver's RBAC cache the binding; with a
            // node, the apiserver's ServiceAccount admission may not have seen the agent's account yet either.
            Err(kube::Error::Api(s))
                if s.message.contains("unknown-agent")
                    || s.message.starts_with("pods is forbidden")
                    || s.message.contains("error looking up service account") =>
            {
                None
            }
            other => panic!("unexpected: {other:?}"),
        }
    })
    .await;
    assert!(msg.contains("but dev may not run it") && msg.contains("`use` on agentidentities/triage"), "{msg}");

    // The agent's owner lets dev use exactly this agent.
    roles
        .create(&PostParams::default(), &from_yaml("metadata: {name: use-triage}\nrules: [{apiGroups: [agentid.dev], resources: [agentidentities], resourceNames: [triage], verbs: [use]}]"))
        .await
        .unwrap();
    bindings
        .create(&PostParams::default(), &from_yaml("metadata: {name: use-triage}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: use-triage}\nsubjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: dev}]"))
        .await
        .unwrap();
    // The apiserver's RBAC cache catches up with the new binding within moments.
    wait_until(std::time::Duration::from_secs(20), "dev may run the triage agent", || async {
        match dev_pods.create(&PostParams::default(), &pod).await {
            Ok(_) => Some(()),
            // The RBAC cache catching up (or, transiently, the webhook's cache of the agent's status).
            Err(kube::Error::Api(s))
                if s.message.contains("agent-use-denied") || s.message.contains("unknown-agent") =>
            {
                None
            }
            Err(e) => panic!("unexpected: {e}"),
        }
    })
    .await;
    hook.stop().await;
}
