//! SQL Server (tiberius, TDS 7.3, no TLS backend built in yet: see docs/archive.md): connecting,
//! the schema, and the statements `Db` runs there. Errors are sorted into connection problems,
//! which the archiver retries after reconnecting, and refusals, which it does not.
//!
//! Because this build cannot speak TLS to SQL Server, a URL whose `sslmode` asks for TLS
//! (`require`, `verify-ca`, `verify-full`: also the default for a host that is not loopback)
//! or says `trust_server_certificate=true` is refused with that reason, never served in clear.
//!
//! Invariants: a batch of several INSERTs runs inside one transaction with XACT_ABORT on and
//! is rolled back on any error, so it is stored whole or not at all; values always travel as
//! bound parameters, never spliced into SQL text.

use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

use super::db::{DbError, Param, StoredRow, bad};
use super::schema::SQLSERVER_SCHEMA;
use super::url::Server;

pub(crate) type Client = tiberius::Client<Compat<TcpStream>>;

/// Connects to `srv` and logs in. The error is the reason.
pub(super) async fn connect(srv: &Server) -> Result<Client, String> {
    let mut c = tiberius::Config::new();
    c.host(&srv.host);
    c.port(srv.port);
    let password = srv.password.resolve()?;
    c.authentication(tiberius::AuthMethod::sql_server(&srv.user, password.as_str()));
    if !srv.database.is_empty() {
        c.database(&srv.database);
    }
    c.encryption(encryption(srv)?);
    let tcp = TcpStream::connect((srv.host.as_str(), srv.port)).await.map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    tiberius::Client::connect(c, tcp.compat_write()).await.map_err(|e| e.to_string())
}

/// What the URL's TLS settings allow without a TLS backend: plain TDS for `disable` and
/// `prefer`, a refusal naming the setting for anything that needs TLS.
fn encryption(srv: &Server) -> Result<tiberius::EncryptionLevel, String> {
    use super::tls::SslMode;
    let wants_tls = match srv.tls.mode {
        SslMode::Disable | SslMode::Prefer => srv.trust_server_certificate,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => true,
    };
    if wants_tls {
        return Err(format!(
            "TLS to SQL Server is not built into this imcrypt (docs/archive.md), and the URL \
             asks for it (sslmode {:?}{}); over a trusted link only, add sslmode=disable",
            srv.tls.mode,
            if srv.trust_server_certificate { ", trust_server_certificate" } else { "" }
        ));
    }
    Ok(tiberius::EncryptionLevel::NotSupported)
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

pub(super) async fn select(
    c: &mut Client,
    sql: String,
    params: &[&Param],
) -> Result<Vec<StoredRow>, DbError> {
    let mut q = tiberius::Query::new(sql);
    bind_all(&mut q, params);
    let rows = q.query(c).await.map_err(err)?.into_first_result().await.map_err(err)?;
    rows.iter().map(row).collect()
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

    fn encryption_of(url: &str) -> Result<tiberius::EncryptionLevel, String> {
        match url.parse::<DbUrl>().unwrap().target {
            Target::Server(s) => encryption(&s),
            Target::File(_) => unreachable!(),
        }
    }

    #[test]
    fn a_url_that_asks_for_tls_is_refused_rather_than_served_in_clear() {
        let plain =
            |u: &str| matches!(encryption_of(u), Ok(tiberius::EncryptionLevel::NotSupported));
        assert!(plain("sqlserver://sa:pw@127.0.0.1:1433/master"), "loopback: prefer");
        assert!(plain("sqlserver://sa:pw@db.example/im?sslmode=disable"));
        for url in [
            "sqlserver://sa:pw@db.example/im",
            "sqlserver://sa:pw@127.0.0.1/im?sslmode=require",
            "sqlserver://sa:pw@127.0.0.1/im?trust_server_certificate=true",
        ] {
            let e = encryption_of(url).unwrap_err();
            assert!(
                e.contains("TLS to SQL Server is not built") && e.contains("sslmode=disable"),
                "{url}: {e}"
            );
        }
    }
}
