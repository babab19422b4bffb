//! Enforcement modes (per namespace) and the verdict they give a set of violations.

use std::fmt;
use std::str::FromStr;

/// Namespace label that opts a namespace into agentid admission, with its mode as value.
pub const ENFORCEMENT_LABEL: &str = "agentid.dev/enforcement";

/// How violations are handled in a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Enforcement {
    /// Deny, listing every violation.
    Enforce,
    /// Allow, with one admission warning per violation (kubectl prints `Warning: ...`).
    Warn,
    /// Allow silently; record each violation (log line and metric).
    Audit,
}

impl Enforcement {
    pub const ALL: [Enforcement; 3] = [Enforcement::Enforce, Enforcement::Warn, Enforcement::Audit];

    pub fn as_str(self) -> &'static str {
        match self {
            Enforcement::Enforce => "enforce",
            Enforcement::Warn => "warn",
            Enforcement::Audit => "audit",
        }
    }
}

impl fmt::Display for Enforcement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Enforcement {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Enforcement::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| format!("unknown enforcement mode {s:?}: expected enforce, warn or audit"))
    }
}

/// The outcome of admission for one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Warn,
    Deny,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Warn => "warn",
            Verdict::Deny => "deny",
        }
    }
}

/// The verdict for `violations` remaining violations under `mode`.
pub fn decide(mode: Enforcement, violations: usize) -> Verdict {
    match (violations, mode) {
        (0, _) | (_, Enforcement::Audit) => Verdict::Allow,
        (_, Enforcement::Warn) => Verdict::Warn,
        (_, Enforcement::Enforce) => Verdict::Deny,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_give_their_verdicts() {
        assert_eq!(decide(Enforcement::Enforce, 0), Verdict::Allow);
        assert_eq!(decide(Enforcement::Enforce, 2), Verdict::Deny);
        assert_eq!(decide(Enforcement::Warn, 2), Verdict::Warn);
        assert_eq!(decide(Enforcement::Audit, 2), Verdict::Allow);
    }

    #[test]
    fn modes_parse_from_label_values() {
        for m in Enforcement::ALL {
            assert_eq!(m.as_str().parse::<Enforcement>(), Ok(m));
        }
        assert!("Enforce".parse::<Enforcement>().is_err());
    }
}
