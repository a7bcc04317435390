//! Staying up under hostile clients (issue 20, class 1): what one client can make the
//! gateway hold is bounded, and a browser cannot wreck its own next login.

mod support;

use http::StatusCode;
use support::{PASSWORD, World};

/// 700 sign-in starts in one browser (tabs left open, a script, a stranger's page
/// linking to `/oauth2/start`) leave at most seven login cookies, so the login that
/// follows still fits in a request and works; the oldest logins give way.
#[tokio::test]
async fn login_starts_never_pile_up_cookies_that_break_the_next_login() {
    let world = World::start().await;
    let mut browser = world.browser();
    let long_target = format!("/organizations/acme/issues/?q={}", "x".repeat(1500));
    let start = format!(
        "/oauth2/start?rd={}",
        form_urlencoded::byte_serialize(long_target.as_bytes()).collect::<String>()
    );
    let mut first_authorize = None;
    for _ in 0..700 {
        let started = browser.navigate(&start).await;
        assert_eq!(started.status, StatusCode::FOUND, "{started:?}");
        first_authorize.get_or_insert_with(|| started.location().unwrap().to_owned());
        let login_cookies = browser
            .cookies
            .keys()
            .filter(|name| name.contains("_csrf_"))
            .count();
        assert!(login_cookies <= 7, "{login_cookies} login cookies");
    }
    for (name, path) in &browser.cookie_paths {
        if name.contains("_csrf_") {
            assert_eq!(
                path, "/oauth2/",
                "{name} is scoped to the gateway's own paths"
            );
        }
    }
    // The latest start finishes.
    let landed = browser.login(&long_target, "alice", PASSWORD).await;
    assert_eq!(landed.status, StatusCode::OK, "{landed:?}");
    assert_eq!(world.upstream.last().path_and_query, long_target);
    // The first one gave way long ago: its callback is refused, as a stale login.
    let callback = browser
        .sign_in_at_provider(first_authorize.as_deref().unwrap(), "alice", PASSWORD)
        .await;
    let stale = browser.navigate(&callback).await;
    assert_eq!(stale.status, StatusCode::BAD_REQUEST, "{stale:?}");
}
