//! Per-cluster, per-key-version invocation counters that keep AES-GCM inside its random-nonce
//! limit.
//!
//! NIST SP 800-38D §8.3 allows at most 2^32 invocations of one key with random 96-bit nonces.
//! Every cluster of a domain holds the same domain key but seals under its own derived record
//! key (see `record`), so each cluster counts only its own invocations. The count must survive
//! crashes without ever being under-counted, so the daemon *reserves* blocks of the counter on
//! disk before using them: after a crash the whole reserved block counts as used. A crash can
//! therefore over-count by up to one block, never under-count.
//!
//! Invariants: `used` never exceeds `reserved` for a successful `take`; `take` fails once the
//! hard limit of 2^32 is reached; `rotation_needed` turns true at 0.9·2^32 (the margin Vault
//! uses for its barrier key), early enough for the master to rotate.

use std::sync::atomic::{AtomicU64, Ordering};

/// The NIST limit: invocations of one key with random 96-bit nonces.
pub const HARD_LIMIT: u64 = 1 << 32;
/// The count at which this cluster asks the master for a new key version (0.9·2^32).
const ROTATE_AT: u64 = HARD_LIMIT * 9 / 10;
/// How many invocations one on-disk reservation covers.
pub const BLOCK: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CounterError {
    /// The reserved block is used up and the next one is not on disk yet. Transient: the
    /// daemon persists a new reservation and the caller retries.
    #[error(
        "the invocation counter reservation is used up; waiting for the next block to be persisted"
    )]
    ReservationExhausted,
    /// 2^32 records were sealed under this record key: sealing more would break GCM's bound.
    #[error("this key version has been used 2^32 times on this cluster; rotate the key")]
    KeyExhausted,
}

/// How far one record key has been used on this cluster.
#[derive(Debug)]
pub struct InvocationCounter {
    used: AtomicU64,
    reserved: AtomicU64,
}

impl InvocationCounter {
    /// A counter restored after a (re)start: everything reserved before is taken as used.
    pub(crate) fn resume(persisted_reservation: u64) -> Self {
        Self {
            used: AtomicU64::new(persisted_reservation),
            reserved: AtomicU64::new(persisted_reservation),
        }
    }

    /// Counts one invocation. Fails without sealing when the reservation or the key is used up;
    /// a failed call still counts (over-counting is the safe direction).
    pub fn take(&self) -> Result<u64, CounterError> {
        let n = self.used.fetch_add(1, Ordering::Relaxed);
        if n >= HARD_LIMIT {
            return Err(CounterError::KeyExhausted);
        }
        if n >= self.reserved.load(Ordering::Acquire) {
            return Err(CounterError::ReservationExhausted);
        }
        Ok(n)
    }

    /// Counts `n` invocations in one atomic operation (a whole batch), all or nothing: fails
    /// when the batch does not fit in the reservation or under the hard limit. Like `take`,
    /// a failed call still counts.
    pub(crate) fn take_many(&self, n: u64) -> Result<u64, CounterError> {
        let start = self.used.fetch_add(n, Ordering::Relaxed);
        let end = start.saturating_add(n);
        if end > HARD_LIMIT {
            return Err(CounterError::KeyExhausted);
        }
        if end > self.reserved.load(Ordering::Acquire) {
            return Err(CounterError::ReservationExhausted);
        }
        Ok(start)
    }

    /// The reservation to persist next, once less than half a block is left; `None` while
    /// there is plenty. Persist it, then call `commit_reservation` with it.
    pub(crate) fn reservation_due(&self) -> Option<u64> {
        let used = self.used.load(Ordering::Relaxed);
        let reserved = self.reserved.load(Ordering::Acquire);
        if reserved >= HARD_LIMIT || reserved.saturating_sub(used) > BLOCK / 2 {
            return None;
        }
        Some((reserved.max(used) + BLOCK).min(HARD_LIMIT))
    }

    /// Makes a reservation usable, only after it is durably on disk.
    pub fn commit_reservation(&self, persisted: u64) {
        self.reserved.fetch_max(persisted, Ordering::AcqRel);
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed).min(HARD_LIMIT)
    }

    #[cfg(test)]
    pub(crate) fn reserved(&self) -> u64 {
        self.reserved.load(Ordering::Acquire)
    }

    pub(crate) fn rotation_needed(&self) -> bool {
        self.used() >= ROTATE_AT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_sealed_beyond_the_persisted_reservation() {
        let c = InvocationCounter::resume(0);
        assert_eq!(c.take(), Err(CounterError::ReservationExhausted));
        let r = c.reservation_due().unwrap();
        assert_eq!(r, 1 + BLOCK);
        c.commit_reservation(r);
        for _ in 0..BLOCK {
            c.take().unwrap();
        }
        assert_eq!(c.take(), Err(CounterError::ReservationExhausted));
    }

    #[test]
    fn a_crash_over_counts_but_never_under_counts() {
        let c = InvocationCounter::resume(0);
        let r = c.reservation_due().unwrap();
        c.commit_reservation(r); // persisted to disk, then...
        for _ in 0..10 {
            c.take().unwrap();
        }
        // ...the process dies. What is on disk is `r`, and the restart resumes from it.
        let after = InvocationCounter::resume(r);
        assert!(after.used() >= c.used());
        assert_eq!(after.take(), Err(CounterError::ReservationExhausted));
    }

    #[test]
    fn leaving_a_domain_and_coming_back_resumes_its_count() {
        use crate::ids::{DomainId, KeyVersion};
        let (a, b) = (DomainId::from_bytes([1; 16]), DomainId::from_bytes([2; 16]));
        let mut r = Reservations::default();
        r.set(a, KeyVersion::FIRST, 5 * BLOCK);
        r.set(b, KeyVersion::FIRST, BLOCK);
        r.set(a, KeyVersion::FIRST, BLOCK); // never goes down
        assert_eq!(r.get(a, KeyVersion::FIRST), 5 * BLOCK);
        assert_eq!(r.get(b, KeyVersion::FIRST), BLOCK);
        assert_eq!(r.get(b, KeyVersion::new(2).unwrap()), 0);
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Reservations>(&json).unwrap(), r);
    }

    #[test]
    fn a_batch_is_counted_whole_or_not_at_all() {
        let c = InvocationCounter::resume(0);
        c.commit_reservation(100);
        assert_eq!(c.take_many(64), Ok(0));
        assert_eq!(c.take_many(64), Err(CounterError::ReservationExhausted));
        assert_eq!(c.used(), 128, "a refused batch still counts");
        let c = InvocationCounter::resume(HARD_LIMIT - 10);
        c.commit_reservation(HARD_LIMIT);
        assert_eq!(c.take_many(11), Err(CounterError::KeyExhausted));
    }

    #[test]
    fn reservation_is_requested_ahead_of_need() {
        let c = InvocationCounter::resume(0);
        c.commit_reservation(BLOCK);
        assert_eq!(c.reservation_due(), None);
        for _ in 0..BLOCK / 2 {
            c.take().unwrap();
        }
        assert_eq!(c.reservation_due(), Some(2 * BLOCK));
    }

    #[test]
    fn rotation_is_needed_at_nine_tenths_and_the_hard_limit_holds() {
        let c = InvocationCounter::resume(ROTATE_AT - 1);
        assert!(!c.rotation_needed());
        c.commit_reservation(HARD_LIMIT);
        c.take().unwrap();
        assert!(c.rotation_needed());
        let c = InvocationCounter::resume(HARD_LIMIT - 1);
        c.commit_reservation(HARD_LIMIT);
        assert_eq!(c.take(), Ok(HARD_LIMIT - 1));
        assert_eq!(c.take(), Err(CounterError::KeyExhausted));
        assert_eq!(c.reservation_due(), None);
        assert_eq!(ROTATE_AT, 3_865_470_566);
    }
}

/// The persisted reservations of one cluster, per domain and key version. Kept in its own
/// sealed file (`store::SealedFile` with `Purpose::Counters`) so that reserving a block
/// rewrites a few bytes, not the whole state. Every domain the cluster ever sealed for is
/// kept: a cluster that leaves a domain and joins it again resumes its count, never restarts
/// it at zero.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reservations {
    by_domain: std::collections::BTreeMap<
        crate::ids::DomainId,
        std::collections::BTreeMap<crate::ids::KeyVersion, u64>,
    >,
}

impl Reservations {
    /// The reservation persisted for `version` of `domain`; 0 for one never used here.
    pub fn get(&self, domain: crate::ids::DomainId, version: crate::ids::KeyVersion) -> u64 {
        self.by_domain.get(&domain).and_then(|v| v.get(&version)).copied().unwrap_or(0)
    }

    /// Every version of `domain` with its reservation (what counts as used after a restart).
    pub(crate) fn versions(
        &self,
        domain: crate::ids::DomainId,
    ) -> impl Iterator<Item = (crate::ids::KeyVersion, u64)> + '_ {
        self.by_domain.get(&domain).into_iter().flat_map(|v| v.iter().map(|(k, n)| (*k, *n)))
    }

    /// Records a new reservation. Reservations never go down.
    pub fn set(&mut self, domain: crate::ids::DomainId, version: crate::ids::KeyVersion, n: u64) {
        let e = self.by_domain.entry(domain).or_default().entry(version).or_insert(0);
        *e = (*e).max(n);
    }
}
