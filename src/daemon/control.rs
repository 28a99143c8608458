//! The inputs of the core task, and [`Control`], the way into it for the admin API and tests.
//!
//! Invariant: every input reaches the one core task through one channel, in order; a request
//! is answered only after its effects are carried out (a change is on disk before "done").

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::admin::{RequestError, api};
use crate::cluster::LearntPeer;
use crate::cluster::{Command, DbProbe, NodeId, Outcome, PeerMessage, Refusal, Wanted};
use crate::ids::{ClusterId, KeyVersion};
use crate::peer::establish::{EstablishAnswer, EstablishRequest, Peering, PeeringError};
use crate::peer::server::{DeliverError, EstablishError};
use crate::peer::token::Token;

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
    /// `GET /v1/peering`: the peers and the usable peering tokens.
    Peerings {
        reply: oneshot::Sender<api::PeeringList>,
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
pub struct Control(pub(super) mpsc::Sender<Input>, pub(super) Arc<Peering>);

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

    /// Issues a peering token for `for_cluster`, valid for `valid_for` from now; returns its
    /// text (shown once: only the SHA-256 of its secret is kept) and its expiry.
    pub async fn peering_token(
        &self,
        for_cluster: ClusterId,
        valid_for: Duration,
        by: crate::audit::Request,
    ) -> Result<api::PeeringToken, PeeringError> {
        self.1.own()?; // before anything is recorded: a token nobody can use is not made
        let expires = crate::clock::now().after(valid_for);
        let cmd = Command::IssuePeeringToken { for_cluster: for_cluster.clone(), expires };
        match self.command_by(cmd, by).await? {
            Outcome::PeeringToken { secret, expires } => {
                let token =
                    self.1.token_text(for_cluster.clone(), expires.unix_millis(), secret)?;
                Ok(api::PeeringToken {
                    token,
                    for_cluster: for_cluster.to_string(),
                    expires_unix_ms: expires.unix_millis(),
                })
            }
            other => unreachable!("a token command ends in a token, not {other:?}"),
        }
    }

    /// Presents `token` to its issuer, and records the issuer as a peer once it accepted.
    /// Returns the issuer's cluster id.
    pub async fn establish_peering(
        &self,
        token: &str,
        by: crate::audit::Request,
    ) -> Result<ClusterId, PeeringError> {
        let token = Token::parse(token)?;
        let issuer = token.issuer.clone();
        if issuer == self.1.me {
            return Err(PeeringError::OwnToken(token.for_cluster.clone()));
        }
        if self.status().await?.peers.iter().any(|p| p.id == issuer) {
            return Err(PeeringError::AlreadyPeer(issuer));
        }
        let (address, answer) = self.1.present(&token).await?;
        let learnt = LearntPeer { address, ca_pem: answer.ca_pem, since: crate::clock::now() };
        self.command_by(Command::LearnPeer { peer: issuer.clone(), learnt }, by).await?;
        Ok(issuer)
    }

    /// The peers (and where each came from) and the peering tokens still usable.
    pub async fn peerings(&self) -> Result<api::PeeringList, RequestError> {
        let (reply, rx) = oneshot::channel();
        self.0.send(Input::Peerings { reply }).await.map_err(|_| RequestError::Stopped)?;
        rx.await.map_err(|_| RequestError::Stopped)
    }

    /// Deletes the peering with `peer` (learnt by token); it learns of it too.
    pub async fn delete_peering(
        &self,
        peer: ClusterId,
        by: crate::audit::Request,
    ) -> Result<(), RequestError> {
        self.command_by(Command::DeletePeering { peer }, by).await.map(drop)
    }

    pub(super) async fn db_probe(&self, node: NodeId, probe: DbProbe) -> Result<(), RequestError> {
        self.0.send(Input::DbProbe { node, probe }).await.map_err(|_| RequestError::Stopped)
    }
}

impl crate::admin::Daemon for Control {
    async fn peering_token(
        &self,
        for_cluster: ClusterId,
        valid_for: Duration,
        by: crate::audit::Request,
    ) -> Result<api::PeeringToken, PeeringError> {
        Control::peering_token(self, for_cluster, valid_for, by).await
    }

    async fn establish_peering(
        &self,
        token: &str,
        by: crate::audit::Request,
    ) -> Result<ClusterId, PeeringError> {
        Control::establish_peering(self, token, by).await
    }

    async fn peerings(&self) -> Result<api::PeeringList, RequestError> {
        Control::peerings(self).await
    }

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
pub(super) struct CoreInbox(pub(super) mpsc::Sender<Input>, pub(super) Arc<Peering>);

impl crate::peer::server::Inbox for CoreInbox {
    async fn deliver(&self, from: ClusterId, msg: PeerMessage) -> Result<(), DeliverError> {
        let (reply, rx) = oneshot::channel();
        self.0.send(Input::Peer { from, msg, reply }).await.map_err(|_| DeliverError::Stopping)?;
        rx.await.map_err(|_| DeliverError::Stopping)?
    }

    async fn establish(
        &self,
        req: EstablishRequest,
        source: SocketAddr,
    ) -> Result<EstablishAnswer, EstablishError> {
        // Malformed requests are answered before the budget and the audit trail: they cost
        // neither, and no text of the client's choosing is kept.
        let secret = (req.secret())
            .ok_or_else(|| EstablishError::Bad("the secret is not 32 bytes of base64url".into()))?;
        let (_, certs) =
            crate::pem_files::ca_roots_from_pem(&req.ca_pem).map_err(EstablishError::Bad)?;
        if certs.len() != 1 {
            return Err(EstablishError::Bad("give exactly one CA certificate".into()));
        }
        if !crate::cluster::is_host_port(&req.address) {
            return Err(EstablishError::Bad(
                "address must be the host:port of the presenting cluster's peer listener (at \
                 most 261 bytes)"
                    .into(),
            ));
        }
        self.1.take_attempt(Instant::now())?;
        let own = self.1.tls.own_ca().cloned().ok_or_else(|| {
            EstablishError::Refused(
                "this cluster cannot take part in peering by token: its peer.ca holds no CA \
                 that issued its certificate"
                    .into(),
            )
        })?;
        // The presenting cluster is named by its own claim here (it has no certificate yet):
        // the token must name it, and from now on its certificates must name it too.
        let by = crate::audit::Request {
            actor: crate::audit::Actor::Peer { cluster: req.cluster.to_string() },
            source: Some(source.to_string()),
            details: crate::audit::Details::new(),
        };
        let peer = req.cluster.clone();
        let cmd = Command::AcceptPeering { peer, secret, address: req.address, ca_pem: req.ca_pem };
        let (reply, rx) = oneshot::channel();
        let stopping = || EstablishError::Unavailable("the daemon is stopping".into());
        self.0.send(Input::Command { cmd, by, reply }).await.map_err(|_| stopping())?;
        match rx.await.map_err(|_| stopping())? {
            Ok(_) => Ok(EstablishAnswer { cluster: self.1.me.clone(), ca_pem: own.pem }),
            Err(RequestError::Refused(e)) => Err(EstablishError::Refused(e.to_string())),
            Err(e) => Err(EstablishError::Unavailable(e.to_string())),
        }
    }
}
