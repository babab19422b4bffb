//! Subcommands of the `agentid` binary that are more than a line.

pub mod audit;
pub mod check;
pub mod decide;
pub mod report;
pub mod run;
