//! The compliance database: one schema (docs/archive.md) on PostgreSQL (tokio-postgres) and SQL
//! Server (tiberius, TDS 7.3), created if missing; batch inserts; the viewer's query; the
//! eligibility probe.
//!
//! Invariants: a batch is one INSERT statement, so it is stored whole or not at all; inserting
//! a row that is already there (same message id and recipient key) changes nothing, so a batch
//! whose acknowledgement was lost can be sent again; values always travel as bound parameters,
//! never spliced into SQL text.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

use crate::cluster::ComplianceDb;

/// Why the database could not be reached or did not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DbError {
    #[error(
        "database URL {0:?} is not understood: use postgres://user:password@host:port/db or \
         sqlserver://user:password@host:port/db"
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
}

impl DbError {
    /// Whether reconnecting and retrying may help.
    pub fn is_connection(&self) -> bool {
        matches!(self, DbError::Connect { .. } | DbError::Timeout { .. } | DbError::Lost { .. })
    }
}

/// Where the archive lives, parsed from a URL.
#[derive(Clone, PartialEq, Eq)]
pub struct DbUrl {
    pub kind: ComplianceDb,
    raw: String,
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
            host: host.trim_matches(['[', ']']).to_owned(),
            port,
            user: pct_decode(user),
            password: pct_decode(password),
            database: pct_decode(database),
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
    pub fn redacted(&self) -> String {
        redact(&self.raw)
    }

    fn kind_name(&self) -> &'static str {
        match self.kind {
            ComplianceDb::SqlServer => "SQL Server",
            _ => "PostgreSQL",
        }
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
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Db::Postgres(_) => "Db(PostgreSQL)",
            Db::SqlServer(_) => "Db(SQL Server)",
        })
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
    /// Connects (bounded by 5 s). Does not touch the schema.
    pub async fn connect(url: &DbUrl) -> Result<Self, DbError> {
        let kind = url.kind_name();
        let at = format!("{}:{}", url.host, url.port);
        let timeout = DbError::Timeout { kind, at: at.clone(), secs: TIMEOUT.as_secs() };
        let fail = |reason: String| DbError::Connect { kind, at: at.clone(), reason };
        match url.kind {
            ComplianceDb::SqlServer => {
                let mut c = tiberius::Config::new();
                c.host(&url.host);
                c.port(url.port);
                c.authentication(tiberius::AuthMethod::sql_server(&url.user, &url.password));
                if !url.database.is_empty() {
                    c.database(&url.database);
                }
                c.encryption(tiberius::EncryptionLevel::NotSupported);
                let go = async {
                    let tcp = TcpStream::connect((url.host.as_str(), url.port))
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
                c.host(&url.host).port(url.port).connect_timeout(TIMEOUT);
                if !url.user.is_empty() {
                    c.user(&url.user);
                }
                if !url.password.is_empty() {
                    c.password(&url.password);
                }
                if !url.database.is_empty() {
                    c.dbname(&url.database);
                }
                let go = c.connect(tokio_postgres::NoTls);
                let (client, conn) = tokio::time::timeout(TIMEOUT, go)
                    .await
                    .map_err(|_| timeout)?
                    .map_err(|e| fail(e.to_string()))?;
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
        }
    }

    /// What the server says it is, e.g. "PostgreSQL 15.8 …" or "Microsoft SQL Server 2022 …".
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
        }
    }

    /// Most rows one INSERT may carry on this backend (SQL Server binds at most 2,100
    /// parameters per statement).
    pub fn max_rows_per_insert(&self) -> usize {
        match self {
            Db::Postgres(_) => 1000,
            Db::SqlServer(_) => 2000 / COLUMNS.len(),
        }
    }

    /// Inserts rows (each `COLUMNS.len()` params) in one statement; existing rows are kept.
    pub async fn insert(&mut self, rows: &[Vec<Param>]) -> Result<u64, DbError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let mut n = 0;
        let max = self.max_rows_per_insert();
        for chunk in rows.chunks(max) {
            n += self.insert_chunk(chunk).await?;
        }
        Ok(n)
    }

    async fn insert_chunk(&mut self, rows: &[Vec<Param>]) -> Result<u64, DbError> {
        let pg = matches!(self, Db::Postgres(_));
        let mut sql = format!("INSERT INTO {TABLE} ({}) VALUES ", COLUMNS.join(", "));
        let mut k = 0;
        for (i, _) in rows.iter().enumerate() {
            sql.push_str(if i == 0 { "(" } else { ", (" });
            for j in 0..COLUMNS.len() {
                k += 1;
                if j > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&placeholder(pg, k));
            }
            sql.push(')');
        }
        if pg {
            sql.push_str(" ON CONFLICT (message_id, recipient_key) DO NOTHING");
        }
        let params: Vec<&Param> = rows.iter().flatten().collect();
        self.execute(&sql, &params).await
    }

    async fn execute(&mut self, sql: &str, params: &[&Param]) -> Result<u64, DbError> {
        match self {
            Db::Postgres(c) => {
                let p = pg_params(params);
                c.execute(sql, &p).await.map_err(pg_err)
            }
            Db::SqlServer(c) => {
                let mut q = tiberius::Query::new(sql.to_owned());
                bind_all(&mut q, params);
                let r = q.execute(&mut **c).await.map_err(ms_err)?;
                Ok(r.total())
            }
        }
    }

    /// Rows matching `filter`, oldest first.
    pub async fn select(&mut self, filter: &SqlFilter) -> Result<Vec<StoredRow>, DbError> {
        let pg = matches!(self, Db::Postgres(_));
        let (clause, params) = filter.render(pg);
        let sql = format!(
            "SELECT id, message_id, recipient_key, ts_ms, direction, encrypted, from_idx, to_idx, \
             room_idx, from_addr, to_addr, room, key_version, payload FROM {TABLE}{clause} \
             ORDER BY ts_ms, id"
        );
        let refs: Vec<&Param> = params.iter().collect();
        match self {
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

fn placeholder(pg: bool, k: usize) -> String {
    if pg { format!("${k}") } else { format!("@P{k}") }
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

    fn render(&self, pg: bool) -> (String, Vec<Param>) {
        let mut params = Vec::new();
        let mut groups = Vec::new();
        for g in &self.conds {
            let mut alts = Vec::new();
            for (col, op, vals) in g {
                let mut ph = Vec::new();
                for v in vals {
                    params.push(v.clone());
                    ph.push(placeholder(pg, params.len()));
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
pub async fn probe(url: &DbUrl) -> ProbeResult {
    let r = async {
        let mut db = Db::connect(url).await?;
        let v =
            tokio::time::timeout(TIMEOUT, db.version()).await.map_err(|_| DbError::Timeout {
                kind: url.kind_name(),
                at: format!("{}:{}", url.host, url.port),
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
        let u: DbUrl = "postgres://arch:s%40cret@127.0.0.1:5433/im".parse().unwrap();
        assert_eq!(u.kind, ComplianceDb::PostgreSql);
        assert_eq!((u.host.as_str(), u.port, u.password.as_str()), ("127.0.0.1", 5433, "s@cret"));
        assert_eq!(u.database, "im");
        assert!(!format!("{u} {u:?}").contains("cret"));
        let m: DbUrl = "sqlserver://sa:pw@db.example".parse().unwrap();
        assert_eq!((m.kind, m.port), (ComplianceDb::SqlServer, 1433));
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
    fn filters_render_with_each_dialects_placeholders() {
        let mut f = SqlFilter::default();
        f.any_of(vec![
            ("from_idx", vec![Param::Bytes(Some(vec![1])), Param::Bytes(Some(vec![2]))]),
            ("LOWER(from_addr)", vec![Param::Text(Some("a".into()))]),
        ]);
        f.compare("ts_ms", ">=", Param::I64(5));
        let (pg, p) = f.render(true);
        assert_eq!(
            pg,
            " WHERE (from_idx IN ($1, $2) OR LOWER(from_addr) IN ($3)) AND (ts_ms >= $4)"
        );
        assert_eq!(p.len(), 4);
        assert!(f.render(false).0.contains("@P4"));
    }
}
