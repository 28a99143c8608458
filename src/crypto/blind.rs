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

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::keyring::KeyRing;
use super::locked::Locked;
use super::mac::hmac_sha256;
use crate::ids::{DomainId, KeyVersion};

/// The HKDF info prefix of the index key (22 ASCII bytes, no terminator).
const INDEX_KEY_INFO: &[u8] = b"imcrypt blind index v1";

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
}
