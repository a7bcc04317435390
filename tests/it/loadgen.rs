//! `ssogate bench`, the load generator for load-testers, run as they run it: against a
//! real gateway (Sentry preset, development provider, test upstream) on loopback, for
//! a couple of seconds each.

use std::collections::BTreeMap;
use std::process::Output;

use crate::support::{World, WorldOptions};

async fn sentry_world() -> World {
    World::start_with(WorldOptions {
        extra_toml: "[access]\npreset = \"sentry\"\n".into(),
        // Its own listener for /metrics: the scrapes are not counted with the run.
        server_toml: "metrics_listen = \"127.0.0.1:0\"".into(),
        ..Default::default()
    })
    .await
}

/// `ssogate bench <args>` to the end; the gateway keeps serving meanwhile.
async fn bench(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_ssogate"))
        .arg("bench")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .await
        .expect("ssogate bench runs")
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The rows `| name | value |` of the report's section `heading`, by name.
fn section(report: &str, heading: &str) -> BTreeMap<String, String> {
    let start = report
        .find(&format!("## {heading}\n"))
        .unwrap_or_else(|| panic!("no section {heading}:\n{report}"));
    let text = &report[start..];
    let text = &text[..text[3..].find("\n## ").map_or(text.len(), |end| end + 3)];
    let lines: Vec<&str> = text.lines().collect();
    lines
        .iter()
        .enumerate()
        // Not a table's header row (the one above `|---|`).
        .filter(|(at, _)| {
            !lines
                .get(at + 1)
                .is_some_and(|next| next.starts_with("|---"))
        })
        .filter_map(|(_, line)| {
            let cells: Vec<&str> = line.strip_prefix("| ")?.split(" | ").collect();
            (cells.len() == 2).then(|| {
                (
                    cells[0].to_owned(),
                    cells[1].trim_end_matches(" |").to_owned(),
                )
            })
        })
        .collect()
}

/// The number in a report row `| <name> | <number> ...`.
fn row_number(report: &str, name: &str) -> u64 {
    let prefix = format!("| {name} | ");
    let line = report
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no row `{name}` in the report:\n{report}"));
    line[prefix.len()..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("no number in `{line}`"))
}

struct Gateway {
    world: World,
    ca_file: tempfile::NamedTempFile,
}

impl Gateway {
    async fn start() -> Gateway {
        let world = sentry_world().await;
        let ca_file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(ca_file.path(), &world.ca_pem).unwrap();
        Gateway { world, ca_file }
    }

    fn ca(&self) -> &str {
        self.ca_file.path().to_str().unwrap()
    }

    /// The gateway's own `/metrics`, on its metrics listener.
    fn metrics_url(&self) -> String {
        let address = self.world.gateway.metrics_addr.expect("a metrics listener");
        format!("http://{address}/metrics")
    }

    /// The cookies of a browser that signed in through the provider, as `--cookie` takes them.
    async fn session_cookie(&self) -> String {
        let browser = self.world.signed_in("alice").await;
        let pairs: Vec<String> = browser
            .cookies
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        assert!(!pairs.is_empty(), "signed in without a cookie");
        pairs.join("; ")
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_that_is_not_loopback_is_refused_unless_named() {
    let output = bench(&["https://sentry.example.com", "--mix", "api=1"]).await;
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(2), "{stdout}{stderr}");
    assert_eq!(
        stderr.trim(),
        "ssogate bench: sentry.example.com is not a loopback address; to load-test it, \
         name it exactly: --allow-host sentry.example.com"
    );
    assert!(stdout.is_empty(), "no report: {stdout}");

    let output = bench(&[
        "https://sentry.example.com",
        "--mix",
        "api=1",
        "--allow-host",
        "example.com",
    ])
    .await;
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr.contains(
            "--allow-host example.com does not name the target's host sentry.example.com"
        ),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_in_mix_through_the_gateway_has_no_errors_and_writes_the_report() {
    let gateway = Gateway::start().await;
    let cookie = gateway.session_cookie().await;
    let report_file = tempfile::NamedTempFile::new().unwrap();
    let output = bench(&[
        &gateway.world.base,
        "--ca-file",
        gateway.ca(),
        "--mix",
        "envelope=2,api=2,token=1",
        "--dsn-key",
        "publickey",
        "--project",
        "42",
        "--cookie",
        &cookie,
        "--token",
        "sntrys_loadtest",
        "--connections",
        "4",
        "--duration",
        "2s",
        "--report",
        report_file.path().to_str().unwrap(),
    ])
    .await;
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}{stderr}");
    let report = std::fs::read_to_string(report_file.path()).unwrap();
    assert_eq!(report, stdout, "the file holds the printed report");

    let sent = row_number(&report, "requests sent");
    assert!(sent >= 20, "a few requests in 2 s at least:\n{report}");
    assert_eq!(row_number(&report, "answered ok (2xx)"), sent, "{report}");
    assert_eq!(row_number(&report, "errors"), 0, "{report}");
    assert!(report.contains("## Errors\n\nNone."), "{report}");
    for scenario in ["envelope", "api", "token", "all"] {
        assert!(
            row_number(&report, scenario) > 0,
            "latency row for {scenario}:\n{report}"
        );
    }
    assert!(
        stderr.contains(" req/s ") && stderr.contains("p99"),
        "a live line every second: {stderr}"
    );

    // What reached the upstream is what the report counted, shaped like Sentry's clients.
    let seen = gateway.world.upstream.requests();
    let envelopes: Vec<_> = seen
        .iter()
        .filter(|r| r.path_and_query == "/api/42/envelope/")
        .collect();
    assert_eq!(
        envelopes.len() as u64,
        row_number(&report, "envelope"),
        "{report}"
    );
    let envelope = envelopes[0];
    assert_eq!(envelope.method, "POST");
    assert!(
        envelope.headers["x-sentry-auth"]
            .to_str()
            .unwrap()
            .contains("sentry_key=publickey")
    );
    let api = seen
        .iter()
        .find(|r| r.path_and_query == "/api/0/organizations/")
        .expect("the api scenario reached the upstream");
    assert_eq!(api.headers["accept"], "application/json; charset=utf-8");
    assert_eq!(
        api.headers["x-forwarded-user"], "sub-alice",
        "signed in as the cookie's user"
    );
    assert!(seen.iter().any(|r| r.path_and_query == "/api/0/projects/"
        && r.headers["authorization"] == "Bearer sntrys_loadtest"));
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_cookie_the_api_scenario_is_refused_for_sign_in() {
    let gateway = Gateway::start().await;
    let output = bench(&[
        &gateway.world.base,
        "--ca-file",
        gateway.ca(),
        "--mix",
        "api=1",
        "--connections",
        "2",
        "--duration",
        "1s",
        "--quiet",
    ])
    .await;
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}{stderr}");
    let sent = row_number(&stdout, "requests sent");
    assert!(sent > 0, "{stdout}");
    assert_eq!(row_number(&stdout, "answered ok (2xx)"), 0, "{stdout}");
    assert!(
        stdout.contains(&format!(
            "| api | sign-in refusal (401) | {sent} | 100.0% |"
        )),
        "every request refused for sign-in:\n{stdout}"
    );
    assert!(stderr.is_empty(), "--quiet: {stderr}");
    assert!(
        !gateway
            .world
            .upstream
            .requests()
            .iter()
            .any(|r| r.path_and_query.starts_with("/api/0/")),
        "none reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_open_loop_run_sends_at_the_rate_asked() {
    let gateway = Gateway::start().await;
    let began = std::time::Instant::now();
    let output = bench(&[
        &gateway.world.base,
        "--ca-file",
        gateway.ca(),
        "--mix",
        "envelope=1",
        "--dsn-key",
        "publickey",
        "--rate",
        "100/s",
        "--duration",
        "2s",
        "--http2",
    ])
    .await;
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("| load | open loop, 100/s (latency from the due time) |"),
        "{stdout}"
    );
    // 200 due over 2 s, each sent when due (a slow machine sends late, never early).
    let took = began.elapsed();
    assert!(
        took >= std::time::Duration::from_millis(1900),
        "paced over the run, not sent at once: {took:?}"
    );
    assert!(
        stdout.contains("| requests sent | 200 (100.0/s) |"),
        "{stdout}"
    );
    let sent = row_number(&stdout, "requests sent");
    assert_eq!(row_number(&stdout, "errors"), 0, "{stdout}");
    assert_eq!(
        gateway
            .world
            .upstream
            .requests()
            .iter()
            .filter(|r| r.path_and_query == "/api/1/envelope/")
            .count() as u64,
        sent
    );
}

/// The route class the gateway counts a scenario's requests in (Sentry preset).
fn class_of(scenario: &str) -> &'static str {
    match scenario {
        "api" => "protected",
        _ => "public",
    }
}

/// For each scenario and each load model, the report's answers agree exactly with
/// what the gateway's `/metrics` counted over the run: per route class and status, in
/// all, and the connections.
#[tokio::test(flavor = "multi_thread")]
async fn the_reports_counts_agree_with_the_gateways_metrics() {
    let gateway = Gateway::start().await;
    let cookie = gateway.session_cookie().await;
    let metrics = gateway.metrics_url();
    for scenario in ["envelope", "api", "token"] {
        for load in [["--connections", "2"], ["--rate", "40/s"]] {
            let mix = format!("{scenario}=1");
            let output = bench(&[
                &gateway.world.base,
                "--ca-file",
                gateway.ca(),
                "--mix",
                &mix,
                "--dsn-key",
                "publickey",
                "--cookie",
                &cookie,
                "--token",
                "sntrys_loadtest",
                load[0],
                load[1],
                "--duration",
                "1s",
                "--metrics",
                &metrics,
                "--quiet",
            ])
            .await;
            let (report, stderr) = text(&output);
            assert!(output.status.success(), "{report}{stderr}");
            let context = format!("{scenario} {load:?}:\n{report}");

            let sent = row_number(&report, "requests sent");
            assert!(sent > 0, "{context}");
            assert_eq!(row_number(&report, "answered ok (2xx)"), sent, "{context}");
            let answers = section(&report, "Answers by status");
            let figures = section(&report, "The gateway's figures over the run");
            let mut counted = 0;
            for (name, count) in &answers {
                let (answered_scenario, status) = name.split_once(' ').unwrap();
                assert_eq!(answered_scenario, scenario, "{context}");
                let row = format!("requests {} {status}", class_of(scenario));
                assert_eq!(figures.get(&row), Some(count), "{row}: {context}");
                counted += count.parse::<u64>().unwrap();
            }
            assert_eq!(counted, sent, "{context}");
            assert_eq!(
                figures["requests (all)"],
                sent.to_string(),
                "the gateway counted nothing else: {context}"
            );
            let requests_rows = figures
                .keys()
                .filter(|k| k.starts_with("requests "))
                .count();
            assert_eq!(requests_rows, 1 + answers.len(), "{context}");
            assert_eq!(
                figures["connections accepted"],
                row_number(&report, "connections opened").to_string(),
                "{context}"
            );
            assert_eq!(figures["logins completed"], "0", "{context}");
            assert_eq!(figures["sessions live"], "1 → 1", "alice's: {context}");
        }
    }
}

/// A tiny ramp: each step sends exactly its rate for its second; every step within the
/// limits names no knee, and a target over the limits stops the ramp at its first step.
#[tokio::test(flavor = "multi_thread")]
async fn a_ramp_steps_up_and_stops_at_the_first_step_over_a_limit() {
    let gateway = Gateway::start().await;
    let metrics = gateway.metrics_url();
    let output = bench(&[
        &gateway.world.base,
        "--ca-file",
        gateway.ca(),
        "--mix",
        "token=1",
        "--token",
        "sntrys_loadtest",
        "--ramp",
        "10..30/s",
        "--step",
        "10",
        "--step-duration",
        "1s",
        "--max-errors",
        "1%",
        "--max-p99",
        "10s",
        "--metrics",
        &metrics,
    ])
    .await;
    let (report, stderr) = text(&output);
    assert!(output.status.success(), "{report}{stderr}");
    let ramp = section(&report, "Ramp");
    for (step, asked) in [("1", "10/s"), ("2", "20/s"), ("3", "30/s")] {
        let row = report
            .lines()
            .find(|l| l.starts_with(&format!("| {step} | {asked} | ")))
            .unwrap_or_else(|| panic!("no step {step}:\n{report}"));
        assert!(row.ends_with(" | 0.00% (0) | yes |"), "{row}");
    }
    assert!(ramp.is_empty(), "8 columns, not name | value: {ramp:?}");
    assert!(report.contains("3 of 3 steps of 1s each"), "{report}");
    assert!(report.contains("**Knee: none found**"), "{report}");
    assert_eq!(row_number(&report, "requests sent"), 60, "{report}");
    let figures = section(&report, "The gateway's figures over the run");
    assert_eq!(figures["requests public 200"], "60", "{report}");
    assert_eq!(
        stderr.matches("step ").count(),
        3,
        "a line per step: {stderr}"
    );

    // Without a cookie every api request is refused: over --max-errors at once.
    let output = bench(&[
        &gateway.world.base,
        "--ca-file",
        gateway.ca(),
        "--mix",
        "api=1",
        "--ramp",
        "10..30/s",
        "--step-duration",
        "1s",
        "--max-errors",
        "1%",
        "--quiet",
    ])
    .await;
    let (report, stderr) = text(&output);
    assert!(output.status.success(), "{report}{stderr}");
    assert!(report.contains("1 of 3 steps of 1s each"), "{report}");
    assert!(
        report.contains("| 1 | 10/s | 0.0/s | - | - | - | 100.00% (10) | no: errors 100.0% > 1% |"),
        "{report}"
    );
    assert!(report.contains("**Knee: below 10/s**"), "{report}");
    assert_eq!(row_number(&report, "requests sent"), 10, "{report}");
}

/// With --new-connections each request has a TLS handshake of its own, and the gateway
/// accepted exactly as many connections.
#[tokio::test(flavor = "multi_thread")]
async fn new_connections_make_a_handshake_per_request() {
    let gateway = Gateway::start().await;
    let metrics = gateway.metrics_url();
    for http2 in [false, true] {
        let mut args = vec![
            gateway.world.base.as_str(),
            "--ca-file",
            gateway.ca(),
            "--mix",
            "token=1",
            "--token",
            "sntrys_loadtest",
            "--connections",
            "2",
            "--duration",
            "1s",
            "--new-connections",
            "--metrics",
            &metrics,
            "--quiet",
        ];
        if http2 {
            args.push("--http2");
        }
        let output = bench(&args).await;
        let (report, stderr) = text(&output);
        assert!(output.status.success(), "{report}{stderr}");
        let sent = row_number(&report, "requests sent");
        assert!(sent > 0, "{report}");
        assert_eq!(row_number(&report, "errors"), 0, "{report}");
        assert_eq!(row_number(&report, "connections opened"), sent, "{report}");
        assert_eq!(row_number(&report, "TLS handshakes"), sent, "{report}");
        let figures = section(&report, "The gateway's figures over the run");
        assert_eq!(
            figures["connections accepted"],
            sent.to_string(),
            "{report}"
        );
        assert_eq!(figures["requests (all)"], sent.to_string(), "{report}");
        assert!(report.contains("a new connection per request"), "{report}");
    }
}

/// Logins per second against `ssogate demo` (its development provider and upstream):
/// each login is one request of the report, and the gateway counted each one's
/// requests, its login and its session; /metrics is on the listener under test, and
/// the bench leaves its own scrapes out.
#[tokio::test(flavor = "multi_thread")]
async fn logins_through_the_demo_provider_land_and_are_counted() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let demo = ssogate::demo::start(0, std::future::pending())
        .await
        .expect("the demo starts");
    let base = demo.url.trim_end_matches('/').to_owned();
    let ca_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca_file.path(), &demo.ca_pem).unwrap();
    let ca = ca_file.path().to_str().unwrap();
    let users = tempfile::NamedTempFile::new().unwrap();
    let pool = format!(
        "# the demo's one user, twice\n{0}:{1}\n{0}:{1}\n",
        demo.username, demo.password
    );
    std::fs::write(users.path(), pool).unwrap();
    let metrics = format!("{base}/metrics");
    let mut landed = 0;
    for load in [["--connections", "2"], ["--rate", "10/s"]] {
        let output = bench(&[
            &base,
            "--ca-file",
            ca,
            "--mix",
            "login=1",
            "--users",
            users.path().to_str().unwrap(),
            load[0],
            load[1],
            "--duration",
            "1s",
            "--metrics",
            &metrics,
            "--quiet",
        ])
        .await;
        let (report, stderr) = text(&output);
        assert!(output.status.success(), "{report}{stderr}");
        let logins = row_number(&report, "requests sent");
        assert!(logins > 0, "{report}");
        if load[0] == "--rate" {
            assert_eq!(logins, 10, "{report}");
        }
        assert_eq!(row_number(&report, "answered ok (2xx)"), logins, "{report}");
        assert!(
            row_number(&report, "login") == logins,
            "latency row: {report}"
        );
        let figures = section(&report, "The gateway's figures over the run");
        let n = logins.to_string();
        let twice = (2 * logins).to_string();
        for (row, expected) in [
            ("logins started", &n),
            ("logins completed", &n),
            // The page without a session, and with one.
            ("requests protected 302", &n),
            ("requests protected 200", &n),
            // The sign-in page; /oauth2/start and the callback.
            ("requests gateway 200", &n),
            ("requests gateway 302", &twice),
            ("requests (all)", &(5 * logins).to_string()),
        ] {
            assert_eq!(figures.get(row), Some(expected), "{row}: {report}");
        }
        assert_eq!(
            figures["sessions live"],
            format!("{landed} → {}", landed + logins),
            "{report}"
        );
        assert!(report.contains("are left out"), "{report}");
        landed += logins;
    }

    // A wrong password is a failed login, not a landing.
    let output = bench(&[
        &base,
        "--ca-file",
        ca,
        "--mix",
        "login=1",
        "--user",
        "demo",
        "--password",
        "wrong",
        "--rate",
        "5/s",
        "--duration",
        "1s",
        "--quiet",
    ])
    .await;
    let (report, stderr) = text(&output);
    assert!(output.status.success(), "{report}{stderr}");
    assert!(
        report.contains(
            "| login | login failed: the provider refused the credentials | 5 | 100.0% |"
        ),
        "{report}"
    );

    // The api scenario signs in once with the user when no cookie is given.
    let output = bench(&[
        &base,
        "--ca-file",
        ca,
        "--mix",
        "api=1",
        "--user",
        "demo",
        "--password",
        "demo",
        "--connections",
        "2",
        "--duration",
        "1s",
        "--quiet",
    ])
    .await;
    let (report, stderr) = text(&output);
    assert!(output.status.success(), "{report}{stderr}");
    let sent = row_number(&report, "requests sent");
    assert!(sent > 0, "{report}");
    assert_eq!(row_number(&report, "answered ok (2xx)"), sent, "{report}");
    assert!(
        report.contains("GET /api/0/organizations/ with the session cookie"),
        "{report}"
    );
}
