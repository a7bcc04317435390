//! `ssogate bench`, the load generator for load-testers, run as they run it: against a
//! real gateway (Sentry preset, development provider, test upstream) on loopback, for
//! a couple of seconds each.

use std::collections::BTreeMap;

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

/// One `ssogate bench` run: the target, then only the options a test cares about
/// (`--duration 1s` and `--quiet` unless the test says otherwise).
struct Bench {
    args: Vec<String>,
    duration: Option<String>,
    quiet: bool,
}

impl Bench {
    /// Against `url`, trusting the CA in `ca_file` when given.
    fn at(url: &str, ca_file: Option<&str>) -> Bench {
        let mut args = vec![url.to_owned()];
        if let Some(ca) = ca_file {
            args.extend(["--ca-file".to_owned(), ca.to_owned()]);
        }
        Bench {
            args,
            duration: Some("1s".into()),
            quiet: true,
        }
    }

    /// Through the test gateway.
    fn through(gateway: &Gateway) -> Bench {
        Bench::at(&gateway.world.base, Some(gateway.ca()))
    }

    /// More options, as on the command line.
    fn with(mut self, args: &[&str]) -> Bench {
        self.args.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    fn mix(self, mix: &str) -> Bench {
        self.with(&["--mix", mix])
    }

    fn duration(mut self, duration: &str) -> Bench {
        self.duration = Some(duration.to_owned());
        self
    }

    /// For ramps, whose length is their steps'.
    fn no_duration(mut self) -> Bench {
        self.duration = None;
        self
    }

    /// With the live lines on standard error.
    fn live(mut self) -> Bench {
        self.quiet = false;
        self
    }

    /// `ssogate bench` to the end; the gateway keeps serving meanwhile.
    async fn run(self) -> Ran {
        let mut args = self.args;
        if let Some(duration) = self.duration {
            args.extend(["--duration".to_owned(), duration]);
        }
        if self.quiet {
            args.push("--quiet".to_owned());
        }
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_ssogate"))
            .arg("bench")
            .args(&args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .output()
            .await
            .expect("ssogate bench runs");
        Ran {
            report: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            code: output.status.code(),
        }
    }

    /// [`Bench::run`], which must succeed.
    async fn report(self) -> Ran {
        let ran = self.run().await;
        assert_eq!(ran.code, Some(0), "{}{}", ran.report, ran.stderr);
        ran
    }
}

/// What a run printed: the report on standard output, live lines or errors on
/// standard error.
struct Ran {
    report: String,
    stderr: String,
    code: Option<i32>,
}

impl Ran {
    /// The number in the report's row `name`.
    fn number(&self, name: &str) -> u64 {
        row_number(&self.report, name)
    }

    /// The rows of the report's section `heading`, by name.
    fn section(&self, heading: &str) -> BTreeMap<String, String> {
        section(&self.report, heading)
    }

    fn contains(&self, text: &str) -> bool {
        self.report.contains(text)
    }

    /// Requests were sent and every one was answered ok: how many.
    fn all_ok(&self) -> u64 {
        let sent = self.number("requests sent");
        assert!(sent > 0, "{}", self.report);
        assert_eq!(self.number("answered ok (2xx)"), sent, "{}", self.report);
        sent
    }
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
    let ran = Bench::at("https://sentry.example.com", None)
        .mix("api=1")
        .run()
        .await;
    assert_eq!(ran.code, Some(2), "{}{}", ran.report, ran.stderr);
    assert_eq!(
        ran.stderr.trim(),
        "ssogate bench: sentry.example.com is not a loopback address; to load-test it, \
         name it exactly: --allow-host sentry.example.com"
    );
    assert!(ran.report.is_empty(), "no report: {}", ran.report);

    let ran = Bench::at("https://sentry.example.com", None)
        .mix("api=1")
        .with(&["--allow-host", "example.com"])
        .run()
        .await;
    assert_eq!(ran.code, Some(2));
    assert!(
        ran.stderr.contains(
            "--allow-host example.com does not name the target's host sentry.example.com"
        ),
        "{}",
        ran.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_in_mix_through_the_gateway_has_no_errors_and_writes_the_report() {
    let gateway = Gateway::start().await;
    let cookie = gateway.session_cookie().await;
    let dir = tempfile::tempdir().unwrap();
    let report_file = dir.path().join("run.md");
    let ran = Bench::through(&gateway)
        .mix("envelope=2,api=2,token=1")
        .with(&[
            "--dsn-key",
            "publickey",
            "--project",
            "42",
            "--cookie",
            &cookie,
        ])
        .with(&["--token", "sntrys_loadtest", "--connections", "4"])
        .with(&["--report", report_file.to_str().unwrap()])
        .duration("2s")
        .live()
        .report()
        .await;
    let report = std::fs::read_to_string(&report_file).unwrap();
    assert_eq!(report, ran.report, "the file holds the printed report");

    let sent = ran.all_ok();
    assert!(sent >= 20, "a few requests in 2 s at least:\n{report}");
    assert_eq!(ran.number("errors"), 0, "{report}");
    assert!(ran.contains("## Errors\n\nNone."), "{report}");
    for scenario in ["envelope", "api", "token", "all"] {
        assert!(
            ran.number(scenario) > 0,
            "latency row for {scenario}:\n{report}"
        );
    }
    // Each worker on a connection of its own, kept alive.
    assert_eq!(ran.number("connections opened"), 4, "{report}");
    assert!(
        ran.stderr.contains(" req/s ") && ran.stderr.contains("p99"),
        "a live line every second (not a terminal, so no bar): {}",
        ran.stderr
    );
    // The chart beside the report, with each scenario's figures.
    assert!(
        ran.contains("## Chart\n\n![latency percentiles per scenario](run.svg)"),
        "{report}"
    );
    let chart = std::fs::read_to_string(dir.path().join("run.svg")).unwrap();
    assert!(chart.starts_with("<svg ") && chart.trim_end().ends_with("</svg>"));
    for scenario in ["envelope", "api", "token"] {
        assert!(chart.contains(&format!(">{scenario}</text>")), "{chart}");
    }
    let api_p99 = report
        .lines()
        .find(|l| l.starts_with("| api | "))
        .and_then(|l| l.split(" | ").nth(4))
        .expect("the api row's p99");
    assert!(
        chart.contains(&format!("p99 {api_p99}</text>")),
        "{api_p99}: {chart}"
    );

    // What reached the upstream is what the report counted, shaped like Sentry's clients.
    let seen = gateway.world.upstream.requests();
    let envelopes: Vec<_> = seen
        .iter()
        .filter(|r| r.path_and_query == "/api/42/envelope/")
        .collect();
    assert_eq!(envelopes.len() as u64, ran.number("envelope"), "{report}");
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
    let ran = Bench::through(&gateway)
        .mix("api=1")
        .with(&["--connections", "2"])
        .report()
        .await;
    let sent = ran.number("requests sent");
    assert!(sent > 0, "{}", ran.report);
    assert_eq!(ran.number("answered ok (2xx)"), 0, "{}", ran.report);
    assert!(
        ran.contains(&format!(
            "| api | sign-in refusal (401) | {sent} | 100.0% |"
        )),
        "every request refused for sign-in:\n{}",
        ran.report
    );
    assert!(ran.stderr.is_empty(), "--quiet: {}", ran.stderr);
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
    let ran = Bench::through(&gateway)
        .mix("envelope=1")
        .with(&["--dsn-key", "publickey", "--rate", "100/s", "--http2"])
        .duration("2s")
        .live()
        .report()
        .await;
    assert!(
        ran.contains("| load | open loop, 100/s (latency from the due time) |"),
        "{}",
        ran.report
    );
    // 200 due over 2 s, each sent when due (a slow machine sends late, never early).
    let took = began.elapsed();
    assert!(
        took >= std::time::Duration::from_millis(1900),
        "paced over the run, not sent at once: {took:?}"
    );
    assert!(
        ran.contains("| requests sent | 200 (100.0/s) |"),
        "{}",
        ran.report
    );
    let sent = ran.number("requests sent");
    assert_eq!(ran.number("errors"), 0, "{}", ran.report);
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

/// For each scenario and each load model (and both protocols in the closed loop), the
/// report's answers agree exactly with what the gateway's `/metrics` counted over the
/// run: per route class and status, in all, and the connections.
#[tokio::test(flavor = "multi_thread")]
async fn the_reports_counts_agree_with_the_gateways_metrics() {
    let gateway = Gateway::start().await;
    let cookie = gateway.session_cookie().await;
    let metrics = gateway.metrics_url();
    for scenario in ["envelope", "api", "token"] {
        for load in [
            &["--connections", "2"][..],
            &["--connections", "2", "--http2"],
            &["--rate", "40/s"],
        ] {
            let ran = Bench::through(&gateway)
                .mix(&format!("{scenario}=1"))
                .with(&["--dsn-key", "publickey", "--cookie", &cookie])
                .with(&["--token", "sntrys_loadtest", "--metrics", &metrics])
                .with(load)
                .report()
                .await;
            let context = format!("{scenario} {load:?}:\n{}", ran.report);
            let sent = ran.all_ok();
            let answers = ran.section("Answers by status");
            let figures = ran.section("The gateway's figures over the run");
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
                ran.number("connections opened").to_string(),
                "{context}"
            );
            if load[0] == "--connections" {
                assert_eq!(
                    ran.number("connections opened"),
                    2,
                    "a kept-alive connection per worker: {context}"
                );
            }
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
    let ramp = || {
        Bench::through(&gateway)
            .with(&["--ramp", "10..30/s", "--step-duration", "1s"])
            .with(&["--max-errors", "1%"])
            .no_duration()
    };
    let dir = tempfile::tempdir().unwrap();
    let report_file = dir.path().join("ramp.md");
    let ran = ramp()
        .mix("token=1")
        .with(&[
            "--token",
            "sntrys_loadtest",
            "--step",
            "10",
            "--max-p99",
            "10s",
        ])
        .with(&["--metrics", &metrics])
        .with(&["--report", report_file.to_str().unwrap()])
        .live()
        .report()
        .await;
    let report = &ran.report;
    for (step, asked) in [("1", "10/s"), ("2", "20/s"), ("3", "30/s")] {
        let row = report
            .lines()
            .find(|l| l.starts_with(&format!("| {step} | {asked} | ")))
            .unwrap_or_else(|| panic!("no step {step}:\n{report}"));
        assert!(row.ends_with(" | 0.00% (0) | yes |"), "{row}");
    }
    assert!(
        ran.section("Ramp").is_empty(),
        "8 columns, not name | value: {report}"
    );
    assert!(ran.contains("3 of 3 steps of 1s each"), "{report}");
    assert!(ran.contains("**Knee: none found**"), "{report}");
    assert_eq!(ran.number("requests sent"), 60, "{report}");
    let figures = ran.section("The gateway's figures over the run");
    assert_eq!(figures["requests public 200"], "60", "{report}");
    assert_eq!(
        ran.stderr.matches("step ").count(),
        3,
        "a line per step: {}",
        ran.stderr
    );
    // The chart: each step's p99 against its rate, and the limit.
    assert!(
        ran.contains("![p99 of each step by the rate asked](ramp.svg)"),
        "{report}"
    );
    let chart = std::fs::read_to_string(dir.path().join("ramp.svg")).unwrap();
    for label in ["10/s", "20/s", "30/s", "limit 10.00 s"] {
        assert!(
            chart.contains(&format!(">{label}</text>")),
            "{label}: {chart}"
        );
    }
    assert_eq!(chart.matches("<circle").count(), 3, "{chart}");

    // Without a cookie every api request is refused: over --max-errors at once.
    let ran = ramp().mix("api=1").report().await;
    let report = &ran.report;
    assert!(ran.contains("1 of 3 steps of 1s each"), "{report}");
    assert!(
        ran.contains("| 1 | 10/s | 0.0/s | - | - | - | 100.00% (10) | no: errors 100.0% > 1% |"),
        "{report}"
    );
    assert!(ran.contains("**Knee: below 10/s**"), "{report}");
    assert_eq!(ran.number("requests sent"), 10, "{report}");
}

/// With --new-connections each request has a TLS handshake of its own, and the gateway
/// accepted exactly as many connections.
#[tokio::test(flavor = "multi_thread")]
async fn new_connections_make_a_handshake_per_request() {
    let gateway = Gateway::start().await;
    let metrics = gateway.metrics_url();
    for http2 in [&[][..], &["--http2"]] {
        let ran = Bench::through(&gateway)
            .mix("token=1")
            .with(&["--token", "sntrys_loadtest", "--connections", "2"])
            .with(&["--new-connections", "--metrics", &metrics])
            .with(http2)
            .report()
            .await;
        let report = &ran.report;
        let sent = ran.all_ok();
        assert_eq!(ran.number("errors"), 0, "{report}");
        assert_eq!(ran.number("connections opened"), sent, "{report}");
        assert_eq!(ran.number("TLS handshakes"), sent, "{report}");
        let figures = ran.section("The gateway's figures over the run");
        assert_eq!(
            figures["connections accepted"],
            sent.to_string(),
            "{report}"
        );
        assert_eq!(figures["requests (all)"], sent.to_string(), "{report}");
        assert!(ran.contains("a new connection per request"), "{report}");
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
    let at_demo = || Bench::at(&base, ca_file.path().to_str());
    let users = tempfile::NamedTempFile::new().unwrap();
    let pool = format!(
        "# the demo's one user, twice\n{0}:{1}\n{0}:{1}\n",
        demo.username, demo.password
    );
    std::fs::write(users.path(), pool).unwrap();
    let metrics = format!("{base}/metrics");
    let mut landed = 0;
    for load in [["--connections", "2"], ["--rate", "10/s"]] {
        let ran = at_demo()
            .mix("login=1")
            .with(&["--users", users.path().to_str().unwrap()])
            .with(&load)
            .with(&["--metrics", &metrics])
            .report()
            .await;
        let report = &ran.report;
        let logins = ran.all_ok();
        if load[0] == "--rate" {
            assert_eq!(logins, 10, "{report}");
        }
        assert_eq!(ran.number("login"), logins, "latency row: {report}");
        let figures = ran.section("The gateway's figures over the run");
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
        assert!(ran.contains("are left out"), "{report}");
        landed += logins;
    }

    // A wrong password is a failed login, not a landing.
    let ran = at_demo()
        .mix("login=1")
        .with(&["--user", "demo", "--password", "wrong", "--rate", "5/s"])
        .report()
        .await;
    assert!(
        ran.contains("| login | login failed: the provider refused the credentials | 5 | 100.0% |"),
        "{}",
        ran.report
    );

    // The api scenario signs in once with the user when no cookie is given.
    let ran = at_demo()
        .mix("api=1")
        .with(&["--user", "demo", "--password", "demo", "--connections", "2"])
        .report()
        .await;
    ran.all_ok();
    assert!(
        ran.contains("GET /api/0/organizations/ with the session cookie"),
        "{}",
        ran.report
    );
}

/// `ssogate demo` prints a CA file it wrote, and `ssogate bench --ca-file` with it
/// trusts the demo's certificate; the file is gone once the demo has stopped.
#[tokio::test(flavor = "multi_thread")]
async fn bench_trusts_the_ca_file_the_demo_prints() {
    use tokio::io::AsyncBufReadExt;
    let mut demo = tokio::process::Command::new(env!("CARGO_BIN_EXE_ssogate"))
        .args(["demo", "--port", "0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the demo starts");
    let mut lines = tokio::io::BufReader::new(demo.stdout.take().unwrap()).lines();
    let (mut url, mut ca_file) = (None, None);
    let banner = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["open", address, ..] => url = Some(address.to_string()),
                ["CA", "file", path, ..] => ca_file = Some(path.to_string()),
                _ if line.contains("Stop with Ctrl-C") => break,
                _ => {}
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), banner)
        .await
        .expect("the demo prints its banner");
    // Its access lines follow on standard output: read, so that it never blocks on a
    // full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let url = url.expect("the demo prints its URL");
    let ca_file = ca_file.expect("the demo prints its CA file");
    let port = url.trim_end_matches('/').rsplit(':').next().unwrap();
    assert!(
        ca_file.ends_with(&format!("ssogate-demo-{port}-ca.pem")),
        "{ca_file}"
    );

    let envelopes = |ca: Option<&str>| {
        Bench::at(&url, ca).mix("envelope=1").with(&[
            "--dsn-key",
            "publickey",
            "--connections",
            "2",
        ])
    };
    envelopes(Some(&ca_file)).report().await.all_ok();
    // Without it, the demo's certificate is not trusted.
    let ran = envelopes(None).report().await;
    assert_eq!(ran.number("answered ok (2xx)"), 0, "{}", ran.report);
    assert!(
        ran.contains("connection error: connect failed"),
        "{}",
        ran.report
    );

    let pid = demo.id().unwrap().to_string();
    let _ = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await;
    let status = demo.wait().await.unwrap();
    assert!(status.success(), "{status}");
    assert!(
        !std::path::Path::new(&ca_file).exists(),
        "the demo removes {ca_file} as it stops"
    );
}

/// A target that closes every connection after one answer, saying so (`Connection:
/// close`) or not (a keep-alive answer, then the connection closed): each closed-loop
/// worker makes its connection again, and no request is lost or counted as an error
/// for it.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_makes_its_connection_again_when_the_target_closes_it() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for answer in [
        &b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3\r\n\r\nok\n"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n",
    ] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = accepted.clone();
        let serving = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buffer = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buffer[..n]),
                        }
                    }
                    let _ = stream.write_all(answer).await;
                });
            }
        });
        let ran = Bench::at(&url, None)
            .mix("token=1")
            .with(&["--token", "sntrys_loadtest", "--connections", "2"])
            .report()
            .await;
        serving.abort();
        let answer = String::from_utf8_lossy(answer);
        let sent = ran.all_ok();
        assert_eq!(ran.number("errors"), 0, "{answer}{}", ran.report);
        // One connection per request, and one more for a request sent as the target
        // closed the connection it went out on (sent again, so still no error).
        let opened = ran.number("connections opened");
        assert!(
            opened >= sent && opened <= sent + sent / 100 + 2,
            "{answer}{}",
            ran.report
        );
        assert_eq!(
            accepted.load(std::sync::atomic::Ordering::Relaxed),
            opened,
            "{answer}{}",
            ran.report
        );
    }
}
