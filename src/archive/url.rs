//! Where the archive lives: a database URL (`postgres://…`, `sqlserver://…`, `sqlite:PATH`)
//! parsed into a server login or a file, with its parameters (`?sslmode=…&sslrootcert=…`,
//! where the password comes from: `password_file=…`, `password_env=…`); and the one redactor
//! that hides URL passwords in whatever is shown (a `DbUrl`'s `Display` and `Debug`, database
//! errors, config errors).
//!
//! Invariants: a password never appears in what this module shows: a `DbUrl` prints it as
//! `***`, and [`redact`] does the same to every URL in any text; `kind` is
//! [`ComplianceDb::Sqlite`] exactly when the target is a file; a parameter this module does
//! not know, or one given twice, is refused by name (a misspelt `sslmode` must not quietly
//! mean "no TLS").

use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::db::DbError;
use super::tls::TlsSettings;
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
    pub(super) password: Password,
    pub(super) database: String,
    /// `sslmode` and `sslrootcert` (PostgreSQL and SQL Server alike).
    pub(super) tls: TlsSettings,
    /// SQL Server's "trust server certificate": TLS without any check of the server's
    /// certificate, only when the URL says `trust_server_certificate=true` (which, without
    /// `sslmode` or `sslrootcert`, also means `sslmode=require`).
    pub(super) trust_server_certificate: bool,
}

/// Where a server password comes from. A password in the URL is shown by `ps` when the URL is
/// an argument; `password_file` and `password_env` keep it out of argv and out of the config
/// file.
#[derive(Clone, PartialEq, Eq)]
pub(super) enum Password {
    /// In the URL itself (possibly empty: no password).
    Inline(Zeroizing<String>),
    /// `password_file=PATH`: the file's content, without a final line break.
    File(PathBuf),
    /// `password_env=NAME`: the value of that environment variable.
    Env(String),
}

impl Password {
    /// The password, read now (so a rotated password file counts from the next connection).
    /// The error names the file or variable, never a password.
    pub(super) fn resolve(&self) -> Result<Zeroizing<String>, String> {
        match self {
            Password::Inline(p) => Ok(p.clone()),
            Password::File(path) => {
                let mut text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                    format!("cannot read the password file {} (password_file): {e}", path.display())
                })?);
                let len = text.trim_end_matches(['\n', '\r']).len();
                text.truncate(len);
                Ok(text)
            }
            Password::Env(name) => std::env::var(name).map(Zeroizing::new).map_err(|_| {
                format!("the environment variable {name} (password_env) is not set or not UTF-8")
            }),
        }
    }
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
        // The query first: its values (a file name) may hold an `@`; a `?` in a password is
        // percent-encoded (`%3F`), as in any URL.
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (auth, hostpart) = rest.rsplit_once('@').unwrap_or(("", rest));
        let (user, password) = auth.split_once(':').unwrap_or((auth, ""));
        let (hostport, database) = hostpart.split_once('/').unwrap_or((hostpart, ""));
        // An IPv6 address is in brackets (`[::1]`, `[::1]:1433`): its colons are not the port's.
        let (host, port) = match hostport.strip_prefix('[').and_then(|h| h.split_once(']')) {
            Some((h, "")) => (h, default_port),
            Some((h, p)) => (h, p.strip_prefix(':').and_then(|p| p.parse().ok()).ok_or_else(bad)?),
            None => match hostport.rsplit_once(':') {
                Some((h, p)) => (h, p.parse().map_err(|_| bad())?),
                None => (hostport, default_port),
            },
        };
        if host.is_empty() {
            return Err(bad());
        }
        let host = host.to_owned();
        let param = |reason: String| DbError::UrlParam { url: redact(s), reason };
        let mut p = Params::parse(query, &kind).map_err(param)?;
        let password = match (p.take("password_file"), p.take("password_env")) {
            (None, None) => Password::Inline(Zeroizing::new(pct_decode(password))),
            _ if !password.is_empty() => {
                return Err(param(
                    "the URL holds a password and names another source of it (password_file \
                     or password_env): give one"
                        .into(),
                ));
            }
            (Some(path), None) => Password::File(PathBuf::from(path)),
            (None, Some(name)) => Password::Env(name),
            (Some(_), Some(_)) => {
                return Err(param("give password_file or password_env, not both".into()));
            }
        };
        let trust_server_certificate = match p.take("trust_server_certificate").as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(v) => {
                return Err(param(format!("trust_server_certificate={v} is not true or false")));
            }
        };
        let (sslmode, sslrootcert) = (p.take("sslmode"), p.take("sslrootcert"));
        // Trusting any certificate is asking for TLS without its check: without an sslmode
        // (and without a root, which it contradicts), `require`, not the host's default.
        let sslmode = match sslmode {
            None if trust_server_certificate && sslrootcert.is_none() => Some("require".into()),
            m => m,
        };
        let tls =
            TlsSettings::new(&host, sslmode.as_deref(), sslrootcert.as_deref()).map_err(param)?;
        Ok(Self {
            kind,
            raw: s.to_owned(),
            target: Target::Server(Server {
                host,
                port,
                user: pct_decode(user),
                password,
                database: pct_decode(database),
                tls,
                trust_server_certificate,
            }),
        })
    }
}

/// The `?name=value&…` parameters of a server URL, percent-decoded, each taken once.
struct Params(Vec<(String, String)>);

impl Params {
    /// The parameters a URL of `kind` may carry.
    fn known(kind: &ComplianceDb) -> &'static [&'static str] {
        match kind {
            ComplianceDb::SqlServer => &[
                "sslmode",
                "sslrootcert",
                "trust_server_certificate",
                "password_file",
                "password_env",
            ],
            _ => &["sslmode", "sslrootcert", "password_file", "password_env"],
        }
    }

    fn parse(query: &str, kind: &ComplianceDb) -> Result<Self, String> {
        let known = Self::known(kind);
        let mut out: Vec<(String, String)> = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let (k, v) = (pct_decode(k), pct_decode(v));
            if !known.contains(&k.as_str()) {
                return Err(format!("unknown parameter {k:?}; known: {}", known.join(", ")));
            }
            if out.iter().any(|(seen, _)| *seen == k) {
                return Err(format!("parameter {k} is given twice"));
            }
            out.push((k, v));
        }
        Ok(Self(out))
    }

    fn take(&mut self, name: &str) -> Option<String> {
        let i = self.0.iter().position(|(k, _)| k == name)?;
        Some(self.0.remove(i).1)
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
        assert_eq!((s.host.as_str(), s.port), ("127.0.0.1", 5433));
        assert_eq!(s.password.resolve().unwrap().as_str(), "s@cret");
        assert_eq!(s.database, "im");
        assert!(!format!("{u} {u:?}").contains("cret"));
        // An `@` in a parameter is not the end of the login.
        let u: DbUrl =
            "postgres://arch:pw@db.example/im?sslrootcert=/etc/ca@2024.pem".parse().unwrap();
        let s = server(&u);
        assert_eq!((s.host.as_str(), s.user.as_str()), ("db.example", "arch"));
        assert_eq!(s.password.resolve().unwrap().as_str(), "pw");
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

    fn server(s: &str) -> Server {
        match s.parse::<DbUrl>().unwrap().target {
            Target::Server(s) => s,
            Target::File(p) => panic!("{p:?}"),
        }
    }

    #[test]
    fn url_parameters_give_the_tls_settings_with_libpq_defaults() {
        use super::super::tls::{RootCert, SslMode};
        let tls = |s: &str| server(s).tls;
        // No sslmode: prefer on loopback, verify-full elsewhere.
        assert_eq!(tls("postgres://u@127.0.0.1/im").mode, SslMode::Prefer);
        assert_eq!(tls("postgres://u@localhost:5432/im").mode, SslMode::Prefer);
        assert_eq!(tls("postgres://u@[::1]:5432/im").mode, SslMode::Prefer);
        assert_eq!(tls("sqlserver://u@[::1]/im").mode, SslMode::Prefer, "IPv6 without a port");
        let (s, t) = (server("sqlserver://u@[::1]/im"), server("postgres://u@[fe80::2]:1500"));
        assert_eq!(
            (s.host.as_str(), s.port, t.host.as_str(), t.port),
            ("::1", 1433, "fe80::2", 1500)
        );
        assert!("postgres://u@[::1]x/im".parse::<DbUrl>().is_err());
        assert_eq!(tls("postgres://u@db.example:5432/im").mode, SslMode::VerifyFull);
        assert_eq!(tls("sqlserver://u@10.0.0.5").mode, SslMode::VerifyFull);
        let t = tls("postgres://u:p@db/im?sslmode=verify-ca&sslrootcert=/etc/imcrypt/db%20ca.pem");
        assert_eq!(t.mode, SslMode::VerifyCa);
        assert_eq!(t.root_cert, Some(RootCert::File("/etc/imcrypt/db ca.pem".into())));
        assert_eq!(tls("postgres://u@db?sslmode=disable").mode, SslMode::Disable);
        assert_eq!(tls("postgres://u@127.0.0.1?sslmode=require").mode, SslMode::Require);
        assert_eq!(server("postgres://u@db:5433?sslmode=require").port, 5433, "no database");
        assert_eq!(server("postgres://u@db/im?sslmode=require").database, "im");
        let t = tls("postgres://u@db?sslrootcert=system");
        assert_eq!((t.mode, t.root_cert), (SslMode::VerifyFull, Some(RootCert::System)));
        assert!(server("sqlserver://u@db?trust_server_certificate=true").trust_server_certificate);
        assert!(!server("sqlserver://u@db").trust_server_certificate);

        let refused = |s: &str| s.parse::<DbUrl>().unwrap_err().to_string();
        let e = refused("postgres://u:pw@db/im?sslmode=verify_full");
        assert!(e.contains("sslmode=verify_full") && !e.contains("pw@"), "{e}");
        let e = refused("postgres://u@db/im?ssl_mode=require");
        assert!(e.contains("unknown parameter \"ssl_mode\""), "{e}");
        let e = refused("postgres://u@db/im?trust_server_certificate=true");
        assert!(e.contains("unknown parameter"), "only SQL Server has it: {e}");
        let e = refused("postgres://u@db/im?sslmode=require&sslmode=disable");
        assert!(e.contains("sslmode is given twice"), "{e}");
        let e = refused("sqlserver://u@db?trust_server_certificate=yes");
        assert!(e.contains("trust_server_certificate=yes"), "{e}");
    }

    #[test]
    fn a_password_comes_from_the_url_a_file_or_the_environment() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("db.pw");
        std::fs::write(&file, "s3cret pass\n").unwrap();
        let url = format!("postgres://arch@db/im?password_file={}", file.display());
        let s = server(&url);
        assert_eq!(s.password.resolve().unwrap().as_str(), "s3cret pass", "final newline cut");
        std::fs::write(&file, "rotated\r\n").unwrap();
        assert_eq!(s.password.resolve().unwrap().as_str(), "rotated", "read at each connection");
        std::fs::remove_file(&file).unwrap();
        let e = s.password.resolve().unwrap_err();
        assert!(e.contains(&file.display().to_string()) && e.contains("password_file"), "{e}");

        // A variable set by nothing else in this test binary.
        let var = "IMCRYPT_TEST_URL_PASSWORD_ENV";
        let s = server(&format!("postgres://arch@db/im?password_env={var}"));
        let e = s.password.resolve().unwrap_err();
        assert!(e.contains(var) && e.contains("not set"), "{e}");
        // A variable every test process has (setting one would need `unsafe`).
        let s = server("postgres://arch@db/im?password_env=PATH");
        assert_eq!(*s.password.resolve().unwrap(), std::env::var("PATH").unwrap());

        let e = "postgres://arch:pw@db/im?password_env=X".parse::<DbUrl>().unwrap_err();
        assert!(e.to_string().contains("give one"), "{e}");
        let e = "postgres://a@db?password_env=X&password_file=/f".parse::<DbUrl>().unwrap_err();
        assert!(e.to_string().contains("not both"), "{e}");
        assert_eq!(server("postgres://a@db").password.resolve().unwrap().as_str(), "");
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
