//! The file's shape, key by key, before any value is judged: every unknown, misplaced
//! or mistyped key is reported at once with its full name (`session.lifetime`), a
//! "did you mean" for a typo, and the right section for a key in the wrong one.
//! Offending keys are removed, so the sections deserialize afterwards.

use serde::de::{self, DeserializeOwned, Deserializer, Visitor};

use super::file::{
    AccessSection, AssertionSection, IdentityHeadersSection, OidcSection, RuleSection,
    ServerSection, SessionSection, TlsSection, UpstreamSection,
};
use super::{ConfigError, key_error};

/// One section (or one `[[access.rules]]` entry): its keys and a test deserialization.
struct Shape {
    name: &'static str,
    keys: &'static [&'static str],
    probe: fn(toml::Table) -> Result<(), String>,
}

fn shape<T: DeserializeOwned>(name: &'static str) -> Shape {
    Shape {
        name,
        keys: keys_of::<T>(),
        probe: |table| {
            toml::Value::Table(table)
                .try_into::<T>()
                .map(drop)
                .map_err(|e| e.message().to_owned())
        },
    }
}

fn sections() -> [Shape; 8] {
    [
        shape::<ServerSection>("server"),
        shape::<TlsSection>("tls"),
        shape::<UpstreamSection>("upstream"),
        shape::<OidcSection>("oidc"),
        shape::<SessionSection>("session"),
        shape::<IdentityHeadersSection>("identity_headers"),
        shape::<AccessSection>("access"),
        shape::<AssertionSection>("assertion"),
    ]
}

/// Every key of every section, as `(section, key)`; a rule's keys are `access.rules`'.
pub fn all_keys() -> Vec<(&'static str, &'static str)> {
    sections()
        .iter()
        .chain([&shape::<RuleSection>("access.rules")])
        .flat_map(|s| s.keys.iter().map(move |k| (s.name, *k)))
        .collect()
}

/// Checks every key of `table`, removes the ones in error, returns their problems.
pub fn check(table: &mut toml::Table) -> Vec<ConfigError> {
    let sections = sections();
    let mut problems = Vec::new();
    let names: Vec<String> = table.keys().cloned().collect();
    for name in names {
        let Some(shape) = sections.iter().find(|s| s.name == name) else {
            let value = table.remove(&name).expect("listed key");
            problems.push(key_error(
                &name,
                outside_sections(&name, value.is_table(), &sections),
            ));
            continue;
        };
        match table.get_mut(&name) {
            Some(toml::Value::Table(keys)) => {
                check_keys(shape, keys, &name, &sections, &mut problems);
            }
            _ => {
                table.remove(&name);
                problems.push(key_error(
                    &name,
                    format!("is a section: write [{name}] on a line of its own, its keys below it"),
                ));
            }
        }
    }
    problems
}

fn check_keys(
    shape: &Shape,
    table: &mut toml::Table,
    prefix: &str,
    sections: &[Shape],
    problems: &mut Vec<ConfigError>,
) {
    let keys: Vec<String> = table.keys().cloned().collect();
    for key in keys {
        let full = format!("{prefix}.{key}");
        if !shape.keys.contains(&key.as_str()) {
            table.remove(&key);
            problems.push(key_error(&full, unknown_key(&key, shape, prefix, sections)));
            continue;
        }
        if shape.name == "access" && key == "rules" {
            if !check_rules(&mut table[&key], sections, problems) {
                table.remove(&key);
            }
            continue;
        }
        let value = table[&key].clone();
        let mut alone = toml::Table::new();
        alone.insert(key.clone(), value.clone());
        if let Err(message) = (shape.probe)(alone) {
            table.remove(&key);
            problems.push(key_error(&full, type_problem(&message, &key, &value)));
        }
    }
}

/// `access.rules`, which must be an array of tables (`[[access.rules]]`); false when it
/// is not one at all.
fn check_rules(
    value: &mut toml::Value,
    sections: &[Shape],
    problems: &mut Vec<ConfigError>,
) -> bool {
    let rule = shape::<RuleSection>("access.rules");
    match value {
        toml::Value::Array(rules) => {
            for (index, entry) in rules.iter_mut().enumerate() {
                let prefix = format!("access.rules[{index}]");
                match entry {
                    toml::Value::Table(keys) => {
                        check_keys(&rule, keys, &prefix, sections, problems);
                    }
                    _ => problems.push(key_error(
                        prefix,
                        "each rule is a table: a [[access.rules]] line with its keys below it",
                    )),
                }
            }
            true
        }
        toml::Value::Table(_) => {
            problems.push(key_error(
                "access.rules",
                "write [[access.rules]] (two brackets) above each rule: [access.rules] with one \
                 bracket is a single table, not a list of rules",
            ));
            false
        }
        _ => {
            problems.push(key_error(
                "access.rules",
                "is a list of rules: write each as a [[access.rules]] line with its keys below it",
            ));
            false
        }
    }
}

/// A top-level name that is not a section.
fn outside_sections(name: &str, is_table: bool, sections: &[Shape]) -> String {
    let owners = owners(name, sections, "");
    if !is_table && !owners.is_empty() {
        return format!(
            "is not in a section; it is a key of {}: write it below that [section] line",
            owners.join(" or ")
        );
    }
    let names: Vec<&str> = sections.iter().map(|s| s.name).collect();
    match nearest(name, &names) {
        Some(near) => format!("unknown section; did you mean [{near}]?"),
        None => format!("unknown section; the sections are {}", names.join(", ")),
    }
}

/// A key its section does not have.
fn unknown_key(key: &str, shape: &Shape, prefix: &str, sections: &[Shape]) -> String {
    let here = if shape.name == "access.rules" {
        "a rule".to_owned()
    } else {
        format!("[{}]", shape.name)
    };
    if sections.iter().any(|s| s.name == key) {
        return format!("[{key}] is a section of its own, not part of {here}");
    }
    let owners = owners(key, sections, shape.name);
    if !owners.is_empty() {
        let rule_note = if shape.name == "access.rules" {
            "keys below a [[access.rules]] line belong to that rule, so write the others above the first rule"
        } else {
            "a key belongs to the [section] line above it"
        };
        return format!(
            "is not a key of {here}; it belongs in {} ({rule_note})",
            owners.join(" or ")
        );
    }
    match nearest(key, shape.keys) {
        Some(near) => format!("unknown key; did you mean {prefix}.{near}?"),
        None => format!("unknown key in {here}; config/ssogate.example.toml lists every key"),
    }
}

/// The sections other than `except` that have `key`, as `[name]`.
fn owners(key: &str, sections: &[Shape], except: &str) -> Vec<String> {
    let mut owners: Vec<String> = sections
        .iter()
        .filter(|s| s.name != except && s.keys.contains(&key))
        .map(|s| format!("[{}]", s.name))
        .collect();
    if except != "access.rules" && shape::<RuleSection>("").keys.contains(&key) && owners.is_empty()
    {
        owners.push("a [[access.rules]] entry".into());
    }
    owners
}

/// A mistyped value: what was expected, what was found, without quoting the value
/// (it may be a secret).
fn type_problem(message: &str, key: &str, value: &toml::Value) -> String {
    let Some((_, expected)) = message.rsplit_once("expected ") else {
        return message.to_owned();
    };
    let found = match value {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "a number",
        toml::Value::Float(_) => "a decimal number",
        toml::Value::Boolean(_) => "true/false",
        toml::Value::Datetime(_) => "a date",
        toml::Value::Array(_) => "a list",
        toml::Value::Table(_) => "a table",
    };
    let hint = if key.ends_with("listen") && value.is_integer() {
        " (an address with its port, in quotes: \"0.0.0.0:8443\")"
    } else {
        ""
    };
    format!("expected {expected}, found {found}{hint}")
}

/// The candidate closest to `word`, if it is close enough to be a typo.
pub fn nearest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let limit = if word.chars().count() > 8 { 3 } else { 2 };
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance, by characters.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != *cb))
                .min(above + 1)
                .min(row[j] + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

/// The field names serde knows for `T` (read from its `deserialize_struct` call).
fn keys_of<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Probe<'a>(&'a mut &'static [&'static str]);
    impl<'de> Deserializer<'de> for Probe<'_> {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("probed"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
            enum identifier ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_insertions_deletions_and_substitutions() {
        assert_eq!(edit_distance("read_timout", "read_timeout"), 1);
        assert_eq!(edit_distance("lifetme", "lifetime"), 1);
        assert_eq!(edit_distance("issuer", "isuser"), 2);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(nearest("lisen", &["listen", "threads"]), Some("listen"));
        assert_eq!(nearest("colour", &["listen", "threads"]), None);
    }

    #[test]
    fn the_keys_are_read_from_the_sections() {
        let keys = all_keys();
        assert!(keys.contains(&("session", "lifetime")));
        assert!(keys.contains(&("access", "rules")));
        assert!(keys.contains(&("tls", "cert_file")));
        assert!(keys.len() > 60, "{}", keys.len());
    }
}
