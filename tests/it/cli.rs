//! The `ssogate` binary as an operator and a newcomer use it.

use crate::support;

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::GatewayToml;
use crate::support::browser::Browser;
use http::StatusCode;

pub(crate) fn ssogate() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ssogate"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    command
}

/// `ssogate check` with a complete config from the environment alone (TLS off).
pub(crate) fn check_from_environment(upstream: &str, issuer: &str) -> Command {
    let mut command = ssogate();
    command
        .arg("check")
        .env("SSOGATE_SERVER_PUBLIC_URL", "https://sentry.example.com")
        .env("SSOGATE_TLS_ENABLED", "false")
        .env("SSOGATE_UPSTREAM_URL", upstream)
        .env("OIDC_DOMAIN", issuer)
        .env("OIDC_CLIENT_ID", "sentry")
        .env("OIDC_CLIENT_SECRET", "secret")
        .env(
            "SSOGATE_SESSION_SECRETS",
            "0123456789abcdef0123456789abcdef",
        );
    command
}

/// A complete config without TLS.
fn minimal() -> GatewayToml {
    GatewayToml::new(
        "https://sentry.example.com",
        "http://127.0.0.1:9000",
        "https://id.example.com/api/oidc",
    )
}

/// `text` written to `ssogate.toml` in `dir`.
pub(crate) fn config_file(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
    let config = dir.path().join("ssogate.toml");
    std::fs::write(&config, text).unwrap();
    config
}

#[test]
fn a_bad_config_stops_startup_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(
        &dir,
        &minimal().upstream("read_timeout = \"forever\"").render(),
    );
    let output = ssogate()
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("upstream.read_timeout"), "{stderr}");
    assert!(stderr.contains("forever"), "{stderr}");

    let output = ssogate()
        .args(["run"])
        .env("SSOGATE_CONFIG", &config)
        .env("SSOGATE_UPSTREAM_READ_TIMEOUT", "90s")
        .env("SSOGATE_SESSION_SECRETS", "short")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("session.secrets") && stderr.contains("gen-secret"),
        "{stderr}"
    );
}

#[test]
fn gen_secret_prints_a_usable_secret() {
    let a = ssogate().arg("gen-secret").output().unwrap();
    let b = ssogate().arg("gen-secret").output().unwrap();
    let a = String::from_utf8(a.stdout).unwrap();
    assert!(a.trim().len() >= 32);
    assert_ne!(a, String::from_utf8(b.stdout).unwrap());
}

#[test]
fn check_reports_each_step_and_fails_when_the_provider_is_down() {
    let closed = support::unused_address();
    let output = check_from_environment(
        &format!("http://{closed}"),
        &format!("http://{closed}/api/oidc"),
    )
    .env("SSOGATE_SESSION_STORE", "redis")
    .env(
        "SSOGATE_SESSION_REDIS_URL",
        format!("redis://:hunter2@{closed}/0"),
    )
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("OK   config"), "{stdout}");
    assert!(stdout.contains("FAIL session store"), "{stdout}");
    assert!(
        !stdout.contains("hunter2"),
        "the Redis password was printed: {stdout}"
    );
    assert!(stdout.contains("FAIL provider discovery"), "{stdout}");
    assert!(
        stdout.contains("/api/oidc/.well-known/openid-configuration"),
        "{stdout}"
    );
    assert!(stdout.contains("FAIL upstream"), "{stdout}");
}

#[tokio::test]
async fn check_passes_against_a_live_provider_upstream_and_redis() {
    let world = support::World::start().await;
    let redis_dir = tempfile::tempdir().unwrap();
    let redis = support::replicas::RedisServer::start(redis_dir.path());
    let redis_url = redis.url();
    let settings = world.gateway.gateway().settings().clone();
    let upstream = settings.upstream.url.to_string();
    let output = tokio::task::spawn_blocking(move || {
        ssogate()
            .arg("check")
            .env(
                "SSOGATE_SERVER_PUBLIC_URL",
                settings.server.public_url.as_str(),
            )
            .env("SSOGATE_TLS_ENABLED", "false")
            .env("SSOGATE_UPSTREAM_URL", upstream)
            .env("OIDC_DOMAIN", &settings.oidc.issuer)
            .env("OIDC_CLIENT_ID", &settings.oidc.client_id)
            .env("OIDC_CLIENT_SECRET", &settings.oidc.client_secret)
            .env("SSOGATE_SESSION_SECRETS", &settings.session.secrets[0])
            .env("SSOGATE_ACCESS_PRESET", "sentry")
            .env("SSOGATE_SESSION_STORE", "redis")
            .env("SSOGATE_SESSION_REDIS_URL", redis_url)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("OK   session store: Redis "), "{stdout}");
    assert!(stdout.contains("preset: sentry"), "{stdout}");
    assert!(
        stdout.contains(
            r"^/api/0/  (only with a Sentry credential: Bearer, Basic API key or DSN)  [sentry: token API]"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("OK   provider signing keys: 1 key(s)"),
        "{stdout}"
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
}

#[tokio::test]
async fn scripted_login_through_the_demo() {
    let demo = ssogate::demo::start(0, std::future::pending())
        .await
        .expect("demo starts");
    let mut browser = Browser::new(&demo.ca_pem, demo.url.trim_end_matches('/'));
    let landed = browser.login("/", &demo.username, &demo.password).await;
    assert_eq!(landed.status, StatusCode::OK, "{landed:?}");
    assert!(
        landed.body.contains("Hello from the demo upstream"),
        "{}",
        landed.body
    );
    assert!(landed.body.contains("x-forwarded-email"), "{}", landed.body);
}

#[test]
fn demo_binary_prints_where_to_go_and_stops_on_sigterm() {
    let mut child = ssogate()
        .args(["demo", "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut text = String::new();
        let mut buffer = [0u8; 256];
        while let Ok(n) = stdout.read(&mut buffer) {
            if n == 0 {
                break;
            }
            text.push_str(&String::from_utf8_lossy(&buffer[..n]));
            if text.contains("Stop with Ctrl-C") {
                let _ = sender.send(text.clone());
            }
        }
    });
    let banner = receiver.recv_timeout(Duration::from_secs(60));
    // The printed URL is where it listens.
    let port: Option<u16> = banner.as_ref().ok().and_then(|b| {
        let rest = b.split("open       https://127.0.0.1:").nth(1)?;
        rest.split('/').next()?.parse().ok()
    });
    let listening = port.is_some_and(|p| std::net::TcpStream::connect(("127.0.0.1", p)).is_ok());
    // SIGTERM stops it cleanly (graceful shutdown, exit code 0).
    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let status = child.wait().unwrap();
    let banner = banner.expect("the demo prints its banner");
    assert!(
        status.success(),
        "SIGTERM should end the demo cleanly: {status}"
    );
    assert!(
        listening,
        "the demo listens at the URL it printed: {banner}"
    );
    assert!(banner.contains("password"), "{banner}");
}

#[test]
fn every_mistake_of_a_file_is_named_in_one_run_with_its_source() {
    let dir = tempfile::tempdir().unwrap();
    let text = minimal()
        .server("listen = 8443\ncert_file = \"/etc/ssogate/tls/fullchain.pem\"")
        .session("lifetime = true")
        .access("alowed_email_domains = [\"example.com\"]")
        .tables("[access.rules]\npath = \"^/manage/\"")
        .render();
    let config = config_file(&dir, &text);
    let with_config = |command: &str| {
        ssogate()
            .args([command, "--config"])
            .arg(&config)
            .env("SSOGATE_UPSTREAM_READ_TIMEOUT", "soon")
            .output()
            .unwrap()
    };
    let output = with_config("run");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines,
        [
            "ssogate: config error: server.cert_file: is not a key of [server]; it belongs in [tls] (a key belongs to the [section] line above it)",
            "ssogate: config error: server.listen: expected a string, found a number (an address with its port, in quotes: \"0.0.0.0:8443\")",
            "ssogate: config error: upstream.read_timeout (set by environment variable SSOGATE_UPSTREAM_READ_TIMEOUT): `soon` is not a duration (examples: 30s, 5m, 24h, 1500ms)",
            "ssogate: config error: session.lifetime: expected a string such as \"30s\", found true/false",
            "ssogate: config error: access.alowed_email_domains: unknown key; did you mean access.allowed_email_domains?",
            "ssogate: config error: access.rules: write [[access.rules]] (two brackets) above each rule: [access.rules] with one bracket is a single table, not a list of rules",
        ],
        "{stderr}"
    );
    // check names the same problems, one FAIL line each.
    let output = with_config("check");
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let failed: Vec<&str> = stdout
        .lines()
        .filter_map(|line| line.strip_prefix("FAIL config: "))
        .collect();
    let named: Vec<&str> = lines
        .iter()
        .map(|line| line.trim_start_matches("ssogate: config error: "))
        .collect();
    assert_eq!(failed, named, "{stdout}");
}

/// A plain-HTTP server on loopback; `answer` gives status, content type and body for
/// the request path (and the server's own address).
pub(crate) fn serve(
    answer: impl Fn(std::net::SocketAddr, &str) -> (u16, &'static str, String) + Send + 'static,
) -> std::net::SocketAddr {
    serve_on("127.0.0.1:0", answer)
}

pub(crate) fn serve_on(
    bind: &str,
    answer: impl Fn(std::net::SocketAddr, &str) -> (u16, &'static str, String) + Send + 'static,
) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind(bind).unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buffer = [0u8; 4096];
            let n = stream.read(&mut buffer).unwrap_or(0);
            let head = String::from_utf8_lossy(&buffer[..n]);
            let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
            let (status, content_type, body) = answer(address, &path);
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    address
}

/// A server that answers every request with an HTML page (a sign-in page, say).
fn html_server() -> std::net::SocketAddr {
    serve(|_, _| {
        (
            200,
            "text/html",
            "<!DOCTYPE html><html><body>Sign in</body></html>".into(),
        )
    })
}

#[test]
fn check_fails_on_an_empty_key_set_and_an_upstream_that_is_not_sentry() {
    let fake = serve(|address, path| match path {
        "/.well-known/openid-configuration" => (
            200,
            "application/json",
            serde_json::json!({
                "issuer": format!("http://{address}"),
                "authorization_endpoint": format!("http://{address}/auth"),
                "token_endpoint": format!("http://{address}/token"),
                "jwks_uri": format!("http://{address}/jwks"),
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
            })
            .to_string(),
        ),
        "/jwks" => (200, "application/json", r#"{"keys": []}"#.into()),
        "/" => (200, "text/plain", "some other service".into()),
        _ => (404, "text/plain", "not found".into()),
    });
    let output = check_from_environment(&format!("http://{fake}"), &format!("http://{fake}"))
        .env("SSOGATE_ACCESS_PRESET", "sentry")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    for expected in [
        format!(
            "FAIL provider signing keys: http://{fake}/jwks holds no signing keys: no ID token can be verified"
        ),
        format!("OK   upstream: http://{fake}/ answered HTTP 200"),
        format!(
            "FAIL upstream is Sentry: http://{fake}/_health/ answered HTTP 404: this does not look \
             like Sentry (its /_health/ answers 200); upstream.url should be self-hosted Sentry's \
             nginx (SENTRY_BIND)"
        ),
    ] {
        assert!(
            stdout.lines().any(|line| line == expected),
            "missing line `{expected}` in:\n{stdout}"
        );
    }
}

#[test]
fn check_shows_what_is_in_force_even_when_the_provider_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["other.example.com".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let cert_file = dir.path().join("fullchain.pem");
    let key_file = dir.path().join("privkey.pem");
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let html = html_server();
    let text = GatewayToml::new(
        "https://sentry.example.com",
        &format!("https://{html}"),
        "https://id.example.com/api/oidc",
    )
    .tls(&format!(
        "cert_file = {cert_file:?}\nkey_file = {key_file:?}"
    ))
    .access("preset = \"sentry\"\nallowed_email_domains = [\"example.com\"]")
    .tables(
        r#"[[access.rules]]
name = "Sentry admin"
path = "^/manage/"
allowed_groups = ["sentry:admin"]"#,
    )
    .render();
    let config = config_file(&dir, &text);
    let output = ssogate()
        .args(["check", "--config"])
        .arg(&config)
        // A stray variable from the sentry-auth-oidc setup, pointing at a wrong path.
        .env("OIDC_DOMAIN", format!("http://{html}/wrong"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    for expected in [
        "WARN environment: oidc.issuer is set by OIDC_DOMAIN, over the value in the config file",
        "     register this redirect URI at the provider: https://sentry.example.com/oauth2/callback",
        "     register this post-logout redirect URI at the provider: https://sentry.example.com/oauth2/sign_in",
        "       authenticated *        ^/manage/  groups: sentry:admin  [Sentry admin]  + [access] domains: example.com; verified email",
        "       authenticated *        (everything else)  + [access] domains: example.com; verified email",
        "     hint: no discovery document there (an HTML page or 404): oidc.issuer's path is probably wrong; for Encvoy ID it is https://<host>/api/oidc",
        "     hint: this port answers plain HTTP, not TLS: write http:// (or the port that speaks https)",
    ] {
        assert!(
            stdout.lines().any(|line| line == expected),
            "missing line `{expected}` in:\n{stdout}"
        );
    }
    assert!(
        stdout.contains(&format!(
            "FAIL tls certificate: tls.cert_file {}: not valid for sentry.example.com, server.public_url's host",
            cert_file.display()
        )),
        "{stdout}"
    );
    // Public rows of the preset carry no requirement.
    let public_row = stdout
        .lines()
        .find(|line| line.contains("public") && line.contains("_health"))
        .unwrap_or_default();
    assert!(!public_row.contains("+ [access]"), "{stdout}");
}

#[test]
fn check_names_a_host_that_does_not_resolve() {
    let output = check_from_environment(
        &format!("http://{}", support::unused_address()),
        "https://id.does-not-exist.invalid/api/oidc",
    )
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("     hint: the host name does not resolve from this machine (DNS)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("     hint: nothing listens at that address and port"),
        "{stdout}"
    );
    // Every key came from the environment, and check says so.
    assert!(
        stdout.contains("     oidc.issuer is set by OIDC_DOMAIN"),
        "{stdout}"
    );
    assert!(
        stdout.contains("     register this post-logout redirect URI at the provider: https://sentry.example.com/oauth2/sign_in"),
        "{stdout}"
    );
}

#[tokio::test]
async fn check_points_to_the_ca_file_for_a_certificate_of_an_unknown_ca() {
    // The demo's gateway serves https with a certificate of its own throwaway CA.
    let demo = ssogate::demo::start(0, std::future::pending())
        .await
        .expect("demo starts");
    let upstream = demo.url.clone();
    let output = tokio::task::spawn_blocking(move || {
        check_from_environment(&upstream, &format!("{upstream}api/oidc"))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    for expected in [
        "     hint: the server's certificate is signed by a CA this host does not trust: give that CA's PEM file in oidc.ca_file",
        "     hint: the server's certificate is signed by a CA this host does not trust: give that CA's PEM file in upstream.ca_file",
    ] {
        assert!(
            stdout.lines().any(|line| line == expected),
            "missing line `{expected}` in:\n{stdout}"
        );
    }
}
