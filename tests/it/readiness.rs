//! `/ready` is open to anyone, so it says why the gateway is not ready (a Redis error
//! text, which part is down) only to the clients that may read its metrics, and a
//! flood of probes cannot make it open one upstream connection each.

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use crate::support::browser::empty;
use crate::support::{World, WorldOptions};
use http::{Method, StatusCode};

fn upstream_down() -> WorldOptions {
    WorldOptions {
        upstream_url: Some(format!("http://{}", support::unused_address())),
        ..Default::default()
    }
}

#[tokio::test]
async fn ready_says_why_only_to_the_metrics_networks() {
    let world = World::start_with(upstream_down()).await;
    let mut local = world.browser();
    let ready = local.navigate("/ready").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.body, "NOT READY: upstream unreachable\n");

    // Through a proxy: not a direct client, status only.
    let proxied = local
        .request(Method::GET, "/ready")
        .header("x-forwarded-for", "198.51.100.7")
        .body(empty())
        .unwrap();
    let ready = local.send(proxied).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.body, "NOT READY\n");

    // Loopback outside server.metrics_networks: status only.
    let world = World::start_with(WorldOptions {
        server_toml: "metrics_networks = [\"10.0.0.0/8\"]".into(),
        ..upstream_down()
    })
    .await;
    let ready = world.browser().navigate("/ready").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.body, "NOT READY\n");
}

#[tokio::test]
async fn a_flood_of_ready_probes_opens_few_upstream_connections() {
    // An upstream that counts the connections it accepts.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    let world = World::start_with(WorldOptions {
        upstream_url: Some(format!("http://{addr}")),
        ..Default::default()
    })
    .await;

    let began = Instant::now();
    let mut browser = world.browser();
    for _ in 0..100 {
        assert_eq!(browser.navigate("/ready").await.status, StatusCode::OK);
    }
    let probes: Vec<_> = (0..100)
        .map(|_| {
            let mut browser = world.browser();
            tokio::spawn(async move { browser.navigate("/ready").await.status })
        })
        .collect();
    for probe in probes {
        assert_eq!(probe.await.unwrap(), StatusCode::OK);
    }
    // One check per second at most (plus the one running when a second ends). Each
    // probe opened its own connection before.
    let seconds = began.elapsed().as_secs() as usize;
    let connections = accepted.load(Ordering::SeqCst);
    println!("{connections} upstream connections for 200 probes in {seconds} s");
    assert!(
        connections <= seconds + 2,
        "{connections} upstream connections for 200 probes in {seconds} s"
    );
}
