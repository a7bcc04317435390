//! The rules an operator writes, as data: route rules (with the Sentry preset) and
//! the hosts a return target may point to. `config` builds them; `policy` applies
//! them.

use http::{HeaderName, Method};
use regex::{Regex, RegexSet};

/// What a matching rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Forward without a session (identity headers are still stripped).
    Public,
    /// A session is required, plus the global and this rule's requirements.
    Authenticated,
}

/// Which requests a rule applies to, beyond its methods and path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Every request.
    Always,
    /// Requests that carry this header with a value that is not blank
    /// (`when_header` of an operator rule).
    Header(HeaderName),
    /// Requests with a credential Sentry's API authenticates by itself
    /// (`policy::has_sentry_credential`): the Sentry preset's token API.
    SentryCredential,
}

/// Requirements a route adds to the global access rules. Each non-empty kind must
/// admit the person: any one of the groups; the email domain or the email list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Requirements {
    pub allowed_groups: Vec<String>,
    pub allowed_email_domains: Vec<String>,
    pub allowed_emails: Vec<String>,
}

impl Requirements {
    pub fn is_empty(&self) -> bool {
        self.allowed_groups.is_empty()
            && self.allowed_email_domains.is_empty()
            && self.allowed_emails.is_empty()
    }
}

/// One route rule: an operator's `[[access.rules]]`, or one of a preset's.
#[derive(Clone, Debug)]
pub struct RouteRule {
    /// Shown in `ssogate check`, logs and the 403 page.
    pub name: String,
    /// Empty means any method.
    pub methods: Vec<Method>,
    pub path: Regex,
    pub admission: Admission,
    pub action: Action,
    pub requirements: Requirements,
}

/// The cookies of Sentry's own sign-in: its session (`sentrysid`), CSRF token (`sc`,
/// `sentry-sc` on newer versions), superuser and sudo marks. Removed from token
/// traffic, so that Sentry can authenticate it only by its credential.
pub const SENTRY_SESSION_COOKIES: [&str; 5] = ["sentrysid", "sc", "sentry-sc", "su", "sudo"];

/// Sentry's traffic that must never meet an interactive login (SENTRY.md section 1):
/// `(name, path pattern, admission)`.
const SENTRY_PUBLIC_ROUTES: &[(&str, &str, Admission)] = &[
    (
        "sentry: ingestion (store)",
        r"^/api/store/",
        Admission::Always,
    ),
    (
        "sentry: ingestion (project endpoints)",
        r"^/api/[1-9][0-9]*/",
        Admission::Always,
    ),
    ("sentry: relay", r"^/api/0/relays/", Admission::Always),
    ("sentry: wizard", r"^/api/0/wizard/", Admission::Always),
    (
        "sentry: token API",
        r"^/api/0/",
        Admission::SentryCredential,
    ),
    (
        "sentry: static",
        r"^/(_static|_assets|js-sdk)/",
        Admission::Always,
    ),
    (
        "sentry: JS SDK loader",
        r"^/js-sdk-loader/[^/.]+(\.min)?\.js$",
        Admission::Always,
    ),
    ("sentry: health", r"^/_health/$", Admission::Always),
    (
        "sentry: embed error page",
        r"^/api/embed/error-page/$",
        Admission::Always,
    ),
    (
        "sentry: hooks",
        r"^/api/hooks/(mailgun/inbound|release/[^/]+/[^/]+/[^/]+)/",
        Admission::Always,
    ),
    (
        "sentry: webhooks",
        r"^/(extensions|plugins)/",
        Admission::Always,
    ),
    (
        "sentry: OAuth server",
        r"^/oauth/(token|userinfo)/$",
        Admission::Always,
    ),
    (
        "sentry: crawlers",
        r"^/(robots\.txt|\.well-known/security\.txt)$",
        Admission::Always,
    ),
];

/// The `preset = "sentry"` rules.
pub fn sentry_preset() -> Vec<RouteRule> {
    SENTRY_PUBLIC_ROUTES
        .iter()
        .map(|(name, pattern, admission)| RouteRule {
            name: (*name).to_owned(),
            methods: Vec::new(),
            path: Regex::new(pattern).expect("preset patterns are valid"),
            admission: admission.clone(),
            action: Action::Public,
            requirements: Requirements::default(),
        })
        .collect()
}

/// The route rules in order (the operator's, then the preset's), with one regex set
/// over their paths: a single pass over a path finds every rule whose path matches,
/// instead of one regex search per rule (this runs on every request). Read as a
/// slice of rules.
#[derive(Clone, Debug, Default)]
pub struct RouteRules {
    rules: Vec<RouteRule>,
    /// The rules' path patterns, in the rules' order.
    paths: RegexSet,
}

impl RouteRules {
    /// Fails only when the patterns together exceed the regex size limit.
    pub fn new(rules: Vec<RouteRule>) -> Result<Self, regex::Error> {
        let paths = RegexSet::new(rules.iter().map(|rule| rule.path.as_str()))?;
        Ok(Self { rules, paths })
    }

    /// The indices, in order, of the rules whose path matches `path`.
    pub fn matching_paths(&self, path: &str) -> impl Iterator<Item = usize> {
        self.paths.matches(path).into_iter()
    }
}

impl std::ops::Deref for RouteRules {
    type Target = [RouteRule];

    fn deref(&self) -> &[RouteRule] {
        &self.rules
    }
}

/// Hosts (besides the gateway's own) that return targets may point to. An entry
/// `example.com` matches that host only; `.example.com` matches `example.com` and any
/// subdomain on a dot boundary (`a.example.com`, never `evilexample.com`).
#[derive(Clone, Debug, Default)]
pub struct AllowedHosts(Vec<String>);

impl AllowedHosts {
    pub fn new(entries: impl IntoIterator<Item = String>) -> Self {
        Self(
            entries
                .into_iter()
                .map(|e| e.trim().to_ascii_lowercase())
                .filter(|e| !e.is_empty() && e != ".")
                .collect(),
        )
    }

    pub fn allows(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.0.iter().any(|entry| match entry.strip_prefix('.') {
            Some(domain) => host == domain || host.ends_with(entry.as_str()),
            None => host == *entry,
        })
    }
}
