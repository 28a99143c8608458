//! Key export for download: every key version of the domain wrapped with RSA-OAEP
//! (SHA-256, MGF1-SHA-256, empty label) under the administrator's public key, in a JSON
//! document; and the reverse, for the data viewer.
//!
//! The wrap is exactly what `openssl pkeyutl -decrypt -pkeyopt rsa_padding_mode:oaep -pkeyopt
//! rsa_oaep_md:sha256 -pkeyopt rsa_mgf1_md:sha256` undoes. docs/formats.md describes the
//! document field by field.
//!
//! Invariants: a public key is accepted only if it is RSA, at least 2048 bits, with exponent
//! 65537; an export either holds every version of the ring or is not produced; an unwrapped key
//! is accepted only if its check value matches.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rsa::pkcs1::der::Decode;
use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey};
use rsa::pkcs8::spki::SubjectPublicKeyInfoRef;
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
use rsa::traits::PublicKeyParts;
use rsa::{Oaep, PrivateKey, PublicKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::keyring::{DomainKey, KeyRing, KeyRingError};
use crate::ids::{DomainId, KeyVersion};

const FORMAT: &str = "imcrypt-key-export";
const FORMAT_VERSION: u32 = 1;
const WRAPPING: &str = "RSA-OAEP-SHA256-MGF1-SHA256";
const MIN_BITS: u32 = 2048;
const KCV_LABEL: &[u8] = b"imcrypt key check value v1";
const RSA_ENCRYPTION_OID: &str = "1.2.840.113549.1.1.1";

/// Why a public key is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublicKeyError {
    #[error(
        "public key is not a PEM document ({0}); give a file that starts with -----BEGIN PUBLIC KEY-----"
    )]
    NotPem(String),
    #[error(
        "the PEM document is a private key ({0}); give the public key instead, e.g. \
         `openssl pkey -in private.pem -pubout -out public.pem`"
    )]
    PrivateKeyGiven(String),
    #[error(
        "the PEM document is a certificate; extract its key with `openssl x509 -in cert.pem -pubkey -noout`"
    )]
    CertificateGiven,
    #[error(
        "PEM label {0:?} is not a public key; expected PUBLIC KEY (SPKI) or RSA PUBLIC KEY (PKCS#1)"
    )]
    UnsupportedLabel(String),
    #[error(
        "public key is {0}, not RSA; key download wraps keys with RSA-OAEP and needs an RSA key"
    )]
    NotRsa(String),
    #[error("public key is malformed: {0}")]
    Malformed(String),
    #[error("RSA key has {0} bits; at least {MIN_BITS} are required (3072 or more recommended)")]
    TooSmall(u32),
    #[error("RSA public exponent must be 65537")]
    BadExponent,
}

/// Why an export cannot be made or unwrapped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExportError {
    #[error("private key is not usable: {0}")]
    PrivateKey(String),
    #[error(
        "this export was made for the public key with SHA-256 fingerprint {expected}, but the \
         private key given belongs to {actual}"
    )]
    WrongPrivateKey { expected: String, actual: String },
    #[error("export document is not understood: {0}")]
    Document(String),
    #[error("key version {0} could not be unwrapped with this private key (RSA-OAEP failed)")]
    Unwrap(KeyVersion),
    #[error("key version {0} unwrapped to the wrong value: its check value does not match")]
    CheckValue(KeyVersion),
    #[error("RSA-OAEP encryption failed: {0}")]
    Wrap(String),
    #[error(transparent)]
    Ring(#[from] KeyRingError),
}

/// A validated RSA public key to wrap keys for, with its fingerprint.
#[derive(Debug, Clone)]
pub struct Recipient {
    key: PublicKey,
    bits: u32,
    fingerprint: [u8; 32],
}

impl Recipient {
    pub fn bits(&self) -> u32 {
        self.bits
    }

    /// SHA-256 of the SubjectPublicKeyInfo DER, as `openssl pkey -pubin -outform DER | sha256sum`.
    pub(crate) fn fingerprint_hex(&self) -> String {
        hex::encode(self.fingerprint)
    }
}

/// Parses and checks an administrator's RSA public key (SPKI or PKCS#1 PEM).
pub fn parse_public_key(pem: &str) -> Result<Recipient, PublicKeyError> {
    let (label, der) = pem_rfc7468::decode_vec(pem.trim().as_bytes())
        .map_err(|e| PublicKeyError::NotPem(e.to_string()))?;
    let pkcs1_der = match label {
        "PUBLIC KEY" => {
            let spki = SubjectPublicKeyInfoRef::from_der(&der)
                .map_err(|e| PublicKeyError::Malformed(e.to_string()))?;
            let oid = spki.algorithm.oid.to_string();
            if oid != RSA_ENCRYPTION_OID {
                return Err(PublicKeyError::NotRsa(algorithm_name(&oid)));
            }
            spki.subject_public_key.raw_bytes().to_vec()
        }
        "RSA PUBLIC KEY" => der,
        "PRIVATE KEY" | "RSA PRIVATE KEY" | "ENCRYPTED PRIVATE KEY" | "EC PRIVATE KEY" => {
            return Err(PublicKeyError::PrivateKeyGiven(label.to_owned()));
        }
        "CERTIFICATE" => return Err(PublicKeyError::CertificateGiven),
        other => return Err(PublicKeyError::UnsupportedLabel(other.to_owned())),
    };
    let raw = rsa::pkcs1::RsaPublicKeyRef::from_der(&pkcs1_der)
        .map_err(|e| PublicKeyError::Malformed(e.to_string()))?;
    let n = raw.modulus.as_bytes();
    let bits = (n.len() as u32) * 8 - n.first().map_or(8, |b| b.leading_zeros());
    if bits < MIN_BITS {
        return Err(PublicKeyError::TooSmall(bits));
    }
    if raw.public_exponent.as_bytes() != [0x01, 0x00, 0x01] {
        return Err(PublicKeyError::BadExponent);
    }
    let key = PublicKey::from_pkcs1_der(&pkcs1_der)
        .map_err(|e| PublicKeyError::Malformed(e.to_string()))?;
    let spki_der = key.to_public_key_der().map_err(|e| PublicKeyError::Malformed(e.to_string()))?;
    let fingerprint = Sha256::digest(spki_der.as_bytes()).into();
    Ok(Recipient { key, bits, fingerprint })
}

fn algorithm_name(oid: &str) -> String {
    match oid {
        "1.2.840.10045.2.1" => "an EC key (id-ecPublicKey)".into(),
        "1.3.101.112" => "an Ed25519 key".into(),
        "1.3.101.110" => "an X25519 key".into(),
        "1.2.840.10040.4.1" => "a DSA key".into(),
        "1.2.840.113549.1.1.10" => "an RSA-PSS-only key (cannot encrypt)".into(),
        other => format!("a key of algorithm {other}"),
    }
}

/// The key check value of a key: the first 8 bytes of HMAC-SHA256(key, "imcrypt key check
/// value v1"), hex. It identifies a key without revealing it.
pub fn check_value(key: &[u8; 32]) -> String {
    hex::encode(&super::mac::hmac_sha256(key, KCV_LABEL)[..8])
}

/// The download document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyExport {
    format: String,
    format_version: u32,
    pub(crate) domain: DomainId,
    pub(crate) primary_version: KeyVersion,
    wrapping: String,
    pub recipient_sha256: String,
    exported_at: String,
    pub keys: Vec<ExportedKey>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportedKey {
    pub version: KeyVersion,
    created_at: String,
    created_unix: u64,
    /// RSA-OAEP ciphertext of the 32 key bytes, base64 (standard alphabet, padded).
    pub wrapped_key: String,
    check_value: String,
}

fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix))
        .to_string()
}

/// Wraps every version of `ring` for `to`. `now_unix` is the export time.
pub fn export_ring(
    ring: &KeyRing,
    to: &Recipient,
    now_unix: u64,
) -> Result<KeyExport, ExportError> {
    let keys = ring
        .keys()
        .map(|k| {
            let ct = to
                .key
                .oaep_encrypt::<Sha256>(k.bytes())
                .map_err(|e| ExportError::Wrap(e.to_string()))?;
            Ok(ExportedKey {
                version: k.version(),
                created_at: rfc3339(k.created_unix()),
                created_unix: k.created_unix(),
                wrapped_key: B64.encode(ct),
                check_value: check_value(k.bytes()),
            })
        })
        .collect::<Result<Vec<_>, ExportError>>()?;
    Ok(KeyExport {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        domain: ring.domain(),
        primary_version: ring.primary_version(),
        wrapping: WRAPPING.into(),
        recipient_sha256: to.fingerprint_hex(),
        exported_at: rfc3339(now_unix),
        keys,
    })
}

/// An RSA private key for unwrapping (PKCS#8 `PRIVATE KEY` or PKCS#1 `RSA PRIVATE KEY` PEM).
pub struct Unwrapper {
    key: PrivateKey,
    fingerprint: String,
}

impl std::fmt::Debug for Unwrapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Unwrapper({}, <redacted>)", self.fingerprint)
    }
}

impl Unwrapper {
    pub fn from_pem(pem: &str) -> Result<Self, ExportError> {
        let pem = pem.trim();
        let label = pem_rfc7468::decode_label(pem.as_bytes())
            .map_err(|e| ExportError::PrivateKey(format!("not a PEM document ({e})")))?;
        let key = match label {
            "PRIVATE KEY" => PrivateKey::from_pkcs8_pem(pem)
                .map_err(|e| ExportError::PrivateKey(format!("PKCS#8: {e}")))?,
            "RSA PRIVATE KEY" => PrivateKey::from_pkcs1_pem(pem)
                .map_err(|e| ExportError::PrivateKey(format!("PKCS#1: {e}")))?,
            "ENCRYPTED PRIVATE KEY" => {
                return Err(ExportError::PrivateKey(
                    "the key is passphrase-protected; decrypt it first with \
                     `openssl pkey -in key.pem -out plain.pem` and keep that file private"
                        .into(),
                ));
            }
            other => {
                return Err(ExportError::PrivateKey(format!(
                    "PEM label {other:?} is not an RSA private key"
                )));
            }
        };
        Self::from_key(key)
    }

    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, ExportError> {
        let key = PrivateKey::from_pkcs8_der(der)
            .map_err(|e| ExportError::PrivateKey(format!("PKCS#8: {e}")))?;
        Self::from_key(key)
    }

    pub(crate) fn from_key(key: PrivateKey) -> Result<Self, ExportError> {
        let spki = key
            .to_public_key()
            .to_public_key_der()
            .map_err(|e| ExportError::PrivateKey(e.to_string()))?;
        let fingerprint = hex::encode(Sha256::digest(spki.as_bytes()));
        Ok(Self { key, fingerprint })
    }

    pub fn bits(&self) -> usize {
        self.key.size() * 8
    }

    /// RSA-OAEP decryption with SHA-256 and MGF1-SHA-256 and the given label (ours is empty).
    /// Blinded with OS randomness.
    ///
    /// The `rsa` crate's OAEP decoder ignores the leading octet Y of the encoded message,
    /// while RFC 8017 §7.1.2 step 3.g requires Y = 0 (Wycheproof's "First byte is 1" cases).
    /// So the raw RSA result is also checked to be below 2^(8(k-1)); both checks always run
    /// and are combined at the end, so a failure does not tell which one failed.
    pub fn oaep_decrypt(&self, label: &[u8], ct: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        let k = self.key.size();
        let leading_zero = ct.len() == k
            && rsa::BoxedUint::from_be_slice(ct, self.key.n_bits_precision())
                .ok()
                .and_then(|c| {
                    rsa::hazmat::rsa_decrypt_and_check(&self.key, Some(&mut getrandom::SysRng), &c)
                        .ok()
                })
                .map(Zeroizing::new)
                .is_some_and(|m| m.bit_width() <= 8 * (k as u32 - 1));
        let padding = if label.is_empty() {
            Oaep::<Sha256>::new()
        } else {
            Oaep::<Sha256>::new_with_label(label)
        };
        let decoded = self.key.decrypt_blinded(&mut getrandom::SysRng, padding, ct);
        match (leading_zero, decoded) {
            (true, Ok(pt)) => Some(Zeroizing::new(pt)),
            (_, Ok(mut pt)) => {
                zeroize::Zeroize::zeroize(&mut pt);
                None
            }
            _ => None,
        }
    }

    /// Unwraps every key of an export into a key ring, checking fingerprint and check values.
    pub fn unwrap_export(&self, doc: &KeyExport) -> Result<KeyRing, ExportError> {
        if doc.format != FORMAT || doc.format_version != FORMAT_VERSION {
            return Err(ExportError::Document(format!(
                "format {:?} version {} (this imcrypt reads {FORMAT:?} version {FORMAT_VERSION})",
                doc.format, doc.format_version
            )));
        }
        if doc.wrapping != WRAPPING {
            return Err(ExportError::Document(format!("unknown wrapping {:?}", doc.wrapping)));
        }
        if !doc.recipient_sha256.eq_ignore_ascii_case(&self.fingerprint) {
            return Err(ExportError::WrongPrivateKey {
                expected: doc.recipient_sha256.clone(),
                actual: self.fingerprint.clone(),
            });
        }
        let keys = doc
            .keys
            .iter()
            .map(|k| {
                let ct = B64.decode(&k.wrapped_key).map_err(|e| {
                    ExportError::Document(format!("wrapped_key of version {}: {e}", k.version))
                })?;
                let pt = self.oaep_decrypt(&[], &ct).ok_or(ExportError::Unwrap(k.version))?;
                let bytes: Zeroizing<[u8; 32]> = Zeroizing::new(
                    pt[..].try_into().map_err(|_| ExportError::CheckValue(k.version))?,
                );
                if check_value(&bytes) != k.check_value.to_ascii_lowercase() {
                    return Err(ExportError::CheckValue(k.version));
                }
                Ok(DomainKey::new(k.version, k.created_unix, bytes))
            })
            .collect::<Result<Vec<_>, ExportError>>()?;
        Ok(KeyRing::from_keys(doc.domain, doc.primary_version, keys)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::{Hmac, KeyInit, Mac};
    use rsa::pkcs1::EncodeRsaPublicKey;
    use rsa::pkcs8::EncodePrivateKey;

    fn keypair(bits: usize) -> (PrivateKey, String) {
        let k = PrivateKey::new(&mut getrandom::SysRng, bits).unwrap();
        let pem = k.to_public_key().to_public_key_pem(Default::default()).unwrap();
        (k, pem)
    }

    #[test]
    fn export_and_unwrap_round_trip() {
        let (sk, pk_pem) = keypair(2048);
        let mut ring = KeyRing::new(DomainId::from_bytes([4; 16]), 10, Zeroizing::new([1; 32]));
        ring.rotate(20, Zeroizing::new([2; 32])).unwrap();
        let to = parse_public_key(&pk_pem).unwrap();
        assert_eq!(to.bits(), 2048);
        let doc = export_ring(&ring, &to, 30).unwrap();
        assert_eq!(doc.keys.len(), 2);
        assert_eq!(doc.primary_version.get(), 2);
        assert_eq!(doc.keys[0].created_at, "1970-01-01T00:00:10Z");
        let json = serde_json::to_string_pretty(&doc).unwrap();
        let back: KeyExport = serde_json::from_str(&json).unwrap();
        let pem = sk.to_pkcs8_pem(Default::default()).unwrap();
        let un = Unwrapper::from_pem(&pem).unwrap();
        assert_eq!(un.unwrap_export(&back).unwrap(), ring);

        // Another private key is told apart by the fingerprint, before any RSA work.
        let (other, _) = keypair(2048);
        let other = Unwrapper::from_pem(&other.to_pkcs8_pem(Default::default()).unwrap()).unwrap();
        assert!(matches!(other.unwrap_export(&back), Err(ExportError::WrongPrivateKey { .. })));

        // A tampered check value is caught.
        let mut bad = back.clone();
        bad.keys[1].check_value = "0000000000000000".into();
        assert_eq!(
            un.unwrap_export(&bad),
            Err(ExportError::CheckValue(KeyVersion::new(2).unwrap()))
        );
    }

    #[test]
    fn pkcs1_public_keys_are_accepted_with_the_same_fingerprint() {
        let (sk, spki_pem) = keypair(2048);
        let pkcs1_pem = sk.to_public_key().to_pkcs1_pem(Default::default()).unwrap();
        let a = parse_public_key(&spki_pem).unwrap();
        let b = parse_public_key(&pkcs1_pem).unwrap();
        assert_eq!(a.fingerprint_hex(), b.fingerprint_hex());
    }

    #[test]
    fn weak_and_wrong_keys_are_refused_with_a_reason() {
        let (_, small) = keypair(1024);
        assert_eq!(parse_public_key(&small).unwrap_err(), PublicKeyError::TooSmall(1024));
        assert!(matches!(parse_public_key("hello"), Err(PublicKeyError::NotPem(_))));
        let (sk, _) = keypair(2048);
        let priv_pem = sk.to_pkcs8_pem(Default::default()).unwrap();
        assert!(matches!(parse_public_key(&priv_pem), Err(PublicKeyError::PrivateKeyGiven(_))));
        // An EC P-256 public key (SPKI), as `openssl ecparam -genkey -name prime256v1` makes.
        let ec = "-----BEGIN PUBLIC KEY-----\n\
            MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEMKBCTNIcKUSDii11ySs3526iDZ8A\n\
            iTo7Tu6KPAqv7D7gS2XpJFbZiItSs3m9+9Ue6GnvHw/GW2ZZaVtszggXIw==\n\
            -----END PUBLIC KEY-----\n";
        let e = parse_public_key(ec).unwrap_err();
        assert!(e.to_string().contains("EC key"), "{e}");
        let garbage = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
        assert!(matches!(parse_public_key(garbage), Err(PublicKeyError::Malformed(_))));
    }

    #[test]
    fn check_value_is_hmac_sha256_truncated() {
        // Independent computation with the hmac crate's own API.
        let key = [0x11u8; 32];
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).unwrap();
        m.update(b"imcrypt key check value v1");
        let full = m.finalize().into_bytes();
        assert_eq!(check_value(&key), hex::encode(&full[..8]));
        assert_eq!(check_value(&key).len(), 16);
    }
}
