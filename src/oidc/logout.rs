//! Back-channel logout tokens (OpenID Connect Back-Channel Logout 1.0, section 2.6):
//! the provider tells the gateway that a person's provider session ended.
//!
//! Checked: signature with the provider's keys (asymmetric algorithms from discovery
//! only, unknown `kid` refetched once), `iss`, `aud`, `iat` (not in the future, not
//! older than [`MAX_AGE`]), `exp` if present, a `jti`, the back-channel `events`
//! member, `sub` and/or `sid`, and no `nonce`. That a `jti` is used once is the
//! session store's to keep (shared by every replica), once the sessions have ended.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openidconnect::JsonWebKey;
use openidconnect::core::CoreJwsSigningAlgorithm;
use serde_json::{Map, Value};

use super::Provider;

pub const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// Logout tokens older than this are refused. A used `jti` is kept twice as long (by
/// the session store, for the gateway): a replayed token is refused as used until it
/// is refused as too old.
pub const MAX_AGE: Duration = Duration::from_secs(600);

/// Whose sessions a valid logout token ends.
#[derive(Debug, PartialEq, Eq)]
pub struct LogoutTarget {
    pub sub: Option<String>,
    pub sid: Option<String>,
    /// The token's id, already checked against this replica's memory; with a shared
    /// session store it is checked there too.
    pub jti: String,
}

fn part(segment: &str, what: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| format!("the {what} is not base64url"))
}

fn object(bytes: &[u8], what: &str) -> Result<Map<String, Value>, String> {
    serde_json::from_slice(bytes).map_err(|_| format!("the {what} is not a JSON object"))
}

impl Provider {
    pub async fn verify_logout_token(&self, token: &str) -> Result<LogoutTarget, String> {
        let discovered = self.ready().await.map_err(|e| e.to_string())?;
        let mut segments = token.split('.');
        let (Some(h), Some(c), Some(s), None) = (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) else {
            return Err("not a signed JWT (three segments)".into());
        };
        let header = object(&part(h, "header")?, "header")?;
        let claims = object(&part(c, "claims")?, "claims")?;
        let signature = part(s, "signature")?;

        let alg: CoreJwsSigningAlgorithm = header
            .get("alg")
            .cloned()
            .and_then(|alg| serde_json::from_value(alg).ok())
            .ok_or("no usable `alg`")?;
        if !discovered.signing_algs.contains(&alg) {
            return Err(format!("algorithm {alg:?} is not accepted"));
        }
        let kid = header.get("kid").and_then(Value::as_str);
        let message = format!("{h}.{c}");
        let verified = |provider: &Provider| {
            let keys = provider.keys.read().unwrap();
            let keys = keys.as_ref()?;
            let candidates: Vec<_> = keys
                .keys()
                .iter()
                .filter(|k| kid.is_none() || k.key_id().map(|id| id.as_str()) == kid)
                .cloned()
                .collect();
            Some(candidates.iter().any(|k| {
                k.verify_signature(&alg, message.as_bytes(), &signature)
                    .is_ok()
            }))
        };
        let mut ok = verified(self);
        if ok != Some(true) && self.refetch_keys_for_unknown_kid(&discovered).await {
            ok = verified(self);
        }
        if ok != Some(true) {
            return Err("the signature does not verify with the provider's keys".into());
        }

        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        check_claims(
            &claims,
            discovered.metadata.issuer().as_str(),
            self.settings.client_id.as_str(),
            self.settings.clock_skew,
            now,
        )
    }
}

/// The claim checks of a logout token whose signature verified: `iss` is `issuer`,
/// `aud` names `client_id`, `iat` within [`MAX_AGE`] of `now` (seconds since the
/// epoch, `skew` either way), `exp` not passed, the back-channel `events` member, no
/// `nonce`, `sub` and/or `sid`, and a `jti`.
fn check_claims(
    claims: &Map<String, Value>,
    issuer: &str,
    client_id: &str,
    skew: Duration,
    now: f64,
) -> Result<LogoutTarget, String> {
    let text = |name: &str| claims.get(name).and_then(Value::as_str);
    if text("iss") != Some(issuer) {
        return Err("`iss` is not the provider".into());
    }
    let for_us = match claims.get("aud") {
        Some(Value::String(aud)) => aud == client_id,
        Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(client_id)),
        _ => false,
    };
    if !for_us {
        return Err("`aud` is not this client".into());
    }
    let skew = skew.as_secs_f64();
    let iat = claims
        .get("iat")
        .and_then(Value::as_f64)
        .ok_or("no `iat`")?;
    if iat > now + skew || iat < now - MAX_AGE.as_secs_f64() - skew {
        return Err("`iat` is too far from now".into());
    }
    if claims
        .get("exp")
        .and_then(Value::as_f64)
        .is_some_and(|exp| exp < now - skew)
    {
        return Err("the token has expired".into());
    }
    let has_event = claims
        .get("events")
        .and_then(Value::as_object)
        .and_then(|events| events.get(BACKCHANNEL_LOGOUT_EVENT))
        .is_some_and(Value::is_object);
    if !has_event {
        return Err("no back-channel logout `events` member".into());
    }
    if claims.contains_key("nonce") {
        return Err("a logout token must not carry a `nonce`".into());
    }
    let (sub, sid) = (text("sub"), text("sid"));
    if sub.is_none() && sid.is_none() {
        return Err("neither `sub` nor `sid`".into());
    }
    // Its single use is the caller's to enforce, once the sessions have ended.
    let jti = text("jti").ok_or("no `jti`")?;
    Ok(LogoutTarget {
        sub: sub.map(str::to_owned),
        sid: sid.map(str::to_owned),
        jti: jti.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ISSUER: &str = "https://id.example.com/api/oidc";
    const NOW: f64 = 1_700_000_000.0;
    const SKEW: Duration = Duration::from_secs(30);

    /// A logout token's claims that pass every check.
    fn valid() -> Map<String, Value> {
        let Value::Object(claims) = json!({
            "iss": ISSUER,
            "aud": "sentry",
            "iat": NOW - 5.0,
            "exp": NOW + 120.0,
            "jti": "j-1",
            "sub": "alice",
            "sid": "s-1",
            "events": { BACKCHANNEL_LOGOUT_EVENT: {} },
        }) else {
            unreachable!()
        };
        claims
    }

    fn check(claims: &Map<String, Value>) -> Result<LogoutTarget, String> {
        check_claims(claims, ISSUER, "sentry", SKEW, NOW)
    }

    /// The reason `valid()` with `change` applied is refused.
    fn refused(change: impl FnOnce(&mut Map<String, Value>)) -> String {
        let mut claims = valid();
        change(&mut claims);
        check(&claims).expect_err("should be refused")
    }

    #[test]
    fn valid_claims_name_whose_sessions_end() {
        assert_eq!(
            check(&valid()),
            Ok(LogoutTarget {
                sub: Some("alice".into()),
                sid: Some("s-1".into()),
                jti: "j-1".into(),
            })
        );
        // `aud` may be a list that contains the client; `sub` or `sid` alone will do.
        let mut claims = valid();
        claims.insert("aud".into(), json!(["other", "sentry"]));
        claims.remove("sub");
        assert_eq!(check(&claims).unwrap().sid.as_deref(), Some("s-1"));
        let mut claims = valid();
        claims.remove("sid");
        claims.remove("exp");
        assert_eq!(check(&claims).unwrap().sub.as_deref(), Some("alice"));
    }

    #[test]
    fn another_issuer_or_audience_is_refused() {
        let iss = refused(|c| _ = c.insert("iss".into(), json!("https://evil.example")));
        assert!(iss.contains("`iss`"), "{iss}");
        assert!(refused(|c| _ = c.remove("iss")).contains("`iss`"));
        for aud in [json!("other"), json!(["other"]), json!(42)] {
            assert!(refused(|c| _ = c.insert("aud".into(), aud)).contains("`aud`"));
        }
        assert!(refused(|c| _ = c.remove("aud")).contains("`aud`"));
    }

    #[test]
    fn iat_must_be_recent_within_the_skew() {
        let at = |iat: f64| {
            let mut claims = valid();
            claims.insert("iat".into(), json!(iat));
            check(&claims)
        };
        let max_age = MAX_AGE.as_secs_f64();
        let skew = SKEW.as_secs_f64();
        assert!(at(NOW + skew).is_ok(), "ahead by the skew");
        assert!(at(NOW + skew + 1.0).is_err(), "from the future");
        assert!(at(NOW - max_age - skew).is_ok(), "as old as allowed");
        assert!(at(NOW - max_age - skew - 1.0).is_err(), "too old");
        assert!(refused(|c| _ = c.remove("iat")).contains("`iat`"));
        assert!(refused(|c| _ = c.insert("iat".into(), json!("now"))).contains("`iat`"));
    }

    #[test]
    fn an_expired_token_is_refused() {
        let expired = |exp: f64| {
            let mut claims = valid();
            claims.insert("exp".into(), json!(exp));
            check(&claims)
        };
        assert!(expired(NOW - SKEW.as_secs_f64()).is_ok(), "within the skew");
        assert!(
            expired(NOW - SKEW.as_secs_f64() - 1.0)
                .unwrap_err()
                .contains("expired")
        );
    }

    #[test]
    fn the_back_channel_event_jti_and_no_nonce_are_required() {
        assert!(refused(|c| _ = c.remove("events")).contains("`events`"));
        let other_event = json!({ "http://schemas.openid.net/event/other": {} });
        assert!(refused(|c| _ = c.insert("events".into(), other_event)).contains("`events`"));
        let not_object = json!({ BACKCHANNEL_LOGOUT_EVENT: "yes" });
        assert!(refused(|c| _ = c.insert("events".into(), not_object)).contains("`events`"));
        assert!(refused(|c| _ = c.insert("nonce".into(), json!("n"))).contains("`nonce`"));
        assert!(refused(|c| _ = c.remove("jti")).contains("`jti`"));
        assert!(refused(|c| _ = c.insert("jti".into(), json!(7))).contains("`jti`"));
        let neither = refused(|c| {
            c.remove("sub");
            c.remove("sid");
        });
        assert!(neither.contains("neither"), "{neither}");
    }
}
