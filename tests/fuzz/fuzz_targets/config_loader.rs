//! libFuzzer target `config_loader`: the invariants are in `checks::config_loader` (shared with
//! tests/it/fuzz_corpus.rs, which replays the kept corpus on stable).
#![no_main]

#[allow(dead_code)]
#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::config_loader(data));
