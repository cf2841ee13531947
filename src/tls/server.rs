//! TLS on the relay's own listener: the certificate and key, and the client
//! CA for mutual TLS, re-read when their files change (cert-manager rotates
//! them in place) without a restart and without dropping a connection: each
//! new handshake takes whatever pair is current. A bad new pair is refused and
//! the pair in use stays.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme};

use super::{provider, TlsError};
use crate::sync::read as lock_read;

/// `server.tls` as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_ca_file: Option<PathBuf>,
    /// With `client_ca_file`: paths served without a client certificate.
    pub exempt_paths: Vec<String>,
}

impl ListenerFiles {
    /// Whether a request for `path` needs a verified client certificate.
    pub fn needs_client_cert(&self, path: &str) -> bool {
        self.client_ca_file.is_some() && !self.exempt_paths.iter().any(|p| p == path)
    }
}

/// What the files held when they were last read well.
struct Loaded {
    key: Arc<CertifiedKey>,
    clients: Option<Arc<dyn ClientCertVerifier>>,
    /// Modification time and length of each file: changes are noticed by these.
    stamps: Vec<Option<(SystemTime, u64)>>,
}

/// The listener's TLS state, shared by every handshake.
pub struct ListenerTls {
    files: ListenerFiles,
    loaded: RwLock<Loaded>,
}

impl std::fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerTls").field("files", &self.files).finish_non_exhaustive()
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn read(path: &Path, wrap: fn(String) -> TlsError) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| wrap(format!("cannot read {}: {e}", path.display())))
}

impl ListenerTls {
    /// Reads the files; an error stops the start.
    pub fn load(files: ListenerFiles) -> Result<Arc<ListenerTls>, TlsError> {
        let loaded = Self::read_files(&files)?;
        Ok(Arc::new(ListenerTls { files, loaded: RwLock::new(loaded) }))
    }

    pub fn files(&self) -> &ListenerFiles {
        &self.files
    }

    fn paths(files: &ListenerFiles) -> Vec<&Path> {
        let mut paths = vec![files.cert_file.as_path(), files.key_file.as_path()];
        paths.extend(files.client_ca_file.as_deref());
        paths
    }

    fn read_files(files: &ListenerFiles) -> Result<Loaded, TlsError> {
        // Stamps first: a file replaced while it is read is read again next time.
        let stamps = Self::paths(files).into_iter().map(stamp).collect();
        let cert_pem = read(&files.cert_file, TlsError::Cert)?;
        let key_pem = read(&files.key_file, TlsError::Key)?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Cert(format!("not a PEM certificate: {e}")))?;
        if chain.is_empty() {
            return Err(TlsError::Cert(format!("{} holds no PEM certificate", files.cert_file.display())));
        }
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| TlsError::Key(format!("{}: no PEM private key: {e}", files.key_file.display())))?;
        let signing = provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsError::Key(format!("{}: {e}", files.key_file.display())))?;
        let key = CertifiedKey::new(chain, signing);
        key.keys_match().map_err(|e| TlsError::Key(format!("does not fit cert_file: {e}")))?;
        let clients = match &files.client_ca_file {
            Some(path) => {
                let pem = read(path, TlsError::Ca)?;
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    let cert = cert.map_err(|e| TlsError::Ca(format!("client_ca_file: not a PEM certificate: {e}")))?;
                    roots.add(cert).map_err(|e| TlsError::Ca(format!("client_ca_file: {e}")))?;
                }
                if roots.is_empty() {
                    return Err(TlsError::Ca(format!("client_ca_file: {} holds no PEM certificate", path.display())));
                }
                // Unauthenticated clients pass the handshake only when some paths
                // are exempt; the HTTP layer then refuses them elsewhere. A
                // certificate that is presented is always verified.
                let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
                let builder = if files.exempt_paths.is_empty() { builder } else { builder.allow_unauthenticated() };
                Some(builder.build().map_err(|e| TlsError::Ca(format!("client_ca_file: {e}")))?)
            }
            None => None,
        };
        Ok(Loaded { key: Arc::new(key), clients, stamps })
    }

    /// Reads the files again if any changed since they were last read. `Ok(true)`:
    /// new handshakes use the new pair; `Err`: the pair in use stays.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let stamps: Vec<_> = Self::paths(&self.files).into_iter().map(stamp).collect();
        if lock_read(&self.loaded).stamps == stamps {
            return Ok(false);
        }
        match Self::read_files(&self.files) {
            Ok(fresh) => {
                *crate::sync::write(&self.loaded) = fresh;
                Ok(true)
            }
            Err(e) => {
                // Not tried again until a file changes again.
                crate::sync::write(&self.loaded).stamps = stamps;
                Err(e)
            }
        }
    }

    /// The rustls configuration of the listener: it asks this for the
    /// certificate and the client verifier on every handshake.
    pub fn server_config(self: &Arc<Self>) -> Result<ServerConfig, TlsError> {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        let builder = if self.files.client_ca_file.is_some() {
            builder.with_client_cert_verifier(Arc::new(Clients(self.clone())))
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder.with_cert_resolver(Arc::new(Current(self.clone())));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// The certificate in use at each handshake.
#[derive(Debug)]
struct Current(Arc<ListenerTls>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(lock_read(&self.0.loaded).key.clone())
    }
}

/// The client verifier in use at each handshake.
#[derive(Debug)]
struct Clients(Arc<ListenerTls>);

impl Clients {
    fn current(&self) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
        lock_read(&self.0.loaded).clients.clone().ok_or_else(|| rustls::Error::General("no client CA loaded".into()))
    }
}

impl ClientCertVerifier for Clients {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.0.files.exempt_paths.is_empty()
    }

    /// No hints: they would have to outlive a rotation of the CA file. Clients
    /// then offer the certificate they have (Go's, so Alertmanager's, and
    /// curl's do).
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current()?.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.current()?.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.current()?.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        supported_schemes(&provider())
    }
}

fn supported_schemes(provider: &CryptoProvider) -> Vec<SignatureScheme> {
    provider.signature_verification_algorithms.supported_schemes()
}
