//! A session of the sizes of a real Encvoy ID login with `offline_access`: an opaque
//! refresh token (the ID and access tokens are checked and not kept), a provider
//! `sid`, an email, a login and three permissions. Shared by the benches.

use std::time::{Duration, SystemTime};

use ssogate::identity::{Identity, Renewal, Tokens};
use ssogate::session::{Session, random_token};

/// Session number `n` (its identity differs from every other `n`).
pub fn session(n: usize) -> Session {
    let identity = Identity {
        sub: format!("{:08}", 10_000_000 + n).into(),
        email: Some(format!("person{n}@example.com").into()),
        email_verified: true,
        preferred_username: Some(format!("person{n}").into()),
        groups: vec![
            "sentry:member".into(),
            "sentry:viewer".into(),
            "billing:read".into(),
        ]
        .into(),
        groups_claim: "groups".into(),
    };
    let tokens = Tokens {
        renewal: Renewal::RefreshToken(random_token().into()),
        issued_at: SystemTime::now(),
        expires_at: SystemTime::now() + Duration::from_secs(1800),
    };
    Session::new(identity, Some(random_token().into()), tokens)
}
