//! The few HTML pages the gateway renders itself: sign-in, errors, refusals, and
//! their JSON form for requests that are not page loads ([`is_navigation`]).
//!
//! Every value that reaches a page goes through [`escape`]; pages carry a strict
//! Content-Security-Policy and are never cached. Nothing here decides anything: callers
//! say what to show (what a refusal or failure shows is decided in
//! [`crate::problem`]).

use bytes::Bytes;
use http::header::ACCEPT;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;

/// HTML-escapes text for use in element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A link shown under a page's message.
pub struct Link<'a> {
    pub href: &'a str,
    pub label: &'a str,
}

/// One page: a title, a message and optional links, all plain text (escaped here).
pub struct Page<'a> {
    pub status: StatusCode,
    pub title: &'a str,
    pub message: &'a str,
    pub links: &'a [Link<'a>],
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;background:#f6f6f8;color:#2b2233;\
margin:0;display:flex;min-height:100vh;align-items:center;justify-content:center}\
main{background:#fff;border-radius:8px;box-shadow:0 1px 4px #0002;padding:2rem 2.5rem;max-width:32rem}\
h1{font-size:1.3rem;margin-top:0}p{line-height:1.5}\
.button{display:inline-block;background:#6c5fc7;color:#fff;padding:.7rem 1.2rem;border-radius:6px;\
text-decoration:none;font-weight:600;border:0;font-size:1rem;cursor:pointer}\
a{color:#6c5fc7;margin-right:1rem}";

impl Page<'_> {
    pub fn render(&self) -> Response<Full<Bytes>> {
        let links: String = self
            .links
            .iter()
            .enumerate()
            .map(|(i, link)| {
                let class = if i == 0 { " class=\"button\"" } else { "" };
                format!(
                    "<a{class} href=\"{}\">{}</a>",
                    escape(link.href),
                    escape(link.label)
                )
            })
            .collect();
        let body = format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width\"><title>{title}</title>\
<style>{STYLE}</style></head><body><main><h1>{title}</h1><p>{message}</p><p>{links}</p></main></body></html>",
            title = escape(self.title),
            message = escape(self.message),
        );
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = self.status;
        set_page_headers(response.headers_mut(), "text/html; charset=utf-8");
        response
    }
}

/// A page that asks before doing something: `message`, and a button that posts to
/// `action` (a path on this origin).
pub fn confirmation(
    title: &str,
    message: &str,
    action: &str,
    button: &str,
) -> Response<Full<Bytes>> {
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width\"><title>{title}</title>\
<style>{STYLE}</style></head><body><main><h1>{title}</h1><p>{message}</p>\
<form method=\"post\" action=\"{action}\"><button class=\"button\" type=\"submit\">{button}</button></form>\
<p><a href=\"/\">Back to the start</a></p></main></body></html>",
        title = escape(title),
        message = escape(message),
        action = escape(action),
        button = escape(button),
    );
    let mut response = Response::new(Full::new(Bytes::from(body)));
    set_page_headers(response.headers_mut(), "text/html; charset=utf-8");
    response
}

/// Headers for every response the gateway makes itself.
pub fn set_page_headers(headers: &mut http::HeaderMap, content_type: &'static str) {
    // Room for these six and what is added later (`Location`, `Set-Cookie`,
    // `X-Request-Id`, `Strict-Transport-Security`) at once, not in steps.
    headers.reserve(12);
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

/// A small JSON answer, e.g. the 401 for API calls without a session.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    json_body(status, Bytes::from(value.to_string()))
}

/// [`json`] for an answer written beforehand (JSON text).
pub fn json_text(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    json_body(status, Bytes::from_static(text.as_bytes()))
}

fn json_body(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    set_page_headers(response.headers_mut(), "application/json");
    response
}

/// True for a top-level browser navigation, which may be redirected to the sign-in.
/// Everything else (fetch/XHR, API paths, JSON clients, non-GET) must get a 401, or
/// the Sentry app would follow a redirect cross-origin and break (SENTRY.md section 2).
pub fn is_navigation<B>(request: &Request<B>) -> bool {
    is_navigation_of(request.method(), request.uri().path(), request.headers())
}

/// [`is_navigation`] for a request known by its parts: forward-auth decides on the
/// request a proxy reports (its method and path) with the headers the proxy passed on.
pub fn is_navigation_of(method: &http::Method, path: &str, headers: &http::HeaderMap) -> bool {
    // Names as constants: a lookup by `&str` parses the name on every request.
    const SEC_FETCH_MODE: HeaderName = HeaderName::from_static("sec-fetch-mode");
    const X_REQUESTED_WITH: HeaderName = HeaderName::from_static("x-requested-with");
    if !matches!(*method, http::Method::GET | http::Method::HEAD) {
        return false;
    }
    if headers
        .get(SEC_FETCH_MODE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|mode| !mode.eq_ignore_ascii_case("navigate"))
    {
        return false;
    }
    if headers
        .get(X_REQUESTED_WITH)
        .is_some_and(|v| v.to_str().is_ok())
    {
        return false;
    }
    let wants_json = headers
        .get_all(ACCEPT)
        .iter()
        .filter(|v| v.to_str().is_ok())
        .any(|v| names_json(v.as_bytes()));
    !wants_json && !path.starts_with("/api/")
}

/// Whether `application/json` (in any case) is in an `Accept` value. Only its `/`s
/// are looked at: a browser's `Accept` is long, and this runs on every request.
fn names_json(accept: &[u8]) -> bool {
    const TYPE: &[u8] = b"application";
    const SUBTYPE: &[u8] = b"json";
    memchr::memchr_iter(b'/', accept).any(|slash| {
        slash >= TYPE.len()
            && accept[slash - TYPE.len()..slash].eq_ignore_ascii_case(TYPE)
            && accept
                .get(slash + 1..slash + 1 + SUBTYPE.len())
                .is_some_and(|subtype| subtype.eq_ignore_ascii_case(SUBTYPE))
    })
}

/// A plain-text answer (health checks).
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    set_page_headers(response.headers_mut(), "text/plain; charset=utf-8");
    response
}

/// A request without a body, for the unit tests of what reads requests.
#[cfg(test)]
pub(crate) fn test_request(method: &str, path: &str, headers: &[(&str, &str)]) -> Request<()> {
    let mut request = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(()).unwrap()
}

#[cfg(test)]
mod tests {
    use super::test_request as req;
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn sentry_api_calls_are_not_navigations() {
        // The exact shape of the Sentry SPA's API calls.
        let sentry_fetch = req(
            "GET",
            "/api/0/organizations/",
            &[
                ("accept", "application/json; charset=utf-8"),
                ("sec-fetch-mode", "cors"),
                ("sec-fetch-dest", "empty"),
            ],
        );
        assert!(!is_navigation(&sentry_fetch));
        assert!(!is_navigation(&req(
            "GET",
            "/x",
            &[("accept", "text/html, Application/JSON;q=0.9")]
        )));
        assert!(!is_navigation(&req(
            "GET",
            "/x",
            &[("x-requested-with", "XMLHttpRequest")]
        )));
        assert!(!is_navigation(&req("GET", "/api/0/projects/", &[])));
        assert!(!is_navigation(&req(
            "POST",
            "/organizations/",
            &[("sec-fetch-mode", "navigate")]
        )));
        assert!(!is_navigation(&req(
            "GET",
            "/logo.png",
            &[("sec-fetch-mode", "no-cors")]
        )));
    }

    #[test]
    fn browser_page_loads_are_navigations() {
        assert!(is_navigation(&req(
            "GET",
            "/organizations/acme/issues/",
            &[
                (
                    "accept",
                    "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
                ),
                ("sec-fetch-mode", "navigate"),
            ]
        )));
        assert!(is_navigation(&req("GET", "/", &[])));
    }

    #[test]
    fn escape_neutralises_markup_and_quotes() {
        assert_eq!(
            escape(r#"<script>alert("x")</script>&'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;"
        );
    }

    #[tokio::test]
    async fn page_escapes_every_value_and_is_not_cached() {
        let page = Page {
            status: StatusCode::BAD_REQUEST,
            title: "<b>t</b>",
            message: "<img src=x onerror=alert(1)>",
            links: &[Link {
                href: "/x\"><script>",
                label: "<i>go</i>",
            }],
        }
        .render();
        assert_eq!(page.status(), StatusCode::BAD_REQUEST);
        assert_eq!(page.headers()[header::CACHE_CONTROL], "no-store");
        let body = page.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(!body.contains("<img"), "{body}");
        assert!(!body.contains("<script>"), "{body}");
        assert!(!body.contains("<i>"), "{body}");
        assert!(body.contains("&lt;img src=x onerror=alert(1)&gt;"));
    }

    proptest::proptest! {
        /// `application/json` is found wherever a byte-by-byte search finds it.
        #[test]
        fn json_is_found_in_accept_as_a_full_search_finds_it(
            pieces in proptest::collection::vec(
                proptest::sample::select(vec![
                    "application/json", "APPLICATION/JSON", "Application/Json", "/", "json",
                    "application", "applicatio", "n/json", "text/html", ",", ";q=0.9", " ",
                    "*/*", "application/jso", "x",
                ]),
                0..8,
            ),
        ) {
            let accept = pieces.concat();
            let full = accept
                .as_bytes()
                .windows(b"application/json".len())
                .any(|w| w.eq_ignore_ascii_case(b"application/json"));
            proptest::prop_assert_eq!(names_json(accept.as_bytes()), full, "{}", accept);
        }
    }
}
