//! The gateway's upstream connections (`proxy::pool`), seen from the test upstream:
//! requests one after another travel on one kept-alive connection, whether their
//! answer was read whole by the gateway (small) or streamed through (large), and
//! `Host` is what the legacy client sent (the public host, or the upstream URL's
//! authority when `upstream.pass_host_header` is off).

use crate::support;

use crate::support::browser::empty;
use crate::support::upstream::LARGE_BODY;
use crate::support::{World, WorldOptions};
use http::{Method, StatusCode};

/// Public in the Sentry preset: no sign-in needed.
const SMALL_FILE: &str = "/_static/1700000000/sentry/dist/app.js";
/// The test upstream answers [`LARGE_BODY`] bytes for it (streamed, not buffered).
const LARGE_FILE: &str = "/_static/1700000000/sentry/dist/large.js";

fn sentry_world(upstream_toml: &str) -> WorldOptions {
    WorldOptions {
        extra_toml: "[access]\npreset = \"sentry\"\n".into(),
        upstream_toml: upstream_toml.into(),
        ..Default::default()
    }
}

async fn get(browser: &mut support::Browser, path: &str) -> support::TestResponse {
    let request = browser.request(Method::GET, path).body(empty()).unwrap();
    browser.send(request).await
}

#[tokio::test]
async fn sequential_requests_share_one_upstream_connection() {
    let world = World::start_with(sentry_world("")).await;
    let mut browser = world.browser();
    let first = get(&mut browser, SMALL_FILE).await;
    assert_eq!(first.status, StatusCode::OK, "{first:?}");
    let connections = world.upstream.accepted_connections();
    for path in [SMALL_FILE, LARGE_FILE, SMALL_FILE, LARGE_FILE, SMALL_FILE] {
        let response = get(&mut browser, path).await;
        assert_eq!(response.status, StatusCode::OK, "{path}");
        if path == LARGE_FILE {
            assert_eq!(response.body.len(), LARGE_BODY, "{path}");
        }
    }
    assert_eq!(
        world.upstream.accepted_connections(),
        connections,
        "every answer, read whole or streamed, gave its connection back for the next"
    );
}

#[tokio::test]
async fn without_pass_host_header_the_upstream_sees_its_own_authority() {
    let world = World::start_with(sentry_world("pass_host_header = false")).await;
    let mut browser = world.browser();
    let response = get(&mut browser, SMALL_FILE).await;
    assert_eq!(response.status, StatusCode::OK, "{response:?}");
    let seen = world.upstream.last();
    assert_eq!(
        seen.headers["host"],
        format!("127.0.0.1:{}", world.upstream.addr.port()).as_str()
    );
    assert_eq!(seen.path_and_query, SMALL_FILE, "sent in origin form");
}
