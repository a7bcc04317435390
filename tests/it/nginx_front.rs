//! nginx in front, exactly as `config/OPERATIONS.md`'s "Keeping your nginx in front" says: Debian's
//! nginx runs the shipped files from `config/nginx/` (only addresses, the port and file
//! paths replaced), asks the gateway with `auth_request`, and proxies to the recording
//! upstream. It must give the guarantees of the gateway in front: identity headers only
//! from a session, the gateway's cookies never at the app, no client-chosen client
//! address, 401 for API calls and a redirect to the sign-in for navigations, and deep
//! links that survive the login with their whole query.
//!
//! nginx is required: without it these tests fail, naming the package
//! (`tests/install-peers.sh` installs it).

use crate::support;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::browser::{Browser, empty, full};
use crate::support::{GatewayToml, PASSWORD, TestUpstream, unused_address, user};
use http::{Method, StatusCode};
use ssogate::devidp::{DevProvider, DevProviderConfig};
use ssogate::server::{self, RunningGateway};

/// The shipped nginx files, relative to the repository.
const SITE: &str = "config/nginx/sentry-site.conf";
const FORWARD_AUTH: &str = "config/nginx/ssogate-forward-auth.conf";
const PROTECT: &str = "config/nginx/ssogate-protect.conf";

/// Where `sentry-site.conf` expects the two included files.
const SNIPPETS_DIR: &str = "/etc/nginx/snippets/";

fn repository_file(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// `text` with `from` replaced by `to`; fails when `from` is not there, so a change
/// to the shipped file cannot silently leave a production value in the test.
fn replaced(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "{SITE} no longer contains `{from}`: update tests/it/nginx_front.rs"
    );
    text.replace(from, to)
}

/// Debian's nginx: `$NGINX`, else `/usr/sbin/nginx`, else `nginx` on the PATH.
fn nginx_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NGINX") {
        return path.into();
    }
    let debian = PathBuf::from("/usr/sbin/nginx");
    if debian.exists() {
        return debian;
    }
    let on_path = Command::new("nginx")
        .arg("-v")
        .stderr(Stdio::null())
        .status();
    assert!(
        on_path.is_ok_and(|s| s.success()),
        "nginx is not installed: these tests need Debian's nginx \
         (`apt-get install nginx`; tests/install-peers.sh installs it as root)"
    );
    PathBuf::from("nginx")
}

/// nginx (TLS, the shipped files) in front of the gateway (plain HTTP on loopback) in
/// front of the recording upstream, with the development provider.
struct NginxFront {
    nginx: Child,
    dir: tempfile::TempDir,
    /// `https://127.0.0.1:<nginx port>`: the site's origin, the gateway's public URL.
    base: String,
    ca_pem: String,
    upstream: TestUpstream,
    _provider: DevProvider,
    _gateway: RunningGateway,
}

const ADMIN_RULE: &str = r#"
[[access.rules]]
name = "admin area"
path = "^/manage/"
allowed_groups = ["sentry:admin"]
"#;

impl NginxFront {
    async fn start() -> NginxFront {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let nginx_addr = unused_address();
        let base = format!("https://{nginx_addr}");
        let upstream = TestUpstream::start().await;
        let provider = DevProvider::start(
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            DevProviderConfig::new(
                support::test_client(&base),
                vec![
                    user("alice", "alice@corp.example", true, &["sentry:member"]),
                    user("nemo", "nemo@corp.example", true, &[]),
                ],
            ),
        )
        .await
        .expect("test provider starts");

        // The gateway, as sentry-site.conf's comment configures it, with the signed
        // identity assertion on (its key is read at start: the folder may go after).
        let keys = tempfile::tempdir().unwrap();
        let assertion_key = crate::assertion::new_key(keys.path(), "assertion.pem");
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let gateway_addr = listener.local_addr().unwrap();
        let settings = GatewayToml::new(&base, &format!("http://{}", upstream.addr), &provider.issuer())
            .server(&format!(
                "listen = \"{gateway_addr}\"\ntrusted_proxies = [\"127.0.0.1/32\"]\nshutdown_grace = \"1s\""
            ))
            .access("preset = \"sentry\"\ngroups_claim = \"permissions\"")
            .tables(ADMIN_RULE)
            .tables(&format!("[assertion]\nkey_file = {assertion_key:?}"))
            .settings();
        let gateway = server::start_on(listener, settings, std::future::pending())
            .await
            .expect("gateway starts");

        // nginx, with the shipped files.
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let certificate = ssogate::server::tls::local_certificate(&["127.0.0.1"]).unwrap();
        std::fs::write(dir.path().join("cert.pem"), &certificate.cert_pem).unwrap();
        std::fs::write(dir.path().join("key.pem"), &certificate.key_pem).unwrap();
        for file in [FORWARD_AUTH, PROTECT] {
            let name = Path::new(file).file_name().unwrap();
            std::fs::write(dir.path().join(name), repository_file(file)).unwrap();
        }
        let mut site = repository_file(SITE);
        for (from, to) in [
            ("server 127.0.0.1:4180;", format!("server {gateway_addr};")),
            (
                "server 127.0.0.1:9000;",
                format!("server {};", upstream.addr),
            ),
            ("listen 443 ssl;", format!("listen {nginx_addr} ssl;")),
            (
                "/etc/letsencrypt/live/sentry.example.com/fullchain.pem",
                format!("{d}/cert.pem"),
            ),
            (
                "/etc/letsencrypt/live/sentry.example.com/privkey.pem",
                format!("{d}/key.pem"),
            ),
            (SNIPPETS_DIR, format!("{d}/")),
        ] {
            site = replaced(&site, from, &to);
        }
        std::fs::write(dir.path().join("site.conf"), site).unwrap();
        std::fs::write(
            dir.path().join("nginx.conf"),
            format!(
                r#"
daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    include {d}/site.conf;
}}
"#
            ),
        )
        .unwrap();
        let mut nginx = Command::new(nginx_binary())
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nginx starts");
        for _ in 0..200 {
            if let Some(status) = nginx.try_wait().unwrap() {
                let mut stderr = String::new();
                std::io::Read::read_to_string(&mut nginx.stderr.take().unwrap(), &mut stderr)
                    .unwrap();
                let log = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
                panic!("nginx exited ({status}): {stderr}\n{log}");
            }
            if tokio::net::TcpStream::connect(nginx_addr).await.is_ok() {
                return NginxFront {
                    nginx,
                    dir,
                    base,
                    ca_pem: certificate.ca_pem,
                    upstream,
                    _provider: provider,
                    _gateway: gateway,
                };
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let _ = nginx.kill();
        panic!("nginx did not listen on {nginx_addr}");
    }

    fn browser(&self) -> Browser {
        Browser::new(&self.ca_pem, &self.base)
    }

    /// A browser signed in as `username` through nginx, landed on `/`.
    async fn signed_in(&self, username: &str) -> Browser {
        let mut browser = self.browser();
        let landed = browser.login("/", username, PASSWORD).await;
        assert_eq!(landed.status, StatusCode::OK, "{landed:?}\n{}", self.log());
        browser
    }

    /// How many requests the app has received.
    fn app_requests(&self) -> usize {
        self.upstream.requests().len()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for NginxFront {
    fn drop(&mut self) {
        let _ = self.nginx.kill();
        let _ = self.nginx.wait();
    }
}

/// A request with `headers`, sent by `browser` (with its cookies).
async fn send(
    browser: &mut Browser,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> support::TestResponse {
    let mut request = browser.request(method.clone(), path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let body = if method == Method::POST {
        full("{}")
    } else {
        empty()
    };
    browser.send(request.body(body).unwrap()).await
}

/// Identity headers a client might try to pose with.
const SPOOFED_IDENTITY: [(&str, &str); 5] = [
    ("x-forwarded-user", "sub-root"),
    ("x-forwarded-email", "root@corp.example"),
    ("x-forwarded-preferred-username", "root"),
    ("x-forwarded-groups", "sentry:admin"),
    ("x-ssogate-jwt-assertion", FORGED_ASSERTION),
];

/// An unsigned token naming root, as a client might send it.
const FORGED_ASSERTION: &str = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJzdWItcm9vdCJ9.";

const IDENTITY_HEADERS: [&str; 5] = [
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-preferred-username",
    "x-forwarded-groups",
    "x-ssogate-jwt-assertion",
];

#[tokio::test]
async fn identity_headers_reach_the_app_only_from_the_gateways_answer() {
    let front = NginxFront::start().await;

    let mut alice = front.signed_in("alice").await;
    let page = send(
        &mut alice,
        Method::GET,
        "/organizations/",
        &SPOOFED_IDENTITY,
    )
    .await;
    assert_eq!(page.status, StatusCode::OK, "{page:?}");
    let seen = front.upstream.last();
    for (name, value) in [
        ("x-forwarded-user", "sub-alice"),
        ("x-forwarded-email", "alice@corp.example"),
        ("x-forwarded-preferred-username", "alice"),
        ("x-forwarded-groups", "sentry:member"),
    ] {
        let got: Vec<_> = seen.headers.get_all(name).iter().collect();
        assert_eq!(got, [value], "{name}");
    }
    // The signed identity passes through nginx from the gateway's answer, never the
    // client's.
    let assertions: Vec<_> = seen
        .headers
        .get_all("x-ssogate-jwt-assertion")
        .iter()
        .collect();
    assert_eq!(assertions.len(), 1, "{seen:?}");
    let token = assertions[0].to_str().unwrap();
    assert_ne!(token, FORGED_ASSERTION);
    let claims = token.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, claims).unwrap(),
    )
    .unwrap();
    assert_eq!(claims["sub"], "sub-alice");

    // Nobody's groups: the client's header is cleared, not kept.
    let mut nemo = front.signed_in("nemo").await;
    send(&mut nemo, Method::GET, "/organizations/", &SPOOFED_IDENTITY).await;
    let seen = front.upstream.last();
    assert_eq!(seen.headers["x-forwarded-user"], "sub-nemo");
    assert!(!seen.headers.contains_key("x-forwarded-groups"), "{seen:?}");

    // A public route (the Sentry preset): no identity at all, whatever the client sends.
    let mut anonymous = front.browser();
    let mut spoofed = SPOOFED_IDENTITY.to_vec();
    spoofed.push(("x_forwarded_user", "sub-root"));
    let health = send(&mut anonymous, Method::GET, "/_health/", &spoofed).await;
    assert_eq!(health.status, StatusCode::OK, "{health:?}");
    let seen = front.upstream.last();
    assert_eq!(seen.path_and_query, "/_health/");
    for name in IDENTITY_HEADERS.iter().chain(&["x_forwarded_user"]) {
        assert!(!seen.headers.contains_key(*name), "{name}: {seen:?}");
    }

    // The route rules hold for the request nginx asks about.
    let before = front.app_requests();
    let refused = send(&mut alice, Method::GET, "/manage/", &[]).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let refused = send(&mut alice, Method::GET, "/manage%2Fusers/", &[]).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(
        front.app_requests(),
        before,
        "nothing refused reaches the app"
    );

    // The forward-auth question itself is nginx's, not a client's.
    let direct = send(&mut alice, Method::GET, "/oauth2/auth", &[]).await;
    assert_eq!(direct.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_gateways_cookies_never_reach_the_app() {
    let front = NginxFront::start().await;
    let mut alice = front.signed_in("alice").await;
    // A login cookie too: a login started (and left) in this browser.
    let started = alice.navigate("/oauth2/start?rd=%2F").await;
    assert_eq!(started.status, StatusCode::FOUND);
    assert!(alice.cookies.len() >= 2, "{:?}", alice.cookies);
    alice
        .cookies
        .insert("sentrysid".into(), "sentry-session".into());
    alice.cookies.insert("sc".into(), "csrf".into());

    let page = alice.navigate("/organizations/").await;
    assert_eq!(page.status, StatusCode::OK);
    let seen = front.upstream.last();
    let cookies: Vec<_> = seen.headers.get_all("cookie").iter().collect();
    assert_eq!(cookies, ["sc=csrf; sentrysid=sentry-session"], "{seen:?}");

    // Only the gateway's cookies: the app gets no Cookie header at all.
    let mut gateway_only = front.signed_in("alice").await;
    gateway_only.navigate("/organizations/").await;
    assert!(!front.upstream.last().headers.contains_key("cookie"));

    // A public route gets the same treatment.
    alice.navigate("/_health/").await;
    let seen = front.upstream.last();
    assert_eq!(seen.path_and_query, "/_health/");
    let cookies: Vec<_> = seen.headers.get_all("cookie").iter().collect();
    assert_eq!(cookies, ["sc=csrf; sentrysid=sentry-session"]);
}

#[tokio::test]
async fn the_app_reads_the_client_address_nginx_saw() {
    let front = NginxFront::start().await;
    let mut alice = front.signed_in("alice").await;
    let chosen = [
        ("x-forwarded-for", "203.0.113.7"),
        ("x-real-ip", "203.0.113.7"),
        ("forwarded", "for=203.0.113.7"),
        ("x-original-url", "/manage/"),
        ("x-original-uri", "/manage/"),
        ("x-rewrite-url", "/manage/"),
        ("x-forwarded-uri", "/manage/"),
    ];
    for path in ["/organizations/", "/_health/"] {
        let page = send(&mut alice, Method::GET, path, &chosen).await;
        assert_eq!(page.status, StatusCode::OK, "{path}");
        let seen = front.upstream.last();
        let forwarded_for: Vec<_> = seen.headers.get_all("x-forwarded-for").iter().collect();
        assert_eq!(forwarded_for, ["127.0.0.1"], "{path}");
        assert_eq!(seen.headers["x-real-ip"], "127.0.0.1", "{path}");
        for name in [
            "forwarded",
            "x-original-url",
            "x-original-uri",
            "x-rewrite-url",
            "x-forwarded-uri",
        ] {
            assert!(!seen.headers.contains_key(name), "{path}: {name}");
        }
        assert_eq!(seen.headers["x-forwarded-proto"], "https");
    }
}

#[tokio::test]
async fn without_a_session_api_calls_get_401_and_navigations_the_sign_in() {
    let front = NginxFront::start().await;
    let mut anonymous = front.browser();
    let json = ("accept", "application/json; charset=utf-8");
    for (method, path, headers) in [
        (Method::GET, "/api/0/organizations/", vec![json]),
        (Method::GET, "/api/0/organizations/", vec![]),
        (Method::POST, "/organizations/acme/issues/", vec![]),
        (Method::PUT, "/api/0/issues/1/", vec![json]),
        (
            Method::GET,
            "/organizations/acme/",
            vec![("x-requested-with", "XMLHttpRequest")],
        ),
        (
            Method::GET,
            "/organizations/acme/",
            vec![("sec-fetch-mode", "cors")],
        ),
        (Method::GET, "/organizations/acme/", vec![json]),
    ] {
        let response = send(&mut anonymous, method.clone(), path, &headers).await;
        assert_eq!(
            response.status,
            StatusCode::UNAUTHORIZED,
            "{method} {path} {headers:?}: {response:?}"
        );
        let body: serde_json::Value = serde_json::from_str(&response.body)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {}", response.body));
        assert_eq!(body["error"], "unauthorized");
    }
    let page = anonymous.navigate("/organizations/acme/").await;
    assert!(page.is_sign_in_redirect(), "{page:?}");
    assert_eq!(
        page.location(),
        Some("/oauth2/sign_in?rd=%2Forganizations%2Facme%2F")
    );
    assert_eq!(front.app_requests(), 0, "nothing reached the app");
}

#[tokio::test]
async fn a_deep_link_survives_the_login_with_its_whole_query() {
    let front = NginxFront::start().await;
    let deep_link = "/organizations/acme/issues/?query=is%3Aunresolved+assigned%3Ame&project=1&statsPeriod=14d&x=%26y";
    let mut browser = front.browser();
    let to_sign_in = browser.navigate(deep_link).await;
    assert!(to_sign_in.is_sign_in_redirect(), "{to_sign_in:?}");
    let sign_in = browser.navigate(to_sign_in.location().unwrap()).await;
    assert_eq!(sign_in.status, StatusCode::OK, "{sign_in:?}");
    let start = link_to_start(&sign_in.body);
    let to_provider = browser.navigate(&start).await;
    assert_eq!(to_provider.status, StatusCode::FOUND, "{to_provider:?}");
    let callback = browser
        .sign_in_at_provider(to_provider.location().unwrap(), "alice", PASSWORD)
        .await;
    let landed = browser.follow(&callback).await;
    assert_eq!(landed.status, StatusCode::OK, "{landed:?}");
    assert_eq!(landed.url, format!("{}{deep_link}", front.base));
    assert_eq!(front.upstream.last().path_and_query, deep_link);
}

/// The sign-in page's link to `/oauth2/start`.
fn link_to_start(page: &str) -> String {
    let at = page
        .find("href=\"/oauth2/start")
        .unwrap_or_else(|| panic!("no start link: {page}"));
    let rest = &page[at + "href=\"".len()..];
    rest[..rest.find('"').unwrap()].replace("&amp;", "&")
}

#[tokio::test]
async fn the_operations_page_shows_the_tested_files() {
    let readme = repository_file("config/OPERATIONS.md");
    for file in [SITE, FORWARD_AUTH, PROTECT] {
        assert!(
            readme.contains(file),
            "config/OPERATIONS.md does not point to {file}"
        );
    }
    let protect = repository_file(PROTECT);
    let directives: String = protect
        .lines()
        .skip_while(|line| line.starts_with('#') || line.is_empty())
        .map(|line| format!("{line}\n"))
        .collect();
    assert!(
        readme.contains(&format!("```nginx\n{directives}```")),
        "config/OPERATIONS.md's nginx block is not {PROTECT} (from its first directive on)"
    );
}

#[tokio::test]
async fn token_traffic_passes_without_sentrys_session_cookies_only() {
    let front = NginxFront::start().await;
    let token = ("authorization", "Bearer sntrys_0123456789abcdef");
    let json = ("accept", "application/json");
    let mut cli = front.browser();
    let answer = send(&mut cli, Method::GET, "/api/0/", &[token, json]).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    let seen = front.upstream.last();
    assert_eq!(seen.path_and_query, "/api/0/");
    assert_eq!(
        seen.headers["authorization"],
        "Bearer sntrys_0123456789abcdef"
    );
    for name in IDENTITY_HEADERS.iter().chain(&["cookie"]) {
        assert!(!seen.headers.contains_key(*name), "{name}: {seen:?}");
    }

    // With Sentry's session cookie, a token is no way around the gateway: nginx would
    // forward the cookie, and Sentry may authenticate by it.
    let before = front.app_requests();
    let mut browser = front.browser();
    browser
        .cookies
        .insert("sentrysid".into(), "old-session".into());
    let refused = send(&mut browser, Method::GET, "/api/0/", &[token, json]).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{refused:?}");
    assert_eq!(front.app_requests(), before);
}
