//! The administrator's encryption password: the complexity policy and the stored record.
//!
//! The record is PBKDF2-HMAC-SHA256 over the password with a 16-byte random salt (600,000
//! iterations by default, as OWASP recommends for PBKDF2-SHA256 in 2023+); at rest it lives
//! inside the state file, which is AES-256-GCM-sealed under the node key, so it is "hashed with
//! SHA-2, then encrypted with AES-256". Only the record is replicated to slaves, never the
//! password.
//!
//! A password is an RFC 8265 **OpaqueString** (through the `precis-profiles` crate): before the
//! policy and before any hashing, at set, change and check alike, non-ASCII spaces become
//! U+0020 and the string is normalised to NFC, and what the profile refuses (control and
//! invisible format characters such as U+202E or U+200D, unassigned code points) is refused
//! with the code point named. So a password set in NFC and typed in NFD is the same password.
//! Records made before this rule hashed the password as typed; for any password the profile
//! leaves unchanged (every NFC password without non-ASCII spaces) that is the same hash, and
//! for the others [`PasswordRecord::verify`] also tries the password as typed.
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

/// The policy in the operator's words, shown before a password is chosen (the console), from
/// the same constants [`check_policy`] enforces.
pub fn policy_rules() -> [String; 4] {
    [
        format!("{MIN_LEN} to {MAX_LEN} characters"),
        "at least 3 of the 4 classes: lowercase, uppercase, digit, symbol".into(),
        "different from the current password".into(),
        "no control, invisible formatting or unassigned characters (RFC 8265 OpaqueString)".into(),
    ]
}

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
    #[error(
        "password contains the character U+{0:04X}, which a password may not hold (RFC 8265 \
         OpaqueString): control, invisible formatting and unassigned characters cannot be typed \
         reliably"
    )]
    Disallowed(u32),
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

    /// The password as typed.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The password as RFC 8265's OpaqueString profile enforces it: non-ASCII spaces mapped to
    /// U+0020, NFC. An empty password is too short; a refused character is named.
    pub(crate) fn enforced(&self) -> Result<Zeroizing<String>, PolicyError> {
        use precis_core::profile::PrecisFastInvocation;
        match precis_profiles::OpaqueString::enforce(self.0.as_str()) {
            Ok(s) => Ok(Zeroizing::new(s.into_owned())),
            Err(precis_core::Error::BadCodepoint(info)) => Err(PolicyError::Disallowed(info.cp)),
            Err(precis_core::Error::Unexpected(
                precis_core::UnexpectedError::ContextRuleNotApplicable(info)
                | precis_core::UnexpectedError::MissingContextRule(info),
            )) => Err(PolicyError::Disallowed(info.cp)),
            // Empty, before or after the mapping.
            Err(_) => Err(PolicyError::TooShort(0)),
        }
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
    let enforced = new.enforced()?;
    let s: &str = &enforced;
    let n = s.chars().count();
    if n < MIN_LEN {
        return Err(PolicyError::TooShort(n));
    }
    if n > MAX_LEN {
        return Err(PolicyError::TooLong(n));
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
    /// Hashes `password` (its OpaqueString form, which [`check_policy`] has accepted) with a
    /// salt the caller drew from the OS CSPRNG. A password the profile refuses (only records
    /// made in tests) is hashed as typed.
    pub(crate) fn create(
        password: &Password,
        salt: [u8; SALT_LEN],
        iterations: Iterations,
    ) -> Self {
        let typed = password.as_bytes();
        let enforced = password.enforced().ok();
        let bytes = enforced.as_ref().map_or(typed, |s| s.as_bytes());
        let hash = derive(bytes, &salt, iterations.0);
        Self { salt, iterations: iterations.0, hash: *hash }
    }

    /// True when `candidate` is the password; the comparison is constant-time. The candidate's
    /// OpaqueString form is checked; when that differs from what was typed (or the profile
    /// refuses it), the typed form is checked too, so a record made before the profile applied
    /// still accepts its password.
    pub(crate) fn verify(&self, candidate: &Password) -> bool {
        let typed = candidate.as_bytes();
        let enforced = candidate.enforced().ok();
        if let Some(e) = &enforced
            && self.matches(e.as_bytes())
        {
            return true;
        }
        if enforced.as_ref().is_some_and(|e| e.as_bytes() == typed) {
            return false;
        }
        self.matches(typed)
    }

    fn matches(&self, password: &[u8]) -> bool {
        let h = derive(password, &self.salt, self.iterations);
        h.ct_eq(&self.hash).into()
    }
}

impl fmt::Debug for PasswordRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PasswordRecord(pbkdf2-sha256, {} iterations, <redacted>)", self.iterations)
    }
}

fn derive(password: &[u8], salt: &[u8], iterations: u32) -> Zeroizing<[u8; HASH_LEN]> {
    let mut out = Zeroizing::new([0u8; HASH_LEN]);
    pbkdf2_sha256(password, salt, iterations, &mut out[..]);
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
        assert!(e("Tab\tinside-Pass1").contains("U+0009"));
        assert!(check_policy(&Password::new("correct-Horse-battery"), None).is_ok());
        assert!(check_policy(&Password::new("Ünïcödé-wörds-9"), None).is_ok());
    }

    /// The examples: invisible format characters are refused, and NFD is NFC.
    #[test]
    fn passwords_are_opaque_strings() {
        let p = |s: &str| Password::new(s);
        let e = |s: &str| check_policy(&p(s), None).unwrap_err();
        // RIGHT-TO-LEFT OVERRIDE and ZERO WIDTH JOINER pass "can be typed" no longer.
        assert_eq!(e("Correct-Horse-9\u{202E}"), PolicyError::Disallowed(0x202E));
        assert_eq!(e("Correct\u{200D}Horse-9"), PolicyError::Disallowed(0x200D));
        assert!(e("Correct-Horse-9\u{202E}").to_string().contains("U+202E"));
        assert_eq!(e("Correct\u{200B}Horse-9"), PolicyError::Disallowed(0x200B));
        assert_eq!(e(""), PolicyError::TooShort(0));
        // Set in NFC, typed in NFD: the same password.
        let nfc = "Caf\u{e9}-Cr\u{e8}me-9";
        let nfd = "Cafe\u{301}-Cre\u{300}me-9";
        assert_ne!(nfc, nfd);
        check_policy(&p(nfc), None).unwrap();
        check_policy(&p(nfd), None).unwrap();
        assert!(rec(nfc).verify(&p(nfd)));
        assert!(rec(nfd).verify(&p(nfc)));
        assert!(!rec(nfc).verify(&p("Cafe-Creme-9")));
        // A non-ASCII space is a space.
        assert!(rec("Correct Horse-9").verify(&p("Correct\u{a0}Horse-9")));
        // Length counts the normalised characters: 12 in NFC, 14 typed in NFD.
        assert_eq!(
            check_policy(&p("Cafe\u{301}-Cre\u{300}m-9"), None),
            Err(PolicyError::TooShort(11))
        );
    }

    #[test]
    fn records_made_before_the_profile_still_verify() {
        // Hashed as typed, as every release before the profile did.
        let legacy = |s: &str| {
            let hash = derive(s.as_bytes(), &[3; 16], 10);
            PasswordRecord { salt: [3; 16], iterations: 10, hash: *hash }
        };
        // An NFC password: the same hash either way.
        let nfc = "Caf\u{e9}-Cr\u{e8}me-9";
        assert_eq!(legacy(nfc), rec(nfc));
        assert!(legacy(nfc).verify(&Password::new("Cafe\u{301}-Cre\u{300}me-9")));
        // One the profile now refuses or changes: accepted as typed, and only so.
        let odd = "Correct\u{200D}Horse-9";
        assert!(legacy(odd).verify(&Password::new(odd)));
        assert!(!legacy(odd).verify(&Password::new("CorrectHorse-9")));
        let nbsp = "Correct\u{a0}Horse-9";
        assert!(legacy(nbsp).verify(&Password::new(nbsp)));
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
