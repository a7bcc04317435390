//! The signed identity assertion (`[assertion]`), verified by a real verifier as an
//! upstream would: PyJWT with `cryptography` (`tests/peers/verify_assertion.py`),
//! fetching the gateway's JWKS. A valid token carries the right claims; a tampered
//! one, one for another audience and an expired one are refused; after a key rotation
//! new tokens name the new key while the old ones still verify; a client's own header
//! of that name never reaches the upstream; public routes carry no assertion;
//! forward-auth's answer does (and nginx in front passes it on: `nginx_front.rs`); an
//! unverified email is left out; `ssogate check` reports the key.

use crate::support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::{Method, StatusCode};

use crate::support::browser::{empty, full};
use crate::support::sentry_clients::verify_assertions;
use crate::support::{World, WorldOptions};

const HEADER: &str = "x-ssogate-jwt-assertion";
const JWKS_PATH: &str = "/.well-known/ssogate/jwks.json";

/// A fresh P-256 private key, PKCS#8 PEM, written to `dir/name`.
pub(crate) fn new_key(dir: &Path, name: &str) -> PathBuf {
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .unwrap();
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            STANDARD.encode(pkcs8.as_ref())
        ),
    )
    .unwrap();
    path
}

/// The Sentry preset, groups from `permissions`, and `[assertion]` with `keys`.
async fn world_with(assertion_keys: &str, users: Vec<ssogate::devidp::DevUser>) -> World {
    World::start_with(WorldOptions {
        extra_toml: format!(
            "[access]\npreset = \"sentry\"\ngroups_claim = \"permissions\"\n[assertion]\n{assertion_keys}\n"
        ),
        users,
        ..Default::default()
    })
    .await
}

/// What the upstream verifies: the JWKS URL, the issuer, and the default audience.
struct Verifier {
    jwks_url: String,
    issuer: String,
    audience: String,
    ca_pem: String,
}

impl Verifier {
    fn of(world: &World) -> Self {
        Self {
            jwks_url: format!("{}{JWKS_PATH}", world.base),
            issuer: world.base.clone(),
            audience: format!("http://{}", world.upstream.addr),
            ca_pem: world.ca_pem.clone(),
        }
    }

    /// PyJWT's verdict on each token, for the default audience.
    fn verify(&self, tokens: &[&str]) -> Vec<serde_json::Value> {
        let checks: Vec<(&str, &str)> = tokens.iter().map(|t| (*t, &*self.audience)).collect();
        verify_assertions(&self.jwks_url, &self.issuer, &checks, &self.ca_pem)
    }
}

/// The assertion the upstream got with its last request (exactly one).
fn last_assertion(world: &World) -> String {
    let seen = world.upstream.last();
    let values: Vec<_> = seen.headers.get_all(HEADER).iter().collect();
    assert_eq!(values.len(), 1, "one assertion: {:?}", seen.headers);
    values[0].to_str().unwrap().to_owned()
}

/// The JSON of a token's part (0: header, 1: claims).
fn part(token: &str, index: usize) -> serde_json::Value {
    let text = token.split('.').nth(index).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(text).unwrap()).unwrap()
}

fn error_of(verdict: &serde_json::Value) -> String {
    assert_eq!(verdict["ok"], false, "{verdict}");
    verdict["error"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn the_upstream_verifies_the_assertion_and_refuses_tampered_or_misaddressed_ones() {
    let dir = tempfile::tempdir().unwrap();
    let key = new_key(dir.path(), "assertion.pem");
    let bob = support::user("bob", "bob@corp.example", false, &["sentry:member"]);
    let world = world_with(&format!("key_file = {key:?}"), vec![support::alice(), bob]).await;
    let verifier = Verifier::of(&world);

    // The JWKS is public (no session) and may be kept a while.
    let mut anonymous = world.browser();
    let jwks = anonymous.navigate(JWKS_PATH).await;
    assert_eq!(jwks.status, StatusCode::OK, "{jwks:?}");
    assert_eq!(jwks.headers["content-type"], "application/json");
    assert_eq!(jwks.headers["cache-control"], "public, max-age=300");
    let set: serde_json::Value = serde_json::from_str(&jwks.body).unwrap();
    assert_eq!(set["keys"].as_array().unwrap().len(), 1, "{set}");
    assert_eq!(set["keys"][0]["alg"], "ES256");

    let mut alice = world.signed_in("alice").await;
    assert_eq!(alice.navigate("/organizations/acme/").await.status, 200);
    let token = last_assertion(&world);
    assert_eq!(part(&token, 0)["kid"], set["keys"][0]["kid"]);

    // The same person's next request reuses it: no signature per request.
    alice.navigate("/organizations/acme/issues/").await;
    assert_eq!(
        last_assertion(&world),
        token,
        "reused while it has time left"
    );

    let mut bob = world.signed_in("bob").await;
    bob.navigate("/organizations/acme/").await;
    let bobs = last_assertion(&world);

    // Tampered: bob's claims under alice's signature.
    let mut pieces: Vec<&str> = token.split('.').collect();
    let bob_claims = bobs.split('.').nth(1).unwrap();
    pieces[1] = bob_claims;
    let tampered = pieces.join(".");

    let verdicts = verifier.verify(&[&token, &bobs, &tampered]);
    assert_eq!(verdicts[0]["ok"], true, "{}", verdicts[0]);
    let claims = &verdicts[0]["claims"];
    assert_eq!(claims["iss"], world.base);
    assert_eq!(claims["aud"], verifier.audience);
    assert_eq!(claims["sub"], "sub-alice");
    assert_eq!(claims["email"], "alice@corp.example");
    assert_eq!(claims["groups"], serde_json::json!(["sentry:member"]));
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    assert_eq!(exp - iat, 300, "5 minutes by default");

    assert_eq!(verdicts[1]["ok"], true, "{}", verdicts[1]);
    assert_eq!(verdicts[1]["claims"]["sub"], "sub-bob");
    assert!(
        verdicts[1]["claims"].get("email").is_none(),
        "an unverified address is nobody's proof: {}",
        verdicts[1]
    );
    assert!(
        error_of(&verdicts[2]).starts_with("InvalidSignatureError"),
        "{}",
        verdicts[2]
    );

    // For another audience: refused.
    let other = verify_assertions(
        &verifier.jwks_url,
        &verifier.issuer,
        &[(&token, "https://other-app.example")],
        &verifier.ca_pem,
    );
    assert!(
        error_of(&other[0]).starts_with("InvalidAudienceError"),
        "{}",
        other[0]
    );
}

#[tokio::test]
async fn a_clients_own_assertion_never_reaches_the_upstream_and_public_routes_carry_none() {
    let dir = tempfile::tempdir().unwrap();
    let key = new_key(dir.path(), "assertion.pem");
    let world = world_with(&format!("key_file = {key:?}"), vec![support::alice()]).await;
    let forged = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9.";

    // Public (SDK ingestion, no session): every spelling of the header goes.
    let mut sdk = world.browser();
    let request = sdk
        .request(Method::POST, "/api/42/envelope/?sentry_key=abc")
        .header(HEADER, forged)
        .header("X_Ssogate_Jwt_Assertion", forged)
        .body(full("{}"))
        .unwrap();
    assert_eq!(sdk.send(request).await.status, StatusCode::OK);
    let seen = world.upstream.last();
    assert_eq!(seen.path_and_query, "/api/42/envelope/?sentry_key=abc");
    assert!(
        !seen
            .headers
            .keys()
            .any(|name| name.as_str().replace('_', "-") == HEADER),
        "no assertion on a public route: {:?}",
        seen.headers
    );

    // Signed in: only the gateway's own.
    let mut alice = world.signed_in("alice").await;
    let request = alice
        .request(Method::GET, "/organizations/acme/")
        .header(HEADER, forged)
        .header("X-SSOGATE-JWT-ASSERTION", forged)
        .header("x_ssogate_jwt_assertion", forged)
        .body(empty())
        .unwrap();
    assert_eq!(alice.send(request).await.status, StatusCode::OK);
    let token = last_assertion(&world);
    assert_ne!(token, forged);
    assert_eq!(part(&token, 1)["sub"], "sub-alice");
    assert!(
        !world
            .upstream
            .last()
            .headers
            .keys()
            .any(|name| name.as_str().contains('_')),
        "no underscore spelling reaches the upstream"
    );

    // Forward-auth's 202 carries the same assertion, for a proxy in front to pass on.
    let admitted = alice.navigate("/oauth2/auth").await;
    assert_eq!(admitted.status, StatusCode::ACCEPTED, "{admitted:?}");
    assert_eq!(admitted.headers[HEADER], token.as_str(), "the cached one");
}

#[tokio::test]
async fn an_expired_assertion_is_refused_and_the_next_request_carries_a_fresh_one() {
    let dir = tempfile::tempdir().unwrap();
    let key = new_key(dir.path(), "assertion.pem");
    let world = world_with(
        &format!("key_file = {key:?}\nlifetime = \"2s\""),
        vec![support::alice()],
    )
    .await;
    let verifier = Verifier::of(&world);
    let mut alice = world.signed_in("alice").await;
    alice.navigate("/issues/").await;
    let first = last_assertion(&world);
    let claims = part(&first, 1);
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        2
    );

    tokio::time::sleep(Duration::from_millis(3100)).await;
    alice.navigate("/issues/").await;
    let fresh = last_assertion(&world);
    assert_ne!(fresh, first, "re-signed before it would have expired");
    assert!(
        part(&fresh, 1)["iat"].as_u64() > claims["iat"].as_u64(),
        "{fresh}"
    );
    // (Whether the fresh one verifies is not asked here: with a 2 s lifetime, a slow
    // verifier start could see it lapse. The other tests verify fresh tokens.)
    let verdicts = verifier.verify(&[&first]);
    assert!(
        error_of(&verdicts[0]).starts_with("ExpiredSignatureError"),
        "{}",
        verdicts[0]
    );
}

#[tokio::test]
async fn after_a_key_rotation_new_tokens_name_the_new_key_and_old_ones_still_verify() {
    let dir = tempfile::tempdir().unwrap();
    let old_key = new_key(dir.path(), "old.pem");
    let new_key = new_key(dir.path(), "new.pem");
    let world = world_with(&format!("key_file = {old_key:?}"), vec![support::alice()]).await;
    let verifier = Verifier::of(&world);
    let mut alice = world.signed_in("alice").await;
    alice.navigate("/issues/").await;
    let old_token = last_assertion(&world);
    let old_kid = part(&old_token, 0)["kid"].clone();

    // The new key signs; the old one stays published.
    let mut rotated = world.gateway.gateway().settings().clone();
    let assertion = rotated.assertion.as_mut().unwrap();
    assertion.key_file = new_key.clone();
    assertion.previous_key_files = vec![old_key.clone()];
    world.gateway.reload(rotated.clone()).await.unwrap();

    let jwks = world.browser().navigate(JWKS_PATH).await;
    let set: serde_json::Value = serde_json::from_str(&jwks.body).unwrap();
    let kids: Vec<&serde_json::Value> = set["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| &k["kid"])
        .collect();
    assert_eq!(kids.len(), 2, "{set}");
    assert_eq!(*kids[1], old_kid, "the signing key first, then the old one");

    alice.navigate("/issues/").await;
    let new_token = last_assertion(&world);
    let new_kid = part(&new_token, 0)["kid"].clone();
    assert_ne!(
        new_kid, old_kid,
        "no cached token of the old key after the reload"
    );
    assert_eq!(*kids[0], new_kid);
    let verdicts = verifier.verify(&[&old_token, &new_token]);
    assert_eq!(verdicts[0]["ok"], true, "{}", verdicts[0]);
    assert_eq!(verdicts[0]["kid"], old_kid);
    assert_eq!(verdicts[1]["ok"], true, "{}", verdicts[1]);
    assert_eq!(verdicts[1]["kid"], new_kid);

    // Once the old key is no longer published, its tokens are refused.
    let mut done = rotated;
    done.assertion.as_mut().unwrap().previous_key_files.clear();
    world.gateway.reload(done).await.unwrap();
    let verdicts = verifier.verify(&[&old_token, &new_token]);
    assert!(
        error_of(&verdicts[0]).starts_with("PyJWKClientError"),
        "{}",
        verdicts[0]
    );
    assert_eq!(verdicts[1]["ok"], true, "{}", verdicts[1]);

    // A key file that cannot be used refuses the reload; the running key stays.
    let mut broken = world.gateway.gateway().settings().clone();
    let rsa_like = dir.path().join("not-a-key.pem");
    std::fs::write(&rsa_like, "not a key\n").unwrap();
    broken.assertion.as_mut().unwrap().key_file = rsa_like;
    let refused = world.gateway.reload(broken).await.unwrap_err().to_string();
    assert!(
        refused.starts_with("assertion.key_file: `") && refused.contains("is not a PEM file"),
        "{refused}"
    );
    alice.navigate("/issues/").await;
    assert_eq!(part(&last_assertion(&world), 0)["kid"], new_kid);
}

#[tokio::test]
async fn without_the_assertion_the_jwks_path_is_an_ordinary_path() {
    let world = World::start().await;
    let mut alice = world.signed_in("alice").await;
    let page = alice.navigate(JWKS_PATH).await;
    assert_eq!(page.status, StatusCode::OK, "{page:?}");
    assert_eq!(world.upstream.last().path_and_query, JWKS_PATH);
    assert!(!world.upstream.last().headers.contains_key(HEADER));
}

#[test]
fn check_reports_the_assertion_key_and_fails_on_an_unusable_one() {
    let dir = tempfile::tempdir().unwrap();
    let key = new_key(dir.path(), "assertion.pem");
    let nowhere = format!("http://{}", support::unused_address());
    let output = crate::cli::check_from_environment(&nowhere, &format!("{nowhere}/oidc"))
        .env("SSOGATE_ASSERTION_KEY_FILE", &key)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find(|line| line.starts_with("OK   assertion key: ES256 key loaded from"))
        .unwrap_or_else(|| panic!("no assertion line in:\n{stdout}"));
    for fragment in [
        "kid ",
        "1 key(s) published at https://sentry.example.com/.well-known/ssogate/jwks.json",
        &format!("aud {nowhere}"),
        "lifetime 300s",
    ] {
        assert!(line.contains(fragment), "`{fragment}` in {line}");
    }

    let rsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256);
    // (rcgen cannot make RSA keys with aws-lc-rs everywhere: fall back to P-384.)
    let (wrong, found) = match rsa {
        Ok(rsa) => (rsa.serialize_pem(), "an RSA key"),
        Err(_) => (
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)
                .unwrap()
                .serialize_pem(),
            "a P-384 key",
        ),
    };
    let wrong_file = dir.path().join("wrong.pem");
    std::fs::write(&wrong_file, wrong).unwrap();
    let output = crate::cli::check_from_environment(&nowhere, &format!("{nowhere}/oidc"))
        .env("SSOGATE_ASSERTION_KEY_FILE", &wrong_file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    let expected = format!(
        "FAIL assertion key: assertion.key_file: `{}` holds {found}",
        wrong_file.display()
    );
    assert!(
        stdout.lines().any(|line| line.starts_with(&expected)),
        "missing `{expected}` in:\n{stdout}"
    );
    assert!(!stdout.contains("FAIL setup"), "said once: {stdout}");
}
