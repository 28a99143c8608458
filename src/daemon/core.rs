//! The core task: owns the state machine, feeds it one input at a time through [`Core::step`],
//! and carries the effects that follow, in order.
//!
//! Invariants:
//! - a `Persist` is durable before any later effect is carried out, and a request is answered
//!   only after all its effects are (never "done" for a change a restart would not have);
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
use crate::alarm::{AlarmChange, AlarmHistory};
use crate::cluster::{Cluster, Effect, Entropy, LogLevel};
use crate::crypto::keyring::KeyRing;
use crate::ids::{ClusterId, KeyVersion};
use crate::peer::client::{PeerLink, spawn_link};
use crate::peer::server::DeliverError;
use crate::store::{SealedFile, StoreError};

use super::control::Input;
use super::status;
use crate::admin::RequestError;
use crate::clock::now;

/// Why the core stops: its state could not be written.
type Fatal = Arc<StoreError>;

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
    pub(super) tls_client: Arc<rustls::ClientConfig>,
    pub(super) ring: watch::Sender<Option<Arc<KeyRing>>>,
    /// Raises and clears, for the admin API's `GET /v1/alarms`.
    pub(super) alarm_history: AlarmHistory,
    /// The configured alarm sinks; handing them an event never waits.
    pub(super) sinks: Sinks,
    /// When the hot path wears out a key version (`None` without a hot path).
    pub(super) worn_out: Option<watch::Receiver<Option<KeyVersion>>>,
    /// Beats from the loop while it runs (`None`: nobody watches).
    pub(super) heartbeat: Option<Heartbeat>,
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
                tokio::time::Instant::now() + wait
            });
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
                v = next_worn_out(&mut self.worn_out) => Input::WornOut(v),
                () = sleep_until(deadline) => Input::Timeout,
            };
            self.step(input).await?;
        }
    }

    /// Handles one input: the machine decides, then the effects are carried out, then the
    /// request (if any) is answered.
    async fn step(&mut self, input: Input) -> Result<(), Fatal> {
        let t = now();
        match input {
            Input::Command { cmd, reply } => {
                // Commands may run PBKDF2 (about 0.08 s at 600,000 iterations): tell the
                // runtime, so that this worker's other tasks move elsewhere meanwhile.
                let cluster = &mut self.cluster;
                let r = blocking(|| cluster.handle_command(cmd, t, Entropy::from_os()));
                let carried = self.carry().await;
                let _ = reply.send(match &carried {
                    Ok(()) => r.map_err(RequestError::from),
                    Err(e) => Err(RequestError::NotSaved(e.clone())),
                });
                carried
            }
            Input::Peer { from, msg, reply } => {
                let r = self.cluster.handle_peer_message(&from, msg, t);
                let carried = self.carry().await;
                let _ = reply.send(match &carried {
                    Ok(()) => r.map_err(DeliverError::Refused),
                    Err(e) => Err(DeliverError::NotSaved(e.clone())),
                });
                carried
            }
            Input::Status { reply } => {
                let _ = reply.send(status::status(&self.cluster, &self.links, &self.sinks));
                Ok(())
            }
            Input::DbProbe { node, probe } => {
                self.cluster.handle_db_probe(&node, probe, t);
                self.carry().await
            }
            Input::WornOut(v) => {
                if let Some(v) = v {
                    self.cluster.handle_worn_out(v, t);
                }
                self.carry().await
            }
            Input::Timeout => {
                self.cluster.handle_timeout(t, Entropy::from_os());
                self.carry().await
            }
            Input::Reconcile { wanted, reply } => {
                let refused = self.cluster.reconcile(&wanted, t);
                let carried = self.carry().await;
                let _ = reply.send(match &carried {
                    Ok(()) => Ok(refused),
                    Err(e) => Err(RequestError::NotSaved(e.clone())),
                });
                carried
            }
        }
    }

    /// Carries out the pending effects in order; a failed write stops here.
    pub(super) async fn carry(&mut self) -> Result<(), Fatal> {
        while let Some(effect) = self.cluster.poll_effect() {
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
                    let link = spawn_link(
                        peer.clone(),
                        address,
                        self.tls_client.clone(),
                        &mut self.link_tasks,
                    );
                    if let Some(old) = self.links.insert(peer.clone(), link) {
                        old.stop();
                    }
                    let mut allowed = self.allowed.write().expect("peer list lock");
                    if !allowed.contains(&peer) {
                        allowed.push(peer);
                    }
                }
                Effect::LinkDown { peer } => {
                    if let Some(link) = self.links.remove(&peer) {
                        link.stop();
                    }
                    self.allowed.write().expect("peer list lock").retain(|p| p != &peer);
                }
                Effect::Alarm(AlarmChange::Raise(a)) => {
                    let at = now().unix_millis();
                    self.alarm_history.raised(at, &a);
                    let domain = self.cluster.domain_state().map(|d| d.domain);
                    self.sinks.raised(&a, domain, at);
                    tracing::warn!(
                        alarm = a.key.name.as_str(),
                        severity = %a.severity,
                        about = %a.key.about,
                        cause = %a.cause,
                        remedy = %a.remedy,
                        "alarm raised"
                    )
                }
                // Same condition, new text (e.g. the elapsed time of an outage): not a new
                // alarm, so nothing for the history or the log; the sinks keep the new text.
                Effect::Alarm(AlarmChange::Update(a)) => self.sinks.updated(&a),
                Effect::Alarm(AlarmChange::Clear(k)) => {
                    let at = now().unix_millis();
                    self.alarm_history.cleared(at, &k);
                    self.sinks.cleared(&k, at);
                    tracing::info!(alarm = k.name.as_str(), about = %k.about, "alarm cleared")
                }
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

/// Runs CPU-heavy work (PBKDF2) on the current task without stalling the runtime: on a
/// multi-threaded runtime the worker hands its other tasks over first (`block_in_place`); on a
/// current-thread runtime there is no other worker, so it just runs.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}
