//! Real monitoring services for the tests, from Debian's packages (scripts/test.sh installs
//! them): rsyslog with an `imtcp` input that writes each message's raw RFC 5424 text to a
//! file, and Prometheus Alertmanager. Each runs in its own temp dir on a 127.0.0.1 port
//! reserved for it ([`ReservedPort`]), is waited for until it accepts connections (bounded), and
//! is killed on drop. A missing binary fails the test with the way to install it.
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
        let exe = super::debian_binary("/usr/sbin/rsyslogd", "rsyslog");
        let dir = tempfile::Builder::new().prefix("imcrypt-rsyslog").tempdir().unwrap();
        let port = ReservedPort::new().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("work")).unwrap();
        let conf = d.join("rsyslog.conf");
        std::fs::write(
            &conf,
            format!(
                r#"global(workDirectory="{work}")
module(load="imtcp")
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
    _child: Guard,
}

impl Alertmanager {
    pub fn start() -> Alertmanager {
        let exe =
            super::debian_binary("/usr/bin/prometheus-alertmanager", "prometheus-alertmanager");
        let dir = tempfile::Builder::new().prefix("imcrypt-am").tempdir().unwrap();
        let port = ReservedPort::new().unwrap();
        let d = dir.path();
        let conf = d.join("alertmanager.yml");
        std::fs::write(&conf, "route:\n  receiver: blackhole\nreceivers:\n  - name: blackhole\n")
            .unwrap();
        let log = d.join("alertmanager.log");
        let mut child = Command::new(exe)
            .arg(format!("--config.file={}", conf.display()))
            .arg(format!("--storage.path={}", d.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{}", port.port()))
            .arg("--cluster.listen-address=")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let p = port.port();
        wait_ready("alertmanager", &mut child, &log, || {
            http_get(p, "/-/ready").is_some_and(|(status, _)| status == 200)
        });
        Alertmanager { dir, port, _child: Guard(child) }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port.port())
    }

    /// `GET /api/v2/alerts` (active alerts; resolved ones are not listed).
    pub fn alerts(&self) -> serde_json::Value {
        let (status, body) =
            http_get(self.port.port(), "/api/v2/alerts").expect("alertmanager answers");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }
}

/// A plain HTTP/1.0 GET on 127.0.0.1:`port`: status and body, `None` if it cannot connect.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Some((status, body))
}
