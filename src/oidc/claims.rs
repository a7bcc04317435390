//! From verified ID-token and userinfo claims to the gateway's [`Identity`].
//!
//! Standard claims come through openidconnect's typed accessors; everything else
//! (Encvoy ID's `login`, the configurable groups claim such as `permissions`) is read
//! from [`ExtraClaims`], which keeps every claim the provider sent.

use std::collections::HashMap;

use openidconnect::core::CoreGenderClaim;
use openidconnect::{AdditionalClaims, IdTokenClaims, UserInfoClaims};
use serde_json::Value;

use crate::session::Identity;

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

    #[test]
    fn groups_claim_accepts_arrays_and_separated_strings() {
        assert_eq!(string_list(&json!(["a", "b", 3])), ["a", "b"]);
        assert_eq!(string_list(&json!("a b,c, d")), ["a", "b", "c", "d"]);
        assert!(string_list(&json!({"a": 1})).is_empty());
    }
}
