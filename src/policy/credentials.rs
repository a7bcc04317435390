//! Which `Authorization` headers Sentry's API would authenticate by themselves.
//!
//! Sentry's API (Django REST framework) tries its authentication classes in order.
//! Each looks at the header's scheme (`header.split()[0]`, case-insensitively) and
//! answers "not mine" for any other; the last class is Sentry's own cookie session
//! (`sentrysid`). So an empty, unknown or malformed `Authorization` header leaves the
//! request to that cookie, or anonymous (Sentry's password login among the endpoints).
//! Only a credential one of the token classes takes for itself is token traffic
//! (`src/sentry/api/authentication.py` in Sentry's source):
//!
//! - `Bearer <token>`: user tokens (64 hex digits, or `sntryu_...`) and organisation
//!   tokens (`sntrys_<base64 payload>_<secret>`), whose class raises an error for a
//!   token it does not know instead of passing the request on;
//! - `Basic <base64 of "key:">`: legacy API keys. The class passes the request on when
//!   a password is present, so only an empty password counts;
//! - `DSN <dsn>`: a project's DSN.
//!
//! The header must be the only `Authorization` header, and its value exactly a scheme
//! and one credential (Sentry refuses more parts). Nothing here decides whether the
//! credential is valid: Sentry does, and it has no cookie to fall back on (the gateway
//! removes Sentry's session cookies from token traffic).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::HeaderMap;
use http::header::AUTHORIZATION;

/// Longest credential accepted as token traffic. Sentry's longest, organisation
/// tokens, are a few hundred characters.
pub const MAX_CREDENTIAL_LEN: usize = 1024;

/// Longest legacy API key (32 hex digits in Sentry) accepted inside `Basic`.
const MAX_API_KEY_LEN: usize = 128;

/// True when the request carries exactly one `Authorization` header whose credential
/// Sentry's token authentication takes for itself (see the module docs).
pub fn has_sentry_credential(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let mut parts = value.split([' ', '\t']).filter(|part| !part.is_empty());
    let (Some(scheme), Some(credential), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    if credential.len() > MAX_CREDENTIAL_LEN {
        return false;
    }
    if scheme.eq_ignore_ascii_case("bearer") {
        is_token(credential)
    } else if scheme.eq_ignore_ascii_case("basic") {
        is_api_key_without_password(credential)
    } else if scheme.eq_ignore_ascii_case("dsn") {
        is_dsn(credential)
    } else {
        false
    }
}

/// Letters, digits and `-._~+/=` (RFC 7235's token68 alphabet; organisation tokens
/// carry base64 padding in the middle).
fn is_token(credential: &str) -> bool {
    credential
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b))
}

/// Base64 of `key` or `key:`: a non-empty key of visible characters, no password.
fn is_api_key_without_password(credential: &str) -> bool {
    let Ok(decoded) = STANDARD.decode(credential) else {
        return false;
    };
    let key = match decoded.iter().position(|&b| b == b':') {
        Some(colon) if colon + 1 == decoded.len() => &decoded[..colon],
        Some(_) => return false, // a password: Sentry would pass the request on
        None => &decoded[..],
    };
    !key.is_empty() && key.len() <= MAX_API_KEY_LEN && key.iter().all(u8::is_ascii_graphic)
}

/// An `http(s)` URL with a public key as its user name, as Sentry's DSNs are.
fn is_dsn(credential: &str) -> bool {
    url::Url::parse(credential).is_ok_and(|dsn| {
        matches!(dsn.scheme(), "http" | "https")
            && !dsn.username().is_empty()
            && dsn.host().is_some()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    fn with(values: &[&[u8]]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(AUTHORIZATION, HeaderValue::from_bytes(value).unwrap());
        }
        headers
    }

    fn admits(value: &str) -> bool {
        has_sentry_credential(&with(&[value.as_bytes()]))
    }

    #[test]
    fn credentials_sentry_authenticates_by_themselves_are_token_traffic() {
        let basic_key = STANDARD.encode("0123456789abcdef0123456789abcdef:");
        let basic_key_no_colon = STANDARD.encode("0123456789abcdef0123456789abcdef");
        for value in [
            "Bearer sntrys_eyJpYXQiOjE3MDAwMDAwMDAuMCwidXJsIjoiaHR0cHM6Ly9zZW50cnkuaW8ifQ==_aBcD0123",
            "Bearer sntryu_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "Bearer 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "bearer abc",
            "BEARER abc",
            "  Bearer \t abc  ",
            &format!("Basic {basic_key}"),
            &format!("basic {basic_key_no_colon}"),
            "DSN https://public@sentry.example.com/1",
            "dsn http://0123abcd@127.0.0.1:9000/42",
        ] {
            assert!(admits(value), "{value:?} is token traffic");
        }
    }

    #[test]
    fn what_sentry_would_pass_on_to_its_cookie_session_is_not() {
        let with_password = STANDARD.encode("key:password");
        let empty_key = STANDARD.encode(":");
        for value in [
            "",
            " ",
            "\t",
            "Bearer",
            "Bearer ",
            "Basic",
            "DSN",
            "x",
            "x abc",
            "Token abc",
            "Sentry sentry_key=abc",
            "Bearerabc",
            "Bearer a b",
            "Bearer a\"b",
            "Bearer a,b",
            "Bearer a;b",
            "Basic !!!",
            &format!("Basic {with_password}"),
            &format!("Basic {empty_key}"),
            "DSN not-a-url",
            "DSN https://sentry.example.com/1",
            "DSN ftp://key@sentry.example.com/1",
            "rpcsignature rpc0:abc",
            &format!("Bearer {}", "a".repeat(MAX_CREDENTIAL_LEN + 1)),
        ] {
            assert!(!admits(value), "{value:?} is not token traffic");
        }
        assert!(!has_sentry_credential(&HeaderMap::new()));
        assert!(
            !has_sentry_credential(&with(&[b"Bearer abc", b"Bearer abc"])),
            "two headers: which one the upstream reads is not ours to guess"
        );
        assert!(!has_sentry_credential(&with(&[b"Bearer caf\xe9"])));
    }

    proptest! {
        #[test]
        fn unknown_schemes_never_count(scheme in "[A-Za-z]{1,10}", credential in "[!-~]{1,40}") {
            let known = ["bearer", "basic", "dsn"].contains(&scheme.to_ascii_lowercase().as_str());
            prop_assume!(!known);
            let value = format!("{scheme} {credential}");
            prop_assert!(!admits(&value));
        }

        #[test]
        fn a_bearer_credential_is_one_token68_word(credential in "\\PC{0,60}") {
            let value = format!("Bearer {credential}");
            prop_assume!(HeaderValue::from_str(&value).is_ok());
            let word = credential.trim_matches([' ', '\t']);
            let expected = !word.is_empty()
                && word.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b));
            prop_assert_eq!(admits(&value), expected);
        }
    }
}
