//! Fuzz target `www_authenticate`: WWW-Authenticate challenges (see `ctrpull::fuzzing::www_authenticate`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ctrpull::fuzzing::www_authenticate(data));
