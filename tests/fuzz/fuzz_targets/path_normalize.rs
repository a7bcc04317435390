//! libFuzzer target `path_normalize`: the invariants are in `checks::path_normalize` (shared with
//! tests/it/fuzz_corpus.rs, which replays the kept corpus on stable).
#![no_main]

#[allow(dead_code)]
#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::path_normalize(data));
