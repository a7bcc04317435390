//! Who may pass, which requests need no session, and where people may be sent back
//! to. Pure decisions over the identity, the canonical path and the settings; the only
//! I/O is the reloadable email file.

mod credentials;
mod emails;
mod path;
mod redirect;
mod routes;

use std::collections::HashSet;

pub use credentials::has_sentry_credential;
pub use emails::EmailFile;
pub use path::{PathError, decoded_views, normalize_path};
pub use redirect::{
    MAX_RETURN_TARGET, ReturnTargetTooLong, return_target_or_root, validate_return_target,
};
pub use routes::{Route, decide, describe, first_match};

use crate::config::AccessSettings;
use crate::identity::Identity;
use crate::rules::RouteRule;

/// Why a signed-in person was refused; the text names the rule (shown on the 403 page).
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal(pub String);

/// One set of requirements and where it comes from (for the refusal message).
struct Check<'a> {
    /// `access` or `access.rules "<name>"`: the refusal names `<source>.<key>`.
    source: &'a str,
    /// The key of the groups list: `required_groups` globally, `allowed_groups` per route.
    groups_key: &'a str,
    groups: &'a [String],
    domains: &'a [String],
    emails: &'a [String],
    file_emails: Option<&'a HashSet<String>>,
}

/// Checks the global access rules, then the requirements of each route rule the
/// request matched ([`Route::Protected`]).
pub fn authorize(
    identity: &Identity,
    access: &AccessSettings,
    file_emails: Option<&HashSet<String>>,
    routes: &[&RouteRule],
) -> Result<(), Refusal> {
    let global = Check {
        source: "access",
        groups_key: "required_groups",
        groups: &access.required_groups,
        domains: &access.allowed_email_domains,
        emails: &access.allowed_emails,
        file_emails,
    };
    check(identity, &global, access)?;
    for route in routes {
        let source = format!("access.rules \"{}\"", route.name);
        let r = &route.requirements;
        let local = Check {
            source: &source,
            groups_key: "allowed_groups",
            groups: &r.allowed_groups,
            domains: &r.allowed_email_domains,
            emails: &r.allowed_emails,
            file_emails: None,
        };
        check(identity, &local, access)?;
    }
    Ok(())
}

fn check(identity: &Identity, c: &Check<'_>, access: &AccessSettings) -> Result<(), Refusal> {
    let source = c.source;
    let restricts_email = !c.domains.is_empty() || !c.emails.is_empty() || c.file_emails.is_some();
    if restricts_email {
        let Some(email) = identity.email.as_deref() else {
            return Err(Refusal(format!(
                "{source}.allowed_email_domains / allowed_emails: your account has no email address"
            )));
        };
        if access.require_email_verified && !identity.email_verified {
            return Err(Refusal(format!(
                "access.require_email_verified: the email address {email} is not verified"
            )));
        }
        let email = email.to_ascii_lowercase();
        let listed = c.emails.contains(&email) || c.file_emails.is_some_and(|f| f.contains(&email));
        let domain_ok = email_domain(&email).is_some_and(|d| c.domains.iter().any(|a| a == d));
        if !listed && !domain_ok {
            return Err(Refusal(format!(
                "{source}.allowed_email_domains / allowed_emails: {email} is not allowed"
            )));
        }
    }
    if !c.groups.is_empty() && !identity.groups.iter().any(|g| c.groups.contains(g)) {
        return Err(Refusal(format!(
            "{source}.{}: the `{}` claim has none of {}",
            c.groups_key,
            access.groups_claim,
            c.groups.join(", ")
        )));
    }
    Ok(())
}

/// The domain of a syntactically valid address, compared exactly by the callers: the
/// part after the `@`. Valid means one unquoted `@` (so `a@evil.com@corp.com` is not an
/// address of corp.com), a non-empty local part without whitespace or control
/// characters, and a domain of non-empty labels of letters, digits and `-`.
pub fn email_domain(email: &str) -> Option<&str> {
    let (local, domain) = email.rsplit_once('@')?;
    let valid = !local.is_empty()
        && !local.contains(['@', '"'])
        && !local.chars().any(|c| c.is_whitespace() || c.is_control())
        && !domain.is_empty()
        && domain.split('.').all(|label| {
            !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    valid.then_some(domain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{Action, Admission, Requirements};

    fn person(email: &str, verified: bool, groups: &[&str]) -> Identity {
        Identity {
            sub: "u1".into(),
            email: Some(email.into()),
            email_verified: verified,
            preferred_username: None,
            groups: groups.iter().map(|g| g.to_string()).collect(),
            groups_claim: "permissions".into(),
        }
    }

    fn access(domains: &[&str], emails: &[&str], groups: &[&str]) -> AccessSettings {
        AccessSettings {
            allowed_email_domains: domains.iter().map(|s| s.to_string()).collect(),
            allowed_emails: emails.iter().map(|s| s.to_string()).collect(),
            groups_claim: "permissions".into(),
            required_groups: groups.iter().map(|s| s.to_string()).collect(),
            require_email_verified: true,
            ..AccessSettings::default()
        }
    }

    fn allowed(identity: &Identity, rules: &AccessSettings) -> Result<(), Refusal> {
        authorize(identity, rules, None, &[])
    }

    #[test]
    fn domain_is_compared_exactly_after_the_last_at() {
        let rules = access(&["corp.com"], &[], &[]);
        assert!(allowed(&person("a@corp.com", true, &[]), &rules).is_ok());
        assert!(allowed(&person("A@CORP.COM", true, &[]), &rules).is_ok());
        for bad in [
            "a@evil.com@corp.com",
            "a@corp.com@evil.com",
            "a@evil.com@corp.com.evil",
            "a@evilcorp.com",
            "a@sub.corp.com",
            "a@corp.com.evil",
            "@corp.com",
            "a@evil.com",
            "a b@corp.com",
            "a@corp..com",
        ] {
            assert!(
                allowed(&person(bad, true, &[]), &rules).is_err(),
                "{bad} must be refused"
            );
        }
    }

    #[test]
    fn only_syntactically_valid_addresses_have_a_domain() {
        assert_eq!(email_domain("a.b+c@corp.com"), Some("corp.com"));
        assert_eq!(
            email_domain("a@corp.com.evil.com"),
            Some("corp.com.evil.com")
        );
        for invalid in [
            "a@evil.com@corp.com",
            "\"a@evil.com\"@corp.com",
            "a@",
            "@corp.com",
            "a@corp..com",
            "a@corp.com/x",
            "a\n@corp.com",
        ] {
            assert_eq!(email_domain(invalid), None, "{invalid:?}");
        }
    }

    #[test]
    fn unverified_email_is_refused_unless_allowed() {
        let mut rules = access(&["corp.com"], &[], &[]);
        let refusal = allowed(&person("a@corp.com", false, &[]), &rules).unwrap_err();
        assert!(refusal.0.contains("require_email_verified"));
        rules.require_email_verified = false;
        assert!(allowed(&person("a@corp.com", false, &[]), &rules).is_ok());
    }

    #[test]
    fn every_rule_kind_refuses_an_outsider() {
        let outsider = person("x@other.org", true, &["viewer"]);
        let by_domain = allowed(&outsider, &access(&["corp.com"], &[], &[])).unwrap_err();
        assert!(by_domain.0.contains("allowed_email_domains"));
        let by_email = allowed(&outsider, &access(&[], &["boss@corp.com"], &[])).unwrap_err();
        assert!(by_email.0.contains("allowed_emails"));
        let by_group = allowed(&outsider, &access(&[], &[], &["sentry:admin"])).unwrap_err();
        assert!(by_group.0.contains("permissions"));
        let file: HashSet<String> = ["boss@corp.com".to_string()].into();
        let by_file = authorize(&outsider, &access(&[], &[], &[]), Some(&file), &[]).unwrap_err();
        assert!(by_file.0.contains("allowed_emails"));
        assert!(
            authorize(
                &person("boss@corp.com", true, &[]),
                &access(&[], &[], &[]),
                Some(&file),
                &[]
            )
            .is_ok()
        );
    }

    #[test]
    fn route_requirements_add_to_the_global_ones() {
        let route = RouteRule {
            name: "admin area".into(),
            methods: vec![],
            path: regex::Regex::new("^/manage/").unwrap(),
            admission: Admission::Always,
            action: Action::Authenticated,
            requirements: Requirements {
                allowed_groups: vec!["sentry:admin".into()],
                ..Default::default()
            },
        };
        let rules = access(&["corp.com"], &[], &[]);
        let member = person("m@corp.com", true, &["sentry:member"]);
        let refusal = authorize(&member, &rules, None, &[&route]).unwrap_err();
        assert!(refusal.0.contains("admin area"), "{}", refusal.0);
        let admin = person("a@corp.com", true, &["sentry:admin"]);
        assert!(authorize(&admin, &rules, None, &[&route]).is_ok());
        let outside_admin = person("a@evil.com", true, &["sentry:admin"]);
        assert!(
            authorize(&outside_admin, &rules, None, &[&route]).is_err(),
            "global rules still apply"
        );
    }
}
