use k8s_openapi::api::rbac::v1::PolicyRule;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A narrow, expiring grant of tools to one agent. Tools that are Kubernetes
/// resources become RBAC that the apiserver itself enforces.
// printcolumn(...) repeats `type_ = ...` by design.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "agentid.dev",
    version = "v1alpha1",
    kind = "ToolGrant",
    plural = "toolgrants",
    singular = "toolgrant",
    shortname = "tg",
    category = "agentid",
    namespaced,
    status = "ToolGrantStatus",
    derive = "PartialEq",
    doc = "ToolGrant gives one agent narrow, expiring (just-in-time) tool scopes. kubernetesRules become a Role and RoleBinding for the agent's ServiceAccount while the grant is active.",
    printcolumn(
        name = "Agent",
        type_ = "string",
        json_path = ".spec.agentRef.name",
        description = "AgentIdentity the grant is for"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Pending, Active, Expired or Revoked"
    ),
    printcolumn(
        name = "Valid Until",
        // `date` columns show ages, and kubectl prints <invalid> for a time in the future.
        type_ = "string",
        json_path = ".spec.validUntil",
        description = "When the grant expires"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("!has(self.validFrom) || !has(self.validUntil) || timestamp(self.validUntil) > timestamp(self.validFrom)").message("validUntil must be after validFrom").field_path(".validUntil"))]
#[x_kube(validation = Rule::new("(has(self.tools) && size(self.tools) > 0) || (has(self.kubernetesRules) && size(self.kubernetesRules) > 0)").message("a ToolGrant must grant at least one tool or one kubernetesRule"))]
#[serde(rename_all = "camelCase")]
pub struct ToolGrantSpec {
    /// The AgentIdentity (in the same namespace) that receives the grant.
    pub agent_ref: AgentRef,

    /// Tools the agent may call, each with its actions, destinations and data sensitivity ceiling.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub tools: Vec<Tool>,

    /// RBAC rules for tools that are Kubernetes resources. They become a Role and RoleBinding for the
    /// agent's ServiceAccount while the grant is active. The creator must hold these permissions themselves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub kubernetes_rules: Vec<PolicyRule>,

    /// Human approval required before a high-risk tool call (step-up), evaluated by the decision API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,

    /// Start of the grant's validity (RFC 3339). Defaults to the grant's creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_from: Option<Time>,

    /// End of the grant's validity (RFC 3339). After it the grant is Expired and its RBAC is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<Time>,

    /// Rate and volume limits on the granted tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<GrantLimits>,

    /// Optional CEL condition over the call context (destination, sensitivity, approval state), evaluated by
    /// the decision API on every tool call. The grant applies only when it evaluates to true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub when: Option<String>,
}

/// Reference to an AgentIdentity in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct AgentRef {
    /// Name of the AgentIdentity.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// One tool the agent may call.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Tool {
    /// Name of the tool (for example `github.create_issue` or `payments-api`). Not empty.
    #[x_kube(validation = Rule::new("self.trim().size() > 0").message("tool names must not be empty"))]
    #[schemars(length(min = 1, max = 253))]
    pub name: String,

    /// Actions allowed on the tool (for example `read`, `create`). Empty means every action.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<String>,

    /// Where calls may go: URL prefixes (`https://api.github.com/repos/acme/`) or host globs (`*.internal.example.com`).
    /// Empty means no network destination.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destinations: Vec<String>,

    /// Most sensitive data the tool may touch.
    #[serde(default)]
    pub max_data_sensitivity: DataSensitivity,

    /// Risk of the tool; high-risk calls may need step-up approval.
    #[serde(default)]
    pub risk: Risk,
}

/// Data sensitivity levels, least to most sensitive.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DataSensitivity {
    #[default]
    Public,
    Internal,
    Confidential,
    Restricted,
}

/// Risk of a tool.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Risk {
    #[default]
    Low,
    High,
}

/// Step-up approval settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Approval {
    /// Whether a human must approve high-risk calls.
    #[serde(default)]
    pub required: bool,

    /// Who may approve.
    #[serde(default)]
    pub approvers: Approvers,

    /// How long an approval stays valid, as a duration string (for example `15m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(h|m|s|ms))+$')").message("ttl must be a duration such as 15m"))]
    pub ttl: Option<String>,
}

/// Users and groups that may approve.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
pub struct Approvers {
    /// User names (as the apiserver authenticates them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
    /// Group names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

/// Limits on the granted tools.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrantLimits {
    /// Maximum calls of the granted tools in one session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_calls_per_session: Option<i32>,
    /// Maximum calls of the granted tools per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub calls_per_minute: Option<i32>,
}

/// Lifecycle phase of a ToolGrant.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum GrantPhase {
    /// Not active yet: before validFrom, or its agent is missing.
    #[default]
    Pending,
    /// In force.
    Active,
    /// validUntil has passed.
    Expired,
    /// Withdrawn (its agent is suspended).
    Revoked,
}

/// Observed state of a ToolGrant.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ToolGrantStatus {
    /// Pending, Active, Expired or Revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<GrantPhase>,

    /// Conditions: `Ready` (the grant's RBAC matches its phase).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
