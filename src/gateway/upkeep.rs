//! Keeping a session in step with the provider, before its request goes on: tokens
//! about to expire are refreshed, and with `session.revalidate_every` the provider is
//! asked again whether the session still stands (a refresh when there is a refresh
//! token, else userinfo). One upkeep at a time per session (single flight): requests
//! that arrive meanwhile wait for it and then use its result.
//!
//! A refusal ends the session. A provider that cannot be reached does not: the
//! session goes on (up to its lifetime) and the upkeep is retried with back-off.

use std::time::{Duration, Instant, SystemTime};

use super::Gateway;
use crate::oidc::UpkeepError;
use crate::session::Session;

/// Access tokens are refreshed when they expire within this (or within half their
/// lifetime, for very short-lived ones).
const REFRESH_AHEAD: Duration = Duration::from_secs(30);
/// Longest pause between attempts while the provider cannot be reached.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

impl Gateway {
    /// True when the session may go on; false when the provider ended it (it is
    /// then removed from the store).
    pub(super) async fn upkeep(&self, id: &str, session: &Session) -> bool {
        let arrived = Instant::now();
        let mut upkeep = session.upkeep.lock().await;
        if upkeep.validated_at >= arrived {
            return true; // confirmed by the upkeep this request waited for
        }
        let now = SystemTime::now();
        let refresh_due =
            upkeep.tokens.refresh_token.is_some() && upkeep.tokens.expiring(REFRESH_AHEAD);
        let revalidation_due = self
            .settings
            .session
            .revalidate_every
            .is_some_and(|every| upkeep.validated_at.elapsed() >= every);
        let backing_off = upkeep.retry_at.is_some_and(|t| Instant::now() < t);
        if !(refresh_due || revalidation_due) || backing_off {
            return true;
        }
        let sub = session.identity.sub.as_str();
        let result = match upkeep.tokens.refresh_token.clone() {
            Some(refresh_token) => self
                .provider
                .refresh(&refresh_token, sub, &upkeep.tokens)
                .await
                .map(Some),
            // Without a refresh token only a live access token can be asked about.
            None if upkeep.tokens.expires_at <= now => return true,
            None => self
                .provider
                .check_access_token(&upkeep.tokens.access_token, sub)
                .await
                .map(|()| None),
        };
        match result {
            Ok(tokens) => {
                if let Some(tokens) = tokens {
                    upkeep.tokens = tokens;
                }
                upkeep.validated_at = Instant::now();
                upkeep.retry_at = None;
                upkeep.failures = 0;
                true
            }
            Err(UpkeepError::Refused(reason)) => {
                tracing::info!(sub, %reason, "the provider ended the session");
                drop(upkeep);
                self.sessions.remove(id).await;
                false
            }
            Err(UpkeepError::Unavailable(reason)) => {
                upkeep.failures += 1;
                let pause = Duration::from_secs(1 << upkeep.failures.min(9)).min(MAX_BACKOFF);
                upkeep.retry_at = Some(Instant::now() + pause);
                tracing::warn!(sub, %reason, retry_in = ?pause, "session upkeep failed; the session goes on");
                true
            }
        }
    }
}
