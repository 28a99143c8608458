//! The SQLite backend of the compliance database: one file on the node, the same table,
//! columns, unique key and indexes as on PostgreSQL (docs/archive.md), through rusqlite with
//! SQLite compiled in. `db.rs` builds the SQL; this module opens the file, runs statements
//! and maps SQLite's errors.
//!
//! Invariants:
//! - Every call into SQLite runs on tokio's blocking pool (`spawn_blocking`), never on a
//!   runtime worker; one connection is used by one call at a time (a mutex).
//! - Every connection runs with `journal_mode=WAL` (checked: opening fails if the file system
//!   cannot do it), `synchronous=FULL` and a 5 s busy timeout: a commit that returned is on
//!   disk (it survives `kill -9` and a power cut), and the viewer reads while the archiver
//!   writes.
//! - An insert is one `BEGIN IMMEDIATE … COMMIT` transaction however many statements it
//!   takes: all its rows or none.
//! - Only the archiver's open creates the file; the viewer's open and the probe never do.
//! - Every error names the file. A locked or busy file, an I/O error, a full disk or a
//!   read-only or damaged file is [`DbError::Unavailable`] (the archiver keeps its rows and
//!   retries); a statement SQLite refuses is [`DbError::Statement`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, Value};
use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use super::db::{DbError, Param, ProbeResult, StoredRow};
use crate::cluster::ComplianceDb;

/// How long a statement waits for another connection's lock before failing as busy.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The archive table and its indexes, as `POSTGRES_SCHEMA` (a STRICT table, so a value of
/// the wrong type is refused as PostgreSQL refuses it; ids are never reused).
const SQLITE_SCHEMA: &str = "\
CREATE TABLE IF NOT EXISTS imcrypt_archive (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id    TEXT    NOT NULL,
    recipient_key BLOB    NOT NULL,
    ts_ms         INTEGER NOT NULL,
    direction     TEXT    NOT NULL,
    encrypted     INTEGER NOT NULL CHECK (encrypted IN (0, 1)),
    from_idx      BLOB,
    to_idx        BLOB,
    room_idx      BLOB,
    from_addr     TEXT,
    to_addr       TEXT,
    room          TEXT,
    key_version   INTEGER,
    payload       BLOB    NOT NULL,
    CONSTRAINT imcrypt_archive_row UNIQUE (message_id, recipient_key)
) STRICT;
CREATE INDEX IF NOT EXISTS imcrypt_archive_from ON imcrypt_archive (from_idx);
CREATE INDEX IF NOT EXISTS imcrypt_archive_to ON imcrypt_archive (to_idx);
CREATE INDEX IF NOT EXISTS imcrypt_archive_room ON imcrypt_archive (room_idx);
CREATE INDEX IF NOT EXISTS imcrypt_archive_ts ON imcrypt_archive (ts_ms);
CREATE INDEX IF NOT EXISTS imcrypt_archive_from_clear ON imcrypt_archive (LOWER(from_addr))
    WHERE encrypted = 0;
CREATE INDEX IF NOT EXISTS imcrypt_archive_to_clear ON imcrypt_archive (LOWER(to_addr))
    WHERE encrypted = 0;
CREATE INDEX IF NOT EXISTS imcrypt_archive_room_clear ON imcrypt_archive (LOWER(room))
    WHERE encrypted = 0;
";

/// An open SQLite archive file.
pub struct SqliteDb {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
}

impl rusqlite::ToSql for Param {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        match self {
            Param::Text(v) => v.to_sql(),
            Param::Bytes(v) => v.to_sql(),
            Param::I64(v) => v.to_sql(),
            Param::I32(v) => v.to_sql(),
            Param::Bool(v) => Ok(ToSqlOutput::Owned(Value::Integer(i64::from(*v)))),
        }
    }
}

/// Maps an error of a statement on `path` (see the module's invariants).
fn sqlite_err(path: &Path, e: rusqlite::Error) -> DbError {
    use rusqlite::ErrorCode as C;
    let at = path.display().to_string();
    match e.sqlite_error_code() {
        Some(C::DatabaseBusy | C::DatabaseLocked) => DbError::Unavailable {
            path: at,
            reason: format!(
                "{e}: another process held its lock longer than the {} s busy timeout",
                BUSY_TIMEOUT.as_secs()
            ),
        },
        Some(
            C::ConstraintViolation
            | C::TypeMismatch
            | C::TooBig
            | C::ParameterOutOfRange
            | C::ApiMisuse
            | C::AuthorizationForStatementDenied
            | C::Unknown,
        ) => DbError::Statement { kind: "SQLite", reason: format!("{e} (database file {at})") },
        Some(_) => DbError::Unavailable { path: at, reason: e.to_string() },
        None => match e {
            rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::IntegralValueOutOfRange(..)
            | rusqlite::Error::InvalidColumnType(..) => {
                DbError::BadRow(format!("{e} (database file {at})"))
            }
            other => DbError::Statement {
                kind: "SQLite",
                reason: format!("{other} (database file {at})"),
            },
        },
    }
}

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> Result<T, DbError> + Send + 'static,
) -> Result<T, DbError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| DbError::Unavailable {
        path: path.display().to_string(),
        reason: format!("the SQLite call did not finish: {e}"),
    })?
}

/// Opens `path` read-write (creating it if `create`) with the settings of the module's
/// invariants. Blocking.
fn open_blocking(path: &Path, create: bool) -> Result<Connection, DbError> {
    let at = path.display().to_string();
    let fail = |reason: String| DbError::Open { path: at.clone(), reason };
    if !create && !path.exists() {
        return Err(fail(
            "the file does not exist (imcrypt archive creates it; is --db or \
             IMCRYPT_ARCHIVE_DB the archive's path?)"
                .into(),
        ));
    }
    if path.is_dir() {
        return Err(fail("it is a directory, not a database file".into()));
    }
    // No SQLITE_OPEN_URI: the path is a file name, never a `file:` URI with options.
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn =
        Connection::open_with_flags(path, flags).map_err(|e| match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::CannotOpen) if create => {
                fail(format!("{e} (does its directory exist, and may this user write there?)"))
            }
            _ => fail(e.to_string()),
        })?;
    let setup = || -> rusqlite::Result<String> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        Ok(mode)
    };
    let mode = setup().map_err(|e| match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase) => fail(format!("not an SQLite database: {e}")),
        _ => sqlite_err(path, e),
    })?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(fail(format!(
            "SQLite cannot use write-ahead logging here (journal_mode stayed {mode:?}); put the \
             file on a local file system"
        )));
    }
    if conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(false) {
        return Err(fail("the file is read-only for this user".into()));
    }
    Ok(conn)
}

impl SqliteDb {
    /// Opens the archive file (see [`open_blocking`]).
    pub(super) async fn open(path: &Path, create: bool) -> Result<Self, DbError> {
        let p = path.to_owned();
        let conn = blocking(path, move || open_blocking(&p, create)).await?;
        Ok(Self { path: path.to_owned(), conn: Arc::new(Mutex::new(conn)) })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on this connection on the blocking pool, mapping its error.
    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, DbError> {
        let (conn, path) = (self.conn.clone(), self.path.clone());
        blocking(&self.path, move || {
            let mut c = conn.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut c).map_err(|e| sqlite_err(&path, e))
        })
        .await
    }

    #[cfg(test)]
    /// The value of a pragma on this connection, e.g. `journal_mode` → `wal`, `synchronous`
    /// → `2` (FULL), `busy_timeout` → `5000`. `name` must be a pragma's name (letters and
    /// underscores).
    async fn pragma(&self, name: &str) -> Result<String, DbError> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphabetic() || c == '_') {
            return Err(DbError::Statement {
                kind: "SQLite",
                reason: format!("{name:?} is not a pragma name"),
            });
        }
        let name = name.to_owned();
        self.call(move |c| {
            c.pragma_query_value(None, &name, |r| {
                Ok(match r.get_ref(0)? {
                    rusqlite::types::ValueRef::Integer(i) => i.to_string(),
                    other => String::from_utf8_lossy(other.as_bytes()?).into_owned(),
                })
            })
        })
        .await
    }

    pub(super) async fn ensure_schema(&self) -> Result<(), DbError> {
        self.call(|c| c.execute_batch(SQLITE_SCHEMA)).await
    }

    /// "SQLite 3.x.y", as the library linked in reports itself.
    pub(super) async fn version(&self) -> Result<String, DbError> {
        let v: String =
            self.call(|c| c.query_row("SELECT sqlite_version()", [], |r| r.get(0))).await?;
        Ok(format!("SQLite {v}"))
    }

    /// Runs `sql` once with each parameter row, all in one immediate transaction; returns how
    /// many rows each run changed. On any error nothing is changed.
    pub(super) async fn update_each(
        &self,
        sql: String,
        rows: Vec<Vec<Param>>,
    ) -> Result<Vec<u64>, DbError> {
        self.call(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut changed = Vec::with_capacity(rows.len());
            {
                let mut st = tx.prepare(&sql)?;
                for params in &rows {
                    changed.push(st.execute(rusqlite::params_from_iter(params.iter()))? as u64);
                }
            }
            tx.commit()?;
            Ok(changed)
        })
        .await
    }

    /// The rows of an aggregate query whose columns are all integers (or NULL).
    pub(super) async fn integers(&self, sql: String) -> Result<Vec<Vec<Option<i64>>>, DbError> {
        self.call(move |c| {
            let mut st = c.prepare(&sql)?;
            let n = st.column_count();
            let rows = st.query_map([], |r| (0..n).map(|i| r.get(i)).collect())?;
            rows.collect()
        })
        .await
    }

    /// Runs each INSERT … RETURNING with its parameters in one immediate transaction; returns
    /// the (message_id, recipient_key) of every row written. On any error nothing is written.
    pub(super) async fn insert(
        &self,
        statements: Vec<(String, Vec<Param>)>,
    ) -> Result<Vec<(String, Vec<u8>)>, DbError> {
        self.call(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut written = Vec::new();
            for (sql, params) in &statements {
                let mut st = tx.prepare(sql)?;
                let mut rows = st.query(rusqlite::params_from_iter(params.iter()))?;
                while let Some(r) = rows.next()? {
                    written.push((r.get(0)?, r.get(1)?));
                }
            }
            tx.commit()?;
            Ok(written)
        })
        .await
    }

    /// Runs the viewer's SELECT (columns in `StoredRow` order) in a blocking task that steps
    /// the statement and hands over `batch` rows at a time through a channel of one: the task
    /// waits while the reader is behind, so at most three batches exist at once (one being
    /// filled, one in the channel, one being shown). The task holds this connection until the
    /// last row is read or the receiver is dropped; an error ends the stream after it.
    pub(super) fn select_batches(
        &self,
        sql: String,
        params: Vec<Param>,
        batch: usize,
    ) -> tokio::sync::mpsc::Receiver<Result<Vec<StoredRow>, DbError>> {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let (conn, path) = (self.conn.clone(), self.path.clone());
        tokio::task::spawn_blocking(move || {
            let c = conn.lock().unwrap_or_else(PoisonError::into_inner);
            let step = |send: &mut dyn FnMut(Vec<StoredRow>) -> bool| -> rusqlite::Result<()> {
                let mut st = c.prepare(&sql)?;
                let mut rows = st.query(rusqlite::params_from_iter(params.iter()))?;
                let mut buf = Vec::with_capacity(batch);
                while let Some(r) = rows.next()? {
                    buf.push(stored_row(r)?);
                    if buf.len() == batch
                        && !send(std::mem::replace(&mut buf, Vec::with_capacity(batch)))
                    {
                        return Ok(());
                    }
                }
                if !buf.is_empty() {
                    send(buf);
                }
                Ok(())
            };
            let mut send = |b: Vec<StoredRow>| tx.blocking_send(Ok(b)).is_ok();
            if let Err(e) = step(&mut send) {
                let _ = tx.blocking_send(Err(sqlite_err(&path, e)));
            }
        });
        rx
    }
}

/// One row of the viewer's SELECT (columns in `StoredRow` order).
fn stored_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredRow> {
    Ok(StoredRow {
        id: r.get(0)?,
        message_id: r.get(1)?,
        recipient_key: r.get(2)?,
        ts_ms: r.get(3)?,
        direction: r.get(4)?,
        encrypted: r.get(5)?,
        from_idx: r.get(6)?,
        to_idx: r.get(7)?,
        room_idx: r.get(8)?,
        from_addr: r.get(9)?,
        to_addr: r.get(10)?,
        room: r.get(11)?,
        key_version: r.get(12)?,
        payload: r.get(13)?,
    })
}

/// The eligibility probe of an SQLite URL (see `db::probe`). Never creates the file.
pub(super) async fn probe(path: &Path) -> ProbeResult {
    let p = path.to_owned();
    match blocking(path, move || probe_blocking(&p)).await {
        Ok(version) => ProbeResult::Reachable { kind: ComplianceDb::Sqlite, version },
        Err(e) => ProbeResult::Unreachable { reason: e.to_string() },
    }
}

fn probe_blocking(path: &Path) -> Result<String, DbError> {
    let at = path.display().to_string();
    let fail = |reason: String| DbError::Open { path: at.clone(), reason };
    match std::fs::metadata(path) {
        Ok(_) => {
            let conn = open_probe(path)?;
            // Reading the schema reads the file's header: a file that is not a database fails.
            let v = conn
                .query_row("SELECT sqlite_version() FROM pragma_schema_version", [], |r| {
                    r.get::<_, String>(0)
                })
                .map_err(|e| fail(e.to_string()))?;
            Ok(format!("SQLite {v}"))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            if !dir.is_dir() {
                return Err(fail(format!(
                    "the file does not exist, and its directory {} does not exist either",
                    dir.display()
                )));
            }
            // A file that vanishes at once (unlinked on drop) shows the directory is writable.
            tempfile::tempfile_in(dir).map_err(|e| {
                fail(format!(
                    "the file does not exist, and the archiver could not create it: directory \
                     {} is not writable ({e})",
                    dir.display()
                ))
            })?;
            Ok(format!("SQLite {}", rusqlite::version()))
        }
        Err(e) => Err(fail(e.to_string())),
    }
}

/// Opens an existing file read-write, without changing its settings (the probe's open).
fn open_probe(path: &Path) -> Result<Connection, DbError> {
    let at = path.display().to_string();
    let fail = |reason: String| DbError::Open { path: at.clone(), reason };
    if path.is_dir() {
        return Err(fail("it is a directory, not a database file".into()));
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| fail(e.to_string()))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| fail(e.to_string()))?;
    if conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(false) {
        return Err(fail("the file is read-only for this user".into()));
    }
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::{Db, DbUrl};

    fn row(id: &str, key: u8, payload: Option<Vec<u8>>) -> Vec<Param> {
        vec![
            Param::Text(Some(id.into())),
            Param::Bytes(Some(vec![key; 32])),
            Param::I64(1),
            Param::Text(Some("inbound".into())),
            Param::Bool(false),
            Param::Bytes(None),
            Param::Bytes(None),
            Param::Bytes(None),
            Param::Text(Some("a@x".into())),
            Param::Text(Some("b@x".into())),
            Param::Text(None),
            Param::I32(None),
            Param::Bytes(payload),
        ]
    }

    async fn count(db: &mut Db) -> usize {
        db.select(&Default::default()).await.unwrap().len()
    }

    #[tokio::test]
    async fn a_batch_is_stored_whole_or_not_at_all_and_duplicates_once() {
        let dir = tempfile::tempdir().unwrap();
        let url = DbUrl::sqlite(dir.path().join("a.db"));
        let mut db = Db::connect_or_create(&url).await.unwrap();
        db.ensure_schema().await.unwrap();
        // More rows than one statement carries, the last one bad (NULL payload): nothing.
        let n = db.max_rows_per_insert() + 5;
        let mut rows: Vec<_> = (0..n).map(|i| row(&format!("m{i}"), 1, Some(vec![1]))).collect();
        rows.push(row("bad", 1, None));
        let e = db.insert(&rows).await.unwrap_err();
        assert!(matches!(e, DbError::Statement { .. }), "{e:?}");
        assert!(e.to_string().contains("NOT NULL") && e.to_string().contains("a.db"), "{e}");
        assert_eq!(count(&mut db).await, 0, "the failed batch left nothing behind");
        rows.pop();
        let w = db.insert(&rows).await.unwrap();
        assert_eq!(w.iter().filter(|x| **x).count(), n);
        // Again, with one new row and a row twice in the same batch: only the new one.
        rows.push(row("new", 2, Some(vec![2])));
        rows.push(row("new", 2, Some(vec![3])));
        let w = db.insert(&rows).await.unwrap();
        assert_eq!(w.iter().filter(|x| **x).count(), 1);
        assert!(w[n] && !w[n + 1], "the first of two equal rows is the one written");
        assert_eq!(count(&mut db).await, n + 1);
    }

    #[tokio::test]
    async fn the_viewers_query_comes_in_batches_of_at_most_1000_rows_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let url = DbUrl::sqlite(dir.path().join("a.db"));
        let mut db = Db::connect_or_create(&url).await.unwrap();
        db.ensure_schema().await.unwrap();
        let rows: Vec<_> = (0..2500).map(|i| row(&format!("m{i}"), 1, Some(vec![1]))).collect();
        db.insert(&rows).await.unwrap();
        let mut batches = db.select_batches(&Default::default()).await.unwrap();
        let mut sizes = Vec::new();
        let mut last_id = 0;
        while let Some(b) = batches.next_batch().await.unwrap() {
            assert!(b.iter().all(|r| r.id > last_id), "oldest first, each row once");
            last_id = b.last().unwrap().id;
            sizes.push(b.len());
        }
        assert_eq!(sizes, [1000, 1000, 500]);
    }

    #[tokio::test]
    async fn every_connection_runs_with_wal_full_sync_and_a_busy_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let url = DbUrl::sqlite(dir.path().join("a.db"));
        let Db::Sqlite(s) = Db::connect_or_create(&url).await.unwrap() else { unreachable!() };
        assert_eq!(s.pragma("journal_mode").await.unwrap(), "wal");
        assert_eq!(s.pragma("synchronous").await.unwrap(), "2", "2 is FULL");
        assert_eq!(s.pragma("busy_timeout").await.unwrap(), "5000");
        assert!(s.pragma("x; DROP TABLE t").await.is_err());
        // The viewer's open (no create) gets the same settings on the existing file.
        let Db::Sqlite(v) = Db::connect(&url).await.unwrap() else { unreachable!() };
        assert_eq!(v.pragma("synchronous").await.unwrap(), "2");
    }

    #[tokio::test]
    async fn the_viewer_never_creates_a_file_and_errors_name_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("typo.db");
        let e = Db::connect(&DbUrl::sqlite(&path)).await.unwrap_err().to_string();
        assert!(e.contains("typo.db") && e.contains("does not exist"), "{e}");
        assert!(!path.exists());
        let e = Db::connect_or_create(&DbUrl::sqlite(dir.path().join("no/such/dir/a.db")))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("no/such/dir/a.db"), "{e}");
        std::fs::write(&path, "not a database, just text that is long enough to be a header")
            .unwrap();
        let e = Db::connect(&DbUrl::sqlite(&path)).await.unwrap_err();
        assert!(matches!(e, DbError::Open { .. }), "{e:?}");
        assert!(e.to_string().contains("typo.db"), "{e}");
    }

    #[tokio::test]
    async fn a_lock_held_past_the_busy_timeout_is_retryable_not_a_refusal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let url = DbUrl::sqlite(&path);
        let mut db = Db::connect_or_create(&url).await.unwrap();
        db.ensure_schema().await.unwrap();
        // Another process's writer holds the lock (here: another connection, no timeout).
        let other = Connection::open(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let Db::Sqlite(s) = &db else { unreachable!() };
        let short = s.conn.clone();
        tokio::task::spawn_blocking(move || {
            short.lock().unwrap().busy_timeout(Duration::from_millis(50)).unwrap()
        })
        .await
        .unwrap();
        let e = db.insert(&[row("m", 1, Some(vec![1]))]).await.unwrap_err();
        assert!(matches!(e, DbError::Unavailable { .. }) && e.is_connection(), "{e:?}");
        assert!(e.to_string().contains("a.db") && e.to_string().contains("locked"), "{e}");
        other.execute_batch("ROLLBACK").unwrap();
        assert_eq!(db.insert(&[row("m", 1, Some(vec![1]))]).await.unwrap(), [true]);
    }

    #[tokio::test]
    async fn the_probe_says_where_and_why_and_never_creates_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let reach = |r: ProbeResult| match r {
            ProbeResult::Reachable { kind, version } => {
                assert_eq!(kind, ComplianceDb::Sqlite);
                assert!(version.starts_with("SQLite 3."), "{version}");
            }
            other => panic!("{other:?}"),
        };
        let unreachable = |r: ProbeResult| match r {
            ProbeResult::Unreachable { reason } => reason,
            other => panic!("{other:?}"),
        };
        // Not there yet, but its directory is writable: the archiver will create it.
        let fresh = dir.path().join("fresh.db");
        reach(crate::archive::probe(&DbUrl::sqlite(&fresh)).await);
        assert!(!fresh.exists(), "the probe created nothing");
        // An archive file.
        let good = dir.path().join("good.db");
        let mut db = Db::connect_or_create(&DbUrl::sqlite(&good)).await.unwrap();
        db.ensure_schema().await.unwrap();
        reach(crate::archive::probe(&DbUrl::sqlite(&good)).await);
        // A directory that does not exist; a directory; a file that is no database.
        let gone = dir.path().join("missing/dir/a.db");
        let r = unreachable(crate::archive::probe(&DbUrl::sqlite(&gone)).await);
        assert!(r.contains("missing/dir/a.db") && r.contains("does not exist"), "{r}");
        let r = unreachable(crate::archive::probe(&DbUrl::sqlite(dir.path())).await);
        assert!(r.contains("directory"), "{r}");
        let text = dir.path().join("text.db");
        std::fs::write(&text, "x".repeat(200)).unwrap();
        let r = unreachable(crate::archive::probe(&DbUrl::sqlite(&text)).await);
        assert!(r.contains("text.db") && r.contains("not a database"), "{r}");
    }
}
