//! Sessions: who is signed in, kept server-side, found through an encrypted cookie.
//!
//! The cookie carries only a random 256-bit session id, sealed with AES-256-GCM by the
//! cookie crate's private jar ([`CookieCodec`]); the identity lives in the
//! [`SessionStore`]. A login always creates a new id (no fixation). This module never
//! puts tokens or claims in a cookie.

mod cookies;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use moka::future::Cache;
use moka::policy::EvictionPolicy;
use rand::RngCore;

pub use cookies::CookieCodec;

use crate::config::SessionSettings;

/// The signed-in person, as the provider described them.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Identity {
    pub issuer: String,
    pub sub: String,
    pub email: Option<String>,
    pub email_verified: bool,
    /// `preferred_username`, else Encvoy ID's `login`.
    pub preferred_username: Option<String>,
    pub name: Option<String>,
    /// Values of the configured groups claim (Encvoy ID: `permissions`).
    pub groups: Vec<String>,
}

/// One signed-in browser.
#[derive(Debug)]
pub struct Session {
    pub identity: Identity,
    /// The provider's session id (`sid`), matched by back-channel logout.
    pub provider_sid: Option<String>,
    pub created_at: SystemTime,
    /// The tokens and their upkeep. Held while a refresh or revalidation runs, so
    /// there is one at a time per session however many requests arrive (single flight).
    pub upkeep: tokio::sync::Mutex<Upkeep>,
}

impl Session {
    pub fn new(identity: Identity, provider_sid: Option<String>, tokens: Tokens) -> Self {
        Self {
            identity,
            provider_sid,
            created_at: SystemTime::now(),
            upkeep: tokio::sync::Mutex::new(Upkeep {
                tokens,
                validated_at: Instant::now(),
                retry_at: None,
                failures: 0,
            }),
        }
    }
}

/// The tokens a login or a refresh gave.
#[derive(Clone, Debug)]
pub struct Tokens {
    /// The raw ID token, kept for `id_token_hint` at sign-out.
    pub id_token: String,
    pub access_token: String,
    /// Only when the provider issued one (Encvoy ID: with `offline_access`).
    pub refresh_token: Option<String>,
    /// When these tokens were obtained.
    pub issued_at: SystemTime,
    /// When the access token expires (`expires_in`, else the ID token's `exp`).
    pub expires_at: SystemTime,
}

impl Tokens {
    /// True when the access token expires within `ahead`, or within half its
    /// lifetime for tokens that live shorter than `2 * ahead`.
    pub fn expiring(&self, ahead: Duration) -> bool {
        let lifetime = self
            .expires_at
            .duration_since(self.issued_at)
            .unwrap_or_default();
        SystemTime::now() + ahead.min(lifetime / 2) >= self.expires_at
    }
}

/// What keeping a session in step with the provider needs to remember.
#[derive(Debug)]
pub struct Upkeep {
    pub tokens: Tokens,
    /// When the provider last confirmed the session (login, refresh, userinfo).
    pub validated_at: Instant,
    /// After the provider could not be reached: no new attempt before this.
    pub retry_at: Option<Instant>,
    pub failures: u32,
}

/// A fresh random session id: 32 bytes from the OS generator, base64url.
pub fn new_session_id() -> String {
    random_token()
}

/// A new session secret for the config: 48 random bytes, base64url (64 characters).
pub fn new_secret() -> String {
    let mut bytes = [0u8; 48];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// 32 random bytes, base64url without padding (43 characters).
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// In-memory sessions with a cap, an absolute lifetime and an idle timeout.
///
/// When full, the least recently used session is evicted (moka's default TinyLFU
/// admission would instead refuse new logins once the cache is full).
#[derive(Clone)]
pub struct SessionStore {
    sessions: Cache<String, Arc<Session>>,
}

impl SessionStore {
    pub fn new(settings: &SessionSettings) -> Self {
        let sessions = Cache::builder()
            .max_capacity(settings.max_sessions)
            .eviction_policy(EvictionPolicy::lru())
            .time_to_live(settings.lifetime)
            .time_to_idle(settings.idle_timeout)
            .build();
        Self { sessions }
    }

    pub async fn insert(&self, id: String, session: Session) {
        self.sessions.insert(id, Arc::new(session)).await;
    }

    /// The live session for `id`; a read counts as activity for the idle timeout.
    pub async fn get(&self, id: &str) -> Option<Arc<Session>> {
        self.sessions.get(id).await
    }

    pub async fn remove(&self, id: &str) -> Option<Arc<Session>> {
        self.sessions.remove(id).await
    }

    /// Ends every session `doomed` selects (back-channel logout); returns how many.
    pub async fn remove_where(&self, doomed: impl Fn(&Session) -> bool) -> usize {
        let ids: Vec<Arc<String>> = self
            .sessions
            .iter()
            .filter(|(_, session)| doomed(session))
            .map(|(id, _)| id)
            .collect();
        for id in &ids {
            self.sessions.invalidate(id.as_str()).await;
        }
        ids.len()
    }

    /// Runs moka's pending housekeeping (evictions, counts) now.
    pub async fn sync(&self) {
        self.sessions.run_pending_tasks().await;
    }

    /// Approximate number of live sessions (exact after [`SessionStore::sync`]).
    pub fn len(&self) -> u64 {
        self.sessions.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How long a login may take between `/oauth2/start` and the callback.
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(600);

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(lifetime_ms: u64, idle_ms: u64, max: u64) -> SessionSettings {
        SessionSettings {
            cookie_name: "_t".into(),
            secrets: vec!["x".repeat(32)],
            lifetime: Duration::from_millis(lifetime_ms),
            idle_timeout: Duration::from_millis(idle_ms),
            max_sessions: max,
            revalidate_every: None,
        }
    }

    fn session(sub: &str) -> Session {
        let identity = Identity {
            issuer: "https://id".into(),
            sub: sub.into(),
            email: None,
            email_verified: false,
            preferred_username: None,
            name: None,
            groups: vec![],
        };
        let tokens = Tokens {
            id_token: String::new(),
            access_token: String::new(),
            refresh_token: None,
            issued_at: SystemTime::now(),
            expires_at: SystemTime::now(),
        };
        Session::new(identity, Some(format!("sid-{sub}")), tokens)
    }

    #[test]
    fn session_ids_are_unique_and_256_bit() {
        let a = new_session_id();
        assert_eq!(URL_SAFE_NO_PAD.decode(&a).unwrap().len(), 32);
        assert_ne!(a, new_session_id());
    }

    #[tokio::test]
    async fn full_store_evicts_the_least_recently_used_session() {
        let store = SessionStore::new(&settings(60_000, 60_000, 2));
        store.insert("a".into(), session("a")).await;
        store.insert("b".into(), session("b")).await;
        store.sessions.run_pending_tasks().await;
        assert!(store.get("a").await.is_some());
        store.insert("c".into(), session("c")).await;
        store.sessions.run_pending_tasks().await;
        assert!(
            store.get("c").await.is_some(),
            "a new login must be admitted"
        );
        assert!(store.get("a").await.is_some());
        assert!(store.get("b").await.is_none(), "b was least recently used");
    }

    #[test]
    fn tokens_are_due_for_refresh_ahead_of_expiry() {
        let tokens = |lifetime: Duration, elapsed: Duration| Tokens {
            id_token: String::new(),
            access_token: String::new(),
            refresh_token: None,
            issued_at: SystemTime::now() - elapsed,
            expires_at: SystemTime::now() - elapsed + lifetime,
        };
        let ahead = Duration::from_secs(30);
        assert!(!tokens(Duration::from_secs(1800), Duration::from_secs(60)).expiring(ahead));
        assert!(tokens(Duration::from_secs(1800), Duration::from_secs(1780)).expiring(ahead));
        assert!(
            !tokens(Duration::from_secs(10), Duration::from_secs(2)).expiring(ahead),
            "short-lived: half its life"
        );
        assert!(tokens(Duration::from_secs(10), Duration::from_secs(6)).expiring(ahead));
    }

    #[tokio::test]
    async fn remove_where_ends_only_the_matching_sessions() {
        let store = SessionStore::new(&settings(60_000, 60_000, 10));
        for (id, sub) in [("1", "a"), ("2", "b"), ("3", "a")] {
            store.insert(id.into(), session(sub)).await;
        }
        assert_eq!(store.remove_where(|s| s.identity.sub == "a").await, 2);
        assert!(store.get("1").await.is_none() && store.get("3").await.is_none());
        assert!(store.get("2").await.is_some());
    }
}
