//! Any line a user can type: the command parser and the sanitizer must never panic, and
//! sanitized text must hold no control characters.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(line) = std::str::from_utf8(data) {
        let _ = parley_client::command::parse(line);
        let safe = parley_client::display::sanitize(line);
        assert!(!safe.chars().any(|c| c.is_control()));
    }
});
