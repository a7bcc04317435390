//! The signed identity assertion: a short-lived ES256 JWT naming the signed-in person,
//! sent to the upstream in one header (`assertion.header`) beside the plain identity
//! headers, and the public keys that verify it, served as a JWKS at [`JWKS_PATH`].
//!
//! Plain identity headers are only as trustworthy as the network between the gateway
//! and the upstream; a signature is not (Pomerium's `X-Pomerium-Jwt-Assertion`, Google
//! IAP's `x-goog-iap-jwt-assertion` and Cloudflare Access's `Cf-Access-Jwt-Assertion`
//! do the same). The token:
//!
//! - header `{"alg":"ES256","kid":..,"typ":"JWT"}`, `kid` the key's RFC 7638 JWK
//!   thumbprint, so a kid names one key and cannot be reused by another;
//! - claims `iss` (`server.public_url`'s origin, no trailing slash), `aud`
//!   (`assertion.audience`, by default the upstream's origin), `sub`, `email` (only an
//!   address the provider verified, as for the email header), `groups`, `iat`, `exp`
//!   (`iat` + `assertion.lifetime`, 5 minutes by default).
//!
//! Signing is done here, without a JWT crate: base64url of two JSON texts and an
//! ECDSA P-256 signature in the JWS `r || s` form (aws-lc-rs's `FIXED` signing).
//!
//! **Not a signature per request.** A signature costs tens of microseconds; the
//! signed-in request otherwise costs a few. So an assertion is reused: a bounded
//! cache (moka, at most `session.max_sessions` entries) maps the SHA-256 of the
//! claims that vary per person (`sub`, verified `email`, `groups`) to the header
//! value, and each entry lives until [`reuse_window`] of its lifetime has passed
//! (four fifths, at most one minute short of `exp`), so the upstream always gets a
//! token with time left on it. The cached path is a SHA-256 of a few dozen bytes, one
//! cache lookup and a reference-counted header value clone. The key is the claims
//! themselves, not the session: an entry can only ever be handed to the very identity
//! it was signed for (a refresh that changes someone's groups or email finds no entry
//! and signs anew), and people signed in from several browsers share one. Concurrent
//! misses for one identity sign once (moka's `optionally_get_with`).
//!
//! **Keys.** `assertion.key_file` is a PEM P-256 private key (PKCS#8 `PRIVATE KEY`, or
//! SEC1 `EC PRIVATE KEY` as `openssl ecparam` writes it); `assertion.previous_key_files`
//! are further PEM keys (public `PUBLIC KEY`, or private) published in the JWKS
//! without signing: the previous key during a rotation, so the tokens it signed verify
//! until they expire, or the next one ahead of it. A reload (SIGHUP) builds a new
//! [`AssertionSigner`], which reads the files again and starts with an empty cache:
//! a cached token signed by a key the new settings no longer publish is never sent.
//! Key errors name the config key and say what was found (an RSA key, another curve,
//! a public key where the private one is needed, not PEM at all).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use rustls_pki_types::pem::{PemObject, SectionKind};
use serde::Serialize;

use crate::config::{AssertionSettings, Settings};
use crate::identity::Identity;

/// Where the gateway serves the public keys (public in every preset: answered by the
/// gateway itself, before the route rules).
pub const JWKS_PATH: &str = "/.well-known/ssogate/jwks.json";

/// The JWS algorithm of every assertion.
pub const ALGORITHM: &str = "ES256";

/// How long a client (the upstream's verifier) may keep the JWKS: long enough to
/// spare the gateway, short against a rotation (and verifiers fetch again on a `kid`
/// they do not know).
pub const JWKS_MAX_AGE: Duration = Duration::from_secs(300);

/// The DER encoding of a P-256 SubjectPublicKeyInfo up to its 65-byte point:
/// SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING (0 unused bits) }.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// Object identifiers (DER, tag and length included) that name what a key is when it
/// is not a P-256 key, for the error message.
const OTHER_KEY_KINDS: [(&[u8], &str); 6] = [
    (
        &[
            0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
        ],
        "an RSA key",
    ),
    (&[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22], "a P-384 key"),
    (&[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23], "a P-521 key"),
    (
        &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a],
        "a secp256k1 key",
    ),
    (&[0x06, 0x03, 0x2b, 0x65, 0x70], "an Ed25519 key"),
    (&[0x06, 0x03, 0x2b, 0x65, 0x71], "an Ed448 key"),
];

/// How to make a key this module takes, for the error messages.
const MAKE_A_KEY: &str = "make one with `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out assertion-key.pem`";

/// A key file that cannot be used, naming the config key and the file.
#[derive(Debug, thiserror::Error)]
#[error("{key}: `{path}` {problem}")]
pub struct KeyError {
    pub key: &'static str,
    pub path: String,
    pub problem: String,
}

/// One key published in the JWKS.
struct PublishedKey {
    kid: String,
    /// The uncompressed point, `04 || x || y`.
    point: Vec<u8>,
}

impl PublishedKey {
    fn new(point: &[u8]) -> Self {
        Self {
            kid: thumbprint(point),
            point: point.to_vec(),
        }
    }

    fn jwk(&self) -> serde_json::Value {
        let (x, y) = coordinates(&self.point);
        serde_json::json!({
            "kty": "EC",
            "crv": "P-256",
            "x": x,
            "y": y,
            "use": "sig",
            "alg": ALGORITHM,
            "kid": self.kid,
        })
    }
}

/// The base64url `x` and `y` of an uncompressed P-256 point.
fn coordinates(point: &[u8]) -> (String, String) {
    (
        URL_SAFE_NO_PAD.encode(&point[1..33]),
        URL_SAFE_NO_PAD.encode(&point[33..65]),
    )
}

/// The RFC 7638 JWK thumbprint of a P-256 public key: SHA-256 of its required members
/// in lexicographic order, without whitespace, base64url.
pub fn thumbprint(point: &[u8]) -> String {
    let (x, y) = coordinates(point);
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, canonical.as_bytes()))
}

/// The claims of one assertion, in the order they are written.
#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<&'a str>,
    groups: &'a [String],
    iat: u64,
    exp: u64,
}

/// Signs assertions with the configured key, keeps them for reuse, and holds the JWKS.
pub struct AssertionSigner {
    header: HeaderName,
    issuer: String,
    audience: String,
    lifetime: Duration,
    key_pair: EcdsaKeyPair,
    /// base64url of the JOSE header, the same for every token of this key.
    encoded_header: String,
    /// Every published key, the signing key first.
    published: Vec<PublishedKey>,
    /// The JWKS document, written once.
    jwks: Bytes,
    /// Header values by [`identity_digest`]; each lives [`reuse_window`].
    cache: moka::sync::Cache<[u8; 32], HeaderValue>,
    rng: SystemRandom,
}

/// The `iss` of the assertions: `public_url`'s origin, without a trailing slash
/// (`https://sentry.example.com`).
pub fn issuer_of(public_url: &url::Url) -> String {
    public_url.origin().ascii_serialization()
}

/// How long a signed assertion is reused: its lifetime less a fifth, at most a minute
/// less (5 minutes: reused 4; 2 seconds: 1.6), so what is sent always has time left.
pub fn reuse_window(lifetime: Duration) -> Duration {
    lifetime - (lifetime / 5).min(Duration::from_secs(60))
}

impl AssertionSigner {
    /// The signer `settings` asks for (`None` without `[assertion]`), its key files
    /// read now.
    pub fn from_settings(settings: &Settings) -> Result<Option<Self>, KeyError> {
        let Some(assertion) = &settings.assertion else {
            return Ok(None);
        };
        let issuer = issuer_of(&settings.server.public_url);
        Self::new(assertion, issuer, settings.session.max_sessions).map(Some)
    }

    /// A signer for `assertion`, naming itself `issuer`, keeping at most `max_cached`
    /// assertions.
    pub fn new(
        assertion: &AssertionSettings,
        issuer: String,
        max_cached: u64,
    ) -> Result<Self, KeyError> {
        let key_pair = signing_key(&assertion.key_file)?;
        let signing = PublishedKey::new(key_pair.public_key().as_ref());
        let mut published = vec![signing];
        for path in &assertion.previous_key_files {
            let point = published_point(path)?;
            if !published.iter().any(|known| known.point == point) {
                published.push(PublishedKey::new(&point));
            }
        }
        let jose = serde_json::json!({"alg": ALGORITHM, "kid": published[0].kid, "typ": "JWT"});
        let jwks = serde_json::json!({
            "keys": published.iter().map(PublishedKey::jwk).collect::<Vec<_>>(),
        });
        Ok(Self {
            header: assertion.header.clone(),
            issuer,
            audience: assertion.audience.clone(),
            lifetime: assertion.lifetime,
            key_pair,
            encoded_header: URL_SAFE_NO_PAD.encode(jose.to_string()),
            published,
            jwks: Bytes::from(jwks.to_string()),
            cache: moka::sync::Cache::builder()
                .max_capacity(max_cached)
                .time_to_live(reuse_window(assertion.lifetime))
                .build(),
            rng: SystemRandom::new(),
        })
    }

    /// The header the assertion travels in.
    pub fn header_name(&self) -> &HeaderName {
        &self.header
    }

    /// The `kid` of the signing key.
    pub fn kid(&self) -> &str {
        &self.published[0].kid
    }

    /// The `kid` of every published key, the signing key's first.
    pub fn published_kids(&self) -> impl Iterator<Item = &str> {
        self.published.iter().map(|key| key.kid.as_str())
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The JWKS document (`{"keys":[...]}`).
    pub fn jwks(&self) -> Bytes {
        self.jwks.clone()
    }

    /// The assertion for `identity`: a cached one while it has time left, else a new
    /// one. `None` only if signing failed (logged).
    pub fn assertion_for(&self, identity: &Identity) -> Option<HeaderValue> {
        self.cache
            .optionally_get_with(identity_digest(identity), || {
                match self.sign(identity, SystemTime::now()) {
                    Ok(token) => HeaderValue::from_maybe_shared(Bytes::from(token)).ok(),
                    Err(e) => {
                        tracing::error!(sub = %identity.sub, error = %e, "identity assertion could not be signed; header left out");
                        None
                    }
                }
            })
    }

    /// A new token for `identity`, issued at `now`.
    pub fn sign(
        &self,
        identity: &Identity,
        now: SystemTime,
    ) -> Result<String, aws_lc_rs::error::Unspecified> {
        let iat = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let claims = Claims {
            iss: &self.issuer,
            aud: &self.audience,
            sub: &identity.sub,
            email: identity
                .email
                .as_deref()
                .filter(|_| identity.email_verified),
            groups: &identity.groups,
            iat,
            exp: iat + self.lifetime.as_secs(),
        };
        let payload = serde_json::to_vec(&claims).map_err(|_| aws_lc_rs::error::Unspecified)?;
        let mut token =
            String::with_capacity(self.encoded_header.len() + payload.len() * 4 / 3 + 2 + 88);
        token.push_str(&self.encoded_header);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
        let signature = self.key_pair.sign(&self.rng, token.as_bytes())?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut token);
        Ok(token)
    }
}

/// The cache key of an identity: SHA-256 over the claims that differ between people,
/// each prefixed with its length (so no two identities write the same bytes).
fn identity_digest(identity: &Identity) -> [u8; 32] {
    let mut context = digest::Context::new(&digest::SHA256);
    let mut field = |bytes: &[u8]| {
        context.update(&(bytes.len() as u64).to_be_bytes());
        context.update(bytes);
    };
    field(identity.sub.as_bytes());
    // No address (or an unverified one) writes a byte no UTF-8 address can hold.
    match identity
        .email
        .as_deref()
        .filter(|_| identity.email_verified)
    {
        Some(email) => field(email.as_bytes()),
        None => field(b"\xff no verified email"),
    }
    field(&(identity.groups.len() as u64).to_be_bytes());
    for group in identity.groups.iter() {
        field(group.as_bytes());
    }
    context
        .finish()
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

/// The PEM sections of a key file, or why there are none.
fn pem_sections(key: &'static str, path: &Path) -> Result<Vec<(SectionKind, Vec<u8>)>, KeyError> {
    let fail = |problem: String| KeyError {
        key,
        path: path.display().to_string(),
        problem,
    };
    let bytes = std::fs::read(path).map_err(|e| fail(format!("cannot be read: {e}")))?;
    let sections = <(SectionKind, Vec<u8>)>::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(format!("is not readable as PEM ({e}); {MAKE_A_KEY}")))?;
    if sections.is_empty() && bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(fail(format!(
            "holds no PEM key this gateway reads (an encrypted key, say: it must be unencrypted); {MAKE_A_KEY}"
        )));
    }
    if sections.is_empty() {
        return Err(fail(format!(
            "is not a PEM file (no -----BEGIN ...----- section); {MAKE_A_KEY}"
        )));
    }
    Ok(sections)
}

/// `assertion.key_file`: the P-256 private key that signs.
fn signing_key(path: &Path) -> Result<EcdsaKeyPair, KeyError> {
    const KEY: &str = "assertion.key_file";
    let fail = |problem: String| KeyError {
        key: KEY,
        path: path.display().to_string(),
        problem,
    };
    let sections = pem_sections(KEY, path)?;
    let mut found = None;
    for (kind, der) in &sections {
        match kind {
            SectionKind::PrivateKey | SectionKind::EcPrivateKey => {
                return private_key(der).map_err(fail);
            }
            SectionKind::RsaPrivateKey => found = Some("an RSA private key"),
            SectionKind::PublicKey => found = Some("only a public key"),
            _ => {}
        }
    }
    Err(fail(format!(
        "holds {}; assertion.key_file needs an unencrypted P-256 (ES256) private key: {MAKE_A_KEY}",
        found.unwrap_or("no private key")
    )))
}

/// A P-256 key pair from PKCS#8 or SEC1 DER, or what the key is instead.
fn private_key(der: &[u8]) -> Result<EcdsaKeyPair, String> {
    EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_FIXED_SIGNING, der).map_err(|e| {
        match other_key_kind(der) {
            Some(kind) => format!(
                "holds {kind}; the assertion is signed with ES256, which needs a P-256 key: {MAKE_A_KEY}"
            ),
            None => format!("is not a usable P-256 private key ({e}); {MAKE_A_KEY}"),
        }
    })
}

/// What a DER key is, when it names an algorithm or curve other than P-256's.
fn other_key_kind(der: &[u8]) -> Option<&'static str> {
    OTHER_KEY_KINDS
        .iter()
        .find(|(oid, _)| der.windows(oid.len()).any(|window| window == *oid))
        .map(|(_, kind)| *kind)
}

/// One of `assertion.previous_key_files`: the public point of the P-256 key it holds
/// (a public key, or a private one).
fn published_point(path: &Path) -> Result<Vec<u8>, KeyError> {
    const KEY: &str = "assertion.previous_key_files";
    let fail = |problem: String| KeyError {
        key: KEY,
        path: path.display().to_string(),
        problem,
    };
    for (kind, der) in pem_sections(KEY, path)? {
        match kind {
            SectionKind::PublicKey => {
                return match der.strip_prefix(&P256_SPKI_PREFIX[..]) {
                    Some(point) if point.len() == 65 && point[0] == 4 => Ok(point.to_vec()),
                    _ => Err(fail(match other_key_kind(&der) {
                        Some(kind) => {
                            format!("holds {kind}; only P-256 (ES256) keys can be published")
                        }
                        None => "is not an uncompressed P-256 public key".to_owned(),
                    })),
                };
            }
            SectionKind::PrivateKey | SectionKind::EcPrivateKey => {
                return private_key(&der)
                    .map(|pair| pair.public_key().as_ref().to_vec())
                    .map_err(fail);
            }
            SectionKind::RsaPrivateKey => {
                return Err(fail(
                    "holds an RSA private key; only P-256 (ES256) keys can be published".into(),
                ));
            }
            _ => {}
        }
    }
    Err(fail(
        "holds no key (a PEM PUBLIC KEY or PRIVATE KEY section)".into(),
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};

    use super::*;

    /// A fresh P-256 key as PKCS#8 PEM, written to a file in `dir`.
    fn key_file(dir: &tempfile::TempDir, name: &str) -> std::path::PathBuf {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .unwrap();
        pem_file(dir, name, "PRIVATE KEY", pkcs8.as_ref())
    }

    fn pem_file(
        dir: &tempfile::TempDir,
        name: &str,
        label: &str,
        der: &[u8],
    ) -> std::path::PathBuf {
        let body = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
                lines.join("\n")
            ),
        )
        .unwrap();
        path
    }

    fn settings(key_file: &Path, previous: Vec<std::path::PathBuf>) -> AssertionSettings {
        AssertionSettings {
            header: HeaderName::from_static("x-ssogate-jwt-assertion"),
            key_file: key_file.to_owned(),
            previous_key_files: previous,
            audience: "http://127.0.0.1:9000".into(),
            lifetime: Duration::from_secs(300),
        }
    }

    fn identity(email_verified: bool) -> Identity {
        Identity {
            sub: "sub-alice".into(),
            email: Some("alice@corp.example".into()),
            email_verified,
            preferred_username: Some("alice".into()),
            groups: Arc::from(vec!["sentry:member".to_owned(), "a,b".to_owned()]),
            groups_claim: "permissions".into(),
        }
    }

    fn decode_part(part: &str) -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn a_token_verifies_with_the_published_key_and_carries_the_claims() {
        let dir = tempfile::tempdir().unwrap();
        let key = key_file(&dir, "key.pem");
        let signer = AssertionSigner::new(
            &settings(&key, vec![]),
            "https://sentry.example.com".into(),
            10,
        )
        .unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let token = signer.sign(&identity(true), now).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(
            decode_part(parts[0]),
            serde_json::json!({"alg": "ES256", "kid": signer.kid(), "typ": "JWT"})
        );
        assert_eq!(
            decode_part(parts[1]),
            serde_json::json!({
                "iss": "https://sentry.example.com",
                "aud": "http://127.0.0.1:9000",
                "sub": "sub-alice",
                "email": "alice@corp.example",
                "groups": ["sentry:member", "a,b"],
                "iat": 1_700_000_000u64,
                "exp": 1_700_000_300u64,
            })
        );
        // Verified as a verifier would: with the point read back from the JWKS.
        let jwks: serde_json::Value = serde_json::from_slice(&signer.jwks()).unwrap();
        let jwk = &jwks["keys"][0];
        assert_eq!(jwk["kid"], signer.kid());
        let mut point = vec![4u8];
        point.extend(URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap());
        point.extend(URL_SAFE_NO_PAD.decode(jwk["y"].as_str().unwrap()).unwrap());
        let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        assert_eq!(signature.len(), 64, "JWS r || s");
        let signed = format!("{}.{}", parts[0], parts[1]);
        let public = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point);
        public.verify(signed.as_bytes(), &signature).unwrap();
        let tampered = signed.replacen('e', "f", 1);
        assert!(public.verify(tampered.as_bytes(), &signature).is_err());
    }

    #[test]
    fn an_unverified_email_is_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let key = key_file(&dir, "key.pem");
        let signer =
            AssertionSigner::new(&settings(&key, vec![]), "https://a.example".into(), 10).unwrap();
        let token = signer.sign(&identity(false), SystemTime::now()).unwrap();
        let claims = decode_part(token.split('.').nth(1).unwrap());
        assert!(claims.get("email").is_none(), "{claims}");
        assert_ne!(
            identity_digest(&identity(false)),
            identity_digest(&identity(true))
        );
    }

    #[test]
    fn an_assertion_is_reused_for_the_same_identity_only() {
        let dir = tempfile::tempdir().unwrap();
        let key = key_file(&dir, "key.pem");
        let signer =
            AssertionSigner::new(&settings(&key, vec![]), "https://a.example".into(), 10).unwrap();
        let first = signer.assertion_for(&identity(true)).unwrap();
        assert_eq!(signer.assertion_for(&identity(true)).unwrap(), first);
        let mut bob = identity(true);
        bob.sub = "sub-bob".into();
        assert_ne!(signer.assertion_for(&bob).unwrap(), first);
        let mut regrouped = identity(true);
        regrouped.groups = Arc::from(vec!["sentry:member".to_owned()]);
        assert_ne!(signer.assertion_for(&regrouped).unwrap(), first);
        // Moved between groups, the boundary is not lost to concatenation.
        let mut split = identity(true);
        split.groups = Arc::from(vec!["sentry:membera,b".to_owned()]);
        assert_ne!(identity_digest(&split), identity_digest(&identity(true)));
    }

    #[test]
    fn reuse_ends_before_expiry() {
        assert_eq!(
            reuse_window(Duration::from_secs(300)),
            Duration::from_secs(240)
        );
        assert_eq!(
            reuse_window(Duration::from_secs(3600)),
            Duration::from_secs(3540)
        );
        assert_eq!(
            reuse_window(Duration::from_secs(2)),
            Duration::from_millis(1600)
        );
    }

    #[test]
    fn the_kid_is_the_rfc_7638_thumbprint() {
        // RFC 7517 appendix A.1's EC key; its thumbprint computed independently
        // (Python: hashlib.sha256 of the canonical JSON, base64url).
        let x = URL_SAFE_NO_PAD
            .decode("MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4")
            .unwrap();
        let y = URL_SAFE_NO_PAD
            .decode("4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM")
            .unwrap();
        let point: Vec<u8> = [vec![4u8], x, y].concat();
        assert_eq!(thumbprint(&point), RFC_7517_A1_THUMBPRINT);
    }

    /// See [`the_kid_is_the_rfc_7638_thumbprint`].
    const RFC_7517_A1_THUMBPRINT: &str = "cn-I_WNMClehiVp51i_0VpOENW1upEerA8sEam5hn-s";

    #[test]
    fn previous_keys_are_published_after_the_signing_key_once_each() {
        let dir = tempfile::tempdir().unwrap();
        let key = key_file(&dir, "key.pem");
        let old = key_file(&dir, "old.pem");
        let old_pair = signing_key(&old).unwrap();
        let mut spki = P256_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(old_pair.public_key().as_ref());
        let old_public = pem_file(&dir, "old.pub.pem", "PUBLIC KEY", &spki);
        let signer = AssertionSigner::new(
            &settings(&key, vec![old.clone(), old_public, key.clone()]),
            "https://a.example".into(),
            10,
        )
        .unwrap();
        let kids: Vec<&str> = signer.published_kids().collect();
        assert_eq!(
            kids,
            [
                signer.kid(),
                thumbprint(old_pair.public_key().as_ref()).as_str()
            ]
        );
    }

    #[test]
    fn unusable_keys_are_named_with_what_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "just text\n").unwrap();
        let rsa = pem_file(
            &dir,
            "rsa.pem",
            "PRIVATE KEY",
            &[
                0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05,
                0x00,
            ],
        );
        let pkcs1 = pem_file(&dir, "rsa1.pem", "RSA PRIVATE KEY", &[0x30, 0x00]);
        let p384 = {
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(
                &aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                &SystemRandom::new(),
            )
            .unwrap();
            pem_file(&dir, "p384.pem", "PRIVATE KEY", pkcs8.as_ref())
        };
        let public = pem_file(&dir, "pub.pem", "PUBLIC KEY", &P256_SPKI_PREFIX);
        let missing = dir.path().join("missing.pem");
        for (path, expected) in [
            (&not_pem, "is not a PEM file"),
            (&rsa, "holds an RSA key"),
            (&pkcs1, "holds an RSA private key"),
            (&p384, "holds a P-384 key"),
            (&public, "holds only a public key"),
            (&missing, "cannot be read"),
        ] {
            let Err(error) = signing_key(path) else {
                panic!("{path:?} accepted")
            };
            let error = error.to_string();
            assert!(
                error.starts_with("assertion.key_file: `") && error.contains(expected),
                "{path:?}: {error}"
            );
        }
        let Err(error) = published_point(&p384) else {
            panic!("P-384 published")
        };
        let error = error.to_string();
        assert!(
            error.starts_with("assertion.previous_key_files: `") && error.contains("P-384"),
            "{error}"
        );
    }
}
