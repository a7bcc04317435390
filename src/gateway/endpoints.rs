//! The gateway's own endpoints, oauth2-proxy's names: `/oauth2/sign_in`, `/start`,
//! the callback, `/sign_out`, `/userinfo`, `/auth` for forward-auth, and
//! `/backchannel-logout` for the provider; and, with `[assertion]`, the keys that
//! verify the identity assertion at [`crate::assertion::JWKS_PATH`].
//!
//! A login in flight costs the gateway nothing: its state, PKCE verifier, nonce and
//! return target travel sealed (AES-256-GCM) in a short-lived cookie named after the
//! state, path-scoped to the callback. That cookie binds the login to the browser that
//! started it, so a stolen callback URL cannot sign someone else in; it expires after
//! [`LOGIN_TIMEOUT`] (checked on the sealed start time, not on the browser's word);
//! and a state whose code the provider accepted is remembered as used until then, so
//! a login is finished once.
//!
//! Every refusal here is a [`Problem`](crate::problem::Problem) of its kind (a
//! login's carries why it failed, which decides its status and its count in the
//! metrics).

use std::net::SocketAddr;

use aws_lc_rs::constant_time::verify_slices_are_equal;
use http::header::{HeaderValue, SET_COOKIE};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::request::{param, query_params};
use super::{Gateway, SignIn, Standing, redirect, urlencode};
use crate::body::{ResponseBody, boxed};
use crate::observe::LoginRefusal;
use crate::oidc::{LOGIN_TIMEOUT, LoginError, PendingLogin};
use crate::pages::{self, Link, Page};
use crate::policy::{self, ReturnTargetTooLong, Route, normalize_path, return_target_or_root};
use crate::problem::{Audience, Kind};
use crate::session::{Session, new_session_id, request_cookies};

/// Forward-auth's answer header with the `Cookie` the app should get: the request's,
/// without the gateway's cookies (see `config/nginx/ssogate-protect.conf`).
const APP_COOKIE_ANSWER: &str = "x-ssogate-cookie";

/// Forward-auth's answer header, on a 401 for a top-level navigation, with where to
/// redirect it: the sign-in, with the original URI encoded as the return target.
const SIGN_IN_ANSWER: &str = "x-ssogate-sign-in";

/// Largest back-channel logout request body read.
const MAX_LOGOUT_BODY: usize = 64 * 1024;

/// What a person reads when a login cannot start or finish without the session store.
const SIGN_IN_STORE_DOWN: &str = "Signing in is not possible right now: the session store cannot be reached. Try again in a moment.";

/// What a person reads when a login's state is unknown.
const ALREADY_USED: &str = "This sign-in has expired or was already used.";

/// The purpose under which used login states are remembered.
const LOGIN_STATE: &str = "login";
/// Purpose under which back-channel logout tokens' `jti`s are remembered as used.
const LOGOUT_TOKEN: &str = "jti";

/// Characters of the state used in the login cookie's name.
const STATE_COOKIE_PREFIX_LEN: usize = 12;

/// Logins under way one browser may hold (a cookie each); a new start removes the
/// oldest beyond (mod_auth_openidc keeps 7), so tabs left open never add up to a
/// cookie header the callback must refuse.
const MAX_PENDING_LOGINS: usize = 7;
/// Login cookies opened at a start to find the oldest; any beyond are removed unread.
const MAX_LOGIN_COOKIES_READ: usize = 32;

/// Longest sealed login cookie opened: a pending login with the longest return
/// target ([`policy::MAX_RETURN_TARGET`]), sealed and base64-encoded, fits.
const MAX_LOGIN_COOKIE_LEN: usize = 3600;

impl Gateway {
    fn login_cookie_name(&self, state: &str) -> String {
        let prefix: String = state.chars().take(STATE_COOKIE_PREFIX_LEN).collect();
        format!("{}{prefix}", self.login_cookie_prefix)
    }

    /// The validated `rd` parameter as an absolute URL; the start page when absent
    /// or unsafe; an error when it is too long.
    fn return_target(&self, request: &Request<Incoming>) -> Result<String, ReturnTargetTooLong> {
        let params = query_params(request, &[]).unwrap_or_default();
        let server = &self.settings.server;
        return_target_or_root(
            param(&params, "rd").unwrap_or("/"),
            &server.public_url,
            &server.allowed_redirect_hosts,
        )
    }

    /// The 400 page for a return target over [`policy::MAX_RETURN_TARGET`].
    fn return_target_too_long(&self, e: ReturnTargetTooLong) -> Response<ResponseBody> {
        tracing::info!("request refused: {e}");
        self.refuse(
            Kind::Unusable,
            Audience::Page,
            format!(
                "This address cannot be used: {e}. Go back to the start and sign in from there."
            ),
        )
    }

    pub(super) fn sign_in_page(&self, request: &Request<Incoming>) -> Response<ResponseBody> {
        let return_to = match self.return_target(request) {
            Ok(target) => target,
            Err(e) => return self.return_target_too_long(e),
        };
        let start = format!("/oauth2/start?rd={}", urlencode(&return_to));
        if self.straight_to_provider(SignIn::Page, request.headers()) {
            return redirect(&start);
        }
        let label = format!("Log in with {}", self.settings.oidc.provider_name);
        Page {
            status: StatusCode::OK,
            title: "Sign in",
            message: "This site is protected. Sign in with your company account to continue.",
            links: &[Link {
                href: &start,
                label: &label,
            }],
        }
        .render()
        .map(boxed)
    }

    pub(super) async fn start_login(&self, request: &Request<Incoming>) -> Response<ResponseBody> {
        let return_to = match self.return_target(request) {
            Ok(target) => target,
            Err(e) => return self.return_target_too_long(e),
        };
        // The login would end at a callback that cannot keep its session: say so now,
        // before the person signs in at the provider for nothing.
        if let Some(reason) = self.sessions.unavailable() {
            tracing::error!(
                reason,
                "cannot start a login: the session store is unreachable"
            );
            return self.refuse(
                Kind::SignInUnavailable(LoginRefusal::StoreUnavailable),
                Audience::Page,
                SIGN_IN_STORE_DOWN,
            );
        }
        let (url, pending) = match self.provider.begin_login(return_to).await {
            Ok(login) => login,
            Err(e) => {
                tracing::error!(error = %e, "cannot start a login");
                let message = format!(
                    "{} cannot be reached right now, so signing in is not possible. Try again in a moment.",
                    self.settings.oidc.provider_name
                );
                return self.refuse(
                    Kind::SignInUnavailable(LoginRefusal::ProviderUnavailable),
                    Audience::Page,
                    message,
                );
            }
        };
        let sealed = serde_json::to_string(&pending).expect("a pending login serialises");
        let cookie = self.cookies.seal(
            &self.login_cookie_name(&pending.state),
            &sealed,
            &self.login_cookie_path,
            Some(LOGIN_TIMEOUT),
        );
        self.metrics.login_started();
        let mut response = redirect(url.as_str());
        for name in self.surplus_login_cookies(request.headers()) {
            append_cookie(
                &mut response,
                &self.cookies.removal(name, &self.login_cookie_path),
            );
        }
        append_cookie(&mut response, &cookie);
        response
    }

    /// The login cookies to remove so that, with the one a start adds, the browser
    /// holds at most [`MAX_PENDING_LOGINS`]: those that do not open or have expired,
    /// then the oldest.
    fn surplus_login_cookies<'a>(&self, headers: &'a http::HeaderMap) -> Vec<&'a str> {
        let mut names: Vec<&str> = request_cookies(headers)
            .map(|(name, _)| name)
            .filter(|name| name.starts_with(&self.login_cookie_prefix))
            .collect();
        names.sort_unstable();
        names.dedup();
        let mut surplus = names.split_off(names.len().min(MAX_LOGIN_COOKIES_READ));
        let mut pending: Vec<(u64, &str)> = Vec::new();
        for name in names {
            let started = self
                .cookies
                .open_limited(headers, name, MAX_LOGIN_COOKIE_LEN)
                .and_then(|sealed| serde_json::from_str::<PendingLogin>(&sealed).ok())
                .filter(|login| !login.expired())
                .map(|login| login.started_at);
            match started {
                Some(started) => pending.push((started, name)),
                None => surplus.push(name),
            }
        }
        pending.sort_unstable_by_key(|(started, _)| std::cmp::Reverse(*started));
        surplus.extend(
            pending
                .into_iter()
                .skip(MAX_PENDING_LOGINS - 1)
                .map(|(_, name)| name),
        );
        surplus
    }

    /// The login this browser started with `state`, from its login cookie; `None`
    /// when there is no such cookie, it does not open, or it is for another state.
    fn pending_login(&self, request: &Request<Incoming>, state: &str) -> Option<PendingLogin> {
        let sealed = self.cookies.open_limited(
            request.headers(),
            &self.login_cookie_name(state),
            MAX_LOGIN_COOKIE_LEN,
        )?;
        let pending: PendingLogin = serde_json::from_str(&sealed).ok()?;
        // Compared in constant time: the state is the login's secret.
        verify_slices_are_equal(pending.state.as_bytes(), state.as_bytes())
            .is_ok()
            .then_some(pending)
    }

    /// RFC 9207 ([`crate::oidc::Provider::check_response_issuer`]): a refusal page,
    /// counted, when the callback's `iss` is not the configured provider's.
    async fn wrong_issuer(&self, params: &[(String, String)]) -> Option<Response<ResponseBody>> {
        let e = self
            .provider
            .check_response_issuer(param(params, "iss"))
            .await
            .err()?;
        tracing::warn!(error = %e, "callback refused: not from the configured provider");
        let why = match e {
            LoginError::ProviderUnavailable(_) => LoginRefusal::ProviderUnavailable,
            _ => LoginRefusal::IssuerMismatch,
        };
        Some(self.login_failed(why, format!("Signing in failed: {e}.")))
    }

    pub(super) async fn callback(&self, request: &Request<Incoming>) -> Response<ResponseBody> {
        let params = match query_params(request, &["state", "code", "error", "iss"]) {
            Ok(params) => params,
            Err(problem) => {
                return self.login_failed(
                    LoginRefusal::MalformedCallback,
                    format!("The sign-in answer is malformed: {problem}."),
                );
            }
        };
        if let Some(error) = param(&params, "error") {
            if let Some(refusal) = self.wrong_issuer(&params).await {
                return refusal;
            }
            let description = param(&params, "error_description").unwrap_or("");
            tracing::info!(
                error,
                description,
                "provider returned an error to the callback"
            );
            let message = format!(
                "{} did not sign you in: {error} {description}",
                self.settings.oidc.provider_name
            );
            return self.login_failed(LoginRefusal::ProviderError, message.trim_end().to_owned());
        }
        let (Some(state), Some(code)) = (param(&params, "state"), param(&params, "code")) else {
            return self.login_failed(
                LoginRefusal::MalformedCallback,
                "The sign-in answer lacks its code or state.",
            );
        };
        let cookie_name = self.login_cookie_name(state);
        let Some(pending) = self.pending_login(request, state) else {
            tracing::warn!("callback state does not match this browser's login cookie");
            return self.login_failed(
                LoginRefusal::NotThisBrowser,
                "This sign-in was not started in this browser, or it took too long.",
            );
        };
        if pending.expired() {
            tracing::warn!("callback for a login that took too long");
            return self.login_failed(LoginRefusal::StateExpired, ALREADY_USED);
        }
        let store_down = |e: &crate::session::StoreUnavailable| {
            tracing::error!(error = %e, "cannot finish a login");
            self.login_failed(LoginRefusal::StoreUnavailable, SIGN_IN_STORE_DOWN)
        };
        let used = |why: &str| {
            tracing::warn!("callback state already used ({why})");
            self.login_failed(LoginRefusal::StateExpired, ALREADY_USED)
        };
        // Only an answer from the configured provider is used (its code, above all).
        if let Some(refusal) = self.wrong_issuer(&params).await {
            return refusal;
        }
        // A replay is refused without asking the provider; the state is marked used
        // only below, once the provider accepted the code (so a stranger's callbacks
        // make the store keep nothing).
        match self.sessions.already_used(LOGIN_STATE, state).await {
            Ok(false) => {}
            Ok(true) => return used("replayed"),
            Err(e) => return store_down(&e),
        }
        let outcome = match self
            .provider
            .complete_login(code.to_owned(), &pending)
            .await
        {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::warn!(error = %e, "login failed");
                let why = match e {
                    LoginError::IdTokenRefused(_) | LoginError::NoIdToken => {
                        LoginRefusal::IdTokenRefused
                    }
                    _ => LoginRefusal::ProviderUnavailable,
                };
                return self.login_failed(why, format!("Signing in failed: {e}."));
            }
        };
        // Single use, even with a provider that would accept a code twice.
        match self
            .sessions
            .first_use(LOGIN_STATE, state, LOGIN_TIMEOUT)
            .await
        {
            Ok(true) => {}
            Ok(false) => return used("finished concurrently"),
            Err(e) => return store_down(&e),
        }

        // A fresh session id at every login; any session this browser had ends.
        if let Some(old_id) = self
            .cookies
            .open(request.headers(), &self.settings.session.cookie_name)
        {
            self.sessions.remove(&old_id).await;
        }
        let id = new_session_id();
        let (sub, email) = (outcome.identity.sub.clone(), outcome.identity.email.clone());
        let email_verified = outcome.identity.email_verified;
        let session = Session::new(
            outcome.identity,
            outcome.provider_sid.map(Into::into),
            outcome.tokens,
        );
        if let Err(e) = self.sessions.insert(&id, session).await {
            return store_down(&e);
        }
        tracing::info!(%sub, ?email, "signed in");
        if email.is_some() && !email_verified {
            tracing::info!(%sub, "the provider has not verified this person's email address: it is not sent upstream");
        }
        self.metrics.login_completed();
        let session_cookie = self.cookies.seal(
            &self.settings.session.cookie_name,
            &id,
            "/",
            Some(self.settings.session.lifetime),
        );
        let mut response = redirect(&pending.return_to);
        append_cookie(&mut response, &session_cookie);
        if let Some(marker) = self.returning_marker() {
            append_cookie(&mut response, &marker);
        }
        append_cookie(
            &mut response,
            &self.cookies.removal(&cookie_name, &self.login_cookie_path),
        );
        response
    }

    /// A login that could not finish: a page, its status and count decided by `why`.
    /// The returning marker goes ([`super::returning`]): the next navigation without a
    /// session shows the sign-in page rather than sending the browser round again.
    fn login_failed(
        &self,
        why: LoginRefusal,
        message: impl Into<std::borrow::Cow<'static, str>>,
    ) -> Response<ResponseBody> {
        let mut response = self.refuse(Kind::SignInFailed(why), Audience::Page, message);
        append_cookie(&mut response, &self.returning_marker_removal());
        response
    }

    /// Ends the session here, then at the provider (RP-initiated logout) when it can.
    /// Without a provider logout, `rd` (validated like every return target) says where
    /// to go; otherwise the provider returns the browser to `oidc.post_logout_path`.
    ///
    /// Only a request from this origin signs out at once: a link or form on another
    /// site (`Sec-Fetch-Site`, else `Origin` or `Referer`, says so) gets a page that
    /// asks, with a button that posts the same request from here.
    pub(super) async fn sign_out(&self, request: &Request<Incoming>) -> Response<ResponseBody> {
        let has_rd = query_params(request, &[]).is_ok_and(|p| param(&p, "rd").is_some());
        let return_to = match self.return_target(request) {
            Ok(target) => target,
            Err(e) => return self.return_target_too_long(e),
        };
        if !self.sent_by_this_origin(request) {
            let action = if has_rd {
                format!("/oauth2/sign_out?rd={}", urlencode(&return_to))
            } else {
                "/oauth2/sign_out".to_owned()
            };
            return pages::confirmation(
                "Sign out?",
                "Another site sent you here to sign out. Sign out only if you meant to.",
                &action,
                "Sign out",
            )
            .map(boxed);
        }
        let post_logout = self.public_url(&self.settings.oidc.post_logout_path);
        let id = self
            .cookies
            .open(request.headers(), &self.settings.session.cookie_name);
        let provider_logout = match id {
            Some(id) => {
                let session = self.sessions.get(&id).await.ok().flatten();
                // Signed out means ended everywhere, durably: while Redis cannot be
                // reached, say so rather than keep the removal in this replica's memory
                // (a restart would lose it and the session would come back).
                if let Err(e) = self.sessions.end(&id).await {
                    tracing::error!(error = %e, "sign-out refused: the session store cannot be reached");
                    return self.refuse(
                        Kind::SignOutFailed,
                        Audience::Page,
                        "Signing out could not be completed: the session store cannot be reached right now, so your session was not ended. Try again in a moment.",
                    );
                }
                match session {
                    Some(session) => tracing::info!(sub = %session.identity.sub, "signed out"),
                    None => tracing::info!("signed out (session already gone or unreadable)"),
                }
                self.provider.end_session_url(post_logout.clone())
            }
            None => None,
        };
        let location = match provider_logout {
            Some(url) => url.to_string(),
            None if has_rd => return_to,
            None => post_logout.to_string(),
        };
        let mut response = redirect(&location);
        append_cookie(
            &mut response,
            &self
                .cookies
                .removal(&self.settings.session.cookie_name, "/"),
        );
        // Signed out: the next visit shows the sign-in page ([`super::returning`]).
        append_cookie(&mut response, &self.returning_marker_removal());
        response
    }

    /// True unless the browser says the request comes from another site: by
    /// `Sec-Fetch-Site` (`same-origin`, or `none` for a typed address or bookmark),
    /// else by `Origin`, else by `Referer`. A request that says nothing (an old
    /// browser, a script) counts as this origin.
    fn sent_by_this_origin<B>(&self, request: &Request<B>) -> bool {
        let headers = request.headers();
        let ours = self.settings.server.public_url.origin();
        let same_origin = |url: &str| url::Url::parse(url).is_ok_and(|u| u.origin() == ours);
        if let Some(site) = headers.get("sec-fetch-site") {
            return site == "same-origin" || site == "none";
        }
        if let Some(origin) = headers.get(http::header::ORIGIN) {
            return origin.to_str().is_ok_and(same_origin);
        }
        match headers.get(http::header::REFERER) {
            Some(referer) => referer.to_str().is_ok_and(same_origin),
            None => true,
        }
    }

    /// Forward-auth for nginx `auth_request` or Traefik ForwardAuth: 202 with the
    /// identity in response headers when the cookie holds a session that the access
    /// rules admit; 401 without a session, 403 when refused.
    ///
    /// The route rules apply to the original request when a trusted proxy reports it
    /// (`X-Original-URI` and `X-Original-Method` from nginx, `X-Forwarded-Uri` and
    /// `X-Forwarded-Method` from Traefik), decided as for a request the gateway
    /// forwards itself: a public route gets 202 without identity, and so does token
    /// traffic when it carries none of the upstream's session cookies (a proxy may
    /// forward its cookies as they are). `?allowed_groups=a,b` (names as in
    /// `X-Forwarded-Groups`) requires one of those groups too; a repeated or empty one
    /// is a 400, never "no restriction".
    ///
    /// For a proxy that cannot do the gateway's header work itself (nginx), a 202
    /// carries the `Cookie` the app should get ([`APP_COOKIE_ANSWER`]) and a 401 for a
    /// navigation where to send it ([`SIGN_IN_ANSWER`]); `config/nginx/` uses both.
    pub(super) async fn forward_auth(
        &self,
        request: &Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<ResponseBody> {
        let bad_request = |problem: String| {
            tracing::warn!(problem = problem.as_str(), "forward-auth request refused");
            self.refuse(Kind::Malformed, Audience::Api, problem)
        };
        let wanted = match forward_auth_groups(request) {
            Ok(wanted) => wanted,
            Err(problem) => return bad_request(problem),
        };
        let original = if self.peer_is_trusted(peer) {
            match reported_request(request.headers()) {
                Ok(original) => original,
                Err(problem) => return bad_request(problem),
            }
        } else {
            None
        };
        let rules = match &original {
            None => Vec::new(),
            Some((method, path)) => {
                match policy::decide(&self.settings.access.rules, method, path, request.headers()) {
                    Route::Public {
                        by_credential: false,
                    } => return self.forward_auth_admitted(request, None),
                    // Token traffic: the proxy may forward the request's own cookies,
                    // so it is let through only when none of them is the upstream's
                    // session (its credential is then all the upstream can go by);
                    // with one, it needs a session like any other request.
                    Route::Public {
                        by_credential: true,
                    } if !self.carries_upstream_session_cookie(request.headers()) => {
                        return self.forward_auth_admitted(request, None);
                    }
                    Route::Public {
                        by_credential: true,
                    } => Vec::new(),
                    Route::Protected(rules) => rules,
                }
            }
        };
        let sign_in = match self.session_standing(request.headers()).await {
            Ok(Standing::Live(session)) => Ok(session),
            Ok(Standing::Ended) => Err(SignIn::Page),
            Ok(Standing::Unconfirmed) => Err(SignIn::ThroughProvider),
            Err(e) => return self.store_unavailable(request, &e),
        };
        let session = match sign_in {
            Ok(session) => session,
            Err(sign_in) => {
                let mut response = self.refuse(Kind::Unauthorized, Audience::Api, "");
                if let Some(location) = self.sign_in_for_reported(request.headers(), sign_in) {
                    response.headers_mut().insert(SIGN_IN_ANSWER, location);
                }
                return response;
            }
        };
        let refusal = self.authorize(&session, &rules).err().or_else(|| {
            let admitted =
                wanted.is_empty() || session.identity.groups.iter().any(|g| wanted.contains(g));
            (!admitted)
                .then(|| policy::Refusal(format!("allowed_groups: none of {}", wanted.join(", "))))
        });
        if let Some(refusal) = refusal {
            return self.refuse(Kind::AccessDenied, Audience::Api, refusal.0);
        }
        self.forward_auth_admitted(request, Some(&session))
    }

    /// Forward-auth's 202: the identity headers of `session` (none on a public route),
    /// and in [`APP_COOKIE_ANSWER`] the request's `Cookie` without the gateway's own
    /// cookies, for the proxy to forward in place of the client's (nginx cannot drop
    /// one cookie by itself). No cookie left: no such header, and the proxy sends none.
    fn forward_auth_admitted(
        &self,
        request: &Request<Incoming>,
        session: Option<&Session>,
    ) -> Response<ResponseBody> {
        let mut response = pages::text(StatusCode::ACCEPTED, "").map(boxed);
        let mut cookies = http::HeaderMap::new();
        for value in request.headers().get_all(http::header::COOKIE) {
            cookies.append(http::header::COOKIE, value.clone());
        }
        let cookie_name = &self.settings.session.cookie_name;
        crate::proxy::headers::remove_cookies(&mut cookies, |name| {
            self.is_gateway_cookie(name, cookie_name)
        });
        if let Some(kept) = cookies.remove(http::header::COOKIE) {
            response.headers_mut().insert(APP_COOKIE_ANSWER, kept);
        }
        if let Some(session) = session {
            self.set_identity_headers(response.headers_mut(), session);
        }
        response
    }

    /// Whether the request carries one of the upstream's session cookies
    /// (`access.upstream_session_cookies`).
    fn carries_upstream_session_cookie(&self, headers: &http::HeaderMap) -> bool {
        let names = &self.settings.access.upstream_session_cookies;
        headers
            .get_all(http::header::COOKIE)
            .iter()
            .flat_map(|value| value.as_bytes().split(|b| *b == b';'))
            .filter_map(|pair| pair.split(|b| *b == b'=').next())
            .any(|name| names.iter().any(|n| n.as_bytes() == name.trim_ascii()))
    }

    /// For forward-auth's 401: where the proxy should send the request it asks about
    /// when that is a top-level navigation (decided as for a request the gateway
    /// serves itself, on the reported method and path and the passed-on headers): the
    /// sign-in, with the reported URI as the return target, encoded. `None` for
    /// anything else (the proxy answers 401), or when the proxy reports nothing.
    ///
    /// Any caller gets this answer, trusted proxy or not: it only says where that
    /// caller would be sent, and the return target is validated at the sign-in.
    fn sign_in_for_reported(
        &self,
        headers: &http::HeaderMap,
        sign_in: SignIn,
    ) -> Option<HeaderValue> {
        let text = |names: [&str; 2]| {
            names
                .iter()
                .find_map(|name| headers.get(*name))
                .and_then(|value| value.to_str().ok())
        };
        let uri = text(["x-original-uri", "x-forwarded-uri"]).filter(|u| u.starts_with('/'))?;
        let method = text(["x-original-method", "x-forwarded-method"])?;
        let method = http::Method::from_bytes(method.trim().as_bytes()).ok()?;
        let path = uri.split(['?', '#']).next().unwrap_or("/");
        if !pages::is_navigation_of(&method, path, headers) {
            return None;
        }
        let uri = uri.split('#').next().unwrap_or("/");
        HeaderValue::from_str(&self.sign_in_location(uri, sign_in, headers)).ok()
    }

    /// OpenID Connect Back-Channel Logout: the provider POSTs a signed `logout_token`;
    /// every session of that provider session (`sid`) or person (`sub`) ends. The
    /// browsers' returning markers stay ([`super::returning`]): the provider, not a
    /// browser, makes this request, so no cookie can be removed here.
    pub(super) async fn backchannel_logout(
        &self,
        request: Request<Incoming>,
    ) -> Response<ResponseBody> {
        let refuse = |description: String| {
            tracing::warn!(reason = description.as_str(), "back-channel logout refused");
            self.refuse(Kind::LogoutRefused, Audience::Api, description)
        };
        if request.method() != http::Method::POST {
            return refuse("use POST with a logout_token form field".into());
        }
        let body = match Limited::new(request.into_body(), MAX_LOGOUT_BODY)
            .collect()
            .await
        {
            Ok(body) => body.to_bytes(),
            Err(_) => return refuse("the body is too large or broken".into()),
        };
        let fields: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
        let tokens: Vec<&str> = fields
            .iter()
            .filter(|(n, _)| n == "logout_token")
            .map(|(_, v)| v.as_str())
            .collect();
        let [token] = tokens.as_slice() else {
            return refuse("exactly one logout_token is required".into());
        };
        let target = match self.provider.verify_logout_token(token).await {
            Ok(target) => target,
            Err(reason) => return refuse(reason),
        };
        let store_down = |e: crate::session::StoreUnavailable| {
            tracing::error!(error = %e, "back-channel logout failed");
            self.refuse(
                Kind::LogoutUnavailable,
                Audience::Api,
                "the session store cannot be reached",
            )
        };
        // The `jti` is taken only once the sessions it names have ended, so a token
        // refused because the store could not be reached succeeds when retried.
        match self.sessions.already_used(LOGOUT_TOKEN, &target.jti).await {
            Ok(false) => {}
            Ok(true) => return refuse("this token (`jti`) was already used".into()),
            Err(e) => return store_down(e),
        }
        let ended = match self
            .sessions
            .end_provider_sessions(target.sid.as_deref(), target.sub.as_deref())
            .await
        {
            Ok(ended) => ended,
            Err(e) => return store_down(e),
        };
        let keep_for = crate::oidc::LOGOUT_TOKEN_MAX_AGE * 2;
        match self
            .sessions
            .first_use(LOGOUT_TOKEN, &target.jti, keep_for)
            .await
        {
            Ok(true) => {}
            // Delivered twice at the same moment: both ended the same sessions.
            Ok(false) => tracing::info!("a logout token arrived twice at once"),
            Err(e) => {
                tracing::warn!(error = %e, "the logout token's jti could not be recorded; the sessions ended")
            }
        }
        tracing::info!(sub = ?target.sub, sid = ?target.sid, ended, "back-channel logout");
        let mut response = pages::text(StatusCode::OK, "").map(boxed);
        response.headers_mut().insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        );
        response
    }

    /// The JWKS of the identity assertion (public: the upstream fetches it without a
    /// session), which verifiers may keep for [`crate::assertion::JWKS_MAX_AGE`].
    /// Only routed while `[assertion]` is on.
    pub(super) fn assertion_keys(&self) -> Response<ResponseBody> {
        let Some(assertion) = &self.assertion else {
            return self.not_found();
        };
        let mut response = pages::text(StatusCode::OK, assertion.jwks()).map(boxed);
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let max_age = crate::assertion::JWKS_MAX_AGE.as_secs();
        headers.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_str(&format!("public, max-age={max_age}"))
                .expect("digits are a valid header value"),
        );
        response
    }

    pub(super) async fn userinfo(&self, request: &Request<Incoming>) -> Response<ResponseBody> {
        match self.live_session(request.headers()).await {
            Err(e) => self.store_unavailable(request, &e),
            Ok(Some(session)) => pages::json(
                StatusCode::OK,
                &serde_json::to_value(&session.identity).unwrap_or_default(),
            )
            .map(boxed),
            Ok(None) => self.refuse(Kind::Unauthorized, Audience::Api, "Sign in required"),
        }
    }
}

fn append_cookie(response: &mut Response<ResponseBody>, cookie: &cookie::Cookie<'_>) {
    if let Ok(value) = HeaderValue::from_str(&cookie.to_string()) {
        response.headers_mut().append(SET_COOKIE, value);
    }
}

/// The groups `?allowed_groups=a,b` asks for: the names between commas, each
/// percent-decoded (the encoding of `X-Forwarded-Groups`). Refused when the parameter
/// is repeated or names no group.
fn forward_auth_groups<B>(request: &Request<B>) -> Result<Vec<String>, String> {
    let params = query_params(request, &["allowed_groups"])?;
    let Some(list) = param(&params, "allowed_groups") else {
        return Ok(Vec::new());
    };
    let wanted = crate::proxy::headers::decode_list(list);
    if wanted.is_empty() {
        return Err("the `allowed_groups` parameter names no group".into());
    }
    Ok(wanted)
}

/// The request a trusted proxy asks about, when it says: the canonical path of
/// `X-Original-URI` (nginx) or `X-Forwarded-Uri` (Traefik), and the method of
/// `X-Original-Method` or `X-Forwarded-Method`, which must come with it.
fn reported_request(headers: &http::HeaderMap) -> Result<Option<(http::Method, String)>, String> {
    let header = |names: [&str; 2]| {
        names
            .iter()
            .find_map(|name| headers.get(*name))
            .map(|value| {
                value
                    .to_str()
                    .map_err(|_| format!("{} is not text", names[0]))
            })
            .transpose()
    };
    let Some(uri) = header(["x-original-uri", "x-forwarded-uri"])? else {
        return Ok(None);
    };
    // Rules may depend on the method: without it, no decision would be safe.
    let method = header(["x-original-method", "x-forwarded-method"])?
        .ok_or("the original URI comes without X-Original-Method (or X-Forwarded-Method)")?;
    let method = http::Method::from_bytes(method.trim().as_bytes())
        .map_err(|_| format!("`{method}` is not an HTTP method"))?;
    let path = uri.split(['?', '#']).next().unwrap_or_default();
    let path = normalize_path(path).map_err(|e| format!("the original URI cannot be used: {e}"))?;
    Ok(Some((method, path)))
}
