//! What an operator sees: `/metrics` counters that move with the traffic, request ids,
//! JSON access lines without a single secret in them, and a SIGTERM that lets a slow
//! request finish before the process exits 0.

use crate::support;

use crate::support::browser::{empty, full};
use crate::support::process::{GatewayProcess, SESSION_SECRET};
use crate::support::{Browser, CLIENT_SECRET, PASSWORD, World, WorldOptions};
use http::{Method, StatusCode};

fn sentry_world(server_toml: &str) -> WorldOptions {
    WorldOptions {
        extra_toml: "[access]\npreset = \"sentry\"\nallowed_email_domains = [\"corp.example\"]\n"
            .into(),
        server_toml: server_toml.into(),
        users: vec![
            support::user("alice", "alice@corp.example", true, &["sentry:member"]),
            support::user("mallory", "mallory@elsewhere.example", true, &[]),
        ],
        ..Default::default()
    }
}

/// The value of the sample `name` (with its labels) in a scrape, 0 when absent.
fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0.0, |value| value.parse().unwrap())
}

async fn scrape(browser: &mut Browser) -> String {
    let answer = browser.navigate("/metrics").await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert!(
        answer.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    answer.body
}

#[tokio::test]
async fn metrics_count_requests_logins_and_refusals() {
    let world = World::start_with(sentry_world("")).await;
    let mut operator = world.browser();
    let before = scrape(&mut operator).await;
    assert_eq!(sample(&before, "ssogate_logins_completed_total"), 0.0);

    let mut sdk = world.browser();
    let envelope = sdk
        .request(Method::POST, "/api/1/envelope/")
        .body(full("{}"))
        .unwrap();
    assert_eq!(sdk.send(envelope).await.status, StatusCode::OK);
    let api = sdk
        .request(Method::GET, "/api/0/projects/")
        .body(empty())
        .unwrap();
    assert_eq!(sdk.send(api).await.status, StatusCode::UNAUTHORIZED);

    let mut alice = world.signed_in("alice").await;
    assert_eq!(
        alice.navigate("/organizations/").await.status,
        StatusCode::OK
    );
    let mut mallory = world.browser();
    let refused = mallory.login("/", "mallory", PASSWORD).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let mut forger = world.browser();
    let forged = forger.navigate("/oauth2/callback?code=x&state=y").await;
    assert_eq!(forged.status, StatusCode::BAD_REQUEST);

    let after = scrape(&mut operator).await;
    let moved = |name: &str| sample(&after, name) - sample(&before, name);
    assert_eq!(
        moved("ssogate_requests_total{route=\"public\",status=\"200\"}"),
        1.0
    );
    assert_eq!(
        moved("ssogate_requests_total{route=\"protected\",status=\"401\"}"),
        1.0
    );
    // alice's landing page and /organizations/
    assert_eq!(
        moved("ssogate_requests_total{route=\"protected\",status=\"200\"}"),
        2.0
    );
    assert_eq!(
        moved("ssogate_requests_total{route=\"protected\",status=\"403\"}"),
        1.0
    );
    assert_eq!(moved("ssogate_logins_started_total"), 2.0);
    assert_eq!(moved("ssogate_logins_completed_total"), 2.0);
    assert_eq!(moved("ssogate_access_refused_total"), 1.0);
    assert_eq!(
        moved("ssogate_logins_refused_total{reason=\"not_this_browser\"}"),
        1.0
    );
    assert_eq!(sample(&after, "ssogate_sessions_live"), 2.0);
    // Discovery, keys, and two token exchanges at least.
    assert!(moved("ssogate_provider_request_duration_seconds_count") >= 2.0);
    assert!(sample(&after, "ssogate_upstream_response_duration_seconds_count") >= 3.0);
    assert!(sample(&after, "ssogate_connections_open") >= 1.0);
    assert!(
        after.contains("ssogate_request_duration_seconds_bucket{route=\"public\",le=\"+Inf\"}")
    );
}

#[tokio::test]
async fn metrics_are_only_for_direct_clients_from_the_metrics_networks() {
    let world = World::start_with(sentry_world("metrics_networks = [\"10.0.0.0/8\"]")).await;
    let mut browser = world.browser();
    let answer = browser.navigate("/metrics").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);

    let world = World::start_with(sentry_world("")).await;
    let mut browser = world.browser();
    let through_a_proxy = browser
        .request(Method::GET, "/metrics")
        .header("x-forwarded-for", "203.0.113.9")
        .body(empty())
        .unwrap();
    assert_eq!(
        browser.send(through_a_proxy).await.status,
        StatusCode::NOT_FOUND
    );
    assert!(!browser.navigate("/metrics").await.body.is_empty());
}

#[tokio::test]
async fn a_metrics_listener_frees_the_path_on_the_main_one() {
    let world = World::start_with(sentry_world("metrics_listen = \"127.0.0.1:0\"")).await;
    let address = world.gateway.metrics_addr.expect("metrics listener");
    let mut scraper = Browser::new(&world.ca_pem, &format!("http://{address}"));
    let metrics = scraper.navigate("/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(
        metrics
            .body
            .contains("# TYPE ssogate_requests_total counter")
    );
    assert_eq!(scraper.navigate("/").await.status, StatusCode::NOT_FOUND);

    let mut alice = world.signed_in("alice").await;
    let upstreams = alice.navigate("/metrics").await;
    assert_eq!(upstreams.status, StatusCode::OK);
    assert_eq!(world.upstream.last().path_and_query, "/metrics");
}

#[tokio::test]
async fn request_ids_travel_upstream_and_back() {
    let world = World::start_with(sentry_world("")).await;
    let mut browser = world.browser();
    let request = browser
        .request(Method::POST, "/api/1/envelope/")
        .header("x-request-id", "chosen-by-the-client")
        .body(full("{}"))
        .unwrap();
    let answer = browser.send(request).await;
    let id = answer.headers["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(
        id, "chosen-by-the-client",
        "an untrusted client's id is replaced"
    );
    assert_eq!(id.len(), 32);
    assert_eq!(world.upstream.last().headers["x-request-id"], id.as_str());

    let world = World::start_with(sentry_world("trusted_proxies = [\"127.0.0.1\"]")).await;
    let mut browser = world.browser();
    let request = browser
        .request(Method::POST, "/api/1/envelope/")
        .header("x-request-id", "lb-4f2a-17")
        .body(full("{}"))
        .unwrap();
    let answer = browser.send(request).await;
    assert_eq!(answer.headers["x-request-id"], "lb-4f2a-17");
    assert_eq!(world.upstream.last().headers["x-request-id"], "lb-4f2a-17");
}

#[tokio::test]
async fn hsts_is_sent_when_configured() {
    let world = World::start().await;
    let mut browser = world.browser();
    let answer = browser.navigate("/ping").await;
    assert!(!answer.headers.contains_key("strict-transport-security"));

    // The same gateway (TLS with the test certificate) with `tls.hsts_max_age = "365d"`.
    let mut settings = world.gateway.gateway().settings().clone();
    settings.hsts_max_age = Some(ssogate::config::parse_duration("365d").unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let gateway = ssogate::server::start_on(listener, settings, std::future::pending())
        .await
        .unwrap();
    let mut browser = Browser::new(&world.ca_pem, &format!("https://{address}"));
    for target in ["/ping", "/api/0/projects/", "/"] {
        let answer = browser.navigate(target).await;
        assert_eq!(
            answer.headers["strict-transport-security"], "max-age=31536000",
            "{target}"
        );
    }
    gateway.shutdown().await;

    let refused = ssogate::config::Settings::from_toml(
        "[server]\npublic_url = \"https://s.example.com\"\n[tls]\nenabled = false\nhsts_max_age = \"365d\"\n",
        "(test)",
        std::iter::empty(),
    )
    .unwrap_err();
    assert!(
        refused.problems()[0]
            .to_string()
            .starts_with("tls.hsts_max_age:"),
        "{refused}"
    );
}

#[tokio::test]
async fn json_access_lines_name_the_request_and_hold_no_secret() {
    let gateway = GatewayProcess::start(&["--log-format", "json"], "", false).await;
    let mut browser = Browser::new("", &gateway.base);
    let callback = browser.login_until_callback("/", "alice", PASSWORD).await;
    let landed = browser.follow(&callback).await;
    assert_eq!(landed.status, StatusCode::OK, "{landed:?}");
    let page = browser
        .navigate("/organizations/acme/?token=query-secret")
        .await;
    let request_id = page.headers["x-request-id"].to_str().unwrap().to_owned();
    let cookies: Vec<String> = browser.cookies.values().cloned().collect();
    gateway.signal("TERM");
    let (code, out) = gateway.exit().await;
    assert_eq!(code, Some(0));

    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let access = lines
        .iter()
        .find(|line| line["request_id"] == request_id.as_str())
        .unwrap_or_else(|| panic!("no access line with {request_id} in\n{out}"));
    assert_eq!(access["target"], "ssogate::access");
    assert_eq!(access["method"], "GET");
    assert_eq!(access["path"], "/organizations/acme/");
    assert_eq!(access["route"], "protected");
    assert_eq!(access["status"], 200);
    assert_eq!(access["user"], "sub-alice");
    assert!(access["duration_us"].as_u64().is_some());
    let anonymous = lines
        .iter()
        .find(|line| line["path"] == "/oauth2/start")
        .expect("the login's start has an access line");
    assert_eq!(anonymous["user"], "-");

    let query: Vec<(String, String)> = url::Url::parse(&callback)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    let mut secrets = vec![
        CLIENT_SECRET.to_owned(),
        SESSION_SECRET.to_owned(),
        "query-secret".to_owned(),
    ];
    secrets.extend(
        query
            .into_iter()
            .filter(|(name, _)| name == "code" || name == "state")
            .map(|(_, value)| value),
    );
    secrets.extend(cookies);
    for secret in secrets.iter().filter(|s| s.len() >= 8) {
        assert!(
            !out.contains(secret.as_str()),
            "`{secret}` is in the log:\n{out}"
        );
    }
}

#[tokio::test]
async fn sigterm_lets_a_slow_request_finish_and_exits_0() {
    let gateway = GatewayProcess::start(&[], "shutdown_grace = \"10s\"", false).await;
    let base = gateway.base.clone();
    let in_flight = tokio::spawn(async move {
        let mut sdk = Browser::new("", &base);
        let request = sdk
            .request(Method::POST, "/api/1/envelope/delay")
            .body(full("{}"))
            .unwrap();
        sdk.send(request).await
    });
    gateway
        .upstream
        .await_requests("/api/1/envelope/delay", 1)
        .await;
    gateway.signal("TERM");
    let finished = in_flight.await.unwrap();
    assert_eq!(finished.status, StatusCode::OK, "{finished:?}");
    let addr = gateway.addr;
    let (code, out) = gateway.exit().await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("SIGTERM received"), "{out}");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn a_stalled_log_output_costs_log_lines_never_requests() {
    let gateway = GatewayProcess::start(&[], "", false).await;
    // Nobody reads the log: the pipe fills, then the writer thread's write blocks.
    gateway.read_output(false);
    // Far more access lines (about 190 bytes each) than the pipe and the serving
    // threads' pending buffers (2 MiB each) hold.
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let base = gateway.base.clone();
            tokio::spawn(async move {
                let mut client = Browser::new("", &base);
                let mut answered = 0;
                for _ in 0..5000 {
                    if client.navigate("/ping").await.status == StatusCode::OK {
                        answered += 1;
                    }
                }
                answered
            })
        })
        .collect();
    for client in clients {
        assert_eq!(client.await.unwrap(), 5000, "every request is answered");
    }
    let metrics = scrape(&mut Browser::new("", &gateway.base)).await;
    let dropped = sample(&metrics, "ssogate_log_lines_dropped_total");
    println!("log lines dropped while the output was stalled: {dropped}");
    assert!(dropped > 0.0, "{metrics}");

    // Read again: the writer catches up and says what was lost.
    gateway.read_output(true);
    for _ in 0..200 {
        if gateway.output().contains("log lines dropped") {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!(
        "no line about the dropped lines in:\n{}",
        gateway
            .output()
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
}
