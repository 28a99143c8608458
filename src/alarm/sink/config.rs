//! `[[alarms.sinks]]`: where alarms are delivered, as the operator writes it in the config file.
//!
//! Invariants: a [`SinkConfig`] that exists is valid: its name is unique among the sinks, its
//! kind-specific keys are all known and well-formed, its address or URL has a host and a port;
//! every error names the key as `alarms.sinks[i].key`. Files a sink needs (a webhook's secret,
//! a TLS CA) are read by [`SinkConfig::load_files`] when the config is loaded, so that an
//! unreadable or too open file stops the start with the key and the path; a merely unreachable
//! address is never a config error (the sink counts its failures instead). A secret is held in
//! zeroizing memory and never shown by `Debug`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Deserializer};
use zeroize::Zeroizing;

use crate::alarm::Severity;

/// `[alarms]`: the sinks, validated (see the module documentation).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct AlarmsSection {
    pub(crate) sinks: Vec<SinkConfig>,
}

/// One sink: its name, the least severity it is sent, and where and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SinkConfig {
    /// Unique among the sinks; shown in status, logs and `imcrypt alarms test`.
    pub(crate) name: String,
    /// Alarms below this severity are not sent to the sink (nor are their clears).
    pub(crate) min_severity: Severity,
    pub(crate) kind: SinkKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SinkKind {
    Syslog(SyslogConfig),
    Alertmanager(AlertmanagerConfig),
    Webhook(WebhookConfig),
}

impl SinkKind {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            SinkKind::Syslog(_) => "syslog",
            SinkKind::Alertmanager(_) => "alertmanager",
            SinkKind::Webhook(_) => "webhook",
        }
    }
}

/// How syslog messages travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Transport {
    /// RFC 6587 octet counting over TCP.
    Tcp,
    /// One datagram per message (RFC 5426).
    Udp,
    /// RFC 6587 octet counting over TLS (RFC 5425), verified against `ca_file`.
    Tls,
}

/// `kind = "syslog"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SyslogConfig {
    /// `host:port` of the collector.
    pub(crate) address: String,
    #[serde(default = "default_transport")]
    pub(crate) transport: Transport,
    /// For `tls`: the CA certificate(s) the collector's certificate must chain to (PEM).
    #[serde(default)]
    pub(crate) ca_file: Option<PathBuf>,
    /// Syslog facility name (`daemon`, `local0`…`local7`, …).
    #[serde(default = "default_facility", deserialize_with = "facility")]
    pub(crate) facility: u8,
    /// RFC 5424 APP-NAME.
    #[serde(default = "default_app_name")]
    pub(crate) app_name: String,
    /// RFC 5424 HOSTNAME; default: this machine's host name.
    #[serde(default)]
    pub(crate) hostname: Option<String>,
    /// The SD-ID of the structured data element (`name@PEN`).
    #[serde(default = "default_sd_id")]
    pub(crate) sd_id: String,
    /// Also send a copy of every audit record (MSGID `audit`, the record's line as MSG), at
    /// any `min_severity`. The copy is best effort; `state_dir/audit.log` is the record.
    #[serde(default = "default_audit")]
    pub(crate) audit: bool,
    /// The CA certificates read from `ca_file` at load.
    #[serde(skip)]
    pub(crate) ca: Option<Arc<[CertificateDer<'static>]>>,
}

/// `kind = "alertmanager"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AlertmanagerConfig {
    /// Base URL, e.g. `http://127.0.0.1:9093`; alerts go to `{url}/api/v2/alerts`.
    pub(crate) url: String,
    /// How often active alarms are sent again.
    #[serde(default = "default_resend", deserialize_with = "crate::duration::nonzero")]
    pub(crate) resend_interval: Duration,
    /// `endsAt` of an active alarm is this far in the future: if imcrypt stops sending, the
    /// alert resolves by itself after it. Default: three resend intervals.
    #[serde(default, deserialize_with = "crate::duration::optional_nonzero")]
    pub(crate) ends_at_after: Option<Duration>,
    /// For an `https` URL: the CA certificate(s) of the server (PEM).
    #[serde(default)]
    pub(crate) ca_file: Option<PathBuf>,
    #[serde(skip)]
    pub(crate) ca: Option<Arc<[CertificateDer<'static>]>>,
}

impl AlertmanagerConfig {
    pub(crate) fn ends_at_after(&self) -> Duration {
        self.ends_at_after.unwrap_or(self.resend_interval * 3)
    }
}

/// `kind = "webhook"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WebhookConfig {
    /// Where each event is POSTed.
    pub(crate) url: String,
    /// The HMAC-SHA256 key: the file's bytes without one trailing newline; mode 0600 or
    /// stricter.
    pub(crate) secret_file: PathBuf,
    /// For an `https` URL: the CA certificate(s) of the server (PEM).
    #[serde(default)]
    pub(crate) ca_file: Option<PathBuf>,
    #[serde(skip)]
    pub(crate) secret: Secret,
    #[serde(skip)]
    pub(crate) ca: Option<Arc<[CertificateDer<'static>]>>,
}

/// A webhook secret: zeroized on drop, never shown by `Debug`.
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct Secret(pub(crate) Arc<Zeroizing<Vec<u8>>>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

fn default_transport() -> Transport {
    Transport::Tcp
}

fn default_facility() -> u8 {
    3 // daemon
}

fn default_audit() -> bool {
    true
}

fn default_app_name() -> String {
    "imcrypt".into()
}

/// 32473 is the IANA example Private Enterprise Number (RFC 5612): sites with their own PEN
/// put it here.
pub(crate) const DEFAULT_SD_ID: &str = "imcrypt@32473";

fn default_sd_id() -> String {
    DEFAULT_SD_ID.into()
}

fn default_resend() -> Duration {
    Duration::from_secs(60)
}

/// The facility names of RFC 5424, 6.2.1, with their codes.
const FACILITIES: [(&str, u8); 24] = [
    ("kern", 0),
    ("user", 1),
    ("mail", 2),
    ("daemon", 3),
    ("auth", 4),
    ("syslog", 5),
    ("lpr", 6),
    ("news", 7),
    ("uucp", 8),
    ("cron", 9),
    ("authpriv", 10),
    ("ftp", 11),
    ("ntp", 12),
    ("audit", 13),
    ("alert", 14),
    ("clock", 15),
    ("local0", 16),
    ("local1", 17),
    ("local2", 18),
    ("local3", 19),
    ("local4", 20),
    ("local5", 21),
    ("local6", 22),
    ("local7", 23),
];

fn facility<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    let s = String::deserialize(d)?;
    FACILITIES.iter().find(|(n, _)| *n == s).map(|(_, c)| *c).ok_or_else(|| {
        let names: Vec<&str> = FACILITIES.iter().map(|(n, _)| *n).collect();
        serde::de::Error::custom(format!(
            "unknown facility {s:?}; expected one of {}",
            names.join(", ")
        ))
    })
}

impl<'de> Deserialize<'de> for AlarmsSection {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            #[serde(default)]
            sinks: Vec<toml::Table>,
        }
        let raw = Raw::deserialize(d)?;
        let mut sinks: Vec<SinkConfig> = Vec::new();
        for (i, t) in raw.sinks.into_iter().enumerate() {
            let s = SinkConfig::from_table(t)
                .map_err(|e| serde::de::Error::custom(format!("alarms.sinks[{i}].{e}")))?;
            if sinks.iter().any(|o| o.name == s.name) {
                return Err(serde::de::Error::custom(format!(
                    "alarms.sinks[{i}].name: {:?} is already the name of another sink",
                    s.name
                )));
            }
            sinks.push(s);
        }
        Ok(Self { sinks })
    }
}

/// The kinds, as the message for an unknown or missing `kind` lists them.
const KINDS: &str = "\"syslog\", \"alertmanager\" or \"webhook\"";

impl SinkConfig {
    /// One `[[alarms.sinks]]` table; an error starts with the key it is about (`kind: …`).
    fn from_table(mut t: toml::Table) -> Result<Self, String> {
        let kind = match t.remove("kind") {
            Some(toml::Value::String(k)) => k,
            Some(v) => return Err(format!("kind: expected a string ({KINDS}), found {v}")),
            None => return Err(format!("kind: missing; one of {KINDS}")),
        };
        let name = match t.remove("name") {
            Some(toml::Value::String(n)) if !n.trim().is_empty() => n,
            Some(v) => return Err(format!("name: expected a non-empty string, found {v}")),
            None => return Err("name: missing; every sink needs a unique name".into()),
        };
        let min_severity = match t.remove("min_severity") {
            None => Severity::Warning,
            Some(v) => v.try_into().map_err(|_| {
                "min_severity: expected \"warning\", \"minor\", \"major\" or \"critical\""
                    .to_owned()
            })?,
        };
        // serde's message names the field (`unknown field `adress``, `missing field `url``);
        // the key prefix is added by the caller.
        fn rest<T: serde::de::DeserializeOwned>(t: toml::Table) -> Result<T, String> {
            toml::Value::Table(t).try_into().map_err(|e: toml::de::Error| {
                let m = e.message().trim().to_owned();
                // `missing field `x`` / `unknown field `x`` → `x: …`, so the key leads.
                match m.split('`').nth(1) {
                    Some(field) if m.contains("field") => format!("{field}: {m}"),
                    _ => m,
                }
            })
        }
        let kind = match kind.as_str() {
            "syslog" => SinkKind::Syslog(rest(t)?),
            "alertmanager" => SinkKind::Alertmanager(rest(t)?),
            "webhook" => SinkKind::Webhook(rest(t)?),
            other => return Err(format!("kind: unknown kind {other:?}; expected {KINDS}")),
        };
        let s = SinkConfig { name, min_severity, kind };
        s.validate()?;
        Ok(s)
    }

    fn validate(&self) -> Result<(), String> {
        match &self.kind {
            SinkKind::Syslog(c) => {
                host_port(&c.address).map_err(|e| format!("address: {e}"))?;
                if c.transport == Transport::Tls && c.ca_file.is_none() {
                    return Err("ca_file: needed with transport = \"tls\"".into());
                }
                if c.transport != Transport::Tls && c.ca_file.is_some() {
                    return Err("ca_file: only used with transport = \"tls\"".into());
                }
                let printable = |s: &str, max: usize| {
                    !s.is_empty() && s.len() <= max && s.bytes().all(|b| (33..=126).contains(&b))
                };
                if !printable(&c.app_name, 48) {
                    return Err("app_name: 1 to 48 printable ASCII characters, no spaces".into());
                }
                if let Some(h) = &c.hostname
                    && !printable(h, 255)
                {
                    return Err("hostname: 1 to 255 printable ASCII characters, no spaces".into());
                }
                if !valid_sd_id(&c.sd_id) {
                    return Err(format!(
                        "sd_id: {:?} is not an SD-ID like \"imcrypt@32473\" (name@enterprise \
                         number, at most 32 printable ASCII characters without '=', ' ', ']', '\"')",
                        c.sd_id
                    ));
                }
            }
            SinkKind::Alertmanager(c) => http_target(&c.url, &c.ca_file)?,
            SinkKind::Webhook(c) => http_target(&c.url, &c.ca_file)?,
        }
        Ok(())
    }

    /// Makes the sink's file paths absolute (relative to `base`, the config file's directory).
    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        match &mut self.kind {
            SinkKind::Syslog(c) => c.ca_file.iter_mut().for_each(abs),
            SinkKind::Alertmanager(c) => c.ca_file.iter_mut().for_each(abs),
            SinkKind::Webhook(c) => {
                abs(&mut c.secret_file);
                c.ca_file.iter_mut().for_each(abs);
            }
        }
    }

    /// Reads the files the sink needs (secret, CA); an error names the key and the path.
    pub(crate) fn load_files(&mut self) -> Result<(), String> {
        let ca = |p: &Option<PathBuf>| -> Result<Option<Arc<[CertificateDer<'static>]>>, String> {
            let Some(p) = p else { return Ok(None) };
            let certs = crate::pem_files::certificates(crate::pem_files::PemKind::CaCertificate, p)
                .map_err(|e| format!("ca_file: {e}"))?;
            // Refused here rather than at the first delivery.
            crate::pem_files::ca_roots(p).map_err(|e| format!("ca_file: {e}"))?;
            Ok(Some(certs.into()))
        };
        match &mut self.kind {
            SinkKind::Syslog(c) => c.ca = ca(&c.ca_file)?,
            SinkKind::Alertmanager(c) => c.ca = ca(&c.ca_file)?,
            SinkKind::Webhook(c) => {
                c.ca = ca(&c.ca_file)?;
                c.secret = read_secret(&c.secret_file)
                    .map_err(|e| format!("secret_file: {}: {e}", c.secret_file.display()))?;
            }
        }
        Ok(())
    }
}

/// An HTTP sink's `url` and `ca_file`: a URL with a host, and a CA exactly when it is https.
fn http_target(url: &str, ca_file: &Option<PathBuf>) -> Result<(), String> {
    let u = super::http::HttpUrl::parse(url).map_err(|e| format!("url: {e}"))?;
    if u.https != ca_file.is_some() {
        return Err("ca_file: needed with an https url, and only then".into());
    }
    Ok(())
}

/// The secret in `path`: owner-only permissions, not empty, one trailing newline dropped.
fn read_secret(path: &Path) -> Result<Secret, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read it: {e}"))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "mode is 0{mode:o}; a secret must be readable by its owner only (chmod 600)"
        ));
    }
    let mut bytes =
        Zeroizing::new(std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?);
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    if bytes.is_empty() {
        return Err("the file is empty".into());
    }
    Ok(Secret(Arc::new(bytes)))
}

/// `host:port` with a non-empty host and a numeric port.
pub(crate) fn host_port(s: &str) -> Result<(&str, u16), String> {
    let (host, port) =
        s.rsplit_once(':').ok_or_else(|| format!("{s:?} needs a port (host:port)"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().map_err(|_| format!("{s:?}: the port is not a number"))?;
    if host.is_empty() || port == 0 {
        return Err(format!("{s:?} needs a host and a port other than 0"));
    }
    Ok((host, port))
}

/// RFC 5424 SD-NAME (1 to 32 PRINTUSASCII except `=`, SP, `]`, `"`), with an `@`.
fn valid_sd_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.contains('@')
        && s.bytes().all(|b| (33..=126).contains(&b) && !b"= ]\"".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AlarmsSection, String> {
        #[derive(Deserialize)]
        struct F {
            alarms: AlarmsSection,
        }
        toml::from_str::<F>(text).map(|f| f.alarms).map_err(|e| e.to_string())
    }

    #[test]
    fn each_kind_parses_with_its_defaults() {
        let a = parse(
            r#"
[[alarms.sinks]]
name = "central-syslog"
kind = "syslog"
address = "127.0.0.1:514"

[[alarms.sinks]]
name = "am"
kind = "alertmanager"
url = "http://127.0.0.1:9093"
min_severity = "major"

[[alarms.sinks]]
name = "hook"
kind = "webhook"
url = "http://127.0.0.1:8080/imcrypt"
secret_file = "hook.secret"
"#,
        )
        .unwrap();
        assert_eq!(a.sinks.len(), 3);
        let SinkKind::Syslog(s) = &a.sinks[0].kind else { panic!() };
        assert_eq!((s.transport, s.facility, s.app_name.as_str()), (Transport::Tcp, 3, "imcrypt"));
        assert_eq!(s.sd_id, "imcrypt@32473");
        assert_eq!(a.sinks[0].min_severity, Severity::Warning);
        let SinkKind::Alertmanager(m) = &a.sinks[1].kind else { panic!() };
        assert_eq!(m.resend_interval, Duration::from_secs(60));
        assert_eq!(m.ends_at_after(), Duration::from_secs(180));
        assert_eq!(a.sinks[1].min_severity, Severity::Major);
        let mut w = a.sinks[2].clone();
        w.resolve_paths(Path::new("/etc/imcrypt"));
        let SinkKind::Webhook(w) = &w.kind else { panic!() };
        assert_eq!(w.secret_file, Path::new("/etc/imcrypt/hook.secret"));
    }

    #[test]
    fn errors_name_the_key() {
        let one = |body: &str| parse(&format!("[[alarms.sinks]]\nname = \"x\"\n{body}\n"));
        let e = parse(
            "[[alarms.sinks]]\nname = \"a\"\nkind = \"webhook\"\nurl = \"http://h:1/\"\n\
             secret_file = \"s\"\n[[alarms.sinks]]\nname = \"b\"\nkind = \"smtp\"\n",
        )
        .unwrap_err();
        assert!(e.contains("alarms.sinks[1].kind: unknown kind \"smtp\""), "{e}");
        let e = one("").unwrap_err();
        assert!(e.contains("alarms.sinks[0].kind: missing"), "{e}");
        let e = one("kind = \"syslog\"\nadress = \"h:1\"").unwrap_err();
        assert!(e.contains("alarms.sinks[0].adress: unknown field `adress`"), "{e}");
        let e = one("kind = \"syslog\"").unwrap_err();
        assert!(e.contains("alarms.sinks[0].address: missing field"), "{e}");
        let e = one("kind = \"syslog\"\naddress = \"nohost\"").unwrap_err();
        assert!(e.contains("alarms.sinks[0].address: \"nohost\" needs a port"), "{e}");
        let e = one("kind = \"syslog\"\naddress = \"h:1\"\ntransport = \"tls\"").unwrap_err();
        assert!(e.contains("alarms.sinks[0].ca_file: needed"), "{e}");
        let e = one("kind = \"syslog\"\naddress = \"h:1\"\nfacility = \"local9\"").unwrap_err();
        assert!(e.contains("unknown facility \"local9\""), "{e}");
        let e = one("kind = \"syslog\"\naddress = \"h:1\"\nmin_severity = \"high\"").unwrap_err();
        assert!(e.contains("alarms.sinks[0].min_severity: expected"), "{e}");
        let e = one("kind = \"alertmanager\"\nurl = \"ftp://h/\"").unwrap_err();
        assert!(e.contains("alarms.sinks[0].url: "), "{e}");
        let e = one("kind = \"syslog\"\naddress = \"h:1\"\nsd_id = \"bad id\"").unwrap_err();
        assert!(e.contains("alarms.sinks[0].sd_id: "), "{e}");
        let e = parse(
            "[[alarms.sinks]]\nname = \"a\"\nkind = \"syslog\"\naddress = \"h:1\"\n\
             [[alarms.sinks]]\nname = \"a\"\nkind = \"syslog\"\naddress = \"h:2\"\n",
        )
        .unwrap_err();
        assert!(e.contains("alarms.sinks[1].name: \"a\" is already the name"), "{e}");
    }

    #[test]
    fn a_secret_must_be_private_readable_and_not_empty() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s");
        let mut c = SinkConfig {
            name: "w".into(),
            min_severity: Severity::Warning,
            kind: SinkKind::Webhook(WebhookConfig {
                url: "http://h:1/".into(),
                secret_file: p.clone(),
                ca_file: None,
                secret: Secret::default(),
                ca: None,
            }),
        };
        let e = c.load_files().unwrap_err();
        assert!(e.starts_with(&format!("secret_file: {}: cannot read it", p.display())), "{e}");
        std::fs::write(&p, "s3cret\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = c.load_files().unwrap_err();
        assert!(e.contains("mode is 0644") && e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        c.load_files().unwrap();
        let SinkKind::Webhook(w) = &c.kind else { panic!() };
        assert_eq!(&w.secret.0[..], b"s3cret");
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
