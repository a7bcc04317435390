//! The upstream's side of the boundary: what the gateway tells Sentry about a request
//! (which host it is for, who the client is), what it passes back of Sentry's answers
//! (never the gateway's own cookies, one framing, no instructions meant for a front
//! server, no protocol switch nobody asked for), log lines no viewer can be fooled by,
//! and a callback that must come from the configured provider (RFC 9207).

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use crate::support::browser::{Browser, empty};
use crate::support::logs::LogBuffer;
use crate::support::{World, WorldOptions, user};
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn sentry_world_options(server_toml: &str, extra: &str) -> WorldOptions {
    WorldOptions {
        extra_toml: format!("[access]\npreset = \"sentry\"\n{extra}"),
        server_toml: server_toml.into(),
        users: vec![user(
            "alice",
            "alice@corp.example",
            true,
            &["sentry:member"],
        )],
        ..Default::default()
    }
}

/// The gateway's `host:port` (`public_url`'s authority in every test world).
fn public_host(world: &World) -> String {
    world.base.trim_start_matches("https://").to_owned()
}

/// An SDK envelope (a public route of the Sentry preset) with extra headers.
async fn envelope(
    browser: &mut Browser,
    headers: &[(&str, &str)],
) -> support::browser::TestResponse {
    let mut builder = browser.request(Method::POST, "/api/1/envelope/");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(support::browser::full("{}")).unwrap();
    browser.send(request).await
}

// ---------------------------------------------------------------------------------
// Raw connections

type RawTls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A certificate verifier that checks the chain against the test CA for `127.0.0.1`
/// whatever server name the client sent: for connections that send another SNI.
#[derive(Debug)]
struct AsLoopback(Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for AsLoopback {
    fn verify_server_cert(
        &self,
        end_entity: &rustls_pki_types::CertificateDer<'_>,
        intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let loopback = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
        self.0
            .verify_server_cert(end_entity, intermediates, &loopback, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A TLS connection to the gateway that sends `server_name` as SNI (an IP address
/// sends none) and offers `alpn`.
async fn raw_tls(world: &World, server_name: &str, alpn: &[&[u8]]) -> RawTls {
    let mut config = support::browser::tls_trusting(&world.ca_pem);
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(world.ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let verifier = rustls::client::WebPkiServerVerifier::builder(Arc::new(roots))
        .build()
        .unwrap();
    config
        .dangerous()
        .set_certificate_verifier(Arc::new(AsLoopback(verifier)));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(world.gateway.local_addr)
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from(server_name.to_owned()).unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap()
}

/// Sends `head` (a whole HTTP/1.1 request without body) with `Connection: close` and
/// returns everything the gateway answers.
async fn raw_exchange(stream: &mut RawTls, head: &str) -> String {
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"))
}

/// One HTTP/2 request over a connection with the given SNI; returns the status.
async fn h2_status(world: &World, server_name: &str, request: http::Request<()>) -> StatusCode {
    let tls = raw_tls(world, server_name, &[b"h2"]).await;
    let (mut client, _connection) = support::h2_handshake(tls, &h2::client::Builder::new()).await;
    support::h2_send(&mut client, request).await.status()
}

// ---------------------------------------------------------------------------------
// 2. What the gateway tells Sentry: the host

#[tokio::test]
async fn requests_for_another_host_get_421_and_page_loads_go_to_public_url() {
    let world = World::start_with(sentry_world_options("", "")).await;
    let port = world.gateway.local_addr.port();
    let foreign = [
        "evil.example".to_owned(),
        format!("evil.example:{port}"),
        format!("127.0.0.1.evil.example:{port}"),
        format!("localhost:{port}"),
        format!("127.0.0.2:{port}"),
        format!("[::1]:{port}"),
    ];
    let mut client = world.browser();
    for host in &foreign {
        // Machine traffic (public), the API, a page load: none of it reaches Sentry.
        let sdk = envelope(&mut client, &[("host", host)]).await;
        assert_eq!(
            sdk.status,
            StatusCode::MISDIRECTED_REQUEST,
            "{host}: {sdk:?}"
        );
        assert!(
            !sdk.body.contains("evil"),
            "the host is not echoed: {}",
            sdk.body
        );
        let api = client
            .request(Method::GET, "/api/0/organizations/")
            .header("host", host.as_str())
            .header("authorization", "Bearer sntrys_abc")
            .body(empty())
            .unwrap();
        let api = client.send(api).await;
        assert_eq!(
            api.status,
            StatusCode::MISDIRECTED_REQUEST,
            "{host}: {api:?}"
        );
        assert!(
            api.body.starts_with('{'),
            "JSON for a machine: {}",
            api.body
        );

        let page = client
            .request(Method::GET, "/auth/password/recover/?next=%2F")
            .header("host", host.as_str())
            .header("accept", "text/html")
            .header("sec-fetch-mode", "navigate")
            .body(empty())
            .unwrap();
        let page = client.send(page).await;
        assert_eq!(page.status, StatusCode::FOUND, "{host}: {page:?}");
        assert_eq!(
            page.location(),
            Some(format!("{}/auth/password/recover/?next=%2F", world.base).as_str()),
            "{host}"
        );
    }
    // The redirect stays on public_url, whatever the path looks like.
    for path in ["//evil.example/x", "/%2F%2Fevil.example", "/\\evil.example"] {
        let page = client
            .request(Method::GET, path)
            .header("host", "evil.example")
            .header("sec-fetch-mode", "navigate")
            .body(empty())
            .unwrap();
        let page = client.send(page).await;
        let location = page.location().unwrap_or_default().to_owned();
        assert!(
            location.starts_with(&format!("{}/", world.base)),
            "{path}: {location}"
        );
        let resolved = support::browser::resolve(&world.base, &location);
        assert!(
            resolved.starts_with(&format!("{}/", world.base)),
            "{path}: {resolved}"
        );
    }
    assert!(
        world.upstream.requests().is_empty(),
        "no request for another host reached the upstream: {:?}",
        world.upstream.requests()
    );

    // Malformed or missing hosts are plain bad requests.
    for bad in [
        format!("127.0.0.1:{port}:1"),
        format!("127.0.0.1:x{port}"),
        format!("user@127.0.0.1:{port}"),
    ] {
        let sdk = envelope(&mut client, &[("host", &bad)]).await;
        assert_eq!(sdk.status, StatusCode::BAD_REQUEST, "{bad}: {sdk:?}");
    }
    let mut stream = raw_tls(&world, "127.0.0.1", &[]).await;
    let answer = raw_exchange(
        &mut stream,
        "GET /api/1/envelope/ HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), 400, "HTTP/1.1 without Host: {answer}");
    assert!(world.upstream.requests().is_empty());

    // The right host, in any case, with a final dot, with any port or none, passes
    // (proxies in front often send the bare name, nginx's `$host`; replicas and NAT
    // reach the gateway on ports of their own).
    for host in [
        public_host(&world),
        "127.0.0.1".to_owned(),
        format!("127.0.0.1:{}", port.wrapping_add(1)),
        public_host(&world).to_uppercase(),
        format!("127.0.0.1.:{port}"),
    ] {
        let sdk = envelope(&mut client, &[("host", &host)]).await;
        assert_eq!(sdk.status, StatusCode::OK, "{host}: {sdk:?}");
    }
}

#[tokio::test]
async fn health_endpoints_answer_whatever_host_a_load_balancer_uses() {
    let world = World::start_with(sentry_world_options("", "")).await;
    let mut balancer = world.browser();
    for host in ["10.0.0.5:8443", "10.0.0.5", "evil.example"] {
        for (path, expected) in [("/ping", StatusCode::OK), ("/metrics", StatusCode::OK)] {
            let request = balancer
                .request(Method::GET, path)
                .header("host", host)
                .body(empty())
                .unwrap();
            let answer = balancer.send(request).await;
            assert_eq!(answer.status, expected, "{path} for {host}: {answer:?}");
        }
        let ready = balancer
            .request(Method::GET, "/ready")
            .header("host", host)
            .body(empty())
            .unwrap();
        let ready = balancer.send(ready).await;
        assert!(ready.body.contains("READY"), "/ready for {host}: {ready:?}");
    }
    // Anything else for that host is not served.
    let other = balancer
        .request(Method::GET, "/oauth2/userinfo")
        .header("host", "10.0.0.5:8443")
        .header("accept", "application/json")
        .body(empty())
        .unwrap();
    assert_eq!(
        balancer.send(other).await.status,
        StatusCode::MISDIRECTED_REQUEST
    );
}

#[tokio::test]
async fn the_upstream_always_sees_public_urls_host() {
    let world = World::start_with(sentry_world_options(
        "host_aliases = [\"sentry.internal\", \"LOCALHOST\"]",
        "",
    ))
    .await;
    let port = world.gateway.local_addr.port();
    let public = public_host(&world);
    let mut client = world.browser();
    for host in [
        public.clone(),
        format!("sentry.internal:{port}"),
        format!("localhost:{port}"),
        format!("Sentry.Internal.:{port}"),
    ] {
        let sent = envelope(
            &mut client,
            &[
                ("host", &host),
                ("x-forwarded-host", "evil.example"),
                ("x_forwarded_host", "evil.example"),
                ("x-host", "evil.example"),
                ("x-original-host", "evil.example"),
                ("x-forwarded-port", "1"),
                ("x-forwarded-server", "evil.example"),
            ],
        )
        .await;
        assert_eq!(sent.status, StatusCode::OK, "{host}: {sent:?}");
        let seen = world.upstream.last();
        assert_eq!(seen.headers["host"], public.as_str(), "{host}");
        assert_eq!(seen.headers.get_all("x-forwarded-host").iter().count(), 1);
        assert_eq!(seen.headers["x-forwarded-host"], public.as_str(), "{host}");
        for gone in [
            "x_forwarded_host",
            "x-host",
            "x-original-host",
            "x-forwarded-port",
            "x-forwarded-server",
        ] {
            assert!(
                !seen.headers.contains_key(gone),
                "{gone} reached the upstream"
            );
        }
    }

    // Absolute-form targets (RFC 9112 section 3.2.2): the target names the host, and
    // its Host header is ignored.
    let cases = [
        (
            "https://evil.example/api/1/envelope/".to_owned(),
            public.clone(),
            421,
        ),
        (
            format!("https://evil.example:{port}/api/1/envelope/"),
            public.clone(),
            421,
        ),
        (
            format!("https://{public}/api/1/envelope/"),
            "evil.example".to_owned(),
            200,
        ),
        (
            format!("http://{public}/api/1/envelope/"),
            public.clone(),
            200,
        ),
    ];
    for (target, host, status) in cases {
        let before = world.upstream.requests().len();
        let mut stream = raw_tls(&world, "127.0.0.1", &[]).await;
        let head = format!(
            "POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        );
        let answer = raw_exchange(&mut stream, &head).await;
        assert_eq!(
            status_of(&answer),
            status,
            "{target} with Host {host}: {answer}"
        );
        if status == 200 {
            let seen = world.upstream.last();
            assert_eq!(seen.headers["host"], public.as_str());
            assert_eq!(seen.path_and_query, "/api/1/envelope/");
        } else {
            assert_eq!(world.upstream.requests().len(), before);
        }
    }
}

#[tokio::test]
async fn http2_authority_and_tls_server_names_are_checked_too() {
    let world = World::start_with(sentry_world_options(
        "host_aliases = [\"sentry.internal\"]",
        "",
    ))
    .await;
    let port = world.gateway.local_addr.port();
    let public = public_host(&world);
    let get = |authority: &str, host: Option<&str>| {
        let mut builder = http::Request::get(format!("https://{authority}/api/0/organizations/"))
            .header("authorization", "Bearer sntrys_abc");
        if let Some(host) = host {
            builder = builder.header("host", host);
        }
        builder.body(()).unwrap()
    };
    // (SNI, :authority, Host, status)
    let cases: Vec<(&str, String, Option<String>, StatusCode)> = vec![
        ("127.0.0.1", public.clone(), None, StatusCode::OK),
        (
            "127.0.0.1",
            format!("evil.example:{port}"),
            None,
            StatusCode::MISDIRECTED_REQUEST,
        ),
        (
            "127.0.0.1",
            "evil.example".into(),
            None,
            StatusCode::MISDIRECTED_REQUEST,
        ),
        (
            "127.0.0.1",
            public.clone(),
            Some("evil.example".into()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "127.0.0.1",
            public.clone(),
            Some(public.clone()),
            StatusCode::OK,
        ),
        // A connection opened for one name carries no request for another.
        (
            "evil.example",
            public.clone(),
            None,
            StatusCode::MISDIRECTED_REQUEST,
        ),
        (
            "evil.example",
            format!("evil.example:{port}"),
            None,
            StatusCode::MISDIRECTED_REQUEST,
        ),
        (
            "sentry.internal",
            public.clone(),
            None,
            StatusCode::MISDIRECTED_REQUEST,
        ),
        (
            "sentry.internal",
            format!("sentry.internal:{port}"),
            None,
            StatusCode::OK,
        ),
        (
            "SENTRY.internal",
            format!("sentry.INTERNAL:{port}"),
            None,
            StatusCode::OK,
        ),
    ];
    for (sni, authority, host, status) in cases {
        let before = world.upstream.requests().len();
        let got = h2_status(&world, sni, get(&authority, host.as_deref())).await;
        assert_eq!(
            got, status,
            "SNI {sni}, :authority {authority}, Host {host:?}"
        );
        let forwarded = world.upstream.requests().len() > before;
        assert_eq!(
            forwarded,
            status == StatusCode::OK,
            "SNI {sni}, :authority {authority}"
        );
        if forwarded {
            assert_eq!(world.upstream.last().headers["host"], public.as_str());
        }
    }

    // HTTP/1.1 over a connection with another SNI, and a page load on it: 421, not a
    // redirect the browser would follow on the same connection.
    for (sni, host) in [
        ("evil.example", public.clone()),
        ("sentry.internal", public.clone()),
    ] {
        let mut stream = raw_tls(&world, sni, &[b"http/1.1"]).await;
        let head = format!(
            "GET /organizations/ HTTP/1.1\r\nHost: {host}\r\nAccept: text/html\r\nSec-Fetch-Mode: navigate\r\nConnection: close\r\n\r\n"
        );
        let answer = raw_exchange(&mut stream, &head).await;
        assert_eq!(status_of(&answer), 421, "SNI {sni}, Host {host}: {answer}");
    }
    let mut stream = raw_tls(&world, "sentry.internal", &[b"http/1.1"]).await;
    let head = format!(
        "GET /api/0/organizations/ HTTP/1.1\r\nHost: sentry.internal:{port}\r\nAuthorization: Bearer sntrys_abc\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(status_of(&raw_exchange(&mut stream, &head).await), 200);
}

// ---------------------------------------------------------------------------------
// 2. What the gateway tells Sentry: the client's address

#[tokio::test]
async fn the_client_address_is_the_first_untrusted_hop_from_the_right() {
    // The test client (127.0.0.1) is the trusted proxy; 10.0.0.0/8 are more proxies.
    let world = World::start_with(sentry_world_options(
        "trusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\"]",
        "",
    ))
    .await;
    let mut proxy = world.browser();
    let cases: &[(&[&str], &str)] = &[
        (&[], "127.0.0.1"),
        (&["198.51.100.4"], "198.51.100.4"),
        (&["6.6.6.6, 198.51.100.4"], "198.51.100.4"),
        (&["6.6.6.6", "198.51.100.4"], "198.51.100.4"),
        (&["6.6.6.6, 198.51.100.4, 10.1.2.3"], "198.51.100.4"),
        (
            &["127.0.0.1, 6.6.6.6, 198.51.100.4, 10.1.2.3, 10.4.5.6"],
            "198.51.100.4",
        ),
        (&["10.9.9.9"], "10.9.9.9"),
        (&["6.6.6.6, [2001:db8::7]:443"], "2001:db8::7"),
        (&["6.6.6.6, 198.51.100.4:5555"], "198.51.100.4"),
        (&["6.6.6.6, unknown"], "127.0.0.1"),
        (&["6.6.6.6, unknown, 10.1.2.3"], "10.1.2.3"),
    ];
    for (lines, client) in cases {
        let mut builder = proxy.request(Method::POST, "/api/1/envelope/");
        for line in lines.iter() {
            builder = builder.header("x-forwarded-for", *line);
        }
        let request = builder
            .header("x-real-ip", "6.6.6.6")
            .header("x_real_ip", "6.6.6.6")
            .header("x_forwarded_for", "6.6.6.6")
            .header("forwarded", "for=6.6.6.6;host=evil.example;proto=http")
            .header("x-forwarded-proto", "http")
            .header("x_forwarded_proto", "http")
            .header("x-forwarded-host", "evil.example")
            .header("true-client-ip", "6.6.6.6")
            .header("x-client-ip", "6.6.6.6")
            .body(support::browser::full("{}"))
            .unwrap();
        assert_eq!(proxy.send(request).await.status, StatusCode::OK);
        let seen = world.upstream.last();
        let all = |name: &str| -> Vec<String> {
            seen.headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect()
        };
        // Sentry (SENTRY_USE_X_FORWARDED_FOR) takes the first entry: it is the client.
        assert_eq!(
            all("x-forwarded-for"),
            [*client],
            "X-Forwarded-For {lines:?}"
        );
        assert_eq!(all("x-real-ip"), [*client], "X-Forwarded-For {lines:?}");
        assert_eq!(all("x-forwarded-proto"), ["https"]);
        assert_eq!(all("x-forwarded-host"), [public_host(&world)]);
        for gone in [
            "forwarded",
            "x_real_ip",
            "x_forwarded_for",
            "x_forwarded_proto",
            "true-client-ip",
            "x-client-ip",
        ] {
            assert!(
                all(gone).is_empty(),
                "{gone} reached the upstream: {:?}",
                all(gone)
            );
        }
    }

    // Without a trusted proxy in front, the peer is the client whatever it claims.
    let world = World::start_with(sentry_world_options("", "")).await;
    let mut client = world.browser();
    for spoof in [
        "x-forwarded-for",
        "X_Forwarded_For",
        "x-real-ip",
        "X_Real_IP",
        "forwarded",
    ] {
        envelope(&mut client, &[(spoof, "6.6.6.6")]).await;
        let seen = world.upstream.last();
        assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1", "{spoof}");
        assert_eq!(seen.headers["x-real-ip"], "127.0.0.1", "{spoof}");
        let leaked: Vec<_> = seen
            .headers
            .iter()
            .filter(|(_, value)| value.as_bytes().windows(7).any(|w| w == b"6.6.6.6"))
            .collect();
        assert!(leaked.is_empty(), "{spoof}: {leaked:?}");
    }
}

#[tokio::test]
async fn underscore_spellings_of_removed_headers_are_removed_too() {
    let world = World::start_with(sentry_world_options("", "")).await;
    let mut client = world.browser();
    let spellings = [
        ("x_forwarded_for", "6.6.6.6"),
        ("X_Forwarded_Host", "evil.example"),
        ("x_forwarded_proto", "http"),
        ("X_Real_IP", "6.6.6.6"),
        ("x_request_id", "chosen"),
        ("x_original_url", "/manage/"),
        ("Transfer_Encoding", "chunked"),
        ("keep_alive", "timeout=5"),
        ("Proxy_Authorization", "Basic eDp4"),
        ("proxy_connection", "close"),
    ];
    envelope(&mut client, &spellings).await;
    let seen = world.upstream.last();
    let underscored: Vec<&str> = seen
        .headers
        .keys()
        .map(|name| name.as_str())
        .filter(|name| name.contains('_'))
        .collect();
    assert!(underscored.is_empty(), "{underscored:?}");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_ne!(seen.headers["x-request-id"], "chosen");
}

#[tokio::test]
async fn metrics_are_never_direct_through_a_trusted_proxy() {
    let world = World::start_with(sentry_world_options(
        "trusted_proxies = [\"127.0.0.1\"]",
        "",
    ))
    .await;
    let mut proxy = world.browser();
    // The proxy adds no X-Forwarded-For (or the client's request came without one).
    assert_eq!(
        proxy.navigate("/metrics").await.status,
        StatusCode::NOT_FOUND
    );
    let with_header = proxy
        .request(Method::GET, "/metrics")
        .header("x-forwarded-for", "127.0.0.1")
        .body(empty())
        .unwrap();
    assert_eq!(proxy.send(with_header).await.status, StatusCode::NOT_FOUND);

    // A direct client from the metrics networks gets them; one that says it was
    // forwarded (in any spelling) does not.
    let world = World::start_with(sentry_world_options("", "")).await;
    let mut scraper = world.browser();
    assert_eq!(scraper.navigate("/metrics").await.status, StatusCode::OK);
    for name in ["X_Forwarded_For", "forwarded", "x-real-ip"] {
        let request = scraper
            .request(Method::GET, "/metrics")
            .header(name, "for=203.0.113.9")
            .body(empty())
            .unwrap();
        assert_eq!(
            scraper.send(request).await.status,
            StatusCode::NOT_FOUND,
            "{name}"
        );
    }
}

// ---------------------------------------------------------------------------------
// 3. The upstream's answers

/// An upstream that answers every request with `answer` (raw bytes), then closes.
async fn raw_upstream(answer: &'static str) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                // Read the request head (and a small body, if any).
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.shutdown().await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            });
        }
    });
    address
}

/// A world whose upstream answers `answer`; `session_keys` go in `[session]`.
async fn world_behind(answer: &'static str, session_keys: &str) -> World {
    let address = raw_upstream(answer).await;
    World::start_with(WorldOptions {
        upstream_url: Some(format!("http://{address}")),
        extra_toml: format!("{session_keys}\n[access]\npreset = \"sentry\"\n"),
        ..sentry_world_options("", "")
    })
    .await
}

const SETS_GATEWAY_COOKIES: &str = "HTTP/1.1 200 OK\r\n\
Set-Cookie: sentrysid=keep; Path=/; HttpOnly\r\n\
Set-Cookie: __Host-ssogate=planted; Path=/; Secure\r\n\
Set-Cookie: __Host-ssogate=; Max-Age=0; Path=/\r\n\
Set-Cookie: __HOST-SSOGATE=planted; Path=/\r\n\
Set-Cookie: =__Host-ssogate=planted\r\n\
Set-Cookie:  __Secure-ssogate_csrf_abc=x; Path=/oauth2/callback\r\n\
Set-Cookie: gw=planted; Path=/\r\n\
Set-Cookie: gw_csrf_abc=planted; Path=/\r\n\
Set-Cookie: sc=keep-too\r\n\
Content-Length: 2\r\n\
Connection: close\r\n\r\nok";

#[tokio::test]
async fn the_upstream_cannot_set_or_clear_the_gateways_cookies() {
    // The default cookie name, then one the config chose: only the configured
    // name and its login cookies go, in any case.
    let default_name_kept = ["gw=planted; Path=/", "gw_csrf_abc=planted; Path=/"];
    let chosen_name_kept = [
        "__Host-ssogate=planted; Path=/; Secure",
        "__Host-ssogate=; Max-Age=0; Path=/",
        "__HOST-SSOGATE=planted; Path=/",
        "=__Host-ssogate=planted",
        "__Secure-ssogate_csrf_abc=x; Path=/oauth2/callback",
    ];
    for (session_toml, kept) in [
        ("", &default_name_kept[..]),
        ("cookie_name = \"gw\"", &chosen_name_kept[..]),
    ] {
        let world = world_behind(SETS_GATEWAY_COOKIES, session_toml).await;
        let mut client = world.browser();
        for path in ["/api/1/envelope/", "/api/0/organizations/"] {
            let request = client
                .request(Method::POST, path)
                .header("authorization", "Bearer sntrys_abc")
                .body(support::browser::full("{}"))
                .unwrap();
            let answer = client.send(request).await;
            assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
            let mut expected = vec!["sentrysid=keep; Path=/; HttpOnly", "sc=keep-too"];
            expected.extend(kept);
            expected.sort_unstable();
            let mut got = answer.set_cookies();
            got.sort();
            assert_eq!(got, expected, "cookie_name from {session_toml:?}");
        }
    }
}

#[tokio::test]
async fn an_answer_framed_two_ways_loses_its_content_length() {
    let world = world_behind(
        "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        "",
    )
    .await;
    for http2 in [false, true] {
        let mut client = Browser::with_alpn(&world.ca_pem, &world.base, http2);
        let answer = envelope(&mut client, &[]).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body, "hello world", "http2: {http2}");
        assert!(
            answer
                .headers
                .get("content-length")
                .is_none_or(|length| length == "11"),
            "{answer:?}"
        );
    }
    // On the wire, HTTP/1.1: one framing only.
    let mut stream = raw_tls(&world, "127.0.0.1", &[]).await;
    let head = format!(
        "POST /api/1/envelope/ HTTP/1.1\r\nHost: {}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}",
        public_host(&world)
    );
    let answer = raw_exchange(&mut stream, &head).await.to_ascii_lowercase();
    let framings = ["content-length:", "transfer-encoding:"]
        .iter()
        .filter(|name| answer.contains(*name))
        .count();
    assert_eq!(framings, 1, "{answer}");
    assert!(
        answer.contains("hello") && answer.contains(" world"),
        "{answer}"
    );
}

#[tokio::test]
async fn front_server_instructions_from_the_upstream_never_reach_clients() {
    let world = world_behind(
        "HTTP/1.1 200 OK\r\n\
X-Accel-Redirect: /internal/secrets\r\n\
X-Accel-Buffering: no\r\n\
X-Accel-Charset: utf-8\r\n\
X-Accel-Expires: 0\r\n\
X-Accel-Limit-Rate: 1\r\n\
X_Accel_Redirect: /internal/secrets\r\n\
X-Sendfile: /etc/shadow\r\n\
x-sendfile: /etc/passwd\r\n\
X_Sendfile: /etc/passwd\r\n\
X-Lighttpd-Send-File: /etc/passwd\r\n\
X-Custom: kept\r\n\
Content-Length: 2\r\nConnection: close\r\n\r\nok",
        "",
    )
    .await;
    let mut client = world.browser();
    let answer = envelope(&mut client, &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.headers["x-custom"], "kept");
    let leaked: Vec<&str> = answer
        .headers
        .keys()
        .map(|name| name.as_str())
        .filter(|name| {
            name.contains("accel") || name.contains("sendfile") || name.contains("send-file")
        })
        .collect();
    assert!(leaked.is_empty(), "{leaked:?}");
}

#[tokio::test]
async fn a_switch_of_protocols_nobody_asked_for_is_a_502() {
    let world = world_behind(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nraw bytes of another protocol",
        "",
    )
    .await;
    let mut client = world.browser();
    let answer = envelope(&mut client, &[]).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{answer:?}");
    let page = client.navigate("/api/1/envelope/").await;
    assert_eq!(page.status, StatusCode::BAD_GATEWAY);
    let metrics = client.navigate("/metrics").await.body;
    assert!(
        metrics.contains("ssogate_upstream_failures_total{reason=\"unavailable\"} 2"),
        "{metrics}"
    );
}

// ---------------------------------------------------------------------------------
// 4. Logs

#[tokio::test]
async fn request_derived_text_is_escaped_in_every_log_line() {
    use ssogate::observe::logging::{LogFormat, subscriber};
    let hostile = [
        '\u{85}', '\u{9b}', '\u{80}', '\u{9f}', '\u{2028}', '\u{2029}', '\u{61c}', '\u{200e}',
        '\u{200f}', '\u{202a}', '\u{202e}', '\u{2066}', '\u{2069}',
    ];
    for format in [LogFormat::Text, LogFormat::Json] {
        let buffer = LogBuffer::default();
        // One serving thread on this test's thread: every log line of the gateway
        // goes to this subscriber.
        let _logging = tracing::subscriber::set_default(subscriber(format, false, buffer.clone()));
        let world = World::start_with(sentry_world_options("threads = 1", "")).await;
        let mut client = world.browser();
        for c in hostile {
            // Raw in the path (an access line), in a path refused as bad, in a host.
            for path in [format!("/x{c}y/{c}"), format!("/%2e%2e/{c}")] {
                let request = client
                    .request(Method::GET, &path)
                    .header("accept", "application/json")
                    .body(empty())
                    .unwrap();
                client.send(request).await;
            }
            let refused = client
                .request(Method::GET, "/api/0/")
                .header("host", format!("evil{c}.example"))
                .body(empty())
                .unwrap();
            client.try_send(refused).await;
        }
        world.gateway.shutdown().await;
        let logged = String::from_utf8(buffer.bytes()).unwrap();
        assert!(
            logged
                .lines()
                .filter(|l| l.contains("ssogate::access") || l.contains(" request "))
                .count()
                >= hostile.len(),
            "{format:?}: the access lines were written: {logged}"
        );
        for c in hostile {
            assert!(
                !logged.contains(c),
                "{format:?}: U+{:04X} written raw:\n{logged}",
                u32::from(c)
            );
        }
        if format == LogFormat::Json {
            for line in logged.lines() {
                serde_json::from_str::<serde_json::Value>(line)
                    .unwrap_or_else(|e| panic!("{e}: {line}"));
            }
            assert!(logged.contains("\\u0085"), "{logged}");
        } else {
            assert!(logged.contains("\\u{85}"), "{logged}");
        }
    }
}

// ---------------------------------------------------------------------------------
// 5. The callback (RFC 9207)

#[tokio::test]
async fn a_callback_without_the_providers_issuer_is_refused() {
    let world = World::start_with(sentry_world_options("", "")).await;
    let mut browser = world.browser();
    let callback = browser
        .login_until_callback("/", "alice", support::PASSWORD)
        .await;
    let url = url::Url::parse(&callback).unwrap();
    let params: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    assert!(
        params
            .iter()
            .any(|(n, v)| n == "iss" && *v == world.provider.issuer()),
        "the provider sends iss: {callback}"
    );
    let with_iss = |iss: &[&str]| {
        let mut url = url.clone();
        {
            let mut query = url.query_pairs_mut();
            query.clear();
            for (name, value) in params.iter().filter(|(n, _)| n != "iss") {
                query.append_pair(name, value);
            }
            for iss in iss {
                query.append_pair("iss", iss);
            }
        }
        url.to_string()
    };
    let issuer = world.provider.issuer();
    let refusals = [
        (with_iss(&[]), StatusCode::BAD_REQUEST),
        (with_iss(&["https://evil.example"]), StatusCode::BAD_REQUEST),
        (
            with_iss(&[format!("{issuer}/").as_str()]),
            StatusCode::BAD_REQUEST,
        ),
        (
            with_iss(&[issuer.to_uppercase().as_str()]),
            StatusCode::BAD_REQUEST,
        ),
        (with_iss(&[""]), StatusCode::BAD_REQUEST),
        (
            with_iss(&[&issuer, "https://evil.example"]),
            StatusCode::BAD_REQUEST,
        ),
        (with_iss(&[&issuer, &issuer]), StatusCode::BAD_REQUEST),
    ];
    for (target, status) in &refusals {
        let answer = browser.navigate(target).await;
        assert_eq!(answer.status, *status, "{target}: {answer:?}");
        assert!(
            !browser.cookies.contains_key(support::SESSION_COOKIE),
            "{target}"
        );
    }
    // An error answer without iss is refused the same way.
    let error = format!("{}/oauth2/callback?error=access_denied&state=x", world.base);
    assert_eq!(
        browser.navigate(&error).await.status,
        StatusCode::BAD_REQUEST
    );

    let metrics = browser.navigate("/metrics").await.body;
    assert!(
        metrics.contains("ssogate_logins_refused_total{reason=\"issuer_mismatch\"} 6"),
        "{metrics}"
    );
    // The untouched answer still signs in: the refusals used nothing up.
    let landed = browser.navigate(&with_iss(&[&issuer])).await;
    assert_eq!(landed.status, StatusCode::FOUND, "{landed:?}");
    assert!(browser.cookies.contains_key(support::SESSION_COOKIE));
}
