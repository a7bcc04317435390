//! Strict HTTP/1.1 framing, checked on the bytes as they arrive, before hyper parses
//! them: the defence against request smuggling.
//!
//! hyper takes two of RFC 9112's lenient options: it accepts a bare LF as a line end,
//! and a request with both `Content-Length` and `Transfer-Encoding` is read as chunked.
//! Either is how smuggling starts when a proxy in front of the gateway reads the same
//! bytes differently. [`StrictFraming`] refuses them, and also refuses what RFC 9112
//! says a server must refuse: more than one `Host` (or none, in HTTP/1.1), a repeated
//! `Content-Length`, a `Transfer-Encoding` other than a single `chunked`, and bare LFs
//! in chunk lines and trailers.
//!
//! Refusing uses hyper's own path for malformed requests: the read is cut at the
//! offending byte, which becomes a NUL followed by an empty line. hyper sees a
//! complete head it cannot parse, answers 400 and closes the connection, and nothing
//! of that request reaches the upstream. (A NUL alone would not do: hyper waits for
//! an empty line before it parses again.) In a chunked body the request fails the
//! same way mid-body; the upstream sees one request cut short, never two.
//!
//! HTTP/2 (after its preface) and upgraded connections (after a 101) are not checked:
//! their bytes are not HTTP/1.1 messages.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Enough of a line to recognise the headers that frame a message and their values.
const LINE_KEPT: usize = 64;

/// What replaces a refused byte: a NUL, which no part of a request may hold, then an
/// empty line, so that hyper parses (and refuses) the head at once.
const REFUSAL: &[u8] = b"\0\r\n\r\n";

/// The first line of the HTTP/2 connection preface.
const H2_PREFACE_LINE: &[u8] = b"PRI * HTTP/2.0";

/// Where the scanner is in the stream of messages.
#[derive(Debug)]
enum State {
    Head(Head),
    /// This many body bytes (`Content-Length`) before the next head.
    Body(u64),
    ChunkSize,
    /// This many bytes of chunk data, then CRLF.
    ChunkData(u64),
    ChunkDataCr,
    ChunkDataLf,
    Trailers,
    /// Not HTTP/1.1 messages (HTTP/2, an upgraded connection), or already refused.
    Unchecked,
}

/// What the current request head has said so far.
#[derive(Debug, Default)]
struct Head {
    seen_request_line: bool,
    http11: bool,
    hosts: u32,
    content_lengths: u32,
    content_length: Option<u64>,
    transfer_encodings: u32,
    chunked: bool,
}

/// The byte-by-byte scanner, apart from I/O so it can be tested on plain bytes.
#[derive(Debug)]
pub struct FramingScanner {
    state: State,
    line: [u8; LINE_KEPT],
    /// Length of the current line (may exceed what is kept).
    line_len: usize,
    after_cr: bool,
    /// True until the first line ends (where the HTTP/2 preface would be).
    at_connection_start: bool,
}

impl Default for FramingScanner {
    fn default() -> Self {
        Self {
            state: State::Head(Head::default()),
            line: [0; LINE_KEPT],
            line_len: 0,
            after_cr: false,
            at_connection_start: true,
        }
    }
}

impl FramingScanner {
    /// Checks `bytes`, the next ones read from the client: `Err(i)` when `bytes[i]`
    /// breaks strict framing. Nothing is checked after that.
    pub fn scan(&mut self, bytes: &[u8]) -> Result<(), usize> {
        let mut i = 0;
        while i < bytes.len() {
            match &mut self.state {
                State::Unchecked => return Ok(()),
                State::Body(remaining) => {
                    let take = (*remaining).min((bytes.len() - i) as u64);
                    *remaining -= take;
                    i += take as usize;
                    if *remaining == 0 {
                        self.state = State::Head(Head::default());
                    }
                    continue;
                }
                State::ChunkData(remaining) => {
                    let take = (*remaining).min((bytes.len() - i) as u64);
                    *remaining -= take;
                    i += take as usize;
                    if *remaining == 0 {
                        self.state = State::ChunkDataCr;
                    }
                    continue;
                }
                State::ChunkDataCr | State::ChunkDataLf => {
                    let expected = if matches!(self.state, State::ChunkDataCr) {
                        b'\r'
                    } else {
                        b'\n'
                    };
                    if bytes[i] != expected {
                        return self.refuse(i);
                    }
                    self.state = if expected == b'\r' {
                        State::ChunkDataLf
                    } else {
                        State::ChunkSize
                    };
                    i += 1;
                    continue;
                }
                State::Head(_) | State::ChunkSize | State::Trailers => {}
            }
            // A line-based state: collect the line, act at its end.
            let byte = bytes[i];
            if byte == b'\n' {
                if !self.after_cr || !self.end_of_line() {
                    return self.refuse(i);
                }
                self.line_len = 0;
                self.after_cr = false;
            } else {
                if self.after_cr {
                    // A CR not followed by LF: hyper refuses it, nothing to add.
                    self.after_cr = false;
                }
                if byte == b'\r' {
                    self.after_cr = true;
                } else {
                    if self.line_len < LINE_KEPT {
                        self.line[self.line_len] = byte;
                    }
                    self.line_len += 1;
                }
            }
            i += 1;
        }
        Ok(())
    }

    fn refuse(&mut self, at: usize) -> Result<(), usize> {
        self.state = State::Unchecked;
        Err(at)
    }

    /// Stops checking (HTTP/2 or an upgraded connection).
    pub fn stop(&mut self) {
        self.state = State::Unchecked;
    }

    /// The current line (without CR LF) has ended; false when it breaks framing.
    fn end_of_line(&mut self) -> bool {
        let kept = &self.line[..self.line_len.min(LINE_KEPT)];
        let complete = self.line_len <= LINE_KEPT;
        let at_connection_start = std::mem::take(&mut self.at_connection_start);
        match &mut self.state {
            State::Head(head) if !head.seen_request_line => {
                if kept.is_empty() {
                    return true; // empty lines before a request line are ignored
                }
                if at_connection_start && kept == H2_PREFACE_LINE {
                    self.state = State::Unchecked;
                    return true;
                }
                head.seen_request_line = true;
                head.http11 = kept.ends_with(b"HTTP/1.1");
                true
            }
            State::Head(head) if kept.is_empty() => {
                let framing_ok = head.hosts <= 1
                    && (head.hosts == 1 || !head.http11)
                    && head.content_lengths <= 1
                    && head.transfer_encodings <= 1
                    && !(head.content_lengths == 1 && head.transfer_encodings == 1)
                    && (head.transfer_encodings == 0 || head.chunked);
                if !framing_ok {
                    return false;
                }
                self.state = if head.chunked {
                    State::ChunkSize
                } else {
                    match head.content_length {
                        Some(length) if length > 0 => State::Body(length),
                        _ => State::Head(Head::default()),
                    }
                };
                true
            }
            State::Head(head) => {
                let Some(colon) = kept.iter().position(|&b| b == b':') else {
                    return true; // not a header hyper accepts either
                };
                let name = &kept[..colon];
                let value = kept[colon + 1..].trim_ascii();
                if name.eq_ignore_ascii_case(b"host") {
                    head.hosts += 1;
                } else if name.eq_ignore_ascii_case(b"content-length") {
                    head.content_lengths += 1;
                    let digits = complete && !value.is_empty() && value.len() <= 18;
                    if !digits || !value.iter().all(u8::is_ascii_digit) {
                        return false;
                    }
                    head.content_length = std::str::from_utf8(value)
                        .ok()
                        .and_then(|digits| digits.parse().ok());
                } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                    head.transfer_encodings += 1;
                    head.chunked = complete && value.eq_ignore_ascii_case(b"chunked");
                }
                true
            }
            State::ChunkSize => {
                let digits: &[u8] = kept
                    .split(|&b| b == b';' || b == b' ' || b == b'\t')
                    .next()
                    .unwrap_or_default();
                let size = std::str::from_utf8(digits)
                    .ok()
                    .and_then(|d| u64::from_str_radix(d, 16).ok());
                match size {
                    Some(0) => self.state = State::Trailers,
                    Some(size) => self.state = State::ChunkData(size),
                    None => return false,
                }
                true
            }
            State::Trailers => {
                if kept.is_empty() {
                    self.state = State::Head(Head::default());
                }
                true
            }
            _ => true,
        }
    }
}

/// A client connection with its HTTP/1.1 framing checked ([`FramingScanner`]).
pub struct StrictFraming<IO> {
    io: IO,
    scanner: FramingScanner,
    /// Set by the service when it answered 101: from then on the bytes are the
    /// upgraded protocol's.
    upgraded: Arc<AtomicBool>,
}

impl<IO> StrictFraming<IO> {
    pub fn new(io: IO, upgraded: Arc<AtomicBool>) -> Self {
        Self {
            io,
            scanner: FramingScanner::default(),
            upgraded,
        }
    }

    /// The same connection, not checked (it speaks HTTP/2, by ALPN).
    pub fn unchecked(mut self) -> Self {
        self.scanner.stop();
        self
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for StrictFraming<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        if this.upgraded.load(Ordering::Relaxed) {
            this.scanner.stop();
        }
        if let Err(at) = this.scanner.scan(&buf.filled()[before..]) {
            tracing::info!(
                "request refused: ambiguous HTTP/1.1 framing (possible request smuggling)"
            );
            // Cut the read at the offending byte, which becomes what hyper refuses.
            buf.set_filled(before + at);
            if buf.remaining() < REFUSAL.len() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "ambiguous HTTP/1.1 framing",
                )));
            }
            buf.put_slice(REFUSAL);
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for StrictFraming<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, data)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scans `text` in pieces of `step` bytes; the index of the refused byte, if any.
    fn refused_at(text: &str, step: usize) -> Option<usize> {
        let mut scanner = FramingScanner::default();
        for (n, piece) in text.as_bytes().chunks(step).enumerate() {
            if let Err(at) = scanner.scan(piece) {
                return Some(n * step + at);
            }
        }
        None
    }

    fn check(text: &str) -> Option<usize> {
        let whole = refused_at(text, text.len());
        for step in [1, 2, 7] {
            assert_eq!(
                refused_at(text, step),
                whole,
                "{text:?} in pieces of {step}"
            );
        }
        whole
    }

    #[test]
    fn well_framed_requests_pass() {
        let pipelined = "GET / HTTP/1.1\r\nHost: a\r\n\r\n\
            POST /api/1/envelope/ HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhe\nlo\
            POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n\
            5;ext=1\r\nab\ncd\r\n0\r\nTrailer: x\r\n\r\n\
            GET /y HTTP/1.0\r\n\r\n";
        assert_eq!(check(pipelined), None);
    }

    #[test]
    fn ambiguous_framing_is_refused_where_it_shows() {
        // The refused byte: a bare LF where it is, a head that frames its body two
        // ways at the LF that ends the head, a chunk without its CRLF at the byte
        // after the data.
        let end_of_head = |text: &str| text.find("\r\n\r\n").unwrap() + 3;
        type Position<'a> = &'a dyn Fn(&str) -> usize;
        let cases: [(&str, Position); 10] = [
            ("GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n", &|t| {
                t.find("\nX").unwrap()
            }),
            ("GET / HTTP/1.1\nHost: a\r\n\r\n", &|t| {
                t.find("\nHost").unwrap()
            }),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                &end_of_head,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
                &end_of_head,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd",
                &end_of_head,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
                &end_of_head,
            ),
            ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", &end_of_head),
            ("GET / HTTP/1.1\r\n\r\n", &end_of_head),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4\nabcd\r\n0\r\n\r\n",
                &|t| t.find("\nabcd").unwrap(),
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcdX0\r\n\r\n",
                &|t| t.find('X').unwrap(),
            ),
        ];
        for (text, at) in cases {
            assert_eq!(check(text), Some(at(text)), "{text:?}");
        }
    }

    #[test]
    fn http2_preface_turns_checking_off() {
        let bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\n\x04\n\n";
        assert_eq!(FramingScanner::default().scan(bytes), Ok(()));
    }
}
