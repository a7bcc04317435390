//! The `ssogate` binary as an operator and a newcomer use it.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use http::StatusCode;
use support::browser::Browser;

fn ssogate() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ssogate"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    command
}

#[test]
fn a_bad_config_stops_startup_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ssogate.toml");
    std::fs::write(
        &config,
        r#"
[server]
public_url = "https://sentry.example.com"
[tls]
enabled = false
[upstream]
url = "http://127.0.0.1:9000"
read_timeout = "forever"
[oidc]
issuer = "https://id.example.com/api/oidc"
client_id = "sentry"
client_secret = "x"
[session]
secrets = ["0123456789abcdef0123456789abcdef"]
"#,
    )
    .unwrap();
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
    let output = ssogate()
        .arg("check")
        .env("SSOGATE_SERVER_PUBLIC_URL", "https://sentry.example.com")
        .env("SSOGATE_TLS_ENABLED", "false")
        .env("SSOGATE_UPSTREAM_URL", format!("http://{closed}"))
        .env("OIDC_DOMAIN", format!("http://{closed}/api/oidc"))
        .env("OIDC_CLIENT_ID", "sentry")
        .env("OIDC_CLIENT_SECRET", "secret")
        .env(
            "SSOGATE_SESSION_SECRETS",
            "0123456789abcdef0123456789abcdef",
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
    let demo = ssogate::demo::start(0).await.expect("demo starts");
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
