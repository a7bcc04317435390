//! libFuzzer target `redirect_validator`: the invariants are in `checks::redirect_validator` (shared with
//! tests/it/fuzz_corpus.rs, which replays the kept corpus on stable).
#![no_main]

#[allow(dead_code)]
#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::redirect_validator(data));
