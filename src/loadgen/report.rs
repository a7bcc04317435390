//! What a run counted: each request's outcome and latency, a live line every second,
//! and the Markdown report at the end (the same text on standard output and in
//! `--report FILE.md`, with fixed row names so two reports can be compared side by side).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;

use super::scenarios::Scenario;

/// How one request ended.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// A 2xx answer, body read to its end.
    Ok,
    /// 302/303 where a 200 was expected: the gateway sends the client to sign in.
    SignInRedirect(u16),
    /// 401 where a 200 was expected: no session (or token) the target accepts.
    SignInRefusal,
    /// Any other status.
    Status(u16),
    /// No complete answer within `--timeout`.
    Timeout,
    /// The connection could not be made (refused, TLS handshake failed, ...).
    ConnectFailed,
    /// The connection broke while the request or the answer was under way.
    ConnectionBroken,
    /// Open loop: due, but `--max-in-flight` requests were already waiting.
    NotSent,
    /// A login that did not land on the page: why.
    LoginFailed(&'static str),
}

impl Outcome {
    pub fn of_status(status: http::StatusCode) -> Outcome {
        match status.as_u16() {
            200..=299 => Outcome::Ok,
            code @ (302 | 303) => Outcome::SignInRedirect(code),
            401 => Outcome::SignInRefusal,
            code => Outcome::Status(code),
        }
    }

    /// A request that got no answer: the connection could not be made, or broke.
    pub fn of_client_error(error: &hyper_util::client::legacy::Error) -> Outcome {
        if error.is_connect() {
            Outcome::ConnectFailed
        } else {
            Outcome::ConnectionBroken
        }
    }

    pub fn label(&self) -> String {
        match self {
            Outcome::Ok => "ok".into(),
            Outcome::SignInRedirect(code) => format!("sign-in redirect ({code})"),
            Outcome::SignInRefusal => "sign-in refusal (401)".into(),
            Outcome::Status(code) => format!("status {code}"),
            Outcome::Timeout => "timeout".into(),
            Outcome::ConnectFailed => "connection error: connect failed".into(),
            Outcome::ConnectionBroken => "connection error: broken during the exchange".into(),
            Outcome::NotSent => "not sent (over --max-in-flight)".into(),
            Outcome::LoginFailed(why) => format!("login failed: {why}"),
        }
    }
}

fn new_histogram() -> Histogram<u64> {
    // Microseconds, 1 µs to 10 min, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

/// Everything counted so far; shared by the requests of a run behind one lock.
pub struct Recorder {
    /// Latencies of the successful answers, per scenario.
    latency: BTreeMap<Scenario, Histogram<u64>>,
    /// Every outcome, per scenario.
    outcomes: BTreeMap<(Scenario, Outcome), u64>,
    /// The status of every answer, per scenario (what the gateway's `/metrics` counts).
    statuses: BTreeMap<(Scenario, u16), u64>,
    /// Since the last live line.
    window_latency: Histogram<u64>,
    window_requests: u64,
    window_errors: u64,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            latency: BTreeMap::new(),
            outcomes: BTreeMap::new(),
            statuses: BTreeMap::new(),
            window_latency: new_histogram(),
            window_requests: 0,
            window_errors: 0,
        }
    }
}

impl Recorder {
    pub fn record(&mut self, scenario: Scenario, outcome: Outcome, latency: Duration) {
        let micros = latency.as_micros().min(u128::from(u64::MAX)) as u64;
        if outcome == Outcome::Ok {
            self.latency
                .entry(scenario)
                .or_insert_with(new_histogram)
                .saturating_record(micros);
            self.window_latency.saturating_record(micros);
        } else {
            self.window_errors += 1;
        }
        self.window_requests += 1;
        *self.outcomes.entry((scenario, outcome)).or_default() += 1;
    }

    /// An answer with `status` arrived (whatever became of its body).
    pub fn answered(&mut self, scenario: Scenario, status: u16) {
        *self.statuses.entry((scenario, status)).or_default() += 1;
    }

    /// What a ramp step measured: everything recorded, sent at `asked` for `length`.
    pub fn step(&self, asked: f64, length: Duration) -> super::ramp::Step {
        let mut ok = new_histogram();
        for histogram in self.latency.values() {
            let _ = ok.add(histogram);
        }
        let at = |q: f64| (!ok.is_empty()).then(|| ok.value_at_quantile(q));
        let requests = self.count(None, None);
        let answered_ok = self.count(None, Some(true));
        super::ramp::Step {
            asked,
            achieved: answered_ok as f64 / length.as_secs_f64().max(1e-3),
            requests,
            errors: requests - answered_ok,
            p50: at(0.5),
            p99: at(0.99),
            p999: at(0.999),
        }
    }

    /// Adds what `other` recorded (a ramp's steps into its total).
    pub fn absorb(&mut self, other: Recorder) {
        for (scenario, histogram) in other.latency {
            let _ = self
                .latency
                .entry(scenario)
                .or_insert_with(new_histogram)
                .add(histogram);
        }
        for (key, count) in other.outcomes {
            *self.outcomes.entry(key).or_default() += count;
        }
        for (key, count) in other.statuses {
            *self.statuses.entry(key).or_default() += count;
        }
    }

    /// The live line for the last `elapsed` of the run, and a fresh window.
    pub fn live_line(&mut self, since_start: Duration, window: Duration) -> String {
        let rate = self.window_requests as f64 / window.as_secs_f64().max(1e-3);
        let p99 = if self.window_latency.is_empty() {
            "-".to_owned()
        } else {
            micros(self.window_latency.value_at_quantile(0.99))
        };
        let errors: u64 = self
            .outcomes
            .iter()
            .filter(|((_, o), _)| *o != Outcome::Ok)
            .map(|(_, n)| n)
            .sum();
        let line = format!(
            "[{:>4}s] {rate:>8.0} req/s   p99 {p99:>9}   errors {} this second, {errors} in all",
            since_start.as_secs(),
            self.window_errors
        );
        self.window_latency.reset();
        self.window_requests = 0;
        self.window_errors = 0;
        line
    }

    fn count(&self, scenario: Option<Scenario>, ok: Option<bool>) -> u64 {
        self.outcomes
            .iter()
            .filter(|((s, o), _)| {
                scenario.is_none_or(|want| *s == want)
                    && ok.is_none_or(|ok| (*o == Outcome::Ok) == ok)
            })
            .map(|(_, n)| n)
            .sum()
    }

    /// The latency of each scenario's ok answers at [`super::chart::PERCENTILES`], µs.
    pub fn percentiles(&self) -> Vec<(String, [u64; 4])> {
        self.latency
            .iter()
            .map(|(scenario, histogram)| {
                (
                    scenario.name().to_owned(),
                    super::chart::PERCENTILES.map(|(_, q)| histogram.value_at_quantile(q)),
                )
            })
            .collect()
    }

    /// The report: `settings` rows first (name, value), then totals (with `totals` rows
    /// added), latency, errors and the answers by status.
    pub fn markdown(
        &self,
        settings: &[(&str, String)],
        totals: &[(&str, String)],
        length: Duration,
    ) -> String {
        let mut out = String::new();
        let seconds = length.as_secs_f64().max(1e-3);
        let _ = writeln!(out, "# ssogate bench\n");
        let _ = writeln!(out, "| setting | value |\n|---|---|");
        for (name, value) in settings {
            let _ = writeln!(out, "| {name} | {value} |");
        }
        let not_sent: u64 = self
            .outcomes
            .iter()
            .filter(|((_, o), _)| *o == Outcome::NotSent)
            .map(|(_, n)| n)
            .sum();
        let all = self.count(None, None);
        let sent = all - not_sent;
        let ok = self.count(None, Some(true));
        let _ = writeln!(out, "\n## Totals\n\n| count | value |\n|---|---|");
        let _ = writeln!(
            out,
            "| requests sent | {sent} ({:.1}/s) |",
            sent as f64 / seconds
        );
        let _ = writeln!(
            out,
            "| answered ok (2xx) | {ok} ({:.1}/s) |",
            ok as f64 / seconds
        );
        let _ = writeln!(out, "| errors | {} |", all - ok);
        for (name, value) in totals {
            let _ = writeln!(out, "| {name} | {value} |");
        }

        let _ = writeln!(
            out,
            "\n## Latency of the ok answers\n\n\
             | scenario | ok | p50 | p90 | p99 | p99.9 | max |\n|---|---|---|---|---|---|---|"
        );
        let mut everything = new_histogram();
        for (scenario, histogram) in &self.latency {
            let _ = everything.add(histogram);
            let _ = writeln!(out, "{}", latency_row(scenario.name(), histogram));
        }
        if self.latency.len() > 1 {
            let _ = writeln!(out, "{}", latency_row("all", &everything));
        }

        let _ = writeln!(out, "\n## Errors\n");
        let errors: Vec<_> = self
            .outcomes
            .iter()
            .filter(|((_, o), _)| *o != Outcome::Ok)
            .collect();
        if errors.is_empty() {
            let _ = writeln!(out, "None.");
        } else {
            let _ = writeln!(
                out,
                "| scenario | class | count | share of its requests |\n|---|---|---|---|"
            );
            for ((scenario, outcome), count) in errors {
                let of = self.count(Some(*scenario), None).max(1);
                let _ = writeln!(
                    out,
                    "| {} | {} | {count} | {:.1}% |",
                    scenario.name(),
                    outcome.label(),
                    *count as f64 * 100.0 / of as f64
                );
            }
        }

        if !self.statuses.is_empty() {
            let _ = writeln!(
                out,
                "\n## Answers by status\n\n\
                 Every answer that came with a status, whatever became of its body.\n\n\
                 | scenario and status | answers |\n|---|---|"
            );
            for ((scenario, status), count) in &self.statuses {
                let _ = writeln!(out, "| {} {status} | {count} |", scenario.name());
            }
        }
        out
    }
}

fn latency_row(name: &str, histogram: &Histogram<u64>) -> String {
    let at = |q: f64| micros(histogram.value_at_quantile(q));
    format!(
        "| {name} | {} | {} | {} | {} | {} | {} |",
        histogram.len(),
        at(0.5),
        at(0.9),
        at(0.99),
        at(0.999),
        micros(histogram.max())
    )
}

/// `850 µs`, `12.3 ms`, `1.20 s`.
pub fn micros(value: u64) -> String {
    match value {
        0..=999 => format!("{value} µs"),
        1_000..=999_999 => format!("{:.2} ms", value as f64 / 1e3),
        _ => format!("{:.2} s", value as f64 / 1e6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classed_as_a_load_tester_reads_them() {
        use http::StatusCode;
        assert_eq!(Outcome::of_status(StatusCode::OK), Outcome::Ok);
        assert_eq!(
            Outcome::of_status(StatusCode::FOUND).label(),
            "sign-in redirect (302)"
        );
        assert_eq!(
            Outcome::of_status(StatusCode::UNAUTHORIZED).label(),
            "sign-in refusal (401)"
        );
        assert_eq!(
            Outcome::of_status(StatusCode::BAD_GATEWAY).label(),
            "status 502"
        );
    }

    #[test]
    fn the_report_counts_what_was_recorded() {
        let mut recorder = Recorder::default();
        for _ in 0..99 {
            recorder.record(Scenario::Api, Outcome::Ok, Duration::from_millis(1));
        }
        recorder.record(Scenario::Api, Outcome::Ok, Duration::from_millis(50));
        for _ in 0..100 {
            recorder.answered(Scenario::Api, 200);
        }
        recorder.record(
            Scenario::Envelope,
            Outcome::Timeout,
            Duration::from_secs(10),
        );
        let report = recorder.markdown(
            &[("target", "http://127.0.0.1:1".into())],
            &[("connections opened", "4".into())],
            Duration::from_secs(2),
        );
        assert!(
            report.contains("| requests sent | 101 (50.5/s) |"),
            "{report}"
        );
        assert!(
            report.contains("| answered ok (2xx) | 100 (50.0/s) |"),
            "{report}"
        );
        assert!(
            report.contains("| api | 100 | 1.00 ms | 1.00 ms | 1.00 ms | 50."),
            "{report}"
        );
        assert!(
            report.contains("| envelope | timeout | 1 | 100.0% |"),
            "{report}"
        );
        assert!(report.contains("| connections opened | 4 |"), "{report}");
        assert!(report.contains("| api 200 | 100 |"), "{report}");
        assert!(!report.contains("| envelope 0 |"), "{report}");
        assert_eq!(micros(850), "850 µs");
        assert_eq!(micros(1_200_000), "1.20 s");
    }
}
