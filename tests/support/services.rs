//! Real monitoring services for the tests, from Debian's packages (scripts/test.sh installs
//! them): rsyslog with an `imtcp` input that writes each message's raw RFC 5424 text to a
//! file, and Prometheus Alertmanager; each either plain or over TLS with a server certificate
//! for 127.0.0.1 from a throwaway CA ([`LoopbackTls`]). Each runs in its own temp dir on a
//! 127.0.0.1 port reserved for it ([`ReservedPort`]), is waited for until it accepts
//! connections (bounded), and is killed on drop. A missing binary fails the test with the way
//! to install it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use imcrypt::demo::ReservedPort;

/// How long a service may take to start listening.
const START: Duration = Duration::from_secs(20);

/// A child process killed (and reaped) on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `ready` holds, failing with the service's log if the process ended or `START`
/// passed.
fn wait_ready(what: &str, child: &mut Child, log: &Path, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    loop {
        if ready() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            start.elapsed() < START,
            "{what} did not start within {START:?}: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// rsyslogd with one `imtcp` input (octet-counted framing, as RFC 6587 has it) whose messages
/// go, raw (`%rawmsg%`, one per line), to `messages.log` in its temp dir.
pub struct Rsyslog {
    dir: tempfile::TempDir,
    port: ReservedPort,
    _child: Guard,
}

impl Rsyslog {
    pub fn start() -> Rsyslog {
        Self::start_with(None)
    }

    /// With `tls`, the input speaks TLS (RFC 5425) through rsyslog's GnuTLS driver, with
    /// `tls`'s certificate; clients are not asked for one.
    pub fn start_with(tls: Option<&LoopbackTls>) -> Rsyslog {
        let exe = super::debian_binary("/usr/sbin/rsyslogd", "rsyslog");
        if tls.is_some() {
            let driver = std::fs::read_dir("/usr/lib")
                .unwrap()
                .filter_map(|e| Some(e.ok()?.path().join("rsyslog/lmnsd_gtls.so")))
                .find(|p| p.exists());
            assert!(
                driver.is_some(),
                "rsyslog's GnuTLS driver not found: run scripts/test.sh (it installs Debian's \
                 rsyslog-gnutls package)"
            );
        }
        let dir = tempfile::Builder::new().prefix("imcrypt-rsyslog").tempdir().unwrap();
        let port = ReservedPort::new().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("work")).unwrap();
        let conf = d.join("rsyslog.conf");
        let (global, imtcp) = match tls {
            None => (String::new(), String::new()),
            Some(t) => (
                format!(
                    r#" DefaultNetstreamDriver="gtls" DefaultNetstreamDriverCAFile="{}" DefaultNetstreamDriverCertFile="{}" DefaultNetstreamDriverKeyFile="{}""#,
                    t.ca.display(),
                    t.cert.display(),
                    t.key.display()
                ),
                r#" StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="anon""#
                    .to_owned(),
            ),
        };
        std::fs::write(
            &conf,
            format!(
                r#"global(workDirectory="{work}"{global})
module(load="imtcp"{imtcp})
template(name="raw" type="string" string="%rawmsg%\n")
ruleset(name="imcrypt") {{
  action(type="omfile" file="{out}" template="raw")
}}
input(type="imtcp" address="127.0.0.1" port="{port}" ruleset="imcrypt")
"#,
                work = d.join("work").display(),
                out = d.join("messages.log").display(),
                port = port.port(),
            ),
        )
        .unwrap();
        let log = d.join("rsyslogd.log");
        let mut child = Command::new(exe)
            .arg("-n")
            .arg("-f")
            .arg(&conf)
            .arg("-i")
            .arg(d.join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(d.join("rsyslogd.err")).unwrap())
            .spawn()
            .unwrap();
        let p = port.port();
        wait_ready("rsyslogd", &mut child, &d.join("rsyslogd.err"), || {
            TcpStream::connect(("127.0.0.1", p)).is_ok()
        });
        Rsyslog { dir, port, _child: Guard(child) }
    }

    /// `127.0.0.1:PORT` of the imtcp input.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port.port())
    }

    /// The messages received so far, one per line, as they came.
    pub fn messages(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("messages.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// Prometheus Alertmanager (standalone: no cluster listener) with a receiver that goes
/// nowhere; the tests read its `/api/v2/alerts`.
pub struct Alertmanager {
    dir: tempfile::TempDir,
    port: ReservedPort,
    /// Served over HTTPS with this certificate (`None`: plain HTTP).
    tls: Option<PathBuf>,
    _child: Guard,
}

impl Alertmanager {
    pub fn start() -> Alertmanager {
        Self::start_with(None)
    }

    /// With `tls`, the API is served over HTTPS (`--web.config.file`) with `tls`'s certificate.
    pub fn start_with(tls: Option<&LoopbackTls>) -> Alertmanager {
        let exe =
            super::debian_binary("/usr/bin/prometheus-alertmanager", "prometheus-alertmanager");
        let dir = tempfile::Builder::new().prefix("imcrypt-am").tempdir().unwrap();
        let port = ReservedPort::new().unwrap();
        let d = dir.path();
        let conf = d.join("alertmanager.yml");
        std::fs::write(&conf, "route:\n  receiver: blackhole\nreceivers:\n  - name: blackhole\n")
            .unwrap();
        let log = d.join("alertmanager.log");
        let mut cmd = Command::new(exe);
        if let Some(t) = tls {
            let web = d.join("web.yml");
            std::fs::write(
                &web,
                format!(
                    "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
                    t.cert.display(),
                    t.key.display()
                ),
            )
            .unwrap();
            cmd.arg(format!("--web.config.file={}", web.display()));
        }
        let mut child = cmd
            .arg(format!("--config.file={}", conf.display()))
            .arg(format!("--storage.path={}", d.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{}", port.port()))
            .arg("--cluster.listen-address=")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let (p, ca) = (port.port(), tls.map(|t| t.ca.clone()));
        wait_ready("alertmanager", &mut child, &log, || {
            get(p, "/-/ready", ca.as_deref()).is_some_and(|(status, _)| status == 200)
        });
        Alertmanager { dir, port, tls: ca, _child: Guard(child) }
    }

    /// `http://127.0.0.1:PORT`, or `https://…` when served over TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port.port())
    }

    /// `GET /api/v2/alerts` (active alerts; resolved ones are not listed).
    pub fn alerts(&self) -> serde_json::Value {
        let (status, body) = get(self.port.port(), "/api/v2/alerts", self.tls.as_deref())
            .expect("alertmanager answers");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }
}

/// A plain HTTP/1.0 GET on 127.0.0.1:`port`: status and body, `None` if it cannot connect.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    get(port, path, None)
}

/// An HTTP/1.0 GET on 127.0.0.1:`port`, over TLS verified against the CA file `ca` if given.
fn get(port: u16, path: &str, ca: Option<&Path>) -> Option<(u16, String)> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut s: Box<dyn ReadWrite> = match ca {
        None => Box::new(tcp),
        Some(ca) => {
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let conn = rustls::ClientConnection::new(client_config(ca), name).ok()?;
            Box::new(rustls::StreamOwned::new(conn, tcp))
        }
    };
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").ok()?;
    let mut raw = Vec::new();
    // A TLS server may close without close_notify after an HTTP/1.0 answer.
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Some((status, body))
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// A TLS client trusting the CA file `ca` only.
fn client_config(ca: &Path) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    std::sync::Arc::new(config)
}

/// A throwaway CA and a server certificate for the IP address 127.0.0.1 signed by it, as PEM
/// files in a temp dir (removed on drop): what a syslog or Alertmanager server presents.
pub struct LoopbackTls {
    _dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl LoopbackTls {
    pub fn new() -> LoopbackTls {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let dir = tempfile::Builder::new().prefix("imcrypt-tls").tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.distinguished_name.push(DnType::CommonName, "imcrypt test services CA");
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let key = KeyPair::generate().unwrap();
        // rcgen makes an IP address SAN of a name that parses as one.
        let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        leaf.distinguished_name.push(DnType::CommonName, "127.0.0.1");
        let cert = leaf.signed_by(&key, &Issuer::new(ca, ca_key)).unwrap();
        let d = dir.path();
        let t = LoopbackTls {
            ca: d.join("ca.pem"),
            cert: d.join("server.pem"),
            key: d.join("server.key"),
            _dir: dir,
        };
        std::fs::write(&t.ca, ca_pem).unwrap();
        std::fs::write(&t.cert, cert.pem()).unwrap();
        std::fs::write(&t.key, key.serialize_pem()).unwrap();
        t
    }
}
