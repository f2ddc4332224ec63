//! Fuzz target `hosts_toml`: hosts.toml files (see `ctrpull::fuzzing::hosts_toml`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ctrpull::fuzzing::hosts_toml(data));
