//! Cryptography: the domain key ring, the archived-record format, password records, RSA key
//! export for download, and sealing of local state under the node key.
//!
//! Invariant: key bytes never leave this module except sealed (AES-GCM under the node key or a
//! derived record key) or wrapped (RSA-OAEP); they are zeroized on drop and redacted in `Debug`, and live in
//! pages kept out of core dumps and swap ([`locked`]).

pub mod aead;
pub(crate) mod blind;
pub mod counter;
pub mod export;
pub mod keyring;
pub mod locked;
pub mod mac;
pub mod password;
pub mod random;
pub mod record;
pub(crate) mod ringfile;
pub mod seal;
