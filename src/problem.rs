//! Refusals and failures, and the one answer each gets.
//!
//! Whatever refuses a request or fails it (the gateway, an endpoint, forwarding, the
//! server's tunnels) says what happened ([`Kind`]), in a short public message, and
//! for whom ([`Audience`]: a page load, an API client or a probe) as a [`Problem`];
//! [`Problem::respond`] alone turns that into a response. The kind decides the
//! status, the title and link of the page, the JSON `error` code, extra headers
//! (`Retry-After`) and the metric the problem counts in; [`pages`] writes the escaped
//! HTML or JSON with the headers of every answer the gateway makes itself
//! (`Cache-Control: no-store`, the Content-Security-Policy). The request id and
//! `Strict-Transport-Security` are added to every response, this one included, by
//! the response phase of `Gateway::handle` (as a proxy's `response_filter` phase).
//!
//! A problem is made only when a request is refused: nothing here is on the path of
//! a request that goes through.
//!
//! Some refusals are not problems, because hyper and h2 make them before a request
//! exists and offer no hook to make them otherwise:
//!
//! - HTTP/1: a request head hyper cannot parse is answered with a bare status and
//!   the connection closed: 400 (a bad method, target, header or version), 431 (a
//!   head over `server.max_header_size`, hyper's read buffer) or 414 (a target too
//!   long). hyper's `Server::on_error` writes them; it is private, and
//!   `http1::Builder` has no setting or callback for it. The server's framing check
//!   (`server::framing`) refuses an ambiguous message by handing hyper such a head.
//! - HTTP/2: a header list over `server.max_header_size` is answered by h2 with a
//!   bare 431 on its stream.
//!
//! These carry no body of ours, no request id and no `Strict-Transport-Security`.

use std::borrow::Cow;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;

use crate::body::{ResponseBody, boxed};
use crate::observe::{LoginRefusal, Metrics, UpstreamFailure};
use crate::pages::{self, Link, Page};

/// Who is answered: a person loading a page, a program (fetch/XHR, an API client, a
/// proxy asking for forward-auth), or a probe (health checks, a metrics scraper).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Audience {
    /// An HTML page.
    Page,
    /// JSON.
    Api,
    /// Plain text: the message alone.
    Probe,
}

impl Audience {
    /// A page for a top-level navigation ([`pages::is_navigation`]), JSON otherwise.
    pub fn of<B>(request: &Request<B>) -> Self {
        if pages::is_navigation(request) {
            Self::Page
        } else {
            Self::Api
        }
    }
}

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The request as sent cannot be used (its host, its target, its body): 400,
    /// try again.
    Malformed,
    /// What the request asks for cannot be used (a path, a header, a return target):
    /// 400, back to the start.
    Unusable,
    /// No such page of the gateway's own: 404.
    NotFound,
    /// `/ready` while something the gateway needs is not: 503.
    NotReady,
    /// For a host this gateway does not serve: 421.
    Misdirected,
    /// A request body over `server.max_body_size`: 413.
    BodyTooLarge,
    /// A request body that stopped arriving (`server.body_idle_timeout`): 408.
    BodyIdle,
    /// Too many upstream requests in flight: 503 with `Retry-After`.
    UpstreamBusy,
    /// The upstream did not answer, or broke off its answer: 502.
    UpstreamUnavailable,
    /// The upstream's answer cannot be passed on: 502.
    UpstreamError,
    /// The upstream took too long: 504.
    UpstreamTimeout,
    /// An upgrade the server has no tunnel for: 502.
    UpgradeRefused,
    /// `server.max_tunnels` tunnels are open: 503.
    TooManyTunnels,
    /// The session store cannot be asked: 503.
    StoreUnavailable,
    /// No session, for a request that is not a navigation (navigations are sent to
    /// the sign-in): 401 with where to sign in, written beforehand.
    SignInRequired,
    /// No session (userinfo, forward-auth): 401.
    Unauthorized,
    /// Signed in, but the access rules refuse: 403.
    AccessDenied,
    /// A login that could not finish, and why (which decides the status).
    SignInFailed(LoginRefusal),
    /// A login that cannot start, and why: 503.
    SignInUnavailable(LoginRefusal),
    /// A sign-out that could not end the session: 503.
    SignOutFailed,
    /// A back-channel logout request refused: 400, OAuth's `invalid_request`.
    LogoutRefused,
    /// A back-channel logout that cannot reach the session store: 400, OAuth's
    /// `temporarily_unavailable`.
    LogoutUnavailable,
}

/// The metric a problem counts in.
enum Counted {
    Upstream(UpstreamFailure),
    Login(LoginRefusal),
    Access,
}

const TRY_AGAIN: Link<'static> = Link {
    href: "",
    label: "Try again",
};
const BACK_TO_START: Link<'static> = Link {
    href: "/",
    label: "Back to the start",
};

/// The 401 JSON for a request without a session that is not a navigation (as
/// `serde_json` writes `{"error": "unauthorized", "message": "Sign in required",
/// "sign_in_url": "/oauth2/sign_in"}`; a constant, so that it costs no allocation).
const SIGN_IN_REQUIRED: &str =
    r#"{"error":"unauthorized","message":"Sign in required","sign_in_url":"/oauth2/sign_in"}"#;

impl Kind {
    pub fn status(self) -> StatusCode {
        match self {
            Self::Malformed | Self::Unusable => StatusCode::BAD_REQUEST,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyIdle => StatusCode::REQUEST_TIMEOUT,
            Self::UpstreamBusy
            | Self::NotReady
            | Self::TooManyTunnels
            | Self::StoreUnavailable
            | Self::SignInUnavailable(_)
            | Self::SignOutFailed => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamUnavailable | Self::UpstreamError | Self::UpgradeRefused => {
                StatusCode::BAD_GATEWAY
            }
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::SignInRequired | Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::AccessDenied => StatusCode::FORBIDDEN,
            Self::SignInFailed(why) => match why {
                LoginRefusal::ProviderUnavailable => StatusCode::BAD_GATEWAY,
                LoginRefusal::ProviderError => StatusCode::FORBIDDEN,
                LoginRefusal::IdTokenRefused => StatusCode::UNAUTHORIZED,
                LoginRefusal::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
                LoginRefusal::MalformedCallback
                | LoginRefusal::NotThisBrowser
                | LoginRefusal::StateExpired
                | LoginRefusal::IssuerMismatch => StatusCode::BAD_REQUEST,
            },
            Self::LogoutRefused | Self::LogoutUnavailable => StatusCode::BAD_REQUEST,
        }
    }

    /// The page's title.
    fn title(self) -> &'static str {
        match self {
            Self::Malformed | Self::Unusable | Self::LogoutRefused => "Bad request",
            Self::NotFound => "Not found",
            Self::NotReady => "Not ready",
            Self::Misdirected => "Misdirected request",
            Self::BodyTooLarge => "Request too large",
            Self::BodyIdle => "Request timed out",
            Self::UpstreamBusy => "Too many requests",
            Self::UpstreamUnavailable => "Upstream unavailable",
            Self::UpstreamError => "Upstream error",
            Self::UpstreamTimeout => "Upstream timed out",
            Self::UpgradeRefused => "Upgrade refused",
            Self::TooManyTunnels => "Too many open connections",
            Self::StoreUnavailable | Self::LogoutUnavailable => "Temporarily unavailable",
            Self::SignInRequired | Self::Unauthorized => "Sign in required",
            Self::AccessDenied => "Access denied",
            Self::SignInFailed(_) => "Sign-in failed",
            Self::SignInUnavailable(_) => "Sign-in unavailable",
            Self::SignOutFailed => "Sign-out not completed",
        }
    }

    /// Where the page leads on.
    fn link(self) -> Link<'static> {
        match self {
            Self::Unusable
            | Self::NotFound
            | Self::StoreUnavailable
            | Self::SignInUnavailable(_)
            | Self::SignOutFailed => BACK_TO_START,
            Self::AccessDenied => Link {
                href: "/oauth2/sign_out",
                label: "Sign out and switch account",
            },
            Self::SignInFailed(_) => Link {
                href: "/oauth2/start?rd=%2F",
                label: "Try again",
            },
            _ => TRY_AGAIN,
        }
    }

    /// JSON's `error` (the status's reason in snake case unless said here), and the
    /// name the message goes by.
    fn json_fields(self) -> (Option<&'static str>, &'static str) {
        match self {
            Self::StoreUnavailable => (Some("session_store_unavailable"), "message"),
            Self::AccessDenied => (None, "rule"),
            Self::LogoutRefused => (Some("invalid_request"), "error_description"),
            Self::LogoutUnavailable => (Some("temporarily_unavailable"), "error_description"),
            _ => (None, "message"),
        }
    }

    fn counted(self) -> Option<Counted> {
        match self {
            Self::UpstreamBusy => Some(Counted::Upstream(UpstreamFailure::Busy)),
            Self::UpstreamUnavailable | Self::UpstreamError => {
                Some(Counted::Upstream(UpstreamFailure::Unavailable))
            }
            Self::UpstreamTimeout => Some(Counted::Upstream(UpstreamFailure::Timeout)),
            Self::AccessDenied => Some(Counted::Access),
            Self::SignInFailed(why) | Self::SignInUnavailable(why) => Some(Counted::Login(why)),
            _ => None,
        }
    }
}

/// A refusal or failure: what happened, what the person or program reads, and who
/// that is.
#[derive(Debug)]
pub struct Problem {
    pub kind: Kind,
    pub audience: Audience,
    /// Plain text (escaped when it goes into a page); empty: none (JSON leaves the
    /// field out).
    pub message: Cow<'static, str>,
}

impl Problem {
    pub fn new(kind: Kind, audience: Audience, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind,
            audience,
            message: message.into(),
        }
    }

    /// The answer: counted in its metric, with the status, body and headers its kind
    /// and audience say.
    pub fn respond(self, metrics: &Metrics) -> Response<ResponseBody> {
        match self.kind.counted() {
            Some(Counted::Upstream(why)) => metrics.upstream_failure(why),
            Some(Counted::Login(why)) => metrics.login_refused(why),
            Some(Counted::Access) => metrics.access_refused(),
            None => {}
        }
        let kind = self.kind;
        let mut response = self.render().map(boxed);
        if kind == Kind::UpstreamBusy {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }

    fn render(self) -> Response<Full<Bytes>> {
        let status = self.kind.status();
        match self.audience {
            Audience::Page => {
                return Page {
                    status,
                    title: self.kind.title(),
                    message: &self.message,
                    links: &[self.kind.link()],
                }
                .render();
            }
            Audience::Probe => {
                return pages::text(
                    status,
                    match self.message {
                        Cow::Borrowed(text) => Bytes::from_static(text.as_bytes()),
                        Cow::Owned(text) => Bytes::from(text),
                    },
                );
            }
            Audience::Api => {}
        }
        if self.kind == Kind::SignInRequired {
            return pages::json_text(status, SIGN_IN_REQUIRED);
        }
        let (error, field) = self.kind.json_fields();
        let error = error.map_or_else(|| reason_code(status), str::to_owned);
        let mut object = serde_json::Map::new();
        object.insert("error".to_owned(), error.into());
        if !self.message.is_empty() {
            object.insert(field.to_owned(), self.message.as_ref().into());
        }
        pages::json(status, &serde_json::Value::Object(object))
    }
}

/// A status's reason in snake case: `payload_too_large`.
fn reason_code(status: StatusCode) -> String {
    status
        .canonical_reason()
        .unwrap_or("error")
        .to_ascii_lowercase()
        .replace([' ', '-'], "_")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn answer(
        kind: Kind,
        audience: Audience,
        message: &'static str,
    ) -> (Response<()>, String) {
        let metrics = Metrics::new();
        let (parts, body) = Problem::new(kind, audience, message)
            .respond(&metrics)
            .into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (
            Response::from_parts(parts, ()),
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    #[test]
    fn the_sign_in_required_answer_is_the_json_it_says() {
        let written = serde_json::json!({
            "error": "unauthorized",
            "message": "Sign in required",
            "sign_in_url": "/oauth2/sign_in",
        })
        .to_string();
        assert_eq!(SIGN_IN_REQUIRED, written);
    }

    #[tokio::test]
    async fn json_answers_name_the_status_unless_the_kind_says() {
        let cases = [
            (
                Kind::BodyTooLarge,
                "too <big>",
                r#"{"error":"payload_too_large","message":"too <big>"}"#,
            ),
            (
                Kind::StoreUnavailable,
                "down",
                r#"{"error":"session_store_unavailable","message":"down"}"#,
            ),
            (
                Kind::LogoutRefused,
                "no",
                r#"{"error":"invalid_request","error_description":"no"}"#,
            ),
            (
                Kind::AccessDenied,
                "r1",
                r#"{"error":"forbidden","rule":"r1"}"#,
            ),
            (Kind::Unauthorized, "", r#"{"error":"unauthorized"}"#),
        ];
        for (kind, message, json) in cases {
            let (response, body) = answer(kind, Audience::Api, message).await;
            assert_eq!(response.status(), kind.status());
            assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
            assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
            assert_eq!(body, json);
        }
    }

    #[tokio::test]
    async fn probes_read_the_message_alone() {
        let (response, body) = answer(Kind::NotReady, Audience::Probe, "NOT READY\n").await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
        assert_eq!(body, "NOT READY\n");
    }

    #[test]
    fn a_problem_counts_in_the_metric_its_kind_says() {
        let metrics = Metrics::new();
        drop(Problem::new(Kind::UpstreamTimeout, Audience::Api, "").respond(&metrics));
        drop(Problem::new(Kind::NotFound, Audience::Page, "").respond(&metrics));
        let text = metrics.render(0);
        assert!(
            text.contains("ssogate_upstream_failures_total{reason=\"timeout\"} 1\n"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn pages_are_escaped_and_busy_says_when_to_retry() {
        let (response, body) = answer(Kind::UpstreamBusy, Audience::Page, "<b>wait</b>").await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
        assert!(body.contains("<title>Too many requests</title>"), "{body}");
        assert!(body.contains("&lt;b&gt;wait&lt;/b&gt;"), "{body}");
        assert!(!body.contains("<b>"), "{body}");
    }

    #[test]
    fn login_failures_take_their_status_from_why() {
        assert_eq!(
            Kind::SignInFailed(LoginRefusal::IdTokenRefused).status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            Kind::SignInFailed(LoginRefusal::ProviderUnavailable).status(),
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(
            Kind::SignInUnavailable(LoginRefusal::ProviderUnavailable).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
