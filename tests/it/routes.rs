//! Sentry-aware routing and the attacks peers fell for: public machine traffic, the
//! canonical path, per-route rules, forged path headers, forward-auth.

use crate::support;

use std::time::Duration;

use crate::support::browser::{empty, full};
use crate::support::{SESSION_COOKIE, World, WorldOptions, user};
use http::{Method, StatusCode};

fn sentry_world_options(extra: &str) -> WorldOptions {
    WorldOptions {
        extra_toml: format!("[access]\npreset = \"sentry\"\n{extra}"),
        ..Default::default()
    }
}

async fn sentry_world() -> World {
    World::start_with(sentry_world_options("")).await
}

/// A sign-in redirect for pages, a 401 for API paths: either way, no way through.
fn needs_a_session(response: &support::TestResponse) -> bool {
    response.is_sign_in_redirect() || response.status == StatusCode::UNAUTHORIZED
}

#[tokio::test]
async fn sdk_envelope_passes_without_a_session_and_untouched() {
    let world = sentry_world().await;
    let mut sdk = world.browser();
    sdk.cookies.insert(SESSION_COOKIE.into(), "stale".into());
    let request = sdk
        .request(
            Method::POST,
            "/api/42/envelope/?sentry_key=abc&sentry_version=7",
        )
        .header("x-sentry-auth", "Sentry sentry_key=abc, sentry_version=7")
        .header("content-type", "application/x-sentry-envelope")
        .header("x-forwarded-user", "forged")
        .body(full("{\"event_id\":\"0123\"}\n{\"type\":\"event\"}\n{}"))
        .unwrap();
    let response = sdk.send(request).await;
    assert_eq!(response.status, StatusCode::OK, "{response:?}");
    let seen = world.upstream.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(
        seen.path_and_query,
        "/api/42/envelope/?sentry_key=abc&sentry_version=7"
    );
    assert_eq!(
        seen.headers["x-sentry-auth"],
        "Sentry sentry_key=abc, sentry_version=7"
    );
    assert!(
        !seen.headers.contains_key("x-forwarded-user"),
        "no identity on public routes, forged or not"
    );
    assert!(
        !seen.headers.contains_key("cookie"),
        "the gateway cookie is not forwarded"
    );
    assert!(seen.body_len > 0);
}

#[tokio::test]
async fn token_api_passes_only_with_authorization() {
    let world = sentry_world().await;
    let mut cli = world.browser();
    let with_token = cli
        .request(Method::GET, "/api/0/organizations/")
        .header("authorization", "Bearer sntrys_token")
        .body(empty())
        .unwrap();
    assert_eq!(cli.send(with_token).await.status, StatusCode::OK);
    assert_eq!(
        world.upstream.last().headers["authorization"],
        "Bearer sntrys_token"
    );

    let without = cli
        .request(Method::GET, "/api/0/organizations/")
        .header("accept", "application/json; charset=utf-8")
        .body(empty())
        .unwrap();
    let refused = cli.send(without).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(world.upstream.requests().len(), 1);
}

#[tokio::test]
async fn public_rules_see_the_path_not_the_query_fragment_or_encoded_tricks() {
    let world = sentry_world().await;
    let mut browser = world.browser();
    for target in [
        "/private?x=/_health/",
        "/private?/_health/",
        "/_health/%2e%2e/private",
        "/_health/%2E%2E/private",
        "/_health/./../private",
        "/_static/%2e%2e/%2e%2e/private",
        "/_health/%23/../private",
        "/private%23/_health/",
        "/_static%2F..%2F..%2Fprivate",
        "/api/0/relays%2F..%2F..%2Fusers/",
        "//_health/../private",
    ] {
        let response = browser.navigate(target).await;
        assert!(
            needs_a_session(&response),
            "{target} must need a session: {response:?}"
        );
    }
    assert!(
        world.upstream.requests().is_empty(),
        "nothing reached the upstream"
    );
}

#[tokio::test]
async fn the_path_forwarded_is_the_path_that_was_matched() {
    let world = sentry_world().await;
    let mut browser = world.signed_in("alice").await;
    browser
        .navigate("/_health/%2e%2e/organizations//acme/./issues/?q=%2e%2e")
        .await;
    assert_eq!(
        world.upstream.last().path_and_query,
        "/organizations/acme/issues/?q=%2e%2e"
    );
    let mut anonymous = world.browser();
    anonymous.navigate("/_static/a/%2e%2e/app.js").await;
    assert_eq!(world.upstream.last().path_and_query, "/_static/app.js");
}

#[tokio::test]
async fn control_characters_in_the_path_get_a_400() {
    let world = sentry_world().await;
    let response = world.browser().navigate("/a%0d%0aSet-Cookie:%20x=1").await;
    assert_eq!(response.status, StatusCode::BAD_REQUEST);
    assert!(response.headers.get("set-cookie").is_none());
    assert!(world.upstream.requests().is_empty());
}

#[tokio::test]
async fn forged_path_headers_change_nothing() {
    let world = sentry_world().await;
    let mut browser = world.browser();
    for header in [
        "x-forwarded-uri",
        "x-original-url",
        "x-rewrite-url",
        "X_Original_URL",
    ] {
        let request = browser
            .request(Method::GET, "/organizations/acme/")
            .header(header, "/_health/")
            .header("sec-fetch-mode", "navigate")
            .body(empty())
            .unwrap();
        assert!(
            browser.send(request).await.is_sign_in_redirect(),
            "{header}"
        );
    }
    let mut signed_in = world.signed_in("alice").await;
    let request = signed_in
        .request(Method::GET, "/projects/")
        .header("x-original-url", "/manage/")
        .header("x-forwarded-uri", "/manage/")
        .body(empty())
        .unwrap();
    signed_in.send(request).await;
    let seen = world.upstream.last();
    assert!(
        !seen.headers.contains_key("x-original-url")
            && !seen.headers.contains_key("x-forwarded-uri")
    );
}

#[tokio::test]
async fn per_route_rules_refuse_people_outside_them() {
    let world = World::start_with(WorldOptions {
        extra_toml: r#"[access]
preset = "sentry"
groups_claim = "permissions"
[[access.rules]]
name = "admin area"
path = "^/manage/"
allowed_groups = ["sentry:admin"]
[[access.rules]]
name = "finance"
path = "^/organizations/[^/]+/stats/"
allowed_email_domains = ["finance.corp.example"]
[[access.rules]]
name = "status page"
methods = ["GET"]
path = "^/status/$"
action = "public"
"#
        .into(),
        users: vec![
            user("alice", "alice@corp.example", true, &["sentry:member"]),
            user("root", "root@finance.corp.example", true, &["sentry:admin"]),
        ],
        ..Default::default()
    })
    .await;
    let mut alice = world.signed_in("alice").await;
    let refused = alice.navigate("/manage/").await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(
        refused.body.contains("admin area") && refused.body.contains("permissions"),
        "{}",
        refused.body
    );
    let refused = alice.navigate("/organizations/acme/stats/").await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(refused.body.contains("finance"), "{}", refused.body);
    let before = world.upstream.requests().len();

    let mut root = world.signed_in("root").await;
    assert_eq!(root.navigate("/manage/").await.status, StatusCode::OK);
    assert_eq!(
        root.navigate("/organizations/acme/stats/").await.status,
        StatusCode::OK
    );
    assert_eq!(
        world.upstream.requests().len(),
        before + 3,
        "root's landing page and two pages"
    );

    let mut anonymous = world.browser();
    assert_eq!(anonymous.navigate("/status/").await.status, StatusCode::OK);
    let post = anonymous
        .request(Method::POST, "/status/")
        .body(empty())
        .unwrap();
    assert_eq!(
        anonymous.send(post).await.status,
        StatusCode::UNAUTHORIZED,
        "the rule is GET only"
    );
}

#[tokio::test]
async fn operator_rules_come_before_the_preset() {
    let world = World::start_with(sentry_world_options(
        "[[access.rules]]\nname = \"no tokens\"\npath = \"^/api/0/\"\naction = \"authenticated\"\n",
    ))
    .await;
    let mut cli = world.browser();
    let request = cli
        .request(Method::GET, "/api/0/organizations/")
        .header("authorization", "Bearer sntrys_token")
        .body(empty())
        .unwrap();
    assert_eq!(cli.send(request).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn unverified_and_malformed_emails_are_refused() {
    let world = World::start_with(WorldOptions {
        extra_toml: "[access]\nallowed_email_domains = [\"corp.example\"]\n".into(),
        users: vec![
            user("unverified", "unverified@corp.example", false, &[]),
            user("tricky", "tricky@evil.example@corp.example", true, &[]),
        ],
        ..Default::default()
    })
    .await;
    let mut unverified = world.signed_in_without_landing("unverified").await;
    let page = unverified.navigate("/").await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert!(page.body.contains("not verified"), "{}", page.body);
    let mut tricky = world.signed_in_without_landing("tricky").await;
    assert_eq!(tricky.navigate("/").await.status, StatusCode::FORBIDDEN);
    assert!(world.upstream.requests().is_empty());
}

#[tokio::test]
async fn email_list_file_changes_take_effect_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("emails.txt");
    std::fs::write(&list, "someone.else@corp.example\n").unwrap();
    let world = World::start_with(WorldOptions {
        extra_toml: format!(
            "[access]\nallowed_emails_file = {:?}\n",
            list.display().to_string()
        ),
        ..Default::default()
    })
    .await;
    let mut alice = world.signed_in_without_landing("alice").await;
    assert_eq!(alice.navigate("/").await.status, StatusCode::FORBIDDEN);
    std::fs::write(&list, "someone.else@corp.example\nalice@corp.example\n").unwrap();
    let later = std::time::SystemTime::now() + Duration::from_secs(2);
    std::fs::File::options()
        .write(true)
        .open(&list)
        .unwrap()
        .set_modified(later)
        .unwrap();
    let mut status = StatusCode::FORBIDDEN;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        status = alice.navigate("/").await.status;
        if status == StatusCode::OK {
            break;
        }
    }
    assert_eq!(
        status,
        StatusCode::OK,
        "alice is let in once the file lists her"
    );
}

#[tokio::test]
async fn claim_values_with_line_breaks_never_become_headers() {
    let mut evil = user("eve", "eve@corp.example", true, &[]);
    evil.claims.insert(
        "login".into(),
        serde_json::json!("eve\r\nX-Forwarded-User: admin"),
    );
    let world = World::start_with(WorldOptions {
        users: vec![evil],
        ..Default::default()
    })
    .await;
    let mut browser = world.signed_in("eve").await;
    assert_eq!(browser.navigate("/").await.status, StatusCode::OK);
    let seen = world.upstream.last();
    assert_eq!(seen.headers["x-forwarded-user"], "sub-eve");
    assert!(!seen.headers.contains_key("x-forwarded-preferred-username"));
}

#[tokio::test]
async fn a_trusted_proxys_client_is_the_client() {
    let world = World::start_with(WorldOptions {
        server_toml: "trusted_proxies = [\"127.0.0.0/8\"]".into(),
        ..Default::default()
    })
    .await;
    let mut browser = world.signed_in("alice").await;
    let request = browser
        .request(Method::GET, "/via-proxy")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "https")
        .body(empty())
        .unwrap();
    assert_eq!(browser.send(request).await.status, StatusCode::OK);
    // The client the proxy saw, alone: Sentry reads the first entry.
    assert_eq!(
        world.upstream.last().headers["x-forwarded-for"],
        "203.0.113.9"
    );
}

#[tokio::test]
async fn forward_auth_answers_for_nginx_auth_request() {
    let world = World::start_with(WorldOptions {
        extra_toml: "[access]\ngroups_claim = \"permissions\"\n".into(),
        ..Default::default()
    })
    .await;
    let mut anonymous = world.browser();
    assert_eq!(
        anonymous.navigate("/oauth2/auth").await.status,
        StatusCode::UNAUTHORIZED
    );
    let mut alice = world.signed_in("alice").await;
    let ok = alice.navigate("/oauth2/auth").await;
    assert_eq!(ok.status, StatusCode::ACCEPTED);
    assert_eq!(ok.headers["x-forwarded-user"], "sub-alice");
    assert_eq!(ok.headers["x-forwarded-email"], "alice@corp.example");
    let in_group = alice
        .navigate("/oauth2/auth?allowed_groups=sentry:admin,sentry:member")
        .await;
    assert_eq!(in_group.status, StatusCode::ACCEPTED);
    let not_in_group = alice
        .navigate("/oauth2/auth?allowed_groups=sentry:admin")
        .await;
    assert_eq!(not_in_group.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn no_user_agent_or_address_skips_authentication() {
    let world = sentry_world().await;
    let mut browser = world.browser();
    for (name, value) in [
        ("user-agent", "kube-probe/1.29"),
        ("user-agent", "Googlebot/2.1"),
        ("user-agent", "sentry-cli/3.8.0"),
        ("x-forwarded-for", "127.0.0.1"),
        ("x-real-ip", "10.0.0.1"),
        ("forwarded", "for=127.0.0.1"),
    ] {
        let request = browser
            .request(Method::GET, "/organizations/acme/")
            .header(name, value)
            .body(empty())
            .unwrap();
        assert!(
            browser.send(request).await.is_sign_in_redirect(),
            "{name}: {value}"
        );
    }
    assert!(world.upstream.requests().is_empty());
}

#[tokio::test]
async fn crafted_queries_get_clear_answers() {
    let world = sentry_world().await;
    let mut browser = world.browser();
    let only_ampersands = browser.navigate("/oauth2/callback?&&&").await;
    assert_eq!(only_ampersands.status, StatusCode::BAD_REQUEST);
    assert!(only_ampersands.body.contains("lacks its code or state"));
    let out = browser
        .navigate("/oauth2/sign_out?rd=%2F%0d%0aSet-Cookie%3A%20x%3D1")
        .await;
    assert_eq!(out.location(), Some(format!("{}/", world.base).as_str()));
    assert!(out.set_cookies().iter().all(|c| !c.starts_with("x=")));
    let start = browser.navigate("/oauth2/start?&rd=&rd=/a&&").await;
    assert_eq!(start.status, StatusCode::FOUND);
    assert_eq!(browser.navigate("/ping").await.status, StatusCode::OK);
}
