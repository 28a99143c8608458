//! The wall clock, read in this one place. Everything that needs "now" (the state machine's
//! inputs, key and export timestamps) asks here, so the whole process shares one time base and
//! a test or a simulator knows the one place that is not deterministic.
//!
//! Invariant: the wall clock is read once per process; after that time advances with the
//! monotonic clock only, so it never steps back.

use std::time::{Instant, SystemTime};

use crate::cluster::Time;

/// The time the state machine is given: the wall clock read once at start, advanced by the
/// monotonic clock. A wall clock stepped back (NTP, an operator) would otherwise push every
/// timer of the state machine into the future, silencing this cluster's hellos for as long as
/// the step. Key creation times may drift from the wall clock by what the clock is slewed
/// while the daemon runs, which is seconds at most.
pub(crate) fn now() -> Time {
    static START: std::sync::OnceLock<(u64, Instant)> = std::sync::OnceLock::new();
    let (wall, mono) = *START.get_or_init(|| {
        let ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        (ms.as_millis() as u64, Instant::now())
    });
    Time::from_unix_millis(wall + mono.elapsed().as_millis() as u64)
}
