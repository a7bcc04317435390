//! `ssogate bench`: a load generator a load-tester points at their own deployment
//! (the gateway, or Sentry directly for the baseline) with Sentry-shaped traffic
//! ([`scenarios`]), printing latency percentiles and error classes ([`report`]), with
//! a chart beside the `--report` file ([`chart`]). While it runs, the figures of the
//! last second go on a progress bar when standard error is a terminal, else on a
//! plain line every second.
//!
//! A subcommand of the one binary rather than a second binary: whoever runs the
//! gateway already has it, and it trusts servers as the gateway does (the system's
//! roots plus `--ca-file`, [`crate::outbound`]). It refuses a target that is not
//! loopback unless `--allow-host` names that host exactly.
//!
//! Two load models:
//! - **closed loop** (`--connections N`): N workers, each sending its next request
//!   when the previous answer has arrived. It finds the most the target answers; when
//!   the target slows down, so does the load. Each worker has a connection of its own
//!   ([`connection`]), made again when the target closes it; over HTTP/1.1 it speaks
//!   through the bench's own lean client ([`http1`]), so that the tool can load a
//!   target harder than `wrk` does on one core.
//! - **open loop** (`--rate R`): request `i` is due at `start + i/R`, sent on its own
//!   task whether or not the earlier ones have been answered, and its latency runs from
//!   the time it was *due*, not from when it was sent. A generator that waits for a
//!   slow answer before sending the next request, or measures from its own late send,
//!   leaves out exactly the waits users see when the target stalls ("coordinated
//!   omission"); here a request due at `t` counts from `t` however late it went out.
//!
//! - **ramp** (`--ramp FROM..TO/s`): open-loop steps at rising rates ([`ramp`]), to
//!   the first step over `--max-p99` or `--max-errors`; the knee is the step before.
//!
//! Latency is from the send (closed loop) or the due time (open loop) to the last byte
//! of the answer's body. HTTP/1.1 keeps connections alive; `--http2` speaks HTTP/2
//! (ALPN on TLS, prior knowledge on `http://`), in the closed loop over a connection
//! per worker, in the open loop over as few as it needs; `--new-connections` makes a
//! connection per request. With `--metrics`, the gateway's
//! own figures over the run join the report ([`gateway_metrics`]). The `login` scenario
//! is a whole sign-in through the provider ([`login`]).

pub mod chart;
mod connection;
pub mod gateway_metrics;
mod http1;
pub mod login;
pub mod ramp;
pub mod report;
pub mod scenarios;

use std::io::IsTerminal as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

use crate::config::parse_duration;
use report::{Outcome, Recorder};
use scenarios::{Credentials, Mix, RequestMaker, Scenario};

/// The options of `ssogate bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Base URL of the target: `https://sentry.example.com` (the gateway), or Sentry
    /// itself for the baseline.
    pub url: String,
    /// Allow a target that is not loopback; it must name the URL's host exactly.
    /// Repeat it for the provider's host when logins are sent to one that is not
    /// loopback.
    #[arg(long, value_name = "HOST")]
    pub allow_host: Vec<String>,
    /// PEM file of a CA to trust besides the system's (a private CA), as the gateway's
    /// `ca_file` settings.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Scenarios with weights: envelope (SDK ingestion), api (signed-in UI, needs
    /// --cookie), token (API with --token). Example: envelope=8,api=2
    #[arg(long, value_parser = scenarios::parse_mix)]
    pub mix: Mix,
    /// How long to send requests (30s, 5m, ...).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Closed loop: this many concurrent workers, each on a connection of its own and
    /// sending its next request as soon as its answer has arrived.
    #[arg(long, default_value_t = 8, conflicts_with = "rate")]
    pub connections: usize,
    /// Open loop: requests per second (`200` or `200/s`), each timed from when it was due.
    #[arg(long, value_parser = parse_rate, value_name = "R/s")]
    pub rate: Option<f64>,
    /// Ramp: open-loop steps at rising rates, FROM..TO/s (e.g. 100..2000/s), each for
    /// --step-duration; stops at the first step over --max-p99 or --max-errors and
    /// names the knee (the last step within them).
    #[arg(long, value_parser = ramp::parse_range, value_name = "FROM..TO/s",
          conflicts_with_all = ["rate", "duration", "connections"])]
    pub ramp: Option<ramp::Range>,
    /// Ramp: the rate added at each step (default: FROM).
    #[arg(long, value_parser = parse_rate, value_name = "R/s", requires = "ramp")]
    pub step: Option<f64>,
    /// Ramp: how long each step sends.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub step_duration: Duration,
    /// Ramp: a step whose ok answers' p99 is above this is over the limit (250ms, 1s).
    #[arg(long, value_parser = parse_duration, requires = "ramp")]
    pub max_p99: Option<Duration>,
    /// Ramp: a step with a larger share of errors is over the limit (1%, 0.1%).
    #[arg(long, value_parser = ramp::parse_percent, requires = "ramp")]
    pub max_errors: Option<f64>,
    /// Speak HTTP/2 (ALPN h2 on https://, prior knowledge on http://).
    #[arg(long)]
    pub http2: bool,
    /// Each request (each login) on a new TCP and TLS connection, closed after it
    /// (HTTP/1.1 `Connection: close`), so that the handshakes' cost shows.
    #[arg(long)]
    pub new_connections: bool,
    /// A request without its complete answer after this long counts as a timeout.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Open loop: the most requests waiting for their answer; a request due beyond it
    /// is counted as not sent.
    #[arg(long, default_value_t = 10_000)]
    pub max_in_flight: usize,
    /// The public key of the DSN the envelopes go to (envelope scenario).
    #[arg(long, env = "SSOGATE_BENCH_DSN_KEY", hide_env_values = true)]
    pub dsn_key: Option<String>,
    /// The project id of the DSN (`/api/<project>/envelope/`).
    #[arg(long, default_value = "1")]
    pub project: String,
    /// Cookies of a signed-in browser, `name=value; name2=value2` (api scenario).
    #[arg(long, env = "SSOGATE_BENCH_COOKIE", hide_env_values = true)]
    pub cookie: Option<String>,
    /// A Sentry auth token (token scenario).
    #[arg(long, env = "SSOGATE_BENCH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A test user's name, for the login scenario (and the api scenario's session when
    /// no --cookie is given). Use test accounts: a provider may lock out an account
    /// after failed logins, and may limit logins per second.
    #[arg(long, env = "SSOGATE_BENCH_USER")]
    pub user: Option<String>,
    /// The test user's password.
    #[arg(
        long,
        env = "SSOGATE_BENCH_PASSWORD",
        hide_env_values = true,
        requires = "user"
    )]
    pub password: Option<String>,
    /// A pool of test users, `user:password` lines; the logins take them in turn.
    #[arg(
        long,
        value_name = "FILE",
        env = "SSOGATE_BENCH_USERS",
        conflicts_with = "user"
    )]
    pub users: Option<PathBuf>,
    /// The protected page a login starts at and must land on with a 200.
    #[arg(long, default_value = "/")]
    pub login_path: String,
    /// The path the api scenario asks for.
    #[arg(long, default_value = "/api/0/organizations/")]
    pub api_path: String,
    /// The path the token scenario asks for.
    #[arg(long, default_value = "/api/0/projects/")]
    pub token_path: String,
    /// The gateway's `/metrics`, scraped before and after the run; the changes
    /// (requests by route class and status, refusals, provider calls, sessions,
    /// connections) go in the report. Not scraped unless given: the gateway answers
    /// `/metrics` only to `server.metrics_networks` (loopback by default), on its
    /// main listener (`https://127.0.0.1:8443/metrics` for `ssogate demo`) or on
    /// `server.metrics_listen`.
    #[arg(long, value_name = "URL")]
    pub metrics: Option<String>,
    /// Also write the report (Markdown) to this file.
    #[arg(long, value_name = "FILE.md")]
    pub report: Option<PathBuf>,
    /// No live line every second.
    #[arg(long)]
    pub quiet: bool,
}

fn parse_rate(text: &str) -> Result<f64, String> {
    let number = text.trim().trim_end_matches("/s");
    match number.parse::<f64>() {
        Ok(rate) if rate > 0.0 && rate <= 10_000_000.0 => Ok(rate),
        _ => Err(format!(
            "`{text}` is not a rate (requests per second, e.g. 200/s)"
        )),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("`{0}` is not an http:// or https:// URL")]
    NotHttp(String),
    #[error(
        "{host} is not a loopback address; to load-test it, name it exactly: --allow-host {host}"
    )]
    NotLoopback { host: String },
    #[error("--allow-host {allowed} does not name the target's host {host}")]
    OtherHost { allowed: String, host: String },
    #[error("the {scenario} scenario needs {option}")]
    MissingCredential {
        scenario: &'static str,
        option: &'static str,
    },
    #[error("{0}")]
    Setup(String),
    #[error("cannot read the gateway's metrics at {url}: {reason}")]
    Metrics { url: String, reason: String },
    #[error("cannot write the report to {path}: {reason}")]
    Report { path: String, reason: String },
}

/// The target URL, if it may be load-tested: loopback, or the host `allow_host` names.
pub fn checked_target(url: &str, allow_host: Option<&str>) -> Result<url::Url, BenchError> {
    let parsed = url::Url::parse(url).map_err(|_| BenchError::NotHttp(url.to_owned()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(BenchError::NotHttp(url.to_owned()));
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| BenchError::NotHttp(url.to_owned()))?
        .to_owned();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = match bare.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => bare.eq_ignore_ascii_case("localhost"),
    };
    match allow_host {
        Some(allowed) if allowed.trim_start_matches('[').trim_end_matches(']') == bare => {
            Ok(parsed)
        }
        Some(allowed) => Err(BenchError::OtherHost {
            allowed: allowed.to_owned(),
            host,
        }),
        None if loopback => Ok(parsed),
        None => Err(BenchError::NotLoopback { host }),
    }
}

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;
type BenchClient = Client<Counted<Connector>, Full<Bytes>>;

/// A connector that counts the connections it made (TCP, and TLS on https://).
#[derive(Clone)]
struct Counted<C> {
    inner: C,
    opened: Arc<AtomicU64>,
}

impl<C> tower::Service<http::Uri> for Counted<C>
where
    C: tower::Service<http::Uri> + Send,
    C::Future: Send + 'static,
{
    type Response = C::Response;
    type Error = C::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<C::Response, C::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), C::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let opened = self.opened.clone();
        Box::pin(async move {
            let connection = connecting.await?;
            opened.fetch_add(1, Ordering::Relaxed);
            Ok(connection)
        })
    }
}

/// The most of a page the bench keeps to read (a provider's login page, `/metrics`).
const MAX_PAGE: usize = 4 << 20;

/// A body kept whole, up to [`MAX_PAGE`]: a larger one is an error, not a memory cost.
async fn read_page(body: Incoming) -> Result<Bytes, Box<dyn std::error::Error + Send + Sync>> {
    Ok(Limited::new(body, MAX_PAGE).collect().await?.to_bytes())
}

/// Reads an answer's body to its end without keeping it (the bench looks only at its
/// status and when it ended).
async fn drain(mut body: Incoming) -> Result<(), hyper::Error> {
    while let Some(frame) = body.frame().await {
        frame?;
    }
    Ok(())
}

/// One scrape of the gateway's `/metrics`, on a connection of its own that is closed
/// after it (HTTP/1.1), so that it never carries the run's requests.
async fn scrape(connector: &Connector, url: &str) -> Result<gateway_metrics::Scrape, BenchError> {
    let failed = |reason: String| BenchError::Metrics {
        url: url.to_owned(),
        reason,
    };
    let uri: http::Uri = url.parse().map_err(|e| failed(format!("{e}")))?;
    let client: Client<Connector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector.clone());
    let request = http::Request::get(uri)
        .header(http::header::CONNECTION, "close")
        .body(Full::new(Bytes::new()))
        .map_err(|e| failed(e.to_string()))?;
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let status = response.status();
        let body = read_page(response.into_body())
            .await
            .map_err(|e| failed(e.to_string()))?;
        if status != http::StatusCode::OK {
            return Err(failed(format!(
                "status {status} (is this client in server.metrics_networks?)"
            )));
        }
        Ok(gateway_metrics::Scrape::parse(&String::from_utf8_lossy(
            &body,
        )))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| failed("no answer within 10 s".into()))?
}

/// Whether `url` is served where `target` is (same scheme, host and port).
fn same_origin(url: &str, target: &url::Url) -> bool {
    url::Url::parse(url).is_ok_and(|url| {
        url.scheme() == target.scheme()
            && url.host_str() == target.host_str()
            && url.port_or_known_default() == target.port_or_known_default()
    })
}

/// What every request of a run shares.
struct Run {
    client: BenchClient,
    /// The closed loop's workers make their own connections with it (HTTP/2 when the
    /// bool is set), to `target`.
    own: (Counted<Connector>, bool),
    target: http::Uri,
    login: Option<login::LoginFlow>,
    /// With `--new-connections`: each exchange gets a client of its own from this.
    fresh: Option<(Counted<Connector>, bool)>,
    requests: RequestMaker,
    mix: Mix,
    timeout: Duration,
    recorder: Mutex<Recorder>,
}

impl Run {
    /// Sends request number `index`, due at `due`, and records its outcome and latency.
    async fn exchange(&self, index: u64, due: Instant) {
        let scenario = self.mix.scenario_of(index);
        let Some(mut request) = self.requests.make(scenario) else {
            // A login: a browser of its own, on new connections with --new-connections.
            let client = match &self.fresh {
                None => self.client.clone(),
                Some((connector, http2)) => {
                    let mut builder = Client::builder(TokioExecutor::new());
                    builder.http2_only(*http2);
                    builder.build(connector.clone())
                }
            };
            let outcome = match &self.login {
                None => Outcome::LoginFailed("no credentials"),
                Some(flow) => {
                    match tokio::time::timeout(self.timeout, flow.run(&client, index)).await {
                        Ok(Ok(_)) => Outcome::Ok,
                        Ok(Err(outcome)) => outcome,
                        Err(_) => Outcome::Timeout,
                    }
                }
            };
            self.record(scenario, outcome, due.elapsed());
            return;
        };
        let client = match &self.fresh {
            None => self.client.clone(),
            Some((connector, http2)) => {
                if !http2 {
                    request.headers_mut().insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("close"),
                    );
                }
                let mut builder = Client::builder(TokioExecutor::new());
                builder.http2_only(*http2).pool_max_idle_per_host(0);
                builder.build(connector.clone())
            }
        };
        let answer = async {
            let response = client
                .request(request)
                .await
                .map_err(|e| Outcome::of_client_error(&e))?;
            let outcome = Outcome::of_status(response.status());
            self.answered(scenario, response.status().as_u16());
            drain(response.into_body())
                .await
                .map_err(|_| Outcome::ConnectionBroken)?;
            Ok::<Outcome, Outcome>(outcome)
        };
        let outcome = match tokio::time::timeout(self.timeout, answer).await {
            Ok(Ok(outcome) | Err(outcome)) => outcome,
            Err(_) => Outcome::Timeout,
        };
        self.record(scenario, outcome, due.elapsed());
    }

    /// A closed-loop worker: the next request as soon as the last one's answer has
    /// arrived, until `end`, on a connection of its own (logins, and every request with
    /// `--new-connections`, go as [`Run::exchange`] sends them).
    async fn worker(&self, next: &AtomicU64, end: Instant) {
        let (connector, http2) = &self.own;
        let mut connection: Option<connection::Connection> = None;
        let mut deadline = std::pin::pin!(tokio::time::sleep(self.timeout));
        loop {
            let sent = Instant::now();
            if sent >= end {
                break;
            }
            let index = next.fetch_add(1, Ordering::Relaxed);
            let scenario = self.mix.scenario_of(index);
            let request = match &self.fresh {
                None => self.requests.make_for_connection(scenario, *http2),
                Some(_) => None,
            };
            let Some(request) = request else {
                self.exchange(index, sent).await;
                continue;
            };
            // A connection the target closed is made again, once per request: found
            // closed before the request, or closed as an idempotent request went out
            // on it after an earlier one.
            let open = connection.take();
            let exchange = async {
                let mut open = open;
                for _attempt in 0..2 {
                    let mut current = match open.take() {
                        Some(current) => current,
                        // Boxed: the connector's future is large.
                        None => {
                            Box::pin(connection::Connection::open(
                                connector.clone(),
                                self.target.clone(),
                                *http2,
                            ))
                            .await?
                        }
                    };
                    if !current.ready().await {
                        continue;
                    }
                    let answered = |status: http::StatusCode| {
                        self.answered(scenario, status.as_u16());
                    };
                    match current.exchange(&request, answered).await {
                        Ok(outcome) => return Ok((outcome, current)),
                        Err(failed) if failed.may_retry => {}
                        Err(failed) => return Err(failed.outcome),
                    }
                }
                Err(Outcome::ConnectionBroken)
            };
            let mut exchange = std::pin::pin!(exchange);
            // The worker's one timer, not one per request: it may ring for an earlier
            // request's deadline, and is then set to this one's.
            let due = sent + self.timeout;
            let outcome = loop {
                tokio::select! {
                    biased;
                    done = &mut exchange => break match done {
                        Ok((outcome, kept)) => {
                            connection = Some(kept);
                            outcome
                        }
                        // A broken exchange leaves the connection in no state to reuse:
                        // the next request makes a new one.
                        Err(outcome) => outcome,
                    },
                    () = deadline.as_mut() => {
                        if Instant::now() >= due {
                            // And so does a timeout (the connection is dropped here).
                            break Outcome::Timeout;
                        }
                        deadline.as_mut().reset(due);
                    }
                }
            };
            self.record(scenario, outcome, sent.elapsed());
        }
    }

    fn record(&self, scenario: Scenario, outcome: Outcome, latency: Duration) {
        self.recorder().record(scenario, outcome, latency);
    }

    fn answered(&self, scenario: Scenario, status: u16) {
        self.recorder().answered(scenario, status);
    }

    fn recorder(&self) -> std::sync::MutexGuard<'_, Recorder> {
        self.recorder
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Runs the bench; the report (Markdown) when it is done.
pub async fn run(args: BenchArgs) -> Result<String, BenchError> {
    let allowed = args
        .allow_host
        .iter()
        .find(|host| checked_target(&args.url, Some(host)).is_ok())
        .or(args.allow_host.first());
    let target = checked_target(&args.url, allowed.map(String::as_str))?;
    let users = match (&args.users, &args.user) {
        (Some(path), _) => login::parse_users(
            &std::fs::read_to_string(path)
                .map_err(|e| BenchError::Setup(format!("cannot read {}: {e}", path.display())))?,
        )
        .map_err(|e| BenchError::Setup(format!("{}: {e}", path.display())))?,
        (None, Some(user)) => vec![(user.clone(), args.password.clone().unwrap_or_default())],
        (None, None) => Vec::new(),
    };
    if args.mix.contains(Scenario::Login) && users.is_empty() {
        return Err(BenchError::MissingCredential {
            scenario: "login",
            option: "--user and --password, or --users FILE",
        });
    }
    let login = (!users.is_empty())
        .then(|| {
            let start = target
                .join(&args.login_path)
                .map_err(|e| BenchError::Setup(format!("--login-path: {e}")))?;
            let mut hosts = args.allow_host.clone();
            hosts.extend(target.host_str().map(str::to_owned));
            Ok::<_, BenchError>(login::LoginFlow {
                start,
                users: users.clone(),
                hosts,
            })
        })
        .transpose()?;
    for (scenario, option, given) in [
        (Scenario::Envelope, "--dsn-key", args.dsn_key.is_some()),
        (Scenario::Token, "--token", args.token.is_some()),
    ] {
        if args.mix.contains(scenario) && !given {
            return Err(BenchError::MissingCredential {
                scenario: scenario.name(),
                option,
            });
        }
    }
    let scrapes = connector(&args, false)?;
    let connector = connector(&args, args.http2)?;
    let opened = Arc::new(AtomicU64::new(0));
    let mut builder = Client::builder(TokioExecutor::new());
    builder.http2_only(args.http2);
    let counted = Counted {
        inner: connector.clone(),
        opened: opened.clone(),
    };
    let client = builder.build(counted.clone());
    // The api scenario without --cookie but with a user: one login first, its cookies.
    let mut cookie = args.cookie.clone();
    if let Some(flow) = login
        .as_ref()
        .filter(|_| cookie.is_none() && args.mix.contains(Scenario::Api))
    {
        let session = flow.run(&client, 0).await.map_err(|outcome| {
            BenchError::Setup(format!(
                "the api scenario's login as {} failed: {}",
                flow.users[0].0,
                outcome.label()
            ))
        })?;
        cookie = session.header_for(&target);
        // Its connection is the run's first, but not of the run's figures.
        opened.store(0, Ordering::Relaxed);
    }
    let requests = RequestMaker::new(
        &target,
        &Credentials {
            dsn_key: args.dsn_key.clone(),
            project: args.project.clone(),
            cookie: cookie.clone(),
            token: args.token.clone(),
            api_path: args.api_path.clone(),
            token_path: args.token_path.clone(),
        },
    )
    .map_err(BenchError::Setup)?;
    let metrics = match &args.metrics {
        None => None,
        Some(url) => {
            let before = scrape(&scrapes, url).await?;
            Some((url, before))
        }
    };
    let run = Arc::new(Run {
        client,
        own: (counted.clone(), args.http2),
        target: target
            .as_str()
            .parse()
            .map_err(|e| BenchError::Setup(format!("{e}")))?,
        login,
        fresh: args.new_connections.then_some((counted, args.http2)),
        requests,
        mix: args.mix.clone(),
        timeout: args.timeout,
        recorder: Mutex::default(),
    });

    let started = chrono::Utc::now();
    let start = Instant::now();
    let end = start + args.duration;
    let planned = match args.ramp {
        Some(range) => {
            let steps = ramp::rates(range, args.step.unwrap_or(range.from)).len();
            args.step_duration * u32::try_from(steps).unwrap_or(u32::MAX)
        }
        None => args.duration,
    };
    let bar = (!args.quiet && std::io::stderr().is_terminal()).then(|| progress_bar(planned));
    let live = (!args.quiet).then(|| tokio::spawn(live_lines(run.clone(), start, bar.clone())));
    let mut ramp_section = String::new();
    let mut chart = None;
    let mut length = args.duration;
    match (args.ramp, args.rate) {
        (Some(range), _) => {
            let limits = ramp::Limits {
                max_p99: args.max_p99,
                max_errors: args.max_errors,
            };
            let rates = ramp::rates(range, args.step.unwrap_or(range.from));
            let mut steps = Vec::new();
            let mut total = Recorder::default();
            for &rate in &rates {
                if !ramp::goes_on(&steps, &limits) {
                    break;
                }
                let start = Instant::now();
                let end = start + args.step_duration;
                open_loop(&run, rate, start, end, args.max_in_flight).await;
                let recorded = std::mem::take(&mut *run.recorder());
                let step = recorded.step(rate, args.step_duration);
                if !args.quiet {
                    let verdict = limits.crossed(&step).unwrap_or_else(|| "within".into());
                    let line = format!(
                        "step {}: {rate}/s asked, {:.1}/s ok, p99 {}, errors {:.2}%: {verdict}",
                        steps.len() + 1,
                        step.achieved,
                        step.p99.map_or_else(|| "-".into(), report::micros),
                        step.error_share() * 100.0
                    );
                    match &bar {
                        Some(bar) => bar.println(line),
                        None => eprintln!("{line}"),
                    }
                }
                total.absorb(recorded);
                steps.push(step);
            }
            *run.recorder() = total;
            length = args.step_duration * u32::try_from(steps.len()).unwrap_or(u32::MAX);
            ramp_section = ramp::markdown(&steps, &limits, rates.len(), args.step_duration);
            let points: Vec<_> = steps.iter().map(|step| (step.asked, step.p99)).collect();
            let limit = args
                .max_p99
                .map(|max| max.as_micros().min(u128::from(u64::MAX)) as u64);
            chart = Some(chart::ramp(&points, limit));
        }
        (None, None) => closed_loop(&run, args.connections.max(1), end).await,
        (None, Some(rate)) => open_loop(&run, rate, start, end, args.max_in_flight).await,
    }
    if let Some(live) = live {
        live.abort();
    }
    if let Some(bar) = bar {
        bar.finish();
    }
    let gateway_figures = match metrics {
        None => String::new(),
        Some((url, before)) => {
            // The gateway counts a request when its answer has gone out: a moment for
            // the last answers' counts before the second scrape.
            tokio::time::sleep(Duration::from_millis(200)).await;
            match scrape(&scrapes, url).await {
                Ok(after) => {
                    let own = if same_origin(url, &target) {
                        gateway_metrics::OwnScrapes {
                            requests: 1,
                            connections: 1,
                        }
                    } else {
                        gateway_metrics::OwnScrapes::default()
                    };
                    gateway_metrics::markdown(url, &before, &after, own)
                }
                Err(e) => format!("\n## The gateway's figures over the run\n\n{e}\n"),
            }
        }
    };

    let mut settings = vec![
        ("target", target.to_string()),
        (
            "load",
            match (args.ramp, args.rate) {
                (Some(range), _) => format!(
                    "ramp, open loop, {}..{}/s in steps of {}/s, {:?} each (latency from the due time)",
                    range.from,
                    range.to,
                    args.step.unwrap_or(range.from),
                    args.step_duration
                ),
                (None, None) => format!("closed loop, {} connections", args.connections.max(1)),
                (None, Some(rate)) => format!("open loop, {rate}/s (latency from the due time)"),
            },
        ),
        (
            "protocol",
            format!(
                "{}, {}",
                if args.http2 { "HTTP/2" } else { "HTTP/1.1" },
                if args.new_connections {
                    "a new connection per request"
                } else {
                    "keep-alive"
                }
            ),
        ),
        ("duration", format!("{length:?}")),
        ("mix", args.mix.describe()),
        ("timeout", format!("{:?}", args.timeout)),
        (
            "started",
            started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        ),
    ];
    if args.mix.contains(Scenario::Api) {
        settings.push((
            "api requests",
            format!(
                "GET {} {}",
                args.api_path,
                if cookie.is_some() {
                    "with the session cookie"
                } else {
                    "without a cookie"
                }
            ),
        ));
    }
    if args.mix.contains(Scenario::Envelope) {
        settings.push(("envelope bodies", scenarios::envelope_sizes()));
    }
    if args.mix.contains(Scenario::Login) {
        settings.push((
            "logins",
            format!(
                "GET {} through the provider's login form to a 200 there, {} user(s) in turn; \
                 each login is one request in this report",
                args.login_path,
                users.len()
            ),
        ));
    }
    let opened = opened.load(Ordering::Relaxed);
    let totals = [
        ("connections opened", opened.to_string()),
        (
            "TLS handshakes",
            if target.scheme() == "https" {
                opened
            } else {
                0
            }
            .to_string(),
        ),
    ];
    let mut report = run.recorder().markdown(&settings, &totals, length);
    report.push_str(&ramp_section);
    report.push_str(&gateway_figures);
    if let Some(path) = &args.report {
        let failed = |path: &std::path::Path, e: std::io::Error| BenchError::Report {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        // The chart next to the report, FILE.svg beside FILE.md.
        let svg = if path.extension().is_some_and(|e| e == "svg") {
            path.with_extension("chart.svg")
        } else {
            path.with_extension("svg")
        };
        let chart = chart.unwrap_or_else(|| chart::latency(&run.recorder().percentiles()));
        std::fs::write(&svg, chart).map_err(|e| failed(&svg, e))?;
        let name = svg.file_name().map_or_else(
            || svg.display().to_string(),
            |name| name.to_string_lossy().into_owned(),
        );
        let mut written = report.clone();
        written.push_str(&format!(
            "\n## Chart\n\n![{}]({name})\n",
            if args.ramp.is_some() {
                "p99 of each step by the rate asked"
            } else {
                "latency percentiles per scenario"
            }
        ));
        std::fs::write(path, &written).map_err(|e| failed(path, e))?;
        return Ok(written);
    }
    Ok(report)
}

/// The connector of the run (`http2`: ALPN h2 only), or of the scrapes (HTTP/1.1).
fn connector(args: &BenchArgs, http2: bool) -> Result<Connector, BenchError> {
    let roots = crate::outbound::root_store(args.ca_file.as_deref())
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    let tls = rustls::ClientConfig::builder_with_provider(crate::outbound::crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| BenchError::Setup(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(args.timeout));
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    Ok(if http2 {
        builder.enable_http2().wrap_connector(http)
    } else {
        builder.enable_http1().wrap_connector(http)
    })
}

async fn closed_loop(run: &Arc<Run>, connections: usize, end: Instant) {
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (run, next) = (run.clone(), next.clone());
        workers.spawn(async move { run.worker(&next, end).await });
    }
    while workers.join_next().await.is_some() {}
}

async fn open_loop(run: &Arc<Run>, rate: f64, start: Instant, end: Instant, max_in_flight: usize) {
    let mut in_flight = tokio::task::JoinSet::new();
    for index in 0u64.. {
        let due = start + Duration::from_secs_f64(index as f64 / rate);
        if due >= end {
            break;
        }
        // Sleeps only when the next request is in the future; a late timer sends the
        // requests already due at once, each still timed from its due time.
        if due > Instant::now() {
            tokio::time::sleep_until(due).await;
        }
        while in_flight.try_join_next().is_some() {}
        if in_flight.len() >= max_in_flight.max(1) {
            run.record(run.mix.scenario_of(index), Outcome::NotSent, Duration::ZERO);
            continue;
        }
        let run = run.clone();
        in_flight.spawn(async move { run.exchange(index, due).await });
    }
    while in_flight.join_next().await.is_some() {}
}

/// A bar over the run's planned length, in seconds, for a terminal.
fn progress_bar(planned: Duration) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(planned.as_secs().max(1)),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{bar:30.cyan/blue} {pos:>4}/{len}s  {msg}")
    {
        bar.set_style(style);
    }
    bar
}

/// Every second: the live figures (rate, p99 and errors over the last second) on the
/// progress bar when standard error is a terminal, else as a line of their own.
async fn live_lines(run: Arc<Run>, start: Instant, bar: Option<indicatif::ProgressBar>) {
    let mut ticks =
        tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    let mut last = start;
    loop {
        let now = ticks.tick().await;
        let line = run.recorder().live_line(now - start, now - last);
        last = now;
        match &bar {
            Some(bar) => {
                bar.set_position((now - start).as_secs());
                // The bar shows the time; the figures follow it.
                bar.set_message(
                    line.split_once("] ")
                        .map_or(line.clone(), |(_, f)| f.to_owned()),
                );
            }
            None => eprintln!("{line}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_or_the_named_host_is_a_target() {
        for ok in [
            "http://127.0.0.1:9000",
            "https://localhost/",
            "http://[::1]:8080",
        ] {
            assert!(checked_target(ok, None).is_ok(), "{ok}");
        }
        let refused = checked_target("https://sentry.example.com", None).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "sentry.example.com is not a loopback address; to load-test it, name it exactly: --allow-host sentry.example.com"
        );
        assert!(checked_target("https://sentry.example.com", Some("sentry.example.com")).is_ok());
        assert!(checked_target("https://sentry.example.com", Some("example.com")).is_err());
        assert!(checked_target("https://10.0.0.1", None).is_err());
        assert!(checked_target("ftp://127.0.0.1", None).is_err());
        assert_eq!(parse_rate("200/s"), Ok(200.0));
        assert!(parse_rate("0").is_err());
    }
}
