//! The bodies that cross the gateway, held to time bounds so that a slow client
//! cannot keep an upstream connection:
//!
//! - [`IdleRequestBody`]: a request body that delivers no byte for
//!   `server.body_idle_timeout` fails with [`BodyIdle`] (the request is answered 408).
//! - [`Delivery`]: a response body that the client takes nothing of for
//!   `server.send_timeout` (a send stall) is abandoned: its upstream body is dropped,
//!   which closes the upstream connection, and its in-flight slot is given back.
//!
//! A send stall cannot be seen from inside a body: when the client opens no window
//! (HTTP/2) or reads nothing (HTTP/1.1), hyper simply stops polling the body. So a
//! response that can stall keeps its upstream body in a slot shared with a small
//! watchdog task, which takes it away once nothing was delivered for the send
//! timeout. Only bodies that can stall get a watchdog (no `Content-Length`, or one
//! above [`BUFFERED_MAX`]); smaller ones are read whole from the upstream before the
//! answer starts ([`super::Upstream::forward`]), which frees the upstream connection
//! at once and costs no task, lock or timer.

use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use super::limits::InFlightSlot;
use crate::body::BoxError;

/// Responses that declare at most this many bytes are read whole before they are
/// sent on (and cannot hold an upstream connection while the client reads slowly).
pub const BUFFERED_MAX: u64 = 64 * 1024;

/// The whole of a (small) body: its one data frame as it came, without a copy (the
/// usual case), or its data frames joined. Trailers are left out: the answer that
/// carries the result has a `Content-Length` and no trailers.
pub async fn read_whole<B: Body<Data = Bytes>>(body: B) -> Result<Bytes, B::Error> {
    let mut body = std::pin::pin!(body);
    let mut first = Bytes::new();
    let mut joined = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        if first.is_empty() && joined.is_empty() {
            first = data;
        } else {
            if joined.is_empty() {
                joined.extend_from_slice(&std::mem::take(&mut first));
            }
            joined.extend_from_slice(&data);
        }
    }
    Ok(if joined.is_empty() {
        first
    } else {
        joined.freeze()
    })
}

/// A request body that delivered no byte for `server.body_idle_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the request body delivered nothing for {0:?}")]
pub struct BodyIdle(pub Duration);

/// A body, or none: what the pool sends again of an idempotent request without a
/// body ([`super::pool`]) is a copy of its head with no body.
#[derive(Default)]
pub enum OrEmpty<B> {
    Body(B),
    #[default]
    Empty,
}

impl<B> Body for OrEmpty<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.get_mut() {
            OrEmpty::Body(body) => Pin::new(body).poll_frame(cx),
            OrEmpty::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            OrEmpty::Body(body) => body.is_end_stream(),
            OrEmpty::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            OrEmpty::Body(body) => body.size_hint(),
            OrEmpty::Empty => SizeHint::with_exact(0),
        }
    }
}

/// A request body held to an idle timeout: it fails once it has been waited on for
/// `timeout` without delivering. Time when nobody polls it (the upstream is not
/// reading) does not count. Its timer is made the first time the body waits and then
/// only moved when it fires, so a body that arrives in many pieces costs one timer,
/// not one per piece.
pub struct IdleRequestBody<B> {
    inner: B,
    timeout: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    /// Since when the body has been waited on without delivering (None: it has just
    /// delivered).
    waiting_since: Option<Instant>,
}

impl<B> IdleRequestBody<B> {
    pub fn new(inner: B, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            timer: None,
            waiting_since: None,
        }
    }
}

impl<B> Body for IdleRequestBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.waiting_since = None;
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = *this.waiting_since.get_or_insert_with(Instant::now) + this.timeout;
        // An earlier deadline than this one (from an earlier wait) fires early and
        // is moved below; never a later one.
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline.into())));
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if deadline <= Instant::now() {
                return Poll::Ready(Some(Err(Box::new(BodyIdle(this.timeout)))));
            }
            timer.as_mut().reset(deadline.into());
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The error a response body ends with once abandoned.
#[derive(Debug, thiserror::Error)]
#[error("the client took nothing of the response for {0:?}; abandoned")]
pub struct SendStall(pub Duration);

/// What a [`Delivery`] and its watchdog share.
struct Shared<B> {
    /// The upstream body and its in-flight slot; None once finished or abandoned.
    upstream: Mutex<Option<(B, InFlightSlot)>>,
    started: Instant,
    /// Milliseconds after `started` when the client last took a frame (or the body
    /// last waited for the upstream, which is no stall of the client's).
    last_progress: std::sync::atomic::AtomicU64,
    /// True while the body waits for the upstream rather than for the client.
    waiting_upstream: std::sync::atomic::AtomicBool,
}

impl<B> Shared<B> {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn progressed(&self) {
        self.last_progress
            .store(self.now_ms(), std::sync::atomic::Ordering::Relaxed);
    }
}

/// A response body that may stall, watched (see the module docs).
pub struct Delivery<B> {
    shared: Arc<Shared<B>>,
    send_timeout: Duration,
}

impl<B> Delivery<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
{
    /// Wraps `upstream` and starts its watchdog (on the current runtime).
    pub fn watch(upstream: B, slot: InFlightSlot, send_timeout: Duration) -> Self {
        let shared = Arc::new(Shared {
            upstream: Mutex::new(Some((upstream, slot))),
            started: Instant::now(),
            last_progress: std::sync::atomic::AtomicU64::new(0),
            waiting_upstream: std::sync::atomic::AtomicBool::new(false),
        });
        tokio::spawn(watchdog(Arc::downgrade(&shared), send_timeout));
        Self {
            shared,
            send_timeout,
        }
    }
}

/// Abandons the body once the client took nothing for `send_timeout`; ends when the
/// body is gone.
async fn watchdog<B>(shared: Weak<Shared<B>>, send_timeout: Duration) {
    use std::sync::atomic::Ordering;
    let timeout_ms = send_timeout.as_millis() as u64;
    let mut wait = send_timeout;
    loop {
        tokio::time::sleep(wait).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let quiet = shared.now_ms() - shared.last_progress.load(Ordering::Relaxed);
        if shared.waiting_upstream.load(Ordering::Relaxed) || quiet < timeout_ms {
            wait = Duration::from_millis(timeout_ms.saturating_sub(quiet).max(10));
            continue;
        }
        let abandoned = shared
            .upstream
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if abandoned.is_some() {
            tracing::warn!(
                timeout = ?send_timeout,
                "response abandoned: the client took nothing of it for server.send_timeout; upstream connection released"
            );
        }
        return;
    }
}

impl<B> Body for Delivery<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        use std::sync::atomic::Ordering;
        let shared = &self.shared;
        let mut upstream = shared
            .upstream
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some((body, _slot)) = upstream.as_mut() else {
            return Poll::Ready(Some(Err(Box::new(SendStall(self.send_timeout)))));
        };
        let polled = Pin::new(body).poll_frame(cx);
        shared.progressed();
        match polled {
            Poll::Pending => {
                shared.waiting_upstream.store(true, Ordering::Relaxed);
                Poll::Pending
            }
            Poll::Ready(frame) => {
                shared.waiting_upstream.store(false, Ordering::Relaxed);
                if !matches!(frame, Some(Ok(_))) {
                    // Finished (or failed): the upstream connection and the slot go now.
                    *upstream = None;
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.shared
            .upstream
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .as_ref()
            .is_some_and(|(body, _)| body.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.shared
            .upstream
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .as_ref()
            .map_or_else(SizeHint::default, |(body, _)| body.size_hint())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::limits::InFlight;
    use http_body_util::StreamBody;

    #[tokio::test]
    async fn a_body_read_whole_is_its_frames_joined_without_its_trailers() {
        let frames = |pieces: &[&'static str], trailers: bool| {
            let mut frames: Vec<Result<Frame<Bytes>, BoxError>> = pieces
                .iter()
                .map(|piece| Ok(Frame::data(Bytes::from_static(piece.as_bytes()))))
                .collect();
            if trailers {
                let mut map = http::HeaderMap::new();
                map.insert("x-trailer", http::HeaderValue::from_static("t"));
                frames.push(Ok(Frame::trailers(map)));
            }
            StreamBody::new(futures_util::stream::iter(frames))
        };
        for (pieces, whole) in [
            (&[][..], ""),
            (&["abc"][..], "abc"),
            (&["", "abc"][..], "abc"),
            (&["ab", "", "c"][..], "abc"),
            (&["a", "b", "c"][..], "abc"),
        ] {
            for trailers in [false, true] {
                let read = read_whole(frames(pieces, trailers)).await.unwrap();
                assert_eq!(read, whole, "{pieces:?}, trailers: {trailers}");
            }
        }
        // One frame comes back as it came: the same bytes, not a copy.
        let one = Bytes::from_static(b"one frame");
        let body = StreamBody::new(futures_util::stream::iter([Ok::<_, BoxError>(
            Frame::data(one.clone()),
        )]));
        assert_eq!(read_whole(body).await.unwrap().as_ptr(), one.as_ptr());
        // A failing body fails the read.
        let failing = StreamBody::new(futures_util::stream::iter([
            Ok(Frame::data(Bytes::from_static(b"part"))),
            Err::<Frame<Bytes>, BoxError>("broke off".into()),
        ]));
        assert_eq!(
            read_whole(failing).await.unwrap_err().to_string(),
            "broke off"
        );
    }

    fn pending_body() -> StreamBody<futures_util::stream::Pending<Result<Frame<Bytes>, BoxError>>> {
        StreamBody::new(futures_util::stream::pending())
    }

    #[tokio::test]
    async fn a_request_body_that_delivers_nothing_fails_after_the_idle_timeout() {
        let mut body = IdleRequestBody::new(pending_body(), Duration::from_millis(100));
        let error = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("the idle timeout ends the wait")
            .unwrap()
            .unwrap_err();
        assert!(error.is::<BodyIdle>(), "{error}");
    }

    /// A body whose `pieces` each arrive `gap` after they are first asked for.
    fn slow_body(
        pieces: usize,
        gap: Duration,
    ) -> StreamBody<impl futures_util::Stream<Item = Result<Frame<Bytes>, BoxError>> + Unpin> {
        StreamBody::new(Box::pin(futures_util::stream::unfold(
            0,
            move |n| async move {
                if n == pieces {
                    return None;
                }
                tokio::time::sleep(gap).await;
                Some((Ok(Frame::data(Bytes::from_static(b"piece"))), n + 1))
            },
        )))
    }

    #[tokio::test]
    async fn a_body_that_keeps_delivering_is_never_idle_however_long_it_takes() {
        // Nine pieces, a third of the timeout apart: three timeouts in all.
        let body = IdleRequestBody::new(
            slow_body(9, Duration::from_millis(100)),
            Duration::from_millis(300),
        );
        let collected = body.collect().await.expect("never idle");
        assert_eq!(collected.to_bytes().len(), 9 * 5);
    }

    #[tokio::test]
    async fn a_body_that_stops_after_delivering_fails_a_timeout_after_its_last_piece() {
        use futures_util::StreamExt;
        let pieces = slow_body(3, Duration::from_millis(100))
            .into_data_stream()
            .map(|piece| piece.map(Frame::data))
            .chain(futures_util::stream::pending());
        let mut body = IdleRequestBody::new(StreamBody::new(pieces), Duration::from_millis(250));
        for _ in 0..3 {
            body.frame().await.unwrap().unwrap();
        }
        let waited = std::time::Instant::now();
        let error = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("the idle timeout ends the wait")
            .unwrap()
            .unwrap_err();
        assert!(error.is::<BodyIdle>(), "{error}");
        assert!(
            waited.elapsed() >= Duration::from_millis(250),
            "{:?}",
            waited.elapsed()
        );
    }

    #[tokio::test]
    async fn time_nobody_asks_for_the_body_is_not_idle_time() {
        let mut body = IdleRequestBody::new(
            slow_body(2, Duration::from_millis(100)),
            Duration::from_millis(300),
        );
        body.frame().await.unwrap().unwrap();
        // The upstream reads nothing for twice the timeout (back-pressure).
        tokio::time::sleep(Duration::from_millis(600)).await;
        body.frame()
            .await
            .unwrap()
            .expect("not idle: it was not asked");
        assert!(body.frame().await.is_none());
    }

    #[tokio::test]
    async fn an_undelivered_response_is_abandoned_and_its_slot_given_back() {
        let limits = Arc::new(InFlight::new(1, 1));
        let slot = limits.try_acquire(None).unwrap();
        let full = http_body_util::Full::new(Bytes::from_static(b"data"));
        let body = Delivery::watch(full, slot, Duration::from_millis(300));
        // Nobody polls the body: the client gives no window.
        assert_eq!(limits.total(), 1, "held while undelivered");
        for _ in 0..100 {
            if limits.total() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(limits.total(), 0, "abandoned after the send timeout");
        let mut body = body;
        let error = body.frame().await.unwrap().unwrap_err();
        assert!(error.is::<SendStall>(), "{error}");
    }

    #[tokio::test]
    async fn waiting_for_the_upstream_is_no_stall() {
        let limits = Arc::new(InFlight::new(1, 1));
        let slot = limits.try_acquire(None).unwrap();
        let mut body = Delivery::watch(pending_body(), slot, Duration::from_millis(100));
        let waited = tokio::time::timeout(Duration::from_millis(600), body.frame()).await;
        assert!(waited.is_err(), "still waiting for the upstream");
        assert_eq!(limits.total(), 1, "not abandoned");
    }
}
