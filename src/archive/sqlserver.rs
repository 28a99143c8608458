//! SQL Server (tiberius 0.13, TDS 7.3, TLS through rustls on ring): connecting, the schema,
//! and the statements `Db` runs there. Errors are sorted into connection problems, which the
//! archiver retries after reconnecting, and refusals, which it does not.
//!
//! TLS (docs/archive.md, "SQL Server over TLS"): [`tds_settings`] turns the URL's `sslmode`,
//! `sslrootcert` and `trust_server_certificate` into what tiberius is told, without touching
//! the network, and [`connect`] applies it. Invariants:
//! - a URL that asks for TLS (`require`, `verify-full`: also the default for a host that is
//!   not loopback) never logs in over plain TDS: tiberius gets `Required` and fails when the
//!   server declines;
//! - whenever TLS runs, the server's certificate is checked, chain (the system's CAs, plus
//!   `sslrootcert=FILE`) and name (the URL's host), unless the URL says
//!   `trust_server_certificate=true`; then every connection logs a warning naming the host;
//! - what tiberius cannot do is refused by name rather than done differently: `verify-ca`
//!   (tiberius always checks the name), and combinations that contradict themselves;
//! - the handshake runs on ring, as every other TLS of imcrypt: tiberius takes the process's
//!   default rustls provider, which [`connect`] installs (`tls::ring_by_default`) before the
//!   first handshake.
//!
//! Invariants of the statements: a batch of several INSERTs runs inside one transaction with
//! XACT_ABORT on and is rolled back on any error, so it is stored whole or not at all; values
//! always travel as bound parameters, never spliced into SQL text.

use std::path::PathBuf;
use std::time::Duration;

use tiberius::EncryptionLevel;
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

use super::db::{DbError, Param, StoredRow, TIMEOUT, bad};
use super::schema::SQLSERVER_SCHEMA;
use super::tls::{RootCert, SslMode};
use super::url::Server;

pub(crate) type Client = tiberius::Client<Compat<TcpStream>>;

/// How long tiberius waits for one answer of the server to a statement (it is re-armed at
/// each answer, so a long result that keeps coming is not cut). PostgreSQL's side sets no
/// statement timeout; this is tiberius's own default (ADO.NET's `Command Timeout`), set here
/// so that it does not change with a tiberius release. A statement that times out is a lost
/// connection ([`err`]): the archiver reconnects and retries.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// What tiberius is told for one URL: built by [`tds_settings`], applied by [`connect`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct TdsSettings {
    /// `NotSupported` (no TLS), `On` (TLS when the server offers it) or `Required`.
    encryption: EncryptionLevel,
    /// `sslmode=prefer`: when the server offers no TLS, or the TLS handshake fails, log in
    /// again in plain text (libpq's `prefer`).
    plain_fallback: bool,
    trust: Trust,
    /// The TDS prelogin, TLS handshake and login together; as PostgreSQL's connect timeout.
    handshake_timeout: Duration,
    command_timeout: Duration,
}

/// Which server certificate tiberius accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Trust {
    /// No TLS (`disable`): no certificate is asked for.
    NoTls,
    /// A certificate that chains to the system's CAs, or to `extra_ca` (tiberius adds
    /// `trust_cert_ca` to the system's CAs, it cannot trust that file alone), and that names
    /// `name` (`hostname_in_certificate`: the URL's host, a DNS name or an IP address).
    Verified { extra_ca: Option<PathBuf>, name: String },
    /// Any certificate (`trust_server_certificate=true`, tiberius's `trust_cert`): encrypted,
    /// but the server is not authenticated.
    AnyCertificate,
}

/// The tiberius settings the URL's TLS parameters mean, or why they cannot be honoured (the
/// reason names the parameter). Pure: reads no file and opens no connection.
fn tds_settings(srv: &Server) -> Result<TdsSettings, String> {
    let trust_all = srv.trust_server_certificate;
    let root_file = match &srv.tls.root_cert {
        Some(RootCert::File(path)) => Some(path.clone()),
        Some(RootCert::System) | None => None,
    };
    if trust_all && srv.tls.root_cert.is_some() {
        return Err("trust_server_certificate=true checks no certificate, so sslrootcert would \
                    mean nothing: give one of them"
            .into());
    }
    let (encryption, plain_fallback) = match srv.tls.mode {
        SslMode::Disable if trust_all => {
            return Err("trust_server_certificate=true is about TLS and sslmode=disable says no \
                        TLS: give one of them"
                .into());
        }
        SslMode::Disable => (EncryptionLevel::NotSupported, false),
        SslMode::Prefer => (EncryptionLevel::On, true),
        SslMode::Require => (EncryptionLevel::Required, false),
        SslMode::VerifyCa => {
            return Err("sslmode=verify-ca (the chain without the host name) cannot be done \
                        on SQL Server: tiberius always checks the name too. Use sslmode=\
                        verify-full, with the name the server's certificate carries as the \
                        URL's host"
                .into());
        }
        SslMode::VerifyFull if trust_all => {
            return Err("sslmode=verify-full checks the server's certificate and \
                        trust_server_certificate=true says not to: give one of them"
                .into());
        }
        SslMode::VerifyFull => (EncryptionLevel::Required, false),
    };
    let trust = if encryption == EncryptionLevel::NotSupported {
        Trust::NoTls
    } else if trust_all {
        Trust::AnyCertificate
    } else {
        Trust::Verified { extra_ca: root_file, name: srv.host.clone() }
    };
    Ok(TdsSettings {
        encryption,
        plain_fallback,
        trust,
        handshake_timeout: TIMEOUT,
        command_timeout: COMMAND_TIMEOUT,
    })
}

/// Connects to `srv` and logs in, with the TLS its URL asks for. The one place where imcrypt
/// opens a SQL Server connection (the archiver, the viewer and the daemon's probe all come
/// here through `Db::connect`). The error is the reason.
pub(super) async fn connect(srv: &Server) -> Result<Client, String> {
    let settings = tds_settings(srv)?;
    if let Trust::Verified { extra_ca: Some(path), .. } = &settings.trust {
        // Read now, for an error that names the parameter (tiberius reads it again).
        super::tls::load_roots(path)?;
    }
    if settings.trust == Trust::AnyCertificate {
        tracing::warn!(
            host = %srv.host,
            "SQL Server at {}: trust_server_certificate=true, the server's certificate is not \
             verified (the connection is encrypted, but anyone in the path can pose as the \
             server and read the login)",
            srv.host
        );
    }
    let password = srv.password.resolve()?;
    super::tls::ring_by_default();
    match login(srv, &password, &settings, settings.encryption).await {
        Err(e) if settings.plain_fallback && tls_failed(&e) => {
            tracing::warn!(
                host = %srv.host,
                "SQL Server at {}: no TLS ({}); sslmode=prefer goes on in plain text",
                srv.host,
                reason(&e)
            );
            login(srv, &password, &settings, EncryptionLevel::NotSupported)
                .await
                .map_err(|e| reason(&e))
        }
        r => r.map_err(|e| reason(&e)),
    }
}

/// One TCP connection and login with `settings`, at `encryption`.
async fn login(
    srv: &Server,
    password: &str,
    settings: &TdsSettings,
    encryption: EncryptionLevel,
) -> Result<Client, tiberius::error::Error> {
    let mut c = tiberius::Config::new();
    c.host(&srv.host);
    c.port(srv.port);
    c.authentication(tiberius::AuthMethod::sql_server(&srv.user, password));
    if !srv.database.is_empty() {
        c.database(&srv.database);
    }
    c.encryption(encryption);
    match &settings.trust {
        Trust::NoTls => {}
        Trust::Verified { extra_ca, name } => {
            if let Some(path) = extra_ca {
                c.trust_cert_ca(path.display());
            }
            c.hostname_in_certificate(name);
        }
        Trust::AnyCertificate => c.trust_cert(),
    }
    c.handshake_timeout(Some(settings.handshake_timeout));
    c.command_timeout(Some(settings.command_timeout));
    let tcp = TcpStream::connect((srv.host.as_str(), srv.port)).await?;
    let _ = tcp.set_nodelay(true);
    tiberius::Client::connect(c, tcp.compat_write()).await
}

/// Whether a login failed for want of TLS: the server offers none (tiberius: "Server does not
/// allow the requested encryption level"), or the TLS handshake failed (a certificate refused).
fn tls_failed(e: &tiberius::error::Error) -> bool {
    match e {
        tiberius::error::Error::Tls(_) => true,
        tiberius::error::Error::Protocol(m) => m.contains("requested encryption level"),
        _ => false,
    }
}

/// A login error in the operator's terms: tiberius's advice on a refused certificate names
/// its own API (`Config::trust_cert_ca`…), so it is replaced by the URL's parameters.
fn reason(e: &tiberius::error::Error) -> String {
    match e {
        tiberius::error::Error::Tls(m) => {
            let m = m.split(" To connect anyway").next().unwrap_or(m).trim_end_matches('.');
            format!(
                "TLS: {m} (give the CA of the server's certificate as sslrootcert=FILE, with \
                 the name that certificate carries as the URL's host; or, knowing that the \
                 server is then not authenticated, trust_server_certificate=true)"
            )
        }
        tiberius::error::Error::Protocol(m) if m.contains("requested encryption level") => {
            format!("{m} (the server offers no TLS and the URL's sslmode requires it)")
        }
        other => other.to_string(),
    }
}

pub(super) async fn ensure_schema(c: &mut Client) -> Result<(), DbError> {
    exec(c, SQLSERVER_SCHEMA).await
}

pub(super) async fn version(c: &mut Client) -> Result<String, DbError> {
    let row = c
        .simple_query("SELECT @@VERSION")
        .await
        .map_err(err)?
        .into_row()
        .await
        .map_err(err)?
        .ok_or_else(|| DbError::BadRow("SELECT @@VERSION returned nothing".into()))?;
    Ok(row.get::<&str, _>(0).unwrap_or_default().to_owned())
}

/// The viewer's query as it arrives: tiberius decodes rows from the server's TDS packets as
/// they are polled, so nothing beyond the packet being read is buffered. It borrows the
/// client until dropped; dropping it before the end leaves the rest of the answer for
/// tiberius to drain before the connection's next statement (the viewer has none).
pub(super) type RowStream<'a> =
    futures_util::stream::BoxStream<'a, tiberius::Result<tiberius::Row>>;

/// Sends the viewer's query; its rows are then read with [`next_batch`].
pub(super) async fn row_stream<'a>(
    c: &'a mut Client,
    sql: String,
    params: &[&Param],
) -> Result<RowStream<'a>, DbError> {
    let mut q = tiberius::Query::new(sql);
    bind_all(&mut q, params);
    Ok(q.query(c).await.map_err(err)?.into_row_stream())
}

/// The next `max` rows of `s` (fewer at its end), or `None` when it is done.
pub(super) async fn next_batch(
    s: &mut RowStream<'_>,
    max: usize,
) -> Result<Option<Vec<StoredRow>>, DbError> {
    use futures_util::TryStreamExt as _;
    let mut out = Vec::with_capacity(max);
    while out.len() < max {
        match s.try_next().await.map_err(err)? {
            Some(r) => out.push(row(&r)?),
            None => break,
        }
    }
    Ok(Some(out).filter(|b| !b.is_empty()))
}

/// As for PostgreSQL: shutdown in progress (6005), deadlock victim (1205) and the server's
/// connection-level errors are retried after reconnecting; other server errors are final.
fn err(e: tiberius::error::Error) -> DbError {
    match e {
        tiberius::error::Error::Server(t) if ![6005, 1205, 233, 10054].contains(&t.code()) => {
            DbError::Statement { kind: "SQL Server", reason: t.to_string() }
        }
        other => DbError::Lost { kind: "SQL Server", reason: other.to_string() },
    }
}

fn row(r: &tiberius::Row) -> Result<StoredRow, DbError> {
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

/// Runs each INSERT … OUTPUT; several inside one transaction, rolled back on any error.
pub(super) async fn insert(
    c: &mut Client,
    chunks: &[(String, &[Vec<Param>])],
) -> Result<Vec<(String, Vec<u8>)>, DbError> {
    async fn run(
        c: &mut Client,
        chunks: &[(String, &[Vec<Param>])],
    ) -> Result<Vec<(String, Vec<u8>)>, DbError> {
        let mut written = Vec::new();
        for (sql, rows) in chunks {
            let mut q = tiberius::Query::new(sql.clone());
            let flat: Vec<&Param> = rows.iter().flatten().collect();
            bind_all(&mut q, &flat);
            let out =
                q.query(&mut *c).await.map_err(err)?.into_first_result().await.map_err(err)?;
            for r in &out {
                let m = r.try_get::<&str, _>(0).map_err(bad)?.unwrap_or_default().to_owned();
                let k = r.try_get::<&[u8], _>(1).map_err(bad)?.unwrap_or_default().to_vec();
                written.push((m, k));
            }
        }
        Ok(written)
    }
    if chunks.len() == 1 {
        return run(c, chunks).await;
    }
    in_transaction(c, async |c| run(c, chunks).await).await
}

/// Runs `work` inside `BEGIN TRANSACTION … COMMIT`; rolls back if it fails.
async fn in_transaction<T>(
    c: &mut Client,
    work: impl AsyncFnOnce(&mut Client) -> Result<T, DbError>,
) -> Result<T, DbError> {
    exec(c, "SET XACT_ABORT ON; BEGIN TRANSACTION").await?;
    match work(c).await {
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

/// Runs `sql` once with each parameter row, all in one transaction; returns how many rows
/// each run changed. On any error nothing changes.
pub(super) async fn update_each(
    c: &mut Client,
    sql: &str,
    rows: &[Vec<Param>],
) -> Result<Vec<u64>, DbError> {
    async fn run(c: &mut Client, sql: &str, rows: &[Vec<Param>]) -> Result<Vec<u64>, DbError> {
        let mut changed = Vec::with_capacity(rows.len());
        for r in rows {
            let mut q = tiberius::Query::new(sql.to_owned());
            bind_all(&mut q, &r.iter().collect::<Vec<_>>());
            changed.push(q.execute(&mut *c).await.map_err(err)?.total());
        }
        Ok(changed)
    }
    in_transaction(c, async |c| run(c, sql, rows).await).await
}

/// The rows of an aggregate query whose columns are all `BIGINT` (or NULL).
pub(super) async fn integers(c: &mut Client, sql: &str) -> Result<Vec<Vec<Option<i64>>>, DbError> {
    let rows = c.simple_query(sql).await.map_err(err)?.into_first_result().await.map_err(err)?;
    rows.iter()
        .map(|r| (0..r.len()).map(|i| r.try_get::<i64, _>(i).map_err(bad)).collect())
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

async fn exec(c: &mut Client, sql: &str) -> Result<(), DbError> {
    c.simple_query(sql).await.map_err(err)?.into_results().await.map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::url::{DbUrl, Target};
    use EncryptionLevel::{NotSupported, On, Required};

    fn settings_of(url: &str) -> Result<TdsSettings, String> {
        match url.parse::<DbUrl>().map_err(|e| e.to_string())?.target {
            Target::Server(s) => tds_settings(&s),
            Target::File(_) => unreachable!(),
        }
    }

    fn verified(ca: Option<&str>, name: &str) -> Trust {
        Trust::Verified { extra_ca: ca.map(PathBuf::from), name: name.into() }
    }

    #[test]
    fn each_sslmode_becomes_the_tiberius_settings_of_docs_archive_md() {
        let base = "sqlserver://sa:pw@";
        for (url, encryption, fallback, trust) in [
            // The defaults: prefer on loopback, verify-full elsewhere.
            ("127.0.0.1:1433/master", On, true, verified(None, "127.0.0.1")),
            ("db.example.com/im", Required, false, verified(None, "db.example.com")),
            ("[::1]:1433/im", On, true, verified(None, "::1")),
            ("db.example.com/im?sslmode=disable", NotSupported, false, Trust::NoTls),
            ("db/im?sslmode=prefer", On, true, verified(None, "db")),
            ("db/im?sslmode=require", Required, false, verified(None, "db")),
            ("10.0.0.5/im?sslmode=verify-full", Required, false, verified(None, "10.0.0.5")),
            (
                "db/im?sslmode=verify-full&sslrootcert=/etc/imcrypt/db-ca.pem",
                Required,
                false,
                verified(Some("/etc/imcrypt/db-ca.pem"), "db"),
            ),
            // libpq: require with a root verifies the chain; here the chain and the name.
            (
                "db/im?sslmode=require&sslrootcert=/ca.pem",
                Required,
                false,
                verified(Some("/ca.pem"), "db"),
            ),
            ("db/im?sslrootcert=system", Required, false, verified(None, "db")),
            // Trusting any certificate: only when asked, and then TLS is required by default.
            ("db/im?trust_server_certificate=true", Required, false, Trust::AnyCertificate),
            ("127.0.0.1/im?trust_server_certificate=true", Required, false, Trust::AnyCertificate),
            (
                "db/im?sslmode=require&trust_server_certificate=true",
                Required,
                false,
                Trust::AnyCertificate,
            ),
            ("db/im?sslmode=prefer&trust_server_certificate=true", On, true, Trust::AnyCertificate),
            (
                "db/im?sslmode=require&trust_server_certificate=false",
                Required,
                false,
                verified(None, "db"),
            ),
        ] {
            let got = settings_of(&format!("{base}{url}")).unwrap_or_else(|e| panic!("{url}: {e}"));
            let want = TdsSettings {
                encryption,
                plain_fallback: fallback,
                trust,
                handshake_timeout: Duration::from_secs(5),
                command_timeout: Duration::from_secs(30),
            };
            assert_eq!(got, want, "{url}");
        }
    }

    #[test]
    fn what_tiberius_cannot_honour_or_what_contradicts_itself_is_refused_by_name() {
        for (url, says) in [
            (
                "db/im?sslmode=verify-ca&sslrootcert=/ca.pem",
                "sslmode=verify-ca (the chain without the host name) cannot be done on SQL Server",
            ),
            (
                "db/im?sslmode=verify-full&trust_server_certificate=true",
                "sslmode=verify-full checks the server's certificate and trust_server_certificate=true says not to",
            ),
            (
                "db/im?sslmode=disable&trust_server_certificate=true",
                "trust_server_certificate=true is about TLS and sslmode=disable says no TLS",
            ),
            (
                "db/im?sslmode=require&sslrootcert=/ca.pem&trust_server_certificate=true",
                "trust_server_certificate=true checks no certificate, so sslrootcert would mean nothing",
            ),
            (
                "db/im?sslrootcert=system&trust_server_certificate=true",
                "so sslrootcert would mean nothing",
            ),
            // Refused by the URL already, as for PostgreSQL.
            ("db/im?sslmode=verify-ca", "verify-ca needs sslrootcert=FILE"),
            (
                "db/im?trust_server_certificate=yes",
                "trust_server_certificate=yes is not true or false",
            ),
        ] {
            let e = settings_of(&format!("sqlserver://sa:pw@{url}")).unwrap_err();
            assert!(e.contains(says), "{url}: {e}");
        }
    }

    #[tokio::test]
    async fn a_missing_root_file_is_named_before_any_connection() {
        let srv = match "sqlserver://sa:pw@db/im?sslrootcert=/no/such/ca.pem"
            .parse::<DbUrl>()
            .unwrap()
            .target
        {
            Target::Server(s) => s,
            Target::File(_) => unreachable!(),
        };
        let e = connect(&srv).await.err().unwrap();
        assert!(e.starts_with("sslrootcert: ") && e.contains("/no/such/ca.pem"), "{e}");
    }

    #[test]
    fn the_handshake_runs_on_ring_the_process_default_tiberius_takes() {
        super::super::tls::ring_by_default();
        let default = rustls::crypto::CryptoProvider::get_default().expect("a default provider");
        let rng = format!("{:?}", default.secure_random);
        assert_eq!(rng, "Ring", "the process's default rustls provider");
    }
}
