//! The service manager's side of `imcrypt serve`: `sd_notify(3)` messages to systemd
//! (`Type=notify` units, dist/systemd/) through the `sd-notify` crate.
//!
//! Invariants:
//! - without `NOTIFY_SOCKET` every call is a no-op: the daemon runs the same by hand, in tests
//!   and in containers;
//! - `READY=1` is sent by the caller only once every listener is bound and the core runs
//!   (after `daemon::start` returned), `STOPPING=1` first thing on shutdown, `RELOADING=1`
//!   then `READY=1` around a reload;
//! - `WATCHDOG=1` comes from the core loop itself (a [`Heartbeat`] it is given), at half the
//!   interval systemd asked for: a core that is stuck stops the pings and systemd restarts the
//!   service. A failed send is logged once and never stops the daemon.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;

use crate::daemon::Heartbeat;

/// Sends state changes to the service manager, if there is one.
#[derive(Debug)]
pub(crate) struct Notifier {
    enabled: bool,
}

/// Whether a failed send was already logged (one line, not one per watchdog ping).
static SEND_FAILED: AtomicBool = AtomicBool::new(false);

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states)
        && !SEND_FAILED.swap(true, Ordering::Relaxed)
    {
        tracing::warn!(error = %e, "cannot notify the service manager (NOTIFY_SOCKET)");
    }
}

impl Notifier {
    /// From the environment systemd sets: enabled when `NOTIFY_SOCKET` is.
    pub(crate) fn from_env() -> Self {
        Self { enabled: std::env::var_os("NOTIFY_SOCKET").is_some() }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.enabled
    }

    /// `READY=1` with a status line: start-up (or a reload) is finished.
    pub(crate) fn ready(&self, status: &str) {
        if self.enabled {
            send(&[NotifyState::Ready, NotifyState::Status(status)]);
        }
    }

    /// `RELOADING=1` (with the `MONOTONIC_USEC` systemd 253 and newer require).
    pub(crate) fn reloading(&self) {
        if !self.enabled {
            return;
        }
        match NotifyState::monotonic_usec_now() {
            Ok(now) => send(&[NotifyState::Reloading, now, NotifyState::Status("reloading")]),
            Err(_) => send(&[NotifyState::Reloading, NotifyState::Status("reloading")]),
        }
    }

    /// `STOPPING=1`: shutdown has begun.
    pub(crate) fn stopping(&self) {
        if self.enabled {
            send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
        }
    }

    /// `STATUS=…`: the one line `systemctl status` shows.
    pub(crate) fn status(&self, status: &str) {
        if self.enabled {
            send(&[NotifyState::Status(status)]);
        }
    }

    /// The core's heartbeat when the unit has `WatchdogSec=` (systemd then sets
    /// `WATCHDOG_USEC`, and `WATCHDOG_PID` if it is meant for this process only).
    pub(crate) fn watchdog(&self) -> Option<Heartbeat> {
        if !self.enabled {
            return None;
        }
        let timeout = sd_notify::watchdog_enabled()?;
        Some(Heartbeat::new(ping_interval(timeout), || send(&[NotifyState::Watchdog])))
    }
}

/// The `STATUS=` line for `systemctl status`: role, domain, peers connected, alarms.
pub(crate) fn status_line(s: &crate::admin::api::Status) -> String {
    use crate::admin::api::Role;
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let mut line = match s.role {
        Role::Off => format!("encryption off ({})", or_dash(s.off_reason.clone())),
        Role::Master => {
            format!("master of domain {}", or_dash(s.domain.as_ref().map(ToString::to_string)))
        }
        Role::Slave => format!(
            "slave of {} in domain {}",
            or_dash(s.master.as_ref().map(ToString::to_string)),
            or_dash(s.domain.as_ref().map(ToString::to_string))
        ),
    };
    let up = s.peers.iter().filter(|p| p.link.connected).count();
    line.push_str(&format!("; {up}/{} peers connected", s.peers.len()));
    if !s.alarms.is_empty() {
        line.push_str(&format!("; {} alarms active", s.alarms.len()));
    }
    line
}

/// Half the watchdog timeout, as sd_watchdog_enabled(3) recommends, so one late ping does not
/// get the service killed; never zero (a zero `WATCHDOG_USEC` would spin the core).
fn ping_interval(timeout: Duration) -> Duration {
    (timeout / 2).max(Duration::from_millis(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_core_pings_at_half_the_watchdog_timeout() {
        assert_eq!(ping_interval(Duration::from_secs(30)), Duration::from_secs(15));
        assert_eq!(ping_interval(Duration::ZERO), Duration::from_millis(10));
    }

    #[test]
    fn without_a_notify_socket_nothing_is_sent_and_there_is_no_watchdog() {
        let n = Notifier { enabled: false };
        n.ready("x");
        n.stopping();
        assert!(n.watchdog().is_none());
    }
}
