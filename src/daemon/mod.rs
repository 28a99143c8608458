//! The daemon of one cluster: carries the state machine's effects to the disk, the peers, the
//! alarms, the admin API and the hot path, and shuts down cleanly. It decides nothing: every
//! decision is the state machine's (`cluster`).
//!
//! One task (the core, [`core`]) owns the `cluster::Cluster`. Every input, an admin command,
//! a peer message, a database probe, a worn-out key or a timer, goes through its one `step`,
//! and the effects that follow are carried out in order: a `Persist` is durable (fsynced)
//! before any later effect, so a peer never learns of a state this cluster could lose in a
//! crash. If the state cannot be written the core stops, on its one fatal path, and the whole
//! daemon with it: running on with a state that is not on disk would be worse.
//!
//! Files: [`error`] (what can go wrong), [`control`] (the inputs and the way in), [`start`]
//! (start-up), [`probe`] (the database probe loop), [`core`] (the core loop), [`status`] (the
//! admin status filled from the machine), [`handle`] (the running daemon and its one shutdown
//! mechanism), [`reload`] (a new configuration file applied to the running daemon), [`metrics_listener`]
//! (where the metrics are served, which a reload may change). The time
//! given to the machine is `crate::clock::now`.

mod control;
mod core;
mod error;
mod handle;
mod metrics_listener;
mod probe;
mod reload;
mod start;
mod status;

pub(crate) use control::Control;
pub(crate) use core::Heartbeat;
pub(crate) use error::DaemonError;
pub use handle::DaemonHandle;
pub(crate) use reload::{LogLevelSetter, Reloader};
pub use start::start;
pub(crate) use start::start_with;
