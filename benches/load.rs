//! Load benchmark, first part: `cargo bench --bench load` (needs Debian's `nginx` and
//! `wrk`, and `taskset`).
//!
//! In one run, on loopback:
//! - a private nginx answers a small fixed page: the upstream, fast enough never to be
//!   the bottleneck, and the "direct upstream" baseline;
//! - a second private nginx is a plain reverse proxy to it (keep-alive upstream
//!   connections, like the gateway's): the "nginx proxy" baseline;
//! - ssogate (this process, release build, plain HTTP listener) in front of the same
//!   upstream, with the Sentry preset, the in-process development provider, and a
//!   session signed in through the real login flow.
//!
//! `wrk` drives each target pinned to the last core; the servers are pinned to the
//! others. After a warm-up the targets run interleaved (A B C .. A B C ..), so the
//! machine's noise shows across rounds; the report takes each target's median round.
//! `cargo bench --bench load -- signed` runs only the targets whose name contains
//! "signed" (and the two baselines). It writes `target/bench-report/report.md` (figures, and ratios to the direct
//! upstream and to nginx from the same run, with the machine's CPU) and `chart.svg`.
//!
//! Still to come (issue 6): TLS and HTTP/2 targets, Apache + mod_auth_openidc, logins
//! per second, a 1 GiB upload, memory at 0/100k/1M sessions in the same report.

#[path = "../tests/support/browser.rs"]
#[allow(dead_code)]
mod browser;

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ssogate::config::Settings;
use ssogate::devidp::{DevClient, DevProvider, DevProviderConfig, DevUser, SigningAlg};
use ssogate::server;

/// wrk's connections and the length of one measured round.
const CONNECTIONS: u32 = 32;
const ROUND: Duration = Duration::from_secs(5);
const WARM_UP: Duration = Duration::from_secs(2);
const ROUNDS: usize = 3;

/// Prints requests/s and latency percentiles (microseconds) when wrk is done.
const WRK_REPORT: &str = r#"
done = function(summary, latency, requests)
  local failed = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format("RESULT %f %d %d %d %d %d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    summary.errors.status, failed))
end
"#;

struct Target {
    name: &'static str,
    url: String,
    headers: Vec<String>,
    /// The answer every request should get.
    expect: &'static str,
}

#[derive(Clone, Copy, Default)]
struct Round {
    requests_per_second: f64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    non_2xx: u64,
    failed: u64,
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("load: runs only under `cargo bench --bench load`");
        return;
    }
    for tool in ["nginx", "wrk", "taskset"] {
        if which(tool).is_none() {
            eprintln!(
                "load: `{tool}` is missing; install it with: apt-get install nginx wrk util-linux"
            );
            std::process::exit(2);
        }
    }
    // Before pinning: afterwards this process sees only the cores it was given.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let generator_core = cores - 1;
    let server_cores = if cores > 1 {
        format!("0-{}", cores - 2)
    } else {
        "0".to_owned()
    };
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores.saturating_sub(1).max(1))
        .enable_all()
        .build()
        .unwrap();
    // The gateway runs in this process: keep it (and the nginx instances) off the
    // generator's core.
    pin(std::process::id(), &server_cores);

    let upstream_port = free_port();
    let proxy_port = free_port();
    let upstream = Nginx::start(dir.path(), "upstream", &upstream_config(upstream_port));
    let proxy = Nginx::start(
        dir.path(),
        "proxy",
        &proxy_config(proxy_port, upstream_port),
    );
    pin(upstream.pid(), &server_cores);
    pin(proxy.pid(), &server_cores);

    let (gateway_url, cookie, _provider, _gateway) = runtime.block_on(start_gateway(upstream_port));
    let page = "/organizations/acme/issues/?project=1";
    let mut targets = vec![
        Target {
            name: "direct upstream (nginx)",
            url: format!("http://127.0.0.1:{upstream_port}{page}"),
            headers: vec![],
            expect: "200",
        },
        Target {
            name: "nginx reverse proxy",
            url: format!("http://127.0.0.1:{proxy_port}{page}"),
            headers: vec![],
            expect: "200",
        },
        Target {
            name: "ssogate, signed in",
            url: format!("{gateway_url}{page}"),
            headers: vec![format!("Cookie: {cookie}")],
            expect: "200",
        },
        Target {
            name: "ssogate, public route (SDK envelope)",
            url: format!("{gateway_url}/api/1/envelope/"),
            headers: vec![],
            expect: "200",
        },
        Target {
            name: "ssogate, no session, API (401)",
            url: format!("{gateway_url}/api/0/organizations/"),
            headers: vec!["Accept: application/json".into()],
            expect: "401",
        },
    ];
    // Words after `--` pick targets by name; the two baselines always run.
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let mut index = 0;
    targets.retain(|target| {
        index += 1;
        index <= 2 || wanted.is_empty() || wanted.iter().any(|w| target.name.contains(w.as_str()))
    });
    let script = dir.path().join("report.lua");
    std::fs::write(&script, WRK_REPORT).unwrap();

    println!(
        "load: {cores} cores; servers on {server_cores}, wrk on {generator_core}; {CONNECTIONS} connections; {ROUNDS} rounds of {ROUND:?} after a {WARM_UP:?} warm-up, interleaved"
    );
    for target in &targets {
        wrk(target, &script, WARM_UP, generator_core);
    }
    let mut rounds: Vec<Vec<Round>> = vec![Vec::new(); targets.len()];
    for round in 1..=ROUNDS {
        for (index, target) in targets.iter().enumerate() {
            let result = wrk(target, &script, ROUND, generator_core);
            println!(
                "  round {round}  {:<40} {:>9.0} req/s  p99 {:>6} µs",
                target.name, result.requests_per_second, result.p99_us
            );
            rounds[index].push(result);
        }
    }
    let report = report(&targets, &rounds, cores);
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-report");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("report.md"), &report).unwrap();
    std::fs::write(out.join("chart.svg"), chart(&targets, &rounds)).unwrap();
    println!(
        "\n{report}\nload: wrote {}",
        out.join("report.md").display()
    );
    drop(proxy);
    drop(upstream);
}

/// ssogate in this process in front of `upstream_port`, with the development
/// provider, and a session cookie from a real login.
async fn start_gateway(
    upstream_port: u16,
) -> (String, String, DevProvider, server::RunningGateway) {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    let base = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let claims = serde_json::json!({
        "sub": "10000001", "email": "load@example.com", "email_verified": true,
        "login": "load", "permissions": ["sentry:member"],
    });
    let provider = DevProvider::start(
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        DevProviderConfig {
            issuer_path: "/api/oidc".into(),
            clients: vec![DevClient {
                client_id: "sentry".into(),
                client_secret: "load-bench-secret".into(),
                redirect_uris: vec![format!("{base}/oauth2/callback")],
                post_logout_redirect_uris: vec![],
            }],
            users: vec![DevUser {
                username: "load".into(),
                password: "load".into(),
                claims: claims.as_object().unwrap().clone(),
            }],
            signing_alg: SigningAlg::Rs256,
            id_token_ttl: Duration::from_secs(3600),
            access_token_ttl: Duration::from_secs(3600),
        },
    )
    .await
    .unwrap();
    let config = format!(
        r#"
[server]
public_url = "{base}"
[tls]
enabled = false
[upstream]
url = "http://127.0.0.1:{upstream_port}"
[oidc]
issuer = "{issuer}"
client_id = "sentry"
client_secret = "load-bench-secret"
[session]
secrets = ["{secret}"]
[access]
preset = "sentry"
"#,
        issuer = provider.issuer(),
        secret = ssogate::session::new_secret(),
    );
    let settings = Settings::from_toml(&config, "(load bench)", std::iter::empty()).unwrap();
    let gateway = server::start_on(listener, settings, std::future::pending())
        .await
        .unwrap();
    let mut browser = browser::Browser::new("", &base);
    let landed = browser.login("/", "load", "load").await;
    assert_eq!(landed.status, 200, "the login for the load test failed");
    let cookie = format!("_ssogate={}", browser.cookies["_ssogate"]);
    (base, cookie, provider, gateway)
}

fn upstream_config(port: u16) -> String {
    format!(
        r#"worker_processes 1;
daemon off;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port};
        location / {{ default_type text/plain; return 200 "ok\n"; }}
    }}
}}
"#
    )
}

fn proxy_config(port: u16, upstream_port: u16) -> String {
    format!(
        r#"worker_processes 1;
daemon off;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    upstream app {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
    }}
}}
"#
    )
}

/// A private nginx: its own prefix directory, config, logs and pid file.
struct Nginx {
    child: Child,
}

impl Nginx {
    fn start(dir: &Path, name: &str, config: &str) -> Nginx {
        let prefix = dir.join(name);
        std::fs::create_dir_all(prefix.join("logs")).unwrap();
        let config_file = prefix.join("nginx.conf");
        std::fs::write(&config_file, config).unwrap();
        let child = Command::new(which("nginx").unwrap())
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&config_file)
            .arg("-e")
            .arg(prefix.join("logs/error.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx starts");
        std::thread::sleep(Duration::from_millis(300));
        Nginx { child }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-QUIT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// Pins a process and all its threads (and, for nginx, the workers it forks later
/// inherit it) to `cores`.
fn pin(pid: u32, cores: &str) {
    let status = Command::new("taskset")
        .args(["-a", "-cp", cores, &pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "taskset failed for pid {pid}");
}

/// One wrk run against `target`, pinned to `core`.
fn wrk(target: &Target, script: &Path, length: Duration, core: usize) -> Round {
    let mut command = Command::new("taskset");
    command
        .args(["-c", &core.to_string(), "wrk", "-t1"])
        .arg(format!("-c{CONNECTIONS}"))
        .arg(format!("-d{}s", length.as_secs()))
        .arg("-s")
        .arg(script);
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
    let round = Round {
        requests_per_second: fields[0],
        p50_us: fields[1] as u64,
        p99_us: fields[2] as u64,
        p999_us: fields[3] as u64,
        non_2xx: fields[4] as u64,
        failed: fields[5] as u64,
    };
    let wrong = if target.expect == "200" {
        round.non_2xx
    } else {
        0
    };
    assert!(
        wrong == 0 && round.failed == 0,
        "{}: {} answers were not {} and {} requests failed",
        target.name,
        wrong,
        target.expect,
        round.failed
    );
    round
}

/// Each target's median round (by requests/s).
fn medians(rounds: &[Vec<Round>]) -> Vec<Round> {
    rounds
        .iter()
        .map(|runs| {
            let mut sorted = runs.clone();
            sorted.sort_by(|a, b| a.requests_per_second.total_cmp(&b.requests_per_second));
            sorted[sorted.len() / 2]
        })
        .collect()
}

fn report(targets: &[Target], rounds: &[Vec<Round>], cores: usize) -> String {
    let medians = medians(rounds);
    let (direct, nginx) = (medians[0], medians[1]);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mut out = String::new();
    let _ = writeln!(out, "# ssogate load benchmark\n");
    let _ = writeln!(
        out,
        "Machine: {cpu}, {cores} cores. wrk (1 thread, {CONNECTIONS} connections) on its own core; \
         {ROUNDS} interleaved rounds of {}s after a {}s warm-up; each row is the target's median round. \
         Command: `cargo bench --bench load`.\n",
        ROUND.as_secs(),
        WARM_UP.as_secs()
    );
    let _ = writeln!(
        out,
        "| target | requests/s | vs direct | vs nginx proxy | p50 | p99 | p99.9 | p99 added over direct | rounds (req/s) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    for ((target, median), runs) in targets.iter().zip(&medians).zip(rounds) {
        let all: Vec<String> = runs
            .iter()
            .map(|r| format!("{:.0}", r.requests_per_second))
            .collect();
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.2}x | {:.2}x | {} | {} | {} | {} | {} |",
            target.name,
            median.requests_per_second,
            median.requests_per_second / direct.requests_per_second,
            median.requests_per_second / nginx.requests_per_second,
            micros(median.p50_us),
            micros(median.p99_us),
            micros(median.p999_us),
            micros(median.p99_us.saturating_sub(direct.p99_us)),
            all.join(" / "),
        );
    }
    let _ = writeln!(
        out,
        "\nLatencies are at full load ({CONNECTIONS} connections, as fast as the target answers), not at half load."
    );
    out
}

fn micros(us: u64) -> String {
    if us >= 1000 {
        format!("{:.2} ms", us as f64 / 1000.0)
    } else {
        format!("{us} µs")
    }
}

/// Two bar charts side by side: requests/s and p99 per target.
fn chart(targets: &[Target], rounds: &[Vec<Round>]) -> String {
    let medians = medians(rounds);
    let (row, label_width, bar_width) = (28.0, 270.0, 260.0);
    let height = 50.0 + row * targets.len() as f64;
    let max_rps = medians
        .iter()
        .map(|m| m.requests_per_second)
        .fold(1.0, f64::max);
    let max_p99 = medians.iter().map(|m| m.p99_us).max().unwrap_or(1).max(1) as f64;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" font-family="sans-serif" font-size="12">
<text x="{x1}" y="18" font-weight="bold">requests/s (higher is better)</text>
<text x="{x2}" y="18" font-weight="bold">p99 latency (lower is better)</text>
"#,
        w = label_width + 2.0 * (bar_width + 90.0),
        x1 = label_width,
        x2 = label_width + bar_width + 90.0,
    );
    for (index, (target, median)) in targets.iter().zip(&medians).enumerate() {
        let y = 30.0 + row * index as f64;
        let rps = bar_width * median.requests_per_second / max_rps;
        let p99 = bar_width * median.p99_us as f64 / max_p99;
        let x2 = label_width + bar_width + 90.0;
        let _ = write!(
            svg,
            r##"<text x="{lx}" y="{ty}" text-anchor="end">{name}</text>
<rect x="{label_width}" y="{y}" width="{rps:.1}" height="18" fill="#4c78a8"/>
<text x="{rx:.1}" y="{ty}">{rv:.0}</text>
<rect x="{x2}" y="{y}" width="{p99:.1}" height="18" fill="#f58518"/>
<text x="{px:.1}" y="{ty}">{pv}</text>
"##,
            lx = label_width - 8.0,
            ty = y + 13.0,
            name = target.name,
            rx = label_width + rps + 4.0,
            rv = median.requests_per_second,
            px = x2 + p99 + 4.0,
            pv = micros(median.p99_us),
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|dir| Path::new(dir).join(tool))
        .find(|path| path.is_file())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
