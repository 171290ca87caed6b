//! Parses arbitrary text as a key: never panics, and whatever parses renders
//! back to the same text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tierstack_core::Key;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(key) = Key::parse(text) {
            assert_eq!(key.as_str(), text);
        }
    }
});
