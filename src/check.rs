//! `ssogate check`: validates the config, then reaches every peer the gateway needs,
//! printing one OK/FAIL line per step with the reason, and what is in force: values
//! from the environment, the URIs to register, the route table with its requirements,
//! and the identity assertion's key (loaded, its `kid`, the keys published).

mod around;
mod certificate;

use std::path::Path;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::assertion::{self, AssertionSigner};
use crate::config::{AccessSettings, Settings, TlsSettings};
use crate::gateway::Gateway;
use crate::outbound;
use crate::server::tls;

/// One printed line of the report.
struct Report {
    failures: usize,
}

impl Report {
    fn step(&mut self, name: &str, result: Result<String, String>) -> bool {
        match result {
            Ok(detail) => {
                println!("OK   {name}: {detail}");
                true
            }
            Err(reason) => {
                println!("FAIL {name}: {reason}");
                self.failures += 1;
                false
            }
        }
    }

    /// Something that works but that the operator should know (not a failure).
    fn warn(&mut self, name: &str, text: &str) {
        println!("WARN {name}: {text}");
    }

    /// A line a check module gave.
    fn line(&mut self, name: &str, line: Line) {
        match line {
            Line::Pass(text) => _ = self.step(name, Ok(text)),
            Line::Fail(text) => _ = self.step(name, Err(text)),
            Line::Warn(text) => self.warn(name, &text),
            Line::Note(text) => println!("     {name}: {text}"),
        }
    }
}

/// One line of the report, as a check module gives it.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// `OK   name: text`
    Pass(String),
    /// `FAIL name: text` (the check fails)
    Fail(String),
    /// `WARN name: text` (works, but the operator should know)
    Warn(String),
    /// `     name: text` (nothing could be told, and why)
    Note(String),
}

/// Runs every check; returns true when all passed (warnings do not fail it).
pub async fn run(config: Option<&Path>) -> bool {
    let mut report = Report { failures: 0 };
    let settings = match Settings::load(config) {
        Ok(settings) => settings,
        Err(e) => {
            for problem in e.problems() {
                report.step("config", Err(problem.to_string()));
            }
            return false;
        }
    };
    let shown = config.map_or("environment only".to_owned(), |p| p.display().to_string());
    report.step("config", Ok(shown));
    for set in &settings.from_environment {
        if set.overrides_file {
            report.warn(
                "environment",
                &format!(
                    "{} is set by {}, over the value in the config file",
                    set.key, set.variable
                ),
            );
        } else {
            println!("     {} is set by {}", set.key, set.variable);
        }
    }
    print_rules(&settings);
    for (what, path) in [
        ("redirect URI", &settings.oidc.callback_path),
        ("post-logout redirect URI", &settings.oidc.post_logout_path),
    ] {
        let uri = settings
            .server
            .public_url
            .join(path)
            .map(String::from)
            .unwrap_or_default();
        println!("     register this {what} at the provider: {uri}");
    }
    if let TlsSettings::Acme(acme) = &settings.tls {
        for line in acme_lines(acme, SystemTime::now()) {
            report.line("tls acme", line);
        }
    }
    match (settings.tls.files(), settings.server.public_url.host()) {
        (None, _) if matches!(settings.tls, TlsSettings::Acme(_)) => {}
        (Some((cert_file, key_file)), Some(host)) => {
            let now = std::time::SystemTime::now();
            let aliases = &settings.server.host_aliases;
            for line in certificate::check(cert_file, key_file, &host, aliases, now) {
                report.line("tls certificate", line);
            }
        }
        _ => {
            report.step(
                "tls",
                tls::server_config(&settings.tls)
                    .map(|c| {
                        if c.is_some() {
                            "certificate and key load".to_owned()
                        } else {
                            "off (another terminator in front)".to_owned()
                        }
                    })
                    .map_err(|e| e.to_string()),
            );
        }
    }
    let assertion_ok = report_assertion(&mut report, &settings);
    let gateway = match Gateway::new(settings.clone()) {
        Ok(gateway) => gateway,
        Err(e) => {
            // A key that cannot be used has its own line already.
            if assertion_ok {
                report.step("setup", Err(e.to_string()));
            }
            return false;
        }
    };
    let provider = gateway.provider();
    let metadata = provider.fetch_metadata().await;
    let discovery_ok = report.step(
        "provider discovery",
        metadata
            .as_ref()
            .map(|m| {
                format!(
                    "{} (issuer {})",
                    provider.discovery_url(),
                    m.issuer().as_str()
                )
            })
            .map_err(|e| with_hint(e.to_string(), "oidc.ca_file")),
    );
    if let (true, Ok(metadata)) = (discovery_ok, &metadata) {
        report.step(
            "provider signing keys",
            match provider.fetch_keys(metadata).await {
                Ok(keys) if keys.keys().is_empty() => Err(format!(
                    "{} holds no signing keys: no ID token can be verified",
                    metadata.jwks_uri().as_str()
                )),
                Ok(keys) => Ok(format!(
                    "{} key(s) at {}",
                    keys.keys().len(),
                    metadata.jwks_uri().as_str()
                )),
                Err(e) => Err(with_hint(e.to_string(), "oidc.ca_file")),
            },
        );
        for warning in refresh_warnings(&settings.oidc.scopes, metadata) {
            report.warn("refresh tokens", &warning);
        }
    }
    let upstream_ok = report.step("upstream", reach_upstream(&settings).await);
    for line in around::probe(&settings.upstream.url).await.lines() {
        report.line("upstream around the gateway", line);
    }
    if upstream_ok && settings.access.preset.as_deref() == Some("sentry") {
        report.step("upstream is Sentry", upstream_is_sentry(&settings).await);
    }
    if let crate::config::StoreSettings::Redis(redis) = &settings.session.store {
        report.step(
            "session store",
            gateway
                .ping_session_store()
                .await
                .map(|version| format!("Redis {version} at {}", redis.redacted_url()))
                .map_err(|e| format!("{} ({})", e, redis.redacted_url())),
        );
        if let Some(topology) = gateway.session_store_topology().await {
            report.step("session store topology", topology);
        }
    }
    if report.failures == 0 {
        println!("all checks passed");
    }
    report.failures == 0
}

/// The ACME state (`tls acme` lines): the CA, the account, the certificate and its
/// renewal. The gateway renews the certificate itself, so an expiry close is no
/// failure here: the lines say whether the renewal is ahead, under way (due, nothing
/// to do), or overdue (orders have been failing: a warning, as is an expired one).
fn acme_lines(acme: &crate::config::AcmeSettings, now: SystemTime) -> Vec<Line> {
    use crate::server::acme::{self, StoredCertificate};
    let mut lines = vec![Line::Pass(format!(
        "{} from {}, state in {}",
        acme.names.join(", "),
        acme.directory,
        acme.state_dir.display()
    ))];
    lines.push(Line::Note(if acme::account_stored(acme) {
        "account stored".into()
    } else {
        "no account yet: it is made at the first order".into()
    }));
    let date = |time| chrono::DateTime::<chrono::Utc>::from(time).format("%Y-%m-%d %H:%M UTC");
    let (not_before, not_after) = match acme::stored_certificate(acme) {
        StoredCertificate::Valid(not_before, not_after) => (not_before, not_after),
        StoredCertificate::None => {
            lines.push(Line::Note(
                "no certificate yet: a self-signed placeholder is served until the first order succeeds".into(),
            ));
            return lines;
        }
        StoredCertificate::Unusable(why) => {
            lines.push(Line::Warn(format!(
                "the stored certificate does not load ({why}): the gateway serves a self-signed \
                 placeholder and orders a new one at start"
            )));
            return lines;
        }
        StoredCertificate::NotForName(name) => {
            lines.push(Line::Warn(format!(
                "the stored certificate is not for {name} (tls.acme_names changed): the gateway \
                 orders one for the names at start, and serves the stored one until then"
            )));
            return lines;
        }
    };
    let (renewal_from, renewal_by) = acme::renewal_window(not_before, not_after);
    let expires = match not_after.duration_since(now) {
        Ok(left) => format!("expires {} (in {})", date(not_after), span(left)),
        Err(_) => {
            lines.push(Line::Warn(format!(
                "the certificate expired {}: clients refuse it until the gateway's next order \
                 succeeds (it orders at start, and retries a minute to an hour apart; each failure \
                 logs `ACME order failed`)",
                date(not_after)
            )));
            return lines;
        }
    };
    let overdue_after = renewal_by + Duration::from_secs(24 * 3600);
    lines.push(if now < renewal_from {
        Line::Pass(format!(
            "certificate {expires}; the gateway renews it itself around {}",
            date(renewal_by)
        ))
    } else if now < overdue_after {
        Line::Pass(format!(
            "certificate {expires}; its renewal is due now and the gateway carries it out by \
             itself (at start, or already under way): nothing to do"
        ))
    } else {
        Line::Warn(format!(
            "certificate {expires}; its renewal was due {}, so the gateway's orders have been \
             failing (or it has not run): see its log (`ACME order failed`) and \
             ssogate_acme_orders_total{{outcome=\"failed\"}}",
            date(renewal_by)
        ))
    });
    lines
}

/// A duration in days, hours or minutes, whichever reads best.
fn span(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        s if s >= 2 * 86400 => format!("{} days", s / 86400),
        s if s >= 2 * 3600 => format!("{} hours", s / 3600),
        s => format!("{} minutes", s / 60),
    }
}

/// The identity assertion's line: its key loaded (and its `kid`), what is published
/// and what the token says; a FAIL naming the key and file when a key cannot be used.
/// False only for that failure.
fn report_assertion(report: &mut Report, settings: &Settings) -> bool {
    let Some(config) = &settings.assertion else {
        println!("     assertion: off (no assertion.key_file)");
        return true;
    };
    let public_url = &settings.server.public_url;
    let signer = match AssertionSigner::new(config, assertion::issuer_of(public_url), 1) {
        Ok(signer) => signer,
        Err(e) => return report.step("assertion key", Err(e.to_string())),
    };
    let jwks = public_url
        .join(assertion::JWKS_PATH)
        .map(String::from)
        .unwrap_or_default();
    report.step(
        "assertion key",
        Ok(format!(
            "{} key loaded from {}, kid {}; {} key(s) published at {jwks}; header {}, iss {}, aud {}, lifetime {}s",
            assertion::ALGORITHM,
            config.key_file.display(),
            signer.kid(),
            signer.published_kids().count(),
            signer.header_name(),
            signer.issuer(),
            signer.audience(),
            config.lifetime.as_secs(),
        )),
    )
}

/// What stands between the configured scopes and refresh tokens that really arrive,
/// read from the provider's discovery document.
fn refresh_warnings(
    scopes: &[String],
    metadata: &openidconnect::ProviderMetadataWithLogout,
) -> Vec<String> {
    if !scopes.iter().any(|s| s == crate::oidc::OFFLINE_ACCESS) {
        return vec![
            "`offline_access` is not among oidc.scopes: no refresh tokens, so every session \
             signs in again (silently while the provider session lives) when its access token \
             expires; see config/SENTRY.md, \"How long a revocation takes\""
                .into(),
        ];
    }
    let mut warnings = Vec::new();
    let scope_listed = metadata.scopes_supported().is_some_and(|listed| {
        listed
            .iter()
            .any(|s| s.as_str() == crate::oidc::OFFLINE_ACCESS)
    });
    if !scope_listed {
        warnings.push(
            "the provider's discovery document does not list `offline_access` in \
             scopes_supported: it may issue no refresh tokens"
                .into(),
        );
    }
    // OpenID Connect Discovery: an absent grant_types_supported means
    // ["authorization_code", "implicit"], so no refresh_token grant.
    let grant_listed = metadata
        .grant_types_supported()
        .is_some_and(|grants| grants.contains(&openidconnect::core::CoreGrantType::RefreshToken));
    if !grant_listed {
        warnings.push(
            "the provider's discovery document does not list the `refresh_token` grant in \
             grant_types_supported: refreshing sessions will fail"
                .into(),
        );
    }
    warnings
}

/// The effective route table, in the order rules are tried.
fn print_rules(settings: &Settings) {
    let access = &settings.access;
    println!(
        "     route rules (first match wins; preset: {}):",
        access.preset.as_deref().unwrap_or("none")
    );
    let global = global_requirements(access);
    for rule in access.rules.iter() {
        let line = crate::policy::describe(rule);
        if rule.action == crate::rules::Action::Authenticated {
            println!("       {line}{global}");
        } else {
            println!("       {line}");
        }
    }
    println!("       authenticated *        (everything else){global}");
    if !access.upstream_session_cookies.is_empty() {
        println!(
            "     removed from requests let through by a credential: cookies {}",
            access.upstream_session_cookies.join(", ")
        );
    }
}

/// The `[access]` requirements every authenticated route adds to its own, as a suffix
/// for its line in the route table.
fn global_requirements(access: &AccessSettings) -> String {
    let mut parts = Vec::new();
    if !access.allowed_email_domains.is_empty() {
        parts.push(format!(
            "domains: {}",
            access.allowed_email_domains.join(",")
        ));
    }
    if !access.allowed_emails.is_empty() {
        parts.push(format!("emails: {}", access.allowed_emails.join(",")));
    }
    if let Some(file) = &access.allowed_emails_file {
        parts.push(format!("emails in {}", file.display()));
    }
    if !access.required_groups.is_empty() {
        parts.push(format!("groups: {}", access.required_groups.join(",")));
    }
    if parts.is_empty() {
        return "  + [access]: anyone who signs in".into();
    }
    if access.require_email_verified {
        parts.push("verified email".into());
    }
    format!("  + [access] {}", parts.join("; "))
}

/// The failure, with a line on what usually causes it when the text says.
fn with_hint(reason: String, ca_key: &str) -> String {
    match hint(&reason, ca_key) {
        Some(hint) => format!("{reason}\n     hint: {hint}"),
        None => reason,
    }
}

/// What the operator most likely has to change, read from a failure's text.
fn hint(reason: &str, ca_key: &str) -> Option<String> {
    let hint = if reason.contains("UnknownIssuer") {
        format!(
            "the server's certificate is signed by a CA this host does not trust: give that CA's PEM file in {ca_key}"
        )
    } else if reason.contains("InvalidContentType") || reason.contains("corrupt message") {
        "this port answers plain HTTP, not TLS: write http:// (or the port that speaks https)"
            .into()
    } else if reason.contains("dns error") || reason.contains("failed to lookup address") {
        "the host name does not resolve from this machine (DNS): check the spelling, /etc/hosts and the resolver".into()
    } else if reason.contains("Connection refused") {
        "nothing listens at that address and port".into()
    } else if reason.contains(
        "/.well-known/openid-configuration is not a valid document: expected value at line 1",
    ) || reason.contains("/.well-known/openid-configuration answered HTTP 404")
    {
        "no discovery document there (an HTML page or 404): oidc.issuer's path is probably wrong; for Encvoy ID it is https://<host>/api/oidc".into()
    } else {
        return None;
    };
    Some(hint)
}

async fn reach_upstream(settings: &Settings) -> Result<String, String> {
    let url = settings.upstream.url.as_str();
    upstream_get(settings, url)
        .await
        .map(|status| format!("{url} answered HTTP {}", status.as_u16()))
}

/// With the Sentry preset: the upstream answers Sentry's health check, so it is
/// Sentry (its nginx) and not some other service on that port.
async fn upstream_is_sentry(settings: &Settings) -> Result<String, String> {
    let url = format!(
        "{}/_health/",
        settings.upstream.url.as_str().trim_end_matches('/')
    );
    match upstream_get(settings, &url).await? {
        status if status.is_success() => Ok(format!("{url} answered HTTP {}", status.as_u16())),
        status => Err(format!(
            "{url} answered HTTP {}: this does not look like Sentry (its /_health/ answers \
             200); upstream.url should be self-hosted Sentry's nginx (SENTRY_BIND)",
            status.as_u16()
        )),
    }
}

/// The status of a GET to `url` on the upstream, or why there is none.
async fn upstream_get(settings: &Settings, url: &str) -> Result<http::StatusCode, String> {
    let upstream = &settings.upstream;
    let roots = outbound::root_store(upstream.ca_file.as_deref()).map_err(|e| e.to_string())?;
    let connector =
        outbound::connector(roots, upstream.connect_timeout).map_err(|e| e.to_string())?;
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let uri: http::Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| e.to_string())?;
    let request = client.get(uri);
    match tokio::time::timeout(
        Duration::from_secs(10).max(upstream.connect_timeout),
        request,
    )
    .await
    {
        Ok(Ok(response)) => Ok(response.status()),
        Ok(Err(e)) => Err(with_hint(
            format!("{url}: {}", crate::errors::error_chain(&e)),
            "upstream.ca_file",
        )),
        Err(_) => Err(format!("{url}: no answer within 10s")),
    }
}

#[cfg(test)]
mod tests {
    use super::{Line, acme_lines, hint, refresh_warnings};
    use std::time::{Duration, SystemTime};

    const DAY: Duration = Duration::from_secs(86400);

    /// ACME settings for `sentry.example.com` whose state directory holds a certificate
    /// for `name` valid 90 days from 2030-01-01 (its issue date, returned).
    fn acme_with_certificate(
        dir: &std::path::Path,
        name: &str,
    ) -> (crate::config::AcmeSettings, SystemTime) {
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2030, 1, 1);
        params.not_after = rcgen::date_time_ymd(2030, 4, 1);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("fullchain.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("privkey.pem"), key.serialize_pem()).unwrap();
        let settings = crate::config::AcmeSettings {
            directory: url::Url::parse(crate::config::LETS_ENCRYPT_DIRECTORY).unwrap(),
            contact: "mailto:ops@example.com".into(),
            names: vec!["sentry.example.com".into()],
            state_dir: dir.to_owned(),
            ca_file: None,
            external_account: None,
        };
        let issued = SystemTime::UNIX_EPOCH + Duration::from_secs(1_893_456_000); // 2030-01-01
        (settings, issued)
    }

    /// The certificate's line (the last) on `day` after issue.
    fn certificate_line(acme: &crate::config::AcmeSettings, issued: SystemTime, day: u32) -> Line {
        acme_lines(acme, issued + DAY * day).pop().unwrap()
    }

    #[test]
    fn an_acme_certificate_near_expiry_is_fine_while_the_renewal_is_due_and_a_warning_when_overdue()
    {
        let dir = tempfile::tempdir().unwrap();
        let (acme, issued) = acme_with_certificate(dir.path(), "sentry.example.com");
        // 90 days: renewed between day 55.5 and day 60, by the gateway itself.
        assert_eq!(
            certificate_line(&acme, issued, 10),
            Line::Pass(
                "certificate expires 2030-04-01 00:00 UTC (in 80 days); the gateway renews it \
                 itself around 2030-03-02 00:00 UTC"
                    .into()
            )
        );
        let due = Line::Pass(
            "certificate expires 2030-04-01 00:00 UTC (in 31 days); its renewal is due now and \
             the gateway carries it out by itself (at start, or already under way): nothing to do"
                .into(),
        );
        assert_eq!(certificate_line(&acme, issued, 59), due);
        let Line::Warn(overdue) = certificate_line(&acme, issued, 85) else {
            panic!("overdue is a warning");
        };
        assert!(
            overdue.starts_with(
                "certificate expires 2030-04-01 00:00 UTC (in 5 days); its renewal was due \
                 2030-03-02 00:00 UTC, so the gateway's orders have been failing"
            ),
            "{overdue}"
        );
        assert!(overdue.contains("ACME order failed"), "{overdue}");
        let Line::Warn(expired) = certificate_line(&acme, issued, 91) else {
            panic!("expired is a warning");
        };
        assert!(
            expired.starts_with("the certificate expired 2030-04-01 00:00 UTC: clients refuse it"),
            "{expired}"
        );
        // None of it fails the check.
        for day in [0, 10, 59, 85, 91] {
            let lines = acme_lines(&acme, issued + DAY * day);
            assert!(
                !lines.iter().any(|l| matches!(l, Line::Fail(_))),
                "{lines:?}"
            );
        }
    }

    #[test]
    fn an_acme_certificate_for_other_names_or_broken_is_said_so() {
        let dir = tempfile::tempdir().unwrap();
        let (acme, issued) = acme_with_certificate(dir.path(), "old.example.com");
        assert_eq!(
            certificate_line(&acme, issued, 10),
            Line::Warn(
                "the stored certificate is not for sentry.example.com (tls.acme_names changed): \
                 the gateway orders one for the names at start, and serves the stored one until then"
                    .into()
            )
        );
        std::fs::write(dir.path().join("privkey.pem"), "not a key").unwrap();
        let Line::Warn(broken) = certificate_line(&acme, issued, 10) else {
            panic!("a broken certificate is a warning");
        };
        assert!(
            broken.starts_with("the stored certificate does not load (tls.key_file "),
            "{broken}"
        );
        std::fs::remove_file(dir.path().join("fullchain.pem")).unwrap();
        assert_eq!(
            certificate_line(&acme, issued, 10),
            Line::Note(
                "no certificate yet: a self-signed placeholder is served until the first order succeeds"
                    .into()
            )
        );
    }

    #[test]
    fn common_failures_get_a_hint() {
        for (reason, fragment) in [
            (
                "cannot reach https://id.example/api/oidc/.well-known/openid-configuration: error sending request: client error (Connect): invalid peer certificate: UnknownIssuer",
                "give that CA's PEM file in oidc.ca_file",
            ),
            (
                "https://id.example/api/oidc/.well-known/openid-configuration is not a valid document: expected value at line 1 column 1",
                "oidc.issuer's path is probably wrong",
            ),
        ] {
            let hint = hint(reason, "oidc.ca_file").unwrap_or_default();
            assert!(hint.contains(fragment), "{reason}: {hint}");
        }
        assert_eq!(hint("answered HTTP 500", "oidc.ca_file"), None);
    }

    fn metadata(extra: serde_json::Value) -> openidconnect::ProviderMetadataWithLogout {
        let mut document = serde_json::json!({
            "issuer": "https://id.example/api/oidc",
            "authorization_endpoint": "https://id.example/api/oidc/oidc/auth",
            "token_endpoint": "https://id.example/api/oidc/oidc/token",
            "jwks_uri": "https://id.example/api/oidc/oidc/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        });
        document
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(document).unwrap()
    }

    fn scopes(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn offline_access_with_a_provider_that_lists_it_and_the_grant_is_quiet() {
        let listed = metadata(serde_json::json!({
            "scopes_supported": ["openid", "offline_access"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
        }));
        assert!(refresh_warnings(&scopes(&["openid", "offline_access"]), &listed).is_empty());
    }

    #[test]
    fn a_provider_without_the_scope_or_the_grant_is_named() {
        let bare = metadata(serde_json::json!({}));
        let warnings = refresh_warnings(&scopes(&["openid", "offline_access"]), &bare);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("scopes_supported"));
        assert!(warnings[1].contains("grant_types_supported"));
    }

    #[test]
    fn without_offline_access_the_operator_hears_what_people_will_see() {
        let listed = metadata(serde_json::json!({"scopes_supported": ["openid"]}));
        let warnings = refresh_warnings(&scopes(&["openid", "email"]), &listed);
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("signs in again"), "{}", warnings[0]);
    }
}
