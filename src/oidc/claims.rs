//! From verified ID-token and userinfo claims to the gateway's [`Identity`].
//!
//! Standard claims come through openidconnect's typed accessors; everything else
//! (Encvoy ID's `login`, the configurable groups claim such as `permissions`) is read
//! from [`ExtraClaims`], which keeps every claim the provider sent.

use std::collections::HashMap;

use openidconnect::core::CoreGenderClaim;
use openidconnect::{AdditionalClaims, IdTokenClaims, UserInfoClaims};
use serde_json::Value;

use crate::identity::Identity;

/// All claims of a token or userinfo answer, so configured claim names can be read.
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
pub struct ExtraClaims {
    #[serde(flatten)]
    pub all: HashMap<String, Value>,
}

impl AdditionalClaims for ExtraClaims {}

/// The claims the gateway uses, from one source.
#[derive(Default)]
struct ClaimSet {
    email: Option<String>,
    email_verified: Option<bool>,
    preferred_username: Option<String>,
    groups: Option<Vec<String>>,
}

macro_rules! claim_set {
    ($claims:expr, $groups_claim:expr) => {{
        let claims = $claims;
        let extra = &claims.additional_claims().all;
        ClaimSet {
            email: claims.email().map(|e| e.as_str().to_owned()),
            email_verified: claims.email_verified(),
            preferred_username: claims
                .preferred_username()
                .map(|u| u.as_str().to_owned())
                .or_else(|| string_claim(extra, "login")),
            groups: extra.get($groups_claim).map(string_list),
        }
    }};
}

/// Builds the identity from the verified ID token, with userinfo's values (when the
/// provider has a userinfo endpoint) taking precedence for the claims it carries.
pub fn identity(
    id_token: &IdTokenClaims<ExtraClaims, CoreGenderClaim>,
    userinfo: Option<&UserInfoClaims<ExtraClaims, CoreGenderClaim>>,
    groups_claim: &str,
) -> Identity {
    let token = claim_set!(id_token, groups_claim);
    let info = userinfo.map_or_else(ClaimSet::default, |u| claim_set!(u, groups_claim));
    Identity {
        sub: id_token.subject().as_str().into(),
        email: info.email.or(token.email).map(Into::into),
        email_verified: info
            .email_verified
            .or(token.email_verified)
            .unwrap_or(false),
        preferred_username: info
            .preferred_username
            .or(token.preferred_username)
            .map(Into::into),
        groups: info.groups.or(token.groups).unwrap_or_default().into(),
        groups_claim: groups_claim.into(),
    }
}

/// The identity after the provider confirmed a session again (a refresh, or userinfo
/// asked with a live access token), so it follows what the provider says now. A new
/// ID token with userinfo is a whole answer: the identity is built as a login builds
/// it (a claim gone is gone). Anything less (userinfo alone, or an ID token whose
/// userinfo could not be fetched) replaces the claims it carries and keeps the others.
pub fn confirmed_identity(
    previous: &Identity,
    id_token: Option<&IdTokenClaims<ExtraClaims, CoreGenderClaim>>,
    userinfo: Option<&UserInfoClaims<ExtraClaims, CoreGenderClaim>>,
    groups_claim: &str,
) -> Identity {
    if let (Some(id_token), Some(userinfo)) = (id_token, userinfo) {
        return identity(id_token, Some(userinfo), groups_claim);
    }
    let token = id_token.map_or_else(ClaimSet::default, |t| claim_set!(t, groups_claim));
    let info = userinfo.map_or_else(ClaimSet::default, |u| claim_set!(u, groups_claim));
    Identity {
        sub: previous.sub.clone(),
        email: (info.email.or(token.email).map(Into::into)).or_else(|| previous.email.clone()),
        email_verified: info
            .email_verified
            .or(token.email_verified)
            .unwrap_or(previous.email_verified),
        preferred_username: (info.preferred_username.or(token.preferred_username))
            .map(Into::into)
            .or_else(|| previous.preferred_username.clone()),
        groups: (info.groups.or(token.groups)).map_or_else(|| previous.groups.clone(), Into::into),
        groups_claim: previous.groups_claim.clone(),
    }
}

fn string_claim(claims: &HashMap<String, Value>, name: &str) -> Option<String> {
    claims.get(name)?.as_str().map(str::to_owned)
}

/// A groups-like claim: an array of strings, or one string separated by spaces or
/// commas. Anything else (numbers, objects) is ignored.
pub fn string_list(value: &Value) -> Vec<String> {
    match value {
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        Value::String(text) => crate::config::split_list(text),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn alice() -> Identity {
        Identity {
            sub: "alice".into(),
            email: Some("alice@corp.example".into()),
            email_verified: true,
            preferred_username: Some("alice".into()),
            groups: vec!["sentry:member".to_owned()].into(),
            groups_claim: "permissions".into(),
        }
    }

    fn userinfo(claims: serde_json::Value) -> UserInfoClaims<ExtraClaims, CoreGenderClaim> {
        UserInfoClaims::from_json::<std::io::Error>(claims.to_string().as_bytes(), None).unwrap()
    }

    fn id_token(claims: serde_json::Value) -> IdTokenClaims<ExtraClaims, CoreGenderClaim> {
        let mut all = json!({"iss": "https://id.example", "aud": "sentry", "exp": 2_000_000_000, "iat": 1_000_000_000, "sub": "alice"});
        all.as_object_mut()
            .unwrap()
            .extend(claims.as_object().unwrap().clone());
        serde_json::from_value(all).unwrap()
    }

    #[test]
    fn userinfo_alone_replaces_what_it_carries_and_keeps_the_rest() {
        let demoted = userinfo(json!({"sub": "alice", "permissions": []}));
        let now = confirmed_identity(&alice(), None, Some(&demoted), "permissions");
        assert!(now.groups.is_empty(), "a permission removed is removed");
        assert_eq!(now.email, alice().email, "a claim not carried is kept");
        let silent = userinfo(json!({"sub": "alice", "email": "a2@corp.example"}));
        let now = confirmed_identity(&alice(), None, Some(&silent), "permissions");
        assert_eq!(now.groups, alice().groups);
        assert_eq!(now.email.as_deref(), Some("a2@corp.example"));
    }

    #[test]
    fn an_id_token_with_userinfo_is_a_whole_answer() {
        let token = id_token(json!({"permissions": ["sentry:viewer"]}));
        let info = userinfo(json!({"sub": "alice"}));
        let now = confirmed_identity(&alice(), Some(&token), Some(&info), "permissions");
        assert_eq!(&*now.groups, ["sentry:viewer"]);
        assert_eq!(now.email, None, "no longer released: gone");
        // Without userinfo (it failed), what the ID token lacks is kept.
        let now = confirmed_identity(&alice(), Some(&token), None, "permissions");
        assert_eq!(&*now.groups, ["sentry:viewer"]);
        assert_eq!(now.email, alice().email);
        assert_eq!(
            confirmed_identity(&alice(), None, None, "permissions"),
            alice()
        );
    }

    #[test]
    fn groups_claim_accepts_arrays_and_separated_strings() {
        assert_eq!(string_list(&json!(["a", "b", 3])), ["a", "b"]);
        assert_eq!(string_list(&json!("a b,c, d")), ["a", "b", "c", "d"]);
        assert!(string_list(&json!({"a": 1})).is_empty());
    }
}
