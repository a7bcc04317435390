//! The load generators: `wrk` for HTTP/1.1 (plain and TLS), `h2load` for HTTP/2 over
//! TLS, both pinned to the generator core, and [`paced`], an open-loop generator in this
//! process for fixed-rate runs. Each run comes back as one [`Round`]; a run with a
//! failed request or a wrong status stops the benchmark rather than report a fast
//! error page.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;

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
    /// CPU time the answering server spent per request (not counting the upstream).
    pub cpu_us_per_request: f64,
}

/// Runs `target` at full speed for `length`.
pub fn full_speed(target: &Target, dir: &Path, length: Duration, core: usize) -> Round {
    match target.protocol {
        Protocol::Http1 | Protocol::Http1Tls => wrk(target, dir, length, core),
        Protocol::Http2Tls => h2load(target, dir, length, core),
    }
}

/// Open-loop HTTP/1.1 load at a fixed `rate` for `length`, over IN_FLIGHT plain
/// connections: connection `c` sends its requests at evenly spaced times, offset from
/// the others, whether or not the target keeps up, so the load is spread evenly rather
/// than in bursts. Each latency runs from sending the request to the end of the
/// answer's body. (h2load's `--rps` sends in bursts, and wrk2 is not packaged.) The
/// pacing uses tokio's timer, which has millisecond resolution.
pub async fn paced(target: &Target, rate: u32, length: Duration) -> Round {
    assert!(
        target.protocol == Protocol::Http1,
        "paced runs are plain HTTP/1.1"
    );
    let uri: http::Uri = target.url.parse().unwrap();
    let authority = uri.authority().expect("an absolute URL").clone();
    let per_connection = Duration::from_secs_f64(f64::from(IN_FLIGHT) / f64::from(rate));
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let end = start + length;
    let mut connections = Vec::new();
    for c in 0..IN_FLIGHT {
        let stream = tokio::net::TcpStream::connect(authority.as_str())
            .await
            .unwrap();
        stream.set_nodelay(true).unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        let mut request = http::Request::get(uri.path_and_query().unwrap().as_str())
            .header(http::header::HOST, authority.as_str());
        for header in &target.headers {
            let (name, value) = header.split_once(": ").unwrap();
            request = request.header(name, value);
        }
        let request = request
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let expect = target.expect;
        let mut next = start + per_connection * c / IN_FLIGHT;
        connections.push(tokio::spawn(async move {
            let (mut latencies, mut wrong) = (Vec::new(), 0);
            while next < end {
                tokio::time::sleep_until(next).await;
                next += per_connection;
                let sent = Instant::now();
                let response = sender
                    .send_request(request.clone())
                    .await
                    .expect("answered");
                let status = response.status().as_u16();
                response.into_body().collect().await.expect("body arrives");
                latencies.push(sent.elapsed().as_micros() as u64);
                wrong += usize::from(status != expect);
            }
            (latencies, wrong)
        }));
    }
    let mut latencies = Vec::new();
    for connection in connections {
        let (mut some, wrong) = connection.await.unwrap();
        assert_eq!(
            wrong, 0,
            "{}: {wrong} answers were not {}",
            target.name, target.expect
        );
        latencies.append(&mut some);
    }
    let requests_per_second = latencies.len() as f64 / length.as_secs_f64();
    percentiles(target, latencies, requests_per_second)
}

fn percentiles(target: &Target, mut durations: Vec<u64>, requests_per_second: f64) -> Round {
    assert!(!durations.is_empty(), "{}: no answers", target.name);
    durations.sort_unstable();
    let percentile = |p: f64| {
        durations[((p * durations.len() as f64).ceil() as usize).clamp(1, durations.len()) - 1]
    };
    Round {
        requests_per_second,
        p50_us: percentile(0.50),
        p99_us: percentile(0.99),
        p999_us: percentile(0.999),
        cpu_us_per_request: 0.0,
    }
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
        cpu_us_per_request: 0.0,
    }
}

/// h2load over HTTP/2. Percentiles come from its per-request log.
fn h2load(target: &Target, dir: &Path, length: Duration, core: usize) -> Round {
    let log = dir.join("h2load.log");
    // h2load appends to its log.
    let _ = std::fs::remove_file(&log);
    let mut command = Command::new("taskset");
    command.args(["-c", &core.to_string(), "h2load", "-t1"]);
    command
        .arg(format!("-c{H2_CONNECTIONS}"))
        .arg(format!("-m{}", IN_FLIGHT / H2_CONNECTIONS))
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
        wrong == 0 && failed == 0,
        "{}: {wrong} answers were not {} and {failed} requests failed\n{text}",
        target.name,
        target.expect,
    );
    percentiles(target, durations, requests_per_second)
}
