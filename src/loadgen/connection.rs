//! A closed-loop worker's own connection, rather than one taken from a pool: no pool
//! checkout and checkin, no URI-to-pool-key work, per request. HTTP/1.1 goes through
//! the bench's own client ([`super::http1`]); HTTP/2 through
//! `hyper::client::conn::http2`, whose connection I/O the worker does on its own task
//! while an exchange is under way, so a request and its answer wake one task, not two.
//!
//! The connection is made by the run's connector (TCP, and TLS on `https://`, counted
//! as the run's other connections are); when the target closes it, the worker makes
//! another.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tower::ServiceExt;

use super::http1::{Broken, Http1Connection};
use super::report::Outcome;

/// What the I/O future of a connection never gives: it stays pending once the
/// connection has closed.
enum Never {}

/// One open connection.
pub struct Connection(Kind);

enum Kind {
    Http1(Http1Connection),
    /// Where requests go in, and the future that does the connection's I/O (it ends
    /// when the connection closes, and then stays pending).
    Http2 {
        sender: http2::SendRequest<Full<Bytes>>,
        io: Pin<Box<dyn Future<Output = Never> + Send>>,
    },
}

/// How an exchange ended when it gave no answer.
pub struct Failed {
    pub outcome: Outcome,
    /// The request can go again on a new connection: it was idempotent, and this
    /// connection had carried a request before and broke before any byte of the answer
    /// (the target closed it, idle, just as the request went out).
    pub may_retry: bool,
}

impl Connection {
    /// Opens a connection to `target` with `connector`; HTTP/2 when `http2` (ALPN h2 on
    /// `https://`, prior knowledge on `http://`).
    pub async fn open<C>(connector: C, target: http::Uri, http2: bool) -> Result<Self, Outcome>
    where
        C: tower::Service<http::Uri> + Send,
        C::Response: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
        C::Future: Send,
    {
        let io = connector
            .oneshot(target)
            .await
            .map_err(|_| Outcome::ConnectFailed)?;
        if !http2 {
            return Ok(Connection(Kind::Http1(Http1Connection::new(Box::new(
                TokioIo::new(io),
            )))));
        }
        let (sender, connection) = http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|_| Outcome::ConnectFailed)?;
        Ok(Connection(Kind::Http2 {
            sender,
            io: Box::pin(async move {
                let _ = connection.await;
                std::future::pending::<Never>().await
            }),
        }))
    }

    /// Waits until the connection can take a request; false when it has closed (the
    /// target ended a keep-alive connection, say), and a new one is needed.
    pub async fn ready(&mut self) -> bool {
        match &mut self.0 {
            Kind::Http1(connection) => connection.ready(),
            Kind::Http2 { sender, io } => {
                tokio::select! {
                    biased;
                    ready = sender.ready() => ready.is_ok(),
                    never = io.as_mut() => match never {},
                }
            }
        }
    }

    /// Sends `request` and reads its answer's body to the end without keeping it.
    /// `answered` hears the status as soon as it is known. Ok with the answer's
    /// outcome, or how the exchange broke.
    pub async fn exchange(
        &mut self,
        request: &http::Request<Bytes>,
        answered: impl FnOnce(http::StatusCode),
    ) -> Result<Outcome, Failed> {
        let broken = |may_retry| Failed {
            outcome: Outcome::ConnectionBroken,
            may_retry,
        };
        match &mut self.0 {
            Kind::Http1(connection) => {
                let reused = connection.used();
                match connection.exchange(request, answered).await {
                    Ok(status) => Ok(Outcome::of_status(status)),
                    Err(Broken::BeforeAnswer) => {
                        Err(broken(reused && request.method().is_idempotent()))
                    }
                    Err(Broken::DuringAnswer | Broken::Malformed(_)) => Err(broken(false)),
                }
            }
            Kind::Http2 { sender, io } => {
                let mut sent = http::Request::new(Full::new(request.body().clone()));
                *sent.method_mut() = request.method().clone();
                *sent.uri_mut() = request.uri().clone();
                *sent.headers_mut() = request.headers().clone();
                let exchange = async {
                    let response = sender.send_request(sent).await.map_err(|_| broken(false))?;
                    answered(response.status());
                    let outcome = Outcome::of_status(response.status());
                    super::drain(response.into_body())
                        .await
                        .map_err(|_| broken(false))?;
                    Ok(outcome)
                };
                tokio::select! {
                    biased;
                    done = exchange => done,
                    never = io.as_mut() => match never {},
                }
            }
        }
    }
}
