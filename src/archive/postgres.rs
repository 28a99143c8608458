//! PostgreSQL (tokio-postgres): connecting, the schema, and the statements `Db` runs there.
//! Errors are sorted into connection problems, which the archiver retries after reconnecting,
//! and refusals, which it does not.
//!
//! Invariants: a batch is bulk-loaded in one transaction (binary `COPY` into the archive; if a
//! row of it is stored already, binary `COPY` into a session's temporary staging table, then
//! one `INSERT … SELECT … ON CONFLICT DO NOTHING`), so it is stored whole or not at all and a
//! row already stored is never stored twice; values always travel as bound parameters or COPY
//! data, never spliced into SQL text; the schema check says nothing when everything already
//! exists (no "already exists" notices in the log).

use tokio_postgres::Client;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;

use super::db::{DbError, LoginError, Param, StoredRow, TIMEOUT, bad};
use super::schema::{COLUMNS, POSTGRES_SCHEMA, TABLE};
use super::tls::PgTls;
use super::url::Server;
use tokio_postgres::config::SslMode;

/// Connects to `srv` with the TLS its URL asks for (`super::tls`: libpq's `sslmode`) and
/// drives the connection in a task of its own. The one place where imcrypt opens a PostgreSQL
/// connection: the archiver, the viewer and the daemon's probe all come here through
/// `Db::connect`. The error is the reason, in the server's words.
pub(super) async fn connect(srv: &Server) -> Result<Client, LoginError> {
    let mut c = tokio_postgres::Config::new();
    c.host(&srv.host).port(srv.port).connect_timeout(TIMEOUT);
    if !srv.user.is_empty() {
        c.user(&srv.user);
    }
    let password = srv.password.resolve()?;
    if !password.is_empty() {
        c.password(password.as_bytes());
    }
    if !srv.database.is_empty() {
        c.dbname(&srv.database);
    }
    let client = match srv.tls.client_config()? {
        None => {
            c.ssl_mode(SslMode::Disable);
            drive(c.connect(tokio_postgres::NoTls).await)?
        }
        Some(tls) => {
            c.ssl_mode(if srv.tls.allows_plain() { SslMode::Prefer } else { SslMode::Require });
            drive(c.connect(PgTls(tls)).await)?
        }
    };
    Ok(client)
}

/// Runs the connection half of a login in a task of its own; the login's error as a reason,
/// told apart when the server only says it is not ready (SQLSTATE 57P03).
fn drive<T>(
    login: Result<
        (Client, tokio_postgres::Connection<tokio_postgres::Socket, T>),
        tokio_postgres::Error,
    >,
) -> Result<Client, LoginError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (client, conn) = login.map_err(|e| {
        let reason = connect_reason(&e);
        if e.code() == Some(&SqlState::CANNOT_CONNECT_NOW) {
            LoginError::NotReady(reason)
        } else {
            LoginError::Refused(reason)
        }
    })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// Creates what is missing of the schema, and this session's staging table. The server's
/// "already exists, skipping" notices are silenced for the check only: they are expected on
/// every start and reconnect and would otherwise land in the log at info level.
pub(super) async fn ensure_schema(c: &Client) -> Result<(), DbError> {
    c.batch_execute(&format!(
        "SET client_min_messages TO warning; {POSTGRES_SCHEMA} {STAGE_SCHEMA} \
         RESET client_min_messages;"
    ))
    .await
    .map_err(err)
}

/// The staging table a batch is copied into: temporary (this session only, not logged) and
/// emptied at each commit, with the archive's insert columns (made `LIKE` it, less its `id`)
/// after the row's place in the batch, so the rows keep their order (and `id`s) when moved
/// into the archive.
const STAGE: &str = "imcrypt_stage";
const STAGE_SCHEMA: &str = "\
CREATE TEMP TABLE IF NOT EXISTS imcrypt_stage (ord INTEGER NOT NULL, LIKE imcrypt_archive)
    ON COMMIT DELETE ROWS;
ALTER TABLE imcrypt_stage DROP COLUMN IF EXISTS id;";

/// The COPY types of the insert columns, in `COLUMNS` order.
const COLUMN_TYPES: [Type; 13] = [
    Type::VARCHAR,
    Type::BYTEA,
    Type::INT8,
    Type::VARCHAR,
    Type::BOOL,
    Type::BYTEA,
    Type::BYTEA,
    Type::BYTEA,
    Type::VARCHAR,
    Type::VARCHAR,
    Type::VARCHAR,
    Type::INT4,
    Type::BYTEA,
];

/// What a bulk load wrote.
pub(super) enum Written {
    /// Every row of the batch (the usual case: nothing of it was stored before).
    All,
    /// Only these rows (`message_id`, `recipient_key`); the others were stored already.
    Only(Vec<(String, Vec<u8>)>),
}

/// Bulk-loads `rows` (each `COLUMNS.len()` params) in one transaction, skipping rows already
/// stored (and a key repeated within the batch). First, binary COPY straight into the archive,
/// as fast as PostgreSQL loads rows at all; a row already stored makes that COPY fail on the
/// table's unique key (SQLSTATE 23505) and its transaction roll back, and only then is the
/// batch loaded again the careful way: COPY into the staging table, then one INSERT … SELECT …
/// ON CONFLICT DO NOTHING that says which rows it wrote. Retried batches are rare (a connection
/// lost before the commit was seen), so they pay for the second load. The staging table is
/// created by [`ensure_schema`], which the archiver runs on every (re)connection.
pub(super) async fn copy_insert(c: &mut Client, rows: &[Vec<Param>]) -> Result<Written, DbError> {
    let cols = COLUMNS.join(", ");
    let tx = c.transaction().await.map_err(err)?;
    let direct = format!("COPY {TABLE} ({cols}) FROM STDIN (FORMAT binary)");
    match copy(&tx, &direct, rows, false).await {
        Ok(()) => {
            tx.commit().await.map_err(err)?;
            return Ok(Written::All);
        }
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            tx.rollback().await.map_err(err)?;
        }
        Err(e) => return Err(err(e)),
    }
    let tx = c.transaction().await.map_err(err)?;
    let staged = format!("COPY {STAGE} (ord, {cols}) FROM STDIN (FORMAT binary)");
    copy(&tx, &staged, rows, true).await.map_err(err)?;
    let sql = format!(
        "INSERT INTO {TABLE} ({cols}) SELECT {cols} FROM {STAGE} ORDER BY ord \
         ON CONFLICT (message_id, recipient_key) DO NOTHING RETURNING message_id, recipient_key"
    );
    let mut written = Vec::new();
    for r in tx.query(sql.as_str(), &[]).await.map_err(err)? {
        written.push((r.try_get(0).map_err(bad)?, r.try_get(1).map_err(bad)?));
    }
    tx.commit().await.map_err(err)?;
    Ok(Written::Only(written))
}

/// Runs one binary COPY of `rows` (`COPY … FROM STDIN (FORMAT binary)` in `sql`), with each
/// row's place in the batch first when `ord`.
async fn copy(
    tx: &tokio_postgres::Transaction<'_>,
    sql: &str,
    rows: &[Vec<Param>],
    ord: bool,
) -> Result<(), tokio_postgres::Error> {
    let sink = tx.copy_in(sql).await?;
    let types: Vec<Type> = ord.then_some(Type::INT4).into_iter().chain(COLUMN_TYPES).collect();
    let writer = BinaryCopyInWriter::new(sink, &types);
    tokio::pin!(writer);
    for (i, row) in rows.iter().enumerate() {
        let place = i as i32;
        let refs: Vec<&Param> = row.iter().collect();
        let mut values = bind(&refs);
        if ord {
            values.insert(0, &place);
        }
        writer.as_mut().write(&values).await?;
    }
    writer.finish().await?;
    Ok(())
}

/// Replaces the sealed columns of `rows` with one `UPDATE … FROM unnest(…)` (one statement,
/// one round trip, however many rows), each row only while it is still under the version it
/// was read with. Returns, per row, whether it was replaced.
pub(super) async fn replace_sealed(
    c: &Client,
    rows: &[super::db::ResealedRow],
) -> Result<Vec<bool>, DbError> {
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let was: Vec<i32> = rows.iter().map(|r| r.was_version as i32).collect();
    let now: Vec<i32> = rows.iter().map(|r| r.key_version as i32).collect();
    let payload: Vec<&[u8]> = rows.iter().map(|r| &r.payload[..]).collect();
    let from: Vec<&[u8]> = rows.iter().map(|r| &r.from_idx[..]).collect();
    let to: Vec<&[u8]> = rows.iter().map(|r| &r.to_idx[..]).collect();
    let room: Vec<Option<&[u8]>> =
        rows.iter().map(|r| r.room_idx.as_ref().map(|x| &x[..])).collect();
    let sql = format!(
        "UPDATE {TABLE} AS t SET payload = u.payload, from_idx = u.from_idx, to_idx = u.to_idx, \
         room_idx = u.room_idx, key_version = u.now \
         FROM unnest($1::BIGINT[], $2::INTEGER[], $3::INTEGER[], $4::BYTEA[], $5::BYTEA[], \
                     $6::BYTEA[], $7::BYTEA[]) \
              AS u(id, was, now, payload, from_idx, to_idx, room_idx) \
         WHERE t.id = u.id AND t.key_version = u.was RETURNING t.id"
    );
    let done =
        c.query(&sql, &[&ids, &was, &now, &payload, &from, &to, &room]).await.map_err(err)?;
    let done: std::collections::HashSet<i64> = done.iter().map(|r| r.get(0)).collect();
    Ok(ids.iter().map(|id| done.contains(id)).collect())
}

/// The rows of an aggregate query whose columns are all `BIGINT` (or NULL).
pub(super) async fn integers(c: &Client, sql: &str) -> Result<Vec<Vec<Option<i64>>>, DbError> {
    let rows = c.query(sql, &[]).await.map_err(err)?;
    rows.iter()
        .map(|r| (0..r.len()).map(|i| r.try_get::<_, Option<i64>>(i).map_err(bad)).collect())
        .collect()
}

pub(super) async fn version(c: &Client) -> Result<String, DbError> {
    let row = c.query_one("SELECT version()", &[]).await.map_err(err)?;
    Ok(row.get::<_, String>(0))
}

/// Opens the viewer's query as a portal of a read-only transaction, so that its rows can be
/// fetched batch by batch ([`fetch`]) instead of all at once: the server keeps the rest until
/// asked. The transaction rolls back when dropped (nothing to undo: it only reads).
pub(super) async fn open_portal<'c>(
    c: &'c mut Client,
    sql: &str,
    params: &[&Param],
) -> Result<(tokio_postgres::Transaction<'c>, tokio_postgres::Portal), DbError> {
    let tx = c.build_transaction().read_only(true).start().await.map_err(err)?;
    let portal = tx.bind(sql, &bind(params)).await.map_err(err)?;
    Ok((tx, portal))
}

/// The next `max` rows (or fewer: the last ones) of `portal`.
pub(super) async fn fetch(
    tx: &tokio_postgres::Transaction<'_>,
    portal: &tokio_postgres::Portal,
    max: usize,
) -> Result<Vec<StoredRow>, DbError> {
    let max = i32::try_from(max).unwrap_or(i32::MAX);
    let rows = tx.query_portal(portal, max).await.map_err(err)?;
    rows.iter().map(stored_row).collect()
}

/// `sql` (an `EXPLAIN`) with its parameters bound: the plan, one line per row of the answer.
pub(super) async fn explain(c: &Client, sql: &str, params: &[&Param]) -> Result<String, DbError> {
    let rows = c.query(sql, &bind(params)).await.map_err(err)?;
    let lines: Result<Vec<String>, DbError> =
        rows.iter().map(|r| r.try_get::<_, String>(0).map_err(bad)).collect();
    Ok(lines?.join("\n"))
}

/// One row of the viewer's query (columns in `StoredRow` order).
fn stored_row(r: &tokio_postgres::Row) -> Result<StoredRow, DbError> {
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
}

/// A server error is a connection problem, to retry after reconnecting, when its SQLSTATE says
/// the server is going away or cannot serve now: class 08 (connection exception), 57
/// (operator intervention: admin or crash shutdown, cannot connect now), 53 (insufficient
/// resources), and 40001/40P01 (serialization failure, deadlock). Seen in tests: `pg_ctl stop`
/// answers an INSERT in flight with 57P01 before it closes the connection.
fn err(e: tokio_postgres::Error) -> DbError {
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
/// wrong password, 28000 no such role, 3D000 no such database, …); any other error with its
/// causes (a refused certificate is the cause of "error performing TLS handshake").
fn connect_reason(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => {
            // "error performing TLS handshake" says nothing of why: the cause is the source.
            let mut reason = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                reason = format!("{reason}: {s}");
                source = s.source();
            }
            reason
        }
    }
}

fn bind<'a>(params: &'a [&'a Param]) -> Vec<&'a (dyn tokio_postgres::types::ToSql + Sync)> {
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
