//! The rustls client configuration of a receiver: trust roots, client
//! certificate, a pinned server name, or no verification at all when asked.
//! A self-signed server certificate given as `ca_file` is trusted as exactly
//! that certificate (how most internal webhook servers are pinned, and what
//! Go's client, so Alertmanager, accepts).

pub mod server;

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// TLS settings with the PEM files already read.
#[derive(Debug, Default, Clone)]
pub struct TlsMaterial {
    pub insecure_skip_verify: bool,
    /// Trust only these CAs instead of the built-in Mozilla roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate chain and key, both PEM, for mutual TLS.
    pub client_pem: Option<(Vec<u8>, Vec<u8>)>,
    /// Verify the server's certificate for this name instead of the URL's host.
    pub server_name: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("ca_file: {0}")]
    Ca(String),
    #[error("cert_file: {0}")]
    Cert(String),
    #[error("key_file: {0}")]
    Key(String),
    #[error("server_name: {0:?} is not a valid DNS name or IP address")]
    ServerName(String),
    #[error("{0}")]
    Rustls(String),
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn client_config(material: &TlsMaterial) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = if material.insecure_skip_verify {
        Arc::new(AcceptAnyCertificate { provider: provider.clone() })
    } else {
        let mut roots = RootCertStore::empty();
        let mut pinned = Vec::new();
        match &material.ca_pem {
            Some(pem) => {
                for cert in CertificateDer::pem_slice_iter(pem) {
                    let cert = cert.map_err(|e| TlsError::Ca(format!("not a PEM certificate: {e}")))?;
                    roots.add(cert.clone()).map_err(|e| TlsError::Ca(e.to_string()))?;
                    pinned.push(cert);
                }
                if pinned.is_empty() {
                    return Err(TlsError::Ca("holds no PEM certificate".into()));
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        let name = match &material.server_name {
            Some(name) => Some(ServerName::try_from(name.clone()).map_err(|_| TlsError::ServerName(name.clone()))?),
            None => None,
        };
        let trusted = if material.ca_pem.is_some() { "a CA in ca_file" } else { "a trusted CA" };
        Arc::new(Verifier { inner, pinned, name, trusted })
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match &material.client_pem {
        Some((cert_pem, key_pem)) => {
            let chain = CertificateDer::pem_slice_iter(cert_pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| TlsError::Cert(format!("not a PEM certificate: {e}")))?;
            if chain.is_empty() {
                return Err(TlsError::Cert("holds no PEM certificate".into()));
            }
            let key = PrivateKeyDer::from_pem_slice(key_pem)
                .map_err(|e| TlsError::Key(format!("no PEM private key: {e}")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsError::Key(format!("does not fit cert_file: {e}")))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The WebPKI verifier, with a configured name instead of the URL's host when
/// given, certificates of `ca_file` also trusted as exact pins, and errors an
/// operator can read.
#[derive(Debug)]
struct Verifier {
    inner: Arc<WebPkiServerVerifier>,
    /// The certificates of `ca_file`: a server presenting one of them exactly
    /// (a self-signed leaf) is trusted, for the names it carries.
    pinned: Vec<CertificateDer<'static>>,
    name: Option<ServerName<'static>>,
    trusted: &'static str,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = self.name.as_ref().map_or(server_name, |n| n);
        match self.inner.verify_server_cert(end_entity, intermediates, name, ocsp_response, now) {
            Ok(verified) => Ok(verified),
            Err(e) if self.pinned.iter().any(|p| p.as_ref() == end_entity.as_ref()) => {
                let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
                rustls::client::verify_server_name(&parsed, name).map_err(|_| readable(e, name, self.trusted))?;
                Ok(ServerCertVerified::assertion())
            }
            Err(e) => Err(readable(e, name, self.trusted)),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A certificate error in words, instead of `Other(OtherError(...))`.
fn readable(e: rustls::Error, name: &ServerName<'_>, trusted: &str) -> rustls::Error {
    use rustls::CertificateError as C;
    let name = name.to_str();
    let text = match &e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::Other(o) if !format!("{o:?}").contains("CaUsedAsEndEntity") => {
                format!("the server's certificate was refused: {o}")
            }
            C::UnknownIssuer | C::BadSignature | C::Other(_) => format!(
                "the server's certificate is not issued by {trusted} (and is not itself one of the certificates \
                 in ca_file)"
            ),
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                format!("the server's certificate is not valid for the name {name}")
            }
            C::Expired | C::ExpiredContext { .. } => "the server's certificate has expired".into(),
            C::NotValidYet | C::NotValidYetContext { .. } => "the server's certificate is not valid yet".into(),
            C::Revoked => "the server's certificate is revoked".into(),
            other => format!("the server's certificate was refused: {other:?}"),
        },
        _ => return e,
    };
    rustls::Error::General(text)
}

/// `insecure_skip_verify`: any certificate is accepted, but the handshake
/// signatures are still checked so the session is at least bound to that key.
#[derive(Debug)]
struct AcceptAnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
