//! Loading TLS material from PEM files, for the three places that need it: the admin listener
//! (certificate chain and key), the intercluster link (certificate chain, key and CA) and the
//! CLI's admin client (CA).
//!
//! Invariants: every error names the file, which of the TLS files it was meant to be, and what
//! was wrong with it; a certificate list or a root store that comes back is never empty.

use std::fmt;
use std::path::{Path, PathBuf};

use rustls::RootCertStore;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Which file of the TLS material, in the operator's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PemKind {
    /// An own certificate chain, leaf first.
    Certificate,
    PrivateKey,
    /// The certificate(s) the other side must chain to.
    CaCertificate,
}

impl fmt::Display for PemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PemKind::Certificate => "certificate",
            PemKind::PrivateKey => "private key",
            PemKind::CaCertificate => "CA certificate",
        })
    }
}

/// Why a TLS file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PemFileError {
    #[error("cannot read {kind} {path}: I/O error: {source}")]
    Unreadable { kind: PemKind, path: PathBuf, source: std::io::Error },
    /// The file was read, but its PEM is broken (a missing END line, bad base64, …).
    #[error("cannot read {kind} {path}: {source}")]
    NotPem { kind: PemKind, path: PathBuf, source: pem::Error },
    #[error("cannot read {kind} {path}: no certificate in the file")]
    NoCertificate { kind: PemKind, path: PathBuf },
    #[error("cannot read private key {path}: no private key in the file")]
    NoPrivateKey { path: PathBuf },
    /// A CA certificate in good PEM that is not a usable trust anchor.
    #[error("cannot use CA certificate {path}: {source}")]
    UnusableCa { path: PathBuf, source: rustls::Error },
}

impl PemFileError {
    fn from_pem(kind: PemKind, path: &Path, e: pem::Error) -> Self {
        let path = path.to_owned();
        match e {
            pem::Error::Io(source) => PemFileError::Unreadable { kind, path, source },
            pem::Error::NoItemsFound => match kind {
                PemKind::PrivateKey => PemFileError::NoPrivateKey { path },
                PemKind::Certificate | PemKind::CaCertificate => {
                    PemFileError::NoCertificate { kind, path }
                }
            },
            // `pem::Error` is non-exhaustive: whatever else it grows is a PEM syntax problem.
            source => PemFileError::NotPem { kind, path, source },
        }
    }
}

/// All certificates in `path`, in file order; at least one.
pub(crate) fn certificates(
    kind: PemKind,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, PemFileError> {
    let err = |e| PemFileError::from_pem(kind, path, e);
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    if certs.is_empty() {
        return Err(PemFileError::NoCertificate { kind, path: path.to_owned() });
    }
    Ok(certs)
}

/// The first private key in `path` (PKCS#8, PKCS#1 or SEC1).
pub(crate) fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemFileError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| PemFileError::from_pem(PemKind::PrivateKey, path, e))
}

/// The CA certificates in `path` as trust anchors; at least one.
pub(crate) fn ca_roots(path: &Path) -> Result<RootCertStore, PemFileError> {
    let mut roots = RootCertStore::empty();
    for ca in certificates(PemKind::CaCertificate, path)? {
        roots
            .add(ca)
            .map_err(|source| PemFileError::UnusableCa { path: path.to_owned(), source })?;
    }
    Ok(roots)
}

/// The certificates of a PEM text received from elsewhere (a peer's CA in a peering
/// exchange, or the state file) as trust anchors, with the certificates themselves; at least
/// one. The error says what was wrong, in words fit for the other side.
pub(crate) fn ca_roots_from_pem(
    text: &str,
) -> Result<(RootCertStore, Vec<CertificateDer<'static>>), String> {
    let certs = CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the CA certificate is not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err("the CA certificate PEM holds no certificate".into());
    }
    let mut roots = RootCertStore::empty();
    for ca in &certs {
        roots
            .add(ca.clone())
            .map_err(|e| format!("the CA certificate is not a usable trust anchor: {e}"))?;
    }
    Ok((roots, certs))
}

/// One certificate as PEM text.
pub(crate) fn certificate_pem(cert: &CertificateDer<'_>) -> String {
    pem_rfc7468::encode_string("CERTIFICATE", pem_rfc7468::LineEnding::LF, cert.as_ref())
        .expect("a certificate encodes as PEM")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn each_error_names_the_file_and_what_was_wrong_with_it() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("missing.pem");
        let e = certificates(PemKind::Certificate, &missing).unwrap_err();
        assert!(matches!(e, PemFileError::Unreadable { .. }), "{e:?}");
        assert!(
            e.to_string().starts_with(&format!(
                "cannot read certificate {}: I/O error: ",
                missing.display()
            )),
            "{e}"
        );

        let empty = write(d.path(), "empty.pem", "nothing here\n");
        let e = ca_roots(&empty).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("cannot read CA certificate {}: no certificate in the file", empty.display())
        );
        let e = private_key(&empty).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("cannot read private key {}: no private key in the file", empty.display())
        );

        let broken = write(d.path(), "broken.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n");
        let e = certificates(PemKind::Certificate, &broken).unwrap_err();
        assert!(matches!(e, PemFileError::NotPem { .. }), "{e:?}");

        let garbage = write(
            d.path(),
            "garbage.pem",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        );
        let e = ca_roots(&garbage).unwrap_err();
        assert!(matches!(e, PemFileError::UnusableCa { .. }), "{e:?}");
    }

    #[test]
    fn loads_what_pki_init_writes() {
        let d = tempfile::tempdir().unwrap();
        let a = crate::ids::ClusterId::new("a").unwrap();
        crate::pki::init(d.path(), std::slice::from_ref(&a)).unwrap();
        let f = crate::pki::files_of(d.path(), &a);
        assert_eq!(certificates(PemKind::Certificate, &f.cert).unwrap().len(), 1);
        private_key(&f.key).unwrap();
        assert_eq!(ca_roots(&f.ca).unwrap().len(), 1);
    }
}
