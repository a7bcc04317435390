//! Calls to the provider that strangers' requests can cause. While the provider's
//! metadata is not loaded (it was down when the gateway started), login starts and
//! back-channel logouts need it; they share the background retry's schedule, one
//! attempt at a time, so a flood of them cannot multiply discovery requests. Once the
//! provider is back, the metadata loads on that schedule and logins work.

use crate::support;

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::browser::{Browser, full};
use crate::support::{GatewayToml, PASSWORD, TestUpstream, user};
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use ssogate::devidp::{DevProvider, DevProviderConfig};
use ssogate::server::{self, RunningGateway};

/// A provider that is down: answers every request 503 and closes the connection,
/// counting discovery requests.
struct DownProvider {
    addr: SocketAddr,
    discovery_calls: Arc<AtomicUsize>,
    serving: tokio::task::JoinHandle<()>,
}

impl DownProvider {
    async fn start() -> DownProvider {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let discovery_calls = Arc::new(AtomicUsize::new(0));
        let calls = discovery_calls.clone();
        let serving = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let calls = calls.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: http::Request<_>| {
                        if request
                            .uri()
                            .path()
                            .ends_with("/.well-known/openid-configuration")
                        {
                            calls.fetch_add(1, Ordering::SeqCst);
                        }
                        let mut response = http::Response::new(Full::new(Bytes::new()));
                        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                        // No connection outlives the answer: when the provider comes
                        // back, nothing of this one answers for it.
                        response.headers_mut().insert(
                            http::header::CONNECTION,
                            http::HeaderValue::from_static("close"),
                        );
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        DownProvider {
            addr,
            discovery_calls,
            serving,
        }
    }

    fn discovery_calls(&self) -> usize {
        self.discovery_calls.load(Ordering::SeqCst)
    }
}

async fn gateway(issuer: &str) -> (RunningGateway, String) {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let upstream = TestUpstream::start().await;
    let settings = GatewayToml::new(&base, &format!("http://{}", upstream.addr), issuer)
        .server(&format!(
            "listen = \"{}\"\nshutdown_grace = \"1s\"",
            listener.local_addr().unwrap()
        ))
        .oidc("http_timeout = \"2s\"")
        .settings();
    let gateway = server::start_on(listener, settings, std::future::pending())
        .await
        .expect("gateway starts");
    (gateway, base)
}

/// A stranger's junk: a login start, or a back-channel logout with a junk token.
async fn junk(base: String, index: usize) {
    let mut browser = Browser::new("", &base);
    if index.is_multiple_of(2) {
        let start = browser.navigate("/oauth2/start?rd=%2F").await;
        assert_eq!(start.status, StatusCode::SERVICE_UNAVAILABLE, "{start:?}");
        assert!(start.body.contains("Sign-in unavailable"), "{}", start.body);
    } else {
        let request = browser
            .request(Method::POST, "/oauth2/backchannel-logout")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(full(format!("logout_token=junk.{index}.x")))
            .unwrap();
        let refused = browser.send(request).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{refused:?}");
    }
}

#[tokio::test]
async fn a_flood_while_the_provider_is_down_makes_few_discovery_calls_and_it_recovers() {
    let down = DownProvider::start().await;
    // The development provider's issuer, at the address where it will come back.
    let issuer = format!("http://{}/api/oidc", down.addr);
    let (_gateway, base) = gateway(&issuer).await;
    assert_eq!(down.discovery_calls(), 1, "the attempt at start");

    // 100 one after the other, then 100 at once.
    for index in 0..100 {
        junk(base.clone(), index).await;
    }
    let flood: Vec<_> = (100..200)
        .map(|index| tokio::spawn(junk(base.clone(), index)))
        .collect();
    for request in flood {
        request.await.unwrap();
    }
    // The schedule allows an attempt at start and one per pause (2, 4, 8, 16, 32 s
    // after each failure): at most 6 within a minute, whoever asks. Before requests
    // shared it, each of these 200 made its own.
    let calls = down.discovery_calls();
    println!("{calls} discovery calls for 200 requests while the provider is down");
    assert!(
        calls <= 6,
        "{calls} discovery calls for 200 requests while the provider is down"
    );

    // The provider comes back at the same address: the metadata loads on the
    // schedule, and logins work.
    down.serving.abort();
    let _ = down.serving.await;
    let provider = DevProvider::start(
        down.addr,
        DevProviderConfig::new(
            support::test_client(&base),
            vec![user(
                "alice",
                "alice@corp.example",
                true,
                &["sentry:member"],
            )],
        ),
    )
    .await
    .expect("the provider starts again at its address");
    assert_eq!(provider.issuer(), issuer);
    let mut browser = Browser::new("", &base);
    let mut ready = false;
    for _ in 0..600 {
        if browser.navigate("/ready").await.status == StatusCode::OK {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "the metadata did not load within a minute");
    let landed = browser.login("/", "alice", PASSWORD).await;
    assert_eq!(landed.status, StatusCode::OK, "{landed:?}");
}
