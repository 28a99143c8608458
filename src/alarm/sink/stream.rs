//! A byte stream to a sink's server, plain TCP or TLS, so the syslog and HTTP senders have one
//! type for both.
//!
//! Invariant: a TLS stream verified the server's certificate against the sink's own CA file
//! (never the system's roots, never unverified) and the name it was dialled by.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

pub(crate) type Stream = Box<dyn Io>;

/// Client configuration trusting `ca` only, with the crate's ring provider.
fn client_config(ca: &[CertificateDer<'static>]) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in ca {
        roots.add(c.clone()).map_err(|e| e.to_string())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Dials `address` (`host:port`); with `ca`, TLS to the server named `host`, verified against
/// `ca`. An error says which step failed (connect, the TLS name, the handshake).
pub(crate) async fn connect(
    address: &str,
    host: &str,
    ca: Option<&Arc<[CertificateDer<'static>]>>,
) -> Result<Stream, String> {
    let tcp =
        TcpStream::connect(address).await.map_err(|e| format!("connect to {address}: {e}"))?;
    tcp.set_nodelay(true).ok();
    let Some(ca) = ca else { return Ok(Box::new(tcp)) };
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| format!("TLS server name {host}: {e}"))?;
    tls(tcp, ca, name).await.map_err(|e| format!("TLS: {e}"))
}

/// TLS over `tcp` to the server `name`, verified against `ca`.
async fn tls(
    tcp: TcpStream,
    ca: &Arc<[CertificateDer<'static>]>,
    name: ServerName<'static>,
) -> Result<Stream, String> {
    let config = client_config(ca)?;
    let s = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Box::new(s))
}
