//! A recording upstream: remembers every request's method, path and headers, reports
//! body chunks as they arrive, answers 200 (or sleeps: 30 s on `/slow`, 1 s on any
//! path with `/delay`; answers [`LARGE_BODY`] bytes on any path with `/large`), and
//! counts the connections it accepted and holds open.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body_len: usize,
}

#[derive(Clone)]
pub struct TestUpstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Lengths of body chunks as they arrive, for streaming tests.
    chunks: Arc<Mutex<Option<mpsc::UnboundedSender<usize>>>>,
    /// Connections accepted, and those still open.
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
}

/// The size of the answer on paths with `/large`: more than the gateway and the
/// kernel buffer between them, so a client that reads nothing keeps it unfinished.
pub const LARGE_BODY: usize = 32 * 1024 * 1024;

/// Counts a connection open while it lives.
struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl TestUpstream {
    pub async fn start() -> TestUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = TestUpstream {
            addr: listener.local_addr().unwrap(),
            seen: Arc::default(),
            chunks: Arc::default(),
            accepted: Arc::default(),
            open: Arc::default(),
        };
        let serving = upstream.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let upstream = serving.clone();
                upstream.accepted.fetch_add(1, Ordering::SeqCst);
                upstream.open.fetch_add(1, Ordering::SeqCst);
                let guard = OpenGuard(upstream.open.clone());
                tokio::spawn(async move {
                    let _guard = guard;
                    let service = hyper::service::service_fn(move |request| {
                        let upstream = upstream.clone();
                        async move { Ok::<_, Infallible>(upstream.answer(request).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        upstream
    }

    /// Reports the length of each body chunk received from now on.
    pub fn watch_chunks(&self) -> mpsc::UnboundedReceiver<usize> {
        let (sender, receiver) = mpsc::unbounded_channel();
        *self.chunks.lock().unwrap() = Some(sender);
        receiver
    }

    /// Connections the upstream has accepted so far.
    pub fn accepted_connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Waits (at most `within`) until at most `count` connections are open; false if
    /// they never were.
    pub async fn await_open_at_most(&self, count: usize, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while self.open_connections() > count {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits (at most 4 s) until the upstream has received `count` requests whose path
    /// starts with `prefix` (a slow `/delay` request is then held here).
    pub async fn await_requests(&self, prefix: &str, count: usize) {
        for _ in 0..200 {
            let seen = self.requests();
            if seen
                .iter()
                .filter(|r| r.path_and_query.starts_with(prefix))
                .count()
                >= count
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the upstream did not receive {count} requests to {prefix} within 4 s");
    }

    pub fn last(&self) -> Seen {
        self.requests().pop().expect("the upstream saw a request")
    }

    async fn answer(&self, mut request: Request<Incoming>) -> Response<Full<Bytes>> {
        if request.headers().contains_key(http::header::UPGRADE) {
            return self.echo_upgrade(&mut request);
        }
        let (parts, mut body) = request.into_parts();
        let mut body_len = 0;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { break };
            if let Some(data) = frame.data_ref() {
                body_len += data.len();
                if let Some(sender) = self.chunks.lock().unwrap().as_ref() {
                    let _ = sender.send(data.len());
                }
            }
        }
        let path_and_query = parts
            .uri
            .path_and_query()
            .map_or("/".into(), |pq| pq.to_string());
        self.seen.lock().unwrap().push(Seen {
            method: parts.method.to_string(),
            path_and_query: path_and_query.clone(),
            headers: parts.headers,
            body_len,
        });
        if path_and_query.starts_with("/slow") {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        if path_and_query.contains("/delay") {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        if path_and_query.contains("/large") {
            static LARGE: OnceLock<Bytes> = OnceLock::new();
            let body = LARGE.get_or_init(|| Bytes::from(vec![b'x'; LARGE_BODY]));
            return Response::new(Full::new(body.clone()));
        }
        sentry_like_answer(&path_and_query, body_len)
    }

    /// Accepts any upgrade with 101 and then echoes every byte back.
    fn echo_upgrade(&self, request: &mut Request<Incoming>) -> Response<Full<Bytes>> {
        self.seen.lock().unwrap().push(Seen {
            method: request.method().to_string(),
            path_and_query: request.uri().to_string(),
            headers: request.headers().clone(),
            body_len: 0,
        });
        let protocol = request.headers()[http::header::UPGRADE].clone();
        let on_upgrade = hyper::upgrade::on(request);
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let (mut reader, mut writer) = tokio::io::split(TokioIo::new(upgraded));
                let _ = tokio::io::copy(&mut reader, &mut writer).await;
            }
        });
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
        response
            .headers_mut()
            .insert(http::header::UPGRADE, protocol);
        response.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("upgrade"),
        );
        response
    }
}

/// What Sentry would answer, closely enough for its real clients: JSON for the API
/// and ingestion, text elsewhere (naming the path, so tests can see what arrived).
fn sentry_like_answer(path_and_query: &str, body_len: usize) -> Response<Full<Bytes>> {
    let json = |value: serde_json::Value| {
        let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        response
    };
    let path = path_and_query.split('?').next().unwrap_or_default();
    if path == "/api/0/" {
        return json(serde_json::json!({
            "version": "0",
            "auth": {"scopes": ["org:read", "project:releases"]},
            "user": {"id": "1", "name": "CI", "email": "ci@corp.example"},
        }));
    }
    if path.starts_with("/api/0/") {
        return json(serde_json::json!([]));
    }
    if path.starts_with("/api/") && path.ends_with("/envelope/") {
        return json(serde_json::json!({"id": "0123456789abcdef0123456789abcdef"}));
    }
    Response::new(Full::new(Bytes::from(format!(
        "upstream saw {path_and_query} ({body_len} bytes)"
    ))))
}
