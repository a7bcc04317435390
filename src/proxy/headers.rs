//! Header operations on forwarded requests and responses, one small function each.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Headers that describe one connection, never the message (RFC 9110 section 7.6.1),
/// plus the proxy-only ones. (Constants: this runs on every forwarded request and
/// response, and a `&str` name would be parsed each time.)
const HOP_BY_HOP: [HeaderName; 8] = [
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
    let named: Vec<HeaderName> = list_items(headers, &header::CONNECTION)
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
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
        list_items(headers, &header::CONNECTION).find(|token| end_to_end(&folded_name(token)))
    {
        return Err(EndToEndInConnection(token.to_owned()));
    }
    remove_hop_by_hop(headers);
    let proxy_headers: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str() == "proxy" || name.as_str().starts_with("proxy-"))
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
    name.to_ascii_lowercase().replace('_', "-")
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

/// Removes every header whose folded name is in `folded_names` (all variants:
/// `X-Forwarded-User`, `x-forwarded-user`, `X_Forwarded_User`, repeated ones).
pub fn remove_folded(headers: &mut HeaderMap, folded_names: &[String]) {
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| folded_names.iter().any(|f| folds_to(name.as_str(), f)))
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

/// Rewrites the `Cookie` headers without the cookies `drop` selects, joined into one
/// header (as HTTP/1.1 upstreams expect). Other cookies pass byte for byte. A single
/// header with nothing to drop is left alone; otherwise the new value is built in one
/// buffer (this runs on every forwarded request).
pub fn remove_cookies(headers: &mut HeaderMap, drop: impl Fn(&str) -> bool) {
    let values = headers.get_all(header::COOKIE);
    let pairs = || {
        values
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
            .map(<[u8]>::trim_ascii)
            .filter(|pair| !pair.is_empty())
    };
    let is_dropped = |pair: &[u8]| {
        let name = pair.split(|b| *b == b'=').next().unwrap_or_default();
        std::str::from_utf8(name.trim_ascii()).is_ok_and(&drop)
    };
    let header_count = values.iter().count();
    if header_count == 0 || (header_count == 1 && !pairs().any(is_dropped)) {
        return;
    }
    let mut kept = Vec::with_capacity(values.iter().map(|v| v.len()).sum());
    for pair in pairs().filter(|pair| !is_dropped(pair)) {
        if !kept.is_empty() {
            kept.extend_from_slice(b"; ");
        }
        kept.extend_from_slice(pair);
    }
    headers.remove(header::COOKIE);
    if !kept.is_empty()
        && let Ok(value) = HeaderValue::from_maybe_shared(bytes::Bytes::from(kept))
    {
        headers.insert(header::COOKIE, value);
    }
}

/// Where the request came from and how it reached the gateway.
pub struct ForwardedFacts<'a> {
    /// The TCP peer.
    pub peer: IpAddr,
    /// True when the peer is a configured trusted proxy.
    pub peer_is_trusted: bool,
    /// `https` or `http`: the scheme the gateway is published under.
    pub proto: &'a str,
    /// The host the client asked for.
    pub host: Option<&'a str>,
}

/// Sets `X-Forwarded-For`, `-Proto` and `-Host` truthfully. A trusted proxy's
/// `X-Forwarded-For` is extended; anyone else's is replaced, and their `Forwarded`
/// and `X-Real-IP` are dropped.
pub fn set_forwarded(headers: &mut HeaderMap, facts: &ForwardedFacts<'_>) {
    let peer = facts.peer.to_string();
    let forwarded_for = if facts.peer_is_trusted {
        let prior: Vec<&str> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if prior.is_empty() {
            peer
        } else {
            format!("{}, {peer}", prior.join(", "))
        }
    } else {
        headers.remove(header::FORWARDED);
        headers.remove(X_REAL_IP);
        peer
    };
    set(headers, X_FORWARDED_FOR, &forwarded_for);
    if !(facts.peer_is_trusted && headers.contains_key(X_FORWARDED_PROTO)) {
        set(headers, X_FORWARDED_PROTO, facts.proto);
    }
    if !(facts.peer_is_trusted && headers.contains_key(X_FORWARDED_HOST)) {
        match facts.host {
            Some(host) => set(headers, X_FORWARDED_HOST, host),
            None => {
                headers.remove(X_FORWARDED_HOST);
            }
        }
    }
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
            ("connection", "keep-alive, x-secret"),
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
            &["x-forwarded-user".into(), "x-forwarded-email".into()],
        );
        assert_eq!(h.len(), 1, "{h:?}");
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
    fn untrusted_forwarded_for_is_replaced_trusted_is_extended() {
        let facts = |trusted| ForwardedFacts {
            peer: "192.0.2.7".parse().unwrap(),
            peer_is_trusted: trusted,
            proto: "https",
            host: Some("sentry.example.com"),
        };
        let mut h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "http"),
            ("x-real-ip", "6.6.6.6"),
        ]);
        set_forwarded(&mut h, &facts(false));
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "sentry.example.com");
        assert!(!h.contains_key("x-real-ip"));

        let mut h = map(&[("x-forwarded-for", "203.0.113.9")]);
        set_forwarded(&mut h, &facts(true));
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 192.0.2.7");
    }
}
