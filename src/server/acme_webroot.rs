//! HTTP-01 challenges (RFC 8555, section 8.3) on the plain-HTTP listener, answered
//! from the files certbot's webroot plugin writes (`server.acme_webroot`), so that
//! renewals work while every other request there is still redirected to HTTPS.
//!
//! Only a token of base64url characters is looked up, so a path can name no file
//! but one directly in `<webroot>/.well-known/acme-challenge/`.

use std::path::Path;

use http::{Response, StatusCode};
use tokio::io::AsyncReadExt;

use crate::body::{ResponseBody, boxed};
use crate::observe::Metrics;
use crate::pages;
use crate::problem::{Audience, Kind, Problem};

/// Where challenges are asked for, and where certbot writes them under the webroot.
pub const CHALLENGE_PATH: &str = "/.well-known/acme-challenge/";
/// A key authorisation is a token, a dot and a key thumbprint: about 90 bytes.
const MAX_ANSWER: u64 = 4096;
/// Tokens are 128 bits or more in base64url; this bounds what a path may ask for.
const MAX_TOKEN: usize = 256;

/// The token a challenge path asks for, or `None` when it names anything else.
fn token(path_after_prefix: &str) -> Option<&str> {
    let token = path_after_prefix;
    let base64url = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    (!token.is_empty() && token.len() <= MAX_TOKEN && token.bytes().all(base64url)).then_some(token)
}

/// The answer to `path` when it is a challenge path: the file's content (200), or
/// 404 when there is no such challenge. `None` for any other path.
pub async fn answer(
    webroot: &Path,
    path: &str,
    metrics: &Metrics,
) -> Option<Response<ResponseBody>> {
    let asked = path.strip_prefix(CHALLENGE_PATH)?;
    let not_found = || {
        Problem::new(Kind::NotFound, Audience::Probe, "No such ACME challenge\n").respond(metrics)
    };
    let Some(token) = token(asked) else {
        return Some(not_found());
    };
    let file = webroot.join(&CHALLENGE_PATH[1..]).join(token);
    match read_bounded(&file).await {
        Ok(content) => {
            tracing::info!(file = %file.display(), "ACME challenge answered");
            Some(pages::text(StatusCode::OK, content).map(boxed))
        }
        // Anyone may ask for a token that does not exist: no line for that, or each
        // stranger's request could write one.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(not_found()),
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "ACME challenge asked for, not answered");
            Some(not_found())
        }
    }
}

async fn read_bounded(file: &Path) -> std::io::Result<Vec<u8>> {
    let mut content = Vec::new();
    tokio::fs::File::open(file)
        .await?
        .take(MAX_ANSWER + 1)
        .read_to_end(&mut content)
        .await?;
    if content.len() as u64 > MAX_ANSWER {
        return Err(std::io::Error::other(
            "larger than a key authorisation can be",
        ));
    }
    Ok(content)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// [`answer`], counted in metrics of its own.
    async fn answer(webroot: &Path, path: &str) -> Option<Response<ResponseBody>> {
        super::answer(webroot, path, &Metrics::new()).await
    }

    #[test]
    fn only_base64url_tokens_are_looked_up() {
        assert_eq!(
            token("LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"),
            Some("LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0")
        );
        for hostile in [
            "",
            "..",
            "../etc/passwd",
            "a/b",
            "%2e%2e",
            "a.b",
            "a%2Fb",
            "a\\b",
            "ä",
            &"a".repeat(MAX_TOKEN + 1),
        ] {
            assert_eq!(token(hostile), None, "{hostile:?}");
        }
    }

    #[tokio::test]
    async fn a_challenge_file_is_served_and_nothing_beside_it() {
        let webroot = tempfile::tempdir().unwrap();
        let challenges = webroot.path().join(".well-known/acme-challenge");
        std::fs::create_dir_all(&challenges).unwrap();
        std::fs::write(challenges.join("tok-EN_1"), "tok-EN_1.thumbprint").unwrap();
        std::fs::write(challenges.join("big"), vec![b'a'; MAX_ANSWER as usize + 1]).unwrap();
        std::fs::write(webroot.path().join("secret"), "not for you").unwrap();

        let served = answer(webroot.path(), "/.well-known/acme-challenge/tok-EN_1")
            .await
            .unwrap();
        assert_eq!(served.status(), StatusCode::OK);
        let body = served.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"tok-EN_1.thumbprint");

        for refused in ["missing", "big", "..%2Fsecret", "../../secret", ""] {
            let path = format!("/.well-known/acme-challenge/{refused}");
            let response = answer(webroot.path(), &path).await.unwrap();
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"No such ACME challenge\n", "{path}");
        }
        assert!(answer(webroot.path(), "/secret").await.is_none());
    }

    #[tokio::test]
    async fn unknown_tokens_write_no_log_line_a_served_one_does() {
        use crate::observe::logging::{LogFormat, subscriber, tests::Buffer};
        use tracing::instrument::WithSubscriber;
        let webroot = tempfile::tempdir().unwrap();
        let challenges = webroot.path().join(".well-known/acme-challenge");
        std::fs::create_dir_all(&challenges).unwrap();
        std::fs::write(challenges.join("known"), "known.thumbprint").unwrap();
        let buffer = Buffer::default();
        let asking = async {
            // Other tests' subscribers come and go on other threads meanwhile; the
            // callsites' cached interest is made again with this one's registered, so
            // that a race between them cannot leave the served line switched off.
            tracing::callsite::rebuild_interest_cache();
            for n in 0..100 {
                let path = format!("/.well-known/acme-challenge/unknown{n}");
                let response = answer(webroot.path(), &path).await.unwrap();
                assert_eq!(response.status(), StatusCode::NOT_FOUND);
            }
            let served = answer(webroot.path(), "/.well-known/acme-challenge/known").await;
            assert_eq!(served.unwrap().status(), StatusCode::OK);
        };
        asking
            .with_subscriber(subscriber(LogFormat::Text, false, buffer.clone()))
            .await;
        let logged = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert_eq!(logged.lines().count(), 1, "{logged}");
        assert!(logged.contains("ACME challenge answered"), "{logged}");
        assert!(
            answer(webroot.path(), "/.well-known/acme-challengeX")
                .await
                .is_none()
        );
    }
}
