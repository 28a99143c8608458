//! TLS to the database servers, with libpq's `sslmode` semantics: the settings a URL asks for
//! (`sslmode`, `sslrootcert`), the rustls client configuration (ring provider) they mean, and
//! the adapter that lets tokio-postgres run its connection over tokio-rustls.
//!
//! Invariants, per mode (libpq's table, "SSL Mode Descriptions"):
//! - `disable`: never TLS.
//! - `prefer`: TLS when the server offers it, plain otherwise.
//! - `require`: TLS or no connection.
//! - `verify-ca`: TLS, and the server's certificate chains to a trusted CA.
//! - `verify-full`: as `verify-ca`, and the certificate names the host dialled (DNS name, or IP
//!   address for a host given as one).
//!
//! As libpq does, `prefer` and `require` with an `sslrootcert` verify the chain like
//! `verify-ca` (libpq: "if a root CA file exists, the behavior of sslmode=require will be the
//! same as that of verify-ca"); without one they encrypt but do not authenticate the server.
//! `sslrootcert=system` (libpq ≥ 16) trusts the system's CA bundle and implies `verify-full`.
//! Without `sslmode`, a loopback host (`localhost`, 127.0.0.0/8, ::1) gets `prefer` (libpq's
//! default; the bytes never leave the host) and any other host `verify-full`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::pem_files;

/// Where `sslrootcert=system` (and verification without an `sslrootcert`) finds the system's
/// CA bundle when `SSL_CERT_FILE` does not say: Debian's and Ubuntu's `ca-certificates`.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }
}

/// The CA a server's certificate must chain to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RootCert {
    /// `sslrootcert=FILE`: the CA certificates in that PEM file.
    File(PathBuf),
    /// `sslrootcert=system`: the system's CA bundle.
    System,
}

/// What a URL asks for: `sslmode` and `sslrootcert`, the default mode already applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TlsSettings {
    pub(super) mode: SslMode,
    pub(super) root_cert: Option<RootCert>,
}

impl TlsSettings {
    /// The settings for `host` from the URL's `sslmode` and `sslrootcert` values (either may
    /// be absent). The error names the parameter and says what it takes.
    pub(super) fn new(
        host: &str,
        sslmode: Option<&str>,
        sslrootcert: Option<&str>,
    ) -> Result<Self, String> {
        let root_cert = match sslrootcert {
            None => None,
            Some("") => return Err("sslrootcert is empty: give a PEM file or `system`".into()),
            Some("system") => Some(RootCert::System),
            Some(path) => Some(RootCert::File(PathBuf::from(path))),
        };
        let mode = match sslmode {
            Some(m) => SslMode::parse(m).ok_or_else(|| {
                format!(
                    "sslmode={m} is not one of disable, prefer, require, verify-ca, verify-full"
                )
            })?,
            None if root_cert == Some(RootCert::System) => SslMode::VerifyFull,
            None if is_loopback(host) => SslMode::Prefer,
            None => SslMode::VerifyFull,
        };
        // libpq refuses the system store with anything weaker than verify-full: a public CA
        // signs certificates for anyone's names, so only the name check means anything.
        if root_cert == Some(RootCert::System) && mode != SslMode::VerifyFull {
            return Err(format!(
                "sslrootcert=system needs sslmode=verify-full (the URL says {})",
                sslmode.unwrap_or("nothing")
            ));
        }
        // Nor does verify-ca take the system store without a file: with no name check, any
        // certificate a public CA issued to anyone would pass (libpq fails here too, for the
        // want of its root.crt).
        if mode == SslMode::VerifyCa && !matches!(root_cert, Some(RootCert::File(_))) {
            return Err(
                "sslmode=verify-ca needs sslrootcert=FILE, the CA that signs the server's \
                 certificate (without a name check, any certificate from the system's CAs would \
                 pass; use verify-full to rely on them)"
                    .into(),
            );
        }
        Ok(Self { mode, root_cert })
    }

    /// What the connection does when the server answers "no TLS": `true` for `prefer` and
    /// `disable`, which go on in plain text.
    pub(super) fn allows_plain(&self) -> bool {
        matches!(self.mode, SslMode::Disable | SslMode::Prefer)
    }

    /// The rustls client configuration these settings mean; `None` for `disable`. Reads the
    /// root certificate file now (so a replaced CA file counts from the next connection).
    pub(super) fn client_config(&self) -> Result<Option<Arc<ClientConfig>>, String> {
        if self.mode == SslMode::Disable {
            return Ok(None);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verify = matches!(self.mode, SslMode::VerifyCa | SslMode::VerifyFull);
        let roots = match &self.root_cert {
            Some(RootCert::File(path)) => Some(load_roots(path)?),
            Some(RootCert::System) => Some(system_roots()?),
            // verify-full without sslrootcert: the system's CAs (libpq would look for
            // ~/.postgresql/root.crt, which a daemon has no business reading); verify-ca
            // without it is refused by `new`.
            None if verify => Some(system_roots()?),
            None => None,
        };
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let config = match roots {
            Some(roots) if self.mode == SslMode::VerifyFull => {
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            roots => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly { roots, provider }))
                .with_no_client_auth(),
        };
        Ok(Some(Arc::new(config)))
    }
}

/// The CA certificates of an `sslrootcert` file; the error names the parameter and the file.
pub(super) fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, String> {
    pem_files::ca_roots(path).map(Arc::new).map_err(|e| format!("sslrootcert: {e}"))
}

/// The system's CA bundle: `SSL_CERT_FILE` (OpenSSL's variable), else [`SYSTEM_CA_BUNDLE`].
fn system_roots() -> Result<Arc<RootCertStore>, String> {
    let path = std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(SYSTEM_CA_BUNDLE));
    load_roots(&path).map_err(|e| {
        format!("{e} (the system's CA bundle; give the server's CA as sslrootcert=FILE)")
    })
}

/// Makes ring the process's default rustls provider, once. Every other TLS client and server
/// of imcrypt names ring itself; tiberius cannot be told a provider and takes the process's
/// default, or aws-lc-rs when none is installed (tiberius's `resolve_crypto_provider`), so
/// SQL Server's `connect` calls this before its first handshake. Installing the default from
/// there rather than from each `main` covers every path to SQL Server (CLI, daemon, tests),
/// and nothing else in imcrypt reads the default.
pub(super) fn ring_by_default() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // An error means that a provider is installed already: not by imcrypt (this is the one
        // place that installs one), and a process has one default, so it stays.
        let _ = CryptoProvider::install_default(rustls::crypto::ring::default_provider());
    });
}

/// `localhost`, or an address of 127.0.0.0/8 or ::1: traffic that never leaves the host.
pub(crate) fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The verifier of `verify-ca` (and of `prefer`/`require`): the chain to `roots` when there
/// are roots, nothing when there are none; never the name. Handshake signatures are always
/// checked, so the server does hold the key of the certificate it shows.
#[derive(Debug)]
struct ChainOnly {
    roots: Option<Arc<RootCertStore>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
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

/// tokio-postgres's TLS hook over tokio-rustls. Our own rather than the tokio-postgres-rustls
/// crate: that one brings x509-certificate and its ASN.1 stack for channel binding, which we
/// do not offer (SCRAM without `-PLUS` is what libpq does without channel binding too), and
/// the verification modes above need our own verifier anyway.
#[derive(Clone)]
pub(super) struct PgTls(pub(super) Arc<ClientConfig>);

impl<S> tokio_postgres::tls::MakeTlsConnect<S> for PgTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type TlsConnect = PgTlsConnect;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, host: &str) -> Result<PgTlsConnect, Self::Error> {
        let name = ServerName::try_from(host.to_owned())?;
        Ok(PgTlsConnect { config: self.0.clone(), name })
    }
}

pub(super) struct PgTlsConnect {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

type ConnectFuture<S> =
    Pin<Box<dyn std::future::Future<Output = std::io::Result<PgTlsStream<S>>> + Send>>;

impl<S> tokio_postgres::tls::TlsConnect<S> for PgTlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type Error = std::io::Error;
    type Future = ConnectFuture<S>;

    fn connect(self, stream: S) -> ConnectFuture<S> {
        let connector = tokio_rustls::TlsConnector::from(self.config);
        Box::pin(async move { connector.connect(self.name, stream).await.map(PgTlsStream) })
    }
}

pub(super) struct PgTlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PgTlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PgTlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for PgTlsStream<S> {
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        tokio_postgres::tls::ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(host: &str, mode: Option<&str>, root: Option<&str>) -> Result<TlsSettings, String> {
        TlsSettings::new(host, mode, root)
    }

    #[test]
    fn the_default_is_prefer_on_loopback_and_verify_full_elsewhere() {
        for host in ["localhost", "127.0.0.1", "127.3.4.5", "::1"] {
            assert_eq!(settings(host, None, None).unwrap().mode, SslMode::Prefer, "{host}");
        }
        for host in ["db.example.com", "10.0.0.5", "::2", "localhost.example"] {
            assert_eq!(settings(host, None, None).unwrap().mode, SslMode::VerifyFull, "{host}");
        }
        let s = settings("127.0.0.1", None, Some("system")).unwrap();
        assert_eq!((s.mode, s.root_cert), (SslMode::VerifyFull, Some(RootCert::System)));
    }

    #[test]
    fn every_libpq_mode_is_understood_and_others_are_named_in_the_error() {
        for (m, want) in [
            ("disable", SslMode::Disable),
            ("prefer", SslMode::Prefer),
            ("require", SslMode::Require),
            ("verify-ca", SslMode::VerifyCa),
            ("verify-full", SslMode::VerifyFull),
        ] {
            assert_eq!(settings("db", Some(m), Some("/etc/ca.pem")).unwrap().mode, want);
        }
        // verify-ca checks no name: only a CA of the operator's choosing means anything.
        let e = settings("db", Some("verify-ca"), None).unwrap_err();
        assert!(e.contains("verify-ca needs sslrootcert=FILE"), "{e}");
        let e = settings("db", Some("verify-ca"), Some("system")).unwrap_err();
        assert!(e.contains("needs sslmode=verify-full"), "{e}");
        let e = settings("db", Some("allow"), None).unwrap_err();
        assert!(e.contains("sslmode=allow") && e.contains("verify-full"), "{e}");
        let e = settings("db", Some("require"), Some("system")).unwrap_err();
        assert!(e.contains("sslrootcert=system needs sslmode=verify-full"), "{e}");
        assert!(settings("db", None, Some("")).unwrap_err().contains("sslrootcert"));
    }

    #[test]
    fn disable_builds_no_tls_and_a_missing_root_file_is_named() {
        let s = settings("db", Some("disable"), None).unwrap();
        assert!(s.client_config().unwrap().is_none() && s.allows_plain());
        let s = settings("db", Some("verify-ca"), Some("/no/such/ca.pem")).unwrap();
        let e = s.client_config().unwrap_err();
        assert!(e.contains("/no/such/ca.pem"), "{e}");
        assert!(!settings("db", Some("require"), None).unwrap().allows_plain());
        assert!(settings("db", Some("require"), None).unwrap().client_config().unwrap().is_some());
    }
}
