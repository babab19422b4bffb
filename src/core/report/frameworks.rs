//! Which framework items each kind of finding addresses. This mapping is agentid's own judgment, not
//! an official crosswalk of any of the frameworks; `docs/frameworks.md` gives the reasoning per row.
//!
//! Frameworks: OWASP Top 10 for Agentic Applications (2026, ASI01–ASI10), OWASP Non-Human Identities
//! Top 10 (2025, NHI1–NHI10), CSA MAESTRO layers (L1–L7), NIST AI RMF 1.0 subcategories, MITRE ATLAS.

use serde::Serialize;

/// The kinds of finding the least-privilege report makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FindingKind {
    /// A grant of which nothing was used in the window.
    UnusedGrant,
    /// A tool (or some of its actions) of a used grant never called.
    UnusedTool,
    /// Kubernetes permissions (verb × resource) of a used grant never exercised.
    UnusedRbac,
    /// An agent that got no token, made no call and no API request in the window.
    NeverUsedAgent,
    /// A grant without `validUntil`.
    GrantWithoutExpiry,
    /// A task that expired instead of being completed.
    TaskNeverCompleted,
    /// Calls refused, by reason.
    Denials,
    /// A workload refused, warned or flagged at admission.
    WorkloadViolations,
    /// A namespace not in `enforce` mode.
    NamespaceNotEnforced,
}

/// The framework items of a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Tags {
    pub owasp_agentic: &'static [&'static str],
    pub owasp_nhi: &'static [&'static str],
    pub maestro: &'static [&'static str],
    pub nist_ai_rmf: &'static [&'static str],
    pub mitre_atlas: &'static [&'static str],
}

impl FindingKind {
    pub const ALL: [FindingKind; 9] = [
        FindingKind::UnusedGrant,
        FindingKind::UnusedTool,
        FindingKind::UnusedRbac,
        FindingKind::NeverUsedAgent,
        FindingKind::GrantWithoutExpiry,
        FindingKind::TaskNeverCompleted,
        FindingKind::Denials,
        FindingKind::WorkloadViolations,
        FindingKind::NamespaceNotEnforced,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::UnusedGrant => "unused-grant",
            FindingKind::UnusedTool => "unused-tool",
            FindingKind::UnusedRbac => "unused-rbac",
            FindingKind::NeverUsedAgent => "never-used-agent",
            FindingKind::GrantWithoutExpiry => "grant-without-expiry",
            FindingKind::TaskNeverCompleted => "task-never-completed",
            FindingKind::Denials => "denials",
            FindingKind::WorkloadViolations => "workload-violations",
            FindingKind::NamespaceNotEnforced => "namespace-not-enforced",
        }
    }

    /// The framework items this kind of finding addresses (agentid's mapping; see docs/frameworks.md).
    pub fn tags(self) -> Tags {
        match self {
            FindingKind::UnusedGrant | FindingKind::UnusedTool | FindingKind::UnusedRbac => Tags {
                owasp_agentic: &["ASI03", "ASI02"],
                owasp_nhi: &["NHI5"],
                maestro: &["L6", "L3"],
                nist_ai_rmf: &["MS2.7", "MG4.1"],
                mitre_atlas: &["AML.M0026"],
            },
            FindingKind::NeverUsedAgent => Tags {
                owasp_agentic: &["ASI10"],
                owasp_nhi: &["NHI1"],
                maestro: &["L7", "L6"],
                nist_ai_rmf: &["GV1.6", "GV1.7"],
                mitre_atlas: &[],
            },
            FindingKind::GrantWithoutExpiry => Tags {
                owasp_agentic: &["ASI03"],
                owasp_nhi: &["NHI7", "NHI5"],
                maestro: &["L6"],
                nist_ai_rmf: &["MG2.4", "MS2.7"],
                mitre_atlas: &["AML.M0026"],
            },
            FindingKind::TaskNeverCompleted => Tags {
                owasp_agentic: &["ASI03", "ASI08"],
                owasp_nhi: &["NHI7", "NHI1"],
                maestro: &["L3", "L6"],
                nist_ai_rmf: &["MG2.4", "MG4.1"],
                mitre_atlas: &[],
            },
            FindingKind::Denials => Tags {
                owasp_agentic: &["ASI02", "ASI01"],
                owasp_nhi: &[],
                maestro: &["L5", "L3"],
                nist_ai_rmf: &["MS2.4", "MG4.1", "MG4.3"],
                mitre_atlas: &["AML.T0053", "AML.T0086", "AML.M0024"],
            },
            FindingKind::WorkloadViolations => Tags {
                owasp_agentic: &["ASI03", "ASI04"],
                owasp_nhi: &["NHI2", "NHI7", "NHI9"],
                maestro: &["L4"],
                nist_ai_rmf: &["MS2.7"],
                mitre_atlas: &["AML.T0055", "AML.T0083"],
            },
            FindingKind::NamespaceNotEnforced => Tags {
                owasp_agentic: &["ASI03"],
                owasp_nhi: &["NHI6", "NHI8"],
                maestro: &["L4", "L6"],
                nist_ai_rmf: &["GV1.6", "MS2.7"],
                mitre_atlas: &[],
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_tags_from_the_frameworks_named() {
        let agentic: Vec<String> = (1..=10).map(|i| format!("ASI{i:02}")).collect();
        let nhi: Vec<String> = (1..=10).map(|i| format!("NHI{i}")).collect();
        let maestro: Vec<String> = (1..=7).map(|i| format!("L{i}")).collect();
        for k in FindingKind::ALL {
            let t = k.tags();
            assert!(!t.owasp_agentic.is_empty() && !t.maestro.is_empty() && !t.nist_ai_rmf.is_empty(), "{k:?}");
            assert!(t.owasp_agentic.iter().all(|x| agentic.contains(&x.to_string())), "{k:?}");
            assert!(t.owasp_nhi.iter().all(|x| nhi.contains(&x.to_string())), "{k:?}");
            assert!(t.maestro.iter().all(|x| maestro.contains(&x.to_string())), "{k:?}");
            assert!(t.nist_ai_rmf.iter().all(|x| ["GV", "MP", "MS", "MG"].iter().any(|f| x.starts_with(f))));
            assert!(t.mitre_atlas.iter().all(|x| x.starts_with("AML.")));
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
    }

    #[test]
    fn the_docs_table_lists_every_kind_with_its_tags() {
        let doc = include_str!("../../../docs/frameworks.md");
        for k in FindingKind::ALL {
            let row = doc
                .lines()
                .find(|l| l.starts_with(&format!("| `{}`", k.as_str())))
                .unwrap_or_else(|| panic!("docs/frameworks.md has no row for {}", k.as_str()));
            let t = k.tags();
            for tag in
                t.owasp_agentic.iter().chain(t.owasp_nhi).chain(t.maestro).chain(t.nist_ai_rmf).chain(t.mitre_atlas)
            {
                assert!(row.contains(tag), "docs/frameworks.md row for {} lacks {tag}: {row}", k.as_str());
            }
        }
    }
}
