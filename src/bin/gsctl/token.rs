//! `gsctl token`: mints an HS256 token for development, signed with the
//! server's shared secret, so that trying auth takes two commands.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value, json};

use crate::Failure;

/// What the token says.
#[derive(Debug, Args)]
pub struct Token {
    /// The player id (`sub`) the token is for; an admin's name for audit lines.
    #[arg(long)]
    sub: String,
    /// Grant admin rights (SessionService): sets `--admin-claim` to `--admin-claim-value`.
    #[arg(long)]
    admin: bool,
    /// The claim the server reads admin rights from (its `--admin-claim`).
    #[arg(long, default_value = "scope")]
    admin_claim: String,
    /// The admin value of that claim (the server's `--admin-claim-value`).
    #[arg(long, default_value = "game-session:admin")]
    admin_claim_value: String,
    /// How long the token is valid (`exp`).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// The issuer (`iss`), if the server checks one.
    #[arg(long)]
    issuer: Option<String>,
    /// The audience (`aud`), if the server checks one.
    #[arg(long)]
    audience: Option<String>,
    /// Only this session may be joined (`gs_sessions`); repeat for more.
    #[arg(long = "session")]
    sessions: Vec<String>,
    /// Only sessions of this mode may be joined (`gs_modes`); repeat for more.
    #[arg(long = "mode")]
    modes: Vec<String>,
    #[command(flatten)]
    secret: Secret,
}

/// The HS256 secret tokens are signed with: the server's
/// `--jwt-hs256-secret-file` (or `--jwt-hs256-secret`).
#[derive(Debug, Args)]
pub struct Secret {
    /// A file holding the HS256 secret (the server's --jwt-hs256-secret-file).
    #[arg(long, env = "GSCTL_JWT_SECRET_FILE")]
    secret_file: Option<PathBuf>,
    /// The HS256 secret itself (prefer the env var or a file: flags show in `ps`).
    #[arg(long, env = "GSCTL_JWT_SECRET", hide_env_values = true, conflicts_with = "secret_file")]
    secret: Option<String>,
}

impl Secret {
    /// The secret's bytes, if one is given.
    pub fn bytes(&self) -> Result<Option<Vec<u8>>, Failure> {
        match (&self.secret, &self.secret_file) {
            (Some(secret), _) => Ok(Some(secret.as_bytes().to_vec())),
            (None, Some(path)) => Ok(Some(
                game_session::auth::read_secret_file(path)
                    .map_err(|e| format!("--secret-file {}: {e}", path.display()))?,
            )),
            (None, None) => Ok(None),
        }
    }
}

/// The signed token.
pub fn mint(args: &Token) -> Result<String, Failure> {
    let secret = args.secret.bytes()?.ok_or("give the HS256 secret: --secret-file, or GSCTL_JWT_SECRET")?;
    let mut claims = Map::new();
    if args.admin {
        claims.insert(args.admin_claim.clone(), json!(args.admin_claim_value));
    }
    if let Some(issuer) = &args.issuer {
        claims.insert("iss".into(), json!(issuer));
    }
    if let Some(audience) = &args.audience {
        claims.insert("aud".into(), json!(audience));
    }
    if !args.sessions.is_empty() {
        claims.insert(game_session::auth::SESSIONS_CLAIM.into(), json!(args.sessions));
    }
    if !args.modes.is_empty() {
        claims.insert(game_session::auth::MODES_CLAIM.into(), json!(args.modes));
    }
    Signer::new(&secret, args.ttl).sign(&args.sub, claims)
}

/// Signs HS256 tokens with one secret; the bench mints a token per player
/// with it.
pub struct Signer {
    key: EncodingKey,
    ttl: Duration,
}

impl Signer {
    /// Tokens valid for `ttl` (at least a second), signed with `secret`.
    pub fn new(secret: &[u8], ttl: Duration) -> Self {
        Signer { key: EncodingKey::from_secret(secret), ttl }
    }

    /// A player's token: `sub` is its id.
    pub fn player(&self, sub: &str) -> Result<String, Failure> {
        self.sign(sub, Map::new())
    }

    /// An admin token with the server's default admin claim.
    pub fn admin(&self, sub: &str) -> Result<String, Failure> {
        self.sign(sub, [("scope".to_owned(), json!("game-session:admin"))].into_iter().collect())
    }

    /// A token for `sub` with `claims` besides `sub`, `iat` and `exp`.
    fn sign(&self, sub: &str, mut claims: Map<String, Value>) -> Result<String, Failure> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        claims.insert("sub".into(), json!(sub));
        claims.insert("iat".into(), json!(now));
        claims.insert("exp".into(), json!(now + self.ttl.as_secs().max(1)));
        Ok(jsonwebtoken::encode(&Header::new(Algorithm::HS256), &Value::Object(claims), &self.key)?)
    }
}
