//! Retiring key versions and the grace period before destruction, end to end through the
//! `imcrypt` binary against real daemons on 127.0.0.1: the download guard, slaves losing the
//! retired versions, `decrypt` naming the export that still holds them, restore within the
//! grace period, and nothing left to restore after it.

mod support;

use std::path::Path;
use std::sync::Arc;

use imcrypt::alarm::AlarmName;
use imcrypt::cluster::Command;
use imcrypt::crypto::aead::AeadImpl;
use imcrypt::crypto::keyring::KeyRing;
use imcrypt::crypto::random::NonceSource;
use imcrypt::crypto::record::RecordSealer;
use imcrypt::ids::{ClusterId, KeyVersion};
use support::*;

fn ring_of(lab: &Lab, id: &str) -> Arc<KeyRing> {
    lab.daemon(id).unwrap().key_ring().borrow().clone().expect("a key ring")
}

/// The versions among 1 to 3 that `ring` holds.
fn versions_of(ring: &KeyRing) -> Vec<u32> {
    (1..=3).filter(|v| ring.get(KeyVersion::new(*v).unwrap()).is_ok()).collect()
}

/// Three clusters, a master of the domain with key versions 1, 2 and 3, b and c its slaves;
/// `grace` is a's `encryption.destruction_grace` (`None`: the default, 7 days).
async fn domain_with_three_versions(grace: Option<&str>) -> (tempfile::TempDir, Lab, String) {
    let (dir, mut lab) = mesh(&["a", "b", "c"]);
    if let Some(g) = grace {
        lab.spec_mut("a").extra_config = format!("\n[encryption]\ndestruction_grace = \"{g}\"\n");
    }
    for id in ["a", "b", "c"] {
        lab.start(id).await.unwrap();
    }
    let a = lab.daemon("a").unwrap();
    a.command(enable(true)).await.unwrap();
    a.command(Command::RotateKey).await.unwrap();
    a.command(Command::RotateKey).await.unwrap();
    for id in ["b", "c"] {
        lab.wait_until(id, "slave with versions 1 to 3", WAIT, |st| {
            is_slave_of("a")(st) && st.key_versions.len() == 3
        })
        .await
        .unwrap();
    }
    let cfg = s(&dir.path().join("a.toml")).to_owned();
    (dir, lab, cfg)
}

async fn retire(cfg: &str, below: &str, more: &[&str]) -> Out {
    let args = [&["key", "retire", "--below", below, "--password-stdin", "-c", cfg], more].concat();
    imcrypt(&args, &format!("{PASSWORD}\n")).await
}

async fn restore(cfg: &str) -> Out {
    imcrypt(&["key", "restore", "--password-stdin", "-c", cfg], &format!("{PASSWORD}\n")).await
}

/// Downloads a's keys for a new admin key pair and unwraps them into `DIR/NAME.ring`.
async fn export_and_unwrap(dir: &Path, cfg: &str, name: &str) -> std::path::PathBuf {
    let (key, export) = download_keys(dir, cfg, name).await;
    let ring = dir.join(format!("{name}.ring"));
    let o = unwrap_keys(&export, &key, &ring).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    ring
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retire_below_n_needs_a_current_download_and_every_cluster_loses_the_versions() {
    bounded(async {
        let (dir, mut lab, cfg) = domain_with_three_versions(None).await;
        let before = ring_of(&lab, "a");
        // A record b sealed under version 1, as its router would have.
        let sealer = RecordSealer::new(
            &KeyRing::from_keys(before.domain(), KeyVersion::FIRST, [before
                .get(KeyVersion::FIRST)
                .unwrap()
                .clone()])
            .unwrap(),
            &ClusterId::new("b").unwrap(),
            AeadImpl::default(),
            0,
        );
        sealer.counter().commit_reservation(16);
        let rec = sealer.seal(&mut NonceSource::from_os(), b"m1", b"an old message").unwrap();

        // The guard: nothing was downloaded since the last change.
        let o = retire(&cfg, "3", &[]).await;
        assert_eq!(o.code, 4, "{}", o.stderr);
        assert!(
            o.stderr.contains("--i-understand-data-loss") && o.stderr.contains("versions 1, 2"),
            "{}",
            o.stderr
        );
        assert_eq!(lab.status("b").await.unwrap().key_versions.len(), 3, "nothing changed");
        let old_ring = export_and_unwrap(dir.path(), &cfg, "before").await;
        let o = retire(&cfg, "4", &[]).await;
        assert_eq!(o.code, 3, "above the primary: {}", o.stderr);
        assert!(o.stderr.contains("the primary version is 3"), "{}", o.stderr);

        let o = retire(&cfg, "3", &[]).await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        assert!(o.stdout.contains("key versions 1, 2 of domain"), "{}", o.stdout);
        for id in ["a", "b", "c"] {
            let st = lab
                .wait_until(id, "only version 3", WAIT, |st| st.key_versions.len() == 1)
                .await
                .unwrap();
            assert_eq!(st.primary_version.map(|v| v.get()), Some(3));
            assert_eq!(versions_of(&ring_of(&lab, id)), vec![3], "{id}'s hot path");
        }
        // Only the master keeps them, for the grace period; status says until when.
        let a = lab.status("a").await.unwrap();
        assert_eq!(a.pending_destruction.len(), 1);
        let p = &a.pending_destruction[0];
        assert_eq!(p.versions.iter().map(|v| v.get()).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(p.destroy_unix_ms - p.removed_unix_ms, 7 * 24 * 3600 * 1000);
        assert!(lab.status("b").await.unwrap().pending_destruction.is_empty());
        let table = imcrypt(&["status", "-c", &cfg], "").await;
        assert!(table.stdout.contains("PENDING") && table.stdout.contains("retired"), "{}", table.stdout);

        // A viewer with a newer export is told where version 1 is; the older export opens it.
        let new_ring = export_and_unwrap(dir.path(), &cfg, "after").await;
        let line = serde_json::json!({
            "row": "r1",
            "metadata_b64": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "m1"),
            "record_b64": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &rec),
        })
        .to_string();
        let o = imcrypt(&["decrypt", "--keys", s(&new_ring)], &line).await;
        assert_eq!(o.code, 7, "{}", o.stderr);
        assert!(
            o.stderr.contains("key version 1")
                && o.stderr.contains("was retired")
                && o.stderr.contains("key export made before the retirement"),
            "{}",
            o.stderr
        );
        let o = imcrypt(&["decrypt", "--keys", s(&old_ring)], &line).await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        assert!(o.stdout.contains("an old message"), "{}", o.stdout);
        lab.stop_all().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_within_the_grace_period_brings_back_exactly_what_was_removed() {
    bounded(async {
        let (_dir, mut lab, cfg) = domain_with_three_versions(None).await;
        let before = ring_of(&lab, "a");
        let o = retire(&cfg, "3", &["--i-understand-data-loss"]).await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        lab.wait_until("c", "only version 3", WAIT, |st| st.key_versions.len() == 1).await.unwrap();
        let o = restore(&cfg).await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        assert!(o.stdout.contains("key versions 1, 2 of domain"), "{}", o.stdout);
        for id in ["a", "b", "c"] {
            lab.wait_until(id, "versions 1 to 3 again", WAIT, |st| st.key_versions.len() == 3)
                .await
                .unwrap();
            assert!(*ring_of(&lab, id) == *before, "{id}: the very same keys");
        }
        assert!(lab.status("a").await.unwrap().pending_destruction.is_empty());
        let o = restore(&cfg).await;
        assert_eq!(o.code, 4, "{}", o.stderr);
        assert!(o.stderr.contains("nothing is pending destruction"), "{}", o.stderr);
        lab.stop_all().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_grace_period_the_retired_versions_are_destroyed_and_restore_finds_nothing() {
    bounded(async {
        let (_dir, mut lab, cfg) = domain_with_three_versions(Some("2s")).await;
        let o = retire(&cfg, "3", &["--i-understand-data-loss"]).await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        lab.wait_until("a", "the retired versions destroyed", WAIT, |st| {
            st.pending_destruction.is_empty()
        })
        .await
        .unwrap();
        let o = restore(&cfg).await;
        assert_eq!(o.code, 4, "{}", o.stderr);
        assert!(o.stderr.contains("nothing is pending destruction"), "{}", o.stderr);
        for id in ["a", "b", "c"] {
            let st = lab.wait_until(id, "only version 3", WAIT, |st| st.key_versions.len() == 1);
            st.await.unwrap();
        }
        // A grace shorter than a day: the alarm was raised at once, and cleared with the keys.
        let o = imcrypt(&["alarms", "-o", "json", "-c", &cfg], "").await;
        let report: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
        let name = serde_json::to_value(AlarmName::KeysPendingDestruction).unwrap();
        let events: Vec<&str> = report["history"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["name"] == name)
            .map(|e| e["event"].as_str().unwrap())
            .collect();
        assert_eq!(events, vec!["raised", "cleared"], "{report}");
        // Audited: the administrator's retirement, and the timer's destruction.
        for (action, actor) in [("key.retire", "admin"), ("key.destroy", "local")] {
            let o =
                imcrypt(&["audit", "show", "--action", action, "-o", "json", "-c", &cfg], "").await;
            assert_eq!(o.code, 0, "{}", o.stderr);
            let shown: Vec<serde_json::Value> =
                o.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
            assert_eq!(shown.len(), 1, "{action}: {}", o.stdout);
            assert_eq!(shown[0]["actor"]["kind"], actor, "{}", shown[0]);
            assert_eq!(shown[0]["details"]["versions"], serde_json::json!([1, 2]), "{}", shown[0]);
        }
        lab.stop_all().await;
    })
    .await;
}
