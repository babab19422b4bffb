//! agentid: runtime identities for AI agents on Kubernetes.
//!
//! - [`api`]: the CRD types (AgentIdentity, ToolGrant, AgentTask).
//! - [`core`]: every decision, as pure functions (no kube client, no I/O).
//! - [`controller`], [`probes`]: the I/O shells around the core.

pub mod api;
pub mod audit;
pub mod cli;
pub mod controller;
pub mod core;
pub mod error;
pub mod metrics;
pub mod pdp;
pub mod probes;
pub mod scan;
pub mod server;
pub mod signal;
pub mod telemetry;
pub mod webhook;

pub use error::{Error, Result};
