//! A cookie-keeping HTTP client that acts like a browser without JavaScript: it keeps
//! cookies by name, follows redirects only when asked, and can fill in the test
//! provider's login form.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http::header::{COOKIE, LOCATION, SET_COOKIE};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type TestBody = UnsyncBoxBody<Bytes, BoxError>;

#[derive(Debug)]
pub struct TestResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
    /// The absolute URL this response came from.
    pub url: String,
}

impl TestResponse {
    pub fn location(&self) -> Option<&str> {
        self.headers.get(LOCATION).and_then(|v| v.to_str().ok())
    }

    /// A redirect to the gateway's sign-in page.
    pub fn is_sign_in_redirect(&self) -> bool {
        self.status == StatusCode::FOUND
            && self
                .location()
                .is_some_and(|l| l.starts_with("/oauth2/sign_in"))
    }

    /// A redirect to sign in again: to the sign-in page, or, for a browser that
    /// signed in here before (`oidc.skip_sign_in_page = "returning"`, once its login is
    /// a few seconds old), straight to `/oauth2/start`. For tests about when a session
    /// ends, whichever of the two a slow run makes it.
    pub fn is_sent_to_sign_in(&self) -> bool {
        self.is_sign_in_redirect()
            || (self.status == StatusCode::FOUND
                && self
                    .location()
                    .is_some_and(|l| l.starts_with("/oauth2/start?rd=")))
    }

    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }
}

pub fn empty() -> TestBody {
    Full::new(Bytes::new())
        .map_err(|e| match e {})
        .boxed_unsync()
}

pub fn full(data: impl Into<Bytes>) -> TestBody {
    Full::new(data.into())
        .map_err(|e| match e {})
        .boxed_unsync()
}

pub struct Browser {
    client: Client<HttpsConnector<HttpConnector>, TestBody>,
    pub base: String,
    pub cookies: BTreeMap<String, String>,
    /// The `Path` each cookie was set with; cookies without one go to every path.
    pub cookie_paths: BTreeMap<String, String>,
}

impl Browser {
    pub fn new(ca_pem: &str, base: &str) -> Browser {
        Browser::with_alpn(ca_pem, base, false)
    }

    /// `http2_only`: speak HTTP/2 to TLS servers (ALPN h2 only).
    pub fn with_alpn(ca_pem: &str, base: &str, http2_only: bool) -> Browser {
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_trusting(ca_pem))
            .https_or_http();
        let connector = if http2_only {
            builder.enable_http2().build()
        } else {
            builder.enable_http1().build()
        };
        let mut client = Client::builder(TokioExecutor::new());
        if http2_only {
            client.http2_only(true);
        }
        Browser {
            client: client.build(connector),
            base: base.to_owned(),
            cookies: BTreeMap::new(),
            cookie_paths: BTreeMap::new(),
        }
    }

    fn absolute(&self, target: &str) -> String {
        if target.starts_with("http://") || target.starts_with("https://") {
            target.to_owned()
        } else {
            format!("{}{}", self.base, target)
        }
    }

    /// Sends a request with this browser's cookies, records the cookies it sets.
    pub async fn send(&mut self, request: Request<TestBody>) -> TestResponse {
        let url = request.uri().to_string();
        self.try_send(request)
            .await
            .unwrap_or_else(|| panic!("{url}: no complete answer within 20 s"))
    }

    /// [`Browser::send`], with `None` when there is no complete answer (a refused
    /// or broken connection, a timeout).
    pub async fn try_send(&mut self, mut request: Request<TestBody>) -> Option<TestResponse> {
        let url = request.uri().to_string();
        if !self.cookies.is_empty() && !request.headers().contains_key(COOKIE) {
            // As a browser does: only cookies whose Path the request's path is in.
            let path = request.uri().path();
            let cookie = self
                .cookies
                .iter()
                .filter(|(n, _)| {
                    self.cookie_paths.get(*n).is_none_or(|p| {
                        path == p.trim_end_matches('/')
                            || path.starts_with(&format!("{}/", p.trim_end_matches('/')))
                    })
                })
                .map(|(n, v)| format!("{n}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            if !cookie.is_empty() {
                request
                    .headers_mut()
                    .insert(COOKIE, cookie.parse().unwrap());
            }
        }
        let response = tokio::time::timeout(Duration::from_secs(20), self.client.request(request))
            .await
            .ok()?
            .ok()?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.ok()?.to_bytes();
        let response = TestResponse {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            url,
        };
        for set in response.set_cookies() {
            let pair = set.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            let removed = value.is_empty() || set.contains("Max-Age=0");
            if removed {
                self.cookies.remove(name);
                self.cookie_paths.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
                let path = set
                    .split(';')
                    .filter_map(|attribute| attribute.trim().split_once('='))
                    .find(|(key, _)| key.eq_ignore_ascii_case("path"))
                    .map_or("/", |(_, path)| path);
                self.cookie_paths.insert(name.to_owned(), path.to_owned());
            }
        }
        Some(response)
    }

    pub fn request(&self, method: Method, target: &str) -> http::request::Builder {
        Request::builder().method(method).uri(self.absolute(target))
    }

    /// A top-level navigation, as a browser's address bar makes it.
    pub async fn navigate(&mut self, target: &str) -> TestResponse {
        let request = self
            .request(Method::GET, target)
            .header(
                "accept",
                "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
            )
            .header("sec-fetch-mode", "navigate")
            .body(empty())
            .unwrap();
        self.send(request).await
    }

    /// Navigates and follows redirects (at most 10), relative ones against the last URL.
    pub async fn follow(&mut self, target: &str) -> TestResponse {
        let mut url = self.absolute(target);
        for _ in 0..10 {
            let response = self.navigate(&url).await;
            let Some(location) = response.location() else {
                return response;
            };
            url = resolve(&response.url, location);
        }
        panic!("too many redirects");
    }

    /// POSTs a back-channel `logout_token` to the gateway, as a provider does.
    pub async fn post_logout_token(&mut self, token: &str) -> TestResponse {
        let body: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("logout_token", token)
            .finish();
        let request = self
            .request(Method::POST, "/oauth2/backchannel-logout")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(full(body))
            .unwrap();
        self.send(request).await
    }

    /// Signs in through `/oauth2/start?rd=<rd>`, filling the provider's form, and
    /// follows the final redirect. Returns the page it lands on.
    pub async fn login(&mut self, rd: &str, username: &str, password: &str) -> TestResponse {
        let callback = self.login_until_callback(rd, username, password).await;
        self.follow(&callback).await
    }

    /// Runs the login up to (not including) the callback; returns the callback URL.
    pub async fn login_until_callback(
        &mut self,
        rd: &str,
        username: &str,
        password: &str,
    ) -> String {
        let start = format!(
            "/oauth2/start?rd={}",
            form_urlencoded::byte_serialize(rd.as_bytes()).collect::<String>()
        );
        let to_provider = self.navigate(&start).await;
        assert_eq!(
            to_provider.status,
            StatusCode::FOUND,
            "start should redirect: {to_provider:?}"
        );
        let authorize = to_provider.location().unwrap().to_owned();
        self.sign_in_at_provider(&authorize, username, password)
            .await
    }

    /// Opens the provider's authorization URL, fills its login form and returns where
    /// the provider sends the browser back to (the client's callback).
    pub async fn sign_in_at_provider(
        &mut self,
        authorize: &str,
        username: &str,
        password: &str,
    ) -> String {
        let form = self.navigate(authorize).await;
        assert_eq!(form.status, StatusCode::OK, "provider login form: {form:?}");
        let action = attribute_after(&form.body, "<form", "action").expect("form action");
        let interaction =
            attribute_after(&form.body, "name=\"interaction\"", "value").expect("interaction id");
        let fields: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("interaction", &interaction)
            .append_pair("username", username)
            .append_pair("password", password)
            .finish();
        let request = self
            .request(Method::POST, &resolve(authorize, &action))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(full(fields))
            .unwrap();
        let submitted = self.send(request).await;
        assert!(
            submitted.status.is_redirection(),
            "provider should redirect back: {submitted:?}"
        );
        submitted.location().unwrap().to_owned()
    }
}

/// A TLS client configuration that trusts only the CA in `ca_pem`.
pub fn tls_trusting(ca_pem: &str) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(ssogate::outbound::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// Resolves `location` against `base` as a browser would.
pub fn resolve(base: &str, location: &str) -> String {
    url::Url::parse(base)
        .unwrap()
        .join(location)
        .unwrap()
        .to_string()
}

/// The value of attribute `name` in the tag that contains `marker`.
fn attribute_after(html: &str, marker: &str, name: &str) -> Option<String> {
    let at = html.find(marker)?;
    let tag_start = html[..at].rfind('<').unwrap_or(at);
    let tag_end = at + html[at..].find('>')?;
    let tag = &html[tag_start..tag_end];
    let key = format!("{name}=\"");
    let value_start = tag.find(&key)? + key.len();
    let value_len = tag[value_start..].find('"')?;
    Some(tag[value_start..value_start + value_len].replace("&amp;", "&"))
}
