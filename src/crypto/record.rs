//! The archived-record format: what the hot path returns and the archive stores.
//!
//! ```text
//! offset   size  field
//! 0        1     format version, 0x01
//! 1        4     key version, unsigned big-endian
//! 5        1     L = length of the cluster id in bytes (1..=253)
//! 6        L     cluster id, ASCII (a DNS name)
//! 6+L      12    nonce, random
//! 18+L     n     AES-256-GCM ciphertext of the n-byte plaintext
//! 18+L+n   16    AES-256-GCM tag
//! ```
//!
//! The record key is HKDF-SHA256(ikm = domain key of that version, salt = the 16 domain id
//! bytes, info = "imcrypt record key v1" || key version (4 bytes, big-endian) || cluster id),
//! 32 bytes. Each cluster thus seals under its own key and counts only its own invocations
//! against GCM's 2^32 limit (see `counter`). The associated data is the header (bytes 0..6+L)
//! || the 16 domain id bytes || the caller's metadata, so a record moved to another row, domain
//! or key version fails to open. docs/formats.md spells this out with a worked example.
//!
//! Invariant: `open` returns the sealed plaintext or a typed error; never a panic, never
//! unauthenticated bytes.

use std::collections::HashMap;

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::aead::{AeadImpl, AeadKey, NONCE_LEN, TAG_LEN};
use super::counter::{CounterError, InvocationCounter};
use super::keyring::KeyRing;
use super::random::NonceSource;
use crate::ids::{ClusterId, DomainId, KeyVersion};

const FORMAT_V1: u8 = 0x01;
pub const RECORD_KEY_INFO: &[u8] = b"imcrypt record key v1";
/// Bytes a record adds to its plaintext, besides the cluster id.
pub(crate) const FIXED_OVERHEAD: usize = 1 + 4 + 1 + NONCE_LEN + TAG_LEN;

/// Why a record cannot be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record is truncated: {got} bytes, at least {need} needed")]
    Truncated { need: usize, got: usize },
    #[error("record format version {0:#04x} is not supported (this imcrypt reads 0x01)")]
    UnsupportedFormat(u8),
    #[error("record header has key version 0, which does not exist")]
    ZeroKeyVersion,
    #[error("record header names an invalid cluster id")]
    BadClusterId,
    #[error(
        "record was sealed with key version {version}, which this key ring of domain {domain} \
         does not hold (it holds {held}): {hint}"
    )]
    UnknownKeyVersion { domain: DomainId, version: KeyVersion, held: String, hint: &'static str },
    #[error(
        "record failed authentication: it was altered, or belongs to another domain, key or row \
         (its associated data does not match)"
    )]
    Authentication,
    #[error(transparent)]
    Counter(#[from] CounterError),
}

/// The parsed fixed part of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordHeader<'a> {
    pub key_version: KeyVersion,
    pub cluster: &'a str,
    /// Header bytes 0..6+L, as they enter the associated data.
    raw: &'a [u8],
    nonce: &'a [u8; NONCE_LEN],
    /// Ciphertext followed by the 16-byte tag.
    body: &'a [u8],
}

impl<'a> RecordHeader<'a> {
    pub fn parse(rec: &'a [u8]) -> Result<Self, RecordError> {
        let need = |n: usize| {
            if rec.len() < n {
                Err(RecordError::Truncated { need: n, got: rec.len() })
            } else {
                Ok(())
            }
        };
        need(1)?;
        if rec[0] != FORMAT_V1 {
            return Err(RecordError::UnsupportedFormat(rec[0]));
        }
        need(6)?;
        let v = u32::from_be_bytes(rec[1..5].try_into().expect("4 bytes"));
        let key_version = KeyVersion::new(v).map_err(|_| RecordError::ZeroKeyVersion)?;
        let l = rec[5] as usize;
        need(FIXED_OVERHEAD + l)?;
        let cluster = std::str::from_utf8(&rec[6..6 + l]).map_err(|_| RecordError::BadClusterId)?;
        ClusterId::new(cluster).map_err(|_| RecordError::BadClusterId)?;
        Ok(Self {
            key_version,
            cluster,
            raw: &rec[..6 + l],
            nonce: rec[6 + l..18 + l].try_into().expect("12 bytes"),
            body: &rec[18 + l..],
        })
    }
}

/// Derives the record key of `cluster` for one domain key version.
pub fn record_key(
    domain: DomainId,
    version: KeyVersion,
    cluster: &str,
    domain_key: &[u8; 32],
) -> Zeroizing<[u8; 32]> {
    let hk = Hkdf::<Sha256>::new(Some(domain.as_bytes()), domain_key);
    let mut okm = Zeroizing::new([0u8; 32]);
    hk.expand_multi_info(
        &[RECORD_KEY_INFO, &version.get().to_be_bytes(), cluster.as_bytes()],
        &mut okm[..],
    )
    .expect("32 bytes is a valid HKDF-SHA256 output length");
    okm
}

fn write_header(out: &mut Vec<u8>, version: KeyVersion, cluster: &ClusterId) {
    out.push(FORMAT_V1);
    out.extend_from_slice(&version.get().to_be_bytes());
    out.push(cluster.as_str().len() as u8);
    out.extend_from_slice(cluster.as_str().as_bytes());
}

fn aad(header: &[u8], domain: DomainId, metadata: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(header.len() + 16 + metadata.len());
    a.extend_from_slice(header);
    a.extend_from_slice(domain.as_bytes());
    a.extend_from_slice(metadata);
    a
}

/// Seals new records of one cluster under the primary key version. Shared by all hot-path
/// workers (`&self`); each worker brings its own `NonceSource`.
#[derive(Debug)]
pub struct RecordSealer {
    domain: DomainId,
    version: KeyVersion,
    header: Vec<u8>,
    key: AeadKey,
    counter: InvocationCounter,
}

impl RecordSealer {
    /// `reserved` is the invocation count persisted for this cluster and the ring's primary
    /// version (0 for a version never used here); see `counter`.
    pub fn new(ring: &KeyRing, cluster: &ClusterId, imp: AeadImpl, reserved: u64) -> Self {
        let primary = ring.primary();
        let rk = record_key(ring.domain(), primary.version(), cluster.as_str(), primary.bytes());
        let mut header = Vec::with_capacity(6 + cluster.as_str().len());
        write_header(&mut header, primary.version(), cluster);
        Self {
            domain: ring.domain(),
            version: primary.version(),
            header,
            key: AeadKey::new(imp, &rk),
            counter: InvocationCounter::resume(reserved),
        }
    }

    pub(crate) fn domain(&self) -> DomainId {
        self.domain
    }

    pub(crate) fn key_version(&self) -> KeyVersion {
        self.version
    }

    pub fn counter(&self) -> &InvocationCounter {
        &self.counter
    }

    /// Appends one sealed record to `out` (which may already hold earlier records of a batch).
    pub fn seal_into(
        &self,
        nonces: &mut NonceSource,
        metadata: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), RecordError> {
        self.counter.take()?;
        let nonce = nonces.next_nonce();
        self.seal_with_nonce_into(&nonce, metadata, plaintext, out);
        Ok(())
    }

    /// Counts a batch of `n` records in one operation; the permit then seals exactly that
    /// many without touching the shared counter again (no cache-line contention between
    /// workers per record).
    pub(crate) fn take_batch(&self, n: usize) -> Result<BatchPermit<'_>, RecordError> {
        self.counter.take_many(n as u64)?;
        Ok(BatchPermit { sealer: self, left: n })
    }

    pub fn seal(
        &self,
        nonces: &mut NonceSource,
        metadata: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, RecordError> {
        let mut out = Vec::with_capacity(self.sealed_len(plaintext.len()));
        self.seal_into(nonces, metadata, plaintext, &mut out)?;
        Ok(out)
    }

    /// The length of the record for a plaintext of `n` bytes.
    fn sealed_len(&self, n: usize) -> usize {
        self.header.len() + NONCE_LEN + n + TAG_LEN
    }

    fn seal_with_nonce_into(
        &self,
        nonce: &[u8; NONCE_LEN],
        metadata: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) {
        out.reserve(self.sealed_len(plaintext.len()));
        out.extend_from_slice(&self.header);
        out.extend_from_slice(nonce);
        let start = out.len();
        out.extend_from_slice(plaintext);
        // The associated data is built on the stack for the usual short metadata: a heap
        // allocation per record costs more than the AES-GCM of a 256-byte message.
        let mut stack = [0u8; 640];
        let prefix = self.header.len() + 16;
        if prefix + metadata.len() <= stack.len() {
            stack[..self.header.len()].copy_from_slice(&self.header);
            stack[self.header.len()..prefix].copy_from_slice(self.domain.as_bytes());
            stack[prefix..prefix + metadata.len()].copy_from_slice(metadata);
            self.key.seal_in_place(nonce, &stack[..prefix + metadata.len()], out, start);
        } else {
            let aad = aad(&self.header, self.domain, metadata);
            self.key.seal_in_place(nonce, &aad, out, start);
        }
    }

    /// Seals with a caller-chosen nonce. Only for the worked example in docs/formats.md:
    /// a repeated nonce under one key destroys GCM's security.
    #[doc(hidden)]
    pub fn seal_with_fixed_nonce_for_docs(
        &self,
        nonce: &[u8; NONCE_LEN],
        metadata: &[u8],
        plaintext: &[u8],
    ) -> Vec<u8> {
        let mut out = Vec::new();
        self.seal_with_nonce_into(nonce, metadata, plaintext, &mut out);
        out
    }
}

/// The right to seal a counted batch; see `RecordSealer::take_batch`.
#[derive(Debug)]
pub(crate) struct BatchPermit<'s> {
    sealer: &'s RecordSealer,
    left: usize,
}

impl BatchPermit<'_> {
    /// Appends one sealed record to `out`. Panics beyond the counted number of records: that
    /// would seal uncounted, which the counter exists to prevent.
    pub(crate) fn seal_into(
        &mut self,
        nonces: &mut NonceSource,
        metadata: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) {
        assert!(self.left > 0, "sealing more records than the batch counted");
        self.left -= 1;
        let nonce = nonces.next_nonce();
        self.sealer.seal_with_nonce_into(&nonce, metadata, plaintext, out);
    }
}

/// Opens records of any cluster of a domain, for any version the ring holds. Derived record
/// keys are cached per (cluster, version), so reading an archive costs one HKDF per pair.
pub struct RecordOpener<'r> {
    ring: &'r KeyRing,
    imp: AeadImpl,
    keys: HashMap<(String, KeyVersion), AeadKey>,
}

impl<'r> RecordOpener<'r> {
    pub fn new(ring: &'r KeyRing, imp: AeadImpl) -> Self {
        Self { ring, imp, keys: HashMap::new() }
    }

    pub fn open(
        &mut self,
        record: &[u8],
        metadata: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, RecordError> {
        let h = RecordHeader::parse(record)?;
        let domain = self.ring.domain();
        let slot = (h.cluster.to_owned(), h.key_version);
        let aad = aad(h.raw, domain, metadata);
        if let Some(key) = self.keys.get(&slot) {
            return key.open(h.nonce, &aad, h.body).map_err(|_| RecordError::Authentication);
        }
        let dk =
            self.ring.get(h.key_version).map_err(|_| unknown_version(self.ring, h.key_version))?;
        let key = AeadKey::new(self.imp, &record_key(domain, h.key_version, h.cluster, dk.bytes()));
        let pt = key.open(h.nonce, &aad, h.body).map_err(|_| RecordError::Authentication)?;
        // Cached only once a record authenticated under it: forged rows with made-up cluster
        // ids cannot grow the cache.
        self.keys.insert(slot, key);
        Ok(pt)
    }
}

/// The error for a record under a version `ring` lacks, with where its key can be found: a
/// version below the ring's oldest was retired (`imcrypt key retire`), and only a key export
/// made before the retirement holds it; one above its newest is newer than the export.
fn unknown_version(ring: &KeyRing, version: KeyVersion) -> RecordError {
    let held = ring.versions().map(|v| v.to_string()).collect::<Vec<_>>().join(", ");
    let hint = if version < ring.oldest() {
        "that version was retired (imcrypt key retire); its key is only in a key export made \
         before the retirement: unwrap that export (imcrypt key unwrap) and read with its key ring"
    } else if version > ring.newest() {
        "that version is newer than this key ring: download the keys again (imcrypt key \
         download) and unwrap the new export"
    } else {
        "that version was retired (imcrypt key retire) or was recovered after this export was \
         made; unwrap a key export that holds it (one made before its retirement)"
    };
    RecordError::UnknownKeyVersion { domain: ring.domain(), version, held, hint }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (KeyRing, ClusterId) {
        let ring = KeyRing::new(DomainId::from_bytes([5; 16]), 1, Zeroizing::new([9; 32]));
        (ring, ClusterId::new("east").unwrap())
    }

    fn sealer(ring: &KeyRing, c: &ClusterId, imp: AeadImpl) -> RecordSealer {
        let s = RecordSealer::new(ring, c, imp, 0);
        s.counter().commit_reservation(1 << 20);
        s
    }

    #[test]
    fn round_trip_with_both_implementations() {
        let (ring, c) = setup();
        let mut n = NonceSource::from_os();
        for imp in AeadImpl::ALL {
            for other in AeadImpl::ALL {
                let rec = sealer(&ring, &c, imp).seal(&mut n, b"row 1", b"hello").unwrap();
                assert_eq!(rec.len(), FIXED_OVERHEAD + 4 + 5);
                let pt = RecordOpener::new(&ring, other).open(&rec, b"row 1").unwrap();
                assert_eq!(&pt[..], b"hello");
            }
        }
    }

    #[test]
    fn every_flipped_bit_and_every_truncation_is_an_error() {
        let (ring, c) = setup();
        let rec = sealer(&ring, &c, AeadImpl::Ring)
            .seal(&mut NonceSource::from_os(), b"m", b"some secret message")
            .unwrap();
        let mut op = RecordOpener::new(&ring, AeadImpl::Ring);
        for i in 0..rec.len() {
            for bit in 0..8 {
                let mut t = rec.clone();
                t[i] ^= 1 << bit;
                assert!(op.open(&t, b"m").is_err(), "byte {i} bit {bit}");
            }
        }
        for len in 0..rec.len() {
            assert!(op.open(&rec[..len], b"m").is_err(), "truncated to {len}");
        }
        let mut longer = rec.clone();
        longer.push(0);
        assert_eq!(op.open(&longer, b"m"), Err(RecordError::Authentication));
    }

    #[test]
    fn associated_data_binds_domain_metadata_and_version() {
        let (ring, c) = setup();
        let rec = sealer(&ring, &c, AeadImpl::Ring)
            .seal(&mut NonceSource::from_os(), b"row 1", b"x")
            .unwrap();
        let mut op = RecordOpener::new(&ring, AeadImpl::Ring);
        assert_eq!(op.open(&rec, b"row 2"), Err(RecordError::Authentication));
        // Same key bytes, other domain: the record must not open there.
        let other = KeyRing::new(DomainId::from_bytes([6; 16]), 1, Zeroizing::new([9; 32]));
        assert_eq!(
            RecordOpener::new(&other, AeadImpl::Ring).open(&rec, b"row 1"),
            Err(RecordError::Authentication)
        );
    }

    #[test]
    fn rotation_keeps_old_records_readable_and_seals_new_ones_with_the_primary() {
        let (mut ring, c) = setup();
        let mut n = NonceSource::from_os();
        let old = sealer(&ring, &c, AeadImpl::Ring).seal(&mut n, b"", b"old").unwrap();
        ring.rotate(2, Zeroizing::new([10; 32])).unwrap();
        let s = sealer(&ring, &c, AeadImpl::Ring);
        assert_eq!(s.key_version().get(), 2);
        let new = s.seal(&mut n, b"", b"new").unwrap();
        assert_eq!(RecordHeader::parse(&new).unwrap().key_version.get(), 2);
        let mut op = RecordOpener::new(&ring, AeadImpl::RustCrypto);
        assert_eq!(&op.open(&old, b"").unwrap()[..], b"old");
        assert_eq!(&op.open(&new, b"").unwrap()[..], b"new");
        let (v1_only, _) = setup();
        let e = RecordOpener::new(&v1_only, AeadImpl::Ring).open(&new, b"").unwrap_err();
        assert!(matches!(e, RecordError::UnknownKeyVersion { version, .. } if version.get() == 2));
        assert!(e.to_string().contains("(it holds 1): that version is newer"), "{e}");
        // A ring that retired version 1 names the export made before the retirement.
        let mut retired = ring.clone();
        retired.retire_below(KeyVersion::new(2).unwrap()).unwrap();
        let e = RecordOpener::new(&retired, AeadImpl::Ring).open(&old, b"").unwrap_err();
        assert!(
            e.to_string().contains(
                "key version 1, which this key ring of domain 05050505050505050505050505050505 \
                 does not hold (it holds 2): that version was retired (imcrypt key retire); its \
                 key is only in a key export made before the retirement"
            ),
            "{e}"
        );
    }

    #[test]
    fn clusters_seal_under_different_record_keys() {
        let (ring, a) = setup();
        let b = ClusterId::new("west").unwrap();
        let ka = record_key(ring.domain(), KeyVersion::FIRST, a.as_str(), ring.primary().bytes());
        let kb = record_key(ring.domain(), KeyVersion::FIRST, b.as_str(), ring.primary().bytes());
        assert_ne!(*ka, *kb);
        let rec = sealer(&ring, &b, AeadImpl::Ring)
            .seal(&mut NonceSource::from_os(), b"", b"from west")
            .unwrap();
        assert_eq!(
            &RecordOpener::new(&ring, AeadImpl::Ring).open(&rec, b"").unwrap()[..],
            b"from west"
        );
    }

    #[test]
    fn long_metadata_takes_the_heap_path_and_still_binds() {
        let (ring, c) = setup();
        let meta = vec![b'm'; 2000];
        let rec = sealer(&ring, &c, AeadImpl::Ring)
            .seal(&mut NonceSource::from_os(), &meta, b"x")
            .unwrap();
        let mut op = RecordOpener::new(&ring, AeadImpl::RustCrypto);
        assert_eq!(&op.open(&rec, &meta).unwrap()[..], b"x");
        assert_eq!(op.open(&rec, &meta[1..]), Err(RecordError::Authentication));
    }

    #[test]
    fn a_batch_permit_seals_what_it_counted() {
        let (ring, c) = setup();
        let s = RecordSealer::new(&ring, &c, AeadImpl::Ring, 0);
        s.counter().commit_reservation(3);
        let mut n = NonceSource::from_os();
        let mut permit = s.take_batch(3).unwrap();
        let mut out = Vec::new();
        for pt in [&b"a"[..], b"bb", b"ccc"] {
            let at = out.len();
            permit.seal_into(&mut n, b"m", pt, &mut out);
            let rec = out[at..].to_vec();
            assert_eq!(&RecordOpener::new(&ring, AeadImpl::Ring).open(&rec, b"m").unwrap()[..], pt);
        }
        assert_eq!(s.counter().used(), 3);
        assert!(matches!(s.take_batch(1), Err(RecordError::Counter(_))));
    }

    #[test]
    fn sealing_stops_when_the_reservation_is_used_up() {
        let (ring, c) = setup();
        let s = RecordSealer::new(&ring, &c, AeadImpl::Ring, 0);
        assert_eq!(
            s.seal(&mut NonceSource::from_os(), b"", b"x"),
            Err(RecordError::Counter(CounterError::ReservationExhausted))
        );
    }

    #[test]
    fn parser_names_what_is_wrong() {
        assert_eq!(RecordHeader::parse(&[]), Err(RecordError::Truncated { need: 1, got: 0 }));
        assert_eq!(RecordHeader::parse(&[2]), Err(RecordError::UnsupportedFormat(2)));
        assert_eq!(RecordHeader::parse(&[1, 0, 0, 0, 0, 1]), Err(RecordError::ZeroKeyVersion));
        let mut r = vec![1, 0, 0, 0, 1, 1, b'A'];
        r.resize(40, 0);
        assert_eq!(RecordHeader::parse(&r), Err(RecordError::BadClusterId));
    }
}
