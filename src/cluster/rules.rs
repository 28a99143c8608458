//! The decision rules of the state machine, as pure functions of the state and of what the
//! peers last announced: whether to accept a domain state, what each peer needs from us, why a
//! peer is not enrolled, when a peering joins two domains, and which alarms must be active.
//!
//! Invariant: nothing here changes state or emits effects; `machine.rs` calls these rules and
//! carries out their answers, so each rule can be read (and reviewed) on its own.

use crate::alarm::{Alarm, AlarmName};
use crate::ids::ClusterId;

use super::machine::{Cluster, PeerView, version_list};
use super::message::{Announced, Eligibility, Hello, PeerMessage, RejectReason};
use super::state::{DomainState, LeaveReason, Role, Time, Tombstone};

/// A peer whose silence this cluster raises an alarm about: a slave's master, a master's
/// slaves (see [`Cluster::watched_peers`]).
pub(super) struct Watched<'a> {
    pub(super) peer: &'a ClusterId,
    /// The alarm its silence raises.
    pub(super) alarm: AlarmName,
    /// Since when it is silent: the last message from it, else since we expect one (peer
    /// added or daemon started).
    pub(super) silent_since: Time,
    /// Nothing heard from it since the peer was added or this daemon started.
    pub(super) never_heard: bool,
}

impl Watched<'_> {
    fn new<'a>(peer: &'a ClusterId, view: &PeerView, alarm: AlarmName) -> Watched<'a> {
        Watched {
            peer,
            alarm,
            silent_since: view.silent_since(),
            never_heard: view.last_heard.is_none(),
        }
    }
}

impl Cluster {
    /// The peers whose silence for `peer.master_unreachable_after` is an alarm: on a slave,
    /// its master (`MAencryptionMasterUnreachable`); on a master, every peer whose last hello
    /// shows it as this master's slave, and every peer not heard from at all since it was
    /// added or this daemon started, which may be one (`MAencryptionSlaveUnreachable`): a
    /// master that restarts knows its slaves only from their hellos.
    pub(super) fn watched_peers(&self) -> impl Iterator<Item = Watched<'_>> {
        let me = &self.config.id;
        let (master, domain) = match &self.state.role {
            Role::Slave(s) => (Some(&s.master), None),
            Role::Master(m) => (None, Some(m.state.domain)),
            Role::Off { .. } => (None, None),
        };
        self.views.iter().filter_map(move |(peer, view)| {
            if master == Some(peer) {
                return Some(Watched::new(peer, view, AlarmName::MasterUnreachable));
            }
            let domain = domain?;
            let ours = match &view.hello {
                None => true,
                Some(h) => matches!(&h.role, Announced::Slave { domain: d, master: m, .. }
                    if *d == domain && m == me),
            };
            ours.then(|| Watched::new(peer, view, AlarmName::SlaveUnreachable))
        })
    }

    /// Whether to accept a domain state from `from`: `Ok(true)` accept, `Ok(false)` ignore
    /// (duplicate), `Err` reject with that reason.
    pub(super) fn judge_state(
        &self,
        from: &ClusterId,
        s: &DomainState,
    ) -> Result<bool, RejectReason> {
        if &s.master != from {
            return Err(RejectReason::WrongMaster { claimed: s.master.clone() });
        }
        if !self.config.capabilities.encryption {
            return Err(RejectReason::NoCapability);
        }
        // A newer term of our domain is believed only from a cluster that proves it holds the
        // domain: its ring shares a key (version and bytes) with ours. A peer of another
        // domain knows our domain id from our hellos, but none of our keys.
        let proves_domain = |ours: &DomainState| {
            ours.ring.keys().any(|k| s.ring.get(k.version()).is_ok_and(|theirs| theirs == k))
        };
        match &self.state.role {
            // A master of an older term steps down (fencing: the newer term wins).
            Role::Master(m) if m.state.domain == s.domain && s.term > m.state.term => {
                if proves_domain(&m.state) {
                    Ok(true)
                } else {
                    Err(RejectReason::NotOfDomain)
                }
            }
            Role::Master(m) if m.state.domain == s.domain && s.term < m.state.term => {
                Err(RejectReason::Fenced { held: m.state.term })
            }
            Role::Master(m) => Err(RejectReason::IsMaster { domain: m.state.domain }),
            Role::Slave(cur) => {
                if cur.domain != s.domain {
                    return Err(RejectReason::SlaveOfOther {
                        master: cur.master.clone(),
                        domain: cur.domain,
                    });
                }
                if s.term < cur.term {
                    return Err(RejectReason::Fenced { held: cur.term });
                }
                if s.term > cur.term {
                    // A new master of this domain (handover or promotion).
                    return if proves_domain(cur) {
                        Ok(true)
                    } else {
                        Err(RejectReason::NotOfDomain)
                    };
                }
                if &cur.master != from {
                    return Err(RejectReason::SlaveOfOther {
                        master: cur.master.clone(),
                        domain: cur.domain,
                    });
                }
                if s.epoch < cur.epoch {
                    return Err(RejectReason::Rollback { held: cur.epoch });
                }
                if s.epoch == cur.epoch {
                    return if **cur == *s {
                        Ok(false)
                    } else {
                        Err(RejectReason::Fork { held: cur.epoch })
                    };
                }
                Ok(true)
            }
            Role::Off { left } => {
                if let Eligibility::NotEligible { reason } = self.eligibility() {
                    return Err(RejectReason::NotEligible { reason });
                }
                if let Some(t) = left
                    && t.domain == s.domain
                {
                    if t.reason == LeaveReason::OptedOut {
                        if s.remote_switched_on() <= t.at() {
                            return Err(RejectReason::OptedOut { at: t.epoch });
                        }
                    } else if s.at() <= t.at() {
                        return Err(RejectReason::AlreadyLeft { at: t.epoch });
                    }
                }
                Ok(true)
            }
        }
    }

    /// What `peer` needs from us, judging by its last hello: our state (only if it is our
    /// slave and behind, or off and enrollable), a tombstone (if it still holds a domain we
    /// ended), or nothing.
    pub(super) fn offer_for(&self, peer: &ClusterId) -> Option<PeerMessage> {
        let hello = self.views.get(peer)?.hello.as_ref()?;
        let me = &self.config.id;
        // A peer that still holds one of our ended domains gets its tombstone.
        if let Announced::Slave { domain, master, epoch, term } = &hello.role
            && master == me
            && let Some(t) = self.state.tombstones.iter().rev().find(|t| t.domain == *domain)
            && t.at() > (*term, *epoch)
        {
            return Some(PeerMessage::Leave(t.clone()));
        }

        let Role::Master(m) = &self.state.role else { return None };
        if let Some(msg) = self.handover_for(peer, &hello.role) {
            return Some(msg);
        }
        let ds = &m.state;
        // A cluster of this domain under an older term (a former master, or a slave that still
        // follows it) gets this term's state: fencing brings it over.
        if hello.role.domain() == Some(ds.domain) && hello.role.term().is_some_and(|t| t < ds.term)
        {
            return Some(PeerMessage::State(Box::new(ds.clone())));
        }
        match &hello.role {
            Announced::Slave { domain, master, epoch, .. }
                if *domain == ds.domain && master == me =>
            {
                if !ds.remote {
                    Some(PeerMessage::Leave(Tombstone {
                        domain: ds.domain,
                        master: me.clone(),
                        epoch: ds.epoch,
                        reason: LeaveReason::RemoteDisabled,
                        term: ds.term,
                    }))
                } else if *epoch < ds.epoch {
                    Some(PeerMessage::State(Box::new(ds.clone())))
                } else {
                    None
                }
            }
            Announced::Off { left } => match self.why_not_enrolled(ds, hello, left.as_ref()) {
                None => Some(PeerMessage::State(Box::new(ds.clone()))),
                Some(_) => None,
            },
            _ => None,
        }
    }

    /// Why master state `ds` is not sent to an off peer with this hello (`None`: send it).
    pub(super) fn why_not_enrolled(
        &self,
        ds: &DomainState,
        hello: &Hello,
        left: Option<&Tombstone>,
    ) -> Option<String> {
        if !ds.remote {
            return Some("\"enable on remote clusters\" is off".into());
        }
        if !hello.capabilities.encryption {
            return Some("its software does not support encryption; upgrade it".into());
        }
        if let Eligibility::NotEligible { reason } = &hello.eligibility {
            return Some(format!("not eligible: {reason}"));
        }
        if let Some(t) = left
            && t.domain == ds.domain
        {
            if t.reason == LeaveReason::OptedOut && ds.remote_switched_on() <= t.at() {
                return Some(
                    "its administrator disabled encryption there; switch \"enable on remote \
                     clusters\" off and on again to enroll it again"
                        .into(),
                );
            }
            if t.reason != LeaveReason::OptedOut && ds.at() <= t.at() {
                return Some("it left the domain at a newer epoch".into());
            }
        }
        None
    }

    /// Why the peering with `peer` (announcing `theirs`) joins two domains, if it does.
    pub(super) fn conflict_with(&self, peer: &ClusterId, theirs: &Announced) -> Option<String> {
        let mine = self.announced();
        let (Some(my_domain), Some(their_domain)) = (mine.domain(), theirs.domain()) else {
            return None;
        };
        // Our own former slave or former master, on its way out: handled as stale data.
        if let Announced::Slave { master, .. } = theirs
            && master == &self.config.id
        {
            return None;
        }
        if let Announced::Slave { master, .. } = &mine
            && master == peer
        {
            return None;
        }
        // One domain under two terms is no conflict: fencing makes the older term follow. One
        // term has one master, the cluster whose slot it names, except in one case that is
        // not prevented (docs/behaviour.md, F11): two masters acting at once (a partition, or
        // `--force`) each gave the same free slot to a different new cluster, and both were
        // later made master in the same round. Then two masters share one (domain, term), and
        // so one block of key versions: each may have made a different key under one version.
        // Whoever meets a cluster of that other master in that term says so, since no state
        // or handback can settle it (neither term fences the other, and the rings clash).
        if my_domain == their_domain {
            let (me, term) = (&self.config.id, mine.term());
            if term != theirs.term() || mine.master(me) == theirs.master(peer) {
                return None;
            }
            return Some(format!(
                "this cluster is {mine} and peer cluster {peer} is {theirs}: two masters hold \
                 the same term of one domain, so each may have made a different key under the \
                 same version number; no key material crosses between them"
            ));
        }
        Some(format!(
            "this cluster is {mine} and peer cluster {peer} is {theirs}: one peer network can \
             have only one encryption master, and no key material crosses between the two"
        ))
    }

    /// Every alarm that should be active now.
    pub(super) fn desired_alarms(&self, now: Time) -> Vec<Alarm> {
        let mut out = Vec::new();
        let me = &self.config.id;
        for (peer, view) in &self.views {
            let Some(h) = &view.hello else { continue };
            if let Some(why) = self.conflict_with(peer, &h.role) {
                let mine = self.announced();
                let remedy = match (mine.master(me), h.role.master(peer)) {
                    // One domain: the two masters of one term (F11) cannot be merged.
                    (Some(x), Some(y)) if mine.domain() == h.role.domain() => format!(
                        "download the key set from cluster {x} and from cluster {y} and keep \
                         both exports (together they open every record sealed on either side); \
                         then keep one master: disable encryption on the other one and peer its \
                         clusters with the master you keep (docs/operations.md, \"Limits\")"
                    ),
                    _ => format!(
                        "keep one master per peer network: disable encryption on one side \
                         (download its keys first), or remove the peering between this cluster \
                         and {peer}"
                    ),
                };
                out.push(Alarm::new(AlarmName::MultiMaster, peer.clone(), why, remedy));
            }
        }
        match &self.state.role {
            Role::Slave(s) => match self.views.get(&s.master) {
                None => out.push(Alarm::new(
                    AlarmName::StaleData,
                    s.master.clone(),
                    format!(
                        "this cluster holds the keys of encryption domain {} (epoch {}), but \
                         its master, cluster {}, is no longer a peer: nobody will update or \
                         delete them",
                        s.domain, s.epoch, s.master
                    ),
                    format!(
                        "peer cluster {} again, or disable encryption here with the master's \
                         password (download the keys from the master first if it still exists)",
                        s.master
                    ),
                )),
                Some(v) => {
                    // Judged by the master's newest word: a hello received before the state
                    // we accepted from it is older than that state (see `PeerView`).
                    // A master that handed over, then was told to leave by the newer term's
                    // master (a peer of ours, which brings us over or tells us to leave too),
                    // leaves nothing stale here.
                    let newer_master_reaches_us = matches!(&h_role(v), Some(Announced::Off {
                        left: Some(t) }) if t.domain == s.domain
                            && t.term > s.term
                            && self.views.contains_key(&t.master));
                    if let Some(h) = &v.hello
                        && !v.hello_predates_state
                        && !newer_master_reaches_us
                        && h.role.domain() != Some(s.domain)
                    {
                        out.push(Alarm::new(
                            AlarmName::StaleData,
                            s.master.clone(),
                            format!(
                                "this cluster holds the keys of encryption domain {}, but its \
                                 master, cluster {}, is now {}",
                                s.domain, s.master, h.role
                            ),
                            "wait for the master's instruction to delete them; if this alarm \
                             stays, disable encryption here with the master's password",
                        ));
                    } else if let Some(Hello {
                        role: Announced::Slave { domain, master: new, term, .. },
                        ..
                    }) = &v.hello
                        && !v.hello_predates_state
                        && *domain == s.domain
                        && *term > s.term
                        && new != me
                        && !self.views.contains_key(new)
                    {
                        out.push(Alarm::new(
                            AlarmName::StaleData,
                            s.master.clone(),
                            format!(
                                "this cluster holds the keys of encryption domain {} under term \
                                 {} from cluster {}, which now follows cluster {new} under the \
                                 newer term {term}; cluster {new} is not a peer of this cluster, \
                                 so nobody will update these keys",
                                s.domain, s.term, s.master
                            ),
                            format!(
                                "peer this cluster with cluster {new}, the domain's master: it \
                                 then brings this cluster over to term {term}"
                            ),
                        ));
                    }
                }
            },
            Role::Master(m) => {
                for (peer, view) in &self.views {
                    if let Some(Hello {
                        role: Announced::Slave { domain, master, epoch, term },
                        ..
                    }) = &view.hello
                        && master == me
                        && *domain == m.state.domain
                        && *term == m.state.term
                        && *epoch > m.state.epoch
                    {
                        out.push(Alarm::new(
                            AlarmName::SyncRejected,
                            peer.clone(),
                            format!(
                                "slave cluster {peer} holds epoch {epoch} of domain {domain}, \
                                 newer than this master's epoch {}: this master's state was \
                                 restored from an older copy, and the slave refuses the rollback",
                                m.state.epoch
                            ),
                            "restore this master's newest state file; key versions created \
                             after the restored copy exist only on the slaves",
                        ));
                    } else if let Some(r) = &view.rejection
                        && r.domain == m.state.domain
                    {
                        out.push(Alarm::new(
                            AlarmName::SyncRejected,
                            peer.clone(),
                            format!(
                                "cluster {peer} refused this master's state (epoch {}): {}",
                                r.epoch, r.reason
                            ),
                            format!(
                                "see the encryption status of cluster {peer} and resolve the cause"
                            ),
                        ));
                    }
                }
            }
            Role::Off { .. } => {}
        }
        if let Role::Master(m) = &self.state.role {
            // A newer term of this domain whose master is not our peer: we cannot step down.
            let newer: std::collections::BTreeSet<&ClusterId> = self
                .views
                .values()
                .filter_map(|v| v.hello.as_ref())
                .filter_map(|h| match &h.role {
                    Announced::Slave { domain, master, term, .. }
                        if *domain == m.state.domain && *term > m.state.term =>
                    {
                        Some(master)
                    }
                    _ => None,
                })
                .filter(|x| *x != me && !self.views.contains_key(*x))
                .collect();
            for x in newer {
                out.push(Alarm::new(
                    AlarmName::StaleData,
                    x.clone(),
                    format!(
                        "this cluster is master of encryption domain {} under term {}, but \
                         cluster {x} is master of it under a newer term and is not a peer of \
                         this cluster: this cluster cannot hear it and step down, and what it \
                         changes here is not in {x}'s key exports",
                        m.state.domain, m.state.term
                    ),
                    format!(
                        "peer this cluster with cluster {x}: it then steps down and hands its \
                         key versions over"
                    ),
                ));
            }
            for (peer, versions) in &m.recovered {
                out.push(Alarm::new(
                    AlarmName::KeysRecovered,
                    peer.clone(),
                    format!(
                        "key versions {} of domain {} were made by a master of an older term \
                         while it was cut off from this one, and records may have been sealed \
                         with them; cluster {peer} handed them back, and they are now in this \
                         master's key set, but key exports made before lack them",
                        version_list(versions.iter().copied()),
                        m.state.domain
                    ),
                    "download the key set again (imcrypt key download) and keep the new export: \
                     it opens every record sealed anywhere in the domain; cleared by the download",
                ));
            }
        }
        out.extend(self.pending_destruction_alarm(now));
        for (peer, view) in &self.views {
            if let Some(Hello { role: Announced::Slave { domain, master, .. }, .. }) = &view.hello
                && master == me
                && self.domain_state().map(|d| d.domain) != Some(*domain)
                && !self.state.tombstones.iter().any(|t| t.domain == *domain)
                // A former master that handed over and then left the domain: its old slaves'
                // hellos are behind, not a lost state.
                && !matches!(&self.state.role, Role::Off { left: Some(t) } if t.domain == *domain)
            {
                out.push(Alarm::new(
                    AlarmName::StaleData,
                    peer.clone(),
                    format!(
                        "cluster {peer} holds keys of domain {domain} as a slave of this cluster, \
                         but this cluster has no record of that domain (its state was lost or \
                         restored from an older copy)"
                    ),
                    format!(
                        "if this cluster's state was lost, restore its newest copy; otherwise \
                         disable encryption on {peer} with the old master password"
                    ),
                ));
            }
        }
        {
            for (peer, st) in &self.state.stale_slaves {
                out.push(Alarm::new(
                    AlarmName::StaleData,
                    peer.clone(),
                    format!(
                        "cluster {peer} was removed from the peers while it was a slave of \
                         domain {} (epoch {}): it still holds the keys, and nobody will update \
                         or delete them",
                        st.domain, st.epoch
                    ),
                    format!(
                        "disable encryption on cluster {peer} with this master's password, or \
                         peer it again; then acknowledge this alarm"
                    ),
                ));
            }
        }
        out.extend(self.unreachable_alarms(now));
        out.extend(self.db_probes.down_alarm(&self.config.id));
        out
    }

    /// `MAencryptionMasterUnreachable` and `MAencryptionSlaveUnreachable`: a watched peer
    /// silent for `peer.master_unreachable_after`. The cause carries the elapsed time, so it
    /// changes while the alarm is active: an update in place, never a second raise.
    fn unreachable_alarms(&self, now: Time) -> Vec<Alarm> {
        let after = self.config.master_unreachable_after;
        let remedy = |peer: &ClusterId| {
            format!(
                "check that the imcrypt daemon of cluster {peer} runs and that the intercluster \
                 link and certificates are valid (the link's last error is in this cluster's \
                 status); cleared as soon as cluster {peer} is heard from again"
            )
        };
        let mut out = Vec::new();
        let promote = |peer: &ClusterId| {
            format!(
                "{}; if cluster {peer} is lost for good, make this cluster the master of the \
                 domain with imcrypt encryption promote (the domain password is needed)",
                remedy(peer)
            )
        };
        for w in self.watched_peers() {
            let silent = now.since(w.silent_since);
            if silent < after {
                continue;
            }
            let (peer, secs) = (w.peer, silent.as_secs());
            let heard = if w.never_heard {
                format!(
                    "has not been heard from since this daemon started or the peer was added ({secs} s ago)"
                )
            } else {
                format!("has not been heard from for {secs} s")
            };
            let cause = match w.alarm {
                AlarmName::MasterUnreachable => format!(
                    "the master of this cluster, cluster {peer}, {heard}; this cluster keeps \
                     encrypting with the keys it holds, and changes wait for the master"
                ),
                _ if w.never_heard => format!(
                    "peer cluster {peer} {heard}; it may be a slave of this master holding the \
                     domain's keys, and no key rotation, password change or disable reaches it \
                     until it is back"
                ),
                _ => format!(
                    "slave cluster {peer} {heard}; it keeps encrypting with the keys it holds, \
                     but key rotations, password changes and a disable do not reach it until it \
                     is back"
                ),
            };
            let fix = match w.alarm {
                AlarmName::MasterUnreachable => promote(peer),
                _ => remedy(peer),
            };
            out.push(Alarm::new(w.alarm, peer.clone(), cause, fix));
        }
        out
    }
}

/// The role in a peer's last hello, if any.
fn h_role(v: &PeerView) -> Option<&Announced> {
    v.hello.as_ref().map(|h| &h.role)
}
