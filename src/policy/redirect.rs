//! The one validator for every place the gateway sends a browser back to: `rd` at
//! sign-in, the sign-out target.
//!
//! A target is resolved against the public URL exactly as a browser would (the `url`
//! crate implements the WHATWG URL standard: it drops tabs and newlines, treats `\` as
//! `/`, understands `//host` and `https:host`), and the *result* is checked: it must
//! be on the gateway's own origin, or on an allowed host, over http(s), without user
//! info. The validator returns that resolved absolute URL, never the raw input, so
//! what was checked is exactly what the browser gets.

use url::Url;

use crate::rules::AllowedHosts;

/// The absolute URL to send the browser to for `target`, or `None` when the target
/// must not be followed (the caller then uses its default, the start page).
pub fn validate_return_target(
    target: &str,
    public_url: &Url,
    allowed: &AllowedHosts,
) -> Option<Url> {
    // Only absolute paths or absolute URLs: nothing relative ("evil.com"), nothing
    // empty, and nothing with control characters (browsers silently drop tabs and
    // newlines, which is how most tricks start).
    let absolute =
        target.starts_with('/') || target.starts_with("http://") || target.starts_with("https://");
    if !absolute || target.chars().any(char::is_control) {
        return None;
    }
    let resolved = public_url.join(target).ok()?;
    if !matches!(resolved.scheme(), "http" | "https") {
        return None;
    }
    if !resolved.username().is_empty() || resolved.password().is_some() {
        return None;
    }
    let same_origin = resolved.origin() == public_url.origin();
    let allowed_host =
        resolved.scheme() == "https" && resolved.host_str().is_some_and(|h| allowed.allows(h));
    (same_origin || allowed_host).then_some(resolved)
}

/// Longest return target, in bytes of the absolute URL it resolves to. It travels in
/// the login cookie (browsers keep about 4 KiB per cookie), and bounds what a stranger
/// can make one login start cost.
pub const MAX_RETURN_TARGET: usize = 2048;

/// A return target longer than [`MAX_RETURN_TARGET`].
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("the return address is longer than {MAX_RETURN_TARGET} bytes")]
pub struct ReturnTargetTooLong;

/// [`validate_return_target`] with the start page as the fallback; an error for a
/// target that would resolve to more than [`MAX_RETURN_TARGET`] bytes.
pub fn return_target_or_root(
    target: &str,
    public_url: &Url,
    allowed: &AllowedHosts,
) -> Result<String, ReturnTargetTooLong> {
    if target.len() > MAX_RETURN_TARGET {
        return Err(ReturnTargetTooLong);
    }
    let resolved = validate_return_target(target, public_url, allowed)
        .map_or_else(|| public_url.as_str().to_owned(), String::from);
    if resolved.len() > MAX_RETURN_TARGET {
        return Err(ReturnTargetTooLong);
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn public() -> Url {
        Url::parse("https://sentry.example.com").unwrap()
    }

    fn check(target: &str, allowed: &[&str]) -> Option<String> {
        let allowed = AllowedHosts::new(allowed.iter().map(|s| s.to_string()));
        validate_return_target(target, &public(), &allowed).map(String::from)
    }

    #[test]
    fn same_origin_paths_pass_as_absolute_urls() {
        assert_eq!(
            check("/", &[]).as_deref(),
            Some("https://sentry.example.com/")
        );
        assert_eq!(
            check("/organizations/acme/issues/?query=is%3Aunresolved#x", &[]).as_deref(),
            Some("https://sentry.example.com/organizations/acme/issues/?query=is%3Aunresolved#x")
        );
        assert!(check("https://sentry.example.com/a", &[]).is_some());
    }

    #[test]
    fn browser_tricks_are_refused() {
        for target in [
            "//evil.com",
            "/\\evil.com",
            "\\/evil.com",
            "/\t/evil.com",
            "https:evil.com",
            "http://evil.com",
            "https://sentry.example.com@evil.com",
            "https://evil.com\\@sentry.example.com",
            "javascript:alert(1)",
            "evil.com",
            "",
            " /x",
            "\n/x",
            "https://sentry.example.com.evil.com/",
            "http://sentry.example.com/",
            "https://user:pw@sentry.example.com/",
        ] {
            assert_eq!(check(target, &[]), None, "{target:?}");
        }
    }

    #[test]
    fn encoded_slashes_stay_on_this_origin() {
        for target in ["/%2F%2Fevil.com", "/%09/evil.com", "/%5Cevil.com"] {
            let url = check(target, &[]).unwrap();
            assert!(url.starts_with("https://sentry.example.com/%"), "{url}");
        }
    }

    #[test]
    fn path_with_leading_double_slash_after_resolution_stays_absolute() {
        // "/.//evil.com" resolves to the path "//evil.com"; emitted as an absolute URL
        // on our origin, a browser cannot read it as a scheme-relative link.
        let url = check("/.//evil.com", &[]).unwrap();
        assert!(url.starts_with("https://sentry.example.com//"), "{url}");
    }

    #[test]
    fn allowed_hosts_match_exactly_or_on_a_dot_boundary() {
        assert!(check("https://id.example.org/logout", &["id.example.org"]).is_some());
        assert!(check("https://a.example.org/", &[".example.org"]).is_some());
        assert!(check("https://example.org/", &[".example.org"]).is_some());
        assert!(check("https://evilexample.org/", &[".example.org"]).is_none());
        assert!(check("https://evil-example.org/", &["example.org"]).is_none());
        assert!(check("https://a.example.org/", &["example.org"]).is_none());
        assert!(check("https://evilbar.foo/", &[".bar.foo"]).is_none());
    }

    proptest! {
        #[test]
        fn whatever_comes_in_the_answer_is_on_an_allowed_origin(target in "\\PC{0,50}") {
            let allowed = AllowedHosts::new(["www.whitelisteddomain.tld".to_string()]);
            if let Some(url) = validate_return_target(&target, &public(), &allowed) {
                let host = url.host_str().unwrap_or_default().to_owned();
                prop_assert!(host == "sentry.example.com" || host == "www.whitelisteddomain.tld", "{} -> {}", target, url);
                prop_assert!(url.username().is_empty());
            }
        }
    }
}
