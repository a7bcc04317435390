//! Changing the config and renewing the certificate without a restart: SIGHUP under
//! continuous load fails no request and signs nobody out, a renewed certificate file
//! is picked up by itself, and a broken config or certificate is refused while the
//! running one keeps serving.

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::Browser;
use crate::support::browser::full;
use crate::support::process::GatewayProcess;
use http::{Method, StatusCode};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use ssogate::server::tls::{LocalCertificate, local_certificate};

/// The leaf certificate a fresh TLS connection to `address` is shown, trusting `cas`.
async fn served_leaf(address: std::net::SocketAddr, cas: &[&str]) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("handshake with a trusted certificate");
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn leaf_of(certificate: &LocalCertificate) -> Vec<u8> {
    CertificateDer::from_pem_slice(certificate.cert_pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// Writes a new certificate and key the way certbot renews: new files renamed over
/// the old ones, the key first.
fn install(dir: &std::path::Path, certificate: &LocalCertificate) {
    for (name, text) in [
        ("key.pem", &certificate.key_pem),
        ("cert.pem", &certificate.cert_pem),
    ] {
        let staged = dir.join(format!("{name}.new"));
        std::fs::write(&staged, text).unwrap();
        std::fs::rename(&staged, dir.join(name)).unwrap();
    }
}

#[tokio::test]
async fn sighup_under_load_swaps_config_and_certificate_and_fails_no_request() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let gateway = GatewayProcess::start(&[], "", true).await;
    let renewed = local_certificate(&["127.0.0.1"]).unwrap();
    let both = [gateway.ca_pem.as_str(), renewed.ca_pem.as_str()];

    // A client sending requests throughout, over new and kept-alive connections.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = tokio::spawn({
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let ca = format!("{}{}", gateway.ca_pem, renewed.ca_pem);
        let base = gateway.base.clone();
        async move {
            let mut round = 0;
            while !stop.load(Ordering::Relaxed) {
                let mut sdk = Browser::new(&ca, &base);
                for _ in 0..5 {
                    let request = sdk
                        .request(Method::POST, &format!("/api/1/envelope/?n={round}"))
                        .body(full("{}"))
                        .unwrap();
                    match sdk.try_send(request).await {
                        Some(answer) if answer.status == StatusCode::OK => &ok,
                        _ => &failed,
                    }
                    .fetch_add(1, Ordering::Relaxed);
                    round += 1;
                }
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        served_leaf(gateway.addr, &both).await,
        leaf_of_pem(&gateway.dir)
    );

    assert!(
        gateway.upstream.last().headers.contains_key("x-request-id"),
        "requests reach the upstream"
    );

    // A renewed certificate and a changed config, one SIGHUP.
    install(gateway.dir.path(), &renewed);
    let config = std::fs::read_to_string(&gateway.config).unwrap();
    let changed = format!("{config}\n[identity_headers]\nuser = \"X-Remote-User\"\n");
    std::fs::write(&gateway.config, &changed).unwrap();
    gateway.signal("HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(served_leaf(gateway.addr, &both).await, leaf_of(&renewed));
    let mut alice = Browser::new(
        &format!("{}{}", gateway.ca_pem, renewed.ca_pem),
        &gateway.base,
    );
    let landed = alice.login("/", "alice", support::PASSWORD).await;
    assert_eq!(landed.status, StatusCode::OK, "{landed:?}");
    // (The load's requests reach the upstream meanwhile: pick alice's.)
    let seen = last_to(&gateway.upstream, "/");
    assert_eq!(
        seen.headers["x-remote-user"], "sub-alice",
        "the new header name applies"
    );
    assert!(!seen.headers.contains_key("x-forwarded-user"));

    // A broken renewal and a broken config: both refused, both running ones stay,
    // and alice stays signed in.
    std::fs::write(gateway.dir.path().join("cert.pem"), "not a certificate").unwrap();
    std::fs::write(
        &gateway.config,
        changed.replace("[upstream]", "[upstream]\nread_timeout = \"forever\""),
    )
    .unwrap();
    gateway.signal("HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(served_leaf(gateway.addr, &both).await, leaf_of(&renewed));
    let page = alice.navigate("/organizations/").await;
    assert_eq!(page.status, StatusCode::OK, "still signed in: {page:?}");
    assert_eq!(
        last_to(&gateway.upstream, "/organizations/").headers["x-remote-user"],
        "sub-alice"
    );

    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let output = gateway.output();
    assert!(output.contains("TLS certificate reloaded"), "{output}");
    assert!(output.contains("config reloaded"), "{output}");
    assert!(
        output.contains("config reload refused") && output.contains("upstream.read_timeout"),
        "{output}"
    );
    assert!(
        output.contains("TLS certificate reload refused") && output.contains("cert.pem"),
        "{output}"
    );
    assert!(ok.load(Ordering::Relaxed) > 20, "the load ran");
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no request failed");
}

/// The last request the upstream saw for exactly `path_and_query`.
fn last_to(upstream: &support::TestUpstream, path_and_query: &str) -> support::upstream::Seen {
    upstream
        .requests()
        .into_iter()
        .rev()
        .find(|seen| seen.path_and_query == path_and_query)
        .unwrap_or_else(|| panic!("no request for {path_and_query}"))
}

fn leaf_of_pem(dir: &tempfile::TempDir) -> Vec<u8> {
    CertificateDer::from_pem_file(dir.path().join("cert.pem"))
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn renewed_files_are_picked_up_without_a_signal() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let gateway = GatewayProcess::start(&[], "", true).await;
    let first = leaf_of_pem(&gateway.dir);
    let renewed = local_certificate(&["127.0.0.1"]).unwrap();
    let both = [gateway.ca_pem.as_str(), renewed.ca_pem.as_str()];

    // Broken first: the watcher refuses it and the first certificate stays.
    std::fs::write(
        gateway.dir.path().join("key.pem"),
        "-----BEGIN PRIVATE KEY-----\n",
    )
    .unwrap();
    tokio::time::sleep(ssogate::server::tls::WATCH_INTERVAL * 2).await;
    assert_eq!(served_leaf(gateway.addr, &both).await, first);

    install(gateway.dir.path(), &renewed);
    let mut served = first.clone();
    // Two watch intervals at most (one may see the new key beside the old certificate
    // and refuse the pair), with room for a machine busy with the rest of the suite.
    for _ in 0..75 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        served = served_leaf(gateway.addr, &both).await;
        if served != first {
            break;
        }
    }
    assert_eq!(
        served,
        leaf_of(&renewed),
        "the renewed certificate is served"
    );
    let output = gateway.output();
    assert!(output.contains("the certificate files changed"), "{output}");
}

#[tokio::test]
async fn a_reload_keeps_sessions_and_refuses_a_provider_that_cannot_be_reached() {
    let world = support::World::start().await;
    let mut alice = world.signed_in("alice").await;
    let running = world.gateway.gateway().settings().clone();

    let mut next = running.clone();
    next.identity_headers.user = Some(http::HeaderName::from_static("x-remote-user"));
    next.server.threads += 1;
    let restart_keys = world.gateway.reload(next.clone()).await.unwrap();
    assert_eq!(restart_keys, ["server.threads"]);
    assert_eq!(
        world.gateway.gateway().settings().server.threads,
        running.server.threads
    );
    assert_eq!(alice.navigate("/issues/").await.status, StatusCode::OK);
    assert_eq!(world.upstream.last().headers["x-remote-user"], "sub-alice");

    let mut unreachable = next.clone();
    unreachable.oidc.issuer = format!("http://{}/api/oidc", support::unused_address());
    let refused = world.gateway.reload(unreachable).await.unwrap_err();
    assert!(
        refused.to_string().contains("identity provider"),
        "{refused}"
    );
    assert_eq!(alice.navigate("/issues/").await.status, StatusCode::OK);
    assert_eq!(world.upstream.last().headers["x-remote-user"], "sub-alice");
    let metrics = world.gateway.gateway().metrics().render(0);
    assert!(
        metrics.contains("ssogate_reloads_total{outcome=\"applied\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ssogate_reloads_total{outcome=\"refused\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_reload_that_changes_the_groups_claim_signs_in_again_the_sessions_read_with_the_old_one()
{
    // Alice is a member by the `permissions` claim, not by `groups`.
    let mut alice = support::user("alice", "alice@corp.example", true, &["sentry:member"]);
    alice
        .claims
        .insert("groups".into(), serde_json::json!(["outsiders"]));
    let world = support::World::start_with(support::WorldOptions {
        extra_toml:
            "[access]\ngroups_claim = \"permissions\"\nrequired_groups = [\"sentry:member\"]\n"
                .into(),
        users: vec![alice],
        ..Default::default()
    })
    .await;
    let mut browser = world.signed_in("alice").await;
    assert_eq!(browser.navigate("/issues/").await.status, StatusCode::OK);

    let mut next = world.gateway.gateway().settings().clone();
    next.access.groups_claim = "groups".into();
    world.gateway.reload(next).await.unwrap();
    // Her session's groups came from `permissions`: it is not used any more, and a
    // fresh login reads `groups`, by which she is refused.
    let before = world.upstream.requests().len();
    let again = browser.navigate("/issues/").await;
    assert!(again.is_sent_to_sign_in(), "{again:?}");
    assert_eq!(
        world.upstream.requests().len(),
        before,
        "nothing reached the upstream"
    );
    let relogin = browser.login("/issues/", "alice", support::PASSWORD).await;
    assert_eq!(relogin.status, StatusCode::FORBIDDEN, "{relogin:?}");
}
