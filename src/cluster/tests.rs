//! Scenario tests, one per rule of the manual (see docs/behaviour.md), written against the
//! in-memory network of [`super::sim`]; and the property test that drives random networks.

use std::time::Duration;

use proptest::prelude::*;

use super::sim::{Envelope, Network, Op, PASSWORDS, cid, holders};
use super::state::{LeaveReason, Tombstone};
use super::*;
use crate::alarm::AlarmName;
use crate::crypto::password::Password;
use crate::ids::{ClusterId, Epoch, KeyVersion};

fn pw(i: usize) -> Password {
    Password::new(PASSWORDS[i])
}

fn enable(net: &mut Network, at: &ClusterId, remote: bool) {
    net.command(at, Command::Enable { password: pw(0), remote }).unwrap();
}

/// Three eligible clusters a, b, c, all peered with each other.
fn three() -> (Network, ClusterId, ClusterId, ClusterId) {
    let mut net = Network::default();
    let (a, b, c) = (net.add_cluster("a"), net.add_cluster("b"), net.add_cluster("c"));
    net.peer_all(&[a.clone(), b.clone(), c.clone()]);
    net.settle();
    (net, a, b, c)
}

fn slave_of(net: &Network, s: &ClusterId, m: &ClusterId) -> bool {
    matches!(net.cluster(s).role(), Role::Slave(d) if &d.master == m)
        && net.cluster(s).domain_state() == net.cluster(m).domain_state()
        && net.get(s).hot_ring.as_ref() == net.cluster(m).key_ring()
}

fn is_off(net: &Network, c: &ClusterId) -> bool {
    matches!(net.cluster(c).role(), Role::Off { .. }) && net.get(c).hot_ring.is_none()
}

fn assert_clean(net: &Network) {
    assert!(net.violations().is_empty(), "{:#?}", net.violations());
    let q = net.check_quiet();
    assert!(q.is_empty(), "{q:#?}");
}

#[test]
fn enable_makes_master_of_new_domain_and_remote_enrolls_every_eligible_peer() {
    let (mut net, a, b, c) = three();
    enable(&mut net, &a, true);
    let domain = net.cluster(&a).domain_state().unwrap().domain;
    assert!(net.cluster(&a).is_master());
    assert_eq!(net.logged(&a, "Encryption enabled"), 1);
    net.settle();
    assert!(slave_of(&net, &b, &a) && slave_of(&net, &c, &a));
    assert_eq!(net.logged(&b, "Encryption enabled"), 1);
    assert_eq!(net.logged(&c, "Encryption enabled"), 1);
    assert_eq!(holders(&net, domain).len(), 3);
    // A second enable elsewhere makes a new domain, never the same one.
    let (mut net2, x, ..) = three();
    net2.command(&x, Command::RotateKey).unwrap_err();
    enable(&mut net2, &x, false);
    assert_ne!(net2.cluster(&x).domain_state().unwrap().domain, domain);
    assert_clean(&net);
}

#[test]
fn enable_without_remote_enrolls_nobody_until_remote_is_switched_on() {
    let (mut net, a, b, c) = three();
    enable(&mut net, &a, false);
    net.settle();
    assert!(is_off(&net, &b) && is_off(&net, &c));
    let rel = net.cluster(&a).peer_relation(&b).unwrap();
    assert!(rel.to_string().contains("\"enable on remote clusters\" is off"), "{rel}");
    net.command(&a, Command::EnableRemote).unwrap();
    net.settle();
    assert!(slave_of(&net, &b, &a) && slave_of(&net, &c, &a));
    assert_clean(&net);
}

#[test]
fn peer_added_later_is_enrolled_at_the_next_exchange() {
    let (mut net, a, b, _c) = three();
    enable(&mut net, &a, true);
    net.settle();
    let d = net.add_cluster("d");
    net.peer(&a, &d);
    net.deliver_all(); // hello both ways, then the state
    assert!(slave_of(&net, &d, &a));
    assert!(slave_of(&net, &b, &a));
    assert_clean(&net);
}

#[test]
fn peer_not_capable_or_not_eligible_is_not_enrolled_until_it_is() {
    let mut net = Network::default();
    let a = net.add_cluster("a");
    let old =
        net.add_cluster_with("old", Capabilities::LEGACY, &[("n1", Some(ComplianceDb::SqlServer))]);
    let half = net.add_cluster_with(
        "half",
        Capabilities::CURRENT,
        &[("n1", Some(ComplianceDb::PostgreSql)), ("n2", None)],
    );
    let mysql = net.add_cluster_with(
        "mysql",
        Capabilities::CURRENT,
        &[("n1", Some(ComplianceDb::Unsupported("MySQL".into())))],
    );
    net.peer_all(&[a.clone(), old.clone(), half.clone(), mysql.clone()]);
    enable(&mut net, &a, true);
    net.settle();
    assert!(is_off(&net, &old) && is_off(&net, &half) && is_off(&net, &mysql));
    // The master shows why.
    let why = |p: &ClusterId| net.cluster(&a).peer_relation(p).unwrap().to_string();
    assert!(why(&old).contains("software does not support encryption"), "{}", why(&old));
    assert!(why(&half).contains("node n2 has no archiver database"), "{}", why(&half));
    assert!(why(&mysql).contains("MySQL, which is not a supported"), "{}", why(&mysql));
    assert!(net.cluster(&half).off_reason().unwrap().contains("node n2"));
    // Once eligible / upgraded, enrolled automatically.
    let n2 = NodeId::new("n2").unwrap();
    net.command(&half, Command::SetArchiver { node: n2, archiver: Some(ComplianceDb::SqlServer) })
        .unwrap();
    net.restart_with(&old, Capabilities::CURRENT);
    net.settle();
    assert!(slave_of(&net, &half, &a) && slave_of(&net, &old, &a));
    assert!(is_off(&net, &mysql));
    assert_clean(&net);
}

/// Two masters each with a slave: {a master, b slave} and {x master, y slave}.
fn two_domains() -> (Network, ClusterId, ClusterId, ClusterId, ClusterId) {
    let mut net = Network::default();
    let (a, b, x, y) =
        (net.add_cluster("a"), net.add_cluster("b"), net.add_cluster("x"), net.add_cluster("y"));
    net.peer(&a, &b);
    net.peer(&x, &y);
    enable(&mut net, &a, true);
    enable(&mut net, &x, true);
    net.settle();
    assert!(slave_of(&net, &b, &a) && slave_of(&net, &y, &x));
    (net, a, b, x, y)
}

/// Asserts both domains are intact: nothing crossed.
fn domains_intact(net: &Network, a: &ClusterId, b: &ClusterId, x: &ClusterId, y: &ClusterId) {
    assert!(slave_of(net, b, a) && slave_of(net, y, x));
    let da = net.cluster(a).domain_state().unwrap().domain;
    let dx = net.cluster(x).domain_state().unwrap().domain;
    assert_eq!(holders(net, da), [a.clone(), b.clone()].into());
    assert_eq!(holders(net, dx), [x.clone(), y.clone()].into());
}

#[test]
fn multi_master_master_with_master_raises_on_both_sides_and_clears_when_unpeered() {
    let (mut net, a, b, x, y) = two_domains();
    net.peer(&a, &x);
    net.deliver_all(); // one hello round
    assert!(net.alarm_active(&a, AlarmName::MultiMaster, &x));
    assert!(net.alarm_active(&x, AlarmName::MultiMaster, &a));
    let alarm = net.alarm(&a, AlarmName::MultiMaster, &x).unwrap();
    assert!(alarm.cause.contains("one encryption master"), "{}", alarm.cause);
    net.settle();
    domains_intact(&net, &a, &b, &x, &y);
    assert_clean(&net);
    net.unpeer(&a, &x);
    net.settle();
    assert!(!net.alarm_active(&a, AlarmName::MultiMaster, &x));
    assert!(!net.alarm_active(&x, AlarmName::MultiMaster, &a));
    assert_clean(&net);
}

#[test]
fn multi_master_master_with_slave_of_another_master_clears_when_one_side_disables() {
    let (mut net, a, b, x, y) = two_domains();
    net.peer(&a, &y);
    net.deliver_all();
    assert!(net.alarm_active(&a, AlarmName::MultiMaster, &y));
    assert!(net.alarm_active(&y, AlarmName::MultiMaster, &a));
    net.settle();
    domains_intact(&net, &a, &b, &x, &y);
    assert_clean(&net);
    // y leaves x's domain: the relation ends, and a does not enroll y behind x's back
    // (y opted out of x's domain, not a's: a may enroll it, which ends the conflict too).
    net.command(&y, Command::Disable { password: pw(0), i_understand_data_loss: false }).unwrap();
    net.settle();
    assert!(!net.alarm_active(&a, AlarmName::MultiMaster, &y));
    assert!(!net.alarm_active(&y, AlarmName::MultiMaster, &a));
    assert!(slave_of(&net, &y, &a), "an off, eligible peer of a master with remote on is enrolled");
    assert_clean(&net);
}

#[test]
fn multi_master_slaves_of_different_masters_raise_and_clear_when_master_disables() {
    let (mut net, a, b, x, y) = two_domains();
    net.peer(&b, &y);
    net.deliver_all();
    assert!(net.alarm_active(&b, AlarmName::MultiMaster, &y));
    assert!(net.alarm_active(&y, AlarmName::MultiMaster, &b));
    net.settle();
    domains_intact(&net, &a, &b, &x, &y);
    assert_clean(&net);
    net.command(&x, Command::Disable { password: pw(0), i_understand_data_loss: true }).unwrap();
    net.settle();
    assert!(is_off(&net, &y));
    assert!(!net.alarm_active(&b, AlarmName::MultiMaster, &y));
    assert!(!net.alarm_active(&y, AlarmName::MultiMaster, &b));
    assert_clean(&net);
}

#[test]
fn slave_accepts_state_only_from_its_master_and_rejection_alarms_the_sender() {
    let (mut net, a, b, x, _y) = two_domains();
    net.peer(&b, &x); // x is master of another domain and now b's peer
    net.settle();
    let before = net.cluster(&b).domain_state().cloned();
    // x sends its state to b anyway (a faulty or malicious master).
    let xs = net.cluster(&x).domain_state().unwrap().clone();
    net.inject(Envelope { from: x.clone(), to: b.clone(), msg: PeerMessage::State(Box::new(xs)) });
    net.deliver_all();
    assert_eq!(net.cluster(&b).domain_state().cloned(), before, "b kept a's state");
    let alarm = net.alarm(&x, AlarmName::SyncRejected, &b).expect("rejection raised on x");
    assert!(alarm.cause.contains("it is a slave of cluster a"), "{}", alarm.cause);
    // a state that claims another master than its sender is refused too
    let mut forged = net.cluster(&a).domain_state().unwrap().clone();
    forged.epoch = Epoch(99);
    net.inject(Envelope {
        from: x.clone(),
        to: b.clone(),
        msg: PeerMessage::State(Box::new(forged)),
    });
    net.deliver_all();
    assert_eq!(net.cluster(&b).domain_state().cloned(), before);
    let _ = a;
}

#[test]
fn slave_refuses_rollback_and_replay() {
    let (mut net, a, b, _c) = three();
    enable(&mut net, &a, true);
    net.settle();
    let old_disk = net.get(&a).disk.clone(); // a backup of the master at epoch 1
    net.command(&a, Command::RotateKey).unwrap();
    let e2 = net.take(|e| e.to == b && e.msg.carries_keys());
    net.command(&a, Command::RotateKey).unwrap();
    let e3 = net.take(|e| e.to == b && e.msg.carries_keys());
    // Reordered: epoch 3 first, then the older epoch 2, then a replay of epoch 3.
    for env in e3.iter().chain(&e2).chain(&e3) {
        net.inject(env.clone());
    }
    net.deliver_all();
    assert_eq!(net.cluster(&b).domain_state().unwrap().epoch, Epoch(3));
    assert!(!net.alarm_active(&a, AlarmName::SyncRejected, &b), "a late message is harmless");
    net.settle();
    assert!(slave_of(&net, &b, &a));
    // A real rollback: the master restarts from the old backup; the slave refuses it.
    net.restart_from(&a, old_disk, Capabilities::CURRENT);
    net.settle();
    assert_eq!(net.cluster(&b).domain_state().unwrap().epoch, Epoch(3));
    assert_eq!(net.cluster(&b).key_ring().unwrap().primary_version().get(), 3);
    let alarm = net.alarm(&a, AlarmName::SyncRejected, &b).expect("rollback alarm on master");
    assert!(alarm.cause.contains("restored from an older copy"), "{}", alarm.cause);
    assert!(net.violations().is_empty(), "{:#?}", net.violations());
}

#[test]
fn password_change_only_on_master_and_synced_as_hash() {
    let (mut net, a, b, _c) = three();
    enable(&mut net, &a, true);
    net.settle();
    let err = net.command(&b, Command::ChangePassword { old: pw(0), new: pw(1) }).unwrap_err();
    assert_eq!(
        err.to_string(),
        "changing the password is only possible on the master: this cluster is a slave of cluster a"
    );
    let err = net.command(&a, Command::ChangePassword { old: pw(1), new: pw(1) }).unwrap_err();
    assert_eq!(err, CommandError::WrongPassword);
    let weak = Password::new("short");
    let err = net.command(&a, Command::ChangePassword { old: pw(0), new: weak }).unwrap_err();
    assert!(err.to_string().contains("too short"), "{err}");
    let err = net.command(&a, Command::ChangePassword { old: pw(0), new: pw(0) }).unwrap_err();
    assert!(err.to_string().contains("must differ"), "{err}");
    net.command(&a, Command::ChangePassword { old: pw(0), new: pw(1) }).unwrap();
    net.settle();
    assert!(slave_of(&net, &b, &a));
    assert!(net.cluster(&b).domain_state().unwrap().password.verify(&pw(1)));
    let json = serde_json::to_string(net.cluster(&b).state()).unwrap();
    assert!(!json.contains(PASSWORDS[1]), "only the hash is replicated");
    assert_clean(&net);
}

#[test]
fn key_download_only_on_master_with_the_password() {
    let (mut net, a, b, c) = three();
    let err = net.command(&a, Command::DownloadKeys { password: pw(0) }).unwrap_err();
    assert!(err.to_string().contains("encryption is not enabled on this cluster"), "{err}");
    enable(&mut net, &a, true);
    net.settle();
    let err = net.command(&b, Command::DownloadKeys { password: pw(0) }).unwrap_err();
    assert_eq!(
        err.to_string(),
        "key download is only possible on the master: this cluster is a slave of cluster a"
    );
    assert_eq!(net.cluster(&c).may_download_keys(), Err(err));
    assert!(net.cluster(&a).may_download_keys().is_ok());
    let err = net.command(&a, Command::DownloadKeys { password: pw(1) }).unwrap_err();
    assert_eq!(err, CommandError::WrongPassword);
    assert!(net.get(&a).downloads.is_empty(), "never a partial download");
    net.command(&a, Command::DownloadKeys { password: pw(0) }).unwrap();
    assert_eq!(net.get(&a).downloads.last(), net.cluster(&a).key_ring());
    assert_clean(&net);
}

#[test]
fn disable_on_master_deletes_everywhere_including_late_slaves() {
    let (mut net, a, b, c) = three();
    enable(&mut net, &a, true);
    net.settle();
    // Refused by accident: the keys were never downloaded.
    let err = net
        .command(&a, Command::Disable { password: pw(0), i_understand_data_loss: false })
        .unwrap_err();
    assert!(err.to_string().contains("--i-understand-data-loss"), "{err}");
    assert!(matches!(err, CommandError::KeysNotDownloaded { .. }));
    let err = net
        .command(&a, Command::Disable { password: pw(1), i_understand_data_loss: true })
        .unwrap_err();
    assert_eq!(err, CommandError::WrongPassword);
    net.command(&a, Command::DownloadKeys { password: pw(0) }).unwrap();
    // After a rotation, the downloaded set is no longer current.
    net.command(&a, Command::RotateKey).unwrap();
    net.settle();
    let err = net
        .command(&a, Command::Disable { password: pw(0), i_understand_data_loss: false })
        .unwrap_err();
    assert!(matches!(err, CommandError::KeysNotDownloaded { newest, .. } if newest.get() == 2));
    net.command(&a, Command::DownloadKeys { password: pw(0) }).unwrap();
    // c is unreachable while a disables.
    net.command(&a, Command::Disable { password: pw(0), i_understand_data_loss: false }).unwrap();
    assert_eq!(net.logged(&a, "Encryption disabled"), 1);
    net.take(|e| e.to == c || e.from == c);
    net.deliver_all();
    assert!(is_off(&net, &a) && is_off(&net, &b));
    assert!(net.cluster(&c).key_ring().is_some(), "c did not hear it yet");
    // c comes back: its next hello gets the tombstone.
    net.settle();
    assert!(is_off(&net, &c));
    assert_eq!(net.logged(&c, "Encryption disabled"), 1);
    assert_eq!(net.cluster(&a).state().tombstones.len(), 1);
    assert!(!serde_json::to_string(net.cluster(&c).state()).unwrap().contains("\"ring\""));
    // Each side says in its own terms who disabled it.
    let here = net.cluster(&a).off_reason().unwrap();
    assert!(here.contains("disabled here, on the master"), "{here}");
    let there = net.cluster(&b).off_reason().unwrap();
    assert_eq!(there, "encryption was disabled by the master, cluster a");
    assert_clean(&net);
}

#[test]
fn disable_on_slave_needs_master_password_and_is_not_undone_by_master() {
    let (mut net, a, b, c) = three();
    enable(&mut net, &a, true);
    net.settle();
    let err = net
        .command(&b, Command::Disable { password: pw(1), i_understand_data_loss: false })
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the master's password is wrong (it is the password set on cluster a)"
    );
    let disable = || Command::Disable { password: pw(0), i_understand_data_loss: false };
    let done = net.command(&b, disable()).unwrap();
    assert!(
        matches!(done, Outcome::DisabledHere { master } if master == a),
        "on a slave: here only"
    );
    assert!(is_off(&net, &b));
    assert_eq!(net.command(&b, disable()).unwrap_err(), CommandError::NotEncrypting);
    net.settle();
    net.command(&a, Command::RotateKey).unwrap();
    net.settle();
    assert!(is_off(&net, &b), "the master does not enroll it again");
    assert!(slave_of(&net, &c, &a));
    let rel = net.cluster(&a).peer_relation(&b).unwrap().to_string();
    assert!(rel.contains("its administrator disabled encryption there"), "{rel}");
    // An explicit decision on the master enrolls it again.
    net.command(&a, Command::DisableRemote).unwrap();
    net.command(&a, Command::EnableRemote).unwrap();
    net.settle();
    assert!(slave_of(&net, &b, &a) && slave_of(&net, &c, &a));
    assert_clean(&net);
}

#[test]
fn disable_remote_releases_slaves_and_master_keeps_keys() {
    let (mut net, a, b, c) = three();
    enable(&mut net, &a, true);
    net.settle();
    net.command(&a, Command::DisableRemote).unwrap();
    net.settle();
    assert!(is_off(&net, &b) && is_off(&net, &c));
    assert!(net.cluster(&a).is_master() && net.get(&a).hot_ring.is_some());
    assert_clean(&net);
}

#[test]
fn adding_a_node_while_encrypting_is_refused_with_the_manual_explanation() {
    let (mut net, a, b, _c) = three();
    enable(&mut net, &a, true);
    net.settle();
    for at in [&a, &b] {
        let node = NodeId::new("n3").unwrap();
        let err = net
            .command(at, Command::AddNode { node, archiver: Some(ComplianceDb::SqlServer) })
            .unwrap_err();
        assert_eq!(err, CommandError::NodeAddWhileEncrypting);
        assert!(err.to_string().starts_with("a node cannot be added while encryption is enabled"));
    }
    let err = net
        .command(&b, Command::SetArchiver { node: NodeId::new("n1").unwrap(), archiver: None })
        .unwrap_err();
    assert!(matches!(err, CommandError::ArchiverChangeWhileEncrypting { .. }));
    // Off: allowed.
    let x = net.add_cluster("x");
    let node = NodeId::new("n3").unwrap();
    net.command(&x, Command::AddNode { node, archiver: None }).unwrap();
    assert!(!net.cluster(&x).eligibility().is_eligible());
    assert_clean(&net);
}

#[test]
fn master_unreachable_raises_alarm_and_slaves_keep_their_keys() {
    let (mut net, a, b, _c) = three();
    enable(&mut net, &a, true);
    net.settle();
    let ring = net.cluster(&b).key_ring().cloned();
    // a's daemon is down: nothing from a arrives for 6 minutes.
    for _ in 0..12 {
        net.advance(Duration::from_secs(30));
        net.take(|e| e.from == a);
        net.deliver_all();
    }
    let alarm = net.alarm(&b, AlarmName::MasterUnreachable, &a).expect("alarm raised");
    assert!(alarm.cause.contains("keeps encrypting"), "{}", alarm.cause);
    assert_eq!(net.get(&b).hot_ring.as_ref(), ring.as_ref(), "keys kept for the hot path");
    // Changes wait for the master; once it is back, the alarm clears.
    net.settle();
    assert!(!net.alarm_active(&b, AlarmName::MasterUnreachable, &a));
    assert_clean(&net);
}

#[test]
fn peer_removed_without_disabling_raises_stale_data_with_remedy() {
    let (mut net, a, b, c) = three();
    enable(&mut net, &a, true);
    net.settle();
    net.unpeer(&a, &b);
    net.settle();
    let on_b = net.alarm(&b, AlarmName::StaleData, &a).expect("slave side");
    assert!(on_b.remedy.contains("disable encryption here with the master's password"));
    let on_a = net.alarm(&a, AlarmName::StaleData, &b).expect("master side");
    assert!(on_a.cause.contains("still holds the keys"), "{}", on_a.cause);
    assert!(slave_of(&net, &c, &a));
    // Remedy 1 on the slave: disable with the master's password. The master's record stays
    // until acknowledged there.
    net.command(&b, Command::Disable { password: pw(0), i_understand_data_loss: false }).unwrap();
    net.settle();
    assert!(!net.alarm_active(&b, AlarmName::StaleData, &a));
    net.command(&a, Command::AcknowledgeStaleData { peer: b.clone() }).unwrap();
    assert!(!net.alarm_active(&a, AlarmName::StaleData, &b));
    assert_eq!(
        net.command(&a, Command::AcknowledgeStaleData { peer: b.clone() }).unwrap_err(),
        CommandError::NoStaleData(b.clone())
    );
    // Remedy 2: peer again.
    net.unpeer(&a, &c);
    net.settle();
    assert!(net.alarm_active(&a, AlarmName::StaleData, &c));
    net.peer(&a, &c);
    net.settle();
    assert!(!net.alarm_active(&a, AlarmName::StaleData, &c));
    assert!(!net.alarm_active(&c, AlarmName::StaleData, &a));
    assert!(slave_of(&net, &c, &a));
    assert_clean(&net);
}

#[test]
fn key_rotation_adds_a_primary_version_synced_and_old_versions_stay() {
    let (mut net, a, b, c) = three();
    let err = net.command(&a, Command::RotateKey).unwrap_err();
    assert!(matches!(err, CommandError::NotMasterButOff { .. }));
    enable(&mut net, &a, true);
    net.settle();
    let v1 = net.cluster(&a).key_ring().unwrap().get(KeyVersion::FIRST).unwrap().clone();
    let err = net.command(&b, Command::RotateKey).unwrap_err();
    assert_eq!(
        err.to_string(),
        "key rotation is only possible on the master: this cluster is a slave of cluster a"
    );
    net.command(&a, Command::RotateKey).unwrap();
    net.settle();
    for id in [&a, &b, &c] {
        let ring = net.get(id).hot_ring.clone().unwrap();
        assert_eq!(ring.primary_version().get(), 2);
        assert_eq!(ring.versions().count(), 2);
        assert_eq!(ring.get(KeyVersion::FIRST).unwrap(), &v1);
    }
    assert_ne!(net.cluster(&a).key_ring().unwrap().primary(), &v1);
    assert_clean(&net);
}

#[test]
fn the_master_rotates_by_itself_when_a_slave_or_it_wears_out_the_primary_or_it_ages() {
    let mut net = Network::new(sim::SimSettings {
        rotate_after: Some(Duration::from_secs(90 * 24 * 3600)),
        ..Default::default()
    });
    let (a, b, c) = (net.add_cluster("a"), net.add_cluster("b"), net.add_cluster("c"));
    net.peer_all(&[a.clone(), b.clone(), c.clone()]);
    enable(&mut net, &a, true);
    net.settle();
    let v1 = KeyVersion::FIRST;
    assert_eq!(net.cluster(&a).rotation_due(net.now()), None);
    assert_eq!(net.cluster(&b).rotation_due(net.now()), None, "only a master rotates");
    let primary =
        |net: &Network, id: &ClusterId| net.cluster(id).key_ring().unwrap().primary_version().get();

    // A slave's hot path wore out v1: it says so in its hello, and the master rotates at once
    // (its next timeout is due immediately), without any command.
    net.report_worn_out(&b, v1);
    net.settle();
    let line =
        "rotating the key automatically: cluster b sealed 0.9*2^32 records under key version 1";
    assert_eq!(net.logged(&a, line), 1);
    for id in [&a, &b, &c] {
        assert_eq!(primary(&net, id), 2, "{id}");
    }
    // The report was about v1; v2 is fresh, so nothing more is due.
    assert_eq!(net.cluster(&a).rotation_due(net.now()), None);

    // The master's own hot path counts too.
    let v2 = KeyVersion::new(2).unwrap();
    net.report_worn_out(&a, v2);
    let line = "rotating the key automatically: this cluster sealed 0.9*2^32 records under key \
                version 2";
    assert_eq!(net.logged(&a, line), 1);
    assert_eq!(primary(&net, &a), 3);
    net.settle();
    assert_eq!(net.cluster(&a).rotation_due(net.now()), None);

    // And age: the master's timer is set for the day the primary turns 90 days old.
    let due = net.cluster(&a).poll_timeout().unwrap();
    assert!(due > net.now());
    net.advance(Duration::from_secs(90 * 24 * 3600));
    let logs = &net.get(&a).logs;
    let aged = logs.iter().filter(|l| l.text.contains("key version 3 is older than")).count();
    assert_eq!(aged, 1, "{logs:#?}");
    net.settle();
    for id in [&a, &b, &c] {
        assert_eq!(primary(&net, id), 4, "{id}");
    }
    assert_eq!(net.cluster(&a).rotation_due(net.now()), None);
    assert_clean(&net);
}

#[test]
fn enable_is_refused_where_a_peer_already_encrypts() {
    let (mut net, a, b, _c) = three();
    enable(&mut net, &a, false);
    net.settle();
    let err = net.command(&b, Command::Enable { password: pw(0), remote: false }).unwrap_err();
    assert!(err.to_string().contains("peer cluster a is master of domain"), "{err}");
    let err = net.command(&a, Command::Enable { password: pw(0), remote: false }).unwrap_err();
    assert!(matches!(err, CommandError::AlreadyMaster { .. }));
    let lonely = net.add_cluster("lonely");
    let err =
        net.command(&lonely, Command::Enable { password: Password::new("weak"), remote: false });
    assert!(err.unwrap_err().to_string().contains("too short"));
    assert_clean(&net);
}

#[test]
fn refused_commands_change_nothing() {
    let (mut net, a, b, _c) = three();
    enable(&mut net, &a, true);
    net.settle();
    let before = (net.cluster(&a).state().clone(), net.cluster(&b).state().clone());
    let bad = [
        (a.clone(), Command::Enable { password: pw(0), remote: true }),
        (a.clone(), Command::AddPeer { peer: b.clone(), address: "b:7100".into() }),
        (a.clone(), Command::AddPeer { peer: a.clone(), address: "a:7100".into() }),
        (a.clone(), Command::AddPeer { peer: cid("new"), address: "no-port".into() }),
        (a.clone(), Command::RemovePeer { peer: cid("nope") }),
        (b.clone(), Command::RotateKey),
        (b.clone(), Command::DisableRemote),
        (a.clone(), Command::EnableRemote),
        (a.clone(), Command::RemoveNode { node: NodeId::new("n9").unwrap() }),
    ];
    for (at, cmd) in bad {
        assert!(net.command(&at, cmd).is_err());
    }
    assert_eq!((net.cluster(&a).state().clone(), net.cluster(&b).state().clone()), before);
    assert!(net.violations().is_empty(), "{:#?}", net.violations());
}

#[test]
fn messages_from_unknown_peers_are_refused() {
    let (mut net, a, _b, _c) = three();
    let mut m = Cluster::fresh(ClusterConfig::new(cid("z")), net.now());
    let hello = PeerMessage::Leave(Tombstone {
        domain: crate::ids::DomainId::from_bytes([1; 16]),
        master: a.clone(),
        epoch: Epoch(1),
        reason: LeaveReason::DomainDisabled,
        term: crate::ids::Term::INITIAL,
    });
    assert_eq!(m.handle_peer_message(&a, hello.clone(), net.now()), Err(PeerError::UnknownPeer(a)));
    assert_eq!(m.handle_peer_message(&cid("z"), hello, net.now()), Err(PeerError::FromSelf));
    net.settle();
}

#[test]
fn peer_messages_and_state_are_json_with_unknown_fields_refused() {
    let (mut net, a, b, _c) = three();
    enable(&mut net, &a, true);
    net.command(&a, Command::RotateKey).unwrap();
    let msgs: Vec<PeerMessage> = net.in_flight().iter().map(|e| e.msg.clone()).collect();
    assert!(msgs.iter().any(PeerMessage::carries_keys));
    for m in &msgs {
        let json = serde_json::to_string(m).unwrap();
        assert_eq!(&serde_json::from_str::<PeerMessage>(&json).unwrap(), m);
        let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let inner = v.as_object_mut().unwrap().values_mut().next().unwrap();
        inner.as_object_mut().unwrap().insert("extra".into(), 1.into());
        assert!(serde_json::from_value::<PeerMessage>(v).is_err(), "{json}");
        // A state whose key ring belongs to another domain is malformed (found by fuzzing:
        // accepted, it made a state the slave could not restart from).
        if let PeerMessage::State(ds) = m {
            let mut v = serde_json::to_value(m).unwrap();
            let mut other = ds.domain.to_string();
            other.replace_range(0..1, if other.starts_with('0') { "1" } else { "0" });
            v["state"]["domain"] = other.into();
            let e = serde_json::from_value::<PeerMessage>(v).unwrap_err().to_string();
            assert!(e.contains("the key ring belongs to domain"), "{e}");
        }
    }
    net.settle();
    let st = net.cluster(&b).state().clone();
    let json = serde_json::to_string(&st).unwrap();
    let back: PersistedState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, st);
    let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v.as_object_mut().unwrap().insert("extra".into(), 1.into());
    assert!(serde_json::from_value::<PersistedState>(v).is_err());
    // A restart from the persisted state resumes the role, gives the hot path its ring, and
    // logs no spurious "Encryption enabled".
    net.restart(&b);
    net.settle();
    assert!(slave_of(&net, &b, &a));
    assert_eq!(net.logged(&b, "Encryption enabled"), 1);
    let other = ClusterConfig::new(cid("zz"));
    assert!(matches!(Cluster::new(other, st, net.now()), Err(StateError::WrongCluster { .. })));
    assert_clean(&net);
}

#[test]
fn late_slave_of_an_old_domain_is_cleaned_even_after_master_re_enables() {
    let (mut net, a, b, c) = three();
    enable(&mut net, &a, true);
    net.settle();
    let old = net.cluster(&a).domain_state().unwrap().domain;
    net.command(&a, Command::Disable { password: pw(0), i_understand_data_loss: true }).unwrap();
    net.take(|e| e.to == c);
    net.deliver_all();
    // c missed it, and a is master of a new domain before c is heard again.
    net.take(|e| e.to == c || e.from == c);
    enable(&mut net, &a, true);
    net.take(|e| e.to == c || e.from == c);
    net.deliver_all();
    assert!(slave_of(&net, &b, &a));
    assert_eq!(net.cluster(&c).domain_state().unwrap().domain, old);
    net.settle();
    assert!(slave_of(&net, &c, &a));
    assert_ne!(net.cluster(&c).domain_state().unwrap().domain, old);
    assert_clean(&net);
}

fn op() -> impl Strategy<Value = Op> {
    let i = 0usize..8;
    prop_oneof![
        3 => (i.clone(), any::<bool>()).prop_map(|(at, remote)| Op::Enable { at, remote }),
        1 => i.clone().prop_map(Op::EnableRemote),
        1 => i.clone().prop_map(Op::DisableRemote),
        2 => i.clone().prop_map(Op::Rotate),
        1 => i.clone().prop_map(Op::ChangePassword),
        1 => i.clone().prop_map(Op::Download),
        1 => i.clone().prop_map(Op::DisableOnMaster),
        1 => i.clone().prop_map(Op::DisableOnSlave),
        3 => (i.clone(), i.clone()).prop_map(|(a, b)| Op::Peer(a, b)),
        2 => (i.clone(), i.clone()).prop_map(|(a, b)| Op::Unpeer(a, b)),
        1 => (i.clone(), any::<bool>()).prop_map(|(a, on)| Op::SetArchiver(a, on)),
        1 => i.clone().prop_map(Op::Restart),
        6 => (0usize..64).prop_map(Op::Deliver),
        2 => (0usize..64).prop_map(Op::Drop),
        2 => (0usize..64).prop_map(Op::Duplicate),
        1 => Just(Op::DeliverAll),
        1 => (1u64..400).prop_map(|s| Op::Tick(Duration::from_secs(s))),
        1 => i.clone().prop_map(|to| Op::Handover { to }),
        1 => (i.clone(), any::<bool>()).prop_map(|(c, f)| Op::Promote(c, f)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// The five properties of the module documentation, on random networks of 2 to 5
    /// clusters with random commands, message loss, duplication and reordering.
    #[test]
    fn simulated_networks_keep_the_invariants(n in 2usize..=5, ops in prop::collection::vec(op(), 1..80)) {
        let mut net = Network::with_clusters(n);
        for o in &ops {
            net.apply(o);
            prop_assert!(net.violations().is_empty(), "after {:?}: {:#?}", o, net.violations());
        }
        net.settle();
        prop_assert!(net.violations().is_empty(), "{:#?}", net.violations());
        let quiet = net.check_quiet();
        prop_assert!(quiet.is_empty(), "{:#?}", quiet);
    }
}

/// A fault-free step: everything an operator does in normal operation on master `c0`, a planned
/// handover (from whoever is master), a peer added later, time passing (no longer than a hello interval, with every message delivered
/// first: nobody is down), and deliveries in any order across links but in order on each link.
fn fault_free_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => Just(Op::Rotate(0)),
        1 => Just(Op::ChangePassword(0)),
        1 => Just(Op::Download(0)),
        1 => Just(Op::DisableRemote(0)),
        1 => Just(Op::EnableRemote(0)),
        1 => Just(Op::AddPeeredCluster),
        8 => (0usize..64).prop_map(Op::DeliverInOrder),
        1 => Just(Op::DeliverAll),
        1 => (1u64..=30).prop_map(|s| Op::Tick(Duration::from_secs(s))),
        1 => (0usize..4).prop_map(|to| Op::Handover { to }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// A normal sequence raises no alarm at all, not even for a moment: enrolment, rotation,
    /// password change, settings sync ("enable on remote clusters" off and on), peers added
    /// later, in any interleaving of the links. A false alarm pages someone at night.
    #[test]
    fn a_fault_free_run_raises_no_alarm(
        n in 2usize..=4,
        peered_long_before in any::<bool>(),
        ops in prop::collection::vec(fault_free_op(), 1..60),
    ) {
        let mut net = Network::with_clusters(n);
        let ids = net.ids();
        net.peer_all(&ids);
        // Usually the clusters have exchanged hellos long before anyone enables encryption
        // (each then holds the others' "not encrypting"); sometimes enable comes at once.
        if peered_long_before {
            net.settle();
        }
        net.apply(&Op::Enable { at: 0, remote: true });
        for o in &ops {
            if let Op::Tick(_) = o {
                net.deliver_all(); // nobody is down: what was sent arrives before time passes
            }
            net.apply(o);
        }
        net.settle();
        prop_assert!(net.violations().is_empty(), "{:#?}", net.violations());
        for id in net.ids() {
            let raises = &net.get(&id).raises;
            prop_assert!(raises.is_empty(), "{id} raised {:#?} after {:?}", raises, ops);
        }
        prop_assert!(net.check_quiet().is_empty(), "{:#?}", net.check_quiet());
    }
}

#[test]
fn enrolment_raises_no_alarm_on_the_slaves_not_even_for_a_moment() {
    // The master's hello saying "master of D" travels behind the state it sends on enable;
    // the enrolling cluster still holds its hello from before ("not encrypting") when it
    // accepts the state, and must not read that older hello as "the master left the domain".
    let (mut net, a, b, c) = three();
    enable(&mut net, &a, true);
    while !net.in_flight().is_empty() {
        net.apply(&Op::DeliverInOrder(0));
        for id in [&a, &b, &c] {
            assert!(net.get(id).raises.is_empty(), "{id}: {:?}", net.get(id).raises);
        }
    }
    assert!(slave_of(&net, &b, &a) && slave_of(&net, &c, &a));
    // A master that really leaves the domain without a word (its state lost) still raises it.
    net.restart_from(
        &a,
        PersistedState { role: Role::Off { left: None }, ..net.get(&a).disk.clone() },
        Capabilities::CURRENT,
    );
    net.settle();
    let stale = net.alarm(&b, AlarmName::StaleData, &a).expect("the slave sees its master gone");
    assert!(stale.cause.contains("is now not encrypting"), "{}", stale.cause);
}

#[test]
fn a_lasting_master_outage_is_one_alarm_updated_in_place_and_cleared_once() {
    let (mut net, a, b, _c) = three();
    enable(&mut net, &a, true);
    net.settle();
    let mut causes = Vec::new();
    for _ in 0..20 {
        net.advance(Duration::from_secs(30)); // a is down for 10 minutes
        net.take(|e| e.from == a);
        net.deliver_all();
        if let Some(al) = net.alarm(&b, AlarmName::MasterUnreachable, &a) {
            causes.push(al.cause.clone());
        }
    }
    causes.dedup();
    assert!(causes.len() > 5, "the elapsed time in the cause is kept current: {causes:?}");
    net.settle();
    assert!(!net.alarm_active(&b, AlarmName::MasterUnreachable, &a));
    let raises: Vec<_> = net.get(&b).raises.iter().map(|al| al.key.name).collect();
    assert_eq!(raises, [AlarmName::MasterUnreachable], "one outage, one raise");
    assert_clean(&net);
}

#[test]
fn a_master_raises_an_alarm_for_a_slave_it_cannot_reach_and_clears_it_when_back() {
    let (mut net, a, b, c) = three();
    enable(&mut net, &a, true);
    net.settle();
    for _ in 0..20 {
        net.advance(Duration::from_secs(30)); // b is down for 10 minutes
        net.take(|e| e.from == b || e.to == b);
        net.deliver_all();
    }
    let al = net.alarm(&a, AlarmName::SlaveUnreachable, &b).expect("raised on the master");
    assert!(al.cause.contains("slave cluster b has not been heard from for"), "{}", al.cause);
    assert!(al.cause.contains("do not reach it"), "{}", al.cause);
    assert!(al.remedy.contains("imcrypt daemon of cluster b runs"), "{}", al.remedy);
    assert!(!net.alarm_active(&a, AlarmName::SlaveUnreachable, &c), "c is heard");
    // b is back: the alarm clears, and it was raised once.
    net.settle();
    assert!(!net.alarm_active(&a, AlarmName::SlaveUnreachable, &b));
    let raises: Vec<_> = net.get(&a).raises.iter().map(|al| al.key.clone()).collect();
    assert_eq!(raises.len(), 1, "{raises:?}");
    // A master that restarts while a slave is down knows it only as a peer it has not heard
    // from: that is alarmed too (it may hold the domain's keys).
    net.restart(&a);
    for _ in 0..12 {
        net.advance(Duration::from_secs(30));
        net.take(|e| e.from == c || e.to == c);
        net.deliver_all();
    }
    let al = net.alarm(&a, AlarmName::SlaveUnreachable, &c).expect("never heard since start");
    assert!(al.cause.contains("since this daemon started"), "{}", al.cause);
    net.settle();
    assert!(!net.alarm_active(&a, AlarmName::SlaveUnreachable, &c));
    assert_clean(&net);
}

#[test]
fn poll_timeout_wakes_for_hellos_and_the_unreachable_alarm_without_busy_looping() {
    let mut alone = Network::new(sim::SimSettings::default());
    let x = alone.add_cluster("x");
    assert_eq!(alone.cluster(&x).poll_timeout(), None, "no peers, no key: nothing is ever due");
    let (mut net, a, b, _c) = three();
    enable(&mut net, &a, true);
    net.settle();
    let mut raised_at = None;
    for _ in 0..40 {
        let now = net.now();
        let next = net.cluster(&b).poll_timeout().unwrap();
        assert!(next > now, "a timeout in the past would spin the daemon");
        net.advance(next.since(now));
        net.take(|e| e.from == a); // a is down
        net.deliver_all();
        if raised_at.is_none() && net.alarm_active(&b, AlarmName::MasterUnreachable, &a) {
            raised_at = Some(net.now());
        }
    }
    assert!(raised_at.is_some());
}

#[test]
fn logs_alarms_and_errors_never_contain_key_material_or_passwords() {
    use base64::Engine as _;
    let (mut net, a, b, x, y) = two_domains();
    net.peer(&b, &y);
    net.command(&a, Command::RotateKey).unwrap();
    let err = net
        .command(&b, Command::Disable { password: pw(1), i_understand_data_loss: false })
        .unwrap_err();
    net.unpeer(&a, &b);
    net.settle();
    let mut secrets: Vec<String> = PASSWORDS.iter().map(|p| p.to_string()).collect();
    for id in [&a, &x] {
        for k in net.cluster(id).key_ring().unwrap().keys() {
            secrets.push(hex::encode(k.bytes()));
            secrets.push(base64::engine::general_purpose::STANDARD.encode(k.bytes()));
        }
    }
    let mut texts = vec![err.to_string()];
    for id in net.ids() {
        let sc = net.get(&id);
        texts.extend(sc.logs.iter().map(|l| l.text.clone()));
        texts.extend(sc.alarms.values().map(|a| a.to_string()));
        texts.push(format!("{:?}", sc.machine));
    }
    assert!(texts.iter().any(|t| t.contains("MAencryption")), "the scenario raised alarms");
    for t in &texts {
        for s in &secrets {
            assert!(!t.contains(s.as_str()), "secret in {t}");
        }
    }
}

mod failover;
mod lifecycle;
