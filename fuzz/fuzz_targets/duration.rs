//! Durations (`tokenTTL`, `ttl`, `maxDuration`, `--max-grant-duration`): parse, and parse again what
//! `format` prints.
#![no_main]

use agentid::api::duration::{format, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(d) = parse(text) {
        let printed = format(d);
        let again = parse(&printed).unwrap_or_else(|e| panic!("{text:?} -> {printed:?} does not parse: {e}"));
        // `format` drops the milliseconds of durations of a second or more, nothing else.
        assert!(again <= d && d - again < std::time::Duration::from_secs(1), "{text:?} -> {printed:?}");
    }
});
