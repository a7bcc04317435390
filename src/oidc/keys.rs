//! The provider's signing keys as the gateway holds them: openidconnect's JWK, with
//! an RSA public key parsed once, when the key set is read, for aws-lc-rs to verify
//! RS256/RS384/RS512 signatures with.
//!
//! openidconnect verifies RSA signatures with the pure-Rust `rsa` crate and rebuilds
//! the public key from `n` and `e` at every verification: most of the gateway's CPU
//! per login. aws-lc-rs (already there for rustls) with the key parsed once is many
//! times faster. Which keys are candidates, and every claim check, stay
//! openidconnect's; only the signature arithmetic moves. A key the `rsa` crate and
//! aws-lc-rs might judge differently (a modulus outside 2048..=4096 bits, an exponent
//! other than 65537) and every other algorithm keep openidconnect's own verification.

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::signature::{
    ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_2048_8192_SHA384,
    RSA_PKCS1_2048_8192_SHA512,
};
use openidconnect::core::{
    CoreJsonWebKey, CoreJsonWebKeyType, CoreJsonWebKeyUse, CoreJwsSigningAlgorithm,
};
use openidconnect::{
    JsonWebKey, JsonWebKeyAlgorithm, JsonWebKeyId, JsonWebKeySet, JsonWebKeyUse,
    SignatureVerificationError,
};

/// The provider's key set.
pub type GateKeySet = JsonWebKeySet<GateJsonWebKey>;

/// A provider signing key: the JWK as published, and its RSA public key parsed for
/// aws-lc-rs when it is one (see the module documentation).
#[derive(Clone, serde::Serialize, serde::Deserialize)]
#[serde(from = "CoreJsonWebKey", into = "CoreJsonWebKey")]
pub struct GateJsonWebKey {
    jwk: CoreJsonWebKey,
    rsa: Option<Arc<RsaKey>>,
}

/// One parsed key per PKCS#1 v1.5 digest (aws-lc-rs binds a parsed key to its
/// algorithm).
struct RsaKey {
    sha256: ParsedPublicKey,
    sha384: ParsedPublicKey,
    sha512: ParsedPublicKey,
}

impl From<CoreJsonWebKey> for GateJsonWebKey {
    fn from(jwk: CoreJsonWebKey) -> Self {
        let rsa = rsa_key(&jwk).map(Arc::new);
        Self { jwk, rsa }
    }
}

impl From<GateJsonWebKey> for CoreJsonWebKey {
    fn from(key: GateJsonWebKey) -> Self {
        key.jwk
    }
}

impl fmt::Debug for GateJsonWebKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GateJsonWebKey")
            .field("jwk", &self.jwk)
            .field("parsed_rsa", &self.rsa.is_some())
            .finish()
    }
}

impl PartialEq for GateJsonWebKey {
    fn eq(&self, other: &Self) -> bool {
        self.jwk == other.jwk
    }
}

impl Eq for GateJsonWebKey {}

/// The exponent every provider uses; with it (and a 2048..=4096-bit odd modulus) the
/// `rsa` crate and aws-lc-rs accept exactly the same keys.
const F4: [u8; 3] = [0x01, 0x00, 0x01];

/// The JWK's RSA public key, parsed for aws-lc-rs, when it is an RSA key both
/// libraries certainly accept; `None` leaves it to openidconnect.
fn rsa_key(jwk: &CoreJsonWebKey) -> Option<RsaKey> {
    if *jwk.key_type() != CoreJsonWebKeyType::RSA {
        return None;
    }
    // The JWK's fields are private; its JSON form gives `n` and `e`.
    let value = serde_json::to_value(jwk).ok()?;
    let field = |name: &str| {
        use base64::Engine;
        let text = value.get(name)?.as_str()?;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text.trim_end_matches('='))
            .ok()
    };
    let (n, e) = (field("n")?, field("e")?);
    let n = strip_leading_zeros(&n);
    if strip_leading_zeros(&e) != F4 {
        return None;
    }
    let bits = n.len() * 8 - n.first()?.leading_zeros() as usize;
    if !(2048..=4096).contains(&bits) || n.last()? & 1 == 0 {
        return None;
    }
    let der = rsa_public_key_der(n, &F4);
    Some(RsaKey {
        sha256: ParsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &der).ok()?,
        sha384: ParsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA384, &der).ok()?,
        sha512: ParsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA512, &der).ok()?,
    })
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[first..]
}

/// RFC 8017 A.1.1 `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent
/// INTEGER }` in DER, from unsigned big-endian `n` and `e` without leading zeros.
fn rsa_public_key_der(n: &[u8], e: &[u8]) -> Vec<u8> {
    fn integer(out: &mut Vec<u8>, unsigned: &[u8]) {
        let pad = unsigned.first().is_some_and(|b| b & 0x80 != 0);
        out.push(0x02);
        length(out, unsigned.len() + usize::from(pad));
        if pad {
            out.push(0);
        }
        out.extend_from_slice(unsigned);
    }
    fn length(out: &mut Vec<u8>, len: usize) {
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes = len.to_be_bytes();
            let significant = strip_leading_zeros(&bytes);
            out.push(0x80 | significant.len() as u8);
            out.extend_from_slice(significant);
        }
    }
    let mut body = Vec::with_capacity(n.len() + e.len() + 16);
    integer(&mut body, n);
    integer(&mut body, e);
    let mut der = Vec::with_capacity(body.len() + 8);
    der.push(0x30);
    length(&mut der, body.len());
    der.extend_from_slice(&body);
    der
}

/// openidconnect's `check_key_compatibility` (private to it), which its own
/// `verify_signature` applies first.
fn compatible(key: &CoreJsonWebKey, alg: &CoreJwsSigningAlgorithm) -> bool {
    use openidconnect::JwsSigningAlgorithm;
    key.key_use().is_none_or(|u| u.allows_signature())
        && alg.key_type().as_ref() == Some(key.key_type())
        && match key.signing_alg() {
            JsonWebKeyAlgorithm::Unspecified => true,
            JsonWebKeyAlgorithm::Unsupported => false,
            JsonWebKeyAlgorithm::Algorithm(key_alg) => key_alg == alg,
        }
}

impl JsonWebKey for GateJsonWebKey {
    type KeyUse = CoreJsonWebKeyUse;
    type SigningAlgorithm = CoreJwsSigningAlgorithm;

    fn key_id(&self) -> Option<&JsonWebKeyId> {
        self.jwk.key_id()
    }

    fn key_type(&self) -> &CoreJsonWebKeyType {
        self.jwk.key_type()
    }

    fn key_use(&self) -> Option<&CoreJsonWebKeyUse> {
        self.jwk.key_use()
    }

    fn signing_alg(&self) -> JsonWebKeyAlgorithm<&CoreJwsSigningAlgorithm> {
        self.jwk.signing_alg()
    }

    fn new_symmetric(key: Vec<u8>) -> Self {
        Self {
            jwk: CoreJsonWebKey::new_symmetric(key),
            rsa: None,
        }
    }

    fn verify_signature(
        &self,
        signature_alg: &CoreJwsSigningAlgorithm,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), SignatureVerificationError> {
        use CoreJwsSigningAlgorithm as A;
        let parsed = self.rsa.as_deref().and_then(|rsa| match signature_alg {
            A::RsaSsaPkcs1V15Sha256 => Some(&rsa.sha256),
            A::RsaSsaPkcs1V15Sha384 => Some(&rsa.sha384),
            A::RsaSsaPkcs1V15Sha512 => Some(&rsa.sha512),
            _ => None,
        });
        match parsed {
            Some(parsed) if compatible(&self.jwk, signature_alg) => parsed
                .verify_sig(message, signature)
                // openidconnect's own words for a signature that does not verify
                .map_err(|_| SignatureVerificationError::CryptoError("bad signature".into())),
            // Incompatible keys get openidconnect's refusal, other keys its arithmetic.
            _ => self.jwk.verify_signature(signature_alg, message, signature),
        }
    }

    fn hash_bytes(&self, bytes: &[u8], alg: &CoreJwsSigningAlgorithm) -> Result<Vec<u8>, String> {
        self.jwk.hash_bytes(bytes, alg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::rsa::{KeyPair, KeySize};
    use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256, RSA_PKCS1_SHA512};
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn jwk(pair: &KeyPair, extra: serde_json::Value) -> CoreJsonWebKey {
        let public = pair.public_key();
        let mut value = serde_json::json!({
            "kty": "RSA",
            "n": URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
            "e": URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
        });
        for (k, v) in extra.as_object().unwrap() {
            value[k] = v.clone();
        }
        serde_json::from_value(value).unwrap()
    }

    fn sign(pair: &KeyPair, alg: &'static dyn aws_lc_rs::signature::RsaEncoding) -> Vec<u8> {
        let mut signature = vec![0; pair.public_modulus_len()];
        pair.sign(alg, &SystemRandom::new(), b"header.claims", &mut signature)
            .unwrap();
        signature
    }

    /// Both verifications, the parsed one and openidconnect's own.
    fn both(
        key: &CoreJsonWebKey,
        alg: &CoreJwsSigningAlgorithm,
        message: &[u8],
        signature: &[u8],
    ) -> (bool, bool) {
        let gate = GateJsonWebKey::from(key.clone());
        (
            gate.verify_signature(alg, message, signature).is_ok(),
            key.verify_signature(alg, message, signature).is_ok(),
        )
    }

    #[test]
    fn rsa_keys_are_parsed_once_and_agree_with_openidconnect() {
        use CoreJwsSigningAlgorithm as A;
        for size in [KeySize::Rsa2048, KeySize::Rsa3072, KeySize::Rsa4096] {
            let pair = KeyPair::generate(size).unwrap();
            let key = jwk(&pair, serde_json::json!({}));
            assert!(GateJsonWebKey::from(key.clone()).rsa.is_some());
            let good = sign(&pair, &RSA_PKCS1_SHA256);
            assert_eq!(
                both(&key, &A::RsaSsaPkcs1V15Sha256, b"header.claims", &good),
                (true, true)
            );
            let mut bad = good.clone();
            bad[10] ^= 1;
            for (alg, message, signature) in [
                (A::RsaSsaPkcs1V15Sha256, &b"header.claimz"[..], &good[..]),
                (A::RsaSsaPkcs1V15Sha256, b"header.claims", &bad),
                (A::RsaSsaPkcs1V15Sha256, b"header.claims", &good[1..]),
                (A::RsaSsaPkcs1V15Sha256, b"header.claims", b""),
                (A::RsaSsaPkcs1V15Sha384, b"header.claims", &good),
                (A::RsaSsaPkcs1V15Sha512, b"header.claims", &good),
                (A::RsaSsaPssSha256, b"header.claims", &good),
                (A::EcdsaP256Sha256, b"header.claims", &good),
            ] {
                assert_eq!(
                    both(&key, &alg, message, signature),
                    (false, false),
                    "{alg:?}"
                );
            }
            let sha512 = sign(&pair, &RSA_PKCS1_SHA512);
            assert_eq!(
                both(&key, &A::RsaSsaPkcs1V15Sha512, b"header.claims", &sha512),
                (true, true)
            );
        }
    }

    #[test]
    fn a_key_for_another_use_or_algorithm_is_refused_as_openidconnect_does() {
        use CoreJwsSigningAlgorithm as A;
        let pair = KeyPair::generate(KeySize::Rsa2048).unwrap();
        let good = sign(&pair, &RSA_PKCS1_SHA256);
        for extra in [
            serde_json::json!({"use": "enc"}),
            serde_json::json!({"alg": "RS512"}),
            serde_json::json!({"alg": "ES256"}),
        ] {
            let key = jwk(&pair, extra.clone());
            assert_eq!(
                both(&key, &A::RsaSsaPkcs1V15Sha256, b"header.claims", &good),
                (false, false),
                "{extra}"
            );
        }
        for extra in [
            serde_json::json!({"use": "sig"}),
            serde_json::json!({"alg": "RS256"}),
        ] {
            let key = jwk(&pair, extra.clone());
            assert_eq!(
                both(&key, &A::RsaSsaPkcs1V15Sha256, b"header.claims", &good),
                (true, true),
                "{extra}"
            );
        }
    }

    #[test]
    fn unusual_keys_are_left_to_openidconnect() {
        let pair = KeyPair::generate(KeySize::Rsa2048).unwrap();
        let n = pair
            .public_key()
            .modulus()
            .big_endian_without_leading_zero()
            .to_vec();
        for (n, e) in [
            (n[..128].to_vec(), vec![1, 0, 1]), // 1024 bits
            (n.clone(), vec![3]),
            ([&n[..], &n[..], &n[..]].concat(), vec![1, 0, 1]), // 6144 bits
        ] {
            let key: CoreJsonWebKey = serde_json::from_value(serde_json::json!({
                "kty": "RSA", "n": URL_SAFE_NO_PAD.encode(&n), "e": URL_SAFE_NO_PAD.encode(&e),
            }))
            .unwrap();
            assert!(GateJsonWebKey::from(key).rsa.is_none());
        }
        // Leading zeros in `n` and `e` do not matter.
        let key: CoreJsonWebKey = serde_json::from_value(serde_json::json!({
            "kty": "RSA",
            "n": URL_SAFE_NO_PAD.encode([&[0u8, 0][..], &n[..]].concat()),
            "e": URL_SAFE_NO_PAD.encode([0, 1, 0, 1]),
        }))
        .unwrap();
        let gate = GateJsonWebKey::from(key);
        assert!(gate.rsa.is_some());
        let good = sign(&pair, &RSA_PKCS1_SHA256);
        assert!(
            gate.verify_signature(
                &CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
                b"header.claims",
                &good
            )
            .is_ok()
        );
    }

    #[test]
    fn a_key_set_reads_and_writes_as_the_provider_published_it() {
        let pair = KeyPair::generate(KeySize::Rsa2048).unwrap();
        let core = jwk(&pair, serde_json::json!({"kid": "k1", "use": "sig"}));
        let text =
            serde_json::to_string(&serde_json::json!({"keys": [core, {"kty": "bogus"}]})).unwrap();
        let set: GateKeySet = serde_json::from_str(&text).unwrap();
        assert_eq!(set.keys().len(), 1, "unknown keys are skipped, as before");
        assert_eq!(set.keys()[0].key_id().unwrap().as_str(), "k1");
        assert_eq!(CoreJsonWebKey::from(set.keys()[0].clone()), core);
    }
}
