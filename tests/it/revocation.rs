//! Revocation that holds all day (issue 18): a person ended or demoted at the provider
//! stops passing the gateway within the bound `config/SENTRY.md` states for each
//! configuration ("How long a revocation takes"), however long after login it happens.
//! Lifetimes are shortened to seconds; each test waits past every lifetime involved
//! before the provider acts.
//!
//! The in-process provider behaves like oidc-provider (Encvoy ID's engine) where it
//! matters here: `offline_access` without `prompt=consent` is dropped, "End Sessions"
//! revokes every token of the person, and a changed claim shows in refreshed tokens and
//! userinfo. `tests/e2e/` runs the same paths against oidc-provider itself.

use std::time::Duration;

use crate::support::browser::{Browser, TestResponse, empty};
use crate::support::{PASSWORD, World, WorldOptions};
use http::{Method, StatusCode};
use serde_json::json;

const OFFLINE_SCOPES: &str = "scopes = [\"openid\", \"email\", \"profile\", \"offline_access\"]";

/// A gateway in front of a provider whose access tokens live `access_token_ttl`;
/// `session_toml` goes into `[session]`, `oidc_toml` into `[oidc]`.
async fn world(access_token_ttl: Duration, oidc_toml: &str, session_toml: &str) -> World {
    World::start_with(WorldOptions {
        extra_toml: session_toml.into(),
        oidc_toml: oidc_toml.into(),
        access_token_ttl,
        ..Default::default()
    })
    .await
}

/// Like [`world`], with `[access]` requiring the `sentry:member` permission.
async fn world_requiring_member(
    access_token_ttl: Duration,
    oidc_toml: &str,
    session_toml: &str,
) -> World {
    let session_and_access = format!(
        "{session_toml}\n[access]\ngroups_claim = \"permissions\"\nrequired_groups = [\"sentry:member\"]\n"
    );
    world(access_token_ttl, oidc_toml, &session_and_access).await
}

async fn api_call(browser: &mut Browser) -> TestResponse {
    let request = browser
        .request(Method::GET, "/api/0/organizations/")
        .header("accept", "application/json; charset=utf-8")
        .body(empty())
        .unwrap();
    browser.send(request).await
}

/// Browses once a second for `duration`, asserting every page still loads.
async fn browse_for(browser: &mut Browser, duration: Duration) {
    let until = tokio::time::Instant::now() + duration;
    while tokio::time::Instant::now() < until {
        let page = browser.navigate("/issues/").await;
        assert_eq!(page.status, StatusCode::OK, "still signed in: {page:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Where a page load without a usable session is sent.
#[derive(Clone, Copy, Debug)]
enum SentTo {
    /// The sign-in page: the provider ended the session (with
    /// `oidc.skip_sign_in_page = false`; by default, a browser that signed in here
    /// before goes to the provider, whose session ended too, and its login page).
    SignInPage,
    /// Straight to the provider (`/oauth2/start`), no click: the session could no
    /// longer be confirmed, or it ended and this browser signed in here before.
    Provider,
}

/// The person no longer passes: page loads go to `sent_to`, API calls get 401, and
/// nothing reaches the upstream.
async fn assert_refused(browser: &mut Browser, world: &World, sent_to: SentTo, when: &str) {
    let seen = world.upstream.requests().len();
    let page = browser.navigate("/issues/").await;
    let entry = match sent_to {
        SentTo::SignInPage => "/oauth2/sign_in?rd=",
        SentTo::Provider => "/oauth2/start?rd=",
    };
    assert!(
        page.status == StatusCode::FOUND && page.location().is_some_and(|l| l.starts_with(entry)),
        "{when}: a page load must go to {sent_to:?}, got {page:?}"
    );
    assert_eq!(
        api_call(browser).await.status,
        StatusCode::UNAUTHORIZED,
        "{when}: API call"
    );
    assert_eq!(
        world.upstream.requests().len(),
        seen,
        "{when}: upstream reached"
    );
}

#[tokio::test]
async fn offline_access_asks_for_consent_so_refresh_tokens_arrive() {
    let world = world(Duration::from_secs(2), OFFLINE_SCOPES, "").await;
    let mut browser = world.browser();
    let start = browser.navigate("/oauth2/start?rd=/").await;
    let authorize = url::Url::parse(start.location().unwrap()).unwrap();
    let prompt = authorize.query_pairs().find(|(k, _)| k == "prompt");
    assert_eq!(
        prompt.map(|(_, v)| v.into_owned()).as_deref(),
        Some("consent")
    );

    let mut browser = world.signed_in("alice").await;
    browse_for(&mut browser, Duration::from_secs(5)).await;
    assert!(
        world.provider.refresh_count() >= 2,
        "the refresh token arrived and was used past the access token's lifetime ({} refreshes)",
        world.provider.refresh_count()
    );
}

#[tokio::test]
async fn without_offline_access_no_consent_is_asked() {
    let world = world(Duration::from_secs(60), "", "").await;
    let start = world.browser().navigate("/oauth2/start?rd=/").await;
    assert!(!start.location().unwrap().contains("prompt="), "{start:?}");
}

/// Refresh tokens and `revalidate_every`: ended long after login (several refreshes
/// later), refused within `revalidate_every`.
#[tokio::test]
async fn refresh_tokens_and_revalidation_end_sessions_within_the_interval_all_day() {
    let world = world(
        Duration::from_secs(2),
        OFFLINE_SCOPES,
        "revalidate_every = \"1s\"",
    )
    .await;
    let mut browser = world.signed_in("alice").await;
    browse_for(&mut browser, Duration::from_secs(5)).await;
    assert!(world.provider.end_sessions("alice") > 0);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_refused(
        &mut browser,
        &world,
        SentTo::Provider,
        "1 s after End Sessions",
    )
    .await;
}

/// Refresh tokens, no revalidation: refused by the next refresh, so within the access
/// token's lifetime.
#[tokio::test]
async fn refresh_tokens_alone_end_sessions_within_the_token_lifetime() {
    let oidc_toml = format!("{OFFLINE_SCOPES}\nskip_sign_in_page = false");
    let world = world(Duration::from_secs(2), &oidc_toml, "").await;
    let mut browser = world.signed_in("alice").await;
    browse_for(&mut browser, Duration::from_secs(5)).await;
    assert!(world.provider.end_sessions("alice") > 0);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_refused(
        &mut browser,
        &world,
        SentTo::SignInPage,
        "one token lifetime after End Sessions",
    )
    .await;
}

/// No refresh token, revalidation on: ended after the access token expired (when
/// userinfo can no longer be asked), the person does not pass: the session could no
/// longer be confirmed, so it ended with its access token.
#[tokio::test]
async fn without_refresh_tokens_an_end_after_the_token_expired_is_not_missed() {
    let world = world(Duration::from_secs(2), "", "revalidate_every = \"1s\"").await;
    let mut browser = world.signed_in("alice").await;
    browse_for(&mut browser, Duration::from_millis(1500)).await;
    tokio::time::sleep(Duration::from_millis(1000)).await; // the access token expired
    world.provider.end_sessions("alice");
    assert_refused(
        &mut browser,
        &world,
        SentTo::Provider,
        "after End Sessions, past the token's expiry",
    )
    .await;
    // Through the provider, whose session ended: it asks for the password.
    let start = browser.navigate("/issues/").await;
    let authorize = browser.navigate(start.location().unwrap()).await;
    let form = browser.navigate(authorize.location().unwrap()).await;
    assert!(form.body.contains("password"), "{form:?}");
}

/// No refresh token, no revalidation: the session lasts as long as the access token,
/// then the next page load signs in again and returns to the deep link.
#[tokio::test]
async fn without_refresh_tokens_sessions_sign_in_again_when_the_token_expires() {
    let world = world(Duration::from_secs(2), "", "").await;
    let mut browser = world.signed_in("alice").await;
    let deep_link = "/organizations/acme/issues/?query=is%3Aunresolved&project=1";
    assert_eq!(browser.navigate(deep_link).await.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let page = browser.navigate(deep_link).await;
    assert!(
        page.location().unwrap().starts_with("/oauth2/start?rd="),
        "{page:?}"
    );
    assert_eq!(
        api_call(&mut browser).await.status,
        StatusCode::UNAUTHORIZED
    );
    let sign_in = url::Url::parse(&format!("https://gateway{}", page.location().unwrap())).unwrap();
    let rd = sign_in.query_pairs().find(|(k, _)| k == "rd").unwrap().1;
    assert_eq!(rd, deep_link, "the deep link is kept");
    let landed = browser.login(&rd, "alice", PASSWORD).await;
    assert_eq!(landed.status, StatusCode::OK);
    assert_eq!(world.upstream.last().path_and_query, deep_link);
}

#[tokio::test]
async fn the_grace_after_expiry_is_a_setting() {
    let world = world(Duration::from_secs(1), "", "expired_token_grace = \"3s\"").await;
    let mut browser = world.signed_in("alice").await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(
        browser.navigate("/issues/").await.status,
        StatusCode::OK,
        "within the grace"
    );
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_refused(
        &mut browser,
        &world,
        SentTo::Provider,
        "past the token's expiry and the grace",
    )
    .await;
}

/// A provider that cannot be reached does not end sessions at once, but no session
/// outlives its access token (and the grace) unconfirmed.
#[tokio::test]
async fn an_unreachable_provider_cannot_keep_a_session_past_its_token() {
    let world = world(Duration::from_secs(2), OFFLINE_SCOPES, "").await;
    let mut browser = world.signed_in("alice").await;
    world.provider.set_token_endpoint_outage(true);
    tokio::time::sleep(Duration::from_millis(1200)).await; // refresh due, fails
    assert_eq!(browser.navigate("/issues/").await.status, StatusCode::OK);
    assert_eq!(world.provider.refresh_count(), 1);
    tokio::time::sleep(Duration::from_millis(1000)).await; // the token expired
    assert_refused(
        &mut browser,
        &world,
        SentTo::Provider,
        "unconfirmed past the token's expiry",
    )
    .await;
}

/// A permission removed at the provider: refused (403) from the first refresh on.
#[tokio::test]
async fn a_permission_removed_at_the_provider_refuses_after_the_next_refresh() {
    let world = world_requiring_member(Duration::from_secs(2), OFFLINE_SCOPES, "").await;
    let mut browser = world.signed_in("alice").await;
    browse_for(&mut browser, Duration::from_secs(3)).await;
    world
        .provider
        .set_user_claim("alice", "permissions", json!(["sentry:viewer"]));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let page = browser.navigate("/issues/").await;
    assert_eq!(page.status, StatusCode::FORBIDDEN, "{page:?}");
    assert_eq!(api_call(&mut browser).await.status, StatusCode::FORBIDDEN);
    // Given back: admitted again at the next confirmation, without signing in.
    world
        .provider
        .set_user_claim("alice", "permissions", json!(["sentry:member"]));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(browser.navigate("/issues/").await.status, StatusCode::OK);
}

/// Without refresh tokens, userinfo revalidation reads the permissions too.
#[tokio::test]
async fn a_permission_removed_at_the_provider_refuses_after_the_next_revalidation() {
    let world =
        world_requiring_member(Duration::from_secs(60), "", "revalidate_every = \"1s\"").await;
    let mut browser = world.signed_in("alice").await;
    world
        .provider
        .set_user_claim("alice", "permissions", json!([]));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let page = browser.navigate("/issues/").await;
    assert_eq!(page.status, StatusCode::FORBIDDEN, "{page:?}");
    let headers_seen = world.upstream.requests().len();
    assert_eq!(api_call(&mut browser).await.status, StatusCode::FORBIDDEN);
    assert_eq!(
        world.upstream.requests().len(),
        headers_seen,
        "nothing reaches the upstream"
    );
}

/// The identity headers follow the provider too (here the email).
#[tokio::test]
async fn identity_headers_follow_the_provider_after_a_refresh() {
    let world = world(Duration::from_secs(2), OFFLINE_SCOPES, "").await;
    let mut browser = world.signed_in("alice").await;
    world
        .provider
        .set_user_claim("alice", "email", json!("alice.new@corp.example"));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(browser.navigate("/issues/").await.status, StatusCode::OK);
    let seen = world.upstream.last();
    let email = seen.headers.get("x-forwarded-email").unwrap();
    assert_eq!(email, "alice.new@corp.example");
}
