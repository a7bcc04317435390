//! The load generators: `wrk` for HTTP/1.1 (plain and TLS), `h2load` for HTTP/2 over
//! TLS and for fixed-rate runs. Each runs pinned to the generator core, and each run
//! comes back as one [`Round`]; a run with a failed request or a wrong status stops
//! the benchmark rather than report a fast error page.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Concurrent requests in flight: wrk's connections; for HTTP/2, connections ×
/// streams per connection.
pub const IN_FLIGHT: u32 = 32;
/// HTTP/2 targets: this many connections, each with IN_FLIGHT / H2_CONNECTIONS
/// streams (a browser multiplexes over few connections).
pub const H2_CONNECTIONS: u32 = 4;

/// Prints requests/s, latency percentiles (microseconds), status errors (>= 400),
/// socket errors and the request count when wrk is done.
pub const WRK_REPORT: &str = r#"
done = function(summary, latency, requests)
  local failed = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format("RESULT %f %d %d %d %d %d %d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    summary.errors.status, failed, summary.requests))
end
"#;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http1Tls,
    Http2Tls,
}

impl Protocol {
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Http1 => "HTTP/1.1",
            Protocol::Http1Tls => "HTTP/1.1 + TLS",
            Protocol::Http2Tls => "HTTP/2 + TLS",
        }
    }
}

pub struct Target {
    pub name: String,
    pub protocol: Protocol,
    pub url: String,
    pub headers: Vec<String>,
    /// The status every answer must have.
    pub expect: u16,
    /// The nginx reverse proxy target on the same protocol (an index into the list).
    pub nginx: usize,
}

#[derive(Clone, Copy, Default)]
pub struct Round {
    pub requests_per_second: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
}

/// Runs `target` at full speed for `length`.
pub fn full_speed(target: &Target, dir: &Path, length: Duration, core: usize) -> Round {
    match target.protocol {
        Protocol::Http1 | Protocol::Http1Tls => wrk(target, dir, length, core),
        Protocol::Http2Tls => h2load(target, dir, length, core, None),
    }
}

/// Runs `target` at a fixed `rate` (requests/s over IN_FLIGHT connections).
pub fn fixed_rate(target: &Target, dir: &Path, length: Duration, core: usize, rate: u32) -> Round {
    h2load(target, dir, length, core, Some(rate))
}

fn wrk(target: &Target, dir: &Path, length: Duration, core: usize) -> Round {
    let script = dir.join("report.lua");
    if !script.exists() {
        std::fs::write(&script, WRK_REPORT).unwrap();
    }
    let mut command = Command::new("taskset");
    command
        .args(["-c", &core.to_string(), "wrk", "-t1"])
        .arg(format!("-c{IN_FLIGHT}"))
        .arg(format!("-d{}s", length.as_secs()))
        .arg("-s")
        .arg(&script);
    for header in &target.headers {
        command.args(["-H", header]);
    }
    let output = command.arg(&target.url).output().expect("wrk runs");
    let text = String::from_utf8_lossy(&output.stdout);
    let fields: Vec<f64> = text
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("wrk gave no result for {}: {text}", target.name))
        .split_whitespace()
        .map(|f| f.parse().unwrap())
        .collect();
    let (status_errors, failed, requests) = (fields[4], fields[5], fields[6]);
    // wrk counts answers >= 400 as status errors.
    let wrong = if target.expect >= 400 {
        requests - status_errors
    } else {
        status_errors
    };
    assert!(
        wrong == 0.0 && failed == 0.0,
        "{}: {wrong} answers were not {} and {failed} requests failed",
        target.name,
        target.expect,
    );
    Round {
        requests_per_second: fields[0],
        p50_us: fields[1] as u64,
        p99_us: fields[2] as u64,
        p999_us: fields[3] as u64,
    }
}

/// h2load over HTTP/2 (the target's protocol) or, for fixed-rate runs of HTTP/1.1
/// targets, `--h1`. Percentiles come from its per-request log.
fn h2load(target: &Target, dir: &Path, length: Duration, core: usize, rate: Option<u32>) -> Round {
    let log = dir.join("h2load.log");
    // h2load appends to its log.
    let _ = std::fs::remove_file(&log);
    let mut command = Command::new("taskset");
    command.args(["-c", &core.to_string(), "h2load", "-t1"]);
    match (target.protocol, rate) {
        (Protocol::Http2Tls, None) => {
            command.arg(format!("-c{H2_CONNECTIONS}"));
            command.arg(format!("-m{}", IN_FLIGHT / H2_CONNECTIONS));
        }
        (protocol, Some(rate)) => {
            if protocol != Protocol::Http2Tls {
                command.arg("--h1");
            }
            command.arg(format!("-c{IN_FLIGHT}"));
            command.arg(format!("--rps={}", (rate / IN_FLIGHT).max(1)));
        }
        (_, None) => unreachable!("HTTP/1.1 at full speed runs on wrk"),
    }
    command
        .arg(format!("-D{}", length.as_secs()))
        .arg(format!("--log-file={}", log.display()));
    for header in &target.headers {
        command.args(["-H", header]);
    }
    let output = command.arg(&target.url).output().expect("h2load runs");
    let text = String::from_utf8_lossy(&output.stdout);
    let requests_per_second: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|l| l.strip_suffix(" req/s"))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("h2load gave no result for {}: {text}", target.name));
    let failed = text
        .lines()
        .find_map(|l| l.strip_prefix("requests: "))
        .and_then(|l| l.split(", ").find(|f| f.ends_with(" failed")))
        .and_then(|f| f.trim_end_matches(" failed").parse::<u64>().ok())
        .unwrap_or(u64::MAX);
    let mut durations = Vec::new();
    let mut wrong = 0;
    for line in std::fs::read_to_string(&log).unwrap().lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        if fields.get(1).and_then(|s| s.parse::<u16>().ok()) != Some(target.expect) {
            wrong += 1;
        }
        durations.push(
            fields
                .get(2)
                .and_then(|d| d.parse::<u64>().ok())
                .unwrap_or(0),
        );
    }
    assert!(
        wrong == 0 && failed == 0 && !durations.is_empty(),
        "{}: {wrong} answers were not {} and {failed} requests failed\n{text}",
        target.name,
        target.expect,
    );
    durations.sort_unstable();
    let percentile = |p: f64| {
        durations[((p * durations.len() as f64).ceil() as usize).clamp(1, durations.len()) - 1]
    };
    Round {
        requests_per_second,
        p50_us: percentile(0.50),
        p99_us: percentile(0.99),
        p999_us: percentile(0.999),
    }
}
