use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Default token lifetime, as a duration string.
pub const DEFAULT_TOKEN_TTL: &str = "10m";
/// Shortest token lifetime allowed (the apiserver's own TokenRequest minimum).
pub const MIN_TOKEN_TTL_SECS: u64 = 600;
/// Longest token lifetime allowed.
pub const MAX_TOKEN_TTL_SECS: u64 = 3600;

/// The identity of one AI agent: a dedicated ServiceAccount, a SPIFFE ID,
/// short-lived audience-bound tokens, an accountable owner and a kill switch.
// printcolumn(...) repeats `type_ = ...` by design.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "agentid.dev",
    version = "v1alpha1",
    kind = "AgentIdentity",
    plural = "agentidentities",
    singular = "agentidentity",
    shortname = "agi",
    category = "agentid",
    namespaced,
    status = "AgentIdentityStatus",
    derive = "PartialEq",
    doc = "AgentIdentity gives one AI agent its own Kubernetes identity: a dedicated ServiceAccount, a SPIFFE ID, short-lived audience-bound tokens, an accountable owner and a kill switch.",
    printcolumn(
        name = "Owner",
        type_ = "string",
        json_path = ".spec.owner",
        description = "Accountable team or person"
    ),
    printcolumn(
        name = "SPIFFE ID",
        type_ = "string",
        json_path = ".status.spiffeID",
        description = "SPIFFE ID of the agent"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the agent's identity is in place"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("has(self.serviceAccountName) == has(oldSelf.serviceAccountName) && (!has(self.serviceAccountName) || self.serviceAccountName == oldSelf.serviceAccountName)").message("serviceAccountName is immutable: create a new AgentIdentity for another ServiceAccount").field_path(".serviceAccountName"))]
#[serde(rename_all = "camelCase")]
pub struct AgentIdentitySpec {
    /// The team or person accountable for this agent (for example `team-payments` or `alice@example.com`).
    #[x_kube(validation = Rule::new("self.trim().size() > 0").message("owner must name an accountable team or person"))]
    #[schemars(length(min = 1, max = 253))]
    pub owner: String,

    /// What the agent does, for the humans who review it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,

    /// Name of the dedicated ServiceAccount to create. Defaults to `agent-<name>`.
    /// agentid never takes over a ServiceAccount it did not create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("serviceAccountName must be a DNS subdomain name (lower case letters, digits, '-' and '.')"))]
    #[schemars(length(min = 1, max = 253))]
    pub service_account_name: Option<String>,

    /// Audiences the agent's tokens are bound to (for example the URLs of the tools it calls). At least one.
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = Rule::new("self.all(a, a.size() > 0)").message("audiences must not contain empty strings"))]
    pub audiences: Vec<String>,

    /// Lifetime of each token issued to the agent, as a duration string (for example `10m`, `30m`, `1h`).
    /// Between 10m (the apiserver's minimum) and 1h. Defaults to 10m.
    #[serde(default = "default_token_ttl")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(h|m|s|ms))+$') && duration(self) >= duration('10m') && duration(self) <= duration('1h')").message("tokenTTL must be a duration between 10m and 1h, for example 10m or 30m"))]
    #[serde(rename = "tokenTTL")]
    pub token_ttl: String,

    /// Overrides the operator's SPIFFE trust domain for this agent (for example `prod.example.com`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9._]*[a-z0-9])?$')").message("trustDomain must be lower case letters, digits, '.', '-' and '_'"))]
    #[schemars(length(min = 1, max = 255))]
    pub trust_domain: Option<String>,

    /// Kill switch: while true, every credential of the agent is revoked and its grants are withdrawn.
    #[serde(default)]
    pub suspended: bool,

    /// How far the agent may delegate its authority to other agents.
    #[serde(default)]
    pub delegation: Delegation,

    /// Limits on a single session of the agent, enforced by the decision API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_limits: Option<SessionLimits>,
}

fn default_token_ttl() -> String {
    DEFAULT_TOKEN_TTL.to_string()
}

/// Delegation policy of an agent.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Delegation {
    /// Maximum length of a delegation chain starting at this agent (0 = no delegation). 0 to 5.
    #[serde(default)]
    #[schemars(range(min = 0, max = 5))]
    pub max_depth: i32,

    /// Names of AgentIdentities in the same namespace that this agent may delegate to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_delegates: Vec<String>,
}

/// Limits on one session of an agent.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SessionLimits {
    /// Maximum number of tool calls in one session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_tool_calls: Option<i32>,

    /// Maximum wall-clock length of one session, as a duration string (for example `30m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(h|m|s|ms))+$')").message("maxDuration must be a duration such as 30m or 1h"))]
    pub max_duration: Option<String>,
}

/// Observed state of an AgentIdentity.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentIdentityStatus {
    /// SPIFFE ID of the agent: `spiffe://<trust-domain>/ns/<namespace>/agent/<name>`.
    #[serde(default, rename = "spiffeID", skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,

    /// Name of the agent's dedicated ServiceAccount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,

    /// Conditions: `Ready` (the identity is in place) and `Suspended` (the kill switch is on).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl AgentIdentity {
    /// The ServiceAccount name this agent uses: `spec.serviceAccountName` or `agent-<name>`.
    pub fn service_account_name(&self) -> String {
        service_account_name_for(
            self.metadata.name.as_deref().unwrap_or_default(),
            self.spec.service_account_name.as_deref(),
        )
    }

    /// Whether agentid has confirmed that the agent's ServiceAccount is its own: the controller writes
    /// `status.serviceAccountName` only for a ServiceAccount it created for this agent (never for one that
    /// existed before or that another agent owns). Admission, the broker and the decision point trust an
    /// agent's ServiceAccount only then, so naming someone else's ServiceAccount gains nothing.
    pub fn service_account_in_place(&self) -> bool {
        self.status.as_ref().and_then(|s| s.service_account_name.as_deref())
            == Some(self.service_account_name().as_str())
    }
}

/// The ServiceAccount name of an agent, given its name and the optional override.
pub fn service_account_name_for(agent: &str, explicit: Option<&str>) -> String {
    match explicit {
        Some(sa) if !sa.is_empty() => sa.to_string(),
        _ => format!("agent-{agent}"),
    }
}

/// A plain agent for unit tests: namespace `agents`, owner `team-payments`, audience
/// `https://tools.example.com`, tokenTTL 10m, uid `uid-<name>`.
#[cfg(test)]
pub(crate) fn test_agent(name: &str) -> AgentIdentity {
    let mut a = AgentIdentity::new(
        name,
        AgentIdentitySpec {
            owner: "team-payments".into(),
            description: None,
            service_account_name: None,
            audiences: vec!["https://tools.example.com".into()],
            token_ttl: DEFAULT_TOKEN_TTL.into(),
            trust_domain: None,
            suspended: false,
            delegation: Default::default(),
            session_limits: None,
        },
    );
    a.metadata.namespace = Some("agents".into());
    a.metadata.uid = Some(format!("uid-{name}"));
    a
}
