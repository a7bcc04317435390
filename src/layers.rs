//! The crate's layers, and the test that keeps them (README, "Layout").
//!
//! Each top-level module sits in one layer. A module uses only modules of the layers
//! below its own, never one of its own layer: `assertion`, `oidc`, `policy`, `proxy`
//! and `session` stand side by side, none knowing another, and only `gateway` composes
//! them. The test reads `src/` and names every `crate::` path that breaks this.

/// From the bottom up.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "plain data and small shared pieces",
        &[
            "body",
            "cookie_header",
            "errors",
            "identity",
            "outbound",
            "pages",
            "rules",
            "serving_thread",
        ],
    ),
    (
        "settings, and what an operator sees",
        &["config", "observe"],
    ),
    (
        "refusals and failures, and the answer each gets",
        &["problem"],
    ),
    (
        "the parts, side by side",
        &["assertion", "oidc", "policy", "proxy", "session"],
    ),
    ("one request's lifecycle", &["gateway"]),
    ("listeners and connections", &["server"]),
    ("the development identity provider", &["devidp"]),
    ("commands", &["check", "demo", "loadgen"]),
];

/// Modules the rules do not apply to: this one.
const EXEMPT: &[&str] = &["layers"];

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&module))
}

/// The top-level modules a piece of Rust names through `crate::`, comment lines
/// left out (`use crate::{a::X, b}` names `a` and `b`).
fn references(source: &str) -> BTreeSet<String> {
    let code: String = source
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let preceded = code[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$');
        let rest = &code[at + "crate::".len()..];
        match rest.strip_prefix('{') {
            _ if preceded => {}
            Some(group) => found.extend(group_heads(group)),
            None => {
                found.insert(identifier(rest).to_owned());
            }
        }
    }
    found.remove("");
    found.remove("self");
    found
}

/// The first identifier of each item of a `{...}` group (`group` follows the `{`).
fn group_heads(group: &str) -> Vec<String> {
    let mut depth = 0;
    let mut heads = Vec::new();
    let mut expect_head = true;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => expect_head = true,
            c if expect_head && (c.is_alphanumeric() || c == '_') => {
                heads.push(identifier(&group[i..]).to_owned());
                expect_head = false;
            }
            _ => {}
        }
    }
    heads
}

fn identifier(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

fn rust_files(dir: &Path, into: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push(path);
        }
    }
}

/// Every breach of the layers in the files under `src`.
fn breaches(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut breaches = Vec::new();
    for file in files {
        let relative = file.strip_prefix(src).unwrap();
        let first = relative.components().next().unwrap().as_os_str();
        let module = first.to_str().unwrap().trim_end_matches(".rs");
        // The crate root declares the modules; the binary stands on all of them.
        if matches!(module, "lib" | "main") || EXEMPT.contains(&module) {
            continue;
        }
        let shown = Path::new("src").join(relative);
        let Some(layer) = layer_of(module) else {
            breaches.push(format!(
                "{}: module `{module}` is in no layer of src/layers.rs",
                shown.display()
            ));
            continue;
        };
        let source = std::fs::read_to_string(&file).unwrap();
        if source.contains("super::super::") {
            breaches.push(format!(
                "{}: `super::super::` (name other modules from `crate::`)",
                shown.display()
            ));
        }
        for used in references(&source) {
            if used == module {
                continue;
            }
            match layer_of(&used) {
                Some(below) if below < layer => {}
                Some(_) => breaches.push(format!(
                    "{}: `{module}` ({}) uses `crate::{used}`, which is not below it",
                    shown.display(),
                    LAYERS[layer].0
                )),
                None if EXEMPT.contains(&used.as_str()) => {}
                None => breaches.push(format!(
                    "{}: `{module}` uses `crate::{used}`, which is in no layer",
                    shown.display()
                )),
            }
        }
    }
    breaches
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let breaches = breaches(&src);
    assert!(
        breaches.is_empty(),
        "modules that break the layers (src/layers.rs, README \"Layout\"):\n{}",
        breaches.join("\n")
    );
}

#[test]
fn every_module_the_crate_declares_has_a_layer() {
    let lib = include_str!("lib.rs");
    for line in lib.lines() {
        if let Some(module) = line.trim().strip_prefix("pub mod ") {
            let module = module.trim_end_matches(';');
            assert!(
                layer_of(module).is_some() || EXEMPT.contains(&module),
                "`{module}` is in no layer of src/layers.rs"
            );
        }
    }
    let mut seen = BTreeSet::new();
    for (_, modules) in LAYERS {
        for module in *modules {
            assert!(seen.insert(module), "`{module}` is in two layers");
        }
    }
}

#[test]
fn references_are_read_from_paths_and_groups() {
    let source = "use crate::body::{ResponseBody, boxed};\n\
                  use crate::{\n    identity::Identity,\n    rules::{Action, RouteRule},\n    self,\n};\n\
                  // crate::gateway in a comment\n\
                  let x = crate::proxy::headers::decode_list(list);\n\
                  let y = $crate::ignored;\n";
    let found: Vec<String> = references(source).into_iter().collect();
    assert_eq!(found, ["body", "identity", "proxy", "rules"]);
}
