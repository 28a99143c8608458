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
//! - at most [`MAX_SESSIONS`] live at once: a new login pushes out the least recently used,
//!   so logins cannot make the table grow without bound;
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
        if self.by_digest.len() >= MAX_SESSIONS
            && let Some(oldest) =
                self.by_digest.iter().min_by_key(|(_, s)| s.last_used).map(|(k, _)| *k)
        {
            self.by_digest.remove(&oldest);
        }
        let id = hex::encode(crate::crypto::random::os_bytes::<32>());
        let csrf = hex::encode(crate::crypto::random::os_bytes::<32>());
        let session =
            Session { token, csrf, proof: None, flash: None, created: now, last_used: now };
        self.by_digest.insert(digest(&id), session);
        id
    }

    /// The live session `id`, marked used at `now`; an expired one is removed.
    pub(super) fn get(&mut self, id: &str, now: Instant) -> Option<&mut Session> {
        let key = digest(id);
        let expired = self.expired(self.by_digest.get(&key)?, now);
        if expired {
            self.by_digest.remove(&key);
            return None;
        }
        let s = self.by_digest.get_mut(&key)?;
        s.last_used = now;
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
        assert!(s.get(&id, t0 + Duration::from_secs(899)).is_some());
        // Used at 899 s: alive until 899 + 900.
        assert!(s.get(&id, t0 + Duration::from_secs(1798)).is_some());
        assert!(s.get(&id, t0 + Duration::from_secs(1798 + 900)).is_none());
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
            assert!(s.get(&id, t).is_some());
        }
        assert!(s.get(&id, t0 + MAX_LIFE).is_none());
    }

    #[test]
    fn ids_and_csrf_tokens_are_random_and_a_wrong_csrf_token_does_not_match() {
        let t0 = Instant::now();
        let mut s = Sessions::new(Duration::from_secs(900));
        let (a, b) = (s.create(token(), t0), s.create(token(), t0));
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        let csrf_a = s.get(&a, t0).unwrap().csrf.clone();
        let csrf_b = s.get(&b, t0).unwrap().csrf.clone();
        assert_ne!(csrf_a, csrf_b);
        assert!(csrf_matches(&csrf_a, &csrf_a));
        assert!(!csrf_matches(&csrf_a, &csrf_b));
        assert!(!csrf_matches(&csrf_a, ""));
        assert!(!csrf_matches("", ""), "a session without a token matches nothing");
        assert!(s.get("not-a-session", t0).is_none());
    }

    #[test]
    fn logins_beyond_the_cap_push_out_the_least_recently_used() {
        let t0 = Instant::now();
        let mut s = Sessions::new(Duration::from_secs(900));
        let first = s.create(token(), t0);
        let ids: Vec<String> = (1..MAX_SESSIONS as u64)
            .map(|i| s.create(token(), t0 + Duration::from_millis(i)))
            .collect();
        // The first is used again: the second is now the least recently used.
        assert!(s.get(&first, t0 + Duration::from_secs(1)).is_some());
        s.create(token(), t0 + Duration::from_secs(2));
        assert_eq!(s.len(), MAX_SESSIONS);
        assert!(s.get(&first, t0 + Duration::from_secs(3)).is_some());
        assert!(s.get(&ids[0], t0 + Duration::from_secs(3)).is_none());
        assert!(s.get(&ids[1], t0 + Duration::from_secs(3)).is_some());
    }

    #[test]
    fn logout_ends_the_session() {
        let t0 = Instant::now();
        let mut s = Sessions::new(Duration::from_secs(900));
        let id = s.create(token(), t0);
        s.remove(&id);
        assert!(s.get(&id, t0).is_none());
    }
}
