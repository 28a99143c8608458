//! Failover scenarios, one per row of docs/behaviour.md's "Failover" table, and the property
//! test that drives random partitions, kills, handovers and promotions.

use std::time::Duration;

use proptest::prelude::*;

use super::super::message::{Announced, RejectReason};
use super::super::sim::{Envelope, Network, Op};
use super::*;
use crate::crypto::keyring::KeyRingError;
use crate::ids::Term;

/// a master of a domain with every peer enrolled, key versions 1 and 2.
fn domain_of_three() -> (Network, ClusterId, ClusterId, ClusterId) {
    let (mut net, a, b, c) = three();
    enable(&mut net, &a, true);
    net.command(&a, Command::RotateKey).unwrap();
    net.settle();
    assert!(slave_of(&net, &b, &a) && slave_of(&net, &c, &a));
    (net, a, b, c)
}

fn term_of(net: &Network, c: &ClusterId) -> Term {
    net.cluster(c).domain_state().unwrap().term
}

fn versions(net: &Network, c: &ClusterId) -> Vec<KeyVersion> {
    net.cluster(c).key_ring().unwrap().versions().collect()
}

fn no_raises(net: &Network) {
    for id in net.ids() {
        assert!(net.get(&id).raises.is_empty(), "{id} raised {:#?}", net.get(&id).raises);
    }
}

/// Lets the master-unreachable threshold pass without any message from `lost`.
fn wait_past_threshold(net: &mut Network) {
    net.advance(Duration::from_secs(301));
    net.deliver_all();
}

#[test]
fn a_planned_handover_moves_the_domain_to_a_slave_with_every_version_and_no_alarm() {
    let (mut net, a, b, c) = domain_of_three();
    let ring = net.cluster(&a).key_ring().unwrap().clone();
    let out = net.command(&a, Command::Handover { to: b.clone(), password: pw(0) }).unwrap();
    let Outcome::HandedOver { to, term } = out else { panic!("{out:?}") };
    assert_eq!(to, b);
    assert_eq!(term.round(), 1);
    net.settle();
    assert!(net.cluster(&b).is_master());
    assert!(slave_of(&net, &a, &b) && slave_of(&net, &c, &b));
    assert_eq!(term_of(&net, &c), term);
    // No key changed, nothing to re-encrypt: the very same ring, primary included.
    assert_eq!(net.cluster(&b).key_ring(), Some(&ring));
    // The password hash went with it: the new master takes the same password.
    net.command(&b, Command::DownloadKeys { password: pw(0) }).unwrap();
    let logged = |c: &ClusterId, what: &str| net.get(c).logs.iter().any(|l| l.text.contains(what));
    assert!(logged(&b, "handed over by cluster a") && logged(&a, "handover complete"));
    no_raises(&net);
    assert_clean(&net);
}

#[test]
fn a_handover_is_refused_with_a_reason_unless_the_target_is_a_connected_slave_in_sync() {
    let (mut net, a, b, c) = domain_of_three();
    let refused = |net: &mut Network, to: &ClusterId, p: usize| {
        net.command(&a, Command::Handover { to: to.clone(), password: pw(p) }).unwrap_err()
    };
    assert_eq!(refused(&mut net, &b, 1), CommandError::WrongPassword);
    assert_eq!(refused(&mut net, &a, 0), CommandError::HandoverToSelf);
    let stranger = cid("z");
    assert!(matches!(
        refused(&mut net, &stranger, 0),
        CommandError::HandoverTargetNotReady { why, .. } if why.contains("not a peer")
    ));
    // c misses a rotation: it is behind, so it cannot take over yet.
    net.command(&a, Command::RotateKey).unwrap();
    net.take(|e| e.to == c);
    let e = refused(&mut net, &c, 0);
    assert!(
        matches!(&e, CommandError::HandoverTargetNotReady { why, .. } if why.contains("in sync")),
        "{e}"
    );
    // Silent for the threshold: not connected.
    net.settle();
    net.kill(&c);
    wait_past_threshold(&mut net);
    let e = refused(&mut net, &c, 0);
    assert!(
        matches!(&e, CommandError::HandoverTargetNotReady { why, .. } if why.contains("heard")),
        "{e}"
    );
    // On a slave there is nothing to hand over.
    let e = net.command(&b, Command::Handover { to: a.clone(), password: pw(0) }).unwrap_err();
    assert!(matches!(e, CommandError::NotMasterButSlave { .. }), "{e}");
    assert!(net.cluster(&a).is_master());
    net.revive();
    net.settle();
    assert_clean(&net);
}

#[test]
fn a_slave_down_during_a_handover_follows_the_new_master_when_it_is_back() {
    let (mut net, a, b, c) = domain_of_three();
    net.kill(&c);
    net.command(&a, Command::Handover { to: b.clone(), password: pw(0) }).unwrap();
    net.deliver_all();
    assert!(net.cluster(&b).is_master() && slave_of(&net, &a, &b));
    net.revive();
    net.settle();
    assert!(slave_of(&net, &c, &b));
    assert_clean(&net);
}

#[test]
fn a_lost_handover_message_is_sent_again_until_the_new_master_has_taken_over() {
    let (mut net, a, b, _c) = domain_of_three();
    net.command(&a, Command::Handover { to: b.clone(), password: pw(0) }).unwrap();
    let lost = net.take(|e| matches!(e.msg, PeerMessage::Handover(_)));
    assert_eq!(lost.len(), 1);
    assert!(!net.cluster(&b).is_master());
    // Until b has taken over, a stays master and refuses changes, naming b.
    assert!(net.cluster(&a).is_master());
    let e = net.command(&a, Command::RotateKey).unwrap_err();
    assert!(matches!(&e, CommandError::HandoverInProgress { to, .. } if *to == b), "{e}");
    net.settle();
    assert!(net.cluster(&b).is_master() && slave_of(&net, &a, &b));
    assert_clean(&net);
}

#[test]
fn promotion_is_refused_while_the_master_was_heard_from_recently_unless_forced() {
    let (mut net, a, b, _c) = domain_of_three();
    let promote = |net: &mut Network, p: usize, force: bool| {
        net.command(&b, Command::Promote { password: pw(p), force })
    };
    let e = promote(&mut net, 0, false).unwrap_err();
    assert!(matches!(&e, CommandError::MasterStillReachable { master, .. } if *master == a), "{e}");
    assert!(e.to_string().contains("--force"), "{e}");
    assert!(matches!(promote(&mut net, 1, true), Err(CommandError::WrongMasterPassword { .. })));
    let e = net.command(&a, Command::Promote { password: pw(0), force: true }).unwrap_err();
    assert!(matches!(e, CommandError::PromoteOnMaster { .. }), "{e}");
    // Forced: b is master at once, with a warning; a steps down when it hears the new term.
    let out = promote(&mut net, 0, true).unwrap();
    assert!(matches!(out, Outcome::Promoted { forced: true, .. }), "{out:?}");
    assert!(net.get(&b).logs.iter().any(|l| l.text.contains("--force")));
    net.settle();
    assert!(slave_of(&net, &a, &b));
    assert_clean(&net);
}

#[test]
fn after_the_master_is_lost_a_promoted_slave_leads_and_the_old_master_steps_down_when_back() {
    let (mut net, a, b, c) = domain_of_three();
    net.kill(&a);
    wait_past_threshold(&mut net);
    assert!(net.alarm(&b, AlarmName::MasterUnreachable, &a).unwrap().remedy.contains("promote"));
    let out = net.command(&b, Command::Promote { password: pw(0), force: false }).unwrap();
    let Outcome::Promoted { term, forced: false, .. } = out else { panic!("{out:?}") };
    net.deliver_all();
    assert!(slave_of(&net, &c, &b));
    assert_eq!(term_of(&net, &c), term);
    let rotated = net.command(&b, Command::RotateKey).unwrap();
    let Outcome::Rotated { primary } = rotated else { panic!() };
    assert!(term.versions().contains(&primary), "b numbers its versions in its own term");
    net.revive();
    net.settle();
    assert!(slave_of(&net, &a, &b), "the old master is b's slave");
    assert_eq!(versions(&net, &a), versions(&net, &b));
    assert_eq!(net.get(&a).logs.iter().filter(|l| l.text.starts_with("stepped down")).count(), 1);
    assert!(net.alarm(&b, AlarmName::KeysRecovered, &a).is_none(), "a made no version");
    assert_clean(&net);
}

#[test]
fn a_peer_heard_after_a_silence_has_its_link_retried_at_once_and_one_talking_as_usual_not() {
    let (mut net, a, b, _c) = domain_of_three();
    net.kill(&a);
    wait_past_threshold(&mut net);
    net.command(&b, Command::Promote { password: pw(0), force: false }).unwrap();
    net.settle();
    // c talks to b every hello interval: no retry of b's link to it.
    let before = net.get(&b).link_retries.len();
    net.advance(Duration::from_secs(30));
    net.deliver_all();
    assert_eq!(net.get(&b).link_retries.len(), before, "{:?}", net.get(&b).link_retries);
    // The old master is back: its first hello tells b that its link to a (which would back
    // off while a was down) may try at once; a steps down within that round trip.
    net.revive();
    net.deliver_all();
    assert_eq!(&net.get(&b).link_retries[before..], std::slice::from_ref(&a));
    assert!(slave_of(&net, &a, &b), "a stepped down without waiting for a timer");
    assert_clean(&net);
}

#[test]
fn versions_a_cut_off_master_made_reach_the_new_master_and_the_alarm_asks_for_a_download() {
    let (mut net, a, b, c) = domain_of_three();
    // a and c are cut off from b: a rotates there, and c seals with that version.
    net.partition(std::slice::from_ref(&b));
    let Outcome::Rotated { primary: cut_off } = net.command(&a, Command::RotateKey).unwrap() else {
        panic!()
    };
    net.deliver_all();
    assert_eq!(net.get(&c).hot_ring.as_ref().unwrap().primary_version(), cut_off);
    wait_past_threshold(&mut net);
    net.command(&b, Command::Promote { password: pw(0), force: false }).unwrap();
    let Outcome::Rotated { primary: new } = net.command(&b, Command::RotateKey).unwrap() else {
        panic!()
    };
    assert_ne!(cut_off, new, "two masters, two blocks of versions");
    net.heal();
    net.settle();
    assert!(slave_of(&net, &a, &b) && slave_of(&net, &c, &b));
    let ring = net.cluster(&b).key_ring().unwrap();
    assert!(ring.get(cut_off).is_ok() && ring.get(new).is_ok());
    assert_eq!(ring.primary_version(), new, "the new master's primary stays primary");
    assert!(
        net.cluster(&a).state().handback.is_none() && net.cluster(&c).state().handback.is_none()
    );
    // One alarm about whoever handed the version back first; the download clears it.
    let recovered: Vec<_> = [&a, &c]
        .into_iter()
        .filter(|p| net.alarm(&b, AlarmName::KeysRecovered, p).is_some())
        .collect();
    assert_eq!(recovered.len(), 1, "{recovered:?}");
    let e = net.command(&b, Command::Disable { password: pw(0), i_understand_data_loss: false });
    assert!(matches!(e, Err(CommandError::KeysNotDownloaded { .. })));
    net.command(&b, Command::DownloadKeys { password: pw(0) }).unwrap();
    net.settle();
    assert!(net.alarm(&b, AlarmName::KeysRecovered, recovered[0]).is_none());
    assert_clean(&net);
}

#[test]
fn two_masters_of_one_term_made_while_split_are_detected_when_their_sides_meet() {
    // F11. a is master (term 0.0; slots a 0, b 1, c 2); b is cut off from a and c.
    let (mut net, a, b, c) = domain_of_three();
    let domain = net.cluster(&a).domain_state().unwrap().domain;
    net.partition(std::slice::from_ref(&b));
    wait_past_threshold(&mut net);
    // Two masters act at once, both in round 1: b promoted, and a hands over to c.
    net.command(&b, Command::Promote { password: pw(0), force: false }).unwrap();
    net.command(&a, Command::Handover { to: c.clone(), password: pw(0) }).unwrap();
    net.settle();
    assert_eq!(
        (term_of(&net, &b).to_string(), term_of(&net, &c).to_string()),
        ("1.1".into(), "1.2".into())
    );
    // Each side peers a new cluster; each master gives it the next free slot: 3 on both sides.
    let (x, y) = (net.add_cluster("x"), net.add_cluster("y"));
    net.peer(&c, &x);
    net.peer(&a, &x);
    net.peer(&b, &y);
    net.settle();
    let slot = |m: &ClusterId, of: &ClusterId| net.cluster(m).domain_state().unwrap().members[of];
    assert_eq!((slot(&c, &x), slot(&b, &y)), (3, 3));
    // Both new clusters are made master in the same round: one term, two masters.
    net.command(&c, Command::Handover { to: x.clone(), password: pw(0) }).unwrap();
    net.command(&b, Command::Handover { to: y.clone(), password: pw(0) }).unwrap();
    net.settle();
    assert!(net.cluster(&x).is_master() && net.cluster(&y).is_master());
    assert_eq!(term_of(&net, &x), term_of(&net, &y));
    // Each rotates: one version number, two different keys.
    let rotate = |net: &mut Network, m: &ClusterId| match net.command(m, Command::RotateKey) {
        Ok(Outcome::Rotated { primary }) => primary,
        other => panic!("{other:?}"),
    };
    let (vx, vy) = (rotate(&mut net, &x), rotate(&mut net, &y));
    assert_eq!(vx, vy);
    let key = |net: &Network, at: &ClusterId| {
        net.cluster(at).key_ring().unwrap().get(vx).unwrap().clone()
    };
    let (kx, ky) = (key(&net, &x), key(&net, &y));
    assert!(kx != ky);
    net.settle();
    for id in net.ids() {
        assert!(!net.get(&id).raises.iter().any(|r| r.name() == AlarmName::MultiMaster), "{id}");
    }

    // The sides meet again: a and c (slaves of x) are peered with b (slave of y), all of one
    // domain and term. Both sides raise MAencryptionMultiMaster; no state or key crosses.
    net.heal();
    net.settle();
    for (at, about) in [(&b, &a), (&b, &c), (&a, &b), (&c, &b)] {
        let alarm = net.alarm(at, AlarmName::MultiMaster, about);
        let alarm = alarm.unwrap_or_else(|| panic!("{at} about {about}"));
        assert!(alarm.cause.contains("two masters hold the same term"), "{}", alarm.cause);
        let r = &alarm.remedy;
        assert!(
            r.contains("key set from cluster") && r.contains(" x ") && r.contains(" y "),
            "{r}"
        );
    }
    assert!(slave_of(&net, &a, &x) && slave_of(&net, &c, &x) && slave_of(&net, &b, &y));
    assert!(net.cluster(&x).is_master() && net.cluster(&y).is_master());
    for (at, k) in [(&x, &kx), (&a, &kx), (&c, &kx), (&y, &ky), (&b, &ky)] {
        assert!(key(&net, at) == *k, "{at} holds its own master's key {vx}");
    }
    // The two masters peered directly: the same, on both.
    net.peer(&x, &y);
    net.settle();
    assert!(net.alarm(&x, AlarmName::MultiMaster, &y).is_some());
    assert!(net.alarm(&y, AlarmName::MultiMaster, &x).is_some());
    assert!(key(&net, &x) == kx && key(&net, &y) == ky);
    // A merge of the two rings refuses the version and changes nothing.
    let mut ring = net.cluster(&x).key_ring().unwrap().clone();
    let e = ring.insert(&ky).unwrap_err();
    assert!(
        matches!(e, KeyRingError::Clash { domain: d, version } if d == domain && version == vx)
    );
    assert!(ring.get(vx).unwrap() == &kx);
    // The simulator's invariants see exactly this case (it is detected, not prevented).
    for v in net.violations() {
        assert!(
            v.contains("both master of domain") || v.contains("two different keys share version"),
            "{v}"
        );
    }
    assert!(!net.violations().is_empty());
    let q = net.check_quiet();
    assert!(q.is_empty(), "{q:#?}");
}

#[test]
fn a_state_of_a_lower_term_is_refused_as_fenced() {
    let (mut net, a, b, c) = domain_of_three();
    let old = net.cluster(&a).domain_state().unwrap().clone();
    net.command(&a, Command::Handover { to: b.clone(), password: pw(0) }).unwrap();
    net.settle();
    // The old term's state again, with a higher epoch, as if a replayed it: c refuses it.
    let mut replay = old;
    replay.epoch = Epoch(replay.epoch.0 + 10);
    net.inject(Envelope {
        from: a.clone(),
        to: c.clone(),
        msg: PeerMessage::State(Box::new(replay)),
    });
    net.apply(&Op::Deliver(usize::MAX)); // the injected message is the last one in flight
    let answers = net.take(|e| e.from == c && e.to == a);
    assert!(
        answers.iter().any(|e| matches!(&e.msg,
            PeerMessage::Reject(r) if matches!(r.reason, RejectReason::Fenced { .. }))),
        "{answers:?}"
    );
    net.settle();
    assert!(slave_of(&net, &c, &b));
    assert_clean(&net);
}

#[test]
fn terms_number_key_versions_in_blocks_of_their_own() {
    assert_eq!(Term::INITIAL.versions().start().get(), 1, "the creator's versions are 1, 2, …");
    let t = Term::new(1, 2).unwrap();
    assert_eq!((t.round(), t.slot(), t.to_string()), (1, 2, "1.2".to_owned()));
    assert_eq!(t.versions().start().get(), 258 * 16384 + 1);
    assert_eq!(Term::new(Term::MAX_ROUND, 255).unwrap().versions().end().get(), u32::MAX);
    assert!(Term::new(Term::MAX_ROUND + 1, 0).is_none());
    assert!(
        Term::new(1, 0).unwrap() > Term::INITIAL
            && Term::new(1, 1).unwrap() > Term::new(1, 0).unwrap()
    );
    // Disjoint blocks: the end of one term's block is below the start of the next.
    for (x, y) in [
        (Term::INITIAL, Term::new(0, 1).unwrap()),
        (Term::new(3, 255).unwrap(), Term::new(4, 0).unwrap()),
    ] {
        assert!(x.versions().end() < y.versions().start());
    }
}

#[test]
fn a_state_made_before_terms_loads_as_the_initial_term_and_the_master_gives_slots() {
    let (mut net, a, b, c) = domain_of_three();
    // Strip what format 3 added, as a format-2 file would have it.
    let mut disk = net.get(&a).disk.clone();
    let Role::Master(m) = &mut disk.role else { panic!() };
    m.state.members.clear();
    let json = serde_json::to_value(&m.state).unwrap();
    let mut old = json.as_object().unwrap().clone();
    old.remove("term");
    old.remove("members");
    let back: super::super::state::DomainState = serde_json::from_value(old.into()).unwrap();
    assert_eq!(back.term, Term::INITIAL);
    disk.format = 2;
    net.restart_from(&a, disk, Capabilities::CURRENT);
    net.settle();
    let members = &net.cluster(&a).domain_state().unwrap().members;
    assert_eq!(members.get(&a), Some(&0));
    assert!(members.contains_key(&b) && members.contains_key(&c));
    assert!(slave_of(&net, &b, &a) && slave_of(&net, &c, &a));
    assert_clean(&net);
}

#[test]
fn a_hello_of_one_domain_under_two_terms_is_no_multi_master_conflict() {
    let (mut net, a, b, _c) = domain_of_three();
    net.partition(std::slice::from_ref(&a));
    wait_past_threshold(&mut net);
    net.command(&b, Command::Promote { password: pw(0), force: false }).unwrap();
    net.heal();
    // Deliver one message at a time: no moment shows MAencryptionMultiMaster.
    while !net.in_flight().is_empty() {
        net.apply(&Op::DeliverInOrder(0));
        for id in net.ids() {
            assert!(!net.get(&id).raises.iter().any(|r| r.name() == AlarmName::MultiMaster));
        }
    }
    net.settle();
    assert!(matches!(net.cluster(&a).announced(), Announced::Slave { master, .. } if master == b));
    assert_clean(&net);
}

fn failover_op() -> impl Strategy<Value = Op> {
    let i = 0usize..8;
    prop_oneof![
        2 => i.clone().prop_map(Op::Rotate),
        1 => i.clone().prop_map(Op::ChangePassword),
        1 => i.clone().prop_map(Op::Download),
        2 => i.clone().prop_map(|to| Op::Handover { to }),
        2 => (i.clone(), prop::bool::weighted(0.2)).prop_map(|(c, f)| Op::Promote(c, f)),
        2 => (1u32..255).prop_map(Op::Partition),
        1 => Just(Op::Heal),
        1 => i.clone().prop_map(Op::Kill),
        1 => Just(Op::Revive),
        1 => i.clone().prop_map(Op::Restart),
        8 => (0usize..64).prop_map(Op::Deliver),
        2 => (0usize..64).prop_map(Op::Drop),
        1 => (0usize..64).prop_map(Op::Duplicate),
        1 => Just(Op::DeliverAll),
        2 => (1u64..400).prop_map(|s| Op::Tick(Duration::from_secs(s))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// The failover properties over random partitions that heal, kills, handovers and
    /// promotions (forced ones too): at most one master per (domain, term) and never two keys
    /// under one (domain, version), after every step; once healed and quiet, one master per
    /// domain whose key set holds every version anyone sealed with, slaves holding exactly
    /// its state (the highest term), and nothing across domains.
    #[test]
    fn failover_keeps_one_master_per_term_and_every_sealed_version(
        n in 2usize..=5,
        ops in prop::collection::vec(failover_op(), 1..80),
    ) {
        let mut net = Network::with_clusters(n);
        let ids = net.ids();
        net.peer_all(&ids);
        net.settle();
        net.apply(&Op::Enable { at: 0, remote: true });
        net.settle();
        for o in &ops {
            net.apply(o);
            prop_assert!(net.violations().is_empty(), "after {:?}: {:#?}", o, net.violations());
        }
        let bad = net.check_failover();
        prop_assert!(bad.is_empty(), "{:#?}", bad);
        prop_assert!(net.violations().is_empty(), "{:#?}", net.violations());
        let quiet = net.check_quiet();
        prop_assert!(quiet.is_empty(), "{:#?}", quiet);
    }
}

#[test]
fn a_newer_term_is_believed_only_from_a_cluster_that_holds_the_domains_keys() {
    let (mut net, a, b, c) = domain_of_three();
    // z, master of its own domain, forges a state of a's domain under the highest term, with
    // a key of its own: nobody steps down, follows it, or hands it anything.
    let z = net.add_cluster("z");
    net.peer(&a, &z);
    net.peer(&b, &z);
    net.settle();
    let mut forged = net.cluster(&a).domain_state().unwrap().clone();
    let foreign = {
        let zc = net.add_cluster("zz");
        enable(&mut net, &zc, false);
        net.cluster(&zc).key_ring().unwrap().clone()
    };
    forged.master = z.clone();
    forged.term = Term::new(Term::MAX_ROUND, 9).unwrap();
    forged.members.insert(z.clone(), 9);
    forged.ring = crate::crypto::keyring::KeyRing::from_keys(
        forged.domain,
        foreign.primary_version(),
        foreign.keys().cloned(),
    )
    .unwrap();
    for to in [&a, &b] {
        assert_eq!(net.cluster(to).judge_state(&z, &forged), Err(RejectReason::NotOfDomain));
    }
    assert!(net.cluster(&a).is_master() && slave_of(&net, &b, &a) && slave_of(&net, &c, &a));
    assert!(net.cluster(&a).state().handback.is_none());
}
