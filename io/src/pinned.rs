//! pinned: an HTTPS client for object_store that trusts exactly one server certificate, the one
//! whose DER has the SHA-256 this machine joined with (joined.rs), whatever its names, issuer or
//! dates. The handshake's signatures are still verified (ring), so only the holder of that
//! certificate's key gets through.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use object_store::client::{HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse};
use object_store::ClientOptions;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

/// The server presented another certificate than the pinned one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the server at {host_port} presented a certificate with SHA-256 {got}, but this machine joined it \
     with {pinned}: refusing to connect (a different server, or it made a new certificate; join again \
     with a new invitation)"
)]
pub struct PinMismatch {
    pub host_port: String,
    pub got: String,
    pub pinned: String,
}

/// Accepts the server whose end-entity certificate hashes to `pin`.
#[derive(Debug)]
pub struct PinVerifier {
    host_port: String,
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl PinVerifier {
    pub fn new(host_port: &str, pin: [u8; 32]) -> PinVerifier {
        PinVerifier {
            host_port: host_port.to_string(),
            pin,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        }
    }
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        // Not secret: comparing two public fingerprints needs no constant time.
        if got == self.pin {
            return Ok(ServerCertVerified::assertion());
        }
        let mismatch = PinMismatch {
            host_port: self.host_port.clone(),
            got: hex::encode(got),
            pinned: hex::encode(self.pin),
        };
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
            mismatch,
        )))))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS client configuration (ring, TLS 1.2 and 1.3) that trusts only the pinned certificate.
pub fn client_config(host_port: &str, pin: [u8; 32]) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinVerifier::new(host_port, pin)))
        .with_no_client_auth();
    // What reqwest offers with its own TLS set-up (it adds none to a preconfigured one).
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The pin mismatch somewhere in `e`'s chain. rustls' error travels inside an `io::Error`, whose
/// `source()` skips it, so those are opened with `get_ref`.
pub fn mismatch_in<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a PinMismatch> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(m) = e.downcast_ref::<PinMismatch>() {
            return Some(m);
        }
        let wrapped = e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref());
        if let Some(found) = wrapped.and_then(|w| mismatch_in(w as &(dyn std::error::Error + 'static))) {
            return Some(found);
        }
        if let Some(rustls::Error::InvalidCertificate(CertificateError::Other(other))) =
            e.downcast_ref::<rustls::Error>()
        {
            if let Some(found) = std::error::Error::source(other).and_then(mismatch_in) {
                return Some(found);
            }
        }
        next = e.source();
    }
    None
}

/// One GET to a pinned server outside any repository (`bakare serve`'s pairing exchange): the
/// status and the body, which may be at most 64 KiB. The error says what failed, a certificate
/// other than the pinned one included.
pub fn get(url: &str, host_port: &str, pin: [u8; 32], timeout: Duration) -> Result<(u16, Vec<u8>), String> {
    get_with(url, &[], host_port, pin, timeout)
}

/// `get` with extra request headers.
pub fn get_with(
    url: &str,
    headers: &[(&str, String)],
    host_port: &str,
    pin: [u8; 32],
    timeout: Duration,
) -> Result<(u16, Vec<u8>), String> {
    let tls = client_config(host_port, pin).map_err(|e| format!("TLS set-up for {host_port}: {e}"))?;
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .connect_timeout(timeout)
        .timeout(timeout)
        .https_only(true)
        // The pinned server answers itself; it does not send this machine elsewhere.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("HTTPS client for {host_port}: {e}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting a runtime: {e}"))?;
    rt.block_on(async {
        // Without the URL: its query can hold a secret (a pairing token).
        let said = |e: reqwest::Error| match mismatch_in(&e) {
            Some(m) => m.to_string(),
            None => format!("{host_port}: {}", error_chain(&e.without_url())),
        };
        let mut request = client.get(url);
        for (k, v) in headers {
            request = request.header(*k, v);
        }
        let mut r = request.send().await.map_err(said)?;
        let status = r.status().as_u16();
        let mut body = Vec::new();
        while let Some(piece) = r.chunk().await.map_err(said)? {
            if body.len() + piece.len() > 64 << 10 {
                return Err(format!("{host_port}: the answer is larger than 64 KiB"));
            }
            body.extend_from_slice(&piece);
        }
        Ok((status, body))
    })
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut next = e.source();
    while let Some(e) = next {
        s.push_str(": ");
        s.push_str(&e.to_string());
        next = e.source();
    }
    s
}

/// object_store's HTTP client for a pinned server: reqwest with `client_config`, the connect and
/// request timeouts of the tuning, https only.
#[derive(Debug)]
pub struct PinnedConnector {
    pub host_port: String,
    pub pin: [u8; 32],
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
}

impl HttpConnector for PinnedConnector {
    fn connect(&self, _options: &ClientOptions) -> object_store::Result<HttpClient> {
        let setup = |e: &dyn std::fmt::Display| object_store::Error::Generic {
            store: "S3",
            source: format!("HTTPS client for {}: {e}", self.host_port).into(),
        };
        let tls = client_config(&self.host_port, self.pin).map_err(|e| setup(&e))?;
        // As object_store's own client (ClientOptions::client): no transparent decompression,
        // which would break Content-Length.
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(self.connect_timeout)
            .timeout(self.request_timeout)
            .https_only(true)
            .no_gzip()
            .no_brotli()
            .no_zstd()
            .no_deflate()
            .build()
            .map_err(|e| setup(&e))?;
        Ok(HttpClient::new(Pinned { client }))
    }
}

/// Requests through reqwest; a failure that is a pin mismatch is said as one and is of a kind
/// object_store does not retry (a connect error would be, for its whole retry budget).
#[derive(Debug)]
struct Pinned {
    client: reqwest::Client,
}

#[async_trait::async_trait]
impl object_store::client::HttpService for Pinned {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let e = match object_store::client::HttpService::call(&self.client, req).await {
            Ok(r) => return Ok(r),
            Err(e) => e,
        };
        match mismatch_in(&e).cloned() {
            Some(m) => Err(HttpError::new(HttpErrorKind::Unknown, m)),
            None => Err(e),
        }
    }
}

/// A TLS server with a self-signed certificate, for the tests here and in s3.rs.
#[cfg(test)]
pub(crate) mod test_server {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A self-signed P-256 certificate for `localhost` (valid 2026-2126) and its key (PKCS#8),
    /// made with `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days
    /// 36500 -subj /CN=bakare-test -addext subjectAltName=DNS:localhost`.
    pub(crate) const CERT: &[u8] = include_bytes!("testdata/pinned-cert.der");
    const KEY: &[u8] = include_bytes!("testdata/pinned-key.der");

    pub fn fingerprint() -> [u8; 32] {
        Sha256::digest(CERT).into()
    }

    /// A TLS server on 127.0.0.1 that answers every request with `404 Not Found`; returns its
    /// port and how many handshakes it completed.
    pub fn server(rt: &tokio::runtime::Runtime) -> (u16, Arc<AtomicUsize>) {
        use rustls::pki_types::PrivateKeyDer;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = PrivateKeyDer::Pkcs8(KEY.to_vec().into());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![CertificateDer::from(CERT.to_vec())], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let port = listener.local_addr().unwrap().port();
        let handshakes = Arc::new(AtomicUsize::new(0));
        let counted = handshakes.clone();
        rt.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let (acceptor, counted) = (acceptor.clone(), counted.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    counted.fetch_add(1, Ordering::SeqCst);
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        let Ok(n) = tls.read(&mut buf).await else { return };
                        if n == 0 {
                            return;
                        }
                        request.extend_from_slice(&buf[..n]);
                        if request.windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                    let reply = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
                    let _ = tls.write_all(reply).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        (port, handshakes)
    }
}

#[cfg(test)]
mod tests {
    use super::test_server::{fingerprint, server};
    use super::*;
    use std::sync::atomic::Ordering;

    fn handshake(rt: &tokio::runtime::Runtime, port: u16, pin: [u8; 32]) -> std::io::Result<()> {
        let config = client_config(&format!("127.0.0.1:{port}"), pin).unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        rt.block_on(async {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            // Any name: the verifier does not look at it.
            let name = ServerName::try_from("not-the-servers-name.example").unwrap();
            connector.connect(name, tcp).await.map(drop)
        })
    }

    #[test]
    fn only_the_pinned_certificate_is_accepted() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (port, handshakes) = server(&rt);
        // The server's side of a TLS 1.3 handshake ends just after the client's.
        let completed = |n: usize| {
            (0..200).any(|_| {
                std::thread::sleep(std::time::Duration::from_millis(10));
                handshakes.load(Ordering::SeqCst) == n
            })
        };
        handshake(&rt, port, fingerprint()).unwrap();
        assert!(completed(1));

        let mut wrong = fingerprint();
        wrong[0] ^= 1;
        let e = handshake(&rt, port, wrong).unwrap_err();
        let m = mismatch_in(&e).expect("the mismatch is in the error");
        assert_eq!(m.got, hex::encode(fingerprint()));
        assert_eq!(m.pinned, hex::encode(wrong));
        // rustls says it with Debug ("invalid peer certificate: Other(OtherError(PinMismatch {..")),
        // so `Pinned` takes it out for object_store (s3.rs tests the whole message).
        let text = m.to_string();
        assert!(
            text.contains(&format!(
                "the server at 127.0.0.1:{port} presented a certificate with SHA-256 {}, but this machine \
                 joined it with {}: refusing to connect",
                hex::encode(fingerprint()),
                hex::encode(wrong)
            )),
            "{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert_eq!(
            handshakes.load(Ordering::SeqCst),
            1,
            "the server finished a handshake the client refused"
        );
    }

    /// A man in the middle who copied the pinned certificate but not its key presents it and
    /// signs the handshake with a key of his own: the signature check refuses him.
    #[test]
    fn the_pinned_certificate_without_its_key_is_refused() {
        use rustls::pki_types::PrivateKeyDer;
        use rustls::server::{ClientHello, ResolvesServerCert};
        use rustls::sign::CertifiedKey;

        #[derive(Debug)]
        struct Fixed(Arc<CertifiedKey>);
        impl ResolvesServerCert for Fixed {
            fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
                Some(self.0.clone())
            }
        }

        let rng = ring::rand::SystemRandom::new();
        let alg = &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING;
        let other = ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let provider = rustls::crypto::ring::default_provider();
        let signer = provider
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(other.as_ref().to_vec().into()))
            .unwrap();
        let cert = CertificateDer::from(super::test_server::CERT.to_vec());
        let certified = Arc::new(CertifiedKey::new(vec![cert], signer));
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Fixed(certified)));
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let rt = tokio::runtime::Runtime::new().unwrap();
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let port = listener.local_addr().unwrap().port();
        rt.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move { drop(acceptor.accept(tcp).await) });
            }
        });
        let e = handshake(&rt, port, fingerprint()).unwrap_err();
        assert!(mismatch_in(&e).is_none(), "the certificate is the pinned one: {e}");
        let text = format!("{e:?}").to_lowercase();
        assert!(text.contains("signature"), "{text}");
    }
}
