//! `oidc.skip_sign_in_page`: the sign-in page on a first visit; straight to the
//! provider, with no click, for a browser that signed in here before (the default
//! `"returning"`), until it signs out or a login fails; and `false` / `true`.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::support::{PASSWORD, SESSION_COOKIE, World, WorldOptions};
use http::{Method, StatusCode};

use crate::support::browser::{Browser, TestResponse, empty};

const DEEP_LINK: &str = "/organizations/acme/issues/?query=is%3Aunresolved";

/// The marker cookie's name: the session cookie's, with `_returning`.
fn marker() -> String {
    format!("{SESSION_COOKIE}_returning")
}

fn encoded(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

async fn world_skipping(value: &str) -> World {
    World::start_with(WorldOptions {
        oidc_toml: format!("skip_sign_in_page = {value}"),
        ..Default::default()
    })
    .await
}

/// Makes the browser's marker say its login was a minute ago (a lost session is taken
/// for a returning person's only after a pause).
fn age_marker(browser: &mut Browser) {
    let a_minute_ago = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 60;
    browser.cookies.insert(marker(), a_minute_ago.to_string());
}

/// A browser that signed in as alice a minute ago and whose session then ended.
async fn returning_without_session(world: &World) -> Browser {
    let mut browser = world.signed_in("alice").await;
    age_marker(&mut browser);
    browser.cookies.remove(SESSION_COOKIE);
    browser
}

/// The `Set-Cookie` of `name` in `response`.
fn set_cookie(response: &TestResponse, name: &str) -> Option<String> {
    response
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with(&format!("{name}=")))
}

fn is_removal(set_cookie: &str) -> bool {
    set_cookie.contains("Max-Age=0")
}

/// A request as `fetch()` makes it from a page (not a navigation).
async fn fetch(browser: &mut Browser, path: &str) -> TestResponse {
    let request = browser
        .request(Method::GET, path)
        .header("accept", "application/json")
        .header("sec-fetch-mode", "cors")
        .body(empty())
        .unwrap();
    browser.send(request).await
}

/// `state` of the provider's authorization URL.
fn state_of(authorize: &str) -> String {
    url::Url::parse(authorize)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .expect("a state")
        .1
        .into_owned()
}

#[tokio::test]
async fn a_first_visit_shows_the_page_and_a_login_marks_the_browser() {
    let world = World::start().await;
    let mut browser = world.browser();
    let first = browser.navigate(DEEP_LINK).await;
    assert!(first.is_sign_in_redirect(), "{first:?}");
    let page = browser.navigate(first.location().unwrap()).await;
    assert!(page.body.contains("Log in with Encvoy ID"), "{}", page.body);

    let callback = browser.login_until_callback("/", "alice", PASSWORD).await;
    let back = browser.navigate(&callback).await;
    assert_eq!(back.status, StatusCode::FOUND, "{back:?}");
    let marker = set_cookie(&back, &marker()).expect("the login sets the marker");
    for attribute in [
        "HttpOnly",
        "Secure",
        "SameSite=Lax",
        "Path=/",
        "Max-Age=34560000",
    ] {
        assert!(
            marker.contains(attribute),
            "{attribute} missing in {marker}"
        );
    }
    let value = marker.split(';').next().unwrap().split_once('=').unwrap().1;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let signed_in_at: u64 = value.parse().expect("the login's time, no secret");
    assert!(now.abs_diff(signed_in_at) <= 5, "{signed_in_at} vs {now}");

    // The gateway's cookie: never forwarded upstream.
    assert_eq!(browser.navigate("/").await.status, StatusCode::OK);
    let seen = world.upstream.last();
    let cookie = seen
        .headers
        .get("cookie")
        .map_or("", |value| value.to_str().unwrap());
    assert!(!cookie.contains("_returning"), "{cookie}");
}

#[tokio::test]
async fn a_returning_navigation_goes_to_the_provider_with_a_fresh_state_and_lands_on_its_deep_link()
{
    let world = World::start().await;
    let mut browser = world.browser();
    let first_start = browser.navigate("/oauth2/start?rd=%2F").await;
    let first_state = state_of(first_start.location().unwrap());
    let callback = browser
        .sign_in_at_provider(first_start.location().unwrap(), "alice", PASSWORD)
        .await;
    browser.follow(&callback).await;
    age_marker(&mut browser);
    // The session ends (as a garbled cookie or a restarted memory store ends it).
    browser
        .cookies
        .insert(SESSION_COOKIE.into(), "garbled".into());

    // A fetch still gets its 401 (Sentry's UI then reloads the page)...
    let api = fetch(&mut browser, "/api/0/organizations/").await;
    assert_eq!(api.status, StatusCode::UNAUTHORIZED, "{api:?}");

    // ...and the reload, a navigation, skips the page.
    let reload = browser.navigate(DEEP_LINK).await;
    assert_eq!(reload.status, StatusCode::FOUND);
    assert_eq!(
        reload.location(),
        Some(format!("/oauth2/start?rd={}", encoded(DEEP_LINK)).as_str())
    );
    let start = browser.navigate(reload.location().unwrap()).await;
    let authorize = start.location().unwrap().to_owned();
    assert!(
        authorize.starts_with(&format!("{}/authorize?", world.provider.issuer())),
        "{authorize}"
    );
    let state = state_of(&authorize);
    assert_ne!(state, first_state, "a fresh login, a fresh state");
    let callback = browser
        .sign_in_at_provider(&authorize, "alice", PASSWORD)
        .await;
    let landed = browser.follow(&callback).await;
    assert_eq!(landed.status, StatusCode::OK, "{landed:?}");
    assert_eq!(landed.url, format!("{}{DEEP_LINK}", world.base));

    // The sign-in page itself sends a returning browser on too.
    browser.cookies.remove(SESSION_COOKIE);
    age_marker(&mut browser);
    let page = browser.navigate("/oauth2/sign_in?rd=%2Fsettings%2F").await;
    assert_eq!(page.status, StatusCode::FOUND);
    let settings = format!("{}/settings/", world.base);
    assert_eq!(
        page.location(),
        Some(format!("/oauth2/start?rd={}", encoded(&settings)).as_str())
    );
}

#[tokio::test]
async fn forward_auth_sends_a_returning_navigation_to_the_start() {
    let world = World::start().await;
    let mut browser = returning_without_session(&world).await;
    let request = browser
        .request(Method::GET, "/oauth2/auth")
        .header("x-original-uri", "/organizations/acme/")
        .header("x-original-method", "GET")
        .header("sec-fetch-mode", "navigate")
        .header("accept", "text/html")
        .body(empty())
        .unwrap();
    let answer = browser.send(request).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        answer.headers["x-ssogate-sign-in"],
        "/oauth2/start?rd=%2Forganizations%2Facme%2F"
    );
}

#[tokio::test]
async fn a_session_lost_right_after_its_login_shows_the_page_rather_than_loop() {
    let world = World::start().await;
    let mut browser = world.signed_in("alice").await;
    assert!(browser.cookies.contains_key(&marker()));
    browser.cookies.remove(SESSION_COOKIE);
    let again = browser.navigate(DEEP_LINK).await;
    assert!(again.is_sign_in_redirect(), "{again:?}");
}

#[tokio::test]
async fn signing_out_removes_the_marker_and_the_page_shows_again() {
    let world = World::start().await;
    let mut browser = world.signed_in("alice").await;
    age_marker(&mut browser);
    let out = browser.navigate("/oauth2/sign_out").await;
    assert_eq!(out.status, StatusCode::FOUND);
    let removal = set_cookie(&out, &marker()).expect("sign-out removes the marker");
    assert!(is_removal(&removal), "{removal}");
    assert!(removal.contains("Path=/"), "{removal}");
    assert!(!browser.cookies.contains_key(&marker()));
    let next = browser.navigate(DEEP_LINK).await;
    assert!(next.is_sign_in_redirect(), "{next:?}");
}

#[tokio::test]
async fn a_failed_login_removes_the_marker_so_the_browser_is_not_sent_round_again() {
    let world = World::start().await;
    let mut browser = returning_without_session(&world).await;
    let to_start = browser.navigate(DEEP_LINK).await;
    let start = browser.navigate(to_start.location().unwrap()).await;
    let state = state_of(start.location().unwrap());
    // The provider would not sign the person in without asking.
    let issuer = encoded(&world.provider.issuer());
    let refused = browser
        .navigate(&format!(
            "/oauth2/callback?error=login_required&state={state}&iss={issuer}"
        ))
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{refused:?}");
    let removal = set_cookie(&refused, &marker()).expect("a failed login removes the marker");
    assert!(is_removal(&removal), "{removal}");
    let next = browser.navigate(DEEP_LINK).await;
    assert!(
        next.is_sign_in_redirect(),
        "the page, not the provider: {next:?}"
    );
}

#[tokio::test]
async fn skip_sign_in_page_false_always_shows_the_page() {
    let world = world_skipping("false").await;
    let mut browser = world.browser();
    let callback = browser.login_until_callback("/", "alice", PASSWORD).await;
    let back = browser.navigate(&callback).await;
    assert_eq!(set_cookie(&back, &marker()), None, "no marker to set");
    // Even a browser that carries one (left from the default) sees the page.
    browser.cookies.insert(marker(), "1".into());
    browser.cookies.remove(SESSION_COOKIE);
    let next = browser.navigate(DEEP_LINK).await;
    assert!(next.is_sign_in_redirect(), "{next:?}");
    let page = browser.navigate(next.location().unwrap()).await;
    assert!(page.body.contains("Log in with Encvoy ID"), "{}", page.body);
}

#[tokio::test]
async fn skip_sign_in_page_true_never_shows_the_page() {
    let world = world_skipping("true").await;
    let mut browser = world.browser();
    let first = browser.navigate(DEEP_LINK).await;
    assert_eq!(
        first.location(),
        Some(format!("/oauth2/start?rd={}", encoded(DEEP_LINK)).as_str())
    );
    let page = browser.navigate("/oauth2/sign_in?rd=%2F").await;
    assert_eq!(page.status, StatusCode::FOUND);
    let root = format!("{}/", world.base);
    assert_eq!(
        page.location(),
        Some(format!("/oauth2/start?rd={}", encoded(&root)).as_str())
    );
    // Fetches still get their 401.
    let api = fetch(&mut browser, "/api/0/organizations/").await;
    assert_eq!(api.status, StatusCode::UNAUTHORIZED);
}
