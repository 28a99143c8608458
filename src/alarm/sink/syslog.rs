//! The syslog sink: each raise or clear as one RFC 5424 message with the alarm in structured
//! data, and (unless `audit = false`) each audit record as one message whose MSG is the
//! record's line exactly as in `audit.log`; over TCP or TLS with RFC 6587 octet-counting
//! framing, or UDP (one datagram each).
//!
//! Formatting is pure ([`format`], [`frame`]) and tested here; [`SyslogSender`] only moves
//! bytes. Invariants: every PARAM-VALUE is escaped (`"`, `\`, `]`), so an alarm text can never
//! end the structured data early; the header fields are printable ASCII without spaces
//! (checked at config load); a TCP/TLS connection that failed is dropped and dialled again at
//! the next attempt, so a message is never half-written into a fresh connection.
//!
//! No syslog crate: the formatter and the framing are some 60 lines, and the crates at hand
//! either write RFC 3164 or offer no octet counting over TLS.

use tokio::io::AsyncWriteExt;
use tokio::net::UdpSocket;

use super::config::{SyslogConfig, Transport};
use super::{AuditCopy, Item, SinkEvent, stream};
use crate::alarm::{AlarmEventKind, Severity};

/// The syslog severity of an event: critical→2 (crit), major→3 (err), minor→4 (warning),
/// warning→5 (notice); a clear is 6 (info).
pub(crate) fn severity_code(ev: &SinkEvent) -> u8 {
    match (ev.event, ev.alarm.severity) {
        (AlarmEventKind::Cleared, _) => 6,
        (AlarmEventKind::Raised, Severity::Critical) => 2,
        (AlarmEventKind::Raised, Severity::Major) => 3,
        (AlarmEventKind::Raised, Severity::Minor) => 4,
        (AlarmEventKind::Raised, Severity::Warning) => 5,
    }
}

/// RFC 5424, 6.3.3: `"`, `\` and `]` are escaped with a backslash inside a PARAM-VALUE.
pub(crate) fn escape_param(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The fixed parts of every message of one sink.
pub(crate) struct Header<'a> {
    pub(crate) facility: u8,
    pub(crate) hostname: &'a str,
    pub(crate) app_name: &'a str,
    pub(crate) procid: u32,
    pub(crate) sd_id: &'a str,
}

/// One RFC 5424 message (without framing):
/// `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [SD-ID name=… severity=… cluster=… about=…
/// cause=… remedy=… event=…] MSG`, MSGID being the alarm name.
pub(crate) fn format(h: &Header<'_>, ev: &SinkEvent) -> String {
    let pri = u16::from(h.facility) * 8 + u16::from(severity_code(ev));
    let ts = crate::alarm::rfc3339(ev.at_unix_ms);
    let a = &ev.alarm;
    let mut sd = format!(
        "[{} name=\"{}\" severity=\"{}\" cluster=\"{}\" about=\"{}\"",
        h.sd_id,
        a.key.name.as_str(),
        a.severity,
        escape_param(ev.cluster.as_str()),
        escape_param(a.key.about.as_str()),
    );
    if let Some(d) = &ev.domain {
        sd.push_str(&format!(" domain=\"{d}\""));
    }
    sd.push_str(&format!(
        " cause=\"{}\" remedy=\"{}\" event=\"{}\"]",
        escape_param(&a.cause),
        escape_param(&a.remedy),
        ev.event
    ));
    let msg = match ev.event {
        AlarmEventKind::Raised => format!("alarm raised: {a}"),
        AlarmEventKind::Cleared => {
            format!("alarm cleared: {} ({}) about cluster {}", a.key.name, a.severity, a.key.about)
        }
    };
    format!(
        "<{pri}>1 {ts} {} {} {} {} {sd} {msg}",
        h.hostname,
        h.app_name,
        h.procid,
        a.key.name.as_str()
    )
}

/// One audit record as an RFC 5424 message: `<PRI>1 TIME HOSTNAME APP-NAME PROCID audit - LINE`.
/// TIME is the record's own `time`; no structured data; MSG is the record's line byte for byte,
/// so a collector's copy hashes as the record does (docs/formats.md) and `imcrypt audit verify`
/// reads the MSG parts of consecutive messages as a chain. Severity 6 (info) for a record whose
/// result is `ok`, 5 (notice) for one refused or failed.
pub(crate) fn format_audit(h: &Header<'_>, a: &AuditCopy) -> String {
    let severity: u16 = if a.result == crate::audit::Outcome::Ok { 6 } else { 5 };
    let pri = u16::from(h.facility) * 8 + severity;
    format!("<{pri}>1 {} {} {} {} audit - {}", a.time, h.hostname, h.app_name, h.procid, a.line)
}

/// RFC 6587, 3.4.1 octet counting: `MSG-LEN SP SYSLOG-MSG`, the length in bytes.
pub(crate) fn frame(msg: &str) -> Vec<u8> {
    let mut out = format!("{} ", msg.len()).into_bytes();
    out.extend_from_slice(msg.as_bytes());
    out
}

/// This machine's host name, as the kernel has it; `-` (NILVALUE) when unknown.
pub(crate) fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty() && s.bytes().all(|b| (33..=126).contains(&b)))
        .unwrap_or_else(|| "-".into())
}

/// Delivers messages to one collector; keeps its TCP/TLS connection between messages.
pub(crate) struct SyslogSender {
    config: SyslogConfig,
    hostname: String,
    conn: Option<stream::Stream>,
    udp: Option<UdpSocket>,
}

impl SyslogSender {
    pub(crate) fn new(config: SyslogConfig) -> Self {
        let hostname = config.hostname.clone().unwrap_or_else(local_hostname);
        Self { config, hostname, conn: None, udp: None }
    }

    fn header(&self) -> Header<'_> {
        Header {
            facility: self.config.facility,
            hostname: &self.hostname,
            app_name: &self.config.app_name,
            procid: std::process::id(),
            sd_id: &self.config.sd_id,
        }
    }

    /// Sends one alarm event; an error leaves no connection behind.
    pub(crate) async fn send(&mut self, ev: &SinkEvent) -> Result<(), String> {
        let msg = format(&self.header(), ev);
        self.send_message(msg).await
    }

    /// Sends one queued item: an alarm event or an audit record's copy.
    pub(crate) async fn send_item(&mut self, item: &Item) -> Result<(), String> {
        match item {
            Item::Alarm(q) => self.send(&q.event).await,
            Item::Audit(a) => {
                let msg = format_audit(&self.header(), a);
                self.send_message(msg).await
            }
        }
    }

    async fn send_message(&mut self, msg: String) -> Result<(), String> {
        let r = tokio::time::timeout(super::ATTEMPT_TIMEOUT, self.send_raw(&msg))
            .await
            .unwrap_or_else(|_| Err("timed out".into()));
        if r.is_err() {
            self.conn = None;
            self.udp = None;
        }
        r
    }

    /// Ends the connection politely (TLS close_notify, then TCP FIN), so the collector does not
    /// log a broken session; best effort.
    pub(crate) async fn close(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            let _ = tokio::time::timeout(super::ATTEMPT_TIMEOUT, conn.shutdown()).await;
        }
    }

    async fn send_raw(&mut self, msg: &str) -> Result<(), String> {
        let address = self.config.address.as_str();
        if self.config.transport == Transport::Udp {
            if self.udp.is_none() {
                let local = if address.starts_with('[') { "[::]:0" } else { "0.0.0.0:0" };
                let s = UdpSocket::bind(local).await.map_err(|e| format!("UDP socket: {e}"))?;
                s.connect(address).await.map_err(|e| format!("UDP to {address}: {e}"))?;
                self.udp = Some(s);
            }
            let s = self.udp.as_ref().expect("bound above");
            s.send(msg.as_bytes()).await.map_err(|e| format!("UDP send to {address}: {e}"))?;
            return Ok(());
        }
        if self.conn.is_none() {
            let ca = match (self.config.transport, &self.config.ca) {
                (Transport::Tls, Some(ca)) => Some(ca),
                // Never plain TCP when TLS was asked for (config load reads the CA).
                (Transport::Tls, None) => return Err("TLS without a CA file".into()),
                _ => None,
            };
            let (host, _) = super::config::host_port(address)?;
            self.conn = Some(stream::connect(address, host, ca).await?);
        }
        let conn = self.conn.as_mut().expect("connected above");
        conn.write_all(&frame(msg)).await.map_err(|e| format!("write to {address}: {e}"))?;
        conn.flush().await.map_err(|e| format!("write to {address}: {e}"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alarm::{Alarm, AlarmName};
    use crate::ids::ClusterId;

    fn event(kind: AlarmEventKind, cause: &str) -> SinkEvent {
        SinkEvent {
            event: kind,
            alarm: Alarm::new(
                AlarmName::MultiMaster,
                ClusterId::new("b").unwrap(),
                cause,
                "disable one side",
            ),
            cluster: ClusterId::new("a").unwrap(),
            domain: None,
            at_unix_ms: 1_764_570_000_123,
        }
    }

    const H: Header<'static> = Header {
        facility: 3,
        hostname: "host1",
        app_name: "imcrypt",
        procid: 42,
        sd_id: "imcrypt@32473",
    };

    #[test]
    fn a_raise_is_one_rfc5424_line_with_the_alarm_as_structured_data() {
        let m = format(&H, &event(AlarmEventKind::Raised, "two masters"));
        assert_eq!(
            m,
            "<26>1 2025-12-01T06:20:00.123Z host1 imcrypt 42 MAencryptionMultiMaster \
             [imcrypt@32473 name=\"MAencryptionMultiMaster\" severity=\"critical\" cluster=\"a\" \
             about=\"b\" cause=\"two masters\" remedy=\"disable one side\" event=\"raised\"] \
             alarm raised: MAencryptionMultiMaster (critical) about cluster b: two masters \
             Remedy: disable one side"
        );
        let c = format(&H, &event(AlarmEventKind::Cleared, "two masters"));
        assert!(c.starts_with("<30>1 "), "daemon.info: {c}");
        assert!(c.contains("event=\"cleared\"]"), "{c}");
    }

    #[test]
    fn an_audit_record_is_one_message_whose_msg_is_the_record_line_byte_for_byte() {
        let line = r#"{"seq":1,"prev":"00","action":"key.download","reason":"a ] \" b"}"#;
        let copy = |result| AuditCopy {
            time: "2026-12-01T06:20:00.123Z".into(),
            result,
            line: line.into(),
        };
        let m = format_audit(&H, &copy(crate::audit::Outcome::Ok));
        assert_eq!(m, format!("<30>1 2026-12-01T06:20:00.123Z host1 imcrypt 42 audit - {line}"));
        let m = format_audit(&H, &copy(crate::audit::Outcome::Failed));
        assert!(m.starts_with("<29>1 "), "daemon.notice: {m}");
    }

    #[test]
    fn param_values_are_escaped_so_the_structured_data_cannot_end_early() {
        assert_eq!(escape_param(r#"a "b" \c ]d"#), r#"a \"b\" \\c \]d"#);
        let m = format(&H, &event(AlarmEventKind::Raised, r#"x"] [evil@1 a="b"#));
        assert!(m.contains(r#"cause="x\"\] [evil@1 a=\"b" "#), "{m}");
    }

    #[test]
    fn severities_map_to_syslog_levels() {
        let mut e = event(AlarmEventKind::Raised, "c");
        for (s, code) in [
            (Severity::Critical, 2),
            (Severity::Major, 3),
            (Severity::Minor, 4),
            (Severity::Warning, 5),
        ] {
            e.alarm.severity = s;
            assert_eq!(severity_code(&e), code);
        }
    }

    fn sink(address: String, transport: Transport) -> SyslogConfig {
        SyslogConfig {
            address,
            transport,
            ca_file: None,
            facility: 3,
            app_name: "imcrypt".into(),
            hostname: Some("h".into()),
            sd_id: super::super::config::DEFAULT_SD_ID.into(),
            audit: true,
            ca: None,
        }
    }

    #[tokio::test]
    async fn udp_sends_one_datagram_per_message_without_framing() {
        let r = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut s = SyslogSender::new(sink(r.local_addr().unwrap().to_string(), Transport::Udp));
        let e = event(AlarmEventKind::Raised, "c");
        s.send(&e).await.unwrap();
        let mut buf = vec![0; 65536];
        let n = r.recv(&mut buf).await.unwrap();
        assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), format(&s.header(), &e));
    }

    /// TLS to a collector whose certificate (for `localhost`) comes from the configured CA.
    #[tokio::test]
    async fn tls_verifies_the_collector_against_the_ca_and_frames_each_message() {
        use crate::pem_files::{self, PemKind};
        use tokio::io::AsyncReadExt;
        let d = tempfile::tempdir().unwrap();
        let id = ClusterId::new("localhost").unwrap();
        crate::pki::init(d.path(), std::slice::from_ref(&id)).unwrap();
        let f = crate::pki::files_of(d.path(), &id);
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                pem_files::certificates(PemKind::Certificate, &f.cert).unwrap(),
                pem_files::private_key(&f.key).unwrap(),
            )
            .unwrap();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let got = tokio::spawn(async move {
            let (tcp, _) = l.accept().await.unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server));
            let mut tls = acceptor.accept(tcp).await.unwrap();
            let mut buf = Vec::new();
            tls.read_to_end(&mut buf).await.ok();
            buf
        });
        let mut c = sink(format!("localhost:{port}"), Transport::Tls);
        c.ca = Some(pem_files::certificates(PemKind::CaCertificate, &f.ca).unwrap().into());
        let mut s = SyslogSender::new(c);
        let e = event(AlarmEventKind::Raised, "c");
        s.send(&e).await.unwrap();
        s.send(&e).await.unwrap();
        drop(s);
        let got =
            tokio::time::timeout(std::time::Duration::from_secs(10), got).await.unwrap().unwrap();
        assert_eq!(got, [frame(&s_message(&e)), frame(&s_message(&e))].concat());
    }

    fn s_message(e: &SinkEvent) -> String {
        format(&SyslogSender::new(sink("h:1".into(), Transport::Tcp)).header(), e)
    }

    #[test]
    fn octet_counting_counts_bytes_not_chars() {
        assert_eq!(frame("<13>1 é"), b"8 <13>1 \xc3\xa9".to_vec());
    }
}
