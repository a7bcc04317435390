//! `target/bench-report/report.md` and `chart.svg` from one run's results.

use std::fmt::Write as _;

use crate::drivers::{IN_FLIGHT, Round, Target};
use crate::extras::Logins;
use crate::memory::Resident;

pub struct Results {
    pub cores: usize,
    pub targets: Vec<Target>,
    /// Every measured round of each target, in order.
    pub rounds: Vec<Vec<Round>>,
    pub round_seconds: u64,
    pub warm_up_seconds: u64,
    /// Fixed-rate runs: (target index, the rate asked for, the run).
    pub half_load: Vec<(usize, u32, Round)>,
    pub logins: Option<Logins>,
    pub starts: Option<Starts>,
    pub uploads: Vec<Upload>,
    pub upload_bytes: u64,
    pub memory: Vec<Resident>,
    pub gateway_idle_rss: u64,
    /// `ssogate bench` next to wrk against the direct upstream (`-- ceiling`).
    pub ceiling: Option<crate::ceiling::Ceiling>,
    /// Things the run could not do (a peer not installed, say).
    pub notes: Vec<String>,
}

/// A flood of login starts that never come back.
pub struct Starts {
    pub count: usize,
    pub rd_len: usize,
    pub seconds: f64,
    /// The longest `Set-Cookie` (the login cookie) answered.
    pub longest_cookie: usize,
    /// The gateway's resident set before, at its peak during, and after the flood.
    pub resident: (u64, u64, u64),
}

pub struct Upload {
    pub target: &'static str,
    pub seconds: f64,
    /// The gateway's resident set before the upload and at its peak during it.
    pub resident: Option<(u64, u64)>,
}

/// Each target's median round (by requests/s).
pub fn medians(rounds: &[Vec<Round>]) -> Vec<Round> {
    rounds
        .iter()
        .map(|runs| {
            let mut sorted = runs.clone();
            sorted.sort_by(|a, b| a.requests_per_second.total_cmp(&b.requests_per_second));
            sorted[sorted.len() / 2]
        })
        .collect()
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

pub fn markdown(results: &Results) -> String {
    let medians = medians(&results.rounds);
    let direct = medians[0];
    let mut out = String::new();
    let _ = writeln!(out, "# ssogate load benchmark\n");
    let _ = writeln!(
        out,
        "Machine: {}, {} cores. Command: `cargo bench --bench load`. The load generator runs on \
         its own core, every server on the others. {} requests in flight (wrk: 1 thread, {} \
         connections; HTTP/2: h2load, {} connections × {} streams); {} interleaved rounds of {} s \
         after a {} s warm-up; each row is the target's median round. Server CPU per request is the \
         CPU time of the process answering (the proxy or gateway, not the upstream behind it) over \
         the round, divided by its requests: steadier than requests/s on a shared machine.\n",
        cpu_model(),
        results.cores,
        IN_FLIGHT,
        IN_FLIGHT,
        crate::drivers::H2_CONNECTIONS,
        IN_FLIGHT / crate::drivers::H2_CONNECTIONS,
        results.rounds.first().map_or(0, Vec::len),
        results.round_seconds,
        results.warm_up_seconds,
    );
    let _ = writeln!(
        out,
        "| target | protocol | answer | requests/s | vs direct | vs nginx proxy (same protocol) | server CPU per request | p50 | p99 | p99.9 | rounds (req/s) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|");
    for ((target, median), runs) in results.targets.iter().zip(&medians).zip(&results.rounds) {
        let all: Vec<String> = runs
            .iter()
            .map(|r| format!("{:.0}", r.requests_per_second))
            .collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.0} | {:.2}x | {:.2}x | {:.1} µs | {} | {} | {} | {} |",
            target.name,
            target.protocol.label(),
            target.expect,
            median.requests_per_second,
            median.requests_per_second / direct.requests_per_second,
            median.requests_per_second / medians[target.nginx].requests_per_second,
            median.cpu_us_per_request,
            micros(median.p50_us),
            micros(median.p99_us),
            micros(median.p999_us),
            all.join(" / "),
        );
    }

    if let Some((_, rate, _)) = results.half_load.first() {
        let _ = writeln!(
            out,
            "\n## Latency at half load\n\nA fixed {rate} requests/s (half of ssogate's signed-in maximum \
             above), paced evenly over {IN_FLIGHT} HTTP/1.1 connections by the bench itself on the \
             generator core; {} interleaved runs of {} s each, and each row is the target's \
             median run by p99.\n",
            results.rounds.first().map_or(0, Vec::len),
            results.round_seconds,
        );
        let _ = writeln!(
            out,
            "| target | achieved req/s | p50 | p99 | p99.9 | p99 added over direct |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|");
        let direct_p99 = results.half_load[0].2.p99_us;
        for (index, _, round) in &results.half_load {
            let _ = writeln!(
                out,
                "| {} | {:.0} | {} | {} | {} | {} |",
                results.targets[*index].name,
                round.requests_per_second,
                micros(round.p50_us),
                micros(round.p99_us),
                micros(round.p999_us),
                micros(round.p99_us.saturating_sub(direct_p99)),
            );
        }
    }

    if let Some(logins) = &results.logins {
        let _ = writeln!(
            out,
            "\n## Logins\n\n{:.0} complete logins/s through ssogate (HTTP/1.1) against the in-process \
             development provider (RS256 ID tokens), {} browsers at once, each login a new browser: \
             start, provider form, callback (code exchange, ID token check), landing page. The gateway \
             spent {:.2} ms of CPU per login; the provider and the browsers ran on the generator core.",
            logins.per_second,
            logins.concurrency,
            logins.gateway_cpu_per_login.as_secs_f64() * 1000.0,
        );
    }

    if let Some(starts) = &results.starts {
        let (before, peak, after) = starts.resident;
        let _ = writeln!(
            out,
            "\n## Login starts\n\n{} `/oauth2/start` requests with a {}-byte return target, as a \
             stranger makes them (no session, never finished), in {:.1} s: the gateway's resident \
             memory was {} before, {} at its peak and {} after (growth {}). A login in flight \
             is kept in the browser's sealed login cookie, not on the server; the longest \
             `Set-Cookie` was {} bytes.",
            starts.count,
            starts.rd_len,
            starts.seconds,
            mib(before),
            mib(peak),
            mib(after),
            mib(peak.saturating_sub(before)),
            starts.longest_cookie,
        );
    }

    if !results.uploads.is_empty() {
        let _ = writeln!(
            out,
            "\n## Large upload\n\nOne `POST` of {} MiB (Content-Length, one connection) to a Sentry API \
             path; each target streams it to the upstream nginx, which streams it to a sink that \
             reads every byte before it answers (as Sentry stores the file). {} interleaved \
             uploads through each; each row is the median by time, with the gateway's highest \
             peak.\n",
            results.upload_bytes >> 20,
            results.rounds.first().map_or(0, Vec::len),
        );
        let _ = writeln!(
            out,
            "| through | time | throughput | gateway resident before | gateway peak | growth |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|");
        for upload in &results.uploads {
            let throughput = results.upload_bytes as f64 / (1024.0 * 1024.0) / upload.seconds;
            let (before, peak, growth) = match upload.resident {
                Some((before, peak)) => (mib(before), mib(peak), mib(peak.saturating_sub(before))),
                None => ("".into(), "".into(), "".into()),
            };
            let _ = writeln!(
                out,
                "| {} | {:.2} s | {:.0} MiB/s | {before} | {peak} | {growth} |",
                upload.target, upload.seconds, throughput
            );
        }
    }

    if !results.memory.is_empty() {
        let _ = writeln!(
            out,
            "\n## Memory\n\nThe ssogate process above, started and signed in once: {} resident. The \
             in-memory session store filled with sessions of a real Encvoy ID login (refresh token, \
             `sid`, email, login, three permissions), each count in a fresh process:\n",
            mib(results.gateway_idle_rss)
        );
        let _ = writeln!(
            out,
            "| sessions | process resident | growth | per session |"
        );
        let _ = writeln!(out, "|---|---|---|---|");
        for resident in &results.memory {
            let per = if resident.count == 0 {
                "".into()
            } else {
                format!("{} B", resident.per_entry())
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {per} |",
                resident.count,
                mib(resident.after),
                mib(resident.growth())
            );
        }
    }
    if let Some(ceiling) = &results.ceiling {
        out.push_str(&ceiling.markdown());
    }
    for note in &results.notes {
        let _ = writeln!(out, "\nNote: {note}");
    }
    out
}

fn micros(us: u64) -> String {
    if us >= 1000 {
        format!("{:.2} ms", us as f64 / 1000.0)
    } else {
        format!("{us} µs")
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Two bar charts side by side: requests/s and p99 per target.
pub fn chart(results: &Results) -> String {
    let medians = medians(&results.rounds);
    let (row, label_width, bar_width) = (28.0, 380.0, 260.0);
    let height = 50.0 + row * results.targets.len() as f64;
    let max_rps = medians
        .iter()
        .map(|m| m.requests_per_second)
        .fold(1.0, f64::max);
    let max_p99 = medians.iter().map(|m| m.p99_us).max().unwrap_or(1).max(1) as f64;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{x1}" y="18" font-weight="bold">requests/s (higher is better)</text>
<text x="{x2}" y="18" font-weight="bold">p99 latency (lower is better)</text>
"#,
        w = label_width + 2.0 * (bar_width + 90.0),
        x1 = label_width,
        x2 = label_width + bar_width + 90.0,
    );
    for (index, (target, median)) in results.targets.iter().zip(&medians).enumerate() {
        let y = 30.0 + row * index as f64;
        let rps = bar_width * median.requests_per_second / max_rps;
        let p99 = bar_width * median.p99_us as f64 / max_p99;
        let x2 = label_width + bar_width + 90.0;
        let _ = write!(
            svg,
            r##"<text x="{lx}" y="{ty}" text-anchor="end">{name} ({protocol})</text>
<rect x="{label_width}" y="{y}" width="{rps:.1}" height="18" fill="#4c78a8"/>
<text x="{rx:.1}" y="{ty}">{rv:.0}</text>
<rect x="{x2}" y="{y}" width="{p99:.1}" height="18" fill="#f58518"/>
<text x="{px:.1}" y="{ty}">{pv}</text>
"##,
            lx = label_width - 8.0,
            ty = y + 13.0,
            name = target.name.replace('&', "&amp;").replace('<', "&lt;"),
            protocol = target.protocol.label(),
            rx = label_width + rps + 4.0,
            rv = median.requests_per_second,
            px = x2 + p99 + 4.0,
            pv = micros(median.p99_us),
        );
    }
    svg.push_str("</svg>\n");
    svg
}
