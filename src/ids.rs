//! Identifiers shared by every layer: who a cluster is, which encryption domain a key belongs
//! to, how new a domain's state is, and which key version sealed a record.
//!
//! Invariant: a value of these types is always valid. A `ClusterId` is a DNS name (it is the
//! name in the cluster's TLS certificate and travels in every record header, so it must fit in
//! one length byte); a `KeyVersion` is never 0.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("cluster id is empty")]
    EmptyClusterId,
    #[error("cluster id {0:?} is longer than 253 characters")]
    ClusterIdTooLong(String),
    #[error(
        "cluster id {0:?} is not a DNS name: use lowercase letters, digits, '-' and '.', \
         with no empty label and no '-' at either end of a label"
    )]
    ClusterIdNotDnsName(String),
    #[error(
        "cluster id {0:?} cannot be a certificate's DNS name: its last label must not be all \
         digits"
    )]
    ClusterIdNumeric(String),
    #[error("domain id {0:?} is not 32 hexadecimal digits")]
    BadDomainId(String),
    #[error("key version 0 does not exist: versions are numbered from 1")]
    ZeroKeyVersion,
}

/// The name of one IM cluster, equal to the DNS name in its certificate.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClusterId(String);

impl ClusterId {
    pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
        let s = s.into();
        if s.is_empty() {
            return Err(IdError::EmptyClusterId);
        }
        if s.len() > 253 {
            return Err(IdError::ClusterIdTooLong(s));
        }
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        if !s.split('.').all(label_ok) {
            return Err(IdError::ClusterIdNotDnsName(s));
        }
        // TLS takes a name whose last label is all digits for an IP address, not a DNS name;
        // such an id could never be the name in a certificate.
        if rustls_pki_types::DnsName::try_from(s.as_str()).is_err() {
            return Err(IdError::ClusterIdNumeric(s));
        }
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterId({})", self.0)
    }
}

impl FromStr for ClusterId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::new(s)
    }
}

impl Serialize for ClusterId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ClusterId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(s).map_err(serde::de::Error::custom)
    }
}

/// An encryption domain: the set of clusters that share one master and one key ring.
/// 16 random bytes, shown as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DomainId([u8; 16]);

impl DomainId {
    pub const fn from_bytes(b: [u8; 16]) -> Self {
        Self(b)
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for DomainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for DomainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DomainId({self})")
    }
}

impl FromStr for DomainId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let mut b = [0u8; 16];
        hex::decode_to_slice(s, &mut b).map_err(|_| IdError::BadDomainId(s.to_owned()))?;
        Ok(Self(b))
    }
}

impl Serialize for DomainId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DomainId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// How new a domain's replicated state is. The master bumps it on every change; a slave only
/// accepts a state whose epoch is higher than the one it holds.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Epoch(pub u64);

impl Epoch {
    pub(crate) fn next(self) -> Self {
        Self(self.0 + 1)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Which mastership of a domain a replicated state belongs to: a **round**, raised by every
/// handover and promotion, and the **slot** of the cluster that is master in it (each member
/// of a domain has its own slot, [`crate::cluster`]'s `DomainState::members`). Terms order by
/// round, then slot; nobody accepts a state of a lower term than the one it holds.
///
/// Invariants: the domain's creator is master of the initial term (round 0, slot 0); two
/// clusters with different slots never share a term, so a term has at most one master; and
/// each term owns its own block of key versions ([`Term::versions`]), so two masters of
/// different terms can never make two different keys under one version number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Term(u32);

impl Term {
    /// The term of the cluster that enabled encryption: round 0, slot 0 (key versions 1, 2…).
    pub const INITIAL: Term = Term(0);
    /// Rounds are numbered 0 to 1023 (10 bits): a domain survives 1023 handovers and
    /// promotions.
    pub const MAX_ROUND: u32 = (1 << 10) - 1;
    /// Bits of a key version that number the versions of one term: 16,383 rotations per term.
    const SEQ_BITS: u32 = 14;

    /// The term of round `round` whose master has slot `slot`; `None` past [`Term::MAX_ROUND`].
    pub fn new(round: u32, slot: u8) -> Option<Term> {
        (round <= Self::MAX_ROUND).then_some(Term((round << 8) | u32::from(slot)))
    }

    /// The creator's term, which states made before terms existed have too (left out of the
    /// JSON, so that peers of that version understand it).
    pub fn is_initial(&self) -> bool {
        *self == Term::INITIAL
    }

    pub fn round(self) -> u32 {
        self.0 >> 8
    }

    pub fn slot(self) -> u8 {
        (self.0 & 0xff) as u8
    }

    /// The key versions a master of this term may create: the term's number shifted left by
    /// 14 bits, plus 1 to 16,383. Term 0 (the creator's) thus numbers its versions 1, 2, 3…,
    /// as every domain made before terms existed did; round 1 with slot 2 starts at
    /// 258·2^14 + 1 = 4,227,073. The largest term (round 1023, slot 255) ends at 2^32 − 1.
    pub fn versions(self) -> std::ops::RangeInclusive<KeyVersion> {
        let base = self.0 << Self::SEQ_BITS;
        KeyVersion(base + 1)..=KeyVersion(base + ((1 << Self::SEQ_BITS) - 1))
    }
}

impl fmt::Display for Term {
    /// `round.slot`, e.g. `2.1`: round 2, master in slot 1.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.round(), self.slot())
    }
}

impl<'de> Deserialize<'de> for Term {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u32::deserialize(d)?;
        if n >> 8 > Self::MAX_ROUND {
            return Err(serde::de::Error::custom(format!(
                "term {n} has a round above {}",
                Self::MAX_ROUND
            )));
        }
        Ok(Term(n))
    }
}

/// The number of a key in a domain's key ring, from 1; it is written into every record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct KeyVersion(u32);

impl KeyVersion {
    pub const FIRST: KeyVersion = KeyVersion(1);

    pub fn new(v: u32) -> Result<Self, IdError> {
        if v == 0 { Err(IdError::ZeroKeyVersion) } else { Ok(Self(v)) }
    }

    pub fn get(self) -> u32 {
        self.0
    }

    /// The version after this one; `None` once the 32-bit space is used up.
    pub(crate) fn next(self) -> Option<Self> {
        self.0.checked_add(1).map(Self)
    }
}

impl fmt::Display for KeyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> Deserialize<'de> for KeyVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(u32::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_ids_are_dns_names() {
        assert!(ClusterId::new("a").is_ok());
        assert!(ClusterId::new("im-east.example.com").is_ok());
        assert_eq!(ClusterId::new(""), Err(IdError::EmptyClusterId));
        for bad in ["A", "a..b", "-a", "a-", "a_b", "a b", ".a"] {
            assert!(matches!(ClusterId::new(bad), Err(IdError::ClusterIdNotDnsName(_))), "{bad}");
        }
        assert!(matches!(ClusterId::new("a".repeat(254)), Err(IdError::ClusterIdTooLong(_))));
    }

    #[test]
    fn domain_id_round_trips_through_hex() {
        let d = DomainId::from_bytes([0xab; 16]);
        assert_eq!(d.to_string(), "ab".repeat(16));
        assert_eq!(d.to_string().parse::<DomainId>().unwrap(), d);
        assert!("xyz".parse::<DomainId>().is_err());
    }

    #[test]
    fn key_version_zero_is_refused() {
        assert_eq!(KeyVersion::new(0), Err(IdError::ZeroKeyVersion));
        assert!(serde_json::from_str::<KeyVersion>("0").is_err());
        assert_eq!(serde_json::from_str::<KeyVersion>("3").unwrap().get(), 3);
    }
}
