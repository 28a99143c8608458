//! Surviving the loss of a master: planned handover, promotion of a slave, and the fencing
//! that keeps one master acting for a domain.
//!
//! Invariants:
//! - every replicated state carries its [`Term`]; states order by (term, epoch), and nobody
//!   accepts a state of a lower term than the one it holds (`rules::judge_state`);
//! - a new term is made of the next round and the new master's slot, so two clusters never
//!   master one term, and each term numbers its key versions in its own block
//!   ([`Term::versions`]): two different keys never share a (domain, version);
//! - no key version is lost: a cluster that moves to a newer term keeps the versions the new
//!   state lacks (its *handback*, persisted) and sends them to its new master until the
//!   master's state holds them; the master adds them and raises `MAencryptionKeysRecovered`
//!   until the key set is downloaded again;
//! - a planned handover changes no key and raises no alarm; the old master stays master (and
//!   refuses changes) until the new master's state reaches it, so a lost message or a failed
//!   target never leaves the domain without a master.

use std::collections::BTreeMap;

use crate::crypto::keyring::KeyRing;
use crate::crypto::password::Password;
use crate::ids::{ClusterId, Term};

use super::command::{CommandError, Outcome};
use super::machine::{Cluster, version_list};
use super::message::{Announced, PeerMessage};
use super::state::{DomainState, MasterState, Role, Time};
use super::{Effect, LogLevel};

impl Cluster {
    /// The slots of a new domain: 0 for its creator, then 1, 2… for its peers in name order.
    pub(super) fn initial_members(&self) -> BTreeMap<ClusterId, u8> {
        let mut members = BTreeMap::from([(self.config.id.clone(), 0)]);
        for (slot, peer) in (1..=DomainState::MAX_SLOT).zip(&self.state.peers) {
            members.insert(peer.clone(), slot);
        }
        members
    }

    /// On the master: gives every peer without a slot the next free one (a new epoch, so the
    /// slaves learn it). A peer past the 255th gets none and can never become master.
    pub(super) fn give_slots(&mut self) {
        let Role::Master(m) = &mut self.state.role else { return };
        let members = &mut m.state.members;
        let mut changed = false;
        for peer in std::iter::once(&self.config.id).chain(&self.state.peers) {
            if members.contains_key(peer) {
                continue;
            }
            let next = members.values().max().map_or(Some(0), |s| s.checked_add(1));
            let Some(slot) = next else { break };
            members.insert(peer.clone(), slot);
            changed = true;
        }
        if changed {
            m.state.epoch = m.state.epoch.next();
            self.dirty = true;
            self.offer_all();
        }
    }

    /// The highest round this cluster knows of: its own state's (or its handover's), or any
    /// peer's last hello.
    fn highest_round(&self) -> u32 {
        let own = self.domain_state().map_or(0, |d| d.term.round());
        let own = match &self.state.role {
            Role::Master(m) => m.handing_over.as_ref().map_or(own, |h| own.max(h.term.round())),
            _ => own,
        };
        let domain = self.domain_state().map(|d| d.domain);
        let heard = self
            .views
            .values()
            .filter_map(|v| v.hello.as_ref())
            .filter(|h| h.role.domain().is_some() && h.role.domain() == domain)
            .filter_map(|h| h.role.term())
            .map(Term::round);
        heard.fold(own, u32::max)
    }

    /// The term a handover to, or a promotion of, `cluster` starts.
    fn next_term(&self, ds: &DomainState, cluster: &ClusterId) -> Result<Term, CommandError> {
        let slot = *ds.members.get(cluster).ok_or_else(|| CommandError::NoSlot(cluster.clone()))?;
        Term::new(self.highest_round() + 1, slot).ok_or(CommandError::TermsExhausted)
    }

    /// `imcrypt encryption handover --to PEER`: starts the handover (a new one replaces one in
    /// progress, which is how an operator gives up on a target that failed).
    pub(super) fn handover(
        &mut self,
        to: ClusterId,
        password: &Password,
        now: Time,
    ) -> Result<Outcome, CommandError> {
        let m = self.master_state("handing the domain over")?;
        if !m.state.password.verify(password) {
            return Err(CommandError::WrongPassword);
        }
        // One handover at a time: its target may take over at any moment. Only a target
        // silent past the unreachable threshold (failed) may be replaced by another.
        if let Some(h) = &m.handing_over
            && let Some(v) = self.views.get(&h.master)
            && now.since(v.silent_since()) < self.config.master_unreachable_after
        {
            return Err(CommandError::HandoverInProgress {
                what: "another handover",
                to: h.master.clone(),
            });
        }
        if to == self.config.id {
            return Err(CommandError::HandoverToSelf);
        }
        if !m.recovered.is_empty() {
            return Err(CommandError::RecoveredNotDownloaded);
        }
        let ds = &m.state;
        let not_ready =
            |why: String| CommandError::HandoverTargetNotReady { peer: to.clone(), why };
        let view = self.views.get(&to).ok_or_else(|| not_ready("it is not a peer".into()))?;
        let heard =
            view.last_heard.filter(|t| now.since(*t) < self.config.master_unreachable_after);
        let hello = match (&view.hello, heard) {
            (Some(h), Some(_)) => h,
            _ => return Err(not_ready("it has not been heard from recently".into())),
        };
        match &hello.role {
            Announced::Slave { domain, master, epoch, term }
                if *domain == ds.domain && master == &self.config.id =>
            {
                if (*term, *epoch) != (ds.term, ds.epoch) {
                    return Err(not_ready(format!(
                        "it holds epoch {epoch} of term {term}, not this master's epoch {} of \
                         term {}; wait until it is in sync",
                        ds.epoch, ds.term
                    )));
                }
            }
            other => return Err(not_ready(format!("it is {other}, not a slave of this master"))),
        }
        if !hello.eligibility.is_eligible() || !hello.capabilities.encryption {
            return Err(not_ready("it is not eligible for encryption".into()));
        }
        let term = self.next_term(ds, &to)?;
        let mut next = ds.clone();
        next.master = to.clone();
        next.term = term;
        next.epoch = ds.epoch.next();
        let domain = next.domain;
        self.pending.push(Effect::Send { to: to.clone(), msg: handover_message(&next) });
        let Role::Master(m) = &mut self.state.role else { unreachable!("checked above") };
        m.handing_over = Some(Box::new(next));
        self.dirty = true;
        self.log(
            LogLevel::Info,
            format!(
                "handing encryption domain {domain} over to cluster {to} (term {term}): this \
                 cluster becomes its slave when it has taken over"
            ),
        );
        Ok(Outcome::HandedOver { to, term })
    }

    /// `imcrypt encryption promote [--force]` on a slave.
    pub(super) fn promote(
        &mut self,
        password: &Password,
        force: bool,
        now: Time,
    ) -> Result<Outcome, CommandError> {
        let s = match &self.state.role {
            Role::Slave(s) => s,
            Role::Master(m) => {
                return Err(CommandError::PromoteOnMaster { domain: m.state.domain });
            }
            Role::Off { .. } => return Err(CommandError::NotEncrypting),
        };
        if !s.password.verify(password) {
            return Err(CommandError::WrongMasterPassword { master: s.master.clone() });
        }
        let after = self.config.master_unreachable_after;
        let silent = self.views.get(&s.master).map(|v| now.since(v.silent_since()));
        let reachable = silent.filter(|d| *d < after);
        if let Some(d) = reachable
            && !force
        {
            return Err(CommandError::MasterStillReachable {
                master: s.master.clone(),
                silent_secs: d.as_secs(),
                after_secs: after.as_secs(),
            });
        }
        let term = self.next_term(s, &self.config.id)?;
        let old_master = s.master.clone();
        let mut next = (**s).clone();
        next.master = self.config.id.clone();
        next.term = term;
        next.epoch = s.epoch.next();
        let domain = next.domain;
        self.become_master(next);
        if reachable.is_some() {
            self.log(
                LogLevel::Warn,
                format!(
                    "promoted with --force while the master, cluster {old_master}, was heard from \
                     recently: it steps down when it hears term {term}"
                ),
            );
        }
        self.log(
            LogLevel::Info,
            format!(
                "this cluster is now master of encryption domain {domain} under term {term} \
                 (promoted; the former master was cluster {old_master})"
            ),
        );
        self.offer_all();
        Ok(Outcome::Promoted { domain, term, forced: reachable.is_some(), replaced: old_master })
    }

    /// A handover from our master naming this cluster as master.
    pub(super) fn on_handover(&mut self, from: &ClusterId, s: DomainState) {
        let me = self.config.id.clone();
        match &self.state.role {
            Role::Slave(cur)
                if &cur.master == from
                    && cur.domain == s.domain
                    && s.master == me
                    && s.term > cur.term
                    && s.members.get(&me) == Some(&s.term.slot()) => {}
            Role::Master(m) if m.state.domain == s.domain && m.state.term >= s.term => return,
            _ => {
                self.log(
                    LogLevel::Warn,
                    format!("a handover from cluster {from} was ignored: it is not this cluster's master"),
                );
                return;
            }
        }
        let (domain, term) = (s.domain, s.term);
        self.become_master(s);
        self.log(
            LogLevel::Info,
            format!(
                "this cluster is now master of encryption domain {domain} under term {term}, \
                 handed over by cluster {from}"
            ),
        );
        self.offer_all();
    }

    /// What the target of our handover needs while its hellos show it has not taken over:
    /// the handover again (the first may have been lost, or the target was down).
    pub(super) fn handover_for(&self, peer: &ClusterId, theirs: &Announced) -> Option<PeerMessage> {
        let Role::Master(m) = &self.state.role else { return None };
        let h = m.handing_over.as_ref().filter(|h| &h.master == peer)?;
        match theirs {
            Announced::Slave { domain, master, term, .. }
                if *domain == h.domain && master == &self.config.id && *term < h.term =>
            {
                Some(handover_message(h))
            }
            _ => None,
        }
    }

    /// Before this cluster takes `next` (of a newer term, or its first state): the key
    /// versions it holds of that domain and `next` lacks are kept as its handback.
    pub(super) fn follow_newer_term(&mut self, next: &DomainState) {
        let Some(cur) = self.state.role.domain_state() else { return };
        if cur.domain != next.domain || cur.term >= next.term {
            return;
        }
        let was_master = matches!(self.state.role, Role::Master(_));
        let planned = matches!(&self.state.role, Role::Master(m)
            if m.handing_over.as_ref().is_some_and(|h| h.master == next.master));
        let (old_term, old_master) = (cur.term, cur.master.clone());
        // Versions the domain's master retired are not kept: they left the domain for good.
        let extra = cur.ring.missing_from(&next.ring).and_then(|e| e.except(&next.retired));
        let kept = match &extra {
            None => String::new(),
            Some(e) => format!(
                "; key versions {} exist only here and are sent to the new master",
                version_list(e.versions())
            ),
        };
        let any_kept = extra.is_some();
        if let Some(extra) = extra {
            self.add_to_handback(&extra);
        }
        let line = if planned {
            format!(
                "handover complete: cluster {} is master of encryption domain {} under term {}; \
                 this cluster is now its slave{kept}",
                next.master, next.domain, next.term
            )
        } else if was_master {
            format!(
                "stepped down: cluster {} is master of encryption domain {} under term {}, newer \
                 than this cluster's term {old_term}; this cluster is now its slave{kept}",
                next.master, next.domain, next.term
            )
        } else {
            format!(
                "now follows cluster {} (term {}) instead of cluster {old_master} (term \
                 {old_term}){kept}",
                next.master, next.term
            )
        };
        let level =
            if (was_master && !planned) || any_kept { LogLevel::Warn } else { LogLevel::Info };
        self.log(level, line);
    }

    /// This cluster is master of `next` from now on (promoted, or handed the domain), with the
    /// versions it held back taken into its ring; nothing is downloaded from it yet.
    fn become_master(&mut self, mut next: DomainState) {
        let recovered = self.reclaim_handback(&mut next);
        self.state.role = Role::Master(Box::new(MasterState {
            state: next,
            downloaded_through: None,
            recovered,
            handing_over: None,
        }));
        self.dirty = true;
    }

    /// When this cluster becomes master: the versions it held back for its former master are
    /// its own again, added to `next` (a new epoch if any was missing, so that the slaves get
    /// them); they are recorded as recovered here, since exports made before lack them.
    fn reclaim_handback(
        &mut self,
        next: &mut DomainState,
    ) -> BTreeMap<ClusterId, std::collections::BTreeSet<crate::ids::KeyVersion>> {
        let mut recovered = BTreeMap::new();
        let Some(h) = self.state.handback.take() else { return recovered };
        self.dirty = true;
        let mut added = std::collections::BTreeSet::new();
        for k in h.keys() {
            match next.ring.insert(k) {
                Ok(true) => {
                    added.insert(k.version());
                }
                Ok(false) => {}
                Err(e) => self.log(LogLevel::Warn, format!("a held-back key version: {e}")),
            }
        }
        if !added.is_empty() {
            next.epoch = next.epoch.next();
            recovered.insert(self.config.id.clone(), added);
        }
        recovered
    }

    fn add_to_handback(&mut self, extra: &KeyRing) {
        match &mut self.state.handback {
            Some(h) if h.domain() == extra.domain() => {
                for k in extra.keys() {
                    // A clash cannot happen by construction (one block per term); if it did,
                    // the first key is kept and the other stays in `extra`'s owner's ring.
                    let _ = h.insert(k);
                }
            }
            slot => *slot = Some(extra.clone()),
        }
        self.dirty = true;
    }

    /// After taking a state: the handback keeps only what the state still lacks.
    pub(super) fn keep_handback_until_held(&mut self) {
        let (Some(h), Some(ds)) = (&self.state.handback, self.state.role.domain_state()) else {
            return;
        };
        let rest = h.missing_from(&ds.ring);
        if rest.as_ref() != Some(h) {
            self.state.handback = rest;
            self.dirty = true;
        }
    }

    /// A handover whose target no longer follows this master in this domain (it disabled
    /// encryption there, or joined another domain) is given up, so that the master is not
    /// left refusing changes for good.
    pub(super) fn abandon_stale_handover(&mut self) {
        let Role::Master(m) = &mut self.state.role else { return };
        let Some(h) = &m.handing_over else { return };
        let Some(role) = self.views.get(&h.master).and_then(|v| v.hello.as_ref()).map(|h| &h.role)
        else {
            return;
        };
        let still = match role {
            Announced::Slave { domain, master, .. } => {
                *domain == h.domain && master == &self.config.id
            }
            Announced::Master { domain, .. } => *domain == h.domain,
            Announced::Off { .. } => false,
        };
        if !still {
            let line = format!(
                "the handover to cluster {} is given up: it is now {role}; this cluster stays master",
                h.master
            );
            m.handing_over = None;
            self.dirty = true;
            self.log(LogLevel::Warn, line);
        }
    }

    /// A handback is only kept while this cluster is a slave of its domain.
    pub(super) fn drop_stray_handback(&mut self) {
        let Some(h) = &self.state.handback else { return };
        let keep = matches!(&self.state.role, Role::Slave(s) if s.domain == h.domain());
        if !keep {
            self.state.handback = None;
            self.dirty = true;
        }
    }

    /// Sends our handback to `to` if it is our master (again: it is idempotent).
    pub(super) fn send_handback(&mut self, to: &ClusterId) {
        let (Role::Slave(s), Some(h)) = (&self.state.role, &self.state.handback) else { return };
        if &s.master == to && s.domain == h.domain() {
            let msg = PeerMessage::Handback(Box::new(h.clone()));
            self.pending.push(Effect::Send { to: to.clone(), msg });
        }
    }

    /// On the master: key versions of this domain from a peer that held them under an older
    /// term. Missing ones are added (a new epoch; the key set must be downloaded again).
    pub(super) fn on_handback(&mut self, from: &ClusterId, ring: &KeyRing) {
        let Role::Master(m) = &mut self.state.role else { return };
        let of_domain = self
            .views
            .get(from)
            .and_then(|v| v.hello.as_ref())
            .is_some_and(|h| h.role.domain() == Some(m.state.domain));
        if ring.domain() != m.state.domain || !of_domain || !m.state.members.contains_key(from) {
            return;
        }
        let mut added = Vec::new();
        let mut clashes = Vec::new();
        // Only versions of older terms' blocks come back: this term's block (and newer ones)
        // is numbered by this master alone.
        let ours = *m.state.term.versions().start();
        // A retired version is not taken back (a cluster that missed the retirement holds it).
        for k in
            ring.keys().filter(|k| k.version() < ours && !m.state.retired.contains(&k.version()))
        {
            match m.state.ring.insert(k) {
                Ok(true) => added.push(k.version()),
                Ok(false) => {}
                Err(e) => clashes.push(e.to_string()),
            }
        }
        if !added.is_empty() {
            m.state.epoch = m.state.epoch.next();
            m.downloaded_through = None;
            m.recovered.entry(from.clone()).or_default().extend(added.iter().copied());
            self.dirty = true;
            self.log(
                LogLevel::Warn,
                format!(
                    "key versions {} of this domain came back from cluster {from}, which held \
                     them under an older term; they are now in this master's key set",
                    version_list(added.iter().copied())
                ),
            );
            self.offer_all();
        }
        for c in clashes {
            self.log(LogLevel::Warn, format!("a key version from cluster {from} is refused: {c}"));
        }
    }
}

fn handover_message(s: &DomainState) -> PeerMessage {
    PeerMessage::Handover(Box::new(s.clone()))
}
