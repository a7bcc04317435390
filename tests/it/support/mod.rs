//! Test harness: an in-process identity provider (the crate's development provider,
//! which signs real RS256/ES256 tokens), a recording upstream, the gateway over real
//! TLS, and a cookie-keeping HTTP client that behaves like a browser without JavaScript.

pub mod browser;
pub mod config;
pub mod logs;
pub mod process;
pub mod replicas;
pub mod sentry_clients;
pub mod upstream;

use std::net::{Ipv4Addr, SocketAddr};

use ssogate::config::TlsSettings;
use ssogate::devidp::{DevClient, DevProvider, DevProviderConfig, DevUser, SigningAlg};
use ssogate::server::{self, RunningGateway, tls};

pub use browser::{Browser, TestResponse};
pub use config::GatewayToml;
pub use upstream::TestUpstream;

pub const PASSWORD: &str = "correct horse";
/// The session cookie's name: the default over https, which every test world uses.
pub const SESSION_COOKIE: &str = ssogate::config::HOST_COOKIE_NAME;
pub const CLIENT_ID: &str = "sentry-gateway";
pub const CLIENT_SECRET: &str = "test-client-secret";

/// The test worlds' user: alice, a verified Sentry member.
pub fn alice() -> DevUser {
    user("alice", "alice@corp.example", true, &["sentry:member"])
}

/// A user of the test provider with Encvoy ID's claim shapes.
pub fn user(username: &str, email: &str, verified: bool, permissions: &[&str]) -> DevUser {
    let claims = serde_json::json!({
        "sub": format!("sub-{username}"),
        "email": email,
        "email_verified": verified,
        "login": username,
        "name": format!("{username} Example"),
        "permissions": permissions,
    });
    DevUser {
        username: username.into(),
        password: PASSWORD.into(),
        claims: claims.as_object().unwrap().clone(),
    }
}

/// Everything one test needs, started.
pub struct World {
    pub provider: DevProvider,
    pub upstream: TestUpstream,
    pub gateway: RunningGateway,
    /// `https://127.0.0.1:<port>`
    pub base: String,
    /// PEM of the CA that issued the gateway's certificate.
    pub ca_pem: String,
}

/// How a test wants the world: extra TOML appended to the gateway config, the
/// provider's signing algorithm, and extra users.
pub struct WorldOptions {
    pub extra_toml: String,
    pub alg: SigningAlg,
    pub users: Vec<DevUser>,
    /// Forward somewhere other than the recording upstream.
    pub upstream_url: Option<String>,
    /// Extra keys for the `[server]` section.
    pub server_toml: String,
    /// Extra keys for the `[oidc]` section.
    pub oidc_toml: String,
    /// Extra keys for the `[upstream]` section.
    pub upstream_toml: String,
    /// Lifetime of the provider's access tokens.
    pub access_token_ttl: std::time::Duration,
}

impl Default for WorldOptions {
    fn default() -> Self {
        Self {
            extra_toml: String::new(),
            alg: SigningAlg::Rs256,
            users: vec![alice()],
            upstream_url: None,
            server_toml: String::new(),
            oidc_toml: String::new(),
            upstream_toml: String::new(),
            access_token_ttl: std::time::Duration::from_secs(1800),
        }
    }
}

/// A loopback address where nothing listens (a port the OS just handed out and
/// took back): for a free port to bind, or an upstream/provider that is down.
pub fn unused_address() -> SocketAddr {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The test client registered at the provider for a gateway at `public_url`: its
/// callback and its sign-in page as the post-logout target.
pub fn test_client(public_url: &str) -> DevClient {
    DevClient {
        client_id: CLIENT_ID.into(),
        client_secret: CLIENT_SECRET.into(),
        redirect_uris: vec![format!("{public_url}/oauth2/callback")],
        post_logout_redirect_uris: vec![format!("{public_url}/oauth2/sign_in")],
    }
}

/// A TLS connection to the gateway for speaking HTTP/1.1 by hand (no ALPN).
pub type RawTls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// An HTTP/2 client, and the task that runs its connection.
pub type H2Client = (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
);

/// HTTP/2 over a TLS connection already made (that chose `h2` by ALPN).
pub async fn h2_handshake(tls: RawTls, builder: &h2::client::Builder) -> H2Client {
    let (client, connection) = builder.handshake(tls).await.unwrap();
    (client, tokio::spawn(connection))
}

/// Sends `request` (no body) on `client` once it may open a stream, and waits (at
/// most 10 s) for the response head.
pub async fn h2_send(
    client: &mut h2::client::SendRequest<bytes::Bytes>,
    request: http::Request<()>,
) -> http::Response<h2::RecvStream> {
    *client = client.clone().ready().await.unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), response)
        .await
        .expect("response head within 10 s")
        .unwrap()
}

impl World {
    /// A [`RawTls`] connection, handshake done.
    pub async fn raw_tls(&self) -> RawTls {
        self.try_raw_tls()
            .await
            .expect("a TLS connection to the gateway")
    }

    /// A [`RawTls`] connection; `None` when the gateway closes it instead.
    pub async fn try_raw_tls(&self) -> Option<RawTls> {
        self.tls_offering(&[]).await
    }

    /// A TLS connection that offers the ALPN protocols `alpn` (none: HTTP/1.1).
    async fn tls_offering(&self, alpn: &[&[u8]]) -> Option<RawTls> {
        let mut config = browser::tls_trusting(&self.ca_pem);
        config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
        let tcp = tokio::net::TcpStream::connect(self.gateway.local_addr)
            .await
            .ok()?;
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(name, tcp)
            .await
            .ok()
    }

    /// An HTTP/2 client of the gateway (TLS, ALPN `h2`), and the task that runs its
    /// connection: it ends when the gateway closes the connection.
    pub async fn h2_client(&self) -> H2Client {
        self.h2_client_with(&h2::client::Builder::new()).await
    }

    /// [`World::h2_client`] with the client settings of `builder` (its initial window,
    /// say).
    pub async fn h2_client_with(&self, builder: &h2::client::Builder) -> H2Client {
        let tls = self
            .tls_offering(&[b"h2"])
            .await
            .expect("a TLS connection to the gateway");
        h2_handshake(tls, builder).await
    }

    /// Sends `GET path` (with `headers`) on `client` and returns the response head.
    pub async fn h2_get(
        &self,
        client: &mut h2::client::SendRequest<bytes::Bytes>,
        path: &str,
        headers: &[(&str, &str)],
    ) -> http::Response<h2::RecvStream> {
        let mut request = http::Request::get(format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        h2_send(client, request.body(()).unwrap()).await
    }

    pub async fn start() -> World {
        Self::start_with(WorldOptions::default()).await
    }

    pub async fn start_with(options: WorldOptions) -> World {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        // Bound now and handed to the gateway, so no other test can take the port
        // between choosing it and listening on it.
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let base = format!("https://127.0.0.1:{port}");
        let upstream = TestUpstream::start().await;
        let provider = DevProvider::start(
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            DevProviderConfig {
                signing_alg: options.alg,
                access_token_ttl: options.access_token_ttl,
                ..DevProviderConfig::new(test_client(&base), options.users)
            },
        )
        .await
        .expect("test provider starts");
        let upstream_url = options
            .upstream_url
            .unwrap_or_else(|| format!("http://{}", upstream.addr));
        let mut settings = GatewayToml::new(&base, &upstream_url, &provider.issuer())
            .server(&format!(
                "listen = \"127.0.0.1:{port}\"\nshutdown_grace = \"5s\""
            ))
            .server(&options.server_toml)
            .upstream("read_timeout = \"3s\"")
            .upstream(&options.upstream_toml)
            .oidc(&options.oidc_toml)
            .tables(&options.extra_toml)
            .settings();
        let certificate = tls::local_certificate(&["127.0.0.1"]).unwrap();
        settings.tls = TlsSettings::Pem {
            cert_pem: certificate.cert_pem,
            key_pem: certificate.key_pem,
        };
        let gateway = server::start_on(listener, settings, std::future::pending())
            .await
            .expect("gateway starts");
        World {
            provider,
            upstream,
            gateway,
            base,
            ca_pem: certificate.ca_pem,
        }
    }

    /// A fresh browser that trusts the gateway's CA.
    pub fn browser(&self) -> Browser {
        Browser::new(&self.ca_pem, &self.base)
    }

    /// A browser that has signed in as `username` (the landing page is not checked).
    pub async fn signed_in_without_landing(&self, username: &str) -> Browser {
        let mut browser = self.browser();
        let callback = browser.login_until_callback("/", username, PASSWORD).await;
        let back = browser.navigate(&callback).await;
        assert_eq!(
            back.status,
            http::StatusCode::FOUND,
            "callback should redirect: {back:?}"
        );
        browser
    }

    /// A browser that has signed in as `username` and landed on `/`.
    pub async fn signed_in(&self, username: &str) -> Browser {
        let mut browser = self.browser();
        let landed = browser.login("/", username, PASSWORD).await;
        assert_eq!(
            landed.status, 200,
            "login should land on the upstream: {landed:?}"
        );
        browser
    }
}
