//! The audit record, schema version 1 (documented field by field in `docs/audit.md`).
//!
//! A record is written as its canonical JSON: the fields of [`Record`] in declaration order, absent
//! options and empty lists left out, no whitespace, one record per line. The struct has no maps, so the
//! bytes are a function of the values alone and the SHA-256 over them (the next record's `prev`) is
//! reproducible by anyone holding the line.
//!
//! Never a token, a secret or an argument value: what identifies a credential is a keyed fingerprint
//! ([`fingerprint`]) or the apiserver's credential id.

use ring::hmac;
use serde::{Deserialize, Serialize};

/// Version of the record schema this code writes and reads (`v`).
pub const SCHEMA_VERSION: u32 = 1;

/// What a record is about. Schema 1 is a closed set: a reader refuses kinds it does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A decision of the decision point (allow, deny, approval-required).
    Decision,
    /// The broker issued a task token.
    TaskTokenIssued,
    /// The broker refused a task token.
    TaskTokenRefused,
    TaskStarted,
    TaskCompleted,
    TaskExpired,
    TaskRevoked,
    ApprovalRequested,
    ApprovalDecided,
    Delegation,
    GrantActivated,
    GrantExpired,
    GrantRevoked,
    AgentSuspended,
    AgentResumed,
    AdmissionDenied,
    AdmissionWarned,
    AdmissionAudited,
    ExceptionUsed,
    /// A request an agent made to the Kubernetes API (from the apiserver's audit events).
    ApiCall,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Decision => "decision",
            Kind::TaskTokenIssued => "task-token-issued",
            Kind::TaskTokenRefused => "task-token-refused",
            Kind::TaskStarted => "task-started",
            Kind::TaskCompleted => "task-completed",
            Kind::TaskExpired => "task-expired",
            Kind::TaskRevoked => "task-revoked",
            Kind::ApprovalRequested => "approval-requested",
            Kind::ApprovalDecided => "approval-decided",
            Kind::Delegation => "delegation",
            Kind::GrantActivated => "grant-activated",
            Kind::GrantExpired => "grant-expired",
            Kind::GrantRevoked => "grant-revoked",
            Kind::AgentSuspended => "agent-suspended",
            Kind::AgentResumed => "agent-resumed",
            Kind::AdmissionDenied => "admission-denied",
            Kind::AdmissionWarned => "admission-warned",
            Kind::AdmissionAudited => "admission-audited",
            Kind::ExceptionUsed => "exception-used",
            Kind::ApiCall => "api-call",
        }
    }
}

/// What happened, as the caller of the trail describes it; the writer adds the chain fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: Kind,
    /// Who acted: the agent's SPIFFE ID, or the human user (approvals, admission).
    pub actor: Option<String>,
    /// Namespace of the agent / task / object.
    pub namespace: Option<String>,
    /// The agent's name (in `namespace`).
    pub agent: Option<String>,
    /// The AgentTask's name (in `namespace`).
    pub task: Option<String>,
    /// Delegation chain, outermost first (SPIFFE IDs of prior actors).
    pub delegation: Vec<String>,
    pub tool: Option<String>,
    pub action: Option<String>,
    /// Where the call goes, without query string or fragment.
    pub destination: Option<String>,
    /// `allow`, `deny`, `approval-required`, `issued`, `refused`, ...
    pub decision: Option<String>,
    /// Stable reason codes.
    pub reasons: Vec<String>,
    /// The ToolGrant that decided.
    pub grant: Option<String>,
    /// The request or decision id this record belongs to.
    pub request: Option<String>,
    /// A keyed fingerprint of the credential involved, or the apiserver's credential id — never the
    /// credential.
    pub credential: Option<String>,
}

impl Event {
    /// An event of `kind` with every other field empty.
    pub fn new(kind: Kind) -> Self {
        Event {
            kind,
            actor: None,
            namespace: None,
            agent: None,
            task: None,
            delegation: Vec::new(),
            tool: None,
            action: None,
            destination: None,
            decision: None,
            reasons: Vec::new(),
            grant: None,
            request: None,
            credential: None,
        }
    }
}

/// One line of the trail. Field order is the canonical order; do not reorder (it would change every
/// hash) — add fields only with a new [`SCHEMA_VERSION`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// Schema version ([`SCHEMA_VERSION`]).
    pub v: u32,
    /// The writer's chain id (one per writer start).
    pub chain: String,
    /// Position in the chain, from 0, without gaps.
    pub seq: u64,
    /// Lowercase hex SHA-256 of the previous record's line ([`super::GENESIS`] for seq 0).
    pub prev: String,
    /// Unique record id (random, hex).
    pub id: String,
    /// When the writer appended the record, RFC 3339 UTC with microseconds.
    pub time: String,
    /// The replica (pod) that wrote the record.
    pub replica: String,
    pub kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delegation: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// The chain position and identity of a record, assigned by the writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    pub chain: String,
    pub seq: u64,
    pub prev: String,
    pub id: String,
    pub time: String,
    pub replica: String,
}

impl Record {
    pub fn new(stamp: Stamp, e: Event) -> Self {
        Record {
            v: SCHEMA_VERSION,
            chain: stamp.chain,
            seq: stamp.seq,
            prev: stamp.prev,
            id: stamp.id,
            time: stamp.time,
            replica: stamp.replica,
            kind: e.kind,
            actor: e.actor,
            namespace: e.namespace,
            agent: e.agent,
            task: e.task,
            delegation: e.delegation,
            tool: e.tool,
            action: e.action,
            destination: e.destination,
            decision: e.decision,
            reasons: e.reasons,
            grant: e.grant,
            request: e.request,
            credential: e.credential,
        }
    }

    /// The canonical JSON of the record (no trailing newline).
    pub fn canonical(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(384);
        self.write_canonical(&mut out);
        out
    }

    /// Appends the canonical JSON of the record to `out` (no trailing newline).
    pub fn write_canonical(&self, out: &mut Vec<u8>) {
        // Serializing plain strings, integers and unit enums into a Vec cannot fail; if it ever did, the
        // line would not parse back and the verifier would say so.
        let _ = serde_json::to_writer(&mut *out, self);
    }
}

/// A keyed fingerprint of a sensitive value (a token, an argument value): the first 16 bytes of
/// HMAC-SHA256 under the trail's fingerprint key, hex. Equal values give equal fingerprints within one
/// installation; without the key a fingerprint cannot be tested against guesses.
pub fn fingerprint(key: &hmac::Key, value: &[u8]) -> String {
    let tag = hmac::sign(key, value);
    super::chain::hex(&tag.as_ref()[..16])
}

/// Strips the query string and fragment of a destination: they may carry secrets.
pub fn destination(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp() -> Stamp {
        Stamp {
            chain: "c".into(),
            seq: 3,
            prev: "00".into(),
            id: "id".into(),
            time: "2026-01-01T00:00:00.000000Z".into(),
            replica: "r".into(),
        }
    }

    #[test]
    fn canonical_json_has_a_fixed_field_order_and_omits_empty_fields() {
        let mut e = Event::new(Kind::Decision);
        e.tool = Some("github".into());
        e.reasons = vec!["granted".into()];
        let r = Record::new(stamp(), e);
        let text = String::from_utf8(r.canonical()).unwrap();
        assert_eq!(
            text,
            r#"{"v":1,"chain":"c","seq":3,"prev":"00","id":"id","time":"2026-01-01T00:00:00.000000Z","replica":"r","kind":"decision","tool":"github","reasons":["granted"]}"#
        );
        let back: Record = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.canonical(), r.canonical());
    }

    #[test]
    fn unknown_fields_and_kinds_are_refused() {
        let line = String::from_utf8(Record::new(stamp(), Event::new(Kind::ApiCall)).canonical()).unwrap();
        assert!(serde_json::from_str::<Record>(&line.replace("}", r#","token":"x"}"#)).is_err());
        assert!(serde_json::from_str::<Record>(&line.replace("api-call", "bogus")).is_err());
        assert!(serde_json::from_str::<Record>(&line.replace(r#""seq":3"#, r#""seq":3,"seq":4"#)).is_err());
    }

    #[test]
    fn kinds_serialize_as_their_names() {
        for k in [Kind::Decision, Kind::TaskTokenIssued, Kind::ApprovalDecided, Kind::ApiCall, Kind::ExceptionUsed] {
            assert_eq!(serde_json::to_value(k).unwrap(), serde_json::Value::String(k.as_str().into()));
        }
    }

    #[test]
    fn fingerprints_are_keyed_and_never_the_value() {
        let k1 = hmac::Key::new(hmac::HMAC_SHA256, b"key-one");
        let k2 = hmac::Key::new(hmac::HMAC_SHA256, b"key-two");
        let f = fingerprint(&k1, b"secret-token");
        assert_eq!(f.len(), 32);
        assert_eq!(f, fingerprint(&k1, b"secret-token"));
        assert_ne!(f, fingerprint(&k2, b"secret-token"));
        assert!(!f.contains("secret"));
    }

    #[test]
    fn destinations_lose_query_and_fragment() {
        assert_eq!(destination("https://a.example/x?token=s#f"), "https://a.example/x");
        assert_eq!(destination("https://a.example/x#f"), "https://a.example/x");
    }
}
