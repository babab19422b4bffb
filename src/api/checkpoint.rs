use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::core::audit::Checkpoint;

/// A signed checkpoint of one audit-trail writer (a replica), anchored in the cluster. The operator may
/// only create, get and list these (RBAC), and the spec is immutable, so the operator cannot rewrite or
/// delete history it anchored; the apiserver's own audit log records each create.
// printcolumn(...) repeats `type_ = ...` by design.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "agentid.dev",
    version = "v1alpha1",
    kind = "AuditCheckpoint",
    plural = "auditcheckpoints",
    singular = "auditcheckpoint",
    shortname = "acp",
    namespaced,
    derive = "PartialEq",
    doc = "AuditCheckpoint anchors a signed checkpoint {chain, seq, head hash} of agentid's tamper-evident audit trail. Created once by the writing replica, never changed: `agentid audit verify --checkpoints cluster` checks the trail files against these.",
    printcolumn(name = "Chain", type_ = "string", json_path = ".spec.chain", description = "Writer's chain id"),
    printcolumn(name = "Seq", type_ = "integer", json_path = ".spec.seq", description = "Last record covered"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("self == oldSelf").message("an AuditCheckpoint is immutable"))]
#[serde(rename_all = "camelCase")]
pub struct AuditCheckpointSpec {
    /// The writer's chain id: `<replica>-<unix seconds>-<random>`, one per writer start.
    #[schemars(length(min = 1, max = 230))]
    pub chain: String,
    /// Sequence number of the last record the checkpoint covers.
    #[schemars(range(min = 0))]
    pub seq: i64,
    /// Lowercase hex SHA-256 of that record's line (the chain's head).
    #[schemars(length(min = 64, max = 64))]
    pub head: String,
    /// When the checkpoint was made (RFC 3339, UTC).
    #[schemars(length(min = 1, max = 64))]
    pub time: String,
    /// The Ed25519 public key that signed the checkpoint, base64.
    #[schemars(length(min = 1, max = 64))]
    pub public_key: String,
    /// Ed25519 signature over the checkpoint's text form (see docs/audit.md), base64.
    #[schemars(length(min = 1, max = 128))]
    pub signature: String,
}

impl AuditCheckpointSpec {
    pub fn from_checkpoint(cp: &Checkpoint) -> Self {
        AuditCheckpointSpec {
            chain: cp.chain.clone(),
            seq: i64::try_from(cp.seq).unwrap_or(i64::MAX),
            head: cp.head.clone(),
            time: cp.time.clone(),
            public_key: cp.public_key.clone(),
            signature: cp.signature.clone(),
        }
    }

    /// The checkpoint, for the verifier (a negative seq becomes one the signature cannot match).
    pub fn to_checkpoint(&self) -> Checkpoint {
        Checkpoint {
            v: crate::core::audit::checkpoint::CHECKPOINT_VERSION,
            chain: self.chain.clone(),
            seq: u64::try_from(self.seq).unwrap_or(u64::MAX),
            head: self.head.clone(),
            time: self.time.clone(),
            public_key: self.public_key.clone(),
            signature: self.signature.clone(),
        }
    }
}

/// Name of the AuditCheckpoint for `chain` at `seq` (zero-padded so names sort by seq).
pub fn audit_checkpoint_name(chain: &str, seq: u64) -> String {
    format!("{chain}.{seq:020}")
}
