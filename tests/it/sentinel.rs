//! Two gateway processes sharing sessions through Redis Sentinel (real `redis-server`
//! master and replica, three `redis-server --sentinel`, all on loopback): the master
//! is killed with people signed in and requests running; the replicas keep serving
//! them from their local caches and stay ready; after the failover new logins and
//! refreshes work, a sign-out reaches the other replica, no session written before the
//! kill is lost; the old master comes back as a replica and everything keeps working.
//! `ssogate check` reports the topology. The same failover with everything speaking
//! TLS (certificates from a private CA).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http::StatusCode;

use crate::replicas::{
    LONG_LOCAL_CACHE, api_status, await_logins, signed_in, time_until_signed_out,
    works_on_every_replica,
};
use crate::support::browser::Browser;
use crate::support::replicas::{Cluster, ClusterOptions, MASTER_NAME};

/// How long after the kill the sentinels (`down-after-milliseconds 1000`) and the
/// gateways (health check every second) may take until logins work again.
const FAILOVER_BOUND: Duration = Duration::from_secs(15);

async fn sentinel_cluster() -> Cluster {
    Cluster::start(ClusterOptions {
        session_toml: LONG_LOCAL_CACHE.into(),
        sentinel: true,
        ..Default::default()
    })
    .await
}

/// Requests from `browser` on each replica, one after another, until `stop`: each
/// task gives how many it sent and the statuses other than 200 it got.
fn keep_requesting(
    cluster: &Cluster,
    browser: &Browser,
    stop: &Arc<AtomicBool>,
) -> tokio::task::JoinSet<(usize, Vec<StatusCode>)> {
    let mut load = tokio::task::JoinSet::new();
    for index in [0, 1] {
        let mut tab = cluster.on(index, browser);
        let stop = stop.clone();
        load.spawn(async move {
            let (mut sent, mut failed) = (0, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let status = api_status(&mut tab, &format!("/api/0/issues/{sent}/")).await;
                if status != StatusCode::OK {
                    failed.push(status);
                }
                sent += 1;
            }
            (sent, failed)
        });
    }
    load
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_fails_over_without_losing_sessions_or_sign_outs() {
    let mut cluster = sentinel_cluster().await;
    let alice = signed_in(&cluster, 0, "alice").await;
    let bob = signed_in(&cluster, 1, "bob").await;
    // Both replicas have both sessions in their local caches.
    works_on_every_replica(&cluster, &alice, "alice before the kill").await;
    works_on_every_replica(&cluster, &bob, "bob before the kill").await;
    // The guarantee needs the replica to have every write (config/OPERATIONS.md:
    // min-replicas-to-write, WAIT); here the test waits for it.
    assert_eq!(cluster.redis.replicas_in_sync(Duration::from_secs(5)), 1);

    let stop = Arc::new(AtomicBool::new(false));
    let mut load = keep_requesting(&cluster, &bob, &stop);
    tokio::time::sleep(Duration::from_millis(200)).await;
    cluster.redis.kill();
    let killed = Instant::now();
    // During the failover: signed-in people keep working on both replicas from the
    // local cache, and both replicas stay ready for the load balancer; until logins
    // work again on both.
    let (took, refused_logins) = await_logins(&cluster, killed, FAILOVER_BOUND, Some(&alice)).await;
    eprintln!("logins work again {took:?} after the kill");
    assert!(
        refused_logins,
        "the kill went unnoticed: the test tests nothing"
    );
    let setup = cluster.sentinel.as_ref().unwrap();
    assert_eq!(setup.replica.role(), "master", "the replica was promoted");
    stop.store(true, Ordering::Relaxed);
    while let Some(result) = load.join_next().await {
        let (sent, failed) = result.unwrap();
        assert!(sent > 10, "only {sent} requests ran through the failover");
        assert!(
            failed.is_empty(),
            "bob's requests during the failover: {failed:?}"
        );
    }

    // Nothing written before the kill is lost (the caches were emptied after the
    // outage, so these come from the new master).
    works_on_every_replica(&cluster, &alice, "alice after the failover").await;
    works_on_every_replica(&cluster, &bob, "bob after the failover").await;
    // A new login works, on either replica.
    let bob_again = signed_in(&cluster, 1, "bob").await;
    works_on_every_replica(&cluster, &bob_again, "a login after the failover").await;
    // A sign-out reaches the other replica: the subscription followed the master.
    let mut bob_on_a = cluster.on(0, &bob);
    let signed_out = bob_on_a.navigate("/oauth2/sign_out").await;
    assert_eq!(signed_out.status, StatusCode::FOUND, "{signed_out:?}");
    let took = time_until_signed_out(&cluster, 1, &bob).await;
    assert!(took < Duration::from_secs(1), "took {took:?}");

    // The old master comes back, and the sentinels make it a replica of the new one.
    cluster.redis.start_again();
    let back = Instant::now();
    while cluster.redis.role() != "slave" {
        assert!(
            back.elapsed() < FAILOVER_BOUND,
            "the old master did not become a replica"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for index in [0, 1] {
        cluster.await_ready(index).await;
    }
    let alice_again = signed_in(&cluster, 0, "alice").await;
    works_on_every_replica(&cluster, &alice_again, "a login with the old master back").await;
    works_on_every_replica(&cluster, &alice, "alice with the old master back").await;
    let mut tab = cluster.on(0, &bob);
    assert_eq!(
        api_status(&mut tab, "/api/0/").await,
        StatusCode::UNAUTHORIZED,
        "bob's sign-out holds"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshes_work_on_the_new_master() {
    let mut cluster = Cluster::start(ClusterOptions {
        oidc_toml: "scopes = [\"openid\", \"email\", \"profile\", \"offline_access\"]".into(),
        access_token_ttl: Duration::from_secs(2),
        sentinel: true,
        ..Default::default()
    })
    .await;
    let alice = signed_in(&cluster, 0, "alice").await;
    works_on_every_replica(&cluster, &alice, "alice before the kill").await;
    assert_eq!(cluster.redis.replicas_in_sync(Duration::from_secs(5)), 1);
    cluster.redis.kill();
    let took = await_logins(&cluster, Instant::now(), FAILOVER_BOUND, None)
        .await
        .0;
    eprintln!("logins work again {took:?} after the kill");
    tokio::time::sleep(Duration::from_millis(2200)).await; // the access token expired
    assert_eq!(cluster.provider.refresh_count(), 0);
    works_on_every_replica(&cluster, &alice, "alice's refresh through the new master").await;
    assert_eq!(
        cluster.provider.refresh_count(),
        1,
        "one refresh for both replicas"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_the_sentinel_topology_and_names_the_key_when_it_is_wrong() {
    let cluster = sentinel_cluster().await;
    let output = cluster.check_output(0).await;
    let master = format!(
        "OK   session store topology: sentinel: master {MASTER_NAME} at 127.0.0.1:{}, 1 replica(s), 3 sentinel(s) reachable",
        cluster.redis.port
    );
    assert!(output.contains(&master), "{output}");

    let config = cluster.config_path(0);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace(
            &format!("redis_master_name = \"{MASTER_NAME}\""),
            "redis_master_name = \"elsewhere\"",
        ),
    )
    .unwrap();
    let output = cluster.check_output(0).await;
    assert!(
        output.contains("FAIL session store topology:")
            && output.contains("no master named `elsewhere` (session.redis_master_name)"),
        "{output}"
    );

    let nobody = crate::support::unused_address();
    let text = std::fs::read_to_string(&config).unwrap();
    let listed = text
        .lines()
        .find(|line| line.starts_with("redis_sentinels"))
        .unwrap()
        .to_owned();
    std::fs::write(
        &config,
        text.replace(&listed, &format!("redis_sentinels = [\"{nobody}\"]")),
    )
    .unwrap();
    let output = cluster.check_output(0).await;
    assert!(
        output
            .contains("FAIL session store topology: no sentinel answers (session.redis_sentinels)")
            && output.contains(&nobody.to_string()),
        "{output}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_over_tls_with_a_private_ca() {
    let mut cluster = Cluster::start(ClusterOptions {
        session_toml: LONG_LOCAL_CACHE.into(),
        sentinel: true,
        redis_tls: true,
        ..Default::default()
    })
    .await;
    let alice = signed_in(&cluster, 0, "alice").await;
    let bob = signed_in(&cluster, 1, "bob").await;
    works_on_every_replica(&cluster, &alice, "alice before the kill").await;
    works_on_every_replica(&cluster, &bob, "bob before the kill").await;
    assert_eq!(
        cluster.redis.replicas_in_sync(Duration::from_secs(5)),
        1,
        "the replica replicates over TLS"
    );
    cluster.redis.kill();
    let took = await_logins(&cluster, Instant::now(), FAILOVER_BOUND, None)
        .await
        .0;
    eprintln!("logins work again {took:?} after the kill");
    // The sentinels (over TLS) named the replica (over TLS); the sessions are there.
    works_on_every_replica(&cluster, &alice, "alice after the failover").await;
    let mut bob_on_a = cluster.on(0, &bob);
    let signed_out = bob_on_a.navigate("/oauth2/sign_out").await;
    assert_eq!(signed_out.status, StatusCode::FOUND, "{signed_out:?}");
    let took = time_until_signed_out(&cluster, 1, &bob).await;
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let output = cluster.check_output(0).await;
    let promoted = cluster.sentinel.as_ref().unwrap().replica.port;
    assert!(
        output.contains("OK   session store: Redis ")
            && output.contains(&format!(
                "OK   session store topology: sentinel: master {MASTER_NAME} at 127.0.0.1:{promoted},"
            )),
        "{output}"
    );
}
