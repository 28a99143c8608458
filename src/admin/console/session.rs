//! The console's sessions: a browser that logged in with an administrator's token gets a
//! random session id in a cookie; the daemon keeps the rest in memory.
//!
//! Invariants:
//! - a session id is 256 random bits, and only its SHA-256 is a key of the table, so a lookup
//!   compares digests, never the secret itself in a time that depends on it;
//! - a session unused for `idle` or older than [`MAX_LIFE`] is gone at its next lookup, and a
//!   logout removes it at once; a restart of the daemon ends every session;
//! - a session holds its administrator's token (zeroized on drop), and every request checks
//!   that token again, so a token revoked is a session ended at its next request;
//! - at most [`MAX_SESSIONS`] live at once, and at most [`MAX_PER_TOKEN`] of one token: a new
//!   login pushes out the least recently used of its own token first, so logins cannot make
//!   the table grow without bound, nor one administrator's logins push out everybody else;
//! - the overview's refresh does not count as use ([`Sessions::get`]'s `touch`), so an
//!   unattended page still reaches the idle timeout;
//! - each session has its own CSRF token (256 random bits), compared in constant time.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// How long a session lasts however busy it is: an administrator logs in at least once a
/// working day.
pub(super) const MAX_LIFE: Duration = Duration::from_secs(12 * 3600);
/// Sessions at once, all administrators together.
pub(super) const MAX_SESSIONS: usize = 256;
/// Sessions of one token at once (a few browsers of one administrator).
pub(super) const MAX_PER_TOKEN: usize = 8;

/// A message for the next page shown to a session (after a form's redirect).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Flash {
    pub(super) ok: bool,
    pub(super) text: String,
    pub(super) notes: Vec<String>,
}

/// One logged-in browser.
pub(super) struct Session {
    /// The administrator's token, checked again at every request.
    pub(super) token: Zeroizing<String>,
    /// The CSRF token every form of this session carries.
    pub(super) csrf: String,
    /// The client proof the password limits gave this session ([`super::super::proof`]).
    pub(super) proof: Option<String>,
    pub(super) flash: Option<Flash>,
    /// SHA-256 of the token: which sessions are one administrator's.
    token_digest: [u8; 32],
    created: Instant,
    last_used: Instant,
}

/// Whether `given` is the session's CSRF token `expected`, compared in constant time.
pub(super) fn csrf_matches(expected: &str, given: &str) -> bool {
    !given.is_empty() && bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

/// The table of live sessions.
pub(super) struct Sessions {
    by_digest: HashMap<[u8; 32], Session>,
    idle: Duration,
}

fn digest(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    pub(super) fn new(idle: Duration) -> Self {
        Self { by_digest: HashMap::new(), idle }
    }

    fn expired(&self, s: &Session, now: Instant) -> bool {
        now.saturating_duration_since(s.last_used) >= self.idle
            || now.saturating_duration_since(s.created) >= MAX_LIFE
    }

    /// Starts a session for `token`; returns its id (the cookie's value).
    pub(super) fn create(&mut self, token: Zeroizing<String>, now: Instant) -> String {
        self.by_digest.retain(|_, s| {
            now.saturating_duration_since(s.last_used) < self.idle
                && now.saturating_duration_since(s.created) < MAX_LIFE
        });
        let token_digest = digest(&token);
        let lru = |only: Option<[u8; 32]>, sessions: &HashMap<[u8; 32], Session>| {
            sessions
                .iter()
                .filter(|(_, s)| only.is_none_or(|d| s.token_digest == d))
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| *k)
        };
        let own = self.by_digest.values().filter(|s| s.token_digest == token_digest).count();
        let evict = if own >= MAX_PER_TOKEN {
            lru(Some(token_digest), &self.by_digest)
        } else if self.by_digest.len() >= MAX_SESSIONS {
            lru(None, &self.by_digest)
        } else {
            None
        };
        if let Some(k) = evict {
            self.by_digest.remove(&k);
        }
        let id = hex::encode(crate::crypto::random::os_bytes::<32>());
        let csrf = hex::encode(crate::crypto::random::os_bytes::<32>());
        let session = Session {
            token,
            csrf,
            proof: None,
            flash: None,
            token_digest,
            created: now,
            last_used: now,
        };
        self.by_digest.insert(digest(&id), session);
        id
    }

    /// The live session `id`, marked used at `now` if `touch`; an expired one is removed.
    pub(super) fn get(&mut self, id: &str, now: Instant, touch: bool) -> Option<&mut Session> {
        let key = digest(id);
        let expired = self.expired(self.by_digest.get(&key)?, now);
        if expired {
            self.by_digest.remove(&key);
            return None;
        }
        let s = self.by_digest.get_mut(&key)?;
        if touch {
            s.last_used = now;
        }
        Some(s)
    }

    /// Ends session `id` (logout, or its token is no longer valid).
    pub(super) fn remove(&mut self, id: &str) {
        self.by_digest.remove(&digest(id));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_digest.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> Zeroizing<String> {
        Zeroizing::new("t".repeat(64))
    }

    #[test]
    fn a_session_unused_for_the_idle_timeout_is_gone() {
        let t0 = Instant::now();
        let mut s = Sessions::new(Duration::from_secs(900));
        let id = s.create(token(), t0);
        assert!(s.get(&id, t0 + Duration::from_secs(899), true).is_some());
        // Used at 899 s: alive until 899 + 900.
        assert!(s.get(&id, t0 + Duration::from_secs(1798), true).is_some());
        assert!(s.get(&id, t0 + Duration::from_secs(1798 + 900), true).is_none());
        assert_eq!(s.len(), 0, "removed at the lookup that found it expired");
    }

    #[test]
    fn a_busy_session_still_ends_after_its_maximum_life() {
        let t0 = Instant::now();
        let mut s = Sessions::new(Duration::from_secs(900));
        let id = s.create(token(), t0);
        let mut t = t0;
        while t < t0 + MAX_LIFE - Duration::from_secs(600) {
            t += Duration::from_secs(600);
            assert!(s.get(&id, t, true).is_some());
        }
        assert!(s.get(&id, t0 + MAX_LIFE, true).is_none());
    }

    #[test]
    fn ids_and_csrf_tokens_are_random_and_a_wrong_csrf_token_does_not_match() {
        let t0 = Instant::now();
        let mut s = Sessions::new(Duration::from_secs(900));
        let (a, b) = (s.create(token(), t0), s.create(token(), t0));
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        let csrf_a = s.get(&a, t0, true).unwrap().csrf.clone();
        let csrf_b = s.get(&b, t0, true).unwrap().csrf.clone();
        assert_ne!(csrf_a, csrf_b);
        assert!(csrf_matches(&csrf_a, &csrf_a));
        assert!(!csrf_matches(&csrf_a, &csrf_b));
        assert!(!csrf_matches(&csrf_a, ""));
        assert!(!csrf_matches("", ""), "a session without a token matches nothing");
        assert!(s.get("not-a-session", t0, true).is_none());
    }

    #[test]
    fn a_refresh_does_not_keep_an_unattended_session_alive() {
        let t0 = Instant::now();
        let mut s = Sessions::new(Duration::from_secs(900));
        let id = s.create(token(), t0);
        for m in 1..15 {
            assert!(s.get(&id, t0 + Duration::from_secs(60 * m), false).is_some());
        }
        assert!(s.get(&id, t0 + Duration::from_secs(900), false).is_none());
    }

    #[test]
    fn one_token_keeps_at_most_its_cap_and_cannot_push_out_others() {
        let t0 = Instant::now();
        let mut s = Sessions::new(Duration::from_secs(900));
        let other = s.create(Zeroizing::new("o".repeat(64)), t0);
        let mine: Vec<String> = (1..=MAX_PER_TOKEN as u64 + 3)
            .map(|i| s.create(token(), t0 + Duration::from_millis(i)))
            .collect();
        assert_eq!(s.len(), MAX_PER_TOKEN + 1);
        let now = t0 + Duration::from_secs(1);
        assert!(s.get(&other, now, true).is_some(), "another administrator's session stays");
        assert!(s.get(&mine[0], now, true).is_none(), "the oldest of the token's own went");
        assert!(s.get(mine.last().unwrap(), now, true).is_some());
    }

    #[test]
    fn logins_beyond_the_cap_push_out_the_least_recently_used() {
        let t0 = Instant::now();
        let mut s = Sessions::new(Duration::from_secs(900));
        let first = s.create(Zeroizing::new("0".repeat(64)), t0);
        let ids: Vec<String> = (1..MAX_SESSIONS as u64)
            .map(|i| s.create(Zeroizing::new(format!("{i:064}")), t0 + Duration::from_millis(i)))
            .collect();
        // The first is used again: the second is now the least recently used.
        assert!(s.get(&first, t0 + Duration::from_secs(1), true).is_some());
        s.create(Zeroizing::new("n".repeat(64)), t0 + Duration::from_secs(2));
        assert_eq!(s.len(), MAX_SESSIONS);
        assert!(s.get(&first, t0 + Duration::from_secs(3), true).is_some());
        assert!(s.get(&ids[0], t0 + Duration::from_secs(3), true).is_none());
        assert!(s.get(&ids[1], t0 + Duration::from_secs(3), true).is_some());
    }

    #[test]
    fn logout_ends_the_session() {
        let t0 = Instant::now();
        let mut s = Sessions::new(Duration::from_secs(900));
        let id = s.create(token(), t0);
        s.remove(&id);
        assert!(s.get(&id, t0, true).is_none());
    }
}
