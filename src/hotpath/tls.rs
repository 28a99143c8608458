//! The hot path over TCP with mutual TLS, for routers on other nodes of the cluster: where the
//! listener is (`[hotpath.tcp]`), the server's TLS configuration, and the router's endpoint
//! (`unix:PATH` or `tcp+tls://HOST:PORT?cert=…&key=…&ca=…`).
//!
//! Invariants: only TLS 1.3, as on the peer link; a client is accepted only with a certificate
//! that chains to the configured CA **and** names a node of this cluster (`[[nodes]] id`), and
//! both are checked inside the handshake, so a client that fails either never reaches a frame;
//! the frames, limits and answers are those of the Unix socket (`server`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use serde::Deserialize;

use crate::peer::tls::{TlsError, names};
use crate::pem_files::{self, PemKind};

/// `[hotpath.tcp]`: the TCP listener for routers on other nodes. Without `cert`, `key` and
/// `ca`, the daemon's `[peer]` files serve (the cluster's certificate and CA).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpConfig {
    pub listen: SocketAddr,
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// The CA the routers' node certificates must chain to.
    #[serde(default)]
    pub ca: Option<PathBuf>,
}

/// Bytes read from the TCP socket at once beneath TLS, on both ends. rustls asks its transport
/// for at most 4 KiB per read, a quarter of a full TLS record, so without this buffer a batched
/// router costs four `read` system calls per record on each side; with it, one call drains up to
/// four records. It adds this much memory per TCP connection (docs/hotpath.md, "Limits").
pub(crate) const READ_AHEAD: usize = 64 << 10;

/// The server side: TLS 1.3, the given certificate, and clients that name one of `nodes`.
pub fn server_config(
    files: &crate::peer::tls::TlsFiles,
    nodes: Vec<String>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = pem_files::certificates(PemKind::Certificate, &files.cert)?;
    let key = pem_files::private_key(&files.key)?;
    let roots = Arc::new(pem_files::ca_roots(&files.ca)?);
    let chain = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let verifier = Arc::new(NodeVerifier { chain, nodes });
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    Ok(Arc::new(config))
}

/// The chain check of the peer link's verifier, then the name: the certificate must be valid
/// for one of the cluster's node names (`peer::tls::names`, the check peers get).
#[derive(Debug)]
struct NodeVerifier {
    chain: Arc<dyn ClientCertVerifier>,
    nodes: Vec<String>,
}

impl ClientCertVerifier for NodeVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self.chain.verify_client_cert(end_entity, intermediates, now)?;
        if self.nodes.iter().any(|n| names(end_entity, n)) {
            Ok(ok)
        } else {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

/// Where a router's client connects: the daemon's Unix socket, or its TCP listener with the
/// router's node certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tls(TlsEndpoint),
}

/// A hot path over TCP and mutual TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsEndpoint {
    /// `host:port`.
    pub addr: String,
    /// The name the daemon's certificate must carry (default: the host of the URL; with the
    /// `[peer]` files, the cluster id).
    pub server_name: String,
    /// This node's certificate (its DNS name: the node's `[[nodes]] id`) and key.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The cluster's CA.
    pub ca: PathBuf,
}

/// Why an endpoint URL is not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "hot-path endpoint {url:?}: {reason} (use unix:PATH, a path, or \
     tcp+tls://HOST:PORT?cert=FILE&key=FILE&ca=FILE[&server_name=NAME])"
)]
pub struct EndpointError {
    url: String,
    reason: String,
}

impl std::str::FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(url: &str) -> Result<Self, EndpointError> {
        let bad = |reason: &str| EndpointError { url: url.to_owned(), reason: reason.to_owned() };
        let Some(rest) = url.strip_prefix("tcp+tls://") else {
            if url.contains("://") {
                return Err(bad("unknown scheme"));
            }
            let path = url.strip_prefix("unix:").unwrap_or(url);
            if path.is_empty() {
                return Err(bad("no socket path"));
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        };
        let (addr, query) = rest.split_once('?').unwrap_or((rest, ""));
        let host = match addr.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => h.trim_matches(['[', ']']),
            _ => return Err(bad("HOST:PORT is needed")),
        };
        let (mut cert, mut key, mut ca, mut server_name) = (None, None, None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match k {
                "cert" => &mut cert,
                "key" => &mut key,
                "ca" => &mut ca,
                "server_name" => &mut server_name,
                _ => return Err(bad(&format!("unknown parameter {k:?}"))),
            };
            if slot.replace(v.to_owned()).is_some() {
                return Err(bad(&format!("parameter {k} is given twice")));
            }
        }
        let (Some(cert), Some(key), Some(ca)) = (cert, key, ca) else {
            return Err(bad("cert, key and ca are all needed (mutual TLS)"));
        };
        let server_name = server_name.unwrap_or_else(|| host.to_owned());
        if ServerName::try_from(server_name.as_str()).is_err() {
            return Err(bad(&format!("{server_name:?} is not a DNS name or an IP address")));
        }
        Ok(Endpoint::Tls(TlsEndpoint {
            addr: addr.to_owned(),
            server_name,
            cert: cert.into(),
            key: key.into(),
            ca: ca.into(),
        }))
    }
}

impl From<PathBuf> for Endpoint {
    /// The Unix socket at that path.
    fn from(path: PathBuf) -> Self {
        Endpoint::Unix(path)
    }
}

impl From<&std::path::Path> for Endpoint {
    fn from(path: &std::path::Path) -> Self {
        Endpoint::Unix(path.to_owned())
    }
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Tls(t) => write!(f, "tcp+tls://{} ({})", t.addr, t.server_name),
        }
    }
}

impl TlsEndpoint {
    /// The client's TLS configuration, read from the files now (a renewed certificate counts
    /// from the next connection).
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = pem_files::certificates(PemKind::Certificate, &self.cert)?;
        let key = pem_files::private_key(&self.key)?;
        let roots = pem_files::ca_roots(&self.ca)?;
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)?;
        Ok(Arc::new(config))
    }

    pub fn server_name(&self) -> ServerName<'static> {
        ServerName::try_from(self.server_name.clone()).expect("checked when parsed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_from_a_path_or_a_tls_url() {
        assert_eq!("/run/hp.sock".parse(), Ok(Endpoint::Unix("/run/hp.sock".into())));
        assert_eq!("unix:/run/hp.sock".parse(), Ok(Endpoint::Unix("/run/hp.sock".into())));
        let t = match "tcp+tls://10.0.0.5:7443?cert=n1.pem&key=n1.key&ca=ca.pem&server_name=a"
            .parse()
            .unwrap()
        {
            Endpoint::Tls(t) => t,
            other => panic!("{other:?}"),
        };
        assert_eq!((t.addr.as_str(), t.server_name.as_str()), ("10.0.0.5:7443", "a"));
        assert_eq!((t.cert, t.key, t.ca), ("n1.pem".into(), "n1.key".into(), "ca.pem".into()));
        let t = "tcp+tls://hp.example:7443?cert=c&key=k&ca=a".parse::<Endpoint>().unwrap();
        assert!(matches!(t, Endpoint::Tls(t) if t.server_name == "hp.example"));
        for (bad, why) in [
            ("tcp+tls://h:7443?cert=c&key=k", "cert, key and ca"),
            ("tcp+tls://h?cert=c&key=k&ca=a", "HOST:PORT"),
            ("tcp+tls://h:1?cert=c&key=k&ca=a&crt=x", "unknown parameter \"crt\""),
            ("tcp+tls://h:1?cert=c&cert=d&key=k&ca=a", "cert is given twice"),
            ("tcp://h:1", "unknown scheme"),
            ("unix:", "no socket path"),
        ] {
            let e = bad.parse::<Endpoint>().unwrap_err().to_string();
            assert!(e.contains(why) && e.contains("tcp+tls://HOST:PORT"), "{bad}: {e}");
        }
    }
}
