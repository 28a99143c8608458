//! The text of a peering token: one line an operator carries from the issuing cluster to the
//! cluster it is for (docs/formats.md, "Peering token").
//!
//! ```text
//! imcrypt-peering-v1.<base64url, no padding, of the JSON document>
//! {"issuer":"a","addresses":["a.example.net:7100"],"ca_sha256":"<64 hex>",
//!  "for":"b","expires_unix_ms":1767225600000,"secret":"<base64url of 32 bytes>"}
//! ```
//!
//! Invariants: the parser refuses anything else (another prefix, unknown or missing fields, a
//! secret that is not 32 bytes, no address) with an error that names what was wrong and never
//! repeats the token; the secret lives in a [`PeeringSecret`] (zeroized, redacted) and a
//! [`Token`] has no `Debug` that could print it.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::cluster::PeeringSecret;
use crate::ids::ClusterId;

/// What every token starts with (the version is the format's).
pub(crate) const PREFIX: &str = "imcrypt-peering-v1.";
/// A token longer than this is not one (a real one is about 400 characters).
const MAX_LEN: usize = 8 * 1024;

/// A parsed token.
pub(crate) struct Token {
    pub(crate) issuer: ClusterId,
    /// `host:port` of the issuer's peer listener, to be tried in order.
    pub(crate) addresses: Vec<String>,
    /// SHA-256 of the DER of the issuer's CA certificate.
    pub(crate) ca_sha256: [u8; 32],
    /// The cluster the token was made for.
    pub(crate) for_cluster: ClusterId,
    pub(crate) expires_unix_ms: u64,
    pub(crate) secret: PeeringSecret,
}

/// The JSON document inside a token.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    issuer: ClusterId,
    addresses: Vec<String>,
    #[serde(with = "hex::serde")]
    ca_sha256: [u8; 32],
    #[serde(rename = "for")]
    for_cluster: ClusterId,
    expires_unix_ms: u64,
    secret: Zeroizing<String>,
}

/// Why a text is not a peering token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("this is not a peering token: it must start with {PREFIX}")]
    Prefix,
    #[error("the peering token is longer than {MAX_LEN} characters")]
    TooLong,
    #[error("the peering token is damaged (not base64url after the prefix); copy it again")]
    Base64,
    #[error("the peering token is damaged ({0}); copy it again")]
    Json(String),
    #[error("the peering token's secret is not 32 bytes of base64url; copy it again")]
    Secret,
    #[error("the peering token names no address of the issuer's peer listener")]
    NoAddress,
}

impl Token {
    /// The token's one line of text.
    pub(crate) fn encode(&self) -> Zeroizing<String> {
        let doc = Doc {
            issuer: self.issuer.clone(),
            addresses: self.addresses.clone(),
            ca_sha256: self.ca_sha256,
            for_cluster: self.for_cluster.clone(),
            expires_unix_ms: self.expires_unix_ms,
            secret: Zeroizing::new(URL_SAFE_NO_PAD.encode(self.secret.as_bytes())),
        };
        let json = Zeroizing::new(serde_json::to_vec(&doc).expect("a token serializes"));
        Zeroizing::new(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(&json[..])))
    }

    /// Parses a token; surrounding white space (a pasted line) is ignored.
    pub(crate) fn parse(text: &str) -> Result<Self, TokenError> {
        let text = text.trim();
        if text.len() > MAX_LEN {
            return Err(TokenError::TooLong);
        }
        let body = text.strip_prefix(PREFIX).ok_or(TokenError::Prefix)?;
        let json = Zeroizing::new(URL_SAFE_NO_PAD.decode(body).map_err(|_| TokenError::Base64)?);
        // serde_json's messages name fields and positions, never the values.
        let doc: Doc =
            serde_json::from_slice(&json).map_err(|e| TokenError::Json(e.to_string()))?;
        let secret = Zeroizing::new(
            URL_SAFE_NO_PAD.decode(doc.secret.as_bytes()).map_err(|_| TokenError::Secret)?,
        );
        let secret: [u8; 32] = secret[..].try_into().map_err(|_| TokenError::Secret)?;
        if doc.addresses.is_empty() {
            return Err(TokenError::NoAddress);
        }
        Ok(Self {
            issuer: doc.issuer,
            addresses: doc.addresses,
            ca_sha256: doc.ca_sha256,
            for_cluster: doc.for_cluster,
            expires_unix_ms: doc.expires_unix_ms,
            secret: PeeringSecret::from_bytes(secret),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> Token {
        Token {
            issuer: ClusterId::new("a").unwrap(),
            addresses: vec!["127.0.0.1:7101".into()],
            ca_sha256: [7; 32],
            for_cluster: ClusterId::new("b").unwrap(),
            expires_unix_ms: 1_767_225_600_000,
            secret: PeeringSecret::from_bytes([9; 32]),
        }
    }

    #[test]
    fn a_token_is_one_line_that_parses_back_to_itself() {
        let text = token().encode();
        assert!(text.starts_with(PREFIX) && !text.contains(char::is_whitespace));
        let t = Token::parse(&format!("  {}\n", &*text)).unwrap();
        assert_eq!((t.issuer.as_str(), t.for_cluster.as_str()), ("a", "b"));
        assert_eq!(t.addresses, ["127.0.0.1:7101"]);
        assert_eq!((t.ca_sha256, t.expires_unix_ms), ([7; 32], 1_767_225_600_000));
        assert_eq!(t.secret.as_bytes(), &[9; 32]);
    }

    #[test]
    fn a_damaged_token_is_refused_naming_what_is_wrong_and_never_quoting_it() {
        let text = token().encode();
        assert_eq!(Token::parse("hello").err(), Some(TokenError::Prefix));
        assert_eq!(Token::parse(&format!("{PREFIX}!!")).err(), Some(TokenError::Base64));
        let cut = &text[..text.len() - 10];
        let e = Token::parse(cut).err().unwrap();
        assert!(matches!(e, TokenError::Json(_) | TokenError::Base64), "{e}");
        assert!(!e.to_string().contains(&text[PREFIX.len()..PREFIX.len() + 20]));
        let short = serde_json::json!({"issuer":"a","addresses":["x:1"],"ca_sha256":hex::encode([0u8;32]),
            "for":"b","expires_unix_ms":1,"secret":URL_SAFE_NO_PAD.encode([1u8; 16])});
        let t = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(short.to_string()));
        assert_eq!(Token::parse(&t).err(), Some(TokenError::Secret));
    }
}
