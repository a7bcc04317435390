//! No second click for a returning person (`oidc.skip_sign_in_page = "returning"`).
//!
//! When a session ends (it expired, a memory store restarted, Sentry's UI got a 401
//! and reloaded), a person who signed in on this browser before would land on the
//! sign-in page again and click, though the provider would let them through without
//! a word. So a successful login leaves a marker in a long-lived cookie (named after
//! the session cookie, [`returning_cookie_name`]): the time of that login, which is no
//! secret and vouches for nothing; it only says where a navigation without a session
//! goes. With it, such a navigation goes straight to `/oauth2/start` and the provider
//! with a normal authorization request (no `prompt=none`, as mod_auth_openidc): the
//! provider's session decides between a silent return and its own login page. Without
//! it (a first visit), the sign-in page shows as before. Requests that get a 401 today
//! (fetches, API calls) still get it: only the navigations that would get the page are
//! sent on.
//!
//! The marker goes when the person signs out at `/oauth2/sign_out`, so the page shows
//! again, and when a login fails at the callback (the provider refused, the state did
//! not match, ...), so a browser is never bounced between the gateway and a provider
//! that will not sign it in. A back-channel logout cannot remove it (the provider
//! calls the gateway, not the browser): after one, the next navigation goes to the
//! provider, whose session has ended too, and its login page shows. A navigation
//! within [`RETURNING_PAUSE`] of the login that set the marker sees the page: a session
//! lost that quickly was never kept (a browser that drops it, replicas that do not
//! share their store), and sending it round again would loop.
//!
//! Like the gateway's other cookies, the marker never reaches the upstream, and the
//! upstream can neither set nor clear it. Only `"returning"` sets or reads it; sign-out
//! and a failed login remove it whatever the setting.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;

use super::{Gateway, SignIn};
use crate::config::SkipSignInPage;
use crate::session::request_cookies;

/// How long the marker lasts: 400 days, the longest a browser keeps a cookie.
const RETURNING_MAX_AGE: Duration = Duration::from_secs(400 * 24 * 60 * 60);

/// How soon after the login that set the marker a navigation without a session still
/// sees the sign-in page (see the module docs).
pub(super) const RETURNING_PAUSE: Duration = Duration::from_secs(5);

/// The marker's name: the session cookie's with `_returning` after it. It is scoped to
/// `/` like the session cookie, so a `__Host-` name keeps its prefix.
pub(super) fn returning_cookie_name(session_cookie: &str) -> String {
    format!("{session_cookie}_returning")
}

fn seconds_since_epoch() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

impl Gateway {
    /// Whether a navigation without a usable session goes straight to the provider
    /// (`/oauth2/start`) rather than to the sign-in page.
    pub(super) fn straight_to_provider(&self, sign_in: SignIn, headers: &HeaderMap) -> bool {
        sign_in == SignIn::ThroughProvider
            || match self.settings.oidc.skip_sign_in_page {
                SkipSignInPage::Always => true,
                SkipSignInPage::Never => false,
                SkipSignInPage::Returning => self.is_returning(headers),
            }
    }

    /// Whether the request carries the marker of a login here at least
    /// [`RETURNING_PAUSE`] ago.
    fn is_returning(&self, headers: &HeaderMap) -> bool {
        let now = seconds_since_epoch();
        request_cookies(headers)
            .filter(|(name, _)| *name == self.returning_cookie)
            .filter_map(|(_, value)| value.parse::<u64>().ok())
            .any(|signed_in_at| now.saturating_sub(signed_in_at) >= RETURNING_PAUSE.as_secs())
    }

    /// The marker a successful login sets; `None` unless `oidc.skip_sign_in_page` is
    /// `"returning"` (nothing else reads it).
    pub(super) fn returning_marker(&self) -> Option<cookie::Cookie<'static>> {
        (self.settings.oidc.skip_sign_in_page == SkipSignInPage::Returning).then(|| {
            self.cookies.plain(
                &self.returning_cookie,
                &seconds_since_epoch().to_string(),
                "/",
                Some(RETURNING_MAX_AGE),
            )
        })
    }

    /// The `Set-Cookie` that removes the marker (at sign-out, after a failed login).
    pub(super) fn returning_marker_removal(&self) -> cookie::Cookie<'static> {
        self.cookies.removal(&self.returning_cookie, "/")
    }
}
