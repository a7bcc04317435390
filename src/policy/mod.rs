//! Who may pass, and where people may be sent back to. Pure functions over the
//! identity and the settings: no I/O, no state.

use crate::config::AccessSettings;
use crate::session::Identity;

/// Why a signed-in person was refused; the text names the rule (shown on the 403 page).
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal(pub String);

/// Checks the global access rules. Each configured kind of rule must admit the person:
/// verified email (unless turned off), email domain or email list (either admits),
/// and at least one of the required groups.
pub fn authorize(identity: &Identity, access: &AccessSettings) -> Result<(), Refusal> {
    let restricts_email =
        !access.allowed_email_domains.is_empty() || !access.allowed_emails.is_empty();
    if restricts_email {
        let Some(email) = identity.email.as_deref() else {
            return Err(Refusal(
                "access.allowed_email_domains / allowed_emails: your account has no email address"
                    .into(),
            ));
        };
        if access.require_email_verified && !identity.email_verified {
            return Err(Refusal(format!(
                "access.require_email_verified: the email address {email} is not verified"
            )));
        }
        let email = email.to_ascii_lowercase();
        let listed = access.allowed_emails.contains(&email);
        let domain_ok = email_domain(&email)
            .is_some_and(|d| access.allowed_email_domains.iter().any(|a| a == d));
        if !listed && !domain_ok {
            return Err(Refusal(format!(
                "access.allowed_email_domains / allowed_emails: {email} is not allowed"
            )));
        }
    }
    if !access.required_groups.is_empty()
        && !identity
            .groups
            .iter()
            .any(|g| access.required_groups.contains(g))
    {
        return Err(Refusal(format!(
            "access.required_groups: the `{}` claim has none of {}",
            access.groups_claim,
            access.required_groups.join(", ")
        )));
    }
    Ok(())
}

/// The domain of a syntactically plausible address: the part after the last `@`,
/// with a non-empty local part and no whitespace or further `@` tricks in the domain.
pub fn email_domain(email: &str) -> Option<&str> {
    let (local, domain) = email.rsplit_once('@')?;
    let plausible = !local.is_empty()
        && !domain.is_empty()
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && domain.split('.').all(|label| !label.is_empty());
    plausible.then_some(domain)
}

/// A return target that stays on this origin: an absolute path, or `/` when the
/// target is anything else (another host, a scheme, `//`, backslashes, control
/// characters, or any of these hidden behind percent-encoding).
pub fn safe_return_path(target: &str) -> String {
    let decoded = percent_encoding::percent_decode_str(target).decode_utf8_lossy();
    let looks_safe = |s: &str| {
        s.starts_with('/')
            && !s.starts_with("//")
            && !s.contains('\\')
            && !s.chars().any(|c| c.is_control() || c.is_whitespace())
            && !s[1..].starts_with(['/', '\\'])
    };
    if looks_safe(target) && looks_safe(&decoded) {
        target.to_owned()
    } else {
        "/".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(email: &str, verified: bool, groups: &[&str]) -> Identity {
        Identity {
            issuer: "https://id".into(),
            sub: "u1".into(),
            email: Some(email.into()),
            email_verified: verified,
            preferred_username: None,
            name: None,
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    fn access(domains: &[&str], emails: &[&str], groups: &[&str]) -> AccessSettings {
        AccessSettings {
            allowed_email_domains: domains.iter().map(|s| s.to_string()).collect(),
            allowed_emails: emails.iter().map(|s| s.to_string()).collect(),
            groups_claim: "permissions".into(),
            required_groups: groups.iter().map(|s| s.to_string()).collect(),
            require_email_verified: true,
        }
    }

    #[test]
    fn domain_is_compared_exactly_after_the_last_at() {
        let rules = access(&["corp.com"], &[], &[]);
        assert!(authorize(&person("a@corp.com", true, &[]), &rules).is_ok());
        assert!(authorize(&person("A@CORP.COM", true, &[]), &rules).is_ok());
        for bad in [
            "a@evil.com@corp.com.evil",
            "a@evilcorp.com",
            "a@sub.corp.com",
            "a@corp.com.evil",
            "@corp.com",
            "a@evil.com",
        ] {
            assert!(
                authorize(&person(bad, true, &[]), &rules).is_err(),
                "{bad} must be refused"
            );
        }
    }

    #[test]
    fn unverified_email_is_refused_unless_allowed() {
        let mut rules = access(&["corp.com"], &[], &[]);
        let refusal = authorize(&person("a@corp.com", false, &[]), &rules).unwrap_err();
        assert!(refusal.0.contains("require_email_verified"));
        rules.require_email_verified = false;
        assert!(authorize(&person("a@corp.com", false, &[]), &rules).is_ok());
    }

    #[test]
    fn every_rule_kind_refuses_an_outsider() {
        let outsider = person("x@other.org", true, &["viewer"]);
        let by_domain = authorize(&outsider, &access(&["corp.com"], &[], &[])).unwrap_err();
        assert!(by_domain.0.contains("allowed_email_domains"));
        let by_email = authorize(&outsider, &access(&[], &["boss@corp.com"], &[])).unwrap_err();
        assert!(by_email.0.contains("allowed_emails"));
        let by_group = authorize(&outsider, &access(&[], &[], &["sentry:admin"])).unwrap_err();
        assert!(by_group.0.contains("permissions"));
        assert!(
            authorize(
                &person("boss@corp.com", true, &["sentry:admin"]),
                &access(&[], &["boss@corp.com"], &["sentry:admin"])
            )
            .is_ok()
        );
    }

    #[test]
    fn return_targets_stay_on_this_origin() {
        for ok in [
            "/",
            "/organizations/acme/issues/?query=is%3Aunresolved",
            "/a/b#frag",
        ] {
            assert_eq!(safe_return_path(ok), ok);
        }
        for bad in [
            "https://evil.com",
            "//evil.com",
            "/\\evil.com",
            "/%2fevil.com",
            "/%5cevil.com",
            "/\t/evil.com",
            "%2F%2Fevil.com",
            "evil.com",
            "javascript:alert(1)",
            "",
            "/%09/evil.com",
        ] {
            assert_eq!(safe_return_path(bad), "/", "{bad:?}");
        }
    }
}
