//! Alarms delivered to the real receivers operators run: rsyslog (imtcp, RFC 5424 with
//! structured data), Prometheus Alertmanager (API v2: fired, then resolved), and a webhook
//! receiver that checks the HMAC signature and, down for a while, then gets every event in
//! order, once. Plus config errors that name the key, a sink that is merely unreachable (the
//! daemon runs, the failures show in status), and `imcrypt alarms test`.
//!
//! The alarm is `MAencryptionMultiMaster`: two masters peered at runtime, then unpeered.

mod support;

use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use imcrypt::demo::{ReservedPort, cid};
use serde_json::Value;
use tokio::sync::mpsc;

use support::services::{Alertmanager, LoopbackTls, Rsyslog};
use support::*;

/// Two masters, a and b, started unpeered; `sinks` (TOML) is a's `[[alarms.sinks]]`.
async fn two_masters(sinks: &str) -> (tempfile::TempDir, Lab) {
    let (d, mut lab) = mesh(&["a", "b"]);
    lab.unpeer("a", "b");
    lab.spec_mut("a").extra_config = sinks.to_owned();
    for id in ["a", "b"] {
        lab.start(id).await.unwrap();
        lab.daemon(id).unwrap().command(enable(false)).await.unwrap();
    }
    (d, lab)
}

/// Peers a and b at runtime: both are masters, so both raise `MAencryptionMultiMaster`.
async fn peer_at_runtime(lab: &Lab) {
    let (a, b) = (lab.daemon("a").unwrap(), lab.daemon("b").unwrap());
    a.control().add_peer(cid("b"), b.peer_addr().to_string()).await.unwrap();
    b.control().add_peer(cid("a"), a.peer_addr().to_string()).await.unwrap();
    lab.wait_until("a", "multi-master alarm", WAIT, |s| has_alarm(s, AlarmName::MultiMaster, "b"))
        .await
        .unwrap();
}

/// Ends the peering at runtime: the conflict ends, the alarm clears.
async fn unpeer_at_runtime(lab: &Lab) {
    lab.daemon("a").unwrap().control().remove_peer(cid("b")).await.unwrap();
    lab.daemon("b").unwrap().control().remove_peer(cid("a")).await.unwrap();
    lab.wait_until("a", "multi-master alarm cleared", WAIT, |s| {
        !has_alarm(s, AlarmName::MultiMaster, "b")
    })
    .await
    .unwrap();
}

async fn domain_of(lab: &Lab, id: &str) -> String {
    lab.status(id).await.unwrap().domain.unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyslog_writes_the_alarm_as_an_rfc5424_line_with_structured_data() {
    let rsyslog = Rsyslog::start();
    bounded(async {
        let sink = format!(
            "[[alarms.sinks]]\nname = \"central\"\nkind = \"syslog\"\naddress = \"{}\"\n\
             transport = \"tcp\"\nhostname = \"im-a.example\"\naudit = false\n",
            rsyslog.address()
        );
        let (_d, mut lab) = two_masters(&sink).await;
        peer_at_runtime(&lab).await;
        let line = wait_for("the raise in rsyslog's file", WAIT, async || {
            rsyslog.messages().into_iter().find(|l| l.contains("event=\"raised\""))
        })
        .await;
        // daemon.crit = 3 * 8 + 2
        assert!(line.starts_with("<26>1 20"), "{line}");
        let fields: Vec<&str> = line.splitn(8, ' ').collect();
        assert_eq!(
            fields[2..6],
            ["im-a.example", "imcrypt", &std::process::id().to_string(), "MAencryptionMultiMaster"],
            "{line}"
        );
        assert!(
            line.contains(
                "[imcrypt@32473 name=\"MAencryptionMultiMaster\" severity=\"critical\" \
                 cluster=\"a\" about=\"b\""
            ),
            "{line}"
        );
        assert!(line.contains(&format!("domain=\"{}\"", domain_of(&lab, "a").await)), "{line}");
        assert!(line.contains(" cause=\"") && line.contains(" remedy=\""), "{line}");

        unpeer_at_runtime(&lab).await;
        let clear = wait_for("the clear in rsyslog's file", WAIT, async || {
            rsyslog.messages().into_iter().find(|l| l.contains("event=\"cleared\""))
        })
        .await;
        assert!(clear.starts_with("<30>1 "), "daemon.info: {clear}");
        let s = lab.status("a").await.unwrap();
        assert_eq!(s.sinks[0].name, "central");
        assert_eq!(s.sinks[0].counters.delivered, 2, "{:?}", s.sinks);
        lab.stop_all().await;
    })
    .await;
}

/// The syslog sink's copy of the audit trail: one message per record, MSGID `audit`, whose MSG
/// is the record's line exactly as in `audit.log`, in the same order, at any `min_severity`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyslog_gets_every_audit_record_as_the_same_line_as_in_audit_log() {
    let rsyslog = Rsyslog::start();
    bounded(async {
        let sink = format!(
            "[[alarms.sinks]]\nname = \"central\"\nkind = \"syslog\"\naddress = \"{}\"\n\
             min_severity = \"critical\"\n",
            rsyslog.address()
        );
        let (d, mut lab) = mesh(&["a"]);
        lab.spec_mut("a").extra_config = sink;
        lab.start("a").await.unwrap();
        let a = lab.daemon("a").unwrap();
        a.command(enable(false)).await.unwrap();
        a.command(Command::RotateKey).await.unwrap();
        let log = d.path().join("state/a/audit.log");
        let on_disk: Vec<String> =
            std::fs::read_to_string(&log).unwrap().lines().map(str::to_owned).collect();
        assert!(
            on_disk.iter().any(|l| l.contains("\"action\":\"key.rotate\"")),
            "the rotation is in the trail: {on_disk:?}"
        );
        let copies = wait_for("every audit record in rsyslog's file", WAIT, async || {
            let copies: Vec<String> = rsyslog
                .messages()
                .iter()
                .filter_map(|m| Some(m.split_once(" audit - ")?.1.to_owned()))
                .collect();
            (copies.len() >= on_disk.len()).then_some(copies)
        })
        .await;
        assert_eq!(copies[..on_disk.len()], on_disk[..], "the copies are the lines, in order");
        // As documented: the collector's copies, one per line, verify as a chain.
        let copy_file = d.path().join("collected.log");
        std::fs::write(&copy_file, copies.join("\n") + "\n").unwrap();
        let o = imcrypt(&["audit", "verify", copy_file.to_str().unwrap()], "").await;
        assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
        let first = rsyslog.messages().into_iter().find(|m| m.contains(" audit - ")).unwrap();
        assert!(first.starts_with("<30>1 20"), "daemon.info for a record that is ok: {first}");
        lab.stop_all().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alertmanager_gets_the_alert_and_then_sees_it_resolved_after_the_unpeering() {
    let am = Alertmanager::start();
    bounded(async {
        // Re-sent every 20 s with endsAt 60 s ahead: the alert can only vanish within the
        // wait below because imcrypt resolved it, not because it expired.
        let sink = format!(
            "[[alarms.sinks]]\nname = \"am\"\nkind = \"alertmanager\"\nurl = \"{}\"\n\
             resend_interval = \"20s\"\nmin_severity = \"major\"\n",
            am.url()
        );
        let (_d, mut lab) = two_masters(&sink).await;
        peer_at_runtime(&lab).await;
        let domain = domain_of(&lab, "a").await;
        let alert = wait_for("the alert in Alertmanager", WAIT, async || {
            am.alerts()
                .as_array()
                .unwrap()
                .iter()
                .find(|a| {
                    a["labels"]["alertname"] == "MAencryptionMultiMaster"
                        && a["labels"]["cluster"] == "a"
                })
                .cloned()
        })
        .await;
        let labels = &alert["labels"];
        assert_eq!(labels["severity"], "critical");
        assert_eq!(labels["about"], "b");
        assert_eq!(labels["domain"], domain.as_str());
        assert!(!alert["annotations"]["cause"].as_str().unwrap().is_empty(), "{alert}");
        assert!(!alert["annotations"]["remedy"].as_str().unwrap().is_empty(), "{alert}");
        assert_eq!(alert["status"]["state"], "active", "{alert}");

        unpeer_at_runtime(&lab).await;
        wait_for("the alert resolved", Duration::from_secs(10), async || {
            let gone =
                am.alerts().as_array().unwrap().iter().all(|a| a["labels"]["cluster"] != "a");
            gone.then_some(())
        })
        .await;
        let s = lab.status("a").await.unwrap();
        assert!(s.sinks[0].counters.delivered >= 2, "{:?}", s.sinks);
        assert_eq!(s.sinks[0].counters.undelivered, 0, "{:?}", s.sinks);

        // `imcrypt alarms test` reaches the same Alertmanager, whatever min_severity says.
        let config = lab.dir().join("a.toml");
        let out = imcrypt(&["alarms", "test", "--config", config.to_str().unwrap()], "").await;
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
        assert!(
            out.stdout.starts_with("am ") && out.stdout.contains(" delivered"),
            "{}",
            out.stdout
        );
        let test = wait_for("the test alert", WAIT, async || {
            am.alerts()
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["labels"]["alertname"] == "MAimcryptTest")
                .cloned()
        })
        .await;
        assert_eq!(test["labels"]["severity"], "warning", "{test}");
        lab.stop_all().await;
    })
    .await;
}

/// TLS to the real servers: rsyslog's TLS input (GnuTLS) and Alertmanager over HTTPS, each
/// with a certificate for 127.0.0.1 from a CA the sinks are given; a third sink given another
/// CA never delivers and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_the_alarm_reaches_rsyslog_and_alertmanager_and_a_wrong_ca_is_refused() {
    let (tls, other) = (LoopbackTls::new(), LoopbackTls::new());
    let (rsyslog, am) = (Rsyslog::start_with(Some(&tls)), Alertmanager::start_with(Some(&tls)));
    assert!(am.url().starts_with("https://127.0.0.1:"), "{}", am.url());
    bounded(async {
        let sinks = format!(
            "[[alarms.sinks]]\nname = \"central\"\nkind = \"syslog\"\naddress = \"{}\"\n\
             transport = \"tls\"\nca_file = \"{}\"\n\n\
             [[alarms.sinks]]\nname = \"am\"\nkind = \"alertmanager\"\nurl = \"{}\"\n\
             ca_file = \"{}\"\n\n\
             [[alarms.sinks]]\nname = \"impostor\"\nkind = \"alertmanager\"\nurl = \"{}\"\n\
             ca_file = \"{}\"\n",
            rsyslog.address(),
            tls.ca.display(),
            am.url(),
            tls.ca.display(),
            am.url(),
            other.ca.display(),
        );
        let (_d, mut lab) = two_masters(&sinks).await;
        peer_at_runtime(&lab).await;
        let line = wait_for("the raise in rsyslog's file, over TLS", WAIT, async || {
            rsyslog.messages().into_iter().find(|l| l.contains("event=\"raised\""))
        })
        .await;
        assert!(line.contains("[imcrypt@32473 name=\"MAencryptionMultiMaster\""), "{line}");
        wait_for("the alert in Alertmanager, over HTTPS", WAIT, async || {
            let alerts = am.alerts();
            let found = alerts.as_array().unwrap().iter().any(|a| {
                a["labels"]["alertname"] == "MAencryptionMultiMaster"
                    && a["labels"]["cluster"] == "a"
            });
            found.then_some(())
        })
        .await;
        let s = wait_for("the impostor sink's failure", WAIT, async || {
            let s = lab.status("a").await.unwrap();
            let impostor = s.sinks.iter().find(|k| k.name == "impostor").unwrap();
            (impostor.counters.failed_attempts > 0).then_some(s)
        })
        .await;
        for k in &s.sinks {
            let c = &k.counters;
            match k.name.as_str() {
                "impostor" => {
                    assert_eq!(c.delivered, 0, "{k:?}");
                    let why = c.last_error.as_deref().unwrap_or_default();
                    assert!(why.contains("certificate"), "the error says why: {why}");
                }
                _ => assert!(c.delivered >= 1 && c.failed_attempts == 0, "{k:?}"),
            }
        }
        lab.stop_all().await;
    })
    .await;
}

/// A webhook receiver on `listener`: checks each POST's signature under `secret` and passes
/// the verified bodies on (a bad signature is answered 401 and passed on as an error).
fn webhook_receiver(
    listener: tokio::net::TcpListener,
    secret: &'static [u8],
) -> mpsc::UnboundedReceiver<Result<Value, String>> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let header = |n: &str| {
                            req.headers()
                                .get(n)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned()
                        };
                        let (ts, sig) =
                            (header("x-imcrypt-timestamp"), header("x-imcrypt-signature"));
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        // The receiver's side of docs/operations.md.
                        use hmac::{KeyInit, Mac};
                        let mut mac =
                            <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret).unwrap();
                        mac.update(format!("{ts}.").as_bytes());
                        mac.update(&body);
                        let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
                        let ok = want == sig;
                        let _ = tx.send(if ok {
                            Ok(serde_json::from_slice(&body).unwrap())
                        } else {
                            Err(format!("bad signature {sig:?}"))
                        });
                        let status = if ok { 200 } else { 401 };
                        Ok::<_, Infallible>(
                            hyper::Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::new()))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    rx
}

const SECRET: &[u8] = b"a webhook secret for the tests";

/// Writes the webhook secret (mode 0600) into `dir` and returns its path.
fn secret_file(dir: &Path) -> PathBuf {
    let p = dir.join("hook.secret");
    std::fs::write(&p, [SECRET, b"\n"].concat()).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_receiver_down_for_a_while_then_gets_every_event_signed_in_order_once() {
    bounded(async {
        let port = ReservedPort::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let sink = format!(
            "[[alarms.sinks]]\nname = \"hook\"\nkind = \"webhook\"\n\
             url = \"http://127.0.0.1:{}/imcrypt\"\nsecret_file = \"{}\"\n",
            port.port(),
            secret_file(dir.path()).display()
        );
        let (_d, mut lab) = two_masters(&sink).await;
        // Raised and cleared while nobody listens.
        peer_at_runtime(&lab).await;
        unpeer_at_runtime(&lab).await;
        let s = lab
            .wait_until("a", "failed attempts counted", WAIT, |s| {
                s.sinks[0].counters.failed_attempts >= 2
            })
            .await
            .unwrap();
        let c = &s.sinks[0].counters;
        assert_eq!(c.delivered, 0, "{c:?}");
        assert!(c.last_error.as_deref().unwrap().contains("connect to"), "{c:?}");

        // The receiver comes up on its port.
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port.port())).await.unwrap();
        let mut rx = webhook_receiver(listener, SECRET);
        let mut events = Vec::new();
        for _ in 0..2 {
            let e = tokio::time::timeout(WAIT, rx.recv()).await.expect("an event").unwrap();
            events.push(e.expect("a valid signature"));
        }
        // Once: nothing more comes, not even a retry of what was delivered.
        assert!(tokio::time::timeout(Duration::from_secs(2), rx.recv()).await.is_err());
        let kinds: Vec<(&str, &str, u64)> = events
            .iter()
            .map(|e| {
                (
                    e["event"].as_str().unwrap(),
                    e["alarm"].as_str().unwrap(),
                    e["sequence"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            kinds,
            [("raised", "MAencryptionMultiMaster", 1), ("cleared", "MAencryptionMultiMaster", 2)]
        );
        assert_ne!(events[0]["id"], events[1]["id"]);
        assert_eq!(
            (events[0]["cluster"].as_str(), events[0]["about"].as_str()),
            (Some("a"), Some("b"))
        );
        assert_eq!(events[0]["severity"], "critical");
        let s = lab.status("a").await.unwrap();
        assert_eq!(s.sinks[0].counters.delivered, 2, "{:?}", s.sinks);
        lab.stop_all().await;
    })
    .await;
}

/// The error of starting `a` with `sinks` as its `[[alarms.sinks]]`.
async fn start_err(lab: &mut Lab, sinks: String) -> String {
    lab.spec_mut("a").extra_config = sinks;
    lab.start("a").await.expect_err("refused").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_sink_config_names_the_key_and_an_unreachable_sink_does_not_stop_the_daemon() {
    bounded(async {
        let (d, mut lab) = mesh(&["a", "b"]);
        lab.unpeer("a", "b");
        let e = start_err(&mut lab, "[[alarms.sinks]]\nname = \"m\"\nkind = \"smtp\"\n".into()).await;
        assert!(e.contains("alarms.sinks[0].kind: unknown kind \"smtp\""), "{e}");

        let missing = d.path().join("missing.secret");
        let hook = |secret: &Path| {
            format!(
                "[[alarms.sinks]]\nname = \"ok\"\nkind = \"syslog\"\naddress = \"127.0.0.1:9\"\n\
                 [[alarms.sinks]]\nname = \"hook\"\nkind = \"webhook\"\n\
                 url = \"http://127.0.0.1:9/\"\nsecret_file = \"{}\"\n",
                secret.display()
            )
        };
        let e = start_err(&mut lab, hook(&missing)).await;
        assert!(
            e.contains(&format!("alarms.sinks[1].secret_file: {}: cannot read it", missing.display())),
            "{e}"
        );
        let open = secret_file(d.path());
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = start_err(&mut lab, hook(&open)).await;
        assert!(e.contains("alarms.sinks[1].secret_file: ") && e.contains("chmod 600"), "{e}");

        // Unreachable: nobody listens on these reserved ports. The daemon starts anyway.
        let (p1, p2) = (ReservedPort::new().unwrap(), ReservedPort::new().unwrap());
        drop(lab);
        let (_d2, mut lab) = two_masters(&format!(
            "[[alarms.sinks]]\nname = \"down-syslog\"\nkind = \"syslog\"\naddress = \"127.0.0.1:{}\"\n\
             [[alarms.sinks]]\nname = \"down-hook\"\nkind = \"webhook\"\n\
             url = \"http://127.0.0.1:{}/\"\nsecret_file = \"{}\"\n",
            p1.port(),
            p2.port(),
            secret_file(d.path()).display()
        ))
        .await;
        peer_at_runtime(&lab).await;
        let s = lab
            .wait_until("a", "both sinks failing", WAIT, |s| {
                s.sinks.iter().all(|k| k.counters.failed_attempts >= 1)
            })
            .await
            .unwrap();
        for k in &s.sinks {
            assert_eq!(k.counters.delivered, 0, "{k:?}");
            assert!(k.counters.last_error.as_deref().unwrap().contains("connect to"), "{k:?}");
        }
        assert_eq!(
            s.sinks.iter().map(|k| (k.name.as_str(), k.kind.as_str())).collect::<Vec<_>>(),
            [("down-syslog", "syslog"), ("down-hook", "webhook")]
        );
        lab.stop_all().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imcrypt_alarms_test_reports_each_sink_and_fails_when_one_did_not_take_it() {
    bounded(async {
        let (d, mut lab) = mesh(&["a"]);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hook_port = listener.local_addr().unwrap().port();
        let mut rx = webhook_receiver(listener, SECRET);
        let down = ReservedPort::new().unwrap();
        secret_file(d.path());
        lab.spec_mut("a").extra_config = format!(
            "[[alarms.sinks]]\nname = \"hook\"\nkind = \"webhook\"\n\
             url = \"http://127.0.0.1:{hook_port}/\"\nsecret_file = \"hook.secret\"\n\
             [[alarms.sinks]]\nname = \"down\"\nkind = \"syslog\"\naddress = \"127.0.0.1:{}\"\n\
             min_severity = \"critical\"\n",
            down.port()
        );
        let config = lab.write_config(&cid("a")).unwrap();
        let config = config.to_str().unwrap();

        let out = imcrypt(&["alarms", "test", "--config", config], "").await;
        assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
        assert!(
            out.stdout.lines().any(|l| l.starts_with("hook ") && l.ends_with(" delivered")),
            "{}",
            out.stdout
        );
        assert!(
            out.stdout.lines().any(|l| l.starts_with("down ") && l.contains("failed: connect to")),
            "{}",
            out.stdout
        );
        assert!(out.stderr.contains("1 of 2 alarm sinks"), "{}", out.stderr);
        let e = rx.recv().await.unwrap().expect("a valid signature");
        assert_eq!(
            (e["alarm"].as_str(), e["severity"].as_str()),
            (Some("MAimcryptTest"), Some("warning"))
        );
        assert_eq!((e["cluster"].as_str(), e["about"].as_str()), (Some("a"), Some("a")));

        let out = imcrypt(&["alarms", "test", "--sink", "hook", "--config", config], "").await;
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
        assert_eq!(out.stdout.lines().count(), 1, "{}", out.stdout);
        rx.recv().await.unwrap().expect("a valid signature");

        let out = imcrypt(&["alarms", "test", "--sink", "nope", "--config", config], "").await;
        assert_eq!(out.code, 3, "{}{}", out.stdout, out.stderr);
        assert!(out.stderr.contains("no alarm sink named \"nope\""), "{}", out.stderr);
    })
    .await;
}
