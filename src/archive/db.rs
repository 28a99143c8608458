//! The compliance database: one schema (docs/archive.md) on PostgreSQL (tokio-postgres), SQL
//! Server (tiberius, TDS 7.3) and SQLite (rusqlite, `sqlite` module), created if missing;
//! batch inserts; the viewer's query; the eligibility probe.
//!
//! Invariants: a batch is written in one transaction (one INSERT statement, or several inside
//! BEGIN … COMMIT when it exceeds a backend's statement size), so it is stored whole or not at
//! all; inserting a row that is already there (same message id and recipient key) changes
//! nothing, so a batch whose acknowledgement was lost can be sent again, and [`Db::insert`]
//! reports per row whether it was written now; values always travel as bound parameters,
//! never spliced into SQL text.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

use super::sqlite::SqliteDb;
use crate::cluster::ComplianceDb;

/// The archive `imcrypt archive` and `imcrypt view` use when no `--db` or
/// `IMCRYPT_ARCHIVE_DB` is given: an SQLite file in the current directory.
pub const DEFAULT_DB_URL: &str = "sqlite:imcrypt-archive.db";

/// Why the database could not be reached or did not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DbError {
    #[error(
        "database URL {0:?} is not understood: use postgres://user:password@host:port/db, \
         sqlserver://user:password@host:port/db, or sqlite:PATH (a file; sqlite:///abs/path \
         for an absolute path)"
    )]
    Url(String),
    #[error("cannot connect to the {kind} database at {at}: {reason}")]
    Connect { kind: &'static str, at: String, reason: String },
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
                | DbError::Timeout { .. }
                | DbError::Lost { .. }
                | DbError::Open { .. }
                | DbError::Unavailable { .. }
        )
    }
}

/// Where the archive lives, parsed from a URL: `postgres://…`, `sqlserver://…`, or
/// `sqlite:PATH` / `sqlite://PATH` (see [`DbUrl::sqlite`]).
///
/// Invariant: `kind` is [`ComplianceDb::Sqlite`] exactly when the target is a file.
#[derive(Clone, PartialEq, Eq)]
pub struct DbUrl {
    pub kind: ComplianceDb,
    raw: String,
    target: Target,
}

#[derive(Clone, PartialEq, Eq)]
enum Target {
    Server(Server),
    File(PathBuf),
}

/// A database server and the login to it.
#[derive(Clone, PartialEq, Eq)]
struct Server {
    host: String,
    port: u16,
    user: String,
    password: String,
    database: String,
}

impl std::fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DbUrl({})", self.redacted())
    }
}

impl std::fmt::Display for DbUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(h) = std::str::from_utf8(&b[i + 1..i + 3])
            && let Ok(v) = u8::from_str_radix(h, 16)
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl std::str::FromStr for DbUrl {
    type Err = DbError;

    fn from_str(s: &str) -> Result<Self, DbError> {
        let bad = || DbError::Url(redact(s));
        if let Some(rest) = s.strip_prefix("sqlite:") {
            // sqlite:PATH or sqlite://PATH; sqlite:///abs is the absolute path /abs.
            let path = rest.strip_prefix("//").unwrap_or(rest);
            // ":memory:" would be an archive that vanishes at exit.
            if path.is_empty() || path == ":memory:" {
                return Err(bad());
            }
            return Ok(Self {
                kind: ComplianceDb::Sqlite,
                raw: s.to_owned(),
                target: Target::File(PathBuf::from(path)),
            });
        }
        let (scheme, rest) = s.split_once("://").ok_or_else(bad)?;
        let (kind, default_port) = match scheme {
            "postgres" | "postgresql" => (ComplianceDb::PostgreSql, 5432),
            "sqlserver" | "mssql" => (ComplianceDb::SqlServer, 1433),
            _ => return Err(bad()),
        };
        let (auth, hostpart) = rest.rsplit_once('@').unwrap_or(("", rest));
        let (user, password) = auth.split_once(':').unwrap_or((auth, ""));
        let (hostport, database) = hostpart.split_once('/').unwrap_or((hostpart, ""));
        let database = database.split('?').next().unwrap_or("");
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().map_err(|_| bad())?),
            None => (hostport, default_port),
        };
        if host.is_empty() {
            return Err(bad());
        }
        Ok(Self {
            kind,
            raw: s.to_owned(),
            target: Target::Server(Server {
                host: host.trim_matches(['[', ']']).to_owned(),
                port,
                user: pct_decode(user),
                password: pct_decode(password),
                database: pct_decode(database),
            }),
        })
    }
}

impl<'de> serde::Deserialize<'de> for DbUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// The URL with its password replaced by `***` (for logs and errors).
pub fn redact(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, rest)), Some(_)) => {
            let (auth, host) = rest.rsplit_once('@').expect("has @");
            match auth.split_once(':') {
                Some((u, _)) => format!("{scheme}://{u}:***@{host}"),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

impl DbUrl {
    /// The SQLite file at `path` (relative to the current directory, or absolute), as
    /// `sqlite:PATH` would give.
    pub fn sqlite(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        Self {
            kind: ComplianceDb::Sqlite,
            raw: format!("sqlite:{}", path.display()),
            target: Target::File(path),
        }
    }

    /// The file of an SQLite URL; `None` for a server.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match &self.target {
            Target::File(p) => Some(p),
            Target::Server(_) => None,
        }
    }

    /// The URL as given, with a server password replaced by `***`.
    pub fn redacted(&self) -> String {
        match self.target {
            Target::File(_) => self.raw.clone(),
            Target::Server(_) => redact(&self.raw),
        }
    }

    fn kind_name(&self) -> &'static str {
        match self.kind {
            ComplianceDb::SqlServer => "SQL Server",
            ComplianceDb::Sqlite => "SQLite",
            _ => "PostgreSQL",
        }
    }
}

impl Default for DbUrl {
    /// [`DEFAULT_DB_URL`].
    fn default() -> Self {
        DEFAULT_DB_URL.parse().expect("the default URL parses")
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
    pub id: i64,
    pub message_id: String,
    pub recipient_key: Vec<u8>,
    pub ts_ms: i64,
    pub direction: String,
    pub encrypted: bool,
    pub from_idx: Option<Vec<u8>>,
    pub to_idx: Option<Vec<u8>>,
    pub room_idx: Option<Vec<u8>>,
    pub from_addr: Option<String>,
    pub to_addr: Option<String>,
    pub room: Option<String>,
    pub key_version: Option<i32>,
    pub payload: Vec<u8>,
}

pub const TABLE: &str = "imcrypt_archive";

/// The insert columns, in order.
pub const COLUMNS: [&str; 13] = [
    "message_id",
    "recipient_key",
    "ts_ms",
    "direction",
    "encrypted",
    "from_idx",
    "to_idx",
    "room_idx",
    "from_addr",
    "to_addr",
    "room",
    "key_version",
    "payload",
];

pub const POSTGRES_SCHEMA: &str = "\
CREATE TABLE IF NOT EXISTS imcrypt_archive (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id    VARCHAR(255) NOT NULL,
    recipient_key BYTEA        NOT NULL,
    ts_ms         BIGINT       NOT NULL,
    direction     VARCHAR(8)   NOT NULL,
    encrypted     BOOLEAN      NOT NULL,
    from_idx      BYTEA,
    to_idx        BYTEA,
    room_idx      BYTEA,
    from_addr     VARCHAR(320),
    to_addr       VARCHAR(320),
    room          VARCHAR(255),
    key_version   INTEGER,
    payload       BYTEA        NOT NULL,
    CONSTRAINT imcrypt_archive_row UNIQUE (message_id, recipient_key)
);
CREATE INDEX IF NOT EXISTS imcrypt_archive_from ON imcrypt_archive (from_idx);
CREATE INDEX IF NOT EXISTS imcrypt_archive_to ON imcrypt_archive (to_idx);
CREATE INDEX IF NOT EXISTS imcrypt_archive_room ON imcrypt_archive (room_idx);
CREATE INDEX IF NOT EXISTS imcrypt_archive_ts ON imcrypt_archive (ts_ms);
";

pub const SQLSERVER_SCHEMA: &str = "\
IF OBJECT_ID(N'dbo.imcrypt_archive', N'U') IS NULL
BEGIN
CREATE TABLE dbo.imcrypt_archive (
    id            BIGINT IDENTITY(1,1) PRIMARY KEY,
    message_id    NVARCHAR(255)  NOT NULL,
    recipient_key VARBINARY(32)  NOT NULL,
    ts_ms         BIGINT         NOT NULL,
    direction     VARCHAR(8)     NOT NULL,
    encrypted     BIT            NOT NULL,
    from_idx      VARBINARY(32)  NULL,
    to_idx        VARBINARY(32)  NULL,
    room_idx      VARBINARY(32)  NULL,
    from_addr     NVARCHAR(320)  NULL,
    to_addr       NVARCHAR(320)  NULL,
    room          NVARCHAR(255)  NULL,
    key_version   INT            NULL,
    payload       VARBINARY(MAX) NOT NULL
);
CREATE UNIQUE INDEX imcrypt_archive_row ON dbo.imcrypt_archive (message_id, recipient_key)
    WITH (IGNORE_DUP_KEY = ON);
CREATE INDEX imcrypt_archive_from ON dbo.imcrypt_archive (from_idx);
CREATE INDEX imcrypt_archive_to ON dbo.imcrypt_archive (to_idx);
CREATE INDEX imcrypt_archive_room ON dbo.imcrypt_archive (room_idx);
CREATE INDEX imcrypt_archive_ts ON dbo.imcrypt_archive (ts_ms);
END
";

const TIMEOUT: Duration = Duration::from_secs(5);

/// An open connection to the compliance database.
pub enum Db {
    Postgres(tokio_postgres::Client),
    SqlServer(Box<tiberius::Client<Compat<TcpStream>>>),
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

/// A server error is a connection problem, to retry after reconnecting, when its SQLSTATE says
/// the server is going away or cannot serve now: class 08 (connection exception), 57
/// (operator intervention: admin or crash shutdown, cannot connect now), 53 (insufficient
/// resources), and 40001/40P01 (serialization failure, deadlock). Seen in tests: `pg_ctl stop`
/// answers an INSERT in flight with 57P01 before it closes the connection.
fn pg_err(e: tokio_postgres::Error) -> DbError {
    let Some(db) = e.as_db_error() else {
        return DbError::Lost { kind: "PostgreSQL", reason: e.to_string() };
    };
    let code = db.code().code();
    let reason = format!("{} (SQLSTATE {code})", db.message());
    let transient = ["08", "57", "53"].iter().any(|c| code.starts_with(c))
        || code == "40001"
        || code == "40P01";
    if transient || e.is_closed() {
        DbError::Lost { kind: "PostgreSQL", reason }
    } else {
        DbError::Statement { kind: "PostgreSQL", reason }
    }
}

/// Why a PostgreSQL login failed, in the server's words: `e.to_string()` of a server error is
/// only "db error", so the message and SQLSTATE are taken from the server's error (28P01
/// wrong password, 28000 no such role, 3D000 no such database, …).
fn pg_connect_reason(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// As for PostgreSQL: shutdown in progress (6005), deadlock victim (1205) and the server's
/// connection-level errors are retried after reconnecting; other server errors are final.
fn ms_err(e: tiberius::error::Error) -> DbError {
    match e {
        tiberius::error::Error::Server(t) if ![6005, 1205, 233, 10054].contains(&t.code()) => {
            DbError::Statement { kind: "SQL Server", reason: t.to_string() }
        }
        other => DbError::Lost { kind: "SQL Server", reason: other.to_string() },
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
    pub async fn connect_or_create(url: &DbUrl) -> Result<Self, DbError> {
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
        let fail = |reason: String| DbError::Connect { kind, at: at.clone(), reason };
        match url.kind {
            ComplianceDb::SqlServer => {
                let mut c = tiberius::Config::new();
                c.host(&srv.host);
                c.port(srv.port);
                c.authentication(tiberius::AuthMethod::sql_server(&srv.user, &srv.password));
                if !srv.database.is_empty() {
                    c.database(&srv.database);
                }
                c.encryption(tiberius::EncryptionLevel::NotSupported);
                let go = async {
                    let tcp = TcpStream::connect((srv.host.as_str(), srv.port))
                        .await
                        .map_err(|e| fail(e.to_string()))?;
                    let _ = tcp.set_nodelay(true);
                    tiberius::Client::connect(c, tcp.compat_write())
                        .await
                        .map_err(|e| fail(e.to_string()))
                };
                let client = tokio::time::timeout(TIMEOUT, go).await.map_err(|_| timeout)??;
                Ok(Db::SqlServer(Box::new(client)))
            }
            _ => {
                let mut c = tokio_postgres::Config::new();
                c.host(&srv.host).port(srv.port).connect_timeout(TIMEOUT);
                if !srv.user.is_empty() {
                    c.user(&srv.user);
                }
                if !srv.password.is_empty() {
                    c.password(&srv.password);
                }
                if !srv.database.is_empty() {
                    c.dbname(&srv.database);
                }
                let go = c.connect(tokio_postgres::NoTls);
                let (client, conn) = tokio::time::timeout(TIMEOUT, go)
                    .await
                    .map_err(|_| timeout)?
                    .map_err(|e| fail(pg_connect_reason(&e)))?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "PostgreSQL connection ended");
                    }
                });
                Ok(Db::Postgres(client))
            }
        }
    }

    pub fn kind_name(&self) -> &'static str {
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
            Db::Postgres(c) => c.batch_execute(POSTGRES_SCHEMA).await.map_err(pg_err),
            Db::SqlServer(c) => {
                c.simple_query(SQLSERVER_SCHEMA)
                    .await
                    .map_err(ms_err)?
                    .into_results()
                    .await
                    .map_err(ms_err)?;
                Ok(())
            }
            Db::Sqlite(s) => s.ensure_schema().await,
        }
    }

    /// What the server says it is, e.g. "PostgreSQL 15.8 …", "Microsoft SQL Server 2022 …" or
    /// "SQLite 3.50.4".
    pub async fn version(&mut self) -> Result<String, DbError> {
        match self {
            Db::Postgres(c) => {
                let row = c.query_one("SELECT version()", &[]).await.map_err(pg_err)?;
                Ok(row.get::<_, String>(0))
            }
            Db::SqlServer(c) => {
                let row = c
                    .simple_query("SELECT @@VERSION")
                    .await
                    .map_err(ms_err)?
                    .into_row()
                    .await
                    .map_err(ms_err)?
                    .ok_or_else(|| DbError::BadRow("SELECT @@VERSION returned nothing".into()))?;
                Ok(row.get::<&str, _>(0).unwrap_or_default().to_owned())
            }
            Db::Sqlite(s) => s.version().await,
        }
    }

    /// Most rows one INSERT may carry on this backend (SQL Server binds at most 2,100
    /// parameters per statement, SQLite 32,766).
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
        let dialect = self.dialect();
        let chunks: Vec<(String, &[Vec<Param>])> = rows
            .chunks(self.max_rows_per_insert())
            .map(|c| (dialect.insert_sql(c.len()), c))
            .collect();
        let written = match self {
            Db::Postgres(c) if chunks.len() == 1 => pg_insert(&*c, &chunks).await?,
            Db::Postgres(c) => {
                let tx = c.transaction().await.map_err(pg_err)?;
                let w = pg_insert(&tx, &chunks).await?;
                tx.commit().await.map_err(pg_err)?;
                w
            }
            Db::SqlServer(c) => ms_insert(c, &chunks).await?,
            Db::Sqlite(s) => {
                let owned = chunks.iter().map(|(sql, c)| (sql.clone(), c.concat())).collect();
                s.insert(owned).await?
            }
        };
        Ok(mark_written(rows, &written))
    }

    /// Rows matching `filter`, oldest first.
    pub async fn select(&mut self, filter: &SqlFilter) -> Result<Vec<StoredRow>, DbError> {
        let (clause, params) = filter.render(self.dialect());
        let sql = format!(
            "SELECT id, message_id, recipient_key, ts_ms, direction, encrypted, from_idx, to_idx, \
             room_idx, from_addr, to_addr, room, key_version, payload FROM {TABLE}{clause} \
             ORDER BY ts_ms, id"
        );
        let refs: Vec<&Param> = params.iter().collect();
        match self {
            Db::Sqlite(s) => s.select(sql, params).await,
            Db::Postgres(c) => {
                let p = pg_params(&refs);
                let rows = c.query(&sql, &p).await.map_err(pg_err)?;
                rows.iter()
                    .map(|r| {
                        Ok(StoredRow {
                            id: r.try_get(0).map_err(bad)?,
                            message_id: r.try_get(1).map_err(bad)?,
                            recipient_key: r.try_get(2).map_err(bad)?,
                            ts_ms: r.try_get(3).map_err(bad)?,
                            direction: r.try_get(4).map_err(bad)?,
                            encrypted: r.try_get(5).map_err(bad)?,
                            from_idx: r.try_get(6).map_err(bad)?,
                            to_idx: r.try_get(7).map_err(bad)?,
                            room_idx: r.try_get(8).map_err(bad)?,
                            from_addr: r.try_get(9).map_err(bad)?,
                            to_addr: r.try_get(10).map_err(bad)?,
                            room: r.try_get(11).map_err(bad)?,
                            key_version: r.try_get(12).map_err(bad)?,
                            payload: r.try_get(13).map_err(bad)?,
                        })
                    })
                    .collect()
            }
            Db::SqlServer(c) => {
                let mut q = tiberius::Query::new(sql);
                bind_all(&mut q, &refs);
                let rows = q
                    .query(&mut **c)
                    .await
                    .map_err(ms_err)?
                    .into_first_result()
                    .await
                    .map_err(ms_err)?;
                rows.iter().map(ms_row).collect()
            }
        }
    }
}

fn bad(e: impl std::fmt::Display) -> DbError {
    DbError::BadRow(e.to_string())
}

fn ms_row(r: &tiberius::Row) -> Result<StoredRow, DbError> {
    let s = |i: usize| -> Result<Option<String>, DbError> {
        Ok(r.try_get::<&str, _>(i).map_err(bad)?.map(str::to_owned))
    };
    let b = |i: usize| -> Result<Option<Vec<u8>>, DbError> {
        Ok(r.try_get::<&[u8], _>(i).map_err(bad)?.map(<[u8]>::to_vec))
    };
    fn need<T>(v: Option<T>, what: &str) -> Result<T, DbError> {
        v.ok_or_else(|| bad(format!("{what} is NULL")))
    }
    Ok(StoredRow {
        id: need(r.try_get::<i64, _>(0).map_err(bad)?, "id")?,
        message_id: need(s(1)?, "message_id")?,
        recipient_key: need(b(2)?, "recipient_key")?,
        ts_ms: need(r.try_get::<i64, _>(3).map_err(bad)?, "ts_ms")?,
        direction: need(s(4)?, "direction")?,
        encrypted: need(r.try_get::<bool, _>(5).map_err(bad)?, "encrypted")?,
        from_idx: b(6)?,
        to_idx: b(7)?,
        room_idx: b(8)?,
        from_addr: s(9)?,
        to_addr: s(10)?,
        room: s(11)?,
        key_version: r.try_get::<i32, _>(12).map_err(bad)?,
        payload: need(b(13)?, "payload")?,
    })
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

/// Runs each INSERT … RETURNING on `c` (a client, or a transaction when there are several).
async fn pg_insert(
    c: &impl tokio_postgres::GenericClient,
    chunks: &[(String, &[Vec<Param>])],
) -> Result<Vec<(String, Vec<u8>)>, DbError> {
    let mut written = Vec::new();
    for (sql, rows) in chunks {
        let flat: Vec<&Param> = rows.iter().flatten().collect();
        let p = pg_params(&flat);
        for r in c.query(sql.as_str(), &p).await.map_err(pg_err)? {
            written.push((r.try_get(0).map_err(bad)?, r.try_get(1).map_err(bad)?));
        }
    }
    Ok(written)
}

/// Runs each INSERT … OUTPUT; several inside one transaction, rolled back on any error.
async fn ms_insert(
    c: &mut tiberius::Client<Compat<TcpStream>>,
    chunks: &[(String, &[Vec<Param>])],
) -> Result<Vec<(String, Vec<u8>)>, DbError> {
    async fn run(
        c: &mut tiberius::Client<Compat<TcpStream>>,
        chunks: &[(String, &[Vec<Param>])],
    ) -> Result<Vec<(String, Vec<u8>)>, DbError> {
        let mut written = Vec::new();
        for (sql, rows) in chunks {
            let mut q = tiberius::Query::new(sql.clone());
            let flat: Vec<&Param> = rows.iter().flatten().collect();
            bind_all(&mut q, &flat);
            let out = q
                .query(&mut *c)
                .await
                .map_err(ms_err)?
                .into_first_result()
                .await
                .map_err(ms_err)?;
            for r in &out {
                let m = r.try_get::<&str, _>(0).map_err(bad)?.unwrap_or_default().to_owned();
                let k = r.try_get::<&[u8], _>(1).map_err(bad)?.unwrap_or_default().to_vec();
                written.push((m, k));
            }
        }
        Ok(written)
    }
    async fn exec(c: &mut tiberius::Client<Compat<TcpStream>>, sql: &str) -> Result<(), DbError> {
        c.simple_query(sql).await.map_err(ms_err)?.into_results().await.map_err(ms_err)?;
        Ok(())
    }
    if chunks.len() == 1 {
        return run(c, chunks).await;
    }
    exec(c, "SET XACT_ABORT ON; BEGIN TRANSACTION").await?;
    match run(c, chunks).await {
        Ok(w) => {
            exec(c, "COMMIT TRANSACTION").await?;
            Ok(w)
        }
        Err(e) => {
            let _ = exec(c, "IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION").await;
            Err(e)
        }
    }
}

fn pg_params<'a>(params: &'a [&'a Param]) -> Vec<&'a (dyn tokio_postgres::types::ToSql + Sync)> {
    params
        .iter()
        .map(|p| -> &(dyn tokio_postgres::types::ToSql + Sync) {
            match p {
                Param::Text(v) => v,
                Param::Bytes(v) => v,
                Param::I64(v) => v,
                Param::I32(v) => v,
                Param::Bool(v) => v,
            }
        })
        .collect()
}

fn bind_all(q: &mut tiberius::Query<'_>, params: &[&Param]) {
    for p in params {
        match (*p).clone() {
            Param::Text(v) => q.bind(v),
            Param::Bytes(v) => q.bind(v),
            Param::I64(v) => q.bind(v),
            Param::I32(v) => q.bind(v),
            Param::Bool(v) => q.bind(v),
        }
    }
}

/// A WHERE clause as data: each condition is an OR of column tests, all conditions ANDed.
#[derive(Debug, Clone, Default)]
pub struct SqlFilter {
    conds: Vec<Vec<(String, &'static str, Vec<Param>)>>,
}

impl SqlFilter {
    /// `column IN (values)` as one alternative of a new condition group.
    pub fn any_of(&mut self, alternatives: Vec<(&str, Vec<Param>)>) {
        self.conds.push(
            alternatives
                .into_iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(c, v)| (c.to_owned(), "IN", v))
                .collect(),
        );
    }

    /// `column op value`, e.g. `ts_ms >= 5`.
    pub fn compare(&mut self, column: &str, op: &'static str, value: Param) {
        self.conds.push(vec![(column.to_owned(), op, vec![value])]);
    }

    fn render(&self, dialect: Dialect) -> (String, Vec<Param>) {
        let mut params = Vec::new();
        let mut groups = Vec::new();
        for g in &self.conds {
            let mut alts = Vec::new();
            for (col, op, vals) in g {
                let mut ph = Vec::new();
                for v in vals {
                    params.push(v.clone());
                    ph.push(dialect.placeholder(params.len()));
                }
                alts.push(if *op == "IN" {
                    format!("{col} IN ({})", ph.join(", "))
                } else {
                    format!("{col} {op} {}", ph[0])
                });
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
    fn urls_parse_and_never_show_their_password() {
        let server = |u: &DbUrl| match &u.target {
            Target::Server(s) => s.clone(),
            Target::File(p) => panic!("{p:?}"),
        };
        let u: DbUrl = "postgres://arch:s%40cret@127.0.0.1:5433/im".parse().unwrap();
        assert_eq!(u.kind, ComplianceDb::PostgreSql);
        let s = server(&u);
        assert_eq!((s.host.as_str(), s.port, s.password.as_str()), ("127.0.0.1", 5433, "s@cret"));
        assert_eq!(s.database, "im");
        assert!(!format!("{u} {u:?}").contains("cret"));
        let m: DbUrl = "sqlserver://sa:pw@db.example".parse().unwrap();
        assert_eq!((server(&m).port, m.kind), (1433, ComplianceDb::SqlServer));
        let e = "mysql://x@y/z".parse::<DbUrl>().unwrap_err().to_string();
        assert!(e.contains("postgres://"), "{e}");
        assert!(
            !"oracle://u:topsecret@h"
                .parse::<DbUrl>()
                .unwrap_err()
                .to_string()
                .contains("topsecret")
        );
    }

    #[test]
    fn sqlite_urls_name_a_file_relative_or_absolute() {
        let path = |s: &str| {
            let u: DbUrl = s.parse().unwrap();
            assert_eq!(u.kind, ComplianceDb::Sqlite);
            assert_eq!(u.to_string(), s, "a file URL has no password to hide");
            u.sqlite_path().unwrap().to_str().unwrap().to_owned()
        };
        assert_eq!(path("sqlite:imcrypt-archive.db"), "imcrypt-archive.db");
        assert_eq!(path("sqlite:data/a.db"), "data/a.db");
        assert_eq!(path("sqlite://data/a.db"), "data/a.db");
        assert_eq!(path("sqlite:/var/lib/x.db"), "/var/lib/x.db");
        assert_eq!(path("sqlite:///var/lib/x.db"), "/var/lib/x.db");
        assert_eq!(DbUrl::default(), DEFAULT_DB_URL.parse().unwrap());
        assert_eq!(DbUrl::default().sqlite_path().unwrap(), Path::new("imcrypt-archive.db"));
        assert_eq!(DbUrl::sqlite("/x/y.db"), "sqlite:/x/y.db".parse().unwrap());
        assert!("postgres://u@h/d".parse::<DbUrl>().unwrap().sqlite_path().is_none());
        for bad in ["sqlite:", "sqlite://", "sqlite::memory:"] {
            let e = bad.parse::<DbUrl>().unwrap_err().to_string();
            assert!(e.contains("sqlite:PATH"), "{bad}: {e}");
        }
    }

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
            ("from_idx", vec![Param::Bytes(Some(vec![1])), Param::Bytes(Some(vec![2]))]),
            ("LOWER(from_addr)", vec![Param::Text(Some("a".into()))]),
        ]);
        f.compare("ts_ms", ">=", Param::I64(5));
        let (pg, p) = f.render(Dialect::Postgres);
        assert_eq!(
            pg,
            " WHERE (from_idx IN ($1, $2) OR LOWER(from_addr) IN ($3)) AND (ts_ms >= $4)"
        );
        assert_eq!(p.len(), 4);
        assert!(f.render(Dialect::SqlServer).0.contains("@P4"));
        assert!(f.render(Dialect::Sqlite).0.contains("ts_ms >= ?4"));
    }
}
