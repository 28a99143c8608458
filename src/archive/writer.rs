//! The reference archiver: IM events in (JSON lines), encrypted through the hot path, rows out
//! to the compliance database, one acknowledgement per event.
//!
//! Invariants:
//! - An event is acknowledged `archived` only once all its rows are committed; `rows` is the
//!   number of rows this event really wrote, and `already_stored` (with a `note`) counts the
//!   rows that were there before (a repeated event: `rows` 0). An event the
//!   archiver accepted is never dropped: while the database is down its rows stay queued and
//!   are written when it is back (a batch is sealed once and the same rows are retried, and
//!   rows already stored are not stored twice).
//! - A refusal is explicit: with "block delivery if unable to record" on, an event that
//!   arrives while the database is unreachable is answered `refused` at once (the router then
//!   blocks its delivery); so is any event that would overflow the bounded queue.
//! - Rows are encrypted whenever the hot path says encryption is on; plaintext is written only
//!   when the daemon answered OFF, never because it was unreachable (the client queues then).
//!   While it does not answer, the archiver warns after [`HOTPATH_WARN_AFTER`] and then at
//!   growing intervals (at most [`HOTPATH_WARN_MAX`] apart), and counts the outages.
//!
//! The pipeline, built to keep up with the database: events are admitted without a task of
//! their own; a sealer task gathers up to `batch_rows` rows and seals them through the hot path
//! while an inserter task writes the batch before (a pipeline of depth 2: one batch sealed and
//! waiting, one being written); each connection's acknowledgements are written and flushed
//! once per batch of answers ready, not once per event.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use super::ArchiveError;
use super::db::{Db, DbError, Param};
use super::event::{
    Direction, Event, RowPlain, index_messages, plain_recipient_key, record_metadata,
    row_identity_message,
};
use super::url::DbUrl;
use crate::crypto::record::RecordHeader;
use crate::hotpath::{Client, ClientConfig, ClientError, Encrypted};

/// How the archiver runs (the manual's archiver settings).
#[derive(Debug, Clone)]
pub struct ArchiverConfig {
    db: DbUrl,
    /// The local daemon's hot-path socket and client settings.
    hotpath: ClientConfig,
    /// Archive outbound messages too (default: inbound only, as the manual's default).
    pub(crate) outbound: bool,
    /// Rows waiting or being written at most (the manual's "Max Queue Size").
    pub max_queue: usize,
    /// "Block delivery if unable to record": refuse new events while the database is down.
    pub(crate) block_delivery: bool,
    /// Rows per database statement (and per hot-path batch) at most.
    pub(crate) batch_rows: usize,
    /// Pause between reconnection attempts, doubling from `retry_min` to `retry_max`; a
    /// server database that accepts connections again cuts the pause short (`wait_for_db`).
    pub retry_min: Duration,
    pub retry_max: Duration,
}

/// Rows per database transaction at most, by default. A batch only holds what is queued when
/// the sealer takes it, so a light load still commits event by event; under a backlog, each
/// commit (an fsync on the server) is shared by up to this many rows. At 500 the commits cost
/// about 0.4 of the database's bulk-load rate; at 10,000 the archiver reaches it
/// (docs/archive.md, "Throughput"). At most two batches are held (the pipeline's depth).
pub(crate) const DEFAULT_BATCH_ROWS: usize = 10_000;

impl ArchiverConfig {
    /// Archives into `db`, sealing through the daemon's hot path at `hotpath` (its socket's
    /// path, or any [`crate::hotpath::Endpoint`]).
    pub fn new(db: DbUrl, hotpath: impl Into<crate::hotpath::Endpoint>) -> Self {
        Self {
            db,
            hotpath: ClientConfig::to(hotpath.into()),
            outbound: false,
            max_queue: 100_000,
            block_delivery: true,
            batch_rows: DEFAULT_BATCH_ROWS,
            retry_min: Duration::from_millis(50),
            retry_max: Duration::from_secs(2),
        }
    }
}

/// What became of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Every row is committed.
    Archived,
    /// Not archived by configuration (outbound, with outbound archiving off).
    Skipped,
    /// Not accepted: database down with blocking on, or the queue is full. Nothing stored.
    Refused,
    /// The line is not a valid event.
    Invalid,
    /// Accepted but could not be stored for a reason retrying does not fix (explained).
    Failed,
}

/// The acknowledgement of one event (one JSON line on the output).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ack {
    #[serde(skip_serializing_if = "Option::is_none")]
    message_id: Option<String>,
    pub result: Outcome,
    /// Rows this event wrote (for `archived`: committed now).
    pub rows: usize,
    /// `archived` only: rows of this event that were already stored (same message id and
    /// recipient) and so were not written again. Absent when 0.
    #[serde(skip_serializing_if = "is_zero")]
    pub already_stored: usize,
    /// Why it was not archived (`refused`, `invalid`, `failed`, `skipped`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `archived` only: what an operator should know, e.g. "already stored: nothing was
    /// written".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Ack {
    fn new(
        message_id: Option<String>,
        result: Outcome,
        rows: usize,
        reason: Option<String>,
    ) -> Self {
        Self { message_id, result, rows, already_stored: 0, reason, note: None }
    }

    /// An event whose rows are all committed: `written` of them now, the others before.
    fn archived(message_id: Option<String>, written: usize, total: usize) -> Self {
        let already_stored = total - written;
        let note = match (written, already_stored) {
            (_, 0) => None,
            (0, _) => Some("already stored: nothing was written".to_owned()),
            (_, n) => Some(format!("{n} of its {total} rows were already stored")),
        };
        Self { already_stored, note, ..Self::new(message_id, Outcome::Archived, written, None) }
    }
}

/// Where an event's acknowledgement goes: to the one caller of [`Archiver::ingest`], or into
/// a connection's stream of acknowledgements (`serve_lines`).
pub(crate) enum Reply {
    One(oneshot::Sender<Ack>),
    Stream(mpsc::UnboundedSender<Ack>),
}

impl Reply {
    fn send(self, ack: Ack) {
        // A caller that went away no longer wants its answer; the rows are stored regardless.
        let _ = match self {
            Reply::One(tx) => tx.send(ack).map_err(drop),
            Reply::Stream(tx) => tx.send(ack).map_err(drop),
        };
    }
}

struct Job {
    rows: Vec<RowPlain>,
    _permit: OwnedSemaphorePermit,
    reply: Reply,
}

impl Job {
    fn answer(self, ack: Ack) {
        self.reply.send(ack);
    }

    fn first_id(&self) -> Option<String> {
        self.rows.first().map(|r| r.message_id.clone())
    }
}

/// A batch of jobs, sealed, on its way from the sealer to the inserter.
struct Sealed {
    jobs: Vec<Job>,
    rows: Vec<Vec<Param>>,
}

#[derive(Default)]
struct Shared {
    db_down: AtomicBool,
    rows_written: AtomicU64,
    /// Times the hot path stayed unanswered past [`HOTPATH_WARN_AFTER`], and for how long in
    /// all (milliseconds, counted when each outage ends).
    hotpath_outages: AtomicU64,
    hotpath_outage_ms: AtomicU64,
}

/// After how long an unanswered hot path is worth a warning (shorter stalls are reconnects).
pub(crate) const HOTPATH_WARN_AFTER: Duration = Duration::from_secs(3);
/// The longest interval between two warnings while the hot path stays unanswered (they come
/// after 3, 6, 12, 24, 48 s, then every 60 s).
pub(crate) const HOTPATH_WARN_MAX: Duration = Duration::from_secs(60);

/// How often the hot path went unanswered for longer than [`HOTPATH_WARN_AFTER`], and the
/// time those outages lasted (outages over so far).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HotpathOutages {
    pub count: u64,
    pub total: Duration,
}

/// A running archiver. `ingest` may be called from many tasks at once.
pub struct Archiver {
    tx: Option<mpsc::UnboundedSender<Job>>,
    permits: Arc<Semaphore>,
    shared: Arc<Shared>,
    cfg: ArchiverConfig,
    writer: Option<tokio::task::JoinHandle<()>>,
}

impl Archiver {
    /// Connects to the database (creating the schema if missing) and to the hot path.
    /// Fails if the database cannot be reached now: an archiver should not start blind.
    pub async fn start(cfg: ArchiverConfig) -> Result<Self, ArchiveError> {
        let mut db = Db::connect_or_create(&cfg.db).await?;
        db.ensure_schema().await?;
        tracing::info!(db = %cfg.db, kind = db.kind_name(), "compliance database ready");
        let client = Client::new(cfg.hotpath.clone());
        let (tx, rx) = mpsc::unbounded_channel();
        // Depth 2: one sealed batch waits here while the one before is being written.
        let (sealed_tx, sealed_rx) = mpsc::channel(1);
        let shared = Arc::new(Shared::default());
        tokio::spawn(seal_loop(client, rx, sealed_tx, shared.clone(), cfg.clone()));
        let writer = tokio::spawn(insert_loop(db, sealed_rx, shared.clone(), cfg.clone()));
        Ok(Self {
            tx: Some(tx),
            permits: Arc::new(Semaphore::new(cfg.max_queue.clamp(1, Semaphore::MAX_PERMITS))),
            shared,
            cfg,
            writer: Some(writer),
        })
    }

    /// Whether the last attempt to use the database succeeded.
    pub fn db_reachable(&self) -> bool {
        !self.shared.db_down.load(Ordering::Relaxed)
    }

    /// Rows accepted and not yet committed.
    pub fn queued(&self) -> usize {
        self.cfg.max_queue.clamp(1, Semaphore::MAX_PERMITS) - self.permits.available_permits()
    }

    /// The hot-path outages seen so far (each counted once it is over).
    pub fn hotpath_outages(&self) -> HotpathOutages {
        HotpathOutages {
            count: self.shared.hotpath_outages.load(Ordering::Relaxed),
            total: Duration::from_millis(self.shared.hotpath_outage_ms.load(Ordering::Relaxed)),
        }
    }

    /// Archives one JSON line; resolves when its rows are committed or it is refused.
    pub async fn ingest(&self, line: &str) -> Ack {
        let (tx, rx) = oneshot::channel();
        let id = self.submit(line, Reply::One(tx));
        rx.await.unwrap_or_else(|_| {
            Ack::new(id, Outcome::Failed, 0, Some("the archiver stopped before writing".into()))
        })
    }

    /// Takes one JSON line without waiting: its acknowledgement goes to `reply`, at once when
    /// it is skipped, refused or invalid, else once its rows are committed. Returns the
    /// event's message id, if the line has one.
    pub(crate) fn submit(&self, line: &str, reply: Reply) -> Option<String> {
        match Event::parse(line) {
            Ok(ev) => {
                let id = Some(ev.message_id.clone());
                self.admit(ev, reply);
                id
            }
            Err(e) => {
                reply.send(Ack::new(None, Outcome::Invalid, 0, Some(e.to_string())));
                None
            }
        }
    }

    /// Queues `ev`'s rows for the writer, or answers `reply` at once with why not.
    fn admit(&self, ev: Event, reply: Reply) {
        let id = Some(ev.message_id.clone());
        if ev.direction == Direction::Outbound && !self.cfg.outbound {
            let why = "outbound archiving is off";
            return reply.send(Ack::new(id, Outcome::Skipped, 0, Some(why.into())));
        }
        if self.cfg.block_delivery && !self.db_reachable() {
            return reply.send(Ack::new(
                id,
                Outcome::Refused,
                0,
                Some(
                    "the compliance database is unreachable and \"block delivery if unable to \
                     record\" is on: do not deliver this message until it can be recorded"
                        .into(),
                ),
            ));
        }
        let rows = ev.rows();
        let Ok(permit) = u32::try_from(rows.len())
            .map_err(|_| ())
            .and_then(|w| self.permits.clone().try_acquire_many_owned(w).map_err(|_| ()))
        else {
            let why = format!(
                "the archive queue is full ({} rows waiting); nothing was stored",
                self.cfg.max_queue
            );
            return reply.send(Ack::new(id, Outcome::Refused, 0, Some(why)));
        };
        let Some(tx) = &self.tx else {
            let why = "the archiver is stopping";
            return reply.send(Ack::new(id, Outcome::Refused, 0, Some(why.into())));
        };
        if let Err(mpsc::error::SendError(job)) = tx.send(Job { rows, _permit: permit, reply }) {
            job.answer(Ack::new(id, Outcome::Refused, 0, Some("the archiver is stopping".into())));
        }
    }

    /// Stops accepting, writes what was accepted, then returns.
    pub async fn close(mut self) {
        self.tx = None;
        if let Some(w) = self.writer.take() {
            let _ = w.await;
        }
    }
}

/// Why a batch could not be sealed.
enum SealError {
    /// Retrying later may help (daemon unreachable, reservation pending).
    Transient(ClientError),
    Permanent(ClientError),
}

impl From<ClientError> for SealError {
    fn from(e: ClientError) -> Self {
        if e.is_transient() { SealError::Transient(e) } else { SealError::Permanent(e) }
    }
}

/// Most plaintext bytes per hot-path request (well under its default 4 MiB frame).
const MAX_SEAL_BYTES: usize = 1 << 20;

/// Turns plain rows into database rows: blind indexes and records from the hot path, or
/// plaintext columns when the daemon says encryption is off.
async fn seal(client: &Client, rows: &[&RowPlain]) -> Result<Vec<Vec<Param>>, SealError> {
    let mut out = Vec::with_capacity(rows.len());
    let mut start = 0;
    while start < rows.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < rows.len()
            && (end == start || bytes + rows[end].body.len() < MAX_SEAL_BYTES)
            && end - start < 1000
        {
            bytes += rows[end].body.len() + 256;
            end += 1;
        }
        seal_chunk(client, &rows[start..end], &mut out).await?;
        start = end;
    }
    Ok(out)
}

async fn seal_chunk(
    client: &Client,
    rows: &[&RowPlain],
    out: &mut Vec<Vec<Param>>,
) -> Result<(), SealError> {
    let mut msgs: Vec<Vec<u8>> = Vec::with_capacity(rows.len() * 3);
    for r in rows {
        msgs.extend(index_messages(&r.from, &r.to, r.room.as_deref()));
    }
    let plaintexts: Vec<Vec<u8>> =
        rows.iter().map(|r| serde_json::to_vec(r).expect("serializes")).collect();
    let row_msgs: Vec<Vec<u8>> =
        rows.iter().map(|r| row_identity_message(&r.message_id, &r.to)).collect();
    let (indexes, identities) = tokio::try_join!(
        client.blind_index(msgs.iter().map(Vec::as_slice)),
        client.row_identities(row_msgs.iter().map(Vec::as_slice)),
    )?;
    // Both or neither: encryption switched on or off between the two answers → in clear, as
    // ENCRYPT would answer OFF too.
    if let (Some(ix), Some(identities)) = (indexes, identities) {
        let mut it = ix.indexes.iter();
        let mut per_row = Vec::with_capacity(rows.len());
        for (r, id) in rows.iter().zip(identities) {
            let f = *it.next().expect("one index per message");
            let t = *it.next().expect("one index per message");
            let room = r.room.as_ref().map(|_| *it.next().expect("one index per message"));
            per_row.push((id, f, t, room));
        }
        let metas: Vec<Vec<u8>> = rows
            .iter()
            .zip(&per_row)
            .map(|(r, (id, ..))| record_metadata(&r.message_id, id))
            .collect();
        let answer = client
            .encrypt_batch(metas.iter().zip(&plaintexts).map(|(m, p)| (&m[..], &p[..])))
            .await?;
        if let Encrypted::Sealed(batch) = answer {
            for ((r, (id, f, t, room)), rec) in rows.iter().zip(&per_row).zip(batch.iter()) {
                let v = RecordHeader::parse(rec).map(|h| h.key_version.get() as i32).ok();
                out.push(vec![
                    Param::Text(Some(r.message_id.clone())),
                    Param::Bytes(Some(id.to_vec())),
                    Param::I64(r.timestamp_ms),
                    Param::Text(Some(r.direction.as_str().into())),
                    Param::Bool(true),
                    Param::Bytes(Some(f.to_vec())),
                    Param::Bytes(Some(t.to_vec())),
                    Param::Bytes(room.map(|x| x.to_vec())),
                    Param::Text(None),
                    Param::Text(None),
                    Param::Text(None),
                    Param::I32(v),
                    Param::Bytes(Some(rec.to_vec())),
                ]);
            }
            return Ok(());
        }
    }
    // Encryption is off on this cluster: the manual's behaviour is to archive in clear.
    for (r, pt) in rows.iter().zip(plaintexts) {
        out.push(vec![
            Param::Text(Some(r.message_id.clone())),
            Param::Bytes(Some(plain_recipient_key(&r.to).to_vec())),
            Param::I64(r.timestamp_ms),
            Param::Text(Some(r.direction.as_str().into())),
            Param::Bool(false),
            Param::Bytes(None),
            Param::Bytes(None),
            Param::Bytes(None),
            Param::Text(Some(r.from.clone())),
            Param::Text(Some(r.to.clone())),
            Param::Text(r.room.clone()),
            Param::I32(None),
            Param::Bytes(Some(pt)),
        ]);
    }
    Ok(())
}

fn set_down(shared: &Shared, cfg: &ArchiverConfig, e: &DbError) {
    if !shared.db_down.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            db = %cfg.db,
            error = %e,
            block_delivery = cfg.block_delivery,
            "compliance database unreachable; queued rows are kept and retried{}",
            if cfg.block_delivery { ", new events are refused" } else { "" }
        );
    }
}

fn set_up(shared: &Shared, cfg: &ArchiverConfig) {
    if shared.db_down.swap(false, Ordering::Relaxed) {
        tracing::info!(db = %cfg.db, "compliance database reachable again");
    }
}

/// The pipeline's first stage: gathers queued events into batches of up to `batch_rows` rows
/// and seals each (retrying while the hot path is unavailable, warning while that lasts), then
/// hands it to [`insert_loop`]; waits while the inserter still has a sealed batch waiting.
async fn seal_loop(
    client: Client,
    mut rx: mpsc::UnboundedReceiver<Job>,
    sealed: mpsc::Sender<Sealed>,
    shared: Arc<Shared>,
    cfg: ArchiverConfig,
) {
    while let Some(first) = rx.recv().await {
        let mut n = first.rows.len();
        let mut jobs = vec![first];
        while n < cfg.batch_rows {
            match rx.try_recv() {
                Ok(j) => {
                    n += j.rows.len();
                    jobs.push(j);
                }
                Err(_) => break,
            }
        }
        let plain: Vec<&RowPlain> = jobs.iter().flat_map(|j| &j.rows).collect();
        let sealing = async {
            // Seal once; the inserter retries the same rows until stored.
            let mut pause = cfg.retry_min;
            loop {
                match seal(&client, &plain).await {
                    Ok(r) => return Ok(r),
                    Err(SealError::Transient(e)) => {
                        tracing::debug!(error = %e, "hot path unavailable; retrying");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(cfg.retry_max);
                    }
                    Err(SealError::Permanent(e)) => return Err(e),
                }
            }
        };
        let result = watch_hotpath(sealing, &shared, plain.len()).await;
        drop(plain);
        match result {
            Ok(rows) => {
                if sealed.send(Sealed { jobs, rows }).await.is_err() {
                    return; // the inserter is gone: nothing more can be written.
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "hot path refused the batch; its events failed");
                for j in jobs {
                    let id = j.first_id();
                    j.answer(Ack::new(id, Outcome::Failed, 0, Some(e.to_string())));
                }
            }
        }
    }
}

/// Runs `sealing` and, while it waits on an unanswered hot path, warns after
/// [`HOTPATH_WARN_AFTER`] and then at doubling intervals (at most [`HOTPATH_WARN_MAX`]); an
/// outage is counted (and its end logged) once the hot path answers.
async fn watch_hotpath<T>(
    sealing: impl std::future::Future<Output = T>,
    shared: &Shared,
    rows: usize,
) -> T {
    tokio::pin!(sealing);
    let started = Instant::now();
    let mut next = HOTPATH_WARN_AFTER;
    loop {
        tokio::select! {
            r = &mut sealing => {
                let waited = started.elapsed();
                if waited >= HOTPATH_WARN_AFTER {
                    shared.hotpath_outages.fetch_add(1, Ordering::Relaxed);
                    shared.hotpath_outage_ms.fetch_add(waited.as_millis() as u64, Ordering::Relaxed);
                    tracing::info!(
                        waited_s = waited.as_secs(),
                        "the daemon's hot path answers again; archiving resumes"
                    );
                }
                return r;
            }
            _ = tokio::time::sleep_until((started + next).into()) => {
                tracing::warn!(
                    waited_s = next.as_secs(),
                    rows,
                    "the daemon's hot path has not answered for {} s: {rows} rows wait to be \
                     sealed and nothing is written meanwhile (is the imcrypt daemon running, \
                     and is --hotpath its [hotpath] socket?)",
                    next.as_secs()
                );
                next += next.min(HOTPATH_WARN_MAX);
            }
        }
    }
}

/// The pipeline's second stage: writes each sealed batch, reconnecting and retrying while the
/// database is unreachable, then acknowledges its events.
async fn insert_loop(
    db: Db,
    mut sealed: mpsc::Receiver<Sealed>,
    shared: Arc<Shared>,
    cfg: ArchiverConfig,
) {
    let mut db = Some(db);
    while let Some(Sealed { jobs, rows }) = sealed.recv().await {
        let mut pause = cfg.retry_min;
        let result = loop {
            if db.is_none() {
                let connected = async {
                    let mut d = Db::connect_or_create(&cfg.db).await?;
                    d.ensure_schema().await?;
                    Ok::<_, DbError>(d)
                };
                match connected.await {
                    Ok(d) => db = Some(d),
                    Err(e) => {
                        set_down(&shared, &cfg, &e);
                        let not_ready = matches!(e, DbError::NotReady { .. });
                        if wait_for_db(&cfg.db, pause, not_ready).await {
                            pause = cfg.retry_min;
                        } else {
                            pause = (pause * 2).min(cfg.retry_max);
                        }
                        continue;
                    }
                }
            }
            let d = db.as_mut().expect("connected");
            match d.insert(&rows).await {
                Ok(written) => {
                    set_up(&shared, &cfg);
                    break Ok(written);
                }
                Err(e) if e.is_connection() => {
                    set_down(&shared, &cfg, &e);
                    db = None;
                }
                Err(e) => break Err(e),
            }
        };
        if let Err(e) = &result {
            tracing::error!(error = %e, rows = rows.len(), "the database refused a batch");
        }
        let written = result.as_ref().map_or(0, |w| w.iter().filter(|x| **x).count());
        shared.rows_written.fetch_add(written as u64, Ordering::Relaxed);
        // The database's answer is per row, in the order of the jobs' rows.
        let mut first = 0;
        for j in jobs {
            let id = j.first_id();
            let n = j.rows.len();
            let ack = match &result {
                Ok(w) => {
                    let now = w[first..first + n].iter().filter(|x| **x).count();
                    Ack::archived(id, now, n)
                }
                Err(e) => Ack::new(id, Outcome::Failed, 0, Some(e.to_string())),
            };
            first += n;
            j.answer(ack);
        }
    }
}

/// How often a down server database is checked for accepting connections again.
const DB_PROBE_EVERY: Duration = Duration::from_millis(100);

/// How soon a server that said it takes no logins yet ([`DbError::NotReady`]) is tried again.
const DB_NOT_READY_RETRY: Duration = Duration::from_millis(250);

/// Waits `pause` before the next reconnection attempt, but returns early (`true`) once a
/// server database is worth a login again, so that new events are not refused for the rest
/// of a backoff the outage no longer justifies: when a server that refused connections
/// accepts them again (a bare TCP connect, much cheaper than a login), or, after the last
/// login was answered `not_ready` (PostgreSQL starting up or shutting down), as soon as it
/// accepts connections [`DB_NOT_READY_RETRY`] later. The second rule matters because the
/// server accepts connections while it starts: if the first probe comes then, no refused →
/// accepting change is ever seen. A server that accepts connections but refuses the login
/// for another reason is not retried faster than the backoff.
async fn wait_for_db(url: &DbUrl, pause: Duration, not_ready: bool) -> bool {
    let deadline = Instant::now() + pause;
    if not_ready {
        tokio::time::sleep(pause.min(DB_NOT_READY_RETRY)).await;
    }
    let Some(accepting) = super::db::accepts_connections(url).await else {
        tokio::time::sleep_until(deadline.into()).await;
        return false;
    };
    if not_ready && accepting {
        return true;
    }
    let mut accepted = accepting;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        tokio::time::sleep(left.min(DB_PROBE_EVERY)).await;
        let now = super::db::accepts_connections(url).await == Some(true);
        if now && !accepted {
            return true;
        }
        accepted = now;
    }
}

/// Counts of acknowledgements, for the summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Counts {
    pub(crate) archived: u64,
    pub(crate) skipped: u64,
    pub(crate) refused: u64,
    pub(crate) invalid: u64,
    pub(crate) failed: u64,
}

impl Counts {
    fn add(&mut self, o: Outcome) {
        *match o {
            Outcome::Archived => &mut self.archived,
            Outcome::Skipped => &mut self.skipped,
            Outcome::Refused => &mut self.refused,
            Outcome::Invalid => &mut self.invalid,
            Outcome::Failed => &mut self.failed,
        } += 1;
    }
}

/// Reads events (JSON lines) from `input` and writes one acknowledgement line per event to
/// `output`, in completion order, until `input` ends and every event is answered. Events are
/// submitted as they are read (no task each); the acknowledgements ready at a time are written
/// and flushed together, one write per batch rather than one per event.
pub(crate) async fn serve_lines(
    archiver: Arc<Archiver>,
    input: impl AsyncBufRead + Unpin,
    mut output: impl AsyncWrite + Unpin + Send + 'static,
) -> std::io::Result<Counts> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Ack>();
    let printer = tokio::spawn(async move {
        let mut counts = Counts::default();
        let mut acks = Vec::with_capacity(1024);
        let mut out = Vec::with_capacity(64 << 10);
        while rx.recv_many(&mut acks, 4096).await > 0 {
            out.clear();
            for ack in acks.drain(..) {
                counts.add(ack.result);
                serde_json::to_writer(&mut out, &ack).expect("serializes");
                out.push(b'\n');
            }
            output.write_all(&out).await?;
            output.flush().await?;
        }
        Ok::<_, std::io::Error>(counts)
    });
    let mut lines = input.lines();
    while let Some(line) = lines.next_line().await? {
        if line.trim().is_empty() {
            continue;
        }
        archiver.submit(&line, Reply::Stream(tx.clone()));
    }
    drop(tx);
    printer.await.map_err(std::io::Error::other)?
}

/// Accepts connections on a Unix socket at `path`; each is served by `serve_lines`.
pub(crate) async fn serve_socket(archiver: Arc<Archiver>, path: &Path) -> Result<(), ArchiveError> {
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)
        .map_err(|source| ArchiveError::Listen { path: path.to_owned(), source })?;
    tracing::info!(path = %path.display(), "archiver listening for IM events");
    loop {
        let (s, _) = listener
            .accept()
            .await
            .map_err(|source| ArchiveError::Listen { path: path.to_owned(), source })?;
        let a = archiver.clone();
        tokio::spawn(async move {
            let (r, w) = s.into_split();
            if let Err(e) = serve_lines(a, tokio::io::BufReader::new(r), w).await {
                tracing::debug!(error = %e, "event connection ended");
            }
        });
    }
}
