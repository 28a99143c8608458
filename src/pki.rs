//! A development PKI: one CA and one certificate per cluster, whose DNS name is the cluster id.
//! `imcrypt pki init` uses it so that a network can be started in a minute; tests use it too.
//! Production clusters use certificates from the organisation's CA (keys/README.md).
//!
//! Invariants: private keys are written with mode 0600; nothing existing is overwritten.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::ids::ClusterId;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path} already exists; imcrypt pki init never overwrites keys (use another --out)")]
    Exists { path: PathBuf },
    #[error("cannot write {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot make a certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
}

/// Where the files of one cluster are.
#[derive(Debug, Clone)]
pub struct ClusterFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// The paths `init` writes for `id` under `dir`.
pub fn files_of(dir: &Path, id: &ClusterId) -> ClusterFiles {
    ClusterFiles {
        cert: dir.join(format!("{id}.pem")),
        key: dir.join(format!("{id}.key")),
        ca: dir.join("ca.pem"),
    }
}

/// Writes `ca.pem`, `ca.key` and `<id>.pem`, `<id>.key` for every cluster into `dir`.
pub fn init(dir: &Path, clusters: &[ClusterId]) -> Result<(), PkiError> {
    std::fs::create_dir_all(dir).map_err(|source| PkiError::Io { path: dir.to_owned(), source })?;
    let mut targets = vec![dir.join("ca.pem"), dir.join("ca.key")];
    for c in clusters {
        let f = files_of(dir, c);
        targets.extend([f.cert, f.key]);
    }
    if let Some(path) = targets.into_iter().find(|p| p.exists()) {
        return Err(PkiError::Exists { path });
    }

    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name.push(DnType::CommonName, "imcrypt development CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;
    write(&dir.join("ca.pem"), ca_cert.pem().as_bytes(), 0o644)?;
    write(&dir.join("ca.key"), ca_key.serialize_pem().as_bytes(), 0o600)?;
    let issuer = Issuer::new(ca, ca_key);

    for c in clusters {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(vec![c.to_string()])?;
        p.distinguished_name.push(DnType::CommonName, c.as_str());
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        p.use_authority_key_identifier_extension = true;
        let cert = p.signed_by(&key, &issuer)?;
        let f = files_of(dir, c);
        write(&f.cert, cert.pem().as_bytes(), 0o644)?;
        write(&f.key, key.serialize_pem().as_bytes(), 0o600)?;
    }
    Ok(())
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let io = |source| PkiError::Io { path: path.to_owned(), source };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn init_writes_private_keys_0600_and_never_overwrites() {
        let d = tempfile::tempdir().unwrap();
        let ids = [ClusterId::new("a").unwrap(), ClusterId::new("b").unwrap()];
        init(d.path(), &ids).unwrap();
        for name in ["ca.key", "a.key", "b.key"] {
            let m = std::fs::metadata(d.path().join(name)).unwrap().permissions().mode();
            assert_eq!(m & 0o777, 0o600, "{name}");
        }
        let before = std::fs::read(d.path().join("a.key")).unwrap();
        assert!(matches!(init(d.path(), &ids), Err(PkiError::Exists { .. })));
        assert_eq!(std::fs::read(d.path().join("a.key")).unwrap(), before);
    }
}
