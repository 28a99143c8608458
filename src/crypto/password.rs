//! The administrator's encryption password: the complexity policy and the stored record.
//!
//! The record is PBKDF2-HMAC-SHA256 over the password with a 16-byte random salt (600,000
//! iterations by default, as OWASP recommends for PBKDF2-SHA256 in 2023+); at rest it lives
//! inside the state file, which is AES-256-GCM-sealed under the node key, so it is "hashed with
//! SHA-2, then encrypted with AES-256". Only the record is replicated to slaves, never the
//! password.
//!
//! Invariants: verification compares in constant time; a `Password` is zeroized on drop and
//! redacted in `Debug`; the iteration count of a new record is never below `MIN_ITERATIONS`
//! except through the explicitly named test constructor.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

const MIN_LEN: usize = 12;
const MAX_LEN: usize = 128;
const DEFAULT_ITERATIONS: u32 = 600_000;
const MIN_ITERATIONS: u32 = 100_000;
const SALT_LEN: usize = 16;
const HASH_LEN: usize = 32;

/// Which rule of the password policy a candidate broke. The message names the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("password is too short: it has {0} characters, at least {MIN_LEN} are required")]
    TooShort(usize),
    #[error("password is too long: it has {0} characters, at most {MAX_LEN} are allowed")]
    TooLong(usize),
    #[error(
        "password is too simple: it uses {0} of the 4 character classes (lowercase, uppercase, \
         digit, symbol); at least 3 are required"
    )]
    TooFewClasses(usize),
    #[error("password must differ from the current password")]
    SameAsCurrent,
    #[error("password contains a control character, which cannot be typed reliably")]
    ControlCharacter,
}

/// An iteration count that respects the floor, or was explicitly made weak for tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Iterations(u32);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("PBKDF2 iteration count {0} is below the minimum of {MIN_ITERATIONS}")]
pub(crate) struct IterationsTooLow(pub u32);

impl Iterations {
    pub(crate) fn new(n: u32) -> Result<Self, IterationsTooLow> {
        if n < MIN_ITERATIONS { Err(IterationsTooLow(n)) } else { Ok(Self(n)) }
    }

    #[cfg(test)]
    /// Any count at all, so test suites need not spend 0.08 s per hash. Never for production.
    #[doc(hidden)]
    pub(crate) fn insecure_for_tests(n: u32) -> Self {
        Self(n.max(1))
    }

    #[cfg(test)]
    pub(crate) fn get(self) -> u32 {
        self.0
    }
}

impl Default for Iterations {
    fn default() -> Self {
        Self(DEFAULT_ITERATIONS)
    }
}

/// A password as typed by the administrator.
#[derive(Clone)]
pub struct Password(Zeroizing<String>);

impl Password {
    pub fn new(s: impl Into<String>) -> Self {
        Self(Zeroizing::new(s.into()))
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// Checks the complexity rules for a new password. `current`, when given, is the record the
/// new password must differ from (this costs one PBKDF2 computation).
pub(crate) fn check_policy(
    new: &Password,
    current: Option<&PasswordRecord>,
) -> Result<(), PolicyError> {
    let s: &str = &new.0;
    let n = s.chars().count();
    if n < MIN_LEN {
        return Err(PolicyError::TooShort(n));
    }
    if n > MAX_LEN {
        return Err(PolicyError::TooLong(n));
    }
    if s.chars().any(char::is_control) {
        return Err(PolicyError::ControlCharacter);
    }
    let classes = [
        s.chars().any(|c| c.is_lowercase()),
        s.chars().any(|c| c.is_uppercase()),
        s.chars().any(|c| c.is_ascii_digit()),
        s.chars().any(|c| !c.is_alphanumeric()),
    ]
    .into_iter()
    .filter(|&b| b)
    .count();
    if classes < 3 {
        return Err(PolicyError::TooFewClasses(classes));
    }
    if current.is_some_and(|rec| rec.verify(new)) {
        return Err(PolicyError::SameAsCurrent);
    }
    Ok(())
}

/// The salted PBKDF2-HMAC-SHA256 hash of the password. Replicated to slaves so that a slave
/// can check the master's password (slave-side disable) without ever holding the password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PasswordRecord {
    #[serde(with = "hex::serde")]
    salt: [u8; SALT_LEN],
    iterations: u32,
    #[serde(with = "hex::serde")]
    hash: [u8; HASH_LEN],
}

impl PasswordRecord {
    /// Hashes `password` with a salt the caller drew from the OS CSPRNG.
    pub(crate) fn create(
        password: &Password,
        salt: [u8; SALT_LEN],
        iterations: Iterations,
    ) -> Self {
        let hash = derive(password, &salt, iterations.0);
        Self { salt, iterations: iterations.0, hash: *hash }
    }

    /// True when `candidate` is the password; the comparison is constant-time.
    pub(crate) fn verify(&self, candidate: &Password) -> bool {
        let h = derive(candidate, &self.salt, self.iterations);
        h.ct_eq(&self.hash).into()
    }
}

impl fmt::Debug for PasswordRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PasswordRecord(pbkdf2-sha256, {} iterations, <redacted>)", self.iterations)
    }
}

fn derive(password: &Password, salt: &[u8], iterations: u32) -> Zeroizing<[u8; HASH_LEN]> {
    let mut out = Zeroizing::new([0u8; HASH_LEN]);
    pbkdf2_sha256(password.as_bytes(), salt, iterations, &mut out[..]);
    out
}

/// PBKDF2-HMAC-SHA256 filling `out`: the primitive under `PasswordRecord`, exposed for the
/// Wycheproof and RFC 7914 vector tests.
pub fn pbkdf2_sha256(password: &[u8], salt: &[u8], iterations: u32, out: &mut [u8]) {
    pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(pw: &str) -> PasswordRecord {
        PasswordRecord::create(&Password::new(pw), [3; 16], Iterations::insecure_for_tests(10))
    }

    #[test]
    fn policy_names_the_rule_that_failed() {
        let e = |s: &str| check_policy(&Password::new(s), None).unwrap_err().to_string();
        assert!(e("Ab1!").contains("too short"));
        assert!(e(&"Ab1!".repeat(40)).contains("too long"));
        assert!(e("alllowercaseletters").contains("1 of the 4 character classes"));
        assert!(e("lowerUPPERonly").contains("2 of the 4"));
        assert!(e("Tab\tinside-Pass1").contains("control character"));
        assert!(check_policy(&Password::new("correct-Horse-battery"), None).is_ok());
        assert!(check_policy(&Password::new("Ünïcödé-wörds-9"), None).is_ok());
    }

    #[test]
    fn new_password_must_differ_from_current() {
        let cur = rec("Current-Passw0rd");
        assert_eq!(
            check_policy(&Password::new("Current-Passw0rd"), Some(&cur)),
            Err(PolicyError::SameAsCurrent)
        );
        assert!(check_policy(&Password::new("Another-Passw0rd"), Some(&cur)).is_ok());
    }

    #[test]
    fn verify_accepts_only_the_password() {
        let r = rec("Current-Passw0rd");
        assert!(r.verify(&Password::new("Current-Passw0rd")));
        assert!(!r.verify(&Password::new("current-Passw0rd")));
        assert!(!r.verify(&Password::new("")));
    }

    #[test]
    fn iteration_floor() {
        assert_eq!(Iterations::new(99_999), Err(IterationsTooLow(99_999)));
        assert_eq!(Iterations::new(100_000).unwrap().get(), 100_000);
        assert_eq!(Iterations::default().get(), 600_000);
    }

    #[test]
    fn debug_redacts() {
        let r = rec("Current-Passw0rd");
        let s = format!("{r:?} {:?}", Password::new("Current-Passw0rd"));
        assert!(!s.contains("Current") && !s.contains("0303"), "{s}");
    }
}
