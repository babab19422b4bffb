//! The decision point's AuthZEN interface: a request body, decoded as a single evaluation and as a
//! batch, and every question it asks decided against the sample agents and grants.
#![no_main]

use agentid::pdp::http::fuzzing;
use agentid_fuzz::decide_question;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    agentid_fuzz::tolerate_caught_cel_panics();
    if let Ok(q) = fuzzing::evaluation(data) {
        decide_question(&q, None);
        decide_question(&q, Some("triage-ticket-42"));
    }
    if let Ok(questions) = fuzzing::evaluations(data) {
        for q in questions.iter().flatten() {
            decide_question(q, None);
        }
    }
});
