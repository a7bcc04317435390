//! Keeping a session in step with the provider, before its request goes on: tokens
//! about to expire are refreshed, and with `session.revalidate_every` the provider is
//! asked again whether the session still stands (a refresh when there is a refresh
//! token, else userinfo).
//!
//! One upkeep at a time per session (single flight): requests that arrive meanwhile
//! wait for it and then use its result. With Redis, one replica at a time as well: the
//! replica holding the session's lease talks to the provider and stores the result;
//! the others wait for the lease and adopt what was stored. So a rotating refresh
//! token is used once, whichever replicas the requests reach.
//!
//! A refusal ends the session. A provider (or Redis) that cannot be reached does not:
//! the session goes on (up to its lifetime) and the upkeep is retried with back-off.

use std::time::{Duration, Instant, SystemTime};

use super::Gateway;
use crate::observe::UpkeepOutcome;
use crate::oidc::UpkeepError;
use crate::session::{Lease, Renewal, Session, Upkeep};

/// Access tokens are refreshed when they expire within this (or within half their
/// lifetime, for very short-lived ones).
const REFRESH_AHEAD: Duration = Duration::from_secs(30);
/// Longest pause between attempts while the provider cannot be reached.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

impl Gateway {
    /// True when the session may go on; false when the provider ended it (it is
    /// then removed from the store).
    pub(super) async fn upkeep(&self, id: &str, session: &Session) -> bool {
        let arrived = SystemTime::now();
        let mut upkeep = session.upkeep.lock().await;
        if upkeep.validated_at >= arrived {
            return true; // confirmed by the upkeep this request waited for
        }
        let backing_off = upkeep.retry_at.is_some_and(|t| Instant::now() < t);
        if !self.upkeep_due(&upkeep) || backing_off {
            return true;
        }
        let lease = match self.sessions.lease(id).await {
            Lease::Busy => {
                // Another replica is at it: wait, then take what it stored.
                self.sessions.await_lease(id).await;
                return match self.sessions.stored_upkeep(id).await {
                    Ok(Some(stored)) => {
                        adopt(&mut upkeep, stored);
                        true
                    }
                    Ok(None) => false,
                    Err(_) => true,
                };
            }
            Lease::Unavailable(e) => {
                back_off(&mut upkeep, &session.identity.sub, &e.to_string());
                return true;
            }
            lease @ Lease::Held(_) => {
                // Another replica may have finished an upkeep since this one cached
                // the session: start from what is stored.
                match self.sessions.stored_upkeep(id).await {
                    Ok(Some(stored)) => adopt(&mut upkeep, stored),
                    Ok(None) => {
                        self.sessions.release(id, lease).await;
                        return false;
                    }
                    Err(_) => {}
                }
                if !self.upkeep_due(&upkeep) {
                    self.sessions.release(id, lease).await;
                    return true;
                }
                lease
            }
            lease @ Lease::Local => lease,
        };
        let alive = self.ask_provider(id, session, &mut upkeep).await;
        drop(upkeep);
        self.sessions.release(id, lease).await;
        alive
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

    /// Refreshes or revalidates now, and records the outcome.
    async fn ask_provider(&self, id: &str, session: &Session, upkeep: &mut Upkeep) -> bool {
        let sub = &*session.identity.sub;
        let result = match &upkeep.tokens.renewal {
            Renewal::RefreshToken(refresh_token) => self
                .provider
                .refresh(refresh_token, sub, &upkeep.tokens)
                .await
                .map(Some),
            // Without a refresh token only a live access token can be asked about.
            Renewal::AccessToken(_) if upkeep.tokens.expires_at <= SystemTime::now() => {
                return true;
            }
            Renewal::AccessToken(access_token) => self
                .provider
                .check_access_token(access_token, sub)
                .await
                .map(|()| None),
        };
        match result {
            Ok(tokens) => {
                self.metrics.upkeep(UpkeepOutcome::Confirmed);
                if let Some(tokens) = tokens {
                    upkeep.tokens = tokens;
                }
                upkeep.validated_at = SystemTime::now();
                upkeep.retry_at = None;
                upkeep.failures = 0;
                self.sessions.save(id, session, upkeep).await;
                true
            }
            Err(UpkeepError::Refused(reason)) => {
                tracing::info!(sub, %reason, "the provider ended the session");
                self.metrics.upkeep(UpkeepOutcome::Refused);
                self.sessions.remove(id).await;
                false
            }
            Err(UpkeepError::Unavailable(reason)) => {
                self.metrics.upkeep(UpkeepOutcome::Unavailable);
                back_off(upkeep, sub, &reason);
                true
            }
        }
    }
}

/// Takes over what another replica's upkeep stored, when it is newer.
fn adopt(upkeep: &mut Upkeep, stored: Upkeep) {
    if stored.validated_at > upkeep.validated_at {
        upkeep.tokens = stored.tokens;
        upkeep.validated_at = stored.validated_at;
        upkeep.retry_at = None;
        upkeep.failures = 0;
    }
}

/// The upkeep could not be done now: the session goes on, the next try waits.
fn back_off(upkeep: &mut Upkeep, sub: &str, reason: &str) {
    upkeep.failures += 1;
    let pause = Duration::from_secs(1 << upkeep.failures.min(9)).min(MAX_BACKOFF);
    upkeep.retry_at = Some(Instant::now() + pause);
    tracing::warn!(sub, %reason, retry_in = ?pause, "session upkeep failed; the session goes on");
}
