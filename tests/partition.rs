//! Network partitions without root: the link between master `a` and slave `b` runs through a
//! blackholing proxy in each direction (tests/support/blackhole.rs); `c` is peered directly.
//! A rotation during the cut reaches `c` and not `b`; `b` keeps encrypting with the keys it
//! holds and says its master is unreachable; once healed, `b` catches up and the alarm clears.
//! The time from heal to convergence is printed (docs/reliability.md, "Partitions"), bounded
//! only generously.

mod support;

use std::time::{Duration, Instant};

use support::blackhole::Blackhole;
use support::*;

/// A generous bound on catching up after the heal: the peer links back off while the peer is
/// unreachable, so the first successful hello may come a few seconds after the heal.
const HEAL_WITHIN: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_cut_from_slave_during_rotation_converges_after_heal() {
    bounded(async {
        let (_d, mut lab) = mesh(&["a", "b", "c"]);
        // a → b and b → a each through their own proxy: both ends dial.
        let a_to_b = Blackhole::start(lab.peer_listen("b").unwrap()).await.unwrap();
        let b_to_a = Blackhole::start(lab.peer_listen("a").unwrap()).await.unwrap();
        lab.route_peer("a", "b", a_to_b.addr());
        lab.route_peer("b", "a", b_to_a.addr());
        for id in ["a", "b", "c"] {
            lab.spec_mut(id).master_unreachable_after = Duration::from_millis(1500);
            lab.start(id).await.unwrap();
        }
        lab.daemon("a").unwrap().command(enable(true)).await.unwrap();
        let before = lab.wait_until("b", "slave of a", WAIT, is_slave_of("a")).await.unwrap();
        lab.wait_until("c", "slave of a", WAIT, is_slave_of("a")).await.unwrap();

        a_to_b.cut();
        b_to_a.cut();
        lab.daemon("a").unwrap().command(Command::RotateKey).await.unwrap();
        let rotated = lab.status("a").await.unwrap();
        assert_eq!(rotated.key_versions.len(), before.key_versions.len() + 1);
        lab.wait_until("c", "the new key version", WAIT, |s| s.key_versions == rotated.key_versions)
            .await
            .unwrap();
        // Cut off, b keeps its role and its keys, and tells the operator.
        let cut_off = lab
            .wait_until("b", "master unreachable", WAIT, |s| {
                has_alarm(s, AlarmName::MasterUnreachable, "a")
            })
            .await
            .unwrap();
        assert_eq!(cut_off.role, Role::Slave);
        assert_eq!(cut_off.key_versions, before.key_versions, "nothing crossed the cut");

        let healed = Instant::now();
        a_to_b.heal();
        b_to_a.heal();
        lab.wait_until("b", "the new key version, alarm cleared", HEAL_WITHIN, |s| {
            s.key_versions == rotated.key_versions
                && s.primary_version == rotated.primary_version
                && s.epoch == rotated.epoch
                && s.alarms.is_empty()
        })
        .await
        .unwrap();
        let took = healed.elapsed();
        println!("partition healed: b converged in {} ms", took.as_millis());
        for id in ["a", "c"] {
            let s = lab.status(id).await.unwrap();
            assert!(s.alarms.is_empty(), "{id} keeps no alarm after the heal: {:?}", s.alarms);
        }
        lab.stop_all().await;
    })
    .await;
}
