//! The pure core: every decision agentid makes, as plain functions over typed
//! inputs. Nothing here talks to a cluster, reads a file or the clock; callers
//! pass in what was fetched and the current time.

pub mod admission;
pub mod audit;
pub mod broker;
pub mod conditions;
pub mod grant;
pub mod identity;
pub mod jwt;
pub mod lease;
pub mod names;
pub mod pdp;
pub mod policyreport;
pub mod ratelimit;
pub mod relist;
pub mod report;
pub mod status;
pub mod task;
pub mod uid;
