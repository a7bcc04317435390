//! Staying up under hostile clients (issue 20, class 1): what one client can make the
//! gateway hold is bounded, and a browser cannot wreck its own next login.

use std::time::Duration;

use crate::support::{PASSWORD, World, WorldOptions};
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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

/// Sends a GET for /ping on `stream` and reads the status line.
async fn ping<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> Option<String> {
    stream
        .write_all(b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .ok()?;
    let mut head = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut head))
        .await
        .ok()?
        .ok()?;
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// One client address cannot take every connection slot: past
/// `server.max_connections_per_address` its new connections are closed at once, while
/// those it has keep working and its places come back when they close.
#[tokio::test]
async fn one_address_cannot_take_every_connection() {
    let world = World::start_with(WorldOptions {
        server_toml: "max_connections_per_address = 4".into(),
        ..Default::default()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(world.try_raw_tls().await.expect("within the cap"));
    }
    assert!(
        world.try_raw_tls().await.is_none(),
        "a fifth connection from the same address was served"
    );
    assert_eq!(ping(&mut held[0]).await.as_deref(), Some("HTTP/1.1 200"));
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = world.try_raw_tls().await.expect("a place came back");
    assert_eq!(ping(&mut again).await.as_deref(), Some("HTTP/1.1 200"));
}

/// The plain-HTTP redirect listener has the main listener's protections: a head that
/// never ends is cut after `server.header_read_timeout`, and a flood of such
/// connections does not keep others from being answered.
#[tokio::test]
async fn the_redirect_listener_cuts_unfinished_heads_and_keeps_answering() {
    let world = World::start_with(WorldOptions {
        server_toml: "header_read_timeout = \"1s\"".into(),
        ..Default::default()
    })
    .await;
    let mut settings = world.gateway.gateway().settings().clone();
    settings.server.listen = "127.0.0.1:0".parse().unwrap();
    settings.server.http_redirect_listen = Some("127.0.0.1:0".parse().unwrap());
    let gateway = ssogate::server::start(settings, std::future::pending())
        .await
        .unwrap();
    let address = gateway.redirect_addr.unwrap();
    let mut unfinished = Vec::new();
    for _ in 0..100 {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        unfinished.push(stream);
    }
    // Beyond its 64 places the rest wait in the backlog; all are cut within the
    // timeout once served, so a well-formed request gets through.
    let mut plain = tokio::net::TcpStream::connect(address).await.unwrap();
    let answered = ping(&mut plain).await;
    assert_eq!(answered.as_deref(), Some("HTTP/1.1 308"));
    let mut first = unfinished.remove(0);
    let mut byte = [0u8; 64];
    let cut = tokio::time::timeout(Duration::from_secs(5), first.read(&mut byte)).await;
    assert!(
        matches!(cut, Ok(Ok(_)) | Ok(Err(_))),
        "an unfinished head was still open after 5 s"
    );
}
