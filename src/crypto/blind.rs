//! Blind indexes: deterministic, keyed fingerprints of archive participants (sender, recipient,
//! room), so that an archive can be searched by participant without decrypting it, while a
//! database administrator without the domain key learns nothing but equality.
//!
//! ```text
//! index_key(v) = HKDF-SHA256(ikm = domain key of version v, salt = domain id (16 bytes),
//!                            info = "imcrypt blind index v1" || v (4 bytes), length = 32)
//! index        = HMAC-SHA256(index_key(v), message)          (32 bytes)
//! ```
//!
//! The message is chosen by the archive (docs/archive.md: a field tag, a zero byte and the
//! normalised value). Invariants: the index key is distinct from every record key (another
//! HKDF info string), is zeroized on drop and never leaves this module; an index is the same
//! for the same (domain, version, message) on every cluster of the domain.
//!
//! **Row identities** are the same construction under a key that no rotation changes, so that
//! the archive recognises a row it already holds whatever version is primary now:
//!
//! ```text
//! row_identity_key = HKDF-SHA256(ikm = domain key of the domain's first version,
//!                                salt = domain id (16 bytes),
//!                                info = "imcrypt row identity v1", length = 32)
//! row identity     = HMAC-SHA256(row_identity_key, message)          (32 bytes)
//! ```
//!
//! The key is derived once, when the domain is made, and then kept in the key ring as it is.

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::keyring::KeyRing;
use super::locked::Locked;
use super::mac::hmac_sha256;
use crate::ids::{DomainId, KeyVersion};

/// The HKDF info prefix of the index key (22 ASCII bytes, no terminator).
const INDEX_KEY_INFO: &[u8] = b"imcrypt blind index v1";
/// The HKDF info of the row identity key (23 ASCII bytes).
const ROW_IDENTITY_INFO: &[u8] = b"imcrypt row identity v1";

/// Derives the domain's row identity key from its first version (see the module
/// documentation); the key ring calls it once and keeps the result.
pub(crate) fn row_identity_key(domain: DomainId, first_key: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    let hk = Hkdf::<Sha256>::new(Some(domain.as_bytes()), first_key);
    let mut okm = Zeroizing::new([0u8; 32]);
    hk.expand(ROW_IDENTITY_INFO, &mut okm[..])
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    okm
}

/// Computes row identities under the domain's row identity key.
pub(crate) struct RowIdentifier {
    key: Locked<[u8; 32]>,
}

impl std::fmt::Debug for RowIdentifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RowIdentifier(<redacted>)")
    }
}

impl RowIdentifier {
    pub(crate) fn of(ring: &KeyRing) -> Self {
        Self { key: Locked::new(*ring.row_identity().bytes()) }
    }

    pub(crate) fn identity(&self, message: &[u8]) -> [u8; 32] {
        hmac_sha256(&self.key[..], message)
    }
}

/// Computes blind indexes under one domain key version.
pub(crate) struct BlindIndexer {
    version: KeyVersion,
    /// Out of core dumps and swap (`crypto::locked`).
    key: Locked<[u8; 32]>,
}

impl std::fmt::Debug for BlindIndexer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlindIndexer(v{}, <redacted>)", self.version)
    }
}

/// Derives the index key of one version (see the module documentation).
fn index_key(domain: DomainId, version: KeyVersion, domain_key: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    let hk = Hkdf::<Sha256>::new(Some(domain.as_bytes()), domain_key);
    let mut okm = Zeroizing::new([0u8; 32]);
    hk.expand_multi_info(&[INDEX_KEY_INFO, &version.get().to_be_bytes()], &mut okm[..])
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    okm
}

impl BlindIndexer {
    /// The indexer of the ring's primary version (what new rows use).
    pub(crate) fn primary(ring: &KeyRing) -> Self {
        let p = ring.primary();
        Self {
            version: p.version(),
            key: Locked::new(*index_key(ring.domain(), p.version(), p.bytes())),
        }
    }

    /// One indexer per version the ring holds (what a viewer searches with).
    pub(crate) fn all(ring: &KeyRing) -> Vec<Self> {
        ring.keys()
            .map(|k| Self {
                version: k.version(),
                key: Locked::new(*index_key(ring.domain(), k.version(), k.bytes())),
            })
            .collect()
    }

    pub(crate) fn version(&self) -> KeyVersion {
        self.version
    }

    pub(crate) fn index(&self, message: &[u8]) -> [u8; 32] {
        hmac_sha256(&self.key[..], message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_key_is_not_the_record_key_and_depends_on_version_and_domain() {
        let ring = KeyRing::new(DomainId::from_bytes([1; 16]), 1, Zeroizing::new([7; 32]));
        let ix = BlindIndexer::primary(&ring);
        let rk = crate::crypto::record::record_key(ring.domain(), KeyVersion::FIRST, "a", &[7; 32]);
        assert_ne!(*ix.key, *rk);
        let mut r2 = ring.clone();
        r2.rotate(2, Zeroizing::new([7; 32])).unwrap();
        assert_ne!(BlindIndexer::primary(&r2).index(b"x"), ix.index(b"x"));
        let other = KeyRing::new(DomainId::from_bytes([2; 16]), 1, Zeroizing::new([7; 32]));
        assert_ne!(BlindIndexer::primary(&other).index(b"x"), ix.index(b"x"));
        assert_eq!(BlindIndexer::all(&r2).len(), 2);
        assert_eq!(BlindIndexer::all(&r2)[0].index(b"x"), ix.index(b"x"));
        assert!(!format!("{ix:?}").contains("07"));
    }

    #[test]
    fn row_identities_stay_the_same_across_rotations_and_storage() {
        let ring = KeyRing::new(DomainId::from_bytes([1; 16]), 1, Zeroizing::new([7; 32]));
        let before = RowIdentifier::of(&ring).identity(b"m");
        let mut rotated = ring.clone();
        rotated.rotate(2, Zeroizing::new([8; 32])).unwrap();
        assert_eq!(RowIdentifier::of(&rotated).identity(b"m"), before);
        assert_ne!(BlindIndexer::primary(&rotated).index(b"m"), before, "not an index key");
        let stored: KeyRing =
            serde_json::from_str(&serde_json::to_string(&rotated).unwrap()).unwrap();
        assert_eq!(RowIdentifier::of(&stored).identity(b"m"), before);
        // A ring stored before rings carried the key derives the same one from version 1.
        let mut old: serde_json::Value = serde_json::to_value(&rotated).unwrap();
        old.as_object_mut().unwrap().remove("row_identity");
        let old: KeyRing = serde_json::from_value(old).unwrap();
        assert_eq!(RowIdentifier::of(&old).identity(b"m"), before);
        // The part of a ring handed back keeps the domain's key, not one of its lowest version.
        let part = rotated.missing_from(&ring).unwrap();
        assert_eq!(RowIdentifier::of(&part).identity(b"m"), before);
        let other = KeyRing::new(DomainId::from_bytes([2; 16]), 1, Zeroizing::new([7; 32]));
        assert_ne!(RowIdentifier::of(&other).identity(b"m"), before);
        assert_eq!(format!("{:?}", RowIdentifier::of(&ring)), "RowIdentifier(<redacted>)");
    }
}
