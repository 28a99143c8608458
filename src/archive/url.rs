//! Where the archive lives: a database URL (`postgres://…`, `sqlserver://…`, `sqlite:PATH`)
//! parsed into a server login or a file; and the one redactor that hides URL passwords in
//! whatever is shown (a `DbUrl`'s `Display` and `Debug`, database errors, config errors).
//!
//! Invariants: a password never appears in what this module shows: a `DbUrl` prints it as
//! `***`, and [`redact`] does the same to every URL in any text; `kind` is
//! [`ComplianceDb::Sqlite`] exactly when the target is a file.

use std::path::{Path, PathBuf};

use super::db::DbError;
use crate::cluster::ComplianceDb;

/// The archive `imcrypt archive` and `imcrypt view` use when no `--db` or
/// `IMCRYPT_ARCHIVE_DB` is given: an SQLite file in the current directory.
pub(crate) const DEFAULT_DB_URL: &str = "sqlite:imcrypt-archive.db";

/// Where the archive lives, parsed from a URL: `postgres://…`, `sqlserver://…`, or
/// `sqlite:PATH` / `sqlite://PATH` (see [`DbUrl::sqlite`]).
///
/// Invariant: `kind` is [`ComplianceDb::Sqlite`] exactly when the target is a file.
#[derive(Clone, PartialEq, Eq)]
pub struct DbUrl {
    pub kind: ComplianceDb,
    raw: String,
    pub(super) target: Target,
}

#[derive(Clone, PartialEq, Eq)]
pub(super) enum Target {
    Server(Server),
    File(PathBuf),
}

/// A database server and the login to it.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct Server {
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) user: String,
    pub(super) password: String,
    pub(super) database: String,
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

/// `text` with the password of every URL in it replaced by `***`: in `scheme://user:pw@host`,
/// what lies between the first `:` after `://` and the last `@` before the end of the line or
/// the next `://`, whatever characters the password holds (an `@`, a space, a quote). A URL
/// without a password is left as it is. Works on one URL as on a message that quotes several
/// lines; where it cannot tell where a URL ends, it hides more, never less.
pub(crate) fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        // This URL ends at the end of the line or where the next one starts.
        let end = [tail.find('\n'), tail.find("://")].into_iter().flatten().min();
        let line = &tail[..end.unwrap_or(tail.len())];
        match line.rfind('@').map(|at| (at, line[..at].find(':'))) {
            Some((at, Some(colon))) => {
                out.push_str(&tail[..colon + 1]);
                out.push_str("***");
                rest = &tail[at..];
            }
            _ => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

impl DbUrl {
    /// The SQLite file at `path` (relative to the current directory, or absolute), as
    /// `sqlite:PATH` would give.
    pub(crate) fn sqlite(path: impl Into<PathBuf>) -> Self {
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
    fn redacted(&self) -> String {
        match self.target {
            Target::File(_) => self.raw.clone(),
            Target::Server(_) => redact(&self.raw),
        }
    }

    pub(super) fn kind_name(&self) -> &'static str {
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
    fn redact_hides_every_password_whatever_it_holds() {
        assert_eq!(redact("postgres://arch:s@cr et@h:5432/im"), "postgres://arch:***@h:5432/im");
        assert_eq!(redact("postgres://arch@h/im"), "postgres://arch@h/im");
        assert_eq!(redact("sqlite:/x/y.db"), "sqlite:/x/y.db");
        let quoted = "line 3\n  | db = \"postgres://u:top secret\\\"x@h:54x2/im\"\n  |    ^\n\
                      bad port in postgres://u:***@h:54x2/im";
        let shown = redact(quoted);
        assert!(!shown.contains("top") && !shown.contains("secret"), "{shown}");
        assert!(shown.ends_with("postgres://u:***@h:54x2/im"), "{shown}");
        assert_eq!(redact(&shown), shown, "redacting twice changes nothing");
        assert_eq!(
            redact("\"mysql://u:pw@h/x\" is not understood: use postgres://user@host/db"),
            "\"mysql://u:***@h/x\" is not understood: use postgres://user@host/db",
            "the text after a URL, and the next URL, are kept"
        );
    }
}
