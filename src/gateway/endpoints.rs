//! The gateway's own endpoints, oauth2-proxy's names: `/oauth2/sign_in`, `/start`,
//! the callback, `/sign_out`, `/userinfo`, `/auth` for forward-auth, and
//! `/backchannel-logout` for the provider.
//!
//! Login state (PKCE verifier, nonce, return target) stays server-side under the
//! `state` value, single use, expiring after [`LOGIN_TIMEOUT`]. A short-lived
//! encrypted cookie named after the state binds the login to the browser that
//! started it, so a stolen callback URL cannot sign someone else in.

use http::header::{HeaderValue, SET_COOKIE};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::request::{param, query_params};
use super::{Gateway, redirect, urlencode};
use crate::observe::LoginRefusal;
use crate::oidc::LoginError;
use crate::pages::{self, Link, Page};
use crate::policy::return_target_or_root;
use crate::proxy::{ResponseBody, boxed};
use crate::session::{LOGIN_TIMEOUT, Session, new_session_id};

/// Largest back-channel logout request body read.
const MAX_LOGOUT_BODY: usize = 64 * 1024;

/// Characters of the state used in the login cookie's name.
const STATE_COOKIE_PREFIX_LEN: usize = 12;

impl Gateway {
    fn login_cookie_name(&self, state: &str) -> String {
        let prefix: String = state.chars().take(STATE_COOKIE_PREFIX_LEN).collect();
        format!("{}_csrf_{prefix}", self.settings.session.cookie_name)
    }

    /// The validated `rd` parameter as an absolute URL; the start page when absent
    /// or unsafe.
    fn return_target(&self, request: &Request<Incoming>) -> String {
        let params = query_params(request, &[]).unwrap_or_default();
        let server = &self.settings.server;
        return_target_or_root(
            param(&params, "rd").unwrap_or("/"),
            &server.public_url,
            &server.allowed_redirect_hosts,
        )
    }

    pub(super) fn sign_in_page(&self, request: &Request<Incoming>) -> Response<ResponseBody> {
        let start = format!(
            "/oauth2/start?rd={}",
            urlencode(&self.return_target(request))
        );
        if self.settings.oidc.skip_sign_in_page {
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
        let return_to = self.return_target(request);
        let (url, state, pending) = match self.provider.begin_login(return_to).await {
            Ok(login) => login,
            Err(e) => {
                tracing::error!(error = %e, "cannot start a login");
                self.metrics
                    .login_refused(LoginRefusal::ProviderUnavailable);
                let message = format!(
                    "{} cannot be reached right now, so signing in is not possible. Try again in a moment.",
                    self.settings.oidc.provider_name
                );
                return self.page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Sign-in unavailable",
                    &message,
                );
            }
        };
        if let Err(e) = self.sessions.put_login(&state, pending).await {
            tracing::error!(error = %e, "cannot start a login");
            self.metrics.login_refused(LoginRefusal::StoreUnavailable);
            return self.page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Sign-in unavailable",
                "Signing in is not possible right now: the session store cannot be reached. Try again in a moment.",
            );
        }
        let cookie = self.cookies.seal(
            &self.login_cookie_name(&state),
            &state,
            &self.settings.oidc.callback_path,
            Some(LOGIN_TIMEOUT),
        );
        self.metrics.login_started();
        let mut response = redirect(url.as_str());
        append_cookie(&mut response, &cookie);
        response
    }

    pub(super) async fn callback(&self, request: &Request<Incoming>) -> Response<ResponseBody> {
        let failed = |why, status, message: &str| {
            self.metrics.login_refused(why);
            self.login_failed(status, message)
        };
        let params = match query_params(request, &["state", "code", "error"]) {
            Ok(params) => params,
            Err(problem) => {
                return failed(
                    LoginRefusal::MalformedCallback,
                    StatusCode::BAD_REQUEST,
                    &format!("The sign-in answer is malformed: {problem}."),
                );
            }
        };
        if let Some(error) = param(&params, "error") {
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
            return failed(
                LoginRefusal::ProviderError,
                StatusCode::FORBIDDEN,
                message.trim_end(),
            );
        }
        let (Some(state), Some(code)) = (param(&params, "state"), param(&params, "code")) else {
            return failed(
                LoginRefusal::MalformedCallback,
                StatusCode::BAD_REQUEST,
                "The sign-in answer lacks its code or state.",
            );
        };
        let cookie_name = self.login_cookie_name(state);
        let bound = self
            .cookies
            .open(request.headers(), &cookie_name)
            .is_some_and(|cookie_state| {
                constant_time_eq(cookie_state.as_bytes(), state.as_bytes())
            });
        if !bound {
            tracing::warn!("callback state does not match this browser's login cookie");
            return failed(
                LoginRefusal::NotThisBrowser,
                StatusCode::BAD_REQUEST,
                "This sign-in was not started in this browser, or it took too long.",
            );
        }
        let store_down = |e: &crate::session::StoreUnavailable| {
            tracing::error!(error = %e, "cannot finish a login");
            failed(
                LoginRefusal::StoreUnavailable,
                StatusCode::SERVICE_UNAVAILABLE,
                "Signing in is not possible right now: the session store cannot be reached. Try again in a moment.",
            )
        };
        let pending = match self.sessions.take_login(state).await {
            Ok(Some(pending)) => pending,
            Ok(None) => {
                tracing::warn!("callback state unknown: expired or already used");
                return failed(
                    LoginRefusal::StateExpired,
                    StatusCode::BAD_REQUEST,
                    "This sign-in has expired or was already used.",
                );
            }
            Err(e) => return store_down(&e),
        };
        let outcome = match self
            .provider
            .complete_login(code.to_owned(), &pending)
            .await
        {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::warn!(error = %e, "login failed");
                let (why, status) = match e {
                    LoginError::IdTokenRefused(_) | LoginError::NoIdToken => {
                        (LoginRefusal::IdTokenRefused, StatusCode::UNAUTHORIZED)
                    }
                    _ => (LoginRefusal::ProviderUnavailable, StatusCode::BAD_GATEWAY),
                };
                return failed(why, status, &format!("Signing in failed: {e}."));
            }
        };

        // A fresh session id at every login; any session this browser had ends.
        if let Some(old_id) = self
            .cookies
            .open(request.headers(), &self.settings.session.cookie_name)
        {
            self.sessions.remove(&old_id).await;
        }
        let id = new_session_id();
        let (sub, email) = (outcome.identity.sub.clone(), outcome.identity.email.clone());
        let session = Session::new(
            outcome.identity,
            outcome.provider_sid.map(Into::into),
            outcome.tokens,
        );
        if let Err(e) = self.sessions.insert(&id, session).await {
            return store_down(&e);
        }
        tracing::info!(%sub, ?email, "signed in");
        self.metrics.login_completed();
        let session_cookie = self.cookies.seal(
            &self.settings.session.cookie_name,
            &id,
            "/",
            Some(self.settings.session.lifetime),
        );
        let mut response = redirect(&pending.return_to);
        append_cookie(&mut response, &session_cookie);
        append_cookie(
            &mut response,
            &self
                .cookies
                .removal(&cookie_name, &self.settings.oidc.callback_path),
        );
        response
    }

    fn login_failed(&self, status: StatusCode, message: &str) -> Response<ResponseBody> {
        Page {
            status,
            title: "Sign-in failed",
            message,
            links: &[Link {
                href: "/oauth2/start?rd=%2F",
                label: "Try again",
            }],
        }
        .render()
        .map(boxed)
    }

    /// Ends the session here, then at the provider (RP-initiated logout) when it can.
    /// Without a provider logout, `rd` (validated like every return target) says where
    /// to go; otherwise the provider returns the browser to `oidc.post_logout_path`.
    pub(super) async fn sign_out(&self, request: &Request<Incoming>) -> Response<ResponseBody> {
        let post_logout = self.public_url(&self.settings.oidc.post_logout_path);
        // The session ends even when it cannot be read (Redis down): the removal is
        // then carried out once Redis is back.
        let id = self
            .cookies
            .open(request.headers(), &self.settings.session.cookie_name);
        let provider_logout = match id {
            Some(id) => {
                let session = self.sessions.get(&id).await.ok().flatten();
                self.sessions.remove(&id).await;
                match session {
                    Some(session) => tracing::info!(sub = %session.identity.sub, "signed out"),
                    None => tracing::info!("signed out (session already gone or unreadable)"),
                }
                self.provider.end_session_url(post_logout.clone())
            }
            None => None,
        };
        let has_rd = query_params(request, &[]).is_ok_and(|p| param(&p, "rd").is_some());
        let location = match provider_logout {
            Some(url) => url.to_string(),
            None if has_rd => self.return_target(request),
            None => post_logout.to_string(),
        };
        let mut response = redirect(&location);
        append_cookie(
            &mut response,
            &self
                .cookies
                .removal(&self.settings.session.cookie_name, "/"),
        );
        response
    }

    /// Forward-auth for nginx `auth_request` or Traefik ForwardAuth: 202 with the
    /// identity in response headers when the cookie holds a session that the access
    /// rules (and `?allowed_groups=a,b`, any one) admit; 401 without a session, 403
    /// when refused.
    pub(super) async fn forward_auth(&self, request: &Request<Incoming>) -> Response<ResponseBody> {
        let session = match self.live_session(request.headers()).await {
            Ok(Some(session)) => session,
            Ok(None) => {
                return pages::json(
                    StatusCode::UNAUTHORIZED,
                    &serde_json::json!({"error": "unauthorized"}),
                )
                .map(boxed);
            }
            Err(e) => return self.store_unavailable(request, &e),
        };
        let params = query_params(request, &["allowed_groups"]).unwrap_or_default();
        let wanted: Vec<String> = param(&params, "allowed_groups")
            .map(crate::config::split_list)
            .unwrap_or_default();
        let refusal = self.authorize(&session, None).err().or_else(|| {
            let admitted =
                wanted.is_empty() || session.identity.groups.iter().any(|g| wanted.contains(g));
            (!admitted).then(|| {
                crate::policy::Refusal(format!("allowed_groups: none of {}", wanted.join(", ")))
            })
        });
        if let Some(refusal) = refusal {
            return pages::json(
                StatusCode::FORBIDDEN,
                &serde_json::json!({"error": "forbidden", "rule": refusal.0}),
            )
            .map(boxed);
        }
        let mut response = pages::text(StatusCode::ACCEPTED, "").map(boxed);
        self.set_identity_headers(response.headers_mut(), &session);
        response
    }

    /// OpenID Connect Back-Channel Logout: the provider POSTs a signed `logout_token`;
    /// every session of that provider session (`sid`) or person (`sub`) ends.
    pub(super) async fn backchannel_logout(
        &self,
        request: Request<Incoming>,
    ) -> Response<ResponseBody> {
        let refuse = |description: &str| {
            tracing::warn!(reason = description, "back-channel logout refused");
            pages::json(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({"error": "invalid_request", "error_description": description}),
            )
            .map(boxed)
        };
        if request.method() != http::Method::POST {
            return refuse("use POST with a logout_token form field");
        }
        let body = match Limited::new(request.into_body(), MAX_LOGOUT_BODY)
            .collect()
            .await
        {
            Ok(body) => body.to_bytes(),
            Err(_) => return refuse("the body is too large or broken"),
        };
        let fields: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
        let tokens: Vec<&str> = fields
            .iter()
            .filter(|(n, _)| n == "logout_token")
            .map(|(_, v)| v.as_str())
            .collect();
        let [token] = tokens.as_slice() else {
            return refuse("exactly one logout_token is required");
        };
        let target = match self.provider.verify_logout_token(token).await {
            Ok(target) => target,
            Err(reason) => return refuse(&reason),
        };
        let store_down = |e: crate::session::StoreUnavailable| {
            tracing::error!(error = %e, "back-channel logout failed");
            pages::json(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({"error": "temporarily_unavailable", "error_description": "the session store cannot be reached"}),
            )
            .map(boxed)
        };
        match self
            .sessions
            .first_use("jti", &target.jti, crate::oidc::LOGOUT_TOKEN_MAX_AGE * 2)
            .await
        {
            Ok(true) => {}
            Ok(false) => return refuse("this token (`jti`) was already used"),
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
        tracing::info!(sub = ?target.sub, sid = ?target.sid, ended, "back-channel logout");
        let mut response = pages::text(StatusCode::OK, "").map(boxed);
        response.headers_mut().insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
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
            Ok(None) => pages::json(
                StatusCode::UNAUTHORIZED,
                &serde_json::json!({"error": "unauthorized", "message": "Sign in required"}),
            )
            .map(boxed),
        }
    }
}

fn append_cookie(response: &mut Response<ResponseBody>, cookie: &cookie::Cookie<'_>) {
    if let Ok(value) = HeaderValue::from_str(&cookie.to_string()) {
        response.headers_mut().append(SET_COOKIE, value);
    }
}

/// Compares two secrets without an early exit.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
