//! The tamper-evident audit trail, pure: the record schema and its canonical JSON ([`record`]), the
//! SHA-256 chain ([`chain`]), signed checkpoints ([`checkpoint`]), the verifier ([`verify`]) and the
//! per-agent timeline ([`timeline`]). No I/O and no clock: the writer (`crate::audit`) and the CLI
//! (`agentid audit`) do those. The format is documented in `docs/audit.md`.

pub mod admission;
pub mod apicall;
pub mod chain;
pub mod checkpoint;
pub mod lifecycle;
pub mod record;
pub mod timeline;
pub mod verify;

pub use chain::{Chain, GENESIS, Hash};
pub use checkpoint::Checkpoint;
pub use record::{Event, Kind, Record, SCHEMA_VERSION, fingerprint};
pub use verify::{Finding, FindingKind, Report, Verifier, VerifyOptions};
