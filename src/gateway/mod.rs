//! One request, one pass: normalise, route, authenticate, authorise, forward.
//!
//! [`Gateway::handle`] is the whole lifecycle in one place; the sign-in endpoints live
//! in [`endpoints`], header work in [`crate::proxy::headers`], rules in
//! [`crate::policy`]. Every decision is made on the request the upstream will act on.
//! Nothing the client sends can pose as an identity: identity headers (and the signed
//! assertion's, [`crate::assertion`]) are stripped before routing, and set only from a
//! server-side session. Its hop-by-hop headers go before anything reads the request,
//! so they cannot take away a header that was decided on or that the gateway sets.
//! Nor can it choose what path rules see: the path is made canonical first and
//! forwarded so, and rules are decided on every form the upstream may decode it to
//! ([`policy::decide`]).
//!
//! The response side has one shape too: every refusal or failure, here, in an
//! endpoint or in forwarding, is a [`Problem`] answered by [`Problem::respond`] (its
//! status, body, headers and metric decided there), and `handle` then gives every
//! response, forwarded or made here, its request id and `Strict-Transport-Security`.

mod endpoints;
mod host;
mod reload;
mod request;
mod returning;
mod upkeep;

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::HeaderValue;
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use url::Url;

use crate::assertion::AssertionSigner;
use crate::body::{ResponseBody, boxed};
use crate::config::Settings;
use crate::observe::{self, AccessRecord, LoggedBody, Metrics, REQUEST_ID, RouteClass};
use crate::oidc::{Provider, ProviderHttp};
use crate::outbound;
use crate::pages::{self, is_navigation};
use crate::policy::{self, EmailFile, Route};
use crate::problem::{Audience, Kind, Problem};
use crate::proxy::headers::{self, ForwardedFacts};
use crate::proxy::limits::InFlight;
use crate::proxy::{Bounds, Upstream, tunnel, upgrade_protocol};
use crate::rules::RouteRule;
use crate::session::{CookieCodec, Session, SessionStore, StoreUnavailable};
use upkeep::Standing;

pub use host::TlsServerName;
pub use reload::LiveGateway;
pub use request::{param, query_params};

/// How long `/ready`'s upstream check answers for: a flood of probes costs one
/// upstream connection per this.
const READY_CHECK_TTL: std::time::Duration = std::time::Duration::from_secs(1);

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

/// What a tunnel was opened with, so that it can be checked again while it lasts
/// ([`Gateway::tunnel_may_continue`]).
pub struct TunnelPass {
    /// The session it was opened for; `None` on a public route.
    session_id: Option<String>,
    method: http::Method,
    path: String,
    headers: http::HeaderMap,
}

/// Where a navigation without a usable session is sent.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SignIn {
    /// The sign-in page (or straight on, as `oidc.skip_sign_in_page` says:
    /// [`returning`]).
    Page,
    /// Straight through the provider: a session that only needs confirming again,
    /// which needs no click while the provider session lives.
    ThroughProvider,
}

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
    #[error(transparent)]
    AssertionKey(#[from] crate::assertion::KeyError),
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
    /// Folded names (lower case, `_` as `-`) of the identity headers and the
    /// assertion's: removed from every request before anything else.
    identity_folds: headers::FoldedNames,
    /// Signs the identity assertion and serves its keys, when `[assertion]` is on.
    /// Made anew by every reload (key files read again, cache empty).
    assertion: Option<AssertionSigner>,
    /// Folded names of the path overrides some backends honour and of the
    /// forwarding headers ([`headers::FORWARDING_HEADERS`]): removed before forwarding.
    upstream_strip_folds: headers::FoldedNames,
    /// The hosts requests may be for ([`host`]).
    served_hosts: host::ServedHosts,
    /// `public_url`'s host (and port unless the default): the upstream's `Host` and
    /// `X-Forwarded-Host`.
    public_host: HeaderValue,
    /// Folded names a client's `Connection` header may not name.
    end_to_end_folds: Vec<String>,
    /// What the names of login cookies start with (the state's first characters
    /// follow): the session cookie's name, with `__Secure-` for `__Host-` since a login
    /// cookie is scoped to a path, not `/`, then `_csrf_`.
    login_cookie_prefix: String,
    /// The path login cookies are scoped to: the directory `/oauth2/start` and the
    /// callback share (`/oauth2/` by default), so a start sees the logins under way.
    login_cookie_path: String,
    /// The name of the cookie that marks a browser that signed in here before
    /// ([`returning`]).
    returning_cookie: String,
    allowed_emails_file: Option<Arc<EmailFile>>,
    /// The last `/ready` connection to the upstream: when, and whether it was accepted.
    last_upstream_check: tokio::sync::Mutex<Option<(std::time::Instant, bool)>>,
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
        let assertion = AssertionSigner::from_settings(&settings)?;
        let identity_folds = headers::FoldedNames::new(
            settings
                .identity_headers
                .iter()
                .chain(assertion.as_ref().map(AssertionSigner::header_name))
                .map(http::HeaderName::as_str),
        );
        let upstream_strip_folds = headers::FoldedNames::new(
            PATH_OVERRIDE_HEADERS
                .into_iter()
                .chain(headers::FORWARDING_HEADERS)
                .chain([REQUEST_ID.as_str()]),
        );
        let public_url = &settings.server.public_url;
        let public_host = HeaderValue::from_str(&match public_url.port() {
            Some(port) => format!("{}:{port}", public_url.host_str().unwrap_or_default()),
            None => public_url.host_str().unwrap_or_default().to_owned(),
        })
        .expect("a URL's host is a valid header value");
        let end_to_end_folds = END_TO_END_HEADERS
            .iter()
            .map(|name| headers::folded_name(name))
            .chain(identity_folds.iter().map(str::to_owned))
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
                Bounds {
                    // Shared with the gateway this one replaces: the bounds are kept
                    // until a restart (see reload.rs).
                    in_flight: previous.map_or_else(
                        || {
                            Arc::new(InFlight::new(
                                settings.upstream.max_in_flight,
                                settings.upstream.max_in_flight_per_client,
                            ))
                        },
                        |g| g.upstream.in_flight(),
                    ),
                    send_timeout: settings.server.send_timeout,
                    body_idle_timeout: settings.server.body_idle_timeout,
                },
                metrics.clone(),
            ),
            provider,
            sessions,
            cookies: CookieCodec::new(
                &settings.session.secrets,
                settings.server.public_url.scheme() == "https",
            ),
            login_cookie_prefix: login_cookie_prefix(&settings.session.cookie_name),
            login_cookie_path: shared_directory("/oauth2/start", &settings.oidc.callback_path),
            returning_cookie: returning::returning_cookie_name(&settings.session.cookie_name),
            identity_folds,
            assertion,
            upstream_strip_folds,
            served_hosts: host::ServedHosts::new(
                &settings.server.public_url,
                &settings.server.host_aliases,
            ),
            public_host,
            end_to_end_folds,
            allowed_emails_file,
            last_upstream_check: tokio::sync::Mutex::new(None),
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

    /// The Redis store the replicas share (`session.store = "redis"`), if any.
    pub(crate) fn shared_store(&self) -> Option<&Arc<crate::session::SharedStore>> {
        self.sessions.shared()
    }

    /// With Redis Sentinel or Cluster, the topology found (`ssogate check`).
    pub async fn session_store_topology(&self) -> Option<Result<String, String>> {
        self.sessions.store_topology().await
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
            // On the provider's retry schedule, which requests that need the
            // metadata share: they cannot make it call the provider more often.
            tokio::spawn(async move {
                while !provider.is_ready() {
                    let due = provider.next_discovery_attempt();
                    if let Some(due) = due {
                        tokio::time::sleep_until(due.into()).await;
                    }
                    if provider.next_discovery_attempt() != due {
                        continue; // a request made this attempt meanwhile
                    }
                    match provider.discover_when_due().await {
                        Ok(()) => tracing::info!("identity provider metadata loaded"),
                        Err(e) => {
                            tracing::warn!(error = %e, "identity provider still not available")
                        }
                    }
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
    ) -> Response<LoggedBody> {
        let id = observe::request_id(request.headers(), self.peer_is_trusted(peer));
        request.headers_mut().insert(REQUEST_ID, id.clone());
        let mut record = Box::new(AccessRecord::new(
            self.metrics.clone(),
            request.method().clone(),
            request.uri(),
            id.clone(),
        ));
        let body_pending = request.version() < Version::HTTP_2
            && !hyper::body::Body::is_end_stream(request.body());
        let response = self.serve(request, peer, &mut record).await;
        let (mut parts, body) = response.into_parts();
        parts.headers.insert(REQUEST_ID, id);
        if body_pending && !record.forwarded {
            // Answered here, the body (mostly) unread: the connection closes, and says
            // so (see proxy's `unread_body_closes`, which does the same for the
            // forwarding's own refusals). An endpoint that read it all (back-channel
            // logout) closes a connection it could have kept: rare, and harmless.
            parts
                .headers
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(hsts) = &self.hsts {
            parts
                .headers
                .insert(http::header::STRICT_TRANSPORT_SECURITY, hsts.clone());
        }
        let body = record.attach(parts.status, body);
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
            return self.refuse(
                Kind::Unusable,
                Audience::Page,
                format!("The request cannot be used: {e}."),
            );
        }
        if let Err(e) = request::canonicalize_path(&mut request) {
            tracing::info!(path = %request.uri().path(), error = %e, "request refused: bad path");
            return self.refuse(
                Kind::Unusable,
                Audience::Page,
                format!("The address cannot be used: {e}."),
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
            // The endpoints' futures are boxed (a login's is large), so that the
            // future of every forwarded request stays small; forward-auth is the
            // forwarded request of nginx-in-front deployments.
            "/ready" => return Box::pin(self.ready(&request, peer)).await,
            "/metrics" if self.settings.server.metrics_listen.is_none() => {
                return Box::pin(self.metrics_on_main_listener(&request, peer)).await;
            }
            "/oauth2/sign_in" => return self.sign_in_page(&request),
            "/oauth2/start" => return Box::pin(self.start_login(&request)).await,
            "/oauth2/sign_out" => return Box::pin(self.sign_out(&request)).await,
            "/oauth2/userinfo" => return Box::pin(self.userinfo(&request)).await,
            "/oauth2/auth" => return self.forward_auth(&request, peer).await,
            "/oauth2/backchannel-logout" => {
                return Box::pin(self.backchannel_logout(request)).await;
            }
            p if p == oidc.callback_path => return Box::pin(self.callback(&request)).await,
            crate::assertion::JWKS_PATH if self.assertion.is_some() => {
                return self.assertion_keys();
            }
            p if p.starts_with("/oauth2/") => return self.not_found(),
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
                record.forwarded = true;
                return self.forward(request, peer, caller).await;
            }
            Route::Protected(rules) => rules,
        };
        record.class = RouteClass::Protected;

        // authenticate (and keep the session in step with the provider), authorise.
        let session = match self.session_standing(request.headers()).await {
            Ok(Standing::Live(session)) => session,
            Ok(Standing::Ended) => return self.unauthenticated(&request, SignIn::Page),
            Ok(Standing::Unconfirmed) => {
                return self.unauthenticated(&request, SignIn::ThroughProvider);
            }
            Err(e) => return self.store_unavailable(&request, &e),
        };
        record.session = Some(session.clone());
        if let Err(refusal) = self.authorize(&session, &rules) {
            return self.refused(&session, &refusal);
        }
        record.forwarded = true;
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
        let audience = Audience::of(request);
        let tls_name = request.extensions().get::<TlsServerName>().is_some();
        tracing::info!(host = ?request.headers().get(http::header::HOST), authority = ?request.uri().authority(), tls_name, reason = %refusal, "request refused: not for this gateway's host");
        if !refusal.is_misdirected() {
            return self.refuse(
                Kind::Malformed,
                audience,
                format!("The request cannot be used: {refusal}."),
            );
        }
        // The client's connection is for another name: only a fresh one helps.
        if audience == Audience::Page && *refusal == host::HostRefusal::Foreign {
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
        self.refuse(Kind::Misdirected, audience, message)
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
        if self.may_read_internals(request, peer) {
            return self.metrics_page().await;
        }
        self.not_found()
    }

    /// Whether the client may read the gateway's internals (metrics, why it is not
    /// ready): a direct client (no proxy between) from `server.metrics_networks`.
    fn may_read_internals<B>(&self, request: &Request<B>, peer: SocketAddr) -> bool {
        // Direct: decided by the connection (never through a trusted proxy), and not
        // claimed otherwise by a forwarding header in any spelling (a local proxy
        // missing from trusted_proxies would otherwise expose it to everyone).
        let says_forwarded = request.headers().keys().any(|name| {
            ["forwarded", "x-forwarded-for", "x-real-ip"]
                .contains(&headers::folded_name(name.as_str()).as_str())
        });
        let direct = !self.peer_is_trusted(peer) && !says_forwarded;
        direct
            && self
                .settings
                .server
                .metrics_networks
                .iter()
                .any(|net| net.contains(&peer.ip()))
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
        self.peer_is_trusted_address(peer.ip())
    }

    fn peer_is_trusted_address(&self, address: std::net::IpAddr) -> bool {
        self.settings
            .server
            .trusted_proxies
            .iter()
            .any(|net| net.contains(&address.to_canonical()))
    }

    /// Global access rules and the matched routes' own; logs refusals.
    fn authorize(&self, session: &Session, rules: &[&RouteRule]) -> Result<(), policy::Refusal> {
        let file_emails = self.allowed_emails_file.as_ref().map(|f| f.current());
        policy::authorize(&session.identity, &self.settings.access, file_emails.as_deref(), rules).inspect_err(|refusal| {
            tracing::info!(sub = %session.identity.sub, email = ?session.identity.email, rule = %refusal.0, "access refused");
        })
    }

    /// forward: the gateway's cookies out, identity (if any) and `X-Forwarded-*` in.
    /// An upgrade the upstream accepted leaves with a [`TunnelPass`], for the server
    /// to check the tunnel against while it lasts.
    async fn forward(
        &self,
        mut request: Request<Incoming>,
        peer: SocketAddr,
        caller: Caller<'_>,
    ) -> Response<ResponseBody> {
        // (In an `Arc` from the start: it is held across the exchange below, and a
        // pointer keeps every request's future small.)
        let pass = upgrade_protocol(&request).is_some().then(|| {
            Arc::new(TunnelPass {
                session_id: matches!(caller, Caller::SignedIn(_))
                    .then(|| {
                        self.cookies
                            .open(request.headers(), &self.settings.session.cookie_name)
                    })
                    .flatten(),
                method: request.method().clone(),
                path: request.uri().path().to_owned(),
                headers: request.headers().clone(),
            })
        });
        // The address upstream.max_in_flight_per_client counts against: none when
        // the client is not known behind a trusted proxy (its requests are many
        // people's), read before the peer joins X-Forwarded-For.
        let client = headers::client_address(request.headers(), peer.ip(), |ip| {
            self.peer_is_trusted_address(ip)
        });
        let client = (!self.peer_is_trusted_address(client)).then_some(client);
        self.prepare_upstream_headers(request.headers_mut(), peer, caller);
        let mut response = self
            .upstream
            .forward(request, &self.public_host, client)
            .await;
        // The gateway's cookies are the gateway's: the upstream may neither set nor
        // clear them.
        let cookie_name = self.settings.session.cookie_name.as_bytes();
        let returning_cookie = self.returning_cookie.as_bytes();
        let removed = headers::remove_set_cookies(response.headers_mut(), |name| {
            name.eq_ignore_ascii_case(cookie_name)
                || name.eq_ignore_ascii_case(returning_cookie)
                || name
                    .get(..self.login_cookie_prefix.len())
                    .is_some_and(|start| {
                        start.eq_ignore_ascii_case(self.login_cookie_prefix.as_bytes())
                    })
        });
        if !removed.is_empty() {
            tracing::warn!(cookies = ?removed, "upstream response tried to set the gateway's own cookies; removed");
        }
        if let Some(pass) = pass
            && response.extensions().get::<tunnel::Upgraded>().is_some()
        {
            response.extensions_mut().insert(pass);
        }
        response
    }

    /// Whether a tunnel opened with `pass` may go on: its route is still public, or
    /// its session still stands (kept in step with the provider) and the rules, as
    /// they are now, still admit it. A session store that cannot be asked does not
    /// close it (cached sessions go on too).
    pub async fn tunnel_may_continue(&self, pass: &TunnelPass) -> bool {
        let rules = match policy::decide(
            &self.settings.access.rules,
            &pass.method,
            &pass.path,
            &pass.headers,
        ) {
            Route::Public { .. } => return true,
            Route::Protected(rules) => rules,
        };
        let Some(id) = &pass.session_id else {
            return false;
        };
        let session = match self.sessions.get(id).await {
            Ok(Some(session)) => session,
            Ok(None) => return false,
            Err(_) => return true,
        };
        match self.upkeep(id, session).await {
            Standing::Live(session) => self.authorize(&session, &rules).is_ok(),
            Standing::Ended | Standing::Unconfirmed => false,
        }
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
        headers::remove_folded_except(headers, &self.upstream_strip_folds, Some(&REQUEST_ID));
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
        name == cookie_name
            || name == self.returning_cookie
            || name.starts_with(&self.login_cookie_prefix)
    }

    /// The identity headers: `sub`; the email only when the provider verified it;
    /// the preferred username; the groups, each percent-encoded and joined with `,`
    /// ([`headers::encode_list`]). A value that cannot travel in a header is left out.
    /// With `[assertion]`, the signed assertion of the same identity too (a cached
    /// one while it has time left: [`AssertionSigner::assertion_for`]).
    fn set_identity_headers(&self, headers: &mut http::HeaderMap, session: &Session) {
        if let Some(assertion) = &self.assertion
            && let Some(value) = assertion.assertion_for(&session.identity)
        {
            headers.insert(assertion.header_name().clone(), value);
        }
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
        let Some((id, key)) = self
            .cookies
            .open_session(headers, &self.settings.session.cookie_name)
        else {
            return Ok(None);
        };
        let session = self.sessions.get_keyed(&id, key).await?;
        Ok(session.map(|session| (id, session)))
    }

    /// The standing of the session named by the request's cookie, kept in step with
    /// the provider ([`Gateway::upkeep`]). A session whose groups were read from
    /// another claim than `access.groups_claim` (a reload changed it) has ended: that
    /// person signs in again, so no decision is made on groups from a claim no longer
    /// configured.
    async fn session_standing(
        &self,
        headers: &http::HeaderMap,
    ) -> Result<Standing, StoreUnavailable> {
        let Some((id, session)) = self.session_of(headers).await? else {
            return Ok(Standing::Ended);
        };
        if *session.identity.groups_claim != *self.settings.access.groups_claim {
            tracing::info!(sub = %session.identity.sub, claim = %session.identity.groups_claim, "session not used: its groups were read from another claim than access.groups_claim; signing in again");
            return Ok(Standing::Ended);
        }
        Ok(self.upkeep(&id, session).await)
    }

    /// The session to serve the request with, `None` when there is none usable.
    async fn live_session(
        &self,
        headers: &http::HeaderMap,
    ) -> Result<Option<Arc<Session>>, StoreUnavailable> {
        Ok(match self.session_standing(headers).await? {
            Standing::Live(session) => Some(session),
            Standing::Ended | Standing::Unconfirmed => None,
        })
    }

    /// The session store cannot be asked: 503, as a page or JSON like the 401.
    fn store_unavailable(
        &self,
        request: &Request<Incoming>,
        error: &StoreUnavailable,
    ) -> Response<ResponseBody> {
        tracing::error!(error = %error, "request refused: session store unavailable");
        self.refuse(
            Kind::StoreUnavailable,
            Audience::of(request),
            "Sessions cannot be checked right now (the session store is unreachable). Try again in a moment.",
        )
    }

    /// No usable session: navigations go to the sign-in, everything else gets 401
    /// JSON (which makes Sentry's UI reload into a navigation).
    fn unauthenticated(
        &self,
        request: &Request<Incoming>,
        sign_in: SignIn,
    ) -> Response<ResponseBody> {
        if is_navigation(request) {
            let uri = request.uri();
            let location = self.sign_in_location(
                uri.path_and_query().map_or("/", |pq| pq.as_str()),
                sign_in,
                request.headers(),
            );
            return redirect(&location);
        }
        self.refuse(Kind::SignInRequired, Audience::Api, "Sign in required")
    }

    /// Where a navigation without a session goes: the sign-in, and back to
    /// `path_and_query` afterwards, query included (encoded whole into `rd`), unless
    /// that is too long to travel with the login: then the path alone, or the start.
    /// The sign-in is the page or `/oauth2/start`, as [`Gateway::straight_to_provider`]
    /// decides on the request's `headers`.
    fn sign_in_location(
        &self,
        path_and_query: &str,
        sign_in: SignIn,
        headers: &http::HeaderMap,
    ) -> String {
        let origin = self.settings.server.public_url.as_str().len();
        let path = path_and_query.split('?').next().unwrap_or("/");
        let target = [path_and_query, path]
            .into_iter()
            .find(|target| origin + target.len() <= policy::MAX_RETURN_TARGET)
            .unwrap_or("/");
        let entry = if self.straight_to_provider(sign_in, headers) {
            "/oauth2/start"
        } else {
            "/oauth2/sign_in"
        };
        // One allocation: an escaped byte takes at most three.
        let mut location = String::with_capacity(entry.len() + "?rd=".len() + 3 * target.len());
        location.push_str(entry);
        location.push_str("?rd=");
        location.extend(form_urlencoded::byte_serialize(target.as_bytes()));
        location
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
        self.refuse(Kind::AccessDenied, Audience::Page, message)
    }

    /// `/ready`: 200 `READY` or 503 `NOT READY`, and why only for a client that may
    /// read the internals ([`Gateway::may_read_internals`]).
    async fn ready<B>(&self, request: &Request<B>, peer: SocketAddr) -> Response<ResponseBody> {
        let problem = if !self.provider.is_ready() {
            Some("identity provider metadata not loaded".to_owned())
        } else if let Some(reason) = self.sessions.not_ready() {
            Some(format!("session store (Redis) unreachable: {reason}"))
        } else if !self.upstream_accepts().await {
            Some("upstream unreachable".to_owned())
        } else {
            None
        };
        let detail = self.may_read_internals(request, peer);
        match problem {
            None => pages::text(StatusCode::OK, "READY\n").map(boxed),
            Some(problem) if detail => self.refuse(
                Kind::NotReady,
                Audience::Probe,
                format!("NOT READY: {problem}\n"),
            ),
            Some(_) => self.refuse(Kind::NotReady, Audience::Probe, "NOT READY\n"),
        }
    }

    /// Whether the upstream accepts a connection. Asked at most once per
    /// [`READY_CHECK_TTL`] however many probes arrive: those arriving while one
    /// connection attempt runs wait for it, later ones take its answer until it is
    /// that old.
    async fn upstream_accepts(&self) -> bool {
        let mut last = self.last_upstream_check.lock().await;
        if let Some((at, accepts)) = *last
            && at.elapsed() < READY_CHECK_TTL
        {
            return accepts;
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
        let accepts = matches!(connect, Ok(Ok(_)));
        *last = Some((std::time::Instant::now(), accepts));
        accepts
    }

    /// A request refused or failed: [`Problem::respond`], counted in its metric.
    fn refuse(
        &self,
        kind: Kind,
        audience: Audience,
        message: impl Into<std::borrow::Cow<'static, str>>,
    ) -> Response<ResponseBody> {
        Problem::new(kind, audience, message).respond(&self.metrics)
    }

    /// The 404 of the gateway's own pages (and of the metrics, to those who may not
    /// read them).
    fn not_found(&self) -> Response<ResponseBody> {
        self.refuse(
            Kind::NotFound,
            Audience::Page,
            "This gateway has no such page.",
        )
    }

    fn public_url(&self, path: &str) -> Url {
        self.settings
            .server
            .public_url
            .join(path)
            .unwrap_or_else(|_| self.settings.server.public_url.clone())
    }
}

/// The longest directory (a path ending in `/`) both paths are in.
fn shared_directory(a: &str, b: &str) -> String {
    let common = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
    let directory = a[..common].rfind('/').map_or(0, |slash| slash + 1);
    a[..directory.max(1)].to_owned()
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

#[cfg(test)]
mod tests {
    use super::shared_directory;

    /// The size of the future `make` would return (it is never called).
    fn future_size<F: Future>(_make: impl FnOnce() -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// A request's future is allocated, and moved into place, for every request: it
    /// must stay small. (An `async fn` that takes a future by value holds it twice;
    /// one such on the forwarding path once made it 21 KiB in a release build.)
    #[test]
    #[allow(unreachable_code)]
    fn the_future_of_a_request_stays_small() {
        let size =
            future_size(|| super::Gateway::handle(unreachable!(), unreachable!(), unreachable!()));
        assert!(size <= 8 * 1024, "a request's future takes {size} bytes");
    }

    #[test]
    fn login_cookies_live_in_the_directory_start_and_callback_share() {
        assert_eq!(
            shared_directory("/oauth2/start", "/oauth2/callback"),
            "/oauth2/"
        );
        assert_eq!(
            shared_directory("/oauth2/start", "/oauth2/start2"),
            "/oauth2/"
        );
        assert_eq!(shared_directory("/oauth2/start", "/sso/callback"), "/");
        assert_eq!(shared_directory("/oauth2/start", "/oauth"), "/");
    }
}
