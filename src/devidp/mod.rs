//! A small development OpenID Connect provider ("devidp").
//!
//! `ssogate demo` runs it on loopback so the gateway can be tried without a
//! real identity provider, and the integration tests use it as their
//! in-process provider. It speaks real OIDC so the gateway exercises the same
//! code paths as in production:
//!
//! | Endpoint (below the issuer)             | What it does                                         |
//! |-----------------------------------------|------------------------------------------------------|
//! | `GET /.well-known/openid-configuration` | discovery document                                   |
//! | `GET /jwks`                             | every published public key (current and rotated out) |
//! | `GET /authorize`                        | checks the request, shows a login form               |
//! | `POST /login`                           | checks the password, redirects back with a code      |
//! | `POST /token`                           | code + PKCE verifier, or a refresh token → tokens    |
//! | `GET /userinfo`                         | the user's claims for a bearer access token          |
//! | `GET /session/end`                      | RP-initiated logout                                  |
//!
//! Only the authorization code flow with PKCE (`S256`) and the refresh token
//! grant are supported; there are no consent screens and no single sign-on
//! (every `/authorize` shows the login form). ID tokens are signed with RS256
//! or ES256 by keys that are generated at start-up and only live in memory.
//!
//! Like Encvoy ID (whose engine is the npm `oidc-provider`):
//!
//! - Every successful login starts a provider session with a random id, the
//!   `sid` claim of every ID token issued for that login, refreshes included.
//!   Discovery advertises back-channel logout with `sid`; the provider sends
//!   no logout tokens itself, but [`DevProvider::logout_token`] makes them.
//! - A refresh token (valid for 14 days) comes with the tokens only when the
//!   granted scope contains `offline_access`. Each refresh returns a new
//!   access token, a new ID token (same `sub`, `sid`, `aud`, `azp` and
//!   `auth_time`, fresh `iat`/`exp`, no `nonce`) and a new refresh token; the
//!   presented one is used up. Presenting a used one again is `invalid_grant`
//!   and revokes every token of that login, as does reusing a code. A
//!   `scope` parameter may narrow the refreshed tokens' scope.
//! - Token endpoint errors are RFC 6749 JSON: `{"error", "error_description"}`.
//!
//! Claims are released by scope: standard claims of the `email`, `profile`,
//! `phone` and `address` scopes only when that scope was granted; `sub` and
//! every non-standard claim (`groups`, `permissions`, ...) always.
//!
//! Tests can observe and bend the provider: [`DevProvider::token_requests`],
//! [`DevProvider::end_session_requests`], [`DevProvider::refresh_count`],
//! [`DevProvider::sid_of_last_login`], [`DevProvider::rotate_signing_key`],
//! [`DevProvider::set_id_token_tamper`], [`DevProvider::end_sessions`] (the
//! administrator's "End Sessions"), [`DevProvider::set_token_endpoint_outage`],
//! and make back-channel logout tokens with [`DevProvider::logout_token`] or
//! anything else signed with [`DevProvider::sign_claims`].
//!
//! This is **not** a production identity provider: it refuses to listen on
//! anything but a loopback address and keeps all state in memory.

mod keys;
mod pages;
mod server;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use tokio::sync::watch;

use crate::devidp::keys::SigningKey;
use crate::devidp::server::Shared;

/// The `events` member that marks a JWT as a back-channel logout token.
pub const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// The client id that [`DevProviderConfig::demo`] registers.
pub const DEMO_CLIENT_ID: &str = "ssogate-demo";

/// The algorithm the provider signs ID tokens with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SigningAlg {
    /// RSASSA-PKCS1-v1_5 with SHA-256 and a 2048-bit key.
    #[default]
    Rs256,
    /// ECDSA on P-256 with SHA-256.
    Es256,
}

impl SigningAlg {
    /// The JOSE name of the algorithm (`"RS256"` or `"ES256"`).
    pub fn as_str(self) -> &'static str {
        match self {
            SigningAlg::Rs256 => "RS256",
            SigningAlg::Es256 => "ES256",
        }
    }
}

/// A registered relying party (the gateway, in practice).
#[derive(Clone, Debug)]
pub struct DevClient {
    pub client_id: String,
    pub client_secret: String,
    /// Compared exactly (no prefix or pattern matching), as the spec requires.
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
}

/// A user who can sign in on the login form.
#[derive(Clone, Debug)]
pub struct DevUser {
    pub username: String,
    pub password: String,
    /// The user's claims. `sub` defaults to `username` when absent.
    pub claims: Map<String, Value>,
}

/// Everything [`DevProvider::start`] needs.
#[derive(Clone, Debug)]
pub struct DevProviderConfig {
    /// Path of the issuer below `http://<addr>`, e.g. `"/idp"`; may be `""`.
    pub issuer_path: String,
    pub clients: Vec<DevClient>,
    pub users: Vec<DevUser>,
    pub signing_alg: SigningAlg,
    pub id_token_ttl: Duration,
    pub access_token_ttl: Duration,
}

impl DevProviderConfig {
    /// One client and these users, under an issuer path like Encvoy ID's
    /// (`/api/oidc`), with RS256 ID tokens and tokens valid for 30 minutes: what the
    /// tests and benches start from (change any field with `..`).
    pub fn new(client: DevClient, users: Vec<DevUser>) -> Self {
        DevProviderConfig {
            issuer_path: "/api/oidc".to_owned(),
            clients: vec![client],
            users,
            signing_alg: SigningAlg::Rs256,
            id_token_ttl: Duration::from_secs(1800),
            access_token_ttl: Duration::from_secs(1800),
        }
    }

    /// One client ([`DEMO_CLIENT_ID`] with a random secret) and one user,
    /// `demo` with password `demo`, who is in group `admins` and has the
    /// `sentry:admin` permission.
    pub fn demo(redirect_uri: &str, post_logout_redirect_uri: &str) -> Self {
        let claims = json!({
            "sub": "demo-user-1",
            "email": "demo@example.com",
            "email_verified": true,
            "preferred_username": "demo",
            "login": "demo",
            "name": "Demo User",
            "groups": ["admins"],
            "permissions": ["sentry:admin"],
        });
        DevProviderConfig {
            issuer_path: "/idp".to_owned(),
            clients: vec![DevClient {
                client_id: DEMO_CLIENT_ID.to_owned(),
                client_secret: server::random_token(),
                redirect_uris: vec![redirect_uri.to_owned()],
                post_logout_redirect_uris: vec![post_logout_redirect_uri.to_owned()],
            }],
            users: vec![DevUser {
                username: "demo".to_owned(),
                password: "demo".to_owned(),
                claims: claims.as_object().cloned().unwrap_or_default(),
            }],
            signing_alg: SigningAlg::Rs256,
            id_token_ttl: Duration::from_secs(300),
            access_token_ttl: Duration::from_secs(300),
        }
    }

    /// The issuer path with a leading and without a trailing slash.
    fn normalized_issuer_path(&self) -> Result<String, DevProviderError> {
        let path = self.issuer_path.trim_matches('/');
        let plain = |c: char| c.is_ascii_graphic() && !"?#%\"<>\\".contains(c);
        if !path.chars().all(plain) {
            let message = format!("issuer_path {:?} is not a plain URL path", self.issuer_path);
            return Err(DevProviderError::Config(message));
        }
        Ok(if path.is_empty() {
            String::new()
        } else {
            format!("/{path}")
        })
    }
}

/// Called on the JOSE header and the claims of every ID token just before it
/// is signed. Setting the header's `alg` to `"none"` yields an unsigned token.
pub type IdTokenTamper =
    Arc<dyn Fn(&mut Map<String, Value>, &mut Map<String, Value>) + Send + Sync>;

/// Why the provider could not start.
#[derive(Debug, thiserror::Error)]
pub enum DevProviderError {
    #[error(
        "refusing to serve the development identity provider on {0}: only loopback addresses are allowed"
    )]
    NotLoopback(SocketAddr),
    #[error("could not listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid development identity provider configuration: {0}")]
    Config(String),
    #[error("could not generate a signing key")]
    KeyGeneration,
}

/// A running development provider. Clones share the same server.
///
/// The server stops when [`DevProvider::shutdown`] is called or when the last
/// clone of the handle is dropped, so keep one alive for as long as you need it.
#[derive(Clone)]
pub struct DevProvider {
    handle: Arc<Handle>,
}

struct Handle {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    /// Set to `true` (or dropped) to stop the accept loop.
    stop: watch::Sender<bool>,
}

impl fmt::Debug for DevProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevProvider")
            .field("issuer", &self.handle.shared.issuer)
            .finish_non_exhaustive()
    }
}

impl DevProvider {
    /// Binds `addr` and serves in a background tokio task.
    ///
    /// Refuses any address whose IP is not loopback. Use port 0 to let the
    /// system pick a free port, then ask [`DevProvider::issuer`].
    pub async fn start(
        addr: SocketAddr,
        config: DevProviderConfig,
    ) -> Result<DevProvider, DevProviderError> {
        if !addr.ip().to_canonical().is_loopback() {
            return Err(DevProviderError::NotLoopback(addr));
        }
        let issuer_path = config.normalized_issuer_path()?;
        let alg = config.signing_alg;
        let key = tokio::task::spawn_blocking(move || SigningKey::generate(alg))
            .await
            .map_err(|_| DevProviderError::KeyGeneration)??;
        let bind_error = |source| DevProviderError::Bind { addr, source };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        let issuer = format!("http://{local_addr}{issuer_path}");
        let shared = Arc::new(Shared::new(issuer, issuer_path, config, key));
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(server::serve(listener, Arc::clone(&shared), stopped));
        tracing::info!(issuer = %shared.issuer, "development identity provider listening");
        Ok(DevProvider {
            handle: Arc::new(Handle {
                shared,
                local_addr,
                stop,
            }),
        })
    }

    /// `http://<ip>:<port><issuer_path>`, without a trailing slash.
    pub fn issuer(&self) -> String {
        self.handle.shared.issuer.clone()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.handle.local_addr
    }

    /// Makes a new key of the same algorithm the signing key and returns its
    /// `kid`. Older keys stay published in the JWKS.
    ///
    /// # Panics
    /// If the crypto library fails to generate a key, which it does not.
    pub fn rotate_signing_key(&self) -> String {
        let key = SigningKey::generate(self.handle.shared.config.signing_alg)
            .expect("aws-lc-rs failed to generate a signing key");
        let kid = key.kid().to_owned();
        self.handle.shared.lock().keys.push(Arc::new(key));
        kid
    }

    /// Installs (or with `None` removes) a hook that edits every ID token
    /// before it is signed. See [`IdTokenTamper`].
    pub fn set_id_token_tamper(&self, tamper: Option<IdTokenTamper>) {
        self.handle.shared.lock().tamper = tamper;
    }

    /// The form fields of every `/token` request received so far, in order.
    pub fn token_requests(&self) -> Vec<Vec<(String, String)>> {
        self.handle.shared.lock().token_requests.clone()
    }

    /// The query parameters of every end-session request received so far.
    pub fn end_session_requests(&self) -> Vec<Vec<(String, String)>> {
        self.handle.shared.lock().end_session_requests.clone()
    }

    /// How many `/token` requests with `grant_type=refresh_token` were
    /// received so far, successful or not (outages included).
    pub fn refresh_count(&self) -> usize {
        let locked = self.handle.shared.lock();
        let refreshes = locked.token_requests.iter().filter(|fields| {
            let grant_type = fields
                .iter()
                .find(|(n, v)| n == "grant_type" && !v.is_empty());
            grant_type.is_some_and(|(_, v)| v == "refresh_token")
        });
        refreshes.count()
    }

    /// The provider session id (`sid`) of `username`'s latest successful
    /// login, if any. [`DevProvider::end_sessions`] does not forget it.
    pub fn sid_of_last_login(&self, username: &str) -> Option<String> {
        self.handle.shared.lock().last_sid.get(username).cloned()
    }

    /// The administrator's "End Sessions" for `username`: revokes every
    /// access and refresh token the user holds (userinfo then answers 401,
    /// refreshing `invalid_grant`) and drops the user's unredeemed codes.
    /// Returns how many still usable access and refresh tokens were revoked.
    /// Sends no back-channel logout.
    pub fn end_sessions(&self, username: &str) -> usize {
        self.handle
            .shared
            .lock()
            .end_sessions(username, Instant::now())
    }

    /// The administrator changes `username`'s claim `name` (e.g. `permissions`) to
    /// `value`: refreshed tokens, userinfo and later logins carry the new value.
    pub fn set_user_claim(&self, username: &str, name: &str, value: Value) {
        self.handle
            .shared
            .lock()
            .set_user_claim(username, name, value);
    }

    /// While `down`, `POST /token` answers every request with 503 and
    /// `{"error": "temporarily_unavailable", ...}` without looking at it:
    /// no code or refresh token is used up. The request is still recorded in
    /// [`DevProvider::token_requests`] (and [`DevProvider::refresh_count`]).
    pub fn set_token_endpoint_outage(&self, down: bool) {
        self.handle.shared.lock().token_endpoint_down = down;
    }

    /// A back-channel logout token (OpenID Connect Back-Channel Logout 1.0
    /// §2.4) signed with the current key, with header `typ: "logout+jwt"`,
    /// `aud` the first client's id, a two-minute lifetime, a random `jti`,
    /// the logout `events` member and `sub` and `sid` when given (the spec
    /// wants at least one; this does not check).
    ///
    /// # Panics
    /// As [`DevProvider::sign_claims`].
    pub fn logout_token(&self, sub: Option<&str>, sid: Option<&str>) -> String {
        let shared = &self.handle.shared;
        let aud = shared.config.clients.first().map(|c| c.client_id.as_str());
        let iat = server::unix_now();
        let claims = json!({
            "iss": shared.issuer,
            "aud": aud,
            "iat": iat,
            "exp": iat + 120,
            "jti": server::random_token(),
            "events": { BACKCHANNEL_LOGOUT_EVENT: {} },
        });
        let mut claims = claims.as_object().cloned().unwrap_or_default();
        for (name, value) in [("sub", sub), ("sid", sid)] {
            if let Some(value) = value {
                claims.insert(name.into(), value.into());
            }
        }
        let header = json!({ "typ": "logout+jwt" });
        self.sign_claims(header.as_object().cloned().unwrap_or_default(), claims)
    }

    /// Signs any `claims` with the current signing key, as a JWT whose header
    /// is `{alg, kid, typ: "JWT"}` with `header_extra`'s members set over it.
    /// The signature is made with the current key whatever the header says;
    /// an `alg` of `"none"` leaves the token unsigned (`header.payload.`).
    ///
    /// # Panics
    /// If the crypto library fails to sign, which it does not.
    pub fn sign_claims(
        &self,
        header_extra: Map<String, Value>,
        claims: Map<String, Value>,
    ) -> String {
        let key = self.handle.shared.lock().keys.last().cloned();
        let key = key.expect("the provider always has a signing key");
        let mut header = key.header();
        header.extend(header_extra);
        key.sign_compact(header, claims)
            .expect("aws-lc-rs failed to sign")
    }

    /// Stops accepting connections; requests in flight are still answered.
    pub fn shutdown(&self) {
        self.handle.stop.send_replace(true);
    }
}
