use super::*;
use crate::core::audit::record::{Event, Stamp};

fn from_yaml<T: serde::de::DeserializeOwned>(y: &str) -> T {
    serde_norway::from_str(y).unwrap()
}

fn inventory() -> Inventory {
    Inventory {
        agents: vec![
            from_yaml(
                "apiVersion: agentid.dev/v1alpha1\nkind: AgentIdentity\nmetadata: {name: billing, namespace: shop}\nspec: {owner: '<script>alert(1)</script>', audiences: [a]}",
            ),
            from_yaml(
                "apiVersion: agentid.dev/v1alpha1\nkind: AgentIdentity\nmetadata: {name: idle, namespace: shop}\nspec: {owner: team-idle, audiences: [a]}",
            ),
        ],
        grants: vec![
            from_yaml(
                "apiVersion: agentid.dev/v1alpha1\nkind: ToolGrant\nmetadata: {name: crm, namespace: shop}\nspec:\n  agentRef: {name: billing}\n  validUntil: '2030-01-01T00:00:00Z'\n  tools:\n  - {name: crm, actions: [read, write], destinations: ['https://crm.internal/api/', 'https://crm.internal/admin/'], maxDataSensitivity: internal}\n  - {name: mail, actions: [send], destinations: ['https://mail.internal/'], maxDataSensitivity: internal}\n  kubernetesRules:\n  - {apiGroups: [''], resources: [secrets], verbs: [get, list, delete]}",
            ),
            from_yaml(
                "apiVersion: agentid.dev/v1alpha1\nkind: ToolGrant\nmetadata: {name: payments, namespace: shop}\nspec:\n  agentRef: {name: billing}\n  tools:\n  - {name: payments, actions: [refund], destinations: ['https://pay.internal/'], maxDataSensitivity: confidential}",
            ),
        ],
        tasks: vec![from_yaml(
            "apiVersion: agentid.dev/v1alpha1\nkind: AgentTask\nmetadata: {name: t-old, namespace: shop}\nspec: {agentRef: {name: billing}, purpose: p, audiences: [a], ttl: 10m}\nstatus: {phase: Expired}",
        )],
        namespaces: vec![
            ("shop".into(), Some("enforce".into())),
            ("legacy".into(), Some("audit".into())),
            ("wild".into(), None),
        ],
    }
}

fn rec(kind: Kind, f: impl FnOnce(&mut Event)) -> Record {
    let mut e = Event::new(kind);
    e.namespace = Some("shop".into());
    e.agent = Some("billing".into());
    f(&mut e);
    let stamp = Stamp {
        chain: "c".into(),
        seq: 0,
        prev: String::new(),
        id: "i".into(),
        time: "2026-11-01T00:00:00.000000Z".into(),
        replica: "r".into(),
    };
    Record::new(stamp, e)
}

fn usage() -> Usage {
    let mut u = Usage::default();
    for dest in ["https://crm.internal/api/accounts/1", "https://crm.internal/api/accounts/2"] {
        u.add(&rec(Kind::Decision, |e| {
            e.decision = Some("allow".into());
            e.grant = Some("crm".into());
            e.tool = Some("crm".into());
            e.action = Some("read".into());
            e.destination = Some(dest.into());
        }));
    }
    u.add(&rec(Kind::Decision, |e| {
        e.decision = Some("deny".into());
        e.tool = Some("crm".into());
        e.reasons = vec!["destination-not-granted".into()];
    }));
    u.add(&rec(Kind::ApiCall, |e| {
        e.decision = Some("allow".into());
        e.grant = Some("crm".into());
        e.action = Some("get".into());
        e.destination = Some("/api/v1/namespaces/shop/secrets/db-creds".into());
    }));
    u.add(&rec(Kind::TaskTokenIssued, |_| {}));
    u.add(&rec(Kind::AdmissionDenied, |e| {
        e.agent = None;
        e.destination = Some("Deployment/web".into());
        e.reasons = vec!["static-secret-env".into()];
    }));
    u
}

#[test]
fn api_paths_parse_into_group_resource_and_name() {
    let a = |p: &str, v: &str| api_use(p, v).map(|a| (a.group, a.resource, a.name));
    assert_eq!(a("/api/v1/namespaces/ns/secrets/x", "get"), Some(("".into(), "secrets".into(), Some("x".into()))));
    assert_eq!(a("/api/v1/namespaces/ns/secrets", "list"), Some(("".into(), "secrets".into(), None)));
    assert_eq!(
        a("/apis/apps/v1/namespaces/ns/deployments/web/scale", "patch"),
        Some(("apps".into(), "deployments/scale".into(), Some("web".into())))
    );
    assert_eq!(a("/api/v1/nodes/n1", "get"), Some(("".into(), "nodes".into(), Some("n1".into()))));
    assert_eq!(a("/api/v1/namespaces/ns", "get"), Some(("".into(), "namespaces".into(), Some("ns".into()))));
    for bad in ["", "/", "/healthz", "/api", "/apis/apps", "/metrics/x/y"] {
        assert_eq!(api_use(bad, "get"), None, "{bad}");
    }
}

#[test]
fn unused_grants_tools_rbac_and_agents_are_found_and_a_narrower_grant_suggested() {
    let r = build(&inventory(), &usage(), Some("2026-10-01T00:00:00.000000Z".into()), "2026-11-30T00:00:00Z");
    let billing = r.agents.iter().find(|a| a.name == "billing").unwrap();
    let kinds = |a: &AgentReport| a.findings.iter().map(|f| (f.kind, f.subject.clone())).collect::<Vec<_>>();
    let k = kinds(billing);
    assert!(k.contains(&(FindingKind::UnusedGrant, "grant/payments".into())), "{k:?}");
    assert!(k.contains(&(FindingKind::GrantWithoutExpiry, "grant/payments".into())), "{k:?}");
    assert!(!k.contains(&(FindingKind::GrantWithoutExpiry, "grant/crm".into())), "crm has validUntil");
    assert!(k.contains(&(FindingKind::UnusedTool, "grant/crm".into())), "write and mail unused: {k:?}");
    assert!(k.contains(&(FindingKind::UnusedRbac, "grant/crm".into())), "{k:?}");
    assert!(k.contains(&(FindingKind::TaskNeverCompleted, "task/t-old".into())), "{k:?}");
    assert!(k.contains(&(FindingKind::Denials, "agent/billing".into())), "{k:?}");
    let rbac = billing.findings.iter().find(|f| f.kind == FindingKind::UnusedRbac).unwrap();
    assert!(
        rbac.detail.contains("core/secrets:list") && rbac.detail.contains("core/secrets:delete"),
        "{}",
        rbac.detail
    );
    assert!(!rbac.detail.contains("core/secrets:get"), "get was used: {}", rbac.detail);

    let crm = billing.grants.iter().find(|g| g.name == "crm").unwrap();
    assert_eq!(crm.used, vec!["core/secrets:get", "crm:read"]);
    assert_eq!(crm.calls, 3);
    let s = crm.suggested.as_ref().expect("a narrower crm grant");
    assert_eq!(s.tools.len(), 1, "mail was never called");
    assert_eq!(s.tools[0].actions, vec!["read"]);
    assert_eq!(s.tools[0].destinations, vec!["https://crm.internal/api/"], "the admin prefix was never used");
    assert_eq!(s.kubernetes_rules.len(), 1);
    assert_eq!(s.kubernetes_rules[0].verbs, vec!["get"]);
    assert_eq!(s.kubernetes_rules[0].resource_names.as_deref(), Some(&["db-creds".to_string()][..]));
    assert!(billing.grants.iter().find(|g| g.name == "payments").unwrap().suggested.is_none(), "revoke, not narrow");
    assert_eq!((billing.granted, billing.used), (7, 2));

    let idle = r.agents.iter().find(|a| a.name == "idle").unwrap();
    assert_eq!(kinds(idle), vec![(FindingKind::NeverUsedAgent, "agent/idle".into())]);

    let cluster: Vec<(FindingKind, String)> = r.findings.iter().map(|f| (f.kind, f.subject.clone())).collect();
    assert!(cluster.contains(&(FindingKind::WorkloadViolations, "shop/Deployment/web".into())));
    assert!(cluster.contains(&(FindingKind::NamespaceNotEnforced, "namespace/legacy".into())));
    assert!(cluster.contains(&(FindingKind::NamespaceNotEnforced, "namespace/wild".into())));
    assert!(!cluster.contains(&(FindingKind::NamespaceNotEnforced, "namespace/shop".into())));
    assert!(r.all_findings().all(|f| !f.tags.owasp_agentic.is_empty()));
}

#[test]
fn renderings_carry_the_findings_and_escape_what_users_wrote() {
    let r = build(&inventory(), &usage(), None, "2026-11-30T00:00:00Z");
    let text = render::text(&r);
    assert!(text.contains("unused-grant grant/payments") && text.contains("NHI5"), "{text}");
    assert!(text.contains("suggested narrower spec for grant crm"), "{text}");
    let md = render::markdown(&r);
    assert!(md.contains("| unused-grant | shop/billing | grant/payments |"), "{md}");
    let html = render::html(&r);
    assert!(!html.contains("<script>alert"), "owner text is escaped");
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert_eq!(html.matches("<script").count(), 2, "only the page's own two scripts");
    assert!(html.contains("data-kind=\"unused-grant\""));
    assert!(!html.contains(" src=") && !html.contains(" href="), "no external resources");
    let json = serde_json::to_value(&r).unwrap();
    assert!(json["agents"][0]["findings"][0]["tags"]["owasp_nhi"].is_array(), "{json}");
}

#[test]
fn script_data_cannot_close_its_element() {
    let mut inv = inventory();
    inv.agents[1].metadata.name = Some("x</script><img src=y>".into());
    let html = render::html(&build(&inv, &Usage::default(), None, "now"));
    let data = html.split("id=\"report-data\">").nth(1).unwrap().split("</script>").next().unwrap();
    assert!(data.contains("\\u003c/script>"), "{data}");
}

#[test]
fn a_namespace_report_holds_only_that_namespace() {
    let mut inv = inventory();
    let mut u = usage();
    u.add(&rec(Kind::AdmissionDenied, |e| {
        e.namespace = Some("legacy".into());
        e.agent = None;
        e.destination = Some("Pod/old".into());
        e.reasons = vec!["static-secret-env".into()];
    }));
    inv.retain_namespace("legacy");
    u.retain_namespace("legacy");
    let r = build(&inv, &u, None, "now");
    assert!(r.agents.is_empty());
    let subjects: Vec<&str> = r.findings.iter().map(|f| f.subject.as_str()).collect();
    assert_eq!(subjects, ["legacy/Pod/old", "namespace/legacy"]);
    assert_eq!(r.workloads.keys().collect::<Vec<_>>(), ["legacy/Pod/old"]);
}
