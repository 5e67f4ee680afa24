//! Tokens made for a test: claims and HS256 signing with a test secret.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// The HS256 secret of auth tests.
pub const SECRET: &str = "a-shared-hs256-secret-for-tests-0123456789";

/// Now, in Unix seconds (what `exp` and `nbf` count in).
pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs() as i64
}

/// Claims valid for an hour, for `sub`.
pub fn claims(sub: &str) -> Value {
    json!({ "sub": sub, "exp": now() + 3600, "iat": now() })
}

/// `claims` with `extra` merged in.
pub fn with(mut claims: Value, extra: Value) -> Value {
    if let (Some(map), Some(extra)) = (claims.as_object_mut(), extra.as_object()) {
        map.extend(extra.clone());
    }
    claims
}

/// `claims` signed with `key`, naming `kid` if given.
pub fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).expect("sign")
}

/// `claims` signed with [`SECRET`].
pub fn hs256(claims: &Value) -> String {
    sign(Algorithm::HS256, &EncodingKey::from_secret(SECRET.as_bytes()), None, claims)
}

/// An admin token (the default `scope` claim) for `sub`, signed with [`SECRET`].
pub fn admin(sub: &str) -> String {
    hs256(&with(claims(sub), json!({ "scope": "sessions:read game-session:admin" })))
}
