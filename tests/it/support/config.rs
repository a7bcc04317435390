//! The gateway's TOML for tests, written in one place: the keys every config needs,
//! the test client's credentials, and extra keys per section where a test wants them.

use ssogate::config::Settings;

use super::{CLIENT_ID, CLIENT_SECRET};

/// A session secret long enough for the config's check.
pub const TEST_SESSION_SECRET: &str = "test-session-secret-0123456789abcdefghijkl";

/// A gateway config under construction: `[server]`, `[tls]`, `[upstream]`, `[oidc]`,
/// `[session]` and, when given keys, `[access]`, then any further tables.
#[derive(Clone, Debug)]
pub struct GatewayToml {
    server: String,
    tls: String,
    upstream: String,
    oidc: String,
    session: String,
    access: String,
    tables: String,
}

impl GatewayToml {
    /// Serving `public_url` (without TLS unless [`Self::tls`] says otherwise) in front
    /// of `upstream_url`, signing in at `issuer` as the test client, with one session
    /// secret.
    pub fn new(public_url: &str, upstream_url: &str, issuer: &str) -> Self {
        Self {
            server: format!("public_url = \"{public_url}\"\n"),
            tls: "enabled = false\n".into(),
            upstream: format!("url = \"{upstream_url}\"\n"),
            oidc: format!(
                "issuer = \"{issuer}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"{CLIENT_SECRET}\"\n"
            ),
            session: format!("secrets = [\"{TEST_SESSION_SECRET}\"]\n"),
            access: String::new(),
            tables: String::new(),
        }
    }

    /// Adds keys (TOML lines) to `[server]`.
    pub fn server(mut self, keys: &str) -> Self {
        push(&mut self.server, keys);
        self
    }

    /// Replaces the `[tls]` section's keys (`enabled = false` by default).
    pub fn tls(mut self, keys: &str) -> Self {
        self.tls.clear();
        push(&mut self.tls, keys);
        self
    }

    /// Adds keys to `[upstream]`.
    pub fn upstream(mut self, keys: &str) -> Self {
        push(&mut self.upstream, keys);
        self
    }

    /// Adds keys to `[oidc]`.
    pub fn oidc(mut self, keys: &str) -> Self {
        push(&mut self.oidc, keys);
        self
    }

    /// Replaces the session secrets.
    pub fn secrets(mut self, secrets: &[&str]) -> Self {
        let quoted: Vec<String> = secrets.iter().map(|s| format!("\"{s}\"")).collect();
        let rest: String = self
            .session
            .lines()
            .filter(|line| !line.starts_with("secrets = "))
            .map(|line| format!("{line}\n"))
            .collect();
        self.session = format!("secrets = [{}]\n{rest}", quoted.join(", "));
        self
    }

    /// Adds keys to `[session]`.
    pub fn session(mut self, keys: &str) -> Self {
        push(&mut self.session, keys);
        self
    }

    /// Adds keys to `[access]`.
    pub fn access(mut self, keys: &str) -> Self {
        push(&mut self.access, keys);
        self
    }

    /// Adds whole tables (`[identity_headers]`, `[[access.rules]]`, ...) at the end.
    pub fn tables(mut self, toml: &str) -> Self {
        push(&mut self.tables, toml);
        self
    }

    /// The config's text.
    pub fn render(&self) -> String {
        let mut text = format!(
            "[server]\n{}[tls]\n{}[upstream]\n{}[oidc]\n{}[session]\n{}",
            self.server, self.tls, self.upstream, self.oidc, self.session
        );
        if !self.access.is_empty() {
            text.push_str("[access]\n");
            text.push_str(&self.access);
        }
        text.push_str(&self.tables);
        text
    }

    /// The settings the gateway reads from it; panics, showing the text, if refused.
    pub fn settings(&self) -> Settings {
        let text = self.render();
        Settings::from_toml(&text, "(test)", std::iter::empty())
            .unwrap_or_else(|e| panic!("test config refused: {e}\n{text}"))
    }
}

fn push(section: &mut String, keys: &str) {
    let keys = keys.trim_matches('\n');
    if !keys.is_empty() {
        section.push_str(keys);
        section.push('\n');
    }
}
