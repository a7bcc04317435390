//! `ssogate check` on the shipped example configs: they promise what they do. As
//! written they let in anyone who signs in (no enabled `allowed_email_domains =
//! ["example.com"]` that would refuse every address outside it or not verified), and
//! their admin-pages rule says, next to it, that it guards full page loads only (Sentry's
//! UI then calls `/api/0/`, which the rule does not cover).

use crate::cli::{config_file, ssogate};

fn read(relative: &str) -> String {
    std::fs::read_to_string(format!("{}/{relative}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// `ssogate check`'s route table for the example `relative`, its secrets, secret
/// files and peers replaced by stand-ins (nothing listens at the peers).
fn route_table(relative: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").unwrap();
    let text = read(relative)
        .replace("/etc/ssogate/oidc-client-secret", secret.to_str().unwrap())
        .replace("/etc/ssogate/session-secret", secret.to_str().unwrap())
        .replace("client-secret-from-the-provider", "the-real-client-secret");
    let config = config_file(&dir, &text);
    let nowhere = format!("http://{}", crate::support::unused_address());
    let output = ssogate()
        .args(["check", "--config"])
        .arg(&config)
        .env("SSOGATE_TLS_ENABLED", "false")
        .env(
            "SSOGATE_SESSION_SECRETS",
            "0123456789abcdef0123456789abcdef",
        )
        .env("OIDC_DOMAIN", format!("{nowhere}/api/oidc"))
        .env("SSOGATE_UPSTREAM_URL", &nowhere)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.starts_with("OK   config: "),
        "{relative} does not load:\n{stdout}"
    );
    stdout
        .lines()
        .filter(|line| line.starts_with("       authenticated"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_examples_let_in_anyone_who_signs_in_as_written() {
    for example in ["config/sentry.toml", "config/ssogate.example.toml"] {
        let rows = route_table(example);
        assert!(rows.len() >= 2, "{example}: {rows:#?}");
        for row in &rows {
            assert!(
                row.ends_with("+ [access]: anyone who signs in"),
                "{example}: a restriction is enabled as shipped: {row}"
            );
        }
    }
}

#[test]
fn the_admin_pages_rule_says_it_guards_full_page_loads_only() {
    for (example, rule) in [
        ("config/sentry.toml", "name = \"Sentry admin\""),
        ("config/ssogate.example.toml", "name = \"admin pages\""),
    ] {
        let text = read(example);
        let at = text
            .find(rule)
            .unwrap_or_else(|| panic!("{example}: no {rule}"));
        // The comment block around the rule, up to the next rule or section.
        let start = text[..at].rfind("\n\n").unwrap_or(0);
        let end = text[at..].find("\n\n").map_or(text.len(), |n| at + n);
        let around = &text[start..end];
        assert!(
            around.contains("/api/0/") && around.contains("full page"),
            "{example}: the rule does not say it guards full page loads only:\n{around}"
        );
    }
}
