//! Fuzz target `content_range`: Content-Range header values (see `ctrpull::fuzzing::content_range`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ctrpull::fuzzing::content_range(data));
