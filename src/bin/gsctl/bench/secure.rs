//! What `--secure` gives the game-session it starts: an HS256 secret and a
//! server certificate (ECDSA P-256, for `localhost` and `127.0.0.1`, signed
//! by a CA made for the run), in a directory of their own that is removed
//! with them; and what the bench's clients then need: the CA to trust, and
//! the secret to mint tokens with.

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

use crate::Failure;

/// The secret and certificates of one secure server.
pub struct SecureFiles {
    dir: PathBuf,
    /// The HS256 secret (64 random hex characters).
    pub secret: Vec<u8>,
    /// The CA certificate (PEM) the clients trust.
    pub ca_pem: String,
}

impl SecureFiles {
    /// Generates them in a new directory under the system's temp dir, readable
    /// by this user only.
    pub fn create() -> Result<SecureFiles, Failure> {
        let name = format!("gsctl-bench-{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
        let dir = std::env::temp_dir().join(name);
        DirBuilder::new().mode(0o700).create(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        // From here on, dropping `files` removes the directory.
        let mut files = SecureFiles { dir, secret: Vec::new(), ca_pem: String::new() };

        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.distinguished_name.push(DnType::CommonName, "gsctl bench CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate()?;
        files.ca_pem = ca_params.self_signed(&ca_key)?.pem();
        let issuer = Issuer::new(ca_params, ca_key);

        let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
        params.distinguished_name.push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        files.write("server.pem", cert.pem().as_bytes())?;
        files.write("server.key", key.serialize_pem().as_bytes())?;

        let secret = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
        files.write("jwt-secret", secret.as_bytes())?;
        files.secret = secret.into_bytes();
        Ok(files)
    }

    /// The server's flags: auth with the secret, TLS with the certificate.
    pub fn server_args(&self) -> Vec<String> {
        let path = |name: &str| self.path(name).display().to_string();
        vec![
            "--jwt-hs256-secret-file".into(),
            path("jwt-secret"),
            "--tls-cert-file".into(),
            path("server.pem"),
            "--tls-key-file".into(),
            path("server.key"),
        ]
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn write(&self, name: &str, contents: &[u8]) -> Result<(), Failure> {
        let path = self.path(name);
        let context = |e: std::io::Error| format!("{}: {e}", path.display());
        let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).map_err(context)?;
        file.write_all(contents).map_err(context)?;
        Ok(())
    }
}

impl Drop for SecureFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
