//! Fuzz target `reference`: image references (see `ctrpull::fuzzing::reference`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ctrpull::fuzzing::reference(data));
