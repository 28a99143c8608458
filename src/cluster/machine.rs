//! [`Cluster`]: the sans-IO state machine of one cluster.
//!
//! Every input runs as a transaction: the handler works on the state, and on error the state
//! and the pending effects are restored, so a refused command changes nothing. At the end of
//! every successful input, [`Cluster::finish`] derives what follows from the new state: the
//! key ring for the hot path, hellos when what this cluster announces changed, the alarm set,
//! and a `Persist` placed *before* all other effects of that input.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::Duration;

use crate::alarm::{AlarmChange, AlarmName, AlarmRegistry};
use crate::crypto::keyring::KeyRing;
use crate::crypto::password::{Password, PasswordRecord, check_policy};
use crate::ids::{ClusterId, DomainId, Epoch, KeyVersion};

use super::command::{Command, CommandError, PeerError};
use super::message::{Announced, Eligibility, Hello, PeerMessage, RejectReason, Rejection};
use super::state::{
    ClusterConfig, ComplianceDb, DomainState, Entropy, LeaveReason, MAX_TOMBSTONES, MasterState,
    PersistedState, Role, STATE_FORMAT, StaleSlave, Time, Tombstone,
};
use super::{Effect, LOG_ENCRYPTION_DISABLED, LOG_ENCRYPTION_ENABLED, LogLevel, LogLine};

/// Why a persisted state cannot be loaded for this cluster.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("the state file belongs to cluster {found}, not to this cluster ({expected})")]
    WrongCluster { expected: ClusterId, found: ClusterId },
    #[error("the state file has format {0}, which this version does not know")]
    UnknownFormat(u32),
    #[error("the state file is inconsistent: {0}")]
    Inconsistent(&'static str),
}

/// What this cluster knows about one peer (in memory only; rebuilt from hellos after a
/// restart).
#[derive(Clone, Debug)]
pub(super) struct PeerView {
    pub(super) hello: Option<Hello>,
    pub(super) last_heard: Option<Time>,
    /// Since when we expect to hear from it (peer added, or daemon started).
    pub(super) since: Time,
    /// The last rejection of our state, until the peer's hellos show it resolved.
    pub(super) rejection: Option<Rejection>,
}

impl PeerView {
    fn new(since: Time) -> Self {
        Self { hello: None, last_heard: None, since, rejection: None }
    }
}

/// How this cluster sees one peer, for the admin status ("the master shows why").
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerRelation {
    /// No hello received yet.
    NotHeardFrom,
    /// A slave of this master; `in_sync` when it holds the current epoch.
    OurSlave { epoch: Epoch, in_sync: bool },
    /// This cluster's master.
    OurMaster,
    /// Another slave of the same domain.
    SameDomain,
    /// This master does not enroll it, and why.
    NotEnrolled(String),
    /// The peering joins two domains (`MAencryptionMultiMaster`).
    Conflict(String),
    /// Neither side encrypts, or the peer is off and this cluster is not a master.
    Unrelated,
}

impl fmt::Display for PeerRelation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerRelation::NotHeardFrom => f.write_str("no hello received yet"),
            PeerRelation::OurSlave { epoch, in_sync: true } => {
                write!(f, "slave, in sync at epoch {epoch}")
            }
            PeerRelation::OurSlave { epoch, in_sync: false } => {
                write!(f, "slave, behind at epoch {epoch}")
            }
            PeerRelation::OurMaster => f.write_str("master of this cluster"),
            PeerRelation::SameDomain => f.write_str("slave of the same domain"),
            PeerRelation::NotEnrolled(why) => write!(f, "not enrolled: {why}"),
            PeerRelation::Conflict(why) => write!(f, "conflict: {why}"),
            PeerRelation::Unrelated => f.write_str("not encrypting together"),
        }
    }
}

/// The state machine of one cluster. See the [module documentation](super).
#[derive(Debug)]
pub struct Cluster {
    pub(super) config: ClusterConfig,
    pub(super) state: PersistedState,
    pub(super) views: BTreeMap<ClusterId, PeerView>,
    pub(super) alarms: AlarmRegistry,
    effects: VecDeque<Effect>,
    /// Effects of the input being handled; discarded if it fails.
    pending: Vec<Effect>,
    /// The persisted state changed during the input being handled.
    dirty: bool,
    /// The ring last given to the hot path.
    hot_ring: Option<KeyRing>,
    /// What the last hello broadcast announced.
    announced: Option<(Announced, Eligibility)>,
    next_hello: Time,
    /// The key version this cluster's hot path has used up to 0.9·2^32 (`report_worn_out`).
    worn_out: Option<KeyVersion>,
    /// What the daemon's probe last learned about each node's compliance database
    /// (`handle_db_probe`, in dbprobe.rs). Not persisted: probed again after a restart.
    pub(super) db_probes: BTreeMap<super::state::NodeId, super::dbprobe::DbProbe>,
}

impl Cluster {
    /// A cluster that was never configured (no nodes, no peers, encryption off).
    pub fn fresh(config: ClusterConfig, now: Time) -> Self {
        let state = PersistedState::new(config.id.clone());
        Self::new(config, state, now).expect("a fresh state is valid")
    }

    /// Starts the machine from a persisted state (after a restart). The first effects give
    /// the hot path its key ring and send a hello to every peer.
    pub fn new(
        config: ClusterConfig,
        state: PersistedState,
        now: Time,
    ) -> Result<Self, StateError> {
        if state.format != STATE_FORMAT {
            return Err(StateError::UnknownFormat(state.format));
        }
        if state.cluster != config.id {
            return Err(StateError::WrongCluster { expected: config.id, found: state.cluster });
        }
        if let Some(ds) = state.role.domain_state() {
            if ds.ring.domain() != ds.domain {
                return Err(StateError::Inconsistent("the key ring belongs to another domain"));
            }
            let is_master = matches!(state.role, Role::Master(_));
            if is_master != (ds.master == config.id) {
                return Err(StateError::Inconsistent(
                    "the domain's master does not match the role",
                ));
            }
        }
        let views = state.peers.iter().map(|p| (p.clone(), PeerView::new(now))).collect();
        let mut c = Self {
            config,
            state,
            views,
            alarms: AlarmRegistry::new(),
            effects: VecDeque::new(),
            pending: Vec::new(),
            dirty: false,
            hot_ring: None,
            announced: None,
            next_hello: now,
            worn_out: None,
            db_probes: BTreeMap::new(),
        };
        c.finish(now);
        Ok(c)
    }

    // ----- read-only accessors -------------------------------------------------------------

    pub fn id(&self) -> &ClusterId {
        &self.config.id
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// The state the daemon persists (also emitted as [`Effect::Persist`] on every change).
    pub fn state(&self) -> &PersistedState {
        &self.state
    }

    pub fn role(&self) -> &Role {
        &self.state.role
    }

    /// The role as this cluster announces it to peers.
    pub fn announced(&self) -> Announced {
        match &self.state.role {
            Role::Off { left } => Announced::Off { left: left.clone() },
            Role::Master(m) => Announced::Master { domain: m.state.domain, epoch: m.state.epoch },
            Role::Slave(s) => {
                Announced::Slave { domain: s.domain, master: s.master.clone(), epoch: s.epoch }
            }
        }
    }

    pub fn domain_state(&self) -> Option<&DomainState> {
        self.state.role.domain_state()
    }

    pub fn key_ring(&self) -> Option<&KeyRing> {
        self.domain_state().map(|d| &d.ring)
    }

    pub fn is_master(&self) -> bool {
        matches!(self.state.role, Role::Master(_))
    }

    pub fn alarms(&self) -> &AlarmRegistry {
        &self.alarms
    }

    /// Whether this cluster can encrypt: the archiver runs on every node with a supported
    /// compliance database.
    pub fn eligibility(&self) -> Eligibility {
        let mut nodes = self.state.nodes.iter();
        let Some(first) = nodes.next() else {
            return Eligibility::NotEligible { reason: "the cluster has no nodes".into() };
        };
        for (node, db) in std::iter::once(first).chain(nodes) {
            match db {
                None => {
                    return Eligibility::NotEligible {
                        reason: format!("node {node} has no archiver database configured"),
                    };
                }
                Some(db) if !db.is_supported() => {
                    return Eligibility::NotEligible {
                        reason: format!(
                            "node {node} archives to {db}, which is not a supported compliance \
                             database (SQL Server, PostgreSQL)"
                        ),
                    };
                }
                Some(db) => {
                    if let Some(reason) = self.probe_says_not_eligible(node, db) {
                        return Eligibility::NotEligible { reason };
                    }
                }
            }
        }
        Eligibility::Eligible
    }

    /// Why this cluster does not encrypt, in the operator's terms (`None` if it does).
    pub fn off_reason(&self) -> Option<String> {
        let Role::Off { left } = &self.state.role else { return None };
        if !self.config.capabilities.encryption {
            return Some("this cluster's software does not support encryption".into());
        }
        if let Eligibility::NotEligible { reason } = self.eligibility() {
            return Some(format!("not eligible: {reason}"));
        }
        Some(match left {
            Some(t) => match t.reason {
                LeaveReason::DomainDisabled if t.master == self.config.id => {
                    format!(
                        "encryption was disabled here, on the master, for the whole domain {}",
                        t.domain
                    )
                }
                LeaveReason::DomainDisabled => {
                    format!("encryption was disabled by the master, cluster {}", t.master)
                }
                LeaveReason::RemoteDisabled => format!(
                    "the master, cluster {}, switched \"enable on remote clusters\" off",
                    t.master
                ),
                LeaveReason::OptedOut => {
                    format!("encryption was disabled here (domain of cluster {})", t.master)
                }
            },
            None => "encryption is not enabled".into(),
        })
    }

    /// How this cluster sees `peer` (`None` if it is not a peer).
    pub fn peer_relation(&self, peer: &ClusterId) -> Option<PeerRelation> {
        let view = self.views.get(peer)?;
        let Some(hello) = &view.hello else { return Some(PeerRelation::NotHeardFrom) };
        if let Some(why) = self.conflict_with(peer, &hello.role) {
            return Some(PeerRelation::Conflict(why));
        }
        let me = &self.config.id;
        Some(match (&self.state.role, &hello.role) {
            (Role::Master(m), Announced::Slave { domain, master, epoch })
                if *domain == m.state.domain && master == me =>
            {
                PeerRelation::OurSlave { epoch: *epoch, in_sync: *epoch == m.state.epoch }
            }
            (Role::Master(m), Announced::Off { left }) => {
                match self.why_not_enrolled(&m.state, hello, left.as_ref()) {
                    Some(why) => PeerRelation::NotEnrolled(why),
                    None => PeerRelation::NotEnrolled("enrollment in progress".into()),
                }
            }
            (Role::Slave(s), _) if &s.master == peer => PeerRelation::OurMaster,
            (Role::Slave(s), Announced::Slave { domain, .. }) if *domain == s.domain => {
                PeerRelation::SameDomain
            }
            _ => PeerRelation::Unrelated,
        })
    }

    /// Checks that a key download is allowed here, without doing it: only on the master. The
    /// error names the master when this cluster is a slave.
    pub fn may_download_keys(&self) -> Result<(), CommandError> {
        self.master_state("key download").map(|_| ())
    }

    /// When [`Cluster::handle_timeout`] must be called next: the next hello, or the moment
    /// the master becomes unreachable (not again once that alarm is raised).
    pub fn poll_timeout(&self) -> Option<Time> {
        let mut t = self.next_hello;
        if let Some(d) = self.unreachable_deadline() {
            t = t.min(d);
        }
        Some(t)
    }

    /// The next effect to carry out, in order.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    // ----- inputs --------------------------------------------------------------------------

    /// Runs one administrator command. On error nothing changed.
    pub fn handle_command(
        &mut self,
        cmd: Command,
        now: Time,
        entropy: Entropy,
    ) -> Result<(), CommandError> {
        let saved_state = self.state.clone();
        let saved_views = self.views.clone();
        match self.command(cmd, now, entropy) {
            Ok(()) => {
                self.finish(now);
                Ok(())
            }
            Err(e) => {
                self.state = saved_state;
                self.views = saved_views;
                self.pending.clear();
                self.dirty = false;
                Err(e)
            }
        }
    }

    /// Handles one message from peer `from` (its identity is the name in its TLS
    /// certificate, checked by the transport).
    pub fn handle_peer_message(
        &mut self,
        from: &ClusterId,
        msg: PeerMessage,
        now: Time,
    ) -> Result<(), PeerError> {
        if from == &self.config.id {
            return Err(PeerError::FromSelf);
        }
        let Some(view) = self.views.get_mut(from) else {
            return Err(PeerError::UnknownPeer(from.clone()));
        };
        view.last_heard = Some(now);
        match msg {
            PeerMessage::Hello(h) => self.on_hello(from, h),
            PeerMessage::State(s) => self.on_state(from, *s),
            PeerMessage::Leave(t) => self.on_leave(from, t),
            PeerMessage::Reject(r) => self.on_reject(from, r),
        }
        self.finish(now);
        Ok(())
    }

    /// Lets time pass: periodic hellos and the master-unreachable alarm.
    pub fn handle_timeout(&mut self, now: Time) {
        self.finish(now);
    }

    /// The hot path reports that it sealed 0.9·2^32 records under `version` here. A slave
    /// tells its master in its next hello (sent at once); a master sees it in
    /// [`Cluster::rotation_due`].
    pub fn report_worn_out(&mut self, version: KeyVersion, now: Time) {
        if self.worn_out != Some(version) {
            self.worn_out = Some(version);
            self.next_hello = now;
        }
        self.finish(now);
    }

    /// On the master: why the key should be rotated now, if it should. The primary version
    /// has reached 0.9·2^32 seals on this cluster or on a slave (each cluster counts its own
    /// record key), or is older than `rotate_after`. The daemon answers with
    /// [`Command::RotateKey`]; a report about an older version (already rotated) is ignored.
    pub fn rotation_due(&self, now: Time) -> Option<String> {
        let Role::Master(m) = &self.state.role else { return None };
        let ring = &m.state.ring;
        let primary = ring.primary_version();
        if self.worn_out == Some(primary) {
            return Some(format!(
                "this cluster sealed 0.9*2^32 records under key version {primary}"
            ));
        }
        for (peer, view) in &self.views {
            let Some(h) = &view.hello else { continue };
            let ours = matches!(&h.role, Announced::Slave { domain, master, .. }
                if *domain == m.state.domain && master == &self.config.id);
            if ours && h.rotation_needed == Some(primary) {
                return Some(format!(
                    "cluster {peer} sealed 0.9*2^32 records under key version {primary}"
                ));
            }
        }
        let max_age = self.config.rotate_after?;
        let age =
            Duration::from_secs(now.unix_secs().saturating_sub(ring.primary().created_unix()));
        (age >= max_age).then(|| {
            format!("key version {primary} is older than {}", humantime::format_duration(max_age))
        })
    }

    // ----- commands ------------------------------------------------------------------------

    fn command(&mut self, cmd: Command, now: Time, entropy: Entropy) -> Result<(), CommandError> {
        match cmd {
            Command::Enable { password, remote } => self.enable(&password, remote, now, entropy),
            Command::EnableRemote => self.set_remote(true),
            Command::DisableRemote => self.set_remote(false),
            Command::ChangePassword { old, new } => self.change_password(&old, &new, entropy),
            Command::RotateKey => self.rotate(now, entropy),
            Command::DownloadKeys { password } => self.download(&password),
            Command::DisableOnMaster { password, i_understand_data_loss } => {
                self.disable_on_master(&password, i_understand_data_loss)
            }
            Command::DisableOnSlave { master_password } => self.disable_on_slave(&master_password),
            Command::AddPeer { peer } => self.add_peer(peer, now),
            Command::RemovePeer { peer } => self.remove_peer(&peer),
            Command::AddNode { node, archiver } => {
                if self.state.role.domain_state().is_some() {
                    return Err(CommandError::NodeAddWhileEncrypting);
                }
                if self.state.nodes.contains_key(&node) {
                    return Err(CommandError::NodeExists(node));
                }
                self.state.nodes.insert(node, archiver);
                self.dirty = true;
                Ok(())
            }
            Command::RemoveNode { node } => {
                if self.state.nodes.remove(&node).is_none() {
                    return Err(CommandError::NoSuchNode(node));
                }
                self.dirty = true;
                Ok(())
            }
            Command::SetArchiver { node, archiver } => {
                let encrypting = self.state.role.domain_state().is_some();
                let Some(slot) = self.state.nodes.get_mut(&node) else {
                    return Err(CommandError::NoSuchNode(node));
                };
                if encrypting && !archiver.as_ref().is_some_and(ComplianceDb::is_supported) {
                    return Err(CommandError::ArchiverChangeWhileEncrypting { node });
                }
                *slot = archiver;
                self.dirty = true;
                Ok(())
            }
            Command::AcknowledgeStaleData { peer } => {
                if self.state.stale_slaves.remove(&peer).is_none() {
                    return Err(CommandError::NoStaleData(peer));
                }
                self.dirty = true;
                Ok(())
            }
        }
    }

    fn enable(
        &mut self,
        password: &Password,
        remote: bool,
        now: Time,
        entropy: Entropy,
    ) -> Result<(), CommandError> {
        if !self.config.capabilities.encryption {
            return Err(CommandError::NoCapability);
        }
        match &self.state.role {
            Role::Master(m) => return Err(CommandError::AlreadyMaster { domain: m.state.domain }),
            Role::Slave(s) => {
                return Err(CommandError::AlreadySlave {
                    master: s.master.clone(),
                    domain: s.domain,
                });
            }
            Role::Off { .. } => {}
        }
        if let Eligibility::NotEligible { reason } = self.eligibility() {
            return Err(CommandError::NotEligible { reason });
        }
        // Better than the manual: refuse to create a second master where we already know one,
        // instead of creating the conflict and raising an alarm afterwards.
        for (peer, view) in &self.views {
            // A former slave of ours still being told to leave an old domain is no obstacle.
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
        check_policy(password, None)?;
        let domain = DomainId::from_bytes(entropy.domain);
        let state = DomainState {
            domain,
            master: self.config.id.clone(),
            epoch: Epoch(1),
            ring: KeyRing::new(domain, now.unix_secs(), entropy.key),
            password: PasswordRecord::create(password, entropy.salt, self.config.iterations),
            remote,
            remote_since: if remote { Epoch(1) } else { Epoch(0) },
        };
        self.state.role = Role::Master(Box::new(MasterState { state, downloaded_through: None }));
        self.dirty = true;
        self.log(LogLevel::Info, LOG_ENCRYPTION_ENABLED.into());
        self.log(
            LogLevel::Info,
            format!(
                "this cluster is master of the new encryption domain {domain} (key version 1); \
                 enable on remote clusters: {}",
                if remote { "on" } else { "off" }
            ),
        );
        self.offer_all();
        Ok(())
    }

    fn set_remote(&mut self, on: bool) -> Result<(), CommandError> {
        let what = if on { "enabling on remote clusters" } else { "disabling on remote clusters" };
        let m = self.master_state_mut(what)?;
        if m.state.remote == on {
            return Err(CommandError::RemoteAlreadySet(on));
        }
        m.state.remote = on;
        m.state.epoch = m.state.epoch.next();
        if on {
            m.state.remote_since = m.state.epoch;
        }
        self.dirty = true;
        self.offer_all();
        Ok(())
    }

    fn change_password(
        &mut self,
        old: &Password,
        new: &Password,
        entropy: Entropy,
    ) -> Result<(), CommandError> {
        let iterations = self.config.iterations;
        let m = self.master_state_mut("changing the password")?;
        if !m.state.password.verify(old) {
            return Err(CommandError::WrongPassword);
        }
        check_policy(new, Some(&m.state.password))?;
        m.state.password = PasswordRecord::create(new, entropy.salt, iterations);
        m.state.epoch = m.state.epoch.next();
        self.dirty = true;
        self.log(LogLevel::Info, "the encryption password was changed".into());
        self.offer_all();
        Ok(())
    }

    fn rotate(&mut self, now: Time, entropy: Entropy) -> Result<(), CommandError> {
        let m = self.master_state_mut("key rotation")?;
        let v = m
            .state
            .ring
            .rotate(now.unix_secs(), entropy.key)
            .map_err(|_| CommandError::KeyVersionsExhausted)?;
        m.state.epoch = m.state.epoch.next();
        self.dirty = true;
        self.log(LogLevel::Info, format!("key rotated: key version {v} is now primary"));
        self.offer_all();
        Ok(())
    }

    fn download(&mut self, password: &Password) -> Result<(), CommandError> {
        let m = self.master_state_mut("key download")?;
        if !m.state.password.verify(password) {
            return Err(CommandError::WrongPassword);
        }
        let newest = m.state.ring.newest();
        let ring = Box::new(m.state.ring.clone());
        if m.downloaded_through != Some(newest) {
            m.downloaded_through = Some(newest);
            self.dirty = true;
        }
        self.log(LogLevel::Info, format!("key download authorised (key versions up to {newest})"));
        self.pending.push(Effect::KeysForDownload(ring));
        Ok(())
    }

    fn disable_on_master(&mut self, password: &Password, force: bool) -> Result<(), CommandError> {
        let me = self.config.id.clone();
        let m = self.master_state("disabling encryption on the master")?;
        if !m.state.password.verify(password) {
            return Err(CommandError::WrongPassword);
        }
        let newest = m.state.ring.newest();
        if !force && m.downloaded_through != Some(newest) {
            return Err(CommandError::KeysNotDownloaded { domain: m.state.domain, newest });
        }
        let t = Tombstone {
            domain: m.state.domain,
            master: me,
            epoch: m.state.epoch.next(),
            reason: LeaveReason::DomainDisabled,
        };
        self.state.tombstones.push(t.clone());
        if self.state.tombstones.len() > MAX_TOMBSTONES {
            self.state.tombstones.remove(0);
        }
        self.state.role = Role::Off { left: Some(t.clone()) };
        self.dirty = true;
        self.log(LogLevel::Info, LOG_ENCRYPTION_DISABLED.into());
        self.log(
            LogLevel::Warn,
            format!(
                "encryption domain {} disabled: every cluster of the domain deletes its keys",
                t.domain
            ),
        );
        self.offer_all();
        Ok(())
    }

    fn disable_on_slave(&mut self, master_password: &Password) -> Result<(), CommandError> {
        let what = "disabling encryption with the master's password";
        let s = match &self.state.role {
            Role::Slave(s) => s,
            Role::Master(m) => {
                return Err(CommandError::NotSlaveButMaster { what, domain: m.state.domain });
            }
            Role::Off { .. } => return Err(CommandError::NotSlaveButOff { what }),
        };
        if !s.password.verify(master_password) {
            return Err(CommandError::WrongMasterPassword { master: s.master.clone() });
        }
        let t = Tombstone {
            domain: s.domain,
            master: s.master.clone(),
            epoch: s.epoch,
            reason: LeaveReason::OptedOut,
        };
        self.state.role = Role::Off { left: Some(t) };
        self.dirty = true;
        self.log(LogLevel::Info, LOG_ENCRYPTION_DISABLED.into());
        Ok(())
    }

    fn add_peer(&mut self, peer: ClusterId, now: Time) -> Result<(), CommandError> {
        if peer == self.config.id {
            return Err(CommandError::PeerIsSelf);
        }
        if !self.state.peers.insert(peer.clone()) {
            return Err(CommandError::PeerExists(peer));
        }
        self.state.stale_slaves.remove(&peer);
        self.views.insert(peer.clone(), PeerView::new(now));
        self.dirty = true;
        let hello = self.hello(true);
        self.pending.push(Effect::Send { to: peer, msg: PeerMessage::Hello(hello) });
        Ok(())
    }

    fn remove_peer(&mut self, peer: &ClusterId) -> Result<(), CommandError> {
        if !self.state.peers.remove(peer) {
            return Err(CommandError::NoSuchPeer(peer.clone()));
        }
        let view = self.views.remove(peer);
        if let (Role::Master(m), Some(PeerView { hello: Some(h), .. })) = (&self.state.role, view)
            && let Announced::Slave { domain, master, epoch } = h.role
            && domain == m.state.domain
            && master == self.config.id
        {
            self.state.stale_slaves.insert(peer.clone(), StaleSlave { domain, epoch });
        }
        self.dirty = true;
        Ok(())
    }

    fn master_state(&self, what: &'static str) -> Result<&MasterState, CommandError> {
        match &self.state.role {
            Role::Master(m) => Ok(m),
            Role::Slave(s) => {
                Err(CommandError::NotMasterButSlave { what, master: s.master.clone() })
            }
            Role::Off { .. } => Err(CommandError::NotMasterButOff { what }),
        }
    }

    fn master_state_mut(&mut self, what: &'static str) -> Result<&mut MasterState, CommandError> {
        match &mut self.state.role {
            Role::Master(m) => Ok(m),
            Role::Slave(s) => {
                Err(CommandError::NotMasterButSlave { what, master: s.master.clone() })
            }
            Role::Off { .. } => Err(CommandError::NotMasterButOff { what }),
        }
    }

    // ----- peer messages -------------------------------------------------------------------

    fn on_hello(&mut self, from: &ClusterId, hello: Hello) {
        let view = self.views.get_mut(from).expect("checked by the caller");
        if view.hello.as_ref().is_some_and(|h| h.seq >= hello.seq) {
            return; // an old hello overtaken by a newer one: ignore
        }
        let want_reply = hello.want_reply;
        view.hello = Some(hello);
        if want_reply {
            let h = self.hello(false);
            self.pending.push(Effect::Send { to: from.clone(), msg: PeerMessage::Hello(h) });
        }
        let offer = self.offer_for(from);
        let view = self.views.get_mut(from).expect("checked by the caller");
        if offer.is_none() {
            view.rejection = None; // nothing to offer: any past rejection no longer matters
        }
        if let Some(msg) = offer {
            self.pending.push(Effect::Send { to: from.clone(), msg });
        }
    }

    fn on_state(&mut self, from: &ClusterId, s: DomainState) {
        match self.judge_state(from, &s) {
            Ok(true) => {
                let was_off = matches!(self.state.role, Role::Off { .. });
                let (domain, master, epoch) = (s.domain, s.master.clone(), s.epoch);
                self.state.role = Role::Slave(Box::new(s));
                self.dirty = true;
                if was_off {
                    self.log(LogLevel::Info, LOG_ENCRYPTION_ENABLED.into());
                    self.log(
                        LogLevel::Info,
                        format!(
                            "this cluster is now a slave of cluster {master} in encryption \
                             domain {domain} (epoch {epoch})"
                        ),
                    );
                }
            }
            Ok(false) => {} // the same state again (a duplicate): nothing to do
            Err(reason) => {
                let msg =
                    PeerMessage::Reject(Rejection { domain: s.domain, epoch: s.epoch, reason });
                self.pending.push(Effect::Send { to: from.clone(), msg });
            }
        }
    }

    fn on_leave(&mut self, from: &ClusterId, t: Tombstone) {
        let Role::Slave(cur) = &self.state.role else { return };
        if &cur.master != from
            || t.master != cur.master
            || t.domain != cur.domain
            || t.epoch <= cur.epoch
        {
            return; // not from our master, not our domain, or older than what we hold
        }
        let why = match t.reason {
            LeaveReason::DomainDisabled => "the master disabled encryption",
            LeaveReason::RemoteDisabled => "the master switched \"enable on remote clusters\" off",
            LeaveReason::OptedOut => "this cluster's administrator disabled encryption here",
        };
        let line = format!("{why}: all encryption data of domain {} deleted here", t.domain);
        self.state.role = Role::Off { left: Some(t) };
        self.dirty = true;
        self.log(LogLevel::Info, LOG_ENCRYPTION_DISABLED.into());
        self.log(LogLevel::Info, line);
    }

    fn on_reject(&mut self, from: &ClusterId, r: Rejection) {
        let Role::Master(m) = &self.state.role else { return };
        if r.domain != m.state.domain {
            return;
        }
        if let RejectReason::Rollback { held } = r.reason
            && held <= m.state.epoch
        {
            return; // an old message of ours arrived late: harmless
        }
        self.log(
            LogLevel::Warn,
            format!("cluster {from} refused the state of epoch {}: {}", r.epoch, r.reason),
        );
        if let Some(v) = self.views.get_mut(from) {
            v.rejection = Some(r);
        }
    }

    // ----- what to send to whom ------------------------------------------------------------

    /// Queues for every peer what it needs after a change of our domain state.
    fn offer_all(&mut self) {
        let peers: Vec<ClusterId> = self.views.keys().cloned().collect();
        for p in peers {
            if let Some(msg) = self.offer_for(&p) {
                self.pending.push(Effect::Send { to: p, msg });
            }
        }
    }
    // ----- derived outputs -----------------------------------------------------------------

    fn hello(&self, want_reply: bool) -> Hello {
        Hello {
            seq: self.state.hello_seq,
            want_reply,
            capabilities: self.config.capabilities,
            eligibility: self.eligibility(),
            role: self.announced(),
            rotation_needed: self.worn_out,
        }
    }

    /// Hello sequence numbers follow the clock (milliseconds), and at least grow by one, so
    /// that they keep growing across restarts without a disk write per hello.
    fn bump_hello_seq(&mut self, now: Time) {
        self.state.hello_seq = (self.state.hello_seq + 1).max(now.unix_millis());
    }

    fn log(&mut self, level: LogLevel, text: String) {
        self.pending.push(Effect::Log(LogLine { level, text }));
    }

    fn unreachable_deadline(&self) -> Option<Time> {
        let Role::Slave(s) = &self.state.role else { return None };
        if self.alarms.is_active(AlarmName::MasterUnreachable, &s.master) {
            return None;
        }
        let v = self.views.get(&s.master)?;
        Some(v.last_heard.unwrap_or(v.since).after(self.config.master_unreachable_after))
    }

    /// Derives everything that follows from the state after an input, and queues the effects.
    fn finish(&mut self, now: Time) {
        // Hellos: when what we announce changed, and every hello interval.
        let current = (self.announced(), self.eligibility());
        let mut hellos = Vec::new();
        if self.announced.as_ref() != Some(&current) || now >= self.next_hello {
            self.bump_hello_seq(now);
            let h = self.hello(false);
            for p in self.views.keys() {
                let mut h = h.clone();
                h.want_reply = self.views[p].hello.is_none();
                hellos.push(Effect::Send { to: p.clone(), msg: PeerMessage::Hello(h) });
            }
            self.announced = Some(current);
            self.next_hello = now.after(self.config.hello_interval);
        }
        if self.dirty {
            self.effects.push_back(Effect::Persist(Box::new(self.state.clone())));
            self.dirty = false;
        }
        self.effects.extend(self.pending.drain(..));
        let ring = self.key_ring().cloned();
        if ring != self.hot_ring {
            self.effects.push_back(Effect::KeyRingChanged(ring.clone().map(Box::new)));
            self.hot_ring = ring;
        }
        self.effects.extend(hellos);
        let desired = self.desired_alarms(now);
        for change in self.alarms.reconcile(desired) {
            self.effects.push_back(match change {
                AlarmChange::Raise(a) => Effect::RaiseAlarm(a),
                AlarmChange::Clear(k) => Effect::ClearAlarm(k),
            });
        }
    }
}
