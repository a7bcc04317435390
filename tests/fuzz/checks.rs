//! The fuzz checks: one function per target, taking the raw fuzz input and asserting
//! the parser's invariants. Shared by the libFuzzer targets (fuzz_targets/*.rs) and by
//! the stable regression test tests/it/fuzz_corpus.rs, which replays the kept corpora.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::{Pin, pin};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use bytes::Bytes;
use http::header::{COOKIE, HeaderMap, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use ssogate::config::Settings;
use ssogate::gateway::{param, query_params};
use ssogate::policy::{
    MAX_RETURN_TARGET, PathError, normalize_path, return_target_or_root, validate_return_target,
};
use ssogate::rules::AllowedHosts;
use ssogate::server::framing::{FramingScanner, Message, StrictFraming};
use ssogate::session::CookieCodec;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use url::Url;

// ---------------------------------------------------------------------------------
// cookie_decoder

const COOKIE_NAME: &str = "_ssogate";
const SECRET: &str = "fuzz-session-secret-0123456789abcdefghijklmnop";
const OTHER_SECRET: &str = "another-session-secret-0123456789abcdefghijkl";
/// `CookieCodec` refuses sealed values longer than this (MAX_SEALED_LEN).
const MAX_SEALED_LEN: usize = 512;

static CODEC: LazyLock<CookieCodec> =
    LazyLock::new(|| CookieCodec::new(&[SECRET.to_owned()], true));
static ROTATED: LazyLock<CookieCodec> =
    LazyLock::new(|| CookieCodec::new(&[OTHER_SECRET.to_owned(), SECRET.to_owned()], true));
static STRANGER: LazyLock<CookieCodec> =
    LazyLock::new(|| CookieCodec::new(&[OTHER_SECRET.to_owned()], false));

/// Input: `[session id \0] cookie header \n cookie header ...`. Without a NUL the
/// whole input is both the session id and the headers.
///
/// - Cookie headers made of fuzz bytes never open (nothing can forge AES-GCM), however
///   many `_ssogate=` pieces they hold.
/// - A sealed session id opens to itself with the sealing secret (alone or after a
///   rotation), after any fuzz cookies in the same or earlier headers, unless the
///   sealed value is longer than the codec's limit; never with another secret or
///   under another cookie name.
pub fn cookie_decoder(data: &[u8]) {
    let (id, raw_headers) = match data.iter().position(|&b| b == 0) {
        Some(nul) => (&data[..nul], &data[nul + 1..]),
        None => (data, data),
    };
    let id = String::from_utf8_lossy(id);
    let Ok(values) = raw_headers
        .split(|&b| b == b'\n')
        .map(HeaderValue::from_bytes)
        .collect::<Result<Vec<_>, _>>()
    else {
        return;
    };
    let mut headers = HeaderMap::new();
    for value in &values {
        headers.append(COOKIE, value.clone());
    }
    assert_eq!(
        CODEC.open(&headers, COOKIE_NAME),
        None,
        "a fuzz-made cookie opened: {headers:?}"
    );
    assert_eq!(ROTATED.open(&headers, COOKIE_NAME), None);

    let sealed = CODEC.seal(COOKIE_NAME, &id, "/", None);
    assert_eq!(sealed.name(), COOKIE_NAME);
    let text = sealed.to_string();
    assert!(
        text.contains("HttpOnly") && text.contains("Secure") && text.contains("SameSite=Lax"),
        "{text}"
    );
    let value = sealed.value();
    if id.len() >= 12 {
        assert!(!value.contains(id.as_ref()), "the id shows in the cookie");
    }
    let expected = (value.len() <= MAX_SEALED_LEN).then(|| id.to_string());

    // The sealed cookie after the fuzz cookies, in its own header...
    let mut with_own_header = headers.clone();
    with_own_header.append(
        COOKIE,
        HeaderValue::from_str(&format!("{COOKIE_NAME}={value}")).expect("sealed value"),
    );
    assert_eq!(CODEC.open(&with_own_header, COOKIE_NAME), expected);
    assert_eq!(ROTATED.open(&with_own_header, COOKIE_NAME), expected);
    assert_eq!(STRANGER.open(&with_own_header, COOKIE_NAME), None);
    assert_eq!(CODEC.open(&with_own_header, "_other"), None);

    // ... and appended to the last fuzz header, as a browser joins cookies.
    let mut joined = headers.clone();
    let last = values.last().map(HeaderValue::as_bytes).unwrap_or_default();
    let mut bytes = last.to_vec();
    bytes.extend_from_slice(format!("; {COOKIE_NAME}={value}").as_bytes());
    if let Ok(last) = HeaderValue::from_bytes(&bytes) {
        joined.remove(COOKIE);
        for value in &values[..values.len().saturating_sub(1)] {
            joined.append(COOKIE, value.clone());
        }
        joined.append(COOKIE, last);
        // The pieces are split on `;`, so the sealed piece stands alone whatever the
        // fuzz cookies before it hold, non-ASCII bytes included (found by this target:
        // a non-UTF-8 byte used to hide the whole header; regression-* in the corpus).
        assert_eq!(CODEC.open(&joined, COOKIE_NAME), expected, "{joined:?}");
    }
}

// ---------------------------------------------------------------------------------
// path_normalize

/// - Never panics; an error is exactly: no leading `/` (NotAbsolute), bad UTF-8 after
///   decoding (only possible with a `%`), or a control character.
/// - The output is canonical: idempotent; starts with `/`; no empty segment (`//`);
///   no segment that is, or decodes to, `.` or `..`; printable ASCII only (no control
///   characters, raw or encoded); no raw `?` or `#`; every `%` starts a valid escape;
///   and it is a valid `http::uri::PathAndQuery` path with no query.
pub fn path_normalize(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let result = normalize_path(raw);
    let path = match result {
        Err(PathError::NotAbsolute) => {
            assert!(!raw.starts_with('/'), "{raw:?} is absolute");
            return;
        }
        Err(PathError::InvalidUtf8) => {
            assert!(raw.starts_with('/') && raw.contains('%'), "{raw:?}");
            return;
        }
        Err(PathError::ControlCharacter) => {
            assert!(raw.starts_with('/'), "{raw:?}");
            return;
        }
        Ok(path) => path,
    };
    assert!(
        raw.starts_with('/'),
        "{raw:?} is relative but gave {path:?}"
    );
    assert!(!raw.chars().any(char::is_control), "{raw:?} gave {path:?}");
    assert!(path.starts_with('/'), "{raw:?} -> {path:?}");
    assert!(!path.contains("//"), "{raw:?} -> {path:?}");
    assert!(
        path.bytes().all(|b| b.is_ascii_graphic()),
        "{raw:?} -> {path:?}"
    );
    assert!(!path.contains(['?', '#', '\\']), "{raw:?} -> {path:?}");
    let segments: Vec<&str> = path[1..].split('/').collect();
    for (i, segment) in segments.iter().enumerate() {
        assert!(
            !segment.is_empty() || i == segments.len() - 1,
            "{raw:?} -> {path:?}"
        );
        let decoded = percent_decode(segment)
            .unwrap_or_else(|| panic!("{raw:?} -> {path:?}: segment {segment:?} has a bad escape"));
        assert!(decoded != b"." && decoded != b"..", "{raw:?} -> {path:?}");
        let decoded = String::from_utf8(decoded).expect("the output decodes to UTF-8");
        assert!(
            !decoded.chars().any(char::is_control),
            "{raw:?} -> {path:?}"
        );
    }
    assert_eq!(
        normalize_path(&path).as_ref(),
        Ok(&path),
        "not idempotent: {raw:?}"
    );
    let parsed = PathAndQuery::from_str(&path)
        .unwrap_or_else(|e| panic!("{raw:?} -> {path:?} is not a PathAndQuery: {e}"));
    assert_eq!(parsed.path(), path);
    assert_eq!(parsed.query(), None);
    // Without `%`, `.` segments or repeated slashes there is nothing to change except
    // characters that must be encoded.
    if !raw.contains(['%', '.']) && !raw.contains("//") {
        let unescaped = percent_decode(&path).expect("valid escapes");
        assert_eq!(unescaped, raw.as_bytes(), "{raw:?} -> {path:?}");
    }
}

/// Percent-decodes `text`, `None` if a `%` is not followed by two hex digits.
fn percent_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

// ---------------------------------------------------------------------------------
// redirect_validator

static PUBLIC_URL: LazyLock<Url> =
    LazyLock::new(|| Url::parse("https://sentry.example.com/").expect("public URL"));
static ALLOWED: LazyLock<AllowedHosts> = LazyLock::new(|| {
    AllowedHosts::new([
        "docs.example.com".to_string(),
        ".trusted.example.org".to_string(),
    ])
});

/// - Never panics; a target that is not an absolute path or http(s) URL, or that has a
///   control character, is refused.
/// - An accepted target resolves to an http(s) URL without user info, on the public
///   URL's origin (https, sentry.example.com, 443) or over https on docs.example.com,
///   trusted.example.org or a subdomain of it on a dot boundary.
/// - The answer is stable: validating the returned URL gives the same URL, and
///   `return_target_or_root` agrees (the start page when refused), unless the target
///   or its URL is longer than `MAX_RETURN_TARGET`, which it refuses.
pub fn redirect_validator(data: &[u8]) {
    let Ok(target) = std::str::from_utf8(data) else {
        return;
    };
    let result = validate_return_target(target, &PUBLIC_URL, &ALLOWED);
    let fallback = return_target_or_root(target, &PUBLIC_URL, &ALLOWED);
    let Some(url) = result else {
        if target.len() <= MAX_RETURN_TARGET {
            assert_eq!(fallback.as_deref(), Ok("https://sentry.example.com/"));
        }
        return;
    };
    match fallback {
        Ok(fallback) => assert_eq!(fallback, url.as_str()),
        Err(_) => {
            assert!(target.len() > MAX_RETURN_TARGET || url.as_str().len() > MAX_RETURN_TARGET)
        }
    }
    assert!(
        target.starts_with('/') || target.starts_with("http://") || target.starts_with("https://"),
        "{target:?} -> {url}"
    );
    assert!(!target.chars().any(char::is_control), "{target:?} -> {url}");
    assert!(
        matches!(url.scheme(), "http" | "https"),
        "{target:?} -> {url}"
    );
    assert!(
        url.username().is_empty() && url.password().is_none(),
        "{target:?} -> {url}"
    );
    let host = url.host_str().unwrap_or_default();
    let same_origin = url.scheme() == "https"
        && host == "sentry.example.com"
        && url.port_or_known_default() == Some(443);
    let allowed_host = url.scheme() == "https"
        && (host == "docs.example.com"
            || host == "trusted.example.org"
            || host.ends_with(".trusted.example.org"));
    assert!(
        same_origin || allowed_host,
        "{target:?} -> {url} is on a foreign origin"
    );
    // What the browser gets is an absolute URL with that very host.
    assert!(
        url.as_str().starts_with(&format!("https://{host}")),
        "{target:?} -> {url}"
    );
    let again = validate_return_target(url.as_str(), &PUBLIC_URL, &ALLOWED);
    assert_eq!(again.as_ref(), Some(&url), "not stable: {target:?}");
}

// ---------------------------------------------------------------------------------
// callback_query

const SINGLE: [&str; 3] = ["state", "code", "error"];

/// The request `/oauth2/callback?<input>` (inputs that are no valid URI are skipped).
///
/// - Never panics.
/// - Ok: the parameters are the query's, in order; each of state, code and error
///   occurs at most once, and `param` finds exactly those present.
/// - Err: the message names, in backquotes, one of state/code/error, and that one
///   really occurs more than once.
pub fn callback_query(data: &[u8]) {
    let mut uri = b"/oauth2/callback?".to_vec();
    uri.extend_from_slice(data);
    let Ok(uri) = http::Uri::try_from(uri.as_slice()) else {
        return;
    };
    let query = uri.query().unwrap_or_default().to_owned();
    let request = http::Request::builder()
        .uri(uri)
        .body(())
        .expect("a valid URI");
    let expected: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let count = |name: &str| expected.iter().filter(|(n, _)| n == name).count();
    match query_params(&request, &SINGLE) {
        Ok(params) => {
            assert_eq!(params, expected, "query {query:?}");
            for name in SINGLE {
                let occurrences = params.iter().filter(|(n, _)| n == name).count();
                assert!(occurrences <= 1, "`{name}` repeated in {query:?}");
                let first = params.iter().find(|(n, _)| n == name);
                assert_eq!(param(&params, name), first.map(|(_, v)| v.as_str()));
            }
        }
        Err(message) => {
            assert!(!message.is_empty());
            let named: Vec<&str> = SINGLE
                .into_iter()
                .filter(|name| message.contains(&format!("`{name}`")))
                .collect();
            assert!(
                named.len() == 1 && count(named[0]) > 1,
                "{message:?} for query {query:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------
// config_loader

/// UTF-8 input as a config file, no environment.
///
/// - Never panics; an error's Display is non-empty and names the origin for a syntax
///   error.
/// - The client secret never shows in, nor changes, the outcome: when the file parses
///   and `oidc.client_secret` is a non-empty string, loading the same table with
///   another non-empty secret gives the same Ok/Err and the same error text, and an
///   error of the original file contains the secret only if the other one does (i.e.
///   the text came from another key's value). The one exception is the example
///   config's placeholder, a public string refused for what it is.
///
/// Inputs with a string that names a device, /proc or /sys file, a FIFO or a file over
/// 1 MiB are skipped: the loader reads `*_file` keys as given (a config naming
/// /dev/zero would just exhaust memory, the operator's own doing).
pub fn config_loader(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let table: Option<toml::Table> = text.parse().ok();
    if let Some(table) = &table
        && names_an_unsafe_file(&toml::Value::Table(table.clone()))
    {
        return;
    }
    let original = Settings::from_toml(text, "fuzz.toml", std::iter::empty());
    if let Err(e) = &original {
        let message = e.to_string();
        assert!(!message.trim().is_empty(), "empty error for {text:?}");
        if table.is_none() {
            assert!(message.contains("fuzz.toml"), "{message}");
        }
    }
    let Some(table) = table else {
        return;
    };
    let Some(secret) = table
        .get("oidc")
        .and_then(|oidc| oidc.get("client_secret"))
        .and_then(toml::Value::as_str)
        .filter(|s| !s.is_empty() && *s != ssogate::config::CLIENT_SECRET_PLACEHOLDER)
        .map(str::to_owned)
    else {
        return;
    };
    const REPLACEMENT: &str = "\u{2042}-replacement-client-secret";
    let mut replaced = table.clone();
    if let Some(toml::Value::Table(oidc)) = replaced.get_mut("oidc") {
        oidc.insert("client_secret".into(), REPLACEMENT.into());
    }
    let load = |table: &toml::Table| {
        let text = toml::to_string(table).expect("a parsed table serializes");
        Settings::from_toml(&text, "fuzz.toml", std::iter::empty()).map_err(|e| e.to_string())
    };
    let with_secret = load(&table);
    let with_other = load(&replaced);
    match (&with_secret, &with_other) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.oidc.client_secret, secret);
            assert_eq!(b.oidc.client_secret, REPLACEMENT);
        }
        (Err(a), Err(b)) => assert_eq!(a, b, "the error depends on the client secret"),
        _ => panic!(
            "the outcome depends on the client secret: {:?} vs {:?}",
            with_secret.as_ref().err(),
            with_other.as_ref().err()
        ),
    }
    if let (Err(e), Err(other)) = (&original, &with_other) {
        let message = e.to_string();
        assert!(
            !message.contains(&secret) || other.contains(&secret),
            "the client secret {secret:?} shows in the error: {message}"
        );
    }
}

/// True if a string anywhere in `value` names a file the fuzzer must not read.
fn names_an_unsafe_file(value: &toml::Value) -> bool {
    match value {
        toml::Value::String(s) => unsafe_file(s),
        toml::Value::Array(items) => items.iter().any(names_an_unsafe_file),
        toml::Value::Table(table) => table.values().any(names_an_unsafe_file),
        _ => false,
    }
}

fn unsafe_file(text: &str) -> bool {
    if text.is_empty() || text.contains('\0') {
        return false;
    }
    let path = Path::new(text);
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    if meta.is_dir() {
        return false;
    }
    let special = std::fs::canonicalize(path).map_or(true, |real| {
        ["/dev", "/proc", "/sys"]
            .iter()
            .any(|prefix| real.starts_with(prefix))
    });
    special || !meta.is_file() || meta.len() > 1 << 20
}

// ---------------------------------------------------------------------------------
// framing_vs_hyper

/// Input: the bytes a client sends on one HTTP/1.1 connection, then it closes.
///
/// They go to `server::framing::FramingScanner` and, apart, to hyper's HTTP/1.1
/// server (the gateway's options; a service that reads each body whole). Both must
/// agree on where each request ends:
///
/// - Requests both saw complete are the same, in order: request line (method, target,
///   version) and body length.
/// - hyper completing more requests than the scanner is allowed only when the scanner
///   refused (it is stricter; see the last rule).
/// - The scanner completing more requests than hyper is allowed only when hyper
///   stopped reading on its own, before the client closed: it refused (a 400, a body
///   that fails to decode) or closed the connection (HTTP/1.0, `Connection: close`).
///   If hyper was still reading a request when the client closed, the scanner took
///   bytes hyper still reads for a new request: the dangerous direction.
/// - When neither refused nor stopped: when the client closes, the scanner is in the
///   middle of a request exactly when hyper is.
/// - The HTTP/2 preface stops the scanner; hyper (HTTP/1.1 only here) then reads no
///   request.
/// - Where the scanner refuses byte `at`, hyper is also given the bytes as the
///   gateway hands them over (`StrictFraming`: the read cut at `at`, the refusal
///   bytes), in the worst case of a read that ends right after `at`, so that all the
///   later bytes get through unchecked (and of one that ends right before it, so that
///   hyper may hold part of a head when the refusal comes). hyper must then stop on
///   its own (before the client closes), start no request whose head the scanner did
///   not accept, and complete no request the scanner did not complete.
///
/// The scanner's view must not depend on how the bytes are split into reads (whole,
/// one by one, in pieces of 7). hyper runs without a timer (no header-read timeout,
/// which would need one) on an in-memory client; the connection future, service
/// included, is polled here on this thread (no runtime needed) until it waits for
/// bytes that never come; then the client closes.
pub fn framing_vs_hyper(data: &[u8]) {
    let scanned = scan_framing(data, 1);
    for step in [7, data.len().max(1)] {
        let pieces = scan_framing(data, step);
        assert_eq!(
            pieces.summary(),
            scanned.summary(),
            "the scanner reads differently in pieces of {step}"
        );
    }
    let n = scanned.messages.len();

    let hyper = serve(data, Vec::new(), false);
    let complete = hyper.complete();
    for (i, (message, (seen, length))) in scanned.messages.iter().zip(&complete).enumerate() {
        assert!(
            same_request(data, message, seen, *length),
            "request {i}: the scanner saw {:?} with {} body bytes, hyper {seen:?} with {length}",
            String::from_utf8_lossy(request_line(data, message)),
            message.body_length,
        );
    }
    if scanned.stopped {
        assert!(
            hyper.seen.is_empty(),
            "hyper read a request after the HTTP/2 preface"
        );
    }
    if complete.len() > n {
        assert!(
            scanned.refused.is_some(),
            "hyper read {} requests, the scanner {n} without refusing: {hyper:?}",
            complete.len()
        );
    }
    if n > complete.len() {
        assert!(
            hyper.stopped_on_its_own,
            "the scanner read {n} requests, hyper {} and was still reading: {hyper:?}",
            complete.len()
        );
    }
    if scanned.refused.is_none() && !scanned.stopped && !hyper.stopped_on_its_own {
        assert_eq!(
            scanned.in_message,
            hyper.mid_request(),
            "in the middle of a request at the end, scanner and hyper: {hyper:?}"
        );
    }

    if let Some(at) = scanned.refused {
        let through = serve(data, vec![at, at + 1], true);
        assert!(
            through.stopped_on_its_own,
            "after the refusal at {at}, hyper still reads: {through:?}"
        );
        assert!(
            through.seen.len() as u64 <= scanned.heads,
            "hyper started {} requests after the refusal at {at}, the scanner accepted {} heads: {through:?}",
            through.seen.len(),
            scanned.heads
        );
        let complete = through.complete();
        assert!(
            complete.len() <= n,
            "hyper completed {} requests after the refusal at {at}, the scanner {n}: {through:?}",
            complete.len()
        );
        for (message, (seen, length)) in scanned.messages.iter().zip(&complete) {
            assert!(same_request(data, message, seen, *length), "{through:?}");
        }
    }
}

/// What the scanner made of the input.
struct Scanned {
    /// The requests it saw complete (all of them when scanning byte by byte).
    messages: Vec<Message>,
    count: u64,
    heads: u64,
    refused: Option<usize>,
    /// By the HTTP/2 preface.
    stopped: bool,
    in_message: bool,
}

impl Scanned {
    fn summary(&self) -> (u64, u64, Option<usize>, bool, bool) {
        (
            self.count,
            self.heads,
            self.refused,
            self.stopped,
            self.in_message,
        )
    }
}

fn scan_framing(data: &[u8], step: usize) -> Scanned {
    let mut scanner = FramingScanner::default();
    let mut messages = Vec::new();
    let mut refused = None;
    for (n, piece) in data.chunks(step).enumerate() {
        let result = scanner.scan(piece);
        if scanner.messages() > messages.len() as u64 {
            messages.extend(scanner.last_message().cloned());
        }
        if let Err(at) = result {
            refused = Some(n * step + at);
            break;
        }
    }
    Scanned {
        messages,
        count: scanner.messages(),
        heads: scanner.heads(),
        refused,
        stopped: refused.is_none() && !scanner.checking(),
        in_message: scanner.in_message(),
    }
}

fn request_line<'a>(data: &'a [u8], message: &Message) -> &'a [u8] {
    let line = &message.request_line;
    &data[line.start as usize..line.end as usize]
}

/// Whether the scanner's request is the one hyper read (hyper's target parsed from
/// the same bytes).
fn same_request(data: &[u8], message: &Message, seen: &Seen, length: u64) -> bool {
    let line = request_line(data, message);
    let (Some(first), Some(last)) = (
        line.iter().position(|&b| b == b' '),
        line.iter().rposition(|&b| b == b' '),
    ) else {
        return false;
    };
    if first >= last {
        return false;
    }
    let version = match &line[last + 1..] {
        b"HTTP/1.1" => Version::HTTP_11,
        b"HTTP/1.0" => Version::HTTP_10,
        _ => return false,
    };
    let target = Bytes::copy_from_slice(&line[first + 1..last]);
    Method::from_bytes(&line[..first]).is_ok_and(|method| method == seen.method)
        && Uri::from_maybe_shared(target).is_ok_and(|uri| uri == seen.uri)
        && version == seen.version
        && message.body_length == length
}

/// A request hyper handed to the service.
#[derive(Debug)]
struct Seen {
    method: Method,
    uri: Uri,
    version: Version,
    /// None while its body is being read.
    body: Option<BodyEnd>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum BodyEnd {
    Complete(u64),
    /// hyper failed to read the body: it refused it (chunked, before the client
    /// closed) or the client closed in its middle.
    Failed {
        at_eof: bool,
    },
}

/// What hyper made of the input.
#[derive(Debug)]
struct Served {
    seen: Vec<Seen>,
    /// The connection ended before the client closed (hyper refused or closed).
    stopped_on_its_own: bool,
    result: Result<(), hyper::Error>,
}

impl Served {
    /// The requests hyper read whole, with their body lengths.
    fn complete(&self) -> Vec<(&Seen, u64)> {
        self.seen
            .iter()
            .map_while(|seen| match seen.body {
                Some(BodyEnd::Complete(length)) => Some((seen, length)),
                _ => None,
            })
            .collect()
    }

    /// Whether hyper was in the middle of a request when the client closed (when it
    /// did not stop on its own): reading a head, or a body.
    fn mid_request(&self) -> bool {
        let reading_body = |seen: &Seen| !matches!(seen.body, Some(BodyEnd::Complete(_)));
        self.result.is_err() || self.seen.iter().any(reading_body)
    }
}

/// The client's side of the connection, shared with the harness.
#[derive(Default)]
struct ClientState {
    /// Everything was read and the reader waits for more.
    starved: AtomicBool,
    /// The client closed: reads return end of file.
    closed: AtomicBool,
}

/// A client that sends `data` in reads that end at each of `cuts` (and wherever the
/// reader's buffer is full), then waits until the harness closes it.
struct Client {
    data: Vec<u8>,
    sent: usize,
    cuts: Vec<usize>,
    state: Arc<ClientState>,
}

impl AsyncRead for Client {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.sent < this.data.len() {
            let sent = this.sent;
            let end = this
                .cuts
                .iter()
                .copied()
                .find(|&cut| cut > sent)
                .unwrap_or(this.data.len())
                .min(this.data.len())
                .min(sent + buf.remaining());
            buf.put_slice(&this.data[sent..end]);
            this.sent = end;
            Poll::Ready(Ok(()))
        } else if this.state.closed.load(Ordering::Relaxed) {
            Poll::Ready(Ok(()))
        } else {
            this.state.starved.store(true, Ordering::Relaxed);
            Poll::Pending
        }
    }
}

impl AsyncWrite for Client {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// hyper's HTTP/1.1 server as `server::connection_builder` sets it up, without the
/// timer (and so without the header-read timeout).
fn http1_builder() -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .header_read_timeout(None)
        .max_buf_size(64 * 1024)
        .keep_alive(true);
    builder
}

/// Serves one connection whose client sends `data` (through `StrictFraming` when
/// `checked`), until it ends.
fn serve(data: &[u8], cuts: Vec<usize>, checked: bool) -> Served {
    let state = Arc::new(ClientState::default());
    let client = Client {
        data: data.to_vec(),
        sent: 0,
        cuts,
        state: state.clone(),
    };
    let log = Arc::new(Mutex::new(Vec::<Seen>::new()));
    let service = {
        let log = log.clone();
        let state = state.clone();
        service_fn(move |request: Request<Incoming>| {
            let log = log.clone();
            let state = state.clone();
            async move {
                let index = {
                    let mut log = log.lock().expect("log");
                    log.push(Seen {
                        method: request.method().clone(),
                        uri: request.uri().clone(),
                        version: request.version(),
                        body: None,
                    });
                    log.len() - 1
                };
                let mut body = request.into_body();
                let mut length = 0;
                let end = loop {
                    match body.frame().await {
                        None => break BodyEnd::Complete(length),
                        Some(Ok(frame)) => {
                            length += frame.data_ref().map_or(0, |data| data.len() as u64);
                        }
                        Some(Err(_)) => {
                            break BodyEnd::Failed {
                                at_eof: state.closed.load(Ordering::Relaxed),
                            };
                        }
                    }
                };
                log.lock().expect("log")[index].body = Some(end);
                // Not 2xx: a 2xx to CONNECT would turn the connection into a tunnel.
                let response = Response::builder()
                    .status(StatusCode::NOT_FOUND)
                    .body(Empty::<Bytes>::new())
                    .expect("a response");
                Ok::<_, Infallible>(response)
            }
        })
    };
    let builder = http1_builder();
    let result = if checked {
        let io = StrictFraming::new(client, Arc::new(AtomicBool::new(false)));
        run_connection(
            builder
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades(),
            &state,
        )
    } else {
        run_connection(
            builder
                .serve_connection(TokioIo::new(client), service)
                .with_upgrades(),
            &state,
        )
    };
    let seen = std::mem::take(&mut *log.lock().expect("log"));
    Served {
        seen,
        stopped_on_its_own: !state.closed.load(Ordering::Relaxed),
        result,
    }
}

/// Records that the connection asked to be polled again.
struct Woken(AtomicBool);

impl Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Polls the connection (which does all the work on this thread: the service runs
/// inside it) until it ends. When it waits for the client and nothing else, the client
/// closes.
fn run_connection<F: Future<Output = hyper::Result<()>>>(
    connection: F,
    client: &ClientState,
) -> hyper::Result<()> {
    let woken = Arc::new(Woken(AtomicBool::new(false)));
    let waker = Waker::from(woken.clone());
    let mut cx = Context::from_waker(&waker);
    let mut connection = pin!(connection);
    for _ in 0..1_000_000 {
        woken.0.store(false, Ordering::Relaxed);
        if let Poll::Ready(result) = connection.as_mut().poll(&mut cx) {
            return result;
        }
        if woken.0.load(Ordering::Relaxed) {
            continue;
        }
        assert!(
            client.starved.load(Ordering::Relaxed) && !client.closed.load(Ordering::Relaxed),
            "hyper waits for something else than the client"
        );
        client.closed.store(true, Ordering::Relaxed);
    }
    panic!("hyper never finishes the connection");
}
