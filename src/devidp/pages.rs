//! The few HTML pages the provider shows: login form, errors, signed out.

use bytes::Bytes;
use http::header::{CONTENT_SECURITY_POLICY, X_FRAME_OPTIONS};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;

use crate::devidp::server::respond;
pub(crate) use crate::pages::escape;

type Page = Response<Full<Bytes>>;

/// The login form; `error` (after a failed attempt) makes it a 401. Escapes everything.
pub(crate) fn login(issuer: &str, interaction: &str, client: &str, error: Option<&str>) -> Page {
    let status = match error {
        Some(_) => StatusCode::UNAUTHORIZED,
        None => StatusCode::OK,
    };
    let error = error.map(|e| format!(r#"<p class="error">{}</p>"#, escape(e)));
    let body = format!(
        r#"<p>Sign in to continue to <b>{client}</b>.</p>{error}
<form method="post" action="{action}">
<input type="hidden" name="interaction" value="{interaction}">
<label>Username <input name="username" autocomplete="username" autofocus required></label>
<label>Password <input name="password" type="password" autocomplete="current-password" required></label>
<button type="submit">Sign in</button>
</form>"#,
        client = escape(client),
        error = error.unwrap_or_default(),
        action = escape(&format!("{issuer}/login")),
        interaction = escape(interaction),
    );
    page(status, "Sign in", &body)
}

/// An error shown to the user instead of redirecting (e.g. unknown client).
pub(crate) fn error(status: StatusCode, message: &str) -> Page {
    let body = format!(r#"<p class="error">{}</p>"#, escape(message));
    page(status, "Sign-in error", &body)
}

pub(crate) fn signed_out() -> Page {
    page(StatusCode::OK, "Signed out", "<p>You are signed out.</p>")
}

/// Wraps `body` (already safe HTML) in a page; `title` must be safe too.
fn page(status: StatusCode, title: &str, body: &str) -> Page {
    let html = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="referrer" content="no-referrer">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · ssogate development identity provider</title>
<style>body{{font-family:system-ui,sans-serif;max-width:24rem;margin:4rem auto;padding:0 1rem}}
label{{display:block;margin:.8rem 0}}input{{display:block;width:100%;padding:.4rem;box-sizing:border-box}}
.error{{color:#b00020}}small{{color:#666}}</style></head>
<body><h1>{title}</h1>
{body}
<p><small>ssogate development identity provider: for demos and tests only.</small></p>
</body></html>
"#
    );
    let mut response = respond(status, "text/html; charset=utf-8", html);
    let headers = response.headers_mut();
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // No `form-action`: browsers would apply it to the redirect after the login POST.
    let csp = "default-src 'none'; style-src 'unsafe-inline'";
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(csp));
    response
}
