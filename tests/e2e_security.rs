//! Regression tests for the bypasses a probe of a running install found (issue 12), each reproducing
//! the attack through the real kube-apiserver.
#![cfg(feature = "e2e")]

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, ReplicationController, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use support::*;

use agentid::api::{AgentIdentity, AgentTask};

/// A client acting as `user` (impersonated by the admin credentials of the test kubeconfig).
async fn client_as(user: &str) -> Client {
    let mut config = kube::Config::infer().await.unwrap();
    config.auth_info.impersonate = Some(user.to_string());
    Client::try_from(config).unwrap()
}

fn identity(name: &str, service_account: Option<&str>) -> AgentIdentity {
    let sa = service_account.map(|s| format!(", serviceAccountName: {s}")).unwrap_or_default();
    from_yaml(&format!(
        "apiVersion: agentid.dev/v1alpha1\nkind: AgentIdentity\nmetadata: {{name: {name}}}\nspec: {{owner: team, audiences: [https://tools.example.com]{sa}}}"
    ))
}

async fn ready(agents: &Api<AgentIdentity>, name: &str) {
    wait_until(Duration::from_secs(30), "agent Ready", || async {
        agents.get(name).await.ok()?.service_account_in_place().then_some(())
    })
    .await;
}

/// Grants `user` (a User, or a ServiceAccount as `ns:name`) a Role with `rules` (YAML list) in `ns`.
async fn grant_role(client: &Client, ns: &str, name: &str, subject: &str, rules: &str) {
    let subject = match subject.split_once(':') {
        Some((sa_ns, sa)) => format!("{{kind: ServiceAccount, name: {sa}, namespace: {sa_ns}}}"),
        None => format!("{{apiGroup: rbac.authorization.k8s.io, kind: User, name: {subject}}}"),
    };
    let role: Role = from_yaml(&format!("metadata: {{name: {name}}}\nrules: {rules}"));
    Api::<Role>::namespaced(client.clone(), ns).create(&PostParams::default(), &role).await.unwrap();
    let binding: RoleBinding = from_yaml(&format!(
        "metadata: {{name: {name}}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: {name}}}\nsubjects: [{subject}]"
    ));
    Api::<RoleBinding>::namespaced(client.clone(), ns).create(&PostParams::default(), &binding).await.unwrap();
}

/// Issue 12, item 1: a ReplicationController's pods come from a kube-system controller, exempt from the
/// `use` check; so the RC itself is judged, template and `use` included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_controllers_are_judged_like_other_workloads() {
    let env = env("sec-rc").await;
    let _op = start_operator(&env.client, operator_config(&env.ns));
    let hook = Webhook::start(&env.client, &env.ns).await;
    hook.label(&env.ns, Some("enforce")).await;
    let agents: Api<AgentIdentity> = Api::namespaced(env.client.clone(), &env.ns);
    agents.create(&PostParams::default(), &identity("triage", None)).await.unwrap();
    ready(&agents, "triage").await;
    grant_role(
        &env.client,
        &env.ns,
        "rc-author",
        "mallory",
        "[{apiGroups: [''], resources: [replicationcontrollers, pods], verbs: [create]}]",
    )
    .await;
    let rc: ReplicationController = from_yaml(&format!(
        "metadata: {{name: sneaky, namespace: {}}}
spec:
  replicas: 1
  selector: {{app: sneaky}}
  template:
    metadata: {{labels: {{app: sneaky, agentid.dev/agent: triage}}}}
    spec:
      serviceAccountName: agent-triage
      automountServiceAccountToken: false
      containers: [{{name: agent, image: registry.example.com/triage:1}}]",
        env.ns
    ));
    let rcs: Api<ReplicationController> = Api::namespaced(client_as("mallory").await, &env.ns);
    let msg = wait_until(Duration::from_secs(20), "RBAC in effect", || async {
        match rcs.create(&PostParams::default(), &rc).await {
            Err(kube::Error::Api(s))
                if s.message.contains("agent-use-denied") && !s.message.contains("unknown-agent") =>
            {
                Some(s.message)
            }
            // RBAC not in effect yet, or (transiently) the webhook's cache has not seen the agent in place.
            Err(kube::Error::Api(s))
                if s.message.contains("is forbidden: User") || s.message.contains("unknown-agent") =>
            {
                None
            }
            other => panic!("the ReplicationController was not refused: {other:?}"),
        }
    })
    .await;
    assert!(
        msg.contains("ReplicationController") && msg.contains("spec.template.metadata.labels[agentid.dev/agent]"),
        "{msg}"
    );
    // And its template is judged like any other: a static secret is refused for everyone.
    let mut bad = rc.clone();
    bad.metadata.name = Some("plain".into());
    let tpl = bad.spec.as_mut().unwrap().template.as_mut().unwrap();
    tpl.metadata.as_mut().unwrap().labels = Some([("app".to_string(), "plain".to_string())].into());
    let spec = tpl.spec.as_mut().unwrap();
    spec.service_account_name = Some("web".into());
    spec.volumes = Some(vec![from_yaml("{name: s, secret: {secretName: db}}")]);
    bad.spec.as_mut().unwrap().selector = Some([("app".to_string(), "plain".to_string())].into());
    let admin_rcs: Api<ReplicationController> = Api::namespaced(env.client.clone(), &env.ns);
    let err = admin_rcs.create(&PostParams::default(), &bad).await.unwrap_err().to_string();
    assert!(err.contains("[agentid/static-secret-volume]"), "{err}");
    hook.stop().await;
}

/// Item 2: naming someone else's ServiceAccount in an AgentIdentity is refused at admission, and an
/// agent whose ServiceAccount is not its own is never trusted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_cannot_squat_service_accounts() {
    let env = env("sec-squat").await;
    let _op = start_operator(&env.client, operator_config(&env.ns));
    let hook = Webhook::start(&env.client, &env.ns).await;
    hook.label(&env.ns, Some("enforce")).await;
    let agents: Api<AgentIdentity> = Api::namespaced(env.client.clone(), &env.ns);
    agents.create(&PostParams::default(), &identity("victim", None)).await.unwrap();
    ready(&agents, "victim").await;
    let squatter = identity("squatter", Some("agent-victim"));
    let err = wait_until(Duration::from_secs(20), "the webhook knows the victim", || async {
        match agents.create(&PostParams::default(), &squatter).await {
            Err(kube::Error::Api(s)) => Some(s.message),
            Ok(_) => {
                agents.delete("squatter", &DeleteParams::default()).await.unwrap();
                None
            }
            Err(e) => panic!("{e}"),
        }
    })
    .await;
    assert!(
        err.contains("[agentid/agent-objects]") && err.contains("already named by AgentIdentity \"victim\""),
        "{err}"
    );

    // An ordinary ServiceAccount in use cannot be claimed either (its workloads would all be refused).
    let sa: ServiceAccount = from_yaml("metadata: {name: web}");
    Api::<ServiceAccount>::namespaced(env.client.clone(), &env.ns).create(&PostParams::default(), &sa).await.unwrap();
    let err = agents.create(&PostParams::default(), &identity("grabber", Some("web"))).await.unwrap_err().to_string();
    assert!(err.contains("ServiceAccount") && err.contains("/web already exists"), "{err}");
    hook.stop().await;
}

/// Item 8: an agent's ServiceAccount never writes its identity, tasks or any status, even with RBAC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_cannot_edit_their_identity_or_start_tasks() {
    let env = env("sec-self").await;
    let _op = start_operator(&env.client, operator_config(&env.ns));
    let hook = Webhook::start(&env.client, &env.ns).await;
    hook.label(&env.ns, None).await;
    let agents: Api<AgentIdentity> = Api::namespaced(env.client.clone(), &env.ns);
    agents.create(&PostParams::default(), &identity("bot", None)).await.unwrap();
    ready(&agents, "bot").await;
    let sa = format!("{}:agent-bot", env.ns);
    grant_role(
        &env.client,
        &env.ns,
        "too-generous",
        &sa,
        "[{apiGroups: [agentid.dev], resources: [agentidentities, agentidentities/status, agenttasks, toolgrants/status], verbs: [get, create, update, patch]}]",
    )
    .await;
    let bot = client_as(&format!("system:serviceaccount:{}:agent-bot", env.ns)).await;
    let bot_tasks: Api<AgentTask> = Api::namespaced(bot.clone(), &env.ns);
    let task: AgentTask = from_yaml(
        "apiVersion: agentid.dev/v1alpha1\nkind: AgentTask\nmetadata: {name: self-started}\nspec: {agentRef: {name: bot}, purpose: p, audiences: [https://tools.example.com], ttl: 10m}",
    );
    // Dry runs until refused: RBAC takes a moment, and so does the webhook's own cache of the agent (until
    // it has seen agent-bot as the agent's ServiceAccount, the caller is an ordinary user). An agent that
    // could start a task would never be refused: the wait times out and the test fails.
    let dry_run = PostParams { dry_run: true, ..Default::default() };
    let err = wait_until(Duration::from_secs(20), "RBAC in effect and the agent refused", || async {
        match bot_tasks.create(&dry_run, &task).await {
            Err(kube::Error::Api(s)) if s.message.contains("is forbidden: User") => None,
            Err(kube::Error::Api(s)) => Some(s.message),
            Ok(_) => None,
            Err(e) => panic!("{e}"),
        }
    })
    .await;
    let real = bot_tasks.create(&PostParams::default(), &task).await;
    assert!(matches!(&real, Err(kube::Error::Api(s)) if s.message.contains("agents can never")), "{real:?}");
    assert!(err.contains("agents can never create or change AgentTasks"), "{err}");
    let bot_agents: Api<AgentIdentity> = Api::namespaced(bot, &env.ns);
    let widen =
        serde_json::json!({"spec": {"audiences": ["https://tools.example.com", "https://everything.example.com"]}});
    let err = bot_agents.patch("bot", &PatchParams::default(), &Patch::Merge(&widen)).await.unwrap_err().to_string();
    assert!(err.contains("agents can never create or change AgentIdentities"), "{err}");
    let forged = serde_json::json!({"status": {"serviceAccountName": "agent-bot"}});
    let err =
        bot_agents.patch_status("bot", &PatchParams::default(), &Patch::Merge(&forged)).await.unwrap_err().to_string();
    assert!(err.contains("the status of AgentIdentities"), "{err}");
    hook.stop().await;
}

/// Item 3: only the apiserver (its client certificate) can talk to the admission endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admission_endpoint_accepts_only_the_apiservers_certificate() {
    use rustls_pki_types::pem::PemObject;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = env("sec-mtls").await;
    let hook = Webhook::start(&env.client, &env.ns).await;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(&hook.ca_pem().await) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(hook.webhook_addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let body = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"x","operation":"CREATE","userInfo":{"username":"alice"}}}"#;
    let req = format!(
        "POST /validate/toolgrants HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let answer = async {
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await?;
        tls.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        tls.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    }
    .await;
    match answer {
        Err(e) => assert!(e.to_string().contains("CertificateRequired"), "{e}"),
        Ok(buf) => panic!("a forged AdmissionReview got an answer: {}", String::from_utf8_lossy(&buf)),
    }
    // The apiserver, presenting its certificate, is served: a namespace in scope judges workloads.
    hook.label(&env.ns, Some("enforce")).await;
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(env.client.clone(), &env.ns);
    let pod: k8s_openapi::api::core::v1::Pod =
        from_yaml("metadata: {name: p}\nspec: {containers: [{name: c, image: x}]}");
    let err = pods.create(&PostParams::default(), &pod).await.unwrap_err().to_string();
    assert!(err.contains("[agentid/default-service-account]"), "{err}");
    hook.stop().await;
}

/// Item 9: a namespace editor may raise the enforcement mode but not lower or remove it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admins_lower_enforcement() {
    let env = env("sec-guard").await;
    let hook = Webhook::start(&env.client, &env.ns).await;
    hook.label(&env.ns, Some("enforce")).await;
    let raise_ns = namespace(&env.client, "sec-guard-raise").await;
    hook.label(&raise_ns, Some("audit")).await;
    let name = format!("ns-editor-{}", env.ns);
    let role: ClusterRole = from_yaml(&format!(
        "metadata: {{name: {name}}}\nrules: [{{apiGroups: [''], resources: [namespaces], resourceNames: [{}, {raise_ns}], verbs: [get, update, patch]}}]",
        env.ns
    ));
    let binding: ClusterRoleBinding = from_yaml(&format!(
        "metadata: {{name: {name}}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {name}}}\nsubjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: editor}}]"
    ));
    let roles: Api<ClusterRole> = Api::all(env.client.clone());
    let bindings: Api<ClusterRoleBinding> = Api::all(env.client.clone());
    roles.create(&PostParams::default(), &role).await.unwrap();
    bindings.create(&PostParams::default(), &binding).await.unwrap();

    let editor: Api<Namespace> = Api::all(client_as("editor").await);
    let lower = serde_json::json!({"metadata": {"labels": {"agentid.dev/enforcement": "audit"}}});
    let msg = wait_until(Duration::from_secs(20), "policy and RBAC in effect", || async {
        match editor.patch(&env.ns, &PatchParams::default(), &Patch::Merge(&lower)).await {
            Err(kube::Error::Api(s)) if s.message.contains("is forbidden: User") => None,
            Err(kube::Error::Api(s)) => Some(s.message),
            Ok(_) => {
                // The policy was not in effect yet: put the label back and try again.
                hook.label(&env.ns, Some("enforce")).await;
                None
            }
            Err(e) => panic!("{e}"),
        }
    })
    .await;
    assert!(msg.contains("reserved to the groups system:masters"), "{msg}");
    let remove = serde_json::json!({"metadata": {"labels": {"agentid.dev/enforcement": null}}});
    assert!(editor.patch(&env.ns, &PatchParams::default(), &Patch::Merge(&remove)).await.is_err(), "removal refused");
    // Raising is open to editors; admins (system:masters) may lower.
    let raise = serde_json::json!({"metadata": {"labels": {"agentid.dev/enforcement": "enforce"}}});
    editor.patch(&raise_ns, &PatchParams::default(), &Patch::Merge(&raise)).await.unwrap();
    hook.label(&env.ns, Some("warn")).await;

    bindings.delete(&name, &DeleteParams::default()).await.unwrap();
    roles.delete(&name, &DeleteParams::default()).await.unwrap();
    hook.stop().await;
}
