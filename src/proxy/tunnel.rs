//! Tunnels: after a `101 Switching Protocols` (WebSocket), the bytes of the upgraded
//! connection are copied both ways for as long as the gateway allows it, and no
//! longer: a tunnel closes when nothing moved through it for `server.tunnel_idle_timeout`,
//! or when a check every `server.tunnel_check_every` says the session behind it ended
//! or the rules (after a reload) refuse it now.
//!
//! [`Upstream::forward`](super::Upstream::forward) does not start the tunnel: it puts
//! the two halves in the response's extensions ([`Upgraded`]), and the server, which
//! owns connections and their limits, runs it ([`run`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Both halves of an upgrade, waiting to become a tunnel. It travels in a response's
/// extensions (hence `Clone`); the first [`Upgraded::take`] gets it.
#[derive(Clone)]
pub struct Upgraded(Arc<Mutex<Option<Halves>>>);

struct Halves {
    client: OnUpgrade,
    upstream: OnUpgrade,
}

impl Upgraded {
    pub(super) fn new(client: OnUpgrade, upstream: OnUpgrade) -> Self {
        Self(Arc::new(Mutex::new(Some(Halves { client, upstream }))))
    }

    /// The halves, once.
    fn take(&self) -> Option<Halves> {
        self.0.lock().ok()?.take()
    }
}

/// How long a tunnel may stay open.
#[derive(Clone, Copy, Debug)]
pub struct TunnelTerms {
    /// Closed when no byte moved either way for this long.
    pub idle_timeout: Duration,
    /// How often the gateway is asked whether the tunnel may go on.
    pub check_every: Duration,
}

/// Why a tunnel closed.
#[derive(Debug, PartialEq, Eq)]
pub enum TunnelEnd {
    /// One side closed it (or it broke).
    Closed,
    /// The upgrade never completed on one side.
    NotUpgraded,
    /// Nothing moved for the idle timeout.
    Idle,
    /// The gateway's check said no (session ended, or refused now).
    Refused,
}

/// Copies bytes both ways until one side closes, the tunnel idles out, or
/// `still_allowed` says no (asked every `terms.check_every`).
pub async fn run<F, Fut>(pair: Upgraded, terms: TunnelTerms, mut still_allowed: F) -> TunnelEnd
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let Some(pair) = pair.take() else {
        return TunnelEnd::NotUpgraded;
    };
    let (client, upstream) = match tokio::try_join!(pair.client, pair.upstream) {
        Ok(halves) => halves,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade did not complete");
            return TunnelEnd::NotUpgraded;
        }
    };
    let moved = Arc::new(AtomicU64::new(0));
    let mut client = Counted::new(TokioIo::new(client), &moved);
    let mut upstream = Counted::new(TokioIo::new(upstream), &moved);
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    let mut copy = std::pin::pin!(copy);
    let tick = (terms.check_every.min(terms.idle_timeout) / 4).max(Duration::from_millis(20));
    let mut ticks = tokio::time::interval(tick);
    let mut seen = 0;
    let mut last_moved = Instant::now();
    let mut next_check = Instant::now() + terms.check_every;
    loop {
        tokio::select! {
            result = copy.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "tunnel closed with an error");
                }
                return TunnelEnd::Closed;
            }
            _ = ticks.tick() => {
                let now = moved.load(Ordering::Relaxed);
                if now != seen {
                    seen = now;
                    last_moved = Instant::now();
                } else if last_moved.elapsed() >= terms.idle_timeout {
                    return TunnelEnd::Idle;
                }
                if Instant::now() >= next_check {
                    if !still_allowed().await {
                        return TunnelEnd::Refused;
                    }
                    next_check = Instant::now() + terms.check_every;
                }
            }
        }
    }
}

/// An upgraded stream that adds every byte it reads or writes to a shared count.
struct Counted<T> {
    inner: T,
    moved: Arc<AtomicU64>,
}

impl<T> Counted<T> {
    fn new(inner: T, moved: &Arc<AtomicU64>) -> Self {
        Self {
            inner,
            moved: moved.clone(),
        }
    }

    fn count(&self, bytes: usize) {
        self.moved.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        self.count(read);
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(written)) = result {
            self.count(written);
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
