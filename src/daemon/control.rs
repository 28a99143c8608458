//! The inputs of the core task, and [`Control`], the way into it for the admin API and tests.
//!
//! Invariant: every input reaches the one core task through one channel, in order; a request
//! is answered only after its effects are carried out (a change is on disk before "done").

use tokio::sync::{mpsc, oneshot};

use crate::admin::{RequestError, api};
use crate::cluster::{Command, DbProbe, NodeId, Outcome, PeerMessage, Refusal, Wanted};
use crate::ids::{ClusterId, KeyVersion};
use crate::peer::server::DeliverError;

/// Everything the core task handles, one at a time in its `step`.
pub(super) enum Input {
    Command {
        cmd: Command,
        /// Who asked, for the audit record.
        by: crate::audit::Request,
        reply: oneshot::Sender<Result<Outcome, RequestError>>,
    },
    Peer {
        from: ClusterId,
        msg: PeerMessage,
        reply: oneshot::Sender<Result<(), DeliverError>>,
    },
    Status {
        reply: oneshot::Sender<api::Status>,
    },
    DbProbe {
        node: NodeId,
        probe: DbProbe,
    },
    /// The hot path sealed 0.9·2^32 records under this key version (`None`: not yet).
    WornOut(Option<KeyVersion>),
    /// `Cluster::poll_timeout` is due.
    Timeout,
    /// The configuration file's nodes and peers changed (a reload): the machine reconciles
    /// with them as at start; answered with the changes it refused.
    Reconcile {
        wanted: Wanted,
        reply: oneshot::Sender<Result<Vec<Refusal>, RequestError>>,
    },
}

/// A cloneable way into a running daemon: what the admin API (and tests) use to run commands
/// and read the status. Every command goes through the one core task, in order.
#[derive(Clone)]
pub struct Control(pub(super) mpsc::Sender<Input>);

impl Control {
    /// Runs `cmd` as the daemon itself (actor `local` in the audit); answered once its
    /// effects are carried out (its state change is on disk).
    pub(crate) async fn command(&self, cmd: Command) -> Result<Outcome, RequestError> {
        self.command_by(cmd, crate::audit::Request::local()).await
    }

    /// Runs `cmd` asked for by `by`: its audit record is written before any of its effects,
    /// or it is refused ([`RequestError::NotAudited`]) and nothing changes.
    pub(crate) async fn command_by(
        &self,
        cmd: Command,
        by: crate::audit::Request,
    ) -> Result<Outcome, RequestError> {
        let (reply, rx) = oneshot::channel();
        self.0.send(Input::Command { cmd, by, reply }).await.map_err(|_| RequestError::Stopped)?;
        rx.await.map_err(|_| RequestError::Stopped)?
    }

    pub async fn status(&self) -> Result<api::Status, RequestError> {
        let (reply, rx) = oneshot::channel();
        self.0.send(Input::Status { reply }).await.map_err(|_| RequestError::Stopped)?;
        rx.await.map_err(|_| RequestError::Stopped)
    }

    /// Peers with `peer` at `address` now: the state machine learns of it, a link dials it,
    /// and the peer listener accepts its certificate. Until restart: the config file decides
    /// the peers at every start.
    pub async fn add_peer(&self, peer: ClusterId, address: String) -> Result<(), RequestError> {
        self.command(Command::AddPeer { peer, address }).await.map(drop)
    }

    /// Ends the peering with `peer` now: its link stops, new connections from it are refused
    /// and its messages are answered with an error.
    pub async fn remove_peer(&self, peer: ClusterId) -> Result<(), RequestError> {
        self.command(Command::RemovePeer { peer }).await.map(drop)
    }

    /// Brings nodes and peers in line with `wanted` (a reloaded configuration file), through
    /// the state machine's `reconcile`, as at start: answered once the changes are on disk,
    /// with those it refused (each with its reason; the others still apply).
    pub(crate) async fn reconcile(&self, wanted: Wanted) -> Result<Vec<Refusal>, RequestError> {
        let (reply, rx) = oneshot::channel();
        self.0.send(Input::Reconcile { wanted, reply }).await.map_err(|_| RequestError::Stopped)?;
        rx.await.map_err(|_| RequestError::Stopped)?
    }

    pub(super) async fn db_probe(&self, node: NodeId, probe: DbProbe) -> Result<(), RequestError> {
        self.0.send(Input::DbProbe { node, probe }).await.map_err(|_| RequestError::Stopped)
    }
}

impl crate::admin::Daemon for Control {
    async fn command(
        &self,
        cmd: Command,
        by: crate::audit::Request,
    ) -> Result<Outcome, RequestError> {
        Control::command_by(self, cmd, by).await
    }

    async fn status(&self) -> Result<api::Status, RequestError> {
        Control::status(self).await
    }
}

/// The peer listener's way into the core.
#[derive(Clone)]
pub(super) struct CoreInbox(pub(super) mpsc::Sender<Input>);

impl crate::peer::server::Inbox for CoreInbox {
    async fn deliver(&self, from: ClusterId, msg: PeerMessage) -> Result<(), DeliverError> {
        let (reply, rx) = oneshot::channel();
        self.0.send(Input::Peer { from, msg, reply }).await.map_err(|_| DeliverError::Stopping)?;
        rx.await.map_err(|_| DeliverError::Stopping)?
    }
}
