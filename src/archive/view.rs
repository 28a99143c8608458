//! The viewer's side of the archive: query by participant, room and time through the blind
//! indexes, open each record with the administrator's key ring, and show rows as a table or
//! JSON lines.
//!
//! Invariants: nothing is shown that did not authenticate: a record that fails to open (moved
//! to another row, altered, or of a key version the ring lacks), or whose clear columns
//! (timestamp, direction) disagree with its sealed content, is reported as a failure with its
//! row id, and the other rows are still shown. Filters on participants work on encrypted rows
//! (blind indexes under every key version of the ring) and plaintext rows alike, through
//! indexes (the blind-index columns; `LOWER(column)` of rows stored in clear). Rows are read,
//! opened and handed on in batches of at most [`BATCH_ROWS`](super::db::BATCH_ROWS) (`Db::select_batches`), so the
//! viewer's memory does not grow with the archive.

use serde::Serialize;

use super::ArchiveError;
use super::db::{Db, DbError, Param, SqlFilter, StoredRow};
use super::event::{RowPlain, normalise, participant_message, record_metadata, room_message};
use super::url::DbUrl;
use crate::crypto::aead::AeadImpl;
use crate::crypto::blind::BlindIndexer;
use crate::crypto::keyring::KeyRing;
use crate::crypto::record::{RecordHeader, RecordOpener};

/// What to select. Participants and rooms match case-insensitively.
#[derive(Debug, Clone, Default)]
pub struct ViewFilter {
    pub from: Option<String>,
    pub to: Option<String>,
    pub room: Option<String>,
    /// Unix milliseconds, inclusive.
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
}

/// One archived message as the viewer shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ViewedRow {
    id: i64,
    pub message_id: String,
    timestamp: String,
    timestamp_ms: i64,
    direction: String,
    from: String,
    pub to: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    room: Option<String>,
    pub body: String,
    pub encrypted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) key_version: Option<u32>,
}

/// A row that could not be shown, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RowFailure {
    pub(crate) id: i64,
    pub reason: String,
}

/// Builds the SQL filter: each participant value becomes its blind index under every key
/// version of `ring`, or its clear value for rows archived while encryption was off.
fn sql_filter(ring: Option<&KeyRing>, f: &ViewFilter) -> SqlFilter {
    let ix = ring.map(BlindIndexer::all).unwrap_or_default();
    let mut q = SqlFilter::default();
    let mut add = |idx_col: &str, clear_col: &str, msg: Vec<u8>, value: &str| {
        let idx: Vec<Param> =
            ix.iter().map(|i| Param::Bytes(Some(i.index(&msg).to_vec()))).collect();
        q.any_of(vec![
            (idx_col, idx, false),
            (clear_col, vec![Param::Text(Some(normalise(value)))], true),
        ]);
    };
    if let Some(v) = &f.from {
        add("from_idx", "LOWER(from_addr)", participant_message(v), v);
    }
    if let Some(v) = &f.to {
        add("to_idx", "LOWER(to_addr)", participant_message(v), v);
    }
    if let Some(v) = &f.room {
        add("room_idx", "LOWER(room)", room_message(v), v);
    }
    if let Some(s) = f.since_ms {
        q.compare("ts_ms", ">=", Param::I64(s));
    }
    if let Some(u) = f.until_ms {
        q.compare("ts_ms", "<=", Param::I64(u));
    }
    q
}

fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Opens one stored row.
fn open_row(opener: Option<&mut RecordOpener<'_>>, r: &StoredRow) -> Result<ViewedRow, String> {
    let (plain, cluster, key_version) = if r.encrypted {
        let opener = opener.ok_or("the row is encrypted and no key ring was given")?;
        let key: [u8; 32] = r
            .recipient_key
            .as_slice()
            .try_into()
            .map_err(|_| "recipient_key is not 32 bytes".to_owned())?;
        let h = RecordHeader::parse(&r.payload).map_err(|e| e.to_string())?;
        let (cluster, v) = (h.cluster.to_owned(), h.key_version.get());
        let pt = opener
            .open(&r.payload, &record_metadata(&r.message_id, &key))
            .map_err(|e| e.to_string())?;
        let plain: RowPlain = serde_json::from_slice(&pt)
            .map_err(|e| format!("the record opened but is not an archive row: {e}"))?;
        if plain.message_id != r.message_id {
            return Err("the record belongs to another message".into());
        }
        (plain, Some(cluster), Some(v))
    } else {
        let plain: RowPlain = serde_json::from_slice(&r.payload)
            .map_err(|e| format!("the plaintext row does not parse: {e}"))?;
        (plain, None, None)
    };
    if plain.timestamp_ms != r.ts_ms || plain.direction.as_str() != r.direction {
        return Err(format!(
            "the row's clear columns (ts_ms {}, direction {}) disagree with its content \
             ({}, {}): they were altered",
            r.ts_ms,
            r.direction,
            plain.timestamp_ms,
            plain.direction.as_str()
        ));
    }
    Ok(ViewedRow {
        id: r.id,
        message_id: plain.message_id,
        timestamp: rfc3339(plain.timestamp_ms),
        timestamp_ms: plain.timestamp_ms,
        direction: plain.direction.as_str().into(),
        from: plain.from,
        to: plain.to,
        room: plain.room,
        body: plain.body,
        encrypted: r.encrypted,
        cluster,
        key_version,
    })
}

/// Reads the archive at `db` through `filter`, opening rows with `ring`, and hands each batch
/// of the query (at most [`BATCH_ROWS`](super::db::BATCH_ROWS) rows, oldest first) to `each` as soon as it is read
/// and opened: each row shown or its failure, in order. Memory holds a few batches, whatever
/// the size of the archive; `each` returning an error stops the read.
///
/// Reading and opening overlap: a task reads the next batch (the database producing it, the
/// driver parsing it) while this one is opened and handed on, so neither waits for the other
/// (with one after the other, the viewer read at 0.85–0.93 of the database's own `COPY`). The
/// channel between them holds one batch: at most three are in memory (being read, waiting,
/// being shown).
pub async fn view_batches(
    db: &DbUrl,
    ring: Option<&KeyRing>,
    filter: &ViewFilter,
    mut each: impl FnMut(Vec<Result<ViewedRow, RowFailure>>) -> Result<(), ArchiveError>,
) -> Result<(), ArchiveError> {
    let mut conn = Db::connect(db).await?;
    let sql = sql_filter(ring, filter);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Vec<StoredRow>, DbError>>(1);
    let reader = tokio::spawn(async move {
        let mut batches = match conn.select_batches(&sql).await {
            Ok(b) => b,
            Err(e) => return drop(tx.send(Err(e)).await),
        };
        loop {
            let (batch, more) = match batches.next_batch().await {
                Ok(Some(rows)) => (Ok(rows), true),
                Ok(None) => return,
                Err(e) => (Err(e), false),
            };
            // A closed channel: the viewer stopped (its output failed), so stop reading too.
            if tx.send(batch).await.is_err() || !more {
                return;
            }
        }
    });
    let mut opener = ring.map(|r| RecordOpener::new(r, AeadImpl::default()));
    let shown = async {
        while let Some(rows) = rx.recv().await {
            let shown = rows?
                .iter()
                .map(|r| {
                    open_row(opener.as_mut(), r).map_err(|reason| RowFailure { id: r.id, reason })
                })
                .collect();
            each(shown)?;
        }
        Ok(())
    }
    .await;
    if shown.is_err() {
        reader.abort();
    }
    // Every batch arrived (or the reader was stopped); a panic in the reader is a bug and
    // stays one here, rather than an archive that looks shorter than it is.
    if let Err(e) = reader.await
        && e.is_panic()
    {
        std::panic::resume_unwind(e.into_panic());
    }
    shown
}

/// As [`view_batches`], all rows at once: for callers that know the selection is small.
pub async fn view(
    db: &DbUrl,
    ring: Option<&KeyRing>,
    filter: &ViewFilter,
) -> Result<(Vec<ViewedRow>, Vec<RowFailure>), ArchiveError> {
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    view_batches(db, ring, filter, |batch| {
        for r in batch {
            match r {
                Ok(v) => good.push(v),
                Err(f) => bad.push(f),
            }
        }
        Ok(())
    })
    .await?;
    Ok((good, bad))
}

/// What PostgreSQL plans for the viewer's query through `filter` (`EXPLAIN`), or `None` on
/// another backend: how an operator (and a test) checks that a participant filter uses the
/// indexes.
pub async fn query_plan(
    db: &DbUrl,
    ring: Option<&KeyRing>,
    filter: &ViewFilter,
) -> Result<Option<String>, ArchiveError> {
    let mut conn = Db::connect(db).await?;
    Ok(conn.explain_select(&sql_filter(ring, filter)).await?)
}

/// Makes text safe for one table cell: control characters escaped.
pub(crate) fn cell(s: &str) -> String {
    s.chars()
        .flat_map(|c| if c.is_control() { c.escape_default().collect() } else { vec![c] })
        .collect()
}

/// The rows as an aligned text table, each column as wide as its widest cell among `rows`.
/// The viewer calls it once per batch, so a long selection prints as blocks of at most
/// [`BATCH_ROWS`](super::db::BATCH_ROWS) rows, each with its own header and widths.
pub(crate) fn table(rows: &[ViewedRow]) -> String {
    let head = ["id", "time", "dir", "from", "to", "room", "message id", "body"];
    let data: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.timestamp.clone(),
                r.direction.clone(),
                cell(&r.from),
                cell(&r.to),
                cell(r.room.as_deref().unwrap_or("-")),
                cell(&r.message_id),
                cell(&r.body),
            ]
        })
        .collect();
    aligned(&head, &data)
}

/// Rows of cells under a heading, each column as wide as its widest cell, two spaces apart.
pub(crate) fn aligned(head: &[&str], data: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for d in data {
        for (i, c) in d.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let parts: Vec<String> =
            cells.iter().enumerate().map(|(i, c)| format!("{c:<width$}", width = w[i])).collect();
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    line(head.to_vec());
    for d in data {
        line(d.iter().map(String::as_str).collect());
    }
    out
}

/// `imcrypt archive versions` as a table: rows per key version, oldest and newest message.
pub(crate) fn versions_table(counts: &[super::db::VersionCount]) -> String {
    let head = ["key version", "rows", "oldest", "newest"];
    let data: Vec<Vec<String>> = counts
        .iter()
        .map(|c| {
            vec![
                c.key_version.map_or("in clear".into(), |v| v.to_string()),
                c.rows.to_string(),
                rfc3339(c.oldest_ms),
                rfc3339(c.newest_ms),
            ]
        })
        .collect();
    aligned(&head, &data)
}

/// `imcrypt archive versions -o json`: one object per key version.
#[derive(Debug, Serialize)]
pub(crate) struct VersionLine {
    /// `null`: rows stored in clear.
    key_version: Option<u32>,
    rows: u64,
    oldest: String,
    newest: String,
    oldest_ms: i64,
    newest_ms: i64,
}

impl From<&super::db::VersionCount> for VersionLine {
    fn from(c: &super::db::VersionCount) -> Self {
        Self {
            key_version: c.key_version,
            rows: c.rows,
            oldest: rfc3339(c.oldest_ms),
            newest: rfc3339(c.newest_ms),
            oldest_ms: c.oldest_ms,
            newest_ms: c.newest_ms,
        }
    }
}
