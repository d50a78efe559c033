//! The server's TLS identity: a self-signed certificate made on first start (clients pin its
//! SHA-256, like a Syncthing device id), or a CA-signed one the user provides.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::state::{check_private, write_private, StateDir};
use crate::{Error, Result};

const CERT: &str = "cert.pem";
const KEY: &str = "key.pem";

/// The certificate chain and key the server presents.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// Whether clients pin it (it is ours, self-signed) or verify it against their CA roots.
    pub self_signed: bool,
}

impl Identity {
    /// SHA-256 of the end-entity certificate's DER, lower-case hex: what clients pin, and what
    /// `openssl x509 -noout -fingerprint -sha256` prints (without the colons).
    pub fn fingerprint(&self) -> String {
        self.chain.first().map(|c| hex::encode(Sha256::digest(c.as_ref()))).unwrap_or_default()
    }

    /// The fingerprint as bytes.
    pub fn sha256(&self) -> [u8; 32] {
        self.chain.first().map(|c| Sha256::digest(c.as_ref()).into()).unwrap_or_default()
    }

    pub(crate) fn server_config(&self) -> Result<Arc<rustls::ServerConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Invalid(format!("TLS setup: {e}")))?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| {
                Error::Invalid(format!("the server's certificate and key do not go together: {e}"))
            })?;
        // One request per connection at a time: clients open as many connections as they want
        // requests in flight, and no HTTP/2 flow-control window caps a pack's upload.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The identity in `state`, made on first use (a new ECDSA P-256 key and a self-signed
/// certificate naming `names`, kept 0600).
pub fn self_signed(state: &StateDir, names: &[String]) -> Result<Identity> {
    let (cert_path, key_path) = (state.file(CERT), state.file(KEY));
    // Both or neither: a stop between writing the two makes both again.
    if !key_path.exists() || !cert_path.exists() {
        state.create()?;
        let mut names = names.to_vec();
        if names.is_empty() {
            names.push("bakare-serve".into());
        }
        let made = rcgen::generate_simple_self_signed(names)
            .map_err(|e| Error::Invalid(format!("making the server's certificate: {e}")))?;
        // The key first: a certificate without its key is useless, a key alone is made again.
        write_private(&key_path, made.key_pair.serialize_pem().as_bytes())?;
        write_private(&cert_path, made.cert.pem().as_bytes())?;
    }
    let mut id = load(&cert_path, &key_path)?;
    id.self_signed = true;
    Ok(id)
}

/// A certificate chain and key the user provides (PEM), e.g. from their CA.
pub fn load(cert_path: &Path, key_path: &Path) -> Result<Identity> {
    check_private(key_path)?;
    let pem = fs::read(cert_path).map_err(|e| Error::io(cert_path, e))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Invalid(format!("{}: not a PEM certificate: {e}", cert_path.display())))?;
    if chain.is_empty() {
        return Err(Error::Invalid(format!("{}: no certificate in it", cert_path.display())));
    }
    let key_pem = fs::read(key_path).map_err(|e| Error::io(key_path, e))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| Error::Invalid(format!("{}: not a PEM private key: {e}", key_path.display())))?;
    Ok(Identity { chain, key, self_signed: false })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_is_made_once_and_its_fingerprint_stays() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::new(d.path());
        let a = self_signed(&s, &["nas.local".into()]).unwrap();
        let b = self_signed(&s, &[]).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint().len(), 64);
        assert!(a.self_signed);
        a.server_config().unwrap();
        check_private(&s.file(KEY)).unwrap();
    }

    #[test]
    fn a_key_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::new(d.path());
        self_signed(&s, &[]).unwrap();
        fs::set_permissions(s.file(KEY), fs::Permissions::from_mode(0o644)).unwrap();
        let e = self_signed(&s, &[]).err().unwrap().to_string();
        assert!(e.contains("key.pem") && e.contains("chmod 600"), "{e}");
    }
}
