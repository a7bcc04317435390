//! Several gateway processes sharing sessions through a real `redis-server`, as
//! replicas behind a load balancer without sticky sessions: a login on one works on
//! the others, a sign-out or back-channel logout on one ends the session on all within
//! a second, one refresh for many requests spread over replicas, a Redis restart loses
//! nothing, and cookie secrets roll over replicas one at a time.

use std::time::{Duration, Instant};

use crate::support::browser::{Browser, empty};
use crate::support::replicas::{Cluster, ClusterOptions, SECRET_NEW, SECRET_OLD};
use crate::support::{PASSWORD, SESSION_COOKIE};
use http::{Method, StatusCode};

/// A local cache that, on its own, would keep a session for an hour: whatever ends a
/// session on every replica sooner is the pub/sub invalidation.
pub(crate) const LONG_LOCAL_CACHE: &str = "local_cache_ttl = \"1h\"";

/// A browser signed in as `username`; the login starts on replica `start` and its
/// callback comes back to the public address (replica 0), as with a load balancer.
pub(crate) async fn signed_in(cluster: &Cluster, start: usize, username: &str) -> Browser {
    let mut browser = cluster.browser(start);
    let callback = browser.login_until_callback("/", username, PASSWORD).await;
    assert!(
        callback.starts_with(&cluster.public_url),
        "the provider returns to the public address: {callback}"
    );
    let landed = browser.follow(&callback).await;
    assert_eq!(landed.status, StatusCode::OK, "{landed:?}");
    browser
}

/// An API request (`fetch`), which gets 401 rather than a redirect when signed out.
pub(crate) async fn api_status(browser: &mut Browser, path: &str) -> StatusCode {
    let request = browser
        .request(Method::GET, path)
        .header("accept", "application/json")
        .body(empty())
        .unwrap();
    browser.send(request).await.status
}

/// Whether replica `index` lets a login start (no 503).
pub(crate) async fn takes_logins(cluster: &Cluster, index: usize) -> bool {
    let start = cluster
        .browser(index)
        .navigate("/oauth2/start?rd=%2F")
        .await;
    start.status != StatusCode::SERVICE_UNAVAILABLE
}

/// `browser` gets 200 for an API request on every replica.
pub(crate) async fn works_on_every_replica(cluster: &Cluster, browser: &Browser, what: &str) {
    for index in [0, 1] {
        let mut tab = cluster.on(index, browser);
        let status = api_status(&mut tab, "/api/0/projects/").await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{what} (replica {index}); its log:\n{}",
            cluster.replicas[index].log()
        );
    }
}

/// Polls until both replicas let logins start again, at most `bound` after `since`;
/// returns how long after `since`, and whether they refused any. With `holding`, each
/// poll also checks what a Redis outage must not break: that person keeps working on
/// both replicas, and both stay ready.
pub(crate) async fn await_logins(
    cluster: &Cluster,
    since: Instant,
    bound: Duration,
    holding: Option<&Browser>,
) -> (Duration, bool) {
    let mut refused = false;
    loop {
        if let Some(person) = holding {
            works_on_every_replica(cluster, person, "a signed-in person meanwhile").await;
            for index in [0, 1] {
                let (status, body) = cluster.ready(index).await;
                assert_eq!(status, 200, "replica {index} meanwhile: {body}");
            }
        }
        if takes_logins(cluster, 0).await && takes_logins(cluster, 1).await {
            return (since.elapsed(), refused);
        }
        refused = true;
        assert!(
            since.elapsed() < bound,
            "logins still refused {bound:?} after; replica 0's log:\n{}",
            cluster.replicas[0].log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls replica `index` until `browser`'s session is refused there (at most 3 s);
/// returns how long that took.
pub(crate) async fn time_until_signed_out(
    cluster: &Cluster,
    index: usize,
    browser: &Browser,
) -> Duration {
    let started = Instant::now();
    let mut tab = cluster.on(index, browser);
    loop {
        let status = api_status(&mut tab, "/api/0/projects/").await;
        if status == StatusCode::UNAUTHORIZED {
            return started.elapsed();
        }
        assert_eq!(status, StatusCode::OK);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "replica {index} still accepts the session"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_on_one_replica_works_on_the_other() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let browser = signed_in(&cluster, 1, "alice").await;
    let mut on_b = cluster.on(1, &browser);
    let page = on_b.navigate("/issues/").await;
    assert_eq!(page.status, StatusCode::OK, "{page:?}");
    let seen = cluster.upstream.last();
    assert_eq!(seen.path_and_query, "/issues/");
    assert_eq!(seen.headers["x-forwarded-email"], "alice@corp.example");
    let me = on_b.navigate("/oauth2/userinfo").await;
    assert!(me.body.contains("alice@corp.example"), "{me:?}");

    let mut stranger = cluster.browser(1);
    stranger.cookies = browser.cookies.clone();
    let cookie = stranger.cookies.get(SESSION_COOKIE).unwrap().clone();
    let mut forged = cookie.into_bytes();
    let last = forged.len() - 2;
    forged[last] ^= 1;
    stranger
        .cookies
        .insert(SESSION_COOKIE.into(), String::from_utf8(forged).unwrap());
    assert_eq!(
        api_status(&mut stranger, "/api/0/").await,
        StatusCode::UNAUTHORIZED,
        "a tampered cookie is no session on any replica"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_starts_put_nothing_in_redis_and_finish_on_any_replica() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let before = cluster.redis.key_count();
    let rd = format!("/{}", "r".repeat(1990));
    for index in [0, 1] {
        let mut stranger = cluster.browser(index);
        for _ in 0..300 {
            let start = stranger.navigate(&format!("/oauth2/start?rd={rd}")).await;
            assert_eq!(start.status, StatusCode::FOUND, "{start:?}");
            stranger.cookies.clear();
        }
    }
    assert_eq!(
        cluster.redis.key_count(),
        before,
        "600 login starts with long return targets left nothing in Redis"
    );
    // A login started on one replica still finishes on the other, once.
    let browser = signed_in(&cluster, 1, "alice").await;
    assert!(browser.cookies.contains_key(SESSION_COOKIE));
    assert!(
        cluster.redis.key_count() > before,
        "the session (and its used state)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_travel_to_redis_over_tls_with_a_private_ca() {
    let cluster = Cluster::start(ClusterOptions {
        redis_tls: true,
        ..Default::default()
    })
    .await;
    let browser = signed_in(&cluster, 1, "alice").await;
    let mut on_b = cluster.on(1, &browser);
    assert_eq!(api_status(&mut on_b, "/api/0/").await, StatusCode::OK);
    let (status, _) = cluster.ready(0).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_out_on_one_replica_ends_the_session_on_the_other_within_a_second() {
    let cluster = Cluster::start(ClusterOptions {
        session_toml: LONG_LOCAL_CACHE.into(),
        ..Default::default()
    })
    .await;
    let browser = signed_in(&cluster, 0, "alice").await;
    let bob = signed_in(&cluster, 0, "bob").await;
    // Both replicas now hold the session in their local cache.
    for index in [0, 1] {
        let mut tab = cluster.on(index, &browser);
        assert_eq!(api_status(&mut tab, "/api/0/").await, StatusCode::OK);
    }
    let mut on_b = cluster.on(1, &browser);
    let signed_out = on_b.navigate("/oauth2/sign_out").await;
    assert_eq!(signed_out.status, StatusCode::FOUND);
    let took = time_until_signed_out(&cluster, 0, &browser).await;
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let mut bob_on_a = cluster.on(0, &bob);
    assert_eq!(
        api_status(&mut bob_on_a, "/api/0/").await,
        StatusCode::OK,
        "other sessions go on"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_channel_logout_at_one_replica_ends_the_sessions_on_every_replica() {
    let cluster = Cluster::start(ClusterOptions {
        session_toml: LONG_LOCAL_CACHE.into(),
        ..Default::default()
    })
    .await;
    back_channel_logouts_end_sessions_on_every_replica(&cluster).await;
}

/// Two logins of alice (two provider sessions): a logout token for one `sid` ends
/// that one on every replica, the other goes on; the token replayed is refused; one
/// for her `sub` ends the other.
pub(crate) async fn back_channel_logouts_end_sessions_on_every_replica(cluster: &Cluster) {
    let alice = signed_in(cluster, 0, "alice").await;
    let sid = cluster.provider.sid_of_last_login("alice").unwrap();
    let alice_again = signed_in(cluster, 1, "alice").await;
    for (index, browser) in [
        (0, &alice),
        (1, &alice),
        (0, &alice_again),
        (1, &alice_again),
    ] {
        let mut tab = cluster.on(index, browser);
        assert_eq!(api_status(&mut tab, "/api/0/").await, StatusCode::OK);
    }
    let token = cluster.provider.logout_token(Some("sub-alice"), Some(&sid));
    let mut provider = cluster.browser(0);
    assert_eq!(
        provider.post_logout_token(&token).await.status,
        StatusCode::OK
    );
    let took = time_until_signed_out(cluster, 1, &alice).await;
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let mut other = cluster.on(1, &alice_again);
    assert_eq!(
        api_status(&mut other, "/api/0/").await,
        StatusCode::OK,
        "another provider session (sid) of alice goes on"
    );
    let mut replay = cluster.browser(1);
    assert_eq!(
        replay.post_logout_token(&token).await.status,
        StatusCode::BAD_REQUEST,
        "the same token replayed at another replica is refused"
    );
    let by_sub = cluster.provider.logout_token(Some("sub-alice"), None);
    assert_eq!(
        replay.post_logout_token(&by_sub).await.status,
        StatusCode::OK
    );
    let took = time_until_signed_out(cluster, 0, &alice_again).await;
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

/// Issue 22 class 1: a logout token that arrives while Redis is down is refused with
/// an answer the provider may retry on, and the retry, once Redis is back, ends the
/// sessions (its `jti` was not taken by the failed attempt).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_back_channel_logout_retried_after_a_redis_outage_ends_the_sessions() {
    let mut cluster = Cluster::start(ClusterOptions::default()).await;
    let alice = signed_in(&cluster, 0, "alice").await;
    let token = cluster.provider.logout_token(Some("sub-alice"), None);
    cluster.redis.stop();
    let mut provider = cluster.browser(1);
    let refused = provider.post_logout_token(&token).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{refused:?}");
    assert!(
        refused.body.contains("temporarily_unavailable"),
        "{refused:?}"
    );
    cluster.redis.start_again();
    for index in [0, 1] {
        cluster.await_ready(index).await;
    }
    let retried = provider.post_logout_token(&token).await;
    assert_eq!(retried.status, StatusCode::OK, "{retried:?}");
    for index in [0, 1] {
        let mut tab = cluster.on(index, &alice);
        assert_eq!(
            api_status(&mut tab, "/api/0/").await,
            StatusCode::UNAUTHORIZED,
            "replica {index}"
        );
    }
    let replay = provider.post_logout_token(&token).await;
    assert_eq!(
        replay.status,
        StatusCode::BAD_REQUEST,
        "used once it worked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_requests_over_two_replicas_cause_one_refresh() {
    let cluster = Cluster::start(ClusterOptions {
        oidc_toml: "scopes = [\"openid\", \"email\", \"profile\", \"offline_access\"]".into(),
        access_token_ttl: Duration::from_secs(2),
        ..Default::default()
    })
    .await;
    let browser = signed_in(&cluster, 0, "alice").await;
    for index in [0, 1] {
        let mut tab = cluster.on(index, &browser);
        assert_eq!(api_status(&mut tab, "/api/0/").await, StatusCode::OK);
    }
    assert_eq!(cluster.provider.refresh_count(), 0);
    tokio::time::sleep(Duration::from_millis(2200)).await; // the access token expired
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..50 {
        let mut tab = cluster.on(i % 2, &browser);
        requests.spawn(async move { api_status(&mut tab, &format!("/api/0/issues/{i}/")).await });
    }
    while let Some(status) = requests.join_next().await {
        assert_eq!(status.unwrap(), StatusCode::OK);
    }
    assert_eq!(
        cluster.provider.refresh_count(),
        1,
        "one refresh for fifty requests on two replicas"
    );
    // The rotated refresh token went to Redis: the next refresh, on the other
    // replica, uses it (the provider refuses a reused one, ending the session).
    tokio::time::sleep(Duration::from_millis(2200)).await;
    for index in [1, 0, 1] {
        let mut tab = cluster.on(index, &browser);
        assert_eq!(api_status(&mut tab, "/api/0/").await, StatusCode::OK);
    }
    assert_eq!(cluster.provider.refresh_count(), 2);
}

/// Issue 18 with shared sessions: a permission removed at the provider, read by a
/// refresh on one replica, refuses the person on the other one too (which had the
/// session in its local cache for an hour); End Sessions long after login ends the
/// session on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demotions_and_ends_at_the_provider_reach_every_replica() {
    let cluster = Cluster::start(ClusterOptions {
        oidc_toml: "scopes = [\"openid\", \"email\", \"profile\", \"offline_access\"]".into(),
        session_toml: format!(
            "{LONG_LOCAL_CACHE}\n[access]\ngroups_claim = \"permissions\"\nrequired_groups = [\"sentry:member\"]"
        ),
        access_token_ttl: Duration::from_secs(2),
        ..Default::default()
    })
    .await;
    let alice = signed_in(&cluster, 0, "alice").await;
    for index in [0, 1] {
        let mut tab = cluster.on(index, &alice);
        assert_eq!(api_status(&mut tab, "/api/0/").await, StatusCode::OK);
    }
    cluster
        .provider
        .set_user_claim("alice", "permissions", serde_json::json!([]));
    tokio::time::sleep(Duration::from_millis(2200)).await; // a refresh is due
    let mut on_a = cluster.on(0, &alice);
    assert_eq!(
        api_status(&mut on_a, "/api/0/").await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(cluster.provider.refresh_count(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await; // the invalidation travels
    let mut on_b = cluster.on(1, &alice);
    assert_eq!(
        api_status(&mut on_b, "/api/0/").await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(cluster.provider.refresh_count(), 1, "B took A's result");

    // Given back, then ended at the provider several refreshes later.
    cluster
        .provider
        .set_user_claim("alice", "permissions", serde_json::json!(["sentry:member"]));
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let mut tab = cluster.on(round % 2, &alice);
        assert_eq!(
            api_status(&mut tab, "/api/0/").await,
            StatusCode::OK,
            "round {round}"
        );
    }
    assert!(cluster.provider.end_sessions("alice") > 0);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let mut on_a = cluster.on(0, &alice);
    assert_eq!(
        api_status(&mut on_a, "/api/0/").await,
        StatusCode::UNAUTHORIZED
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut on_b = cluster.on(1, &alice);
    assert_eq!(
        api_status(&mut on_b, "/api/0/").await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_loses_no_session_and_the_replicas_recover() {
    let mut cluster = Cluster::start(ClusterOptions {
        session_toml: LONG_LOCAL_CACHE.into(),
        ..Default::default()
    })
    .await;
    let alice = signed_in(&cluster, 0, "alice").await;
    let bob = signed_in(&cluster, 0, "bob").await;
    let mut alice_on_a = cluster.on(0, &alice);
    assert_eq!(api_status(&mut alice_on_a, "/api/0/").await, StatusCode::OK);

    cluster.redis.stop();
    // Replica A still has alice's session in its local cache and serves it.
    assert_eq!(api_status(&mut alice_on_a, "/api/0/").await, StatusCode::OK);
    // Replica B never saw alice: it cannot check her session, and says so (503, not
    // a 401 that would send her to a login that cannot work either).
    let mut alice_on_b = cluster.on(1, &alice);
    let answer = alice_on_b
        .send(
            alice_on_b
                .request(Method::GET, "/api/0/")
                .header("accept", "application/json")
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{answer:?}");
    assert!(answer.body.contains("session store"), "{answer:?}");
    // New logins get a clear 503; /ready says why.
    let mut newcomer = cluster.browser(1);
    let start = newcomer.navigate("/oauth2/start?rd=%2F").await;
    assert_eq!(start.status, StatusCode::SERVICE_UNAVAILABLE, "{start:?}");
    assert!(start.body.contains("session store"), "{start:?}");
    let (status, body) = cluster.ready(1).await;
    assert_eq!(status, 503);
    assert!(body.contains("Redis"), "{body}");
    // Bob signs out on A meanwhile: he is told it could not be done (not told he is
    // signed out while a restart of A could bring his session back), and his cookie
    // stays so that he can try again.
    let mut bob_on_a = cluster.on(0, &bob);
    let refused = bob_on_a.navigate("/oauth2/sign_out").await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{refused:?}"
    );
    assert!(refused.body.contains("not completed"), "{refused:?}");
    assert!(refused.set_cookies().is_empty(), "{refused:?}");

    cluster.redis.start_again();
    for index in [0, 1] {
        cluster.await_ready(index).await;
    }
    let signed_out = bob_on_a.navigate("/oauth2/sign_out").await;
    assert_eq!(signed_out.status, StatusCode::FOUND, "{signed_out:?}");
    for index in [0, 1] {
        cluster.await_ready(index).await;
    }
    for index in [0, 1] {
        let mut tab = cluster.on(index, &alice);
        assert_eq!(
            api_status(&mut tab, "/api/0/").await,
            StatusCode::OK,
            "alice's session survived the restart (replica {index})"
        );
        let mut tab = cluster.on(index, &bob);
        assert_eq!(
            api_status(&mut tab, "/api/0/").await,
            StatusCode::UNAUTHORIZED,
            "bob's sign-out once Redis was back holds on every replica (replica {index})"
        );
    }
    let carol = signed_in(&cluster, 1, "alice").await;
    let mut carol_on_b = cluster.on(1, &carol);
    assert_eq!(api_status(&mut carol_on_b, "/api/0/").await, StatusCode::OK);

    // Both replicas subscribed again after the reconnect: a sign-out on B still
    // reaches A's cache at once (alice's session is cached on both by now).
    let mut alice_on_b = cluster.on(1, &alice);
    assert_eq!(
        alice_on_b.navigate("/oauth2/sign_out").await.status,
        StatusCode::FOUND
    );
    let took = time_until_signed_out(&cluster, 0, &alice).await;
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_secrets_roll_over_without_signing_anyone_out() {
    // Replica 0 still has only the old secret, replica 1 has the new one first and
    // the old one after it, replica 2 has dropped the old one.
    let cluster = Cluster::start(ClusterOptions {
        secrets: vec![
            vec![SECRET_OLD],
            vec![SECRET_NEW, SECRET_OLD],
            vec![SECRET_NEW],
        ],
        ..Default::default()
    })
    .await;
    let old_cookie = signed_in(&cluster, 0, "alice").await;
    let mut tab = cluster.on(1, &old_cookie);
    assert_eq!(
        api_status(&mut tab, "/api/0/").await,
        StatusCode::OK,
        "a cookie sealed with the old secret opens where it is still listed"
    );
    let mut tab = cluster.on(2, &old_cookie);
    assert_eq!(
        api_status(&mut tab, "/api/0/").await,
        StatusCode::UNAUTHORIZED,
        "a removed secret opens nothing, though the session exists"
    );

    // A login completed on replica 1 gets a cookie sealed with the new secret.
    let mut browser = cluster.browser(1);
    let callback = browser.login_until_callback("/", "bob", PASSWORD).await;
    let on_b = callback.replace(&cluster.public_url, &cluster.replicas[1].base);
    let landed = browser.follow(&on_b).await;
    assert_eq!(landed.status, StatusCode::OK, "{landed:?}");
    let mut tab = cluster.on(2, &browser);
    assert_eq!(api_status(&mut tab, "/api/0/").await, StatusCode::OK);
    let mut tab = cluster.on(0, &browser);
    assert_eq!(
        api_status(&mut tab, "/api/0/").await,
        StatusCode::UNAUTHORIZED,
        "replica 0 does not know the new secret yet"
    );
}
