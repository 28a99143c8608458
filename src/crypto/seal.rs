//! The node key: 32 random bytes that seal this node's state at rest (AES-256-GCM under keys
//! derived from it with HKDF-SHA256, one per purpose). Its file, `node.key`, is the store's
//! (`store::node_key`); `NodeKeyError` says what is wrong with that file.
//!
//! Invariants: the key is zeroized on drop and never logged; each purpose gets its own key.

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::aead::{AeadImpl, AeadKey};
use super::locked::Locked;

/// What a derived sealing key is for; each purpose gets its own key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The state file (store).
    State,
    /// Counter reservations (crypto::counter).
    Counters,
    /// The named administrators' token hashes (admin::tokens).
    AdminTokens,
    /// The audit trail's chain head (`audit::log`).
    AuditHead,
}

impl Purpose {
    fn info(self) -> &'static [u8] {
        match self {
            Purpose::State => b"imcrypt seal state v1",
            Purpose::Counters => b"imcrypt seal counters v1",
            Purpose::AdminTokens => b"imcrypt seal admin tokens v1",
            Purpose::AuditHead => b"imcrypt seal audit head v1",
        }
    }
}

/// This node's sealing key, out of core dumps and swap.
pub struct NodeKey(Locked<[u8; 32]>);

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeKey(<redacted>)")
    }
}

impl NodeKey {
    /// The key from its secret bytes. Reading and creating the key file is the store's
    /// (`store::node_key`, which adds `NodeKey::load_or_create`).
    pub(crate) fn from_secret(key: Zeroizing<[u8; 32]>) -> Self {
        Self(Locked::new(*key))
    }

    /// A key from bytes, for tests.
    #[doc(hidden)]
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(Locked::new(b))
    }

    /// The AES-256-GCM key for one purpose: HKDF-SHA256(ikm = node key, no salt, info).
    pub fn sealing_key(&self, purpose: Purpose) -> AeadKey {
        AeadKey::new(AeadImpl::default(), &self.expand(purpose.info()))
    }

    /// The key of the admin API's client proofs (`admin::proof`): HKDF-SHA256 as for the
    /// sealing keys, with its own info, so proofs stay valid across restarts.
    pub(crate) fn client_proof_key(&self) -> Zeroizing<[u8; 32]> {
        self.expand(b"imcrypt admin client proof v1")
    }

    fn expand(&self, info: &[u8]) -> Zeroizing<[u8; 32]> {
        let hk = Hkdf::<Sha256>::new(None, &self.0[..]);
        let mut k = Zeroizing::new([0u8; 32]);
        hk.expand(info, &mut k[..]).expect("32 bytes is a valid HKDF output length");
        k
    }
}
