//! The sign-in flow end to end against the in-process provider, and every way the
//! provider's answer can be wrong.

use crate::support;

use std::sync::Arc;

use crate::support::{PASSWORD, SESSION_COOKIE, World, WorldOptions};
use http::StatusCode;
use serde_json::{Value, json};
use ssogate::devidp::SigningAlg;

async fn deep_link_login_lands_on_the_page_with_its_query(alg: SigningAlg) {
    let world = World::start_with(WorldOptions {
        alg,
        ..Default::default()
    })
    .await;
    let mut browser = world.browser();
    let deep_link = "/organizations/acme/issues/?query=is%3Aunresolved&project=42";

    let first = browser.navigate(deep_link).await;
    assert_eq!(first.status, StatusCode::FOUND);
    let sign_in = first.location().unwrap().to_owned();
    assert!(sign_in.starts_with("/oauth2/sign_in?rd="), "{sign_in}");
    let page = browser.navigate(&sign_in).await;
    assert!(page.body.contains("Log in with Encvoy ID"), "{}", page.body);

    let rd = sign_in.split_once("rd=").unwrap().1;
    let rd: String = form_urlencoded::parse(format!("rd={rd}").as_bytes())
        .next()
        .unwrap()
        .1
        .into_owned();
    let landed = browser.login(&rd, "alice", PASSWORD).await;
    assert_eq!(landed.status, StatusCode::OK, "{landed:?}");
    assert_eq!(landed.url, format!("{}{deep_link}", world.base));
    let seen = world.upstream.last();
    assert_eq!(seen.path_and_query, deep_link);
    assert_eq!(seen.headers["x-forwarded-user"], "sub-alice");
    assert_eq!(seen.headers["x-forwarded-email"], "alice@corp.example");
    assert_eq!(seen.headers["x-forwarded-preferred-username"], "alice");
}

#[tokio::test]
async fn rs256_login_preserves_the_deep_link() {
    deep_link_login_lands_on_the_page_with_its_query(SigningAlg::Rs256).await;
}

#[tokio::test]
async fn es256_login_preserves_the_deep_link() {
    deep_link_login_lands_on_the_page_with_its_query(SigningAlg::Es256).await;
}

#[tokio::test]
async fn pkce_s256_challenge_and_verifier_are_sent() {
    let world = World::start().await;
    let mut browser = world.browser();
    let start = browser.navigate("/oauth2/start?rd=%2F").await;
    let authorize = url::Url::parse(start.location().unwrap()).unwrap();
    let query: Vec<(String, String)> = authorize.query_pairs().into_owned().collect();
    let get = |n: &str| query.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    assert_eq!(get("code_challenge_method").as_deref(), Some("S256"));
    assert!(get("code_challenge").is_some_and(|c| c.len() == 43));
    assert!(get("state").is_some() && get("nonce").is_some());
    assert_eq!(
        get("scope").as_deref(),
        Some("openid email profile"),
        "each scope once"
    );
    assert!(
        authorize.path().starts_with("/api/oidc/"),
        "issuer with a path: {authorize}"
    );

    let mut browser = world.browser();
    browser.login("/", "alice", PASSWORD).await;
    let token_requests = world.provider.token_requests();
    let fields = token_requests.last().expect("a token request");
    let verifier = fields
        .iter()
        .find(|(k, _)| k == "code_verifier")
        .map(|(_, v)| v.as_str());
    assert!(
        verifier.is_some_and(|v| v.len() >= 43),
        "code_verifier sent: {fields:?}"
    );
}

/// Logs in with the provider tampering with the ID token; returns the callback page.
async fn login_with_tampered_token(
    tamper: impl Fn(&mut serde_json::Map<String, Value>, &mut serde_json::Map<String, Value>)
    + Send
    + Sync
    + 'static,
) -> (World, support::TestResponse) {
    let world = World::start().await;
    world.provider.set_id_token_tamper(Some(Arc::new(tamper)));
    let mut browser = world.browser();
    let callback = browser.login_until_callback("/", "alice", PASSWORD).await;
    let page = browser.navigate(&callback).await;
    (world, page)
}

async fn assert_refused(page: &support::TestResponse, world: &World, reason: &str) {
    assert_eq!(page.status, StatusCode::UNAUTHORIZED, "{page:?}");
    assert!(page.body.contains("Sign-in failed"), "{}", page.body);
    assert!(
        page.body.to_lowercase().contains(reason),
        "page should say `{reason}`: {}",
        page.body
    );
    assert!(
        !page
            .set_cookies()
            .iter()
            .any(|c| c.starts_with(&format!("{SESSION_COOKIE}="))
                && !c.starts_with(&format!("{SESSION_COOKIE}=;"))),
        "no session cookie on a refused login"
    );
    assert!(
        world.upstream.requests().is_empty(),
        "nothing reached the upstream"
    );
}

#[tokio::test]
async fn nonce_mismatch_is_refused() {
    let (world, page) = login_with_tampered_token(|_, claims| {
        claims.insert("nonce".into(), json!("someone-elses-nonce"));
    })
    .await;
    assert_refused(&page, &world, "nonce").await;
}

#[tokio::test]
async fn wrong_audience_is_refused() {
    let (world, page) = login_with_tampered_token(|_, claims| {
        claims.insert("aud".into(), json!("another-client"));
        claims.insert("azp".into(), json!("another-client"));
    })
    .await;
    assert_refused(&page, &world, "audience").await;
}

#[tokio::test]
async fn expired_token_is_refused() {
    let (world, page) = login_with_tampered_token(|_, claims| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        claims.insert("iat".into(), json!(now - 7200));
        claims.insert("exp".into(), json!(now - 3600));
    })
    .await;
    assert_refused(&page, &world, "expired").await;
}

#[tokio::test]
async fn unsigned_alg_none_token_is_refused() {
    let (world, page) = login_with_tampered_token(|header, _| {
        header.insert("alg".into(), json!("none"));
    })
    .await;
    assert_refused(&page, &world, "id token was refused").await;
}

#[tokio::test]
async fn token_signed_with_an_unpublished_key_is_refused() {
    let (world, page) = login_with_tampered_token(|header, _| {
        header.insert("kid".into(), json!("not-a-published-key"));
    })
    .await;
    assert_refused(&page, &world, "id token was refused").await;
}

#[tokio::test]
async fn provider_key_rotation_does_not_break_logins() {
    let world = World::start().await;
    world.signed_in("alice").await;
    let new_kid = world.provider.rotate_signing_key();
    let mut browser = world.browser();
    let landed = browser.login("/after-rotation", "alice", PASSWORD).await;
    assert_eq!(
        landed.status,
        StatusCode::OK,
        "login after rotation to {new_kid}: {landed:?}"
    );
    assert_eq!(world.upstream.last().path_and_query, "/after-rotation");
}

#[tokio::test]
async fn state_that_does_not_belong_to_this_browser_is_refused() {
    let world = World::start().await;
    let mut attacker = world.browser();
    let callback = attacker.login_until_callback("/", "alice", PASSWORD).await;
    // The victim's browser never started this login.
    let mut victim = world.browser();
    let page = victim.navigate(&callback).await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST, "{page:?}");
    assert!(
        page.body.contains("not started in this browser"),
        "{}",
        page.body
    );
    assert!(!victim.cookies.contains_key(SESSION_COOKIE));
}

#[tokio::test]
async fn state_mismatch_is_refused() {
    let world = World::start().await;
    let mut browser = world.browser();
    let callback = browser.login_until_callback("/", "alice", PASSWORD).await;
    let mut url = url::Url::parse(&callback).unwrap();
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| {
            if k == "state" {
                (k.into_owned(), format!("{v}x"))
            } else {
                (k.into_owned(), v.into_owned())
            }
        })
        .collect();
    url.query_pairs_mut().clear().extend_pairs(pairs);
    let page = browser.navigate(url.as_str()).await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST, "{page:?}");
    assert!(!browser.cookies.contains_key(SESSION_COOKIE));
}

#[tokio::test]
async fn replayed_state_is_refused() {
    let world = World::start().await;
    let mut browser = world.browser();
    let callback = browser.login_until_callback("/", "alice", PASSWORD).await;
    let login_cookies = browser.cookies.clone();
    let first = browser.navigate(&callback).await;
    assert_eq!(first.status, StatusCode::FOUND, "{first:?}");
    // Replay the same callback with the login cookie it had the first time.
    let mut replayer = world.browser();
    replayer.cookies = login_cookies;
    let replay = replayer.navigate(&callback).await;
    assert_eq!(replay.status, StatusCode::BAD_REQUEST, "{replay:?}");
    assert!(
        replay.body.contains("expired or was already used"),
        "{}",
        replay.body
    );
}

#[tokio::test]
async fn duplicated_callback_parameters_are_refused() {
    let world = World::start().await;
    let mut browser = world.browser();
    let callback = browser.login_until_callback("/", "alice", PASSWORD).await;
    let page = browser.navigate(&format!("{callback}&code=injected")).await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST);
    assert!(page.body.contains("more than once"), "{}", page.body);
}

#[tokio::test]
async fn provider_error_is_shown_escaped() {
    let world = World::start().await;
    let mut browser = world.browser();
    // With the provider's `iss`, as its error answers carry (RFC 9207).
    let page = browser
        .navigate(&format!(
            "/oauth2/callback?error=access_denied&error_description=%3Cscript%3Ealert(1)%3C%2Fscript%3E&iss={}",
            form_urlencoded::byte_serialize(world.provider.issuer().as_bytes()).collect::<String>()
        ))
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert!(page.body.contains("access_denied"));
    assert!(!page.body.contains("<script>"), "{}", page.body);
}

#[tokio::test]
async fn hostile_return_targets_become_the_root() {
    let world = World::start().await;
    for rd in [
        "https://evil.example/",
        "//evil.example",
        "/\\evil.example",
        "https://127.0.0.1.evil.example/",
    ] {
        let mut browser = world.browser();
        let landed = browser.login(rd, "alice", PASSWORD).await;
        assert_eq!(
            landed.url,
            format!("{}/", world.base),
            "rd {rd:?} must land on /"
        );
    }
}

#[tokio::test]
async fn token_for_another_authorized_party_is_refused() {
    let (world, page) = login_with_tampered_token(|_, claims| {
        claims.insert("azp".into(), json!("another-client"));
    })
    .await;
    assert_refused(&page, &world, "id token was refused").await;
}
