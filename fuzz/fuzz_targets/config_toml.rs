//! Fuzz target `config_toml`: containerd config.toml files (see `ctrpull::fuzzing::config_toml`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ctrpull::fuzzing::config_toml(data));
