//! Sentry's real clients through the gateway: the Python `sentry-sdk` and the npm
//! `@sentry/cli` (installed by tests/install-peers.sh). Their traffic must pass with no
//! session when the Sentry preset is on, and be refused without it.

use crate::support::sentry_clients::{describe, send_event, sentry_cli};
use crate::support::{World, WorldOptions};

async fn world(preset: bool) -> World {
    World::start_with(WorldOptions {
        extra_toml: if preset {
            "[access]\npreset = \"sentry\"\n".into()
        } else {
            String::new()
        },
        ..Default::default()
    })
    .await
}

fn dsn(world: &World) -> String {
    format!(
        "https://publickey@{}/42",
        world.base.trim_start_matches("https://")
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn sentry_sdk_event_reaches_sentry_without_a_session() {
    let world = world(true).await;
    let (dsn, ca) = (dsn(&world), world.ca_pem.clone());
    let output = tokio::task::spawn_blocking(move || send_event(&dsn, Some(&ca)))
        .await
        .unwrap();
    assert!(output.status.success(), "{}", describe(&output));
    let envelope = world
        .upstream
        .requests()
        .into_iter()
        .find(|r| r.path_and_query.starts_with("/api/42/envelope/"))
        .expect("the envelope reached the upstream");
    assert_eq!(envelope.method, "POST");
    let auth = envelope.headers["x-sentry-auth"].to_str().unwrap();
    assert!(auth.contains("sentry_key=publickey"), "{auth}");
    assert_eq!(
        envelope.headers["content-encoding"], "gzip",
        "the body is passed on untouched"
    );
    assert!(!envelope.headers.contains_key("x-forwarded-user"));
}

#[tokio::test(flavor = "multi_thread")]
async fn sentry_sdk_is_refused_without_the_preset() {
    let world = world(false).await;
    let (dsn, ca) = (dsn(&world), world.ca_pem.clone());
    let output = tokio::task::spawn_blocking(move || send_event(&dsn, Some(&ca)))
        .await
        .unwrap();
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(world.upstream.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn sentry_cli_with_a_token_reaches_the_api_without_a_session() {
    let world = world(true).await;
    let (base, ca) = (world.base.clone(), world.ca_pem.clone());
    let output = tokio::task::spawn_blocking(move || {
        sentry_cli(&["info"], &base, "sntrys_ci_token", Some(&ca))
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", describe(&output));
    assert!(
        stdout.contains("User:") && stdout.contains("ci@corp.example"),
        "{stdout}"
    );
    let seen = world.upstream.last();
    assert_eq!(seen.path_and_query, "/api/0/");
    assert_eq!(seen.headers["authorization"], "Bearer sntrys_ci_token");
}

#[tokio::test(flavor = "multi_thread")]
async fn sentry_cli_gets_a_401_without_the_preset() {
    let world = world(false).await;
    let (base, ca) = (world.base.clone(), world.ca_pem.clone());
    let output = tokio::task::spawn_blocking(move || {
        sentry_cli(&["info"], &base, "sntrys_ci_token", Some(&ca))
    })
    .await
    .unwrap();
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(describe(&output).contains("401"), "{}", describe(&output));
    assert!(world.upstream.requests().is_empty());
}
