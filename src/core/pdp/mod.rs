//! The runtime decision point (PDP): before an agent calls a tool, a gateway asks
//! "may this agent, in this task, call this tool with this action on this
//! destination at this data sensitivity, now?" and gets allow, deny or
//! approval-required, with stable reason codes, the grant that decided and an
//! explanation.
//!
//! Pure like the rest of the core: no client, no clock, no I/O. The shell keeps a
//! [`Snapshot`] of agents, grants and tasks current from watch events, keeps the
//! counters behind [`Usage`], passes the time in and increments what an allowed
//! decision's [`Charge`] names.
//!
//! * [`destination`]: URL normalisation and destination patterns, strict where
//!   parsers disagree;
//! * [`condition`]: the CEL `when` of a grant, compiled once, checked for
//!   variables the decision point cannot supply;
//! * [`snapshot`]: the compiled, indexed state;
//! * [`decide`](mod@decide): the decision itself;
//! * [`caller`]: from a verified token to the agent and task it speaks for;
//! * [`budget`]: per-task limits across replicas (leased slices).

pub mod budget;
pub mod caller;
pub mod condition;
pub mod decide;
pub mod destination;
pub mod offline;
pub mod snapshot;

pub use condition::{Condition, ConditionError, validate_when};
pub use decide::{
    Charge, DecideConfig, Decision, DecisionRequest, MemoryUsage, Outcome, ReasonCode, Usage, decide, minute_of,
};
pub use destination::{Destination, DestinationError, DestinationPattern, PatternError};
pub use snapshot::Snapshot;
