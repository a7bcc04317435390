//! Route rules: which requests need no session (Sentry's machine traffic), and which
//! need more than a session. Rules match the method, the canonical path
//! ([`super::path`]) and optionally the presence of a request header; the first match
//! wins, operator rules before the preset, and a request no rule matches needs a
//! session (and the global access rules).

use http::{HeaderMap, HeaderName, Method};
use regex::Regex;

/// What a matching rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Forward without a session (identity headers are still stripped).
    Public,
    /// A session is required, plus the global and this rule's requirements.
    Authenticated,
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

#[derive(Clone, Debug)]
pub struct RouteRule {
    /// Shown in `ssogate check`, logs and the 403 page.
    pub name: String,
    /// Empty means any method.
    pub methods: Vec<Method>,
    pub path: Regex,
    /// The rule applies only when the request carries this header.
    pub when_header: Option<HeaderName>,
    pub action: Action,
    pub requirements: Requirements,
}

impl RouteRule {
    pub fn matches(&self, method: &Method, path: &str, headers: &HeaderMap) -> bool {
        (self.methods.is_empty() || self.methods.contains(method))
            && self
                .when_header
                .as_ref()
                .is_none_or(|h| headers.contains_key(h))
            && self.path.is_match(path)
    }
}

/// The first rule that matches, if any.
pub fn first_match<'a>(
    rules: &'a [RouteRule],
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Option<&'a RouteRule> {
    rules
        .iter()
        .find(|rule| rule.matches(method, path, headers))
}

/// Sentry's traffic that must never meet an interactive login (SENTRY.md section 1):
/// `(name, path pattern, required header)`.
const SENTRY_PUBLIC_ROUTES: &[(&str, &str, Option<&str>)] = &[
    ("sentry: ingestion (store)", r"^/api/store/", None),
    (
        "sentry: ingestion (project endpoints)",
        r"^/api/[1-9][0-9]*/",
        None,
    ),
    ("sentry: relay", r"^/api/0/relays/", None),
    ("sentry: wizard", r"^/api/0/wizard/", None),
    ("sentry: token API", r"^/api/0/", Some("authorization")),
    ("sentry: static", r"^/(_static|_assets|js-sdk)/", None),
    (
        "sentry: JS SDK loader",
        r"^/js-sdk-loader/[^/.]+(\.min)?\.js$",
        None,
    ),
    ("sentry: health", r"^/_health/$", None),
    (
        "sentry: embed error page",
        r"^/api/embed/error-page/$",
        None,
    ),
    (
        "sentry: hooks",
        r"^/api/hooks/(mailgun/inbound|release/[^/]+/[^/]+/[^/]+)/",
        None,
    ),
    ("sentry: webhooks", r"^/(extensions|plugins)/", None),
    ("sentry: OAuth server", r"^/oauth/(token|userinfo)/$", None),
    (
        "sentry: crawlers",
        r"^/(robots\.txt|\.well-known/security\.txt)$",
        None,
    ),
];

/// The `preset = "sentry"` rules.
pub fn sentry_preset() -> Vec<RouteRule> {
    SENTRY_PUBLIC_ROUTES
        .iter()
        .map(|(name, pattern, header)| RouteRule {
            name: (*name).to_owned(),
            methods: Vec::new(),
            path: Regex::new(pattern).expect("preset patterns are valid"),
            when_header: header.map(HeaderName::from_static),
            action: Action::Public,
            requirements: Requirements::default(),
        })
        .collect()
}

/// One line per rule, for `ssogate check`.
pub fn describe(rule: &RouteRule) -> String {
    let methods = if rule.methods.is_empty() {
        "*".to_owned()
    } else {
        rule.methods
            .iter()
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut line = format!(
        "{:<13} {:<8} {}",
        match rule.action {
            Action::Public => "public",
            Action::Authenticated => "authenticated",
        },
        methods,
        rule.path.as_str()
    );
    if let Some(header) = &rule.when_header {
        line.push_str(&format!("  (only with {header})"));
    }
    let r = &rule.requirements;
    for (label, list) in [
        ("groups", &r.allowed_groups),
        ("domains", &r.allowed_email_domains),
        ("emails", &r.allowed_emails),
    ] {
        if !list.is_empty() {
            line.push_str(&format!("  {label}: {}", list.join(",")));
        }
    }
    format!("{line}  [{}]", rule.name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::normalize_path;

    fn public_in_sentry(method: &str, raw_path: &str, headers: &[(&str, &str)]) -> bool {
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.insert(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let path = normalize_path(raw_path).unwrap();
        let rules = sentry_preset();
        first_match(&rules, &method.parse().unwrap(), &path, &map)
            .is_some_and(|r| r.action == Action::Public)
    }

    #[test]
    fn sentry_machine_traffic_is_public() {
        for path in [
            "/api/42/envelope/",
            "/api/42/store/",
            "/api/42/security/?sentry_key=k",
            "/api/42/minidump",
            "/api/42/otlp/v1/traces",
            "/api/42/integration/otlp/v1/logs",
            "/api/42/upload/abc/",
            "/api/store/",
            "/api/0/relays/register/challenge/",
            "/api/0/wizard/hash/",
            "/_static/1700000000/sentry/dist/app.js",
            "/_assets/x.css",
            "/js-sdk/7.0.0/bundle.min.js",
            "/js-sdk-loader/abcdef0123.min.js",
            "/_health/",
            "/api/embed/error-page/",
            "/api/hooks/mailgun/inbound/",
            "/api/hooks/release/builtin/1/token/",
            "/extensions/github/webhook/",
            "/plugins/github/organizations/1/webhook/",
            "/oauth/token/",
            "/oauth/userinfo/",
            "/robots.txt",
            "/.well-known/security.txt",
        ] {
            assert!(
                public_in_sentry("POST", path, &[]),
                "{path} should be public"
            );
        }
        assert!(public_in_sentry(
            "GET",
            "/api/0/organizations/",
            &[("authorization", "Bearer sntrys_x")]
        ));
    }

    #[test]
    fn everything_else_needs_a_session() {
        for path in [
            "/",
            "/auth/login/",
            "/auth/sso/",
            "/api/client-config/",
            "/api/0/organizations/",
            "/organizations/acme/issues/",
            "/api/00/store/",
            "/api/0store/",
            "/_health/x",
            "/_health",
            "/js-sdk-loader/a/b.js",
            "/oauth/authorize/",
            "/api/embed/error-page/x",
            "/private?x=/_health/",
            "/_health/%2e%2e/private",
            "/_health/..%2Fprivate",
            "/_static%2F..%2Fprivate",
            "/private%23/_health/",
            "/api/0/relays%2F..%2Fusers/",
        ] {
            let raw = path.split('?').next().unwrap();
            assert!(
                !public_in_sentry("GET", raw, &[]),
                "{path} must need a session"
            );
        }
    }
}
