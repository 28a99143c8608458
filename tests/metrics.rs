//! Monitoring with the real components: Debian's Prometheus scrapes live daemons and its
//! query API agrees with their status (role, key versions, an alarm); `promtool check
//! metrics` accepts the exposition; the shipped alert rules pass `promtool check rules` and
//! `promtool test rules`; `GET /v1/health` gives each documented status code, without a
//! token, on the admin and the metrics listeners alike.

mod support;

use std::collections::BTreeMap;

use imcrypt::admin::api::{Health, HealthReport};
use support::prometheus::{Prometheus, http_get, promtool};
use support::*;

/// `GET path` on the admin listener of `id` over HTTPS, with no token: (status, body).
async fn admin_get(lab: &Lab, id: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cfg = tls_client_trusting(&lab.dir().join("pki/ca.pem"));
    let addr = lab.daemon(id).unwrap().admin_addr();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(id.to_owned()).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await.unwrap();
    let head = format!("GET {path} HTTP/1.1\r\nHost: {id}\r\nConnection: close\r\n\r\n");
    tls.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tls.read_to_end(&mut buf).await; // the server may close without close_notify
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.split(' ').nth(1).unwrap().parse().unwrap(), body.to_owned())
}

/// `GET /v1/health{query}` of `id` on the admin and the metrics listener, without a token.
async fn both(lab: &Lab, id: &str, query: &str) -> [(u16, HealthReport); 2] {
    let path = format!("/v1/health{query}");
    let (code, body) = admin_get(lab, id, &path).await;
    let metrics = lab.daemon(id).unwrap().metrics_addr().unwrap().to_string();
    let (code2, body2) = http_get(&metrics, &path).await.unwrap();
    [(code, serde_json::from_str(&body).unwrap()), (code2, serde_json::from_str(&body2).unwrap())]
}

/// Waits until both listeners of `id` say `want` (a state can change between the two
/// requests), and returns their common answer.
async fn health(lab: &Lab, id: &str, query: &str, want: Health) -> (u16, HealthReport) {
    let [admin, metrics] = wait_for(&format!("health of {id} to be {want:?}"), WAIT, async || {
        let answers = both(lab, id, query).await;
        answers.iter().all(|(_, r)| r.health == want).then_some(answers)
    })
    .await;
    assert_eq!(admin, metrics, "admin and metrics listeners of {id} agree");
    admin
}

#[tokio::test]
async fn the_shipped_alert_rules_pass_promtool_check_and_their_unit_tests() {
    bounded(async {
        let (code, out) =
            promtool(&["check", "rules", "dist/prometheus/imcrypt-rules.yml"], b"").await;
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("SUCCESS: 5 rules found"), "{out}");
        let (code, out) =
            promtool(&["test", "rules", "dist/prometheus/imcrypt-rules.test.yml"], b"").await;
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("SUCCESS"), "{out}");
    })
    .await;
}

/// a (master, with a hot path) and its slave b after a rotation; c and d, two masters peered
/// with each other at runtime. Prometheus scrapes all four every second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_daemons_and_agrees_with_their_status() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let mut lab = Lab::new(dir.path(), &["a", "b", "c", "d"]).unwrap();
        lab.peer("a", "b");
        for id in ["a", "b", "c", "d"] {
            lab.spec_mut(id).metrics = true;
        }
        lab.spec_mut("a").hotpath = true;
        for id in ["a", "b", "c", "d"] {
            lab.start(id).await.unwrap();
        }
        lab.daemon("a").unwrap().command(enable(true)).await.unwrap();
        lab.wait_until("b", "slave of a", WAIT, is_slave_of("a")).await.unwrap();
        lab.daemon("a").unwrap().command(Command::RotateKey).await.unwrap();
        lab.wait_until("b", "key v2", WAIT, |s| s.key_versions.len() == 2).await.unwrap();
        // c and d become masters on their own, then are peered at runtime (enable refuses
        // while a peer already encrypts, so the order matters): two masters meet.
        lab.daemon("c").unwrap().command(enable(false)).await.unwrap();
        lab.daemon("d").unwrap().command(enable(false)).await.unwrap();
        let (c_addr, d_addr) =
            (lab.daemon("c").unwrap().peer_addr(), lab.daemon("d").unwrap().peer_addr());
        let (cc, cd) = (lab.daemon("c").unwrap().control(), lab.daemon("d").unwrap().control());
        cc.add_peer(imcrypt::demo::cid("d"), d_addr.to_string()).await.unwrap();
        cd.add_peer(imcrypt::demo::cid("c"), c_addr.to_string()).await.unwrap();
        for id in ["c", "d"] {
            let other = if id == "c" { "d" } else { "c" };
            lab.wait_until(id, "multi-master alarm", WAIT, |s| {
                has_alarm(s, AlarmName::MultiMaster, other)
            })
            .await
            .unwrap();
        }
        // A router seals three records on a under key version 2.
        let router = imcrypt::hotpath::Client::new(imcrypt::hotpath::ClientConfig::new(
            lab.hotpath_socket("a"),
        ));
        wait_for("a's hot path to seal under version 2", WAIT, async || {
            let recs = [(&b"m1"[..], &b"one"[..]), (b"m2", b"two"), (b"m3", b"three")];
            match router.encrypt_batch(recs.into_iter()).await.unwrap() {
                imcrypt::hotpath::Encrypted::Sealed(b) => {
                    let first = b.to_vecs().remove(0);
                    let h = imcrypt::crypto::record::RecordHeader::parse(&first).unwrap();
                    (h.key_version.get() == 2).then_some(())
                }
                imcrypt::hotpath::Encrypted::Off => None,
            }
        })
        .await;

        let targets: Vec<(&str, std::net::SocketAddr)> = ["a", "b", "c", "d"]
            .iter()
            .map(|id| (*id, lab.daemon(id).unwrap().metrics_addr().unwrap()))
            .collect();
        let prom = Prometheus::start(&targets).await;
        let all_up = wait_for("Prometheus to scrape all four daemons", WAIT, async || {
            let up = prom.by_cluster("up{job=\"imcrypt\"} == 1").await;
            (up.len() == 4).then_some(up)
        })
        .await;
        assert_eq!(all_up.keys().collect::<Vec<_>>(), ["a", "b", "c", "d"], "{}", prom.log());

        // Role, as the daemons' own status says.
        let role = prom.query("imcrypt_role == 1").await;
        let seen: BTreeMap<String, String> =
            role.iter().map(|(l, _)| (l["cluster"].clone(), l["role"].clone())).collect();
        for id in ["a", "b", "c", "d"] {
            let status = lab.status(id).await.unwrap();
            assert_eq!(seen[id], status.role.to_string(), "role of {id}");
        }
        assert_eq!(seen["b"], "slave");
        // Key versions after the rotation, on the master and its slave.
        let versions = prom.by_cluster("imcrypt_key_versions").await;
        let primary = prom.by_cluster("imcrypt_key_primary_version").await;
        for id in ["a", "b"] {
            let status = lab.status(id).await.unwrap();
            assert_eq!(versions[id] as usize, status.key_versions.len(), "versions of {id}");
            assert_eq!(primary[id] as u32, status.primary_version.unwrap().get(), "{id}");
        }
        assert_eq!(versions["a"], 2.0);
        // The critical alarm on both masters that met, and on nobody else.
        let alarm = prom
            .query("imcrypt_alarms_active{name=\"MAencryptionMultiMaster\",severity=\"critical\"}")
            .await;
        let mut raised: Vec<_> = alarm.iter().map(|(l, v)| (l["cluster"].as_str(), *v)).collect();
        raised.sort_by(|x, y| x.0.cmp(y.0));
        assert_eq!(raised, [("c", 1.0), ("d", 1.0)]);
        // The seals of a's hot path under version 2, a share of the 2^32 budget.
        let seals = prom.query("imcrypt_seals_total{cluster=\"a\",key_version=\"2\"}").await;
        assert_eq!(seals.len(), 1, "{seals:?}");
        assert!(seals[0].1 >= 3.0, "{seals:?}");
        let budget =
            prom.query("imcrypt_key_budget_used_ratio{cluster=\"a\",key_version=\"2\"}").await;
        assert!(budget[0].1 > 0.0 && budget[0].1 < 0.01, "{budget:?}");
        let records = prom.by_cluster("imcrypt_hotpath_records_total").await;
        assert!(records["a"] >= 3.0, "{records:?}");
        // The peers' links are up and were heard from lately.
        let up = prom.query("imcrypt_peer_up{cluster=\"a\",peer=\"b\"}").await;
        assert_eq!(up[0].1, 1.0);
        let age = prom.query("imcrypt_peer_last_hello_age_seconds{cluster=\"b\",peer=\"a\"}").await;
        assert!(age[0].1 < 60.0, "{age:?}");

        // promtool lints every daemon's exposition.
        for (id, addr) in &targets {
            let (code, body) = http_get(&addr.to_string(), "/metrics").await.unwrap();
            assert_eq!(code, 200);
            let (code, out) = promtool(&["check", "metrics"], body.as_bytes()).await;
            assert_eq!(code, 0, "promtool check metrics on {id}: {out}\n{body}");
        }
        drop(prom);
        lab.stop_all().await;
    })
    .await;
}

/// One HTTP/1.1 connection kept open across requests, as a monitor or load balancer keeps it.
struct KeepAlive(tokio::io::BufReader<tokio::net::TcpStream>);

impl KeepAlive {
    async fn connect(addr: std::net::SocketAddr) -> Self {
        Self(tokio::io::BufReader::new(tokio::net::TcpStream::connect(addr).await.unwrap()))
    }

    /// `GET path` on the open connection: (status, head, body), the body read by its length.
    async fn get(&mut self, path: &str) -> (u16, String, String) {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        let head = format!("GET {path} HTTP/1.1\r\nHost: imcrypt\r\n\r\n");
        self.0.get_mut().write_all(head.as_bytes()).await.unwrap();
        let mut head = String::new();
        loop {
            let mut line = String::new();
            assert!(self.0.read_line(&mut line).await.unwrap() > 0, "closed after: {head}");
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let length = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase().strip_prefix("content-length:")?.trim().parse().ok()
            })
            .unwrap_or(0);
        let mut body = vec![0; length];
        self.0.read_exact(&mut body).await.unwrap();
        let code = head.split(' ').nth(1).unwrap().parse().unwrap();
        (code, head, String::from_utf8(body).unwrap())
    }
}

/// Master 200, slave 429 (200 with `standbyok=true`), off 472, critical alarm 500, slave
/// with an unreachable master 473, stopping 503: on both listeners, without a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_gives_each_documented_status_on_both_listeners_without_a_token() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let mut lab = Lab::new(dir.path(), &["a", "b", "c"]).unwrap();
        lab.peer("a", "b");
        for id in ["a", "b", "c"] {
            lab.spec_mut(id).metrics = true;
            lab.start(id).await.unwrap();
        }
        let (code, r) = health(&lab, "c", "", Health::Off).await;
        assert_eq!((code, r.health, r.domain), (472, Health::Off, None));

        lab.daemon("a").unwrap().command(enable(true)).await.unwrap();
        let (code, r) = health(&lab, "a", "", Health::Master).await;
        assert_eq!((code, r.critical_alarms), (200, 0));
        let (code, r) = health(&lab, "b", "", Health::Slave).await;
        assert_eq!((code, r.master.unwrap().as_str()), (429, "a"));
        assert_eq!(health(&lab, "b", "?standbyok=true", Health::Slave).await.0, 200);
        // Nothing secret or beyond a monitor's needs in the body.
        let (_, body) = admin_get(&lab, "b", "/v1/health").await;
        for word in ["token", "password", "address", "peers", "127.0.0.1"] {
            assert!(!body.contains(word), "{word} in {body}");
        }

        // c becomes a second master and is peered with a at runtime: critical on both.
        lab.daemon("c").unwrap().command(enable(false)).await.unwrap();
        let (a_addr, c_addr) =
            (lab.daemon("a").unwrap().peer_addr(), lab.daemon("c").unwrap().peer_addr());
        let (ca, cc) = (lab.daemon("a").unwrap().control(), lab.daemon("c").unwrap().control());
        ca.add_peer(imcrypt::demo::cid("c"), c_addr.to_string()).await.unwrap();
        cc.add_peer(imcrypt::demo::cid("a"), a_addr.to_string()).await.unwrap();
        for id in ["a", "c"] {
            let (code, r) = health(&lab, id, "", Health::CriticalAlarm).await;
            assert_eq!((code, r.critical_alarms), (500, 1), "{id}");
        }

        // A monitor holding a connection open while a stops is told 503 "stopping", with
        // Retry-After, once a's core no longer answers for its state.
        let mut monitor =
            KeepAlive::connect(lab.daemon("a").unwrap().metrics_addr().unwrap()).await;
        assert_eq!(monitor.get("/v1/health").await.0, 500, "critical before the stop");
        // a stops: its slave b keeps encrypting, and says its master is unreachable.
        lab.stop("a").await.unwrap();
        let (code, head, body) = monitor.get("/v1/health").await;
        assert_eq!(code, 503, "{head}\n{body}");
        assert!(head.to_ascii_lowercase().contains("retry-after: 1"), "{head}");
        let r: HealthReport = serde_json::from_str(&body).unwrap();
        assert_eq!(r.health, Health::Stopping, "{body}");
        let (code, r) = health(&lab, "b", "", Health::MasterUnreachable).await;
        assert_eq!((code, r.role), (473, Some(Role::Slave)));
        lab.stop_all().await;
    })
    .await;
}
