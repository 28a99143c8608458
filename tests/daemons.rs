//! Several real daemons (tasks of this process) on 127.0.0.1, talking mutual TLS 1.3: every
//! scenario of the manual across the wire. Each test is bounded in time and cleans up.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eligible_peers_are_enrolled_and_a_peer_added_later_too() {
    bounded(async {
        let (_d, mut lab) = mesh(&["a", "b", "c", "e"]);
        lab.unpeer("a", "e");
        lab.unpeer("b", "e");
        lab.unpeer("c", "e");
        for id in ["a", "b", "c"] {
            lab.start(id).await.unwrap();
        }
        lab.daemon("a").unwrap().command(enable(true)).await.unwrap();
        let a = lab.status("a").await.unwrap();
        assert_eq!(a.role, Role::Master);
        for id in ["b", "c"] {
            let s = lab.wait_until(id, "slave of a", WAIT, is_slave_of("a")).await.unwrap();
            assert_eq!(s.domain, a.domain);
            assert_eq!(s.key_versions, a.key_versions);
        }
        // e is peered with a later (a's config gains it; a restarts with its state).
        lab.peer("a", "e");
        lab.restart("a").await.unwrap();
        lab.start("e").await.unwrap();
        let e = lab.wait_until("e", "slave of a", WAIT, is_slave_of("a")).await.unwrap();
        assert_eq!(e.domain, a.domain);
        lab.stop_all().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ineligible_and_older_peers_are_enrolled_once_they_restart_eligible_and_upgraded() {
    bounded(async {
        let (_d, mut lab) = mesh(&["a", "b", "c"]);
        lab.spec_mut("b").nodes =
            vec![("b1".into(), "postgresql".into()), ("b2".into(), "none".into())];
        lab.spec_mut("c").legacy_software = true;
        for id in ["a", "b", "c"] {
            lab.start(id).await.unwrap();
        }
        lab.daemon("a").unwrap().command(enable(true)).await.unwrap();
        // The master shows why each is not enrolled.
        let a = lab
            .wait_until("a", "both peers' reasons shown", WAIT, |s| {
                let rel = |id: &str| {
                    s.peers.iter().find(|p| p.id.as_str() == id).map(|p| p.relation.to_string())
                };
                rel("b").is_some_and(|r| r.starts_with("not enrolled: ") && r.contains("b2"))
                    && rel("c").is_some_and(|r| {
                        r.starts_with("not enrolled: ") && r.contains("support encryption")
                    })
            })
            .await
            .unwrap();
        let rel =
            |id: &str| a.peers.iter().find(|p| p.id.as_str() == id).unwrap().relation.to_string();
        assert!(rel("b").contains("b2"), "{}", rel("b"));
        assert!(
            rel("c").contains("does not support encryption") || rel("c").contains("upgrade"),
            "{}",
            rel("c")
        );
        for id in ["b", "c"] {
            assert_eq!(lab.status(id).await.unwrap().role, Role::Off);
        }
        // b gets its archiver configured, c is upgraded; both restart and are enrolled.
        lab.spec_mut("b").nodes[1].1 = "sql_server".into();
        lab.spec_mut("c").legacy_software = false;
        for id in ["b", "c"] {
            lab.restart(id).await.unwrap();
        }
        for id in ["b", "c"] {
            lab.wait_until(id, "slave of a", WAIT, is_slave_of("a")).await.unwrap();
        }
        lab.stop_all().await;
    })
    .await;
}

async fn assert_conflict(lab: &Lab, x: &str, y: &str) {
    for (p, q) in [(x, y), (y, x)] {
        let s = lab
            .wait_until(p, "multi-master alarm", WAIT, |s| has_alarm(s, AlarmName::MultiMaster, q))
            .await
            .unwrap();
        let al = s.alarms.iter().find(|a| a.key.name == AlarmName::MultiMaster).unwrap();
        assert!(!al.cause.is_empty() && !al.remedy.is_empty());
    }
}

async fn assert_cleared(lab: &Lab, x: &str, y: &str) {
    for (p, q) in [(x, y), (y, x)] {
        lab.wait_until(p, "multi-master alarm cleared", WAIT, |s| {
            !has_alarm(s, AlarmName::MultiMaster, q)
        })
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_three_multi_master_cases_raise_on_both_sides_and_clear() {
    bounded(async {
        // Domain 1: a (master) with slave b. Domain 2: d (master) with slave e.
        let (_d, mut lab) = mesh(&["a", "b", "d", "e"]);
        for (x, y) in [("a", "d"), ("a", "e"), ("b", "d"), ("b", "e"), ("d", "b")] {
            lab.unpeer(x, y);
        }
        for id in ["a", "b", "d", "e"] {
            lab.start(id).await.unwrap();
        }
        lab.daemon("a").unwrap().command(enable(true)).await.unwrap();
        lab.daemon("d").unwrap().command(enable(true)).await.unwrap();
        lab.wait_until("b", "slave of a", WAIT, is_slave_of("a")).await.unwrap();
        lab.wait_until("e", "slave of d", WAIT, is_slave_of("d")).await.unwrap();
        let dom1 = lab.status("a").await.unwrap().domain;
        let dom2 = lab.status("d").await.unwrap().domain;
        assert_ne!(dom1, dom2);

        // Case 1: master a peered with master d.
        lab.peer("a", "d");
        for id in ["a", "d"] {
            lab.restart(id).await.unwrap();
        }
        assert_conflict(&lab, "a", "d").await;
        lab.unpeer("a", "d");
        for id in ["a", "d"] {
            lab.restart(id).await.unwrap();
        }
        for id in ["a", "d"] {
            let s = lab.status(id).await.unwrap();
            assert!(s.alarms.iter().all(|al| al.key.name != AlarmName::MultiMaster), "{id}: {s:?}");
        }

        // Case 2: master d peered with b, a slave of a.
        lab.peer("b", "d");
        for id in ["b", "d"] {
            lab.restart(id).await.unwrap();
        }
        assert_conflict(&lab, "b", "d").await;
        lab.unpeer("b", "d");
        for id in ["b", "d"] {
            lab.restart(id).await.unwrap();
        }

        // Case 3: slave b (of a) peered with slave e (of d).
        lab.peer("b", "e");
        for id in ["b", "e"] {
            lab.restart(id).await.unwrap();
        }
        assert_conflict(&lab, "b", "e").await;
        // Nothing crossed: each kept its own domain.
        assert_eq!(lab.status("b").await.unwrap().domain, dom1);
        assert_eq!(lab.status("e").await.unwrap().domain, dom2);
        // The relation ends when d disables its domain: e leaves it, both alarms clear.
        lab.daemon("d").unwrap().command(disable_domain()).await.unwrap();
        assert_cleared(&lab, "b", "e").await;
        assert_eq!(lab.status("b").await.unwrap().role, Role::Slave);
        lab.stop_all().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_on_master_reaches_every_slave_even_one_that_was_down() {
    bounded(async {
        let (_d, mut lab) = mesh(&["a", "b", "c"]);
        for id in ["a", "b", "c"] {
            lab.start(id).await.unwrap();
        }
        lab.daemon("a").unwrap().command(enable(true)).await.unwrap();
        for id in ["b", "c"] {
            lab.wait_until(id, "slave of a", WAIT, is_slave_of("a")).await.unwrap();
        }
        lab.stop("c").await.unwrap();
        // Refused by accident: the keys were never downloaded.
        let e = lab
            .daemon("a")
            .unwrap()
            .command(disable_unacknowledged())
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("download"), "{e}");
        assert_eq!(lab.status("a").await.unwrap().role, Role::Master);
        lab.daemon("a").unwrap().command(disable_domain()).await.unwrap();
        lab.wait_until("b", "off", WAIT, |s| s.role == Role::Off && s.key_versions.is_empty())
            .await
            .unwrap();
        lab.start("c").await.unwrap();
        let c = lab
            .wait_until("c", "off after coming back", WAIT, |s| s.role == Role::Off)
            .await
            .unwrap();
        assert!(c.key_versions.is_empty() && c.domain.is_none());
        lab.stop_all().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_on_a_slave_needs_the_masters_password() {
    bounded(async {
        let (_d, mut lab) = mesh(&["a", "b"]);
        for id in ["a", "b"] {
            lab.start(id).await.unwrap();
        }
        lab.daemon("a").unwrap().command(enable(true)).await.unwrap();
        lab.wait_until("b", "slave of a", WAIT, is_slave_of("a")).await.unwrap();
        let wrong = lab
            .daemon("b")
            .unwrap()
            .command(Command::Disable {
                password: pw("Wrong-Passw0rd-xyz"),
                i_understand_data_loss: false,
            })
            .await;
        assert!(wrong.is_err());
        assert_eq!(lab.status("b").await.unwrap().role, Role::Slave);
        lab.daemon("b")
            .unwrap()
            .command(Command::Disable { password: pw(PASSWORD), i_understand_data_loss: false })
            .await
            .unwrap();
        assert_eq!(lab.status("b").await.unwrap().role, Role::Off);
        // The master does not enroll it again at the next exchanges (three hellos: time passes
        // on purpose, since nothing is to happen).
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(lab.status("b").await.unwrap().role, Role::Off);
        assert_eq!(lab.status("a").await.unwrap().role, Role::Master);
        lab.stop_all().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_killed_slaves_keep_keys_and_alarm_then_recover_and_restarts_keep_state() {
    bounded(async {
        let (_d, mut lab) = mesh(&["a", "b", "c"]);
        for id in ["a", "b", "c"] {
            lab.spec_mut(id).master_unreachable_after = Duration::from_millis(1500);
            lab.start(id).await.unwrap();
        }
        lab.daemon("a").unwrap().command(enable(true)).await.unwrap();
        let b0 = lab.wait_until("b", "slave of a", WAIT, is_slave_of("a")).await.unwrap();
        lab.wait_until("c", "slave of a", WAIT, is_slave_of("a")).await.unwrap();

        lab.kill("a").await.unwrap();
        for id in ["b", "c"] {
            let s = lab
                .wait_until(id, "master unreachable", WAIT, |s| {
                    has_alarm(s, AlarmName::MasterUnreachable, "a")
                })
                .await
                .unwrap();
            assert_eq!(s.role, Role::Slave);
            assert_eq!(s.key_versions, b0.key_versions, "{id} keeps its keys");
        }

        lab.start("a").await.unwrap();
        assert_eq!(lab.status("a").await.unwrap().domain, b0.domain, "a kept its state");
        for id in ["b", "c"] {
            lab.wait_until(id, "alarm cleared", WAIT, |s| {
                !has_alarm(s, AlarmName::MasterUnreachable, "a")
            })
            .await
            .unwrap();
        }
        lab.daemon("a").unwrap().command(Command::RotateKey).await.unwrap();
        for id in ["b", "c"] {
            lab.wait_until(id, "key v2", WAIT, |s| s.key_versions.len() == 2).await.unwrap();
        }

        // A slave restarted (cleanly or killed) keeps its role, domain and keys.
        lab.restart("b").await.unwrap();
        lab.kill("c").await.unwrap();
        lab.start("c").await.unwrap();
        for id in ["b", "c"] {
            let s = lab.status(id).await.unwrap();
            assert_eq!(s.role, Role::Slave);
            assert_eq!(s.domain, b0.domain);
            assert_eq!(s.key_versions.len(), 2);
        }
        lab.stop_all().await;
    })
    .await;
}

/// The alarm history of `id`, as `imcrypt alarms -o json` shows it to its operator:
/// (event, alarm name, about) per raise or clear, oldest first.
async fn alarm_history(dir: &std::path::Path, id: &str) -> Vec<(String, String, String)> {
    let config = dir.join(format!("{id}.toml"));
    let o = imcrypt(&["alarms", "-c", config.to_str().unwrap(), "-o", "json"], "").await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    let field = |e: &serde_json::Value, k: &str| e[k].as_str().unwrap_or_default().to_owned();
    let history = v["history"].as_array().expect("a history");
    history.iter().map(|e| (field(e, "event"), field(e, "name"), field(e, "about"))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolment_raises_no_alarm_and_a_long_master_outage_is_raised_once() {
    bounded(async {
        let (d, mut lab) = mesh(&["a", "b", "c"]);
        for id in ["a", "b", "c"] {
            lab.spec_mut(id).hello_interval = Duration::from_millis(200);
            lab.spec_mut(id).master_unreachable_after = Duration::from_millis(1500);
            lab.start(id).await.unwrap();
        }
        lab.daemon("a").unwrap().command(enable(true)).await.unwrap();
        for id in ["b", "c"] {
            lab.wait_until(id, "slave of a", WAIT, is_slave_of("a")).await.unwrap();
        }
        // A few hello rounds after the enrolment: still nothing, anywhere.
        tokio::time::sleep(Duration::from_millis(600)).await;
        for id in ["a", "b", "c"] {
            assert_eq!(alarm_history(d.path(), id).await, [], "{id}: enrolment raised an alarm");
        }
        // a stays down for several times the threshold; b re-derives its alarms at every
        // hello from c, with the seconds of silence in the cause.
        lab.stop("a").await.unwrap();
        lab.wait_until("b", "master unreachable", WAIT, |s| {
            has_alarm(s, AlarmName::MasterUnreachable, "a")
        })
        .await
        .unwrap();
        let first = lab.status("b").await.unwrap();
        let cause = |s: &Status| {
            let a = s.alarms.iter().find(|al| al.key.name == AlarmName::MasterUnreachable);
            a.map(|al| al.cause.clone()).unwrap_or_default()
        };
        let later = lab
            .wait_until("b", "the cause updated", WAIT, |s| cause(s) != cause(&first))
            .await
            .unwrap();
        assert!(cause(&later).contains("has not been heard from for"), "{}", cause(&later));
        lab.start("a").await.unwrap();
        lab.wait_until("b", "alarm cleared", WAIT, |s| {
            !has_alarm(s, AlarmName::MasterUnreachable, "a")
        })
        .await
        .unwrap();
        let unreachable = "MAencryptionMasterUnreachable".to_owned();
        assert_eq!(
            alarm_history(d.path(), "b").await,
            [
                ("raised".to_owned(), unreachable.clone(), "a".to_owned()),
                ("cleared".to_owned(), unreachable, "a".to_owned())
            ],
            "one outage: one raise, one clear"
        );
        lab.stop_all().await;
    })
    .await;
}

/// A raw HTTPS POST of a hello-shaped body to `addr` with the given TLS client config.
async fn raw_post(
    addr: std::net::SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    name: &str,
) -> Result<u16, String> {
    use http_body_util::Full;
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let sn = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(sn, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
    tokio::spawn(conn);
    let req = hyper::Request::post("/v1/peer/message")
        .header("host", name)
        .body(Full::new(bytes::Bytes::from_static(b"{}")))
        .unwrap();
    let resp = send.send_request(req).await.map_err(|e| format!("HTTP: {e}"))?;
    Ok(resp.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_with_a_wrong_certificate_or_none_are_refused() {
    bounded(async {
        // x has a certificate from the same CA but is not a configured peer of a.
        let (d, mut lab) = mesh(&["a", "b", "x"]);
        lab.unpeer("a", "x");
        lab.unpeer("b", "x");
        lab.start("a").await.unwrap();
        let addr = lab.daemon("a").unwrap().peer_addr();
        let pki = d.path().join("pki");
        let files = |id: &str| imcrypt::peer::tls::TlsFiles {
            cert: pki.join(format!("{id}.pem")),
            key: pki.join(format!("{id}.key")),
            ca: pki.join("ca.pem"),
        };
        let load = |id: &str| {
            let tls = imcrypt::peer::tls::PeerTls::load(&files(id), &imcrypt::demo::cid(id), &[]);
            // The shared CA is every peer's: one client serves whichever is dialled.
            tls.unwrap().client_for(&imcrypt::demo::cid("a")).unwrap()
        };
        let (x, b) = (load("x"), load("b"));

        // A configured peer gets an answer (400: the body is no peer message).
        assert_eq!(raw_post(addr, b.clone(), "a").await, Ok(400));
        // A certificate for a cluster id that is not a configured peer: refused.
        assert!(raw_post(addr, x.clone(), "a").await.is_err());
        // No client certificate at all: the handshake completes (a cluster presenting a
        // peering token has none yet), but a peer message is refused, 403, and reaches nothing
        // (docs/operations.md, "Listeners"; tests/peering.rs has the establish side).
        let anon = tls_client_trusting(&pki.join("ca.pem"));
        assert_eq!(raw_post(addr, anon, "a").await, Ok(403));
        // A server whose certificate does not name the cluster dialled is refused by the client.
        let e = raw_post(addr, b.clone(), "c").await.unwrap_err();
        assert!(e.contains("TLS"), "{e}");
        assert_eq!(lab.status("a").await.unwrap().role, Role::Off);
        lab.stop_all().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_rotates_by_itself_when_the_primary_key_is_older_than_rotate_after() {
    bounded(async {
        let (_d, mut lab) = mesh(&["a", "b"]);
        // Key versions carry whole seconds; 2 s of age is the shortest meaningful setting.
        lab.spec_mut("a").rotate_after = Some(Duration::from_secs(2));
        for id in ["a", "b"] {
            lab.start(id).await.unwrap();
        }
        lab.daemon("a").unwrap().command(enable(true)).await.unwrap();
        lab.wait_until("b", "slave of a", WAIT, is_slave_of("a")).await.unwrap();
        let b = lab
            .wait_until("b", "a second key version", WAIT, |s| s.key_versions.len() >= 2)
            .await
            .unwrap();
        assert_eq!(b.primary_version.map(|v| v.get()), Some(b.key_versions.len() as u32));
        lab.stop_all().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_added_at_runtime_is_dialled_and_enrolled_and_removing_it_cuts_the_link() {
    bounded(async {
        let (_d, mut lab) = mesh(&["a", "e"]);
        lab.unpeer("a", "e");
        for id in ["a", "e"] {
            lab.start(id).await.unwrap();
        }
        lab.daemon("a").unwrap().command(enable(true)).await.unwrap();
        let (a_addr, e_addr) =
            (lab.daemon("a").unwrap().peer_addr(), lab.daemon("e").unwrap().peer_addr());
        let cid = imcrypt::demo::cid;
        lab.daemon("a").unwrap().control().add_peer(cid("e"), e_addr.to_string()).await.unwrap();
        lab.daemon("e").unwrap().control().add_peer(cid("a"), a_addr.to_string()).await.unwrap();
        lab.wait_until("e", "slave of a", WAIT, is_slave_of("a")).await.unwrap();
        let a = lab.status("a").await.unwrap();
        let e_seen = a.peers.iter().find(|p| p.id.as_str() == "e").unwrap();
        assert_eq!(e_seen.address.as_deref(), Some(e_addr.to_string().as_str()));
        // Adding it twice is refused and changes nothing.
        assert!(
            lab.daemon("a")
                .unwrap()
                .control()
                .add_peer(cid("e"), e_addr.to_string())
                .await
                .is_err()
        );

        lab.daemon("a").unwrap().control().remove_peer(cid("e")).await.unwrap();
        let a = lab.status("a").await.unwrap();
        assert!(a.peers.iter().all(|p| p.id.as_str() != "e"));
        // e's messages are refused now: it stops hearing from its master.
        let e = lab
            .wait_until("e", "link to a refused", WAIT, |s| {
                s.peers.iter().any(|p| p.id.as_str() == "a" && p.link.last_error.is_some())
            })
            .await
            .unwrap();
        assert_eq!(e.role, Role::Slave, "e keeps its keys");
        lab.stop_all().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_cannot_be_saved_is_reported_as_lost_and_stops_the_daemon() {
    bounded(async {
        let (d, mut lab) = mesh(&["a"]);
        lab.start("a").await.unwrap();
        lab.status("a").await.unwrap(); // the start's own state write is done
        // The next state write will fail: its temp file's place is taken by a directory.
        let tmp = d.path().join("state/a/state.sealed.tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        let e = lab.daemon("a").unwrap().command(enable(false)).await.unwrap_err();
        assert!(e.to_string().contains("could not be saved"), "{e}");
        assert!(lab.status("a").await.is_err(), "the daemon stopped");
        lab.stop("a").await.unwrap();
        std::fs::remove_dir(&tmp).unwrap();
        lab.start("a").await.unwrap();
        assert_eq!(lab.status("a").await.unwrap().role, Role::Off, "the change was not kept");
        lab.stop_all().await;
    })
    .await;
}
