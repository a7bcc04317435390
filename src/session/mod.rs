//! Sessions: who is signed in, kept server-side, found through an encrypted cookie.
//!
//! The cookie carries only a random 256-bit session id, sealed with AES-256-GCM by the
//! cookie crate's private jar ([`CookieCodec`]). A login always creates a new id (no
//! fixation). This module never puts tokens or claims in a cookie. Each serving thread
//! remembers the session cookies it opened lately ([`opened`]), so a browser's next
//! request does not decrypt the same value again.
//!
//! [`SessionStore`] holds the sessions in one of two ways:
//! - `memory`: in this process (moka), bounded, LRU, with lifetime and idle expiry;
//! - `redis`: in Redis, shared by every replica ([`shared`]), with moka in front as a
//!   short-lived local cache that pub/sub invalidations keep honest.
//!
//! Stores are keyed by a hash of the session id ([`SessionKey`]), never the id itself.

mod cookies;
mod opened;
mod shared;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aws_lc_rs::digest;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use moka::future::Cache;
use moka::policy::EvictionPolicy;
use rand::RngCore;

pub use cookies::{CookieCodec, request_cookies};
pub(crate) use shared::SharedStore;
pub use shared::{SharedStoreError, StoreUnavailable};

use crate::config::{SessionSettings, StoreSettings};
use crate::identity::{Identity, Tokens};

/// One signed-in browser.
#[derive(Debug)]
pub struct Session {
    pub identity: Identity,
    /// The provider's session id (`sid`), matched by back-channel logout.
    pub provider_sid: Option<Box<str>>,
    pub created_at: SystemTime,
    /// The tokens and their upkeep. Held while a refresh or revalidation runs, so
    /// there is one at a time per session however many requests arrive (single flight).
    pub upkeep: tokio::sync::Mutex<Upkeep>,
}

impl Session {
    pub fn new(identity: Identity, provider_sid: Option<Box<str>>, tokens: Tokens) -> Self {
        Self {
            identity,
            provider_sid,
            created_at: SystemTime::now(),
            upkeep: tokio::sync::Mutex::new(Upkeep::confirmed_now(tokens)),
        }
    }

    /// The upkeep, locked: at once when nobody holds it (every request asks, and
    /// nobody does but a running refresh), else after those already waiting (tokio's
    /// lock is fair: `try_lock` fails while anyone waits).
    pub async fn lock_upkeep(&self) -> tokio::sync::MutexGuard<'_, Upkeep> {
        match self.upkeep.try_lock() {
            Ok(upkeep) => upkeep,
            Err(_) => self.upkeep.lock().await,
        }
    }

    /// Whether the absolute lifetime has passed.
    pub fn outlived(&self, lifetime: Duration) -> bool {
        self.created_at.elapsed().is_ok_and(|age| age >= lifetime)
    }
}

/// The access line names a session's person by `sub`.
impl crate::observe::SignedIn for Session {
    fn sub(&self) -> &str {
        &self.identity.sub
    }
}

/// What keeping a session in step with the provider needs to remember.
#[derive(Clone, Debug)]
pub struct Upkeep {
    pub tokens: Tokens,
    /// When the provider last confirmed the session (login, refresh, userinfo).
    pub validated_at: SystemTime,
    /// After the provider could not be reached: no new attempt before this.
    pub retry_at: Option<Instant>,
    pub failures: u32,
    /// Whether this replica has already logged (and counted) that the session can no
    /// longer be confirmed: once per session, however many requests it still sends.
    pub unconfirmed_reported: bool,
}

impl Upkeep {
    pub fn confirmed_now(tokens: Tokens) -> Self {
        Self {
            tokens,
            validated_at: SystemTime::now(),
            retry_at: None,
            failures: 0,
            unconfirmed_reported: false,
        }
    }
}

/// What a store files a session under: SHA-256 of the session id. Someone who can
/// read the store learns no id, so cannot build a cookie from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SessionKey([u8; 32]);

impl SessionKey {
    pub fn of(session_id: &str) -> Self {
        Self(hash("ssogate session key", session_id))
    }

    fn text(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    fn from_text(text: &str) -> Option<Self> {
        URL_SAFE_NO_PAD.decode(text).ok()?.try_into().ok().map(Self)
    }
}

/// SHA-256 of a purpose label and a value, so one value gives unrelated hashes for
/// unrelated purposes.
fn hash(purpose: &str, value: &str) -> [u8; 32] {
    let mut context = digest::Context::new(&digest::SHA256);
    context.update(purpose.as_bytes());
    context.update(&[0]);
    context.update(value.as_bytes());
    context
        .finish()
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
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

/// Values remembered as used in the memory store ([`SessionStore::first_use`]), at
/// about 100 bytes each. Only a finished login (a code the provider accepted) or a
/// verified logout token adds one.
const MAX_USED_ONCE: u64 = 100_000;

/// Distinct group lists remembered for sharing (most people have one of a few).
const MAX_GROUP_LISTS: u64 = 10_000;

/// Keeps each used value for the time it was presented with.
struct KeptFor;

impl moka::Expiry<[u8; 32], Duration> for KeptFor {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        ttl: &Duration,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(*ttl)
    }
}

/// Who may run a session's upkeep (refresh, revalidation) now.
pub enum Lease {
    /// Only this replica has the session: its own single flight is enough.
    Local,
    /// This replica holds the shared lease; give it back with [`SessionStore::release`].
    Held(String),
    /// Another replica is at it.
    Busy,
    /// The shared store cannot be reached, so nobody can be sure.
    Unavailable(StoreUnavailable),
}

/// The sessions: in memory, or in Redis with a local cache.
///
/// The memory store is bounded by `max_sessions`; when full, the least recently used
/// session is evicted (moka's default TinyLFU admission would instead refuse new
/// logins once full).
pub struct SessionStore {
    /// Memory store: the sessions themselves. Redis: the local cache of them.
    local: Cache<SessionKey, Arc<Session>>,
    /// Memory store: hashes of values used once, each with its time to be kept
    /// (Redis keeps its own, for every replica).
    used_once: moka::sync::Cache<[u8; 32], Duration>,
    shared: Option<Arc<SharedStore>>,
    lifetime: Duration,
    /// One copy of each group list, shared by the sessions that have it.
    group_lists: GroupLists,
}

/// Keeps one copy of each distinct group list, so a million sessions of people in the
/// same few groups hold a pointer each instead of a million copies.
#[derive(Clone)]
pub(crate) struct GroupLists(moka::sync::Cache<Arc<[String]>, Arc<[String]>>);

impl GroupLists {
    fn new() -> Self {
        Self(moka::sync::Cache::new(MAX_GROUP_LISTS))
    }

    /// The shared copy of `groups` (an equal list remembered before, or this one).
    fn intern(&self, groups: &Arc<[String]>) -> Arc<[String]> {
        self.0.get_with(groups.clone(), || groups.clone())
    }
}

impl SessionStore {
    /// A store as configured. Redis is connected to lazily: a Redis that is down at
    /// startup shows in `/ready` and is retried, it does not stop the gateway.
    pub fn new(settings: &SessionSettings) -> Result<Self, shared::SharedStoreError> {
        // The lifetime is checked on every read (`Session::outlived`), and an entry
        // idle for that long is past it anyway, so the memory store needs no
        // time-to-live: that spares moka a write-order entry per session.
        let mut local = Cache::builder()
            .max_capacity(settings.max_sessions)
            .eviction_policy(EvictionPolicy::lru())
            .time_to_idle(settings.idle_timeout.min(settings.lifetime));
        if let StoreSettings::Redis(redis) = &settings.store {
            local = local.time_to_live(redis.local_cache_ttl);
        }
        let local = local.build();
        let group_lists = GroupLists::new();
        let shared = match &settings.store {
            StoreSettings::Memory => None,
            StoreSettings::Redis(redis) => Some(Arc::new(SharedStore::new(
                redis,
                settings.lifetime,
                settings.idle_timeout,
                local.clone(),
                group_lists.clone(),
            )?)),
        };
        Ok(Self {
            local,
            used_once: moka::sync::Cache::builder()
                .max_capacity(MAX_USED_ONCE)
                .expire_after(KeptFor)
                .build(),
            shared,
            lifetime: settings.lifetime,
            group_lists,
        })
    }

    /// Starts the shared store's background work (health checks, invalidations).
    pub fn start(&self) {
        if let Some(shared) = &self.shared {
            shared.clone().start();
        }
    }

    /// Why the store cannot take new sessions now, if it cannot (for `/ready`).
    pub fn unavailable(&self) -> Option<String> {
        self.shared.as_ref().and_then(|s| s.unavailable())
    }

    /// Why this replica should not get traffic because of its store (`/ready`): see
    /// [`SharedStore::not_ready`].
    pub fn not_ready(&self) -> Option<String> {
        self.shared.as_ref().and_then(|s| s.not_ready())
    }

    /// With Redis Sentinel or Cluster, the topology found (`ssogate check`).
    pub async fn store_topology(&self) -> Option<Result<String, String>> {
        match &self.shared {
            Some(shared) => shared.topology().await,
            None => None,
        }
    }

    pub async fn insert(&self, id: &str, mut session: Session) -> Result<(), StoreUnavailable> {
        let key = SessionKey::of(id);
        session.identity.groups = self.group_lists.intern(&session.identity.groups);
        if let Some(shared) = &self.shared {
            shared.insert(key, id, &session).await?;
        }
        self.local.insert(key, Arc::new(session)).await;
        Ok(())
    }

    /// The live session for `id`; a read counts as activity for the idle timeout.
    /// An error only when the session is not cached here and Redis cannot be asked.
    pub async fn get(&self, id: &str) -> Result<Option<Arc<Session>>, StoreUnavailable> {
        self.get_keyed(id, SessionKey::of(id)).await
    }

    /// [`SessionStore::get`] with the key of `id` at hand
    /// ([`CookieCodec::open_session`]).
    pub async fn get_keyed(
        &self,
        id: &str,
        key: SessionKey,
    ) -> Result<Option<Arc<Session>>, StoreUnavailable> {
        let session = match (self.local.get(&key).await, &self.shared) {
            (Some(session), _) => Some(session),
            (None, None) => None,
            // A miss that Redis may answer: boxed, so that the future of a request
            // that finds its session cached (nearly every request) stays small.
            (None, Some(shared)) => Box::pin(self.load(shared, key, id)).await?,
        };
        match session {
            Some(session) if session.outlived(self.lifetime) => {
                Box::pin(self.remove(id)).await;
                Ok(None)
            }
            other => Ok(other),
        }
    }

    /// A session this replica has not cached, read from Redis (and cached).
    /// Concurrent misses for one session wait for a single read.
    async fn load(
        &self,
        shared: &SharedStore,
        key: SessionKey,
        id: &str,
    ) -> Result<Option<Arc<Session>>, StoreUnavailable> {
        let load = async {
            match shared.load(key, id).await {
                Ok(Some(session)) => Ok(Arc::new(session)),
                Ok(None) => Err(None),
                Err(e) => Err(Some(e)),
            }
        };
        match self.local.try_get_with(key, load).await {
            Ok(session) => Ok(Some(session)),
            Err(error) => match error.as_ref() {
                None => Ok(None),
                Some(unavailable) => Err(unavailable.clone()),
            },
        }
    }

    /// Ends a session everywhere. With Redis down the removal is queued and carried
    /// out when it is back; meanwhile this replica no longer knows the session.
    pub async fn remove(&self, id: &str) {
        let key = SessionKey::of(id);
        self.local.invalidate(&key).await;
        if let Some(shared) = &self.shared {
            shared.remove(key).await;
        }
    }

    /// Ends a session everywhere now, or fails without changing anything (Redis
    /// cannot be reached): unlike [`SessionStore::remove`], nothing is deferred to a
    /// replica's memory, where a restart would lose it.
    pub async fn end(&self, id: &str) -> Result<(), StoreUnavailable> {
        let key = SessionKey::of(id);
        if let Some(shared) = &self.shared {
            shared.end(key).await?;
        }
        self.local.invalidate(&key).await;
        Ok(())
    }

    /// Stores what an upkeep changed (new tokens, a new confirmation time), so other
    /// replicas use it too.
    pub async fn save(&self, id: &str, session: &Session, upkeep: &Upkeep) {
        if let Some(shared) = &self.shared {
            shared.save(SessionKey::of(id), id, session, upkeep).await;
        }
    }

    /// Back-channel logout: ends the sessions of provider session `sid` (and of `sub`,
    /// if given), or else every session of `sub`. Returns how many ended.
    pub async fn end_provider_sessions(
        &self,
        sid: Option<&str>,
        sub: Option<&str>,
    ) -> Result<usize, StoreUnavailable> {
        let matches = |s: &Session| match (sid, sub) {
            (Some(sid), sub) => {
                s.provider_sid.as_deref() == Some(sid)
                    && sub.is_none_or(|sub| sub == &*s.identity.sub)
            }
            (None, Some(sub)) => &*s.identity.sub == sub,
            (None, None) => false,
        };
        let doomed: Vec<Arc<SessionKey>> = self
            .local
            .iter()
            .filter(|(_, session)| matches(session))
            .map(|(key, _)| key)
            .collect();
        for key in &doomed {
            self.local.invalidate(key.as_ref()).await;
        }
        match &self.shared {
            None => Ok(doomed.len()),
            Some(shared) => shared.end_provider_sessions(sid, sub).await,
        }
    }

    /// Asks for the right to run this session's upkeep now (see [`Lease`]).
    pub async fn lease(&self, id: &str) -> Lease {
        match &self.shared {
            None => Lease::Local,
            Some(shared) => shared.lease(SessionKey::of(id)).await,
        }
    }

    pub async fn release(&self, id: &str, lease: Lease) {
        if let (Some(shared), Lease::Held(token)) = (&self.shared, lease) {
            shared.release(SessionKey::of(id), &token).await;
        }
    }

    /// The session as another replica stored it (Redis, not the local cache):
    /// `Ok(None)` when it no longer exists.
    pub async fn stored(&self, id: &str) -> Result<Option<Session>, StoreUnavailable> {
        match &self.shared {
            None => Err(StoreUnavailable("no shared store".into())),
            Some(shared) => shared.load(SessionKey::of(id), id).await,
        }
    }

    /// Puts a session another replica stored in this one's cache, and returns it.
    pub async fn cache(&self, id: &str, mut session: Session) -> Arc<Session> {
        session.identity.groups = self.group_lists.intern(&session.identity.groups);
        let session = Arc::new(session);
        self.local.insert(SessionKey::of(id), session.clone()).await;
        session
    }

    /// Replaces a session whose identity changed at the provider (same id, same
    /// cookie), on every replica. `None` when it was ended meanwhile: a replacement
    /// never brings an ended session back.
    pub async fn replace(&self, id: &str, mut session: Session) -> Option<Arc<Session>> {
        let key = SessionKey::of(id);
        session.identity.groups = self.group_lists.intern(&session.identity.groups);
        if let Some(shared) = &self.shared {
            let upkeep = session.upkeep.lock().await.clone();
            shared.save(key, id, &session, &upkeep).await;
        }
        let session = Arc::new(session);
        let replaced = self
            .local
            .entry(key)
            .and_compute_with(|existing| {
                let op = match existing {
                    Some(_) => moka::ops::compute::Op::Put(session.clone()),
                    None => moka::ops::compute::Op::Nop,
                };
                std::future::ready(op)
            })
            .await;
        match replaced {
            moka::ops::compute::CompResult::ReplacedWith(_) => Some(session),
            // Redis: not cached here any more (an invalidation), the stored copy stands.
            _ if self.shared.is_some() => Some(session),
            _ => None,
        }
    }

    /// The Redis store the replicas share, when `session.store = "redis"`: also what
    /// coordinates their ACME orders.
    pub(crate) fn shared(&self) -> Option<&Arc<SharedStore>> {
        self.shared.as_ref()
    }

    /// Waits until no replica holds this session's lease (at most the lease's life).
    pub async fn await_lease(&self, id: &str) {
        if let Some(shared) = &self.shared {
            shared.await_lease(SessionKey::of(id)).await;
        }
    }

    /// True when [`SessionStore::first_use`] already took `value` for `purpose` (and
    /// has not forgotten it). Only reads: a stranger's request that cannot use a
    /// value must not make the store keep it.
    pub async fn already_used(&self, purpose: &str, value: &str) -> Result<bool, StoreUnavailable> {
        match &self.shared {
            Some(shared) => shared.already_used(purpose, value).await,
            None => Ok(self.used_once.contains_key(&hash(purpose, value))),
        }
    }

    /// True the first time any replica presents `value` for `purpose` within `ttl`
    /// (a logout token's `jti`, a login's `state`).
    pub async fn first_use(
        &self,
        purpose: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<bool, StoreUnavailable> {
        match &self.shared {
            Some(shared) => shared.first_use(purpose, value, ttl).await,
            None => {
                let entry = self.used_once.entry(hash(purpose, value)).or_insert(ttl);
                Ok(entry.is_fresh())
            }
        }
    }

    /// The shared store's server version: proof that it answers and takes our
    /// credentials (`ssogate check`).
    pub async fn server_version(&self) -> Result<String, StoreUnavailable> {
        match &self.shared {
            Some(shared) => shared.server_version().await,
            None => Ok("memory".into()),
        }
    }

    /// Runs moka's pending housekeeping (evictions, counts) now.
    pub async fn sync(&self) {
        self.local.run_pending_tasks().await;
    }

    /// Approximate number of sessions held in this process (exact after
    /// [`SessionStore::sync`]).
    pub fn len(&self) -> u64 {
        self.local.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Renewal;

    fn settings(lifetime_ms: u64, idle_ms: u64, max: u64) -> SessionSettings {
        SessionSettings {
            cookie_name: "_t".into(),
            secrets: vec!["x".repeat(32)],
            lifetime: Duration::from_millis(lifetime_ms),
            idle_timeout: Duration::from_millis(idle_ms),
            max_sessions: max,
            revalidate_every: None,
            expired_token_grace: Duration::ZERO,
            store: StoreSettings::Memory,
        }
    }

    fn session(sub: &str) -> Session {
        let identity = Identity {
            sub: sub.into(),
            email: None,
            email_verified: false,
            preferred_username: None,
            groups: Arc::new([]),
            groups_claim: "groups".into(),
        };
        let tokens = Tokens {
            renewal: Renewal::AccessToken("".into()),
            issued_at: SystemTime::now(),
            expires_at: SystemTime::now(),
        };
        Session::new(identity, Some(format!("sid-{sub}").into()), tokens)
    }

    #[test]
    fn session_ids_are_unique_and_256_bit() {
        let a = new_session_id();
        assert_eq!(URL_SAFE_NO_PAD.decode(&a).unwrap().len(), 32);
        assert_ne!(a, new_session_id());
    }

    #[test]
    fn session_keys_hide_the_id_and_read_back() {
        let id = new_session_id();
        let key = SessionKey::of(&id);
        assert_eq!(key, SessionKey::of(&id));
        assert!(!key.text().contains(&id));
        assert_eq!(SessionKey::from_text(&key.text()), Some(key));
        assert_eq!(SessionKey::from_text("short"), None);
    }

    #[tokio::test]
    async fn full_store_evicts_the_least_recently_used_session() {
        let store = SessionStore::new(&settings(60_000, 60_000, 2)).unwrap();
        store.insert("a", session("a")).await.unwrap();
        store.insert("b", session("b")).await.unwrap();
        store.sync().await;
        assert!(store.get("a").await.unwrap().is_some());
        store.insert("c", session("c")).await.unwrap();
        store.sync().await;
        assert!(
            store.get("c").await.unwrap().is_some(),
            "a new login must be admitted"
        );
        assert!(store.get("a").await.unwrap().is_some());
        assert!(
            store.get("b").await.unwrap().is_none(),
            "b was least recently used"
        );
    }

    #[tokio::test]
    async fn provider_logout_ends_only_the_matching_sessions() {
        let store = SessionStore::new(&settings(60_000, 60_000, 10)).unwrap();
        for (id, sub) in [("1", "a"), ("2", "b"), ("3", "a")] {
            store.insert(id, session(sub)).await.unwrap();
        }
        assert_eq!(
            store.end_provider_sessions(None, Some("a")).await.unwrap(),
            2
        );
        assert!(store.get("1").await.unwrap().is_none());
        assert!(store.get("3").await.unwrap().is_none());
        assert!(store.get("2").await.unwrap().is_some());
        assert_eq!(
            store
                .end_provider_sessions(Some("sid-b"), Some("a"))
                .await
                .unwrap(),
            0,
            "sid and sub must both match"
        );
        assert_eq!(
            store
                .end_provider_sessions(Some("sid-b"), None)
                .await
                .unwrap(),
            1
        );
    }

    #[tokio::test]
    async fn a_value_is_used_once_per_purpose_until_it_is_forgotten() {
        let store = SessionStore::new(&settings(60_000, 60_000, 10)).unwrap();
        let ttl = Duration::from_millis(200);
        assert!(!store.already_used("login", "s").await.unwrap());
        assert!(store.first_use("login", "s", ttl).await.unwrap());
        assert!(store.already_used("login", "s").await.unwrap());
        assert!(!store.first_use("login", "s", ttl).await.unwrap());
        assert!(
            store.first_use("jti", "s", ttl).await.unwrap(),
            "another purpose"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            store.first_use("login", "s", ttl).await.unwrap(),
            "forgotten after its time"
        );
    }
}
