//! One request, one pass: normalise, route, authenticate, authorise, forward.
//!
//! [`Gateway::handle`] is the whole lifecycle in one place; the sign-in endpoints live
//! in [`endpoints`], header work in [`crate::proxy::headers`], rules in
//! [`crate::policy`]. Every decision is made on the request the upstream will act on.
//! Nothing the client sends can pose as an identity: identity headers are stripped
//! before routing, and set only from a server-side session. Its hop-by-hop headers go
//! before anything reads the request, so they cannot take away a header that was
//! decided on or that the gateway sets. Nor can it choose what path rules see: the
//! path is made canonical first and forwarded so, and rules are decided on every form
//! the upstream may decode it to ([`policy::decide`]).

mod endpoints;
mod host;
mod reload;
mod request;
mod upkeep;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderValue;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use url::Url;

use crate::config::Settings;
use crate::observe::{self, AccessRecord, Metrics, REQUEST_ID, RouteClass};
use crate::oidc::{Provider, ProviderHttp};
use crate::outbound;
use crate::pages::{self, Link, Page, is_navigation};
use crate::policy::{self, EmailFile, Route, RouteRule};
use crate::proxy::headers::{self, ForwardedFacts};
use crate::proxy::{ResponseBody, Upstream, boxed, upgrade_protocol};
use crate::session::{CookieCodec, Session, SessionStore, StoreUnavailable};

pub use host::TlsServerName;
pub use reload::LiveGateway;
pub use request::{param, query_params};

/// Headers that some backends take as the request path (IIS, Symfony, nginx setups).
/// A client must never choose the path the upstream acts on, so they are removed
/// before forwarding. (Forward-auth reads them from a trusted proxy.)
const PATH_OVERRIDE_HEADERS: [&str; 4] = [
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
    "x-forwarded-uri",
];

/// Headers a client's `Connection` may not name (besides the identity headers): the
/// ones that carry its credentials and target, and the ones the gateway sets itself.
const END_TO_END_HEADERS: [&str; 10] = [
    "authorization",
    "cookie",
    "host",
    "content-length",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
    "x-request-id",
];

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("upstream TLS: {0}")]
    UpstreamTls(#[source] outbound::OutboundTlsError),
    #[error("provider TLS: {0}")]
    ProviderTls(#[source] outbound::OutboundTlsError),
    #[error("access.allowed_emails_file {0}: {1}")]
    EmailFile(String, #[source] std::io::Error),
    #[error("the callback URL cannot be built from server.public_url and oidc.callback_path: {0}")]
    CallbackUrl(url::ParseError),
    #[error(transparent)]
    SessionStore(#[from] crate::session::SharedStoreError),
    #[error("the identity provider of the new settings cannot be used: {0}")]
    Provider(String),
}

/// Who a forwarded request comes from, as far as the gateway knows.
#[derive(Clone, Copy)]
pub enum Caller<'a> {
    /// A signed-in person: their identity goes upstream.
    SignedIn(&'a Session),
    /// Nobody the gateway knows, let through by a public route.
    Anonymous,
    /// Let through by a credential it carries (token traffic): the upstream must
    /// authenticate it by that credential alone, so its own session cookies go.
    Credential,
}

pub struct Gateway {
    settings: Settings,
    provider: Arc<Provider>,
    upstream: Upstream,
    /// Shared with the gateways that replace this one on reload.
    sessions: Arc<SessionStore>,
    cookies: CookieCodec,
    metrics: Arc<Metrics>,
    /// The `Strict-Transport-Security` value, when `tls.hsts_max_age` is set.
    hsts: Option<HeaderValue>,
    /// Folded names (lower case, `_` as `-`) of the identity headers: removed from
    /// every request before anything else.
    identity_folds: Vec<String>,
    /// Folded names of the path overrides some backends honour and of the
    /// forwarding headers ([`headers::FORWARDING_HEADERS`]): removed before forwarding.
    upstream_strip_folds: Vec<String>,
    /// The hosts requests may be for ([`host`]).
    served_hosts: host::ServedHosts,
    /// `public_url`'s host (and port unless the default): the upstream's `Host` and
    /// `X-Forwarded-Host`.
    public_host: HeaderValue,
    /// Folded names a client's `Connection` header may not name.
    end_to_end_folds: Vec<String>,
    /// What the names of login cookies start with (the state's first characters
    /// follow): the session cookie's name, with `__Secure-` for `__Host-` since a login
    /// cookie is scoped to the callback path, then `_csrf_`.
    login_cookie_prefix: String,
    allowed_emails_file: Option<Arc<EmailFile>>,
}

impl Gateway {
    pub fn new(settings: Settings) -> Result<Self, GatewayError> {
        Self::build(settings, None)
    }

    /// A gateway for `settings`; with `previous`, one that takes over from it (on
    /// reload): same sessions and metrics, same provider when its settings did not
    /// change.
    fn build(settings: Settings, previous: Option<&Gateway>) -> Result<Self, GatewayError> {
        let metrics = previous.map_or_else(|| Arc::new(Metrics::new()), |g| g.metrics.clone());
        let upstream_roots = outbound::root_store(settings.upstream.ca_file.as_deref())
            .map_err(GatewayError::UpstreamTls)?;
        let upstream_connector =
            outbound::connector(upstream_roots, settings.upstream.connect_timeout)
                .map_err(GatewayError::UpstreamTls)?;
        let provider_roots = outbound::root_store(settings.oidc.ca_file.as_deref())
            .map_err(GatewayError::ProviderTls)?;
        let provider_connector = outbound::connector(provider_roots, settings.oidc.http_timeout)
            .map_err(GatewayError::ProviderTls)?;
        let callback = settings
            .server
            .public_url
            .join(&settings.oidc.callback_path)
            .map_err(GatewayError::CallbackUrl)?;
        let same_provider = previous.filter(|g| {
            g.settings.oidc == settings.oidc
                && g.settings.server.public_url == settings.server.public_url
                && g.settings.access.groups_claim == settings.access.groups_claim
        });
        let provider = match same_provider {
            Some(previous) => previous.provider.clone(),
            None => Arc::new(Provider::new(
                settings.oidc.clone(),
                callback,
                settings.access.groups_claim.clone(),
                ProviderHttp::new(
                    provider_connector,
                    settings.oidc.http_timeout,
                    metrics.clone(),
                ),
            )),
        };
        let sessions = match previous {
            Some(previous) => previous.sessions.clone(),
            None => Arc::new(SessionStore::new(&settings.session)?),
        };
        let identity_folds: Vec<String> = settings
            .identity_headers
            .iter()
            .map(|name| headers::folded_name(name.as_str()))
            .collect();
        let upstream_strip_folds = PATH_OVERRIDE_HEADERS
            .iter()
            .chain(&headers::FORWARDING_HEADERS)
            .chain(&[REQUEST_ID.as_str()])
            .map(|name| headers::folded_name(name))
            .collect();
        let public_url = &settings.server.public_url;
        let public_host = HeaderValue::from_str(&match public_url.port() {
            Some(port) => format!("{}:{port}", public_url.host_str().unwrap_or_default()),
            None => public_url.host_str().unwrap_or_default().to_owned(),
        })
        .expect("a URL's host is a valid header value");
        let end_to_end_folds = END_TO_END_HEADERS
            .iter()
            .map(|name| headers::folded_name(name))
            .chain(identity_folds.iter().cloned())
            .collect();
        let allowed_emails_file = settings
            .access
            .allowed_emails_file
            .as_deref()
            .map(|path| {
                EmailFile::load(path)
                    .map(Arc::new)
                    .map_err(|e| GatewayError::EmailFile(path.display().to_string(), e))
            })
            .transpose()?;
        Ok(Self {
            upstream: Upstream::new(
                &settings.upstream,
                upstream_connector,
                settings.server.threads,
                settings.server.max_body_size,
                metrics.clone(),
            ),
            provider,
            sessions,
            cookies: CookieCodec::new(
                &settings.session.secrets,
                settings.server.public_url.scheme() == "https",
            ),
            login_cookie_prefix: login_cookie_prefix(&settings.session.cookie_name),
            identity_folds,
            upstream_strip_folds,
            served_hosts: host::ServedHosts::new(
                &settings.server.public_url,
                &settings.server.host_aliases,
            ),
            public_host,
            end_to_end_folds,
            allowed_emails_file,
            metrics,
            hsts: settings.hsts_max_age.map(|age| {
                HeaderValue::from_str(&format!("max-age={}", age.as_secs()))
                    .expect("digits are a valid header value")
            }),
            settings,
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn provider(&self) -> &Arc<Provider> {
        &self.provider
    }

    /// Asks the shared session store for its version (`ssogate check`).
    pub async fn ping_session_store(&self) -> Result<String, StoreUnavailable> {
        self.sessions.server_version().await
    }

    /// Starts the background work: the session store's, the email file's watch, and
    /// provider discovery, now; on failure discovery keeps retrying in the background
    /// (logins answer 503 meanwhile, everything else keeps working).
    pub async fn start_background(self: &Arc<Self>) {
        self.sessions.start();
        if let Some(file) = &self.allowed_emails_file {
            file.watch();
        }
        if let Err(e) = self.provider.discover().await {
            tracing::error!(issuer = %self.settings.oidc.issuer, error = %e, "identity provider not available; retrying in the background");
            let provider = self.provider.clone();
            tokio::spawn(async move {
                let mut delay = Duration::from_secs(2);
                while !provider.is_ready() {
                    tokio::time::sleep(delay).await;
                    match provider.discover().await {
                        Ok(()) => tracing::info!("identity provider metadata loaded"),
                        Err(e) => {
                            tracing::warn!(error = %e, "identity provider still not available")
                        }
                    }
                    delay = (delay * 2).min(Duration::from_secs(60));
                }
            });
        } else {
            tracing::info!(issuer = %self.settings.oidc.issuer, "identity provider metadata and keys loaded");
        }
    }

    /// The whole lifecycle of one request, with its request id, access line and
    /// metrics around it.
    pub async fn handle(
        &self,
        mut request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<ResponseBody> {
        let id = observe::request_id(request.headers(), self.peer_is_trusted(peer));
        request.headers_mut().insert(REQUEST_ID, id.clone());
        let mut record = AccessRecord::new(
            self.metrics.clone(),
            request.method().clone(),
            request.uri().path(),
            id.clone(),
        );
        let response = self.serve(request, peer, &mut record).await;
        let (mut parts, body) = response.into_parts();
        parts.headers.insert(REQUEST_ID, id);
        if let Some(hsts) = &self.hsts {
            parts
                .headers
                .insert(http::header::STRICT_TRANSPORT_SECURITY, hsts.clone());
        }
        let body = boxed(record.attach(parts.status, body));
        Response::from_parts(parts, body)
    }

    /// Normalise, route, authenticate, authorise, forward; `record` learns the route
    /// class and the person.
    async fn serve(
        &self,
        mut request: Request<Incoming>,
        peer: SocketAddr,
        record: &mut AccessRecord,
    ) -> Response<ResponseBody> {
        // normalise: nothing the client sent may pose as identity; its hop-by-hop
        // headers go before anything reads the request (so what is decided on is what
        // the upstream gets); from here on the path is the canonical one, matched and
        // forwarded alike.
        headers::remove_folded(request.headers_mut(), &self.identity_folds);
        let upgrade = upgrade_protocol(&request);
        if let Err(e) = headers::remove_client_hop_by_hop(request.headers_mut(), upgrade, |name| {
            self.end_to_end_folds.iter().any(|f| f == name)
        }) {
            tracing::info!(error = %e, "request refused: Connection names an end-to-end header");
            return self.page(
                StatusCode::BAD_REQUEST,
                "Bad request",
                &format!("The request cannot be used: {e}."),
            );
        }
        if let Err(e) = request::canonicalize_path(&mut request) {
            tracing::info!(path = %request.uri().path(), error = %e, "request refused: bad path");
            return self.page(
                StatusCode::BAD_REQUEST,
                "Bad request",
                &format!("The address cannot be used: {e}."),
            );
        }

        // Only requests for this gateway's host go on (health checks come by IP).
        let path = request.uri().path();
        let health = path == "/ping"
            || path == "/ready"
            || (path == "/metrics" && self.settings.server.metrics_listen.is_none());
        if !health && let Err(refusal) = self.check_host(&request) {
            return self.misdirected(&request, &refusal);
        }

        // route: the gateway's own endpoints, then the rules.
        let oidc = &self.settings.oidc;
        match path {
            "/ping" => return pages::text(StatusCode::OK, "OK\n").map(boxed),
            "/ready" => return self.ready().await,
            "/metrics" if self.settings.server.metrics_listen.is_none() => {
                return self.metrics_on_main_listener(&request, peer).await;
            }
            "/oauth2/sign_in" => return self.sign_in_page(&request),
            "/oauth2/start" => return self.start_login(&request).await,
            "/oauth2/sign_out" => return self.sign_out(&request).await,
            "/oauth2/userinfo" => return self.userinfo(&request).await,
            "/oauth2/auth" => return self.forward_auth(&request, peer).await,
            "/oauth2/backchannel-logout" => return self.backchannel_logout(request).await,
            p if p == oidc.callback_path => return self.callback(&request).await,
            p if p.starts_with("/oauth2/") => {
                return self.page(
                    StatusCode::NOT_FOUND,
                    "Not found",
                    "This gateway has no such page.",
                );
            }
            _ => {}
        }
        let rules = match policy::decide(
            &self.settings.access.rules,
            request.method(),
            path,
            request.headers(),
        ) {
            Route::Public { by_credential } => {
                record.class = RouteClass::Public;
                let caller = if by_credential {
                    Caller::Credential
                } else {
                    Caller::Anonymous
                };
                return self.forward(request, peer, caller).await;
            }
            Route::Protected(rules) => rules,
        };
        record.class = RouteClass::Protected;

        // authenticate (and keep the session in step with the provider), authorise.
        let session = match self.live_session(request.headers()).await {
            Ok(Some(session)) => session,
            Ok(None) => return self.unauthenticated(&request),
            Err(e) => return self.store_unavailable(&request, &e),
        };
        record.session = Some(session.clone());
        if let Err(refusal) = self.authorize(&session, &rules) {
            self.metrics.access_refused();
            return self.refused(&session, &refusal);
        }
        self.forward(request, peer, Caller::SignedIn(&session))
            .await
    }

    /// Whether the request is for a host this gateway serves ([`host`]).
    fn check_host(&self, request: &Request<Incoming>) -> Result<(), host::HostRefusal> {
        let tls_name = request.extensions().get::<TlsServerName>();
        self.served_hosts
            .check(request, tls_name.map(|name| &*name.0))
    }

    /// A request for a host this gateway does not serve: a page load is sent to the
    /// same path on `public_url`; anything else gets 421 (400 for a missing, malformed
    /// or self-contradicting host), as a page or JSON.
    fn misdirected(
        &self,
        request: &Request<Incoming>,
        refusal: &host::HostRefusal,
    ) -> Response<ResponseBody> {
        let page = is_navigation(request);
        let tls_name = request.extensions().get::<TlsServerName>().is_some();
        tracing::info!(host = ?request.headers().get(http::header::HOST), authority = ?request.uri().authority(), tls_name, reason = %refusal, "request refused: not for this gateway's host");
        if !refusal.is_misdirected() {
            return pages::problem(
                page,
                StatusCode::BAD_REQUEST,
                "Bad request",
                &format!("The request cannot be used: {refusal}."),
            )
            .map(boxed);
        }
        // The client's connection is for another name: only a fresh one helps.
        if page && *refusal == host::HostRefusal::Foreign {
            // Appended to the origin, never resolved against it: `//other/` stays a path.
            let target = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
            let origin = self
                .settings
                .server
                .public_url
                .as_str()
                .trim_end_matches('/');
            return redirect(&format!("{origin}{target}"));
        }
        let message = format!(
            "This gateway answers only for {}.",
            self.public_host.to_str().unwrap_or_default()
        );
        pages::problem(
            page,
            StatusCode::MISDIRECTED_REQUEST,
            "Misdirected request",
            &message,
        )
        .map(boxed)
    }

    /// The metrics, on the main listener: only to a direct client from
    /// `server.metrics_networks`. Direct is decided by the connection: a trusted
    /// proxy's connection is never direct, whatever it sends or leaves out. (A request
    /// that says it was forwarded is not direct either: a proxy on the same machine that
    /// is missing from `server.trusted_proxies` must not open the metrics to everyone.)
    /// Anyone else gets the same 404 as an unknown page.
    async fn metrics_on_main_listener(
        &self,
        request: &Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<ResponseBody> {
        let says_forwarded = request.headers().keys().any(|name| {
            ["forwarded", "x-forwarded-for", "x-real-ip"]
                .contains(&headers::folded_name(name.as_str()).as_str())
        });
        let direct = !self.peer_is_trusted(peer) && !says_forwarded;
        let allowed = self
            .settings
            .server
            .metrics_networks
            .iter()
            .any(|net| net.contains(&peer.ip()));
        if direct && allowed {
            return self.metrics_page().await;
        }
        self.page(
            StatusCode::NOT_FOUND,
            "Not found",
            "This gateway has no such page.",
        )
    }

    /// `GET /metrics`: the Prometheus text exposition.
    pub async fn metrics_page(&self) -> Response<ResponseBody> {
        self.sessions.sync().await; // the session count is exact, not eventual
        let mut response =
            pages::text(StatusCode::OK, self.metrics.render(self.sessions.len())).map(boxed);
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        response
    }

    fn peer_is_trusted(&self, peer: SocketAddr) -> bool {
        self.settings
            .server
            .trusted_proxies
            .iter()
            .any(|net| net.contains(&peer.ip().to_canonical()))
    }

    /// Global access rules and the matched routes' own; logs refusals.
    fn authorize(&self, session: &Session, rules: &[&RouteRule]) -> Result<(), policy::Refusal> {
        let file_emails = self.allowed_emails_file.as_ref().map(|f| f.current());
        policy::authorize(&session.identity, &self.settings.access, file_emails.as_deref(), rules).inspect_err(|refusal| {
            tracing::info!(sub = %session.identity.sub, email = ?session.identity.email, rule = %refusal.0, "access refused");
        })
    }

    /// forward: the gateway's cookies out, identity (if any) and `X-Forwarded-*` in.
    async fn forward(
        &self,
        mut request: Request<Incoming>,
        peer: SocketAddr,
        caller: Caller<'_>,
    ) -> Response<ResponseBody> {
        self.prepare_upstream_headers(request.headers_mut(), peer, caller);
        let mut response = self.upstream.forward(request, &self.public_host).await;
        // The gateway's cookies are the gateway's: the upstream may neither set nor
        // clear them.
        let cookie_name = self.settings.session.cookie_name.as_bytes();
        let removed = headers::remove_set_cookies(response.headers_mut(), |name| {
            name.eq_ignore_ascii_case(cookie_name)
                || name
                    .get(..self.login_cookie_prefix.len())
                    .is_some_and(|start| {
                        start.eq_ignore_ascii_case(self.login_cookie_prefix.as_bytes())
                    })
        });
        if !removed.is_empty() {
            tracing::warn!(cookies = ?removed, "upstream response tried to set the gateway's own cookies; removed");
        }
        response
    }

    /// The header work of forwarding: the path overrides, every spelling of the
    /// forwarding headers and the gateway's cookies out (and the upstream's session
    /// cookies, for a request let through by its credential), the identity (if any)
    /// and `X-Forwarded-*` in. (Public for the hot-path benchmark.)
    pub fn prepare_upstream_headers(
        &self,
        headers: &mut http::HeaderMap,
        peer: SocketAddr,
        caller: Caller<'_>,
    ) {
        let client = headers::client_address(headers, peer.ip(), |ip| {
            self.settings
                .server
                .trusted_proxies
                .iter()
                .any(|net| net.contains(&ip))
        });
        // The request id (set by `handle`) stays; other spellings of it go.
        let request_id = headers.remove(REQUEST_ID);
        headers::remove_folded(headers, &self.upstream_strip_folds);
        if let Some(request_id) = request_id {
            headers.insert(REQUEST_ID, request_id);
        }
        let cookie_name = &self.settings.session.cookie_name;
        let upstream_session = &self.settings.access.upstream_session_cookies;
        let credential = matches!(caller, Caller::Credential);
        headers::remove_cookies(headers, |name| {
            self.is_gateway_cookie(name, cookie_name)
                || (credential && upstream_session.iter().any(|c| c == name))
        });
        if let Caller::SignedIn(session) = caller {
            self.set_identity_headers(headers, session);
        }
        headers::set_forwarded(
            headers,
            &ForwardedFacts {
                client,
                proto: self.settings.server.public_url.scheme(),
                host: &self.public_host,
            },
        );
    }

    fn is_gateway_cookie(&self, name: &str, cookie_name: &str) -> bool {
        name == cookie_name || name.starts_with(&self.login_cookie_prefix)
    }

    /// The identity headers: `sub`; the email only when the provider verified it;
    /// the preferred username; the groups, each percent-encoded and joined with `,`
    /// ([`headers::encode_list`]). A value that cannot travel in a header is left out.
    fn set_identity_headers(&self, headers: &mut http::HeaderMap, session: &Session) {
        let names = &self.settings.identity_headers;
        let identity = &session.identity;
        let groups = headers::encode_list(&identity.groups);
        // An address the provider has not verified is nobody's proof of identity.
        let email = identity
            .email
            .as_deref()
            .filter(|_| identity.email_verified);
        let values = [
            (&names.user, Some(&*identity.sub)),
            (&names.email, email),
            (
                &names.preferred_username,
                identity.preferred_username.as_deref(),
            ),
            (
                &names.groups,
                (!groups.is_empty()).then_some(groups.as_str()),
            ),
        ];
        for (name, value) in values {
            let (Some(name), Some(value)) = (name, value) else {
                continue;
            };
            match HeaderValue::from_bytes(value.as_bytes()) {
                Ok(value) => {
                    headers.insert(name.clone(), value);
                }
                Err(_) => {
                    tracing::warn!(header = %name, sub = %identity.sub, "claim value cannot travel in a header (control characters); header left out")
                }
            }
        }
    }

    /// The session named by the request's cookie, as stored (no provider upkeep).
    async fn session_of(
        &self,
        headers: &http::HeaderMap,
    ) -> Result<Option<(String, Arc<Session>)>, StoreUnavailable> {
        let Some(id) = self
            .cookies
            .open(headers, &self.settings.session.cookie_name)
        else {
            return Ok(None);
        };
        Ok(self.sessions.get(&id).await?.map(|session| (id, session)))
    }

    /// The session named by the request's cookie, kept in step with the provider
    /// ([`Gateway::upkeep`]); `None` when there is none or the provider ended it.
    async fn live_session(
        &self,
        headers: &http::HeaderMap,
    ) -> Result<Option<Arc<Session>>, StoreUnavailable> {
        let Some((id, session)) = self.session_of(headers).await? else {
            return Ok(None);
        };
        Ok(self.upkeep(&id, &session).await.then_some(session))
    }

    /// The session store cannot be asked: 503, as a page or JSON like the 401.
    fn store_unavailable(
        &self,
        request: &Request<Incoming>,
        error: &StoreUnavailable,
    ) -> Response<ResponseBody> {
        tracing::error!(error = %error, "request refused: session store unavailable");
        let message = "Sessions cannot be checked right now (the session store is unreachable). Try again in a moment.";
        if is_navigation(request) {
            return self.page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Temporarily unavailable",
                message,
            );
        }
        pages::json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"error": "session_store_unavailable", "message": message}),
        )
        .map(boxed)
    }

    /// No session: navigations go to the sign-in, everything else gets 401 JSON.
    fn unauthenticated(&self, request: &Request<Incoming>) -> Response<ResponseBody> {
        if is_navigation(request) {
            // Back to the same address after signing in, query included, unless that
            // is too long to travel with the login: then the path alone, or the start.
            let origin = self.settings.server.public_url.as_str().len();
            let target = [
                request.uri().path_and_query().map_or("/", |pq| pq.as_str()),
                request.uri().path(),
            ]
            .into_iter()
            .find(|target| origin + target.len() <= policy::MAX_RETURN_TARGET)
            .unwrap_or("/");
            let entry = if self.settings.oidc.skip_sign_in_page {
                "/oauth2/start"
            } else {
                "/oauth2/sign_in"
            };
            let location = format!("{entry}?rd={}", urlencode(target));
            return redirect(&location);
        }
        pages::json(
            StatusCode::UNAUTHORIZED,
            &serde_json::json!({
                "error": "unauthorized",
                "message": "Sign in required",
                "sign_in_url": "/oauth2/sign_in",
            }),
        )
        .map(boxed)
    }

    fn refused(&self, session: &Session, refusal: &policy::Refusal) -> Response<ResponseBody> {
        let who = session
            .identity
            .email
            .as_deref()
            .or(session.identity.preferred_username.as_deref())
            .unwrap_or(&session.identity.sub);
        let message = format!(
            "You are signed in as {who}, but this account may not use this site. Refused by rule {}. \
             Sign out to switch to another account, or ask an administrator for access.",
            refusal.0
        );
        Page {
            status: StatusCode::FORBIDDEN,
            title: "Access denied",
            message: &message,
            links: &[Link {
                href: "/oauth2/sign_out",
                label: "Sign out and switch account",
            }],
        }
        .render()
        .map(boxed)
    }

    async fn ready(&self) -> Response<ResponseBody> {
        if !self.provider.is_ready() {
            return pages::text(
                StatusCode::SERVICE_UNAVAILABLE,
                "NOT READY: identity provider metadata not loaded\n",
            )
            .map(boxed);
        }
        if let Some(reason) = self.sessions.unavailable() {
            let text = format!("NOT READY: session store (Redis) unreachable: {reason}\n");
            return pages::text(StatusCode::SERVICE_UNAVAILABLE, text).map(boxed);
        }
        let url = &self.settings.upstream.url;
        let address = (
            url.host_str()
                .unwrap_or_default()
                .trim_matches(['[', ']'])
                .to_owned(),
            url.port_or_known_default().unwrap_or(80),
        );
        let connect = tokio::time::timeout(
            self.settings.upstream.connect_timeout,
            tokio::net::TcpStream::connect(address),
        )
        .await;
        match connect {
            Ok(Ok(_)) => pages::text(StatusCode::OK, "READY\n").map(boxed),
            _ => pages::text(
                StatusCode::SERVICE_UNAVAILABLE,
                "NOT READY: upstream unreachable\n",
            )
            .map(boxed),
        }
    }

    fn page(&self, status: StatusCode, title: &str, message: &str) -> Response<ResponseBody> {
        Page {
            status,
            title,
            message,
            links: &[Link {
                href: "/",
                label: "Back to the start",
            }],
        }
        .render()
        .map(boxed)
    }

    fn public_url(&self, path: &str) -> Url {
        self.settings
            .server
            .public_url
            .join(path)
            .unwrap_or_else(|_| self.settings.server.public_url.clone())
    }
}

/// See [`Gateway::login_cookie_prefix`].
fn login_cookie_prefix(session_cookie: &str) -> String {
    match session_cookie.strip_prefix("__Host-") {
        Some(rest) => format!("__Secure-{rest}_csrf_"),
        None => format!("{session_cookie}_csrf_"),
    }
}

fn redirect(location: &str) -> Response<ResponseBody> {
    let mut response = pages::text(StatusCode::FOUND, "").map(boxed);
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(http::header::LOCATION, value);
    }
    response
}

fn urlencode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}
