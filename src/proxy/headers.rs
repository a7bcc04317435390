//! Header operations on forwarded requests and responses, one small function each.

use std::borrow::Cow;
use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};

use crate::cookie_header::cookie_pairs;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// How many names [`HOP_BY_HOP`] lists.
const HOP_BY_HOP_COUNT: usize = 8;

/// Headers that describe one connection, never the message (RFC 9110 section 7.6.1),
/// plus the proxy-only ones. (Constants: this runs on every forwarded request and
/// response, and a `&str` name would be parsed each time.)
const HOP_BY_HOP: [HeaderName; HOP_BY_HOP_COUNT] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// The items of a comma-separated list header (`Connection`, `Upgrade`), over all its
/// lines, trimmed, blank ones skipped.
pub fn list_items<'h>(headers: &'h HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'h str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|item| !item.is_empty())
}

/// Removes hop-by-hop headers, those named in `Connection`, and `Upgrade` (from an
/// upstream's response).
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Only the names found are removed: one comparison per header present costs less
    // than nine hashed removals that mostly find nothing (this runs on every request
    // and response).
    let mut found = [false; HOP_BY_HOP_COUNT];
    let mut upgrade = false;
    for name in headers.keys() {
        if let Some(at) = HOP_BY_HOP.iter().position(|hop| hop == name) {
            found[at] = true;
        }
        upgrade |= name == header::UPGRADE;
    }
    if found[0] {
        // `Connection` (HOP_BY_HOP[0]): the headers it names go too.
        if headers.get_all(header::CONNECTION).iter().nth(1).is_none() {
            // One `Connection` (the usual case): taken out first, so that the headers
            // it names can be removed by their text, which is parsed on the stack.
            if let Some(connection) = headers.remove(header::CONNECTION) {
                let items = connection
                    .to_str()
                    .ok()
                    .into_iter()
                    .flat_map(|v| v.split(','));
                for name in items.map(str::trim).filter(|item| !item.is_empty()) {
                    headers.remove(name);
                }
            }
        } else {
            let named: Vec<HeaderName> = list_items(headers, &header::CONNECTION)
                .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
                .collect();
            for name in named {
                headers.remove(name);
            }
        }
    }
    for (name, _) in HOP_BY_HOP.iter().zip(found).filter(|(_, found)| *found) {
        headers.remove(name);
    }
    if upgrade {
        headers.remove(header::UPGRADE);
    }
}

/// A client's `Connection` header named a header that must reach the upstream.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("the Connection header names `{0}`, which is not a hop-by-hop header")]
pub struct EndToEndInConnection(pub String);

/// Removes a client's hop-by-hop headers, before anything decides on the request:
/// `Connection` and every header it names, `Keep-Alive`, `TE`, `Trailer`,
/// `Transfer-Encoding`, `Proxy` and every `Proxy-*` header, and `Upgrade`. With
/// `upgrade` (a real upgrade, [`super::upgrade_protocol`]) the request keeps
/// `Connection: upgrade` and that `Upgrade`.
///
/// A `Connection` that names a header for which `end_to_end` is true (its name
/// folded: lower case, `_` as `-`) is refused: the caller answers 400.
pub fn remove_client_hop_by_hop(
    headers: &mut HeaderMap,
    upgrade: Option<HeaderValue>,
    end_to_end: impl Fn(&str) -> bool,
) -> Result<(), EndToEndInConnection> {
    if let Some(token) =
        list_items(headers, &header::CONNECTION).find(|token| end_to_end(&folded(token)))
    {
        return Err(EndToEndInConnection(token.to_owned()));
    }
    remove_hop_by_hop(headers);
    // Also their spellings with `_` for `-` (`Transfer_Encoding`, `Keep_Alive`,
    // `Proxy_Authorization`), which WSGI servers fold into the same variable.
    let proxy_headers: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let name = name.as_str();
            let proxy = |name: &str| name == "proxy" || name.starts_with("proxy-");
            proxy(name)
                || (name.contains('_') && {
                    let folded = folded(name);
                    proxy(&folded) || HOP_BY_HOP.iter().any(|h| h.as_str() == folded)
                })
        })
        .cloned()
        .collect();
    for name in proxy_headers {
        headers.remove(name);
    }
    if let Some(protocol) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
    Ok(())
}

/// What [`encode_list`] encodes in each item: what could split, join or blur items
/// (`,`, `%`, spaces, quotes) and what may not travel in a header (controls).
/// Non-ASCII is always encoded, as its UTF-8 bytes.
const LIST_ITEM: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%').add(b',');

/// One header value for a list of names (the groups): each name percent-encoded
/// ([`LIST_ITEM`]), joined with `,`. So `a,b` arrives as one name, `a%2Cb`, never as
/// two; a name without those characters arrives as it is.
pub fn encode_list(items: &[String]) -> String {
    let mut value = String::new();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            value.push(',');
        }
        value.extend(utf8_percent_encode(item, LIST_ITEM));
    }
    value
}

/// The names of a list written as [`encode_list`] writes it (blank items skipped,
/// spaces around items ignored).
pub fn decode_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| percent_decode_str(item).decode_utf8_lossy().into_owned())
        .collect()
}

/// A header name folded the way some backends fold it: lower case, `_` as `-`.
pub fn folded_name(name: &str) -> String {
    folded(name).into_owned()
}

/// [`folded_name`], borrowed when `name` is folded already (no upper case, no `_`).
pub fn folded(name: &str) -> Cow<'_, str> {
    if !name.bytes().any(|b| b.is_ascii_uppercase() || b == b'_') {
        return Cow::Borrowed(name);
    }
    let mut folded = String::with_capacity(name.len());
    folded.extend(name.chars().map(|c| match c {
        '_' => '-',
        c => c.to_ascii_lowercase(),
    }));
    Cow::Owned(folded)
}

/// True when `name` folds to `folded` (which is already folded), without allocating.
fn folds_to(name: &str, folded: &str) -> bool {
    name.len() == folded.len()
        && name.bytes().zip(folded.bytes()).all(|(a, b)| {
            if a == b'_' {
                b == b'-'
            } else {
                a.eq_ignore_ascii_case(&b)
            }
        })
}

/// Header names as some backends fold them (lower case, `_` as `-`), kept by length:
/// a header is compared only with the names as long as it (every header of every
/// request is looked up).
pub struct FoldedNames(Vec<Vec<String>>);

impl FoldedNames {
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        let mut by_length: Vec<Vec<String>> = Vec::new();
        for name in names {
            let name = folded_name(name);
            if by_length.len() <= name.len() {
                by_length.resize_with(name.len() + 1, Vec::new);
            }
            if !by_length[name.len()].contains(&name) {
                by_length[name.len()].push(name);
            }
        }
        Self(by_length)
    }

    /// Whether `name`, folded, is one of these.
    pub fn contains(&self, name: &str) -> bool {
        self.0
            .get(name.len())
            .is_some_and(|names| names.iter().any(|folded| folds_to(name, folded)))
    }

    /// Every name, folded.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().flatten().map(String::as_str)
    }
}

/// Removes every header whose folded name is in `folded_names` (all variants:
/// `X-Forwarded-User`, `x-forwarded-user`, `X_Forwarded_User`, repeated ones).
pub fn remove_folded(headers: &mut HeaderMap, folded_names: &FoldedNames) {
    remove_folded_except(headers, folded_names, None);
}

/// [`remove_folded`], but the header named exactly `kept` (a header map holds each
/// name in lower case, so that is one spelling) stays: a header the gateway set
/// itself, whose other spellings go. Nothing to remove costs no allocation.
pub fn remove_folded_except(
    headers: &mut HeaderMap,
    folded_names: &FoldedNames,
    kept: Option<&HeaderName>,
) {
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| Some(*name) != kept)
        .filter(|name| folded_names.contains(name.as_str()))
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

/// Rewrites the `Cookie` headers without the cookies `drop` selects, joined into one
/// header (as HTTP/1.1 upstreams expect). Other cookies pass byte for byte. A single
/// header with nothing to drop is left alone, and one with nothing to keep is removed;
/// otherwise the new value is built in one buffer. (This runs on every forwarded
/// request: one pass decides which of those it is.)
pub fn remove_cookies(headers: &mut HeaderMap, drop: impl Fn(&str) -> bool) {
    let values = headers.get_all(header::COOKIE);
    let pairs = || values.iter().flat_map(|v| cookie_pairs(v.as_bytes()));
    let is_dropped = |pair: &[u8]| {
        let name = memchr::memchr(b'=', pair).map_or(pair, |at| &pair[..at]);
        std::str::from_utf8(name.trim_ascii()).is_ok_and(&drop)
    };
    let mut header_count = 0;
    let (mut dropped, mut kept_count, mut kept_length) = (0_usize, 0_usize, 0_usize);
    for value in values.iter() {
        header_count += 1;
        for pair in cookie_pairs(value.as_bytes()) {
            if is_dropped(pair) {
                dropped += 1;
            } else {
                kept_count += 1;
                kept_length += pair.len();
            }
        }
    }
    if header_count == 0 || (header_count == 1 && dropped == 0) {
        return;
    }
    if kept_count == 0 {
        headers.remove(header::COOKIE);
        return;
    }
    // The exact length, so that the buffer becomes the header value as it is (a
    // buffer with spare room would cost `Bytes` another allocation).
    let mut kept = Vec::with_capacity(kept_length + 2 * (kept_count - 1));
    for pair in pairs().filter(|pair| !is_dropped(pair)) {
        if !kept.is_empty() {
            kept.extend_from_slice(b"; ");
        }
        kept.extend_from_slice(pair);
    }
    headers.remove(header::COOKIE);
    if let Ok(value) = HeaderValue::from_maybe_shared(bytes::Bytes::from(kept)) {
        headers.insert(header::COOKIE, value);
    }
}

/// Prepares an upstream's response headers for the client: a `Content-Length` beside
/// a `Transfer-Encoding` goes (the encoding frames the body, RFC 9112 section 6.3, and
/// the client must never see two framings), then the hop-by-hop headers, then the
/// instructions meant for a front server (`X-Accel-*`, `X-Sendfile`,
/// `X-Lighttpd-Send-File`, in any spelling), which would make a server in front of
/// the gateway serve files or change its buffering for the upstream.
pub fn sanitize_upstream_response(headers: &mut HeaderMap) {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
    }
    remove_hop_by_hop(headers);
    remove_front_server_instructions(headers);
}

/// Removes `X-Accel-*`, `X-Sendfile` and `X-Lighttpd-Send-File`, in any spelling (also
/// from a `101`, whose `Connection` and `Upgrade` must stay).
pub fn remove_front_server_instructions(headers: &mut HeaderMap) {
    let internal: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_front_server_instruction(name.as_str()))
        .cloned()
        .collect();
    for name in internal {
        headers.remove(name);
    }
}

/// `X-Accel-*` (nginx), `X-Sendfile` (Apache, lighttpd), `X-Lighttpd-Send-File`.
fn is_front_server_instruction(name: &str) -> bool {
    const ACCEL: &str = "x-accel-";
    (name.len() > ACCEL.len() && folds_to(&name[..ACCEL.len()], ACCEL))
        || folds_to(name, "x-sendfile")
        || folds_to(name, "x-lighttpd-send-file")
}

/// The name of the cookie a `Set-Cookie` value sets, as a browser would store it:
/// the text before the first `=` of the part before the first `;`, trimmed. A
/// nameless cookie (`=name=value`, or no `=` at all) is sent back by browsers as its
/// bare value, so its value's own leading name is what counts.
fn set_cookie_name(value: &[u8]) -> &[u8] {
    let pair = value.split(|b| *b == b';').next().unwrap_or_default();
    let pair = pair.trim_ascii_start();
    let pair = match pair.strip_prefix(b"=") {
        Some(rest) => rest.trim_ascii_start(),
        None => pair,
    };
    pair.split(|b| *b == b'=')
        .next()
        .unwrap_or_default()
        .trim_ascii()
}

/// Removes every `Set-Cookie` whose cookie name `drop` selects ([`set_cookie_name`]);
/// the others stay, in order. Returns the names removed.
pub fn remove_set_cookies(headers: &mut HeaderMap, drop: impl Fn(&[u8]) -> bool) -> Vec<String> {
    let doomed = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .any(|value| drop(set_cookie_name(value.as_bytes())));
    if !doomed {
        return Vec::new();
    }
    let mut removed = Vec::new();
    let values: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .cloned()
        .collect();
    headers.remove(header::SET_COOKIE);
    for value in values {
        let name = set_cookie_name(value.as_bytes());
        if drop(name) {
            removed.push(String::from_utf8_lossy(name).into_owned());
        } else {
            headers.append(header::SET_COOKIE, value);
        }
    }
    removed
}

/// Headers that tell an upstream who the client is or how the request was addressed
/// (Django's `USE_X_FORWARDED_HOST`/`_PORT`, `SECURE_PROXY_SSL_HEADER`, Sentry's
/// `SENTRY_USE_X_FORWARDED_FOR`, and what other frameworks read). Every spelling of
/// them (any case, `_` for `-`) is removed from what a client or a trusted proxy sent;
/// the gateway then sets `X-Forwarded-For`, `X-Real-IP`, `X-Forwarded-Proto` and
/// `X-Forwarded-Host` itself ([`set_forwarded`]).
pub const FORWARDING_HEADERS: [&str; 17] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-scheme",
    "x-forwarded-ssl",
    "x-forwarded-server",
    "x-forwarded-prefix",
    "x-real-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "true-client-ip",
    "x-host",
    "x-original-host",
    "front-end-https",
    "x-url-scheme",
];

/// The client's address: the first address not in `trusted`, counted from the right
/// of the chain `X-Forwarded-For` + the TCP peer. Each trusted hop vouches only for the
/// hop before it, so the walk stops at the first address it cannot vouch for (which is
/// then the client) or at an entry that is not an address (then the last trusted hop
/// is the best that is known). A peer that is not trusted is the client, whatever it
/// sent. Everything left of the client was written by the client and is never read.
pub fn client_address(
    headers: &HeaderMap,
    peer: IpAddr,
    trusted: impl Fn(IpAddr) -> bool,
) -> IpAddr {
    let mut client = peer.to_canonical();
    if !trusted(client) {
        return client;
    }
    let lines: Vec<&HeaderValue> = headers.get_all(&X_FORWARDED_FOR).iter().collect();
    for line in lines.into_iter().rev() {
        // Entry by entry, as bytes: a client's own non-text entry on the left of a
        // line must not hide the entries the proxies appended on its right.
        for entry in line.as_bytes().rsplit(|b| *b == b',') {
            let entry = std::str::from_utf8(entry).map(str::trim);
            if entry.is_ok_and(str::is_empty) {
                continue;
            }
            let Some(address) = entry.ok().and_then(forwarded_address) else {
                return client;
            };
            client = address;
            if !trusted(client) {
                return client;
            }
        }
    }
    client
}

/// One `X-Forwarded-For` entry as an address: `192.0.2.1`, `192.0.2.1:5678`,
/// `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:5678`; `None` for anything else
/// (`unknown`, obfuscated identifiers, garbage).
fn forwarded_address(entry: &str) -> Option<IpAddr> {
    let address = entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            entry
                .strip_prefix('[')?
                .strip_suffix(']')?
                .parse::<std::net::Ipv6Addr>()
                .ok()
                .map(IpAddr::V6)
        })?;
    Some(address.to_canonical())
}

/// What the gateway tells the upstream about a request.
pub struct ForwardedFacts<'a> {
    /// The client's address ([`client_address`]).
    pub client: IpAddr,
    /// `https` or `http`: the scheme the gateway is published under.
    pub proto: &'a str,
    /// `public_url`'s host (and port, when it is not the scheme's default).
    pub host: &'a HeaderValue,
}

/// Sets `X-Forwarded-For` and `X-Real-IP` to the client's address alone (so the first
/// entry, the one Sentry reads, is never a client-chosen value), `X-Forwarded-Proto`
/// and `X-Forwarded-Host` to `public_url`'s. Every other spelling of these and of the
/// rest of [`FORWARDING_HEADERS`] must be gone already ([`remove_folded`]).
pub fn set_forwarded(headers: &mut HeaderMap, facts: &ForwardedFacts<'_>) {
    let client = address_value(facts.client);
    headers.insert(X_FORWARDED_FOR, client.clone());
    headers.insert(X_REAL_IP, client);
    // The two schemes as constants: no allocation, and no check of their bytes (which
    // `from_static` does each time it runs outside a constant).
    const HTTPS: HeaderValue = HeaderValue::from_static("https");
    const HTTP: HeaderValue = HeaderValue::from_static("http");
    match facts.proto {
        "https" => {
            headers.insert(X_FORWARDED_PROTO, HTTPS);
        }
        "http" => {
            headers.insert(X_FORWARDED_PROTO, HTTP);
        }
        proto => set(headers, X_FORWARDED_PROTO, proto),
    }
    headers.insert(X_FORWARDED_HOST, facts.host.clone());
}

/// An IP address as a header value: written on the stack and shared by its clones
/// (one allocation, however many headers carry it).
fn address_value(address: IpAddr) -> HeaderValue {
    /// The longest address text (an IPv6 address with an IPv4 tail) fits.
    struct Text([u8; 48], usize);
    impl AsRef<[u8]> for Text {
        fn as_ref(&self) -> &[u8] {
            &self.0[..self.1]
        }
    }
    let mut text = Text([0; 48], 0);
    match address {
        // The usual case, written digit by digit (the general formatter takes about
        // a thousand instructions for it, on every forwarded request).
        IpAddr::V4(v4) => {
            for (n, octet) in v4.octets().into_iter().enumerate() {
                if n > 0 {
                    text.0[text.1] = b'.';
                    text.1 += 1;
                }
                let digits = [octet / 100, octet / 10 % 10, octet % 10];
                let first = match octet {
                    100.. => 0,
                    10.. => 1,
                    _ => 2,
                };
                for digit in &digits[first..] {
                    text.0[text.1] = b'0' + digit;
                    text.1 += 1;
                }
            }
        }
        IpAddr::V6(v6) => {
            let mut cursor = std::io::Cursor::new(&mut text.0[..]);
            std::io::Write::write_fmt(&mut cursor, format_args!("{v6}"))
                .expect("an IPv6 address fits in 48 bytes");
            text.1 = cursor.position() as usize;
        }
    }
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(text))
        .expect("an IP address is a valid header value")
}

fn set(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_and_connection_listed_headers_go() {
        let mut h = map(&[
            ("connection", "Keep-Alive, X-Secret, , not a name"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("accept", "*/*"),
        ]);
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("accept"));
    }

    /// Each hop-by-hop name goes when it is the only one present (in every line it
    /// has), whatever else the message carries.
    #[test]
    fn each_hop_by_hop_header_goes_on_its_own() {
        for name in HOP_BY_HOP.iter().chain([&header::UPGRADE]) {
            let mut h = map(&[
                ("accept", "*/*"),
                (name.as_str(), "a"),
                ("x-custom", "1"),
                (name.as_str(), "b"),
            ]);
            remove_hop_by_hop(&mut h);
            assert_eq!(
                h.keys().map(HeaderName::as_str).collect::<Vec<_>>(),
                ["accept", "x-custom"],
                "{name}"
            );
        }
    }

    #[test]
    fn client_hop_by_hop_headers_go_and_end_to_end_ones_cannot_be_named() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Custom"),
            ("connection", "te"),
            ("x-custom", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("proxy", "http://evil.example"),
            ("proxy-authorization", "Basic x"),
            ("proxy-anything", "1"),
            ("proxy_authorization", "Basic x"),
            ("Transfer_Encoding", "chunked"),
            ("keep_alive", "1"),
            ("Proxy_Connection", "close"),
            ("upgrade", "h2c"),
            ("accept", "*/*"),
        ]);
        let end_to_end = |name: &str| ["authorization", "x-forwarded-user"].contains(&name);
        remove_client_hop_by_hop(&mut h, None, end_to_end).unwrap();
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["accept"]);

        let mut upgrade = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        remove_client_hop_by_hop(
            &mut upgrade,
            Some(HeaderValue::from_static("websocket")),
            end_to_end,
        )
        .unwrap();
        assert_eq!(upgrade["connection"], "upgrade");
        assert_eq!(upgrade["upgrade"], "websocket");

        for named in [
            "Authorization",
            "x-forwarded-user",
            "X_Forwarded_User",
            "keep-alive, authorization",
        ] {
            let mut h = map(&[("connection", named), ("authorization", "Bearer x")]);
            assert!(
                remove_client_hop_by_hop(&mut h, None, end_to_end).is_err(),
                "{named}"
            );
        }
    }

    #[test]
    fn group_lists_are_unambiguous() {
        let groups: Vec<String> = ["sentry:member", "a,b", "50%", " x ", "caf\u{e9}", "q\"r"]
            .map(String::from)
            .to_vec();
        let value = encode_list(&groups);
        assert_eq!(value, "sentry:member,a%2Cb,50%25,%20x%20,caf%C3%A9,q%22r");
        assert!(HeaderValue::from_str(&value).is_ok());
        assert_eq!(decode_list(&value), groups);
        assert_eq!(decode_list(" a , ,b"), ["a", "b"]);
        assert!(decode_list(", ,").is_empty());
    }

    #[test]
    fn identity_header_variants_are_all_removed() {
        let mut h = map(&[
            ("X-Forwarded-User", "a"),
            ("x-forwarded-user", "b"),
            ("X_Forwarded_User", "c"),
            ("x_forwarded-user", "d"),
            ("X-Forwarded-Email", "e"),
            ("X-Other", "keep"),
        ]);
        remove_folded(
            &mut h,
            &FoldedNames::new(["X-Forwarded-User", "x_forwarded_email"]),
        );
        assert_eq!(h.len(), 1, "{h:?}");
    }

    proptest::proptest! {
        /// A name is found among folded names exactly when it folds to one of them.
        #[test]
        fn folded_names_are_found_in_any_spelling(
            names in proptest::collection::vec("[a-cA-C_-]{0,4}", 0..6),
            name in "[a-cA-C_-]{0,4}",
        ) {
            let set = FoldedNames::new(names.iter().map(String::as_str));
            let name = name.to_ascii_lowercase(); // as a header map holds it
            let expected = names.iter().any(|n| folds_to(&name, &folded_name(n)));
            proptest::prop_assert_eq!(set.contains(&name), expected);
        }
    }

    #[test]
    fn a_kept_header_stays_and_its_other_spellings_go() {
        let mut h = map(&[
            ("x-request-id", "ours"),
            ("X_Request_Id", "theirs"),
            ("x_request-id", "theirs"),
            ("X-Forwarded-User", "a"),
        ]);
        let folds = FoldedNames::new(["x-request-id", "x-forwarded-user"]);
        remove_folded_except(
            &mut h,
            &folds,
            Some(&HeaderName::from_static("x-request-id")),
        );
        let left: Vec<(&str, &str)> = h
            .iter()
            .map(|(name, value)| (name.as_str(), value.to_str().unwrap()))
            .collect();
        assert_eq!(left, [("x-request-id", "ours")]);
    }

    #[test]
    fn only_the_gateway_cookies_are_removed() {
        let mut h = map(&[
            ("cookie", "sentrysid=1; _ssogate=x; sc=2"),
            ("cookie", "_ssogate_csrf_a=y"),
        ]);
        remove_cookies(&mut h, |n| {
            n == "_ssogate" || n.starts_with("_ssogate_csrf_")
        });
        assert_eq!(h.get_all("cookie").iter().count(), 1);
        assert_eq!(h["cookie"], "sentrysid=1; sc=2");
        let mut only_ours = map(&[("cookie", "_ssogate=x")]);
        remove_cookies(&mut only_ours, |n| n == "_ssogate");
        assert!(!only_ours.contains_key("cookie"));
        let mut ours_twice = map(&[("cookie", "_ssogate=x"), ("cookie", " ; _ssogate=y")]);
        remove_cookies(&mut ours_twice, |n| n == "_ssogate");
        assert!(!ours_twice.contains_key("cookie"));
        // One header with nothing to drop is left exactly as it came; two are joined.
        let mut theirs = map(&[("cookie", "a=1;;b=2 ")]);
        remove_cookies(&mut theirs, |n| n == "_ssogate");
        assert_eq!(theirs["cookie"], "a=1;;b=2 ");
        let mut theirs_twice = map(&[("cookie", "a=1"), ("cookie", "b=2")]);
        remove_cookies(&mut theirs_twice, |n| n == "_ssogate");
        assert_eq!(theirs_twice.get_all("cookie").iter().count(), 1);
        assert_eq!(theirs_twice["cookie"], "a=1; b=2");

        // Other cookies pass byte for byte, even bytes that are not UTF-8.
        let mut raw = HeaderMap::new();
        raw.insert(
            "cookie",
            HeaderValue::from_bytes(b"a=caf\xe9;  _ssogate=x ;b=\"q\"").unwrap(),
        );
        remove_cookies(&mut raw, |n| n == "_ssogate");
        assert_eq!(raw["cookie"].as_bytes(), b"a=caf\xe9; b=\"q\"");
    }

    #[test]
    fn addresses_are_written_as_the_standard_library_writes_them() {
        let v4 = (0..=255u8).flat_map(|a| [[a, 0, 9, 10], [1, a, 99, 100], [255, 254, a, 0]]);
        for octets in v4 {
            let address = IpAddr::from(octets);
            assert_eq!(address_value(address), address.to_string().as_str());
        }
        for text in [
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:192.0.2.1",
            "fe80::1:2:3:4:5",
        ] {
            let address: IpAddr = text.parse().unwrap();
            assert_eq!(address_value(address), address.to_string().as_str());
        }
    }

    fn trusted_nets(ip: IpAddr) -> bool {
        ["10.0.0.0/8", "192.168.0.0/16", "::1/128"]
            .iter()
            .any(|net| net.parse::<ipnet::IpNet>().unwrap().contains(&ip))
    }

    fn address(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn the_client_is_the_first_untrusted_hop_from_the_right() {
        let cases: &[(&str, &[&str], &str)] = &[
            // peer, X-Forwarded-For lines, client
            ("203.0.113.9", &["6.6.6.6"], "203.0.113.9"),
            ("203.0.113.9", &[], "203.0.113.9"),
            ("10.0.0.2", &[], "10.0.0.2"),
            ("10.0.0.2", &["198.51.100.4"], "198.51.100.4"),
            ("10.0.0.2", &["6.6.6.6, 198.51.100.4"], "198.51.100.4"),
            ("10.0.0.2", &["6.6.6.6", "198.51.100.4"], "198.51.100.4"),
            (
                "10.0.0.2",
                &["6.6.6.6, 198.51.100.4, 10.0.0.1"],
                "198.51.100.4",
            ),
            (
                "10.0.0.2",
                &["6.6.6.6, 198.51.100.4", "192.168.1.1, 10.0.0.1"],
                "198.51.100.4",
            ),
            ("10.0.0.2", &["10.9.9.9, 10.0.0.1"], "10.9.9.9"),
            ("10.0.0.2", &["198.51.100.4:5678"], "198.51.100.4"),
            ("10.0.0.2", &["[2001:db8::7]:443"], "2001:db8::7"),
            ("10.0.0.2", &["[2001:db8::7]"], "2001:db8::7"),
            ("10.0.0.2", &["2001:db8::7"], "2001:db8::7"),
            ("10.0.0.2", &["::ffff:198.51.100.4"], "198.51.100.4"),
            ("::ffff:10.0.0.2", &["198.51.100.4"], "198.51.100.4"),
            // Not an address: the hop that wrote it is the last one known.
            ("10.0.0.2", &["6.6.6.6, unknown"], "10.0.0.2"),
            ("10.0.0.2", &["6.6.6.6, _hidden, 10.0.0.1"], "10.0.0.1"),
            ("10.0.0.2", &["1.2.3.4 5.6.7.8"], "10.0.0.2"),
            ("10.0.0.2", &[" , 198.51.100.4 ,"], "198.51.100.4"),
        ];
        // A client's non-text entry left of what its proxy appended hides nothing.
        let mut h = HeaderMap::new();
        h.insert(
            X_FORWARDED_FOR,
            HeaderValue::from_bytes(b"\xff\xfe, 198.51.100.4").unwrap(),
        );
        assert_eq!(
            client_address(&h, address("10.0.0.2"), trusted_nets),
            address("198.51.100.4")
        );
        for (peer, lines, client) in cases {
            let pairs: Vec<(&str, &str)> = lines.iter().map(|l| ("x-forwarded-for", *l)).collect();
            let h = map(&pairs);
            assert_eq!(
                client_address(&h, address(peer), trusted_nets),
                address(client),
                "peer {peer}, X-Forwarded-For {lines:?}"
            );
        }
    }

    proptest::proptest! {
        /// Whatever a client sends in X-Forwarded-For (any text, any number of lines),
        /// behind trusted proxies that each append the address they saw, the client's
        /// address is the one the first proxy saw.
        #[test]
        fn nothing_a_client_writes_chooses_its_address(
            // Visible ASCII and obs-text bytes (what a header value may hold).
            sent in proptest::collection::vec(
                proptest::collection::vec(
                    proptest::prop_oneof![0x20u8..0x7f, 0x80u8..=0xff],
                    0..40,
                ),
                0..4,
            ),
            client in proptest::prop_oneof![
                proptest::strategy::Just("198.51.100.4"),
                proptest::strategy::Just("2001:db8::7"),
                proptest::strategy::Just("8.8.8.8"),
            ],
            hops in proptest::collection::vec(proptest::prop_oneof![
                proptest::strategy::Just("10.0.0.1"),
                proptest::strategy::Just("192.168.3.4"),
                proptest::strategy::Just("::1"),
            ], 0..3),
        ) {
            let mut h = HeaderMap::new();
            for line in &sent {
                h.append(X_FORWARDED_FOR, HeaderValue::from_bytes(line).unwrap());
            }
            // The first trusted proxy appends the client it saw, each next one the
            // proxy before it (as nginx's $proxy_add_x_forwarded_for does).
            let mut chain: Vec<&str> = vec![client];
            chain.extend(&hops);
            let peer = "10.0.0.2";
            let appended = chain.join(", ").into_bytes();
            let joined: Vec<Vec<u8>> = sent.iter().cloned().chain([appended]).collect();
            h.remove(X_FORWARDED_FOR);
            h.insert(X_FORWARDED_FOR, HeaderValue::from_bytes(&joined.join(&b", "[..])).unwrap());
            proptest::prop_assert_eq!(client_address(&h, address(peer), trusted_nets), address(client));
            // And without a trusted proxy in front, the peer itself.
            proptest::prop_assert_eq!(client_address(&h, address(client), trusted_nets), address(client));
        }
    }

    #[test]
    fn forwarded_facts_are_the_gateways_alone() {
        let host = HeaderValue::from_static("sentry.example.com");
        let mut h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("X_Forwarded_For", "6.6.6.6"),
            ("x-forwarded-proto", "http"),
            ("x-real-ip", "6.6.6.6"),
            ("X_Real_IP", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6;host=evil.example"),
            ("x-forwarded-host", "evil.example"),
            ("X-Forwarded-Port", "1"),
            ("x_forwarded_host", "evil.example"),
            ("True-Client-IP", "6.6.6.6"),
            ("accept", "*/*"),
        ]);
        remove_folded(&mut h, &FoldedNames::new(FORWARDING_HEADERS));
        set_forwarded(
            &mut h,
            &ForwardedFacts {
                client: address("192.0.2.7"),
                proto: "https",
                host: &host,
            },
        );
        let mut names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "accept",
                "x-forwarded-for",
                "x-forwarded-host",
                "x-forwarded-proto",
                "x-real-ip"
            ]
        );
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
        assert_eq!(h["x-real-ip"], "192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "sentry.example.com");
    }

    #[test]
    fn forwarded_addresses_and_schemes_are_written_as_they_are() {
        let host = HeaderValue::from_static("sentry.example.com");
        for (client, proto) in [
            ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "http"),
            ("::ffff:255.255.255.255", "https"),
            ("2001:db8::1", "wss"),
            ("10.0.0.1", "http"),
        ] {
            let mut h = HeaderMap::new();
            let client = client.parse::<IpAddr>().unwrap();
            set_forwarded(
                &mut h,
                &ForwardedFacts {
                    client,
                    proto,
                    host: &host,
                },
            );
            assert_eq!(h["x-forwarded-for"], client.to_string().as_str());
            assert_eq!(h["x-real-ip"], client.to_string().as_str());
            assert_eq!(h["x-forwarded-proto"], proto);
        }
    }

    #[test]
    fn folding_borrows_a_name_that_is_folded_already() {
        assert!(matches!(folded("x-forwarded-for"), Cow::Borrowed(_)));
        assert_eq!(folded("X_Forwarded_For"), "x-forwarded-for");
        assert_eq!(folded_name("Keep_Alive"), "keep-alive");
        assert_eq!(folded_name("Caf\u{e9}_X"), "caf\u{e9}-x");
    }

    #[test]
    fn upstream_answers_lose_double_framing_and_front_server_instructions() {
        let mut h = map(&[
            ("content-length", "5"),
            ("transfer-encoding", "chunked"),
            ("X-Accel-Redirect", "/internal/secret"),
            ("x-accel-buffering", "no"),
            ("X_Accel_Limit_Rate", "1"),
            ("X-Sendfile", "/etc/passwd"),
            ("x_sendfile", "/etc/passwd"),
            ("X-Lighttpd-Send-File", "/etc/passwd"),
            ("x-accel", "keep: not an nginx instruction"),
            ("x-sendfile-type", "keep"),
            ("content-type", "text/plain"),
        ]);
        sanitize_upstream_response(&mut h);
        let mut names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-type", "x-accel", "x-sendfile-type"]);

        let mut sized = map(&[("content-length", "5")]);
        sanitize_upstream_response(&mut sized);
        assert_eq!(sized["content-length"], "5", "a lone Content-Length stays");
    }

    #[test]
    fn set_cookie_names_are_read_as_browsers_store_them() {
        for (value, name) in [
            ("_ssogate=x; Path=/", "_ssogate"),
            (" _ssogate =x", "_ssogate"),
            ("_ssogate", "_ssogate"),
            ("=_ssogate=x", "_ssogate"),
            ("= _ssogate=x", "_ssogate"),
            ("_ssogate;Max-Age=0", "_ssogate"),
            ("sentrysid=abc; HttpOnly", "sentrysid"),
            ("", ""),
        ] {
            assert_eq!(
                set_cookie_name(value.as_bytes()),
                name.as_bytes(),
                "{value:?}"
            );
        }
        let mut h = map(&[
            ("set-cookie", "sentrysid=1; Path=/"),
            ("set-cookie", "_ssogate=evil; Path=/"),
            ("set-cookie", "sc=2"),
            ("set-cookie", "_ssogate_csrf_abc=x"),
        ]);
        let removed = remove_set_cookies(&mut h, |name| {
            name == b"_ssogate" || name.starts_with(b"_ssogate_csrf_")
        });
        assert_eq!(removed, ["_ssogate", "_ssogate_csrf_abc"]);
        let kept: Vec<&str> = h
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(kept, ["sentrysid=1; Path=/", "sc=2"]);
    }
}
