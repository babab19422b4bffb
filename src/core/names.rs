//! Names and label values agentid derives from the names of its objects
//! (`agentid-grant-<grant>`, `agentid-task-<task>`): deterministic, and always
//! within the apiserver's length limits.

use sha2::{Digest, Sha256};

/// Longest object name (a DNS subdomain).
pub const MAX_NAME_LEN: usize = 253;
/// Longest label value.
pub const MAX_LABEL_VALUE_LEN: usize = 63;
const HASH_LEN: usize = 10;

/// Whether `c` could forge or hide text where a name is printed: a control character (newline, ESC, ...)
/// or a Unicode bidirectional override/isolate, which reorders what a terminal or a review shows.
pub fn is_unsafe_in_text(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// First `HASH_LEN` hex digits of the SHA-256 of `s`.
fn short_hash(s: &str) -> String {
    Sha256::digest(s.as_bytes()).iter().take(HASH_LEN / 2).map(|b| format!("{b:02x}")).collect()
}

/// `s` if it fits in `max` characters, else a prefix of it, `-` and a hash of the whole of `s`:
/// deterministic, and distinct for distinct long inputs that share a prefix.
pub fn fit(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    // Names and label values here are ASCII (DNS subdomains); `get` stays safe regardless.
    let keep = max - HASH_LEN - 1;
    let mut cut = keep;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    let prefix = s[..cut].trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    format!("{prefix}-{}", short_hash(s))
}

/// The name of an object derived from `name`: `<prefix><name>`, shortened with a hash when it
/// would exceed [`MAX_NAME_LEN`].
pub fn derived_name(prefix: &str, name: &str) -> String {
    fit(&format!("{prefix}{name}"), MAX_NAME_LEN)
}

/// A label value for an object name: the name itself when it fits in 63 characters
/// (every DNS subdomain that short is a valid label value), else a prefix and a hash.
pub fn label_value(name: &str) -> String {
    fit(name, MAX_LABEL_VALUE_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_kept_and_long_ones_fit_distinctly() {
        assert_eq!(derived_name("p-", "x"), "p-x");
        let fits = "a".repeat(MAX_NAME_LEN - 2);
        assert_eq!(derived_name("p-", &fits), format!("p-{fits}"));
        let (a, b) = (format!("{}a", "x".repeat(260)), format!("{}b", "x".repeat(260)));
        let (na, nb) = (derived_name("p-", &a), derived_name("p-", &b));
        assert_eq!((na.len(), nb.len()), (MAX_NAME_LEN, MAX_NAME_LEN));
        assert_ne!(na, nb);
        assert_eq!(na, derived_name("p-", &a), "deterministic");
        assert!(na.starts_with("p-xxx"));
    }

    #[test]
    fn label_values_fit() {
        assert_eq!(label_value("billing"), "billing");
        let v = label_value(&"b".repeat(100));
        assert_eq!(v.len(), MAX_LABEL_VALUE_LEN);
    }
}
