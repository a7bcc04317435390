//! libFuzzer target `framing_vs_hyper`: the invariants are in `checks::framing_vs_hyper` (shared
//! with tests/it/fuzz_corpus.rs, which replays the kept corpus on stable).
#![no_main]

#[allow(dead_code)]
#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::framing_vs_hyper(data));
