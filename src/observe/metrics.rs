//! The gateway's counters and histograms, and their Prometheus text rendering
//! (`GET /metrics`, text format 0.0.4).
//!
//! Every metric is a plain atomic, updated where the event happens and read only when
//! `/metrics` is scraped: no locks, no allocation on the request path. Label values
//! come from fixed enums, never from requests, so nothing a client sends can grow the
//! output or reach it.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime};

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

/// A latency histogram: a count per bucket (not cumulative; summed when rendered),
/// the total count and the sum in microseconds.
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len() + 1],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        let index = BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(BUCKETS.len());
        self.buckets[index].fetch_add(1, Relaxed);
        self.count.fetch_add(1, Relaxed);
        self.sum_micros
            .fetch_add(took.as_micros().min(u64::MAX as u128) as u64, Relaxed);
    }

    /// The `_bucket`, `_sum` and `_count` lines, with `labels` (`key="value",` or empty).
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.buckets[BUCKETS.len()].load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {cumulative}");
        let labels = labels.trim_end_matches(',');
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        let count = self.count.load(Relaxed);
        if labels.is_empty() {
            let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
        } else {
            let _ = writeln!(
                out,
                "{name}_sum{{{labels}}} {sum}\n{name}_count{{{labels}}} {count}"
            );
        }
    }
}

/// Status codes 100..=599, one counter each.
const STATUS_CODES: usize = 500;

/// Everything `/metrics` reports, for one gateway process.
pub struct Metrics {
    started: SystemTime,
    /// Per route class, per status code (index `status - 100`).
    requests: [Box<[AtomicU64]>; 3],
    request_seconds: [Histogram; 3],
    logins_started: AtomicU64,
    logins_completed: AtomicU64,
    logins_refused: [AtomicU64; LoginRefusal::ALL.len()],
    access_refused: AtomicU64,
    upkeeps: [AtomicU64; UpkeepOutcome::ALL.len()],
    provider_seconds: Histogram,
    provider_failures: AtomicU64,
    upstream_seconds: Histogram,
    upstream_failures: [AtomicU64; UpstreamFailure::ALL.len()],
    connections_open: AtomicI64,
    connections_accepted: AtomicU64,
    reloads: [AtomicU64; 2],
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let statuses = || (0..STATUS_CODES).map(|_| AtomicU64::new(0)).collect();
        Self {
            started: SystemTime::now(),
            requests: [statuses(), statuses(), statuses()],
            request_seconds: std::array::from_fn(|_| Histogram::new()),
            logins_started: AtomicU64::new(0),
            logins_completed: AtomicU64::new(0),
            logins_refused: std::array::from_fn(|_| AtomicU64::new(0)),
            access_refused: AtomicU64::new(0),
            upkeeps: std::array::from_fn(|_| AtomicU64::new(0)),
            provider_seconds: Histogram::new(),
            provider_failures: AtomicU64::new(0),
            upstream_seconds: Histogram::new(),
            upstream_failures: std::array::from_fn(|_| AtomicU64::new(0)),
            connections_open: AtomicI64::new(0),
            connections_accepted: AtomicU64::new(0),
            reloads: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// One request answered (counted when its response has been sent or abandoned).
    pub fn request(&self, class: RouteClass, status: u16, took: Duration) {
        let slot = usize::from(status.clamp(100, 599) - 100);
        self.requests[class as usize][slot].fetch_add(1, Relaxed);
        self.request_seconds[class as usize].observe(took);
    }

    pub fn login_started(&self) {
        self.logins_started.fetch_add(1, Relaxed);
    }

    pub fn login_completed(&self) {
        self.logins_completed.fetch_add(1, Relaxed);
    }

    pub fn login_refused(&self, why: LoginRefusal) {
        self.logins_refused[why as usize].fetch_add(1, Relaxed);
    }

    /// A signed-in person refused by the access rules (403).
    pub fn access_refused(&self) {
        self.access_refused.fetch_add(1, Relaxed);
    }

    pub fn upkeep(&self, outcome: UpkeepOutcome) {
        self.upkeeps[outcome as usize].fetch_add(1, Relaxed);
    }

    /// One HTTP exchange with the provider: how long, and whether it got an answer.
    pub fn provider_call(&self, took: Duration, answered: bool) {
        self.provider_seconds.observe(took);
        if !answered {
            self.provider_failures.fetch_add(1, Relaxed);
        }
    }

    /// The upstream's response headers arrived after `took`.
    pub fn upstream_response(&self, took: Duration) {
        self.upstream_seconds.observe(took);
    }

    pub fn upstream_failure(&self, why: UpstreamFailure) {
        self.upstream_failures[why as usize].fetch_add(1, Relaxed);
    }

    pub fn connection_opened(&self) {
        self.connections_accepted.fetch_add(1, Relaxed);
        self.connections_open.fetch_add(1, Relaxed);
    }

    pub fn connection_closed(&self) {
        self.connections_open.fetch_sub(1, Relaxed);
    }

    /// A reload (SIGHUP, or a certificate file that changed): applied or refused.
    pub fn reload(&self, applied: bool) {
        self.reloads[usize::from(!applied)].fetch_add(1, Relaxed);
    }

    /// The Prometheus text exposition; `sessions` is the store's current count.
    pub fn render(&self, sessions: u64) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let family = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };

        family(
            &mut out,
            "ssogate_requests_total",
            "counter",
            "Requests answered, by route class (gateway, public, protected) and status code.",
        );
        for class in RouteClass::ALL {
            for (slot, count) in self.requests[class as usize].iter().enumerate() {
                let count = count.load(Relaxed);
                if count > 0 {
                    let _ = writeln!(
                        out,
                        "ssogate_requests_total{{route=\"{}\",status=\"{}\"}} {count}",
                        class.as_str(),
                        slot + 100
                    );
                }
            }
        }
        family(
            &mut out,
            "ssogate_request_duration_seconds",
            "histogram",
            "Time from a request's arrival until its response was sent, by route class.",
        );
        for class in RouteClass::ALL {
            self.request_seconds[class as usize].render(
                &mut out,
                "ssogate_request_duration_seconds",
                &format!("route=\"{}\",", class.as_str()),
            );
        }

        family(
            &mut out,
            "ssogate_logins_started_total",
            "counter",
            "Logins sent to the identity provider.",
        );
        let _ = writeln!(
            out,
            "ssogate_logins_started_total {}",
            self.logins_started.load(Relaxed)
        );
        family(
            &mut out,
            "ssogate_logins_completed_total",
            "counter",
            "Logins that ended with a new session.",
        );
        let _ = writeln!(
            out,
            "ssogate_logins_completed_total {}",
            self.logins_completed.load(Relaxed)
        );
        family(
            &mut out,
            "ssogate_logins_refused_total",
            "counter",
            "Logins that did not end with a session, by reason.",
        );
        for why in LoginRefusal::ALL {
            let _ = writeln!(
                out,
                "ssogate_logins_refused_total{{reason=\"{}\"}} {}",
                why.as_str(),
                self.logins_refused[why as usize].load(Relaxed)
            );
        }
        family(
            &mut out,
            "ssogate_access_refused_total",
            "counter",
            "Requests of signed-in people that the access rules refused (403).",
        );
        let _ = writeln!(
            out,
            "ssogate_access_refused_total {}",
            self.access_refused.load(Relaxed)
        );
        family(
            &mut out,
            "ssogate_sessions_live",
            "gauge",
            "Sessions held by this process (with session.store = \"redis\": in its local cache).",
        );
        let _ = writeln!(out, "ssogate_sessions_live {sessions}");
        family(
            &mut out,
            "ssogate_session_upkeeps_total",
            "counter",
            "Token refreshes and revalidations at the provider, by outcome.",
        );
        for outcome in UpkeepOutcome::ALL {
            let _ = writeln!(
                out,
                "ssogate_session_upkeeps_total{{outcome=\"{}\"}} {}",
                outcome.as_str(),
                self.upkeeps[outcome as usize].load(Relaxed)
            );
        }

        family(
            &mut out,
            "ssogate_provider_request_duration_seconds",
            "histogram",
            "Time of each HTTP exchange with the identity provider (discovery, keys, token, userinfo, revocation).",
        );
        self.provider_seconds
            .render(&mut out, "ssogate_provider_request_duration_seconds", "");
        family(
            &mut out,
            "ssogate_provider_failures_total",
            "counter",
            "Exchanges with the identity provider that got no answer (refused, timed out, 5xx).",
        );
        let _ = writeln!(
            out,
            "ssogate_provider_failures_total {}",
            self.provider_failures.load(Relaxed)
        );
        family(
            &mut out,
            "ssogate_upstream_response_duration_seconds",
            "histogram",
            "Time until the upstream's response headers arrived.",
        );
        self.upstream_seconds
            .render(&mut out, "ssogate_upstream_response_duration_seconds", "");
        family(
            &mut out,
            "ssogate_upstream_failures_total",
            "counter",
            "Requests the upstream did not answer: unavailable (502) or timeout (504).",
        );
        for why in UpstreamFailure::ALL {
            let _ = writeln!(
                out,
                "ssogate_upstream_failures_total{{reason=\"{}\"}} {}",
                why.as_str(),
                self.upstream_failures[why as usize].load(Relaxed)
            );
        }

        family(
            &mut out,
            "ssogate_connections_open",
            "gauge",
            "Client connections open now.",
        );
        let _ = writeln!(
            out,
            "ssogate_connections_open {}",
            self.connections_open.load(Relaxed)
        );
        family(
            &mut out,
            "ssogate_connections_accepted_total",
            "counter",
            "Client connections accepted.",
        );
        let _ = writeln!(
            out,
            "ssogate_connections_accepted_total {}",
            self.connections_accepted.load(Relaxed)
        );
        family(
            &mut out,
            "ssogate_reloads_total",
            "counter",
            "Reloads of the config or the TLS certificate, applied or refused.",
        );
        let _ = writeln!(
            out,
            "ssogate_reloads_total{{outcome=\"applied\"}} {}\nssogate_reloads_total{{outcome=\"refused\"}} {}",
            self.reloads[0].load(Relaxed),
            self.reloads[1].load(Relaxed)
        );
        family(
            &mut out,
            "ssogate_log_lines_dropped_total",
            "counter",
            "Log lines dropped because the log output (disk, pipe) did not keep up.",
        );
        let _ = writeln!(
            out,
            "ssogate_log_lines_dropped_total {}",
            super::logging::lines_dropped()
        );
        family(
            &mut out,
            "ssogate_build_info",
            "gauge",
            "The running version.",
        );
        let _ = writeln!(
            out,
            "ssogate_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        family(
            &mut out,
            "process_start_time_seconds",
            "gauge",
            "When the gateway started, in seconds since the Unix epoch.",
        );
        let started = self
            .started
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let _ = writeln!(out, "process_start_time_seconds {started}");
        if let Some(resident) = resident_memory_bytes() {
            family(
                &mut out,
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory of the gateway process.",
            );
            let _ = writeln!(out, "process_resident_memory_bytes {resident}");
        }
        out
    }
}

/// Resident set size from `/proc/self/statm` (Linux), else `None`.
fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
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
}
