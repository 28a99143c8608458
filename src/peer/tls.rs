//! Mutual TLS 1.3 between clusters. Both sides present a certificate from the configured CA;
//! a cluster's id is the DNS name in its certificate.
//!
//! Invariants: only TLS 1.3; a client without a certificate from the CA is refused during the
//! handshake; a client whose certificate names no configured peer is refused after it
//! (`identify`); a server is only accepted when its certificate names the peer dialled.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ServerConfig};

use crate::ids::ClusterId;
use crate::pem_files::{self, PemFileError, PemKind};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    File(#[from] PemFileError),
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(String),
    #[error(
        "certificate {path} is not valid for this cluster's id {id}: its DNS names must include \
         the cluster id"
    )]
    OwnNameMismatch { path: PathBuf, id: ClusterId },
}

/// The TLS material of one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// Server and client configurations for the intercluster link.
#[derive(Clone)]
pub struct PeerTls {
    pub(crate) server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
}

impl PeerTls {
    /// Loads the files and checks that the own certificate names `own_id`.
    pub fn load(files: &TlsFiles, own_id: &ClusterId) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = pem_files::certificates(PemKind::Certificate, &files.cert)?;
        let key = pem_files::private_key(&files.key)?;
        if !names(&certs[0], own_id.as_str()) {
            return Err(TlsError::OwnNameMismatch { path: files.cert.clone(), id: own_id.clone() });
        }
        let roots = Arc::new(pem_files::ca_roots(&files.ca)?);
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs.clone(), key.clone_key())?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)?;
        Ok(Self { server: Arc::new(server), client: Arc::new(client) })
    }
}

/// True when `cert` is valid for the DNS name `name` (its chain was verified by rustls
/// already): a cluster id on the peer link, a node name on the hot path's TCP listener.
pub(crate) fn names(cert: &CertificateDer<'_>, name: &str) -> bool {
    let Ok(ee) = webpki::EndEntityCert::try_from(cert) else { return false };
    let Ok(name) = ServerName::try_from(name) else { return false };
    ee.verify_is_valid_for_subject_name(&name).is_ok()
}

/// Which of `candidates` the verified client certificate belongs to, if any.
pub(crate) fn identify<'a>(
    peer_certs: Option<&[CertificateDer<'_>]>,
    candidates: impl IntoIterator<Item = &'a ClusterId>,
) -> Option<ClusterId> {
    let leaf = peer_certs?.first()?;
    candidates.into_iter().find(|c| names(leaf, c.as_str())).cloned()
}

/// The TLS server name to dial a peer by: its cluster id.
pub(crate) fn server_name(id: &ClusterId) -> ServerName<'static> {
    ServerName::try_from(id.as_str().to_owned()).expect("a ClusterId is a valid DNS name")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_pki_init_output_and_checks_own_name() {
        let d = tempfile::tempdir().unwrap();
        let a = ClusterId::new("a").unwrap();
        let b = ClusterId::new("b").unwrap();
        crate::pki::init(d.path(), &[a.clone(), b.clone()]).unwrap();
        let f = crate::pki::files_of(d.path(), &a);
        let files = TlsFiles { cert: f.cert.clone(), key: f.key.clone(), ca: f.ca.clone() };
        PeerTls::load(&files, &a).unwrap();
        let e = PeerTls::load(&files, &b).err().unwrap().to_string();
        assert!(e.contains("not valid for this cluster's id b"), "{e}");
        let cert = pem_files::certificates(PemKind::Certificate, &f.cert).unwrap();
        assert!(names(&cert[0], a.as_str()) && !names(&cert[0], b.as_str()));
        assert_eq!(identify(Some(&cert), [&b, &a]), Some(a.clone()));
        assert_eq!(identify(Some(&cert), [&b]), None);
        assert_eq!(identify(None, [&a]), None);
    }
}
