//! A development PKI: a CA and one certificate per cluster, whose DNS name is the cluster id.
//! The normal case is one CA per cluster (`imcrypt pki init --clusters a`: clusters of
//! different sites or companies each have their own, and each peer is verified against its
//! own CA, `peer::tls`); a CA shared by several clusters (`--clusters a,b,c`) still works.
//! `imcrypt pki add` gives a cluster added later its certificate from an existing CA; tests
//! use it too. It is for trying imcrypt: production clusters use certificates from the
//! organisation's CA (keys/README.md).
//!
//! Invariants: private keys are written with mode 0600; nothing existing is overwritten; a
//! cluster certificate is valid for about a year ([`LEAF_DAYS`]) and the CA for ten
//! ([`CA_DAYS`]), from a few minutes before it was made (clock skew between hosts).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::ids::ClusterId;

/// How long a development cluster certificate is valid, in days: about a year, as public CAs
/// issue server certificates (a TLS audit flags anything much longer).
const LEAF_DAYS: i64 = 365;
/// How long the development CA is valid, in days.
const CA_DAYS: i64 = 3650;
/// A certificate is valid from this long before it is made, so that a host whose clock is a
/// little behind accepts it at once.
const BACKDATE: time::Duration = time::Duration::minutes(5);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path} already exists; imcrypt pki never overwrites keys (use another directory)")]
    Exists { path: PathBuf },
    #[error(
        "{dir} holds no development CA (ca.pem and ca.key): make one with imcrypt pki init, \
         or use your organisation's CA (keys/README.md)"
    )]
    NoCa { dir: PathBuf },
    #[error("{path} is not a usable CA certificate or key: {reason}")]
    BadCa { path: PathBuf, reason: String },
    #[error("cannot write {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot make a certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
}

/// Where the files of one cluster are.
#[derive(Debug, Clone)]
pub(crate) struct ClusterFiles {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    #[cfg(test)]
    pub(crate) ca: PathBuf,
}

/// The paths `init` writes for `id` under `dir`.
pub(crate) fn files_of(dir: &Path, id: &ClusterId) -> ClusterFiles {
    ClusterFiles {
        cert: dir.join(format!("{id}.pem")),
        key: dir.join(format!("{id}.key")),
        #[cfg(test)]
        ca: dir.join("ca.pem"),
    }
}

/// Writes `ca.pem`, `ca.key` and `<id>.pem`, `<id>.key` for every cluster into `dir`.
pub(crate) fn init(dir: &Path, clusters: &[ClusterId]) -> Result<(), PkiError> {
    std::fs::create_dir_all(dir).map_err(|source| PkiError::Io { path: dir.to_owned(), source })?;
    refuse_existing(
        [dir.join("ca.pem"), dir.join("ca.key")].into_iter().chain(cluster_paths(dir, clusters)),
    )?;
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let name = match clusters {
        [one] => format!("imcrypt development CA of cluster {one}"),
        _ => "imcrypt development CA".to_owned(),
    };
    ca.distinguished_name.push(DnType::CommonName, name);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    valid_for(&mut ca, CA_DAYS);
    let ca_cert = ca.self_signed(&ca_key)?;
    write(&dir.join("ca.pem"), ca_cert.pem().as_bytes(), 0o644)?;
    write(&dir.join("ca.key"), ca_key.serialize_pem().as_bytes(), 0o600)?;
    issue(dir, clusters, &Issuer::new(ca, ca_key))
}

/// Writes `<id>.pem`, `<id>.key` for each of `clusters` into `dir`, signed by the development
/// CA that `init` left there, so that a cluster can join a network made earlier.
pub(crate) fn add(dir: &Path, clusters: &[ClusterId]) -> Result<(), PkiError> {
    let (ca_pem, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
    if !ca_pem.exists() || !ca_key.exists() {
        return Err(PkiError::NoCa { dir: dir.to_owned() });
    }
    refuse_existing(cluster_paths(dir, clusters))?;
    let read = |path: &Path| {
        std::fs::read_to_string(path)
            .map(zeroize::Zeroizing::new)
            .map_err(|source| PkiError::Io { path: path.to_owned(), source })
    };
    let bad = |path: &Path| {
        let path = path.to_owned();
        move |e: rcgen::Error| PkiError::BadCa { path, reason: e.to_string() }
    };
    let key = KeyPair::from_pem(&read(&ca_key)?).map_err(bad(&ca_key))?;
    let issuer = Issuer::from_ca_cert_pem(&read(&ca_pem)?, key).map_err(bad(&ca_pem))?;
    issue(dir, clusters, &issuer)
}

fn cluster_paths<'a>(
    dir: &'a Path,
    clusters: &'a [ClusterId],
) -> impl Iterator<Item = PathBuf> + 'a {
    clusters.iter().flat_map(move |c| {
        let f = files_of(dir, c);
        [f.cert, f.key]
    })
}

fn refuse_existing(paths: impl IntoIterator<Item = PathBuf>) -> Result<(), PkiError> {
    match paths.into_iter().find(|p| p.exists()) {
        Some(path) => Err(PkiError::Exists { path }),
        None => Ok(()),
    }
}

fn valid_for(p: &mut CertificateParams, days: i64) {
    let secs = crate::clock::now().unix_secs() as i64;
    let now =
        time::OffsetDateTime::from_unix_timestamp(secs).expect("the clock is within year 9999");
    p.not_before = now - BACKDATE;
    p.not_after = now + time::Duration::days(days);
}

/// One certificate per cluster, its id as DNS name, for server and client authentication.
fn issue(dir: &Path, clusters: &[ClusterId], issuer: &Issuer<'_, KeyPair>) -> Result<(), PkiError> {
    for c in clusters {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(vec![c.to_string()])?;
        p.distinguished_name.push(DnType::CommonName, c.as_str());
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        p.use_authority_key_identifier_extension = true;
        valid_for(&mut p, LEAF_DAYS);
        let cert = p.signed_by(&key, issuer)?;
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
        assert!(matches!(add(d.path(), &ids[1..]), Err(PkiError::Exists { .. })));
    }

    fn validity(path: &Path) -> (time::OffsetDateTime, time::OffsetDateTime) {
        let pem = std::fs::read_to_string(path).unwrap();
        let der = pem_rfc7468::decode_vec(pem.as_bytes()).unwrap().1;
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let v = cert.validity();
        (v.not_before.to_datetime(), v.not_after.to_datetime())
    }

    #[test]
    fn certificates_live_a_year_and_the_ca_ten() {
        let d = tempfile::tempdir().unwrap();
        init(d.path(), &[ClusterId::new("a").unwrap()]).unwrap();
        let now = time::OffsetDateTime::now_utc();
        let days = |(from, to): (time::OffsetDateTime, time::OffsetDateTime)| {
            assert!(from <= now && now - from < time::Duration::hours(1), "{from}");
            (to - now).whole_days()
        };
        assert!((364..=365).contains(&days(validity(&d.path().join("a.pem")))));
        assert!((3649..=3650).contains(&days(validity(&d.path().join("ca.pem")))));
    }

    #[test]
    fn add_signs_a_new_cluster_with_the_existing_ca() {
        let d = tempfile::tempdir().unwrap();
        init(d.path(), &[ClusterId::new("a").unwrap()]).unwrap();
        let ca = std::fs::read(d.path().join("ca.pem")).unwrap();
        add(d.path(), &[ClusterId::new("d").unwrap()]).unwrap();
        assert_eq!(std::fs::read(d.path().join("ca.pem")).unwrap(), ca, "the CA is unchanged");
        let m = std::fs::metadata(d.path().join("d.key")).unwrap().permissions().mode();
        assert_eq!(m & 0o777, 0o600);
        // d's certificate chains to the CA that a trusts, for both ends of mutual TLS.
        let der = |name: &str| {
            let pem = std::fs::read_to_string(d.path().join(name)).unwrap();
            rustls_pki_types::CertificateDer::from(
                pem_rfc7468::decode_vec(pem.as_bytes()).unwrap().1,
            )
        };
        let (ca, leaf) = (der("ca.pem"), der("d.pem"));
        let anchors = [webpki::anchor_from_trusted_cert(&ca).unwrap()];
        let ee = webpki::EndEntityCert::try_from(&leaf).unwrap();
        for usage in [webpki::KeyUsage::server_auth(), webpki::KeyUsage::client_auth()] {
            ee.verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &anchors,
                &[],
                rustls_pki_types::UnixTime::now(),
                usage,
                None,
                None,
            )
            .unwrap();
        }
        assert!(crate::peer::tls::names(&leaf, "d"));
        let empty = tempfile::tempdir().unwrap();
        let e = add(empty.path(), &[ClusterId::new("d").unwrap()]).unwrap_err();
        assert!(e.to_string().contains("imcrypt pki init"), "{e}");
    }
}
