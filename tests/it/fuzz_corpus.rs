//! Replays the kept fuzz corpora (tests/fuzz/corpus/<target>/) through the same checks
//! the libFuzzer targets run (tests/fuzz/checks.rs), on the stable toolchain.

#[path = "../fuzz/checks.rs"]
mod checks;

use std::path::{Path, PathBuf};

/// Runs every file of the target's corpus through `check`; fails on an empty corpus
/// and lists every input that failed.
fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} has no inputs", dir.display());
    let failed: Vec<String> = files
        .iter()
        .filter(|file| {
            let data = std::fs::read(file).expect("corpus file");
            std::panic::catch_unwind(|| check(&data)).is_err()
        })
        .map(|file| file.display().to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} inputs fail:\n{}",
        failed.len(),
        files.len(),
        failed.join("\n")
    );
}

#[test]
fn cookie_decoder_corpus() {
    replay("cookie_decoder", checks::cookie_decoder);
}

#[test]
fn path_normalize_corpus() {
    replay("path_normalize", checks::path_normalize);
}

#[test]
fn redirect_validator_corpus() {
    replay("redirect_validator", checks::redirect_validator);
}

#[test]
fn callback_query_corpus() {
    replay("callback_query", checks::callback_query);
}

#[test]
fn config_loader_corpus() {
    replay("config_loader", checks::config_loader);
}

#[test]
fn framing_vs_hyper_corpus() {
    replay("framing_vs_hyper", checks::framing_vs_hyper);
}
