//! Micro benches of what the gateway does for every signed-in request, each piece
//! alone (criterion): `cargo bench --bench hot_path`.
//!
//! - opening the session cookie (the first time, and as a thread that opened it
//!   before), and that plus the session lookup among 100k sessions;
//! - the strict HTTP/1.1 framing check of a browser's request head;
//! - making the path canonical and classifying it against the Sentry preset;
//! - the header work of forwarding (gateway cookies out, identity and
//!   `X-Forwarded-*` in), on a browser's header set; and the same with the signed
//!   identity assertion on (`[assertion]`), whose cached token is what each request
//!   pays for (the first one signs);
//! - verifying an RS256 ID token as a login does (signature, claims, nonce).
//!
//! Under `cargo test --all-targets` each bench runs once, as a smoke test.

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method};
use ssogate::config::{SessionSettings, Settings, StoreSettings};
use ssogate::devidp::{DevClient, DevProvider, DevProviderConfig};
use ssogate::gateway::{Caller, Gateway};
use ssogate::policy::{Route, decide, normalize_path};
use ssogate::rules::sentry_preset;
use ssogate::server::framing::FramingScanner;
use ssogate::session::{CookieCodec, SessionStore, new_session_id, random_token};

#[path = "support/sample.rs"]
mod sample;
use sample::session;

const SECRET: &str = "bench-session-secret-0123456789abcdefghij";
const CLIENT_ID: &str = "sentry";
const CLIENT_SECRET: &str = "bench-client-secret";

/// Cookie header of a browser signed in to Sentry behind the gateway.
fn browser_cookie(sealed: &str) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "sentrysid=.eJxVjMsKwjAQRf8lawM1ZvNwJbjQhYJrCZPJtQ2aSchD; sc=Xq2bL7y; _ssogate={sealed}; sudo=1"
    ))
    .unwrap()
}

fn cookie_and_session(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let settings = SessionSettings {
        cookie_name: "_ssogate".into(),
        secrets: vec![SECRET.into()],
        lifetime: Duration::from_secs(86_400),
        idle_timeout: Duration::from_secs(28_800),
        max_sessions: 200_000,
        revalidate_every: None,
        expired_token_grace: Duration::ZERO,
        store: StoreSettings::Memory,
    };
    let store = SessionStore::new(&settings).unwrap();
    let id = new_session_id();
    runtime.block_on(async {
        for n in 0..100_000 {
            store.insert(&new_session_id(), session(n)).await.unwrap();
        }
        store.insert(&id, session(0)).await.unwrap();
        store.sync().await;
    });
    let codec = CookieCodec::new(&settings.secrets, true);
    let sealed = codec.seal("_ssogate", &id, "/", None);
    let mut headers = HeaderMap::new();
    headers.insert(http::header::COOKIE, browser_cookie(sealed.value()));

    c.bench_function("session cookie: open (base64, AES-GCM)", |b| {
        b.iter(|| codec.open(black_box(&headers), "_ssogate").unwrap())
    });
    c.bench_function("session cookie: open, remembered by this thread", |b| {
        b.iter(|| codec.open_session(black_box(&headers), "_ssogate").unwrap())
    });
    c.bench_function("session cookie: open + lookup in 100k sessions", |b| {
        b.to_async(&runtime).iter(|| async {
            let (id, key) = codec.open_session(black_box(&headers), "_ssogate").unwrap();
            store.get_keyed(&id, key).await.unwrap().unwrap()
        })
    });
}

/// The strict framing check on a browser's request head, as it arrives in one read.
fn framing_check(c: &mut Criterion) {
    let head = format!(
        "GET /organizations/acme/issues/4711/events/latest/?project=1 HTTP/1.1\r\n\
         Host: sentry.example.com\r\n\
         User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36\r\n\
         Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n\
         Accept-Language: en-GB,en;q=0.9\r\n\
         Accept-Encoding: gzip, deflate, br, zstd\r\n\
         Referer: https://sentry.example.com/organizations/acme/issues/\r\n\
         Sec-Fetch-Dest: document\r\nSec-Fetch-Mode: navigate\r\nSec-Fetch-Site: same-origin\r\n\
         Cookie: {}\r\n\r\n",
        browser_cookie(&"x".repeat(120)).to_str().unwrap()
    );
    c.bench_function("framing check: a browser's request head", |b| {
        b.iter(|| {
            let mut scanner = FramingScanner::default();
            scanner.scan(black_box(head.as_bytes())).unwrap();
            assert_eq!(scanner.messages(), 1);
        })
    });
}

fn route_classification(c: &mut Criterion) {
    let rules = ssogate::rules::RouteRules::new(sentry_preset()).unwrap();
    let mut token = HeaderMap::new();
    token.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_static("Bearer sntryu_0123456789abcdef"),
    );
    let none = HeaderMap::new();
    let cases = [
        (
            "browser page (no rule: authenticated)",
            Method::GET,
            "/organizations/acme/issues/4711/events/latest/",
            &none,
        ),
        (
            "SDK envelope (public)",
            Method::POST,
            "/api/42/envelope/",
            &none,
        ),
        (
            "token API (public with a token)",
            Method::GET,
            "/api/0/projects/acme/web/issues/",
            &token,
        ),
    ];
    for (name, method, raw, headers) in cases {
        c.bench_function(&format!("normalise + classify: {name}"), |b| {
            b.iter(|| {
                let path = normalize_path(black_box(raw)).unwrap();
                matches!(
                    decide(&rules, &method, &path, headers),
                    Route::Public { .. }
                )
            })
        });
    }
}

/// A gateway in front of nothing (no request is sent): settings only, for the
/// header work and the provider's token checks.
fn bench_gateway(issuer: &str) -> Gateway {
    bench_gateway_with(issuer, "")
}

/// [`bench_gateway`] with more tables (`extra`) in its config.
fn bench_gateway_with(issuer: &str, extra: &str) -> Gateway {
    let config = format!(
        r#"
[server]
public_url = "https://sentry.example.com"
[tls]
enabled = false
[upstream]
url = "http://127.0.0.1:9"
[oidc]
issuer = "{issuer}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
[session]
secrets = ["{SECRET}"]
[access]
preset = "sentry"
{extra}"#
    );
    let settings = Settings::from_toml(&config, "(bench)", std::iter::empty()).unwrap();
    Gateway::new(settings).unwrap()
}

fn forwarded_headers(c: &mut Criterion) {
    let gateway = bench_gateway("https://id.example.com/api/oidc");
    let codec = CookieCodec::new(&[SECRET.to_owned()], true);
    let sealed = codec.seal("_ssogate", &new_session_id(), "/", None);
    let mut browser = HeaderMap::new();
    for (name, value) in [
        ("host", "sentry.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0 Safari/537.36",
        ),
        ("accept", "application/json; charset=utf-8"),
        ("accept-language", "en-US,en;q=0.9"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        (
            "referer",
            "https://sentry.example.com/organizations/acme/issues/",
        ),
        ("sec-fetch-mode", "cors"),
        ("sec-fetch-site", "same-origin"),
        ("x-csrftoken", "Xq2bL7yQ0123456789abcdef"),
    ] {
        browser.insert(name, HeaderValue::from_static(value));
    }
    browser.insert(http::header::COOKIE, browser_cookie(sealed.value()));
    let session = session(1);
    let peer = SocketAddr::from((Ipv4Addr::new(10, 1, 2, 3), 51234));
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("assertion.pem");
    let pkcs8 = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &aws_lc_rs::rand::SystemRandom::new(),
    )
    .unwrap();
    std::fs::write(
        &key_file,
        format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, pkcs8.as_ref())
        ),
    )
    .unwrap();
    let with_assertion = bench_gateway_with(
        "https://id.example.com/api/oidc",
        &format!("[assertion]\nkey_file = {key_file:?}\n"),
    );
    for (name, gateway) in [
        ("forwarded header set (signed in)", &gateway),
        (
            "forwarded header set (signed in, assertion cached)",
            &with_assertion,
        ),
    ] {
        c.bench_function(name, |b| {
            b.iter_batched(
                || browser.clone(),
                |mut headers| {
                    gateway.prepare_upstream_headers(
                        &mut headers,
                        peer,
                        Caller::SignedIn(&session),
                    );
                    headers
                },
                BatchSize::SmallInput,
            )
        });
    }
}

fn id_token_verification(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (provider, gateway) = runtime.block_on(async {
        let provider = DevProvider::start(
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            DevProviderConfig::new(
                DevClient {
                    client_id: CLIENT_ID.into(),
                    client_secret: CLIENT_SECRET.into(),
                    redirect_uris: vec!["https://sentry.example.com/oauth2/callback".into()],
                    post_logout_redirect_uris: vec![],
                },
                vec![],
            ),
        )
        .await
        .unwrap();
        let gateway = Arc::new(bench_gateway(&provider.issuer()));
        gateway.provider().discover().await.unwrap();
        (provider, gateway)
    });
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "iss": provider.issuer(),
        "aud": CLIENT_ID,
        "sub": "10000001",
        "iat": now,
        "exp": now + 1800,
        "nonce": "bench-nonce",
        "sid": random_token(),
        "email": "person1@example.com",
        "email_verified": true,
        "login": "person1",
        "groups": ["sentry:member"],
    });
    let token = provider.sign_claims(serde_json::Map::new(), claims.as_object().unwrap().clone());
    let provider_client = gateway.provider().clone();
    c.bench_function("ID token verification (RS256, login checks)", |b| {
        b.to_async(&runtime).iter(|| async {
            provider_client
                .verify_login_id_token(black_box(&token), "bench-nonce")
                .await
                .unwrap()
        })
    });
    provider.shutdown();
}

criterion_group!(
    hot_path,
    cookie_and_session,
    framing_check,
    route_classification,
    forwarded_headers,
    id_token_verification
);
criterion_main!(hot_path);
