//! HMAC-SHA256, the one MAC imcrypt uses: key check values of exported keys and, in the
//! archive, blind indexes over participants.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// HMAC-SHA256(key, msg).
pub(crate) fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

/// Constant-time check of a (possibly truncated, at least 10 bytes) HMAC-SHA256 tag.
pub fn verify_hmac_sha256(key: &[u8], msg: &[u8], tag: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    let full = hmac_sha256(key, msg);
    (10..=32).contains(&tag.len()) && bool::from(full[..tag.len()].ct_eq(tag))
}
