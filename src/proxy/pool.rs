//! The upstream connection pool of one serving thread: HTTP/1.1 connections
//! ([`hyper::client::conn::http1`]) kept alive between requests.
//!
//! Why not hyper-util's legacy `Client`: it hands every request to the connection
//! through a dispatch channel of its own, checks connections out of a locked pool
//! with cross-task wake-ups, and spawns a task for each response still streaming to
//! wait for its connection to become idle again. That costs on every request. Each
//! serving thread runs its own single-threaded runtime and has its own pool
//! ([`super::Upstream`]), so none of it is needed: a request takes an idle
//! connection (or opens one), sends on it, and the response body puts the
//! connection back when it ends ([`PooledBody`]).
//!
//! What the pool keeps:
//!
//! - The most recently returned connection is used first, so that sequential
//!   requests keep one connection warm; at most [`MAX_IDLE`] are kept, a connection
//!   returned beyond that is closed.
//! - A connection idle longer than [`IDLE_TIMEOUT`] (below the upstream's own
//!   keep-alive timeout) is closed instead of reused, and so is one the upstream
//!   closed, one whose response said `Connection: close`, and one taken over by an
//!   upgrade (a WebSocket tunnel).
//! - A request sent on a reused connection that the upstream closed in the meantime
//!   comes back unsent ([`hyper::client::conn::TrySendError::take_message`]); it is
//!   sent once more, on a fresh connection.
//! - A request written on a connection the upstream closed or reset as it arrived
//!   (hyper then gives it back no more: the connection ends before the answer) is sent
//!   once more only if it could not have been acted on twice, as nginx's
//!   `proxy_next_upstream` does: an idempotent method (RFC 9110 section 9.2.2) and no
//!   body. Only a connection idle for at least [`RACY_IDLE`] can close so (an upstream
//!   closes idle keep-alive connections, not busy ones), so only a request on one of
//!   those keeps a copy of its head for that; any other request's error is its answer.
//! - A connection goes back only once its response body ended; a body dropped
//!   before its end closes its connection (the rest of the body is never read).

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, header};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use tower::ServiceExt;

use crate::body::BoxError;

/// Idle connections kept per serving thread.
pub const MAX_IDLE: usize = 64;

/// Idle connections are not reused after this (below Sentry nginx's 75 s keep-alive,
/// so that the gateway never sends on a connection nginx is about to close).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection idle this long may be closing at the upstream's end (its keep-alive
/// timeout, a reload) just as a request is written on it: an idempotent request
/// without a body sent on one is kept, to be sent once more if that happens.
const RACY_IDLE: Duration = Duration::from_secs(1);

/// How long a checkout waits for an idle connection to be ready for its next
/// request. A connection is returned as soon as its response body ended, possibly
/// before its task noticed; that takes a moment. Longer means the request before
/// is still being written (its response came early): that connection is let go (it
/// closes once done) and another is taken.
const READY_WAIT: Duration = Duration::from_millis(200);

/// The connections of one serving thread to the upstream.
pub struct Pool<B> {
    connector: HttpsConnector<HttpConnector>,
    /// The upstream's scheme and authority: where to connect.
    origin: Uri,
    /// Most recently returned last.
    idle: Mutex<Vec<Idle<B>>>,
    max_idle: usize,
    idle_timeout: Duration,
    racy_idle: Duration,
}

struct Idle<B> {
    sender: SendRequest<B>,
    since: Instant,
}

impl<B> Pool<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    pub fn new(connector: HttpsConnector<HttpConnector>, origin: Uri) -> Self {
        Self {
            connector,
            origin,
            idle: Mutex::new(Vec::new()),
            max_idle: MAX_IDLE,
            idle_timeout: IDLE_TIMEOUT,
            racy_idle: RACY_IDLE,
        }
    }

    /// Sends `request` (origin-form URI, `Host` set) on an idle connection or a new
    /// one. The response's body returns the connection when it ends.
    pub async fn send(
        self: &Arc<Self>,
        request: Request<B>,
    ) -> Result<Response<PooledBody<B>>, BoxError>
    where
        B: Default,
    {
        let (mut sender, idle_for) = match self.checkout().await {
            Some((sender, idle_for)) => (sender, Some(idle_for)),
            // Boxed: connecting (TLS included) is a large future, and rare.
            None => (Box::pin(self.connect()).await?, None),
        };
        let again = match idle_for {
            Some(idle_for) if idle_for >= self.racy_idle => replayable(&request),
            _ => None,
        };
        let response = match sender.try_send_request(request).await {
            Ok(response) => response,
            // Rare, and a large future: boxed, so that every request's stays small.
            Err(error) => {
                Box::pin(self.send_again(error, idle_for.is_some(), again, &mut sender)).await?
            }
        };
        // An upgraded connection belongs to its tunnel; one the upstream will close
        // serves nothing more.
        let reusable =
            response.status() != StatusCode::SWITCHING_PROTOCOLS && !asks_close(response.headers());
        Ok(response.map(|body| PooledBody {
            body,
            back: reusable.then(|| (sender, self.clone())),
        }))
    }

    /// A request `sender`'s connection did not answer, sent once more on a new
    /// connection if that is safe: it came back unsent from a reused connection
    /// the upstream had closed, or it is `again` (see [`replayable`]) and the
    /// connection closed or was reset before an answer came. `sender` becomes the new
    /// connection.
    async fn send_again(
        &self,
        mut error: hyper::client::conn::TrySendError<Request<B>>,
        reused: bool,
        again: Option<Request<B>>,
        sender: &mut SendRequest<B>,
    ) -> Result<Response<Incoming>, BoxError> {
        let request = match (error.take_message(), again) {
            // Unsent: the upstream closed the idle connection before it took
            // this request.
            (Some(request), _) if reused => {
                tracing::debug!(error = %error.into_error(), "idle upstream connection closed; request sent again on a new one");
                request
            }
            // Written, but the connection closed or was reset before the answer:
            // the upstream closed it as the request came (an idempotent one
            // without a body; see RACY_IDLE).
            (None, Some(request)) if closed_before_answer(error.error()) => {
                tracing::debug!(error = %error.into_error(), "upstream connection closed as the request was written; idempotent request sent again on a new one");
                request
            }
            _ => return Err(Box::new(error.into_error())),
        };
        *sender = self.connect().await?;
        Ok(sender.send_request(request).await?)
    }

    /// The most recently returned connection that is still open and ready.
    /// With how long it was idle.
    async fn checkout(&self) -> Option<(SendRequest<B>, Duration)> {
        loop {
            let (mut idle, idle_for) = {
                let mut idle = self.lock();
                let last = idle.pop()?;
                let idle_for = last.since.elapsed();
                if idle_for > self.idle_timeout {
                    // Every other one has been idle longer still.
                    idle.clear();
                    return None;
                }
                (last.sender, idle_for)
            };
            if idle.is_closed() {
                continue;
            }
            // Usually ready at once, and then no timer is needed.
            let ready = match poll_fn(|cx| Poll::Ready(idle.poll_ready(cx))).await {
                Poll::Ready(ready) => ready.is_ok(),
                Poll::Pending => matches!(
                    tokio::time::timeout(READY_WAIT, idle.ready()).await,
                    Ok(Ok(()))
                ),
            };
            if ready {
                return Some((idle, idle_for));
            }
        }
    }

    /// Keeps a connection whose response ended, unless the pool is full (then it
    /// closes). Connections idle for longer than the idle timeout go now.
    fn checkin(&self, sender: SendRequest<B>) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.lock();
        let expired = idle.partition_point(|c| now.duration_since(c.since) > self.idle_timeout);
        idle.drain(..expired);
        if idle.len() < self.max_idle {
            idle.push(Idle { sender, since: now });
        }
    }

    /// A new connection, its task spawned on this thread's runtime. Connect errors
    /// keep their cause (the connect timeout is an io `TimedOut`).
    async fn connect(&self) -> Result<SendRequest<B>, BoxError> {
        let io = self.connector.clone().oneshot(self.origin.clone()).await?;
        let (sender, connection) = http1::handshake(io).await?;
        tokio::spawn(async move {
            // Upgrades: the connection is handed over to a tunnel after a 101.
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle<B>>> {
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A copy of `request` to send again, if sending it twice cannot do what sending it
/// once would not: an idempotent method and no body. (Its extensions stay behind:
/// the upstream request carries none.)
fn replayable<B: Body + Default>(request: &Request<B>) -> Option<Request<B>> {
    let idempotent = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    );
    if !idempotent || !request.body().is_end_stream() {
        return None;
    }
    let mut copy = Request::new(B::default());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    Some(copy)
}

/// True when the connection ended, closed or reset, before an answer came.
fn closed_before_answer(error: &hyper::Error) -> bool {
    use std::io::ErrorKind;
    let reset = std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<std::io::Error>())
        .is_some_and(|io| {
            matches!(
                io.kind(),
                ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
            )
        });
    error.is_incomplete_message() || reset
}

/// True when a response says its connection closes after it.
fn asks_close(headers: &HeaderMap) -> bool {
    super::headers::list_items(headers, &header::CONNECTION)
        .any(|token| token.eq_ignore_ascii_case("close"))
}

/// A response body from the upstream that returns its connection to the pool when
/// it ends. Dropped before its end, it drops the connection too, which closes it.
pub struct PooledBody<B> {
    body: Incoming,
    back: Option<(SendRequest<B>, Arc<Pool<B>>)>,
}

impl<B> PooledBody<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    fn give_back(&mut self) {
        if let Some((sender, pool)) = self.back.take() {
            pool.checkin(sender);
        }
    }
}

impl<B> Body for PooledBody<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            // The server stops polling once a body says it ended, so the end of a
            // body with a length is its last frame, not the `None` after it.
            Poll::Ready(Some(Ok(_))) if self.body.is_end_stream() => self.give_back(),
            Poll::Ready(None) => self.give_back(),
            Poll::Ready(Some(Err(_))) => self.back = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::{ResponseBody, boxed};
    use http_body_util::{BodyExt, Empty, StreamBody};
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// Any request body will do; boxed, so that tests can stream one.
    type TestPool = Arc<Pool<ResponseBody>>;

    /// How the test upstream treats a connection after each answer.
    #[derive(Clone, Copy, PartialEq)]
    enum After {
        /// Keeps it open for the next request.
        KeepAlive,
        /// Answers with `Connection: close` and closes.
        SayClose,
        /// Closes it without a word, after `delay`; or, with a cue socket, once
        /// cued (a byte from the test), answering the cue just before it closes.
        Close { delay: Duration },
        /// Answers the first request; of any further request, reads it and closes
        /// without answering.
        DropSecond,
        /// The same, but resets the connection (TCP RST) instead of closing it.
        ResetSecond,
        /// Answers `101 Switching Protocols`, then echoes what it receives.
        Upgrade,
    }

    /// A raw upstream: answers `200 hello` to each request, counts connections.
    struct TestUpstream {
        origin: Uri,
        accepted: Arc<AtomicUsize>,
        /// Connections the gateway closed (EOF seen while waiting for a request).
        closed_by_peer: Arc<AtomicUsize>,
    }

    /// The upstream runs on a thread of its own, so that it acts while the test's
    /// runtime is blocked.
    fn test_upstream(after: After) -> TestUpstream {
        test_upstream_cued(after, None)
    }

    /// With `cue`, each `After::Close` waits for a byte on it, and writes one back
    /// just before it closes.
    fn test_upstream_cued(after: After, cue: Option<UnixStream>) -> TestUpstream {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed_by_peer = Arc::new(AtomicUsize::new(0));
        let (a, c) = (accepted.clone(), closed_by_peer.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = TcpListener::from_std(std_listener).unwrap();
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    a.fetch_add(1, Ordering::SeqCst);
                    let cue = cue.as_ref().map(|s| s.try_clone().unwrap());
                    tokio::spawn(serve(stream, after, c.clone(), cue));
                }
            });
        });
        TestUpstream {
            origin: format!("http://{addr}").parse().unwrap(),
            accepted,
            closed_by_peer,
        }
    }

    async fn serve(
        mut stream: TcpStream,
        after: After,
        closed_by_peer: Arc<AtomicUsize>,
        cue: Option<UnixStream>,
    ) {
        let mut answered = 0;
        loop {
            let mut request = Vec::new();
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let mut buf = [0; 1024];
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        if request.is_empty() {
                            closed_by_peer.fetch_add(1, Ordering::SeqCst);
                        }
                        return;
                    }
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            if after == After::DropSecond && answered == 1 {
                return;
            }
            if after == After::ResetSecond && answered == 1 {
                stream.set_zero_linger().unwrap();
                return;
            }
            if after == After::Upgrade {
                let answer = "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n";
                stream.write_all(answer.as_bytes()).await.unwrap();
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
                return;
            }
            let connection = if after == After::SayClose {
                "close"
            } else {
                "keep-alive"
            };
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: {connection}\r\n\r\nhello"
            );
            stream.write_all(answer.as_bytes()).await.unwrap();
            answered += 1;
            // The request body, if any, after the answer (an early answer).
            let head = String::from_utf8_lossy(&request).to_ascii_lowercase();
            let end = head.find("\r\n\r\n").unwrap() + 4;
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .map_or(0, |n| n.trim().parse().unwrap());
            let mut left = length - (request.len() - end);
            while left > 0 {
                let mut buf = [0; 1024];
                match stream.read(&mut buf[..left.min(1024)]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => left -= n,
                }
            }
            match after {
                After::SayClose => return,
                After::Close { delay } => {
                    let Some(cue) = cue else {
                        tokio::time::sleep(delay).await;
                        return;
                    };
                    cue.set_nonblocking(true).unwrap();
                    let mut cue = tokio::net::UnixStream::from_std(cue).unwrap();
                    cue.read_exact(&mut [0; 1]).await.unwrap();
                    cue.write_all(b"!").await.unwrap();
                    return;
                }
                _ => {}
            }
        }
    }

    fn pool(upstream: &TestUpstream) -> TestPool {
        pool_with(upstream, |_| {})
    }

    fn pool_with(upstream: &TestUpstream, set: impl FnOnce(&mut Pool<ResponseBody>)) -> TestPool {
        let connector =
            crate::outbound::connector(rustls::RootCertStore::empty(), Duration::from_secs(1))
                .unwrap();
        let mut pool = Pool::new(connector, upstream.origin.clone());
        set(&mut pool);
        Arc::new(pool)
    }

    fn get() -> Request<ResponseBody> {
        Request::get("/")
            .header(header::HOST, "upstream.test")
            .body(boxed(Empty::new()))
            .unwrap()
    }

    /// One request, its body read to the end (which returns the connection).
    async fn fetch(pool: &TestPool) -> Result<Bytes, BoxError> {
        let response = pool.send(get()).await?;
        assert_eq!(response.status(), StatusCode::OK);
        Ok(response.into_body().collect().await?.to_bytes())
    }

    fn idle_count<B>(pool: &Pool<B>) -> usize {
        pool.idle.lock().unwrap().len()
    }

    /// Waits up to 5 s for `condition`.
    async fn eventually(condition: impl Fn() -> bool) -> bool {
        for _ in 0..100 {
            if condition() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        condition()
    }

    #[tokio::test]
    async fn sequential_requests_reuse_one_connection() {
        let upstream = test_upstream(After::KeepAlive);
        let pool = pool(&upstream);
        for _ in 0..5 {
            assert_eq!(fetch(&pool).await.unwrap(), "hello");
        }
        assert_eq!(upstream.accepted.load(Ordering::SeqCst), 1);
        assert_eq!(idle_count(&pool), 1);
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_closes_its_connection() {
        let upstream = test_upstream(After::KeepAlive);
        let pool = pool(&upstream);
        let response = pool.send(get()).await.unwrap();
        drop(response);
        assert_eq!(idle_count(&pool), 0, "not returned");
        assert!(
            eventually(|| upstream.closed_by_peer.load(Ordering::SeqCst) == 1).await,
            "closed"
        );
        assert_eq!(fetch(&pool).await.unwrap(), "hello");
        assert_eq!(upstream.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn idle_connections_beyond_the_bound_are_closed() {
        let upstream = test_upstream(After::KeepAlive);
        let pool = pool_with(&upstream, |pool| pool.max_idle = 2);
        // Three at once: three connections.
        let mut responses = Vec::new();
        for _ in 0..3 {
            responses.push(pool.send(get()).await.unwrap());
        }
        assert_eq!(upstream.accepted.load(Ordering::SeqCst), 3);
        for response in responses {
            response.into_body().collect().await.unwrap();
        }
        assert_eq!(idle_count(&pool), 2);
        assert!(
            eventually(|| upstream.closed_by_peer.load(Ordering::SeqCst) == 1).await,
            "the third one is closed"
        );
    }

    #[tokio::test]
    async fn a_connection_idle_past_the_timeout_is_not_reused() {
        let upstream = test_upstream(After::KeepAlive);
        let pool = pool_with(&upstream, |pool| {
            pool.idle_timeout = Duration::from_millis(100)
        });
        fetch(&pool).await.unwrap();
        fetch(&pool).await.unwrap();
        assert_eq!(
            upstream.accepted.load(Ordering::SeqCst),
            1,
            "reused in time"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        fetch(&pool).await.unwrap();
        assert_eq!(upstream.accepted.load(Ordering::SeqCst), 2, "not reused");
        assert!(
            eventually(|| upstream.closed_by_peer.load(Ordering::SeqCst) == 1).await,
            "the expired one is closed"
        );
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_not_reused() {
        let upstream = test_upstream(After::Close {
            delay: Duration::from_millis(300),
        });
        let pool = pool(&upstream);
        fetch(&pool).await.unwrap();
        assert_eq!(idle_count(&pool), 1, "returned before the close");
        // The connection's task sees the close.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(pool.checkout().await.is_none(), "discarded at checkout");
        fetch(&pool).await.unwrap();
        assert_eq!(upstream.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_response_saying_connection_close_does_not_return_its_connection() {
        let upstream = test_upstream(After::SayClose);
        let pool = pool(&upstream);
        fetch(&pool).await.unwrap();
        assert_eq!(idle_count(&pool), 0);
        fetch(&pool).await.unwrap();
        assert_eq!(upstream.accepted.load(Ordering::SeqCst), 2);
    }

    /// The upstream closes an idle connection just as a request is about to go out
    /// on it. This thread is busy meanwhile (a task blocks it), so when it wakes,
    /// the connection looks open and ready at checkout, and its task sees the close
    /// only after the request was queued on it: the request comes back unsent
    /// (hyper returns a request only when none of it was written). The test task
    /// runs first: the upstream answers the cue (on a socket the test waits on)
    /// just before it closes, and the runtime wakes tasks in the order their events
    /// came.
    #[tokio::test]
    async fn a_request_that_came_back_unsent_is_sent_again_on_a_new_connection() {
        let (theirs, ours) = UnixStream::pair().unwrap();
        let upstream = test_upstream_cued(
            After::Close {
                delay: Duration::ZERO,
            },
            Some(theirs),
        );
        let mut cue = ours.try_clone().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut ours = tokio::net::UnixStream::from_std(ours).unwrap();
        let pool = pool(&upstream);
        fetch(&pool).await.unwrap();
        // The connection's task settles into idle; then the thread is blocked
        // while the upstream, cued, answers and closes.
        tokio::time::sleep(Duration::from_millis(20)).await;
        tokio::spawn(async move {
            cue.write_all(b"?").unwrap();
            std::thread::sleep(Duration::from_millis(400));
        });
        ours.read_exact(&mut [0; 1]).await.unwrap();
        {
            let idle = pool.idle.lock().unwrap();
            let last = &idle.last().expect("returned").sender;
            assert!(!last.is_closed() && last.is_ready(), "looks reusable");
        }
        assert_eq!(fetch(&pool).await.unwrap(), "hello");
        assert_eq!(upstream.accepted.load(Ordering::SeqCst), 2, "sent again");
    }

    /// A request whose bytes reached the upstream may have been acted on: on a
    /// connection that was busy a moment before (the upstream closes idle ones, not
    /// busy ones), it is never sent again, even an idempotent one.
    #[tokio::test]
    async fn a_request_written_on_a_busy_connection_is_not_sent_again() {
        let upstream = test_upstream(After::DropSecond);
        let pool = pool(&upstream);
        fetch(&pool).await.unwrap();
        let error = fetch(&pool).await.unwrap_err();
        assert!(
            error.downcast_ref::<hyper::Error>().is_some(),
            "a hyper error: {error}"
        );
        assert_eq!(upstream.accepted.load(Ordering::SeqCst), 1, "no retry");
    }

    /// On a connection idle for a while, the upstream may close (or reset) it just as
    /// a request arrives: an idempotent request without a body is sent once more, on
    /// a new connection; one with a body, or of another method, is not.
    #[tokio::test]
    async fn an_idempotent_request_the_upstream_closed_on_is_sent_again_after_an_idle_while() {
        let racy = |pool: &mut Pool<ResponseBody>| pool.racy_idle = Duration::from_millis(50);
        let cases = [
            (http::Method::GET, "", true),
            (http::Method::HEAD, "", true),
            (http::Method::DELETE, "", true),
            (http::Method::POST, "", false),
            (http::Method::PUT, "data", false),
        ];
        for ((method, body, sent_again), after) in cases.into_iter().flat_map(|case| {
            [
                (case.clone(), After::DropSecond),
                (case, After::ResetSecond),
            ]
        }) {
            let upstream = test_upstream(after);
            let pool = pool_with(&upstream, racy);
            fetch(&pool).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            let request = Request::builder()
                .method(method.clone())
                .uri("/")
                .header(header::HOST, "upstream.test")
                .header(header::CONTENT_LENGTH, body.len())
                .body(boxed(http_body_util::Full::new(Bytes::from(body))))
                .unwrap();
            let result = pool.send(request).await;
            assert_eq!(
                result.is_ok(),
                sent_again,
                "{method} with {body:?}: {:?}",
                result.as_ref().err()
            );
            let connections = if sent_again { 2 } else { 1 };
            assert_eq!(
                upstream.accepted.load(Ordering::SeqCst),
                connections,
                "{method} with {body:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_connect_failure_keeps_its_cause() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let origin: Uri = format!("http://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        drop(listener);
        let connector =
            crate::outbound::connector(rustls::RootCertStore::empty(), Duration::from_secs(1))
                .unwrap();
        let pool: TestPool = Arc::new(Pool::new(connector, origin));
        let Err(error) = pool.send(get()).await else {
            panic!("nothing listens there");
        };
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&*error);
        let mut io = false;
        while let Some(e) = cause {
            io |= e.is::<std::io::Error>();
            cause = e.source();
        }
        assert!(io, "an io error among the causes: {error}");
    }

    /// The upstream answers before the request body has all been sent: the
    /// response's end returns the connection, and the next request waits for it to
    /// be ready (the body still going out) instead of opening another.
    #[tokio::test]
    async fn a_returned_connection_is_used_once_ready() {
        let upstream = test_upstream(After::KeepAlive);
        let pool = pool(&upstream);
        let (frames, mut rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let body = StreamBody::new(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
        let request = Request::post("/")
            .header(header::HOST, "upstream.test")
            .header(header::CONTENT_LENGTH, "4")
            .body(boxed(body))
            .unwrap();
        let response = pool.send(request).await.unwrap();
        response.into_body().collect().await.unwrap();
        assert_eq!(idle_count(&pool), 1, "returned at the response's end");
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            frames
                .send(Ok(Frame::data(Bytes::from_static(b"data"))))
                .await
                .unwrap();
        });
        assert_eq!(fetch(&pool).await.unwrap(), "hello");
        assert_eq!(upstream.accepted.load(Ordering::SeqCst), 1, "reused");
    }

    /// A 101 hands the connection to the upgrade (the connection task runs with
    /// upgrades), and the pool never gets it back.
    #[tokio::test]
    async fn an_upgraded_connection_is_handed_over_and_not_returned() {
        let upstream = test_upstream(After::Upgrade);
        let pool = pool(&upstream);
        let request = Request::get("/")
            .header(header::HOST, "upstream.test")
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "echo")
            .body(boxed(Empty::new()))
            .unwrap();
        let mut response = pool.send(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        let upgrade = hyper::upgrade::on(&mut response);
        response.into_body().collect().await.unwrap();
        assert_eq!(idle_count(&pool), 0, "not returned");
        let mut tunnel = hyper_util::rt::TokioIo::new(upgrade.await.unwrap());
        tunnel.write_all(b"ping").await.unwrap();
        let mut echo = [0; 4];
        tunnel.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"ping");
    }
}
