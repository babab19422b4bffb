//! Foundation, on the real kube-apiserver: schema validation by the apiserver,
//! and the first slice of the AgentIdentity controller.
#![cfg(feature = "e2e")]

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Api;
use kube::api::{ApiResource, DeleteParams, DynamicObject, PostParams};
use support::*;

use agentid::api::{AgentIdentity, SPIFFE_ID_ANNOTATION, ToolGrant};
use agentid::core::conditions;

fn agent_yaml(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: agentid.dev/v1alpha1\nkind: AgentIdentity\nmetadata: {{name: {name}}}\nspec:\n  owner: team-payments\n  audiences: [https://tools.example.com]\n{extra}"
    )
}

async fn create_err<K>(api: &Api<K>, obj: &K) -> String
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => panic!("the apiserver accepted an invalid object: {obj:?}"),
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 422, "{s:?}");
            s.message
        }
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[tokio::test]
async fn apiserver_refuses_invalid_objects_with_clear_messages() {
    let env = env("validation").await;
    let agents: Api<AgentIdentity> = Api::namespaced(env.client.clone(), &env.ns);
    let grants: Api<ToolGrant> = Api::namespaced(env.client.clone(), &env.ns);

    let msg = create_err(&agents, &from_yaml(&agent_yaml("short-ttl", "  tokenTTL: 5m\n"))).await;
    assert!(msg.contains("spec.tokenTTL") && msg.contains("between 10m and 1h"), "{msg}");

    let msg = create_err(&agents, &from_yaml(&agent_yaml("long-ttl", "  tokenTTL: 2h\n"))).await;
    assert!(msg.contains("spec.tokenTTL"), "{msg}");

    let no_audiences: AgentIdentity = from_yaml(
        "apiVersion: agentid.dev/v1alpha1\nkind: AgentIdentity\nmetadata: {name: no-aud}\nspec: {owner: x, audiences: []}",
    );
    let msg = create_err(&agents, &no_audiences).await;
    assert!(msg.contains("spec.audiences") && msg.contains("at least 1"), "{msg}");

    let msg = create_err(&agents, &from_yaml(&agent_yaml("blank-owner", "").replace("team-payments", "'  '"))).await;
    assert!(msg.contains("spec.owner") && msg.contains("accountable"), "{msg}");

    let backwards: ToolGrant = from_yaml(
        "apiVersion: agentid.dev/v1alpha1\nkind: ToolGrant\nmetadata: {name: backwards}\nspec:\n  agentRef: {name: a}\n  tools: [{name: github}]\n  validFrom: '2030-01-02T00:00:00Z'\n  validUntil: '2030-01-01T00:00:00Z'\n",
    );
    let msg = create_err(&grants, &backwards).await;
    assert!(msg.contains("spec.validUntil") && msg.contains("validUntil must be after validFrom"), "{msg}");

    let empty_tool: ToolGrant = from_yaml(
        "apiVersion: agentid.dev/v1alpha1\nkind: ToolGrant\nmetadata: {name: empty}\nspec:\n  agentRef: {name: a}\n  tools: [{name: '   '}]\n",
    );
    let msg = create_err(&grants, &empty_tool).await;
    assert!(msg.contains("spec.tools[0].name") && msg.contains("tool names must not be empty"), "{msg}");

    // A value the Rust enum cannot hold: send it untyped.
    let ar = ApiResource::erase::<ToolGrant>(&());
    let raw: Api<DynamicObject> = Api::namespaced_with(env.client.clone(), &env.ns, &ar);
    let bad_enum: DynamicObject = from_yaml(
        "apiVersion: agentid.dev/v1alpha1\nkind: ToolGrant\nmetadata: {name: badenum}\nspec:\n  agentRef: {name: a}\n  tools: [{name: x, maxDataSensitivity: secret}]\n",
    );
    let msg = create_err(&raw, &bad_enum).await;
    assert!(msg.contains("maxDataSensitivity") && msg.contains("restricted"), "{msg}");

    // And a valid one is accepted, with defaults filled in by the apiserver.
    let mut ok = agents.create(&PostParams::default(), &from_yaml(&agent_yaml("ok", ""))).await.unwrap();
    assert_eq!(ok.spec.token_ttl, "10m");

    // The ServiceAccount of an agent cannot be swapped afterwards.
    ok.spec.service_account_name = Some("someone-else".into());
    let msg = match agents.replace("ok", &PostParams::default(), &ok).await {
        Err(kube::Error::Api(s)) => s.message,
        other => panic!("serviceAccountName change was accepted: {other:?}"),
    };
    assert!(msg.contains("serviceAccountName is immutable"), "{msg}");
}

#[tokio::test]
async fn agent_identity_gets_a_dedicated_service_account() {
    let env = env("identity").await;
    let _op = start_operator(&env.client, operator_config(&env.ns));
    let agents: Api<AgentIdentity> = Api::namespaced(env.client.clone(), &env.ns);
    let sas: Api<ServiceAccount> = Api::namespaced(env.client.clone(), &env.ns);
    agents.create(&PostParams::default(), &from_yaml(&agent_yaml("billing", ""))).await.unwrap();

    let agent = wait_until(Duration::from_secs(30), "agent Ready", || async {
        let a = agents.get("billing").await.ok()?;
        conditions::is_true(&a.status.as_ref()?.conditions, "Ready").then_some(a)
    })
    .await;
    let want = format!("spiffe://cluster.local/ns/{}/agent/billing", env.ns);
    let status = agent.status.unwrap();
    assert_eq!(status.spiffe_id.as_deref(), Some(want.as_str()));
    assert_eq!(status.service_account_name.as_deref(), Some("agent-billing"));
    assert_eq!(status.observed_generation, agent.metadata.generation);

    let sa = sas.get("agent-billing").await.unwrap();
    assert_eq!(sa.metadata.annotations.unwrap()[SPIFFE_ID_ANNOTATION], want);
    assert_eq!(sa.metadata.labels.unwrap()["agentid.dev/agent"], "billing");
    assert_eq!(sa.automount_service_account_token, Some(false));
    let owner = &sa.metadata.owner_references.unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("AgentIdentity", agent.metadata.uid.as_deref().unwrap()));

    // Drift is repaired.
    let mut drifted = sas.get("agent-billing").await.unwrap();
    drifted.automount_service_account_token = Some(true);
    sas.replace("agent-billing", &PostParams::default(), &drifted).await.unwrap();
    wait_until(Duration::from_secs(30), "drift repaired", || async {
        (sas.get("agent-billing").await.ok()?.automount_service_account_token == Some(false)).then_some(())
    })
    .await;

    // Deleting the agent removes its ServiceAccount (no garbage collector here: the finalizer does it).
    agents.delete("billing", &DeleteParams::default()).await.unwrap();
    wait_until(Duration::from_secs(30), "agent and its ServiceAccount gone", || async {
        (agents.get_opt("billing").await.ok()?.is_none() && sas.get_opt("agent-billing").await.ok()?.is_none())
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn foreign_service_account_is_never_modified() {
    let env = env("conflict").await;
    let sas: Api<ServiceAccount> = Api::namespaced(env.client.clone(), &env.ns);
    let foreign: ServiceAccount =
        from_yaml("metadata: {name: agent-payroll, labels: {team: hr}}\nautomountServiceAccountToken: true\n");
    let foreign = sas.create(&PostParams::default(), &foreign).await.unwrap();

    let _op = start_operator(&env.client, operator_config(&env.ns));
    let agents: Api<AgentIdentity> = Api::namespaced(env.client.clone(), &env.ns);
    agents.create(&PostParams::default(), &from_yaml(&agent_yaml("payroll", ""))).await.unwrap();

    let ready = wait_until(Duration::from_secs(30), "Ready=False ServiceAccountConflict", || async {
        let a = agents.get("payroll").await.ok()?;
        let c = conditions::get(&a.status?.conditions, "Ready")?.clone();
        (c.reason == "ServiceAccountConflict").then_some(c)
    })
    .await;
    assert_eq!(ready.status, "False");
    assert!(ready.message.contains("agent-payroll"), "{}", ready.message);

    let after = sas.get("agent-payroll").await.unwrap();
    assert_eq!(after.metadata.resource_version, foreign.metadata.resource_version, "foreign SA was modified");

    // A conflicting agent stalls no other agent.
    agents.create(&PostParams::default(), &from_yaml(&agent_yaml("billing", ""))).await.unwrap();
    wait_until(Duration::from_secs(30), "the other agent Ready", || async {
        let a = agents.get("billing").await.ok()?;
        conditions::is_true(&a.status?.conditions, "Ready").then_some(())
    })
    .await;

    // Deleting the agent leaves the foreign ServiceAccount alone.
    agents.delete("payroll", &DeleteParams::default()).await.unwrap();
    wait_until(Duration::from_secs(30), "agent gone", || async {
        agents.get_opt("payroll").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(sas.get_opt("agent-payroll").await.unwrap().is_some(), "foreign SA was deleted");
}
