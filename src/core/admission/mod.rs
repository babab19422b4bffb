//! Admission: the rules that keep static, shared and long-lived credentials away
//! from agents. The webhook and `agentid check` are thin shells over this module.
//!
//! - [`rules`]: every rule, by its stable id ([`rules::RuleId`]) — start here.
//! - [`detectors`]: hard-coded credential detectors used by `hardcoded-credential`.
//! - [`workload`]: finding the pod spec inside Pods and workload templates.
//! - [`exceptions`]: time-boxed exceptions granted by the platform team.
//! - [`verdict`]: enforcement modes and the final verdict.
//! - [`grants`]: ToolGrants carry only what their author holds; [`identities`]: agents never write
//!   agentid's objects, and an AgentIdentity names no ServiceAccount in use.
//! - [`lint`]: least privilege at review time for AgentIdentities and ToolGrants (`agentid check`);
//!   [`locate`]: the line and column of a field in its file.

pub mod detectors;
pub mod exceptions;
pub mod grants;
pub mod identities;
pub mod lint;
pub mod locate;
pub mod offline;
pub mod registration;
pub mod review;
pub mod rules;
pub mod verdict;
pub mod workload;

pub use rules::{AgentDirectory, AgentInfo, RuleId, Violation, evaluate};
pub use verdict::{Enforcement, Verdict};
pub use workload::Workload;
