//! Key lifecycle on the master: retiring old key versions, and the grace period during which
//! what a retirement or a disable removed can still be restored before it is destroyed.
//!
//! Invariants:
//! - a retirement never removes the primary version: a ring is never empty, and the hot path
//!   (which seals with the primary only) never seals with a retired version;
//! - what is pending destruction lives only in the master's persisted state (sealed with the
//!   rest of it): never in the ring the hot path gets, never in a key download, never in a
//!   message to a peer. Slaves drop removed versions at once (they take the master's new
//!   ring as it is, or delete everything when told the domain is disabled);
//! - each entry is destroyed (zeroized) by [`Cluster::handle_timeout`] once its `destroy_at`
//!   has come, with a log line, and from then on nothing restores it;
//!   `MAencryptionKeysPendingDestruction` is active from a day before the first destruction
//!   (at once when the grace period is shorter) until nothing is that close any more;
//! - a retired version stays in its domain's `retired` set unless restored, and no cluster
//!   hands it back (`failover`), so failover never brings a retired version back.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::alarm::{Alarm, AlarmName};
use crate::crypto::password::Password;
use crate::ids::KeyVersion;

use super::command::{CommandError, Outcome, fmt_time};
use super::machine::{Cluster, version_list};
use super::message::Announced;
use super::message::Eligibility;
use super::state::{MasterState, PendingDestruction, Removed, Role, Time};
use super::{LOG_ENCRYPTION_ENABLED, LogLevel};

/// How long before its destruction an entry raises `MAencryptionKeysPendingDestruction`.
const WARN_BEFORE: Duration = Duration::from_secs(24 * 3600);

/// The guard of disable and retire, which delete key material everywhere: `Err(newest)` when
/// the current key set was not downloaded since its last change and the caller did not
/// acknowledge the loss (`i_understand_data_loss`).
pub(super) fn downloaded_or_acknowledged(m: &MasterState, force: bool) -> Result<(), KeyVersion> {
    let newest = m.state.ring.newest();
    if force || m.downloaded_through == Some(newest) { Ok(()) } else { Err(newest) }
}

impl PendingDestruction {
    /// When `MAencryptionKeysPendingDestruction` starts to be active for this entry.
    fn warn_at(&self) -> Time {
        let ms = u64::try_from(WARN_BEFORE.as_millis()).unwrap_or(u64::MAX);
        Time(self.destroy_at.0.saturating_sub(ms).max(self.removed_at.0))
    }

    /// The entry in the operator's words: `key versions 1, 2 of domain D (retired)`.
    fn describe(&self) -> String {
        let what = match self.removed {
            Removed::Retired { .. } => "retired",
            Removed::Disabled { .. } => "domain disabled",
        };
        format!(
            "key versions {} of domain {} ({what})",
            version_list(self.removed.ring().versions()),
            self.removed.domain()
        )
    }
}

impl Cluster {
    /// `RetireKeys`: see [`super::Command::RetireKeys`].
    pub(super) fn retire(
        &mut self,
        password: &Password,
        below: KeyVersion,
        force: bool,
        now: Time,
    ) -> Result<Outcome, CommandError> {
        let m = self.master_state_to_change("retiring key versions")?;
        if !m.state.password.verify(password) {
            return Err(CommandError::WrongPassword);
        }
        let primary = m.state.ring.primary_version();
        if below > primary {
            return Err(CommandError::RetireAbovePrimary { below, primary });
        }
        let oldest = m.state.ring.oldest();
        if oldest >= below {
            return Err(CommandError::NothingToRetire { below, oldest });
        }
        let domain = m.state.domain;
        if let Err(newest) = downloaded_or_acknowledged(m, force) {
            let versions = version_list(m.state.ring.versions().filter(|v| *v < below));
            return Err(CommandError::RetireNotDownloaded { domain, versions, newest });
        }
        let removed = m
            .state
            .ring
            .retire_below(below)
            .map_err(|_| CommandError::RetireAbovePrimary { below, primary })?
            .ok_or(CommandError::NothingToRetire { below, oldest })?;
        let retired: Vec<KeyVersion> = removed.versions().collect();
        m.state.retired.extend(retired.iter().copied());
        m.state.epoch = m.state.epoch.next();
        self.dirty = true;
        let destroy_at = self.keep_for_grace(Removed::Retired { ring: removed }, now);
        self.log(
            LogLevel::Warn,
            format!(
                "key versions {} of domain {domain} retired: every cluster of the domain deletes \
                 them; {}",
                version_list(retired.iter().copied()),
                until(destroy_at)
            ),
        );
        self.offer_all();
        Ok(Outcome::Retired { domain, retired, destroy_at })
    }

    /// Keeps `removed` pending destruction for the grace period and says until when, or
    /// destroys it now (zeroized on drop) when the grace period is zero.
    pub(super) fn keep_for_grace(&mut self, removed: Removed, now: Time) -> Option<Time> {
        let grace = self.config.destruction_grace;
        if grace.is_zero() {
            drop(removed);
            return None;
        }
        let destroy_at = now.after(grace);
        self.state.pending_destruction.push(PendingDestruction {
            removed_at: now,
            destroy_at,
            removed,
        });
        self.dirty = true;
        Some(destroy_at)
    }

    /// `RestoreKeys`: see [`super::Command::RestoreKeys`]. Entries whose time has come are
    /// not restored even if their destruction has not run yet.
    pub(super) fn restore_keys(
        &mut self,
        password: &Password,
        now: Time,
    ) -> Result<Outcome, CommandError> {
        match &self.state.role {
            Role::Master(_) => self.restore_retired(password, now),
            Role::Off { .. } => self.restore_disabled(password, now),
            Role::Slave(s) => Err(CommandError::NotMasterButSlave {
                what: "restoring key versions",
                master: s.master.clone(),
            }),
        }
    }

    fn restore_retired(&mut self, password: &Password, now: Time) -> Result<Outcome, CommandError> {
        let m = self.master_state_to_change("restoring key versions")?;
        if !m.state.password.verify(password) {
            return Err(CommandError::WrongPassword);
        }
        let domain = m.state.domain;
        let (back, keep): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.state.pending_destruction).into_iter().partition(|p| {
                matches!(&p.removed, Removed::Retired { ring } if ring.domain() == domain)
                    && p.destroy_at > now
            });
        self.state.pending_destruction = keep;
        if back.is_empty() {
            return Err(CommandError::NothingToRestore { where_: format!("for domain {domain}") });
        }
        let Role::Master(m) = &mut self.state.role else { unreachable!("checked above") };
        let mut versions = BTreeSet::new();
        let mut clashes = Vec::new();
        for k in back.iter().flat_map(|p| p.removed.ring().keys()) {
            match m.state.ring.insert(k) {
                Ok(_) => {
                    versions.insert(k.version());
                    m.state.retired.remove(&k.version());
                }
                Err(e) => clashes.push(e.to_string()),
            }
        }
        m.state.epoch = m.state.epoch.next();
        self.dirty = true;
        for c in clashes {
            self.log(
                LogLevel::Warn,
                format!("a key version pending destruction is not restored: {c}"),
            );
        }
        self.log(
            LogLevel::Info,
            format!(
                "key versions {} of domain {domain} restored: every cluster of the domain holds \
                 them again",
                version_list(versions.iter().copied())
            ),
        );
        self.offer_all();
        Ok(Outcome::Restored {
            domain,
            versions: versions.into_iter().collect(),
            domain_back: false,
        })
    }

    /// After a disable on the master: the newest domain disabled here becomes this cluster's
    /// domain again, with the same id, keys, password and settings, under an epoch newer than
    /// the instruction to delete it (so its former slaves enrol again by the normal rules).
    fn restore_disabled(
        &mut self,
        password: &Password,
        now: Time,
    ) -> Result<Outcome, CommandError> {
        let nothing = || CommandError::NothingToRestore {
            where_: "here (encryption is off, and no domain disabled here is pending)".into(),
        };
        let idx = self
            .state
            .pending_destruction
            .iter()
            .rposition(|p| matches!(p.removed, Removed::Disabled { .. }) && p.destroy_at > now)
            .ok_or_else(nothing)?;
        let Removed::Disabled { master } = &self.state.pending_destruction[idx].removed else {
            return Err(nothing());
        };
        if !master.state.password.verify(password) {
            return Err(CommandError::WrongPassword);
        }
        self.may_become_master()?;
        let Removed::Disabled { mut master } = self.state.pending_destruction.remove(idx).removed
        else {
            unreachable!("matched above")
        };
        let domain = master.state.domain;
        // Newer than the tombstone that told the slaves to delete the domain (its epoch is the
        // state's next; the tombstone itself may have been dropped as too old): they accept it.
        let mut epoch = master.state.epoch.next();
        self.state.tombstones.retain(|t| {
            let ours = t.domain == domain;
            if ours {
                epoch = epoch.max(t.epoch);
            }
            !ours
        });
        master.state.epoch = epoch.next();
        master.handing_over = None;
        let versions: Vec<KeyVersion> = master.state.ring.versions().collect();
        self.state.role = Role::Master(master);
        self.dirty = true;
        self.log(LogLevel::Info, LOG_ENCRYPTION_ENABLED.into());
        self.log(
            LogLevel::Info,
            format!(
                "encryption domain {domain} restored: this cluster is its master again, with key \
                 versions {}",
                version_list(versions.iter().copied())
            ),
        );
        self.offer_all();
        Ok(Outcome::Restored { domain, versions, domain_back: true })
    }

    /// Whether this cluster (encryption off) may become a master: the software supports it,
    /// it is eligible, and no peer already encrypts (one master per peer network; a former
    /// slave of ours still being told to leave is no obstacle).
    pub(super) fn may_become_master(&self) -> Result<(), CommandError> {
        if !self.config.capabilities.encryption {
            return Err(CommandError::NoCapability);
        }
        if let Eligibility::NotEligible { reason } = self.eligibility() {
            return Err(CommandError::NotEligible { reason });
        }
        for (peer, view) in &self.views {
            if let Some(h) = &view.hello
                && h.role.domain().is_some()
                && !matches!(&h.role, Announced::Slave { master, .. } if *master == self.config.id)
            {
                return Err(CommandError::PeerEncrypts {
                    peer: peer.clone(),
                    role: h.role.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Destroys (zeroizes) every entry whose time has come, each with a log line.
    pub(super) fn destroy_expired(&mut self, now: Time) {
        let (gone, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.state.pending_destruction)
            .into_iter()
            .partition(|p| p.destroy_at <= now);
        self.state.pending_destruction = keep;
        if gone.is_empty() {
            return;
        }
        self.dirty = true;
        for p in gone {
            let line = format!(
                "{} destroyed for good: removed at {}, the grace period \
                 (encryption.destruction_grace) is over",
                p.describe(),
                fmt_time(p.removed_at)
            );
            drop(p);
            self.log(LogLevel::Warn, line);
        }
    }

    /// When [`Cluster::handle_timeout`] must run for what is pending destruction: the next
    /// destruction, and, while the alarm is not active, the moment it becomes due.
    pub(super) fn destruction_deadline(&self) -> Option<Time> {
        let pending = &self.state.pending_destruction;
        let destroy = pending.iter().map(|p| p.destroy_at).min();
        let warned = self.alarms.is_active(AlarmName::KeysPendingDestruction, &self.config.id);
        let warn =
            if warned { None } else { pending.iter().map(PendingDestruction::warn_at).min() };
        destroy.into_iter().chain(warn).min()
    }

    /// `MAencryptionKeysPendingDestruction`, when an entry is due within a day.
    pub(super) fn pending_destruction_alarm(&self, now: Time) -> Option<Alarm> {
        let pending = &self.state.pending_destruction;
        if !pending.iter().any(|p| p.warn_at() <= now) {
            return None;
        }
        let list: Vec<String> = pending
            .iter()
            .map(|p| format!("{} at {}", p.describe(), fmt_time(p.destroy_at)))
            .collect();
        Some(Alarm::new(
            AlarmName::KeysPendingDestruction,
            self.config.id.clone(),
            format!(
                "key material removed on this master is destroyed for good soon: {}",
                list.join("; ")
            ),
            "if it is still needed, run imcrypt key restore (with the domain's password) before \
             then; otherwise keep a key export that holds these versions for the archive's \
             records under them. Cleared when it is destroyed or restored",
        ))
    }

    /// What is pending destruction here, oldest first (for the status).
    pub(crate) fn pending_destruction(&self) -> &[PendingDestruction] {
        &self.state.pending_destruction
    }
}

/// "destroyed for good at …" / "destroyed at once" for a log line.
fn until(destroy_at: Option<Time>) -> String {
    match destroy_at {
        Some(t) => format!(
            "this master keeps them until {} (imcrypt key restore brings them back), then \
             destroys them for good",
            fmt_time(t)
        ),
        None => "destroyed at once (encryption.destruction_grace is 0)".into(),
    }
}
