//! `imcrypt support bundle`: one file for a support engineer, what the manual's "file build
//! log" gives them: versions, the system, the configuration with every secret redacted, the
//! daemon's status and alarm history (when its admin API answers), and where the logs are.
//!
//! The bundle is one pretty-printed JSON document rather than an archive: the operator of a
//! compliance system must be able to read exactly what leaves the site before sending it, in
//! any editor or with `jq`, and a `grep` for a secret covers all of it (a compressed archive
//! hides its contents from both); its sections stay machine-readable for support tooling.
//!
//! Invariants: the file is created new with mode 0600 (never overwritten); it never holds the
//! admin token, a password (a URL's password is `***`, and so is every string under a key
//! naming a password, token or secret), key material or the contents of a secret file (paths
//! to such files are kept: they help, and they are not the secret).

use std::io::Write;
use std::path::{Path, PathBuf};

use hyper::Method;
use serde_json::{Value, json};

use super::CliError;
use crate::admin::client::{Client, ConnectArgs};

/// `imcrypt support …`
#[derive(Debug, clap::Subcommand)]
pub(crate) enum SupportCommand {
    /// Write a support bundle (one JSON file, mode 0600): versions, system, the config with
    /// secrets redacted, the daemon's status and alarm history, the end of the log file (or
    /// where the logs are). Read it before sending it: it holds no token, password or key.
    Bundle {
        /// The file to write; it must not exist yet.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        conn: ConnectArgs,
    },
}

/// The document's format version, for support tooling.
const FORMAT: u32 = 1;

pub(crate) fn support(cmd: SupportCommand) -> Result<(), CliError> {
    match cmd {
        SupportCommand::Bundle { out, conn } => {
            let bundle = bundle(&conn)?;
            write_new_private(&out, &bundle)?;
            println!(
                "wrote the support bundle to {} (mode 0600); read it before sending it: it holds \
                 no admin token, password or key",
                out.display()
            );
            Ok(())
        }
    }
}

/// The whole document.
fn bundle(conn: &ConnectArgs) -> Result<Value, CliError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    // Read once: the config section shows the loader's verdict, the logs section needs its
    // `[log] file`.
    let loaded = conn.config.as_deref().map(|p| (p, crate::config::Config::load(p)));
    Ok(json!({
        "imcrypt_support_bundle": FORMAT,
        "created": created(),
        "version": {
            "imcrypt": env!("CARGO_PKG_VERSION"),
            // Set by whoever builds the release (`IMCRYPT_GIT_COMMIT=$(git rev-parse HEAD)`).
            "git_commit": option_env!("IMCRYPT_GIT_COMMIT"),
        },
        "system": system(),
        "config": config(loaded.as_ref().map(|(p, c)| (*p, c))),
        "daemon": rt.block_on(daemon(conn)),
        "logs": logs(loaded.as_ref().and_then(|(_, c)| c.as_ref().ok())),
    }))
}

/// When the bundle was made, to the second, from the one clock of the process
/// (`crate::clock`).
fn created() -> String {
    let now = std::time::Duration::from_secs(crate::clock::now().unix_secs());
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + now).to_string()
}

/// How many lines of the log file the bundle carries.
const LOG_LINES: usize = 500;
/// How much of the end of the log file is read to find them.
const LOG_TAIL_BYTES: u64 = 1 << 20;

/// The last lines of `[log] file`, or where the logs are when the daemon logs to stderr.
fn logs(config: Option<&crate::config::Config>) -> Value {
    let file = config.and_then(|c| c.log.file.clone());
    let Some(file) = file else {
        return json!({
            "where": "imcrypt serve logs to stderr: under systemd, the journal",
            "collect": "journalctl -u imcrypt.service --since -24h -o short-iso > imcrypt-log.txt \
                        (for a template instance: -u imcrypt@NAME.service); attach it beside \
                        this bundle",
        });
    };
    match tail(&file) {
        // Logs hold no secret by design; URL passwords are hidden once more all the same.
        Ok(lines) => json!({
            "file": file,
            "last_lines": lines.iter().map(|l| crate::archive::redact(l)).collect::<Vec<_>>(),
        }),
        Err(e) => json!({ "file": file, "error": format!("cannot read it: {e}") }),
    }
}

/// The last [`LOG_LINES`] lines of `path`, read from its last [`LOG_TAIL_BYTES`].
fn tail(path: &Path) -> std::io::Result<Vec<String>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let start = len.saturating_sub(LOG_TAIL_BYTES);
    f.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<&str> = text.lines().collect();
    if start > 0 && !lines.is_empty() {
        lines.remove(0); // cut in the middle
    }
    let from = lines.len().saturating_sub(LOG_LINES);
    Ok(lines[from..].iter().map(|l| (*l).to_owned()).collect())
}

/// The kernel, the distribution and the host.
fn system() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).ok().map(|s| s.trim().to_owned());
    let os = read("/etc/os-release").and_then(|t| {
        t.lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_owned())
    });
    json!({
        "os": os,
        "kernel": read("/proc/sys/kernel/osrelease"),
        "kernel_version": read("/proc/sys/kernel/version"),
        "arch": std::env::consts::ARCH,
        "hostname": read("/proc/sys/kernel/hostname"),
        "systemd_pid1": Path::new("/run/systemd/system").is_dir(),
    })
}

/// The config file, redacted, with the loader's verdict on it; or why it is missing.
fn config(
    loaded: Option<(&Path, &Result<crate::config::Config, crate::config::ConfigError>)>,
) -> Value {
    let Some((path, loaded)) = loaded else {
        return json!({ "note": "no --config given: the configuration is not included" });
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return json!({ "path": path, "error": format!("cannot read it: {e}") }),
    };
    // The daemon's own validation, so a support engineer sees the message the daemon would
    // print (its messages redact URL passwords).
    let valid = match loaded {
        Ok(_) => json!(true),
        Err(e) => json!(e.to_string()),
    };
    match text.parse::<toml::Table>() {
        Ok(table) => {
            let mut v = serde_json::to_value(table).unwrap_or(Value::Null);
            redact(None, &mut v);
            json!({ "path": path, "valid": valid, "redacted": v })
        }
        Err(_) => json!({ "path": path, "valid": valid, "note": "not TOML: not included" }),
    }
}

/// Whether a value under `key` is a secret itself (a key naming the file it is in is not).
fn secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    let names_secret = ["password", "passwd", "token", "secret", "credential", "private"]
        .iter()
        .any(|s| k.contains(s));
    names_secret && !(k.ends_with("_file") || k.ends_with("_path") || k.ends_with("_dir"))
}

/// Replaces secrets in `v` (found under `key`) by `***`, in place: every string under a
/// secret key, and the password of every URL anywhere.
fn redact(key: Option<&str>, v: &mut Value) {
    let secret = key.is_some_and(secret_key);
    match v {
        Value::String(s) if secret => *s = "***".into(),
        Value::String(s) => *s = crate::archive::redact(s),
        Value::Array(items) => items.iter_mut().for_each(|i| redact(key, i)),
        Value::Object(map) => map.iter_mut().for_each(|(k, i)| redact(Some(k), i)),
        Value::Number(_) | Value::Bool(_) | Value::Null if secret => *v = "***".into(),
        _ => {}
    }
}

/// The daemon's status and alarms through its admin API, or why they are missing.
async fn daemon(conn: &ConnectArgs) -> Value {
    let client = match conn.target().and_then(Client::new) {
        Ok(c) => c,
        Err(e) => return json!({ "reachable": false, "error": e.to_string() }),
    };
    let get = async |path| client.call::<Value>(Method::GET, path, None::<&()>).await;
    match (get("/v1/status").await, get("/v1/alarms").await) {
        (Ok(status), Ok(alarms)) => {
            json!({ "reachable": true, "status": status, "alarms": alarms })
        }
        (Ok(status), Err(e)) => {
            json!({ "reachable": true, "status": status, "alarms_error": e.to_string() })
        }
        (Err(e), _) => json!({ "reachable": false, "error": e.to_string() }),
    }
}

/// Writes `v` to `path`, which must not exist, with mode 0600 from the start.
fn write_new_private(path: &Path, v: &Value) -> Result<(), CliError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| CliError::Write { path: path.to_owned(), source };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    let mut text = serde_json::to_vec_pretty(v).map_err(|e| err(e.into()))?;
    text.push(b'\n');
    f.write_all(&text).and_then(|()| f.sync_all()).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_and_paths_to_secret_files_are_kept() {
        let mut v = json!({
            "state_dir": "/var/lib/imcrypt",
            "admin": { "token_file": "/etc/imcrypt/token", "token": "abc" },
            "nodes": [{ "id": "n1", "db": "postgres://arch:hunter2@db:5432/im" }],
            "alarms": { "sinks": [{ "secret_file": "/etc/s", "url": "https://u:pw@h/x",
                                     "password": "p", "api_secret": 12 }] },
        });
        redact(None, &mut v);
        let text = v.to_string();
        for secret in ["abc", "hunter2", ":pw@", "\"p\"", "12"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert_eq!(v["admin"]["token_file"], "/etc/imcrypt/token");
        assert_eq!(v["alarms"]["sinks"][0]["secret_file"], "/etc/s");
        assert_eq!(v["nodes"][0]["db"], "postgres://arch:***@db:5432/im");
        assert_eq!(v["state_dir"], "/var/lib/imcrypt");
    }
}
