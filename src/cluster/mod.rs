//! The cluster state machine: every rule of the product manual about roles, domains, epochs,
//! eligibility and conflicts, as a pure core with no I/O (the style of quinn-proto and rustls).
//!
//! Inputs go in through the `handle_*` methods, each with the current [`Time`] passed in:
//! [`Cluster::handle_command`] (an administrator's command), [`Cluster::handle_peer_message`],
//! [`Cluster::handle_timeout`] (when [`Cluster::poll_timeout`] says), [`Cluster::handle_db_probe`]
//! (what the daemon's probe found in a node's compliance database),
//! [`Cluster::handle_worn_out`] (the hot path used a key version up to 0.9·2^32), and
//! [`Cluster::reconcile`] (the configuration file, at start). Random bytes come in as an
//! [`Entropy`] argument. Outputs come out of [`Cluster::poll_effect`]: messages to send, state
//! to persist, peer links to bring up or down, alarms to raise or clear, log lines and key-ring
//! changes for the hot path. The machine decides everything (when to rotate, which links
//! exist, which disable a command means); the daemon only carries effects.
//! The daemon applies effects **in order**, and a [`Effect::Persist`] must be durable before
//! the effects after it are carried out (so a slave never holds an epoch its master lost).
//!
//! Invariants (each is asserted by the simulator in `sim`, a test-only module, over random
//! networks):
//! 1. a cluster holds the key material of at most one domain (besides its pending
//!    destruction area, which nothing but `key restore` uses; see `lifecycle`);
//! 2. a slave's epoch for its domain never decreases (no rollback, no replay);
//! 3. once the network is quiet, every slave whose master is its peer holds exactly the
//!    master's domain state (key ring and settings);
//! 4. `MAencryptionMultiMaster` is active on a cluster exactly where one of its peerings joins
//!    two domains (two masters, a master and another master's slave, slaves of two masters);
//! 5. key material is only ever addressed to this domain's slaves or to clusters that, by
//!    their last hello, are off and may be enrolled; never to a cluster known to be in another
//!    domain;
//! 6. one condition (alarm name + the peer it is about) is one alarm: raised once, updated in
//!    place, cleared once; and a fault-free run (commands of normal operation, peers added,
//!    every link delivering in order) raises no alarm at all.
//!
//! Errors change nothing: a refused command leaves state and effects untouched.

mod command;
mod dbprobe;
mod failover;
mod lifecycle;
mod machine;
mod message;
mod peering;
mod reconcile;
mod rules;
mod state;

#[cfg(test)]
pub(crate) mod sim;

#[cfg(test)]
mod tests;

pub(crate) use command::PeerError;
pub use command::{Command, CommandError, Outcome};
pub(crate) use dbprobe::DbProbe;
pub(crate) use machine::{Checkpoint, Cluster, PeerRelation, StateError, is_host_port};
pub(crate) use message::{Announced, PeerMessage};
pub use peering::{LearntPeer, PeeringSecret, PeeringView, PendingTokenView};
pub(crate) use reconcile::{Refusal, Wanted};
pub(crate) use state::{
    Capabilities, ClusterConfig, Entropy, NodeId, PersistedState, Removed, Role,
};
pub use state::{ComplianceDb, Time};

use crate::alarm::AlarmChange;
use crate::crypto::keyring::KeyRing;
use crate::ids::ClusterId;

/// The exact log line written when a cluster starts encrypting (operators grep for it).
const LOG_ENCRYPTION_ENABLED: &str = "Encryption enabled";
/// The exact log line written when a cluster stops encrypting.
const LOG_ENCRYPTION_DISABLED: &str = "Encryption disabled";

/// Something the daemon must do on behalf of the state machine.
#[derive(Clone, Debug)]
pub(crate) enum Effect {
    /// Send `msg` to peer `to` (best effort: the protocol tolerates loss, duplicates, reorder).
    Send {
        to: ClusterId,
        msg: PeerMessage,
    },
    /// Seal and write this state crash-safely before carrying out the next effect.
    Persist(Box<PersistedState>),
    /// A raise, an in-place update or a clear, exactly as the machine's [`AlarmRegistry`]
    /// produced it: the only way alarms leave the machine, so one condition is raised once
    /// and cleared once however often the machine re-derives its alarm set.
    ///
    /// [`AlarmRegistry`]: crate::alarm::AlarmRegistry
    Alarm(AlarmChange),
    Log(LogLine),
    /// The key ring the hot path must use from now on (`None`: encryption is off here).
    KeyRingChanged(Option<Box<KeyRing>>),
    /// Bring up the transport link to `peer` at `address` (replacing any link it had), and
    /// accept its certificate. Always carried before any `Send` to that peer.
    LinkUp {
        peer: ClusterId,
        address: String,
    },
    /// Stop the link to `peer` and refuse its connections from now on.
    LinkDown {
        peer: ClusterId,
    },
    /// `peer` was heard from after a silence longer than the hello interval (or for the first
    /// time since start): it is reachable, so a link to it that waits out a reconnect backoff
    /// tries again at once. Without it, a peer that comes back (an old master restarted, a
    /// partition healed) waits up to the link's longest backoff to hear from this cluster,
    /// and an old master that much longer to step down. Never needed for correctness: the
    /// link retries by itself; it only makes the retry prompt.
    RetryLink {
        peer: ClusterId,
    },
}

/// How important a log line is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LogLevel {
    Info,
    Warn,
}

/// One line for the operator's log. Never contains key material or passwords.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LogLine {
    pub(crate) level: LogLevel,
    pub(crate) text: String,
}
