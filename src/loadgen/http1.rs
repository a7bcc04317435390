//! The closed loop's HTTP/1.1 client: a request written as one buffer, its answer read
//! into a reused buffer, the head parsed with `httparse` (hyper's own parser) and the
//! body skipped by its framing, without keeping it.
//!
//! Why not hyper's client here: the generator must be able to load a target harder than
//! the target can take, on one core, or a result is the tool's limit. Through
//! `hyper::client::conn::http1` a request and its answer cross a channel to the
//! connection's dispatcher, and every answer header becomes a `HeaderMap` entry the
//! bench never reads; that cost about 40% more CPU per request than `wrk`. This client
//! does what `wrk` does (write, read, parse the head, count the body off) and no more.
//! Everything else (logins, `/metrics`, the open loop, HTTP/2) goes through hyper.
//!
//! The framing follows RFC 9112 section 6.3: no body for 1xx, 204, 304; chunked when
//! `Transfer-Encoding` ends in `chunked`; else `Content-Length`; else the body runs to
//! the end of the connection. A connection is kept for the next request only when the
//! answer was HTTP/1.1, did not say `Connection: close`, and was followed by nothing.

use std::io::Write as _;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};

/// The most an answer's head (status line and headers) may take.
const MAX_HEAD: usize = 64 << 10;
/// The most headers an answer may have.
const MAX_HEADERS: usize = 100;
/// The most a chunk-size line or a trailer line may take.
const MAX_LINE: usize = 4 << 10;
/// How much room a read is given at least.
const READ_ROOM: usize = 16 << 10;

/// A byte stream a connection runs on (TCP, or TLS over TCP).
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// How an exchange broke.
#[derive(Debug, PartialEq, Eq)]
pub enum Broken {
    /// The connection ended or failed before any byte of the answer came: on a reused
    /// connection, the target may have closed it just as the request went out, and an
    /// idempotent request can be sent again on a new one.
    BeforeAnswer,
    /// It ended or failed in the middle of the answer.
    DuringAnswer,
    /// The answer was not HTTP/1.1 as RFC 9112 frames it.
    Malformed(&'static str),
}

/// One HTTP/1.1 connection.
pub struct Http1Connection {
    io: Box<dyn Io>,
    /// The request being written.
    out: Vec<u8>,
    /// Bytes read and not yet taken, from `start`.
    buf: Vec<u8>,
    start: usize,
    /// False once the connection can carry no other request.
    reusable: bool,
    /// True once it has carried one.
    used: bool,
}

/// What an answer's head says about the answer.
struct Head {
    status: http::StatusCode,
    body: Framing,
    keep_alive: bool,
}

enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

impl Http1Connection {
    pub fn new(io: Box<dyn Io>) -> Self {
        Http1Connection {
            io,
            out: Vec::with_capacity(1024),
            buf: Vec::with_capacity(READ_ROOM),
            start: 0,
            reusable: true,
            used: false,
        }
    }

    /// Whether the connection has carried a request before this one.
    pub fn used(&self) -> bool {
        self.used
    }

    /// Whether the connection can take another request: the last answer left it open
    /// and the target has not closed it (or sent anything unasked) since. Looks without
    /// waiting: the socket's readiness is already known to the runtime.
    pub fn ready(&mut self) -> bool {
        if !self.reusable {
            return false;
        }
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(Waker::noop());
        match Pin::new(&mut self.io).poll_read(&mut cx, &mut probe) {
            Poll::Pending => true,
            // Closed, failed, or bytes nobody asked for: no longer in step.
            Poll::Ready(_) => {
                self.reusable = false;
                false
            }
        }
    }

    /// Sends `request` (origin-form target, `Host` among its headers) and reads its
    /// answer to the end; `answered` hears the status as soon as the head is read.
    pub async fn exchange(
        &mut self,
        request: &http::Request<Bytes>,
        answered: impl FnOnce(http::StatusCode),
    ) -> Result<http::StatusCode, Broken> {
        self.used = true;
        self.reusable = false;
        encode(request, &mut self.out);
        let sent = async {
            self.io.write_all(&self.out).await?;
            self.io.flush().await
        };
        sent.await.map_err(|_| Broken::BeforeAnswer)?;
        let head = self.read_head().await?;
        answered(head.status);
        let complete = match head.body {
            Framing::None => true,
            Framing::Length(length) => {
                self.skip(length).await?;
                true
            }
            Framing::Chunked => {
                self.skip_chunked().await?;
                true
            }
            Framing::UntilClose => {
                while self.fill().await? > 0 {
                    self.start = self.buf.len();
                }
                false
            }
        };
        // Anything after the answer is a byte nobody asked for.
        self.reusable = complete && head.keep_alive && self.start == self.buf.len();
        Ok(head.status)
    }

    /// Reads until a whole head is buffered, skipping interim (1xx) answers.
    async fn read_head(&mut self) -> Result<Head, Broken> {
        let mut answer_began = false;
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut parsed = httparse::Response::new(&mut headers);
            let unread = &self.buf[self.start..];
            match parsed.parse(unread) {
                Ok(httparse::Status::Complete(length)) => {
                    let head = head_of(&parsed)?;
                    self.start += length;
                    if head.status.is_informational() {
                        if head.status == http::StatusCode::SWITCHING_PROTOCOLS {
                            return Err(Broken::Malformed(
                                "101 to a request that asked no upgrade",
                            ));
                        }
                        continue;
                    }
                    return Ok(head);
                }
                Ok(httparse::Status::Partial) if unread.len() >= MAX_HEAD => {
                    return Err(Broken::Malformed("answer head over 64 KiB"));
                }
                Ok(httparse::Status::Partial) => {}
                Err(_) => return Err(Broken::Malformed("answer head is not HTTP/1.1")),
            }
            let read = self.fill().await.map_err(|_| before(answer_began))?;
            if read == 0 {
                return Err(before(answer_began));
            }
            answer_began = true;
        }
    }

    /// Takes `length` body bytes, reading as needed.
    async fn skip(&mut self, mut length: u64) -> Result<(), Broken> {
        loop {
            let have = (self.buf.len() - self.start) as u64;
            if have >= length {
                self.start += length as usize;
                return Ok(());
            }
            length -= have;
            self.start = self.buf.len();
            if self.fill().await? == 0 {
                return Err(Broken::DuringAnswer);
            }
        }
    }

    /// Takes a chunked body: chunks, the last chunk, trailers and the empty line.
    async fn skip_chunked(&mut self) -> Result<(), Broken> {
        loop {
            let line = self.line().await?;
            let size = chunk_size(&self.buf[line])?;
            if size == 0 {
                // Trailer lines, up to the empty one.
                while !self.line().await?.is_empty() {}
                return Ok(());
            }
            self.skip(size).await?;
            if !self.line().await?.is_empty() {
                return Err(Broken::Malformed("chunk data longer than its size"));
            }
        }
    }

    /// Takes one CRLF-ended line; where it lies in `buf` (without the CRLF).
    async fn line(&mut self) -> Result<std::ops::Range<usize>, Broken> {
        let mut searched = self.start;
        loop {
            if let Some(at) = self.buf[searched..].windows(2).position(|w| w == b"\r\n") {
                let line = self.start..searched + at;
                self.start = line.end + 2;
                return Ok(line);
            }
            if self.buf.len() - self.start > MAX_LINE {
                return Err(Broken::Malformed("chunk line over 4 KiB"));
            }
            // The last byte may be the CR of a CRLF split across reads.
            searched = self.buf.len().saturating_sub(1).max(self.start);
            let before = self.start;
            if self.fill().await? == 0 {
                return Err(Broken::DuringAnswer);
            }
            // `fill` may have moved what was kept to the front.
            searched -= before - self.start;
        }
    }

    /// Reads more bytes after what is buffered; how many (0 at the end of the stream).
    /// Taken bytes are dropped first, so the buffer holds at most one head or line
    /// beyond a read's worth.
    async fn fill(&mut self) -> Result<usize, Broken> {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        if self.buf.capacity() - self.buf.len() < READ_ROOM / 2 {
            self.buf.reserve(READ_ROOM);
        }
        self.io
            .read_buf(&mut self.buf)
            .await
            .map_err(|_| Broken::DuringAnswer)
    }
}

fn before(answer_began: bool) -> Broken {
    if answer_began {
        Broken::DuringAnswer
    } else {
        Broken::BeforeAnswer
    }
}

/// Writes `request` as HTTP/1.1 into `out` (cleared first).
fn encode(request: &http::Request<Bytes>, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(request.method().as_str().as_bytes());
    out.push(b' ');
    let target = request
        .uri()
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in request.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let body = request.body();
    let method = request.method();
    if !body.is_empty() || !(method == http::Method::GET || method == http::Method::HEAD) {
        let _ = write!(out, "content-length: {}\r\n", body.len());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// What a parsed head says: status, framing (RFC 9112 section 6.3), keep-alive.
fn head_of(parsed: &httparse::Response<'_, '_>) -> Result<Head, Broken> {
    let status = parsed
        .code
        .and_then(|code| http::StatusCode::from_u16(code).ok())
        .ok_or(Broken::Malformed("no status code"))?;
    let http11 = parsed.version == Some(1);
    let mut keep_alive = http11;
    let mut length: Option<u64> = None;
    let mut transfer_encoding: Option<bool> = None;
    for header in parsed.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(header.value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or(Broken::Malformed("Content-Length is not a number"))?;
            if length.is_some_and(|l| l != value) {
                return Err(Broken::Malformed("two different Content-Lengths"));
            }
            length = Some(value);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            let last = header.value.rsplit(|&b| b == b',').next().unwrap_or(b"");
            transfer_encoding = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if header.name.eq_ignore_ascii_case("connection")
            && header
                .value
                .split(|&b| b == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"))
        {
            keep_alive = false;
        }
    }
    let no_body = status.is_informational()
        || status == http::StatusCode::NO_CONTENT
        || status == http::StatusCode::NOT_MODIFIED;
    let body = match (no_body, transfer_encoding, length) {
        (true, _, _) => Framing::None,
        (false, Some(true), _) => Framing::Chunked,
        (false, Some(false), _) => Framing::UntilClose,
        (false, None, Some(length)) => Framing::Length(length),
        (false, None, None) => Framing::UntilClose,
    };
    Ok(Head {
        status,
        body,
        keep_alive,
    })
}

/// A chunk-size line's size (hex, extensions after `;` ignored).
fn chunk_size(line: &[u8]) -> Result<u64, Broken> {
    let digits = line
        .split(|&b| b == b';')
        .next()
        .unwrap_or(b"")
        .trim_ascii();
    if digits.is_empty() || digits.len() > 15 {
        return Err(Broken::Malformed("chunk size is not a hex number"));
    }
    digits.iter().try_fold(0u64, |size, &b| {
        let digit = (b as char)
            .to_digit(16)
            .ok_or(Broken::Malformed("chunk size is not a hex number"))?;
        Ok(size * 16 + u64::from(digit))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The answer `wire` gives to one GET, written to the client in pieces of `piece`
    /// bytes, the server's end then kept open (or closed, with `close`); the status the
    /// client saw (or how it broke), whether it kept the connection, and the request
    /// the server read.
    async fn exchange_with(
        wire: &[u8],
        piece: usize,
        close: bool,
    ) -> (Result<u16, Broken>, bool, Vec<u8>) {
        let (client, mut server) = tokio::io::duplex(1 << 20);
        let wire = wire.to_vec();
        let serving = tokio::spawn(async move {
            let mut request = Vec::new();
            let mut byte = [0u8; 1];
            while !request.ends_with(b"\r\n\r\n") {
                server.read_exact(&mut byte).await.unwrap();
                request.push(byte[0]);
            }
            for part in wire.chunks(piece.max(1)) {
                server.write_all(part).await.unwrap();
                tokio::task::yield_now().await;
            }
            (request, (!close).then_some(server))
        });
        let mut connection = Http1Connection::new(Box::new(client));
        let request = http::Request::builder()
            .uri("/api/0/projects/?cursor=1")
            .header("host", "sentry.example")
            .body(Bytes::new())
            .unwrap();
        let outcome = connection.exchange(&request, |_| {}).await;
        let (request, server) = serving.await.unwrap();
        // Unless closed, the server keeps its end open: a kept connection looks ready.
        let ready = connection.ready();
        drop(server);
        (outcome.map(|s| s.as_u16()), ready, request)
    }

    /// Every answer is tried whole and split at every size, so that no boundary
    /// between reads (inside a CRLF, a chunk size, the head) changes the outcome.
    async fn each_split(wire: &[u8]) -> (Result<u16, Broken>, bool) {
        let (first, kept, _) = exchange_with(wire, wire.len(), false).await;
        for piece in 1..wire.len() {
            let (outcome, ready, _) = exchange_with(wire, piece, false).await;
            assert_eq!(
                (&outcome, ready),
                (&first, kept),
                "split into {piece}-byte pieces"
            );
        }
        (first, kept)
    }

    #[tokio::test]
    async fn the_request_goes_out_as_http11_with_its_headers() {
        let (_, _, request) = exchange_with(b"HTTP/1.1 204 No Content\r\n\r\n", 64, false).await;
        assert_eq!(
            String::from_utf8(request).unwrap(),
            "GET /api/0/projects/?cursor=1 HTTP/1.1\r\nhost: sentry.example\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn a_length_framed_answer_keeps_the_connection() {
        let wire = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 3\r\n\r\nok\n";
        assert_eq!(each_split(wire).await, (Ok(200), true));
    }

    #[tokio::test]
    async fn a_chunked_answer_with_extensions_and_trailers_is_read_to_its_end() {
        let wire = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
            5;name=value\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-Trailer: yes\r\n\r\n";
        assert_eq!(each_split(wire).await, (Ok(404), true));
    }

    #[tokio::test]
    async fn interim_answers_are_skipped() {
        let wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 302 Found\r\nLocation: /\r\n\
            Content-Length: 0\r\n\r\n";
        assert_eq!(each_split(wire).await, (Ok(302), true));
    }

    #[tokio::test]
    async fn connection_close_or_http10_or_extra_bytes_end_the_connection() {
        for wire in [
            &b"HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 2\r\n\r\nok"[..],
            b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n",
        ] {
            let (outcome, ready, _) = exchange_with(wire, wire.len(), false).await;
            assert_eq!(
                (outcome, ready),
                (Ok(200), false),
                "{}",
                String::from_utf8_lossy(wire)
            );
        }
    }

    #[tokio::test]
    async fn a_body_without_length_runs_to_the_end_of_the_connection() {
        let (client, mut server) = tokio::io::duplex(1 << 16);
        let serving = tokio::spawn(async move {
            let mut request = [0u8; 256];
            let _ = server.read(&mut request).await.unwrap();
            server
                .write_all(b"HTTP/1.1 200 OK\r\n\r\nno length here")
                .await
                .unwrap();
            // Dropped: the end of the body.
        });
        let mut connection = Http1Connection::new(Box::new(client));
        let request = http::Request::new(Bytes::new());
        assert_eq!(
            connection.exchange(&request, |_| {}).await,
            Ok(http::StatusCode::OK)
        );
        serving.await.unwrap();
        assert!(!connection.ready());
    }

    #[tokio::test]
    async fn broken_and_malformed_answers_are_told_apart() {
        for (wire, expected) in [
            (&b""[..], Broken::BeforeAnswer),
            (b"HTTP/1.1 200 OK\r\nContent-Le", Broken::DuringAnswer),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
                Broken::DuringAnswer,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nok",
                Broken::Malformed("two different Content-Lengths"),
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok",
                Broken::Malformed("Content-Length is not a number"),
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                Broken::Malformed("chunk size is not a hex number"),
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokk\r\n0\r\n\r\n",
                Broken::Malformed("chunk data longer than its size"),
            ),
            (
                b"SSH-2.0-OpenSSH\r\n\r\n",
                Broken::Malformed("answer head is not HTTP/1.1"),
            ),
        ] {
            let (outcome, ready, _) = exchange_with(wire, wire.len().max(1), true).await;
            assert_eq!(outcome, Err(expected), "{}", String::from_utf8_lossy(wire));
            assert!(!ready);
        }
    }

    #[tokio::test]
    async fn a_post_says_its_length_and_carries_its_body() {
        let mut out = Vec::new();
        let request = http::Request::post("/api/1/envelope/")
            .header("host", "h")
            .body(Bytes::from_static(b"{}\n"))
            .unwrap();
        encode(&request, &mut out);
        assert_eq!(
            out,
            b"POST /api/1/envelope/ HTTP/1.1\r\nhost: h\r\ncontent-length: 3\r\n\r\n{}\n"
        );
    }
}
