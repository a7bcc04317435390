//! Load benchmark: `cargo bench --bench load` (needs Debian's `nginx`, `wrk`,
//! `nghttp2-client` for h2load, and `util-linux` for taskset; `apache2` with
//! `libapache2-mod-auth-openidc` for the Apache comparison, skipped when missing).
//!
//! In one run, all on loopback:
//! - a private nginx answers a small fixed page: the upstream, fast enough never to be
//!   the bottleneck, and the "direct upstream" baseline;
//! - a second private nginx is a plain reverse proxy to it, plain and TLS + HTTP/2;
//! - the leanest reverse proxy hyper allows ([`bare`]: no header work, no log, one
//!   upstream connection per client connection), the floor under the gateway;
//! - ssogate, the release binary, twice (a plain and a TLS listener), with the Sentry
//!   preset and the in-process development provider, each with a session signed in
//!   through the real login flow; and a third time (plain) with the signed identity
//!   assertion on (`[assertion]`), whose signed-in row shows what the assertion costs
//!   next to the plain signed-in row (a cached assertion per person: no signature per
//!   request);
//! - Apache httpd + mod_auth_openidc in front of the same upstream, signed in too.
//!
//! The generators (wrk, h2load) run on the last core, the servers on the others. After
//! a warm-up the targets run interleaved (A B C .. A B C ..), so the machine's noise
//! shows across rounds; the report takes each target's median round. Then: latency at
//! half load, complete logins per second, 100,000 login starts with the gateway's peak
//! memory, a 1 GiB upload with the gateway's peak memory, and the memory of 0, 100k
//! and 1M sessions. It writes
//! `target/bench-report/report.md` and `chart.svg`.
//!
//! `cargo bench --bench load -- ceiling` measures only the load generator's own ceiling
//! ([`ceiling`]): wrk and `ssogate bench` against the direct upstream, one core each.
//!
//! `cargo bench --bench load -- --hold` starts everything, prints each target's
//! command line and the gateways' process ids, and waits (for `perf record -p`).
//! `cargo bench --bench load -- <words>` runs only the targets (and the sections
//! `logins`, `starts`, `upload`, `memory`) whose name contains one of the words; the
//! baselines (nginx, the bare proxy) always run.

mod bare;
#[path = "../../tests/it/support/browser.rs"]
#[allow(dead_code)]
mod browser;
mod ceiling;
mod drivers;
mod extras;
#[path = "../support/memory.rs"]
mod memory;
mod peers;
mod report;
#[path = "../support/sample.rs"]
mod sample;

/// The `ssogate` binary's allocator, for the memory section (sessions held in this
/// process).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use drivers::{Protocol, Round, Target};
use peers::{PAGE, free_port, which};
use report::{Results, Upload};

const ROUND: Duration = Duration::from_secs(5);
const WARM_UP: Duration = Duration::from_secs(2);
const ROUNDS: usize = 3;
const UPLOAD_BYTES: u64 = 1 << 30;
const LOGIN_BROWSERS: usize = 8;
/// Login starts in the flood, and their return target's length (about the longest
/// accepted, `policy::MAX_RETURN_TARGET`, with the origin).
const LOGIN_STARTS: usize = 100_000;
const START_RD_LEN: usize = 2000;
/// A Sentry API path that takes uploads (debug files); signed in, it needs a session.
const UPLOAD_PATH: &str = "/api/0/projects/acme/web/files/dsyms/";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--bare-proxy") {
        bare::serve(&args[at + 1..]);
        return;
    }
    if !args.iter().any(|a| a == "--bench") {
        println!("load: runs only under `cargo bench --bench load`");
        return;
    }
    if memory::child_measurement(&args) {
        return;
    }
    let wanted: Vec<String> = args
        .iter()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .cloned()
        .collect();
    // The ceiling alone needs no h2load.
    let only_ceiling = !wanted.is_empty() && wanted.iter().all(|word| word == "ceiling");
    for (tool, package) in [
        ("nginx", "nginx"),
        ("wrk", "wrk"),
        ("h2load", "nghttp2-client"),
        ("taskset", "util-linux"),
    ] {
        if which(tool).is_none() && !(only_ceiling && tool == "h2load") {
            eprintln!("load: `{tool}` is missing; install it with: apt-get install {package}");
            std::process::exit(2);
        }
    }
    let wants = |name: &str| wanted.is_empty() || wanted.iter().any(|w| name.contains(w.as_str()));

    // Before pinning: afterwards this process sees only the core it was given.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let generator_core = cores - 1;
    let server_cores = if cores > 1 {
        format!("0-{}", cores - 2)
    } else {
        "0".to_owned()
    };
    // This process runs the development provider and the browsers: on the generator's
    // core, away from the servers.
    pin_self(generator_core);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    let mut notes = Vec::new();

    // TLS: one throwaway CA and certificate for every TLS listener.
    let certificate = ssogate::server::tls::local_certificate(&["127.0.0.1", "localhost"]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, &certificate.cert_pem).unwrap();
    std::fs::write(&key, &certificate.key_pem).unwrap();

    let [
        upstream_port,
        proxy_port,
        proxy_tls_port,
        gateway_port,
        gateway_tls_port,
        gateway_assertion_port,
        apache_port,
        bare_port,
    ] = [(); 8].map(|_| free_port());
    // The upload sink runs on this (the generator's) core, as the uploading client.
    let upload_sink = extras::upload_sink();
    let upstream = peers::nginx(
        dir,
        "upstream",
        &peers::upstream_config(upstream_port, Some((UPLOAD_PATH, upload_sink))),
        &server_cores,
    );
    let proxy = peers::nginx(
        dir,
        "proxy",
        &peers::proxy_config(proxy_port, proxy_tls_port, upstream_port, &cert, &key),
        &server_cores,
    );
    upstream.await_port(upstream_port);
    proxy.await_port(proxy_tls_port);
    let bare = peers::bare_proxy(dir, bare_port, upstream_port, &server_cores);

    let ceiling = wants("ceiling").then(|| {
        ceiling::measure(
            &format!("http://127.0.0.1:{upstream_port}{PAGE}"),
            dir,
            generator_core,
            ROUNDS,
            ROUND,
        )
    });
    if let Some(ceiling) = &ceiling
        && only_ceiling
    {
        println!("{}", ceiling.markdown());
        return;
    }

    let gateway_base = format!("http://127.0.0.1:{gateway_port}");
    let gateway_tls_base = format!("https://127.0.0.1:{gateway_tls_port}");
    let gateway_assertion_base = format!("http://127.0.0.1:{gateway_assertion_port}");
    let apache_base = format!("http://127.0.0.1:{apache_port}");
    let provider = runtime.block_on(peers::start_provider(
        "load",
        vec![
            format!("{gateway_base}/oauth2/callback"),
            format!("{gateway_tls_base}/oauth2/callback"),
            format!("{gateway_assertion_base}/oauth2/callback"),
            format!("{apache_base}/redirect_uri"),
        ],
    ));
    let issuer = provider.issuer().to_string();
    let gateway = peers::ssogate(
        dir,
        "gateway",
        &peers::ssogate_config(&gateway_base, gateway_port, None, upstream_port, &issuer),
        gateway_port,
        &server_cores,
    );
    let gateway_tls = peers::ssogate(
        dir,
        "gateway-tls",
        &peers::ssogate_config(
            &gateway_tls_base,
            gateway_tls_port,
            Some((&cert, &key)),
            upstream_port,
            &issuer,
        ),
        gateway_tls_port,
        &server_cores,
    );
    let gateway_assertion = peers::ssogate(
        dir,
        "gateway-assertion",
        &format!(
            "{}[assertion]\nkey_file = \"{}\"\n",
            peers::ssogate_config(
                &gateway_assertion_base,
                gateway_assertion_port,
                None,
                upstream_port,
                &issuer,
            ),
            peers::assertion_key(dir).display()
        ),
        gateway_assertion_port,
        &server_cores,
    );
    let cookie = runtime.block_on(gateway_login("", &gateway_base));
    let assertion_cookie = runtime.block_on(gateway_login("", &gateway_assertion_base));
    let tls_cookie = runtime.block_on(gateway_login(&certificate.ca_pem, &gateway_tls_base));
    let apache = match peers::apache_installed() {
        Ok(_) if wants("Apache") => {
            let apache = peers::apache(dir, apache_port, upstream_port, &issuer, &server_cores);
            let cookie = runtime.block_on(apache_login(&apache_base));
            Some((apache, cookie))
        }
        Ok(_) => None,
        Err(missing) => {
            notes.push(format!(
                "{missing}: the Apache + mod_auth_openidc row is left out (apt-get install apache2 libapache2-mod-auth-openidc)."
            ));
            None
        }
    };

    let target = |name: &str, protocol, url: String, headers: Vec<String>, expect| Target {
        name: name.to_owned(),
        protocol,
        url,
        headers,
        expect,
        nginx: 0,
    };
    let navigation = vec![
        "Accept: text/html,application/xhtml+xml".to_owned(),
        "Sec-Fetch-Mode: navigate".to_owned(),
    ];
    let mut targets = vec![
        target(
            "direct upstream (nginx)",
            Protocol::Http1,
            format!("http://127.0.0.1:{upstream_port}{PAGE}"),
            vec![],
            200,
        ),
        target(
            "nginx reverse proxy",
            Protocol::Http1,
            format!("http://127.0.0.1:{proxy_port}{PAGE}"),
            vec![],
            200,
        ),
        target(
            "nginx reverse proxy",
            Protocol::Http1Tls,
            format!("https://127.0.0.1:{proxy_tls_port}{PAGE}"),
            vec![],
            200,
        ),
        target(
            "nginx reverse proxy",
            Protocol::Http2Tls,
            format!("https://127.0.0.1:{proxy_tls_port}{PAGE}"),
            vec![],
            200,
        ),
        target(
            "hyper bare proxy (no sign-in, no log)",
            Protocol::Http1,
            format!("http://127.0.0.1:{bare_port}{PAGE}"),
            vec![],
            200,
        ),
        target(
            "ssogate, signed in",
            Protocol::Http1,
            format!("{gateway_base}{PAGE}"),
            vec![format!("Cookie: {cookie}")],
            200,
        ),
        target(
            "ssogate, signed in",
            Protocol::Http1Tls,
            format!("{gateway_tls_base}{PAGE}"),
            vec![format!("Cookie: {tls_cookie}")],
            200,
        ),
        target(
            "ssogate, signed in",
            Protocol::Http2Tls,
            format!("{gateway_tls_base}{PAGE}"),
            vec![format!("Cookie: {tls_cookie}")],
            200,
        ),
        target(
            "ssogate, signed in + assertion",
            Protocol::Http1,
            format!("{gateway_assertion_base}{PAGE}"),
            vec![format!("Cookie: {assertion_cookie}")],
            200,
        ),
        target(
            "ssogate, public route (SDK envelope)",
            Protocol::Http1,
            format!("{gateway_base}/api/1/envelope/"),
            vec![],
            200,
        ),
        target(
            "ssogate, no session, page (redirect)",
            Protocol::Http1,
            format!("{gateway_base}{PAGE}"),
            navigation,
            302,
        ),
        target(
            "ssogate, no session, API (401)",
            Protocol::Http1,
            format!("{gateway_base}/api/0/organizations/"),
            vec!["Accept: application/json".into()],
            401,
        ),
    ];
    if let Some((_, apache_cookie)) = &apache {
        targets.push(target(
            "Apache + mod_auth_openidc, signed in",
            Protocol::Http1,
            format!("{apache_base}{PAGE}"),
            vec![format!("Cookie: {apache_cookie}")],
            200,
        ));
    }
    // The baselines (nginx, the bare proxy) always run.
    let mut index = 0;
    targets.retain(|t| {
        index += 1;
        index <= 5 || wants(&t.name)
    });
    for t in 0..targets.len() {
        targets[t].nginx = targets
            .iter()
            .position(|n| n.name == "nginx reverse proxy" && n.protocol == targets[t].protocol)
            .unwrap();
    }
    for t in &targets {
        runtime.block_on(check_status(t, &certificate.ca_pem));
    }

    if args.iter().any(|a| a == "--hold") {
        hold(
            &targets,
            &[
                ("hyper bare proxy", &bare),
                ("ssogate", &gateway),
                ("ssogate (TLS)", &gateway_tls),
                ("ssogate (assertion)", &gateway_assertion),
            ],
        );
        return; // the servers stop as they are dropped
    }
    println!(
        "load: {cores} cores; servers on {server_cores}, generators on {generator_core}; {ROUNDS} rounds of {ROUND:?} after a {WARM_UP:?} warm-up, interleaved"
    );
    for t in &targets {
        drivers::full_speed(t, dir, WARM_UP, generator_core);
    }
    // The server answering each target, by port, for its CPU time per request.
    let mut servers = vec![
        (upstream_port, &upstream),
        (proxy_port, &proxy),
        (proxy_tls_port, &proxy),
        (bare_port, &bare),
        (gateway_port, &gateway),
        (gateway_tls_port, &gateway_tls),
        (gateway_assertion_port, &gateway_assertion),
    ];
    if let Some((apache, _)) = &apache {
        servers.push((apache_port, apache));
    }
    let server_of = |t: &Target| {
        let port = t.url.parse::<http::Uri>().unwrap().port_u16().unwrap();
        servers.iter().find(|(p, _)| *p == port).unwrap().1
    };
    let mut rounds: Vec<Vec<Round>> = vec![Vec::new(); targets.len()];
    for round in 1..=ROUNDS {
        for (index, t) in targets.iter().enumerate() {
            let cpu_before = server_of(t).cpu_time();
            let mut result = drivers::full_speed(t, dir, ROUND, generator_core);
            let requests = result.requests_per_second * ROUND.as_secs_f64();
            result.cpu_us_per_request =
                (server_of(t).cpu_time() - cpu_before).as_secs_f64() * 1e6 / requests;
            println!(
                "  round {round}  {:<40} {:<15} {:>9.0} req/s  p99 {:>6} µs  {:>5.1} µs CPU/request",
                t.name,
                t.protocol.label(),
                result.requests_per_second,
                result.p99_us,
                result.cpu_us_per_request,
            );
            rounds[index].push(result);
        }
    }

    // Latency at half of the gateway's maximum, for the gateway and the two baselines.
    let medians = report::medians(&rounds);
    let signed_in = targets
        .iter()
        .position(|t| t.name == "ssogate, signed in" && t.protocol == Protocol::Http1);
    // ROUNDS interleaved runs each, as above; each target's median run by p99 (a
    // single run moved more from run to run than the changes it was to show).
    let mut half_load = Vec::new();
    if let Some(signed_in) = signed_in {
        let rate = (medians[signed_in].requests_per_second / 2.0) as u32;
        let paced_targets = [0, 1, signed_in];
        let mut runs: Vec<Vec<Round>> = vec![Vec::new(); paced_targets.len()];
        for round in 1..=ROUNDS {
            for (slot, &index) in paced_targets.iter().enumerate() {
                let run = runtime.block_on(drivers::paced(&targets[index], rate, ROUND));
                println!(
                    "  half load  round {round}  {:<40} p99 {:>6} µs",
                    targets[index].name, run.p99_us
                );
                runs[slot].push(run);
            }
        }
        for (slot, mut target_runs) in runs.into_iter().enumerate() {
            target_runs.sort_by_key(|run| run.p99_us);
            let median = target_runs.swap_remove(target_runs.len() / 2);
            half_load.push((paced_targets[slot], rate, median));
        }
    }

    let logins = wants("logins").then(|| {
        let logins = runtime.block_on(extras::logins(
            &gateway_base,
            &gateway,
            LOGIN_BROWSERS,
            ROUND,
        ));
        println!("  logins     {:.0}/s", logins.per_second);
        logins
    });

    let starts = wants("starts").then(|| {
        let (before, peak, (took, longest_cookie)) = extras::peak_resident_during(&gateway, || {
            runtime.block_on(extras::login_starts(
                &gateway_base,
                LOGIN_STARTS,
                START_RD_LEN,
                LOGIN_BROWSERS * 8,
            ))
        });
        let after = memory::status_bytes(&gateway.pid().to_string(), "VmRSS");
        println!(
            "  starts     {LOGIN_STARTS} in {:.1} s, gateway peak {} MiB over {} MiB",
            took.as_secs_f64(),
            peak >> 20,
            before >> 20
        );
        report::Starts {
            count: LOGIN_STARTS,
            rd_len: START_RD_LEN,
            seconds: took.as_secs_f64(),
            longest_cookie,
            resident: (before, peak, after),
        }
    });

    // ROUNDS interleaved uploads through each; each row is the median by time, the
    // gateway's with its resident set before the first and its highest peak.
    let mut uploads = Vec::new();
    if wants("upload") {
        let through = [
            ("direct upstream (nginx, to the sink)", upstream_port, None),
            ("nginx reverse proxy", proxy_port, None),
            ("ssogate, signed in", gateway_port, Some(cookie.as_str())),
        ];
        let mut times = vec![Vec::new(); through.len()];
        let mut resident: Option<(u64, u64)> = None;
        for _ in 0..ROUNDS {
            for (slot, &(_, port, cookie)) in through.iter().enumerate() {
                let upload = || extras::upload(port, UPLOAD_PATH, cookie, UPLOAD_BYTES);
                let took = if port == gateway_port {
                    let (before, peak, took) = extras::peak_resident_during(&gateway, upload);
                    println!(
                        "  upload     {:.2} s, gateway peak {} MiB over {} MiB",
                        took.as_secs_f64(),
                        peak >> 20,
                        before >> 20
                    );
                    let first_before = resident.map_or(before, |(first, _)| first);
                    let highest = resident.map_or(peak, |(_, highest)| highest.max(peak));
                    resident = Some((first_before, highest));
                    took
                } else {
                    upload()
                };
                times[slot].push(took.as_secs_f64());
            }
        }
        for ((name, port, _), mut seconds) in through.into_iter().zip(times) {
            seconds.sort_by(f64::total_cmp);
            uploads.push(Upload {
                target: name,
                seconds: seconds[seconds.len() / 2],
                resident: resident.filter(|_| port == gateway_port),
            });
        }
    }

    let gateway_idle_rss = memory::status_bytes(&gateway.pid().to_string(), "VmRSS");
    let memory = if wants("memory") {
        [0, 100_000, 1_000_000]
            .map(|count| memory::measure_in_fresh_process(memory::Fill::Sessions, count))
            .to_vec()
    } else {
        Vec::new()
    };

    let results = Results {
        cores,
        targets,
        rounds,
        round_seconds: ROUND.as_secs(),
        warm_up_seconds: WARM_UP.as_secs(),
        half_load,
        logins,
        starts,
        uploads,
        upload_bytes: UPLOAD_BYTES,
        memory,
        gateway_idle_rss,
        ceiling,
        notes,
    };
    let markdown = report::markdown(&results);
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-report");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("report.md"), &markdown).unwrap();
    std::fs::write(out.join("chart.svg"), report::chart(&results)).unwrap();
    println!(
        "\n{markdown}\nload: wrote {}",
        out.join("report.md").display()
    );
    drop((apache, gateway, gateway_tls, proxy, upstream, provider));
}

/// Prints how to drive each target and which processes to profile; waits for Enter.
fn hold(targets: &[Target], servers: &[(&str, &peers::Server)]) {
    for (name, server) in servers {
        println!("{name}: pid {}", server.pid());
    }
    for t in targets {
        let headers: String = t.headers.iter().map(|h| format!(" -H '{h}'")).collect();
        println!("{} ({}):{headers} {}", t.name, t.protocol.label(), t.url);
    }
    println!("holding: press Enter to stop");
    let _ = std::io::stdin().read_line(&mut String::new());
}

fn pin_self(core: usize) {
    let status = Command::new("taskset")
        .args([
            "-a",
            "-cp",
            &core.to_string(),
            &std::process::id().to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "taskset failed");
}

/// Signs in at the gateway; its session cookie.
async fn gateway_login(ca_pem: &str, base: &str) -> String {
    let mut browser = browser::Browser::new(ca_pem, base);
    let landed = browser.login(PAGE, "load", "load").await;
    assert_eq!(landed.status, 200, "the login at {base} failed: {landed:?}");
    let name = [
        ssogate::config::HOST_COOKIE_NAME,
        ssogate::config::PLAIN_COOKIE_NAME,
    ]
    .into_iter()
    .find(|name| browser.cookies.contains_key(*name))
    .expect("a session cookie");
    format!("{name}={}", browser.cookies[name])
}

/// Signs in at Apache + mod_auth_openidc; its cookies.
async fn apache_login(base: &str) -> String {
    let mut browser = browser::Browser::new("", base);
    let to_provider = browser.navigate(PAGE).await;
    let authorize = to_provider
        .location()
        .unwrap_or_else(|| {
            panic!("Apache did not send the browser to the provider: {to_provider:?}")
        })
        .to_owned();
    let callback = browser
        .sign_in_at_provider(&authorize, "load", "load")
        .await;
    let landed = browser.follow(&callback).await;
    assert_eq!(landed.status, 200, "the login at Apache failed: {landed:?}");
    browser
        .cookies
        .iter()
        .filter(|(name, _)| name.starts_with("mod_auth_openidc"))
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// One request as the generator will send it: the answer must be the expected one
/// (and a signed-in page must come from the upstream).
async fn check_status(target: &Target, ca_pem: &str) {
    let mut browser =
        browser::Browser::with_alpn(ca_pem, &target.url, target.protocol == Protocol::Http2Tls);
    let mut request = browser.request(http::Method::GET, &target.url);
    for header in &target.headers {
        let (name, value) = header.split_once(": ").unwrap();
        request = request.header(name, value);
    }
    let answer = browser.send(request.body(browser::empty()).unwrap()).await;
    assert_eq!(
        answer.status.as_u16(),
        target.expect,
        "{}: {answer:?}",
        target.name
    );
    if target.expect == 200 {
        assert_eq!(
            answer.body, "ok\n",
            "{}: not the upstream's page",
            target.name
        );
    }
}
