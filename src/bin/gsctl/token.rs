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
    /// A file holding the HS256 secret (the server's --jwt-hs256-secret-file).
    #[arg(long, env = "GSCTL_JWT_SECRET_FILE")]
    secret_file: Option<PathBuf>,
    /// The HS256 secret itself (prefer the env var or a file: flags show in `ps`).
    #[arg(long, env = "GSCTL_JWT_SECRET", hide_env_values = true, conflicts_with = "secret_file")]
    secret: Option<String>,
}

/// The signed token.
pub fn mint(args: &Token) -> Result<String, Failure> {
    let secret = match (&args.secret, &args.secret_file) {
        (Some(secret), _) => secret.as_bytes().to_vec(),
        (None, Some(path)) => {
            let mut bytes = std::fs::read(path).map_err(|e| format!("--secret-file {}: {e}", path.display()))?;
            // As the server reads it: one trailing newline is not the secret's.
            if bytes.ends_with(b"\n") {
                bytes.pop();
                if bytes.ends_with(b"\r") {
                    bytes.pop();
                }
            }
            bytes
        }
        (None, None) => return Err("give the HS256 secret: --secret-file, or GSCTL_JWT_SECRET".into()),
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut claims = Map::new();
    claims.insert("sub".into(), json!(args.sub));
    claims.insert("iat".into(), json!(now));
    claims.insert("exp".into(), json!(now + args.ttl.as_secs().max(1)));
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
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &Value::Object(claims),
        &EncodingKey::from_secret(&secret),
    )?;
    Ok(token)
}
