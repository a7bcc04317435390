//! Sealing and opening the gateway's cookies.
//!
//! Values are encrypted and authenticated as the cookie crate's private jar does
//! (AES-256-GCM, cookie name bound in as associated data, base64 of nonce, ciphertext
//! and tag). The jar seals; opening, which every signed-in request does, uses
//! aws-lc-rs with each key prepared once. The first configured secret seals; every
//! secret is tried when opening, so secrets can be rotated without signing anyone out.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use base64::prelude::BASE64_STANDARD;
use cookie::{Cookie, CookieJar, Key, SameSite};
use http::HeaderMap;
use http::header::COOKIE;

use super::{SessionKey, opened};
use crate::cookie_header::cookie_pairs;

/// Longest cookie value the gateway will even try to decrypt.
const MAX_SEALED_LEN: usize = 512;

#[derive(Clone)]
pub struct CookieCodec {
    /// The first seals.
    keys: Vec<Key>,
    /// The same keys, ready to open.
    openers: Arc<[LessSafeKey]>,
    secure: bool,
    /// Which codec this is, for the memo of opened session cookies ([`opened`]):
    /// one per call of [`CookieCodec::new`], shared by clones.
    generation: u64,
}

/// The next codec's generation.
static GENERATIONS: AtomicU64 = AtomicU64::new(0);

impl CookieCodec {
    /// `secrets` must each be at least 32 bytes (checked by the config); `secure`
    /// sets the `Secure` attribute (true whenever the public URL is https).
    pub fn new(secrets: &[String], secure: bool) -> Self {
        let keys = secrets
            .iter()
            .map(|s| Key::derive_from(s.as_bytes()))
            .collect::<Vec<_>>();
        let openers = keys
            .iter()
            .map(|key| {
                let key = UnboundKey::new(&AES_256_GCM, key.encryption())
                    .expect("the cookie crate's encryption key is 32 bytes");
                LessSafeKey::new(key)
            })
            .collect();
        Self {
            keys,
            openers,
            secure,
            generation: GENERATIONS.fetch_add(1, Ordering::Relaxed),
        }
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
        let cookie = jar.get(name).expect("cookie just added").clone();
        self.scoped(cookie, path, max_age)
    }

    /// A cookie whose value travels as it is, unsealed (it must hold no secret), with
    /// the attributes of a sealed one.
    pub fn plain(
        &self,
        name: &str,
        value: &str,
        path: &str,
        max_age: Option<Duration>,
    ) -> Cookie<'static> {
        self.scoped(
            Cookie::new(name.to_owned(), value.to_owned()),
            path,
            max_age,
        )
    }

    /// `cookie` with the gateway's attributes: `path`, `HttpOnly`, `Secure` over
    /// https, `SameSite=Lax`, and `max_age` if any.
    fn scoped(
        &self,
        mut cookie: Cookie<'static>,
        path: &str,
        max_age: Option<Duration>,
    ) -> Cookie<'static> {
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
        let mut cookie = self.scoped(Cookie::new(name.to_owned(), ""), path, None);
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

    /// [`CookieCodec::open`] for the session cookie: the session id and the key the
    /// stores file it under. A value this thread opened lately is not opened again
    /// ([`opened`]).
    pub fn open_session(&self, headers: &HeaderMap, name: &str) -> Option<(String, SessionKey)> {
        request_cookies(headers)
            .filter(|(n, v)| *n == name && v.len() <= MAX_SEALED_LEN)
            .find_map(|(_, sealed)| {
                if let Some(opened) = opened::recall(self.generation, name, sealed) {
                    return Some(opened);
                }
                let id = self.open_value(name, sealed)?;
                let key = SessionKey::of(&id);
                opened::remember(self.generation, name, sealed, &id, key);
                Some((id, key))
            })
    }

    fn open_value(&self, name: &str, sealed: &str) -> Option<String> {
        let data = BASE64_STANDARD.decode(sealed).ok()?;
        let (nonce, ciphertext) = data.split_at_checked(NONCE_LEN)?;
        let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
        self.openers.iter().find_map(|key| {
            let mut buffer = ciphertext.to_vec();
            let nonce = Nonce::assume_unique_for_key(nonce);
            let plain = key
                .open_in_place(nonce, Aad::from(name.as_bytes()), &mut buffer)
                .ok()?;
            let len = plain.len();
            buffer.truncate(len);
            String::from_utf8(buffer).ok()
        })
    }
}

/// The `name=value` pairs of every `Cookie` header, skipping pieces that do not parse.
/// Pieces are split on the header's bytes, so another cookie's UTF-8 or obs-text value
/// (`lang=français`) costs only that piece, never the rest of its header (found by the
/// `cookie_decoder` fuzz target: it used to hide the session cookie beside it).
/// (The separators are found with memchr: this runs on every request, and a session
/// cookie's value is long.)
pub fn request_cookies(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|v| cookie_pairs(v.as_bytes()))
        .filter_map(|pair| {
            let at = memchr::memchr(b'=', pair)?;
            let name = std::str::from_utf8(&pair[..at]).ok()?;
            let value = std::str::from_utf8(&pair[at + 1..]).ok()?;
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
    fn a_remembered_session_cookie_opens_only_where_its_secret_still_is() {
        let old = codec(&["o"]);
        let sealed = old.seal("_s", "id-1", "/", None).value().to_owned();
        let h = headers(&format!("_s={sealed}"));
        let opened = Some(("id-1".to_owned(), SessionKey::of("id-1")));
        // Opened once, then remembered by this thread: the same answer both times.
        assert_eq!(old.open_session(&h, "_s"), opened);
        assert_eq!(opened::recall(old.generation, "_s", &sealed), opened);
        assert_eq!(old.open_session(&h, "_s"), opened);
        // The name is bound into the seal: the remembered value under another name
        // is not that session.
        let renamed = headers(&format!("_x={sealed}"));
        assert_eq!(old.open_session(&renamed, "_x"), None);
        // A reload that keeps the secret behind a new one still opens it; one that
        // drops the secret does not, though this thread remembers the value.
        assert_eq!(codec(&["n", "o"]).open_session(&h, "_s"), opened);
        assert_eq!(codec(&["n"]).open_session(&h, "_s"), None);
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
    fn opens_exactly_what_the_cookie_crate_seals() {
        let c = codec(&["a"]);
        let jar_key = Key::derive_from("a".repeat(32).as_bytes());
        let jar_open = |sealed: &str| {
            CookieJar::new()
                .private(&jar_key)
                .decrypt(Cookie::new("_s", sealed.to_owned()))
                .map(|c| c.value().to_owned())
        };
        for value in ["", "session-id", "ünïcødé;=,", &"x".repeat(300)] {
            let sealed = c.seal("_s", value, "/", None).value().to_owned();
            assert_eq!(
                c.open(&headers(&format!("_s={sealed}")), "_s").as_deref(),
                Some(value)
            );
            assert_eq!(jar_open(&sealed).as_deref(), Some(value));
            // Every single-byte change of the sealed bytes, and every truncation, is
            // refused by both.
            let bytes = BASE64_STANDARD.decode(&sealed).unwrap();
            for i in 0..bytes.len() {
                let mut changed = bytes.clone();
                changed[i] ^= 0x01;
                let changed = BASE64_STANDARD.encode(&changed);
                assert_eq!(c.open(&headers(&format!("_s={changed}")), "_s"), None);
                assert_eq!(jar_open(&changed), None);
                let cut = BASE64_STANDARD.encode(&bytes[..i]);
                assert_eq!(
                    c.open(&headers(&format!("_s={cut}")), "_s"),
                    None,
                    "cut at {i}"
                );
            }
        }
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

    proptest::proptest! {
        /// The pairs are those of the plain reading: each header split on `;`, a piece
        /// kept when it is UTF-8 and has a `=`, its name and value trimmed.
        #[test]
        fn cookies_are_read_as_the_plain_split_reads_them(
            sent in proptest::collection::vec(
                proptest::collection::vec(
                    proptest::prop_oneof![
                        proptest::sample::select(b"a=; \t\"".to_vec()),
                        proptest::sample::select(vec![0xc3u8, 0xa9, 0xe9, 0xff, b'A']),
                    ],
                    0..24,
                ),
                0..3,
            ),
        ) {
            let mut h = HeaderMap::new();
            for value in &sent {
                h.append(COOKIE, HeaderValue::from_bytes(value).unwrap());
            }
            let plain: Vec<(&str, &str)> = h
                .get_all(COOKIE)
                .iter()
                .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
                .filter_map(|pair| {
                    let (name, value) = std::str::from_utf8(pair).ok()?.split_once('=')?;
                    Some((name.trim(), value.trim()))
                })
                .collect();
            let read: Vec<(&str, &str)> = request_cookies(&h).collect();
            proptest::prop_assert_eq!(read, plain);
        }
    }
}
