//! Mutual TLS 1.3 between clusters, with one trust anchor per peer: each cluster has its own
//! CA, and a peer is verified against that peer's CA only (a configured peer's `ca`, else the
//! cluster's own `peer.ca`). A cluster's id is the DNS name in its certificate.
//!
//! Invariants: only TLS 1.3; a client whose chain leads to none of the known CAs is refused
//! during the handshake; after it, a client is accepted only as the peer whose certificate
//! names it **and** whose CA it chains to (`PeerTls::identify`: a certificate from B's CA
//! naming C is refused); a dialled server is accepted only when its certificate chains to the
//! dialled peer's CA and names that peer (`PeerTls::client_for`).
//!
//! Peering tokens (`peer::establish`) add three things: a peer learnt by token is verified
//! against the CA it gave (unless the configuration file names that peer: the file wins);
//! the listener serves its own CA certificate after its own, so that a cluster holding a
//! token can find the CA whose SHA-256 the token pins; and the listener accepts a handshake
//! without a client certificate, which `peer::server` answers on one route only
//! (`POST /v1/peer/establish`). A client that does present a certificate must still chain to
//! a known CA.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};

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
    #[error("the CA of peer {peer}: {source}")]
    PeerCa { peer: ClusterId, source: PemFileError },
}

/// The TLS material of one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// Which CA each peer is verified against.
#[derive(Debug)]
struct Trust {
    /// The cluster's own `peer.ca`: the anchor of every peer that names no CA of its own.
    default: Arc<RootCertStore>,
    /// The peers the configuration file names, with their own CA (`None`: `default`).
    configured: BTreeMap<ClusterId, Option<Arc<RootCertStore>>>,
    /// Peers learnt by a peering token, with the CA each gave.
    learnt: BTreeMap<ClusterId, Arc<RootCertStore>>,
}

impl Trust {
    /// The configuration file first, then the learnt peers, then the cluster's own CA.
    fn of(&self, peer: &ClusterId) -> Arc<RootCertStore> {
        match self.configured.get(peer) {
            Some(ca) => ca.as_ref().unwrap_or(&self.default).clone(),
            None => self.learnt.get(peer).unwrap_or(&self.default).clone(),
        }
    }

    /// Every anchor some peer may chain to.
    fn all(&self) -> impl Iterator<Item = &Arc<RootCertStore>> {
        let configured = self.configured.values().flatten();
        std::iter::once(&self.default).chain(configured).chain(self.learnt.values())
    }
}

/// This cluster's own CA, as a peering token pins it.
#[derive(Debug, Clone)]
pub(crate) struct OwnCa {
    pub(crate) pem: String,
    /// SHA-256 of its DER encoding: the pin.
    pub(crate) sha256: [u8; 32],
}

/// SHA-256 of a certificate's DER encoding (a peering token's pin).
pub(crate) fn cert_sha256(cert: &CertificateDer<'_>) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(cert.as_ref()).into()
}

/// Server and client configurations for the intercluster link. Clones share the trust, so a
/// peer CA set through one ([`PeerTls::set_peer_cas`]) holds for the listener and every link.
#[derive(Clone)]
pub struct PeerTls {
    pub(crate) server: Arc<ServerConfig>,
    provider: Arc<CryptoProvider>,
    certs: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    trust: Arc<RwLock<Trust>>,
    /// The CA in `peer.ca` that issued this cluster's certificate (`None`: none there did, so
    /// this cluster cannot issue peering tokens).
    own_ca: Option<OwnCa>,
}

impl PeerTls {
    /// Loads the files, checks that the own certificate names `own_id`, and reads the CA file
    /// of each of `peer_cas` (a configured peer, and the CA it is verified against when it
    /// has one of its own).
    pub fn load(
        files: &TlsFiles,
        own_id: &ClusterId,
        peer_cas: &[(ClusterId, Option<PathBuf>)],
    ) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = pem_files::certificates(PemKind::Certificate, &files.cert)?;
        let key = pem_files::private_key(&files.key)?;
        if !names(&certs[0], own_id.as_str()) {
            return Err(TlsError::OwnNameMismatch { path: files.cert.clone(), id: own_id.clone() });
        }
        let default = Arc::new(pem_files::ca_roots(&files.ca)?);
        let algs = provider.signature_verification_algorithms;
        let own_ca = pem_files::certificates(PemKind::CaCertificate, &files.ca)?
            .into_iter()
            .find(|ca| issued_by(ca, &certs, algs))
            .map(|ca| OwnCa { pem: pem_files::certificate_pem(&ca), sha256: cert_sha256(&ca) });
        let trust = Arc::new(RwLock::new(Trust {
            default,
            configured: BTreeMap::new(),
            learnt: BTreeMap::new(),
        }));
        let verifier = Arc::new(AnyPeerCa { trust: trust.clone(), algs });
        // The own CA after the own chain: what a token holder checks the pin against.
        let mut served = certs.clone();
        if let Some(ca) = &own_ca {
            let der = pem_files::ca_roots_from_pem(&ca.pem).map_err(TlsError::Verifier)?.1;
            served.extend(der.into_iter().filter(|c| !certs.contains(c)));
        }
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(served, key.clone_key())?;
        let tls =
            Self { server: Arc::new(server), provider, certs, key: Arc::new(key), trust, own_ca };
        tls.set_peer_cas(peer_cas)?;
        // Fails here rather than at the first link: the own certificate and key must match.
        tls.client_for(own_id)?;
        Ok(tls)
    }

    /// Replaces the configured peers and their CAs (a reload of the configuration file); those
    /// without a CA of their own are verified against the cluster's own CA. On error nothing
    /// changes.
    pub(crate) fn set_peer_cas(
        &self,
        peer_cas: &[(ClusterId, Option<PathBuf>)],
    ) -> Result<(), TlsError> {
        let mut configured = BTreeMap::new();
        for (peer, path) in peer_cas {
            let roots = match path {
                Some(path) => Some(Arc::new(
                    pem_files::ca_roots(path)
                        .map_err(|source| TlsError::PeerCa { peer: peer.clone(), source })?,
                )),
                None => None,
            };
            configured.insert(peer.clone(), roots);
        }
        self.trust.write().expect("trust lock").configured = configured;
        Ok(())
    }

    /// Replaces the peers learnt by token and their CAs (PEM, as the state file keeps them).
    /// A CA that does not parse (it did when it was learnt) is left out, so that peer is
    /// verified against the cluster's own CA and, in the normal case, refused.
    pub(crate) fn set_learnt_cas<'a>(
        &self,
        learnt: impl IntoIterator<Item = (&'a ClusterId, &'a str)>,
    ) {
        let mut map = BTreeMap::new();
        for (peer, pem) in learnt {
            match pem_files::ca_roots_from_pem(pem) {
                Ok((roots, _)) => {
                    map.insert(peer.clone(), Arc::new(roots));
                }
                Err(e) => tracing::error!(%peer, error = %e, "the learnt CA of a peer is unusable"),
            }
        }
        self.trust.write().expect("trust lock").learnt = map;
    }

    /// The CA that issued this cluster's certificate, which its peering tokens pin.
    pub(crate) fn own_ca(&self) -> Option<&OwnCa> {
        self.own_ca.as_ref()
    }

    /// The client side of the one connection a token holder makes to the token's issuer:
    /// the server must name `issuer` and chain to the CA whose SHA-256 is `pin`, found in the
    /// chain the server sends; nothing else is trusted. No client certificate is sent (the
    /// issuer does not know this cluster's CA yet).
    pub(crate) fn pinned_client(&self, pin: [u8; 32]) -> Result<Arc<ClientConfig>, TlsError> {
        let verifier = Arc::new(PinnedCa { pin, provider: self.provider.clone() });
        let client = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(Arc::new(client))
    }

    /// The client side of a link to `peer`: only `peer`'s CA is trusted (the name check,
    /// that the certificate names `peer`, is rustls's, with the server name `peer`).
    pub fn client_for(&self, peer: &ClusterId) -> Result<Arc<ClientConfig>, TlsError> {
        let roots = self.trust.read().expect("trust lock").of(peer);
        let client = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(self.certs.clone(), self.key.clone_key())?;
        Ok(Arc::new(client))
    }

    /// Which of `candidates` the client certificate chain `peer_certs` belongs to: the one it
    /// names and whose CA it chains to. `None` for a certificate from one peer's CA that names
    /// another peer.
    pub(crate) fn identify<'a>(
        &self,
        peer_certs: Option<&[CertificateDer<'_>]>,
        candidates: impl IntoIterator<Item = &'a ClusterId>,
    ) -> Option<ClusterId> {
        let (leaf, intermediates) = peer_certs?.split_first()?;
        let trust = self.trust.read().expect("trust lock");
        let algs = self.provider.signature_verification_algorithms;
        candidates
            .into_iter()
            .find(|c| {
                names(leaf, c.as_str())
                    && chains_to(&trust.of(c), leaf, intermediates, UnixTime::now(), algs)
            })
            .cloned()
    }
}

/// True when `ca` issued the chain `certs` (leaf first).
fn issued_by(
    ca: &CertificateDer<'_>,
    certs: &[CertificateDer<'_>],
    algs: WebPkiSupportedAlgorithms,
) -> bool {
    let mut roots = RootCertStore::empty();
    if roots.add(ca.clone().into_owned()).is_err() {
        return false;
    }
    let Some((leaf, intermediates)) = certs.split_first() else { return false };
    chains_to(&roots, leaf, intermediates, UnixTime::now(), algs)
}

/// The pinned verifier of [`PeerTls::pinned_client`].
#[derive(Debug)]
struct PinnedCa {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let pinned =
            intermediates.iter().find(|c| cert_sha256(c) == self.pin).ok_or_else(|| {
                rustls::Error::General(
                    "the server's certificate chain holds no CA whose SHA-256 is the token's pin \
                 (a server that is not the token's issuer, or the issuer's CA changed)"
                        .into(),
                )
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(pinned.clone().into_owned())?;
        let others: Vec<CertificateDer<'_>> =
            intermediates.iter().filter(|c| *c != pinned).cloned().collect();
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(format!("pinned CA: {e}")))?
            .verify_server_cert(end_entity, &others, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// True when `leaf` (with `intermediates`) is a valid client certificate under `roots` at
/// `now`.
fn chains_to(
    roots: &RootCertStore,
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    algs: WebPkiSupportedAlgorithms,
) -> bool {
    let Ok(ee) = webpki::EndEntityCert::try_from(leaf) else { return false };
    ee.verify_for_usage(
        algs.all,
        &roots.roots,
        intermediates,
        now,
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .is_ok()
}

/// The listener's handshake check: the client's chain leads to the cluster's own CA or to the
/// CA of one of its peers (which peer, and whether the name matches, is
/// [`PeerTls::identify`]'s, after the handshake). Reads the trust at each handshake, so a
/// peer CA set at runtime holds at once.
#[derive(Debug)]
struct AnyPeerCa {
    trust: Arc<RwLock<Trust>>,
    algs: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyPeerCa {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: each cluster presents its one certificate whatever the hints say.
        &[]
    }

    /// A client without a certificate completes the handshake, and `peer::server` serves it
    /// `POST /v1/peer/establish` only (a token holder is not known yet). A client that sends
    /// a certificate is still checked below.
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let trust = self.trust.read().expect("trust lock");
        if trust.all().any(|roots| chains_to(roots, end_entity, intermediates, now, self.algs)) {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// True when `cert` is valid for the DNS name `name` (its chain was verified by rustls
/// already): a cluster id on the peer link, a node name on the hot path's TCP listener.
pub(crate) fn names(cert: &CertificateDer<'_>, name: &str) -> bool {
    let Ok(ee) = webpki::EndEntityCert::try_from(cert) else { return false };
    let Ok(name) = ServerName::try_from(name) else { return false };
    ee.verify_is_valid_for_subject_name(&name).is_ok()
}

/// The TLS server name to dial a peer by: its cluster id.
pub(crate) fn server_name(id: &ClusterId) -> ServerName<'static> {
    ServerName::try_from(id.as_str().to_owned()).expect("a ClusterId is a valid DNS name")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn id(s: &str) -> ClusterId {
        ClusterId::new(s).unwrap()
    }

    fn cert_of(dir: &Path, c: &str) -> Vec<CertificateDer<'static>> {
        pem_files::certificates(PemKind::Certificate, &dir.join(format!("{c}.pem"))).unwrap()
    }

    /// The TLS material `pki init`/`pki add` wrote for `c` in `dir`.
    fn files(dir: &Path, c: &str) -> TlsFiles {
        let f = crate::pki::files_of(dir, &id(c));
        TlsFiles { cert: f.cert, key: f.key, ca: dir.join("ca.pem") }
    }

    /// A handshake in memory; the client certificates the server saw, or the first error.
    fn handshake(
        client: Arc<ClientConfig>,
        server: Arc<ServerConfig>,
        dialled: &ClusterId,
    ) -> Result<Vec<CertificateDer<'static>>, rustls::Error> {
        let mut c = rustls::ClientConnection::new(client, server_name(dialled))?;
        let mut s = rustls::ServerConnection::new(server)?;
        for _ in 0..8 {
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            s.read_tls(&mut &buf[..]).unwrap();
            s.process_new_packets()?;
            buf.clear();
            while s.wants_write() {
                s.write_tls(&mut buf).unwrap();
            }
            c.read_tls(&mut &buf[..]).unwrap();
            c.process_new_packets()?;
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(s.peer_certificates().expect("a client certificate").to_vec());
            }
        }
        panic!("the handshake did not finish")
    }

    #[test]
    fn loads_pki_init_output_and_checks_own_name() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (id("a"), id("b"));
        crate::pki::init(d.path(), &[a.clone(), b.clone()]).unwrap();
        let tls = PeerTls::load(&files(d.path(), "a"), &a, &[]).unwrap();
        let e = PeerTls::load(&files(d.path(), "a"), &b, &[]).err().unwrap().to_string();
        assert!(e.contains("not valid for this cluster's id b"), "{e}");
        let cert = cert_of(d.path(), "a");
        assert!(names(&cert[0], a.as_str()) && !names(&cert[0], b.as_str()));
        assert_eq!(tls.identify(Some(&cert), [&b, &a]), Some(a.clone()));
        assert_eq!(tls.identify(Some(&cert), [&b]), None);
        assert_eq!(tls.identify(None, [&a]), None);
    }

    /// Cluster a has CA1 (and peer c under it); cluster b has CA2, given to a as b's CA.
    /// Impostors: CA2 also signed a certificate naming c, CA1 one naming b.
    struct TwoCas {
        ca1: tempfile::TempDir,
        ca2: tempfile::TempDir,
        a: PeerTls,
    }

    fn two_cas() -> TwoCas {
        let (ca1, ca2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        crate::pki::init(ca1.path(), &[id("a"), id("c")]).unwrap();
        crate::pki::init(ca2.path(), &[id("b")]).unwrap();
        crate::pki::add(ca2.path(), &[id("c")]).unwrap();
        let a = PeerTls::load(
            &files(ca1.path(), "a"),
            &id("a"),
            &[(id("b"), Some(ca2.path().join("ca.pem")))],
        )
        .unwrap();
        TwoCas { ca1, ca2, a }
    }

    #[test]
    fn a_client_is_the_peer_whose_ca_it_chains_to_and_only_if_it_names_that_peer() {
        let t = two_cas();
        let (b, c) = (id("b"), id("c"));
        assert_eq!(t.a.identify(Some(&cert_of(t.ca2.path(), "b")), [&b, &c]), Some(b.clone()));
        assert_eq!(t.a.identify(Some(&cert_of(t.ca1.path(), "c")), [&b, &c]), Some(c.clone()));
        // CA2 is b's anchor, not c's: its certificate naming c is nobody's.
        assert_eq!(t.a.identify(Some(&cert_of(t.ca2.path(), "c")), [&b, &c]), None);
        // And a certificate naming b from a's own CA is not b either.
        crate::pki::add(t.ca1.path(), std::slice::from_ref(&b)).unwrap();
        assert_eq!(t.a.identify(Some(&cert_of(t.ca1.path(), "b")), [&b, &c]), None);
    }

    #[test]
    fn both_ends_of_a_handshake_verify_the_other_against_its_own_ca() {
        let t = two_cas();
        let (a, b) = (id("a"), id("b"));
        let b_tls = PeerTls::load(
            &files(t.ca2.path(), "b"),
            &b,
            &[(a.clone(), Some(t.ca1.path().join("ca.pem")))],
        )
        .unwrap();
        // a dials b and b accepts a, each through the other's CA.
        let seen = handshake(t.a.client_for(&b).unwrap(), b_tls.server.clone(), &b).unwrap();
        assert_eq!(b_tls.identify(Some(&seen), [&a]), Some(a.clone()));
        let seen = handshake(b_tls.client_for(&a).unwrap(), t.a.server.clone(), &a).unwrap();
        assert_eq!(t.a.identify(Some(&seen), [&b]), Some(b.clone()));

        // A server at b's address with a certificate naming b from CA1 is refused by a.
        crate::pki::add(t.ca1.path(), std::slice::from_ref(&b)).unwrap();
        let impostor = PeerTls::load(&files(t.ca1.path(), "b"), &b, &[]).unwrap();
        let e = handshake(t.a.client_for(&b).unwrap(), impostor.server.clone(), &b).unwrap_err();
        assert!(matches!(e, rustls::Error::InvalidCertificate(_)), "{e}");

        // A client from a CA nobody knows is refused in the handshake.
        let other = tempfile::tempdir().unwrap();
        crate::pki::init(other.path(), std::slice::from_ref(&b)).unwrap();
        let stranger = PeerTls::load(
            &files(other.path(), "b"),
            &b,
            &[(a.clone(), Some(t.ca1.path().join("ca.pem")))],
        )
        .unwrap();
        assert!(handshake(stranger.client_for(&a).unwrap(), t.a.server.clone(), &a).is_err());

        // A peer CA that cannot be read is an error naming the peer, and changes nothing.
        let e =
            t.a.set_peer_cas(&[(b.clone(), Some(other.path().join("missing.pem")))]).unwrap_err();
        assert!(e.to_string().starts_with("the CA of peer b: "), "{e}");
        let seen = handshake(b_tls.client_for(&a).unwrap(), t.a.server.clone(), &a).unwrap();
        assert_eq!(t.a.identify(Some(&seen), [&b]), Some(b));
    }
}
