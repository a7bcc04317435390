//! The `Cookie` request header split into its `name=value` pairs, as servers split
//! it: read by the session codec, and rewritten when the gateway's own cookies are
//! taken out before forwarding.

/// The `name=value` pairs of one `Cookie` header, trimmed, empty ones skipped. The
/// separators are found with memchr: a session cookie's long value is skipped in a
/// few instructions, not looked at byte by byte.
pub fn cookie_pairs(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(value);
    std::iter::from_fn(move || {
        loop {
            let text = rest?;
            let (pair, after) = match memchr::memchr(b';', text) {
                Some(at) => (&text[..at], Some(&text[at + 1..])),
                None => (text, None),
            };
            rest = after;
            let pair = pair.trim_ascii();
            if !pair.is_empty() {
                return Some(pair);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_pairs_are_split_as_a_server_splits_them() {
        let pairs: Vec<&[u8]> = cookie_pairs(b" a=1;b=2 ;; ;c; d=\"x;y\"").collect();
        assert_eq!(
            pairs,
            [&b"a=1"[..], b"b=2", b"c", b"d=\"x", b"y\""],
            "quotes do not protect a semicolon (browsers never send one in a value)"
        );
        assert_eq!(cookie_pairs(b"").count(), 0);
        assert_eq!(cookie_pairs(b" ; ").count(), 0);
    }
}
