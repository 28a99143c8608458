//! Rate limits on password attempts, as pure logic: the caller passes `now` in.
//!
//! Two limits apply to every request that carries a password (enable, change, download,
//! disable):
//!
//! - **per client** (source IP address): after `max_failures` consecutive wrong passwords the
//!   client is locked out for `lockout` (Vault's default is 5 and 15 minutes). A correct
//!   password resets the count. Attempts still in flight count as potential failures, so a
//!   client cannot slip 100 parallel guesses in before the first failure is recorded;
//! - **overall**: at most `attempts_per_minute` password attempts per minute from all clients
//!   together, which bounds the PBKDF2 work an attacker who holds the token can cause.
//!
//! Invariants: [`PasswordLimiter::begin`] decides before any hashing; every `begin` that
//! returned `Ok` is matched by exactly one [`PasswordLimiter::finish`] (the [`Attempt`] guard
//! makes that structural); a refusal always carries a positive `retry_after`.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The limits, from the `[admin]` section of the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) max_failures: u32,
    pub(crate) lockout: Duration,
    pub(crate) attempts_per_minute: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_failures: 5, lockout: Duration::from_secs(15 * 60), attempts_per_minute: 30 }
    }
}

/// Why an attempt is refused before any hashing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    #[error(
        "too many wrong passwords from this client: locked out for {}; try again later",
        humantime::format_duration(Duration::from_secs(retry_after.as_secs().max(1)))
    )]
    LockedOut { retry_after: Duration },
    #[error("too many password attempts on this daemon; try again in a moment")]
    Overall { retry_after: Duration },
}

impl Refused {
    pub(crate) fn retry_after(&self) -> Duration {
        match *self {
            Refused::LockedOut { retry_after } | Refused::Overall { retry_after } => retry_after,
        }
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The password was right.
    Correct,
    /// The password was wrong.
    Wrong,
    /// The password was never checked (the command was refused for another reason first).
    NotChecked,
}

#[derive(Debug, Default)]
struct Client {
    failures: u32,
    in_flight: u32,
    locked_until: Option<Instant>,
}

#[derive(Debug)]
pub(crate) struct PasswordLimiter {
    limits: Limits,
    clients: HashMap<IpAddr, Client>,
    recent: VecDeque<Instant>,
}

const WINDOW: Duration = Duration::from_secs(60);

impl PasswordLimiter {
    pub(crate) fn new(limits: Limits) -> Self {
        Self { limits, clients: HashMap::new(), recent: VecDeque::new() }
    }

    /// Decides whether `client` may try a password now. On `Ok` the attempt is counted (as in
    /// flight for the client, and in the overall window).
    pub(crate) fn begin(&mut self, client: IpAddr, now: Instant) -> Result<(), Refused> {
        while self.recent.front().is_some_and(|t| now.duration_since(*t) >= WINDOW) {
            self.recent.pop_front();
        }
        let c = self.clients.entry(client).or_default();
        if let Some(until) = c.locked_until {
            if until > now {
                return Err(Refused::LockedOut { retry_after: until - now });
            }
            c.locked_until = None;
            c.failures = 0;
        }
        if c.failures + c.in_flight >= self.limits.max_failures {
            // Only attempts in flight can make this true without a lockout: wait for them.
            return Err(Refused::LockedOut { retry_after: Duration::from_secs(1) });
        }
        if self.recent.len() >= self.limits.attempts_per_minute as usize {
            let oldest = *self.recent.front().expect("non-empty");
            let retry_after = (oldest + WINDOW).saturating_duration_since(now);
            return Err(Refused::Overall { retry_after: retry_after.max(Duration::from_secs(1)) });
        }
        c.in_flight += 1;
        self.recent.push_back(now);
        Ok(())
    }

    /// Records how an attempt that `begin` allowed ended. Returns whether this attempt locked
    /// the client out (for the lockout counter of the metrics).
    pub(crate) fn finish(&mut self, client: IpAddr, outcome: Outcome, now: Instant) -> bool {
        let max = self.limits.max_failures;
        let lockout = self.limits.lockout;
        let c = self.clients.entry(client).or_default();
        c.in_flight = c.in_flight.saturating_sub(1);
        let mut locked = false;
        match outcome {
            Outcome::Correct => c.failures = 0,
            Outcome::Wrong => {
                c.failures += 1;
                if c.failures >= max {
                    locked = true;
                    c.locked_until = Some(now + lockout);
                    tracing::warn!(
                        client = %client,
                        failures = c.failures,
                        lockout = %humantime::format_duration(lockout),
                        "admin client locked out after wrong passwords"
                    );
                }
            }
            Outcome::NotChecked => {}
        }
        if c.failures == 0 && c.in_flight == 0 && c.locked_until.is_none() {
            self.clients.remove(&client);
        }
        locked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

    fn limiter() -> PasswordLimiter {
        PasswordLimiter::new(Limits::default())
    }

    #[test]
    fn five_wrong_passwords_lock_the_client_out_for_fifteen_minutes() {
        let mut l = limiter();
        let t = Instant::now();
        for i in 0..5 {
            l.begin(A, t).unwrap_or_else(|e| panic!("attempt {i}: {e}"));
            l.finish(A, Outcome::Wrong, t);
        }
        let e = l.begin(A, t).unwrap_err();
        assert_eq!(e, Refused::LockedOut { retry_after: Duration::from_secs(900) });
        assert!(e.to_string().contains("15m"), "{e}");
        // Another client is not affected; the lockout ends after 15 minutes.
        l.begin(B, t).unwrap();
        l.finish(B, Outcome::Correct, t);
        let later = t + Duration::from_secs(899);
        assert!(matches!(l.begin(A, later), Err(Refused::LockedOut { .. })));
        l.begin(A, t + Duration::from_secs(900)).unwrap();
    }

    #[test]
    fn a_correct_password_resets_the_count() {
        let mut l = limiter();
        let t = Instant::now();
        for _ in 0..4 {
            l.begin(A, t).unwrap();
            l.finish(A, Outcome::Wrong, t);
        }
        l.begin(A, t).unwrap();
        l.finish(A, Outcome::Correct, t);
        for _ in 0..4 {
            l.begin(A, t).unwrap();
            l.finish(A, Outcome::Wrong, t);
        }
        l.begin(A, t).unwrap();
        l.finish(A, Outcome::NotChecked, t);
        assert!(l.begin(A, t).is_ok());
    }

    #[test]
    fn attempts_in_flight_count_as_potential_failures() {
        let mut l = limiter();
        let t = Instant::now();
        for _ in 0..5 {
            l.begin(A, t).unwrap();
        }
        assert!(matches!(l.begin(A, t), Err(Refused::LockedOut { .. })));
        l.finish(A, Outcome::Correct, t);
        l.begin(A, t).unwrap();
    }

    #[test]
    fn overall_rate_is_limited_across_clients() {
        let mut l = PasswordLimiter::new(Limits { attempts_per_minute: 3, ..Limits::default() });
        let t = Instant::now();
        for ip in [A, B, A] {
            l.begin(ip, t).unwrap();
            l.finish(ip, Outcome::Correct, t);
        }
        let e = l.begin(B, t + Duration::from_secs(20)).unwrap_err();
        assert_eq!(e, Refused::Overall { retry_after: Duration::from_secs(40) });
        l.begin(B, t + Duration::from_secs(60)).unwrap();
    }
}
