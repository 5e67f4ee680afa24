//! TLS on the gRPC addresses, with rustls and its `ring` provider (the one
//! crypto provider of the whole binary), certificates reloaded from disk
//! when they change, and optional client-certificate verification (mutual
//! TLS) on the backend address.
//!
//! Handshakes run in their own tasks with a deadline ([`crate::connections`]
//! accepts and hands them over), so a client that stalls mid-handshake holds
//! nothing but its own socket.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::TlsConfig;
use crate::error::BoxError;
use crate::telemetry::Throttle;

/// How long a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections accepted whose handshakes have not finished, per address.
pub(crate) const HANDSHAKES_IN_FLIGHT: usize = 1024;

/// The process's one rustls crypto provider.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes `ring` the process-wide default provider, for code that asks for
/// the default (tonic's client TLS among it). Idempotent.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Every certificate in a PEM file.
pub fn certificates(path: &Path, flag: &str) -> Result<Vec<CertificateDer<'static>>, BoxError> {
    let context = |e: &dyn std::fmt::Display| format!("{} ({flag}): {e}", path.display());
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| context(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| context(&e))?;
    if certs.is_empty() {
        return Err(context(&"no PEM certificate in it").into());
    }
    Ok(certs)
}

/// An HTTPS-only connector (HTTP/1.1) for the server's own outbound calls
/// (the JWKS, an OTLP/HTTP collector): the system's roots plus `extra_roots`,
/// and a client certificate when `identity` is given.
pub(crate) fn https_connector(
    extra_roots: Vec<CertificateDer<'static>>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, BoxError> {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    for cert in extra_roots {
        roots.add(cert)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
    };
    Ok(hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config).https_only().enable_http1().build())
}

/// The server TLS settings of the main and backend addresses, swapped whole
/// when the files change; each new connection takes the current ones.
pub struct Tls {
    cert_file: PathBuf,
    key_file: PathBuf,
    client_ca_file: Option<PathBuf>,
    reload_interval: Duration,
    /// (main, backend) configs. A std lock: held only to clone or swap.
    configs: RwLock<(Arc<ServerConfig>, Arc<ServerConfig>)>,
}

impl Tls {
    /// Reads the files; `None` when TLS is off.
    pub fn from_config(config: &TlsConfig) -> Result<Option<Arc<Tls>>, BoxError> {
        let (Some(cert_file), Some(key_file)) = (&config.tls_cert_file, &config.tls_key_file) else {
            return Ok(None);
        };
        let tls = Tls {
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
            client_ca_file: config.tls_client_ca_file.clone(),
            reload_interval: config.tls_reload_interval,
            configs: RwLock::new(Self::load(cert_file, key_file, config.tls_client_ca_file.as_deref())?),
        };
        Ok(Some(Arc::new(tls)))
    }

    fn load(
        cert_file: &Path,
        key_file: &Path,
        client_ca_file: Option<&Path>,
    ) -> Result<(Arc<ServerConfig>, Arc<ServerConfig>), BoxError> {
        let chain = certificates(cert_file, "--tls-cert-file")?;
        let key = PrivateKeyDer::from_pem_file(key_file)
            .map_err(|e| format!("{} (--tls-key-file): {e}", key_file.display()))?;
        let builder = || ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions();
        let finish = |mut config: ServerConfig| {
            config.alpn_protocols = vec![b"h2".to_vec()];
            Arc::new(config)
        };
        let main = builder()?
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| format!("--tls-cert-file and --tls-key-file: {e}"))?;
        let backend = match client_ca_file {
            None => main.clone(),
            Some(ca_file) => {
                let mut roots = RootCertStore::empty();
                for cert in certificates(ca_file, "--tls-client-ca-file")? {
                    roots.add(cert).map_err(|e| format!("{} (--tls-client-ca-file): {e}", ca_file.display()))?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                    .build()
                    .map_err(|e| format!("--tls-client-ca-file: {e}"))?;
                builder()?
                    .with_client_cert_verifier(verifier)
                    .with_single_cert(chain, key)
                    .map_err(|e| format!("--tls-cert-file and --tls-key-file: {e}"))?
            }
        };
        Ok((finish(main), finish(backend)))
    }

    fn current(&self, backend: bool) -> Arc<ServerConfig> {
        let configs = self.configs.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        if backend { configs.1.clone() } else { configs.0.clone() }
    }

    /// Reads the files every reload interval until `stop`, and serves what
    /// changed to new connections. Files caught mid-write, or broken, are
    /// logged and the last good certificates kept.
    pub async fn reload(self: Arc<Self>, stop: CancellationToken) {
        let mut seen = self.fingerprint();
        let mut ticks = crate::Ticks::new(self.reload_interval, stop);
        while ticks.next().await {
            let now = self.fingerprint();
            if now == seen {
                continue;
            }
            match Self::load(&self.cert_file, &self.key_file, self.client_ca_file.as_deref()) {
                Ok(configs) => {
                    *self.configs.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = configs;
                    seen = now;
                    crate::metrics::tls_reloaded(true);
                    info!(cert = %self.cert_file.display(), "TLS certificates reloaded");
                }
                Err(err) => {
                    crate::metrics::tls_reloaded(false);
                    warn!(error = %err, "cannot reload the TLS certificates; serving the previous ones");
                }
            }
        }
    }

    /// The files' contents, to notice a change (Kubernetes swaps a Secret's
    /// files through a symlink, which leaves mtimes unreliable).
    fn fingerprint(&self) -> Vec<Option<Vec<u8>>> {
        [Some(&self.cert_file), Some(&self.key_file), self.client_ca_file.as_ref()]
            .into_iter()
            .flatten()
            .map(|path| std::fs::read(path).ok())
            .collect()
    }

    /// An acceptor with the current settings, for one new connection:
    /// the backend's (client certificates, when configured) when `backend`.
    pub(crate) fn acceptor(&self, backend: bool) -> TlsAcceptor {
        TlsAcceptor::from(self.current(backend))
    }
}

/// Counts a failed handshake, and logs it at most once a second per reason.
pub(crate) fn handshake_failed(reason: &'static str, peer: std::net::SocketAddr, error: &str) {
    static LOG: std::sync::LazyLock<Throttle<&'static str>> = std::sync::LazyLock::new(Throttle::default);
    crate::metrics::tls_handshake_failed(reason);
    if let Some(suppressed) = LOG.admit(reason) {
        // rustls's error names the failure (e.g. no client certificate);
        // it carries nothing of the client's own bytes.
        warn!(%peer, reason, error, suppressed, "TLS handshake failed");
    }
}
