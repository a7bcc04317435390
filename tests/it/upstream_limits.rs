//! What one client can hold of the upstream (issue 20, class 1): upstream requests in
//! flight are bounded per client address and in total (503 beyond), a response the
//! client takes nothing of is abandoned after `server.send_timeout` and its upstream
//! connection released, a connection being closed gracefully does end, and a request
//! body that stops arriving is cut after `server.body_idle_timeout` (408).
//!
//! The attacker here is an HTTP/2 reader that never opens its flow-control window
//! (`SETTINGS_INITIAL_WINDOW_SIZE=0`) and asks for a large public file; upstream
//! connections are counted on the test upstream's side.

use crate::support;

use std::time::Duration;

use crate::support::upstream::LARGE_BODY;
use crate::support::{H2Client, World, WorldOptions};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A large public file in the Sentry preset (the test upstream answers
/// [`LARGE_BODY`] bytes for any path with `/large`).
const LARGE_FILE: &str = "/_static/1700000000/sentry/dist/large.js";

fn sentry_world(server_toml: &str, upstream_toml: &str) -> WorldOptions {
    WorldOptions {
        extra_toml: "[access]\npreset = \"sentry\"\n".into(),
        server_toml: server_toml.into(),
        upstream_toml: upstream_toml.into(),
        ..Default::default()
    }
}

/// An HTTP/2 client that never opens its flow-control window: it gets response
/// headers, and not one byte of any body. The task is the connection (it ends when
/// the gateway closes it).
async fn window_zero_client(world: &World) -> H2Client {
    world
        .h2_client_with(h2::client::Builder::new().initial_window_size(0))
        .await
}

/// A [`window_zero_client`] holding `count` answered downloads of [`LARGE_FILE`]
/// (each 200), of which it takes nothing.
async fn stalled_downloads(
    world: &World,
    count: usize,
) -> (H2Client, Vec<http::Response<h2::RecvStream>>) {
    let (mut client, connection) = window_zero_client(world).await;
    let mut held = Vec::new();
    for _ in 0..count {
        let response = world.h2_get(&mut client, LARGE_FILE, &[]).await;
        assert_eq!(response.status(), StatusCode::OK);
        held.push(response);
    }
    ((client, connection), held)
}

/// Asserts that the upstream has no connection open, within `within`.
async fn assert_upstream_released(world: &World, within: Duration) {
    assert!(
        world.upstream.await_open_at_most(0, within).await,
        "upstream connections still open: {}",
        world.upstream.open_connections()
    );
}

/// Waits (at most 10 s) until the upstream has accepted `count` connections.
async fn await_accepted(world: &World, count: usize) {
    for _ in 0..200 {
        if world.upstream.accepted_connections() >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the upstream accepted {} connections, not {count}",
        world.upstream.accepted_connections()
    );
}

#[tokio::test]
async fn a_window_zero_reader_holds_at_most_its_per_client_bound_upstream() {
    let world = World::start_with(sentry_world(
        "",
        "max_in_flight = 50\nmax_in_flight_per_client = 4",
    ))
    .await;
    let (mut client, _connection) = window_zero_client(&world).await;
    let mut statuses = Vec::new();
    let mut held = Vec::new();
    for _ in 0..12 {
        let response = world
            .h2_get(&mut client, LARGE_FILE, &[("accept", "application/json")])
            .await;
        statuses.push(response.status());
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(response.headers()["retry-after"], "1");
            assert_eq!(response.headers()["content-type"], "application/json");
        }
        held.push(response);
    }
    // Give any extra upstream connection time to show.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let busy = statuses
        .iter()
        .filter(|s| **s == StatusCode::SERVICE_UNAVAILABLE)
        .count();
    println!(
        "12 window-0 streams: {ok} answered 200, {busy} refused 503; upstream connections open {}, accepted {}",
        world.upstream.open_connections(),
        world.upstream.accepted_connections()
    );
    assert_eq!((ok, busy), (4, 8), "{statuses:?}");
    assert!(
        world.upstream.accepted_connections() <= 4,
        "upstream connections accepted: {}",
        world.upstream.accepted_connections()
    );
    let metrics = world.gateway.gateway().metrics().render(0);
    assert!(
        metrics.contains("ssogate_upstream_failures_total{reason=\"busy\"} 8"),
        "{metrics}"
    );
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_client_has_its_own_bound_and_the_total_holds() {
    let world = World::start_with(sentry_world(
        "trusted_proxies = [\"127.0.0.1\"]",
        "max_in_flight = 5\nmax_in_flight_per_client = 2",
    ))
    .await;
    let (mut client, _connection) = window_zero_client(&world).await;
    let mut held = Vec::new();
    let mut status = async |forwarded_for: &str| {
        let response = world
            .h2_get(
                &mut client,
                LARGE_FILE,
                &[("x-forwarded-for", forwarded_for)],
            )
            .await;
        let status = response.status();
        held.push(response);
        status
    };
    // One client behind the proxy: its own bound (a client-chosen first entry is not
    // who it is).
    let same = [
        status("198.51.100.1").await,
        status("6.6.6.6, 198.51.100.1").await,
        status("7.7.7.7, 198.51.100.1").await,
    ];
    assert_eq!(
        same,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::SERVICE_UNAVAILABLE
        ]
    );
    // Others behind the same proxy are not throttled by it, until the total is used.
    let others = [
        status("203.0.113.1").await,
        status("203.0.113.2").await,
        status("203.0.113.3").await,
        status("203.0.113.4").await,
    ];
    assert_eq!(
        others,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::SERVICE_UNAVAILABLE
        ]
    );
    assert!(world.upstream.accepted_connections() <= 5);
}

#[tokio::test]
async fn a_response_the_client_takes_nothing_of_is_abandoned_and_its_upstream_released() {
    let world = World::start_with(sentry_world(
        "send_timeout = \"1s\"",
        "max_in_flight_per_client = 3",
    ))
    .await;
    let ((mut client, connection), _held) = stalled_downloads(&world, 3).await;
    await_accepted(&world, 3).await;
    let started = std::time::Instant::now();
    assert_upstream_released(&world, Duration::from_secs(10)).await;
    println!(
        "3 stalled responses: upstream connections released {:?} after the heads (send_timeout 1s)",
        started.elapsed()
    );
    assert!(!connection.is_finished(), "the client connection stays");
    // Their places are free again.
    let response = world.h2_get(&mut client, LARGE_FILE, &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_connection_closed_gracefully_ends_though_its_client_takes_nothing() {
    // Idle after 500 ms (no request since the heads went out): GOAWAY. The streams
    // cannot finish, since the client opens no window; the send timeout is longer
    // than the test waits, so only the closing connection's own bound can end it.
    let world = World::start_with(sentry_world(
        "idle_timeout = \"500ms\"\nsend_timeout = \"2s\"",
        "",
    ))
    .await;
    let ((_client, connection), _held) = stalled_downloads(&world, 3).await;
    let started = std::time::Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(15), connection).await;
    assert!(ended.is_ok(), "the connection is still open after 15 s");
    println!(
        "closing connection with 3 stalled streams ended {:?} after the heads (idle 500ms, send_timeout 2s)",
        started.elapsed()
    );
    assert_upstream_released(&world, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_client_that_reads_gets_a_large_file_whole_despite_a_short_send_timeout() {
    let world = World::start_with(sentry_world("send_timeout = \"1s\"", "")).await;
    let (mut client, _connection) = world.h2_client().await;
    let response = world.h2_get(&mut client, LARGE_FILE, &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut received = 0;
    let read = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            received += chunk.len();
            let _ = body.flow_control().release_capacity(chunk.len());
        }
    })
    .await;
    assert!(read.is_ok(), "read {received} bytes in 60 s");
    assert_eq!(received, LARGE_BODY);
}

/// The status line of the first response on `stream` (at most 10 s).
async fn status_line(stream: &mut support::RawTls) -> String {
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        while !out.windows(2).any(|w| w == b"\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer within 10 s");
    let text = String::from_utf8_lossy(&out);
    text.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn a_request_body_that_stops_arriving_is_answered_408() {
    // The upstream read timeout (3 s in the test world) would answer 504 later.
    let world = World::start_with(sentry_world("body_idle_timeout = \"1s\"", "")).await;
    let mut stream = world.raw_tls().await;
    stream
        .write_all(
            b"POST /api/1/envelope/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{\"event_id\":",
        )
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let status = status_line(&mut stream).await;
    println!(
        "a body that stopped after 12 of 100 bytes: {status} after {:?} (body_idle_timeout 1s)",
        started.elapsed()
    );
    assert!(status.starts_with("HTTP/1.1 408"), "{status}");
    // The upstream connection of the cut request is closed.
    assert_upstream_released(&world, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_request_body_that_keeps_arriving_slowly_is_forwarded() {
    let world = World::start_with(sentry_world("body_idle_timeout = \"1s\"", "")).await;
    let mut stream = world.raw_tls().await;
    stream
        .write_all(
            b"POST /api/1/envelope/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 8\r\n\r\n",
        )
        .await
        .unwrap();
    for byte in b"{\"a\":1}\n" {
        tokio::time::sleep(Duration::from_millis(300)).await;
        stream.write_all(&[*byte]).await.unwrap();
    }
    let status = status_line(&mut stream).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(world.upstream.last().body_len, 8);
}
