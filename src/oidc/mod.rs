//! The OpenID Connect relying party: discovery, the signing-key cache, the
//! authorization-code flow with PKCE, state and nonce, and RP-initiated logout.
//!
//! openidconnect does the protocol; this module adds what it leaves to us: a
//! strict issuer check with an explanation, a key set that follows the provider's key
//! rotation (openidconnect copies the JWKS once, so an unknown `kid` would fail
//! forever), clock skew, and errors a person and an operator can act on. It never
//! logs tokens or secrets.

mod claims;
mod discovery;
mod http;
mod keys;
mod logout;

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreAuthenticationFlow, CoreErrorResponseType,
    CoreGenderClaim, CoreJsonWebKey, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm,
    CoreRevocableToken, CoreRevocationErrorResponse, CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AccessToken, AuthorizationCode, Client, ClientId, ClientSecret, CsrfToken,
    EmptyExtraTokenFields, EndpointMaybeSet, EndpointNotSet, EndpointSet, IdToken, IdTokenFields,
    IdTokenVerifier, JsonWebKeySet, LogoutRequest, Nonce, OAuth2TokenResponse, PkceCodeChallenge,
    PkceCodeVerifier, PostLogoutRedirectUrl, ProviderMetadataWithLogout, RedirectUrl, RefreshToken,
    Scope, StandardErrorResponse, StandardTokenResponse, TokenResponse,
};
use url::Url;

pub use self::claims::{ExtraClaims, string_list};
pub use self::http::{ProviderHttp, ProviderHttpError};
pub use self::keys::{GateJsonWebKey, GateKeySet};
pub use self::logout::{BACKCHANNEL_LOGOUT_EVENT, LogoutTarget, MAX_AGE as LOGOUT_TOKEN_MAX_AGE};
use crate::config::OidcSettings;
use crate::errors::error_chain;
use crate::identity::{Identity, Renewal, Tokens};

type GateIdTokenFields = IdTokenFields<
    ExtraClaims,
    EmptyExtraTokenFields,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
type GateTokenResponse = StandardTokenResponse<GateIdTokenFields, CoreTokenType>;
type GateIdToken = IdToken<
    ExtraClaims,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
type GateVerifier = IdTokenVerifier<'static, GateJsonWebKey>;
/// The openidconnect client with the endpoints discovery gives us.
type GateClient = Client<
    ExtraClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    GateTokenResponse,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// The outcome of the latest liveness probe, and its number (1 for the first).
struct ProbeOutcome {
    number: u64,
    result: Result<(), ProviderError>,
}

/// Shortest pause between two key-set fetches caused by an unknown `kid`, so forged
/// tokens cannot make the gateway hammer the provider.
const KEY_REFETCH_INTERVAL: Duration = Duration::from_secs(10);

/// Why the provider could not be used (discovery, keys). Shown to operators.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url} is not a valid document: {reason}")]
    BadDocument { url: String, reason: String },
    #[error(
        "issuer mismatch: the provider calls itself `{discovered}` but oidc.issuer (OIDC_DOMAIN) is `{configured}`; \
         its tokens will carry `{discovered}`, so if this is the right provider set oidc.issuer to exactly that"
    )]
    IssuerMismatch {
        configured: String,
        discovered: String,
    },
    #[error("the provider's metadata has no {0}, which the gateway needs")]
    MissingEndpoint(&'static str),
}

/// Why a login failed. The text is safe to show the person (no secrets).
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("the identity provider is not available: {0}")]
    ProviderUnavailable(#[from] ProviderError),
    #[error("exchanging the authorization code failed: {0}")]
    CodeExchange(String),
    #[error("the provider's answer has no ID token")]
    NoIdToken,
    #[error("the ID token was refused: {0}")]
    IdTokenRefused(String),
    #[error("fetching userinfo failed: {0}")]
    Userinfo(String),
    #[error("the answer does not say it comes from this provider ({0})")]
    WrongIssuer(String),
}

/// The scope that asks for a refresh token.
pub const OFFLINE_ACCESS: &str = "offline_access";

/// How long a login may take between `/oauth2/start` and the callback.
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(600);

/// What `/oauth2/start` must remember until the callback. The gateway keeps none of
/// it: it travels sealed in the browser's login cookie (short field names, since a
/// cookie holds about 4 KiB).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PendingLogin {
    #[serde(rename = "s")]
    pub state: String,
    #[serde(rename = "v")]
    pub pkce_verifier: String,
    #[serde(rename = "n")]
    pub nonce: String,
    #[serde(rename = "r")]
    pub return_to: String,
    /// When the login started, in seconds since the Unix epoch.
    #[serde(rename = "t")]
    pub started_at: u64,
}

impl PendingLogin {
    /// Whether the login took longer than [`LOGIN_TIMEOUT`] (or started in the future).
    pub fn expired(&self) -> bool {
        let now = unix_seconds(SystemTime::now());
        now < self.started_at || now - self.started_at > LOGIN_TIMEOUT.as_secs()
    }
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A finished login.
#[derive(Debug)]
pub struct LoginOutcome {
    pub identity: Identity,
    pub tokens: Tokens,
    /// The provider's session id (`sid`), for back-channel logout.
    pub provider_sid: Option<String>,
}

/// What the provider said when it confirmed a session again.
#[derive(Debug)]
pub struct Confirmed {
    /// The identity as the provider describes it now.
    pub identity: Identity,
    /// New tokens (a refresh); `None` when userinfo confirmed the ones held.
    pub tokens: Option<Tokens>,
}

/// Userinfo claims, with every claim the provider sent.
type UserinfoClaims = openidconnect::UserInfoClaims<ExtraClaims, CoreGenderClaim>;

/// An access token's lifetime when the provider's refresh answer gives none
/// (no `expires_in`, no ID token).
const DEFAULT_ACCESS_TOKEN_LIFETIME: Duration = Duration::from_secs(300);

/// Why a refresh or revalidation did not confirm the session.
#[derive(Debug, thiserror::Error)]
pub enum UpkeepError {
    /// The provider said no (`invalid_grant`, userinfo 401): the session must end.
    #[error("the provider refused: {0}")]
    Refused(String),
    /// No usable answer (down, slow, 5xx): try again later, keep the session.
    #[error("the provider did not answer: {0}")]
    Unavailable(String),
}

/// The provider's metadata and the client built from it.
struct Discovered {
    metadata: ProviderMetadataWithLogout,
    client: GateClient,
    signing_algs: Vec<CoreJwsSigningAlgorithm>,
}

pub struct Provider {
    settings: OidcSettings,
    redirect_url: RedirectUrl,
    groups_claim: String,
    http: ProviderHttp,
    discovered: RwLock<Option<Arc<Discovered>>>,
    /// The provider's signing keys, replaced on rotation (openidconnect's client copies them once).
    keys: RwLock<Option<Arc<GateKeySet>>>,
    /// Serialises discovery and key fetches so a burst of logins makes one request.
    fetch_lock: tokio::sync::Mutex<()>,
    /// The retry schedule while discovery fails, shared by requests and the
    /// background retry ([`Provider::discover_when_due`]).
    discovery_retry: discovery::DiscoveryRetry,
    last_unknown_kid_refetch: Mutex<Option<Instant>>,
    /// The ID-token verifier over the current key set, reused until the set changes:
    /// building one copies the whole key set.
    verifier_cache: Mutex<Option<(Arc<GateKeySet>, Arc<GateVerifier>)>>,
    /// The last liveness probe ([`Provider::probe`]); held while one runs, so that
    /// logins starting meanwhile share it.
    last_probe: tokio::sync::Mutex<ProbeOutcome>,
    /// How many probes have finished (read without waiting for the lock).
    probes_finished: AtomicU64,
    /// The latest discovery document advertised
    /// `authorization_response_iss_parameter_supported` (RFC 9207).
    sends_response_issuer: AtomicBool,
}

impl Provider {
    pub fn new(
        settings: OidcSettings,
        redirect_url: Url,
        groups_claim: String,
        http: ProviderHttp,
    ) -> Self {
        Self {
            settings,
            redirect_url: RedirectUrl::from_url(redirect_url),
            groups_claim,
            http,
            discovered: RwLock::new(None),
            keys: RwLock::new(None),
            fetch_lock: tokio::sync::Mutex::new(()),
            discovery_retry: discovery::DiscoveryRetry::default(),
            last_unknown_kid_refetch: Mutex::new(None),
            verifier_cache: Mutex::new(None),
            last_probe: tokio::sync::Mutex::new(ProbeOutcome {
                number: 0,
                result: Ok(()),
            }),
            probes_finished: AtomicU64::new(0),
            sends_response_issuer: AtomicBool::new(false),
        }
    }

    pub fn discovery_url(&self) -> String {
        format!(
            "{}/.well-known/openid-configuration",
            self.settings.issuer.trim_end_matches('/')
        )
    }

    /// True once metadata and keys have been loaded.
    pub fn is_ready(&self) -> bool {
        self.discovered.read().unwrap().is_some() && self.keys.read().unwrap().is_some()
    }

    /// The discovery document's body, if the provider serves it (200).
    async fn get_discovery_document(&self) -> Result<Vec<u8>, ProviderError> {
        let url = self.discovery_url();
        let request = ::http::Request::get(&url)
            .header(::http::header::ACCEPT, "application/json")
            .body(Vec::new())
            .map_err(|e| ProviderError::BadDocument {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let response = self
            .http
            .send(request)
            .await
            .map_err(|e| ProviderError::Unreachable {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        if response.status() != ::http::StatusCode::OK {
            return Err(ProviderError::Status {
                url,
                status: response.status().as_u16(),
            });
        }
        Ok(response.into_body())
    }

    /// Fetches and checks the discovery document.
    pub async fn fetch_metadata(&self) -> Result<ProviderMetadataWithLogout, ProviderError> {
        let url = self.discovery_url();
        let body = self.get_discovery_document().await?;
        let metadata: ProviderMetadataWithLogout =
            serde_json::from_slice(&body).map_err(|e| ProviderError::BadDocument {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let discovered = metadata.issuer().as_str();
        if discovered != self.settings.issuer {
            return Err(ProviderError::IssuerMismatch {
                configured: self.settings.issuer.clone(),
                discovered: discovered.to_owned(),
            });
        }
        if metadata.token_endpoint().is_none() {
            return Err(ProviderError::MissingEndpoint("token_endpoint"));
        }
        self.sends_response_issuer
            .store(advertises_response_issuer(&body), Ordering::Relaxed);
        Ok(metadata)
    }

    /// Fetches the provider's signing keys (RSA keys parsed here, once per key set).
    pub async fn fetch_keys(
        &self,
        metadata: &ProviderMetadataWithLogout,
    ) -> Result<GateKeySet, ProviderError> {
        let url = metadata.jwks_uri();
        JsonWebKeySet::fetch_async(url, &self.http)
            .await
            .map_err(|e| ProviderError::Unreachable {
                url: url.to_string(),
                reason: error_chain(&e),
            })
    }

    /// Loads metadata and keys (again). Called at start, by the retry loop while the
    /// provider is down, and lazily by a login that finds nothing loaded.
    pub async fn discover(&self) -> Result<(), ProviderError> {
        let _guard = self.fetch_lock.lock().await;
        self.discover_locked().await
    }

    /// Discovery when the shared retry schedule allows it (see [`discovery`]): for
    /// requests that need the metadata and for the background retry. One attempt at a
    /// time, whose outcome the callers waiting for it share; before the next attempt
    /// is due, the last failure.
    pub async fn discover_when_due(&self) -> Result<(), ProviderError> {
        let arrival = self.discovery_retry.arrival();
        let _guard = self.fetch_lock.lock().await;
        if self.is_ready() {
            return Ok(());
        }
        if let Some(error) = self.discovery_retry.instead_of_attempt(arrival) {
            return Err(error);
        }
        self.discover_locked().await
    }

    /// When [`Provider::discover_when_due`] will next make an attempt; `None` while
    /// no attempt has failed.
    pub fn next_discovery_attempt(&self) -> Option<Instant> {
        self.discovery_retry.next_attempt()
    }

    /// One discovery attempt (metadata, then keys), recorded in the retry schedule.
    /// The caller holds `fetch_lock`.
    async fn discover_locked(&self) -> Result<(), ProviderError> {
        let result = async {
            let metadata = self.fetch_metadata().await?;
            let keys = self.fetch_keys(&metadata).await?;
            self.install(metadata, keys);
            Ok(())
        }
        .await;
        self.discovery_retry.record(&result);
        result
    }

    /// Makes sure the provider answers before a person is sent there, so that one
    /// that has just gone down gives a clear 503 here instead of a browser error page
    /// there. Every login start asks, at the time it arrives; starts that arrive
    /// while a probe runs share its answer (one discovery request however many
    /// logins start at once).
    async fn probe(&self) -> Result<(), ProviderError> {
        let arrived_after = self.probes_finished.load(Ordering::Acquire);
        let mut last = self.last_probe.lock().await;
        if last.number > arrived_after {
            return last.result.clone();
        }
        let result = self.answers().await;
        last.number += 1;
        last.result = result.clone();
        self.probes_finished.store(last.number, Ordering::Release);
        result
    }

    /// Whether the discovery document is served now (nothing parsed).
    async fn answers(&self) -> Result<(), ProviderError> {
        self.get_discovery_document().await.map(drop)
    }

    fn install(&self, metadata: ProviderMetadataWithLogout, keys: GateKeySet) {
        let signing_algs = metadata
            .id_token_signing_alg_values_supported()
            .iter()
            .filter(|alg| is_asymmetric(alg))
            .cloned()
            .collect();
        let client = Client::from_provider_metadata(
            metadata.clone(),
            ClientId::new(self.settings.client_id.clone()),
            Some(ClientSecret::new(self.settings.client_secret.clone())),
        )
        .set_redirect_uri(self.redirect_url.clone());
        *self.discovered.write().unwrap() = Some(Arc::new(Discovered {
            metadata,
            client,
            signing_algs,
        }));
        *self.keys.write().unwrap() = Some(Arc::new(keys));
    }

    async fn ready(&self) -> Result<Arc<Discovered>, ProviderError> {
        if let Some(discovered) = self.discovered.read().unwrap().clone() {
            return Ok(discovered);
        }
        self.discover_when_due().await?;
        Ok(self
            .discovered
            .read()
            .unwrap()
            .clone()
            .expect("installed by discover"))
    }

    /// The provider's authorization URL for a new login, and what to remember.
    pub async fn begin_login(
        &self,
        return_to: String,
    ) -> Result<(Url, PendingLogin), ProviderError> {
        let discovered = self.ready().await?;
        self.probe().await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = discovered.client.authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        );
        // openidconnect adds `openid` itself.
        for scope in self.settings.scopes.iter().filter(|s| *s != "openid") {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        // OpenID Connect Core 11: a provider may ignore `offline_access` unless the
        // request asks for consent, and oidc-provider (so Encvoy ID) always does: no
        // refresh token would ever arrive.
        if self.settings.scopes.iter().any(|s| s == OFFLINE_ACCESS) {
            request = request.add_prompt(CoreAuthPrompt::Consent);
        }
        let (url, state, nonce) = request.set_pkce_challenge(challenge).url();
        let pending = PendingLogin {
            state: state.secret().clone(),
            pkce_verifier: verifier.secret().clone(),
            nonce: nonce.secret().clone(),
            return_to,
            started_at: unix_seconds(SystemTime::now()),
        };
        Ok((url, pending))
    }

    /// RFC 9207: the `iss` of an authorization response (success or error) must be
    /// this provider's issuer exactly when it is present, and must be present when
    /// the provider advertises `authorization_response_iss_parameter_supported`; so a
    /// response another provider produced (a mix-up attack) is refused.
    pub async fn check_response_issuer(&self, iss: Option<&str>) -> Result<(), LoginError> {
        self.ready().await?; // what the provider advertises is known from here on
        match iss {
            Some(iss) if iss == self.settings.issuer => Ok(()),
            Some(_) => Err(LoginError::WrongIssuer(
                "its `iss` names another issuer".into(),
            )),
            None if self.sends_response_issuer.load(Ordering::Relaxed) => Err(
                LoginError::WrongIssuer("it has no `iss`, which this provider always sends".into()),
            ),
            None => Ok(()),
        }
    }

    /// Exchanges the code, verifies the ID token, fetches userinfo.
    pub async fn complete_login(
        &self,
        code: String,
        pending: &PendingLogin,
    ) -> Result<LoginOutcome, LoginError> {
        let discovered = self.ready().await?;
        let response = discovered
            .client
            .exchange_code(AuthorizationCode::new(code))
            .map_err(|e| LoginError::CodeExchange(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(pending.pkce_verifier.clone()))
            .request_async(&self.http)
            .await
            .map_err(|e| LoginError::CodeExchange(error_chain(&e)))?;
        let id_token = response.id_token().ok_or(LoginError::NoIdToken)?;
        let nonce = Nonce::new(pending.nonce.clone());
        let claims = self.verify_id_token(&discovered, id_token, &nonce).await?;
        let tokens = tokens_from(&response, &claims);
        let userinfo = self
            .userinfo(&discovered, response.access_token(), claims.subject())
            .await?;
        Ok(LoginOutcome {
            identity: claims::identity(&claims, userinfo.as_ref(), &self.groups_claim),
            provider_sid: claims
                .additional_claims()
                .all
                .get("sid")
                .and_then(|v| v.as_str())
                .map(str::to_owned),
            tokens,
        })
    }

    /// Verifies an ID token exactly as a login does (signature against the
    /// provider's keys, `iss`, `aud`, `azp`, `exp`, `iat`, `nonce`) and reads the
    /// identity from it, without the code exchange around it. (Public for the
    /// hot-path benchmark.)
    pub async fn verify_login_id_token(
        &self,
        id_token: &str,
        nonce: &str,
    ) -> Result<Identity, LoginError> {
        let discovered = self.ready().await?;
        let id_token = GateIdToken::from_str(id_token)
            .map_err(|e| LoginError::IdTokenRefused(e.to_string()))?;
        let nonce = Nonce::new(nonce.to_owned());
        let claims = self.verify_id_token(&discovered, &id_token, &nonce).await?;
        Ok(claims::identity(&claims, None, &self.groups_claim))
    }

    /// Exchanges a refresh token for new tokens, and reads the identity again from
    /// the refreshed ID token (verified like the first one, for the same `sub`, with
    /// no nonce) and userinfo, so a change at the provider (a permission removed)
    /// takes effect now rather than at the next login.
    pub async fn refresh(
        &self,
        refresh_token: &str,
        identity: &Identity,
        previous: &Tokens,
    ) -> Result<Confirmed, UpkeepError> {
        let discovered = self
            .ready()
            .await
            .map_err(|e| UpkeepError::Unavailable(e.to_string()))?;
        let refresh_token = RefreshToken::new(refresh_token.to_owned());
        let response = discovered
            .client
            .exchange_refresh_token(&refresh_token)
            .map_err(|e| UpkeepError::Refused(e.to_string()))?
            .request_async(&self.http)
            .await
            .map_err(classify_token_error)?;
        // A provider that does not rotate refresh tokens answers without one: the
        // old one goes on.
        let renewal = match response.refresh_token() {
            Some(rotated) => Renewal::RefreshToken(rotated.secret().as_str().into()),
            None => previous.renewal.clone(),
        };
        let claims = match response.id_token() {
            None => None,
            Some(id_token) => {
                let any_nonce = |_: Option<&Nonce>| Ok(());
                let claims = self
                    .verify_id_token(&discovered, id_token, any_nonce)
                    .await
                    .map_err(|e| UpkeepError::Refused(e.to_string()))?;
                if claims.subject().as_str() != &*identity.sub {
                    return Err(UpkeepError::Refused(
                        "the refreshed ID token is for another subject".into(),
                    ));
                }
                Some(claims)
            }
        };
        let tokens = match &claims {
            Some(claims) => Tokens {
                renewal,
                ..tokens_from(&response, claims)
            },
            None => Tokens {
                renewal,
                issued_at: SystemTime::now(),
                expires_at: SystemTime::now()
                    + response
                        .expires_in()
                        .unwrap_or(DEFAULT_ACCESS_TOKEN_LIFETIME),
            },
        };
        // The refresh went through: its (rotated) tokens must be kept whatever
        // userinfo says now, or the next refresh would present a used token.
        let userinfo = match self
            .ask_userinfo(&discovered, response.access_token(), &identity.sub)
            .await
        {
            Ok(userinfo) => userinfo,
            Err(UpkeepError::Unavailable(reason)) => {
                tracing::warn!(sub = %identity.sub, %reason, "userinfo after a refresh failed; the identity comes from the refreshed ID token alone");
                None
            }
            Err(refused) => return Err(refused),
        };
        Ok(Confirmed {
            identity: claims::confirmed_identity(
                identity,
                claims.as_ref(),
                userinfo.as_ref(),
                &self.groups_claim,
            ),
            tokens: Some(tokens),
        })
    }

    /// Asks the userinfo endpoint whether the access token still works, and reads
    /// the claims it carries into the identity.
    pub async fn check_access_token(
        &self,
        access_token: &str,
        identity: &Identity,
    ) -> Result<Confirmed, UpkeepError> {
        let discovered = self
            .ready()
            .await
            .map_err(|e| UpkeepError::Unavailable(e.to_string()))?;
        let access_token = AccessToken::new(access_token.to_owned());
        let userinfo = self
            .ask_userinfo(&discovered, &access_token, &identity.sub)
            .await?;
        Ok(Confirmed {
            identity: claims::confirmed_identity(
                identity,
                None,
                userinfo.as_ref(),
                &self.groups_claim,
            ),
            tokens: None,
        })
    }

    /// Userinfo for a session's upkeep: `None` when the provider has no userinfo
    /// endpoint; a 4xx or claims for another subject is a refusal.
    async fn ask_userinfo(
        &self,
        discovered: &Discovered,
        access_token: &AccessToken,
        sub: &str,
    ) -> Result<Option<UserinfoClaims>, UpkeepError> {
        let subject = openidconnect::SubjectIdentifier::new(sub.to_owned());
        let Ok(request) = discovered
            .client
            .user_info(access_token.clone(), Some(subject))
        else {
            return Ok(None); // no userinfo endpoint: nothing to ask
        };
        match request.request_async(&self.http).await {
            Ok(claims) => Ok(Some(claims)),
            Err(openidconnect::UserInfoError::Response(status, _, _))
                if status.is_client_error() =>
            {
                Err(UpkeepError::Refused(format!(
                    "userinfo answered HTTP {}",
                    status.as_u16()
                )))
            }
            Err(openidconnect::UserInfoError::ClaimsVerification(e)) => {
                Err(UpkeepError::Refused(e.to_string()))
            }
            Err(e) => Err(UpkeepError::Unavailable(error_chain(&e))),
        }
    }

    async fn verify_id_token(
        &self,
        discovered: &Discovered,
        id_token: &GateIdToken,
        nonce: impl openidconnect::NonceVerifier + Copy,
    ) -> Result<openidconnect::IdTokenClaims<ExtraClaims, CoreGenderClaim>, LoginError> {
        let first = id_token.claims(&*self.verifier(discovered), nonce).cloned();
        let unknown_key = matches!(
            first,
            Err(
                openidconnect::ClaimsVerificationError::SignatureVerification(
                    openidconnect::SignatureVerificationError::NoMatchingKey
                )
            )
        );
        let claims = if unknown_key && self.refetch_keys_for_unknown_kid(discovered).await {
            id_token.claims(&*self.verifier(discovered), nonce).cloned()
        } else {
            first
        }
        .map_err(|e| LoginError::IdTokenRefused(e.to_string()))?;
        self.check_authorized_party(&claims)?;
        Ok(claims)
    }

    /// OIDC Core 3.1.3.7 steps 4 and 5, which openidconnect leaves out: with several
    /// audiences `azp` must be present, and when present it must be our client id.
    fn check_authorized_party(
        &self,
        claims: &openidconnect::IdTokenClaims<ExtraClaims, CoreGenderClaim>,
    ) -> Result<(), LoginError> {
        let client_id = self.settings.client_id.as_str();
        match claims.authorized_party() {
            Some(azp) if azp.as_str() != client_id => Err(LoginError::IdTokenRefused(format!(
                "Invalid authorized party: `azp` is `{}`, not this client `{client_id}`",
                azp.as_str()
            ))),
            None if claims.audiences().len() > 1 => Err(LoginError::IdTokenRefused(
                "Invalid authorized party: several audiences but no `azp`".into(),
            )),
            _ => Ok(()),
        }
    }

    /// The ID-token verifier over the current key set: issuer, audience, `azp`,
    /// expiry and `iat` with the configured clock skew, algorithms from discovery
    /// (asymmetric only; `none` and HMAC are never accepted).
    fn verifier(&self, discovered: &Discovered) -> Arc<GateVerifier> {
        let keys = self.keys.read().unwrap().clone();
        let mut cache = self.verifier_cache.lock().unwrap();
        if let (Some(keys), Some((cached_keys, verifier))) = (&keys, cache.as_ref())
            && Arc::ptr_eq(keys, cached_keys)
        {
            return verifier.clone();
        }
        let skew = chrono::Duration::from_std(self.settings.clock_skew).unwrap_or_default();
        let verifier = Arc::new(
            IdTokenVerifier::new_confidential_client(
                ClientId::new(self.settings.client_id.clone()),
                ClientSecret::new(self.settings.client_secret.clone()),
                discovered.metadata.issuer().clone(),
                keys.as_deref()
                    .cloned()
                    .unwrap_or_else(|| JsonWebKeySet::new(Vec::new())),
            )
            .set_allowed_algs(discovered.signing_algs.clone())
            .set_time_fn(move || chrono::Utc::now() - skew)
            .set_issue_time_verifier_fn(move |iat| {
                if iat > chrono::Utc::now() + skew {
                    Err(format!("issued in the future ({iat})"))
                } else {
                    Ok(())
                }
            }),
        );
        if let Some(keys) = keys {
            *cache = Some((keys, verifier.clone()));
        }
        verifier
    }

    /// Refetches the key set after a token named an unknown `kid`, at most once per
    /// [`KEY_REFETCH_INTERVAL`]. Returns true when a new set was installed.
    async fn refetch_keys_for_unknown_kid(&self, discovered: &Discovered) -> bool {
        {
            let mut last = self.last_unknown_kid_refetch.lock().unwrap();
            if last.is_some_and(|t| t.elapsed() < KEY_REFETCH_INTERVAL) {
                tracing::warn!(
                    "ID token names an unknown signing key; key set refetched too recently to try again"
                );
                return false;
            }
            *last = Some(Instant::now());
        }
        match self.fetch_keys(&discovered.metadata).await {
            Ok(keys) => {
                tracing::info!(
                    keys = keys.keys().len(),
                    "provider signing keys refetched after an unknown kid"
                );
                *self.keys.write().unwrap() = Some(Arc::new(keys));
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "refetching provider signing keys failed");
                false
            }
        }
    }

    async fn userinfo(
        &self,
        discovered: &Discovered,
        access_token: &AccessToken,
        subject: &openidconnect::SubjectIdentifier,
    ) -> Result<Option<openidconnect::UserInfoClaims<ExtraClaims, CoreGenderClaim>>, LoginError>
    {
        let Ok(request) = discovered
            .client
            .user_info(access_token.clone(), Some(subject.clone()))
        else {
            return Ok(None); // the provider has no userinfo endpoint
        };
        request
            .request_async(&self.http)
            .await
            .map(Some)
            .map_err(|e| LoginError::Userinfo(error_chain(&e)))
    }

    /// The provider's end-session URL with `client_id` and the post-logout redirect,
    /// or `None` when the provider has no `end_session_endpoint`. No `id_token_hint`:
    /// sessions do not keep the ID token (see [`Tokens`]).
    pub fn end_session_url(&self, post_logout_redirect: Url) -> Option<Url> {
        let discovered = self.discovered.read().unwrap().clone()?;
        let endpoint = discovered
            .metadata
            .additional_metadata()
            .end_session_endpoint
            .clone()?;
        let request = LogoutRequest::from(endpoint)
            .set_client_id(ClientId::new(self.settings.client_id.clone()))
            .set_post_logout_redirect_uri(PostLogoutRedirectUrl::from_url(post_logout_redirect));
        Some(request.http_get_url())
    }
}

/// The tokens of a token-endpoint answer whose ID token has been verified.
fn tokens_from(
    response: &GateTokenResponse,
    claims: &openidconnect::IdTokenClaims<ExtraClaims, CoreGenderClaim>,
) -> Tokens {
    let id_token_expiry: SystemTime = claims.expiration().into();
    let renewal = match response.refresh_token() {
        Some(refresh_token) => Renewal::RefreshToken(refresh_token.secret().as_str().into()),
        None => Renewal::AccessToken(response.access_token().secret().as_str().into()),
    };
    Tokens {
        renewal,
        issued_at: SystemTime::now(),
        expires_at: response
            .expires_in()
            .map_or(id_token_expiry, |d| SystemTime::now() + d),
    }
}

/// A refusal (`invalid_grant` and friends) ends the session; anything else (a 5xx, a
/// timeout, a refused connection, an unparseable answer) is worth another try later.
fn classify_token_error<E: std::error::Error + 'static>(
    error: openidconnect::RequestTokenError<E, StandardErrorResponse<CoreErrorResponseType>>,
) -> UpkeepError {
    use openidconnect::core::CoreErrorResponseType as Code;
    match &error {
        openidconnect::RequestTokenError::ServerResponse(response)
            if matches!(
                response.error(),
                Code::InvalidGrant
                    | Code::InvalidClient
                    | Code::UnauthorizedClient
                    | Code::UnsupportedGrantType
            ) =>
        {
            UpkeepError::Refused(error_chain(&error))
        }
        _ => UpkeepError::Unavailable(error_chain(&error)),
    }
}

/// Whether a discovery document says `authorization_response_iss_parameter_supported:
/// true` (or `"true"`, as some providers write booleans).
fn advertises_response_issuer(document: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Rfc9207 {
        authorization_response_iss_parameter_supported: Option<serde_json::Value>,
    }
    serde_json::from_slice::<Rfc9207>(document).is_ok_and(|doc| {
        matches!(
            doc.authorization_response_iss_parameter_supported,
            Some(serde_json::Value::Bool(true))
        ) || doc
            .authorization_response_iss_parameter_supported
            .as_ref()
            .and_then(serde_json::Value::as_str)
            == Some("true")
    })
}

fn is_asymmetric(alg: &CoreJwsSigningAlgorithm) -> bool {
    use CoreJwsSigningAlgorithm as A;
    matches!(
        alg,
        A::RsaSsaPkcs1V15Sha256
            | A::RsaSsaPkcs1V15Sha384
            | A::RsaSsaPkcs1V15Sha512
            | A::RsaSsaPssSha256
            | A::RsaSsaPssSha384
            | A::RsaSsaPssSha512
            | A::EcdsaP256Sha256
            | A::EcdsaP384Sha384
            | A::EdDsa
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(seconds_ago: i64) -> PendingLogin {
        let now = unix_seconds(SystemTime::now()) as i64;
        PendingLogin {
            state: "s".into(),
            pkce_verifier: "v".into(),
            nonce: "n".into(),
            return_to: "https://sentry.example.com/".into(),
            started_at: (now - seconds_ago) as u64,
        }
    }

    #[test]
    fn a_login_expires_after_its_timeout_by_its_sealed_start_time() {
        let timeout = LOGIN_TIMEOUT.as_secs() as i64;
        assert!(!started(0).expired());
        assert!(!started(timeout - 5).expired());
        assert!(started(timeout + 5).expired());
        assert!(started(-60).expired(), "a start in the future is no start");
    }

    #[test]
    fn the_response_issuer_requirement_is_read_from_discovery() {
        for (document, advertised) in [
            (
                r#"{"authorization_response_iss_parameter_supported": true}"#,
                true,
            ),
            (
                r#"{"authorization_response_iss_parameter_supported": "true"}"#,
                true,
            ),
            (
                r#"{"authorization_response_iss_parameter_supported": false}"#,
                false,
            ),
            (
                r#"{"authorization_response_iss_parameter_supported": 1}"#,
                false,
            ),
            (r#"{"issuer": "https://id.example.com"}"#, false),
            ("not json", false),
        ] {
            assert_eq!(
                advertises_response_issuer(document.as_bytes()),
                advertised,
                "{document}"
            );
        }
    }

    #[test]
    fn a_pending_login_travels_as_compact_json() {
        let pending = started(0);
        let text = serde_json::to_string(&pending).unwrap();
        assert!(text.starts_with("{\"s\":\"s\",\"v\":\"v\""), "{text}");
        assert_eq!(
            serde_json::from_str::<PendingLogin>(&text).unwrap(),
            pending
        );
    }
}
