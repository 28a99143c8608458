//! Failover with real daemons on 127.0.0.1, through the `imcrypt` binary as an operator runs
//! it (docs/operations.md, "Failover: handover and promotion"):
//! - the master's process is killed (`kill -9`): promotion of a slave is refused while the
//!   master was heard from recently, then accepted; the other slave follows the new master,
//!   which rotates; the old master, started again, becomes its slave with every key version;
//! - the master is cut off by a partition, rotates and seals records meanwhile; a slave is
//!   promoted; after the heal the old master steps down and hands its key version back, and a
//!   key export from the new master opens every record sealed anywhere;
//! - a planned handover while one slave's daemon is down: no alarm about the handover, and the
//!   slave follows the new master when it comes back.
//!
//! `peer.master_unreachable_after` is 2 s in these labs, hellos every 500 ms.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use imcrypt::crypto::record::RecordHeader;
use imcrypt::hotpath::{Client, ClientConfig, Encrypted};
use support::blackhole::Blackhole;
use support::process::{Serve, status_json};
use support::*;

/// `peer.master_unreachable_after` of every cluster here.
const UNREACHABLE_AFTER: Duration = Duration::from_secs(2);

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The config file of `id` in the lab's directory (the CLI's `-c`).
fn cfg(lab: &Lab, id: &str) -> String {
    s(&lab.dir().join(format!("{id}.toml"))).to_owned()
}

/// A lab of a, b and c, fully meshed, each with a hot path and a short unreachable threshold.
fn lab3() -> (tempfile::TempDir, Lab) {
    let (d, mut lab) = mesh(&["a", "b", "c"]);
    for id in ["a", "b", "c"] {
        let spec = lab.spec_mut(id);
        spec.master_unreachable_after = UNREACHABLE_AFTER;
        spec.hotpath = true;
    }
    (d, lab)
}

/// `imcrypt encryption enable --remote` on `id`, the password on stdin.
async fn enable_remote(lab: &Lab, id: &str) {
    let o = imcrypt(
        &["encryption", "enable", "--remote", "--password-stdin", "-c", &cfg(lab, id)],
        &format!("{PASSWORD}\n"),
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
}

/// `imcrypt encryption promote [--force]` on `id`, the password on stdin.
async fn promote(lab: &Lab, id: &str, force: bool) -> Out {
    let c = cfg(lab, id);
    let mut args = vec!["encryption", "promote", "--password-stdin", "-c", &c];
    if force {
        args.push("--force");
    }
    imcrypt(&args, &format!("{PASSWORD}\n")).await
}

fn term_is(term: &'static str) -> impl Fn(&Status) -> bool {
    move |s| s.term.is_some_and(|t| t.to_string() == term)
}

fn slave_of_in_term<'a>(master: &'a str, term: &'static str) -> impl Fn(&Status) -> bool + 'a {
    move |s| is_slave_of(master)(s) && term_is(term)(s)
}

fn master_in_term(term: &'static str) -> impl Fn(&Status) -> bool {
    move |s| s.role == Role::Master && term_is(term)(s)
}

/// The `about` of every active alarm of `s`.
fn alarms_about(s: &Status) -> Vec<(String, String)> {
    s.alarms
        .iter()
        .map(|a| {
            let v = serde_json::to_value(a).unwrap();
            (
                v["key"]["name"].as_str().unwrap().to_owned(),
                v["key"]["about"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Records sealed through the routers' hot paths, as `imcrypt decrypt` reads them.
#[derive(Default)]
struct Records {
    lines: Vec<String>,
    plaintexts: Vec<String>,
}

impl Records {
    /// Seals `text` through the hot path of `id` once its primary key version is `version`
    /// (when given), and keeps the record; returns the key version it was sealed with.
    async fn seal(&mut self, lab: &Lab, id: &str, text: &str, version: Option<u32>) -> u32 {
        let client = Client::new(ClientConfig::new(lab.hotpath_socket(id)));
        let row = format!("r{}", self.lines.len() + 1);
        let meta = format!("msg-{row}|{id}");
        let rec = wait_for(
            &format!("{id}'s hot path to seal with version {version:?}"),
            WAIT,
            async || match client.encrypt(meta.as_bytes(), text.as_bytes()).await.ok()? {
                Encrypted::Sealed(b) => {
                    let r = b.to_vecs().remove(0);
                    let v = RecordHeader::parse(&r).unwrap().key_version.get();
                    (version.is_none() || version == Some(v)).then_some(r)
                }
                Encrypted::Off => None,
            },
        )
        .await;
        let v = RecordHeader::parse(&rec).unwrap().key_version.get();
        self.lines.push(
            serde_json::json!({
                "row": row,
                "metadata_b64": B64.encode(&meta),
                "record_b64": B64.encode(&rec),
                "sender": format!("router@{id}"),
            })
            .to_string(),
        );
        self.plaintexts.push(text.to_owned());
        v
    }

    /// Downloads the key set from `master` through the CLI (a new RSA-3072 key pair made with
    /// openssl), unwraps it and decrypts every record with `imcrypt decrypt`: all must open.
    async fn open_all_with_export_of(&self, lab: &Lab, master: &str, dir: &Path) {
        let (key, export) = download_keys(dir, &cfg(lab, master), &format!("admin-{master}")).await;
        let ring = dir.join(format!("ring-{master}.json"));
        let o = unwrap_keys(&export, &key, &ring).await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        let records = dir.join("records.jsonl");
        std::fs::write(&records, self.lines.join("\n") + "\n").unwrap();
        let o = imcrypt(&["decrypt", "--keys", s(&ring), "--input", s(&records)], "").await;
        assert_eq!(o.code, 0, "every record opens with {master}'s export: {}", o.stderr);
        for t in &self.plaintexts {
            assert!(o.stdout.contains(t.as_str()), "{t:?} in {}", o.stdout);
        }
    }
}

/// `imcrypt serve` of `id` as a process of its own (so it can be killed as by `kill -9`).
fn serve(lab: &Lab, id: &str, log: &Path) -> Serve {
    let config = lab.write_config(&imcrypt::demo::cid(id)).unwrap();
    tokio::task::block_in_place(|| Serve::start(&config, log, None))
}

/// The status of the daemon of `config` (a process), when it answers.
async fn process_status(config: PathBuf) -> Option<Status> {
    let v = tokio::task::spawn_blocking(move || status_json(&config)).await.unwrap()?;
    serde_json::from_value(v).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slave_is_promoted_after_its_master_is_killed_and_the_restarted_master_follows_it() {
    bounded(async {
        let (d, mut lab) = lab3();
        for id in ["b", "c"] {
            lab.start(id).await.unwrap();
        }
        let mut a = Some(serve(&lab, "a", &d.path().join("a-1.log")));
        enable_remote(&lab, "a").await;
        for id in ["b", "c"] {
            lab.wait_until(id, "slave of a in term 0.0", WAIT, slave_of_in_term("a", "0.0"))
                .await
                .unwrap();
        }
        let mut records = Records::default();
        assert_eq!(records.seal(&lab, "c", "sealed on c before the kill", Some(1)).await, 1);

        // kill -9 the master; at once, b has heard from it too recently to be promoted.
        drop(a.take());
        let o = promote(&lab, "b", false).await;
        assert_eq!(o.code, 4, "{}\n{}", o.stdout, o.stderr);
        assert!(
            o.stderr.contains("the master, cluster a, was heard from")
                && o.stderr.contains("--force"),
            "{}",
            o.stderr
        );
        assert!(lab.status("b").await.unwrap().role == Role::Slave, "a refusal changes nothing");

        // After the threshold: b says its master is unreachable, and promotion is accepted.
        let b = lab
            .wait_until("b", "MAencryptionMasterUnreachable about a", WAIT, |s| {
                has_alarm(s, AlarmName::MasterUnreachable, "a")
            })
            .await
            .unwrap();
        let unreachable = b.alarms.iter().find(|x| x.key.name == AlarmName::MasterUnreachable);
        assert!(unreachable.unwrap().remedy.contains("imcrypt encryption promote"));
        let o = promote(&lab, "b", false).await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        // b has slot 1 (a 0, then its peers by name): round 1, slot 1.
        assert!(
            o.stdout.contains("promoted: this cluster is master of domain")
                && o.stdout.contains("under term 1.1"),
            "{}",
            o.stdout
        );
        assert!(!o.stdout.contains("note:"), "not forced: {}", o.stdout);
        let b =
            lab.wait_until("b", "master in term 1.1", WAIT, master_in_term("1.1")).await.unwrap();
        assert!(!has_alarm(&b, AlarmName::MasterUnreachable, "a"), "{:?}", b.alarms);
        lab.wait_until("c", "slave of b in term 1.1", WAIT, slave_of_in_term("b", "1.1"))
            .await
            .unwrap();
        // Both requests are audited on b against b, the cluster to be promoted; the accepted
        // one names the master it replaced.
        let o = imcrypt(
            &[
                "audit",
                "show",
                "-c",
                &cfg(&lab, "b"),
                "--action",
                "encryption.promote",
                "-o",
                "json",
            ],
            "",
        )
        .await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        let acts: Vec<serde_json::Value> =
            o.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(acts.len(), 2, "{}", o.stdout);
        assert!(acts.iter().all(|e| e["target"] == "b"), "{}", o.stdout);
        assert_eq!((&acts[0]["result"], &acts[1]["result"]), (&"refused".into(), &"ok".into()));
        assert_eq!(acts[1]["details"]["replaces"], "a", "{}", o.stdout);
        assert_eq!(acts[1]["details"]["term"], "1.1", "{}", o.stdout);

        // b rotates (a version of its own term's block); c's router seals with it.
        let o = imcrypt(&["key", "rotate", "-c", &cfg(&lab, "b")], "").await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        let b = lab.status("b").await.unwrap();
        let primary = b.primary_version.unwrap().get();
        assert_eq!(b.key_versions.len(), 2, "{:?}", b.key_versions);
        assert!(primary > 1, "a version of term 1.1's block: {primary}");
        lab.wait_until("c", "b's new version", WAIT, |s| s.key_versions == b.key_versions)
            .await
            .unwrap();
        records.seal(&lab, "c", "sealed on c after the promotion", Some(primary)).await;

        // a comes back: it hears term 1.1 and becomes b's slave with every version.
        let a = serve(&lab, "a", &d.path().join("a-2.log"));
        let a_cfg = PathBuf::from(cfg(&lab, "a"));
        wait_for("a to follow b in term 1.1, with b's versions", WAIT, async || {
            let s = process_status(a_cfg.clone()).await?;
            (slave_of_in_term("b", "1.1")(&s) && s.key_versions == b.key_versions).then_some(())
        })
        .await;
        let o = imcrypt(&["status", "-c", &cfg(&lab, "a")], "").await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        let row = |k: &str| o.stdout.lines().find(|l| l.starts_with(k)).unwrap_or("").to_owned();
        assert!(row("role").ends_with("slave") && row("master").ends_with(" b"), "{}", o.stdout);
        assert!(row("term").ends_with(" 1.1"), "{}", o.stdout);
        let log = a.log_text();
        assert!(
            log.contains("stepped down: cluster b is master of encryption domain")
                && log.contains("under term 1.1"),
            "{log}"
        );

        records.open_all_with_export_of(&lab, "b", d.path()).await;
        drop(a);
        lab.stop_all().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_cut_off_by_a_partition_steps_down_after_the_heal_and_hands_its_keys_back() {
    bounded(async {
        let (d, mut lab) = lab3();
        // Every link of a runs through a proxy of its own, in each direction.
        let mut proxies = Vec::new();
        for other in ["b", "c"] {
            let to_other = Blackhole::start(lab.peer_listen(other).unwrap()).await.unwrap();
            let to_a = Blackhole::start(lab.peer_listen("a").unwrap()).await.unwrap();
            lab.route_peer("a", other, to_other.addr());
            lab.route_peer(other, "a", to_a.addr());
            proxies.extend([to_other, to_a]);
        }
        for id in ["a", "b", "c"] {
            lab.start(id).await.unwrap();
        }
        enable_remote(&lab, "a").await;
        for id in ["b", "c"] {
            lab.wait_until(id, "slave of a", WAIT, is_slave_of("a")).await.unwrap();
        }
        let mut records = Records::default();
        records.seal(&lab, "b", "sealed on b before the cut", Some(1)).await;

        for p in &proxies {
            p.cut();
        }
        // Cut off, a still acts as master: it rotates and its router seals with the new
        // version, which nobody else has.
        let o = imcrypt(&["key", "rotate", "-c", &cfg(&lab, "a")], "").await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        assert_eq!(records.seal(&lab, "a", "sealed on a while cut off", Some(2)).await, 2);

        lab.wait_until("b", "MAencryptionMasterUnreachable about a", WAIT, |s| {
            has_alarm(s, AlarmName::MasterUnreachable, "a")
        })
        .await
        .unwrap();
        let o = promote(&lab, "b", false).await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        assert!(o.stdout.contains("under term 1.1"), "{}", o.stdout);
        lab.wait_until("c", "slave of b in term 1.1", WAIT, slave_of_in_term("b", "1.1"))
            .await
            .unwrap();
        let o = imcrypt(&["key", "rotate", "-c", &cfg(&lab, "b")], "").await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        let primary = lab.status("b").await.unwrap().primary_version.unwrap().get();
        records.seal(&lab, "c", "sealed on c under the new master", Some(primary)).await;
        records.seal(&lab, "b", "sealed on b under the new master", Some(primary)).await;
        assert_eq!(lab.status("a").await.unwrap().role, Role::Master, "a has heard nothing");

        for p in &proxies {
            p.heal();
        }
        // a hears term 1.1, steps down and hands version 2 back; b raises KeysRecovered.
        let heal = Duration::from_secs(60);
        lab.wait_until("a", "slave of b in term 1.1", heal, slave_of_in_term("b", "1.1"))
            .await
            .unwrap();
        let b = lab
            .wait_until("b", "version 2 handed back, MAencryptionKeysRecovered", heal, |s| {
                s.key_versions.iter().any(|v| v.get() == 2)
                    && has_alarm(s, AlarmName::KeysRecovered, "a")
            })
            .await
            .unwrap();
        assert_eq!(b.key_versions.len(), 3, "1, a's 2 and b's own: {:?}", b.key_versions);
        assert_eq!(b.primary_version.unwrap().get(), primary, "b's own version stays primary");
        for id in ["a", "c"] {
            lab.wait_until(id, "b's whole key set", heal, |s| s.key_versions == b.key_versions)
                .await
                .unwrap();
        }
        // a's router now seals with b's primary version.
        records.seal(&lab, "a", "sealed on a after stepping down", Some(primary)).await;

        records.open_all_with_export_of(&lab, "b", d.path()).await;
        lab.wait_until("b", "MAencryptionKeysRecovered cleared by the download", WAIT, |s| {
            !has_alarm(s, AlarmName::KeysRecovered, "a")
        })
        .await
        .unwrap();
        lab.stop_all().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_handover_while_a_slave_is_down_raises_no_alarm_and_the_slave_follows_later() {
    bounded(async {
        let (_d, mut lab) = lab3();
        for id in ["a", "b", "c"] {
            lab.start(id).await.unwrap();
        }
        enable_remote(&lab, "a").await;
        for id in ["b", "c"] {
            lab.wait_until(id, "slave of a in sync", WAIT, slave_of_in_term("a", "0.0"))
                .await
                .unwrap();
        }
        let a = lab.status("a").await.unwrap();
        // The handover needs b in sync at a's epoch: b's hello says so within a hello round.
        lab.wait_until("b", "a's epoch", WAIT, |s| s.epoch == a.epoch).await.unwrap();
        lab.stop("c").await.unwrap();

        let refused = imcrypt(
            &["encryption", "handover", "--to", "a", "--password-stdin", "-c", &cfg(&lab, "a")],
            &format!("{PASSWORD}\n"),
        )
        .await;
        assert_eq!(refused.code, 3, "to itself: bad value, {}", refused.stderr);
        let o = wait_for("a handover to b to be accepted", WAIT, async || {
            let o = imcrypt(
                &["encryption", "handover", "--to", "b", "--password-stdin", "-c", &cfg(&lab, "a")],
                &format!("{PASSWORD}\n"),
            )
            .await;
            // Refused while a has not yet had b's hello at its last epoch.
            (o.code == 0 || !o.stderr.contains("wait until it is in sync")).then_some(o)
        })
        .await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        assert!(
            o.stdout
                .contains("handing over: cluster b becomes master of the domain under term 1.1"),
            "{}",
            o.stdout
        );
        lab.wait_until("a", "slave of b in term 1.1", WAIT, slave_of_in_term("b", "1.1"))
            .await
            .unwrap();
        let b =
            lab.wait_until("b", "master in term 1.1", WAIT, master_in_term("1.1")).await.unwrap();
        assert_eq!(b.key_versions, a.key_versions, "a handover changes no key");

        // Past the threshold, the only alarms are about c, whose daemon is down.
        tokio::time::sleep(UNREACHABLE_AFTER + Duration::from_secs(1)).await;
        for id in ["a", "b"] {
            let st = lab.status(id).await.unwrap();
            for (name, about) in alarms_about(&st) {
                assert_eq!(about, "c", "{id}: {name} about {about}");
            }
            let o = imcrypt(&["alarms", "--output", "json", "-c", &cfg(&lab, id)], "").await;
            assert_eq!(o.code, 0, "{}", o.stderr);
            let report: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
            for e in report["history"].as_array().unwrap() {
                assert_eq!(e["about"], "c", "{id}: no alarm about the handover: {e}");
            }
        }

        lab.start("c").await.unwrap();
        lab.wait_until("c", "slave of b in term 1.1", WAIT, slave_of_in_term("b", "1.1"))
            .await
            .unwrap();
        for id in ["a", "b", "c"] {
            lab.wait_until(id, "no alarm", WAIT, |s| s.alarms.is_empty()).await.unwrap();
        }
        lab.stop_all().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_promotion_warns_and_the_live_master_steps_down_when_it_hears_the_new_term() {
    bounded(async {
        let (_d, mut lab) = mesh(&["a", "b"]);
        for id in ["a", "b"] {
            lab.spec_mut(id).master_unreachable_after = UNREACHABLE_AFTER;
            lab.start(id).await.unwrap();
        }
        enable_remote(&lab, "a").await;
        let before = lab.wait_until("b", "slave of a", WAIT, is_slave_of("a")).await.unwrap();

        let o = promote(&lab, "b", true).await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        assert!(
            o.stderr.contains("warning: --force") && o.stderr.contains("two masters may act"),
            "{}",
            o.stderr
        );
        assert!(o.stdout.contains("under term 1.1") && o.stdout.contains("note:"), "{}", o.stdout);
        lab.wait_until(
            "a",
            "stepped down: slave of b in term 1.1",
            WAIT,
            slave_of_in_term("b", "1.1"),
        )
        .await
        .unwrap();
        let b = lab.status("b").await.unwrap();
        assert!(master_in_term("1.1")(&b) && b.key_versions == before.key_versions);
        for id in ["a", "b"] {
            lab.wait_until(id, "no alarm", WAIT, |s| s.alarms.is_empty()).await.unwrap();
        }
        lab.stop_all().await;
    })
    .await;
}
