//! AES-256-GCM behind one small interface with two implementations: `ring` (assembly, the
//! fastest here, already in the tree under rustls) and RustCrypto's `aes-gcm` (portable, pure
//! Rust). Both are checked against Wycheproof and against each other, so either can be chosen
//! without changing a single byte on disk.
//!
//! Invariant: `open` either returns the exact plaintext that was sealed with the same key, nonce
//! and associated data, or an error; it never returns unauthenticated bytes.

use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes256Gcm, KeyInit};
use zeroize::Zeroizing;

use super::locked::Locked;

const KEY_LEN: usize = 32;
pub(crate) const NONCE_LEN: usize = 12;
pub(crate) const TAG_LEN: usize = 16;

/// Which AES-256-GCM implementation seals and opens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AeadImpl {
    /// `ring`: about 2.5x faster than `aes-gcm` for 256-byte records on this hardware.
    #[default]
    Ring,
    /// RustCrypto `aes-gcm`: portable and pure Rust.
    RustCrypto,
}

impl AeadImpl {
    pub const ALL: [AeadImpl; 2] = [AeadImpl::Ring, AeadImpl::RustCrypto];

    pub fn name(self) -> &'static str {
        match self {
            AeadImpl::Ring => "ring",
            AeadImpl::RustCrypto => "aes-gcm",
        }
    }
}

/// The tag did not verify: wrong key, nonce, associated data, or altered bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("AES-256-GCM authentication failed")]
pub struct AeadError;

/// An AES-256-GCM key, expanded once for one implementation, in pages of its own
/// ([`Locked`]: out of core dumps and swap, zeroed when dropped, which also covers ring's key
/// schedule that ring does not zeroize itself).
pub enum AeadKey {
    Ring(Locked<ring::aead::LessSafeKey>),
    RustCrypto(Locked<Aes256Gcm>),
}

impl AeadKey {
    pub fn new(imp: AeadImpl, key: &[u8; KEY_LEN]) -> Self {
        match imp {
            AeadImpl::Ring => {
                let unbound = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, key)
                    .expect("a 32-byte key is always valid for AES-256-GCM");
                AeadKey::Ring(Locked::new(ring::aead::LessSafeKey::new(unbound)))
            }
            AeadImpl::RustCrypto => AeadKey::RustCrypto(Locked::new(Aes256Gcm::new(key.into()))),
        }
    }

    /// Encrypts `buf[start..]` in place and appends the 16-byte tag. Bytes before `start` (a
    /// header the caller already wrote) are left alone, so a record is built in one buffer.
    pub fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut Vec<u8>,
        start: usize,
    ) {
        match self {
            AeadKey::Ring(k) => {
                let n = ring::aead::Nonce::assume_unique_for_key(*nonce);
                let tag = k
                    .seal_in_place_separate_tag(n, ring::aead::Aad::from(aad), &mut buf[start..])
                    .expect("AES-GCM seals any record shorter than 64 GiB");
                buf.extend_from_slice(tag.as_ref());
            }
            AeadKey::RustCrypto(k) => {
                let tag = k
                    .encrypt_inout_detached(nonce.into(), aad, (&mut buf[start..]).into())
                    .expect("AES-GCM seals any record shorter than 64 GiB");
                buf.extend_from_slice(&tag);
            }
        }
    }

    /// Decrypts `ciphertext || tag` into a new buffer.
    pub fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        ciphertext_and_tag: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, AeadError> {
        if ciphertext_and_tag.len() < TAG_LEN {
            return Err(AeadError);
        }
        let (ct, tag) = ciphertext_and_tag.split_at(ciphertext_and_tag.len() - TAG_LEN);
        let mut out = Zeroizing::new(ct.to_vec());
        match self {
            AeadKey::Ring(k) => {
                let n = ring::aead::Nonce::assume_unique_for_key(*nonce);
                let tag: [u8; TAG_LEN] = tag.try_into().expect("split at TAG_LEN");
                k.open_in_place_separate_tag(
                    n,
                    ring::aead::Aad::from(aad),
                    ring::aead::Tag::from(tag),
                    &mut out[..],
                    0..,
                )
                .map_err(|_| AeadError)?;
            }
            AeadKey::RustCrypto(k) => {
                let tag: &[u8; TAG_LEN] = tag.try_into().expect("split at TAG_LEN");
                k.decrypt_inout_detached(nonce.into(), aad, (&mut out[..]).into(), tag.into())
                    .map_err(|_| AeadError)?;
            }
        }
        Ok(out)
    }
}

impl std::fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let imp = match self {
            AeadKey::Ring(_) => AeadImpl::Ring,
            AeadKey::RustCrypto(_) => AeadImpl::RustCrypto,
        };
        write!(f, "AeadKey({}, <redacted>)", imp.name())
    }
}
