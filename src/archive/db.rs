//! The compliance database as one interface over three backends: PostgreSQL (`postgres`),
//! SQL Server (`sqlserver`) and SQLite (`sqlite`), all with one schema (`schema`,
//! docs/archive.md), created if missing; batch inserts; the viewer's query; the eligibility
//! probe. Where the database is comes from a URL (`url`).
//!
//! Invariants: a batch is written in one transaction (PostgreSQL: one binary COPY into the
//! archive, or, when a row of it is stored already, COPY into a staging table and one
//! INSERT … SELECT; elsewhere one INSERT statement, or several inside
//! BEGIN … COMMIT when it exceeds a backend's statement size), so it is stored whole or not at
//! all; inserting a row that is already there (same message id and recipient key) changes
//! nothing, so a batch whose acknowledgement was lost can be sent again, and [`Db::insert`]
//! reports per row whether it was written now; values always travel as bound parameters,
//! never spliced into SQL text.

use std::collections::HashMap;
use std::time::Duration;

use super::schema::{COLUMNS, TABLE};
use super::sqlite::SqliteDb;
use super::url::{DbUrl, Target};
use super::{postgres, sqlserver};
use crate::cluster::ComplianceDb;

/// Why the database could not be reached or did not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DbError {
    #[error(
        "database URL {0:?} is not understood: use postgres://user:password@host:port/db, \
         sqlserver://user:password@host:port/db, or sqlite:PATH (a file; sqlite:///abs/path \
         for an absolute path)"
    )]
    Url(String),
    /// A parameter of a server URL (`?sslmode=…`, `password_file=…`) is wrong.
    #[error("database URL {url}: {reason}")]
    UrlParam { url: String, reason: String },
    #[error("cannot connect to the {kind} database at {at}: {reason}")]
    Connect { kind: &'static str, at: String, reason: String },
    /// The server answered but takes no logins for now: PostgreSQL's SQLSTATE 57P03 while it
    /// starts up, shuts down or recovers. Unlike a refused login, worth retrying soon.
    #[error("the {kind} database at {at} takes no logins yet: {reason}")]
    NotReady { kind: &'static str, at: String, reason: String },
    #[error("the {kind} database at {at} did not answer within {secs} s")]
    Timeout { kind: &'static str, at: String, secs: u64 },
    /// The connection is gone (server stopped, network): retry after reconnecting.
    #[error("lost the connection to the {kind} database: {reason}")]
    Lost { kind: &'static str, reason: String },
    /// The server refused the statement (it is not a connection problem).
    #[error("the {kind} database refused the statement: {reason}")]
    Statement { kind: &'static str, reason: String },
    #[error("a row of the archive table is not as this imcrypt writes it: {0}")]
    BadRow(String),
    /// An SQLite file could not be opened (missing, not a database, not accessible).
    #[error("cannot open the SQLite database {path}: {reason}")]
    Open { path: String, reason: String },
    /// An SQLite file cannot be used now: locked by another process beyond the busy timeout,
    /// an I/O error, a full disk, a read-only or damaged file. Retrying may help.
    #[error("the SQLite database {path} cannot be used now: {reason}")]
    Unavailable { path: String, reason: String },
}

impl DbError {
    /// Whether reconnecting and retrying may help.
    pub fn is_connection(&self) -> bool {
        matches!(
            self,
            DbError::Connect { .. }
                | DbError::NotReady { .. }
                | DbError::Timeout { .. }
                | DbError::Lost { .. }
                | DbError::Open { .. }
                | DbError::Unavailable { .. }
        )
    }
}

/// Why a login to a server failed, as the drivers tell it.
#[derive(Debug)]
pub(super) enum LoginError {
    /// Refused or failed: wrong credentials, TLS, network, unknown database.
    Refused(String),
    /// The server is starting up, shutting down or recovering ([`DbError::NotReady`]).
    NotReady(String),
}

impl From<String> for LoginError {
    fn from(reason: String) -> Self {
        LoginError::Refused(reason)
    }
}

/// A value bound to a statement.
#[derive(Debug, Clone)]
pub enum Param {
    Text(Option<String>),
    Bytes(Option<Vec<u8>>),
    I64(i64),
    I32(Option<i32>),
    Bool(bool),
}

/// One row as stored (docs/archive.md, "Schema").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRow {
    pub(crate) id: i64,
    pub(crate) message_id: String,
    pub(crate) recipient_key: Vec<u8>,
    pub(crate) ts_ms: i64,
    pub(crate) direction: String,
    pub(crate) encrypted: bool,
    pub(crate) from_idx: Option<Vec<u8>>,
    pub(crate) to_idx: Option<Vec<u8>>,
    pub(crate) room_idx: Option<Vec<u8>>,
    pub(crate) from_addr: Option<String>,
    pub(crate) to_addr: Option<String>,
    pub(crate) room: Option<String>,
    pub(crate) key_version: Option<i32>,
    pub(crate) payload: Vec<u8>,
}

/// Rows of one key version (`imcrypt archive versions`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VersionCount {
    /// `None`: rows stored in clear (encryption was off).
    pub key_version: Option<u32>,
    pub rows: u64,
    pub oldest_ms: i64,
    pub newest_ms: i64,
}

/// An encrypted row's sealed columns after a rewrap, and the version it was read under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResealedRow {
    pub(crate) id: i64,
    pub(crate) was_version: u32,
    pub(crate) key_version: u32,
    pub(crate) payload: Vec<u8>,
    pub(crate) from_idx: [u8; 32],
    pub(crate) to_idx: [u8; 32],
    pub(crate) room_idx: Option<[u8; 32]>,
}

/// How long a connection, or the probe's question, may take.
pub(super) const TIMEOUT: Duration = Duration::from_secs(5);

/// An open connection to the compliance database.
pub enum Db {
    Postgres(tokio_postgres::Client),
    SqlServer(Box<sqlserver::Client>),
    Sqlite(SqliteDb),
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Db::Postgres(_) => f.write_str("Db(PostgreSQL)"),
            Db::SqlServer(_) => f.write_str("Db(SQL Server)"),
            Db::Sqlite(s) => write!(f, "Db(SQLite {})", s.path().display()),
        }
    }
}

/// How placeholders and inserts are spelled on each backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Postgres,
    SqlServer,
    Sqlite,
}

impl Dialect {
    fn placeholder(self, k: usize) -> String {
        match self {
            Dialect::Postgres => format!("${k}"),
            Dialect::SqlServer => format!("@P{k}"),
            Dialect::Sqlite => format!("?{k}"),
        }
    }

    /// A multi-row INSERT of `rows` rows that skips rows already stored and returns the
    /// (message_id, recipient_key) of each row it wrote.
    fn insert_sql(self, rows: usize) -> String {
        let cols = COLUMNS.join(", ");
        let mut sql = match self {
            Dialect::SqlServer => format!(
                "INSERT INTO {TABLE} ({cols}) OUTPUT inserted.message_id, \
                 inserted.recipient_key VALUES "
            ),
            Dialect::Postgres | Dialect::Sqlite => format!("INSERT INTO {TABLE} ({cols}) VALUES "),
        };
        let mut k = 0;
        for i in 0..rows {
            sql.push_str(if i == 0 { "(" } else { ", (" });
            for j in 0..COLUMNS.len() {
                k += 1;
                if j > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&self.placeholder(k));
            }
            sql.push(')');
        }
        // SQL Server skips duplicates through the index's IGNORE_DUP_KEY.
        if self != Dialect::SqlServer {
            sql.push_str(
                " ON CONFLICT (message_id, recipient_key) DO NOTHING \
                 RETURNING message_id, recipient_key",
            );
        }
        sql
    }
}
impl Db {
    /// Connects (bounded by 5 s). Does not touch the schema. An SQLite file must exist (so a
    /// mistyped viewer `--db` does not leave an empty archive behind); see
    /// [`Db::connect_or_create`].
    pub async fn connect(url: &DbUrl) -> Result<Self, DbError> {
        Self::open(url, false).await
    }

    /// As [`Db::connect`], but an SQLite file that does not exist yet is created (the
    /// archiver's open). Servers: the same as `connect`.
    pub(crate) async fn connect_or_create(url: &DbUrl) -> Result<Self, DbError> {
        Self::open(url, true).await
    }

    async fn open(url: &DbUrl, create: bool) -> Result<Self, DbError> {
        let srv = match &url.target {
            Target::File(path) => return Ok(Db::Sqlite(SqliteDb::open(path, create).await?)),
            Target::Server(s) => s,
        };
        let kind = url.kind_name();
        let at = format!("{}:{}", srv.host, srv.port);
        let timeout = DbError::Timeout { kind, at: at.clone(), secs: TIMEOUT.as_secs() };
        let go = async {
            match url.kind {
                ComplianceDb::SqlServer => sqlserver::connect(srv)
                    .await
                    .map(|c| Db::SqlServer(Box::new(c)))
                    .map_err(LoginError::Refused),
                _ => postgres::connect(srv).await.map(Db::Postgres),
            }
        };
        tokio::time::timeout(TIMEOUT, go).await.map_err(|_| timeout)?.map_err(|e| match e {
            LoginError::Refused(reason) => DbError::Connect { kind, at, reason },
            LoginError::NotReady(reason) => DbError::NotReady { kind, at, reason },
        })
    }

    pub(crate) fn kind_name(&self) -> &'static str {
        match self {
            Db::Postgres(_) => "PostgreSQL",
            Db::SqlServer(_) => "SQL Server",
            Db::Sqlite(_) => "SQLite",
        }
    }

    fn dialect(&self) -> Dialect {
        match self {
            Db::Postgres(_) => Dialect::Postgres,
            Db::SqlServer(_) => Dialect::SqlServer,
            Db::Sqlite(_) => Dialect::Sqlite,
        }
    }

    /// Creates the archive table and its indexes if they are missing.
    pub async fn ensure_schema(&mut self) -> Result<(), DbError> {
        match self {
            Db::Postgres(c) => postgres::ensure_schema(c).await,
            Db::SqlServer(c) => sqlserver::ensure_schema(c).await,
            Db::Sqlite(s) => s.ensure_schema().await,
        }
    }

    /// What the server says it is, e.g. "PostgreSQL 15.8 …", "Microsoft SQL Server 2022 …" or
    /// "SQLite 3.50.4".
    async fn version(&mut self) -> Result<String, DbError> {
        match self {
            Db::Postgres(c) => postgres::version(c).await,
            Db::SqlServer(c) => sqlserver::version(c).await,
            Db::Sqlite(s) => s.version().await,
        }
    }

    /// Most rows one INSERT may carry on this backend (SQL Server binds at most 2,100
    /// parameters per statement, SQLite 32,766). PostgreSQL bulk-loads a whole batch with one
    /// COPY, whatever its size; 1,000 is what a batch larger than "one statement" means there.
    pub fn max_rows_per_insert(&self) -> usize {
        match self {
            Db::Postgres(_) | Db::Sqlite(_) => 1000,
            Db::SqlServer(_) => 2000 / COLUMNS.len(),
        }
    }

    /// Inserts rows (each `COLUMNS.len()` params, in that order) in one transaction; rows
    /// already stored are kept as they are. Returns, per row, whether it was written now
    /// (`false`: it was already there, or appears earlier in `rows`).
    pub async fn insert(&mut self, rows: &[Vec<Param>]) -> Result<Vec<bool>, DbError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let max = self.max_rows_per_insert();
        let chunks = |d: Dialect| -> Vec<(String, &[Vec<Param>])> {
            rows.chunks(max).map(|c| (d.insert_sql(c.len()), c)).collect()
        };
        let written = match self {
            Db::Postgres(c) => match postgres::copy_insert(c, rows).await? {
                postgres::Written::All => return Ok(vec![true; rows.len()]),
                postgres::Written::Only(keys) => keys,
            },
            Db::SqlServer(c) => sqlserver::insert(c, &chunks(Dialect::SqlServer)).await?,
            Db::Sqlite(s) => {
                let owned =
                    chunks(Dialect::Sqlite).into_iter().map(|(sql, c)| (sql, c.concat())).collect();
                s.insert(owned).await?
            }
        };
        Ok(mark_written(rows, &written))
    }

    /// Rows matching `filter`, oldest first, all at once: for tests and small archives. The
    /// viewer reads through [`Db::select_batches`].
    pub async fn select(&mut self, filter: &SqlFilter) -> Result<Vec<StoredRow>, DbError> {
        let mut batches = self.select_batches(filter).await?;
        let mut all = Vec::new();
        while let Some(b) = batches.next_batch().await? {
            all.extend(b);
        }
        Ok(all)
    }

    /// Rows matching `filter`, oldest first, read in batches of at most [`BATCH_ROWS`]:
    /// PostgreSQL through a portal of a read-only transaction, SQLite by stepping the
    /// statement in a blocking task that hands batches over a channel of one, SQL Server from
    /// tiberius's row stream as the server's packets arrive. Memory holds a few batches at
    /// most, whatever the archive's size.
    pub async fn select_batches(&mut self, filter: &SqlFilter) -> Result<RowBatches<'_>, DbError> {
        let (sql, params) = filter.select_sql(self.dialect());
        let inner = match self {
            Db::Sqlite(s) => Batches::Sqlite(s.select_batches(sql, params, BATCH_ROWS)),
            Db::Postgres(c) => {
                let refs: Vec<&Param> = params.iter().collect();
                let (tx, portal) = postgres::open_portal(c, &sql, &refs).await?;
                Batches::Postgres { tx, portal, done: false }
            }
            Db::SqlServer(c) => {
                let refs: Vec<&Param> = params.iter().collect();
                Batches::SqlServer(sqlserver::row_stream(c, sql, &refs).await?)
            }
        };
        Ok(RowBatches { inner })
    }

    /// How many rows each key version holds (`None`: rows stored in clear), with the oldest
    /// and newest `ts_ms` of each, lowest version first and rows in clear last.
    pub async fn version_counts(&mut self) -> Result<Vec<VersionCount>, DbError> {
        let count = if self.dialect() == Dialect::SqlServer { "COUNT_BIG(*)" } else { "COUNT(*)" };
        let sql = format!(
            "SELECT CAST(key_version AS BIGINT), {count}, MIN(ts_ms), MAX(ts_ms) FROM {TABLE} \
             GROUP BY key_version"
        );
        let rows = match self {
            Db::Postgres(c) => postgres::integers(c, &sql).await?,
            Db::SqlServer(c) => sqlserver::integers(c, &sql).await?,
            Db::Sqlite(s) => s.integers(sql).await?,
        };
        let mut out = rows
            .into_iter()
            .map(|r| match r[..] {
                [v, Some(n), Some(oldest_ms), Some(newest_ms)] => Ok(VersionCount {
                    key_version: v
                        .map(|v| u32::try_from(v).map_err(|_| bad(format!("key_version {v}"))))
                        .transpose()?,
                    rows: n as u64,
                    oldest_ms,
                    newest_ms,
                }),
                _ => Err(bad("a count per key version came back incomplete")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        out.sort_by_key(|c| (c.key_version.is_none(), c.key_version));
        Ok(out)
    }

    /// Replaces the sealed columns of encrypted rows by their rewrapped values, all in one
    /// transaction (PostgreSQL: one `UPDATE … FROM unnest(…)`; elsewhere one `UPDATE` per row), each row only if it is still under the key version it was read with (so a
    /// row rewrapped meanwhile is left as it is). Returns, per row, whether it was replaced.
    pub(crate) async fn replace_sealed(
        &mut self,
        rows: &[ResealedRow],
    ) -> Result<Vec<bool>, DbError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        if let Db::Postgres(c) = self {
            return postgres::replace_sealed(c, rows).await;
        }
        let d = self.dialect();
        let sql = format!(
            "UPDATE {TABLE} SET payload = {}, from_idx = {}, to_idx = {}, room_idx = {}, \
             key_version = {} WHERE id = {} AND key_version = {}",
            d.placeholder(1),
            d.placeholder(2),
            d.placeholder(3),
            d.placeholder(4),
            d.placeholder(5),
            d.placeholder(6),
            d.placeholder(7),
        );
        let params: Vec<Vec<Param>> = rows
            .iter()
            .map(|r| {
                vec![
                    Param::Bytes(Some(r.payload.clone())),
                    Param::Bytes(Some(r.from_idx.to_vec())),
                    Param::Bytes(Some(r.to_idx.to_vec())),
                    Param::Bytes(r.room_idx.map(|x| x.to_vec())),
                    Param::I32(Some(r.key_version as i32)),
                    Param::I64(r.id),
                    Param::I32(Some(r.was_version as i32)),
                ]
            })
            .collect();
        let changed = match self {
            Db::Postgres(_) => unreachable!("PostgreSQL replaces all rows in one statement"),
            Db::SqlServer(c) => sqlserver::update_each(c, &sql, &params).await?,
            Db::Sqlite(s) => s.update_each(sql, params).await?,
        };
        Ok(changed.into_iter().map(|n| n > 0).collect())
    }

    /// What PostgreSQL plans for the viewer's query through `filter` (`EXPLAIN`, one line per
    /// plan node): to check that a filter is an index scan. Other backends: `None`.
    pub async fn explain_select(&mut self, filter: &SqlFilter) -> Result<Option<String>, DbError> {
        let Db::Postgres(c) = self else { return Ok(None) };
        let (sql, params) = filter.select_sql(Dialect::Postgres);
        let sql = format!("EXPLAIN {sql}");
        let refs: Vec<&Param> = params.iter().collect();
        postgres::explain(c, &sql, &refs).await.map(Some)
    }
}

/// Most rows one batch of the viewer's query holds.
pub const BATCH_ROWS: usize = 1000;

/// The viewer's query, being read batch by batch ([`Db::select_batches`]).
pub struct RowBatches<'a> {
    inner: Batches<'a>,
}

enum Batches<'a> {
    /// The read-only transaction holding the portal; rolled back when dropped.
    Postgres {
        tx: tokio_postgres::Transaction<'a>,
        portal: tokio_postgres::Portal,
        done: bool,
    },
    Sqlite(tokio::sync::mpsc::Receiver<Result<Vec<StoredRow>, DbError>>),
    SqlServer(sqlserver::RowStream<'a>),
}

impl RowBatches<'_> {
    /// The next batch (never empty), or `None` when every row was read.
    pub async fn next_batch(&mut self) -> Result<Option<Vec<StoredRow>>, DbError> {
        match &mut self.inner {
            Batches::Postgres { tx, portal, done } => {
                if *done {
                    return Ok(None);
                }
                let rows = postgres::fetch(tx, portal, BATCH_ROWS).await?;
                // A portal that gives fewer rows than asked for is exhausted.
                *done = rows.len() < BATCH_ROWS;
                Ok(Some(rows).filter(|r| !r.is_empty()))
            }
            Batches::Sqlite(rx) => rx.recv().await.transpose(),
            Batches::SqlServer(s) => sqlserver::next_batch(s, BATCH_ROWS).await,
        }
    }
}

pub(super) fn bad(e: impl std::fmt::Display) -> DbError {
    DbError::BadRow(e.to_string())
}

/// The (message_id, recipient_key) of a row as `insert` takes it.
fn row_key(row: &[Param]) -> Option<(&str, &[u8])> {
    match (row.first()?, row.get(1)?) {
        (Param::Text(Some(m)), Param::Bytes(Some(k))) => Some((m, k)),
        _ => None,
    }
}

/// Per row of `rows`, whether the database reported writing it: each reported key marks the
/// first not yet marked row with that key (a key twice in one batch is written once).
fn mark_written(rows: &[Vec<Param>], written: &[(String, Vec<u8>)]) -> Vec<bool> {
    let mut left: HashMap<(&str, &[u8]), usize> = HashMap::new();
    for (m, k) in written {
        *left.entry((m.as_str(), k.as_slice())).or_default() += 1;
    }
    rows.iter()
        .map(|r| match row_key(r).and_then(|k| left.get_mut(&k)) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        })
        .collect()
}

/// A WHERE clause as data: each condition is an OR of column tests, all conditions ANDed.
#[derive(Debug, Clone, Default)]
pub struct SqlFilter {
    conds: Vec<Vec<Test>>,
}

/// One column test of a condition.
#[derive(Debug, Clone)]
struct Test {
    col: String,
    op: &'static str,
    vals: Vec<Param>,
    /// Only on rows stored in clear (`encrypted` false): spelled out so that PostgreSQL and
    /// SQLite can use the partial indexes on the clear columns (`WHERE NOT encrypted`), whose
    /// predicate the query must imply.
    clear_rows_only: bool,
}

/// One alternative of [`SqlFilter::any_of`]: the column (an SQL expression), its values, and
/// whether the test applies to rows stored in clear only.
pub(crate) type Alternative<'a> = (&'a str, Vec<Param>, bool);

impl SqlFilter {
    /// `column IN (values)` for each alternative, ORed, as a new condition.
    pub(crate) fn any_of(&mut self, alternatives: Vec<Alternative<'_>>) {
        self.conds.push(
            alternatives
                .into_iter()
                .filter(|(_, v, _)| !v.is_empty())
                .map(|(c, vals, clear_rows_only)| Test {
                    col: c.to_owned(),
                    op: "IN",
                    vals,
                    clear_rows_only,
                })
                .collect(),
        );
    }

    /// `column op value`, e.g. `ts_ms >= 5`.
    pub(crate) fn compare(&mut self, column: &str, op: &'static str, value: Param) {
        self.conds.push(vec![Test {
            col: column.to_owned(),
            op,
            vals: vec![value],
            clear_rows_only: false,
        }]);
    }

    /// The viewer's query through this filter (columns in `StoredRow` order, oldest first),
    /// and its parameters.
    fn select_sql(&self, dialect: Dialect) -> (String, Vec<Param>) {
        let (clause, params) = self.render(dialect);
        let sql = format!(
            "SELECT id, message_id, recipient_key, ts_ms, direction, encrypted, from_idx, to_idx, \
             room_idx, from_addr, to_addr, room, key_version, payload FROM {TABLE}{clause} \
             ORDER BY ts_ms, id"
        );
        (sql, params)
    }

    fn render(&self, dialect: Dialect) -> (String, Vec<Param>) {
        let mut params = Vec::new();
        let mut groups = Vec::new();
        // As the partial indexes' predicates are written (`schema`, `sqlite`).
        let clear = match dialect {
            Dialect::Postgres => "NOT encrypted AND ",
            Dialect::SqlServer | Dialect::Sqlite => "encrypted = 0 AND ",
        };
        for g in &self.conds {
            let mut alts = Vec::new();
            for t in g {
                let mut ph = Vec::new();
                for v in &t.vals {
                    params.push(v.clone());
                    ph.push(dialect.placeholder(params.len()));
                }
                let test = if t.op == "IN" {
                    format!("{} IN ({})", t.col, ph.join(", "))
                } else {
                    format!("{} {} {}", t.col, t.op, ph[0])
                };
                alts.push(if t.clear_rows_only { format!("({clear}{test})") } else { test });
            }
            groups.push(if alts.is_empty() {
                "1 = 0".to_owned()
            } else {
                format!("({})", alts.join(" OR "))
            });
        }
        let clause = if groups.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", groups.join(" AND "))
        };
        (clause, params)
    }
}

/// Whether the server named by `url` accepts TCP connections now (within 250 ms); `None` for
/// an SQLite file, which has no server to ask. Cheaper than a login: the archiver uses it to
/// notice a database that is back before its reconnection backoff ends.
pub(crate) async fn accepts_connections(url: &DbUrl) -> Option<bool> {
    let Target::Server(srv) = &url.target else { return None };
    let connect = tokio::net::TcpStream::connect((srv.host.as_str(), srv.port));
    Some(matches!(tokio::time::timeout(Duration::from_millis(250), connect).await, Ok(Ok(_))))
}

/// What the eligibility probe learned about one node's compliance database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeResult {
    /// Reachable, and the server is of this kind (`version` as it reports itself).
    Reachable {
        kind: ComplianceDb,
        version: String,
    },
    Unreachable {
        reason: String,
    },
}

/// Connects to `url`, asks the server what it is, and disconnects (bounded by about 5 s).
///
/// An SQLite URL is reachable when its file exists and opens read-write as an SQLite
/// database, or when it does not exist yet but its directory does and is writable (the
/// archiver will create it); the probe itself never creates the file.
pub async fn probe(url: &DbUrl) -> ProbeResult {
    let srv = match &url.target {
        Target::File(path) => return super::sqlite::probe(path).await,
        Target::Server(s) => s,
    };
    let r = async {
        let mut db = Db::connect(url).await?;
        let v =
            tokio::time::timeout(TIMEOUT, db.version()).await.map_err(|_| DbError::Timeout {
                kind: url.kind_name(),
                at: format!("{}:{}", srv.host, srv.port),
                secs: TIMEOUT.as_secs(),
            })??;
        Ok::<_, DbError>(v)
    }
    .await;
    match r {
        Ok(version) => {
            let kind = if version.starts_with("PostgreSQL") {
                ComplianceDb::PostgreSql
            } else if version.contains("Microsoft SQL Server") {
                ComplianceDb::SqlServer
            } else {
                ComplianceDb::Unsupported(version.split_whitespace().next().unwrap_or("?").into())
            };
            ProbeResult::Reachable { kind, version }
        }
        Err(e) => ProbeResult::Unreachable { reason: e.to_string() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_insert_reports_which_rows_it_wrote() {
        let row = |m: &str, k: u8| vec![Param::Text(Some(m.into())), Param::Bytes(Some(vec![k]))];
        let rows = [row("a", 1), row("b", 1), row("a", 1), row("a", 2)];
        let written = [("a".to_owned(), vec![1]), ("a".to_owned(), vec![2])];
        assert_eq!(mark_written(&rows, &written), [true, false, false, true]);
        let sql = Dialect::Sqlite.insert_sql(2);
        assert!(sql.contains("(?1, ?2,") && sql.contains("?26)"), "{sql}");
        assert!(sql.ends_with("DO NOTHING RETURNING message_id, recipient_key"), "{sql}");
        assert!(Dialect::SqlServer.insert_sql(1).contains("OUTPUT inserted.message_id"));
    }

    #[test]
    fn filters_render_with_each_dialects_placeholders() {
        let mut f = SqlFilter::default();
        f.any_of(vec![
            ("from_idx", vec![Param::Bytes(Some(vec![1])), Param::Bytes(Some(vec![2]))], false),
            ("LOWER(from_addr)", vec![Param::Text(Some("a".into()))], true),
        ]);
        f.compare("ts_ms", ">=", Param::I64(5));
        let (pg, p) = f.render(Dialect::Postgres);
        assert_eq!(
            pg,
            " WHERE (from_idx IN ($1, $2) OR (NOT encrypted AND LOWER(from_addr) IN ($3))) \
             AND (ts_ms >= $4)"
        );
        assert_eq!(p.len(), 4);
        assert!(f.render(Dialect::SqlServer).0.contains("@P4"));
        assert!(
            f.render(Dialect::Sqlite).0.contains("(encrypted = 0 AND LOWER(from_addr) IN (?3))")
        );
        assert!(f.render(Dialect::Sqlite).0.contains("ts_ms >= ?4"));
    }
}
