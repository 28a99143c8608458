//! The data of one cluster: configuration, the persisted state, and the replicated domain state.
//!
//! Invariants:
//! - a cluster holds the key ring of at most one domain: the ring lives only inside
//!   [`Role::Master`] or [`Role::Slave`], and its domain is the role's domain (a master's
//!   pending destruction area keeps what a retirement or a disable removed, usable by nobody
//!   but a restore, until its grace period ends);
//! - a domain's epoch only grows on its master; a slave's epoch for its domain never decreases;
//! - everything here is plain data (no I/O), serde-serializable for the sealed state file
//!   (`deny_unknown_fields`, so a state written by a newer version is refused, not misread).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::peering::{IssuedToken, LearntPeer};
use crate::crypto::keyring::KeyRing;
use crate::crypto::password::{Iterations, PasswordRecord};
use crate::ids::{ClusterId, DomainId, Epoch, KeyVersion, Term};

/// A point in time: milliseconds since the Unix epoch, as read by the daemon's wall clock and
/// passed in. The state machine never reads a clock. Timeouts (hello interval, master
/// unreachable) compare these values, so a wall clock that jumps back only delays an alarm.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Time(pub u64);

impl Time {
    pub(crate) const fn from_unix_millis(ms: u64) -> Self {
        Self(ms)
    }

    pub(crate) fn unix_millis(self) -> u64 {
        self.0
    }

    /// Whole seconds since the Unix epoch (what key versions record as their creation time).
    pub(crate) fn unix_secs(self) -> u64 {
        self.0 / 1000
    }

    pub(crate) fn after(self, d: Duration) -> Self {
        Self(self.0.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
    }

    /// How long from `earlier` to `self` (zero if `earlier` is later).
    pub(crate) fn since(self, earlier: Time) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    /// The same instant as a [`std::time::SystemTime`] (to print it as a date).
    pub(crate) fn system_time(self) -> std::time::SystemTime {
        std::time::UNIX_EPOCH + Duration::from_millis(self.0)
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

/// The random bytes one command may need: a new key, a new domain id, a new password salt.
/// The daemon fills it from the OS CSPRNG ([`Entropy::from_os`]); tests and the simulator use
/// [`Entropy::from_seed`]. Commands that need none simply ignore it.
#[derive(Clone)]
pub(crate) struct Entropy {
    pub(crate) key: Zeroizing<[u8; 32]>,
    pub(crate) domain: [u8; 16],
    pub(crate) salt: [u8; 16],
}

impl Entropy {
    pub(crate) fn from_os() -> Self {
        use crate::crypto::random::{new_key, os_bytes};
        Self { key: new_key(), domain: os_bytes(), salt: os_bytes() }
    }

    #[cfg(test)]
    /// Deterministic bytes derived from `seed` (SHA-256 based). Tests and simulation only.
    pub(crate) fn from_seed(seed: u64) -> Self {
        use sha2::{Digest, Sha256};
        let block = |tag: u8| {
            let mut h = Sha256::new();
            h.update([tag]);
            h.update(seed.to_le_bytes());
            h.finalize()
        };
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&block(0));
        let mut domain = [0u8; 16];
        domain.copy_from_slice(&block(1)[..16]);
        let mut salt = [0u8; 16];
        salt.copy_from_slice(&block(2)[..16]);
        Self { key, domain, salt }
    }
}

impl fmt::Debug for Entropy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Entropy(<redacted>)")
    }
}

/// The name of one node of a cluster (usually its FQDN).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeId(String);

/// Why a string is not a node name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("node name {0:?} must be 1 to 253 letters, digits, '.', '_' or '-'")]
pub struct BadNodeId(pub String);

impl NodeId {
    /// A node name: 1 to 253 ASCII letters, digits, `.`, `_` and `-` (an FQDN or a short
    /// name), so that it is one path segment of the admin API as it is, and the CLI can name
    /// every node the daemon accepts.
    pub(crate) fn new(s: impl Into<String>) -> Result<Self, BadNodeId> {
        let s = s.into();
        let allowed = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
        if s.is_empty() || s.len() > 253 || !s.chars().all(allowed) {
            return Err(BadNodeId(s));
        }
        Ok(Self(s))
    }
}

impl TryFrom<String> for NodeId {
    type Error = BadNodeId;
    fn try_from(s: String) -> Result<Self, BadNodeId> {
        Self::new(s)
    }
}

impl From<NodeId> for String {
    fn from(n: NodeId) -> String {
        n.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.0)
    }
}

/// The compliance database a node's message archiver writes to.
///
/// Spelled in the config file and the admin API as `sql_server`, `postgresql`, `sqlite`, or
/// another product's name ([`Unsupported`](ComplianceDb::Unsupported)); `none` (no archiver)
/// is not a database and is handled by [`ComplianceDb::parse_archiver`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ComplianceDb {
    SqlServer,
    PostgreSql,
    /// An SQLite file on the node (the archiver's default when no server is named).
    Sqlite,
    /// A database the archiver can write to but imcrypt cannot encrypt for (named as found).
    Unsupported(String),
}

/// Why a string does not name a node's archiver database.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadArchiver {
    #[error("archiver is empty; use \"none\" for no archiver")]
    Empty,
    /// `"none"` parsed where a database is required.
    #[error("\"none\" means no archiver, not a compliance database")]
    None,
}

impl ComplianceDb {
    pub(crate) fn is_supported(&self) -> bool {
        !matches!(self, ComplianceDb::Unsupported(_))
    }

    /// A node's `archiver` setting: `"none"` is no archiver, anything else a database
    /// (see [`FromStr`](std::str::FromStr)). The config file and the admin API both use this.
    pub(crate) fn parse_archiver(s: &str) -> Result<Option<ComplianceDb>, BadArchiver> {
        match s {
            "none" => Ok(None),
            other => other.parse().map(Some),
        }
    }
}

impl std::str::FromStr for ComplianceDb {
    type Err = BadArchiver;

    /// `sql_server`, `postgresql` and `sqlite` are the supported databases; any other
    /// non-empty name is [`ComplianceDb::Unsupported`] (kept, so the master can say which
    /// product stands in the way).
    fn from_str(s: &str) -> Result<Self, BadArchiver> {
        Ok(match s {
            "" => return Err(BadArchiver::Empty),
            "none" => return Err(BadArchiver::None),
            "sql_server" => ComplianceDb::SqlServer,
            "postgresql" => ComplianceDb::PostgreSql,
            "sqlite" => ComplianceDb::Sqlite,
            other => ComplianceDb::Unsupported(other.to_owned()),
        })
    }
}

impl fmt::Display for ComplianceDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ComplianceDb::SqlServer => f.write_str("SQL Server"),
            ComplianceDb::PostgreSql => f.write_str("PostgreSQL"),
            ComplianceDb::Sqlite => f.write_str("SQLite"),
            ComplianceDb::Unsupported(name) => write!(f, "{name}"),
        }
    }
}

/// What this build of the software can do; exchanged in every hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Capabilities {
    /// The software supports archive encryption at all (older versions do not).
    pub(crate) encryption: bool,
    /// Version of the peer protocol spoken.
    protocol: u32,
}

impl Capabilities {
    const PROTOCOL: u32 = 1;

    /// What this build supports.
    pub(crate) const CURRENT: Capabilities =
        Capabilities { encryption: true, protocol: Self::PROTOCOL };

    /// A peer running software that predates encryption.
    pub(crate) const LEGACY: Capabilities = Capabilities { encryption: false, protocol: 0 };
}

/// Settings of one cluster that come from its configuration file, not from the replicated
/// state. Validated by the daemon when it loads the file.
#[derive(Clone, Debug)]
pub(crate) struct ClusterConfig {
    pub(crate) id: ClusterId,
    pub(crate) capabilities: Capabilities,
    /// PBKDF2 iterations for new password records (600,000 by default).
    pub(crate) iterations: Iterations,
    /// How often each peer is sent a hello even when nothing changed.
    pub(crate) hello_interval: Duration,
    /// How long a slave tolerates silence from its master before raising
    /// `MAencryptionMasterUnreachable`.
    pub(crate) master_unreachable_after: Duration,
    /// On the master: rotate the key once the primary version is older than this.
    pub(crate) rotate_after: Option<Duration>,
    /// On the master: how long key versions removed by a retirement or a disable stay
    /// restorable before they are destroyed (zero: destroyed at once, as the manual has it).
    pub(crate) destruction_grace: Duration,
}

impl ClusterConfig {
    /// `peer.hello_interval` when the config file does not say: the one source of this
    /// default (the config loader and docs/operations.md follow it; a test checks the docs).
    pub(crate) const DEFAULT_HELLO_INTERVAL: Duration = Duration::from_secs(10);
    /// `peer.master_unreachable_after` when the config file does not say.
    pub(crate) const DEFAULT_MASTER_UNREACHABLE_AFTER: Duration = Duration::from_secs(60);
    /// `encryption.destruction_grace` when the config file does not say: 7 days.
    pub(crate) const DEFAULT_DESTRUCTION_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);

    pub(crate) fn new(id: ClusterId) -> Self {
        Self {
            id,
            capabilities: Capabilities::CURRENT,
            iterations: Iterations::default(),
            hello_interval: Self::DEFAULT_HELLO_INTERVAL,
            master_unreachable_after: Self::DEFAULT_MASTER_UNREACHABLE_AFTER,
            rotate_after: None,
            destruction_grace: Self::DEFAULT_DESTRUCTION_GRACE,
        }
    }
}

/// The replicated state of one encryption domain: what the master sends and every slave
/// holds an exact copy of.
///
/// Invariant, checked when one is parsed (from a peer or the state file): its key ring belongs
/// to its domain. A state that breaks it is refused as malformed, before any rule sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, try_from = "DomainStateFields")]
pub(crate) struct DomainState {
    pub(crate) domain: DomainId,
    pub(crate) master: ClusterId,
    /// Bumped by the master on every change of this state.
    pub(crate) epoch: Epoch,
    pub(crate) ring: KeyRing,
    /// The master's password record (hash only), so that a slave can check the master's
    /// password for a slave-side disable without ever holding the password.
    pub(crate) password: PasswordRecord,
    /// "Enable on remote clusters": eligible peers are enrolled as slaves.
    pub(crate) remote: bool,
    /// The epoch at which "enable on remote clusters" was last switched on. A cluster that
    /// left the domain on its own administrator's decision rejoins only after that.
    pub(crate) remote_since: Epoch,
    /// The mastership this state belongs to: states order by (term, epoch), and nobody
    /// accepts one of a lower term than the one it holds (fencing). A state without one (made
    /// before terms existed) is of the initial term.
    #[serde(skip_serializing_if = "Term::is_initial")]
    pub(crate) term: Term,
    /// The term in which "enable on remote clusters" was last switched on (with
    /// `remote_since`, the moment it was).
    #[serde(skip_serializing_if = "Term::is_initial")]
    pub(crate) remote_since_term: Term,
    /// The slot of every cluster the domain's masters have peered with: a handover or a
    /// promotion makes a term of the new master's slot, so two clusters never share a term.
    /// Slots are given by the master, from 0 (the creator) up, and never reused.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) members: BTreeMap<ClusterId, u8>,
    /// The key versions the master retired and did not restore: nobody takes them back into
    /// the ring (a cluster of an older term hands back only versions not listed here), so a
    /// retired version never returns by failover.
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub(crate) retired: BTreeSet<KeyVersion>,
}

impl DomainState {
    /// The highest slot a domain gives: 255 members (and the creator).
    pub(crate) const MAX_SLOT: u8 = u8::MAX;

    /// When this state was made: states order by (term, epoch).
    pub(crate) fn at(&self) -> (Term, Epoch) {
        (self.term, self.epoch)
    }

    /// When "enable on remote clusters" was last switched on.
    pub(crate) fn remote_switched_on(&self) -> (Term, Epoch) {
        (self.remote_since_term, self.remote_since)
    }
}

/// [`DomainState`] as parsed, before its invariant is checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DomainStateFields {
    domain: DomainId,
    master: ClusterId,
    epoch: Epoch,
    ring: KeyRing,
    password: PasswordRecord,
    remote: bool,
    remote_since: Epoch,
    #[serde(default)]
    term: Term,
    #[serde(default)]
    remote_since_term: Term,
    #[serde(default)]
    members: BTreeMap<ClusterId, u8>,
    #[serde(default)]
    retired: BTreeSet<KeyVersion>,
}

impl TryFrom<DomainStateFields> for DomainState {
    type Error = String;

    fn try_from(f: DomainStateFields) -> Result<Self, String> {
        if f.ring.domain() != f.domain {
            return Err(format!(
                "the key ring belongs to domain {}, not to the state's domain {}",
                f.ring.domain(),
                f.domain
            ));
        }
        let DomainStateFields {
            domain,
            master,
            epoch,
            ring,
            password,
            remote,
            remote_since,
            term,
            remote_since_term,
            members,
            retired,
        } = f;
        if term != Term::INITIAL && !members.contains_key(&master) {
            return Err(format!(
                "the state's term {term} names no slot for its master, cluster {master}"
            ));
        }
        if let Some(&slot) = members.get(&master)
            && slot != term.slot()
        {
            return Err(format!(
                "the master, cluster {master}, has slot {slot}, but the state's term {term} is \
                 of slot {}",
                term.slot()
            ));
        }
        Ok(Self {
            domain,
            master,
            epoch,
            ring,
            password,
            remote,
            remote_since,
            term,
            remote_since_term,
            members,
            retired,
        })
    }
}

/// Why a cluster stopped being part of a domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum LeaveReason {
    /// The master disabled encryption: the domain no longer exists.
    DomainDisabled,
    /// The master switched "enable on remote clusters" off.
    RemoteDisabled,
    /// This cluster's administrator disabled encryption here with the master's password.
    OptedOut,
}

/// The master's instruction to a slave to delete all encryption data of a domain. The master
/// keeps the tombstones of its domains so that slaves that were unreachable learn it later.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Tombstone {
    pub(crate) domain: DomainId,
    pub(crate) master: ClusterId,
    /// Higher than every epoch of the domain's live state.
    pub(crate) epoch: Epoch,
    pub(crate) reason: LeaveReason,
    /// The term of the domain state it ends (compared with `epoch` as a pair).
    #[serde(default, skip_serializing_if = "Term::is_initial")]
    pub(crate) term: Term,
}

impl Tombstone {
    /// When the domain was left: compared with a state's (term, epoch).
    pub(crate) fn at(&self) -> (Term, Epoch) {
        (self.term, self.epoch)
    }
}

/// The master's own state: the domain it replicates and what only the master knows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MasterState {
    pub(crate) state: DomainState,
    /// The newest key version included in a key download since the last key change. Disable
    /// is refused while the current key set was not downloaded (unless explicitly forced).
    /// Cleared when key versions are recovered from a former master (their numbers may be
    /// lower than the newest).
    pub(crate) downloaded_through: Option<KeyVersion>,
    /// Key versions that came back from clusters which held them under an older term (a
    /// former master that rotated while cut off, or its slaves), by who handed them back:
    /// `MAencryptionKeysRecovered` is active until the key set is downloaded again.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) recovered: BTreeMap<ClusterId, BTreeSet<KeyVersion>>,
    /// A handover in progress: the state that names the chosen slave as master under the new
    /// term. This master stays master (and refuses changes) until the new master's state
    /// reaches it, so that a handover whose message is lost, or whose target fails, never
    /// leaves the domain without a master.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) handing_over: Option<Box<DomainState>>,
}

/// The encryption role of a cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Role {
    /// Not encrypting. `left` remembers the last domain this cluster left and why, so that
    /// the master does not undo a local decision and stale state is never accepted again.
    Off {
        left: Option<Tombstone>,
    },
    Master(Box<MasterState>),
    Slave(Box<DomainState>),
}

impl Role {
    /// The domain state this cluster holds, if it encrypts.
    pub(crate) fn domain_state(&self) -> Option<&DomainState> {
        match self {
            Role::Off { .. } => None,
            Role::Master(m) => Some(&m.state),
            Role::Slave(s) => Some(s),
        }
    }
}

/// A peer removed while it held this master's keys: its data is stale until the operator
/// disables encryption there or peers it again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StaleSlave {
    pub(crate) domain: DomainId,
    pub(crate) epoch: Epoch,
}

/// Everything a cluster must remember across restarts. The daemon seals it with the node key
/// and writes it crash-safely whenever the machine emits [`super::Effect::Persist`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PersistedState {
    /// Format of this structure; refused if unknown.
    pub(crate) format: u32,
    pub(crate) cluster: ClusterId,
    /// The cluster's nodes and the compliance database each one archives to (`None`: the
    /// archiver is not configured on that node).
    pub(crate) nodes: BTreeMap<NodeId, Option<ComplianceDb>>,
    pub(crate) peers: BTreeSet<ClusterId>,
    pub(crate) role: Role,
    /// Tombstones of the domains this cluster was master of (newest last, at most
    /// [`MAX_TOMBSTONES`]).
    pub(crate) tombstones: Vec<Tombstone>,
    /// Former slaves removed from the peers without disabling.
    pub(crate) stale_slaves: BTreeMap<ClusterId, StaleSlave>,
    /// The sequence number of the last hello sent (hellos older than the newest one seen are
    /// ignored by the receiver, so a reordered network cannot bring back an old role).
    pub(crate) hello_seq: u64,
    /// Peering tokens this cluster issued (hashes only; format 2 on).
    #[serde(default)]
    pub(crate) peering_tokens: Vec<IssuedToken>,
    /// Peers learnt by a peering token, each with its address and CA (format 2 on). Each is
    /// also in `peers`.
    #[serde(default)]
    pub(crate) learnt_peers: BTreeMap<ClusterId, LearntPeer>,
    /// Key versions this cluster holds that its (new) master's state lacks: it held them under
    /// an older term, and sends them to the master until the master's state has them all
    /// (format 3 on). Never given to the hot path; deleted with the domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) handback: Option<KeyRing>,
    /// On a master (or a master that disabled its domain): key material removed by a
    /// retirement or a disable, kept until its grace period ends (format 5 on). Never given
    /// to the hot path, never in a key download, never sent to a peer; only `key restore`
    /// takes it back. Oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) pending_destruction: Vec<PendingDestruction>,
}

/// Key material the master removed, kept (sealed with the rest of the state) until
/// `destroy_at`, then zeroized for good.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PendingDestruction {
    pub(crate) removed_at: Time,
    pub(crate) destroy_at: Time,
    pub(crate) removed: Removed,
}

/// What a [`PendingDestruction`] holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Removed {
    /// Key versions retired from the domain's ring (this ring holds exactly them).
    Retired { ring: KeyRing },
    /// The whole domain, disabled on this master: its master state as it was.
    Disabled { master: Box<MasterState> },
}

impl Removed {
    /// The domain the removed keys belong to.
    pub(crate) fn domain(&self) -> DomainId {
        match self {
            Removed::Retired { ring } => ring.domain(),
            Removed::Disabled { master } => master.state.domain,
        }
    }

    /// The key versions removed.
    pub(crate) fn ring(&self) -> &KeyRing {
        match self {
            Removed::Retired { ring } => ring,
            Removed::Disabled { master } => &master.state.ring,
        }
    }
}

/// Format 2 added `peering_tokens` and `learnt_peers`; format 3 terms, slots, recovered
/// versions and the handback; format 4 the row identity key in key rings; format 5 the
/// pending destruction area and the retired versions of a domain. An older state loads with
/// none of them (the initial term; the row identity key derived from the first version, which
/// it still holds; nothing pending or retired) and is written back as format 5
/// ([`STATE_FORMATS_READ`]).
pub(crate) const STATE_FORMAT: u32 = 5;
/// The formats this build reads.
pub(crate) const STATE_FORMATS_READ: [u32; 5] = [1, 2, 3, 4, 5];

/// How many tombstones a cluster keeps. Each is a few dozen bytes; keeping the last 64
/// domains covers any realistic history of disable/enable cycles.
pub(crate) const MAX_TOMBSTONES: usize = 64;

impl PersistedState {
    /// The state of a cluster that was never configured: no nodes, no peers, encryption off.
    pub(crate) fn new(cluster: ClusterId) -> Self {
        Self {
            format: STATE_FORMAT,
            cluster,
            nodes: BTreeMap::new(),
            peers: BTreeSet::new(),
            role: Role::Off { left: None },
            tombstones: Vec::new(),
            stale_slaves: BTreeMap::new(),
            hello_seq: 0,
            peering_tokens: Vec::new(),
            learnt_peers: BTreeMap::new(),
            handback: None,
            pending_destruction: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archiver_settings_parse_in_one_place_and_sqlite_is_supported() {
        let p = ComplianceDb::parse_archiver;
        assert_eq!(p("none"), Ok(None));
        assert_eq!(p("sql_server"), Ok(Some(ComplianceDb::SqlServer)));
        assert_eq!(p("postgresql"), Ok(Some(ComplianceDb::PostgreSql)));
        assert_eq!(p("sqlite"), Ok(Some(ComplianceDb::Sqlite)));
        assert_eq!(p("MySQL"), Ok(Some(ComplianceDb::Unsupported("MySQL".into()))));
        assert_eq!(
            p("").unwrap_err().to_string(),
            "archiver is empty; use \"none\" for no archiver"
        );
        assert!("none".parse::<ComplianceDb>().is_err(), "none is not a database");
        assert!(ComplianceDb::Sqlite.is_supported());
        assert_eq!(ComplianceDb::Sqlite.to_string(), "SQLite");
        assert!(!ComplianceDb::Unsupported("MySQL".into()).is_supported());
    }
}
