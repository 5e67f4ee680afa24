//! Resume tokens: what a welcome gives a player so that it can take its
//! seat back on a new stream after its connection drops (see the `Resume`
//! message).
//!
//! A token names the session, the player and the seat's generation, signed
//! with HMAC-SHA-256 under the server's resume key. Every replica that
//! shares the key (`--resume-key-file`; in the chart, a Secret) verifies
//! every other's tokens. A token is only as good as its seat: the session
//! refuses it once the seat has a newer generation (a later resume or
//! join) or is gone (a leave, a kick, a hold that ran out), so tokens need
//! no expiry of their own and a kick revokes them all.
//!
//! Format: `base64url(session "\n" player "\n" generation) "." base64url(mac)`,
//! without padding. Session and player ids never hold a newline.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use crate::error::{BoxError, Error};

/// The shortest resume key accepted, in bytes.
pub const MIN_RESUME_KEY_LEN: usize = 32;
/// The longest token read; longer ones are refused unread.
const MAX_TOKEN_LEN: usize = 512;

/// What a verified token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeClaim {
    pub session: String,
    pub player: String,
    pub generation: u64,
}

/// Signs and verifies resume tokens.
#[derive(Clone)]
pub struct ResumeKey {
    key: hmac::Key,
}

impl std::fmt::Debug for ResumeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResumeKey(..)")
    }
}

impl ResumeKey {
    /// A key from its bytes: at least [`MIN_RESUME_KEY_LEN`].
    pub fn new(secret: &[u8]) -> Result<Self, BoxError> {
        if secret.len() < MIN_RESUME_KEY_LEN {
            return Err(format!("the resume key must be at least {MIN_RESUME_KEY_LEN} bytes").into());
        }
        Ok(ResumeKey { key: hmac::Key::new(hmac::HMAC_SHA256, secret) })
    }

    /// A random key, for a server started without one: its tokens are good
    /// on this process only.
    pub fn generate() -> Result<Self, BoxError> {
        let mut secret = [0u8; 32];
        SystemRandom::new().fill(&mut secret).map_err(|_| "the system's random source failed")?;
        Self::new(&secret)
    }

    /// The token for `player`'s seat of `generation` in `session`.
    pub fn sign(&self, session: &str, player: &str, generation: u64) -> String {
        let claim = format!("{session}\n{player}\n{generation}");
        let tag = hmac::sign(&self.key, claim.as_bytes());
        format!("{}.{}", URL_SAFE_NO_PAD.encode(claim), URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// What `token` names, if this key signed it (compared in constant
    /// time); else UNAUTHENTICATED, saying no more than that.
    pub fn verify(&self, token: &str) -> Result<ResumeClaim, Error> {
        let invalid = || Error::Unauthenticated("resume.token: not a resume token this service issued".into());
        if token.len() > MAX_TOKEN_LEN {
            return Err(invalid());
        }
        let (claim, tag) = token.split_once('.').ok_or_else(invalid)?;
        let claim = URL_SAFE_NO_PAD.decode(claim).map_err(|_| invalid())?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| invalid())?;
        hmac::verify(&self.key, &claim, &tag).map_err(|_| invalid())?;
        // Signed by us, so well formed; checked all the same.
        let claim = String::from_utf8(claim).map_err(|_| invalid())?;
        let mut parts = claim.splitn(3, '\n');
        let (Some(session), Some(player), Some(generation)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(invalid());
        };
        let generation = generation.parse().map_err(|_| invalid())?;
        Ok(ResumeClaim { session: session.to_owned(), player: player.to_owned(), generation })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Catches a token that verifies after any change, or under another
    /// key: only the exact token under its own key names its seat.
    #[test]
    fn only_an_unaltered_token_under_its_own_key_verifies() {
        let key = ResumeKey::new(&[7; 32]).unwrap();
        let token = key.sign("s1", "alice", 3);
        let claim = ResumeClaim { session: "s1".into(), player: "alice".into(), generation: 3 };
        assert_eq!(key.verify(&token), Ok(claim));

        let other = ResumeKey::new(&[8; 32]).unwrap();
        assert!(other.verify(&token).is_err(), "another key's token");
        let (body, tag) = token.split_once('.').unwrap();
        let forged = format!("{}.{tag}", URL_SAFE_NO_PAD.encode("s1\nalice\n4"));
        assert!(key.verify(&forged).is_err(), "a changed generation");
        assert!(key.verify(&format!("{body}.")).is_err(), "no tag");
        assert!(key.verify(body).is_err(), "no separator");
        assert!(key.verify(&"a".repeat(MAX_TOKEN_LEN + 1)).is_err(), "too long");
        assert!(ResumeKey::new(&[1; 31]).is_err(), "a short key");
    }
}
