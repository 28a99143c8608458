//! [`Cluster`]: the sans-IO state machine of one cluster.
//!
//! Every input runs as a transaction: the handler works on the state, and on error the state
//! and the pending effects are restored, so a refused command changes nothing. At the end of
//! every successful input, [`Cluster::finish`] derives what follows from the new state: the
//! key ring for the hot path, hellos when what this cluster announces changed, the alarm set,
//! and a `Persist` placed *before* all other effects of that input.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use crate::alarm::AlarmRegistry;
use crate::crypto::keyring::KeyRing;
use crate::crypto::password::{Password, PasswordRecord, check_policy};
use crate::ids::{ClusterId, DomainId, Epoch, KeyVersion, Term};

use super::command::{Command, CommandError, Outcome, PeerError};
use super::dbprobe::DbProbes;
use super::lifecycle::downloaded_or_acknowledged;
use super::message::{Announced, Eligibility, Hello, PeerMessage, RejectReason, Rejection};
use super::peering::LearntPeer;
use super::state::{
    ClusterConfig, ComplianceDb, DomainState, Entropy, LeaveReason, MAX_TOMBSTONES, MasterState,
    NodeId, PersistedState, Removed, Role, STATE_FORMAT, STATE_FORMATS_READ, StaleSlave, Time,
    Tombstone,
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
    /// A domain state from this peer (our master) was accepted after `hello`: that hello is
    /// older news about the peer's role than the state. A master's hellos travel behind the
    /// state it sends when it enables encryption, so the enrolling cluster still holds the
    /// master's hello from before ("not encrypting") when it accepts the state; rules about
    /// the master's role wait for its next hello instead of reading that one as news.
    pub(super) hello_predates_state: bool,
    /// Where its intercluster listener is (`host:port`); `None` until the configuration or
    /// an administrator names it (a peer restored from the state file, before reconcile).
    pub(super) address: Option<String>,
}

impl PeerView {
    /// Since when the peer is silent: its last message, else since we expect one (peer added
    /// or daemon started).
    pub(super) fn silent_since(&self) -> Time {
        self.last_heard.unwrap_or(self.since)
    }

    fn new(since: Time, address: Option<String>) -> Self {
        Self {
            hello: None,
            last_heard: None,
            since,
            rejection: None,
            hello_predates_state: false,
            address,
        }
    }
}

/// How this cluster sees one peer, for the admin status ("the master shows why"). On the
/// wire (docs/admin-api.yaml) an object tagged by `kind`, e.g.
/// `{"kind": "not_enrolled", "reason": "..."}`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
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
    NotEnrolled { reason: String },
    /// The peering joins two domains (`MAencryptionMultiMaster`).
    Conflict { reason: String },
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
            PeerRelation::NotEnrolled { reason } => write!(f, "not enrolled: {reason}"),
            PeerRelation::Conflict { reason } => write!(f, "conflict: {reason}"),
            PeerRelation::Unrelated => f.write_str("not encrypting together"),
        }
    }
}

/// What [`Cluster::checkpoint`] saved.
pub(crate) struct Checkpoint(Box<Saved>);

struct Saved {
    state: PersistedState,
    views: BTreeMap<ClusterId, PeerView>,
    alarms: AlarmRegistry,
    hot_ring: Option<KeyRing>,
    announced: Option<(Announced, Eligibility)>,
    next_hello: Time,
    worn_out: Option<KeyVersion>,
    rotation_refused: Option<KeyVersion>,
    db_probes: DbProbes,
}

/// The state machine of one cluster. See the [module documentation](super).
#[derive(Debug)]
pub(crate) struct Cluster {
    pub(super) config: ClusterConfig,
    pub(super) state: PersistedState,
    pub(super) views: BTreeMap<ClusterId, PeerView>,
    pub(super) alarms: AlarmRegistry,
    effects: VecDeque<Effect>,
    /// Effects of the input being handled; discarded if it fails.
    pub(super) pending: Vec<Effect>,
    /// The persisted state changed during the input being handled.
    pub(super) dirty: bool,
    /// The ring last given to the hot path.
    hot_ring: Option<KeyRing>,
    /// What the last hello broadcast announced.
    announced: Option<(Announced, Eligibility)>,
    next_hello: Time,
    /// The key version this cluster's hot path has used up to 0.9·2^32 (`handle_worn_out`).
    worn_out: Option<KeyVersion>,
    /// The primary version whose automatic rotation was refused (the ring has no version
    /// left): not tried again until the primary changes, so a refusal cannot spin the timer.
    rotation_refused: Option<KeyVersion>,
    /// What the daemon's probe last learned about each node's compliance database
    /// (`handle_db_probe`). Not persisted: probed again after a restart.
    pub(super) db_probes: DbProbes,
    /// The peers the configuration file names (set by `reconcile`): they win over peering
    /// tokens, and are not deleted by one.
    pub(super) configured: BTreeSet<ClusterId>,
}

impl Cluster {
    /// A cluster that was never configured (no nodes, no peers, encryption off).
    pub(crate) fn fresh(config: ClusterConfig, now: Time) -> Self {
        let state = PersistedState::new(config.id.clone());
        Self::new(config, state, now).expect("a fresh state is valid")
    }

    /// Starts the machine from a persisted state (after a restart). The first effects give
    /// the hot path its key ring and send a hello to every peer.
    pub(crate) fn new(
        config: ClusterConfig,
        state: PersistedState,
        now: Time,
    ) -> Result<Self, StateError> {
        if !STATE_FORMATS_READ.contains(&state.format) {
            return Err(StateError::UnknownFormat(state.format));
        }
        // An older format is written back as the current one at the first persist below.
        let migrated = state.format != STATE_FORMAT;
        let mut state = state;
        state.format = STATE_FORMAT;
        // The first build of peering tokens let `peer remove` drop a learnt peer and leave its entry
        // (and CA) behind: repaired here, not refused, so that such a cluster still starts.
        let orphans: Vec<ClusterId> =
            state.learnt_peers.keys().filter(|p| !state.peers.contains(*p)).cloned().collect();
        for p in &orphans {
            state.learnt_peers.remove(p);
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
        let views = state.peers.iter().map(|p| (p.clone(), PeerView::new(now, None))).collect();
        let mut c = Self {
            config,
            state,
            views,
            alarms: AlarmRegistry::new(),
            effects: VecDeque::new(),
            pending: Vec::new(),
            dirty: migrated,
            hot_ring: None,
            announced: None,
            next_hello: now,
            worn_out: None,
            rotation_refused: None,
            db_probes: DbProbes::default(),
            configured: BTreeSet::new(),
        };
        for p in orphans {
            c.dirty = true;
            c.log(
                LogLevel::Warn,
                format!(
                    "the state recorded cluster {p} as peered by token but not as a peer (it was \
                     removed with `peer remove`); its peering and CA are forgotten"
                ),
            );
        }
        c.finish(now);
        Ok(c)
    }

    // ----- read-only accessors -------------------------------------------------------------

    pub(crate) fn id(&self) -> &ClusterId {
        &self.config.id
    }

    #[cfg(test)]
    pub(crate) fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// The state the daemon persists (also emitted as [`Effect::Persist`] on every change).
    pub(crate) fn state(&self) -> &PersistedState {
        &self.state
    }

    pub(crate) fn role(&self) -> &Role {
        &self.state.role
    }

    /// The role as this cluster announces it to peers.
    pub(crate) fn announced(&self) -> Announced {
        match &self.state.role {
            Role::Off { left } => Announced::Off { left: left.clone() },
            Role::Master(m) => Announced::Master {
                domain: m.state.domain,
                epoch: m.state.epoch,
                term: m.state.term,
            },
            Role::Slave(s) => Announced::Slave {
                domain: s.domain,
                master: s.master.clone(),
                epoch: s.epoch,
                term: s.term,
            },
        }
    }

    pub(crate) fn domain_state(&self) -> Option<&DomainState> {
        self.state.role.domain_state()
    }

    pub(crate) fn key_ring(&self) -> Option<&KeyRing> {
        self.domain_state().map(|d| &d.ring)
    }

    #[cfg(test)]
    pub(crate) fn is_master(&self) -> bool {
        matches!(self.state.role, Role::Master(_))
    }

    /// The role `peer` announced in its last hello (what it said, not what we concluded).
    pub(crate) fn peer_announced(&self, peer: &ClusterId) -> Option<&Announced> {
        self.views.get(peer)?.hello.as_ref().map(|h| &h.role)
    }

    /// When `peer` was last heard from (a hello or any other message); `None`: not since start.
    pub(crate) fn peer_last_heard(&self, peer: &ClusterId) -> Option<Time> {
        self.views.get(peer).and_then(|v| v.last_heard)
    }

    /// The last probe of each node's compliance database (`handle_db_probe`).
    pub(crate) fn db_probes(&self) -> &DbProbes {
        &self.db_probes
    }

    pub(crate) fn alarms(&self) -> &AlarmRegistry {
        &self.alarms
    }

    /// Whether this cluster can encrypt: the archiver runs on every node with a supported
    /// compliance database.
    pub(crate) fn eligibility(&self) -> Eligibility {
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
                    if let Some(reason) = self.db_probes.not_eligible_reason(node, db) {
                        return Eligibility::NotEligible { reason };
                    }
                }
            }
        }
        Eligibility::Eligible
    }

    /// Why this cluster does not encrypt, in the operator's terms (`None` if it does).
    pub(crate) fn off_reason(&self) -> Option<String> {
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
    pub(crate) fn peer_relation(&self, peer: &ClusterId) -> Option<PeerRelation> {
        let view = self.views.get(peer)?;
        let Some(hello) = &view.hello else { return Some(PeerRelation::NotHeardFrom) };
        if let Some(why) = self.conflict_with(peer, &hello.role) {
            return Some(PeerRelation::Conflict { reason: why });
        }
        let me = &self.config.id;
        Some(match (&self.state.role, &hello.role) {
            (Role::Master(m), Announced::Slave { domain, master, epoch, term })
                if *domain == m.state.domain && master == me =>
            {
                let in_sync = *epoch == m.state.epoch && *term == m.state.term;
                PeerRelation::OurSlave { epoch: *epoch, in_sync }
            }
            (Role::Master(m), theirs)
                if theirs.domain() == Some(m.state.domain)
                    && theirs.term().is_some_and(|t| t < m.state.term) =>
            {
                PeerRelation::NotEnrolled {
                    reason: format!(
                        "it is {theirs}, an older term than this master's ({}): it is being \
                         brought over",
                        m.state.term
                    ),
                }
            }
            (Role::Master(m), Announced::Off { left }) => {
                match self.why_not_enrolled(&m.state, hello, left.as_ref()) {
                    Some(reason) => PeerRelation::NotEnrolled { reason },
                    None => PeerRelation::NotEnrolled { reason: "enrollment in progress".into() },
                }
            }
            (Role::Slave(s), _) if &s.master == peer => PeerRelation::OurMaster,
            (Role::Slave(s), Announced::Slave { domain, .. }) if *domain == s.domain => {
                PeerRelation::SameDomain
            }
            _ => PeerRelation::Unrelated,
        })
    }

    #[cfg(test)]
    /// Checks that a key download is allowed here, without doing it: only on the master. The
    /// error names the master when this cluster is a slave.
    pub(crate) fn may_download_keys(&self) -> Result<(), CommandError> {
        self.master_state("key download").map(|_| ())
    }

    /// When [`Cluster::handle_timeout`] must be called next, or `None` when nothing is due:
    /// the next hello (when there are peers), the moment a watched peer (a slave's master, a
    /// master's slaves) becomes unreachable (not again once its alarm is raised), or when the primary key is due for rotation (at once
    /// when a hot path wore it out).
    pub(crate) fn poll_timeout(&self) -> Option<Time> {
        let hello = (!self.views.is_empty()).then_some(self.next_hello);
        [hello, self.unreachable_deadline(), self.rotation_deadline(), self.destruction_deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    /// The next effect to carry out, in order.
    pub(crate) fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    // ----- inputs --------------------------------------------------------------------------

    /// Runs one administrator command. On error nothing changed.
    pub(crate) fn handle_command(
        &mut self,
        cmd: Command,
        now: Time,
        entropy: Entropy,
    ) -> Result<Outcome, CommandError> {
        let r = self.transaction(|c| c.command(cmd, now, entropy));
        if r.is_ok() {
            self.finish(now);
        }
        r
    }

    /// Everything an input may change, to put back with [`Cluster::restore`]: how the daemon
    /// takes back an input whose effects it cannot carry out because their audit records
    /// cannot be written (an input is audited before it takes effect; `daemon::core`).
    pub(crate) fn checkpoint(&self) -> Checkpoint {
        Checkpoint(Box::new(Saved {
            state: self.state.clone(),
            views: self.views.clone(),
            alarms: self.alarms.clone(),
            hot_ring: self.hot_ring.clone(),
            announced: self.announced.clone(),
            next_hello: self.next_hello,
            worn_out: self.worn_out,
            rotation_refused: self.rotation_refused,
            db_probes: self.db_probes.clone(),
        }))
    }

    /// Puts the machine back as it was at `cp`, and drops the effects queued since: as if the
    /// inputs since had never arrived. The caller must not have carried any of those effects.
    pub(crate) fn restore(&mut self, cp: Checkpoint) {
        let s = *cp.0;
        self.state = s.state;
        self.views = s.views;
        self.alarms = s.alarms;
        self.hot_ring = s.hot_ring;
        self.announced = s.announced;
        self.next_hello = s.next_hello;
        self.worn_out = s.worn_out;
        self.rotation_refused = s.rotation_refused;
        self.db_probes = s.db_probes;
        self.effects.clear();
        self.pending.clear();
        self.dirty = false;
    }

    /// Runs `f` as a transaction: on error the state, the peer views and the effects queued
    /// since the last input are restored, so a refusal changes nothing.
    pub(super) fn transaction<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, CommandError>,
    ) -> Result<T, CommandError> {
        let saved_state = self.state.clone();
        let saved_views = self.views.clone();
        let (pending, dirty) = (self.pending.len(), self.dirty);
        let r = f(self);
        if r.is_err() {
            self.state = saved_state;
            self.views = saved_views;
            self.pending.truncate(pending);
            self.dirty = dirty;
        }
        r
    }

    /// Handles one message from peer `from` (its identity is the name in its TLS
    /// certificate, checked by the transport).
    pub(crate) fn handle_peer_message(
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
        // Within one hello interval of its last message the peer is talking as usual; after a
        // longer silence, its message is news that it is reachable again.
        let back = view.address.is_some()
            && view.last_heard.is_none_or(|t| now.since(t) > self.config.hello_interval);
        view.last_heard = Some(now);
        if back {
            self.pending.push(Effect::RetryLink { peer: from.clone() });
        }
        match msg {
            PeerMessage::Hello(h) => self.on_hello(from, h),
            PeerMessage::State(s) => self.on_state(from, *s),
            PeerMessage::Leave(t) => self.on_leave(from, t),
            PeerMessage::Reject(r) => self.on_reject(from, r),
            PeerMessage::Unpeer => self.on_unpeer(from),
            PeerMessage::Handover(s) => self.on_handover(from, *s),
            PeerMessage::Handback(r) => self.on_handback(from, &r),
        }
        self.finish(now);
        Ok(())
    }

    /// Lets time pass: periodic hellos, the master-unreachable alarm, the destruction of key
    /// material whose grace period is over (`lifecycle`), and automatic key rotation on the master when [`Cluster::rotation_due`] says so (the new key comes from
    /// `entropy`, which is not used otherwise).
    pub(crate) fn handle_timeout(&mut self, now: Time, entropy: Entropy) {
        self.destroy_expired(now);
        if let Some(why) = self.rotation_due(now) {
            self.log(LogLevel::Info, format!("rotating the key automatically: {why}"));
            if let Err(e) = self.transaction(|c| c.rotate(now, entropy)) {
                self.rotation_refused = self.key_ring().map(KeyRing::primary_version);
                self.log(LogLevel::Warn, format!("automatic key rotation refused: {e}"));
            }
        }
        self.finish(now);
    }

    /// Input: the hot path sealed 0.9·2^32 records under `version` here. A slave tells its
    /// master in its next hello (sent at once); a master rotates at its next timeout, which
    /// [`Cluster::poll_timeout`] makes due at once.
    pub(crate) fn handle_worn_out(&mut self, version: KeyVersion, now: Time) {
        if self.worn_out != Some(version) {
            self.worn_out = Some(version);
            self.next_hello = now;
        }
        self.finish(now);
    }

    /// When the master's primary key is due for rotation: at once when it is worn out here
    /// or on a slave, else when it reaches `rotate_after`.
    fn rotation_deadline(&self) -> Option<Time> {
        let Role::Master(m) = &self.state.role else { return None };
        let primary = m.state.ring.primary_version();
        if self.rotation_refused == Some(primary) || m.handing_over.is_some() {
            return None;
        }
        if self.worn_out_by(primary).is_some() {
            return Some(Time(0));
        }
        let created = m.state.ring.primary().created_unix();
        self.config
            .rotate_after
            .map(|d| Time::from_unix_millis(created.saturating_mul(1000)).after(d))
    }

    /// Who wore out `version` (0.9·2^32 seals): this cluster, or one of our slaves by its
    /// hello; `None` if nobody did.
    fn worn_out_by(&self, version: KeyVersion) -> Option<String> {
        if self.worn_out == Some(version) {
            return Some("this cluster".into());
        }
        let Role::Master(m) = &self.state.role else { return None };
        self.views.iter().find_map(|(peer, view)| {
            let h = view.hello.as_ref()?;
            let ours = matches!(&h.role, Announced::Slave { domain, master, .. }
                if *domain == m.state.domain && master == &self.config.id);
            (ours && h.rotation_needed == Some(version)).then(|| format!("cluster {peer}"))
        })
    }

    /// On the master: why the key should be rotated now, if it should. The primary version
    /// has reached 0.9·2^32 seals on this cluster or on a slave (each cluster counts its own
    /// record key), or is older than `rotate_after`. [`Cluster::handle_timeout`] then rotates;
    /// a report about an older version (already rotated) is ignored.
    pub(crate) fn rotation_due(&self, now: Time) -> Option<String> {
        // Due exactly when the deadline `poll_timeout` waits for has passed, so the two never
        // disagree (a timer that fires while the check says "not yet" would spin).
        if self.rotation_deadline()? > now {
            return None;
        }
        let primary = self.key_ring()?.primary_version();
        Some(match self.worn_out_by(primary) {
            Some(who) => format!("{who} sealed 0.9*2^32 records under key version {primary}"),
            None => format!(
                "key version {primary} is older than {}",
                humantime::format_duration(self.config.rotate_after?)
            ),
        })
    }

    // ----- commands ------------------------------------------------------------------------

    fn command(
        &mut self,
        cmd: Command,
        now: Time,
        entropy: Entropy,
    ) -> Result<Outcome, CommandError> {
        let done = |r: Result<(), CommandError>| r.map(|()| Outcome::Done);
        match cmd {
            Command::Enable { password, remote } => self.enable(&password, remote, now, entropy),
            Command::EnableRemote => done(self.set_remote(true)),
            Command::DisableRemote => done(self.set_remote(false)),
            Command::ChangePassword { old, new } => done(self.change_password(&old, &new, entropy)),
            Command::RotateKey => self.rotate(now, entropy),
            Command::RetireKeys { password, below, i_understand_data_loss } => {
                self.retire(&password, below, i_understand_data_loss, now)
            }
            Command::RestoreKeys { password } => self.restore_keys(&password, now),
            Command::DownloadKeys { password } => self.download(&password),
            Command::Disable { password, i_understand_data_loss } => match &self.state.role {
                Role::Master(_) => self.disable_on_master(&password, i_understand_data_loss, now),
                Role::Slave(_) => self.disable_on_slave(&password),
                Role::Off { .. } => Err(CommandError::NotEncrypting),
            },
            Command::AddPeer { peer, address } => done(self.add_peer(peer, address, now)),
            Command::RemovePeer { peer } => done(self.remove_unlearnt_peer(&peer)),
            Command::AddNode { node, archiver } => done(self.add_node(node, archiver)),
            Command::RemoveNode { node } => done(self.remove_node(&node)),
            Command::SetArchiver { node, archiver } => done(self.set_archiver(node, archiver)),
            Command::IssuePeeringToken { for_cluster, expires } => {
                self.issue_peering_token(for_cluster, expires, now, entropy)
            }
            Command::AcceptPeering { peer, secret, address, ca_pem } => {
                let learnt = LearntPeer { address, ca_pem, since: now };
                self.accept_peering(peer, &secret, learnt, now)
            }
            Command::LearnPeer { peer, learnt } => self.learn_peer(peer, learnt, now),
            Command::DeletePeering { peer } => self.delete_peering(&peer),
            Command::Handover { to, password } => self.handover(to, &password, now),
            Command::Promote { password, force } => self.promote(&password, force, now),
            Command::AcknowledgeStaleData { peer } => {
                if self.state.stale_slaves.remove(&peer).is_none() {
                    return Err(CommandError::NoStaleData(peer));
                }
                self.dirty = true;
                Ok(Outcome::Done)
            }
        }
    }

    fn enable(
        &mut self,
        password: &Password,
        remote: bool,
        now: Time,
        entropy: Entropy,
    ) -> Result<Outcome, CommandError> {
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
        // Better than the manual: refuse to create a second master where we already know one,
        // instead of creating the conflict and raising an alarm afterwards.
        self.may_become_master()?;
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
            term: Term::INITIAL,
            remote_since_term: Term::INITIAL,
            members: self.initial_members(),
            retired: BTreeSet::new(),
        };
        self.state.role = Role::Master(Box::new(MasterState {
            state,
            downloaded_through: None,
            recovered: BTreeMap::new(),
            handing_over: None,
        }));
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
        Ok(Outcome::Enabled { domain })
    }

    fn set_remote(&mut self, on: bool) -> Result<(), CommandError> {
        let what = if on { "enabling on remote clusters" } else { "disabling on remote clusters" };
        let m = self.master_state_to_change(what)?;
        if m.state.remote == on {
            return Err(CommandError::RemoteAlreadySet(on));
        }
        m.state.remote = on;
        m.state.epoch = m.state.epoch.next();
        if on {
            m.state.remote_since = m.state.epoch;
            m.state.remote_since_term = m.state.term;
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
        let m = self.master_state_to_change("changing the password")?;
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

    fn rotate(&mut self, now: Time, entropy: Entropy) -> Result<Outcome, CommandError> {
        let m = self.master_state_to_change("key rotation")?;
        let term = m.state.term;
        let v = m
            .state
            .ring
            .rotate_in(term, now.unix_secs(), entropy.key)
            .map_err(|_| CommandError::KeyVersionsExhausted { term })?;
        m.state.epoch = m.state.epoch.next();
        self.dirty = true;
        self.log(LogLevel::Info, format!("key rotated: key version {v} is now primary"));
        self.offer_all();
        Ok(Outcome::Rotated { primary: v })
    }

    fn download(&mut self, password: &Password) -> Result<Outcome, CommandError> {
        let m = self.master_state_mut("key download")?;
        if !m.state.password.verify(password) {
            return Err(CommandError::WrongPassword);
        }
        let newest = m.state.ring.newest();
        let ring = Box::new(m.state.ring.clone());
        if m.downloaded_through != Some(newest) || !m.recovered.is_empty() {
            m.downloaded_through = Some(newest);
            m.recovered.clear();
            self.dirty = true;
        }
        self.log(LogLevel::Info, format!("key download authorised (key versions up to {newest})"));
        Ok(Outcome::KeysForDownload(ring))
    }

    /// Disable on the master: the domain's state is kept pending destruction for the grace
    /// period (`lifecycle`), its slaves delete their keys at once.
    fn disable_on_master(
        &mut self,
        password: &Password,
        force: bool,
        now: Time,
    ) -> Result<Outcome, CommandError> {
        let me = self.config.id.clone();
        let m = self.master_state_to_change("disabling encryption on the master")?;
        if !m.state.password.verify(password) {
            return Err(CommandError::WrongPassword);
        }
        if let Err(newest) = downloaded_or_acknowledged(m, force) {
            return Err(CommandError::KeysNotDownloaded { domain: m.state.domain, newest });
        }
        let t = Tombstone {
            domain: m.state.domain,
            master: me,
            epoch: m.state.epoch.next(),
            reason: LeaveReason::DomainDisabled,
            term: m.state.term,
        };
        self.state.tombstones.push(t.clone());
        if self.state.tombstones.len() > MAX_TOMBSTONES {
            self.state.tombstones.remove(0);
        }
        let old = std::mem::replace(&mut self.state.role, Role::Off { left: Some(t.clone()) });
        self.dirty = true;
        let kept = match old {
            Role::Master(m) => self.keep_for_grace(Removed::Disabled { master: m }, now),
            _ => None,
        };
        let here = match kept {
            Some(at) => format!(
                "this master keeps them until {} (imcrypt key restore brings the domain back)",
                super::command::fmt_time(at)
            ),
            None => "this master destroys them at once (encryption.destruction_grace is 0)".into(),
        };
        self.log(LogLevel::Info, LOG_ENCRYPTION_DISABLED.into());
        self.log(
            LogLevel::Warn,
            format!(
                "encryption domain {} disabled: every cluster of the domain deletes its keys; \
                 {here}",
                t.domain
            ),
        );
        self.offer_all();
        Ok(Outcome::DisabledDomain { domain: t.domain })
    }

    fn disable_on_slave(&mut self, master_password: &Password) -> Result<Outcome, CommandError> {
        let Role::Slave(s) = &self.state.role else { return Err(CommandError::NotEncrypting) };
        if !s.password.verify(master_password) {
            return Err(CommandError::WrongMasterPassword { master: s.master.clone() });
        }
        if let Some(h) = &self.state.handback {
            return Err(CommandError::HandbackPending {
                master: s.master.clone(),
                versions: version_list(h.versions()),
            });
        }
        let t = Tombstone {
            domain: s.domain,
            master: s.master.clone(),
            epoch: s.epoch,
            reason: LeaveReason::OptedOut,
            term: s.term,
        };
        let master = t.master.clone();
        self.state.role = Role::Off { left: Some(t) };
        self.dirty = true;
        self.log(LogLevel::Info, LOG_ENCRYPTION_DISABLED.into());
        Ok(Outcome::DisabledHere { master })
    }

    pub(super) fn add_node(
        &mut self,
        node: NodeId,
        archiver: Option<ComplianceDb>,
    ) -> Result<(), CommandError> {
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

    pub(super) fn remove_node(&mut self, node: &NodeId) -> Result<(), CommandError> {
        if self.state.nodes.remove(node).is_none() {
            return Err(CommandError::NoSuchNode(node.clone()));
        }
        self.db_probes.forget(node);
        self.dirty = true;
        Ok(())
    }

    pub(super) fn set_archiver(
        &mut self,
        node: NodeId,
        archiver: Option<ComplianceDb>,
    ) -> Result<(), CommandError> {
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

    pub(super) fn add_peer(
        &mut self,
        peer: ClusterId,
        address: String,
        now: Time,
    ) -> Result<(), CommandError> {
        if peer == self.config.id {
            return Err(CommandError::PeerIsSelf);
        }
        if !is_host_port(&address) {
            return Err(CommandError::BadPeerAddress(address));
        }
        if !self.state.peers.insert(peer.clone()) {
            return Err(CommandError::PeerExists(peer));
        }
        self.state.stale_slaves.remove(&peer);
        self.views.insert(peer.clone(), PeerView::new(now, Some(address.clone())));
        self.dirty = true;
        // The link first: the hello after it needs a way out.
        self.pending.push(Effect::LinkUp { peer: peer.clone(), address });
        let hello = self.hello(true);
        self.pending.push(Effect::Send { to: peer, msg: PeerMessage::Hello(hello) });
        Ok(())
    }

    /// Gives a peer restored from the state file the address the configuration names, and
    /// brings its link up (reconcile at start).
    pub(super) fn set_peer_address(&mut self, peer: &ClusterId, address: &str) {
        let Some(view) = self.views.get_mut(peer) else { return };
        if view.address.as_deref() == Some(address) {
            return;
        }
        view.address = Some(address.to_owned());
        let want_reply = view.hello.is_none();
        self.pending.push(Effect::LinkUp { peer: peer.clone(), address: address.to_owned() });
        // The start-up broadcast skipped this peer (no link yet): it hears from us now, not one
        // hello interval later.
        let hello = self.hello(want_reply);
        self.pending.push(Effect::Send { to: peer.clone(), msg: PeerMessage::Hello(hello) });
    }

    /// `peer remove`: only for peers added at runtime or by the configuration file; a peer
    /// learnt by token is ended by `peering delete`, which also tells it and forgets its CA.
    fn remove_unlearnt_peer(&mut self, peer: &ClusterId) -> Result<(), CommandError> {
        if self.state.learnt_peers.contains_key(peer) {
            return Err(CommandError::PeeredByToken(peer.clone()));
        }
        self.remove_peer(peer)
    }

    pub(super) fn remove_peer(&mut self, peer: &ClusterId) -> Result<(), CommandError> {
        if !self.state.peers.remove(peer) {
            return Err(CommandError::NoSuchPeer(peer.clone()));
        }
        let view = self.views.remove(peer);
        if let (Role::Master(m), Some(PeerView { hello: Some(h), .. })) = (&self.state.role, view)
            && let Announced::Slave { domain, master, epoch, .. } = h.role
            && domain == m.state.domain
            && master == self.config.id
        {
            self.state.stale_slaves.insert(peer.clone(), StaleSlave { domain, epoch });
        }
        self.dirty = true;
        self.pending.push(Effect::LinkDown { peer: peer.clone() });
        Ok(())
    }

    /// The master's state for a command that changes the domain: refused during a handover.
    pub(super) fn master_state_to_change(
        &mut self,
        what: &'static str,
    ) -> Result<&mut MasterState, CommandError> {
        let m = self.master_state_mut(what)?;
        if let Some(h) = &m.handing_over {
            return Err(CommandError::HandoverInProgress { what, to: h.master.clone() });
        }
        Ok(m)
    }

    pub(super) fn master_state(&self, what: &'static str) -> Result<&MasterState, CommandError> {
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
        view.hello_predates_state = false;
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
        self.send_handback(from);
    }

    fn on_state(&mut self, from: &ClusterId, s: DomainState) {
        match self.judge_state(from, &s) {
            Ok(true) => {
                let was_off = matches!(self.state.role, Role::Off { .. });
                let (domain, master, epoch) = (s.domain, s.master.clone(), s.epoch);
                if let Some(v) = self.views.get_mut(from) {
                    v.hello_predates_state = true;
                }
                self.follow_newer_term(&s);
                self.state.role = Role::Slave(Box::new(s));
                self.dirty = true;
                self.keep_handback_until_held();
                self.send_handback(from);
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
            // The same state again (a duplicate): nothing to change, but a master that lacks
            // versions we hold hears of them again.
            Ok(false) => self.send_handback(from),
            Err(reason) => {
                let msg =
                    PeerMessage::Reject(Rejection { domain: s.domain, epoch: s.epoch, reason });
                self.pending.push(Effect::Send { to: from.clone(), msg });
            }
        }
    }

    fn on_leave(&mut self, from: &ClusterId, t: Tombstone) {
        let Role::Slave(cur) = &self.state.role else { return };
        // From our master only; the tombstone may be its own, or one a newer term's master
        // gave it, which it passes on to us.
        if &cur.master != from || t.domain != cur.domain || t.at() <= cur.at() {
            return; // not from our master, not our domain, or older than what we hold
        }
        if self.state.handback.is_some() && t.reason != LeaveReason::DomainDisabled {
            // The domain lives on, and the master lacks versions only this cluster holds:
            // leave once it has them (it sends the tombstone again with its next answer).
            self.send_handback(from);
            return;
        }
        let why = match t.reason {
            LeaveReason::DomainDisabled => "the master disabled encryption",
            LeaveReason::RemoteDisabled => "the master switched \"enable on remote clusters\" off",
            LeaveReason::OptedOut => "this cluster's administrator disabled encryption here",
        };
        let line = format!("{why}: all encryption data of domain {} deleted here", t.domain);
        // A former master of this domain (it handed it over) keeps the tombstone to pass on to
        // the slaves it had, which may not be peers of the newer term's master.
        let had_slaves = self.views.values().any(|v| {
            matches!(&v.hello, Some(Hello { role: Announced::Slave { domain, master, .. }, .. })
                if *domain == t.domain && *master == self.config.id)
        });
        if had_slaves
            && t.reason != LeaveReason::OptedOut
            && !self.state.tombstones.iter().any(|x| x.domain == t.domain)
        {
            self.state.tombstones.push(t.clone());
            if self.state.tombstones.len() > MAX_TOMBSTONES {
                self.state.tombstones.remove(0);
            }
        }
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
        if let RejectReason::Fenced { held } = r.reason {
            // The peer follows a newer term, whose master brings this cluster over too: no
            // alarm to keep (it would outlive this master's term).
            self.log(
                LogLevel::Info,
                format!("cluster {from} holds this domain under the newer term {held}"),
            );
            return;
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
    pub(super) fn offer_all(&mut self) {
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

    pub(super) fn log(&mut self, level: LogLevel, text: String) {
        self.pending.push(Effect::Log(LogLine { level, text }));
    }

    /// When the next watched peer (a slave's master, a master's slaves) becomes unreachable;
    /// peers whose alarm is already raised are not waited for again.
    fn unreachable_deadline(&self) -> Option<Time> {
        self.watched_peers()
            .filter(|w| !self.alarms.is_active(w.alarm, w.peer))
            .map(|w| w.silent_since.after(self.config.master_unreachable_after))
            .min()
    }

    /// Derives everything that follows from the state after an input, and queues the effects.
    pub(super) fn finish(&mut self, now: Time) {
        self.give_slots();
        self.abandon_stale_handover();
        self.drop_stray_handback();
        // Hellos: when what we announce changed, and every hello interval.
        let current = (self.announced(), self.eligibility());
        let mut hellos = Vec::new();
        if self.announced.as_ref() != Some(&current) || now >= self.next_hello {
            self.bump_hello_seq(now);
            let h = self.hello(false);
            // A peer without an address has no link yet (restored from the state file before
            // reconcile names its address): it gets its hello when the link comes up.
            for (p, view) in self.views.iter().filter(|(_, v)| v.address.is_some()) {
                let mut h = h.clone();
                h.want_reply = view.hello.is_none();
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
        // Compared in place: the ring is copied only when it changed, not on every input.
        if self.key_ring() != self.hot_ring.as_ref() {
            self.hot_ring = self.key_ring().cloned();
            self.effects.push_back(Effect::KeyRingChanged(self.hot_ring.clone().map(Box::new)));
        }
        self.effects.extend(hellos);
        let desired = self.desired_alarms(now);
        let changes = self.alarms.reconcile(desired);
        self.effects.extend(changes.into_iter().map(Effect::Alarm));
    }
}

/// Key versions as the operator reads them in logs, alarms and errors: `3, 4, 4227073`.
pub(super) fn version_list(versions: impl IntoIterator<Item = KeyVersion>) -> String {
    versions.into_iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", ")
}

/// Whether `address` has the shape of a peer listener's `host:port`: a host, a colon, a port
/// number, and no longer than a DNS name (253) in brackets with a port can be. Checked before
/// an address is kept, so that nobody can make the state or the audit trail hold a long text
/// in its place.
pub(crate) fn is_host_port(address: &str) -> bool {
    address.len() <= 261
        && address.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
}
