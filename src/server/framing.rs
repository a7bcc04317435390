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
//! The scanner reads the framing exactly as hyper does, so that both always agree on
//! where each request ends (or the scanner refuses): a line is read whole however long
//! it is (the version at the end of a long request line, a `Content-Length` with any
//! number of leading zeros or spaces), and a chunk-size line byte by byte in the
//! states of hyper's chunked decoder. A header line whole in one read is taken in one
//! step (its end and its colon found with memchr, only `Content-Length`'s and
//! `Transfer-Encoding`'s values read byte by byte), and in a line cut by a read the
//! runs whose bytes need no look one by one (the rest of a request line, a header name
//! up to its colon, any other value) are taken to their next delimiter, keeping what
//! the byte-by-byte states keep (a request line's length and last 8 bytes, a name's
//! first 17). The fuzz target `framing_vs_hyper` (tests/fuzz)
//! checks this against hyper itself, which is why the scanner counts the requests it
//! saw ([`FramingScanner::messages`]), and why this module is public (the server is
//! its only other user).
//!
//! Refusing uses hyper's own path for malformed requests: the read is cut at the
//! offending byte, which becomes a NUL, a CR without its LF and an empty line. hyper
//! sees a complete head it cannot parse, answers 400 and closes the connection, and
//! nothing of that request reaches the upstream. (A NUL alone would not do: hyper
//! waits for an empty line before it parses again.) In a chunked body the request
//! fails the same way mid-body (where a NUL alone could pass as a chunk extension or a
//! trailer byte, the CR without LF cannot); the upstream sees one request cut short,
//! never two.
//!
//! HTTP/2 (after its preface) and upgraded connections (after a 101) are not checked:
//! their bytes are not HTTP/1.1 messages.

use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What replaces a refused byte: a NUL, a CR without its LF, then an empty line. hyper
/// refuses it wherever the scanner can refuse: in a head (no part of one may hold a
/// NUL; the empty line makes hyper parse the head at once), in a chunk-size line or
/// its extension (there a NUL is an extension byte, but the CR must be followed by
/// LF), after chunk data, and in trailers (hyper keeps a NUL as a trailer byte, then
/// wants LF after the CR).
const REFUSAL: &[u8] = b"\0\r\0\r\n\r\n";

/// The first line of the HTTP/2 connection preface.
const H2_PREFACE_LINE: &[u8] = b"PRI * HTTP/2.0";

/// The longest header name that frames a message (`transfer-encoding`).
const NAME_KEPT: usize = 17;

/// Where the scanner is in the stream of messages.
#[derive(Debug)]
enum State {
    /// A request head, or the empty lines before one.
    Head(Head),
    /// This many body bytes (`Content-Length`) before the next head.
    Body(u64),
    /// A chunk-size line, read byte by byte as hyper reads it.
    ChunkSize(ChunkSize),
    /// This many bytes of chunk data, then CRLF.
    ChunkData(u64),
    ChunkDataCr,
    ChunkDataLf,
    /// The trailer section after the last chunk; true once the current line has a
    /// byte (an empty line ends the message).
    Trailers {
        line_started: bool,
    },
    /// Not HTTP/1.1 messages (HTTP/2, an upgraded connection), or already refused.
    Unchecked,
}

/// A chunk-size line, in the states of hyper's chunked decoder: hex digits (at least
/// one, as many leading zeros as sent, refused when the size overflows 64 bits),
/// optional spaces and tabs, an optional extension (any byte but LF), then CRLF.
#[derive(Debug)]
enum ChunkSize {
    Start,
    Size(u64),
    Whitespace(u64),
    Extension(u64),
    Lf(u64),
}

/// What the current request head has said so far.
#[derive(Debug, Default)]
struct Head {
    seen_request_line: bool,
    http11: bool,
    hosts: u32,
    content_lengths: u32,
    content_length: u64,
    transfer_encodings: u32,
    chunked: bool,
    /// The line being read.
    line: HeadLine,
}

/// A line of a head, read byte by byte: whatever its length, only what frames the
/// message is kept.
#[derive(Debug, Default)]
enum HeadLine {
    /// No byte yet.
    #[default]
    Empty,
    /// The request line: its length, its last 8 bytes (where hyper reads the
    /// version) and whether it is so far the HTTP/2 preface's first line.
    Request { len: u64, tail: u64, preface: bool },
    /// A header name, before its colon (`len` may exceed what is kept).
    Name { kept: [u8; NAME_KEPT], len: usize },
    /// A header value, after the colon.
    Value(Field),
}

/// A header that frames the message, and its value as read so far.
#[derive(Debug)]
enum Field {
    Host,
    /// Parsed as hyper does: optional spaces and tabs, decimal digits (refused when
    /// the length overflows 64 bits), optional spaces and tabs.
    ContentLength(Digits),
    /// `chunked` (any case) between optional spaces and tabs; anything else is not.
    TransferEncoding(Coding),
    Other,
}

#[derive(Debug)]
enum Digits {
    Before,
    In(u64),
    After(u64),
    Invalid,
}

#[derive(Debug)]
enum Coding {
    /// This many bytes of `chunked` matched (none yet: maybe spaces before).
    Chunked(usize),
    After,
    Other,
}

/// A request the scanner saw complete (see [`FramingScanner::last_message`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Where its request line is in the scanned stream, without the CRLF.
    pub request_line: Range<u64>,
    /// Its body length: the `Content-Length`, or the sum of the chunk sizes.
    pub body_length: u64,
}

/// The byte-by-byte scanner, apart from I/O so it can be tested on plain bytes.
///
/// It reads the framing exactly as hyper does (whatever the length of a line, a
/// chunk size with any number of leading zeros, ...), so that both always agree on
/// where a request ends, or the scanner refuses. It also counts what it saw, for tests
/// and the differential fuzz target (tests/fuzz, `framing_vs_hyper`): see
/// [`FramingScanner::messages`].
#[derive(Debug)]
pub struct FramingScanner {
    state: State,
    after_cr: bool,
    /// True until the first line ends (where the HTTP/2 preface would be).
    at_connection_start: bool,
    /// Bytes scanned so far.
    position: u64,
    /// The current message: where its request line starts and ends, its body bytes.
    line_start: u64,
    line_end: u64,
    body_length: u64,
    heads: u64,
    messages: u64,
    last_message: Option<Message>,
}

impl Default for FramingScanner {
    fn default() -> Self {
        Self {
            state: State::Head(Head::default()),
            after_cr: false,
            at_connection_start: true,
            position: 0,
            line_start: 0,
            line_end: 0,
            body_length: 0,
            heads: 0,
            messages: 0,
            last_message: None,
        }
    }
}

impl FramingScanner {
    /// Checks `bytes`, the next ones read from the client: `Err(i)` when `bytes[i]`
    /// breaks strict framing. Nothing is checked after that.
    pub fn scan(&mut self, bytes: &[u8]) -> Result<(), usize> {
        let result = self.scan_bytes(bytes);
        self.position += match result {
            Ok(()) => bytes.len(),
            Err(at) => at,
        } as u64;
        result
    }

    fn scan_bytes(&mut self, bytes: &[u8]) -> Result<(), usize> {
        let mut i = 0;
        while i < bytes.len() {
            // A header line (or the head's empty line) whole in this read, CR LF and
            // all: read in one step, leaving what the byte-by-byte states would leave
            // at its LF. A line cut by the read, or holding a bare CR or LF, goes byte
            // by byte below.
            if let State::Head(head) = &mut self.state
                && head.seen_request_line
                && !self.after_cr
                && matches!(head.line, HeadLine::Empty)
                && let Some(end) = whole_line(&bytes[i..])
            {
                if end > 0 {
                    head.line = header_line(&bytes[i..i + end]);
                }
                let lf = i + end + 1;
                if !self.end_of_line(self.position + lf as u64) {
                    return self.refuse(lf);
                }
                i = lf + 1;
                continue;
            }
            let byte = bytes[i];
            match &mut self.state {
                State::Unchecked => return Ok(()),
                State::Body(remaining) => {
                    let take = (*remaining).min((bytes.len() - i) as u64);
                    *remaining -= take;
                    self.body_length += take;
                    i += take as usize;
                    if *remaining == 0 {
                        self.message_complete();
                    }
                    continue;
                }
                State::ChunkData(remaining) => {
                    let take = (*remaining).min((bytes.len() - i) as u64);
                    *remaining -= take;
                    self.body_length += take;
                    i += take as usize;
                    if *remaining == 0 {
                        self.state = State::ChunkDataCr;
                    }
                    continue;
                }
                State::Head(Head {
                    line: HeadLine::Value(Field::Host | Field::Other),
                    ..
                }) if !self.after_cr && byte != b'\r' && byte != b'\n' => {
                    // Framing reads nothing in this value but its end (cookies, user
                    // agents): skip to the next CR or LF.
                    i += memchr::memchr2(b'\r', b'\n', &bytes[i..]).unwrap_or(bytes.len() - i);
                    continue;
                }
                State::Head(Head {
                    line:
                        HeadLine::Request {
                            len,
                            tail,
                            preface: false,
                        },
                    ..
                }) if !self.after_cr && byte != b'\r' && byte != b'\n' => {
                    // The rest of a request line that is not the HTTP/2 preface: only
                    // its length and last 8 bytes count, as `line_byte` keeps them.
                    let run = memchr::memchr2(b'\r', b'\n', &bytes[i..]).unwrap_or(bytes.len() - i);
                    let piece = &bytes[i..i + run];
                    *len += run as u64;
                    for byte in &piece[run.saturating_sub(8)..] {
                        *tail = *tail << 8 | u64::from(*byte);
                    }
                    i += run;
                    continue;
                }
                State::Head(Head {
                    line: HeadLine::Name { kept, len },
                    ..
                }) if !self.after_cr && !matches!(byte, b'\r' | b'\n' | b':') => {
                    // The rest of a header name up to its colon or line end: kept as
                    // `name_byte` keeps it.
                    let run =
                        memchr::memchr3(b':', b'\r', b'\n', &bytes[i..]).unwrap_or(bytes.len() - i);
                    let piece = &bytes[i..i + run];
                    if let Some(room) = kept.get_mut(*len..) {
                        let copied = room.len().min(run);
                        room[..copied].copy_from_slice(&piece[..copied]);
                    }
                    *len += run;
                    i += run;
                    continue;
                }
                State::ChunkDataCr if byte == b'\r' => self.state = State::ChunkDataLf,
                State::ChunkDataLf if byte == b'\n' => {
                    self.state = State::ChunkSize(ChunkSize::Start)
                }
                State::ChunkDataCr | State::ChunkDataLf => return self.refuse(i),
                State::ChunkSize(ChunkSize::Lf(size)) => {
                    if byte != b'\n' {
                        return self.refuse(i);
                    }
                    self.state = match *size {
                        0 => State::Trailers {
                            line_started: false,
                        },
                        size => State::ChunkData(size),
                    };
                }
                State::ChunkSize(line) => match chunk_size_byte(line, byte) {
                    Some(next) => *line = next,
                    None => return self.refuse(i),
                },
                State::Head(_) | State::Trailers { .. } => {
                    // A line-based state: every line ends with CRLF.
                    if self.after_cr != (byte == b'\n') {
                        // A bare LF (hyper takes it as a line end), or a CR not
                        // followed by LF (hyper refuses it).
                        return self.refuse(i);
                    }
                    if byte == b'\n' {
                        self.after_cr = false;
                        if !self.end_of_line(self.position + i as u64) {
                            return self.refuse(i);
                        }
                    } else if byte == b'\r' {
                        self.after_cr = true;
                    } else {
                        self.line_byte(byte, i);
                    }
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

    /// Requests whose head the scanner accepted.
    pub fn heads(&self) -> u64 {
        self.heads
    }

    /// Requests the scanner saw complete, head and body.
    pub fn messages(&self) -> u64 {
        self.messages
    }

    /// The last request the scanner saw complete.
    pub fn last_message(&self) -> Option<&Message> {
        self.last_message.as_ref()
    }

    /// True while a request is under way: its request line started, its body not
    /// over. (Empty lines between requests are not part of one.)
    pub fn in_message(&self) -> bool {
        match &self.state {
            State::Head(head) => head.seen_request_line || !matches!(head.line, HeadLine::Empty),
            State::Unchecked => false,
            _ => true,
        }
    }

    /// False once the scanner refused, was stopped, or saw the HTTP/2 preface.
    pub fn checking(&self) -> bool {
        !matches!(self.state, State::Unchecked)
    }

    fn message_complete(&mut self) {
        self.messages += 1;
        self.last_message = Some(Message {
            request_line: self.line_start..self.line_end,
            body_length: self.body_length,
        });
        self.state = State::Head(Head::default());
    }

    /// A byte of a line (not CR or LF), at `bytes[i]`.
    fn line_byte(&mut self, byte: u8, i: usize) {
        let head = match &mut self.state {
            State::Trailers { line_started } => {
                *line_started = true;
                return;
            }
            State::Head(head) => head,
            _ => return,
        };
        match &mut head.line {
            HeadLine::Empty if !head.seen_request_line => {
                self.line_start = self.position + i as u64;
                head.line = HeadLine::Request {
                    len: 1,
                    tail: u64::from(byte),
                    preface: byte == H2_PREFACE_LINE[0],
                };
            }
            HeadLine::Empty => {
                head.line = HeadLine::Name {
                    kept: [0; NAME_KEPT],
                    len: 0,
                };
                name_byte(&mut head.line, byte);
            }
            HeadLine::Request { len, tail, preface } => {
                *preface = *preface && H2_PREFACE_LINE.get(*len as usize) == Some(&byte);
                *len += 1;
                *tail = *tail << 8 | u64::from(byte);
            }
            HeadLine::Name { .. } => name_byte(&mut head.line, byte),
            HeadLine::Value(field) => value_byte(field, byte),
        }
    }

    /// The current line has ended with the LF at `lf_at` in the stream (after a CR);
    /// false when it breaks framing.
    fn end_of_line(&mut self, lf_at: u64) -> bool {
        let at_connection_start = std::mem::take(&mut self.at_connection_start);
        let head = match &mut self.state {
            State::Trailers { line_started } => {
                if !std::mem::take(line_started) {
                    self.message_complete();
                }
                return true;
            }
            State::Head(head) => head,
            _ => return true,
        };
        match std::mem::take(&mut head.line) {
            HeadLine::Empty if !head.seen_request_line => true, // ignored, as hyper does
            HeadLine::Empty => {
                let framing_ok = head.hosts <= 1
                    && (head.hosts == 1 || !head.http11)
                    && head.content_lengths <= 1
                    && head.transfer_encodings <= 1
                    && !(head.content_lengths == 1 && head.transfer_encodings == 1)
                    && (head.transfer_encodings == 0 || head.chunked);
                if !framing_ok {
                    return false;
                }
                self.heads += 1;
                self.body_length = 0;
                if head.chunked {
                    self.state = State::ChunkSize(ChunkSize::Start);
                } else if head.content_length > 0 {
                    self.state = State::Body(head.content_length);
                } else {
                    self.message_complete();
                }
                true
            }
            HeadLine::Request { len, tail, preface } => {
                if at_connection_start && preface && len == H2_PREFACE_LINE.len() as u64 {
                    self.state = State::Unchecked;
                    return true;
                }
                head.seen_request_line = true;
                self.line_end = lf_at - 1;
                head.http11 = len >= 8 && tail == u64::from_be_bytes(*b"HTTP/1.1");
                true
            }
            // No colon: not a header hyper accepts either.
            HeadLine::Name { .. } => true,
            HeadLine::Value(Field::Host) => {
                head.hosts += 1;
                true
            }
            HeadLine::Value(Field::ContentLength(digits)) => {
                head.content_lengths += 1;
                match digits {
                    Digits::In(length) | Digits::After(length) => {
                        head.content_length = length;
                        true
                    }
                    Digits::Before | Digits::Invalid => false,
                }
            }
            HeadLine::Value(Field::TransferEncoding(coding)) => {
                head.transfer_encodings += 1;
                head.chunked = matches!(coding, Coding::After | Coding::Chunked(7));
                true
            }
            HeadLine::Value(Field::Other) => true,
        }
    }
}

/// The next state of a chunk-size line (before its LF) after `byte`; None when hyper
/// refuses the byte.
fn chunk_size_byte(line: &ChunkSize, byte: u8) -> Option<ChunkSize> {
    use ChunkSize::{Extension, Lf, Size, Start, Whitespace};
    let hex = (byte as char).to_digit(16).map(u64::from);
    match (line, hex, byte) {
        (Start, Some(digit), _) => Some(Size(digit)),
        (Size(size), Some(digit), _) => size
            .checked_mul(16)
            .and_then(|size| size.checked_add(digit))
            .map(Size),
        (Size(size) | Whitespace(size), _, b' ' | b'\t') => Some(Whitespace(*size)),
        (Size(size) | Whitespace(size), _, b';') => Some(Extension(*size)),
        (Size(size) | Whitespace(size) | Extension(size), _, b'\r') => Some(Lf(*size)),
        (Extension(_), _, b'\n') => None,
        (Extension(size), _, _) => Some(Extension(*size)),
        (Start | Size(_) | Whitespace(_) | Lf(_), _, _) => None,
    }
}

/// A byte of a header name (or its colon).
fn name_byte(line: &mut HeadLine, byte: u8) {
    let HeadLine::Name { kept, len } = line else {
        return;
    };
    if byte != b':' {
        if let Some(slot) = kept.get_mut(*len) {
            *slot = byte;
        }
        *len += 1;
        return;
    }
    // Only a name's first NAME_KEPT bytes are kept: a longer one frames nothing.
    let field = if *len > NAME_KEPT {
        Field::Other
    } else {
        field_of(&kept[..*len])
    };
    *line = HeadLine::Value(field);
}

/// What a header of this (whole) name frames.
fn field_of(name: &[u8]) -> Field {
    if name.eq_ignore_ascii_case(b"host") {
        Field::Host
    } else if name.eq_ignore_ascii_case(b"content-length") {
        Field::ContentLength(Digits::Before)
    } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
        Field::TransferEncoding(Coding::Chunked(0))
    } else {
        Field::Other
    }
}

/// The length of the line `bytes` start with, when it is all there and ends with CR
/// LF, its first CR or LF.
fn whole_line(bytes: &[u8]) -> Option<usize> {
    let end = memchr::memchr2(b'\r', b'\n', bytes)?;
    (bytes[end] == b'\r' && bytes.get(end + 1) == Some(&b'\n')).then_some(end)
}

/// A whole header line (without its CR LF) as the byte-by-byte states leave it at its
/// end: a name without a colon, or a value of the field its name frames.
fn header_line(line: &[u8]) -> HeadLine {
    let Some(colon) = memchr::memchr(b':', line) else {
        return HeadLine::Name {
            kept: [0; NAME_KEPT],
            len: line.len(),
        };
    };
    let mut field = field_of(&line[..colon]);
    if matches!(field, Field::ContentLength(_) | Field::TransferEncoding(_)) {
        for &byte in &line[colon + 1..] {
            value_byte(&mut field, byte);
        }
    }
    HeadLine::Value(field)
}

/// A byte of a header value.
fn value_byte(field: &mut Field, byte: u8) {
    let space = byte == b' ' || byte == b'\t';
    match field {
        Field::ContentLength(digits) => {
            let digit = byte.is_ascii_digit().then(|| u64::from(byte - b'0'));
            *digits = match (&*digits, digit) {
                (Digits::Before, _) if space => Digits::Before,
                (Digits::Before, Some(digit)) => Digits::In(digit),
                (Digits::In(length), Some(digit)) => length
                    .checked_mul(10)
                    .and_then(|length| length.checked_add(digit))
                    .map_or(Digits::Invalid, Digits::In),
                (Digits::In(length) | Digits::After(length), _) if space => Digits::After(*length),
                _ => Digits::Invalid,
            };
        }
        Field::TransferEncoding(coding) => {
            *coding = match *coding {
                Coding::Chunked(0) if space => Coding::Chunked(0),
                Coding::Chunked(n) if n < 7 && byte.eq_ignore_ascii_case(&b"chunked"[n]) => {
                    Coding::Chunked(n + 1)
                }
                Coding::Chunked(7) | Coding::After if space => Coding::After,
                _ => Coding::Other,
            };
        }
        Field::Host | Field::Other => {}
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
    /// `io` checked until `upgraded` is set (by whoever answers 101 on it).
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
    pass_to_io!(
        poll_write,
        poll_write_vectored,
        is_write_vectored,
        poll_flush,
        poll_shutdown
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What scanning a text gave: the index of the refused byte, if any, and the
    /// messages seen complete (request line, body length).
    #[derive(Debug, PartialEq)]
    struct Scanned {
        refused: Option<usize>,
        messages: Vec<(String, u64)>,
        in_message: bool,
    }

    /// Scans `text` in pieces of `step` bytes.
    fn scan_in(text: &str, step: usize) -> Scanned {
        let mut scanner = FramingScanner::default();
        let mut refused = None;
        let mut messages = Vec::new();
        for (n, piece) in text.as_bytes().chunks(step).enumerate() {
            let result = scanner.scan(piece);
            // Pieces of one byte see every message; larger ones the last of each.
            if scanner.messages() > messages.len() as u64 {
                let message = scanner.last_message().expect("a message");
                let line =
                    &text[message.request_line.start as usize..message.request_line.end as usize];
                messages.push((line.to_owned(), message.body_length));
            }
            if let Err(at) = result {
                refused = Some(n * step + at);
                break;
            }
        }
        Scanned {
            refused,
            messages,
            in_message: scanner.in_message(),
        }
    }

    /// Scans `text` byte by byte, and checks that scanning it whole and in pieces of
    /// 2 and 7 bytes refuses the same byte after as many messages.
    fn scan(text: &str) -> Scanned {
        let bytewise = scan_in(text, 1);
        for step in [2, 7, text.len().max(1)] {
            let pieces = scan_in(text, step);
            assert_eq!(
                (pieces.refused, pieces.in_message),
                (bytewise.refused, bytewise.in_message),
                "{text:?} in pieces of {step}"
            );
            assert_eq!(
                pieces.messages.last(),
                bytewise.messages.last(),
                "{text:?} in pieces of {step}"
            );
        }
        bytewise
    }

    fn check(text: &str) -> Option<usize> {
        scan(text).refused
    }

    fn zeros(n: usize) -> String {
        "0".repeat(n)
    }

    #[test]
    fn well_framed_requests_pass() {
        let pipelined = "GET / HTTP/1.1\r\nHost: a\r\n\r\n\
            POST /api/1/envelope/ HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhe\nlo\
            POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n\
            5;ext=1\r\nab\ncd\r\n0\r\nTrailer: x\r\n\r\n\
            GET /y HTTP/1.0\r\n\r\n";
        let scanned = scan(pipelined);
        assert_eq!(scanned.refused, None);
        assert!(!scanned.in_message);
        let expected = [
            ("GET / HTTP/1.1", 0),
            ("POST /api/1/envelope/ HTTP/1.1", 5),
            ("POST /x HTTP/1.1", 5),
            ("GET /y HTTP/1.0", 0),
        ];
        let expected: Vec<(String, u64)> = expected
            .iter()
            .map(|&(line, length)| (line.to_owned(), length))
            .collect();
        assert_eq!(scanned.messages, expected);
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

    /// A request with `Content-Length` and `Transfer-Encoding`, refused at the end of
    /// its head when the scanner reaches it as a head (it did not lose track before).
    const SMUGGLED: &str = "POST /smuggled HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

    fn refused_at_smuggled_head(text: &str) {
        let start = text.find(SMUGGLED).expect("the smuggled request");
        let at = start + SMUGGLED.find("\r\n\r\n").unwrap() + 3;
        assert_eq!(check(text), Some(at), "{text:?}");
    }

    #[test]
    fn chunk_sizes_are_read_as_hyper_reads_them() {
        let chunked = "POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
        // (chunk-size line, its size): any number of leading zeros, any case, spaces
        // and tabs before an extension, anything but LF in an extension.
        let sizes = [
            (format!("{}5", zeros(70)), 5),
            (format!("{}5;x=y", zeros(200)), 5),
            ("5".to_owned(), 5),
            ("0005 \t ;a=\"b c\";d".to_owned(), 5),
            ("A".to_owned(), 10),
            ("a\t".to_owned(), 10),
            ("5;\0\x7f\u{e9}=;;".to_owned(), 5),
        ];
        for (line, size) in sizes {
            let data = "x".repeat(size);
            let text = format!("{chunked}{line}\r\n{data}\r\n0\r\n\r\n{SMUGGLED}");
            assert_eq!(
                scan(&text).messages.first(),
                Some(&("POST /a HTTP/1.1".to_owned(), size as u64)),
                "{line:?}"
            );
            refused_at_smuggled_head(&text);
        }
        // The last chunk too.
        let text = format!("{chunked}{}\r\nT: x\r\n\r\n{SMUGGLED}", zeros(70));
        refused_at_smuggled_head(&text);
        // The attack: a chunk size of 70 zeros then the data's length. A scanner that
        // kept 64 bytes of the line read a size of 0; it took the data for the end of
        // the body and a new request, whose Content-Length covered the smuggled one.
        let hidden = format!(
            "\r\nPOST /x HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
            "\r\n0\r\n\r\n".len() + SMUGGLED.len()
        );
        let text = format!(
            "{chunked}{}{:x}\r\n{hidden}\r\n0\r\n\r\n{SMUGGLED}",
            zeros(70),
            hidden.len()
        );
        refused_at_smuggled_head(&text);
    }

    #[test]
    fn chunk_size_lines_hyper_refuses_are_refused() {
        let chunked = "POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
        // (chunk-size line and more, offset of the refused byte in it)
        let cases = [
            (" 5\r\n".to_owned(), 0),
            ("\r\n".to_owned(), 0),
            (";x\r\n".to_owned(), 0),
            ("5 5\r\n".to_owned(), 2),
            ("5 x\r\n".to_owned(), 2),
            ("5\n".to_owned(), 1),
            ("5;x\ny\r\n".to_owned(), 3),
            ("5\rx".to_owned(), 2),
            ("5;x\rx".to_owned(), 4),
            ("0x5\r\n".to_owned(), 1),
            ("+5\r\n".to_owned(), 0),
            // Overflow: 2^64, however many zeros before.
            (format!("1{}\r\n", zeros(16)), 16),
            (format!("{}1{}\r\n", zeros(80), zeros(16)), 96),
        ];
        for (line, at) in cases {
            let text = format!("{chunked}{line}");
            assert_eq!(check(&text), Some(chunked.len() + at), "{line:?}");
        }
        // The largest size is a size (the data never comes).
        let text = format!("{chunked}ffffffffffffffff\r\nabc");
        assert_eq!(check(&text), None);
        assert!(scan(&text).in_message);
    }

    #[test]
    fn long_lines_are_read_whole() {
        let long_target = format!("/{}", "a".repeat(100));
        // The version is at the end of the request line, however long it is.
        let text = format!("GET {long_target} HTTP/1.1\r\nX: y\r\n\r\n");
        assert_eq!(check(&text), Some(text.len() - 1), "no Host in HTTP/1.1");
        let text = format!("GET {long_target} HTTP/1.0\r\nX: y\r\n\r\n");
        assert_eq!(check(&text), None, "no Host in HTTP/1.0");
        let text = format!("GET {long_target} HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(
            scan(&text).messages,
            [(format!("GET {long_target} HTTP/1.1"), 0)]
        );

        // Header values of any length, read as hyper reads them.
        let pad = " ".repeat(80);
        let framed = [
            (format!("Content-Length: {}5", zeros(70)), 5),
            (format!("Content-Length:{pad}5{pad}"), 5),
            (format!("Content-Length:\t5\t{pad}"), 5),
            (format!("Content-Length: {}", zeros(100)), 0),
        ];
        for (header, length) in framed {
            let body = "x".repeat(length);
            let text = format!("POST / HTTP/1.1\r\nHost: a\r\n{header}\r\n\r\n{body}{SMUGGLED}");
            assert_eq!(
                scan(&text).messages.first(),
                Some(&("POST / HTTP/1.1".to_owned(), length as u64)),
                "{header:?}"
            );
            refused_at_smuggled_head(&text);
        }
        let chunked = [
            format!("Transfer-Encoding:{pad}chunked{pad}"),
            "transfer-encoding: \tCHUNKED".to_owned(),
        ];
        for header in chunked {
            let text = format!(
                "POST / HTTP/1.1\r\nHost: a\r\n{header}\r\n\r\n3\r\nabc\r\n0\r\n\r\n{SMUGGLED}"
            );
            assert_eq!(
                scan(&text).messages.first(),
                Some(&("POST / HTTP/1.1".to_owned(), 3)),
                "{header:?}"
            );
            refused_at_smuggled_head(&text);
        }
        // Long values that frame nothing, long names.
        let text = format!(
            "GET / HTTP/1.1\r\nHost: {0}\r\nX-{0}: {0}\r\nContent-Length-{0}: 5\r\n\r\n{SMUGGLED}",
            "b".repeat(100)
        );
        refused_at_smuggled_head(&text);
    }

    #[test]
    fn header_values_hyper_would_read_otherwise_are_refused() {
        // (header, then the head ends): refused at the LF that ends the header line.
        let refused = [
            "Content-Length: 18446744073709551616".to_owned(),
            format!("Content-Length: {}18446744073709551616", zeros(50)),
            "Content-Length: 5 5".to_owned(),
            "Content-Length: +5".to_owned(),
            "Content-Length: 5,5".to_owned(),
            "Content-Length:".to_owned(),
            "Content-Length: 0x5".to_owned(),
        ];
        for header in refused {
            let head = format!("POST / HTTP/1.1\r\nHost: a\r\n{header}\r\n");
            let text = format!("{head}\r\n");
            assert_eq!(check(&text), Some(head.len() - 1), "{header:?}");
        }
        // A Transfer-Encoding other than chunked: refused where the head ends.
        let not_chunked = [
            "Transfer-Encoding: chunke",
            "Transfer-Encoding: chunkedx",
            "Transfer-Encoding: xchunked",
            "Transfer-Encoding: chunked chunked",
            "Transfer-Encoding: gzip, chunked",
            "Transfer-Encoding:",
        ];
        for header in not_chunked {
            let text = format!("POST / HTTP/1.1\r\nHost: a\r\n{header}\r\n\r\n");
            assert_eq!(check(&text), Some(text.len() - 1), "{header:?}");
        }
        // The largest length is a length (the body never comes).
        let text = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551615\r\n\r\nabc";
        assert_eq!(check(text), None);
        assert!(scan(text).in_message);
    }

    #[test]
    fn a_cr_without_its_lf_is_refused() {
        let cases = [
            "GET / HTTP/1.1\rX\r\n",
            "GET / HTTP/1.1\r\nHost: a\rX\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\n\rX\r\n",
            "\rX",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nT: a\rX\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\rX",
        ];
        for text in cases {
            assert_eq!(check(text), Some(text.find('X').unwrap()), "{text:?}");
        }
    }

    #[test]
    fn requests_in_progress_and_between() {
        let cases = [
            ("", false),
            ("\r\n\r\n", false),
            ("\r", false),
            ("G", true),
            ("GET / HTTP/1.1\r\nHost: a\r\n", true),
            ("GET / HTTP/1.1\r\nHost: a\r\n\r\n", false),
            ("GET / HTTP/1.1\r\nHost: a\r\n\r\n\r\n", false),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\na",
                true,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nab",
                false,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r",
                true,
            ),
        ];
        for (text, in_message) in cases {
            let scanned = scan(text);
            assert_eq!(scanned.refused, None, "{text:?}");
            assert_eq!(scanned.in_message, in_message, "{text:?}");
        }
    }

    #[test]
    fn http2_preface_turns_checking_off() {
        let bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\n\x04\n\n";
        let mut scanner = FramingScanner::default();
        assert_eq!(scanner.scan(bytes), Ok(()));
        assert!(!scanner.checking());
        // Only as the first line of a connection.
        let text = "\r\nPRI * HTTP/2.0\r\n\r\nSM\n";
        assert_eq!(check(text), Some(text.len() - 1));
        let text = "PRI * HTTP/2.0X\r\n\r\n\n";
        assert_eq!(check(text), Some(text.len() - 1));
    }
}
