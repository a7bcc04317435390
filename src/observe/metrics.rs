//! The gateway's counters and histograms, as prometheus-client families, and their
//! Prometheus text exposition (`GET /metrics`, text format 0.0.4).
//!
//! A request updates plain atomics only: every label set is resolved once (at startup,
//! or a status code's first use) and its handle kept, so no lookup, lock or allocation
//! is on the request path. Label values come from fixed enums, never from requests,
//! so nothing a client sends can grow the output or reach it.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Metric, Registry};

/// Which part of the gateway answered a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteClass {
    /// The gateway's own endpoints (`/oauth2/...`, `/ping`, `/ready`, `/metrics`).
    Gateway,
    /// Routes that pass without a session (Sentry's machine traffic).
    Public,
    /// Everything else: a session is needed.
    Protected,
}

impl RouteClass {
    const ALL: [RouteClass; 3] = [Self::Gateway, Self::Public, Self::Protected];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::Public => "public",
            Self::Protected => "protected",
        }
    }
}

/// Why a login did not end with a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginRefusal {
    /// The provider could not be reached to start or finish the login.
    ProviderUnavailable,
    /// The provider answered the callback with an error (the person cancelled, say).
    ProviderError,
    /// The callback's query was malformed (missing or repeated `code`/`state`).
    MalformedCallback,
    /// The callback did not come back to the browser that started the login.
    NotThisBrowser,
    /// The login's state was unknown: expired or already used.
    StateExpired,
    /// The ID token failed validation (signature, issuer, audience, nonce, expiry).
    IdTokenRefused,
    /// The session store could not be reached.
    StoreUnavailable,
    /// The callback's `iss` was missing or another issuer's (RFC 9207).
    IssuerMismatch,
}

impl LoginRefusal {
    const ALL: [LoginRefusal; 8] = [
        Self::ProviderUnavailable,
        Self::ProviderError,
        Self::MalformedCallback,
        Self::NotThisBrowser,
        Self::StateExpired,
        Self::IdTokenRefused,
        Self::StoreUnavailable,
        Self::IssuerMismatch,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::ProviderUnavailable => "provider_unavailable",
            Self::ProviderError => "provider_error",
            Self::MalformedCallback => "malformed_callback",
            Self::NotThisBrowser => "not_this_browser",
            Self::StateExpired => "state_expired",
            Self::IdTokenRefused => "id_token_refused",
            Self::StoreUnavailable => "store_unavailable",
            Self::IssuerMismatch => "issuer_mismatch",
        }
    }
}

/// How a refresh or revalidation at the provider ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpkeepOutcome {
    /// The provider confirmed the session (new tokens, or userinfo answered).
    Confirmed,
    /// The provider ended the session.
    Refused,
    /// The provider could not be reached; the session goes on and it is retried.
    Unavailable,
    /// The access token expired (past `session.expired_token_grace`) and the provider
    /// could not confirm the session since: it ended, the person signs in again.
    Expired,
}

impl UpkeepOutcome {
    const ALL: [UpkeepOutcome; 4] = [
        Self::Confirmed,
        Self::Refused,
        Self::Unavailable,
        Self::Expired,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::Confirmed => "confirmed",
            Self::Refused => "refused",
            Self::Unavailable => "unavailable",
            Self::Expired => "expired",
        }
    }
}

/// Why a request could not be forwarded to the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// Connection refused or reset, or a broken response (502).
    Unavailable,
    /// No connection or no response headers in time (504).
    Timeout,
    /// Refused before reaching the upstream: `upstream.max_in_flight` or
    /// `upstream.max_in_flight_per_client` requests were in flight (503).
    Busy,
}

impl UpstreamFailure {
    const ALL: [UpstreamFailure; 3] = [Self::Unavailable, Self::Timeout, Self::Busy];

    fn as_str(self) -> &'static str {
        match self {
            Self::Unavailable => "unavailable",
            Self::Timeout => "timeout",
            Self::Busy => "busy",
        }
    }
}

/// Upper bounds of the latency histograms' buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A latency histogram of atomics (prometheus-client's own takes a lock per
/// observation): a count per bucket, not cumulative (the encoder sums them), the total
/// count and the sum in microseconds.
#[derive(Clone, Debug, Default)]
struct Latency(Arc<LatencyCounts>);

#[derive(Debug, Default)]
struct LatencyCounts {
    /// One per bound of [`BUCKETS`], then one for larger values.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Latency {
    fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        let index = BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(BUCKETS.len());
        let counts = &self.0;
        counts.buckets[index].fetch_add(1, Relaxed);
        counts.count.fetch_add(1, Relaxed);
        counts
            .sum_micros
            .fetch_add(u64::try_from(took.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }
}

impl TypedMetric for Latency {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Latency {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let counts = &self.0;
        let buckets: Vec<(f64, u64)> = BUCKETS
            .iter()
            .chain(&[f64::INFINITY])
            .zip(&counts.buckets)
            .map(|(&bound, count)| (bound, count.load(Relaxed)))
            .collect();
        let sum = counts.sum_micros.load(Relaxed) as f64 / 1e6;
        let count = counts.count.load(Relaxed);
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// A family shown with its HELP and TYPE before its first sample too (a family
/// alone is left out of the exposition while it has no label set).
#[derive(Debug)]
struct AlwaysShown<M>(M);

impl<M: EncodeMetric> EncodeMetric for AlwaysShown<M> {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

/// Status codes 100..=599, one counter each.
const STATUS_CODES: usize = 500;

/// Everything `/metrics` reports, for one gateway process: the registry that renders
/// it, and a handle on each series the gateway counts in.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    /// Per route class, per status code (index `status - 100`): the series of
    /// `requests`, each looked up in the family at its first use only.
    request_counters: [Box<[OnceLock<Counter>]>; 3],
    request_seconds: [Latency; 3],
    logins_started: Counter,
    logins_completed: Counter,
    logins_refused: [Counter; LoginRefusal::ALL.len()],
    access_refused: Counter,
    sessions_live: Gauge,
    upkeeps: [Counter; UpkeepOutcome::ALL.len()],
    provider_seconds: Latency,
    provider_failures: Counter,
    upstream_seconds: Latency,
    upstream_failures: [Counter; UpstreamFailure::ALL.len()],
    connections_open: Gauge,
    connections_accepted: Counter,
    /// Applied, refused.
    reloads: [Counter; 2],
    /// ACME certificate orders: issued, failed.
    acme_orders: [Counter; 2],
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Registers `metric` under `name` and gives it back, to count in.
fn add<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// The series of `family` for each of `labels`, created now so that each shows from
/// the start.
fn series<L, M, const N: usize>(family: &Family<L, M>, labels: [L; N]) -> [M; N]
where
    L: Clone + std::hash::Hash + Eq,
    M: Clone + Default,
{
    labels.map(|label| family.get_or_create(&label).clone())
}

impl Metrics {
    pub fn new() -> Self {
        // The registry ends each help text with a full stop.
        let mut r = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        r.register(
            "ssogate_requests",
            "Requests answered, by route class (gateway, public, protected) and status code",
            AlwaysShown(requests.clone()),
        );
        let request_seconds = add(
            &mut r,
            "ssogate_request_duration_seconds",
            "Time from a request's arrival until its response was sent, by route class",
            Family::<RouteLabel, Latency>::default(),
        );
        r.register(
            "ssogate_build",
            "The running version",
            Info::new(VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        let started = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        r.register(
            "process_start_time_seconds",
            "When the gateway started, in seconds since the Unix epoch",
            ConstGauge::new(i64::try_from(started).unwrap_or(i64::MAX)),
        );
        r.register_collector(Box::new(ReadAtScrape));
        let statuses = || (0..STATUS_CODES).map(|_| OnceLock::new()).collect();
        Self {
            request_counters: [statuses(), statuses(), statuses()],
            request_seconds: series(
                &request_seconds,
                RouteClass::ALL.map(|class| RouteLabel {
                    route: class.as_str(),
                }),
            ),
            requests,
            logins_started: add(
                &mut r,
                "ssogate_logins_started",
                "Logins sent to the identity provider",
                Counter::default(),
            ),
            logins_completed: add(
                &mut r,
                "ssogate_logins_completed",
                "Logins that ended with a new session",
                Counter::default(),
            ),
            logins_refused: series(
                &add(
                    &mut r,
                    "ssogate_logins_refused",
                    "Logins that did not end with a session, by reason",
                    Family::default(),
                ),
                LoginRefusal::ALL.map(|why| ReasonLabel {
                    reason: why.as_str(),
                }),
            ),
            access_refused: add(
                &mut r,
                "ssogate_access_refused",
                "Requests of signed-in people that the access rules refused (403)",
                Counter::default(),
            ),
            sessions_live: add(
                &mut r,
                "ssogate_sessions_live",
                "Sessions held by this process (with session.store = \"redis\": in its local cache)",
                Gauge::default(),
            ),
            upkeeps: series(
                &add(
                    &mut r,
                    "ssogate_session_upkeeps",
                    "Token refreshes and revalidations at the provider, by outcome",
                    Family::default(),
                ),
                UpkeepOutcome::ALL.map(|outcome| OutcomeLabel {
                    outcome: outcome.as_str(),
                }),
            ),
            provider_seconds: add(
                &mut r,
                "ssogate_provider_request_duration_seconds",
                "Time of each HTTP exchange with the identity provider (discovery, keys, token, userinfo, revocation)",
                Latency::default(),
            ),
            provider_failures: add(
                &mut r,
                "ssogate_provider_failures",
                "Exchanges with the identity provider that got no answer (refused, timed out, 5xx)",
                Counter::default(),
            ),
            upstream_seconds: add(
                &mut r,
                "ssogate_upstream_response_duration_seconds",
                "Time until the upstream's response headers arrived",
                Latency::default(),
            ),
            upstream_failures: series(
                &add(
                    &mut r,
                    "ssogate_upstream_failures",
                    "Requests the upstream did not answer: unavailable (502) or timeout (504)",
                    Family::default(),
                ),
                UpstreamFailure::ALL.map(|why| ReasonLabel {
                    reason: why.as_str(),
                }),
            ),
            connections_open: add(
                &mut r,
                "ssogate_connections_open",
                "Client connections open now",
                Gauge::default(),
            ),
            connections_accepted: add(
                &mut r,
                "ssogate_connections_accepted",
                "Client connections accepted",
                Counter::default(),
            ),
            reloads: series(
                &add(
                    &mut r,
                    "ssogate_reloads",
                    "Reloads of the config or the TLS certificate, applied or refused",
                    Family::default(),
                ),
                ["applied", "refused"].map(|outcome| OutcomeLabel { outcome }),
            ),
            acme_orders: series(
                &add(
                    &mut r,
                    "ssogate_acme_orders",
                    "Certificate orders from the ACME CA (tls.acme_*), issued or failed",
                    Family::default(),
                ),
                ["issued", "failed"].map(|outcome| OutcomeLabel { outcome }),
            ),
            registry: r,
        }
    }

    /// One request answered (counted when its response has been sent or abandoned).
    pub fn request(&self, class: RouteClass, status: u16, took: Duration) {
        let status = status.clamp(100, 599);
        let counter =
            self.request_counters[class as usize][usize::from(status - 100)].get_or_init(|| {
                let labels = RequestLabels {
                    route: class.as_str(),
                    status,
                };
                self.requests.get_or_create(&labels).clone()
            });
        counter.inc();
        self.request_seconds[class as usize].observe(took);
    }

    pub fn login_started(&self) {
        self.logins_started.inc();
    }

    pub fn login_completed(&self) {
        self.logins_completed.inc();
    }

    pub fn login_refused(&self, why: LoginRefusal) {
        self.logins_refused[why as usize].inc();
    }

    /// A signed-in person refused by the access rules (403).
    pub fn access_refused(&self) {
        self.access_refused.inc();
    }

    pub fn upkeep(&self, outcome: UpkeepOutcome) {
        self.upkeeps[outcome as usize].inc();
    }

    /// One HTTP exchange with the provider: how long, and whether it got an answer.
    pub fn provider_call(&self, took: Duration, answered: bool) {
        self.provider_seconds.observe(took);
        if !answered {
            self.provider_failures.inc();
        }
    }

    /// The upstream's response headers arrived after `took`.
    pub fn upstream_response(&self, took: Duration) {
        self.upstream_seconds.observe(took);
    }

    pub fn upstream_failure(&self, why: UpstreamFailure) {
        self.upstream_failures[why as usize].inc();
    }

    pub fn connection_opened(&self) {
        self.connections_accepted.inc();
        self.connections_open.inc();
    }

    pub fn connection_closed(&self) {
        self.connections_open.dec();
    }

    /// A reload (SIGHUP, or a certificate file that changed): applied or refused.
    pub fn reload(&self, applied: bool) {
        self.reloads[usize::from(!applied)].inc();
    }

    /// An order of the ACME certificate: issued or failed.
    pub fn acme_order(&self, issued: bool) {
        self.acme_orders[usize::from(!issued)].inc();
    }

    /// The Prometheus text exposition; `sessions` is the store's current count.
    pub fn render(&self, sessions: u64) -> String {
        self.sessions_live
            .set(i64::try_from(sessions).unwrap_or(i64::MAX));
        let mut out = String::with_capacity(8 * 1024);
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// What is read when `/metrics` is scraped: the log output's dropped lines, and the
/// process's resident memory.
#[derive(Debug)]
struct ReadAtScrape;

impl Collector for ReadAtScrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let dropped = ConstCounter::new(super::logging::lines_dropped());
        dropped.encode(encoder.encode_descriptor(
            "ssogate_log_lines_dropped",
            "Log lines dropped because the log output (disk, pipe) did not keep up.",
            None,
            dropped.metric_type(),
        )?)?;
        if let Some(resident) = resident_memory_bytes() {
            let resident = ConstGauge::new(i64::try_from(resident).unwrap_or(i64::MAX));
            resident.encode(encoder.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory of the gateway process.",
                None,
                resident.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// Resident set size: `VmRSS` of `/proc/self/status` (Linux), else `None`.
fn resident_memory_bytes() -> Option<u64> {
    vm_rss(&std::fs::read_to_string("/proc/self/status").ok()?)
}

/// The `VmRSS:   1234 kB` line of a `/proc/<pid>/status`, in bytes.
fn vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting with {prefix} in\n{text}"))
    }

    #[test]
    fn counts_requests_by_class_and_status() {
        let metrics = Metrics::new();
        metrics.request(RouteClass::Protected, 200, Duration::from_millis(3));
        metrics.request(RouteClass::Protected, 200, Duration::from_millis(40));
        metrics.request(RouteClass::Public, 413, Duration::from_micros(200));
        let text = metrics.render(7);
        assert_eq!(
            line(
                &text,
                "ssogate_requests_total{route=\"protected\",status=\"200\"}"
            ),
            "ssogate_requests_total{route=\"protected\",status=\"200\"} 2"
        );
        assert!(text.contains("ssogate_requests_total{route=\"public\",status=\"413\"} 1"));
        assert!(!text.contains("route=\"gateway\",status="));
        assert!(text.contains("ssogate_sessions_live 7"));
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let metrics = Metrics::new();
        metrics.upstream_response(Duration::from_millis(3));
        metrics.upstream_response(Duration::from_millis(40));
        metrics.upstream_response(Duration::from_secs(100));
        let text = metrics.render(0);
        let name = "ssogate_upstream_response_duration_seconds";
        assert!(text.contains(&format!("{name}_bucket{{le=\"0.001\"}} 0")));
        assert!(text.contains(&format!("{name}_bucket{{le=\"0.005\"}} 1")));
        assert!(text.contains(&format!("{name}_bucket{{le=\"0.05\"}} 2")));
        assert!(text.contains(&format!("{name}_bucket{{le=\"30\"}} 2")));
        assert!(text.contains(&format!("{name}_bucket{{le=\"+Inf\"}} 3")));
        assert!(text.contains(&format!("{name}_count 3")));
        assert!(text.contains(&format!("{name}_sum 100.043")));
    }

    #[test]
    fn every_family_has_help_and_type_once() {
        let text = Metrics::new().render(0);
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|f| text.contains(&format!("# TYPE {f} histogram")))
                .unwrap_or(name);
            assert_eq!(
                text.matches(&format!("# TYPE {family} ")).count(),
                1,
                "{family}"
            );
            assert_eq!(
                text.matches(&format!("# HELP {family} ")).count(),
                1,
                "{family}"
            );
        }
    }

    #[test]
    fn resident_memory_is_vm_rss_in_bytes() {
        let status = "Name:\tssogate\nVmPeak:\t  900000 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(vm_rss(status), Some(12345 * 1024));
        assert_eq!(vm_rss("Name:\tssogate\n"), None);
        assert_eq!(vm_rss("VmRSS:\t12 MB\n"), None);
        if cfg!(target_os = "linux") {
            let resident = resident_memory_bytes().expect("/proc/self/status has VmRSS");
            assert!((1 << 20..1 << 40).contains(&resident), "{resident}");
            let text = Metrics::new().render(0);
            assert!(text.contains("process_resident_memory_bytes "));
        }
    }

    #[test]
    fn the_exposition_keeps_its_names_and_help() {
        let metrics = Metrics::new();
        metrics.reload(true);
        metrics.login_refused(LoginRefusal::IssuerMismatch);
        let text = metrics.render(0);
        for expected in [
            "# HELP ssogate_requests_total Requests answered, by route class (gateway, public, protected) and status code.\n# TYPE ssogate_requests_total counter\n",
            "# TYPE ssogate_request_duration_seconds histogram\n",
            "ssogate_logins_refused_total{reason=\"issuer_mismatch\"} 1\n",
            "ssogate_logins_refused_total{reason=\"not_this_browser\"} 0\n",
            "ssogate_reloads_total{outcome=\"applied\"} 1\n",
            "ssogate_reloads_total{outcome=\"refused\"} 0\n",
            "ssogate_session_upkeeps_total{outcome=\"expired\"} 0\n",
            "ssogate_upstream_failures_total{reason=\"busy\"} 0\n",
            "# HELP ssogate_sessions_live Sessions held by this process (with session.store = \"redis\": in its local cache).\n",
            "# TYPE ssogate_connections_open gauge\nssogate_connections_open 0\n",
            "ssogate_connections_accepted_total 0\n",
            "ssogate_log_lines_dropped_total ",
            "ssogate_request_duration_seconds_count{route=\"gateway\"} 0\n",
            "# TYPE ssogate_build_info gauge\n",
            "# TYPE process_start_time_seconds gauge\n",
        ] {
            assert!(text.contains(expected), "{expected:?} not in\n{text}");
        }
        assert!(text.contains(&format!(
            "ssogate_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        )));
        assert!(!text.contains(".."), "one full stop after each help text");
    }
}
