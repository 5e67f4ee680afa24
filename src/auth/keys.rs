//! The keys that verify tokens: the HS256 secret and PEM public keys (read
//! once at start), and a JWKS document from a file or an `https://` URL,
//! read again on an interval and, rate-limited, when a token names a key id
//! it does not hold.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use tracing::{info, warn};

use crate::config::AuthConfig;
use crate::error::BoxError;

/// The shortest HS256 secret accepted: RFC 7518 §3.2 asks for a key at least
/// as long as the hash.
pub const MIN_SECRET_LEN: usize = 32;
/// The largest JWKS document fetched or read.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// How long one JWKS fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// One verification key and the algorithms it may verify.
#[derive(Clone)]
pub struct Key {
    /// The algorithms this key verifies: its family's, or the one its JWK
    /// names.
    pub algorithms: Vec<Algorithm>,
    pub key: DecodingKey,
}

impl Key {
    fn new(key: DecodingKey, only: Option<Algorithm>) -> Self {
        let algorithms = match only {
            Some(alg) => vec![alg],
            None => key.family().algorithms().to_vec(),
        };
        Key { algorithms, key }
    }

    /// True when this key may verify a token signed with `alg`. Keys never
    /// cross families, which is what stops algorithm confusion (an HS256
    /// token "signed" with an RSA public key).
    pub fn verifies(&self, alg: Algorithm) -> bool {
        self.key.family() == alg.family() && self.algorithms.contains(&alg)
    }
}

/// The keys of a JWKS document.
#[derive(Default)]
struct JwksKeys {
    by_kid: HashMap<String, Key>,
    without_kid: Vec<Key>,
}

/// Every key the server verifies tokens with.
pub struct KeyStore {
    /// The HS256 secret and PEM keys: fixed for the process's life.
    fixed: Vec<Key>,
    /// The current JWKS keys, swapped whole on each read. A std lock: held
    /// only to clone a key or swap the map, never across an `.await`.
    jwks: RwLock<Arc<JwksKeys>>,
    source: Option<JwksSource>,
    refresh_interval: Duration,
    refetch_min_interval: Duration,
    /// When the JWKS was last read because of an unknown key id; the lock
    /// also makes concurrent unknown-kid tokens share one read.
    last_refetch: tokio::sync::Mutex<Option<Instant>>,
}

/// Where the JWKS comes from.
enum JwksSource {
    File(PathBuf),
    Url { url: hyper::Uri, client: Box<Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>> },
}

impl KeyStore {
    /// Reads the secret and PEM files, and the JWKS once. A JWKS that cannot
    /// be fetched yet is not fatal (the identity provider may come up later):
    /// tokens needing it are refused until a read succeeds.
    pub async fn load(config: &AuthConfig) -> Result<Self, BoxError> {
        let mut fixed = Vec::new();
        let secret = match (&config.jwt_hs256_secret, &config.jwt_hs256_secret_file) {
            (Some(secret), _) => Some(secret.as_bytes().to_vec()),
            (None, Some(path)) => Some(
                read_secret_file(path)
                    .map_err(|e| format!("cannot read {} (--jwt-hs256-secret-file): {e}", path.display()))?,
            ),
            (None, None) => None,
        };
        if let Some(secret) = secret {
            if secret.len() < MIN_SECRET_LEN {
                return Err(format!("the HS256 secret must be at least {MIN_SECRET_LEN} bytes").into());
            }
            fixed.push(Key::new(DecodingKey::from_secret(&secret), None));
        }
        for path in &config.jwt_public_key_file {
            let pem = read(path, "--jwt-public-key-file")?;
            let key = DecodingKey::from_rsa_pem(&pem)
                .or_else(|_| DecodingKey::from_ec_pem(&pem))
                .or_else(|_| DecodingKey::from_ed_pem(&pem))
                .map_err(|_| format!("{}: not a PEM RSA, EC or Ed25519 public key", path.display()))?;
            fixed.push(Key::new(key, None));
        }
        let source = if let Some(path) = &config.jwks_file {
            Some(JwksSource::File(path.clone()))
        } else if let Some(url) = &config.jwks_url {
            let url = url.parse().map_err(|e| format!("--jwks-url: {e}"))?;
            Some(JwksSource::Url { url, client: Box::new(https_client(config.jwks_ca_file.as_deref())?) })
        } else {
            None
        };
        let store = KeyStore {
            fixed,
            jwks: RwLock::default(),
            source,
            refresh_interval: config.jwks_refresh_interval,
            refetch_min_interval: config.jwks_refetch_min_interval,
            last_refetch: tokio::sync::Mutex::new(None),
        };
        match &store.source {
            Some(JwksSource::File(path)) => {
                // A file is ours to get right: a bad one stops the start.
                let keys = parse_jwks(&read(path, "--jwks-file")?)?;
                store.swap(keys);
            }
            Some(JwksSource::Url { .. }) => {
                if let Err(err) = store.reload().await {
                    warn!(error = %err, "cannot fetch the JWKS yet; tokens signed with its keys are refused until it can");
                }
            }
            None => {}
        }
        Ok(store)
    }

    /// The keys that may verify a token with this header: by key id when the
    /// token names one, else every key of its algorithm.
    pub fn candidates(&self, alg: Algorithm, kid: Option<&str>) -> Lookup {
        let jwks = self.jwks.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        let keys: Vec<Key> = match kid {
            Some(kid) => {
                if let Some(key) = jwks.by_kid.get(kid) {
                    return if key.verifies(alg) { Lookup::Found(vec![key.clone()]) } else { Lookup::WrongAlgorithm };
                }
                // The secret and PEM keys have no ids: they may have signed it.
                let fixed: Vec<Key> = self.fixed.iter().filter(|key| key.verifies(alg)).cloned().collect();
                if fixed.is_empty() && self.source.is_some() {
                    return Lookup::UnknownKid;
                }
                fixed
            }
            None => self
                .fixed
                .iter()
                .chain(jwks.without_kid.iter())
                .chain(jwks.by_kid.values())
                .filter(|key| key.verifies(alg))
                .cloned()
                .collect(),
        };
        if keys.is_empty() { Lookup::WrongAlgorithm } else { Lookup::Found(keys) }
    }

    /// Reads the JWKS again because a token named an unknown key id, unless
    /// that happened less than `--jwks-refetch-min-interval` ago. Returns
    /// whether the keys may have changed since the call: it read them, or
    /// another call read them while this one waited.
    pub async fn refetch_for_unknown_kid(&self) -> bool {
        let asked = Instant::now();
        let mut last = self.last_refetch.lock().await;
        match *last {
            Some(at) if at >= asked => return true,
            Some(at) if at.elapsed() < self.refetch_min_interval => return false,
            _ => {}
        }
        *last = Some(Instant::now());
        match self.reload().await {
            Ok(()) => true,
            Err(err) => {
                warn!(error = %err, "cannot read the JWKS again for an unknown key id");
                false
            }
        }
    }

    /// Reads the JWKS every refresh interval until `stop` is cancelled; a
    /// failed read keeps the keys of the last good one.
    pub async fn refresh(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        if self.source.is_none() {
            return;
        }
        let mut ticks = crate::Ticks::new(self.refresh_interval, stop);
        while ticks.next().await {
            if let Err(err) = self.reload().await {
                crate::metrics::jwks_refresh_failed();
                warn!(error = %err, "cannot read the JWKS; keeping the keys of the last good read");
            }
        }
    }

    async fn reload(&self) -> Result<(), BoxError> {
        let document = match &self.source {
            None => return Ok(()),
            Some(JwksSource::File(path)) => read(path, "--jwks-file")?,
            Some(JwksSource::Url { url, client }) => fetch(client, url).await?,
        };
        let keys = parse_jwks(&document)?;
        info!(keys = keys.by_kid.len() + keys.without_kid.len(), "read the JWKS");
        self.swap(keys);
        Ok(())
    }

    fn swap(&self, keys: JwksKeys) {
        *self.jwks.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(keys);
    }
}

/// What [`KeyStore::candidates`] found.
pub enum Lookup {
    /// Keys to try, in order.
    Found(Vec<Key>),
    /// The token names a key id the JWKS does not hold.
    UnknownKid,
    /// No key verifies this algorithm (or the named key is for another).
    WrongAlgorithm,
}

/// A secret from a file, without the one trailing newline (`\n` or `\r\n`)
/// an editor or `echo` leaves: the server and `gsctl token` read it alike.
pub fn read_secret_file(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = std::fs::read(path)?;
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    Ok(bytes)
}

fn read(path: &Path, flag: &str) -> Result<Vec<u8>, BoxError> {
    std::fs::read(path).map_err(|e| format!("cannot read {} ({flag}): {e}", path.display()).into())
}

/// The signing keys of a JWKS document. Keys for encryption, symmetric keys
/// (a shared secret has no place in a published key set) and keys of
/// unsupported types are skipped.
fn parse_jwks(document: &[u8]) -> Result<JwksKeys, BoxError> {
    if document.len() > MAX_JWKS_BYTES {
        return Err(format!("the JWKS is larger than {MAX_JWKS_BYTES} bytes").into());
    }
    let set: JwkSet = serde_json::from_slice(document).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = JwksKeys::default();
    for jwk in &set.keys {
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption))
            || matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_))
        {
            continue;
        }
        let only = match &jwk.common.key_algorithm {
            Some(alg) => match alg.to_string().parse::<Algorithm>() {
                Ok(alg) => Some(alg),
                Err(_) => continue,
            },
            None => None,
        };
        let Ok(key) = DecodingKey::from_jwk(jwk) else { continue };
        let key = Key::new(key, only);
        match &jwk.common.key_id {
            Some(kid) => {
                keys.by_kid.insert(kid.clone(), key);
            }
            None => keys.without_kid.push(key),
        }
    }
    Ok(keys)
}

/// An HTTPS-only client trusting the system's roots and `extra_ca`.
fn https_client(
    extra_ca: Option<&Path>,
) -> Result<Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>, BoxError> {
    let extra = match extra_ca {
        Some(path) => crate::tls::certificates(path, "--jwks-ca-file")?,
        None => Vec::new(),
    };
    let connector = crate::tls::https_connector(extra, None).map_err(|e| format!("--jwks-ca-file: {e}"))?;
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

async fn fetch(
    client: &Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>,
    url: &hyper::Uri,
) -> Result<Vec<u8>, BoxError> {
    let get = async {
        let response = client.get(url.clone()).await.map_err(|e| format!("GET {url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("GET {url}: HTTP {}", response.status()).into());
        }
        let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        Ok::<_, BoxError>(body.to_bytes().to_vec())
    };
    tokio::time::timeout(FETCH_TIMEOUT, get)
        .await
        .map_err(|_| format!("GET {url}: no answer within {FETCH_TIMEOUT:?}"))?
}
