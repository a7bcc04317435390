//! A closed-loop worker's own connection, made with hyper's connection API
//! (`hyper::client::conn::http1` or `http2`) rather than taken from a pool: no pool
//! checkout and checkin, no URI-to-pool-key work, per request. The worker does the
//! connection's I/O on its own task while an exchange is under way
//! ([`Connection::exchange`]), so a request and its answer wake one task, not two.
//!
//! The connection is made by the run's connector (TCP, and TLS on `https://`, counted
//! as the run's other connections are); when the target closes it, the worker makes
//! another.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::TokioExecutor;
use tower::ServiceExt;

use super::report::Outcome;

/// What the I/O future of a connection never gives: it stays pending once the
/// connection has closed.
enum Never {}

enum Sender {
    Http1(http1::SendRequest<Full<Bytes>>),
    Http2(http2::SendRequest<Full<Bytes>>),
}

/// One open connection: where requests go in, and the future that does its I/O (it
/// ends when the connection closes, and then stays pending).
pub struct Connection {
    sender: Sender,
    io: Pin<Box<dyn Future<Output = Never> + Send>>,
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
        if http2 {
            let (sender, connection) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|_| Outcome::ConnectFailed)?;
            Ok(Connection {
                sender: Sender::Http2(sender),
                io: Box::pin(async move {
                    let _ = connection.await;
                    std::future::pending::<Never>().await
                }),
            })
        } else {
            let (sender, connection) = http1::handshake(io)
                .await
                .map_err(|_| Outcome::ConnectFailed)?;
            Ok(Connection {
                sender: Sender::Http1(sender),
                io: Box::pin(async move {
                    let _ = connection.await;
                    std::future::pending::<Never>().await
                }),
            })
        }
    }

    /// Waits until the connection can take a request; false when it has closed (the
    /// target ended a keep-alive connection, say), and a new one is needed.
    pub async fn ready(&mut self) -> bool {
        let Connection { sender, io } = self;
        let ready = async {
            match sender {
                Sender::Http1(sender) => sender.ready().await.is_ok(),
                Sender::Http2(sender) => sender.ready().await.is_ok(),
            }
        };
        tokio::select! {
            biased;
            ready = ready => ready,
            never = io.as_mut() => match never {},
        }
    }

    /// Sends `request` and reads its answer's body to the end without keeping it,
    /// doing the connection's I/O on this task meanwhile. `answered` hears the status
    /// as soon as it is known. Ok with the answer's outcome, or how the exchange broke.
    pub async fn exchange(
        &mut self,
        request: http::Request<Full<Bytes>>,
        answered: impl FnOnce(http::StatusCode),
    ) -> Result<Outcome, Outcome> {
        let Connection { sender, io } = self;
        let exchange = async {
            let response = match sender {
                Sender::Http1(sender) => sender.send_request(request).await,
                Sender::Http2(sender) => sender.send_request(request).await,
            }
            .map_err(|_| Outcome::ConnectionBroken)?;
            answered(response.status());
            let outcome = Outcome::of_status(response.status());
            super::drain(response.into_body())
                .await
                .map_err(|_| Outcome::ConnectionBroken)?;
            Ok(outcome)
        };
        tokio::select! {
            biased;
            done = exchange => done,
            never = io.as_mut() => match never {},
        }
    }
}
