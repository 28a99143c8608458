//! Key lifecycle scenarios, one per row of docs/behaviour.md's "Key lifecycle" table: retiring
//! old versions, the grace period before destruction, and restore.

use std::time::Duration;

use super::super::sim::{Network, SimSettings};
use super::*;
use crate::crypto::keyring::KeyRing;

const DAY: Duration = Duration::from_secs(24 * 3600);

fn v(n: u32) -> KeyVersion {
    KeyVersion::new(n).unwrap()
}

/// A master with both peers enrolled, key versions 1, 2 and 3 (primary 3), downloaded.
fn domain_of_three_versions(settings: SimSettings) -> (Network, ClusterId, ClusterId, ClusterId) {
    let mut net = Network::new(settings);
    let (a, b, c) = (net.add_cluster("a"), net.add_cluster("b"), net.add_cluster("c"));
    net.peer_all(&[a.clone(), b.clone(), c.clone()]);
    enable(&mut net, &a, true);
    net.command(&a, Command::RotateKey).unwrap();
    net.command(&a, Command::RotateKey).unwrap();
    net.command(&a, Command::DownloadKeys { password: pw(0) }).unwrap();
    net.settle();
    assert!(slave_of(&net, &b, &a) && slave_of(&net, &c, &a));
    (net, a, b, c)
}

fn versions(net: &Network, c: &ClusterId) -> Vec<u32> {
    net.cluster(c).key_ring().map(|r| r.versions().map(|v| v.get()).collect()).unwrap_or_default()
}

fn retire(below: u32, acknowledged: bool) -> Command {
    Command::RetireKeys { password: pw(0), below: v(below), i_understand_data_loss: acknowledged }
}

fn restore() -> Command {
    Command::RestoreKeys { password: pw(0) }
}

fn ring(net: &Network, c: &ClusterId) -> KeyRing {
    net.cluster(c).key_ring().unwrap().clone()
}

/// Lets `d` pass with the peers talking (steps shorter than the unreachable threshold).
fn pass(net: &mut Network, d: Duration) {
    let step = Duration::from_secs(240);
    let mut left = d;
    while !left.is_zero() {
        let s = left.min(step);
        net.advance(s);
        net.deliver_all();
        left -= s;
    }
}

fn pending_active(net: &Network, a: &ClusterId) -> bool {
    net.alarm_active(a, AlarmName::KeysPendingDestruction, a)
}

#[test]
fn retire_removes_the_versions_below_n_from_every_cluster_and_the_primary_and_row_identity_stay() {
    let (mut net, a, b, c) = domain_of_three_versions(SimSettings::default());
    let before = ring(&net, &a);
    let out = net.command(&a, retire(3, false)).unwrap();
    let Outcome::Retired { retired, destroy_at, .. } = out else { panic!("{out:?}") };
    assert_eq!(retired, vec![v(1), v(2)]);
    assert_eq!(destroy_at, Some(net.now().after(7 * DAY)));
    net.settle();
    for x in [&a, &b, &c] {
        assert_eq!(versions(&net, x), vec![3], "{x}");
        let r = ring(&net, x);
        assert_eq!(r.primary_version(), v(3));
        assert_eq!(r.primary(), before.primary(), "the primary is the same key");
        // The row identity key is stored, not derived from the first version: it survives.
        assert!(r.row_identity() == before.row_identity(), "{x}: row identity changed");
    }
    assert!(slave_of(&net, &b, &a) && slave_of(&net, &c, &a));
    // The hot paths got the smaller ring: they can only seal with the primary, version 3.
    assert_eq!(net.get(&b).hot_ring.as_ref().unwrap().versions().count(), 1);
    // Only the master keeps them, pending destruction; slaves delete at once.
    assert_eq!(net.cluster(&a).pending_destruction().len(), 1);
    for s in [&b, &c] {
        assert!(net.cluster(s).pending_destruction().is_empty());
        let disk = serde_json::to_string(&net.get(s).disk).unwrap();
        let key_v1 = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            before.get(v(1)).unwrap().bytes(),
        );
        assert!(!disk.contains(&key_v1), "{s} still stores version 1");
    }
    assert!(!pending_active(&net, &a), "a week away: no alarm yet");
    assert_clean(&net);
}

#[test]
fn retire_is_refused_unless_the_keys_were_downloaded_or_the_loss_is_acknowledged() {
    let (mut net, a, ..) = domain_of_three_versions(SimSettings::default());
    net.command(&a, Command::RotateKey).unwrap();
    net.settle();
    let err = net.command(&a, retire(3, false)).unwrap_err();
    assert!(
        matches!(&err, CommandError::RetireNotDownloaded { versions, newest, .. }
            if versions == "1, 2" && newest.get() == 4),
        "{err:?}"
    );
    assert!(err.to_string().contains("--i-understand-data-loss"), "{err}");
    let wrong = Command::RetireKeys { password: pw(1), below: v(3), i_understand_data_loss: true };
    assert_eq!(net.command(&a, wrong).unwrap_err(), CommandError::WrongPassword);
    assert_eq!(versions(&net, &a), vec![1, 2, 3, 4]);
    net.command(&a, retire(3, true)).unwrap();
    assert_eq!(versions(&net, &a), vec![3, 4]);
    // And after a download, without acknowledging.
    net.command(&a, Command::DownloadKeys { password: pw(0) }).unwrap();
    net.command(&a, retire(4, false)).unwrap();
    assert_eq!(versions(&net, &a), vec![4]);
    net.settle();
    assert_clean(&net);
}

#[test]
fn retire_is_refused_above_the_primary_with_nothing_below_and_off_the_master() {
    let (mut net, a, b, _) = domain_of_three_versions(SimSettings::default());
    let err = net.command(&a, retire(4, true)).unwrap_err();
    assert_eq!(err, CommandError::RetireAbovePrimary { below: v(4), primary: v(3) });
    assert!(err.to_string().contains("retire below 3 or lower"), "{err}");
    let err = net.command(&a, retire(1, true)).unwrap_err();
    assert_eq!(err, CommandError::NothingToRetire { below: v(1), oldest: v(1) });
    let err = net.command(&b, retire(2, true)).unwrap_err();
    assert!(matches!(err, CommandError::NotMasterButSlave { .. }), "{err:?}");
    assert_eq!(versions(&net, &a), vec![1, 2, 3]);
    assert_clean(&net);
}

#[test]
fn a_key_download_after_a_retirement_holds_only_what_is_left() {
    let (mut net, a, ..) = domain_of_three_versions(SimSettings::default());
    net.command(&a, retire(2, false)).unwrap();
    let out = net.command(&a, Command::DownloadKeys { password: pw(0) }).unwrap();
    let Outcome::KeysForDownload(r) = out else { panic!("{out:?}") };
    assert_eq!(r.versions().map(|v| v.get()).collect::<Vec<_>>(), vec![2, 3]);
    assert_eq!(net.get(&a).hot_ring.as_ref().unwrap().versions().count(), 2);
}

#[test]
fn restore_within_the_grace_period_brings_back_exactly_what_was_retired_everywhere() {
    let (mut net, a, b, c) = domain_of_three_versions(SimSettings::default());
    let before = ring(&net, &a);
    net.command(&a, retire(3, false)).unwrap();
    net.settle();
    pass(&mut net, 6 * DAY + Duration::from_secs(1));
    assert!(pending_active(&net, &a), "a day before destruction");
    let err = net.command(&b, restore()).unwrap_err();
    assert!(matches!(err, CommandError::NotMasterButSlave { .. }), "{err:?}");
    assert_eq!(
        net.command(&a, Command::RestoreKeys { password: pw(1) }).unwrap_err(),
        CommandError::WrongPassword
    );
    let out = net.command(&a, restore()).unwrap();
    let Outcome::Restored { versions: back, domain_back, .. } = out else { panic!("{out:?}") };
    assert_eq!((back, domain_back), (vec![v(1), v(2)], false));
    net.settle();
    for x in [&a, &b, &c] {
        assert_eq!(ring(&net, x), before, "{x}: the very same keys");
    }
    assert!(net.cluster(&a).pending_destruction().is_empty());
    assert!(net.cluster(&a).domain_state().unwrap().retired.is_empty());
    assert!(!pending_active(&net, &a), "cleared by the restore");
    assert_eq!(
        net.command(&a, restore()).unwrap_err().to_string(),
        format!(
            "nothing is pending destruction for domain {}: there is nothing to restore (what \
             was removed more than encryption.destruction_grace ago is destroyed for good)",
            before.domain()
        )
    );
    assert_clean(&net);
}

#[test]
fn retired_keys_are_destroyed_when_the_grace_period_ends_with_a_log_line_and_an_alarm_a_day_before()
{
    let (mut net, a, ..) = domain_of_three_versions(SimSettings::default());
    net.command(&a, retire(3, false)).unwrap();
    net.settle();
    let destroy_at = net.cluster(&a).pending_destruction()[0].destroy_at;
    // The machine asks to be woken when the alarm is due, then when the keys go.
    assert_eq!(net.cluster(&a).poll_timeout().map(|t| t <= destroy_at), Some(true));
    pass(&mut net, 5 * DAY);
    assert!(!pending_active(&net, &a));
    pass(&mut net, DAY + Duration::from_secs(60));
    let alarm = net.alarm(&a, AlarmName::KeysPendingDestruction, &a).unwrap().clone();
    assert!(alarm.cause.contains("key versions 1, 2 of domain"), "{}", alarm.cause);
    assert!(alarm.remedy.contains("imcrypt key restore"), "{}", alarm.remedy);
    pass(&mut net, DAY);
    assert!(net.cluster(&a).pending_destruction().is_empty());
    assert!(!pending_active(&net, &a), "cleared when destroyed");
    let gone = net.get(&a).logs.iter().filter(|l| l.text.contains("destroyed for good")).count();
    assert_eq!(gone, 1);
    assert!(matches!(
        net.command(&a, restore()).unwrap_err(),
        CommandError::NothingToRestore { .. }
    ));
    assert_eq!(versions(&net, &a), vec![3]);
    // The alarm was raised once and cleared once.
    let raised =
        net.get(&a).raises.iter().filter(|r| r.name() == AlarmName::KeysPendingDestruction);
    assert_eq!(raised.count(), 1);
    assert_clean(&net);
}

#[test]
fn a_grace_shorter_than_a_day_alarms_at_once_and_a_zero_grace_destroys_at_once() {
    let hour = SimSettings { destruction_grace: Duration::from_secs(3600), ..Default::default() };
    let (mut net, a, ..) = domain_of_three_versions(hour);
    net.command(&a, retire(2, false)).unwrap();
    assert!(pending_active(&net, &a), "less than a day: at once");
    pass(&mut net, Duration::from_secs(3600));
    assert!(!pending_active(&net, &a) && net.cluster(&a).pending_destruction().is_empty());

    let zero = SimSettings { destruction_grace: Duration::ZERO, ..Default::default() };
    let (mut net, a, ..) = domain_of_three_versions(zero);
    let out = net.command(&a, retire(2, false)).unwrap();
    assert!(matches!(out, Outcome::Retired { destroy_at: None, .. }), "{out:?}");
    assert!(net.cluster(&a).pending_destruction().is_empty());
    assert!(!pending_active(&net, &a));
    assert!(matches!(
        net.command(&a, restore()).unwrap_err(),
        CommandError::NothingToRestore { .. }
    ));
}

#[test]
fn a_disable_on_the_master_is_restored_with_the_same_domain_keys_and_slaves() {
    let (mut net, a, b, c) = domain_of_three_versions(SimSettings::default());
    let before = net.cluster(&a).domain_state().unwrap().clone();
    net.command(&a, Command::Disable { password: pw(0), i_understand_data_loss: false }).unwrap();
    net.settle();
    assert!(is_off(&net, &a) && is_off(&net, &b) && is_off(&net, &c));
    // Slaves delete at once; the master keeps the domain pending destruction.
    let pending = net.cluster(&a).pending_destruction();
    assert_eq!(pending.len(), 1);
    assert!(
        matches!(&pending[0].removed, Removed::Disabled { master } if master.state.domain == before.domain)
    );
    assert_eq!(
        net.command(&a, Command::RestoreKeys { password: pw(1) }).unwrap_err(),
        CommandError::WrongPassword
    );
    let out = net.command(&a, restore()).unwrap();
    let Outcome::Restored { domain, domain_back, .. } = out else { panic!("{out:?}") };
    assert!(domain_back && domain == before.domain);
    net.settle();
    let now = net.cluster(&a).domain_state().unwrap().clone();
    assert_eq!((now.ring.clone(), now.password.clone()), (before.ring.clone(), before.password));
    assert!(now.epoch > before.epoch);
    assert!(slave_of(&net, &b, &a) && slave_of(&net, &c, &a), "re-enrolled: remote is on");
    assert!(net.cluster(&a).pending_destruction().is_empty());
    assert!(net.cluster(&a).state().tombstones.is_empty());
    assert_clean(&net);
}

#[test]
fn a_disabled_domain_is_not_restored_over_another_one_nor_after_its_grace() {
    let (mut net, a, ..) = domain_of_three_versions(SimSettings::default());
    net.command(&a, Command::Disable { password: pw(0), i_understand_data_loss: false }).unwrap();
    net.settle();
    enable(&mut net, &a, false);
    // Master of a new domain: restore looks for retired versions of that one only.
    assert!(matches!(
        net.command(&a, restore()).unwrap_err(),
        CommandError::NothingToRestore { .. }
    ));
    net.command(&a, Command::Disable { password: pw(0), i_understand_data_loss: true }).unwrap();
    pass(&mut net, 7 * DAY);
    assert!(net.cluster(&a).pending_destruction().is_empty(), "both destroyed");
    assert!(matches!(
        net.command(&a, restore()).unwrap_err(),
        CommandError::NothingToRestore { .. }
    ));
}

#[test]
fn a_cluster_that_missed_a_retirement_does_not_hand_the_retired_versions_back() {
    let (mut net, a, b, c) = domain_of_three_versions(SimSettings::default());
    // c is cut off, still holding versions 1 to 3 under the first term.
    net.partition(std::slice::from_ref(&c));
    net.command(&a, Command::Handover { to: b.clone(), password: pw(0) }).unwrap();
    net.settle();
    assert!(net.cluster(&b).is_master());
    net.command(&b, Command::DownloadKeys { password: pw(0) }).unwrap();
    net.command(&b, retire(3, false)).unwrap();
    net.settle();
    assert_eq!(versions(&net, &b), vec![3]);
    net.heal();
    net.settle();
    assert!(slave_of(&net, &c, &b), "c follows the new term");
    assert_eq!(versions(&net, &b), vec![3], "nothing came back");
    assert!(net.cluster(&c).state().handback.is_none());
    assert!(!net.alarm_active(&b, AlarmName::KeysRecovered, &c));
}

#[test]
fn a_restart_keeps_what_is_pending_and_still_destroys_it_on_time() {
    let (mut net, a, ..) = domain_of_three_versions(SimSettings::default());
    net.command(&a, retire(3, false)).unwrap();
    net.settle();
    let pending = net.cluster(&a).pending_destruction().to_vec();
    // Through the state file's JSON, as the daemon stores it (format 5).
    let disk: PersistedState =
        serde_json::from_str(&serde_json::to_string(&net.get(&a).disk).unwrap()).unwrap();
    assert_eq!(disk.format, 5);
    assert_eq!(disk.pending_destruction, pending);
    net.restart(&a);
    assert_eq!(net.cluster(&a).pending_destruction(), &pending[..]);
    pass(&mut net, 7 * DAY);
    assert!(net.cluster(&a).pending_destruction().is_empty());
    assert_eq!(versions(&net, &a), vec![3]);
    assert_clean(&net);
}
