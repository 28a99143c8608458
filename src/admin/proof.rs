//! Client proofs: what lets the administrator through a lockout that someone else's guesses
//! caused, while all admin clients share one token.
//!
//! When a client without a proof gives the right password, the answer carries a proof in the
//! `imcrypt-client-proof` header: 16 random bytes naming the client and an HMAC-SHA256 tag
//! (truncated to 16 bytes) over them and the [`Credential`] that made the request, 64 hex
//! digits in all. A client that sends a valid proof back is [`Client::Proven`] and has its own
//! failure count in `limit`; every other client is [`Client::Unproven`]. The key is derived
//! from the node key, so proofs outlive a restart; a new admin token makes them void (the
//! credential is part of the tag). This is OWASP's "device cookie" defence.
//!
//! Invariants: a proof is issued only after the right password; without the key nobody can
//! make one; a proof of one credential is worth nothing with another; a proof is checked in
//! constant time; a malformed or forged proof makes the client unproven, never an error (a
//! stale proof must not stop an administrator who knows the password).

use zeroize::Zeroizing;

use super::limit::{Client, ClientId, Credential};
use crate::crypto::locked::Locked;
use crate::crypto::mac::{hmac_sha256, verify_hmac_sha256};

/// The request and response header that carries a proof.
pub(crate) const HEADER: &str = "imcrypt-client-proof";

const TAG_LEN: usize = 16;

/// The key that signs and checks proofs, out of core dumps and swap.
pub(crate) struct ProofKey(Locked<[u8; 32]>);

impl std::fmt::Debug for ProofKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProofKey(<redacted>)")
    }
}

fn message(cred: Credential, id: &ClientId) -> [u8; 56] {
    let mut m = [0u8; 56];
    m[..24].copy_from_slice(b"imcrypt client proof v1\0");
    m[24..40].copy_from_slice(cred.as_bytes());
    m[40..].copy_from_slice(&id.0);
    m
}

impl ProofKey {
    pub(crate) fn new(key: Zeroizing<[u8; 32]>) -> Self {
        Self(Locked::new(*key))
    }

    /// A new proof for a client of `cred` that just gave the right password.
    pub(crate) fn issue(&self, cred: Credential) -> String {
        let id = ClientId(crate::crypto::random::os_bytes::<16>());
        let tag = hmac_sha256(&self.0[..], &message(cred, &id));
        let mut out = hex::encode(id.0);
        out.push_str(&hex::encode(&tag[..TAG_LEN]));
        out
    }

    /// Which client of `cred` sent `proof` (the header's value, if any).
    pub(crate) fn client(&self, cred: Credential, proof: Option<&[u8]>) -> Client {
        let Some(bytes) = proof.and_then(|p| hex::decode(p.trim_ascii()).ok()) else {
            return Client::Unproven;
        };
        if bytes.len() != 16 + TAG_LEN {
            return Client::Unproven;
        }
        let id = ClientId(bytes[..16].try_into().expect("16 bytes"));
        if verify_hmac_sha256(&self.0[..], &message(cred, &id), &bytes[16..]) {
            Client::Proven(id)
        } else {
            Client::Unproven
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_issued_proof_of_the_same_credential_proves() {
        let k = ProofKey::new(Zeroizing::new([7; 32]));
        let cred = Credential::of_token_hash(&[5; 32]);
        let p = k.issue(cred);
        assert_eq!(p.len(), 64);
        let Client::Proven(id) = k.client(cred, Some(p.as_bytes())) else { panic!("not proven") };
        assert_eq!(hex::encode(id.0), p[..32]);
        // A second proof names another client.
        assert_ne!(k.client(cred, Some(k.issue(cred).as_bytes())), Client::Proven(id));

        let other = Credential::of_token_hash(&[11; 32]);
        assert_eq!(k.client(other, Some(p.as_bytes())), Client::Unproven);
        let other_key = ProofKey::new(Zeroizing::new([8; 32]));
        assert_eq!(other_key.client(cred, Some(p.as_bytes())), Client::Unproven);
        let mut forged = p.clone().into_bytes();
        forged[63] = if forged[63] == b'0' { b'1' } else { b'0' };
        assert_eq!(k.client(cred, Some(&forged)), Client::Unproven);
        for bad in [&b""[..], b"zz", &p.as_bytes()[..62], b"not hex at all, not at all"] {
            assert_eq!(k.client(cred, Some(bad)), Client::Unproven);
        }
        assert_eq!(k.client(cred, None), Client::Unproven);
    }
}
