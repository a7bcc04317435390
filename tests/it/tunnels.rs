//! Tunnels (upgraded connections, WebSocket) are bounded like connections (issue 22,
//! class 5): they keep their place in `server.max_connections`, have their own cap,
//! close when their session ends or the rules refuse them now, and close when idle.

use std::time::Duration;

use crate::support::browser::Browser;
use crate::support::{RawTls, World, WorldOptions};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn world(server_toml: &str) -> World {
    World::start_with(WorldOptions {
        server_toml: server_toml.into(),
        ..Default::default()
    })
    .await
}

/// Opens a WebSocket-style upgrade with `browser`'s cookies; the answer's head and,
/// for a 101, the open tunnel.
async fn upgrade(world: &World, browser: &Browser) -> (String, RawTls) {
    let mut stream = world.raw_tls().await;
    let cookie: Vec<String> = browser
        .cookies
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect();
    let request = format!(
        "GET /socket HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nCookie: {}\r\n\r\n",
        cookie.join("; ")
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        if stream.read_exact(&mut byte).await.is_err() {
            break;
        }
        head.push(byte[0]);
    }
    (String::from_utf8_lossy(&head).into_owned(), stream)
}

/// Sends a line through the tunnel and reads its echo; false when the tunnel is gone.
async fn echoes(stream: &mut RawTls) -> bool {
    if stream.write_all(b"ping").await.is_err() {
        return false;
    }
    let mut echoed = [0u8; 4];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echoed)).await,
        Ok(Ok(_)) if &echoed == b"ping"
    )
}

/// Waits (at most `within`) for the gateway to close the tunnel.
async fn closed_within(stream: &mut RawTls, within: Duration) -> bool {
    let mut byte = [0u8; 1];
    match tokio::time::timeout(within, stream.read(&mut byte)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) | Err(_) => false,
    }
}

/// `ssogate_connections_open`, scraped over `scraper`'s kept-alive connection.
async fn connections_open(scraper: &mut Browser) -> f64 {
    let answer = scraper.navigate("/metrics").await;
    assert_eq!(answer.status, StatusCode::OK);
    answer
        .body
        .lines()
        .find_map(|line| line.strip_prefix("ssogate_connections_open "))
        .unwrap()
        .parse()
        .unwrap()
}

/// `ssogate_requests_total` for protected routes and `status`, scraped like
/// [`connections_open`].
async fn protected_answers(scraper: &mut Browser, status: u16) -> f64 {
    let answer = scraper.navigate("/metrics").await;
    let sample = format!("ssogate_requests_total{{route=\"protected\",status=\"{status}\"}} ");
    answer
        .body
        .lines()
        .find_map(|line| line.strip_prefix(sample.as_str()))
        .map_or(0.0, |count| count.parse().unwrap())
}

#[tokio::test]
async fn a_tunnel_closes_when_its_session_ends() {
    let world = world("tunnel_check_every = \"1s\"").await;
    let mut alice = world.signed_in("alice").await;
    let (head, mut tunnel) = upgrade(&world, &alice).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(echoes(&mut tunnel).await);
    assert_eq!(
        alice.navigate("/oauth2/sign_out").await.status,
        StatusCode::FOUND
    );
    assert!(
        closed_within(&mut tunnel, Duration::from_secs(3)).await,
        "the tunnel outlived its session"
    );
}

#[tokio::test]
async fn a_tunnel_closes_when_idle_and_stays_while_used() {
    let world = world("tunnel_idle_timeout = \"1s\"").await;
    let alice = world.signed_in("alice").await;
    let (head, mut used) = upgrade(&world, &alice).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let (_, mut idle) = upgrade(&world, &alice).await;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(echoes(&mut used).await, "a tunnel in use was closed");
    }
    assert!(
        closed_within(&mut idle, Duration::from_millis(100)).await,
        "an idle tunnel stayed open past server.tunnel_idle_timeout"
    );
}

#[tokio::test]
async fn tunnels_keep_their_place_in_the_limits() {
    let world = world("max_tunnels = 2").await;
    let alice = world.signed_in("alice").await;
    let mut scraper = world.browser();
    let baseline = connections_open(&mut scraper).await;
    let (_, mut first) = upgrade(&world, &alice).await;
    let (head, mut second) = upgrade(&world, &alice).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(echoes(&mut first).await && echoes(&mut second).await);
    assert_eq!(
        connections_open(&mut scraper).await,
        baseline + 2.0,
        "upgraded connections still count as open connections"
    );
    let (refused, _) = upgrade(&world, &alice).await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    // Counted as what the client got, a 503, not as the 101 the upstream gave.
    assert_eq!(protected_answers(&mut scraper, 101).await, 2.0);
    assert_eq!(protected_answers(&mut scraper, 503).await, 1.0);
    drop(first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (head, mut third) = upgrade(&world, &alice).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(echoes(&mut third).await);
}
