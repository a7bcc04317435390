//! Session lifetime, idle expiry, sign-out and fixation.

use crate::support;

use std::time::Duration;

use crate::support::{PASSWORD, SESSION_COOKIE, World, WorldOptions};
use http::StatusCode;

#[tokio::test]
async fn idle_sessions_expire() {
    let world = World::start_with(WorldOptions {
        extra_toml: "idle_timeout = \"1500ms\"\n".into(),
        ..Default::default()
    })
    .await;
    let mut browser = world.signed_in("alice").await;
    assert_eq!(browser.navigate("/").await.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(browser.navigate("/").await.is_sent_to_sign_in());
}

#[tokio::test]
async fn sessions_end_at_their_lifetime_even_when_active() {
    let world = World::start_with(WorldOptions {
        extra_toml: "lifetime = \"3s\"\n".into(),
        ..Default::default()
    })
    .await;
    let mut browser = world.signed_in("alice").await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            browser.navigate("/").await.status,
            StatusCode::OK,
            "active and within lifetime"
        );
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        browser.navigate("/").await.is_sent_to_sign_in(),
        "past the 3s lifetime"
    );
}

#[tokio::test]
async fn session_cookie_has_safe_attributes() {
    let world = World::start().await;
    let mut browser = world.browser();
    let callback = browser.login_until_callback("/", "alice", PASSWORD).await;
    let back = browser.navigate(&callback).await;
    let cookie = back
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with(&format!("{SESSION_COOKIE}=")))
        .expect("session cookie");
    for attribute in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/"] {
        assert!(
            cookie.contains(attribute),
            "{attribute} missing in {cookie}"
        );
    }
    let value = cookie
        .split(';')
        .next()
        .unwrap()
        .trim_start_matches(&format!("{SESSION_COOKIE}="));
    assert!(value.len() > 43, "the id is sealed, not bare: {value}");
}

#[tokio::test]
async fn sign_out_ends_the_session_and_goes_to_the_provider() {
    let world = World::start().await;
    let mut browser = world.signed_in("alice").await;
    let old_cookies = browser.cookies.clone();
    let out = browser.navigate("/oauth2/sign_out").await;
    assert_eq!(out.status, StatusCode::FOUND);
    let end_session = url::Url::parse(out.location().unwrap()).unwrap();
    assert_eq!(
        end_session.as_str().split('?').next().unwrap(),
        format!("{}/session/end", world.provider.issuer())
    );
    let params: Vec<(String, String)> = end_session.query_pairs().into_owned().collect();
    let get = |n: &str| params.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    // The ID token is not kept (memory per session), so the client names itself.
    assert_eq!(get("client_id").as_deref(), Some(support::CLIENT_ID));
    assert_eq!(get("id_token_hint"), None);
    assert_eq!(
        get("post_logout_redirect_uri"),
        Some(format!("{}/oauth2/sign_in", world.base))
    );
    assert!(
        !browser.cookies.contains_key(SESSION_COOKIE),
        "cookie cleared"
    );

    // The provider sends the browser back to the sign-in page.
    let back = browser.follow(end_session.as_str()).await;
    assert_eq!(back.status, StatusCode::OK);
    assert!(back.body.contains("Log in with"), "{}", back.body);

    // The old cookie is worthless: the session is gone server-side.
    let mut replay = world.browser();
    replay.cookies = old_cookies;
    assert!(replay.navigate("/").await.is_sent_to_sign_in());
}

#[tokio::test]
async fn login_issues_a_fresh_session_id_and_ends_the_old_one() {
    let world = World::start().await;
    let mut browser = world.signed_in("alice").await;
    let first = browser.cookies[SESSION_COOKIE].clone();
    let landed = browser.login("/", "alice", PASSWORD).await;
    assert_eq!(landed.status, StatusCode::OK);
    let second = browser.cookies[SESSION_COOKIE].clone();
    assert_ne!(first, second);
    let mut old = world.browser();
    old.cookies.insert(SESSION_COOKIE.into(), first);
    assert!(
        old.navigate("/").await.is_sign_in_redirect(),
        "the pre-login session id is dead"
    );
}

#[tokio::test]
async fn userinfo_shows_the_signed_in_identity() {
    let world = World::start().await;
    let mut browser = world.signed_in("alice").await;
    let info = browser.navigate("/oauth2/userinfo").await;
    let json: serde_json::Value = serde_json::from_str(&info.body).unwrap();
    assert_eq!(json["sub"], "sub-alice");
    assert_eq!(json["email"], "alice@corp.example");
    assert_eq!(json["preferred_username"], "alice");
    let anonymous = world.browser().navigate("/oauth2/userinfo").await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn garbage_session_cookies_are_treated_as_signed_out() {
    let world = World::start().await;
    let huge = "A".repeat(3000);
    for value in ["", "%%%", "not-base64!", huge.as_str()] {
        let mut browser = world.browser();
        browser.cookies.insert(SESSION_COOKIE.into(), value.into());
        assert!(
            browser.navigate("/").await.is_sign_in_redirect(),
            "{value:.20}"
        );
    }
    assert_eq!(
        world.browser().navigate("/ping").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn access_rules_refuse_outsiders_with_a_page_naming_the_rule() {
    let world = World::start_with(WorldOptions {
        extra_toml: "[access]\nallowed_email_domains = [\"corp.example\"]\n".into(),
        users: vec![
            support::user("alice", "alice@corp.example", true, &[]),
            support::user(
                "mallory",
                "mallory@evil.example@corp.example.evil",
                true,
                &[],
            ),
        ],
        ..Default::default()
    })
    .await;
    world.signed_in("alice").await;
    let before = world.upstream.requests().len();
    let mallory = world.signed_in_without_landing("mallory").await;
    let mut mallory = mallory;
    let page = mallory.navigate("/").await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert!(page.body.contains("allowed_email_domains"), "{}", page.body);
    assert!(page.body.contains("/oauth2/sign_out"));
    assert_eq!(
        world.upstream.requests().len(),
        before,
        "nothing of mallory's reached the upstream"
    );
}
