//! HTTPS for the sandbox (`payrun sandbox --tls`): a self-signed certificate for this machine
//! (localhost, 127.0.0.1, ::1), generated once and kept in a folder so that the file a user
//! passes to `payrun run --ca-file` stays valid across restarts of the sandbox.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::rustls;

/// The certificate's file in the folder (what `--ca-file` takes) and its key's.
pub const CERT_FILE: &str = "sandbox-cert.pem";
pub const KEY_FILE: &str = "sandbox-key.pem";

/// A certificate and its private key, PEM.
#[derive(Clone)]
pub struct SelfSigned {
    pub cert_pem: String,
    pub key_pem: String,
}

impl SelfSigned {
    /// A new certificate for the names this machine answers to.
    pub fn generate() -> Result<SelfSigned, String> {
        let names = ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec();
        let c = rcgen::generate_simple_self_signed(names)
            .map_err(|e| format!("cannot generate a certificate: {e}"))?;
        Ok(SelfSigned {
            cert_pem: c.cert.pem(),
            key_pem: c.key_pair.serialize_pem(),
        })
    }

    /// The certificate kept in `dir`, or a new one written there (the key readable by its
    /// owner only). Returns it with the certificate's path.
    pub fn load_or_create(dir: &Path) -> Result<(SelfSigned, PathBuf), String> {
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        if let (Ok(cert_pem), Ok(key_pem)) = (
            std::fs::read_to_string(&cert_path),
            std::fs::read_to_string(&key_path),
        ) {
            let kept = SelfSigned { cert_pem, key_pem };
            if kept.server_config().is_ok() {
                return Ok((kept, cert_path));
            }
        }
        let new = SelfSigned::generate()?;
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        write_private(&key_path, &new.key_pem)?;
        std::fs::write(&cert_path, &new.cert_pem)
            .map_err(|e| format!("cannot write {}: {e}", cert_path.display()))?;
        Ok((new, cert_path))
    }

    /// The server side: this certificate, HTTP/1.1 only (the sandbox's server speaks nothing
    /// else), rustls with ring.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, String> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("the sandbox certificate is not PEM: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| format!("the sandbox key is not PEM: {e}"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
            .map_err(|e| format!("cannot use the sandbox certificate: {e}"))?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}

fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o.open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}
