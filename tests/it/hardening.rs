//! What an attacker or a careless client tries: request smuggling, oversized heads and
//! bodies, slow and idle connections, too many connections, an upstream that does not
//! connect. Each gets the right status (or a closed connection), and the gateway keeps
//! serving everyone else.

use crate::support;

use std::time::Duration;

use crate::support::browser::{empty, full};
use crate::support::{World, WorldOptions};
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The Sentry preset, so that SDK paths reach the upstream without a session: a
/// smuggled request would get through, if anything did.
fn sentry_world(server_toml: &str) -> WorldOptions {
    WorldOptions {
        extra_toml: "[access]\npreset = \"sentry\"\n".into(),
        server_toml: server_toml.into(),
        ..Default::default()
    }
}

/// Everything the gateway sends until it closes the connection (None: still open
/// after 5 s).
async fn read_until_closed(stream: &mut support::RawTls) -> Option<String> {
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok()
        .map(|()| String::from_utf8_lossy(&out).into_owned())
}

/// The status lines of the responses in `text` (a body may run into the next one).
fn status_lines(text: &str) -> Vec<&str> {
    text.match_indices("HTTP/1.1 ")
        .map(|(at, _)| text[at..].lines().next().unwrap_or_default())
        .collect()
}

/// Requests that frame a message two ways, or break HTTP/1.1's syntax. Each is sent
/// before a second, well-formed request on the same connection, which must never
/// reach the upstream as a request of its own.
const SMUGGLING: [(&str, &str); 11] = [
    (
        "Content-Length twice, different",
        "POST /api/1/envelope/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\nContent-Length: 36\r\n\r\nhello",
    ),
    (
        "Content-Length and Transfer-Encoding",
        "POST /api/1/envelope/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "Transfer-Encoding and Content-Length",
        "POST /api/1/envelope/ HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    ),
    (
        "Transfer-Encoding not chunked",
        "POST /api/1/envelope/ HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    ),
    (
        "Transfer-Encoding with a space before the colon",
        "POST /api/1/envelope/ HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    ),
    (
        "obs-fold",
        "POST /api/1/envelope/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Note: a\r\n Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    ),
    (
        "bare LF in the head",
        "POST /api/1/envelope/ HTTP/1.1\r\nHost: a\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    ),
    (
        "bare LF in a chunk line",
        "POST /api/1/envelope/ HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
    ),
    (
        "invalid header name",
        "POST /api/1/envelope/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent Length: 5\r\n\r\nhello",
    ),
    (
        "two Host headers",
        "GET /api/1/envelope/ HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: b\r\n\r\n",
    ),
    (
        "Content-Length with a sign",
        "POST /api/1/envelope/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: +5\r\n\r\nhello",
    ),
];

const FOLLOWING: &str = "GET /api/1/store/?smuggled=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

#[tokio::test]
async fn well_framed_pipelined_requests_reach_the_upstream_one_each() {
    // The control for the smuggling test: the same connection and paths, well framed.
    let world = World::start_with(sentry_world("")).await;
    let mut stream = world.raw_tls().await;
    let requests = format!(
        "POST /api/1/envelope/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n\r\nhello\
         POST /api/1/envelope/ HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n\
         {}",
        FOLLOWING.replace("HTTP/1.1\r\n", "HTTP/1.1\r\nConnection: close\r\n")
    );
    stream.write_all(requests.as_bytes()).await.unwrap();
    let answer = read_until_closed(&mut stream).await.expect("closed");
    assert_eq!(
        status_lines(&answer),
        ["HTTP/1.1 200 OK", "HTTP/1.1 200 OK", "HTTP/1.1 200 OK"],
        "{answer}"
    );
    let seen: Vec<String> = world
        .upstream
        .requests()
        .iter()
        .map(|r| format!("{} {} {}", r.method, r.path_and_query, r.body_len))
        .collect();
    assert_eq!(
        seen,
        [
            "POST /api/1/envelope/ 5",
            "POST /api/1/envelope/ 5",
            "GET /api/1/store/?smuggled=1 0"
        ]
    );
}

#[tokio::test]
async fn ambiguous_framing_gets_400_and_a_closed_connection() {
    let world = World::start_with(sentry_world("")).await;
    for (case, request) in SMUGGLING {
        // Whole, and one byte at a time (each byte its own TLS record).
        for bytewise in [false, true] {
            let before = world.upstream.requests().len();
            let mut stream = world.raw_tls().await;
            let sent = format!("{request}{FOLLOWING}");
            if bytewise {
                for byte in sent.as_bytes() {
                    if stream.write_all(&[*byte]).await.is_err() {
                        break;
                    }
                    let _ = stream.flush().await;
                }
            } else {
                stream.write_all(sent.as_bytes()).await.unwrap();
            }
            let answer = read_until_closed(&mut stream)
                .await
                .unwrap_or_else(|| panic!("{case} (bytewise {bytewise}): connection left open"));
            assert_eq!(
                status_lines(&answer),
                ["HTTP/1.1 400 Bad Request"],
                "{case} (bytewise {bytewise}): {answer}"
            );
            let reached: Vec<String> = world.upstream.requests()[before..]
                .iter()
                .map(|r| r.path_and_query.clone())
                .collect();
            assert!(
                !reached.iter().any(|p| p.contains("smuggled")),
                "{case}: the following request reached the upstream: {reached:?}"
            );
        }
    }
    let mut browser = world.browser();
    assert_eq!(browser.navigate("/ping").await.status, StatusCode::OK);
}

#[tokio::test]
async fn oversized_head_gets_431() {
    let world = World::start_with(sentry_world("max_header_size = \"8KiB\"")).await;
    let mut browser = world.browser();
    let big = "x".repeat(10 * 1024);
    let request = browser
        .request(Method::GET, "/api/1/store/")
        .header("x-padding", &big)
        .body(empty())
        .unwrap();
    let answer = browser.send(request).await;
    assert_eq!(answer.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);

    let mut h2 = support::Browser::with_alpn(&world.ca_pem, &world.base, true);
    let request = h2
        .request(Method::GET, "/api/1/store/")
        .version(http::Version::HTTP_2)
        .header("x-padding", &big)
        .body(empty())
        .unwrap();
    let answer = h2.send(request).await;
    assert_eq!(answer.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);

    let request = browser
        .request(Method::GET, "/api/1/store/")
        .header("x-padding", "x".repeat(4 * 1024))
        .body(empty())
        .unwrap();
    assert_eq!(browser.send(request).await.status, StatusCode::OK);
}

#[tokio::test]
async fn oversized_body_gets_413_as_json_for_api_clients() {
    let world = World::start_with(sentry_world("max_body_size = \"64KiB\"")).await;
    let mut browser = world.browser();
    let request = browser
        .request(Method::POST, "/api/1/envelope/")
        .header("content-type", "application/x-sentry-envelope")
        .body(full(vec![b'e'; 65 * 1024]))
        .unwrap();
    let answer = browser.send(request).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE, "{answer:?}");
    // The body was not read: the connection closes, and says so, so that the client
    // does not send its next request where it would be lost.
    assert_eq!(answer.headers["connection"], "close", "{answer:?}");
    let json: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(json["error"], "payload_too_large");
    assert!(json["message"].as_str().unwrap().contains("65536 bytes"));
    assert!(
        world.upstream.requests().is_empty(),
        "nothing was forwarded"
    );

    // Without a Content-Length (chunked), the limit holds while streaming.
    let chunks = futures_util::stream::iter((0..20).map(|_| {
        Ok::<_, support::browser::BoxError>(hyper::body::Frame::data(bytes::Bytes::from(vec![
            b'c';
            8192
        ])))
    }));
    let body = http_body_util::BodyExt::boxed_unsync(http_body_util::StreamBody::new(chunks));
    let request = browser
        .request(Method::POST, "/api/1/envelope/")
        .body(body)
        .unwrap();
    let answer = browser.send(request).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE, "{answer:?}");
    assert_eq!(answer.headers["connection"], "close", "{answer:?}");
    assert!(
        world
            .upstream
            .requests()
            .iter()
            .all(|r| r.body_len <= 64 * 1024),
        "the upstream never got more than the limit"
    );

    let request = browser
        .request(Method::POST, "/api/1/envelope/")
        .body(full(vec![b'e'; 64 * 1024]))
        .unwrap();
    assert_eq!(browser.send(request).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_refusal_before_the_body_is_read_closes_the_connection_and_loses_no_next_request() {
    let world = World::start().await;
    let mut browser = world.browser();
    for round in 0..5 {
        // Refused without a session: the gateway answers before it has read the body.
        let request = browser
            .request(Method::POST, "/api/0/projects/acme/web/files/dsyms/")
            .header("content-type", "application/octet-stream")
            .body(full(vec![b'd'; 4 << 20]))
            .unwrap();
        let refused = browser.send(request).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{refused:?}");
        assert_eq!(
            refused.headers["connection"], "close",
            "round {round}: {refused:?}"
        );
        // The client's next request is not sent on the closing connection.
        let request = browser.request(Method::GET, "/ping").body(empty()).unwrap();
        assert_eq!(
            browser.send(request).await.status,
            StatusCode::OK,
            "round {round}"
        );
    }
    // A refusal of a request without a body keeps the connection.
    let request = browser
        .request(Method::GET, "/api/0/organizations/")
        .body(empty())
        .unwrap();
    let refused = browser.send(request).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert!(refused.headers.get("connection").is_none(), "{refused:?}");
    assert!(
        world.upstream.requests().is_empty(),
        "nothing was forwarded"
    );
}

#[tokio::test]
async fn slow_loris_and_idle_connections_are_closed_after_the_header_timeout() {
    let world = World::start_with(sentry_world("header_read_timeout = \"1s\"")).await;
    // A head sent one byte every 200 ms: 60 bytes would take 12 s.
    let mut slow = world.raw_tls().await;
    let mut closed_while_sending = false;
    for byte in format!(
        "GET /api/1/store/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: {}",
        "s".repeat(30)
    )
    .bytes()
    {
        if slow.write_all(&[byte]).await.is_err() || slow.flush().await.is_err() {
            closed_while_sending = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rest = read_until_closed(&mut slow).await;
    assert!(
        closed_while_sending || rest.is_some(),
        "a slow head must not hold the connection"
    );
    assert!(world.upstream.requests().is_empty());

    // A kept-alive connection that goes quiet is closed too.
    let mut idle = world.raw_tls().await;
    idle.write_all(b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut idle)
        .await
        .expect("idle connection closed");
    assert_eq!(status_lines(&answer), ["HTTP/1.1 200 OK"]);
}

#[tokio::test]
async fn connections_over_the_limit_wait_until_one_ends() {
    let world = World::start_with(sentry_world("max_connections = 2")).await;
    let first = world.raw_tls().await;
    let mut second = world.raw_tls().await;
    second
        .write_all(b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    assert!(second.read(&mut buf).await.unwrap() > 0, "second is served");

    // The third connects (the kernel's backlog) but is not accepted yet.
    let third = tokio::spawn({
        let ca = world.ca_pem.clone();
        let base = world.base.clone();
        async move {
            let mut browser = support::Browser::new(&ca, &base);
            browser.navigate("/ping").await.status
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!third.is_finished(), "the third waits while two are open");
    let metrics = world.gateway.gateway().metrics().render(0);
    drop(first);
    let status = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("the third is served once the first has gone")
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(
        metrics.contains("ssogate_connections_open 2"),
        "at the limit: {metrics}"
    );
}

#[tokio::test]
async fn http2_connections_advertise_the_stream_limit() {
    let world = World::start_with(sentry_world("http2_max_streams = 7")).await;
    let (mut client, _connection) = world.h2_client().await;
    let response = world.h2_get(&mut client, "/ping", &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(client.current_max_send_streams(), 7);
}

#[tokio::test]
async fn an_upstream_that_never_accepts_is_a_504() {
    // A listener with a backlog of one that never accepts: once its queue is full,
    // the kernel ignores further connection attempts, and connecting hangs.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let address = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        if let Ok(Ok(stream)) = tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect(address),
        )
        .await
        {
            fillers.push(stream);
        }
    }
    let world = World::start_with(WorldOptions {
        upstream_url: Some(format!("http://{address}")),
        upstream_toml: "connect_timeout = \"1s\"".into(),
        extra_toml: "[access]\npreset = \"sentry\"\n".into(),
        ..Default::default()
    })
    .await;
    let mut browser = world.browser();
    let request = browser
        .request(Method::POST, "/api/1/envelope/")
        .body(full("{}"))
        .unwrap();
    let answer = browser.send(request).await;
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT, "{answer:?}");
    let json: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(json["error"], "gateway_timeout");
    let metrics = world.gateway.gateway().metrics().render(0);
    assert!(
        metrics.contains("ssogate_upstream_failures_total{reason=\"timeout\"} 1"),
        "{metrics}"
    );
    drop(listener);
}

#[tokio::test]
async fn idle_http2_connections_get_goaway_but_requests_in_flight_finish() {
    let world = World::start_with(sentry_world("idle_timeout = \"500ms\"")).await;
    let (mut client, connection) = world.h2_client().await;
    // Longer than the idle timeout, but in flight: it must finish.
    let response = world.h2_get(&mut client, "/api/1/store/delay", &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
    // Then nothing: the gateway says GOAWAY and the connection ends.
    let ended = tokio::time::timeout(Duration::from_secs(5), connection).await;
    assert!(ended.is_ok(), "an idle HTTP/2 connection is closed");
}
