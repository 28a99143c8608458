//! How often a request without a valid token is written to the audit trail.
//!
//! Every refusal of an anonymous request (no token, a wrong or revoked one) is worth a record,
//! but a record costs an fsync and some 400 bytes that the daemon never deletes: anyone who
//! can reach the admin port could otherwise fill the disk the state lives on, or keep the
//! audit writer busy, without a token. So anonymous refusals are coalesced per (action, error
//! code, source IP): the first in each [`WINDOW`] is recorded, the next ones in the window are
//! only counted, and the first record after the window carries that count as
//! `details.suppressed`. Requests with a valid token are never coalesced.
//!
//! Invariants: at most one record per key and window, and at most [`MAX_KEYS`] keys (past
//! that, new sources share one key without an address), so an attacker rotating source
//! addresses over 127.0.0.0/8 gets at most `MAX_KEYS + 1` records per action and code per
//! window; no refusal is forgotten silently while its key is kept: its count reaches the next
//! record of that key (and every refusal is counted in `imcrypt_admin_token_refusals_total`).
//! Pure: the caller passes the time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// One record per key at most this often.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);
/// Sources tracked one by one; past that they share a key.
pub(crate) const MAX_KEYS: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    action: &'static str,
    code: &'static str,
    /// `None`: the key shared by sources past [`MAX_KEYS`].
    ip: Option<IpAddr>,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    recorded_at: Instant,
    /// Refusals of this key since its last record that were not recorded.
    suppressed: u64,
}

/// Whether to write the record of one anonymous refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Write it, with this many earlier refusals of the key that were not recorded; `shared`:
    /// the key of the sources past [`MAX_KEYS`], so the record names no address.
    Record { suppressed: u64, shared: bool },
    /// Do not: a record of the same key was written less than [`WINDOW`] ago.
    Counted,
}

/// The refusals recorded lately, per key.
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    slots: HashMap<Key, Slot>,
}

impl Refusals {
    /// Decides for one anonymous refusal of `action` answered `code`, from `ip`, at `now`.
    pub(crate) fn check(
        &mut self,
        action: &'static str,
        code: &'static str,
        ip: IpAddr,
        now: Instant,
    ) -> Verdict {
        let mut key = Key { action, code, ip: Some(ip) };
        if !self.slots.contains_key(&key) && self.slots.len() >= MAX_KEYS {
            // Forget what carries nothing: keys whose window ended with nothing suppressed.
            self.slots
                .retain(|_, s| s.suppressed > 0 || now.duration_since(s.recorded_at) < WINDOW);
            if self.slots.len() >= MAX_KEYS {
                key.ip = None;
            }
        }
        match self.slots.get_mut(&key) {
            Some(s) if now.duration_since(s.recorded_at) < WINDOW => {
                s.suppressed += 1;
                Verdict::Counted
            }
            Some(s) => {
                let suppressed = std::mem::take(&mut s.suppressed);
                s.recorded_at = now;
                Verdict::Record { suppressed, shared: key.ip.is_none() }
            }
            None => {
                self.slots.insert(key, Slot { recorded_at: now, suppressed: 0 });
                Verdict::Record { suppressed: 0, shared: key.ip.is_none() }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DL: &str = "key.download";

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(0x7f00_0000 + n))
    }

    #[test]
    fn one_record_per_source_action_and_code_per_window_carrying_what_was_only_counted() {
        let mut r = Refusals::default();
        let t0 = Instant::now();
        assert_eq!(
            r.check(DL, "wrong_token", ip(1), t0),
            Verdict::Record { suppressed: 0, shared: false }
        );
        for i in 1..=1000 {
            let t = t0 + Duration::from_millis(i);
            assert_eq!(r.check(DL, "wrong_token", ip(1), t), Verdict::Counted);
        }
        // Another code, action or source is a key of its own.
        assert_eq!(
            r.check(DL, "no_token", ip(1), t0),
            Verdict::Record { suppressed: 0, shared: false }
        );
        assert_eq!(
            r.check("key.rotate", "wrong_token", ip(1), t0),
            Verdict::Record { suppressed: 0, shared: false }
        );
        assert_eq!(
            r.check(DL, "wrong_token", ip(2), t0),
            Verdict::Record { suppressed: 0, shared: false }
        );
        let later = t0 + WINDOW;
        assert_eq!(
            r.check(DL, "wrong_token", ip(1), later),
            Verdict::Record { suppressed: 1000, shared: false }
        );
        assert_eq!(r.check(DL, "wrong_token", ip(1), later), Verdict::Counted);
    }

    #[test]
    fn rotating_source_addresses_share_one_key_past_the_limit() {
        let mut r = Refusals::default();
        let t0 = Instant::now();
        let verdicts: Vec<Verdict> =
            (0..100_000u32).map(|n| r.check(DL, "wrong_token", ip(n), t0)).collect();
        let recorded: Vec<&Verdict> = verdicts.iter().filter(|v| **v != Verdict::Counted).collect();
        assert_eq!(recorded.len(), MAX_KEYS + 1);
        assert_eq!(*recorded[MAX_KEYS], Verdict::Record { suppressed: 0, shared: true });
        assert!(r.slots.len() <= MAX_KEYS + 1);
        // A window later, keys that suppressed nothing make room again for single sources;
        // the shared key keeps its count for its next record.
        let later = t0 + WINDOW;
        let v = r.check(DL, "wrong_token", ip(200_000), later);
        assert_eq!(v, Verdict::Record { suppressed: 0, shared: false });
        let shared = Key { action: DL, code: "wrong_token", ip: None };
        assert_eq!(r.slots[&shared].suppressed, 100_000 - MAX_KEYS as u64 - 1);
    }
}
