//! The hot-path wire format: length-prefixed binary frames, encoded and decoded without I/O.
//!
//! ```text
//! frame    = length u32 | type u8 | body          (length counts type + body, 1..=max_frame)
//!
//! client → server
//! 0x01 HELLO    magic "IMHP" | min_version u16 | max_version u16
//! 0x02 ENCRYPT  request_id u64 | count u32 | count × (meta_len u16 | meta | pt_len u32 | pt)
//! 0x03 STATUS   request_id u64
//! 0x04 INDEX    request_id u64 | count u32 | count × (len u16 | message)
//! 0x05 IDENTIFY request_id u64 | count u32 | count × (len u16 | message)
//! 0x06 REWRAP   request_id u64 | count u32 | count × (meta_len u16 | meta | rec_len u32 | record)
//!
//! server → client
//! 0x81 WELCOME  version u16 | max_frame u32 | max_batch u32
//! 0x82 SEALED   request_id u64 | count u32 | count × (record_len u32 | record)
//! 0x83 OFF      request_id u64
//! 0x84 STATUS   request_id u64 | on u8 | (if on) domain [16] | key_version u32
//!               | cluster_len u8 | cluster
//! 0x85 INDEXED  request_id u64 | key_version u32 | count u32 | count × index [32]
//! 0x86 IDENTIFIED request_id u64 | count u32 | count × row identity [32]
//! 0x87 REWRAPPED request_id u64 | key_version u32 | count u32 | count × item, where item =
//!               0x00 | rec_len u32 | record | from_idx [32] | to_idx [32] | room u8 | [room_idx [32]]
//!             | 0x01 | msg_len u16 | msg (UTF-8: why this record was not rewrapped)
//! 0x8F ERROR    request_id u64 | code u16 | closes u8 | msg_len u16 | msg (UTF-8)
//! ```
//!
//! All integers are big-endian. docs/hotpath.md is the normative description.
//!
//! Invariants: the decoders never panic and never read past the buffer they are given, whatever
//! the bytes (fuzzed in `fuzz/` and by a proptest below); a decoder either returns a whole,
//! fully validated frame and how many bytes it used, `Ok(None)` when more bytes are needed, or a
//! typed error. A frame's body must be consumed exactly: trailing bytes are an error. Frames
//! longer than `max_frame` are refused from their length prefix alone, before the body arrives.

use std::borrow::Cow;

/// Protocol magic in HELLO.
const MAGIC: &[u8; 4] = b"IMHP";
/// The protocol version this build speaks.
pub(crate) const VERSION: u16 = 1;
/// Bytes of the length prefix.
pub(crate) const LEN_PREFIX: usize = 4;
/// Bytes an ENCRYPT frame spends on its header (prefix, type, id, count).
const ENCRYPT_HEADER_LEN: usize = LEN_PREFIX + 1 + 8 + 4;
/// Bytes an ENCRYPT frame spends on each record besides its metadata and plaintext.
const ENCRYPT_PER_RECORD: usize = 2 + 4;

pub(crate) mod kind {
    pub(crate) const HELLO: u8 = 0x01;
    pub(crate) const ENCRYPT: u8 = 0x02;
    pub(crate) const STATUS: u8 = 0x03;
    pub(crate) const INDEX: u8 = 0x04;
    pub(crate) const IDENTIFY: u8 = 0x05;
    pub(crate) const REWRAP: u8 = 0x06;
    pub(crate) const WELCOME: u8 = 0x81;
    pub(crate) const SEALED: u8 = 0x82;
    pub(crate) const OFF: u8 = 0x83;
    pub(crate) const STATUS_REPLY: u8 = 0x84;
    pub(crate) const INDEXED: u8 = 0x85;
    pub(crate) const IDENTIFIED: u8 = 0x86;
    pub(crate) const REWRAPPED: u8 = 0x87;
    pub(crate) const ERROR: u8 = 0x8F;
}

/// Why a request failed, as carried in an ERROR frame. Codes below 16 are protocol errors (the
/// connection closes after them); 16 and above concern one request and leave it open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// A frame did not follow the format (garbled).
    Malformed,
    /// A frame's length prefix exceeds the server's maximum frame size.
    FrameTooLarge,
    /// The connection ended in the middle of a frame.
    Truncated,
    /// No protocol version in common.
    UnsupportedVersion,
    /// HELLO missing, repeated, or a request sent before it.
    HandshakeRequired,
    /// An ENCRYPT carried more records than the server's maximum batch.
    BatchTooLarge,
    /// The frame type is not one this server knows.
    UnknownType,
    /// The invocation-counter reservation could not be persisted in time: retry later.
    ReservationUnavailable,
    /// The key version is used up (2^32 seals on this cluster): the master must rotate.
    KeyExhausted,
    /// The server is shutting down; the request was not processed.
    ShuttingDown,
    /// The server failed in a way the request did not cause.
    Internal,
    /// The request is not allowed on this connection (REWRAP outside the rewrap socket).
    NotPermitted,
    /// A code this build does not know (from a newer peer).
    Other(u16),
}

impl ErrorCode {
    /// A stable name, for the `code` label of `imcrypt_hotpath_errors_total`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "malformed",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::Truncated => "truncated",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::HandshakeRequired => "handshake_required",
            ErrorCode::BatchTooLarge => "batch_too_large",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::ReservationUnavailable => "reservation_unavailable",
            ErrorCode::KeyExhausted => "key_exhausted",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Internal => "internal",
            ErrorCode::NotPermitted => "not_permitted",
            ErrorCode::Other(_) => "other",
        }
    }

    fn to_u16(self) -> u16 {
        match self {
            ErrorCode::Malformed => 1,
            ErrorCode::FrameTooLarge => 2,
            ErrorCode::Truncated => 3,
            ErrorCode::UnsupportedVersion => 4,
            ErrorCode::HandshakeRequired => 5,
            ErrorCode::BatchTooLarge => 6,
            ErrorCode::UnknownType => 7,
            ErrorCode::ReservationUnavailable => 16,
            ErrorCode::KeyExhausted => 17,
            ErrorCode::ShuttingDown => 18,
            ErrorCode::Internal => 19,
            ErrorCode::NotPermitted => 20,
            ErrorCode::Other(c) => c,
        }
    }

    fn from_u16(c: u16) -> Self {
        match c {
            1 => ErrorCode::Malformed,
            2 => ErrorCode::FrameTooLarge,
            3 => ErrorCode::Truncated,
            4 => ErrorCode::UnsupportedVersion,
            5 => ErrorCode::HandshakeRequired,
            6 => ErrorCode::BatchTooLarge,
            7 => ErrorCode::UnknownType,
            16 => ErrorCode::ReservationUnavailable,
            17 => ErrorCode::KeyExhausted,
            18 => ErrorCode::ShuttingDown,
            19 => ErrorCode::Internal,
            20 => ErrorCode::NotPermitted,
            c => ErrorCode::Other(c),
        }
    }

    /// Whether the request may succeed if sent again later (on this or a new connection).
    pub(crate) fn is_transient(self) -> bool {
        match self {
            ErrorCode::ReservationUnavailable | ErrorCode::ShuttingDown => true,
            ErrorCode::Malformed
            | ErrorCode::FrameTooLarge
            | ErrorCode::Truncated
            | ErrorCode::UnsupportedVersion
            | ErrorCode::HandshakeRequired
            | ErrorCode::BatchTooLarge
            | ErrorCode::UnknownType
            | ErrorCode::KeyExhausted
            | ErrorCode::Internal
            | ErrorCode::NotPermitted
            // A newer peer's code: not known to be worth retrying.
            | ErrorCode::Other(_) => false,
        }
    }
}

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge { len: u32, max: u32 },
    #[error("frame has length 0 (every frame has at least a type byte)")]
    Empty,
    #[error("frame type {0:#04x} is unknown")]
    UnknownType(u8),
    #[error("{what}")]
    Malformed { what: &'static str, request_id: Option<u64> },
    #[error("batch of {count} records exceeds the maximum of {max}")]
    BatchTooLarge { request_id: u64, count: u32, max: u32 },
    #[error("HELLO has a bad magic number (not an imcrypt hot-path client)")]
    BadMagic,
}

impl FrameError {
    /// The code an ERROR answer carries for this error.
    pub(crate) fn code(&self) -> ErrorCode {
        match self {
            FrameError::TooLarge { .. } => ErrorCode::FrameTooLarge,
            FrameError::UnknownType(_) => ErrorCode::UnknownType,
            FrameError::BatchTooLarge { .. } => ErrorCode::BatchTooLarge,
            FrameError::Empty | FrameError::Malformed { .. } | FrameError::BadMagic => {
                ErrorCode::Malformed
            }
        }
    }

    /// The request id, when the frame got far enough to carry one.
    pub(crate) fn request_id(&self) -> Option<u64> {
        match self {
            FrameError::Malformed { request_id, .. } => *request_id,
            FrameError::BatchTooLarge { request_id, .. } => Some(*request_id),
            FrameError::TooLarge { .. }
            | FrameError::Empty
            | FrameError::UnknownType(_)
            | FrameError::BadMagic => None,
        }
    }
}

/// A bounds-checked reader over one frame body.
struct Cursor<'a> {
    buf: &'a [u8],
    id: Option<u64>,
}

impl<'a> Cursor<'a> {
    fn fail(&self, what: &'static str) -> FrameError {
        FrameError::Malformed { what, request_id: self.id }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], FrameError> {
        if self.buf.len() < n {
            return Err(self.fail(what));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, FrameError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, FrameError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, FrameError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, FrameError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    fn request_id(&mut self) -> Result<u64, FrameError> {
        let id = self.u64("frame is too short for its request id")?;
        self.id = Some(id);
        Ok(id)
    }

    fn end(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() { Ok(()) } else { Err(self.fail("frame has trailing bytes")) }
    }
}

/// One frame split off a buffer: its type, its body, and the bytes it took in all.
type RawFrame<'a> = (u8, &'a [u8], usize);

/// Splits one frame off the front of `buf`: `Ok(None)` until it is complete.
fn split_frame(buf: &[u8], max_frame: u32) -> Result<Option<RawFrame<'_>>, FrameError> {
    if buf.len() < LEN_PREFIX {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > max_frame {
        return Err(FrameError::TooLarge { len, max: max_frame });
    }
    let total = LEN_PREFIX + len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some((buf[LEN_PREFIX], &buf[LEN_PREFIX + 1..total], total)))
}

/// How many bytes the frame at the front of `buf` has in all, once its prefix is there.
pub(crate) fn frame_len(buf: &[u8]) -> Option<usize> {
    (buf.len() >= LEN_PREFIX)
        .then(|| LEN_PREFIX + u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize)
}

/// The records of an ENCRYPT request, validated, borrowed from the receive buffer.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RecordList<'a> {
    count: u32,
    body: &'a [u8],
}

impl<'a> RecordList<'a> {
    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Total plaintext bytes.
    #[cfg(test)]
    fn plaintext_bytes(&self) -> usize {
        self.iter().map(|(_, p)| p.len()).sum()
    }

    /// `(metadata, plaintext)` pairs in request order.
    pub fn iter(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        let mut rest = self.body;
        (0..self.count).map(move |_| {
            // Validated by `decode_request`: these reads are in bounds.
            let ml = u16::from_be_bytes([rest[0], rest[1]]) as usize;
            let meta = &rest[2..2 + ml];
            let p = 2 + ml;
            let pl = u32::from_be_bytes([rest[p], rest[p + 1], rest[p + 2], rest[p + 3]]) as usize;
            let pt = &rest[p + 4..p + 4 + pl];
            rest = &rest[p + 4 + pl..];
            (meta, pt)
        })
    }
}

impl std::fmt::Debug for RecordList<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Plaintexts are archive content: never in logs.
        write!(f, "RecordList({} records, <redacted>)", self.count)
    }
}

/// A frame from client to server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    Hello {
        min_version: u16,
        max_version: u16,
    },
    Encrypt {
        request_id: u64,
        records: RecordList<'a>,
    },
    Status {
        request_id: u64,
    },
    /// Blind indexes of `count` messages (docs/archive.md), the archive's searchable columns.
    Index {
        request_id: u64,
        messages: MessageList<'a>,
    },
    /// Row identities of `count` messages (docs/archive.md): keyed like blind indexes, but under
    /// the domain's row identity key, which no rotation changes.
    Identify {
        request_id: u64,
        messages: MessageList<'a>,
    },
    /// Archived rows' records to seal again under the primary version (docs/archive.md,
    /// "Rewrap"): `(metadata, record)` pairs, as ENCRYPT carries `(metadata, plaintext)`.
    Rewrap {
        request_id: u64,
        records: RecordList<'a>,
    },
}

/// The messages of an INDEX request, borrowed from the receive buffer.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MessageList<'a> {
    count: u32,
    body: &'a [u8],
}

impl<'a> MessageList<'a> {
    pub(crate) fn iter(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let mut rest = self.body;
        (0..self.count).map(move |_| {
            let l = u16::from_be_bytes([rest[0], rest[1]]) as usize;
            let m = &rest[2..2 + l];
            rest = &rest[2 + l..];
            m
        })
    }
}

impl std::fmt::Debug for MessageList<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Participants are archive content: never in logs.
        write!(f, "MessageList({} messages, <redacted>)", self.count)
    }
}

/// What a malformed ENCRYPT or REWRAP body is told: too short for its count, cut in a
/// metadata length, metadata past the frame, cut in a payload length, payload past the frame.
type RecordFaults = [&'static str; 5];
const ENCRYPT_FAULTS: RecordFaults = [
    "ENCRYPT is too short for its record count",
    "ENCRYPT record is cut in its metadata length",
    "ENCRYPT record metadata runs past the frame",
    "ENCRYPT record is cut in its plaintext length",
    "ENCRYPT record plaintext runs past the frame",
];
const REWRAP_FAULTS: RecordFaults = [
    "REWRAP is too short for its record count",
    "REWRAP item is cut in its metadata length",
    "REWRAP item metadata runs past the frame",
    "REWRAP item is cut in its record length",
    "REWRAP item record runs past the frame",
];

/// The request id and item count that open every batch request, the count at most
/// `max_batch`.
fn list_head(
    c: &mut Cursor<'_>,
    max_batch: u32,
    short: &'static str,
) -> Result<(u64, u32), FrameError> {
    let request_id = c.request_id()?;
    let count = c.u32(short)?;
    if count > max_batch {
        return Err(FrameError::BatchTooLarge { request_id, count, max: max_batch });
    }
    Ok((request_id, count))
}

/// The body of ENCRYPT and REWRAP: a request id and at most `max_batch` (metadata, payload)
/// pairs.
fn record_list<'a>(
    c: &mut Cursor<'a>,
    max_batch: u32,
    [short, cut_meta, past_meta, cut, past]: RecordFaults,
) -> Result<(u64, RecordList<'a>), FrameError> {
    let (request_id, count) = list_head(c, max_batch, short)?;
    let start = c.buf;
    for _ in 0..count {
        let ml = c.u16(cut_meta)? as usize;
        c.take(ml, past_meta)?;
        let pl = c.u32(cut)? as usize;
        c.take(pl, past)?;
    }
    Ok((request_id, RecordList { count, body: start }))
}

/// What a malformed INDEX or IDENTIFY body is told: too short for its count, a message cut in
/// its length, a message past the frame.
type ListFaults = [&'static str; 3];
const INDEX_FAULTS: ListFaults = [
    "INDEX is too short for its count",
    "INDEX message is cut in its length",
    "INDEX message runs past the frame",
];
const IDENTIFY_FAULTS: ListFaults = [
    "IDENTIFY is too short for its count",
    "IDENTIFY message is cut in its length",
    "IDENTIFY message runs past the frame",
];

/// The body of INDEX and IDENTIFY: a request id and at most `max_batch` messages.
fn message_list<'a>(
    c: &mut Cursor<'a>,
    max_batch: u32,
    [short, cut, past]: ListFaults,
) -> Result<(u64, MessageList<'a>), FrameError> {
    let (request_id, count) = list_head(c, max_batch, short)?;
    let start = c.buf;
    for _ in 0..count {
        let l = c.u16(cut)? as usize;
        c.take(l, past)?;
    }
    Ok((request_id, MessageList { count, body: start }))
}

/// One REWRAPPED item: the record sealed again with the row's blind indexes under the new
/// version, or why the record was not rewrapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RewrappedItem<'a> {
    Done { record: &'a [u8], from_idx: [u8; 32], to_idx: [u8; 32], room_idx: Option<[u8; 32]> },
    Failed(&'a str),
}

/// The items of a REWRAPPED answer, borrowed from the receive buffer (validated on decode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RewrappedList<'a> {
    count: u32,
    body: &'a [u8],
}

impl<'a> RewrappedList<'a> {
    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = RewrappedItem<'a>> + 'a {
        let mut c = Cursor { buf: self.body, id: None };
        let ok = "validated by decode_response";
        let idx = |b: &[u8]| -> [u8; 32] { b.try_into().expect("32 bytes") };
        (0..self.count).map(move |_| {
            if c.u8(ok).expect(ok) == 0 {
                let l = c.u32(ok).expect(ok) as usize;
                let record = c.take(l, ok).expect(ok);
                let from_idx = idx(c.take(32, ok).expect(ok));
                let to_idx = idx(c.take(32, ok).expect(ok));
                let room_idx = (c.u8(ok).expect(ok) == 1).then(|| idx(c.take(32, ok).expect(ok)));
                RewrappedItem::Done { record, from_idx, to_idx, room_idx }
            } else {
                let l = c.u16(ok).expect(ok) as usize;
                let m = c.take(l, ok).expect(ok);
                RewrappedItem::Failed(std::str::from_utf8(m).expect(ok))
            }
        })
    }
}

/// Decodes the client frame at the front of `buf`. `max_batch` bounds ENCRYPT's record count.
pub fn decode_request(
    buf: &[u8],
    max_frame: u32,
    max_batch: u32,
) -> Result<Option<(Request<'_>, usize)>, FrameError> {
    let Some((ty, body, used)) = split_frame(buf, max_frame)? else {
        return Ok(None);
    };
    let mut c = Cursor { buf: body, id: None };
    let req = match ty {
        kind::HELLO => {
            if c.take(4, "HELLO is too short for its magic")? != MAGIC {
                return Err(FrameError::BadMagic);
            }
            let min_version = c.u16("HELLO is too short for its versions")?;
            let max_version = c.u16("HELLO is too short for its versions")?;
            Request::Hello { min_version, max_version }
        }
        kind::ENCRYPT => {
            let (request_id, records) = record_list(&mut c, max_batch, ENCRYPT_FAULTS)?;
            Request::Encrypt { request_id, records }
        }
        kind::REWRAP => {
            let (request_id, records) = record_list(&mut c, max_batch, REWRAP_FAULTS)?;
            Request::Rewrap { request_id, records }
        }
        kind::STATUS => Request::Status { request_id: c.request_id()? },
        kind::INDEX => {
            let (request_id, messages) = message_list(&mut c, max_batch, INDEX_FAULTS)?;
            Request::Index { request_id, messages }
        }
        kind::IDENTIFY => {
            let (request_id, messages) = message_list(&mut c, max_batch, IDENTIFY_FAULTS)?;
            Request::Identify { request_id, messages }
        }
        other => return Err(FrameError::UnknownType(other)),
    };
    c.end()?;
    Ok(Some((req, used)))
}

/// The sealed records of a SEALED answer, borrowed from the receive buffer.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SealedList<'a> {
    count: u32,
    body: &'a [u8],
}

impl<'a> SealedList<'a> {
    pub(crate) fn len(&self) -> usize {
        self.count as usize
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The raw body: `count × (record_len u32 | record)`.
    pub(crate) fn raw(&self) -> &'a [u8] {
        self.body
    }

    #[cfg(test)]
    pub(crate) fn iter(&self) -> SealedIter<'a> {
        SealedIter { rest: self.body, left: self.count }
    }
}

impl std::fmt::Debug for SealedList<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealedList({} records)", self.count)
    }
}

/// Walks `count × (len u32 | bytes)`; stops early (rather than panic) on a short buffer.
#[derive(Debug, Clone)]
pub struct SealedIter<'a> {
    rest: &'a [u8],
    left: u32,
}

impl<'a> SealedIter<'a> {
    pub(crate) fn new(raw: &'a [u8], count: u32) -> Self {
        Self { rest: raw, left: count }
    }
}

impl<'a> Iterator for SealedIter<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.left == 0 || self.rest.len() < 4 {
            return None;
        }
        let l = u32::from_be_bytes([self.rest[0], self.rest[1], self.rest[2], self.rest[3]]);
        let end = 4usize.checked_add(l as usize)?;
        let rec = self.rest.get(4..end)?;
        self.rest = &self.rest[end..];
        self.left -= 1;
        Some(rec)
    }
}

/// What STATUS reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusInfo {
    Off,
    On { domain: [u8; 16], key_version: u32, cluster: String },
}

/// A frame from server to client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response<'a> {
    Welcome {
        version: u16,
        max_frame: u32,
        max_batch: u32,
    },
    Sealed {
        request_id: u64,
        records: SealedList<'a>,
    },
    Off {
        request_id: u64,
    },
    Status {
        request_id: u64,
        status: StatusInfo,
    },
    /// `indexes` is `count × 32` bytes, in request order.
    Indexed {
        request_id: u64,
        key_version: u32,
        indexes: &'a [u8],
    },
    /// `identities` is `count × 32` bytes, in request order.
    Identified {
        request_id: u64,
        identities: &'a [u8],
    },
    /// One item per REWRAP record, in request order, sealed under `key_version`.
    Rewrapped {
        request_id: u64,
        key_version: u32,
        items: RewrappedList<'a>,
    },
    Error {
        request_id: u64,
        code: ErrorCode,
        closes: bool,
        message: Cow<'a, str>,
    },
}

/// Decodes the server frame at the front of `buf`.
pub fn decode_response(
    buf: &[u8],
    max_frame: u32,
) -> Result<Option<(Response<'_>, usize)>, FrameError> {
    let Some((ty, body, used)) = split_frame(buf, max_frame)? else {
        return Ok(None);
    };
    let mut c = Cursor { buf: body, id: None };
    let resp = match ty {
        kind::WELCOME => Response::Welcome {
            version: c.u16("WELCOME is too short")?,
            max_frame: c.u32("WELCOME is too short")?,
            max_batch: c.u32("WELCOME is too short")?,
        },
        kind::SEALED => {
            let request_id = c.request_id()?;
            let count = c.u32("SEALED is too short for its record count")?;
            let start = c.buf;
            for _ in 0..count {
                let l = c.u32("SEALED record is cut in its length")? as usize;
                c.take(l, "SEALED record runs past the frame")?;
            }
            c.end()?;
            Response::Sealed { request_id, records: SealedList { count, body: start } }
        }
        kind::OFF => Response::Off { request_id: c.request_id()? },
        kind::INDEXED => {
            let request_id = c.request_id()?;
            let key_version = c.u32("INDEXED is too short for its key version")?;
            let count = c.u32("INDEXED is too short for its count")? as usize;
            let n = count.checked_mul(32).ok_or_else(|| c.fail("INDEXED count overflows"))?;
            let indexes = c.take(n, "INDEXED indexes run past the frame")?;
            Response::Indexed { request_id, key_version, indexes }
        }
        kind::REWRAPPED => {
            let request_id = c.request_id()?;
            let key_version = c.u32("REWRAPPED is too short for its key version")?;
            let count = c.u32("REWRAPPED is too short for its count")?;
            let start = c.buf;
            for _ in 0..count {
                match c.u8("REWRAPPED item is cut in its status")? {
                    0 => {
                        let l = c.u32("REWRAPPED item is cut in its record length")? as usize;
                        c.take(l, "REWRAPPED item record runs past the frame")?;
                        c.take(64, "REWRAPPED item indexes run past the frame")?;
                        match c.u8("REWRAPPED item is cut in its room flag")? {
                            0 => {}
                            1 => {
                                c.take(32, "REWRAPPED item room index runs past the frame")?;
                            }
                            _ => return Err(c.fail("REWRAPPED item room flag is not 0 or 1")),
                        }
                    }
                    1 => {
                        let l = c.u16("REWRAPPED item is cut in its message length")? as usize;
                        let m = c.take(l, "REWRAPPED item message runs past the frame")?;
                        if std::str::from_utf8(m).is_err() {
                            return Err(c.fail("REWRAPPED item message is not UTF-8"));
                        }
                    }
                    _ => return Err(c.fail("REWRAPPED item status is not 0 or 1")),
                }
            }
            Response::Rewrapped {
                request_id,
                key_version,
                items: RewrappedList { count, body: start },
            }
        }
        kind::IDENTIFIED => {
            let request_id = c.request_id()?;
            let count = c.u32("IDENTIFIED is too short for its count")? as usize;
            let n = count.checked_mul(32).ok_or_else(|| c.fail("IDENTIFIED count overflows"))?;
            let identities = c.take(n, "IDENTIFIED row identities run past the frame")?;
            Response::Identified { request_id, identities }
        }
        kind::STATUS_REPLY => {
            let request_id = c.request_id()?;
            let status = match c.u8("STATUS is too short for its state")? {
                0 => StatusInfo::Off,
                1 => {
                    let domain: [u8; 16] =
                        c.take(16, "STATUS is too short for its domain")?.try_into().expect("16");
                    let key_version = c.u32("STATUS is too short for its key version")?;
                    let l = c.u8("STATUS is too short for its cluster")? as usize;
                    let cl = c.take(l, "STATUS cluster runs past the frame")?;
                    let cluster = std::str::from_utf8(cl)
                        .map_err(|_| c.fail("STATUS cluster is not UTF-8"))?
                        .to_owned();
                    StatusInfo::On { domain, key_version, cluster }
                }
                _ => return Err(c.fail("STATUS state is neither 0 nor 1")),
            };
            Response::Status { request_id, status }
        }
        kind::ERROR => {
            let request_id = c.request_id()?;
            let code = ErrorCode::from_u16(c.u16("ERROR is too short for its code")?);
            let closes = match c.u8("ERROR is too short for its flag")? {
                0 => false,
                1 => true,
                _ => return Err(c.fail("ERROR close flag is neither 0 nor 1")),
            };
            let l = c.u16("ERROR is too short for its message length")? as usize;
            let m = c.take(l, "ERROR message runs past the frame")?;
            let message = String::from_utf8_lossy(m);
            Response::Error { request_id, code, closes, message }
        }
        other => return Err(FrameError::UnknownType(other)),
    };
    c.end()?;
    Ok(Some((resp, used)))
}

/// Writes a frame whose body `body` writes, filling in the length prefix afterwards.
fn frame(out: &mut Vec<u8>, ty: u8, body: impl FnOnce(&mut Vec<u8>)) {
    let at = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, ty]);
    body(out);
    let len = (out.len() - at - LEN_PREFIX) as u32;
    out[at..at + LEN_PREFIX].copy_from_slice(&len.to_be_bytes());
}

pub fn encode_hello(out: &mut Vec<u8>, min_version: u16, max_version: u16) {
    frame(out, kind::HELLO, |o| {
        o.extend_from_slice(MAGIC);
        o.extend_from_slice(&min_version.to_be_bytes());
        o.extend_from_slice(&max_version.to_be_bytes());
    });
}

/// The exact length of an ENCRYPT frame for records with these metadata and plaintext sizes.
pub(crate) fn encrypt_frame_len<'r>(
    records: impl IntoIterator<Item = (&'r [u8], &'r [u8])>,
) -> usize {
    ENCRYPT_HEADER_LEN
        + records.into_iter().map(|(m, p)| ENCRYPT_PER_RECORD + m.len() + p.len()).sum::<usize>()
}

/// Encodes ENCRYPT. Metadata longer than 65,535 bytes is an error of the caller (checked by the
/// client before encoding); here it is cut to fit, so the frame stays well formed.
pub fn encode_encrypt<'r>(
    out: &mut Vec<u8>,
    request_id: u64,
    records: impl ExactSizeIterator<Item = (&'r [u8], &'r [u8])>,
) {
    frame(out, kind::ENCRYPT, |o| {
        o.extend_from_slice(&request_id.to_be_bytes());
        o.extend_from_slice(&(records.len() as u32).to_be_bytes());
        for (meta, pt) in records {
            let meta = &meta[..meta.len().min(u16::MAX as usize)];
            o.extend_from_slice(&(meta.len() as u16).to_be_bytes());
            o.extend_from_slice(meta);
            o.extend_from_slice(&(pt.len() as u32).to_be_bytes());
            o.extend_from_slice(pt);
        }
    });
}

/// Encodes REWRAP: `(metadata, record)` pairs, laid out as ENCRYPT's.
pub(crate) fn encode_rewrap<'r>(
    out: &mut Vec<u8>,
    request_id: u64,
    records: impl ExactSizeIterator<Item = (&'r [u8], &'r [u8])>,
) {
    let at = out.len();
    encode_encrypt(out, request_id, records);
    out[at + LEN_PREFIX] = kind::REWRAP;
}

/// Starts a REWRAPPED answer; items follow (`push_rewrapped`, `push_rewrap_failed`), then
/// `finish_rewrapped`. Returns where the frame starts.
pub(crate) fn begin_rewrapped(out: &mut Vec<u8>, request_id: u64, key_version: u32) -> usize {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    out.push(kind::REWRAPPED);
    out.extend_from_slice(&request_id.to_be_bytes());
    out.extend_from_slice(&key_version.to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    at
}

/// Appends a failed item (`why` is cut to 65,535 bytes at a character boundary).
pub(crate) fn push_rewrap_failed(out: &mut Vec<u8>, why: &str) {
    let mut end = why.len().min(u16::MAX as usize);
    while !why.is_char_boundary(end) {
        end -= 1;
    }
    out.push(1);
    out.extend_from_slice(&(end as u16).to_be_bytes());
    out.extend_from_slice(&why.as_bytes()[..end]);
}

/// Completes the frame begun at `at` with `count` items.
pub(crate) fn finish_rewrapped(out: &mut [u8], at: usize, count: u32) {
    let len = (out.len() - at - LEN_PREFIX) as u32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    out[at + 17..at + 21].copy_from_slice(&count.to_be_bytes());
}

pub fn encode_status_request(out: &mut Vec<u8>, request_id: u64) {
    frame(out, kind::STATUS, |o| o.extend_from_slice(&request_id.to_be_bytes()));
}

/// Encodes INDEX (`kind::INDEX`) or IDENTIFY (`kind::IDENTIFY`), which share their body.
/// Messages longer than 65,535 bytes are cut to fit (the client refuses them before encoding).
pub(crate) fn encode_message_list<'m>(
    out: &mut Vec<u8>,
    ty: u8,
    request_id: u64,
    messages: impl ExactSizeIterator<Item = &'m [u8]>,
) {
    debug_assert!(ty == kind::INDEX || ty == kind::IDENTIFY);
    frame(out, ty, |o| {
        o.extend_from_slice(&request_id.to_be_bytes());
        o.extend_from_slice(&(messages.len() as u32).to_be_bytes());
        for m in messages {
            let m = &m[..m.len().min(u16::MAX as usize)];
            o.extend_from_slice(&(m.len() as u16).to_be_bytes());
            o.extend_from_slice(m);
        }
    });
}

pub(crate) fn encode_identified(out: &mut Vec<u8>, request_id: u64, identities: &[[u8; 32]]) {
    frame(out, kind::IDENTIFIED, |o| {
        o.extend_from_slice(&request_id.to_be_bytes());
        o.extend_from_slice(&(identities.len() as u32).to_be_bytes());
        for i in identities {
            o.extend_from_slice(i);
        }
    });
}

pub(crate) fn encode_indexed(
    out: &mut Vec<u8>,
    request_id: u64,
    key_version: u32,
    indexes: &[[u8; 32]],
) {
    frame(out, kind::INDEXED, |o| {
        o.extend_from_slice(&request_id.to_be_bytes());
        o.extend_from_slice(&key_version.to_be_bytes());
        o.extend_from_slice(&(indexes.len() as u32).to_be_bytes());
        for i in indexes {
            o.extend_from_slice(i);
        }
    });
}

pub(crate) fn encode_welcome(out: &mut Vec<u8>, version: u16, max_frame: u32, max_batch: u32) {
    frame(out, kind::WELCOME, |o| {
        o.extend_from_slice(&version.to_be_bytes());
        o.extend_from_slice(&max_frame.to_be_bytes());
        o.extend_from_slice(&max_batch.to_be_bytes());
    });
}

/// Starts a SEALED frame; append each record with `push_sealed_record`-style framing
/// (`record_len u32 | record`), then call `finish_sealed`.
pub(crate) fn begin_sealed(out: &mut Vec<u8>, request_id: u64) -> usize {
    let at = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, kind::SEALED]);
    out.extend_from_slice(&request_id.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    at
}

/// Completes the SEALED frame begun at `at` with `count` records.
pub(crate) fn finish_sealed(out: &mut [u8], at: usize, count: u32) {
    let len = (out.len() - at - LEN_PREFIX) as u32;
    out[at..at + LEN_PREFIX].copy_from_slice(&len.to_be_bytes());
    out[at + 13..at + 17].copy_from_slice(&count.to_be_bytes());
}

pub(crate) fn encode_off(out: &mut Vec<u8>, request_id: u64) {
    frame(out, kind::OFF, |o| o.extend_from_slice(&request_id.to_be_bytes()));
}

pub(crate) fn encode_status(out: &mut Vec<u8>, request_id: u64, status: &StatusInfo) {
    frame(out, kind::STATUS_REPLY, |o| {
        o.extend_from_slice(&request_id.to_be_bytes());
        match status {
            StatusInfo::Off => o.push(0),
            StatusInfo::On { domain, key_version, cluster } => {
                o.push(1);
                o.extend_from_slice(domain);
                o.extend_from_slice(&key_version.to_be_bytes());
                let c = &cluster.as_bytes()[..cluster.len().min(255)];
                o.push(c.len() as u8);
                o.extend_from_slice(c);
            }
        }
    });
}

pub(crate) fn encode_error(
    out: &mut Vec<u8>,
    request_id: u64,
    code: ErrorCode,
    closes: bool,
    msg: &str,
) {
    frame(out, kind::ERROR, |o| {
        o.extend_from_slice(&request_id.to_be_bytes());
        o.extend_from_slice(&code.to_u16().to_be_bytes());
        o.push(closes as u8);
        // Cut on a character boundary so the message stays valid UTF-8.
        let mut end = msg.len().min(1024);
        while !msg.is_char_boundary(end) {
            end -= 1;
        }
        o.extend_from_slice(&(end as u16).to_be_bytes());
        o.extend_from_slice(&msg.as_bytes()[..end]);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: u32 = 1 << 20;

    fn one_request(buf: &[u8]) -> Result<Option<(Request<'_>, usize)>, FrameError> {
        decode_request(buf, MAX, 4096)
    }

    #[test]
    fn requests_round_trip() {
        let mut b = Vec::new();
        encode_hello(&mut b, 1, 3);
        let recs: Vec<(&[u8], &[u8])> = vec![(b"row-1", b"hello"), (b"", b""), (b"m", &[7; 300])];
        encode_encrypt(&mut b, 42, recs.iter().copied());
        assert_eq!(b.len() - 13, encrypt_frame_len(recs.iter().copied()));
        encode_status_request(&mut b, 43);
        let (r, n) = one_request(&b).unwrap().unwrap();
        assert_eq!(r, Request::Hello { min_version: 1, max_version: 3 });
        let rest = &b[n..];
        let (r, n2) = one_request(rest).unwrap().unwrap();
        let Request::Encrypt { request_id: 42, records } = r else { panic!("{r:?}") };
        assert_eq!(records.iter().collect::<Vec<_>>(), recs);
        assert_eq!(records.plaintext_bytes(), 305);
        let (r, n3) = one_request(&rest[n2..]).unwrap().unwrap();
        assert_eq!(r, Request::Status { request_id: 43 });
        assert_eq!(n + n2 + n3, b.len());
    }

    #[test]
    fn responses_round_trip() {
        let mut b = Vec::new();
        encode_welcome(&mut b, 1, 65536, 64);
        let at = begin_sealed(&mut b, 9);
        for rec in [&b"abc"[..], b"", b"defg"] {
            b.extend_from_slice(&(rec.len() as u32).to_be_bytes());
            b.extend_from_slice(rec);
        }
        finish_sealed(&mut b, at, 3);
        encode_off(&mut b, 10);
        let on = StatusInfo::On { domain: [3; 16], key_version: 7, cluster: "east".into() };
        encode_status(&mut b, 11, &on);
        encode_status(&mut b, 12, &StatusInfo::Off);
        encode_error(&mut b, 13, ErrorCode::KeyExhausted, false, "rotate");
        let mut rest = &b[..];
        let mut got = Vec::new();
        while let Some((r, n)) = decode_response(rest, MAX).unwrap() {
            got.push(format!("{r:?}"));
            if let Response::Sealed { records, .. } = &r {
                let v: Vec<&[u8]> = records.iter().collect();
                assert_eq!(v, vec![&b"abc"[..], b"", b"defg"]);
            }
            rest = &rest[n..];
        }
        assert!(rest.is_empty());
        assert_eq!(got.len(), 6);
        assert!(got[3].contains("key_version: 7"));
        assert!(got[5].contains("KeyExhausted") && got[5].contains("rotate"));
    }

    #[test]
    fn incomplete_frames_ask_for_more() {
        let mut b = Vec::new();
        encode_encrypt(&mut b, 1, [(&b"m"[..], &b"p"[..])].into_iter());
        for cut in 0..b.len() {
            assert_eq!(one_request(&b[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn bad_frames_are_named() {
        assert_eq!(one_request(&[0, 0, 0, 0]), Err(FrameError::Empty));
        assert_eq!(
            one_request(&[0, 0x10, 0, 1]),
            Err(FrameError::TooLarge { len: 0x0010_0001, max: MAX })
        );
        assert_eq!(one_request(&[0, 0, 0, 1, 0x55]), Err(FrameError::UnknownType(0x55)));
        let mut hello = Vec::new();
        encode_hello(&mut hello, 1, 1);
        hello[5] = b'X';
        assert_eq!(one_request(&hello), Err(FrameError::BadMagic));
        // A record whose plaintext length runs past the frame.
        let mut b = Vec::new();
        encode_encrypt(&mut b, 5, [(&b"m"[..], &b"pp"[..])].into_iter());
        let l = b.len();
        b[l - 3] = 9;
        let e = one_request(&b).unwrap_err();
        assert_eq!(e.request_id(), Some(5));
        assert_eq!(e.code(), ErrorCode::Malformed);
        // Too many records.
        let mut b = Vec::new();
        encode_encrypt(&mut b, 6, std::iter::repeat_n((&b""[..], &b""[..]), 5));
        assert_eq!(
            decode_request(&b, MAX, 4),
            Err(FrameError::BatchTooLarge { request_id: 6, count: 5, max: 4 })
        );
        // Trailing bytes.
        let mut b = Vec::new();
        encode_status_request(&mut b, 1);
        b.push(0);
        b[3] += 1;
        assert!(matches!(one_request(&b), Err(FrameError::Malformed { .. })));
    }

    #[test]
    fn error_messages_are_cut_on_char_boundaries() {
        let mut b = Vec::new();
        encode_error(&mut b, 1, ErrorCode::Malformed, true, &"é".repeat(1000));
        let (r, _) = decode_response(&b, MAX).unwrap().unwrap();
        let Response::Error { message, closes: true, .. } = r else { panic!() };
        assert_eq!(message.len(), 1024);
    }

    #[test]
    fn error_codes_round_trip() {
        for c in 0..40 {
            assert_eq!(ErrorCode::from_u16(c).to_u16(), c);
        }
    }

    proptest! {
        /// Arbitrary bytes never panic a decoder, and a decoded frame never claims more bytes
        /// than it was given.
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512),
                                max in 0u32..1024, batch in 0u32..16) {
            if let Ok(Some((_, n))) = decode_request(&bytes, max, batch) {
                prop_assert!(n <= bytes.len());
            }
            if let Ok(Some((_, n))) = decode_response(&bytes, max) {
                prop_assert!(n <= bytes.len());
            }
        }

        /// Arbitrary bytes behind a valid prefix/type (the likelier garbling) never panic.
        #[test]
        fn garbled_bodies_never_panic(ty in prop_oneof![Just(1u8), Just(2), Just(3), Just(0x82),
                                                        Just(0x84), Just(0x8F)],
                                      body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut b = ((body.len() + 1) as u32).to_be_bytes().to_vec();
            b.push(ty);
            b.extend_from_slice(&body);
            if let Ok(Some((Request::Encrypt { records, .. }, _))) = decode_request(&b, MAX, 1 << 20) {
                prop_assert!(records.iter().count() == records.len());
            }
            let _ = decode_response(&b, MAX);
        }

        /// Whatever the records, ENCRYPT decodes to exactly what was encoded, at any split.
        #[test]
        fn encrypt_round_trips(recs in proptest::collection::vec(
                                   (proptest::collection::vec(any::<u8>(), 0..40),
                                    proptest::collection::vec(any::<u8>(), 0..300)), 0..10),
                               id in any::<u64>(), cut in any::<prop::sample::Index>()) {
            let mut b = Vec::new();
            encode_encrypt(&mut b, id, recs.iter().map(|(m, p)| (&m[..], &p[..])));
            let c = cut.index(b.len());
            prop_assert_eq!(one_request(&b[..c]), Ok(None));
            let (r, n) = one_request(&b).unwrap().unwrap();
            prop_assert_eq!(n, b.len());
            let Request::Encrypt { request_id, records } = r else { panic!() };
            prop_assert_eq!(request_id, id);
            let got: Vec<(Vec<u8>, Vec<u8>)> =
                records.iter().map(|(m, p)| (m.to_vec(), p.to_vec())).collect();
            prop_assert_eq!(got, recs);
        }
    }
}
