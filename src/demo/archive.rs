//! The demo's archive: what the product exists for. Routers on clusters b and c hand IM events
//! to an archiver (the code behind `imcrypt archive --listen`), which seals every row through
//! its cluster's hot path into an embedded SQLite database; then what a database administrator
//! sees, and what the administrator reads with the downloaded key.
//!
//! Invariant: the demo reads the database only through the same library calls as `imcrypt
//! view`, and shows the DBA's view from the stored columns as they are, never from memory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::LabError;
use crate::archive::db::StoredRow;
use crate::archive::{Archiver, ArchiverConfig, Db, DbUrl, Outcome};

/// The ad hoc group chat of the story; its messages have three recipients each.
pub(crate) const ROOM: &str = "acme-deal";

/// 2026-11-30T09:00:00Z: the story's messages are one minute apart from here.
const START_MS: i64 = 1_796_029_200_000;

/// One IM event as a router hands it over: (message id, from, to, room, body).
pub(crate) type Message =
    (&'static str, &'static str, &'static [&'static str], Option<&'static str>, &'static str);

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.com";
const CAROL: &str = "carol@example.com";
const DAVE: &str = "dave@example.com";

/// Before the rotation: 1:1 chats on b, the group chat on c.
pub(crate) const BEFORE: [(&str, &[Message]); 2] = [
    (
        "b",
        &[
            ("b-0001", ALICE, &[BOB], None, "Can you send me the Q3 figures?"),
            ("b-0002", BOB, &[ALICE], None, "Sent. Revenue is up 4 percent."),
            ("b-0003", CAROL, &[ALICE], None, "Lunch at noon?"),
            ("b-0004", ALICE, &[CAROL], None, "Yes, see you at the lobby."),
            ("b-0005", DAVE, &[BOB], None, "Is the Acme contract signed?"),
        ],
    ),
    (
        "c",
        &[
            ("c-0001", DAVE, &[ALICE, BOB, CAROL], Some(ROOM), "Kick-off: Acme closes Friday."),
            ("c-0002", ALICE, &[BOB, CAROL, DAVE], Some(ROOM), "I will draft the term sheet."),
            ("c-0003", BOB, &[ALICE, CAROL, DAVE], Some(ROOM), "Legal wants a 30 day notice."),
            ("c-0004", CAROL, &[DAVE], None, "Can you review my slides?"),
        ],
    ),
];

/// After the rotation: the same people go on talking.
pub(crate) const AFTER: [(&str, &[Message]); 2] = [
    (
        "b",
        &[
            ("b-0006", BOB, &[DAVE], None, "Not yet, Friday."),
            ("b-0007", ALICE, &[BOB], None, "Q3 figures approved."),
            ("b-0008", CAROL, &[BOB], None, "Budget review moved to 3 pm."),
            ("b-0009", BOB, &[CAROL], None, "Thanks, noted."),
            ("b-0010", DAVE, &[ALICE], None, "Call me when you are free."),
        ],
    ),
    (
        "c",
        &[
            ("c-0005", ALICE, &[BOB, CAROL, DAVE], Some(ROOM), "Term sheet draft is in the share."),
            ("c-0006", DAVE, &[ALICE, BOB, CAROL], Some(ROOM), "Looks good. Signing at 9:00."),
            ("c-0007", CAROL, &[ALICE, BOB, DAVE], Some(ROOM), "I booked the board room."),
            ("c-0008", ALICE, &[BOB, CAROL, DAVE], Some(ROOM), "Acme signed. Well done, all."),
            ("c-0009", DAVE, &[CAROL], None, "Slides reviewed, two comments."),
            ("c-0010", CAROL, &[DAVE], None, "Fixed both."),
        ],
    ),
];

/// Every body of the story, to show that none of them is in the database file.
pub(crate) fn bodies() -> impl Iterator<Item = &'static str> {
    BEFORE.iter().chain(AFTER.iter()).flat_map(|(_, ms)| ms.iter().map(|m| m.4))
}

/// The JSON line a router sends for message number `i` of the story.
fn event_line(i: usize, (id, from, to, room, body): &Message) -> String {
    let mut v = serde_json::json!({
        "message_id": id,
        "from": from,
        "to": to,
        "timestamp": START_MS + 60_000 * i as i64,
        "direction": "inbound",
        "body": body,
    });
    if let Some(r) = room {
        v["room"] = (*r).into();
    }
    v.to_string()
}

/// One cluster's archiver, listening for its router on a Unix socket.
pub(crate) struct ClusterArchiver {
    pub(crate) socket: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ClusterArchiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the archiver of a cluster whose hot path is at `hotpath`, writing to `db`, listening
/// at `socket` (as `imcrypt archive --db URL --hotpath SOCK --listen SOCKET` does).
pub(crate) async fn start_archiver(
    db: &DbUrl,
    hotpath: &Path,
    socket: PathBuf,
) -> Result<ClusterArchiver, LabError> {
    let archiver = Arc::new(Archiver::start(ArchiverConfig::new(db.clone(), hotpath)).await?);
    let path = socket.clone();
    let task = tokio::spawn(async move {
        if let Err(e) = crate::archive::serve_socket(archiver, &path).await {
            tracing::error!(error = %e, "demo archiver stopped");
        }
    });
    for _ in 0..200 {
        if socket.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    Ok(ClusterArchiver { socket, task })
}

/// What a router learned from the acknowledgements of one batch.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Routed {
    pub(crate) messages: usize,
    pub(crate) rows: usize,
}

/// A router: sends `messages` (numbered from `first` for their timestamps) to the archiver at
/// `socket`, one JSON line each, and reads one acknowledgement per message.
pub(crate) async fn route(
    socket: &Path,
    first: usize,
    messages: &[Message],
) -> Result<Routed, LabError> {
    let step = |reason: String| LabError::Step { step: "router", reason };
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| step(format!("cannot reach the archiver at {}: {e}", socket.display())))?;
    let (r, mut w) = stream.into_split();
    let mut out = String::new();
    for (i, m) in messages.iter().enumerate() {
        out.push_str(&event_line(first + i, m));
        out.push('\n');
    }
    w.write_all(out.as_bytes()).await.map_err(|e| step(e.to_string()))?;
    w.shutdown().await.map_err(|e| step(e.to_string()))?;
    let mut lines = BufReader::new(r).lines();
    let mut routed = Routed::default();
    while let Some(line) = lines.next_line().await.map_err(|e| step(e.to_string()))? {
        let ack: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| step(format!("{line}: {e}")))?;
        if ack["result"] != serde_json::json!(Outcome::Archived) {
            return Err(step(format!("an event was not archived: {line}")));
        }
        routed.messages += 1;
        routed.rows += ack["rows"].as_u64().unwrap_or(0) as usize;
    }
    if routed.messages != messages.len() {
        return Err(step(format!(
            "{} of {} events were acknowledged",
            routed.messages,
            messages.len()
        )));
    }
    Ok(routed)
}

/// Every stored row, as a database administrator's `SELECT * FROM imcrypt_archive` returns it.
pub(crate) async fn all_rows(db: &DbUrl) -> Result<Vec<StoredRow>, LabError> {
    let mut conn = Db::connect(db).await.map_err(crate::archive::ArchiveError::from)?;
    Ok(conn.select(&Default::default()).await.map_err(crate::archive::ArchiveError::from)?)
}

fn short_hex(b: &[u8]) -> String {
    let h = hex::encode(b);
    if h.len() <= 16 { h } else { format!("{}… ({} bytes)", &h[..16], b.len()) }
}

fn or_null<T>(v: &Option<T>, f: impl Fn(&T) -> String) -> String {
    v.as_ref().map_or_else(|| "NULL".to_owned(), f)
}

/// One row's columns as a DBA's client would list them, binary shortened.
pub(crate) fn dba_columns(r: &StoredRow) -> Vec<(&'static str, String)> {
    vec![
        ("id", r.id.to_string()),
        ("message_id", r.message_id.clone()),
        ("recipient_key", short_hex(&r.recipient_key)),
        ("ts_ms", r.ts_ms.to_string()),
        ("direction", r.direction.clone()),
        ("encrypted", r.encrypted.to_string()),
        ("from_idx", or_null(&r.from_idx, |b| short_hex(b))),
        ("to_idx", or_null(&r.to_idx, |b| short_hex(b))),
        ("room_idx", or_null(&r.room_idx, |b| short_hex(b))),
        ("from_addr", or_null(&r.from_addr, String::clone)),
        ("to_addr", or_null(&r.to_addr, String::clone)),
        ("room", or_null(&r.room, String::clone)),
        ("key_version", or_null(&r.key_version, i32::to_string)),
        ("payload", short_hex(&r.payload)),
    ]
}

/// The database file and its write-ahead log, as bytes: what someone who copies the files
/// gets.
pub(crate) fn database_bytes(path: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for suffix in ["", "-wal"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        all.extend(std::fs::read(PathBuf::from(p)).unwrap_or_default());
    }
    all
}

/// Whether `needle` occurs in `haystack`.
pub(crate) fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}
