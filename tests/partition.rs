//! Network partitions without root: the link between master `a` and slave `b` runs through a
//! blackholing proxy in each direction (tests/support/blackhole.rs); `c` is peered directly.
//! A rotation during the cut reaches `c` and not `b`; `b` keeps its role and keys and says its
//! master is unreachable; once healed, `b` catches up and every alarm clears. Once with the
//! held connections resuming after the heal, once with them closed during the cut (a
//! firewall that forgot them), so that the daemons must dial again. The time from heal to
//! convergence is printed (docs/reliability.md, "Partitions"), bounded only generously.

mod support;

use std::time::{Duration, Instant};

use support::blackhole::Blackhole;
use support::*;

/// A generous bound on catching up after the heal: a peer link backs off while its peer is
/// unreachable, so its next attempt may come some seconds after the heal.
const HEAL_WITHIN: Duration = Duration::from_secs(60);

/// What happens to the connections the proxies hold during the cut.
#[derive(Clone, Copy)]
enum Held {
    /// They resume at the heal.
    Resumed,
    /// They are closed before the heal.
    Dropped,
}

/// Cuts `a` from `b` in both directions, rotates on `a`, checks the cut, heals, and returns
/// how long `b` took to converge after the heal.
async fn cut_rotate_heal(held: Held) -> Duration {
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
    if let Held::Dropped = held {
        a_to_b.drop_connections();
        b_to_a.drop_connections();
    }

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
    for id in ["a", "c"] {
        let s = lab.status(id).await.unwrap();
        assert!(s.alarms.is_empty(), "{id} keeps no alarm after the heal: {:?}", s.alarms);
    }
    lab.stop_all().await;
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_cut_from_slave_during_rotation_converges_when_held_connections_resume() {
    bounded(async {
        let took = cut_rotate_heal(Held::Resumed).await;
        println!("partition healed (connections held): b converged in {} ms", took.as_millis());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_cut_from_slave_during_rotation_converges_when_connections_were_dropped() {
    bounded(async {
        let took = cut_rotate_heal(Held::Dropped).await;
        println!("partition healed (connections dropped): b converged in {} ms", took.as_millis());
    })
    .await;
}
