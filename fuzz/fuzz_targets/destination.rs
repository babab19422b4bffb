//! Destination matching: line 1 is a grant's destination pattern, line 2 the request's destination.
//! Beyond no panics: a pattern prints in a form that parses to itself, and a match never crosses hosts.
#![no_main]

use agentid::core::pdp::{Destination, DestinationPattern};
use libfuzzer_sys::fuzz_target;

/// The host (and port) part of a pattern's normalised form.
fn authority(p: &str) -> &str {
    let rest = p.split_once("://").map_or(p, |(_, r)| r);
    rest.split('/').next().unwrap_or_default()
}

fn without_port(a: &str) -> &str {
    match a.rsplit_once(':') {
        Some((h, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && !h.is_empty() => h,
        _ => a,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (pattern, destination) = text.split_once('\n').unwrap_or((text, text));
    let d = Destination::parse(destination);
    if let Ok(d) = &d {
        let _ = (d.scheme().as_str(), d.host(), d.port(), d.path(), d.query());
    }
    let Ok(p) = DestinationPattern::parse(pattern) else { return };
    let shown = p.to_string();
    let again = DestinationPattern::parse(&shown).unwrap_or_else(|e| panic!("{pattern:?} -> {shown:?}: {e}"));
    assert_eq!(again, p, "{pattern:?} -> {shown:?}");
    let Ok(d) = d else { return };
    let matched = p.matches(&d);
    assert_eq!(matched, again.matches(&d));
    if matched {
        let host = without_port(authority(&shown));
        match host.strip_prefix('*') {
            Some(suffix) => assert!(
                d.host().strip_suffix(suffix).is_some_and(|l| !l.is_empty() && !l.contains('.')),
                "{shown:?} matched host {:?}",
                d.host()
            ),
            None => assert_eq!(d.host(), host, "{shown:?} matched another host"),
        }
    }
});
