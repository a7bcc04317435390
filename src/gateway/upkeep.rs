//! Keeping a session in step with the provider, before its request goes on: tokens
//! about to expire are refreshed, and with `session.revalidate_every` the provider is
//! asked again whether the session still stands (a refresh when there is a refresh
//! token, else userinfo). Every confirmation reads the identity again (new ID token,
//! userinfo), so the access rules apply to what the provider says now.
//!
//! One upkeep at a time per session (single flight): requests that arrive meanwhile
//! wait for it and then use its result. With Redis, one replica at a time as well: the
//! replica holding the session's lease talks to the provider and stores the result;
//! the others wait for the lease and adopt what was stored. So a rotating refresh
//! token is used once, whichever replicas the requests reach.
//!
//! A refusal ends the session. A provider (or Redis) that cannot be reached does not,
//! at first: the upkeep is retried with back-off. But no session outlives what the
//! provider last vouched for: once its access token has expired without being renewed
//! (no refresh token, or none could be used) and `session.expired_token_grace` has
//! passed, the session is no longer trusted: the person's next page load goes straight
//! through the provider again (no sign-in page; silent while the provider session
//! lives), and API calls get 401, which makes Sentry's UI reload into that page load.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::Gateway;
use crate::identity::Renewal;
use crate::observe::UpkeepOutcome;
use crate::oidc::{Confirmed, UpkeepError};
use crate::session::{Lease, Session, Upkeep};

/// Access tokens are refreshed when they expire within this (or within half their
/// lifetime, for very short-lived ones).
const REFRESH_AHEAD: Duration = Duration::from_secs(30);
/// Longest pause between attempts while the provider cannot be reached.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// A session's standing once its upkeep is done.
pub(super) enum Standing {
    /// Serve the request with this session (the one found, or the one holding the
    /// identity the provider gave now).
    Live(Arc<Session>),
    /// There is none, or the provider ended it (it was removed from the store).
    Ended,
    /// Nothing the provider said vouches for it any more: the person must pass
    /// through the provider again. It stays in the store, refused, until then.
    Unconfirmed,
}

impl Gateway {
    /// Keeps the session in step with the provider (see the module docs).
    pub(super) async fn upkeep(&self, id: &str, session: Arc<Session>) -> Standing {
        let Some(session) = self.confirmed(id, session).await else {
            return Standing::Ended;
        };
        let mut upkeep = session.lock_upkeep().await;
        if !self.unconfirmable(&upkeep) {
            drop(upkeep);
            return Standing::Live(session);
        }
        if !std::mem::replace(&mut upkeep.unconfirmed_reported, true) {
            tracing::info!(
                sub = %session.identity.sub,
                grace = ?self.settings.session.expired_token_grace,
                "session no longer trusted: its access token expired and the provider has not confirmed it since; the next page load passes through the provider"
            );
            self.metrics.upkeep(UpkeepOutcome::Expired);
        }
        Standing::Unconfirmed
    }

    /// Refreshes or revalidates when due; the session to go on with, `None` when the
    /// provider ended it.
    async fn confirmed(&self, id: &str, session: Arc<Session>) -> Option<Arc<Session>> {
        let arrived = SystemTime::now();
        let mut upkeep = session.lock_upkeep().await;
        if upkeep.validated_at >= arrived {
            // Confirmed by the upkeep this request waited for, which may have replaced
            // the session (a new identity) or ended it: ask the store.
            drop(upkeep);
            return match self.sessions.get(id).await {
                Ok(current) => current,
                Err(_) => Some(session),
            };
        }
        let backing_off = upkeep.retry_at.is_some_and(|t| Instant::now() < t);
        if !self.upkeep_due(&upkeep, arrived) || backing_off {
            drop(upkeep);
            return Some(session);
        }
        // Rare (a refresh or revalidation is due), and a large future: boxed, so that
        // the future of every other request stays small.
        Box::pin(self.renew(id, &session, &mut upkeep)).await
    }

    /// Refreshes or revalidates a session whose upkeep is due, holding the store's
    /// lease on it when there is one; the session to go on with, `None` when the
    /// provider ended it.
    async fn renew(
        &self,
        id: &str,
        session: &Arc<Session>,
        upkeep: &mut Upkeep,
    ) -> Option<Arc<Session>> {
        let mut current = session.clone();
        match self.sessions.lease(id).await {
            Lease::Busy => {
                // Another replica is at it: wait, then take what it stored.
                self.sessions.await_lease(id).await;
                match self.sessions.stored(id).await {
                    Ok(Some(stored)) => {
                        current = self.adopt(id, session, upkeep, stored).await;
                    }
                    Ok(None) => return None,
                    Err(_) => {}
                }
            }
            Lease::Unavailable(e) => back_off(upkeep, &session.identity.sub, &e.0),
            lease @ Lease::Held(_) => {
                // Another replica may have finished an upkeep since this one cached
                // the session: start from what is stored.
                match self.sessions.stored(id).await {
                    Ok(Some(stored)) => {
                        current = self.adopt(id, session, upkeep, stored).await;
                    }
                    Ok(None) => {
                        self.sessions.release(id, lease).await;
                        return None;
                    }
                    Err(_) => {}
                }
                let asked = if self.upkeep_due(upkeep, SystemTime::now()) {
                    self.ask_provider(id, &current, upkeep).await
                } else {
                    Some(current)
                };
                self.sessions.release(id, lease).await;
                current = asked?;
            }
            Lease::Local => {
                current = self.ask_provider(id, session, upkeep).await?;
            }
        }
        Some(current)
    }

    /// Whether a refresh or a revalidation is due at `now` (one clock read for both:
    /// this runs on every signed-in request).
    fn upkeep_due(&self, upkeep: &Upkeep, now: SystemTime) -> bool {
        let refresh_due = matches!(upkeep.tokens.renewal, Renewal::RefreshToken(_))
            && upkeep.tokens.expiring(REFRESH_AHEAD, now);
        let revalidation_due = self.settings.session.revalidate_every.is_some_and(|every| {
            now.duration_since(upkeep.validated_at)
                .is_ok_and(|elapsed| elapsed >= every)
        });
        refresh_due || revalidation_due
    }

    /// True when nothing the provider said vouches for the session any more: its
    /// access token expired (and was not renewed) longer than the grace ago.
    fn unconfirmable(&self, upkeep: &Upkeep) -> bool {
        let grace = self.settings.session.expired_token_grace;
        SystemTime::now() >= upkeep.tokens.expires_at + grace
    }

    /// Refreshes or revalidates now, and records the outcome: the session to go on
    /// with, or `None` when the provider ended it.
    async fn ask_provider(
        &self,
        id: &str,
        session: &Arc<Session>,
        upkeep: &mut Upkeep,
    ) -> Option<Arc<Session>> {
        let identity = &session.identity;
        let result = match &upkeep.tokens.renewal {
            Renewal::RefreshToken(refresh_token) => {
                self.provider
                    .refresh(refresh_token, identity, &upkeep.tokens)
                    .await
            }
            // Without a refresh token only a live access token can be asked about.
            Renewal::AccessToken(_) if upkeep.tokens.expires_at <= SystemTime::now() => {
                return Some(session.clone());
            }
            Renewal::AccessToken(access_token) => {
                self.provider
                    .check_access_token(access_token, identity)
                    .await
            }
        };
        let sub = &*identity.sub;
        match result {
            Ok(Confirmed {
                identity: now,
                tokens,
            }) => {
                self.metrics.upkeep(UpkeepOutcome::Confirmed);
                if let Some(tokens) = tokens {
                    upkeep.tokens = tokens;
                }
                upkeep.validated_at = SystemTime::now();
                upkeep.retry_at = None;
                upkeep.failures = 0;
                if now == session.identity {
                    self.sessions.save(id, session, upkeep).await;
                    return Some(session.clone());
                }
                tracing::info!(
                    sub,
                    groups = now.groups.len(),
                    "the provider describes the person differently now; the access rules apply to the new identity"
                );
                let renewed = Session {
                    identity: now,
                    provider_sid: session.provider_sid.clone(),
                    created_at: session.created_at,
                    upkeep: tokio::sync::Mutex::new(upkeep.clone()),
                };
                self.sessions.replace(id, renewed).await
            }
            Err(UpkeepError::Refused(reason)) => {
                tracing::info!(sub, %reason, "the provider ended the session");
                self.metrics.upkeep(UpkeepOutcome::Refused);
                self.sessions.remove(id).await;
                None
            }
            Err(UpkeepError::Unavailable(reason)) => {
                self.metrics.upkeep(UpkeepOutcome::Unavailable);
                back_off(upkeep, sub, &reason);
                Some(session.clone())
            }
        }
    }

    /// Takes over what another replica's upkeep stored, when it is newer: its tokens
    /// (so requests waiting on this copy go on), and its identity when that changed.
    async fn adopt(
        &self,
        id: &str,
        session: &Arc<Session>,
        upkeep: &mut Upkeep,
        stored: Session,
    ) -> Arc<Session> {
        let stored_upkeep = stored.upkeep.lock().await.clone();
        if stored_upkeep.validated_at <= upkeep.validated_at {
            return session.clone();
        }
        *upkeep = Upkeep {
            retry_at: None,
            failures: 0,
            unconfirmed_reported: false,
            ..stored_upkeep
        };
        if stored.identity == session.identity {
            return session.clone();
        }
        self.sessions.cache(id, stored).await
    }
}

/// The upkeep could not be done now: the session goes on, the next try waits.
fn back_off(upkeep: &mut Upkeep, sub: &str, reason: &str) {
    upkeep.failures += 1;
    let pause = Duration::from_secs(1 << upkeep.failures.min(9)).min(MAX_BACKOFF);
    upkeep.retry_at = Some(Instant::now() + pause);
    tracing::warn!(sub, %reason, retry_in = ?pause, "session upkeep failed; the session goes on until its access token expires");
}

/// The decisions above on a gateway with the memory store (its lease is always
/// [`Lease::Local`]) and a provider that is never reached: every case here is decided
/// before the provider would be asked.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use crate::identity::{Identity, Tokens};

    const HOUR: Duration = Duration::from_secs(3600);

    /// A gateway whose provider is never reached here; `session_toml` is added to
    /// `[session]`.
    fn gateway(session_toml: &str) -> Gateway {
        let text = crate::config::tests::minimal() + session_toml;
        Gateway::new(Settings::from_toml(&text, "test.toml", []).unwrap()).unwrap()
    }

    /// Tokens issued `age` ago whose access token lives `lifetime` in all.
    fn tokens(renewal: Renewal, age: Duration, lifetime: Duration) -> Tokens {
        let issued_at = SystemTime::now() - age;
        Tokens {
            renewal,
            issued_at,
            expires_at: issued_at + lifetime,
        }
    }

    fn refresh() -> Renewal {
        Renewal::RefreshToken("rt".into())
    }

    fn access() -> Renewal {
        Renewal::AccessToken("at".into())
    }

    fn session(tokens: Tokens) -> Session {
        let identity = Identity {
            sub: "alice".into(),
            email: None,
            email_verified: false,
            preferred_username: None,
            groups: Arc::from(Vec::new()),
            groups_claim: "groups".into(),
        };
        Session::new(identity, None, tokens)
    }

    #[test]
    fn a_refresh_is_due_only_with_a_refresh_token_about_to_expire() {
        let g = gateway("");
        let due = |renewal, age| {
            g.upkeep_due(
                &Upkeep::confirmed_now(tokens(renewal, age, HOUR)),
                SystemTime::now(),
            )
        };
        assert!(!due(refresh(), Duration::from_secs(60)), "fresh tokens");
        assert!(
            due(refresh(), HOUR - REFRESH_AHEAD + Duration::from_secs(1)),
            "within REFRESH_AHEAD of expiry"
        );
        assert!(due(refresh(), 2 * HOUR), "already expired");
        assert!(
            !due(access(), 2 * HOUR),
            "an access token alone is never refreshed"
        );
    }

    #[test]
    fn a_revalidation_is_due_once_revalidate_every_has_passed() {
        let g = gateway("revalidate_every = \"5m\"");
        let mut upkeep = Upkeep::confirmed_now(tokens(access(), Duration::ZERO, HOUR));
        assert!(!g.upkeep_due(&upkeep, SystemTime::now()), "just confirmed");
        upkeep.validated_at = SystemTime::now() - Duration::from_secs(299);
        assert!(
            !g.upkeep_due(&upkeep, SystemTime::now()),
            "a second before the interval"
        );
        upkeep.validated_at = SystemTime::now() - Duration::from_secs(300);
        assert!(
            g.upkeep_due(&upkeep, SystemTime::now()),
            "the interval has passed"
        );
        // Without `revalidate_every`, the same session is never due.
        assert!(!gateway("").upkeep_due(&upkeep, SystemTime::now()));
    }

    #[test]
    fn a_session_is_unconfirmable_only_after_expiry_plus_grace() {
        let g = gateway("expired_token_grace = \"2m\"");
        let expired = |ago: u64| {
            let mut tokens = tokens(access(), 2 * HOUR, HOUR);
            tokens.expires_at = SystemTime::now() - Duration::from_secs(ago);
            Upkeep::confirmed_now(tokens)
        };
        assert!(!g.unconfirmable(&expired(0)), "just expired");
        assert!(!g.unconfirmable(&expired(119)), "within the grace");
        assert!(g.unconfirmable(&expired(121)), "past the grace");
        let live = Upkeep::confirmed_now(tokens(access(), Duration::ZERO, HOUR));
        assert!(!g.unconfirmable(&live));
    }

    #[test]
    fn back_off_doubles_the_pause_up_to_the_maximum() {
        let mut upkeep = Upkeep::confirmed_now(tokens(refresh(), Duration::ZERO, HOUR));
        let mut pauses = Vec::new();
        for _ in 0..12 {
            let before = Instant::now();
            back_off(&mut upkeep, "alice", "provider down");
            let pause = upkeep.retry_at.unwrap() - before;
            pauses.push(pause.as_secs());
        }
        assert_eq!(upkeep.failures, 12);
        assert_eq!(pauses, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300, 300]);
    }

    #[tokio::test]
    async fn a_live_session_is_served_without_asking_the_provider() {
        let g = gateway("");
        let s = session(tokens(refresh(), Duration::from_secs(60), HOUR));
        g.sessions.insert("id", s).await.unwrap();
        let stored = g.sessions.get("id").await.unwrap().unwrap();
        let before = stored.upkeep.lock().await.validated_at;
        assert!(matches!(
            g.upkeep("id", stored.clone()).await,
            Standing::Live(_)
        ));
        assert_eq!(stored.upkeep.lock().await.validated_at, before);
    }

    #[tokio::test]
    async fn while_backing_off_a_due_refresh_waits() {
        let g = gateway("");
        let s = session(tokens(refresh(), HOUR, HOUR + Duration::from_secs(10)));
        g.sessions.insert("id", s).await.unwrap();
        let stored = g.sessions.get("id").await.unwrap().unwrap();
        stored.upkeep.lock().await.retry_at = Some(Instant::now() + HOUR);
        assert!(matches!(
            g.upkeep("id", stored.clone()).await,
            Standing::Live(_)
        ));
        let upkeep = stored.upkeep.lock().await;
        assert_eq!(upkeep.failures, 0, "the provider was not tried");
    }

    #[tokio::test]
    async fn an_expired_access_token_past_the_grace_is_unconfirmed_not_ended() {
        let g = gateway("revalidate_every = \"1m\"\nexpired_token_grace = \"1m\"");
        let s = session(tokens(access(), 2 * HOUR, HOUR));
        g.sessions.insert("id", s).await.unwrap();
        let stored = g.sessions.get("id").await.unwrap().unwrap();
        stored.upkeep.lock().await.validated_at = SystemTime::now() - HOUR;
        assert!(matches!(
            g.upkeep("id", stored.clone()).await,
            Standing::Unconfirmed
        ));
        assert!(
            stored.upkeep.lock().await.unconfirmed_reported,
            "reported once"
        );
        assert!(
            g.sessions.get("id").await.unwrap().is_some(),
            "kept in the store, refused, until the person passes the provider again"
        );
    }

    #[tokio::test]
    async fn a_request_that_waited_for_an_upkeep_takes_the_stores_answer() {
        let g = gateway("");
        let s = session(tokens(refresh(), Duration::ZERO, HOUR));
        g.sessions.insert("id", s).await.unwrap();
        let stored = g.sessions.get("id").await.unwrap().unwrap();
        // The upkeep this request waited for confirmed the session after it arrived,
        // then the provider ended it: the store no longer has it.
        stored.upkeep.lock().await.validated_at = SystemTime::now() + HOUR;
        g.sessions.remove("id").await;
        assert!(matches!(g.upkeep("id", stored).await, Standing::Ended));
    }
}
