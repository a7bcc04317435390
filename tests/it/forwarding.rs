//! What reaches the upstream, and what the client sees when the upstream misbehaves.

use crate::support;

use std::time::Duration;

use crate::support::browser::{Browser, empty};
use crate::support::{World, WorldOptions};
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, StreamBody};

#[tokio::test]
async fn identity_and_forwarding_headers_arrive() {
    let world = World::start().await;
    let mut browser = world.signed_in("alice").await;
    let page = browser.navigate("/organizations/acme/").await;
    assert_eq!(page.status, StatusCode::OK);
    let seen = world.upstream.last();
    assert_eq!(seen.headers["x-forwarded-user"], "sub-alice");
    assert_eq!(seen.headers["x-forwarded-email"], "alice@corp.example");
    assert_eq!(seen.headers["x-forwarded-preferred-username"], "alice");
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(
        seen.headers["x-forwarded-host"],
        world.base.trim_start_matches("https://")
    );
    assert!(
        !seen.headers.contains_key("authorization"),
        "no Authorization is added"
    );
}

#[tokio::test]
async fn groups_claim_is_configurable_and_comma_joined() {
    let world = World::start_with(WorldOptions {
        extra_toml: "[access]\ngroups_claim = \"permissions\"\n".into(),
        users: vec![support::user(
            "bob",
            "bob@corp.example",
            true,
            &["sentry:admin", "sentry:member"],
        )],
        ..Default::default()
    })
    .await;
    let mut browser = world.signed_in("bob").await;
    browser.navigate("/").await;
    assert_eq!(
        world.upstream.last().headers["x-forwarded-groups"],
        "sentry:admin,sentry:member"
    );
}

#[tokio::test]
async fn forged_identity_headers_never_reach_the_upstream() {
    let world = World::start().await;
    let mut browser = world.signed_in("alice").await;
    let request = browser
        .request(Method::GET, "/forged")
        .header("X-Forwarded-User", "admin")
        .header("x-forwarded-user", "admin2")
        .header("X_Forwarded_User", "admin3")
        .header("x_forwarded-email", "boss@corp.example")
        .header("X-FORWARDED-EMAIL", "boss@corp.example")
        .header("X_FORWARDED_GROUPS", "sentry:admin")
        .header("x-forwarded-preferred_username", "root")
        .body(empty())
        .unwrap();
    assert_eq!(browser.send(request).await.status, StatusCode::OK);
    let seen = world.upstream.last();
    let values = |name: &str| {
        seen.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(values("x-forwarded-user"), ["sub-alice"]);
    assert_eq!(values("x-forwarded-email"), ["alice@corp.example"]);
    assert_eq!(values("x-forwarded-preferred-username"), ["alice"]);
    assert!(
        values("x-forwarded-groups")
            .iter()
            .all(|g| !g.contains("admin"))
    );
    for (name, _) in seen.headers.iter() {
        assert!(
            !name.as_str().contains('_'),
            "underscore variant {name} reached the upstream"
        );
    }
}

#[tokio::test]
async fn forged_identity_headers_without_a_session_change_nothing() {
    let world = World::start().await;
    let mut browser = world.browser();
    let request = browser
        .request(Method::GET, "/api/0/organizations/")
        .header("X-Forwarded-User", "admin")
        .header("X-Forwarded-Email", "admin@corp.example")
        .body(empty())
        .unwrap();
    assert_eq!(browser.send(request).await.status, StatusCode::UNAUTHORIZED);
    assert!(world.upstream.requests().is_empty());
}

#[tokio::test]
async fn the_gateway_cookie_is_not_forwarded_but_others_are() {
    let world = World::start().await;
    let mut browser = world.signed_in("alice").await;
    browser.cookies.insert("sentrysid".into(), "abc".into());
    browser.cookies.insert("sc".into(), "csrf".into());
    browser.navigate("/").await;
    let cookie = world.upstream.last().headers["cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        cookie.contains("sentrysid=abc") && cookie.contains("sc=csrf"),
        "{cookie}"
    );
    assert!(!cookie.contains("ssogate"), "{cookie}");
}

#[tokio::test]
async fn sentry_api_call_without_session_gets_401_json_and_navigation_a_redirect() {
    let world = World::start().await;
    let mut browser = world.browser();
    let request = browser
        .request(Method::GET, "/api/0/organizations/?member=1")
        .header("accept", "application/json; charset=utf-8")
        .header("sec-fetch-mode", "cors")
        .header("x-csrftoken", "t")
        .body(empty())
        .unwrap();
    let api = browser.send(request).await;
    assert_eq!(api.status, StatusCode::UNAUTHORIZED);
    assert_eq!(api.headers["content-type"], "application/json");
    let json: serde_json::Value = serde_json::from_str(&api.body).unwrap();
    assert_eq!(json["error"], "unauthorized");

    let nav = browser.navigate("/organizations/acme/?x=1").await;
    assert_eq!(nav.status, StatusCode::FOUND);
    assert_eq!(
        nav.location(),
        Some("/oauth2/sign_in?rd=%2Forganizations%2Facme%2F%3Fx%3D1")
    );
    assert!(world.upstream.requests().is_empty());
}

#[tokio::test]
async fn large_upload_streams_to_the_upstream_before_the_client_finishes() {
    let world = World::start().await;
    let mut browser = world.signed_in("alice").await;
    let mut chunks = world.upstream.watch_chunks();
    let (sender, receiver) = tokio::sync::mpsc::channel::<
        Result<hyper::body::Frame<Bytes>, support::browser::BoxError>,
    >(4);
    let body = StreamBody::new(tokio_stream_from(receiver)).boxed_unsync();
    let request = browser
        .request(Method::POST, "/api/1/envelope-like-upload/")
        .header("content-type", "application/octet-stream")
        .body(body)
        .unwrap();
    let upload = tokio::spawn(async move { browser.send(request).await });

    let first = Bytes::from(vec![b'a'; 256 * 1024]);
    sender
        .send(Ok(hyper::body::Frame::data(first)))
        .await
        .unwrap();
    // The rest of the body has not been sent, yet the upstream already holds bytes.
    let arrived = tokio::time::timeout(Duration::from_secs(15), chunks.recv()).await;
    assert!(
        matches!(arrived, Ok(Some(n)) if n > 0),
        "upstream received nothing while the client was still sending"
    );
    for _ in 0..15 {
        sender
            .send(Ok(hyper::body::Frame::data(Bytes::from(vec![
                b'b';
                1024 * 1024
            ]))))
            .await
            .unwrap();
    }
    drop(sender);
    let response = upload.await.unwrap();
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(
        world.upstream.last().body_len,
        256 * 1024 + 15 * 1024 * 1024
    );
}

fn tokio_stream_from<T: Send + 'static>(
    mut receiver: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx))
}

#[tokio::test]
async fn unreachable_upstream_is_a_502_page() {
    let closed_port = support::unused_address();
    let world = World::start_with(WorldOptions {
        upstream_url: Some(format!("http://{closed_port}")),
        ..Default::default()
    })
    .await;
    let mut browser = world.signed_in_without_landing("alice").await;
    let page = browser.navigate("/anything").await;
    assert_eq!(page.status, StatusCode::BAD_GATEWAY, "{page:?}");
    assert!(page.body.contains("Upstream unavailable"));
    assert_eq!(
        browser.navigate("/ping").await.status,
        StatusCode::OK,
        "the gateway keeps serving"
    );
}

#[tokio::test]
async fn slow_upstream_is_a_504_page() {
    let world = World::start().await;
    let mut browser = world.signed_in("alice").await;
    let page = browser.navigate("/slow").await;
    assert_eq!(page.status, StatusCode::GATEWAY_TIMEOUT, "{page:?}");
    assert_eq!(browser.navigate("/fast").await.status, StatusCode::OK);
}

#[tokio::test]
async fn http2_clients_are_served() {
    let world = World::start().await;
    let mut browser = Browser::with_alpn(&world.ca_pem, &world.base, true);
    let request = browser
        .request(Method::GET, "/ping")
        .version(http::Version::HTTP_2)
        .body(empty())
        .unwrap();
    let ping = browser.send(request).await;
    assert_eq!(ping.status, StatusCode::OK);
    assert_eq!(ping.body, "OK\n");
}
