//! The gateway as a server: health, readiness, HTTP/2, upgrades, the redirect
//! listener, a provider that is down, and graceful shutdown.

use crate::support;

use std::time::Duration;

use crate::support::browser::{Browser, empty};
use crate::support::{PASSWORD, World, WorldOptions};
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn ping_and_ready_answer_without_a_session() {
    let world = World::start().await;
    let mut browser = world.browser();
    let ping = browser.navigate("/ping").await;
    assert_eq!((ping.status, ping.body.as_str()), (StatusCode::OK, "OK\n"));
    let ready = browser.navigate("/ready").await;
    assert_eq!(
        (ready.status, ready.body.as_str()),
        (StatusCode::OK, "READY\n")
    );
}

#[tokio::test]
async fn not_ready_while_the_upstream_is_unreachable() {
    let closed = support::unused_address();
    let world = World::start_with(WorldOptions {
        upstream_url: Some(format!("http://{closed}")),
        ..Default::default()
    })
    .await;
    let ready = world.browser().navigate("/ready").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(ready.body.contains("upstream"), "{}", ready.body);
}

#[tokio::test]
async fn a_provider_that_is_down_gives_clear_pages_and_the_gateway_keeps_serving() {
    let world = World::start().await;
    let mut browser = world.browser();
    let callback = browser.login_until_callback("/", "alice", PASSWORD).await;
    world.provider.shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let page = browser.navigate(&callback).await;
    assert_eq!(page.status, StatusCode::BAD_GATEWAY, "{page:?}");
    assert!(
        page.body
            .contains("exchanging the authorization code failed"),
        "{}",
        page.body
    );
    assert_eq!(browser.navigate("/ping").await.status, StatusCode::OK);

    // The failed call told the gateway the provider is down: a new login gets the
    // gateway's 503 page at once instead of a redirect to a provider that is down.
    let start = world.browser().navigate("/oauth2/start?rd=%2F").await;
    assert_eq!(start.status, StatusCode::SERVICE_UNAVAILABLE, "{start:?}");
    assert!(start.body.contains("cannot be reached"), "{}", start.body);
}

#[tokio::test]
async fn gateway_starts_while_the_provider_is_unreachable() {
    let world = World::start().await;
    let settings = world.gateway.gateway().settings().clone();
    let closed = support::unused_address();
    let mut settings = settings;
    settings.oidc.issuer = format!("http://{closed}/api/oidc");
    settings.server.listen = "127.0.0.1:0".parse().unwrap();
    let gateway = ssogate::server::start(settings, std::future::pending())
        .await
        .expect("starts anyway");
    let base = format!("https://127.0.0.1:{}", gateway.local_addr.port());
    let mut browser = Browser::new(&world.ca_pem, &base);
    let ready = browser.navigate("/ready").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(ready.body.contains("identity provider"), "{}", ready.body);
    let start = browser.navigate("/oauth2/start?rd=%2F").await;
    assert_eq!(start.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(start.body.contains("cannot be reached"), "{}", start.body);
    assert_eq!(browser.navigate("/ping").await.status, StatusCode::OK);
}

#[tokio::test]
async fn http2_requests_are_forwarded_with_identity() {
    let world = World::start().await;
    let signed_in = world.signed_in("alice").await;
    let mut h2 = Browser::with_alpn(&world.ca_pem, &world.base, true);
    h2.cookies = signed_in.cookies.clone();
    let request = h2
        .request(Method::GET, "/organizations/?h2=1")
        .version(http::Version::HTTP_2)
        .body(empty())
        .unwrap();
    let page = h2.send(request).await;
    assert_eq!(page.status, StatusCode::OK, "{page:?}");
    let seen = world.upstream.last();
    assert_eq!(seen.path_and_query, "/organizations/?h2=1");
    assert_eq!(seen.headers["x-forwarded-user"], "sub-alice");
    assert_eq!(
        seen.headers["host"],
        world.base.trim_start_matches("https://")
    );
}

#[tokio::test]
async fn upgrades_are_tunnelled_to_the_upstream() {
    let world = World::start().await;
    let signed_in = world.signed_in("alice").await;
    let cookie = signed_in
        .cookies
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("; ");
    let mut stream = world.raw_tls().await;
    let request = format!(
        "GET /socket HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nCookie: {cookie}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream.write_all(b"ping through the tunnel").await.unwrap();
    let mut echoed = [0u8; 23];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echoed, b"ping through the tunnel");
    assert_eq!(
        world.upstream.last().headers["x-forwarded-user"],
        "sub-alice"
    );
}

#[tokio::test]
async fn upgrade_without_a_session_is_refused() {
    let world = World::start().await;
    let mut stream = world.raw_tls().await;
    stream
        .write_all(b"GET /socket HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-Fetch-Mode: websocket\r\n\r\n")
        .await
        .unwrap();
    let mut buffer = [0u8; 12];
    stream.read_exact(&mut buffer).await.unwrap();
    assert_eq!(&buffer, b"HTTP/1.1 401");
    assert!(world.upstream.requests().is_empty());
}

#[tokio::test]
async fn plain_http_listener_redirects_to_https() {
    let world = World::start_with(WorldOptions {
        extra_toml: String::new(),
        ..Default::default()
    })
    .await;
    let mut settings = world.gateway.gateway().settings().clone();
    settings.server.listen = "127.0.0.1:0".parse().unwrap();
    settings.server.http_redirect_listen = Some("127.0.0.1:0".parse().unwrap());
    let gateway = ssogate::server::start(settings, std::future::pending())
        .await
        .unwrap();
    let plain = format!("http://{}", gateway.redirect_addr.unwrap());
    let mut browser = Browser::new(&world.ca_pem, &plain);
    let response = browser.navigate("/organizations/acme/?q=1").await;
    assert_eq!(response.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        response.location(),
        Some(format!("{}/organizations/acme/?q=1", world.base).as_str())
    );
}

#[tokio::test]
async fn plain_http_listener_answers_acme_challenges_from_the_webroot_and_redirects_the_rest() {
    let world = World::start().await;
    // What certbot --webroot writes before it asks the CA to validate.
    let webroot = tempfile::tempdir().unwrap();
    let challenges = webroot.path().join(".well-known/acme-challenge");
    std::fs::create_dir_all(&challenges).unwrap();
    std::fs::write(challenges.join("Zm9vYmFy_-1"), "Zm9vYmFy_-1.key-thumbprint").unwrap();
    std::fs::write(webroot.path().join("private.txt"), "not for the CA").unwrap();
    let mut settings = world.gateway.gateway().settings().clone();
    settings.server.listen = "127.0.0.1:0".parse().unwrap();
    settings.server.http_redirect_listen = Some("127.0.0.1:0".parse().unwrap());
    settings.server.acme_webroot = Some(webroot.path().to_owned());
    let gateway = ssogate::server::start(settings, std::future::pending())
        .await
        .unwrap();
    let plain = format!("http://{}", gateway.redirect_addr.unwrap());
    let mut browser = Browser::new(&world.ca_pem, &plain);

    let challenge = browser
        .navigate("/.well-known/acme-challenge/Zm9vYmFy_-1")
        .await;
    assert_eq!(challenge.status, StatusCode::OK);
    assert_eq!(challenge.body, "Zm9vYmFy_-1.key-thumbprint");
    for path in [
        "/.well-known/acme-challenge/unknown",
        "/.well-known/acme-challenge/..%2F..%2Fprivate.txt",
        "/.well-known/acme-challenge/%2e%2e",
    ] {
        let refused = browser.navigate(path).await;
        assert_eq!(refused.status, StatusCode::NOT_FOUND, "{path}");
        assert!(!refused.body.contains("not for the CA"), "{path}");
    }
    let redirected = browser.navigate("/organizations/acme/").await;
    assert_eq!(redirected.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        redirected.location(),
        Some(format!("{}/organizations/acme/", world.base).as_str())
    );
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish_and_refuses_new_ones() {
    let world = World::start().await;
    let mut browser = world.signed_in("alice").await;
    let addr = world.gateway.local_addr;
    let in_flight = tokio::spawn(async move { browser.navigate("/delay").await });
    // Wait until the upstream holds the request, then stop the gateway.
    world.upstream.await_requests("/delay", 1).await;
    let World {
        gateway,
        upstream,
        provider,
        ..
    } = world;
    let stopping = tokio::spawn(gateway.shutdown());
    let finished = in_flight.await.unwrap();
    assert_eq!(
        finished.status,
        StatusCode::OK,
        "the in-flight request completes"
    );
    assert!(finished.body.contains("/delay"));
    stopping.await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no new connections after shutdown"
    );
    drop((upstream, provider));
}

#[tokio::test]
async fn every_serving_thread_serves_and_drains_on_shutdown() {
    let world = World::start_with(WorldOptions {
        server_toml: "threads = 4".into(),
        ..Default::default()
    })
    .await;
    let signed_in = world.signed_in("alice").await;
    // Eight connections, accepted by whichever of the four threads wins each one.
    let requests: Vec<_> = (0..8)
        .map(|n| {
            let mut browser = world.browser();
            browser.cookies = signed_in.cookies.clone();
            tokio::spawn(async move { browser.navigate(&format!("/delay?n={n}")).await })
        })
        .collect();
    world.upstream.await_requests("/delay", 8).await;
    let World {
        gateway,
        upstream,
        provider,
        ..
    } = world;
    let addr = gateway.local_addr;
    gateway.shutdown().await;
    for (n, request) in requests.into_iter().enumerate() {
        let finished = request.await.unwrap();
        assert_eq!(finished.status, StatusCode::OK, "request {n}: {finished:?}");
        assert!(finished.body.contains(&format!("/delay?n={n}")));
    }
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no new connections after shutdown"
    );
    drop((upstream, provider));
}
