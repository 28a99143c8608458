//! The named administrators' tokens: who they are, their role, and the SHA-256 of their token,
//! in a sealed file of the state directory (`admin.tokens.sealed`, node key purpose
//! `AdminTokens`, written with the store's atomic write). [`Tokens`] is the pure logic
//! (create, revoke, authenticate, the rules); [`TokenFile`] carries it to disk under a lock
//! (`admin.tokens.lock`, `flock`), so that `imcrypt admin token … --local` and the daemon's
//! token routes never lose each other's change; [`LiveTokens`] is the daemon's view, which
//! re-stats the file on every authenticated request and reloads it when it changed, so a token
//! created or revoked by either takes effect at once.
//!
//! A token is 32 random bytes, shown once as 64 hex digits; only its SHA-256 is stored (a hash
//! of 256 random bits needs no salt or stretching: nothing can be guessed). The first file is
//! made from the token file of earlier releases (`admin.token`, created on a fresh install):
//! that token becomes the administrator `admin` with the role `admin`. Revoking that token
//! removes `admin.token`, so that a token store lost later can never bring it back.
//!
//! A change made with `--local` is audited through `audit::pending`: the CLI writes its record
//! there before saving, and [`LiveTokens`] chains the pending records before it uses a changed
//! file; when it cannot, it uses neither the change nor any token (no record, no act).
//!
//! Invariants: a token's bytes are never written, not even sealed; names are unique among the
//! tokens not revoked and follow [`validate_name`]; there is always at least one `admin` not
//! revoked (the last one cannot be revoked); a refused change writes nothing; a revoked token
//! is kept (with the time of its revocation) so that it is told apart from a wrong one, and is
//! never valid again; every comparison with a stored hash is constant-time.

use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::api::TokenInfo;
use super::limit::Credential;
use super::roles::{AdminRole, Principal};
use super::token::{Token, TokenError};
use crate::audit::{Audit, AuditError, Details, acts::action, pending};
use crate::crypto::seal::{NodeKey, Purpose};
use crate::store::{SealedFile, StoreError, sync_dir};

/// The sealed file of the tokens, in the state directory.
pub const FILE_NAME: &str = "admin.tokens.sealed";
/// The lock file that serializes changes to it.
const LOCK_NAME: &str = "admin.tokens.lock";
/// The name the token of earlier releases gets.
pub const FIRST_ADMIN: &str = "admin";
const MAX_NAME: usize = 64;

/// Why a token operation did not happen; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error(
        "administrator name {name:?} is not valid: use 1 to {MAX_NAME} characters, letters, \
         digits, '-', '_' or '.', starting with a letter or digit"
    )]
    BadName { name: String },
    #[error(
        "an administrator named {0:?} already has a token; revoke it first or pick another name"
    )]
    NameTaken(String),
    #[error("no administrator named {0:?} has a token that is not revoked")]
    NoSuchName(String),
    #[error(
        "{0:?} is the last administrator with the role admin: revoking it would leave nobody to \
         manage tokens; create another admin token first"
    )]
    LastAdmin(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot lock {path} (against a concurrent token change): {source}")]
    Lock { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Legacy(#[from] TokenError),
    #[error(
        "{0} has no node key: this is not the state directory of a daemon that has started; \
         start the daemon once (it makes the node key and the token store), or give the right \
         --config"
    )]
    NoNodeKey(PathBuf),
    #[error(transparent)]
    NodeKey(#[from] crate::store::NodeKeyError),
    #[error(
        "the token store {0} is missing: restart the daemon to make it again from the token file \
         (the tokens made since are lost)"
    )]
    Missing(PathBuf),
    #[error("the audit record of this change cannot be written, so nothing was changed: {0}")]
    NotRecorded(#[source] AuditError),
    #[error(
        "the token store was changed on the daemon's host (`imcrypt admin token --local`) and the \
         audit record of that change cannot be written yet, so no token is accepted until it is: \
         {0}"
    )]
    Unaudited(#[source] Arc<AuditError>),
}

/// Checks an administrator's name: 1 to 64 ASCII letters, digits, `-`, `_`, `.`, the first a
/// letter or digit (a name is a path segment of the API and a column of the audit).
pub fn validate_name(name: &str) -> Result<(), TokensError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok { Ok(()) } else { Err(TokensError::BadName { name: name.into() }) }
}

/// One token as stored: never the token, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    role: AdminRole,
    #[serde(with = "hex::serde")]
    sha256: [u8; 32],
    created_unix: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    revoked_unix: Option<u64>,
}

impl Entry {
    fn info(&self) -> TokenInfo {
        TokenInfo {
            name: self.name.clone(),
            role: self.role,
            created_unix: self.created_unix,
            revoked_unix: self.revoked_unix,
        }
    }

    fn active(&self) -> bool {
        self.revoked_unix.is_none()
    }
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.trim().as_bytes()).into()
}

/// What a token given with a request turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// A token not revoked: who holds it, and its credential in the password limits.
    Valid(Principal, Credential),
    /// A token that was revoked: whose it was.
    Revoked(String),
    /// No token this daemon ever made.
    Unknown,
}

/// A token just made: shown once, then only its hash exists.
pub struct NewToken {
    pub info: TokenInfo,
    /// 64 hex digits.
    pub token: Zeroizing<String>,
}

impl std::fmt::Debug for NewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NewToken({:?}, <redacted>)", self.info)
    }
}

/// Every token ever made here, revoked ones included: the file's document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Tokens {
    tokens: Vec<Entry>,
}

impl Tokens {
    /// The tokens with the token of earlier releases as the first `admin`.
    fn imported(legacy: &Token, now_unix: u64) -> Self {
        let sha256 = hash(legacy.digits());
        let first = Entry {
            name: FIRST_ADMIN.into(),
            role: AdminRole::Admin,
            sha256,
            created_unix: now_unix,
            revoked_unix: None,
        };
        Self { tokens: vec![first] }
    }

    /// Who holds `given`, comparing it with every stored hash in constant time.
    pub(crate) fn authenticate(&self, given: &str) -> Lookup {
        let h = hash(given);
        let mut found = None;
        for e in &self.tokens {
            if bool::from(e.sha256.ct_eq(&h)) {
                found = Some(e);
            }
        }
        match found {
            Some(e) if e.active() => Lookup::Valid(
                Principal { name: e.name.clone(), role: e.role },
                Credential::of_token_hash(&e.sha256),
            ),
            Some(e) => Lookup::Revoked(e.name.clone()),
            None => Lookup::Unknown,
        }
    }

    /// Every token, oldest first, revoked ones included.
    pub(crate) fn list(&self) -> Vec<TokenInfo> {
        self.tokens.iter().map(Entry::info).collect()
    }

    /// Adds a token for `name` with `role`; `random` is its 32 random bytes.
    fn create(
        &mut self,
        name: &str,
        role: AdminRole,
        random: &[u8; 32],
        now_unix: u64,
    ) -> Result<NewToken, TokensError> {
        validate_name(name)?;
        if self.tokens.iter().any(|e| e.active() && e.name == name) {
            return Err(TokensError::NameTaken(name.into()));
        }
        let token = Zeroizing::new(hex::encode(random));
        let e = Entry {
            name: name.into(),
            role,
            sha256: hash(&token),
            created_unix: now_unix,
            revoked_unix: None,
        };
        let info = e.info();
        self.tokens.push(e);
        Ok(NewToken { info, token })
    }

    /// Revokes the token of `name`, unless it is the last `admin`.
    fn revoke(&mut self, name: &str, now_unix: u64) -> Result<TokenInfo, TokensError> {
        let admins =
            self.tokens.iter().filter(|e| e.active() && e.role == AdminRole::Admin).count();
        let e = self
            .tokens
            .iter_mut()
            .find(|e| e.active() && e.name == name)
            .ok_or_else(|| TokensError::NoSuchName(name.into()))?;
        if e.role == AdminRole::Admin && admins == 1 {
            return Err(TokensError::LastAdmin(name.into()));
        }
        e.revoked_unix = Some(now_unix);
        Ok(e.info())
    }
}

/// The tokens' sealed file and its lock, in a daemon's state directory.
pub struct TokenFile {
    sealed: SealedFile,
    dir: PathBuf,
    path: PathBuf,
    lock: PathBuf,
    /// The token file of earlier releases (`admin.token`): the first `admin` is made from it.
    legacy: PathBuf,
}

impl std::fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenFile({})", self.path.display())
    }
}

/// Holds the lock file's exclusive `flock` until dropped.
struct Held(#[allow(dead_code)] std::fs::File);

impl TokenFile {
    /// The token file of the state directory `dir`, sealed with `node_key`; `legacy` is the
    /// token file of earlier releases (`Config::admin_token_file`).
    pub fn new(dir: &Path, node_key: &NodeKey, legacy: PathBuf) -> Self {
        let path = dir.join(FILE_NAME);
        Self {
            sealed: SealedFile::new(path.clone(), node_key, Purpose::AdminTokens),
            dir: dir.to_owned(),
            path,
            lock: dir.join(LOCK_NAME),
            legacy,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The token file of earlier releases this store was (or will be) made from.
    pub fn legacy(&self) -> &Path {
        &self.legacy
    }

    fn lock(&self) -> Result<Held, TokensError> {
        let err = |source| TokensError::Lock { path: self.lock.clone(), source };
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&self.lock)
            .map_err(err)?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| err(e.into()))?;
        Ok(Held(f))
    }

    /// The token file of a daemon's state directory, for `imcrypt admin token --local` on the
    /// daemon's host, with the daemon's node key (never made here). Only reads: a change
    /// first makes the file if the daemon has not yet ([`TokenFile::import_if_missing`]).
    pub fn local(config: &crate::config::Config) -> Result<Self, TokensError> {
        let node_key = crate::store::existing_node_key(&config.state_dir)?
            .ok_or_else(|| TokensError::NoNodeKey(config.state_dir.clone()))?;
        Ok(Self::new(&config.state_dir, &node_key, config.admin_token_file()))
    }

    /// The tokens; [`TokensError::Missing`] if the file was never made.
    pub(crate) fn load(&self) -> Result<Tokens, TokensError> {
        self.sealed.load()?.ok_or_else(|| TokensError::Missing(self.path.clone()))
    }

    /// Makes the file from the token file of earlier releases (created now if missing, as at
    /// a fresh install) when there is no token file yet. Returns whether it did.
    pub fn import_if_missing(&self, now_unix: u64) -> Result<bool, TokensError> {
        let _held = self.lock()?;
        if self.sealed.load::<Tokens>()?.is_some() {
            return Ok(false);
        }
        let (token, _) = Token::load_or_create(&self.legacy)?;
        self.sealed.save(&Tokens::imported(&token, now_unix))?;
        Ok(true)
    }

    /// Every token, revoked ones included.
    pub fn list(&self) -> Result<Vec<TokenInfo>, TokensError> {
        Ok(self.load()?.list())
    }

    /// Makes a token for `name` with `role` and stores its hash (unaudited: tests and tools).
    pub fn create(
        &self,
        name: &str,
        role: AdminRole,
        now_unix: u64,
    ) -> Result<NewToken, TokensError> {
        self.create_recorded(None, name, role, now_unix, |_| Ok::<(), TokensError>(()), |()| {})
    }

    /// As [`TokenFile::create`], under the lock: first the pending records of `--local`
    /// changes are chained with `chain` (the daemon's trail; `None` for the CLI), so that the
    /// rules (a name taken, the last admin) judge the store as its records say it is; then
    /// `record` is called once the change is known to be valid and before it is saved. An error
    /// from `record` (the audit trail cannot be written) leaves the file as it was: no record,
    /// no act. If the save then fails, `undo` gets what `record` returned.
    pub(crate) fn create_recorded<R, E: From<TokensError>>(
        &self,
        chain: Option<&Audit>,
        name: &str,
        role: AdminRole,
        now_unix: u64,
        record: impl FnOnce(&TokenInfo) -> Result<R, E>,
        undo: impl FnOnce(R),
    ) -> Result<NewToken, E> {
        let _held = self.lock()?;
        let mut t = self.load_locked(chain)?;
        let random = Zeroizing::new(crate::crypto::random::os_bytes::<32>());
        let new = t.create(name, role, &random, now_unix)?;
        let mark = record(&new.info)?;
        if let Err(e) = self.sealed.save(&t) {
            undo(mark);
            return Err(TokensError::from(e).into());
        }
        Ok(new)
    }

    /// Revokes the token of `name` (unaudited: tests and tools).
    pub fn revoke(&self, name: &str, now_unix: u64) -> Result<Revoked, TokensError> {
        self.revoke_recorded(None, name, now_unix, |_| Ok::<(), TokensError>(()), |()| {})
    }

    /// As [`TokenFile::revoke`], with `chain`, `record` and `undo` as
    /// [`TokenFile::create_recorded`] takes them.
    pub(crate) fn revoke_recorded<R, E: From<TokensError>>(
        &self,
        chain: Option<&Audit>,
        name: &str,
        now_unix: u64,
        record: impl FnOnce(&TokenInfo) -> Result<R, E>,
        undo: impl FnOnce(R),
    ) -> Result<Revoked, E> {
        let _held = self.lock()?;
        let mut t = self.load_locked(chain)?;
        let info = t.revoke(name, now_unix)?;
        let mark = record(&info)?;
        if let Err(e) = self.sealed.save(&t) {
            undo(mark);
            return Err(TokensError::from(e).into());
        }
        let note = self.remove_legacy_if_revoked(&t);
        Ok(Revoked { info, note })
    }

    /// Removes the token file of earlier releases once its token is revoked: it opens nothing
    /// any more, and if the store were lost it must not become the first `admin` again. Only
    /// a file in the state directory: one elsewhere may be another daemon's too. Returns what
    /// the operator must be told.
    fn remove_legacy_if_revoked(&self, t: &Tokens) -> Option<String> {
        let text = Zeroizing::new(std::fs::read_to_string(&self.legacy).ok()?);
        let h = hash(&text);
        if !t.tokens.iter().any(|e| !e.active() && bool::from(e.sha256.ct_eq(&h))) {
            return None;
        }
        let shown = self.legacy.display();
        if self.legacy.parent() != Some(self.dir.as_path()) {
            return Some(format!(
                "the admin token file {shown} holds this revoked token; it is outside the state \
                 directory, so it was left in place: remove it"
            ));
        }
        let removed = std::fs::remove_file(&self.legacy).and_then(|()| sync_dir(&self.dir));
        Some(match removed {
            Ok(()) => format!(
                "removed the admin token file {shown}: its token is revoked (give the CLI \
                 another administrator's token with --token-file or IMCRYPT_TOKEN from now on)"
            ),
            Err(e) => format!(
                "the admin token file {shown} holds this revoked token and could not be removed \
                 ({e}): remove it"
            ),
        })
    }

    /// Makes a token on the daemon's host (`--local`): the record goes to the pending audit
    /// records first (`audit::pending`, taken back if the save fails), and the daemon chains
    /// it before it uses the token.
    pub fn create_local(
        &self,
        name: &str,
        role: AdminRole,
        now_unix: u64,
    ) -> Result<NewToken, TokensError> {
        let record = |info: &TokenInfo| self.pending(action::TOKEN_CREATE, info);
        self.create_recorded(None, name, role, now_unix, record, pending::Mark::undo)
    }

    /// Revokes a token on the daemon's host (`--local`), recorded as [`TokenFile::create_local`].
    pub fn revoke_local(&self, name: &str, now_unix: u64) -> Result<Revoked, TokensError> {
        let record = |info: &TokenInfo| self.pending(action::TOKEN_REVOKE, info);
        self.revoke_recorded(None, name, now_unix, record, pending::Mark::undo)
    }

    /// Writes the pending record of a `--local` change of `info`.
    fn pending(&self, action: &str, info: &TokenInfo) -> Result<pending::Mark, TokensError> {
        let mut d = Details::new();
        d.insert("role".into(), info.role.to_string().into());
        let now = crate::clock::now().unix_millis();
        pending::append(&self.dir, action, &info.name, d, now).map_err(TokensError::NotRecorded)
    }

    /// The tokens; with `chain`, after the pending records of `--local` changes are chained
    /// there. The caller holds the lock, so no change can slip in between unrecorded.
    fn load_locked(&self, chain: Option<&Audit>) -> Result<Tokens, TokensError> {
        if let Some(audit) = chain {
            let n = pending::drain(&self.dir, |r| audit.write(r))
                .map_err(|e| TokensError::Unaudited(Arc::new(e)))?;
            if n > 0 && audit.is_enabled() {
                tracing::info!(
                    records = n,
                    "token changes made on this host with `imcrypt admin token --local` are now \
                     in the audit trail"
                );
            } else if n > 0 {
                tracing::warn!(
                    records = n,
                    "token changes made on this host with `imcrypt admin token --local` are not \
                     recorded: the audit trail is disabled"
                );
            }
        }
        self.load()
    }

    /// [`TokenFile::load_locked`] with the daemon's trail, taking the lock.
    fn load_chained(&self, audit: &Audit) -> Result<Tokens, TokensError> {
        let _held = self.lock()?;
        self.load_locked(Some(audit))
    }
}

/// A token revoked, and what the operator must be told about the admin token file, if
/// anything.
#[derive(Debug)]
pub struct Revoked {
    pub info: TokenInfo,
    pub note: Option<String>,
}

/// What identifies one version of the file: a write renames a new inode into place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    let m = std::fs::metadata(path)?;
    Ok(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
    })
}

/// The daemon's tokens, reloaded when the file changes.
pub(crate) struct LiveTokens {
    file: TokenFile,
    /// Where the pending records of `--local` changes are chained before a reload.
    audit: Audit,
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    /// The version of the file `tokens` were loaded from.
    stamp: Option<Stamp>,
    tokens: Arc<Tokens>,
    /// The last reload of this version failed to chain its pending records: when, and why.
    unaudited: Option<(Stamp, std::time::Instant, Arc<AuditError>)>,
}

/// How long a reload that could not chain its pending records is not tried again: requests
/// meanwhile get the same answer without a lock, a read and a failed append each.
const UNAUDITED_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

impl LiveTokens {
    pub(crate) fn new(file: TokenFile, audit: Audit) -> Self {
        Self { file, audit, cache: Mutex::default() }
    }

    pub(crate) fn file(&self) -> &TokenFile {
        &self.file
    }

    /// The tokens as the file holds them now: one `stat` per call, a load only when it
    /// changed, after the pending records of `--local` changes are chained. A file that is
    /// gone or does not load, or pending records that cannot be chained, is an error (no
    /// request passes), never the last tokens seen, which might hold one since revoked.
    pub(crate) fn current(&self) -> Result<Arc<Tokens>, TokensError> {
        let now = match stamp(&self.file.path) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(TokensError::Missing(self.file.path.clone()));
            }
            Err(source) => {
                return Err(StoreError::Io {
                    action: "stat",
                    path: self.file.path.clone(),
                    source,
                }
                .into());
            }
        };
        let lock = || self.cache.lock().unwrap_or_else(|p| p.into_inner());
        {
            let g = lock();
            if g.stamp == Some(now) {
                return Ok(g.tokens.clone());
            }
            if let Some((s, at, e)) = &g.unaudited
                && *s == now
                && at.elapsed() < UNAUDITED_RETRY
            {
                return Err(TokensError::Unaudited(e.clone()));
            }
        }
        // Without the cache's lock, and off the async worker: the reload takes the store's
        // lock (which a `--local` command may hold) and may fsync the trail. Two requests may
        // both reload; the second finds nothing pending.
        match crate::blocking::blocking(|| self.file.load_chained(&self.audit)) {
            Ok(t) => {
                let t = Arc::new(t);
                // Stamped before the load: a write in between is seen at the next request.
                let mut g = lock();
                (g.stamp, g.tokens, g.unaudited) = (Some(now), t.clone(), None);
                Ok(t)
            }
            Err(TokensError::Unaudited(e)) => {
                lock().unaudited = Some((now, std::time::Instant::now(), e.clone()));
                Err(TokensError::Unaudited(e))
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path) -> TokenFile {
        TokenFile::new(dir, &NodeKey::from_bytes([3; 32]), dir.join("admin.token"))
    }

    fn imported(dir: &Path) -> (TokenFile, String) {
        let f = file(dir);
        let legacy = dir.join("admin.token");
        assert!(f.import_if_missing(100).unwrap());
        assert!(!f.import_if_missing(200).unwrap(), "imported once");
        (f, std::fs::read_to_string(legacy).unwrap().trim().to_owned())
    }

    /// A real audit trail in `dir`, as the daemon has one.
    fn trail(dir: &Path) -> Audit {
        let key = NodeKey::from_bytes([4; 32]);
        Audit::open(dir, "a", &key, &crate::audit::AuditSection::default()).unwrap()
    }

    fn principal(t: &Tokens, token: &str) -> Principal {
        match t.authenticate(token) {
            Lookup::Valid(p, _) => p,
            other => panic!("expected a valid token, got {other:?}"),
        }
    }

    #[test]
    fn the_token_file_of_earlier_releases_becomes_the_first_admin() {
        let d = tempfile::tempdir().unwrap();
        let (f, legacy) = imported(d.path());
        let t = f.load().unwrap();
        assert_eq!(
            principal(&t, &legacy),
            Principal { name: "admin".into(), role: AdminRole::Admin }
        );
        assert_eq!(principal(&t, &format!("{legacy}\n")).name, "admin", "as a file holds it");
        assert_eq!(t.authenticate(&"0".repeat(64)), Lookup::Unknown);
    }

    /// Only hashes are stored: neither the sealed file nor the JSON inside holds a token.
    #[test]
    fn only_the_hash_of_a_token_is_stored_even_sealed() {
        let d = tempfile::tempdir().unwrap();
        let (f, legacy) = imported(d.path());
        let alice = f.create("alice", AdminRole::Operator, 300).unwrap();
        assert_eq!(alice.token.len(), 64);
        let json = serde_json::to_string(&f.load().unwrap()).unwrap();
        let raw = std::fs::read(f.path()).unwrap();
        for token in [legacy.as_str(), alice.token.as_str()] {
            assert!(!json.contains(token), "a token in the plaintext JSON: {json}");
            let bytes = hex::decode(token).unwrap();
            assert!(!json.contains(&hex::encode(&bytes[..16])), "{json}");
            assert!(!raw.windows(32).any(|w| w == &token.as_bytes()[..32]));
            assert!(json.contains(&hex::encode(hash(token))), "the hash is what is kept: {json}");
        }
        assert!(json.contains("\"alice\"") && json.contains("\"operator\""), "{json}");
        assert!(!raw.windows(5).any(|w| w == b"alice"), "the file is sealed");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(f.path()).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn names_are_validated_and_unique_among_tokens_not_revoked() {
        for bad in ["", "-x", ".x", "a b", "a/b", "é", "x;y", &"a".repeat(65)] {
            let e = validate_name(bad).unwrap_err().to_string();
            assert!(e.contains("letters, digits") && e.contains("1 to 64"), "{bad:?}: {e}");
        }
        for good in ["a", "alice", "Bob_2", "ops.team-1", &"a".repeat(64)] {
            validate_name(good).unwrap();
        }
        let d = tempfile::tempdir().unwrap();
        let (f, _) = imported(d.path());
        let before = std::fs::read(f.path()).unwrap();
        assert!(matches!(f.create("a b", AdminRole::Viewer, 1), Err(TokensError::BadName { .. })));
        let e = f.create("admin", AdminRole::Viewer, 1).unwrap_err();
        assert!(matches!(e, TokensError::NameTaken(_)), "{e}");
        assert_eq!(std::fs::read(f.path()).unwrap(), before, "a refused change writes nothing");
        let first = f.create("bob", AdminRole::Viewer, 1).unwrap();
        f.revoke("bob", 2).unwrap();
        let second = f.create("bob", AdminRole::KeyCustodian, 3).unwrap();
        let t = f.load().unwrap();
        assert!(matches!(t.authenticate(&first.token), Lookup::Revoked(_)));
        assert_eq!(principal(&t, &second.token).role, AdminRole::KeyCustodian);
        assert_eq!(t.list().len(), 3);
    }

    #[test]
    fn the_last_admin_cannot_be_revoked() {
        let d = tempfile::tempdir().unwrap();
        let (f, legacy) = imported(d.path());
        let e = f.revoke("admin", 5).unwrap_err();
        assert!(e.to_string().contains("last administrator with the role admin"), "{e}");
        f.create("viewer", AdminRole::Viewer, 6).unwrap();
        assert!(matches!(f.revoke("admin", 7), Err(TokensError::LastAdmin(_))));
        assert!(matches!(f.revoke("nobody", 7), Err(TokensError::NoSuchName(_))));
        let carol = f.create("carol", AdminRole::Admin, 8).unwrap();
        let info = f.revoke("admin", 9).unwrap().info;
        assert_eq!(info.revoked_unix, Some(9));
        let t = f.load().unwrap();
        assert!(matches!(t.authenticate(&legacy), Lookup::Revoked(_)));
        assert_eq!(principal(&t, &carol.token).name, "carol");
        assert!(matches!(f.revoke("carol", 10), Err(TokensError::LastAdmin(_))));
    }

    #[test]
    fn each_administrator_is_a_credential_of_their_own() {
        let d = tempfile::tempdir().unwrap();
        let (f, legacy) = imported(d.path());
        let a = f.create("a", AdminRole::Admin, 1).unwrap();
        let t = f.load().unwrap();
        let cred = |tok: &str| match t.authenticate(tok) {
            Lookup::Valid(_, c) => c,
            other => panic!("{other:?}"),
        };
        assert_ne!(cred(&legacy), cred(&a.token));
        assert_eq!(cred(&a.token), cred(&a.token));
    }

    #[test]
    fn a_running_daemon_sees_a_change_at_its_next_request() {
        let d = tempfile::tempdir().unwrap();
        let (f, _) = imported(d.path());
        let live = LiveTokens::new(file(d.path()), Audit::disabled());
        let alice = f.create("alice", AdminRole::Viewer, 1).unwrap();
        assert!(matches!(live.current().unwrap().authenticate(&alice.token), Lookup::Valid(..)));
        f.revoke("alice", 2).unwrap();
        assert!(matches!(live.current().unwrap().authenticate(&alice.token), Lookup::Revoked(_)));
        std::fs::remove_file(f.path()).unwrap();
        assert!(matches!(live.current(), Err(TokensError::Missing(_))), "fails closed");
    }

    #[test]
    fn revoking_the_first_admin_removes_the_old_token_file_so_a_lost_store_cannot_revive_it() {
        let d = tempfile::tempdir().unwrap();
        let (f, legacy) = imported(d.path());
        f.create("root", AdminRole::Admin, 300).unwrap();
        f.revoke("admin", 400).unwrap();
        assert!(!f.legacy().exists(), "admin.token is removed with its token");
        std::fs::remove_file(f.path()).unwrap();
        assert!(f.import_if_missing(500).unwrap(), "a lost store is made again");
        let t = f.load().unwrap();
        assert_eq!(t.authenticate(&legacy), Lookup::Unknown, "never the revoked token");
        let fresh = std::fs::read_to_string(f.legacy()).unwrap();
        assert_eq!(principal(&t, &fresh).name, "admin", "but a new admin.token");
    }

    #[test]
    fn a_local_change_is_in_the_trail_before_the_daemon_uses_it_and_unused_until_it_can_be() {
        use crate::audit::Entry;
        let d = tempfile::tempdir().unwrap();
        let (f, _) = imported(d.path());
        let audit = trail(d.path());
        let live = LiveTokens::new(file(d.path()), audit);
        live.current().unwrap();
        let log = d.path().join("audit.log");
        // The trail cannot be written: the change made on the host is not used, nor any token.
        std::fs::create_dir(&log).unwrap();
        let alice = f.create_local("alice", AdminRole::Viewer, 1).unwrap();
        assert!(matches!(live.current(), Err(TokensError::Unaudited(_))));
        std::fs::remove_dir(&log).unwrap();
        // Not tried again at once: requests meanwhile get the same answer without a retry.
        assert!(matches!(live.current(), Err(TokensError::Unaudited(_))));
        std::thread::sleep(UNAUDITED_RETRY);
        let t = live.current().unwrap();
        assert!(matches!(t.authenticate(&alice.token), Lookup::Valid(..)));
        let text = std::fs::read_to_string(&log).unwrap();
        let e: Entry = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!((e.action.as_str(), e.target.as_str()), ("token.create", "alice"));
        assert_eq!(e.actor.label(), "local");
        assert_eq!(e.details["via"], "imcrypt admin token --local");
        assert_eq!(e.details["role"], "viewer");
        assert!(!text.contains(alice.token.as_str()), "never the token");
        f.revoke_local("alice", 2).unwrap();
        assert!(matches!(live.current().unwrap().authenticate(&alice.token), Lookup::Revoked(_)));
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.lines().nth(1).unwrap().contains(r#""action":"token.revoke""#), "{text}");
    }

    #[test]
    fn a_change_through_the_api_chains_the_local_changes_before_its_own_record() {
        use crate::audit::Record;
        let d = tempfile::tempdir().unwrap();
        let (f, _) = imported(d.path());
        let audit = trail(d.path());
        f.create_local("root", AdminRole::Admin, 1).unwrap();
        // The daemon revokes `admin`, allowed only because of `root`, made on the host.
        let record = |info: &TokenInfo| {
            let r =
                Record::new(crate::audit::Actor::Local, "token.revoke", crate::audit::Outcome::Ok)
                    .target(info.name.clone());
            audit.write(vec![r]).map_err(|e| TokensError::Unaudited(Arc::new(e)))
        };
        f.revoke_recorded(Some(&audit), "admin", 2, record, |()| {}).unwrap();
        let text = std::fs::read_to_string(d.path().join("audit.log")).unwrap();
        let order: Vec<&str> = text
            .lines()
            .map(|l| if l.contains(r#""target":"root""#) { "create root" } else { "revoke admin" })
            .collect();
        assert_eq!(order, ["create root", "revoke admin"], "{text}");
    }
}
