//! Configuration: one TOML file, overlaid by environment variables, validated into
//! [`Settings`] before anything starts.
//!
//! Sources, later ones winning: the file; the four names from the Encvoy ID guide for
//! the sentry-auth-oidc plugin (`OIDC_DOMAIN`, `OIDC_CLIENT_ID`, `OIDC_CLIENT_SECRET`,
//! `OIDC_SCOPE`); then `SSOGATE_<SECTION>_<KEY>` for every key. Every mistake is a
//! [`ConfigError`] that names the key and says what is wrong; this module never starts
//! anything and never logs secrets.

mod duration;
mod file;
mod shape;
mod size;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use ipnet::IpNet;
use url::Url;

pub use duration::parse_duration;
pub use file::split_list;
pub use shape::all_keys;
pub use size::parse_size;

use crate::rules::{
    Action, Admission, AllowedHosts, Requirements, RouteRule, RouteRules, SENTRY_SESSION_COOKIES,
    sentry_preset,
};

/// The sections of the file, also the `<SECTION>` part of `SSOGATE_<SECTION>_<KEY>`.
const SECTIONS: [&str; 8] = [
    "server",
    "tls",
    "upstream",
    "oidc",
    "session",
    "identity_headers",
    "access",
    "assertion",
];

/// Environment variables that are not config keys.
const NON_KEY_VARIABLES: [&str; 3] = ["SSOGATE_CONFIG", "SSOGATE_LOG", "SSOGATE_LOG_FORMAT"];

/// The names an operator already has from the Encvoy ID guide for sentry-auth-oidc.
const PLUGIN_VARIABLES: [(&str, &str); 4] = [
    ("OIDC_DOMAIN", "issuer"),
    ("OIDC_CLIENT_ID", "client_id"),
    ("OIDC_CLIENT_SECRET", "client_secret"),
    ("OIDC_SCOPE", "scopes"),
];

/// Shortest session secret accepted, in bytes (the cookie key is derived from it).
pub const MIN_SECRET_LEN: usize = 32;

/// The secrets `config/ssogate.example.toml` holds in place of real ones. The Debian
/// package installs that file as `/etc/ssogate/ssogate.toml`: refused as written, so
/// that a gateway never runs with a session key or client secret everyone can read.
pub const SESSION_SECRET_PLACEHOLDER: &str = "replace-me-with-the-output-of-ssogate-gen-secret";
pub const CLIENT_SECRET_PLACEHOLDER: &str = "client-secret-from-the-provider";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: String, message: String },
    /// A key has a bad value (or a required key is missing); `from` names the
    /// environment variable the value came from.
    #[error("{key}{}: {problem}", from_note(.from.as_deref()))]
    Key {
        key: String,
        problem: String,
        from: Option<String>,
    },
    /// Every problem of the file, when there is more than one.
    #[error("{} problems: {}", .0.len(), .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Several(Vec<ConfigError>),
}

fn from_note(variable: Option<&str>) -> String {
    variable.map_or(String::new(), |v| {
        format!(" (set by environment variable {v})")
    })
}

impl ConfigError {
    /// One error for a list of problems (which must not be empty).
    fn from_problems(mut problems: Vec<ConfigError>) -> ConfigError {
        if problems.len() == 1 {
            problems.remove(0)
        } else {
            ConfigError::Several(problems)
        }
    }

    /// Each problem on its own.
    pub fn problems(&self) -> Vec<&ConfigError> {
        match self {
            ConfigError::Several(all) => all.iter().flat_map(ConfigError::problems).collect(),
            one => vec![one],
        }
    }

    fn into_problems(self) -> Vec<ConfigError> {
        match self {
            ConfigError::Several(all) => all
                .into_iter()
                .flat_map(ConfigError::into_problems)
                .collect(),
            one => vec![one],
        }
    }

    /// The section a key problem is about (`server` for `server.listen`).
    fn section(&self) -> Option<&str> {
        match self {
            ConfigError::Key { key, .. } => key.split(['.', '[']).next(),
            _ => None,
        }
    }
}

fn key_error(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Key {
        key: key.into(),
        problem: problem.into(),
        from: None,
    }
}

/// A value set by an environment variable rather than the file.
#[derive(Clone, Debug, PartialEq)]
pub struct FromEnvironment {
    /// The key, e.g. `oidc.issuer`.
    pub key: String,
    /// The variable, e.g. `OIDC_DOMAIN`.
    pub variable: String,
    /// The file set this key too, and the variable won.
    pub overrides_file: bool,
}

/// Everything the gateway needs, checked and with defaults filled in.
#[derive(Clone, Debug)]
pub struct Settings {
    pub server: ServerSettings,
    pub tls: TlsSettings,
    /// `Strict-Transport-Security: max-age=...` on every response, when set.
    pub hsts_max_age: Option<Duration>,
    pub upstream: UpstreamSettings,
    pub oidc: OidcSettings,
    pub session: SessionSettings,
    pub identity_headers: IdentityHeaderNames,
    pub access: AccessSettings,
    /// The signed identity assertion for the upstream; `None` (off) without
    /// `assertion.key_file`.
    pub assertion: Option<AssertionSettings>,
    /// The keys environment variables set (names only: values may be secrets).
    pub from_environment: Vec<FromEnvironment>,
}

#[derive(Clone, Debug)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    /// The address people type, origin only (`https://sentry.example.com`).
    pub public_url: Url,
    /// Optional plain-HTTP listener that redirects every request to `public_url`.
    pub http_redirect_listen: Option<SocketAddr>,
    /// A directory whose `.well-known/acme-challenge/` the plain-HTTP listener serves
    /// instead of redirecting (certbot's `--webroot`), for HTTP-01 renewals.
    pub acme_webroot: Option<PathBuf>,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    pub header_read_timeout: Duration,
    /// How long in-flight requests may take to finish after SIGTERM/SIGINT.
    pub shutdown_grace: Duration,
    /// A connection on which no request has started for this long is closed
    /// (HTTP/2 mostly: HTTP/1.1 waits at most `header_read_timeout` for a request).
    pub idle_timeout: Duration,
    /// Serving threads, each with its own single-threaded runtime (default: one per
    /// core this process may use).
    pub threads: usize,
    /// Hosts besides this one that return targets (`rd`) may point to.
    pub allowed_redirect_hosts: AllowedHosts,
    /// Other names this gateway answers for besides `public_url`'s host (lower case,
    /// IPv6 in brackets, no port); their requests reach the upstream as `public_url`'s.
    pub host_aliases: Vec<String>,
    /// Largest request head (request line and headers) in bytes; more gets 431.
    pub max_header_size: usize,
    /// Largest request body forwarded, in bytes; more gets 413.
    pub max_body_size: u64,
    /// Client connections served at once; beyond this, new ones wait to be accepted.
    /// `None` (not set): [`DEFAULT_MAX_CONNECTIONS`], or fewer if the open-files limit
    /// allows fewer.
    pub max_connections: Option<usize>,
    /// Client connections one address may have open (trusted proxies are exempt);
    /// beyond this, its new connections are closed at once.
    pub max_connections_per_address: usize,
    /// Concurrent streams per HTTP/2 connection.
    pub http2_max_streams: u32,
    /// Upgraded connections (WebSocket tunnels) open at once; each also keeps its
    /// place in `max_connections`. Beyond this an upgrade gets 503.
    pub max_tunnels: usize,
    /// A tunnel through which nothing moved for this long is closed.
    pub tunnel_idle_timeout: Duration,
    /// How often a tunnel's session and rules are checked again (at most a minute).
    pub tunnel_check_every: Duration,
    /// A response the client takes nothing of for this long (a send stall) is
    /// abandoned and its upstream connection released; a connection being closed
    /// gracefully that writes (almost) nothing for this long is closed.
    pub send_timeout: Duration,
    /// A request body that delivers no byte for this long is cut (408).
    pub body_idle_timeout: Duration,
    /// A separate plain-HTTP listener for `/metrics`; without it, `/metrics` is on the
    /// main listener for direct clients from `metrics_networks`.
    pub metrics_listen: Option<SocketAddr>,
    pub metrics_networks: Vec<IpNet>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum TlsSettings {
    /// PEM certificate chain and private key files.
    Files {
        cert_file: PathBuf,
        key_file: PathBuf,
    },
    /// PEM text held in memory (the demo's generated certificate, tests).
    Pem { cert_pem: String, key_pem: String },
    /// A certificate the gateway gets and renews itself from an ACME CA.
    Acme(AcmeSettings),
    /// Plain HTTP: another TLS terminator sits in front.
    Off,
}

impl TlsSettings {
    /// The certificate and key files, when they come from files (and can be reloaded).
    pub fn files(&self) -> Option<(&Path, &Path)> {
        match self {
            Self::Files {
                cert_file,
                key_file,
            } => Some((cert_file, key_file)),
            _ => None,
        }
    }
}

/// The `tls.acme_*` keys: where and as whom the gateway orders its certificate.
#[derive(Clone, Debug, PartialEq)]
pub struct AcmeSettings {
    /// The CA's directory URL (default: Let's Encrypt production).
    pub directory: Url,
    /// The account's contact, `mailto:` and the address.
    pub contact: String,
    /// The names on the certificate (default: `server.public_url`'s host).
    pub names: Vec<String>,
    /// Where the account key and the certificate are kept.
    pub state_dir: PathBuf,
    /// Roots trusted for the directory's HTTPS (a private CA, pebble); default: the
    /// system's.
    pub ca_file: Option<PathBuf>,
    /// The external account binding the CA asks for (`tls.acme_eab_*`), if any.
    pub external_account: Option<ExternalAccountBinding>,
}

/// An ACME external account binding (RFC 8555, section 7.3.4): the key ID and the
/// HMAC key a CA such as ZeroSSL or Google Trust Services gives with an account of
/// theirs. Its `Debug` leaves the key out.
#[derive(Clone, PartialEq)]
pub struct ExternalAccountBinding {
    pub kid: String,
    pub hmac_key: Vec<u8>,
}

impl std::fmt::Debug for ExternalAccountBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalAccountBinding")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// Let's Encrypt's production directory, `tls.acme_directory`'s default.
pub const LETS_ENCRYPT_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory, for trying the settings out (untrusted roots).
pub const LETS_ENCRYPT_STAGING_DIRECTORY: &str =
    "https://acme-staging-v02.api.letsencrypt.org/directory";

#[derive(Clone, Debug)]
pub struct UpstreamSettings {
    pub url: Url,
    pub connect_timeout: Duration,
    /// Longest wait for the upstream's response headers.
    pub read_timeout: Duration,
    pub ca_file: Option<PathBuf>,
    /// Forward the client's `Host` (true) or the upstream URL's host (false).
    pub pass_host_header: bool,
    /// Upstream requests in flight at once, all clients; beyond this, 503.
    pub max_in_flight: usize,
    /// Upstream requests in flight at once per client address; beyond this, 503.
    pub max_in_flight_per_client: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct OidcSettings {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    pub scopes: Vec<String>,
    pub provider_name: String,
    pub callback_path: String,
    pub ca_file: Option<PathBuf>,
    pub skip_sign_in_page: SkipSignInPage,
    /// Where the provider sends people back after signing out.
    pub post_logout_path: String,
    pub http_timeout: Duration,
    pub clock_skew: Duration,
}

/// Whether a navigation without a session sees the sign-in page or goes straight to
/// the provider (`oidc.skip_sign_in_page`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipSignInPage {
    /// `false`: always the page, one click.
    Never,
    /// `true`: always straight to the provider, no page.
    Always,
    /// `"returning"` (the default): the page on a browser's first visit; straight to
    /// the provider for a browser that signed in here before and has not signed out
    /// (as mod_auth_openidc does), so an ended session costs no click.
    Returning,
}

/// The word for [`SkipSignInPage::Returning`].
const RETURNING: &str = "returning";

/// `oidc.skip_sign_in_page`: `false`, `true` (or their spellings as words, as from an
/// environment variable) or `"returning"`; that when not set.
fn skip_sign_in_page(value: Option<String>) -> Result<SkipSignInPage, ConfigError> {
    let Some(text) = value else {
        return Ok(SkipSignInPage::Returning);
    };
    match file::flex::bool_word(&text) {
        Some(true) => Ok(SkipSignInPage::Always),
        Some(false) => Ok(SkipSignInPage::Never),
        None if text.trim().eq_ignore_ascii_case(RETURNING) => Ok(SkipSignInPage::Returning),
        None => Err(key_error(
            "oidc.skip_sign_in_page",
            format!(
                "`{text}` is not one of false (always the sign-in page), true (never the page) \
                 or \"{RETURNING}\" (the page only for a browser that has not signed in here before)"
            ),
        )),
    }
}

/// `server.max_connections` when not set (lowered to fit the open-files limit).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

#[derive(Clone, Debug)]
pub struct SessionSettings {
    pub cookie_name: String,
    /// The first encrypts new cookies; all of them decrypt (rotation).
    pub secrets: Vec<String>,
    pub lifetime: Duration,
    pub idle_timeout: Duration,
    pub max_sessions: u64,
    /// Ask the provider again whether a session still stands this often (off: never,
    /// beyond refreshing tokens that expire).
    pub revalidate_every: Option<Duration>,
    /// How long a session stays trusted after its access token expired without being
    /// renewed (no refresh token, or the provider could not be reached to refresh it).
    /// Zero: the access token's lifetime bounds how long the provider's last word counts.
    pub expired_token_grace: Duration,
    /// Where sessions live: this process only, or Redis shared by every replica.
    pub store: StoreSettings,
}

#[derive(Clone, Debug, PartialEq)]
pub enum StoreSettings {
    Memory,
    Redis(Box<RedisSettings>),
}

#[derive(Clone, PartialEq)]
pub struct RedisSettings {
    /// `redis://` or `rediss://` (TLS), with any password in it.
    pub url: Url,
    /// Extra CA for `rediss://` (else the system's roots).
    pub ca_file: Option<PathBuf>,
    /// Prepended to every key and channel, so several gateways can share a Redis.
    pub key_prefix: String,
    /// Longest wait for one Redis command or connection attempt.
    pub timeout: Duration,
    /// How long a replica keeps a session it read from Redis before reading it again.
    pub local_cache_ttl: Duration,
    /// Redis Sentinel: the master is whichever server the sentinels name (`url` then
    /// carries only the scheme, the data nodes' password and the database number).
    pub sentinel: Option<SentinelSettings>,
    /// Redis Cluster: the seed nodes (`url` is then the first of them).
    pub cluster_nodes: Option<Vec<Url>>,
}

/// Where the sentinels are and which master they watch for us.
#[derive(Clone, PartialEq)]
pub struct SentinelSettings {
    /// `host:port` of each sentinel, asked in this order.
    pub addresses: Vec<(String, u16)>,
    /// The name the sentinels monitor the master under (`sentinel monitor <name> ...`).
    pub master_name: String,
    /// `requirepass` of the sentinels, if they have one.
    pub password: Option<String>,
}

impl SentinelSettings {
    /// `host:port, host:port` for messages.
    pub fn address_list(&self) -> String {
        self.addresses
            .iter()
            .map(|(host, port)| format!("{host}:{port}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl std::fmt::Debug for SentinelSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelSettings")
            .field("addresses", &self.addresses)
            .field("master_name", &self.master_name)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

impl RedisSettings {
    /// The URL without its password, for logs and errors.
    pub fn redacted_url(&self) -> String {
        redacted(&self.url)
    }
}

/// A Redis URL without its password, for logs and errors.
pub fn redacted(url: &Url) -> String {
    let mut url = url.clone();
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    url.to_string()
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &self.redacted_url())
            .field("ca_file", &self.ca_file)
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .field("local_cache_ttl", &self.local_cache_ttl)
            .field("sentinel", &self.sentinel)
            .field(
                "cluster_nodes",
                &self
                    .cluster_nodes
                    .as_ref()
                    .map(|nodes| nodes.iter().map(redacted).collect::<Vec<_>>()),
            )
            .finish()
    }
}

/// Header names the gateway sets on forwarded requests; `None` means "do not send".
#[derive(Clone, Debug)]
pub struct IdentityHeaderNames {
    pub user: Option<HeaderName>,
    pub email: Option<HeaderName>,
    pub preferred_username: Option<HeaderName>,
    pub groups: Option<HeaderName>,
}

impl IdentityHeaderNames {
    pub fn iter(&self) -> impl Iterator<Item = &HeaderName> {
        [
            &self.user,
            &self.email,
            &self.preferred_username,
            &self.groups,
        ]
        .into_iter()
        .flatten()
    }
}

/// `[assertion]`: what the signed identity assertion says and how it is signed (the
/// key files are read by `crate::assertion`, at start and at every reload).
#[derive(Clone, Debug, PartialEq)]
pub struct AssertionSettings {
    /// The header it travels in.
    pub header: HeaderName,
    /// The P-256 private key (PEM) that signs.
    pub key_file: PathBuf,
    /// Further keys (PEM, public or private) published in the JWKS, not used to sign.
    pub previous_key_files: Vec<PathBuf>,
    /// The `aud` claim (default: the upstream's origin).
    pub audience: String,
    /// From `iat` to `exp`, whole seconds.
    pub lifetime: Duration,
}

/// The assertion header when `assertion.header` is not set.
pub const DEFAULT_ASSERTION_HEADER: &str = "x-ssogate-jwt-assertion";

#[derive(Clone, Debug, Default)]
pub struct AccessSettings {
    /// Lower-case domains; empty means any domain.
    pub allowed_email_domains: Vec<String>,
    /// Lower-case addresses; checked in addition to the domains (either admits).
    pub allowed_emails: Vec<String>,
    pub groups_claim: String,
    /// Any one of these admits; empty means no group is required.
    pub required_groups: Vec<String>,
    pub require_email_verified: bool,
    /// A file of allowed addresses, one per line, reloaded when it changes.
    pub allowed_emails_file: Option<PathBuf>,
    /// `"sentry"` when the Sentry preset is on.
    pub preset: Option<String>,
    /// Route rules in order: the operator's, then the preset's.
    pub rules: RouteRules,
    /// Cookies of the upstream's own sign-in (the preset's and the operator's), removed
    /// from requests a rule let through because of a credential they carry.
    pub upstream_session_cookies: Vec<String>,
}

impl Settings {
    /// Loads `path` (if any), overlays the process environment, validates.
    pub fn load(path: Option<&Path>) -> Result<Settings, ConfigError> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?,
            None => String::new(),
        };
        let origin = path.map_or("(none)".to_owned(), |p| p.display().to_string());
        Self::from_toml(&text, &origin, std::env::vars())
    }

    /// Parses TOML text, overlays the given environment, validates.
    pub fn from_toml(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let mut table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    path: origin.to_owned(),
                    message: syntax_problem(text, &e),
                })?;
        let mut problems = Vec::new();
        let from_environment = overlay_environment(&mut table, env, &mut problems);
        problems.extend(shape::check(&mut table));
        let name_variables = |problems: Vec<ConfigError>| {
            problems
                .into_iter()
                .map(|mut problem| {
                    if let ConfigError::Key { key, from, .. } = &mut problem {
                        *from = from_environment
                            .iter()
                            .find(|set| {
                                key == &set.key
                                    || key.starts_with(&format!("{}[", set.key))
                                    || key.starts_with(&format!("{}.", set.key))
                            })
                            .map(|set| set.variable.clone());
                    }
                    problem
                })
                .collect()
        };
        match validate(table, problems) {
            Ok(mut settings) => {
                settings.from_environment = from_environment;
                Ok(settings)
            }
            Err(mut problems) => {
                // In the file's section order (a stable sort keeps each section's own).
                problems.sort_by_key(|problem| {
                    problem
                        .section()
                        .and_then(|name| SECTIONS.iter().position(|s| *s == name))
                        .unwrap_or(SECTIONS.len())
                });
                Err(ConfigError::from_problems(name_variables(problems)))
            }
        }
    }
}

/// The TOML error's message and position, without the line of the file it quotes
/// (which may hold a secret, and would then reach the terminal or, on reload, the log).
fn syntax_problem(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim_end();
    match error.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("{message} (line {line}, column {column})")
        }
        None => message.to_owned(),
    }
}

/// Merges `OIDC_*` and `SSOGATE_<SECTION>_<KEY>` variables into the parsed file;
/// returns which keys they set.
fn overlay_environment(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
    problems: &mut Vec<ConfigError>,
) -> Vec<FromEnvironment> {
    let mut plugin = Vec::new();
    let mut own = Vec::new();
    for (name, value) in env {
        if let Some((variable, key)) = PLUGIN_VARIABLES.iter().find(|(var, _)| *var == name) {
            plugin.push(("oidc", key.to_string(), value, *variable));
        } else if let Some(rest) = name.strip_prefix("SSOGATE_") {
            if NON_KEY_VARIABLES.contains(&name.as_str()) {
                continue;
            }
            let rest = rest.to_ascii_lowercase();
            let Some(section) = SECTIONS
                .iter()
                .filter(|s| rest.starts_with(&format!("{s}_")))
                .max_by_key(|s| s.len())
            else {
                problems.push(key_error(
                    &name,
                    format!(
                        "no such section; use SSOGATE_<SECTION>_<KEY> with SECTION one of {}",
                        SECTIONS.join(", ").to_ascii_uppercase()
                    ),
                ));
                continue;
            };
            own.push((*section, rest[section.len() + 1..].to_owned(), value, name));
        }
    }
    let plugin = plugin
        .into_iter()
        .map(|(section, key, value, name)| (section, key, value, name.to_owned()));
    let mut set: Vec<FromEnvironment> = Vec::new();
    for (section, key, value, variable) in plugin.chain(own) {
        let entry = table
            .entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let toml::Value::Table(section_table) = entry else {
            // The file's own shape problem ("is a section") is reported for it.
            continue;
        };
        let in_file = section_table.contains_key(&key);
        section_table.insert(key.clone(), toml::Value::String(value));
        let key = format!("{section}.{key}");
        let overrides_file = match set.iter().position(|earlier| earlier.key == key) {
            Some(earlier) => set.remove(earlier).overrides_file,
            None => in_file,
        };
        set.push(FromEnvironment {
            key,
            variable,
            overrides_file,
        });
    }
    set
}

/// Deserializes one section (whose keys `shape::check` has already checked).
fn section<T: serde::de::DeserializeOwned + Default>(
    table: &mut toml::Table,
    name: &str,
) -> Result<T, ConfigError> {
    match table.remove(name) {
        None => Ok(T::default()),
        Some(value) => value
            .try_into()
            .map_err(|e: toml::de::Error| key_error(format!("[{name}]"), e.message().to_owned())),
    }
}

/// The value of `result`, or `None` with its problems added to `problems`.
fn kept<T>(problems: &mut Vec<ConfigError>, result: Result<T, ConfigError>) -> Option<T> {
    result.map_err(|e| problems.extend(e.into_problems())).ok()
}

/// Checks every section, collecting every problem: `shaped` holds those of the file's
/// shape, and a section with one is not judged further (its values would be read
/// with the offending key missing, which could only mislead).
fn validate(
    mut table: toml::Table,
    shaped: Vec<ConfigError>,
) -> Result<Settings, Vec<ConfigError>> {
    let mut found = Vec::new();
    let server: file::ServerSection =
        kept(&mut found, section(&mut table, "server")).unwrap_or_default();
    let tls: file::TlsSection = kept(&mut found, section(&mut table, "tls")).unwrap_or_default();
    let upstream: file::UpstreamSection =
        kept(&mut found, section(&mut table, "upstream")).unwrap_or_default();
    let oidc: file::OidcSection = kept(&mut found, section(&mut table, "oidc")).unwrap_or_default();
    let session: file::SessionSection =
        kept(&mut found, section(&mut table, "session")).unwrap_or_default();
    let headers: file::IdentityHeadersSection =
        kept(&mut found, section(&mut table, "identity_headers")).unwrap_or_default();
    let access: file::AccessSection =
        kept(&mut found, section(&mut table, "access")).unwrap_or_default();
    let assertion: file::AssertionSection =
        kept(&mut found, section(&mut table, "assertion")).unwrap_or_default();
    let https_written = server
        .public_url
        .as_deref()
        .is_some_and(|url| url.trim_start().starts_with("https:"));
    let hsts_max_age = kept(
        &mut found,
        tls.hsts_max_age
            .clone()
            .map(|text| {
                parse_duration(&text).map_err(|problem| key_error("tls.hsts_max_age", problem))
            })
            .transpose(),
    );
    let tls = kept(&mut found, validate_tls(tls));
    let public_host = server
        .public_url
        .as_deref()
        .and_then(|text| Url::parse(text).ok())
        .and_then(|url| url.host_str().map(str::to_owned));
    let tls = tls.map(|tls| match tls {
        TlsSettings::Acme(mut acme) if acme.names.is_empty() => {
            acme.names.extend(public_host);
            TlsSettings::Acme(acme)
        }
        other => other,
    });
    if let Some(TlsSettings::Acme(acme)) = &tls
        && let Some(address) = acme
            .names
            .iter()
            .find(|name| name.parse::<std::net::IpAddr>().is_ok())
    {
        found.push(key_error(
            "tls.acme_names",
            format!(
                "`{address}` is an IP address (server.public_url's host when tls.acme_names is not set): ACME certificates here are for DNS names"
            ),
        ));
    }
    if let (Some(Some(_)), Some(TlsSettings::Off)) = (&hsts_max_age, &tls) {
        found.push(key_error(
            "tls.hsts_max_age",
            "is sent only over TLS; with tls.enabled = false let the TLS terminator in front send it",
        ));
    }
    let server = kept(
        &mut found,
        validate_server(server, tls.as_ref().unwrap_or(&TlsSettings::Off)),
    );
    let https = server
        .as_ref()
        .map_or(https_written, |s| s.public_url.scheme() == "https");
    let session = kept(&mut found, validate_session(session, https));
    let access = kept(&mut found, validate_access(access));
    if let (Some(session), Some(access)) = (&session, &access)
        && access
            .upstream_session_cookies
            .contains(&session.cookie_name)
    {
        found.push(key_error(
            "session.cookie_name",
            format!(
                "`{}` is also one of the upstream's session cookies (access.upstream_session_cookies); pick another name",
                session.cookie_name
            ),
        ));
    }
    let upstream = kept(&mut found, validate_upstream(upstream));
    let oidc = kept(&mut found, validate_oidc(oidc));
    let identity_headers = kept(&mut found, validate_identity_headers(headers));
    let assertion = kept(
        &mut found,
        validate_assertion(assertion, upstream.as_ref(), identity_headers.as_ref()),
    );
    let shaken: Vec<&str> = shaped.iter().filter_map(ConfigError::section).collect();
    found.retain(|problem| problem.section().is_none_or(|s| !shaken.contains(&s)));
    let problems: Vec<ConfigError> = shaped.into_iter().chain(found).collect();
    if !problems.is_empty() {
        return Err(problems);
    }
    // Without a problem, every part is there.
    let part = || vec![key_error("config", "a section was not read")];
    Ok(Settings {
        server: server.ok_or_else(part)?,
        tls: tls.ok_or_else(part)?,
        hsts_max_age: hsts_max_age.ok_or_else(part)?,
        upstream: upstream.ok_or_else(part)?,
        oidc: oidc.ok_or_else(part)?,
        session: session.ok_or_else(part)?,
        identity_headers: identity_headers.ok_or_else(part)?,
        access: access.ok_or_else(part)?,
        assertion: assertion.ok_or_else(part)?,
        from_environment: Vec::new(),
    })
}

fn duration_or(
    key: &str,
    value: Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(text) => parse_duration(&text).map_err(|problem| key_error(key, problem)),
    }
}

fn socket_addr(key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse().map_err(|_| {
        key_error(
            key,
            format!("`{text}` is not an address with a port, e.g. 0.0.0.0:8443 or [::]:8443"),
        )
    })
}

fn existing_file(key: &str, text: Option<String>) -> Result<Option<PathBuf>, ConfigError> {
    let Some(text) = text else { return Ok(None) };
    let path = PathBuf::from(&text);
    match std::fs::metadata(&path) {
        Ok(meta) if meta.is_file() => Ok(Some(path)),
        Ok(_) => Err(key_error(key, format!("`{text}` is not a file"))),
        Err(e) => Err(missing_file(key, &text, &e)),
    }
}

/// `server.acme_webroot`: a directory, useful only with the plain-HTTP listener.
fn acme_webroot(text: Option<String>, listener: bool) -> Result<Option<PathBuf>, ConfigError> {
    const KEY: &str = "server.acme_webroot";
    let Some(text) = text else { return Ok(None) };
    if !listener {
        return Err(key_error(
            KEY,
            "ACME challenges are answered on the plain-HTTP listener: set server.http_redirect_listen too (port 80)",
        ));
    }
    match std::fs::metadata(&text) {
        Ok(meta) if meta.is_dir() => Ok(Some(PathBuf::from(text))),
        Ok(_) => Err(key_error(
            KEY,
            format!("`{text}` is not a directory (certbot's --webroot-path)"),
        )),
        Err(e) => Err(missing_file(KEY, &text, &e)),
    }
}

/// A file that cannot be found, or that this user may not reach.
fn missing_file(key: &str, text: &str, error: &std::io::Error) -> ConfigError {
    if error.kind() == std::io::ErrorKind::PermissionDenied {
        key_error(
            key,
            format!(
                "`{text}` cannot be reached by this user (permission denied); the service user \
                 must be able to read it: check with sudo -u ssogate ssogate check"
            ),
        )
    } else {
        key_error(key, format!("file `{text}` does not exist"))
    }
}

fn validate_tls(tls: file::TlsSection) -> Result<TlsSettings, ConfigError> {
    if tls.enabled == Some(false) {
        return Ok(TlsSettings::Off);
    }
    let acme_keys = [
        &tls.acme_directory,
        &tls.acme_contact,
        &tls.acme_state_dir,
        &tls.acme_ca_file,
        &tls.acme_eab_kid,
        &tls.acme_eab_hmac_key_file,
    ];
    if acme_keys.iter().any(|key| key.is_some())
        || tls.acme_names.is_some()
        || tls.acme_accept_terms.is_some()
    {
        return validate_acme(tls).map(TlsSettings::Acme);
    }
    let cert_file = existing_file("tls.cert_file", tls.cert_file)?.ok_or_else(|| {
        key_error(
            "tls.cert_file",
            "missing: give a PEM certificate chain, or set tls.enabled = false when another TLS terminator sits in front",
        )
    })?;
    let key_file = existing_file("tls.key_file", tls.key_file)?.ok_or_else(|| {
        key_error(
            "tls.key_file",
            "missing: give the PEM private key of tls.cert_file",
        )
    })?;
    Ok(TlsSettings::Files {
        cert_file,
        key_file,
    })
}

/// The `tls.acme_*` keys (their names, when given, are filled in from
/// `server.public_url` by [`validate`]).
fn validate_acme(tls: file::TlsSection) -> Result<AcmeSettings, ConfigError> {
    for (key, value) in [
        ("tls.cert_file", &tls.cert_file),
        ("tls.key_file", &tls.key_file),
    ] {
        if value.is_some() {
            return Err(key_error(
                key,
                "is not used with tls.acme_contact: the gateway gets its certificate itself; \
                 remove one or the other",
            ));
        }
    }
    let directory_text = tls
        .acme_directory
        .as_deref()
        .unwrap_or(LETS_ENCRYPT_DIRECTORY);
    let directory = Url::parse(directory_text)
        .ok()
        .filter(|url| url.scheme() == "https")
        .ok_or_else(|| {
            key_error(
                "tls.acme_directory",
                format!(
                    "`{directory_text}` is not an https:// URL (Let's Encrypt: \
                     {LETS_ENCRYPT_DIRECTORY}, its staging: {LETS_ENCRYPT_STAGING_DIRECTORY})"
                ),
            )
        })?;
    let contact = tls.acme_contact.ok_or_else(|| {
        key_error(
            "tls.acme_contact",
            "missing: the e-mail address the CA writes to about the certificate",
        )
    })?;
    let address = contact.trim().trim_start_matches("mailto:");
    if !address.contains('@') || address.contains(char::is_whitespace) {
        return Err(key_error(
            "tls.acme_contact",
            format!("`{contact}` is not an e-mail address"),
        ));
    }
    let state_dir = tls.acme_state_dir.ok_or_else(|| {
        key_error(
            "tls.acme_state_dir",
            "missing: a directory, writable by the service user only, for the account key and the certificate",
        )
    })?;
    match std::fs::metadata(&state_dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(key_error(
                "tls.acme_state_dir",
                format!("`{state_dir}` is not a directory"),
            ));
        }
        Err(e) => return Err(missing_file("tls.acme_state_dir", &state_dir, &e)),
    }
    if tls.acme_accept_terms != Some(true) {
        return Err(key_error(
            "tls.acme_accept_terms",
            "must be true: ordering a certificate agrees to the CA's terms of service (read them at the directory's meta.termsOfService)",
        ));
    }
    let names: Vec<String> = tls
        .acme_names
        .unwrap_or_default()
        .into_iter()
        .map(|name| name.trim().trim_end_matches('.').to_ascii_lowercase())
        .collect();
    if let Some(bad) = names.iter().find(|name| {
        name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'*')
    }) {
        return Err(key_error(
            "tls.acme_names",
            format!("`{bad}` is not a DNS name"),
        ));
    }
    let external_account = external_account_binding(tls.acme_eab_kid, tls.acme_eab_hmac_key_file)?;
    Ok(AcmeSettings {
        directory,
        contact: format!("mailto:{address}"),
        names,
        state_dir: PathBuf::from(state_dir),
        ca_file: existing_file("tls.acme_ca_file", tls.acme_ca_file)?,
        external_account,
    })
}

/// `tls.acme_eab_kid` and `tls.acme_eab_hmac_key_file`: both or neither; the file holds
/// the HMAC key base64url-encoded, as CAs give it.
fn external_account_binding(
    kid: Option<String>,
    key_file: Option<String>,
) -> Result<Option<ExternalAccountBinding>, ConfigError> {
    const KID: &str = "tls.acme_eab_kid";
    const KEY_FILE: &str = "tls.acme_eab_hmac_key_file";
    let (kid, key_file) = match (kid, key_file) {
        (None, None) => return Ok(None),
        (Some(_), None) => {
            return Err(key_error(
                KEY_FILE,
                format!("missing: {KID} needs the HMAC key the CA gave with it, in a file"),
            ));
        }
        (None, Some(_)) => {
            return Err(key_error(
                KID,
                format!("missing: the key ID the CA gave with the HMAC key of {KEY_FILE}"),
            ));
        }
        (Some(kid), Some(key_file)) => (kid, key_file),
    };
    if kid.trim().is_empty() {
        return Err(key_error(KID, "is empty"));
    }
    let text = read_secret_file(KEY_FILE, &key_file)?;
    let hmac_key = base64::Engine::decode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        text.trim().trim_end_matches('='),
    )
    .map_err(|_| {
        key_error(
            KEY_FILE,
            format!("`{key_file}` does not hold a base64url key (the HMAC key as the CA gives it)"),
        )
    })?;
    Ok(Some(ExternalAccountBinding {
        kid: kid.trim().to_owned(),
        hmac_key,
    }))
}

fn validate_server(
    server: file::ServerSection,
    tls: &TlsSettings,
) -> Result<ServerSettings, ConfigError> {
    let default_listen = if matches!(tls, TlsSettings::Off) {
        "0.0.0.0:8080"
    } else {
        "0.0.0.0:8443"
    };
    let listen = socket_addr(
        "server.listen",
        server.listen.as_deref().unwrap_or(default_listen),
    )?;
    let public_url = server.public_url.ok_or_else(|| {
        key_error(
            "server.public_url",
            "missing: the address people open, e.g. https://sentry.example.com",
        )
    })?;
    let public_url = parse_public_url(&public_url)?;
    let http_redirect_listen = server
        .http_redirect_listen
        .map(|text| socket_addr("server.http_redirect_listen", &text))
        .transpose()?;
    let acme_webroot = acme_webroot(server.acme_webroot, http_redirect_listen.is_some())?;
    let trusted_proxies = networks(
        "server.trusted_proxies",
        server.trusted_proxies.unwrap_or_default(),
    )?;
    let metrics_networks = networks(
        "server.metrics_networks",
        server
            .metrics_networks
            .unwrap_or_else(|| vec!["127.0.0.0/8".into(), "::1/128".into()]),
    )?;
    let max_header_size = size_or("server.max_header_size", server.max_header_size, 64 * 1024)?;
    if !(8 * 1024..=1024 * 1024).contains(&max_header_size) {
        return Err(key_error(
            "server.max_header_size",
            "must be between 8KiB and 1MiB",
        ));
    }
    Ok(ServerSettings {
        listen,
        public_url,
        http_redirect_listen,
        acme_webroot,
        trusted_proxies,
        header_read_timeout: duration_or(
            "server.header_read_timeout",
            server.header_read_timeout,
            Duration::from_secs(10),
        )?,
        shutdown_grace: duration_or(
            "server.shutdown_grace",
            server.shutdown_grace,
            Duration::from_secs(30),
        )?,
        idle_timeout: match duration_or(
            "server.idle_timeout",
            server.idle_timeout,
            Duration::from_secs(60),
        )? {
            zero if zero.is_zero() => {
                return Err(key_error("server.idle_timeout", "must be longer than zero"));
            }
            timeout => timeout,
        },
        threads: match server.threads {
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
            Some(0) => return Err(key_error("server.threads", "must be at least 1")),
            Some(n) if n > 1024 => return Err(key_error("server.threads", "must be at most 1024")),
            Some(n) => n as usize,
        },
        allowed_redirect_hosts: AllowedHosts::new(
            server.allowed_redirect_hosts.unwrap_or_default(),
        ),
        host_aliases: server
            .host_aliases
            .unwrap_or_default()
            .iter()
            .map(|alias| host_alias(alias))
            .collect::<Result<_, _>>()?,
        max_header_size: max_header_size as usize,
        max_body_size: size_or(
            "server.max_body_size",
            server.max_body_size,
            200 * 1024 * 1024,
        )?,
        max_connections: match server.max_connections {
            None => None,
            Some(0) => return Err(key_error("server.max_connections", "must be at least 1")),
            Some(n) => Some(n.min(1 << 24) as usize),
        },
        http2_max_streams: match server.http2_max_streams {
            None => 100,
            Some(n) if (1..=10_000).contains(&n) => n as u32,
            Some(_) => {
                return Err(key_error(
                    "server.http2_max_streams",
                    "must be between 1 and 10000",
                ));
            }
        },
        max_connections_per_address: match server.max_connections_per_address {
            None => 1_000,
            Some(0) => {
                return Err(key_error(
                    "server.max_connections_per_address",
                    "must be at least 1",
                ));
            }
            Some(n) => n.min(1 << 24) as usize,
        },
        max_tunnels: match server.max_tunnels {
            None => 1_000,
            Some(0) => return Err(key_error("server.max_tunnels", "must be at least 1")),
            Some(n) => n.min(1 << 24) as usize,
        },
        tunnel_idle_timeout: match duration_or(
            "server.tunnel_idle_timeout",
            server.tunnel_idle_timeout,
            Duration::from_secs(300),
        )? {
            zero if zero.is_zero() => {
                return Err(key_error(
                    "server.tunnel_idle_timeout",
                    "must be longer than zero",
                ));
            }
            timeout => timeout,
        },
        tunnel_check_every: match duration_or(
            "server.tunnel_check_every",
            server.tunnel_check_every,
            Duration::from_secs(60),
        )? {
            every if every.is_zero() || every > Duration::from_secs(60) => {
                return Err(key_error(
                    "server.tunnel_check_every",
                    "must be longer than zero and at most 1m (a tunnel must not outlive its session by more)",
                ));
            }
            every => every,
        },
        send_timeout: positive_duration(
            "server.send_timeout",
            server.send_timeout,
            Duration::from_secs(30),
        )?,
        body_idle_timeout: positive_duration(
            "server.body_idle_timeout",
            server.body_idle_timeout,
            Duration::from_secs(30),
        )?,
        metrics_listen: server
            .metrics_listen
            .map(|text| socket_addr("server.metrics_listen", &text))
            .transpose()?,
        metrics_networks,
    })
}

/// A duration longer than zero, `default` when unset.
fn positive_duration(
    key: &str,
    text: Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match duration_or(key, text, default)? {
        zero if zero.is_zero() => Err(key_error(key, "must be longer than zero")),
        duration => Ok(duration),
    }
}

/// One `server.host_aliases` entry: a host name or IP address, without scheme, port,
/// path or wildcard, in the form requests are compared in (lower case, IPv6 in brackets).
fn host_alias(text: &str) -> Result<String, ConfigError> {
    let refuse = |why: &str| {
        key_error(
            "server.host_aliases",
            format!(
                "`{text}` is not a host name or IP address ({why}), e.g. sentry.internal.example or 192.0.2.10"
            ),
        )
    };
    let text = text.trim();
    if text.is_empty() {
        return Err(refuse("it is empty"));
    }
    if text.contains(['/', '@', '*', '?', '#']) || text.contains("://") {
        return Err(refuse("a host only: no scheme, path, user or wildcard"));
    }
    let bare_ipv6 = text.parse::<std::net::Ipv6Addr>().ok();
    if bare_ipv6.is_none() && !text.starts_with('[') && text.contains(':') {
        return Err(refuse("no port: ports are not compared"));
    }
    let host = match bare_ipv6 {
        Some(ip) => url::Host::Ipv6(ip),
        None => url::Host::parse(text).map_err(|e| refuse(&e.to_string()))?,
    };
    Ok(host.to_string().trim_end_matches('.').to_ascii_lowercase())
}

/// IP addresses or CIDR blocks.
fn networks(key: &str, list: Vec<String>) -> Result<Vec<IpNet>, ConfigError> {
    list.iter()
        .map(|text| {
            text.parse::<IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    key_error(
                        key,
                        format!("`{text}` is not an IP address or CIDR block such as 10.0.0.0/8"),
                    )
                })
        })
        .collect()
}

fn size_or(key: &str, value: Option<String>, default: u64) -> Result<u64, ConfigError> {
    match value {
        None => Ok(default),
        Some(text) => parse_size(&text).map_err(|problem| key_error(key, problem)),
    }
}

fn parse_public_url(text: &str) -> Result<Url, ConfigError> {
    let key = "server.public_url";
    let url =
        Url::parse(text).map_err(|e| key_error(key, format!("`{text}` is not a URL: {e}")))?;
    if url.scheme() != "https" && url.scheme() != "http" {
        return Err(key_error(key, format!("`{text}` must start with https://")));
    }
    if url.host_str().is_none() {
        return Err(key_error(key, format!("`{text}` has no host")));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(key_error(
            key,
            format!(
                "`{text}` must be an origin only (scheme, host, port), without a path or query"
            ),
        ));
    }
    if url.scheme() == "http" && !is_loopback_host(&url) {
        return Err(key_error(
            key,
            format!(
                "`{text}` is plain http: session cookies would travel unencrypted; use https:// (http is accepted only for loopback hosts)"
            ),
        ));
    }
    Ok(url)
}

fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

fn validate_upstream(upstream: file::UpstreamSection) -> Result<UpstreamSettings, ConfigError> {
    let text = upstream
        .url
        .ok_or_else(|| key_error("upstream.url", "missing: where Sentry listens, e.g. http://127.0.0.1:9000 (self-hosted Sentry's nginx)"))?;
    let url = Url::parse(&text)
        .map_err(|e| key_error("upstream.url", format!("`{text}` is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(key_error(
            "upstream.url",
            format!("`{text}` must be an http:// or https:// URL with a host"),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(key_error(
            "upstream.url",
            format!("`{text}` must not have a query or fragment"),
        ));
    }
    let max_in_flight = match upstream.max_in_flight {
        None => 512,
        Some(0) => return Err(key_error("upstream.max_in_flight", "must be at least 1")),
        Some(n) => n.min(1 << 24) as usize,
    };
    let max_in_flight_per_client = match upstream.max_in_flight_per_client {
        None => 64.min(max_in_flight),
        Some(0) => {
            return Err(key_error(
                "upstream.max_in_flight_per_client",
                "must be at least 1",
            ));
        }
        Some(n) if n as usize > max_in_flight => {
            return Err(key_error(
                "upstream.max_in_flight_per_client",
                format!("must be at most upstream.max_in_flight ({max_in_flight})"),
            ));
        }
        Some(n) => n as usize,
    };
    Ok(UpstreamSettings {
        url,
        connect_timeout: duration_or(
            "upstream.connect_timeout",
            upstream.connect_timeout,
            Duration::from_secs(5),
        )?,
        read_timeout: duration_or(
            "upstream.read_timeout",
            upstream.read_timeout,
            Duration::from_secs(100),
        )?,
        ca_file: existing_file("upstream.ca_file", upstream.ca_file)?,
        pass_host_header: upstream.pass_host_header.unwrap_or(true),
        max_in_flight,
        max_in_flight_per_client,
    })
}

fn read_secret_file(key: &str, path: &str) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| key_error(key, format!("cannot read `{path}`: {e}")))?;
    if text.trim().is_empty() {
        return Err(key_error(key, format!("the file `{path}` is empty")));
    }
    Ok(text)
}

fn absolute_path(key: &str, text: String) -> Result<String, ConfigError> {
    if !text.starts_with('/') || text.starts_with("//") || text.contains(['?', '#', '\\']) {
        return Err(key_error(
            key,
            format!("`{text}` must be a path starting with a single /, without query"),
        ));
    }
    Ok(text)
}

fn validate_oidc(oidc: file::OidcSection) -> Result<OidcSettings, ConfigError> {
    let issuer = oidc.issuer.filter(|s| !s.trim().is_empty()).ok_or_else(|| {
        key_error("oidc.issuer", "missing: the provider's issuer URL (OIDC_DOMAIN in the Encvoy ID guide, e.g. https://id.example.com/api/oidc)")
    })?;
    let issuer = issuer.trim().to_owned();
    let parsed = Url::parse(&issuer)
        .map_err(|e| key_error("oidc.issuer", format!("`{issuer}` is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "https" | "http") {
        return Err(key_error(
            "oidc.issuer",
            format!("`{issuer}` must be an https:// URL"),
        ));
    }
    if let Some(base) = issuer
        .trim_end_matches('/')
        .strip_suffix("/.well-known/openid-configuration")
    {
        return Err(key_error(
            "oidc.issuer",
            format!(
                "`{issuer}` is the discovery document's URL; oidc.issuer is the part before \
                 /.well-known/openid-configuration: {base}"
            ),
        ));
    }
    let client_id = oidc.client_id.filter(|s| !s.is_empty()).ok_or_else(|| {
        key_error(
            "oidc.client_id",
            "missing: the Client ID of the application registered at the provider (OIDC_CLIENT_ID)",
        )
    })?;
    let client_secret = match (oidc.client_secret, oidc.client_secret_file) {
        (Some(_), Some(_)) => {
            return Err(key_error(
                "oidc.client_secret_file",
                "set either oidc.client_secret or oidc.client_secret_file, not both",
            ));
        }
        (Some(secret), None) => secret,
        (None, Some(path)) => read_secret_file("oidc.client_secret_file", &path)?
            .trim()
            .to_owned(),
        (None, None) => {
            return Err(key_error(
                "oidc.client_secret",
                "missing: the Client secret of the application (OIDC_CLIENT_SECRET), or oidc.client_secret_file",
            ));
        }
    };
    if client_secret.is_empty() {
        return Err(key_error("oidc.client_secret", "is empty"));
    }
    if client_secret == CLIENT_SECRET_PLACEHOLDER {
        return Err(key_error(
            "oidc.client_secret",
            "is the example config's placeholder: fill in the Client secret of the application registered at the provider",
        ));
    }
    let scopes = oidc
        .scopes
        .unwrap_or_else(|| ["openid", "email", "profile"].map(String::from).to_vec());
    if !scopes.iter().any(|s| s == "openid") {
        return Err(key_error(
            "oidc.scopes",
            format!("{scopes:?} lacks `openid`: without it the provider returns no ID token"),
        ));
    }
    let callback_path = absolute_path(
        "oidc.callback_path",
        oidc.callback_path
            .unwrap_or_else(|| "/oauth2/callback".into()),
    )?;
    if callback_path == "/auth/sso/" {
        return Err(key_error(
            "oidc.callback_path",
            "`/auth/sso/` belongs to Sentry's own SSO (sentry-auth-oidc); use another path such as /oauth2/callback",
        ));
    }
    Ok(OidcSettings {
        issuer,
        client_id,
        client_secret,
        scopes,
        provider_name: oidc.provider_name.unwrap_or_else(|| "Encvoy ID".into()),
        callback_path,
        ca_file: existing_file("oidc.ca_file", oidc.ca_file)?,
        skip_sign_in_page: skip_sign_in_page(oidc.skip_sign_in_page)?,
        post_logout_path: absolute_path(
            "oidc.post_logout_path",
            oidc.post_logout_path
                .unwrap_or_else(|| "/oauth2/sign_in".into()),
        )?,
        http_timeout: duration_or(
            "oidc.http_timeout",
            oidc.http_timeout,
            Duration::from_secs(10),
        )?,
        clock_skew: duration_or("oidc.clock_skew", oidc.clock_skew, Duration::from_secs(60))?,
    })
}

/// The session cookie's default name over https: the `__Host-` prefix makes browsers
/// refuse one set by a sibling subdomain, or without `Secure` and `Path=/`.
pub const HOST_COOKIE_NAME: &str = "__Host-ssogate";

/// The session cookie's default name over plain http (a prefix needs `Secure`).
pub const PLAIN_COOKIE_NAME: &str = "_ssogate";

fn validate_session(
    session: file::SessionSection,
    https: bool,
) -> Result<SessionSettings, ConfigError> {
    let store = validate_store(&session)?;
    let default_name = if https {
        HOST_COOKIE_NAME
    } else {
        PLAIN_COOKIE_NAME
    };
    let cookie_name = session.cookie_name.unwrap_or_else(|| default_name.into());
    let valid_name = !cookie_name.is_empty()
        && cookie_name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if !valid_name {
        return Err(key_error(
            "session.cookie_name",
            format!("`{cookie_name}` may use only letters, digits, `_`, `-` and `.`"),
        ));
    }
    let prefixed = cookie_name.starts_with("__Host-") || cookie_name.starts_with("__Secure-");
    if prefixed && !https {
        return Err(key_error(
            "session.cookie_name",
            format!(
                "`{cookie_name}`: browsers accept a `__Host-` or `__Secure-` cookie only over https (server.public_url is http)"
            ),
        ));
    }
    if ["sentrysid", "sc", "session_expired"].contains(&cookie_name.as_str()) {
        return Err(key_error(
            "session.cookie_name",
            format!("`{cookie_name}` is one of Sentry's own cookies; pick another name"),
        ));
    }
    let mut secrets = session.secrets.unwrap_or_default();
    if let Some(path) = session.secret_file {
        let text = read_secret_file("session.secret_file", &path)?;
        secrets.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from),
        );
    }
    if secrets.is_empty() {
        return Err(key_error(
            "session.secrets",
            "missing: generate one with `ssogate gen-secret` (or use session.secret_file)",
        ));
    }
    if let Some(short) = secrets.iter().position(|s| s.len() < MIN_SECRET_LEN) {
        return Err(key_error(
            "session.secrets",
            format!(
                "secret #{} is shorter than {MIN_SECRET_LEN} characters; generate one with `ssogate gen-secret`",
                short + 1
            ),
        ));
    }
    if let Some(placeholder) = secrets.iter().position(|s| s == SESSION_SECRET_PLACEHOLDER) {
        return Err(key_error(
            "session.secrets",
            format!(
                "secret #{} is the example config's placeholder: fill in the output of `ssogate gen-secret`",
                placeholder + 1
            ),
        ));
    }
    let lifetime = duration_or(
        "session.lifetime",
        session.lifetime,
        Duration::from_secs(24 * 3600),
    )?;
    let idle_timeout = duration_or(
        "session.idle_timeout",
        session.idle_timeout,
        Duration::from_secs(8 * 3600),
    )?;
    if lifetime.is_zero() || idle_timeout.is_zero() {
        return Err(key_error(
            if lifetime.is_zero() {
                "session.lifetime"
            } else {
                "session.idle_timeout"
            },
            "must be longer than zero",
        ));
    }
    let max_sessions = session.max_sessions.unwrap_or(100_000);
    if max_sessions == 0 {
        return Err(key_error("session.max_sessions", "must be at least 1"));
    }
    let revalidate_every = session
        .revalidate_every
        .map(|text| {
            parse_duration(&text).map_err(|problem| key_error("session.revalidate_every", problem))
        })
        .transpose()?
        .filter(|every| !every.is_zero());
    let expired_token_grace = session
        .expired_token_grace
        .map(|text| {
            parse_duration(&text)
                .map_err(|problem| key_error("session.expired_token_grace", problem))
        })
        .transpose()?
        .unwrap_or_default();
    if expired_token_grace >= lifetime {
        return Err(key_error(
            "session.expired_token_grace",
            "must be shorter than session.lifetime (a grace that long would never end a session the provider can no longer confirm)",
        ));
    }
    Ok(SessionSettings {
        cookie_name,
        secrets,
        lifetime,
        idle_timeout,
        max_sessions,
        revalidate_every,
        expired_token_grace,
        store,
    })
}

fn validate_store(session: &file::SessionSection) -> Result<StoreSettings, ConfigError> {
    let redis_keys = [
        ("session.redis_url", session.redis_url.is_some()),
        ("session.redis_url_file", session.redis_url_file.is_some()),
        ("session.redis_ca_file", session.redis_ca_file.is_some()),
        ("session.redis_sentinels", session.redis_sentinels.is_some()),
        (
            "session.redis_master_name",
            session.redis_master_name.is_some(),
        ),
        (
            "session.redis_sentinel_password",
            session.redis_sentinel_password.is_some(),
        ),
        (
            "session.redis_sentinel_password_file",
            session.redis_sentinel_password_file.is_some(),
        ),
        (
            "session.redis_cluster_nodes",
            session.redis_cluster_nodes.is_some(),
        ),
        (
            "session.redis_key_prefix",
            session.redis_key_prefix.is_some(),
        ),
        ("session.redis_timeout", session.redis_timeout.is_some()),
        ("session.local_cache_ttl", session.local_cache_ttl.is_some()),
    ];
    match session.store.as_deref().unwrap_or("memory") {
        "memory" => match redis_keys.iter().find(|(_, given)| *given) {
            Some((key, _)) => Err(key_error(
                *key,
                "is used only with session.store = \"redis\"; set that too, or remove this key",
            )),
            None => Ok(StoreSettings::Memory),
        },
        "redis" => validate_redis(session).map(|redis| StoreSettings::Redis(Box::new(redis))),
        other => Err(key_error(
            "session.store",
            format!(
                "`{other}` is not a store; use \"memory\" (one gateway) or \"redis\" (several replicas)"
            ),
        )),
    }
}

fn validate_redis(session: &file::SessionSection) -> Result<RedisSettings, ConfigError> {
    let sentinel = validate_sentinel(session)?;
    let cluster_nodes = validate_cluster_nodes(session)?;
    let (key, text) = match (&session.redis_url, &session.redis_url_file) {
        (Some(_), Some(_)) => {
            return Err(key_error(
                "session.redis_url_file",
                "set either session.redis_url or session.redis_url_file, not both",
            ));
        }
        (Some(url), None) => ("session.redis_url", url.clone()),
        (None, Some(path)) => (
            "session.redis_url_file",
            read_secret_file("session.redis_url_file", path)?
                .trim()
                .to_owned(),
        ),
        (None, None) => match (&sentinel, &cluster_nodes) {
            (Some(sentinel), _) => (
                "session.redis_url",
                format!("redis://{}/0", sentinel.master_name),
            ),
            (None, Some(nodes)) => ("session.redis_cluster_nodes", nodes[0].to_string()),
            (None, None) => {
                return Err(key_error(
                    "session.redis_url",
                    "missing: session.store = \"redis\" needs the server, e.g. redis://127.0.0.1:6379/0 or rediss://:password@redis.internal:6380 (or session.redis_sentinels, or session.redis_cluster_nodes)",
                ));
            }
        },
    };
    if cluster_nodes.is_some() && (sentinel.is_some() || key != "session.redis_cluster_nodes") {
        return Err(key_error(
            "session.redis_cluster_nodes",
            "names the nodes of a Redis Cluster; set it alone, without session.redis_url, session.redis_url_file or session.redis_sentinels",
        ));
    }
    let url = redis_url(key, &text)?;
    if let Some(sentinel) = &sentinel
        && (url.host_str() != Some(sentinel.master_name.as_str()) || url.port().is_some())
    {
        return Err(key_error(
            key,
            format!(
                "with session.redis_sentinels the sentinels name the server: write the master's name as the host, without a port, e.g. {}://:password@{}/0",
                url.scheme(),
                sentinel.master_name
            ),
        ));
    }
    let ca_file = existing_file("session.redis_ca_file", session.redis_ca_file.clone())?;
    if ca_file.is_some() && url.scheme() != "rediss" {
        return Err(key_error(
            "session.redis_ca_file",
            "is used only with a rediss:// (TLS) URL",
        ));
    }
    let key_prefix = session
        .redis_key_prefix
        .clone()
        .unwrap_or_else(|| "ssogate:".into());
    if key_prefix
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(key_error(
            "session.redis_key_prefix",
            "must not contain spaces or control characters",
        ));
    }
    let timeout = duration_or(
        "session.redis_timeout",
        session.redis_timeout.clone(),
        Duration::from_secs(1),
    )?;
    if timeout.is_zero() {
        return Err(key_error(
            "session.redis_timeout",
            "must be longer than zero",
        ));
    }
    let local_cache_ttl = duration_or(
        "session.local_cache_ttl",
        session.local_cache_ttl.clone(),
        Duration::from_secs(60),
    )?;
    if local_cache_ttl.is_zero() {
        return Err(key_error(
            "session.local_cache_ttl",
            "must be longer than zero (it is how long a replica keeps serving a session while Redis is down)",
        ));
    }
    Ok(RedisSettings {
        url,
        ca_file,
        key_prefix,
        timeout,
        local_cache_ttl,
        sentinel,
        cluster_nodes,
    })
}

/// One Redis URL (`key` names the setting): `redis://` or `rediss://`, a host, and a
/// database number if any.
fn redis_url(key: &str, text: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(text).map_err(|e| {
        key_error(
            key,
            format!("not a URL ({e}); write it like redis://host:6379/0"),
        )
    })?;
    if !matches!(url.scheme(), "redis" | "rediss") {
        return Err(key_error(
            key,
            format!(
                "scheme `{}` is not supported; use redis:// or rediss:// (TLS)",
                url.scheme()
            ),
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(key_error(key, "names no host"));
    }
    let database = url.path().trim_start_matches('/');
    if !database.is_empty() && database.parse::<u16>().is_err() {
        return Err(key_error(
            key,
            format!("the path `/{database}` must be a database number, e.g. /0"),
        ));
    }
    Ok(url)
}

/// `session.redis_cluster_nodes`: the seed nodes of a Redis Cluster, as URLs that
/// agree on the scheme and the password; `None` without it.
fn validate_cluster_nodes(session: &file::SessionSection) -> Result<Option<Vec<Url>>, ConfigError> {
    const KEY: &str = "session.redis_cluster_nodes";
    let Some(list) = &session.redis_cluster_nodes else {
        return Ok(None);
    };
    if list.is_empty() {
        return Err(key_error(
            KEY,
            "is empty: list some of the cluster's nodes, e.g. [\"redis://10.0.0.1:6379\", \"redis://10.0.0.2:6379\", \"redis://10.0.0.3:6379\"]",
        ));
    }
    let nodes = list
        .iter()
        .map(|text| redis_url(KEY, text.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    for node in &nodes {
        if !matches!(node.path().trim_start_matches('/'), "" | "0") {
            return Err(key_error(
                KEY,
                format!("`{}`: a Redis Cluster has only database 0", redacted(node)),
            ));
        }
        if node.scheme() != nodes[0].scheme()
            || node.password() != nodes[0].password()
            || node.username() != nodes[0].username()
        {
            return Err(key_error(
                KEY,
                "every node needs the same scheme (redis:// or rediss://) and the same user and password",
            ));
        }
    }
    Ok(Some(nodes))
}

/// `session.redis_sentinels` and the keys that go with it; `None` without sentinels.
fn validate_sentinel(
    session: &file::SessionSection,
) -> Result<Option<SentinelSettings>, ConfigError> {
    let Some(list) = &session.redis_sentinels else {
        let lonely = [
            (
                "session.redis_master_name",
                session.redis_master_name.is_some(),
            ),
            (
                "session.redis_sentinel_password",
                session.redis_sentinel_password.is_some(),
            ),
            (
                "session.redis_sentinel_password_file",
                session.redis_sentinel_password_file.is_some(),
            ),
        ];
        return match lonely.iter().find(|(_, given)| *given) {
            Some((key, _)) => Err(key_error(
                *key,
                "is used only with session.redis_sentinels; set that too, or remove this key",
            )),
            None => Ok(None),
        };
    };
    if list.is_empty() {
        return Err(key_error(
            "session.redis_sentinels",
            "is empty: list the sentinels as host:port, e.g. [\"10.0.0.1:26379\", \"10.0.0.2:26379\", \"10.0.0.3:26379\"]",
        ));
    }
    let addresses = list
        .iter()
        .map(|entry| {
            entry
                .trim()
                .rsplit_once(':')
                .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
                .filter(|(host, port)| !host.is_empty() && *port != 0)
                .map(|(host, port)| (host.trim_matches(['[', ']']).to_owned(), port))
                .ok_or_else(|| {
                    key_error(
                        "session.redis_sentinels",
                        format!("`{entry}` is not host:port, e.g. 10.0.0.1:26379"),
                    )
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let master_name = session
        .redis_master_name
        .as_deref()
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .ok_or_else(|| {
            key_error(
                "session.redis_master_name",
                "missing: the name the sentinels monitor the master under (`sentinel monitor <name> ...`), e.g. mymaster",
            )
        })?;
    if master_name
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || "/@:?#".contains(c))
    {
        return Err(key_error(
            "session.redis_master_name",
            format!("`{master_name}` must not contain spaces, control characters or / @ : ? #"),
        ));
    }
    let password = match (
        &session.redis_sentinel_password,
        &session.redis_sentinel_password_file,
    ) {
        (Some(_), Some(_)) => {
            return Err(key_error(
                "session.redis_sentinel_password_file",
                "set either session.redis_sentinel_password or session.redis_sentinel_password_file, not both",
            ));
        }
        (Some(password), None) => Some(password.clone()),
        (None, Some(path)) => Some(
            read_secret_file("session.redis_sentinel_password_file", path)?
                .trim()
                .to_owned(),
        ),
        (None, None) => None,
    };
    Ok(Some(SentinelSettings {
        addresses,
        master_name: master_name.to_owned(),
        password,
    }))
}

/// A header the gateway sets from the session (`key` names the setting): a valid
/// name, and none of those the gateway manages itself; `""` is `None` (off).
fn identity_header_name(
    key: &str,
    value: Option<String>,
    default: &str,
) -> Result<Option<HeaderName>, ConfigError> {
    let text = value.unwrap_or_else(|| default.to_owned());
    if text.is_empty() {
        return Ok(None);
    }
    let lower = text.to_ascii_lowercase();
    if [
        "authorization",
        "cookie",
        "host",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
    ]
    .contains(&lower.as_str())
    {
        return Err(key_error(
            key,
            format!("`{text}` is a header the gateway manages itself; pick another name"),
        ));
    }
    HeaderName::from_bytes(text.as_bytes())
        .map(Some)
        .map_err(|_| key_error(key, format!("`{text}` is not a valid header name")))
}

fn validate_identity_headers(
    headers: file::IdentityHeadersSection,
) -> Result<IdentityHeaderNames, ConfigError> {
    Ok(IdentityHeaderNames {
        user: identity_header_name("identity_headers.user", headers.user, "X-Forwarded-User")?,
        email: identity_header_name("identity_headers.email", headers.email, "X-Forwarded-Email")?,
        preferred_username: identity_header_name(
            "identity_headers.preferred_username",
            headers.preferred_username,
            "X-Forwarded-Preferred-Username",
        )?,
        groups: identity_header_name(
            "identity_headers.groups",
            headers.groups,
            "X-Forwarded-Groups",
        )?,
    })
}

/// `[assertion]`: off without `key_file` (and then no other key of it may be set).
/// The key files must exist here; what they hold is judged by `crate::assertion`.
fn validate_assertion(
    assertion: file::AssertionSection,
    upstream: Option<&UpstreamSettings>,
    identity_headers: Option<&IdentityHeaderNames>,
) -> Result<Option<AssertionSettings>, ConfigError> {
    let Some(key_file) = existing_file("assertion.key_file", assertion.key_file)? else {
        let others = [
            ("assertion.header", assertion.header.is_some()),
            (
                "assertion.previous_key_files",
                assertion.previous_key_files.is_some(),
            ),
            ("assertion.audience", assertion.audience.is_some()),
            ("assertion.lifetime", assertion.lifetime.is_some()),
        ];
        return match others.iter().find(|(_, given)| *given) {
            Some((key, _)) => Err(key_error(
                *key,
                "is used only with assertion.key_file (the signing key, which turns the assertion on); set that too, or remove this key",
            )),
            None => Ok(None),
        };
    };
    let header = identity_header_name(
        "assertion.header",
        assertion.header,
        DEFAULT_ASSERTION_HEADER,
    )?
    .ok_or_else(|| {
        key_error(
            "assertion.header",
            "is empty: name the header, or remove assertion.key_file to turn the assertion off",
        )
    })?;
    let fold = |name: &str| name.to_ascii_lowercase().replace('_', "-");
    if let Some(taken) = identity_headers
        .into_iter()
        .flat_map(IdentityHeaderNames::iter)
        .find(|name| fold(name.as_str()) == fold(header.as_str()))
    {
        return Err(key_error(
            "assertion.header",
            format!("`{header}` is also an identity header ({taken}); pick another name"),
        ));
    }
    let previous_key_files = assertion
        .previous_key_files
        .unwrap_or_default()
        .into_iter()
        .map(|text| existing_file("assertion.previous_key_files", Some(text)))
        .filter_map(Result::transpose)
        .collect::<Result<Vec<_>, _>>()?;
    let audience = match assertion.audience.as_deref().map(str::trim) {
        Some("") => {
            return Err(key_error(
                "assertion.audience",
                "is empty: name the upstream (e.g. its URL), or remove the key for the upstream's origin",
            ));
        }
        Some(audience) => audience.to_owned(),
        // Without a valid upstream.url (reported for that key) there is none to take.
        None => upstream.map_or_else(String::new, |upstream| {
            upstream.url.origin().ascii_serialization()
        }),
    };
    let lifetime = duration_or(
        "assertion.lifetime",
        assertion.lifetime,
        Duration::from_secs(300),
    )?;
    if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&lifetime) {
        return Err(key_error(
            "assertion.lifetime",
            "must be between 1s and 1h (a short one: the assertion is a pass for one request, re-signed before it expires)",
        ));
    }
    Ok(Some(AssertionSettings {
        header,
        key_file,
        previous_key_files,
        audience,
        lifetime: Duration::from_secs(lifetime.as_secs()),
    }))
}

fn lower_list(list: Option<Vec<String>>) -> Vec<String> {
    list.unwrap_or_default()
        .into_iter()
        .map(|s| s.trim().trim_start_matches('@').to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

fn validate_access(access: file::AccessSection) -> Result<AccessSettings, ConfigError> {
    let mut rules = Vec::new();
    let mut refused = Vec::new();
    for (i, rule) in access.rules.unwrap_or_default().into_iter().enumerate() {
        match validate_rule(i, rule) {
            Ok(rule) => rules.push(rule),
            Err(problem) => refused.push(problem),
        }
    }
    if !refused.is_empty() {
        return Err(ConfigError::from_problems(refused));
    }
    let mut upstream_session_cookies = Vec::new();
    let preset = match access.preset.as_deref().map(str::trim) {
        None | Some("") | Some("none") => None,
        Some("sentry") => {
            rules.extend(sentry_preset());
            upstream_session_cookies.extend(SENTRY_SESSION_COOKIES.map(str::to_owned));
            Some("sentry".to_owned())
        }
        Some(other) => {
            return Err(key_error(
                "access.preset",
                format!("`{other}` is not a preset; the presets are \"sentry\" and \"none\""),
            ));
        }
    };
    for name in access.upstream_session_cookies.unwrap_or_default() {
        let name = name.trim();
        if !is_cookie_name(name) {
            return Err(key_error(
                "access.upstream_session_cookies",
                format!("`{name}` is not a cookie name (letters, digits and !#$%&'*+-.^_`|~)"),
            ));
        }
        if !upstream_session_cookies.iter().any(|known| known == name) {
            upstream_session_cookies.push(name.to_owned());
        }
    }
    Ok(AccessSettings {
        allowed_email_domains: lower_list(access.allowed_email_domains),
        allowed_emails: lower_list(access.allowed_emails),
        groups_claim: access.groups_claim.unwrap_or_else(|| "groups".into()),
        required_groups: access.required_groups.unwrap_or_default(),
        require_email_verified: access.require_email_verified.unwrap_or(true),
        allowed_emails_file: existing_file(
            "access.allowed_emails_file",
            access.allowed_emails_file,
        )?,
        preset,
        rules: RouteRules::new(rules).map_err(|e| {
            key_error(
                "access.rules",
                format!("the rules' path patterns together are too large: {e}"),
            )
        })?,
        upstream_session_cookies,
    })
}

/// A cookie name as RFC 6265 allows it: a non-empty HTTP token.
fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn validate_rule(index: usize, rule: file::RuleSection) -> Result<RouteRule, ConfigError> {
    let key = |field: &str| format!("access.rules[{index}].{field}");
    let pattern = rule.path.ok_or_else(|| {
        key_error(
            key("path"),
            "missing: a regular expression over the normalised path, e.g. \"^/status/\"",
        )
    })?;
    let path = regex::Regex::new(&pattern).map_err(|e| {
        key_error(
            key("path"),
            format!("`{pattern}` is not a regular expression: {e}"),
        )
    })?;
    let methods = rule
        .methods
        .unwrap_or_default()
        .iter()
        .map(|m| {
            http::Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes())
                .map_err(|_| key_error(key("methods"), format!("`{m}` is not an HTTP method")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let action = match rule.action.as_deref().unwrap_or("authenticated") {
        "public" => Action::Public,
        "authenticated" => Action::Authenticated,
        other => {
            return Err(key_error(
                key("action"),
                format!("`{other}` is not an action; use \"public\" or \"authenticated\""),
            ));
        }
    };
    let admission = match rule.when_header {
        None => Admission::Always,
        Some(h) => HeaderName::from_bytes(h.trim().as_bytes())
            .map(Admission::Header)
            .map_err(|_| key_error(key("when_header"), format!("`{h}` is not a header name")))?,
    };
    let requirements = Requirements {
        allowed_groups: rule.allowed_groups.unwrap_or_default(),
        allowed_email_domains: lower_list(rule.allowed_email_domains),
        allowed_emails: lower_list(rule.allowed_emails),
    };
    if action == Action::Public && !requirements.is_empty() {
        return Err(key_error(
            key("action"),
            "a public rule cannot have allowed_groups / allowed_email_domains / allowed_emails (nobody is signed in on a public route)",
        ));
    }
    Ok(RouteRule {
        name: rule
            .name
            .unwrap_or_else(|| format!("access.rules[{index}]")),
        methods,
        path,
        admission,
        action,
        requirements,
    })
}

#[cfg(test)]
pub(crate) mod tests;
