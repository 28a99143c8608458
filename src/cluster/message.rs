//! Messages between the daemons of peered clusters (JSON over mutually authenticated TLS; the
//! sender's identity is the name in its certificate and is passed beside the message, never
//! read from it).
//!
//! Invariants: every type refuses unknown fields; only [`PeerMessage::State`],
//! [`PeerMessage::Handover`] and [`PeerMessage::Handback`] carry key material. A master sends
//! its state only to a peer whose last hello shows it in this domain under this or an older
//! term, or as an off, capable, eligible cluster that did not opt out of the domain; a handover
//! only to its own slave; a handback only to its own master, of the same domain.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::state::{Capabilities, DomainState, Tombstone};
use crate::crypto::keyring::KeyRing;
use crate::ids::{ClusterId, DomainId, Epoch, KeyVersion, Term};

/// One message from a peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum PeerMessage {
    /// Who I am and what I hold. Sent when a peer is added, whenever the role or epoch
    /// changes, and every hello interval. Carries no key material.
    Hello(Hello),
    /// The master's full domain state (key ring included) for a slave or a cluster it enrolls.
    State(Box<DomainState>),
    /// The master's instruction to delete all encryption data of a domain.
    Leave(Tombstone),
    /// The receiver refused a `State` (or its hello contradicts it); the master raises
    /// `MAencryptionSyncRejected`.
    Reject(Rejection),
    /// The sender deleted its peering with the receiver (a peering learnt by token): the
    /// receiver forgets the sender too. Sent last on the link, before it goes down.
    Unpeer,
    /// From the master to one of its slaves: the domain's state, naming the receiver as master
    /// under a new term (`imcrypt encryption handover`). The sender is already its slave; it
    /// sends this again as long as the receiver's hellos show it has not taken over.
    Handover(Box<DomainState>),
    /// From a slave to its master: key versions of this domain the slave holds and the master's
    /// state lacks (made by a former master under an older term). The master adds them.
    Handback(Box<KeyRing>),
}

impl PeerMessage {
    #[cfg(test)]
    /// True for the only message kind that carries key material.
    pub(crate) fn carries_keys(&self) -> bool {
        matches!(self, PeerMessage::State(_) | PeerMessage::Handover(_) | PeerMessage::Handback(_))
    }
}

/// The hello of one cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Hello {
    /// Grows with every hello the sender sends; a receiver ignores a hello not newer than the
    /// last one it accepted from that sender (reordering cannot bring back an old role).
    pub(crate) seq: u64,
    /// The sender has no hello from the receiver (just added, or just restarted): answer with
    /// a hello at once instead of waiting for the next interval.
    pub(crate) want_reply: bool,
    pub(crate) capabilities: Capabilities,
    pub(crate) eligibility: Eligibility,
    pub(crate) role: Announced,
    /// The sender sealed 0.9·2^32 records under this (its primary) key version: AES-GCM with
    /// random nonces allows 2^32 per key, so its master should rotate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) rotation_needed: Option<KeyVersion>,
}

/// Whether a cluster can encrypt its archive: the archiver must run on every node with a
/// supported compliance database.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Eligibility {
    Eligible,
    /// Why not, in the operator's terms (e.g. "node n2 has no archiver database").
    NotEligible {
        reason: String,
    },
}

impl Eligibility {
    pub(crate) fn is_eligible(&self) -> bool {
        matches!(self, Eligibility::Eligible)
    }
}

/// The role as announced in a hello (no key material).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Announced {
    Off {
        /// The last domain this cluster left and why, if any.
        left: Option<Tombstone>,
    },
    Master {
        domain: DomainId,
        epoch: Epoch,
        #[serde(default, skip_serializing_if = "Term::is_initial")]
        term: Term,
    },
    Slave {
        domain: DomainId,
        master: ClusterId,
        epoch: Epoch,
        #[serde(default, skip_serializing_if = "Term::is_initial")]
        term: Term,
    },
}

impl Announced {
    /// The domain this role encrypts for, if any.
    pub(crate) fn domain(&self) -> Option<DomainId> {
        match self {
            Announced::Off { .. } => None,
            Announced::Master { domain, .. } | Announced::Slave { domain, .. } => Some(*domain),
        }
    }

    /// The term of the state it holds, if it encrypts.
    pub(crate) fn term(&self) -> Option<Term> {
        match self {
            Announced::Off { .. } => None,
            Announced::Master { term, .. } | Announced::Slave { term, .. } => Some(*term),
        }
    }

    /// The master of the state it holds, if it encrypts: `by` itself (the cluster announcing
    /// this role) when it is master.
    pub(crate) fn master<'a>(&'a self, by: &'a ClusterId) -> Option<&'a ClusterId> {
        match self {
            Announced::Off { .. } => None,
            Announced::Master { .. } => Some(by),
            Announced::Slave { master, .. } => Some(master),
        }
    }
}

impl fmt::Display for Announced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Announced::Off { .. } => f.write_str("not encrypting"),
            Announced::Master { domain, term, .. } => {
                write!(f, "master of domain {domain} (term {term})")
            }
            Announced::Slave { domain, master, term, .. } => {
                write!(f, "a slave of cluster {master} in domain {domain} (term {term})")
            }
        }
    }
}

/// Why a cluster refused a domain state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Rejection {
    pub(crate) domain: DomainId,
    /// The epoch of the refused state.
    pub(crate) epoch: Epoch,
    pub(crate) reason: RejectReason,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum RejectReason {
    #[error("it is itself master of domain {domain}")]
    IsMaster { domain: DomainId },
    #[error("it is a slave of cluster {master} in domain {domain}")]
    SlaveOfOther { master: ClusterId, domain: DomainId },
    #[error("its software does not support encryption")]
    NoCapability,
    #[error("it is not eligible: {reason}")]
    NotEligible { reason: String },
    #[error("its administrator disabled encryption there (at epoch {at})")]
    OptedOut { at: Epoch },
    #[error("it already left this domain (at epoch {at})")]
    AlreadyLeft { at: Epoch },
    #[error("it holds epoch {held} of this domain, newer than the epoch offered (a rollback)")]
    Rollback { held: Epoch },
    #[error("it holds a different state under the same epoch {held} (a fork)")]
    Fork { held: Epoch },
    #[error("the state names cluster {claimed} as master, not the sender")]
    WrongMaster { claimed: ClusterId },
    #[error(
        "it holds this domain under term {held}, newer than the state's term (the sender's \
         mastership was taken over)"
    )]
    Fenced { held: Term },
    #[error("the state claims this domain under a newer term but shares none of its keys")]
    NotOfDomain,
}
