//! Sentry's real machine clients, to prove their traffic passes the gateway without a
//! login: the Python SDK (`sentry-sdk`, driven by `tests/peers/send_event.py`) and
//! `sentry-cli` (npm `@sentry/cli`); and PyJWT, the verifier an upstream would use for
//! the identity assertion (`tests/peers/verify_assertion.py`). All are installed by
//! `tests/install-peers.sh`; versions, CA trust and the requests they make are in
//! `tests/peers/README.md`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// A client that has not finished by then is killed (its `Output` then fails).
const TIMEOUT: Duration = Duration::from_secs(30);

/// Variables from the caller's environment that would change what a client does.
const SCRUBBED: &[&str] = &[
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "CURL_CA_BUNDLE",
    "REQUESTS_CA_BUNDLE",
    "SSOGATE_TEST_CA",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
];

/// `tests/peers` in the repository.
pub fn peers_dir() -> PathBuf {
    repo().join("tests/peers")
}

/// Sends one event ("ssogate-test-event") with the real `sentry_sdk` to `dsn`
/// (`https://<key>@<host>:<port>/<project>`), trusting only `ca_pem` if given.
/// Succeeds only if the envelope POST got a 2xx with no redirect on the way.
pub fn send_event(dsn: &str, ca_pem: Option<&str>) -> Output {
    let python = installed(repo().join("target/peers/venv/bin/python"));
    let ca = ca_pem.map(ca_file);
    let mut cmd = client(&python);
    cmd.arg(peers_dir().join("send_event.py")).arg(dsn);
    if let Some(ca) = &ca {
        cmd.env("SSOGATE_TEST_CA", ca.path());
    }
    run(cmd)
}

/// Verifies identity assertions with PyJWT as an upstream would
/// (`tests/peers/verify_assertion.py`): the key by `kid` from the JWKS at `jwks_url`
/// (trusting `ca_pem`), then signature, `iss` = `issuer`, `aud` = each check's
/// audience, `exp`. One verdict per `(token, audience)`: `{"ok": true, "kid",
/// "claims"}` or `{"ok": false, "error"}`.
pub fn verify_assertions(
    jwks_url: &str,
    issuer: &str,
    checks: &[(&str, &str)],
    ca_pem: &str,
) -> Vec<serde_json::Value> {
    let python = installed(repo().join("target/peers/venv/bin/python"));
    let ca = ca_file(ca_pem);
    let request = serde_json::json!({
        "jwks_url": jwks_url,
        "issuer": issuer,
        "checks": checks
            .iter()
            .map(|(token, audience)| serde_json::json!({"token": token, "audience": audience}))
            .collect::<Vec<_>>(),
    });
    let mut cmd = client(&python);
    cmd.arg(peers_dir().join("verify_assertion.py"))
        .arg(request.to_string())
        .env("SSOGATE_TEST_CA", ca.path());
    let out = run(cmd);
    assert!(out.status.success(), "{}", describe(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", describe(&out)))
}

/// Runs `sentry-cli ARGS` against the Sentry at `url` with `auth_token` (sent as
/// `Authorization: Bearer <token>`), trusting only `ca_pem` if given. For example
/// `sentry_cli(&["info"], ..)` (`GET /api/0/`; on success stdout has `User:`) or
/// `sentry_cli(&["organizations", "list"], ..)` (`GET /api/0/organizations/`).
/// No retries, no update check, and an empty HOME, so no `~/.sentryclirc` applies.
pub fn sentry_cli(args: &[&str], url: &str, auth_token: &str, ca_pem: Option<&str>) -> Output {
    let home = tempfile::tempdir().expect("temp dir for sentry-cli");
    let ca = ca_pem.map(ca_file);
    let mut cmd = client(&sentry_cli_binary());
    cmd.args(args)
        .current_dir(home.path())
        .env("HOME", home.path())
        .env("SENTRY_URL", url)
        .env("SENTRY_AUTH_TOKEN", auth_token)
        .env("SENTRY_HTTP_MAX_RETRIES", "0")
        .env("SENTRY_DISABLE_UPDATE_CHECK", "true");
    if let Some(ca) = &ca {
        // sentry-cli (libcurl + OpenSSL) takes its CA file from CURL_CA_BUNDLE;
        // it ignores SSL_CERT_FILE and has no CA option of its own.
        cmd.env("CURL_CA_BUNDLE", ca.path());
    }
    run(cmd)
}

/// Exit status, stdout and stderr, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "{}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The native binary that `node_modules/.bin/sentry-cli` (a Node script) would spawn.
/// Run directly: no Node start-up, and a crash is not reported as exit 0 (the script
/// exits with `process.exit(null)` when its child dies of a signal).
fn sentry_cli_binary() -> PathBuf {
    let platform = match std::env::consts::ARCH {
        "x86_64" => "linux-x64",
        "aarch64" => "linux-arm64",
        "x86" => "linux-i686",
        "arm" => "linux-arm",
        _ => "",
    };
    let native = format!("node_modules/@sentry/cli-{platform}/bin/sentry-cli");
    let native = peers_dir().join(native);
    if native.is_file() {
        return native;
    }
    installed(peers_dir().join("node_modules/.bin/sentry-cli"))
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn installed(path: PathBuf) -> PathBuf {
    assert!(
        path.is_file(),
        "{} is missing: run tests/install-peers.sh first",
        path.display()
    );
    path
}

fn ca_file(pem: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new()
        .suffix(".pem")
        .tempfile()
        .expect("temp CA file");
    std::io::Write::write_all(&mut file, pem.as_bytes()).expect("write CA file");
    file
}

fn client(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(|n| n.starts_with("SENTRY_")) {
            cmd.env_remove(&name);
        }
    }
    for name in SCRUBBED {
        cmd.env_remove(name);
    }
    cmd.env("NO_PROXY", "*").stdin(Stdio::null());
    cmd
}

/// `Command::output` with a deadline.
fn run(mut cmd: Command) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let drain = |mut r: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + TIMEOUT;
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for client") {
            break status;
        }
        if Instant::now() > deadline {
            timed_out = true;
            let _ = child.kill();
            break child.wait().expect("wait for killed client");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = stderr.join().unwrap();
    if timed_out {
        stderr.extend_from_slice(format!("\n[killed after {TIMEOUT:?}]\n").as_bytes());
    }
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr,
    }
}
