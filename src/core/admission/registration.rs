//! The ValidatingWebhookConfiguration agentid keeps in the cluster: one webhook
//! per enforcement mode, each scoped by namespace label, so the mode comes from
//! the URL path and the handler needs no namespace cache.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MatchCondition, MatchResources, NamedRuleWithOperations, RuleWithOperations, ServiceReference,
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding, ValidatingAdmissionPolicyBindingSpec,
    ValidatingAdmissionPolicySpec, ValidatingWebhook, ValidatingWebhookConfiguration, Validation, Variable,
    WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement, ObjectMeta};

use super::verdict::{ENFORCEMENT_LABEL, Enforcement};
use crate::api::{MANAGED_BY, MANAGED_BY_LABEL};

/// Namespaces agentid never judges, whatever their labels.
pub const SYSTEM_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

/// Where the apiserver reaches the webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A base URL such as `https://127.0.0.1:8443` (local control plane, no Service routing).
    Url(String),
    /// The operator's Service.
    Service { namespace: String, name: String, port: i32 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// Name of the ValidatingWebhookConfiguration.
    pub name: String,
    pub endpoint: Endpoint,
    /// PEM CA bundle that signs the serving certificate.
    pub ca_bundle: Vec<u8>,
    /// The operator's own namespace: never judged.
    pub operator_namespace: String,
    /// The operator's ServiceAccount username, whose requests are never judged.
    pub operator_user: Option<String>,
    /// Extra label every judged namespace must carry (to run several installs, or tests, side by side).
    pub scope: Option<(String, String)>,
    /// Judge only this namespace (a namespace-scoped install).
    pub only_namespace: Option<String>,
    pub timeout_seconds: i32,
    /// Groups whose members may lower or remove a namespace's enforcement label; `None` installs no
    /// such guard (see [`enforcement_guard_policy`]).
    pub enforcement_admins: Option<Vec<String>>,
}

/// Path of the ToolGrant escalation check.
pub const TOOLGRANT_PATH: &str = "/validate/toolgrants";
/// Path of the check of AgentIdentities, AgentTasks and agentid status writes.
pub const OBJECTS_PATH: &str = "/validate/agentid-objects";

/// Path of the workload webhook for a mode.
pub fn path(mode: Enforcement) -> String {
    format!("/validate/workloads/{mode}")
}

fn rule(group: &str, resources: &[&str], operations: &[&str]) -> RuleWithOperations {
    RuleWithOperations {
        api_groups: Some(vec![group.to_string()]),
        api_versions: Some(vec!["v1".to_string()]),
        operations: Some(operations.iter().map(|s| s.to_string()).collect()),
        resources: Some(resources.iter().map(|s| s.to_string()).collect()),
        scope: Some("Namespaced".to_string()),
    }
}

/// The desired ValidatingWebhookConfiguration.
fn client_config(reg: &Registration, path: String) -> WebhookClientConfig {
    match &reg.endpoint {
        Endpoint::Url(base) => WebhookClientConfig {
            url: Some(format!("{}{path}", base.trim_end_matches('/'))),
            ca_bundle: Some(ByteString(reg.ca_bundle.clone())),
            service: None,
        },
        Endpoint::Service { namespace, name, port } => WebhookClientConfig {
            url: None,
            ca_bundle: Some(ByteString(reg.ca_bundle.clone())),
            service: Some(ServiceReference {
                namespace: namespace.clone(),
                name: name.clone(),
                path: Some(path),
                port: Some(*port),
            }),
        },
    }
}

fn only_namespace(reg: &Registration) -> Option<LabelSelectorRequirement> {
    reg.only_namespace.as_ref().map(|ns| LabelSelectorRequirement {
        key: "kubernetes.io/metadata.name".to_string(),
        operator: "In".to_string(),
        values: Some(vec![ns.clone()]),
    })
}

fn operator_condition(reg: &Registration) -> Option<MatchCondition> {
    reg.operator_user.as_ref().map(|user| MatchCondition {
        name: "not-agentid-itself".into(),
        expression: format!("request.userInfo.username != '{user}'"),
    })
}

/// The ToolGrant escalation check: every namespace, failing closed, since a
/// grant that skipped it could hand out permissions its author lacks.
fn toolgrant_webhook(reg: &Registration) -> ValidatingWebhook {
    ValidatingWebhook {
        name: "toolgrants.agentid.dev".into(),
        admission_review_versions: vec!["v1".into()],
        client_config: client_config(reg, TOOLGRANT_PATH.to_string()),
        failure_policy: Some("Fail".into()),
        match_policy: Some("Equivalent".into()),
        namespace_selector: Some(LabelSelector {
            match_labels: reg.scope.as_ref().map(|(k, v)| BTreeMap::from([(k.clone(), v.clone())])),
            match_expressions: Some(only_namespace(reg).into_iter().collect()),
        }),
        object_selector: None,
        match_conditions: operator_condition(reg).map(|c| vec![c]),
        rules: Some(vec![RuleWithOperations {
            api_groups: Some(vec![crate::api::GROUP.to_string()]),
            api_versions: Some(vec!["*".to_string()]),
            operations: Some(vec!["CREATE".into(), "UPDATE".into()]),
            resources: Some(vec!["toolgrants".into()]),
            scope: Some("Namespaced".into()),
        }]),
        side_effects: "None".into(),
        timeout_seconds: Some(reg.timeout_seconds),
    }
}

/// AgentIdentities, AgentTasks and the status of every agentid kind: agents never write them, and an
/// AgentIdentity names no ServiceAccount in use ([`super::identities`]). Fails closed like the ToolGrant check.
fn objects_webhook(reg: &Registration) -> ValidatingWebhook {
    ValidatingWebhook {
        name: "objects.agentid.dev".into(),
        client_config: client_config(reg, OBJECTS_PATH.to_string()),
        rules: Some(vec![RuleWithOperations {
            api_groups: Some(vec![crate::api::GROUP.to_string()]),
            api_versions: Some(vec!["*".to_string()]),
            operations: Some(vec!["CREATE".into(), "UPDATE".into()]),
            resources: Some(vec![
                "agentidentities".into(),
                "agentidentities/status".into(),
                "agenttasks".into(),
                "agenttasks/status".into(),
                "toolgrants/status".into(),
            ]),
            scope: Some("Namespaced".into()),
        }]),
        ..toolgrant_webhook(reg)
    }
}

pub fn desired(reg: &Registration) -> ValidatingWebhookConfiguration {
    let mut webhooks: Vec<ValidatingWebhook> = Enforcement::ALL
        .into_iter()
        .map(|mode| {
            let client_config = client_config(reg, path(mode));
            let mut excluded: Vec<String> = SYSTEM_NAMESPACES.iter().map(|s| s.to_string()).collect();
            excluded.push(reg.operator_namespace.clone());
            let mut expressions = vec![
                LabelSelectorRequirement {
                    key: ENFORCEMENT_LABEL.to_string(),
                    operator: "In".to_string(),
                    values: Some(vec![mode.as_str().to_string()]),
                },
                LabelSelectorRequirement {
                    key: "kubernetes.io/metadata.name".to_string(),
                    operator: "NotIn".to_string(),
                    values: Some(excluded),
                },
            ];
            expressions.extend(only_namespace(reg));
            let namespace_selector = LabelSelector {
                match_labels: reg.scope.as_ref().map(|(k, v)| BTreeMap::from([(k.clone(), v.clone())])),
                match_expressions: Some(expressions),
            };
            ValidatingWebhook {
                name: format!("{mode}.workloads.agentid.dev"),
                admission_review_versions: vec!["v1".into()],
                client_config,
                // A down webhook must not let unjudged workloads into enforced
                // namespaces; warn and audit allow anyway, so they fail open.
                failure_policy: Some(if mode == Enforcement::Enforce { "Fail" } else { "Ignore" }.into()),
                match_policy: Some("Equivalent".into()),
                namespace_selector: Some(namespace_selector),
                object_selector: None,
                // No matchConditions: the rules already name only CREATE and UPDATE, and agentid never
                // writes workloads. A condition would make the apiserver convert the whole object for CEL
                // on every request (what a ValidatingAdmissionPolicy costs) before it even calls the webhook.
                match_conditions: None,
                rules: Some(vec![
                    rule("", &["pods", "replicationcontrollers"], &["CREATE", "UPDATE"]),
                    rule("", &["pods/ephemeralcontainers"], &["UPDATE"]),
                    rule("apps", &["deployments", "replicasets", "statefulsets", "daemonsets"], &["CREATE", "UPDATE"]),
                    rule("batch", &["jobs", "cronjobs"], &["CREATE", "UPDATE"]),
                ]),
                side_effects: "None".into(),
                timeout_seconds: Some(reg.timeout_seconds),
            }
        })
        .collect();
    webhooks.push(toolgrant_webhook(reg));
    webhooks.push(objects_webhook(reg));
    ValidatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(reg.name.clone()),
            labels: Some(BTreeMap::from([(MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string())])),
            ..Default::default()
        },
        webhooks: Some(webhooks),
    }
}

/// A ValidatingAdmissionPolicy on Namespaces (CREATE/UPDATE as `operations` say) with one validation,
/// failing closed, and the binding that makes it deny. Enforced by the apiserver itself, so it works
/// whether or not agentid is up.
fn namespace_policy(
    name: String,
    operations: &[&str],
    variables: Option<Vec<Variable>>,
    validation: Validation,
) -> (ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding) {
    let labels = Some(BTreeMap::from([(MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string())]));
    let policy = ValidatingAdmissionPolicy {
        metadata: ObjectMeta { name: Some(name.clone()), labels: labels.clone(), ..Default::default() },
        spec: Some(ValidatingAdmissionPolicySpec {
            failure_policy: Some("Fail".into()),
            match_constraints: Some(MatchResources {
                resource_rules: Some(vec![NamedRuleWithOperations {
                    api_groups: Some(vec![String::new()]),
                    api_versions: Some(vec!["v1".into()]),
                    operations: Some(operations.iter().map(|o| o.to_string()).collect()),
                    resources: Some(vec!["namespaces".into()]),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            variables,
            validations: Some(vec![validation]),
            ..Default::default()
        }),
        status: None,
    };
    let binding = ValidatingAdmissionPolicyBinding {
        metadata: ObjectMeta { name: Some(name.clone()), labels, ..Default::default() },
        spec: ValidatingAdmissionPolicyBindingSpec {
            policy_name: name,
            validation_actions: vec!["Deny".into()],
            ..Default::default()
        },
    };
    (policy, binding)
}

/// The ValidatingAdmissionPolicy (and its binding) that refuses a misspelled enforcement label on a
/// Namespace: `agentid.dev/enforcement: Enforce` would otherwise silently mean "not judged".
pub fn enforcement_label_policy(reg: &Registration) -> (ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding) {
    let modes: Vec<String> = Enforcement::ALL.iter().map(|m| format!("'{m}'")).collect();
    let validation = Validation {
        expression: format!(
            "!has(object.metadata.labels) || !('{ENFORCEMENT_LABEL}' in object.metadata.labels) || object.metadata.labels['{ENFORCEMENT_LABEL}'] in [{}]",
            modes.join(", ")
        ),
        message: Some(format!(
            "label {ENFORCEMENT_LABEL} must be enforce, warn or audit (agentid would not judge this namespace)"
        )),
        reason: Some("Invalid".into()),
        ..Default::default()
    };
    namespace_policy(format!("{}-enforcement-label", reg.name), &["CREATE", "UPDATE"], None, validation)
}

/// The ValidatingAdmissionPolicy (and binding) that lets only members of `admins` lower or remove a
/// namespace's enforcement label (enforce > warn > audit > none): otherwise anyone who may edit a
/// namespace could switch its admission off. Raising the mode stays open to every namespace editor.
/// `None` when the registration asks for no guard.
pub fn enforcement_guard_policy(
    reg: &Registration,
) -> Option<(ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding)> {
    let admins = reg.enforcement_admins.as_ref()?;
    let mode_of = |obj: &str| {
        format!(
            "has({obj}.metadata.labels) && '{ENFORCEMENT_LABEL}' in {obj}.metadata.labels ? {obj}.metadata.labels['{ENFORCEMENT_LABEL}'] : ''"
        )
    };
    let rank = |var: &str| {
        format!(
            "variables.{var} == 'enforce' ? 3 : (variables.{var} == 'warn' ? 2 : (variables.{var} == 'audit' ? 1 : 0))"
        )
    };
    let quoted: Vec<String> =
        admins.iter().map(|g| format!("'{}'", g.replace('\\', "\\\\").replace('\'', "\\'"))).collect();
    let variable = |name: &str, expression: String| Variable { name: name.into(), expression };
    let variables = vec![
        variable("oldMode", mode_of("oldObject")),
        variable("newMode", mode_of("object")),
        variable("oldRank", rank("oldMode")),
        variable("newRank", rank("newMode")),
    ];
    let validation = Validation {
        expression: format!(
            "variables.newRank >= variables.oldRank || (has(request.userInfo.groups) && request.userInfo.groups.exists(g, g in [{}]))",
            quoted.join(", ")
        ),
        message_expression: Some(format!(
            "'lowering or removing the label {ENFORCEMENT_LABEL} (from ' + variables.oldMode + ') is reserved to the groups {}: ask the platform team'",
            admins.join(", ").replace('\'', "")
        )),
        reason: Some("Forbidden".into()),
        ..Default::default()
    };
    Some(namespace_policy(format!("{}-enforcement-guard", reg.name), &["UPDATE"], Some(variables), validation))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(endpoint: Endpoint) -> Registration {
        Registration {
            name: "agentid".into(),
            endpoint,
            ca_bundle: b"PEM".to_vec(),
            operator_namespace: "agentid-system".into(),
            operator_user: Some("system:serviceaccount:agentid-system:agentid".into()),
            scope: None,
            only_namespace: None,
            timeout_seconds: 5,
            enforcement_admins: Some(vec!["system:masters".into(), "platform".into()]),
        }
    }

    #[test]
    fn one_webhook_per_mode_scoped_by_label_and_never_system_namespaces() {
        let vwc = desired(&reg(Endpoint::Url("https://127.0.0.1:8443/".into())));
        let hooks = vwc.webhooks.unwrap();
        assert_eq!(hooks.len(), 5);
        let objects = &hooks[4];
        assert_eq!(objects.name, "objects.agentid.dev");
        assert_eq!(objects.failure_policy.as_deref(), Some("Fail"));
        let res = objects.rules.as_ref().unwrap()[0].resources.clone().unwrap();
        for r in ["agentidentities", "agentidentities/status", "agenttasks", "agenttasks/status", "toolgrants/status"] {
            assert!(res.contains(&r.to_string()), "{r}");
        }
        let grants = &hooks[3];
        assert_eq!(grants.name, "toolgrants.agentid.dev");
        assert_eq!(grants.failure_policy.as_deref(), Some("Fail"));
        assert_eq!(grants.client_config.url.as_deref(), Some("https://127.0.0.1:8443/validate/toolgrants"));
        for (hook, mode) in hooks.iter().zip(Enforcement::ALL) {
            assert_eq!(
                hook.client_config.url.as_deref(),
                Some(format!("https://127.0.0.1:8443/validate/workloads/{mode}").as_str())
            );
            let exprs = hook.namespace_selector.as_ref().unwrap().match_expressions.as_ref().unwrap();
            assert_eq!(exprs[0].values.as_ref().unwrap(), &vec![mode.as_str().to_string()]);
            let excluded = exprs[1].values.as_ref().unwrap();
            for ns in ["kube-system", "kube-public", "kube-node-lease", "agentid-system"] {
                assert!(excluded.contains(&ns.to_string()));
            }
            assert_eq!(hook.timeout_seconds, Some(5));
            assert_eq!(hook.side_effects, "None");
            // The hot path: no CEL in the apiserver before the call (its rules admit no DELETE).
            assert_eq!(hook.match_conditions, None, "{}", hook.name);
            for rule in hook.rules.as_ref().unwrap() {
                for op in rule.operations.as_ref().unwrap() {
                    assert!(op == "CREATE" || op == "UPDATE", "{op}");
                }
            }
        }
        // agentid's own status writes skip the checks of its own kinds.
        for hook in &hooks[3..] {
            let conditions = hook.match_conditions.as_ref().unwrap();
            assert_eq!(
                conditions[0].expression,
                "request.userInfo.username != 'system:serviceaccount:agentid-system:agentid'"
            );
        }
        assert_eq!(hooks[0].failure_policy.as_deref(), Some("Fail"));
        assert_eq!(hooks[1].failure_policy.as_deref(), Some("Ignore"));
        let resources: Vec<String> =
            hooks[0].rules.as_ref().unwrap().iter().flat_map(|r| r.resources.clone().unwrap()).collect();
        for r in [
            "pods",
            "replicationcontrollers",
            "pods/ephemeralcontainers",
            "deployments",
            "replicasets",
            "statefulsets",
            "daemonsets",
            "jobs",
            "cronjobs",
        ] {
            assert!(resources.contains(&r.to_string()), "{r}");
        }
    }

    #[test]
    fn service_endpoint_and_scope() {
        let mut r = reg(Endpoint::Service { namespace: "agentid-system".into(), name: "agentid".into(), port: 443 });
        r.scope = Some(("agentid.dev/test".into(), "a".into()));
        let vwc = desired(&r);
        let hook = &vwc.webhooks.as_ref().unwrap()[1];
        let svc = hook.client_config.service.as_ref().unwrap();
        assert_eq!(svc.path.as_deref(), Some("/validate/workloads/warn"));
        assert!(hook.client_config.url.is_none());
        assert_eq!(hook.namespace_selector.as_ref().unwrap().match_labels.as_ref().unwrap()["agentid.dev/test"], "a");
    }

    #[test]
    fn the_enforcement_guard_names_its_admin_groups() {
        let r = reg(Endpoint::Url("https://127.0.0.1:8443".into()));
        let (policy, binding) = enforcement_guard_policy(&r).unwrap();
        let spec = policy.spec.unwrap();
        let v = &spec.validations.unwrap()[0];
        assert!(v.expression.contains("g in ['system:masters', 'platform']"), "{}", v.expression);
        assert_eq!(spec.variables.unwrap().len(), 4);
        assert_eq!(binding.spec.policy_name, "agentid-enforcement-guard");
        assert!(enforcement_guard_policy(&Registration { enforcement_admins: None, ..r }).is_none());
    }
}
