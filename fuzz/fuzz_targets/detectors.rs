//! The credential detectors: a value with and without a variable name, and free text.
//! Input: `NAME=value` (the name is what precedes the first `=`), the whole input is also free text.
#![no_main]

use agentid::core::admission::detectors::{scan_text, scan_value};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = scan_text(text);
    let _ = scan_value(None, text);
    if let Some((name, value)) = text.split_once('=') {
        let _ = scan_value(Some(name), value);
    }
});
