//! The config file's shape, exactly as an operator writes it (TOML, or environment
//! variables merged into the same tree). Nothing here is validated: `super::validate`
//! turns this into [`super::Settings`] and names the key of every mistake.
//!
//! Environment variables always arrive as strings, so every non-string key also
//! accepts a string (`"true"`, `"100000"`, `"a.com, b.com"`): see [`flex`].

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    pub listen: Option<String>,
    pub public_url: Option<String>,
    pub http_redirect_listen: Option<String>,
    pub acme_webroot: Option<String>,
    #[serde(deserialize_with = "flex::list")]
    pub trusted_proxies: Option<Vec<String>>,
    #[serde(deserialize_with = "flex::text")]
    pub header_read_timeout: Option<String>,
    #[serde(deserialize_with = "flex::text")]
    pub shutdown_grace: Option<String>,
    #[serde(deserialize_with = "flex::text")]
    pub idle_timeout: Option<String>,
    #[serde(deserialize_with = "flex::u64")]
    pub threads: Option<u64>,
    #[serde(deserialize_with = "flex::list")]
    pub allowed_redirect_hosts: Option<Vec<String>>,
    #[serde(deserialize_with = "flex::list")]
    pub host_aliases: Option<Vec<String>>,
    #[serde(deserialize_with = "flex::text")]
    pub max_header_size: Option<String>,
    #[serde(deserialize_with = "flex::text")]
    pub max_body_size: Option<String>,
    #[serde(deserialize_with = "flex::u64")]
    pub max_connections: Option<u64>,
    #[serde(deserialize_with = "flex::u64")]
    pub http2_max_streams: Option<u64>,
    #[serde(deserialize_with = "flex::u64")]
    pub max_connections_per_address: Option<u64>,
    #[serde(deserialize_with = "flex::u64")]
    pub max_tunnels: Option<u64>,
    #[serde(deserialize_with = "flex::text")]
    pub tunnel_idle_timeout: Option<String>,
    #[serde(deserialize_with = "flex::text")]
    pub tunnel_check_every: Option<String>,
    #[serde(deserialize_with = "flex::text")]
    pub send_timeout: Option<String>,
    #[serde(deserialize_with = "flex::text")]
    pub body_idle_timeout: Option<String>,
    pub metrics_listen: Option<String>,
    #[serde(deserialize_with = "flex::list")]
    pub metrics_networks: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    #[serde(deserialize_with = "flex::bool")]
    pub enabled: Option<bool>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    #[serde(deserialize_with = "flex::text")]
    pub hsts_max_age: Option<String>,
    pub acme_directory: Option<String>,
    pub acme_contact: Option<String>,
    #[serde(deserialize_with = "flex::list")]
    pub acme_names: Option<Vec<String>>,
    pub acme_state_dir: Option<String>,
    #[serde(deserialize_with = "flex::bool")]
    pub acme_accept_terms: Option<bool>,
    pub acme_ca_file: Option<String>,
    pub acme_eab_kid: Option<String>,
    pub acme_eab_hmac_key_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamSection {
    pub url: Option<String>,
    #[serde(deserialize_with = "flex::text")]
    pub connect_timeout: Option<String>,
    #[serde(deserialize_with = "flex::text")]
    pub read_timeout: Option<String>,
    pub ca_file: Option<String>,
    #[serde(deserialize_with = "flex::bool")]
    pub pass_host_header: Option<bool>,
    #[serde(deserialize_with = "flex::u64")]
    pub max_in_flight: Option<u64>,
    #[serde(deserialize_with = "flex::u64")]
    pub max_in_flight_per_client: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OidcSection {
    pub issuer: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub client_secret_file: Option<String>,
    #[serde(deserialize_with = "flex::list")]
    pub scopes: Option<Vec<String>>,
    pub provider_name: Option<String>,
    pub callback_path: Option<String>,
    pub ca_file: Option<String>,
    /// `false`, `true` or `"returning"`, judged in `config::oidc` (a bool as its word).
    #[serde(deserialize_with = "flex::bool_or_word")]
    pub skip_sign_in_page: Option<String>,
    pub post_logout_path: Option<String>,
    #[serde(deserialize_with = "flex::text")]
    pub http_timeout: Option<String>,
    #[serde(deserialize_with = "flex::text")]
    pub clock_skew: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionSection {
    pub cookie_name: Option<String>,
    #[serde(deserialize_with = "flex::list")]
    pub secrets: Option<Vec<String>>,
    pub secret_file: Option<String>,
    #[serde(deserialize_with = "flex::text")]
    pub lifetime: Option<String>,
    #[serde(deserialize_with = "flex::text")]
    pub idle_timeout: Option<String>,
    #[serde(deserialize_with = "flex::u64")]
    pub max_sessions: Option<u64>,
    #[serde(deserialize_with = "flex::text")]
    pub revalidate_every: Option<String>,
    #[serde(deserialize_with = "flex::text")]
    pub expired_token_grace: Option<String>,
    pub store: Option<String>,
    pub redis_url: Option<String>,
    pub redis_url_file: Option<String>,
    pub redis_ca_file: Option<String>,
    #[serde(deserialize_with = "flex::list")]
    pub redis_sentinels: Option<Vec<String>>,
    pub redis_master_name: Option<String>,
    pub redis_sentinel_password: Option<String>,
    pub redis_sentinel_password_file: Option<String>,
    #[serde(deserialize_with = "flex::list")]
    pub redis_cluster_nodes: Option<Vec<String>>,
    pub redis_key_prefix: Option<String>,
    #[serde(deserialize_with = "flex::text")]
    pub redis_timeout: Option<String>,
    #[serde(deserialize_with = "flex::text")]
    pub local_cache_ttl: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityHeadersSection {
    pub user: Option<String>,
    pub email: Option<String>,
    pub preferred_username: Option<String>,
    pub groups: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessSection {
    #[serde(deserialize_with = "flex::list")]
    pub allowed_email_domains: Option<Vec<String>>,
    #[serde(deserialize_with = "flex::list")]
    pub allowed_emails: Option<Vec<String>>,
    pub groups_claim: Option<String>,
    #[serde(deserialize_with = "flex::list")]
    pub required_groups: Option<Vec<String>>,
    #[serde(deserialize_with = "flex::bool")]
    pub require_email_verified: Option<bool>,
    pub allowed_emails_file: Option<String>,
    pub preset: Option<String>,
    #[serde(deserialize_with = "flex::list")]
    pub upstream_session_cookies: Option<Vec<String>>,
    pub rules: Option<Vec<RuleSection>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AssertionSection {
    pub header: Option<String>,
    pub key_file: Option<String>,
    #[serde(deserialize_with = "flex::list")]
    pub previous_key_files: Option<Vec<String>>,
    pub audience: Option<String>,
    #[serde(deserialize_with = "flex::text")]
    pub lifetime: Option<String>,
}

/// One `[[access.rules]]` entry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuleSection {
    pub name: Option<String>,
    #[serde(deserialize_with = "flex::list")]
    pub methods: Option<Vec<String>>,
    pub path: Option<String>,
    pub action: Option<String>,
    pub when_header: Option<String>,
    #[serde(deserialize_with = "flex::list")]
    pub allowed_groups: Option<Vec<String>>,
    #[serde(deserialize_with = "flex::list")]
    pub allowed_email_domains: Option<Vec<String>>,
    #[serde(deserialize_with = "flex::list")]
    pub allowed_emails: Option<Vec<String>>,
}

/// Items of a list written as one string, separated by commas and/or whitespace
/// (`"a, b c"`): environment variables, `OIDC_SCOPE`, string-valued claims.
pub fn split_list(text: &str) -> Vec<String> {
    text.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Deserializers that take the native TOML type or its spelling as a string.
pub mod flex {
    use serde::{Deserialize, Deserializer, de::Error};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Bool(bool),
        Int(i64),
        Text(String),
        Other(serde::de::IgnoredAny),
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrText {
        List(Vec<String>),
        Text(String),
        Other(serde::de::IgnoredAny),
    }

    pub fn bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
        match Scalar::deserialize(d)? {
            Scalar::Bool(b) => Ok(Some(b)),
            Scalar::Text(t) => match bool_word(&t) {
                Some(b) => Ok(Some(b)),
                None => Err(D::Error::custom(format!("`{t}` is not true or false"))),
            },
            _ => Err(D::Error::custom("expected true or false")),
        }
    }

    /// The truth value a word spells (`true`, `yes`, `on`, `1` and their opposites, in
    /// any case), as environment variables write booleans.
    pub fn bool_word(text: &str) -> Option<bool> {
        match text.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Some(true),
            "false" | "no" | "off" | "0" => Some(false),
            _ => None,
        }
    }

    /// A boolean or a word, as text (`true` as `"true"`), for a key that takes
    /// either; the key's own validation judges the word.
    pub fn bool_or_word<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        match Scalar::deserialize(d)? {
            Scalar::Bool(b) => Ok(Some(b.to_string())),
            Scalar::Text(t) => Ok(Some(t)),
            _ => Err(D::Error::custom("expected true, false or \"returning\"")),
        }
    }

    pub fn u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        match Scalar::deserialize(d)? {
            Scalar::Int(n) if n >= 0 => Ok(Some(n as u64)),
            Scalar::Text(t) => t
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| D::Error::custom(format!("`{t}` is not a whole number"))),
            _ => Err(D::Error::custom("expected a whole number")),
        }
    }

    /// A string, or a number written without quotes (durations in seconds).
    pub fn text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        match Scalar::deserialize(d)? {
            Scalar::Text(t) => Ok(Some(t)),
            Scalar::Int(n) => Ok(Some(n.to_string())),
            _ => Err(D::Error::custom("expected a string such as \"30s\"")),
        }
    }

    /// A TOML array of strings, or one string split on commas and whitespace.
    pub fn list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
        match ListOrText::deserialize(d)? {
            ListOrText::List(items) => Ok(Some(items)),
            ListOrText::Text(text) => Ok(Some(super::split_list(&text))),
            ListOrText::Other(_) => Err(D::Error::custom(
                "expected a list of strings such as [\"a\", \"b\"]",
            )),
        }
    }
}
