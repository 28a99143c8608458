//! Rewrap: archived rows sealed again under the primary key version, so that older versions
//! can be retired (docs/archive.md, "Rewrap").
//!
//! Two halves. In the daemon, [`reseal_into`] opens one row's record with the domain's key
//! ring, seals the same plaintext under the same metadata with the primary version, and
//! computes the row's blind indexes under that version; the plaintext never leaves it (the
//! hot path's REWRAP request, served on the rewrap socket only). In `imcrypt archive rewrap`,
//! [`run`] reads the rows still under older versions in batches, has the daemon rewrap them,
//! and replaces each row's sealed columns in one transaction per batch.
//!
//! Invariants: a row keeps its id, message id, recipient key (its row identity, which no
//! rotation changes), time and direction; its record keeps its metadata, so it still opens
//! only in its own row. A row is replaced only while it is still under the version it was
//! read with, so a job killed at any point and started again rewraps each row once and loses
//! none: the rows still to do are those still under an old version.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::ArchiveError;
use super::db::{Db, Param, ResealedRow, SqlFilter, StoredRow};
use super::event::{index_messages, record_metadata};
use super::url::DbUrl;
use crate::crypto::blind::BlindIndexer;
use crate::crypto::random::NonceSource;
use crate::crypto::record::{BatchPermit, RecordHeader, RecordOpener};
use crate::hotpath::{Client, ClientConfig, ClientError, Endpoint, KeyStatus};

/// The participants of an archived row, borrowed from its plaintext (the rest of the row, the
/// body above all, is not copied out of the zeroized buffer).
#[derive(serde::Deserialize)]
struct Participants<'a> {
    #[serde(borrow)]
    from: Cow<'a, str>,
    #[serde(borrow)]
    to: Cow<'a, str>,
    #[serde(borrow, default)]
    room: Option<Cow<'a, str>>,
}

/// Appends one REWRAPPED item for `(metadata, record)` to `out`: the record opened, sealed
/// again under the permit's (primary) version with the same metadata, and the row's blind
/// indexes under that version; or a failed item saying why not (never its content): it does
/// not open, it is not an archive row, or it is not under a version older than the primary
/// (a rewrap never moves a row to an older version, nor reseals one for nothing).
pub(crate) fn reseal_into(
    opener: &mut RecordOpener<'_>,
    permit: &mut BatchPermit<'_>,
    nonces: &mut NonceSource,
    indexer: &BlindIndexer,
    metadata: &[u8],
    record: &[u8],
    out: &mut Vec<u8>,
) {
    let fail = |out: &mut Vec<u8>, why: &str| crate::hotpath::frame::push_rewrap_failed(out, why);
    let primary = indexer.version();
    match RecordHeader::parse(record) {
        Ok(h) if h.key_version >= primary => {
            let why = format!(
                "the record is under key version {}, not older than this cluster's primary \
                 version {primary}",
                h.key_version
            );
            return fail(out, &why);
        }
        Ok(_) => {}
        Err(e) => return fail(out, &e.to_string()),
    }
    let plain = match opener.open(record, metadata) {
        Ok(p) => p,
        Err(e) => return fail(out, &e.to_string()),
    };
    let Ok(row) = serde_json::from_slice::<Participants<'_>>(&plain) else {
        return fail(out, "the record opened but is not an archive row");
    };
    let indexes = index_messages(&row.from, &row.to, row.room.as_deref());
    out.push(0);
    let len_at = out.len();
    out.extend_from_slice(&[0; 4]);
    permit.seal_into(nonces, metadata, &plain, out);
    let l = (out.len() - len_at - 4) as u32;
    out[len_at..len_at + 4].copy_from_slice(&l.to_be_bytes());
    out.extend_from_slice(&indexer.index(&indexes[0]));
    out.extend_from_slice(&indexer.index(&indexes[1]));
    match indexes.get(2) {
        None => out.push(0),
        Some(room) => {
            out.push(1);
            out.extend_from_slice(&indexer.index(room));
        }
    }
}

/// What `imcrypt archive rewrap` is asked to do.
#[derive(Debug, Clone)]
pub struct RewrapConfig {
    pub db: DbUrl,
    /// The daemon's rewrap socket (`[hotpath.rewrap_socket]`).
    pub hotpath: Endpoint,
    /// Only rows under versions below this one (default: every version but the primary).
    pub below: Option<u32>,
    /// Rows per second, at most (default: as fast as the database takes them).
    pub rate: Option<u32>,
}

/// How far a rewrap job is: rows done (rewrapped or failed) of the rows it found to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
}

/// What a rewrap job did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RewrapReport {
    /// The version rows were sealed under (the daemon's primary).
    pub to_version: u32,
    /// Rows rewrapped, per version they were under.
    pub rewrapped: BTreeMap<u32, u64>,
    /// Rows found rewrapped by another job meanwhile (left as they were).
    pub already: u64,
    /// Rows that could not be rewrapped (id, why): they stay as they were.
    pub failed: Vec<(i64, String)>,
}

/// Most rows one hot-path request and one database transaction carry.
const BATCH: usize = 1000;
/// Most record bytes one REWRAP request carries (well under the hot path's default 4 MiB
/// frame, and its answer, a little longer, too).
const MAX_REWRAP_BYTES: usize = 1 << 20;

/// How many of `rows` the next request takes: at most `limit` rows and `MAX_REWRAP_BYTES`,
/// and at least one.
fn chunk_len(rows: &[StoredRow], limit: usize) -> usize {
    let mut bytes = 0;
    let n = rows
        .iter()
        .take(limit.max(1))
        .take_while(|r| {
            bytes += r.payload.len() + r.message_id.len() + 64;
            bytes <= MAX_REWRAP_BYTES
        })
        .count();
    n.max(1)
}

/// Rewraps every row under an old version (see the module documentation), calling `progress`
/// after each batch. Stops at the first database or daemon error; what was committed stays
/// committed, and running the job again continues with the rows still to do.
pub async fn run(
    cfg: &RewrapConfig,
    mut progress: impl FnMut(Progress),
) -> Result<RewrapReport, ArchiveError> {
    let client = Client::new(ClientConfig::to(cfg.hotpath.clone()));
    let primary = match client.status().await.map_err(|e| ArchiveError::Rewrap(e.to_string()))? {
        KeyStatus::On { key_version, .. } => key_version.get(),
        KeyStatus::Off => {
            return Err(ArchiveError::Rewrap(
                "encryption is off on this cluster: there is no key version to rewrap to".into(),
            ));
        }
    };
    let mut reader = Db::connect(&cfg.db).await?;
    let mut writer = Db::connect(&cfg.db).await?;
    // Older than the primary only: rows under a newer version (sealed by a cluster that
    // already took a rotation this one has not heard of yet) are left as they are.
    let below = cfg.below.map_or(primary, |b| b.min(primary));
    let total: u64 = writer
        .version_counts()
        .await?
        .iter()
        .filter_map(|c| c.key_version.filter(|&v| v < below).map(|_| c.rows))
        .sum();
    let mut report = RewrapReport { to_version: primary, ..Default::default() };
    let mut done = 0;
    progress(Progress { done, total });
    let mut filter = SqlFilter::default();
    filter.compare("key_version", "<", Param::I32(Some(below.min(i32::MAX as u32) as i32)));
    let mut limit = cfg.rate.map_or(BATCH, |r| (r as usize).clamp(1, BATCH));
    let started = Instant::now();
    let mut rows = reader.select_batches(&filter).await?;
    while let Some(batch) = rows.next_batch().await? {
        let mut rest = &batch[..];
        while !rest.is_empty() {
            let n = chunk_len(rest, limit);
            let chunk = &rest[..n];
            let (resealed, failed) = match reseal(&client, chunk).await {
                Ok(x) => x,
                // The daemon's limits are smaller than ours: smaller requests, same rows.
                Err(ClientError::BatchTooLarge { max, .. }) if max > 0 && (max as usize) < n => {
                    limit = max as usize;
                    continue;
                }
                Err(ClientError::TooLargeForServer { .. }) if n > 1 => {
                    limit = n / 2;
                    continue;
                }
                Err(ClientError::TooLargeForServer { len, max }) => {
                    let why = format!(
                        "its record does not fit in one of the daemon's frames ({len} of at most \
                         {max} bytes): raise [hotpath.limits] max_frame to rewrap it"
                    );
                    (Vec::new(), vec![(chunk[0].id, why)])
                }
                Err(e) => return Err(ArchiveError::Rewrap(e.to_string())),
            };
            let replaced = writer.replace_sealed(&resealed).await?;
            for (r, now) in resealed.iter().zip(replaced) {
                if now {
                    *report.rewrapped.entry(r.was_version).or_default() += 1;
                } else {
                    // Rewrapped by another job, or deleted, meanwhile: left as it is now.
                    report.already += 1;
                }
            }
            report.to_version = resealed.first().map_or(report.to_version, |r| r.key_version);
            report.failed.extend(failed);
            done += n as u64;
            rest = &rest[n..];
            progress(Progress { done, total: total.max(done) });
            if let Some(rate) = cfg.rate {
                let due = Duration::from_secs_f64(done as f64 / f64::from(rate.max(1)));
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
    Ok(report)
}

/// Has the daemon rewrap `rows`; returns the rows resealed and the rows that failed.
async fn reseal(
    client: &Client,
    rows: &[StoredRow],
) -> Result<(Vec<ResealedRow>, Vec<(i64, String)>), ClientError> {
    let mut failed = Vec::new();
    let mut asked: Vec<(&StoredRow, u32, Vec<u8>)> = Vec::with_capacity(rows.len());
    for r in rows {
        let key: Option<[u8; 32]> = r.recipient_key.as_slice().try_into().ok();
        match (key, r.key_version.and_then(|v| u32::try_from(v).ok())) {
            (Some(k), Some(v)) => asked.push((r, v, record_metadata(&r.message_id, &k))),
            _ => failed.push((r.id, "recipient_key is not 32 bytes or key_version is bad".into())),
        }
    }
    let answer = client
        .rewrap(asked.iter().map(|(r, _, m)| (&m[..], &r.payload[..])))
        .await?
        .ok_or_else(|| {
            ClientError::Protocol("OFF: encryption was turned off on this cluster meanwhile".into())
        })?;
    let mut resealed = Vec::with_capacity(asked.len());
    for ((r, was, _), item) in asked.iter().zip(answer.items) {
        match item {
            Ok(x) => resealed.push(ResealedRow {
                id: r.id,
                was_version: *was,
                key_version: answer.key_version.get(),
                payload: x.record,
                from_idx: x.from_idx,
                to_idx: x.to_idx,
                room_idx: x.room_idx,
            }),
            Err(why) => failed.push((r.id, why)),
        }
    }
    Ok((resealed, failed))
}
