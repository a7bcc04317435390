//! libFuzzer target `cookie_decoder`: the invariants are in `checks::cookie_decoder` (shared with
//! tests/it/fuzz_corpus.rs, which replays the kept corpus on stable).
#![no_main]

#[allow(dead_code)]
#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::cookie_decoder(data));
