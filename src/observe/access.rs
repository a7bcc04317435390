//! The access log and request ids.
//!
//! Every request gets an id: the `X-Request-Id` a trusted proxy sent, when it is a
//! plain token, or a new random one. The id travels upstream and back to the client
//! in `X-Request-Id`, and is on the request's access line, so one id finds a request
//! in the gateway's, the proxy's and Sentry's logs.
//!
//! The access line is written when the response has been sent (or the client went
//! away), so its duration and byte count cover the whole body: method, path (never
//! the query, which may carry a login `code`), route class, status, duration, bytes,
//! the person's `sub` or `-`, and the request id. The same moment counts the request
//! in [`Metrics`].

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use hyper::body::{Body, Frame, SizeHint};
use rand::RngCore;

use super::access_format::AccessLine;
use super::logging;
use super::metrics::{Metrics, RouteClass};
use crate::body::{BoxError, ResponseBody};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest request id taken from a trusted proxy.
const MAX_REQUEST_ID_LEN: usize = 128;

/// The id of this request: a trusted proxy's `X-Request-Id` when it is a plain token
/// (letters, digits, `-_.:/+=`, at most 128), else 32 new random hex digits.
pub fn request_id(headers: &HeaderMap, peer_is_trusted: bool) -> HeaderValue {
    let given = headers.get(&REQUEST_ID).filter(|value| {
        peer_is_trusted
            && (1..=MAX_REQUEST_ID_LEN).contains(&value.len())
            && value
                .as_bytes()
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=".contains(b))
    });
    if let Some(given) = given {
        return given.clone();
    }
    let mut random = [0u8; 16];
    rand::rng().fill_bytes(&mut random);
    let mut hex = [0u8; 32];
    for (i, byte) in random.iter().enumerate() {
        hex[2 * i] = HEX[usize::from(byte >> 4)];
        hex[2 * i + 1] = HEX[usize::from(byte & 0xf)];
    }
    // Owned by its `Bytes`, so that the clones (the request's, the response's, the
    // access line's) share it.
    HeaderValue::from_maybe_shared(Bytes::from_owner(hex))
        .expect("hex digits are a valid header value")
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A signed-in person as the access line names them (a session, held until the line
/// is written rather than copying its text).
pub trait SignedIn: Send + Sync {
    /// The provider's `sub`.
    fn sub(&self) -> &str;
}

/// What the access line and the request metrics need, gathered while the request is
/// handled and written once its response is done.
pub struct AccessRecord {
    metrics: Arc<Metrics>,
    started: Instant,
    method: Method,
    /// The request's target as it came (the line shows only its path): a clone
    /// shares the request's bytes rather than copying them.
    target: Uri,
    request_id: HeaderValue,
    /// Which part of the gateway answered (set while routing).
    pub class: RouteClass,
    /// The signed-in person, when there is one.
    pub session: Option<Arc<dyn SignedIn>>,
    /// Whether the request went on to the upstream, its body with it.
    pub forwarded: bool,
    status: u16,
}

impl AccessRecord {
    pub fn new(
        metrics: Arc<Metrics>,
        method: Method,
        target: &Uri,
        request_id: HeaderValue,
    ) -> Self {
        Self {
            metrics,
            started: Instant::now(),
            method,
            target: target.clone(),
            request_id,
            class: RouteClass::Gateway,
            session: None,
            forwarded: false,
            status: 0,
        }
    }

    /// Wraps the response body so that the line is written when it has been sent.
    /// (The record comes boxed: it travels with the response through the server's
    /// layers, which move a pointer more cheaply than a record.)
    pub fn attach(mut self: Box<Self>, status: http::StatusCode, body: ResponseBody) -> LoggedBody {
        self.status = status.as_u16();
        LoggedBody {
            inner: body,
            record: Some(self),
            bytes: 0,
        }
    }

    fn finish(self, bytes: u64, completed: bool) {
        let took = self.started.elapsed();
        self.metrics.request(self.class, self.status, took);
        logging::write_access_line(&AccessLine {
            method: self.method.as_str(),
            path: self.target.path(),
            route: self.class.as_str(),
            status: self.status,
            duration_us: took.as_micros() as u64,
            bytes,
            user: self.session.as_ref().map_or("-", |s| s.sub()),
            request_id: self.request_id.to_str().unwrap_or("-"),
            completed,
        });
    }
}

/// A response body that writes its request's access line when it ends or is dropped.
pub struct LoggedBody {
    inner: ResponseBody,
    record: Option<Box<AccessRecord>>,
    bytes: u64,
}

impl LoggedBody {
    /// The answer sent instead of the one this body belonged to (a refused upgrade):
    /// the access line is written for it, with its status.
    pub fn answered_instead(mut self, status: http::StatusCode, body: ResponseBody) -> Self {
        let record = self.record.take();
        LoggedBody {
            inner: body,
            record: record.map(|mut record| {
                record.status = status.as_u16();
                record
            }),
            bytes: 0,
        }
    }

    fn finish(&mut self, completed: bool) {
        if let Some(record) = self.record.take() {
            record.finish(self.bytes, completed);
        }
    }
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                }
            }
            Poll::Ready(None) => this.finish(true),
            Poll::Ready(Some(Err(_))) => this.finish(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        let completed = self.inner.is_end_stream();
        self.finish(completed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trusted_proxys_id_is_kept_anyone_elses_is_replaced() {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID, HeaderValue::from_static("lb-7f3a:42"));
        assert_eq!(request_id(&headers, true), "lb-7f3a:42");
        let own = request_id(&headers, false);
        assert_ne!(own, "lb-7f3a:42");
        assert_eq!(own.len(), 32);
        assert!(own.as_bytes().iter().all(u8::is_ascii_hexdigit));
        assert_ne!(request_id(&headers, false), own);

        headers.insert(REQUEST_ID, HeaderValue::from_static("a b\"<script>"));
        assert_ne!(request_id(&headers, true), "a b\"<script>");
        headers.insert(REQUEST_ID, HeaderValue::from_str(&"x".repeat(129)).unwrap());
        assert_eq!(request_id(&headers, true).len(), 32);
    }
}
