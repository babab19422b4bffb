//! Tests of the threat model (docs/threat-model.md) that no other test covered: each names the threat it
//! proves mitigated. The pure ones run in `cargo test`; `operator_secrets` (feature `e2e`) runs the
//! operator's Secret operations as its real ServiceAccount under the shipped RBAC and
//! ValidatingAdmissionPolicy of config/rbac/ on the real kube-apiserver.

use std::collections::BTreeSet;

use serde::Deserialize;
use serde_json::Value;

fn shipped_rbac() -> Vec<Value> {
    serde_norway::Deserializer::from_str(include_str!("../config/rbac/role.yaml"))
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn strings(v: &Value) -> BTreeSet<&str> {
    v.as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default()
}

/// Threat: the operator's ServiceAccount is stolen (or the operator is subverted) and used beyond what
/// agentid needs. The shipped RBAC holds no wildcard, never lets the operator change or delete an audit
/// checkpoint, replaces only its own certificate Secret (by name), never updates or patches a Secret
/// cluster-wide, cannot delete or loosen the policy that polices its Secret writes, and that policy is
/// bound, fails closed, and names exactly the shipped ServiceAccount.
#[test]
fn shipped_rbac_is_least_privilege_and_secret_writes_are_policed() {
    let docs = shipped_rbac();
    let of_kind = |k: &'static str| docs.iter().filter(move |d| d["kind"] == k);
    let sa = of_kind("ServiceAccount").next().expect("a ServiceAccount");
    let username = format!(
        "system:serviceaccount:{}:{}",
        sa["metadata"]["namespace"].as_str().unwrap(),
        sa["metadata"]["name"].as_str().unwrap()
    );
    let cluster_role = of_kind("ClusterRole").next().expect("a ClusterRole");
    let role = of_kind("Role").next().expect("a Role");
    for rules in [&cluster_role["rules"], &role["rules"]] {
        for rule in rules.as_array().unwrap() {
            for field in ["apiGroups", "resources", "verbs", "nonResourceURLs"] {
                assert!(!strings(&rule[field]).contains("*"), "wildcard in {rule}");
            }
            let verbs = strings(&rule["verbs"]);
            assert!(!verbs.contains("impersonate") && !verbs.contains("deletecollection"), "{rule}");
            let resources = strings(&rule["resources"]);
            // Escalate and bind on namespaced Roles only (ToolGrants), never on ClusterRoles.
            assert!(!resources.contains("clusterroles") && !resources.contains("clusterrolebindings"), "{rule}");
            assert!(!resources.contains("pods/exec") && !resources.contains("nodes"), "{rule}");
            // Nothing that could remove or weaken an admission policy or the webhook configuration.
            if resources.iter().any(|r| r.starts_with("validating") || r.starts_with("mutating")) {
                assert!(!verbs.contains("delete"), "{rule}");
                if verbs.iter().any(|v| ["get", "patch", "update"].contains(v)) {
                    let names = strings(&rule["resourceNames"]);
                    assert!(!names.is_empty() && !names.contains("agentid-operator-secrets"), "{rule}");
                }
            }
            if resources.contains("auditcheckpoints") {
                assert_eq!(verbs, BTreeSet::from(["create", "get", "list"]), "checkpoints are create-only");
            }
        }
    }
    let secret_rules = |rules: &Value| -> Vec<Value> {
        rules.as_array().unwrap().iter().filter(|r| strings(&r["resources"]).contains("secrets")).cloned().collect()
    };
    for rule in secret_rules(&cluster_role["rules"]) {
        let verbs = strings(&rule["verbs"]);
        assert!(!verbs.contains("update") && !verbs.contains("patch"), "no Secret writes cluster-wide: {rule}");
    }
    for rule in secret_rules(&role["rules"]) {
        let verbs = strings(&rule["verbs"]);
        let names = strings(&rule["resourceNames"]);
        assert!(!verbs.contains("patch") && !verbs.contains("delete"), "{rule}");
        if verbs.contains("update") {
            assert_eq!(names, BTreeSet::from(["agentid-webhook-tls"]), "only the certificate is replaced: {rule}");
        }
        if verbs.contains("get") {
            assert_eq!(names, BTreeSet::from(["agentid-audit-key", "agentid-webhook-tls"]), "{rule}");
        }
    }
    // The policies on what the operator writes to Secrets and which tokens it requests.
    let policies = [
        ("agentid-operator-secrets", "secrets", BTreeSet::from(["CREATE", "DELETE", "UPDATE"])),
        ("agentid-operator-tokens", "serviceaccounts/token", BTreeSet::from(["CREATE"])),
    ];
    for (name, resource, operations) in policies {
        let policy = of_kind("ValidatingAdmissionPolicy")
            .find(|d| d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("the policy {name}"));
        assert_eq!(policy["spec"]["failurePolicy"], "Fail", "{name}");
        let rule = &policy["spec"]["matchConstraints"]["resourceRules"][0];
        assert_eq!(strings(&rule["resources"]), BTreeSet::from([resource]), "{name}");
        assert_eq!(strings(&rule["operations"]), operations, "{name}");
        let condition = policy["spec"]["matchConditions"][0]["expression"].as_str().unwrap();
        assert_eq!(condition, format!("request.userInfo.username == '{username}'"), "{name}");
        let binding = of_kind("ValidatingAdmissionPolicyBinding")
            .find(|d| d["spec"]["policyName"] == name)
            .unwrap_or_else(|| panic!("the policy {name} is bound"));
        assert_eq!(strings(&binding["spec"]["validationActions"]), BTreeSet::from(["Deny"]), "{name}");
        assert!(binding["spec"].get("matchResources").is_none(), "{name}: bound to every request it matches");
    }
}

/// Threat (CLI `check` in CI): a manifest's text — an object name, a message, a file name — carries a
/// newline and a GitHub Actions workflow command (`::add-mask::`, `::set-env`), which the runner would
/// execute from agentid's `--output github` log. Escaped: every annotation stays one line, and property
/// values cannot close their property list.
#[test]
fn github_annotations_cannot_inject_workflow_commands() {
    use agentid::core::admission::offline::github_escape;
    let hostile = "bad\n::add-mask::secret\r\n::set-env name=PATH::/tmp%0A";
    let data = github_escape(hostile, false);
    assert!(!data.contains('\n') && !data.contains('\r'), "{data}");
    assert!(data.contains("%0A") && data.contains("%250A"), "newlines and literal escapes are encoded: {data}");
    let property = github_escape("x.yaml,line=1::injected", true);
    assert!(!property.contains(',') && !property.contains(':'), "{property}");
}

/// Threat (CLI `check` in CI): a pull request adds YAML with an alias bomb ("billion laughs"), expanding to
/// ~10^9 nodes, to exhaust the CI runner. Refused at parse time as invalid input (exit 2), at once.
#[test]
fn a_yaml_alias_bomb_is_refused_quickly() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for (prev, cur) in ["a", "b", "c", "d", "e", "f", "g", "h"].iter().zip(["b", "c", "d", "e", "f", "g", "h", "i"]) {
        bomb.push_str(&format!("{cur}: &{cur} [{}]\n", vec![format!("*{prev}"); 10].join(", ")));
    }
    bomb.push_str(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, image: x, args: *i}]}\n",
    );
    let started = std::time::Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentid"))
        .args(["check", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bomb.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("repetition limit"), "{stderr}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "took {:?}", started.elapsed());
}

#[cfg(feature = "e2e")]
mod support;

/// The operator's Secret access, narrowed (config/rbac/role.yaml): RBAC limits get/update in its namespace
/// to its two Secrets by name, and the ValidatingAdmissionPolicy `agentid-operator-secrets` limits what its
/// ServiceAccount may create, replace and delete. Everything the operator does with Secrets still works
/// under it; what a stolen operator token would do with Secrets is refused.
#[cfg(feature = "e2e")]
mod operator_secrets {
    use std::process::Command;
    use std::time::Duration;

    use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    use k8s_openapi::jiff::{SignedDuration, Timestamp};
    use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
    use kube::{Api, Client};
    use serde_json::json;

    use super::support::*;
    use agentid::api::{AgentIdentity, AgentTask, TaskPhase};
    use agentid::server::tls::SelfManaged;

    const OPERATOR_NS: &str = "agentid-system";
    const OPERATOR: &str = "system:serviceaccount:agentid-system:agentid";
    const POLICY: &str = "agentid-operator-secrets";
    const TOKEN_POLICY: &str = "agentid-operator-tokens";
    const TIMEOUT: Duration = Duration::from_secs(30);
    const TOOLS: &str = "https://tools.example.com";

    fn kubectl(args: &[&str]) -> (bool, String) {
        let out = Command::new("kubectl")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap_or_else(|e| panic!("kubectl on PATH (make test puts .cache/bin there): {e}"));
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    }

    /// A client acting as the operator's ServiceAccount (as a pod of the chart would).
    async fn as_operator() -> Client {
        let mut config = kube::Config::infer().await.unwrap();
        config.auth_info.impersonate = Some(OPERATOR.into());
        config.auth_info.impersonate_groups = Some(vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{OPERATOR_NS}"),
            "system:authenticated".into(),
        ]);
        Client::try_from(config).unwrap()
    }

    async fn admin_accounts_create(admin: &Client, ns: &str, name: &str) {
        let sa: ServiceAccount =
            from_yaml(&format!("apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {name}}}\n"));
        Api::<ServiceAccount>::namespaced(admin.clone(), ns).create(&PostParams::default(), &sa).await.unwrap();
    }

    fn secret(ns: &str, name: &str, type_: &str, data: bool) -> Secret {
        let mut s: Secret = from_yaml(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {ns}}}\ntype: {type_}\n"
        ));
        if type_ == "kubernetes.io/service-account-token" {
            s.metadata.annotations =
                Some([("kubernetes.io/service-account.name".to_string(), "agentid".to_string())].into());
        }
        if data {
            let keys: &[&str] = if type_ == "kubernetes.io/tls" { &["tls.crt", "tls.key"] } else { &["k"] };
            s.data = Some(keys.iter().map(|k| (k.to_string(), k8s_openapi::ByteString(b"v".to_vec()))).collect());
        }
        s
    }

    fn refused_by_policy<T: std::fmt::Debug>(r: Result<T, kube::Error>, what: &str) {
        refused_by(POLICY, r, what)
    }

    fn refused_by<T: std::fmt::Debug>(policy: &str, r: Result<T, kube::Error>, what: &str) {
        match r {
            Err(kube::Error::Api(s)) if s.code == 403 && s.message.contains(policy) => {}
            other => panic!("{what}: expected the policy {policy} to refuse it, got {other:?}"),
        }
    }

    fn refused<T: std::fmt::Debug>(r: Result<T, kube::Error>, what: &str) {
        match r {
            Err(kube::Error::Api(s)) if s.code == 403 => {}
            other => panic!("{what}: expected 403, got {other:?}"),
        }
    }

    /// The chart installs the same policy and binding as config/rbac/ (for its release namespace).
    #[test]
    fn the_chart_ships_the_same_secret_policy() {
        use serde::Deserialize;
        let (ok, rendered) =
            helm(&["template", "agentid", "charts/agentid", "--namespace", OPERATOR_NS, "--kube-version", "1.36.3"]);
        assert!(ok, "{rendered}");
        let docs = |yaml: &str| -> Vec<serde_json::Value> {
            serde_norway::Deserializer::from_str(yaml)
                .filter_map(|d| serde_json::Value::deserialize(d).ok())
                .filter(|v| !v.is_null())
                .collect()
        };
        let chart = docs(&rendered);
        let shipped = docs(include_str!("../config/rbac/role.yaml"));
        for (kind, name) in ["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]
            .into_iter()
            .flat_map(|k| [(k, POLICY), (k, TOKEN_POLICY)])
        {
            let find = |d: &[serde_json::Value]| {
                d.iter().find(|d| d["kind"] == kind && d["metadata"]["name"] == name).cloned().unwrap()
            };
            assert_eq!(find(&chart), find(&shipped), "chart {kind} {name} differs from config/rbac/role.yaml");
        }
    }

    fn helm(args: &[&str]) -> (bool, String) {
        let out = Command::new("helm")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap_or_else(|e| panic!("helm on PATH (make test puts .cache/bin there): {e}"));
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    }

    #[tokio::test]
    async fn the_operator_does_its_secret_work_under_the_shipped_policy_and_nothing_else() {
        let env = env("threat-secrets").await;
        let admin = env.client.clone();
        let ns = env.ns.clone();
        let _ = kubectl(&["create", "namespace", OPERATOR_NS]);
        let (ok, out) = kubectl(&["apply", "--server-side", "--force-conflicts", "-f", "config/rbac/"]);
        assert!(ok, "kubectl apply -f config/rbac/: {out}");
        let op = as_operator().await;

        // In effect once RBAC lets the operator try and the policy refuses a Secret with data.
        let probe: Api<Secret> = Api::namespaced(op.clone(), &ns);
        wait_until(TIMEOUT, "RBAC and the policy in effect", || {
            let (probe, admin, ns) = (probe.clone(), admin.clone(), ns.clone());
            async move {
                match probe.create(&PostParams::default(), &secret(&ns, "probe", "Opaque", true)).await {
                    Err(kube::Error::Api(s)) if s.code == 403 && s.message.contains(POLICY) => Some(()),
                    Ok(_) => {
                        let _ = Api::<Secret>::namespaced(admin, &ns).delete("probe", &DeleteParams::default()).await;
                        None
                    }
                    Err(_) => None,
                }
            }
        })
        .await;

        let outcome = tokio::spawn(async move {
            // 1. Tasks: the controller, as the operator, creates the anchor and deletes it at the end; the
            //    operator mints a token bound to it.
            let operator = start_operator(&op, operator_config(&ns));
            let agents: Api<AgentIdentity> = Api::namespaced(admin.clone(), &ns);
            let tasks: Api<AgentTask> = Api::namespaced(admin.clone(), &ns);
            let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns);
            agents
                .create(
                    &PostParams::default(),
                    &from_yaml(&format!(
                        "apiVersion: agentid.dev/v1alpha1\nkind: AgentIdentity\nmetadata: {{name: triage}}\nspec:\n  owner: team-payments\n  audiences: ['{TOOLS}']\n"
                    )),
                )
                .await
                .unwrap();
            tasks
                .create(
                    &PostParams::default(),
                    &from_yaml(&format!(
                        "apiVersion: agentid.dev/v1alpha1\nkind: AgentTask\nmetadata: {{name: fix}}\nspec:\n  agentRef: {{name: triage}}\n  purpose: triage issue 1234\n  audiences: ['{TOOLS}']\n  ttl: 1h\n"
                    )),
                )
                .await
                .unwrap();
            let task = wait_until(TIMEOUT, "task Active", || async {
                let t = tasks.get("fix").await.ok()?;
                (t.status.as_ref()?.phase == Some(TaskPhase::Active)).then_some(t)
            })
            .await;
            let anchor = secrets.get("agentid-task-fix").await.unwrap();
            let agent = agents.get("triage").await.unwrap();
            let request = agentid::core::task::token_request(&task, &agent, &anchor, Timestamp::now()).unwrap();
            let minted = Api::<ServiceAccount>::namespaced(op.clone(), &ns)
                .create_token_request(&agent.service_account_name(), &PostParams::default(), &request)
                .await
                .unwrap();
            assert!(minted.status.and_then(|s| s.token).is_some_and(|t| !t.is_empty()));
            // But no unbound token, and none longer than 1h, of the agent's or any other ServiceAccount.
            let op_accounts = Api::<ServiceAccount>::namespaced(op.clone(), &ns);
            let mut unbound = request.clone();
            unbound.spec.as_mut().unwrap().bound_object_ref = None;
            // (The policy was applied with the one on Secrets, which is in effect; wait for this one too.)
            wait_until(TIMEOUT, "an unbound token refused by the token policy", || async {
                match op_accounts.create_token_request(&agent.service_account_name(), &PostParams::default(), &unbound).await
                {
                    Err(kube::Error::Api(s)) if s.code == 403 && s.message.contains(TOKEN_POLICY) => Some(()),
                    _ => None,
                }
            })
            .await;
            let mut long = request.clone();
            long.spec.as_mut().unwrap().expiration_seconds = Some(48 * 3600);
            refused_by(
                TOKEN_POLICY,
                op_accounts.create_token_request(&agent.service_account_name(), &PostParams::default(), &long).await,
                "a 48h token",
            );
            admin_accounts_create(&admin, &ns, "payroll").await;
            let mut other = request.clone();
            other.spec.as_mut().unwrap().bound_object_ref = None;
            refused_by(
                TOKEN_POLICY,
                op_accounts.create_token_request("payroll", &PostParams::default(), &other).await,
                "unbound token of another ServiceAccount",
            );
            tasks.patch("fix", &PatchParams::default(), &Patch::Merge(json!({"spec": {"completed": true}}))).await.unwrap();
            wait_until(TIMEOUT, "anchor deleted by the operator", || async {
                secrets.get_opt("agentid-task-fix").await.ok()?.is_none().then_some(())
            })
            .await;
            let metrics = operator.metrics.encode();
            assert!(!metrics.contains("api_forbidden"), "the operator was refused something:\n{metrics}");

            // 2. Its own Secrets: the webhook certificate (created, then replaced at renewal) and the audit keys.
            let sm = SelfManaged {
                namespace: OPERATOR_NS.into(),
                secret_name: "agentid-webhook-tls".into(),
                sans: vec!["localhost".into()],
                validity: Duration::from_secs(90 * 24 * 3600),
            };
            // From scratch (an earlier run may have left one).
            let own: Api<Secret> = Api::namespaced(admin.clone(), OPERATOR_NS);
            let _ = own.delete("agentid-webhook-tls", &DeleteParams::default()).await;
            let now = Timestamp::now();
            let first = sm.ensure(&op, now).await.unwrap();
            let later = now + SignedDuration::from_hours(24 * 75);
            let renewed = sm.ensure(&op, later).await.unwrap();
            assert_ne!(first.cert_pem, renewed.cert_pem, "renewed (replaced) as the operator");
            agentid::audit::keys::load_or_create(op.clone(), OPERATOR_NS, "agentid-audit-key").await.unwrap();
            agentid::audit::keys::load_or_create(op.clone(), OPERATOR_NS, "agentid-audit-key").await.unwrap();

            // 3. What a stolen operator token cannot do with Secrets.
            let op_secrets: Api<Secret> = Api::namespaced(op.clone(), &ns);
            let pp = PostParams::default();
            // A long-lived ServiceAccount token for the token controller to fill in.
            refused_by_policy(
                op_secrets.create(&pp, &secret(&ns, "steal", "kubernetes.io/service-account-token", false)).await,
                "service-account-token Secret",
            );
            // A Secret with data, or one posing as an anchor but carrying data or no owner.
            refused_by_policy(op_secrets.create(&pp, &secret(&ns, "plant", "Opaque", true)).await, "Opaque Secret");
            refused_by_policy(
                op_secrets.create(&pp, &secret(&ns, "agentid-task-x", "agentid.dev/task-anchor", true)).await,
                "anchor with data",
            );
            refused_by_policy(
                op_secrets.create(&pp, &secret(&ns, "agentid-task-y", "agentid.dev/task-anchor", false)).await,
                "anchor without labels or owner",
            );
            // Its own names, in another namespace or of another type.
            refused_by_policy(
                op_secrets.create(&pp, &secret(&ns, "agentid-webhook-tls", "kubernetes.io/tls", true)).await,
                "certificate Secret outside the operator namespace",
            );
            // Deleting or replacing a Secret that is not an anchor (RBAC or the policy refuses).
            secrets.create(&pp, &secret(&ns, "victim", "Opaque", true)).await.unwrap();
            refused_by_policy(op_secrets.delete("victim", &DeleteParams::default()).await, "delete a Secret");
            let _ = own.create(&pp, &secret(OPERATOR_NS, "threat-client-ca", "Opaque", true)).await;
            let op_own: Api<Secret> = Api::namespaced(op.clone(), OPERATOR_NS);
            refused(
                op_own.patch("threat-client-ca", &PatchParams::default(), &Patch::Merge(json!({"data": {"k": "eA=="}}))).await,
                "patch another Secret in the operator namespace",
            );
            let mut other = own.get("threat-client-ca").await.unwrap();
            other.data = Some([("k".to_string(), k8s_openapi::ByteString(b"x".to_vec()))].into());
            refused(op_own.replace("threat-client-ca", &pp, &other).await, "replace another Secret");
        })
        .await;

        // The cluster-scoped objects go, also when the body failed.
        let dp = DeleteParams::default();
        for policy in [POLICY, TOKEN_POLICY] {
            let _ = kubectl(&["delete", "--ignore-not-found", "validatingadmissionpolicybinding", policy]);
            let _ = kubectl(&["delete", "--ignore-not-found", "validatingadmissionpolicy", policy]);
        }
        let _ = Api::<ClusterRoleBinding>::all(env.client.clone()).delete("agentid-operator", &dp).await;
        let _ = Api::<ClusterRole>::all(env.client.clone()).delete("agentid-operator", &dp).await;
        if let Err(e) = outcome {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}
