//! Sealing and opening the gateway's cookies.
//!
//! Values are encrypted and authenticated with the cookie crate's private jar
//! (AES-256-GCM, cookie name bound in). The first configured secret seals; every
//! secret is tried when opening, so secrets can be rotated without signing anyone out.

use std::time::Duration;

use cookie::{Cookie, CookieJar, Key, SameSite};
use http::HeaderMap;
use http::header::COOKIE;

/// Longest cookie value the gateway will even try to decrypt.
const MAX_SEALED_LEN: usize = 512;

#[derive(Clone)]
pub struct CookieCodec {
    keys: Vec<Key>,
    secure: bool,
}

impl CookieCodec {
    /// `secrets` must each be at least 32 bytes (checked by the config); `secure`
    /// sets the `Secure` attribute (true whenever the public URL is https).
    pub fn new(secrets: &[String], secure: bool) -> Self {
        let keys = secrets
            .iter()
            .map(|s| Key::derive_from(s.as_bytes()))
            .collect();
        Self { keys, secure }
    }

    /// An encrypted `Set-Cookie` for `name=value`, `HttpOnly`, `SameSite=Lax`.
    /// `max_age` of `None` makes a browser-session cookie.
    pub fn seal(
        &self,
        name: &str,
        value: &str,
        path: &str,
        max_age: Option<Duration>,
    ) -> Cookie<'static> {
        let mut jar = CookieJar::new();
        jar.private_mut(&self.keys[0])
            .add(Cookie::new(name.to_owned(), value.to_owned()));
        let mut cookie = jar.get(name).expect("cookie just added").clone();
        cookie.set_path(path.to_owned());
        cookie.set_http_only(true);
        cookie.set_secure(self.secure);
        cookie.set_same_site(SameSite::Lax);
        if let Some(max_age) = max_age {
            cookie.set_max_age(cookie::time::Duration::seconds(max_age.as_secs() as i64));
        }
        cookie
    }

    /// A `Set-Cookie` that deletes `name` at `path`.
    pub fn removal(&self, name: &str, path: &str) -> Cookie<'static> {
        let mut cookie = Cookie::new(name.to_owned(), "");
        cookie.set_path(path.to_owned());
        cookie.set_http_only(true);
        cookie.set_secure(self.secure);
        cookie.set_same_site(SameSite::Lax);
        cookie.make_removal();
        cookie
    }

    /// Decrypts the cookie `name` from the request's `Cookie` headers. Missing,
    /// malformed, oversized or forged values all give `None`; if several cookies carry
    /// the name, the first that decrypts wins.
    pub fn open(&self, headers: &HeaderMap, name: &str) -> Option<String> {
        self.open_limited(headers, name, MAX_SEALED_LEN)
    }

    /// [`CookieCodec::open`] for a cookie that may be up to `max_len` long sealed
    /// (the login cookie, which carries a return target).
    pub fn open_limited(&self, headers: &HeaderMap, name: &str, max_len: usize) -> Option<String> {
        request_cookies(headers)
            .filter(|(n, v)| *n == name && v.len() <= max_len)
            .find_map(|(_, sealed)| self.open_value(name, sealed))
    }

    fn open_value(&self, name: &str, sealed: &str) -> Option<String> {
        // An empty jar, only for its decryption: what `private(key).get(name)` does to
        // a jar holding the cookie, without building that jar on every request.
        let jar = CookieJar::new();
        self.keys.iter().find_map(|key| {
            jar.private(key)
                .decrypt(Cookie::new(name.to_owned(), sealed.to_owned()))
                .map(|c| c.value().to_owned())
        })
    }
}

/// The `name=value` pairs of every `Cookie` header, skipping pieces that do not parse.
/// Pieces are split on the header's bytes, so another cookie's UTF-8 or obs-text value
/// (`lang=français`) costs only that piece, never the rest of its header (found by the
/// `cookie_decoder` fuzz target: it used to hide the session cookie beside it).
pub fn request_cookies(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .filter_map(|pair| {
            let (name, value) = std::str::from_utf8(pair).ok()?.split_once('=')?;
            Some((name.trim(), value.trim()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn codec(secrets: &[&str]) -> CookieCodec {
        let secrets: Vec<String> = secrets.iter().map(|s| s.repeat(32)).collect();
        CookieCodec::new(&secrets, true)
    }

    fn headers(cookie: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_str(cookie).unwrap());
        h
    }

    #[test]
    fn sealed_cookie_has_safe_attributes_and_hides_the_value() {
        let c = codec(&["a"]).seal("_s", "session-id", "/", None);
        let text = c.to_string();
        assert!(!text.contains("session-id"), "{text}");
        assert!(text.contains("HttpOnly") && text.contains("Secure"));
        assert!(text.contains("SameSite=Lax") && text.contains("Path=/"));
    }

    #[test]
    fn opens_with_any_configured_secret() {
        let old = codec(&["o"]).seal("_s", "id-1", "/", None);
        let rotated = codec(&["n", "o"]);
        let h = headers(&format!("other=1; _s={}", old.value()));
        assert_eq!(rotated.open(&h, "_s").as_deref(), Some("id-1"));
        assert_eq!(codec(&["n"]).open(&h, "_s"), None);
    }

    #[test]
    fn name_is_bound_into_the_seal() {
        let c = codec(&["a"]);
        let sealed = c.seal("_a", "v", "/", None);
        assert_eq!(
            c.open(&headers(&format!("_b={}", sealed.value())), "_b"),
            None
        );
    }

    #[test]
    fn a_utf8_cookie_beside_the_session_does_not_hide_it() {
        let codec = codec(&["k"]);
        let sealed = codec.seal("_ssogate", "session-id", "/", None);
        let value = format!(
            "lang=fran\u{e7}ais; \u{ff}; _ssogate={}; theme=dark",
            sealed.value()
        );
        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, HeaderValue::from_bytes(value.as_bytes()).unwrap());
        assert_eq!(
            codec.open(&headers, "_ssogate").as_deref(),
            Some("session-id")
        );
    }

    #[test]
    fn garbage_cookies_are_ignored_not_fatal() {
        let c = codec(&["a"]);
        let huge = "A".repeat(100_000);
        for raw in [
            "_s=",
            "_s=%%%",
            "_s=!!!!",
            ";;;;",
            "_s",
            &format!("_s={huge}"),
        ] {
            assert_eq!(c.open(&headers(raw), "_s"), None, "{raw}");
        }
    }
}
