//! Certificates from an ACME CA (`tls.acme_*`), against a real one: Debian's pebble,
//! with real challenge validation. pebble-challtestsrv is its DNS server and points
//! every name at 127.0.0.1, and pebble's validation connects to the gateway's own test
//! ports (its `tlsPort` and `httpPort`). Without pebble these tests say so and pass,
//! unless `CI` is set (then pebble must be there: tests/install-peers.sh installs it).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use ssogate::server::{self, RunningGateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::config::GatewayToml;
use crate::support::logs::LogBuffer;
use crate::support::replicas::RedisServer;
use crate::support::unused_address;

/// pebble and its DNS server, for one test.
struct Pebble {
    pebble: Child,
    dns: Child,
    /// `https://127.0.0.1:<port>/dir`
    directory: String,
    management: SocketAddr,
    /// The CA of pebble's own HTTPS (for `tls.acme_ca_file`).
    ca_file: PathBuf,
    client_roots: rustls::RootCertStore,
}

/// How pebble differs from the default.
#[derive(Default)]
struct PebbleOptions {
    /// Refuses accounts without an external account binding.
    binding_required: bool,
    /// The bindings it knows: key ID and HMAC key (base64url).
    binding_keys: Vec<(&'static str, &'static str)>,
}

/// Whether pebble is installed; false only outside CI (where it must be).
fn pebble_installed() -> bool {
    let found = Command::new("pebble")
        .arg("-h")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "pebble is not installed: these tests need Debian's pebble (`apt-get install pebble`; \
             tests/install-peers.sh installs it as root)"
        );
        eprintln!("SKIPPED: pebble is not installed (apt-get install pebble)");
    }
    found
}

impl Pebble {
    /// pebble validating on `tls_port` (TLS-ALPN-01) and `http_port` (HTTP-01), issuing
    /// certificates valid for `validity`, refusing `blocked.example.com`.
    async fn start(dir: &Path, tls_port: u16, http_port: u16, validity: Duration) -> Pebble {
        Self::start_with(dir, tls_port, http_port, validity, PebbleOptions::default()).await
    }

    /// [`Pebble::start`], with `options`.
    async fn start_with(
        dir: &Path,
        tls_port: u16,
        http_port: u16,
        validity: Duration,
        options: PebbleOptions,
    ) -> Pebble {
        let own = ssogate::server::tls::local_certificate(&["127.0.0.1"]).unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let ca_file = write("pebble-ca.pem", &own.ca_pem);
        let cert = write("pebble-cert.pem", &own.cert_pem);
        let key = write("pebble-key.pem", &own.key_pem);
        let listen = unused_address();
        let management = unused_address();
        let dns = unused_address();
        let dns_management = unused_address();
        let config = serde_json::json!({"pebble": {
            "listenAddress": listen.to_string(),
            "managementListenAddress": management.to_string(),
            "certificate": cert,
            "privateKey": key,
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": options.binding_required,
            "externalAccountMACKeys": options.binding_keys.iter().cloned().collect::<std::collections::HashMap<_, _>>(),
            "domainBlocklist": ["blocked.example.com"],
            "certificateValidityPeriod": validity.as_secs(),
        }});
        let config_file = write("pebble.json", &config.to_string());
        let log = |name: &str| Stdio::from(std::fs::File::create(dir.join(name)).unwrap());
        let dns_server = Command::new("pebble-challtestsrv")
            .args([
                "-dns01",
                &dns.to_string(),
                "-management",
                &dns_management.to_string(),
            ])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(log("challtestsrv.log"))
            .stderr(log("challtestsrv.err"))
            .spawn()
            .unwrap();
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(&config_file)
            .args(["-dnsserver", &dns.to_string()])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err"))
            .spawn()
            .unwrap();
        let mut client_roots = rustls::RootCertStore::empty();
        client_roots
            .add(CertificateDer::from_pem_slice(own.ca_pem.as_bytes()).unwrap())
            .unwrap();
        let started = Pebble {
            pebble,
            dns: dns_server,
            directory: format!("https://{listen}/dir"),
            management,
            ca_file,
            client_roots,
        };
        for address in [listen, management] {
            let mut tries = 0;
            while tokio::net::TcpStream::connect(address).await.is_err() {
                tries += 1;
                assert!(tries < 100, "pebble did not start: see {}", dir.display());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        started
    }

    /// pebble's root, which issues the certificates (its management `/roots/0`).
    async fn issuing_root(&self) -> CertificateDer<'static> {
        let mut tls = tls_connect(self.management, "127.0.0.1", self.client_roots.clone(), &[])
            .await
            .unwrap();
        tls.write_all(b"GET /roots/0 HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        tls.read_to_string(&mut answer).await.unwrap_or_default();
        let pem = &answer[answer.find("-----BEGIN").expect("a PEM root")..];
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    /// Stops the CA (as if unreachable).
    fn stop(&mut self) {
        let _ = self.pebble.kill();
        let _ = self.pebble.wait();
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
        let _ = self.dns.kill();
        let _ = self.dns.wait();
    }
}

/// A TLS connection to `address` for `name`, trusting `roots`, offering `alpn`.
async fn tls_connect(
    address: SocketAddr,
    name: &str,
    roots: rustls::RootCertStore,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let stream = tokio::net::TcpStream::connect(address).await?;
    connector
        .connect(ServerName::try_from(name.to_owned()).unwrap(), stream)
        .await
}

/// The gateway for `name` on `listener`, getting its certificate from `pebble`, with
/// extra `[server]` keys; and its config.
async fn gateway(
    listener: tokio::net::TcpListener,
    name: &str,
    pebble: &Pebble,
    state_dir: &Path,
    server_keys: &str,
) -> (RunningGateway, GatewayToml) {
    let toml = acme_toml(&listener, name, pebble, state_dir, server_keys);
    let running = server::start_on(listener, toml.settings(), std::future::pending())
        .await
        .unwrap();
    (running, toml)
}

/// The config of [`gateway`].
fn acme_toml(
    listener: &tokio::net::TcpListener,
    name: &str,
    pebble: &Pebble,
    state_dir: &Path,
    server_keys: &str,
) -> GatewayToml {
    let port = listener.local_addr().unwrap().port();
    GatewayToml::new(
        &format!("https://{name}:{port}"),
        &format!("http://{}", unused_address()),
        &format!("http://{}", unused_address()),
    )
    .server(&format!("threads = 1\n{server_keys}"))
    .tls(&format!(
        "acme_directory = \"{}\"\nacme_contact = \"ops@example.com\"\nacme_state_dir = \"{}\"\n\
         acme_accept_terms = true\nacme_ca_file = \"{}\"\n",
        pebble.directory,
        state_dir.display(),
        pebble.ca_file.display()
    ))
}

/// What `ssogate check` prints about the config `toml`.
fn check(toml: &GatewayToml) -> String {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ssogate.toml");
    std::fs::write(&config, toml.render()).unwrap();
    let output = crate::cli::ssogate()
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The leaf certificate the gateway presents now.
fn presented(gateway: &RunningGateway) -> Vec<u8> {
    let store = gateway.certificate.as_ref().expect("TLS is on");
    store.current().cert[0].as_ref().to_vec()
}

/// How many orders `gateway` counted with `outcome`.
fn order_count(gateway: &RunningGateway, outcome: &str) -> u64 {
    let line = orders(gateway, outcome);
    line.rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn orders(gateway: &RunningGateway, outcome: &str) -> String {
    let page = gateway.gateway().metrics().render(0);
    page.lines()
        .find(|line| {
            line.starts_with(&format!(
                "ssogate_acme_orders_total{{outcome=\"{outcome}\"}}"
            ))
        })
        .unwrap_or_default()
        .to_owned()
}

fn logging() -> (LogBuffer, tracing::subscriber::DefaultGuard) {
    use ssogate::observe::logging::{LogFormat, subscriber};
    let buffer = LogBuffer::default();
    let guard =
        tracing::subscriber::set_default(subscriber(LogFormat::Text, false, buffer.clone()));
    (buffer, guard)
}

#[tokio::test]
async fn tls_alpn_issuance_then_renewal_then_the_ca_down_keeps_the_certificate() {
    if !pebble_installed() {
        return;
    }
    let (log, _logging) = logging();
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    // Short certificates: renewal comes a third of the lifetime before the end.
    let mut pebble = Pebble::start(dir.path(), address.port(), 1, Duration::from_secs(12)).await;
    let name = "sentry.example.com";
    let (gateway, _) = gateway(listener, name, &pebble, state.path(), "").await;

    // First issuance, by TLS-ALPN-01 on the gateway's own listener.
    log.wait_for("ACME certificate issued", 1, Duration::from_secs(30))
        .await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pebble.issuing_root().await).unwrap();
    let verified = tls_connect(address, name, roots.clone(), &[b"http/1.1"])
        .await
        .expect("the gateway presents a certificate pebble issued for the name");
    let first = verified.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    assert_eq!(presented(&gateway), first);
    let text = log.text();
    assert!(text.contains("ACME account created"), "{text}");
    assert!(
        text.contains("ACME TLS-ALPN-01 challenge answered"),
        "{text}"
    );
    assert_eq!(
        orders(&gateway, "issued"),
        "ssogate_acme_orders_total{outcome=\"issued\"} 1"
    );
    for file in ["account.json", "privkey.pem", "fullchain.pem"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(state.path().join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }

    // Renewal: a new certificate, swapped in without a restart.
    log.wait_for("ACME certificate issued", 2, Duration::from_secs(30))
        .await;
    let renewed = presented(&gateway);
    assert_ne!(renewed, first);
    assert_eq!(
        orders(&gateway, "issued"),
        "ssogate_acme_orders_total{outcome=\"issued\"} 2"
    );

    // The CA unreachable at the next renewal: the order fails, and is said to; the
    // renewed certificate stays.
    pebble.stop();
    let text = log
        .wait_for(
            "ACME order failed; the current certificate stays",
            1,
            Duration::from_secs(30),
        )
        .await;
    assert!(text.contains("retry_in=60s"), "{text}");
    assert_eq!(presented(&gateway), renewed);
    assert_eq!(
        orders(&gateway, "failed"),
        "ssogate_acme_orders_total{outcome=\"failed\"} 1"
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn http01_on_the_plain_http_listener_when_there_is_one() {
    if !pebble_installed() {
        return;
    }
    let (log, _logging) = logging();
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let plain = unused_address();
    let pebble = Pebble::start(dir.path(), 1, plain.port(), Duration::from_secs(3600)).await;
    let name = "plain.example.com";
    let keys = format!("http_redirect_listen = \"{plain}\"");
    let (gateway, toml) = gateway(listener, name, &pebble, state.path(), &keys).await;
    let text = log
        .wait_for("ACME certificate issued", 1, Duration::from_secs(30))
        .await;
    assert!(text.contains("ACME HTTP-01 challenge answered"), "{text}");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pebble.issuing_root().await).unwrap();
    tls_connect(address, name, roots, &[b"h2"])
        .await
        .expect("the gateway presents a certificate pebble issued for the name");
    let report = check(&toml);
    let expected = format!(
        "OK   tls acme: plain.example.com from {}, state in {}\n     tls acme: account stored\nOK   tls acme: certificate expires ",
        pebble.directory,
        state.path().display()
    );
    assert!(report.contains(&expected), "{report}");
    assert!(
        report.contains("; the gateway renews it itself around "),
        "{report}"
    );
    assert!(!report.contains("FAIL tls"), "{report}");
    let issued = presented(&gateway);
    let in_use = log.text().matches("ACME certificate in use").count();
    gateway.shutdown().await;

    // A restart presents the stored certificate, and orders none.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (restarted, _) = self::gateway(listener, name, &pebble, state.path(), &keys).await;
    assert_eq!(presented(&restarted), issued);
    log.wait_for(
        "ACME certificate in use",
        in_use + 1,
        Duration::from_secs(10),
    )
    .await;
    let text = log.text();
    assert_eq!(
        text.matches("ACME: ordering a certificate").count(),
        1,
        "{text}"
    );
    restarted.shutdown().await;
}

#[tokio::test]
async fn a_refused_order_is_logged_and_the_gateway_keeps_serving() {
    if !pebble_installed() {
        return;
    }
    let (log, _logging) = logging();
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let pebble = Pebble::start(dir.path(), address.port(), 1, Duration::from_secs(3600)).await;
    let name = "blocked.example.com";
    let (gateway, toml) = gateway(listener, name, &pebble, state.path(), "").await;
    let text = log
        .wait_for(
            "ACME order failed; the current certificate stays",
            1,
            Duration::from_secs(30),
        )
        .await;
    let line = text
        .lines()
        .find(|line| line.contains("ACME order failed"))
        .unwrap();
    assert!(
        line.contains("ordering [\"blocked.example.com\"]"),
        "{line}"
    );
    assert!(line.contains("blocked"), "{line}");
    assert_eq!(
        orders(&gateway, "failed"),
        "ssogate_acme_orders_total{outcome=\"failed\"} 1"
    );
    // Still serving TLS, with the placeholder (not trusted, but presented).
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pebble.issuing_root().await).unwrap();
    let refused = tls_connect(address, name, roots, &[b"http/1.1"])
        .await
        .expect_err("the placeholder is not pebble's");
    assert!(
        refused.to_string().contains("invalid peer certificate"),
        "{refused}"
    );
    let report = check(&toml);
    assert!(
        report.contains(
            "     tls acme: no certificate yet: a self-signed placeholder is served until the first order succeeds"
        ),
        "{report}"
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_refused_account_is_logged_and_the_gateway_keeps_serving() {
    if !pebble_installed() {
        return;
    }
    let (log, _logging) = logging();
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    // A CA that takes only accounts bound to one it knows: ours is refused.
    let pebble = Pebble::start_with(
        dir.path(),
        address.port(),
        1,
        Duration::from_secs(3600),
        PebbleOptions {
            binding_required: true,
            ..PebbleOptions::default()
        },
    )
    .await;
    let (gateway, _) = gateway(listener, "sentry.example.com", &pebble, state.path(), "").await;
    let text = log
        .wait_for(
            "ACME order failed; the current certificate stays",
            1,
            Duration::from_secs(30),
        )
        .await;
    let line = text
        .lines()
        .find(|line| line.contains("ACME order failed"))
        .unwrap();
    assert!(
        line.contains(&format!("creating the account at {}", pebble.directory)),
        "{line}"
    );
    assert!(line.contains("externalAccountRequired"), "{line}");
    assert!(!state.path().join("account.json").exists());
    assert_eq!(
        orders(&gateway, "failed"),
        "ssogate_acme_orders_total{outcome=\"failed\"} 1"
    );
    assert!(gateway.certificate.as_ref().is_some());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pebble.issuing_root().await).unwrap();
    let refused = tls_connect(address, "sentry.example.com", roots, &[b"http/1.1"])
        .await
        .expect_err("the placeholder is not pebble's");
    assert!(
        refused.to_string().contains("invalid peer certificate"),
        "{refused}"
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn replicas_sharing_redis_order_once_and_serve_the_same_certificate() {
    if !pebble_installed() {
        return;
    }
    let (log, _logging) = logging();
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let mut listeners = Vec::new();
    for _ in 0..2 {
        listeners.push(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    // The CA validates on the first replica's port, whichever replica orders (as a
    // load balancer sends it to any): the challenge answers are shared too.
    let validated_at = listeners[0].local_addr().unwrap().port();
    let pebble = Pebble::start(dir.path(), validated_at, 1, Duration::from_secs(3600)).await;
    let name = "replicas.example.com";
    let session = format!("store = \"redis\"\nredis_url = \"{}\"", redis.url());
    // Both start without a certificate, at once.
    let mut replicas = Vec::new();
    for listener in listeners {
        let state = tempfile::tempdir().unwrap();
        let address = listener.local_addr().unwrap();
        let toml = acme_toml(&listener, name, &pebble, state.path(), "").session(&session);
        let running = server::start_on(listener, toml.settings(), std::future::pending())
            .await
            .unwrap();
        replicas.push((running, address, state));
    }
    log.wait_for("ACME certificate issued", 1, Duration::from_secs(30))
        .await;
    let text = log
        .wait_for(
            "ACME certificate shared by another replica installed",
            1,
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(
        text.matches("ACME: ordering a certificate").count(),
        1,
        "{text}"
    );
    let issued: u64 = replicas
        .iter()
        .map(|(gateway, ..)| order_count(gateway, "issued"))
        .sum();
    assert_eq!(issued, 1, "exactly one order at the CA");
    assert_eq!(
        text.matches("ACME account created").count(),
        1,
        "one account: {text}"
    );

    // Both present the one certificate pebble issued, trusted for the name.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pebble.issuing_root().await).unwrap();
    let mut served = Vec::new();
    for (gateway, address, state) in &replicas {
        let tls = tls_connect(*address, name, roots.clone(), &[b"http/1.1"])
            .await
            .expect("each replica presents a certificate pebble issued for the name");
        let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
        assert_eq!(presented(gateway), leaf);
        let stored = std::fs::read_to_string(state.path().join("fullchain.pem")).unwrap();
        let stored_leaf = CertificateDer::pem_slice_iter(stored.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(stored_leaf.as_ref(), leaf, "kept in each state directory");
        served.push(leaf);
    }
    assert_eq!(
        served[0], served[1],
        "the same certificate on both replicas"
    );

    // Redis holds the certificate and its key, but not readable.
    let shared = redis
        .value("ssogate:acme:certificate")
        .expect("the certificate is shared in Redis");
    for clear in [&b"PRIVATE KEY"[..], b"CERTIFICATE"] {
        assert!(!shared.windows(clear.len()).any(|w| w == clear));
    }
    assert!(redis.value("ssogate:acme:account").is_some());
    assert_eq!(
        redis.value("ssogate:acme:order"),
        None,
        "the lock is given back"
    );
    for (gateway, ..) in replicas {
        gateway.shutdown().await;
    }
}

#[tokio::test]
async fn a_reload_keeps_the_acme_certificate_and_its_one_renewal_task() {
    if !pebble_installed() {
        return;
    }
    let (log, _logging) = logging();
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    // Short certificates, so that renewals go on while the test watches.
    let pebble = Pebble::start(dir.path(), address.port(), 1, Duration::from_secs(12)).await;
    let name = "sentry.example.com";
    let (gateway, toml) = gateway(listener, name, &pebble, state.path(), "").await;
    log.wait_for("ACME certificate issued", 1, Duration::from_secs(30))
        .await;
    let issued = presented(&gateway);

    // What SIGHUP does, with the ACME names changed and another key too.
    let config = dir.path().join("ssogate.toml");
    let text = toml.upstream("read_timeout = \"7s\"").render().replace(
        "acme_accept_terms = true",
        "acme_accept_terms = true\nacme_names = [\"other.example.com\"]",
    );
    std::fs::write(&config, text).unwrap();
    gateway.reload_from_config(Some(&config)).await;
    let text = log.text();
    let line = text
        .lines()
        .find(|line| line.contains("config reloaded"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.contains("changes to these keys take effect at the next restart")
            && line.contains("\"tls\""),
        "{line}"
    );
    assert!(
        text.contains("TLS certificate kept: ACME renews it (tls.acme_*)"),
        "{text}"
    );
    assert!(!text.contains("TLS certificate reloaded"), "{text}");
    assert_eq!(
        gateway.gateway().settings().upstream.read_timeout,
        Duration::from_secs(7),
        "the other change applies"
    );
    assert_eq!(presented(&gateway), issued, "the certificate stays");

    // Renewal goes on, for the names it started with, from one task: each task logs
    // `ACME certificate in use` after each issuance, and a second one would log it
    // once more after the reload.
    log.wait_for("ACME certificate issued", 3, Duration::from_secs(40))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let text = log.text();
    let issuances = text.matches("ACME certificate issued").count();
    assert_eq!(
        text.matches("ACME certificate in use").count(),
        issuances,
        "{text}"
    );
    assert_eq!(
        text.matches("ACME: ordering a certificate").count(),
        issuances,
        "{text}"
    );
    assert_eq!(order_count(&gateway, "issued"), issuances as u64);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pebble.issuing_root().await).unwrap();
    let renewed = tls_connect(address, name, roots, &[b"http/1.1"])
        .await
        .expect("the renewed certificate is for the name the gateway started with");
    assert_ne!(
        renewed.get_ref().1.peer_certificates().unwrap()[0].as_ref(),
        issued
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn an_external_account_binding_gets_the_account_a_ca_requires_it_for() {
    if !pebble_installed() {
        return;
    }
    let (log, _logging) = logging();
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    // The key as CAs hand it out: base64url of the HMAC key.
    let hmac_key = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";
    let pebble = Pebble::start_with(
        dir.path(),
        address.port(),
        1,
        Duration::from_secs(3600),
        PebbleOptions {
            binding_required: true,
            binding_keys: vec![("kid-ssogate", hmac_key)],
        },
    )
    .await;
    let key_file = dir.path().join("eab.key");
    std::fs::write(&key_file, format!("{hmac_key}\n")).unwrap();
    let name = "sentry.example.com";
    let toml = acme_toml(&listener, name, &pebble, state.path(), "");
    let text = toml.render().replace(
        "acme_accept_terms = true",
        &format!(
            "acme_accept_terms = true\nacme_eab_kid = \"kid-ssogate\"\nacme_eab_hmac_key_file = \"{}\"",
            key_file.display()
        ),
    );
    let settings =
        ssogate::config::Settings::from_toml(&text, "(test)", std::iter::empty()).unwrap();
    let gateway = server::start_on(listener, settings, std::future::pending())
        .await
        .unwrap();
    let text = log
        .wait_for("ACME certificate issued", 1, Duration::from_secs(30))
        .await;
    assert!(text.contains("ACME account created"), "{text}");
    assert!(!text.contains("ACME order failed"), "{text}");
    assert!(!text.contains(hmac_key), "the HMAC key is never logged");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pebble.issuing_root().await).unwrap();
    tls_connect(address, name, roots, &[b"http/1.1"])
        .await
        .expect("the gateway presents a certificate pebble issued for the name");
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_replica_that_does_not_order_answers_the_tls_alpn_challenge_the_ca_sends_it() {
    a_replica_that_does_not_order_answers_the_challenge(false).await;
}

#[tokio::test]
async fn a_replica_that_does_not_order_answers_the_http01_challenge_the_ca_sends_it() {
    a_replica_that_does_not_order_answers_the_challenge(true).await;
}

/// Replica A gets its certificate alone, then shares Redis with replica B, which
/// orders while the CA validates on A (on its TLS listener, or with `http01` on its
/// plain-HTTP one).
async fn a_replica_that_does_not_order_answers_the_challenge(http01: bool) {
    if !pebble_installed() {
        return;
    }
    let (log, _logging) = logging();
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address_a = listener.local_addr().unwrap();
    let plain_a = unused_address();
    let (pebble, keys_a, keys_b, answered_line) = if http01 {
        (
            Pebble::start(dir.path(), 1, plain_a.port(), Duration::from_secs(3600)).await,
            format!("http_redirect_listen = \"{plain_a}\""),
            format!("http_redirect_listen = \"{}\"", unused_address()),
            "ACME HTTP-01 challenge answered",
        )
    } else {
        (
            Pebble::start(dir.path(), address_a.port(), 1, Duration::from_secs(3600)).await,
            String::new(),
            String::new(),
            "ACME TLS-ALPN-01 challenge answered",
        )
    };
    let name = "replicas.example.com";
    // Replica A, where the CA validates, got its certificate before, alone: it is not
    // due for renewal and orders nothing.
    let state_a = tempfile::tempdir().unwrap();
    let (alone, _) = gateway(listener, name, &pebble, state_a.path(), &keys_a).await;
    log.wait_for("ACME certificate issued", 1, Duration::from_secs(30))
        .await;
    alone.shutdown().await;
    let session = format!("store = \"redis\"\nredis_url = \"{}\"", redis.url());
    let listener = tokio::net::TcpListener::bind(address_a).await.unwrap();
    let toml = acme_toml(&listener, name, &pebble, state_a.path(), &keys_a).session(&session);
    let a = server::start_on(listener, toml.settings(), std::future::pending())
        .await
        .unwrap();
    let answered = log
        .wait_for("ACME certificate in use", 2, Duration::from_secs(10))
        .await
        .matches(answered_line)
        .count();

    // Replica B starts without a certificate, finds none shared, and orders; the CA's
    // validation reaches A, which answers from what B shared.
    let state_b = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address_b = listener.local_addr().unwrap();
    let toml = acme_toml(&listener, name, &pebble, state_b.path(), &keys_b).session(&session);
    let b = server::start_on(listener, toml.settings(), std::future::pending())
        .await
        .unwrap();
    let text = log
        .wait_for("ACME certificate issued", 2, Duration::from_secs(30))
        .await;
    assert!(!text.contains("ACME order failed"), "{text}");
    assert_eq!(
        text.matches("ACME: answering the challenge of another replica's order")
            .count(),
        1,
        "{text}"
    );
    assert!(
        text.matches(answered_line).count() > answered,
        "A answered B's challenge: {text}"
    );
    assert_eq!(order_count(&a, "issued"), 0);
    assert_eq!(order_count(&b, "issued"), 1);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pebble.issuing_root().await).unwrap();
    tls_connect(address_b, name, roots, &[b"http/1.1"])
        .await
        .expect("B presents the certificate it got");
    a.shutdown().await;
    b.shutdown().await;
}
