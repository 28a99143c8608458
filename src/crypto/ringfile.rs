//! The key ring file (docs/viewer.md): what `imcrypt key unwrap` writes and `imcrypt decrypt`
//! and `imcrypt view --keys` read, a JSON document naming its format and version and holding
//! the unwrapped key ring. This module turns a ring into the file's bytes and back; reading
//! and writing the file is the caller's (the viewer writes it with `store::write_private`).
//!
//! Invariants: a document of another format or version is refused with what it is and what
//! this build reads, never guessed at; the encoded bytes hold key material and are zeroized
//! when dropped.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::keyring::{KeyRing, VersionsOnly};

const FORMAT: &str = "imcrypt-key-ring";
const FORMAT_VERSION: u32 = 1;

/// The document as it is on disk.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RingFile {
    format: String,
    format_version: u32,
    ring: KeyRing,
}

/// The document as this build writes it: the ring's versions, not its row identity key.
#[derive(Serialize)]
struct RingFileOut<'a> {
    format: &'static str,
    format_version: u32,
    ring: VersionsOnly<'a>,
}

/// Why bytes are not a key ring file this build reads.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RingFileError {
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error(
        "format {found:?} version {version} (this imcrypt reads {FORMAT:?} version \
         {FORMAT_VERSION})"
    )]
    Version { found: String, version: u32 },
}

/// The file's bytes for `ring`: pretty JSON and a final newline.
pub(crate) fn encode(ring: &KeyRing) -> Zeroizing<Vec<u8>> {
    let file =
        RingFileOut { format: FORMAT, format_version: FORMAT_VERSION, ring: VersionsOnly(ring) };
    let mut bytes = Zeroizing::new(serde_json::to_vec_pretty(&file).expect("serializes"));
    bytes.push(b'\n');
    bytes
}

/// The ring in a key ring file's text.
pub(crate) fn decode(text: &str) -> Result<KeyRing, RingFileError> {
    let f: RingFile = serde_json::from_str(text)?;
    if f.format != FORMAT || f.format_version != FORMAT_VERSION {
        return Err(RingFileError::Version { found: f.format, version: f.format_version });
    }
    Ok(f.ring)
}
