//! Every payload of the open-redirect corpora (tests/data, see its README) through
//! `/oauth2/start?rd=` (with a real login, since the target is used at the callback)
//! and through the sign-out target: no answer may send the browser off-origin.

use std::sync::Arc;

use crate::support::{PASSWORD, World, WorldOptions};

const ALLOWED_HOST: &str = "www.whitelisteddomain.tld";

fn corpus(name: &str) -> Vec<String> {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .filter(|line| !line.starts_with("# "))
        .map(str::to_owned)
        .collect()
}

/// Where a browser would go for `location`, answered at `from`; `None` when it stays
/// on the gateway's origin or goes to an allowed host.
fn off_origin(world: &World, from: &str, location: &str, allowed: Option<&str>) -> Option<String> {
    let target = url::Url::parse(from).unwrap().join(location).ok()?;
    let base = url::Url::parse(&world.base).unwrap();
    let fine = target.origin() == base.origin()
        || (target.scheme() == "https" && target.host_str() == allowed);
    (!fine).then(|| target.to_string())
}

fn escaped(payload: &str) -> String {
    form_urlencoded::byte_serialize(payload.as_bytes()).collect()
}

async fn check_corpus(name: &str, allowed: Option<&'static str>) {
    let payloads = corpus(name);
    assert!(
        payloads.len() > 500,
        "{name} has {} payloads",
        payloads.len()
    );
    let server_toml = allowed.map_or(String::new(), |h| {
        format!("allowed_redirect_hosts = [\"{h}\"]")
    });
    let world = Arc::new(
        World::start_with(WorldOptions {
            server_toml,
            ..Default::default()
        })
        .await,
    );

    // Sign-out target, escaped and (where it forms a valid URI) verbatim.
    let mut browser = world.browser();
    let mut escapes = Vec::new();
    for payload in &payloads {
        for query in [format!("rd={}", escaped(payload)), format!("rd={payload}")] {
            let target = format!("{}/oauth2/sign_out?{query}", world.base);
            if target.parse::<http::Uri>().is_err() {
                continue; // a client cannot send this verbatim
            }
            let response = browser.navigate(&target).await;
            let location = response.location().expect("sign-out redirects");
            if let Some(place) = off_origin(&world, &target, location, allowed) {
                escapes.push(format!("sign_out {query:?} -> {place}"));
            }
        }
    }

    // Sign-in return target, through complete logins, several at a time.
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in payloads.chunks(payloads.len().div_ceil(8)) {
        let (world, chunk) = (world.clone(), chunk.to_vec());
        tasks.spawn(async move {
            let mut found = Vec::new();
            for payload in chunk {
                let mut browser = world.browser();
                let callback = browser
                    .login_until_callback(&payload, "alice", PASSWORD)
                    .await;
                let back = browser.navigate(&callback).await;
                assert_eq!(
                    back.status,
                    http::StatusCode::FOUND,
                    "{payload:?}: {back:?}"
                );
                let location = back.location().unwrap();
                if let Some(place) = off_origin(&world, &callback, location, allowed) {
                    found.push(format!("login rd={payload:?} -> {place}"));
                }
            }
            found
        });
    }
    while let Some(found) = tasks.join_next().await {
        escapes.extend(found.unwrap());
    }
    assert!(
        escapes.is_empty(),
        "{} payloads escaped:\n{}",
        escapes.len(),
        escapes.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_proxy_corpus_never_leaves_the_origin() {
    check_corpus("open-redirects-oauth2-proxy.txt", Some(ALLOWED_HOST)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mod_auth_openidc_corpus_never_leaves_the_origin() {
    check_corpus("open-redirects-mod_auth_openidc.txt", None).await;
}

#[tokio::test]
async fn an_allowed_host_is_honoured_exactly() {
    let world = World::start_with(WorldOptions {
        server_toml: format!("allowed_redirect_hosts = [\"{ALLOWED_HOST}\", \".corp.example\"]"),
        ..Default::default()
    })
    .await;
    let mut browser = world.browser();
    for (rd, expected) in [
        (
            format!("https://{ALLOWED_HOST}/x"),
            format!("https://{ALLOWED_HOST}/x"),
        ),
        (
            "https://docs.corp.example/".into(),
            "https://docs.corp.example/".into(),
        ),
        (
            "https://evilcorp.example/".into(),
            format!("{}/", world.base),
        ),
        (
            format!("https://{ALLOWED_HOST}.evil.example/"),
            format!("{}/", world.base),
        ),
    ] {
        let response = browser
            .navigate(&format!("/oauth2/sign_out?rd={}", escaped(&rd)))
            .await;
        assert_eq!(response.location(), Some(expected.as_str()), "{rd}");
    }
}
