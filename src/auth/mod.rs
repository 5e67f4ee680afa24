//! Who is calling: bearer JWTs for players (the player id is the token's
//! `sub`), and an admin JWT or API key for SessionService.
//!
//! Tokens are checked once, when a call starts: a Play stream outlives its
//! token's `exp`. Every refusal is counted (`game_session_auth_rejections_total`
//! by API and reason) and logged at most once a second per reason, with the
//! caller's address and never the token or its claims.

mod keys;
mod resume;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataMap;
use tracing::warn;

use keys::{KeyStore, Lookup};
pub use keys::{MIN_SECRET_LEN, read_secret_file};
pub use resume::{MIN_RESUME_KEY_LEN, ResumeClaim, ResumeKey};

use crate::config::AuthConfig;
use crate::error::BoxError;
use crate::error::Error;
use crate::session::JoinTarget;
use crate::telemetry::Throttle;

/// The claim listing the session ids a player token may join; absent: any.
pub const SESSIONS_CLAIM: &str = "gs_sessions";
/// The claim listing the modes a player token may join; absent: any.
pub const MODES_CLAIM: &str = "gs_modes";
/// The longest `authorization` value read; longer ones are refused unread.
const MAX_TOKEN_LEN: usize = 8 * 1024;
/// The shortest admin API key accepted.
pub const MIN_API_KEY_LEN: usize = 16;

/// The API a credential was presented to, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    /// PlayerService (`Play`).
    Play,
    /// SessionService.
    Session,
}

impl Api {
    fn as_str(self) -> &'static str {
        match self {
            Api::Play => "play",
            Api::Session => "session",
        }
    }
}

/// Why a credential was refused: the `reason` label of the rejection metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// No `authorization: Bearer ...` metadata.
    Missing,
    /// Not a JWT, or a JWT that cannot be read.
    Malformed,
    /// An algorithm no configured key verifies (`none` included).
    Algorithm,
    /// A key id that no key has, even after reading the JWKS again.
    UnknownKey,
    /// The signature does not verify.
    BadSignature,
    /// Past `exp` (plus the leeway).
    Expired,
    /// Before `nbf` (minus the leeway).
    NotYetValid,
    /// `iss` is not the configured issuer.
    WrongIssuer,
    /// `aud` does not hold the configured audience.
    WrongAudience,
    /// `exp`, `sub`, or a configured `iss` or `aud` is missing.
    MissingClaim,
    /// `sub` is not a valid player id.
    BadSubject,
    /// A valid credential without admin rights on SessionService.
    NotAdmin,
    /// An admin API key on Play: it names no player.
    NoPlayer,
    /// A join naming a player id other than the token's `sub`.
    Impersonation,
    /// A join outside the token's `gs_sessions` or `gs_modes`.
    Restricted,
}

impl Rejection {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Missing => "missing",
            Rejection::Malformed => "malformed",
            Rejection::Algorithm => "algorithm",
            Rejection::UnknownKey => "unknown_key",
            Rejection::BadSignature => "bad_signature",
            Rejection::Expired => "expired",
            Rejection::NotYetValid => "not_yet_valid",
            Rejection::WrongIssuer => "wrong_issuer",
            Rejection::WrongAudience => "wrong_audience",
            Rejection::MissingClaim => "missing_claim",
            Rejection::BadSubject => "bad_subject",
            Rejection::NotAdmin => "not_admin",
            Rejection::NoPlayer => "no_player",
            Rejection::Impersonation => "impersonation",
            Rejection::Restricted => "restricted",
        }
    }

    /// What the caller is told: UNAUTHENTICATED for a missing or bad
    /// credential, PERMISSION_DENIED for a good one that does not allow the
    /// call.
    fn error(self) -> Error {
        let reason = match self {
            Rejection::Missing => "missing; send `authorization: Bearer <token>`",
            Rejection::Malformed => "not a readable JWT",
            Rejection::Algorithm => "signed with an algorithm this server does not accept",
            Rejection::UnknownKey => "signed with a key this server does not know (kid)",
            Rejection::BadSignature => "the signature does not verify",
            Rejection::Expired => "the token has expired",
            Rejection::NotYetValid => "the token is not valid yet (nbf)",
            Rejection::WrongIssuer => "the token's issuer (iss) is not accepted",
            Rejection::WrongAudience => "the token is not for this audience (aud)",
            Rejection::MissingClaim => "the token lacks a required claim (exp, sub, or the configured iss or aud)",
            Rejection::BadSubject => "the token's sub is not a player id (1-64 characters of [A-Za-z0-9._:-])",
            Rejection::NotAdmin => return Error::PermissionDenied("SessionService needs an admin credential".into()),
            Rejection::NoPlayer => {
                return Error::PermissionDenied("an admin API key names no player; Play needs a player token".into());
            }
            Rejection::Impersonation => {
                return Error::PermissionDenied("join.player_id: the token is for another player".into());
            }
            Rejection::Restricted => {
                return Error::PermissionDenied("join.target: the token does not allow this session or mode".into());
            }
        };
        Error::Unauthenticated(format!("authorization: {reason}"))
    }
}

/// Who made a SessionService call, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Auth is off: nobody is identified.
    Anonymous,
    /// An admin JWT, by its `sub`.
    Token(String),
    /// An admin API key, by its line in the key file (1-based).
    ApiKey(usize),
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Anonymous => f.write_str("anonymous (auth off)"),
            Caller::Token(sub) => write!(f, "jwt:{sub}"),
            Caller::ApiKey(line) => write!(f, "api-key:{line}"),
        }
    }
}

/// A verified player token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlayerToken {
    /// The player id (`sub`).
    pub sub: String,
    /// `gs_sessions`: the only sessions it may join, when present.
    pub sessions: Option<Vec<String>>,
    /// `gs_modes`: the only modes it may join, when present.
    pub modes: Option<Vec<String>>,
}

/// The request facts a check needs.
pub struct Call<'a> {
    pub metadata: &'a MetadataMap,
    /// The caller's address, for the rejection log.
    pub peer: Option<SocketAddr>,
}

impl<'a> Call<'a> {
    /// The facts of `request`.
    pub fn of<T>(request: &'a tonic::Request<T>) -> Self {
        Call { metadata: request.metadata(), peer: request.remote_addr() }
    }
}

/// Checks credentials; cheap to clone. Off (everything allowed, nobody
/// identified) when no key source is configured.
#[derive(Clone)]
pub struct Auth {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    keys: Arc<KeyStore>,
    api_keys: Vec<Vec<u8>>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: Duration,
    admin_claim: String,
    admin_value: String,
    log: Throttle<(Api, Rejection)>,
}

impl Auth {
    /// Auth off.
    pub fn off() -> Self {
        Auth { inner: None }
    }

    /// Auth as `config` says: reads the key files, and the JWKS once.
    pub async fn from_config(config: &AuthConfig) -> Result<Self, BoxError> {
        if !config.enabled() {
            return Ok(Auth::off());
        }
        let keys = Arc::new(KeyStore::load(config).await?);
        let mut api_keys = Vec::new();
        if let Some(path) = &config.admin_api_key_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {} (--admin-api-key-file): {e}", path.display()))?;
            for (line, key) in text.lines().enumerate() {
                let key = key.trim();
                if key.is_empty() {
                    continue;
                }
                if key.len() < MIN_API_KEY_LEN {
                    return Err(format!(
                        "{} (--admin-api-key-file) line {}: an API key must be at least {MIN_API_KEY_LEN} bytes",
                        path.display(),
                        line + 1
                    )
                    .into());
                }
                api_keys.push(key.as_bytes().to_vec());
            }
        }
        Ok(Auth {
            inner: Some(Arc::new(Inner {
                keys,
                api_keys,
                issuer: config.jwt_issuer.clone(),
                audience: config.jwt_audience.clone(),
                leeway: config.jwt_leeway,
                admin_claim: config.admin_claim.clone(),
                admin_value: config.admin_claim_value.clone(),
                log: Throttle::default(),
            })),
        })
    }

    /// True when credentials are checked.
    pub fn is_on(&self) -> bool {
        self.inner.is_some()
    }

    /// Keeps the JWKS fresh until `stop` is cancelled (nothing to do when
    /// there is none).
    pub async fn refresh(self, stop: CancellationToken) {
        if let Some(inner) = self.inner {
            inner.keys.clone().refresh(stop).await;
        }
    }

    /// The player token of a Play call: `None` with auth off.
    pub async fn player(&self, call: &Call<'_>) -> Result<Option<PlayerToken>, Error> {
        let Some(inner) = &self.inner else { return Ok(None) };
        let result = async {
            let token = bearer(call.metadata)?;
            if inner.api_key(token).is_some() {
                return Err(Rejection::NoPlayer);
            }
            let claims = inner.verify(token).await?;
            Ok(PlayerToken {
                sub: sub(&claims)?,
                sessions: string_list(&claims, SESSIONS_CLAIM)?,
                modes: string_list(&claims, MODES_CLAIM)?,
            })
        }
        .await;
        result.map(Some).map_err(|rejection| inner.reject(Api::Play, rejection, call.peer))
    }

    /// The admin behind a SessionService call: [`Caller::Anonymous`] with
    /// auth off.
    pub async fn admin(&self, call: &Call<'_>) -> Result<Caller, Error> {
        let Some(inner) = &self.inner else { return Ok(Caller::Anonymous) };
        let result = async {
            let token = bearer(call.metadata)?;
            if let Some(line) = inner.api_key(token) {
                return Ok(Caller::ApiKey(line));
            }
            let claims = inner.verify(token).await?;
            // An admin's `sub` names a service, not a player: any string,
            // made safe and short for the audit log.
            let sub = claims.get("sub").and_then(Value::as_str).ok_or(Rejection::BadSubject)?;
            let sub: String = sub.chars().take(64).map(|c| if c.is_ascii_graphic() { c } else { '?' }).collect();
            let admin = match claims.get(&inner.admin_claim) {
                Some(Value::String(scopes)) => scopes.split_whitespace().any(|s| s == inner.admin_value),
                Some(Value::Array(roles)) => roles.iter().any(|r| r.as_str() == Some(&inner.admin_value)),
                _ => false,
            };
            if admin { Ok(Caller::Token(sub)) } else { Err(Rejection::NotAdmin) }
        }
        .await;
        result.map_err(|rejection| inner.reject(Api::Session, rejection, call.peer))
    }

    /// The player id a token-holder joins as, when its token allows the join:
    /// the token's `sub` (a join naming another id is impersonation), into a
    /// session or mode its `gs_sessions` and `gs_modes` allow. `mode_of`
    /// finds the mode of a session joined by id.
    pub fn admit(
        &self,
        token: &PlayerToken,
        requested_id: &str,
        target: &JoinTarget,
        mode_of: impl FnOnce(&str) -> Result<Arc<str>, Error>,
        peer: Option<SocketAddr>,
    ) -> Result<String, Error> {
        let Some(inner) = &self.inner else { return Ok(requested_id.to_owned()) };
        if !requested_id.is_empty() && requested_id != token.sub {
            return Err(inner.reject(Api::Play, Rejection::Impersonation, peer));
        }
        let allowed = match target {
            JoinTarget::Session(id) => {
                let in_sessions = token.sessions.as_ref().is_none_or(|ids| ids.iter().any(|s| s == id));
                let in_modes = match &token.modes {
                    None => true,
                    Some(modes) => {
                        let mode = mode_of(id)?;
                        modes.iter().any(|m| **m == *mode)
                    }
                };
                in_sessions && in_modes
            }
            // A token bound to sessions cannot join-or-create.
            JoinTarget::Mode(mode) => {
                token.sessions.is_none() && token.modes.as_ref().is_none_or(|modes| modes.iter().any(|m| m == mode))
            }
        };
        if !allowed {
            return Err(inner.reject(Api::Play, Rejection::Restricted, peer));
        }
        Ok(token.sub.clone())
    }
}

impl Inner {
    /// The line of the API key `token` is, compared in constant time.
    fn api_key(&self, token: &str) -> Option<usize> {
        let mut found = None;
        for (index, key) in self.api_keys.iter().enumerate() {
            if bool::from(key.as_slice().ct_eq(token.as_bytes())) {
                found = Some(index + 1);
            }
        }
        found
    }

    /// The claims of a token whose signature and time, issuer and audience
    /// claims check out.
    async fn verify(&self, token: &str) -> Result<Map<String, Value>, Rejection> {
        let header = match jsonwebtoken::decode_header(token) {
            Ok(header) => header,
            // `alg: none` (or any algorithm jsonwebtoken lacks) fails here.
            Err(_) if names_an_algorithm(token) => return Err(Rejection::Algorithm),
            Err(_) => return Err(Rejection::Malformed),
        };
        let mut lookup = self.keys.candidates(header.alg, header.kid.as_deref());
        if matches!(lookup, Lookup::UnknownKid) && self.keys.refetch_for_unknown_kid().await {
            lookup = self.keys.candidates(header.alg, header.kid.as_deref());
        }
        let keys = match lookup {
            Lookup::Found(keys) => keys,
            Lookup::UnknownKid => return Err(Rejection::UnknownKey),
            Lookup::WrongAlgorithm => return Err(Rejection::Algorithm),
        };
        let validation = self.validation(header.alg);
        let mut rejection = Rejection::BadSignature;
        for key in &keys {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation) {
                Ok(data) => return Ok(data.claims),
                Err(err) => {
                    // The signature is checked first: any other error means
                    // this key verified it and a claim is wrong.
                    let kind = rejection_of(err.kind());
                    if kind != Rejection::BadSignature {
                        rejection = kind;
                        break;
                    }
                }
            }
        }
        Err(rejection)
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut validation = Validation::new(alg);
        validation.leeway = self.leeway.as_secs();
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        validation
    }

    /// Counts and (rate-limited) logs a refusal, and makes its error.
    fn reject(&self, api: Api, rejection: Rejection, peer: Option<SocketAddr>) -> Error {
        crate::metrics::auth_rejected(api.as_str(), rejection.as_str());
        if let Some(suppressed) = self.log.admit((api, rejection)) {
            let peer = peer.map(|p| p.to_string()).unwrap_or_default();
            warn!(api = api.as_str(), reason = rejection.as_str(), peer, suppressed, "credential refused");
        }
        rejection.error()
    }
}

fn rejection_of(kind: &ErrorKind) -> Rejection {
    match kind {
        ErrorKind::InvalidSignature => Rejection::BadSignature,
        ErrorKind::ExpiredSignature => Rejection::Expired,
        ErrorKind::ImmatureSignature => Rejection::NotYetValid,
        ErrorKind::InvalidIssuer => Rejection::WrongIssuer,
        ErrorKind::InvalidAudience => Rejection::WrongAudience,
        ErrorKind::MissingRequiredClaim(_) => Rejection::MissingClaim,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName | ErrorKind::UnsupportedAlgorithm => {
            Rejection::Algorithm
        }
        _ => Rejection::Malformed,
    }
}

/// The token of `authorization: Bearer <token>`.
fn bearer(metadata: &MetadataMap) -> Result<&str, Rejection> {
    let value = metadata.get("authorization").ok_or(Rejection::Missing)?;
    let value = value.to_str().map_err(|_| Rejection::Malformed)?;
    if value.len() > MAX_TOKEN_LEN {
        return Err(Rejection::Malformed);
    }
    let (scheme, token) = value.split_once(' ').ok_or(Rejection::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Rejection::Malformed);
    }
    match token.trim() {
        "" => Err(Rejection::Missing),
        token => Ok(token),
    }
}

/// True when the token's header is JSON with a string `alg` (one this server
/// cannot use, since the header did not parse).
fn names_an_algorithm(token: &str) -> bool {
    let Some(header) = token.split('.').next() else { return false };
    let Ok(json) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header.trim_end_matches('=')) else {
        return false;
    };
    serde_json::from_slice::<Map<String, Value>>(&json)
        .is_ok_and(|header| header.get("alg").is_some_and(Value::is_string))
}

fn sub(claims: &Map<String, Value>) -> Result<String, Rejection> {
    let sub = claims.get("sub").and_then(Value::as_str).ok_or(Rejection::BadSubject)?;
    crate::api::convert::check_id("sub", sub).map_err(|_| Rejection::BadSubject)?;
    Ok(sub.to_owned())
}

fn string_list(claims: &Map<String, Value>, name: &str) -> Result<Option<Vec<String>>, Rejection> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| item.as_str().map(str::to_owned).ok_or(Rejection::Malformed))
            .collect::<Result<_, _>>()
            .map(Some),
        Some(_) => Err(Rejection::Malformed),
    }
}
