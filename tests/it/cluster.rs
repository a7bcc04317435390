//! Two gateway processes sharing sessions through a Redis Cluster (three real
//! `redis-server --cluster-enabled yes` masters on loopback, joined with `redis-cli
//! --cluster create`): sessions spread over the nodes; a sign-out on one replica
//! reaches the other; requests served from the local cache ask Redis nothing; the node
//! that carries the invalidation channel is killed and started again, and meanwhile
//! signed-in people keep working and both replicas stay ready; afterwards logins,
//! sessions from before and sign-outs work again; with a replica for each master, the
//! killed master's replica takes over and nothing is lost; back-channel logouts end the
//! sessions of a provider session. The commands a login, a refresh and
//! a sign-out send are counted (`INFO commandstats`; config/OPERATIONS.md lists them).
//! `ssogate check` reports the topology. Sessions travel over TLS to a cluster whose
//! nodes have certificates from a private CA.

use std::time::{Duration, Instant};

use http::StatusCode;

use crate::replicas::{
    LONG_LOCAL_CACHE, api_status, await_logins, back_channel_logouts_end_sessions_on_every_replica,
    signed_in, takes_logins, time_until_signed_out, works_on_every_replica,
};
use crate::support::browser::Browser;
use crate::support::replicas::{Cluster, ClusterOptions, RedisServer};

/// How long after a node's restart logins may take to work again (the cluster marks
/// the node up again, the gateways' health check runs every second).
const RECOVERY_BOUND: Duration = Duration::from_secs(15);
/// The keys of sessions (with the default `session.redis_key_prefix`).
const SESSION_KEYS: &str = "ssogate:s:*";
/// The invalidation channel, whose slot decides the node the replicas subscribe on.
const CHANNEL: &str = "ssogate:invalidate";

async fn redis_cluster() -> Cluster {
    Cluster::start(ClusterOptions {
        session_toml: LONG_LOCAL_CACHE.into(),
        redis_cluster: true,
        ..Default::default()
    })
    .await
}

fn nodes(cluster: &Cluster) -> Vec<&RedisServer> {
    cluster
        .redis_cluster
        .as_ref()
        .expect("a Redis Cluster")
        .nodes(&cluster.redis)
}

/// Data commands (GET, SET, PUBLISH...) all masters ran so far.
fn data_commands(cluster: &Cluster) -> u64 {
    nodes(cluster).iter().map(|node| node.data_commands()).sum()
}

/// After an outage: the sessions of `alice` and `bob`, written before it, are read
/// back on both replicas, a new login works, and a sign-out on either replica reaches
/// the other within a second (the invalidation subscriptions came back).
async fn recovered_without_loss(cluster: &Cluster, alice: &Browser, bob: &Browser, when: &str) {
    works_on_every_replica(cluster, alice, &format!("alice after {when}")).await;
    works_on_every_replica(cluster, bob, &format!("bob after {when}")).await;
    let carol = signed_in(cluster, 1, "alice").await;
    works_on_every_replica(cluster, &carol, &format!("a login after {when}")).await;
    for (index, browser) in [(0, bob), (1, &carol)] {
        let mut tab = cluster.on(index, browser);
        let signed_out = tab.navigate("/oauth2/sign_out").await;
        assert_eq!(signed_out.status, StatusCode::FOUND, "{signed_out:?}");
        let took = time_until_signed_out(cluster, 1 - index, browser).await;
        assert!(took < Duration::from_secs(1), "took {took:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_spread_over_the_nodes_and_sign_outs_reach_every_replica() {
    let cluster = redis_cluster().await;
    let mut people = Vec::new();
    for round in 0..6 {
        for (index, name) in [(0, "alice"), (1, "bob")] {
            let browser = signed_in(&cluster, (index + round) % 2, name).await;
            people.push(browser);
        }
    }
    let per_node: Vec<u64> = nodes(&cluster)
        .iter()
        .map(|node| node.keys_matching(SESSION_KEYS))
        .collect();
    eprintln!("sessions per node: {per_node:?}");
    assert_eq!(per_node.iter().sum::<u64>(), 12, "{per_node:?}");
    assert!(
        per_node.iter().filter(|count| **count > 0).count() >= 2,
        "12 sessions all on one node: {per_node:?}"
    );
    let bytes: u64 = nodes(&cluster)
        .iter()
        .map(|node| node.memory_of_keys(SESSION_KEYS))
        .sum();
    let all_bytes: u64 = nodes(&cluster)
        .iter()
        .map(|node| node.memory_of_keys("ssogate:*"))
        .sum();
    eprintln!(
        "a sealed session takes {} bytes in Redis (MEMORY USAGE), {} with the indexes and login states",
        bytes / 12,
        all_bytes / 12
    );

    // Every session works on both replicas; then, from the local caches, without
    // asking Redis anything.
    for browser in &people {
        works_on_every_replica(&cluster, browser, "a session on both replicas").await;
    }
    let before = data_commands(&cluster);
    for browser in &people {
        works_on_every_replica(&cluster, browser, "a cached session").await;
    }
    assert_eq!(
        data_commands(&cluster) - before,
        0,
        "cached requests asked Redis"
    );

    // A login: the login state's EXISTS and SET NX, then the two indexes' SADD and
    // PEXPIRE and the session's SET, one step per slot.
    let before = data_commands(&cluster);
    let carol = signed_in(&cluster, 0, "alice").await;
    let login = data_commands(&cluster) - before;
    // A sign-out: DEL, then PUBLISH.
    let before = data_commands(&cluster);
    let mut on_a = cluster.on(0, &carol);
    let signed_out = on_a.navigate("/oauth2/sign_out").await;
    assert_eq!(signed_out.status, StatusCode::FOUND, "{signed_out:?}");
    let sign_out = data_commands(&cluster) - before;
    eprintln!("data commands: a login {login}, a sign-out {sign_out}");
    assert_eq!((login, sign_out), (7, 2));

    // A sign-out on one replica ends the session on the other at once.
    let mut bob_on_a = cluster.on(0, &people[1]);
    let signed_out = bob_on_a.navigate("/oauth2/sign_out").await;
    assert_eq!(signed_out.status, StatusCode::FOUND, "{signed_out:?}");
    let took = time_until_signed_out(&cluster, 1, &people[1]).await;
    assert!(took < Duration::from_secs(1), "took {took:?}");
    works_on_every_replica(&cluster, &people[3], "bob's other session").await;
}

/// Master `index` (0 is [`Cluster::redis`]), to stop or start.
fn node_mut(cluster: &mut Cluster, index: usize) -> &mut RedisServer {
    match index {
        0 => &mut cluster.redis,
        _ => &mut cluster.redis_cluster.as_mut().unwrap().others[index - 1],
    }
}

/// The `sid` and `sub` indexes live in different slots: the sessions of a provider
/// session are found without `SINTER`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_channel_logouts_end_the_sessions_of_a_provider_session() {
    let cluster = redis_cluster().await;
    back_channel_logouts_end_sessions_on_every_replica(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restart_is_survived_with_sessions_and_sign_outs() {
    let mut cluster = redis_cluster().await;
    let alice = signed_in(&cluster, 0, "alice").await;
    let bob = signed_in(&cluster, 1, "bob").await;
    works_on_every_replica(&cluster, &alice, "alice before the kill").await;
    works_on_every_replica(&cluster, &bob, "bob before the kill").await;
    // Let the append-only files take every write (fsync every second).
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // The node that carries the invalidation channel: the replicas' subscriptions
    // must come back with it.
    let carrier = nodes(&cluster)
        .iter()
        .position(|node| node.owns(CHANNEL))
        .expect("a node owns the channel's slot");
    node_mut(&mut cluster, carrier).kill();
    let killed = Instant::now();
    let mut refused_logins = false;
    // Down for three seconds: the cluster marks it failed (cluster-node-timeout 1 s).
    while killed.elapsed() < Duration::from_secs(3) {
        works_on_every_replica(&cluster, &alice, "alice with a node down").await;
        works_on_every_replica(&cluster, &bob, "bob with a node down").await;
        for index in [0, 1] {
            let (status, body) = cluster.ready(index).await;
            assert_eq!(status, 200, "replica {index} with a node down: {body}");
        }
        refused_logins |= !takes_logins(&cluster, 0).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        refused_logins,
        "the kill went unnoticed: the test tests nothing"
    );

    node_mut(&mut cluster, carrier).start_again();
    let restarted = Instant::now();
    let (took, _) = await_logins(&cluster, restarted, RECOVERY_BOUND, None).await;
    eprintln!("logins work again {took:?} after the restart");

    // Nothing written before the kill is lost (the caches were emptied after the
    // outage, so these come from Redis), a new login works, and a sign-out reaches
    // the other replica: the subscriptions came back with the node.
    recovered_without_loss(&cluster, &alice, &bob, "the restart").await;
    works_on_every_replica(&cluster, &alice, "alice after the sign-outs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_fails_over_to_its_replica_without_losing_sessions_or_sign_outs() {
    let mut cluster = Cluster::start(ClusterOptions {
        session_toml: LONG_LOCAL_CACHE.into(),
        redis_cluster: true,
        redis_cluster_replicas: true,
        ..Default::default()
    })
    .await;
    let alice = signed_in(&cluster, 0, "alice").await;
    let bob = signed_in(&cluster, 1, "bob").await;
    works_on_every_replica(&cluster, &alice, "alice before the kill").await;
    works_on_every_replica(&cluster, &bob, "bob before the kill").await;
    let carrier = nodes(&cluster)
        .iter()
        .position(|node| node.owns(CHANNEL))
        .expect("a master owns the channel's slot");
    for master in nodes(&cluster)
        .iter()
        .filter(|node| node.role() == "master")
    {
        assert_eq!(master.replicas_in_sync(Duration::from_secs(5)), 1);
    }
    node_mut(&mut cluster, carrier).kill();
    let killed = Instant::now();
    let (took, refused_logins) = await_logins(&cluster, killed, RECOVERY_BOUND, Some(&alice)).await;
    eprintln!("logins work again {took:?} after the kill");
    assert!(
        refused_logins,
        "the kill went unnoticed: the test tests nothing"
    );
    // The sessions written before are read from the promoted replicas, a new login
    // works, and sign-outs reach the other replica: the subscriptions moved to the
    // promoted node.
    recovered_without_loss(&cluster, &alice, &bob, "the failover").await;
    let output = cluster.check_output(0).await;
    assert!(
        output.contains(
            "OK   session store topology: cluster: state ok, 6 node(s): 3 master(s) serving slots, 2 replica(s), 1 failing"
        ),
        "{output}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_refresh_serves_both_replicas_in_six_round_trips() {
    let cluster = Cluster::start(ClusterOptions {
        oidc_toml: "scopes = [\"openid\", \"email\", \"profile\", \"offline_access\"]".into(),
        access_token_ttl: Duration::from_secs(2),
        redis_cluster: true,
        ..Default::default()
    })
    .await;
    let alice = signed_in(&cluster, 0, "alice").await;
    works_on_every_replica(&cluster, &alice, "alice before the refresh").await;
    // Two refreshes: the first loads the release script into the cluster.
    let mut refreshes = Vec::new();
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(2200)).await; // the access token expired
        let before = data_commands(&cluster);
        let mut tab = cluster.on(0, &alice);
        assert_eq!(api_status(&mut tab, "/api/0/").await, StatusCode::OK);
        refreshes.push(data_commands(&cluster) - before);
    }
    assert_eq!(cluster.provider.refresh_count(), 2);
    eprintln!("data commands: refreshes {refreshes:?}");
    // Six round trips: take the lease (SET NX), read what is stored (GET, PEXPIRE),
    // save (SET XX), publish, give the lease back (EVALSHA, whose script's GET and DEL
    // Redis counts too).
    assert_eq!(refreshes[1], 8);
    works_on_every_replica(&cluster, &alice, "alice after the refresh").await;
    assert_eq!(
        cluster.provider.refresh_count(),
        2,
        "one refresh per expiry for both replicas"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_the_cluster_topology_and_names_the_key_when_it_is_unreachable() {
    let cluster = redis_cluster().await;
    let output = cluster.check_output(0).await;
    assert!(
        output.contains(
            "OK   session store topology: cluster: state ok, 3 node(s): 3 master(s) serving slots, 0 replica(s), 0 failing"
        ),
        "{output}"
    );

    let config = cluster.config_path(0);
    let text = std::fs::read_to_string(&config).unwrap();
    let listed = text
        .lines()
        .find(|line| line.starts_with("redis_cluster_nodes"))
        .unwrap()
        .to_owned();
    let nobody = crate::support::unused_address();
    std::fs::write(
        &config,
        text.replace(
            &listed,
            &format!("redis_cluster_nodes = [\"redis://{nobody}\"]"),
        ),
    )
    .unwrap();
    let output = cluster.check_output(0).await;
    assert!(
        output.contains("FAIL session store topology:")
            && output.contains("(session.redis_cluster_nodes)"),
        "{output}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_travel_over_tls_to_every_node() {
    let cluster = Cluster::start(ClusterOptions {
        session_toml: LONG_LOCAL_CACHE.into(),
        redis_cluster: true,
        redis_tls: true,
        ..Default::default()
    })
    .await;
    // Ready means every master answered over TLS (the health check asks each).
    let mut people = Vec::new();
    for (index, name) in [(0, "alice"), (1, "bob"), (1, "alice"), (0, "bob")] {
        people.push(signed_in(&cluster, index, name).await);
    }
    for browser in &people {
        works_on_every_replica(&cluster, browser, "a session over TLS").await;
    }
    let mut on_a = cluster.on(0, &people[1]);
    let signed_out = on_a.navigate("/oauth2/sign_out").await;
    assert_eq!(signed_out.status, StatusCode::FOUND, "{signed_out:?}");
    let took = time_until_signed_out(&cluster, 1, &people[1]).await;
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let output = cluster.check_output(0).await;
    assert!(
        output.contains("OK   session store: Redis ")
            && output.contains(&format!(" at rediss://127.0.0.1:{}\n", cluster.redis.port))
            && output.contains("OK   session store topology: cluster: state ok, 3 node(s)"),
        "{output}"
    );
}
