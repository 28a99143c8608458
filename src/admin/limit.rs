//! Rate limits on password attempts, as pure logic: the caller passes `now` in.
//!
//! Every request that carries a password (enable, change, download, disable) is made by a
//! [`Credential`] (a named administrator's token, identified by a hash of its stored hash)
//! and, within that credential, by a [`Client`]: either a client that has shown the right
//! password before and carries the daemon's proof of it ([`Client::Proven`], see
//! `admin::proof`), or any other client ([`Client::Unproven`], all of them together). Source
//! addresses play no part: every local user shares 127.0.0.1, and anyone can rotate through
//! 127.x.y.z.
//!
//! - **lockout** per (credential, client): after `max_failures` consecutive wrong passwords the
//!   client is locked out for `lockout` (Vault's default is 5 and 15 minutes). A correct
//!   password resets the count. Attempts still in flight count as potential failures, so a
//!   client cannot slip 100 parallel guesses in before the first failure is recorded. All
//!   unproven clients of a credential share one count, so guessing stays bounded at
//!   `max_failures` per `lockout` whatever the addresses; a proven client (the administrator
//!   whose CLI kept its proof) has its own count and so is never locked out by someone else's
//!   guesses;
//! - **overall**: at most `attempts_per_minute` password attempts per minute from all
//!   credentials together, which bounds the PBKDF2 work; and no credential takes more than
//!   half of that budget ([`Limits::share`]), so a flood with one credential always leaves room
//!   for another.
//!
//! Invariants: [`PasswordLimiter::begin`] decides before any hashing; every `begin` that
//! returned `Ok` is matched by exactly one [`PasswordLimiter::finish`] (the `Attempt` guard of
//! the admin API makes that structural); a refusal always carries a positive `retry_after`; a
//! refusal counts nothing.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// Who made a request, for the limits: derived from the stored hash of the administrator's
/// token (never the token itself), so each named administrator is a credential of their own.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Credential([u8; 16]);

impl Credential {
    /// The credential of an admin token: the first 16 bytes of SHA-256 over a domain label
    /// and the token's stored SHA-256 (`tokens`).
    pub(crate) fn of_token_hash(token_sha256: &[u8; 32]) -> Self {
        let mut h = Sha256::new();
        h.update(b"imcrypt admin credential v2\0");
        h.update(token_sha256);
        let d = h.finalize();
        Self(d[..16].try_into().expect("16 of 32 bytes"))
    }

    /// The bytes a client proof is bound to.
    pub(crate) fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credential({})", hex::encode(&self.0[..4]))
    }
}

/// A client that once showed the right password, named by the random id of its proof.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) struct ClientId(pub(crate) [u8; 16]);

/// Which client of a credential made an attempt.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) enum Client {
    /// Carries a valid proof that it gave the right password before.
    Proven(ClientId),
    /// Any other client; all of them share one count per credential.
    Unproven,
}

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

impl Limits {
    /// The most attempts one credential may have in the window: half the overall budget (at
    /// least 1), so that one credential's flood leaves the other half to the rest.
    pub(crate) fn share(&self) -> usize {
        (self.attempts_per_minute as usize / 2).max(1)
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
    #[error(
        "too many wrong passwords from clients that have not given the right password before: \
         they are locked out for {}; a client that has (the CLI keeps the daemon's proof of it \
         in its proof file) can still try",
        humantime::format_duration(Duration::from_secs(retry_after.as_secs().max(1)))
    )]
    UnprovenLockedOut { retry_after: Duration },
    #[error("too many password attempts on this daemon; try again in a moment")]
    Overall { retry_after: Duration },
    #[error(
        "too many password attempts with this admin credential (at most half of the daemon's \
         budget per minute); try again in a moment"
    )]
    CredentialShare { retry_after: Duration },
}

impl Refused {
    pub(crate) fn retry_after(&self) -> Duration {
        match *self {
            Refused::LockedOut { retry_after }
            | Refused::UnprovenLockedOut { retry_after }
            | Refused::Overall { retry_after }
            | Refused::CredentialShare { retry_after } => retry_after,
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

/// The consecutive failures of one (credential, client).
#[derive(Debug, Default)]
struct Count {
    failures: u32,
    in_flight: u32,
    locked_until: Option<Instant>,
}

#[derive(Debug)]
pub(crate) struct PasswordLimiter {
    limits: Limits,
    counts: HashMap<(Credential, Client), Count>,
    /// Attempts of the last minute, oldest first, with the credential that made each.
    recent: VecDeque<(Instant, Credential)>,
}

const WINDOW: Duration = Duration::from_secs(60);

impl PasswordLimiter {
    pub(crate) fn new(limits: Limits) -> Self {
        Self { limits, counts: HashMap::new(), recent: VecDeque::new() }
    }

    /// Decides whether `client` of `cred` may try a password now. On `Ok` the attempt is
    /// counted (as in flight for the client, and in the overall window); a refusal counts
    /// nothing.
    pub(crate) fn begin(
        &mut self,
        cred: Credential,
        client: Client,
        now: Instant,
    ) -> Result<(), Refused> {
        while self.recent.front().is_some_and(|(t, _)| now.duration_since(*t) >= WINDOW) {
            self.recent.pop_front();
        }
        let locked_out = |retry_after| match client {
            Client::Proven(_) => Refused::LockedOut { retry_after },
            Client::Unproven => Refused::UnprovenLockedOut { retry_after },
        };
        if let Some(c) = self.counts.get_mut(&(cred, client)) {
            if let Some(until) = c.locked_until {
                if until > now {
                    return Err(locked_out(until - now));
                }
                c.locked_until = None;
                c.failures = 0;
            }
            if c.failures + c.in_flight >= self.limits.max_failures {
                // Only attempts in flight can make this true without a lockout: wait for them.
                return Err(locked_out(Duration::from_secs(1)));
            }
        }
        let retry_after = |oldest: Instant| {
            (oldest + WINDOW).saturating_duration_since(now).max(Duration::from_secs(1))
        };
        if self.recent.len() >= self.limits.attempts_per_minute as usize {
            let (oldest, _) = *self.recent.front().expect("non-empty");
            return Err(Refused::Overall { retry_after: retry_after(oldest) });
        }
        let mine = self.recent.iter().filter(|(_, k)| *k == cred);
        if let Some((oldest, _)) = mine.clone().next()
            && mine.count() >= self.limits.share()
        {
            return Err(Refused::CredentialShare { retry_after: retry_after(*oldest) });
        }
        let c = self.counts.entry((cred, client)).or_default();
        c.in_flight += 1;
        self.recent.push_back((now, cred));
        Ok(())
    }

    /// Records how an attempt that `begin` allowed ended. Returns whether this attempt locked
    /// the client out (for the lockout counter of the metrics).
    pub(crate) fn finish(
        &mut self,
        cred: Credential,
        client: Client,
        outcome: Outcome,
        now: Instant,
    ) -> bool {
        let max = self.limits.max_failures;
        let lockout = self.limits.lockout;
        let c = self.counts.entry((cred, client)).or_default();
        c.in_flight = c.in_flight.saturating_sub(1);
        let mut locked = false;
        match outcome {
            Outcome::Correct => c.failures = 0,
            Outcome::Wrong => {
                c.failures += 1;
                if c.failures >= max && c.locked_until.is_none() {
                    locked = true;
                    c.locked_until = Some(now + lockout);
                    tracing::warn!(
                        credential = ?cred,
                        client = match client {
                            Client::Proven(_) => "a proven client",
                            Client::Unproven => "the clients without proof",
                        },
                        failures = c.failures,
                        lockout = %humantime::format_duration(lockout),
                        "admin clients locked out after wrong passwords"
                    );
                }
            }
            Outcome::NotChecked => {}
        }
        if c.failures == 0 && c.in_flight == 0 && c.locked_until.is_none() {
            self.counts.remove(&(cred, client));
        }
        locked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Client = Client::Proven(ClientId([1; 16]));
    const Q: Client = Client::Proven(ClientId([2; 16]));
    const U: Client = Client::Unproven;

    fn token() -> Credential {
        Credential::of_token_hash(&[16; 32])
    }

    fn other() -> Credential {
        Credential::of_token_hash(&[21; 32])
    }

    fn limiter() -> PasswordLimiter {
        PasswordLimiter::new(Limits::default())
    }

    fn wrong(l: &mut PasswordLimiter, cred: Credential, client: Client, t: Instant, n: usize) {
        for i in 0..n {
            l.begin(cred, client, t).unwrap_or_else(|e| panic!("attempt {i}: {e}"));
            l.finish(cred, client, Outcome::Wrong, t);
        }
    }

    #[test]
    fn the_credential_is_a_hash_never_the_token() {
        let c = Credential::of_token_hash(&[16; 32]);
        assert_eq!(c, token());
        assert_ne!(c, other());
        assert!(!c.as_bytes().windows(4).any(|w| w == b"0123"));
        assert!(!format!("{c:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn five_wrong_passwords_lock_the_client_out_for_fifteen_minutes() {
        let mut l = limiter();
        let t = Instant::now();
        wrong(&mut l, token(), P, t, 5);
        let e = l.begin(token(), P, t).unwrap_err();
        assert_eq!(e, Refused::LockedOut { retry_after: Duration::from_secs(900) });
        assert!(e.to_string().contains("15m"), "{e}");
        let later = t + Duration::from_secs(899);
        assert!(matches!(l.begin(token(), P, later), Err(Refused::LockedOut { .. })));
        l.begin(token(), P, t + Duration::from_secs(900)).unwrap();
    }

    #[test]
    fn unproven_clients_share_one_count_whatever_their_address() {
        // Rotating source addresses is no way around it: the address is not part of the key.
        let mut l = limiter();
        let t = Instant::now();
        wrong(&mut l, token(), U, t, 5);
        let e = l.begin(token(), U, t).unwrap_err();
        assert_eq!(e, Refused::UnprovenLockedOut { retry_after: Duration::from_secs(900) });
        assert!(e.to_string().contains("proof file"), "{e}");
    }

    #[test]
    fn a_proven_client_is_not_locked_out_by_someone_elses_guesses() {
        let mut l = limiter();
        let t = Instant::now();
        wrong(&mut l, token(), U, t, 5);
        wrong(&mut l, token(), Q, t, 5);
        assert!(l.begin(token(), U, t).is_err() && l.begin(token(), Q, t).is_err());
        l.begin(token(), P, t).unwrap();
        l.finish(token(), P, Outcome::Correct, t);
        // Nor is another credential.
        l.begin(other(), U, t).unwrap();
        l.finish(other(), U, Outcome::Correct, t);
    }

    #[test]
    fn a_correct_password_resets_the_count() {
        let mut l = limiter();
        let t = Instant::now();
        wrong(&mut l, token(), U, t, 4);
        l.begin(token(), U, t).unwrap();
        l.finish(token(), U, Outcome::Correct, t);
        wrong(&mut l, token(), U, t, 4);
        l.begin(token(), U, t).unwrap();
        l.finish(token(), U, Outcome::NotChecked, t);
        assert!(l.begin(token(), U, t).is_ok());
    }

    #[test]
    fn attempts_in_flight_count_as_potential_failures() {
        let mut l = limiter();
        let t = Instant::now();
        for _ in 0..5 {
            l.begin(token(), U, t).unwrap();
        }
        assert!(matches!(l.begin(token(), U, t), Err(Refused::UnprovenLockedOut { .. })));
        l.finish(token(), U, Outcome::Correct, t);
        l.begin(token(), U, t).unwrap();
    }

    #[test]
    fn overall_rate_is_limited_across_credentials() {
        let mut l = PasswordLimiter::new(Limits { attempts_per_minute: 4, ..Limits::default() });
        let t = Instant::now();
        for cred in [token(), other(), token(), other()] {
            l.begin(cred, P, t).unwrap();
            l.finish(cred, P, Outcome::Correct, t);
        }
        let third = Credential::of_token_hash(&[5; 32]);
        let e = l.begin(third, P, t + Duration::from_secs(20)).unwrap_err();
        assert_eq!(e, Refused::Overall { retry_after: Duration::from_secs(40) });
        l.begin(third, P, t + Duration::from_secs(60)).unwrap();
    }

    #[test]
    fn a_flood_with_one_credential_leaves_half_the_budget_to_others() {
        let mut l = limiter();
        let t = Instant::now();
        // Correct passwords, so no lockout interferes: only the budget.
        for i in 0..15 {
            l.begin(token(), P, t).unwrap_or_else(|e| panic!("attempt {i}: {e}"));
            l.finish(token(), P, Outcome::Correct, t);
        }
        let e = l.begin(token(), Q, t + Duration::from_secs(10)).unwrap_err();
        assert_eq!(e, Refused::CredentialShare { retry_after: Duration::from_secs(50) });
        for i in 0..15 {
            l.begin(other(), U, t).unwrap_or_else(|e| panic!("other credential, attempt {i}: {e}"));
            l.finish(other(), U, Outcome::Correct, t);
        }
        // Now the whole budget is used.
        assert!(matches!(
            l.begin(Credential::of_token_hash(&[1; 32]), U, t),
            Err(Refused::Overall { .. })
        ));
    }

    #[test]
    fn a_refusal_counts_nothing() {
        let mut l = PasswordLimiter::new(Limits { attempts_per_minute: 2, ..Limits::default() });
        let t = Instant::now();
        wrong(&mut l, token(), U, t, 1);
        for _ in 0..100 {
            assert!(l.begin(token(), U, t).is_err());
        }
        assert_eq!(l.recent.len(), 1);
        l.begin(other(), U, t).unwrap();
    }
}
