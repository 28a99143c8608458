//! An in-memory network of [`Cluster`]s for scenario tests and property tests: N clusters,
//! a bag of messages in flight that can be delivered in any order, dropped or duplicated, and
//! a fake clock. It carries effects the way the daemon does (messages into the network,
//! `Persist` into a "disk", key-ring changes into a "hot path", alarms into a sink) and checks
//! the module's invariants as it goes.
//!
//! Invariants checked after every step ([`Network::violations`] collects failures):
//! 1. no cluster holds (in its role, its hot path or its persisted state) key material of two
//!    domains;
//! 2. a slave's (term, epoch) for a domain never decreases;
//! 5. a key-carrying message is addressed only to a peer whose newest hello (as delivered to the
//!    sender) shows it as the sender's slave or as an enrollable off cluster, and a cluster of
//!    another domain that receives one stores nothing;
//!
//! plus: a refused command changes nothing and emits nothing, the alarms carried by effects
//! are exactly the machine's active alarms, and one condition is one alarm (a raise only of an
//! inactive alarm, an update or a clear only of an active one). Every raise is recorded
//! ([`SimCluster::raises`]) so that a test can assert that a fault-free run raised none. [`Network::check_quiet`] checks the properties that
//! hold once the network is quiet (after [`Network::settle`]):
//! 3. every slave whose master is its peer holds exactly its master's domain state, and every
//!    off cluster that the master may enroll is enrolled;
//! 4. `MAencryptionMultiMaster` is active exactly where a peering joins two domains.
//!
//! And for failover (terms, handovers, promotions, partitions, kills), checked after every
//! step: at most one master per (domain, term), and no two different keys ever share a
//! (domain, version) anywhere; once everything is healed, revived and quiet
//! ([`Network::check_failover`]): every key version any cluster sealed with is in its
//! domain's master's key set, and each domain has one master whose state its slaves hold.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::alarm::{Alarm, AlarmChange, AlarmKey, AlarmName};
use crate::crypto::keyring::KeyRing;
use crate::crypto::password::{Iterations, Password};
use crate::ids::{ClusterId, DomainId, Epoch, KeyVersion, Term};

use super::message::{Announced, Hello};
use super::state::LeaveReason;
use super::{
    Capabilities, Cluster, ClusterConfig, Command, CommandError, ComplianceDb, Effect, Entropy,
    LogLine, NodeId, Outcome, PeerMessage, PersistedState, Role, Time, Wanted,
};

/// The two passwords the simulator uses (a master alternates between them on change).
pub(crate) const PASSWORDS: [&str; 2] = ["Correct-Horse-Battery-1", "Staple-Purple-Monkey-2"];

/// One message in flight.
#[derive(Clone, Debug)]
pub(crate) struct Envelope {
    pub(crate) from: ClusterId,
    pub(crate) to: ClusterId,
    pub(crate) msg: PeerMessage,
}

/// One simulated cluster and what its daemon would have carried out.
#[derive(Debug)]
pub(crate) struct SimCluster {
    pub(crate) machine: Cluster,
    /// The last state the machine asked to persist (what a restart starts from).
    pub(crate) disk: PersistedState,
    /// The ring the hot path uses.
    pub(crate) hot_ring: Option<KeyRing>,
    pub(crate) logs: Vec<LogLine>,
    /// Alarms as raised, updated and cleared by effects.
    pub(crate) alarms: BTreeMap<AlarmKey, Alarm>,
    /// Every raise carried out, in order (what the daemon's alarm history and sinks get).
    pub(crate) raises: Vec<Alarm>,
    pub(crate) downloads: Vec<KeyRing>,
    /// Every `Effect::RetryLink` carried out, in order: the peers heard after a silence.
    pub(crate) link_retries: Vec<ClusterId>,
    /// The peers whose transport link is up (`Effect::LinkUp` / `LinkDown`).
    links: BTreeSet<ClusterId>,
}

/// Settings for every cluster of a network.
#[derive(Clone, Debug)]
pub(crate) struct SimSettings {
    pub(crate) iterations: Iterations,
    pub(crate) hello_interval: Duration,
    pub(crate) master_unreachable_after: Duration,
    pub(crate) rotate_after: Option<Duration>,
    pub(crate) destruction_grace: Duration,
}

impl Default for SimSettings {
    fn default() -> Self {
        Self {
            iterations: Iterations::insecure_for_tests(1_000),
            hello_interval: Duration::from_secs(30),
            master_unreachable_after: Duration::from_secs(300),
            rotate_after: None,
            destruction_grace: ClusterConfig::DEFAULT_DESTRUCTION_GRACE,
        }
    }
}

/// One step of a random scenario (what the property test generates). Cluster and message
/// indices are taken modulo the number of clusters / messages in flight.
#[derive(Clone, Debug)]
pub(crate) enum Op {
    Enable {
        at: usize,
        remote: bool,
    },
    EnableRemote(usize),
    DisableRemote(usize),
    Rotate(usize),
    ChangePassword(usize),
    Download(usize),
    DisableOnMaster(usize),
    DisableOnSlave(usize),
    Peer(usize, usize),
    Unpeer(usize, usize),
    /// Configure (true) or unconfigure (false) the archiver of the cluster's second node.
    SetArchiver(usize, bool),
    /// Restart the daemon from its persisted state, running current software.
    Restart(usize),
    Deliver(usize),
    /// Delivers the oldest message of the link that message `i` travels on: links are FIFO,
    /// as the daemon's one connection per peer is, so a fault-free run uses only this.
    DeliverInOrder(usize),
    /// Adds a new eligible cluster and peers it with every cluster (a peer added later).
    AddPeeredCluster,
    Drop(usize),
    Duplicate(usize),
    DeliverAll,
    Tick(Duration),
    /// The current master of the domain of cluster `i` hands it over to cluster `to`.
    Handover {
        to: usize,
    },
    /// Promote cluster `i` (refused while its master was heard from recently, unless
    /// `force`).
    Promote(usize, bool),
    /// Cut every link between the clusters whose bit is set in the mask and the others.
    Partition(u32),
    /// Repair every cut link.
    Heal,
    /// `kill -9` the daemon of cluster `i`: it neither receives nor runs timers until revived.
    Kill(usize),
    /// Start every killed daemon again from its persisted state.
    Revive,
}

/// The simulated network.
#[derive(Debug)]
pub(crate) struct Network {
    settings: SimSettings,
    clusters: BTreeMap<ClusterId, SimCluster>,
    in_flight: Vec<Envelope>,
    now: Time,
    entropy_seed: u64,
    /// The current password of each master (by master id), as the simulator set it.
    passwords: BTreeMap<ClusterId, usize>,
    /// Newest hello delivered, per (receiver, sender): what the receiver knows of the sender.
    delivered_hellos: BTreeMap<(ClusterId, ClusterId), Hello>,
    /// Highest (term, epoch) each cluster ever held as a slave, per domain.
    slave_epochs: BTreeMap<(ClusterId, DomainId), (Term, Epoch)>,
    violations: Vec<String>,
    /// Cut links (each pair in both orders): messages across them are lost.
    cut: BTreeSet<(ClusterId, ClusterId)>,
    /// Killed daemons.
    down: BTreeSet<ClusterId>,
    /// Every key ever held anywhere, by (domain, version): its bytes.
    keys_seen: BTreeMap<(DomainId, KeyVersion), [u8; 32]>,
    /// Every key version a hot path sealed with (its primary), by domain.
    sealed_with: BTreeMap<DomainId, BTreeSet<KeyVersion>>,
}

impl Default for Network {
    fn default() -> Self {
        Self::new(SimSettings::default())
    }
}

/// A cluster id from a short name; panics on an invalid name (test helper).
pub(crate) fn cid(name: &str) -> ClusterId {
    ClusterId::new(name).expect("valid cluster name")
}

impl Network {
    pub(crate) fn new(settings: SimSettings) -> Self {
        Self {
            settings,
            clusters: BTreeMap::new(),
            in_flight: Vec::new(),
            now: Time::from_unix_millis(1_700_000_000_000),
            entropy_seed: 0,
            passwords: BTreeMap::new(),
            delivered_hellos: BTreeMap::new(),
            slave_epochs: BTreeMap::new(),
            violations: Vec::new(),
            cut: BTreeSet::new(),
            down: BTreeSet::new(),
            keys_seen: BTreeMap::new(),
            sealed_with: BTreeMap::new(),
        }
    }

    /// `n` eligible clusters named `c0`, `c1`, … each with two nodes archiving to SQL Server.
    pub(crate) fn with_clusters(n: usize) -> Self {
        let mut net = Self::default();
        for i in 0..n {
            net.add_cluster(&format!("c{i}"));
        }
        net
    }

    fn config(&self, id: ClusterId, capabilities: Capabilities) -> ClusterConfig {
        ClusterConfig {
            id,
            capabilities,
            iterations: self.settings.iterations,
            hello_interval: self.settings.hello_interval,
            master_unreachable_after: self.settings.master_unreachable_after,
            rotate_after: self.settings.rotate_after,
            destruction_grace: self.settings.destruction_grace,
        }
    }

    /// Adds an eligible cluster with nodes `n1` and `n2` archiving to SQL Server.
    pub(crate) fn add_cluster(&mut self, name: &str) -> ClusterId {
        let db = Some(ComplianceDb::SqlServer);
        self.add_cluster_with(name, Capabilities::CURRENT, &[("n1", db.clone()), ("n2", db)])
    }

    /// Adds a cluster with the given software and nodes.
    pub(crate) fn add_cluster_with(
        &mut self,
        name: &str,
        capabilities: Capabilities,
        nodes: &[(&str, Option<ComplianceDb>)],
    ) -> ClusterId {
        let id = cid(name);
        let mut disk = PersistedState::new(id.clone());
        for (n, db) in nodes {
            disk.nodes.insert(NodeId::new(*n).expect("valid node name"), db.clone());
        }
        let machine = Cluster::new(self.config(id.clone(), capabilities), disk.clone(), self.now)
            .expect("fresh state");
        self.clusters.insert(
            id.clone(),
            SimCluster {
                machine,
                disk,
                hot_ring: None,
                logs: Vec::new(),
                alarms: BTreeMap::new(),
                raises: Vec::new(),
                downloads: Vec::new(),
                link_retries: Vec::new(),
                links: BTreeSet::new(),
            },
        );
        self.drain(&id);
        id
    }

    pub(crate) fn ids(&self) -> Vec<ClusterId> {
        self.clusters.keys().cloned().collect()
    }

    pub(crate) fn now(&self) -> Time {
        self.now
    }

    pub(crate) fn get(&self, id: &ClusterId) -> &SimCluster {
        &self.clusters[id]
    }

    pub(crate) fn cluster(&self, id: &ClusterId) -> &Cluster {
        &self.clusters[id].machine
    }

    pub(crate) fn in_flight(&self) -> &[Envelope] {
        &self.in_flight
    }

    /// Failed invariants so far (empty in a correct implementation).
    pub(crate) fn violations(&self) -> &[String] {
        &self.violations
    }

    pub(crate) fn alarm_active(&self, at: &ClusterId, name: AlarmName, about: &ClusterId) -> bool {
        self.clusters[at].alarms.contains_key(&AlarmKey { name, about: about.clone() })
    }

    pub(crate) fn alarm(
        &self,
        at: &ClusterId,
        name: AlarmName,
        about: &ClusterId,
    ) -> Option<&Alarm> {
        self.clusters[at].alarms.get(&AlarmKey { name, about: about.clone() })
    }

    pub(crate) fn logged(&self, at: &ClusterId, line: &str) -> usize {
        self.clusters[at].logs.iter().filter(|l| l.text == line).count()
    }

    /// The password currently set on master `m` (as the simulator set it).
    /// The domain password for a command on `c`: the one its domain state's record verifies
    /// (masters change hands and passwords change on cut-off masters), else the last one the
    /// simulator set there.
    fn password_of(&self, c: &ClusterId) -> Password {
        if let Some(ds) = self.cluster(c).domain_state()
            && let Some(p) = PASSWORDS.iter().find(|p| ds.password.verify(&Password::new(**p)))
        {
            return Password::new(*p);
        }
        Password::new(PASSWORDS[self.passwords.get(c).copied().unwrap_or(0)])
    }

    // ----- driving ---------------------------------------------------------------------------

    /// Runs an administrator command on `at` with fresh deterministic entropy.
    pub(crate) fn command(
        &mut self,
        at: &ClusterId,
        cmd: Command,
    ) -> Result<Outcome, CommandError> {
        self.entropy_seed += 1;
        let entropy = Entropy::from_seed(self.entropy_seed);
        let pw_change = match &cmd {
            Command::Enable { .. } => Some(0),
            Command::ChangePassword { new, .. } => {
                PASSWORDS.iter().position(|p| p.as_bytes() == new.as_bytes())
            }
            _ => None,
        };
        let sc = self.clusters.get_mut(at).expect("known cluster");
        let before = sc.machine.state().clone();
        let result = sc.machine.handle_command(cmd, self.now, entropy);
        if let Err(e) = &result {
            if sc.machine.state() != &before {
                self.violations.push(format!("{at}: refused command changed the state ({e})"));
            }
            if let Some(eff) = sc.machine.poll_effect() {
                self.violations.push(format!("{at}: refused command emitted {eff:?} ({e})"));
            }
        } else if let Some(i) = pw_change {
            self.passwords.insert(at.clone(), i);
        }
        if let Ok(Outcome::KeysForDownload(ring)) = &result {
            sc.downloads.push((**ring).clone());
        }
        self.drain(at);
        result
    }

    /// `at`'s hot path reports that it used `version` up to 0.9·2^32 seals.
    pub(crate) fn report_worn_out(&mut self, at: &ClusterId, version: KeyVersion) {
        let now = self.now;
        self.clusters.get_mut(at).expect("known cluster").machine.handle_worn_out(version, now);
        self.drain(at);
    }

    /// The address a simulated cluster's intercluster listener has.
    fn address_of(id: &ClusterId) -> String {
        format!("{id}:7100")
    }

    /// Peers `a` and `b` (both sides, as operators configure both ends).
    pub(crate) fn peer(&mut self, a: &ClusterId, b: &ClusterId) {
        let _ = self.command(a, Command::AddPeer { peer: b.clone(), address: Self::address_of(b) });
        let _ = self.command(b, Command::AddPeer { peer: a.clone(), address: Self::address_of(a) });
    }

    /// Removes the peering between `a` and `b` on both sides.
    pub(crate) fn unpeer(&mut self, a: &ClusterId, b: &ClusterId) {
        let _ = self.command(a, Command::RemovePeer { peer: b.clone() });
        let _ = self.command(b, Command::RemovePeer { peer: a.clone() });
        self.delivered_hellos.remove(&(a.clone(), b.clone()));
        self.delivered_hellos.remove(&(b.clone(), a.clone()));
    }

    /// Peers every pair of the given clusters.
    pub(crate) fn peer_all(&mut self, ids: &[ClusterId]) {
        for (i, a) in ids.iter().enumerate() {
            for b in &ids[i + 1..] {
                self.peer(a, b);
            }
        }
    }

    /// Delivers message `i` of the bag (taken out of it).
    fn deliver(&mut self, i: usize) {
        if self.in_flight.is_empty() {
            return;
        }
        let env = self.in_flight.remove(i % self.in_flight.len());
        self.deliver_envelope(env);
    }

    /// Delivers the oldest message in flight from the sender to the receiver of message `i`.
    fn deliver_in_order(&mut self, i: usize) {
        if self.in_flight.is_empty() {
            return;
        }
        let e = &self.in_flight[i % self.in_flight.len()];
        let (from, to) = (e.from.clone(), e.to.clone());
        let first = self.in_flight.iter().position(|e| e.from == from && e.to == to);
        let env = self.in_flight.remove(first.expect("message i is on this link"));
        self.deliver_envelope(env);
    }

    /// Drops message `i` of the bag.
    fn drop_message(&mut self, i: usize) {
        if !self.in_flight.is_empty() {
            let n = self.in_flight.len();
            self.in_flight.remove(i % n);
        }
    }

    /// Puts a copy of message `i` at the end of the bag.
    fn duplicate(&mut self, i: usize) {
        if !self.in_flight.is_empty() {
            let env = self.in_flight[i % self.in_flight.len()].clone();
            self.in_flight.push(env);
        }
    }

    /// Delivers everything in flight, oldest first, including what the deliveries cause.
    pub(crate) fn deliver_all(&mut self) {
        let mut budget = 100_000;
        while !self.in_flight.is_empty() && budget > 0 {
            budget -= 1;
            let env = self.in_flight.remove(0);
            self.deliver_envelope(env);
        }
        if budget == 0 {
            self.violations.push("messages keep causing messages forever".into());
        }
    }

    /// Puts a message into the network as if `env.from` had sent it (to test what a receiver
    /// does with a message a correct sender would not send).
    pub(crate) fn inject(&mut self, env: Envelope) {
        self.in_flight.push(env);
    }

    /// Takes out of the network every message for which `pick` is true, and returns them.
    pub(crate) fn take(&mut self, mut pick: impl FnMut(&Envelope) -> bool) -> Vec<Envelope> {
        let (taken, kept) = std::mem::take(&mut self.in_flight).into_iter().partition(|e| pick(e));
        self.in_flight = kept;
        taken
    }

    /// Lets `d` pass and runs every cluster's timers.
    pub(crate) fn advance(&mut self, d: Duration) {
        self.now = self.now.after(d);
        for id in self.ids() {
            if !self.down.contains(&id) {
                self.timeout(&id);
            }
        }
    }

    /// Runs `id`'s timers now, as its daemon does when `poll_timeout` is due.
    fn timeout(&mut self, id: &ClusterId) {
        self.entropy_seed += 1;
        let (now, entropy) = (self.now, Entropy::from_seed(self.entropy_seed));
        self.clusters.get_mut(id).expect("known").machine.handle_timeout(now, entropy);
        self.drain(id);
    }

    /// Restarts `id`'s daemon from its persisted state, with the given software.
    pub(crate) fn restart_with(&mut self, id: &ClusterId, capabilities: Capabilities) {
        let disk = self.clusters[id].disk.clone();
        self.restart_from(id, disk, capabilities);
    }

    /// Restarts `id`'s daemon from `state` (e.g. an old backup), with the given software.
    pub(crate) fn restart_from(
        &mut self,
        id: &ClusterId,
        state: PersistedState,
        capabilities: Capabilities,
    ) {
        let config = self.config(id.clone(), capabilities);
        let sc = self.clusters.get_mut(id).expect("known cluster");
        sc.disk = state.clone();
        // The daemon's configuration names the same nodes and peers as the state.
        let wanted = Wanted {
            nodes: state.nodes.iter().map(|(n, db)| (n.clone(), db.clone())).collect(),
            peers: state.peers.iter().map(|p| (p.clone(), Self::address_of(p))).collect(),
        };
        sc.machine = Cluster::new(config, state, self.now).expect("own state loads");
        let refused = sc.machine.reconcile(&wanted, self.now);
        assert!(refused.is_empty(), "the state's own nodes and peers: {refused:?}");
        sc.hot_ring = None;
        sc.alarms.clear();
        sc.links.clear();
        self.delivered_hellos.retain(|(to, _), _| to != id);
        self.drain(id);
    }

    /// Restarts `id`'s daemon from its persisted state, running current software.
    pub(crate) fn restart(&mut self, id: &ClusterId) {
        self.restart_with(id, Capabilities::CURRENT);
    }

    /// Delivers everything, then lets hello rounds pass until nothing changes any more: the
    /// network is quiet. Records a violation if it never gets quiet.
    pub(crate) fn settle(&mut self) {
        self.deliver_all();
        let mut calm_rounds = 0;
        for _ in 0..30 {
            let before: Vec<_> =
                self.clusters.values().map(|c| (c.disk.clone(), c.alarms.clone())).collect();
            self.advance(self.settings.hello_interval);
            self.deliver_all();
            let after: Vec<_> =
                self.clusters.values().map(|c| (c.disk.clone(), c.alarms.clone())).collect();
            let same = before
                .iter()
                .zip(&after)
                .all(|(b, a)| b.1 == a.1 && strip_seq(&b.0) == strip_seq(&a.0));
            calm_rounds = if same { calm_rounds + 1 } else { 0 };
            if calm_rounds == 2 {
                return;
            }
        }
        self.violations.push("the network never became quiet".into());
    }

    /// Cuts every link between the clusters of `side` and the others (added to any cut).
    pub(crate) fn partition(&mut self, side: &[ClusterId]) {
        for a in side {
            for b in self.ids().iter().filter(|b| !side.contains(b)) {
                self.cut.insert((a.clone(), b.clone()));
                self.cut.insert((b.clone(), a.clone()));
            }
        }
    }

    /// Repairs every cut link.
    pub(crate) fn heal(&mut self) {
        self.cut.clear();
    }

    /// `kill -9` of `id`'s daemon: what it had in flight, and what is in flight to it, is lost;
    /// it neither receives nor runs timers until [`Network::revive`].
    pub(crate) fn kill(&mut self, id: &ClusterId) {
        self.in_flight.retain(|e| &e.from != id && &e.to != id);
        self.down.insert(id.clone());
    }

    /// Starts every killed daemon again from its persisted state.
    pub(crate) fn revive(&mut self) {
        for c in std::mem::take(&mut self.down) {
            self.restart(&c);
        }
    }

    /// Applies one random-scenario step.
    pub(crate) fn apply(&mut self, op: &Op) {
        let ids = self.ids();
        let n = ids.len();
        let at = |i: usize| ids[i % n].clone();
        match op {
            Op::Enable { at: i, remote } => {
                let pw = Password::new(PASSWORDS[0]);
                let _ = self.command(&at(*i), Command::Enable { password: pw, remote: *remote });
            }
            Op::EnableRemote(i) => {
                let _ = self.command(&at(*i), Command::EnableRemote);
            }
            Op::DisableRemote(i) => {
                let _ = self.command(&at(*i), Command::DisableRemote);
            }
            Op::Rotate(i) => {
                let _ = self.command(&at(*i), Command::RotateKey);
            }
            Op::ChangePassword(i) => {
                let c = at(*i);
                let cur = self.password_of(&c);
                let cur =
                    PASSWORDS.iter().position(|p| p.as_bytes() == cur.as_bytes()).unwrap_or(0);
                let cmd = Command::ChangePassword {
                    old: Password::new(PASSWORDS[cur]),
                    new: Password::new(PASSWORDS[1 - cur]),
                };
                let _ = self.command(&c, cmd);
            }
            Op::Download(i) => {
                let c = at(*i);
                let password = self.password_of(&c);
                let _ = self.command(&c, Command::DownloadKeys { password });
            }
            Op::DisableOnMaster(i) => {
                let c = at(*i);
                let password = self.password_of(&c);
                let cmd = Command::Disable { password, i_understand_data_loss: true };
                let _ = self.command(&c, cmd);
            }
            Op::DisableOnSlave(i) => {
                let c = at(*i);
                if let Role::Slave(_) = self.cluster(&c).role() {
                    let password = self.password_of(&c);
                    let cmd = Command::Disable { password, i_understand_data_loss: false };
                    let _ = self.command(&c, cmd);
                }
            }
            Op::Peer(a, b) if a % n != b % n => self.peer(&at(*a), &at(*b)),
            Op::Unpeer(a, b) if a % n != b % n => self.unpeer(&at(*a), &at(*b)),
            Op::Peer(..) | Op::Unpeer(..) => {}
            Op::SetArchiver(i, on) => {
                let archiver = on.then_some(ComplianceDb::SqlServer);
                let node = NodeId::new("n2").expect("valid");
                let _ = self.command(&at(*i), Command::SetArchiver { node, archiver });
            }
            Op::Restart(i) => self.restart(&at(*i)),
            Op::Deliver(i) => self.deliver(*i),
            Op::DeliverInOrder(i) => self.deliver_in_order(*i),
            Op::AddPeeredCluster => {
                let new = self.add_cluster(&format!("c{n}"));
                for other in &ids {
                    self.peer(other, &new);
                }
            }
            Op::Drop(i) => self.drop_message(*i),
            Op::Duplicate(i) => self.duplicate(*i),
            Op::DeliverAll => self.deliver_all(),
            Op::Tick(d) => self.advance(*d),
            Op::Handover { to } => {
                let master = ids.iter().find(|c| self.cluster(c).is_master()).cloned();
                if let Some(m) = master {
                    let password = self.password_of(&m);
                    let _ = self.command(&m, Command::Handover { to: at(*to), password });
                }
            }
            Op::Promote(i, force) => {
                let c = at(*i);
                let password = self.password_of(&c);
                let _ = self.command(&c, Command::Promote { password, force: *force });
            }
            Op::Partition(mask) => {
                let side: Vec<ClusterId> =
                    (0..n).filter(|i| mask >> (i % 32) & 1 == 1).map(|i| ids[i].clone()).collect();
                self.partition(&side);
            }
            Op::Heal => self.heal(),
            Op::Kill(i) => self.kill(&at(*i)),
            Op::Revive => self.revive(),
        }
    }

    // ----- carrying effects and checking -----------------------------------------------------

    fn deliver_envelope(&mut self, env: Envelope) {
        if self.down.contains(&env.to) || self.cut.contains(&(env.from.clone(), env.to.clone())) {
            return; // lost: the receiver is down or the link is cut
        }
        let Some(rc) = self.clusters.get_mut(&env.to) else { return };
        let domain_before = rc.machine.domain_state().map(|d| d.domain);
        let keys_of = match &env.msg {
            PeerMessage::State(s) | PeerMessage::Handover(s) => Some(s.domain),
            PeerMessage::Handback(r) => Some(r.domain()),
            _ => None,
        };
        let hello = match &env.msg {
            PeerMessage::Hello(h) => Some(h.clone()),
            _ => None,
        };
        // Unknown peers are refused by the machine, as the TLS layer would.
        let accepted = rc.machine.handle_peer_message(&env.from, env.msg, self.now).is_ok();
        if accepted && let Some(h) = hello {
            let key = (env.to.clone(), env.from.clone());
            if self.delivered_hellos.get(&key).is_none_or(|old| old.seq < h.seq) {
                self.delivered_hellos.insert(key, h);
            }
        }
        if let (Some(d0), Some(k)) = (domain_before, keys_of) {
            let after = self.clusters[&env.to].machine.domain_state().map(|d| d.domain);
            if d0 != k && after != Some(d0) {
                self.violations.push(format!(
                    "{}: of domain {d0}, received keys of domain {k} from {} and changed domain",
                    env.to, env.from
                ));
            }
        }
        let to = env.to;
        self.drain(&to);
    }

    /// Carries out every pending effect of cluster `id` and checks the invariants.
    fn drain(&mut self, id: &ClusterId) {
        let sc = self.clusters.get_mut(id).expect("known cluster");
        let mut sends = Vec::new();
        let mut bad = Vec::new();
        while let Some(e) = sc.machine.poll_effect() {
            match e {
                Effect::Send { to, msg } => sends.push(Envelope { from: id.clone(), to, msg }),
                Effect::Persist(s) => sc.disk = *s,
                // One condition is one alarm: raised when not active, updated and cleared
                // only when active.
                Effect::Alarm(AlarmChange::Raise(a)) => {
                    sc.raises.push(a.clone());
                    if let Some(old) = sc.alarms.insert(a.key.clone(), a) {
                        bad.push(format!("{id}: {old} raised again while active"));
                    }
                }
                Effect::Alarm(AlarmChange::Update(a)) => {
                    if sc.alarms.insert(a.key.clone(), a.clone()).is_none() {
                        bad.push(format!("{id}: {a} updated while not active"));
                    }
                }
                Effect::Alarm(AlarmChange::Clear(k)) => {
                    if sc.alarms.remove(&k).is_none() {
                        bad.push(format!(
                            "{id}: {} about {} cleared while not active",
                            k.name, k.about
                        ));
                    }
                }
                Effect::Log(l) => sc.logs.push(l),
                Effect::KeyRingChanged(r) => {
                    sc.hot_ring = r.map(|b| *b);
                    // The hot path seals with the primary from now on.
                    if let Some(ring) = &sc.hot_ring {
                        self.sealed_with
                            .entry(ring.domain())
                            .or_default()
                            .insert(ring.primary_version());
                    }
                }
                Effect::LinkUp { peer, .. } => {
                    sc.links.insert(peer);
                }
                Effect::LinkDown { peer } => {
                    sc.links.remove(&peer);
                }
                // The simulated network has no backoff (every message goes at once): recorded.
                Effect::RetryLink { peer } => sc.link_retries.push(peer),
            }
        }
        self.violations.extend(bad);
        let sc = &self.clusters[id];
        for env in &sends {
            if !sc.links.contains(&env.to) {
                self.violations.push(format!("{id}: sent to {} without a link", env.to));
            }
        }
        for env in &sends {
            if env.msg.carries_keys() {
                self.check_key_send(env);
            }
        }
        self.in_flight.extend(sends);
        self.check_cluster(id);
        // The daemon runs the timers at once when the machine says they are due (e.g. a
        // worn-out key on the master).
        if self.clusters[id].machine.poll_timeout().is_some_and(|t| t <= self.now) {
            self.timeout(id);
        }
    }

    fn check_key_send(&mut self, env: &Envelope) {
        let sender = &self.clusters[&env.from].machine;
        let known = self.delivered_hellos.get(&(env.from.clone(), env.to.clone()));
        let s = match &env.msg {
            PeerMessage::State(s) => s,
            // A handover only from a master handing its domain over to the receiver; a
            // handback only from a slave to its master, of one domain.
            PeerMessage::Handover(s) => {
                let ok = matches!(sender.role(), Role::Master(m)
                    if m.state.domain == s.domain
                        && m.handing_over.as_deref() == Some(&**s)
                        && s.master == env.to);
                if !ok {
                    self.violations.push(format!("property 5: bad handover {env:?}"));
                }
                return;
            }
            PeerMessage::Handback(r) => {
                let ok = matches!(sender.role(), Role::Slave(d)
                    if d.domain == r.domain() && d.master == env.to);
                if !ok {
                    self.violations.push(format!("property 5: bad handback from {}", env.from));
                }
                return;
            }
            _ => return,
        };
        let ok_sender = matches!(sender.role(), Role::Master(m) if m.state.domain == s.domain);
        let ok_target = match known.map(|h| &h.role) {
            // Of this domain under an older term: fencing brings it over.
            Some(r) if r.domain() == Some(s.domain) && r.term().is_some_and(|t| t < s.term) => true,
            Some(Announced::Slave { domain, master, .. }) => {
                *domain == s.domain && master == &env.from
            }
            Some(Announced::Off { left }) => match left {
                Some(t) if t.domain == s.domain && t.reason == LeaveReason::OptedOut => {
                    s.remote_switched_on() > t.at()
                }
                Some(t) if t.domain == s.domain => s.at() > t.at(),
                _ => true,
            },
            Some(Announced::Master { .. }) | None => false,
        };
        if !ok_sender || !ok_target {
            self.violations.push(format!(
                "property 5: {} sent keys of domain {} to {}, known as {:?}",
                env.from,
                s.domain,
                env.to,
                known.map(|h| &h.role)
            ));
        }
    }

    fn check_cluster(&mut self, id: &ClusterId) {
        let sc = &self.clusters[id];
        let m = &sc.machine;
        let role_domain = m.domain_state().map(|d| d.domain);
        let mut bad = Vec::new();
        // Property 1: one domain's keys at most, everywhere this cluster keeps them.
        if let Some(ds) = m.domain_state()
            && ds.ring.domain() != ds.domain
        {
            bad.push(format!("property 1: {id} holds a ring of another domain"));
        }
        if sc.hot_ring.as_ref().map(KeyRing::domain) != role_domain {
            bad.push(format!("property 1: {id}'s hot path ring differs from its role"));
        }
        if sc.disk.role.domain_state().map(|d| d.domain) != role_domain || &sc.disk.role != m.role()
        {
            bad.push(format!("{id}: persisted role differs from the machine's role"));
        }
        // Alarms carried by effects are the machine's alarms.
        let machine_alarms: BTreeMap<_, _> =
            m.alarms().iter().map(|a| (a.key.clone(), a.clone())).collect();
        if machine_alarms != sc.alarms {
            bad.push(format!("{id}: alarm effects differ from the active alarms"));
        }
        // Property 2.
        if let Role::Slave(s) = m.role() {
            let key = (id.clone(), s.domain);
            let now = (s.term, s.epoch);
            let max = self.slave_epochs.entry(key).or_insert(now);
            if now < *max {
                bad.push(format!(
                    "property 2: {id}'s (term, epoch) went back from {max:?} to {now:?}"
                ));
            }
            *max = (*max).max(now);
        }
        // Failover: no two different keys under one (domain, version), anywhere, ever.
        let rings = [m.key_ring(), sc.hot_ring.as_ref(), m.state().handback.as_ref()];
        for ring in rings.into_iter().flatten() {
            for k in ring.keys() {
                let seen = self.keys_seen.entry((ring.domain(), k.version())).or_insert(*k.bytes());
                if seen != k.bytes() {
                    bad.push(format!(
                        "two different keys share version {} of domain {}",
                        k.version(),
                        ring.domain()
                    ));
                }
            }
        }
        // Failover: at most one master per (domain, term).
        if let Role::Master(mine) = m.role() {
            for (other, oc) in &self.clusters {
                if let Role::Master(theirs) = oc.machine.role()
                    && other != id
                    && theirs.state.domain == mine.state.domain
                    && theirs.state.term == mine.state.term
                {
                    bad.push(format!(
                        "{id} and {other} are both master of domain {} in term {}",
                        mine.state.domain, mine.state.term
                    ));
                }
            }
        }
        self.violations.extend(bad);
    }

    /// Heals every cut, revives every killed daemon and lets the network become quiet; then
    /// returns the failover properties that do not hold: every key version a cluster sealed
    /// with is in its domain's master's key set (when the domain still has a master), and a
    /// domain has at most one master.
    pub(crate) fn check_failover(&mut self) -> Vec<String> {
        self.heal();
        self.revive();
        self.settle();
        let mut bad = Vec::new();
        for (domain, versions) in &self.sealed_with {
            let masters: Vec<&SimCluster> = self
                .clusters
                .values()
                .filter(
                    |c| matches!(c.machine.role(), Role::Master(m) if m.state.domain == *domain),
                )
                .collect();
            if masters.len() > 1 {
                bad.push(format!("domain {domain} has {} masters once healed", masters.len()));
            }
            let Some(master) = masters.first() else { continue };
            let ring = master.machine.key_ring().expect("a master holds a ring");
            for v in versions {
                if ring.get(*v).is_err() {
                    bad.push(format!(
                        "key version {v} of domain {domain} was sealed with but is missing from \
                         the master's ({}) key set",
                        master.machine.id()
                    ));
                }
            }
        }
        bad
    }

    /// Checks the properties of a quiet network (call after [`Network::settle`]); returns the
    /// failures.
    pub(crate) fn check_quiet(&self) -> Vec<String> {
        let mut bad = Vec::new();
        let peered = |a: &ClusterId, b: &ClusterId| {
            self.clusters[a].machine.state().peers.contains(b)
                && self.clusters[b].machine.state().peers.contains(a)
        };
        for (id, sc) in &self.clusters {
            let m = &sc.machine;
            // Property 3.
            if let Role::Slave(s) = m.role() {
                if peered(id, &s.master) {
                    match self.cluster(&s.master).role() {
                        Role::Master(ms) if ms.state == **s => {}
                        // Its master follows a newer term whose master it cannot reach: an
                        // alarm says so.
                        Role::Slave(ms)
                            if ms.term > s.term
                                && !peered(id, &ms.master)
                                && self.alarm_active(id, AlarmName::StaleData, &s.master) => {}
                        // Its master left the domain on its own (after handing it over): the
                        // data here is stale, and an alarm says so.
                        Role::Off { .. }
                            if self.alarm_active(id, AlarmName::StaleData, &s.master) => {}
                        other => bad.push(format!(
                            "property 3: slave {id} holds {s:?} but its master holds {other:?}"
                        )),
                    }
                } else if !self.alarm_active(id, AlarmName::StaleData, &s.master) {
                    bad.push(format!("{id}: slave of an unpeered master without stale alarm"));
                }
            }
            if let Role::Master(ms) = m.role() {
                let ds = &ms.state;
                for p in &m.state().peers {
                    let pc = &self.clusters[p].machine;
                    let Role::Off { left } = pc.role() else { continue };
                    let opted_out = left.as_ref().is_some_and(|t| {
                        t.domain == ds.domain
                            && if t.reason == LeaveReason::OptedOut {
                                ds.remote_switched_on() <= t.at()
                            } else {
                                ds.at() <= t.at()
                            }
                    });
                    if peered(id, p)
                        && ds.remote
                        && pc.config().capabilities.encryption
                        && pc.eligibility().is_eligible()
                        && !opted_out
                    {
                        bad.push(format!("property 3: {p} is enrollable but {id} left it off"));
                    }
                }
            }
            // Property 4.
            for other in self.clusters.keys() {
                if other == id {
                    continue;
                }
                let expected = peered(id, other) && conflict(m, self.cluster(other));
                let actual = self.alarm_active(id, AlarmName::MultiMaster, other);
                if expected != actual {
                    bad.push(format!(
                        "property 4: multi-master alarm on {id} about {other} is {actual}, \
                         expected {expected} ({:?} / {:?})",
                        m.announced(),
                        self.cluster(other).announced()
                    ));
                }
            }
            for a in sc.alarms.values() {
                if matches!(a.name(), AlarmName::MasterUnreachable | AlarmName::SyncRejected) {
                    bad.push(format!("{id}: {a} active on a quiet network"));
                }
            }
        }
        bad
    }
}

/// The ground truth of a conflicting peering: both encrypt, in two domains, or in one domain
/// and one term under two masters (two masters of one term, or clusters following two masters
/// of one term); a slave and its own (former) master are a stale-data matter, not a
/// multi-master one.
fn conflict(a: &Cluster, b: &Cluster) -> bool {
    let (ra, rb) = (a.announced(), b.announced());
    let (Some(da), Some(db)) = (ra.domain(), rb.domain()) else { return false };
    let slave_of =
        |r: &Announced, m: &ClusterId| matches!(r, Announced::Slave { master, .. } if master == m);
    if slave_of(&ra, b.id()) || slave_of(&rb, a.id()) {
        return false;
    }
    da != db || (ra.term() == rb.term() && ra.master(a.id()) != rb.master(b.id()))
}

fn strip_seq(s: &PersistedState) -> PersistedState {
    let mut s = s.clone();
    s.hello_seq = 0;
    s
}

/// The set of clusters that hold keys of `domain` (for assertions).
pub(crate) fn holders(net: &Network, domain: DomainId) -> BTreeSet<ClusterId> {
    net.ids()
        .into_iter()
        .filter(|id| net.cluster(id).domain_state().is_some_and(|d| d.domain == domain))
        .collect()
}
