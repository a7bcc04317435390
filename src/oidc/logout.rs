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

        let text = |name: &str| claims.get(name).and_then(Value::as_str);
        if text("iss") != Some(discovered.metadata.issuer().as_str()) {
            return Err("`iss` is not the provider".into());
        }
        let client_id = self.settings.client_id.as_str();
        let for_us = match claims.get("aud") {
            Some(Value::String(aud)) => aud == client_id,
            Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(client_id)),
            _ => false,
        };
        if !for_us {
            return Err("`aud` is not this client".into());
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let skew = self.settings.clock_skew.as_secs_f64();
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
}
