//! Administrator commands, and the errors that refuse them.
//!
//! Invariant: a command that returns an error has changed nothing (no state, no effect).
//! Every error message says, in the operator's terms, why and what to do instead.

use crate::crypto::password::{Password, PolicyError};
use crate::ids::{ClusterId, DomainId, KeyVersion, Term};

use super::peering::{LearntPeer, PeeringSecret};
use super::state::{ComplianceDb, NodeId, Time};

/// One administrator command, as given on the CLI or the admin API of this cluster.
#[derive(Clone, Debug)]
pub enum Command {
    /// Turn encryption on here: this cluster becomes master of a new domain, with a new key and
    /// this password. With `remote`, every eligible peer is enrolled as a slave.
    Enable {
        password: Password,
        remote: bool,
    },
    /// On the master: enroll every eligible peer (now and later) as a slave.
    EnableRemote,
    /// On the master: stop encrypting on the slaves; they delete their copy of the keys (the
    /// master keeps them, so nothing becomes unreadable).
    DisableRemote,
    /// On the master: new password (the current one is required).
    ChangePassword {
        old: Password,
        new: Password,
    },
    /// On the master: add a key version and make it primary; old versions stay for decryption.
    RotateKey,
    /// On the master: remove every key version below `below` from the domain's key ring
    /// (every cluster drops them at the next sync; the master keeps them for the grace
    /// period). `below` may not be above the primary version, which stays. Refused unless the
    /// current key set was downloaded since its last change, or `i_understand_data_loss`.
    RetireKeys {
        password: Password,
        below: KeyVersion,
        i_understand_data_loss: bool,
    },
    /// Take back what is pending destruction: on the master, the versions retired from its
    /// domain (`password`: the domain's); on a cluster whose own domain was disabled here,
    /// that domain, as master again (`password`: that domain's).
    RestoreKeys {
        password: Password,
    },
    /// On the master: check that a key download is allowed (password) and record it. The
    /// daemon validates the administrator's public key *before* issuing this command and wraps
    /// the ring of [`Outcome::KeysForDownload`].
    DownloadKeys {
        password: Password,
    },
    /// Disable encryption, resolved by the role this cluster has when the command runs (so
    /// no caller has to read the role first and race a change of it):
    /// - on the master, in the whole domain: all key material is deleted everywhere, so this
    ///   is refused unless the current key set was downloaded since its last change, or
    ///   `i_understand_data_loss` is set;
    /// - on a slave, here only: `password` is the master's; the master does not enroll this
    ///   cluster again unless its administrator switches "remote" on again.
    Disable {
        password: Password,
        i_understand_data_loss: bool,
    },
    /// Peer with `peer`, whose intercluster listener is at `address` (`host:port`): its link
    /// comes up ([`super::Effect::LinkUp`]) before the first hello is sent to it.
    AddPeer {
        peer: ClusterId,
        address: String,
    },
    RemovePeer {
        peer: ClusterId,
    },
    AddNode {
        node: NodeId,
        archiver: Option<ComplianceDb>,
    },
    RemoveNode {
        node: NodeId,
    },
    /// Configure (or unconfigure, with `None`) the message archiver on a node.
    SetArchiver {
        node: NodeId,
        archiver: Option<ComplianceDb>,
    },
    /// Issue a peering token for cluster `for_cluster`, usable once until `expires`. Its
    /// secret is the command's `Entropy::key`, returned in [`Outcome::PeeringToken`]; only
    /// its SHA-256 is kept.
    IssuePeeringToken {
        for_cluster: ClusterId,
        expires: Time,
    },
    /// On the issuer: cluster `peer` presents a token's `secret` over the pinned TLS
    /// connection, with its peer listener's `address` and its CA certificate (`ca_pem`, already
    /// checked to be a certificate by the daemon).
    AcceptPeering {
        peer: ClusterId,
        secret: PeeringSecret,
        address: String,
        ca_pem: String,
    },
    /// On the cluster that presented a token: the issuer accepted it; record it as a peer.
    LearnPeer {
        peer: ClusterId,
        learnt: LearntPeer,
    },
    /// Delete the peering with a peer learnt by token (both sides forget each other).
    DeletePeering {
        peer: ClusterId,
    },
    /// On the master: make slave `to` master of this domain under a new term, with every key
    /// version and the password hash; this cluster becomes its slave (`password`: the domain's).
    Handover {
        to: ClusterId,
        password: Password,
    },
    /// On a slave whose master is lost: become master of the domain under a new term
    /// (`password`: the domain's, checked against the hash this slave holds). Refused while the
    /// master was heard from within `peer.master_unreachable_after`, unless `force`.
    Promote {
        password: Password,
        force: bool,
    },
    /// The operator has dealt with the stale data on a removed former slave.
    AcknowledgeStaleData {
        peer: ClusterId,
    },
}

/// What a command that succeeded did, with what its caller needs to answer the administrator
/// (so nobody has to read the status again and race the next change).
#[derive(Debug)]
pub enum Outcome {
    /// The change is made; there is nothing more to say than the command itself.
    Done,
    /// This cluster is master of the new domain.
    Enabled { domain: DomainId },
    /// The new primary key version.
    Rotated { primary: KeyVersion },
    /// Versions `retired` left the ring of `domain`; they are destroyed at `destroy_at`
    /// (`None`: destroyed already, the grace period is zero).
    Retired { domain: DomainId, retired: Vec<KeyVersion>, destroy_at: Option<Time> },
    /// What was pending destruction is back: these versions of `domain` (and, after a
    /// disable, the domain itself with this cluster as its master: `domain_back`).
    Restored { domain: DomainId, versions: Vec<KeyVersion>, domain_back: bool },
    /// Disabled on the master: every cluster of `domain` deletes its keys.
    DisabledDomain { domain: DomainId },
    /// Disabled on this slave only; its copy of the keys is deleted.
    DisabledHere { master: ClusterId },
    /// A key download was authorised: wrap this ring under the administrator's public key.
    KeysForDownload(Box<crate::crypto::keyring::KeyRing>),
    /// A peering token was issued: the daemon writes this secret into the token's text and
    /// never anywhere else.
    PeeringToken { secret: PeeringSecret, expires: Time },
    /// A peering token was presented again by the cluster it peered (same secret, same CA),
    /// whose answer was lost: answered as before, nothing changed.
    PeeringRepeated { since: Time },
    /// Cluster `to` is master from now on, under `term`; this cluster is its slave.
    HandedOver { to: ClusterId, term: Term },
    /// This cluster is master of `domain` under `term`, in place of `replaced` (the master it
    /// followed until now). `forced`: that master had been heard from within the unreachable
    /// threshold.
    Promoted { domain: DomainId, term: Term, forced: bool, replaced: ClusterId },
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("this cluster's software does not support encryption; upgrade it first")]
    NoCapability,
    #[error("encryption is already enabled: this cluster is master of domain {domain}")]
    AlreadyMaster { domain: DomainId },
    #[error(
        "encryption is already enabled: this cluster is a slave of cluster {master} in domain \
         {domain}; one master per peer network"
    )]
    AlreadySlave { master: ClusterId, domain: DomainId },
    #[error(
        "encryption cannot be enabled here: peer cluster {peer} is {role}, and a peer network \
         has one master; enable it on that master with \"enable on remote clusters\" instead"
    )]
    PeerEncrypts { peer: ClusterId, role: String },
    #[error("this cluster is not eligible for encryption: {reason}")]
    NotEligible { reason: String },
    #[error("{what} is only possible on the master: this cluster is a slave of cluster {master}")]
    NotMasterButSlave { what: &'static str, master: ClusterId },
    #[error("{what} is only possible on the master: encryption is not enabled on this cluster")]
    NotMasterButOff { what: &'static str },
    #[error("there is nothing to disable: encryption is not enabled on this cluster")]
    NotEncrypting,
    #[error("the password is wrong")]
    WrongPassword,
    #[error("the master's password is wrong (it is the password set on cluster {master})")]
    WrongMasterPassword { master: ClusterId },
    #[error("the new password is refused: {0}")]
    Policy(#[from] PolicyError),
    #[error("\"enable on remote clusters\" is already {}", if *.0 { "on" } else { "off" })]
    RemoteAlreadySet(bool),
    #[error(
        "the key versions of term {term} are used up (16,383 per term); hand the domain over to \
         another cluster (imcrypt encryption handover), which starts a new term"
    )]
    KeyVersionsExhausted { term: Term },
    #[error(
        "cluster {peer} cannot take over: {why}; a handover goes to a slave that is connected, \
         eligible and in sync with this master"
    )]
    HandoverTargetNotReady { peer: ClusterId, why: String },
    #[error(
        "this cluster holds key versions {versions} that its master, cluster {master}, does not \
         have yet (made under an older term): disabling here would delete the only copy. Wait \
         until the master has them (MAencryptionKeysRecovered appears there), then disable"
    )]
    HandbackPending { master: ClusterId, versions: String },
    #[error(
        "key versions recovered from a former master are not in any key export yet: download \
         the key set first (MAencryptionKeysRecovered), then hand over"
    )]
    RecoveredNotDownloaded,
    #[error("a handover goes to another cluster, not to the master itself")]
    HandoverToSelf,
    #[error(
        "{what} is refused while the domain is being handed over to cluster {to}; it is \
         possible on {to} once it has taken over (or hand over to another cluster)"
    )]
    HandoverInProgress { what: &'static str, to: ClusterId },
    #[error(
        "promotion is only possible on a slave: this cluster is already master of domain {domain}"
    )]
    PromoteOnMaster { domain: DomainId },
    #[error(
        "the master, cluster {master}, was heard from {silent_secs} s ago (less than \
         peer.master_unreachable_after, {after_secs} s): promoting now would make two masters \
         act for one domain. Hand over from the master instead, wait, or repeat with --force \
         if the master is lost for good"
    )]
    MasterStillReachable { master: ClusterId, silent_secs: u64, after_secs: u64 },
    #[error(
        "cluster {0} has no slot in this domain (the master gives one to each peer, up to 255): \
         it cannot become master"
    )]
    NoSlot(ClusterId),
    #[error(
        "this domain has had {} handovers and promotions, the most it can have",
        Term::MAX_ROUND
    )]
    TermsExhausted,
    #[error(
        "disabling deletes every key of domain {domain} on every cluster (the master keeps \
         them only for the grace period, encryption.destruction_grace), and archived \
         messages encrypted with them become unreadable; key versions up to {newest} have not \
         all been downloaded since the last key change. Download the keys first, or repeat \
         the command with --i-understand-data-loss"
    )]
    KeysNotDownloaded { domain: DomainId, newest: KeyVersion },
    #[error(
        "retiring deletes key versions {versions} of domain {domain} on every cluster (the \
         master keeps them only for the grace period), and archived messages encrypted with \
         them become unreadable without a key export that holds them; key versions up to \
         {newest} have not all been downloaded since the last key change. Download the keys \
         first (and keep the export), or repeat the command with --i-understand-data-loss"
    )]
    RetireNotDownloaded { domain: DomainId, versions: String, newest: KeyVersion },
    #[error(
        "cannot retire below key version {below}: the primary version is {primary}, and it \
         must stay (new records are sealed with it, and a key set is never empty); retire \
         below {primary} or lower"
    )]
    RetireAbovePrimary { below: KeyVersion, primary: KeyVersion },
    #[error("there is no key version below {below} to retire (the oldest held is {oldest})")]
    NothingToRetire { below: KeyVersion, oldest: KeyVersion },
    #[error(
        "nothing is pending destruction {where_}: there is nothing to restore (what was \
         removed more than encryption.destruction_grace ago is destroyed for good)"
    )]
    NothingToRestore { where_: String },
    #[error("cluster {0} is already a peer")]
    PeerExists(ClusterId),
    #[error("cluster {0} is not a peer")]
    NoSuchPeer(ClusterId),
    #[error("a cluster cannot be its own peer")]
    PeerIsSelf,
    #[error("peer address {0:?} must be host:port (e.g. imcrypt-b.example.net:7100)")]
    BadPeerAddress(String),
    #[error(
        "a node cannot be added while encryption is enabled on this cluster: disable encryption \
         first, add the node, configure its archiver, then enable encryption again (the new \
         node would otherwise archive messages without the keys)"
    )]
    NodeAddWhileEncrypting,
    #[error(
        "the archiver of node {node} cannot be removed or changed to an unsupported database \
         while encryption is enabled: its messages would be archived unencrypted; disable \
         encryption first"
    )]
    ArchiverChangeWhileEncrypting { node: NodeId },
    #[error("node {0} already exists")]
    NodeExists(NodeId),
    #[error("node {0} does not exist")]
    NoSuchNode(NodeId),
    #[error("there is no stale-data alarm about cluster {0}")]
    NoStaleData(ClusterId),
    #[error("a peering token must expire in the future")]
    TokenExpiryNotFuture,
    #[error(
        "the token's secret matches no peering token issued by this cluster: it was altered, \
         cut short, or was issued by another cluster; ask for a new token"
    )]
    TokenUnknown,
    #[error(
        "the peering token was already used (at {}); a token works once: ask for a new one",
        fmt_time(*at)
    )]
    TokenUsed { at: Time },
    #[error("the peering token expired at {}; ask for a new one", fmt_time(*at))]
    TokenExpired { at: Time },
    #[error(
        "the peering token was made for cluster {made_for}, not for cluster {peer}; ask for a \
         token made for {peer}"
    )]
    TokenForOther { made_for: ClusterId, peer: ClusterId },
    #[error(
        "cluster {0} is named in the configuration file ([[peers]]), which wins over peering \
         tokens; remove it there and reload"
    )]
    PeerFromConfig(ClusterId),
    #[error(
        "cluster {0} was not peered by token; an administrator added it (imcrypt peer remove \
         ends that)"
    )]
    NotPeeredByToken(ClusterId),
    #[error(
        "cluster {0} was peered by token; end that with imcrypt peering delete {0} (which tells \
         it too and forgets its CA), not with peer remove"
    )]
    PeeredByToken(ClusterId),
}

/// A time as an RFC 3339 date, for messages.
pub(super) fn fmt_time(t: Time) -> String {
    humantime::format_rfc3339_seconds(t.system_time()).to_string()
}

/// Why a peer message was refused outright (as opposed to a [`super::RejectReason`], which is
/// a normal protocol answer). The daemon logs it and drops the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PeerError {
    #[error("cluster {0} is not a configured peer of this cluster")]
    UnknownPeer(ClusterId),
    #[error("a message claims to come from this cluster itself")]
    FromSelf,
}
