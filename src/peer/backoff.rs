//! The wait between a link's attempts to reach its peer: exponential, from a minimum doubling
//! up to a maximum, so that a peer that is down for long costs little, and back to the
//! minimum when the peer shows it is reachable again (a delivery went through, or the state
//! machine heard from the peer after a silence: `Effect::RetryLink`).
//!
//! Invariant: every wait lies within `[min, max]`, and the first wait after a reset is `min`.
//! Pure: no clock, no sleeping; the link's task sleeps the waits it is given.

use std::time::Duration;

/// The backoff of one link. See the [module documentation](self).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A backoff whose first wait is `min` (raised to `max` if `min` is above it).
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        let min = min.min(max);
        Self { min, max, next: min }
    }

    /// The wait before the next attempt; the one after it is twice as long, up to the maximum.
    pub(crate) fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }

    /// The peer is reachable: the next wait is the minimum again.
    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn waits_double_from_the_minimum_and_stay_at_the_maximum() {
        let mut b = Backoff::new(ms(50), ms(5000));
        let waits: Vec<u64> = (0..10).map(|_| b.next_wait().as_millis() as u64).collect();
        assert_eq!(waits, [50, 100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
    }

    #[test]
    fn a_reset_makes_the_next_wait_the_minimum_however_long_the_peer_was_down() {
        let mut b = Backoff::new(ms(50), ms(5000));
        for _ in 0..20 {
            b.next_wait();
        }
        b.reset();
        assert_eq!(b.next_wait(), ms(50));
        assert_eq!(b.next_wait(), ms(100), "and doubles again from there");
    }

    #[test]
    fn a_minimum_above_the_maximum_waits_the_maximum() {
        let mut b = Backoff::new(ms(900), ms(100));
        assert_eq!((b.next_wait(), b.next_wait()), (ms(100), ms(100)));
    }
}
