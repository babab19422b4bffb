//! `agentid check` on one input file: the agents in it, splitting, YAML/JSON parsing, judging, lint,
//! locating findings at their line and column, and every output format's rendering of a result.
#![no_main]

use agentid::core::admission::offline::{self, CheckOptions, Checker};
use agentid_fuzz::now;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut agents = Vec::new();
    offline::agents_in(text, &mut agents);
    let options = CheckOptions {
        default_namespace: "agents".into(),
        exceptions: agentid_fuzz::EXCEPTIONS.clone(),
        ..Default::default()
    };
    let checker = Checker::new(&agents, options, now());
    let mut errors = Vec::new();
    offline::check_text(
        &checker,
        "fuzz.yaml",
        text,
        &mut |r| {
            for f in &r.violations {
                let _ = offline::sarif_result(&r, f);
                let _ = offline::github_annotation(&r, f);
            }
            let _ = serde_json::to_string(&r);
        },
        &mut errors,
    );
    for e in &errors {
        let _ = e.to_string();
    }
});
