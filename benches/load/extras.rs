//! The measurements that are not requests per second: complete logins per second, a
//! flood of login starts and a large upload streamed through the gateway (each with
//! the gateway's peak memory meanwhile), and the gateway's memory.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::browser::Browser;
use crate::peers::{PAGE, Server};

pub struct Logins {
    pub per_second: f64,
    pub concurrency: usize,
    /// The gateway's own CPU time per login (the provider and the browsers run
    /// elsewhere).
    pub gateway_cpu_per_login: Duration,
}

/// Complete logins (start, provider form, callback, landing page from the upstream)
/// by `concurrency` browsers, each login a new browser, for `length`.
pub async fn logins(base: &str, gateway: &Server, concurrency: usize, length: Duration) -> Logins {
    let cpu_before = gateway.cpu_time();
    let started = Instant::now();
    let deadline = started + length;
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let base = base.to_owned();
            tokio::spawn(async move {
                let mut done = 0u32;
                while Instant::now() < deadline {
                    let mut browser = Browser::new("", &base);
                    let landed = browser.login(PAGE, "load", "load").await;
                    assert_eq!(landed.status, 200, "a login failed: {landed:?}");
                    done += 1;
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for worker in workers {
        total += worker.await.expect("a login worker panicked");
    }
    let elapsed = started.elapsed();
    Logins {
        per_second: f64::from(total) / elapsed.as_secs_f64(),
        concurrency,
        gateway_cpu_per_login: (gateway.cpu_time() - cpu_before) / total.max(1),
    }
}

/// `count` login starts, as a stranger can make them (no session, no callback ever),
/// each with a return target of `rd_len` bytes, `concurrency` at a time. Returns the
/// time taken and the longest `Set-Cookie` the gateway answered with.
pub async fn login_starts(
    base: &str,
    count: usize,
    rd_len: usize,
    concurrency: usize,
) -> (Duration, usize) {
    let target = format!("/oauth2/start?rd=/{}", "r".repeat(rd_len - 1));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let (base, target) = (base.to_owned(), target.clone());
            tokio::spawn(async move {
                let mut browser = Browser::new("", &base);
                let mut longest = 0;
                for _ in (worker..count).step_by(concurrency) {
                    let start = browser.navigate(&target).await;
                    assert_eq!(start.status, 302, "a login start failed: {start:?}");
                    longest = start
                        .set_cookies()
                        .iter()
                        .map(String::len)
                        .fold(longest, usize::max);
                    browser.cookies.clear();
                }
                longest
            })
        })
        .collect();
    let mut longest = 0;
    for worker in workers {
        longest = longest.max(worker.await.expect("a start worker panicked"));
    }
    (started.elapsed(), longest)
}

/// Streams `size` bytes as one `POST` to `127.0.0.1:port` `path` (with `cookie`, if
/// any) from a fixed 256 KiB buffer, and waits for a 200. Returns the time taken.
pub fn upload(port: u16, path: &str, cookie: Option<&str>, size: u64) -> Duration {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connects");
    let cookie = cookie
        .map(|c| format!("Cookie: {c}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {size}\r\n{cookie}Connection: close\r\n\r\n"
    );
    let started = Instant::now();
    stream.write_all(head.as_bytes()).unwrap();
    let chunk = vec![0u8; 256 * 1024];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        stream.write_all(&chunk[..n]).expect("the upload is taken");
        left -= n as u64;
    }
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let elapsed = started.elapsed();
    let status_line = String::from_utf8_lossy(&answer[..answer.len().min(40)]).into_owned();
    assert!(
        status_line.starts_with("HTTP/1.1 200"),
        "the upload to {path} on port {port} got: {status_line}"
    );
    elapsed
}

/// A server on a free port of 127.0.0.1 that reads each request's whole body (its
/// `Content-Length`) and then answers `200 ok`, on kept-alive connections: the end of
/// the upload's path, where Sentry would store the file. Runs on threads of this
/// process; returns its port.
pub fn upload_sink() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("the sink binds");
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || sink_connection(stream));
        }
    });
    port
}

/// [`upload_sink`]'s requests on one connection, until it closes.
fn sink_connection(mut stream: TcpStream) {
    let mut buffer = vec![0u8; 256 * 1024];
    let mut held = 0; // bytes of the next request already read
    loop {
        let head_end = loop {
            if let Some(at) = buffer[..held].windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            match stream.read(&mut buffer[held..]) {
                Ok(0) | Err(_) => return,
                Ok(n) => held += n,
            }
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .map_or(0, |value| value.trim().parse().expect("a Content-Length"));
        let in_buffer = (held - head_end).min(length);
        let mut left = length - in_buffer;
        buffer.copy_within(head_end + in_buffer..held, 0);
        held -= head_end + in_buffer;
        while left > 0 {
            let n = stream.read(&mut buffer[held..]).unwrap_or(0);
            if n == 0 {
                return;
            }
            let body = n.min(left);
            left -= body;
            // Bytes past the body start the next request.
            buffer.copy_within(held + body..held + n, held);
            held += n - body;
        }
        let answer =
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n";
        if stream.write_all(answer).is_err() || head.contains("\r\nconnection: close") {
            return;
        }
    }
}

/// The peak resident set of `server` while `work` runs, and its resident set before.
pub fn peak_resident_during<T>(server: &Server, work: impl FnOnce() -> T) -> (u64, u64, T) {
    let pid = server.pid().to_string();
    // Writing 5 resets the peak (VmHWM) to the current resident set.
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("can reset the peak RSS");
    let before = crate::memory::status_bytes(&pid, "VmRSS");
    let result = work();
    let peak = crate::memory::status_bytes(&pid, "VmHWM");
    (before, peak, result)
}
