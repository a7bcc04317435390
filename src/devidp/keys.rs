//! Signing keys, their JWK form and compact JWS (JWT) signing.

use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, RSA_PKCS1_SHA256,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};

use crate::devidp::{DevProviderError, IdTokenTamper, SigningAlg};

/// A private signing key with its key id and public JWK.
pub(crate) struct SigningKey {
    kid: String,
    alg: SigningAlg,
    pair: Pair,
    jwk: Value,
}

enum Pair {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

impl SigningKey {
    /// Generates a fresh key. Its `kid` is its RFC 7638 JWK thumbprint.
    pub(crate) fn generate(alg: SigningAlg) -> Result<Self, DevProviderError> {
        let failed = |_| DevProviderError::KeyGeneration;
        let (pair, mut jwk, thumbprint_input) = match alg {
            SigningAlg::Rs256 => {
                let pair = RsaKeyPair::generate(KeySize::Rsa2048).map_err(failed)?;
                let public = pair.public_key();
                let n = b64(public.modulus().big_endian_without_leading_zero());
                let e = b64(public.exponent().big_endian_without_leading_zero());
                // RFC 7638: the required members in lexicographic order, no whitespace.
                let input = format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#);
                (
                    Pair::Rsa(pair),
                    json!({"kty": "RSA", "n": n, "e": e}),
                    input,
                )
            }
            SigningAlg::Es256 => {
                let pair =
                    EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).map_err(failed)?;
                // The public key is the uncompressed point 0x04 || x || y (32 bytes each).
                let point = pair.public_key().as_ref();
                let (x, y) = point
                    .get(1..65)
                    .ok_or(DevProviderError::KeyGeneration)?
                    .split_at(32);
                let (x, y) = (b64(x), b64(y));
                let input = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
                (
                    Pair::Ec(pair),
                    json!({"kty": "EC", "crv": "P-256", "x": x, "y": y}),
                    input,
                )
            }
        };
        let kid = b64(digest(&SHA256, thumbprint_input.as_bytes()));
        jwk["kid"] = kid.clone().into();
        jwk["use"] = "sig".into();
        jwk["alg"] = alg.as_str().into();
        Ok(SigningKey {
            kid,
            alg,
            pair,
            jwk,
        })
    }

    pub(crate) fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK, for the JWKS document.
    pub(crate) fn jwk(&self) -> &Value {
        &self.jwk
    }

    fn sign(&self, message: &[u8]) -> Option<Vec<u8>> {
        match &self.pair {
            Pair::Rsa(pair) => {
                let mut signature = vec![0; pair.public_modulus_len()];
                let rng = SystemRandom::new();
                pair.sign(&RSA_PKCS1_SHA256, &rng, message, &mut signature)
                    .ok()?;
                Some(signature)
            }
            Pair::Ec(pair) => Some(
                pair.sign(&SystemRandom::new(), message)
                    .ok()?
                    .as_ref()
                    .to_vec(),
            ),
        }
    }

    /// The JOSE header this key signs with: `{alg, kid, typ: "JWT"}`.
    pub(crate) fn header(&self) -> Map<String, Value> {
        let mut header = Map::new();
        header.insert("alg".into(), self.alg.as_str().into());
        header.insert("kid".into(), self.kid.clone().into());
        header.insert("typ".into(), "JWT".into());
        header
    }

    /// Builds a signed ID token with [`SigningKey::header`].
    ///
    /// `tamper` may rewrite header and claims first, with the effect
    /// [`SigningKey::sign_compact`] describes.
    pub(crate) fn sign_jwt(
        &self,
        mut claims: Map<String, Value>,
        tamper: Option<&IdTokenTamper>,
    ) -> Option<String> {
        let mut header = self.header();
        if let Some(tamper) = tamper {
            tamper(&mut header, &mut claims);
        }
        self.sign_compact(header, claims)
    }

    /// Serializes `header` and `claims` as a compact JWS signed by this key,
    /// whatever algorithm or key id the header claims. If the header's `alg`
    /// is `"none"` the token is left unsigned (`header.payload.`).
    pub(crate) fn sign_compact(
        &self,
        header: Map<String, Value>,
        claims: Map<String, Value>,
    ) -> Option<String> {
        let unsigned = header.get("alg").and_then(Value::as_str) == Some("none");
        let input = format!(
            "{}.{}",
            b64(Value::Object(header).to_string()),
            b64(Value::Object(claims).to_string())
        );
        if unsigned {
            return Some(format!("{input}."));
        }
        let signature = self.sign(input.as_bytes())?;
        Some(format!("{input}.{}", b64(signature)))
    }
}

/// Unpadded base64url, as JOSE uses everywhere.
pub(crate) fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}
