//! Who signed in and what the provider gave for it: made by `oidc` at a login or a
//! refresh, kept by `session`, read by `policy` and the gateway.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// The signed-in person, as the provider (`oidc.issuer`) described them: what the
/// identity headers and access rules use, nothing more (no display name, no issuer).
///
/// Text is kept as `Box<str>` rather than `String` (8 bytes less each, no spare
/// capacity): a gateway may hold a million of these.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub sub: Box<str>,
    pub email: Option<Box<str>>,
    pub email_verified: bool,
    /// `preferred_username`, else Encvoy ID's `login`.
    pub preferred_username: Option<Box<str>>,
    /// Values of the configured groups claim (Encvoy ID: `permissions`). Sessions
    /// with the same groups share one list (the session store interns them).
    pub groups: Arc<[String]>,
    /// The claim `groups` was read from (`access.groups_claim` at sign-in): a session
    /// is used only while that is still the configured claim. Empty in sessions from
    /// versions that did not record it, which therefore sign in again.
    #[serde(default)]
    pub groups_claim: Box<str>,
}

/// What a login or a refresh gave that the session still needs: one token to ask the
/// provider again later, and the access token's lifetime.
///
/// Only what upkeep uses is kept. The ID token is checked and dropped: keeping it
/// (about 900 bytes) would more than double a session, and sign-out names the client
/// by `client_id` instead (RP-Initiated Logout 1.0). The access token is kept only
/// when there is no refresh token, since nothing is sent upstream with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    pub renewal: Renewal,
    /// When these tokens were obtained.
    pub issued_at: SystemTime,
    /// When the access token expires (`expires_in`, else the ID token's `exp`).
    pub expires_at: SystemTime,
}

/// How the provider is asked again whether a session still stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Renewal {
    /// Exchanged for new tokens before the access token expires (Encvoy ID issues
    /// refresh tokens only with the `offline_access` scope).
    RefreshToken(Box<str>),
    /// Without a refresh token: shown to userinfo, while it lives.
    AccessToken(Box<str>),
}

impl Tokens {
    /// True when, at `now`, the access token expires within `ahead`, or within half
    /// its lifetime for tokens that live shorter than `2 * ahead`.
    pub fn expiring(&self, ahead: Duration, now: SystemTime) -> bool {
        let lifetime = self
            .expires_at
            .duration_since(self.issued_at)
            .unwrap_or_default();
        now + ahead.min(lifetime / 2) >= self.expires_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_due_for_refresh_ahead_of_expiry() {
        let tokens = |lifetime: Duration, elapsed: Duration| Tokens {
            renewal: Renewal::AccessToken("".into()),
            issued_at: SystemTime::now() - elapsed,
            expires_at: SystemTime::now() - elapsed + lifetime,
        };
        let ahead = Duration::from_secs(30);
        assert!(
            !tokens(Duration::from_secs(1800), Duration::from_secs(60))
                .expiring(ahead, SystemTime::now())
        );
        assert!(
            tokens(Duration::from_secs(1800), Duration::from_secs(1780))
                .expiring(ahead, SystemTime::now())
        );
        assert!(
            !tokens(Duration::from_secs(10), Duration::from_secs(2))
                .expiring(ahead, SystemTime::now()),
            "short-lived: half its life"
        );
        assert!(
            tokens(Duration::from_secs(10), Duration::from_secs(6))
                .expiring(ahead, SystemTime::now())
        );
    }
}
