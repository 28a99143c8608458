//! The time given to the state machine.

use std::time::{Instant, SystemTime};

use crate::cluster::Time;

/// The time given to the state machine: the wall clock read once at start, advanced by the
/// monotonic clock. A wall clock stepped back (NTP, an operator) would otherwise push every
/// timer of the state machine into the future, silencing this cluster's hellos for as long as
/// the step. Key creation times may drift from the wall clock by what the clock is slewed
/// while the daemon runs, which is seconds at most.
pub fn now() -> Time {
    static START: std::sync::OnceLock<(u64, Instant)> = std::sync::OnceLock::new();
    let (wall, mono) = *START.get_or_init(|| {
        let ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        (ms.as_millis() as u64, Instant::now())
    });
    Time::from_unix_millis(wall + mono.elapsed().as_millis() as u64)
}
