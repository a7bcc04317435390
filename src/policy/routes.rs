//! Which route a request takes by the route rules ([`crate::rules`]): no session
//! needed (Sentry's machine traffic), or a session and maybe more. Rules match the
//! method, a path, and optionally a credential the request carries ([`Admission`]);
//! the first match wins, operator rules before the preset's, and a request no rule
//! matches needs a session (and the global access rules).
//!
//! [`decide`] makes the decision on every form of the path the upstream may act on
//! ([`super::path::decoded_views`]): a request is public only if every form is, and a
//! protected one must satisfy every rule any form matched. So `/manage%2F` meets the
//! rule for `/manage/` that Sentry, which decodes `%2F`, will apply.

use http::{HeaderMap, Method};

use super::credentials::has_sentry_credential;
use super::path::decoded_views;
use crate::rules::{Action, Admission, RouteRule, RouteRules};

/// Whether `rule`, whose path matched, applies to a request with this method and
/// headers.
fn applies(rule: &RouteRule, method: &Method, headers: &HeaderMap) -> bool {
    (rule.methods.is_empty() || rule.methods.contains(method)) && admits(&rule.admission, headers)
}

fn admits(admission: &Admission, headers: &HeaderMap) -> bool {
    match admission {
        Admission::Always => true,
        Admission::Header(name) => headers
            .get_all(name)
            .iter()
            .any(|value| !value.as_bytes().trim_ascii().is_empty()),
        Admission::SentryCredential => has_sentry_credential(headers),
    }
}

/// The first rule that matches `path` as it is, if any.
pub fn first_match<'a>(
    rules: &'a RouteRules,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Option<&'a RouteRule> {
    rules
        .matching_paths(path)
        .map(|index| &rules[index])
        .find(|rule| applies(rule, method, headers))
}

/// What the rules decide for one request.
#[derive(Debug)]
pub enum Route<'a> {
    /// Forward without a session. `by_credential`: a rule let it through because of a
    /// credential it carries, which must then be the only thing the upstream can
    /// authenticate it by (the upstream's own session cookies are removed).
    Public { by_credential: bool },
    /// A session is needed, that the global rules and each of these rules admit.
    Protected(Vec<&'a RouteRule>),
}

/// Two decisions are the same when they name the very same rules.
impl PartialEq for Route<'_> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Route::Public { by_credential: a }, Route::Public { by_credential: b }) => a == b,
            (Route::Protected(a), Route::Protected(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(a, b)| std::ptr::eq(*a, *b))
            }
            _ => false,
        }
    }
}

/// The decision for a request whose canonical path is `path`: public only if every
/// view of the path ([`decoded_views`]) is matched by a public rule; otherwise
/// protected by every authenticated rule that matched a view.
pub fn decide<'a>(
    rules: &'a RouteRules,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Route<'a> {
    let views = decoded_views(path);
    let matched = std::iter::once(path)
        .chain(views.iter().map(String::as_str))
        .map(|view| first_match(rules, method, view, headers));
    let mut public = true;
    let mut by_credential = false;
    let mut requirements: Vec<&RouteRule> = Vec::new();
    for rule in matched {
        match rule {
            Some(rule) if rule.action == Action::Public => {
                by_credential |= rule.admission != Admission::Always;
            }
            Some(rule) => {
                public = false;
                if !requirements.iter().any(|r| std::ptr::eq(*r, rule)) {
                    requirements.push(rule);
                }
            }
            None => public = false,
        }
    }
    if public {
        Route::Public { by_credential }
    } else {
        Route::Protected(requirements)
    }
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
    match &rule.admission {
        Admission::Always => {}
        Admission::Header(header) => line.push_str(&format!("  (only with {header})")),
        Admission::SentryCredential => {
            line.push_str("  (only with a Sentry credential: Bearer, Basic API key or DSN)")
        }
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
    use crate::rules::{Requirements, sentry_preset};
    use base64::Engine;
    use http::HeaderName;
    use percent_encoding::percent_decode_str;
    use proptest::prelude::*;
    use regex::Regex;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (n, v) in pairs {
            map.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        map
    }

    /// The decision for a raw request path, as the gateway makes it: canonical form
    /// first, then every view of it.
    fn route<'a>(
        rules: &'a RouteRules,
        method: &str,
        raw_path: &str,
        pairs: &[(&str, &str)],
    ) -> Route<'a> {
        let path = normalize_path(raw_path).unwrap();
        decide(rules, &method.parse().unwrap(), &path, &headers(pairs))
    }

    fn public_in_sentry(method: &str, raw_path: &str, pairs: &[(&str, &str)]) -> bool {
        matches!(
            route(&preset(), method, raw_path, pairs),
            Route::Public { .. }
        )
    }

    fn preset() -> RouteRules {
        RouteRules::new(sentry_preset()).unwrap()
    }

    /// The Sentry preset behind two operator rules, as in README's examples.
    fn rules_with_an_admin_area() -> RouteRules {
        let mut rules = vec![
            RouteRule {
                name: "admin area".into(),
                methods: vec![],
                path: Regex::new("^/manage/").unwrap(),
                admission: Admission::Always,
                action: Action::Authenticated,
                requirements: Requirements {
                    allowed_groups: vec!["sentry:admin".into()],
                    ..Default::default()
                },
            },
            RouteRule {
                name: "status page".into(),
                methods: vec![Method::GET],
                path: Regex::new("^/status/$").unwrap(),
                admission: Admission::Always,
                action: Action::Public,
                requirements: Requirements::default(),
            },
        ];
        rules.extend(sentry_preset());
        RouteRules::new(rules).unwrap()
    }

    /// True when `a` lets through nothing that `b` stops: `b` public, or both
    /// protected and `a` by at least `b`'s rules.
    fn at_least_as_strict(a: &Route<'_>, b: &Route<'_>) -> bool {
        match (a, b) {
            (_, Route::Public { .. }) => true,
            (Route::Public { .. }, Route::Protected(_)) => false,
            (Route::Protected(a), Route::Protected(b)) => {
                b.iter().all(|rule| a.iter().any(|r| r.name == rule.name))
            }
        }
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
            let raw = path.split('?').next().unwrap();
            assert_eq!(
                route(&preset(), "POST", raw, &[]),
                Route::Public {
                    by_credential: false
                },
                "{path} should be public"
            );
        }
        assert_eq!(
            route(
                &preset(),
                "GET",
                "/api/0/organizations/",
                &[("authorization", "Bearer sntrys_x")]
            ),
            Route::Public {
                by_credential: true
            },
            "token traffic is public by its credential"
        );
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
            "/api/0/relays%2F..%2F..%2Fusers/",
            "/_static%5C..%5Cprivate",
        ] {
            let raw = path.split('?').next().unwrap();
            assert!(
                !public_in_sentry("GET", raw, &[]),
                "{path} must need a session"
            );
        }
    }

    #[test]
    fn token_api_admits_only_credentials_sentry_would_try() {
        let api_key = base64::engine::general_purpose::STANDARD.encode("0123abcd:");
        let with_password = base64::engine::general_purpose::STANDARD.encode("user:pass");
        for (value, public) in [
            ("Bearer sntrys_eyJ0eXAiOiJKV1QifQ==_abc", true),
            ("bearer 0123456789abcdef", true),
            (&format!("Basic {api_key}"), true),
            ("DSN https://key@sentry.example.com/1", true),
            ("", false),
            ("   ", false),
            ("Bearer", false),
            ("Basic", false),
            ("x", false),
            ("x abc", false),
            (&format!("Basic {with_password}"), false),
        ] {
            let pairs = [("authorization", value)];
            assert_eq!(
                public_in_sentry("POST", "/api/0/auth/login/", &pairs),
                public,
                "Authorization: {value:?}"
            );
        }
    }

    #[test]
    fn an_operator_header_condition_needs_a_value() {
        let rules = RouteRules::new(vec![RouteRule {
            name: "hook".into(),
            methods: vec![],
            path: Regex::new("^/hook/").unwrap(),
            admission: Admission::Header(HeaderName::from_static("x-hook-signature")),
            action: Action::Public,
            requirements: Requirements::default(),
        }])
        .unwrap();
        let signed = [("x-hook-signature", "sha256=abc")];
        assert_eq!(
            route(&rules, "POST", "/hook/", &signed),
            Route::Public {
                by_credential: true
            }
        );
        for blank in ["", " ", "\t"] {
            let pairs = [("x-hook-signature", blank)];
            assert_eq!(
                route(&rules, "POST", "/hook/", &pairs),
                Route::Protected(vec![])
            );
        }
    }

    #[test]
    fn rules_see_the_path_as_sentry_decodes_it() {
        let rules = rules_with_an_admin_area();
        let admin = |raw: &str| matches!(route(&rules, "GET", raw, &[]), Route::Protected(ref r) if r.iter().any(|r| r.name == "admin area"));
        for raw in [
            "/manage/",
            "/manage%2F",
            "/manage%2f",
            "/manage%2Fusers%2F",
            "/%6Danage%2F",
            "/x/..%2Fmanage%2F",
            "/x%2F..%2Fmanage%2F",
            "/x%5C..%5Cmanage%5C",
            "/manage%5C",
            "//manage%2F%2F",
            // Once found by the property test below (a `\` that resolves away).
            "/a\\b/../manage/",
        ] {
            assert!(admin(raw), "{raw} is the admin area to Sentry");
        }
        assert!(
            !admin("/manage%252F"),
            "decoded once, like Django: no slash"
        );
    }

    #[test]
    fn release_names_with_an_encoded_slash_still_work() {
        let rules = rules_with_an_admin_area();
        let path = "/api/0/projects/acme/web/releases/app%2F1.0/files/";
        assert_eq!(
            route(&rules, "GET", path, &[("authorization", "Bearer sntrys_x")]),
            Route::Public {
                by_credential: true
            }
        );
        assert_eq!(route(&rules, "GET", path, &[]), Route::Protected(vec![]));
    }

    /// A path made of segments that the rules above care about.
    fn plain_path(clean: bool) -> impl Strategy<Value = String> {
        let segment = if clean {
            prop::sample::select(vec![
                "manage", "api", "0", "42", "relays", "_static", "status", "users", "x",
                "envelope", "_health", "releases", "a\\b",
            ])
            .boxed()
        } else {
            prop::sample::select(vec![
                "manage", "api", "0", "42", "relays", "_static", "status", "users", "x",
                "envelope", "_health", ".", "..", "", "a\\b",
            ])
            .boxed()
        };
        (prop::collection::vec(segment, 1..6), any::<bool>()).prop_map(|(segments, slash)| {
            let mut path = format!("/{}", segments.join("/"));
            if slash {
                path.push('/');
            }
            path
        })
    }

    /// `plain` with each character written literally or percent-encoded (upper or
    /// lower case hex), as `choices` say; `encode_separators` allows `/` and `\` to be
    /// encoded too.
    fn encoded(plain: &str, choices: &[u8], encode_separators: bool) -> String {
        let mut out = String::new();
        for (i, c) in plain.chars().enumerate() {
            let choice = choices[i % choices.len()] % 3;
            let separator = c == '/' || c == '\\';
            if i == 0 || choice == 0 || (separator && !encode_separators) {
                out.push(c);
            } else if choice == 1 {
                out.push_str(&format!("%{:02X}", c as u32));
            } else {
                out.push_str(&format!("%{:02x}", c as u32));
            }
        }
        out
    }

    proptest! {
        /// The regex set finds the rule that trying every rule in order finds.
        #[test]
        fn the_first_match_is_the_first_rule_in_order_that_matches(
            path in plain_path(false),
            method in prop::sample::select(vec!["GET", "POST", "PUT"]),
            token in any::<bool>(),
        ) {
            let rules = rules_with_an_admin_area();
            let method: Method = method.parse().unwrap();
            let pairs: &[(&str, &str)] = if token { &[("authorization", "Bearer abc")] } else { &[] };
            let headers = headers(pairs);
            let in_order = rules
                .iter()
                .find(|rule| rule.path.is_match(&path) && applies(rule, &method, &headers));
            let found = first_match(&rules, &method, &path, &headers);
            prop_assert!(
                found.map(|r| &r.name) == in_order.map(|r| &r.name),
                "{} {}: {:?} vs {:?}", method, path, found.map(|r| &r.name), in_order.map(|r| &r.name)
            );
        }

        /// Whatever the encoding, the decision is at least as strict as the one on
        /// the path Sentry routes on: the forwarded path, decoded once, as it is and
        /// with dot segments resolved.
        #[test]
        fn the_decision_is_never_weaker_than_what_the_upstream_routes_on(
            plain in plain_path(false),
            choices in prop::collection::vec(any::<u8>(), 1..32),
            method in prop::sample::select(vec!["GET", "POST"]),
            token in any::<bool>(),
        ) {
            let rules = rules_with_an_admin_area();
            let raw = encoded(&plain, &choices, true);
            let pairs: &[(&str, &str)] = if token { &[("authorization", "Bearer abc")] } else { &[] };
            let Ok(forwarded) = normalize_path(&raw) else { return Ok(()) };
            let ours = decide(&rules, &method.parse().unwrap(), &forwarded, &headers(pairs));
            let seen_by_sentry = percent_decode_str(&forwarded).decode_utf8_lossy().into_owned();
            for view in [seen_by_sentry.clone(), normalize_path(&seen_by_sentry.replace('%', "%25")).unwrap()] {
                let theirs = match first_match(&rules, &method.parse().unwrap(), &view, &headers(pairs)) {
                    Some(rule) if rule.action == Action::Public => Route::Public { by_credential: false },
                    Some(rule) => Route::Protected(vec![rule]),
                    None => Route::Protected(vec![]),
                };
                prop_assert!(at_least_as_strict(&ours, &theirs), "{} ({}): {:?} vs {:?} on {}", raw, forwarded, ours, theirs, view);
            }
        }

        /// Encoding a path without dot segments never makes it weaker than the path
        /// written plainly.
        #[test]
        fn encodings_never_weaken_a_plain_path(
            plain in plain_path(true),
            choices in prop::collection::vec(any::<u8>(), 1..32),
            token in any::<bool>(),
        ) {
            let rules = rules_with_an_admin_area();
            let pairs: &[(&str, &str)] = if token { &[("authorization", "Bearer abc")] } else { &[] };
            let raw = encoded(&plain, &choices, true);
            let ours = route(&rules, "GET", &raw, pairs);
            let plainly = route(&rules, "GET", &plain, pairs);
            prop_assert!(at_least_as_strict(&ours, &plainly), "{}: {:?} vs {:?}", raw, ours, plainly);
        }

        /// Encoding anything but the separators changes nothing at all.
        #[test]
        fn harmless_encodings_change_nothing(
            plain in plain_path(false),
            choices in prop::collection::vec(any::<u8>(), 1..32),
            token in any::<bool>(),
        ) {
            let rules = rules_with_an_admin_area();
            let pairs: &[(&str, &str)] = if token { &[("authorization", "Bearer abc")] } else { &[] };
            let raw = encoded(&plain, &choices, false);
            prop_assert_eq!(route(&rules, "GET", &raw, pairs), route(&rules, "GET", &plain, pairs), "{}", raw);
        }
    }
}
