//! IM events as the archiver receives them (JSON lines), and the rows they become.
//!
//! Invariants: an event that parses has a message id of 1..=255 bytes, a sender, at least one
//! recipient and a timestamp; an ad hoc group chat (several recipients) becomes one row per
//! recipient; every participant is normalised (trimmed, lower case) before it is indexed, so
//! the viewer finds `Alice@Example.com` with `--from alice@example.com`.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Which way a message went, seen from this cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// Why an input line is not an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum EventError {
    #[error("not an IM event: {0}")]
    Json(String),
    #[error("message_id must be 1 to 255 bytes, got {0}")]
    MessageId(usize),
    #[error("{field} is empty")]
    Empty { field: &'static str },
    #[error("{field} is longer than {max} bytes")]
    TooLong { field: &'static str, max: usize },
    #[error("timestamp {0:?} is neither RFC 3339 (2026-01-02T03:04:05Z) nor Unix milliseconds")]
    Timestamp(String),
}

/// One recipient or several (ad hoc group chat).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Recipients {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Stamp {
    Millis(i64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvent {
    message_id: String,
    from: String,
    to: Recipients,
    timestamp: Stamp,
    direction: Direction,
    body: String,
    #[serde(default)]
    room: Option<String>,
}

/// One IM event, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Event {
    pub(crate) message_id: String,
    from: String,
    to: Vec<String>,
    /// Unix milliseconds.
    timestamp_ms: i64,
    pub(crate) direction: Direction,
    body: String,
    room: Option<String>,
}

/// Longest participant address or room name accepted (RFC 5321's 320 for addresses).
const MAX_ADDRESS: usize = 320;

fn check(field: &'static str, s: &str, max: usize) -> Result<(), EventError> {
    if s.trim().is_empty() {
        return Err(EventError::Empty { field });
    }
    if s.len() > max {
        return Err(EventError::TooLong { field, max });
    }
    Ok(())
}

impl Event {
    /// Parses one JSON line (docs/archive.md, "Input").
    pub(crate) fn parse(line: &str) -> Result<Self, EventError> {
        let r: RawEvent =
            serde_json::from_str(line).map_err(|e| EventError::Json(e.to_string()))?;
        if r.message_id.is_empty() || r.message_id.len() > 255 {
            return Err(EventError::MessageId(r.message_id.len()));
        }
        check("from", &r.from, MAX_ADDRESS)?;
        let to = match r.to {
            Recipients::One(t) => vec![t],
            Recipients::Many(v) => v,
        };
        if to.is_empty() {
            return Err(EventError::Empty { field: "to" });
        }
        for t in &to {
            check("to", t, MAX_ADDRESS)?;
        }
        if let Some(room) = &r.room {
            check("room", room, 255)?;
        }
        let timestamp_ms = match r.timestamp {
            Stamp::Millis(ms) => ms,
            Stamp::Text(s) => humantime::parse_rfc3339_weak(&s)
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_millis() as i64)
                .ok_or(EventError::Timestamp(s))?,
        };
        Ok(Self {
            message_id: r.message_id,
            from: r.from,
            to,
            timestamp_ms,
            direction: r.direction,
            body: r.body,
            room: r.room,
        })
    }

    /// One row per recipient (ad hoc group chat: several).
    pub(crate) fn rows(&self) -> Vec<RowPlain> {
        self.to
            .iter()
            .map(|to| RowPlain {
                message_id: self.message_id.clone(),
                from: self.from.clone(),
                to: to.clone(),
                room: self.room.clone(),
                timestamp_ms: self.timestamp_ms,
                direction: self.direction,
                body: self.body.clone(),
            })
            .collect()
    }
}

/// What one archive row holds in clear before sealing, and what the viewer shows after
/// opening. Serialized as the record's plaintext (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RowPlain {
    pub(crate) message_id: String,
    pub(crate) from: String,
    pub(crate) to: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) room: Option<String>,
    pub(crate) timestamp_ms: i64,
    pub(crate) direction: Direction,
    pub(crate) body: String,
}

/// The normal form of a participant or room before indexing: trimmed, lower case.
pub(crate) fn normalise(s: &str) -> String {
    s.trim().to_lowercase()
}

/// The message whose blind index is stored for a participant (`from`, `to`).
pub(crate) fn participant_message(addr: &str) -> Vec<u8> {
    [b"participant\0".as_slice(), normalise(addr).as_bytes()].concat()
}

/// The message whose blind index is stored for a room.
pub(crate) fn room_message(room: &str) -> Vec<u8> {
    [b"room\0".as_slice(), normalise(room).as_bytes()].concat()
}

/// The messages whose blind indexes a row stores, in column order: `from_idx`, `to_idx`,
/// and `room_idx` when the row has a room. The archiver and the rewrap both index through it.
pub(crate) fn index_messages(from: &str, to: &str, room: Option<&str>) -> Vec<Vec<u8>> {
    let mut m = vec![participant_message(from), participant_message(to)];
    m.extend(room.map(room_message));
    m
}

/// The message whose row identity is an encrypted row's `recipient_key`: it names the row (one
/// message, one recipient), and its key never rotates, so a row sent again after a rotation is
/// still recognised (docs/archive.md).
pub(crate) fn row_identity_message(message_id: &str, to: &str) -> Vec<u8> {
    let id = message_id.as_bytes();
    let len = u32::try_from(id.len()).expect("a message id is far shorter than 4 GiB");
    [b"row\0".as_slice(), &len.to_be_bytes(), id, normalise(to).as_bytes()].concat()
}

/// The associated-data metadata of a row's record: binds it to its message id and recipient.
pub(crate) fn record_metadata(message_id: &str, recipient_key: &[u8; 32]) -> Vec<u8> {
    [b"imcrypt archive v1\0".as_slice(), message_id.as_bytes(), b"\0", recipient_key].concat()
}

/// The recipient key of a plaintext row (encryption off): SHA-256 of the participant message.
/// Encrypted rows use their row identity instead (`row_identity_message`).
pub(crate) fn plain_recipient_key(to: &str) -> [u8; 32] {
    Sha256::digest(participant_message(to)).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_chat_is_one_row_per_recipient_and_bad_lines_say_why() {
        let e = Event::parse(
            r#"{"message_id":"m1","from":"Alice@X","to":["bob@x","carol@x"],"timestamp":"2026-01-02T03:04:05Z","direction":"inbound","body":"hi","room":"ops"}"#,
        )
        .unwrap();
        assert_eq!(e.timestamp_ms, 1_767_323_045_000);
        let rows = e.rows();
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].to.as_str(), rows[1].to.as_str()), ("bob@x", "carol@x"));
        assert_eq!(participant_message(" Alice@X "), b"participant\0alice@x");
        let one = Event::parse(
            r#"{"message_id":"m2","from":"a","to":"b","timestamp":5,"direction":"outbound","body":""}"#,
        )
        .unwrap();
        assert_eq!((one.to.len(), one.timestamp_ms, one.direction), (1, 5, Direction::Outbound));
        let bad = |l: &str| Event::parse(l).unwrap_err().to_string();
        assert!(bad("{").contains("not an IM event"));
        assert!(bad(r#"{"message_id":"","from":"a","to":"b","timestamp":5,"direction":"inbound","body":""}"#).contains("message_id"));
        assert!(bad(r#"{"message_id":"m","from":"a","to":[],"timestamp":5,"direction":"inbound","body":""}"#).contains("to is empty"));
        assert!(bad(r#"{"message_id":"m","from":"a","to":"b","timestamp":"yesterday","direction":"inbound","body":""}"#).contains("timestamp"));
        assert!(bad(r#"{"message_id":"m","from":"a","to":"b","timestamp":5,"direction":"sideways","body":""}"#).contains("not an IM event"));
    }
}
