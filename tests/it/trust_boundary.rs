//! The trust boundary: the gateway decides on exactly the request the upstream will act
//! on. Token traffic is only what Sentry would authenticate by its credential alone;
//! a client's hop-by-hop headers cannot take away what the gateway decided on or set;
//! rules see the path as Sentry decodes it; a stranger's login starts cost nothing;
//! forward-auth and the identity headers say exactly what they mean; a provider that
//! has just gone down is noticed at the next login.

use crate::support;

use std::time::Duration;

use crate::support::browser::{Browser, empty};
use crate::support::{PASSWORD, World, WorldOptions, user};
use base64::Engine;
use http::{Method, StatusCode};
use ssogate::config::HOST_COOKIE_NAME;

fn sentry_world_options(extra: &str) -> WorldOptions {
    WorldOptions {
        extra_toml: format!(
            "[access]\npreset = \"sentry\"\ngroups_claim = \"permissions\"\n{extra}"
        ),
        users: vec![
            user("alice", "alice@corp.example", true, &["sentry:member"]),
            user("root", "root@corp.example", true, &["sentry:admin"]),
        ],
        ..Default::default()
    }
}

const ADMIN_RULE: &str = r#"
[[access.rules]]
name = "admin area"
path = "^/manage/"
allowed_groups = ["sentry:admin"]
"#;

/// A request as Sentry's web app or sentry-cli sends it to the API.
fn api_request(
    browser: &Browser,
    method: Method,
    path: &str,
    extra: &[(&str, &str)],
) -> http::Request<support::browser::TestBody> {
    let mut builder = browser
        .request(method, path)
        .header("accept", "application/json; charset=utf-8");
    for (name, value) in extra {
        builder = builder.header(*name, *value);
    }
    builder.body(empty()).unwrap()
}

// ---------------------------------------------------------------------------------
// 1. Token API admission

#[tokio::test]
async fn only_a_credential_sentry_would_try_is_token_traffic() {
    let world = World::start_with(sentry_world_options("")).await;
    let mut client = world.browser();
    let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    let not_tokens = [
        String::new(),
        " ".into(),
        "Bearer".into(),
        "Bearer ".into(),
        "Basic".into(),
        "DSN".into(),
        "x".into(),
        "x abc".into(),
        "Token abc".into(),
        "Bearer a b".into(),
        format!("Basic {}", b64("user:password")),
        format!("Basic {}", b64(":")),
        "DSN not-a-dsn".into(),
        format!("Bearer {}", "a".repeat(2000)),
    ];
    for value in &not_tokens {
        for (method, path) in [
            (Method::GET, "/api/0/organizations/"),
            (Method::POST, "/api/0/auth/login/"),
        ] {
            let request = api_request(
                &client,
                method,
                path,
                &[
                    ("authorization", value),
                    ("cookie", "sentrysid=old-session; sc=csrf"),
                ],
            );
            let response = client.send(request).await;
            assert_eq!(
                response.status,
                StatusCode::UNAUTHORIZED,
                "Authorization: {value:?} on {path}"
            );
        }
    }
    assert!(
        world.upstream.requests().is_empty(),
        "nothing without a real credential reached Sentry"
    );

    let api_key = format!("Basic {}", b64("0123456789abcdef0123456789abcdef:"));
    for value in [
        "Bearer sntrys_eyJpYXQiOjE3MDAwMDAwMDB9_secret",
        "bearer 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        &api_key,
        "DSN https://public@sentry.example.com/1",
    ] {
        let cookies = format!(
            "sentrysid=old-session; theme=dark; sc=csrf; sentry-sc=csrf2; su=1; sudo=1; {HOST_COOKIE_NAME}=x"
        );
        let request = api_request(
            &client,
            Method::GET,
            "/api/0/organizations/",
            &[("authorization", value), ("cookie", &cookies)],
        );
        assert_eq!(client.send(request).await.status, StatusCode::OK, "{value}");
        let seen = world.upstream.last();
        assert_eq!(seen.headers["authorization"], value);
        assert_eq!(
            seen.headers["cookie"], "theme=dark",
            "token traffic reaches Sentry without Sentry's session cookies"
        );
    }
}

#[tokio::test]
async fn operators_can_name_more_upstream_session_cookies() {
    let world = World::start_with(sentry_world_options(
        "upstream_session_cookies = [\"legacy_sid\"]\n",
    ))
    .await;
    let mut cli = world.browser();
    let request = api_request(
        &cli,
        Method::GET,
        "/api/0/projects/",
        &[
            ("authorization", "Bearer sntrys_abc"),
            ("cookie", "legacy_sid=1; sentrysid=2; lang=en"),
        ],
    );
    assert_eq!(cli.send(request).await.status, StatusCode::OK);
    assert_eq!(world.upstream.last().headers["cookie"], "lang=en");

    // A signed-in person's own Sentry session is theirs to keep.
    let mut alice = world.signed_in("alice").await;
    alice
        .cookies
        .insert("sentrysid".into(), "alice-sentry".into());
    assert_eq!(
        alice.navigate("/organizations/").await.status,
        StatusCode::OK
    );
    let cookie = world.upstream.last().headers["cookie"].clone();
    assert_eq!(cookie, "sentrysid=alice-sentry");
}

// ---------------------------------------------------------------------------------
// 2. Hop-by-hop headers

#[tokio::test]
async fn connection_cannot_name_a_credential_or_a_header_the_gateway_sets() {
    let world = World::start_with(sentry_world_options("")).await;
    let mut cli = world.browser();
    let request = api_request(
        &cli,
        Method::GET,
        "/api/0/organizations/",
        &[
            ("authorization", "Bearer sntrys_abc"),
            ("connection", "Authorization"),
        ],
    );
    let refused = cli.send(request).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{refused:?}");
    assert!(refused.body.contains("Connection"), "{}", refused.body);

    let mut alice = world.signed_in("alice").await;
    let before = world.upstream.requests().len();
    for named in [
        "X-Forwarded-User, X-Forwarded-For, X-Request-Id",
        "keep-alive, x-forwarded-email",
        "X_Forwarded_Groups",
        "cookie",
        "Host",
        "x-forwarded-proto",
        "forwarded",
        "content-length",
    ] {
        let request = alice
            .request(Method::GET, "/organizations/acme/")
            .header("connection", named)
            .body(empty())
            .unwrap();
        let response = alice.send(request).await;
        assert_eq!(
            response.status,
            StatusCode::BAD_REQUEST,
            "Connection: {named}"
        );
    }
    assert_eq!(
        world.upstream.requests().len(),
        before,
        "none reached Sentry"
    );
}

#[tokio::test]
async fn whatever_hop_by_hop_headers_a_client_sends_the_gateways_headers_arrive() {
    let world = World::start_with(sentry_world_options("")).await;
    let mut alice = world.signed_in("alice").await;
    let tokens = [
        "keep-alive",
        "close",
        "te",
        "upgrade",
        "x-custom",
        "X-Other",
        "trailer",
    ];
    // Every combination of what `Connection` names, with the named headers present
    // and the other hop-by-hop headers too.
    for mask in 0u32..(1 << tokens.len()) {
        let named: Vec<&str> = (0..tokens.len())
            .filter(|i| mask & (1 << i) != 0)
            .map(|i| tokens[i])
            .collect();
        let mut request = alice
            .request(Method::GET, "/organizations/acme/issues/")
            .header("x-custom", "1")
            .header("x-other", "2")
            .header("te", "trailers")
            .header("trailer", "x-checksum")
            .header("proxy", "http://evil.example:3128")
            .header("proxy-authorization", "Basic eDp5")
            .header("upgrade", "h2c")
            .header("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA");
        if !named.is_empty() {
            request = request.header("connection", named.join(", "));
        }
        let response = alice.send(request.body(empty()).unwrap()).await;
        assert_eq!(response.status, StatusCode::OK, "Connection: {named:?}");
        let seen = world.upstream.last();
        for (name, value) in [
            ("x-forwarded-user", "sub-alice"),
            ("x-forwarded-email", "alice@corp.example"),
            ("x-forwarded-groups", "sentry:member"),
            ("x-forwarded-for", "127.0.0.1"),
            ("x-forwarded-proto", "https"),
        ] {
            assert_eq!(
                seen.headers.get(name).map(|v| v.to_str().unwrap()),
                Some(value),
                "{name} with Connection: {named:?}"
            );
        }
        assert!(seen.headers.contains_key("x-forwarded-host"));
        assert!(seen.headers.contains_key("x-request-id"));
        for gone in [
            "te",
            "trailer",
            "proxy",
            "proxy-authorization",
            "upgrade",
            "keep-alive",
        ] {
            assert!(
                !seen.headers.contains_key(gone),
                "{gone} with Connection: {named:?}"
            );
        }
        for (name, token) in [("x-custom", "x-custom"), ("x-other", "X-Other")] {
            assert_eq!(
                seen.headers.contains_key(name),
                !named.contains(&token),
                "{name} is dropped exactly when Connection names it: {named:?}"
            );
        }
        assert!(
            seen.headers
                .get("connection")
                .is_none_or(|c| c != "upgrade"),
            "h2c is never an upgrade"
        );
    }
}

// ---------------------------------------------------------------------------------
// 3. Route rules under encodings

#[tokio::test]
async fn route_rules_hold_whatever_the_encoding_over_http1_and_http2() {
    let world = World::start_with(sentry_world_options(ADMIN_RULE)).await;
    for http2 in [false, true] {
        let mut alice = Browser::with_alpn(&world.ca_pem, &world.base, http2);
        let landed = alice.login("/", "alice", PASSWORD).await;
        assert_eq!(landed.status, StatusCode::OK);
        let before = world.upstream.requests().len();
        for raw in [
            "/manage/",
            "/manage%2F",
            "/manage%2f",
            "/manage%2Fusers%2F",
            "/%6danage%2F",
            "/x/..%2Fmanage%2F",
            "/x%2F..%2Fmanage%2F",
            "/x%5C..%5Cmanage%5C",
            "/manage%5Cusers",
        ] {
            let response = alice.navigate(raw).await;
            assert_eq!(
                response.status,
                StatusCode::FORBIDDEN,
                "{raw} (HTTP/2: {http2}): {response:?}"
            );
        }
        assert_eq!(world.upstream.requests().len(), before, "HTTP/2: {http2}");
    }
    let mut root = world.signed_in("root").await;
    assert_eq!(
        root.navigate("/manage%2Fusers").await.status,
        StatusCode::OK
    );
    assert_eq!(
        world.upstream.last().path_and_query,
        "/manage%2Fusers",
        "forwarded as it was decided on"
    );
}

#[tokio::test]
async fn release_names_with_an_encoded_slash_still_work() {
    let world = World::start_with(sentry_world_options(ADMIN_RULE)).await;
    let path = "/api/0/projects/acme/web/releases/app%2F1.0/files/";
    let mut cli = world.browser();
    let request = api_request(
        &cli,
        Method::GET,
        path,
        &[("authorization", "Bearer sntrys_x")],
    );
    assert_eq!(cli.send(request).await.status, StatusCode::OK);
    assert_eq!(world.upstream.last().path_and_query, path);
    let mut alice = world.signed_in("alice").await;
    let request = api_request(&alice, Method::GET, path, &[]);
    assert_eq!(alice.send(request).await.status, StatusCode::OK);
    assert_eq!(world.upstream.last().path_and_query, path);
}

// ---------------------------------------------------------------------------------
// 4. Memory before login

#[tokio::test]
async fn a_return_target_over_2_kib_gets_a_clear_400() {
    let world = World::start().await;
    let mut browser = world.browser();
    let long = format!("/{}", "a".repeat(2100));
    for endpoint in ["/oauth2/start", "/oauth2/sign_in", "/oauth2/sign_out"] {
        let page = browser.navigate(&format!("{endpoint}?rd={long}")).await;
        assert_eq!(page.status, StatusCode::BAD_REQUEST, "{endpoint}");
        assert!(
            page.body.contains("longer than 2048 bytes"),
            "{}",
            page.body
        );
        assert!(page.set_cookies().is_empty(), "{endpoint}");
    }
    // A deep link too long to come back to leads to the sign-in with its path only.
    let deep = format!("/organizations/acme/issues/?query={}", "x".repeat(3000));
    let redirect = browser.navigate(&deep).await;
    assert_eq!(
        redirect.location(),
        Some("/oauth2/sign_in?rd=%2Forganizations%2Facme%2Fissues%2F")
    );
}

#[tokio::test]
async fn a_flood_of_login_starts_holds_nothing_and_breaks_no_login_under_way() {
    let world = World::start().await;
    let mut alice = world.browser();
    let callback = alice
        .login_until_callback("/organizations/acme/?deep=1", "alice", PASSWORD)
        .await;
    let rd = format!("/{}", "r".repeat(2000));
    let mut stranger = world.browser();
    for _ in 0..2000 {
        let start = stranger.navigate(&format!("/oauth2/start?rd={rd}")).await;
        assert_eq!(start.status, StatusCode::FOUND);
        // Each start's state lives in its own cookie, in the stranger's browser.
        assert!(start.set_cookies()[0].contains("Path=/oauth2/;"));
        stranger.cookies.clear();
    }
    let landed = alice.follow(&callback).await;
    assert_eq!(landed.status, StatusCode::OK, "{landed:?}");
    assert_eq!(
        world.upstream.last().path_and_query,
        "/organizations/acme/?deep=1"
    );
    // And a new login after the flood works as ever.
    let mut bob = world.browser();
    assert_eq!(
        bob.login("/", "alice", PASSWORD).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_login_cookie_from_another_start_opens_nothing() {
    let world = World::start().await;
    let mut first = world.browser();
    let callback = first.login_until_callback("/", "alice", PASSWORD).await;
    // The login cookie of another start in the same browser does not fit this state.
    let mut other = world.browser();
    other.navigate("/oauth2/start?rd=%2F").await;
    let (other_name, other_value) = other.cookies.iter().next().unwrap();
    let mut mixed = world.browser();
    let own_name = first.cookies.keys().next().unwrap().clone();
    mixed.cookies.insert(own_name, other_value.clone());
    mixed
        .cookies
        .insert(other_name.clone(), other_value.clone());
    let page = mixed.navigate(&callback).await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST, "{page:?}");
    assert!(page.body.contains("not started in this browser"));
}

// ---------------------------------------------------------------------------------
// 6. Forward-auth and identity

#[tokio::test]
async fn forward_auth_refuses_a_repeated_or_empty_group_parameter() {
    let world = World::start_with(sentry_world_options("")).await;
    let mut alice = world.signed_in("alice").await;
    for query in [
        "allowed_groups=x&allowed_groups=x",
        "allowed_groups=sentry:member&allowed_groups=sentry:member",
        "allowed_groups=",
        "allowed_groups=,,",
        "allowed_groups=%20",
    ] {
        let response = alice.navigate(&format!("/oauth2/auth?{query}")).await;
        assert_eq!(response.status, StatusCode::BAD_REQUEST, "{query}");
        assert!(!response.headers.contains_key("x-forwarded-user"));
    }
    let admitted = alice
        .navigate("/oauth2/auth?allowed_groups=sentry:member")
        .await;
    assert_eq!(admitted.status, StatusCode::ACCEPTED);
}

async fn forward_auth(
    browser: &mut Browser,
    uri: Option<&str>,
    method: Option<&str>,
) -> StatusCode {
    let mut request = browser.request(Method::GET, "/oauth2/auth");
    if let Some(uri) = uri {
        request = request.header("x-original-uri", uri);
    }
    if let Some(method) = method {
        request = request.header("x-original-method", method);
    }
    browser.send(request.body(empty()).unwrap()).await.status
}

#[tokio::test]
async fn forward_auth_applies_the_rules_to_the_uri_a_trusted_proxy_reports() {
    let world = World::start_with(WorldOptions {
        server_toml: "trusted_proxies = [\"127.0.0.0/8\"]".into(),
        ..sentry_world_options(ADMIN_RULE)
    })
    .await;
    let mut alice = world.signed_in("alice").await;
    for (uri, method, status) in [
        ("/organizations/acme/", "GET", StatusCode::ACCEPTED),
        ("/manage/", "GET", StatusCode::FORBIDDEN),
        ("/manage%2Fusers?x=1", "POST", StatusCode::FORBIDDEN),
        ("/x/..%2Fmanage/", "GET", StatusCode::FORBIDDEN),
    ] {
        assert_eq!(
            forward_auth(&mut alice, Some(uri), Some(method)).await,
            status,
            "{uri}"
        );
    }
    assert_eq!(
        forward_auth(&mut alice, Some("/manage/"), None).await,
        StatusCode::BAD_REQUEST,
        "a URI without its method cannot be decided on"
    );
    let mut root = world.signed_in("root").await;
    assert_eq!(
        forward_auth(&mut root, Some("/manage/"), Some("GET")).await,
        StatusCode::ACCEPTED
    );
    let mut anonymous = world.browser();
    assert_eq!(
        forward_auth(&mut anonymous, Some("/_health/"), Some("GET")).await,
        StatusCode::ACCEPTED,
        "a public route needs no session"
    );
    assert_eq!(
        forward_auth(&mut anonymous, Some("/organizations/"), Some("GET")).await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn forward_auth_ignores_the_reported_uri_from_anyone_else() {
    let world = World::start_with(sentry_world_options(ADMIN_RULE)).await;
    let mut anonymous = world.browser();
    assert_eq!(
        forward_auth(&mut anonymous, Some("/_health/"), Some("GET")).await,
        StatusCode::UNAUTHORIZED,
        "a stranger cannot claim to ask about a public route"
    );
    let mut alice = world.signed_in("alice").await;
    assert_eq!(
        forward_auth(&mut alice, Some("/organizations/"), None).await,
        StatusCode::ACCEPTED,
        "not a trusted proxy: the header is ignored, not refused"
    );
}

#[tokio::test]
async fn an_unverified_email_is_never_forwarded() {
    let world = World::start_with(WorldOptions {
        users: vec![user("una", "una@corp.example", false, &["sentry:member"])],
        ..Default::default()
    })
    .await;
    let mut una = world.signed_in("una").await;
    assert_eq!(una.navigate("/").await.status, StatusCode::OK);
    let seen = world.upstream.last();
    assert_eq!(seen.headers["x-forwarded-user"], "sub-una");
    assert!(!seen.headers.contains_key("x-forwarded-email"));
    let auth = una.navigate("/oauth2/auth").await;
    assert_eq!(auth.status, StatusCode::ACCEPTED);
    assert!(!auth.headers.contains_key("x-forwarded-email"));
}

#[tokio::test]
async fn group_names_arrive_one_by_one_whatever_they_contain() {
    let world = World::start_with(WorldOptions {
        extra_toml: "[access]\ngroups_claim = \"permissions\"\n".into(),
        users: vec![user(
            "gus",
            "gus@corp.example",
            true,
            &["sentry:member", "a,b", "50% off", "caf\u{e9}"],
        )],
        ..Default::default()
    })
    .await;
    let mut gus = world.signed_in("gus").await;
    assert_eq!(gus.navigate("/").await.status, StatusCode::OK);
    assert_eq!(
        world.upstream.last().headers["x-forwarded-groups"],
        "sentry:member,a%2Cb,50%25%20off,caf%C3%A9"
    );
    let auth = gus.navigate("/oauth2/auth?allowed_groups=a%252Cb").await;
    assert_eq!(auth.status, StatusCode::ACCEPTED, "the group named `a,b`");
    let auth = gus.navigate("/oauth2/auth?allowed_groups=a").await;
    assert_eq!(auth.status, StatusCode::FORBIDDEN, "`a,b` is not `a`");
}

async fn sign_out(browser: &mut Browser, headers: &[(&str, &str)]) -> support::TestResponse {
    let mut request = browser.request(Method::GET, "/oauth2/sign_out");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    browser.send(request.body(empty()).unwrap()).await
}

#[tokio::test]
async fn another_site_cannot_sign_a_person_out() {
    let world = World::start().await;
    let mut alice = world.signed_in("alice").await;
    for headers in [
        &[("sec-fetch-site", "cross-site")][..],
        &[("sec-fetch-site", "same-site")],
        &[("origin", "https://evil.example")],
        &[("origin", "null")],
        &[("referer", "https://evil.example/page")],
        &[("referer", "http://127.0.0.1/")],
    ] {
        let page = sign_out(&mut alice, headers).await;
        assert_eq!(page.status, StatusCode::OK, "{headers:?}");
        assert!(
            page.body
                .contains("<form method=\"post\" action=\"/oauth2/sign_out\""),
            "{}",
            page.body
        );
        assert!(page.set_cookies().is_empty(), "{headers:?}");
        assert_eq!(
            alice.navigate("/still-here").await.status,
            StatusCode::OK,
            "{headers:?}"
        );
    }
    // The page's button posts from this origin.
    let request = alice
        .request(Method::POST, "/oauth2/sign_out")
        .header("sec-fetch-site", "same-origin")
        .header("origin", world.base.as_str())
        .body(empty())
        .unwrap();
    let out = alice.send(request).await;
    assert_eq!(out.status, StatusCode::FOUND, "{out:?}");
    assert!(alice.navigate("/after").await.is_sign_in_redirect());
}

#[tokio::test]
async fn same_origin_sign_out_links_work_at_once() {
    let world = World::start().await;
    let referer = format!("{}/organizations/", world.base);
    for headers in [
        vec![("sec-fetch-site", "same-origin")],
        vec![("sec-fetch-site", "none")],
        vec![("referer", referer.as_str())],
        vec![],
    ] {
        let mut alice = world.signed_in("alice").await;
        let out = sign_out(&mut alice, &headers).await;
        assert_eq!(out.status, StatusCode::FOUND, "{headers:?}");
        assert!(
            alice.navigate("/after").await.is_sign_in_redirect(),
            "{headers:?}"
        );
    }
}

#[tokio::test]
async fn the_session_cookie_is_host_only_over_https() {
    let world = World::start().await;
    let mut browser = world.browser();
    let callback = browser.login_until_callback("/", "alice", PASSWORD).await;
    let login_cookie = browser.cookies.keys().next().unwrap().clone();
    assert!(
        login_cookie.starts_with("__Secure-ssogate_csrf_"),
        "{login_cookie}"
    );
    let back = browser.navigate(&callback).await;
    let session = back
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with(&format!("{HOST_COOKIE_NAME}=")))
        .expect("a __Host- session cookie");
    assert!(
        session.contains("Secure") && session.contains("Path=/"),
        "{session}"
    );
    assert!(
        !session.to_ascii_lowercase().contains("domain="),
        "{session}"
    );
    assert_eq!(browser.navigate("/").await.status, StatusCode::OK);
    let cookie = world.upstream.last().headers.get("cookie").cloned();
    assert!(
        cookie.is_none(),
        "neither gateway cookie reaches the upstream: {cookie:?}"
    );
}

// ---------------------------------------------------------------------------------
// 7. The provider that just went down

#[tokio::test]
async fn a_login_start_right_after_the_provider_went_down_gets_the_gateways_page() {
    let world = World::start().await;
    let mut browser = world.browser();
    let start = browser.navigate("/oauth2/start?rd=%2F").await;
    assert_eq!(start.status, StatusCode::FOUND, "the provider answers");
    world.provider.shutdown();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let start = world.browser().navigate("/oauth2/start?rd=%2F").await;
    assert_eq!(start.status, StatusCode::SERVICE_UNAVAILABLE, "{start:?}");
    assert!(start.body.contains("Sign-in unavailable"), "{}", start.body);
}
