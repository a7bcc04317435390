//! End-to-end tests over real HTTP against a provider on 127.0.0.1.

use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256};
use aws_lc_rs::signature::{RsaPublicKeyComponents, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Map, Value, json};

use crate::devidp::*;

const REDIRECT: &str = "http://127.0.0.1:9/callback?from=test";
const LOGOUT: &str = "http://127.0.0.1:9/signed-out";
const VERIFIER: &str = "a-verifier-that-is-long-enough-for-rfc-7636-pkce-rules";

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// Asserts a 303 and returns the `Location`'s query parameters.
    fn redirect_params(&self) -> Vec<(String, String)> {
        assert_eq!(self.status, StatusCode::SEE_OTHER, "{}", self.body);
        let location = url::Url::parse(self.headers["location"].to_str().unwrap()).unwrap();
        location.query_pairs().into_owned().collect()
    }

    fn error(&self) -> (StatusCode, Value) {
        (self.status, self.json()["error"].clone())
    }
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

async fn call(method: Method, url: &str, headers: &[(&str, &str)], body: String) -> Reply {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = client
        .request(request.body(body.into()).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes().to_vec();
    let body = String::from_utf8(body).unwrap();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

async fn get(url: &str) -> Reply {
    call(Method::GET, url, &[], String::new()).await
}

async fn post_form(url: &str, headers: &[(&str, &str)], fields: &[(&str, &str)]) -> Reply {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish();
    let mut all = vec![("content-type", "application/x-www-form-urlencoded")];
    all.extend_from_slice(headers);
    call(Method::POST, url, &all, body).await
}

/// Starts the demo configuration; returns the provider and the client secret.
async fn start(alg: SigningAlg) -> (DevProvider, String) {
    let mut config = DevProviderConfig::demo(REDIRECT, LOGOUT);
    config.signing_alg = alg;
    let secret = config.clients[0].client_secret.clone();
    let idp = DevProvider::start("127.0.0.1:0".parse().unwrap(), config).await;
    (idp.unwrap(), secret)
}

/// A valid authorization request, with `overrides` replacing parameters.
fn authorize_url(idp: &DevProvider, overrides: &[(&str, &str)]) -> String {
    let challenge = B64.encode(digest(&SHA256, VERIFIER.as_bytes()));
    let mut params = vec![
        ("client_id", DEMO_CLIENT_ID),
        ("redirect_uri", REDIRECT),
        ("response_type", "code"),
        ("scope", "openid email profile"),
        ("state", "st&te"),
        ("nonce", "n0nce"),
        ("code_challenge", &challenge),
        ("code_challenge_method", "S256"),
    ];
    for (name, value) in overrides {
        params.retain(|(n, _)| n != name);
        params.push((name, value));
    }
    let query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    format!("{}/authorize?{query}", idp.issuer())
}

/// Authorizes, reads the form, fails once, signs in; returns the code.
async fn sign_in(idp: &DevProvider, overrides: &[(&str, &str)]) -> String {
    let page = get(&authorize_url(idp, overrides)).await;
    assert_eq!(page.status, StatusCode::OK);
    let login = format!("{}/login", idp.issuer());
    assert!(page.body.contains(&format!(r#"action="{login}""#)));
    let marker = r#"name="interaction" value=""#;
    let start = page.body.find(marker).unwrap() + marker.len();
    let interaction = &page.body[start..start + page.body[start..].find('"').unwrap()];

    let fields = |password| {
        [
            ("interaction", interaction),
            ("username", "demo"),
            ("password", password),
        ]
    };
    let retry = post_form(&login, &[], &fields("wrong")).await;
    assert_eq!(retry.status, StatusCode::UNAUTHORIZED);
    assert!(retry.body.contains("Wrong username or password"));
    let params = post_form(&login, &[], &fields("demo"))
        .await
        .redirect_params();
    assert_eq!(param(&params, "from"), Some("test"));
    assert_eq!(param(&params, "state"), Some("st&te"));
    assert_eq!(param(&params, "iss"), Some(idp.issuer().as_str()));
    param(&params, "code").unwrap().to_owned()
}

/// Redeems `code` at the token endpoint with client_secret_basic.
async fn redeem(idp: &DevProvider, secret: &str, code: &str, verifier: &str) -> Reply {
    let basic = format!(
        "Basic {}",
        STANDARD.encode(format!("{DEMO_CLIENT_ID}:{secret}"))
    );
    let fields = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", REDIRECT),
        ("code_verifier", verifier),
    ];
    post_form(
        &format!("{}/token", idp.issuer()),
        &[("authorization", &basic)],
        &fields,
    )
    .await
}

fn decode_part(part: &str) -> Map<String, Value> {
    serde_json::from_slice(&B64.decode(part).unwrap()).unwrap()
}

/// Verifies the signature with the key from the JWKS; returns header and claims.
async fn verify(idp: &DevProvider, id_token: &str) -> (Map<String, Value>, Map<String, Value>) {
    let parts: Vec<&str> = id_token.split('.').collect();
    let (header, claims) = (decode_part(parts[0]), decode_part(parts[1]));
    let jwks = get(&format!("{}/jwks", idp.issuer())).await.json();
    let keys = jwks["keys"].as_array().unwrap();
    let jwk = keys
        .iter()
        .find(|k| k["kid"] == header["kid"])
        .expect("kid in JWKS");
    assert_eq!((&jwk["alg"], &jwk["use"]), (&header["alg"], &json!("sig")));
    let member = |name: &str| B64.decode(jwk[name].as_str().unwrap()).unwrap();
    let message = format!("{}.{}", parts[0], parts[1]);
    let signature = B64.decode(parts[2]).unwrap();
    let verified = if jwk["kty"] == "RSA" {
        let public_key = RsaPublicKeyComponents {
            n: member("n"),
            e: member("e"),
        };
        public_key.verify(&RSA_PKCS1_2048_8192_SHA256, message.as_bytes(), &signature)
    } else {
        let point = [vec![4], member("x"), member("y")].concat();
        let public_key = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point);
        public_key.verify(message.as_bytes(), &signature)
    };
    verified.expect("ID token signature verifies against the JWKS");
    (header, claims)
}

async fn userinfo(idp: &DevProvider, access_token: &str) -> Reply {
    let url = format!("{}/userinfo", idp.issuer());
    let bearer = format!("Bearer {access_token}");
    call(
        Method::GET,
        &url,
        &[("authorization", &bearer)],
        String::new(),
    )
    .await
}

#[tokio::test]
async fn discovery_document_describes_the_provider() {
    let (idp, _) = start(SigningAlg::Es256).await;
    let issuer = idp.issuer();
    assert_eq!(issuer, format!("http://{}/idp", idp.local_addr()));
    let doc = get(&format!("{issuer}/.well-known/openid-configuration"))
        .await
        .json();
    assert_eq!(doc["issuer"], issuer);
    assert_eq!(doc["authorization_endpoint"], format!("{issuer}/authorize"));
    assert_eq!(doc["token_endpoint"], format!("{issuer}/token"));
    assert_eq!(doc["userinfo_endpoint"], format!("{issuer}/userinfo"));
    assert_eq!(doc["jwks_uri"], format!("{issuer}/jwks"));
    assert_eq!(doc["end_session_endpoint"], format!("{issuer}/session/end"));
    assert_eq!(
        doc["id_token_signing_alg_values_supported"],
        json!(["ES256"])
    );
    assert_eq!(doc["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(doc["response_types_supported"], json!(["code"]));
    let methods = json!(["client_secret_basic", "client_secret_post"]);
    assert_eq!(doc["token_endpoint_auth_methods_supported"], methods);
    let claims = doc["claims_supported"].as_array().unwrap();
    assert!(claims.contains(&json!("permissions")) && claims.contains(&json!("sid")));
    let grant_types = json!(["authorization_code", "refresh_token"]);
    assert_eq!(doc["grant_types_supported"], grant_types);
    let scopes = doc["scopes_supported"].as_array().unwrap();
    assert!(scopes.contains(&json!("offline_access")));
    assert_eq!(doc["backchannel_logout_supported"], true);
    assert_eq!(doc["backchannel_logout_session_supported"], true);
}

async fn full_flow(alg: SigningAlg) {
    let (idp, secret) = start(alg).await;
    let code = sign_in(&idp, &[]).await;
    let reply = redeem(&idp, &secret, &code, VERIFIER).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.headers["cache-control"], "no-store");
    let body = reply.json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "openid email profile");
    let (header, claims) = verify(&idp, body["id_token"].as_str().unwrap()).await;
    assert_eq!(
        (&header["alg"], &header["typ"]),
        (&json!(alg.as_str()), &json!("JWT"))
    );
    assert_eq!(claims["iss"], idp.issuer());
    assert_eq!(claims["aud"], DEMO_CLIENT_ID);
    assert_eq!(claims["azp"], DEMO_CLIENT_ID);
    assert_eq!(claims["sub"], "demo-user-1");
    assert_eq!(claims["nonce"], "n0nce");
    assert_eq!(claims["email"], "demo@example.com");
    assert_eq!(claims["email_verified"], true);
    assert_eq!(claims["permissions"], json!(["sentry:admin"]));
    assert!(claims["exp"].as_u64() > claims["iat"].as_u64());
    let requests = idp.token_requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(param(&requests[0], "code_verifier"), Some(VERIFIER));

    let info = userinfo(&idp, body["access_token"].as_str().unwrap())
        .await
        .json();
    assert_eq!(
        (&info["sub"], &info["name"]),
        (&json!("demo-user-1"), &json!("Demo User"))
    );
}

#[tokio::test]
async fn rs256_flow_yields_a_verifiable_id_token() {
    full_flow(SigningAlg::Rs256).await;
}

#[tokio::test]
async fn es256_flow_yields_a_verifiable_id_token() {
    full_flow(SigningAlg::Es256).await;
}

#[tokio::test]
async fn scope_limits_the_released_claims() {
    let (idp, secret) = start(SigningAlg::Es256).await;
    let code = sign_in(&idp, &[("scope", "openid")]).await;
    let body = redeem(&idp, &secret, &code, VERIFIER).await.json();
    let (_, claims) = verify(&idp, body["id_token"].as_str().unwrap()).await;
    assert!(claims.get("email").is_none() && claims.get("name").is_none());
    assert_eq!(
        (&claims["sub"], &claims["groups"]),
        (&json!("demo-user-1"), &json!(["admins"]))
    );
}

#[tokio::test]
async fn wrong_verifier_is_invalid_grant() {
    let (idp, secret) = start(SigningAlg::Es256).await;
    let code = sign_in(&idp, &[]).await;
    let reply = redeem(&idp, &secret, &code, &"x".repeat(43)).await;
    assert_eq!(
        reply.error(),
        (StatusCode::BAD_REQUEST, json!("invalid_grant"))
    );
}

#[tokio::test]
async fn codes_are_single_use_and_reuse_revokes_the_access_token() {
    let (idp, secret) = start(SigningAlg::Es256).await;
    let code = sign_in(&idp, &[]).await;
    let first = redeem(&idp, &secret, &code, VERIFIER).await;
    assert_eq!(first.status, StatusCode::OK);
    let again = redeem(&idp, &secret, &code, VERIFIER).await;
    assert_eq!(
        again.error(),
        (StatusCode::BAD_REQUEST, json!("invalid_grant"))
    );
    let info = userinfo(&idp, first.json()["access_token"].as_str().unwrap()).await;
    assert_eq!(info.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        info.headers["www-authenticate"],
        r#"Bearer error="invalid_token""#
    );
}

#[tokio::test]
async fn client_authentication_is_checked() {
    let (idp, secret) = start(SigningAlg::Es256).await;
    let code = sign_in(&idp, &[]).await;
    let wrong = redeem(&idp, "not-the-secret", &code, VERIFIER).await;
    assert_eq!(
        wrong.error(),
        (StatusCode::UNAUTHORIZED, json!("invalid_client"))
    );
    assert!(wrong.headers.contains_key("www-authenticate"));
    // The failed attempt did not use the code up; client_secret_post works too.
    let fields = [
        ("grant_type", "authorization_code"),
        ("code", &code),
        ("redirect_uri", REDIRECT),
        ("code_verifier", VERIFIER),
        ("client_id", DEMO_CLIENT_ID),
        ("client_secret", &secret),
    ];
    let reply = post_form(&format!("{}/token", idp.issuer()), &[], &fields).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
}

#[tokio::test]
async fn bad_requests_get_clean_answers() {
    let (idp, _) = start(SigningAlg::Es256).await;
    let issuer = idp.issuer();
    // Unknown client or redirect_uri: an error page, never a redirect.
    let elsewhere = ("redirect_uri", "http://127.0.0.1:9/elsewhere");
    for overrides in [[("client_id", "<nobody>")], [elsewhere]] {
        let reply = get(&authorize_url(&idp, &overrides)).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        assert!(!reply.headers.contains_key("location"));
    }
    // Other errors go back to the client.
    let reply = get(&authorize_url(&idp, &[("code_challenge_method", "plain")])).await;
    let params = reply.redirect_params();
    assert_eq!(param(&params, "error"), Some("invalid_request"));
    assert_eq!(param(&params, "state"), Some("st&te"));
    let reply = get(&authorize_url(&idp, &[("scope", "email")])).await;
    assert_eq!(
        param(&reply.redirect_params(), "error"),
        Some("invalid_scope")
    );
    // Junk.
    assert_eq!(
        get(&format!("{issuer}/nope")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&format!("{issuer}/token")).await.status,
        StatusCode::NOT_FOUND
    );
    let text = [("content-type", "text/plain")];
    let token = call(Method::POST, &format!("{issuer}/token"), &text, "\0".into()).await;
    assert_eq!(
        token.error(),
        (StatusCode::BAD_REQUEST, json!("invalid_request"))
    );
    let token = post_form(
        &format!("{issuer}/token"),
        &[("authorization", "Basic %%")],
        &[],
    )
    .await;
    assert_eq!(
        token.error(),
        (StatusCode::UNAUTHORIZED, json!("invalid_client"))
    );
    let login = post_form(&format!("{issuer}/login"), &[], &[("interaction", "<x>")]).await;
    assert_eq!(login.status, StatusCode::BAD_REQUEST);
    let escaped = pages::escape(r#"<a href="x">'&"#);
    assert_eq!(escaped, "&lt;a href=&quot;x&quot;&gt;&#39;&amp;");
}

#[tokio::test]
async fn non_loopback_addresses_are_refused() {
    for addr in ["0.0.0.0:0", "192.0.2.1:0", "[::]:0", "[::ffff:10.0.0.1]:0"] {
        let config = DevProviderConfig::demo(REDIRECT, LOGOUT);
        let error = DevProvider::start(addr.parse().unwrap(), config)
            .await
            .unwrap_err();
        assert!(
            matches!(error, DevProviderError::NotLoopback(_)),
            "{addr}: {error}"
        );
    }
}

#[tokio::test]
async fn rotated_keys_sign_and_old_keys_stay_published() {
    let (idp, secret) = start(SigningAlg::Rs256).await;
    let jwks_url = format!("{}/jwks", idp.issuer());
    let old_kid = get(&jwks_url).await.json()["keys"][0]["kid"].clone();
    let new_kid = idp.rotate_signing_key();
    assert_ne!(old_kid, new_kid);
    let jwks = get(&jwks_url).await.json();
    let kids: Vec<&Value> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| &k["kid"])
        .collect();
    assert_eq!(kids, [&old_kid, &json!(new_kid)]);
    let code = sign_in(&idp, &[]).await;
    let body = redeem(&idp, &secret, &code, VERIFIER).await.json();
    let (header, _) = verify(&idp, body["id_token"].as_str().unwrap()).await;
    assert_eq!(header["kid"], new_kid);
}

#[tokio::test]
async fn tamper_can_strip_the_signature() {
    let (idp, secret) = start(SigningAlg::Es256).await;
    idp.set_id_token_tamper(Some(std::sync::Arc::new(|header, claims| {
        header.insert("alg".into(), "none".into());
        claims.insert("email".into(), "mallory@example.com".into());
    })));
    let code = sign_in(&idp, &[]).await;
    let body = redeem(&idp, &secret, &code, VERIFIER).await.json();
    let parts: Vec<&str> = body["id_token"].as_str().unwrap().split('.').collect();
    assert_eq!(parts.len(), 3);
    assert_eq!(parts[2], "");
    assert_eq!(decode_part(parts[0])["alg"], "none");
    assert_eq!(decode_part(parts[1])["email"], "mallory@example.com");
}

#[tokio::test]
async fn end_session_redirects_only_to_registered_uris() {
    let (idp, _) = start(SigningAlg::Es256).await;
    let end = format!("{}/session/end?post_logout_redirect_uri=", idp.issuer());
    let reply = get(&format!("{end}{LOGOUT}&state=bye")).await;
    assert_eq!(param(&reply.redirect_params(), "state"), Some("bye"));
    let other = get(&format!("{end}http://evil.test/")).await;
    assert_eq!(other.status, StatusCode::OK);
    assert!(other.body.contains("You are signed out"));
    let recorded = idp.end_session_requests();
    assert_eq!(recorded.len(), 2);
    assert_eq!(param(&recorded[0], "state"), Some("bye"));
}

#[tokio::test]
async fn shutdown_stops_accepting() {
    let (idp, _) = start(SigningAlg::Es256).await;
    idp.shutdown();
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(idp.local_addr())
            .await
            .is_err()
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("still accepting connections after shutdown");
}

const OFFLINE: &str = "openid offline_access email";

/// Signs in with `scope` (asking for consent, which `offline_access` needs) and
/// redeems the code; returns the token response.
async fn tokens(idp: &DevProvider, secret: &str, scope: &str) -> Value {
    let code = sign_in(idp, &[("scope", scope), ("prompt", "consent")]).await;
    let reply = redeem(idp, secret, &code, VERIFIER).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    reply.json()
}

/// A refresh_token grant with client_secret_basic and `extra` fields.
async fn refresh(idp: &DevProvider, secret: &str, token: &Value, extra: &[(&str, &str)]) -> Reply {
    let basic = format!(
        "Basic {}",
        STANDARD.encode(format!("{DEMO_CLIENT_ID}:{secret}"))
    );
    let mut fields = vec![("grant_type", "refresh_token")];
    fields.extend(token.as_str().map(|t| ("refresh_token", t)));
    fields.extend_from_slice(extra);
    post_form(
        &format!("{}/token", idp.issuer()),
        &[("authorization", &basic)],
        &fields,
    )
    .await
}

fn invalid_grant() -> (StatusCode, Value) {
    (StatusCode::BAD_REQUEST, json!("invalid_grant"))
}

#[tokio::test]
async fn refresh_tokens_come_only_with_offline_access() {
    let (idp, secret) = start(SigningAlg::Es256).await;
    let online = tokens(&idp, &secret, "openid email profile").await;
    assert!(online.get("refresh_token").is_none(), "{online}");
    let offline = tokens(&idp, &secret, OFFLINE).await;
    assert!(
        offline["refresh_token"]
            .as_str()
            .is_some_and(|t| t.len() >= 43)
    );
    assert_eq!(offline["scope"], OFFLINE);
    // Every login starts its own provider session, named in its ID tokens.
    let (_, online_claims) = verify(&idp, online["id_token"].as_str().unwrap()).await;
    let (_, claims) = verify(&idp, offline["id_token"].as_str().unwrap()).await;
    assert_ne!(online_claims["sid"], claims["sid"]);
    assert_eq!(
        claims["sid"].as_str(),
        idp.sid_of_last_login("demo").as_deref()
    );
    assert_eq!(idp.sid_of_last_login("nobody"), None);
    assert_eq!(idp.refresh_count(), 0);
    // As oidc-provider: without prompt=consent, offline_access is dropped.
    let code = sign_in(&idp, &[("scope", OFFLINE)]).await;
    let unasked: Value = redeem(&idp, &secret, &code, VERIFIER).await.json();
    assert!(unasked.get("refresh_token").is_none(), "{unasked}");
    assert_eq!(unasked["scope"], "openid email");
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_family() {
    let (idp, secret) = start(SigningAlg::Rs256).await;
    let first = tokens(&idp, &secret, OFFLINE).await;
    let (_, original) = verify(&idp, first["id_token"].as_str().unwrap()).await;
    assert_eq!(original["nonce"], "n0nce");

    let reply = refresh(&idp, &secret, &first["refresh_token"], &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.headers["cache-control"], "no-store");
    let second = reply.json();
    assert_eq!(
        (&second["token_type"], &second["scope"]),
        (&json!("Bearer"), &json!(OFFLINE))
    );
    for name in ["access_token", "refresh_token", "id_token"] {
        assert!(
            second[name].is_string() && second[name] != first[name],
            "{name}"
        );
    }
    let (header, claims) = verify(&idp, second["id_token"].as_str().unwrap()).await;
    assert_eq!(header["typ"], "JWT");
    for name in ["iss", "sub", "aud", "azp", "sid", "auth_time", "email"] {
        assert_eq!(claims[name], original[name], "{name}");
    }
    assert!(
        claims.get("nonce").is_none(),
        "refreshed ID token has no nonce"
    );
    assert!(claims["iat"].as_u64() >= original["iat"].as_u64());
    assert!(claims["exp"].as_u64() > claims["iat"].as_u64());
    let at_hash = digest(&SHA256, second["access_token"].as_str().unwrap().as_bytes());
    assert_eq!(claims["at_hash"], B64.encode(&at_hash.as_ref()[..16]));
    let info = userinfo(&idp, second["access_token"].as_str().unwrap()).await;
    assert_eq!(info.json()["sub"], "demo-user-1");

    // The used refresh token is refused, and its reuse revokes the family.
    let reuse = refresh(&idp, &secret, &first["refresh_token"], &[]).await;
    assert_eq!(reuse.error(), invalid_grant());
    assert_eq!(
        reuse.json()["error_description"],
        "refresh token already used"
    );
    let next = refresh(&idp, &secret, &second["refresh_token"], &[]).await;
    assert_eq!(next.error(), invalid_grant());
    for access_token in [&first["access_token"], &second["access_token"]] {
        let info = userinfo(&idp, access_token.as_str().unwrap()).await;
        assert_eq!(info.status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(idp.refresh_count(), 3);
}

#[tokio::test]
async fn refresh_checks_its_request() {
    let mut config = DevProviderConfig::demo(REDIRECT, LOGOUT);
    let mut other = config.clients[0].clone();
    other.client_id = "other-client".to_owned();
    config.clients.push(other.clone());
    let secret = config.clients[0].client_secret.clone();
    let idp = DevProvider::start("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap();
    let issued = tokens(&idp, &secret, OFFLINE).await;
    let token = &issued["refresh_token"];

    let missing = refresh(&idp, &secret, &Value::Null, &[]).await;
    assert_eq!(
        missing.error(),
        (StatusCode::BAD_REQUEST, json!("invalid_request"))
    );
    let unknown = refresh(&idp, &secret, &json!("not-a-token"), &[]).await;
    assert_eq!(unknown.error(), invalid_grant());
    let wrong_secret = refresh(&idp, "wrong", token, &[]).await;
    assert_eq!(
        wrong_secret.error(),
        (StatusCode::UNAUTHORIZED, json!("invalid_client"))
    );
    let wider = refresh(&idp, &secret, token, &[("scope", "openid phone")]).await;
    assert_eq!(
        wider.error(),
        (StatusCode::BAD_REQUEST, json!("invalid_scope"))
    );
    // Another client (client_secret_post) cannot use it.
    let fields = [
        ("grant_type", "refresh_token"),
        ("refresh_token", token.as_str().unwrap()),
        ("client_id", "other-client"),
        ("client_secret", &other.client_secret),
    ];
    let stolen = post_form(&format!("{}/token", idp.issuer()), &[], &fields).await;
    assert_eq!(stolen.error(), invalid_grant());

    // None of that used the token up; a narrower scope is fine.
    let narrower = refresh(&idp, &secret, token, &[("scope", "openid")]).await;
    assert_eq!(narrower.status, StatusCode::OK, "{}", narrower.body);
    let body = narrower.json();
    assert_eq!(body["scope"], "openid");
    let (_, claims) = verify(&idp, body["id_token"].as_str().unwrap()).await;
    assert!(claims.get("email").is_none());
    assert!(body["refresh_token"].is_string());
    let info = userinfo(&idp, body["access_token"].as_str().unwrap())
        .await
        .json();
    assert!(info.get("email").is_none());
    assert_eq!(idp.refresh_count(), 6);
}

#[tokio::test]
async fn end_sessions_revokes_every_token_of_the_user() {
    let (idp, secret) = start(SigningAlg::Es256).await;
    let logins = [
        tokens(&idp, &secret, OFFLINE).await,
        tokens(&idp, &secret, "openid").await,
    ];
    let pending = sign_in(&idp, &[]).await;
    assert_eq!(idp.end_sessions("nobody"), 0);
    // Two access tokens and one refresh token.
    assert_eq!(idp.end_sessions("demo"), 3);
    for login in &logins {
        let info = userinfo(&idp, login["access_token"].as_str().unwrap()).await;
        assert_eq!(info.status, StatusCode::UNAUTHORIZED);
    }
    let again = refresh(&idp, &secret, &logins[0]["refresh_token"], &[]).await;
    assert_eq!(again.error(), invalid_grant());
    let late = redeem(&idp, &secret, &pending, VERIFIER).await;
    assert_eq!(late.error(), invalid_grant());
    assert_eq!(idp.end_sessions("demo"), 0);
    // The user can sign in again.
    let fresh = tokens(&idp, &secret, OFFLINE).await;
    let reply = refresh(&idp, &secret, &fresh["refresh_token"], &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
}

#[tokio::test]
async fn token_endpoint_outage_answers_503_and_uses_nothing_up() {
    let (idp, secret) = start(SigningAlg::Es256).await;
    let issued = tokens(&idp, &secret, OFFLINE).await;
    let code = sign_in(&idp, &[]).await;
    idp.set_token_endpoint_outage(true);
    let down = refresh(&idp, &secret, &issued["refresh_token"], &[]).await;
    assert_eq!(
        down.error(),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!("temporarily_unavailable")
        )
    );
    assert_eq!(down.headers["content-type"], "application/json");
    let down = redeem(&idp, &secret, &code, VERIFIER).await;
    assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(idp.refresh_count(), 1);
    // Other endpoints keep working.
    let info = userinfo(&idp, issued["access_token"].as_str().unwrap()).await;
    assert_eq!(info.status, StatusCode::OK);

    idp.set_token_endpoint_outage(false);
    let reply = refresh(&idp, &secret, &issued["refresh_token"], &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(
        redeem(&idp, &secret, &code, VERIFIER).await.status,
        StatusCode::OK
    );
    assert_eq!(idp.refresh_count(), 2);
}

#[tokio::test]
async fn logout_tokens_verify_and_carry_the_logout_claims() {
    let (idp, secret) = start(SigningAlg::Rs256).await;
    tokens(&idp, &secret, "openid").await;
    let sid = idp.sid_of_last_login("demo").unwrap();
    let kid = idp.rotate_signing_key();
    let token = idp.logout_token(Some("demo-user-1"), Some(&sid));
    let (header, claims) = verify(&idp, &token).await;
    assert_eq!(
        (&header["typ"], &header["kid"]),
        (&json!("logout+jwt"), &json!(kid))
    );
    assert_eq!(claims["iss"], idp.issuer());
    assert_eq!(claims["aud"], DEMO_CLIENT_ID);
    assert_eq!(
        (&claims["sub"], &claims["sid"]),
        (&json!("demo-user-1"), &json!(sid))
    );
    assert_eq!(claims["events"], json!({ BACKCHANNEL_LOGOUT_EVENT: {} }));
    assert!(claims["jti"].as_str().is_some_and(|jti| !jti.is_empty()));
    let iat = claims["iat"].as_u64().unwrap();
    assert_eq!(claims["exp"].as_u64(), Some(iat + 120));
    assert!(claims.get("nonce").is_none());
    let another = idp.logout_token(None, Some(&sid));
    let (_, other) = verify(&idp, &another).await;
    assert!(other.get("sub").is_none());
    assert_ne!(other["jti"], claims["jti"]);

    // Arbitrary claims, for invalid variants.
    let mut forged = claims.clone();
    forged.insert("aud".into(), "someone-else".into());
    forged.insert("nonce".into(), "n".into());
    forged.remove("events");
    let mut extra = Map::new();
    extra.insert("typ".into(), "JWT".into());
    extra.insert("cty".into(), "x".into());
    let (header, signed) = verify(&idp, &idp.sign_claims(extra, forged.clone())).await;
    assert_eq!(
        (&header["typ"], &header["cty"]),
        (&json!("JWT"), &json!("x"))
    );
    assert_eq!(signed, forged);
    let mut none = Map::new();
    none.insert("alg".into(), "none".into());
    let unsigned = idp.sign_claims(none, forged);
    assert!(unsigned.ends_with('.') && unsigned.split('.').count() == 3);
}

#[tokio::test]
async fn code_reuse_revokes_the_refresh_token_too() {
    let (idp, secret) = start(SigningAlg::Es256).await;
    let code = sign_in(&idp, &[("scope", OFFLINE), ("prompt", "consent")]).await;
    let first = redeem(&idp, &secret, &code, VERIFIER).await.json();
    let again = redeem(&idp, &secret, &code, VERIFIER).await;
    assert_eq!(again.error(), invalid_grant());
    let reply = refresh(&idp, &secret, &first["refresh_token"], &[]).await;
    assert_eq!(reply.error(), invalid_grant());
}
