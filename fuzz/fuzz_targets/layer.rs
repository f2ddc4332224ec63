//! Fuzz target `layer`: layer tars applied into a scratch directory (see `ctrpull::fuzzing::layer`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ctrpull::fuzzing::layer(data));
