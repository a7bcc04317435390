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
        let mut upkeep = session.upkeep.lock().await;
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
        let mut upkeep = session.upkeep.lock().await;
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
        if !self.upkeep_due(&upkeep) || backing_off {
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
                let asked = if self.upkeep_due(upkeep) {
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

    fn upkeep_due(&self, upkeep: &Upkeep) -> bool {
        let refresh_due = matches!(upkeep.tokens.renewal, Renewal::RefreshToken(_))
            && upkeep.tokens.expiring(REFRESH_AHEAD);
        let revalidation_due = self.settings.session.revalidate_every.is_some_and(|every| {
            upkeep
                .validated_at
                .elapsed()
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
