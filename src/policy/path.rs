//! The one canonical form of a request path, used both to match rules and to forward.
//!
//! Each segment is percent-decoded exactly once, `.` and `..` segments are resolved
//! (after decoding, so `%2e%2e` counts), empty segments (`//`) are folded, and each
//! segment is re-encoded with a minimal set: a decoded `/`, `\`, `?`, `#` or `%` stays
//! encoded inside its segment, so it can never become a separator, a query or a
//! fragment, and a double-encoded `%252e` stays inert. Control characters (`%00`,
//! CR, LF, ...) and invalid UTF-8 are refused. The query is never part of it.

use std::sync::LazyLock;

use percent_encoding::{
    AsciiSet, CONTROLS, percent_decode_str, percent_encode, utf8_percent_encode,
};

/// Characters encoded when a decoded segment is written back into a path.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'\\')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path does not start with /")]
    NotAbsolute,
    #[error("the path's percent-encoding is not valid UTF-8")]
    InvalidUtf8,
    #[error("the path contains a control character")]
    ControlCharacter,
}

/// The canonical form of `raw` (a request path without its query).
pub fn normalize_path(raw: &str) -> Result<String, PathError> {
    // Most paths are canonical as they come (this runs on every request).
    if is_canonical(raw) {
        return Ok(raw.to_owned());
    }
    normalize_segments(raw)
}

/// Whether `raw` is its own canonical form, by a look at its segments: absolute, no
/// escape or character that [`SEGMENT`] would encode (`%` among them, so decoding and
/// encoding again give each back), no `.` or `..` segment, and no empty segment but a
/// last one (a trailing slash, kept).
fn is_canonical(raw: &str) -> bool {
    let Some(rest) = raw.strip_prefix('/') else {
        return false;
    };
    let plain = |segment: &[u8]| segment.iter().all(|byte| LEFT_AS_IS[usize::from(*byte)]);
    let mut segments = rest.as_bytes().split(|byte| *byte == b'/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if segment == b"." || segment == b".." || (segment.is_empty() && !last) {
            return false;
        }
        if !plain(segment) {
            return false;
        }
    }
    true
}

/// The bytes [`SEGMENT`]'s encoder leaves as they are (no non-ASCII byte), as a table:
/// the shortcut looks at every byte of every path.
static LEFT_AS_IS: LazyLock<[bool; 256]> = LazyLock::new(|| {
    std::array::from_fn(|byte| {
        let byte = [byte as u8];
        percent_encode(&byte, SEGMENT)
            .next()
            .is_some_and(|piece| piece.as_bytes() == byte)
    })
});

/// [`normalize_path`] the long way: each segment decoded, resolved and encoded again.
fn normalize_segments(raw: &str) -> Result<String, PathError> {
    let rest = raw.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
    let decode = |segment| {
        let decoded = percent_decode_str(segment)
            .decode_utf8()
            .map_err(|_| PathError::InvalidUtf8)?;
        if decoded.chars().any(char::is_control) {
            return Err(PathError::ControlCharacter);
        }
        Ok(decoded)
    };
    // Resolved as they are decoded (one list of segments, not two); the first segment
    // that cannot be decoded stops it, and its error is the answer.
    let mut refused = None;
    let decoded = rest
        .split('/')
        .map_while(|segment| decode(segment).map_err(|e| refused = Some(e)).ok());
    let kept = resolved(decoded);
    if let Some(error) = refused {
        return Err(error);
    }
    Ok(joined(kept, raw.len(), |path, segment| {
        path.extend(utf8_percent_encode(segment, SEGMENT))
    }))
}

/// The other forms of a canonical path that an upstream may act on, besides the path
/// itself: empty when the path holds no percent-escape.
///
/// The gateway forwards the canonical path, and the upstream decodes it once more:
/// uWSGI hands Django a `PATH_INFO` with every escape decoded, `%2F` and `%5C`
/// included, and Django routes on that as it is. Other servers resolve the `..` that
/// decoding revealed, or also read `\` as `/`. So the views are the path decoded
/// once: as it is; with dot segments resolved and empty segments folded; and the same
/// with `\` read as `/`. A rule decision is made on every view; the strictest wins.
pub fn decoded_views(canonical: &str) -> Vec<String> {
    if !canonical.contains('%') {
        return Vec::new();
    }
    let decoded = percent_decode_str(canonical)
        .decode_utf8_lossy()
        .into_owned();
    let mut views = vec![resolve_segments(&decoded)];
    if decoded.contains('\\') {
        views.push(resolve_segments(&decoded.replace('\\', "/")));
    }
    views.push(decoded);
    views.sort_unstable();
    views.dedup();
    views
}

/// `path` with `.` and `..` segments resolved and empty segments folded, nothing
/// decoded (the form [`normalize_path`] gives, for a path that is already decoded).
fn resolve_segments(path: &str) -> String {
    joined(resolved(path.split('/')), path.len(), String::push_str)
}

/// The segments a path keeps once `.` and `..` are resolved and empty segments are
/// dropped, and whether it ends with a slash (after a last segment that was dropped).
fn resolved<S: AsRef<str>>(segments: impl IntoIterator<Item = S>) -> (Vec<S>, bool) {
    let mut kept = Vec::new();
    let mut trailing_slash = false;
    for segment in segments {
        trailing_slash = true;
        match segment.as_ref() {
            "" | "." => {}
            ".." => {
                kept.pop();
            }
            _ => {
                kept.push(segment);
                trailing_slash = false;
            }
        }
    }
    (kept, trailing_slash)
}

/// `/` before each segment (written by `write`), and a `/` at the end when the path
/// ends with one or has no segment.
fn joined<S: AsRef<str>>(
    (segments, trailing_slash): (Vec<S>, bool),
    capacity: usize,
    write: impl Fn(&mut String, &str),
) -> String {
    let mut path = String::with_capacity(capacity);
    for segment in &segments {
        path.push('/');
        write(&mut path, segment.as_ref());
    }
    if trailing_slash || path.is_empty() {
        path.push('/');
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn n(raw: &str) -> String {
        normalize_path(raw).unwrap()
    }

    #[test]
    fn dot_segments_and_double_slashes_go() {
        assert_eq!(n("/"), "/");
        assert_eq!(n("//"), "/");
        assert_eq!(n("/a//b///c"), "/a/b/c");
        assert_eq!(n("/a/b/"), "/a/b/");
        assert_eq!(n("/a/./b/../c"), "/a/c");
        assert_eq!(n("/a/.."), "/");
        assert_eq!(n("/a/."), "/a/");
        assert_eq!(n("/../../etc/passwd"), "/etc/passwd");
    }

    #[test]
    fn decoding_happens_once_and_before_dot_resolution() {
        assert_eq!(n("/_health/%2e%2e/private"), "/private");
        assert_eq!(n("/_health/%2E%2e/private"), "/private");
        assert_eq!(n("/%61pi/0/"), "/api/0/");
        assert_eq!(
            n("/a/%252e%252e/b"),
            "/a/%252e%252e/b",
            "double encoding stays inert"
        );
    }

    #[test]
    fn encoded_separators_stay_inside_their_segment() {
        assert_eq!(n("/_static%2F..%2Fprivate"), "/_static%2F..%2Fprivate");
        assert_eq!(n("/_health%2f"), "/_health%2F");
        assert_eq!(n("/a%5c..%5cb"), "/a%5C..%5Cb");
        assert_eq!(n("/private%23/_health/"), "/private%23/_health/");
        assert_eq!(n("/private%3Fx=/_health/"), "/private%3Fx=/_health/");
        assert_eq!(n("/_health/%23/../private"), "/_health/private");
    }

    #[test]
    fn control_characters_and_bad_utf8_are_refused() {
        assert_eq!(normalize_path("/a%00b"), Err(PathError::ControlCharacter));
        assert_eq!(
            normalize_path("/a%0d%0aSet-Cookie:x"),
            Err(PathError::ControlCharacter)
        );
        assert_eq!(normalize_path("/a%ff"), Err(PathError::InvalidUtf8));
        assert_eq!(normalize_path("a"), Err(PathError::NotAbsolute));
    }

    #[test]
    fn unicode_is_kept_percent_encoded() {
        assert_eq!(n("/caf%C3%A9/"), "/caf%C3%A9/");
    }

    #[test]
    fn decoded_views_are_what_an_upstream_may_route_on() {
        assert!(decoded_views("/manage/users/").is_empty());
        assert_eq!(decoded_views("/manage%2Fusers"), ["/manage/users"]);
        assert_eq!(
            decoded_views("/api/0/relays%2F..%2F..%2Fusers/"),
            ["/api/0/relays/../../users/", "/api/users/"]
        );
        assert_eq!(
            decoded_views("/a%5C..%5Cmanage%5C"),
            ["/a\\..\\manage\\", "/manage/"]
        );
        assert_eq!(
            decoded_views("/a%5Cb%2F../manage%2F"),
            ["/a/manage/", "/a\\b/../manage/", "/manage/"],
            "with and without `\\` as a separator"
        );
        assert_eq!(
            decoded_views("/a%252Fb"),
            ["/a%2Fb"],
            "decoded once, like Django"
        );
        assert_eq!(decoded_views("/caf%C3%A9/"), ["/caf\u{e9}/"]);
    }

    proptest! {
        #[test]
        fn normal_form_is_stable_and_clean(raw in "/[a-z./%0-9A-F_~-]{0,40}") {
            if let Ok(path) = normalize_path(&raw) {
                prop_assert!(path.starts_with('/'));
                prop_assert!(!path.contains("//"), "{}", path);
                prop_assert!(path.split('/').all(|s| s != "." && s != ".."), "{}", path);
                prop_assert_eq!(normalize_path(&path), Ok(path.clone()), "idempotent");
            }
        }

        #[test]
        fn any_input_is_answered_without_panicking(raw in "\\PC{0,60}") {
            let _ = normalize_path(&raw);
        }

        /// The shortcut for paths that are canonical as they come gives what the
        /// long way gives, whatever the bytes, escapes, dots and slashes.
        #[test]
        fn the_shortcut_agrees_with_the_long_way(
            raw in "/?([a-zA-Z0-9./%_~!$&'()*+,;=:@ \\\\\"#<>?^`{|}-]|%[0-9a-fA-F]{2}|\\PC){0,40}"
        ) {
            if is_canonical(&raw) {
                prop_assert_eq!(normalize_segments(&raw), Ok(raw.clone()));
            }
            prop_assert_eq!(normalize_path(&raw), normalize_segments(&raw));
        }

        /// The same with mostly plain segments, dots and slashes, where the shortcut
        /// is taken often.
        #[test]
        fn the_shortcut_agrees_on_plain_paths(raw in "(/{1,2}([a-z~-]{0,2}|\\.{1,3}|%2[eEfF])){0,8}/?") {
            if is_canonical(&raw) {
                prop_assert_eq!(normalize_segments(&raw), Ok(raw.clone()));
            }
            prop_assert_eq!(normalize_path(&raw), normalize_segments(&raw));
        }
    }
}
