//! Sessions stay in step with the provider: refresh (single flight, refusal ends the
//! session, an unreachable provider does not), revalidation, back-channel logout.

use crate::support;

use std::time::Duration;

use crate::support::browser::empty;
use crate::support::{World, WorldOptions};
use http::{Method, StatusCode};
use serde_json::{Map, Value, json};

/// A world whose provider issues refresh tokens (the `offline_access` scope) and
/// short-lived access tokens, so every request after the first second refreshes.
async fn refreshing_world(extra_session_toml: &str) -> World {
    World::start_with(WorldOptions {
        extra_toml: extra_session_toml.into(),
        oidc_toml: "scopes = [\"openid\", \"email\", \"profile\", \"offline_access\"]".into(),
        access_token_ttl: Duration::from_secs(1),
        ..Default::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_requests_cause_one_refresh() {
    let world = refreshing_world("").await;
    let browser = world.signed_in("alice").await;
    assert_eq!(world.provider.refresh_count(), 0);
    tokio::time::sleep(Duration::from_millis(1200)).await; // the access token expired
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..50 {
        let mut tab = world.browser();
        tab.cookies = browser.cookies.clone();
        requests.spawn(async move { tab.navigate(&format!("/page/{i}")).await.status });
    }
    while let Some(status) = requests.join_next().await {
        assert_eq!(status.unwrap(), StatusCode::OK);
    }
    assert_eq!(
        world.provider.refresh_count(),
        1,
        "one refresh for fifty requests"
    );
}

#[tokio::test]
async fn rotated_refresh_tokens_are_never_reused() {
    let world = refreshing_world("").await;
    let mut browser = world.signed_in("alice").await;
    for round in 1..=3 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(
            browser.navigate("/").await.status,
            StatusCode::OK,
            "round {round}"
        );
        assert_eq!(world.provider.refresh_count(), round);
    }
    // The provider refuses a reused refresh token; the session surviving three
    // rotations shows the gateway always sent the newest one.
    let refreshes: Vec<String> = world
        .provider
        .token_requests()
        .iter()
        .filter(|f| {
            f.iter()
                .any(|(k, v)| k == "grant_type" && v == "refresh_token")
        })
        .filter_map(|f| {
            f.iter()
                .find(|(k, _)| k == "refresh_token")
                .map(|(_, v)| v.clone())
        })
        .collect();
    assert_eq!(refreshes.len(), 3);
    assert!(refreshes[0] != refreshes[1] && refreshes[1] != refreshes[2]);
}

#[tokio::test]
async fn a_refused_refresh_ends_the_session() {
    let world = refreshing_world("").await;
    let mut browser = world.signed_in("alice").await;
    assert!(world.provider.end_sessions("alice") > 0);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(
        browser.navigate("/").await.is_sent_to_sign_in(),
        "navigation: sign in again"
    );
    let request = browser
        .request(Method::GET, "/api/0/organizations/")
        .header("accept", "application/json; charset=utf-8")
        .body(empty())
        .unwrap();
    assert_eq!(
        browser.send(request).await.status,
        StatusCode::UNAUTHORIZED,
        "API: 401"
    );
}

#[tokio::test]
async fn an_unreachable_provider_does_not_end_the_session() {
    // Within `expired_token_grace`: past it, see tests/it/revocation.rs.
    let world = refreshing_world("expired_token_grace = \"1m\"").await;
    let mut browser = world.signed_in("alice").await;
    world.provider.set_token_endpoint_outage(true);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..3 {
        assert_eq!(
            browser.navigate("/").await.status,
            StatusCode::OK,
            "the session goes on"
        );
    }
    assert_eq!(
        world.provider.refresh_count(),
        1,
        "one failed attempt, then back-off"
    );
    world.provider.set_token_endpoint_outage(false);
    tokio::time::sleep(Duration::from_millis(2100)).await; // past the first back-off
    assert_eq!(browser.navigate("/").await.status, StatusCode::OK);
    assert_eq!(
        world.provider.refresh_count(),
        2,
        "retried once the back-off passed"
    );
}

#[tokio::test]
async fn revalidation_notices_sessions_ended_at_the_provider() {
    let world = World::start_with(WorldOptions {
        extra_toml: "revalidate_every = \"1s\"\n".into(),
        ..Default::default()
    })
    .await;
    let mut browser = world.signed_in("alice").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        browser.navigate("/").await.status,
        StatusCode::OK,
        "still valid at the provider"
    );
    world.provider.end_sessions("alice");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let forward_auth = browser.navigate("/oauth2/auth").await;
    assert_eq!(
        forward_auth.status,
        StatusCode::UNAUTHORIZED,
        "forward-auth revalidates too"
    );
    assert!(
        browser.navigate("/").await.is_sent_to_sign_in(),
        "revoked at the provider"
    );
}

#[tokio::test]
async fn backchannel_logout_ends_the_sessions_of_that_provider_session() {
    let world = World::start().await;
    let mut alice = world.signed_in("alice").await;
    let mut other_tab = world.signed_in("alice").await;
    let sid = world
        .provider
        .sid_of_last_login("alice")
        .expect("the provider has a sid");
    let mut provider = world.browser();
    let answer = provider
        .post_logout_token(&world.provider.logout_token(Some("sub-alice"), Some(&sid)))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert!(
        other_tab.navigate("/").await.is_sent_to_sign_in(),
        "the session of that sid ended"
    );
    assert_eq!(
        alice.navigate("/").await.status,
        StatusCode::OK,
        "another provider session of alice goes on"
    );

    let by_sub = world.provider.logout_token(Some("sub-alice"), None);
    assert_eq!(
        provider.post_logout_token(&by_sub).await.status,
        StatusCode::OK
    );
    assert!(
        alice.navigate("/").await.is_sent_to_sign_in(),
        "a sub-only token ends all of alice's sessions"
    );
}

fn logout_claims(world: &World) -> Map<String, Value> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    json!({
        "iss": world.provider.issuer(),
        "aud": support::CLIENT_ID,
        "iat": now,
        "exp": now + 120,
        "jti": format!("jti-{}", rand_suffix()),
        "sub": "sub-alice",
        "events": {"http://schemas.openid.net/event/backchannel-logout": {}},
    })
    .as_object()
    .unwrap()
    .clone()
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[tokio::test]
async fn invalid_logout_tokens_are_refused_and_end_nothing() {
    let world = World::start().await;
    let mut alice = world.signed_in("alice").await;
    let mut provider = world.browser();
    let sign = |claims: Map<String, Value>| world.provider.sign_claims(Map::new(), claims);

    let valid = sign(logout_claims(&world));
    let mut bad_signature = valid.clone();
    bad_signature.truncate(valid.len() - 4);
    bad_signature.push_str("AAAA");
    let with_nonce = {
        let mut c = logout_claims(&world);
        c.insert("nonce".into(), json!("n"));
        sign(c)
    };
    let wrong_aud = {
        let mut c = logout_claims(&world);
        c.insert("aud".into(), json!("another-client"));
        sign(c)
    };
    let no_events = {
        let mut c = logout_claims(&world);
        c.remove("events");
        sign(c)
    };
    let unsigned = {
        let mut header = Map::new();
        header.insert("alg".into(), json!("none"));
        world.provider.sign_claims(header, logout_claims(&world))
    };
    for (name, token) in [
        ("bad signature", bad_signature),
        ("with nonce", with_nonce),
        ("wrong aud", wrong_aud),
        ("missing events", no_events),
        ("alg none", unsigned),
        ("garbage", "not.a.jwt".to_string()),
    ] {
        let answer = provider.post_logout_token(&token).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{name}: {answer:?}");
        assert!(
            answer.body.contains("invalid_request"),
            "{name}: {}",
            answer.body
        );
        assert_eq!(
            alice.navigate("/").await.status,
            StatusCode::OK,
            "{name} ended nothing"
        );
    }

    // A valid token works once; its replay is refused.
    let mut second_login = world.signed_in("alice").await;
    assert_eq!(
        provider.post_logout_token(&valid).await.status,
        StatusCode::OK
    );
    assert!(second_login.navigate("/").await.is_sent_to_sign_in());
    let replay = provider.post_logout_token(&valid).await;
    assert_eq!(replay.status, StatusCode::BAD_REQUEST);
    assert!(replay.body.contains("already used"), "{}", replay.body);
}
