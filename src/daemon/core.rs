//! The core task: owns the state machine, feeds it one input at a time through [`Core::step`],
//! and carries the effects that follow, in order.
//!
//! Invariants:
//! - a `Persist` is durable before any later effect is carried out, and a request is answered
//!   only after all its effects are (never "done" for a change a restart would not have);
//! - the audit records of an input (the command and how it ended, the role, key-ring and
//!   alarm changes and a peer's state accepted or rejected, [`crate::audit::acts`]) are on
//!   disk before any of its effects is carried out; when they cannot be written the machine is
//!   put back as it was before the input ([`Cluster::restore`]), a request is answered
//!   "not audited", a peer's message is refused (its link sends it again), and the machine's
//!   own inputs (timers, probes, worn-out keys) wait [`AUDIT_RETRY`] before they are tried
//!   again; meanwhile `MAencryptionAuditUnavailable` is raised (by the core itself: the
//!   machine's alarms are audited acts too);
//! - the core decides nothing: which links exist, when to rotate, what a disable means are the
//!   machine's effects and outcomes;
//! - a state write that fails ends the core on its one fatal path ([`Core::run`]), which
//!   stops the whole daemon;
//! - the [`Heartbeat`], if any, beats from this loop between inputs (ahead of them, so a busy
//!   core still beats): a core stuck in one input stops beating.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::alarm::sink::Sinks;
use crate::alarm::{Alarm, AlarmChange, AlarmHistory, AlarmName};
use crate::audit::acts::{self, Offered, RoleView};
use crate::audit::{Actor, Audit, AuditError, Record};
use crate::blocking::blocking;
use crate::cluster::{Cluster, Effect, Entropy, LogLevel};
use crate::crypto::keyring::KeyRing;
use crate::ids::{ClusterId, KeyVersion};
use crate::peer::client::{PeerLink, spawn_link};
use crate::peer::server::DeliverError;
use crate::store::{SealedFile, StoreError};

use super::control::Input;
use super::status;
use crate::admin::{RequestError, api};
use crate::clock::now;

/// Why the core stops: its state could not be written.
type Fatal = Arc<StoreError>;

/// How long the machine's own inputs (timers, probes) wait after an audit write failed before
/// they are tried again. Requests and peers' messages are answered at once meanwhile.
const AUDIT_RETRY: Duration = Duration::from_secs(5);

/// How an input's effects went.
enum Carried {
    Done,
    /// Its audit records could not be written: the machine is as it was before the input.
    NotAudited(Arc<AuditError>),
}

/// What the audit of one input needs from before it ran.
struct Before {
    checkpoint: crate::cluster::Checkpoint,
    role: RoleView,
    actor: Actor,
    offered: Option<Offered>,
}

/// Whoever wants to know that the core loop is alive (systemd's watchdog, `crate::systemd`):
/// the core calls `beat` every `every` from its own loop. The core knows nothing else of it.
pub(crate) struct Heartbeat {
    every: Duration,
    beat: Box<dyn Fn() + Send + Sync>,
}

impl Heartbeat {
    /// `every` must not be zero.
    pub(crate) fn new(every: Duration, beat: impl Fn() + Send + Sync + 'static) -> Self {
        assert!(!every.is_zero(), "a heartbeat needs an interval");
        Self { every, beat: Box::new(beat) }
    }
}

pub(super) struct Core {
    pub(super) cluster: Cluster,
    pub(super) state_file: Arc<SealedFile>,
    pub(super) links: BTreeMap<ClusterId, PeerLink>,
    /// The links' tasks: they belong to the core and end with it.
    pub(super) link_tasks: JoinSet<()>,
    /// Whose certificates the peer listener accepts: the peers whose link is up.
    pub(super) allowed: crate::peer::server::AllowedPeers,
    /// The links' TLS: each link trusts its peer's CA only.
    pub(super) tls: crate::peer::tls::PeerTls,
    pub(super) ring: watch::Sender<Option<Arc<KeyRing>>>,
    /// Raises and clears, for the admin API's `GET /v1/alarms`.
    pub(super) alarm_history: AlarmHistory,
    /// The configured alarm sinks; handing them an event never waits.
    pub(super) sinks: Sinks,
    /// When the hot path wears out a key version (`None` without a hot path).
    pub(super) worn_out: Option<watch::Receiver<Option<KeyVersion>>>,
    /// Beats from the loop while it runs (`None`: nobody watches).
    pub(super) heartbeat: Option<Heartbeat>,
    /// The audit trail, shared with the admin API.
    pub(super) audit: Audit,
    /// `MAencryptionAuditUnavailable`, while the last audit write failed.
    pub(super) audit_alarm: Option<Alarm>,
    /// Until when the machine's own inputs wait after a failed audit write.
    pub(super) audit_retry: Option<tokio::time::Instant>,
}

impl Core {
    /// Runs until `shutdown` is cancelled (after the input being handled is finished) or the
    /// state cannot be written, in which case it cancels `shutdown` for every other task.
    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Input>, shutdown: CancellationToken) {
        match self.serve(&mut rx, &shutdown).await {
            Ok(()) => tracing::info!("imcrypt daemon stopping"),
            Err(e) => {
                tracing::error!(error = %e, "cannot write the state; the daemon stops");
                shutdown.cancel();
            }
        }
    }

    async fn serve(
        &mut self,
        rx: &mut mpsc::Receiver<Input>,
        shutdown: &CancellationToken,
    ) -> Result<(), Fatal> {
        if let Some(w) = &mut self.worn_out {
            w.mark_changed(); // a key worn out before the core started counts too
        }
        let heartbeat = self.heartbeat.take();
        let mut beats = heartbeat.as_ref().map(|h| {
            let mut i = tokio::time::interval(h.every);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        loop {
            let deadline = self.cluster.poll_timeout().map(|t| {
                let wait = t.since(now());
                let at = tokio::time::Instant::now() + wait;
                self.audit_retry.map_or(at, |r| r.max(at))
            });
            let audit_waits = self.audit_retry.is_some_and(|r| r > tokio::time::Instant::now());
            let input = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                () = next_beat(&mut beats) => {
                    if let Some(h) = &heartbeat {
                        (h.beat)();
                    }
                    continue;
                }
                i = rx.recv() => match i {
                    Some(i) => i,
                    None => return Ok(()),
                },
                v = next_worn_out(&mut self.worn_out), if !audit_waits => Input::WornOut(v),
                () = sleep_until(deadline) => Input::Timeout,
            };
            self.step(input).await?;
        }
    }

    /// Handles one input: the machine decides, the records of what it decided are written,
    /// then the effects are carried out, then the request (if any) is answered.
    async fn step(&mut self, input: Input) -> Result<(), Fatal> {
        let t = now();
        match input {
            Input::Command { cmd, by, reply } => {
                let before = self.before(by.actor.clone(), None);
                let mut record = acts::command(&by, &cmd, self.cluster.id());
                // Commands may run PBKDF2 (about 0.08 s at 600,000 iterations): tell the
                // runtime, so that this worker's other tasks move elsewhere meanwhile.
                let cluster = &mut self.cluster;
                let r = blocking(|| cluster.handle_command(cmd, t, Entropy::from_os()));
                acts::outcome(&mut record, &r);
                let carried = self.audit_and_carry(Some(before), vec![record]).await;
                let _ = reply.send(match &carried {
                    Ok(Carried::Done) => r.map_err(RequestError::from),
                    Ok(Carried::NotAudited(e)) => Err(RequestError::NotAudited(e.clone())),
                    Err(e) => Err(RequestError::NotSaved(e.clone())),
                });
                carried.map(drop)
            }
            Input::Peer { from, msg, reply } => {
                let actor = Actor::Peer { cluster: from.to_string() };
                let before = self.before(actor, Offered::of(&from, &msg));
                let r = self.cluster.handle_peer_message(&from, msg, t);
                let carried = self.audit_and_carry(Some(before), vec![]).await;
                let _ = reply.send(match &carried {
                    Ok(Carried::Done) => r.map_err(DeliverError::Refused),
                    Ok(Carried::NotAudited(e)) => Err(DeliverError::NotAudited(e.clone())),
                    Err(e) => Err(DeliverError::NotSaved(e.clone())),
                });
                carried.map(drop)
            }
            Input::Status { reply } => {
                let mut s = status::status(&self.cluster, &self.links, &self.sinks);
                s.alarms.extend(self.audit_alarm.clone());
                let _ = reply.send(s);
                Ok(())
            }
            Input::Peerings { reply } => {
                let (peers, tokens) = self.cluster.peerings(t);
                let _ = reply.send(api::PeeringList { peers, tokens });
                Ok(())
            }
            Input::DbProbe { node, probe } => {
                let before = self.before(Actor::Local, None);
                self.cluster.handle_db_probe(&node, probe, t);
                self.audit_and_carry(Some(before), vec![]).await.map(drop)
            }
            Input::WornOut(v) => {
                let before = self.before(Actor::Local, None);
                if let Some(v) = v {
                    self.cluster.handle_worn_out(v, t);
                }
                let carried = self.audit_and_carry(Some(before), vec![]).await?;
                if let (Carried::NotAudited(_), Some(w)) = (carried, &mut self.worn_out) {
                    w.mark_changed(); // handled again once the audit waits no more
                }
                Ok(())
            }
            Input::Timeout => {
                let before = self.before(Actor::Local, None);
                self.cluster.handle_timeout(t, Entropy::from_os());
                self.audit_and_carry(Some(before), vec![]).await.map(drop)
            }
            Input::Reconcile { wanted, reply } => {
                let before = self.before(Actor::Local, None);
                let refused = self.cluster.reconcile(&wanted, t);
                let carried = self.audit_and_carry(Some(before), vec![]).await;
                let _ = reply.send(match &carried {
                    Ok(Carried::Done) => Ok(refused),
                    Ok(Carried::NotAudited(e)) => Err(RequestError::NotAudited(e.clone())),
                    Err(e) => Err(RequestError::NotSaved(e.clone())),
                });
                carried.map(drop)
            }
        }
    }

    fn before(&self, actor: Actor, offered: Option<Offered>) -> Before {
        Before {
            checkpoint: self.cluster.checkpoint(),
            role: RoleView::of(&self.cluster),
            actor,
            offered,
        }
    }

    /// Writes `records` and those of the pending effects, then carries the effects out. When
    /// the records cannot be written, nothing is carried out and the machine goes back to
    /// `before` (at start-up there is no `before`: the caller gives up).
    async fn audit_and_carry(
        &mut self,
        before: Option<Before>,
        mut records: Vec<Record>,
    ) -> Result<Carried, Fatal> {
        let effects: Vec<Effect> = std::iter::from_fn(|| self.cluster.poll_effect()).collect();
        let role = RoleView::of(&self.cluster);
        let (actor, was, offered) = match &before {
            Some(b) => (b.actor.clone(), b.role.clone(), b.offered.as_ref()),
            None => (Actor::Local, role.clone(), None),
        };
        records.extend(acts::effects(&actor, &was, &role, offered, &effects));
        if let Err(e) = self.audit.write_async(records).await {
            if let Some(b) = before {
                self.cluster.restore(b.checkpoint);
            }
            self.audit_failed(&e);
            return Ok(Carried::NotAudited(e));
        }
        self.audit_works();
        for effect in effects {
            self.carry_one(effect).await?;
        }
        Ok(Carried::Done)
    }

    /// An audit write failed: raise `MAencryptionAuditUnavailable` (once) and hold back the
    /// machine's own inputs for a while.
    fn audit_failed(&mut self, e: &AuditError) {
        self.audit_retry = Some(tokio::time::Instant::now() + AUDIT_RETRY);
        tracing::error!(error = %e, "cannot write the audit trail; audited acts are refused");
        if self.audit_alarm.is_some() {
            return;
        }
        let a = Alarm::new(
            AlarmName::AuditUnavailable,
            self.cluster.id().clone(),
            format!("the audit trail cannot be written ({e}); every audited act is refused"),
            "make state_dir/audit.log writable again (disk space, permissions, a file in its \
             way); `imcrypt audit verify --config …` must pass; the alarm clears at the next \
             record written",
        );
        self.alarm_raised(&a);
        self.audit_alarm = Some(a);
    }

    fn audit_works(&mut self) {
        self.audit_retry = None;
        if let Some(a) = self.audit_alarm.take() {
            self.alarm_cleared(&a.key);
        }
    }

    /// An alarm is raised: into the history, the sinks and the log. The machine's alarms and
    /// the core's own (`MAencryptionAuditUnavailable`) go the same way.
    fn alarm_raised(&mut self, a: &Alarm) {
        let at = now().unix_millis();
        self.alarm_history.raised(at, a);
        let domain = self.cluster.domain_state().map(|d| d.domain);
        self.sinks.raised(a, domain, at);
        tracing::warn!(
            alarm = a.key.name.as_str(),
            severity = %a.severity,
            about = %a.key.about,
            cause = %a.cause,
            remedy = %a.remedy,
            "alarm raised"
        )
    }

    fn alarm_cleared(&mut self, k: &crate::alarm::AlarmKey) {
        let at = now().unix_millis();
        self.alarm_history.cleared(at, k);
        self.sinks.cleared(k, at);
        tracing::info!(alarm = k.name.as_str(), about = %k.about, "alarm cleared")
    }

    /// The effects of start-up (the restored state, reconcile with the configuration file):
    /// audited as the daemon's own, then carried out.
    pub(super) async fn carry_start(&mut self) -> Result<(), super::DaemonError> {
        match self.audit_and_carry(None, vec![]).await.map_err(super::DaemonError::NotSaved)? {
            Carried::Done => Ok(()),
            Carried::NotAudited(e) => Err(super::DaemonError::Audit(e)),
        }
    }

    /// Gives the peer TLS the CAs of the peers learnt by token, as the state now holds them
    /// (before a link to one comes up, after one goes down).
    fn trust_learnt_peers(&self) {
        let learnt = &self.cluster.state().learnt_peers;
        self.tls.set_learnt_cas(learnt.iter().map(|(p, l)| (p, l.ca_pem.as_str())));
    }

    /// Carries out one effect; a failed write stops here.
    async fn carry_one(&mut self, effect: Effect) -> Result<(), Fatal> {
        {
            match effect {
                Effect::Persist(state) => {
                    let file = self.state_file.clone();
                    tokio::task::spawn_blocking(move || file.save(&*state))
                        .await
                        .expect("the state writer does not panic")
                        .map_err(Arc::new)?;
                }
                Effect::Send { to, msg } => match self.links.get(&to) {
                    Some(link) => link.send(msg),
                    None => {
                        tracing::warn!(peer = %to, "no address configured for peer; message not sent")
                    }
                },
                Effect::LinkUp { peer, address } => {
                    self.trust_learnt_peers();
                    let tls = self.tls.clone();
                    let link = spawn_link(peer.clone(), address, tls, &mut self.link_tasks);
                    if let Some(old) = self.links.insert(peer.clone(), link) {
                        old.stop();
                    }
                    let mut allowed = self.allowed.write().expect("peer list lock");
                    if !allowed.contains(&peer) {
                        allowed.push(peer);
                    }
                }
                Effect::RetryLink { peer } => {
                    if let Some(link) = self.links.get(&peer) {
                        link.retry_now();
                    }
                }
                Effect::LinkDown { peer } => {
                    if let Some(link) = self.links.remove(&peer) {
                        link.stop();
                    }
                    self.allowed.write().expect("peer list lock").retain(|p| p != &peer);
                    self.trust_learnt_peers();
                }
                Effect::Alarm(AlarmChange::Raise(a)) => self.alarm_raised(&a),
                // Same condition, new text (e.g. the elapsed time of an outage): not a new
                // alarm, so nothing for the history or the log; the sinks keep the new text.
                Effect::Alarm(AlarmChange::Update(a)) => self.sinks.updated(&a),
                Effect::Alarm(AlarmChange::Clear(k)) => self.alarm_cleared(&k),
                Effect::Log(line) => match line.level {
                    LogLevel::Info => tracing::info!("{}", line.text),
                    LogLevel::Warn => tracing::warn!("{}", line.text),
                },
                Effect::KeyRingChanged(ring) => {
                    self.ring.send_replace(ring.map(|r| Arc::new(*r)));
                }
            }
        }
        Ok(())
    }
}

/// The next worn-out report of the hot path; never resolves without a hot path.
async fn next_worn_out(rx: &mut Option<watch::Receiver<Option<KeyVersion>>>) -> Option<KeyVersion> {
    if let Some(r) = rx {
        if r.changed().await.is_ok() {
            return *r.borrow_and_update();
        }
        *rx = None; // the hot path has stopped
    }
    std::future::pending().await
}

/// The next tick of the heartbeat; never resolves without one.
async fn next_beat(beats: &mut Option<tokio::time::Interval>) {
    match beats {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
