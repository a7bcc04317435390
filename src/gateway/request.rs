//! Facts read off an incoming request: is it a top-level navigation, which host it
//! asked for, its query parameters.

use http::Request;
use http::header::{ACCEPT, HOST};

use crate::policy::{PathError, normalize_path};

/// True for a top-level browser navigation, which may be redirected to the sign-in.
/// Everything else (fetch/XHR, API paths, JSON clients, non-GET) must get a 401, or
/// the Sentry app would follow a redirect cross-origin and break (SENTRY.md section 2).
pub fn is_navigation<B>(request: &Request<B>) -> bool {
    let headers = request.headers();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if !matches!(*request.method(), http::Method::GET | http::Method::HEAD) {
        return false;
    }
    if header("sec-fetch-mode").is_some_and(|mode| !mode.eq_ignore_ascii_case("navigate")) {
        return false;
    }
    if header("x-requested-with").is_some() {
        return false;
    }
    let wants_json = headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("application/json"));
    !wants_json && !request.uri().path().starts_with("/api/")
}

/// The host the client asked for: `Host` (HTTP/1.1) or the `:authority` (HTTP/2).
pub fn host<B>(request: &Request<B>) -> Option<&str> {
    request
        .headers()
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
}

/// Replaces the request's path with its canonical form ([`normalize_path`]), keeping
/// the query as sent. Everything after this sees, and forwards, the canonical path.
pub fn canonicalize_path<B>(request: &mut Request<B>) -> Result<(), PathError> {
    let canonical = normalize_path(request.uri().path())?;
    if canonical == request.uri().path() {
        return Ok(());
    }
    let path_and_query = match request.uri().query() {
        Some(query) => format!("{canonical}?{query}"),
        None => canonical,
    };
    let mut parts = request.uri().clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().map_err(|_| PathError::NotAbsolute)?);
    *request.uri_mut() = http::Uri::from_parts(parts).map_err(|_| PathError::NotAbsolute)?;
    Ok(())
}

/// Query parameters, refusing a repeated parameter among `single` (a duplicated
/// `state` or `code` is an attack, not a typo).
pub fn query_params<B>(
    request: &Request<B>,
    single: &[&str],
) -> Result<Vec<(String, String)>, String> {
    let query = request.uri().query().unwrap_or_default();
    let params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    for name in single {
        if params.iter().filter(|(n, _)| n == name).count() > 1 {
            return Err(format!("the `{name}` parameter appears more than once"));
        }
    }
    Ok(params)
}

pub fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri(path);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap()
    }

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
    fn duplicated_state_is_refused() {
        let r = req("GET", "/cb?code=a&state=s&state=t", &[]);
        assert!(
            query_params(&r, &["state", "code"])
                .unwrap_err()
                .contains("state")
        );
        let r = req("GET", "/cb?code=a&state=s", &[]);
        let p = query_params(&r, &["state", "code"]).unwrap();
        assert_eq!(param(&p, "code"), Some("a"));
    }
}
