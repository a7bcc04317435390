//! Lingering close, as nginx does it: when the gateway closes a connection, it first
//! sends its FIN and then reads (and drops) what the client is still sending, for up
//! to [`LINGER`], before it lets the socket go.
//!
//! Without it, a connection closed while the client is still sending a body the
//! gateway refused (413 over `server.max_body_size`, 431, a 400) is closed with
//! unread data in the kernel's buffer, which makes the kernel answer with a reset, and
//! a reset can destroy the refusal before the client has read it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Longest time spent reading what a client sends after the gateway closed.
pub const LINGER: Duration = Duration::from_secs(5);

pub struct LingeringClose<IO> {
    io: IO,
    /// Set once the write side is shut: reading until the client stops or time is up.
    lingering: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<IO> LingeringClose<IO> {
    pub fn new(io: IO) -> Self {
        Self {
            io,
            lingering: None,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for LingeringClose<IO> {
    pass_to_io!(poll_read);
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for LingeringClose<IO> {
    pass_to_io!(
        poll_write,
        poll_write_vectored,
        is_write_vectored,
        poll_flush
    );

    /// Shuts the write side, then drains the read side until the client closes its
    /// side, an error, or [`LINGER`] has passed.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.lingering.is_none() {
            ready!(Pin::new(&mut this.io).poll_shutdown(cx))?;
            this.lingering = Some(Box::pin(tokio::time::sleep(LINGER)));
        }
        let mut scratch = [0u8; 4096];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => continue,
                Poll::Ready(_) => return Poll::Ready(Ok(())),
                Poll::Pending => {
                    let deadline = this.lingering.as_mut().expect("set above");
                    ready!(deadline.as_mut().poll(cx));
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}
