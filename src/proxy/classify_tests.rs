//! How a failed upstream exchange is classified (`caused_by`, `client_body_failed`,
//! `caused_by_timeout`), on real errors wrapped the way the pooled client wraps them:
//! the cause is found however deep it sits, and only that cause matches.

use std::error::Error;
use std::fmt;
use std::io;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;

use super::bodies::BodyIdle;
use super::{caused_by, caused_by_timeout, client_body_failed};

/// An error that names another as its source, like the client's and the pool's.
#[derive(Debug)]
struct Wrapped(Box<dyn Error + Send + Sync>);

impl fmt::Display for Wrapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("request failed")
    }
}

impl Error for Wrapped {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.0)
    }
}

fn wrapped(error: impl Into<Box<dyn Error + Send + Sync>>) -> Wrapped {
    Wrapped(Box::new(Wrapped(error.into())))
}

/// The error a body over its limit gives (what `Limited` makes of the client's body).
async fn too_long() -> Box<dyn Error + Send + Sync> {
    Limited::new(Full::new(Bytes::from_static(b"hello")), 2)
        .collect()
        .await
        .expect_err("over the limit")
}

/// The error hyper's client gives when the request body it sends fails.
async fn body_broke_off() -> hyper::Error {
    let (near, far) = tokio::io::duplex(64 * 1024);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(near))
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let frames: Vec<Result<Frame<Bytes>, io::Error>> = vec![
        Ok(Frame::data(Bytes::from_static(b"part"))),
        Err(io::Error::other("the client went away")),
    ];
    let request = http::Request::post("/")
        .header("content-length", "100")
        .body(StreamBody::new(futures_util::stream::iter(frames)))
        .unwrap();
    let error = sender.send_request(request).await.expect_err("body fails");
    drop(far);
    let _ = connection.await;
    error
}

/// The error hyper's client gives when the upstream answers with garbage.
async fn upstream_spoke_garbage() -> hyper::Error {
    use tokio::io::AsyncWriteExt;
    let (near, mut far) = tokio::io::duplex(64 * 1024);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(near))
        .await
        .unwrap();
    tokio::spawn(connection);
    far.write_all(b"NOT HTTP AT ALL\r\n\r\n").await.unwrap();
    let request = http::Request::get("/")
        .body(Full::new(Bytes::new()))
        .unwrap();
    sender.send_request(request).await.expect_err("garbage")
}

#[tokio::test]
async fn a_body_over_the_limit_is_found_under_the_wrappers() {
    let error = wrapped(too_long().await);
    assert!(caused_by::<LengthLimitError>(&error));
    assert!(!caused_by::<BodyIdle>(&error));
    assert!(!caused_by_timeout(&error));
    assert!(!client_body_failed(&error));
}

#[test]
fn an_idle_body_is_found_under_the_wrappers() {
    let error = wrapped(BodyIdle(std::time::Duration::from_secs(1)));
    assert!(caused_by::<BodyIdle>(&error));
    assert!(!caused_by::<LengthLimitError>(&error));
    assert!(!caused_by_timeout(&error));
}

#[test]
fn only_a_timed_out_io_error_is_a_timeout() {
    let timed_out = wrapped(io::Error::new(io::ErrorKind::TimedOut, "connect"));
    assert!(caused_by_timeout(&timed_out));
    assert!(!client_body_failed(&timed_out));
    let refused = wrapped(io::Error::new(io::ErrorKind::ConnectionRefused, "connect"));
    assert!(!caused_by_timeout(&refused));
    assert!(!caused_by::<LengthLimitError>(&refused));
}

#[tokio::test]
async fn a_failed_client_body_is_the_clients_fault_not_the_upstreams() {
    let broke_off = body_broke_off().await;
    assert!(broke_off.is_user(), "{broke_off:?}");
    assert!(client_body_failed(&wrapped(broke_off)));

    let garbage = upstream_spoke_garbage().await;
    assert!(!garbage.is_user(), "{garbage:?}");
    let garbage = wrapped(garbage);
    assert!(!client_body_failed(&garbage));
    assert!(!caused_by_timeout(&garbage));
}
