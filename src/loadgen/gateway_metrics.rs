//! The gateway's own figures over a run: `/metrics` (Prometheus text) scraped before
//! and after, and the differences as a report section whose row names stay fixed, so
//! that two reports can be compared and the bench's counts checked against the
//! gateway's.
//!
//! The exposition is read with a few lines rather than a crate: one sample a line,
//! `name{labels} value`, comments and blank lines skipped; ssogate's label values
//! never hold spaces or braces.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One scrape: each series (`name{labels}` as written) and its value.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scrape(BTreeMap<String, f64>);

impl Scrape {
    /// Reads Prometheus text; lines that are not samples are left out.
    pub fn parse(text: &str) -> Scrape {
        let mut samples = BTreeMap::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let series_end = match line.find('{') {
                Some(_) => line.rfind('}').map(|at| at + 1),
                None => line.find(' '),
            };
            let Some(end) = series_end else { continue };
            let value = line[end..].split_whitespace().next().and_then(|v| match v {
                "+Inf" => Some(f64::INFINITY),
                "-Inf" => Some(f64::NEG_INFINITY),
                v => v.parse::<f64>().ok(),
            });
            if let Some(value) = value {
                samples.insert(line[..end].to_owned(), value);
            }
        }
        Scrape(samples)
    }

    /// The value of a series (`name` or `name{labels}`), 0 when absent.
    pub fn get(&self, series: &str) -> f64 {
        self.0.get(series).copied().unwrap_or(0.0)
    }

    /// Every series of the family `name` with its labels: (`{...}` text, value).
    fn family<'a>(&'a self, name: &'a str) -> impl Iterator<Item = (&'a str, f64)> + 'a {
        self.0.iter().filter_map(move |(series, value)| {
            let labels = series.strip_prefix(name)?;
            labels.starts_with('{').then_some((labels, *value))
        })
    }
}

/// The value of `key` in a label set `{a="x",b="y"}`.
fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    labels
        .trim_start_matches('{')
        .trim_end_matches('}')
        .split(',')
        .find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k.trim() == key).then(|| v.trim().trim_matches('"'))
        })
}

/// The bench's own scrapes, when `/metrics` is on the listener under test: the first
/// scrape is counted (a `gateway` 200) after its answer, so it shows in the second;
/// the second scrape's connection is accepted before the figures are read.
#[derive(Clone, Copy, Debug, Default)]
pub struct OwnScrapes {
    pub requests: u64,
    pub connections: u64,
}

/// The report section: differences of the counters, gauges before → after.
pub fn markdown(url: &str, before: &Scrape, after: &Scrape, own: OwnScrapes) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## The gateway's figures over the run\n\n\
         From `{url}`, scraped before and after the run: counters as the change over \
         the run, gauges as before → after."
    );
    if own.requests > 0 {
        let _ = writeln!(
            out,
            "`/metrics` is on the listener under test: the bench's own scrapes \
             ({} request, {} connection) are left out.",
            own.requests, own.connections
        );
    }
    let _ = writeln!(out, "\n| figure | value |\n|---|---|");
    let change = |series: &str| after.get(series) - before.get(series);
    let mut row = |name: String, value: String| {
        let _ = writeln!(out, "| {name} | {value} |");
    };

    // Requests by route class and status: every series of either scrape.
    let mut requests: BTreeMap<(String, String), f64> = BTreeMap::new();
    for (scrape, sign) in [(after, 1.0), (before, -1.0)] {
        for (labels, value) in scrape.family("ssogate_requests_total") {
            let route = label(labels, "route").unwrap_or("?").to_owned();
            let status = label(labels, "status").unwrap_or("?").to_owned();
            *requests.entry((route, status)).or_default() += sign * value;
        }
    }
    if let Some(count) = requests.get_mut(&("gateway".into(), "200".into())) {
        *count -= own.requests as f64;
    }
    let all: f64 = requests.values().sum();
    row("requests (all)".into(), number(all));
    for ((route, status), count) in &requests {
        if *count != 0.0 {
            row(format!("requests {route} {status}"), number(*count));
        }
    }
    for (name, series) in [
        ("logins started", "ssogate_logins_started_total"),
        ("logins completed", "ssogate_logins_completed_total"),
        ("access refused (403)", "ssogate_access_refused_total"),
        (
            "provider calls",
            "ssogate_provider_request_duration_seconds_count",
        ),
        ("provider failures", "ssogate_provider_failures_total"),
        (
            "upstream responses",
            "ssogate_upstream_response_duration_seconds_count",
        ),
    ] {
        row(name.into(), number(change(series)));
    }
    for (name, family, key) in [
        ("logins refused", "ssogate_logins_refused_total", "reason"),
        (
            "upstream failures",
            "ssogate_upstream_failures_total",
            "reason",
        ),
        (
            "session upkeeps",
            "ssogate_session_upkeeps_total",
            "outcome",
        ),
    ] {
        for (labels, value) in after.family(family) {
            let moved = value - before.get(&format!("{family}{labels}"));
            if moved != 0.0 {
                let why = label(labels, key).unwrap_or("?");
                row(format!("{name} {why}"), number(moved));
            }
        }
    }
    row(
        "connections accepted".into(),
        number(change("ssogate_connections_accepted_total") - own.connections as f64),
    );
    for (name, series) in [
        ("connections open", "ssogate_connections_open"),
        ("sessions live", "ssogate_sessions_live"),
        ("resident memory (MB)", "process_resident_memory_bytes"),
    ] {
        let scale = if name.ends_with("(MB)") { 1e6 } else { 1.0 };
        row(
            name.into(),
            format!(
                "{} → {}",
                number(before.get(series) / scale),
                number(after.get(series) / scale)
            ),
        );
    }
    out
}

/// A whole number as such, anything else with one decimal.
fn number(value: f64) -> String {
    if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "# HELP ssogate_requests_total Requests answered.\n\
        # TYPE ssogate_requests_total counter\n\
        ssogate_requests_total{route=\"gateway\",status=\"200\"} 3\n\
        ssogate_requests_total{route=\"public\",status=\"200\"} 10\n\
        ssogate_logins_refused_total{reason=\"state_expired\"} 0\n\
        ssogate_provider_request_duration_seconds_count 2\n\
        ssogate_request_duration_seconds_bucket{route=\"public\",le=\"+Inf\"} 10\n\
        ssogate_connections_accepted_total 4\n\
        ssogate_connections_open 1\n\
        ssogate_sessions_live 2\n\
        process_resident_memory_bytes 20000000\n";

    #[test]
    fn a_scrape_reads_every_sample() {
        let scrape = Scrape::parse(BEFORE);
        assert_eq!(
            scrape.get("ssogate_requests_total{route=\"public\",status=\"200\"}"),
            10.0
        );
        assert_eq!(scrape.get("ssogate_connections_open"), 1.0);
        assert_eq!(
            scrape.get("ssogate_request_duration_seconds_bucket{route=\"public\",le=\"+Inf\"}"),
            10.0
        );
        assert_eq!(scrape.get("ssogate_absent"), 0.0);
        assert_eq!(scrape.0.len(), 9, "comments are no samples");
        assert_eq!(
            label("{route=\"public\",status=\"200\"}", "status"),
            Some("200")
        );
    }

    #[test]
    fn the_section_shows_changes_and_leaves_out_the_own_scrapes() {
        let before = Scrape::parse(BEFORE);
        let after = Scrape::parse(
            "ssogate_requests_total{route=\"gateway\",status=\"200\"} 4\n\
             ssogate_requests_total{route=\"public\",status=\"200\"} 110\n\
             ssogate_requests_total{route=\"protected\",status=\"401\"} 7\n\
             ssogate_logins_refused_total{reason=\"state_expired\"} 2\n\
             ssogate_provider_request_duration_seconds_count 5\n\
             ssogate_connections_accepted_total 13\n\
             ssogate_connections_open 9\n\
             ssogate_sessions_live 2\n\
             process_resident_memory_bytes 25000000\n",
        );
        let own = OwnScrapes {
            requests: 1,
            connections: 1,
        };
        let section = markdown("http://127.0.0.1:9/metrics", &before, &after, own);
        for row in [
            "| requests (all) | 107 |",
            "| requests public 200 | 100 |",
            "| requests protected 401 | 7 |",
            "| logins refused state_expired | 2 |",
            "| provider calls | 3 |",
            "| logins completed | 0 |",
            "| connections accepted | 8 |",
            "| connections open | 1 → 9 |",
            "| sessions live | 2 → 2 |",
            "| resident memory (MB) | 20 → 25 |",
        ] {
            assert!(section.contains(row), "{row} not in\n{section}");
        }
        assert!(!section.contains("requests gateway"), "{section}");
        assert!(section.contains("are left out"), "{section}");
    }
}
