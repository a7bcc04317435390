//! Facts read off an incoming request: its canonical path, its query parameters (the
//! host it is for: [`super::host`]).

use http::Request;

use crate::policy::{PathError, normalize_path};

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
    use crate::pages::test_request as req;

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
