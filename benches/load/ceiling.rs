//! The `ceiling` part: how much load `ssogate bench` itself can generate, next to
//! `wrk`, so that a load-tester knows a result is the target's limit and not the
//! tool's. Both run one after the other (interleaved rounds) against the direct
//! upstream nginx on loopback, each pinned to the generator core with the same
//! connections, duration and request (`GET` of the page, no headers beyond the
//! bench's own), and each run's CPU time comes from the shell's `times` after the
//! generator exited.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::drivers::{IN_FLIGHT, WRK_REPORT};

/// One generator's run: what it reached and what it cost.
#[derive(Clone, Copy, Default)]
pub struct Run {
    pub requests_per_second: f64,
    /// CPU time (user + system) of the generator per request it got answered.
    pub cpu_us_per_request: f64,
}

/// Both generators' median rounds.
pub struct Ceiling {
    pub wrk: Run,
    pub bench: Run,
    pub rounds: usize,
    pub seconds: u64,
}

impl Ceiling {
    /// `ssogate bench`'s requests/s over wrk's.
    pub fn ratio(&self) -> f64 {
        self.bench.requests_per_second / self.wrk.requests_per_second.max(1e-9)
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n## The load generator's own ceiling\n\n\
             `cargo bench --bench load -- ceiling`: wrk and `ssogate bench` (the release \
             binary, closed loop) one after the other against the direct upstream nginx, each \
             pinned to one core, {IN_FLIGHT} connections, HTTP/1.1 keep-alive, {} interleaved \
             rounds of {} s; each row is the generator's median round. CPU per request is the \
             generator's own CPU time.\n\n\
             | generator | requests/s | vs wrk | generator CPU per request |\n|---|---|---|---|",
            self.rounds, self.seconds
        );
        for (name, run, ratio) in [
            ("wrk (1 thread)", self.wrk, 1.0),
            ("ssogate bench", self.bench, self.ratio()),
        ] {
            let _ = writeln!(
                out,
                "| {name} | {:.0} | {ratio:.2}x | {:.2} µs |",
                run.requests_per_second, run.cpu_us_per_request
            );
        }
        out
    }
}

/// Interleaved rounds of wrk and `ssogate bench` against `url`, pinned to `core`.
pub fn measure(url: &str, dir: &Path, core: usize, rounds: usize, length: Duration) -> Ceiling {
    let bench_binary = std::env::var_os("BENCH_GATEWAY_BINARY").map_or_else(
        || env!("CARGO_BIN_EXE_ssogate").into(),
        std::path::PathBuf::from,
    );
    let script = dir.join("report.lua");
    std::fs::write(&script, WRK_REPORT).unwrap();
    let seconds = length.as_secs().max(1).to_string();
    let (mut wrk, mut bench) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let (output, cpu) = timed(
            core,
            Command::new("wrk")
                .args(["-t1", &format!("-c{IN_FLIGHT}"), &format!("-d{seconds}s")])
                .arg("-s")
                .arg(&script)
                .arg(url),
        );
        let fields: Vec<f64> = output
            .lines()
            .find_map(|l| l.strip_prefix("RESULT "))
            .unwrap_or_else(|| panic!("wrk gave no result: {output}"))
            .split_whitespace()
            .map(|f| f.parse().unwrap())
            .collect();
        assert!(
            fields[4] == 0.0 && fields[5] == 0.0,
            "wrk: {} status errors, {} failed requests",
            fields[4],
            fields[5]
        );
        let run = Run {
            requests_per_second: fields[0],
            cpu_us_per_request: cpu.as_secs_f64() * 1e6 / fields[6].max(1.0),
        };
        println!(
            "  ceiling round {round}  wrk            {:>9.0} req/s  {:>5.2} µs CPU/request",
            run.requests_per_second, run.cpu_us_per_request
        );
        wrk.push(run);

        let (output, cpu) = timed(
            core,
            Command::new(&bench_binary)
                .args(["bench", url, "--mix", "token", "--token", "ceiling"])
                .args(["--token-path", url_path(url)])
                .args(["--connections", &IN_FLIGHT.to_string()])
                .args(["--duration", &format!("{seconds}s"), "--quiet"]),
        );
        let (ok, per_second) = answered_ok(&output)
            .unwrap_or_else(|| panic!("ssogate bench gave no result: {output}"));
        assert!(
            output.contains("## Errors\n\nNone."),
            "ssogate bench counted errors:\n{output}"
        );
        let run = Run {
            requests_per_second: per_second,
            cpu_us_per_request: cpu.as_secs_f64() * 1e6 / ok.max(1.0),
        };
        println!(
            "  ceiling round {round}  ssogate bench  {:>9.0} req/s  {:>5.2} µs CPU/request",
            run.requests_per_second, run.cpu_us_per_request
        );
        bench.push(run);
    }
    Ceiling {
        wrk: median(wrk),
        bench: median(bench),
        rounds,
        seconds: length.as_secs(),
    }
}

fn median(mut runs: Vec<Run>) -> Run {
    runs.sort_by(|a, b| a.requests_per_second.total_cmp(&b.requests_per_second));
    runs[runs.len() / 2]
}

/// The path and query of an absolute URL.
fn url_path(url: &str) -> &str {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    after_scheme
        .find('/')
        .map_or("/", |slash| &after_scheme[slash..])
}

/// The report's `| answered ok (2xx) | N (R/s) |` row: N and R.
fn answered_ok(report: &str) -> Option<(f64, f64)> {
    let row = report
        .lines()
        .find_map(|l| l.strip_prefix("| answered ok (2xx) | "))?;
    let (count, rest) = row.split_once(" (")?;
    let rate = rest.split_once("/s)")?.0;
    Some((count.parse().ok()?, rate.parse().ok()?))
}

/// Runs `command` pinned to `core` under `sh`, whose `times` afterwards gives the CPU
/// time (user + system) of its child, the generator: its standard output and that time.
fn timed(core: usize, command: &mut Command) -> (String, Duration) {
    let program = command.get_program().to_owned();
    let args: Vec<_> = command.get_args().map(|a| a.to_owned()).collect();
    let output = Command::new("sh")
        .arg("-c")
        .arg(r#"taskset -c "$0" "$@"; status=$?; times; exit $status"#)
        .arg(core.to_string())
        .arg(program)
        .args(args)
        .output()
        .expect("sh runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{:?} failed: {stdout}\n{}",
        command.get_program(),
        String::from_utf8_lossy(&output.stderr)
    );
    // `times` prints two lines, the shell's user and system time then its children's:
    // `0m1.234s 0m0.567s`.
    let children = stdout.lines().last().unwrap_or_default();
    let cpu = children
        .split_whitespace()
        .map(|field| {
            let (minutes, seconds) = field.trim_end_matches('s').split_once('m').unwrap();
            minutes.parse::<f64>().unwrap() * 60.0 + seconds.parse::<f64>().unwrap()
        })
        .sum::<f64>();
    (stdout, Duration::from_secs_f64(cpu))
}
