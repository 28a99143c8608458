//! The key ring of one encryption domain: numbered AES-256 key versions, one of them primary.
//!
//! Invariants: versions are numbered from 1 and only grow (rotation adds `max + 1` and makes it
//! primary); the primary version is always present (retiring old versions never removes it); key bytes are zeroized on drop and never
//! appear in `Debug` or `Display`. The ring also holds the domain's **row identity key**
//! (`crypto::blind`), derived once from the domain's first version and never rotated, so that
//! an archived row keeps one identity whatever versions come and go. The ring is pure data: key bytes and times come in from the
//! caller, so the cluster state machine can hold and replicate it without I/O.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::blind::row_identity_key;
use super::locked::Locked;
use crate::ids::{DomainId, KeyVersion};

/// Why a key ring cannot be built or changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyRingError {
    #[error("key ring of domain {domain} has no key version {version}")]
    UnknownVersion { domain: DomainId, version: KeyVersion },
    #[error("key ring of domain {0} has no keys")]
    Empty(DomainId),
    #[error("key ring of domain {domain} lists version {version} twice")]
    DuplicateVersion { domain: DomainId, version: KeyVersion },
    #[error("key ring of domain {0} has used up all 2^32 key versions")]
    VersionsExhausted(DomainId),
    #[error("key version {version} of domain {domain} is not 32 bytes of base64")]
    BadKeyBytes { domain: DomainId, version: KeyVersion },
    #[error("the key versions of this term in domain {0} are used up (16,383 per term)")]
    TermVersionsExhausted(DomainId),
    #[error(
        "key version {version} of domain {domain} is held with two different keys; neither \
         is replaced"
    )]
    Clash { domain: DomainId, version: KeyVersion },
    #[error("key version {primary} of domain {domain} is primary and cannot be retired")]
    RetirePrimary { domain: DomainId, primary: KeyVersion },
}

/// One key version: 32 secret bytes and when it was made (Unix seconds).
#[derive(Clone)]
pub struct DomainKey {
    version: KeyVersion,
    created_unix: u64,
    /// Out of core dumps and swap, zeroed on drop.
    bytes: Locked<[u8; 32]>,
}

impl DomainKey {
    pub fn new(version: KeyVersion, created_unix: u64, bytes: Zeroizing<[u8; 32]>) -> Self {
        Self { version, created_unix, bytes: Locked::new(*bytes) }
    }

    pub(crate) fn version(&self) -> KeyVersion {
        self.version
    }

    pub(crate) fn created_unix(&self) -> u64 {
        self.created_unix
    }

    /// The secret bytes. Callers derive or wrap from them; they never log or store them raw.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.bytes
    }
}

impl fmt::Debug for DomainKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DomainKey(v{}, created {}, <redacted>)", self.version, self.created_unix)
    }
}

impl PartialEq for DomainKey {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        self.version == other.version
            && self.created_unix == other.created_unix
            && bool::from(self.bytes.ct_eq(&*other.bytes))
    }
}
impl Eq for DomainKey {}

/// All key versions of one domain and which one seals new records.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyRing {
    domain: DomainId,
    primary: KeyVersion,
    keys: BTreeMap<KeyVersion, DomainKey>,
    /// The row identity key: derived from the first version when the domain is made, then kept
    /// as it is (rotation does not touch it; a ring that no longer holds the first version still
    /// has it).
    row_identity: RowIdentityKey,
}

/// The domain's row identity key (`crypto::blind::row_identity_key`). Out of core dumps and
/// swap, zeroed on drop, compared in constant time, never in `Debug`.
#[derive(Clone)]
pub(crate) struct RowIdentityKey(Locked<[u8; 32]>);

impl RowIdentityKey {
    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl PartialEq for RowIdentityKey {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        bool::from(self.0.ct_eq(&*other.0))
    }
}
impl Eq for RowIdentityKey {}

impl KeyRing {
    /// A new ring whose only key, version 1, is `bytes`.
    pub fn new(domain: DomainId, created_unix: u64, bytes: Zeroizing<[u8; 32]>) -> Self {
        let v = KeyVersion::FIRST;
        let row_identity = RowIdentityKey(Locked::new(*row_identity_key(domain, &bytes)));
        let mut keys = BTreeMap::new();
        keys.insert(v, DomainKey::new(v, created_unix, bytes));
        Self { domain, primary: v, keys, row_identity }
    }

    /// Rebuilds a ring from its parts (an unwrapped export, a stored state), checking that the
    /// primary exists and no version repeats. Its row identity key is derived from the lowest
    /// version given, which is right while that is the domain's first version (a state stored
    /// before rings carried the key; a full export); a stored ring brings its own key instead
    /// (`with_row_identity`).
    pub fn from_keys(
        domain: DomainId,
        primary: KeyVersion,
        keys: impl IntoIterator<Item = DomainKey>,
    ) -> Result<Self, KeyRingError> {
        let mut map = BTreeMap::new();
        for k in keys {
            let version = k.version;
            if map.insert(version, k).is_some() {
                return Err(KeyRingError::DuplicateVersion { domain, version });
            }
        }
        if map.is_empty() {
            return Err(KeyRingError::Empty(domain));
        }
        if !map.contains_key(&primary) {
            return Err(KeyRingError::UnknownVersion { domain, version: primary });
        }
        let first = map.values().next().expect("not empty").bytes();
        let row_identity = RowIdentityKey(Locked::new(*row_identity_key(domain, first)));
        Ok(Self { domain, primary, keys: map, row_identity })
    }

    /// The same ring with the row identity key `key` (as stored with it).
    fn with_row_identity(mut self, key: Zeroizing<[u8; 32]>) -> Self {
        self.row_identity = RowIdentityKey(Locked::new(*key));
        self
    }

    /// The domain's row identity key, the same on every cluster of the domain.
    pub(crate) fn row_identity(&self) -> &RowIdentityKey {
        &self.row_identity
    }

    /// Adds version `newest + 1` with `bytes` and makes it primary. Old versions stay, so
    /// records sealed under them still open.
    pub fn rotate(
        &mut self,
        created_unix: u64,
        bytes: Zeroizing<[u8; 32]>,
    ) -> Result<KeyVersion, KeyRingError> {
        let v = self.newest().next().ok_or(KeyRingError::VersionsExhausted(self.domain))?;
        self.keys.insert(v, DomainKey::new(v, created_unix, bytes));
        self.primary = v;
        Ok(v)
    }

    /// Adds the next version of `term`'s block (the first one if the ring has none there) and
    /// makes it primary: a master numbers new keys only inside its own term's block, so two
    /// masters of different terms never make two keys under one number.
    pub(crate) fn rotate_in(
        &mut self,
        term: crate::ids::Term,
        created_unix: u64,
        bytes: Zeroizing<[u8; 32]>,
    ) -> Result<KeyVersion, KeyRingError> {
        let block = term.versions();
        let (first, last) = (*block.start(), *block.end());
        let v = match self.keys.range(block).next_back() {
            None => first,
            Some((&v, _)) if v == last => {
                return Err(KeyRingError::TermVersionsExhausted(self.domain));
            }
            Some((v, _)) => v.next().expect("below the block's end"),
        };
        self.keys.insert(v, DomainKey::new(v, created_unix, bytes));
        self.primary = v;
        Ok(v)
    }

    /// Adds `key` as a non-primary version: `Ok(true)` if it was missing, `Ok(false)` if the
    /// ring already holds that very key, [`KeyRingError::Clash`] (and nothing changes) if it
    /// holds another key under that version.
    pub(crate) fn insert(&mut self, key: &DomainKey) -> Result<bool, KeyRingError> {
        match self.keys.get(&key.version) {
            Some(k) if k == key => Ok(false),
            Some(_) => Err(KeyRingError::Clash { domain: self.domain, version: key.version }),
            None => {
                self.keys.insert(key.version, key.clone());
                Ok(true)
            }
        }
    }

    /// The keys of this ring that `other` lacks (same version and bytes count as held), as a
    /// ring of their own (primary: the newest of them); `None` if `other` holds them all or
    /// belongs to another domain.
    pub(crate) fn missing_from(&self, other: &KeyRing) -> Option<KeyRing> {
        if other.domain != self.domain {
            return None;
        }
        let missing: Vec<DomainKey> =
            self.keys.values().filter(|k| other.keys.get(&k.version) != Some(k)).cloned().collect();
        let primary = missing.last()?.version;
        let part = Self::from_keys(self.domain, primary, missing).expect("distinct, non-empty");
        Some(Self { row_identity: self.row_identity.clone(), ..part })
    }

    /// Removes every version below `below` and returns them as a ring of their own (primary:
    /// the newest of them, same row identity key), or `None` if there is none. Refused with
    /// [`KeyRingError::RetirePrimary`] (nothing changes) when `below` is above the primary,
    /// which always stays: a ring is never left empty, and new records keep their key.
    pub(crate) fn retire_below(
        &mut self,
        below: KeyVersion,
    ) -> Result<Option<KeyRing>, KeyRingError> {
        if below > self.primary {
            return Err(KeyRingError::RetirePrimary { domain: self.domain, primary: self.primary });
        }
        let kept = self.keys.split_off(&below);
        let removed = std::mem::replace(&mut self.keys, kept);
        let Some(primary) = removed.keys().next_back().copied() else { return Ok(None) };
        Ok(Some(Self {
            domain: self.domain,
            primary,
            keys: removed,
            row_identity: self.row_identity.clone(),
        }))
    }

    /// This ring without the versions in `drop` (primary: the newest left), or `None` if
    /// nothing would be left.
    pub(crate) fn except(&self, drop: &std::collections::BTreeSet<KeyVersion>) -> Option<KeyRing> {
        let keys: BTreeMap<KeyVersion, DomainKey> = self
            .keys
            .iter()
            .filter(|(v, _)| !drop.contains(v))
            .map(|(v, k)| (*v, k.clone()))
            .collect();
        let primary = if keys.contains_key(&self.primary) {
            self.primary
        } else {
            *keys.keys().next_back()?
        };
        Some(Self { domain: self.domain, primary, keys, row_identity: self.row_identity.clone() })
    }

    /// The oldest version this ring holds.
    pub(crate) fn oldest(&self) -> KeyVersion {
        *self.keys.keys().next().expect("a key ring is never empty")
    }

    pub fn domain(&self) -> DomainId {
        self.domain
    }

    pub fn primary_version(&self) -> KeyVersion {
        self.primary
    }

    pub fn primary(&self) -> &DomainKey {
        &self.keys[&self.primary]
    }

    pub(crate) fn newest(&self) -> KeyVersion {
        *self.keys.keys().next_back().expect("a key ring is never empty")
    }

    pub fn get(&self, v: KeyVersion) -> Result<&DomainKey, KeyRingError> {
        self.keys.get(&v).ok_or(KeyRingError::UnknownVersion { domain: self.domain, version: v })
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &DomainKey> {
        self.keys.values()
    }

    pub(crate) fn versions(&self) -> impl Iterator<Item = KeyVersion> + '_ {
        self.keys.keys().copied()
    }
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("domain", &self.domain)
            .field("primary", &self.primary)
            .field("versions", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The serialized form of a ring, for the sealed state file and for the peer sync (which runs
/// only over mutually authenticated TLS). Key bytes are base64.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RingRepr {
    domain: DomainId,
    primary: KeyVersion,
    keys: Vec<KeyRepr>,
    /// Absent in rings stored before it existed: then derived from the first version, which
    /// every such ring still holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    row_identity: Option<Zeroizing<String>>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyRepr {
    version: KeyVersion,
    created_unix: u64,
    key: Zeroizing<String>,
}

impl KeyRing {
    fn repr(&self, with_row_identity: bool) -> RingRepr {
        RingRepr {
            domain: self.domain,
            primary: self.primary,
            keys: self
                .keys
                .values()
                .map(|k| KeyRepr {
                    version: k.version,
                    created_unix: k.created_unix,
                    key: Zeroizing::new(B64.encode(&k.bytes[..])),
                })
                .collect(),
            row_identity: with_row_identity
                .then(|| Zeroizing::new(B64.encode(&self.row_identity.0[..]))),
        }
    }
}

impl Serialize for KeyRing {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.repr(true).serialize(s)
    }
}

/// A ring serialized with its key versions only, without the row identity key: what leaves
/// the daemons for a viewer (the key ring file), which reads rows and never names them.
pub(crate) struct VersionsOnly<'a>(pub(crate) &'a KeyRing);

impl Serialize for VersionsOnly<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.repr(false).serialize(s)
    }
}

impl<'de> Deserialize<'de> for KeyRing {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = RingRepr::deserialize(d)?;
        let domain = r.domain;
        let keys = r
            .keys
            .into_iter()
            .map(|k| {
                let raw = Zeroizing::new(B64.decode(k.key.as_bytes()).unwrap_or_default());
                let mut bytes = Zeroizing::new([0u8; 32]);
                if raw.len() != 32 {
                    return Err(KeyRingError::BadKeyBytes { domain, version: k.version });
                }
                bytes.copy_from_slice(&raw);
                Ok(DomainKey::new(k.version, k.created_unix, bytes))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(serde::de::Error::custom)?;
        let ring = KeyRing::from_keys(domain, r.primary, keys).map_err(serde::de::Error::custom)?;
        let Some(b64) = r.row_identity else { return Ok(ring) };
        let bad = |why: &str| {
            serde::de::Error::custom(format!("the row identity key of domain {domain} {why}"))
        };
        let raw = Zeroizing::new(
            B64.decode(b64.as_bytes()).map_err(|e| bad(&format!("is not base64: {e}")))?,
        );
        let bytes: Zeroizing<[u8; 32]> =
            Zeroizing::new(raw.as_slice().try_into().map_err(|_| bad("is not 32 bytes"))?);
        // While the ring holds version 1, the key must be the one derived from it: a state or
        // a peer that says otherwise would split the archive's duplicate detection.
        if let Ok(first) = ring.get(KeyVersion::FIRST) {
            use subtle::ConstantTimeEq;
            let derived = row_identity_key(domain, first.bytes());
            if !bool::from(derived.ct_eq(&*bytes)) {
                return Err(bad("is not the one derived from its key version 1"));
            }
        }
        Ok(ring.with_row_identity(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> KeyRing {
        KeyRing::new(DomainId::from_bytes([1; 16]), 100, Zeroizing::new([7; 32]))
    }

    #[test]
    fn a_stored_row_identity_key_that_is_not_derived_from_version_1_is_refused() {
        let r = ring();
        let mut v = serde_json::to_value(&r).unwrap();
        v["row_identity"] = serde_json::Value::String(B64.encode([9u8; 32]));
        let e = serde_json::from_value::<KeyRing>(v.clone()).unwrap_err().to_string();
        assert!(e.contains("not the one derived from its key version 1"), "{e}");
        v["row_identity"] = serde_json::Value::String("not base64!".into());
        let e = serde_json::from_value::<KeyRing>(v).unwrap_err().to_string();
        assert!(e.contains("is not base64"), "{e}");
    }

    #[test]
    fn rotation_adds_a_primary_version_and_keeps_old_ones() {
        let mut r = ring();
        assert_eq!(r.primary_version().get(), 1);
        let v2 = r.rotate(200, Zeroizing::new([8; 32])).unwrap();
        assert_eq!(v2.get(), 2);
        assert_eq!(r.primary_version(), v2);
        assert_eq!(r.get(KeyVersion::FIRST).unwrap().bytes(), &[7; 32]);
        assert_eq!(r.primary().created_unix(), 200);
        assert_eq!(r.versions().map(|v| v.get()).collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn debug_never_shows_key_bytes() {
        let r = KeyRing::new(DomainId::from_bytes([1; 16]), 1, Zeroizing::new([0xAB; 32]));
        let s = format!("{r:?} {:?}", r.primary());
        assert!(!s.to_lowercase().contains("abab"), "{s}");
        assert!(!s.contains("171"), "{s}");
    }

    #[test]
    fn serde_round_trip_and_validation() {
        let mut r = ring();
        r.rotate(5, Zeroizing::new([9; 32])).unwrap();
        let json = serde_json::to_string(&r).unwrap();
        let back: KeyRing = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
        let bad = json.replace("\"primary\":2", "\"primary\":3");
        let err = serde_json::from_str::<KeyRing>(&bad).unwrap_err().to_string();
        assert!(err.contains("no key version 3"), "{err}");
    }

    #[test]
    fn from_keys_refuses_duplicates_and_missing_primary() {
        let d = DomainId::from_bytes([1; 16]);
        let k = || DomainKey::new(KeyVersion::FIRST, 0, Zeroizing::new([0; 32]));
        assert!(matches!(
            KeyRing::from_keys(d, KeyVersion::FIRST, [k(), k()]),
            Err(KeyRingError::DuplicateVersion { .. })
        ));
        assert!(matches!(
            KeyRing::from_keys(d, KeyVersion::new(2).unwrap(), [k()]),
            Err(KeyRingError::UnknownVersion { .. })
        ));
        assert!(matches!(
            KeyRing::from_keys(d, KeyVersion::FIRST, []),
            Err(KeyRingError::Empty(_))
        ));
    }
}
