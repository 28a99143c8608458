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
