//! HTTP serving: the accept loop, routing and the endpoint handlers.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::digest::{SHA256, digest};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::devidp::keys::{SigningKey, b64};
use crate::devidp::{DevClient, DevProviderConfig, DevUser, IdTokenTamper, pages};

type Body = Full<Bytes>;

const INTERACTION_TTL: Duration = Duration::from_secs(600);
const CODE_TTL: Duration = Duration::from_secs(60);
/// oidc-provider's default refresh token lifetime.
pub(crate) const REFRESH_TOKEN_TTL: Duration = Duration::from_secs(14 * 24 * 3600);
/// The scope that makes the token endpoint issue refresh tokens.
const OFFLINE_ACCESS: &str = "offline_access";
const MAX_FORM_BYTES: usize = 64 * 1024;

/// State shared by the handle and every connection.
pub(crate) struct Shared {
    pub(crate) config: DevProviderConfig,
    pub(crate) issuer: String,
    /// The issuer's path, which every endpoint path starts with.
    path_prefix: String,
    state: Mutex<State>,
}

#[derive(Default)]
pub(crate) struct State {
    /// Every published key; the last one signs.
    pub(crate) keys: Vec<Arc<SigningKey>>,
    pub(crate) tamper: Option<IdTokenTamper>,
    pub(crate) token_requests: Vec<Vec<(String, String)>>,
    pub(crate) end_session_requests: Vec<Vec<(String, String)>>,
    /// While set, the token endpoint answers 503 and touches nothing.
    pub(crate) token_endpoint_down: bool,
    /// The provider session id (`sid`) of each user's latest login, by username.
    pub(crate) last_sid: HashMap<String, String>,
    /// Claims an administrator changed since startup, by username.
    changed_claims: HashMap<String, Map<String, Value>>,
    /// Authorization requests waiting for the login form, by interaction id.
    interactions: HashMap<String, Interaction>,
    /// Issued, not yet redeemed authorization codes.
    codes: HashMap<String, Code>,
    /// Redeemed codes and the grant they started, so reuse can revoke it.
    redeemed: HashMap<String, String>,
    /// What redeemed codes granted, by grant id. Lives as long as its tokens.
    grants: HashMap<String, Grant>,
    access_tokens: HashMap<String, AccessToken>,
    /// Refresh tokens, used ones included: they stay until they expire so
    /// that their reuse is recognised.
    refresh_tokens: HashMap<String, RefreshToken>,
}

/// A validated authorization request.
struct Interaction {
    client_id: String,
    redirect_uri: String,
    state: Option<String>,
    nonce: Option<String>,
    scope: String,
    code_challenge: String,
    expires: Instant,
}

struct Code {
    request: Interaction,
    user: DevUser,
    /// The provider session the login created.
    sid: String,
    auth_time: u64,
    expires: Instant,
}

/// What one login granted one client (oidc-provider's "grant"). Every token
/// issued for it, by the code and by refreshes, names it, so revoking the
/// grant revokes the whole token family.
#[derive(Clone)]
struct Grant {
    client_id: String,
    user: DevUser,
    /// The scope granted at login; a refresh may narrow it, never widen it.
    scope: String,
    sid: String,
    auth_time: u64,
}

struct AccessToken {
    grant: String,
    scope: String,
    expires: Instant,
}

struct RefreshToken {
    grant: String,
    used: bool,
    expires: Instant,
}

impl State {
    fn prune(&mut self, now: Instant) {
        self.interactions.retain(|_, i| i.expires > now);
        self.codes.retain(|_, c| c.expires > now);
        self.access_tokens.retain(|_, t| t.expires > now);
        self.refresh_tokens.retain(|_, t| t.expires > now);
        let access = self.access_tokens.values().map(|t| &t.grant);
        let live: HashSet<&String> = access
            .chain(self.refresh_tokens.values().map(|t| &t.grant))
            .collect();
        self.grants.retain(|id, _| live.contains(id));
        self.redeemed
            .retain(|_, grant| self.grants.contains_key(grant));
    }

    /// Revokes a grant and every token issued for it; returns how many
    /// tokens were still usable.
    fn revoke_grant(&mut self, grant: &str) -> usize {
        self.grants.remove(grant);
        let before = self.access_tokens.len();
        self.access_tokens.retain(|_, t| t.grant != grant);
        let mut revoked = before - self.access_tokens.len();
        self.refresh_tokens.retain(|_, t| {
            let ours = t.grant == grant;
            revoked += usize::from(ours && !t.used);
            !ours
        });
        revoked
    }

    /// An administrator changes one of a user's claims (e.g. removes a permission):
    /// every token issued from now on, by logins and refreshes, and userinfo for
    /// tokens already issued, carry the new value.
    pub(crate) fn set_user_claim(&mut self, username: &str, name: &str, value: Value) {
        let changed = self.changed_claims.entry(username.to_owned()).or_default();
        changed.insert(name.to_owned(), value.clone());
        let users = (self.grants.values_mut().map(|g| &mut g.user))
            .chain(self.codes.values_mut().map(|c| &mut c.user));
        for user in users.filter(|u| u.username == username) {
            user.claims.insert(name.to_owned(), value.clone());
        }
    }

    /// The administrator's "End Sessions": revokes every token of `username`
    /// (and drops the user's codes not yet redeemed); returns how many
    /// access and refresh tokens were still usable.
    pub(crate) fn end_sessions(&mut self, username: &str, now: Instant) -> usize {
        self.prune(now);
        self.codes.retain(|_, c| c.user.username != username);
        let grants: Vec<String> = (self.grants.iter())
            .filter(|(_, g)| g.user.username == username)
            .map(|(id, _)| id.clone())
            .collect();
        grants.iter().map(|id| self.revoke_grant(id)).sum()
    }
}

impl Shared {
    pub(crate) fn new(
        issuer: String,
        path_prefix: String,
        config: DevProviderConfig,
        key: SigningKey,
    ) -> Self {
        let state = State {
            keys: vec![Arc::new(key)],
            ..State::default()
        };
        Shared {
            config,
            issuer,
            path_prefix,
            state: Mutex::new(state),
        }
    }

    /// Locks the state. A panic elsewhere cannot leave it half-updated in a
    /// way that matters here, so poisoning is ignored.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn client(&self, client_id: &str) -> Option<&DevClient> {
        self.config
            .clients
            .iter()
            .find(|c| c.client_id == client_id)
    }
}

/// Accepts connections until `stop` turns true or its sender is dropped.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "devidp: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        let service = service_fn(move |request| {
            let shared = Arc::clone(&shared);
            async move { Ok::<_, Infallible>(handle(&shared, request).await) }
        });
        let connection = graceful.watch(
            builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned(),
        );
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "devidp: connection error");
            }
        });
    }
    drop(listener);
    // Let requests in flight finish, but do not wait for idle keep-alive clients forever.
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
}

async fn handle(shared: &Shared, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_owned();
    let Some(route) = path.strip_prefix(&shared.path_prefix) else {
        return not_found();
    };
    let query = Params::parse(request.uri().query().unwrap_or("").as_bytes());
    match (request.method(), route) {
        (&Method::GET, "/.well-known/openid-configuration") => {
            json_response(StatusCode::OK, discovery(shared))
        }
        (&Method::GET, "/jwks") => {
            let keys: Vec<Value> = shared.lock().keys.iter().map(|k| k.jwk().clone()).collect();
            json_response(StatusCode::OK, json!({ "keys": keys }))
        }
        (&Method::GET, "/authorize") => authorize(shared, &query),
        (&Method::POST, "/login") => match read_form(request).await {
            Ok((_, form)) => login(shared, &form),
            Err(message) => pages::error(StatusCode::BAD_REQUEST, message),
        },
        (&Method::POST, "/token") => token_endpoint(shared, request).await,
        (&Method::GET | &Method::POST, "/userinfo") => userinfo(shared, request.headers()),
        (&Method::GET, "/session/end") => end_session(shared, &query),
        _ => not_found(),
    }
}

fn discovery(shared: &Shared) -> Value {
    let issuer = &shared.issuer;
    let standard = "sub iss aud azp exp iat auth_time nonce at_hash sid email email_verified \
                    name preferred_username login groups permissions";
    let mut claims: Vec<&str> = standard.split(' ').collect();
    let users = shared.config.users.iter();
    claims.extend(users.flat_map(|u| u.claims.keys().map(String::as_str)));
    claims.sort_unstable();
    claims.dedup();
    json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": format!("{issuer}/token"),
        "userinfo_endpoint": format!("{issuer}/userinfo"),
        "jwks_uri": format!("{issuer}/jwks"),
        "end_session_endpoint": format!("{issuer}/session/end"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [shared.config.signing_alg.as_str()],
        "scopes_supported": ["openid", OFFLINE_ACCESS, "profile", "email", "phone", "address"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "code_challenge_methods_supported": ["S256"],
        "claims_supported": claims,
        "authorization_response_iss_parameter_supported": true,
        "backchannel_logout_supported": true,
        "backchannel_logout_session_supported": true,
    })
}

fn authorize(shared: &Shared, query: &Params) -> Response<Body> {
    // Until client and redirect_uri are known good, errors go to the user, never to a redirect.
    let Some(client) = query.get("client_id").and_then(|id| shared.client(id)) else {
        return pages::error(
            StatusCode::BAD_REQUEST,
            "The client_id is missing or not registered with this provider.",
        );
    };
    let Some(redirect_uri) = query
        .get("redirect_uri")
        .filter(|uri| client.redirect_uris.iter().any(|r| r == uri))
    else {
        return pages::error(
            StatusCode::BAD_REQUEST,
            "The redirect_uri is missing or not registered for this client.",
        );
    };
    let state = query.get("state");
    let fail = |error: &str, description: &str| {
        let params = [
            ("error", Some(error)),
            ("error_description", Some(description)),
            ("state", state),
            ("iss", Some(&shared.issuer)),
        ];
        redirect_to(redirect_uri, &params)
    };
    if query.get("response_type") != Some("code") {
        return fail(
            "unsupported_response_type",
            "only response_type=code is supported",
        );
    }
    let scope = query.get("scope").unwrap_or_default();
    if !has_scope(scope, "openid") {
        return fail("invalid_scope", "the scope must include openid");
    }
    // As oidc-provider does (OpenID Connect Core 11): `offline_access` is dropped
    // unless the request asks for consent.
    let asks_consent = query
        .get("prompt")
        .is_some_and(|prompt| has_scope(prompt, "consent"));
    let scope = if asks_consent {
        scope.to_owned()
    } else {
        let kept: Vec<&str> = scope.split(' ').filter(|s| *s != OFFLINE_ACCESS).collect();
        kept.join(" ")
    };
    let code_challenge = match (
        query.get("code_challenge"),
        query.get("code_challenge_method"),
    ) {
        (Some(challenge), Some("S256")) if is_pkce_value(challenge) => challenge,
        _ => {
            return fail(
                "invalid_request",
                "PKCE is required: send code_challenge with code_challenge_method=S256",
            );
        }
    };
    let interaction = random_token();
    let now = Instant::now();
    let mut locked = shared.lock();
    locked.prune(now);
    let request = Interaction {
        client_id: client.client_id.clone(),
        redirect_uri: redirect_uri.to_owned(),
        state: state.map(str::to_owned),
        nonce: query.get("nonce").map(str::to_owned),
        scope,
        code_challenge: code_challenge.to_owned(),
        expires: now + INTERACTION_TTL,
    };
    locked.interactions.insert(interaction.clone(), request);
    pages::login(&shared.issuer, &interaction, &client.client_id, None)
}

fn login(shared: &Shared, form: &Params) -> Response<Body> {
    let now = Instant::now();
    let mut locked = shared.lock();
    locked.prune(now);
    let interaction = form.get("interaction").unwrap_or_default();
    let Some(request) = locked.interactions.remove(interaction) else {
        let message = "This sign-in attempt is unknown or expired. Please start again.";
        return pages::error(StatusCode::BAD_REQUEST, message);
    };
    let username = form.get("username").unwrap_or_default();
    let password = form.get("password").unwrap_or_default();
    let mut users = shared.config.users.iter();
    let user = users.find(|u| u.username == username && secure_eq(&u.password, password));
    let Some(user) = user else {
        let client_id = request.client_id.clone();
        locked.interactions.insert(interaction.to_owned(), request);
        let error = Some("Wrong username or password.");
        return pages::login(&shared.issuer, interaction, &client_id, error);
    };
    let mut user = user.clone();
    if let Some(changed) = locked.changed_claims.get(&user.username) {
        user.claims.extend(changed.clone());
    }
    let code = random_token();
    let sid = random_token();
    let redirect_uri = request.redirect_uri.clone();
    let state = request.state.clone();
    (locked.last_sid).insert(user.username.clone(), sid.clone());
    let issued = Code {
        request,
        user,
        sid,
        auth_time: unix_now(),
        expires: now + CODE_TTL,
    };
    locked.codes.insert(code.clone(), issued);
    drop(locked);
    let iss = Some(shared.issuer.as_str());
    let params = [
        ("code", Some(code.as_str())),
        ("state", state.as_deref()),
        ("iss", iss),
    ];
    redirect_to(&redirect_uri, &params)
}

/// An RFC 6749 §5.2 error of the token endpoint: status, `error`, description.
struct TokenError(StatusCode, &'static str, &'static str);

impl TokenError {
    fn invalid_request(description: &'static str) -> Self {
        TokenError(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    fn invalid_grant(description: &'static str) -> Self {
        TokenError(StatusCode::BAD_REQUEST, "invalid_grant", description)
    }

    fn server_error() -> Self {
        TokenError(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "")
    }

    /// What [`crate::devidp::DevProvider::set_token_endpoint_outage`] simulates.
    fn outage() -> Self {
        TokenError(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "the token endpoint is down (simulated outage)",
        )
    }

    fn invalid_client() -> Self {
        TokenError(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        )
    }

    fn into_response(self) -> Response<Body> {
        let TokenError(status, error, description) = self;
        let mut response = json_response(
            status,
            json!({ "error": error, "error_description": description }),
        );
        if status == StatusCode::UNAUTHORIZED {
            let challenge = HeaderValue::from_static(r#"Basic realm="devidp""#);
            response.headers_mut().insert(WWW_AUTHENTICATE, challenge);
        }
        response
    }
}

/// `POST /token`: records the request, then answers it unless the endpoint
/// is "down".
async fn token_endpoint(shared: &Shared, request: Request<Incoming>) -> Response<Body> {
    let form = read_form(request).await;
    let down = {
        let mut locked = shared.lock();
        if let Ok((_, form)) = &form {
            locked.token_requests.push(form.0.clone());
        }
        locked.token_endpoint_down
    };
    let answer = match form {
        _ if down => Err(TokenError::outage()),
        Ok((headers, form)) => token(shared, &headers, &form),
        Err(message) => Err(TokenError::invalid_request(message)),
    };
    answer.unwrap_or_else(TokenError::into_response)
}

/// The token endpoint proper: authenticates the client, runs the grant.
fn token(
    shared: &Shared,
    headers: &HeaderMap,
    form: &Params,
) -> Result<Response<Body>, TokenError> {
    let client = authenticate_client(shared, headers, form)?;
    match form.get("grant_type") {
        Some("authorization_code") => authorization_code_grant(shared, client, form),
        Some("refresh_token") => refresh_token_grant(shared, client, form),
        Some(_) => Err(TokenError(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "",
        )),
        None => Err(TokenError::invalid_request("grant_type is required")),
    }
}

/// Redeems an authorization code: starts a grant and issues its first tokens.
fn authorization_code_grant(
    shared: &Shared,
    client: &DevClient,
    form: &Params,
) -> Result<Response<Body>, TokenError> {
    let code = form
        .get("code")
        .ok_or(TokenError::invalid_request("code is required"))?;
    let now = Instant::now();
    let mut locked = shared.lock();
    locked.prune(now);
    // Taking the code out of the map makes it single-use, even when a check below fails.
    let Some(issued) = locked.codes.remove(code) else {
        // RFC 6749 §4.1.2: a reused code should revoke what it gave the first time.
        if let Some(grant) = locked.redeemed.remove(code) {
            locked.revoke_grant(&grant);
        }
        return Err(TokenError::invalid_grant("unknown, expired or used code"));
    };
    let request = &issued.request;
    if request.client_id != client.client_id {
        return Err(TokenError::invalid_grant("code issued to another client"));
    }
    if form.get("redirect_uri") != Some(request.redirect_uri.as_str()) {
        return Err(TokenError::invalid_grant("redirect_uri mismatch"));
    }
    let verifier = form.get("code_verifier").unwrap_or_default();
    let challenge = b64(digest(&SHA256, verifier.as_bytes()));
    if !is_pkce_value(verifier) || challenge != request.code_challenge {
        return Err(TokenError::invalid_grant(
            "PKCE code_verifier missing or wrong",
        ));
    }

    let grant_id = random_token();
    let grant = Grant {
        client_id: client.client_id.clone(),
        user: issued.user,
        scope: issued.request.scope,
        sid: issued.sid,
        auth_time: issued.auth_time,
    };
    let scope = grant.scope.clone();
    locked.grants.insert(grant_id.clone(), grant);
    locked.redeemed.insert(code.to_owned(), grant_id.clone());
    let nonce = issued.request.nonce;
    issue_tokens(shared, locked, &grant_id, &scope, nonce.as_deref(), now)
}

/// Exchanges a refresh token for new tokens, rotating it. Presenting a used
/// refresh token revokes its whole grant, as oidc-provider does.
fn refresh_token_grant(
    shared: &Shared,
    client: &DevClient,
    form: &Params,
) -> Result<Response<Body>, TokenError> {
    let presented = form
        .get("refresh_token")
        .ok_or(TokenError::invalid_request("refresh_token is required"))?;
    let now = Instant::now();
    let mut locked = shared.lock();
    locked.prune(now);
    let token = locked.refresh_tokens.get(presented);
    let Some((grant_id, used)) = token.map(|t| (t.grant.clone(), t.used)) else {
        return Err(TokenError::invalid_grant(
            "unknown, expired or revoked refresh token",
        ));
    };
    let Some(grant) = locked.grants.get(&grant_id) else {
        return Err(TokenError::invalid_grant("the grant was revoked"));
    };
    if grant.client_id != client.client_id {
        return Err(TokenError::invalid_grant(
            "refresh token issued to another client",
        ));
    }
    // RFC 6749 §6: an optional scope may narrow the grant, never widen it.
    let scope = match form.get("scope") {
        None => grant.scope.clone(),
        Some(requested) if requested.split(' ').all(|s| has_scope(&grant.scope, s)) => {
            requested.to_owned()
        }
        Some(_) => {
            return Err(TokenError(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                "the requested scope exceeds the granted scope",
            ));
        }
    };
    if used {
        locked.revoke_grant(&grant_id);
        return Err(TokenError::invalid_grant("refresh token already used"));
    }
    if let Some(token) = locked.refresh_tokens.get_mut(presented) {
        token.used = true;
    }
    issue_tokens(shared, locked, &grant_id, &scope, None, now)
}

/// Issues an access token for `scope`, a refresh token if the grant includes
/// `offline_access`, and an ID token if `scope` includes `openid`; answers
/// with the token response. The ID token carries `nonce` if given.
fn issue_tokens(
    shared: &Shared,
    mut locked: MutexGuard<'_, State>,
    grant_id: &str,
    scope: &str,
    nonce: Option<&str>,
    now: Instant,
) -> Result<Response<Body>, TokenError> {
    let grant = (locked.grants.get(grant_id).cloned()).ok_or(TokenError::server_error())?;
    let access_token = random_token();
    let access_ttl = shared.config.access_token_ttl;
    let issued = AccessToken {
        grant: grant_id.to_owned(),
        scope: scope.to_owned(),
        expires: now + access_ttl,
    };
    locked.access_tokens.insert(access_token.clone(), issued);
    let refresh_token = has_scope(&grant.scope, OFFLINE_ACCESS).then(|| {
        let token = random_token();
        let issued = RefreshToken {
            grant: grant_id.to_owned(),
            used: false,
            expires: now + REFRESH_TOKEN_TTL,
        };
        locked.refresh_tokens.insert(token.clone(), issued);
        token
    });
    let key = locked.keys.last().cloned();
    let tamper = locked.tamper.clone();
    drop(locked);

    let mut body = json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": access_ttl.as_secs(),
        "scope": scope,
    });
    if has_scope(scope, "openid") {
        let iat = unix_now();
        let mut claims = scoped_claims(&grant.user, scope);
        let at_hash = digest(&SHA256, access_token.as_bytes());
        let protocol = json!({
            "iss": shared.issuer,
            "aud": grant.client_id,
            "azp": grant.client_id,
            "iat": iat,
            "exp": iat + shared.config.id_token_ttl.as_secs(),
            "auth_time": grant.auth_time,
            "at_hash": b64(&at_hash.as_ref()[..16]),
            "sid": grant.sid,
        });
        if let Value::Object(protocol) = protocol {
            claims.extend(protocol);
        }
        if let Some(nonce) = nonce {
            claims.insert("nonce".into(), nonce.into());
        }
        let id_token = key.and_then(|key| key.sign_jwt(claims, tamper.as_ref()));
        body["id_token"] = id_token.ok_or(TokenError::server_error())?.into();
    }
    if let Some(refresh_token) = refresh_token {
        body["refresh_token"] = refresh_token.into();
    }
    Ok(json_response(StatusCode::OK, body))
}

/// Client authentication by `client_secret_basic` or `client_secret_post`.
fn authenticate_client<'a>(
    shared: &'a Shared,
    headers: &HeaderMap,
    form: &Params,
) -> Result<&'a DevClient, TokenError> {
    let (client_id, secret) = match credentials(headers, "Basic") {
        Some(_) if form.get("client_secret").is_some() => {
            return Err(TokenError::invalid_request(
                "use one client authentication method",
            ));
        }
        Some(basic) => {
            let (client_id, secret) = decode_basic(basic).ok_or(TokenError::invalid_client())?;
            if form.get("client_id").is_some_and(|id| id != client_id) {
                return Err(TokenError::invalid_request(
                    "client_id differs from Basic auth",
                ));
            }
            (client_id, secret)
        }
        None => match (form.get("client_id"), form.get("client_secret")) {
            (Some(id), Some(secret)) => (id.to_owned(), secret.to_owned()),
            _ => return Err(TokenError::invalid_client()),
        },
    };
    let client = shared.client(&client_id);
    client
        .filter(|c| secure_eq(&c.client_secret, &secret))
        .ok_or(TokenError::invalid_client())
}

/// RFC 6749 §2.3.1: id and secret are form-urlencoded before being joined by `:`.
fn decode_basic(credentials: &str) -> Option<(String, String)> {
    let decoded = String::from_utf8(STANDARD.decode(credentials.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    let unescape = |s: &str| {
        Some(
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8()
                .ok()?
                .into_owned(),
        )
    };
    Some((unescape(id)?, unescape(secret)?))
}

fn userinfo(shared: &Shared, headers: &HeaderMap) -> Response<Body> {
    let token = credentials(headers, "Bearer");
    let now = Instant::now();
    let locked = shared.lock();
    let access_token = token
        .and_then(|t| locked.access_tokens.get(t))
        .filter(|t| t.expires > now);
    match access_token.and_then(|t| Some((locked.grants.get(&t.grant)?, &t.scope))) {
        Some((grant, scope)) => json_response(
            StatusCode::OK,
            Value::Object(scoped_claims(&grant.user, scope)),
        ),
        None => {
            let message = "invalid or expired access token\n";
            let mut response = respond(StatusCode::UNAUTHORIZED, TEXT, message);
            let challenge = HeaderValue::from_static(r#"Bearer error="invalid_token""#);
            response.headers_mut().insert(WWW_AUTHENTICATE, challenge);
            response
        }
    }
}

fn end_session(shared: &Shared, query: &Params) -> Response<Body> {
    shared.lock().end_session_requests.push(query.0.clone());
    if let Some(target) = query.get("post_logout_redirect_uri") {
        let registered = shared
            .config
            .clients
            .iter()
            .filter(|c| query.get("client_id").is_none_or(|id| id == c.client_id))
            .any(|c| c.post_logout_redirect_uris.iter().any(|u| u == target));
        if registered {
            return redirect_to(target, &[("state", query.get("state"))]);
        }
    }
    pages::signed_out()
}

/// The user's claims that `scope` releases, always including `sub`.
fn scoped_claims(user: &DevUser, scope: &str) -> Map<String, Value> {
    let granted: Vec<&str> = scope.split(' ').collect();
    let mut claims: Map<String, Value> = (user.claims.iter())
        .filter(|(name, _)| scope_of_claim(name).is_none_or(|needed| granted.contains(&needed)))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    claims
        .entry("sub")
        .or_insert_with(|| user.username.clone().into());
    claims
}

/// Whether the space-separated `scope` contains `name`.
fn has_scope(scope: &str, name: &str) -> bool {
    scope.split(' ').any(|s| s == name)
}

/// The scope that releases a standard claim (OIDC Core §5.4); `None` for the rest.
fn scope_of_claim(claim: &str) -> Option<&'static str> {
    match claim {
        "email" | "email_verified" => Some("email"),
        "phone_number" | "phone_number_verified" => Some("phone"),
        "address" => Some("address"),
        "name" | "family_name" | "given_name" | "middle_name" | "nickname"
        | "preferred_username" | "login" | "profile" | "picture" | "website" | "gender"
        | "birthdate" | "zoneinfo" | "locale" | "updated_at" => Some("profile"),
        _ => None,
    }
}

/// Decoded query or form parameters, in order.
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(input: &[u8]) -> Self {
        Params(form_urlencoded::parse(input).into_owned().collect())
    }

    /// The first non-empty value of `name` (RFC 6749 §3.1: empty means absent).
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, v)| n == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }
}

async fn read_form(request: Request<Incoming>) -> Result<(HeaderMap, Params), &'static str> {
    let (parts, body) = request.into_parts();
    let content_type = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !content_type
        .to_ascii_lowercase()
        .starts_with("application/x-www-form-urlencoded")
    {
        return Err("expected an application/x-www-form-urlencoded body");
    }
    let body = Limited::new(body, MAX_FORM_BYTES)
        .collect()
        .await
        .map_err(|_| "unreadable or too large body")?;
    Ok((parts.headers, Params::parse(&body.to_bytes())))
}

/// RFC 7636 §4.1: 43 to 128 unreserved characters (challenge and verifier alike).
fn is_pkce_value(value: &str) -> bool {
    (43..=128).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

/// The credentials of an `Authorization: <scheme> <credentials>` header.
fn credentials<'a>(headers: &'a HeaderMap, scheme: &str) -> Option<&'a str> {
    let (found, rest) = headers.get(AUTHORIZATION)?.to_str().ok()?.split_once(' ')?;
    found.eq_ignore_ascii_case(scheme).then_some(rest.trim())
}

fn secure_eq(a: &str, b: &str) -> bool {
    verify_slices_are_equal(a.as_bytes(), b.as_bytes()).is_ok()
}

/// 256 random bits, base64url: codes, tokens, interaction ids, demo secrets.
pub(crate) fn random_token() -> String {
    b64(rand::random::<[u8; 32]>())
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// 303 to `base` with the present `params` appended to its query.
fn redirect_to(base: &str, params: &[(&str, Option<&str>)]) -> Response<Body> {
    let Ok(mut url) = url::Url::parse(base) else {
        return pages::error(StatusCode::INTERNAL_SERVER_ERROR, "Invalid redirect URI.");
    };
    for (name, value) in params {
        if let Some(value) = value {
            url.query_pairs_mut().append_pair(name, value);
        }
    }
    Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(LOCATION, url.as_str())
        .header(CACHE_CONTROL, "no-store")
        .body(Body::default())
        .unwrap_or_default()
}

const TEXT: &str = "text/plain; charset=utf-8";

/// A response that no cache may keep (all of them are per-request here).
pub(crate) fn respond(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, content_type)
        .header(CACHE_CONTROL, "no-store")
        .body(Full::new(body.into()))
        .unwrap_or_default()
}

fn json_response(status: StatusCode, body: Value) -> Response<Body> {
    respond(status, "application/json", body.to_string())
}

fn not_found() -> Response<Body> {
    respond(StatusCode::NOT_FOUND, TEXT, "not found\n")
}
