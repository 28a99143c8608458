//! Alarms: the names operators see in their monitoring, how severe each is, and what to do.
//!
//! The cluster state machine decides which alarms are active; this module only names them and
//! keeps the registry that turns "the set of alarms that should be active now" into raise and
//! clear events, so that sinks (log, the admin API, and the configured [`sink`]s: syslog,
//! Alertmanager, webhooks) see each change exactly once.
//!
//! Invariants: one condition is one alarm. An alarm is identified by its [`AlarmKey`] (name +
//! the cluster it is about), and that identity is the condition: at most one alarm per key is
//! active; [`AlarmRegistry::reconcile`] reports a raise only for a key that was not active, an
//! update (new cause or remedy text, e.g. the elapsed time of an outage) for a key that stays
//! active, and a clear only for a key that was active. So a condition that lasts is raised
//! once and cleared once, whatever its texts do meanwhile; the registry is the only producer of
//! raise and clear events, so no caller can raise twice by accident. Alarm texts never contain
//! key material or passwords.

mod history;
pub(crate) mod sink;

pub(crate) use history::{AlarmEvent, AlarmEventKind, AlarmHistory};

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::ClusterId;

/// `ms` since the Unix epoch as RFC 3339, UTC, with milliseconds (`2026-12-01T06:20:00.123Z`):
/// how the alarm history and every sink write the time of a raise or clear.
fn rfc3339(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Every alarm imcrypt can raise. The `MA…` strings are what operators grep and configure
/// their monitoring for; they never change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AlarmName {
    /// Two encryption domains meet across a peering: two masters, a master and a slave of
    /// another master, or two slaves of different masters. Nothing crosses between them.
    #[serde(rename = "MAencryptionMultiMaster")]
    MultiMaster,
    /// A slave has not heard from its master for longer than the configured threshold. It
    /// keeps encrypting with the keys it holds; changes wait for the master.
    #[serde(rename = "MAencryptionMasterUnreachable")]
    MasterUnreachable,
    /// A master has not heard from one of its slaves (or from a peer it has not heard from at
    /// all since it started, which may be one) for longer than the same threshold. The slave
    /// keeps encrypting with the keys it holds, but rotations, password changes and a disable
    /// do not reach it until it is back.
    #[serde(rename = "MAencryptionSlaveUnreachable")]
    SlaveUnreachable,
    /// Encryption data that nobody will ever update or delete: a slave whose master is no
    /// longer a peer, or a slave removed from the master's peers without disabling.
    #[serde(rename = "MAencryptionStaleData")]
    StaleData,
    /// A peer refused the state this master sent it (it follows another master, is not
    /// eligible, left the domain, or holds a newer state than this master).
    #[serde(rename = "MAencryptionSyncRejected")]
    SyncRejected,
    /// The master added key versions that a former master made under an older term while it
    /// was cut off (handed back by it or by its slaves): exports made before lack them. Clears
    /// when the key set is downloaded again.
    #[serde(rename = "MAencryptionKeysRecovered")]
    KeysRecovered,
    /// Key material removed on this master (retired versions, or a disabled domain) is
    /// destroyed for good within a day, at the end of `encryption.destruction_grace` (at once
    /// when that is shorter than a day). About this cluster; cleared when it is destroyed or
    /// restored.
    #[serde(rename = "MAencryptionKeysPendingDestruction")]
    KeysPendingDestruction,
    /// The compliance database of one of this cluster's nodes cannot be reached (the daemon's
    /// probe failed). About this cluster itself.
    #[serde(rename = "MAcomplianceDbDown")]
    ComplianceDbDown,
    /// The audit trail cannot be written: every audited act is refused meanwhile (admin
    /// changes, key downloads, peers' states). Raised and cleared by the daemon's core, not
    /// the state machine (its own records could not be written either). About this cluster.
    #[serde(rename = "MAencryptionAuditUnavailable")]
    AuditUnavailable,
    /// Never raised by the state machine: what `imcrypt alarms test` sends through the sinks.
    #[serde(rename = "MAimcryptTest")]
    Test,
}

impl AlarmName {
    #[cfg(test)]
    pub(crate) const ALL: [AlarmName; 10] = [
        AlarmName::AuditUnavailable,
        AlarmName::MultiMaster,
        AlarmName::MasterUnreachable,
        AlarmName::SlaveUnreachable,
        AlarmName::StaleData,
        AlarmName::SyncRejected,
        AlarmName::KeysRecovered,
        AlarmName::KeysPendingDestruction,
        AlarmName::ComplianceDbDown,
        AlarmName::Test,
    ];

    /// The operator-facing name, e.g. `MAencryptionMultiMaster`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AlarmName::MultiMaster => "MAencryptionMultiMaster",
            AlarmName::MasterUnreachable => "MAencryptionMasterUnreachable",
            AlarmName::SlaveUnreachable => "MAencryptionSlaveUnreachable",
            AlarmName::StaleData => "MAencryptionStaleData",
            AlarmName::SyncRejected => "MAencryptionSyncRejected",
            AlarmName::KeysRecovered => "MAencryptionKeysRecovered",
            AlarmName::KeysPendingDestruction => "MAencryptionKeysPendingDestruction",
            AlarmName::ComplianceDbDown => "MAcomplianceDbDown",
            AlarmName::AuditUnavailable => "MAencryptionAuditUnavailable",
            AlarmName::Test => "MAimcryptTest",
        }
    }

    /// How bad it is. Multi-master is critical: archives of one network are split between two
    /// key sets, and whoever downloads keys from one master cannot read the other's records.
    fn severity(self) -> Severity {
        match self {
            AlarmName::MultiMaster | AlarmName::AuditUnavailable => Severity::Critical,
            // Planned, and nothing is wrong yet: a reminder that a restore is still possible.
            AlarmName::Test | AlarmName::KeysPendingDestruction => Severity::Warning,
            AlarmName::MasterUnreachable
            | AlarmName::SlaveUnreachable
            | AlarmName::StaleData
            | AlarmName::SyncRejected
            | AlarmName::KeysRecovered
            | AlarmName::ComplianceDbDown => Severity::Major,
        }
    }
}

impl fmt::Display for AlarmName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Severity in the usual telecom order (X.733 perceived severity, without "indeterminate").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Severity {
    Warning,
    Minor,
    Major,
    Critical,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Warning => "warning",
            Severity::Minor => "minor",
            Severity::Major => "major",
            Severity::Critical => "critical",
        })
    }
}

/// What identifies one alarm instance: its name and the peer cluster it is about.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlarmKey {
    pub name: AlarmName,
    /// The other cluster involved (the conflicting peer, the unreachable master, the removed
    /// slave…). Alarms are always about a relation with one peer.
    pub(crate) about: ClusterId,
}

/// One active alarm as shown to operators.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alarm {
    pub key: AlarmKey,
    pub(crate) severity: Severity,
    /// What is wrong, in the operator's terms.
    pub cause: String,
    /// What the operator should do about it.
    pub remedy: String,
}

impl Alarm {
    pub(crate) fn new(
        name: AlarmName,
        about: ClusterId,
        cause: impl Into<String>,
        remedy: impl Into<String>,
    ) -> Self {
        Self {
            key: AlarmKey { name, about },
            severity: name.severity(),
            cause: cause.into(),
            remedy: remedy.into(),
        }
    }

    #[cfg(test)]
    pub(crate) fn name(&self) -> AlarmName {
        self.key.name
    }
}

impl fmt::Display for Alarm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}) about cluster {}: {} Remedy: {}",
            self.key.name, self.severity, self.key.about, self.cause, self.remedy
        )
    }
}

/// A change of the active alarm set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum AlarmChange {
    /// A condition that was not active now is.
    Raise(Alarm),
    /// A condition that stays active has a new cause or remedy text (same key, same
    /// severity): not a new alarm. The history and the syslog and webhook sinks record nothing
    /// for it; the active set (status, Alertmanager's next re-send) shows the new text.
    Update(Alarm),
    /// A condition that was active no longer is.
    Clear(AlarmKey),
}

/// The set of active alarms of one cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct AlarmRegistry {
    active: BTreeMap<AlarmKey, Alarm>,
}

impl AlarmRegistry {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Makes `desired` the active set and returns the changes, clears first, in key order.
    /// An alarm whose key stays active but whose cause or remedy text changed is an
    /// [`AlarmChange::Update`], never a second raise.
    pub(crate) fn reconcile(
        &mut self,
        desired: impl IntoIterator<Item = Alarm>,
    ) -> Vec<AlarmChange> {
        let desired: BTreeMap<AlarmKey, Alarm> =
            desired.into_iter().map(|a| (a.key.clone(), a)).collect();
        let mut changes = Vec::new();
        for key in self.active.keys() {
            if !desired.contains_key(key) {
                changes.push(AlarmChange::Clear(key.clone()));
            }
        }
        for (key, alarm) in &desired {
            match self.active.get(key) {
                None => changes.push(AlarmChange::Raise(alarm.clone())),
                Some(old) if old != alarm => changes.push(AlarmChange::Update(alarm.clone())),
                Some(_) => {}
            }
        }
        self.active = desired;
        changes
    }

    pub(crate) fn is_active(&self, name: AlarmName, about: &ClusterId) -> bool {
        self.active.contains_key(&AlarmKey { name, about: about.clone() })
    }

    #[cfg(test)]
    pub(crate) fn get(&self, name: AlarmName, about: &ClusterId) -> Option<&Alarm> {
        self.active.get(&AlarmKey { name, about: about.clone() })
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Alarm> {
        self.active.values()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.active.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ClusterId {
        ClusterId::new(s).unwrap()
    }

    #[test]
    fn names_are_the_operator_strings() {
        assert_eq!(AlarmName::MultiMaster.to_string(), "MAencryptionMultiMaster");
        assert_eq!(AlarmName::MasterUnreachable.as_str(), "MAencryptionMasterUnreachable");
        for n in AlarmName::ALL {
            let json = serde_json::to_string(&n).unwrap();
            assert_eq!(json, format!("\"{}\"", n.as_str()));
            assert_eq!(serde_json::from_str::<AlarmName>(&json).unwrap(), n);
        }
        assert_eq!(AlarmName::MultiMaster.severity(), Severity::Critical);
    }

    #[test]
    fn reconcile_reports_each_change_once() {
        let mut r = AlarmRegistry::new();
        let a = Alarm::new(AlarmName::MultiMaster, id("b"), "cause", "remedy");
        assert_eq!(r.reconcile([a.clone()]), vec![AlarmChange::Raise(a.clone())]);
        assert_eq!(r.reconcile([a.clone()]), vec![]);
        // The same condition with a new text is updated in place, not raised again.
        let a2 = Alarm::new(AlarmName::MultiMaster, id("b"), "other cause", "remedy");
        assert_eq!(r.reconcile([a2.clone()]), vec![AlarmChange::Update(a2.clone())]);
        assert_eq!(r.get(AlarmName::MultiMaster, &id("b")), Some(&a2));
        assert_eq!(r.reconcile([a2.clone()]), vec![]);
        assert!(r.is_active(AlarmName::MultiMaster, &id("b")));
        assert_eq!(r.reconcile([]), vec![AlarmChange::Clear(a.key)]);
        assert!(r.is_empty());
    }
}
