//! Heap allocations per request: `cargo bench --bench allocations` (needs Debian's
//! `nginx`, the upstream).
//!
//! The gateway runs in this process, as the binary runs it (one serving thread on a
//! current-thread runtime, `server.threads = 1`, access lines on through the real log
//! formatter and batcher, written to nowhere), with the Sentry preset, in front of a
//! private nginx (a separate process) that answers a small fixed page. The
//! development provider runs here too, for discovery and the login that makes the
//! session; both happen before counting starts. The client is a plain blocking
//! `TcpStream` on one keep-alive connection, writing request bytes built beforehand
//! and reading each answer into a fixed buffer: it allocates nothing, so every
//! allocation counted is the gateway's.
//!
//! Counting is [`dhat`]'s, process-wide: every allocation and reallocation (a
//! `realloc` counts as one block of its new size) on any thread. For each kind of
//! request: a warm-up, then the counted requests; then the same length of time with no
//! request, whose allocations (the gateway's timers) are subtracted.
//!
//! It prints a Markdown table and writes it to `benches/results/allocations.md`.
//! `cargo bench --bench allocations -- --profile <kind>` instead writes a dhat profile
//! of one kind (`signed-in`, `envelope`, `page-302`, `api-401`) to
//! `target/dhat-<kind>.json`, for dhat's viewer (dh_view.html).
//!
//! Under `cargo test --all-targets` it makes a short run (a few requests of each kind,
//! nothing written), and skips when nginx is missing.

#[path = "../tests/it/support/browser.rs"]
#[allow(dead_code)]
mod browser;
#[path = "load/peers.rs"]
#[allow(dead_code)]
mod peers;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use peers::PAGE;
use ssogate::config::Settings;
use ssogate::observe::logging::{self, LogFormat};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// Requests before counting (connection pools, caches, buffers), and counted.
const WARM_UP: usize = 1_000;
const COUNTED: usize = 10_000;
/// The same under `cargo test`.
const SMOKE_WARM_UP: usize = 20;
const SMOKE_COUNTED: usize = 50;
/// Where the table goes.
const RESULTS: &str = "benches/results/allocations.md";

/// One kind of request.
struct Kind {
    /// For `--profile`.
    id: &'static str,
    name: &'static str,
    request: Vec<u8>,
    status: u16,
}

/// What one kind cost.
struct Counted {
    blocks: u64,
    bytes: u64,
    window: Duration,
    idle_blocks: u64,
    idle_bytes: u64,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let benching = args.iter().any(|a| a == "--bench");
    let profile = args
        .windows(2)
        .find(|pair| pair[0] == "--profile")
        .map(|pair| pair[1].clone());
    if peers::which("nginx").is_none() {
        if benching {
            eprintln!("allocations: `nginx` is missing; install it with: apt-get install nginx");
            std::process::exit(2);
        }
        println!("allocations: skipped, `nginx` is missing (apt-get install nginx)");
        return;
    }
    let (warm_up, counted) = if benching {
        (WARM_UP, COUNTED)
    } else {
        (SMOKE_WARM_UP, SMOKE_COUNTED)
    };

    let temp = tempfile::tempdir().unwrap();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let upstream_port = peers::free_port();
    let upstream = peers::nginx(
        temp.path(),
        "upstream",
        &peers::upstream_config(upstream_port, None),
        &format!("0-{}", cores - 1),
    );
    upstream.await_port(upstream_port);

    // Access lines on, as by default: the real formatter and batcher, to nowhere.
    logging::init_to(LogFormat::Text, false, Box::new(std::io::sink()));
    let address = start_gateway(upstream_port);
    let base = format!("http://{address}");
    let cookie = {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(gateway_login(&base))
    };

    let mut kinds = requests(address, &cookie);
    if let Some(wanted) = &profile {
        kinds.retain(|kind| kind.id == wanted);
        assert!(
            !kinds.is_empty(),
            "--profile: one of signed-in, envelope, page-302, api-401"
        );
    }
    // The client's buffer, allocated before counting.
    let mut buffer = vec![0u8; 1 << 16];
    let profiler = match &profile {
        Some(id) => dhat::Profiler::builder()
            .file_name(format!("{}/dhat-{id}.json", target_dir()))
            .trim_backtraces(Some(40))
            .build(),
        None => dhat::Profiler::builder()
            .testing()
            .trim_backtraces(Some(4))
            .build(),
    };
    let mut results = Vec::new();
    for kind in &kinds {
        let result = measure(
            address,
            kind,
            &mut buffer,
            warm_up,
            counted,
            profile.is_none(),
        );
        println!(
            "allocations: {:<40} {:>8.1} allocations, {:>8.0} bytes per request ({} requests in {:.2} s; idle: {} allocations, {} bytes)",
            kind.name,
            per_request(result.blocks, result.idle_blocks, counted),
            per_request(result.bytes, result.idle_bytes, counted),
            counted,
            result.window.as_secs_f64(),
            result.idle_blocks,
            result.idle_bytes,
        );
        results.push(result);
    }
    drop(profiler);
    if profile.is_some() {
        return;
    }
    let table = table(&kinds, &results, counted, warm_up);
    println!("\n{table}");
    if benching {
        std::fs::write(RESULTS, &table).unwrap();
        println!("allocations: written to {RESULTS}");
    }
}

/// `(total - idle) / requests`.
fn per_request(total: u64, idle: u64, requests: usize) -> f64 {
    total.saturating_sub(idle) as f64 / requests as f64
}

fn target_dir() -> String {
    std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into())
}

/// Warms up, counts `counted` requests of `kind`, then (when `idle` is set) the same
/// length of time with none.
fn measure(
    address: SocketAddr,
    kind: &Kind,
    buffer: &mut [u8],
    warm_up: usize,
    counted: usize,
    idle: bool,
) -> Counted {
    let mut client = Client::connect(address);
    let first = client.exchange(&kind.request, buffer);
    assert_eq!(
        first.status,
        kind.status,
        "{}: {}",
        kind.name,
        String::from_utf8_lossy(&buffer[..first.length])
    );
    if kind.status == 200 {
        assert!(
            buffer[..first.length].ends_with(b"\r\n\r\nok\n"),
            "{}: not the upstream's page",
            kind.name
        );
    }
    for _ in 1..warm_up {
        client.expect(kind, buffer);
    }
    // A request's access line is written as its answer ends, which may be just after
    // the client has it: a moment for the last one before each reading.
    let settle = Duration::from_millis(20);
    std::thread::sleep(settle);
    let before = dhat::HeapStats::get();
    let started = Instant::now();
    for _ in 0..counted {
        client.expect(kind, buffer);
    }
    std::thread::sleep(settle);
    let window = started.elapsed();
    let after = dhat::HeapStats::get();
    let (idle_blocks, idle_bytes) = if idle {
        std::thread::sleep(window);
        let quiet = dhat::HeapStats::get();
        (
            quiet.total_blocks - after.total_blocks,
            quiet.total_bytes - after.total_bytes,
        )
    } else {
        (0, 0)
    };
    Counted {
        blocks: after.total_blocks - before.total_blocks,
        bytes: after.total_bytes - before.total_bytes,
        window,
        idle_blocks,
        idle_bytes,
    }
}

fn table(kinds: &[Kind], results: &[Counted], counted: usize, warm_up: usize) -> String {
    let mut out = String::new();
    out.push_str(
        "# Heap allocations per request\n\n\
         `cargo bench --bench allocations` (release build): heap allocations and reallocations \
         (count, and bytes requested) of the whole process, counted by dhat, divided by the \
         requests. The gateway runs in-process (`server.threads = 1`, Sentry preset, access \
         lines on, plain HTTP/1.1, one keep-alive connection) in front of nginx (another \
         process); the client allocates nothing. ",
    );
    out.push_str(&format!(
        "{warm_up} requests of warm-up, then {counted} counted; the allocations of the same \
         length of time without requests (timers) are subtracted.\n\n"
    ));
    out.push_str("| request | answer | allocations / request | bytes / request | idle allocations in the window |\n");
    out.push_str("| --- | --- | ---: | ---: | ---: |\n");
    for (kind, result) in kinds.iter().zip(results) {
        out.push_str(&format!(
            "| {} | {} | {:.1} | {:.0} | {} |\n",
            kind.name,
            kind.status,
            per_request(result.blocks, result.idle_blocks, counted),
            per_request(result.bytes, result.idle_bytes, counted),
            result.idle_blocks,
        ));
    }
    out
}

/// The requests, as raw HTTP/1.1 bytes.
fn requests(address: SocketAddr, cookie: &str) -> Vec<Kind> {
    let host = format!("Host: {address}\r\n");
    let page_headers = "sec-ch-ua: \"Chromium\";v=\"156\", \"Not.A/Brand\";v=\"99\"\r\n\
         sec-ch-ua-mobile: ?0\r\n\
         sec-ch-ua-platform: \"Linux\"\r\n\
         Upgrade-Insecure-Requests: 1\r\n\
         User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0 Safari/537.36\r\n\
         Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8\r\n\
         Sec-Fetch-Site: same-origin\r\n\
         Sec-Fetch-Mode: navigate\r\n\
         Sec-Fetch-User: ?1\r\n\
         Sec-Fetch-Dest: document\r\n\
         Accept-Encoding: gzip, deflate, br, zstd\r\n\
         Accept-Language: en-US,en;q=0.9\r\n";
    let referer = format!("Referer: http://{address}/organizations/acme/issues/\r\n");
    let envelope_body = format!(
        "{{\"event_id\":\"9ec79c33ec9942ab8353589fcb2e04dc\",\"sent_at\":\"2026-01-01T12:00:00.000000Z\",\
         \"dsn\":\"http://0123456789abcdef0123456789abcdef@{address}/1\"}}\n\
         {{\"type\":\"event\",\"length\":118}}\n\
         {{\"message\":\"allocation bench\",\"level\":\"error\",\"platform\":\"python\",\
         \"timestamp\":\"2026-01-01T12:00:00Z\",\"release\":\"bench@1.0\"}}\n"
    );
    vec![
        Kind {
            id: "signed-in",
            name: "signed in: page (200 from the upstream)",
            request: format!(
                "GET {PAGE} HTTP/1.1\r\n{host}Connection: keep-alive\r\n{page_headers}{referer}\
                 Cookie: sentrysid=.eJxVjMsKwjAQRf8lawM1ZvNwJbjQhYJrCZPJtQ2aSchD; sc=Xq2bL7y; {cookie}; sudo=1\r\n\r\n"
            )
            .into_bytes(),
            status: 200,
        },
        Kind {
            id: "envelope",
            name: "public route: SDK envelope (200 from the upstream)",
            request: format!(
                "POST /api/1/envelope/ HTTP/1.1\r\n{host}\
                 Accept-Encoding: identity\r\n\
                 User-Agent: sentry.python/2.19.0\r\n\
                 Content-Type: application/x-sentry-envelope\r\n\
                 X-Sentry-Auth: Sentry sentry_key=0123456789abcdef0123456789abcdef, sentry_version=7, sentry_client=sentry.python/2.19.0\r\n\
                 Content-Length: {}\r\n\r\n{envelope_body}",
                envelope_body.len()
            )
            .into_bytes(),
            status: 200,
        },
        Kind {
            id: "page-302",
            name: "no session: page (302 to sign-in)",
            request: format!(
                "GET {PAGE} HTTP/1.1\r\n{host}Connection: keep-alive\r\n{page_headers}{referer}\r\n"
            )
            .into_bytes(),
            status: 302,
        },
        Kind {
            id: "api-401",
            name: "no session: API (401)",
            request: format!(
                "GET /api/0/organizations/ HTTP/1.1\r\n{host}\
                 User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0 Safari/537.36\r\n\
                 Accept: application/json; charset=utf-8\r\n\
                 Accept-Encoding: gzip, deflate, br, zstd\r\n\
                 Accept-Language: en-US,en;q=0.9\r\n\
                 Sec-Fetch-Mode: cors\r\n\
                 Sec-Fetch-Site: same-origin\r\n{referer}\r\n"
            )
            .into_bytes(),
            status: 401,
        },
    ]
}

/// A keep-alive HTTP/1.1 connection that allocates nothing per request.
struct Client {
    address: SocketAddr,
    stream: TcpStream,
}

/// One answer: its status and length in the buffer.
struct Answer {
    status: u16,
    length: usize,
    close: bool,
}

impl Client {
    fn connect(address: SocketAddr) -> Client {
        let stream = TcpStream::connect(address).unwrap();
        stream.set_nodelay(true).unwrap();
        Client { address, stream }
    }

    /// Sends `kind`'s request; its answer must have the expected status.
    fn expect(&mut self, kind: &Kind, buffer: &mut [u8]) {
        let answer = self.exchange(&kind.request, buffer);
        if answer.status != kind.status {
            panic!(
                "{}: {}",
                kind.name,
                String::from_utf8_lossy(&buffer[..answer.length])
            );
        }
    }

    /// Sends `request` and reads its whole answer into `buffer`; reconnects when the
    /// gateway closes the connection after it.
    fn exchange(&mut self, request: &[u8], buffer: &mut [u8]) -> Answer {
        self.stream.write_all(request).unwrap();
        let mut filled = 0;
        let answer = loop {
            let read = self.stream.read(&mut buffer[filled..]).unwrap();
            assert!(read > 0, "the gateway closed the connection mid-answer");
            filled += read;
            if let Some(answer) = complete_answer(&buffer[..filled]) {
                break answer;
            }
            assert!(filled < buffer.len(), "answer larger than the buffer");
        };
        assert_eq!(answer.length, filled, "more than one answer");
        if answer.close {
            *self = Client::connect(self.address);
        }
        answer
    }
}

/// The answer at the start of `bytes`, once all of it is there.
fn complete_answer(bytes: &[u8]) -> Option<Answer> {
    let head_end = find(bytes, b"\r\n\r\n")? + 4;
    let head = &bytes[..head_end];
    let status = std::str::from_utf8(head.get(9..12)?).ok()?.parse().ok()?;
    let (mut length, mut chunked, mut close) = (0, false, false);
    for line in head.split(|&b| b == b'\n').skip(1) {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"content-length") {
            length = std::str::from_utf8(value).ok()?.parse().ok()?;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked = value.eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case(b"connection") {
            close = value.eq_ignore_ascii_case(b"close");
        }
    }
    let end = if chunked {
        let mut at = head_end;
        loop {
            let line_end = at + find(&bytes[at..], b"\r\n")?;
            let size = &bytes[at..line_end];
            let size = size.split(|&b| b == b';').next().unwrap_or(size);
            let size = usize::from_str_radix(std::str::from_utf8(size.trim_ascii()).ok()?, 16)
                .expect("a chunk size");
            at = line_end + 2;
            if size == 0 {
                // No trailers: the empty line ends it.
                break at + find(&bytes[at..], b"\r\n")? + 2;
            }
            at += size + 2;
            if bytes.len() < at {
                return None;
            }
        }
    } else {
        head_end + length
    };
    (bytes.len() >= end).then_some(Answer {
        status,
        length: end,
        close,
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// The development provider and the gateway (one serving thread) on a current-thread
/// runtime of their own thread, as the binary runs; the gateway's address.
fn start_gateway(upstream_port: u16) -> SocketAddr {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("gateway".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
                let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                    .await
                    .unwrap();
                let address = listener.local_addr().unwrap();
                let base = format!("http://{address}");
                let provider =
                    peers::start_provider("bench", vec![format!("{base}/oauth2/callback")]).await;
                let config = peers::ssogate_config(
                    &base,
                    address.port(),
                    None,
                    upstream_port,
                    &provider.issuer().to_string(),
                );
                let mut settings = Settings::from_toml(&config, "(bench)", std::iter::empty())
                    .unwrap_or_else(|e| panic!("bench config refused: {e}\n{config}"));
                settings.server.threads = 1;
                let _gateway =
                    ssogate::server::start_on(listener, settings, std::future::pending())
                        .await
                        .expect("the gateway starts");
                sender.send(address).unwrap();
                std::future::pending::<()>().await;
            });
        })
        .unwrap();
    receiver.recv().expect("the gateway starts")
}

/// Signs in at the gateway through the real login flow; its session cookie.
async fn gateway_login(base: &str) -> String {
    let mut browser = browser::Browser::new("", base);
    let landed = browser.login(PAGE, "bench", "bench").await;
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
