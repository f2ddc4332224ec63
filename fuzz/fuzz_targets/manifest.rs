//! Fuzz target `manifest`: manifest, index and config documents as a registry serves them (see `ctrpull::fuzzing::manifest`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ctrpull::fuzzing::manifest(data));
